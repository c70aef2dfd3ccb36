//! `sovra.commerce.v1.SubscriptionService`, and the two writes every
//! subscription change goes through (so each one notifies its partner of
//! record in the same transaction).

use sovra_proto::{commerce::v1 as pb, identity::v1 as idpb};
use sovra_runtime::{
    audit,
    clock::DAY_MS,
    db::{unique_violation_table, Tx},
    error::{check_etag, etag_mismatch},
    features::Feature,
    idempotency::{self, replay, Idempotency},
    ids::TenantId,
    paging,
    writes::Writes,
    Error,
};
use tonic::{Request, Response};

use super::{convert::subscription_to_pb, Rpc};
use crate::{
    domain::{
        catalog::Product,
        states::{NotificationKind, Source, SubscriptionState},
    },
    service::{Change, Commerce, Ctx},
    store::{
        feed,
        subscriptions::{self, Subscription},
    },
};

/// A subscription about to be created.
pub(crate) struct NewSubscription<'a> {
    pub customer: &'a str,
    pub product: &'a Product,
    pub state: SubscriptionState,
    pub source: Source,
    pub license_count: u32,
    /// Empty for none.
    pub partner_of_record: &'a str,
    pub end_at: Option<i64>,
}

/// The error of writes holding the new subscription `s`: a second trial
/// of its product is FAILED_PRECONDITION, a racing twin of the request
/// ABORTED (see [`idempotency::write_error`]).
pub(crate) fn write_error(e: sqlx::Error, s: &Subscription) -> Error {
    if unique_violation_table(&e) == Some("subscriptions") {
        trial_used(&s.customer_tenant_id, &s.product_id)
    } else {
        idempotency::write_error(e)
    }
}

/// Who is changing a subscription.
struct Acting {
    delegated: bool,
}

impl Commerce {
    /// Creates a subscription and tells its partner of record, in `tx`. A
    /// second trial of the same product is FAILED_PRECONDITION.
    pub(crate) async fn add_subscription(
        &self,
        tx: &mut Tx,
        n: NewSubscription<'_>,
    ) -> Result<Subscription, Error> {
        let s = self.new_subscription(n);
        self.insert_subscription(tx, &s).await?;
        Ok(s)
    }

    /// A subscription not yet written (see [`Self::insert_subscription`]).
    pub(crate) fn new_subscription(&self, n: NewSubscription<'_>) -> Subscription {
        let now = self.now();
        Subscription {
            id: uuid::Uuid::now_v7().to_string(),
            customer_tenant_id: n.customer.to_owned(),
            product_id: n.product.id.clone(),
            state: n.state,
            source: n.source,
            license_count: n.license_count,
            partner_of_record: n.partner_of_record.to_owned(),
            end_at: n.end_at,
            version: 1,
            created_at: now,
            updated_at: now,
        }
    }

    /// Writes a new subscription and tells its partner of record, in `tx`.
    /// Callers call [`Self::feed_written`] after the commit.
    pub(crate) async fn insert_subscription(
        &self,
        tx: &mut Tx,
        s: &Subscription,
    ) -> Result<(), Error> {
        let mut w = Writes::new();
        self.add_new_subscription(&mut w, s);
        w.run(tx).await.map_err(|e| write_error(e, s))?;
        Ok(())
    }

    /// Adds a new subscription and its partner of record's notification to
    /// `w` (map their errors with [`write_error`]).
    pub(crate) fn add_new_subscription(&self, w: &mut Writes, s: &Subscription) {
        w.insert(subscriptions::row(s));
        if !s.partner_of_record.is_empty() {
            feed::add(
                w,
                self.numbering(),
                feed::Entry {
                    partner: &s.partner_of_record,
                    kind: NotificationKind::Created,
                    subscription: &subscription_to_pb(s),
                    version: s.version,
                    previous_license_count: 0,
                    at: s.created_at,
                },
            );
        }
    }

    /// Writes `next` over `prev` (same id) if nobody changed it meanwhile,
    /// and tells the partner of record what happened, in `tx`. Callers call
    /// [`Self::feed_written`] after the commit.
    pub(crate) async fn change_subscription(
        &self,
        tx: &mut Tx,
        prev: &Subscription,
        mut next: Subscription,
        kind: NotificationKind,
    ) -> Result<Subscription, Error> {
        next.version = prev.version + 1;
        next.updated_at = self.now();
        if !subscriptions::update(tx, &next, prev.version).await? {
            return Err(etag_mismatch("subscription"));
        }
        if !next.partner_of_record.is_empty() {
            feed::append(
                tx,
                self.numbering(),
                feed::Entry {
                    partner: &next.partner_of_record,
                    kind,
                    subscription: &subscription_to_pb(&next),
                    version: next.version,
                    previous_license_count: prev.license_count,
                    at: next.updated_at,
                },
            )
            .await?;
        }
        Ok(next)
    }

