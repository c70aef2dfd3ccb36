//! Delivers delegated-grant changes from the outbox to identity's
//! `ApplyDelegatedGrant`: right after the change commits, and again from a
//! background sweep with backoff until identity acknowledges. Identity
//! applies by version, so a repeated or late delivery never undoes a newer one.
//!
//! An acknowledged change's row is not deleted on its own: its id waits in
//! memory and the next sweep removes every waiting row in one statement
//! (a grant change used to cost a commit of its own for it; on SQLite, an
//! fsync). Nothing is lost by the wait: a row whose removal a crash lost is
//! due again after [`outbox::INLINE_MS`] and delivered once more, which
//! identity answers as already applied (by request id and version).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use sovra_proto::identity::v1 as idpb;
use sovra_runtime::{clock::SharedClock, db::Db, Error};

use sovra_runtime::peers::IdentityClient;

use crate::{domain::states::DelegatedState, store::outbox};

const BATCH: i64 = 100;
/// Acknowledged rows waiting for removal before a delivery removes them
/// itself rather than leave them to the sweep.
const ACKED_MAX: usize = 256;
const FIRST_BACKOFF_MS: i64 = 200;

/// The delivery side of the grant outbox.
#[derive(Clone)]
pub struct Outbox {
    db: Db,
    identity: Arc<IdentityClient>,
    clock: SharedClock,
    poll: Duration,
    max_backoff_ms: i64,
    /// Ids of changes identity acknowledged whose rows are still there.
    acked: Arc<Mutex<Vec<String>>>,
}

impl Outbox {
    pub fn new(
        db: Db,
        identity: Arc<IdentityClient>,
        clock: SharedClock,
        poll: Duration,
        max_backoff_ms: i64,
    ) -> Self {
        Self {
            db,
            identity,
            clock,
            poll,
            max_backoff_ms,
            acked: Arc::default(),
        }
    }

    /// Delivers the changes one request just committed, now; whatever fails
    /// stays in the outbox for the background sweep.
    pub async fn deliver_now(&self, changes: &[outbox::GrantChange]) {
        for c in changes {
            if let Err(e) = self.deliver(c).await {
                tracing::warn!(error = %e, change = %c.id, "grant delivery failed; it stays queued");
            }
        }
    }

    /// One sweep over everything due, after removing the rows of changes
    /// already acknowledged (so none is delivered twice). Returns how many
    /// were delivered.
    pub async fn sweep(&self) -> Result<usize, Error> {
        self.remove_acknowledged().await?;
        let due = outbox::due(self.db.read(), self.clock.now_ms(), BATCH).await?;
        let mut delivered = 0;
        for c in &due {
            match self.deliver(c).await {
                Ok(()) => delivered += 1,
                Err(e) => {
                    tracing::warn!(error = %e, change = %c.id, attempts = c.attempts + 1, "grant delivery failed; will retry")
                }
            }
        }
        Ok(delivered)
    }

    /// Removes the rows of every change identity acknowledged since the
    /// last call, in one statement. On failure the ids wait for the next
    /// call.
    pub async fn remove_acknowledged(&self) -> Result<(), Error> {
        let ids = std::mem::take(&mut *self.lock_acked());
        if ids.is_empty() {
            return Ok(());
        }
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        // The removal need not wait for the WAL flush: nothing is
        // acknowledged on it, and a removal lost to a crash only delivers
        // the changes again (see the module's comment).
        let removed = outbox::delivered(self.db.write_unflushed(), self.db.backend(), &refs).await;
        if removed.is_err() {
            self.lock_acked().extend(ids);
        }
        removed
    }

    fn lock_acked(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.acked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The outbox's own (wall) clock: stamps and schedules its rows.
    pub fn now(&self) -> sovra_runtime::clock::Millis {
        self.clock.now_ms()
    }

    async fn deliver(&self, c: &outbox::GrantChange) -> Result<(), Error> {
        let state = match DelegatedState::from_stored(&c.state) {
            Some(DelegatedState::Active) => idpb::DelegatedGrantState::Active,
            Some(DelegatedState::Removed) => idpb::DelegatedGrantState::Removed,
            Some(DelegatedState::Reassigned) => idpb::DelegatedGrantState::Reassigned,
            _ => {
                return Err(Error::internal(format!(
                    "outbox row {} has state {}",
                    c.id, c.state
                )))
            }
        };
        let pushed = self
            .identity
            .apply_grant(idpb::ApplyDelegatedGrantRequest {
                // Stable per change, so identity replays a repeated delivery.
                request_id: format!(
                    "grant:{}:{}:{}",
                    c.customer_tenant_id, c.partner_tenant_id, c.version
                ),
                partner_tenant_id: c.partner_tenant_id.clone(),
                customer_tenant_id: c.customer_tenant_id.clone(),
                relationship_id: c.relationship_id.clone(),
                state: state as i32,
                version: c.version,
            })
            .await;
        match pushed {
            Ok(_) => {
                let waiting = {
                    let mut acked = self.lock_acked();
                    acked.push(c.id.clone());
                    acked.len()
                };
                if waiting >= ACKED_MAX {
                    // Delivered either way; what is left waits for the sweep.
                    if let Err(e) = self.remove_acknowledged().await {
                        tracing::warn!(error = %e, "removing delivered grant changes failed; the sweep retries");
                    }
                }
                Ok(())
            }
            Err(status) => {
                let backoff =
                    (FIRST_BACKOFF_MS << c.attempts.clamp(0, 20)).min(self.max_backoff_ms);
                let why = format!("{:?}: {}", status.code(), status.message());
                outbox::failed(self.db.write(), &c.id, self.clock.now_ms() + backoff, &why).await?;
                Err(Error::unavailable("IDENTITY_UNAVAILABLE", why))
            }
        }
    }

    /// Sweeps now (what a restart left behind) and every poll interval.
    pub fn spawn(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        sovra_runtime::server::spawn_every(this.poll, "grant outbox sweep", move || {
            let this = this.clone();
            async move { this.sweep().await.map(|_| ()) }
        })
    }
}
