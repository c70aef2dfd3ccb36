//! OpenTelemetry over OTLP, proven with an in-process collector (the
//! `opentelemetry-proto` collector services): the three services run as
//! three separate apps, as `sovra serve` deploys them, each exporting to the
//! collector; one link redemption is one trace whose spans cover all three.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{
            metrics_service_server::{MetricsService, MetricsServiceServer},
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        },
        trace::v1::{
            trace_service_server::{TraceService, TraceServiceServer},
            ExportTraceServiceRequest, ExportTraceServiceResponse,
        },
    },
    common::v1::{any_value::Value, KeyValue},
    resource::v1::Resource,
    trace::v1::{span::SpanKind, Span},
};
use sovra::Services;
use sovra_runtime::auth::Keyring;
use tonic::{Request, Response, Status};

use crate::{backend_test, helpers::*};

/// What the collector received.
#[derive(Clone, Default)]
struct Collector {
    /// Each span with its resource's `service.name`.
    spans: Arc<Mutex<Vec<(String, Span)>>>,
    metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn text<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attr(attrs, key) {
        Some(Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn service_name(r: &Option<Resource>) -> String {
    r.as_ref()
        .and_then(|r| text(&r.attributes, "service.name"))
        .unwrap_or_default()
        .to_owned()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let name = service_name(&rs.resource);
            for ss in rs.scope_spans {
                spans.extend(ss.spans.into_iter().map(|s| (name.clone(), s)));
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        req: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.metrics.lock().unwrap().push(req.into_inner());
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

impl Collector {
    async fn start(&self) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(self.clone()))
            .add_service(MetricsServiceServer::new(self.clone()));
        tokio::spawn(
            server.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }

    /// The metric names one app's pushes carried, by `service.name`.
    fn metric_names(&self) -> HashMap<String, HashSet<String>> {
        let mut out: HashMap<String, HashSet<String>> = HashMap::new();
        for req in self.metrics.lock().unwrap().iter() {
            for rm in &req.resource_metrics {
                let names = out.entry(service_name(&rm.resource)).or_default();
                for sm in &rm.scope_metrics {
                    names.extend(sm.metrics.iter().map(|m| m.name.clone()));
                }
            }
        }
        out
    }
}

/// identity, relationships and commerce as three apps on one database set,
/// each exporting to `collector`.
async fn three_apps(
    backend: Backend,
    collector: std::net::SocketAddr,
) -> (TestApp, TestApp, TestApp) {
    let db = TestDb::new(backend).await;
    let keyring = Arc::new(Keyring::generate());
    let otlp = vec![
        (
            "telemetry.otlp_endpoint".to_owned(),
            format!("http://{collector}"),
        ),
        ("telemetry.otlp_metrics_interval_secs".into(), "1".into()),
    ];
    let only = |name| Services::one(name).unwrap();
    let identity = TestApp::start_services(
        &settings_with("global", &db, otlp.clone()),
        keyring.clone(),
        only("identity"),
    )
    .await
    .unwrap();
    let identity_url = format!("http://{}", identity.addr);
    let mut more = otlp.clone();
    more.push(("relationships.identity_url".into(), identity_url.clone()));
    let relationships = TestApp::start_services(
        &settings_with("global", &db, more),
        keyring.clone(),
        only("relationships"),
    )
    .await
    .unwrap();
    let mut more = otlp;
    more.push(("commerce.identity_url".into(), identity_url));
    more.push((
        "commerce.relationships_url".into(),
        format!("http://{}", relationships.addr),
    ));
    let mut commerce = TestApp::start_services(
        &settings_with("global", &db, more),
        keyring,
        only("commerce"),
    )
    .await
    .unwrap();
    commerce.keep(db);
    (identity, relationships, commerce)
}

async fn flush(apps: &[&TestApp]) {
    for app in apps {
        app.otlp.as_ref().expect("exporting").flush().await;
    }
}

backend_test!(one_link_redemption_is_one_trace_across_the_three_services);
async fn one_link_redemption_is_one_trace_across_the_three_services(backend: Backend) {
    let collector = Collector::default();
    let addr = collector.start().await;
    let (identity, relationships, commerce) = three_apps(backend, addr).await;
    let apps = [&identity, &relationships, &commerce];

    // Before: a partner, its agent and a trial link.
    let partner = identity.partner("Contoso", ADVISOR).await;
    let agent = identity.agent(&partner).await;
    let code = commerce
        .trial_code(&agent, &partner, "office-business", true)
        .await;
    flush(&apps).await;
    collector.spans.lock().unwrap().clear();

    // The redemption: commerce → relationships → identity, and commerce →
    // identity (the tenant), with delegated admin granted on the way.
    let (redemption, upn) = commerce.sign_up(&code, "Fabrikam", "signup").await;
    flush(&apps).await;
    let spans = collector.spans.lock().unwrap().clone();

    // One trace.
    let summary: Vec<String> = spans
        .iter()
        .map(|(n, s)| {
            format!(
                "{n} {} kind {} trace {:02x?} root {}",
                s.name,
                s.kind,
                &s.trace_id[..4],
                s.parent_span_id.is_empty()
            )
        })
        .collect();
    let traces: HashSet<&Vec<u8>> = spans.iter().map(|(_, s)| &s.trace_id).collect();
    assert_eq!(traces.len(), 1, "one redemption, one trace: {summary:#?}");
    let roots: Vec<&(String, Span)> = spans
        .iter()
        .filter(|(_, s)| s.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1, "one root span: {summary:#?}");
    let (root_service, root) = roots[0];
    assert_eq!(root_service, "sovra-commerce");
    assert_eq!(
        root.name,
        "sovra.commerce.v1.TrialInvitationService/RedeemTrialInvitation"
    );
    assert_eq!(root.kind, SpanKind::Server as i32);

    // Every other span hangs off one in the trace; every client span has the
    // peer's server span as its child.
    let ids: HashMap<&Vec<u8>, &(String, Span)> = spans.iter().map(|e| (&e.1.span_id, e)).collect();
    assert_eq!(ids.len(), spans.len(), "span ids are unique");
    for (service, s) in &spans {
        if !s.parent_span_id.is_empty() {
            assert!(
                ids.contains_key(&s.parent_span_id),
                "{service} {} has its parent in the trace",
                s.name
            );
        }
        if s.kind == SpanKind::Client as i32 {
            let child = spans
                .iter()
                .find(|(_, c)| c.parent_span_id == s.span_id)
                .unwrap_or_else(|| panic!("{service}'s call {} reached its peer", s.name));
            assert_eq!(child.1.kind, SpanKind::Server as i32);
            assert_eq!(child.1.name, s.name);
            assert_ne!(&child.0, service, "a peer call leaves the service");
        }
    }
    // All three services served part of it, and the calls went both ways
    // the architecture allows.
    let served: HashSet<&str> = spans
        .iter()
        .filter(|(_, s)| s.kind == SpanKind::Server as i32)
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(
        served,
        HashSet::from(["sovra-commerce", "sovra-relationships", "sovra-identity"])
    );
    let calls: HashSet<(&str, &str)> = spans
        .iter()
        .filter(|(_, s)| s.kind == SpanKind::Client as i32)
        .map(|(n, s)| {
            let callee = &ids
                .values()
                .find(|(_, c)| c.parent_span_id == s.span_id)
                .unwrap()
                .0;
            (n.as_str(), callee.as_str())
        })
        .collect();
    for edge in [
        ("sovra-commerce", "sovra-relationships"),
        ("sovra-commerce", "sovra-identity"),
        ("sovra-relationships", "sovra-identity"),
    ] {
        assert!(calls.contains(&edge), "{edge:?} in {calls:?}");
    }

    // The RPC conventions, the tenant, and nothing personal or secret.
    for (service, s) in &spans {
        let a = &s.attributes;
        assert_eq!(text(a, "rpc.system"), Some("grpc"));
        let (svc, method) = s.name.split_once('/').unwrap();
        assert_eq!(text(a, "rpc.service"), Some(svc));
        assert_eq!(text(a, "rpc.method"), Some(method));
        assert_eq!(
            attr(a, "rpc.grpc.status_code"),
            Some(&Value::IntValue(0)),
            "{service} {} succeeded",
            s.name
        );
        assert!(s.end_time_unix_nano >= s.start_time_unix_nano);
        let allowed = [
            "rpc.system",
            "rpc.service",
            "rpc.method",
            "rpc.grpc.status_code",
            "sovra.tenant.id",
        ];
        for kv in a {
            assert!(
                allowed.contains(&kv.key.as_str()),
                "unexpected attribute {}",
                kv.key
            );
        }
        if let Some(t) = text(a, "sovra.tenant.id") {
            assert!(
                t == partner.id || t == redemption.customer_tenant_id,
                "{service} {} names tenant {t}",
                s.name
            );
        }
    }
    assert_eq!(
        text(&root.attributes, "sovra.tenant.id"),
        Some(partner.id.as_str()),
        "the redemption acts for the link's partner"
    );
    let dump = format!("{spans:?}");
    for secret in [code.as_str(), PASSWORD, upn.as_str(), "Fabrikam"] {
        assert!(!dump.contains(secret), "a span carries {secret}");
    }

    // Metrics went over OTLP too: each app's own pushes (every second,
    // with its pools' gauges) and one pushed now with the business counters.
    commerce
        .otlp
        .as_ref()
        .unwrap()
        .push_metrics(&[])
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let names = collector.metric_names();
        let has =
            |service: &str, metric: &str| names.get(service).is_some_and(|m| m.contains(metric));
        let complete = ["sovra-identity", "sovra-relationships", "sovra-commerce"]
            .iter()
            .all(|s| {
                has(s, "sovra_db_pool_connections_in_use") && has(s, "rpc_server_requests_total")
            })
            && has("sovra-commerce", "sovra_links_redeemed_total")
            && has("sovra-commerce", "rpc_server_duration_seconds");
        if complete {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics over OTLP are missing some series: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    commerce.stop().await;
    relationships.stop().await;
    identity.stop().await;
}
