//! The `partner_customers` table: one row per partner and customer with the
//! relationships between them, and the paged, searchable customer list.

use sovra_runtime::{
    clock::Millis,
    db::{Backend, Db, Tx},
    json_rows,
    lookup::Lookup,
    pool::Pool,
    writes::Writes,
    Error,
};
use sqlx::{
    any::{AnyArguments, AnyRow},
    Any, Arguments, Executor, FromRow,
};

use super::corrupt;
use crate::domain::{
    search::{key, merge_page, Hit, KeyRange, Page, Position},
    states::{DelegatedState, RelationshipKind},
};

#[derive(Debug, Clone)]
pub struct CustomerRow {
    pub partner_tenant_id: String,
    pub customer_tenant_id: String,
    pub display_name: String,
    pub primary_domain: String,
    pub reseller_request_id: Option<String>,
    pub reseller_since: Option<Millis>,
    pub advisor: bool,
    pub partner_of_record: bool,
    pub delegated_state: Option<DelegatedState>,
    pub delegated_relationship_id: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    name_key: String,
    domain_key: String,
}

impl CustomerRow {
    /// The relationship kinds currently held.
    pub fn kinds(&self) -> Vec<RelationshipKind> {
        let mut v = Vec::new();
        if self.reseller_request_id.is_some() {
            v.push(RelationshipKind::Reseller);
        }
        if self.advisor {
            v.push(RelationshipKind::Advisor);
        }
        if self.delegated_state == Some(DelegatedState::Active) {
            v.push(RelationshipKind::DelegatedAdmin);
        }
        if self.partner_of_record {
            v.push(RelationshipKind::PartnerOfRecord);
        }
        v
    }
}

const COLUMNS: &str = "partner_tenant_id, customer_tenant_id, display_name, primary_domain, \
     name_key, domain_key, reseller_request_id, reseller_since, advisor, partner_of_record, \
     delegated_state, delegated_relationship_id, created_at, updated_at";

/// Rows holding at least one current relationship.
const ANY_RELATIONSHIP: &str = "(reseller_request_id IS NOT NULL OR advisor = 1 \
     OR partner_of_record = 1 OR delegated_state = 'ACTIVE')";

/// A row's columns, in [`COLUMNS`]' order.
type Stored = (
    String,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<Millis>,
    i64,
    i64,
    Option<String>,
    Option<String>,
    Millis,
    Millis,
);

/// A row of [`COLUMNS`], read by position.
fn from_row(r: &AnyRow) -> Result<CustomerRow, Error> {
    from_stored(Stored::from_row(r)?)
}

fn from_stored(s: Stored) -> Result<CustomerRow, Error> {
    let (
        partner_tenant_id,
        customer_tenant_id,
        display_name,
        primary_domain,
        name_key,
        domain_key,
        reseller_request_id,
        reseller_since,
        advisor,
        partner_of_record,
        delegated,
        delegated_relationship_id,
        created_at,
        updated_at,
    ) = s;
    let delegated_state =
        match delegated {
            None => None,
            Some(s) => Some(DelegatedState::from_stored(&s).ok_or_else(|| {
                corrupt("partner_customers", &customer_tenant_id, "delegated_state")
            })?),
        };
    Ok(CustomerRow {
        partner_tenant_id,
        customer_tenant_id,
        display_name,
        primary_domain,
        name_key,
        domain_key,
        reseller_request_id,
        reseller_since,
        advisor: advisor != 0,
        partner_of_record: partner_of_record != 0,
        delegated_state,
        delegated_relationship_id,
        created_at,
        updated_at,
    })
}

/// Makes sure the pair has a row, refreshing the customer's name and domain.
pub async fn touch(
    tx: &mut Tx,
    partner: &str,
    customer: &str,
    name: &str,
    domain: &str,
    now: Millis,
) -> Result<(), Error> {
    touch_then(tx, partner, customer, name, domain, now, Writes::new()).await
}

