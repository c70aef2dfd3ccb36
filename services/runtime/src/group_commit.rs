//! Group commit for SQLite's single writer: concurrent write transactions
//! share one real transaction and one fsync, each inside its own savepoint.
//!
//! SQLite has one writer per database, and with `synchronous=FULL` every
//! COMMIT waits for an fsync, so a service's write throughput used to be one
//! fsync per transaction. Here a transaction is a SAVEPOINT inside a shared
//! `BEGIN IMMEDIATE`: committing it releases the savepoint and waits until a
//! committer task has committed the group it joined. The committer queues
//! for the writer behind every transaction already waiting (tokio's mutex is
//! fair), so whoever was waiting joins the group and the group commits as
//! soon as they are done: one fsync for all of them, and no added wait when
//! there is no one else.
//!
//! A transaction that commits while no other waits to begin one commits the
//! group itself, in the same call to SQLite as its RELEASE: on SQLite every
//! call is a hand-off to the connection's worker thread and back, and the
//! committer would only have committed the same group a moment later.
//! Likewise a group opens with `BEGIN IMMEDIATE` and its first SAVEPOINT in
//! one call. And a transaction whose statements are all known up front (see
//! `crate::writes`) takes the writer as a [`Solo`] when no group is open and
//! no one waits: `BEGIN IMMEDIATE`, its statements and `COMMIT` go as one
//! call.
//!
//! What each caller sees is unchanged: `commit()` returns once its writes
//! are durable, or fails if they are not (a failed group COMMIT fails every
//! member; none of them was acknowledged). A transaction dropped without
//! committing is rolled back to its savepoint before anyone else writes, so
//! its writes never reach the group. PostgreSQL groups concurrent commits
//! itself and does not use this.

use std::{
    ops::{Deref, DerefMut},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Weak,
    },
};

use sqlx::{
    any::{AnyArguments, AnyRow},
    pool::PoolConnection,
    Any, AnyConnection, AnyPool, Executor,
};
use tokio::sync::{watch, Mutex, Notify, OwnedMappedMutexGuard, OwnedMutexGuard};

/// A group's outcome: `None` until its COMMIT (or ROLLBACK) is done.
type Outcome = Option<Result<(), Arc<str>>>;

/// The transaction every open savepoint belongs to, on the writer's one
/// connection (taken from the write pool while the group is open, so that
/// single statements on the pool wait for the group, not the other way).
struct OpenGroup {
    conn: PoolConnection<Any>,
    /// Savepoints released into the group, waiting for its COMMIT.
    members: usize,
    /// The last holder dropped its transaction without committing: its
    /// savepoint is still open and is rolled back before the next use.
    abandoned: bool,
    /// The last holder committed (or rolled back) the group itself and told
    /// its members: whoever takes the writer next starts a new one.
    ended: bool,
    outcome: watch::Sender<Outcome>,
}

/// One database's writer: the write pool and the group being filled.
pub(crate) struct Writer {
    pool: AnyPool,
    group: Arc<Mutex<Option<OpenGroup>>>,
    kick: Arc<Notify>,
    stats: Arc<Stats>,
    /// Transactions waiting to begin (for the writer).
    waiting: Arc<AtomicUsize>,
}

/// Counts since start, for the metrics endpoint: their ratio is the mean
/// group size.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub groups: AtomicU64,
    pub transactions: AtomicU64,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Wakes the committer so it sees the writer gone and ends.
        self.kick.notify_one();
    }
}

const ROLLBACK_SAVEPOINT: &str = "ROLLBACK TO sovra_tx; RELEASE sovra_tx";

impl Writer {
    /// A writer over `pool` (one connection), with its committer task.
    pub(crate) fn start(pool: AnyPool) -> Arc<Writer> {
        let writer = Arc::new(Writer {
            pool,
            group: Arc::new(Mutex::new(None)),
            kick: Arc::new(Notify::new()),
            stats: Arc::default(),
            waiting: Arc::default(),
        });
        tokio::spawn(commit_groups(
            Arc::downgrade(&writer),
            writer.kick.clone(),
            writer.stats.clone(),
        ));
        writer
    }

    /// Groups committed and the transactions they held, since start.
    pub(crate) fn stats(&self) -> (u64, u64) {
        (
            self.stats.groups.load(Ordering::Relaxed),
            self.stats.transactions.load(Ordering::Relaxed),
        )
    }

