//! `sovra.identity.v1.TenantService`.

use sovra_proto::{common::v1 as common, identity::v1 as pb};
use sovra_runtime::{
    audit,
    features::Feature,
    idempotency::{replay, Idempotency},
    Error,
};
use tonic::{Request, Response, Status};

use super::{check_etag, convert::*, etag_mismatch};
use crate::{
    domain::{
        ids::{TenantId, UserId},
        password::Password,
        profile::CompanyProfile,
        roles::{CompanyRole, PartnerStatus, Permission, SupportedAccess, TenantKind},
        values::{parse_region, Address, DisplayName, Domain},
    },
    service::{Change, Ctx, Identity},
    store::{tenants, tenants::TenantRecord, users, users::UserRecord},
};

type Rpc<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::tenant_service_server::TenantService for Identity {
    async fn create_tenant(
        &self,
        req: Request<pb::CreateTenantRequest>,
    ) -> Rpc<pb::CreateTenantResponse> {
        let ctx = self.ctx(&req)?;
        if !ctx.caller.is_operator() {
            // Commerce creates the customers who sign up through its links.
            ctx.require_service(&["commerce"], "create tenants (or the instance operator)")
                .map_err(|_| {
                    Error::permission_denied(
                        "OPERATOR_REQUIRED",
                        "only the instance operator may create tenants",
                    )
                })?;
        }
        let r = req.into_inner();
        let idem = Idempotency::new(&ctx.caller, "CreateTenant", &r.request_id, &r)?;
        Ok(Response::new(
            self.create_tenant_inner(&ctx, idem, r).await?,
        ))
    }

    async fn get_tenant(&self, req: Request<pb::GetTenantRequest>) -> Rpc<pb::GetTenantResponse> {
        let ctx = self.ctx(&req)?;
        let id = self.tenant_id("tenant_id", &req.get_ref().tenant_id)?;
        if !(ctx.caller.is_operator() || ctx.caller.is_service()) {
            self.authorize(&ctx, &id, Permission::TenantRead).await?;
        }
        let t = self.tenant(&id).await?;
        Ok(Response::new(pb::GetTenantResponse {
            tenant: Some(tenant_to_pb(&t, &self.cfg().instance)),
        }))
    }

    async fn update_company_profile(
        &self,
        req: Request<pb::UpdateCompanyProfileRequest>,
    ) -> Rpc<pb::UpdateCompanyProfileResponse> {
        let ctx = self.ctx(&req)?;
        let r = req.into_inner();
        let id = self.tenant_id("tenant_id", &r.tenant_id)?;
        let idem = Idempotency::new(&ctx.caller, "UpdateCompanyProfile", &r.request_id, &r)?;
        let granted = self
            .authorize(&ctx, &id, Permission::CompanyProfileUpdate)
            .await?;
        let paths = r.update_mask.clone().map(|m| m.paths).unwrap_or_default();
        let update = profile_from_pb(r.company_profile.clone());
        let mut tx = self.db().begin().await?;
        if let Some(prev) = replay(&idem, &mut tx).await? {
            return Ok(Response::new(prev));
        }
        let mut t = tenants::get(&mut *tx, id.as_str())
            .await?
            .ok_or_else(|| crate::service::tenant_not_found(&id))?;
        check_etag("tenant", &r.etag, t.version)?;
        let merged = t.profile.apply(update, &paths)?;
        let profile = CompanyProfile::parse(merged, "company_profile")?;
        if profile.name.is_empty() {
            return Err(Error::invalid("company_profile.name", "must not be empty").into());
        }
        let expected = t.version;
        t.profile = profile;
        t.version += 1;
        t.updated_at = self.now();
        if !tenants::update(&mut tx, &t, expected).await? {
            return Err(etag_mismatch("tenant").into());
        }
        let resp = pb::UpdateCompanyProfileResponse {
            tenant: Some(tenant_to_pb(&t, &self.cfg().instance)),
        };
        let change = Change {
            tenant_id: id.as_str(),
            delegated: granted.delegated,
            action: "identity.tenant.update_company_profile",
            target: format!("tenants/{id}"),
        };
        self.commit(tx, &ctx, Some(change), &r.request_id, &idem, &resp)
            .await?;
        Ok(Response::new(resp))
    }

    async fn set_partner_authorizations(
        &self,
        req: Request<pb::SetPartnerAuthorizationsRequest>,
    ) -> Rpc<pb::SetPartnerAuthorizationsResponse> {
        let ctx = self.ctx(&req)?;
        self.require_operator(&ctx)?;
        let r = req.into_inner();
        let id = self.tenant_id("tenant_id", &r.tenant_id)?;
        let idem = Idempotency::new(&ctx.caller, "SetPartnerAuthorizations", &r.request_id, &r)?;
        let mut wanted = Vec::new();
        for (i, a) in r.authorizations.iter().enumerate() {
            let a = authorization_from_pb(&format!("authorizations[{i}]"), *a)?;
            if !wanted.contains(&a) {
                wanted.push(a);
            }
        }
        let tenant = self
            .change_partner(
                &ctx,
                &id,
                &idem,
                &r.request_id,
                "identity.tenant.set_partner_authorizations",
                |t| {
                    t.authorizations = wanted;
                },
            )
            .await?;
        Ok(Response::new(pb::SetPartnerAuthorizationsResponse {
            tenant: Some(tenant),
        }))
    }

    async fn set_partner_status(
        &self,
        req: Request<pb::SetPartnerStatusRequest>,
    ) -> Rpc<pb::SetPartnerStatusResponse> {
        let ctx = self.ctx(&req)?;
        self.require_operator(&ctx)?;
        let r = req.into_inner();
        let id = self.tenant_id("tenant_id", &r.tenant_id)?;
        let idem = Idempotency::new(&ctx.caller, "SetPartnerStatus", &r.request_id, &r)?;
        let status = status_from_pb("status", r.status)?;
        crate::domain::values::parse_text("reason", &r.reason, 1024)?;
        let tenant = self
            .change_partner(
                &ctx,
                &id,
                &idem,
                &r.request_id,
                "identity.tenant.set_partner_status",
                |t| {
                    t.partner_status = Some(status);
                },
            )
            .await?;
        Ok(Response::new(pb::SetPartnerStatusResponse {
            tenant: Some(tenant),
        }))
    }

    async fn get_features(
        &self,
        req: Request<pb::GetFeaturesRequest>,
    ) -> Rpc<pb::GetFeaturesResponse> {
        let ctx = self.ctx(&req)?;
        let r = req.into_inner();
        let tenant = match r.tenant_id.as_str() {
            "" => None,
            t => {
                let id = self.tenant_id("tenant_id", t)?;
                if ctx.caller.is_operator() || ctx.caller.is_service() {
                    self.tenant(&id).await?;
                } else {
                    self.authorize(&ctx, &id, Permission::TenantRead).await?;
                }
                Some(id)
            }
        };
        let flags = self
            .cfg()
            .features
            .effective(tenant.as_ref().map(|t| t.as_str()));
        Ok(Response::new(pb::GetFeaturesResponse {
            instance: self.cfg().instance.clone(),
            region: self.cfg().region.clone(),
            features: features_to_pb(&flags),
        }))
    }

    async fn list_audit_events(
        &self,
        req: Request<pb::ListAuditEventsRequest>,
    ) -> Rpc<pb::ListAuditEventsResponse> {
        let ctx = self.ctx(&req)?;
        let r = req.into_inner();
        // The operator reads instance-wide events (feature-flag changes) with no tenant.
        let scope = if r.tenant_id.is_empty() && ctx.caller.is_operator() {
            String::new()
        } else {
            let id = self.tenant_id("tenant_id", &r.tenant_id)?;
            if ctx.caller.is_operator() {
                self.tenant(&id).await?;
            } else {
                self.authorize(&ctx, &id, Permission::AuditRead).await?;
            }
            id.as_str().to_owned()
        };
        let (events, next_page_token) =
            audit::list(self.db(), &scope, r.page_size, &r.page_token).await?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            events,
            next_page_token,
        }))
    }
}

