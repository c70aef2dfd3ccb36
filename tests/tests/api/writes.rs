//! `sovra_runtime::writes` straight on each backend's database: the rows
//! of a mutation sent together (one statement on PostgreSQL), written all
//! or none, and only when their guard let them; concurrent guarded writes
//! and point reads (`sovra_runtime::lookup`) batched on PostgreSQL, each
//! caller getting its own outcome.

use sovra_runtime::{
    db::{unique_violation_table, Db, Migration},
    lookup::Lookup,
    writes::{Insert, Value, Writes},
};

use sqlx::Row;

use crate::{backend_test, helpers::*};

const TABLES: &[Migration] = &[Migration {
    version: 1,
    name: "writes_test",
    sql: "CREATE TABLE things (id TEXT PRIMARY KEY, n BIGINT NOT NULL, at BIGINT); \
          CREATE TABLE tickets (id TEXT PRIMARY KEY, taken_by TEXT, uses BIGINT NOT NULL);",
}];

async fn open(backend: Backend) -> (TestDb, Db) {
    let tdb = TestDb::new(backend).await;
    let db = Db::connect("writes", &tdb.url, 8).await.unwrap();
    db.prepare("global", "writes", TABLES).await.unwrap();
    (tdb, db)
}

fn thing(id: &str, n: i64, at: Option<i64>) -> Insert {
    Insert::new("things", &["id", "n", "at"])
        .value(id)
        .value(n)
        .value(at)
}

/// The guard of the tests: takes ticket `id` for `by`, once.
fn take(id: &str, by: &str) -> Writes {
    Writes::guarded(
        "UPDATE tickets SET taken_by = $2 WHERE id = $1 AND taken_by IS NULL RETURNING id",
        vec![id.into(), Value::from(by)],
    )
}

/// [`take`] for many at once.
const TAKE_BATCHED: &str =
    "UPDATE tickets t SET taken_by = i.g2 FROM input i WHERE t.id = i.g1 AND t.taken_by IS NULL \
     RETURNING i.n";

/// On PostgreSQL, at least one statement ran calls together (`stats`:
/// batches and the calls in them); SQLite runs each alone.
fn ran_together(backend: Backend, stats: Option<(u64, u64)>) {
    match (backend, stats) {
        (Backend::Postgres, Some((batches, calls))) => {
            assert!(
                batches >= 1 && calls >= 2,
                "{batches} batches of {calls} calls"
            );
        }
        (Backend::Sqlite, None) => {}
        (b, stats) => panic!("{b:?}: batches {stats:?}"),
    }
}

async fn things(db: &Db) -> Vec<(String, i64, Option<i64>)> {
    sqlx::query_as("SELECT id, n, at FROM things ORDER BY id")
        .fetch_all(db.read())
        .await
        .unwrap()
}

async fn ticket(db: &Db, id: &str) {
    sqlx::query("INSERT INTO tickets (id, taken_by, uses) VALUES ($1, NULL, 0)")
        .bind(id)
        .execute(db.write())
        .await
        .unwrap();
}

