//! Redeeming a trial invitation or purchase offer: one business transaction
//! across three services, made safe to retry rather than atomic.
//!
//! Order: check everything that can be checked without writing (the code,
//! the partner, the customer's admin, the trial rule); create a new
//! customer's tenant in identity; record the advisor relationship (partner
//! of record, delegated administration) in relationships; then write the
//! subscriptions, their notifications and the redemption in one commerce
//! transaction. Every downstream call carries a request id derived from the
//! link and the customer, so a retry replays what already happened and
//! finishes the rest; a failure anywhere is an error to the caller, never a
//! false success. Relationships is called before commerce writes so that its
//! refusals (another partner holds delegated administration) leave nothing
//! behind.

use sha2::{Digest, Sha256};
use sovra_proto::{commerce::v1 as pb, identity::v1 as idpb, relationships::v1 as rpb};
use sovra_runtime::{
    auth::{caller, trace_id, Caller, Ctx, UserCaller},
    clock::{to_timestamp, Millis},
    idempotency::{self, replay_read, Idempotency},
    Error, ErrorCode,
};
use tonic::Request;

use super::{
    convert::subscription_to_pb,
    subscriptions::{converted, end_of_term, trial_used, write_error, NewSubscription},
};
use crate::{
    domain::states::{LinkKind, NotificationKind, Source, SubscriptionState},
    service::{Change, Commerce},
    store::{
        decode, encode,
        links::{self, Line, LinkRecord},
        subscriptions::{self, Subscription},
    },
};

/// One redemption request of either kind.
struct Redeeming<'a> {
    kind: LinkKind,
    code: &'a str,
    request_id: &'a str,
    customer: Option<&'a pb::CustomerChoice>,
    overrides: &'a [pb::OfferLine],
    accept_delegated_admin: bool,
    reassign: bool,
}

/// Who the redemption is for, once resolved.
struct Customer {
    tenant_id: String,
    /// Set when this redemption signed the customer up.
    admin_user_id: String,
    /// The user the audit names.
    actor: Caller,
}

impl Commerce {
    pub(crate) async fn redeem_trial(
        &self,
        req: Request<pb::RedeemTrialInvitationRequest>,
    ) -> Result<pb::RedeemTrialInvitationResponse, Error> {
        let (signed_in, trace) = (signed_in(&req)?, trace_id(&req));
        let r = req.into_inner();
        let redemption = self
            .redeem(
                signed_in,
                &trace,
                "RedeemTrialInvitation",
                &r,
                Redeeming {
                    kind: LinkKind::Trial,
                    code: &r.code,
                    request_id: &r.request_id,
                    customer: r.customer.as_ref(),
                    overrides: &[],
                    accept_delegated_admin: r.accept_delegated_admin,
                    reassign: r.reassign,
                },
            )
            .await?;
        Ok(pb::RedeemTrialInvitationResponse {
            redemption: Some(redemption),
        })
    }

    pub(crate) async fn redeem_offer(
        &self,
        req: Request<pb::RedeemPurchaseOfferRequest>,
    ) -> Result<pb::RedeemPurchaseOfferResponse, Error> {
        let (signed_in, trace) = (signed_in(&req)?, trace_id(&req));
        let r = req.into_inner();
        let redemption = self
            .redeem(
                signed_in,
                &trace,
                "RedeemPurchaseOffer",
                &r,
                Redeeming {
                    kind: LinkKind::Offer,
                    code: &r.code,
                    request_id: &r.request_id,
                    customer: r.customer.as_ref(),
                    overrides: &r.license_counts,
                    accept_delegated_admin: r.accept_delegated_admin,
                    reassign: r.reassign,
                },
            )
            .await?;
        Ok(pb::RedeemPurchaseOfferResponse {
            redemption: Some(redemption),
        })
    }

