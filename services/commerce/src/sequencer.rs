//! Numbers notifications waiting in `notification_outbox` into their
//! partners' feeds (see [`feed::Numbering::Deferred`]).
//!
//! A writer calls [`FeedSequencer::run`] after its commit and returns once a
//! numbering pass that started after that commit has finished, so a client
//! that reads the feed after its change sees the change. Writers combine: one
//! pass runs at a time in the process, and everyone who queued behind it is
//! covered by the next single pass, so a busy partner costs one numbering
//! transaction per batch, not one per change. A background sweep runs a pass
//! whenever something waits: after a crash between a commit and its pass, or
//! a pass that failed.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use sovra_runtime::{db::Db, Error};

use crate::store::feed;

/// Notifications numbered per transaction.
const BATCH: usize = 200;

#[derive(Default)]
pub struct FeedSequencer {
    /// Tickets handed out: one per call, taken after the caller's commit.
    asked: AtomicU64,
    /// Every ticket up to this one was covered by a finished pass.
    covered: AtomicU64,
    /// One pass at a time in this process; callers queue here in order.
    turn: tokio::sync::Mutex<()>,
}

impl FeedSequencer {
    /// Numbers every notification committed before this call (by any
    /// writer), unless a pass fails. Returns how many this call numbered
    /// (0 when a pass run for an earlier caller already covered it).
    pub async fn run(&self, db: &Db) -> Result<usize, Error> {
        let ticket = self.asked.fetch_add(1, SeqCst) + 1;
        let _turn = self.turn.lock().await;
        if self.covered.load(SeqCst) >= ticket {
            return Ok(0);
        }
        // Every ticket up to here was taken after its caller's commit, so
        // the pass below, which reads after this, sees all their rows.
        let target = self.asked.load(SeqCst);
        let mut numbered = 0;
        loop {
            let n = feed::sequence_waiting(db, BATCH).await?;
            numbered += n;
            if n < BATCH {
                break;
            }
        }
        self.covered.fetch_max(target, SeqCst);
        Ok(numbered)
    }

    /// The sweep: a pass if anything waits (a read on the read pool
    /// otherwise).
    pub async fn sweep(&self, db: &Db) -> Result<usize, Error> {
        if !feed::any_waiting(db.read()).await? {
            return Ok(0);
        }
        self.run(db).await
    }
}
