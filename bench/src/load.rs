//! The load generator: `connections` HTTP/2 connections, each with
//! `inflight` requests outstanding, for a time; as fast as the server
//! answers (max rate) or at a fixed total rate. Latencies go into HDR
//! histograms; at a fixed rate each is measured from when the request was
//! due when the server held its worker up past that, so a stalled server
//! can't hide its queue (no coordinated omission), and from when it was
//! sent otherwise (see [`counted_from`]).

use std::{
    collections::HashMap,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use tonic::transport::Channel;

/// How to load.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub connections: usize,
    pub inflight: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Requests per second in all; None: as fast as answered.
    pub rate: Option<f64>,
    /// Stop after this many requests (counted from the first, warm-up
    /// included); None: run for `warmup + duration`.
    pub limit: Option<u64>,
}

impl Spec {
    /// Workers: one per request in flight; at a fixed rate four times as
    /// many, so a slow answer doesn't hold up the requests due after it (the
    /// schedule is kept by the spare workers, not by the slow one).
    fn workers(&self) -> usize {
        let n = self.connections * self.inflight;
        if self.rate.is_some() {
            n * 4
        } else {
            n
        }
    }
}

/// What one call answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Ok,
    /// An expected refusal, timed apart from the successes: a contender
    /// that lost the race for a product key.
    Lost,
}

impl From<()> for Answer {
    fn from(_: ()) -> Self {
        Answer::Ok
    }
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub ok: u64,
    /// Answers that were `Answer::Lost`, and their latencies in `lost_hist`.
    pub lost: u64,
    pub lost_hist: Histogram<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    /// Latencies in microseconds.
    pub hist: Histogram<u64>,
    /// CPU seconds used by this process (the client) and by the server.
    pub client_cpu: f64,
    pub server_cpu: f64,
    /// The whole machine's CPU time over the run (see [`MachineTicks`]).
    pub machine: MachineTicks,
    /// CPU seconds used over the run by every process but the client, the
    /// server and PostgreSQL's (see [`Outcome::disturbance`]).
    pub others_cpu: f64,
}

impl Outcome {
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// The `Answer::Lost` answers as an outcome of their own (for the report).
    pub fn losers(&self) -> Outcome {
        Outcome {
            ok: self.lost,
            hist: self.lost_hist.clone(),
            lost: 0,
            lost_hist: histogram(),
            ..self.clone()
        }
    }

    /// A latency quantile in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    /// Cores used, client and server, over the measured time.
    pub fn cores(&self) -> (f64, f64) {
        let t = self.elapsed.as_secs_f64();
        (self.client_cpu / t, self.server_cpu / t)
    }

    /// Whether something else took a share of the machine's two cores
    /// during the run that decides a tail, and what: more than
    /// [`DISTURBING_CPU`] of other processes' CPU, or more than
    /// [`DISTURBING_STEAL`] of the machine's time stolen by its host.
    pub fn disturbance(&self) -> Option<String> {
        let (_, steal) = self.machine.shares();
        if self.others_cpu > DISTURBING_CPU {
            Some(format!(
                "other processes used {:.2} s of CPU",
                self.others_cpu
            ))
        } else if steal > DISTURBING_STEAL {
            Some(format!(
                "the host stole {:.0}% of the machine's time",
                steal * 100.0
            ))
        } else {
            None
        }
    }
}

/// The share of the machine's time its host may steal in one run before
/// the run is disturbed. Seen on the machine of docs/benchmarks.md: 0–1% in
/// quiet runs; 6–19% in runs whose p99s read two to four times their
/// twins' (the host busy with other guests, which no repeat on this side
/// can tell from a slower Sovra).
pub const DISTURBING_STEAL: f64 = 0.03;

/// CPU seconds of other processes over one run beyond which a run is
/// disturbed. Seen on the machines of docs/benchmarks.md, kernel threads
/// not counted: 0.06–0.11 s in a quiet run of 10–12 s (the machine's other
/// servers idling), and 0.1–0.3 s more when the machine's RabbitMQ started
/// an Erlang VM (`erl_child_setup`, `epmd-starter`, once a minute), which
/// stalls whatever shares its core: p99s of 22–83 ms where the run's twins
/// read 7–14 ms. Max-rate runs are not made again.
pub const DISTURBING_CPU: f64 = 0.15;

