//! `sovra.relationships.v1.DelegatedAdminService`: offers, acceptance under
//! the multi-channel rule, removal and reassignment, each pushed to identity
//! through the grant outbox.

use sovra_proto::{identity::v1 as idpb, relationships::v1 as pb};
use sovra_runtime::{
    audit,
    auth::{trace_id, Ctx},
    clock::{to_timestamp, Millis},
    db::Tx,
    features::Feature,
    idempotency::{self, after_commit_failed, replay, Idempotency},
    ids::TenantId,
    paging,
    writes::Writes,
    Error,
};
use tonic::{Request, Response};

use super::{convert::*, Rpc};
use crate::{
    domain::states::{DelegatedState, LinkKind},
    service::{Change, Relationships},
    store::{
        customers,
        delegated::{self, Relationship, Side},
        links,
        outbox::GrantChange,
    },
};

impl Relationships {
    /// Moves `rel` to `state` and queues the grant change for identity, in
    /// `tx`, with `then` (the change's audit record and stored answer,
    /// which `then` builds from the moved relationship).
    async fn transition(
        &self,
        tx: &mut Tx,
        rel: &mut Relationship,
        state: DelegatedState,
        now: Millis,
        then: impl FnOnce(&Relationship) -> Writes,
    ) -> Result<GrantChange, Error> {
        advance(rel, state, now);
        let then = then(rel);
        delegated::transition(tx, rel, self.outbox().now(), then).await
    }

