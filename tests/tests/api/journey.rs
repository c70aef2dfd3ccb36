//! One partner journey that touches every service and business counter,
//! shared by the logs test and the Prometheus test.

use crate::helpers::*;

/// What a journey used that must never be logged.
// Read by the logs binary; the Prometheus test only drives the journey.
#[allow(dead_code)]
pub struct Journey {
    pub partner: Tenant,
    pub agent: String,
    pub wrong: String,
    pub code: String,
    pub customer_token: String,
    pub key: String,
    pub tampered: String,
}

/// A partner journey touching every service and business counter: a failed
/// sign-in, a trial link signed up through with delegated admin, a product
/// key redeemed and refused, a tampered code, the partner's notifications.
pub async fn journey(app: &TestApp) -> Journey {
    let partner = app.partner("Contoso", ADVISOR).await;
    let agent = app.agent(&partner).await;
    let wrong = "Wrong-Horse-1".to_owned();
    assert!(app
        .auth()
        .sign_in(SignInRequest {
            user_principal_name: format!("admin@{}", partner.domain),
            password: wrong.clone(),
        })
        .await
        .is_err());
    let code = app
        .trial_code(&agent, &partner, "office-business", true)
        .await;
    let (redemption, upn) = app.sign_up(&code, "Fabrikam", "signup").await;
    let customer_token = app.sign_in(&upn, PASSWORD).await;
    let key = app.import_keys("office-business", 5, 1).await.remove(0);
    app.keys()
        .redeem_product_key(req(
            &agent,
            com::RedeemProductKeyRequest {
                request_id: "key".into(),
                partner_tenant_id: partner.id.clone(),
                product_key: key.clone(),
                customer_tenant_id: redemption.customer_tenant_id.clone(),
                offer_delegated_admin: false,
            },
        ))
        .await
        .unwrap();
    // A refused redemption of the same key, and of a link code gone wrong.
    assert!(app
        .keys()
        .redeem_product_key(req(
            &agent,
            com::RedeemProductKeyRequest {
                request_id: "key-again".into(),
                partner_tenant_id: partner.id.clone(),
                product_key: key.clone(),
                customer_tenant_id: redemption.customer_tenant_id.clone(),
                offer_delegated_admin: false,
            },
        ))
        .await
        .is_err());
    let tampered = format!("{}x", &code[..code.len() - 1]);
    assert!(app
        .trials()
        .redeem_trial_invitation(req(
            &customer_token,
            com::RedeemTrialInvitationRequest {
                request_id: "tampered".into(),
                code: tampered.clone(),
                customer: existing(&redemption.customer_tenant_id),
                accept_delegated_admin: false,
                reassign: false,
            },
        ))
        .await
        .is_err());
    // A garbage delegated-admin offer code, refused by relationships.
    assert!(app
        .delegated()
        .preview_delegated_admin_offer(rel::PreviewDelegatedAdminOfferRequest {
            code: format!("global.delegated-admin.{}", "A".repeat(40)),
        })
        .await
        .is_err());
    app.notifications()
        .list_notifications(req(
            &agent,
            com::ListNotificationsRequest {
                partner_tenant_id: partner.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    Journey {
        partner,
        agent,
        wrong,
        code,
        customer_token,
        key,
        tampered,
    }
}
