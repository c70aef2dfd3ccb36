//! Traces: an OpenTelemetry span for every RPC a service serves and for
//! every call it makes to a peer, with the W3C trace context (`traceparent`)
//! carried in gRPC metadata, so commerce → relationships → identity is one
//! trace. Spans follow the RPC semantic conventions (`rpc.system`,
//! `rpc.service`, `rpc.method`, `rpc.grpc.status_code`) and carry the tenant
//! the call acts for (`sovra.tenant.id`); nothing else from the request.
//!
//! With `telemetry.otlp_endpoint` set, [`Otlp`] exports the spans, and the
//! metrics registry every `telemetry.otlp_metrics_interval_secs`, to an
//! OpenTelemetry collector over OTLP/gRPC. Without it the trace context is
//! still propagated (the logs and the audit trail carry the trace id) and
//! nothing is exported.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use opentelemetry_proto::tonic::{
    collector::{
        metrics::v1::{metrics_service_client::MetricsServiceClient, ExportMetricsServiceRequest},
        trace::v1::{trace_service_client::TraceServiceClient, ExportTraceServiceRequest},
    },
    common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue},
    metrics::v1::{ResourceMetrics, ScopeMetrics},
    resource::v1::Resource,
    trace::v1::{span, status, ResourceSpans, ScopeSpans, Span, Status},
};
use tokio::sync::{mpsc, oneshot};
use tonic::{codegen::http, transport::Channel};

use crate::metrics::{self, Collector};

/// Spans waiting for export; beyond this, new spans are dropped (counted).
const QUEUE: usize = 8192;
/// Spans per export request.
const BATCH: usize = 512;
/// How long finished spans wait before they are sent.
const BATCH_DELAY: Duration = Duration::from_millis(500);
/// One export attempt's time limit.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// A span's place in its trace: the W3C trace context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The caller's sampling decision; an unsampled span is not exported.
    pub sampled: bool,
}

impl SpanContext {
    /// Parses `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`); None when
    /// malformed or all-zero, as the W3C rules say.
    pub fn parse(traceparent: &str) -> Option<SpanContext> {
        let mut parts = traceparent.trim().split('-');
        let version = parts.next()?;
        let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let mut cx = SpanContext {
            trace_id: [0; 16],
            span_id: [0; 8],
            sampled: u8::from_str_radix(flags, 16).ok()? & 1 == 1,
        };
        if flags.len() != 2
            || !hex_into(trace, &mut cx.trace_id)
            || !hex_into(span, &mut cx.span_id)
        {
            return None;
        }
        if cx.trace_id == [0; 16] || cx.span_id == [0; 8] {
            return None;
        }
        Some(cx)
    }

    /// A new trace's first span.
    pub fn root() -> SpanContext {
        SpanContext {
            trace_id: nonzero(rand::random::<u128>()).to_be_bytes(),
            span_id: nonzero(rand::random::<u64>() as u128).to_be_bytes()[8..]
                .try_into()
                .expect("8 bytes"),
            sampled: true,
        }
    }

    /// A new span in the same trace (its parent is `self`).
    pub fn child(&self) -> SpanContext {
        SpanContext {
            span_id: SpanContext::root().span_id,
            ..*self
        }
    }

    /// This context as a `traceparent` header value.
    pub fn traceparent(&self) -> String {
        let mut s = String::with_capacity(55);
        s.push_str("00-");
        crate::hex::push(&mut s, &self.trace_id);
        s.push('-');
        crate::hex::push(&mut s, &self.span_id);
        s.push_str(if self.sampled { "-01" } else { "-00" });
        s
    }

    /// The trace id in hex, as the logs and the audit trail show it.
    pub fn trace_hex(&self) -> String {
        crate::hex::encode(&self.trace_id)
    }
}

fn nonzero(v: u128) -> u128 {
    v.max(1)
}

fn hex_into(s: &str, out: &mut [u8]) -> bool {
    if s.len() != out.len() * 2 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return false;
    }
    // Upper case is not allowed in traceparent.
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        return false;
    }
    for (i, o) in out.iter_mut().enumerate() {
        match u8::from_str_radix(&s[2 * i..2 * i + 2], 16) {
            Ok(v) => *o = v,
            Err(_) => return false,
        }
    }
    true
}

/// The server span a request is being handled in, seen by the peer calls
/// and the tenant checks made while handling it.
#[derive(Debug)]
pub struct Current {
    cx: SpanContext,
    tenant: Mutex<Option<String>>,
}

tokio::task_local! {
    static CURRENT: Arc<Current>;
}

/// Runs `fut` as the handling of the server span `cx`.
pub(crate) fn in_span<F: Future>(
    cx: SpanContext,
    fut: F,
) -> (Arc<Current>, impl Future<Output = F::Output>) {
    let current = Arc::new(Current {
        cx,
        tenant: Mutex::new(None),
    });
    (current.clone(), CURRENT.scope(current, fut))
}

