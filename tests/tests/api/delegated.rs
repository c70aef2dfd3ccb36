//! Reseller links and delegated administration end to end: relationships
//! calling identity over real gRPC, grants pushed through the outbox.

use std::time::Duration;

use tonic::Code;

use crate::{backend_test, helpers::*};

const WITHIN: Duration = Duration::from_secs(1);

async fn reset(
    app: &TestApp,
    token: &str,
    tenant: &Tenant,
    user_id: &str,
) -> Result<(), tonic::Status> {
    app.users()
        .reset_password(req(
            token,
            ResetPasswordRequest {
                tenant_id: tenant.id.clone(),
                user_id: user_id.into(),
                ..Default::default()
            },
        ))
        .await
        .map(|_| ())
}

async fn a_partner_wins_a_customer_administers_it_and_loses_it_to_reassignment(b: Backend) {
    use PartnerAuthorization::*;
    let app = TestApp::spawn(b).await;
    let p1 = app
        .partner("Fabrikam", &[CloudReseller, DelegatedAdmin])
        .await;
    let p2 = app.partner("Northwind", &[DelegatedAdmin]).await;
    let customer = app.tenant(TenantKind::Customer, "Contoso").await;
    let none = CompanyRole::Unspecified;
    let p1_full = app
        .user(
            &p1.admin_token,
            &p1,
            "agent",
            none,
            SupportedCompaniesAccess::Full,
        )
        .await;
    let p1_limited = app
        .user(
            &p1.admin_token,
            &p1,
            "desk",
            none,
            SupportedCompaniesAccess::Limited,
        )
        .await;
    let p2_full = app
        .user(
            &p2.admin_token,
            &p2,
            "agent",
            none,
            SupportedCompaniesAccess::Full,
        )
        .await;
    let alice = app
        .user(
            &customer.admin_token,
            &customer,
            "alice",
            none,
            SupportedCompaniesAccess::Unspecified,
        )
        .await;

    // A reseller link with an email draft that carries it.
    let rr = app
        .resellers()
        .create_reseller_request(req(
            &p1_full.token,
            rel::CreateResellerRequestRequest {
                partner_tenant_id: p1.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .reseller_request
        .unwrap();
    assert!(
        rr.url.ends_with(&format!("/reseller/{}", rr.code)),
        "{}",
        rr.url
    );
    assert!(rr.email_body.contains(&rr.url));
    assert!(rr.email_subject.contains("Fabrikam"));

    // Anyone holding the link sees who offers it, without signing in.
    let preview = app
        .resellers()
        .preview_reseller_request(rel::PreviewResellerRequestRequest {
            code: rr.code.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(preview.partner.unwrap().display_name, "Fabrikam");

    // The customer's global admin accepts; accepting again is a no-op.
    let accept = |request_id: &str| {
        req(
            &customer.admin_token,
            rel::AcceptResellerRequestRequest {
                request_id: request_id.into(),
                code: rr.code.clone(),
                customer_tenant_id: customer.id.clone(),
            },
        )
    };
    let first = app
        .resellers()
        .accept_reseller_request(accept("a1"))
        .await
        .unwrap()
        .into_inner();
    let again = app
        .resellers()
        .accept_reseller_request(accept("a2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again);
    assert_eq!(
        app.rel_count(
            "SELECT COUNT(*) FROM partner_customers WHERE reseller_request_id IS NOT NULL"
        )
        .await,
        1
    );

    // The customer is in P1's list as a reseller customer.
    let list = app
        .customers()
        .list_customers(req(
            &p1_full.token,
            rel::ListCustomersRequest {
                partner_tenant_id: p1.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.customers.len(), 1);
    assert_eq!(list.customers[0].customer_tenant_id, customer.id);
    assert_eq!(list.customers[0].display_name, "Contoso");
    assert_eq!(
        list.customers[0].relationships,
        vec![rel::RelationshipKind::Reseller as i32]
    );

    // Delegated administration: offered, accepted, effective in identity.
    let p1_rel = app
        .accept(&customer, &app.offer(&p1).await, false)
        .await
        .unwrap();
    assert_eq!(p1_rel.state, rel::DelegatedAdminState::Active as i32);
    assert!(
        app.await_access(
            &p1_full.token,
            &customer,
            Permission::PasswordResetAdmin,
            true,
            WITHIN
        )
        .await
    );
    reset(&app, &p1_full.token, &customer, &alice.id)
        .await
        .unwrap();
    app.users()
        .create_user(req(
            &p1_full.token,
            CreateUserRequest {
                tenant_id: customer.id.clone(),
                user_principal_name: format!("bob@{}", customer.domain),
                display_name: "Bob".into(),
                password: PASSWORD.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    // LIMITED resets non-admins, never the global admin.
    reset(&app, &p1_limited.token, &customer, &alice.id)
        .await
        .unwrap();
    expect_code(
        reset(&app, &p1_limited.token, &customer, &customer.admin_id).await,
        Code::PermissionDenied,
    );

    // A second partner is refused, naming the current one.
    let p2_code = app.offer(&p2).await;
    let held = expect_code(
        app.accept(&customer, &p2_code, false).await,
        Code::FailedPrecondition,
    );
    assert!(
        held.message().contains(&p1.id) && held.message().contains("Fabrikam"),
        "{}",
        held.message()
    );
    assert!(
        !app.may(&p2_full.token, &customer, Permission::PasswordResetNonAdmin)
            .await
    );

    // Reassignment moves it atomically.
    let p2_rel = app.accept(&customer, &p2_code, true).await.unwrap();
    assert_eq!(p2_rel.state, rel::DelegatedAdminState::Active as i32);
    assert!(
        app.await_access(
            &p1_full.token,
            &customer,
            Permission::PasswordResetNonAdmin,
            false,
            WITHIN
        )
        .await
    );
    assert!(
        app.await_access(
            &p1_limited.token,
            &customer,
            Permission::PasswordResetNonAdmin,
            false,
            WITHIN
        )
        .await
    );
    assert!(
        app.await_access(
            &p2_full.token,
            &customer,
            Permission::PasswordResetNonAdmin,
            true,
            WITHIN
        )
        .await
    );
    expect_code(
        reset(&app, &p1_full.token, &customer, &alice.id).await,
        Code::PermissionDenied,
    );
    let old = app
        .delegated()
        .get_delegated_admin_relationship(req(
            &customer.admin_token,
            rel::GetDelegatedAdminRelationshipRequest {
                tenant_id: customer.id.clone(),
                id: p1_rel.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .relationship
        .unwrap();
    assert_eq!(old.state, rel::DelegatedAdminState::Reassigned as i32);
    assert_eq!(old.reassigned_to_partner_tenant_id, p2.id);

    // The customer removes it; access is gone.
    let removed = app.remove(&customer, "", "").await.unwrap();
    assert_eq!(removed.state, rel::DelegatedAdminState::Removed as i32);
    assert!(
        app.await_access(
            &p2_full.token,
            &customer,
            Permission::PasswordResetNonAdmin,
            false,
            WITHIN
        )
        .await
    );
    expect_code(
        reset(&app, &p2_full.token, &customer, &alice.id).await,
        Code::PermissionDenied,
    );

    // P1 is still the customer's reseller.
    let c = app
        .customers()
        .get_customer(req(
            &p1.admin_token,
            rel::GetCustomerRequest {
                partner_tenant_id: p1.id.clone(),
                customer_tenant_id: customer.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .customer
        .unwrap();
    assert_eq!(
        c.relationships,
        vec![rel::RelationshipKind::Reseller as i32]
    );
    assert_eq!(
        c.delegated_admin_state,
        rel::DelegatedAdminState::Reassigned as i32
    );

    // The customer sees its partners and what changed in its tenant.
    let partners = app
        .customers()
        .list_partners(req(
            &customer.admin_token,
            rel::ListPartnersRequest {
                customer_tenant_id: customer.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .partners;
    assert_eq!(partners.len(), 1, "only P1 still holds a relationship");
    assert_eq!(partners[0].display_name, "Fabrikam");
    let events = app
        .customers()
        .list_audit_events(req(
            &customer.admin_token,
            rel::ListAuditEventsRequest {
                tenant_id: customer.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "relationships.delegated_admin.remove",
            "relationships.delegated_admin.reassign",
            "relationships.delegated_admin.accept",
            "relationships.reseller.accept",
        ]
    );
    // What P1 did inside the customer is in identity's trail, marked delegated.
    let identity_events = app
        .tenants()
        .list_audit_events(req(
            &customer.admin_token,
            ListAuditEventsRequest {
                tenant_id: customer.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(identity_events
        .iter()
        .any(|e| e.delegated && e.actor_tenant_id == p1.id));
}
backend_test!(a_partner_wins_a_customer_administers_it_and_loses_it_to_reassignment);

async fn of_32_concurrent_acceptances_exactly_one_becomes_active(b: Backend) {
    let app = TestApp::spawn(b).await;
    let customer = app.tenant(TenantKind::Customer, "Contoso").await;
    let mut codes = Vec::new();
    for i in 0..32 {
        let p = app
            .partner(
                &format!("Partner {i}"),
                &[PartnerAuthorization::DelegatedAdmin],
            )
            .await;
        codes.push(app.offer(&p).await);
    }
    let mut tasks = Vec::new();
    for code in codes {
        let (channel, token, id) = (
            app.channel.clone(),
            customer.admin_token.clone(),
            customer.id.clone(),
        );
        tasks.push(tokio::spawn(async move {
            rel::delegated_admin_service_client::DelegatedAdminServiceClient::new(channel)
                .accept_delegated_admin_offer(req(
                    &token,
                    rel::AcceptDelegatedAdminOfferRequest {
                        code,
                        customer_tenant_id: id,
                        ..Default::default()
                    },
                ))
                .await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => won += 1,
            Err(s) => assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(
        app.rel_count("SELECT COUNT(*) FROM delegated_admin_relationships WHERE state = 'ACTIVE'")
            .await,
        1
    );
    // Identity agrees: exactly one partner holds an active grant.
    assert_eq!(app.drain_outbox(Duration::from_secs(2)).await, 0);
    let active = app
        .count("SELECT COUNT(*) FROM delegated_grants WHERE state = 'ACTIVE'")
        .await;
    assert_eq!(active, 1);
}
backend_test!(of_32_concurrent_acceptances_exactly_one_becomes_active);

async fn grant_changes_made_while_identity_is_unreachable_arrive_in_order_once_it_is_back(
    b: Backend,
) {
    let (app, proxy) = TestApp::spawn_with_grant_proxy(b).await;
    let p1 = app
        .partner("Fabrikam", &[PartnerAuthorization::DelegatedAdmin])
        .await;
    let p2 = app
        .partner("Northwind", &[PartnerAuthorization::DelegatedAdmin])
        .await;
    let customer = app.tenant(TenantKind::Customer, "Contoso").await;
    let full = SupportedCompaniesAccess::Full;
    let a1 = app
        .user(
            &p1.admin_token,
            &p1,
            "agent",
            CompanyRole::Unspecified,
            full,
        )
        .await;
    let a2 = app
        .user(
            &p2.admin_token,
            &p2,
            "agent",
            CompanyRole::Unspecified,
            full,
        )
        .await;
    let (c1, c2) = (app.offer(&p1).await, app.offer(&p2).await);

    proxy.down();
    // P1 active → reassigned to P2 → P2 removed → P1 active again, all unseen by identity.
    app.accept(&customer, &c1, false).await.unwrap();
    app.accept(&customer, &c2, true).await.unwrap();
    app.remove(&customer, "", "").await.unwrap();
    app.accept(&customer, &app.offer(&p1).await, false)
        .await
        .unwrap();
    assert_eq!(app.rel_count("SELECT COUNT(*) FROM grant_outbox").await, 5);
    assert_eq!(app.count("SELECT COUNT(*) FROM delegated_grants").await, 0);
    assert!(!app.may(&a1.token, &customer, Permission::UsersManage).await);

    proxy.up();
    assert!(
        app.await_access(
            &a1.token,
            &customer,
            Permission::UsersManage,
            true,
            Duration::from_secs(5)
        )
        .await
    );
    let left = app.drain_outbox(Duration::from_secs(5)).await;
    assert_eq!(left, 0, "every change was delivered");
    assert!(!app.may(&a2.token, &customer, Permission::UsersManage).await);
    // The newest version of each pair won, whatever the delivery order.
    assert_eq!(
        app.count("SELECT COUNT(*) FROM delegated_grants WHERE state = 'ACTIVE' AND version = 3")
            .await,
        1,
        "P1: active(1), reassigned(2), active(3)"
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM delegated_grants WHERE state = 'REMOVED' AND version = 2")
            .await,
        1,
        "P2: active(1), removed(2)"
    );
}
backend_test!(grant_changes_made_while_identity_is_unreachable_arrive_in_order_once_it_is_back);

/// An offer is written without looking up its request id first (one
/// statement on PostgreSQL); the id's uniqueness still makes a retry a
/// replay, and a different request under it a refusal that writes nothing.
async fn a_retried_delegated_admin_offer_answers_the_first_offer(b: Backend) {
    let app = TestApp::spawn(b).await;
    let p = app
        .partner("Fabrikam", &[PartnerAuthorization::DelegatedAdmin])
        .await;
    let customer = app.tenant(TenantKind::Customer, "Contoso").await;
    let create = |customer_tenant_id: &str| {
        let r = req(
            &p.admin_token,
            rel::CreateDelegatedAdminOfferRequest {
                request_id: "offer-1".into(),
                partner_tenant_id: p.id.clone(),
                customer_tenant_id: customer_tenant_id.into(),
            },
        );
        let mut client = app.delegated();
        async move { client.create_delegated_admin_offer(r).await }
    };
    let first = create(&customer.id)
        .await
        .unwrap()
        .into_inner()
        .offer
        .unwrap();
    let again = create(&customer.id)
        .await
        .unwrap()
        .into_inner()
        .offer
        .unwrap();
    assert_eq!(again, first);
    let footprint = || async {
        (
            app.rel_count("SELECT COUNT(*) FROM links").await,
            app.rel_count(
                "SELECT COUNT(*) FROM delegated_admin_relationships WHERE state = 'PENDING'",
            )
            .await,
            app.rel_count(
                "SELECT COUNT(*) FROM audit_events WHERE action = 'relationships.delegated_admin_offer.create'",
            )
            .await,
        )
    };
    assert_eq!(footprint().await, (1, 1, 1));
    // The same request id for another request (an offer to anyone).
    expect_invalid(create("").await, "request_id");
    assert_eq!(footprint().await, (1, 1, 1));
    // The offer works: the customer accepts it.
    let accepted = app.accept(&customer, &first.code, false).await.unwrap();
    assert_eq!(accepted.state, rel::DelegatedAdminState::Active as i32);
}
backend_test!(a_retried_delegated_admin_offer_answers_the_first_offer);

/// Identity applies each change at once, but the outbox rows of delivered
/// changes leave together: at the next sweep, or before a scrape reads the
/// outbox's depth, which never counts them as waiting.
async fn delivered_grant_changes_leave_the_outbox_together_and_never_count_as_waiting(b: Backend) {
    let db = TestDb::new(b).await;
    // One sweep at start, the next in an hour: only the scrape removes rows.
    let s = settings_with(
        "global",
        &db,
        vec![(
            "relationships.outbox_poll_interval_ms".into(),
            "3600000".into(),
        )],
    );
    // The databases outlive the app: what a stop left is read after it.
    let app = TestApp::start(
        &s,
        std::sync::Arc::new(sovra_runtime::auth::Keyring::generate()),
    )
    .await
    .unwrap();
    let partner = app
        .partner("Fabrikam", &[PartnerAuthorization::DelegatedAdmin])
        .await;
    let agent = app.agent(&partner).await;
    let mut customers = Vec::new();
    for name in ["Contoso", "Northwind", "Tailspin"] {
        let customer = app.tenant(TenantKind::Customer, name).await;
        app.accept(&customer, &app.offer(&partner).await, false)
            .await
            .unwrap();
        customers.push(customer);
    }
    for c in &customers {
        assert!(
            app.may(&agent, c, Permission::UsersManage).await,
            "applied at once"
        );
    }
    assert_eq!(
        app.rel_count("SELECT COUNT(*) FROM grant_outbox").await,
        3,
        "delivered rows wait to be removed together"
    );
    let admin = app.admin.expect("the test app serves /metrics").to_string();
    let metrics = http_get(&admin, "/metrics").await.expect("a scrape");
    assert_eq!(
        gauge(&metrics, "sovra_grant_outbox_depth"),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        gauge(&metrics, "sovra_grant_outbox_oldest_age_seconds"),
        Some(0.0)
    );
    assert_eq!(app.rel_count("SELECT COUNT(*) FROM grant_outbox").await, 0);

    // A change whose row is still there at shutdown leaves with the app.
    app.remove(&customers[0], "", "").await.unwrap();
    assert!(
        !app.may(&agent, &customers[0], Permission::UsersManage)
            .await
    );
    assert_eq!(app.rel_count("SELECT COUNT(*) FROM grant_outbox").await, 1);
    app.stop().await;
    assert_eq!(
        count_in(&db.rel_url, "SELECT COUNT(*) FROM grant_outbox").await,
        0,
        "removed at a graceful stop"
    );
}
backend_test!(delivered_grant_changes_leave_the_outbox_together_and_never_count_as_waiting);

/// An acceptance and a removal write their audit record and stored answer
/// in the same call as the transition (one statement on PostgreSQL): a
/// retry under the same request id answers the first call and writes
/// nothing more, and a removal by id of a relationship no longer active is
/// refused and writes nothing.
async fn retried_acceptances_and_removals_answer_the_first_call_and_are_audited_once(b: Backend) {
    let app = TestApp::spawn(b).await;
    let p = app
        .partner("Fabrikam", &[PartnerAuthorization::DelegatedAdmin])
        .await;
    let customer = app.tenant(TenantKind::Customer, "Contoso").await;
    let code = app.offer(&p).await;
    let accept = || {
        let r = req(
            &customer.admin_token,
            rel::AcceptDelegatedAdminOfferRequest {
                request_id: "accept-1".into(),
                code: code.clone(),
                customer_tenant_id: customer.id.clone(),
                ..Default::default()
            },
        );
        let mut client = app.delegated();
        async move { client.accept_delegated_admin_offer(r).await }
    };
    let first = accept().await.unwrap().into_inner().relationship.unwrap();
    let again = accept().await.unwrap().into_inner().relationship.unwrap();
    assert_eq!(again, first);
    assert_eq!(first.state, rel::DelegatedAdminState::Active as i32);
    let removed = app.remove(&customer, "remove-1", &first.id).await.unwrap();
    assert_eq!(removed.state, rel::DelegatedAdminState::Removed as i32);
    assert_eq!(removed.id, first.id);
    let replayed = app.remove(&customer, "remove-1", &first.id).await.unwrap();
    assert_eq!(replayed, removed);
    let footprint = || async {
        (
            app.rel_count(
                "SELECT COUNT(*) FROM audit_events WHERE action = 'relationships.delegated_admin.accept'",
            )
            .await,
            app.rel_count(
                "SELECT COUNT(*) FROM audit_events WHERE action = 'relationships.delegated_admin.remove'",
            )
            .await,
            app.rel_count("SELECT COUNT(*) FROM grant_versions").await,
            app.rel_count("SELECT MAX(version) FROM grant_versions").await,
        )
    };
    // One acceptance and one removal: the pair's grant is at version 2.
    assert_eq!(footprint().await, (1, 1, 1, 2));
    let status = expect_code(
        app.remove(&customer, "remove-2", &first.id).await,
        Code::FailedPrecondition,
    );
    assert!(status.message().contains("REMOVED"), "{}", status.message());
    assert_eq!(footprint().await, (1, 1, 1, 2));
}
backend_test!(retried_acceptances_and_removals_answer_the_first_call_and_are_audited_once);

/// A removal by id races a reassignment of the same relationship: one of
/// them ends it, and the other sees what the first did (the removal is
/// refused, or the reassignment finds nothing to reassign). Never both,
/// and the pair's grant moves exactly once.
async fn a_removal_racing_a_reassignment_ends_the_relationship_once(b: Backend) {
    let app = TestApp::spawn(b).await;
    for round in 0..6 {
        let p1 = app
            .partner(
                &format!("First {round}"),
                &[PartnerAuthorization::DelegatedAdmin],
            )
            .await;
        let p2 = app
            .partner(
                &format!("Second {round}"),
                &[PartnerAuthorization::DelegatedAdmin],
            )
            .await;
        let customer = app
            .tenant(TenantKind::Customer, &format!("Contoso {round}"))
            .await;
        let held = app
            .accept(&customer, &app.offer(&p1).await, false)
            .await
            .unwrap();
        let code = app.offer(&p2).await;
        let remove = app.remove(&customer, "", &held.id);
        let (removed, reassigned) = tokio::join!(remove, app.accept(&customer, &code, true));
        let reassigned = reassigned.expect("a reassigning acceptance always succeeds");
        assert_eq!(reassigned.state, rel::DelegatedAdminState::Active as i32);
        let state = stored_state(&app, &held.id).await;
        match removed {
            Ok(r) => {
                assert_eq!(r.state, rel::DelegatedAdminState::Removed as i32);
                assert_eq!(state, "REMOVED", "round {round}");
            }
            Err(s) => {
                assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
                assert_eq!(state, "REASSIGNED", "round {round}");
            }
        }
        let p1_version = app
            .rel_count(&format!(
                "SELECT version FROM grant_versions WHERE partner_tenant_id = '{}' AND customer_tenant_id = '{}'",
                p1.id, customer.id
            ))
            .await;
        assert_eq!(p1_version, 2, "round {round}: one activation, one end");
    }
    assert_eq!(
        app.rel_count("SELECT COUNT(*) FROM delegated_admin_relationships WHERE state = 'ACTIVE'")
            .await,
        6
    );
}
backend_test!(a_removal_racing_a_reassignment_ends_the_relationship_once);

/// The stored state of relationship `id`.
async fn stored_state(app: &TestApp, id: &str) -> String {
    let n = app
        .rel_count(&format!(
            "SELECT CASE state WHEN 'REMOVED' THEN 1 WHEN 'REASSIGNED' THEN 2 ELSE 0 END \
             FROM delegated_admin_relationships WHERE id = '{id}'"
        ))
        .await;
    match n {
        1 => "REMOVED",
        2 => "REASSIGNED",
        _ => "OTHER",
    }
    .to_owned()
}

/// A removal of whichever relationship is active, retried after the
/// customer accepted another partner: the retry answers the first removal
/// and leaves the new relationship active (on PostgreSQL the retry's
/// statement finds the request id taken and writes nothing).
async fn a_retried_removal_of_the_active_relationship_never_removes_a_newer_one(b: Backend) {
    let app = TestApp::spawn(b).await;
    let p1 = app
        .partner("Fabrikam", &[PartnerAuthorization::DelegatedAdmin])
        .await;
    let p2 = app
        .partner("Northwind", &[PartnerAuthorization::DelegatedAdmin])
        .await;
    let customer = app.tenant(TenantKind::Customer, "Contoso").await;
    let first = app
        .accept(&customer, &app.offer(&p1).await, false)
        .await
        .unwrap();
    let remove = || app.remove(&customer, "remove-active", "");
    let removed = remove().await.unwrap();
    assert_eq!(removed.id, first.id);
    let second = app
        .accept(&customer, &app.offer(&p2).await, false)
        .await
        .unwrap();
    let replayed = remove().await.unwrap();
    assert_eq!(replayed, removed);
    let active = format!(
        "SELECT COUNT(*) FROM delegated_admin_relationships WHERE id = '{}' AND state = 'ACTIVE'",
        second.id
    );
    assert_eq!(
        app.rel_count(&active).await,
        1,
        "the newer one is still active"
    );
    assert_eq!(
        app.rel_count(
            "SELECT COUNT(*) FROM audit_events WHERE action = 'relationships.delegated_admin.remove'"
        )
        .await,
        1
    );
}
backend_test!(a_retried_removal_of_the_active_relationship_never_removes_a_newer_one);
