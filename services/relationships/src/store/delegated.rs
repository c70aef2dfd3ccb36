//! The `delegated_admin_relationships` table, the per-customer lock that
//! serialises changes to it, and the grant versions identity expects.

use sovra_runtime::{
    clock::Millis,
    db::{unique_violation_table, Backend, Db, Tx},
    idempotency::write_error,
    writes::{Appended, Insert, Writes},
    Error,
};
use sqlx::{
    any::{AnyArguments, AnyRow},
    query::Query,
    Any, Execute, Executor, Row,
};

use super::{
    corrupt,
    outbox::{self, GrantChange},
};
use crate::domain::{search::key, states::DelegatedState};

#[derive(Debug, Clone)]
pub struct Relationship {
    pub id: String,
    pub partner_tenant_id: String,
    pub customer_tenant_id: String,
    pub state: DelegatedState,
    pub offer_id: String,
    pub reassigned_to: Option<String>,
    pub version: i64,
    pub created_at: Millis,
    pub activated_at: Option<Millis>,
    pub ended_at: Option<Millis>,
    pub updated_at: Millis,
}

impl Relationship {
    /// A new PENDING relationship from `offer_id` between the two, at version 1.
    pub fn pending(partner: &str, customer: &str, offer_id: &str, now: Millis) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            partner_tenant_id: partner.to_owned(),
            customer_tenant_id: customer.to_owned(),
            state: DelegatedState::Pending,
            offer_id: offer_id.to_owned(),
            reassigned_to: None,
            version: 1,
            created_at: now,
            activated_at: None,
            ended_at: None,
            updated_at: now,
        }
    }
}

const COLUMNS: &str = "id, partner_tenant_id, customer_tenant_id, state, offer_id, reassigned_to, \
                       version, created_at, activated_at, ended_at, updated_at";

fn from_row(r: &AnyRow) -> Result<Relationship, Error> {
    let id: String = r.try_get("id")?;
    let state: String = r.try_get("state")?;
    Ok(Relationship {
        state: DelegatedState::from_stored(&state)
            .ok_or_else(|| corrupt("delegated_admin_relationships", &id, "state"))?,
        partner_tenant_id: r.try_get("partner_tenant_id")?,
        customer_tenant_id: r.try_get("customer_tenant_id")?,
        offer_id: r.try_get("offer_id")?,
        reassigned_to: r.try_get("reassigned_to")?,
        version: r.try_get("version")?,
        created_at: r.try_get("created_at")?,
        activated_at: r.try_get("activated_at")?,
        ended_at: r.try_get("ended_at")?,
        updated_at: r.try_get("updated_at")?,
        id,
    })
}

/// Takes the customer's row lock for the rest of the transaction, so
/// concurrent acceptances, removals and reassignments of one customer run
/// one after another. On SQLite there is nothing to take: its write
/// transactions run one at a time (one writer, held by a transaction from
/// its start to its commit).
pub async fn lock_customer(tx: &mut Tx, customer: &str) -> Result<(), Error> {
    if tx.backend() == Backend::Sqlite {
        return Ok(());
    }
    sqlx::query(LOCK).bind(customer).execute(&mut **tx).await?;
    Ok(())
}

/// Records `rel`'s new state and queues its grant change at `queued_at`,
/// in `tx`: the relationship row, the partner's customer row, the pair's
/// next grant version and the outbox row, in one call (on PostgreSQL one
/// statement; on SQLite four statements sent together, each call there
/// being a hand-off to the connection's worker thread). `then` (the
/// change's audit record and stored answer) goes in the same call.
pub async fn transition(
    tx: &mut Tx,
    rel: &Relationship,
    queued_at: Millis,
    then: Writes,
) -> Result<GrantChange, Error> {
    let (partner, customer) = (&rel.partner_tenant_id, &rel.customer_tenant_id);
    let backend = tx.backend();
    let (then, apart) = then.appended(backend, TRANSITION_PARAMS + 1, false);
    let sql = match backend {
        Backend::Postgres => format!("{TRANSITION_WITH}{} {TRANSITION_LAST}", then.sql),
        Backend::Sqlite => format!("{TRANSITION_SQLITE}{}", then.sql),
    };
    let mut change = GrantChange::new(partner, customer, &rel.id, rel.state, 0);
    let rows = then
        .bind(bind_transition(&sql, rel, &change, queued_at))
        .fetch_all(&mut **tx)
        .await
        .map_err(write_error)?;
    let row = rows
        .first()
        .ok_or_else(|| Error::internal(format!("grant change {} was not queued", change.id)))?;
    change.version = row.try_get(0)?;
    if let Some(w) = apart {
        w.run(tx).await.map_err(write_error)?;
    }
    Ok(change)
}

