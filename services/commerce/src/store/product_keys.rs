//! The `product_keys` table: imported keys by hash, claimed exactly once.

use sovra_runtime::{clock::Millis, db::Tx, writes::Writes, Error};
use sqlx::{Any, Executor};

/// An imported key, as stored.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub key_hash: String,
    pub key_hint: String,
    pub product_id: String,
    pub license_count: u32,
    pub term_days: u32,
    pub redeemed_at: Option<Millis>,
    /// The idempotency scope and request id of the redemption that claimed it.
    pub redeemed_by: Option<String>,
    pub subscription_id: Option<String>,
}

/// Imports one key; false when its hash is already there.
pub async fn insert(tx: &mut Tx, k: &StoredKey, now: Millis) -> Result<bool, Error> {
    let r = sqlx::query(
        "INSERT INTO product_keys (key_hash, key_hint, product_id, license_count, term_days, imported_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (key_hash) DO NOTHING",
    )
    .bind(&k.key_hash)
    .bind(&k.key_hint)
    .bind(&k.product_id)
    .bind(k.license_count as i64)
    .bind(k.term_days as i64)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn get<'e, E: Executor<'e, Database = Any>>(
    ex: E,
    key_hash: &str,
) -> Result<Option<StoredKey>, Error> {
    #[allow(clippy::type_complexity)]
    let row: Option<(String, String, String, i64, i64, Option<i64>, Option<String>, Option<String>)> =
        sqlx::query_as(
            "SELECT key_hash, key_hint, product_id, license_count, term_days, redeemed_at, redeemed_by, \
             subscription_id FROM product_keys WHERE key_hash = $1",
        )
        .bind(key_hash)
        .fetch_optional(ex)
        .await?;
    Ok(row.map(|r| StoredKey {
        key_hash: r.0,
        key_hint: r.1,
        product_id: r.2,
        license_count: r.3 as u32,
        term_days: r.4 as u32,
        redeemed_at: r.5,
        redeemed_by: r.6,
        subscription_id: r.7,
    }))
}

/// Claims an unredeemed key for one redemption: the exactly-once step,
/// guarding the redemption's other writes. A single conditional UPDATE, so
/// of any number of concurrent claims one wins and the rest see no row
/// (and write nothing). Concurrent claims in this process may go to
/// PostgreSQL as one statement: the same `UPDATE` over all of them, where
/// each key is updated once, so only one claim of a key can win there too.
pub fn claim(
    key_hash: &str,
    redeemed_by: &str,
    partner: &str,
    subscription_id: &str,
    now: Millis,
) -> Writes {
    Writes::guarded(
        "UPDATE product_keys SET redeemed_at = $2, redeemed_by = $3, partner_tenant_id = $4, \
         subscription_id = $5 WHERE key_hash = $1 AND redeemed_at IS NULL RETURNING key_hash",
        vec![
            key_hash.into(),
            now.into(),
            redeemed_by.into(),
            partner.into(),
            subscription_id.into(),
        ],
    )
    .batched(
        "UPDATE product_keys k SET redeemed_at = i.g2, redeemed_by = i.g3, partner_tenant_id = i.g4, \
         subscription_id = i.g5 FROM input i WHERE k.key_hash = i.g1 AND k.redeemed_at IS NULL \
         RETURNING i.n",
    )
}
