//! `commerce_links` (trial invitations and purchase offers) and
//! `redemptions` (one per link and customer).

use sovra_runtime::{
    clock::Millis,
    db::{Backend, Db, Tx},
    lookup::Lookup,
    pool::Pool,
    writes::{json_text_array, Insert, Value, Writes},
    Error,
};
use sqlx::{any::AnyRow, Any, Executor, Row};

use super::corrupt;
use crate::domain::states::LinkKind;

/// One product and its license count on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub product_id: String,
    pub license_count: u32,
}

#[derive(Debug, Clone)]
pub struct LinkRecord {
    pub id: String,
    pub kind: LinkKind,
    pub partner_tenant_id: String,
    pub lines: Vec<Line>,
    pub include_delegated_admin: bool,
    pub url: String,
    /// Counted from `redemptions` by the reads for display ([`get_counted`],
    /// [`page`]); None from [`get`], which a redemption reads.
    pub redemption_count: Option<i64>,
    pub created_by: String,
    pub created_at: Millis,
    pub expires_at: Millis,
    pub revoked_at: Option<Millis>,
}

const COLUMNS: &str = "id, kind, partner_tenant_id, lines, include_delegated_admin, url, \
                       created_by, created_at, expires_at, revoked_at";

/// [`COLUMNS`] and the link's redemptions, counted on the primary key's
/// index (`redemptions` is keyed by link first).
const COUNTED: &str = "id, kind, partner_tenant_id, lines, include_delegated_admin, url, \
                       created_by, created_at, expires_at, revoked_at, \
                       (SELECT COUNT(*) FROM redemptions r WHERE r.link_id = commerce_links.id) \
                       AS redemption_count";

fn encode_lines(lines: &[Line]) -> String {
    lines
        .iter()
        .map(|l| format!("{}={}", l.product_id, l.license_count))
        .collect::<Vec<_>>()
        .join(";")
}

fn decode_lines(id: &str, s: &str) -> Result<Vec<Line>, Error> {
    s.split(';')
        .map(|part| {
            let (p, n) = part
                .split_once('=')
                .ok_or_else(|| corrupt("commerce_links", id, "lines"))?;
            Ok(Line {
                product_id: p.to_owned(),
                license_count: n
                    .parse()
                    .map_err(|_| corrupt("commerce_links", id, "lines"))?,
            })
        })
        .collect()
}

fn link_from_row(r: &AnyRow, counted: bool) -> Result<LinkRecord, Error> {
    let id: String = r.try_get("id")?;
    let kind: String = r.try_get("kind")?;
    let lines: String = r.try_get("lines")?;
    Ok(LinkRecord {
        kind: LinkKind::from_stored(&kind).ok_or_else(|| corrupt("commerce_links", &id, "kind"))?,
        partner_tenant_id: r.try_get("partner_tenant_id")?,
        lines: decode_lines(&id, &lines)?,
        include_delegated_admin: r.try_get::<i64, _>("include_delegated_admin")? != 0,
        url: r.try_get("url")?,
        redemption_count: if counted {
            Some(r.try_get("redemption_count")?)
        } else {
            None
        },
        created_by: r.try_get("created_by")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        revoked_at: r.try_get("revoked_at")?,
        id,
    })
}

/// The row of a new link (its redemptions are counted, not stored).
pub fn row(l: &LinkRecord) -> Insert {
    Insert::new(
        "commerce_links",
        &[
            "id",
            "kind",
            "partner_tenant_id",
            "lines",
            "include_delegated_admin",
            "url",
            "created_by",
            "created_at",
            "expires_at",
        ],
    )
    .value(&l.id)
    .value(l.kind.as_str())
    .value(&l.partner_tenant_id)
    .value(encode_lines(&l.lines))
    .value(l.include_delegated_admin as i64)
    .value(&l.url)
    .value(&l.created_by)
    .value(l.created_at)
    .value(l.expires_at)
}

/// The link, without its redemption count (what a redemption reads),
/// read outside any transaction (on PostgreSQL together with concurrent
/// reads of others: see [`Lookup`]).
pub async fn get(db: &Db, id: &str) -> Result<Option<LinkRecord>, Error> {
    static LINK: Lookup = Lookup::new("commerce_links", COLUMNS, &["id"]);
    let row = LINK.get(db, &[id]).await?;
    row.as_ref().map(|r| link_from_row(r, false)).transpose()
}

/// The link with its redemption count, for display.
pub async fn get_counted<'e, E: Executor<'e, Database = Any>>(
    ex: E,
    id: &str,
) -> Result<Option<LinkRecord>, Error> {
    get_one(ex, id, true).await
}

