//! The `users` table. Deleted users stay (restorable) until `deleted_at` is
//! older than the retention cutoff; past it they are invisible and purged.

use sovra_runtime::{clock::Millis, db::Tx, Error};
use sqlx::{Any, Executor};

use crate::domain::roles::{CompanyRole, SupportedAccess};

#[derive(Debug, Clone)]
pub struct UserRecord {
    pub id: String,
    pub tenant_id: String,
    pub upn: String,
    pub display_name: String,
    pub role: Option<CompanyRole>,
    pub access: SupportedAccess,
    pub blocked: bool,
    pub password_hash: String,
    pub must_change_password: bool,
    pub version: i64,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub deleted_at: Option<Millis>,
}

type Row = (
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    String,
    i64,
    i64,
    i64,
    i64,
    Option<i64>,
);

const COLUMNS: &str =
    "id, tenant_id, upn, display_name, company_role, supported_access, blocked, password_hash, \
                       must_change_password, version, created_at, updated_at, deleted_at";

fn from_row(r: Row) -> UserRecord {
    UserRecord {
        role: CompanyRole::from_stored(&r.4),
        access: SupportedAccess::from_stored(&r.5).unwrap_or(SupportedAccess::None),
        blocked: r.6 != 0,
        must_change_password: r.8 != 0,
        id: r.0,
        tenant_id: r.1,
        upn: r.2,
        display_name: r.3,
        password_hash: r.7,
        version: r.9,
        created_at: r.10,
        updated_at: r.11,
        deleted_at: r.12,
    }
}

/// A user of `tenant_id` that still exists (active, or deleted after `cutoff`).
pub async fn get<'e, E: Executor<'e, Database = Any>>(
    ex: E,
    tenant_id: &str,
    id: &str,
    cutoff: Millis,
) -> Result<Option<UserRecord>, Error> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM users WHERE id = $1 AND tenant_id = $2 AND (deleted_at IS NULL OR deleted_at > $3)"
    ))
    .bind(id)
    .bind(tenant_id)
    .bind(cutoff)
    .fetch_optional(ex)
    .await?;
    Ok(row.map(from_row))
}

/// Any user by id, whatever its tenant or state (the subject of a check).
pub async fn get_any<'e, E: Executor<'e, Database = Any>>(
    ex: E,
    id: &str,
) -> Result<Option<UserRecord>, Error> {
    let row: Option<Row> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM users WHERE id = $1"))
        .bind(id)
        .fetch_optional(ex)
        .await?;
    Ok(row.map(from_row))
}

/// An active user by principal name (for sign-in).
pub async fn get_active_by_upn<'e, E: Executor<'e, Database = Any>>(
    ex: E,
    upn: &str,
) -> Result<Option<UserRecord>, Error> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM users WHERE upn = $1 AND deleted_at IS NULL"
    ))
    .bind(upn)
    .fetch_optional(ex)
    .await?;
    Ok(row.map(from_row))
}

