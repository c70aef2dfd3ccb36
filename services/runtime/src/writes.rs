//! Writes whose results nobody reads, gathered and sent together.
//!
//! A mutation's last rows (its audit event, its stored answer, the rows it
//! creates) are known before any of them is written. On PostgreSQL they go
//! as one statement, a data-modifying `WITH`: one round trip instead of one
//! per row. On SQLite each row is its own statement, but the rows go
//! together as one call of several statements: every call is a hand-off to
//! the connection's worker thread and back (two thread wake-ups), which
//! costs more CPU than writing a row does.
//!
//! A [`Writes`] may start with a guard: a statement that returns a row only
//! when the change may go ahead (a conditional claim, an insert that does
//! nothing on conflict). The other rows are written only when it did, in
//! the same statement on PostgreSQL, so that [`Writes::commit`] needs no
//! transaction of its own there: one statement is one transaction.
//!
//! A guard may also say how to decide many writes at once
//! ([`Writes::batched`]): concurrent [`Writes::commit_unflushed`] calls of
//! the same shape then go to PostgreSQL together, as one statement over
//! all their rows (see [`crate::batch`]).

use futures_util::future::BoxFuture;
use sqlx::{any::AnyArguments, Any, Arguments, Row};

use crate::{
    batch::Job,
    db::{Backend, Db, Tx},
    pool::Pool,
};

/// A value bound to a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Text(String),
    Int(i64),
    MaybeInt(Option<i64>),
    MaybeText(Option<String>),
}

impl Value {
    fn is_text(&self) -> bool {
        matches!(self, Value::Text(_) | Value::MaybeText(_))
    }

    /// Appends this value as JSON.
    fn write_json(&self, out: &mut String) {
        use std::fmt::Write;
        match self {
            Value::Text(s) | Value::MaybeText(Some(s)) => json_string(out, s),
            Value::Int(i) | Value::MaybeInt(Some(i)) => {
                let _ = write!(out, "{i}");
            }
            Value::MaybeInt(None) | Value::MaybeText(None) => out.push_str("null"),
        }
    }
}

/// Appends `s` as a JSON string.
pub(crate) fn json_string(out: &mut String, s: &str) {
    use std::fmt::Write;
    out.reserve(s.len() + 2);
    out.push('"');
    // Runs of characters that need no escape are copied whole.
    let mut from = 0;
    for (i, b) in s.bytes().enumerate() {
        if b == b'"' || b == b'\\' || b < 0x20 {
            out.push_str(&s[from..i]);
            match b {
                b'"' => out.push_str("\\\""),
                b'\\' => out.push_str("\\\\"),
                _ => {
                    let _ = write!(out, "\\u{b:04x}");
                }
            }
            from = i + 1;
        }
    }
    out.push_str(&s[from..]);
    out.push('"');
}

/// `items` as a JSON array of strings: a list bound as one value (on
/// PostgreSQL, read back with `json_array_elements_text($n::json)`).
pub fn json_text_array(items: &[&str]) -> String {
    let mut out = String::with_capacity(2 + items.iter().map(|s| s.len() + 3).sum::<usize>());
    out.push('[');
    for (k, s) in items.iter().enumerate() {
        if k > 0 {
            out.push(',');
        }
        json_string(&mut out, s);
    }
    out.push(']');
    out
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<Option<i64>> for Value {
    fn from(v: Option<i64>) -> Self {
        Value::MaybeInt(v)
    }
}

impl From<&Option<String>> for Value {
    fn from(v: &Option<String>) -> Self {
        Value::MaybeText(v.clone())
    }
}

/// One row for one table, its values in `columns`' order.
#[derive(Debug, Clone)]
pub struct Insert {
    table: &'static str,
    columns: &'static [&'static str],
    values: Vec<Value>,
}

