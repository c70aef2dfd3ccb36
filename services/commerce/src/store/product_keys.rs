//! The `product_keys` table: imported keys by hash, claimed exactly once.

use sovra_runtime::{
    clock::Millis,
    db::{Db, Tx},
    lookup::Lookup,
    writes::Writes,
    Error,
};
use sqlx::Row;

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

/// The key, read outside any transaction (and on PostgreSQL together
/// with concurrent reads of others: see [`Lookup`]).
pub async fn get(db: &Db, key_hash: &str) -> Result<Option<StoredKey>, Error> {
    static KEY: Lookup = Lookup::new(
        "product_keys",
        "key_hash, key_hint, product_id, license_count, term_days, redeemed_at, redeemed_by, \
         subscription_id",
        &["key_hash"],
    );
    let Some(r) = KEY.get(db, &[key_hash]).await? else {
        return Ok(None);
    };
    Ok(Some(StoredKey {
        key_hash: r.try_get(0)?,
        key_hint: r.try_get(1)?,
        product_id: r.try_get(2)?,
        license_count: r.try_get::<i64, _>(3)? as u32,
        term_days: r.try_get::<i64, _>(4)? as u32,
        redeemed_at: r.try_get(5)?,
        redeemed_by: r.try_get(6)?,
        subscription_id: r.try_get(7)?,
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
