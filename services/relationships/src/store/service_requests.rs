//! The `service_requests` table.

use sovra_runtime::{clock::Millis, db::Tx, Error};
use sqlx::{any::AnyRow, Any, Executor, Row};

use super::corrupt;
use crate::domain::states::ServiceRequestState;

#[derive(Debug, Clone)]
pub struct ServiceRequestRow {
    pub id: String,
    pub customer_tenant_id: String,
    pub title: String,
    pub description: String,
    pub state: ServiceRequestState,
    pub created_by_user_id: String,
    pub on_behalf_partner_tenant_id: Option<String>,
    pub resolution: String,
    pub version: i64,
    pub created_at: Millis,
    pub updated_at: Millis,
}

const COLUMNS: &str = "id, customer_tenant_id, title, description, state, created_by_user_id, \
                       on_behalf_partner_tenant_id, resolution, version, created_at, updated_at";

fn from_row(r: &AnyRow) -> Result<ServiceRequestRow, Error> {
    let id: String = r.try_get("id")?;
    let state: String = r.try_get("state")?;
    Ok(ServiceRequestRow {
        state: ServiceRequestState::from_stored(&state)
            .ok_or_else(|| corrupt("service_requests", &id, "state"))?,
        customer_tenant_id: r.try_get("customer_tenant_id")?,
        title: r.try_get("title")?,
        description: r.try_get("description")?,
        created_by_user_id: r.try_get("created_by_user_id")?,
        on_behalf_partner_tenant_id: r.try_get("on_behalf_partner_tenant_id")?,
        resolution: r.try_get("resolution")?,
        version: r.try_get("version")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        id,
    })
}

pub async fn insert(tx: &mut Tx, s: &ServiceRequestRow) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO service_requests (id, customer_tenant_id, title, description, state, \
         created_by_user_id, on_behalf_partner_tenant_id, resolution, version, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&s.id)
    .bind(&s.customer_tenant_id)
    .bind(&s.title)
    .bind(&s.description)
    .bind(s.state.as_str())
    .bind(&s.created_by_user_id)
    .bind(&s.on_behalf_partner_tenant_id)
    .bind(&s.resolution)
    .bind(s.version)
    .bind(s.created_at)
    .bind(s.updated_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The request, only if it belongs to `customer`.
pub async fn get<'e, E: Executor<'e, Database = Any>>(
    ex: E,
    customer: &str,
    id: &str,
) -> Result<Option<ServiceRequestRow>, Error> {
    let q =
        format!("SELECT {COLUMNS} FROM service_requests WHERE id = $1 AND customer_tenant_id = $2");
    sqlx::query(&q)
        .bind(id)
        .bind(customer)
        .fetch_optional(ex)
        .await?
        .map(|r| from_row(&r))
        .transpose()
}

/// Moves the request if it is still at `expected_version`; false when it
/// changed in between.
pub async fn update_state(
    tx: &mut Tx,
    s: &ServiceRequestRow,
    expected_version: i64,
) -> Result<bool, Error> {
    let r = sqlx::query(
        "UPDATE service_requests SET state = $2, resolution = $3, version = $4, updated_at = $5 \
         WHERE id = $1 AND version = $6",
    )
    .bind(&s.id)
    .bind(s.state.as_str())
    .bind(&s.resolution)
    .bind(s.version)
    .bind(s.updated_at)
    .bind(expected_version)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Newest first (ids are UUIDv7), before `before` (exclusive).
pub async fn list<'e, E: Executor<'e, Database = Any>>(
    ex: E,
    customer: &str,
    state: Option<ServiceRequestState>,
    before: Option<&str>,
    limit: i64,
) -> Result<Vec<ServiceRequestRow>, Error> {
    let q = format!(
        "SELECT {COLUMNS} FROM service_requests WHERE customer_tenant_id = $1 AND id < $2 \
         AND ($3 = '' OR state = $3) ORDER BY id DESC LIMIT $4"
    );
    sqlx::query(&q)
        .bind(customer)
        .bind(before.unwrap_or("g"))
        .bind(state.map(|s| s.as_str()).unwrap_or(""))
        .bind(limit)
        .fetch_all(ex)
        .await?
        .iter()
        .map(from_row)
        .collect()
}
