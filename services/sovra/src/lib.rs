//! The one Sovra process: assembles every service built so far on one gRPC
//! endpoint. `main` and the end-to-end tests start it the same way.
#![forbid(unsafe_code)]

use std::{future::Future, net::SocketAddr, path::Path, sync::Arc};

use anyhow::Context;
use sovra_commerce::Commerce;
use sovra_identity::Identity;
use sovra_relationships::Relationships;
use sovra_runtime::{
    auth::{write_secret, Authenticator, Authority, Keyring},
    clock::SharedClock,
    config::{Settings, TlsMode},
    features::{FlagChange, Reloadable},
    server::{is_loopback, Endpoint, ServiceSet},
    telemetry::{Otlp, OtlpTarget, Tracer},
    tls::{Connector, Tls, TlsFiles},
};

/// Which services one process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Services {
    pub identity: bool,
    pub relationships: bool,
    pub commerce: bool,
}

impl Services {
    /// The names of the services chosen, in a fixed order.
    pub fn names(self) -> Vec<&'static str> {
        [
            ("identity", self.identity),
            ("relationships", self.relationships),
            ("commerce", self.commerce),
        ]
        .into_iter()
        .filter_map(|(n, on)| on.then_some(n))
        .collect()
    }

    /// Everything, as `sovra up` runs it.
    pub const ALL: Services = Services {
        identity: true,
        relationships: true,
        commerce: true,
    };

    /// One service by name, as `sovra serve <name>` runs it.
    pub fn one(name: &str) -> anyhow::Result<Services> {
        let none = Services {
            identity: false,
            relationships: false,
            commerce: false,
        };
        match name {
            "identity" => Ok(Services {
                identity: true,
                ..none
            }),
            "relationships" => Ok(Services {
                relationships: true,
                ..none
            }),
            "commerce" => Ok(Services {
                commerce: true,
                ..none
            }),
            _ => anyhow::bail!(
                "unknown service `{name}`: this build serves `identity`, `relationships` and `commerce`"
            ),
        }
    }
}

/// A built, bound Sovra, not yet serving.
pub struct App {
    endpoint: Endpoint,
    set: ServiceSet,
    authority: Authority,
    identity: Option<Identity>,
    relationships: Option<Relationships>,
    commerce: Option<Commerce>,
    tls: Option<Arc<Tls>>,
    /// The admin endpoint (`GET /metrics`), bound when configured.
    admin: Option<tokio::net::TcpListener>,
    /// The OTLP exporter, when `telemetry.otlp_endpoint` is set.
    otlp: Option<Otlp>,
    settings: Settings,
}

impl App {
    /// Opens the databases, builds every service and binds the endpoint.
    pub async fn build(
        settings: &Settings,
        keyring: Arc<Keyring>,
        clock: SharedClock,
    ) -> anyhow::Result<App> {
        Self::build_services(settings, keyring, clock, Services::ALL).await
    }