/// The same fixed-rate run made several times, alternating with the runs it
/// is compared with. A verdict reads the run with the median p99, so one
/// run disturbed by the client and the server sharing two cores neither
/// makes nor breaks a figure.
#[derive(Default)]
pub struct Repeated(Vec<Outcome>);

impl Repeated {
    pub fn push(&mut self, run: Outcome) {
        self.0.push(run);
    }

    /// The run whose p99 is the median (the higher middle one of an even
    /// count).
    pub fn median(&self) -> &Outcome {
        let mut runs: Vec<&Outcome> = self.0.iter().collect();
        runs.sort_by(|a, b| a.ms(0.99).total_cmp(&b.ms(0.99)));
        runs[runs.len() / 2]
    }

    /// Errors over every run.
    pub fn errors(&self) -> u64 {
        self.0.iter().map(|r| r.errors).sum()
    }

    /// Every run's p99, in the order they ran, for the report; a run read
    /// although disturbed (see `Outcome::disturbance`) is starred.
    pub fn p99s(&self) -> String {
        let ms: Vec<String> = self
            .0
            .iter()
            .map(|r| {
                let star = if r.disturbance().is_some() { "*" } else { "" };
                format!("{:.2}{star}", r.ms(0.99))
            })
            .collect();
        ms.join(", ")
    }
}

/// A throughput figure's runs, each made right after a baseline run of its
/// own (run, baseline), and read at the median ratio: the hypervisor's
/// steal moves a baseline twofold within minutes, so only a run and the
/// baseline beside it compare.
#[derive(Default)]
pub struct Pairs(Vec<(Outcome, Outcome)>);

impl Pairs {
    pub fn push(&mut self, run: Outcome, base: Outcome) {
        self.0.push((run, base));
    }

    pub fn iter(&self) -> impl Iterator<Item = &(Outcome, Outcome)> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Each pair's run throughput over its baseline's, in the order they ran.
    pub fn ratios(&self) -> Vec<f64> {
        self.0
            .iter()
            .map(|(run, base)| match base.throughput() {
                b if b > 0.0 => run.throughput() / b,
                _ => 0.0,
            })
            .collect()
    }

    /// The median ratio (the higher middle one of an even count; 0 with no
    /// pairs).
    pub fn median_ratio(&self) -> f64 {
        median(self.ratios())
    }

    /// Errors over every run (not counting the baselines').
    pub fn errors(&self) -> u64 {
        self.0.iter().map(|(run, _)| run.errors).sum()
    }
}

/// The middle value (the upper one of an even count); 0 for none.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// 1 µs to 60 s, three significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds")
}

/// CPU seconds `pid` (None: this process) has used, from /proc (utime +
/// stime, at the kernel's usual 100 ticks a second).
pub fn cpu_seconds(pid: Option<u32>) -> f64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    // utime and stime.
    stat_seconds(rest, 2)
}

/// CPU seconds every process named `name` has used (utime + stime, as
/// [`cpu_seconds`]): PostgreSQL's server and its backends, say, which
/// start and end with connections.
pub fn cpu_seconds_named(name: &str) -> f64 {
    pids()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .map(|pid| cpu_seconds(Some(pid)))
        .sum()
}

/// Every process's pid, from /proc (none if it can't be read).
fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
}

/// The kernel's clock ticks (USER_HZ) in /proc: 100 a second on Linux.
const TICKS_PER_SECOND: f64 = 100.0;

/// The machine's CPU time (all cores) from the first line of /proc/stat, in
/// ticks: how much was idle, and how much the hypervisor gave to other
/// guests (steal). A shared VM's steal moves from minute to minute; a
/// baseline and a scenario run under different steal are not comparable.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MachineTicks {
    pub total: f64,
    pub idle: f64,
    pub steal: f64,
}

impl MachineTicks {
    pub fn now() -> Self {
        std::fs::read_to_string("/proc/stat")
            .map(|s| Self::parse(&s))
            .unwrap_or_default()
    }

