//! The data the scenarios act on, made over gRPC as a user would: a partner
//! with a FULL-access agent, customers, delegated administration.

use anyhow::Context;
use sovra_proto::{identity::v1 as pb, relationships::v1 as rel};
use tonic::{
    metadata::{Ascii, MetadataValue},
    transport::Channel,
    Request,
};

const PASSWORD: &str = "Bench-Horse-42";

pub fn authed<T>(token: &str, msg: T) -> Request<T> {
    with_bearer(bearer(token), msg)
}

/// `token` as an authorization header value, made once and presented on
/// every call (as a client holding a token does).
pub fn bearer(token: &str) -> Option<MetadataValue<Ascii>> {
    MetadataValue::try_from(format!("Bearer {token}")).ok()
}

/// A user's access token as long as the ones `sovra up` issues from here
/// (the same configuration, so the same issuer, instance, id formats and
/// lifetime), signed by a throwaway key: what the baselines' requests carry
/// as their authorization, so that they are Sovra's requests on the wire
/// (nothing verifies it there).
pub fn token_like_sovras() -> anyhow::Result<String> {
    use sovra_runtime::{
        auth::{Authority, Keyring},
        clock::SystemClock,
        config::{LoadOptions, Settings},
        ids::{TenantId, UserId},
    };
    let s = Settings::load(&LoadOptions::default()).context("loading Sovra's configuration")?;
    let authority = Authority::new(
        std::sync::Arc::new(Keyring::generate()),
        s.instance.token_issuer.clone(),
        s.instance.name.clone(),
        std::sync::Arc::new(SystemClock),
    );
    let token = authority.issue_user(
        UserId::generate().as_str(),
        TenantId::generate(&s.instance.name).as_str(),
        false,
        s.auth.access_token_ttl_secs,
    );
    Ok(token.value)
}

/// `msg` with `bearer` as its authorization.
pub fn with_bearer<T>(bearer: Option<MetadataValue<Ascii>>, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(v) = bearer {
        r.metadata_mut().insert("authorization", v);
    }
    r
}

/// A failed call as the report shows it.
pub fn refusal(s: tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// What the scenarios act with.
pub struct World {
    pub partner: String,
    /// The partner's global admin (own role in the partner tenant).
    pub admin: String,
    /// A FULL-access agent (delegated in the customer tenants).
    pub agent: String,
    /// A customer whose delegated administrator the partner is.
    pub customer: Tenant,
}

/// A tenant and its first global admin's token.
#[derive(Clone)]
pub struct Tenant {
    pub id: String,
    pub admin: String,
}

async fn sign_in(ch: &Channel, upn: &str) -> anyhow::Result<String> {
    Ok(pb::auth_service_client::AuthServiceClient::new(ch.clone())
        .sign_in(pb::SignInRequest {
            user_principal_name: upn.into(),
            password: PASSWORD.into(),
        })
        .await?
        .into_inner()
        .access_token)
}

/// A new tenant with a first admin, signed in; and its primary domain.
pub async fn tenant(
    ch: &Channel,
    operator: &str,
    kind: pb::TenantKind,
    name: &str,
) -> anyhow::Result<(Tenant, String)> {
    let domain = format!(
        "{name}-{}.example",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let upn = format!("admin@{domain}");
    let t = pb::tenant_service_client::TenantServiceClient::new(ch.clone())
        .create_tenant(authed(
            operator,
            pb::CreateTenantRequest {
                kind: kind as i32,
                display_name: name.into(),
                primary_domain: domain.clone(),
                first_admin: Some(pb::FirstAdmin {
                    user_principal_name: upn.clone(),
                    display_name: format!("{name} admin"),
                    password: PASSWORD.into(),
                }),
                ..Default::default()
            },
        ))
        .await?
        .into_inner()
        .tenant
        .context("no tenant")?;
    let admin = sign_in(ch, &upn).await?;
    Ok((Tenant { id: t.id, admin }, domain))
}

/// A new customer tenant.
pub async fn customer(ch: &Channel, operator: &str) -> anyhow::Result<Tenant> {
    Ok(tenant(ch, operator, pb::TenantKind::Customer, "fabrikam")
        .await?
        .0)
}

/// `partner` offers delegated administration to `customer`, which accepts;
/// returns the relationship's id.
pub async fn delegate(
    ch: &Channel,
    partner_admin: &str,
    partner: &str,
    customer: &Tenant,
) -> anyhow::Result<String> {
    let mut client =
        rel::delegated_admin_service_client::DelegatedAdminServiceClient::new(ch.clone());
    let code = client
        .create_delegated_admin_offer(authed(
            partner_admin,
            rel::CreateDelegatedAdminOfferRequest {
                partner_tenant_id: partner.to_owned(),
                ..Default::default()
            },
        ))
        .await?
        .into_inner()
        .offer
        .context("no offer")?
        .code;
    Ok(client
        .accept_delegated_admin_offer(authed(
            &customer.admin,
            rel::AcceptDelegatedAdminOfferRequest {
                code,
                customer_tenant_id: customer.id.clone(),
                ..Default::default()
            },
        ))
        .await?
        .into_inner()
        .relationship
        .context("no relationship")?
        .id)
}

/// `customer` ends delegated administration `id`.
pub async fn remove_delegation(ch: &Channel, customer: &Tenant, id: &str) -> anyhow::Result<()> {
    rel::delegated_admin_service_client::DelegatedAdminServiceClient::new(ch.clone())
        .remove_delegated_admin(authed(
            &customer.admin,
            rel::RemoveDelegatedAdminRequest {
                customer_tenant_id: customer.id.clone(),
                id: id.to_owned(),
                ..Default::default()
            },
        ))
        .await?;
    Ok(())
}

/// A partner (subscription advisor and delegated admin) with an agent, and
/// a customer that made it its delegated administrator.
pub async fn world(ch: &Channel, operator: &str) -> anyhow::Result<World> {
    let (partner, domain) = tenant(ch, operator, pb::TenantKind::Partner, "contoso").await?;
    pb::tenant_service_client::TenantServiceClient::new(ch.clone())
        .set_partner_authorizations(authed(
            operator,
            pb::SetPartnerAuthorizationsRequest {
                tenant_id: partner.id.clone(),
                authorizations: vec![
                    pb::PartnerAuthorization::SubscriptionAdvisor as i32,
                    pb::PartnerAuthorization::DelegatedAdmin as i32,
                ],
                ..Default::default()
            },
        ))
        .await?;
    let upn = format!("agent@{domain}");
    pb::user_service_client::UserServiceClient::new(ch.clone())
        .create_user(authed(
            &partner.admin,
            pb::CreateUserRequest {
                tenant_id: partner.id.clone(),
                user_principal_name: upn.clone(),
                display_name: "agent".into(),
                supported_companies_access: pb::SupportedCompaniesAccess::Full as i32,
                password: PASSWORD.into(),
                ..Default::default()
            },
        ))
        .await?;
    let agent = sign_in(ch, &upn).await?;
    let customer = customer(ch, operator).await?;
    delegate(ch, &partner.admin, &partner.id, &customer).await?;
    Ok(World {
        partner: partner.id,
        admin: partner.admin,
        agent,
        customer,
    })
}