/// [`touch`], with `then` (other rows of the same change) in the same call.
pub async fn touch_then(
    tx: &mut Tx,
    partner: &str,
    customer: &str,
    name: &str,
    domain: &str,
    now: Millis,
    then: Writes,
) -> Result<(), Error> {
    const TOUCH: &str = "INSERT INTO partner_customers (partner_tenant_id, customer_tenant_id, display_name, \
         primary_domain, name_key, domain_key, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
         ON CONFLICT (partner_tenant_id, customer_tenant_id) DO UPDATE SET \
         display_name = excluded.display_name, primary_domain = excluded.primary_domain, \
         name_key = excluded.name_key, domain_key = excluded.domain_key, updated_at = excluded.updated_at";
    let backend = tx.backend();
    let (then, apart) = then.appended(backend, 8, false);
    let sql = match backend {
        _ if then.sql.is_empty() => std::borrow::Cow::Borrowed(TOUCH),
        Backend::Postgres => format!("WITH touch AS ({TOUCH}){} SELECT 1", then.sql).into(),
        Backend::Sqlite => format!("{TOUCH}{}", then.sql).into(),
    };
    let q = sqlx::query(&sql)
        .bind(partner)
        .bind(customer)
        .bind(name)
        .bind(domain)
        .bind(key(name))
        .bind(key(domain))
        .bind(now);
    then.bind(q).execute(&mut **tx).await?;
    if let Some(w) = apart {
        w.run(tx).await?;
    }
    Ok(())
}