    /// `cpu  user nice system idle iowait irq softirq steal guest guest_nice`
    /// (guest time is already counted in user).
    fn parse(stat: &str) -> Self {
        let f: Vec<f64> = stat
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|v| v.parse().unwrap_or(0.0))
            .collect();
        let at = |i: usize| f.get(i).copied().unwrap_or(0.0);
        Self {
            total: f.iter().sum(),
            idle: at(3) + at(4),
            steal: at(7),
        }
    }

    /// What passed between `earlier` and `self`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            total: self.total - earlier.total,
            idle: self.idle - earlier.idle,
            steal: self.steal - earlier.steal,
        }
    }

    /// Idle and steal as fractions of the time that passed (0 when none
    /// was counted).
    pub fn shares(&self) -> (f64, f64) {
        if self.total <= 0.0 {
            return (0.0, 0.0);
        }
        (self.idle / self.total, self.steal / self.total)
    }
}

/// Resident memory of `pid` in MiB (VmRSS).
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Runs `call` under `spec` over `channels` (one per connection); `server`
/// is the server's pid, for its CPU. `call` gets a channel and a sequence
/// number unique in the run, and says whether the answer was a success.
pub async fn run<F, Fut, A>(spec: Spec, channels: &[Channel], server: u32, call: F) -> Outcome
where
    F: Fn(Channel, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<A, String>> + Send,
    A: Into<Answer>,
{
    let call = Arc::new(call);
    let workers = spec.workers();
    let seq = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let begin = Instant::now();
    let measure_from = begin + spec.warmup;
    let end = measure_from + spec.duration;
    // At a fixed rate each worker sends every `period`, staggered.
    let period = spec
        .rate
        .map(|r| Duration::from_secs_f64(workers as f64 / r.max(0.001)));
    // The CPU counters as measuring begins, read off the load's own workers
    // (reading every process in /proc takes a few milliseconds).
    let mark = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        tokio::task::spawn_blocking(move || CpuMark::now(server)).await
    });
    let mut tasks = Vec::with_capacity(workers);
    for w in 0..workers {
        let channel = channels[w % channels.len()].clone();
        let call = call.clone();
        let seq = seq.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let mut lost_hist = histogram();
            let (mut ok, mut lost, mut errors, mut first_error) = (0u64, 0u64, 0u64, None);
            let mut due = begin
                + period
                    .unwrap_or_default()
                    .mul_f64(w as f64 / workers as f64);
            // When this worker's previous call was answered.
            let mut free_at = begin;
            loop {
                let start = match period {
                    Some(p) => {
                        let s = due;
                        tokio::time::sleep_until(s.into()).await;
                        due += p;
                        counted_from(s, free_at, Instant::now())
                    }
                    None => Instant::now(),
                };
                if start >= end {
                    break;
                }
                let n = seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if spec.limit.is_some_and(|l| n >= l) {
                    break;
                }
                let result = call(channel.clone(), n).await;
                free_at = Instant::now();
                let took = free_at.saturating_duration_since(start);
                if start < measure_from {
                    continue;
                }
                let micros = (took.as_micros() as u64).max(1);
                match result.map(Into::into) {
                    Ok(Answer::Ok) => {
                        ok += 1;
                        let _ = hist.record(micros);
                    }
                    Ok(Answer::Lost) => {
                        lost += 1;
                        let _ = lost_hist.record(micros);
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            (hist, lost_hist, ok, lost, errors, first_error)
        }));
    }
    let mut hist = histogram();
    let mut lost_hist = histogram();
    let (mut ok, mut lost, mut errors, mut first_error) = (0, 0, 0, None);
    for t in tasks {
        let (h, lh, o, l, e, f) = t.await.expect("a load worker panicked");
        hist.add(&h).expect("same bounds");
        lost_hist.add(&lh).expect("same bounds");
        ok += o;
        lost += l;
        errors += e;
        if first_error.is_none() {
            first_error = f;
        }
    }
    let elapsed = Instant::now().saturating_duration_since(measure_from);
    // A run cut short by its limit before measuring began has no mark.
    let start = match mark.is_finished() {
        true => mark.await.ok().and_then(Result::ok),
        false => {
            mark.abort();
            None
        }
    }
    .unwrap_or_else(|| CpuMark::now(server));
    let (client_cpu, server_cpu, machine, others_cpu) = CpuMark::now(server).since(&start);
    Outcome {
        ok,
        lost,
        lost_hist,
        errors,
        first_error,
        elapsed,
        hist,
        client_cpu,
        server_cpu,
        machine,
        others_cpu,
    }
}

