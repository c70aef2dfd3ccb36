//! The relationships service's shared state and the steps every handler
//! takes: who is calling, may they (asked of identity), record what they did.

use std::sync::Arc;

use sovra_proto::identity::v1 as idpb;
use sovra_runtime::{
    audit,
    clock::{Millis, SharedClock, DAY_MS, HOUR_MS},
    config::{LimitSettings, Settings},
    db::{Db, Tx},
    features::{Feature, Features},
    idempotency::Idempotency,
    ids::TenantId,
    links::LinkCodes,
    Error,
};
pub(crate) use sovra_runtime::{audit::Change, auth::Ctx};

use sovra_runtime::peers::{Access, IdentityClient, Programs};
use sovra_runtime::ratelimit::MutationLimits;

use crate::{outbox::Outbox, store::customers};

/// What relationships needs from configuration.
#[derive(Debug, Clone)]
pub struct RelationshipsConfig {
    pub instance: String,
    /// Live flags (reloaded without a restart).
    pub features: Features,
    pub link_ttl_ms: i64,
    pub idempotency_retention_ms: i64,
    pub limits: LimitSettings,
}

impl RelationshipsConfig {
    pub fn from_settings(s: &Settings) -> Self {
        Self {
            instance: s.instance.name.clone(),
            features: Features::new(&s.instance.name, s.features, &s.feature_overrides),
            link_ttl_ms: s.relationships.link_ttl_days as i64 * DAY_MS,
            idempotency_retention_ms: s.relationships.idempotency_retention_hours as i64 * HOUR_MS,
            limits: s.limits.clone(),
        }
    }
}

/// The relationships service: one value implements all four gRPC services.
#[derive(Clone)]
pub struct Relationships {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub db: Db,
    pub identity: Arc<IdentityClient>,
    pub outbox: Outbox,
    pub links: LinkCodes,
    pub clock: SharedClock,
    pub cfg: RelationshipsConfig,
    /// Mutating calls per partner, and per partner and customer.
    pub limits: MutationLimits,
}

impl Relationships {
    pub fn new(
        db: Db,
        identity: Arc<IdentityClient>,
        outbox: Outbox,
        links: LinkCodes,
        clock: SharedClock,
        cfg: RelationshipsConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                identity,
                outbox,
                links,
                clock,
                limits: MutationLimits::new(&cfg.limits),
                cfg,
            }),
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

    pub(crate) fn links(&self) -> &LinkCodes {
        &self.inner.links
    }

    pub fn outbox(&self) -> &Outbox {
        &self.inner.outbox
    }

    pub(crate) fn cfg(&self) -> &RelationshipsConfig {
        &self.inner.cfg
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

    /// Requires the user to be allowed `p` in `tenant`. A tenant the user's
    /// company has nothing to do with answers NOT_FOUND, so it can't be probed.
    pub(crate) async fn require(
        &self,
        ctx: &Ctx,
        tenant: &TenantId,
        p: idpb::Permission,
    ) -> Result<Access, Error> {
        let access = self.check(ctx, tenant, p).await?;
        if access.allowed {
            return Ok(access);
        }
        Err(self.denied(ctx, tenant, access.reason).await?)
    }

    /// The refusal for a user not allowed in `tenant`: PERMISSION_DENIED with
    /// identity's reason when the user's company is related to it, else NOT_FOUND.
    pub(crate) async fn denied(
        &self,
        ctx: &Ctx,
        tenant: &TenantId,
        reason: String,
    ) -> Result<Error, Error> {
        let u = ctx.user()?;
        let related = u.tenant_id == tenant.as_str()
            || customers::read(self.db(), &u.tenant_id, tenant.as_str())
                .await?
                .is_some();
        Ok(if related {
            Error::permission_denied("PERMISSION_DENIED", reason)
        } else {
            Error::not_found("TENANT_NOT_FOUND", format!("tenant {tenant} not found"))
        })
    }

    /// Requires a global admin of `customer` acting in its own name (a
    /// partner's delegated rights do not accept or end partner relationships).
    pub(crate) async fn require_customer_global_admin(
        &self,
        ctx: &Ctx,
        customer: &TenantId,
        what: &str,
    ) -> Result<(), Error> {
        let u = ctx.user()?;
        let refuse = || {
            Error::permission_denied(
                "CUSTOMER_GLOBAL_ADMIN_REQUIRED",
                format!("only a global admin of tenant {customer} may {what}"),
            )
        };
        if u.tenant_id != customer.as_str() {
            return Err(refuse());
        }
        let access = self
            .check(ctx, customer, idpb::Permission::PartnerRelationshipsManage)
            .await?;
        if access.own_role() {
            Ok(())
        } else {
            Err(refuse())
        }
    }

    /// The partner tenant, which must be active and hold one of `programs`.
    pub(crate) async fn partner(
        &self,
        ctx: &Ctx,
        partner: &TenantId,
        programs: &[idpb::PartnerAuthorization],
    ) -> Result<idpb::Tenant, Error> {
        self.identity()
            .partner(
                "partner_tenant_id",
                partner.as_str(),
                Programs::AnyOf(programs),
                &ctx.trace_id,
            )
            .await
    }

    /// The customer tenant named in `field`, which must be a customer.
    pub(crate) async fn customer(
        &self,
        ctx: &Ctx,
        field: &str,
        customer: &TenantId,
    ) -> Result<idpb::Tenant, Error> {
        self.identity()
            .customer(field, customer.as_str(), &ctx.trace_id)
            .await
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

    /// Forgets old request ids, once.
    pub async fn housekeep(&self) -> Result<u64, Error> {
        sovra_runtime::idempotency::expire(
            self.db(),
            self.now() - self.cfg().idempotency_retention_ms,
        )
        .await
    }
}