    /// Makes `partner` the customer's active delegated administrator in
    /// `tx`, under the multi-channel rule: another partner's active
    /// relationship is refused, or with `reassign` ended (REASSIGNED). A
    /// PENDING relationship from `offer_id` is activated, else one is
    /// created. `then` builds, from the activated relationship and the
    /// partner it was reassigned from, the writes that go with the
    /// activation (its audit record and stored answer).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn activate(
        &self,
        tx: &mut Tx,
        ctx: &Ctx,
        partner: &TenantId,
        customer: &idpb::Tenant,
        offer_id: &str,
        reassign: bool,
        now: Millis,
        then: impl FnOnce(&Relationship, Option<&str>) -> Writes,
    ) -> Result<Activated, Error> {
        let customer_id = customer.id.as_str();
        delegated::lock_customer(tx, customer_id).await?;
        let mut changes = Vec::new();
        let mut reassigned_from = None;
        let (held, pending) = delegated::held_and_pending(&mut **tx, customer_id, offer_id).await?;
        if let Some(mut held) = held {
            if held.partner_tenant_id == partner.as_str() {
                return Ok(Activated::Already(held));
            }
            if !reassign {
                let holder = self.holder_name(ctx, &held.partner_tenant_id).await;
                return Err(Error::failed_precondition(
                    "DELEGATED_ADMIN_HELD",
                    format!(
                        "partner {holder} holds active delegated administration of tenant {customer_id}; \
                         at most one partner may. Set reassign to end it and move delegated administration to this partner"
                    ),
                ));
            }
            held.reassigned_to = Some(partner.to_string());
            changes.push(
                self.transition(tx, &mut held, DelegatedState::Reassigned, now, |_| {
                    Writes::new()
                })
                .await?,
            );
            reassigned_from = Some(held.partner_tenant_id.clone());
        }
        // A relationship made here is activated at once (the transition
        // makes it version 1); its row goes with the customer's.
        let mut fresh = Writes::new();
        let mut rel = match pending {
            Some(p) => p,
            None => {
                let made = Relationship {
                    version: 0,
                    ..Relationship::pending(partner.as_str(), customer_id, offer_id, now)
                };
                fresh.insert(delegated::row(&made));
                made
            }
        };
        customers::touch_then(
            tx,
            partner.as_str(),
            customer_id,
            &customer.display_name,
            &customer.primary_domain,
            now,
            fresh,
        )
        .await?;
        let from = reassigned_from.as_deref();
        changes.push(
            self.transition(tx, &mut rel, DelegatedState::Active, now, |r| then(r, from))
                .await?,
        );
        Ok(Activated::Now(Activation { rel, changes }))
    }

    /// Authorizes a user to read relationships of `tenant`, on whichever side.
    async fn require_side(
        &self,
        ctx: &Ctx,
        tenant: &TenantId,
        partner_side: bool,
    ) -> Result<(), Error> {
        if ctx.caller.is_operator() {
            return Ok(());
        }
        let p = if partner_side {
            idpb::Permission::CustomersRead
        } else {
            idpb::Permission::UsersRead
        };
        self.require(ctx, tenant, p).await.map(|_| ())
    }

    /// An acceptance that makes a new relationship, as a transaction of its
    /// own in one round trip (see [`delegated::activate_alone`]): read
    /// first, outside any transaction, when the customer has no ACTIVE
    /// relationship and the offer no PENDING one; the transaction writes
    /// the relationship ACTIVE with the rest of the change, its audit
    /// record and stored answer. A relationship made ACTIVE meanwhile makes
    /// the database's one-ACTIVE index refuse it. None then, or when the
    /// read found anything: the caller takes the transaction, which reads
    /// again under the lock and applies the multi-channel rule (or replays).
    #[allow(clippy::too_many_arguments)]
    async fn accept_at_once(
        &self,
        ctx: &Ctx,
        partner: &TenantId,
        customer_id: &TenantId,
        customer: &idpb::Tenant,
        offer_id: &str,
        r: &pb::AcceptDelegatedAdminOfferRequest,
        idem: &Option<Idempotency>,
    ) -> Result<Option<pb::AcceptDelegatedAdminOfferResponse>, Error> {
        let (held, pending) =
            delegated::held_and_pending(self.db().read(), customer_id.as_str(), offer_id).await?;
        if held.is_some() || pending.is_some() {
            return Ok(None);
        }
        let now = self.now();
        let mut rel = Relationship {
            version: 0,
            ..Relationship::pending(partner.as_str(), customer_id.as_str(), offer_id, now)
        };
        advance(&mut rel, DelegatedState::Active, now);
        let w = acceptance(
            ctx,
            customer_id,
            partner,
            &r.request_id,
            idem,
            now,
            &rel,
            None,
        );
        let named = (
            customer.display_name.as_str(),
            customer.primary_domain.as_str(),
        );
        match delegated::activate_alone(self.db(), &rel, named, self.outbox().now(), w).await {
            Ok(Some(change)) => Ok(Some(self.accepted(&rel, &[change]).await)),
            Ok(None) => Ok(None),
            Err(e) => after_commit_failed(idem, self.db(), e).await.map(Some),
        }
    }

    /// After an acceptance's commit: counted, delivered to identity, answered.
    async fn accepted(
        &self,
        rel: &Relationship,
        changes: &[GrantChange],
    ) -> pb::AcceptDelegatedAdminOfferResponse {
        sovra_runtime::metrics::business::link_redeemed(LinkKind::DelegatedAdmin.as_str());
        sovra_runtime::metrics::business::delegated_admin("accepted");
        self.outbox().deliver_now(changes).await;
        pb::AcceptDelegatedAdminOfferResponse {
            relationship: Some(relationship_to_pb(rel)),
        }
    }

    /// A removal as a transaction of its own in one round trip (see
    /// [`delegated::transition_alone`]): the relationship read first,
    /// outside any transaction, and removed only if it is still what was
    /// read (ACTIVE, same version), under the customer's lock (on SQLite,
    /// the one writer), with its audit record and stored answer. None when
    /// it was not: the caller takes the transaction, which reads again
    /// under the lock and replays, refuses or removes.
    async fn remove_at_once(
        &self,
        ctx: &Ctx,
        customer: &TenantId,
        r: &pb::RemoveDelegatedAdminRequest,
        idem: &Option<Idempotency>,
    ) -> Result<Option<pb::RemoveDelegatedAdminResponse>, Error> {
        let read = self.db().read();
        let seen = if r.id.is_empty() {
            delegated::active_for_customer(read, customer.as_str()).await?
        } else {
            delegated::get(read, &r.id).await?
        };
        let Some(mut rel) = seen.filter(|d| {
            d.customer_tenant_id == customer.as_str() && d.state == DelegatedState::Active
        }) else {
            return Ok(None);
        };
        let from_version = rel.version;
        let now = self.now();
        advance(&mut rel, DelegatedState::Removed, now);
        let w = removal(ctx, customer, &r.request_id, idem, now, &rel);
        // No lookup of an earlier answer first: a retry finds the
        // relationship removed (and takes the transaction, which replays),
        // or, removing whichever is active, the request id's uniqueness.
        match delegated::transition_alone(self.db(), &rel, from_version, self.outbox().now(), w)
            .await
        {
            Ok(Some(change)) => Ok(Some(self.removed(&rel, change).await)),
            Ok(None) => Ok(None),
            Err(e) => after_commit_failed(idem, self.db(), e).await.map(Some),
        }
    }

    /// After a removal's commit: counted, delivered to identity, answered.
    async fn removed(
        &self,
        rel: &Relationship,
        change: GrantChange,
    ) -> pb::RemoveDelegatedAdminResponse {
        sovra_runtime::metrics::business::delegated_admin("removed");
        self.outbox().deliver_now(&[change]).await;
        pb::RemoveDelegatedAdminResponse {
            relationship: Some(relationship_to_pb(rel)),
        }
    }

    /// The current holder's name for the multi-channel refusal.
    async fn holder_name(&self, ctx: &Ctx, partner: &str) -> String {
        match self.identity().tenant("code", partner, &ctx.trace_id).await {
            Ok(t) => format!("{} ({partner})", t.display_name),
            Err(_) => partner.to_owned(),
        }
    }
}

