//! Concurrent calls of one kind sent to PostgreSQL as one statement.
//!
//! A key redemption's statements are small: two point reads and a claim of
//! one `UPDATE` and a few `INSERT`s (see [`crate::writes`]). Run one at a
//! time, each pays PostgreSQL's costs per statement (a round trip and the
//! wake-ups on both sides, a snapshot, executor start-up, the locks on
//! every table and index it touches, and for a write a commit), and those
//! costs, not the rows, are most of its time. Here calls of one kind that
//! arrive while others run wait for them, then go together: one statement
//! over all their rows, each call told its own outcome.
//!
//! - Guarded writes ([`Writes::batched`]): one guard decides every call's
//!   rows at once. Only the commits that don't wait for the WAL flush are
//!   batched ([`Writes::commit_unflushed`]): each caller still
//!   acknowledges nothing until a later flushing commit, exactly as alone.
//! - Point reads by key ([`Lookup`]): one join of the keys with the table.
//!
//! A call that finds a statement's place free runs at once, alone, as it
//! would without the batcher: no added wait when there is no one else. A
//! few statements run at a time; whoever queued meanwhile goes in the
//! next. A batch that fails (a request id stored by a twin of one of its
//! requests, a lost connection) writes nothing, being one statement; its
//! calls then run one by one, so each gets its own outcome.
//!
//! [`Lookup`]: crate::lookup::Lookup

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
};

use futures_util::future::{join_all, BoxFuture};
use tokio::sync::oneshot;

use crate::pool::Pool;

/// The most calls in one statement.
const MAX_BATCH: usize = 64;

/// A call that can run alone or in one statement with others of its kind.
pub(crate) trait Job: Sized + Send + 'static {
    type Out: Send + 'static;
    /// Whether `other` can go in the same statement as this one.
    fn joins(&self, other: &Self) -> bool;
    /// The call on its own, as without a batcher.
    fn alone(self, pool: &Pool) -> BoxFuture<'_, Result<Self::Out, sqlx::Error>>;
    /// All of `jobs` (which join the first) in one statement: each one's
    /// outcome, or None when the statement failed (and so wrote nothing).
    fn together<'a>(jobs: &'a [Self], pool: &'a Pool) -> BoxFuture<'a, Option<Vec<Self::Out>>>;
}

type Reply<J> = oneshot::Sender<Result<<J as Job>::Out, sqlx::Error>>;

/// One pool's batcher for one kind of call.
pub(crate) struct Batcher<J: Job> {
    pool: Pool,
    /// Statements in flight at a time.
    running_max: usize,
    state: Mutex<State<J>>,
    /// Where drains run (a call may be dropped outside a task).
    runtime: tokio::runtime::Handle,
    /// Statements that ran calls together, and the calls they ran.
    batches: AtomicU64,
    batched: AtomicU64,
}

struct State<J: Job> {
    waiting: VecDeque<(J, Reply<J>)>,
    running: usize,
}

/// A call's turn: now, alone, or in a later batch.
enum Turn<J: Job> {
    Now(J),
    Queued(oneshot::Receiver<Result<J::Out, sqlx::Error>>),
}

impl<J: Job> std::fmt::Debug for Batcher<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl<J: Job> Batcher<J> {
    /// A batcher on `pool` running up to `running_max` statements at a
    /// time. Must be called inside the runtime the drains run on.
    pub(crate) fn new(pool: Pool, running_max: usize) -> Arc<Self> {
        Arc::new(Self {
            pool,
            running_max,
            state: Mutex::new(State {
                waiting: VecDeque::new(),
                running: 0,
            }),
            runtime: tokio::runtime::Handle::current(),
            batches: AtomicU64::new(0),
            batched: AtomicU64::new(0),
        })
    }

    /// Statements that ran calls together since start, and the calls in
    /// them.
    pub(crate) fn stats(&self) -> (u64, u64) {
        (
            self.batches.load(Ordering::Relaxed),
            self.batched.load(Ordering::Relaxed),
        )
    }

    fn state(&self) -> MutexGuard<'_, State<J>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `job`, alone or with others.
    pub(crate) async fn run(self: &Arc<Self>, job: J) -> Result<J::Out, sqlx::Error> {
        let turn = {
            let mut s = self.state();
            if s.running < self.running_max && s.waiting.is_empty() {
                s.running += 1;
                Turn::Now(job)
            } else {
                let (tx, rx) = oneshot::channel();
                s.waiting.push_back((job, tx));
                if s.running < self.running_max {
                    s.running += 1;
                    self.runtime.spawn(self.clone().drain());
                }
                Turn::Queued(rx)
            }
        };
        match turn {
            Turn::Now(job) => {
                // Hands over to a drain of whoever queued meanwhile when
                // done, even if this call is dropped midway.
                let _slot = Slot(self.clone());
                job.alone(&self.pool).await
            }
            Turn::Queued(rx) => rx.await.unwrap_or(Err(sqlx::Error::WorkerCrashed)),
        }
    }

    /// A statement finished: the next batch runs in its place, or its
    /// place is given back.
    fn finished(self: &Arc<Self>) {
        let mut s = self.state();
        if s.waiting.is_empty() {
            s.running -= 1;
        } else {
            drop(s);
            self.runtime.spawn(self.clone().drain());
        }
    }

    /// Runs batches until nobody waits.
    async fn drain(self: Arc<Self>) {
        loop {
            let batch = {
                let mut s = self.state();
                let batch = take_batch(&mut s.waiting);
                if batch.is_empty() {
                    s.running -= 1;
                    return;
                }
                batch
            };
            self.run_batch(batch).await;
        }
    }

    async fn run_batch(&self, batch: Vec<(J, Reply<J>)>) {
        let (jobs, replies): (Vec<J>, Vec<Reply<J>>) = batch.into_iter().unzip();
        if jobs.len() > 1 {
            let n = jobs.len();
            if let Some(outs) = J::together(&jobs, &self.pool).await {
                if outs.len() == n {
                    self.batches.fetch_add(1, Ordering::Relaxed);
                    self.batched.fetch_add(n as u64, Ordering::Relaxed);
                    for (reply, out) in replies.into_iter().zip(outs) {
                        let _ = reply.send(Ok(out));
                    }
                    return;
                }
            }
        }
        // One call, or a batch that failed: each alone, for its own outcome.
        let alone = jobs.into_iter().map(|j| j.alone(&self.pool));
        for (reply, r) in replies.into_iter().zip(join_all(alone).await) {
            let _ = reply.send(r);
        }
    }
}

/// A running statement's place, handed on when dropped.
struct Slot<J: Job>(Arc<Batcher<J>>);

impl<J: Job> Drop for Slot<J> {
    fn drop(&mut self) {
        self.0.finished();
    }
}

/// The first waiting call and every other that joins it, up to
/// [`MAX_BATCH`]; the rest keep their order.
fn take_batch<J: Job>(waiting: &mut VecDeque<(J, Reply<J>)>) -> Vec<(J, Reply<J>)> {
    let Some(first) = waiting.pop_front() else {
        return Vec::new();
    };
    let mut batch = Vec::with_capacity(waiting.len().min(MAX_BATCH) + 1);
    batch.push(first);
    let mut i = 0;
    while i < waiting.len() && batch.len() < MAX_BATCH {
        if batch[0].0.joins(&waiting[i].0) {
            batch.extend(waiting.remove(i));
        } else {
            i += 1;
        }
    }
    batch
}
