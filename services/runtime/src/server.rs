//! Server bootstrap: one gRPC endpoint carrying the registered services plus
//! `grpc.health.v1` and reflection; binds (port 0 works) and reports the real
//! address; stops gracefully on a shutdown signal. The same routes answer
//! this process's own calls to its sibling services ([`LocalEndpoint`]).

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, OnceLock},
};

use tokio::net::TcpListener;
use tokio_stream::{wrappers::TcpListenerStream, StreamExt};
use tonic::{
    service::{Routes, RoutesBuilder},
    transport::Server,
};
use tonic_health::ServingStatus;
use tower_layer::Layer;

use crate::{
    metrics::{RpcMetrics, RpcMetricsLayer},
    telemetry::Tracer,
    tls::Tls,
};

/// The services one endpoint will carry.
#[derive(Default)]
pub struct ServiceSet {
    pub routes: RoutesBuilder,
    /// Fully-qualified names, reported SERVING by health once started.
    pub names: Vec<&'static str>,
    /// Where the endpoint's server spans go.
    pub tracer: Tracer,
    /// These routes, for calls from within this process.
    pub local: LocalEndpoint,
}

/// This process's own endpoint, reached without a connection: in `sovra up`
/// the services call each other through it. A call passes the same layers
/// as one that came over a socket (RPC metrics and the server span, the
/// authenticating interceptor, the handler) and is encoded as protobuf the
/// same way; only HTTP/2 framing, HPACK and the TCP round trip are skipped.
#[derive(Clone, Default)]
pub struct LocalEndpoint {
    routes: Arc<OnceLock<RpcMetrics<Routes>>>,
}

impl std::fmt::Debug for LocalEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEndpoint")
            .field("answering", &self.routes.get().is_some())
            .finish()
    }
}

impl LocalEndpoint {
    /// The layered routes, once [`ServiceSet::finish`] has built them.
    pub(crate) fn routes(&self) -> Option<RpcMetrics<Routes>> {
        self.routes.get().cloned()
    }
}

/// A [`ServiceSet`] with its routes built, ready to serve.
pub struct Finished {
    routes: Routes,
    tracer: Tracer,
}

impl ServiceSet {
    /// Adds health (every registered service SERVING) and reflection, and
    /// makes [`ServiceSet::local`] answer: call it before anything in this
    /// process calls a sibling service.
    pub async fn finish(self) -> Finished {
        let (health, health_service) = tonic_health::server::health_reporter();
        for name in &self.names {
            health
                .set_service_status(*name, ServingStatus::Serving)
                .await;
        }
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(sovra_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // So clients can decode ErrorInfo and BadRequest details.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .expect("the compiled descriptor sets are valid");
        // grpcurl and older tools still ask v1alpha.
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(sovra_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .expect("the compiled descriptor sets are valid");
        let routes: Routes = self
            .routes
            .routes()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        let _ = self
            .local
            .routes
            .set(RpcMetricsLayer::new(self.tracer.clone()).layer(routes.clone()));
        Finished {
            routes,
            tracer: self.tracer,
        }
    }
}

/// A bound, not yet serving, endpoint.
pub struct Endpoint {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Endpoint {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Endpoint> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        Ok(Endpoint { listener, addr })
    }

    /// The address actually bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` completes, then drains in-flight calls. With
    /// `tls`, every connection is TLS (see [`crate::tls`]); else plaintext.
    pub async fn serve(
        self,
        set: Finished,
        tls: Option<Arc<Tls>>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let server = Server::builder()
            .layer(RpcMetricsLayer::new(set.tracer))
            .add_routes(set.routes);
        match tls {
            Some(tls) => {
                server
                    .serve_with_incoming_shutdown(
                        crate::tls::incoming(self.listener, tls),
                        shutdown,
                    )
                    .await
            }
            None => {
                // No Nagle: a reply larger than one segment would otherwise
                // wait for the client's delayed ACK (about 40 ms).
                let incoming = TcpListenerStream::new(self.listener).map(|conn| {
                    if let Ok(tcp) = &conn {
                        let _ = tcp.set_nodelay(true);
                    }
                    conn
                });
                server
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await
            }
        }
    }
}

/// Completes on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received; draining");
}

/// Runs `job` now and then every `period` until the task is aborted. A
/// failure is logged as `{what} failed` and the job runs again next period.
pub fn spawn_every<F, Fut>(
    period: std::time::Duration,
    what: &'static str,
    mut job: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), crate::Error>> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        // A slow run delays the next one instead of bunching them up.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = job().await {
                tracing::warn!(error = %e, "{what} failed; will retry");
            }
        }
    })
}

/// True for loopback addresses, where plaintext is allowed.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}