/// [`transition`] as a transaction of its own, in one round trip: on
/// PostgreSQL one statement, which takes the customer's lock first; on
/// SQLite one call of several statements (its one writer is the lock).
/// Moves `rel` only if it is still ACTIVE at `from_version`, and writes
/// `then` only if it did. None when it was not (nothing is written but, on
/// PostgreSQL, the lock's count). The statements run once the lock (or the
/// writer) is held, and a row changed meanwhile is checked as it is now, so
/// a change committed while it waited is never overwritten.
pub async fn transition_alone(
    db: &Db,
    rel: &Relationship,
    from_version: i64,
    queued_at: Millis,
    then: Writes,
) -> Result<Option<GrantChange>, Error> {
    let (partner, customer) = (&rel.partner_tenant_id, &rel.customer_tenant_id);
    let backend = db.backend();
    let then = appended_to_guard(then, backend, TRANSITION_PARAMS + 2, true, "a removal")?;
    let sql = match backend {
        Backend::Postgres => format!("{TRANSITION_GUARDED}{} SELECT version FROM guard", then.sql),
        Backend::Sqlite => format!(
            "{TRANSITION_GUARDED_SQLITE}{}; {BOOK_QUEUED_SQLITE}",
            then.sql
        ),
    };
    let mut change = GrantChange::new(partner, customer, &rel.id, rel.state, 0);
    let q = then.bind(bind_transition(&sql, rel, &change, queued_at).bind(from_version));
    let Some(row) = fetch_whole(db, q)
        .await
        .map_err(write_error)?
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    change.version = row.try_get(0)?;
    Ok(Some(change))
}

/// Runs `q` as a transaction of its own ([`Db::run_whole`]; on PostgreSQL
/// the one statement it is) and returns its rows.
async fn fetch_whole<'q>(
    db: &Db,
    mut q: Query<'q, Any, AnyArguments<'q>>,
) -> Result<Vec<AnyRow>, sqlx::Error> {
    if db.backend() == Backend::Postgres {
        return q.fetch_all(db.write()).await;
    }
    let args = q
        .take_arguments()
        .map_err(sqlx::Error::Encode)?
        .unwrap_or_default();
    db.run_whole(q.sql(), args).await
}

/// A new relationship `rel`, ACTIVE at version 1, as a transaction of its
/// own in one round trip (on PostgreSQL one statement, which takes the
/// customer's lock first; on SQLite one call of several statements): the
/// partner's customer row (`named`: the customer's display name and
/// primary domain) booked to it, the relationship, the pair's next grant
/// version, the outbox row and `then`. None when another relationship of
/// the customer became ACTIVE first (the one-ACTIVE index refuses it;
/// nothing is written).
pub async fn activate_alone(
    db: &Db,
    rel: &Relationship,
    named: (&str, &str),
    queued_at: Millis,
    then: Writes,
) -> Result<Option<GrantChange>, Error> {
    let (partner, customer) = (&rel.partner_tenant_id, &rel.customer_tenant_id);
    let backend = db.backend();
    // On SQLite a refusal is an error, which rolls the whole call back:
    // nothing after the relationship needs a guard.
    let guarded = backend == Backend::Postgres;
    let then = appended_to_guard(then, backend, ACTIVATE_PARAMS + 1, guarded, "an acceptance")?;
    let sql = match backend {
        Backend::Postgres => format!("{ACTIVATE_ALONE}{} SELECT version FROM guard", then.sql),
        Backend::Sqlite => format!("{ACTIVATE_SQLITE}{}", then.sql),
    };
    let (name, domain) = named;
    let mut change = GrantChange::new(partner, customer, &rel.id, rel.state, 0);
    let q = bind_transition(&sql, rel, &change, queued_at)
        .bind(&rel.offer_id)
        .bind(rel.created_at)
        .bind(name)
        .bind(domain)
        .bind(key(name))
        .bind(key(domain));
    let rows = match fetch_whole(db, then.bind(q)).await {
        Ok(rows) => rows,
        Err(e) if unique_violation_table(&e) == Some("delegated_admin_relationships") => {
            return Ok(None)
        }
        Err(e) => return Err(write_error(e)),
    };
    let row = rows
        .first()
        .ok_or_else(|| Error::internal(format!("grant change {} was not queued", change.id)))?;
    change.version = row.try_get(0)?;
    Ok(Some(change))
}