    /// The writer, counted as waited for until it is ours.
    async fn lock(&self) -> OwnedMutexGuard<Option<OpenGroup>> {
        let _waiting = Waiting::on(&self.waiting);
        self.group.clone().lock_owned().await
    }

    /// Opens a savepoint in the current group, opening a group if none is.
    pub(crate) async fn begin(self: &Arc<Self>) -> Result<GroupTx, sqlx::Error> {
        let slot = self.lock().await;
        self.join(slot).await
    }

    /// The writer to one transaction on its own ([`Solo`]) when no group
    /// is open and no one else waits for it; else a transaction in the
    /// group, as [`Writer::begin`].
    pub(crate) async fn begin_or_solo(self: &Arc<Self>) -> Result<Begun, sqlx::Error> {
        let mut slot = self.lock().await;
        let free = no_group(&slot) && self.waiting.load(Ordering::Acquire) == 0;
        if !free {
            return Ok(Begun::Group(self.join(slot).await?));
        }
        let conn = self.connection(&mut slot).await?;
        // Ended from the start: no one joins it.
        *slot = Some(OpenGroup::new(conn, true));
        let open =
            OwnedMutexGuard::try_map(slot, |s| s.as_mut()).map_err(|_| sqlx::Error::PoolClosed)?;
        Ok(Begun::Solo(Solo {
            open,
            stats: self.stats.clone(),
            kick: self.kick.clone(),
        }))
    }

    /// A savepoint in the group open in `slot`, or in a new one.
    async fn join(
        self: &Arc<Self>,
        mut slot: OwnedMutexGuard<Option<OpenGroup>>,
    ) -> Result<GroupTx, sqlx::Error> {
        undo_abandoned(&mut slot).await;
        if no_group(&slot) {
            let mut conn = self.connection(&mut slot).await?;
            if let Err(e) = conn.execute("BEGIN IMMEDIATE; SAVEPOINT sovra_tx").await {
                // The BEGIN may have run: the connection leaves no transaction open.
                let _ = conn.execute("ROLLBACK").await;
                return Err(e);
            }
            *slot = Some(OpenGroup::new(conn, false));
        } else if let Some(open) = slot.as_mut() {
            if let Err(e) = open.conn.execute("SAVEPOINT sovra_tx").await {
                // The group can't take a savepoint: it is in no state to go on.
                if let Some(open) = slot.take() {
                    open.abort("the transaction group was rolled back").await;
                }
                return Err(e);
            }
        }
        let open =
            OwnedMutexGuard::try_map(slot, |s| s.as_mut()).map_err(|_| sqlx::Error::PoolClosed)?;
        Ok(GroupTx {
            open,
            released: false,
            kick: self.kick.clone(),
            stats: self.stats.clone(),
            waiting: self.waiting.clone(),
        })
    }
}

impl Writer {
    /// A connection for a new group: the one an ended group in `slot` held,
    /// else one from the pool.
    async fn connection(
        &self,
        slot: &mut Option<OpenGroup>,
    ) -> Result<PoolConnection<Any>, sqlx::Error> {
        match take_ended(slot).await {
            Some(conn) => Ok(conn),
            None => self.pool.acquire().await,
        }
    }
}

/// Whether no group is open for a transaction to join (none, or one its
/// last holder ended).
fn no_group(slot: &Option<OpenGroup>) -> bool {
    slot.as_ref().is_none_or(|o| o.ended)
}

/// Takes an ended group out of `slot`, if it holds one: its connection,
/// out of any transaction (rolled back, unless the group committed).
async fn take_ended(slot: &mut Option<OpenGroup>) -> Option<PoolConnection<Any>> {
    let mut ended = slot.take_if(|o| o.ended)?;
    let committed = matches!(*ended.outcome.borrow(), Some(Ok(())));
    if !committed {
        // A failed or dropped transaction may have left BEGIN open.
        let _ = ended.conn.execute("ROLLBACK").await;
    }
    Some(ended.conn)
}

/// What [`Writer::begin_or_solo`] gave.
pub(crate) enum Begun {
    Group(GroupTx),
    Solo(Solo),
}

