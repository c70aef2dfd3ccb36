//! Calling another Sovra service: lazily connected channels (or this
//! process's own endpoint, when it serves the peer), a cached service token
//! with the caller's trace, and the identity service as every other service
//! sees it (access decisions and tenants).

use std::{
    convert::Infallible,
    future::Future,
    net::{Ipv4Addr, SocketAddr},
    pin::Pin,
    sync::Mutex,
    task::{Context, Poll},
    time::Duration,
};

use sovra_proto::identity::v1 as idpb;
use tonic::codegen::http;
use tonic::{
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
    Code, Request, Status,
};
use tonic_types::StatusExt;

use crate::{
    auth::{Authority, Ctx, Token},
    cache::{Cached, Generation},
    server::LocalEndpoint,
    telemetry::{PeerChannel, Tracer},
    tls::{Connector, PeerInfo},
    Error,
};

/// A service token is renewed when less than this much of it is left.
const TOKEN_TTL_SECS: u64 = 600;
const RENEW_BEFORE_MS: i64 = 120_000;

/// `component`'s channel to a peer at `url` (see [`channel`]), its calls
/// traced as client spans into `tracer`.
pub fn peer(
    url: &str,
    tls: Option<Connector>,
    tracer: Tracer,
    component: &'static str,
) -> Result<PeerChannel, tonic::transport::Error> {
    let remote = Transport::Remote(channel(url, tls)?);
    Ok(PeerChannel::new(remote, tracer, component))
}

/// `component`'s channel to a peer served by this process: its calls go
/// straight into `endpoint` (see [`LocalEndpoint`]), as `component` of
/// `instance` the way its client certificate would name it, and are traced
/// like any other.
pub fn local_peer(
    endpoint: LocalEndpoint,
    instance: &str,
    tracer: Tracer,
    component: &'static str,
) -> PeerChannel {
    let caller = PeerInfo {
        remote: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        spiffe: Some(format!("spiffe://{instance}/{component}")),
    };
    PeerChannel::new(Transport::Local { endpoint, caller }, tracer, component)
}

/// Where a peer's calls go.
#[derive(Debug, Clone)]
pub enum Transport {
    /// Over the network to another process.
    Remote(Channel),
    /// Into this process's own endpoint. `caller` is what a verified client
    /// certificate would have told the peer; nothing outside the process can
    /// put it on a request (request extensions do not travel).
    Local {
        endpoint: LocalEndpoint,
        caller: PeerInfo,
    },
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<http::Request<tonic::body::Body>> for Transport {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Transport::Remote(c) => {
                tower_service::Service::poll_ready(c, cx).map_err(BoxError::from)
            }
            Transport::Local { .. } => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        match self {
            Transport::Remote(c) => {
                let call = tower_service::Service::call(c, req);
                Box::pin(async move { call.await.map_err(BoxError::from) })
            }
            Transport::Local { endpoint, caller } => {
                let Some(mut routes) = endpoint.routes() else {
                    // Only before the process has finished starting.
                    return Box::pin(async {
                        Err(BoxError::from("this process is not serving yet"))
                    });
                };
                req.extensions_mut().insert(caller.clone());
                let call = tower_service::Service::call(&mut routes, req);
                Box::pin(async move { call.await.map_err(|e: Infallible| match e {}) })
            }
        }
    }
}

/// A lazily connected channel to another Sovra service at `url`; over
/// mutual TLS with `tls` (then `https://` and `http://` mean the same).
pub fn channel(url: &str, tls: Option<Connector>) -> Result<Channel, tonic::transport::Error> {
    let url = match tls {
        Some(_) => url.replacen("https://", "http://", 1),
        None => url.to_owned(),
    };
    let endpoint = Endpoint::from_shared(url)?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .tcp_nodelay(true);
    Ok(match tls {
        Some(c) => endpoint.connect_with_connector_lazy(c),
        None => endpoint.connect_lazy(),
    })
}

/// This service's credentials towards its peers: a short-lived service
/// token, minted on demand and renewed before it runs out.
#[derive(Debug)]
pub struct ServiceCredentials {
    service: &'static str,
    authority: Authority,
    token: Mutex<Option<Token>>,
}

impl ServiceCredentials {
    pub fn new(service: &'static str, authority: Authority) -> Self {
        Self {
            service,
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
            let t = self.authority.issue_service(self.service, TOKEN_TTL_SECS);
            *slot = Some(t.clone());
            t
        });
        format!("Bearer {}", token.value)
    }

    /// A request carrying this service's token and the caller's trace.
    pub fn request<T>(&self, msg: T, trace_id: &str) -> Request<T> {
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
}

