//! Mutual TLS between Sovra services (rustls, TLS 1.3 only).
//!
//! Each instance has its own CA. Every service holds one certificate, used
//! both as the server certificate of its endpoint and as its client
//! certificate towards peers; it names the service in a URI SAN
//! `spiffe://<instance>/<service>`, which is where a caller's service
//! identity comes from. The trust bundle may hold several CA certificates
//! (the old and the new during a rotation), and certificates, keys and the
//! bundle are re-read by [`Tls::reload`] without dropping connections.

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, RwLock},
    task::{Context, Poll},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    client::WebPkiServerVerifier,
    crypto::{ring, CryptoProvider},
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    server::{
        danger::{ClientCertVerified, ClientCertVerifier},
        WebPkiClientVerifier,
    },
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;

/// The services a certificate can name.
pub const SERVICES: [&str; 3] = ["identity", "relationships", "commerce"];

/// How long a client has to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The SPIFFE id of `service` in `instance`.
pub fn spiffe_id(instance: &str, service: &str) -> String {
    format!("spiffe://{instance}/{service}")
}

/// A certificate, key or bundle that can't be used, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: io::Error },
    #[error("cannot make a certificate: {0}")]
    Generate(String),
}

fn invalid(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        path: path.display().to_string(),
        message: message.into(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Every certificate in a PEM file (a chain or a trust bundle).
fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(path, "holds no certificate"));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| invalid(path, format!("not a PEM private key: {e}")))
}

/// The `spiffe://…` URI SANs of a certificate.
pub fn spiffe_ids(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::{extensions::GeneralName, prelude::FromDer};
    let Ok((_, parsed)) = x509_parser::certificate::X509Certificate::from_der(cert.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) if u.starts_with("spiffe://") => Some((*u).to_owned()),
            _ => None,
        })
        .collect()
}

/// (instance, service) of a SPIFFE id `spiffe://<instance>/<service>`.
pub fn parse_spiffe(id: &str) -> Option<(&str, &str)> {
    let rest = id.strip_prefix("spiffe://")?;
    let (instance, service) = rest.split_once('/')?;
    (!instance.is_empty() && !service.is_empty() && !service.contains('/'))
        .then_some((instance, service))
}