    async fn redeem<R: prost::Message>(
        &self,
        signed_in: Option<Caller>,
        trace: &str,
        method: &'static str,
        raw: &R,
        r: Redeeming<'_>,
    ) -> Result<pb::Redemption, Error> {
        // 1. Everything that needs no write: the feature and the code first.
        let link = self.live_link(r.kind, r.code).await?;
        if r.accept_delegated_admin && !link.include_delegated_admin {
            return Err(Error::invalid(
                "accept_delegated_admin",
                format!(
                    "this {} does not include delegated administration",
                    r.kind.label()
                ),
            ));
        }
        let lines = self.lines(&link, r.overrides)?;
        let choice = r
            .customer
            .and_then(|c| c.customer.as_ref())
            .ok_or_else(|| {
                Error::invalid(
                    "customer",
                    "name the customer: customer_tenant_id (signed in as its admin) or new_customer to sign up",
                )
            })?;
        let signup = matches!(choice, pb::customer_choice::Customer::NewCustomer(_));
        let idem = match (&signed_in, signup) {
            (Some(c), false) => Idempotency::new(c, method, r.request_id, raw)?,
            // A sign-up has no caller yet: its request ids are unique per link.
            _ => Idempotency::scoped(format!("signup:{}", link.id), method, r.request_id, raw)?,
        };
        let ctx = Ctx {
            caller: signed_in
                .clone()
                .unwrap_or(Caller::Service(crate::SERVICE.to_owned())),
            trace_id: trace.to_owned(),
        };
        self.partner(
            &ctx,
            "code",
            &link.partner_tenant_id,
            &Self::programs(r.accept_delegated_admin),
        )
        .await?;
        if let Some(prev) = replay_read(&idem, self.db()).await? {
            // Its commit may still wait for the flush a pass gives it.
            self.feed_durable().await?;
            return Ok(prev);
        }

        // A leaked link can't be used to flood its partner with sign-ups.
        let link_partner = self.tenant_id("code", &link.partner_tenant_id)?;
        let named = match &choice {
            pb::customer_choice::Customer::CustomerTenantId(id) => {
                Some(self.tenant_id("customer.customer_tenant_id", id)?)
            }
            pb::customer_choice::Customer::NewCustomer(_) => None,
        };
        self.inner.limits.check(&link_partner, named.as_ref())?;

        // 2. The customer: an admin of an existing one, or a new one signing up.
        let customer = match choice {
            pb::customer_choice::Customer::CustomerTenantId(id) => {
                self.existing_customer(&ctx, signed_in.as_ref(), id, r.accept_delegated_admin)
                    .await?
            }
            pb::customer_choice::Customer::NewCustomer(nc) => {
                self.sign_up(&ctx, &link, nc, r.request_id).await?
            }
        };
        if let Some(first) = links::redemption(self.db(), &link.id, &customer.tenant_id).await? {
            // Redeeming the same link again for the same customer answers
            // the first result, once it is durable.
            self.feed_durable().await?;
            return decode(&first);
        }
        if link.kind == LinkKind::Trial {
            if let Some(l) = lines.first() {
                if subscriptions::trial_of(self.db().read(), &customer.tenant_id, &l.product_id)
                    .await?
                    .is_some()
                {
                    return Err(trial_used(&customer.tenant_id, &l.product_id));
                }
            }
        }

        // 3. Relationships: advisor, partner of record, delegated administration.
        let da = if r.accept_delegated_admin {
            rpb::DelegatedAdminChange::Accepted
        } else {
            rpb::DelegatedAdminChange::None
        };
        let recorded = self
            .inner
            .advisors
            .record(
                rpb::RecordAdvisorRelationshipRequest {
                    request_id: relationships_request_id(
                        &link.id,
                        &customer.tenant_id,
                        da,
                        r.reassign,
                    ),
                    partner_tenant_id: link.partner_tenant_id.clone(),
                    customer_tenant_id: customer.tenant_id.clone(),
                    partner_of_record: true,
                    delegated_admin: da as i32,
                    reassign: r.reassign,
                    acting_user_id: match &customer.actor {
                        Caller::User(u) => u.user_id.clone(),
                        _ => String::new(),
                    },
                },
                trace,
            )
            .await?;

        // 4. Commerce: subscriptions, notifications, the redemption, in one transaction.
        let ctx = Ctx {
            caller: customer.actor.clone(),
            trace_id: trace.to_owned(),
        };
        let now = self.now();
        let delegated = recorded
            .delegated_admin_relationship
            .map(|d| d.id)
            .unwrap_or_default();
        let answer = |subs: &[Subscription]| pb::Redemption {
            customer_tenant_id: customer.tenant_id.clone(),
            subscriptions: subs.iter().map(subscription_to_pb).collect(),
            admin_user_id: customer.admin_user_id.clone(),
            delegated_admin_relationship_id: delegated.clone(),
            redeem_time: Some(to_timestamp(now)),
        };
        let audit = Change {
            tenant_id: &customer.tenant_id,
            delegated: false,
            action: match link.kind {
                LinkKind::Trial => "commerce.trial_invitation.redeem",
                LinkKind::Offer => "commerce.purchase_offer.redeem",
            },
            target: format!(
                "{}s/{} (partner {})",
                link.kind.as_str(),
                link.id,
                link.partner_tenant_id
            ),
        };
        // First as one guarded write (one statement on PostgreSQL): new
        // subscriptions only, when the customer has not redeemed the link
        // and has no trial of its products. No second replay lookup: a twin
        // of this request that committed meanwhile holds the (link,
        // customer) redemption, and the full path below answers its result.
        let subs = lines
            .iter()
            .map(|l| self.line_subscription(&link, &customer.tenant_id, l, now))
            .collect::<Result<Vec<_>, _>>()?;
        let resp = answer(&subs);
        let products: Vec<&str> = lines.iter().map(|l| l.product_id.as_str()).collect();
        let mut w = links::redemption_guard(
            self.db().backend(),
            link.kind,
            &link.id,
            &customer.tenant_id,
            &encode(&resp),
            now,
            &products,
        );
        for s in &subs {
            self.add_new_subscription(&mut w, s);
        }
        self.add_change(&mut w, &ctx, audit.clone(), r.request_id, &idem, &resp);
        let written = self
            .commit_for_feed(w)
            .await
            .map_err(|e| match subs.first() {
                Some(s) => write_error(e, s),
                None => idempotency::write_error(e),
            })?;
        if written {
            self.feed_durable().await?;
            sovra_runtime::metrics::business::link_redeemed(link.kind.as_str());
            return Ok(resp);
        }

        // The full path: a trial to convert or refuse, or a redemption that
        // committed meanwhile, decided in a transaction.
        let mut tx = self.db().begin().await?;
        let mut subs = Vec::with_capacity(lines.len());
        for l in &lines {
            let trial = match link.kind {
                LinkKind::Trial => None,
                LinkKind::Offer => {
                    subscriptions::trial_of(&mut *tx, &customer.tenant_id, &l.product_id)
                        .await?
                        .filter(|t| t.state == SubscriptionState::Trial)
                }
            };
            let s = match trial {
                Some(t) => {
                    // Buying what is on trial converts the trial; the
                    // offer's partner becomes its partner of record.
                    let product = self.catalog().product("code", &l.product_id)?;
                    let mut next = converted(&t, product, l.license_count as i32, "code")?;
                    next.partner_of_record = link.partner_tenant_id.clone();
                    self.change_subscription(&mut tx, &t, next, NotificationKind::Converted)
                        .await?
                }
                None => {
                    let s = self.line_subscription(&link, &customer.tenant_id, l, now)?;
                    self.insert_subscription(&mut tx, &s).await?;
                    s
                }
            };
            subs.push(s);
        }
        let resp = answer(&subs);
        if !links::record_redemption(&mut tx, &link.id, &customer.tenant_id, &encode(&resp), now)
            .await?
        {
            // A concurrent redemption for this customer won: answer its
            // result. On SQLite it may still wait in the group commit this
            // transaction saw it in: an empty commit after it returns once
            // that group is done, and the read after it sees the outcome.
            drop(tx);
            self.db().begin().await?.commit().await?;
            let first = links::redemption(self.db(), &link.id, &customer.tenant_id)
                .await?
                .ok_or_else(|| {
                    Error::aborted(
                        "REDEMPTION_IN_FLIGHT",
                        "a redemption of this link for this customer was being made at the same time and did not complete: retry",
                    )
                })?;
            self.feed_durable().await?;
            return decode(&first);
        }
        self.commit(tx, &ctx, Some(audit), r.request_id, &idem, &resp)
            .await?;
        sovra_runtime::metrics::business::link_redeemed(link.kind.as_str());
        self.feed_written().await;
        Ok(resp)
    }