pub async fn active_for_customer<'e, E: Executor<'e, Database = Any>>(
    ex: E,
    customer: &str,
) -> Result<Option<Relationship>, Error> {
    let q = format!(
        "SELECT {COLUMNS} FROM delegated_admin_relationships WHERE customer_tenant_id = $1 AND state = 'ACTIVE'"
    );
    sqlx::query(&q)
        .bind(customer)
        .fetch_optional(ex)
        .await?
        .map(|r| from_row(&r))
        .transpose()
}

/// The customer's ACTIVE relationship and the PENDING one `offer_id` made
/// to it, each if there is one, in one call (each arm an index lookup).
pub async fn held_and_pending<'e, E: Executor<'e, Database = Any>>(
    ex: E,
    customer: &str,
    offer_id: &str,
) -> Result<(Option<Relationship>, Option<Relationship>), Error> {
    let q = format!(
        "SELECT {COLUMNS} FROM delegated_admin_relationships WHERE customer_tenant_id = $1 AND state = 'ACTIVE' \
         UNION ALL SELECT {COLUMNS} FROM delegated_admin_relationships \
         WHERE offer_id = $2 AND customer_tenant_id = $1 AND state = 'PENDING'"
    );
    let (mut held, mut pending) = (None, None);
    for r in sqlx::query(&q)
        .bind(customer)
        .bind(offer_id)
        .fetch_all(ex)
        .await?
    {
        let rel = from_row(&r)?;
        match rel.state {
            DelegatedState::Active => held = Some(rel),
            _ => pending = Some(rel),
        }
    }
    Ok((held, pending))
}

/// Relationship `id` of `customer`, after taking the customer's lock (see
/// [`lock_customer`]); on PostgreSQL in one statement. The row is read
/// `FOR UPDATE`, so a change committed while the lock was awaited is the
/// one read.
pub async fn lock_and_get(
    tx: &mut Tx,
    customer: &str,
    id: &str,
) -> Result<Option<Relationship>, Error> {
    if tx.backend() == Backend::Sqlite {
        return get(&mut **tx, id).await;
    }
    let q = format!(
        "WITH lock AS ({LOCK} RETURNING n) SELECT {COLUMNS} FROM delegated_admin_relationships \
         WHERE id = $2 AND EXISTS (SELECT 1 FROM lock) FOR UPDATE OF delegated_admin_relationships"
    );
    sqlx::query(&q)
        .bind(customer)
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| from_row(&r))
        .transpose()
}

pub async fn get<'e, E: Executor<'e, Database = Any>>(
    ex: E,
    id: &str,
) -> Result<Option<Relationship>, Error> {
    let q = format!("SELECT {COLUMNS} FROM delegated_admin_relationships WHERE id = $1");
    sqlx::query(&q)
        .bind(id)
        .fetch_optional(ex)
        .await?
        .map(|r| from_row(&r))
        .transpose()
}

/// The relationship's row, to write with others (see [`Writes`]).
pub fn row(r: &Relationship) -> Insert {
    Insert::new(
        "delegated_admin_relationships",
        &[
            "id",
            "partner_tenant_id",
            "customer_tenant_id",
            "state",
            "offer_id",
            "reassigned_to",
            "version",
            "created_at",
            "activated_at",
            "ended_at",
            "updated_at",
        ],
    )
    .value(&r.id)
    .value(&r.partner_tenant_id)
    .value(&r.customer_tenant_id)
    .value(r.state.as_str())
    .value(&r.offer_id)
    .value(&r.reassigned_to)
    .value(r.version)
    .value(r.created_at)
    .value(r.activated_at)
    .value(r.ended_at)
    .value(r.updated_at)
}

