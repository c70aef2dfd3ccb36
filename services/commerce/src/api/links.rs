//! `TrialInvitationService` and `PurchaseOfferService` (create, get, list,
//! revoke) and `LinkService.PreviewLink`. Redemption is in `redeem`.

use sovra_proto::{commerce::v1 as pb, identity::v1 as idpb};
use sovra_runtime::{
    auth::{trace_id, Ctx},
    clock::to_timestamp,
    features::Feature,
    idempotency::{self, after_commit_failed, replay, Idempotency},
    links::check_live,
    metrics::business,
    paging,
    writes::Writes,
    Error,
};
use tonic::{Request, Response};

use super::{
    convert::{lines_to_pb, offer_to_pb, product_to_pb, trial_to_pb},
    Rpc,
};
use crate::{
    domain::states::LinkKind,
    service::{Change, Commerce},
    store::links::{self, Line, LinkRecord},
};

/// The most lines one purchase offer may hold.
const MAX_OFFER_LINES: usize = 20;

/// What creating a link of either kind takes.
struct NewLink<'a> {
    kind: LinkKind,
    request_id: &'a str,
    partner_tenant_id: &'a str,
    lines: Vec<Line>,
    include_delegated_admin: bool,
}

impl Commerce {
    /// Checks the kind's feature and the code (authentic, this instance,
    /// this kind) before anything is read, then loads its record and refuses
    /// it when revoked or expired.
    pub(crate) async fn live_link(&self, kind: LinkKind, code: &str) -> Result<LinkRecord, Error> {
        self.require_feature(kind.feature(), None)?;
        let id = self.inner.links.verify("code", kind.as_str(), code)?;
        let record = links::get(self.db(), &id)
            .await?
            .filter(|l| l.kind == kind)
            .ok_or_else(|| {
                Error::not_found(
                    "LINK_NOT_FOUND",
                    format!("no {} has this code", kind.label()),
                )
                .with_violation("code", "not found")
            })?;
        check_live(
            kind.label(),
            record.expires_at,
            record.revoked_at,
            self.now(),
        )?;
        // A tenant override may have turned the kind off for its partner.
        self.require_feature(kind.feature(), Some(&record.partner_tenant_id))?;
        Ok(record)
    }

    /// The programs a link's partner needs.
    pub(crate) fn programs(include_delegated_admin: bool) -> Vec<idpb::PartnerAuthorization> {
        let mut p = vec![idpb::PartnerAuthorization::SubscriptionAdvisor];
        if include_delegated_admin {
            p.push(idpb::PartnerAuthorization::DelegatedAdmin);
        }
        p
    }

    async fn create_link<M: prost::Message + Default>(
        &self,
        ctx: &Ctx,
        n: NewLink<'_>,
        idem: Option<Idempotency>,
        respond: impl FnOnce(&LinkRecord, &str) -> M,
    ) -> Result<M, Error> {
        let partner = self.tenant_id("partner_tenant_id", n.partner_tenant_id)?;
        self.require(ctx, &partner, idpb::Permission::PartnerOffersCreate)
            .await?;
        self.partner(
            ctx,
            "partner_tenant_id",
            partner.as_str(),
            &Self::programs(n.include_delegated_admin),
        )
        .await?;
        self.inner.limits.check(&partner, None)?;
        let issued = self.inner.links.issue(n.kind.as_str());
        let now = self.now();
        let link = LinkRecord {
            id: issued.id,
            kind: n.kind,
            partner_tenant_id: partner.to_string(),
            lines: n.lines,
            include_delegated_admin: n.include_delegated_admin,
            url: issued.url,
            redemption_count: Some(0),
            created_by: ctx.caller.principal(),
            created_at: now,
            expires_at: now + self.cfg().link_ttl_ms,
            revoked_at: None,
        };
        // No lookup of an earlier answer first: a retry writes a link with a
        // fresh id, and the request id's uniqueness turns it into a replay
        // (see `after_commit_failed`). The link, its audit record and the
        // answer are one statement on PostgreSQL.
        let resp = respond(&link, &issued.code);
        let change = Change {
            tenant_id: partner.as_str(),
            delegated: false,
            action: match n.kind {
                LinkKind::Trial => "commerce.trial_invitation.create",
                LinkKind::Offer => "commerce.purchase_offer.create",
            },
            target: format!("{}s/{}", n.kind.as_str(), link.id),
        };
        let mut w = Writes::new();
        w.insert(links::row(&link));
        self.add_change(&mut w, ctx, change, n.request_id, &idem, &resp);
        if let Err(e) = w.commit(self.db()).await {
            return after_commit_failed(&idem, self.db(), idempotency::write_error(e)).await;
        }
        business::link_created(n.kind.as_str());
        Ok(resp)
    }

