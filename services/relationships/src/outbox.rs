//! Delivers delegated-grant changes from the outbox to identity's
//! `ApplyDelegatedGrant`: right after the change commits, and again from a
//! background sweep with backoff until identity acknowledges. Identity
//! applies by version, so a repeated or late delivery never undoes a newer one.

use std::{sync::Arc, time::Duration};

use sovra_proto::identity::v1 as idpb;
use sovra_runtime::{clock::SharedClock, db::Db, Error};

use sovra_runtime::peers::IdentityClient;

use crate::{domain::states::DelegatedState, store::outbox};

const BATCH: i64 = 100;
const FIRST_BACKOFF_MS: i64 = 200;

/// The delivery side of the grant outbox.
#[derive(Clone)]
pub struct Outbox {
    db: Db,
    identity: Arc<IdentityClient>,
    clock: SharedClock,
    poll: Duration,
    max_backoff_ms: i64,
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

    /// One sweep over everything due. Returns how many were delivered.
    pub async fn sweep(&self) -> Result<usize, Error> {
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
                // The row's removal need not wait for the WAL flush: nothing
                // is acknowledged on it, and a removal lost to a crash only
                // delivers the change again, which identity answers as
                // already applied (by request id and version).
                outbox::delivered(self.db.write_unflushed(), &c.id).await?;
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