    /// Expires trials past their end, each with its notification. Returns
    /// how many expired.
    pub async fn expire_trials(&self) -> Result<u64, Error> {
        let mut expired = 0;
        loop {
            let due = subscriptions::trials_due(self.db().read(), self.now(), 200).await?;
            if due.is_empty() {
                return Ok(expired);
            }
            let n = due.len();
            for s in due {
                let mut tx = self.db().begin().await?;
                let next = Subscription {
                    state: SubscriptionState::Expired,
                    ..s.clone()
                };
                match self
                    .change_subscription(&mut tx, &s, next, NotificationKind::Expired)
                    .await
                {
                    Ok(_) => {
                        audit::record(
                            &mut tx,
                            self.now(),
                            audit::AuditEntry {
                                tenant_id: &s.customer_tenant_id,
                                caller: &sovra_runtime::auth::Caller::Service(
                                    crate::SERVICE.to_owned(),
                                ),
                                delegated: false,
                                action: "commerce.subscription.expire",
                                target: format!("subscriptions/{}", s.id),
                                request_id: "",
                                trace_id: "",
                            },
                        )
                        .await?;
                        tx.commit().await?;
                        expired += 1;
                    }
                    // Converted or cancelled meanwhile: nothing to expire.
                    Err(e) if e.reason == "ETAG_MISMATCH" => {}
                    Err(e) => return Err(e),
                }
            }
            self.feed_written().await;
            if n < 200 {
                return Ok(expired);
            }
        }
    }

    /// May the caller change `customer`'s subscriptions? Its own global or
    /// billing admins where customer self-service is on; a partner with FULL
    /// delegated access whose company is not suspended.
    async fn acting(&self, ctx: &Ctx, customer: &TenantId) -> Result<Acting, Error> {
        let access = self
            .require(ctx, customer, idpb::Permission::SubscriptionsManage)
            .await?;
        if access.own_role() {
            self.require_feature(Feature::CustomerSelfService, Some(customer.as_str()))
                .map_err(|mut e| {
                    e.message.push_str(
                        ": here only a partner with FULL delegated access changes subscriptions",
                    );
                    e
                })?;
            return Ok(Acting { delegated: false });
        }
        let u = ctx.user()?;
        self.partner(ctx, "customer_tenant_id", &u.tenant_id, &[])
            .await?;
        let partner = self.tenant_id("customer_tenant_id", &u.tenant_id)?;
        self.inner.limits.check(&partner, Some(customer))?;
        Ok(Acting { delegated: true })
    }

    async fn read_access(&self, ctx: &Ctx, customer: &TenantId) -> Result<(), Error> {
        if ctx.caller.is_operator() {
            return Ok(());
        }
        self.require(ctx, customer, idpb::Permission::TenantRead)
            .await
            .map(|_| ())
    }

    async fn subscription(&self, customer: &TenantId, id: &str) -> Result<Subscription, Error> {
        if id.is_empty() {
            return Err(Error::invalid("subscription_id", "is required"));
        }
        subscriptions::get(self.db().read(), customer.as_str(), id)
            .await?
            .ok_or_else(|| {
                Error::not_found(
                    "SUBSCRIPTION_NOT_FOUND",
                    format!("tenant {customer} has no subscription {id}"),
                )
                .with_violation("subscription_id", "not found")
            })
    }

    /// The shared shape of UpdateLicenseCount, ConvertTrial and Cancel:
    /// authorize, read, check the etag, change, notify, audit, remember.
    #[allow(clippy::too_many_arguments)]
    async fn mutate<M: prost::Message + Default>(
        &self,
        ctx: &Ctx,
        customer: &str,
        id: &str,
        etag: &str,
        request_id: &str,
        idem: Option<Idempotency>,
        action: &'static str,
        change: impl FnOnce(&Subscription, &Product) -> Result<(Subscription, NotificationKind), Error>,
        respond: impl FnOnce(pb::Subscription) -> M,
    ) -> Result<M, Error> {
        let customer = self.tenant_id("customer_tenant_id", customer)?;
        let acting = self.acting(ctx, &customer).await?;
        let mut tx = self.db().begin().await?;
        if let Some(prev) = replay(&idem, &mut tx).await? {
            return Ok(prev);
        }
        let current = self.subscription(&customer, id).await?;
        check_etag("subscription", etag, current.version)?;
        let product = self
            .catalog()
            .product("subscription_id", &current.product_id)?;
        let (next, kind) = change(&current, product)?;
        let next = self
            .change_subscription(&mut tx, &current, next, kind)
            .await?;
        let resp = respond(subscription_to_pb(&next));
        let audit = Change {
            tenant_id: customer.as_str(),
            delegated: acting.delegated,
            action,
            target: format!("subscriptions/{}", next.id),
        };
        self.commit(tx, ctx, Some(audit), request_id, &idem, &resp)
            .await?;
        self.feed_written().await;
        Ok(resp)
    }
}