impl Current {
    pub(crate) fn tenant(&self) -> Option<String> {
        self.tenant
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Records the tenant the current call acts for on its server span (the
/// last one recorded wins: a caller's home tenant, then the tenant checked).
pub fn record_tenant(tenant_id: &str) {
    if tenant_id.is_empty() {
        return;
    }
    let _ = CURRENT.try_with(|c| {
        *c.tenant.lock().unwrap_or_else(|p| p.into_inner()) = Some(tenant_id.to_owned());
    });
}

/// Server or client side of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Server,
    Client,
}

/// A finished RPC span, waiting for export.
#[derive(Debug, Clone)]
pub struct FinishedSpan {
    /// The Sovra service the span belongs to (`identity`, `commerce`, …).
    pub component: String,
    pub kind: Kind,
    pub cx: SpanContext,
    pub parent: Option<[u8; 8]>,
    pub rpc_service: String,
    pub rpc_method: String,
    pub code: i32,
    pub tenant: Option<String>,
    pub start: SystemTime,
    pub end: SystemTime,
}

/// The Sovra service that owns a gRPC service name:
/// `sovra.commerce.v1.ProductKeyService` → `commerce`.
pub fn component_of(rpc_service: &str) -> Option<&str> {
    rpc_service
        .strip_prefix("sovra.")
        .and_then(|s| s.split('.').next())
}

/// Where finished spans go: to an [`Otlp`] exporter, or nowhere.
#[derive(Debug, Clone, Default)]
pub struct Tracer {
    sink: Option<mpsc::Sender<FinishedSpan>>,
}

impl Tracer {
    /// Spans are made (the context propagates) but not exported.
    pub fn off() -> Tracer {
        Tracer::default()
    }

    pub(crate) fn exporting(&self) -> bool {
        self.sink.is_some()
    }

    pub(crate) fn finish(&self, span: FinishedSpan) {
        let Some(sink) = &self.sink else { return };
        if !span.cx.sampled {
            return;
        }
        if sink.try_send(span).is_err() {
            dropped(1);
        }
    }
}

fn dropped(n: usize) {
    metrics::count(
        "sovra_otel_spans_dropped_total",
        "Spans not exported: the queue was full or the collector did not answer",
        &[],
        n as u64,
    );
}

/// The client side: wraps a peer channel so that every call is a client
/// span, child of the server span being handled (or of the trace the
/// request names, or a new trace), and tells the peer its context.
#[derive(Debug, Clone)]
pub struct Traced<S> {
    inner: S,
    tracer: Tracer,
    component: &'static str,
}

impl<S> Traced<S> {
    /// `component` is the calling service.
    pub fn new(inner: S, tracer: Tracer, component: &'static str) -> Self {
        Traced {
            inner,
            tracer,
            component,
        }
    }
}

/// A peer channel whose calls are client spans.
pub type PeerChannel = Traced<crate::peers::Transport>;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower_service::Service<http::Request<B>> for Traced<S>
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
        let current = CURRENT.try_with(Arc::clone).ok();
        let parent = match &current {
            Some(c) => Some(c.cx),
            None => req
                .headers()
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .and_then(SpanContext::parse),
        };
        let cx = parent.map(|p| p.child()).unwrap_or_else(SpanContext::root);
        if let Ok(v) = http::HeaderValue::from_str(&cx.traceparent()) {
            req.headers_mut().insert("traceparent", v);
        }
        // Not exporting: the context is passed on, no span is kept.
        if !self.tracer.exporting() {
            return Box::pin(self.inner.call(req));
        }
        let tenant = current.and_then(|c| c.tenant());
        let (rpc_service, rpc_method) = metrics::rpc_of(req.uri().path());
        let span = FinishedSpan {
            component: self.component.to_owned(),
            kind: Kind::Client,
            cx,
            parent: parent.map(|p| p.span_id),
            rpc_service,
            rpc_method,
            code: 0,
            tenant,
            start: SystemTime::now(),
            end: SystemTime::now(),
        };
        let tracer = self.tracer.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = match fut.await {
                Ok(resp) => resp,
                Err(e) => {
                    // No answer at all: the peer is unavailable.
                    tracer.finish(FinishedSpan {
                        code: 14,
                        end: SystemTime::now(),
                        ..span
                    });
                    return Err(e);
                }
            };
            Ok(metrics::on_status(resp, move |code| {
                tracer.finish(FinishedSpan {
                    code: code.parse().unwrap_or(2),
                    end: SystemTime::now(),
                    ..span
                })
            }))
        })
    }
}

