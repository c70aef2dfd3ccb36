//! Sovra's relationships service: a partner's customers, reseller links,
//! delegated administration (pushed to identity through an outbox), and
//! service requests.
#![forbid(unsafe_code)]

pub mod api;
pub mod domain;
pub mod outbox;
pub mod service;
pub mod store;

use std::{sync::Arc, time::Duration};

use sovra_proto::relationships::v1::{
    advisor_service_server::{self, AdvisorServiceServer},
    customer_service_server::{self, CustomerServiceServer},
    delegated_admin_service_server::{self, DelegatedAdminServiceServer},
    reseller_service_server::{self, ResellerServiceServer},
    service_request_service_server::{self, ServiceRequestServiceServer},
};
use sovra_runtime::telemetry::PeerChannel;
use sovra_runtime::{
    auth::{Authenticator, Authority},
    clock::SharedClock,
    config::Settings,
    db::{Db, DbOpenError},
    links::LinkCodes,
    peers::IdentityClient,
    server::{spawn_every, ServiceSet},
};

pub use sovra_runtime::peers::channel;

pub use service::{Relationships, RelationshipsConfig};

/// The service name stamped into relationships' database and its tokens.
pub const SERVICE: &str = "relationships";

/// Opens (and migrates) relationships' database.
pub async fn open_database(settings: &Settings) -> Result<Db, DbOpenError> {
    let db = Db::connect(
        SERVICE,
        &settings.relationships.database_url,
        settings.relationships.max_connections,
    )
    .await?;
    db.prepare(&settings.instance.name, SERVICE, store::MIGRATIONS)
        .await?;
    Ok(db)
}

/// Builds the service over an opened database. `identity` serves access
/// checks and tenants; `grant_push` carries the outbox's grant changes
/// (usually the same endpoint).
pub fn build(
    settings: &Settings,
    db: Db,
    authority: Authority,
    clock: SharedClock,
    identity: PeerChannel,
    grant_push: PeerChannel,
) -> Relationships {
    let rel = &settings.relationships;
    let links = LinkCodes::new(
        authority.keyring(),
        &settings.instance.name,
        &settings.instance.public_url,
    );
    let outbox = outbox::Outbox::new(
        db.clone(),
        Arc::new(IdentityClient::new(grant_push, SERVICE, authority.clone())),
        // Retries wait on real time, whatever clock the business rules use.
        Arc::new(sovra_runtime::clock::SystemClock),
        Duration::from_millis(rel.outbox_poll_interval_ms),
        rel.outbox_max_backoff_ms as i64,
    );
    Relationships::new(
        db,
        Arc::new(
            IdentityClient::new(identity, SERVICE, authority)
                .with_tenant_cache(Duration::from_millis(settings.identity.decision_cache_ms)),
        ),
        outbox,
        links,
        clock,
        RelationshipsConfig::from_settings(settings),
    )
}

impl Relationships {
    /// What the metrics endpoint reads from this service at each scrape:
    /// its pools, and the grant outbox's depth and the age of its oldest change.
    pub fn collectors(&self) -> Vec<sovra_runtime::metrics::Collector> {
        use sovra_runtime::metrics::Gauge;
        let this = self.clone();
        let outbox: sovra_runtime::metrics::Collector = std::sync::Arc::new(move || {
            let this = this.clone();
            Box::pin(async move {
                // Acknowledged changes are not waiting: their rows go first.
                if let Err(e) = this.outbox().remove_acknowledged().await {
                    tracing::warn!(error = %e, "removing delivered grant changes failed");
                }
                match store::outbox::depth(this.db().read()).await {
                    Ok((n, oldest)) => {
                        let age = oldest.map_or(0.0, |t| (this.now() - t).max(0) as f64 / 1000.0);
                        vec![
                            Gauge::new(
                                "sovra_grant_outbox_depth",
                                "Delegated-grant changes waiting for delivery to identity",
                                &[],
                                n as f64,
                            ),
                            Gauge::new(
                                "sovra_grant_outbox_oldest_age_seconds",
                                "Age of the oldest undelivered delegated-grant change (0 when none)",
                                &[],
                                age,
                            ),
                        ]
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the grant outbox depth failed");
                        Vec::new()
                    }
                }
            })
        });
        vec![
            sovra_runtime::metrics::pool_collector(self.db().clone(), "relationships"),
            outbox,
        ]
    }

    /// What a configuration reload updates here: the live flags, audited in this service's database.
    pub fn reloadable(&self) -> sovra_runtime::features::Reloadable {
        sovra_runtime::features::Reloadable {
            service: "relationships",
            features: self.cfg().features.clone(),
            db: self.db().clone(),
        }
    }

    /// Adds the five relationships services, behind the authenticator, to `set`.
    pub fn register(&self, set: &mut ServiceSet, auth: &Authenticator) {
        set.routes
            .add_service(CustomerServiceServer::with_interceptor(
                self.clone(),
                auth.clone(),
            ))
            .add_service(ResellerServiceServer::with_interceptor(
                self.clone(),
                auth.clone(),
            ))
            .add_service(DelegatedAdminServiceServer::with_interceptor(
                self.clone(),
                auth.clone(),
            ))
            .add_service(ServiceRequestServiceServer::with_interceptor(
                self.clone(),
                auth.clone(),
            ))
            .add_service(AdvisorServiceServer::with_interceptor(
                self.clone(),
                auth.clone(),
            ));
        set.names.extend([
            customer_service_server::SERVICE_NAME,
            reseller_service_server::SERVICE_NAME,
            delegated_admin_service_server::SERVICE_NAME,
            service_request_service_server::SERVICE_NAME,
            advisor_service_server::SERVICE_NAME,
        ]);
    }

    /// The outbox sweep and hourly housekeeping, until aborted.
    pub fn spawn_background(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let this = self.clone();
        let housekeeping = spawn_every(
            Duration::from_secs(3600),
            "relationships housekeeping",
            move || {
                let this = this.clone();
                async move { this.housekeep().await.map(|_| ()) }
            },
        );
        vec![self.outbox().spawn(), housekeeping]
    }
}