async fn get_one<'e, E: Executor<'e, Database = Any>>(
    ex: E,
    id: &str,
    counted: bool,
) -> Result<Option<LinkRecord>, Error> {
    let columns = if counted { COUNTED } else { COLUMNS };
    let row = sqlx::query(&format!(
        "SELECT {columns} FROM commerce_links WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(ex)
    .await?;
    row.as_ref().map(|r| link_from_row(r, counted)).transpose()
}

/// A partner's links of one kind, newest first, after the keyset position.
pub async fn page(
    pool: &Pool,
    partner: &str,
    kind: LinkKind,
    before: Option<(Millis, String)>,
    limit: i64,
) -> Result<Vec<LinkRecord>, Error> {
    let (t, id) = before.unwrap_or((i64::MAX, String::new()));
    let rows = sqlx::query(&format!(
        "SELECT {COUNTED} FROM commerce_links WHERE partner_tenant_id = $1 AND kind = $2 \
         AND (created_at < $3 OR (created_at = $3 AND ($4 = '' OR id < $4))) \
         ORDER BY created_at DESC, id DESC LIMIT $5"
    ))
    .bind(partner)
    .bind(kind.as_str())
    .bind(t)
    .bind(id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(|r| link_from_row(r, true)).collect()
}

pub async fn revoke(tx: &mut Tx, id: &str, now: Millis) -> Result<(), Error> {
    sqlx::query("UPDATE commerce_links SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
        .bind(id)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The first result of redeeming `link` for `customer`, if it was (read
/// as [`get`] is).
pub async fn redemption(db: &Db, link: &str, customer: &str) -> Result<Option<String>, Error> {
    static REDEMPTION: Lookup = Lookup::new(
        "redemptions",
        "response",
        &["link_id", "customer_tenant_id"],
    );
    match REDEMPTION.get(db, &[link, customer]).await? {
        Some(r) => Ok(Some(r.try_get(0)?)),
        None => Ok(None),
    }
}

/// Records the customer's redemption of the link, guarding the
/// redemption's other writes: only when the customer has not redeemed it
/// yet, and has never had a trial of any of `products` (such a redemption
/// converts the trial or is refused: see the full path in `api::redeem`).
pub fn redemption_guard(
    backend: Backend,
    kind: LinkKind,
    link: &str,
    customer: &str,
    response: &str,
    now: Millis,
    products: &[&str],
) -> Writes {
    let mut values: Vec<Value> = vec![link.into(), customer.into(), response.into(), now.into()];
    let listed = if backend == Backend::Postgres {
        // The products as one value: every redemption of an offer has the
        // same shape, so concurrent ones can go as one statement.
        values.push(json_text_array(products).into());
        "SELECT json_array_elements_text($5::json)".to_owned()
    } else {
        values.extend(products.iter().map(|p| Value::from(*p)));
        (5..5 + products.len())
            .map(|n| format!("${n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let w = Writes::guarded(
        format!(
            "INSERT INTO redemptions (link_id, customer_tenant_id, response, created_at) \
             SELECT $1, $2, $3, $4 WHERE NOT EXISTS (SELECT 1 FROM subscriptions \
             WHERE customer_tenant_id = $2 AND source = 'TRIAL_INVITATION' AND product_id IN ({listed})) \
             ON CONFLICT (link_id, customer_tenant_id) DO NOTHING RETURNING link_id"
        ),
        values,
    );
    match kind {
        // Only offers: a trial redemption writes a trial, which the guard of
        // a later one in the same statement would not see. An offer's writes
        // change no other redemption's guard but a twin's (the same link and
        // customer): the redemption stored is one twin's, known by its
        // answer, and only that twin is told it wrote.
        LinkKind::Offer => w.batched(
            "INSERT INTO redemptions (link_id, customer_tenant_id, response, created_at) \
             SELECT i.g1, i.g2, i.g3, i.g4 FROM input i WHERE NOT EXISTS (SELECT 1 FROM subscriptions s \
             WHERE s.customer_tenant_id = i.g2 AND s.source = 'TRIAL_INVITATION' \
             AND s.product_id IN (SELECT json_array_elements_text(i.g5::json))) \
             ON CONFLICT (link_id, customer_tenant_id) DO NOTHING \
             RETURNING (SELECT k.n FROM input k WHERE k.g1 = redemptions.link_id \
             AND k.g2 = redemptions.customer_tenant_id AND k.g3 = redemptions.response LIMIT 1) AS n",
        ),
        LinkKind::Trial => w,
    }
}

/// Records a redemption. False when this link and
/// customer already had one (a concurrent redemption won).
pub async fn record_redemption(
    tx: &mut Tx,
    link: &str,
    customer: &str,
    response: &str,
    now: Millis,
) -> Result<bool, Error> {
    let r = sqlx::query(
        "INSERT INTO redemptions (link_id, customer_tenant_id, response, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (link_id, customer_tenant_id) DO NOTHING",
    )
    .bind(link)
    .bind(customer)
    .bind(response)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected() > 0)
}
