//! `sovra.identity.v1.AccessService`: the one place access is decided, and
//! the delegated grants relationships pushes.

use sovra_proto::identity::v1 as pb;
use sovra_runtime::{
    audit,
    auth::Caller,
    idempotency::{after_commit_failed, replay, Idempotency},
    Error,
};
use tonic::{Request, Response, Status};

use super::convert::*;
use crate::{
    domain::{ids::UserId, roles::TenantKind, values::parse_text},
    service::{Change, Identity},
    store::grants,
};

type Rpc<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::access_service_server::AccessService for Identity {
    async fn check_access(
        &self,
        req: Request<pb::CheckAccessRequest>,
    ) -> Rpc<pb::CheckAccessResponse> {
        let ctx = self.ctx(&req)?;
        let r = req.into_inner();
        let permission = permission_from_pb("permission", r.permission)?;
        let tid = self.tenant_id("tenant_id", &r.tenant_id)?;
        if ctx.caller.is_service() {
            ctx.require_service(&["relationships", "commerce"], "check users' access")?;
        }
        let user_id = match (&ctx.caller, r.user_id.is_empty()) {
            (Caller::User(me), true) => me.user_id.clone(),
            (Caller::User(me), false) if me.user_id == r.user_id => me.user_id.clone(),
            (Caller::User(_), false) => {
                return Err(Error::permission_denied(
                    "SELF_ONLY",
                    "a user may only check its own access; services and the operator may check anyone's",
                )
                .into())
            }
            (_, true) => return Err(Error::invalid("user_id", "is required when the caller is not a user").into()),
            (_, false) => UserId::parse("user_id", &r.user_id)?.as_str().to_owned(),
        };
        let decision = self
            .decide_for_user(&user_id, tid.as_str(), permission)
            .await?
            .ok_or_else(|| {
                Error::not_found("USER_NOT_FOUND", format!("user {user_id} not found"))
            })?;
        Ok(Response::new(pb::CheckAccessResponse {
            allowed: decision.allowed,
            basis: basis_to_pb(decision.basis),
            reason: decision.reason,
        }))
    }

    async fn apply_delegated_grant(
        &self,
        req: Request<pb::ApplyDelegatedGrantRequest>,
    ) -> Rpc<pb::ApplyDelegatedGrantResponse> {
        let ctx = self.ctx(&req)?;
        ctx.require_service(&["relationships"], "push delegated grants")?;
        let r = req.into_inner();
        let partner = self.tenant_id("partner_tenant_id", &r.partner_tenant_id)?;
        let customer = self.tenant_id("customer_tenant_id", &r.customer_tenant_id)?;
        let relationship_id = parse_text("relationship_id", &r.relationship_id, 128)?;
        if relationship_id.is_empty() {
            return Err(Error::invalid("relationship_id", "is required").into());
        }
        let state = grant_state_from_pb("state", r.state)?;
        if r.version < 1 {
            return Err(Error::invalid("version", "must be at least 1").into());
        }
        let idem = Idempotency::new(&ctx.caller, "ApplyDelegatedGrant", &r.request_id, &r)?;
        if self
            .tenant(&partner)
            .await
            .map_err(|e| e.with_violation("partner_tenant_id", "not found"))?
            .kind
            != TenantKind::Partner
        {
            return Err(Error::invalid(
                "partner_tenant_id",
                "names a customer tenant, not a partner",
            )
            .into());
        }
        if self
            .tenant(&customer)
            .await
            .map_err(|e| e.with_violation("customer_tenant_id", "not found"))?
            .kind
            != TenantKind::Customer
        {
            return Err(Error::invalid(
                "customer_tenant_id",
                "names a partner tenant, not a customer",
            )
            .into());
        }
        let now = self.now();
        let pushed = grants::Pushed {
            partner: partner.as_str(),
            customer: customer.as_str(),
            relationship_id: &relationship_id,
            state,
            version: r.version,
            now,
        };
        let action = format!(
            "identity.delegated_grant.{}",
            state.as_str().to_ascii_lowercase()
        );
        // An older or equal version changes nothing, so nothing is audited.
        let change = || Change {
            tenant_id: customer.as_str(),
            delegated: false,
            action: &action,
            target: format!("delegated_grants/{partner}"),
        };
        // A delivery is almost always a newer version, applied as one
        // statement with its audit record and stored answer, without
        // looking up the request id first: a repeat, an older version or a
        // reused request id finds the upsert refused and takes the
        // transaction below, which replays or answers what is stored.
        let newer = pb::ApplyDelegatedGrantResponse {
            applied: true,
            current_version: r.version,
            current_state: grant_state_to_pb(state),
        };
        let mut w = grants::apply_guard(pushed);
        audit::add(
            &mut w,
            now,
            &ctx,
            Some(change()),
            &r.request_id,
            &idem,
            &newer,
        );
        match self
            .commit_grant_writes((partner.as_str(), customer.as_str()), w)
            .await
        {
            Ok(true) => return Ok(Response::new(newer)),
            Ok(false) => {}
            Err(e) => {
                return Ok(Response::new(
                    after_commit_failed(&idem, self.db(), e).await?,
                ))
            }
        }

        let mut tx = self.db().begin().await?;
        if let Some(prev) = replay(&idem, &mut tx).await? {
            return Ok(Response::new(prev));
        }
        let applied = grants::apply(&mut tx, pushed).await?;
        let resp = pb::ApplyDelegatedGrantResponse {
            applied: applied.applied,
            current_version: applied.version,
            current_state: grant_state_to_pb(applied.state),
        };
        self.commit_grant(
            (partner.as_str(), customer.as_str()),
            tx,
            &ctx,
            applied.applied.then(change),
            &r.request_id,
            &idem,
            &resp,
        )
        .await?;
        Ok(Response::new(resp))
    }
}