impl Insert {
    pub fn new(table: &'static str, columns: &'static [&'static str]) -> Self {
        Self {
            table,
            columns,
            values: Vec::with_capacity(columns.len()),
        }
    }

    /// The next column's value.
    pub fn value(mut self, v: impl Into<Value>) -> Self {
        self.values.push(v.into());
        self
    }

    /// Appends this row's statement to `sql`, its parameters numbered from
    /// `first`.
    fn write_sql(&self, sql: &mut String, first: usize, source: Source) {
        use std::fmt::Write;
        debug_assert_eq!(self.columns.len(), self.values.len(), "{}", self.table);
        let _ = write!(sql, "INSERT INTO {} (", self.table);
        for (k, c) in self.columns.iter().enumerate() {
            if k > 0 {
                sql.push_str(", ");
            }
            sql.push_str(c);
        }
        sql.push_str(match source {
            Source::Values => ") VALUES (",
            Source::Guard | Source::Changed => ") SELECT ",
        });
        for n in first..first + self.values.len() {
            if n > first {
                sql.push_str(", ");
            }
            let _ = write!(sql, "${n}");
        }
        sql.push_str(match source {
            Source::Values => ")",
            Source::Guard => " FROM guard",
            Source::Changed => " WHERE changes() > 0",
        });
    }
}

/// Where a row's statement takes its row from.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// Always written: `VALUES (…)`.
    Values,
    /// Written when the guard returned a row (PostgreSQL, inside `WITH`).
    Guard,
    /// Written when the statement before it changed a row (SQLite, whose
    /// `changes()` counts the rows the last statement changed): after a
    /// guard, each row is written only if the one before it was, so only
    /// if the guard was.
    Changed,
}

impl Source {
    /// In a folded statement, guarded or not.
    fn when(guarded: bool) -> Self {
        if guarded {
            Source::Guard
        } else {
            Source::Values
        }
    }

    /// In a chain of SQLite statements, after a guard or not.
    fn chained(guarded: bool) -> Self {
        if guarded {
            Source::Changed
        } else {
            Source::Values
        }
    }
}

/// A statement written by hand, its values bound from `$1`.
#[derive(Debug, Clone)]
struct Statement {
    sql: String,
    values: Vec<Value>,
}

#[derive(Debug, Clone)]
enum Item {
    Insert(Insert),
    /// Can't join the `WITH`; runs on its own (SQLite's inline
    /// notification numbering, which PostgreSQL never uses).
    Alone(Statement),
}

/// Rows to write together; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct Writes {
    guard: Option<Statement>,
    /// The guard for many writes at once (see [`Writes::batched`]).
    batch_guard: Option<&'static str>,
    items: Vec<Item>,
}

