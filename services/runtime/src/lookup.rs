//! Point reads by key that concurrent callers share: on PostgreSQL, reads
//! of one [`Lookup`] waiting at the same time go as one statement, a join
//! of their keys with the table (see [`crate::batch`]). On SQLite, whose
//! reads cost no round trip, each runs alone.

use std::sync::OnceLock;

use futures_util::future::BoxFuture;
use sqlx::{any::AnyRow, Row};

use crate::{batch::Job, db::Db, pool::Pool};

/// A read of at most one row of `table` by the values of its `keys`
/// columns (text), returning `columns`.
pub struct Lookup {
    table: &'static str,
    /// Plain column names, comma-separated.
    columns: &'static str,
    keys: &'static [&'static str],
    /// The statement for one key, and for many.
    sql: OnceLock<(String, String)>,
}

impl Lookup {
    pub const fn new(
        table: &'static str,
        columns: &'static str,
        keys: &'static [&'static str],
    ) -> Self {
        Self {
            table,
            columns,
            keys,
            sql: OnceLock::new(),
        }
    }

    fn sql(&self) -> &(String, String) {
        self.sql.get_or_init(|| {
            let (table, columns) = (self.table, self.columns);
            // One condition per key column, given its number (from 1) and name.
            let keyed = |cond: &dyn Fn(usize, &str) -> String| {
                let conds: Vec<String> = (self.keys.iter().enumerate())
                    .map(|(i, k)| cond(i + 1, k))
                    .collect();
                conds.join(" AND ")
            };
            let one = keyed(&|i, k| format!("{k} = ${i}"));
            let joined = keyed(&|i, k| format!("t.{k} = k.k{i}"));
            let prefixed = columns
                .split(',')
                .map(|c| format!("t.{}", c.trim()))
                .collect::<Vec<_>>()
                .join(", ");
            let typed = (1..=self.keys.len())
                .map(|i| format!(", k{i} text"))
                .collect::<String>();
            (
                format!("SELECT {columns} FROM {table} WHERE {one}"),
                format!(
                    "SELECT {prefixed}, k.n AS batch_n FROM json_to_recordset($1::json) \
                     AS k(n int8{typed}) JOIN {table} t ON {joined}"
                ),
            )
        })
    }

    /// The row whose key columns hold `key` (in `keys`' order), if any. Its
    /// columns are `columns`, in order (a batched read's row has one more,
    /// after them).
    pub async fn get(&'static self, db: &Db, key: &[&str]) -> Result<Option<AnyRow>, sqlx::Error> {
        let read = Read {
            lookup: self,
            key: key.iter().map(|k| (*k).to_owned()).collect(),
        };
        match db.read_batcher() {
            Some(b) => b.run(read).await,
            None => read.alone(db.read()).await,
        }
    }
}

/// A point read waiting for its turn in a batch.
pub(crate) struct Read {
    lookup: &'static Lookup,
    key: Vec<String>,
}

impl Job for Read {
    type Out = Option<AnyRow>;

    fn joins(&self, other: &Self) -> bool {
        std::ptr::eq(self.lookup, other.lookup)
    }

    fn alone(self, pool: &Pool) -> BoxFuture<'_, Result<Option<AnyRow>, sqlx::Error>> {
        Box::pin(async move {
            let mut q = sqlx::query(&self.lookup.sql().0);
            for k in self.key {
                q = q.bind(k);
            }
            q.fetch_optional(pool).await
        })
    }

    fn together<'a>(
        jobs: &'a [Self],
        pool: &'a Pool,
    ) -> BoxFuture<'a, Option<Vec<Option<AnyRow>>>> {
        Box::pin(async move {
            let lookup = jobs.first()?.lookup;
            let mut json = String::with_capacity(jobs.len() * 96);
            json.push('[');
            for (n, j) in jobs.iter().enumerate() {
                if n > 0 {
                    json.push(',');
                }
                json.push_str(&format!("{{\"n\":{n}"));
                for (i, k) in j.key.iter().enumerate() {
                    json.push_str(&format!(",\"k{}\":", i + 1));
                    crate::writes::json_string(&mut json, k);
                }
                json.push('}');
            }
            json.push(']');
            // Planned on each run, on the table as it is: a plan kept from
            // when the table was small joins by a hash over a sequential
            // scan, and keeps doing so as the table grows (until its next
            // ANALYZE). A fresh plan reads the index; planning costs a
            // fraction of the batch.
            let rows = match sqlx::query(&lookup.sql().1)
                .bind(json)
                .persistent(false)
                .fetch_all(pool)
                .await
            {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::debug!(error = %e, calls = jobs.len(), "a batch of reads failed; its calls run alone");
                    return None;
                }
            };
            let mut found: Vec<Option<AnyRow>> = (0..jobs.len()).map(|_| None).collect();
            for row in rows {
                let n: i64 = row.try_get("batch_n").ok()?;
                *found.get_mut(usize::try_from(n).ok()?)? = Some(row);
            }
            Some(found)
        })
    }
}