/// The writer to one transaction, when no group was open and no one else
/// waited for it: the caller sends the whole transaction, `BEGIN IMMEDIATE`
/// to `COMMIT`, as one call ([`Solo::run`]). Every call to SQLite is a
/// hand-off to the connection's worker thread and back; a transaction in a
/// group makes at least three (its savepoint, its statements, its release
/// with the COMMIT).
pub(crate) struct Solo {
    open: OwnedMappedMutexGuard<Option<OpenGroup>, OpenGroup>,
    stats: Arc<Stats>,
    kick: Arc<Notify>,
}

impl std::fmt::Debug for Solo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Solo").finish_non_exhaustive()
    }
}

impl Solo {
    /// Runs `sql` (statements, `;`-separated) as one transaction in one
    /// call, and returns the rows they returned. `Ok` means the writes are
    /// durable; on an error nothing of them is left.
    pub(crate) async fn run(
        mut self,
        sql: &str,
        args: AnyArguments<'_>,
    ) -> Result<Vec<AnyRow>, sqlx::Error> {
        let whole = format!("BEGIN IMMEDIATE;\n{sql};\nCOMMIT");
        let done = sqlx::query_with(&whole, args)
            .fetch_all(&mut *self.open.conn)
            .await;
        match &done {
            Ok(_) => {
                self.open.members = 1;
                self.open.committed(&self.stats);
            }
            Err(_) => self.open.roll_back("the transaction failed").await,
        }
        done
    }
}

impl Drop for Solo {
    fn drop(&mut self) {
        // Cut off (its caller went away): whatever ran is rolled back by
        // whoever takes the writer next (see `take_ended`).
        self.open.outcome.send_if_modified(|o| {
            let unfinished = o.is_none();
            if unfinished {
                *o = Some(Err("the transaction was cut off".into()));
            }
            unfinished
        });
        // The committer lets go of the connection if no one else takes it.
        self.kick.notify_one();
    }
}

/// Counts a transaction waiting to begin for as long as it waits (its
/// caller may give up).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn on(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl OpenGroup {
    /// A group on `conn`, whose transaction was begun; `ended` when no
    /// transaction may join it (a [`Solo`]'s).
    fn new(conn: PoolConnection<Any>, ended: bool) -> Self {
        Self {
            conn,
            members: 0,
            abandoned: false,
            ended,
            outcome: watch::channel(None).0,
        }
    }

    /// Rolls the whole group back and tells its members it failed (none of
    /// them was acknowledged yet).
    async fn abort(mut self, why: &str) {
        self.roll_back(why).await;
    }

    async fn roll_back(&mut self, why: &str) {
        let _ = self.conn.execute("ROLLBACK").await;
        self.outcome.send_replace(Some(Err(why.into())));
    }

    /// Tells the members how the group's COMMIT went (`done`): on a failure
    /// the group is rolled back, none of them having been acknowledged.
    async fn settle(
        &mut self,
        done: Result<(), sqlx::Error>,
        stats: &Stats,
    ) -> Result<(), sqlx::Error> {
        match done {
            Ok(()) => self.committed(stats),
            Err(e) => {
                tracing::error!(error = %e, members = self.members, "group commit failed");
                self.roll_back("the group's commit failed").await;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Counts a committed group and tells its members.
    fn committed(&self, stats: &Stats) {
        if self.members > 0 {
            stats.groups.fetch_add(1, Ordering::Relaxed);
            stats
                .transactions
                .fetch_add(self.members as u64, Ordering::Relaxed);
        }
        self.outcome.send_replace(Some(Ok(())));
    }
}

/// Rolls back the savepoint a dropped transaction left open. If that fails
/// the whole group is rolled back and its members told (none of them was
/// acknowledged yet).
async fn undo_abandoned(slot: &mut Option<OpenGroup>) {
    let Some(open) = slot.as_mut().filter(|o| o.abandoned) else {
        return;
    };
    match open.conn.execute(ROLLBACK_SAVEPOINT).await {
        Ok(_) => open.abandoned = false,
        Err(e) => {
            tracing::error!(error = %e, "group commit: rolling back a dropped transaction failed; the group is rolled back");
            if let Some(open) = slot.take() {
                open.abort("the transaction group was rolled back").await;
            }
        }
    }
}

/// The committer: each kick queues for the writer behind everyone already
/// waiting, then commits whatever group is open.
async fn commit_groups(writer: Weak<Writer>, kick: Arc<Notify>, stats: Arc<Stats>) {
    loop {
        kick.notified().await;
        let Some(group) = writer.upgrade().map(|w| w.group.clone()) else {
            return;
        };
        let mut slot = group.lock().await;
        undo_abandoned(&mut slot).await;
        // An ended group is only let go of: its connection goes back to the pool.
        if take_ended(&mut slot).await.is_some() {
            continue;
        }
        let Some(mut open) = slot.take() else {
            continue;
        };
        let end = if open.members == 0 {
            "ROLLBACK"
        } else {
            "COMMIT"
        };
        let done = open.conn.execute(end).await.map(|_| ());
        // A failure is logged and told to the members, whose commit() returns it.
        let _ = open.settle(done, &stats).await;
        // The connection goes back to the pool with the guard released.
        drop(slot);
    }
}

/// A write transaction inside a group: a savepoint on the writer's
/// connection, held exclusively until committed or dropped.
pub struct GroupTx {
    open: OwnedMappedMutexGuard<Option<OpenGroup>, OpenGroup>,
    released: bool,
    kick: Arc<Notify>,
    stats: Arc<Stats>,
    waiting: Arc<AtomicUsize>,
}

impl std::fmt::Debug for GroupTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupTx").finish_non_exhaustive()
    }
}

