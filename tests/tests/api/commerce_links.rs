//! Trial invitations and purchase offers at their edges: codes from another
//! instance, tampered, revoked or expired; who may create and redeem; the
//! trial rule; bad input refused with nothing written; trial expiry; and a
//! notification stream resumed without loss or repetition.

use std::{sync::Arc, time::Duration};

use tokio_stream::StreamExt;
use tonic::{Code, Request};

use crate::{backend_test, helpers::*};

/// Rows commerce, relationships and identity hold, to prove a refusal wrote nothing.
async fn footprint(app: &TestApp) -> (i64, i64, i64, i64) {
    (
        app.com_count("SELECT COUNT(*) FROM subscriptions").await,
        app.com_count("SELECT COUNT(*) FROM redemptions").await,
        app.rel_count("SELECT COUNT(*) FROM partner_customers")
            .await,
        app.count("SELECT COUNT(*) FROM tenants").await,
    )
}

fn redeem_trial(
    code: &str,
    customer: Option<com::CustomerChoice>,
) -> com::RedeemTrialInvitationRequest {
    com::RedeemTrialInvitationRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        code: code.into(),
        customer,
        ..Default::default()
    }
}

async fn bad_links_are_refused_before_anything_is_written(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let china = TestApp::spawn_instance(backend, "china").await;
    let partner = app.partner("Edge Partner", ADVISOR).await;
    let agent = app.agent(&partner).await;
    let customer = app.tenant(TenantKind::Customer, "Edge Customer").await;
    let code = app
        .trial_code(&agent, &partner, "office-business", false)
        .await;
    let before = footprint(&app).await;
    let trials = app.trials();
    let redeem = |code: String| {
        let mut t = trials.clone();
        let r = req(
            &customer.admin_token,
            redeem_trial(&code, existing(&customer.id)),
        );
        async move { t.redeem_trial_invitation(r).await }
    };

    // From another instance: named, refused.
    let china_partner = china.partner("Beijing", ADVISOR).await;
    let china_agent = china.agent(&china_partner).await;
    let foreign = china
        .trial_code(&china_agent, &china_partner, "office-business", false)
        .await;
    let s = expect_invalid(redeem(foreign.clone()).await, "code");
    assert!(s.message().contains("`china`"), "{}", s.message());
    expect_invalid(
        app.com_links()
            .preview_link(com::PreviewLinkRequest { code: foreign })
            .await,
        "code",
    );
    // Tampered.
    let mut chars: Vec<char> = code.chars().collect();
    let last = chars.len() - 2;
    chars[last] = if chars[last] == 'A' { 'B' } else { 'A' };
    expect_invalid(redeem(chars.into_iter().collect()).await, "code");
    // A purchase-offer code used as a trial invitation.
    let offer = app
        .offers()
        .create_purchase_offer(req(
            &agent,
            com::CreatePurchaseOfferRequest {
                request_id: String::new(),
                partner_tenant_id: partner.id.clone(),
                lines: vec![com::OfferLine {
                    product_id: "security-suite".into(),
                    license_count: 5,
                }],
                include_delegated_admin: false,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .offer
        .unwrap();
    expect_invalid(redeem(offer.code.clone()).await, "code");
    // Delegated administration the link does not include.
    let mut r = redeem_trial(&code, existing(&customer.id));
    r.accept_delegated_admin = true;
    expect_invalid(
        app.trials()
            .redeem_trial_invitation(req(&customer.admin_token, r))
            .await,
        "accept_delegated_admin",
    );
    // No customer named; a new customer missing its admin's password.
    expect_invalid(
        app.trials()
            .redeem_trial_invitation(Request::new(redeem_trial(&code, None)))
            .await,
        "customer",
    );
    let (mut signup, _) = new_customer("Half");
    if let Some(com::customer_choice::Customer::NewCustomer(nc)) = signup.customer.as_mut() {
        nc.admin_password.clear();
    }
    expect_invalid(
        app.trials()
            .redeem_trial_invitation(Request::new(redeem_trial(&code, Some(signup))))
            .await,
        "customer.new_customer.admin_password",
    );
    // A bad domain is identity's verdict, named in our field.
    let (mut signup, _) = new_customer("Baddomain");
    if let Some(com::customer_choice::Customer::NewCustomer(nc)) = signup.customer.as_mut() {
        nc.primary_domain = "not a domain".into();
    }
    expect_invalid(
        app.trials()
            .redeem_trial_invitation(Request::new(redeem_trial(&code, Some(signup))))
            .await,
        "customer.new_customer.primary_domain",
    );
    // An existing customer without sign-in; another tenant's admin.
    expect_code(
        app.trials()
            .redeem_trial_invitation(Request::new(redeem_trial(&code, existing(&customer.id))))
            .await,
        Code::Unauthenticated,
    );
    let stranger = app.tenant(TenantKind::Customer, "Stranger").await;
    expect_code(
        app.trials()
            .redeem_trial_invitation(req(
                &stranger.admin_token,
                redeem_trial(&code, existing(&customer.id)),
            ))
            .await,
        Code::PermissionDenied,
    );
    let before = (before.0, before.1, before.2, before.3 + 1); // the stranger's tenant
    assert_eq!(footprint(&app).await, before);

    // Revoked.
    let id = app
        .trials()
        .list_trial_invitations(req(
            &agent,
            com::ListTrialInvitationsRequest {
                partner_tenant_id: partner.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .invitations[0]
        .id
        .clone();
    app.trials()
        .revoke_trial_invitation(req(
            &agent,
            com::RevokeTrialInvitationRequest {
                request_id: String::new(),
                partner_tenant_id: partner.id.clone(),
                id,
            },
        ))
        .await
        .unwrap();
    let s = expect_code(redeem(code.clone()).await, Code::FailedPrecondition);
    assert!(s.message().contains("revoked"), "{}", s.message());
    // Expired.
    let fresh = app
        .trial_code(&agent, &partner, "office-business", false)
        .await;
    app.clock.advance(Duration::from_secs(31 * 24 * 3600));
    let token = app
        .sign_in(&format!("admin@{}", customer.domain), PASSWORD)
        .await;
    let s = expect_code(
        app.trials()
            .redeem_trial_invitation(req(&token, redeem_trial(&fresh, existing(&customer.id))))
            .await,
        Code::FailedPrecondition,
    );
    assert!(s.message().contains("expired"), "{}", s.message());
    assert_eq!(footprint(&app).await, before);
}
backend_test!(bad_links_are_refused_before_anything_is_written);

async fn who_may_create_and_the_trial_rule(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let partner = app
        .partner(
            "Rules Partner",
            &[PartnerAuthorization::SubscriptionAdvisor],
        )
        .await;
    let agent_user = app.agent_user(&partner).await;
    let agent = agent_user.token.clone();
    let create = |token: &str, product: &str, da: bool| {
        let mut t = app.trials();
        let r = req(
            token,
            com::CreateTrialInvitationRequest {
                request_id: String::new(),
                partner_tenant_id: partner.id.clone(),
                product_id: product.into(),
                include_delegated_admin: da,
            },
        );
        async move { t.create_trial_invitation(r).await }
    };
    // The partner's admin without supported-companies access may not.
    expect_code(
        create(&partner.admin_token, "office-business", false).await,
        Code::PermissionDenied,
    );
    // Delegated administration needs the DELEGATED_ADMIN program.
    let s = expect_code(
        create(&agent, "office-business", true).await,
        Code::FailedPrecondition,
    );
    assert!(s.message().contains("DELEGATED_ADMIN"), "{}", s.message());
    // A product without a trial, an unknown product.
    expect_invalid(create(&agent, "security-suite", false).await, "product_id");
    expect_code(create(&agent, "nope", false).await, Code::NotFound);
    // Offer lines out of bounds or repeated.
    let offer = |lines: Vec<com::OfferLine>| {
        let mut o = app.offers();
        let r = req(
            &agent,
            com::CreatePurchaseOfferRequest {
                request_id: String::new(),
                partner_tenant_id: partner.id.clone(),
                lines,
                include_delegated_admin: false,
            },
        );
        async move { o.create_purchase_offer(r).await }
    };
    let line = |p: &str, n: i32| com::OfferLine {
        product_id: p.into(),
        license_count: n,
    };
    expect_invalid(offer(vec![]).await, "lines");
    expect_invalid(
        offer(vec![line("security-suite", 4)]).await,
        "lines[0].license_count",
    );
    expect_invalid(
        offer(vec![line("office-business", 1), line("office-business", 2)]).await,
        "lines[1].product_id",
    );
    assert_eq!(
        app.com_count("SELECT COUNT(*) FROM commerce_links").await,
        0
    );

    // One trial per product per customer, whichever link it comes from.
    let customer = app.tenant(TenantKind::Customer, "Tryer").await;
    let a = app
        .trial_code(&agent, &partner, "office-business", false)
        .await;
    let b = app
        .trial_code(&agent, &partner, "office-business", false)
        .await;
    let redeem = |code: &str| {
        let mut t = app.trials();
        let r = req(
            &customer.admin_token,
            redeem_trial(code, existing(&customer.id)),
        );
        async move { t.redeem_trial_invitation(r).await }
    };
    let first = redeem(&a).await.unwrap().into_inner();
    // The same link again answers the first result.
    assert_eq!(redeem(&a).await.unwrap().into_inner(), first);
    let s = expect_code(redeem(&b).await, Code::FailedPrecondition);
    assert!(
        s.message().contains("one trial per product"),
        "{}",
        s.message()
    );
    assert_eq!(app.com_count("SELECT COUNT(*) FROM subscriptions").await, 1);

    // Trials expire in the background, and the partner of record hears of it.
    app.clock.advance(Duration::from_secs(31 * 24 * 3600));
    let expired = app
        .commerce
        .as_ref()
        .unwrap()
        .expire_trials()
        .await
        .unwrap();
    assert_eq!(expired, 1);
    let customer_token = app
        .sign_in(&format!("admin@{}", customer.domain), PASSWORD)
        .await;
    let agent = app.sign_in(&agent_user.upn, PASSWORD).await;
    let sub = app
        .subscriptions()
        .list_subscriptions(req(
            &customer_token,
            com::ListSubscriptionsRequest {
                customer_tenant_id: customer.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .subscriptions
        .remove(0);
    assert_eq!(sub.state(), com::SubscriptionState::Expired);
    let notes = app
        .notifications()
        .list_notifications(req(
            &agent,
            com::ListNotificationsRequest {
                partner_tenant_id: partner.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .notifications;
    assert_eq!(
        notes.iter().map(|n| n.kind()).collect::<Vec<_>>(),
        [
            com::NotificationKind::SubscriptionCreated,
            com::NotificationKind::SubscriptionExpired
        ]
    );

    // A suspended partner creates no more links; the message says why.
    let operator = app.authority.issue_operator(3600).value;
    app.tenants()
        .set_partner_status(req(
            &operator,
            SetPartnerStatusRequest {
                tenant_id: partner.id.clone(),
                status: PartnerStatus::Suspended as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let links_before = app.com_count("SELECT COUNT(*) FROM commerce_links").await;
    let s = expect_code(
        create(&agent, "office-business", false).await,
        Code::FailedPrecondition,
    );
    assert!(s.message().contains("suspended"), "{}", s.message());
    assert_eq!(
        app.com_count("SELECT COUNT(*) FROM commerce_links").await,
        links_before
    );
}
backend_test!(who_may_create_and_the_trial_rule);

async fn self_service_follows_the_instance(backend: Backend) {
    for (instance, allowed) in [("global", true), ("china", false)] {
        let app = TestApp::spawn_instance(backend, instance).await;
        let customer = app.tenant(TenantKind::Customer, "Self").await;
        let r = app
            .subscriptions()
            .purchase_subscription(req(
                &customer.admin_token,
                com::PurchaseSubscriptionRequest {
                    request_id: "buy".into(),
                    customer_tenant_id: customer.id.clone(),
                    product_id: "office-business".into(),
                    license_count: 3,
                },
            ))
            .await;
        if allowed {
            let s = r.unwrap().into_inner().subscription.unwrap();
            assert_eq!(s.source(), com::SubscriptionSource::SelfService);
            assert!(s.partner_of_record_tenant_id.is_empty());
        } else {
            let s = expect_code(r, Code::FailedPrecondition);
            assert!(
                s.message().contains("`customer_self_service`") && s.message().contains("`china`")
            );
            assert_eq!(app.com_count("SELECT COUNT(*) FROM subscriptions").await, 0);
        }
    }
}
backend_test!(self_service_follows_the_instance);

/// The partner's agent offers `licenses` of `product`.
async fn new_offer(
    app: &TestApp,
    agent: &str,
    partner: &Tenant,
    product: &str,
    licenses: i32,
) -> com::PurchaseOffer {
    app.offers()
        .create_purchase_offer(req(
            agent,
            com::CreatePurchaseOfferRequest {
                partner_tenant_id: partner.id.clone(),
                lines: vec![com::OfferLine {
                    product_id: product.into(),
                    license_count: licenses,
                }],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .offer
        .unwrap()
}

/// The partner's agent offers `licenses` of office-enterprise and the
/// customer's admin buys it with `request_id`: the subscription bought.
async fn offer_and_buy(
    app: &TestApp,
    agent: &str,
    partner: &Tenant,
    customer: &Tenant,
    licenses: i32,
    request_id: String,
) -> com::Subscription {
    let offer = new_offer(app, agent, partner, "office-enterprise", licenses).await;
    app.offers()
        .redeem_purchase_offer(req(
            &customer.admin_token,
            com::RedeemPurchaseOfferRequest {
                request_id,
                code: offer.code,
                customer: existing(&customer.id),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .redemption
        .unwrap()
        .subscriptions
        .remove(0)
}

async fn a_resumed_stream_misses_and_repeats_nothing(backend: Backend) {
    let app = Arc::new(TestApp::spawn(backend).await);
    let partner = app.partner("Watcher", ADVISOR).await;
    let agent = app.agent(&partner).await;
    let customer = app.tenant(TenantKind::Customer, "Busy").await;
    let (watch_app, watch_agent, watch_partner) = (app.clone(), agent.clone(), partner.clone());
    let buy = move |n: usize| {
        let app = app.clone();
        let agent = agent.clone();
        let partner = partner.clone();
        let customer = customer.clone();
        async move {
            offer_and_buy(
                &app,
                &agent,
                &partner,
                &customer,
                n as i32 + 1,
                format!("buy-{n}"),
            )
            .await;
        }
    };
    let watch = |after: i64| {
        let mut n = watch_app.notifications();
        let r = req(
            &watch_agent,
            com::WatchNotificationsRequest {
                partner_tenant_id: watch_partner.id.clone(),
                after_sequence: after,
            },
        );
        async move { n.watch_notifications(r).await.unwrap().into_inner() }
    };
    for n in 0..3 {
        buy(n).await;
    }
    // Read three, then drop the stream mid-way.
    let mut stream = watch(0).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(
            stream
                .next()
                .await
                .unwrap()
                .unwrap()
                .notification
                .unwrap()
                .sequence,
        );
    }
    drop(stream);
    // Changes while disconnected, and more while reconnected.
    for n in 3..6 {
        buy(n).await;
    }
    let mut stream = watch(*seen.last().unwrap()).await;
    let writer = tokio::spawn({
        let buy = buy.clone();
        async move {
            for n in 6..9 {
                buy(n).await;
            }
        }
    });
    while seen.len() < 9 {
        let next = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("the stream delivers every later notification")
            .unwrap()
            .unwrap();
        seen.push(next.notification.unwrap().sequence);
    }
    writer.await.unwrap();
    assert_eq!(
        seen,
        (1..=9).collect::<Vec<i64>>(),
        "each exactly once, in order"
    );
    // Nothing more arrives.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.next())
            .await
            .is_err()
    );
}
backend_test!(a_resumed_stream_misses_and_repeats_nothing);

/// Many changes for one partner at once. The feed numbers every one of them
/// 1..n with no gap, and each subscription's notifications come in the
/// order its changes happened. PostgreSQL numbers them after their commits,
/// in batches (the feed sequencer). SQLite numbers them in the writing
/// transaction.
async fn a_busy_partners_feed_is_gapless_and_in_order(backend: Backend) {
    const BUYERS: usize = 8;
    const CHANGES: i32 = 3;
    let app = Arc::new(TestApp::spawn(backend).await);
    let partner = app.partner("Busy Advisors", ADVISOR).await;
    let agent = app.agent(&partner).await;
    let mut buyers = Vec::new();
    for n in 0..BUYERS {
        let (app, agent, partner) = (app.clone(), agent.clone(), partner.clone());
        buyers.push(tokio::spawn(async move {
            let customer = app
                .tenant(TenantKind::Customer, &format!("Buyer {n}"))
                .await;
            let mut sub =
                offer_and_buy(&app, &agent, &partner, &customer, 1, format!("buy-{n}")).await;
            for c in 0..CHANGES {
                sub = app
                    .subscriptions()
                    .update_license_count(req(
                        &customer.admin_token,
                        com::UpdateLicenseCountRequest {
                            request_id: format!("licenses-{n}-{c}"),
                            customer_tenant_id: customer.id.clone(),
                            subscription_id: sub.id.clone(),
                            license_count: 2 + c,
                            etag: sub.etag.clone(),
                        },
                    ))
                    .await
                    .unwrap()
                    .into_inner()
                    .subscription
                    .unwrap();
            }
            sub.id
        }));
    }
    let mut ids = Vec::new();
    for b in buyers {
        ids.push(b.await.unwrap());
    }
    // Every change was acknowledged, so every notification is in the feed.
    let notes = app
        .notifications()
        .list_notifications(req(
            &agent,
            com::ListNotificationsRequest {
                partner_tenant_id: partner.id.clone(),
                page_size: 100,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .notifications;
    let total = BUYERS as i64 * (1 + CHANGES as i64);
    assert_eq!(
        notes.iter().map(|n| n.sequence).collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>(),
        "numbered 1..{total}, no gap"
    );
    for id in ids {
        let own: Vec<_> = notes
            .iter()
            .filter(|n| n.subscription.as_ref().unwrap().id == id)
            .collect();
        assert_eq!(own[0].kind(), com::NotificationKind::SubscriptionCreated);
        assert_eq!(
            own.iter()
                .map(|n| (
                    n.previous_license_count,
                    n.subscription.as_ref().unwrap().license_count
                ))
                .collect::<Vec<_>>(),
            vec![(0, 1), (1, 2), (2, 3), (3, 4)],
            "subscription {id}: its changes in the order they were made"
        );
    }
    assert_eq!(
        app.com_count("SELECT COUNT(*) FROM notification_outbox")
            .await,
        0,
        "nothing left waiting"
    );

    // A notification left waiting, as a crash between a change's commit and
    // its numbering leaves it, is numbered by the sweep.
    app.com_exec(
        "INSERT INTO notification_outbox (id, partner_tenant_id, subscription_version, kind, subscription, previous_license_count, created_at) \
         SELECT 'left-waiting', partner_tenant_id, 9, kind, subscription, previous_license_count, created_at \
         FROM notifications WHERE seq = 1",
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let after = app
            .notifications()
            .list_notifications(req(
                &agent,
                com::ListNotificationsRequest {
                    partner_tenant_id: partner.id.clone(),
                    after_sequence: total,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .notifications;
        if let Some(n) = after.first() {
            assert_eq!(n.sequence, total + 1);
            assert_eq!(n.subscription, notes[0].subscription);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sweep numbers what was left waiting"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
backend_test!(a_busy_partners_feed_is_gapless_and_in_order);

async fn a_redemption_cut_off_midway_fails_and_its_retry_completes(backend: Backend) {
    let db = TestDb::new(backend).await;
    let key = Arc::new(sovra_runtime::auth::Keyring::generate());
    let core = TestApp::start_services(
        &settings("global", &db),
        key.clone(),
        sovra::Services {
            identity: true,
            relationships: true,
            commerce: false,
        },
    )
    .await
    .unwrap();
    // Commerce alone, reaching relationships through a link the test can cut.
    let proxy = Proxy::start().await;
    proxy.target(core.addr);
    let commerce = TestApp::start_services(
        &settings_with(
            "global",
            &db,
            vec![
                (
                    "commerce.identity_url".into(),
                    format!("http://{}", core.addr),
                ),
                (
                    "commerce.relationships_url".into(),
                    format!("http://{}", proxy.addr),
                ),
            ],
        ),
        key,
        sovra::Services::one("commerce").unwrap(),
    )
    .await
    .unwrap();
    let partner = core.partner("Midway", ADVISOR).await;
    let agent = core.agent(&partner).await;
    let code = commerce
        .trial_code(&agent, &partner, "office-business", true)
        .await;
    let (choice, upn) = new_customer("Cutoff");
    let mut r = redeem_trial(&code, Some(choice));
    r.accept_delegated_admin = true;
    let tenants = core.count("SELECT COUNT(*) FROM tenants").await;

    proxy.down();
    let s = expect_code(
        commerce
            .trials()
            .redeem_trial_invitation(Request::new(r.clone()))
            .await,
        Code::Unavailable,
    );
    assert!(s.message().contains("relationships"), "{}", s.message());
    // The tenant was created; nothing else was.
    assert_eq!(
        core.count("SELECT COUNT(*) FROM tenants").await,
        tenants + 1
    );
    assert_eq!(
        commerce
            .com_count("SELECT COUNT(*) FROM subscriptions")
            .await,
        0
    );
    assert_eq!(
        core.rel_count("SELECT COUNT(*) FROM partner_customers")
            .await,
        0
    );

    proxy.up();
    let done = commerce
        .trials()
        .redeem_trial_invitation(Request::new(r.clone()))
        .await
        .unwrap()
        .into_inner()
        .redemption
        .unwrap();
    let again = commerce
        .trials()
        .redeem_trial_invitation(Request::new(r))
        .await
        .unwrap()
        .into_inner()
        .redemption
        .unwrap();
    assert_eq!(done, again);
    // Exactly one of everything: tenant, subscription, advisor row, delegated admin.
    assert_eq!(
        core.count("SELECT COUNT(*) FROM tenants").await,
        tenants + 1
    );
    assert_eq!(
        commerce
            .com_count("SELECT COUNT(*) FROM subscriptions")
            .await,
        1
    );
    assert_eq!(
        core.rel_count(
            "SELECT COUNT(*) FROM partner_customers WHERE advisor = 1 AND partner_of_record = 1"
        )
        .await,
        1
    );
    assert_eq!(
        core.rel_count("SELECT COUNT(*) FROM delegated_admin_relationships WHERE state = 'ACTIVE'")
            .await,
        1
    );
    // The new admin signs in to the customer the redemption created.
    let token = core.sign_in(&upn, PASSWORD).await;
    assert!(!token.is_empty());
    assert_eq!(done.subscriptions.len(), 1);
}
backend_test!(a_redemption_cut_off_midway_fails_and_its_retry_completes);

/// Creating a link looks up no earlier answer before it writes: a retry
/// writes a new link, finds its request id taken at the commit, rolls back
/// and answers the first result.
async fn a_retried_offer_creation_answers_the_first_offer(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let partner = app.partner("Retry Partner", ADVISOR).await;
    let agent = app.agent(&partner).await;
    let create = |request_id: &str, licenses: i32| {
        let mut offers = app.offers();
        let r = req(
            &agent,
            com::CreatePurchaseOfferRequest {
                request_id: request_id.into(),
                partner_tenant_id: partner.id.clone(),
                lines: vec![com::OfferLine {
                    product_id: "office-business".into(),
                    license_count: licenses,
                }],
                include_delegated_admin: false,
            },
        );
        async move { offers.create_purchase_offer(r).await }
    };
    let offers = || app.com_count("SELECT COUNT(*) FROM commerce_links");
    let audited = || {
        app.com_count(
            "SELECT COUNT(*) FROM audit_events WHERE action = 'commerce.purchase_offer.create'",
        )
    };

    let first = create("offer-1", 10)
        .await
        .unwrap()
        .into_inner()
        .offer
        .unwrap();
    let again = create("offer-1", 10)
        .await
        .unwrap()
        .into_inner()
        .offer
        .unwrap();
    assert_eq!(
        again, first,
        "the retry answers the first offer, code and all"
    );
    assert_eq!((offers().await, audited().await), (1, 1));

    // The same id for another request is refused, and writes nothing.
    let s = expect_invalid(create("offer-1", 11).await, "request_id");
    assert!(s.message().contains("different request"), "{}", s.message());
    assert_eq!((offers().await, audited().await), (1, 1));

    // Eight twins at once: one offer; each twin answers it, or is told to
    // retry while the first was still committing, and its retry answers it.
    let twins: Vec<_> = (0..8)
        .map(|_| tokio::spawn(create("offer-2", 10)))
        .collect();
    let mut answered = Vec::new();
    for t in twins {
        match t.await.unwrap() {
            Ok(r) => answered.push(r.into_inner().offer.unwrap()),
            Err(s) => {
                assert_eq!(s.code(), Code::Aborted, "{s:?}");
                answered.push(
                    create("offer-2", 10)
                        .await
                        .unwrap()
                        .into_inner()
                        .offer
                        .unwrap(),
                );
            }
        }
    }
    assert!(answered.iter().all(|o| *o == answered[0]));
    assert_ne!(answered[0].id, first.id);
    assert_eq!((offers().await, audited().await), (2, 2));
}
backend_test!(a_retried_offer_creation_answers_the_first_offer);

/// A link's redemption count is counted from its redemptions: customers
/// redeeming one offer at once are each counted once, and a repeat by the
/// same customer is not counted again.
async fn an_offers_redemption_count_counts_each_customer_once(backend: Backend) {
    let app = Arc::new(TestApp::spawn(backend).await);
    let partner = app.partner("Counted Partner", ADVISOR).await;
    let agent = app.agent(&partner).await;
    let offer = new_offer(&app, &agent, &partner, "office-business", 3).await;
    assert_eq!(offer.redemption_count, 0);
    let mut buyers = Vec::new();
    for n in 0..4 {
        let (app, code) = (app.clone(), offer.code.clone());
        buyers.push(tokio::spawn(async move {
            let customer = app
                .tenant(TenantKind::Customer, &format!("Counted Buyer {n}"))
                .await;
            let buy = |request_id: &str| {
                let mut offers = app.offers();
                let r = req(
                    &customer.admin_token,
                    com::RedeemPurchaseOfferRequest {
                        request_id: request_id.into(),
                        code: code.clone(),
                        customer: existing(&customer.id),
                        ..Default::default()
                    },
                );
                async move { offers.redeem_purchase_offer(r).await.unwrap() }
            };
            buy("first").await;
            // Again, under another request id: the first result, not counted.
            buy("again").await;
        }));
    }
    for b in buyers {
        b.await.unwrap();
    }
    let got = app
        .offers()
        .get_purchase_offer(req(
            &agent,
            com::GetPurchaseOfferRequest {
                partner_tenant_id: partner.id.clone(),
                id: offer.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .offer
        .unwrap();
    assert_eq!(got.redemption_count, 4);
    let listed = app
        .offers()
        .list_purchase_offers(req(
            &agent,
            com::ListPurchaseOffersRequest {
                partner_tenant_id: partner.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .offers;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].redemption_count, 4);
    assert_eq!(app.com_count("SELECT COUNT(*) FROM redemptions").await, 4);
}
backend_test!(an_offers_redemption_count_counts_each_customer_once);

/// Concurrent redemptions of one offer (on PostgreSQL written together, as
/// one statement), among them twins: the same customer under several
/// request ids at once. Each customer buys once, and every twin answers
/// that one purchase.
async fn concurrent_redemptions_of_an_offer_each_buy_once(backend: Backend) {
    const CUSTOMERS: usize = 6;
    const TWINS: usize = 4;
    let app = Arc::new(TestApp::spawn(backend).await);
    let partner = app.partner("Concurrent Partner", ADVISOR).await;
    let agent = app.agent(&partner).await;
    let offer = new_offer(&app, &agent, &partner, "office-business", 2).await;
    let mut customers = Vec::new();
    for n in 0..CUSTOMERS {
        customers.push(
            app.tenant(TenantKind::Customer, &format!("Concurrent Buyer {n}"))
                .await,
        );
    }
    let mut calls = Vec::new();
    for twin in 0..TWINS {
        for (n, customer) in customers.iter().enumerate() {
            let (app, code, customer) = (app.clone(), offer.code.clone(), customer.clone());
            calls.push(tokio::spawn(async move {
                let r = req(
                    &customer.admin_token,
                    com::RedeemPurchaseOfferRequest {
                        request_id: format!("buy-{n}-{twin}"),
                        code,
                        customer: existing(&customer.id),
                        ..Default::default()
                    },
                );
                let got = app.offers().redeem_purchase_offer(r).await;
                (n, got.unwrap().into_inner().redemption.unwrap())
            }));
        }
    }
    let mut answers = vec![Vec::new(); CUSTOMERS];
    for c in calls {
        let (n, redemption) = c.await.unwrap();
        answers[n].push(redemption);
    }
    for (n, twins) in answers.iter().enumerate() {
        assert_eq!(twins.len(), TWINS);
        let ids = |r: &com::Redemption| {
            r.subscriptions
                .iter()
                .map(|s| s.id.clone())
                .collect::<Vec<_>>()
        };
        let first = ids(&twins[0]);
        assert_eq!(first.len(), 1, "customer {n}: one subscription");
        for t in twins {
            assert_eq!(t.customer_tenant_id, customers[n].id);
            assert_eq!(
                ids(t),
                first,
                "customer {n}: every twin answers the one purchase"
            );
        }
        // The answered subscription is the one stored.
        let stored = app
            .com_count(&format!(
                "SELECT COUNT(*) FROM subscriptions WHERE id = '{}' AND customer_tenant_id = '{}'",
                first[0], customers[n].id
            ))
            .await;
        assert_eq!(stored, 1, "customer {n}: the answered subscription exists");
    }
    assert_eq!(
        app.com_count("SELECT COUNT(*) FROM redemptions").await,
        CUSTOMERS as i64
    );
    assert_eq!(
        app.com_count("SELECT COUNT(*) FROM subscriptions").await,
        CUSTOMERS as i64
    );
}
backend_test!(concurrent_redemptions_of_an_offer_each_buy_once);
