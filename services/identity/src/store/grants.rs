//! The `delegated_grants` table: which partner holds active delegated
//! administration of which customer, as last pushed by relationships.

use sovra_runtime::{clock::Millis, db::Tx, writes::Writes, Error};
use sqlx::{Any, Executor};

use crate::domain::roles::GrantState;

/// The state of `partner`'s grant on `customer`, if it ever had one.
pub async fn state<'e, E: Executor<'e, Database = Any>>(
    ex: E,
    partner: &str,
    customer: &str,
) -> Result<Option<GrantState>, Error> {
    let row: Option<(String,)> = sqlx::query_as(
        "SELECT state FROM delegated_grants WHERE customer_tenant_id = $1 AND partner_tenant_id = $2",
    )
    .bind(customer)
    .bind(partner)
    .fetch_optional(ex)
    .await?;
    Ok(row.and_then(|(s,)| GrantState::from_stored(&s)))
}

/// The outcome of applying a grant version.
#[derive(Debug, Clone, Copy)]
pub struct Applied {
    pub applied: bool,
    pub version: i64,
    pub state: GrantState,
}

/// The grant's upsert: writes and returns the row only when the stored
/// version is older (or there is none).
const UPSERT: &str = "INSERT INTO delegated_grants (customer_tenant_id, partner_tenant_id, relationship_id, state, version, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (customer_tenant_id, partner_tenant_id) DO UPDATE SET relationship_id = excluded.relationship_id, \
     state = excluded.state, version = excluded.version, updated_at = excluded.updated_at \
     WHERE delegated_grants.version < excluded.version \
     RETURNING state, version";

/// A grant version as relationships pushes it.
#[derive(Debug, Clone, Copy)]
pub struct Pushed<'a> {
    pub partner: &'a str,
    pub customer: &'a str,
    pub relationship_id: &'a str,
    pub state: GrantState,
    pub version: i64,
    pub now: Millis,
}

/// [`apply`] as the guard of writes that go with an applied version (its
/// audit record and stored answer): they are written only when the version
/// is newer than the stored one, on PostgreSQL in the same statement.
pub fn apply_guard(p: Pushed<'_>) -> Writes {
    Writes::guarded(
        UPSERT,
        vec![
            p.customer.into(),
            p.partner.into(),
            p.relationship_id.into(),
            p.state.as_str().into(),
            p.version.into(),
            p.now.into(),
        ],
    )
}

/// Upserts the grant unless the stored version is newer or equal. An
/// applied version answers from the upsert itself; only a refused one
/// reads what is stored.
pub async fn apply(tx: &mut Tx, p: Pushed<'_>) -> Result<Applied, Error> {
    let Pushed {
        partner,
        customer,
        relationship_id,
        state,
        version,
        now,
    } = p;
    let upserted: Option<(String, i64)> = sqlx::query_as(UPSERT)
        .bind(customer)
        .bind(partner)
        .bind(relationship_id)
        .bind(state.as_str())
        .bind(version)
        .bind(now)
        .fetch_optional(&mut **tx)
        .await?;
    let applied = upserted.is_some();
    let (stored_state, stored_version) = match upserted {
        Some(row) => row,
        None => {
            sqlx::query_as(
                "SELECT state, version FROM delegated_grants WHERE customer_tenant_id = $1 AND partner_tenant_id = $2",
            )
            .bind(customer)
            .bind(partner)
            .fetch_one(&mut **tx)
            .await?
        }
    };
    Ok(Applied {
        applied,
        version: stored_version,
        state: GrantState::from_stored(&stored_state).ok_or_else(|| {
            Error::internal(format!(
                "grant {partner}->{customer} has a bad stored state"
            ))
        })?,
    })
}
