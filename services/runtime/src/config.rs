//! Layered, typed configuration: `config/default.toml` → `config/instances/<instance>.toml`
//! → `config/regions/<region>.toml` → an optional local file → `SOVRA__…` env vars.
//!
//! When the configuration directory is absent, the copies compiled into the
//! binary are used, so `sovra up` runs from any working directory.

use std::{net::SocketAddr, path::PathBuf};

use config::{Config, Environment, File, FileFormat};
use serde::Deserialize;

use crate::features::{Feature, FeatureFlags, TenantOverride};

/// Compiled-in copies of `config/`, used when no configuration directory exists.
const EMBEDDED: &[(&str, &str)] = &[
    ("default.toml", include_str!("../../../config/default.toml")),
    (
        "instances/global.toml",
        include_str!("../../../config/instances/global.toml"),
    ),
    (
        "instances/china.toml",
        include_str!("../../../config/instances/china.toml"),
    ),
    (
        "regions/eu-west.toml",
        include_str!("../../../config/regions/eu-west.toml"),
    ),
    (
        "regions/us-east.toml",
        include_str!("../../../config/regions/us-east.toml"),
    ),
    (
        "regions/cn-north.toml",
        include_str!("../../../config/regions/cn-north.toml"),
    ),
    (
        "regions/cn-east.toml",
        include_str!("../../../config/regions/cn-east.toml"),
    ),
];

/// Everything a Sovra process is configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub instance: InstanceSettings,
    pub server: ServerSettings,
    pub auth: AuthSettings,
    pub identity: IdentitySettings,
    pub relationships: RelationshipsSettings,
    pub commerce: CommerceSettings,
    pub tls: TlsSettings,
    pub limits: LimitSettings,
    pub telemetry: TelemetrySettings,
    pub features: FeatureFlags,
    /// `[[feature_overrides]]`: flags turned off for single tenants.
    #[serde(default)]
    pub feature_overrides: Vec<TenantOverride>,
}

/// `[tls]`: mutual TLS on the endpoint and towards peers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    pub mode: TlsMode,
    /// The trust bundle (PEM): this instance's CA certificate(s).
    pub ca_file: PathBuf,
    /// Holds `<service>.pem` and `<service>.key` for each service served here.
    pub cert_dir: PathBuf,
}

/// `[telemetry]`: OpenTelemetry export.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// `http://host:port` of an OTLP/gRPC collector; empty: no export.
    pub otlp_endpoint: String,
    /// How often metrics are pushed over OTLP, in seconds.
    pub otlp_metrics_interval_secs: u64,
}

/// Whether the endpoint and peer calls use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plaintext: allowed only on loopback.
    Off,
    /// TLS 1.3; client certificates verified when presented; services
    /// identify themselves by certificate.
    Mutual,
}

/// `[limits]`: mutating calls per partner, and per partner and customer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub partner_burst: u32,
    pub partner_per_minute: u32,
    pub customer_burst: u32,
    pub customer_per_minute: u32,
}

/// `[instance]`: who this deployment is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSettings {
    pub name: String,
    pub display_name: String,
    pub public_url: String,
    pub token_issuer: String,
    pub currency: String,
    pub data_regions: Vec<String>,
    pub region: String,
}

/// `[server]`: where to listen.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: String,
    /// The admin endpoint (`GET /metrics`); empty: none.
    pub admin_listen: String,
    /// How often the configuration files are re-read for flag and
    /// certificate changes, in seconds; 0: only on SIGHUP.
    pub config_reload_secs: u64,
}

impl ServerSettings {
    /// The parsed listen address (validated at load).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen.parse().expect("validated at load")
    }
}

/// `[auth]`: the instance's token signing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub signing_key_file: PathBuf,
    /// Keys signed with before a rotation: still trusted for verification.
    #[serde(default)]
    pub previous_signing_key_files: Vec<PathBuf>,
    pub access_token_ttl_secs: u64,
    pub operator_token_ttl_days: u64,
}

/// `[identity]`: the identity service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySettings {
    pub database_url: String,
    pub max_connections: u32,
    pub user_retention_days: u32,
    pub purge_interval_secs: u64,
    pub idempotency_retention_hours: u32,
    pub password_memory_kib: u32,
    pub password_iterations: u32,
    pub password_parallelism: u32,
    pub decision_cache_ms: u64,
}