/// Moves `rel` to `state` at `now`, in memory: its next version.
fn advance(rel: &mut Relationship, state: DelegatedState, now: Millis) {
    rel.state = state;
    rel.version += 1;
    rel.updated_at = now;
    match state {
        DelegatedState::Active => rel.activated_at = Some(now),
        _ => rel.ended_at = Some(now),
    }
}

/// An acceptance's audit record and stored answer (reassigned `from`
/// another partner, or not), to write with its transition.
#[allow(clippy::too_many_arguments)]
fn acceptance(
    ctx: &Ctx,
    customer: &TenantId,
    partner: &TenantId,
    request_id: &str,
    idem: &Option<Idempotency>,
    now: Millis,
    rel: &Relationship,
    from: Option<&str>,
) -> Writes {
    let resp = pb::AcceptDelegatedAdminOfferResponse {
        relationship: Some(relationship_to_pb(rel)),
    };
    let (action, target) = match from {
        Some(from) => (
            "relationships.delegated_admin.reassign",
            format!(
                "delegated_admin_relationships/{} (from partner {from} to {partner})",
                rel.id
            ),
        ),
        None => (
            "relationships.delegated_admin.accept",
            format!(
                "delegated_admin_relationships/{} (partner {partner})",
                rel.id
            ),
        ),
    };
    let change = Change {
        tenant_id: customer.as_str(),
        delegated: false,
        action,
        target,
    };
    let mut w = Writes::new();
    audit::add(&mut w, now, ctx, Some(change), request_id, idem, &resp);
    w
}

/// A removal's audit record and stored answer, to write with its
/// transition.
fn removal(
    ctx: &Ctx,
    customer: &TenantId,
    request_id: &str,
    idem: &Option<Idempotency>,
    now: Millis,
    rel: &Relationship,
) -> Writes {
    let resp = pb::RemoveDelegatedAdminResponse {
        relationship: Some(relationship_to_pb(rel)),
    };
    let audit = Change {
        tenant_id: customer.as_str(),
        delegated: false,
        action: "relationships.delegated_admin.remove",
        target: format!(
            "delegated_admin_relationships/{} (partner {})",
            rel.id, rel.partner_tenant_id
        ),
    };
    let mut w = Writes::new();
    audit::add(&mut w, now, ctx, Some(audit), request_id, idem, &resp);
    w
}

/// What [`Relationships::activate`] found or did.
pub(crate) enum Activated {
    /// The partner already held it.
    Already(Relationship),
    Now(Activation),
}

pub(crate) struct Activation {
    pub rel: Relationship,
    /// Grant changes to deliver after commit.
    pub changes: Vec<GrantChange>,
}

