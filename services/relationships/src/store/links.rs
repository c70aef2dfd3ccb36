//! The `links` table: reseller requests and delegated-admin offers.

use sovra_runtime::{
    clock::Millis,
    db::Tx,
    writes::{Insert, Writes},
    Error,
};
use sqlx::{any::AnyRow, Any, Executor, Row};

use super::corrupt;
use crate::domain::states::LinkKind;

#[derive(Debug, Clone)]
pub struct LinkRecord {
    pub id: String,
    pub kind: LinkKind,
    pub partner_tenant_id: String,
    pub customer_tenant_id: Option<String>,
    pub url: String,
    pub email_subject: String,
    pub email_body: String,
    pub created_by: String,
    pub created_at: Millis,
    pub expires_at: Millis,
    pub revoked_at: Option<Millis>,
}

const COLUMNS: &str = "id, kind, partner_tenant_id, customer_tenant_id, url, email_subject, \
                       email_body, created_by, created_at, expires_at, revoked_at";

fn from_row(r: &AnyRow) -> Result<LinkRecord, Error> {
    let id: String = r.try_get("id")?;
    let kind: String = r.try_get("kind")?;
    Ok(LinkRecord {
        kind: LinkKind::from_stored(&kind).ok_or_else(|| corrupt("links", &id, "kind"))?,
        partner_tenant_id: r.try_get("partner_tenant_id")?,
        customer_tenant_id: r.try_get("customer_tenant_id")?,
        url: r.try_get("url")?,
        email_subject: r.try_get("email_subject")?,
        email_body: r.try_get("email_body")?,
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        revoked_at: r.try_get("revoked_at")?,
        id,
    })
}

/// The link's row, to write with others (see [`Writes`]).
pub fn row(l: &LinkRecord) -> Insert {
    Insert::new(
        "links",
        &[
            "id",
            "kind",
            "partner_tenant_id",
            "customer_tenant_id",
            "url",
            "email_subject",
            "email_body",
            "created_by",
            "created_at",
            "expires_at",
        ],
    )
    .value(&l.id)
    .value(l.kind.as_str())
    .value(&l.partner_tenant_id)
    .value(&l.customer_tenant_id)
    .value(&l.url)
    .value(&l.email_subject)
    .value(&l.email_body)
    .value(&l.created_by)
    .value(l.created_at)
    .value(l.expires_at)
}

pub async fn insert(tx: &mut Tx, l: &LinkRecord) -> Result<(), Error> {
    let mut w = Writes::new();
    w.insert(row(l));
    w.run(tx).await?;
    Ok(())
}

pub async fn get<'e, E: Executor<'e, Database = Any>>(
    ex: E,
    id: &str,
) -> Result<Option<LinkRecord>, Error> {
    let q = format!("SELECT {COLUMNS} FROM links WHERE id = $1");
    sqlx::query(&q)
        .bind(id)
        .fetch_optional(ex)
        .await?
        .map(|r| from_row(&r))
        .transpose()
}

/// Marks the link revoked (once).
pub async fn revoke(tx: &mut Tx, id: &str, now: Millis) -> Result<(), Error> {
    sqlx::query("UPDATE links SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
        .bind(id)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