/// `[relationships]`: the relationships service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelationshipsSettings {
    pub database_url: String,
    pub max_connections: u32,
    pub identity_url: String,
    pub grant_push_url: String,
    pub link_ttl_days: u32,
    pub idempotency_retention_hours: u32,
    pub outbox_poll_interval_ms: u64,
    pub outbox_max_backoff_ms: u64,
}

/// `[commerce]`: the commerce service and this instance's catalog.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommerceSettings {
    pub database_url: String,
    pub max_connections: u32,
    pub identity_url: String,
    pub relationships_url: String,
    pub link_ttl_days: u32,
    pub idempotency_retention_hours: u32,
    pub trial_expiry_interval_secs: u64,
    pub notification_poll_interval_ms: u64,
    pub product_key_attempts_burst: u32,
    pub product_key_attempts_per_minute: u32,
    /// `[[commerce.catalog]]` in the instance file.
    #[serde(default)]
    pub catalog: Vec<ProductSettings>,
}

/// One product of the catalog.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductSettings {
    pub id: String,
    pub name: String,
    /// Days a trial runs; 0: no trial.
    pub trial_days: u32,
    pub min_licenses: u32,
    pub max_licenses: u32,
    /// Monthly price of one license in the currency's minor unit.
    pub unit_price_minor: u64,
}