/// Inserts a user; a taken principal name is `ALREADY_EXISTS`.
pub async fn insert(tx: &mut Tx, u: &UserRecord) -> Result<(), Error> {
    sqlx::query(&format!(
        "INSERT INTO users ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    ))
    .bind(&u.id)
    .bind(&u.tenant_id)
    .bind(&u.upn)
    .bind(&u.display_name)
    .bind(u.role.map(|r| r.as_str()).unwrap_or(""))
    .bind(u.access.as_str())
    .bind(u.blocked as i64)
    .bind(&u.password_hash)
    .bind(u.must_change_password as i64)
    .bind(u.version)
    .bind(u.created_at)
    .bind(u.updated_at)
    .bind(u.deleted_at)
    .execute(&mut **tx)
    .await
    .map_err(|e| {
        if sovra_runtime::db::is_unique_violation(&e) {
            Error::already_exists(
                "USER_PRINCIPAL_NAME_TAKEN",
                format!("user_principal_name `{}` is already taken in this instance", u.upn),
            )
            .with_violation("user_principal_name", "is already taken")
        } else {
            e.into()
        }
    })?;
    Ok(())
}

/// Writes every mutable field if the stored version is still
/// `expected_version`; false when someone else changed the user first.
pub async fn update(tx: &mut Tx, u: &UserRecord, expected_version: i64) -> Result<bool, Error> {
    let r = sqlx::query(
        "UPDATE users SET display_name = $1, company_role = $2, supported_access = $3, blocked = $4, \
         password_hash = $5, must_change_password = $6, version = $7, updated_at = $8, deleted_at = $9 \
         WHERE id = $10 AND version = $11",
    )
    .bind(&u.display_name)
    .bind(u.role.map(|r| r.as_str()).unwrap_or(""))
    .bind(u.access.as_str())
    .bind(u.blocked as i64)
    .bind(&u.password_hash)
    .bind(u.must_change_password as i64)
    .bind(u.version)
    .bind(u.updated_at)
    .bind(u.deleted_at)
    .bind(&u.id)
    .bind(expected_version)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// One keyset page of a tenant's users ordered by principal name.
pub async fn list<'e, E: Executor<'e, Database = Any>>(
    ex: E,
    tenant_id: &str,
    after_upn: &str,
    limit: i64,
    show_deleted: bool,
    cutoff: Millis,
) -> Result<Vec<UserRecord>, Error> {
    let deleted = if show_deleted {
        "(deleted_at IS NULL OR deleted_at > $3)"
    } else {
        "(deleted_at IS NULL AND $3 = $3)"
    };
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM users WHERE tenant_id = $1 AND upn > $2 AND {deleted} ORDER BY upn LIMIT $4"
    ))
    .bind(tenant_id)
    .bind(after_upn)
    .bind(cutoff)
    .bind(limit)
    .fetch_all(ex)
    .await?;
    Ok(rows.into_iter().map(from_row).collect())
}

/// Active, unblocked global admins of a tenant other than `except_id`.
pub async fn other_active_global_admins(
    tx: &mut Tx,
    tenant_id: &str,
    except_id: &str,
) -> Result<i64, Error> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM users WHERE tenant_id = $1 AND id <> $2 AND company_role = 'GLOBAL_ADMIN' \
         AND deleted_at IS NULL AND blocked = 0",
    )
    .bind(tenant_id)
    .bind(except_id)
    .fetch_one(&mut **tx)
    .await?;
    Ok(n)
}

/// Frees a principal name held by a user deleted at or before `cutoff`.
pub async fn purge_upn(tx: &mut Tx, upn: &str, cutoff: Millis) -> Result<(), Error> {
    sqlx::query("DELETE FROM users WHERE upn = $1 AND deleted_at IS NOT NULL AND deleted_at <= $2")
        .bind(upn)
        .bind(cutoff)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Purges every user deleted at or before `cutoff`.
pub async fn purge_expired(tx: &mut Tx, cutoff: Millis) -> Result<u64, Error> {
    let r = sqlx::query("DELETE FROM users WHERE deleted_at IS NOT NULL AND deleted_at <= $1")
        .bind(cutoff)
        .execute(&mut **tx)
        .await?;
    Ok(r.rows_affected())
}

/// What an access decision needs about a user, in one indexed lookup.
#[derive(Debug, Clone)]
pub struct SubjectRow {
    pub tenant_id: String,
    pub tenant_kind: String,
    pub role: Option<CompanyRole>,
    pub access: SupportedAccess,
    pub blocked: bool,
    pub deleted: bool,
}

pub async fn subject<'e, E: Executor<'e, Database = Any>>(
    ex: E,
    user_id: &str,
) -> Result<Option<SubjectRow>, Error> {
    let row: Option<(String, String, String, String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT u.tenant_id, t.kind, u.company_role, u.supported_access, u.blocked, u.deleted_at \
         FROM users u JOIN tenants t ON t.id = u.tenant_id WHERE u.id = $1",
    )
    .bind(user_id)
    .fetch_optional(ex)
    .await?;
    Ok(row.map(|r| SubjectRow {
        tenant_id: r.0,
        tenant_kind: r.1,
        role: CompanyRole::from_stored(&r.2),
        access: SupportedAccess::from_stored(&r.3).unwrap_or(SupportedAccess::None),
        blocked: r.4 != 0,
        deleted: r.5.is_some(),
    }))
}