/// What a fixed-rate request's latency is counted from: when it was due
/// if its worker was still waiting for its previous answer then (the
/// server held it up: counting from when it was sent would hide the
/// server's queue), else when it was sent. A worker that was free is only
/// late because its timer woke it late: tokio's timers and the epoll wait
/// under them tick in whole milliseconds, so a sleep ends up to ~2 ms
/// after its deadline (1.5 ms at the median on an idle machine), which is
/// the client's delay, not the server's.
fn counted_from(due: Instant, free_at: Instant, sent: Instant) -> Instant {
    if free_at > due {
        due
    } else {
        sent
    }
}

/// CPU counters read at one moment: this process (the client), the
/// server, the machine, and every other process but PostgreSQL's.
#[derive(Debug, Clone)]
struct CpuMark {
    client: f64,
    server: f64,
    machine: MachineTicks,
    others: HashMap<u32, f64>,
}

impl CpuMark {
    fn now(server: u32) -> Self {
        let me = std::process::id();
        let others = pids()
            .filter(|&pid| pid != me && pid != server)
            .filter_map(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let (name, rest) = stat.split_once(" (")?.1.rsplit_once(')')?;
                (name != "postgres" && !kernel_thread(rest)).then(|| (pid, reaped_too(rest)))
            })
            .collect();
        Self {
            client: cpu_seconds(None),
            server: cpu_seconds(Some(server)),
            machine: MachineTicks::now(),
            others,
        }
    }

    /// Since `earlier`: the client's and the server's CPU seconds, the
    /// machine's ticks, and the CPU seconds every other process used (one
    /// that began since counts in full; one that ended since, in the
    /// parent that reaped it).
    fn since(&self, earlier: &Self) -> (f64, f64, MachineTicks, f64) {
        let others = self
            .others
            .iter()
            .map(|(pid, now)| now - earlier.others.get(pid).copied().unwrap_or(0.0))
            // A pid used again by a process that used less.
            .filter(|d| *d > 0.0)
            .sum();
        (
            self.client - earlier.client,
            self.server - earlier.server,
            self.machine.since(earlier.machine),
            others,
        )
    }
}

/// Whether /proc/PID/stat (what follows the command name) is a kernel
/// thread's: `PF_KTHREAD` in its flags (field 9). Kernel threads work mostly
/// for the processes measured (writeback of the server's writes, loopback
/// network work), so they are not "other processes" disturbing a run.
fn kernel_thread(rest: &str) -> bool {
    const PF_KTHREAD: u64 = 0x0020_0000;
    // 0-based after the command name, field 9 is the 7th.
    rest.split_whitespace()
        .nth(6)
        .and_then(|f| f.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_KTHREAD != 0)
}

/// A process's CPU seconds and its reaped children's, from what follows
/// the command name in /proc/PID/stat.
fn reaped_too(rest: &str) -> f64 {
    // utime, stime, cutime, cstime.
    stat_seconds(rest, 4)
}

