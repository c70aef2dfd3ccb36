//! AccessService: CheckAccess, and delegated administration through
//! ApplyDelegatedGrant as the relationships service will push it.

use tonic::Code;

use crate::{backend_test, helpers::*};

async fn check_access_answers_with_basis_and_reason(b: Backend) {
    let app = TestApp::spawn(b).await;
    let c = app.tenant(TenantKind::Customer, "Customer").await;
    let ua = app
        .user(
            &c.admin_token,
            &c,
            "ua",
            CompanyRole::UserAdmin,
            SupportedCompaniesAccess::Unspecified,
        )
        .await;
    let check = |token: &str, user_id: &str, p: Permission| {
        req(
            token,
            CheckAccessRequest {
                user_id: user_id.into(),
                tenant_id: c.id.clone(),
                permission: p as i32,
            },
        )
    };
    let own = app
        .access()
        .check_access(check(&ua.token, "", Permission::UsersManage))
        .await
        .unwrap()
        .into_inner();
    assert!(own.allowed);
    assert_eq!(own.basis, AccessBasis::OwnRole as i32);
    let denied = app
        .access()
        .check_access(check(&ua.token, "", Permission::CompanyProfileUpdate))
        .await
        .unwrap()
        .into_inner();
    assert!(!denied.allowed);
    assert_eq!(denied.basis, AccessBasis::None as i32);
    assert!(denied.reason.contains("USER_ADMIN"), "{}", denied.reason);
    // Services ask about anyone; users only about themselves.
    let svc = app.service_token();
    assert!(
        app.access()
            .check_access(check(&svc, &c.admin_id, Permission::AuditRead))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    expect_code(
        app.access()
            .check_access(check(&ua.token, &c.admin_id, Permission::AuditRead))
            .await,
        Code::PermissionDenied,
    );
    expect_invalid(
        app.access()
            .check_access(check(&svc, &c.admin_id, Permission::Unspecified))
            .await,
        "permission",
    );
    expect_code(
        app.access()
            .check_access(check(&svc, &"0".repeat(32), Permission::AuditRead))
            .await,
        Code::NotFound,
    );
}
backend_test!(check_access_answers_with_basis_and_reason);

async fn only_services_push_delegated_grants(b: Backend) {
    let app = TestApp::spawn(b).await;
    let p = app.tenant(TenantKind::Partner, "Partner").await;
    let c = app.tenant(TenantKind::Customer, "Customer").await;
    let push = |token: &str| {
        req(
            token,
            ApplyDelegatedGrantRequest {
                partner_tenant_id: p.id.clone(),
                customer_tenant_id: c.id.clone(),
                relationship_id: "rel".into(),
                state: DelegatedGrantState::Active as i32,
                version: 1,
                ..Default::default()
            },
        )
    };
    expect_code(
        app.access()
            .apply_delegated_grant(push(&app.operator))
            .await,
        Code::PermissionDenied,
    );
    expect_code(
        app.access()
            .apply_delegated_grant(push(&p.admin_token))
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM delegated_grants").await, 0);
    let svc = app.service_token();
    let mut swapped = push(&svc).into_inner();
    std::mem::swap(
        &mut swapped.partner_tenant_id,
        &mut swapped.customer_tenant_id,
    );
    expect_invalid(
        app.access().apply_delegated_grant(req(&svc, swapped)).await,
        "partner_tenant_id",
    );
    let mut v0 = push(&svc).into_inner();
    v0.version = 0;
    expect_invalid(
        app.access().apply_delegated_grant(req(&svc, v0)).await,
        "version",
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM delegated_grants").await, 0);
}
backend_test!(only_services_push_delegated_grants);

/// A newer version is applied in one statement without looking up its
/// request id first; everything else falls back to the transaction that
/// does. Both must answer a repeat the same and write nothing twice.
async fn a_grant_delivered_again_answers_as_the_first_time_and_writes_nothing(b: Backend) {
    let app = TestApp::spawn(b).await;
    let p = app.tenant(TenantKind::Partner, "Partner").await;
    let c = app.tenant(TenantKind::Customer, "Customer").await;
    let svc = app.service_token();
    let push = |request_id: &str, state: DelegatedGrantState, version: i64| {
        req(
            &svc,
            ApplyDelegatedGrantRequest {
                request_id: request_id.into(),
                partner_tenant_id: p.id.clone(),
                customer_tenant_id: c.id.clone(),
                relationship_id: "rel-1".into(),
                state: state as i32,
                version,
            },
        )
    };
    let apply = |r| async { app.access().apply_delegated_grant(r).await };
    let audited = || {
        app.count(
            "SELECT COUNT(*) FROM audit_events WHERE action LIKE 'identity.delegated_grant.%'",
        )
    };
    let first = apply(push("g1", DelegatedGrantState::Active, 1))
        .await
        .unwrap()
        .into_inner();
    assert!(first.applied);
    assert_eq!(first.current_version, 1);
    // The same delivery again: the stored answer, no second audit record.
    let again = apply(push("g1", DelegatedGrantState::Active, 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first);
    assert_eq!(audited().await, 1);

    let removed = apply(push("g2", DelegatedGrantState::Removed, 2))
        .await
        .unwrap()
        .into_inner();
    assert!(removed.applied);
    // A late repeat of version 1 answers what it answered then and changes nothing.
    let late = apply(push("g1", DelegatedGrantState::Active, 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(late, first);
    // A newer version under a used request id is refused, and writes nothing.
    expect_invalid(
        apply(push("g2", DelegatedGrantState::Active, 3)).await,
        "request_id",
    );
    assert_eq!(
        app.count("SELECT version FROM delegated_grants").await,
        2,
        "the refused push changed the grant"
    );
    assert_eq!(audited().await, 2);
    // An older version under a new request id: not applied, what is stored answered.
    let stale = apply(push("g3", DelegatedGrantState::Active, 1))
        .await
        .unwrap()
        .into_inner();
    assert!(!stale.applied);
    assert_eq!(stale.current_version, 2);
    assert_eq!(stale.current_state, DelegatedGrantState::Removed as i32);
    assert_eq!(audited().await, 2);
}
backend_test!(a_grant_delivered_again_answers_as_the_first_time_and_writes_nothing);

async fn delegated_full_and_limited_act_in_the_customer_tenant_until_revoked(b: Backend) {
    let app = TestApp::spawn(b).await;
    let p = app.tenant(TenantKind::Partner, "Partner").await;
    let c = app.tenant(TenantKind::Customer, "Customer").await;
    let full = app
        .user(
            &p.admin_token,
            &p,
            "full",
            CompanyRole::Unspecified,
            SupportedCompaniesAccess::Full,
        )
        .await;
    let limited = app
        .user(
            &p.admin_token,
            &p,
            "lim",
            CompanyRole::Unspecified,
            SupportedCompaniesAccess::Limited,
        )
        .await;
    let none = app
        .user(
            &p.admin_token,
            &p,
            "none",
            CompanyRole::Unspecified,
            SupportedCompaniesAccess::None,
        )
        .await;
    let worker = app
        .user(
            &c.admin_token,
            &c,
            "worker",
            CompanyRole::Unspecified,
            SupportedCompaniesAccess::Unspecified,
        )
        .await;
    let reset = |token: &str, user_id: &str| {
        req(
            token,
            ResetPasswordRequest {
                tenant_id: c.id.clone(),
                user_id: user_id.into(),
                ..Default::default()
            },
        )
    };

    // Before any grant the customer is out of reach.
    expect_code(
        app.users()
            .reset_password(reset(&full.token, &worker.id))
            .await,
        Code::NotFound,
    );

    let applied = app.grant(&p, &c, DelegatedGrantState::Active, 1).await;
    assert!(applied.applied);

    // FULL acts as a global admin: resets the customer's global admin, creates users.
    app.users()
        .reset_password(reset(&full.token, &c.admin_id))
        .await
        .unwrap();
    app.user(
        &full.token,
        &c,
        "hired",
        CompanyRole::Unspecified,
        SupportedCompaniesAccess::Unspecified,
    )
    .await;
    let check = app
        .access()
        .check_access(req(
            &full.token,
            CheckAccessRequest {
                tenant_id: c.id.clone(),
                permission: Permission::AdminUsersManage as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(check.basis, AccessBasis::DelegatedFull as i32);

    // LIMITED resets non-admins only; NONE does nothing.
    app.users()
        .reset_password(reset(&limited.token, &worker.id))
        .await
        .unwrap();
    let s = expect_code(
        app.users()
            .reset_password(reset(&limited.token, &c.admin_id))
            .await,
        Code::PermissionDenied,
    );
    assert!(s.message().contains("LIMITED"), "{}", s.message());
    expect_code(
        app.users()
            .reset_password(reset(&none.token, &worker.id))
            .await,
        Code::PermissionDenied,
    );

    // The customer's admins see what the partner did, marked delegated.
    let ga = app
        .user(
            &full.token,
            &c,
            "ga2",
            CompanyRole::GlobalAdmin,
            SupportedCompaniesAccess::Unspecified,
        )
        .await;
    let events = app
        .tenants()
        .list_audit_events(req(
            &ga.token,
            ListAuditEventsRequest {
                tenant_id: c.id.clone(),
                page_size: 50,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    let by_partner: Vec<_> = events
        .iter()
        .filter(|e| e.actor_tenant_id == p.id)
        .collect();
    assert!(by_partner.len() >= 4, "{events:?}");
    assert!(by_partner.iter().all(|e| e.delegated));
    assert!(by_partner
        .iter()
        .any(|e| e.action == "identity.user.reset_password" && e.actor_id == full.id));

    // Revocation takes effect at once; an older version can't bring it back.
    let removed = app.grant(&p, &c, DelegatedGrantState::Removed, 2).await;
    assert_eq!(removed.current_state, DelegatedGrantState::Removed as i32);
    expect_code(
        app.users()
            .reset_password(reset(&full.token, &worker.id))
            .await,
        // A former administrator learns why, not that the tenant is unknown.
        Code::PermissionDenied,
    );
    let stale = app.grant(&p, &c, DelegatedGrantState::Active, 1).await;
    assert!(!stale.applied);
    assert_eq!(stale.current_version, 2);
    expect_code(
        app.users()
            .reset_password(reset(&limited.token, &worker.id))
            .await,
        Code::PermissionDenied,
    );
    // Re-applying the same version is a no-op.
    assert!(
        !app.grant(&p, &c, DelegatedGrantState::Removed, 2)
            .await
            .applied
    );
}
backend_test!(delegated_full_and_limited_act_in_the_customer_tenant_until_revoked);

async fn a_reassigned_grant_moves_access_to_the_new_partner(b: Backend) {
    let app = TestApp::spawn(b).await;
    let p1 = app.tenant(TenantKind::Partner, "First").await;
    let p2 = app.tenant(TenantKind::Partner, "Second").await;
    let c = app.tenant(TenantKind::Customer, "Customer").await;
    let u1 = app
        .user(
            &p1.admin_token,
            &p1,
            "one",
            CompanyRole::Unspecified,
            SupportedCompaniesAccess::Full,
        )
        .await;
    let u2 = app
        .user(
            &p2.admin_token,
            &p2,
            "two",
            CompanyRole::Unspecified,
            SupportedCompaniesAccess::Full,
        )
        .await;
    let list = |token: &str| {
        req(
            token,
            ListUsersRequest {
                tenant_id: c.id.clone(),
                ..Default::default()
            },
        )
    };
    app.grant(&p1, &c, DelegatedGrantState::Active, 1).await;
    app.users().list_users(list(&u1.token)).await.unwrap();
    expect_code(
        app.users().list_users(list(&u2.token)).await,
        Code::NotFound,
    );
    app.grant(&p1, &c, DelegatedGrantState::Reassigned, 2).await;
    app.grant(&p2, &c, DelegatedGrantState::Active, 1).await;
    let s = expect_code(
        app.users().list_users(list(&u1.token)).await,
        Code::PermissionDenied,
    );
    assert!(s.message().contains("REASSIGNED"), "{}", s.message());
    app.users().list_users(list(&u2.token)).await.unwrap();
}
backend_test!(a_reassigned_grant_moves_access_to_the_new_partner);
