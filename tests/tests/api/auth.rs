//! Tokens: missing, malformed, expired, foreign, and the published keys.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine};
use tonic::Code;

use crate::{backend_test, helpers::*};

async fn calls_without_a_valid_token_are_unauthenticated(b: Backend) {
    let app = TestApp::spawn(b).await;
    let c = app.tenant(TenantKind::Customer, "Customer").await;
    let list = || ListUsersRequest {
        tenant_id: c.id.clone(),
        ..Default::default()
    };
    let s = expect_code(
        app.users().list_users(tonic::Request::new(list())).await,
        Code::Unauthenticated,
    );
    assert!(s.message().contains("SignIn"), "{}", s.message());
    expect_code(
        app.users().list_users(req("not-a-token", list())).await,
        Code::Unauthenticated,
    );
    let mut raw = tonic::Request::new(list());
    raw.metadata_mut()
        .insert("authorization", c.admin_token.parse().unwrap());
    expect_code(app.users().list_users(raw).await, Code::Unauthenticated);
    // Tampered claims fail the signature.
    let mut parts: Vec<String> = c.admin_token.split('.').map(str::to_owned).collect();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&B64.decode(&parts[1]).unwrap()).unwrap();
    claims["knd"] = "operator".into();
    parts[1] = B64.encode(serde_json::to_vec(&claims).unwrap());
    expect_code(
        app.users().list_users(req(&parts.join("."), list())).await,
        Code::Unauthenticated,
    );
    // Expired: an hour and a minute later.
    app.clock.advance(std::time::Duration::from_secs(3660));
    let s = expect_code(
        app.users().list_users(req(&c.admin_token, list())).await,
        Code::Unauthenticated,
    );
    assert!(s.message().contains("expired"));
}
backend_test!(calls_without_a_valid_token_are_unauthenticated);

async fn a_token_from_another_instance_is_refused_naming_it(b: Backend) {
    let global = TestApp::spawn(b).await;
    let china = TestApp::spawn_instance(b, "china").await;
    let s = expect_code(
        global
            .tenants()
            .get_features(req(&china.operator, GetFeaturesRequest::default()))
            .await,
        Code::Unauthenticated,
    );
    assert!(s.message().contains("`china`"), "{}", s.message());
    // A china tenant id is refused by global with the instance named.
    let cn = china.tenant(TenantKind::Customer, "Beijing").await;
    let s = expect_invalid(
        global
            .tenants()
            .get_tenant(req(
                &global.operator,
                GetTenantRequest {
                    tenant_id: cn.id.clone(),
                },
            ))
            .await,
        "tenant_id",
    );
    assert!(s.message().contains("instance `china`"), "{}", s.message());
}
backend_test!(a_token_from_another_instance_is_refused_naming_it);

async fn sign_in_does_not_reveal_which_part_was_wrong(b: Backend) {
    let app = TestApp::spawn(b).await;
    let c = app.tenant(TenantKind::Customer, "Customer").await;
    let wrong_password = expect_code(
        app.auth()
            .sign_in(SignInRequest {
                user_principal_name: format!("admin@{}", c.domain),
                password: "Nope-nope-1".into(),
            })
            .await,
        Code::Unauthenticated,
    );
    let unknown_user = expect_code(
        app.auth()
            .sign_in(SignInRequest {
                user_principal_name: format!("ghost@{}", c.domain),
                password: "Nope-nope-1".into(),
            })
            .await,
        Code::Unauthenticated,
    );
    assert_eq!(wrong_password.message(), unknown_user.message());
    expect_invalid(
        app.auth()
            .sign_in(SignInRequest {
                user_principal_name: "ghost".into(),
                password: "x".into(),
            })
            .await,
        "user_principal_name",
    );
}
backend_test!(sign_in_does_not_reveal_which_part_was_wrong);

async fn the_published_key_verifies_issued_tokens(b: Backend) {
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};
    let app = TestApp::spawn(b).await;
    let c = app.tenant(TenantKind::Customer, "Customer").await;
    let keys = app
        .auth()
        .get_signing_keys(GetSigningKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys.instance, "global");
    assert_eq!(keys.keys[0].algorithm, "EdDSA");
    let raw: [u8; 32] = B64
        .decode(&keys.keys[0].public_key)
        .unwrap()
        .try_into()
        .unwrap();
    let key = VerifyingKey::from_bytes(&raw).unwrap();
    let (signed, sig) = c.admin_token.rsplit_once('.').unwrap();
    let sig: [u8; 64] = B64.decode(sig).unwrap().try_into().unwrap();
    key.verify(signed.as_bytes(), &Signature::from_bytes(&sig))
        .unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&B64.decode(signed.split('.').nth(1).unwrap()).unwrap()).unwrap();
    assert_eq!(claims["iss"], keys.issuer);
}
backend_test!(the_published_key_verifies_issued_tokens);
