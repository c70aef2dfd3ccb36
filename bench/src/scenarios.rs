//! The suite: starts each baseline and `sovra up` as processes of their
//! own, loads them in turn on each backend, and checks the figures the
//! performance issue sets against the baselines of the same run.

use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use sovra_proto::{commerce::v1 as com, identity::v1 as pb};
use sqlx::Connection;
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::Channel,
    Request,
};

use crate::{
    baseline::{self, Mode},
    keys, lists,
    load::{self, median, Outcome, Pairs, Repeated},
    procs::{self, Backend, Proc, Up},
    report::Report,
    world::{self, authed, refusal, Tenant, World},
    RunArgs,
};

fn check_req(
    bearer: Option<MetadataValue<Ascii>>,
    tenant: &str,
    p: pb::Permission,
) -> Request<pb::CheckAccessRequest> {
    world::with_bearer(
        bearer,
        pb::CheckAccessRequest {
            user_id: String::new(),
            tenant_id: tenant.to_owned(),
            permission: p as i32,
        },
    )
}

/// CheckAccess (USERS_READ) by `token`'s user in `tenant`; an answer that is not `basis` is
/// an error (the path measured must be the one meant).
async fn check_access(
    spec: load::Spec,
    channels: &[Channel],
    pid: u32,
    token: &str,
    tenant: &str,
    basis: pb::AccessBasis,
) -> Outcome {
    let (bearer, tenant) = (world::bearer(token), tenant.to_owned());
    load::run(spec, channels, pid, move |ch, _| {
        let req = check_req(bearer.clone(), &tenant, pb::Permission::UsersRead);
        async move {
            let r = pb::access_service_client::AccessServiceClient::new(ch)
                .check_access(req)
                .await
                .map_err(refusal)?
                .into_inner();
            if r.allowed && r.basis == basis as i32 {
                Ok(())
            } else {
                Err(format!("unexpected answer {r:?}"))
            }
        }
    })
    .await
}

/// What every baseline request carries as its authorization (set once, by
/// [`suite`]): a token as long as Sovra's ([`world::token_like_sovras`]).
/// A Rust HTTP/2 client never indexes an `authorization` value in HPACK, so
/// each request sends it again (Huffman-coded) and each server decodes it
/// again; at Sovra's token length that is most of what a CheckAccess
/// request costs the transport beyond an empty echo. The baselines are the
/// same requests on the wire; what Sovra does with the token is Sovra's.
static BASE_TOKEN: OnceLock<String> = OnceLock::new();

/// The baseline's CheckAccess: B0 answers at once, B1 inserts, B2 selects
/// the row named by the tenant id. Its requests carry [`BASE_TOKEN`].
async fn base_load(spec: load::Spec, p: &Proc, channels: &[Channel]) -> Outcome {
    let bearer = BASE_TOKEN.get().and_then(|t| world::bearer(t));
    base_load_with(spec, p, channels, bearer).await
}

async fn base_load_with(
    spec: load::Spec,
    p: &Proc,
    channels: &[Channel],
    bearer: Option<MetadataValue<Ascii>>,
) -> Outcome {
    load::run(spec, channels, p.pid(), move |ch, n| {
        let req = world::with_bearer(
            bearer.clone(),
            pb::CheckAccessRequest {
                user_id: format!("user-{n}"),
                tenant_id: baseline::seeded_id(n),
                permission: pb::Permission::UsersRead as i32,
            },
        );
        async move {
            pb::access_service_client::AccessServiceClient::new(ch)
                .check_access(req)
                .await
                .map(|_| ())
                .map_err(refusal)
        }
    })
    .await
}

fn pct(a: f64, b: f64) -> String {
    format!("{a:.0}/s vs {b:.0}/s = {:.0}%", ratio(a, b) * 100.0)
}

