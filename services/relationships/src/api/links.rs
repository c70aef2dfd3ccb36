//! What reseller requests and delegated-admin offers share: issuing a link,
//! resolving a code to its live record, previewing it, revoking it.

use sovra_proto::{identity::v1 as idpb, relationships::v1 as pb};
use sovra_runtime::{
    auth::Ctx,
    idempotency::{replay, Idempotency},
    ids::TenantId,
    links::check_live,
    Error,
};

use super::convert::partner_to_pb;
use crate::{
    domain::states::LinkKind,
    service::{Change, Relationships},
    store::links::{self, LinkRecord},
};

impl Relationships {
    /// A new link record for `partner` and the code that reaches it.
    pub(crate) fn new_link(
        &self,
        ctx: &Ctx,
        kind: LinkKind,
        partner: &TenantId,
        customer: Option<&TenantId>,
    ) -> (LinkRecord, String) {
        let issued = self.links().issue(kind.as_str());
        let now = self.now();
        let record = LinkRecord {
            id: issued.id,
            kind,
            partner_tenant_id: partner.to_string(),
            customer_tenant_id: customer.map(|c| c.to_string()),
            url: issued.url,
            email_subject: String::new(),
            email_body: String::new(),
            created_by: ctx.caller.principal(),
            created_at: now,
            expires_at: now + self.cfg().link_ttl_ms,
            revoked_at: None,
        };
        (record, issued.code)
    }

    /// Checks the code (authentic, this instance, this kind) before anything
    /// is read, then loads its record and refuses it when revoked or expired.
    pub(crate) async fn live_link(&self, kind: LinkKind, code: &str) -> Result<LinkRecord, Error> {
        let id = self.links().verify("code", kind.as_str(), code)?;
        let record = links::get(self.db().read(), &id)
            .await?
            .filter(|l| l.kind == kind)
            .ok_or_else(|| {
                Error::not_found(
                    "LINK_NOT_FOUND",
                    format!("no {} has this code", kind.label()),
                )
            })?;
        check_live(
            kind.label(),
            record.expires_at,
            record.revoked_at,
            self.now(),
        )?;
        // A tenant override may have turned the kind off for its partner.
        self.require_feature(kind.feature(), Some(&record.partner_tenant_id))?;
        Ok(record)
    }

    /// The partner behind a live link, with its company information.
    pub(crate) async fn preview(
        &self,
        trace_id: &str,
        kind: LinkKind,
        code: &str,
    ) -> Result<(pb::Partner, LinkRecord), Error> {
        let link = self.live_link(kind, code).await?;
        let partner = self
            .identity()
            .tenant("code", &link.partner_tenant_id, trace_id)
            .await?;
        Ok((partner_to_pb(&partner, None), link))
    }

    /// Revokes one of the partner's links; revoking twice is a no-op.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn revoke_link<M: prost::Message + Default>(
        &self,
        ctx: &Ctx,
        kind: LinkKind,
        partner_field: &str,
        partner_value: &str,
        id: &str,
        request_id: &str,
        idem: Option<Idempotency>,
        respond: impl FnOnce(&LinkRecord) -> M,
    ) -> Result<M, Error> {
        let partner = self.tenant_id(partner_field, partner_value)?;
        self.require(ctx, &partner, idpb::Permission::PartnerLinksCreate)
            .await?;
        if id.is_empty() {
            return Err(Error::invalid("id", "is required"));
        }
        let not_found = || {
            Error::not_found(
                "LINK_NOT_FOUND",
                format!("partner {partner} has no {} {id}", kind.label()),
            )
            .with_violation("id", "not found")
        };
        let mut tx = self.db().begin().await?;
        if let Some(prev) = replay(&idem, &mut tx).await? {
            return Ok(prev);
        }
        let mut link = links::get(&mut *tx, id)
            .await?
            .filter(|l| l.kind == kind && l.partner_tenant_id == partner.as_str())
            .ok_or_else(not_found)?;
        let newly = link.revoked_at.is_none();
        if newly {
            let now = self.now();
            links::revoke(&mut tx, id, now).await?;
            link.revoked_at = Some(now);
        }
        let resp = respond(&link);
        let action = format!("relationships.{}.revoke", kind.as_str().replace('-', "_"));
        let change = newly.then(|| Change {
            tenant_id: partner.as_str(),
            delegated: false,
            action: &action,
            target: format!("links/{id}"),
        });
        self.commit(tx, ctx, change, request_id, &idem, &resp)
            .await?;
        Ok(resp)
    }
}