pub async fn insert(tx: &mut Tx, r: &Relationship) -> Result<(), Error> {
    let mut w = Writes::new();
    w.insert(row(r));
    w.run(tx).await?;
    Ok(())
}

/// The customer's lock: a row whose update a concurrent change of the
/// same customer waits for (the customer's id is `$customer`).
macro_rules! lock_sql {
    ($customer:literal) => {
        concat!(
            "INSERT INTO customer_locks (customer_tenant_id, n) VALUES (",
            $customer,
            ", 1) ON CONFLICT (customer_tenant_id) DO UPDATE SET n = customer_locks.n + 1"
        )
    };
}

/// The customer's lock (`$1`).
const LOCK: &str = lock_sql!("$1");

/// Writes back a changed relationship (state, times, reassignment,
/// version): `$1` … `$7`, bound by [`bind_update`].
macro_rules! update_sql {
    () => {
        "UPDATE delegated_admin_relationships SET state = $2, reassigned_to = $3, version = $4, \
         activated_at = $5, ended_at = $6, updated_at = $7 WHERE id = $1"
    };
}

/// The partner's customer row of a transition (`$1`, `$2`, `$7` as in
/// [`update_sql`]; partner `$8`, customer `$9`).
macro_rules! book_sql {
    () => {
        "UPDATE partner_customers SET delegated_state = $2, delegated_relationship_id = $1, \
         updated_at = $7 WHERE partner_tenant_id = $8 AND customer_tenant_id = $9"
    };
}

/// The pair's next grant version (partner `$8`, customer `$9`), its first
/// row from `$source` (`VALUES ($9, $8, 1)`, or a `SELECT` of it).
macro_rules! grant_version_sql {
    ($source:literal) => {
        concat!(
            "INSERT INTO grant_versions (customer_tenant_id, partner_tenant_id, version) ",
            $source,
            " ON CONFLICT (customer_tenant_id, partner_tenant_id) \
             DO UPDATE SET version = grant_versions.version + 1"
        )
    };
}

/// The partner's customer row of an acceptance, booked to the relationship,
/// from `$source` (partner, customer, name, domain, their search keys,
/// created, updated, the relationship's state and id).
macro_rules! book_new_sql {
    ($source:literal) => {
        concat!(
            "INSERT INTO partner_customers (partner_tenant_id, customer_tenant_id, display_name, \
             primary_domain, name_key, domain_key, created_at, updated_at, delegated_state, \
             delegated_relationship_id) ",
            $source,
            " ON CONFLICT (partner_tenant_id, customer_tenant_id) DO UPDATE SET \
             display_name = excluded.display_name, primary_domain = excluded.primary_domain, \
             name_key = excluded.name_key, domain_key = excluded.domain_key, \
             updated_at = excluded.updated_at, delegated_state = excluded.delegated_state, \
             delegated_relationship_id = excluded.delegated_relationship_id"
        )
    };
}

/// A new relationship's row, from `$source` (its columns in order).
macro_rules! new_relationship_sql {
    ($source:literal) => {
        concat!(
            "INSERT INTO delegated_admin_relationships (id, partner_tenant_id, customer_tenant_id, \
             state, offer_id, reassigned_to, version, created_at, activated_at, ended_at, updated_at) ",
            $source
        )
    };
}

/// The queued change `$11` at `$10`, due at `$12`, taking `version` from
/// the row source that follows it.
macro_rules! outbox_sql {
    () => {
        "INSERT INTO grant_outbox (id, partner_tenant_id, customer_tenant_id, relationship_id, state, \
         version, created_at, attempts, next_attempt_at, last_error) \
         SELECT $11, $8, $9, $1, $2, version, $10, 0, $12, ''"
    };
}

/// What [`transition`] writes on PostgreSQL, as one statement: the
/// relationship (`$1` … `$7`), the partner's customer row (`$8`, `$9`), the
/// pair's next grant version and the change `$11` queued at `$10`, due at
/// `$12`.
const TRANSITION_WITH: &str = concat!(
    "WITH rel AS (",
    update_sql!(),
    "), book AS (",
    book_sql!(),
    "), grant_version AS (",
    grant_version_sql!("VALUES ($9, $8, 1)"),
    " RETURNING version)"
);

