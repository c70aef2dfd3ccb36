//! `sovra.identity.v1.UserService`. The same methods serve a user's own
//! tenant and a customer administered on its behalf; the policy decides.

use sovra_proto::identity::v1 as pb;
use sovra_runtime::{
    auth::Caller,
    db::Tx,
    idempotency::{replay, Idempotency},
    paging, Error,
};
use tonic::{Request, Response, Status};

use super::{check_etag, convert::*, etag_mismatch};
use crate::{
    domain::{
        ids::{TenantId, UserId},
        password::Password,
        roles::{CompanyRole, Permission, SupportedAccess, TenantKind},
        values::{Address, DisplayName},
    },
    service::{Change, Ctx, Granted, Identity},
    store::{tenants, users, users::UserRecord},
};

type Rpc<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::user_service_server::UserService for Identity {
    async fn create_user(
        &self,
        req: Request<pb::CreateUserRequest>,
    ) -> Rpc<pb::CreateUserResponse> {
        let ctx = self.ctx(&req)?;
        let r = req.into_inner();
        let tid = self.tenant_id("tenant_id", &r.tenant_id)?;
        let idem = Idempotency::new(&ctx.caller, "CreateUser", &r.request_id, &r)?;
        let upn = Address::parse("user_principal_name", &r.user_principal_name)?;
        let display_name = DisplayName::parse("display_name", &r.display_name)?;
        let role = role_from_pb("company_role", r.company_role)?;
        let access = access_from_pb("supported_companies_access", r.supported_companies_access)?;
        let perm = if role.is_some()
            || matches!(
                access,
                Some(SupportedAccess::Full | SupportedAccess::Limited)
            ) {
            Permission::AdminUsersManage
        } else {
            Permission::UsersManage
        };
        let granted = self.authorize(&ctx, &tid, perm).await?;
        let tenant = self.tenant(&tid).await?;
        if access.is_some_and(|a| a != SupportedAccess::None) && tenant.kind != TenantKind::Partner
        {
            return Err(Error::invalid(
                "supported_companies_access",
                "applies to users of partner tenants only; this is a customer tenant",
            )
            .into());
        }
        if upn.domain().as_str() != tenant.primary_domain {
            return Err(Error::invalid(
                "user_principal_name",
                format!(
                    "must end with @{}, the tenant's primary domain",
                    tenant.primary_domain
                ),
            )
            .into());
        }
        let (password, must_change) = if r.password.is_empty() {
            (Password::temporary(), true)
        } else {
            (
                Password::parse("password", &r.password, upn.alias())?,
                r.force_change_password,
            )
        };
        let hash = self.inner.hasher.hash(&password).await?;
        let now = self.now();
        let user = UserRecord {
            id: UserId::generate().as_str().to_owned(),
            tenant_id: tid.as_str().to_owned(),
            upn: upn.to_string_lower(),
            display_name: display_name.into_string(),
            role,
            access: access.unwrap_or(SupportedAccess::None),
            blocked: false,
            password_hash: hash,
            must_change_password: must_change,
            version: 1,
            created_at: now,
            updated_at: now,
            deleted_at: None,
        };
        let mut tx = self.db().begin().await?;
        if let Some(prev) = replay(&idem, &mut tx).await? {
            return Ok(Response::new(prev));
        }
        users::purge_upn(&mut tx, &user.upn, self.cutoff()).await?;
        users::insert(&mut tx, &user).await?;
        let resp = pb::CreateUserResponse {
            user: Some(user_to_pb(&user, self.cfg().retention_ms)),
            temporary_password: if r.password.is_empty() {
                password.expose().to_owned()
            } else {
                String::new()
            },
        };
        self.commit_user(
            tx,
            &ctx,
            &tid,
            &granted,
            "identity.user.create",
            &user.id,
            &r.request_id,
            &idem,
            &resp,
        )
        .await?;
        Ok(Response::new(resp))
    }

    async fn get_user(&self, req: Request<pb::GetUserRequest>) -> Rpc<pb::GetUserResponse> {
        let ctx = self.ctx(&req)?;
        let r = req.into_inner();
        let tid = self.tenant_id("tenant_id", &r.tenant_id)?;
        let uid = UserId::parse("user_id", &r.user_id)?;
        let is_self = matches!(&ctx.caller, Caller::User(u) if u.user_id == uid.as_str() && u.tenant_id == tid.as_str());
        if !is_self {
            self.authorize(&ctx, &tid, Permission::UsersRead).await?;
        }
        let user = self.target(&tid, &uid).await?;
        Ok(Response::new(pb::GetUserResponse {
            user: Some(user_to_pb(&user, self.cfg().retention_ms)),
        }))
    }

    async fn list_users(&self, req: Request<pb::ListUsersRequest>) -> Rpc<pb::ListUsersResponse> {
        let ctx = self.ctx(&req)?;
        let r = req.into_inner();
        let tid = self.tenant_id("tenant_id", &r.tenant_id)?;
        self.authorize(&ctx, &tid, Permission::UsersRead).await?;
        let size = paging::page_size(r.page_size)?;
        let token_kind = if r.show_deleted {
            "users+deleted"
        } else {
            "users"
        };
        let after = paging::decode_token(token_kind, &r.page_token, 1)?
            .map(|mut v| v.remove(0))
            .unwrap_or_default();
        let mut rows = users::list(
            self.db().read(),
            tid.as_str(),
            &after,
            size + 1,
            r.show_deleted,
            self.cutoff(),
        )
        .await?;
        let next_page_token = paging::cut(&mut rows, size, token_kind, |u| vec![u.upn.clone()]);
        Ok(Response::new(pb::ListUsersResponse {
            users: rows
                .iter()
                .map(|u| user_to_pb(u, self.cfg().retention_ms))
                .collect(),
            next_page_token,
        }))
    }

    async fn update_user(
        &self,
        req: Request<pb::UpdateUserRequest>,
    ) -> Rpc<pb::UpdateUserResponse> {
        let ctx = self.ctx(&req)?;
        let r = req.into_inner();
        let tid = self.tenant_id("tenant_id", &r.tenant_id)?;
        let idem = Idempotency::new(&ctx.caller, "UpdateUser", &r.request_id, &r)?;
        let patch = r
            .user
            .clone()
            .ok_or_else(|| Error::invalid("user", "is required"))?;
        let uid = UserId::parse("user.id", &patch.id)?;
        let paths = r.update_mask.clone().map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            return Err(Error::invalid(
                "update_mask",
                "name the fields to change: display_name, company_role, supported_companies_access, blocked",
            )
            .into());
        }
        let mut display_name = None;
        let mut role = None;
        let mut access = None;
        let mut blocked = None;
        for p in &paths {
            match p.strip_prefix("user.").unwrap_or(p) {
                "display_name" => display_name = Some(DisplayName::parse("user.display_name", &patch.display_name)?),
                "company_role" => role = Some(role_from_pb("user.company_role", patch.company_role)?),
                "supported_companies_access" => {
                    access = Some(
                        access_from_pb("user.supported_companies_access", patch.supported_companies_access)?
                            .unwrap_or(SupportedAccess::None),
                    )
                }
                "blocked" => blocked = Some(patch.blocked),
                other => {
                    return Err(Error::invalid(
                        "update_mask",
                        format!(
                            "`{other}` can't be updated; use display_name, company_role, supported_companies_access or blocked"
                        ),
                    )
                    .into())
                }
            }
        }
        let admin_fields = role.is_some() || access.is_some();
        let (granted, mut tx) = self
            .manage(&ctx, &tid, &uid, |target_role| {
                if admin_fields {
                    Permission::AdminUsersManage
                } else {
                    Permission::to_manage_user_with(target_role)
                }
            })
            .await?;
        if access.is_some_and(|a| a != SupportedAccess::None) {
            let tenant = tenants::get(&mut *tx, tid.as_str())
                .await?
                .ok_or_else(|| crate::service::tenant_not_found(&tid))?;
            if tenant.kind != TenantKind::Partner {
                return Err(Error::invalid(
                    "user.supported_companies_access",
                    "applies to users of partner tenants only; this is a customer tenant",
                )
                .into());
            }
        }
        if let Some(prev) = replay(&idem, &mut tx).await? {
            return Ok(Response::new(prev));
        }
        let mut u = self.target_in(&mut tx, &tid, &uid).await?;
        check_etag("user", &r.etag, u.version)?;
        if u.deleted_at.is_some() {
            return Err(Error::failed_precondition(
                "USER_DELETED",
                "the user is deleted: restore it before changing it",
            )
            .into());
        }
        let loses_global_admin = u.role == Some(CompanyRole::GlobalAdmin)
            && (role.is_some_and(|r| r != Some(CompanyRole::GlobalAdmin)) || blocked == Some(true));
        if loses_global_admin {
            self.keep_a_global_admin(&mut tx, &tid, &u.id).await?;
        }
        let expected = u.version;
        if let Some(n) = display_name {
            u.display_name = n.into_string();
        }
        if let Some(r) = role {
            u.role = r;
        }
        if let Some(a) = access {
            u.access = a;
        }
        if let Some(b) = blocked {
            u.blocked = b;
        }
        u.version += 1;
        u.updated_at = self.now();
        if !users::update(&mut tx, &u, expected).await? {
            return Err(etag_mismatch("user").into());
        }
        let resp = pb::UpdateUserResponse {
            user: Some(user_to_pb(&u, self.cfg().retention_ms)),
        };
        self.commit_user(
            tx,
            &ctx,
            &tid,
            &granted,
            "identity.user.update",
            &u.id,
            &r.request_id,
            &idem,
            &resp,
        )
        .await?;
        Ok(Response::new(resp))
    }

    async fn delete_user(
        &self,
        req: Request<pb::DeleteUserRequest>,
    ) -> Rpc<pb::DeleteUserResponse> {
        let ctx = self.ctx(&req)?;
        let r = req.into_inner();
        let idem = Idempotency::new(&ctx.caller, "DeleteUser", &r.request_id, &r)?;
        let now = self.now();
        let user = self
            .change_user(
                &ctx,
                &r.tenant_id,
                &r.user_id,
                &idem,
                &r.request_id,
                UserChange {
                    needs: Permission::to_manage_user_with,
                    action: "identity.user.delete",
                    apply: Box::new(move |u| {
                        if u.deleted_at.is_some() {
                            return Err(Error::failed_precondition(
                                "USER_ALREADY_DELETED",
                                "the user is already deleted",
                            ));
                        }
                        u.deleted_at = Some(now);
                        Ok(())
                    }),
                    respond: Box::new(|user| pb::DeleteUserResponse { user: Some(user) }),
                },
            )
            .await?;
        Ok(Response::new(user))
    }

    async fn restore_user(
        &self,
        req: Request<pb::RestoreUserRequest>,
    ) -> Rpc<pb::RestoreUserResponse> {
        let ctx = self.ctx(&req)?;
        let r = req.into_inner();
        let idem = Idempotency::new(&ctx.caller, "RestoreUser", &r.request_id, &r)?;
        let user = self
            .change_user(
                &ctx,
                &r.tenant_id,
                &r.user_id,
                &idem,
                &r.request_id,
                UserChange {
                    needs: Permission::to_manage_user_with,
                    action: "identity.user.restore",
                    apply: Box::new(|u| {
                        if u.deleted_at.is_none() {
                            return Err(Error::failed_precondition(
                                "USER_NOT_DELETED",
                                "the user is not deleted",
                            ));
                        }
                        u.deleted_at = None;
                        Ok(())
                    }),
                    respond: Box::new(|user| pb::RestoreUserResponse { user: Some(user) }),
                },
            )
            .await?;
        Ok(Response::new(user))
    }

    async fn reset_password(
        &self,
        req: Request<pb::ResetPasswordRequest>,
    ) -> Rpc<pb::ResetPasswordResponse> {
        let ctx = self.ctx(&req)?;
        let r = req.into_inner();
        let idem = Idempotency::new(&ctx.caller, "ResetPassword", &r.request_id, &r)?;
        let temporary = Password::temporary();
        let hash = self.inner.hasher.hash(&temporary).await?;
        let shown = temporary.expose().to_owned();
        let resp = self
            .change_user(
                &ctx,
                &r.tenant_id,
                &r.user_id,
                &idem,
                &r.request_id,
                UserChange {
                    needs: Permission::to_reset_password_of,
                    action: "identity.user.reset_password",
                    apply: Box::new(move |u| {
                        if u.deleted_at.is_some() {
                            return Err(Error::failed_precondition(
                                "USER_DELETED",
                                "the user is deleted: restore it first",
                            ));
                        }
                        u.password_hash = hash;
                        u.must_change_password = true;
                        Ok(())
                    }),
                    respond: Box::new(move |user| pb::ResetPasswordResponse {
                        user: Some(user),
                        temporary_password: shown,
                    }),
                },
            )
            .await?;
        Ok(Response::new(resp))
    }
}