/// A configuration problem, naming the key and, when known, the file (or
/// environment variable, or command-line flag) that set it.
#[derive(Debug)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
    pub origin: Option<String>,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
            origin: None,
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid configuration: {}: {}", self.key, self.message)?;
        if let Some(o) = &self.origin {
            write!(f, " (set in {o})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// What selects and overrides the layers.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// The configuration directory; `config` when unset. Embedded copies are
    /// used when it does not exist.
    pub config_dir: Option<PathBuf>,
    /// The instance; else `SOVRA__INSTANCE__NAME`, else `global`.
    pub instance: Option<String>,
    /// The region; else `SOVRA__INSTANCE__REGION`, else the instance file's.
    pub region: Option<String>,
    /// An optional local file layered after the region file.
    pub local_file: Option<PathBuf>,
    /// Last-word overrides (`key`, `value`) applied after the environment,
    /// used by command-line flags such as `--data-dir`.
    pub overrides: Vec<(String, String)>,
}

impl Settings {
    /// Loads, layers, deserializes and validates the configuration.
    pub fn load(opts: &LoadOptions) -> Result<Settings, ConfigError> {
        let dir = opts
            .config_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("config"));
        let layers = Layers {
            dir: dir.is_dir().then_some(dir),
        };
        let instance = opts
            .instance
            .clone()
            .or_else(|| std::env::var("SOVRA__INSTANCE__NAME").ok())
            .unwrap_or_else(|| "global".to_owned());
        if !is_name(&instance) {
            return Err(ConfigError::new(
                "instance.name",
                format!(
                    "`{instance}` is not a valid instance name (lowercase letters, digits and '-')"
                ),
            ));
        }
        let instance_file = format!("instances/{instance}.toml");
        if !layers.exists(&instance_file) {
            return Err(ConfigError::new(
                "instance.name",
                format!("no configuration for instance `{instance}` ({instance_file} not found)"),
            ));
        }
        // The region file is chosen by the region the lower layers name, so
        // build once without it to learn the region.
        let base = layers.build(&[&instance_file], opts, None)?;
        let region = match &opts.region {
            Some(r) => r.clone(),
            None => base
                .get_string("instance.region")
                .map_err(|e| ConfigError::new("instance.region", e.to_string()))?,
        };
        let region_file = format!("regions/{region}.toml");
        let files: Vec<&str> = if is_name(&region) && layers.exists(&region_file) {
            vec![&instance_file, &region_file]
        } else {
            vec![&instance_file]
        };
        let with_origin = |mut e: ConfigError| {
            if e.origin.is_none() {
                e.origin = layers.origin_of(&e.key, &files, opts);
            }
            e
        };
        let cfg = layers
            .build(&files, opts, Some(&region))
            .map_err(with_origin)?;
        let settings: Settings = cfg.try_deserialize().map_err(|e| {
            let message = e.to_string();
            let key = key_of(&message).unwrap_or_else(|| "(configuration)".to_owned());
            with_origin(ConfigError::new(key, message))
        })?;
        if settings.instance.name != instance {
            return Err(ConfigError::new(
                "instance.name",
                format!(
                    "{instance_file} sets instance.name = `{}`; it must be `{instance}`",
                    settings.instance.name
                ),
            ));
        }
        settings.validate().map_err(with_origin)?;
        Ok(settings)
    }

    /// Checks every value a type alone can't, naming the key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let i = &self.instance;
        if !is_name(&i.name) {
            return Err(ConfigError::new(
                "instance.name",
                "must be lowercase letters, digits and '-'",
            ));
        }
        if i.display_name.trim().is_empty() {
            return Err(ConfigError::new(
                "instance.display_name",
                "must not be empty",
            ));
        }
        if !is_http_url(&i.public_url) {
            return Err(ConfigError::new(
                "instance.public_url",
                format!("`{}` is not an http(s) URL", i.public_url),
            ));
        }
        if i.token_issuer.trim().is_empty() {
            return Err(ConfigError::new(
                "instance.token_issuer",
                "must not be empty",
            ));
        }
        if i.currency.len() != 3 || !i.currency.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(ConfigError::new(
                "instance.currency",
                format!("`{}` is not an ISO 4217 code such as USD", i.currency),
            ));
        }
        if i.data_regions.is_empty() {
            return Err(ConfigError::new(
                "instance.data_regions",
                "must list at least one region",
            ));
        }
        for (n, r) in i.data_regions.iter().enumerate() {
            if !is_name(r) {
                return Err(ConfigError::new(
                    "instance.data_regions",
                    format!("`{r}` is not a valid region name"),
                ));
            }
            if i.data_regions[..n].contains(r) {
                return Err(ConfigError::new(
                    "instance.data_regions",
                    format!("`{r}` is listed twice"),
                ));
            }
        }
        if !i.data_regions.contains(&i.region) {
            return Err(ConfigError::new(
                "instance.region",
                format!(
                    "`{}` is not one of instance.data_regions {:?}",
                    i.region, i.data_regions
                ),
            ));
        }
        if self.server.listen.parse::<SocketAddr>().is_err() {
            return Err(ConfigError::new(
                "server.listen",
                format!(
                    "`{}` is not an address such as 127.0.0.1:50051",
                    self.server.listen
                ),
            ));
        }
        if !self.server.admin_listen.is_empty()
            && self.server.admin_listen.parse::<SocketAddr>().is_err()
        {
            return Err(ConfigError::new(
                "server.admin_listen",
                format!(
                    "`{}` is not an address such as 127.0.0.1:9464 (or empty for none)",
                    self.server.admin_listen
                ),
            ));
        }
        let t = &self.telemetry;
        let plaintext_uri =
            |u: &str| u.starts_with("http://") && u.parse::<tonic::codegen::http::Uri>().is_ok();
        if !t.otlp_endpoint.is_empty() && !plaintext_uri(&t.otlp_endpoint) {
            return Err(ConfigError::new(
                "telemetry.otlp_endpoint",
                format!(
                    "`{}` is not a plaintext OTLP/gRPC address such as http://127.0.0.1:4317 (or empty for no export)",
                    t.otlp_endpoint
                ),
            ));
        }
        if t.otlp_metrics_interval_secs == 0 {
            return Err(ConfigError::new(
                "telemetry.otlp_metrics_interval_secs",
                "must be at least 1",
            ));
        }
        if self.auth.access_token_ttl_secs == 0 {
            return Err(ConfigError::new(
                "auth.access_token_ttl_secs",
                "must be at least 1",
            ));
        }
        if self.auth.operator_token_ttl_days == 0 {
            return Err(ConfigError::new(
                "auth.operator_token_ttl_days",
                "must be at least 1",
            ));
        }
        let id = &self.identity;
        check_database_url("identity.database_url", &id.database_url)?;
        if id.max_connections == 0 {
            return Err(ConfigError::new(
                "identity.max_connections",
                "must be at least 1",
            ));
        }
        if id.user_retention_days == 0 {
            return Err(ConfigError::new(
                "identity.user_retention_days",
                "must be at least 1",
            ));
        }
        if id.purge_interval_secs == 0 {
            return Err(ConfigError::new(
                "identity.purge_interval_secs",
                "must be at least 1",
            ));
        }
        if id.password_iterations == 0 {
            return Err(ConfigError::new(
                "identity.password_iterations",
                "must be at least 1",
            ));
        }
        if id.password_parallelism == 0 {
            return Err(ConfigError::new(
                "identity.password_parallelism",
                "must be at least 1",
            ));
        }
        if id.password_memory_kib < 8 * id.password_parallelism {
            return Err(ConfigError::new(
                "identity.password_memory_kib",
                "must be at least 8 × identity.password_parallelism",
            ));
        }
        let rel = &self.relationships;
        check_database_url("relationships.database_url", &rel.database_url)?;
        for (key, url) in [
            ("relationships.identity_url", &rel.identity_url),
            ("relationships.grant_push_url", &rel.grant_push_url),
        ] {
            if !url.is_empty() && !is_http_url(url) {
                return Err(ConfigError::new(
                    key,
                    format!("`{url}` is not an http(s) URL such as http://127.0.0.1:50051"),
                ));
            }
        }
        for (key, value) in [
            ("relationships.max_connections", rel.max_connections as u64),
            ("relationships.link_ttl_days", rel.link_ttl_days as u64),
            (
                "relationships.outbox_poll_interval_ms",
                rel.outbox_poll_interval_ms,
            ),
            (
                "relationships.outbox_max_backoff_ms",
                rel.outbox_max_backoff_ms,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::new(key, "must be at least 1"));
            }
        }
        for (key, value) in [
            ("limits.partner_burst", self.limits.partner_burst),
            ("limits.partner_per_minute", self.limits.partner_per_minute),
            ("limits.customer_burst", self.limits.customer_burst),
            (
                "limits.customer_per_minute",
                self.limits.customer_per_minute,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::new(key, "must be at least 1"));
            }
        }
        for (n, o) in self.feature_overrides.iter().enumerate() {
            crate::ids::TenantId::parse("tenant_id", &o.tenant_id, &i.name).map_err(|e| {
                ConfigError::new(format!("feature_overrides[{n}].tenant_id"), e.message)
            })?;
            if let Some(bad) = o.off.iter().find(|f| Feature::from_name(f).is_none()) {
                return Err(ConfigError::new(
                    format!("feature_overrides[{n}].off"),
                    format!(
                        "`{bad}` is not a feature; known: {}",
                        Feature::ALL.map(Feature::name).join(", ")
                    ),
                ));
            }
        }
        self.validate_commerce()
    }

    fn validate_commerce(&self) -> Result<(), ConfigError> {
        let c = &self.commerce;
        check_database_url("commerce.database_url", &c.database_url)?;
        for (key, url) in [
            ("commerce.identity_url", &c.identity_url),
            ("commerce.relationships_url", &c.relationships_url),
        ] {
            if !url.is_empty() && !is_http_url(url) {
                return Err(ConfigError::new(
                    key,
                    format!("`{url}` is not an http(s) URL such as http://127.0.0.1:50051"),
                ));
            }
        }
        for (key, value) in [
            ("commerce.max_connections", c.max_connections as u64),
            ("commerce.link_ttl_days", c.link_ttl_days as u64),
            (
                "commerce.trial_expiry_interval_secs",
                c.trial_expiry_interval_secs,
            ),
            (
                "commerce.notification_poll_interval_ms",
                c.notification_poll_interval_ms,
            ),
            (
                "commerce.product_key_attempts_burst",
                c.product_key_attempts_burst as u64,
            ),
            (
                "commerce.product_key_attempts_per_minute",
                c.product_key_attempts_per_minute as u64,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::new(key, "must be at least 1"));
            }
        }
        for (n, p) in c.catalog.iter().enumerate() {
            let key = |field: &str| format!("commerce.catalog[{n}].{field}");
            if !is_name(&p.id) {
                return Err(ConfigError::new(
                    key("id"),
                    format!("`{}` must be lowercase letters, digits and '-'", p.id),
                ));
            }
            if c.catalog[..n].iter().any(|q| q.id == p.id) {
                return Err(ConfigError::new(
                    key("id"),
                    format!("`{}` is listed twice", p.id),
                ));
            }
            if p.name.trim().is_empty() {
                return Err(ConfigError::new(key("name"), "must not be empty"));
            }
            if p.min_licenses == 0 || p.min_licenses > p.max_licenses {
                return Err(ConfigError::new(
                    key("min_licenses"),
                    "must be at least 1 and at most max_licenses",
                ));
            }
            if p.max_licenses > 1_000_000 {
                return Err(ConfigError::new(
                    key("max_licenses"),
                    "must be at most 1000000",
                ));
            }
        }
        Ok(())
    }
}