    /// The new subscription a line of `link` gives `customer`: a trial, or
    /// a purchase.
    fn line_subscription(
        &self,
        link: &LinkRecord,
        customer: &str,
        l: &Line,
        now: Millis,
    ) -> Result<Subscription, Error> {
        let product = self.catalog().product("code", &l.product_id)?;
        let (state, source, end_at) = match link.kind {
            LinkKind::Trial => (
                SubscriptionState::Trial,
                Source::TrialInvitation,
                Some(end_of_term(now, product.trial_days.unwrap_or(0))),
            ),
            LinkKind::Offer => (SubscriptionState::Active, Source::PurchaseOffer, None),
        };
        Ok(self.new_subscription(NewSubscription {
            customer,
            product,
            state,
            source,
            license_count: l.license_count,
            partner_of_record: &link.partner_tenant_id,
            end_at,
        }))
    }

    /// The link's lines with the customer's license counts applied (offers only).
    fn lines(&self, link: &LinkRecord, overrides: &[pb::OfferLine]) -> Result<Vec<Line>, Error> {
        let mut lines = link.lines.clone();
        for (i, o) in overrides.iter().enumerate() {
            let field = format!("license_counts[{i}]");
            let line = lines
                .iter_mut()
                .find(|l| l.product_id == o.product_id)
                .ok_or_else(|| {
                    Error::invalid(
                        format!("{field}.product_id"),
                        format!("`{}` is not in this offer", o.product_id),
                    )
                })?;
            let product = self
                .catalog()
                .product(&format!("{field}.product_id"), &o.product_id)?;
            line.license_count =
                product.licenses(&format!("{field}.license_count"), o.license_count)?;
        }
        for l in &lines {
            let product = self.catalog().product("code", &l.product_id).map_err(|_| {
                Error::failed_precondition(
                    "PRODUCT_WITHDRAWN",
                    format!(
                        "{} is no longer sold in this instance; ask the partner for a new link",
                        l.product_id
                    ),
                )
            })?;
            if link.kind == LinkKind::Trial && product.trial_days.is_none() {
                return Err(Error::failed_precondition(
                    "TRIAL_WITHDRAWN",
                    format!("{} no longer has a trial in this instance", l.product_id),
                ));
            }
        }
        Ok(lines)
    }