fn features_to_pb(flags: &[(Feature, bool)]) -> Vec<common::FeatureFlag> {
    flags
        .iter()
        .map(|&(f, enabled)| common::FeatureFlag {
            name: f.name().to_owned(),
            enabled,
        })
        .collect()
}

impl Identity {
    async fn create_tenant_inner(
        &self,
        ctx: &Ctx,
        idem: Option<Idempotency>,
        r: pb::CreateTenantRequest,
    ) -> Result<pb::CreateTenantResponse, Error> {
        let kind = kind_from_pb("kind", r.kind)?;
        let display_name = DisplayName::parse("display_name", &r.display_name)?;
        let domain = Domain::parse("primary_domain", &r.primary_domain)?;
        let region = parse_region(
            "data_region",
            &r.data_region,
            &self.cfg().data_regions,
            &self.cfg().region,
        )?;
        let mut profile = CompanyProfile::parse(
            profile_from_pb(r.company_profile.clone()),
            "company_profile",
        )?;
        if profile.name.is_empty() {
            profile.name = display_name.as_str().to_owned();
        }
        if r.syndication && kind == TenantKind::Partner {
            return Err(Error::invalid(
                "syndication",
                "applies to customer tenants only",
            ));
        }
        let fa = r.first_admin.clone().ok_or_else(|| {
            Error::invalid(
                "first_admin",
                "is required: every tenant starts with a global admin",
            )
        })?;
        let upn = Address::parse("first_admin.user_principal_name", &fa.user_principal_name)?;
        if upn.domain() != &domain {
            return Err(Error::invalid(
                "first_admin.user_principal_name",
                format!(
                    "must end with @{}, the tenant's primary domain",
                    domain.as_str()
                ),
            ));
        }
        let admin_name = DisplayName::parse("first_admin.display_name", &fa.display_name)?;
        let (password, temporary) = if fa.password.is_empty() {
            (Password::temporary(), true)
        } else {
            (
                Password::parse("first_admin.password", &fa.password, upn.alias())?,
                false,
            )
        };
        let hash = self.inner.hasher.hash(&password).await?;
        let now = self.now();
        let tenant = TenantRecord {
            id: TenantId::generate(&self.cfg().instance).as_str().to_owned(),
            kind,
            display_name: display_name.into_string(),
            primary_domain: domain.as_str().to_owned(),
            data_region: region,
            profile,
            authorizations: Vec::new(),
            partner_status: (kind == TenantKind::Partner).then_some(PartnerStatus::Active),
            syndication: r.syndication,
            version: 1,
            created_at: now,
            updated_at: now,
        };
        let admin = UserRecord {
            id: UserId::generate().as_str().to_owned(),
            tenant_id: tenant.id.clone(),
            upn: upn.to_string_lower(),
            display_name: admin_name.into_string(),
            role: Some(CompanyRole::GlobalAdmin),
            access: SupportedAccess::None,
            blocked: false,
            password_hash: hash,
            must_change_password: temporary,
            version: 1,
            created_at: now,
            updated_at: now,
            deleted_at: None,
        };
        let mut tx = self.db().begin().await?;
        if let Some(prev) = replay(&idem, &mut tx).await? {
            return Ok(prev);
        }
        users::purge_upn(&mut tx, &admin.upn, self.cutoff()).await?;
        tenants::insert(&mut tx, &tenant).await?;
        users::insert(&mut tx, &admin)
            .await
            .map_err(|e| e.in_field("first_admin"))?;
        let resp = pb::CreateTenantResponse {
            tenant: Some(tenant_to_pb(&tenant, &self.cfg().instance)),
            first_admin: Some(user_to_pb(&admin, self.cfg().retention_ms)),
            temporary_password: if temporary {
                password.expose().to_owned()
            } else {
                String::new()
            },
        };
        let change = Change {
            tenant_id: &tenant.id,
            delegated: false,
            action: "identity.tenant.create",
            target: format!("tenants/{}", tenant.id),
        };
        self.commit(tx, ctx, Some(change), &r.request_id, &idem, &resp)
            .await?;
        Ok(resp)
    }

