//! The audit trail: every change a service makes, recorded in the change's own
//! transaction, readable per tenant.

use sovra_proto::common::v1 as pb;

use crate::{
    auth::{Caller, Ctx},
    clock::{to_timestamp, Millis},
    db::{Db, Tx},
    error::Error,
    idempotency::{remember, Idempotency},
    paging,
};

/// What a mutation changed, for the audit trail.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    pub tenant_id: &'a str,
    pub delegated: bool,
    pub action: &'a str,
    pub target: String,
}

/// The last step of every mutation: records `change` in the audit trail
/// (when something changed), remembers `resp` for retries of the same
/// request_id, and commits — all in the mutation's own transaction.
#[allow(clippy::too_many_arguments)]
pub async fn commit<M: prost::Message>(
    mut tx: Tx,
    now: Millis,
    ctx: &Ctx,
    change: Option<Change<'_>>,
    request_id: &str,
    idem: &Option<Idempotency>,
    resp: &M,
) -> Result<(), Error> {
    write(&mut tx, now, ctx, change, request_id, idem, resp).await?;
    tx.commit().await?;
    Ok(())
}

/// What [`commit`] writes, without committing: for a transaction that has
/// more to write after it.
#[allow(clippy::too_many_arguments)]
pub async fn write<M: prost::Message>(
    tx: &mut Tx,
    now: Millis,
    ctx: &Ctx,
    change: Option<Change<'_>>,
    request_id: &str,
    idem: &Option<Idempotency>,
    resp: &M,
) -> Result<(), Error> {
    let Some(c) = change else {
        return remember(idem, tx, resp, now).await;
    };
    let entry = AuditEntry {
        tenant_id: c.tenant_id,
        caller: &ctx.caller,
        delegated: c.delegated,
        action: c.action,
        target: c.target,
        request_id,
        trace_id: &ctx.trace_id,
    };
    match idem {
        // PostgreSQL takes both rows in one statement (a data-modifying
        // WITH): one round trip fewer for every mutation with a request id.
        Some(i) if tx.backend_name() == POSTGRES => {
            let sql = format!("WITH audit AS ({AUDIT_INSERT}) {}", i.insert_sql(12));
            let q = bind_entry(sqlx::query(&sql), now, entry);
            i.insert(q, resp, now, tx).await
        }
        _ => {
            record(tx, now, entry).await?;
            remember(idem, tx, resp, now).await
        }
    }
}

/// sqlx's name for the PostgreSQL backend of an `AnyConnection`.
const POSTGRES: &str = "PostgreSQL";

/// One audit row; binds `$1` to `$11` (see [`bind_entry`]).
const AUDIT_INSERT: &str =
    "INSERT INTO audit_events (id, seq_time, tenant_id, actor_kind, actor_id, \
     actor_tenant_id, delegated, action, target, result, request_id, trace_id) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'SUCCEEDED', $10, $11)";

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Binds an audit row's eleven values, in [`AUDIT_INSERT`]'s order.
fn bind_entry<'q>(q: AnyQuery<'q>, now: Millis, e: AuditEntry<'q>) -> AnyQuery<'q> {
    let (kind, actor_id, actor_tenant) = match e.caller {
        Caller::User(u) => ("USER", u.user_id.as_str(), u.tenant_id.as_str()),
        Caller::Operator => ("OPERATOR", "operator", ""),
        Caller::Service(s) => ("SERVICE", s.as_str(), ""),
    };
    // UUIDv7 ids are monotonic within a process, so events in the same
    // millisecond keep their order.
    q.bind(uuid::Uuid::now_v7().simple().to_string())
        .bind(now)
        .bind(e.tenant_id)
        .bind(kind)
        .bind(actor_id)
        .bind(actor_tenant)
        .bind(e.delegated as i64)
        .bind(e.action)
        .bind(e.target)
        .bind(e.request_id)
        .bind(e.trace_id)
}

/// One change to record.
#[derive(Debug, Clone)]
pub struct AuditEntry<'a> {
    /// The tenant the change was made in.
    pub tenant_id: &'a str,
    pub caller: &'a Caller,
    /// True when a partner user acted through delegated administration.
    pub delegated: bool,
    pub action: &'a str,
    pub target: String,
    pub request_id: &'a str,
    pub trace_id: &'a str,
}

/// Records feature-flag changes from a configuration reload, each in the
/// tenant it narrows (instance-wide ones under no tenant), by the operator.
pub async fn record_flag_changes(
    db: &Db,
    now: Millis,
    changes: &[crate::features::FlagChange],
) -> Result<(), Error> {
    let mut tx = db.begin().await?;
    for c in changes {
        record(
            &mut tx,
            now,
            AuditEntry {
                tenant_id: c.tenant.as_deref().unwrap_or(""),
                caller: &Caller::Operator,
                delegated: false,
                action: "configuration.feature_flag.change",
                target: c.to_string(),
                request_id: "",
                trace_id: "",
            },
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Records a successful change (rejected calls write nothing, audit included).
pub async fn record(tx: &mut Tx, now: Millis, e: AuditEntry<'_>) -> Result<(), Error> {
    bind_entry(sqlx::query(AUDIT_INSERT), now, e)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

type Row = (
    String,
    i64,
    String,
    String,
    String,
    String,
    i64,
    String,
    String,
    String,
    String,
    String,
);

/// A tenant's events, newest first.
pub async fn list(
    db: &Db,
    tenant_id: &str,
    page_size: i32,
    page_token: &str,
) -> Result<(Vec<pb::AuditEvent>, String), Error> {
    let size = paging::page_size(page_size)?;
    let after = paging::decode_token("audit", page_token, 2)?;
    let (before_time, before_id) = match &after {
        Some(v) => (
            v[0].parse::<i64>().map_err(|_| {
                Error::invalid("page_token", "is not a page token this list returned")
            })?,
            v[1].clone(),
        ),
        None => (i64::MAX, String::new()),
    };
    let mut rows: Vec<Row> = sqlx::query_as(
        "SELECT id, seq_time, tenant_id, actor_kind, actor_id, actor_tenant_id, delegated, action, target, result, \
         request_id, trace_id FROM audit_events WHERE tenant_id = $1 \
         AND (seq_time < $2 OR (seq_time = $2 AND ($3 = '' OR id < $3))) \
         ORDER BY seq_time DESC, id DESC LIMIT $4",
    )
    .bind(tenant_id)
    .bind(before_time)
    .bind(before_id)
    .bind(size + 1)
    .fetch_all(db.read())
    .await?;
    let next = paging::cut(&mut rows, size, "audit", |r| {
        vec![r.1.to_string(), r.0.clone()]
    });
    let events = rows
        .into_iter()
        .map(|r| pb::AuditEvent {
            id: r.0,
            time: Some(to_timestamp(r.1)),
            tenant_id: r.2,
            actor_kind: match r.3.as_str() {
                "USER" => pb::ActorKind::User,
                "OPERATOR" => pb::ActorKind::Operator,
                _ => pb::ActorKind::Service,
            } as i32,
            actor_id: r.4,
            actor_tenant_id: r.5,
            delegated: r.6 != 0,
            action: r.7,
            target: r.8,
            result: r.9,
            request_id: r.10,
            trace_id: r.11,
        })
        .collect();
    Ok((events, next))
}