    /// An existing customer, redeeming through its global or billing admin
    /// (its global admin when delegated administration is accepted).
    async fn existing_customer(
        &self,
        ctx: &Ctx,
        signed_in: Option<&Caller>,
        id: &str,
        accept_delegated_admin: bool,
    ) -> Result<Customer, Error> {
        let field = "customer.customer_tenant_id";
        let tenant = self.tenant_id(field, id)?;
        let user: &UserCaller = match signed_in {
            Some(Caller::User(u)) => u,
            Some(_) => return Err(Error::permission_denied(
                "USER_REQUIRED",
                "a link is redeemed by the customer's admin, signed in as a user",
            )),
            None => return Err(Error::unauthenticated(
                "TOKEN_MISSING",
                "redeeming for an existing customer needs its admin signed in (`authorization: Bearer <token>`); a new customer signs up with new_customer",
            )),
        };
        let (permission, who) = if accept_delegated_admin {
            (idpb::Permission::PartnerRelationshipsManage, "global admin")
        } else {
            (
                idpb::Permission::SubscriptionsManage,
                "global or billing admin",
            )
        };
        let refuse = || {
            Error::permission_denied(
                "CUSTOMER_ADMIN_REQUIRED",
                format!(
                    "only a {who} of tenant {tenant}, signed in to it, may redeem this link for it"
                ),
            )
        };
        if user.tenant_id != tenant.as_str() {
            return Err(refuse());
        }
        let access = self.check(ctx, &tenant, permission).await?;
        if !access.own_role() {
            return Err(refuse());
        }
        self.identity()
            .customer(field, tenant.as_str(), &ctx.trace_id)
            .await?;
        Ok(Customer {
            tenant_id: tenant.to_string(),
            admin_user_id: String::new(),
            actor: Caller::User(user.clone()),
        })
    }