/// A throughput goal: the runs must reach `min` (a fraction) of their
/// baselines' requests per second, read at the median of the pairs' ratios,
/// with no errors. When the hypervisor stole a different share of the
/// machine during a run and its baseline, the report says so: that ratio
/// then measures the machine as much as Sovra.
fn throughput_figure(
    report: &mut Report,
    (number, label): (&'static str, &str),
    what: &str,
    pairs: &Pairs,
    min: f64,
) {
    for (i, (run, base)) in pairs.iter().enumerate() {
        let (steal, base_steal) = (run.machine.shares().1, base.machine.shares().1);
        if (steal - base_steal).abs() > STEAL_APART {
            report.notes.push(format!(
                "{label}: figure {number}{} ran with {:.0}% of the machine stolen by the hypervisor, its baseline with {:.0}%: that pair's ratio measures the machine too.",
                match pairs.len() {
                    1 => String::new(),
                    n => format!(" (pair {} of {n})", i + 1),
                },
                steal * 100.0,
                base_steal * 100.0
            ));
        }
    }
    let each: Vec<String> = pairs
        .iter()
        .map(|(run, base)| pct(run.throughput(), base.throughput()))
        .collect();
    let measured = match pairs.len() {
        1 => each.join(""),
        n => format!(
            "median {:.0}% of {n} pairs ({})",
            pairs.median_ratio() * 100.0,
            each.join("; ")
        ),
    };
    report.figure(
        number,
        label,
        what,
        measured,
        format!("≥ {:.0}%", min * 100.0),
        Some(pairs.len() > 0 && pairs.median_ratio() >= min && pairs.errors() == 0),
    );
}

/// Steal shares further apart than this make a throughput ratio suspect.
const STEAL_APART: f64 = 0.1;

/// Two p99s side by side, and their ratio.
fn p99_vs(a: &Outcome, b: &Outcome) -> String {
    format!(
        "{:.2} ms vs {:.2} ms = {:.2}×",
        a.ms(0.99),
        b.ms(0.99),
        ratio(a.ms(0.99), b.ms(0.99))
    )
}

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        0.0
    } else {
        a / b
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores, {cpu}, loopback")
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let bin = match &args.sovra {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory")?
            .join("sovra"),
    };
    anyhow::ensure!(
        bin.exists(),
        "{} not found: build it first (cargo build --release -p sovra -p sovra-bench)",
        bin.display()
    );
    let tmp = std::env::temp_dir().join(format!("sovra-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let mut report = Report::default();
    let result = suite(&args, &bin, &tmp, &mut report).await;
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    let how = format!(
        "`sovra-bench run --seconds {} --connections {} --inflight {} --contention-attempts {} --book {} --customers-total {}`",
        args.seconds,
        args.connections,
        args.inflight,
        args.contention_attempts,
        args.book,
        args.customers_total
    );
    std::fs::write(
        &args.out,
        report.markdown(&machine(), &how) + &docs_tail() + include_str!("../HISTORY.md"),
    )?;
    println!("wrote {}", args.out.display());
    Ok(())
}

/// B0, kept running: its max-rate and half-rate runs alternate with
/// Sovra's in every backend's figure 1.
struct B0 {
    proc: Proc,
    ch: Vec<Channel>,
}

async fn suite(args: &RunArgs, bin: &Path, tmp: &Path, report: &mut Report) -> anyhow::Result<()> {
    let n = args.connections;
    let max = args.spec(None);
    let token = world::token_like_sovras()?;
    report.notes.push(format!(
        "Every baseline request carries `authorization: Bearer <token>` with a token as long as Sovra's ({} characters), as Sovra's requests do; \
         B0 without it is measured once for reference and not read.",
        token.len()
    ));
    let _ = BASE_TOKEN.set(token);
    let b0 = procs::baseline(Mode::Echo, "")?;
    let b0_ch = procs::plain(b0.addr, n).await?;
    report.run(
        "B0 echo, max rate (reference for the next run, not read)",
        "—",
        base_load(max, &b0, &b0_ch).await,
    );
    report.run(
        "B0 echo without a bearer header, max rate (reference, not read)",
        "—",
        base_load_with(max, &b0, &b0_ch, None).await,
    );
    let b0 = B0 {
        proc: b0,
        ch: b0_ch,
    };

    let sqlite_dir = tmp.join("sqlite");
    std::fs::create_dir_all(&sqlite_dir)?;
    let mut backends = Vec::new();
    if !args.no_sqlite {
        backends.push(Backend::Sqlite(sqlite_dir));
    }
    if args.postgres.is_empty() {
        report
            .notes
            .push("PostgreSQL skipped (`--postgres ''`).".into());
    } else {
        match sqlx::postgres::PgConnection::connect(&args.postgres).await {
            Ok(c) => {
                let _ = c.close().await;
                backends.push(Backend::Postgres(args.postgres.clone()));
            }
            Err(e) => report.figure(
                "all",
                "PostgreSQL",
                "every scenario",
                format!("not run: PostgreSQL unreachable at {} ({e})", args.postgres),
                "every scenario on both backends",
                None,
            ),
        }
    }
    for b in &backends {
        on_backend(args, bin, tmp, report, b, &b0).await?;
    }
    if args.wants("6") && !args.no_sqlite {
        over_mtls(args, bin, tmp, report).await?;
    }
    Ok(())
}

/// A `sovra up --plaintext` in `dir` (`database_url`: see [`Up`]), SERVING,
/// with `n` load connections and the suite's data made in it over gRPC.
/// Fields drop in order: the connections, then the process.
struct PlainUp {
    ch: Vec<Channel>,
    /// One more, for setup calls beside the load.
    ch0: Channel,
    up: Proc,
    /// From start to SERVING, on new databases.
    first_start: Duration,
    operator: String,
    w: World,
}

async fn plain_up(
    bin: &Path,
    dir: &Path,
    database_url: Option<String>,
    n: usize,
) -> anyhow::Result<PlainUp> {
    let (up, first_start, ch0) = procs::sovra_up(&Up {
        bin,
        dir,
        plaintext: true,
        database_url,
    })
    .await?;
    let operator = procs::operator_token(dir)?;
    let ch = procs::plain(up.addr, n).await?;
    let w = world::world(&ch0, &operator).await?;
    Ok(PlainUp {
        ch,
        ch0,
        up,
        first_start,
        operator,
        w,
    })
}

/// What every figure on one backend runs against.
#[derive(Clone, Copy)]
struct Scene<'a> {
    args: &'a RunArgs,
    label: &'static str,
    up: &'a Proc,
    /// The load's connections.
    ch: &'a [Channel],
    /// One more, for setup calls beside the load.
    ch0: &'a Channel,
    operator: &'a str,
    w: &'a World,
}

impl Scene<'_> {
    /// The admin's CheckAccess in its own partner tenant, under `spec`.
    async fn own_role(&self, spec: load::Spec) -> Outcome {
        let w = self.w;
        let basis = pb::AccessBasis::OwnRole;
        check_access(spec, self.ch, self.up.pid(), &w.admin, &w.partner, basis).await
    }

    /// The agent's CheckAccess in its customer, by delegation, under `spec`.
    async fn delegated(&self, spec: load::Spec) -> Outcome {
        let w = self.w;
        let basis = pb::AccessBasis::DelegatedFull;
        check_access(
            spec,
            self.ch,
            self.up.pid(),
            &w.agent,
            &w.customer.id,
            basis,
        )
        .await
    }
}

/// Every scenario on one backend.
async fn on_backend(
    args: &RunArgs,
    bin: &Path,
    tmp: &Path,
    report: &mut Report,
    b: &Backend,
    b0: &B0,
) -> anyhow::Result<()> {
    let label = b.label();
    let n = args.connections;
    let max = args.spec(None);
    let lat = args.latency_spec();
    let mut names = vec!["b1".to_owned(), "b2".to_owned()];
    names.extend(procs::service_databases("up"));
    b.fresh(&names).await?;

    // B1 and B2.
    let proc = procs::baseline(Mode::Insert, &b.url("b1"))?;
    let b1 = B1 {
        ch: procs::plain(proc.addr, n).await?,
        proc,
        last: Mutex::new(0.0),
    };
    b1.run(report, label, "", max).await;
    let b2 = procs::baseline(Mode::Select, &b.url("b2"))?;
    let ch = procs::plain(b2.addr, n).await?;
    report.run("B2 select, max rate", label, base_load(max, &b2, &ch).await);
    let b2_lat = undisturbed(
        report,
        &format!("B2 select, {} in flight", lat.connections * lat.inflight),
        label,
        || base_load(lat, &b2, &ch),
    )
    .await;
    drop(b2);

    // Sovra.
    let dir = tmp.join(format!("up-{label}"));
    let (database_url, relationships_db) = match b {
        Backend::Sqlite(_) => (
            None,
            format!(
                "sqlite://{}?mode=rwc",
                dir.join("relationships.db").display()
            ),
        ),
        Backend::Postgres(_) => (Some(b.url("up_{service}")), b.url("up_relationships")),
    };
    let sovra = plain_up(bin, &dir, database_url, n).await?;
    report.notes.push(format!(
        "{label}: `sovra up --plaintext` on new databases was SERVING after {:.0} ms.",
        sovra.first_start.as_secs_f64() * 1000.0
    ));

    let scene = Scene {
        args,
        label,
        up: &sovra.up,
        ch: &sovra.ch,
        ch0: &sovra.ch0,
        operator: &sovra.operator,
        w: &sovra.w,
    };
    let mut delegated = None;
    if args.wants("1") {
        delegated = Some(figure_1(&scene, report, b0).await);
    }
    if args.wants("2") {
        figure_2(&scene, report, delegated, &b1).await?;
    }
    if args.wants("4") {
        figure_4(&scene, report, &b1).await?;
    }
    if args.wants("3") {
        figure_3(&scene, report, &b1).await?;
    }
    if args.wants("5") {
        figure_5(&scene, report, &relationships_db, &b2_lat).await?;
    }
    drop(sovra);
    drop(b1);
    b.drop_all(&names).await;
    Ok(())
}

