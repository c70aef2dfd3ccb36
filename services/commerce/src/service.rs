//! The commerce service's shared state and the steps every handler takes:
//! who is calling, may they (asked of identity), record what they did.

use std::{sync::Arc, time::Duration};

use sovra_proto::identity::v1 as idpb;
use sovra_runtime::{
    audit,
    clock::{Millis, SharedClock, DAY_MS, HOUR_MS},
    config::Settings,
    db::{Db, Tx},
    features::{Feature, Features},
    idempotency::Idempotency,
    ids::TenantId,
    links::LinkCodes,
    peers::{Access, IdentityClient, Programs},
    writes::Writes,
    Error,
};
pub(crate) use sovra_runtime::{audit::Change, auth::Ctx};
use tokio::sync::watch;

use sovra_runtime::ratelimit::{MutationLimits, RateLimiter};

use crate::{
    advisors::AdvisorClient,
    domain::catalog::Catalog,
    sequencer::FeedSequencer,
    store::feed::{self, Numbering},
};

/// What commerce needs from configuration.
#[derive(Debug, Clone)]
pub struct CommerceConfig {
    pub instance: String,
    /// Live flags (reloaded without a restart).
    pub features: Features,
    pub catalog: Catalog,
    pub link_ttl_ms: i64,
    pub idempotency_retention_ms: i64,
    pub notification_poll: Duration,
}

impl CommerceConfig {
    pub fn from_settings(s: &Settings) -> Self {
        let c = &s.commerce;
        Self {
            instance: s.instance.name.clone(),
            features: Features::new(&s.instance.name, s.features, &s.feature_overrides),
            catalog: Catalog::new(&s.instance.currency, &c.catalog),
            link_ttl_ms: c.link_ttl_days as i64 * DAY_MS,
            idempotency_retention_ms: c.idempotency_retention_hours as i64 * HOUR_MS,
            notification_poll: Duration::from_millis(c.notification_poll_interval_ms),
        }
    }
}

/// The commerce service: one value implements every commerce gRPC service.
#[derive(Clone)]
pub struct Commerce {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub db: Db,
    pub identity: Arc<IdentityClient>,
    pub advisors: AdvisorClient,
    pub links: LinkCodes,
    pub clock: SharedClock,
    pub cfg: CommerceConfig,
    pub key_attempts: RateLimiter,
    /// Mutating calls per partner, and per partner and customer.
    pub limits: MutationLimits,
    /// Bumped after notifications were numbered: wakes watchers.
    pub feed: watch::Sender<u64>,
    /// Numbers notifications written with [`Numbering::Deferred`].
    pub sequencer: FeedSequencer,
    /// Product keys (hashes) a redemption in this process is claiming now.
    pub redeeming: InFlight,
}

/// Keys being worked on in this process: the first caller holds a key until
/// its guard drops; a second caller is told at once instead of queueing for
/// the database's write lock behind the first.
#[derive(Default)]
pub struct InFlight(std::sync::Mutex<std::collections::HashSet<String>>);

impl InFlight {
    /// A guard over `key`, or None when another caller holds it.
    pub fn try_hold(&self, key: &str) -> Option<InFlightGuard<'_>> {
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        held.insert(key.to_owned()).then(|| InFlightGuard {
            set: self,
            key: key.to_owned(),
        })
    }
}

pub struct InFlightGuard<'a> {
    set: &'a InFlight,
    key: String,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        let mut held = self.set.0.lock().unwrap_or_else(|p| p.into_inner());
        held.remove(&self.key);
    }
}

impl Commerce {
    pub(crate) fn new(inner: Inner) -> Self {
        Self {
            inner: Arc::new(inner),
        }
    }

    pub(crate) fn now(&self) -> Millis {
        self.inner.clock.now_ms()
    }

    pub(crate) fn db(&self) -> &Db {
        &self.inner.db
    }

    pub(crate) fn identity(&self) -> &IdentityClient {
        &self.inner.identity
    }

    pub(crate) fn cfg(&self) -> &CommerceConfig {
        &self.inner.cfg
    }

    pub(crate) fn catalog(&self) -> &Catalog {
        &self.inner.cfg.catalog
    }

    pub(crate) fn tenant_id(&self, field: &str, value: &str) -> Result<TenantId, Error> {
        TenantId::parse(field, value, &self.inner.cfg.instance)
    }

    /// Ok when `f` is on in this instance and, when given, for `tenant`.
    pub(crate) fn require_feature(&self, f: Feature, tenant: Option<&str>) -> Result<(), Error> {
        self.cfg().features.require(f, tenant)
    }

    /// What identity says about the user doing `p` in `tenant`.
    pub(crate) async fn check(
        &self,
        ctx: &Ctx,
        tenant: &TenantId,
        p: idpb::Permission,
    ) -> Result<Access, Error> {
        self.identity().check_user(ctx, tenant.as_str(), p).await
    }