/// When `cert` names another instance: a sentence saying which. An empty
/// `instance` (a tool that does not know it) accepts any.
fn foreign(cert: &CertificateDer<'_>, instance: &str, whose: &str) -> Option<String> {
    if instance.is_empty() {
        return None;
    }
    spiffe_ids(cert).into_iter().find_map(|id| {
        let (inst, _) = parse_spiffe(&id)?;
        (inst != instance).then(|| {
            format!("{whose} certificate ({id}) belongs to instance `{inst}`; this is instance `{instance}`")
        })
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for c in certs(path)? {
        store
            .add(c)
            .map_err(|e| invalid(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(Arc::new(store))
}

/// Checks the peer's certificate chain against the bundle and, when it fails
/// or names another instance, says which instance it belongs to.
#[derive(Debug)]
struct InstanceServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    instance: String,
}

impl ServerCertVerifier for InstanceServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(msg) = foreign(end_entity, &self.instance, "the server's") {
            return Err(rustls::Error::General(msg));
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Client certificates are optional (people's tools present none and sign in
/// with tokens); one that is presented must chain to the bundle and name
/// this instance. A refusal is logged with the instance the certificate
/// belongs to, since a TLS alert carries no text.
#[derive(Debug)]
struct InstanceClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    instance: String,
}

impl ClientCertVerifier for InstanceClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let result = match foreign(end_entity, &self.instance, "the client's") {
            Some(msg) => Err(rustls::Error::General(msg)),
            None => self
                .inner
                .verify_client_cert(end_entity, intermediates, now),
        };
        if let Err(e) = &result {
            let ids = spiffe_ids(end_entity).join(", ");
            tracing::warn!(error = %e, certificate = %ids, "refused a client certificate");
        }
        result
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Where an instance's TLS material lives.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The trust bundle: one or more CA certificates.
    pub ca_file: PathBuf,
    /// Holds `<service>.pem` (certificate chain) and `<service>.key`.
    pub cert_dir: PathBuf,
}

impl TlsFiles {
    pub fn cert(&self, service: &str) -> PathBuf {
        self.cert_dir.join(format!("{service}.pem"))
    }

    pub fn key(&self, service: &str) -> PathBuf {
        self.cert_dir.join(format!("{service}.key"))
    }
}

struct State {
    server: Arc<ServerConfig>,
    clients: HashMap<String, Arc<ClientConfig>>,
    /// Of every file read, so an unchanged reload keeps the configs (and
    /// their session caches).
    fingerprint: [u8; 32],
}

/// This process's TLS: the server side of its endpoint and the client side
/// of each service it runs. Reloadable.
pub struct Tls {
    instance: String,
    files: TlsFiles,
    services: Vec<String>,
    state: RwLock<Arc<State>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("instance", &self.instance)
            .field("files", &self.files)
            .field("services", &self.services)
            .finish()
    }
}

impl Tls {
    /// Loads the bundle and the certificates of `services` (the first one's
    /// is the endpoint's server certificate). Fails naming the file at fault.
    pub fn load(instance: &str, files: TlsFiles, services: &[&str]) -> Result<Arc<Tls>, TlsError> {
        assert!(
            !services.is_empty(),
            "a process serves at least one service"
        );
        let services: Vec<String> = services.iter().map(|s| (*s).to_owned()).collect();
        let state = build_state(instance, &files, &services, fingerprint(&files, &services)?)?;
        Ok(Arc::new(Tls {
            instance: instance.to_owned(),
            files,
            services,
            state: RwLock::new(Arc::new(state)),
        }))
    }

    /// Re-reads the bundle, certificates and keys. New connections use them;
    /// open ones carry on. On error the previous material stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fingerprint = fingerprint(&self.files, &self.services)?;
        if fingerprint == self.current().fingerprint {
            return Ok(());
        }
        let state = build_state(&self.instance, &self.files, &self.services, fingerprint)?;
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(state);
        tracing::info!("TLS certificates and CA bundle reloaded");
        Ok(())
    }

    fn current(&self) -> Arc<State> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.current().server.clone()
    }

    /// The client side of `service` (its own certificate, the bundle).
    pub fn client_config(&self, service: &str) -> Arc<ClientConfig> {
        let state = self.current();
        state
            .clients
            .get(service)
            .or_else(|| state.clients.values().next())
            .expect("at least one client config")
            .clone()
    }
}

fn fingerprint(files: &TlsFiles, services: &[String]) -> Result<[u8; 32], TlsError> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(read(&files.ca_file)?);
    for s in services {
        h.update(read(&files.cert(s))?);
        h.update(read(&files.key(s))?);
    }
    Ok(h.finalize().into())
}

fn build_state(
    instance: &str,
    files: &TlsFiles,
    services: &[String],
    fingerprint: [u8; 32],
) -> Result<State, TlsError> {
    let roots = roots(&files.ca_file)?;
    let provider = provider();
    let bad_bundle = |e: &dyn std::fmt::Display| invalid(&files.ca_file, e.to_string());
    let client_verifier =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| bad_bundle(&e))?;
    let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| bad_bundle(&e))?;
    let mut clients = HashMap::new();
    let mut server = None;
    for service in services {
        let (cert_path, key_path) = (files.cert(service), files.key(service));
        let chain = certs(&cert_path)?;
        let ids = spiffe_ids(&chain[0]);
        let want = spiffe_id(instance, service);
        if !ids.contains(&want) {
            return Err(invalid(
                &cert_path,
                format!("the certificate must name {want} in a URI SAN (it names {ids:?})"),
            ));
        }
        let key = key(&key_path)?;
        if server.is_none() {
            let mut cfg = ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| TlsError::Generate(e.to_string()))?
                .with_client_cert_verifier(Arc::new(InstanceClientVerifier {
                    inner: client_verifier.clone(),
                    instance: instance.to_owned(),
                }))
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(|e| {
                    invalid(
                        &key_path,
                        format!("does not match {}: {e}", cert_path.display()),
                    )
                })?;
            cfg.alpn_protocols = vec![b"h2".to_vec()];
            server = Some(Arc::new(cfg));
        }
        let cfg = client_from(
            instance,
            server_verifier.clone(),
            Some(Identity {
                chain,
                key,
                cert_path: &cert_path,
                key_path: &key_path,
            }),
        )?;
        clients.insert(service.clone(), cfg);
    }
    Ok(State {
        server: server.expect("at least one service"),
        clients,
        fingerprint,
    })
}

