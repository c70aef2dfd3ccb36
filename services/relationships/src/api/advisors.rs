//! `sovra.relationships.v1.AdvisorService`: what commerce records when a
//! partner wins a customer through a trial, an offer or a product key.

use sovra_proto::{identity::v1 as idpb, relationships::v1 as pb};
use sovra_runtime::{
    auth::Ctx,
    idempotency::{after_commit_failed, replay, Idempotency},
    writes::Writes,
    Error,
};
use tonic::{Request, Response};

use super::{
    convert::{customer_to_pb, offer_to_pb, relationship_to_pb},
    delegated::{Activated, Activation},
    Rpc,
};
use crate::{
    domain::states::LinkKind,
    service::{Change, Relationships},
    store::{
        customers::{self, CustomerRow},
        delegated::{self, Relationship},
        links,
    },
};

#[tonic::async_trait]
impl pb::advisor_service_server::AdvisorService for Relationships {
    async fn record_advisor_relationship(
        &self,
        req: Request<pb::RecordAdvisorRelationshipRequest>,
    ) -> Rpc<pb::RecordAdvisorRelationshipResponse> {
        let ctx = Ctx::of(&req)?;
        ctx.require_service(
            &["commerce"],
            "record advisor relationships; partners win customers through links",
        )?;
        let r = req.into_inner();
        let partner = self.tenant_id("partner_tenant_id", &r.partner_tenant_id)?;
        let customer = self.tenant_id("customer_tenant_id", &r.customer_tenant_id)?;
        let change = pb::DelegatedAdminChange::try_from(r.delegated_admin)
            .ok()
            .filter(|c| *c != pb::DelegatedAdminChange::Unspecified)
            .ok_or_else(|| {
                Error::invalid("delegated_admin", "must be NONE, ACCEPTED or OFFERED")
            })?;
        if r.request_id.is_empty() {
            return Err(Error::invalid(
                "request_id",
                "is required: commerce retries until it lands",
            )
            .into());
        }
        let idem = Idempotency::new(&ctx.caller, "RecordAdvisorRelationship", &r.request_id, &r)?;
        let c = self.customer(&ctx, "customer_tenant_id", &customer).await?;
        // Already on record with nothing to change (a partner's second key or
        // offer for a customer): answered from a read, with no write
        // transaction. Nothing changes, so there is nothing to audit or to
        // remember; a retry reads the row again.
        if change == pb::DelegatedAdminChange::None {
            let held = customers::read(self.db(), partner.as_str(), customer.as_str()).await?;
            if let Some(row) = held.filter(|h| on_record(h, &c, r.partner_of_record)) {
                return Ok(Response::new(pb::RecordAdvisorRelationshipResponse {
                    customer: Some(customer_to_pb(&row)),
                    ..Default::default()
                }));
            }
        }
        let mut tx = self.db().begin().await?;
        if let Some(prev) = replay(&idem, &mut tx).await? {
            return Ok(Response::new(prev));
        }
        let now = self.now();
        // A partner already on record as this customer's advisor (a second
        // key or offer for the same customer) changes nothing in the row, so
        // it does not write it: concurrent redemptions for one customer do
        // not queue on its row lock.
        let held = customers::get(&mut *tx, partner.as_str(), customer.as_str()).await?;
        let recorded = held
            .as_ref()
            .is_some_and(|h| on_record(h, &c, r.partner_of_record));
        if !recorded {
            customers::touch(
                &mut tx,
                partner.as_str(),
                customer.as_str(),
                &c.display_name,
                &c.primary_domain,
                now,
            )
            .await?;
            customers::set_advisor(
                &mut tx,
                partner.as_str(),
                customer.as_str(),
                r.partner_of_record,
                now,
            )
            .await?;
        }
        let mut resp = pb::RecordAdvisorRelationshipResponse::default();
        let mut grants = Vec::new();
        match change {
            pb::DelegatedAdminChange::Accepted => {
                // The redemption is the customer's acceptance.
                let offer_id = format!("commerce:{}", r.request_id);
                let rel = match self
                    .activate(
                        &mut tx,
                        &ctx,
                        &partner,
                        &c,
                        &offer_id,
                        r.reassign,
                        now,
                        |_, _| {
                            // Audited with the rest of the redemption, below.
                            Writes::new()
                        },
                    )
                    .await?
                {
                    Activated::Already(held) => held,
                    Activated::Now(Activation { rel, changes }) => {
                        grants = changes;
                        rel
                    }
                };
                resp.delegated_admin_relationship = Some(relationship_to_pb(&rel));
            }
            pb::DelegatedAdminChange::Offered => {
                let (link, code) =
                    self.new_link(&ctx, LinkKind::DelegatedAdmin, &partner, Some(&customer));
                links::insert(&mut tx, &link).await?;
                delegated::insert(
                    &mut tx,
                    &Relationship::pending(partner.as_str(), customer.as_str(), &link.id, now),
                )
                .await?;
                resp.delegated_admin_offer = Some(offer_to_pb(&link, &code));
            }
            _ => {}
        }
        // Unchanged and no delegated-admin change: the row read above is it.
        let unchanged = recorded && change == pb::DelegatedAdminChange::None;
        let row = match held.filter(|_| unchanged) {
            Some(row) => row,
            None => customers::get(&mut *tx, partner.as_str(), customer.as_str())
                .await?
                .ok_or_else(|| {
                    Error::internal("the partner-customer row vanished in its transaction")
                })?,
        };
        resp.customer = Some(customer_to_pb(&row));
        let audit = Change {
            tenant_id: customer.as_str(),
            delegated: false,
            action: "relationships.advisor.record",
            target: format!(
                "partners/{partner} (partner of record: {}, delegated admin: {}, by user {})",
                r.partner_of_record,
                change
                    .as_str_name()
                    .trim_start_matches("DELEGATED_ADMIN_CHANGE_"),
                if r.acting_user_id.is_empty() {
                    "-"
                } else {
                    &r.acting_user_id
                }
            ),
        };
        if let Err(e) = self
            .commit(tx, &ctx, Some(audit), &r.request_id, &idem, &resp)
            .await
        {
            // Commerce sends concurrent redemptions for one link and customer
            // under one request id: when a twin committed first, its answer
            // is this one's too.
            return Ok(Response::new(
                after_commit_failed(&idem, self.db(), e).await?,
            ));
        }
        if !grants.is_empty() {
            // Accepted with a trial invitation or purchase offer.
            sovra_runtime::metrics::business::delegated_admin("accepted");
        }
        self.outbox().deliver_now(&grants).await;
        Ok(Response::new(resp))
    }
}

/// Whether `held` already records the partner as `customer`'s advisor (and
/// partner of record, when asked), under the customer's current name.
fn on_record(held: &CustomerRow, customer: &idpb::Tenant, partner_of_record: bool) -> bool {
    held.advisor
        && (held.partner_of_record || !partner_of_record)
        && held.display_name == customer.display_name
        && held.primary_domain == customer.primary_domain
}