#[tonic::async_trait]
impl pb::delegated_admin_service_server::DelegatedAdminService for Relationships {
    async fn create_delegated_admin_offer(
        &self,
        req: Request<pb::CreateDelegatedAdminOfferRequest>,
    ) -> Rpc<pb::CreateDelegatedAdminOfferResponse> {
        let ctx = Ctx::of(&req)?;
        let r = req.into_inner();
        self.require_feature(Feature::DelegatedAdmin, Some(&r.partner_tenant_id))?;
        let partner = self.tenant_id("partner_tenant_id", &r.partner_tenant_id)?;
        let customer = match r.customer_tenant_id.as_str() {
            "" => None,
            c => Some(self.tenant_id("customer_tenant_id", c)?),
        };
        let idem = Idempotency::new(&ctx.caller, "CreateDelegatedAdminOffer", &r.request_id, &r)?;
        self.require(&ctx, &partner, idpb::Permission::PartnerLinksCreate)
            .await?;
        self.partner(
            &ctx,
            &partner,
            &[idpb::PartnerAuthorization::DelegatedAdmin],
        )
        .await?;
        if let Some(c) = &customer {
            self.customer(&ctx, "customer_tenant_id", c).await?;
        }
        self.inner.limits.check(&partner, customer.as_ref())?;
        let (link, code) =
            self.new_link(&ctx, LinkKind::DelegatedAdmin, &partner, customer.as_ref());
        // No lookup of an earlier answer first: a retry writes a link with a
        // fresh id, and the request id's uniqueness turns it into a replay
        // (see `after_commit_failed`). The link, the PENDING relationship,
        // the audit record and the answer are one statement on PostgreSQL.
        let mut w = Writes::new();
        w.insert(links::row(&link));
        if let Some(c) = &customer {
            // An offer to one customer shows as PENDING on both sides.
            w.insert(delegated::row(&Relationship::pending(
                partner.as_str(),
                c.as_str(),
                &link.id,
                link.created_at,
            )));
        }
        let resp = pb::CreateDelegatedAdminOfferResponse {
            offer: Some(offer_to_pb(&link, &code)),
        };
        let change = Change {
            tenant_id: partner.as_str(),
            delegated: false,
            action: "relationships.delegated_admin_offer.create",
            target: format!("links/{}", link.id),
        };
        audit::add(
            &mut w,
            self.now(),
            &ctx,
            Some(change),
            &r.request_id,
            &idem,
            &resp,
        );
        if let Err(e) = w.commit(self.db()).await {
            let prev = after_commit_failed(&idem, self.db(), idempotency::write_error(e)).await?;
            return Ok(Response::new(prev));
        }
        sovra_runtime::metrics::business::link_created(LinkKind::DelegatedAdmin.as_str());
        Ok(Response::new(resp))
    }

    async fn preview_delegated_admin_offer(
        &self,
        req: Request<pb::PreviewDelegatedAdminOfferRequest>,
    ) -> Rpc<pb::PreviewDelegatedAdminOfferResponse> {
        // No sign-in: anyone holding the link may see what it offers.
        self.require_feature(Feature::DelegatedAdmin, None)?;
        let (partner, link) = self
            .preview(
                &trace_id(&req),
                LinkKind::DelegatedAdmin,
                &req.get_ref().code,
            )
            .await?;
        Ok(Response::new(pb::PreviewDelegatedAdminOfferResponse {
            partner: Some(partner),
            expire_time: Some(to_timestamp(link.expires_at)),
        }))
    }

