//! The identity service as relationships sees it: access decisions, tenants,
//! and delegated-grant pushes, over real gRPC with a service token.

use std::sync::Mutex;

use sovra_proto::identity::v1 as idpb;
use sovra_runtime::{
    auth::{Authority, Token},
    Error,
};
use tonic::{metadata::MetadataValue, transport::Channel, Code, Request, Status};

/// A service token is renewed when less than this much of it is left.
const TOKEN_TTL_SECS: u64 = 600;
const RENEW_BEFORE_MS: i64 = 120_000;

/// Access and tenants from identity.
#[derive(Debug)]
pub struct IdentityClient {
    channel: Channel,
    authority: Authority,
    token: Mutex<Option<Token>>,
}

/// What identity decided, and why.
#[derive(Debug, Clone)]
pub struct Access {
    pub allowed: bool,
    pub basis: idpb::AccessBasis,
    pub reason: String,
}

impl Access {
    pub fn own_role(&self) -> bool {
        self.allowed && self.basis == idpb::AccessBasis::OwnRole
    }

    pub fn delegated(&self) -> bool {
        self.allowed
            && matches!(
                self.basis,
                idpb::AccessBasis::DelegatedFull | idpb::AccessBasis::DelegatedLimited
            )
    }
}

impl IdentityClient {
    pub fn new(channel: Channel, authority: Authority) -> Self {
        Self {
            channel,
            authority,
            token: Mutex::new(None),
        }
    }

    fn bearer(&self) -> String {
        let mut slot = self.token.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.authority.now_ms();
        let fresh = slot
            .as_ref()
            .filter(|t| t.expires_at - now > RENEW_BEFORE_MS)
            .cloned();
        let token = fresh.unwrap_or_else(|| {
            let t = self.authority.issue_service(crate::SERVICE, TOKEN_TTL_SECS);
            *slot = Some(t.clone());
            t
        });
        format!("Bearer {}", token.value)
    }

    /// A request carrying this service's token and the caller's trace.
    fn request<T>(&self, msg: T, trace_id: &str) -> Request<T> {
        let mut req = Request::new(msg);
        if let Ok(v) = MetadataValue::try_from(self.bearer()) {
            req.metadata_mut().insert("authorization", v);
        }
        if trace_id.len() == 32 {
            let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
            if let Ok(v) = MetadataValue::try_from(format!("00-{trace_id}-{span}-01")) {
                req.metadata_mut().insert("traceparent", v);
            }
        }
        req
    }

    /// May `user_id` do `permission` in `tenant_id`?
    pub async fn check(
        &self,
        user_id: &str,
        tenant_id: &str,
        permission: idpb::Permission,
        trace_id: &str,
    ) -> Result<Access, Error> {
        let mut client =
            idpb::access_service_client::AccessServiceClient::new(self.channel.clone());
        let resp = client
            .check_access(self.request(
                idpb::CheckAccessRequest {
                    user_id: user_id.to_owned(),
                    tenant_id: tenant_id.to_owned(),
                    permission: permission as i32,
                },
                trace_id,
            ))
            .await
            .map_err(|s| match s.code() {
                Code::NotFound => {
                    Error::unauthenticated("USER_GONE", "the signed-in user no longer exists")
                }
                _ => from_identity(s),
            })?
            .into_inner();
        Ok(Access {
            allowed: resp.allowed,
            basis: resp.basis(),
            reason: resp.reason,
        })
    }

    /// The tenant, or NOT_FOUND naming `field`.
    pub async fn tenant(
        &self,
        field: &str,
        tenant_id: &str,
        trace_id: &str,
    ) -> Result<idpb::Tenant, Error> {
        let mut client =
            idpb::tenant_service_client::TenantServiceClient::new(self.channel.clone());
        let resp = client
            .get_tenant(self.request(
                idpb::GetTenantRequest {
                    tenant_id: tenant_id.to_owned(),
                },
                trace_id,
            ))
            .await
            .map_err(|s| match s.code() {
                Code::NotFound => {
                    Error::not_found("TENANT_NOT_FOUND", format!("tenant {tenant_id} not found"))
                        .with_violation(field, "not found")
                }
                _ => from_identity(s),
            })?;
        resp.into_inner()
            .tenant
            .ok_or_else(|| Error::internal("identity answered GetTenant without a tenant"))
    }

    /// Pushes one grant change; the raw status lets the outbox decide to retry.
    pub async fn apply_grant(
        &self,
        grant: idpb::ApplyDelegatedGrantRequest,
    ) -> Result<idpb::ApplyDelegatedGrantResponse, Status> {
        let mut client =
            idpb::access_service_client::AccessServiceClient::new(self.channel.clone());
        Ok(client
            .apply_delegated_grant(self.request(grant, ""))
            .await?
            .into_inner())
    }
}

/// Identity's failure as ours: unreachable is UNAVAILABLE (retry), anything
/// else is internal (its text is logged, not shown).
fn from_identity(s: Status) -> Error {
    match s.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => Error::unavailable(
            "IDENTITY_UNAVAILABLE",
            "the identity service is unavailable; retry shortly",
        ),
        _ => Error::internal(format!("identity answered {:?}: {}", s.code(), s.message())),
    }
}