    /// One of the partner's links of `kind`, for its admins and agents.
    async fn partner_link(
        &self,
        ctx: &Ctx,
        kind: LinkKind,
        partner: &str,
        id: &str,
        p: idpb::Permission,
    ) -> Result<LinkRecord, Error> {
        let partner = self.tenant_id("partner_tenant_id", partner)?;
        if id.is_empty() {
            return Err(Error::invalid("id", "is required"));
        }
        self.require(ctx, &partner, p).await?;
        links::get_counted(self.db().read(), id)
            .await?
            .filter(|l| l.kind == kind && l.partner_tenant_id == partner.as_str())
            .ok_or_else(|| {
                Error::not_found(
                    "LINK_NOT_FOUND",
                    format!("partner {partner} has no {} {id}", kind.label()),
                )
                .with_violation("id", "not found")
            })
    }

    async fn list_links(
        &self,
        ctx: &Ctx,
        kind: LinkKind,
        partner: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<LinkRecord>, String), Error> {
        let partner = self.tenant_id("partner_tenant_id", partner)?;
        let size = paging::page_size(page_size)?;
        let token_kind = kind.as_str();
        let before = match paging::decode_token(token_kind, page_token, 2)? {
            Some(v) => Some((
                v[0].parse::<i64>().map_err(|_| {
                    Error::invalid("page_token", "is not a page token this list returned")
                })?,
                v[1].clone(),
            )),
            None => None,
        };
        self.require(ctx, &partner, idpb::Permission::CustomersRead)
            .await?;
        let mut rows =
            links::page(self.db().read(), partner.as_str(), kind, before, size + 1).await?;
        let next = paging::cut(&mut rows, size, token_kind, |l| {
            vec![l.created_at.to_string(), l.id.clone()]
        });
        Ok((rows, next))
    }

    #[allow(clippy::too_many_arguments)]
    async fn revoke<M: prost::Message + Default>(
        &self,
        ctx: &Ctx,
        kind: LinkKind,
        partner: &str,
        id: &str,
        request_id: &str,
        idem: Option<Idempotency>,
        respond: impl FnOnce(&LinkRecord) -> M,
    ) -> Result<M, Error> {
        let link = self
            .partner_link(
                ctx,
                kind,
                partner,
                id,
                idpb::Permission::PartnerOffersCreate,
            )
            .await?;
        let mut tx = self.db().begin().await?;
        if let Some(prev) = replay(&idem, &mut tx).await? {
            return Ok(prev);
        }
        let now = self.now();
        links::revoke(&mut tx, &link.id, now).await?;
        let mut after = link.clone();
        let change = after.revoked_at.is_none().then(|| Change {
            tenant_id: &link.partner_tenant_id,
            delegated: false,
            action: match kind {
                LinkKind::Trial => "commerce.trial_invitation.revoke",
                LinkKind::Offer => "commerce.purchase_offer.revoke",
            },
            target: format!("{}s/{}", kind.as_str(), link.id),
        });
        after.revoked_at.get_or_insert(now);
        let resp = respond(&after);
        self.commit(tx, ctx, change, request_id, &idem, &resp)
            .await?;
        Ok(resp)
    }
}

/// A trial invitation's one line: a product that has a trial.
fn trial_line(c: &Commerce, product_id: &str) -> Result<Line, Error> {
    let p = c.catalog().product("product_id", product_id)?;
    if p.trial_days.is_none() {
        return Err(Error::invalid(
            "product_id",
            format!("{} has no trial; send a purchase offer instead", p.id),
        ));
    }
    Ok(Line {
        product_id: p.id.clone(),
        license_count: p.min_licenses.max(1),
    })
}