/// A run read for a tail figure (1b, 1c, 2, 5 and B2's for 5b), made again, at most
/// twice, while another process on the machine or the machine's host
/// disturbed it (see [`Outcome::disturbance`]): a p99 is decided by the
/// worst 1% of the requests, and on two cores a burst from anything else
/// makes that 1%.
/// Baselines and Sovra's runs go through this alike; a disturbed run is in
/// the report, marked, and not read.
async fn undisturbed<F, Fut>(report: &mut Report, name: &str, backend: &str, mut make: F) -> Outcome
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Outcome>,
{
    for _ in 0..2 {
        let run = make().await;
        let Some(why) = run.disturbance() else {
            return report.run(name, backend, run);
        };
        report.run(
            &format!("{name} (disturbed: {why}; run again, not read)"),
            backend,
            run,
        );
    }
    // The third attempt is read whatever it shows, and marked if it was
    // disturbed too (its p99 carries a * where the figure lists its runs).
    let run = make().await;
    match run.disturbance() {
        Some(why) => report.run(
            &format!("{name} (disturbed: {why}; the third attempt, read)"),
            backend,
            run,
        ),
        None => report.run(name, backend, run),
    }
}

/// Figure 1: CheckAccess against B0, own role and delegated.
/// Returns the delegated path's maximum rate (the median of its runs).
async fn figure_1(s: &Scene<'_>, report: &mut Report, b0: &B0) -> f64 {
    let Scene { args, label, .. } = *s;
    let max = args.spec(None);
    // At the maximum rate: B0, own role and delegated in turn. A single
    // max-rate run moved B0's maximum between 55k and 68k/s (same
    // binaries, same hour), and 1b's rate and figure 2's with it.
    let (mut own, mut b0_max, mut delegated) = (Pairs::default(), Vec::new(), Vec::new());
    for r in 1..=args.repeats {
        let tag = args.run_tag(r);
        let base = report.run(
            &format!("B0 echo, max rate{tag}"),
            "—",
            base_load(max, &b0.proc, &b0.ch).await,
        );
        b0_max.push(base.throughput());
        let run = report.run(
            &format!("CheckAccess own role, max rate{tag}"),
            label,
            s.own_role(max).await,
        );
        own.push(run, base);
        let run = s.delegated(max).await;
        delegated.push(run.throughput());
        report.run(&format!("CheckAccess delegated, max rate{tag}"), label, run);
    }
    let (b0_max, delegated) = (median(b0_max), median(delegated));
    let half = b0_max / 2.0;
    // At half of B0's maximum: B0, own role and delegated in turn.
    let (mut b0_half, mut own_half, mut delegated_half) = (
        Repeated::default(),
        Repeated::default(),
        Repeated::default(),
    );
    for r in 1..=args.repeats {
        let tag = args.run_tag(r);
        let spec = args.spec(Some(half));
        b0_half.push(
            undisturbed(
                report,
                &format!("B0 echo at {half:.0}/s{tag}"),
                "—",
                || base_load(spec, &b0.proc, &b0.ch),
            )
            .await,
        );
        own_half.push(
            undisturbed(
                report,
                &format!("CheckAccess own role at {half:.0}/s{tag}"),
                label,
                || s.own_role(spec),
            )
            .await,
        );
        delegated_half.push(
            undisturbed(
                report,
                &format!("CheckAccess delegated at {half:.0}/s{tag}"),
                label,
                || s.delegated(spec),
            )
            .await,
        );
    }
    throughput_figure(
        report,
        ("1a", label),
        "CheckAccess throughput vs B0",
        &own,
        0.5,
    );
    let (b0_p99, own_p99) = (b0_half.median().ms(0.99), own_half.median().ms(0.99));
    report.figure(
        "1b",
        label,
        "CheckAccess p99 at half of B0's max rate (median of the runs)",
        format!(
            "{own_p99:.2} ms vs B0 {b0_p99:.2} ms (runs: {} vs {}; bearer tokens of {} characters, B0's {})",
            own_half.p99s(),
            b0_half.p99s(),
            s.w.admin.len(),
            BASE_TOKEN.get().map_or(0, String::len)
        ),
        "≤ B0 + 1 ms",
        Some(own_p99 <= b0_p99 + 1.0 && own_half.errors() == 0),
    );
    report.figure(
        "1c",
        label,
        "CheckAccess delegated p99 vs own role (same rate, median of the runs)",
        format!(
            "{} (runs: {} vs {}; B0's max {b0_max:.0}/s, the delegated path's {delegated:.0}/s, medians of the runs)",
            p99_vs(delegated_half.median(), own_half.median()),
            delegated_half.p99s(),
            own_half.p99s(),
        ),
        "≤ 2×",
        Some(delegated_half.median().ms(0.99) <= 2.0 * own_p99 && delegated_half.errors() == 0),
    );
    delegated
}