/// The statement [`TRANSITION_WITH`] leads to: the outbox row, which
/// returns the grant version.
const TRANSITION_LAST: &str = concat!(outbox_sql!(), " FROM grant_version RETURNING version");

/// [`TRANSITION_WITH`] for [`transition_alone`], its outbox row named
/// `guard`: the customer's lock (`$9`) first, then the relationship only
/// if still ACTIVE at version `$13`, and the rest only if it moved.
const TRANSITION_GUARDED: &str = concat!(
    "WITH lock AS (",
    lock_sql!("$9"),
    " RETURNING n), rel AS (",
    update_sql!(),
    " AND customer_tenant_id = $9 AND state = 'ACTIVE' AND version = $13 \
     AND EXISTS (SELECT 1 FROM lock) RETURNING id), book AS (",
    book_sql!(),
    " AND EXISTS (SELECT 1 FROM rel)), grant_version AS (",
    grant_version_sql!("SELECT $9, $8, 1 FROM rel"),
    " RETURNING version), guard AS (",
    outbox_sql!(),
    " FROM grant_version RETURNING version)"
);

/// [`activate_alone`]'s statement: the customer's lock (`$9`), then the
/// partner's customer row booked to the relationship (name `$15`, domain
/// `$16`, their search keys `$17`, `$18`), the relationship (`$1` … `$7`
/// as in [`update_sql`], offer `$13`, created `$14`), the pair's next grant
/// version and the outbox row, named `guard`.
const ACTIVATE_ALONE: &str = concat!(
    "WITH lock AS (",
    lock_sql!("$9"),
    " RETURNING n), touch AS (",
    book_new_sql!("SELECT $8, $9, $15, $16, $17, $18, $7, $7, $2, $1 FROM lock"),
    "), rel AS (",
    new_relationship_sql!("SELECT $1, $8, $9, $2, $13, $3, $4, $14, $5, $6, $7 FROM lock"),
    " RETURNING id), grant_version AS (",
    grant_version_sql!("SELECT $9, $8, 1 FROM rel"),
    " RETURNING version), guard AS (",
    outbox_sql!(),
    " FROM grant_version RETURNING version)"
);

/// How many parameters [`ACTIVATE_ALONE`] binds.
const ACTIVATE_PARAMS: usize = 18;

/// How many parameters a transition binds.
const TRANSITION_PARAMS: usize = 12;

/// [`TRANSITION_WITH`] and [`TRANSITION_LAST`] on SQLite, which has no data-modifying `WITH`: the same
/// statements and parameters, four statements in one call.
const TRANSITION_SQLITE: &str = concat!(
    update_sql!(),
    "; ",
    book_sql!(),
    "; ",
    grant_version_sql!("VALUES ($9, $8, 1)"),
    "; ",
    outbox_sql!(),
    " FROM grant_versions WHERE customer_tenant_id = $9 AND partner_tenant_id = $8 RETURNING version"
);

/// [`TRANSITION_GUARDED`] on SQLite, which has no data-modifying `WITH`:
/// the relationship moved only if still ACTIVE at version `$13`, then the
/// pair's next grant version and the outbox row (which returns it), each
/// only if the statement before it changed a row (`changes()` counts the
/// rows the last statement changed), so only if the relationship moved.
/// The partner's customer row follows the rows appended after it
/// ([`BOOK_QUEUED_SQLITE`]).
const TRANSITION_GUARDED_SQLITE: &str = concat!(
    update_sql!(),
    " AND customer_tenant_id = $9 AND state = 'ACTIVE' AND version = $13; ",
    grant_version_sql!("SELECT $9, $8, 1 WHERE changes() = 1"),
    "; ",
    outbox_sql!(),
    " FROM grant_versions WHERE customer_tenant_id = $9 AND partner_tenant_id = $8 \
     AND changes() = 1 RETURNING version"
);

/// The partner's customer row of a transition on SQLite, written only if
/// the change `$11` was queued: it may change no row, so nothing is chained
/// after it.
const BOOK_QUEUED_SQLITE: &str = concat!(
    book_sql!(),
    " AND EXISTS (SELECT 1 FROM grant_outbox WHERE id = $11)"
);

