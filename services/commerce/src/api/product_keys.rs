//! `sovra.commerce.v1.ProductKeyService`: operator import and exactly-once
//! redemption.
//!
//! Redemption claims the key, creates its subscription, audits and remembers
//! the answer in one commerce transaction first (the exactly-once step, one
//! commit; losers fail there, before any other call), then records the
//! advisor relationship in relationships. A retry by the same caller and
//! request id replays the answer and records the relationship again, which
//! relationships replays in turn (or answers from a read, when it is
//! already on record): a redemption cut off between the two finishes on
//! retry.
//!
//! Losers fail fast rather than queue for the write lock: a key already
//! redeemed by someone else is refused from a read before any transaction,
//! and a key another request in this process is redeeming right now is
//! refused with ABORTED PRODUCT_KEY_BEING_REDEEMED (retry to learn the
//! outcome). The database's conditional claim still decides the winner.

use sovra_proto::{commerce::v1 as pb, identity::v1 as idpb, relationships::v1 as rpb};
use sovra_runtime::{
    auth::Ctx,
    clock::Millis,
    features::Feature,
    idempotency::{replay, replay_read, Idempotency},
    ids::TenantId,
    Error,
};
use tonic::{Request, Response};

use super::{
    convert::subscription_to_pb,
    subscriptions::{end_of_term, write_error, NewSubscription},
    Rpc,
};
use crate::{
    domain::{
        product_key::ProductKey,
        states::{Source, SubscriptionState},
    },
    service::{Change, Commerce},
    store::{
        product_keys::{self, StoredKey},
        subscriptions::{self, Subscription},
    },
};

/// The most keys one import call takes.
const MAX_IMPORT: usize = 1000;
const MAX_TERM_DAYS: i32 = 3660;

fn not_found() -> Error {
    Error::not_found(
        "PRODUCT_KEY_NOT_FOUND",
        "no product key matches; check it was typed as printed",
    )
    .with_violation("product_key", "not found")
}

fn being_redeemed() -> Error {
    Error::aborted(
        "PRODUCT_KEY_BEING_REDEEMED",
        "another request is redeeming this product key right now; retry to learn the outcome",
    )
}

fn already_redeemed() -> Error {
    Error::failed_precondition(
        "PRODUCT_KEY_ALREADY_REDEEMED",
        "this product key was already redeemed; each key sets up one subscription once",
    )
}

#[tonic::async_trait]
impl pb::product_key_service_server::ProductKeyService for Commerce {
    async fn import_product_keys(
        &self,
        req: Request<pb::ImportProductKeysRequest>,
    ) -> Rpc<pb::ImportProductKeysResponse> {
        let ctx = Ctx::of(&req)?;
        let r = req.into_inner();
        self.require_feature(Feature::ProductKeys, None)?;
        if !ctx.caller.is_operator() {
            return Err(Error::permission_denied(
                "OPERATOR_REQUIRED",
                "only the instance operator imports product keys",
            )
            .into());
        }
        if r.keys.is_empty() || r.keys.len() > MAX_IMPORT {
            return Err(Error::invalid("keys", format!("must hold 1 to {MAX_IMPORT} keys")).into());
        }
        let idem = Idempotency::new(&ctx.caller, "ImportProductKeys", &r.request_id, &r)?;
        let mut tx = self.db().begin().await?;
        if let Some(prev) = replay(&idem, &mut tx).await? {
            return Ok(Response::new(prev));
        }
        let now = self.now();
        let mut results = Vec::with_capacity(r.keys.len());
        let mut imported = 0;
        for (i, k) in r.keys.iter().enumerate() {
            let mut result = pb::ImportResult {
                index: i as i32,
                ..Default::default()
            };
            let parsed = ProductKey::parse("product_key", &k.product_key).and_then(|key| {
                let product = self.catalog().product("product_id", &k.product_id)?;
                let licenses = product.licenses("license_count", k.license_count)?;
                if !(1..=MAX_TERM_DAYS).contains(&k.term_days) {
                    return Err(Error::invalid(
                        "term_days",
                        format!("must be 1 to {MAX_TERM_DAYS}"),
                    ));
                }
                Ok((key, product, licenses))
            });
            match parsed {
                Err(e) => {
                    result.outcome = pb::ImportOutcome::Invalid as i32;
                    result.message = e
                        .violations
                        .first()
                        .map(|v| format!("{}: {}", v.field, v.description))
                        .unwrap_or(e.message);
                }
                Ok((key, product, licenses)) => {
                    result.key_hint = key.hint();
                    let fresh = product_keys::insert(
                        &mut tx,
                        &StoredKey {
                            key_hash: key.hash(),
                            key_hint: key.hint(),
                            product_id: product.id.clone(),
                            license_count: licenses,
                            term_days: k.term_days as u32,
                            redeemed_at: None,
                            redeemed_by: None,
                            subscription_id: None,
                        },
                        now,
                    )
                    .await?;
                    if fresh {
                        imported += 1;
                        result.outcome = pb::ImportOutcome::Imported as i32;
                    } else {
                        result.outcome = pb::ImportOutcome::Duplicate as i32;
                        result.message = "already imported".into();
                    }
                }
            }
            results.push(result);
        }
        let resp = pb::ImportProductKeysResponse {
            results,
            imported_count: imported,
        };
        let change = Change {
            tenant_id: "",
            delegated: false,
            action: "commerce.product_keys.import",
            target: format!("product_keys ({imported} of {} imported)", r.keys.len()),
        };
        self.commit(tx, &ctx, Some(change), &r.request_id, &idem, &resp)
            .await?;
        Ok(Response::new(resp))
    }