/// Figure 2: delegated CheckAccess at a fixed rate, read-only and then with
/// delegated-grant changes (another customer's delegation removed and given
/// again) at 1% of that rate. `delegated_max`: the delegated path's maximum
/// rate when figure 1 measured it (measured here otherwise, as there: the
/// median of `--repeats` runs).
async fn figure_2(
    s: &Scene<'_>,
    report: &mut Report,
    delegated_max: Option<f64>,
    b1: &B1,
) -> anyhow::Result<()> {
    let Scene {
        args,
        label,
        ch0,
        operator,
        w,
        ..
    } = *s;
    // Half of the delegated path's own maximum: a rate it keeps up with.
    let max = match delegated_max {
        Some(m) => m,
        None => {
            let mut runs = Vec::new();
            for r in 1..=args.repeats {
                let run = s.delegated(args.spec(None)).await;
                runs.push(run.throughput());
                let name = format!("CheckAccess delegated, max rate{}", args.run_tag(r));
                report.run(&name, label, run);
            }
            median(runs)
        }
    };
    let rate = (max / 2.0).max(10.0);
    let spec = args.spec(Some(rate));
    // Four customers whose delegations churn, each at a quarter of the 1%
    // of the rate in `period`, while `churning` is set.
    const CHURNERS: usize = 4;
    let stop = Arc::new(AtomicBool::new(false));
    let churning = Arc::new(AtomicBool::new(false));
    let changes = Arc::new(AtomicU64::new(0));
    let period = Arc::new(AtomicU64::new(0));
    let churn_at = |r: f64| {
        let every = Duration::from_secs_f64(100.0 * CHURNERS as f64 / r);
        period.store(every.as_micros() as u64, Ordering::Relaxed);
    };
    churn_at(rate);
    let mut churners = Vec::with_capacity(CHURNERS);
    for _ in 0..CHURNERS {
        let other = world::customer(ch0, operator).await?;
        let first = world::delegate(ch0, &w.admin, &w.partner, &other).await?;
        churners.push(tokio::spawn(churn(
            Churn {
                ch: ch0.clone(),
                admin: w.admin.clone(),
                partner: w.partner.clone(),
                customer: other,
                period: period.clone(),
            },
            first,
            churning.clone(),
            stop.clone(),
            changes.clone(),
        )));
    }
    let (read_only, mixed, churned_for) = in_turns(s, report, &churning, rate).await;
    // The figure's changes only (the runs after it make more).
    let made = changes.load(Ordering::Relaxed);
    // The same at a quarter of the maximum, where the read-only runs leave
    // the machine about half idle: what grant changes do to the checks
    // apart from the machine's saturation (a note, not the figure).
    let quarter = (max / 4.0).max(10.0);
    churn_at(quarter);
    let (quarter_read_only, quarter_mixed, _) = in_turns(s, report, &churning, quarter).await;
    churn_at(rate);
    let floor = figure_2_floor(s, report, b1, spec).await;
    // What one grant change costs, apart from the checks: the same churn
    // beside checks at a trickle, against the trickle alone. Figure 2 adds
    // about 0.01 × rate × this to a machine the read-only runs already keep
    // busy (see `docs_tail`).
    let trickle = load::Spec {
        rate: Some(TRICKLE),
        ..spec
    };
    let postgres = || load::cpu_seconds_named("postgres");
    let (pg0, t0) = (postgres(), Instant::now());
    let alone = report.run(
        &delegated_at(TRICKLE, "read-only"),
        label,
        s.delegated(trickle).await,
    );
    // PostgreSQL's processes over each whole run, in cores (none on SQLite).
    let pg_alone = (postgres() - pg0) / t0.elapsed().as_secs_f64();
    let before = changes.load(Ordering::Relaxed);
    let pg0 = postgres();
    churning.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let run = s.delegated(trickle).await;
    churning.store(false, Ordering::Relaxed);
    let (churn_for, churn_made) = (started.elapsed(), changes.load(Ordering::Relaxed) - before);
    let pg_with = (postgres() - pg0) / churn_for.as_secs_f64();
    let with = report.run(
        &delegated_at(TRICKLE, "1% grant changes of the figure's rate"),
        label,
        run,
    );
    // Extra cores, spread over the changes made in the whole run (warm-up
    // included), at the rate they were made: ms of CPU per change.
    let per_change =
        |cores: f64| 1000.0 * cores.max(0.0) * churn_for.as_secs_f64() / (churn_made.max(1) as f64);
    let measured = |cpu: fn(&Outcome) -> f64| {
        per_change(
            cpu(&with) / with.elapsed.as_secs_f64() - cpu(&alone) / alone.elapsed.as_secs_f64(),
        )
    };
    let (server_ms, client_ms) = (measured(|o| o.server_cpu), measured(|o| o.client_cpu));
    let pg_ms = per_change(pg_with - pg_alone);
    let pg = if pg_ms > 0.0 {
        format!(", PostgreSQL {pg_ms:.2} ms")
    } else {
        String::new()
    };
    report.notes.push(format!(
        "{label}: one grant change cost Sovra {server_ms:.2} ms of CPU{pg} (the load generator \
         {client_ms:.2} ms; {churn_made} changes beside {TRICKLE:.0} checks/s, against the checks \
         alone); at figure 2's {:.0} changes/s that is {:.2} more cores on the server side",
        rate / 100.0,
        (server_ms + pg_ms) * rate / 100.0 / 1000.0,
    ));
    stop.store(true, Ordering::Relaxed);
    let mut churned = Ok(());
    for c in churners {
        let r = c.await.context("churn task")?;
        if churned.is_ok() {
            churned = r;
        }
    }
    report.figure(
        "2",
        label,
        "CheckAccess p99 with 1% delegated-grant changes vs read-only (median of the runs)",
        format!(
            "{} (runs: {} vs {}; {made} grant changes, {:.2}% of the check rate)",
            p99_vs(mixed.median(), read_only.median()),
            mixed.p99s(),
            read_only.p99s(),
            100.0 * made as f64 / churned_for.as_secs_f64().max(1e-3) / rate,
        ),
        "≤ 1.5×",
        Some(
            mixed.median().ms(0.99) <= 1.5 * read_only.median().ms(0.99)
                && mixed.errors() == 0
                && churned.is_ok(),
        ),
    );
    if let Err(e) = churned {
        report
            .notes
            .push(format!("{label}: a grant change failed: {e}"));
    }
    report.notes.push(format!(
        "{label}: figure 2's floor: the same checks beside B1's one-row durable inserts at 2% of \
         their rate (two commits per grant change, as relationships and identity each make one, \
         and nothing else) read {} against read-only (runs: {}): what committing grant changes \
         durably in two databases adds to this machine, whatever else the change costs",
        p99_vs(floor.median(), read_only.median()),
        floor.p99s(),
    ));
    report.notes.push(format!(
        "{label}: figure 2's runs at a quarter of the delegated maximum ({quarter:.0}/s, the \
         changes at 1% of it; a reading, not the figure): {} (runs: {} vs {})",
        p99_vs(quarter_mixed.median(), quarter_read_only.median()),
        quarter_mixed.p99s(),
        quarter_read_only.p99s(),
    ));
    Ok(())
}

/// Figure 2's floor: delegated CheckAccess at `spec` beside B1 inserting at
/// 2% of its rate, `--repeats` times. B1's CPU is the run's purpose, so it
/// is not counted as another process's disturbance.
async fn figure_2_floor(s: &Scene<'_>, report: &mut Report, b1: &B1, spec: load::Spec) -> Repeated {
    let rate = spec.rate.unwrap_or(0.0);
    let insert_rate = rate * 2.0 / 100.0;
    let inserts = load::Spec {
        connections: 1,
        inflight: 1,
        rate: Some(insert_rate),
        ..spec
    };
    let mut floor = Repeated::default();
    for r in 1..=s.args.repeats {
        let beside = format!("beside B1 inserts at {insert_rate:.0}/s");
        let name = delegated_at(rate, &beside) + &s.args.run_tag(r);
        let run = undisturbed(report, &name, s.label, || async {
            let (mut checks, b1_run) =
                tokio::join!(s.delegated(spec), base_load(inserts, &b1.proc, &b1.ch));
            checks.others_cpu = (checks.others_cpu - b1_run.server_cpu).max(0.0);
            checks
        })
        .await;
        floor.push(run);
    }
    floor
}