/// [`ACTIVATE_ALONE`] on SQLite: the same rows and parameters, five
/// statements in one call. The one-ACTIVE index refusing the relationship
/// fails the call, which rolls it all back.
const ACTIVATE_SQLITE: &str = concat!(
    book_new_sql!("VALUES ($8, $9, $15, $16, $17, $18, $7, $7, $2, $1)"),
    "; ",
    new_relationship_sql!("VALUES ($1, $8, $9, $2, $13, $3, $4, $14, $5, $6, $7)"),
    "; ",
    grant_version_sql!("VALUES ($9, $8, 1)"),
    "; ",
    outbox_sql!(),
    " FROM grant_versions WHERE customer_tenant_id = $9 AND partner_tenant_id = $8 RETURNING version"
);

/// Binds `r` as [`update_sql`]'s `$1` … `$7`.
fn bind_update<'q>(
    q: Query<'q, Any, AnyArguments<'q>>,
    r: &'q Relationship,
) -> Query<'q, Any, AnyArguments<'q>> {
    q.bind(&r.id)
        .bind(r.state.as_str())
        .bind(&r.reassigned_to)
        .bind(r.version)
        .bind(r.activated_at)
        .bind(r.ended_at)
        .bind(r.updated_at)
}

/// Binds a transition's `$1` … `$12`: `r` as [`update_sql`]'s `$1` …
/// `$7`, its partner `$8` and customer `$9`, and `change` (its id `$11`)
/// queued at `$10`, due at `$12`.
fn bind_transition<'q>(
    sql: &'q str,
    r: &'q Relationship,
    change: &'q GrantChange,
    queued_at: Millis,
) -> Query<'q, Any, AnyArguments<'q>> {
    bind_update(sqlx::query(sql), r)
        .bind(&r.partner_tenant_id)
        .bind(&r.customer_tenant_id)
        .bind(queued_at)
        .bind(&change.id)
        .bind(queued_at + outbox::INLINE_MS)
}

/// `then` as the tail of a statement of its own, from parameter `first`:
/// written only if its guard wrote when `from_guard` (see
/// [`Writes::appended`]).
/// `what` names the change for the error when they can't join it.
fn appended_to_guard(
    then: Writes,
    backend: Backend,
    first: usize,
    from_guard: bool,
    what: &str,
) -> Result<Appended, Error> {
    match then.appended(backend, first, from_guard) {
        (a, None) => Ok(a),
        (_, Some(_)) => Err(Error::internal(format!(
            "{what}'s writes must join its statement"
        ))),
    }
}

