//! Sovereign instances: two complete instances side by side share nothing;
//! mutual TLS decides which service is calling; flags reload per tenant;
//! mutating calls are limited per partner and per partner and customer.

use std::sync::Arc;

use sovra::App;
use sovra_runtime::{
    auth::Keyring,
    features::TenantOverride,
    tls::{self, Connector},
};
use tonic::{Code, Request};
use tonic_types::StatusExt;

use crate::{backend_test, helpers::*};

/// Starts `instance` with its own keys, CA and SQLite databases.
async fn instance(name: &str) -> (TestApp, TempDir) {
    let dir = TempDir::new(&format!("{name}-tls"));
    let db = TestDb::new(Backend::Sqlite).await;
    let mut app = TestApp::start(
        &settings_with(name, &db, tls_overrides(dir.path(), name)),
        Arc::new(Keyring::generate()),
    )
    .await
    .unwrap();
    app.keep(db);
    (app, dir)
}

fn cert(dir: &TempDir, service: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    (
        dir.path().join(format!("{service}.pem")),
        dir.path().join(format!("{service}.key")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_side_by_side_share_nothing() {
    let (global, g_tls) = instance("global").await;
    let (china, c_tls) = instance("china").await;

    // Each works on its own over mutual TLS, across its three services: a
    // new customer signs up through a trial link with delegated admin
    // (commerce → identity, commerce → relationships → identity).
    let partner = global.partner("Contoso", ADVISOR).await;
    let agent = global.agent(&partner).await;
    let code = global
        .trial_code(&agent, &partner, "office-business", true)
        .await;
    let (choice, _) = new_customer("Fabrikam");
    global
        .trials()
        .redeem_trial_invitation(Request::new(com::RedeemTrialInvitationRequest {
            request_id: "signup-1".into(),
            code: code.clone(),
            customer: Some(choice),
            accept_delegated_admin: true,
            reassign: false,
        }))
        .await
        .unwrap();
    assert_eq!(
        global
            .rel_count("SELECT COUNT(*) FROM delegated_admin_relationships WHERE state = 'ACTIVE'")
            .await,
        1
    );
    let c_partner = china.partner("Beijing Partners", ADVISOR).await;

    // A token of global: UNAUTHENTICATED in china, naming global.
    for token in [&partner.admin_token, &global.operator] {
        let s = expect_code(
            china
                .tenants()
                .get_tenant(req(
                    token,
                    GetTenantRequest {
                        tenant_id: c_partner.id.clone(),
                    },
                ))
                .await,
            Code::Unauthenticated,
        );
        assert!(s.message().contains("instance `global`"), "{s:?}");
    }

    // A link code of global: INVALID_ARGUMENT in china, naming global.
    let s = expect_code(
        china
            .com_links()
            .preview_link(com::PreviewLinkRequest { code: code.clone() })
            .await,
        Code::InvalidArgument,
    );
    assert!(s.message().contains("global"), "{s:?}");

    // A tenant id of global: INVALID_ARGUMENT in china, naming global.
    let s = expect_code(
        china
            .tenants()
            .get_tenant(req(
                &china.operator,
                GetTenantRequest {
                    tenant_id: partner.id.clone(),
                },
            ))
            .await,
        Code::InvalidArgument,
    );
    assert!(s.message().contains("instance `global`"), "{s:?}");

    // A service certificate of global: no handshake with china either way.
    // Global's commerce, trusting its own CA, refuses china's server certificate.
    let (g_cert, g_key) = cert(&g_tls, "commerce");
    let as_global = tls::client_config(
        "global",
        &g_tls.path().join("ca.pem"),
        Some((&g_cert, &g_key)),
    )
    .unwrap();
    let err = Connector::fixed(as_global)
        .connect("127.0.0.1", china.addr.port())
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(
        err.to_string().contains("belongs to instance `china`"),
        "{err}"
    );
    // And china refuses global's certificate even from a client that trusts china.
    let foreign = tls_channel(
        china.addr,
        "china",
        &c_tls.path().join("ca.pem"),
        Some((&g_cert, &g_key)),
    );
    let r = tenant_service_client::TenantServiceClient::new(foreign)
        .get_features(req(&china.operator, GetFeaturesRequest::default()))
        .await;
    // The connection dies in the handshake, so no answer comes back at all
    // (how the client reports that, UNAVAILABLE or UNKNOWN or INTERNAL,
    // depends on when the alert lands).
    match &r {
        Ok(_) => panic!("china accepted global's certificate"),
        Err(s) => assert!(
            s.get_details_error_info().is_none(),
            "china answered instead of dropping the connection: {s:?}"
        ),
    }
    // The same call with china's own certificate goes through.
    let (c_cert, c_key) = cert(&c_tls, "commerce");
    let own = tls_channel(
        china.addr,
        "china",
        &c_tls.path().join("ca.pem"),
        Some((&c_cert, &c_key)),
    );
    let features = tenant_service_client::TenantServiceClient::new(own)
        .get_features(req(&china.operator, GetFeaturesRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(features.instance, "china");

    // A database of global: china refuses to start on it, naming global.
    let err = match App::build(
        &settings_with(
            "china",
            global.databases(),
            tls_overrides(c_tls.path(), "china"),
        ),
        Arc::new(Keyring::generate()),
        Arc::new(sovra_runtime::clock::ManualClock::default()),
    )
    .await
    {
        Ok(_) => panic!("china started on global's databases"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("instance `global`"), "{err}");

    // Nothing of global reached china.
    assert_eq!(china.count("SELECT COUNT(*) FROM tenants").await, 1);
    assert_eq!(china.com_count("SELECT COUNT(*) FROM redemptions").await, 0);
}

/// `sovra up` calls its own services in-process; split across processes
/// (as `sovra serve` runs them), the same calls go over mutual TLS, each
/// service presenting its own certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_services_call_each_other_over_mutual_tls() {
    let dir = TempDir::new("split-tls");
    let db = TestDb::new(Backend::Sqlite).await;
    let keyring = Arc::new(Keyring::generate());
    let tls = tls_overrides(dir.path(), "global");
    let identity = TestApp::start_services(
        &settings_with("global", &db, tls.clone()),
        keyring.clone(),
        sovra::Services::one("identity").unwrap(),
    )
    .await
    .unwrap();
    let identity_url = format!("https://{}", identity.addr);
    let mut more = tls;
    more.push(("relationships.identity_url".into(), identity_url.clone()));
    more.push(("commerce.identity_url".into(), identity_url));
    // Relationships and commerce share a process: commerce reaches
    // relationships in-process and identity over the network.
    let mut rest = TestApp::start_services(
        &settings_with("global", &db, more),
        keyring,
        sovra::Services {
            identity: false,
            relationships: true,
            commerce: true,
        },
    )
    .await
    .unwrap();
    rest.keep(db);

    // A sign-up with delegated admin: commerce → identity (CreateTenant, a
    // service-only call), commerce → relationships → identity (the grant).
    let partner = identity.partner("Contoso", ADVISOR).await;
    let agent = identity.agent(&partner).await;
    let code = rest
        .trial_code(&agent, &partner, "office-business", true)
        .await;
    let (redemption, _) = rest.sign_up(&code, "Fabrikam", "signup-split").await;
    assert_eq!(
        rest.rel_count("SELECT COUNT(*) FROM delegated_admin_relationships WHERE state = 'ACTIVE'")
            .await,
        1
    );
    // The grant reached identity over mTLS: the partner's FULL agent may
    // act in the new customer, by delegation.
    let customer = Tenant {
        id: redemption.customer_tenant_id,
        domain: String::new(),
        admin_id: redemption.admin_user_id,
        admin_token: String::new(),
    };
    assert!(
        identity
            .await_access(
                &agent,
                &customer,
                Permission::SubscriptionsManage,
                true,
                std::time::Duration::from_secs(5)
            )
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_only_calls_accept_only_the_right_peer() {
    let (app, _tls) = instance("global").await;
    let identity = |ch| access_service_client::AccessServiceClient::new(ch);
    let grant = || ApplyDelegatedGrantRequest::default();

    // A service token alone, over a connection with no certificate: refused.
    let s = expect_code(
        identity(app.channel.clone())
            .apply_delegated_grant(req(&app.service_token(), grant()))
            .await,
        Code::Unauthenticated,
    );
    assert_eq!(
        s.get_details_error_info().unwrap().reason,
        "SERVICE_CERTIFICATE_REQUIRED"
    );
    // A service token naming another service than the certificate: refused.
    let token = app.authority.issue_service("relationships", 60).value;
    expect_code(
        identity(app.channel_as("commerce"))
            .apply_delegated_grant(req(&token, grant()))
            .await,
        Code::Unauthenticated,
    );

    // Grants come only from relationships.
    let s = expect_code(
        identity(app.channel_as("commerce"))
            .apply_delegated_grant(Request::new(grant()))
            .await,
        Code::PermissionDenied,
    );
    assert!(
        s.message().contains("only the relationships service"),
        "{s:?}"
    );
    assert!(s.message().contains("service:commerce"), "{s:?}");
    // Relationships gets past the peer check to the request's own checks.
    expect_code(
        identity(app.channel_as("relationships"))
            .apply_delegated_grant(Request::new(grant()))
            .await,
        Code::InvalidArgument,
    );

    // Advisor relationships come only from commerce.
    let advisors = |ch| rel::advisor_service_client::AdvisorServiceClient::new(ch);
    expect_code(
        advisors(app.channel_as("relationships"))
            .record_advisor_relationship(Request::new(
                rel::RecordAdvisorRelationshipRequest::default(),
            ))
            .await,
        Code::PermissionDenied,
    );
    expect_code(
        advisors(app.channel_as("commerce"))
            .record_advisor_relationship(Request::new(
                rel::RecordAdvisorRelationshipRequest::default(),
            ))
            .await,
        Code::InvalidArgument,
    );

    // Tenants are created by the operator, or by commerce for sign-ups.
    let tenants = |ch| tenant_service_client::TenantServiceClient::new(ch);
    expect_code(
        tenants(app.channel_as("relationships"))
            .create_tenant(Request::new(CreateTenantRequest::default()))
            .await,
        Code::PermissionDenied,
    );
    expect_code(
        tenants(app.channel_as("commerce"))
            .create_tenant(Request::new(CreateTenantRequest::default()))
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM tenants").await, 0);
}

async fn flags_reload_per_tenant_and_each_change_is_audited(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.partner("Narrowed", ADVISOR).await;
    let other = app.partner("Untouched", ADVISOR).await;
    let (a_agent, other_agent) = (app.agent(&a).await, app.agent(&other).await);
    app.trial_code(&a_agent, &a, "office-business", false).await;

    // Reload: trials off for one tenant, purchase offers off everywhere.
    let mut s = app.settings.clone();
    s.features.purchase_offers = false;
    s.feature_overrides = vec![TenantOverride {
        tenant_id: a.id.clone(),
        off: vec!["trials".into()],
    }];
    let changes = app.reloader.apply(&s).await.unwrap();
    assert_eq!(changes.len(), 2, "{changes:?}");

    let st = expect_code(trial(&app, &a_agent, &a).await, Code::FailedPrecondition);
    assert!(
        st.message().contains("`trials`")
            && st.message().contains(&format!("tenant `{}`", a.id))
            && st.message().contains("instance `global`"),
        "{st:?}"
    );
    trial(&app, &other_agent, &other).await.unwrap();
    let st = expect_code(
        app.offers()
            .create_purchase_offer(req(
                &other_agent,
                com::CreatePurchaseOfferRequest {
                    request_id: "o1".into(),
                    partner_tenant_id: other.id.clone(),
                    lines: vec![com::OfferLine {
                        product_id: "office-business".into(),
                        license_count: 5,
                    }],
                    ..Default::default()
                },
            ))
            .await,
        Code::FailedPrecondition,
    );
    assert!(
        st.message().contains("`purchase_offers`") && st.message().contains("instance `global`")
    );

    // GetFeatures tells each tenant what is on for it.
    let on = |tenant: &str| {
        let tenant = tenant.to_owned();
        let app = &app;
        async move {
            app.tenants()
                .get_features(req(&app.operator, GetFeaturesRequest { tenant_id: tenant }))
                .await
                .unwrap()
                .into_inner()
                .features
                .into_iter()
                .map(|f| (f.name, f.enabled))
                .collect::<std::collections::HashMap<_, _>>()
        }
    };
    let (fa, fo, fi) = (on(&a.id).await, on(&other.id).await, on("").await);
    assert!(!fa["trials"] && fo["trials"] && fi["trials"]);
    assert!(!fa["purchase_offers"] && !fo["purchase_offers"] && !fi["purchase_offers"]);

    // Audited: the instance-wide change under no tenant, the override in the tenant.
    let audit = |tenant: &str| {
        let tenant = tenant.to_owned();
        let app = &app;
        async move {
            app.tenants()
                .list_audit_events(req(
                    &app.operator,
                    ListAuditEventsRequest {
                        tenant_id: tenant,
                        ..Default::default()
                    },
                ))
                .await
                .unwrap()
                .into_inner()
                .events
                .into_iter()
                .map(|e| e.target)
                .collect::<Vec<_>>()
        }
    };
    assert!(audit("")
        .await
        .contains(&"purchase_offers turned off".to_owned()));
    assert!(audit(&a.id)
        .await
        .contains(&format!("trials turned off for tenant {}", a.id)));

    // Back on, without a restart.
    let back = app.reloader.apply(&app.settings).await.unwrap();
    assert_eq!(back.len(), 2);
    trial(&app, &a_agent, &a).await.unwrap();
}
backend_test!(flags_reload_per_tenant_and_each_change_is_audited);

async fn mutating_calls_are_limited_per_partner_and_per_customer(b: Backend) {
    let db = TestDb::new(b).await;
    let s = settings_with(
        "global",
        &db,
        vec![
            ("limits.partner_burst".into(), "5".into()),
            ("limits.partner_per_minute".into(), "1".into()),
            ("limits.customer_burst".into(), "2".into()),
            ("limits.customer_per_minute".into(), "1".into()),
        ],
    );
    let mut app = TestApp::start(&s, Arc::new(Keyring::generate()))
        .await
        .unwrap();
    app.keep(db);
    let partner = app
        .partner("Busy", &[PartnerAuthorization::DelegatedAdmin])
        .await;
    let (c1, c2) = (
        app.tenant(TenantKind::Customer, "One").await,
        app.tenant(TenantKind::Customer, "Two").await,
    );
    offer(&app, &partner, &c1).await.unwrap();
    offer(&app, &partner, &c1).await.unwrap();
    let before = app.rel_count("SELECT COUNT(*) FROM links").await;
    let s = expect_code(offer(&app, &partner, &c1).await, Code::ResourceExhausted);
    assert_eq!(
        s.get_details_error_info().unwrap().reason,
        "CUSTOMER_RATE_LIMITED"
    );
    let retry = s.get_details_retry_info().expect("RetryInfo");
    assert!(retry.retry_delay.is_some_and(|d| !d.is_zero()), "{retry:?}");
    assert_eq!(
        app.rel_count("SELECT COUNT(*) FROM links").await,
        before,
        "a refused call writes nothing"
    );
    // Another customer of the same partner has its own allowance…
    offer(&app, &partner, &c2).await.unwrap();
    offer(&app, &partner, &c2).await.unwrap();
    // …until the partner's own runs out (5 = 2 + 2 + 1).
    offer(
        &app,
        &partner,
        &app.tenant(TenantKind::Customer, "Three").await,
    )
    .await
    .unwrap();
    let s = expect_code(
        offer(
            &app,
            &partner,
            &app.tenant(TenantKind::Customer, "Four").await,
        )
        .await,
        Code::ResourceExhausted,
    );
    assert_eq!(
        s.get_details_error_info().unwrap().reason,
        "PARTNER_RATE_LIMITED"
    );
    assert!(s.message().contains(&partner.id));
}
backend_test!(mutating_calls_are_limited_per_partner_and_per_customer);

async fn trial(
    app: &TestApp,
    token: &str,
    p: &Tenant,
) -> Result<tonic::Response<com::CreateTrialInvitationResponse>, tonic::Status> {
    app.trials()
        .create_trial_invitation(req(
            token,
            com::CreateTrialInvitationRequest {
                request_id: uuid::Uuid::new_v4().to_string(),
                partner_tenant_id: p.id.clone(),
                product_id: "office-business".into(),
                include_delegated_admin: false,
            },
        ))
        .await
}

/// A delegated-admin offer by `partner`'s admin, targeted at `customer`.
async fn offer(
    app: &TestApp,
    partner: &Tenant,
    customer: &Tenant,
) -> Result<tonic::Response<rel::CreateDelegatedAdminOfferResponse>, tonic::Status> {
    app.delegated()
        .create_delegated_admin_offer(req(
            &partner.admin_token,
            rel::CreateDelegatedAdminOfferRequest {
                partner_tenant_id: partner.id.clone(),
                customer_tenant_id: customer.id.clone(),
                request_id: uuid::Uuid::new_v4().to_string(),
            },
        ))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_without_downtime() {
    let (app, dir) = instance("global").await;
    let ca = dir.path().join("ca.pem");
    let old_ca = TempDir::new("old-ca");
    std::fs::copy(&ca, old_ca.path().join("ca.pem")).unwrap();
    for f in ["relationships.pem", "relationships.key"] {
        std::fs::copy(dir.path().join(f), old_ca.path().join(f)).unwrap();
    }
    let old_cert = (
        old_ca.path().join("relationships.pem"),
        old_ca.path().join("relationships.key"),
    );
    let grant = || Request::new(ApplyDelegatedGrantRequest::default());
    let call = |ch: tonic::transport::Channel| async move {
        access_service_client::AccessServiceClient::new(ch)
            .apply_delegated_grant(grant())
            .await
    };
    // A connection opened before the rotation.
    let open = app.channel_as("relationships");
    expect_code(call(open.clone()).await, Code::InvalidArgument);

    // Start the rotation: new CA, new certificates, the bundle trusts both.
    sovra_runtime::tls::pki::rotate(
        dir.path(),
        "global",
        &sovra_runtime::tls::pki::loopback_names(),
    )
    .unwrap();
    app.reloader.apply(&app.settings).await.unwrap();
    // The open connection carries on; a peer still holding the old
    // certificate (and bundle) connects anew; one with the new certificate too.
    expect_code(call(open.clone()).await, Code::InvalidArgument);
    let holdout = tls_channel(app.addr, "global", &ca, Some((&old_cert.0, &old_cert.1)));
    expect_code(call(holdout).await, Code::InvalidArgument);
    expect_code(
        call(app.channel_as("relationships")).await,
        Code::InvalidArgument,
    );

    // Finish it: the old CA is no longer trusted.
    sovra_runtime::tls::pki::finish_rotation(dir.path()).unwrap();
    app.reloader.apply(&app.settings).await.unwrap();
    let late = tls_channel(app.addr, "global", &ca, Some((&old_cert.0, &old_cert.1)));
    let r = call(late).await;
    assert!(
        matches!(&r, Err(s) if s.get_details_error_info().is_none()),
        "a certificate of the retired CA still works: {r:?}"
    );
    expect_code(
        call(app.channel_as("relationships")).await,
        Code::InvalidArgument,
    );
}