backend_test!(rows_are_written_together_and_only_past_their_guard);
async fn rows_are_written_together_and_only_past_their_guard(backend: Backend) {
    let (_tdb, db) = open(backend).await;

    // No guard: every row, values of each kind (NULL included).
    let mut w = Writes::new();
    w.insert(thing("a", 1, Some(10)));
    w.insert(thing("b", 2, None));
    assert!(w.commit(&db).await.unwrap());
    assert_eq!(
        things(&db).await,
        vec![("a".into(), 1, Some(10)), ("b".into(), 2, None)]
    );

    // A guard that returns a row lets its rows through, once.
    ticket(&db, "t1").await;
    let mut w = take("t1", "first");
    w.insert(thing("c", 3, None));
    w.insert(thing("d", 4, None));
    assert!(w.commit(&db).await.unwrap());
    let mut w = take("t1", "second");
    w.insert(thing("e", 5, None));
    assert!(!w.commit(&db).await.unwrap(), "the ticket is taken");
    let ids: Vec<String> = things(&db).await.into_iter().map(|t| t.0).collect();
    assert_eq!(ids, ["a", "b", "c", "d"]);

    // A guard alone.
    ticket(&db, "t2").await;
    assert!(take("t2", "x").commit(&db).await.unwrap());
    assert!(!take("t2", "y").commit(&db).await.unwrap());

    // A failing row fails them all, and names its table.
    ticket(&db, "t3").await;
    let mut w = take("t3", "z");
    w.insert(thing("f", 6, None));
    w.insert(thing("a", 7, None));
    let e = w.commit(&db).await.unwrap_err();
    assert_eq!(unique_violation_table(&e), Some("things"));
    assert_eq!(things(&db).await.len(), 4, "f was not written");
    let (taken,): (Option<String>,) =
        sqlx::query_as("SELECT taken_by FROM tickets WHERE id = 't3'")
            .fetch_one(db.read())
            .await
            .unwrap();
    assert_eq!(taken, None, "the guard's claim rolled back too");

    // A statement that runs alone joins the same transaction.
    let mut w = take("t3", "w");
    w.insert(thing("g", 8, None));
    w.statement(
        "UPDATE tickets SET uses = uses + $2 WHERE id = $1",
        vec!["t3".into(), 5i64.into()],
    );
    assert!(w.commit(&db).await.unwrap());
    let (uses,): (i64,) = sqlx::query_as("SELECT uses FROM tickets WHERE id = 't3'")
        .fetch_one(db.read())
        .await
        .unwrap();
    assert_eq!(uses, 5);

    // Inside a transaction: nothing stays without its commit.
    let mut tx = db.begin().await.unwrap();
    let mut w = Writes::new();
    w.insert(thing("h", 9, None));
    assert!(w.run(&mut tx).await.unwrap());
    drop(tx);
    assert_eq!(things(&db).await.len(), 5, "h rolled back");
    db.close().await;
}

backend_test!(racing_guards_write_once);
async fn racing_guards_write_once(backend: Backend) {
    let (_tdb, db) = open(backend).await;
    for round in 0..4 {
        let id = format!("t{round}");
        ticket(&db, &id).await;
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let (db, id) = (db.clone(), id.clone());
                tokio::spawn(async move {
                    let mut w = take(&id, &format!("racer {i}"));
                    w.insert(thing(&format!("{id}-{i}"), i, None));
                    w.commit(&db).await.unwrap()
                })
            })
            .collect();
        let mut won = 0;
        for t in tasks {
            won += t.await.unwrap() as usize;
        }
        assert_eq!(won, 1, "round {round}: one racer takes the ticket");
    }
    assert_eq!(things(&db).await.len(), 4, "one row per ticket");
    db.close().await;
}

backend_test!(unflushed_commits_write_like_commits_and_only_they_skip_the_flush);
async fn unflushed_commits_write_like_commits_and_only_they_skip_the_flush(backend: Backend) {
    let (_tdb, db) = open(backend).await;
    ticket(&db, "t9").await;
    let mut w = take("t9", "first");
    w.insert(thing("u", 1, None));
    assert!(w.inserts_into("things") && !w.inserts_into("tickets"));
    assert!(w.commit_unflushed(&db).await.unwrap());
    let mut w = take("t9", "second");
    w.insert(thing("v", 2, None));
    assert!(
        !w.commit_unflushed(&db).await.unwrap(),
        "the ticket is taken"
    );
    let ids: Vec<String> = things(&db).await.into_iter().map(|t| t.0).collect();
    assert_eq!(ids, ["u"]);

    if backend == Backend::Postgres {
        // Only the unflushed pool's commits skip the WAL flush; a commit
        // acknowledged on its own (every other pool) waits for it.
        let setting = |pool: &sovra_runtime::pool::Pool| {
            let pool = pool.clone();
            async move {
                let (v,): (String,) = sqlx::query_as("SHOW synchronous_commit")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                v
            }
        };
        assert_eq!(setting(db.write_unflushed()).await, "off");
        assert_eq!(setting(db.write()).await, "on");
        assert_eq!(setting(db.read()).await, "on");
    } else {
        // SQLite's commits always flush: there is no other pool.
        assert!(std::ptr::eq(db.write_unflushed(), db.write()));
    }
}