/// Checks that a database URL names a backend Sovra supports.
pub fn check_database_url(key: &str, url: &str) -> Result<(), ConfigError> {
    if url.starts_with("sqlite:")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://")
    {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            "must start with sqlite:, postgres:// or postgresql://",
        ))
    }
}

struct Layers {
    dir: Option<PathBuf>,
}

impl Layers {
    fn exists(&self, rel: &str) -> bool {
        match &self.dir {
            Some(dir) => dir.join(rel).is_file(),
            None => EMBEDDED.iter().any(|(name, _)| *name == rel),
        }
    }

    fn source(&self, rel: &str) -> File<config::FileSourceString, FileFormat> {
        let text = match &self.dir {
            Some(dir) => std::fs::read_to_string(dir.join(rel)).unwrap_or_default(),
            None => EMBEDDED
                .iter()
                .find(|(name, _)| *name == rel)
                .map(|(_, t)| (*t).to_owned())
                .unwrap_or_default(),
        };
        File::from_str(&text, FileFormat::Toml)
    }

    fn origin(&self, rel: &str) -> String {
        match &self.dir {
            Some(dir) => dir.join(rel).display().to_string(),
            None => format!("(built-in) config/{rel}"),
        }
    }

    /// Which layer set `key`, last one first: a command-line flag, an
    /// environment variable, the local file, then the region, instance and
    /// default files.
    fn origin_of(&self, key: &str, files: &[&str], opts: &LoadOptions) -> Option<String> {
        // `commerce.catalog[1].id` is set by whoever set `commerce.catalog`.
        let base = key.split('[').next().unwrap_or(key);
        if opts.overrides.iter().any(|(k, _)| k == base) {
            return Some("a command-line flag".into());
        }
        let var = format!("SOVRA__{}", base.to_uppercase().replace('.', "__"));
        if std::env::var_os(&var).is_some() {
            return Some(format!("environment variable {var}"));
        }
        let sets = |c: Result<Config, config::ConfigError>| {
            c.is_ok_and(|c| c.get::<config::Value>(base).is_ok())
        };
        if let Some(local) = &opts.local_file {
            let c = Config::builder()
                .add_source(File::from(local.as_path()).format(FileFormat::Toml))
                .build();
            if sets(c) {
                return Some(local.display().to_string());
            }
        }
        files
            .iter()
            .rev()
            .chain(std::iter::once(&"default.toml"))
            .find(|rel| sets(Config::builder().add_source(self.source(rel)).build()))
            .map(|rel| self.origin(rel))
    }

