//! Metrics in the Prometheus text format: RPC rate, errors and duration per
//! service and method (OpenTelemetry RPC conventions as label names), the
//! business counters, and gauges read at scrape time (outbox depth and lag,
//! database pools). Served on the admin port (`GET /metrics`).
//!
//! The registry is process-wide: every service in a process counts into it,
//! and its labels say which service.

use std::{
    collections::BTreeMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, OnceLock},
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use opentelemetry_proto::tonic::{
    common::v1::KeyValue,
    metrics::v1::{
        metric, number_data_point, AggregationTemporality, HistogramDataPoint, Metric,
        NumberDataPoint,
    },
};
use tonic::codegen::http;

use crate::telemetry::{self, kv, FinishedSpan, Kind, SpanContext, Tracer};

/// Upper bounds of the duration histogram, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Registry {
    /// name → (help, labels → value)
    counters: BTreeMap<&'static str, (&'static str, BTreeMap<Labels, u64>)>,
    histograms: BTreeMap<&'static str, (&'static str, BTreeMap<Labels, Histogram>)>,
}

fn registry() -> &'static Mutex<Registry> {
    static R: OnceLock<Mutex<Registry>> = OnceLock::new();
    R.get_or_init(Default::default)
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

/// Adds `by` to counter `name` with `pairs` as labels.
pub fn count(name: &'static str, help: &'static str, pairs: &[(&'static str, &str)], by: u64) {
    let mut r = registry().lock().unwrap_or_else(|p| p.into_inner());
    let (_, series) = r.counters.entry(name).or_insert((help, BTreeMap::new()));
    *series.entry(labels(pairs)).or_default() += by;
}

/// Records one observation of `value` seconds in histogram `name`.
pub fn observe(name: &'static str, help: &'static str, pairs: &[(&'static str, &str)], value: f64) {
    let mut r = registry().lock().unwrap_or_else(|p| p.into_inner());
    let (_, series) = r.histograms.entry(name).or_insert((help, BTreeMap::new()));
    let h = series.entry(labels(pairs)).or_default();
    for (i, bound) in BUCKETS.iter().enumerate() {
        if value <= *bound {
            h.counts[i] += 1;
        }
    }
    h.count += 1;
    h.sum += value;
}

/// The business counters operators follow on the dashboards.
pub mod business {
    use super::count;

    /// A link was created: `trial`, `offer`, `reseller`, `delegated-admin`.
    pub fn link_created(kind: &str) {
        count(
            "sovra_links_created_total",
            "Links created, by kind",
            &[("kind", kind)],
            1,
        );
    }

    /// A link was redeemed or accepted (a first redemption, not a retry).
    pub fn link_redeemed(kind: &str) {
        count(
            "sovra_links_redeemed_total",
            "Links redeemed or accepted, by kind",
            &[("kind", kind)],
            1,
        );
    }

    /// A product-key redemption ended: `redeemed`, or the refusal's reason.
    pub fn product_key(outcome: &str) {
        count(
            "sovra_product_key_redemptions_total",
            "Product-key redemption attempts, by outcome (redeemed or the refusal's reason)",
            &[("outcome", outcome)],
            1,
        );
    }

    /// Delegated administration `accepted` or `removed`.
    pub fn delegated_admin(change: &str) {
        count(
            "sovra_delegated_admin_changes_total",
            "Delegated-administration relationships accepted or removed",
            &[("change", change)],
            1,
        );
    }

    /// Notifications handed to a partner, by `list` or `watch`.
    pub fn notifications_delivered(via: &str, n: usize) {
        count(
            "sovra_notifications_delivered_total",
            "Partner-of-record notifications delivered, by list or watch stream",
            &[("via", via)],
            n as u64,
        );
    }
}

/// A counter's current value (tests).
pub fn counter_value(name: &str, pairs: &[(&'static str, &str)]) -> u64 {
    let r = registry().lock().unwrap_or_else(|p| p.into_inner());
    r.counters
        .get(name)
        .and_then(|(_, s)| s.get(&labels(pairs)))
        .copied()
        .unwrap_or(0)
}

/// One gauge sample read at scrape time.
#[derive(Debug, Clone)]
pub struct Gauge {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: Labels,
    pub value: f64,
}

impl Gauge {
    pub fn new(
        name: &'static str,
        help: &'static str,
        pairs: &[(&'static str, &str)],
        value: f64,
    ) -> Self {
        Self {
            name,
            help,
            labels: labels(pairs),
            value,
        }
    }
}

/// Reads gauges when scraped (database pools, outbox depth).
pub type Collector =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Vec<Gauge>> + Send>> + Send + Sync>;

/// The connection-pool gauges of `service`'s database.
pub fn pool_collector(db: crate::db::Db, service: &'static str) -> Collector {
    Arc::new(move || {
        let db = db.clone();
        Box::pin(async move { db.pool_gauges(service) })
    })
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn render_labels(l: &Labels, extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = l
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// The exposition: every counter and histogram, then `gauges`.
pub fn render(gauges: &[Gauge]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    {
        let r = registry().lock().unwrap_or_else(|p| p.into_inner());
        for (name, (help, series)) in &r.counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (l, v) in series {
                let _ = writeln!(out, "{name}{} {v}", render_labels(l, None));
            }
        }
        for (name, (help, series)) in &r.histograms {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (l, h) in series {
                for (i, bound) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "{name}_bucket{} {}",
                        render_labels(l, Some(("le", bound.to_string()))),
                        h.counts[i]
                    );
                }
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {}",
                    render_labels(l, Some(("le", "+Inf".into()))),
                    h.count
                );
                let _ = writeln!(out, "{name}_sum{} {}", render_labels(l, None), h.sum);
                let _ = writeln!(out, "{name}_count{} {}", render_labels(l, None), h.count);
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for g in gauges {
        if seen.insert(g.name) {
            let _ = writeln!(out, "# HELP {} {}\n# TYPE {} gauge", g.name, g.help, g.name);
        }
        let _ = writeln!(
            out,
            "{}{} {}",
            g.name,
            render_labels(&g.labels, None),
            g.value
        );
    }
    out
}

/// The RPC an HTTP/2 path names: `/pkg.Service/Method` → (pkg.Service, Method).
pub(crate) fn rpc_of(path: &str) -> (String, String) {
    let p = path.trim_start_matches('/');
    match p.split_once('/') {
        Some((s, m)) => (s.to_owned(), m.to_owned()),
        None => ("unknown".into(), p.to_owned()),
    }
}

fn record_rpc(span: &tracing::Span, service: &str, method: &str, code: &str, elapsed: Duration) {
    // One access line per call, inside its span (so it carries the trace id):
    // successes at debug, the rest at info.
    let ms = elapsed.as_secs_f64() * 1000.0;
    span.in_scope(|| {
        if code == "0" {
            tracing::debug!(rpc.grpc.status_code = code, duration_ms = ms, "rpc done");
        } else {
            tracing::info!(rpc.grpc.status_code = code, duration_ms = ms, "rpc failed");
        }
    });
    let pairs = [
        ("rpc_system", "grpc"),
        ("rpc_service", service),
        ("rpc_method", method),
    ];
    count(
        "rpc_server_requests_total",
        "RPCs served, by service, method and gRPC status code",
        &[pairs[0], pairs[1], pairs[2], ("rpc_grpc_status_code", code)],
        1,
    );
    observe(
        "rpc_server_duration_seconds",
        "Time from request to the end of the response, by service and method",
        &pairs,
        elapsed.as_secs_f64(),
    );
}

/// A tower layer on every endpoint: counts each RPC with its status code
/// and duration, opens its `rpc` log span with the trace id, and makes its
/// server span (see [`crate::telemetry`]).
#[derive(Debug, Clone, Default)]
pub struct RpcMetricsLayer {
    tracer: Tracer,
}

impl RpcMetricsLayer {
    /// Server spans go to `tracer`.
    pub fn new(tracer: Tracer) -> Self {
        RpcMetricsLayer { tracer }
    }
}

impl<S> tower_layer::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            tracer: self.tracer.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    tracer: Tracer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower_service::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        use tracing::Instrument;
        let (service, method) = rpc_of(req.uri().path());
        // Every call belongs to a trace: the caller's (W3C traceparent), or
        // a new one. The request then names this server span as the parent,
        // so the interceptor, the audit trail and peer calls carry it on.
        let parent = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(SpanContext::parse);
        let cx = parent.map(|p| p.child()).unwrap_or_else(SpanContext::root);
        if let Ok(v) = http::HeaderValue::from_str(&cx.traceparent()) {
            req.headers_mut().insert("traceparent", v);
        }
        let span = tracing::info_span!(
            "rpc",
            trace_id = %cx.trace_hex(),
            rpc.service = %service,
            rpc.method = %method
        );
        let start = Instant::now();
        let started = SystemTime::now();
        let (current, fut) = telemetry::in_span(cx, self.inner.call(req));
        let fut = fut.instrument(span.clone());
        // Health probes and reflection are counted, not traced.
        let tracer = match telemetry::component_of(&service) {
            Some(c) if self.tracer.exporting() => Some((self.tracer.clone(), c.to_owned())),
            _ => None,
        };
        Box::pin(async move {
            let resp = fut.await?;
            Ok(on_status(resp, move |code| {
                record_rpc(&span, &service, &method, code, start.elapsed());
                if let Some((tracer, component)) = tracer {
                    tracer.finish(FinishedSpan {
                        component,
                        kind: Kind::Server,
                        cx,
                        parent: parent.map(|p| p.span_id),
                        rpc_service: service,
                        rpc_method: method,
                        code: code.parse().unwrap_or(2),
                        tenant: current.tenant(),
                        start: started,
                        end: SystemTime::now(),
                    });
                }
            }))
        })
    }
}

/// Calls `done` with the response's gRPC status code: at once when the
/// headers carry it (an error before any message), else when the body's
/// trailers come (CANCELLED if the body is dropped before its end).
pub(crate) fn on_status(
    resp: http::Response<tonic::body::Body>,
    done: impl FnOnce(&str) + Send + 'static,
) -> http::Response<tonic::body::Body> {
    if let Some(code) = resp.headers().get("grpc-status") {
        done(code.to_str().unwrap_or("2"));
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let body = Observed {
        inner: body,
        done: Some(Box::new(done)),
    };
    http::Response::from_parts(parts, tonic::body::Body::new(body))
}

type Done = Box<dyn FnOnce(&str) + Send>;

/// A response body that reports the trailers' `grpc-status` when it ends.
struct Observed {
    inner: tonic::body::Body,
    done: Option<Done>,
}

impl Observed {
    fn finish(&mut self, code: &str) {
        if let Some(done) = self.done.take() {
            done(code);
        }
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        // The client went away before the end: CANCELLED.
        self.finish("1");
    }
}

impl http_body::Body for Observed {
    type Data = tonic::codegen::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(t) = frame.trailers_ref() {
                    let code = t
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("0")
                        .to_owned();
                    self.finish(&code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish("2"),
            Poll::Ready(None) => self.finish("0"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn attributes(l: &Labels) -> Vec<KeyValue> {
    l.iter().map(|(k, v)| kv(k, v)).collect()
}

/// The registry and `gauges` as OTLP metrics: counters as cumulative
/// monotonic sums, histograms as cumulative explicit-bucket histograms
/// (in seconds), gauges as gauges. `start` is when counting began.
pub(crate) fn to_otlp(gauges: &[Gauge], start: u64, now: u64) -> Vec<Metric> {
    let cumulative = AggregationTemporality::Cumulative as i32;
    let number = |l: &Labels, v: number_data_point::Value| NumberDataPoint {
        attributes: attributes(l),
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(v),
        ..Default::default()
    };
    let mut out = Vec::new();
    let r = registry().lock().unwrap_or_else(|p| p.into_inner());
    for (name, (help, series)) in &r.counters {
        out.push(Metric {
            name: (*name).into(),
            description: (*help).into(),
            data: Some(metric::Data::Sum(
                opentelemetry_proto::tonic::metrics::v1::Sum {
                    data_points: series
                        .iter()
                        .map(|(l, v)| number(l, number_data_point::Value::AsInt(*v as i64)))
                        .collect(),
                    aggregation_temporality: cumulative,
                    is_monotonic: true,
                },
            )),
            ..Default::default()
        });
    }
    for (name, (help, series)) in &r.histograms {
        let data_points = series
            .iter()
            .map(|(l, h)| {
                // Ours are cumulative per bound ("le"); OTLP's are per bucket.
                let mut bucket_counts = Vec::with_capacity(BUCKETS.len() + 1);
                let mut below = 0;
                for c in h.counts {
                    bucket_counts.push(c - below);
                    below = c;
                }
                bucket_counts.push(h.count - below);
                HistogramDataPoint {
                    attributes: attributes(l),
                    start_time_unix_nano: start,
                    time_unix_nano: now,
                    count: h.count,
                    sum: Some(h.sum),
                    bucket_counts,
                    explicit_bounds: BUCKETS.to_vec(),
                    ..Default::default()
                }
            })
            .collect();
        out.push(Metric {
            name: (*name).into(),
            description: (*help).into(),
            unit: "s".into(),
            data: Some(metric::Data::Histogram(
                opentelemetry_proto::tonic::metrics::v1::Histogram {
                    data_points,
                    aggregation_temporality: cumulative,
                },
            )),
            ..Default::default()
        });
    }
    drop(r);
    let mut names: Vec<&'static str> = Vec::new();
    for g in gauges {
        if !names.contains(&g.name) {
            names.push(g.name);
        }
    }
    for name in names {
        let of_name: Vec<&Gauge> = gauges.iter().filter(|g| g.name == name).collect();
        out.push(Metric {
            name: name.into(),
            description: of_name[0].help.into(),
            data: Some(metric::Data::Gauge(
                opentelemetry_proto::tonic::metrics::v1::Gauge {
                    data_points: of_name
                        .iter()
                        .map(|g| number(&g.labels, number_data_point::Value::AsDouble(g.value)))
                        .collect(),
                },
            )),
            ..Default::default()
        });
    }
    out
}

/// Serves `GET /metrics` on `listener` until the task is aborted: the
/// registry plus what `collectors` read at each scrape.
pub fn serve_admin(
    listener: tokio::net::TcpListener,
    collectors: Vec<Collector>,
) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let collectors = Arc::new(collectors);
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let collectors = collectors.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut n = 0;
                // Read the request head (a scrape sends no body).
                while n < buf.len() {
                    match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf[n..]))
                        .await
                    {
                        Ok(Ok(0)) | Err(_) | Ok(Err(_)) => return,
                        Ok(Ok(k)) => n += k,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let head = String::from_utf8_lossy(&buf[..n]);
                let line = head.lines().next().unwrap_or("");
                let (status, body) = if line.starts_with("GET /metrics ") {
                    let mut gauges = Vec::new();
                    for c in collectors.iter() {
                        gauges.extend(c().await);
                    }
                    ("200 OK", render(&gauges))
                } else {
                    ("404 Not Found", "only /metrics is served here\n".to_owned())
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_render_in_the_text_format() {
        count("test_things_total", "Things.", &[("kind", "a\"b")], 2);
        observe("test_latency_seconds", "Latency.", &[("m", "x")], 0.003);
        let text = render(&[Gauge::new("test_depth", "Depth.", &[], 4.0)]);
        assert!(text.contains("# TYPE test_things_total counter"));
        assert!(
            text.contains("test_things_total{kind=\"a\\\"b\"} 2"),
            "{text}"
        );
        assert!(text.contains("test_latency_seconds_bucket{m=\"x\",le=\"0.0025\"} 0"));
        assert!(text.contains("test_latency_seconds_bucket{m=\"x\",le=\"0.005\"} 1"));
        assert!(text.contains("test_latency_seconds_count{m=\"x\"} 1"));
        assert!(text.contains("# TYPE test_depth gauge\ntest_depth 4"));
        assert_eq!(
            rpc_of("/sovra.identity.v1.TenantService/GetTenant").1,
            "GetTenant"
        );
    }
}
