//! Product keys: import results, exactly-once redemption under concurrency,
//! validation before lookup, the per-partner rate limit, and china.

use std::{collections::HashSet, sync::Arc};

use tonic::Code;
use tonic_types::StatusExt;

use crate::{backend_test, helpers::*};

fn redeem(
    partner: &Tenant,
    customer: &Tenant,
    key: &str,
    request_id: &str,
) -> com::RedeemProductKeyRequest {
    com::RedeemProductKeyRequest {
        request_id: request_id.into(),
        partner_tenant_id: partner.id.clone(),
        product_key: key.into(),
        customer_tenant_id: customer.id.clone(),
        offer_delegated_admin: false,
    }
}

/// Redeems as a well-behaved client does: a `RESOURCE_EXHAUSTED` answer
/// (the per-partner attempt limit) is retried after the delay its
/// `RetryInfo` names, so tests that make more attempts than the burst allows
/// still decide every key.
async fn redeem_within_limit(
    app: &TestApp,
    agent: &str,
    request: com::RedeemProductKeyRequest,
) -> Result<com::RedeemProductKeyResponse, tonic::Status> {
    loop {
        match app
            .keys()
            .redeem_product_key(req(agent, request.clone()))
            .await
        {
            Err(s) if s.code() == Code::ResourceExhausted => {
                let delay = s
                    .get_details_retry_info()
                    .and_then(|r| r.retry_delay)
                    .expect("a rate-limited answer names its retry delay");
                tokio::time::sleep(delay).await;
            }
            r => return r.map(|r| r.into_inner()),
        }
    }
}

