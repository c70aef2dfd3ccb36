//! Concurrent guarded writes sent to PostgreSQL as one statement.
//!
//! A redemption's claim is a statement of one `UPDATE` and a few `INSERT`s
//! (see [`crate::writes`]). Run one at a time, each pays PostgreSQL's costs
//! per statement and per transaction (a round trip, a snapshot, executor
//! start-up, the locks on every table and index it writes, a commit), and
//! those costs, not the rows, are most of its time. Here calls of the same
//! shape that arrive while one is running wait for it, then go together:
//! one statement whose guard decides every call's rows at once
//! ([`Writes::batched`]), each call told whether its own rows were written.
//!
//! A call that finds nothing running runs at once, alone, as it would
//! without the batcher: no added wait when there is no one else. Up to
//! [`RUNNING`] statements run at a time; whoever queued meanwhile goes in
//! the next. A batch that fails (a request id stored by a twin of one of
//! its requests, a lost connection) writes nothing, being one statement;
//! its calls then run one by one, so each gets its own outcome.
//!
//! Only the commits that don't wait for the WAL flush are batched
//! ([`Writes::commit_unflushed`]): each caller still acknowledges nothing
//! until a later flushing commit, exactly as alone.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
};

use futures_util::future::join_all;
use sqlx::Row;
use tokio::sync::oneshot;

use crate::{pool::Pool, writes::Writes};

/// Statements in flight at a time: one to run while the next fills.
const RUNNING: usize = 2;
/// The most calls in one statement.
const MAX_BATCH: usize = 64;

type Reply = oneshot::Sender<Result<bool, sqlx::Error>>;

/// One pool's batcher (PostgreSQL's unflushed pool).
pub(crate) struct Batcher {
    pool: Pool,
    state: Mutex<State>,
    /// Where drains run (a call may be dropped outside a task).
    runtime: tokio::runtime::Handle,
    /// Statements that ran calls together, and the calls they ran.
    batches: AtomicU64,
    batched: AtomicU64,
}

/// A call's turn: now, alone, or in a later batch.
enum Turn {
    Now(Writes),
    Queued(oneshot::Receiver<Result<bool, sqlx::Error>>),
}

#[derive(Default)]
struct State {
    waiting: VecDeque<(Writes, Reply)>,
    running: usize,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl Batcher {
    /// Must be called inside the runtime the drains run on.
    pub(crate) fn new(pool: Pool) -> Arc<Self> {
        Arc::new(Self {
            pool,
            state: Mutex::default(),
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

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Commits `w` (which has a batch shape), alone or with others; true
    /// when its guard let its rows be written.
    pub(crate) async fn commit(self: &Arc<Self>, w: Writes) -> Result<bool, sqlx::Error> {
        let turn = {
            let mut s = self.state();
            if s.running < RUNNING && s.waiting.is_empty() {
                s.running += 1;
                Turn::Now(w)
            } else {
                let (tx, rx) = oneshot::channel();
                s.waiting.push_back((w, tx));
                if s.running < RUNNING {
                    s.running += 1;
                    self.runtime.spawn(self.clone().drain());
                }
                Turn::Queued(rx)
            }
        };
        match turn {
            Turn::Now(w) => {
                // Hands over to a drain of whoever queued meanwhile when
                // done, even if this call is dropped midway.
                let _slot = Slot(self.clone());
                w.commit_folded(&self.pool).await
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
            self.run(batch).await;
        }
    }

    async fn run(&self, batch: Vec<(Writes, Reply)>) {
        let (writes, replies): (Vec<Writes>, Vec<Reply>) = batch.into_iter().unzip();
        if writes.len() > 1 {
            if let Some(written) = self.run_together(&writes).await {
                for (reply, ok) in replies.into_iter().zip(written) {
                    let _ = reply.send(Ok(ok));
                }
                return;
            }
        }
        // One call, or a batch that failed: each alone, for its own outcome.
        let alone = writes.into_iter().map(|w| w.commit_folded(&self.pool));
        for (reply, r) in replies.into_iter().zip(join_all(alone).await) {
            let _ = reply.send(r);
        }
    }

    /// Whether each of `writes` was written, or None when the statement
    /// failed (and so wrote nothing).
    async fn run_together(&self, writes: &[Writes]) -> Option<Vec<bool>> {
        let shape = writes.first()?.batch_shape()?;
        let (sql, args) = shape.statement(writes);
        let rows = match sqlx::query_with(&sql, args).fetch_all(&self.pool).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::debug!(error = %e, calls = writes.len(), "a batch failed; its calls run alone");
                return None;
            }
        };
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.batched
            .fetch_add(writes.len() as u64, Ordering::Relaxed);
        let mut written = vec![false; writes.len()];
        for row in rows {
            let n: i64 = row.try_get(0).ok()?;
            *written.get_mut(usize::try_from(n).ok()?)? = true;
        }
        Some(written)
    }
}

/// A running statement's place, handed on when dropped.
struct Slot(Arc<Batcher>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.finished();
    }
}

/// The longest run of waiting calls from the front that share the first
/// one's shape, up to [`MAX_BATCH`]; the rest keep their places.
fn take_batch(waiting: &mut VecDeque<(Writes, Reply)>) -> Vec<(Writes, Reply)> {
    let Some(shape) = waiting.front().and_then(|(w, _)| w.batch_shape()) else {
        return waiting.pop_front().into_iter().collect();
    };
    let mut batch = Vec::with_capacity(waiting.len().min(MAX_BATCH));
    while batch.len() < MAX_BATCH {
        match waiting.front() {
            Some((w, _)) if w.batch_shape().as_ref() == Some(&shape) => {
                batch.extend(waiting.pop_front());
            }
            _ => break,
        }
    }
    batch
}
