//! The partner-of-record feed: `notifications`, and `notification_outbox`
//! (notifications waiting for their sequence).
//!
//! A change writes its notification in its own transaction, one of two
//! ways ([`Numbering`]). Either way a partner's next sequence is one more
//! than its highest, taken by one writer at a time, so a partner's
//! sequences commit in order with no gaps, which is what resuming a stream
//! relies on.

use sovra_proto::commerce::v1 as pb;
use sovra_runtime::{
    clock::Millis,
    db::{Backend, Db, Tx},
    pool::Pool,
    writes::{Insert, Writes},
    Error,
};

use super::{corrupt, decode, encode};
use crate::domain::states::NotificationKind;

/// How a change's notification gets its sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Numbering {
    /// In the change's transaction. Needs one writing transaction at a time,
    /// which SQLite has anyway.
    Inline,
    /// Into `notification_outbox`; [`sequence_waiting`] numbers it after the
    /// commit. On PostgreSQL, numbering in the transaction serialised every
    /// change for a partner from its notification to its commit (a counter
    /// row's lock, held through each commit).
    Deferred,
}

impl Numbering {
    pub fn for_backend(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => Numbering::Inline,
            Backend::Postgres => Numbering::Deferred,
        }
    }
}

/// One notification about to be written.
pub struct Entry<'a> {
    pub partner: &'a str,
    pub kind: NotificationKind,
    pub subscription: &'a pb::Subscription,
    /// The subscription's version after the change: orders a subscription's
    /// own notifications while they wait.
    pub version: i64,
    pub previous_license_count: u32,
    pub at: Millis,
}

/// Writes `e` in `tx`, numbered as `numbering` says.
pub async fn append(tx: &mut Tx, numbering: Numbering, e: Entry<'_>) -> Result<(), Error> {
    let mut w = Writes::new();
    add(&mut w, numbering, e);
    w.run(tx).await?;
    Ok(())
}

/// Where deferred notifications wait for their numbers.
pub const OUTBOX: &str = "notification_outbox";

/// Adds `e` to `w`, numbered as `numbering` says.
pub fn add(w: &mut Writes, numbering: Numbering, e: Entry<'_>) {
    match numbering {
        Numbering::Inline => w.statement(
            "INSERT INTO notifications (partner_tenant_id, seq, kind, subscription, previous_license_count, created_at) \
             SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4, $5 FROM notifications WHERE partner_tenant_id = $1",
            vec![
                e.partner.into(),
                e.kind.as_str().into(),
                encode(e.subscription).into(),
                (e.previous_license_count as i64).into(),
                e.at.into(),
            ],
        ),
        Numbering::Deferred => w.insert(
            Insert::new(
                OUTBOX,
                &[
                    "id",
                    "partner_tenant_id",
                    "subscription_version",
                    "kind",
                    "subscription",
                    "previous_license_count",
                    "created_at",
                ],
            )
            .value(uuid::Uuid::now_v7().to_string())
            .value(e.partner)
            .value(e.version)
            .value(e.kind.as_str())
            .value(encode(e.subscription))
            .value(e.previous_license_count as i64)
            .value(e.at),
        ),
    }
}