    async fn redeem_product_key(
        &self,
        req: Request<pb::RedeemProductKeyRequest>,
    ) -> Rpc<pb::RedeemProductKeyResponse> {
        let result = self.redeem_key(req).await;
        let outcome = match &result {
            Ok(_) => "redeemed",
            Err(e) => &e.reason,
        };
        sovra_runtime::metrics::business::product_key(outcome);
        Ok(result?)
    }
}

impl Commerce {
    async fn redeem_key(
        &self,
        req: Request<pb::RedeemProductKeyRequest>,
    ) -> Result<Response<pb::RedeemProductKeyResponse>, Error> {
        let ctx = Ctx::of(&req)?;
        let r = req.into_inner();
        self.require_feature(Feature::ProductKeys, Some(&r.partner_tenant_id))?;
        let partner = self.tenant_id("partner_tenant_id", &r.partner_tenant_id)?;
        let customer = self.tenant_id("customer_tenant_id", &r.customer_tenant_id)?;
        // Format and check character before anything looks the key up.
        let key = ProductKey::parse("product_key", &r.product_key)?;
        let idem = Idempotency::new(&ctx.caller, "RedeemProductKey", &r.request_id, &r)?;
        self.require(&ctx, &partner, idpb::Permission::PartnerOffersCreate)
            .await?;
        self.partner(
            &ctx,
            "partner_tenant_id",
            partner.as_str(),
            &Self::programs(r.offer_delegated_admin),
        )
        .await?;
        self.inner.limits.check(&partner, Some(&customer))?;
        self.inner
            .key_attempts
            .take(partner.as_str(), crate::wall_now())
            .map_err(|wait| {
                Error::resource_exhausted(
                    "PRODUCT_KEY_RATE_LIMITED",
                    format!(
                        "partner {partner} is redeeming product keys too fast; retry in {} ms",
                        wait.as_millis()
                    ),
                    wait,
                )
            })?;
        self.identity()
            .customer("customer_tenant_id", customer.as_str(), &ctx.trace_id)
            .await?;
        // Who claims the key: a retry of this request resumes its own claim.
        let claimant = match &idem {
            Some(i) => format!("{}|{}", ctx.caller.principal(), i.request_id()),
            None => format!("{}|{}", ctx.caller.principal(), uuid::Uuid::new_v4()),
        };

        // 1. Claim the key and create its subscription, or find our own claim.
        let hash = key.hash();
        // Fail fast: a key someone else redeemed, or is redeeming now.
        let stored = product_keys::get(self.db(), &hash)
            .await?
            .ok_or_else(not_found)?;
        let ours = match &stored.redeemed_by {
            Some(by) if *by != claimant => return Err(already_redeemed()),
            by => by.is_some(),
        };
        let _holding = self
            .inner
            .redeeming
            .try_hold(&hash)
            .ok_or_else(being_redeemed)?;
        // Only a key this request claimed before can have a stored answer:
        // a first attempt skips the lookup. (A twin of this request racing
        // in another replica loses on the idempotency key's uniqueness.)
        let prev = if ours {
            replay_read::<pb::RedeemProductKeyResponse>(&idem, self.db()).await?
        } else {
            None
        };
        let (answer, wrote) = match prev {
            // Answered before: the relationships step below runs again (it
            // replays there too), so a redemption cut off between the two
            // finishes, and the answer carries its delegated-admin offer.
            // The pass runs too: the answer may be from a commit still
            // waiting for its flush (see `commit_for_feed`).
            Some(prev) => (prev, true),
            None => {
                // A key's product and terms never change once imported: the
                // subscription is made from the read, and the claim guards
                // its writes (one statement on PostgreSQL).
                let now = self.now();
                let sub = self.key_subscription(&stored, &partner, &customer, now)?;
                let (resp, change) = answer(&sub, &key, &partner, &customer);
                let mut w = product_keys::claim(&hash, &claimant, partner.as_str(), &sub.id, now);
                self.add_new_subscription(&mut w, &sub);
                self.add_change(&mut w, &ctx, change, &r.request_id, &idem, &resp);
                if self
                    .commit_for_feed(w)
                    .await
                    .map_err(|e| write_error(e, &sub))?
                {
                    (resp, true)
                } else {
                    let sub = self.own_claim(&hash, &claimant, &customer).await?;
                    let (resp, change) = answer(&sub, &key, &partner, &customer);
                    let tx = self.db().begin().await?;
                    self.commit(tx, &ctx, Some(change), &r.request_id, &idem, &resp)
                        .await?;
                    (resp, false)
                }
            }
        };

        // 2. Relationships: advisor, partner of record, the delegated-admin offer.
        let da = if r.offer_delegated_admin {
            rpb::DelegatedAdminChange::Offered
        } else {
            rpb::DelegatedAdminChange::None
        };
        let record = self.inner.advisors.record(
            rpb::RecordAdvisorRelationshipRequest {
                request_id: format!("commerce:key:{}", &hash[..40]),
                partner_tenant_id: partner.to_string(),
                customer_tenant_id: customer.to_string(),
                partner_of_record: true,
                delegated_admin: da as i32,
                reassign: false,
                acting_user_id: ctx.user().map(|u| u.user_id.clone()).unwrap_or_default(),
            },
            &ctx.trace_id,
        );
        // The subscription's notification is numbered meanwhile; that pass
        // also makes the claim durable (see `commit_for_feed`).
        let numbered = async {
            match wrote {
                true => self.feed_durable().await,
                false => Ok(()),
            }
        };
        let (recorded, numbered) = tokio::join!(record, numbered);
        numbered?;
        let offer = recorded?.delegated_admin_offer.unwrap_or_default();
        Ok(Response::new(pb::RedeemProductKeyResponse {
            delegated_admin_offer_url: offer.url,
            delegated_admin_offer_code: offer.code,
            ..answer
        }))
    }