    /// Opens the databases of `services`, builds them and binds the endpoint.
    pub async fn build_services(
        settings: &Settings,
        keyring: Arc<Keyring>,
        clock: SharedClock,
        services: Services,
    ) -> anyhow::Result<App> {
        let listen = settings.server.listen_addr();
        let tls = match settings.tls.mode {
            TlsMode::Off => {
                refuse_plaintext_off_loopback(&listen)?;
                None
            }
            TlsMode::Mutual => Some(
                Tls::load(
                    &settings.instance.name,
                    TlsFiles {
                        ca_file: settings.tls.ca_file.clone(),
                        cert_dir: settings.tls.cert_dir.clone(),
                    },
                    &services.names(),
                )
                .context("invalid configuration: tls")?,
            ),
        };
        let authority = Authority::new(
            keyring,
            settings.instance.token_issuer.clone(),
            settings.instance.name.clone(),
            clock.clone(),
        );
        let auth = Authenticator::new(authority.clone(), tls.is_some());
        let otlp = match settings.telemetry.otlp_endpoint.as_str() {
            "" => None,
            endpoint => Some(
                Otlp::start(OtlpTarget {
                    endpoint: endpoint.to_owned(),
                    metrics_interval: std::time::Duration::from_secs(
                        settings.telemetry.otlp_metrics_interval_secs,
                    ),
                    service_name: match services.names().as_slice() {
                        [one] => format!("sovra-{one}"),
                        _ => "sovra".to_owned(),
                    },
                    instance: settings.instance.name.clone(),
                    region: settings.instance.region.clone(),
                })
                .context("invalid configuration: telemetry.otlp_endpoint")?,
            ),
        };
        let tracer = otlp.as_ref().map(Otlp::tracer).unwrap_or_else(Tracer::off);
        let mut set = ServiceSet {
            tracer: tracer.clone(),
            ..ServiceSet::default()
        };
        // Bound before the databases open: a taken port fails fast.
        let endpoint = Endpoint::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let admin = match settings.server.admin_listen.as_str() {
            "" => None,
            a => Some(
                tokio::net::TcpListener::bind(a)
                    .await
                    .with_context(|| format!("cannot listen on {a} (server.admin_listen)"))?,
            ),
        };
        let identity = if services.identity {
            let db = sovra_identity::open_database(settings).await?;
            let identity = sovra_identity::build(settings, db, authority.clone(), clock.clone())?;
            identity.register(&mut set, &auth);
            Some(identity)
        } else {
            None
        };
        // A peer this process serves is called in-process (its own
        // endpoint's routes, no connection); any other at its configured URL,
        // each service with its own certificate.
        let local = set.local.clone();
        let instance = settings.instance.name.clone();
        let channel = |key: &str, url: &str, here: bool, me: &'static str| {
            match (url, here) {
            ("", true) => Ok(sovra_runtime::peers::local_peer(
                local.clone(),
                &instance,
                tracer.clone(),
                me,
            )),
            ("", false) => anyhow::bail!(
                "invalid configuration: {key}: must be set when that service is not served by this process"
            ),
            (url, _) => {
                let connector = tls.as_ref().map(|t| Connector::new(t.clone(), me));
                sovra_runtime::peers::peer(url, connector, tracer.clone(), me)
                    .with_context(|| format!("invalid configuration: {key}: `{url}`"))
            }
        }
        };
        let relationships = if services.relationships {
            let rel = &settings.relationships;
            let identity = channel(
                "relationships.identity_url",
                &rel.identity_url,
                services.identity,
                "relationships",
            )?;
            let push = match rel.grant_push_url.as_str() {
                "" => identity.clone(),
                url => channel(
                    "relationships.grant_push_url",
                    url,
                    services.identity,
                    "relationships",
                )?,
            };
            let db = sovra_relationships::open_database(settings).await?;
            let relationships = sovra_relationships::build(
                settings,
                db,
                authority.clone(),
                clock.clone(),
                identity,
                push,
            );
            relationships.register(&mut set, &auth);
            Some(relationships)
        } else {
            None
        };
        let commerce = if services.commerce {
            let c = &settings.commerce;
            let identity = channel(
                "commerce.identity_url",
                &c.identity_url,
                services.identity,
                "commerce",
            )?;
            let relationships = channel(
                "commerce.relationships_url",
                &c.relationships_url,
                services.relationships,
                "commerce",
            )?;
            let db = sovra_commerce::open_database(settings).await?;
            let commerce = sovra_commerce::build(
                settings,
                db,
                authority.clone(),
                clock,
                identity,
                relationships,
            );
            commerce.register(&mut set, &auth);
            Some(commerce)
        } else {
            None
        };
        Ok(App {
            endpoint,
            set,
            authority,
            identity,
            relationships,
            commerce,
            tls,
            admin,
            otlp,
            settings: settings.clone(),
        })
    }

    /// The OTLP exporter, when one is configured (to flush it).
    pub fn otlp(&self) -> Option<Otlp> {
        self.otlp.clone()
    }

    /// Where `GET /metrics` answers, when an admin endpoint is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// What a configuration reload changes in this process (flags and TLS
    /// material); usable after the app has started serving.
    pub fn reloader(&self) -> Reloader {
        let mut services = Vec::new();
        if let Some(s) = &self.identity {
            services.push(s.reloadable());
        }
        if let Some(s) = &self.relationships {
            services.push(s.reloadable());
        }
        if let Some(s) = &self.commerce {
            services.push(s.reloadable());
        }
        Reloader {
            services,
            tls: self.tls.clone(),
            authority: self.authority.clone(),
        }
    }

    /// The address actually bound (port 0 resolved).
    pub fn addr(&self) -> SocketAddr {
        self.endpoint.addr()
    }

    /// Signs tokens for this instance (the operator token, service tokens).
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    pub fn relationships(&self) -> Option<&Relationships> {
        self.relationships.as_ref()
    }

    pub fn commerce(&self) -> Option<&Commerce> {
        self.commerce.as_ref()
    }

    /// Serves until `shutdown` completes, with housekeeping and the grant
    /// outbox in the background.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        // Routes first: background jobs (the grant outbox) call siblings.
        let set = self.set.finish().await;
        let mut background = Vec::new();
        let mut collectors = Vec::new();
        if let Some(s) = &self.identity {
            collectors.extend(s.collectors());
        }
        if let Some(s) = &self.relationships {
            collectors.extend(s.collectors());
        }
        if let Some(s) = &self.commerce {
            collectors.extend(s.collectors());
        }
        if let Some(otlp) = &self.otlp {
            background.push(otlp.spawn_metrics(collectors.clone()));
        }
        if let Some(admin) = self.admin {
            background.push(sovra_runtime::metrics::serve_admin(admin, collectors));
        }
        if let Some(identity) = &self.identity {
            background.push(identity.spawn_housekeeping());
        }
        if let Some(relationships) = &self.relationships {
            background.extend(relationships.spawn_background());
        }
        if let Some(commerce) = &self.commerce {
            background.extend(commerce.spawn_background(&self.settings));
        }
        let result = self.endpoint.serve(set, self.tls, shutdown).await;
        for task in background {
            task.abort();
        }
        if let Some(relationships) = &self.relationships {
            // Rows of delivered grant changes still waiting for the sweep;
            // left behind, they would only be delivered again after a restart.
            if let Err(e) = relationships.outbox().remove_acknowledged().await {
                tracing::warn!(error = %e, "removing delivered grant changes at shutdown failed");
            }
        }
        result.context("the gRPC server failed")
    }
}

