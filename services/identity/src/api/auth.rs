//! `sovra.identity.v1.AuthService`.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine};
use sovra_proto::identity::v1 as pb;
use sovra_runtime::{
    auth::{caller_pending_password_change, Caller},
    clock::to_timestamp,
    idempotency::{replay, Idempotency},
    Error,
};
use tonic::{Request, Response, Status};

use crate::{
    domain::{password::Password, values::Address},
    service::{Change, Ctx, Identity},
    store::users,
};

type Rpc<T> = Result<Response<T>, Status>;

fn sign_in_failed() -> Error {
    Error::unauthenticated(
        "SIGN_IN_FAILED",
        "the user principal name or password is incorrect",
    )
}

#[tonic::async_trait]
impl pb::auth_service_server::AuthService for Identity {
    async fn sign_in(&self, req: Request<pb::SignInRequest>) -> Rpc<pb::SignInResponse> {
        let r = req.into_inner();
        let upn = Address::parse("user_principal_name", &r.user_principal_name)?;
        if r.password.is_empty() {
            return Err(Error::invalid("password", "is required").into());
        }
        let user = users::get_active_by_upn(self.db().read(), &upn.to_string_lower()).await?;
        // Verify against a decoy when the name is unknown: same cost either way.
        let ok = self
            .inner
            .hasher
            .verify(&r.password, user.as_ref().map(|u| u.password_hash.as_str()))
            .await?;
        let user = match user {
            Some(u) if ok => u,
            _ => return Err(sign_in_failed().into()),
        };
        if user.blocked {
            return Err(Error::permission_denied(
                "USER_BLOCKED",
                "this user is blocked from signing in: ask an admin of your company",
            )
            .into());
        }
        let token = self.inner.authority.issue_user(
            &user.id,
            &user.tenant_id,
            user.must_change_password,
            self.cfg().access_token_ttl_secs,
        );
        Ok(Response::new(pb::SignInResponse {
            access_token: token.value,
            expire_time: Some(to_timestamp(token.expires_at)),
            must_change_password: user.must_change_password,
            user_id: user.id,
            tenant_id: user.tenant_id,
        }))
    }

    async fn change_password(
        &self,
        req: Request<pb::ChangePasswordRequest>,
    ) -> Rpc<pb::ChangePasswordResponse> {
        let caller = caller_pending_password_change(&req)?;
        let ctx = Ctx {
            caller: caller.clone(),
            trace_id: sovra_runtime::auth::trace_id(&req),
        };
        let Caller::User(me) = caller else {
            return Err(Error::permission_denied(
                "USER_REQUIRED",
                "only a signed-in user can change its password",
            )
            .into());
        };
        let r = req.into_inner();
        let idem = Idempotency::new(&ctx.caller, "ChangePassword", &r.request_id, &r)?;
        if r.current_password.is_empty() {
            return Err(Error::invalid("current_password", "is required").into());
        }
        let current = users::get_any(self.db().read(), &me.user_id)
            .await?
            .filter(|u| u.deleted_at.is_none() && !u.blocked)
            .ok_or_else(|| {
                Error::unauthenticated("USER_GONE", "the signed-in user can no longer sign in")
            })?;
        let alias = current.upn.split('@').next().unwrap_or_default().to_owned();
        let new = Password::parse("new_password", &r.new_password, &alias)?;
        if r.new_password == r.current_password {
            return Err(
                Error::invalid("new_password", "must differ from the current password").into(),
            );
        }
        // Replay before verifying: after a successful change the retry's
        // current_password no longer matches. The hashing below then runs
        // outside the write transaction, which is opened again to apply.
        let mut tx = self.db().begin().await?;
        if let Some(prev) = replay(&idem, &mut tx).await? {
            return Ok(Response::new(prev));
        }
        drop(tx);
        if !self
            .inner
            .hasher
            .verify(&r.current_password, Some(&current.password_hash))
            .await?
        {
            return Err(Error::invalid("current_password", "is incorrect").into());
        }
        let hash = self.inner.hasher.hash(&new).await?;
        let mut tx = self.db().begin().await?;
        if let Some(prev) = replay(&idem, &mut tx).await? {
            return Ok(Response::new(prev));
        }
        let mut u = current;
        // The conditional update refuses if the user changed since the
        // current password was verified against it.
        let expected = u.version;
        u.password_hash = hash;
        u.must_change_password = false;
        u.version += 1;
        u.updated_at = self.now();
        if !users::update(&mut tx, &u, expected).await? {
            return Err(Error::aborted(
                "USER_CHANGED",
                "the user changed while the password was being changed: retry",
            )
            .into());
        }
        let token = self.inner.authority.issue_user(
            &u.id,
            &u.tenant_id,
            false,
            self.cfg().access_token_ttl_secs,
        );
        let resp = pb::ChangePasswordResponse {
            access_token: token.value,
            expire_time: Some(to_timestamp(token.expires_at)),
        };
        let change = Change {
            tenant_id: &u.tenant_id,
            delegated: false,
            action: "identity.user.change_password",
            target: format!("users/{}", u.id),
        };
        self.commit(tx, &ctx, Some(change), &r.request_id, &idem, &resp)
            .await?;
        Ok(Response::new(resp))
    }

    async fn get_signing_keys(
        &self,
        _req: Request<pb::GetSigningKeysRequest>,
    ) -> Rpc<pb::GetSigningKeysResponse> {
        let a = &self.inner.authority;
        Ok(Response::new(pb::GetSigningKeysResponse {
            issuer: a.issuer().to_owned(),
            instance: a.instance().to_owned(),
            keys: a
                .keyring()
                .public_keys()
                .map(|(kid, key)| pb::SigningKey {
                    key_id: kid.to_owned(),
                    algorithm: "EdDSA".to_owned(),
                    public_key: B64.encode(key),
                })
                .collect(),
        }))
    }
}
