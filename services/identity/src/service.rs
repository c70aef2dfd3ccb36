//! The identity service's shared state and the steps every handler takes:
//! who is calling, may they, record what they did.

use std::{sync::Arc, time::Duration};

use sovra_runtime::{
    audit,
    auth::{Authority, Caller},
    cache::{Cached, Generation, Stripes},
    clock::{Millis, SharedClock, DAY_MS, HOUR_MS},
    config::Settings,
    db::{Db, Tx},
    features::Features,
    idempotency::Idempotency,
    writes::Writes,
    Error,
};
pub(crate) use sovra_runtime::{audit::Change, auth::Ctx};
use tonic::Request;

use crate::{
    domain::{
        ids::TenantId,
        policy::{self, Basis, Decision, Subject},
        roles::{GrantState, Permission, TenantKind},
    },
    hashing::Hasher,
    store::{grants, tenants, tenants::TenantRecord, users},
};

/// What identity needs from configuration.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub instance: String,
    pub data_regions: Vec<String>,
    pub region: String,
    /// Live flags (reloaded without a restart).
    pub features: Features,
    pub retention_ms: i64,
    pub access_token_ttl_secs: u64,
    pub idempotency_retention_ms: i64,
    pub purge_interval: Duration,
    /// How long what a decision read may be reused (0: never): the bound on
    /// how long another identity replica (on PostgreSQL) may decide from
    /// what it read before a change made through this one. In this process
    /// a change is seen by the very next call (see `Inner::generation` and
    /// `sovra_runtime::cache`).
    pub decision_cache: Duration,
}

impl IdentityConfig {
    pub fn from_settings(s: &Settings) -> Self {
        Self {
            instance: s.instance.name.clone(),
            data_regions: s.instance.data_regions.clone(),
            region: s.instance.region.clone(),
            features: Features::new(&s.instance.name, s.features, &s.feature_overrides),
            retention_ms: s.identity.user_retention_days as i64 * DAY_MS,
            access_token_ttl_secs: s.auth.access_token_ttl_secs,
            idempotency_retention_ms: s.identity.idempotency_retention_hours as i64 * HOUR_MS,
            purge_interval: Duration::from_secs(s.identity.purge_interval_secs),
            decision_cache: Duration::from_millis(s.identity.decision_cache_ms),
        }
    }
}

/// The identity service: one value implements all four gRPC services.
#[derive(Clone)]
pub struct Identity {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub db: Db,
    pub authority: Authority,
    pub clock: SharedClock,
    pub hasher: Hasher,
    pub cfg: IdentityConfig,
    /// Bumped after every commit: what `subjects`, `grants` and `tenants`
    /// hold is only used under the generation it was read in.
    pub generation: Generation,
    /// Bumped after a commit that changed one delegated grant only, in the
    /// stripe of its (partner, customer): `grants` entries are read under
    /// `generation` and their stripe's, so a grant change leaves users,
    /// tenants and (nearly all) other grants cached.
    pub grant_generations: Stripes,
    /// What access decisions read: every CheckAccess and every peer's
    /// authorization reads these; from SQLite each read is a hand-off to
    /// the connection's worker thread, which costs more than the rest of
    /// the call.
    pub subjects: Cached<String, Option<users::SubjectRow>>,
    pub grants: Cached<(String, String), Option<GrantState>>,
    pub tenants: Cached<String, Option<TenantRecord>>,
}

/// A granted decision, for the audit record.
#[derive(Debug, Clone)]
pub(crate) struct Granted {
    pub delegated: bool,
}