    /// Creates the new customer's tenant and first global admin in identity,
    /// idempotently: the same redemption request creates it once.
    async fn sign_up(
        &self,
        ctx: &Ctx,
        link: &LinkRecord,
        nc: &pb::NewCustomer,
        request_id: &str,
    ) -> Result<Customer, Error> {
        let prefix = "customer.new_customer";
        for (field, value) in [
            ("display_name", &nc.display_name),
            ("primary_domain", &nc.primary_domain),
            ("admin_user_principal_name", &nc.admin_user_principal_name),
            ("admin_password", &nc.admin_password),
        ] {
            if value.trim().is_empty() {
                return Err(Error::invalid(
                    format!("{prefix}.{field}"),
                    "is required to sign up",
                ));
            }
        }
        let rid = if request_id.is_empty() {
            uuid::Uuid::new_v4().simple().to_string()
        } else {
            request_id.to_owned()
        };
        let digest = Sha256::digest(format!("{}|{rid}", link.id));
        let derived = sovra_runtime::hex::encode(&digest[..16]);
        let created = self
            .identity()
            .create_tenant(
                idpb::CreateTenantRequest {
                    request_id: format!("signup:{derived}"),
                    kind: idpb::TenantKind::Customer as i32,
                    display_name: nc.display_name.clone(),
                    primary_domain: nc.primary_domain.clone(),
                    data_region: nc.data_region.clone(),
                    company_profile: nc.company_profile.clone(),
                    first_admin: Some(idpb::FirstAdmin {
                        user_principal_name: nc.admin_user_principal_name.clone(),
                        display_name: if nc.admin_display_name.is_empty() {
                            nc.admin_user_principal_name.clone()
                        } else {
                            nc.admin_display_name.clone()
                        },
                        password: nc.admin_password.clone(),
                    }),
                    syndication: false,
                },
                &ctx.trace_id,
            )
            .await
            .map_err(|e| rename_signup_fields(e, prefix))?;
        let tenant = created
            .tenant
            .ok_or_else(|| Error::internal("identity created a tenant without returning it"))?;
        let admin = created
            .first_admin
            .ok_or_else(|| Error::internal("identity created a tenant without its admin"))?;
        Ok(Customer {
            actor: Caller::User(UserCaller {
                user_id: admin.id.clone(),
                tenant_id: tenant.id.clone(),
                must_change_password: false,
            }),
            tenant_id: tenant.id,
            admin_user_id: admin.id,
        })
    }
}

/// The signed-in caller, if any: a sign-up needs none, an invalid token is
/// still refused (by the interceptor).
fn signed_in<T>(req: &Request<T>) -> Result<Option<Caller>, Error> {
    match caller(req) {
        Ok(c) => Ok(Some(c)),
        Err(e) if e.reason == "TOKEN_MISSING" => Ok(None),
        Err(e) => Err(e),
    }
}

/// Relationships' request id for this link, customer and choice: the same
/// redemption, retried by any request, records once.
fn relationships_request_id(
    link: &str,
    customer: &str,
    da: rpb::DelegatedAdminChange,
    reassign: bool,
) -> String {
    let digest = Sha256::digest(format!("{link}|{customer}|{}|{reassign}", da as i32));
    let h = sovra_runtime::hex::encode(&digest[..16]);
    format!("commerce:redeem:{h}")
}

/// Identity names its own fields; the caller sent them under new_customer.
fn rename_signup_fields(mut e: Error, prefix: &str) -> Error {
    if e.code != ErrorCode::InvalidArgument {
        return e;
    }
    for v in &mut e.violations {
        let ours = match v.field.as_str() {
            "first_admin.user_principal_name" => "admin_user_principal_name".to_owned(),
            "first_admin.display_name" => "admin_display_name".to_owned(),
            "first_admin.password" => "admin_password".to_owned(),
            other => other.to_owned(),
        };
        v.field = format!("{prefix}.{ours}");
    }
    e
}
