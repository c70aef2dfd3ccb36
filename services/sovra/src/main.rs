//! `sovra`: run everything locally (`up`), one service in production shape
//! (`serve`), migrations (`migrate`), and operator commands (`admin`).
#![forbid(unsafe_code)]

mod admin;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context;
use clap::{Parser, Subcommand};
use sovra::{ensure_operator_token, App, Services};
use sovra_runtime::{
    auth::Keyring,
    clock::SystemClock,
    config::{LoadOptions, Settings},
    server::shutdown_signal,
};

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
    /// Run every service in one process on one endpoint, with embedded SQLite.
    Up {
        /// Where the databases, signing key and operator token live.
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// The gRPC endpoint (plaintext: loopback only).
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
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
    /// Operator commands over gRPC.
    Admin(admin::AdminArgs),
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up {
            data_dir,
            listen,
            config,
        } => up(data_dir, listen, config).await,
        Command::Serve { service, config } => serve(&service, config).await,
        Command::Migrate { config } => migrate(config).await,
        Command::Admin(args) => admin::run(args).await,
    };
    if let Err(e) = result {
        eprintln!("sovra: {e:#}");
        std::process::exit(1);
    }
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

async fn up(data_dir: PathBuf, listen: SocketAddr, config: ConfigArgs) -> anyhow::Result<()> {
    init_logs(false);
    sovra::refuse_plaintext_off_loopback(&listen)?;
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize()?;
    let db_url = |name: &str| format!("sqlite://{}?mode=rwc", data_dir.join(name).display());
    let key_file = data_dir.join("signing-key.pem");
    let settings = Settings::load(&config.options(vec![
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
    ]))?;
    let (keyring, created) = Keyring::load_or_create(&key_file)?;
    if created {
        tracing::info!(path = %key_file.display(), "created the instance signing key");
    }
    let app = App::build(&settings, Arc::new(keyring), Arc::new(SystemClock)).await?;
    let token_file = data_dir.join("operator.token");
    let (token, _) = ensure_operator_token(
        app.authority(),
        &token_file,
        settings.auth.operator_token_ttl_days,
    )?;
    println!(
        "Sovra is up: instance `{}` ({})",
        settings.instance.name, settings.instance.display_name
    );
    println!("  gRPC endpoint   {}", app.addr());
    println!("  data directory  {}", data_dir.display());
    println!(
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
    let settings = Settings::load(&config.options(Vec::new()))?;
    let keyring = Keyring::load(&settings.auth.signing_key_file)?;
    let app = App::build_services(
        &settings,
        Arc::new(keyring),
        Arc::new(SystemClock),
        services,
    )
    .await?;
    tracing::info!(addr = %app.addr(), instance = %settings.instance.name, service, "serving");
    app.run_until_stopped(shutdown_signal()).await
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