    /// The subscription a key sets up.
    fn key_subscription(
        &self,
        k: &StoredKey,
        partner: &TenantId,
        customer: &TenantId,
        now: Millis,
    ) -> Result<Subscription, Error> {
        let product = self
            .catalog()
            .product("product_key", &k.product_id)
            .map_err(|_| {
                Error::failed_precondition(
                    "PRODUCT_WITHDRAWN",
                    format!(
                        "this key's product {} is no longer sold in this instance",
                        k.product_id
                    ),
                )
            })?;
        Ok(self.new_subscription(NewSubscription {
            customer: customer.as_str(),
            product,
            state: SubscriptionState::Active,
            source: Source::ProductKey,
            license_count: k.license_count,
            partner_of_record: partner.as_str(),
            end_at: Some(end_of_term(now, k.term_days)),
        }))
    }

    /// A key the claim found taken: the subscription of this claimant's
    /// own claim from before its answer was stored (by a version that
    /// committed the two apart), or ALREADY_REDEEMED.
    async fn own_claim(
        &self,
        hash: &str,
        claimant: &str,
        customer: &TenantId,
    ) -> Result<Subscription, Error> {
        let stored = product_keys::get(self.db(), hash)
            .await?
            .ok_or_else(not_found)?;
        match (&stored.redeemed_by, &stored.subscription_id) {
            (Some(by), Some(id)) if by == claimant => {
                subscriptions::get(self.db().read(), customer.as_str(), id)
                    .await?
                    .ok_or_else(|| Error::internal("a claimed key's subscription is missing"))
            }
            _ => Err(already_redeemed()),
        }
    }
}

/// A redemption's answer and audit record.
fn answer<'a>(
    sub: &Subscription,
    key: &ProductKey,
    partner: &TenantId,
    customer: &'a TenantId,
) -> (pb::RedeemProductKeyResponse, Change<'a>) {
    let resp = pb::RedeemProductKeyResponse {
        subscription: Some(subscription_to_pb(sub)),
        ..Default::default()
    };
    let change = Change {
        tenant_id: customer.as_str(),
        delegated: false,
        action: "commerce.product_key.redeem",
        target: format!(
            "subscriptions/{} (key …{}, partner {partner})",
            sub.id,
            key.hint()
        ),
    };
    (resp, change)
}
