//! Sovra's commerce service: the instance's catalog, trial invitations and
//! purchase offers (redeemed across identity and relationships), product
//! keys, subscriptions, and the partner-of-record notification feed.
#![forbid(unsafe_code)]

pub mod advisors;
pub mod api;
pub mod domain;
pub mod sequencer;
pub mod service;
pub mod store;

use std::{sync::Arc, time::Duration};

use sovra_proto::commerce::v1::{
    catalog_service_server::{self, CatalogServiceServer},
    link_service_server::{self, LinkServiceServer},
    notification_service_server::{self, NotificationServiceServer},
    product_key_service_server::{self, ProductKeyServiceServer},
    purchase_offer_service_server::{self, PurchaseOfferServiceServer},
    subscription_service_server::{self, SubscriptionServiceServer},
    trial_invitation_service_server::{self, TrialInvitationServiceServer},
};
use sovra_runtime::telemetry::PeerChannel;
use sovra_runtime::{
    auth::{Authenticator, Authority},
    clock::{SharedClock, SystemClock},
    config::Settings,
    db::{Db, DbOpenError},
    links::LinkCodes,
    peers::{IdentityClient, ServiceCredentials},
    server::{spawn_every, ServiceSet},
};

pub use domain::product_key::ProductKey;
pub use service::{Commerce, CommerceConfig};

/// The service name stamped into commerce's database and its tokens.
pub const SERVICE: &str = "commerce";

/// Opens (and migrates) commerce's database.
pub async fn open_database(settings: &Settings) -> Result<Db, DbOpenError> {
    let db = Db::connect(
        SERVICE,
        &settings.commerce.database_url,
        settings.commerce.max_connections,
    )
    .await?;
    db.prepare(&settings.instance.name, SERVICE, store::MIGRATIONS)
        .await?;
    Ok(db)
}

/// Builds the service over an opened database, calling identity and
/// relationships over the given channels.
pub fn build(
    settings: &Settings,
    db: Db,
    authority: Authority,
    clock: SharedClock,
    identity: PeerChannel,
    relationships: PeerChannel,
) -> Commerce {
    let c = &settings.commerce;
    let links = LinkCodes::new(
        authority.keyring(),
        &settings.instance.name,
        &settings.instance.public_url,
    );
    Commerce::new(service::Inner {
        db,
        identity: Arc::new(
            IdentityClient::new(identity, SERVICE, authority.clone())
                .with_tenant_cache(Duration::from_millis(settings.identity.decision_cache_ms)),
        ),
        advisors: advisors::AdvisorClient::new(
            relationships,
            ServiceCredentials::new(SERVICE, authority),
        ),
        links,
        clock,
        cfg: CommerceConfig::from_settings(settings),
        key_attempts: sovra_runtime::ratelimit::RateLimiter::new(
            c.product_key_attempts_burst,
            c.product_key_attempts_per_minute,
        ),
        limits: sovra_runtime::ratelimit::MutationLimits::new(&settings.limits),
        feed: tokio::sync::watch::channel(0).0,
        sequencer: Default::default(),
        redeeming: service::InFlight::default(),
    })
}

impl Commerce {
    /// What the metrics endpoint reads from this service at each scrape.
    pub fn collectors(&self) -> Vec<sovra_runtime::metrics::Collector> {
        vec![sovra_runtime::metrics::pool_collector(
            self.db().clone(),
            "commerce",
        )]
    }

    /// What a configuration reload updates here: the live flags, audited in this service's database.
    pub fn reloadable(&self) -> sovra_runtime::features::Reloadable {
        sovra_runtime::features::Reloadable {
            service: "commerce",
            features: self.cfg().features.clone(),
            db: self.db().clone(),
        }
    }

    /// Adds the seven commerce services, behind the authenticator, to `set`.
    pub fn register(&self, set: &mut ServiceSet, auth: &Authenticator) {
        set.routes
            .add_service(CatalogServiceServer::with_interceptor(
                self.clone(),
                auth.clone(),
            ))
            .add_service(TrialInvitationServiceServer::with_interceptor(
                self.clone(),
                auth.clone(),
            ))
            .add_service(PurchaseOfferServiceServer::with_interceptor(
                self.clone(),
                auth.clone(),
            ))
            .add_service(LinkServiceServer::with_interceptor(
                self.clone(),
                auth.clone(),
            ))
            .add_service(ProductKeyServiceServer::with_interceptor(
                self.clone(),
                auth.clone(),
            ))
            .add_service(SubscriptionServiceServer::with_interceptor(
                self.clone(),
                auth.clone(),
            ))
            .add_service(NotificationServiceServer::with_interceptor(
                self.clone(),
                auth.clone(),
            ));
        set.names.extend([
            catalog_service_server::SERVICE_NAME,
            trial_invitation_service_server::SERVICE_NAME,
            purchase_offer_service_server::SERVICE_NAME,
            link_service_server::SERVICE_NAME,
            product_key_service_server::SERVICE_NAME,
            subscription_service_server::SERVICE_NAME,
            notification_service_server::SERVICE_NAME,
        ]);
    }

    /// Trial expiry (every `trial_expiry_interval_secs`), the notification
    /// sweep (every `notification_poll_interval_ms`: numbers notifications a
    /// crash or a failed pass left waiting) and hourly forgetting of old
    /// request ids, until aborted.
    pub fn spawn_background(&self, settings: &Settings) -> Vec<tokio::task::JoinHandle<()>> {
        let this = self.clone();
        let expiry = spawn_every(
            Duration::from_secs(settings.commerce.trial_expiry_interval_secs),
            "trial expiry",
            move || {
                let this = this.clone();
                async move { this.expire_trials().await.map(|_| ()) }
            },
        );
        let this = self.clone();
        let housekeeping = spawn_every(
            Duration::from_secs(3600),
            "commerce housekeeping",
            move || {
                let this = this.clone();
                async move { this.forget_request_ids().await.map(|_| ()) }
            },
        );
        let this = self.clone();
        let sweep = spawn_every(
            this.cfg().notification_poll,
            "notification numbering",
            move || {
                let this = this.clone();
                async move { this.sweep_feed().await }
            },
        );
        vec![expiry, sweep, housekeeping]
    }
}

// Rate limits run on real time, whatever clock the business rules use.
pub(crate) fn wall_now() -> i64 {
    use sovra_runtime::clock::Clock;
    SystemClock.now_ms()
}