pub(crate) fn trial_used(customer: &str, product: &str) -> Error {
    Error::failed_precondition(
        "TRIAL_ALREADY_USED",
        format!("tenant {customer} already had a trial of {product}: one trial per product per customer; buy it instead"),
    )
}

fn live(s: &Subscription) -> Result<(), Error> {
    if s.state.is_live() {
        Ok(())
    } else {
        Err(Error::failed_precondition(
            "SUBSCRIPTION_ENDED",
            format!(
                "subscription {} is {}; it can no longer change",
                s.id, s.state
            ),
        ))
    }
}

pub(crate) fn end_of_term(now: i64, days: u32) -> i64 {
    now + days as i64 * DAY_MS
}

#[tonic::async_trait]
impl pb::subscription_service_server::SubscriptionService for Commerce {
    async fn list_subscriptions(
        &self,
        req: Request<pb::ListSubscriptionsRequest>,
    ) -> Rpc<pb::ListSubscriptionsResponse> {
        let ctx = Ctx::of(&req)?;
        let r = req.get_ref();
        let customer = self.tenant_id("customer_tenant_id", &r.customer_tenant_id)?;
        let size = paging::page_size(r.page_size)?;
        let after = paging::decode_token("subscriptions", &r.page_token, 1)?
            .map(|v| v[0].clone())
            .unwrap_or_default();
        self.read_access(&ctx, &customer).await?;
        let mut rows =
            subscriptions::page(self.db().read(), customer.as_str(), &after, size + 1).await?;
        let next = paging::cut(&mut rows, size, "subscriptions", |s| vec![s.id.clone()]);
        Ok(Response::new(pb::ListSubscriptionsResponse {
            subscriptions: rows.iter().map(subscription_to_pb).collect(),
            next_page_token: next,
        }))
    }

    async fn get_subscription(
        &self,
        req: Request<pb::GetSubscriptionRequest>,
    ) -> Rpc<pb::GetSubscriptionResponse> {
        let ctx = Ctx::of(&req)?;
        let r = req.get_ref();
        let customer = self.tenant_id("customer_tenant_id", &r.customer_tenant_id)?;
        self.read_access(&ctx, &customer).await?;
        let s = self.subscription(&customer, &r.subscription_id).await?;
        Ok(Response::new(pb::GetSubscriptionResponse {
            subscription: Some(subscription_to_pb(&s)),
        }))
    }

    async fn purchase_subscription(
        &self,
        req: Request<pb::PurchaseSubscriptionRequest>,
    ) -> Rpc<pb::PurchaseSubscriptionResponse> {
        let ctx = Ctx::of(&req)?;
        let r = req.into_inner();
        self.require_feature(Feature::CustomerSelfService, Some(&r.customer_tenant_id))?;
        let customer = self.tenant_id("customer_tenant_id", &r.customer_tenant_id)?;
        let product = self.catalog().product("product_id", &r.product_id)?;
        let licenses = product.licenses("license_count", r.license_count)?;
        let idem = Idempotency::new(&ctx.caller, "PurchaseSubscription", &r.request_id, &r)?;
        let access = self
            .require(&ctx, &customer, idpb::Permission::SubscriptionsManage)
            .await?;
        if !access.own_role() {
            return Err(Error::permission_denied(
                "CUSTOMER_ADMIN_REQUIRED",
                format!("self-service purchases are made by tenant {customer}'s own global or billing admins; partners redeem offers or product keys"),
            )
            .into());
        }
        let mut tx = self.db().begin().await?;
        if let Some(prev) = replay(&idem, &mut tx).await? {
            return Ok(Response::new(prev));
        }
        let s = self
            .add_subscription(
                &mut tx,
                NewSubscription {
                    customer: customer.as_str(),
                    product,
                    state: SubscriptionState::Active,
                    source: Source::SelfService,
                    license_count: licenses,
                    partner_of_record: "",
                    end_at: None,
                },
            )
            .await?;
        let resp = pb::PurchaseSubscriptionResponse {
            subscription: Some(subscription_to_pb(&s)),
        };
        let audit = Change {
            tenant_id: customer.as_str(),
            delegated: false,
            action: "commerce.subscription.purchase",
            target: format!("subscriptions/{}", s.id),
        };
        self.commit(tx, &ctx, Some(audit), &r.request_id, &idem, &resp)
            .await?;
        Ok(Response::new(resp))
    }