impl Writes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes made only when `sql` returns a row. `sql` binds `values` from
    /// `$1`, returns at most one row, and must be a statement PostgreSQL
    /// takes inside `WITH` (an `UPDATE`, `INSERT` or `DELETE` with
    /// `RETURNING`).
    pub fn guarded(sql: impl Into<String>, values: Vec<Value>) -> Self {
        Self {
            guard: Some(Statement {
                sql: sql.into(),
                values,
            }),
            batch_guard: None,
            items: Vec::new(),
        }
    }

    /// Lets concurrent [`Writes::commit_unflushed`] calls of this shape run
    /// as one statement on PostgreSQL. `sql` is the guard for all of them:
    /// it reads `input i`, one row per call, whose column `n` numbers the
    /// call and `g1`, `g2`, … hold the guard's values in the order of its
    /// `$1`, `$2`, …; and it returns `n` for each call whose writes may go
    /// ahead (an `UPDATE … FROM input i … RETURNING i.n`). It must decide
    /// each row as the guard alone would, given the rows before it.
    pub fn batched(mut self, sql: &'static str) -> Self {
        self.batch_guard = Some(sql);
        self
    }

    pub fn insert(&mut self, row: Insert) {
        self.items.push(Item::Insert(row));
    }

    /// Whether a row for `table` is among the writes.
    pub fn inserts_into(&self, table: &str) -> bool {
        self.items
            .iter()
            .any(|i| matches!(i, Item::Insert(row) if row.table == table))
    }

    /// A statement that runs on its own, after the rows (see [`Item::Alone`]).
    pub fn statement(&mut self, sql: impl Into<String>, values: Vec<Value>) {
        self.items.push(Item::Alone(Statement {
            sql: sql.into(),
            values,
        }));
    }

    /// These writes as the tail of a statement written by hand whose own
    /// parameters are `$1` … `$(first - 1)`, so that they go in its round
    /// trip: on PostgreSQL, `, w0 AS (INSERT …), …` to join its `WITH`
    /// list; on SQLite, `; INSERT …` statements to follow it in the same
    /// call. Writes that can't (with a guard, or a statement that runs
    /// alone) come back whole, to run apart after it. `from_guard`: the
    /// rows are written only if the statement wrote, taken on PostgreSQL
    /// from its `WITH` item named `guard` (a row when it wrote), on SQLite
    /// each only if the statement before it changed a row.
    pub fn appended(
        self,
        backend: Backend,
        first: usize,
        from_guard: bool,
    ) -> (Appended, Option<Writes>) {
        if self.guard.is_some() || self.has_alone() {
            return (Appended::default(), Some(self));
        }
        let mut sql = String::with_capacity(256 * self.items.len());
        let mut values = Vec::new();
        let mut n = first;
        for (k, item) in self.items.into_iter().enumerate() {
            let Item::Insert(i) = item else {
                continue;
            };
            match backend {
                Backend::Postgres => {
                    let _ = std::fmt::Write::write_fmt(&mut sql, format_args!(", w{k} AS ("));
                    i.write_sql(&mut sql, n, Source::when(from_guard));
                    sql.push(')');
                }
                Backend::Sqlite => {
                    sql.push_str(";\n");
                    i.write_sql(&mut sql, n, Source::chained(from_guard));
                }
            }
            n += i.values.len();
            values.extend(i.values);
        }
        (Appended { sql, values }, None)
    }

    /// Writes in `tx`. False when the guard returned no row (nothing was
    /// written).
    pub async fn run(self, tx: &mut Tx) -> Result<bool, sqlx::Error> {
        if tx.backend() == Backend::Postgres {
            let (folded, alone) = self.fold();
            if let Some(f) = folded {
                if !f.run(&mut **tx).await? {
                    return Ok(false);
                }
            }
            for s in alone {
                query(&s.sql, s.values).execute(&mut **tx).await?;
            }
            return Ok(true);
        }
        if self.is_empty() {
            return Ok(true);
        }
        if self.has_alone() {
            return self.run_apart(tx).await;
        }
        let Chain { rows, guarded } = self.chain();
        let returned = sqlx::query_with(&rows.sql, rows.args)
            .fetch_all(&mut **tx)
            .await?;
        Ok(written(guarded, &returned))
    }

    fn is_empty(&self) -> bool {
        self.guard.is_none() && self.items.is_empty()
    }

    fn has_alone(&self) -> bool {
        self.items.iter().any(|i| matches!(i, Item::Alone(_)))
    }

    /// SQLite, with a statement that runs on its own: the guard, then the
    /// rows between such statements, each a call.
    async fn run_apart(self, tx: &mut Tx) -> Result<bool, sqlx::Error> {
        if let Some(g) = self.guard {
            if query(&g.sql, g.values)
                .fetch_optional(&mut **tx)
                .await?
                .is_none()
            {
                return Ok(false);
            }
        }
        let mut rows = Rows::default();
        for item in self.items {
            match item {
                Item::Insert(i) => rows.add(i, Source::Values),
                Item::Alone(s) => {
                    rows.run(tx).await?;
                    query(&s.sql, s.values).execute(&mut **tx).await?;
                }
            }
        }
        rows.run(tx).await?;
        Ok(true)
    }

    /// SQLite: the guard and the rows as one string of statements, for one
    /// call (every call is a hand-off to the connection's worker thread);
    /// after a guard, each row is written only if the statement before it
    /// changed a row (see [`Source::Changed`]). Without statements that
    /// run alone.
    fn chain(self) -> Chain {
        let mut rows = Rows::default();
        let guarded = self.guard.is_some();
        if let Some(g) = self.guard {
            rows.sql.push_str(&g.sql);
            rows.next += g.values.len();
            bind_all(&mut rows.args, g.values);
        }
        let source = Source::chained(guarded);
        for item in self.items {
            if let Item::Insert(i) = item {
                rows.add(i, source);
            }
        }
        Chain { rows, guarded }
    }

    /// Writes and commits, as one transaction of their own. On PostgreSQL,
    /// without a statement that must run alone, that is one statement: one
    /// round trip, no BEGIN, no COMMIT.
    pub async fn commit(self, db: &Db) -> Result<bool, sqlx::Error> {
        self.commit_on(db, db.write()).await
    }

    /// As [`Writes::commit`], but on PostgreSQL the commit does not wait
    /// for the WAL flush: the caller must not acknowledge the change before
    /// a later flushing commit (see [`Db::write_unflushed`]). Writes that
    /// need a transaction of their own flush as usual.
    /// Batched with concurrent calls of the same shape when it has a
    /// batch guard ([`Writes::batched`]).
    pub async fn commit_unflushed(self, db: &Db) -> Result<bool, sqlx::Error> {
        // The shape is worked out only where there is a batcher (PostgreSQL).
        let batch = db
            .write_batcher()
            .and_then(|b| Some((b, self.batch_shape()?)));
        match batch {
            Some((b, shape)) => {
                b.run(Batched {
                    writes: self,
                    shape,
                })
                .await
            }
            None => self.commit_on(db, db.write_unflushed()).await,
        }
    }

    /// Commits on `pool` as one statement (PostgreSQL; the batcher's call
    /// alone).
    pub(crate) async fn commit_folded(self, pool: &Pool) -> Result<bool, sqlx::Error> {
        match self.fold().0 {
            Some(f) => f.run(pool).await,
            None => Ok(true),
        }
    }

    /// What writes must share to be batched: the batch guard, every row's
    /// table and columns, and the kind of every value. None when these
    /// writes can't be batched.
    pub(crate) fn batch_shape(&self) -> Option<Shape> {
        let (guard, sql) = (self.guard.as_ref()?, self.batch_guard?);
        let mut rows = Vec::with_capacity(self.items.len());
        let mut texts = Vec::with_capacity(64);
        texts.extend(guard.values.iter().map(Value::is_text));
        for item in &self.items {
            match item {
                Item::Insert(i) => {
                    rows.push((i.table, i.columns));
                    texts.extend(i.values.iter().map(Value::is_text));
                }
                Item::Alone(_) => return None,
            }
        }
        Some(Shape { sql, rows, texts })
    }

    async fn commit_on(self, db: &Db, pool: &Pool) -> Result<bool, sqlx::Error> {
        if self.is_empty() {
            return Ok(true);
        }
        let alone = self.has_alone();
        let mut tx = match db.backend() {
            Backend::Postgres if !alone => return self.commit_folded(pool).await,
            // The whole transaction in one call when the writer is free.
            Backend::Sqlite if !alone => {
                let Chain { rows, guarded } = self.chain();
                let returned = db.run_whole(&rows.sql, rows.args).await?;
                return Ok(written(guarded, &returned));
            }
            Backend::Postgres | Backend::Sqlite => db.begin_tx().await?,
        };
        if !self.run(&mut tx).await? {
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The guard and the rows as one statement, and what must run alone.
    fn fold(self) -> (Option<Folded>, Vec<Statement>) {
        let mut args = AnyArguments::default();
        let guarded = self.guard.is_some();
        let mut inserts = Vec::new();
        let mut alone = Vec::new();
        for item in self.items {
            match item {
                Item::Insert(i) => inserts.push(i),
                Item::Alone(s) => alone.push(s),
            }
        }
        let mut sql = String::with_capacity(256 * (inserts.len() + 1));
        let mut n = 1;
        if let Some(g) = self.guard {
            sql.push_str("WITH guard AS (");
            sql.push_str(&g.sql);
            sql.push(')');
            n += g.values.len();
            bind_all(&mut args, g.values);
        }
        let Some(last) = inserts.pop() else {
            // Only a guard (or nothing): the guard is the statement.
            let folded = guarded.then(|| {
                sql.push_str(" SELECT 1 FROM guard");
                Folded {
                    sql,
                    args,
                    outcome: Outcome::Row,
                }
            });
            return (folded, alone);
        };
        for (k, i) in inserts.into_iter().enumerate() {
            sql.push_str(if sql.is_empty() { "WITH " } else { ", " });
            let _ = std::fmt::Write::write_fmt(&mut sql, format_args!("w{k} AS ("));
            i.write_sql(&mut sql, n, Source::when(guarded));
            sql.push(')');
            n += i.values.len();
            bind_all(&mut args, i.values);
        }
        if !sql.is_empty() {
            sql.push(' ');
        }
        last.write_sql(&mut sql, n, Source::when(guarded));
        bind_all(&mut args, last.values);
        let outcome = if guarded {
            Outcome::Written
        } else {
            Outcome::Always
        };
        (Some(Folded { sql, args, outcome }), alone)
    }
}

/// Writes as the tail of another statement (see [`Writes::appended`]).
#[derive(Debug, Default)]
pub struct Appended {
    /// To follow the statement's `WITH` list (PostgreSQL) or its last
    /// statement (SQLite).
    pub sql: String,
    /// To bind after the statement's own values.
    pub values: Vec<Value>,
}

impl Appended {
    /// Binds the values after those already bound to `q`.
    pub fn bind<'q>(
        self,
        mut q: sqlx::query::Query<'q, Any, AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, Any, AnyArguments<'q>> {
        for v in self.values {
            q = match v {
                Value::Text(s) => q.bind(s),
                Value::Int(i) => q.bind(i),
                Value::MaybeInt(i) => q.bind(i),
                Value::MaybeText(s) => q.bind(s),
            };
        }
        q
    }
}

/// What writes must share to go to PostgreSQL as one statement (see
/// [`Writes::batch_shape`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    /// The batch guard.
    sql: &'static str,
    /// Each row's table and columns.
    rows: Vec<(&'static str, &'static [&'static str])>,
    /// Whether each value, the guard's first, is text (else a number).
    texts: Vec<bool>,
}

impl Shape {
    /// One statement for all of `writes` (of this shape): their values go
    /// as one JSON parameter, a row each, numbered by their index; it
    /// returns the index of each one whose guard let it write.
    fn statement<'w>(
        &self,
        writes: impl Iterator<Item = &'w Writes>,
    ) -> (String, AnyArguments<'static>) {
        use std::fmt::Write;
        let guard_values = self.texts.len() - self.rows.iter().map(|r| r.1.len()).sum::<usize>();
        // The input's columns, in the order of the values.
        let mut names = Vec::with_capacity(self.texts.len());
        names.extend((1..=guard_values).map(|k| format!("g{k}")));
        for (t, (_, columns)) in self.rows.iter().enumerate() {
            names.extend((0..columns.len()).map(|c| format!("v{t}_{c}")));
        }
        let mut sql = String::with_capacity(512 + 64 * names.len());
        sql.push_str(
            "WITH input AS MATERIALIZED (SELECT * FROM json_to_recordset($1::json) AS i(n int8",
        );
        for (name, text) in names.iter().zip(&self.texts) {
            let _ = write!(sql, ", {name} {}", if *text { "text" } else { "int8" });
        }
        let _ = write!(sql, ")), guard AS ({})", self.sql);
        let mut next = guard_values;
        for (t, (table, columns)) in self.rows.iter().enumerate() {
            let _ = write!(
                sql,
                ", w{t} AS (INSERT INTO {table} ({}) SELECT ",
                columns.join(", ")
            );
            for (c, name) in names[next..next + columns.len()].iter().enumerate() {
                if c > 0 {
                    sql.push_str(", ");
                }
                let _ = write!(sql, "i.{name}");
            }
            sql.push_str(" FROM input i JOIN guard g ON g.n = i.n)");
            next += columns.len();
        }
        sql.push_str(" SELECT n FROM guard");

        let mut json = String::with_capacity(16 * 1024);
        json.push('[');
        for (n, w) in writes.enumerate() {
            if n > 0 {
                json.push(',');
            }
            let _ = write!(json, "{{\"n\":{n}");
            let guard = w.guard.iter().flat_map(|g| g.values.iter());
            let rows = w.items.iter().flat_map(|i| match i {
                Item::Insert(i) => i.values.iter(),
                Item::Alone(s) => s.values.iter(),
            });
            for (name, v) in names.iter().zip(guard.chain(rows)) {
                let _ = write!(json, ",\"{name}\":");
                v.write_json(&mut json);
            }
            json.push('}');
        }
        json.push(']');
        let mut args = AnyArguments::default();
        let _ = args.add(json);
        (sql, args)
    }
}

/// Guarded writes waiting for their turn in a batch (see [`crate::batch`]).
pub(crate) struct Batched {
    writes: Writes,
    shape: Shape,
}

impl Job for Batched {
    /// Whether the guard let the rows be written.
    type Out = bool;

    fn joins(&self, other: &Self) -> bool {
        self.shape == other.shape
    }

    fn alone(self, pool: &Pool) -> BoxFuture<'_, Result<bool, sqlx::Error>> {
        Box::pin(self.writes.commit_folded(pool))
    }

    fn together<'a>(jobs: &'a [Self], pool: &'a Pool) -> BoxFuture<'a, Option<Vec<bool>>> {
        Box::pin(async move {
            let (sql, args) = jobs
                .first()?
                .shape
                .statement(jobs.iter().map(|j| &j.writes));
            let rows = match sqlx::query_with(&sql, args).fetch_all(pool).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::debug!(error = %e, calls = jobs.len(), "a batch of writes failed; its calls run alone");
                    return None;
                }
            };
            let mut written = vec![false; jobs.len()];
            for row in rows {
                let n: i64 = row.try_get(0).ok()?;
                *written.get_mut(usize::try_from(n).ok()?)? = true;
            }
            Some(written)
        })
    }
}