/// Who is at the other end of a TLS connection, as the request extensions carry it.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    /// The SPIFFE id of a verified client certificate.
    pub spiffe: Option<String>,
}

impl PeerInfo {
    /// The Sovra service a verified client certificate names in `instance`.
    pub fn service(&self, instance: &str) -> Option<&str> {
        let (inst, service) = parse_spiffe(self.spiffe.as_deref()?)?;
        (inst == instance && SERVICES.contains(&service)).then_some(service)
    }
}

/// An accepted TLS connection.
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts TCP connections on `listener` and completes their handshakes
/// concurrently (a slow client holds up no one), yielding the finished ones.
/// Stops accepting once the returned stream is dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<Tls>,
) -> ReceiverStream<Result<TlsConn, io::Error>> {
    let (tx, rx) = mpsc::channel::<Result<TlsConn, io::Error>>(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => break,
                a = listener.accept() => a,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(tls.server_config());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let spiffe = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|c| spiffe_ids(c).into_iter().next());
                        let info = PeerInfo { remote, spiffe };
                        let _ = tx.send(Ok(TlsConn { stream, info })).await;
                    }
                    Ok(Err(e)) => tracing::info!(%remote, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::info!(%remote, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// A client configuration for tools and tests: trusts the bundle at
/// `ca_file` and, with `identity` (certificate chain, key files), presents it.
pub fn client_config(
    instance: &str,
    ca_file: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca_file)?, provider())
        .build()
        .map_err(|e| invalid(ca_file, e.to_string()))?;
    let identity = match identity {
        Some((cert_path, key_path)) => Some(Identity {
            chain: certs(cert_path)?,
            key: key(key_path)?,
            cert_path,
            key_path,
        }),
        None => None,
    };
    client_from(instance, verifier, identity)
}

/// A certificate chain and key to present, with the files they came from.
struct Identity<'a> {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_path: &'a Path,
    key_path: &'a Path,
}

/// The one shape of every Sovra client: TLS 1.3, h2, servers verified by
/// `verifier` (and refused, naming it, when of another instance),
/// presenting `identity` when given.
fn client_from(
    instance: &str,
    verifier: Arc<WebPkiServerVerifier>,
    identity: Option<Identity<'_>>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Generate(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(InstanceServerVerifier {
            inner: verifier,
            instance: instance.to_owned(),
        }));
    let mut cfg = match identity {
        Some(id) => builder
            .with_client_auth_cert(id.chain, id.key)
            .map_err(|e| {
                invalid(
                    id.key_path,
                    format!("does not match {}: {e}", id.cert_path.display()),
                )
            })?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

#[derive(Clone)]
enum Source {
    /// A service of this process: its current certificate.
    Service(Arc<Tls>, String),
    Fixed(Arc<ClientConfig>),
}

/// Opens TLS connections to a peer as `service`, with the material current
/// when each connection is made (so a reload reaches new connections).
#[derive(Clone)]
pub struct Connector {
    source: Source,
}

impl Connector {
    pub fn new(tls: Arc<Tls>, service: &str) -> Self {
        Self {
            source: Source::Service(tls, service.to_owned()),
        }
    }

    /// Always `config` (see [`client_config`]).
    pub fn fixed(config: Arc<ClientConfig>) -> Self {
        Self {
            source: Source::Fixed(config),
        }
    }

    fn config(&self) -> Arc<ClientConfig> {
        match &self.source {
            Source::Service(tls, service) => tls.client_config(service),
            Source::Fixed(c) => c.clone(),
        }
    }

    /// Connects to `host:port` and completes the handshake, verifying the
    /// server's certificate for `host`.
    pub async fn connect(
        &self,
        host: &str,
        port: u16,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = ServerName::try_from(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
        )
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("`{host}`: {e}")))?;
        let tcp =
            TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port)).await?;
        tcp.set_nodelay(true)?;
        let connector = TlsConnector::from(self.config());
        connector.connect(name, tcp).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("TLS handshake with {host}:{port} failed: {e}"),
            )
        })
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower_service::Service<tonic::codegen::http::Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = BoxFuture<io::Result<Self::Response>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: tonic::codegen::http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "the URL names no host")
                })?
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            Ok(TokioIo::new(this.connect(&host, port).await?))
        })
    }
}

