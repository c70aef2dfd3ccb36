//! `sovra.relationships.v1.ResellerService`.

use sovra_proto::{identity::v1 as idpb, relationships::v1 as pb};
use sovra_runtime::{
    auth::{trace_id, Ctx},
    clock::to_timestamp,
    features::Feature,
    idempotency::{replay, Idempotency},
    Error,
};
use tonic::{Request, Response};

use super::{convert::*, Rpc};
use crate::{
    domain::{email::reseller_draft, states::LinkKind},
    service::{Change, Relationships},
    store::{customers, links},
};

#[tonic::async_trait]
impl pb::reseller_service_server::ResellerService for Relationships {
    async fn create_reseller_request(
        &self,
        req: Request<pb::CreateResellerRequestRequest>,
    ) -> Rpc<pb::CreateResellerRequestResponse> {
        let ctx = Ctx::of(&req)?;
        let r = req.into_inner();
        self.require_feature(Feature::ResellerRelationships, Some(&r.partner_tenant_id))?;
        let partner = self.tenant_id("partner_tenant_id", &r.partner_tenant_id)?;
        let idem = Idempotency::new(&ctx.caller, "CreateResellerRequest", &r.request_id, &r)?;
        self.require(&ctx, &partner, idpb::Permission::PartnerLinksCreate)
            .await?;
        let p = self
            .partner(&ctx, &partner, &[idpb::PartnerAuthorization::CloudReseller])
            .await?;
        self.inner.limits.check(&partner, None)?;
        let (mut link, code) = self.new_link(&ctx, LinkKind::Reseller, &partner, None);
        let draft = reseller_draft(&p.display_name, &link.url, &r.email_subject, &r.email_body)?;
        link.email_subject = draft.subject;
        link.email_body = draft.body;
        let mut tx = self.db().begin().await?;
        if let Some(prev) = replay(&idem, &mut tx).await? {
            return Ok(Response::new(prev));
        }
        links::insert(&mut tx, &link).await?;
        let resp = pb::CreateResellerRequestResponse {
            reseller_request: Some(reseller_request_to_pb(&link, &code)),
        };
        let change = Change {
            tenant_id: partner.as_str(),
            delegated: false,
            action: "relationships.reseller_request.create",
            target: format!("links/{}", link.id),
        };
        self.commit(tx, &ctx, Some(change), &r.request_id, &idem, &resp)
            .await?;
        sovra_runtime::metrics::business::link_created(LinkKind::Reseller.as_str());
        Ok(Response::new(resp))
    }

    async fn preview_reseller_request(
        &self,
        req: Request<pb::PreviewResellerRequestRequest>,
    ) -> Rpc<pb::PreviewResellerRequestResponse> {
        // No sign-in: anyone holding the link may see what it offers.
        self.require_feature(Feature::ResellerRelationships, None)?;
        let (partner, link) = self
            .preview(&trace_id(&req), LinkKind::Reseller, &req.get_ref().code)
            .await?;
        Ok(Response::new(pb::PreviewResellerRequestResponse {
            partner: Some(partner),
            expire_time: Some(to_timestamp(link.expires_at)),
        }))
    }

    async fn accept_reseller_request(
        &self,
        req: Request<pb::AcceptResellerRequestRequest>,
    ) -> Rpc<pb::AcceptResellerRequestResponse> {
        let ctx = Ctx::of(&req)?;
        let r = req.into_inner();
        self.require_feature(Feature::ResellerRelationships, None)?;
        let link = self.live_link(LinkKind::Reseller, &r.code).await?;
        let customer = self.tenant_id("customer_tenant_id", &r.customer_tenant_id)?;
        let idem = Idempotency::new(&ctx.caller, "AcceptResellerRequest", &r.request_id, &r)?;
        self.require_customer_global_admin(&ctx, &customer, "accept a reseller request")
            .await?;
        let c = self.customer(&ctx, "customer_tenant_id", &customer).await?;
        if c.syndication {
            return Err(Error::failed_precondition(
                "SYNDICATION_CUSTOMER",
                format!("tenant {customer} buys through a syndication partner and cannot accept a reseller relationship"),
            )
            .into());
        }
        let partner = self.tenant_id("code", &link.partner_tenant_id)?;
        self.partner(&ctx, &partner, &[idpb::PartnerAuthorization::CloudReseller])
            .await?;
        let mut tx = self.db().begin().await?;
        if let Some(prev) = replay(&idem, &mut tx).await? {
            return Ok(Response::new(prev));
        }
        let now = self.now();
        customers::touch(
            &mut tx,
            partner.as_str(),
            customer.as_str(),
            &c.display_name,
            &c.primary_domain,
            now,
        )
        .await?;
        let created =
            customers::set_reseller(&mut tx, partner.as_str(), customer.as_str(), &link.id, now)
                .await?;
        let row = customers::get(&mut *tx, partner.as_str(), customer.as_str())
            .await?
            .ok_or_else(|| {
                Error::internal("the partner_customers row vanished inside its transaction")
            })?;
        let resp = pb::AcceptResellerRequestResponse {
            relationship: Some(pb::ResellerRelationship {
                partner_tenant_id: partner.to_string(),
                customer_tenant_id: customer.to_string(),
                reseller_request_id: row.reseller_request_id.clone().unwrap_or_default(),
                create_time: row.reseller_since.map(to_timestamp),
            }),
        };
        // Accepting again changes nothing, so it is not audited again.
        let change = created.then(|| Change {
            tenant_id: customer.as_str(),
            delegated: false,
            action: "relationships.reseller.accept",
            target: format!("partners/{partner}"),
        });
        let accepted = change.is_some();
        self.commit(tx, &ctx, change, &r.request_id, &idem, &resp)
            .await?;
        if accepted {
            sovra_runtime::metrics::business::link_redeemed(LinkKind::Reseller.as_str());
        }
        Ok(Response::new(resp))
    }

    async fn revoke_reseller_request(
        &self,
        req: Request<pb::RevokeResellerRequestRequest>,
    ) -> Rpc<pb::RevokeResellerRequestResponse> {
        let ctx = Ctx::of(&req)?;
        let r = req.into_inner();
        let idem = Idempotency::new(&ctx.caller, "RevokeResellerRequest", &r.request_id, &r)?;
        let resp = self
            .revoke_link(
                &ctx,
                LinkKind::Reseller,
                "partner_tenant_id",
                &r.partner_tenant_id,
                &r.id,
                &r.request_id,
                idem,
                |l| pb::RevokeResellerRequestResponse {
                    reseller_request: Some(reseller_request_to_pb(l, "")),
                },
            )
            .await?;
        Ok(Response::new(resp))
    }
}
