//! `sovra`: run everything locally (`up`), one service in production shape
//! (`serve`), migrations (`migrate`), and operator commands (`admin`).
#![forbid(unsafe_code)]

mod admin;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context;
use clap::{Parser, Subcommand};
use sovra::{ensure_operator_token, App, Reloader, Services};
use sovra_runtime::{
    auth::Keyring,
    clock::SystemClock,
    config::{LoadOptions, Settings},
    server::shutdown_signal,
    tls::pki,
};

/// mimalloc instead of glibc's allocator: a CheckAccess allocates and frees
/// a few dozen small blocks across two worker threads (HTTP/2 frames,
/// headers, the request and answer), and under load glibc's `malloc`,
/// `free` and `malloc_consolidate` took 14% of `sovra up`'s CPU (`perf`; see
/// docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sovra",
    version,
    about = "Sovra: the partner back end for sovereign cloud instances"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ConfigArgs {
    /// The configuration directory (built-in copies are used when it is absent).
    #[arg(long, default_value = "config", env = "SOVRA_CONFIG_DIR")]
    config_dir: PathBuf,
    /// The instance to run: global or china.
    #[arg(long, env = "SOVRA_INSTANCE")]
    instance: Option<String>,
    /// The region this deployment runs in (defaults to the instance's).
    #[arg(long, env = "SOVRA_REGION")]
    region: Option<String>,
    /// A local configuration file layered over the instance and region files.
    #[arg(long, env = "SOVRA_CONFIG_FILE")]
    config_file: Option<PathBuf>,
}

