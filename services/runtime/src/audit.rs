//! The audit trail: every change a service makes, recorded in the change's own
//! transaction, readable per tenant.

use sovra_proto::common::v1 as pb;

use crate::{
    auth::{Caller, Ctx},
    clock::{to_timestamp, Millis},
    db::{Db, Tx},
    error::Error,
    idempotency::{write_error, Idempotency},
    paging,
    writes::{Insert, Writes},
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
    let mut w = Writes::new();
    add(&mut w, now, ctx, change, request_id, idem, resp);
    w.run(tx).await.map_err(write_error)?;
    Ok(())
}

/// Adds what [`write`] writes to `w`: for a mutation that sends its rows
/// together (map their errors with [`write_error`]).
#[allow(clippy::too_many_arguments)]
pub fn add<M: prost::Message>(
    w: &mut Writes,
    now: Millis,
    ctx: &Ctx,
    change: Option<Change<'_>>,
    request_id: &str,
    idem: &Option<Idempotency>,
    resp: &M,
) {
    if let Some(c) = change {
        w.insert(row(
            now,
            AuditEntry {
                tenant_id: c.tenant_id,
                caller: &ctx.caller,
                delegated: c.delegated,
                action: c.action,
                target: c.target,
                request_id,
                trace_id: &ctx.trace_id,
            },
        ));
    }
    if let Some(i) = idem {
        w.insert(i.row(resp, now));
    }
}

/// One audit row.
fn row(now: Millis, e: AuditEntry<'_>) -> Insert {
    let (kind, actor_id, actor_tenant) = match e.caller {
        Caller::User(u) => ("USER", u.user_id.as_str(), u.tenant_id.as_str()),
        Caller::Operator => ("OPERATOR", "operator", ""),
        Caller::Service(s) => ("SERVICE", s.as_str(), ""),
    };
    Insert::new(
        "audit_events",
        &[
            "id",
            "seq_time",
            "tenant_id",
            "actor_kind",
            "actor_id",
            "actor_tenant_id",
            "delegated",
            "action",
            "target",
            "result",
            "request_id",
            "trace_id",
        ],
    )
    // UUIDv7 ids are monotonic within a process, so events in the same
    // millisecond keep their order.
    .value(uuid::Uuid::now_v7().simple().to_string())
    .value(now)
    .value(e.tenant_id)
    .value(kind)
    .value(actor_id)
    .value(actor_tenant)
    .value(e.delegated as i64)
    .value(e.action)
    .value(e.target)
    .value("SUCCEEDED")
    .value(e.request_id)
    .value(e.trace_id)
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
    let mut w = Writes::new();
    w.insert(row(now, e));
    w.run(tx).await?;
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
