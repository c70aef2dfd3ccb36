//! TenantService: creation, company information, partner programs, features, audit.

use prost_types::FieldMask;
use tonic::Code;

use crate::{backend_test, helpers::*};

fn create(domain: &str) -> CreateTenantRequest {
    CreateTenantRequest {
        kind: TenantKind::Partner as i32,
        display_name: "Fabrikam".into(),
        primary_domain: domain.into(),
        first_admin: Some(FirstAdmin {
            user_principal_name: format!("ada@{domain}"),
            display_name: "Ada".into(),
            password: PASSWORD.into(),
        }),
        ..Default::default()
    }
}

async fn the_operator_creates_a_partner_whose_admin_signs_in(b: Backend) {
    let app = TestApp::spawn(b).await;
    let resp = app
        .tenants()
        .create_tenant(req(&app.operator, create("fabrikam.example")))
        .await
        .unwrap()
        .into_inner();
    let t = resp.tenant.unwrap();
    assert!(t.id.starts_with("global_"));
    assert_eq!(t.kind, TenantKind::Partner as i32);
    assert_eq!(t.partner_status, PartnerStatus::Active as i32);
    assert_eq!(t.data_region, "eu-west", "the instance's default region");
    assert_eq!(
        t.company_profile.unwrap().name,
        "Fabrikam",
        "the profile name defaults to the display name"
    );
    let admin = resp.first_admin.unwrap();
    assert_eq!(admin.company_role, CompanyRole::GlobalAdmin as i32);
    let token = app.sign_in("ADA@Fabrikam.example", PASSWORD).await;
    let me = app
        .tenants()
        .get_tenant(req(
            &token,
            GetTenantRequest {
                tenant_id: t.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.tenant.unwrap().primary_domain, "fabrikam.example");
}
backend_test!(the_operator_creates_a_partner_whose_admin_signs_in);

async fn only_the_operator_creates_tenants(b: Backend) {
    let app = TestApp::spawn(b).await;
    let p = app.tenant(TenantKind::Partner, "Partner").await;
    expect_code(
        app.tenants()
            .create_tenant(req(&p.admin_token, create("x.example")))
            .await,
        Code::PermissionDenied,
    );
    expect_code(
        app.tenants()
            .create_tenant(tonic::Request::new(create("x.example")))
            .await,
        Code::Unauthenticated,
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM tenants").await, 1);
}
backend_test!(only_the_operator_creates_tenants);

async fn bad_tenant_input_names_the_field_and_writes_nothing(b: Backend) {
    let app = TestApp::spawn(b).await;
    type Mutation = Box<dyn Fn(&mut CreateTenantRequest)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("display_name", Box::new(|r| r.display_name = "  ".into())),
        (
            "display_name",
            Box::new(|r| r.display_name = "x".repeat(300)),
        ),
        (
            "primary_domain",
            Box::new(|r| r.primary_domain = "not a domain".into()),
        ),
        (
            "data_region",
            Box::new(|r| r.data_region = "cn-north".into()),
        ),
        ("kind", Box::new(|r| r.kind = 0)),
        ("first_admin", Box::new(|r| r.first_admin = None)),
        (
            "first_admin.user_principal_name",
            Box::new(|r| r.first_admin.as_mut().unwrap().user_principal_name = "ada".into()),
        ),
        (
            "first_admin.user_principal_name",
            Box::new(|r| {
                r.first_admin.as_mut().unwrap().user_principal_name = "ada@elsewhere.example".into()
            }),
        ),
        (
            "first_admin.password",
            Box::new(|r| r.first_admin.as_mut().unwrap().password = "weak".into()),
        ),
        (
            "company_profile.email",
            Box::new(|r| {
                r.company_profile = Some(sovra_proto::common::v1::CompanyProfile {
                    email: "nope".into(),
                    ..Default::default()
                })
            }),
        ),
        ("syndication", Box::new(|r| r.syndication = true)),
    ];
    for (field, mutate) in cases {
        let mut r = create("good.example");
        mutate(&mut r);
        expect_invalid(
            app.tenants().create_tenant(req(&app.operator, r)).await,
            field,
        );
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM tenants").await, 0);
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 0);
    assert_eq!(app.count("SELECT COUNT(*) FROM audit_events").await, 0);
}
backend_test!(bad_tenant_input_names_the_field_and_writes_nothing);

async fn the_same_request_id_creates_one_tenant(b: Backend) {
    let app = TestApp::spawn(b).await;
    let mut r = create("once.example");
    r.request_id = "9b1f3f4e-create-once".into();
    let first = app
        .tenants()
        .create_tenant(req(&app.operator, r.clone()))
        .await
        .unwrap()
        .into_inner();
    let second = app
        .tenants()
        .create_tenant(req(&app.operator, r.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, second, "a retry returns the first result");
    assert_eq!(app.count("SELECT COUNT(*) FROM tenants").await, 1);
    r.display_name = "Something else".into();
    expect_invalid(
        app.tenants().create_tenant(req(&app.operator, r)).await,
        "request_id",
    );
}
backend_test!(the_same_request_id_creates_one_tenant);

async fn a_taken_domain_is_already_exists(b: Backend) {
    let app = TestApp::spawn(b).await;
    app.tenants()
        .create_tenant(req(&app.operator, create("dup.example")))
        .await
        .unwrap();
    let mut again = create("DUP.example");
    again.first_admin.as_mut().unwrap().user_principal_name = "bob@dup.example".into();
    expect_code(
        app.tenants().create_tenant(req(&app.operator, again)).await,
        Code::AlreadyExists,
    );
}
backend_test!(a_taken_domain_is_already_exists);

async fn every_member_reads_company_information_and_only_global_admins_edit_it(b: Backend) {
    let app = TestApp::spawn(b).await;
    let c = app.tenant(TenantKind::Customer, "Customer").await;
    let billing = app
        .user(
            &c.admin_token,
            &c,
            "bill",
            CompanyRole::BillingAdmin,
            SupportedCompaniesAccess::Unspecified,
        )
        .await;
    let member = app
        .user(
            &c.admin_token,
            &c,
            "mia",
            CompanyRole::Unspecified,
            SupportedCompaniesAccess::Unspecified,
        )
        .await;
    let read = app
        .tenants()
        .get_tenant(req(
            &member.token,
            GetTenantRequest {
                tenant_id: c.id.clone(),
            },
        ))
        .await
        .unwrap();
    let etag = read.into_inner().tenant.unwrap().etag;
    let update = |token: &str, etag: &str, phone: &str| {
        req(
            token,
            UpdateCompanyProfileRequest {
                tenant_id: c.id.clone(),
                company_profile: Some(sovra_proto::common::v1::CompanyProfile {
                    phone: phone.into(),
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["phone".into()],
                }),
                etag: etag.into(),
                ..Default::default()
            },
        )
    };
    expect_code(
        app.tenants()
            .update_company_profile(update(&billing.token, &etag, "+39 02 1234"))
            .await,
        Code::PermissionDenied,
    );
    expect_code(
        app.tenants()
            .update_company_profile(update(&member.token, &etag, "+39 02 1234"))
            .await,
        Code::PermissionDenied,
    );
    let updated = app
        .tenants()
        .update_company_profile(update(&c.admin_token, &etag, "+39 02 1234"))
        .await
        .unwrap()
        .into_inner()
        .tenant
        .unwrap();
    let profile = updated.company_profile.unwrap();
    assert_eq!(profile.phone, "+39 02 1234");
    assert_eq!(profile.name, "Customer", "fields outside the mask are kept");
    assert_ne!(updated.etag, etag);
    expect_code(
        app.tenants()
            .update_company_profile(update(&c.admin_token, &etag, "+39 02 9999"))
            .await,
        Code::Aborted,
    );
    expect_invalid(
        app.tenants()
            .update_company_profile(update(&c.admin_token, "", "phone?"))
            .await,
        "company_profile.phone",
    );
}
backend_test!(every_member_reads_company_information_and_only_global_admins_edit_it);

async fn partner_programs_and_status_are_the_operators(b: Backend) {
    let app = TestApp::spawn(b).await;
    let p = app.tenant(TenantKind::Partner, "Partner").await;
    let c = app.tenant(TenantKind::Customer, "Customer").await;
    let set = |token: &str, tenant: &str| {
        req(
            token,
            SetPartnerAuthorizationsRequest {
                tenant_id: tenant.into(),
                authorizations: vec![
                    PartnerAuthorization::DelegatedAdmin as i32,
                    PartnerAuthorization::CloudReseller as i32,
                ],
                ..Default::default()
            },
        )
    };
    expect_code(
        app.tenants()
            .set_partner_authorizations(set(&p.admin_token, &p.id))
            .await,
        Code::PermissionDenied,
    );
    let t = app
        .tenants()
        .set_partner_authorizations(set(&app.operator, &p.id))
        .await
        .unwrap()
        .into_inner()
        .tenant
        .unwrap();
    assert_eq!(t.partner_authorizations.len(), 2);
    expect_invalid(
        app.tenants()
            .set_partner_authorizations(set(&app.operator, &c.id))
            .await,
        "tenant_id",
    );
    let suspended = app
        .tenants()
        .set_partner_status(req(
            &app.operator,
            SetPartnerStatusRequest {
                tenant_id: p.id.clone(),
                status: PartnerStatus::Suspended as i32,
                reason: "unpaid invoices".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .tenant
        .unwrap();
    assert_eq!(suspended.partner_status, PartnerStatus::Suspended as i32);
    expect_invalid(
        app.tenants()
            .set_partner_status(req(
                &app.operator,
                SetPartnerStatusRequest {
                    tenant_id: p.id.clone(),
                    ..Default::default()
                },
            ))
            .await,
        "status",
    );
}
backend_test!(partner_programs_and_status_are_the_operators);

async fn features_differ_by_instance(b: Backend) {
    let global = TestApp::spawn(b).await;
    let china = TestApp::spawn_instance(b, "china").await;
    let flags = |app: &TestApp| {
        let mut c = app.tenants();
        let token = app.operator.clone();
        async move {
            c.get_features(req(&token, GetFeaturesRequest::default()))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let g = flags(&global).await;
    let c = flags(&china).await;
    let on = |r: &GetFeaturesResponse, name: &str| {
        r.features.iter().find(|f| f.name == name).unwrap().enabled
    };
    assert_eq!(g.instance, "global");
    assert!(on(&g, "product_keys"));
    assert_eq!(c.instance, "china");
    assert!(!on(&c, "product_keys"));
    assert!(on(&c, "trials"));
}
backend_test!(features_differ_by_instance);

async fn customer_admins_read_the_audit_trail_of_their_tenant(b: Backend) {
    let app = TestApp::spawn(b).await;
    let c = app.tenant(TenantKind::Customer, "Customer").await;
    for i in 0..3 {
        app.user(
            &c.admin_token,
            &c,
            &format!("u{i}"),
            CompanyRole::Unspecified,
            SupportedCompaniesAccess::Unspecified,
        )
        .await;
    }
    let list = |token: &str, page_token: &str| {
        req(
            token,
            ListAuditEventsRequest {
                tenant_id: c.id.clone(),
                page_size: 2,
                page_token: page_token.into(),
            },
        )
    };
    let first = app
        .tenants()
        .list_audit_events(list(&c.admin_token, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.events.len(), 2);
    assert_eq!(
        first.events[0].action, "identity.user.create",
        "newest first"
    );
    assert_eq!(first.events[0].actor_id, c.admin_id);
    let second = app
        .tenants()
        .list_audit_events(list(&c.admin_token, &first.next_page_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.events.len(), 2);
    assert_eq!(second.events[1].action, "identity.tenant.create");
    assert!(second.next_page_token.is_empty());
    let member = app
        .user(
            &c.admin_token,
            &c,
            "mia",
            CompanyRole::UserAdmin,
            SupportedCompaniesAccess::Unspecified,
        )
        .await;
    expect_code(
        app.tenants()
            .list_audit_events(list(&member.token, ""))
            .await,
        Code::PermissionDenied,
    );
    expect_invalid(
        app.tenants()
            .list_audit_events(list(&c.admin_token, "garbage"))
            .await,
        "page_token",
    );
}
backend_test!(customer_admins_read_the_audit_trail_of_their_tenant);

async fn a_user_of_one_tenant_cannot_see_another(b: Backend) {
    let app = TestApp::spawn(b).await;
    let a = app.tenant(TenantKind::Customer, "Alpha").await;
    let z = app.tenant(TenantKind::Customer, "Zulu").await;
    let s = expect_code(
        app.tenants()
            .get_tenant(req(
                &a.admin_token,
                GetTenantRequest {
                    tenant_id: z.id.clone(),
                },
            ))
            .await,
        Code::NotFound,
    );
    assert!(!s.message().contains("Zulu"));
    expect_code(
        app.users()
            .list_users(req(
                &a.admin_token,
                ListUsersRequest {
                    tenant_id: z.id.clone(),
                    ..Default::default()
                },
            ))
            .await,
        Code::NotFound,
    );
    expect_code(
        app.users()
            .get_user(req(
                &a.admin_token,
                GetUserRequest {
                    tenant_id: z.id.clone(),
                    user_id: z.admin_id.clone(),
                },
            ))
            .await,
        Code::NotFound,
    );
    expect_code(
        app.users()
            .reset_password(req(
                &a.admin_token,
                ResetPasswordRequest {
                    tenant_id: z.id.clone(),
                    user_id: z.admin_id.clone(),
                    ..Default::default()
                },
            ))
            .await,
        Code::NotFound,
    );
    // Naming a user of Z under A's own tenant finds nothing either.
    expect_code(
        app.users()
            .get_user(req(
                &a.admin_token,
                GetUserRequest {
                    tenant_id: a.id.clone(),
                    user_id: z.admin_id.clone(),
                },
            ))
            .await,
        Code::NotFound,
    );
}
backend_test!(a_user_of_one_tenant_cannot_see_another);
