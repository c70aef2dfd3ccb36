//! Start-up: health, the instance stamp, loopback-only plaintext, graceful stop.

use std::sync::Arc;

use sovra_runtime::auth::Keyring;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

use crate::{backend_test, helpers::*};

async fn every_service_reports_serving(b: Backend) {
    let app = TestApp::spawn(b).await;
    let mut health = HealthClient::new(app.channel.clone());
    for service in [
        "",
        "sovra.identity.v1.TenantService",
        "sovra.identity.v1.UserService",
        "sovra.identity.v1.AuthService",
        "sovra.identity.v1.AccessService",
        "sovra.relationships.v1.CustomerService",
        "sovra.relationships.v1.ResellerService",
        "sovra.relationships.v1.DelegatedAdminService",
        "sovra.relationships.v1.ServiceRequestService",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service}");
    }
    app.stop().await;
}
backend_test!(every_service_reports_serving);

async fn a_database_of_another_instance_is_refused(b: Backend) {
    let db = TestDb::new(b).await;
    let global = TestApp::start(&settings("global", &db), Arc::new(Keyring::generate()))
        .await
        .unwrap();
    global.stop().await;
    let err = match TestApp::start(&settings("china", &db), Arc::new(Keyring::generate())).await {
        Ok(_) => panic!("china started on global's database"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("instance `global`") && err.contains("this is instance `china`"),
        "{err}"
    );
    // And global still starts on its own database, data intact.
    let again = TestApp::start(&settings("global", &db), Arc::new(Keyring::generate()))
        .await
        .unwrap();
    again.stop().await;
}
backend_test!(a_database_of_another_instance_is_refused);

#[tokio::test]
async fn plaintext_is_refused_off_loopback() {
    let err = sovra::refuse_plaintext_off_loopback(&"0.0.0.0:50051".parse().unwrap()).unwrap_err();
    assert!(format!("{err}").contains("loopback"));
    sovra::refuse_plaintext_off_loopback(&"127.0.0.1:50051".parse().unwrap()).unwrap();
    sovra::refuse_plaintext_off_loopback(&"[::1]:50051".parse().unwrap()).unwrap();
}

async fn relationships_served_alone_calls_identity_served_elsewhere(b: Backend) {
    let db = TestDb::new(b).await;
    let key = Arc::new(Keyring::generate());
    let identity = TestApp::start_services(
        &settings("global", &db),
        key.clone(),
        sovra::Services::one("identity").unwrap(),
    )
    .await
    .unwrap();
    // Without identity in the process, the URL is required.
    let err = TestApp::start_services(
        &settings("global", &db),
        key.clone(),
        sovra::Services::one("relationships").unwrap(),
    )
    .await
    .err()
    .expect("relationships alone needs identity_url");
    assert!(
        err.to_string().contains("relationships.identity_url"),
        "{err}"
    );
    let relationships = TestApp::start_services(
        &settings_with(
            "global",
            &db,
            vec![(
                "relationships.identity_url".into(),
                format!("http://{}", identity.addr),
            )],
        ),
        key,
        sovra::Services::one("relationships").unwrap(),
    )
    .await
    .unwrap();
    let p = identity
        .partner("Fabrikam", &[PartnerAuthorization::DelegatedAdmin])
        .await;
    let c = identity.tenant(TenantKind::Customer, "Contoso").await;
    let code = relationships.offer(&p).await;
    let agent = identity
        .user(
            &p.admin_token,
            &p,
            "agent",
            CompanyRole::Unspecified,
            SupportedCompaniesAccess::Full,
        )
        .await;
    assert!(
        !identity
            .may(&agent.token, &c, Permission::UsersManage)
            .await
    );
    relationships.accept(&c, &code, false).await.unwrap();
    assert!(
        identity
            .may(&agent.token, &c, Permission::UsersManage)
            .await
    );
    // Each process serves only its own services.
    let s = relationships
        .tenants()
        .get_tenant(req(
            &p.admin_token,
            GetTenantRequest {
                tenant_id: p.id.clone(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::Unimplemented);
}
backend_test!(relationships_served_alone_calls_identity_served_elsewhere);
