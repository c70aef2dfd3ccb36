//! Customer lists at scale, and service requests opened by customers and
//! on their behalf.

use std::collections::HashSet;

use sqlx::Connection;
use tonic::Code;

use crate::{backend_test, helpers::*};

/// Writes `n` customers of `partner` straight into relationships' database,
/// in batches (the API path is exercised by the other tests).
async fn seed_customers(app: &TestApp, partner: &str, n: usize) {
    sqlx::any::install_default_drivers();
    let mut c = sqlx::AnyConnection::connect(&app.rel_db_url).await.unwrap();
    let hex = |s: &str| {
        s.to_lowercase()
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let words = [
        "Contoso",
        "Fabrikam",
        "Northwind",
        "Adventure Works",
        "Coho",
    ];
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let mut sql = String::from(
            "INSERT INTO partner_customers (partner_tenant_id, customer_tenant_id, display_name, primary_domain, \
             name_key, domain_key, reseller_request_id, reseller_since, created_at, updated_at) VALUES ",
        );
        for (k, i) in chunk.iter().enumerate() {
            // Names repeat (ties), domains interleave with names on purpose.
            let name = format!("{} {}", words[i % words.len()], i % 997);
            let domain = format!(
                "{}{i}.example",
                words[(i * 3) % words.len()].to_lowercase().replace(' ', "")
            );
            if k > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "('{partner}', 'global_{i:032x}', '{name}', '{domain}', '{}', '{}', 'seed', 0, 0, 0)",
                hex(&name),
                hex(&domain)
            ));
        }
        sqlx::query(&sql).execute(&mut c).await.unwrap();
    }
    let _ = c.close().await;
}

