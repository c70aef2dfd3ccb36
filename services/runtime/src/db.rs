//! Database pools for SQLite (bundled) and PostgreSQL, chosen by URL, with
//! one SQL dialect for both (`$1` parameters, TEXT/BIGINT columns), per-service
//! migrations, and the instance stamp every database carries.

use std::{
    ops::{Deref, DerefMut},
    sync::Arc,
    time::Duration,
};

use sqlx::{
    any::{AnyArguments, AnyPoolOptions, AnyRow},
    AnyConnection, Connection, Executor,
};

use crate::{
    batch::Batcher,
    error::Error,
    group_commit::{Begun, GroupTx, Solo, Writer},
    lookup::Read,
    pool::{Conn, Pool},
    writes::Batched,
};

/// Batched statements in flight at a time (see [`crate::batch`]): writes
/// (one to run while the next fills), and point reads.
const WRITE_BATCHES: usize = 2;
const READ_BATCHES: usize = 2;

/// A connection idle this long is pinged before it is handed out.
pub(crate) const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// Every SQLite connection's settings: WAL with synchronous=FULL (an
/// acknowledged commit survives a crash), foreign keys, and a wait for a
/// busy database instead of an error.
pub const SQLITE_SETTINGS: &str = "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; \
     PRAGMA foreign_keys=ON; PRAGMA busy_timeout=10000;";

/// How long a caller waits for a connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// A write transaction: `&mut *tx` is its connection; dropped without
/// `commit` it rolls back. On SQLite it is a savepoint in a shared group
/// commit ([`crate::group_commit`]); on PostgreSQL a plain transaction.
#[derive(Debug)]
pub struct Tx(TxKind);

#[derive(Debug)]
enum TxKind {
    Plain(Conn),
    Grouped(GroupTx),
}

impl Tx {
    /// Commits; `Ok` means the writes are durable.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self.0 {
            TxKind::Plain(conn) => conn.commit().await,
            TxKind::Grouped(tx) => tx.commit().await,
        }
    }

    pub fn backend(&self) -> Backend {
        match &self.0 {
            TxKind::Grouped(_) => Backend::Sqlite,
            TxKind::Plain(conn) if conn.backend_name() == POSTGRES => Backend::Postgres,
            TxKind::Plain(_) => Backend::Sqlite,
        }
    }
}

/// Where a write goes (see [`Db::begin_or_solo`]).
pub(crate) enum Write {
    Tx(Tx),
    Solo(Solo),
}

/// sqlx's name for the PostgreSQL backend of an `AnyConnection`.
const POSTGRES: &str = "PostgreSQL";

impl Deref for Tx {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        match &self.0 {
            TxKind::Plain(tx) => tx,
            TxKind::Grouped(tx) => tx,
        }
    }
}

impl DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match &mut self.0 {
            TxKind::Plain(tx) => tx,
            TxKind::Grouped(tx) => tx,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One migration: a version (increasing within its component) and its SQL.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Tables the runtime itself keeps in every service's database.
const RUNTIME_MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "idempotency_and_audit",
    sql: include_str!("../migrations/0001_idempotency_and_audit.sql"),
}];

/// A service's database: a read pool and a write pool. On SQLite the write
/// pool has one connection, so writers queue in-process instead of failing
/// with SQLITE_BUSY, and transactions commit in groups through `writer`;
/// on PostgreSQL both pools are the same pool.
#[derive(Debug, Clone)]
pub struct Db {
    read: Pool,
    write: Pool,
    /// PostgreSQL only: connections whose commits don't wait for the WAL
    /// flush (see [`Db::write_unflushed`]).
    unflushed: Option<Pool>,
    /// PostgreSQL only: batches concurrent guarded writes on `unflushed`,
    /// and point reads on `read` (see [`crate::batch`]).
    write_batcher: Option<Arc<Batcher<Batched>>>,
    read_batcher: Option<Arc<Batcher<Read>>>,
    writer: Option<Arc<Writer>>,
    backend: Backend,
}

/// Why a database was refused at start-up.
#[derive(Debug, thiserror::Error)]
pub enum DbOpenError {
    #[error("database for {service} was created for instance `{found}`; this is instance `{expected}`: refusing to start")]
    ForeignInstance {
        service: String,
        found: String,
        expected: String,
    },
    #[error("database for {service} belongs to service `{found}`: refusing to start")]
    ForeignService { service: String, found: String },
    #[error("cannot open the {service} database: {source}")]
    Connect {
        service: String,
        source: sqlx::Error,
    },
    #[error("migration {component} {version} ({name}) failed: {source}")]
    Migrate {
        component: String,
        version: i64,
        name: String,
        source: sqlx::Error,
    },
}

