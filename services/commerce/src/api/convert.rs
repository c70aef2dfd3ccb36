//! Stored records to their protobuf shape.

use sovra_proto::commerce::v1 as pb;
use sovra_runtime::clock::to_timestamp;

use crate::{
    domain::{catalog::Product, states::LinkKind},
    store::{
        links::{Line, LinkRecord},
        subscriptions::Subscription,
    },
};

pub fn subscription_to_pb(s: &Subscription) -> pb::Subscription {
    pb::Subscription {
        id: s.id.clone(),
        customer_tenant_id: s.customer_tenant_id.clone(),
        product_id: s.product_id.clone(),
        state: s.state.to_pb() as i32,
        source: s.source.to_pb() as i32,
        license_count: s.license_count as i32,
        partner_of_record_tenant_id: s.partner_of_record.clone(),
        end_time: s.end_at.map(to_timestamp),
        create_time: Some(to_timestamp(s.created_at)),
        update_time: Some(to_timestamp(s.updated_at)),
        etag: s.version.to_string(),
    }
}

pub fn product_to_pb(p: &Product, currency: &str) -> pb::Product {
    pb::Product {
        id: p.id.clone(),
        name: p.name.clone(),
        trial_available: p.trial_days.is_some(),
        trial_days: p.trial_days.unwrap_or(0) as i32,
        min_licenses: p.min_licenses as i32,
        max_licenses: p.max_licenses as i32,
        unit_price: Some(pb::Money {
            currency_code: currency.to_owned(),
            amount_minor: p.unit_price_minor as i64,
        }),
    }
}

pub fn lines_to_pb(lines: &[Line]) -> Vec<pb::OfferLine> {
    lines
        .iter()
        .map(|l| pb::OfferLine {
            product_id: l.product_id.clone(),
            license_count: l.license_count as i32,
        })
        .collect()
}

/// `code` is only known when the link is created (and on its retries).
pub fn trial_to_pb(l: &LinkRecord, code: &str) -> pb::TrialInvitation {
    debug_assert_eq!(l.kind, LinkKind::Trial);
    pb::TrialInvitation {
        id: l.id.clone(),
        partner_tenant_id: l.partner_tenant_id.clone(),
        product_id: l
            .lines
            .first()
            .map(|x| x.product_id.clone())
            .unwrap_or_default(),
        include_delegated_admin: l.include_delegated_admin,
        url: l.url.clone(),
        code: code.to_owned(),
        redemption_count: l.redemption_count.unwrap_or_default(),
        create_time: Some(to_timestamp(l.created_at)),
        expire_time: Some(to_timestamp(l.expires_at)),
        revoke_time: l.revoked_at.map(to_timestamp),
    }
}

pub fn offer_to_pb(l: &LinkRecord, code: &str) -> pb::PurchaseOffer {
    debug_assert_eq!(l.kind, LinkKind::Offer);
    pb::PurchaseOffer {
        id: l.id.clone(),
        partner_tenant_id: l.partner_tenant_id.clone(),
        lines: lines_to_pb(&l.lines),
        include_delegated_admin: l.include_delegated_admin,
        url: l.url.clone(),
        code: code.to_owned(),
        redemption_count: l.redemption_count.unwrap_or_default(),
        create_time: Some(to_timestamp(l.created_at)),
        expire_time: Some(to_timestamp(l.expires_at)),
        revoke_time: l.revoked_at.map(to_timestamp),
    }
}
