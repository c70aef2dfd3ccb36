//! The partner-of-record feed: `por_feeds` (a counter per partner) and
//! `notifications`, written in the transaction of the change they report.

use sovra_proto::commerce::v1 as pb;
use sovra_runtime::{clock::Millis, db::Tx, Error};
use sqlx::AnyPool;

use super::{corrupt, decode, encode};
use crate::domain::states::NotificationKind;

/// Appends one notification to `partner`'s feed and returns its sequence.
/// The counter row's lock orders the partner's writers, so sequences
/// become visible in order.
pub async fn append(
    tx: &mut Tx,
    partner: &str,
    kind: NotificationKind,
    subscription: &pb::Subscription,
    previous_license_count: u32,
    now: Millis,
) -> Result<i64, Error> {
    let (seq,): (i64,) = sqlx::query_as(
        "INSERT INTO por_feeds (partner_tenant_id, last_seq) VALUES ($1, 1) \
         ON CONFLICT (partner_tenant_id) DO UPDATE SET last_seq = por_feeds.last_seq + 1 \
         RETURNING last_seq",
    )
    .bind(partner)
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO notifications (partner_tenant_id, seq, kind, subscription, previous_license_count, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(partner)
    .bind(seq)
    .bind(kind.as_str())
    .bind(encode(subscription))
    .bind(previous_license_count as i64)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(seq)
}

/// Up to `limit` of `partner`'s notifications after `after`, oldest first.
pub async fn after(
    pool: &AnyPool,
    partner: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<pb::Notification>, Error> {
    let rows: Vec<(i64, String, String, i64, i64)> = sqlx::query_as(
        "SELECT seq, kind, subscription, previous_license_count, created_at FROM notifications \
         WHERE partner_tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind(partner)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(seq, kind, sub, prev, at)| {
            let kind = NotificationKind::from_stored(&kind)
                .ok_or_else(|| corrupt("notifications", &seq.to_string(), "kind"))?;
            Ok(pb::Notification {
                sequence: seq,
                partner_tenant_id: partner.to_owned(),
                kind: kind.to_pb() as i32,
                subscription: Some(decode(&sub)?),
                previous_license_count: prev as i32,
                create_time: Some(sovra_runtime::clock::to_timestamp(at)),
            })
        })
        .collect()
}