/// Checks per second beside which figure 2 measures a grant change's cost.
const TRICKLE: f64 = 100.0;

/// The name of a run of delegated checks at `rate`.
fn delegated_at(rate: f64, what: &str) -> String {
    format!("CheckAccess delegated at {rate:.0}/s, {what}")
}

/// Figure 2's runs: delegated checks at `rate`, read-only and with the
/// churners on (`churning` set) in turn, `--repeats` times each; and how
/// long the churners were on.
async fn in_turns(
    s: &Scene<'_>,
    report: &mut Report,
    churning: &AtomicBool,
    rate: f64,
) -> (Repeated, Repeated, Duration) {
    let Scene { args, label, .. } = *s;
    let spec = args.spec(Some(rate));
    let (mut read_only, mut mixed) = (Repeated::default(), Repeated::default());
    // Every run with changes counts, disturbed or not: the changes made are.
    let churned_for = std::cell::Cell::new(Duration::ZERO);
    let name = |what: &str, r: u32| delegated_at(rate, what) + &args.run_tag(r);
    let load = || s.delegated(spec);
    for r in 1..=args.repeats {
        read_only.push(undisturbed(report, &name("read-only", r), label, load).await);
        let with_changes = name("1% grant changes", r);
        let churned = undisturbed(report, &with_changes, label, || async {
            churning.store(true, Ordering::Relaxed);
            let started = Instant::now();
            let run = load().await;
            churning.store(false, Ordering::Relaxed);
            churned_for.set(churned_for.get() + started.elapsed());
            run
        });
        mixed.push(churned.await);
    }
    (read_only, mixed, churned_for.get())
}

/// One customer whose delegation churns.
struct Churn {
    ch: Channel,
    admin: String,
    partner: String,
    customer: Tenant,
    /// Microseconds between its changes, read at every tick: figure 2
    /// sets it for the rate it runs at.
    period: Arc<AtomicU64>,
}