/// `[telemetry]`: where to export, if anywhere.
#[derive(Debug, Clone)]
pub struct OtlpTarget {
    /// `http://host:port` of an OTLP/gRPC collector.
    pub endpoint: String,
    pub metrics_interval: Duration,
    /// The metrics' `service.name`: `sovra-<service>` for one service,
    /// `sovra` for a process serving several.
    pub service_name: String,
    /// `sovra.instance` and `cloud.region` on every resource.
    pub instance: String,
    pub region: String,
}

/// The OTLP exporter: spans in batches, metrics on a timer.
#[derive(Debug, Clone)]
pub struct Otlp {
    spans: mpsc::Sender<FinishedSpan>,
    flushes: mpsc::Sender<oneshot::Sender<()>>,
    exporter: Arc<Exporter>,
}

/// What the export tasks share (not the senders: the span task ends when
/// the last tracer is gone).
#[derive(Debug)]
struct Exporter {
    target: OtlpTarget,
    channel: Channel,
    started: SystemTime,
    instance_id: String,
}

impl Otlp {
    /// Starts exporting spans to `target` (connecting lazily: a collector
    /// that is down loses spans, never calls). Needs a Tokio runtime.
    pub fn start(target: OtlpTarget) -> Result<Otlp, tonic::transport::Error> {
        let channel = tonic::transport::Endpoint::from_shared(target.endpoint.clone())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(EXPORT_TIMEOUT)
            .connect_lazy();
        let (spans, rx) = mpsc::channel(QUEUE);
        let (flushes, flush_rx) = mpsc::channel(4);
        let exporter = Arc::new(Exporter {
            target,
            channel,
            started: SystemTime::now(),
            instance_id: uuid::Uuid::new_v4().to_string(),
        });
        tokio::spawn(exporter.clone().export_spans(rx, flush_rx));
        Ok(Otlp {
            spans,
            flushes,
            exporter,
        })
    }

    /// A tracer whose spans this exporter sends.
    pub fn tracer(&self) -> Tracer {
        Tracer {
            sink: Some(self.spans.clone()),
        }
    }

    /// Sends every span finished so far, then returns.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.flushes.send(tx).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Pushes the metrics registry and `collectors`' gauges every interval
    /// (until the task is aborted).
    pub fn spawn_metrics(&self, collectors: Vec<Collector>) -> tokio::task::JoinHandle<()> {
        let otlp = self.exporter.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(otlp.target.metrics_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tick.tick().await;
                match otlp.push_metrics(&collectors).await {
                    Ok(()) => failing = false,
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(endpoint = %otlp.target.endpoint, error = %e, "OTLP metrics export failed; will retry");
                    }
                    Err(_) => {}
                }
            }
        })
    }

    /// One metrics export now.
    pub async fn push_metrics(&self, collectors: &[Collector]) -> Result<(), tonic::Status> {
        self.exporter.push_metrics(collectors).await
    }
}