/// The first `n` CPU-time fields of /proc/PID/stat (utime, stime, cutime,
/// cstime: fields 14–17) in seconds, from what follows the command name.
fn stat_seconds(rest: &str, n: usize) -> f64 {
    // 0-based after the command name, field 14 is the 12th.
    rest.split_whitespace()
        .skip(11)
        .take(n)
        .map(|v| v.parse::<f64>().unwrap_or(0.0))
        .sum::<f64>()
        / TICKS_PER_SECOND
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_run_is_read_at_its_median_p99() {
        let run = |p99_us: u64, errors: u64| {
            let mut hist = histogram();
            hist.record(p99_us).unwrap();
            Outcome {
                ok: 1,
                errors,
                hist,
                ..empty_outcome()
            }
        };
        let mut r = Repeated::default();
        // Below 2,048 µs the histogram keeps every microsecond.
        for (p99, errors) in [(1_900, 0), (100, 1), (1_000, 0)] {
            r.push(run(p99, errors));
        }
        assert_eq!(r.median().ms(0.99), 1.0);
        assert_eq!(r.errors(), 1);
        assert_eq!(r.p99s(), "1.90, 0.10, 1.00");
        r.push(run(1_500, 0));
        assert_eq!(r.median().ms(0.99), 1.5);
        // A run read although disturbed is starred, for others' CPU or steal.
        let mut r = Repeated::default();
        r.push(Outcome {
            others_cpu: 2.0 * DISTURBING_CPU,
            ..run(1_000, 0)
        });
        r.push(run(1_100, 0));
        r.push(Outcome {
            machine: MachineTicks {
                total: 100.0,
                idle: 50.0,
                steal: 10.0,
            },
            ..run(1_200, 0)
        });
        assert_eq!(r.p99s(), "1.00*, 1.10, 1.20*");
    }

    #[test]
    fn pairs_are_read_at_their_median_ratio() {
        let run = |ok: u64, errors: u64| Outcome {
            ok,
            errors,
            ..empty_outcome()
        };
        let mut p = Pairs::default();
        assert_eq!(p.median_ratio(), 0.0);
        // 50%, 90%, 60%: the median is 60% whatever the order.
        for (ok, base, errors) in [(500, 1000, 0), (1800, 2000, 2), (600, 1000, 0)] {
            p.push(run(ok, errors), run(base, 7));
        }
        assert_eq!(p.ratios(), vec![0.5, 0.9, 0.6]);
        assert_eq!(p.median_ratio(), 0.6);
        assert_eq!(p.errors(), 2);
        // A baseline that answered nothing gives 0, not a division by zero.
        p.push(run(10, 0), run(0, 0));
        assert_eq!(p.ratios()[3], 0.0);
        assert_eq!(p.median_ratio(), 0.6);
    }

    #[test]
    fn idle_and_steal_are_shares_of_the_machines_time() {
        let at = |line: &str| MachineTicks::parse(&format!("{line}\ncpu0 1 2 3\n"));
        let before = at("cpu  100 0 50 800 50 0 0 0 0 0");
        let after = at("cpu  400 0 150 900 50 0 0 400 30 0");
        let d = after.since(before);
        assert_eq!(d.total, 900.0);
        let (idle, steal) = d.shares();
        assert!((idle - 100.0 / 900.0).abs() < 1e-9);
        assert!((steal - 400.0 / 900.0).abs() < 1e-9);
        assert_eq!(MachineTicks::default().shares(), (0.0, 0.0));
        assert!(MachineTicks::now().total > 0.0, "read from this machine");
    }

    #[test]
    fn other_processes_cpu_counts_new_processes_and_reaped_children() {
        // After the command name: state, ppid … utime (14), stime, cutime,
        // cstime (17), as in /proc/PID/stat.
        let stat = |utime: u32, cutime: u32| {
            format!(" S 1 1 1 0 -1 0 0 0 0 0 {utime} 5 {cutime} 0 20 0 1 0")
        };
        assert_eq!(reaped_too(&stat(40, 50)), 0.95);
        assert!(!kernel_thread(&stat(40, 50)));
        // A kworker's flags (PF_KTHREAD | PF_WQ_WORKER | …).
        assert!(kernel_thread(
            " I 2 0 0 0 -1 69238880 0 0 0 0 0 52 0 0 20 0 1 0"
        ));
        let mark = |others: &[(u32, f64)]| CpuMark {
            client: 1.0,
            server: 2.0,
            machine: MachineTicks::default(),
            others: others.iter().copied().collect(),
        };
        let before = mark(&[(10, 0.5), (11, 3.0), (12, 0.2)]);
        // 10 reaped a child (+0.5 s), 12 ended, 13 began (0.1 s), and 11 is
        // a new process under a reused pid that used less than the old one.
        let after = mark(&[(10, 1.0), (11, 0.1), (13, 0.1)]);
        let (client, server, _, others) = after.since(&before);
        assert_eq!((client, server), (0.0, 0.0));
        assert!((others - 0.6).abs() < 1e-9, "{others}");
        let run = |others_cpu| Outcome {
            others_cpu,
            ..empty_outcome()
        };
        assert_eq!(run(DISTURBING_CPU).disturbance(), None);
        assert!(run(DISTURBING_CPU + 0.01).disturbance().is_some());
        // Stolen time disturbs a run as well, past its own share.
        let stolen = |steal: f64| Outcome {
            machine: MachineTicks {
                total: 100.0,
                idle: 20.0,
                steal: steal * 100.0,
            },
            ..empty_outcome()
        };
        assert_eq!(stolen(DISTURBING_STEAL).disturbance(), None);
        assert_eq!(
            stolen(0.05).disturbance().as_deref(),
            Some("the host stole 5% of the machine's time")
        );
        // This machine's processes, read twice: some CPU, never negative.
        let me = CpuMark::now(std::process::id());
        assert!(!me.others.contains_key(&std::process::id()));
        assert!(CpuMark::now(std::process::id()).since(&me).3 >= 0.0);
    }

    fn empty_outcome() -> Outcome {
        Outcome {
            ok: 0,
            lost: 0,
            lost_hist: histogram(),
            errors: 0,
            first_error: None,
            elapsed: Duration::from_secs(1),
            hist: histogram(),
            client_cpu: 0.0,
            server_cpu: 0.0,
            machine: MachineTicks::default(),
            others_cpu: 0.0,
        }
    }

    #[test]
    fn cpu_and_memory_are_read_from_proc() {
        // Burn a little CPU so the counter moves past its 10 ms resolution.
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        assert!(x != 1);
        assert!(cpu_seconds(None) > 0.0);
        assert!(rss_mib(std::process::id()) > 1.0);
        assert_eq!(
            cpu_seconds(Some(u32::MAX)),
            0.0,
            "a gone process reads as zero"
        );
    }

    #[tokio::test]
    async fn a_fixed_rate_run_keeps_its_schedule_and_counts_errors() {
        // A lazy channel nobody calls: the closure answers by itself.
        let ch = Channel::from_static("http://127.0.0.1:9").connect_lazy();
        let spec = Spec {
            connections: 1,
            inflight: 2,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(500),
            rate: Some(200.0),
            limit: None,
        };
        let out = run(spec, &[ch], std::process::id(), |_, n| async move {
            match n % 10 {
                0 => Err(format!("failure {n}")),
                1 => Ok(Answer::Lost),
                _ => Ok(Answer::Ok),
            }
        })
        .await;
        let sent = out.ok + out.lost + out.errors;
        // 200/s for 0.5 s is 100 requests; timers are coarse, allow slack.
        assert!((80..=120).contains(&sent), "{sent} requests");
        assert!(out.errors > 0 && out.first_error.is_some());
        assert!(out.ms(0.99) < 50.0);
        assert!(out.lost > 0 && out.lost_hist.len() == out.lost);
        assert_eq!(out.hist.len(), out.ok);
    }

    #[test]
    fn latency_counts_from_due_only_when_the_server_held_the_worker() {
        let due = Instant::now();
        let ms = Duration::from_millis;
        // Free before it was due, woken 1 ms late by the timer: from sending.
        assert_eq!(counted_from(due, due - ms(3), due + ms(1)), due + ms(1));
        // Still waiting for its previous answer when due: from when due.
        assert_eq!(counted_from(due, due + ms(5), due + ms(5)), due);
    }

    #[tokio::test]
    async fn a_fixed_rate_run_counts_the_servers_queue_not_the_timers_lateness() {
        let ch = Channel::from_static("http://127.0.0.1:9").connect_lazy();
        let spec = Spec {
            connections: 1,
            inflight: 1,
            warmup: Duration::ZERO,
            duration: Duration::from_millis(600),
            rate: Some(200.0),
            limit: None,
        };
        // Answered at once: the timers' millisecond ticks are not latency.
        let prompt = run(
            spec,
            std::slice::from_ref(&ch),
            std::process::id(),
            |_, _| async { Ok(()) },
        )
        .await;
        assert!(prompt.ms(0.5) < 0.5, "p50 {} ms", prompt.ms(0.5));
        // Answered after 50 ms while each of the 4 workers is due every
        // 20 ms: the queue grows, and the latencies with it.
        let slow = run(spec, &[ch], std::process::id(), |_, _| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(())
        })
        .await;
        assert!(slow.ms(0.99) > 150.0, "p99 {} ms", slow.ms(0.99));
    }

    #[tokio::test]
    async fn a_limited_run_stops_at_its_count() {
        let ch = Channel::from_static("http://127.0.0.1:9").connect_lazy();
        let spec = Spec {
            connections: 2,
            inflight: 3,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(60),
            rate: None,
            limit: Some(1000),
        };
        let out = run(spec, &[ch], std::process::id(), |_, _| async move {
            tokio::task::yield_now().await;
            Ok(())
        })
        .await;
        assert_eq!(out.ok, 1000);
        assert!(out.elapsed < Duration::from_secs(30));
    }
}
