//! `sovra.relationships.v1.CustomerService`: a partner's customers, a
//! customer's partners, and this service's audit trail.

use sovra_proto::{identity::v1 as idpb, relationships::v1 as pb};
use sovra_runtime::{audit, auth::Ctx, features::Feature, ids::TenantId, paging, Error};
use tonic::{Request, Response};

use super::{convert::*, Rpc};
use crate::{
    service::Relationships,
    store::customers::{self, CustomerQuery},
};

/// Partner programs that may see their customers (SPEC §4).
const CUSTOMER_PROGRAMS: &[idpb::PartnerAuthorization] = &[
    idpb::PartnerAuthorization::DelegatedAdmin,
    idpb::PartnerAuthorization::ServiceProvider,
    idpb::PartnerAuthorization::CloudReseller,
];

const MAX_QUERY_CHARS: usize = 100;

impl Relationships {
    /// The checks in front of a partner's customer list.
    async fn customer_list_access(&self, ctx: &Ctx, partner: &TenantId) -> Result<(), Error> {
        self.require_feature(Feature::CustomerManagement, Some(partner.as_str()))?;
        // Both identity calls at once; the caller's own refusal goes first,
        // so a stranger learns nothing about the partner.
        let allowed = async {
            if ctx.caller.is_operator() {
                Ok(())
            } else {
                self.require(ctx, partner, idpb::Permission::CustomersRead)
                    .await
                    .map(|_| ())
            }
        };
        let (allowed, partner) =
            tokio::join!(allowed, self.partner(ctx, partner, CUSTOMER_PROGRAMS));
        allowed?;
        partner?;
        Ok(())
    }
}

#[tonic::async_trait]
impl pb::customer_service_server::CustomerService for Relationships {
    async fn list_customers(
        &self,
        req: Request<pb::ListCustomersRequest>,
    ) -> Rpc<pb::ListCustomersResponse> {
        let ctx = Ctx::of(&req)?;
        let r = req.into_inner();
        let partner = self.tenant_id("partner_tenant_id", &r.partner_tenant_id)?;
        let query = r.query.trim();
        if query.chars().count() > MAX_QUERY_CHARS {
            return Err(Error::invalid(
                "query",
                format!("must be at most {MAX_QUERY_CHARS} characters"),
            )
            .into());
        }
        let relationship = kind_from_pb("relationship", r.relationship)?;
        let limit = paging::page_size(r.page_size)? as usize;
        // The token also pins the query and filter it was made for (AIP-158).
        let filter = r.relationship.to_string();
        let after = match paging::decode_token("customers", &r.page_token, 4)? {
            None => None,
            Some(v) if v[2] == query && v[3] == filter => Some((v[0].clone(), v[1].clone())),
            Some(_) => {
                return Err(Error::invalid(
                    "page_token",
                    "was made for another query or relationship filter; start again without it",
                )
                .into())
            }
        };
        self.customer_list_access(&ctx, &partner).await?;
        let page = customers::page(
            self.db(),
            &CustomerQuery {
                partner: partner.as_str(),
                query,
                relationship,
                after,
                limit,
            },
        )
        .await?;
        Ok(Response::new(pb::ListCustomersResponse {
            customers: page.items.iter().map(customer_to_pb).collect(),
            next_page_token: page
                .next
                .map(|(k, id)| paging::encode_token("customers", &[&k, &id, query, &filter]))
                .unwrap_or_default(),
        }))
    }

    async fn get_customer(
        &self,
        req: Request<pb::GetCustomerRequest>,
    ) -> Rpc<pb::GetCustomerResponse> {
        let ctx = Ctx::of(&req)?;
        let r = req.into_inner();
        let partner = self.tenant_id("partner_tenant_id", &r.partner_tenant_id)?;
        let customer = self.tenant_id("customer_tenant_id", &r.customer_tenant_id)?;
        self.customer_list_access(&ctx, &partner).await?;
        let row = customers::read(self.db(), partner.as_str(), customer.as_str())
            .await?
            .ok_or_else(|| {
                Error::not_found(
                    "CUSTOMER_NOT_FOUND",
                    format!("tenant {customer} is not a customer of partner {partner}"),
                )
            })?;
        Ok(Response::new(pb::GetCustomerResponse {
            customer: Some(customer_to_pb(&row)),
        }))
    }

    async fn list_partners(
        &self,
        req: Request<pb::ListPartnersRequest>,
    ) -> Rpc<pb::ListPartnersResponse> {
        let ctx = Ctx::of(&req)?;
        let r = req.into_inner();
        let customer = self.tenant_id("customer_tenant_id", &r.customer_tenant_id)?;
        if !ctx.caller.is_operator() {
            self.require(&ctx, &customer, idpb::Permission::UsersRead)
                .await?;
        }
        let rows = customers::partners_of(self.db().read(), customer.as_str()).await?;
        let mut partners = Vec::with_capacity(rows.len());
        for row in &rows {
            let t = self
                .identity()
                .tenant("customer_tenant_id", &row.partner_tenant_id, &ctx.trace_id)
                .await?;
            partners.push(partner_to_pb(&t, Some(row)));
        }
        Ok(Response::new(pb::ListPartnersResponse { partners }))
    }

    async fn list_audit_events(
        &self,
        req: Request<pb::ListAuditEventsRequest>,
    ) -> Rpc<pb::ListAuditEventsResponse> {
        let ctx = Ctx::of(&req)?;
        let r = req.into_inner();
        let tenant = self.tenant_id("tenant_id", &r.tenant_id)?;
        if !ctx.caller.is_operator() {
            self.require(&ctx, &tenant, idpb::Permission::AuditRead)
                .await?;
        }
        let (events, next_page_token) =
            audit::list(self.db(), tenant.as_str(), r.page_size, &r.page_token).await?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            events,
            next_page_token,
        }))
    }
}
