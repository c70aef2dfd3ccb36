//! `sovra-bench`: runs the benchmark suite and writes `docs/benchmarks.md`
//! (`sovra-bench run`), or serves one baseline (`sovra-bench baseline`, the
//! suite starts it). See docs/benchmarks.md for what is measured and why.
#![forbid(unsafe_code)]

mod baseline;
mod keys;
mod lists;
mod load;
mod procs;
mod report;
mod scenarios;
mod world;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};

/// The allocator `sovra` runs with (see services/sovra/src/main.rs), so
/// that the baselines (B0's echo above all) measure the transport and the
/// database as Sovra gets them, not glibc's `malloc` against mimalloc; the
/// load generator spends less CPU on the two cores it shares with them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// A PostgreSQL database to connect to; the suite makes its own
    /// databases (`sovra_bench_*`) beside it and drops them after. Empty:
    /// SQLite only.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    postgres: String,
    /// Figure 3: product-key redemption attempts with 64 contenders per key
    /// (the issue asks for at least 1,000,000 on each backend).
    #[arg(long, default_value_t = 1_000_000)]
    contention_attempts: u64,
    /// Figure 5: customers of the partner whose list is measured.
    #[arg(long, default_value_t = 100_000)]
    book: u64,
    /// Figure 5: customers of all partners in the relationships database.
    #[arg(long, default_value_t = 1_000_000)]
    customers_total: u64,
    /// Only these figures (1 2 3 4 5 6; 6 includes 7), comma-separated; the
    /// baselines always run. Default: all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Skip SQLite (PostgreSQL only, with --postgres).
    #[arg(long)]
    no_sqlite: bool,
    /// Fixed-rate comparisons (figures 1b, 1c and 2) run this many times,
    /// alternating, and are read at the median p99.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    repeats: u32,
}

impl RunArgs {
    fn wants(&self, figure: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|f| f == figure)
    }

    /// " (run r of n)" when runs repeat.
    fn run_tag(&self, r: u32) -> String {
        match self.repeats {
            1 => String::new(),
            n => format!(" (run {r} of {n})"),
        }
    }

    fn spec(&self, rate: Option<f64>) -> load::Spec {
        load::Spec {
            connections: self.connections,
            inflight: self.inflight,
            warmup: Duration::from_secs((self.seconds / 5).max(1)),
            duration: Duration::from_secs(self.seconds),
            rate,
            limit: None,
        }
    }

    /// Latency runs (figure 5 and B2 beside it): one connection, four
    /// requests in flight, so the p99 is the server's time, not a queue.
    fn latency_spec(&self) -> load::Spec {
        load::Spec {
            connections: 1,
            inflight: 4,
            ..self.spec(None)
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