/// Removes and gives again the customer's delegation every `c.period`
/// while `churning`, until `stop`; each removal and each acceptance is one
/// grant change.
async fn churn(
    c: Churn,
    mut relationship: String,
    churning: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    changes: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let every = || Duration::from_micros(c.period.load(Ordering::Relaxed).max(1));
    let mut current = every();
    let mut tick = tokio::time::interval(current);
    let mut active = true;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let now = every();
        if now != current {
            current = now;
            tick = tokio::time::interval(current);
            continue;
        }
        if !churning.load(Ordering::Relaxed) {
            continue;
        }
        if active {
            world::remove_delegation(&c.ch, &c.customer, &relationship).await?;
        } else {
            relationship = world::delegate(&c.ch, &c.admin, &c.partner, &c.customer).await?;
        }
        active = !active;
        changes.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// B1, kept running on its backend while the write figures (3a, 4, 4b)
/// alternate with it: each of their runs follows a B1 run of its own, and
/// the figure reads the median of the pairs' ratios (see [`Pairs`]).
struct B1 {
    proc: Proc,
    ch: Vec<Channel>,
    /// The latest max-rate run.
    last: Mutex<f64>,
}

impl B1 {
    /// A max-rate run, reported as `B1 insert, max rate{tag}`.
    async fn run(&self, report: &mut Report, label: &str, tag: &str, spec: load::Spec) -> Outcome {
        let o = base_load(spec, &self.proc, &self.ch).await;
        if let Ok(mut last) = self.last.lock() {
            *last = o.throughput();
        }
        report.run(&format!("B1 insert, max rate{tag}"), label, o)
    }

    /// The latest max-rate run's requests per second.
    fn last(&self) -> f64 {
        self.last.lock().map(|l| *l).unwrap_or(0.0)
    }
}

/// Figure 4: purchase-offer creation, then redemption of those offers by
/// existing customers, each in pairs with B1.
async fn figure_4(s: &Scene<'_>, report: &mut Report, b1: &B1) -> anyhow::Result<()> {
    let Scene {
        args,
        label,
        up,
        ch,
        ..
    } = *s;
    let max = args.spec(None);
    let codes = Arc::new(Mutex::new(Vec::new()));
    let mut offers = Pairs::default();
    for r in 1..=args.repeats {
        let tag = args.run_tag(r);
        let base = b1.run(report, label, &tag, max).await;
        let run = report.run(
            &format!("CreatePurchaseOffer, max rate{tag}"),
            label,
            create_offers(s, codes.clone()).await,
        );
        offers.push(run, base);
    }
    throughput_figure(
        report,
        ("4", label),
        "CreatePurchaseOffer throughput vs B1",
        &offers,
        0.5,
    );

    // Each offer is redeemed once by each of these customers, the runs
    // taking the offers in turn.
    let mut customers = Vec::with_capacity(REDEEMERS);
    for _ in 0..REDEEMERS {
        customers.push(world::customer(s.ch0, s.operator).await?);
    }
    let codes: Vec<String> =
        std::mem::take(&mut *codes.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    let (codes, customers) = (Arc::new(codes), Arc::new(customers));
    let next = Arc::new(AtomicU64::new(0));
    let mut redeemed = Pairs::default();
    for r in 1..=args.repeats {
        let tag = args.run_tag(r);
        let base = b1.run(report, label, &tag, max).await;
        let (codes, customers, next) = (codes.clone(), customers.clone(), next.clone());
        let run = report.run(
            &format!("RedeemPurchaseOffer (existing customer), max rate{tag}"),
            label,
            load::run(max, ch, up.pid(), move |ch, _| {
                let (codes, customers) = (codes.clone(), customers.clone());
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                async move { redeem_offer(ch, &codes, &customers, i).await }
            })
            .await,
        );
        redeemed.push(run, base);
    }
    throughput_figure(
        report,
        ("4b", label),
        "Link redemption (purchase offer, existing customer) vs B1",
        &redeemed,
        0.5,
    );
    Ok(())
}

/// Figure 4b's customers: each offer is redeemed once by each.
const REDEEMERS: usize = 16;

/// A max-rate run of CreatePurchaseOffer by the world's agent; the offers'
/// codes go to `kept`.
async fn create_offers(s: &Scene<'_>, kept: Arc<Mutex<Vec<String>>>) -> Outcome {
    let (agent, partner) = (s.w.agent.clone(), s.w.partner.clone());
    load::run(s.args.spec(None), s.ch, s.up.pid(), move |ch, n| {
        let req = authed(
            &agent,
            com::CreatePurchaseOfferRequest {
                request_id: format!("offer-{n}-{}", uuid::Uuid::new_v4()),
                partner_tenant_id: partner.clone(),
                lines: vec![com::OfferLine {
                    product_id: "office-business".into(),
                    license_count: 10,
                }],
                include_delegated_admin: false,
            },
        );
        let kept = kept.clone();
        async move {
            let offer = com::purchase_offer_service_client::PurchaseOfferServiceClient::new(ch)
                .create_purchase_offer(req)
                .await
                .map_err(refusal)?
                .into_inner()
                .offer
                .ok_or("no offer in the answer")?;
            kept.lock().map_err(|_| "poisoned")?.push(offer.code);
            Ok(())
        }
    })
    .await
}

/// The `i`th redemption of figure 4b: offer `i / REDEEMERS` by customer
/// `i % REDEEMERS`.
async fn redeem_offer(
    ch: Channel,
    codes: &[String],
    customers: &[Tenant],
    i: usize,
) -> Result<(), String> {
    let c = &customers[i % REDEEMERS];
    let code = codes
        .get(i / REDEEMERS)
        .ok_or_else(|| format!("ran out of offers ({} × {REDEEMERS})", codes.len()))?;
    let r = com::purchase_offer_service_client::PurchaseOfferServiceClient::new(ch)
        .redeem_purchase_offer(authed(
            &c.admin,
            com::RedeemPurchaseOfferRequest {
                request_id: uuid::Uuid::new_v4().to_string(),
                code: code.clone(),
                customer: Some(com::CustomerChoice {
                    customer: Some(com::customer_choice::Customer::CustomerTenantId(
                        c.id.clone(),
                    )),
                }),
                ..Default::default()
            },
        ))
        .await
        .map_err(refusal)?
        .into_inner();
    match r.redemption {
        Some(x) if x.subscriptions.len() == 1 => Ok(()),
        other => Err(format!("unexpected redemption {other:?}")),
    }
}

/// Figure 3: product keys, distinct (in pairs with B1) and contended.
async fn figure_3(s: &Scene<'_>, report: &mut Report, b1: &B1) -> anyhow::Result<()> {
    let Scene {
        args,
        label,
        up,
        ch,
        ch0,
        operator,
        w,
    } = *s;
    let max = args.spec(None);
    let mut distinct = Pairs::default();
    // The latest redemption run's rate: Sovra may outrun B1 (SQLite's
    // group commit does, by 1.6×), and a run that runs out of keys fails.
    let mut redeemed = 0.0_f64;
    for r in 1..=args.repeats {
        let tag = args.run_tag(r);
        // Enough distinct keys for the run at twice the faster of B1's
        // latest rate and the last redemption run's.
        let rate = b1.last().max(redeemed);
        let needed = (rate * (max.warmup + max.duration).as_secs_f64() * 2.0) as usize;
        let fresh = keys::import(ch0, operator, needed.clamp(1000, 400_000)).await?;
        let base = b1.run(report, label, &tag, max).await;
        let run = report.run(
            &format!("RedeemProductKey, distinct keys, max rate{tag}"),
            label,
            keys::distinct(max, ch, up.pid(), w, fresh).await,
        );
        redeemed = run.throughput();
        distinct.push(run, base);
    }
    throughput_figure(
        report,
        ("3a", label),
        "Product-key redemption on distinct keys vs B1",
        &distinct,
        0.7,
    );

    const CONTENDERS: u64 = 64;
    let attempts = args.contention_attempts;
    let raced = keys::import(ch0, operator, attempts.div_ceil(CONTENDERS) as usize).await?;
    let spec = load::Spec {
        connections: 4,
        inflight: (CONTENDERS / 4) as usize,
        warmup: Duration::ZERO,
        duration: Duration::from_secs(6 * 3600),
        rate: None,
        limit: Some(attempts),
    };
    let c = keys::contended(spec, ch, up.pid(), w, raced, CONTENDERS).await;
    let winners = report.run(
        "RedeemProductKey, 64 contenders: winners",
        label,
        c.outcome.clone(),
    );
    let losers = report.run(
        "RedeemProductKey, 64 contenders: losers",
        label,
        c.outcome.losers(),
    );
    let total = c.outcome.ok + c.outcome.lost + c.outcome.errors;
    let verdict = if total < 1_000_000 {
        report.notes.push(format!(
            "{label}: figure 3b ran {total} attempts (`--contention-attempts`), fewer than the issue's 1,000,000: no verdict."
        ));
        None
    } else {
        Some(c.doubles == 0 && c.unredeemed == 0 && c.outcome.errors == 0)
    };
    report.figure(
        "3b",
        label,
        "Double redemptions, 64 contenders per key",
        format!(
            "{} double, {} unredeemed of {} keys; {total} attempts ({} won, {} lost, {} errors) in {:.0} s",
            c.doubles,
            c.unredeemed,
            c.keys,
            c.outcome.ok,
            c.outcome.lost,
            c.outcome.errors,
            c.outcome.elapsed.as_secs_f64()
        ),
        "0 over ≥ 1,000,000 attempts",
        verdict,
    );
    report.figure(
        "3c",
        label,
        "Losers' p99 vs winners' (64 contenders per key)",
        format!("{:.2} ms vs {:.2} ms", losers.ms(0.99), winners.ms(0.99)),
        "losers ≤ winners",
        Some(losers.ms(0.99) <= winners.ms(0.99) && c.outcome.errors == 0),
    );
    Ok(())
}

/// Figure 5: ListCustomers over `--book` customers of one partner,
/// `--customers-total` in all.
async fn figure_5(
    s: &Scene<'_>,
    report: &mut Report,
    relationships_db: &str,
    b2: &Outcome,
) -> anyhow::Result<()> {
    let Scene {
        args,
        label,
        up,
        ch,
        ch0,
        w,
        ..
    } = *s;
    let seeding = std::time::Instant::now();
    lists::seed(
        relationships_db,
        &w.partner,
        args.book,
        args.customers_total,
    )
    .await?;
    report.notes.push(format!(
        "{label}: seeded {} customers ({} for the partner measured) in {:.0} s.",
        args.customers_total,
        args.book,
        seeding.elapsed().as_secs_f64()
    ));
    let lat = args.latency_spec();
    let depth = 1000;
    let deep = lists::token_at(ch0, &w.admin, &w.partner, depth).await?;
    let pid = up.pid();
    let who = (w.admin.as_str(), w.partner.as_str());
    let narrow = lists::selective_query(args.book);
    let page = |query, page_token, min| lists::PageReq {
        query,
        page_token,
        min,
    };
    let first = undisturbed(report, "ListCustomers page 1", label, || {
        lists::load_page(lat, ch, pid, who, page("", "", 50))
    })
    .await;
    let thousandth = undisturbed(
        report,
        &format!("ListCustomers page {depth}"),
        label,
        || lists::load_page(lat, ch, pid, who, page("", &deep, 50)),
    )
    .await;
    let selective = undisturbed(report, "ListCustomers prefix (selective)", label, || {
        lists::load_page(lat, ch, pid, who, page(&narrow, "", 1))
    })
    .await;
    let broad = undisturbed(
        report,
        "ListCustomers two letters (20% match)",
        label,
        || lists::load_page(lat, ch, pid, who, page("ab", "", 50)),
    )
    .await;
    let ok = |o: &Outcome| o.errors == 0;
    report.figure(
        "5a",
        label,
        format!("ListCustomers page {depth} vs page 1, p99"),
        p99_vs(&thousandth, &first),
        "≤ 1.2×",
        Some(thousandth.ms(0.99) <= 1.2 * first.ms(0.99) && ok(&thousandth) && ok(&first)),
    );
    report.figure(
        "5b",
        label,
        "ListCustomers prefix search vs B2, p99",
        p99_vs(&selective, b2),
        "≤ 5×",
        Some(selective.ms(0.99) <= 5.0 * b2.ms(0.99) && ok(&selective)),
    );
    report.figure(
        "5c",
        label,
        "ListCustomers two-letter query (20% of customers) vs selective, p99",
        p99_vs(&broad, &selective),
        "≤ 3×",
        Some(broad.ms(0.99) <= 3.0 * selective.ms(0.99) && ok(&broad)),
    );
    Ok(())
}

/// Figures 6 and 7: `sovra up` over mutual TLS (its default), SQLite.
async fn over_mtls(
    args: &RunArgs,
    bin: &Path,
    tmp: &Path,
    report: &mut Report,
) -> anyhow::Result<()> {
    let n = args.connections;
    let max = args.spec(None);
    // The plaintext twin: a `sovra up --plaintext` of its own beside the
    // mTLS one, their max-rate runs taking turns, so each ratio compares
    // runs made a few seconds apart on the same machine.
    let plain = plain_up(bin, &tmp.join("up-plain"), None, n).await?;
    let dir = tmp.join("up-tls");
    let up = Up {
        bin,
        dir: &dir,
        plaintext: false,
        database_url: None,
    };
    let (first, _, _) = procs::sovra_up(&up).await?;
    drop(first);
    // Start → SERVING on an existing data directory.
    let (proc, start, ch0) = procs::sovra_up(&up).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = load::rss_mib(proc.pid());
    let operator = procs::operator_token(&dir)?;
    let ch = procs::mtls(proc.addr, &dir.join("tls/ca.pem"), n).await?;
    let w = world::world(&ch0, &operator).await?;
    let pid = proc.pid();
    // Resident memory sampled through the run (KiB; the peak is kept).
    let peak_kib = Arc::new(AtomicU64::new(0));
    let sampler = {
        let peak_kib = peak_kib.clone();
        tokio::spawn(async move {
            loop {
                let now = (load::rss_mib(pid) * 1024.0) as u64;
                peak_kib.fetch_max(now, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let own = pb::AccessBasis::OwnRole;
    let mut pairs = Pairs::default();
    for r in 1..=args.repeats {
        let tag = args.run_tag(r);
        let plain_max = report.run(
            &format!("CheckAccess own role, plaintext twin, max rate{tag}"),
            "SQLite",
            check_access(
                max,
                &plain.ch,
                plain.up.pid(),
                &plain.w.admin,
                &plain.w.partner,
                own,
            )
            .await,
        );
        let tls_max = report.run(
            &format!("CheckAccess own role over mTLS, max rate{tag}"),
            "SQLite",
            check_access(max, &ch, pid, &w.admin, &w.partner, own).await,
        );
        pairs.push(tls_max, plain_max);
    }
    sampler.abort();
    drop(plain);
    let peak = peak_kib.load(Ordering::Relaxed) as f64 / 1024.0;
    throughput_figure(
        report,
        ("6", "SQLite"),
        "CheckAccess over mTLS (persistent connections) vs plaintext",
        &pairs,
        0.85,
    );
    report.figure(
        "7a",
        "SQLite",
        "`sovra up` resident memory, idle",
        format!("{idle:.1} MiB"),
        "≤ 60 MB",
        Some(idle <= 60.0),
    );
    report.figure(
        "7b",
        "SQLite",
        "`sovra up` resident memory under the CheckAccess load",
        format!("{peak:.1} MiB (peak, sampled every 100 ms)"),
        "≤ 200 MB",
        Some(peak <= 200.0),
    );
    report.figure(
        "7c",
        "SQLite",
        "`sovra up` start → SERVING, existing data directory (mTLS)",
        format!("{:.0} ms", start.as_secs_f64() * 1000.0),
        "≤ 1 s",
        Some(start <= Duration::from_secs(1)),
    );
    Ok(())
}

fn docs_tail() -> String {
    "\n## Running\n\n\
     ```sh\n\
     cargo build --release -p sovra -p sovra-bench && ./target/release/sovra-bench run\n\
     ```\n\n\
     About 35–45 minutes with PostgreSQL (37 on 2026-12-03). Options: `--seconds` (measured per run,\n\
     default 10, after a warm-up of a fifth of it), `--connections` (4) ×\n\
     `--inflight` (16), `--postgres` (a database to connect to; the suite makes\n\
     and drops `sovra_bench_*` databases beside it; empty: SQLite only),\n\
     `--contention-attempts` (1,000,000), `--book` (100,000) and\n\
     `--customers-total` (1,000,000), `--repeats` (3), `--only 1,2,…` and\n\
     `--no-sqlite` for shorter runs while working on one figure, `--out`. A run\n\
     smaller than the issue's scale gives figure 3b no verdict.\n\n\
     ## How it measures\n\n\
     - `sovra-bench` is a tonic client. Each run uses `connections` HTTP/2\n\
       connections with `inflight` requests outstanding on each; max-rate runs\n\
       send as fast as answers come, fixed-rate runs send on a schedule (with\n\
       four times as many workers, so one slow answer does not hold up the\n\
       requests due after it) and time each request from when it was due if\n\
       its worker was still waiting for its previous answer then (no\n\
       coordinated omission), else from when it was sent: tokio's timers wake\n\
       a sleeping worker up to ~2 ms late (1.5 ms at the median, idle), the\n\
       client's delay, which until 2026-12-03 was in every fixed-rate\n\
       latency. Counted runs stop after a number of requests.\n\
     - Fixed-rate comparisons (1b: B0 and Sovra; 1c: own role and delegated;\n\
       2: read-only and with grant changes) run `--repeats` times, taking\n\
       turns, and are read at the median p99: the client and the server share\n\
       two cores, so a single run's p99 moves by milliseconds.\n\
     - The maximum rates are medians too: B0's, the own role's and the\n\
       delegated path's max-rate runs take turns `--repeats` times; 1a reads\n\
       the median of the (own role, B0) pairs' ratios, 1b and 1c run at half\n\
       of B0's median maximum and figure 2 at half of the delegated path's\n\
       (a single run read B0 anywhere from 55k to 68k/s within an hour).\n\
     - Runs read for a tail (1b, 1c, 2, 5, and B2's for 5b), baselines and\n\
       Sovra's alike, are made again (at most twice) when other processes\n\
       used more than 0.15 s of CPU during them (\"others' CPU\": every process\n\
       in `/proc` but the client, the server, PostgreSQL's and the kernel's\n\
       own threads, children they reaped included). The kernel's threads work\n\
       for the run itself (writeback of the server's commits: 0.3–0.5 s a run\n\
       beside figure 2's grant changes, which counted as a disturbance until\n\
       2026-12-03; loopback network work). A quiet run reads 0.06–0.11 s (the\n\
       machine's other servers idling); the machines of this suite run a\n\
       RabbitMQ that starts an Erlang VM once a minute (`erl_child_setup`,\n\
       `epmd-starter`), which adds 0.1–0.3 s to the run it lands in, and\n\
       such a run read a p99 of 22–83 ms where its twins read 7–14. So are\n\
       runs whose machine had more than 3% of its time stolen by its host\n\
       (quiet runs read 0–1%; runs at 6–19% read p99s two to four times their\n\
       twins'). Disturbed runs stay in the table, marked, and are not read;\n\
       the third attempt is read whatever it shows, and if it was disturbed\n\
       too, the table says so and the figure's list of runs stars its p99.\n\
     - Figure 2 at a quarter: after the figure's runs, its read-only and\n\
       mixed runs take turns again at a quarter of the delegated maximum (the\n\
       changes at 1% of that rate), where the read-only runs leave the\n\
       machine about half idle. A note per backend reads them: what the\n\
       changes do to the checks apart from the machine's saturation. The\n\
       figure itself stays at half of the maximum.\n\
     - Figure 2's floor: after its runs, the same checks run `--repeats` times\n\
       beside B1 inserting one row durably at 2% of their rate, two commits\n\
       for each grant change (relationships and identity each commit one on\n\
       its own database) and nothing else; B1's CPU is not counted as a\n\
       disturbance there. A note reads their p99 against the read-only runs':\n\
       what committing the changes durably adds on this machine, before any\n\
       of the rest of Sovra's work for them.\n\
     - After figure 2's runs, the same churn runs beside checks at a trickle\n\
       (100/s), and then the trickle alone: the difference in CPU, over the\n\
       changes made, is what one grant change costs (a note per backend;\n\
       on PostgreSQL with its own processes' CPU, read from `/proc`).\n\
       Figure 2 adds about 0.01 × its rate × that cost to a machine its\n\
       read-only runs already keep about three quarters busy, so this cost\n\
       against a check's is what moves figure 2.\n\
     - The write figures (3a, 4, 4b) run `--repeats` times too, each run right\n\
       after a B1 run of its own (B1 stays up), and are read at the median of\n\
       the pairs' ratios: B1 moved twofold within an hour on a shared machine.\n\
       Figure 6 likewise: a plaintext `sovra up` of its own runs beside the\n\
       mTLS one, their max-rate runs taking turns.\n\
     - Latencies go into HDR histograms (1 µs – 60 s, 3 significant digits);\n\
       the tables give p50, p99 and p99.9. Expected refusals (product-key\n\
       contenders that lost) are timed in a histogram of their own.\n\
     - CPU: this process's and the server's utime + stime from `/proc`, over\n\
       the measured part of each run, in cores. PostgreSQL's own processes are\n\
       not counted (they share the two cores).\n\
     - Machine idle and steal: the whole machine's idle and stolen CPU time\n\
       (`/proc/stat`) over the same part of each run, as shares of all its\n\
       CPU time. Steal is time the hypervisor gave to other guests; it moved\n\
       from 0% to 35% within minutes on the shared machine this was tuned\n\
       on, and B1 with it (twofold). A throughput figure whose run and\n\
       baseline ran with steal more than 10 points apart is flagged in the\n\
       notes (per pair): that ratio measures the machine too.\n\
     - Baselines run as processes of their own, answering identity's\n\
       `CheckAccess` (the same message sizes) with tonic's default socket\n\
       options (TCP_NODELAY, as Sovra's listener) and Sovra's allocator\n\
       (mimalloc, as the load generator). Their requests carry an\n\
       `authorization: Bearer` header as long as Sovra's access tokens (a\n\
       token issued for the same configuration by a throwaway key; nothing\n\
       verifies it): a Rust HTTP/2 client never indexes an authorization\n\
       value in HPACK, so every request sends the ~470 characters again,\n\
       Huffman-coded, and every server decodes them again, about 7 µs of the\n\
       server's CPU and 8 µs of the client's per request on this machine\n\
       (`perf`: HPACK decoding was 11.5% of `sovra up`'s CPU under\n\
       CheckAccess). That is the transport's cost for a request of this size,\n\
       not Sovra's; looking the token up, checking it and deciding are\n\
       Sovra's. B0 without the header runs once for reference. B0 answers at\n\
       once, B1 commits a\n\
       one-row INSERT, B2 reads one row by primary key, both through sqlx's\n\
       own pool (not Sovra's, which parks connections without sqlx's ping on\n\
       release) with Sovra's pool sizes and durability, on each backend.\n\
     - Sovra runs as `sovra up` (all three services in one process, calling\n\
       each other in-process), on SQLite\n\
       files or on three fresh PostgreSQL databases (`--database-url`),\n\
       plaintext beside the plaintext baselines, and over mutual TLS for\n\
       figures 6 and 7 (SQLite). Its data is made over gRPC as a user would:\n\
       one partner with a FULL-access agent and a customer whose delegated\n\
       administrator it is; figure 2 adds four customers whose delegations are\n\
       removed and given again (each removal and each acceptance is one grant\n\
       change, pushed to identity); figure 4b sixteen customers who each redeem\n\
       every offer figure 4 created; figure 3 imports its keys as the operator.\n\
       Figure 5 seeds `partner_customers` directly (one partner with `--book`\n\
       customers, others up to `--customers-total`), one in five named \"Ab…\"\n\
       so the two-letter query matches 20%; its runs use one connection with\n\
       four requests in flight (B2 beside them likewise), so p99 is service\n\
       time rather than queueing. Rate limits are lifted for the run (one\n\
       partner at full speed).\n"
        .to_owned()
}