    async fn accept_delegated_admin_offer(
        &self,
        req: Request<pb::AcceptDelegatedAdminOfferRequest>,
    ) -> Rpc<pb::AcceptDelegatedAdminOfferResponse> {
        let ctx = Ctx::of(&req)?;
        let r = req.into_inner();
        self.require_feature(Feature::DelegatedAdmin, None)?;
        let link = self.live_link(LinkKind::DelegatedAdmin, &r.code).await?;
        let customer = self.tenant_id("customer_tenant_id", &r.customer_tenant_id)?;
        let idem = Idempotency::new(&ctx.caller, "AcceptDelegatedAdminOffer", &r.request_id, &r)?;
        if link
            .customer_tenant_id
            .as_deref()
            .is_some_and(|c| c != customer.as_str())
        {
            return Err(Error::permission_denied(
                "OFFER_FOR_ANOTHER_CUSTOMER",
                "this delegated-admin offer was made to another customer",
            )
            .into());
        }
        self.require_customer_global_admin(&ctx, &customer, "accept delegated administration")
            .await?;
        let c = self.customer(&ctx, "customer_tenant_id", &customer).await?;
        let partner = self.tenant_id("code", &link.partner_tenant_id)?;
        self.partner(
            &ctx,
            &partner,
            &[idpb::PartnerAuthorization::DelegatedAdmin],
        )
        .await?;
        if let Some(resp) = self
            .accept_at_once(&ctx, &partner, &customer, &c, &link.id, &r, &idem)
            .await?
        {
            return Ok(Response::new(resp));
        }

        let mut tx = self.db().begin().await?;
        if let Some(prev) = replay(&idem, &mut tx).await? {
            return Ok(Response::new(prev));
        }
        let now = self.now();
        // The acceptance's audit record and stored answer go with its
        // transition, in the same call.
        let answer = |rel: &Relationship, from: Option<&str>| {
            acceptance(
                &ctx,
                &customer,
                &partner,
                &r.request_id,
                &idem,
                now,
                rel,
                from,
            )
        };
        let Activation { rel, changes } = match self
            .activate(
                &mut tx, &ctx, &partner, &c, &link.id, r.reassign, now, answer,
            )
            .await?
        {
            Activated::Already(held) => {
                // Accepting again changes nothing and answers the same relationship.
                let resp = pb::AcceptDelegatedAdminOfferResponse {
                    relationship: Some(relationship_to_pb(&held)),
                };
                self.commit(tx, &ctx, None, &r.request_id, &idem, &resp)
                    .await?;
                return Ok(Response::new(resp));
            }
            Activated::Now(a) => a,
        };
        tx.commit().await.map_err(Error::from)?;
        Ok(Response::new(self.accepted(&rel, &changes).await))
    }

    async fn remove_delegated_admin(
        &self,
        req: Request<pb::RemoveDelegatedAdminRequest>,
    ) -> Rpc<pb::RemoveDelegatedAdminResponse> {
        let ctx = Ctx::of(&req)?;
        let r = req.into_inner();
        // No feature check: a customer can always end delegated administration.
        let customer = self.tenant_id("customer_tenant_id", &r.customer_tenant_id)?;
        let idem = Idempotency::new(&ctx.caller, "RemoveDelegatedAdmin", &r.request_id, &r)?;
        self.require_customer_global_admin(&ctx, &customer, "remove delegated administration")
            .await?;
        if let Some(resp) = self.remove_at_once(&ctx, &customer, &r, &idem).await? {
            return Ok(Response::new(resp));
        }
        let mut tx = self.db().begin().await?;
        if let Some(prev) = replay(&idem, &mut tx).await? {
            return Ok(Response::new(prev));
        }
        let mut rel = if r.id.is_empty() {
            delegated::lock_customer(&mut tx, customer.as_str()).await?;
            delegated::active_for_customer(&mut *tx, customer.as_str())
                .await?
                .ok_or_else(|| {
                    Error::not_found(
                        "NO_ACTIVE_DELEGATED_ADMIN",
                        format!(
                            "no partner holds active delegated administration of tenant {customer}"
                        ),
                    )
                })?
        } else {
            delegated::lock_and_get(&mut tx, customer.as_str(), &r.id)
                .await?
                .filter(|d| d.customer_tenant_id == customer.as_str())
                .ok_or_else(|| {
                    Error::not_found(
                        "RELATIONSHIP_NOT_FOUND",
                        format!(
                            "tenant {customer} has no delegated-admin relationship {}",
                            r.id
                        ),
                    )
                    .with_violation("id", "not found")
                })?
        };
        if rel.state != DelegatedState::Active {
            return Err(Error::failed_precondition(
                "RELATIONSHIP_NOT_ACTIVE",
                format!(
                    "delegated-admin relationship {} is {}; only an ACTIVE one can be removed",
                    rel.id, rel.state
                ),
            )
            .into());
        }
        // The removal's audit record and stored answer go with its
        // transition, in the same call.
        let now = self.now();
        let answer = |rel: &Relationship| removal(&ctx, &customer, &r.request_id, &idem, now, rel);
        let change = self
            .transition(&mut tx, &mut rel, DelegatedState::Removed, now, answer)
            .await?;
        tx.commit().await.map_err(Error::from)?;
        Ok(Response::new(self.removed(&rel, change).await))
    }