/// A peer's failure as ours: unreachable is UNAVAILABLE (retry) with the
/// reason `{PEER}_UNAVAILABLE`, for example IDENTITY_UNAVAILABLE; anything
/// else is internal (its text is logged, not shown).
pub fn peer_error(peer: &str, s: Status) -> Error {
    // Every answer a Sovra service gives carries ErrorInfo; an INTERNAL or
    // UNKNOWN without it was made by the transport (a connection reset mid
    // handshake or call), so the peer is unreachable, not broken.
    let transport = s.get_details_error_info().is_none();
    match s.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => unavailable(peer),
        Code::Internal | Code::Unknown if transport => unavailable(peer),
        _ => Error::internal(format!("{peer} answered {:?}: {}", s.code(), s.message())),
    }
}

fn unavailable(peer: &str) -> Error {
    let mut e = Error::unavailable(
        "PEER_UNAVAILABLE",
        format!("the {peer} service is unavailable; retry shortly"),
    );
    e.reason = format!("{}_UNAVAILABLE", peer.to_uppercase()).into();
    e
}

/// The partner programs a call needs.
#[derive(Debug, Clone, Copy)]
pub enum Programs<'a> {
    /// At least one of these (none listed: any partner).
    AnyOf(&'a [idpb::PartnerAuthorization]),
    /// Every one of these.
    AllOf(&'a [idpb::PartnerAuthorization]),
}

/// Access and tenants from identity.
#[derive(Debug)]
pub struct IdentityClient {
    channel: PeerChannel,
    creds: ServiceCredentials,
    /// Tenants identity answered lately, read under [`IDENTITY_EPOCH`]: a
    /// redemption asks for its partner and customer, and so does
    /// relationships for the customer, several times a second for the same
    /// few. An answer is reused for at most the TTL (zero: never), and only
    /// while identity in this process committed nothing since; a change
    /// made through identity in another process is seen within the TTL.
    tenants: Cached<String, idpb::Tenant>,
}

/// Tenants kept at most; the cache starts over when full.
const TENANT_CACHE_MAX: usize = 10_000;

/// Bumped after every identity commit in this process.
static IDENTITY_EPOCH: Generation = Generation::new();

/// Identity calls this after each of its commits: every tenant cached in
/// this process before it is asked for again. (Any commit, not only a
/// tenant's: a cache miss costs one read, a stale tenant a wrong answer.)
pub fn tenants_changed() {
    IDENTITY_EPOCH.bump();
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
    /// `service` names the caller in the tokens it presents.
    pub fn new(channel: PeerChannel, service: &'static str, authority: Authority) -> Self {
        Self {
            channel,
            creds: ServiceCredentials::new(service, authority),
            tenants: Cached::with_capacity(Duration::ZERO, TENANT_CACHE_MAX),
        }
    }

    /// Reuses identity's answers about tenants for up to `ttl` (see
    /// [`IdentityClient::tenants`]); without it, every call asks.
    pub fn with_tenant_cache(mut self, ttl: Duration) -> Self {
        self.tenants = Cached::with_capacity(ttl, TENANT_CACHE_MAX);
        self
    }

    pub fn credentials(&self) -> &ServiceCredentials {
        &self.creds
    }

    pub fn channel(&self) -> PeerChannel {
        self.channel.clone()
    }

    /// May `user_id` do `permission` in `tenant_id`?
    pub async fn check(
        &self,
        user_id: &str,
        tenant_id: &str,
        permission: idpb::Permission,
        trace_id: &str,
    ) -> Result<Access, Error> {
        let mut client = idpb::access_service_client::AccessServiceClient::new(self.channel());
        let resp = client
            .check_access(self.creds.request(
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
                _ => peer_error("identity", s),
            })?
            .into_inner();
        Ok(Access {
            allowed: resp.allowed,
            basis: resp.basis(),
            reason: resp.reason,
        })
    }

    /// What identity says about the signed-in user of `ctx` doing `p` in
    /// `tenant` (PERMISSION_DENIED for callers that are not users).
    pub async fn check_user(
        &self,
        ctx: &Ctx,
        tenant: &str,
        p: idpb::Permission,
    ) -> Result<Access, Error> {
        let u = ctx.user()?;
        crate::telemetry::record_tenant(tenant);
        self.check(&u.user_id, tenant, p, &ctx.trace_id).await
    }

    /// The tenant, or NOT_FOUND naming `field` (from the tenant cache when
    /// it has a current answer: [`IdentityClient::with_tenant_cache`]).
    pub async fn tenant(
        &self,
        field: &str,
        tenant_id: &str,
        trace_id: &str,
    ) -> Result<idpb::Tenant, Error> {
        // The epoch before asking: a change committed meanwhile makes the
        // answer stale at once.
        let epoch = (IDENTITY_EPOCH.current(), 0);
        self.tenants
            .get_or_load(tenant_id.to_owned(), epoch, || async {
                let mut client =
                    idpb::tenant_service_client::TenantServiceClient::new(self.channel());
                let resp = client
                    .get_tenant(self.creds.request(
                        idpb::GetTenantRequest {
                            tenant_id: tenant_id.to_owned(),
                        },
                        trace_id,
                    ))
                    .await
                    .map_err(|s| match s.code() {
                        Code::NotFound => Error::not_found(
                            "TENANT_NOT_FOUND",
                            format!("tenant {tenant_id} not found"),
                        )
                        .with_violation(field, "not found"),
                        _ => peer_error("identity", s),
                    })?;
                resp.into_inner()
                    .tenant
                    .ok_or_else(|| Error::internal("identity answered GetTenant without a tenant"))
            })
            .await
    }

    /// The partner tenant named in `field`, which must be active and hold
    /// the `programs` asked for.
    pub async fn partner(
        &self,
        field: &str,
        partner: &str,
        programs: Programs<'_>,
        trace_id: &str,
    ) -> Result<idpb::Tenant, Error> {
        let t = self.tenant(field, partner, trace_id).await?;
        if t.kind() != idpb::TenantKind::Partner {
            return Err(Error::invalid(
                field,
                "names a customer tenant, not a partner",
            ));
        }
        if t.partner_status() == idpb::PartnerStatus::Suspended {
            return Err(Error::failed_precondition(
                "PARTNER_SUSPENDED",
                format!("partner {partner} is suspended; the operator must reinstate it first"),
            ));
        }
        let held = |p: &idpb::PartnerAuthorization| t.partner_authorizations().any(|a| a == *p);
        let name = |p: &idpb::PartnerAuthorization| {
            p.as_str_name()
                .trim_start_matches("PARTNER_AUTHORIZATION_")
                .to_owned()
        };
        let missing = match programs {
            Programs::AnyOf(ps) if !ps.is_empty() && !ps.iter().any(held) => {
                ps.iter().map(name).collect::<Vec<_>>().join(" or ")
            }
            Programs::AllOf(ps) => ps
                .iter()
                .filter(|p| !held(p))
                .map(name)
                .collect::<Vec<_>>()
                .join(" and "),
            _ => String::new(),
        };
        if !missing.is_empty() {
            return Err(Error::failed_precondition(
                "PARTNER_NOT_AUTHORIZED",
                format!("partner {partner} is not authorized {missing}; the operator grants partner programs"),
            ));
        }
        Ok(t)
    }

    /// The customer tenant named in `field`, which must be a customer.
    pub async fn customer(
        &self,
        field: &str,
        customer: &str,
        trace_id: &str,
    ) -> Result<idpb::Tenant, Error> {
        let t = self.tenant(field, customer, trace_id).await?;
        if t.kind() != idpb::TenantKind::Customer {
            return Err(Error::failed_precondition(
                "NOT_A_CUSTOMER",
                format!("tenant {customer} is a partner tenant; only customer tenants accept partner relationships"),
            ));
        }
        Ok(t)
    }

    /// Pushes one grant change; the raw status lets an outbox decide to retry.
    pub async fn apply_grant(
        &self,
        grant: idpb::ApplyDelegatedGrantRequest,
    ) -> Result<idpb::ApplyDelegatedGrantResponse, Status> {
        let mut client = idpb::access_service_client::AccessServiceClient::new(self.channel());
        Ok(client
            .apply_delegated_grant(self.creds.request(grant, ""))
            .await?
            .into_inner())
    }

    /// Creates a tenant as this service (a customer signing up through a
    /// link); `request_id` makes retries return the first result.
    pub async fn create_tenant(
        &self,
        req: idpb::CreateTenantRequest,
        trace_id: &str,
    ) -> Result<idpb::CreateTenantResponse, Error> {
        let mut client = idpb::tenant_service_client::TenantServiceClient::new(self.channel());
        client
            .create_tenant(self.creds.request(req, trace_id))
            .await
            .map(|r| r.into_inner())
            .map_err(|s| passthrough("identity", s))
    }
}

/// A peer's refusal of input the caller gave (bad value, taken name) is the
/// caller's to fix: keep its code and message. Anything else: [`peer_error`].
pub fn passthrough(peer: &str, s: Status) -> Error {
    let reason: &'static str = match s.code() {
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::NotFound => "NOT_FOUND",
        _ => return peer_error(peer, s),
    };
    Error::from_peer(s, reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn a_broken_transport_is_unavailable_and_a_peer_fault_is_internal() {
        let e = peer_error(
            "identity",
            Status::internal("h2 protocol error: connection reset"),
        );
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert_eq!(e.reason, "IDENTITY_UNAVAILABLE");
        let e = peer_error("relationships", Status::unavailable("tcp connect error"));
        assert_eq!(e.reason, "RELATIONSHIPS_UNAVAILABLE");
        // The peer's own internal error (it carries ErrorInfo) stays internal.
        let answered: Status = Error::internal("disk full").into();
        assert_eq!(peer_error("identity", answered).code, ErrorCode::Internal);
    }
}
