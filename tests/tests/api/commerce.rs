//! The partner journey through commerce: trial invitation → a new customer
//! signs up with delegated administration → partner of record and its feed →
//! a purchase offer converts the trial → license changes, by the customer and
//! on its behalf.

use std::time::Duration;

use tonic::{Code, Request};

use crate::{backend_test, helpers::*};

async fn feed(app: &TestApp, token: &str, partner: &Tenant) -> Vec<com::Notification> {
    app.notifications()
        .list_notifications(req(
            token,
            com::ListNotificationsRequest {
                partner_tenant_id: partner.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .notifications
}

async fn the_partner_journey_runs_end_to_end(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let partner = app.partner("Contoso Advisors", ADVISOR).await;
    let full = app
        .user(
            &partner.admin_token,
            &partner,
            "full",
            CompanyRole::Unspecified,
            SupportedCompaniesAccess::Full,
        )
        .await;
    let limited = app
        .user(
            &partner.admin_token,
            &partner,
            "limited",
            CompanyRole::Unspecified,
            SupportedCompaniesAccess::Limited,
        )
        .await;

    // A trial link, previewed by anyone holding it.
    let code = app
        .trial_code(&full.token, &partner, "office-business", true)
        .await;
    let preview = app
        .com_links()
        .preview_link(com::PreviewLinkRequest { code: code.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(preview.kind(), com::LinkKind::TrialInvitation);
    assert_eq!(preview.partner_tenant_id, partner.id);
    assert_eq!(preview.partner_display_name, "Contoso Advisors");
    assert!(preview.partner_company_profile.is_some());
    assert!(preview.include_delegated_admin);
    assert_eq!(preview.products[0].id, "office-business");
    assert!(preview.products[0].trial_available);

    // A new customer signs up through it, accepting delegated administration.
    let (choice, upn) = new_customer("Fabrikam");
    let redeem = com::RedeemTrialInvitationRequest {
        request_id: "signup-1".into(),
        code: code.clone(),
        customer: Some(choice),
        accept_delegated_admin: true,
        reassign: false,
    };
    let first = app
        .trials()
        .redeem_trial_invitation(Request::new(redeem.clone()))
        .await
        .unwrap()
        .into_inner()
        .redemption
        .unwrap();
    let customer_id = first.customer_tenant_id.clone();
    assert!(!first.admin_user_id.is_empty());
    assert!(!first.delegated_admin_relationship_id.is_empty());
    let trial = first.subscriptions[0].clone();
    assert_eq!(trial.state(), com::SubscriptionState::Trial);
    assert_eq!(trial.source(), com::SubscriptionSource::TrialInvitation);
    assert_eq!(trial.partner_of_record_tenant_id, partner.id);
    assert!(trial.end_time.is_some());

    // A retry answers the same and creates nothing more, anywhere.
    let tenants_before = app.count("SELECT COUNT(*) FROM tenants").await;
    let again = app
        .trials()
        .redeem_trial_invitation(Request::new(redeem))
        .await
        .unwrap()
        .into_inner()
        .redemption
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM tenants").await,
        tenants_before
    );
    assert_eq!(app.com_count("SELECT COUNT(*) FROM subscriptions").await, 1);
    assert_eq!(
        app.rel_count("SELECT COUNT(*) FROM delegated_admin_relationships")
            .await,
        1
    );

    // The partner is the customer's advisor, partner of record and delegated admin.
    let listed = app
        .customers()
        .get_customer(req(
            &full.token,
            rel::GetCustomerRequest {
                partner_tenant_id: partner.id.clone(),
                customer_tenant_id: customer_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .customer
        .unwrap();
    assert!(listed.partner_of_record);
    assert!(listed
        .relationships
        .contains(&(rel::RelationshipKind::Advisor as i32)));
    assert!(listed
        .relationships
        .contains(&(rel::RelationshipKind::PartnerOfRecord as i32)));
    assert_eq!(
        listed.delegated_admin_state(),
        rel::DelegatedAdminState::Active
    );
    let por_filter = app
        .customers()
        .list_customers(req(
            &full.token,
            rel::ListCustomersRequest {
                partner_tenant_id: partner.id.clone(),
                relationship: rel::RelationshipKind::PartnerOfRecord as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(por_filter.customers.len(), 1);

    // …and sees the notification.
    let notes = feed(&app, &full.token, &partner).await;
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].sequence, 1);
    assert_eq!(notes[0].kind(), com::NotificationKind::SubscriptionCreated);
    assert_eq!(notes[0].subscription.as_ref().unwrap().id, trial.id);

    // A purchase offer converts the trial, with the customer's own license count.
    let customer_token = app.sign_in(&upn, PASSWORD).await;
    let offer = app
        .offers()
        .create_purchase_offer(req(
            &full.token,
            com::CreatePurchaseOfferRequest {
                request_id: "offer-1".into(),
                partner_tenant_id: partner.id.clone(),
                lines: vec![com::OfferLine {
                    product_id: "office-business".into(),
                    license_count: 10,
                }],
                include_delegated_admin: false,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .offer
        .unwrap();
    assert!(offer.url.ends_with(&format!("/offer/{}", offer.code)));
    let bought = app
        .offers()
        .redeem_purchase_offer(req(
            &customer_token,
            com::RedeemPurchaseOfferRequest {
                request_id: "buy-1".into(),
                code: offer.code.clone(),
                customer: existing(&customer_id),
                license_counts: vec![com::OfferLine {
                    product_id: "office-business".into(),
                    license_count: 25,
                }],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .redemption
        .unwrap();
    let paid = bought.subscriptions[0].clone();
    assert_eq!(paid.id, trial.id, "the trial itself is converted");
    assert_eq!(paid.state(), com::SubscriptionState::Active);
    assert_eq!(paid.license_count, 25);
    assert_eq!(paid.end_time, None);
    let notes = feed(&app, &full.token, &partner).await;
    assert_eq!(notes.len(), 2);
    assert_eq!(notes[1].kind(), com::NotificationKind::TrialConverted);

    // The customer's admin changes the license count: the partner hears of it.
    let changed = app
        .subscriptions()
        .update_license_count(req(
            &customer_token,
            com::UpdateLicenseCountRequest {
                request_id: "lic-1".into(),
                customer_tenant_id: customer_id.clone(),
                subscription_id: paid.id.clone(),
                license_count: 30,
                etag: paid.etag.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .subscription
        .unwrap();
    assert_eq!(changed.license_count, 30);
    let notes = feed(&app, &full.token, &partner).await;
    assert_eq!(notes.len(), 3);
    assert_eq!(notes[2].kind(), com::NotificationKind::LicenseCountChanged);
    assert_eq!(notes[2].previous_license_count, 25);
    assert_eq!(notes[2].subscription.as_ref().unwrap().license_count, 30);

    // A stale etag is ABORTED and changes nothing.
    let stale = app
        .subscriptions()
        .update_license_count(req(
            &customer_token,
            com::UpdateLicenseCountRequest {
                request_id: "lic-stale".into(),
                customer_tenant_id: customer_id.clone(),
                subscription_id: paid.id.clone(),
                license_count: 31,
                etag: paid.etag.clone(),
            },
        ))
        .await;
    expect_code(stale, Code::Aborted);

    // On the customer's behalf: the partner's FULL user may, its LIMITED user may not.
    let customer = Tenant {
        id: customer_id.clone(),
        domain: String::new(),
        admin_id: first.admin_user_id.clone(),
        admin_token: customer_token.clone(),
    };
    assert!(
        app.await_access(
            &full.token,
            &customer,
            Permission::SubscriptionsManage,
            true,
            Duration::from_secs(5)
        )
        .await
    );
    let by_partner = app
        .subscriptions()
        .update_license_count(req(
            &full.token,
            com::UpdateLicenseCountRequest {
                request_id: "lic-2".into(),
                customer_tenant_id: customer_id.clone(),
                subscription_id: paid.id.clone(),
                license_count: 40,
                etag: changed.etag.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .subscription
        .unwrap();
    assert_eq!(by_partner.license_count, 40);
    let denied = app
        .subscriptions()
        .update_license_count(req(
            &limited.token,
            com::UpdateLicenseCountRequest {
                request_id: "lic-3".into(),
                customer_tenant_id: customer_id.clone(),
                subscription_id: paid.id.clone(),
                license_count: 50,
                etag: by_partner.etag.clone(),
            },
        ))
        .await;
    let s = expect_code(denied, Code::PermissionDenied);
    assert!(s.message().contains("LIMITED"), "{}", s.message());
    assert_eq!(feed(&app, &full.token, &partner).await.len(), 4);

    // The customer's admins read what the partner did on its behalf.
    let audit = app
        .subscriptions()
        .list_audit_events(req(
            &customer_token,
            com::ListAuditEventsRequest {
                tenant_id: customer_id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    let by_proxy = audit
        .iter()
        .find(|e| e.request_id == "lic-2")
        .expect("the partner's change is audited");
    assert!(by_proxy.delegated);
    assert_eq!(by_proxy.actor_tenant_id, partner.id);
}
backend_test!(the_partner_journey_runs_end_to_end);
