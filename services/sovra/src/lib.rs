//! The one Sovra process: assembles every service built so far on one gRPC
//! endpoint. `main` and the end-to-end tests start it the same way.
#![forbid(unsafe_code)]

use std::{future::Future, net::SocketAddr, path::Path, sync::Arc};

use anyhow::Context;
use sovra_identity::Identity;
use sovra_runtime::{
    auth::{write_secret, Authenticator, Authority, Keyring},
    clock::SharedClock,
    config::Settings,
    server::{is_loopback, Endpoint, ServiceSet},
};

/// A built, bound Sovra, not yet serving.
pub struct App {
    endpoint: Endpoint,
    set: ServiceSet,
    authority: Authority,
    identity: Identity,
}

impl App {
    /// Opens the databases, builds every service and binds the endpoint.
    pub async fn build(
        settings: &Settings,
        keyring: Arc<Keyring>,
        clock: SharedClock,
    ) -> anyhow::Result<App> {
        let listen = settings.server.listen_addr();
        refuse_plaintext_off_loopback(&listen)?;
        let authority = Authority::new(
            keyring,
            settings.instance.token_issuer.clone(),
            settings.instance.name.clone(),
            clock.clone(),
        );
        let db = sovra_identity::open_database(settings).await?;
        let identity = sovra_identity::build(settings, db, authority.clone(), clock)?;
        let auth = Authenticator::new(authority.clone());
        let mut set = ServiceSet::default();
        identity.register(&mut set, &auth);
        let endpoint = Endpoint::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        Ok(App {
            endpoint,
            set,
            authority,
            identity,
        })
    }

    /// The address actually bound (port 0 resolved).
    pub fn addr(&self) -> SocketAddr {
        self.endpoint.addr()
    }

    /// Signs tokens for this instance (the operator token, service tokens).
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Serves until `shutdown` completes, with housekeeping in the background.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let housekeeping = self.identity.spawn_housekeeping();
        let result = self.endpoint.serve(self.set, shutdown).await;
        housekeeping.abort();
        result.context("the gRPC server failed")
    }
}

/// Plaintext gRPC is allowed only on loopback.
pub fn refuse_plaintext_off_loopback(listen: &SocketAddr) -> anyhow::Result<()> {
    if is_loopback(listen) {
        Ok(())
    } else {
        anyhow::bail!(
            "refusing to listen on {listen}: plaintext gRPC is allowed only on loopback (127.0.0.1 or ::1), \
             and this build serves no TLS of its own yet. Listen on loopback behind a TLS-terminating proxy, \
             for example --listen 127.0.0.1:50051"
        )
    }
}

/// Reads the operator token at `path` if it still verifies here, else mints
/// a new one and writes it (mode 600). Returns the token and whether it is new.
pub fn ensure_operator_token(
    authority: &Authority,
    path: &Path,
    ttl_days: u64,
) -> anyhow::Result<(String, bool)> {
    if let Ok(existing) = std::fs::read_to_string(path) {
        let existing = existing.trim().to_owned();
        if authority.verify(&existing).is_ok() {
            return Ok((existing, false));
        }
    }
    let token = authority.issue_operator(ttl_days * 24 * 60 * 60).value;
    write_secret(path, format!("{token}\n").as_bytes())
        .with_context(|| format!("cannot write the operator token to {}", path.display()))?;
    Ok((token, true))
}