async fn walk(
    app: &TestApp,
    token: &str,
    partner: &str,
    query: &str,
    page_size: i32,
) -> Vec<String> {
    let mut seen = Vec::new();
    let mut token_in = String::new();
    loop {
        let page = app
            .customers()
            .list_customers(req(
                token,
                rel::ListCustomersRequest {
                    partner_tenant_id: partner.into(),
                    query: query.into(),
                    page_size,
                    page_token: token_in.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.customers.into_iter().map(|c| c.customer_tenant_id));
        if page.next_page_token.is_empty() {
            return seen;
        }
        token_in = page.next_page_token;
    }
}

async fn every_page_of_100_000_customers_once_with_no_duplicates_and_none_missing(b: Backend) {
    let app = TestApp::spawn(b).await;
    let p = app
        .partner("Fabrikam", &[PartnerAuthorization::CloudReseller])
        .await;
    const N: usize = 100_000;
    seed_customers(&app, &p.id, N).await;
    let all = walk(&app, &p.admin_token, &p.id, "", 500).await;
    assert_eq!(all.len(), N);
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), N, "no duplicates");

    // A search matching by name and by domain: every match once.
    let hits = walk(&app, &p.admin_token, &p.id, "co", 500).await;
    let unique: HashSet<_> = hits.iter().collect();
    assert_eq!(unique.len(), hits.len(), "no duplicates in search");
    let expected = (0..N)
        .filter(|i| {
            let w = [
                "contoso",
                "fabrikam",
                "northwind",
                "adventure works",
                "coho",
            ];
            w[i % 5].starts_with("co") || w[(i * 3) % 5].starts_with("co")
        })
        .count();
    assert_eq!(hits.len(), expected);

    // A page token is bound to its query.
    let first = app
        .customers()
        .list_customers(req(
            &p.admin_token,
            rel::ListCustomersRequest {
                partner_tenant_id: p.id.clone(),
                query: "co".into(),
                page_size: 10,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    expect_invalid(
        app.customers()
            .list_customers(req(
                &p.admin_token,
                rel::ListCustomersRequest {
                    partner_tenant_id: p.id.clone(),
                    query: "fab".into(),
                    page_token: first.next_page_token,
                    ..Default::default()
                },
            ))
            .await,
        "page_token",
    );
}
backend_test!(every_page_of_100_000_customers_once_with_no_duplicates_and_none_missing);

async fn service_requests_by_the_customer_and_on_its_behalf_moved_by_the_operator(b: Backend) {
    use PartnerAuthorization::*;
    let app = TestApp::spawn(b).await;
    let reseller = app
        .partner("Fabrikam", &[CloudReseller, DelegatedAdmin])
        .await;
    let stranger = app.partner("Stranger", &[DelegatedAdmin]).await;
    let customer = app.tenant(TenantKind::Customer, "Contoso").await;
    let none = CompanyRole::Unspecified;
    let agent = app
        .user(
            &reseller.admin_token,
            &reseller,
            "agent",
            none,
            SupportedCompaniesAccess::Limited,
        )
        .await;
    let plain = app
        .user(
            &customer.admin_token,
            &customer,
            "plain",
            none,
            SupportedCompaniesAccess::Unspecified,
        )
        .await;
    let create = |token: &str, title: &str| {
        req(
            token,
            rel::CreateServiceRequestRequest {
                customer_tenant_id: customer.id.clone(),
                title: title.into(),
                description: "Mail is slow".into(),
                ..Default::default()
            },
        )
    };
    let sr = app.service_requests();

    // The customer's admin opens and submits one.
    let own = sr
        .clone()
        .create_service_request(create(&customer.admin_token, "Mail"))
        .await
        .unwrap()
        .into_inner()
        .service_request
        .unwrap();
    assert_eq!(own.state, rel::ServiceRequestState::Draft as i32);
    assert!(own.on_behalf_partner_tenant_id.is_empty());
    let submit = |token: &str, id: &str| {
        req(
            token,
            rel::SubmitServiceRequestRequest {
                customer_tenant_id: customer.id.clone(),
                id: id.into(),
                ..Default::default()
            },
        )
    };
    sr.clone()
        .submit_service_request(submit(&customer.admin_token, &own.id))
        .await
        .unwrap();
    expect_code(
        sr.clone()
            .submit_service_request(submit(&customer.admin_token, &own.id))
            .await,
        Code::FailedPrecondition,
    );

    // A user without an admin role may not; an unrelated partner finds nothing.
    expect_code(
        sr.clone()
            .create_service_request(create(&plain.token, "x"))
            .await,
        Code::PermissionDenied,
    );
    expect_code(
        sr.clone()
            .create_service_request(create(&stranger.admin_token, "x"))
            .await,
        Code::NotFound,
    );
    expect_invalid(
        sr.clone()
            .create_service_request(create(&customer.admin_token, " "))
            .await,
        "title",
    );

    // A delegated admin opens one on the customer's behalf, and keeps doing so
    // as its reseller once delegated administration is removed.
    app.accept(&customer, &app.offer(&reseller).await, false)
        .await
        .unwrap();
    let delegated = sr
        .clone()
        .create_service_request(create(&agent.token, "Delegated"))
        .await
        .unwrap()
        .into_inner()
        .service_request
        .unwrap();
    assert_eq!(delegated.on_behalf_partner_tenant_id, reseller.id);
    app.remove(&customer, "", "").await.unwrap();
    expect_code(
        sr.clone()
            .create_service_request(create(&agent.token, "After"))
            .await,
        Code::PermissionDenied,
    );
    let code = app
        .resellers()
        .create_reseller_request(req(
            &reseller.admin_token,
            rel::CreateResellerRequestRequest {
                partner_tenant_id: reseller.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .reseller_request
        .unwrap()
        .code;
    app.resellers()
        .accept_reseller_request(req(
            &customer.admin_token,
            rel::AcceptResellerRequestRequest {
                code,
                customer_tenant_id: customer.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let as_reseller = sr
        .clone()
        .create_service_request(create(&agent.token, "As reseller"))
        .await
        .unwrap()
        .into_inner()
        .service_request
        .unwrap();
    assert_eq!(as_reseller.on_behalf_partner_tenant_id, reseller.id);

    // Only the operator moves them forward; resolving needs a resolution.
    let update = |token: &str, state: rel::ServiceRequestState, resolution: &str| {
        req(
            token,
            rel::UpdateServiceRequestStateRequest {
                customer_tenant_id: customer.id.clone(),
                id: own.id.clone(),
                state: state as i32,
                resolution: resolution.into(),
                ..Default::default()
            },
        )
    };
    expect_code(
        sr.clone()
            .update_service_request_state(update(
                &customer.admin_token,
                rel::ServiceRequestState::InProgress,
                "",
            ))
            .await,
        Code::PermissionDenied,
    );
    sr.clone()
        .update_service_request_state(update(
            &app.operator,
            rel::ServiceRequestState::InProgress,
            "",
        ))
        .await
        .unwrap();
    expect_invalid(
        sr.clone()
            .update_service_request_state(update(
                &app.operator,
                rel::ServiceRequestState::Resolved,
                "",
            ))
            .await,
        "resolution",
    );
    let done = sr
        .clone()
        .update_service_request_state(update(
            &app.operator,
            rel::ServiceRequestState::Resolved,
            "Fixed the MX record",
        ))
        .await
        .unwrap()
        .into_inner()
        .service_request
        .unwrap();
    assert_eq!(done.state, rel::ServiceRequestState::Resolved as i32);

    // The customer lists all three, newest first, in pages.
    let page = sr
        .clone()
        .list_service_requests(req(
            &customer.admin_token,
            rel::ListServiceRequestsRequest {
                customer_tenant_id: customer.id.clone(),
                page_size: 2,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.service_requests.len(), 2);
    assert_eq!(page.service_requests[0].id, as_reseller.id);
    let rest = sr
        .clone()
        .list_service_requests(req(
            &customer.admin_token,
            rel::ListServiceRequestsRequest {
                customer_tenant_id: customer.id.clone(),
                page_size: 2,
                page_token: page.next_page_token,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.service_requests.len(), 1);
    assert!(rest.next_page_token.is_empty());

    // What partners did on the customer's behalf is in its audit, marked delegated.
    let events = app
        .customers()
        .list_audit_events(req(
            &customer.admin_token,
            rel::ListAuditEventsRequest {
                tenant_id: customer.id.clone(),
                page_size: 100,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    let by_partner: Vec<_> = events
        .iter()
        .filter(|e| {
            e.delegated
                && e.actor_tenant_id == reseller.id
                && e.action == "relationships.service_request.create"
        })
        .collect();
    assert_eq!(by_partner.len(), 2);
}
backend_test!(service_requests_by_the_customer_and_on_its_behalf_moved_by_the_operator);
