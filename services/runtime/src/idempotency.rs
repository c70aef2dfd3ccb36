//! `request_id` idempotency: the first result of a mutation is stored in the
//! same transaction as the mutation, and a retry with the same id gets it back
//! without changing anything.

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::{
    auth::Caller,
    clock::Millis,
    db::{unique_violation_table, Db, Tx},
    error::Error,
    lookup::Lookup,
    writes::Insert,
};
use sqlx::{Any, Executor, Row};

/// A mutation's idempotency key, when the request carried a `request_id`.
#[derive(Debug, Clone)]
pub struct Idempotency {
    scope: String,
    request_id: String,
    method: &'static str,
    request_hash: String,
}

impl Idempotency {
    /// `None` when `request_id` is empty (the call is then not deduplicated).
    pub fn new<R: Message>(
        caller: &Caller,
        method: &'static str,
        request_id: &str,
        request: &R,
    ) -> Result<Option<Self>, Error> {
        Self::scoped(caller.principal(), method, request_id, request)
    }

    /// As [`Idempotency::new`] for a call without a signed-in caller (a
    /// customer signing up through a link): `scope` names what the request
    /// ids are unique within.
    pub fn scoped<R: Message>(
        scope: String,
        method: &'static str,
        request_id: &str,
        request: &R,
    ) -> Result<Option<Self>, Error> {
        if request_id.is_empty() {
            return Ok(None);
        }
        if request_id.len() > 128
            || !request_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        {
            return Err(Error::invalid(
                "request_id",
                "must be at most 128 letters, digits, '-', '_', '.' or ':' (a UUID is a good choice)",
            ));
        }
        let hash = Sha256::digest(request.encode_to_vec());
        Ok(Some(Self {
            scope,
            request_id: request_id.to_owned(),
            method,
            request_hash: B64.encode(hash),
        }))
    }

    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The stored first result, if this request_id was already used.
    pub async fn replay<'e, M: Message + Default, E: Executor<'e, Database = Any>>(
        &self,
        ex: E,
    ) -> Result<Option<M>, Error> {
        let row: Option<(String, String, String)> = sqlx::query_as(
            "SELECT method, request_hash, response FROM idempotency_keys WHERE scope = $1 AND request_id = $2",
        )
        .bind(&self.scope)
        .bind(&self.request_id)
        .fetch_optional(ex)
        .await?;
        self.answer(row)
    }

    /// The stored result of a row read by scope and request id: this
    /// request's answer, or INVALID_ARGUMENT when the id was used for
    /// another request.
    fn answer<M: Message + Default>(
        &self,
        row: Option<(String, String, String)>,
    ) -> Result<Option<M>, Error> {
        let Some((method, hash, response)) = row else {
            return Ok(None);
        };
        if method != self.method || hash != self.request_hash {
            return Err(Error::invalid(
                "request_id",
                "was already used for a different request: send a new request_id",
            ));
        }
        let bytes = B64.decode(response).map_err(Error::internal)?;
        Ok(Some(M::decode(bytes.as_slice()).map_err(Error::internal)?))
    }

    /// The row that stores `response`, written with the mutation's own
    /// (see [`crate::audit::add`]; map their errors with [`write_error`]).
    pub fn row<M: Message>(&self, response: &M, now: Millis) -> Insert {
        Insert::new(
            "idempotency_keys",
            &[
                "scope",
                "request_id",
                "method",
                "request_hash",
                "response",
                "created_at",
            ],
        )
        .value(&self.scope)
        .value(&self.request_id)
        .value(self.method)
        .value(&self.request_hash)
        .value(B64.encode(response.encode_to_vec()))
        .value(now)
    }
}

/// The error of writes that stored a result: a twin of the request that
/// stored its result first makes them ABORTED `REQUEST_IN_FLIGHT`.
pub fn write_error(e: sqlx::Error) -> Error {
    if unique_violation_table(&e) == Some("idempotency_keys") {
        // Two identical requests raced; the other one's commit won.
        Error::aborted(
            IN_FLIGHT,
            "a request with this request_id was being processed at the same time: retry to get its result",
        )
    } else {
        Error::from(e)
    }
}

/// Replays a stored result inside `tx`, when there is one.
pub async fn replay<M: Message + Default>(
    idem: &Option<Idempotency>,
    tx: &mut Tx,
) -> Result<Option<M>, Error> {
    match idem {
        Some(i) => i.replay(&mut **tx).await,
        None => Ok(None),
    }
}

/// Replays a stored result read outside any transaction (on PostgreSQL
/// together with concurrent reads of others: see [`Lookup`]): a retry is
/// answered before the work, without taking the writer. The write
/// transaction still checks again (two identical requests may race).
pub async fn replay_read<M: Message + Default>(
    idem: &Option<Idempotency>,
    db: &Db,
) -> Result<Option<M>, Error> {
    static STORED: Lookup = Lookup::new(
        "idempotency_keys",
        "method, request_hash, response",
        &["scope", "request_id"],
    );
    let Some(i) = idem else {
        return Ok(None);
    };
    let row = match STORED.get(db, &[&i.scope, &i.request_id]).await? {
        Some(r) => Some((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)),
        None => None,
    };
    i.answer(row)
}

/// For a mutation that skips the lookup before it writes (one statement
/// fewer): one whose work a retry may redo up to its commit, because it
/// only creates rows with fresh ids. When its commit failed with `err`
/// because the request id was already used, this is the stored result (or
/// the refusal of a different request under the same id); otherwise `err`.
pub async fn after_commit_failed<M: Message + Default>(
    idem: &Option<Idempotency>,
    db: &Db,
    err: Error,
) -> Result<M, Error> {
    if err.reason == IN_FLIGHT {
        if let Some(prev) = replay_read(idem, db).await? {
            return Ok(prev);
        }
    }
    Err(err)
}

/// The reason of a request id stored by a twin of the request meanwhile.
const IN_FLIGHT: &str = "REQUEST_IN_FLIGHT";

/// Forgets request_ids older than `before`.
pub async fn expire(db: &crate::db::Db, before: Millis) -> Result<u64, Error> {
    let mut tx = db.begin().await?;
    let r = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
        .bind(before)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(r.rows_affected())
}
