//! Sovra's connection pool: sqlx's pool, minus its round trip on release.
//!
//! sqlx 0.8 pings every connection taken back into its pool (on PostgreSQL
//! a Sync and its ReadyForQuery), with no option to turn it off: a round
//! trip after every statement run on a pool, as many as the statements
//! themselves on a request that runs one statement per call. Here sqlx's
//! pool only makes connections (with its connect options and
//! `after_connect`); each is detached from it and kept in [`Pool`]. A
//! connection whose last call finished is parked as it is and handed out
//! again; one whose call was cut off (its future dropped, or its
//! transaction dropped uncommitted) is brought back to a known state first,
//! off the caller's path, or closed.

use std::{
    fmt,
    ops::{Deref, DerefMut},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use futures_util::{
    future::BoxFuture,
    stream::{self, BoxStream, StreamExt},
};
use sqlx::{
    any::{AnyQueryResult, AnyRow, AnyStatement, AnyTypeInfo},
    pool::PoolConnection,
    Any, AnyConnection, AnyPool, Connection, Describe, Either, Execute, Executor,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

// A parked connection idle this long is pinged before it is handed out (a
// dead one is then replaced); a busy one is known to be alive.
use crate::db::PING_AFTER_IDLE;

/// A pool of connections; `&Pool` runs queries like `&AnyPool`.
#[derive(Clone)]
pub struct Pool(Kind);

#[derive(Clone)]
enum Kind {
    /// Connections detached from sqlx's pool and parked here.
    Parking(Arc<Inner>),
    /// sqlx's pool as it is: SQLite's single writing connection, which the
    /// group commit ([`crate::group_commit`]) takes from that pool too.
    Sqlx(AnyPool),
}

struct Inner {
    /// Makes connections; holds none for long.
    maker: AnyPool,
    /// One per connection in use or being made: at most `max` at once.
    permits: Arc<Semaphore>,
    max: usize,
    parked: Mutex<Vec<Parked>>,
    /// Connections open: parked, in use, or being brought back.
    open: AtomicUsize,
    acquire_timeout: Duration,
}

struct Parked {
    conn: AnyConnection,
    since: Instant,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("open", &self.open())
            .field("in_use", &self.in_use())
            .finish()
    }
}

impl Pool {
    /// Up to `max` connections made by `maker`, parked here between calls.
    pub fn parking(maker: AnyPool, max: usize, acquire_timeout: Duration) -> Pool {
        Pool(Kind::Parking(Arc::new(Inner {
            maker,
            permits: Arc::new(Semaphore::new(max.max(1))),
            max: max.max(1),
            parked: Mutex::new(Vec::new()),
            open: AtomicUsize::new(0),
            acquire_timeout,
        })))
    }

    /// sqlx's pool as it is (its ping on release included).
    pub fn sqlx(pool: AnyPool) -> Pool {
        Pool(Kind::Sqlx(pool))
    }

    /// A connection: a parked one if any (the latest parked first), a new
    /// one otherwise; waits while `max` are in use.
    pub async fn acquire(&self) -> Result<Conn, sqlx::Error> {
        let inner = match &self.0 {
            Kind::Sqlx(p) => {
                return Ok(Conn {
                    held: Some(Held::Sqlx(p.acquire().await?)),
                    state: State::Ready,
                })
            }
            Kind::Parking(inner) => inner,
        };
        let permit =
            tokio::time::timeout(inner.acquire_timeout, inner.permits.clone().acquire_owned())
                .await
                .map_err(|_| sqlx::Error::PoolTimedOut)?
                .map_err(|_| sqlx::Error::PoolClosed)?;
        let parked = |conn| Conn {
            held: Some(Held::Parked {
                conn,
                pool: inner.clone(),
                permit,
            }),
            state: State::Ready,
        };
        loop {
            let Some(p) = inner.parked().pop() else { break };
            let mut conn = p.conn;
            if p.since.elapsed() >= PING_AFTER_IDLE && conn.ping().await.is_err() {
                inner.open.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            return Ok(parked(conn));
        }
        let conn = inner.maker.acquire().await?.detach();
        inner.open.fetch_add(1, Ordering::Relaxed);
        Ok(parked(conn))
    }

    /// Connections open.
    pub fn open(&self) -> usize {
        match &self.0 {
            Kind::Parking(inner) => inner.open.load(Ordering::Relaxed),
            Kind::Sqlx(p) => p.size() as usize,
        }
    }

    /// Connections handed out (or being brought back).
    pub fn in_use(&self) -> usize {
        match &self.0 {
            Kind::Parking(inner) => inner.max - inner.permits.available_permits(),
            Kind::Sqlx(p) => (p.size() as usize).saturating_sub(p.num_idle()),
        }
    }

    /// Closes the parked connections and refuses new callers; connections
    /// in use close when they come back.
    pub async fn close(&self) {
        let inner = match &self.0 {
            Kind::Sqlx(p) => return p.close().await,
            Kind::Parking(inner) => inner,
        };
        inner.permits.close();
        let parked = std::mem::take(&mut *inner.parked());
        for p in parked {
            inner.open.fetch_sub(1, Ordering::Relaxed);
            let _ = p.conn.close().await;
        }
        inner.maker.close().await;
    }
}

impl Inner {
    fn parked(&self) -> std::sync::MutexGuard<'_, Vec<Parked>> {
        self.parked.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn park(&self, conn: AnyConnection) {
        self.parked().push(Parked {
            conn,
            since: Instant::now(),
        });
    }
}

/// What a connection handed out is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between calls: parked as it is when dropped.
    Ready,
    /// In a call, or a call was cut off: its answer may still be coming.
    Busy,
    /// In a transaction ([`Conn::begin`]) not known to be over: from
    /// before its `BEGIN` until its `COMMIT` answered.
    InTransaction,
}

/// A connection from a [`Pool`]; goes back to it when dropped.
pub struct Conn {
    /// Until dropped.
    held: Option<Held>,
    state: State,
}

enum Held {
    Parked {
        conn: AnyConnection,
        pool: Arc<Inner>,
        /// Held until the connection is parked again or closed, so the pool
        /// never has more than `max` open.
        permit: OwnedSemaphorePermit,
    },
    Sqlx(PoolConnection<Any>),
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn").field("state", &self.state).finish()
    }
}

