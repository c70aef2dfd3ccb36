//! The baselines, served by `sovra-bench baseline` in a process of its own
//! (so its CPU is measured as Sovra's is). They answer identity's
//! `CheckAccess`, so the messages are the same size as Sovra's:
//! - B0 `echo`: a bare tonic unary answer;
//! - B1 `insert`: a one-row INSERT transaction through sqlx;
//! - B2 `select`: a one-row primary-key SELECT through sqlx;
//!
//! over sqlx's own pool as it comes (not Sovra's `sovra_runtime::pool`),
//! with Sovra's pool sizes and durability (`Db::connect`: SQLite WAL with
//! synchronous=FULL and one writing connection; PostgreSQL with
//! synchronous_commit on, its default).

use std::net::SocketAddr;

use sovra_proto::identity::v1 as pb;
use sovra_runtime::db::{Db, Migration, SQLITE_SETTINGS};
use sqlx::{any::AnyPoolOptions, AnyPool, Executor};
use tonic::{transport::server::TcpIncoming, Request, Response, Status};

/// Rows B2 selects from.
pub const SEEDED: u64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Echo,
    Insert,
    Select,
}

#[derive(Clone)]
struct Baseline {
    mode: Mode,
    /// sqlx's pool over the baseline's database (B1 and B2).
    db: Option<AnyPool>,
}

fn answer() -> pb::CheckAccessResponse {
    pb::CheckAccessResponse {
        allowed: true,
        basis: pb::AccessBasis::OwnRole as i32,
        reason: "global administrator of tenant bench: allowed".into(),
    }
}

fn internal(e: sqlx::Error) -> Status {
    Status::internal(e.to_string())
}

#[tonic::async_trait]
impl pb::access_service_server::AccessService for Baseline {
    async fn check_access(
        &self,
        req: Request<pb::CheckAccessRequest>,
    ) -> Result<Response<pb::CheckAccessResponse>, Status> {
        let r = req.into_inner();
        match (self.mode, &self.db) {
            (Mode::Echo, _) => {}
            (Mode::Insert, Some(db)) => {
                let mut tx = db.begin().await.map_err(internal)?;
                sqlx::query("INSERT INTO bench_rows (id, payload, created_at) VALUES ($1, $2, $3)")
                    .bind(uuid::Uuid::now_v7().to_string())
                    .bind(&r.user_id)
                    .bind(0i64)
                    .execute(&mut *tx)
                    .await
                    .map_err(internal)?;
                tx.commit().await.map_err(internal)?;
            }
            (Mode::Select, Some(db)) => {
                let found: Option<(String,)> =
                    sqlx::query_as("SELECT payload FROM bench_rows WHERE id = $1")
                        .bind(&r.tenant_id)
                        .fetch_optional(db)
                        .await
                        .map_err(internal)?;
                if found.is_none() {
                    return Err(Status::not_found(r.tenant_id));
                }
            }
            _ => return Err(Status::failed_precondition("no database")),
        }
        Ok(Response::new(answer()))
    }

    async fn apply_delegated_grant(
        &self,
        _: Request<pb::ApplyDelegatedGrantRequest>,
    ) -> Result<Response<pb::ApplyDelegatedGrantResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
}

/// The row B2 reads for sequence number `n`.
pub fn seeded_id(n: u64) -> String {
    format!("row-{:08}", n % SEEDED)
}

/// Serves `mode` on `listen` over `database`; prints the bound address on
/// the first line of stdout.
pub async fn serve(listen: SocketAddr, mode: Mode, database: &str) -> anyhow::Result<()> {
    let db = match mode {
        Mode::Echo => None,
        _ => {
            let db = Db::connect("baseline", database, 8).await?;
            db.prepare(
                "bench",
                "baseline",
                &[Migration {
                    version: 1,
                    name: "bench_rows",
                    sql: "CREATE TABLE bench_rows (id TEXT PRIMARY KEY, payload TEXT NOT NULL, created_at BIGINT NOT NULL)",
                }],
            )
            .await?;
            sqlx::query("DELETE FROM bench_rows")
                .execute(db.write())
                .await?;
            let mut tx = db.begin().await?;
            for n in 0..SEEDED {
                sqlx::query("INSERT INTO bench_rows (id, payload, created_at) VALUES ($1, $2, 0)")
                    .bind(seeded_id(n))
                    .bind("payload")
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            db.close().await;
            // Sovra's pool sizes: SQLite writes through one connection.
            let sqlite = database.starts_with("sqlite:");
            let max = match (mode, sqlite) {
                (Mode::Insert, true) => 1,
                _ => 8,
            };
            Some(sqlx_pool(database, sqlite, max).await?)
        }
    };
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("{}", listener.local_addr()?);
    // Bound here to print the port; served with tonic's own default socket
    // options (TCP_NODELAY, as `Server::serve` sets and as Sovra's listener
    // does): without it the baselines would coalesce replies behind Nagle's
    // algorithm, fewer segments and less CPU than a tonic server sends.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(pb::access_service_server::AccessServiceServer::new(
            Baseline { mode, db },
        ))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}

/// sqlx's pool over `database` with `max` connections and Sovra's
/// durability: on SQLite WAL with synchronous=FULL, on PostgreSQL its
/// default synchronous_commit (on).
async fn sqlx_pool(database: &str, sqlite: bool, max: u32) -> anyhow::Result<AnyPool> {
    Ok(AnyPoolOptions::new()
        .max_connections(max)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if sqlite {
                    conn.execute(SQLITE_SETTINGS).await?;
                }
                Ok(())
            })
        })
        .connect(database)
        .await?)
}