impl Identity {
    pub fn new(
        db: Db,
        authority: Authority,
        clock: SharedClock,
        hasher: Hasher,
        cfg: IdentityConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                authority,
                clock,
                hasher,
                generation: Generation::default(),
                grant_generations: Stripes::default(),
                subjects: Cached::new(cfg.decision_cache),
                grants: Cached::new(cfg.decision_cache),
                tenants: Cached::new(cfg.decision_cache),
                cfg,
            }),
        }
    }

    pub(crate) fn now(&self) -> Millis {
        self.inner.clock.now_ms()
    }

    /// Users deleted at or before this instant are gone.
    pub(crate) fn cutoff(&self) -> Millis {
        self.now() - self.inner.cfg.retention_ms
    }

    pub(crate) fn db(&self) -> &Db {
        &self.inner.db
    }

    pub(crate) fn cfg(&self) -> &IdentityConfig {
        &self.inner.cfg
    }

    pub(crate) fn ctx<T>(&self, req: &Request<T>) -> Result<Ctx, Error> {
        Ctx::of(req)
    }

    pub(crate) fn tenant_id(&self, field: &str, value: &str) -> Result<TenantId, Error> {
        TenantId::parse(field, value, &self.inner.cfg.instance)
    }

    /// Loads a tenant or answers NOT_FOUND.
    pub(crate) async fn tenant(&self, id: &TenantId) -> Result<TenantRecord, Error> {
        let generation = (self.inner.generation.current(), 0);
        self.inner
            .tenants
            .get_or_load(id.as_str().to_owned(), generation, || {
                tenants::get(self.db().read(), id.as_str())
            })
            .await?
            .ok_or_else(|| tenant_not_found(id))
    }

    /// The access decision for a user, read from local indexed data only.
    pub(crate) async fn decide_for_user(
        &self,
        user_id: &str,
        tenant_id: &str,
        p: Permission,
    ) -> Result<Option<Decision>, Error> {
        sovra_runtime::telemetry::record_tenant(tenant_id);
        let generation = self.inner.generation.current();
        let stamp = (generation, 0);
        let row = self
            .inner
            .subjects
            .get_or_load(user_id.to_owned(), stamp, || {
                users::subject(self.db().read(), user_id)
            })
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let kind = TenantKind::from_stored(&row.tenant_kind).unwrap_or(TenantKind::Customer);
        let grant = if row.tenant_id != tenant_id && kind == TenantKind::Partner {
            let key = (row.tenant_id.clone(), tenant_id.to_owned());
            // Either generation moving makes a grant stale.
            let both = (generation, self.inner.grant_generations.of(&key).current());
            self.inner
                .grants
                .get_or_load(key, both, || {
                    grants::state(self.db().read(), &row.tenant_id, tenant_id)
                })
                .await?
        } else {
            None
        };
        let subject = Subject {
            user_id: user_id.to_owned(),
            tenant_id: row.tenant_id,
            tenant_kind: kind,
            role: row.role,
            access: row.access,
            deleted: row.deleted,
            blocked: row.blocked,
        };
        Ok(Some(policy::decide(&subject, tenant_id, p, grant)))
    }

    /// Requires a signed-in user allowed to do `p` in `tenant`. A tenant the
    /// user has no standing in answers NOT_FOUND, so tenants can't be probed.
    pub(crate) async fn authorize(
        &self,
        ctx: &Ctx,
        tenant: &TenantId,
        p: Permission,
    ) -> Result<Granted, Error> {
        let Caller::User(u) = &ctx.caller else {
            return Err(Error::permission_denied(
                "USER_REQUIRED",
                "this call acts inside a tenant and needs a signed-in user's token",
            ));
        };
        let decision = self
            .decide_for_user(&u.user_id, tenant.as_str(), p)
            .await?
            .ok_or_else(|| {
                Error::unauthenticated("USER_GONE", "the signed-in user no longer exists")
            })?;
        if decision.allowed {
            return Ok(Granted {
                delegated: matches!(
                    decision.basis,
                    Basis::DelegatedFull | Basis::DelegatedLimited
                ),
            });
        }
        if !decision.related {
            return Err(tenant_not_found(tenant));
        }
        Err(Error::permission_denied(
            "PERMISSION_DENIED",
            decision.reason,
        ))
    }

    /// Requires the operator.
    pub(crate) fn require_operator(&self, ctx: &Ctx) -> Result<(), Error> {
        if ctx.caller.is_operator() {
            Ok(())
        } else {
            Err(Error::permission_denied(
                "OPERATOR_REQUIRED",
                "only the instance operator may do this",
            ))
        }
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
        let done = audit::commit(tx, self.now(), ctx, change, request_id, idem, resp).await;
        // After the commit (or its failure): what was read before is stale.
        self.inner.generation.bump();
        sovra_runtime::peers::tenants_changed();
        done
    }

    /// [`Identity::commit`] for a transaction that changed the grant of
    /// `partner` in `customer` and nothing else a decision reads: only that
    /// grant (and those sharing its stripe) go stale.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn commit_grant<M: prost::Message>(
        &self,
        grant: (&str, &str),
        tx: Tx,
        ctx: &Ctx,
        change: Option<Change<'_>>,
        request_id: &str,
        idem: &Option<Idempotency>,
        resp: &M,
    ) -> Result<(), Error> {
        let done = audit::commit(tx, self.now(), ctx, change, request_id, idem, resp).await;
        // (&str, &str) hashes as the (String, String) key reads do.
        self.inner.grant_generations.of(&grant).bump();
        done
    }

    /// Commits `w`, guarded writes that changed the grant of `partner` in
    /// `customer` and nothing else a decision reads (as in
    /// [`Identity::commit_grant`]). False when the guard refused: nothing
    /// was written.
    pub(crate) async fn commit_grant_writes(
        &self,
        grant: (&str, &str),
        w: Writes,
    ) -> Result<bool, Error> {
        let done = w
            .commit(self.db())
            .await
            .map_err(sovra_runtime::idempotency::write_error);
        self.inner.grant_generations.of(&grant).bump();
        done
    }

    /// Purges users past retention and forgets old request ids, once.
    pub async fn housekeep(&self) -> Result<(u64, u64), Error> {
        let mut tx = self.db().begin().await?;
        let users = users::purge_expired(&mut tx, self.cutoff()).await?;
        tx.commit().await?;
        self.inner.generation.bump();
        sovra_runtime::peers::tenants_changed();
        let keys = sovra_runtime::idempotency::expire(
            self.db(),
            self.now() - self.cfg().idempotency_retention_ms,
        )
        .await?;
        Ok((users, keys))
    }

    /// Runs [`Identity::housekeep`] every `purge_interval` until dropped.
    pub fn spawn_housekeeping(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        sovra_runtime::server::spawn_every(this.cfg().purge_interval, "housekeeping", move || {
            let this = this.clone();
            async move {
                let (users, keys) = this.housekeep().await?;
                if (users, keys) != (0, 0) {
                    tracing::info!(users, request_ids = keys, "housekeeping purged");
                }
                Ok(())
            }
        })
    }
}

pub(crate) fn tenant_not_found(id: &TenantId) -> Error {
    Error::not_found("TENANT_NOT_FOUND", format!("tenant {id} not found"))
}