impl ConfigArgs {
    fn options(&self, overrides: Vec<(String, String)>) -> LoadOptions {
        LoadOptions {
            config_dir: Some(self.config_dir.clone()),
            instance: self.instance.clone(),
            region: self.region.clone(),
            local_file: self.config_file.clone(),
            overrides,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run every service in one process on one endpoint, with embedded SQLite
    /// (or the databases --database-url names).
    Up {
        /// Where the databases, signing key and operator token live.
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// The gRPC endpoint.
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
        /// Serve plaintext instead of mutual TLS (loopback only).
        #[arg(long)]
        plaintext: bool,
        /// Use these databases instead of SQLite files in the data directory:
        /// a URL in which `{service}` becomes identity, relationships and
        /// commerce, e.g. `postgres://127.0.0.1:5432/sovra_{service}` (the
        /// databases must exist).
        #[arg(long, value_name = "URL")]
        database_url: Option<String>,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Run one service from configuration (production shape).
    Serve {
        /// The service: identity, relationships or commerce.
        service: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Create or upgrade the configured databases, then exit.
    Migrate {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Print an operator token signed with the configured signing key
    /// (auth.signing_key_file), for `sovra admin` against a deployment.
    OperatorToken {
        /// How long the token lives, in hours.
        #[arg(long, default_value_t = 8)]
        ttl_hours: u64,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Load and validate the configuration, print what it selects, and exit
    /// (non-zero, naming the key and the file, when it is invalid).
    CheckConfig {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Ask this host's `service` endpoint for grpc.health.v1 over the
    /// configured TLS, as the service itself; exit 0 when SERVING (the
    /// Kubernetes probe).
    Probe {
        /// The service: identity, relationships or commerce.
        service: String,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Operator commands over gRPC.
    Admin(admin::AdminArgs),
    /// An instance's CA and service certificates (files, no server needed).
    #[command(subcommand)]
    Pki(PkiCommand),
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create the CA (ca.crt, ca.key), the trust bundle (ca.pem) and a
    /// certificate per service in DIR, where missing.
    Init(PkiArgs),
    /// Start a CA rotation: a new CA and new service certificates; the bundle
    /// trusts the old and the new CA until `finish-rotation`.
    Rotate(PkiArgs),
    /// End a rotation: the bundle trusts only the current CA.
    FinishRotation {
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct PkiArgs {
    /// Where the files are.
    #[arg(long)]
    dir: PathBuf,
    /// The instance the certificates belong to (their spiffe://<instance>/<service> name).
    #[arg(long)]
    instance: String,
    /// DNS names and IP addresses the service certificates are valid for
    /// (repeat; default: localhost, 127.0.0.1, ::1).
    #[arg(long = "name")]
    names: Vec<String>,
}

impl PkiArgs {
    fn names(&self) -> Vec<String> {
        if self.names.is_empty() {
            pki::loopback_names()
        } else {
            self.names.clone()
        }
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up {
            data_dir,
            listen,
            plaintext,
            database_url,
            config,
        } => up(data_dir, listen, plaintext, database_url, config).await,
        Command::Serve { service, config } => serve(&service, config).await,
        Command::Migrate { config } => migrate(config).await,
        Command::CheckConfig { config } => check_config(config),
        Command::OperatorToken { ttl_hours, config } => operator_token(ttl_hours, config),
        Command::Probe { service, config } => probe(&service, config).await,
        Command::Admin(args) => admin::run(args).await,
        Command::Pki(cmd) => pki_command(cmd),
    };
    if let Err(e) = result {
        eprintln!("sovra: {e:#}");
        std::process::exit(1);
    }
}

/// `println!` that survives a closed stdout (`sovra up | head`): the
/// server keeps running when no one reads its banner.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SOVRA_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,sqlx=warn,h2=warn,tower=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn pki_command(cmd: PkiCommand) -> anyhow::Result<()> {
    match cmd {
        PkiCommand::Init(a) => {
            let created = pki::ensure(&a.dir, &a.instance, &a.names())?;
            println!(
                "{} in {}",
                if created {
                    "created"
                } else {
                    "nothing missing"
                },
                a.dir.display()
            );
        }
        PkiCommand::Rotate(a) => {
            pki::rotate(&a.dir, &a.instance, &a.names())?;
            println!(
                "rotated in {}: ca.pem trusts the new and the old CA; reload every service \
                 (SIGHUP), then run `sovra pki finish-rotation`",
                a.dir.display()
            );
        }
        PkiCommand::FinishRotation { dir } => {
            pki::finish_rotation(&dir)?;
            println!(
                "{}: ca.pem trusts only the current CA; reload every service",
                dir.display()
            );
        }
    }
    Ok(())
}

/// Re-reads the configuration on SIGHUP and every `server.config_reload_secs`
/// and applies what can change while running (flags, TLS material).
fn spawn_reloads(opts: LoadOptions, every_secs: u64, reloader: Reloader) {
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(every_secs.max(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let hangup = async {
                #[cfg(unix)]
                if let Some(h) = hup.as_mut() {
                    h.recv().await;
                    return;
                }
                std::future::pending::<()>().await
            };
            let why = tokio::select! {
                _ = hangup => "SIGHUP",
                _ = tick.tick(), if every_secs > 0 => "timer",
            };
            match Settings::load(&opts) {
                Ok(s) => match reloader.apply(&s).await {
                    Ok(changes) if why == "SIGHUP" => {
                        tracing::info!(changes = changes.len(), "configuration reloaded")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "configuration reload failed")
                    }
                },
                Err(e) => {
                    tracing::error!(error = %e, "configuration reload failed; the running configuration stays")
                }
            }
        }
    });
}

async fn up(
    data_dir: PathBuf,
    listen: SocketAddr,
    plaintext: bool,
    database_url: Option<String>,
    config: ConfigArgs,
) -> anyhow::Result<()> {
    init_logs(false);
    if let Some(t) = &database_url {
        anyhow::ensure!(
            t.contains("{service}"),
            "--database-url must contain `{{service}}` (each service has a database of its own)"
        );
    }
    if plaintext {
        sovra::refuse_plaintext_off_loopback(&listen)?;
    }
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize()?;
    let db_url = |name: &str| match &database_url {
        Some(t) => t.replace("{service}", name.trim_end_matches(".db")),
        None => format!("sqlite://{}?mode=rwc", data_dir.join(name).display()),
    };
    let key_file = data_dir.join("signing-key.pem");
    let tls_dir = data_dir.join("tls");
    let overrides = vec![
        ("server.listen".into(), listen.to_string()),
        ("identity.database_url".into(), db_url("identity.db")),
        (
            "relationships.database_url".into(),
            db_url("relationships.db"),
        ),
        ("commerce.database_url".into(), db_url("commerce.db")),
        (
            "auth.signing_key_file".into(),
            key_file.display().to_string(),
        ),
        (
            "tls.mode".into(),
            if plaintext { "off" } else { "mutual" }.into(),
        ),
        (
            "tls.ca_file".into(),
            tls_dir.join("ca.pem").display().to_string(),
        ),
        ("tls.cert_dir".into(), tls_dir.display().to_string()),
    ];
    let opts = config.options(overrides);
    let settings = Settings::load(&opts)?;
    if !plaintext && pki::ensure(&tls_dir, &settings.instance.name, &pki::loopback_names())? {
        tracing::info!(dir = %tls_dir.display(), "created the instance CA and service certificates");
    }
    let (keyring, created) = Keyring::load_or_create(&key_file)?;
    let keyring = keyring.with_previous(Keyring::load_previous(
        &settings.auth.previous_signing_key_files,
    )?);
    if created {
        tracing::info!(path = %key_file.display(), "created the instance signing key");
    }
    let app = App::build(&settings, Arc::new(keyring), Arc::new(SystemClock)).await?;
    spawn_reloads(opts, settings.server.config_reload_secs, app.reloader());
    let token_file = data_dir.join("operator.token");
    let (token, _) = ensure_operator_token(
        app.authority(),
        &token_file,
        settings.auth.operator_token_ttl_days,
    )?;
    say!(
        "Sovra is up: instance `{}` ({})",
        settings.instance.name,
        settings.instance.display_name
    );
    say!("  gRPC endpoint   {}", app.addr());
    if let Some(admin) = app.admin_addr() {
        say!("  metrics         http://{admin}/metrics");
    }
    say!("  data directory  {}", data_dir.display());
    if plaintext {
        say!("  TLS             off (plaintext on loopback)");
    } else {
        say!(
            "  TLS             mutual; CA bundle {} (grpcurl -cacert it)",
            tls_dir.join("ca.pem").display()
        );
    }
    say!(
        "  operator token  {} (also in {})",
        token,
        token_file.display()
    );
    tracing::info!(addr = %app.addr(), instance = %settings.instance.name, "serving");
    app.run_until_stopped(shutdown_signal()).await
}

async fn serve(service: &str, config: ConfigArgs) -> anyhow::Result<()> {
    init_logs(true);
    let services = Services::one(service)?;
    let opts = config.options(Vec::new());
    let settings = Settings::load(&opts)?;
    let keyring = Keyring::load_with_previous(
        &settings.auth.signing_key_file,
        &settings.auth.previous_signing_key_files,
    )?;
    let app = App::build_services(
        &settings,
        Arc::new(keyring),
        Arc::new(SystemClock),
        services,
    )
    .await?;
    spawn_reloads(opts, settings.server.config_reload_secs, app.reloader());
    tracing::info!(addr = %app.addr(), instance = %settings.instance.name, service, "serving");
    app.run_until_stopped(shutdown_signal()).await
}

fn operator_token(ttl_hours: u64, config: ConfigArgs) -> anyhow::Result<()> {
    let s = Settings::load(&config.options(Vec::new()))?;
    let keyring = Keyring::load(&s.auth.signing_key_file)?;
    let authority = sovra_runtime::auth::Authority::new(
        Arc::new(keyring),
        s.instance.token_issuer.clone(),
        s.instance.name.clone(),
        Arc::new(SystemClock),
    );
    println!(
        "{}",
        authority.issue_operator(ttl_hours.max(1) * 3600).value
    );
    Ok(())
}

fn check_config(config: ConfigArgs) -> anyhow::Result<()> {
    let s = Settings::load(&config.options(Vec::new()))?;
    let on: Vec<&str> = s
        .features
        .list()
        .filter(|(_, on)| *on)
        .map(|(f, _)| f.name())
        .collect();
    println!(
        "instance `{}` ({}), region `{}` of {:?}, {} products in {}, TLS {:?}, features on: {}",
        s.instance.name,
        s.instance.display_name,
        s.instance.region,
        s.instance.data_regions,
        s.commerce.catalog.len(),
        s.instance.currency,
        s.tls.mode,
        on.join(", ")
    );
    Ok(())
}

async fn probe(service: &str, config: ConfigArgs) -> anyhow::Result<()> {
    use sovra_runtime::{config::TlsMode, tls};
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    Services::one(service)?;
    let s = Settings::load(&config.options(Vec::new()))?;
    let port = s.server.listen_addr().port();
    let channel = match s.tls.mode {
        TlsMode::Mutual => {
            let files = tls::TlsFiles {
                ca_file: s.tls.ca_file.clone(),
                cert_dir: s.tls.cert_dir.clone(),
            };
            let cfg = tls::client_config(
                &s.instance.name,
                &files.ca_file,
                Some((&files.cert(service), &files.key(service))),
            )?;
            sovra_runtime::peers::channel(
                &format!("https://localhost:{port}"),
                Some(tls::Connector::fixed(cfg)),
            )?
        }
        TlsMode::Off => sovra_runtime::peers::channel(&format!("http://127.0.0.1:{port}"), None)?,
    };
    let resp = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        HealthClient::new(channel).check(HealthCheckRequest::default()),
    )
    .await
    .context("no answer within 2 s")?
    .context("health check failed")?;
    match resp.into_inner().status() {
        ServingStatus::Serving => Ok(()),
        other => anyhow::bail!("{service} is {other:?}"),
    }
}

async fn migrate(config: ConfigArgs) -> anyhow::Result<()> {
    init_logs(false);
    let settings = Settings::load(&config.options(Vec::new()))?;
    let db = sovra_identity::open_database(&settings).await?;
    db.close().await;
    println!("identity: migrated (instance `{}`)", settings.instance.name);
    let db = sovra_relationships::open_database(&settings).await?;
    db.close().await;
    println!(
        "relationships: migrated (instance `{}`)",
        settings.instance.name
    );
    let db = sovra_commerce::open_database(&settings).await?;
    db.close().await;
    println!("commerce: migrated (instance `{}`)", settings.instance.name);
    Ok(())
}