/// One change to one user: the permission its current role needs, the audit
/// action, the change itself, and how to answer.
type ApplyChange = Box<dyn FnOnce(&mut UserRecord) -> Result<(), Error> + Send>;

struct UserChange<M> {
    needs: fn(Option<CompanyRole>) -> Permission,
    action: &'static str,
    apply: ApplyChange,
    respond: Box<dyn FnOnce(pb::User) -> M + Send>,
}

impl Identity {
    /// Authorizes, applies and audits a change to one user in one
    /// transaction; a retry with the same request_id gets the first answer.
    async fn change_user<M: prost::Message + Default>(
        &self,
        ctx: &Ctx,
        tenant_id: &str,
        user_id: &str,
        idem: &Option<Idempotency>,
        request_id: &str,
        change: UserChange<M>,
    ) -> Result<M, Error> {
        let tid = self.tenant_id("tenant_id", tenant_id)?;
        let uid = UserId::parse("user_id", user_id)?;
        let (granted, mut tx) = self.manage(ctx, &tid, &uid, change.needs).await?;
        if let Some(prev) = replay(idem, &mut tx).await? {
            return Ok(prev);
        }
        let mut u = self.target_in(&mut tx, &tid, &uid).await?;
        let expected = u.version;
        let was_global_admin = u.role == Some(CompanyRole::GlobalAdmin) && u.deleted_at.is_none();
        (change.apply)(&mut u)?;
        if was_global_admin && u.deleted_at.is_some() {
            self.keep_a_global_admin(&mut tx, &tid, &u.id).await?;
        }
        u.version += 1;
        u.updated_at = self.now();
        if !users::update(&mut tx, &u, expected).await? {
            return Err(etag_mismatch("user"));
        }
        let resp = (change.respond)(user_to_pb(&u, self.cfg().retention_ms));
        self.commit_user(
            tx,
            ctx,
            &tid,
            &granted,
            change.action,
            &u.id,
            request_id,
            idem,
            &resp,
        )
        .await?;
        Ok(resp)
    }