impl GroupTx {
    /// Releases the savepoint into the group and waits for the group's
    /// COMMIT: `Ok` means these writes are durable.
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        if self.waiting.load(Ordering::Acquire) == 0 {
            return self.commit_group().await;
        }
        self.open.conn.execute("RELEASE sovra_tx").await?;
        self.released = true;
        self.open.members += 1;
        let mut outcome = self.open.outcome.subscribe();
        // Hands the writer to the next transaction and kicks the committer.
        drop(self);
        let done = outcome
            .wait_for(Option::is_some)
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        match done.as_ref() {
            Some(Err(why)) => Err(sqlx::Error::Protocol(why.to_string())),
            _ => Ok(()),
        }
    }

    /// No other transaction waits to join: releases the savepoint and
    /// commits the group (with the members released into it before) in one
    /// call. If that fails the whole group is rolled back, and its members
    /// told (none of them was acknowledged yet).
    async fn commit_group(mut self) -> Result<(), sqlx::Error> {
        // The savepoint is gone either way: committed, or rolled back with the group.
        self.released = true;
        self.open.ended = true;
        self.open.members += 1;
        let done = self
            .open
            .conn
            .execute("RELEASE sovra_tx; COMMIT")
            .await
            .map(|_| ());
        self.open.settle(done, &self.stats).await
    }
}

impl Drop for GroupTx {
    fn drop(&mut self) {
        if !self.released {
            self.open.abandoned = true;
        }
        self.kick.notify_one();
    }
}

impl Deref for GroupTx {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        &self.open.conn
    }
}

impl DerefMut for GroupTx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.open.conn
    }
}

#[cfg(test)]
mod tests {
    use crate::db::{scratch_sqlite, Db, Write};

    async fn scratch() -> (Db, std::path::PathBuf) {
        scratch_sqlite("CREATE TABLE t (id BIGINT PRIMARY KEY)").await
    }

