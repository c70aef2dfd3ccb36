//! `sovra-bench`: runs the benchmark suite and writes `docs/benchmarks.md`
//! (`sovra-bench run`), or serves one baseline (`sovra-bench baseline`, the
//! suite starts it). See docs/benchmarks.md for what is measured and why.
#![forbid(unsafe_code)]

mod baseline;
mod load;
mod report;
mod scenarios;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sovra-bench", about = "Sovra's benchmark suite")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs every scenario beside its baseline and writes the report.
    Run(RunArgs),
    /// Serves one baseline (started by `run`).
    Baseline {
        #[arg(long, value_enum)]
        mode: baseline::Mode,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// `sqlite://…` or `postgres://…` (insert and select).
        #[arg(long, default_value = "")]
        database: String,
    },
}

/// How `run` loads.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Where the report goes.
    #[arg(long, default_value = "docs/benchmarks.md")]
    out: PathBuf,
    /// The `sovra` binary (default: next to this one).
    #[arg(long)]
    sovra: Option<PathBuf>,
    /// Seconds measured per run (after a warm-up of a fifth of it, at least 1 s).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Connections per run.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 16)]
    inflight: usize,
    /// PostgreSQL for the PostgreSQL baselines; empty: skip them.
    #[arg(long, default_value = "postgres://127.0.0.1:5432/test")]
    postgres: String,
}

impl RunArgs {
    fn spec(&self, rate: Option<f64>) -> load::Spec {
        load::Spec {
            connections: self.connections,
            inflight: self.inflight,
            warmup: Duration::from_secs((self.seconds / 5).max(1)),
            duration: Duration::from_secs(self.seconds),
            rate,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => scenarios::run(args).await,
        Command::Baseline {
            mode,
            listen,
            database,
        } => baseline::serve(listen, mode, &database).await,
    }
}
