//! UserService: the directory, roles, soft delete and purge, password resets.

use prost_types::FieldMask;
use tonic::Code;

use crate::{backend_test, helpers::*};

async fn a_global_admin_creates_users_and_pages_through_them(b: Backend) {
    let app = TestApp::spawn(b).await;
    let c = app.tenant(TenantKind::Customer, "Customer").await;
    for alias in ["eve", "bob", "dan", "cat"] {
        app.user(
            &c.admin_token,
            &c,
            alias,
            CompanyRole::Unspecified,
            SupportedCompaniesAccess::Unspecified,
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .users()
            .list_users(req(
                &c.admin_token,
                ListUsersRequest {
                    tenant_id: c.id.clone(),
                    page_size: 2,
                    page_token: token.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.users.len() <= 2);
        seen.extend(
            page.users
                .into_iter()
                .map(|u| u.user_principal_name.split('@').next().unwrap().to_owned()),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, vec!["admin", "bob", "cat", "dan", "eve"]);
}
backend_test!(a_global_admin_creates_users_and_pages_through_them);

async fn roles_limit_who_manages_whom(b: Backend) {
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
    let member = app
        .user(
            &c.admin_token,
            &c,
            "mia",
            CompanyRole::Unspecified,
            SupportedCompaniesAccess::Unspecified,
        )
        .await;
    let billing = app
        .user(
            &c.admin_token,
            &c,
            "bill",
            CompanyRole::BillingAdmin,
            SupportedCompaniesAccess::Unspecified,
        )
        .await;
    // A user admin creates plain users but not admins.
    app.user(
        &ua.token,
        &c,
        "plain",
        CompanyRole::Unspecified,
        SupportedCompaniesAccess::Unspecified,
    )
    .await;
    let admin_req = |token: &str| {
        req(
            token,
            CreateUserRequest {
                tenant_id: c.id.clone(),
                user_principal_name: format!("boss@{}", c.domain),
                display_name: "Boss".into(),
                company_role: CompanyRole::GlobalAdmin as i32,
                password: PASSWORD.into(),
                ..Default::default()
            },
        )
    };
    let s = expect_code(
        app.users().create_user(admin_req(&ua.token)).await,
        Code::PermissionDenied,
    );
    assert!(
        s.message().contains("ADMIN_USERS_MANAGE"),
        "{}",
        s.message()
    );
    expect_code(
        app.users().create_user(admin_req(&billing.token)).await,
        Code::PermissionDenied,
    );
    // A member without a role can't list the directory, but can read itself.
    expect_code(
        app.users()
            .list_users(req(
                &member.token,
                ListUsersRequest {
                    tenant_id: c.id.clone(),
                    ..Default::default()
                },
            ))
            .await,
        Code::PermissionDenied,
    );
    app.users()
        .get_user(req(
            &member.token,
            GetUserRequest {
                tenant_id: c.id.clone(),
                user_id: member.id.clone(),
            },
        ))
        .await
        .unwrap();
    // A user admin can't delete an admin.
    expect_code(
        app.users()
            .delete_user(req(
                &ua.token,
                DeleteUserRequest {
                    tenant_id: c.id.clone(),
                    user_id: billing.id.clone(),
                    ..Default::default()
                },
            ))
            .await,
        Code::PermissionDenied,
    );
}
backend_test!(roles_limit_who_manages_whom);

async fn bad_user_input_names_the_field_and_writes_nothing(b: Backend) {
    let app = TestApp::spawn(b).await;
    let c = app.tenant(TenantKind::Customer, "Customer").await;
    let base = CreateUserRequest {
        tenant_id: c.id.clone(),
        user_principal_name: format!("new@{}", c.domain),
        display_name: "New".into(),
        password: PASSWORD.into(),
        ..Default::default()
    };
    let cases: Vec<(&str, CreateUserRequest)> = vec![
        (
            "user_principal_name",
            CreateUserRequest {
                user_principal_name: "new".into(),
                ..base.clone()
            },
        ),
        (
            "user_principal_name",
            CreateUserRequest {
                user_principal_name: "new@other.example".into(),
                ..base.clone()
            },
        ),
        (
            "display_name",
            CreateUserRequest {
                display_name: "".into(),
                ..base.clone()
            },
        ),
        (
            "display_name",
            CreateUserRequest {
                display_name: "n".repeat(257),
                ..base.clone()
            },
        ),
        (
            "password",
            CreateUserRequest {
                password: "password".into(),
                ..base.clone()
            },
        ),
        (
            "tenant_id",
            CreateUserRequest {
                tenant_id: "nope".into(),
                ..base.clone()
            },
        ),
        (
            "company_role",
            CreateUserRequest {
                company_role: 99,
                ..base.clone()
            },
        ),
        (
            "supported_companies_access",
            CreateUserRequest {
                supported_companies_access: SupportedCompaniesAccess::Full as i32,
                ..base.clone()
            },
        ),
        (
            "request_id",
            CreateUserRequest {
                request_id: "has spaces".into(),
                ..base.clone()
            },
        ),
    ];
    for (field, r) in cases {
        expect_invalid(app.users().create_user(req(&c.admin_token, r)).await, field);
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 1);
    let dup = CreateUserRequest {
        user_principal_name: format!("admin@{}", c.domain),
        ..base.clone()
    };
    expect_code(
        app.users().create_user(req(&c.admin_token, dup)).await,
        Code::AlreadyExists,
    );
}
backend_test!(bad_user_input_names_the_field_and_writes_nothing);

async fn the_same_request_id_creates_one_user(b: Backend) {
    let app = TestApp::spawn(b).await;
    let c = app.tenant(TenantKind::Customer, "Customer").await;
    let r = CreateUserRequest {
        request_id: "req-user-1".into(),
        tenant_id: c.id.clone(),
        user_principal_name: format!("once@{}", c.domain),
        display_name: "Once".into(),
        ..Default::default()
    };
    let first = app
        .users()
        .create_user(req(&c.admin_token, r.clone()))
        .await
        .unwrap()
        .into_inner();
    let again = app
        .users()
        .create_user(req(&c.admin_token, r))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again);
    assert!(
        !first.temporary_password.is_empty(),
        "no password given: a temporary one is returned"
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM users").await, 2);
}
backend_test!(the_same_request_id_creates_one_user);

async fn updates_follow_the_mask_and_a_stale_etag_is_aborted(b: Backend) {
    let app = TestApp::spawn(b).await;
    let c = app.tenant(TenantKind::Customer, "Customer").await;
    let u = app
        .user(
            &c.admin_token,
            &c,
            "ann",
            CompanyRole::Unspecified,
            SupportedCompaniesAccess::Unspecified,
        )
        .await;
    let got = app
        .users()
        .get_user(req(
            &c.admin_token,
            GetUserRequest {
                tenant_id: c.id.clone(),
                user_id: u.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    let update = |paths: &[&str], etag: &str, role: CompanyRole| {
        req(
            &c.admin_token,
            UpdateUserRequest {
                tenant_id: c.id.clone(),
                user: Some(User {
                    id: u.id.clone(),
                    display_name: "Ann B.".into(),
                    company_role: role as i32,
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: paths.iter().map(|p| p.to_string()).collect(),
                }),
                etag: etag.into(),
                ..Default::default()
            },
        )
    };
    let updated = app
        .users()
        .update_user(update(
            &["display_name"],
            &got.etag,
            CompanyRole::GlobalAdmin,
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(updated.display_name, "Ann B.");
    assert_eq!(
        updated.company_role,
        CompanyRole::Unspecified as i32,
        "role outside the mask is untouched"
    );
    expect_code(
        app.users()
            .update_user(update(
                &["display_name"],
                &got.etag,
                CompanyRole::Unspecified,
            ))
            .await,
        Code::Aborted,
    );
    expect_invalid(
        app.users()
            .update_user(update(&[], "", CompanyRole::Unspecified))
            .await,
        "update_mask",
    );
    expect_invalid(
        app.users()
            .update_user(update(&["password"], "", CompanyRole::Unspecified))
            .await,
        "update_mask",
    );
    let promoted = app
        .users()
        .update_user(update(&["company_role"], "", CompanyRole::PasswordAdmin))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(promoted.company_role, CompanyRole::PasswordAdmin as i32);
}
backend_test!(updates_follow_the_mask_and_a_stale_etag_is_aborted);

async fn the_last_global_admin_is_protected(b: Backend) {
    let app = TestApp::spawn(b).await;
    let c = app.tenant(TenantKind::Customer, "Customer").await;
    let delete = |token: &str, id: &str| {
        req(
            token,
            DeleteUserRequest {
                tenant_id: c.id.clone(),
                user_id: id.into(),
                ..Default::default()
            },
        )
    };
    let demote = |id: &str| {
        let user = User {
            id: id.into(),
            ..Default::default()
        };
        update_user(&c.admin_token, &c.id, user, &["company_role"])
    };
    let block = |id: &str| {
        let user = User {
            id: id.into(),
            blocked: true,
            ..Default::default()
        };
        update_user(&c.admin_token, &c.id, user, &["blocked"])
    };
    let s = expect_code(
        app.users()
            .delete_user(delete(&c.admin_token, &c.admin_id))
            .await,
        Code::FailedPrecondition,
    );
    assert!(
        s.message().contains("last active global admin"),
        "{}",
        s.message()
    );
    expect_code(
        app.users().update_user(demote(&c.admin_id)).await,
        Code::FailedPrecondition,
    );
    expect_code(
        app.users().update_user(block(&c.admin_id)).await,
        Code::FailedPrecondition,
    );
    let second = app
        .user(
            &c.admin_token,
            &c,
            "ga2",
            CompanyRole::GlobalAdmin,
            SupportedCompaniesAccess::Unspecified,
        )
        .await;
    app.users().update_user(demote(&c.admin_id)).await.unwrap();
    expect_code(
        app.users()
            .delete_user(delete(&second.token, &second.id))
            .await,
        Code::FailedPrecondition,
    );
}
backend_test!(the_last_global_admin_is_protected);

async fn a_deleted_user_is_restorable_until_purged(b: Backend) {
    let app = TestApp::spawn(b).await;
    let c = app.tenant(TenantKind::Customer, "Customer").await;
    let u = app
        .user(
            &c.admin_token,
            &c,
            "dee",
            CompanyRole::Unspecified,
            SupportedCompaniesAccess::Unspecified,
        )
        .await;
    let deleted = app
        .users()
        .delete_user(req(
            &c.admin_token,
            DeleteUserRequest {
                tenant_id: c.id.clone(),
                user_id: u.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(deleted.state, UserState::Deleted as i32);
    assert!(deleted.purge_time.is_some());
    expect_code(
        app.auth()
            .sign_in(SignInRequest {
                user_principal_name: u.upn.clone(),
                password: PASSWORD.into(),
            })
            .await,
        Code::Unauthenticated,
    );
    let listed = |show_deleted: bool| {
        let mut users = app.users();
        let token = c.admin_token.clone();
        let tenant_id = c.id.clone();
        async move {
            users
                .list_users(req(
                    &token,
                    ListUsersRequest {
                        tenant_id,
                        show_deleted,
                        ..Default::default()
                    },
                ))
                .await
                .unwrap()
                .into_inner()
                .users
                .len()
        }
    };
    assert_eq!(listed(false).await, 1);
    assert_eq!(listed(true).await, 2);
    let restore = || {
        req(
            &c.admin_token,
            RestoreUserRequest {
                tenant_id: c.id.clone(),
                user_id: u.id.clone(),
                ..Default::default()
            },
        )
    };
    app.users().restore_user(restore()).await.unwrap();
    app.sign_in(&u.upn, PASSWORD).await;
    expect_code(
        app.users().restore_user(restore()).await,
        Code::FailedPrecondition,
    );

    // Delete again and let the retention period (30 days) pass.
    app.users()
        .delete_user(req(
            &c.admin_token,
            DeleteUserRequest {
                tenant_id: c.id.clone(),
                user_id: u.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    app.clock
        .advance(std::time::Duration::from_secs(31 * 24 * 3600));
    let admin_token = app.sign_in(&format!("admin@{}", c.domain), PASSWORD).await;
    let restore = req(
        &admin_token,
        RestoreUserRequest {
            tenant_id: c.id.clone(),
            user_id: u.id.clone(),
            ..Default::default()
        },
    );
    expect_code(app.users().restore_user(restore).await, Code::NotFound);
    expect_code(
        app.users()
            .get_user(req(
                &admin_token,
                GetUserRequest {
                    tenant_id: c.id.clone(),
                    user_id: u.id.clone(),
                },
            ))
            .await,
        Code::NotFound,
    );
    // The principal name is free again.
    let again = app
        .users()
        .create_user(req(
            &admin_token,
            CreateUserRequest {
                tenant_id: c.id.clone(),
                user_principal_name: u.upn.clone(),
                display_name: "Dee again".into(),
                password: PASSWORD.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_ne!(again.id, u.id);
    assert_eq!(
        app.count(&format!("SELECT COUNT(*) FROM users WHERE id = '{}'", u.id))
            .await,
        0,
        "purged for good"
    );
}
backend_test!(a_deleted_user_is_restorable_until_purged);

async fn a_password_reset_yields_a_one_time_password_and_forces_a_change(b: Backend) {
    let app = TestApp::spawn(b).await;
    let c = app.tenant(TenantKind::Customer, "Customer").await;
    let pa = app
        .user(
            &c.admin_token,
            &c,
            "pat",
            CompanyRole::PasswordAdmin,
            SupportedCompaniesAccess::Unspecified,
        )
        .await;
    let u = app
        .user(
            &c.admin_token,
            &c,
            "uma",
            CompanyRole::Unspecified,
            SupportedCompaniesAccess::Unspecified,
        )
        .await;
    let reset = |token: &str, id: &str| {
        req(
            token,
            ResetPasswordRequest {
                tenant_id: c.id.clone(),
                user_id: id.into(),
                ..Default::default()
            },
        )
    };
    // A password admin may not reset a global admin's password.
    expect_code(
        app.users()
            .reset_password(reset(&pa.token, &c.admin_id))
            .await,
        Code::PermissionDenied,
    );
    let temp = app
        .users()
        .reset_password(reset(&pa.token, &u.id))
        .await
        .unwrap()
        .into_inner()
        .temporary_password;
    expect_code(
        app.auth()
            .sign_in(SignInRequest {
                user_principal_name: u.upn.clone(),
                password: PASSWORD.into(),
            })
            .await,
        Code::Unauthenticated,
    );
    let signed = app
        .auth()
        .sign_in(SignInRequest {
            user_principal_name: u.upn.clone(),
            password: temp.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(signed.must_change_password);
    let s = expect_code(
        app.users()
            .get_user(req(
                &signed.access_token,
                GetUserRequest {
                    tenant_id: c.id.clone(),
                    user_id: u.id.clone(),
                },
            ))
            .await,
        Code::FailedPrecondition,
    );
    assert!(s.message().contains("ChangePassword"));
    expect_invalid(
        app.auth()
            .change_password(req(
                &signed.access_token,
                ChangePasswordRequest {
                    current_password: temp.clone(),
                    new_password: "weak".into(),
                    ..Default::default()
                },
            ))
            .await,
        "new_password",
    );
    expect_invalid(
        app.auth()
            .change_password(req(
                &signed.access_token,
                ChangePasswordRequest {
                    current_password: "wrong-Pass-1".into(),
                    new_password: "Brand-New-Pass-7".into(),
                    ..Default::default()
                },
            ))
            .await,
        "current_password",
    );
    let changed = app
        .auth()
        .change_password(req(
            &signed.access_token,
            ChangePasswordRequest {
                current_password: temp.clone(),
                new_password: "Brand-New-Pass-7".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    app.users()
        .get_user(req(
            &changed.access_token,
            GetUserRequest {
                tenant_id: c.id.clone(),
                user_id: u.id.clone(),
            },
        ))
        .await
        .unwrap();
    expect_code(
        app.auth()
            .sign_in(SignInRequest {
                user_principal_name: u.upn.clone(),
                password: temp,
            })
            .await,
        Code::Unauthenticated,
    );
    app.sign_in(&u.upn, "Brand-New-Pass-7").await;
}
backend_test!(a_password_reset_yields_a_one_time_password_and_forces_a_change);

async fn blocked_users_cannot_sign_in(b: Backend) {
    let app = TestApp::spawn(b).await;
    let c = app.tenant(TenantKind::Customer, "Customer").await;
    let u = app
        .user(
            &c.admin_token,
            &c,
            "blo",
            CompanyRole::UserAdmin,
            SupportedCompaniesAccess::Unspecified,
        )
        .await;
    app.users()
        .update_user(update_user(
            &c.admin_token,
            &c.id,
            User {
                id: u.id.clone(),
                blocked: true,
                ..Default::default()
            },
            &["blocked"],
        ))
        .await
        .unwrap();
    expect_code(
        app.auth()
            .sign_in(SignInRequest {
                user_principal_name: u.upn.clone(),
                password: PASSWORD.into(),
            })
            .await,
        Code::PermissionDenied,
    );
    // The token issued before the block no longer acts.
    expect_code(
        app.users()
            .list_users(req(
                &u.token,
                ListUsersRequest {
                    tenant_id: c.id.clone(),
                    ..Default::default()
                },
            ))
            .await,
        Code::PermissionDenied,
    );
}
backend_test!(blocked_users_cannot_sign_in);

async fn concurrent_demotions_leave_one_global_admin(b: Backend) {
    let app = TestApp::spawn(b).await;
    let c = app.tenant(TenantKind::Customer, "Customer").await;
    // Eight global admins, each demoting itself at the same moment.
    let mut admins = Vec::new();
    for i in 0..7 {
        admins.push(
            app.user(
                &c.admin_token,
                &c,
                &format!("ga{i}"),
                CompanyRole::GlobalAdmin,
                SupportedCompaniesAccess::Unspecified,
            )
            .await,
        );
    }
    admins.push(TestUser {
        id: c.admin_id.clone(),
        upn: format!("admin@{}", c.domain),
        token: c.admin_token.clone(),
    });
    let mut calls = Vec::new();
    for a in &admins {
        let mut users = app.users();
        let demote_self = User {
            id: a.id.clone(),
            ..Default::default()
        };
        let r = update_user(&a.token, &c.id, demote_self, &["company_role"]);
        calls.push(tokio::spawn(async move { users.update_user(r).await }));
    }
    let mut refused = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => {}
            Err(s) => {
                assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
                refused += 1;
            }
        }
    }
    assert_eq!(refused, 1, "exactly the last one is refused");
    assert_eq!(
        app.count(&format!(
            "SELECT COUNT(*) FROM users WHERE tenant_id = '{}' AND company_role = 'GLOBAL_ADMIN'",
            c.id
        ))
        .await,
        1
    );
}
backend_test!(concurrent_demotions_leave_one_global_admin);