/// Making an instance's CA and service certificates (`sovra up`, `sovra pki`).
pub mod pki {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };

    const CA_DAYS: i64 = 3650;
    const LEAF_DAYS: i64 = 397;

    fn gen(e: rcgen::Error) -> TlsError {
        TlsError::Generate(e.to_string())
    }

    fn validity(p: &mut CertificateParams, days: i64) {
        let now = time::OffsetDateTime::now_utc();
        // An hour back, so a peer whose clock is a little behind accepts it.
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::days(days);
    }

    /// A new CA for `instance`: (certificate PEM, key PEM).
    pub fn new_ca(instance: &str) -> Result<(String, String), TlsError> {
        let key = KeyPair::generate().map_err(gen)?;
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
        let serial = uuid::Uuid::new_v4().simple().to_string();
        p.distinguished_name.push(
            DnType::CommonName,
            format!("Sovra {instance} CA {}", &serial[..8]),
        );
        p.distinguished_name.push(
            DnType::OrganizationName,
            format!("Sovra instance {instance}"),
        );
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut p, CA_DAYS);
        let cert = p.self_signed(&key).map_err(gen)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A certificate for `service` of `instance`, valid for the DNS names
    /// and IP addresses in `names`, signed by the CA: (chain PEM, key PEM).
    pub fn issue(
        ca_cert_pem: &str,
        ca_key_pem: &str,
        instance: &str,
        service: &str,
        names: &[String],
    ) -> Result<(String, String), TlsError> {
        let ca_key = KeyPair::from_pem(ca_key_pem).map_err(gen)?;
        let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key).map_err(gen)?;
        let key = KeyPair::generate().map_err(gen)?;
        let mut p = CertificateParams::new(names.to_vec()).map_err(gen)?;
        p.distinguished_name
            .push(DnType::CommonName, format!("{service}.{instance}.sovra"));
        p.subject_alt_names.push(SanType::URI(
            spiffe_id(instance, service)
                .try_into()
                .map_err(|e: rcgen::Error| gen(e))?,
        ));
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.use_authority_key_identifier_extension = true;
        validity(&mut p, LEAF_DAYS);
        let cert = p.signed_by(&key, &issuer).map_err(gen)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    fn write(path: &Path, bytes: &str, secret: bool) -> Result<(), TlsError> {
        let r = if secret {
            crate::auth::write_secret(path, bytes.as_bytes())
        } else {
            std::fs::write(path, bytes)
        };
        r.map_err(|source| TlsError::Write {
            path: path.display().to_string(),
            source,
        })
    }

    /// The names `sovra up` certificates are valid for.
    pub fn loopback_names() -> Vec<String> {
        vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
    }

    /// Creates, in `dir`, the CA (`ca.crt`, `ca.key`), the trust bundle
    /// (`ca.pem`) and a certificate per service, each only where missing.
    /// Returns whether anything was created.
    pub fn ensure(dir: &Path, instance: &str, names: &[String]) -> Result<bool, TlsError> {
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
            path: dir.display().to_string(),
            source,
        })?;
        let (ca_crt, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
        let mut created = false;
        if !ca_crt.exists() {
            let (cert, key) = new_ca(instance)?;
            write(&ca_key, &key, true)?;
            write(&ca_crt, &cert, false)?;
            write(&dir.join("ca.pem"), &cert, false)?;
            created = true;
        }
        let ca_cert = String::from_utf8_lossy(&read(&ca_crt)?).into_owned();
        let ca_key_pem = String::from_utf8_lossy(&read(&ca_key)?).into_owned();
        for service in SERVICES {
            let files = TlsFiles {
                ca_file: dir.join("ca.pem"),
                cert_dir: dir.to_owned(),
            };
            if files.cert(service).exists() {
                continue;
            }
            let (cert, key) = issue(&ca_cert, &ca_key_pem, instance, service, names)?;
            write(&files.key(service), &key, true)?;
            write(&files.cert(service), &cert, false)?;
            created = true;
        }
        Ok(created)
    }

    /// Starts a CA rotation in `dir`: a new CA signs new service
    /// certificates, and the bundle trusts the new CA and the old ones, so
    /// peers still holding old certificates keep working. Finish it with
    /// [`finish_rotation`] once every service has reloaded.
    pub fn rotate(dir: &Path, instance: &str, names: &[String]) -> Result<(), TlsError> {
        let bundle = String::from_utf8_lossy(&read(&dir.join("ca.pem"))?).into_owned();
        let (cert, key) = new_ca(instance)?;
        for service in SERVICES {
            let (c, k) = issue(&cert, &key, instance, service, names)?;
            write(&dir.join(format!("{service}.key.next")), &k, true)?;
            write(&dir.join(format!("{service}.pem.next")), &c, false)?;
        }
        // Trust first, then switch: the bundle with both goes out first.
        write(&dir.join("ca.pem"), &format!("{cert}{bundle}"), false)?;
        write(&dir.join("ca.key"), &key, true)?;
        write(&dir.join("ca.crt"), &cert, false)?;
        for service in SERVICES {
            for ext in ["key", "pem"] {
                let from = dir.join(format!("{service}.{ext}.next"));
                let to = dir.join(format!("{service}.{ext}"));
                std::fs::rename(&from, &to).map_err(|source| TlsError::Write {
                    path: to.display().to_string(),
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// Ends a rotation: the bundle trusts only the current CA (`ca.crt`).
    pub fn finish_rotation(dir: &Path) -> Result<(), TlsError> {
        let cert = String::from_utf8_lossy(&read(&dir.join("ca.crt"))?).into_owned();
        write(&dir.join("ca.pem"), &cert, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_cert(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[test]
    fn a_certificate_names_its_service_and_instance() {
        let (ca, ca_key) = pki::new_ca("global").unwrap();
        let (cert, _) =
            pki::issue(&ca, &ca_key, "global", "commerce", &pki::loopback_names()).unwrap();
        let ids = spiffe_ids(&pem_cert(&cert));
        assert_eq!(ids, vec!["spiffe://global/commerce".to_owned()]);
        assert_eq!(parse_spiffe(&ids[0]), Some(("global", "commerce")));
        assert_eq!(parse_spiffe("spiffe://global/a/b"), None);
    }

    #[test]
    fn another_instances_client_certificate_is_refused_naming_it() {
        let (g_ca, g_key) = pki::new_ca("global").unwrap();
        let (c_ca, _) = pki::new_ca("china").unwrap();
        let (g_cert, _) =
            pki::issue(&g_ca, &g_key, "global", "commerce", &pki::loopback_names()).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(pem_cert(&c_ca)).unwrap();
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()
            .unwrap();
        let china = InstanceClientVerifier {
            inner,
            instance: "china".into(),
        };
        let err = china
            .verify_client_cert(&pem_cert(&g_cert), &[], UnixTime::now())
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("belongs to instance `global`; this is instance `china`"),
            "{err}"
        );
    }
}