/// Applies a reloaded configuration to a running app: feature flags (each
/// change logged and audited by every service here) and TLS material.
/// Everything else in the configuration takes effect at the next start.
#[derive(Clone)]
pub struct Reloader {
    services: Vec<Reloadable>,
    tls: Option<Arc<Tls>>,
    authority: Authority,
}

impl Reloader {
    /// Swaps in `settings`' flags and re-reads certificates; returns the
    /// flag changes. A TLS or audit failure keeps serving and is reported.
    pub async fn apply(&self, settings: &Settings) -> anyhow::Result<Vec<FlagChange>> {
        if let Some(tls) = &self.tls {
            tls.reload()
                .context("TLS material not reloaded; the previous certificates stay in use")?;
        }
        // Each service records its changes before it swaps them in: a caller
        // who sees a new flag finds its audit event. A failed record is
        // reported, and the flags change anyway (the file is what counts).
        let mut changes = Vec::new();
        let mut failed = None;
        for s in &self.services {
            let (flags, overrides) = (settings.features, &settings.feature_overrides);
            let changed = s.features.changes(flags, overrides);
            if changed.is_empty() {
                continue;
            }
            let recorded =
                sovra_runtime::audit::record_flag_changes(&s.db, self.authority.now_ms(), &changed)
                    .await;
            if let Err(e) = recorded {
                failed.get_or_insert(
                    anyhow::Error::new(e)
                        .context(format!("{}: recording feature-flag changes", s.service)),
                );
            }
            s.features.update(flags, overrides);
            changes = changed;
        }
        if let Some(e) = failed {
            return Err(e);
        }
        for c in &changes {
            tracing::info!(
                feature = c.feature.name(),
                tenant = c.tenant.as_deref().unwrap_or(""),
                enabled = c.enabled,
                "feature flag changed: {c}"
            );
        }
        Ok(changes)
    }
}

/// Plaintext gRPC is allowed only on loopback.
pub fn refuse_plaintext_off_loopback(listen: &SocketAddr) -> anyhow::Result<()> {
    if is_loopback(listen) {
        Ok(())
    } else {
        anyhow::bail!(
            "refusing to listen on {listen}: plaintext gRPC is allowed only on loopback (127.0.0.1 or ::1). \
             Set tls.mode = \"mutual\" (SOVRA__TLS__MODE=mutual) with tls.ca_file and tls.cert_dir, \
             or listen on loopback, for example --listen 127.0.0.1:50051"
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