impl Db {
    /// Connects by URL (`sqlite:` or `postgres://`).
    pub async fn connect(
        service: &str,
        url: &str,
        max_connections: u32,
    ) -> Result<Db, DbOpenError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let connect_err = |source| DbOpenError::Connect {
            service: service.to_owned(),
            source,
        };
        // `flush`: false for the pool whose commits don't wait for the WAL
        // flush (PostgreSQL's `synchronous_commit = off`).
        let options = |flush: bool| {
            AnyPoolOptions::new()
                .acquire_timeout(ACQUIRE_TIMEOUT)
                // sqlx pings every connection it hands out by default: a
                // round trip per acquire, a third of a short transaction's.
                // Only a connection idle for a while is pinged (a dead one
                // is then replaced); a busy one is known to be alive.
                .test_before_acquire(false)
                .before_acquire(|conn, meta| {
                    Box::pin(async move {
                        if meta.idle_for >= PING_AFTER_IDLE {
                            conn.ping().await?;
                        }
                        Ok(true)
                    })
                })
                .after_connect(move |conn, _| {
                    Box::pin(async move {
                        if backend == Backend::Sqlite {
                            // WAL with synchronous=FULL: an acknowledged commit survives a crash.
                            conn.execute(SQLITE_SETTINGS).await?;
                        } else if !flush {
                            conn.execute("SET synchronous_commit = off").await?;
                        }
                        Ok(())
                    })
                })
        };
        match backend {
            Backend::Sqlite => {
                let write = options(true)
                    .max_connections(1)
                    .connect(url)
                    .await
                    .map_err(connect_err)?;
                let read = options(true)
                    .max_connections(max_connections.max(1))
                    .connect(url)
                    .await
                    .map_err(connect_err)?;
                Ok(Db {
                    read: Pool::parking(read, max_connections.max(1) as usize, ACQUIRE_TIMEOUT),
                    writer: Some(Writer::start(write.clone())),
                    write: Pool::sqlx(write),
                    unflushed: None,
                    write_batcher: None,
                    read_batcher: None,
                    backend,
                })
            }
            Backend::Postgres => {
                let pool = options(true)
                    .max_connections(max_connections.max(1))
                    .connect(url)
                    .await
                    .map_err(connect_err)?;
                // Connects on first use: a service that never defers its
                // flush holds no connection for it.
                let unflushed = options(false)
                    .max_connections(max_connections.max(1))
                    .min_connections(0)
                    .connect_lazy(url)
                    .map_err(connect_err)?;
                let max = max_connections.max(1) as usize;
                let pool = Pool::parking(pool, max, ACQUIRE_TIMEOUT);
                let unflushed = Pool::parking(unflushed, max, ACQUIRE_TIMEOUT);
                Ok(Db {
                    read_batcher: Some(Batcher::new(pool.clone(), READ_BATCHES)),
                    write_batcher: Some(Batcher::new(unflushed.clone(), WRITE_BATCHES)),
                    read: pool.clone(),
                    write: pool,
                    unflushed: Some(unflushed),
                    writer: None,
                    backend,
                })
            }
        }
    }

    /// Checks the instance stamp, runs the runtime's and the service's
    /// migrations, and stamps a new database with its instance and service.
    pub async fn prepare(
        &self,
        instance: &str,
        service: &str,
        migrations: &[Migration],
    ) -> Result<(), DbOpenError> {
        let mig_err = |component: &str, m: &Migration, source| DbOpenError::Migrate {
            component: component.to_owned(),
            version: m.version,
            name: m.name.to_owned(),
            source,
        };
        let boot = Migration {
            version: 0,
            name: "bootstrap",
            sql: "",
        };
        let mut conn = self
            .write
            .acquire()
            .await
            .map_err(|source| DbOpenError::Connect {
                service: service.to_owned(),
                source,
            })?;
        if self.backend == Backend::Postgres {
            // Replicas starting together migrate one at a time.
            sqlx::query("SELECT pg_advisory_lock(4242)")
                .execute(&mut *conn)
                .await
                .map_err(|e| mig_err("runtime", &boot, e))?;
        }
        let result = async {
            conn.execute(
                "CREATE TABLE IF NOT EXISTS sovra_instance (id BIGINT PRIMARY KEY, instance TEXT NOT NULL, \
                 service TEXT NOT NULL, created_at BIGINT NOT NULL); \
                 CREATE TABLE IF NOT EXISTS sovra_migrations (component TEXT NOT NULL, version BIGINT NOT NULL, \
                 name TEXT NOT NULL, applied_at BIGINT NOT NULL, PRIMARY KEY (component, version));",
            )
            .await
            .map_err(|e| mig_err("runtime", &boot, e))?;
            let stamp: Option<(String, String)> =
                sqlx::query_as("SELECT instance, service FROM sovra_instance WHERE id = 1")
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(|e| mig_err("runtime", &boot, e))?;
            match stamp {
                Some((found, _)) if found != instance => {
                    return Err(DbOpenError::ForeignInstance {
                        service: service.to_owned(),
                        found,
                        expected: instance.to_owned(),
                    })
                }
                Some((_, found)) if found != service => {
                    return Err(DbOpenError::ForeignService {
                        service: service.to_owned(),
                        found,
                    })
                }
                Some(_) => {}
                None => {
                    sqlx::query(
                        "INSERT INTO sovra_instance (id, instance, service, created_at) VALUES (1, $1, $2, $3)",
                    )
                    .bind(instance)
                    .bind(service)
                    .bind(crate::clock::Clock::now_ms(&crate::clock::SystemClock))
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| mig_err("runtime", &boot, e))?;
                }
            }
            for (component, list) in [("runtime", RUNTIME_MIGRATIONS), (service, migrations)] {
                for m in list {
                    let done: Option<(i64,)> = sqlx::query_as(
                        "SELECT version FROM sovra_migrations WHERE component = $1 AND version = $2",
                    )
                    .bind(component)
                    .bind(m.version)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(|e| mig_err(component, m, e))?;
                    if done.is_some() {
                        continue;
                    }
                    let mut tx = sqlx::Connection::begin(&mut *conn)
                        .await
                        .map_err(|e| mig_err(component, m, e))?;
                    sqlx::raw_sql(m.sql)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| mig_err(component, m, e))?;
                    sqlx::query(
                        "INSERT INTO sovra_migrations (component, version, name, applied_at) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(component)
                    .bind(m.version)
                    .bind(m.name)
                    .bind(crate::clock::Clock::now_ms(&crate::clock::SystemClock))
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| mig_err(component, m, e))?;
                    tx.commit().await.map_err(|e| mig_err(component, m, e))?;
                    tracing::info!(component, version = m.version, name = m.name, "migration applied");
                }
            }
            Ok(())
        }
        .await;
        if self.backend == Backend::Postgres {
            let _ = sqlx::query("SELECT pg_advisory_unlock(4242)")
                .execute(&mut *conn)
                .await;
        }
        result
    }

    /// Connections open and in use, per pool, for the metrics endpoint.
    pub fn pool_gauges(&self, service: &'static str) -> Vec<crate::metrics::Gauge> {
        use crate::metrics::Gauge;
        let mut pools = vec![("read", &self.read)];
        if self.backend == Backend::Sqlite {
            pools.push(("write", &self.write));
        }
        let mut out = Vec::new();
        // Counts since start of groups and of the calls they held.
        let mut counts = |names: [(&'static str, &'static str); 2],
                          labels: &[(&'static str, &str)],
                          (groups, members): (u64, u64)| {
            for ((name, help), n) in names.into_iter().zip([groups, members]) {
                out.push(Gauge::new(name, help, labels, n as f64));
            }
        };
        if let Some(stats) = self.commit_groups() {
            counts(
                [
                    (
                        "sovra_db_commit_groups",
                        "SQLite group commits (one fsync each) since start, by service",
                    ),
                    (
                        "sovra_db_grouped_transactions",
                        "SQLite write transactions committed in those groups since start, by service",
                    ),
                ],
                &[("service", service)],
                stats,
            );
        }
        for (kind, stats) in [
            ("write", self.write_batches()),
            ("read", self.read_batches()),
        ] {
            let Some(stats) = stats else {
                continue;
            };
            counts(
                [
                    (
                        "sovra_db_batches",
                        "PostgreSQL statements that ran concurrent calls together since start (guarded writes, point reads), by service and kind",
                    ),
                    (
                        "sovra_db_batched_calls",
                        "Calls run in those statements since start, by service and kind",
                    ),
                ],
                &[("service", service), ("kind", kind)],
                stats,
            );
        }
        for (pool, p) in pools {
            let (size, in_use) = (p.open() as f64, p.in_use() as f64);
            let l = [("service", service), ("pool", pool)];
            out.push(Gauge::new(
                "sovra_db_pool_connections_in_use",
                "Database connections checked out, by service and pool",
                &l,
                in_use,
            ));
            out.push(Gauge::new(
                "sovra_db_pool_connections_open",
                "Database connections open, by service and pool",
                &l,
                size,
            ));
        }
        out
    }

    /// SQLite's group commits and the transactions they held, since start.
    pub(crate) fn commit_groups(&self) -> Option<(u64, u64)> {
        self.writer.as_ref().map(|w| w.stats())
    }

    /// The pool for reads.
    pub fn read(&self) -> &Pool {
        &self.read
    }

    /// The pool for single-statement writes outside a transaction.
    pub fn write(&self) -> &Pool {
        &self.write
    }

    /// The pool for a single-statement write whose commit does not wait
    /// for the WAL flush: it is visible at once and durable a moment later.
    /// Only for a caller that acknowledges nothing until a later commit on
    /// [`Db::write`], which began after this one returned, has committed:
    /// PostgreSQL writes one log in order, so that commit's flush makes this
    /// one durable too. The feed sequencer's pass is such a commit (see
    /// commerce's `feed_durable`). Or for a write whose loss in a crash is
    /// harmless (the removal of a grant-outbox row identity acknowledged:
    /// lost, the change is delivered once more and changes nothing).
    /// SQLite's commits always flush (its group
    /// commit shares the fsync instead): there this is [`Db::write`].
    pub fn write_unflushed(&self) -> &Pool {
        self.unflushed.as_ref().unwrap_or(&self.write)
    }

    /// PostgreSQL's statements that ran concurrent guarded writes together
    /// since start, and the writes in them (see [`Writes::batched`]).
    ///
    /// [`Writes::batched`]: crate::writes::Writes::batched
    pub fn write_batches(&self) -> Option<(u64, u64)> {
        self.write_batcher.as_ref().map(|b| b.stats())
    }

    /// PostgreSQL's point reads run together since start, and the reads in
    /// them (see [`crate::lookup::Lookup`]).
    pub fn read_batches(&self) -> Option<(u64, u64)> {
        self.read_batcher.as_ref().map(|b| b.stats())
    }

    pub(crate) fn write_batcher(&self) -> Option<&Arc<Batcher<Batched>>> {
        self.write_batcher.as_ref()
    }

    pub(crate) fn read_batcher(&self) -> Option<&Arc<Batcher<Read>>> {
        self.read_batcher.as_ref()
    }

    /// Starts a write transaction.
    pub async fn begin(&self) -> Result<Tx, Error> {
        Ok(self.begin_tx().await?)
    }

    /// On SQLite, the writer to one transaction sent whole as one call
    /// when no group is open and no one else waits for it (see
    /// [`Solo`]); else a transaction, as [`Db::begin`].
    pub(crate) async fn begin_or_solo(&self) -> Result<Write, sqlx::Error> {
        match &self.writer {
            Some(w) => Ok(match w.begin_or_solo().await? {
                Begun::Group(tx) => Write::Tx(Tx(TxKind::Grouped(tx))),
                Begun::Solo(solo) => Write::Solo(solo),
            }),
            None => self.begin_tx().await.map(Write::Tx),
        }
    }

    /// Runs `sql` (statements, `;`-separated, bound to `args`) as a
    /// transaction of its own and returns the rows they returned. On SQLite
    /// that is one call when the writer is free (see [`Solo`]): every call
    /// there is a hand-off to the connection's worker thread and back.
    /// `Ok` means the writes are durable; on an error nothing of them is
    /// left.
    pub async fn run_whole(
        &self,
        sql: &str,
        args: AnyArguments<'_>,
    ) -> Result<Vec<AnyRow>, sqlx::Error> {
        match self.begin_or_solo().await? {
            Write::Solo(solo) => solo.run(sql, args).await,
            Write::Tx(mut tx) => {
                let rows = sqlx::query_with(sql, args).fetch_all(&mut *tx).await?;
                tx.commit().await?;
                Ok(rows)
            }
        }
    }

    pub(crate) async fn begin_tx(&self) -> Result<Tx, sqlx::Error> {
        Ok(Tx(match &self.writer {
            Some(w) => TxKind::Grouped(w.begin().await?),
            None => {
                let mut conn = self.write.acquire().await?;
                conn.begin().await?;
                TxKind::Plain(conn)
            }
        }))
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn close(&self) {
        if let Some(u) = &self.unflushed {
            u.close().await;
        }
        self.write.close().await;
        self.read.close().await;
    }
}

/// True when an error is a unique-constraint violation (both backends).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// The table of a unique-constraint violation, when `e` is one: what a
/// statement that writes several tables ([`crate::writes`]) maps it by.
pub fn unique_violation_table(e: &sqlx::Error) -> Option<&str> {
    match e {
        sqlx::Error::Database(d) if d.is_unique_violation() => d.table().or_else(|| {
            // SQLite names no table, only in its message:
            // "UNIQUE constraint failed: idempotency_keys.scope, …".
            d.message()
                .strip_prefix("UNIQUE constraint failed: ")
                .and_then(|cols| cols.split('.').next())
        }),
        _ => None,
    }
}

/// A SQLite database of its own for a unit test, in a fresh directory
/// (returned, for the test to remove), with `schema` made in one
/// transaction (which counts as a commit group).
#[cfg(test)]
pub(crate) async fn scratch_sqlite(schema: &str) -> (Db, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("sovra-scratch-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.join("t.db").display());
    let db = Db::connect("test", &url, 4).await.unwrap();
    let mut tx = db.begin().await.unwrap();
    sqlx::query(schema).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    (db, dir)
}