/// Rows for SQLite, as one string of `INSERT`s (their parameters numbered
/// on from one to the next) and their values.
struct Rows {
    sql: String,
    args: AnyArguments<'static>,
    /// The next parameter's number.
    next: usize,
}

impl Default for Rows {
    fn default() -> Self {
        Self {
            sql: String::new(),
            args: AnyArguments::default(),
            next: 1,
        }
    }
}

impl Rows {
    fn add(&mut self, row: Insert, source: Source) {
        if !self.sql.is_empty() {
            self.sql.push_str(";\n");
        }
        row.write_sql(&mut self.sql, self.next, source);
        self.next += row.values.len();
        bind_all(&mut self.args, row.values);
    }

    /// Writes the rows gathered so far, if any, and starts over.
    async fn run(&mut self, tx: &mut Tx) -> Result<(), sqlx::Error> {
        if self.sql.is_empty() {
            return Ok(());
        }
        let Rows { sql, args, .. } = std::mem::take(self);
        sqlx::query_with(&sql, args).execute(&mut **tx).await?;
        Ok(())
    }
}

/// [`Writes::chain`]'s statements, and whether a guard leads them.
struct Chain {
    rows: Rows,
    guarded: bool,
}

/// Whether a chain's rows were written, from the rows its statements
/// returned: only a guard returns any.
fn written(guarded: bool, returned: &[sqlx::any::AnyRow]) -> bool {
    !guarded || !returned.is_empty()
}