    /// A visible user of `tenant` (active, or deleted within retention).
    async fn target(&self, tenant: &TenantId, id: &UserId) -> Result<UserRecord, Error> {
        users::get(
            self.db().read(),
            tenant.as_str(),
            id.as_str(),
            self.cutoff(),
        )
        .await?
        .ok_or_else(|| user_not_found(tenant, id))
    }

    async fn target_in(
        &self,
        tx: &mut Tx,
        tenant: &TenantId,
        id: &UserId,
    ) -> Result<UserRecord, Error> {
        users::get(&mut **tx, tenant.as_str(), id.as_str(), self.cutoff())
            .await?
            .ok_or_else(|| user_not_found(tenant, id))
    }

    /// Authorizes an action on one user whose needed permission depends on
    /// the user's role, and opens the write transaction. Standing in the
    /// tenant is checked first, so strangers get NOT_FOUND, not a hint.
    async fn manage(
        &self,
        ctx: &Ctx,
        tenant: &TenantId,
        id: &UserId,
        needs: impl FnOnce(Option<CompanyRole>) -> Permission,
    ) -> Result<(Granted, Tx), Error> {
        self.authorize(ctx, tenant, Permission::TenantRead).await?;
        let target = self.target(tenant, id).await?;
        let granted = self.authorize(ctx, tenant, needs(target.role)).await?;
        Ok((granted, self.db().begin().await?))
    }