    async fn update_license_count(
        &self,
        req: Request<pb::UpdateLicenseCountRequest>,
    ) -> Rpc<pb::UpdateLicenseCountResponse> {
        let ctx = Ctx::of(&req)?;
        let r = req.into_inner();
        if r.etag.is_empty() {
            return Err(Error::invalid(
                "etag",
                "is required: read the subscription and send its etag",
            )
            .into());
        }
        let idem = Idempotency::new(&ctx.caller, "UpdateLicenseCount", &r.request_id, &r)?;
        let count = r.license_count;
        let resp = self
            .mutate(
                &ctx,
                &r.customer_tenant_id,
                &r.subscription_id,
                &r.etag,
                &r.request_id,
                idem,
                "commerce.subscription.update_license_count",
                |s, p| {
                    live(s)?;
                    let n = p.licenses("license_count", count)?;
                    Ok((
                        Subscription {
                            license_count: n,
                            ..s.clone()
                        },
                        NotificationKind::LicenseCountChanged,
                    ))
                },
                |s| pb::UpdateLicenseCountResponse {
                    subscription: Some(s),
                },
            )
            .await?;
        Ok(Response::new(resp))
    }

    async fn convert_trial(
        &self,
        req: Request<pb::ConvertTrialRequest>,
    ) -> Rpc<pb::ConvertTrialResponse> {
        let ctx = Ctx::of(&req)?;
        let r = req.into_inner();
        let idem = Idempotency::new(&ctx.caller, "ConvertTrial", &r.request_id, &r)?;
        let count = r.license_count;
        let resp = self
            .mutate(
                &ctx,
                &r.customer_tenant_id,
                &r.subscription_id,
                &r.etag,
                &r.request_id,
                idem,
                "commerce.subscription.convert_trial",
                |s, p| {
                    Ok((
                        converted(s, p, count, "license_count")?,
                        NotificationKind::Converted,
                    ))
                },
                |s| pb::ConvertTrialResponse {
                    subscription: Some(s),
                },
            )
            .await?;
        Ok(Response::new(resp))
    }

    async fn cancel_subscription(
        &self,
        req: Request<pb::CancelSubscriptionRequest>,
    ) -> Rpc<pb::CancelSubscriptionResponse> {
        let ctx = Ctx::of(&req)?;
        let r = req.into_inner();
        let idem = Idempotency::new(&ctx.caller, "CancelSubscription", &r.request_id, &r)?;
        let resp = self
            .mutate(
                &ctx,
                &r.customer_tenant_id,
                &r.subscription_id,
                &r.etag,
                &r.request_id,
                idem,
                "commerce.subscription.cancel",
                |s, _| {
                    live(s)?;
                    Ok((
                        Subscription {
                            state: SubscriptionState::Cancelled,
                            ..s.clone()
                        },
                        NotificationKind::Cancelled,
                    ))
                },
                |s| pb::CancelSubscriptionResponse {
                    subscription: Some(s),
                },
            )
            .await?;
        Ok(Response::new(resp))
    }

    async fn list_audit_events(
        &self,
        req: Request<pb::ListAuditEventsRequest>,
    ) -> Rpc<pb::ListAuditEventsResponse> {
        let ctx = Ctx::of(&req)?;
        let r = req.get_ref();
        let tenant = self.tenant_id("tenant_id", &r.tenant_id)?;
        if !ctx.caller.is_operator() {
            self.require(&ctx, &tenant, idpb::Permission::AuditRead)
                .await?;
        }
        let (events, next) =
            audit::list(self.db(), tenant.as_str(), r.page_size, &r.page_token).await?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            events,
            next_page_token: next,
        }))
    }
}

/// A running trial as a paid subscription; `count` 0 keeps its licenses.
pub(crate) fn converted(
    s: &Subscription,
    p: &Product,
    count: i32,
    field: &str,
) -> Result<Subscription, Error> {
    if s.state != SubscriptionState::Trial {
        return Err(Error::failed_precondition(
            "NOT_A_TRIAL",
            format!("subscription {} is {}, not a running trial", s.id, s.state),
        ));
    }
    let license_count = if count == 0 {
        s.license_count
    } else {
        p.licenses(field, count)?
    };
    Ok(Subscription {
        state: SubscriptionState::Active,
        license_count,
        end_at: None,
        ..s.clone()
    })
}
