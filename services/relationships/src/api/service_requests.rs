//! `sovra.relationships.v1.ServiceRequestService`.

use sovra_proto::{identity::v1 as idpb, relationships::v1 as pb};
use sovra_runtime::{
    auth::Ctx,
    error::{check_etag, etag_mismatch},
    idempotency::{replay, Idempotency},
    ids::TenantId,
    paging, Error,
};
use tonic::{Request, Response};

use super::{convert::*, Rpc};
use crate::{
    domain::states::ServiceRequestState,
    service::{Change, Relationships},
    store::{
        customers,
        service_requests::{self, ServiceRequestRow},
    },
};

const MAX_TITLE: usize = 200;
const MAX_DESCRIPTION: usize = 10_000;

/// Who may act on a customer's service requests, and for whom.
struct Actor {
    /// The partner acting on the customer's behalf, if any.
    on_behalf: Option<String>,
}

impl Relationships {
    /// A customer's admins (own role), a partner through delegated
    /// administration, or a reseller partner's user who may see customers —
    /// the last also after delegated administration ended (SPEC §4).
    async fn service_request_actor(&self, ctx: &Ctx, customer: &TenantId) -> Result<Actor, Error> {
        let u = ctx.user()?;
        let access = self
            .check(ctx, customer, idpb::Permission::ServiceRequestsManage)
            .await?;
        if access.allowed {
            if access.delegated() {
                let partner = self.tenant_id("tenant_id", &u.tenant_id)?;
                self.inner.limits.check(&partner, Some(customer))?;
            }
            return Ok(Actor {
                on_behalf: access.delegated().then(|| u.tenant_id.clone()),
            });
        }
        if u.tenant_id != customer.as_str() {
            let reseller = customers::read(self.db(), &u.tenant_id, customer.as_str())
                .await?
                .is_some_and(|row| row.reseller_request_id.is_some());
            if reseller {
                let own = self.tenant_id("tenant_id", &u.tenant_id)?;
                let partner_access = self
                    .check(ctx, &own, idpb::Permission::CustomersRead)
                    .await?;
                if partner_access.allowed {
                    self.inner.limits.check(&own, Some(customer))?;
                    return Ok(Actor {
                        on_behalf: Some(u.tenant_id.clone()),
                    });
                }
                return Err(Error::permission_denied(
                    "PERMISSION_DENIED",
                    partner_access.reason,
                ));
            }
        }
        Err(self.denied(ctx, customer, access.reason).await?)
    }

    /// Read access: the operator, or anyone who may act on them.
    async fn service_request_reader(&self, ctx: &Ctx, customer: &TenantId) -> Result<(), Error> {
        if ctx.caller.is_operator() {
            return Ok(());
        }
        self.service_request_actor(ctx, customer).await.map(|_| ())
    }

    fn not_found(customer: &TenantId, id: &str) -> Error {
        Error::not_found(
            "SERVICE_REQUEST_NOT_FOUND",
            format!("tenant {customer} has no service request {id}"),
        )
        .with_violation("id", "not found")
    }

    /// Loads, moves and saves a request in one transaction, with the audit.
    #[allow(clippy::too_many_arguments)]
    async fn move_service_request<M: prost::Message + Default>(
        &self,
        ctx: &Ctx,
        customer: &TenantId,
        id: &str,
        etag: &str,
        request_id: &str,
        idem: Option<Idempotency>,
        delegated: bool,
        apply: impl FnOnce(&mut ServiceRequestRow) -> Result<(), Error>,
        respond: impl FnOnce(pb::ServiceRequest) -> M,
    ) -> Result<M, Error> {
        let mut tx = self.db().begin().await?;
        if let Some(prev) = replay(&idem, &mut tx).await? {
            return Ok(prev);
        }
        let mut row = service_requests::get(&mut *tx, customer.as_str(), id)
            .await?
            .ok_or_else(|| Self::not_found(customer, id))?;
        check_etag("service request", etag, row.version)?;
        let expected = row.version;
        apply(&mut row)?;
        row.version += 1;
        row.updated_at = self.now();
        if !service_requests::update_state(&mut tx, &row, expected).await? {
            return Err(etag_mismatch("service request"));
        }
        let resp = respond(service_request_to_pb(&row));
        let action = format!(
            "relationships.service_request.{}",
            row.state.as_str().to_ascii_lowercase()
        );
        let change = Change {
            tenant_id: customer.as_str(),
            delegated,
            action: &action,
            target: format!("service_requests/{}", row.id),
        };
        self.commit(tx, ctx, Some(change), request_id, &idem, &resp)
            .await?;
        Ok(resp)
    }
}