    async fn ids(db: &Db) -> Vec<i64> {
        sqlx::query_as::<_, (i64,)>("SELECT id FROM t ORDER BY id")
            .fetch_all(db.read())
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.0)
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_transactions_share_commits_and_dropped_ones_leave_nothing() {
        let (db, dir) = scratch().await;
        let tasks: Vec<_> = (0..200i64)
            .map(|i| {
                let db = db.clone();
                tokio::spawn(async move {
                    let mut tx = db.begin().await.unwrap();
                    sqlx::query("INSERT INTO t (id) VALUES ($1)")
                        .bind(i)
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                    if i % 2 == 0 {
                        tx.commit().await.unwrap();
                        // Acknowledged means readable by everyone else.
                        let seen: Option<(i64,)> = sqlx::query_as("SELECT id FROM t WHERE id = $1")
                            .bind(i)
                            .fetch_optional(db.read())
                            .await
                            .unwrap();
                        assert_eq!(seen, Some((i,)), "{i} committed but not visible");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let expected: Vec<i64> = (0..200).filter(|i| i % 2 == 0).collect();
        assert_eq!(ids(&db).await, expected);
        let (groups, transactions) = db.commit_groups().unwrap();
        assert_eq!(transactions, 101, "the table's creation and 100 inserts");
        assert!(
            groups < transactions,
            "200 concurrent writers should share commits: {groups} groups for {transactions}"
        );
        db.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_failed_statement_fails_only_its_own_transaction() {
        let (db, dir) = scratch().await;
        let mut first = db.begin().await.unwrap();
        sqlx::query("INSERT INTO t (id) VALUES (1)")
            .execute(&mut *first)
            .await
            .unwrap();
        // Released into the group, not yet committed: the duplicate below
        // fails, and its transaction is dropped, inside the same group.
        let committing = tokio::spawn(first.commit());
        let mut second = db.begin().await.unwrap();
        let dup = sqlx::query("INSERT INTO t (id) VALUES (1)")
            .execute(&mut *second)
            .await;
        assert!(dup.is_err(), "a duplicate key must fail");
        drop(second);
        let mut third = db.begin().await.unwrap();
        sqlx::query("INSERT INTO t (id) VALUES (3)")
            .execute(&mut *third)
            .await
            .unwrap();
        third.commit().await.unwrap();
        committing.await.unwrap().unwrap();
        assert_eq!(ids(&db).await, vec![1, 3]);
        db.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_transaction_alone_commits_its_group_itself() {
        let (db, dir) = scratch().await;
        for i in 1..=3i64 {
            let mut tx = db.begin().await.unwrap();
            sqlx::query("INSERT INTO t (id) VALUES ($1)")
                .bind(i)
                .execute(&mut *tx)
                .await
                .unwrap();
            if i == 2 {
                // Dropped: rolled back before the next one writes.
                drop(tx);
                continue;
            }
            tx.commit().await.unwrap();
            // Durable and visible once acknowledged, before the committer
            // has let go of the ended group.
            let seen: Vec<i64> = ids(&db).await;
            assert!(seen.contains(&i), "{i} committed but not visible: {seen:?}");
        }
        // A write on the pool gets the connection the ended group held.
        sqlx::query("INSERT INTO t (id) VALUES (4)")
            .execute(db.write())
            .await
            .unwrap();
        assert_eq!(ids(&db).await, vec![1, 3, 4]);
        assert_eq!(
            db.commit_groups().unwrap(),
            (3, 3),
            "the table's creation and two inserts, a group each"
        );
        db.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_solo_transaction_cut_off_or_failed_leaves_nothing_behind() {
        let (db, dir) = scratch().await;
        let solo = |sql: &'static str| {
            let db = db.clone();
            async move {
                match db.begin_or_solo().await.unwrap() {
                    Write::Solo(solo) => solo.run(sql, Default::default()).await,
                    Write::Tx(_) => panic!("the writer was free"),
                }
            }
        };
        // Dropped before it ran.
        match db.begin_or_solo().await.unwrap() {
            Write::Solo(solo) => drop(solo),
            Write::Tx(_) => panic!("the writer was free"),
        }
        // Failed after its first insert: BEGIN was left open, and rolled back.
        assert!(
            solo("INSERT INTO t (id) VALUES (1); INSERT INTO t (id) VALUES (1)")
                .await
                .is_err()
        );
        solo("INSERT INTO t (id) VALUES (2)").await.unwrap();
        let mut tx = db.begin().await.unwrap();
        sqlx::query("INSERT INTO t (id) VALUES (3)")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(ids(&db).await, vec![2, 3]);
        db.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn writes_on_the_write_pool_wait_for_the_open_group() {
        let (db, dir) = scratch().await;
        let mut tx = db.begin().await.unwrap();
        sqlx::query("INSERT INTO t (id) VALUES (1)")
            .execute(&mut *tx)
            .await
            .unwrap();
        let single = {
            let db = db.clone();
            tokio::spawn(async move {
                sqlx::query("INSERT INTO t (id) VALUES (2)")
                    .execute(db.write())
                    .await
                    .map(|_| ())
            })
        };
        tx.commit().await.unwrap();
        single.await.unwrap().unwrap();
        assert_eq!(ids(&db).await, vec![1, 2]);
        db.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
