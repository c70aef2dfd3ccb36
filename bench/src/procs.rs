//! The processes the suite loads: the baselines and `sovra up`, each in a
//! process of its own (so its CPU and memory are its own), and the
//! databases they run on.

use std::{
    io::BufRead,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context;
use sovra_runtime::tls;
use sqlx::Connection;
use tonic::transport::Channel;

use crate::baseline::Mode;

/// A child process, killed when dropped.
pub struct Proc {
    child: Child,
    pub addr: SocketAddr,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The database a run uses.
#[derive(Debug, Clone)]
pub enum Backend {
    /// SQLite files under this directory.
    Sqlite(PathBuf),
    /// A PostgreSQL server: the URL of a database to connect to first
    /// (`…/test`); the suite makes databases of its own beside it.
    Postgres(String),
}

impl Backend {
    pub fn label(&self) -> &'static str {
        match self {
            Backend::Sqlite(_) => "SQLite",
            Backend::Postgres(_) => "PostgreSQL",
        }
    }

    /// The database URL for `name` (a baseline's or a service's).
    pub fn url(&self, name: &str) -> String {
        match self {
            Backend::Sqlite(dir) => {
                format!(
                    "sqlite://{}?mode=rwc",
                    dir.join(format!("{name}.db")).display()
                )
            }
            Backend::Postgres(base) => {
                let prefix = base.rsplit_once('/').map(|(p, _)| p).unwrap_or(base);
                format!("{prefix}/sovra_bench_{name}")
            }
        }
    }

    /// Makes (again, empty) the databases named `names`; SQLite makes its
    /// files on first use, so only stale files are removed.
    pub async fn fresh(&self, names: &[String]) -> anyhow::Result<()> {
        match self {
            Backend::Sqlite(dir) => {
                for n in names {
                    for ext in ["db", "db-wal", "db-shm"] {
                        let _ = std::fs::remove_file(dir.join(format!("{n}.{ext}")));
                    }
                }
            }
            Backend::Postgres(base) => {
                let mut c = sqlx::postgres::PgConnection::connect(base)
                    .await
                    .with_context(|| format!("cannot reach PostgreSQL at {base}"))?;
                for n in names {
                    sqlx::query(&format!(
                        "DROP DATABASE IF EXISTS sovra_bench_{n} WITH (FORCE)"
                    ))
                    .execute(&mut c)
                    .await?;
                    sqlx::query(&format!("CREATE DATABASE sovra_bench_{n}"))
                        .execute(&mut c)
                        .await?;
                }
                let _ = c.close().await;
            }
        }
        Ok(())
    }

    /// Drops what `fresh` made (PostgreSQL; SQLite's files go with the
    /// suite's temporary directory).
    pub async fn drop_all(&self, names: &[String]) {
        if let Backend::Postgres(base) = self {
            if let Ok(mut c) = sqlx::postgres::PgConnection::connect(base).await {
                for n in names {
                    let _ = sqlx::query(&format!(
                        "DROP DATABASE IF EXISTS sovra_bench_{n} WITH (FORCE)"
                    ))
                    .execute(&mut c)
                    .await;
                }
                let _ = c.close().await;
            }
        }
    }
}

/// The names of `sovra up`'s three databases for run `tag`.
pub fn service_databases(tag: &str) -> Vec<String> {
    ["identity", "relationships", "commerce"]
        .iter()
        .map(|s| format!("{tag}_{s}"))
        .collect()
}

pub fn baseline(mode: Mode, database: &str) -> anyhow::Result<Proc> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["baseline", "--mode"])
        .arg(format!("{mode:?}").to_lowercase())
        .args(["--database", database])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let addr = line
        .trim()
        .parse()
        .with_context(|| format!("baseline {mode:?} did not start: `{line}`"))?;
    Ok(Proc { child, addr })
}

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Plaintext channels, one connection each.
pub async fn plain(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            Channel::from_shared(format!("http://{addr}"))?
                .tcp_nodelay(true)
                .connect()
                .await?,
        );
    }
    Ok(out)
}

/// Mutual-TLS channels to `sovra up` (no client certificate: users call).
pub async fn mtls(addr: SocketAddr, ca: &Path, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let cfg = tls::client_config("global", ca, None)?;
        let ch = sovra_runtime::peers::channel(
            &format!("https://{addr}"),
            Some(tls::Connector::fixed(cfg)),
        )?;
        out.push(ch);
    }
    Ok(out)
}

/// How to start `sovra up`.
pub struct Up<'a> {
    pub bin: &'a Path,
    pub dir: &'a Path,
    pub plaintext: bool,
    /// `--database-url` (a template with `{service}`); None: SQLite in `dir`.
    pub database_url: Option<String>,
}

/// The operator token `sovra up` wrote into its data directory `dir`.
pub fn operator_token(dir: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(dir.join("operator.token"))?
        .trim()
        .to_owned())
}

/// Starts `sovra up`; returns when health says SERVING, with the time from
/// spawn to then, and a channel.
pub async fn sovra_up(up: &Up<'_>) -> anyhow::Result<(Proc, Duration, Channel)> {
    let addr = free_port()?;
    let started = Instant::now();
    let mut cmd = Command::new(up.bin);
    cmd.args(["up", "--data-dir"])
        .arg(up.dir)
        .args(["--listen", &addr.to_string()])
        .env("SOVRA_LOG", "warn")
        .env("SOVRA__SERVER__ADMIN_LISTEN", "")
        // The suite is one partner at full speed: no rate limits in the way.
        .env("SOVRA__LIMITS__PARTNER_BURST", "100000000")
        .env("SOVRA__LIMITS__PARTNER_PER_MINUTE", "100000000")
        .env("SOVRA__LIMITS__CUSTOMER_BURST", "100000000")
        .env("SOVRA__LIMITS__CUSTOMER_PER_MINUTE", "100000000")
        .env("SOVRA__COMMERCE__PRODUCT_KEY_ATTEMPTS_BURST", "100000000")
        .env(
            "SOVRA__COMMERCE__PRODUCT_KEY_ATTEMPTS_PER_MINUTE",
            "100000000",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if up.plaintext {
        cmd.arg("--plaintext");
    }
    if let Some(t) = &up.database_url {
        cmd.args(["--database-url", t]);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", up.bin.display()))?;
    let proc = Proc { child, addr };
    let ca = up.dir.join("tls/ca.pem");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "sovra up did not become SERVING in 30 s"
        );
        let channel = if up.plaintext {
            plain(addr, 1).await.ok()
        } else if ca.exists() {
            mtls(addr, &ca, 1).await.ok()
        } else {
            None
        };
        if let Some(ch) = channel.and_then(|mut c| c.pop()) {
            let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
            if let Ok(r) = health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
            {
                if r.into_inner().status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                {
                    return Ok((proc, started.elapsed(), ch));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