/// An offer's lines: 1 to 20 distinct products, each count within bounds.
fn offer_lines(c: &Commerce, lines: &[pb::OfferLine]) -> Result<Vec<Line>, Error> {
    if lines.is_empty() {
        return Err(Error::invalid("lines", "must name at least one product"));
    }
    if lines.len() > MAX_OFFER_LINES {
        return Err(Error::invalid(
            "lines",
            format!("at most {MAX_OFFER_LINES} products per offer"),
        ));
    }
    let mut out: Vec<Line> = Vec::with_capacity(lines.len());
    for (i, l) in lines.iter().enumerate() {
        let p = c
            .catalog()
            .product(&format!("lines[{i}].product_id"), &l.product_id)?;
        if out.iter().any(|o| o.product_id == p.id) {
            return Err(Error::invalid(
                format!("lines[{i}].product_id"),
                format!("{} is listed twice", p.id),
            ));
        }
        out.push(Line {
            product_id: p.id.clone(),
            license_count: p.licenses(&format!("lines[{i}].license_count"), l.license_count)?,
        });
    }
    Ok(out)
}

#[tonic::async_trait]
impl pb::trial_invitation_service_server::TrialInvitationService for Commerce {
    async fn create_trial_invitation(
        &self,
        req: Request<pb::CreateTrialInvitationRequest>,
    ) -> Rpc<pb::CreateTrialInvitationResponse> {
        let ctx = Ctx::of(&req)?;
        let r = req.into_inner();
        self.require_feature(Feature::Trials, Some(&r.partner_tenant_id))?;
        let lines = vec![trial_line(self, &r.product_id)?];
        let idem = Idempotency::new(&ctx.caller, "CreateTrialInvitation", &r.request_id, &r)?;
        let resp = self
            .create_link(
                &ctx,
                NewLink {
                    kind: LinkKind::Trial,
                    request_id: &r.request_id,
                    partner_tenant_id: &r.partner_tenant_id,
                    lines,
                    include_delegated_admin: r.include_delegated_admin,
                },
                idem,
                |l, code| pb::CreateTrialInvitationResponse {
                    invitation: Some(trial_to_pb(l, code)),
                },
            )
            .await?;
        Ok(Response::new(resp))
    }

    async fn get_trial_invitation(
        &self,
        req: Request<pb::GetTrialInvitationRequest>,
    ) -> Rpc<pb::GetTrialInvitationResponse> {
        let ctx = Ctx::of(&req)?;
        let r = req.get_ref();
        let link = self
            .partner_link(
                &ctx,
                LinkKind::Trial,
                &r.partner_tenant_id,
                &r.id,
                idpb::Permission::CustomersRead,
            )
            .await?;
        Ok(Response::new(pb::GetTrialInvitationResponse {
            invitation: Some(trial_to_pb(&link, "")),
        }))
    }

    async fn list_trial_invitations(
        &self,
        req: Request<pb::ListTrialInvitationsRequest>,
    ) -> Rpc<pb::ListTrialInvitationsResponse> {
        let ctx = Ctx::of(&req)?;
        let r = req.get_ref();
        let (rows, next) = self
            .list_links(
                &ctx,
                LinkKind::Trial,
                &r.partner_tenant_id,
                r.page_size,
                &r.page_token,
            )
            .await?;
        Ok(Response::new(pb::ListTrialInvitationsResponse {
            invitations: rows.iter().map(|l| trial_to_pb(l, "")).collect(),
            next_page_token: next,
        }))
    }

    async fn revoke_trial_invitation(
        &self,
        req: Request<pb::RevokeTrialInvitationRequest>,
    ) -> Rpc<pb::RevokeTrialInvitationResponse> {
        let ctx = Ctx::of(&req)?;
        let r = req.into_inner();
        let idem = Idempotency::new(&ctx.caller, "RevokeTrialInvitation", &r.request_id, &r)?;
        let resp = self
            .revoke(
                &ctx,
                LinkKind::Trial,
                &r.partner_tenant_id,
                &r.id,
                &r.request_id,
                idem,
                |l| pb::RevokeTrialInvitationResponse {
                    invitation: Some(trial_to_pb(l, "")),
                },
            )
            .await?;
        Ok(Response::new(resp))
    }

    async fn redeem_trial_invitation(
        &self,
        req: Request<pb::RedeemTrialInvitationRequest>,
    ) -> Rpc<pb::RedeemTrialInvitationResponse> {
        let resp = self.redeem_trial(req).await?;
        Ok(Response::new(resp))
    }
}