    /// Refuses a change that would leave `tenant` without an active global admin.
    async fn keep_a_global_admin(
        &self,
        tx: &mut Tx,
        tenant: &TenantId,
        user_id: &str,
    ) -> Result<(), Error> {
        tenants::lock(tx, tenant.as_str()).await?;
        if users::other_active_global_admins(tx, tenant.as_str(), user_id).await? == 0 {
            return Err(Error::failed_precondition(
                "LAST_GLOBAL_ADMIN",
                "this is the tenant's last active global admin: make another user a global admin first",
            ));
        }
        Ok(())
    }

    /// [`Identity::commit`] for a change to one user.
    #[allow(clippy::too_many_arguments)]
    async fn commit_user<M: prost::Message>(
        &self,
        tx: Tx,
        ctx: &Ctx,
        tenant: &TenantId,
        granted: &Granted,
        action: &str,
        user_id: &str,
        request_id: &str,
        idem: &Option<Idempotency>,
        resp: &M,
    ) -> Result<(), Error> {
        let change = Change {
            tenant_id: tenant.as_str(),
            delegated: granted.delegated,
            action,
            target: format!("users/{user_id}"),
        };
        self.commit(tx, ctx, Some(change), request_id, idem, resp)
            .await
    }
}

fn user_not_found(tenant: &TenantId, id: &UserId) -> Error {
    Error::not_found(
        "USER_NOT_FOUND",
        format!("user {} not found in tenant {tenant}", id.as_str()),
    )
}