    fn build(
        &self,
        files: &[&str],
        opts: &LoadOptions,
        region: Option<&str>,
    ) -> Result<Config, ConfigError> {
        let mut b = Config::builder();
        for rel in std::iter::once(&"default.toml").chain(files.iter()) {
            // Parse each file alone first so a syntax error names its file.
            Config::builder()
                .add_source(self.source(rel))
                .build()
                .map_err(|e| ConfigError::new(self.origin(rel), e.to_string()))?;
            b = b.add_source(self.source(rel));
        }
        if let Some(local) = &opts.local_file {
            b = b.add_source(File::from(local.as_path()).format(FileFormat::Toml));
        }
        b = b.add_source(
            Environment::with_prefix("SOVRA")
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("instance.data_regions")
                .with_list_parse_key("auth.previous_signing_key_files")
                .try_parsing(true),
        );
        for (k, v) in &opts.overrides {
            b = b
                .set_override(k.as_str(), v.as_str())
                .map_err(|e| ConfigError::new(k.clone(), e.to_string()))?;
        }
        if let Some(r) = region {
            b = b
                .set_override("instance.region", r)
                .map_err(|e| ConfigError::new("instance.region", e.to_string()))?;
        }
        b.build().map_err(|e| {
            let message = e.to_string();
            ConfigError::new(
                key_of(&message).unwrap_or_else(|| "(configuration)".into()),
                message,
            )
        })
    }
}

/// Pulls the key out of a `config` crate message such as "… for key `a.b`".
fn key_of(message: &str) -> Option<String> {
    let start = message.find("key `")? + 5;
    let end = message[start..].find('`')? + start;
    Some(message[start..end].to_owned())
}