/// Which side's relationships to list.
#[derive(Debug, Clone, Copy)]
pub enum Side<'a> {
    Partner(&'a str),
    Customer(&'a str),
}

/// Newest first (ids are UUIDv7), after `before` (exclusive).
pub async fn list<'e, E: Executor<'e, Database = Any>>(
    ex: E,
    side: Side<'_>,
    state: Option<DelegatedState>,
    before: Option<&str>,
    limit: i64,
) -> Result<Vec<Relationship>, Error> {
    let (col, tenant) = match side {
        Side::Partner(t) => ("partner_tenant_id", t),
        Side::Customer(t) => ("customer_tenant_id", t),
    };
    let q = format!(
        "SELECT {COLUMNS} FROM delegated_admin_relationships WHERE {col} = $1 AND id < $2 \
         AND ($3 = '' OR state = $3) ORDER BY id DESC LIMIT $4"
    );
    sqlx::query(&q)
        .bind(tenant)
        // Every UUID sorts below "g".
        .bind(before.unwrap_or("g"))
        .bind(state.map(|s| s.as_str()).unwrap_or(""))
        .bind(limit)
        .fetch_all(ex)
        .await?
        .iter()
        .map(from_row)
        .collect()
}

#[cfg(test)]
mod tests {
    use sovra_runtime::{
        db::Db,
        writes::{Insert, Writes},
    };

    use super::{activate_alone, get, transition_alone, Relationship};
    use crate::domain::states::DelegatedState;

    const PARTNER: &str = "p1";
    const CUSTOMER: &str = "c1";

    async fn scratch() -> (Db, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("sovra-rel-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.join("r.db").display());
        let db = Db::connect(crate::SERVICE, &url, 4).await.unwrap();
        db.prepare("test", crate::SERVICE, super::super::MIGRATIONS)
            .await
            .unwrap();
        (db, dir)
    }

    /// An ACTIVE relationship at version 1, as an acceptance makes it.
    fn active(id: &str, now: i64) -> Relationship {
        Relationship {
            id: id.into(),
            state: DelegatedState::Active,
            activated_at: Some(now),
            ..Relationship::pending(PARTNER, CUSTOMER, "offer", now)
        }
    }

    /// A row in another table, to see whether a change's `then` was written.
    fn marker(name: &str) -> Writes {
        let mut w = Writes::new();
        w.insert(
            Insert::new("customer_locks", &["customer_tenant_id", "n"])
                .value(name)
                .value(1),
        );
        w
    }

    /// What a change writes besides the relationship: the queued changes,
    /// the pair's grant version, the partner's customer row's state and the
    /// markers.
    async fn written(db: &Db) -> (i64, Option<i64>, Option<String>, i64) {
        let one = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql).fetch_one(db.read());
        let queued = one("SELECT COUNT(*) FROM grant_outbox").await.unwrap();
        let version = sqlx::query_scalar("SELECT version FROM grant_versions")
            .fetch_optional(db.read())
            .await
            .unwrap();
        let booked = sqlx::query_scalar("SELECT delegated_state FROM partner_customers")
            .fetch_optional(db.read())
            .await
            .unwrap();
        let markers = one("SELECT COUNT(*) FROM customer_locks").await.unwrap();
        (queued, version, booked, markers)
    }

    /// SQLite runs each of these as one call of several statements: a
    /// removal whose relationship moved on since it was read, and a second
    /// ACTIVE relationship, write nothing at all.
    #[tokio::test]
    async fn changes_in_one_call_write_all_of_themselves_or_nothing() {
        let (db, dir) = scratch().await;
        let rel = active("r1", 1_000);
        let named = ("Fabrikam", "fabrikam.example");
        let made = activate_alone(&db, &rel, named, 1_000, marker("activated"))
            .await
            .unwrap()
            .expect("the customer had no ACTIVE relationship");
        assert_eq!(made.version, 1);
        assert_eq!(written(&db).await, (1, Some(1), Some("ACTIVE".into()), 1));

        // Another ACTIVE relationship of the customer: refused, nothing written.
        let other = activate_alone(&db, &active("r2", 2_000), named, 2_000, marker("other"))
            .await
            .unwrap();
        assert!(other.is_none(), "one ACTIVE relationship per customer");
        assert_eq!(written(&db).await, (1, Some(1), Some("ACTIVE".into()), 1));

        let mut removed = rel.clone();
        removed.state = DelegatedState::Removed;
        removed.version = 2;
        removed.ended_at = Some(3_000);
        removed.updated_at = 3_000;
        // Read at a version it is no longer at: nothing written.
        let stale = transition_alone(&db, &removed, 7, 3_000, marker("stale"))
            .await
            .unwrap();
        assert!(stale.is_none(), "a stale removal must not apply");
        assert_eq!(written(&db).await, (1, Some(1), Some("ACTIVE".into()), 1));
        let now = get(db.read(), "r1").await.unwrap().unwrap();
        assert_eq!((now.state, now.version), (DelegatedState::Active, 1));

        let change = transition_alone(&db, &removed, 1, 3_000, marker("removed"))
            .await
            .unwrap()
            .expect("ACTIVE at version 1");
        assert_eq!(change.version, 2);
        assert_eq!(written(&db).await, (2, Some(2), Some("REMOVED".into()), 2));
        let now = get(db.read(), "r1").await.unwrap().unwrap();
        assert_eq!((now.state, now.version), (DelegatedState::Removed, 2));

        // Removing it again: it is no longer ACTIVE.
        let again = transition_alone(&db, &removed, 1, 4_000, marker("again"))
            .await
            .unwrap();
        assert!(again.is_none());
        assert_eq!(written(&db).await, (2, Some(2), Some("REMOVED".into()), 2));
        db.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