backend_test!(concurrent_guarded_writes_are_batched_and_each_told_its_own_outcome);
async fn concurrent_guarded_writes_are_batched_and_each_told_its_own_outcome(backend: Backend) {
    let (_tdb, db) = open(backend).await;
    // Text that must reach the row as it was sent.
    let odd = "\"quoted\" back\\slash\nnew line\ttab ü € … 𝄞";
    for t in 0..8 {
        ticket(&db, &format!("b{t}")).await;
    }
    for t in ["gone", "x1", "x2"] {
        ticket(&db, t).await;
    }
    assert!(take("gone", "earlier").commit(&db).await.unwrap());
    // Twelve racers for each of eight tickets, six for a taken one, and
    // two whose rows share an id (on tickets of their own), interleaved.
    let mut calls = Vec::new();
    for i in 0..12 {
        for t in 0..8 {
            calls.push((format!("b{t}"), format!("b{t}-{i} {odd}")));
        }
        if i < 6 {
            calls.push(("gone".to_owned(), format!("gone-{i}")));
        }
    }
    calls.insert(40, ("x1".to_owned(), "twin".to_owned()));
    calls.insert(41, ("x2".to_owned(), "twin".to_owned()));
    let tasks: Vec<_> = calls
        .iter()
        .enumerate()
        .map(|(n, (ticket, id))| {
            let (db, ticket, id) = (db.clone(), ticket.clone(), id.clone());
            tokio::spawn(async move {
                let mut w = take(&ticket, &id).batched(TAKE_BATCHED);
                w.insert(thing(&id, n as i64, Some(-(n as i64))));
                w.commit_unflushed(&db).await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }

    let mut written = Vec::new();
    for ((ticket, id), outcome) in calls.iter().zip(&outcomes) {
        match (ticket.as_str(), outcome) {
            (_, Ok(true)) => written.push((ticket.clone(), id.clone())),
            (_, Ok(false)) => {}
            ("x1" | "x2", Err(e)) => assert_eq!(unique_violation_table(e), Some("things")),
            (_, Err(e)) => panic!("{ticket}: {e}"),
        }
    }
    written.sort();
    let won: Vec<&str> = written.iter().map(|w| w.0.as_str()).collect();
    assert_eq!(won.len(), 9, "{won:?}");
    for t in 0..8 {
        let b = format!("b{t}");
        assert_eq!(won.iter().filter(|w| **w == b).count(), 1, "{b} won once");
    }
    assert!(
        !won.contains(&"gone"),
        "a taken ticket is taken by nobody else"
    );
    let twins = won.iter().filter(|w| w.starts_with('x')).count();
    assert_eq!(twins, 1, "one of the two rows with one id is written");

    // Each winner's row, its text intact, and its ticket taken by it; no
    // loser wrote anything.
    let rows: Vec<String> = things(&db).await.into_iter().map(|t| t.0).collect();
    let mut expected: Vec<String> = written.iter().map(|w| w.1.clone()).collect();
    expected.sort();
    assert_eq!(rows, expected);
    for (ticket, id) in &written {
        let (by,): (String,) = sqlx::query_as("SELECT taken_by FROM tickets WHERE id = $1")
            .bind(ticket)
            .fetch_one(db.read())
            .await
            .unwrap();
        assert_eq!(&by, id);
    }

    ran_together(backend, db.write_batches());
    db.close().await;
}

backend_test!(concurrent_lookups_are_batched_and_each_gets_its_own_row);
async fn concurrent_lookups_are_batched_and_each_gets_its_own_row(backend: Backend) {
    static TICKET: Lookup = Lookup::new("tickets", "id, taken_by, uses", &["id"]);
    let (_tdb, db) = open(backend).await;
    let id = |i: usize| format!("t{i} \"odd\" \\ ü\n");
    for i in (0..40).step_by(2) {
        ticket(&db, &id(i)).await;
        assert!(take(&id(i), &format!("by {i}")).commit(&db).await.unwrap());
    }
    // Every other ticket exists; each is asked for by two callers at once.
    let tasks: Vec<_> = (0..80)
        .map(|c| {
            let (db, key) = (db.clone(), id(c % 40));
            tokio::spawn(async move { TICKET.get(&db, &[&key]).await })
        })
        .collect();
    for (c, t) in tasks.into_iter().enumerate() {
        let i = c % 40;
        let row = t.await.unwrap().unwrap();
        match row {
            Some(r) => {
                assert_eq!(i % 2, 0, "ticket {i} does not exist");
                let (got, by): (String, String) = (r.get(0), r.get(1));
                assert_eq!((got, by), (id(i), format!("by {i}")));
            }
            None => assert_eq!(i % 2, 1, "ticket {i} exists"),
        }
    }
    ran_together(backend, db.read_batches());
    db.close().await;
}
