//! Link codes and the rules around who may create and accept them.

use std::sync::Arc;

use sovra_runtime::{auth::Keyring, links::LinkCodes};
use tonic::Code;

use crate::{backend_test, helpers::*};

const NONE: SupportedCompaniesAccess = SupportedCompaniesAccess::Unspecified;

async fn accept_reseller(
    app: &TestApp,
    token: &str,
    code: &str,
    customer: &Tenant,
) -> Result<(), tonic::Status> {
    app.resellers()
        .accept_reseller_request(req(
            token,
            rel::AcceptResellerRequestRequest {
                code: code.into(),
                customer_tenant_id: customer.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .map(|_| ())
}

async fn reseller_code(app: &TestApp, partner: &Tenant) -> rel::ResellerRequest {
    app.resellers()
        .create_reseller_request(req(
            &partner.admin_token,
            rel::CreateResellerRequestRequest {
                partner_tenant_id: partner.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .reseller_request
        .unwrap()
}

async fn tampered_foreign_expired_and_revoked_codes_are_refused_before_any_write(b: Backend) {
    let app = TestApp::spawn(b).await;
    let p = app
        .partner("Fabrikam", &[PartnerAuthorization::CloudReseller])
        .await;
    let customer = app.tenant(TenantKind::Customer, "Contoso").await;
    let rr = reseller_code(&app, &p).await;
    let writes = "SELECT (SELECT COUNT(*) FROM partner_customers) + (SELECT COUNT(*) FROM audit_events WHERE tenant_id <> '')";
    let before = app.rel_count(writes).await;

    // One character changed.
    let mut tampered: Vec<char> = rr.code.chars().collect();
    let i = tampered.len() - 3;
    tampered[i] = if tampered[i] == 'A' { 'B' } else { 'A' };
    let tampered: String = tampered.into_iter().collect();
    let s = expect_invalid(
        accept_reseller(&app, &customer.admin_token, &tampered, &customer).await,
        "code",
    );
    assert!(
        s.message().contains("altered or mistyped"),
        "{}",
        s.message()
    );

    // A code minted by another instance (its own key).
    let china =
        LinkCodes::new(&Keyring::generate(), "china", "https://partner.sovra.cn").issue("reseller");
    let s = expect_invalid(
        accept_reseller(&app, &customer.admin_token, &china.code, &customer).await,
        "code",
    );
    assert!(s.message().contains("`china`"), "{}", s.message());

    // Authentic, but unknown here (same key, never stored).
    let stray = LinkCodes::new(app.authority.keyring(), "global", "https://x").issue("reseller");
    expect_code(
        accept_reseller(&app, &customer.admin_token, &stray.code, &customer).await,
        Code::NotFound,
    );

    // Revoked.
    app.resellers()
        .revoke_reseller_request(req(
            &p.admin_token,
            rel::RevokeResellerRequestRequest {
                partner_tenant_id: p.id.clone(),
                id: rr.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let s = expect_code(
        accept_reseller(&app, &customer.admin_token, &rr.code, &customer).await,
        Code::FailedPrecondition,
    );
    assert!(s.message().contains("revoked"), "{}", s.message());
    expect_code(
        app.resellers()
            .preview_reseller_request(rel::PreviewResellerRequestRequest {
                code: rr.code.clone(),
            })
            .await,
        Code::FailedPrecondition,
    );

    // Expired: 31 days on the clock pass the 30-day lifetime.
    let fresh = reseller_code(&app, &p).await;
    app.clock
        .advance(std::time::Duration::from_secs(31 * 24 * 3600));
    let customer = Tenant {
        admin_token: app
            .sign_in(&format!("admin@{}", customer.domain), PASSWORD)
            .await,
        ..customer
    };
    let s = expect_code(
        accept_reseller(&app, &customer.admin_token, &fresh.code, &customer).await,
        Code::FailedPrecondition,
    );
    assert!(s.message().contains("expired"), "{}", s.message());

    // A reseller code is not a delegated-admin code.
    expect_invalid(app.accept(&customer, &fresh.code, false).await, "code");
    assert_eq!(
        app.rel_count(writes).await,
        before + 2,
        "only the revocation and the second link were written"
    );
}
backend_test!(tampered_foreign_expired_and_revoked_codes_are_refused_before_any_write);

async fn only_a_customer_global_admin_accepts_and_syndication_customers_cannot(b: Backend) {
    use PartnerAuthorization::*;
    let app = TestApp::spawn(b).await;
    let p = app
        .partner("Fabrikam", &[CloudReseller, DelegatedAdmin])
        .await;
    let customer = app.tenant(TenantKind::Customer, "Contoso").await;
    let rr = reseller_code(&app, &p).await;
    let ua = app
        .user(
            &customer.admin_token,
            &customer,
            "ua",
            CompanyRole::UserAdmin,
            NONE,
        )
        .await;
    let s = expect_code(
        accept_reseller(&app, &ua.token, &rr.code, &customer).await,
        Code::PermissionDenied,
    );
    assert!(s.message().contains("global admin"), "{}", s.message());
    let offer = app.offer(&p).await;
    expect_code(
        app.delegated()
            .accept_delegated_admin_offer(req(
                &ua.token,
                rel::AcceptDelegatedAdminOfferRequest {
                    code: offer.clone(),
                    customer_tenant_id: customer.id.clone(),
                    ..Default::default()
                },
            ))
            .await,
        Code::PermissionDenied,
    );
    // A partner's own admin cannot accept on the customer's behalf either.
    expect_code(
        accept_reseller(&app, &p.admin_token, &rr.code, &customer).await,
        Code::PermissionDenied,
    );
    // A partner tenant is not a customer.
    let other = app.partner("Other", &[]).await;
    let s = expect_code(
        accept_reseller(&app, &other.admin_token, &rr.code, &other).await,
        Code::FailedPrecondition,
    );
    assert!(s.message().contains("partner tenant"), "{}", s.message());

    // Syndication customers are refused.
    let domain = format!(
        "synd-{}.example",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let synd = app
        .tenants()
        .create_tenant(req(
            &app.operator,
            CreateTenantRequest {
                kind: TenantKind::Customer as i32,
                display_name: "Synd".into(),
                primary_domain: domain.clone(),
                syndication: true,
                first_admin: Some(FirstAdmin {
                    user_principal_name: format!("admin@{domain}"),
                    display_name: "A".into(),
                    password: PASSWORD.into(),
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .tenant
        .unwrap();
    let token = app.sign_in(&format!("admin@{domain}"), PASSWORD).await;
    let synd = Tenant {
        id: synd.id,
        domain,
        admin_id: String::new(),
        admin_token: token.clone(),
    };
    let s = expect_code(
        accept_reseller(&app, &token, &rr.code, &synd).await,
        Code::FailedPrecondition,
    );
    assert!(s.message().contains("syndication"), "{}", s.message());
    assert_eq!(
        app.rel_count("SELECT COUNT(*) FROM partner_customers")
            .await,
        0
    );
}
backend_test!(only_a_customer_global_admin_accepts_and_syndication_customers_cannot);

async fn partners_need_the_program_an_active_status_and_the_instance_flag(b: Backend) {
    let app = TestApp::spawn(b).await;
    let p = app
        .partner("Fabrikam", &[PartnerAuthorization::SubscriptionAdvisor])
        .await;
    let create = |token: &str, partner: &Tenant| {
        req(
            token,
            rel::CreateResellerRequestRequest {
                partner_tenant_id: partner.id.clone(),
                ..Default::default()
            },
        )
    };
    let s = expect_code(
        app.resellers()
            .create_reseller_request(create(&p.admin_token, &p))
            .await,
        Code::FailedPrecondition,
    );
    assert!(s.message().contains("CLOUD_RESELLER"), "{}", s.message());
    let s = expect_code(
        app.customers()
            .list_customers(req(
                &p.admin_token,
                rel::ListCustomersRequest {
                    partner_tenant_id: p.id.clone(),
                    ..Default::default()
                },
            ))
            .await,
        Code::FailedPrecondition,
    );
    assert!(
        s.message()
            .contains("DELEGATED_ADMIN or SERVICE_PROVIDER or CLOUD_RESELLER"),
        "{}",
        s.message()
    );

    // A partner user without supported-companies access or an admin role may not.
    let r = app
        .partner("Reseller", &[PartnerAuthorization::CloudReseller])
        .await;
    let plain = app
        .user(&r.admin_token, &r, "plain", CompanyRole::Unspecified, NONE)
        .await;
    expect_code(
        app.resellers()
            .create_reseller_request(create(&plain.token, &r))
            .await,
        Code::PermissionDenied,
    );
    // Another partner's tenant is not found, not merely forbidden.
    expect_code(
        app.resellers()
            .create_reseller_request(create(&p.admin_token, &r))
            .await,
        Code::NotFound,
    );
    // Bad input names the field.
    expect_invalid(
        app.resellers()
            .create_reseller_request(req(
                &r.admin_token,
                rel::CreateResellerRequestRequest {
                    partner_tenant_id: r.id.clone(),
                    email_body: "Please accept.".into(),
                    ..Default::default()
                },
            ))
            .await,
        "email_body",
    );
    expect_invalid(
        app.resellers()
            .create_reseller_request(req(
                &r.admin_token,
                rel::CreateResellerRequestRequest {
                    partner_tenant_id: "china_0123456789abcdef0123456789abcdef".into(),
                    ..Default::default()
                },
            ))
            .await,
        "partner_tenant_id",
    );

    // Suspended partners can't create links.
    app.tenants()
        .set_partner_status(req(
            &app.operator,
            SetPartnerStatusRequest {
                tenant_id: r.id.clone(),
                status: PartnerStatus::Suspended as i32,
                reason: "audit".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let s = expect_code(
        app.resellers()
            .create_reseller_request(create(&r.admin_token, &r))
            .await,
        Code::FailedPrecondition,
    );
    assert!(s.message().contains("suspended"), "{}", s.message());
    assert_eq!(app.rel_count("SELECT COUNT(*) FROM links").await, 0);
}
backend_test!(partners_need_the_program_an_active_status_and_the_instance_flag);

async fn a_disabled_feature_is_refused_naming_it_and_the_instance(b: Backend) {
    let db = TestDb::new(b).await;
    let s = settings_with(
        "china",
        &db,
        vec![
            ("features.delegated_admin".into(), "false".into()),
            ("features.customer_management".into(), "false".into()),
        ],
    );
    let app = TestApp::start(&s, Arc::new(Keyring::generate()))
        .await
        .unwrap();
    let p = app
        .partner("Fabrikam", &[PartnerAuthorization::DelegatedAdmin])
        .await;
    let s = expect_code(
        app.delegated()
            .create_delegated_admin_offer(req(
                &p.admin_token,
                rel::CreateDelegatedAdminOfferRequest {
                    partner_tenant_id: p.id.clone(),
                    ..Default::default()
                },
            ))
            .await,
        Code::FailedPrecondition,
    );
    assert!(
        s.message().contains("`delegated_admin`") && s.message().contains("`china`"),
        "{}",
        s.message()
    );
    let s = expect_code(
        app.customers()
            .list_customers(req(
                &p.admin_token,
                rel::ListCustomersRequest {
                    partner_tenant_id: p.id.clone(),
                    ..Default::default()
                },
            ))
            .await,
        Code::FailedPrecondition,
    );
    assert!(
        s.message().contains("`customer_management`"),
        "{}",
        s.message()
    );
    drop(app);
    drop(db);
}
backend_test!(a_disabled_feature_is_refused_naming_it_and_the_instance);