struct Folded {
    sql: String,
    args: AnyArguments<'static>,
    outcome: Outcome,
}

/// How a folded statement tells whether its guard let it write.
enum Outcome {
    /// No guard: it always writes.
    Always,
    /// Its last row was written (every row depends on the guard).
    Written,
    /// It is the guard alone: it returned a row.
    Row,
}

impl Folded {
    async fn run<'c, E: sqlx::Executor<'c, Database = Any>>(
        self,
        ex: E,
    ) -> Result<bool, sqlx::Error> {
        let q = sqlx::query_with(&self.sql, self.args);
        Ok(match self.outcome {
            Outcome::Always => {
                q.execute(ex).await?;
                true
            }
            Outcome::Written => q.execute(ex).await?.rows_affected() > 0,
            Outcome::Row => q.fetch_optional(ex).await?.is_some(),
        })
    }
}

fn query(sql: &str, values: Vec<Value>) -> sqlx::query::Query<'_, Any, AnyArguments<'_>> {
    let mut args = AnyArguments::default();
    bind_all(&mut args, values);
    sqlx::query_with(sql, args)
}

/// Binds `values` in order, moving them (a row's text can be kilobytes).
fn bind_all(args: &mut AnyArguments<'_>, values: impl IntoIterator<Item = Value>) {
    for v in values {
        // Adding a value of a type Any supports cannot fail.
        let _ = match v {
            Value::Text(s) => args.add(s),
            Value::Int(i) => args.add(i),
            Value::MaybeInt(i) => args.add(i),
            Value::MaybeText(s) => args.add(s),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch SQLite database with a table of keys (`k`, claimed once)
    /// and a table of rows (`id` unique).
    async fn scratch() -> (Db, std::path::PathBuf) {
        crate::db::scratch_sqlite(
            "CREATE TABLE k (k TEXT PRIMARY KEY, claimed_by TEXT); \
             CREATE TABLE r (id TEXT PRIMARY KEY, n BIGINT); \
             INSERT INTO k (k) VALUES ('a'), ('b')",
        )
        .await
    }

    async fn ids(db: &Db) -> Vec<String> {
        sqlx::query_as::<_, (String,)>("SELECT id FROM r ORDER BY id")
            .fetch_all(db.read())
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.0)
            .collect()
    }

    fn row(id: &str, n: i64) -> Insert {
        Insert::new("r", &["id", "n"]).value(id).value(n)
    }

    /// Claims key `k` for `by`, writing rows `ids` with it.
    fn claim(k: &str, by: &str, ids: &[&str]) -> Writes {
        let mut w = Writes::guarded(
            "UPDATE k SET claimed_by = $2 WHERE k = $1 AND claimed_by IS NULL RETURNING k",
            vec![k.into(), by.into()],
        );
        for (n, id) in ids.iter().enumerate() {
            w.insert(row(id, n as i64));
        }
        w
    }

    #[tokio::test]
    async fn on_sqlite_guarded_rows_are_written_only_when_the_guard_is() {
        let (db, dir) = scratch().await;
        // Alone on the writer: one call, BEGIN to COMMIT.
        assert!(claim("a", "x", &["1", "2", "3"]).commit(&db).await.unwrap());
        assert!(!claim("a", "y", &["4", "5"]).commit(&db).await.unwrap());
        // Inside a transaction: the guard and the rows as one call.
        let mut tx = db.begin().await.unwrap();
        assert!(!claim("a", "z", &["6"]).run(&mut tx).await.unwrap());
        assert!(claim("b", "z", &["7", "8"]).run(&mut tx).await.unwrap());
        tx.commit().await.unwrap();
        assert_eq!(ids(&db).await, ["1", "2", "3", "7", "8"]);
        let (groups, transactions) = db.commit_groups().unwrap();
        assert_eq!((groups, transactions), (4, 4));
        db.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn on_sqlite_appended_rows_follow_a_statement_in_its_call() {
        let (db, dir) = scratch().await;
        let mut w = Writes::new();
        w.insert(row("1", 0));
        w.insert(row("2", 1));
        let (then, apart) = w.appended(Backend::Sqlite, 2, false);
        assert!(apart.is_none(), "plain rows append");
        assert_eq!(then.values.len(), 4);
        let sql = format!(
            "UPDATE k SET claimed_by = 'x' WHERE k = $1 RETURNING k{}",
            then.sql
        );
        let mut tx = db.begin().await.unwrap();
        let rows = then
            .bind(sqlx::query(&sql).bind("a"))
            .fetch_all(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(rows.len(), 1, "only the statement returns a row");
        assert_eq!(rows[0].try_get::<String, _>(0).unwrap(), "a");
        assert_eq!(ids(&db).await, ["1", "2"]);
        // A guard, or a statement that runs alone, can't be appended.
        assert!(claim("b", "y", &["3"])
            .appended(Backend::Sqlite, 2, false)
            .1
            .is_some());
        let mut alone = Writes::new();
        alone.statement("DELETE FROM r", vec![]);
        let (none, apart) = alone.appended(Backend::Postgres, 2, false);
        assert!(none.sql.is_empty() && apart.is_some());
        db.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn on_postgres_appended_rows_join_the_with_list_numbered_after_the_statement() {
        let mut w = Writes::new();
        w.insert(row("1", 0));
        w.insert(row("2", 1));
        let guarded = w.clone().appended(Backend::Postgres, 13, true).0;
        assert_eq!(
            guarded.sql,
            ", w0 AS (INSERT INTO r (id, n) SELECT $13, $14 FROM guard), w1 AS (INSERT INTO r (id, n) SELECT $15, $16 FROM guard)"
        );
        let then = w.appended(Backend::Postgres, 13, false).0;
        assert_eq!(
            then.sql,
            ", w0 AS (INSERT INTO r (id, n) VALUES ($13, $14)), w1 AS (INSERT INTO r (id, n) VALUES ($15, $16))"
        );
        assert_eq!(
            then.values,
            [
                Value::from("1"),
                Value::Int(0),
                Value::from("2"),
                Value::Int(1)
            ]
        );
    }

    #[tokio::test]
    async fn on_sqlite_a_failed_write_alone_leaves_nothing_and_the_writer_goes_on() {
        let (db, dir) = scratch().await;
        let mut w = Writes::new();
        w.insert(row("1", 0));
        w.insert(row("1", 1));
        assert!(w.commit(&db).await.is_err(), "a duplicate id must fail");
        // Nothing of it stayed, the key is unclaimed, and the next write
        // (alone again) goes through.
        assert!(claim("a", "x", &["2"]).commit(&db).await.unwrap());
        assert_eq!(ids(&db).await, ["2"]);
        db.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_sqlite_concurrent_claims_of_one_key_write_once() {
        let (db, dir) = scratch().await;
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let db = db.clone();
                tokio::spawn(async move {
                    let by = format!("c{i}");
                    let id = format!("{i:02}");
                    claim("a", &by, &[&id]).commit(&db).await.unwrap()
                })
            })
            .collect();
        let mut won = 0;
        for t in tasks {
            won += t.await.unwrap() as usize;
        }
        assert_eq!(won, 1, "one claim wins");
        assert_eq!(ids(&db).await.len(), 1, "only the winner's row is written");
        db.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn json_strings_escape_quotes_backslashes_and_control_characters_only() {
        let mut out = String::new();
        json_string(&mut out, "a\"b\\c\nd\u{1}é€𝄞");
        assert_eq!(out, r#""a\"b\\c\u000ad\u0001é€𝄞""#);
        let parsed: String = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed, "a\"b\\c\nd\u{1}é€𝄞");
    }
}