impl Conn {
    /// Runs `BEGIN`: until [`Conn::commit`], dropping this connection
    /// rolls the transaction back.
    pub async fn begin(&mut self) -> Result<(), sqlx::Error> {
        self.state = State::InTransaction;
        self.raw()?.execute("BEGIN").await?;
        Ok(())
    }

    /// Commits the transaction [`Conn::begin`] opened.
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        self.raw()?.execute("COMMIT").await?;
        self.state = State::Ready;
        Ok(())
    }

    /// The connection (an error only after it was given back, which
    /// `Drop` alone does).
    fn raw(&mut self) -> Result<&mut AnyConnection, sqlx::Error> {
        match &mut self.held {
            Some(Held::Parked { conn, .. }) => Ok(conn),
            Some(Held::Sqlx(c)) => Ok(c),
            None => Err(sqlx::Error::PoolClosed),
        }
    }
}

impl Deref for Conn {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        match &self.held {
            Some(Held::Parked { conn, .. }) => conn,
            Some(Held::Sqlx(c)) => c,
            None => unreachable!("a connection is held until dropped"),
        }
    }
}

impl DerefMut for Conn {
    /// Direct use (a transaction's statements, a migration): the
    /// connection counts as busy from here until its transaction commits
    /// or it is brought back.
    fn deref_mut(&mut self) -> &mut AnyConnection {
        if self.state == State::Ready {
            self.state = State::Busy;
        }
        match &mut self.held {
            Some(Held::Parked { conn, .. }) => conn,
            Some(Held::Sqlx(c)) => c,
            None => unreachable!("a connection is held until dropped"),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // sqlx's own connection goes back to sqlx's pool as usual.
        let Some(Held::Parked {
            mut conn,
            pool,
            permit,
        }) = self.held.take()
        else {
            return;
        };
        let state = self.state;
        if state == State::Ready && !pool.permits.is_closed() {
            pool.park(conn);
            drop(permit);
            return;
        }
        // Cut off mid-call or mid-transaction (or the pool closed): the
        // ping waits out any answer still coming and the rollback ends the
        // transaction, off the caller's path; a connection that fails
        // either is closed.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            pool.open.fetch_sub(1, Ordering::Relaxed);
            return;
        };
        rt.spawn(async move {
            let back = async {
                conn.ping().await?;
                if state == State::InTransaction {
                    conn.execute("ROLLBACK").await?;
                }
                Ok::<(), sqlx::Error>(())
            }
            .await;
            if back.is_ok() && !pool.permits.is_closed() {
                pool.park(conn);
            } else {
                pool.open.fetch_sub(1, Ordering::Relaxed);
                let _ = conn.close().await;
            }
            drop(permit);
        });
    }
}

/// Runs one call on a connection from `pool`, marked busy until it answers
/// (one cut off is brought back before it is parked again).
macro_rules! on_conn {
    ($pool:expr, |$c:ident| $call:expr) => {{
        let mut conn = $pool.acquire().await?;
        conn.state = State::Busy;
        let $c = conn.raw()?;
        let out = $call.await;
        conn.state = State::Ready;
        out
    }};
}

impl<'p> Executor<'p> for &'_ Pool {
    type Database = Any;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<AnyQueryResult, AnyRow>, sqlx::Error>>
    where
        E: 'q + Execute<'q, Any>,
    {
        if let Kind::Sqlx(p) = &self.0 {
            return p.fetch_many(query);
        }
        let pool = self.clone();
        // The answer is read whole before the connection goes back: every
        // caller reads a bounded page.
        stream::once(async move {
            let all = async {
                Ok::<_, sqlx::Error>(on_conn!(pool, |c| c.fetch_many(query).collect::<Vec<_>>()))
            };
            all.await.unwrap_or_else(|e| vec![Err(e)])
        })
        .flat_map(stream::iter)
        .boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<AnyRow>, sqlx::Error>>
    where
        E: 'q + Execute<'q, Any>,
    {
        let pool = self.clone();
        Box::pin(async move { on_conn!(pool, |c| c.fetch_optional(query)) })
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [AnyTypeInfo],
    ) -> BoxFuture<'e, Result<AnyStatement<'q>, sqlx::Error>> {
        let pool = self.clone();
        Box::pin(async move { on_conn!(pool, |c| c.prepare_with(sql, parameters)) })
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> BoxFuture<'e, Result<Describe<Any>, sqlx::Error>> {
        let pool = self.clone();
        Box::pin(async move { on_conn!(pool, |c| c.describe(sql)) })
    }
}
