//! The `tenants` table.

use sovra_runtime::{clock::Millis, db::Tx, Error};
use sqlx::{Any, Executor};

use crate::domain::{
    profile::CompanyProfile,
    roles::{PartnerAuthorization, PartnerStatus, TenantKind},
};

#[derive(Debug, Clone)]
pub struct TenantRecord {
    pub id: String,
    pub kind: TenantKind,
    pub display_name: String,
    pub primary_domain: String,
    pub data_region: String,
    pub profile: CompanyProfile,
    pub authorizations: Vec<PartnerAuthorization>,
    pub partner_status: Option<PartnerStatus>,
    pub syndication: bool,
    pub version: i64,
    pub created_at: Millis,
    pub updated_at: Millis,
}

type Row = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    i64,
);

const COLUMNS: &str =
    "id, kind, display_name, primary_domain, data_region, profile, authorizations, \
                       partner_status, syndication, version, created_at, updated_at";

fn from_row(r: Row) -> Result<TenantRecord, Error> {
    let corrupt = |what: &str| Error::internal(format!("tenant {} has a bad stored {what}", r.0));
    Ok(TenantRecord {
        kind: TenantKind::from_stored(&r.1).ok_or_else(|| corrupt("kind"))?,
        display_name: r.2.clone(),
        primary_domain: r.3.clone(),
        data_region: r.4.clone(),
        profile: serde_json::from_str(&r.5).map_err(|_| corrupt("profile"))?,
        authorizations: r
            .6
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| PartnerAuthorization::from_stored(s).ok_or_else(|| corrupt("authorization")))
            .collect::<Result<_, _>>()?,
        partner_status: PartnerStatus::from_stored(&r.7),
        syndication: r.8 != 0,
        version: r.9,
        created_at: r.10,
        updated_at: r.11,
        id: r.0,
    })
}

fn authorizations_text(a: &[PartnerAuthorization]) -> String {
    a.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(",")
}

pub async fn get<'e, E: Executor<'e, Database = Any>>(
    ex: E,
    id: &str,
) -> Result<Option<TenantRecord>, Error> {
    let row: Option<Row> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM tenants WHERE id = $1"))
        .bind(id)
        .fetch_optional(ex)
        .await?;
    row.map(from_row).transpose()
}

/// Inserts a tenant; a taken primary domain is `ALREADY_EXISTS`.
pub async fn insert(tx: &mut Tx, t: &TenantRecord) -> Result<(), Error> {
    sqlx::query(&format!(
        "INSERT INTO tenants ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
    ))
    .bind(&t.id)
    .bind(t.kind.as_str())
    .bind(&t.display_name)
    .bind(&t.primary_domain)
    .bind(&t.data_region)
    .bind(serde_json::to_string(&t.profile).map_err(Error::internal)?)
    .bind(authorizations_text(&t.authorizations))
    .bind(t.partner_status.map(|s| s.as_str()).unwrap_or(""))
    .bind(t.syndication as i64)
    .bind(t.version)
    .bind(t.created_at)
    .bind(t.updated_at)
    .execute(&mut **tx)
    .await
    .map_err(|e| {
        if sovra_runtime::db::is_unique_violation(&e) {
            Error::already_exists(
                "DOMAIN_TAKEN",
                format!(
                    "primary_domain `{}` is already used by another tenant",
                    t.primary_domain
                ),
            )
            .with_violation("primary_domain", "is already used by another tenant")
        } else {
            e.into()
        }
    })?;
    Ok(())
}

/// Writes the mutable fields if the stored version is still `expected_version`;
/// returns false when someone else changed the tenant first.
pub async fn update(tx: &mut Tx, t: &TenantRecord, expected_version: i64) -> Result<bool, Error> {
    let r = sqlx::query(
        "UPDATE tenants SET display_name = $1, profile = $2, authorizations = $3, partner_status = $4, \
         version = $5, updated_at = $6 WHERE id = $7 AND version = $8",
    )
    .bind(&t.display_name)
    .bind(serde_json::to_string(&t.profile).map_err(Error::internal)?)
    .bind(authorizations_text(&t.authorizations))
    .bind(t.partner_status.map(|s| s.as_str()).unwrap_or(""))
    .bind(t.version)
    .bind(t.updated_at)
    .bind(&t.id)
    .bind(expected_version)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Takes the tenant's row lock for the rest of `tx` (PostgreSQL; SQLite
/// writers are already serialised), so invariant checks can't interleave.
pub async fn lock(tx: &mut Tx, id: &str) -> Result<(), Error> {
    sqlx::query("UPDATE tenants SET admin_lock = admin_lock + 1 WHERE id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