/// Lowercase letters, digits and '-', starting with a letter, at most 32 characters.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn is_http_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    matches!(rest, Some(r) if !r.is_empty() && !r.contains(char::is_whitespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(instance: &str) -> LoadOptions {
        LoadOptions {
            config_dir: Some(PathBuf::from("../../config")),
            instance: Some(instance.into()),
            ..Default::default()
        }
    }

    #[test]
    fn global_and_china_load_with_their_own_values() {
        let g = Settings::load(&opts("global")).unwrap();
        let c = Settings::load(&opts("china")).unwrap();
        assert_eq!(g.instance.currency, "USD");
        assert_eq!(c.instance.currency, "CNY");
        assert!(g.features.product_keys);
        assert!(!c.features.product_keys);
        assert_ne!(g.instance.token_issuer, c.instance.token_issuer);
    }

    #[test]
    fn embedded_copies_match_when_the_directory_is_missing() {
        let mut o = opts("china");
        o.config_dir = Some(PathBuf::from("/nonexistent/sovra-config"));
        let c = Settings::load(&o).unwrap();
        assert_eq!(c.instance.data_regions, vec!["cn-north", "cn-east"]);
    }

    #[test]
    fn an_invalid_value_names_its_key() {
        let mut o = opts("global");
        o.overrides
            .push(("identity.user_retention_days".into(), "soon".into()));
        let e = Settings::load(&o).unwrap_err();
        assert_eq!(e.key, "identity.user_retention_days", "{e}");

        let mut o = opts("global");
        o.overrides.push(("instance.region".into(), "mars".into()));
        o.region = Some("mars".into());
        let e = Settings::load(&o).unwrap_err();
        assert_eq!(e.key, "instance.region", "{e}");

        let mut o = opts("global");
        o.overrides.push(("server.listen".into(), "nowhere".into()));
        let e = Settings::load(&o).unwrap_err();
        assert_eq!(e.key, "server.listen");
        assert_eq!(e.origin.as_deref(), Some("a command-line flag"));
    }

    #[test]
    fn an_invalid_value_names_the_file_that_set_it() {
        let dir = std::env::temp_dir().join(format!("sovra-cfg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("instances")).unwrap();
        std::fs::create_dir_all(dir.join("regions")).unwrap();
        for f in [
            "default.toml",
            "instances/global.toml",
            "regions/eu-west.toml",
        ] {
            std::fs::copy(PathBuf::from("../../config").join(f), dir.join(f)).unwrap();
        }
        let instance = dir.join("instances/global.toml");
        let text = std::fs::read_to_string(&instance)
            .unwrap()
            .replace("currency = \"USD\"", "currency = \"dollars\"");
        std::fs::write(&instance, text).unwrap();
        let e = Settings::load(&LoadOptions {
            config_dir: Some(dir.clone()),
            instance: Some("global".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.key, "instance.currency");
        assert_eq!(
            e.origin.as_deref(),
            Some(instance.display().to_string().as_str())
        );
        assert!(e.to_string().contains("instances/global.toml"), "{e}");

        let local = dir.join("local.toml");
        std::fs::write(&local, "[[feature_overrides]]\ntenant_id = \"china_0123456789abcdef0123456789abcdef\"\noff = [\"trials\"]\n").unwrap();
        std::fs::write(
            &instance,
            std::fs::read_to_string("../../config/instances/global.toml").unwrap(),
        )
        .unwrap();
        let e = Settings::load(&LoadOptions {
            config_dir: Some(dir.clone()),
            instance: Some("global".into()),
            local_file: Some(local.clone()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.key, "feature_overrides[0].tenant_id");
        assert!(e.message.contains("instance `china`"), "{e}");
        assert_eq!(
            e.origin.as_deref(),
            Some(local.display().to_string().as_str())
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_region_file_overrides_its_instance() {
        let mut o = opts("global");
        o.region = Some("us-east".into());
        let us = Settings::load(&o).unwrap();
        let eu = Settings::load(&opts("global")).unwrap();
        assert_eq!(eu.instance.region, "eu-west");
        assert_ne!(us.instance.public_url, eu.instance.public_url);
        assert!(
            us.instance.public_url.contains("us"),
            "{}",
            us.instance.public_url
        );
    }

    #[test]
    fn an_unknown_instance_is_refused() {
        let e = Settings::load(&opts("mars")).unwrap_err();
        assert_eq!(e.key, "instance.name");
        assert!(e.message.contains("mars"));
    }
}