#[tonic::async_trait]
impl pb::purchase_offer_service_server::PurchaseOfferService for Commerce {
    async fn create_purchase_offer(
        &self,
        req: Request<pb::CreatePurchaseOfferRequest>,
    ) -> Rpc<pb::CreatePurchaseOfferResponse> {
        let ctx = Ctx::of(&req)?;
        let r = req.into_inner();
        self.require_feature(Feature::PurchaseOffers, Some(&r.partner_tenant_id))?;
        let lines = offer_lines(self, &r.lines)?;
        let idem = Idempotency::new(&ctx.caller, "CreatePurchaseOffer", &r.request_id, &r)?;
        let resp = self
            .create_link(
                &ctx,
                NewLink {
                    kind: LinkKind::Offer,
                    request_id: &r.request_id,
                    partner_tenant_id: &r.partner_tenant_id,
                    lines,
                    include_delegated_admin: r.include_delegated_admin,
                },
                idem,
                |l, code| pb::CreatePurchaseOfferResponse {
                    offer: Some(offer_to_pb(l, code)),
                },
            )
            .await?;
        Ok(Response::new(resp))
    }

    async fn get_purchase_offer(
        &self,
        req: Request<pb::GetPurchaseOfferRequest>,
    ) -> Rpc<pb::GetPurchaseOfferResponse> {
        let ctx = Ctx::of(&req)?;
        let r = req.get_ref();
        let link = self
            .partner_link(
                &ctx,
                LinkKind::Offer,
                &r.partner_tenant_id,
                &r.id,
                idpb::Permission::CustomersRead,
            )
            .await?;
        Ok(Response::new(pb::GetPurchaseOfferResponse {
            offer: Some(offer_to_pb(&link, "")),
        }))
    }

    async fn list_purchase_offers(
        &self,
        req: Request<pb::ListPurchaseOffersRequest>,
    ) -> Rpc<pb::ListPurchaseOffersResponse> {
        let ctx = Ctx::of(&req)?;
        let r = req.get_ref();
        let (rows, next) = self
            .list_links(
                &ctx,
                LinkKind::Offer,
                &r.partner_tenant_id,
                r.page_size,
                &r.page_token,
            )
            .await?;
        Ok(Response::new(pb::ListPurchaseOffersResponse {
            offers: rows.iter().map(|l| offer_to_pb(l, "")).collect(),
            next_page_token: next,
        }))
    }

    async fn revoke_purchase_offer(
        &self,
        req: Request<pb::RevokePurchaseOfferRequest>,
    ) -> Rpc<pb::RevokePurchaseOfferResponse> {
        let ctx = Ctx::of(&req)?;
        let r = req.into_inner();
        let idem = Idempotency::new(&ctx.caller, "RevokePurchaseOffer", &r.request_id, &r)?;
        let resp = self
            .revoke(
                &ctx,
                LinkKind::Offer,
                &r.partner_tenant_id,
                &r.id,
                &r.request_id,
                idem,
                |l| pb::RevokePurchaseOfferResponse {
                    offer: Some(offer_to_pb(l, "")),
                },
            )
            .await?;
        Ok(Response::new(resp))
    }

    async fn redeem_purchase_offer(
        &self,
        req: Request<pb::RedeemPurchaseOfferRequest>,
    ) -> Rpc<pb::RedeemPurchaseOfferResponse> {
        let resp = self.redeem_offer(req).await?;
        Ok(Response::new(resp))
    }
}

#[tonic::async_trait]
impl pb::link_service_server::LinkService for Commerce {
    async fn preview_link(
        &self,
        req: Request<pb::PreviewLinkRequest>,
    ) -> Rpc<pb::PreviewLinkResponse> {
        // No sign-in: anyone holding the link may see what it offers.
        let trace = trace_id(&req);
        let code = req.get_ref().code.trim();
        // The kind is in the code; verification below checks it is genuine.
        let kind = match code.split('.').nth(1) {
            Some("offer") => LinkKind::Offer,
            _ => LinkKind::Trial,
        };
        let link = self.live_link(kind, code).await?;
        let partner = self
            .identity()
            .tenant("code", &link.partner_tenant_id, &trace)
            .await?;
        let c = self.catalog();
        let products = link
            .lines
            .iter()
            .filter_map(|l| c.product("code", &l.product_id).ok())
            .map(|p| product_to_pb(p, &c.currency))
            .collect();
        Ok(Response::new(pb::PreviewLinkResponse {
            kind: kind.to_pb() as i32,
            partner_tenant_id: partner.id.clone(),
            partner_display_name: partner.display_name.clone(),
            partner_company_profile: partner.company_profile.clone(),
            lines: lines_to_pb(&link.lines),
            products,
            include_delegated_admin: link.include_delegated_admin,
            expire_time: Some(to_timestamp(link.expires_at)),
        }))
    }
}
