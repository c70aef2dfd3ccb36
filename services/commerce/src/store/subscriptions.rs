//! The `subscriptions` table.

use sovra_runtime::{clock::Millis, db::Tx, pool::Pool, writes::Insert, Error};
use sqlx::{any::AnyRow, Any, Executor, Row};

use super::corrupt;
use crate::domain::states::{Source, SubscriptionState};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub id: String,
    pub customer_tenant_id: String,
    pub product_id: String,
    pub state: SubscriptionState,
    pub source: Source,
    pub license_count: u32,
    /// Empty for none.
    pub partner_of_record: String,
    pub end_at: Option<Millis>,
    pub version: i64,
    pub created_at: Millis,
    pub updated_at: Millis,
}

const COLUMNS: &str = "id, customer_tenant_id, product_id, state, source, license_count, \
                       partner_of_record, end_at, version, created_at, updated_at";

fn from_row(r: &AnyRow) -> Result<Subscription, Error> {
    let id: String = r.try_get("id")?;
    let state: String = r.try_get("state")?;
    let source: String = r.try_get("source")?;
    Ok(Subscription {
        state: SubscriptionState::from_stored(&state)
            .ok_or_else(|| corrupt("subscriptions", &id, "state"))?,
        source: Source::from_stored(&source)
            .ok_or_else(|| corrupt("subscriptions", &id, "source"))?,
        customer_tenant_id: r.try_get("customer_tenant_id")?,
        product_id: r.try_get("product_id")?,
        license_count: r.try_get::<i64, _>("license_count")? as u32,
        partner_of_record: r.try_get("partner_of_record")?,
        end_at: r.try_get("end_at")?,
        version: r.try_get("version")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        id,
    })
}

/// The row of a new subscription.
pub fn row(s: &Subscription) -> Insert {
    Insert::new(
        "subscriptions",
        &[
            "id",
            "customer_tenant_id",
            "product_id",
            "state",
            "source",
            "license_count",
            "partner_of_record",
            "end_at",
            "version",
            "created_at",
            "updated_at",
        ],
    )
    .value(&s.id)
    .value(&s.customer_tenant_id)
    .value(&s.product_id)
    .value(s.state.as_str())
    .value(s.source.as_str())
    .value(s.license_count as i64)
    .value(&s.partner_of_record)
    .value(s.end_at)
    .value(s.version)
    .value(s.created_at)
    .value(s.updated_at)
}

/// Writes `s` if it is still at `expected` version; false when another
/// change came first.
pub async fn update(tx: &mut Tx, s: &Subscription, expected: i64) -> Result<bool, Error> {
    let r = sqlx::query(
        "UPDATE subscriptions SET state = $3, license_count = $4, partner_of_record = $5, end_at = $6, \
         version = $7, updated_at = $8 WHERE id = $1 AND version = $2",
    )
    .bind(&s.id)
    .bind(expected)
    .bind(s.state.as_str())
    .bind(s.license_count as i64)
    .bind(&s.partner_of_record)
    .bind(s.end_at)
    .bind(s.version)
    .bind(s.updated_at)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// One of a customer's subscriptions.
pub async fn get<'e, E: Executor<'e, Database = Any>>(
    ex: E,
    customer: &str,
    id: &str,
) -> Result<Option<Subscription>, Error> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM subscriptions WHERE customer_tenant_id = $1 AND id = $2"
    ))
    .bind(customer)
    .bind(id)
    .fetch_optional(ex)
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// The customer's trial of `product`, in any state, if it ever had one.
pub async fn trial_of<'e, E: Executor<'e, Database = Any>>(
    ex: E,
    customer: &str,
    product: &str,
) -> Result<Option<Subscription>, Error> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM subscriptions WHERE customer_tenant_id = $1 AND product_id = $2 \
         AND source = 'TRIAL_INVITATION'"
    ))
    .bind(customer)
    .bind(product)
    .fetch_optional(ex)
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// A customer's subscriptions in id order (ids are time-ordered), after `after`.
pub async fn page(
    pool: &Pool,
    customer: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<Subscription>, Error> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM subscriptions WHERE customer_tenant_id = $1 AND id > $2 \
         ORDER BY id LIMIT $3"
    ))
    .bind(customer)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(from_row).collect()
}

/// Trials whose end has passed.
pub async fn trials_due(pool: &Pool, now: Millis, limit: i64) -> Result<Vec<Subscription>, Error> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM subscriptions WHERE state = 'TRIAL' AND end_at <= $1 \
         ORDER BY end_at LIMIT $2"
    ))
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(from_row).collect()
}