#[tonic::async_trait]
impl pb::service_request_service_server::ServiceRequestService for Relationships {
    async fn create_service_request(
        &self,
        req: Request<pb::CreateServiceRequestRequest>,
    ) -> Rpc<pb::CreateServiceRequestResponse> {
        let ctx = Ctx::of(&req)?;
        let r = req.into_inner();
        let customer = self.tenant_id("customer_tenant_id", &r.customer_tenant_id)?;
        let title = r.title.trim();
        if title.is_empty() || title.chars().count() > MAX_TITLE {
            return Err(
                Error::invalid("title", format!("must be 1 to {MAX_TITLE} characters")).into(),
            );
        }
        if r.description.chars().count() > MAX_DESCRIPTION {
            return Err(Error::invalid(
                "description",
                format!("must be at most {MAX_DESCRIPTION} characters"),
            )
            .into());
        }
        let idem = Idempotency::new(&ctx.caller, "CreateServiceRequest", &r.request_id, &r)?;
        let actor = self.service_request_actor(&ctx, &customer).await?;
        let u = ctx.user()?;
        let now = self.now();
        let row = ServiceRequestRow {
            id: uuid::Uuid::now_v7().to_string(),
            customer_tenant_id: customer.to_string(),
            title: title.to_owned(),
            description: r.description.clone(),
            state: ServiceRequestState::Draft,
            created_by_user_id: u.user_id.clone(),
            on_behalf_partner_tenant_id: actor.on_behalf.clone(),
            resolution: String::new(),
            version: 1,
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.db().begin().await?;
        if let Some(prev) = replay(&idem, &mut tx).await? {
            return Ok(Response::new(prev));
        }
        service_requests::insert(&mut tx, &row).await?;
        let resp = pb::CreateServiceRequestResponse {
            service_request: Some(service_request_to_pb(&row)),
        };
        let change = Change {
            tenant_id: customer.as_str(),
            delegated: actor.on_behalf.is_some(),
            action: "relationships.service_request.create",
            target: format!("service_requests/{}", row.id),
        };
        self.commit(tx, &ctx, Some(change), &r.request_id, &idem, &resp)
            .await?;
        Ok(Response::new(resp))
    }

    async fn submit_service_request(
        &self,
        req: Request<pb::SubmitServiceRequestRequest>,
    ) -> Rpc<pb::SubmitServiceRequestResponse> {
        let ctx = Ctx::of(&req)?;
        let r = req.into_inner();
        let customer = self.tenant_id("customer_tenant_id", &r.customer_tenant_id)?;
        if r.id.is_empty() {
            return Err(Error::invalid("id", "is required").into());
        }
        let idem = Idempotency::new(&ctx.caller, "SubmitServiceRequest", &r.request_id, &r)?;
        let actor = self.service_request_actor(&ctx, &customer).await?;
        let resp = self
            .move_service_request(
                &ctx,
                &customer,
                &r.id,
                "",
                &r.request_id,
                idem,
                actor.on_behalf.is_some(),
                |row| {
                    if row.state != ServiceRequestState::Draft {
                        return Err(Error::failed_precondition(
                            "INVALID_STATE_TRANSITION",
                            format!(
                                "service request {} is {}; only a DRAFT can be submitted",
                                row.id, row.state
                            ),
                        ));
                    }
                    row.state = ServiceRequestState::Submitted;
                    Ok(())
                },
                |sr| pb::SubmitServiceRequestResponse {
                    service_request: Some(sr),
                },
            )
            .await?;
        Ok(Response::new(resp))
    }

    async fn update_service_request_state(
        &self,
        req: Request<pb::UpdateServiceRequestStateRequest>,
    ) -> Rpc<pb::UpdateServiceRequestStateResponse> {
        let ctx = Ctx::of(&req)?;
        if !ctx.caller.is_operator() {
            return Err(Error::permission_denied(
                "OPERATOR_REQUIRED",
                "only the instance operator moves service requests forward",
            )
            .into());
        }
        let r = req.into_inner();
        let customer = self.tenant_id("customer_tenant_id", &r.customer_tenant_id)?;
        if r.id.is_empty() {
            return Err(Error::invalid("id", "is required").into());
        }
        let to = sr_state_from_pb("state", r.state)?
            .ok_or_else(|| Error::invalid("state", "is required: IN_PROGRESS or RESOLVED"))?;
        let resolution = r.resolution.trim().to_owned();
        if to == ServiceRequestState::Resolved && resolution.is_empty() {
            return Err(Error::invalid(
                "resolution",
                "is required when resolving: say what was done",
            )
            .into());
        }
        if resolution.chars().count() > MAX_DESCRIPTION {
            return Err(Error::invalid(
                "resolution",
                format!("must be at most {MAX_DESCRIPTION} characters"),
            )
            .into());
        }
        let idem = Idempotency::new(&ctx.caller, "UpdateServiceRequestState", &r.request_id, &r)?;
        let resp = self
            .move_service_request(
                &ctx,
                &customer,
                &r.id,
                &r.etag,
                &r.request_id,
                idem,
                false,
                |row| {
                    row.state.operator_may_move_to(to)?;
                    row.state = to;
                    if to == ServiceRequestState::Resolved {
                        row.resolution = resolution;
                    }
                    Ok(())
                },
                |sr| pb::UpdateServiceRequestStateResponse {
                    service_request: Some(sr),
                },
            )
            .await?;
        Ok(Response::new(resp))
    }

    async fn get_service_request(
        &self,
        req: Request<pb::GetServiceRequestRequest>,
    ) -> Rpc<pb::GetServiceRequestResponse> {
        let ctx = Ctx::of(&req)?;
        let r = req.into_inner();
        let customer = self.tenant_id("customer_tenant_id", &r.customer_tenant_id)?;
        self.service_request_reader(&ctx, &customer).await?;
        let row = service_requests::get(self.db().read(), customer.as_str(), &r.id)
            .await?
            .ok_or_else(|| Self::not_found(&customer, &r.id))?;
        Ok(Response::new(pb::GetServiceRequestResponse {
            service_request: Some(service_request_to_pb(&row)),
        }))
    }

    async fn list_service_requests(
        &self,
        req: Request<pb::ListServiceRequestsRequest>,
    ) -> Rpc<pb::ListServiceRequestsResponse> {
        let ctx = Ctx::of(&req)?;
        let r = req.into_inner();
        let customer = self.tenant_id("customer_tenant_id", &r.customer_tenant_id)?;
        let state = sr_state_from_pb("state", r.state)?;
        let size = paging::page_size(r.page_size)?;
        let before = paging::decode_token("sr", &r.page_token, 1)?.map(|mut v| v.remove(0));
        self.service_request_reader(&ctx, &customer).await?;
        let mut rows = service_requests::list(
            self.db().read(),
            customer.as_str(),
            state,
            before.as_deref(),
            size + 1,
        )
        .await?;
        let next_page_token = paging::cut(&mut rows, size, "sr", |r| vec![r.id.clone()]);
        Ok(Response::new(pb::ListServiceRequestsResponse {
            service_requests: rows.iter().map(service_request_to_pb).collect(),
            next_page_token,
        }))
    }
}