    /// Requires the user to be allowed `p` in `tenant` (PERMISSION_DENIED
    /// with identity's reason).
    pub(crate) async fn require(
        &self,
        ctx: &Ctx,
        tenant: &TenantId,
        p: idpb::Permission,
    ) -> Result<Access, Error> {
        let access = self.check(ctx, tenant, p).await?;
        if access.allowed {
            Ok(access)
        } else {
            Err(Error::permission_denied("PERMISSION_DENIED", access.reason))
        }
    }

    /// The partner tenant, active and holding every one of `programs`.
    pub(crate) async fn partner(
        &self,
        ctx: &Ctx,
        field: &str,
        partner: &str,
        programs: &[idpb::PartnerAuthorization],
    ) -> Result<idpb::Tenant, Error> {
        self.identity()
            .partner(field, partner, Programs::AllOf(programs), &ctx.trace_id)
            .await
    }

    /// How this backend numbers notifications.
    pub(crate) fn numbering(&self) -> Numbering {
        Numbering::for_backend(self.db().backend())
    }

    /// After a commit that wrote notifications: numbers them if they wait
    /// for it, then wakes the watchers. A failed pass is logged, not
    /// returned: the change is committed, and the sweep numbers it later.
    pub(crate) async fn feed_written(&self) {
        // `feed_durable` logs the failure; the sweep numbers it later.
        let _ = self.feed_durable().await;
    }

    /// Commits the writes of a change that wrote notifications, answered
    /// only after [`Commerce::feed_durable`] succeeds. Where a numbering pass
    /// follows (PostgreSQL) and a notification waits for it, the commit does
    /// not wait for its own WAL flush: the pass that numbers the
    /// notification begins after this commit and flushes, which makes it
    /// durable. So a redemption waits for one flush instead of two.
    pub(crate) async fn commit_for_feed(&self, w: Writes) -> Result<bool, sqlx::Error> {
        if self.numbering() == Numbering::Deferred && w.inserts_into(feed::OUTBOX) {
            w.commit_unflushed(self.db()).await
        } else {
            w.commit(self.db()).await
        }
    }

    /// After [`Commerce::commit_for_feed`], and before answering from a row
    /// such a commit wrote (a replay): numbers the waiting notifications and
    /// wakes the watchers. The change is durable once this returns `Ok` (a
    /// numbered notification was numbered by a flushing commit that began
    /// after its own). A failed pass answers UNAVAILABLE, and the caller's
    /// retry with its request id replays the stored answer (or, after a
    /// crash that lost the change, makes it again).
    pub(crate) async fn feed_durable(&self) -> Result<(), Error> {
        if self.numbering() == Numbering::Deferred {
            if let Err(e) = self.inner.sequencer.run(self.db()).await {
                tracing::warn!(error = %e, "numbering notifications failed; the sweep retries");
                return Err(Error::unavailable(
                    "COMMIT_UNCONFIRMED",
                    "the change could not be confirmed; retry with the same request_id to learn its outcome",
                ));
            }
        }
        self.notify_watchers();
        Ok(())
    }

    /// Numbers whatever waits (see [`FeedSequencer::sweep`]).
    pub(crate) async fn sweep_feed(&self) -> Result<(), Error> {
        if self.inner.sequencer.sweep(self.db()).await? > 0 {
            self.notify_watchers();
        }
        Ok(())
    }

    fn notify_watchers(&self) {
        self.inner.feed.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn feed_changes(&self) -> watch::Receiver<u64> {
        self.inner.feed.subscribe()
    }

    /// Audits, remembers and commits; see [`audit::commit`].
    pub(crate) async fn commit<M: prost::Message>(
        &self,
        tx: Tx,
        ctx: &Ctx,
        change: Option<Change<'_>>,
        request_id: &str,
        idem: &Option<Idempotency>,
        resp: &M,
    ) -> Result<(), Error> {
        audit::commit(tx, self.now(), ctx, change, request_id, idem, resp).await
    }

    /// Adds what [`Self::commit`] writes to `w`; see [`audit::add`].
    pub(crate) fn add_change<M: prost::Message>(
        &self,
        w: &mut Writes,
        ctx: &Ctx,
        change: Change<'_>,
        request_id: &str,
        idem: &Option<Idempotency>,
        resp: &M,
    ) {
        audit::add(w, self.now(), ctx, Some(change), request_id, idem, resp)
    }

    /// Forgets old request ids.
    pub async fn forget_request_ids(&self) -> Result<u64, Error> {
        sovra_runtime::idempotency::expire(
            self.db(),
            self.now() - self.cfg().idempotency_retention_ms,
        )
        .await
    }
}