    /// An operator change to a partner tenant, applied idempotently and audited.
    async fn change_partner(
        &self,
        ctx: &Ctx,
        id: &TenantId,
        idem: &Option<Idempotency>,
        request_id: &str,
        action: &str,
        change: impl FnOnce(&mut TenantRecord),
    ) -> Result<pb::Tenant, Error> {
        let mut tx = self.db().begin().await?;
        if let Some(prev) = replay::<pb::Tenant>(idem, &mut tx).await? {
            return Ok(prev);
        }
        let mut t = tenants::get(&mut *tx, id.as_str())
            .await?
            .ok_or_else(|| crate::service::tenant_not_found(id))?;
        if t.kind != TenantKind::Partner {
            return Err(Error::invalid(
                "tenant_id",
                "names a customer tenant; partner authorizations and status apply to partner tenants only",
            ));
        }
        let expected = t.version;
        change(&mut t);
        t.version += 1;
        t.updated_at = self.now();
        if !tenants::update(&mut tx, &t, expected).await? {
            return Err(etag_mismatch("tenant"));
        }
        let tenant = tenant_to_pb(&t, &self.cfg().instance);
        let change = Change {
            tenant_id: id.as_str(),
            delegated: false,
            action,
            target: format!("tenants/{id}"),
        };
        self.commit(tx, ctx, Some(change), request_id, idem, &tenant)
            .await?;
        Ok(tenant)
    }
}