async fn import_reports_each_key(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let good = sovra_commerce::ProductKey::generate().formatted();
    let mut typo = good.clone().into_bytes();
    typo[3] = if typo[3] == b'B' { b'C' } else { b'B' };
    let typo = String::from_utf8(typo).unwrap();
    let line = |k: &str, product: &str, n: i32| com::ProductKeyImport {
        product_key: k.into(),
        product_id: product.into(),
        license_count: n,
        term_days: 365,
    };
    let resp = app
        .keys()
        .import_product_keys(req(
            &app.operator,
            com::ImportProductKeysRequest {
                request_id: "import-1".into(),
                keys: vec![
                    line(&good, "office-business", 10),
                    line(&good.to_lowercase(), "office-business", 10),
                    line(&typo, "office-business", 10),
                    line(
                        &sovra_commerce::ProductKey::generate().formatted(),
                        "nope",
                        10,
                    ),
                    line(
                        &sovra_commerce::ProductKey::generate().formatted(),
                        "security-suite",
                        1,
                    ),
                ],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let outcomes: Vec<com::ImportOutcome> = resp.results.iter().map(|r| r.outcome()).collect();
    assert_eq!(
        outcomes,
        [
            com::ImportOutcome::Imported,
            com::ImportOutcome::Duplicate,
            com::ImportOutcome::Invalid,
            com::ImportOutcome::Invalid,
            com::ImportOutcome::Invalid,
        ]
    );
    assert!(
        resp.results[2].message.contains("check character"),
        "{:?}",
        resp.results[2]
    );
    assert!(
        resp.results[4].message.contains("license bounds"),
        "{:?}",
        resp.results[4]
    );
    assert_eq!(resp.imported_count, 1);
    // Only the hash is stored.
    assert_eq!(app.com_count("SELECT COUNT(*) FROM product_keys").await, 1);
    let plain = good.replace('-', "");
    let stored = app
        .com_count(&format!(
            "SELECT COUNT(*) FROM product_keys WHERE key_hash LIKE '%{plain}%' OR key_hint = '{plain}'"
        ))
        .await;
    assert_eq!(stored, 0);

    // Only the operator imports.
    let partner = app.partner("Keys Partner", ADVISOR).await;
    let s = app
        .keys()
        .import_product_keys(req(
            &partner.admin_token,
            com::ImportProductKeysRequest {
                request_id: "import-2".into(),
                keys: vec![line(&good, "office-business", 10)],
            },
        ))
        .await;
    expect_code(s, Code::PermissionDenied);
}
backend_test!(import_reports_each_key);

async fn one_key_is_redeemed_once_by_64_contenders(backend: Backend) {
    let app = Arc::new(TestApp::spawn(backend).await);
    let partner = app.partner("Racer", ADVISOR).await;
    let agent = app.agent(&partner).await;
    let customer = app.tenant(TenantKind::Customer, "Target").await;
    let key = app.import_keys("office-enterprise", 50, 1).await.remove(0);
    let mut tasks = Vec::new();
    for i in 0..64 {
        let (app, partner, customer, key, agent) = (
            app.clone(),
            partner.clone(),
            customer.clone(),
            key.clone(),
            agent.clone(),
        );
        tasks.push(tokio::spawn(async move {
            app.keys()
                .redeem_product_key(req(
                    &agent,
                    redeem(&partner, &customer, &key, &format!("race-{i}")),
                ))
                .await
        }));
    }
    let mut wins = 0;
    let mut retry = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(s) => match s.code() {
                // Lost: redeemed by another contender already…
                Code::FailedPrecondition => assert_eq!(
                    s.get_details_error_info().unwrap().reason,
                    "PRODUCT_KEY_ALREADY_REDEEMED"
                ),
                // …or being redeemed by one right now: told at once, not queued.
                Code::Aborted => {
                    assert_eq!(
                        s.get_details_error_info().unwrap().reason,
                        "PRODUCT_KEY_BEING_REDEEMED"
                    );
                    retry.push(i);
                }
                _ => panic!("{s:?}"),
            },
        }
    }
    assert_eq!(wins, 1);
    // A retry of an aborted attempt learns the outcome. 64 attempts and up to
    // 63 retries exceed the partner's burst of 100, so the retries honour the
    // limit's RetryInfo.
    for i in retry {
        let s = redeem_within_limit(
            &app,
            &agent,
            redeem(&partner, &customer, &key, &format!("race-{i}")),
        )
        .await
        .unwrap_err();
        assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    }
    assert_eq!(app.com_count("SELECT COUNT(*) FROM subscriptions").await, 1);
    assert_eq!(
        app.com_count("SELECT COUNT(*) FROM product_keys WHERE redeemed_at IS NOT NULL")
            .await,
        1
    );
}
backend_test!(one_key_is_redeemed_once_by_64_contenders);

async fn a_second_key_for_a_customer_leaves_its_relationship_row_alone(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let partner = app.partner("Keyholder", ADVISOR).await;
    let agent = app.agent(&partner).await;
    let customer = app.tenant(TenantKind::Customer, "Repeat Buyer").await;
    let keys = app.import_keys("office-business", 5, 2).await;
    let row = || async {
        app.customers()
            .get_customer(req(
                &agent,
                rel::GetCustomerRequest {
                    partner_tenant_id: partner.id.clone(),
                    customer_tenant_id: customer.id.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .customer
            .unwrap()
    };
    for (i, key) in keys.iter().enumerate() {
        app.keys()
            .redeem_product_key(req(
                &agent,
                redeem(&partner, &customer, key, &format!("repeat-{i}")),
            ))
            .await
            .unwrap();
        if i == 0 {
            app.clock.advance(std::time::Duration::from_secs(600));
        }
    }
    // The first key made the partner advisor and partner of record; the
    // second, ten minutes later, had nothing to change there.
    let after = row().await;
    assert!(after.partner_of_record);
    assert!(after
        .relationships
        .contains(&(rel::RelationshipKind::Advisor as i32)));
    assert_eq!(after.update_time, after.create_time);
    assert_eq!(app.com_count("SELECT COUNT(*) FROM subscriptions").await, 2);
    // The second was answered from a read: relationships wrote nothing for
    // it, neither an audit record nor a remembered request id.
    assert_eq!(
        app.rel_count(
            "SELECT COUNT(*) FROM audit_events WHERE action = 'relationships.advisor.record'"
        )
        .await,
        1
    );
    assert_eq!(
        app.rel_count(
            "SELECT COUNT(*) FROM idempotency_keys WHERE method = 'RecordAdvisorRelationship'"
        )
        .await,
        1
    );
    // Both redemptions are in the customer's audit trail all the same.
    assert_eq!(
        app.com_count(&format!(
            "SELECT COUNT(*) FROM audit_events WHERE action = 'commerce.product_key.redeem' \
             AND tenant_id = '{}'",
            customer.id
        ))
        .await,
        2
    );
    // A retry of the second (same request id) answers the same again.
    let again = app
        .keys()
        .redeem_product_key(req(
            &agent,
            redeem(&partner, &customer, &keys[1], "repeat-1"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(again.subscription.is_some());
    assert_eq!(row().await.update_time, after.update_time);
}
backend_test!(a_second_key_for_a_customer_leaves_its_relationship_row_alone);

async fn a_partner_suspended_between_two_keys_is_refused_the_second_at_once(backend: Backend) {
    // Commerce reuses identity's recent answer about a tenant; a change in
    // identity (here in the same process) is seen by the very next call.
    let app = TestApp::spawn(backend).await;
    let partner = app.partner("Suspended Soon", ADVISOR).await;
    let agent = app.agent(&partner).await;
    let customer = app.tenant(TenantKind::Customer, "Keeps Buying").await;
    let keys = app.import_keys("office-business", 5, 2).await;
    let call = |key: &str, rid: &str| {
        let request = redeem(&partner, &customer, key, rid);
        let mut keys = app.keys();
        let agent = agent.clone();
        async move { keys.redeem_product_key(req(&agent, request)).await }
    };
    let status = |s: PartnerStatus| {
        let mut tenants = app.tenants();
        let request = req(
            &app.operator,
            SetPartnerStatusRequest {
                tenant_id: partner.id.clone(),
                status: s as i32,
                ..Default::default()
            },
        );
        async move { tenants.set_partner_status(request).await.unwrap() }
    };
    call(&keys[0], "first").await.unwrap();
    status(PartnerStatus::Suspended).await;
    let s = expect_code(call(&keys[1], "second").await, Code::FailedPrecondition);
    assert!(s.message().contains("suspended"), "{}", s.message());
    assert_eq!(app.com_count("SELECT COUNT(*) FROM subscriptions").await, 1);
    status(PartnerStatus::Active).await;
    call(&keys[1], "second").await.unwrap();
    assert_eq!(app.com_count("SELECT COUNT(*) FROM subscriptions").await, 2);
}
backend_test!(a_partner_suspended_between_two_keys_is_refused_the_second_at_once);

async fn a_thousand_keys_by_16_partners_make_a_thousand_subscriptions(backend: Backend) {
    let app = Arc::new(TestApp::spawn(backend).await);
    let customer = app.tenant(TenantKind::Customer, "Big Buyer").await;
    let keys = Arc::new(app.import_keys("office-business", 5, 1000).await);
    let mut partners = Vec::new();
    for i in 0..16 {
        let p = app.partner(&format!("Partner {i}"), ADVISOR).await;
        let agent = app.agent(&p).await;
        partners.push((p, agent));
    }
    // Every partner tries every 16th key, twice over from two offsets: each
    // key is contended by two partners.
    let mut tasks = Vec::new();
    for (p, (partner, agent)) in partners.iter().enumerate() {
        for offset in [0usize, 1] {
            let (app, keys, partner, customer, agent) = (
                app.clone(),
                keys.clone(),
                partner.clone(),
                customer.clone(),
                agent.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut won = Vec::new();
                for k in (0..keys.len()).filter(|k| (k + offset) % 16 == p) {
                    // About 125 attempts per partner: more than its burst.
                    let r = redeem_within_limit(
                        &app,
                        &agent,
                        redeem(&partner, &customer, &keys[k], &format!("{p}-{offset}-{k}")),
                    )
                    .await;
                    match r {
                        Ok(resp) => won.push((k, resp.subscription.unwrap().id)),
                        Err(s) => assert!(
                            matches!(s.code(), Code::FailedPrecondition | Code::Aborted),
                            "{s:?}"
                        ),
                    }
                }
                won
            }));
        }
    }
    let mut keys_won = HashSet::new();
    let mut subs = HashSet::new();
    for t in tasks {
        for (k, sub) in t.await.unwrap() {
            assert!(keys_won.insert(k), "key {k} redeemed twice");
            assert!(subs.insert(sub));
        }
    }
    assert_eq!(keys_won.len(), 1000);
    assert_eq!(
        app.com_count("SELECT COUNT(*) FROM subscriptions").await,
        1000
    );
}
backend_test!(a_thousand_keys_by_16_partners_make_a_thousand_subscriptions);

async fn bad_keys_are_refused_before_any_lookup_and_write_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let partner = app.partner("Careful", ADVISOR).await;
    let agent = app.agent(&partner).await;
    let customer = app.tenant(TenantKind::Customer, "Careful Customer").await;
    let key = app.import_keys("office-business", 5, 1).await.remove(0);
    let keys = app.keys();
    let call = |key: &str| {
        let mut keys = keys.clone();
        let r = req(&agent, redeem(&partner, &customer, key, ""));
        async move { keys.redeem_product_key(r).await }
    };
    expect_invalid(call("ABC").await, "product_key");
    let mut typo = key.clone().into_bytes();
    typo[0] = if typo[0] == b'B' { b'C' } else { b'B' };
    let s = expect_invalid(call(&String::from_utf8(typo).unwrap()).await, "product_key");
    assert!(s.get_details_bad_request().unwrap().field_violations[0]
        .description
        .contains("check character"));
    let unknown = sovra_commerce::ProductKey::generate().formatted();
    expect_code(call(&unknown).await, Code::NotFound);
    // A partner tenant as the customer, an unknown customer.
    let mut bad = redeem(&partner, &customer, &key, "");
    bad.customer_tenant_id = partner.id.clone();
    expect_code(
        keys.clone().redeem_product_key(req(&agent, bad)).await,
        Code::FailedPrecondition,
    );
    // A partner that is not a subscription advisor.
    let reseller = app
        .partner("Reseller Only", &[PartnerAuthorization::CloudReseller])
        .await;
    let reseller_agent = app.agent(&reseller).await;
    let s = expect_code(
        keys.clone()
            .redeem_product_key(req(&reseller_agent, redeem(&reseller, &customer, &key, "")))
            .await,
        Code::FailedPrecondition,
    );
    assert!(
        s.message().contains("SUBSCRIPTION_ADVISOR"),
        "{}",
        s.message()
    );
    assert_eq!(app.com_count("SELECT COUNT(*) FROM subscriptions").await, 0);
    assert_eq!(
        app.rel_count("SELECT COUNT(*) FROM partner_customers")
            .await,
        0
    );

    // A suspended partner is told so.
    app.tenants()
        .set_partner_status(req(
            &app.operator,
            SetPartnerStatusRequest {
                tenant_id: partner.id.clone(),
                status: PartnerStatus::Suspended as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let s = expect_code(call(&key).await, Code::FailedPrecondition);
    assert!(s.message().contains("suspended"), "{}", s.message());
    assert_eq!(app.com_count("SELECT COUNT(*) FROM subscriptions").await, 0);
}
backend_test!(bad_keys_are_refused_before_any_lookup_and_write_nothing);

async fn redemption_offers_delegated_admin_and_is_rate_limited(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = settings_with(
        "global",
        &db,
        vec![
            ("commerce.product_key_attempts_burst".into(), "3".into()),
            (
                "commerce.product_key_attempts_per_minute".into(),
                "1".into(),
            ),
        ],
    );
    let app = TestApp::start(&s, Arc::new(sovra_runtime::auth::Keyring::generate()))
        .await
        .unwrap();
    let partner = app.partner("Fast", ADVISOR).await;
    let agent = app.agent(&partner).await;
    let customer = app.tenant(TenantKind::Customer, "Offered").await;
    let key = app.import_keys("office-business", 5, 1).await.remove(0);
    let mut r = redeem(&partner, &customer, &key, "with-da");
    r.offer_delegated_admin = true;
    let resp = app
        .keys()
        .redeem_product_key(req(&agent, r.clone()))
        .await
        .unwrap()
        .into_inner();
    let sub = resp.subscription.unwrap();
    assert_eq!(sub.source(), com::SubscriptionSource::ProductKey);
    assert_eq!(sub.partner_of_record_tenant_id, partner.id);
    assert!(resp.delegated_admin_offer_url.contains("/delegated-admin/"));
    // The customer's admin accepts the offer the key came with.
    app.accept(&customer, &resp.delegated_admin_offer_code, false)
        .await
        .unwrap();
    // Attempts 2 and 3 are allowed (a retry replays), the 4th is not.
    let again = app
        .keys()
        .redeem_product_key(req(&agent, r.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.subscription.unwrap().id, sub.id);
    // The replay carries the same offer (relationships replays it too).
    assert_eq!(
        again.delegated_admin_offer_code,
        resp.delegated_admin_offer_code
    );
    let other = sovra_commerce::ProductKey::generate().formatted();
    expect_code(
        app.keys()
            .redeem_product_key(req(&agent, redeem(&partner, &customer, &other, "")))
            .await,
        Code::NotFound,
    );
    let s = expect_code(
        app.keys()
            .redeem_product_key(req(&agent, redeem(&partner, &customer, &other, "")))
            .await,
        Code::ResourceExhausted,
    );
    let retry = s
        .get_details_retry_info()
        .expect("RetryInfo names the delay");
    assert!(retry.retry_delay.unwrap() > std::time::Duration::ZERO);
    app.stop().await;
}
backend_test!(redemption_offers_delegated_admin_and_is_rate_limited);

async fn china_has_no_product_keys(backend: Backend) {
    let app = TestApp::spawn_instance(backend, "china").await;
    let partner = app.partner("Beijing Partner", ADVISOR).await;
    let agent = app.agent(&partner).await;
    let customer = app.tenant(TenantKind::Customer, "Shanghai").await;
    let key = sovra_commerce::ProductKey::generate().formatted();
    let s = expect_code(
        app.keys()
            .redeem_product_key(req(&agent, redeem(&partner, &customer, &key, "")))
            .await,
        Code::FailedPrecondition,
    );
    assert!(
        s.message().contains("`product_keys`") && s.message().contains("`china`"),
        "{}",
        s.message()
    );
    let s = expect_code(
        app.keys()
            .import_product_keys(req(
                &app.operator,
                com::ImportProductKeysRequest {
                    request_id: String::new(),
                    keys: vec![com::ProductKeyImport {
                        product_key: key,
                        product_id: "office-business".into(),
                        license_count: 1,
                        term_days: 30,
                    }],
                },
            ))
            .await,
        Code::FailedPrecondition,
    );
    assert!(s.message().contains("`china`"));
    // Its catalog is its own, in CNY.
    let products = app
        .catalog()
        .list_products(com::ListProductsRequest {})
        .await
        .unwrap()
        .into_inner()
        .products;
    assert!(products
        .iter()
        .all(|p| p.unit_price.as_ref().unwrap().currency_code == "CNY"));
    assert!(products.iter().all(|p| p.id != "dynamics-sales"));
}
backend_test!(china_has_no_product_keys);

/// A key imported for a product that this instance no longer sells (the
/// catalog changed after the import) is refused as PRODUCT_WITHDRAWN and
/// stays unredeemed; with the product back, it redeems.
async fn a_key_for_a_withdrawn_product_is_refused_and_writes_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let with_product = settings("global", &db);
    let app = TestApp::start(
        &with_product,
        Arc::new(sovra_runtime::auth::Keyring::generate()),
    )
    .await
    .unwrap();
    let key = app.import_keys("dynamics-sales", 5, 1).await.remove(0);
    app.stop().await;

    // The same databases, with dynamics-sales gone from the catalog.
    let mut without = settings("global", &db);
    without
        .commerce
        .catalog
        .retain(|p| p.id != "dynamics-sales");
    let app = TestApp::start(&without, Arc::new(sovra_runtime::auth::Keyring::generate()))
        .await
        .unwrap();
    let partner = app.partner("Contoso", ADVISOR).await;
    let agent = app.agent(&partner).await;
    let customer = app.tenant(TenantKind::Customer, "Fabrikam").await;
    let s = expect_code(
        app.keys()
            .redeem_product_key(req(&agent, redeem(&partner, &customer, &key, "w-1")))
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(
        s.get_details_error_info().unwrap().reason,
        "PRODUCT_WITHDRAWN"
    );
    assert!(
        s.message().contains("dynamics-sales") && s.message().contains("no longer sold"),
        "{}",
        s.message()
    );
    assert_eq!(
        app.com_count("SELECT COUNT(*) FROM product_keys WHERE redeemed_by IS NOT NULL")
            .await,
        0
    );
    assert_eq!(app.com_count("SELECT COUNT(*) FROM subscriptions").await, 0);
    app.stop().await;

    // Sold again: the same key redeems.
    let app = TestApp::start(
        &with_product,
        Arc::new(sovra_runtime::auth::Keyring::generate()),
    )
    .await
    .unwrap();
    let partner = app.partner("Contoso Again", ADVISOR).await;
    let agent = app.agent(&partner).await;
    let customer = app.tenant(TenantKind::Customer, "Fabrikam Again").await;
    let r = app
        .keys()
        .redeem_product_key(req(&agent, redeem(&partner, &customer, &key, "w-2")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.subscription.unwrap().product_id, "dynamics-sales");
    app.stop().await;
}
backend_test!(a_key_for_a_withdrawn_product_is_refused_and_writes_nothing);
