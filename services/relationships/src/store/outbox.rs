//! The `grant_outbox` table: delegated-grant changes identity has not yet
//! acknowledged. Rows are written in the change's own transaction and
//! deleted after identity answers, many at a time (see
//! [`crate::outbox::Outbox::remove_acknowledged`]).

use sovra_runtime::{clock::Millis, db::Backend, writes::json_text_array, Error};
use sqlx::{any::AnyRow, Any, Executor, Row};

use crate::domain::states::DelegatedState;

/// A new change is its request's to deliver (right after commit) for this
/// long before the sweep takes it: else both may push it at once. Only a
/// process that stopped in between leaves one to the sweep.
pub const INLINE_MS: i64 = 15_000;

#[derive(Debug, Clone)]
pub struct GrantChange {
    pub id: String,
    pub partner_tenant_id: String,
    pub customer_tenant_id: String,
    pub relationship_id: String,
    pub state: String,
    pub version: i64,
    pub attempts: i64,
}

fn from_row(r: &AnyRow) -> Result<GrantChange, Error> {
    Ok(GrantChange {
        id: r.try_get("id")?,
        partner_tenant_id: r.try_get("partner_tenant_id")?,
        customer_tenant_id: r.try_get("customer_tenant_id")?,
        relationship_id: r.try_get("relationship_id")?,
        state: r.try_get("state")?,
        version: r.try_get("version")?,
        attempts: r.try_get("attempts")?,
    })
}

impl GrantChange {
    /// A new change, to be queued: `relationship` is now in `state`, the
    /// pair's grant at `version`.
    pub(super) fn new(
        partner: &str,
        customer: &str,
        relationship_id: &str,
        state: DelegatedState,
        version: i64,
    ) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            partner_tenant_id: partner.to_owned(),
            customer_tenant_id: customer.to_owned(),
            relationship_id: relationship_id.to_owned(),
            state: state.as_str().to_owned(),
            version,
            attempts: 0,
        }
    }
}

/// Changes due for delivery, oldest first.
pub async fn due<'e, E: Executor<'e, Database = Any>>(
    ex: E,
    now: Millis,
    limit: i64,
) -> Result<Vec<GrantChange>, Error> {
    sqlx::query(
        "SELECT id, partner_tenant_id, customer_tenant_id, relationship_id, state, version, attempts \
         FROM grant_outbox WHERE next_attempt_at <= $1 ORDER BY next_attempt_at, id LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(ex)
    .await?
    .iter()
    .map(from_row)
    .collect()
}

/// Changes waiting for delivery, and when the oldest was written.
pub async fn depth<'e, E: Executor<'e, Database = Any>>(
    ex: E,
) -> Result<(i64, Option<Millis>), Error> {
    let row = sqlx::query("SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM grant_outbox")
        .fetch_one(ex)
        .await?;
    Ok((row.try_get("n")?, row.try_get("oldest")?))
}

/// Removes the changes identity acknowledged, all of `ids` in one
/// statement.
pub async fn delivered<'e, E: Executor<'e, Database = Any>>(
    ex: E,
    backend: Backend,
    ids: &[&str],
) -> Result<(), Error> {
    let sql = match backend {
        Backend::Postgres => {
            "DELETE FROM grant_outbox WHERE id IN (SELECT json_array_elements_text($1::json))"
        }
        Backend::Sqlite => "DELETE FROM grant_outbox WHERE id IN (SELECT value FROM json_each($1))",
    };
    sqlx::query(sql)
        .bind(json_text_array(ids))
        .execute(ex)
        .await?;
    Ok(())
}

pub async fn failed<'e, E: Executor<'e, Database = Any>>(
    ex: E,
    id: &str,
    next_attempt_at: Millis,
    error: &str,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE grant_outbox SET attempts = attempts + 1, next_attempt_at = $2, last_error = $3 WHERE id = $1",
    )
    .bind(id)
    .bind(next_attempt_at)
    .bind(error)
    .execute(ex)
    .await?;
    Ok(())
}
