//! Sovra's identity service: tenants, company information, users, roles,
//! passwords, sign-in, and the access decisions every other service asks for.
#![forbid(unsafe_code)]

pub mod api;
pub mod domain;
pub mod hashing;
pub mod service;
pub mod store;

use sovra_proto::identity::v1::{
    access_service_server::{self, AccessServiceServer},
    auth_service_server::{self, AuthServiceServer},
    tenant_service_server::{self, TenantServiceServer},
    user_service_server::{self, UserServiceServer},
};
use sovra_runtime::{
    auth::{Authenticator, Authority},
    clock::SharedClock,
    config::Settings,
    db::{Db, DbOpenError},
    server::ServiceSet,
};

pub use service::{Identity, IdentityConfig};

/// The service name stamped into identity's database.
pub const SERVICE: &str = "identity";

/// Why identity could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Db(#[from] DbOpenError),
    #[error("invalid configuration: identity.password_*: {0}")]
    Hasher(argon2::Error),
}

/// Opens (and migrates) identity's database.
pub async fn open_database(settings: &Settings) -> Result<Db, DbOpenError> {
    let db = Db::connect(
        SERVICE,
        &settings.identity.database_url,
        settings.identity.max_connections,
    )
    .await?;
    db.prepare(&settings.instance.name, SERVICE, store::MIGRATIONS)
        .await?;
    Ok(db)
}

/// Builds the service over an opened database.
pub fn build(
    settings: &Settings,
    db: Db,
    authority: Authority,
    clock: SharedClock,
) -> Result<Identity, BuildError> {
    let id = &settings.identity;
    let hasher = hashing::Hasher::new(
        id.password_memory_kib,
        id.password_iterations,
        id.password_parallelism,
    )
    .map_err(BuildError::Hasher)?;
    Ok(Identity::new(
        db,
        authority,
        clock,
        hasher,
        IdentityConfig::from_settings(settings),
    ))
}

impl Identity {
    /// What the metrics endpoint reads from this service at each scrape.
    pub fn collectors(&self) -> Vec<sovra_runtime::metrics::Collector> {
        vec![sovra_runtime::metrics::pool_collector(
            self.db().clone(),
            "identity",
        )]
    }

    /// What a configuration reload updates here: the live flags, audited in this service's database.
    pub fn reloadable(&self) -> sovra_runtime::features::Reloadable {
        sovra_runtime::features::Reloadable {
            service: "identity",
            features: self.cfg().features.clone(),
            db: self.db().clone(),
        }
    }

    /// Adds the four identity services, behind the authenticator, to `set`.
    pub fn register(&self, set: &mut ServiceSet, auth: &Authenticator) {
        set.routes
            .add_service(TenantServiceServer::with_interceptor(
                self.clone(),
                auth.clone(),
            ))
            .add_service(UserServiceServer::with_interceptor(
                self.clone(),
                auth.clone(),
            ))
            .add_service(AuthServiceServer::with_interceptor(
                self.clone(),
                auth.clone(),
            ))
            .add_service(AccessServiceServer::with_interceptor(
                self.clone(),
                auth.clone(),
            ));
        set.names.extend([
            tenant_service_server::SERVICE_NAME,
            user_service_server::SERVICE_NAME,
            auth_service_server::SERVICE_NAME,
            access_service_server::SERVICE_NAME,
        ]);
    }
}
