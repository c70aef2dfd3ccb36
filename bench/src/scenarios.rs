//! The suite: starts each baseline and `sovra up` as processes of their
//! own, loads them in turn, and checks the figures the performance issue
//! sets against the baselines of the same run.

use std::{
    io::BufRead,
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context;
use sovra_proto::{commerce::v1 as com, identity::v1 as pb, relationships::v1 as rel};
use sovra_runtime::tls;
use tonic::{metadata::MetadataValue, transport::Channel, Request};

use crate::{
    baseline::{self, Mode},
    load::{self, Outcome},
    report::Report,
    RunArgs,
};

const PASSWORD: &str = "Bench-Horse-42";

/// A child process, killed when dropped.
struct Proc {
    child: Child,
    addr: SocketAddr,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn baseline(mode: Mode, database: &str) -> anyhow::Result<Proc> {
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
async fn plain(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<Channel>> {
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
async fn mtls(addr: SocketAddr, ca: &Path, n: usize) -> anyhow::Result<Vec<Channel>> {
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

/// `sovra up` in `dir`; returns when health says SERVING, with the time
/// from spawn to then.
async fn sovra_up(
    bin: &Path,
    dir: &Path,
    plaintext: bool,
) -> anyhow::Result<(Proc, Duration, Vec<Channel>)> {
    let addr = free_port()?;
    let started = Instant::now();
    let mut cmd = Command::new(bin);
    cmd.args(["up", "--data-dir"])
        .arg(dir)
        .args(["--listen", &addr.to_string()])
        .env("SOVRA_LOG", "warn")
        .env("SOVRA__SERVER__ADMIN_LISTEN", "")
        // The suite is one partner at full speed: no rate limits in the way.
        .env("SOVRA__LIMITS__PARTNER_BURST", "100000000")
        .env("SOVRA__LIMITS__PARTNER_PER_MINUTE", "100000000")
        .env("SOVRA__LIMITS__CUSTOMER_BURST", "100000000")
        .env("SOVRA__LIMITS__CUSTOMER_PER_MINUTE", "100000000")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if plaintext {
        cmd.arg("--plaintext");
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    let proc = Proc { child, addr };
    let ca = dir.join("tls/ca.pem");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "sovra up did not become SERVING in 30 s"
        );
        let channel = if plaintext {
            plain(addr, 1).await.ok()
        } else if ca.exists() {
            mtls(addr, &ca, 1).await.ok()
        } else {
            None
        };
        if let Some(ch) = channel {
            let mut health = tonic_health::pb::health_client::HealthClient::new(ch[0].clone());
            if let Ok(r) = health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
            {
                if r.into_inner().status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                {
                    let took = started.elapsed();
                    return Ok((proc, took, ch));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn authed<T>(token: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    if let Ok(v) = MetadataValue::try_from(format!("Bearer {token}")) {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

/// What the scenarios act with.
struct World {
    partner: String,
    customer: String,
    /// The partner's global admin (own role in the partner tenant).
    admin: String,
    /// A FULL-access agent (delegated in the customer tenant).
    agent: String,
}

async fn sign_in(ch: &Channel, upn: &str) -> anyhow::Result<String> {
    Ok(pb::auth_service_client::AuthServiceClient::new(ch.clone())
        .sign_in(pb::SignInRequest {
            user_principal_name: upn.into(),
            password: PASSWORD.into(),
        })
        .await?
        .into_inner()
        .access_token)
}

async fn tenant(
    ch: &Channel,
    operator: &str,
    kind: pb::TenantKind,
    name: &str,
) -> anyhow::Result<(String, String, String)> {
    let domain = format!(
        "{name}-{}.example",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let upn = format!("admin@{domain}");
    let t = pb::tenant_service_client::TenantServiceClient::new(ch.clone())
        .create_tenant(authed(
            operator,
            pb::CreateTenantRequest {
                kind: kind as i32,
                display_name: name.into(),
                primary_domain: domain.clone(),
                first_admin: Some(pb::FirstAdmin {
                    user_principal_name: upn.clone(),
                    display_name: format!("{name} admin"),
                    password: PASSWORD.into(),
                }),
                ..Default::default()
            },
        ))
        .await?
        .into_inner()
        .tenant
        .context("no tenant")?;
    Ok((t.id, domain, sign_in(ch, &upn).await?))
}

/// A partner with an agent, and a customer that made it its delegated
/// administrator.
async fn world(ch: &Channel, operator: &str) -> anyhow::Result<World> {
    let (partner, domain, admin) = tenant(ch, operator, pb::TenantKind::Partner, "contoso").await?;
    pb::tenant_service_client::TenantServiceClient::new(ch.clone())
        .set_partner_authorizations(authed(
            operator,
            pb::SetPartnerAuthorizationsRequest {
                tenant_id: partner.clone(),
                authorizations: vec![
                    pb::PartnerAuthorization::SubscriptionAdvisor as i32,
                    pb::PartnerAuthorization::DelegatedAdmin as i32,
                ],
                ..Default::default()
            },
        ))
        .await?;
    let upn = format!("agent@{domain}");
    pb::user_service_client::UserServiceClient::new(ch.clone())
        .create_user(authed(
            &admin,
            pb::CreateUserRequest {
                tenant_id: partner.clone(),
                user_principal_name: upn.clone(),
                display_name: "agent".into(),
                supported_companies_access: pb::SupportedCompaniesAccess::Full as i32,
                password: PASSWORD.into(),
                ..Default::default()
            },
        ))
        .await?;
    let agent = sign_in(ch, &upn).await?;
    let admin_token = admin.clone();
    let (customer, _, customer_admin) =
        tenant(ch, operator, pb::TenantKind::Customer, "fabrikam").await?;
    let code = rel::delegated_admin_service_client::DelegatedAdminServiceClient::new(ch.clone())
        .create_delegated_admin_offer(authed(
            &admin,
            rel::CreateDelegatedAdminOfferRequest {
                partner_tenant_id: partner.clone(),
                ..Default::default()
            },
        ))
        .await?
        .into_inner()
        .offer
        .context("no offer")?
        .code;
    rel::delegated_admin_service_client::DelegatedAdminServiceClient::new(ch.clone())
        .accept_delegated_admin_offer(authed(
            &customer_admin,
            rel::AcceptDelegatedAdminOfferRequest {
                code,
                customer_tenant_id: customer.clone(),
                ..Default::default()
            },
        ))
        .await?;
    Ok(World {
        partner,
        customer,
        admin: admin_token,
        agent,
    })
}

/// A failed call as the report shows it.
fn refusal(s: tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

fn check_req(token: &str, tenant: &str, p: pb::Permission) -> Request<pb::CheckAccessRequest> {
    authed(
        token,
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
    token: String,
    tenant: String,
    basis: pb::AccessBasis,
) -> Outcome {
    load::run(spec, channels, pid, move |ch, _| {
        let req = check_req(&token, &tenant, pb::Permission::UsersRead);
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

/// The baseline's CheckAccess: B0 answers at once, B1 inserts, B2 selects
/// the row named by the tenant id.
async fn base_load(spec: load::Spec, p: &Proc, channels: &[Channel]) -> Outcome {
    load::run(spec, channels, p.pid(), |ch, n| async move {
        pb::access_service_client::AccessServiceClient::new(ch)
            .check_access(pb::CheckAccessRequest {
                user_id: format!("user-{n}"),
                tenant_id: baseline::seeded_id(n),
                permission: pb::Permission::UsersRead as i32,
            })
            .await
            .map(|_| ())
            .map_err(refusal)
    })
    .await
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
        "`sovra-bench run --seconds {} --connections {} --inflight {}`",
        args.seconds, args.connections, args.inflight
    );
    std::fs::write(
        &args.out,
        report.markdown(&machine(), &how) + &docs_tail() + include_str!("../HISTORY.md"),
    )?;
    println!("wrote {}", args.out.display());
    Ok(())
}

async fn suite(args: &RunArgs, bin: &Path, tmp: &Path, report: &mut Report) -> anyhow::Result<()> {
    let n = args.connections;
    let max = args.spec(None);

    // B0, and CheckAccess beside it (plaintext, as B0 is).
    let b0 = baseline(Mode::Echo, "")?;
    let b0_ch = plain(b0.addr, n).await?;
    let b0_max = report.run("B0 echo, max rate", "—", base_load(max, &b0, &b0_ch).await);
    let half = b0_max.throughput() / 2.0;
    let b0_half = report.run(
        &format!("B0 echo at {half:.0}/s"),
        "—",
        base_load(args.spec(Some(half)), &b0, &b0_ch).await,
    );
    drop(b0);

    let dir = tmp.join("up");
    let (up, first_start, _) = sovra_up(bin, &dir, true).await?;
    let operator = std::fs::read_to_string(dir.join("operator.token"))?
        .trim()
        .to_owned();
    let ch = plain(up.addr, n).await?;
    let w = world(&ch[0], &operator).await?;
    let own = report.run(
        "CheckAccess own role, max rate",
        "SQLite",
        check_access(
            max,
            &ch,
            up.pid(),
            w.admin.clone(),
            w.partner.clone(),
            pb::AccessBasis::OwnRole,
        )
        .await,
    );
    let own_half = report.run(
        &format!("CheckAccess own role at {half:.0}/s"),
        "SQLite",
        check_access(
            args.spec(Some(half)),
            &ch,
            up.pid(),
            w.admin.clone(),
            w.partner.clone(),
            pb::AccessBasis::OwnRole,
        )
        .await,
    );
    let delegated_half = report.run(
        &format!("CheckAccess delegated at {half:.0}/s"),
        "SQLite",
        check_access(
            args.spec(Some(half)),
            &ch,
            up.pid(),
            w.agent.clone(),
            w.customer.clone(),
            pb::AccessBasis::DelegatedFull,
        )
        .await,
    );
    let r = ratio(own.throughput(), b0_max.throughput());
    report.figure(
        "1a",
        "CheckAccess throughput vs B0",
        format!(
            "{:.0}/s vs {:.0}/s = {:.0}%",
            own.throughput(),
            b0_max.throughput(),
            r * 100.0
        ),
        "≥ 50%",
        Some(r >= 0.5 && own.errors == 0),
    );
    report.figure(
        "1b",
        "CheckAccess p99 at half of B0's max rate",
        format!(
            "{:.2} ms vs B0 {:.2} ms",
            own_half.ms(0.99),
            b0_half.ms(0.99)
        ),
        "≤ B0 + 1 ms",
        Some(own_half.ms(0.99) <= b0_half.ms(0.99) + 1.0 && own_half.errors == 0),
    );
    report.figure(
        "1c",
        "CheckAccess delegated p99 vs own role (same rate)",
        format!(
            "{:.2} ms vs {:.2} ms = {:.2}×",
            delegated_half.ms(0.99),
            own_half.ms(0.99),
            ratio(delegated_half.ms(0.99), own_half.ms(0.99))
        ),
        "≤ 2×",
        Some(delegated_half.ms(0.99) <= 2.0 * own_half.ms(0.99) && delegated_half.errors == 0),
    );
    report.notes.push(format!(
        "`sovra up --plaintext` on a new data directory: SERVING after {:.0} ms (it creates three SQLite databases and the signing key).",
        first_start.as_secs_f64() * 1000.0
    ));

    // Figure 4: offer and link creation (commerce → identity inside).
    let agent = w.agent.clone();
    let partner = w.partner.clone();
    let offers = report.run(
        "CreatePurchaseOffer, max rate",
        "SQLite",
        load::run(max, &ch, up.pid(), move |ch, n| {
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
            async move {
                com::purchase_offer_service_client::PurchaseOfferServiceClient::new(ch)
                    .create_purchase_offer(req)
                    .await
                    .map(|_| ())
                    .map_err(refusal)
            }
        })
        .await,
    );
    drop(ch);
    drop(up);

    // B1 and B2 on SQLite, beside figure 4.
    let b1 = baseline(
        Mode::Insert,
        &format!("sqlite://{}?mode=rwc", tmp.join("b1.db").display()),
    )?;
    let b1_ch = plain(b1.addr, n).await?;
    let b1_sqlite = report.run(
        "B1 insert, max rate",
        "SQLite",
        base_load(max, &b1, &b1_ch).await,
    );
    drop(b1);
    let b2 = baseline(
        Mode::Select,
        &format!("sqlite://{}?mode=rwc", tmp.join("b2.db").display()),
    )?;
    let b2_ch = plain(b2.addr, n).await?;
    report.run(
        "B2 select, max rate",
        "SQLite",
        base_load(max, &b2, &b2_ch).await,
    );
    drop(b2);
    let r = ratio(offers.throughput(), b1_sqlite.throughput());
    report.figure(
        "4",
        "CreatePurchaseOffer throughput vs B1 (SQLite)",
        format!(
            "{:.0}/s vs {:.0}/s = {:.0}%",
            offers.throughput(),
            b1_sqlite.throughput(),
            r * 100.0
        ),
        "≥ 50%",
        Some(r >= 0.5 && offers.errors == 0),
    );

    // Figures 6 and 7: `sovra up` over mutual TLS (its default).
    let dir = tmp.join("up-tls");
    let (up, _, _) = sovra_up(bin, &dir, false).await?;
    drop(up);
    // Start → SERVING on an existing data directory.
    let (up, start, _) = sovra_up(bin, &dir, false).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = load::rss_mib(up.pid());
    let operator = std::fs::read_to_string(dir.join("operator.token"))?
        .trim()
        .to_owned();
    let ca = dir.join("tls/ca.pem");
    let ch = mtls(up.addr, &ca, n).await?;
    let w = world(&ch[0], &operator).await?;
    let pid = up.pid();
    // Resident memory sampled through the run (KiB; the peak is kept).
    let peak_kib = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let peak_kib = peak_kib.clone();
        tokio::spawn(async move {
            loop {
                let now = (load::rss_mib(pid) * 1024.0) as u64;
                peak_kib.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let tls_max = report.run(
        "CheckAccess own role over mTLS, max rate",
        "SQLite",
        check_access(
            max,
            &ch,
            pid,
            w.admin.clone(),
            w.partner.clone(),
            pb::AccessBasis::OwnRole,
        )
        .await,
    );
    sampler.abort();
    let peak = peak_kib.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0;
    drop(ch);
    drop(up);
    let r = ratio(tls_max.throughput(), own.throughput());
    report.figure(
        "6",
        "CheckAccess over mTLS (persistent connections) vs plaintext",
        format!(
            "{:.0}/s vs {:.0}/s = {:.0}%",
            tls_max.throughput(),
            own.throughput(),
            r * 100.0
        ),
        "≥ 85%",
        Some(r >= 0.85 && tls_max.errors == 0),
    );
    report.figure(
        "7a",
        "`sovra up` resident memory, idle",
        format!("{idle:.1} MiB"),
        "≤ 60 MB",
        Some(idle <= 60.0),
    );
    report.figure(
        "7b",
        "`sovra up` resident memory under the CheckAccess load",
        format!("{peak:.1} MiB (peak, sampled every 100 ms)"),
        "≤ 200 MB",
        Some(peak <= 200.0),
    );
    report.figure(
        "7c",
        "`sovra up` start → SERVING, existing data directory (mTLS)",
        format!("{:.0} ms", start.as_secs_f64() * 1000.0),
        "≤ 1 s",
        Some(start <= Duration::from_secs(1)),
    );

    // PostgreSQL baselines.
    if !args.postgres.is_empty() {
        match baseline(Mode::Insert, &args.postgres) {
            Ok(b1) => {
                let b1_ch = plain(b1.addr, n).await?;
                report.run(
                    "B1 insert, max rate",
                    "PostgreSQL",
                    base_load(max, &b1, &b1_ch).await,
                );
                drop(b1);
                let b2 = baseline(Mode::Select, &args.postgres)?;
                let b2_ch = plain(b2.addr, n).await?;
                report.run(
                    "B2 select, max rate",
                    "PostgreSQL",
                    base_load(max, &b2, &b2_ch).await,
                );
            }
            Err(e) => report
                .notes
                .push(format!("PostgreSQL baselines skipped: {e}")),
        }
    }
    for (number, what) in [
        (
            "2",
            "CheckAccess p99 with 1% delegated-grant changes mixed in",
        ),
        (
            "3",
            "Product-key redemption vs B1; 64 contenders per key over 1,000,000 attempts",
        ),
        ("4b", "Link redemption vs B1"),
        ("5", "ListCustomers at 100,000 / 1,000,000 customers"),
    ] {
        report.figure(number, what, "not in the suite yet", "see the issue", None);
    }
    report.figure(
        "—",
        "Sovra's scenarios on PostgreSQL",
        "not in the suite yet (`sovra up` is SQLite; only the baselines run on PostgreSQL)",
        "every scenario on both backends",
        None,
    );
    Ok(())
}

fn docs_tail() -> String {
    "\n## Running\n\n\
     ```sh\n\
     cargo build --release -p sovra -p sovra-bench && ./target/release/sovra-bench run\n\
     ```\n\n\
     Options: `--seconds` (measured per run, default 10, after a warm-up of a\n\
     fifth of it), `--connections` (4) × `--inflight` (16), `--postgres` (the\n\
     PostgreSQL baselines' database; empty skips them), `--out`.\n\n\
     ## How it measures\n\n\
     - `sovra-bench` is a tonic client. Each run uses `connections` HTTP/2\n\
       connections with `inflight` requests outstanding on each; max-rate runs\n\
       send as fast as answers come, fixed-rate runs send on a schedule and time\n\
       each request from when it was due (no coordinated omission).\n\
     - Latencies go into HDR histograms (1 µs – 60 s, 3 significant digits);\n\
       the tables give p50, p99 and p99.9.\n\
     - CPU: this process's and the server's utime + stime from `/proc`, over\n\
       the measured part of each run, in cores.\n\
     - Baselines run as processes of their own, answering identity's\n\
       `CheckAccess` (the same message sizes): B0 answers at once, B1 commits a\n\
       one-row INSERT, B2 reads one row by primary key, both through sqlx with\n\
       Sovra's own pool settings and durability.\n\
     - Sovra runs as `sovra up` (all three services in one process, SQLite),\n\
       plaintext beside the plaintext baselines, and over mutual TLS for figures\n\
       6 and 7. The scenarios' data: one partner with a FULL-access agent and one\n\
       customer whose delegated administrator the partner is. Rate limits are\n\
       lifted for the run (one partner at full speed).\n"
        .to_owned()
}