/// Whether any notification waits for its sequence.
pub async fn any_waiting(pool: &Pool) -> Result<bool, Error> {
    // In the batch's order, so the index answers: a bare `LIMIT 1` scans
    // the table from its start, through every row deleted since its last
    // vacuum.
    let row: Option<(String,)> = sqlx::query_as(
        "SELECT id FROM notification_outbox ORDER BY subscription_version, created_at, id LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.is_some())
}

/// PostgreSQL advisory lock key: one sequencer at a time across replicas.
const SEQUENCER_LOCK: i64 = 4243;

/// Numbers up to `limit` waiting notifications into their partners' feeds
/// in one transaction and returns how many. One numbering transaction runs
/// at a time, across replicas too, so each partner's numbers still commit
/// in order.
///
/// Lowest subscription version first: a subscription's change commits only
/// after its previous change committed, so when a batch holds a change, it
/// holds every earlier change of that subscription still waiting, and
/// numbers them in order. Each partner's notifications in the batch take
/// the numbers after its highest, in batch order.
///
/// The statements are planned on each run (see [`on_batch`]). On
/// PostgreSQL the batch moves in one statement, after the lock (a
/// statement started before the lock was held could miss the numbers the
/// previous holder committed). On SQLite the writer is alone in its
/// transaction, so the same batch is read twice: numbered in, then deleted.
pub async fn sequence_waiting(db: &Db, limit: usize) -> Result<usize, Error> {
    let mut tx = db.begin().await?;
    let moved = match db.backend() {
        Backend::Postgres => {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(SEQUENCER_LOCK)
                .execute(&mut *tx)
                .await?;
            on_batch(
                &mut tx,
                &format!(
                    "WITH w AS (DELETE FROM notification_outbox WHERE id IN ({BATCH}) \
                     RETURNING id, partner_tenant_id, subscription_version, kind, subscription, previous_license_count, created_at), \
                     {NUMBER}"
                ),
                limit,
            )
            .await?
        }
        Backend::Sqlite => {
            let numbered = on_batch(
                &mut tx,
                &format!(
                    "WITH w AS (SELECT * FROM notification_outbox WHERE id IN ({BATCH})), {NUMBER}"
                ),
                limit,
            )
            .await?;
            let deleted = on_batch(
                &mut tx,
                &format!("DELETE FROM notification_outbox WHERE id IN ({BATCH})"),
                limit,
            )
            .await?;
            if numbered != deleted {
                return Err(Error::internal(
                    "the feed's waiting batch changed within its transaction",
                ));
            }
            numbered
        }
    };
    if moved > 0 {
        tx.commit().await?;
    }
    Ok(moved as usize)
}

/// Runs `sql`, whose `$1` is the batch's size, and returns the rows it
/// wrote.
///
/// Planned anew on each run (not prepared once per connection): the outbox
/// starts empty, and a plan made for an empty table finds the batch's rows
/// by scanning the whole table, through every row the passes deleted since
/// autovacuum last ran (a minute's worth, tens of thousands under load).
/// Planned on the table as it is, the batch is read from the index. The
/// plan costs a fraction of a millisecond, once per batch.
async fn on_batch(tx: &mut Tx, sql: &str, limit: usize) -> Result<u64, Error> {
    Ok(sqlx::query(sql)
        .bind(limit as i64)
        .persistent(false)
        .execute(&mut **tx)
        .await?
        .rows_affected())
}

/// The ids of the batch to number: `$1` waiting notifications, lowest
/// subscription version first.
const BATCH: &str = "SELECT id FROM notification_outbox \
                     ORDER BY subscription_version, created_at, id LIMIT $1";

/// Inserts the waiting rows `w` into their partners' feeds: each partner's
/// after its highest number (looked up once per partner), in batch order.
/// Follows a `WITH w AS (…), `.
const NUMBER: &str = "last AS (SELECT p.partner_tenant_id, \
     COALESCE((SELECT MAX(n.seq) FROM notifications n WHERE n.partner_tenant_id = p.partner_tenant_id), 0) AS seq \
     FROM (SELECT DISTINCT partner_tenant_id FROM w) p) \
     INSERT INTO notifications \
     (partner_tenant_id, seq, kind, subscription, previous_license_count, created_at) \
     SELECT w.partner_tenant_id, \
     l.seq + ROW_NUMBER() OVER (PARTITION BY w.partner_tenant_id ORDER BY w.subscription_version, w.created_at, w.id), \
     w.kind, w.subscription, w.previous_license_count, w.created_at \
     FROM w JOIN last l ON l.partner_tenant_id = w.partner_tenant_id";

/// Up to `limit` of `partner`'s notifications after `after`, oldest first.
pub async fn after(
    pool: &Pool,
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