/// Records the accepted reseller request, unless one already was. Returns
/// whether this call set it.
pub async fn set_reseller(
    tx: &mut Tx,
    partner: &str,
    customer: &str,
    request_id: &str,
    now: Millis,
) -> Result<bool, Error> {
    let r = sqlx::query(
        "UPDATE partner_customers SET reseller_request_id = $3, reseller_since = $4, updated_at = $4 \
         WHERE partner_tenant_id = $1 AND customer_tenant_id = $2 AND reseller_request_id IS NULL",
    )
    .bind(partner)
    .bind(customer)
    .bind(request_id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Marks the partner as the customer's advisor and, with `por`, partner of
/// record (a flag that stays once set: the partner is POR of at least one
/// of the customer's subscriptions).
pub async fn set_advisor(
    tx: &mut Tx,
    partner: &str,
    customer: &str,
    por: bool,
    now: Millis,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE partner_customers SET advisor = 1, \
         partner_of_record = CASE WHEN $3 = 1 THEN 1 ELSE partner_of_record END, updated_at = $4 \
         WHERE partner_tenant_id = $1 AND customer_tenant_id = $2",
    )
    .bind(partner)
    .bind(customer)
    .bind(por as i64)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The partner's row for the customer, read outside any transaction (and
/// on PostgreSQL together with concurrent reads of others: see
/// [`Lookup`]).
pub async fn read(db: &Db, partner: &str, customer: &str) -> Result<Option<CustomerRow>, Error> {
    static ROW: Lookup = Lookup::new(
        "partner_customers",
        COLUMNS,
        &["partner_tenant_id", "customer_tenant_id"],
    );
    ROW.get(db, &[partner, customer])
        .await?
        .map(|r| from_row(&r))
        .transpose()
}

/// The partner's row for the customer, in a transaction.
pub async fn get<'e, E: Executor<'e, Database = Any>>(
    ex: E,
    partner: &str,
    customer: &str,
) -> Result<Option<CustomerRow>, Error> {
    let q = format!(
        "SELECT {COLUMNS} FROM partner_customers WHERE partner_tenant_id = $1 AND customer_tenant_id = $2"
    );
    sqlx::query(&q)
        .bind(partner)
        .bind(customer)
        .fetch_optional(ex)
        .await?
        .map(|r| from_row(&r))
        .transpose()
}

/// Every partner of a customer with a current relationship (a customer has few).
pub async fn partners_of(pool: &Pool, customer: &str) -> Result<Vec<CustomerRow>, Error> {
    let q = format!(
        "SELECT {COLUMNS} FROM partner_customers WHERE customer_tenant_id = $1 AND {ANY_RELATIONSHIP} \
         ORDER BY partner_tenant_id LIMIT 1000"
    );
    sqlx::query(&q)
        .bind(customer)
        .fetch_all(pool)
        .await?
        .iter()
        .map(from_row)
        .collect()
}

/// What to list.
#[derive(Debug, Clone)]
pub struct CustomerQuery<'a> {
    pub partner: &'a str,
    /// Name or domain prefix; empty for all.
    pub query: &'a str,
    pub relationship: Option<RelationshipKind>,
    pub after: Option<Position>,
    pub limit: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Branch {
    Name,
    Domain,
}

/// One page of a partner's customers: two index range scans (by name key,
/// and by domain key for customers whose name does not match) merged.
pub async fn page(db: &Db, q: &CustomerQuery<'_>) -> Result<Page<CustomerRow>, Error> {
    let all = q.query.trim().is_empty();
    let range = if all {
        KeyRange::all()
    } else {
        KeyRange::prefix(q.query)
    };
    let (names, domains) = if all {
        // Every customer matches by name: the domain branch would add nothing.
        (branch(db, Branch::Name, &range, q).await?, Vec::new())
    } else {
        // Both branches at once (on PostgreSQL two round trips overlap);
        // merge_page bounds the page by whichever branch filled up first.
        let (names, domains) = tokio::join!(
            branch(db, Branch::Name, &range, q),
            branch(db, Branch::Domain, &range, q)
        );
        (names?, domains?)
    };
    Ok(merge_page(names, domains, q.limit))
}

async fn branch(
    db: &Db,
    b: Branch,
    range: &KeyRange,
    q: &CustomerQuery<'_>,
) -> Result<Vec<Hit<CustomerRow>>, Error> {
    let k = if b == Branch::Name {
        "name_key"
    } else {
        "domain_key"
    };
    let filter = match q.relationship {
        None => ANY_RELATIONSHIP,
        Some(RelationshipKind::Reseller) => "reseller_request_id IS NOT NULL",
        Some(RelationshipKind::Advisor) => "advisor = 1",
        Some(RelationshipKind::DelegatedAdmin) => "delegated_state = 'ACTIVE'",
        Some(RelationshipKind::PartnerOfRecord) => "partner_of_record = 1",
    };
    // One lower bound, (key, id) > the page token's position or ≥ the range's
    // start, whichever is later: with a single bound on the key column the
    // planner seeks the index straight to it, so a page costs the same at
    // any depth (two bounds let SQLite start from the range's start and
    // skip every earlier page).
    let start = (range.lo.clone(), String::new());
    let (from_key, from_id) = match q.after.clone() {
        Some(after) if after > start => after,
        _ => start,
    };
    let mut sql = format!(
        "SELECT {COLUMNS} FROM partner_customers WHERE partner_tenant_id = $1 \
         AND {k} >= $2 AND {k} < $3 AND ({k} > $2 OR customer_tenant_id > $4) AND {filter}"
    );
    let mut binds = vec![q.partner, &from_key, &range.hi, &from_id];
    if b == Branch::Domain {
        // Customers whose name matches come from the name branch.
        sql.push_str(" AND NOT (name_key >= $5 AND name_key < $3)");
        binds.push(&range.lo);
    }
    let order = format!("{k}, customer_tenant_id");
    sql.push_str(&format!(" ORDER BY {order} LIMIT {}", q.limit + 1));
    let mut args = AnyArguments::default();
    for v in binds {
        args.add(v).map_err(Error::internal)?;
    }
    // On SQLite the page comes as one row (see json_rows): row by row, a
    // page of 50 cost four times a page of one.
    json_rows::fetch::<Stored>(db, COLUMNS, &order, &sql, args)
        .await?
        .into_iter()
        .map(|stored| {
            let row = from_stored(stored)?;
            Ok(Hit {
                key: if b == Branch::Name {
                    row.name_key.clone()
                } else {
                    row.domain_key.clone()
                },
                id: row.customer_tenant_id.clone(),
                item: row,
            })
        })
        .collect()
}