    async fn revoke_delegated_admin_offer(
        &self,
        req: Request<pb::RevokeDelegatedAdminOfferRequest>,
    ) -> Rpc<pb::RevokeDelegatedAdminOfferResponse> {
        let ctx = Ctx::of(&req)?;
        let r = req.into_inner();
        let idem = Idempotency::new(&ctx.caller, "RevokeDelegatedAdminOffer", &r.request_id, &r)?;
        let resp = self
            .revoke_link(
                &ctx,
                LinkKind::DelegatedAdmin,
                "partner_tenant_id",
                &r.partner_tenant_id,
                &r.id,
                &r.request_id,
                idem,
                |l| pb::RevokeDelegatedAdminOfferResponse {
                    offer: Some(offer_to_pb(l, "")),
                },
            )
            .await?;
        Ok(Response::new(resp))
    }

    async fn get_delegated_admin_relationship(
        &self,
        req: Request<pb::GetDelegatedAdminRelationshipRequest>,
    ) -> Rpc<pb::GetDelegatedAdminRelationshipResponse> {
        let ctx = Ctx::of(&req)?;
        let r = req.into_inner();
        let tenant = self.tenant_id("tenant_id", &r.tenant_id)?;
        if r.id.is_empty() {
            return Err(Error::invalid("id", "is required").into());
        }
        let not_found = || {
            Error::not_found(
                "RELATIONSHIP_NOT_FOUND",
                format!(
                    "tenant {tenant} has no delegated-admin relationship {}",
                    r.id
                ),
            )
        };
        let rel = delegated::get(self.db().read(), &r.id).await?.filter(|d| {
            d.partner_tenant_id == tenant.as_str() || d.customer_tenant_id == tenant.as_str()
        });
        let partner_side = rel
            .as_ref()
            .is_some_and(|d| d.partner_tenant_id == tenant.as_str());
        // Authorize before answering, so ids can't be probed across tenants.
        self.require_side(&ctx, &tenant, partner_side).await?;
        let rel = rel.ok_or_else(not_found)?;
        Ok(Response::new(pb::GetDelegatedAdminRelationshipResponse {
            relationship: Some(relationship_to_pb(&rel)),
        }))
    }

    async fn list_delegated_admin_relationships(
        &self,
        req: Request<pb::ListDelegatedAdminRelationshipsRequest>,
    ) -> Rpc<pb::ListDelegatedAdminRelationshipsResponse> {
        let ctx = Ctx::of(&req)?;
        let r = req.into_inner();
        let (tenant, partner_side) = match (r.partner_tenant_id.is_empty(), r.customer_tenant_id.is_empty()) {
            (false, true) => (self.tenant_id("partner_tenant_id", &r.partner_tenant_id)?, true),
            (true, false) => (self.tenant_id("customer_tenant_id", &r.customer_tenant_id)?, false),
            _ => {
                return Err(Error::invalid(
                    "partner_tenant_id",
                    "set exactly one of partner_tenant_id (the partner's view) and customer_tenant_id (the customer's view)",
                )
                .into())
            }
        };
        let state = state_from_pb("state", r.state)?;
        let size = paging::page_size(r.page_size)?;
        let before = paging::decode_token("dar", &r.page_token, 1)?.map(|mut v| v.remove(0));
        self.require_side(&ctx, &tenant, partner_side).await?;
        let side = if partner_side {
            Side::Partner(tenant.as_str())
        } else {
            Side::Customer(tenant.as_str())
        };
        let mut rows =
            delegated::list(self.db().read(), side, state, before.as_deref(), size + 1).await?;
        let next_page_token = paging::cut(&mut rows, size, "dar", |r| vec![r.id.clone()]);
        Ok(Response::new(pb::ListDelegatedAdminRelationshipsResponse {
            relationships: rows.iter().map(relationship_to_pb).collect(),
            next_page_token,
        }))
    }
}
