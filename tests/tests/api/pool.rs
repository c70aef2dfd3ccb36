//! `sovra_runtime::pool` on each backend's database: a connection goes
//! back to the pool between calls without a round trip and is handed out
//! again, and one cut off mid-call or mid-transaction is brought back to a
//! known state (its answer drained, its transaction rolled back) before
//! anyone gets it again.

use std::time::Duration;

use sovra_runtime::db::{Db, Migration};

use crate::{backend_test, helpers::*};

const TABLES: &[Migration] = &[Migration {
    version: 1,
    name: "pool_test",
    sql: "CREATE TABLE marks (id TEXT PRIMARY KEY);",
}];

/// A database whose pools hold one connection each, so every call below
/// gets the connection the call before it used.
async fn open(backend: Backend) -> (TestDb, Db) {
    let tdb = TestDb::new(backend).await;
    let db = Db::connect("pool", &tdb.url, 1).await.unwrap();
    db.prepare("global", "pool", TABLES).await.unwrap();
    (tdb, db)
}

/// A query that answers after about half a second or more.
fn slow(backend: Backend) -> &'static str {
    match backend {
        Backend::Postgres => "SELECT CAST(pg_sleep(0.5) AS TEXT) AS x",
        Backend::Sqlite => {
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000000) \
             SELECT CAST(COUNT(*) AS TEXT) AS x FROM c"
        }
    }
}

/// Each call answers its own question, on the pool's one connection.
async fn answers_its_own(pool: &sovra_runtime::pool::Pool) {
    for i in 0..5_i64 {
        let (n,): (i64,) = sqlx::query_as("SELECT $1")
            .bind(i)
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(n, i);
    }
    assert_eq!(pool.open(), 1, "one connection, reused");
}

async fn marks(db: &Db) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM marks")
        .fetch_one(db.read())
        .await
        .unwrap();
    n
}

/// A transaction that has written mark `id`, not yet committed.
async fn marked(db: &Db, id: &str) -> sovra_runtime::db::Tx {
    let mut tx = db.begin().await.unwrap();
    sqlx::query("INSERT INTO marks (id) VALUES ($1)")
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

backend_test!(a_connection_cut_off_mid_call_answers_the_next_caller_correctly);
async fn a_connection_cut_off_mid_call_answers_the_next_caller_correctly(backend: Backend) {
    let (_tdb, db) = open(backend).await;
    answers_its_own(db.read()).await;
    // Cut off while the answer is still coming: the next caller waits for
    // the connection to be brought back, then gets its own answer, not the
    // leftover one.
    let cut = tokio::time::timeout(
        Duration::from_millis(50),
        sqlx::query_as::<_, (String,)>(slow(backend)).fetch_one(db.read()),
    )
    .await;
    assert!(cut.is_err(), "the slow query was cut off");
    answers_its_own(db.read()).await;
    assert_eq!(db.read().in_use(), 0);
}

backend_test!(a_transaction_dropped_uncommitted_is_rolled_back_before_reuse);
async fn a_transaction_dropped_uncommitted_is_rolled_back_before_reuse(backend: Backend) {
    let (_tdb, db) = open(backend).await;
    let tx = marked(&db, "dropped").await;
    drop(tx);
    // On PostgreSQL the read runs on the same connection: had the
    // transaction stayed open, it would see its own row.
    assert_eq!(marks(&db).await, 0);

    // Cut off inside a transaction: rolled back too.
    let mut tx = marked(&db, "cut").await;
    let cut = tokio::time::timeout(
        Duration::from_millis(50),
        sqlx::query_as::<_, (String,)>(slow(backend)).fetch_one(&mut *tx),
    )
    .await;
    assert!(cut.is_err(), "the slow query was cut off");
    drop(tx);
    assert_eq!(marks(&db).await, 0);

    // And a committed one is kept, on a connection fit for the next call.
    let tx = marked(&db, "kept").await;
    tx.commit().await.unwrap();
    assert_eq!(marks(&db).await, 1);
    answers_its_own(db.read()).await;
    answers_its_own(db.write()).await;
}