impl Exporter {
    async fn push_metrics(&self, collectors: &[Collector]) -> Result<(), tonic::Status> {
        let mut gauges = Vec::new();
        for c in collectors {
            gauges.extend(c().await);
        }
        let metrics = metrics::to_otlp(&gauges, nanos(self.started), nanos(SystemTime::now()));
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(self.resource(&self.target.service_name)),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope()),
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        MetricsServiceClient::new(self.channel.clone())
            .export(request)
            .await
            .map(|_| ())
    }

    fn resource(&self, service_name: &str) -> Resource {
        Resource {
            attributes: vec![
                kv("service.name", service_name),
                kv("service.namespace", "sovra"),
                kv("service.version", env!("CARGO_PKG_VERSION")),
                kv("service.instance.id", &self.instance_id),
                kv("sovra.instance", &self.target.instance),
                kv("cloud.region", &self.target.region),
            ],
            ..Default::default()
        }
    }

    async fn export_spans(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<FinishedSpan>,
        mut flushes: mpsc::Receiver<oneshot::Sender<()>>,
    ) {
        let mut client = TraceServiceClient::new(self.channel.clone());
        let mut batch: Vec<FinishedSpan> = Vec::new();
        let mut failing = false;
        loop {
            // The first span of a batch, or a flush.
            let mut flushed = None;
            tokio::select! {
                span = rx.recv() => match span {
                    Some(span) => batch.push(span),
                    None => return,
                },
                Some(done) = flushes.recv() => flushed = Some(done),
            }
            // More spans join until the batch is full, the delay is over or
            // a flush is asked for.
            if flushed.is_none() {
                let delay = tokio::time::sleep(BATCH_DELAY);
                tokio::pin!(delay);
                while batch.len() < BATCH {
                    tokio::select! {
                        span = rx.recv() => match span {
                            Some(span) => batch.push(span),
                            None => break,
                        },
                        Some(done) = flushes.recv() => {
                            flushed = Some(done);
                            break;
                        }
                        _ = &mut delay => break,
                    }
                }
            }
            if flushed.is_some() {
                while let Ok(span) = rx.try_recv() {
                    batch.push(span);
                }
            }
            for chunk in batch.chunks(BATCH) {
                if let Err(e) = client.export(self.trace_request(chunk)).await {
                    dropped(chunk.len());
                    if !failing {
                        tracing::warn!(endpoint = %self.target.endpoint, code = ?e.code(), "OTLP span export failed; spans are dropped until the collector answers");
                    }
                    failing = true;
                } else {
                    failing = false;
                }
            }
            batch.clear();
            if let Some(done) = flushed {
                let _ = done.send(());
            }
        }
    }

    fn trace_request(&self, spans: &[FinishedSpan]) -> ExportTraceServiceRequest {
        let mut by_component: Vec<(&str, Vec<Span>)> = Vec::new();
        for s in spans {
            let span = otlp_span(s);
            match by_component.iter_mut().find(|(c, _)| *c == s.component) {
                Some((_, v)) => v.push(span),
                None => by_component.push((&s.component, vec![span])),
            }
        }
        ExportTraceServiceRequest {
            resource_spans: by_component
                .into_iter()
                .map(|(component, spans)| ResourceSpans {
                    resource: Some(self.resource(&format!("sovra-{component}"))),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(scope()),
                        spans,
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .collect(),
        }
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "sovra".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

pub(crate) fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

pub(crate) fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// gRPC codes that make a server span an error (the RPC conventions: the
/// server did wrong); on the client side every code but OK is.
fn server_fault(code: i32) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

fn otlp_span(s: &FinishedSpan) -> Span {
    let mut attributes = vec![
        kv("rpc.system", "grpc"),
        kv("rpc.service", &s.rpc_service),
        kv("rpc.method", &s.rpc_method),
        KeyValue {
            key: "rpc.grpc.status_code".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(s.code.into())),
            }),
            ..Default::default()
        },
    ];
    if let Some(t) = &s.tenant {
        attributes.push(kv("sovra.tenant.id", t));
    }
    let error = match s.kind {
        Kind::Server => server_fault(s.code),
        Kind::Client => s.code != 0,
    };
    Span {
        trace_id: s.cx.trace_id.to_vec(),
        span_id: s.cx.span_id.to_vec(),
        parent_span_id: s.parent.map(|p| p.to_vec()).unwrap_or_default(),
        flags: u32::from(s.cx.sampled),
        name: format!("{}/{}", s.rpc_service, s.rpc_method),
        kind: match s.kind {
            Kind::Server => span::SpanKind::Server,
            Kind::Client => span::SpanKind::Client,
        } as i32,
        start_time_unix_nano: nanos(s.start),
        end_time_unix_nano: nanos(s.end),
        attributes,
        status: Some(Status {
            code: if error {
                status::StatusCode::Error
            } else {
                status::StatusCode::Unset
            } as i32,
            message: String::new(),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_bad_ones_are_refused() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = SpanContext::parse(tp).unwrap();
        assert_eq!(cx.traceparent(), tp);
        assert_eq!(cx.trace_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(cx.sampled);
        let child = cx.child();
        assert_eq!(child.trace_id, cx.trace_id);
        assert_ne!(child.span_id, cx.span_id);
        assert!(
            !SpanContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                .unwrap()
                .sampled
        );
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902é-01",
        ] {
            assert!(SpanContext::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn spans_follow_the_rpc_conventions() {
        let cx = SpanContext::root();
        let s = FinishedSpan {
            component: "commerce".into(),
            kind: Kind::Server,
            cx,
            parent: None,
            rpc_service: "sovra.commerce.v1.ProductKeyService".into(),
            rpc_method: "RedeemProductKey".into(),
            code: 9,
            tenant: Some("global_t".into()),
            start: SystemTime::now(),
            end: SystemTime::now(),
        };
        let span = otlp_span(&s);
        assert_eq!(
            span.name,
            "sovra.commerce.v1.ProductKeyService/RedeemProductKey"
        );
        let keys: Vec<&str> = span.attributes.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "rpc.system",
                "rpc.service",
                "rpc.method",
                "rpc.grpc.status_code",
                "sovra.tenant.id"
            ]
        );
        // FAILED_PRECONDITION is the caller's problem, not a server fault…
        assert_eq!(span.status.unwrap().code, status::StatusCode::Unset as i32);
        // …but a failed call on the client side.
        let client = otlp_span(&FinishedSpan {
            kind: Kind::Client,
            ..s
        });
        assert_eq!(
            client.status.unwrap().code,
            status::StatusCode::Error as i32
        );
        assert_eq!(
            component_of("sovra.identity.v1.AccessService"),
            Some("identity")
        );
        assert_eq!(component_of("grpc.health.v1.Health"), None);
    }
}
