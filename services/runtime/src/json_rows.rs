//! A page of rows as one value on SQLite: the rows of a `SELECT` gathered by
//! SQLite into one JSON array of arrays, read back with serde.
//!
//! Every row of a result pays its own way out of sqlx's SQLite driver: it
//! crosses from the connection's worker thread over a channel, is copied
//! value by value into an `AnyRow` with its own list of columns, and is then
//! decoded: about 9 µs a row, so a page of 50 customers cost four times a
//! page of one (figure 5c in `docs/benchmarks.md`). Gathered into one row,
//! the page crosses once, and SQLite's JSON writer is far cheaper per row.
//! PostgreSQL's driver reads rows off the socket in the caller's task, and
//! there `json_agg` cost the database more than it saved (a one-row page's
//! p99 rose by a third), so PostgreSQL reads its rows as they are.

use serde::de::DeserializeOwned;
use sqlx::any::{AnyArguments, AnyRow};

use crate::{
    db::{Backend, Db},
    error::Error,
};

/// The rows of `inner` (a `SELECT` of exactly `columns`, with its own
/// `ORDER BY` and `LIMIT`; `args` its parameters) from the read pool, each
/// as a `T`: a tuple of the columns. `order` is `inner`'s `ORDER BY` (over
/// its columns), which the rows keep.
pub async fn fetch<T>(
    db: &Db,
    columns: &str,
    order: &str,
    inner: &str,
    args: AnyArguments<'_>,
) -> Result<Vec<T>, Error>
where
    T: DeserializeOwned + for<'r> sqlx::FromRow<'r, AnyRow> + Send + Unpin,
{
    match db.backend() {
        Backend::Sqlite => {
            let json: String = sqlx::query_scalar_with(&gathered(columns, order, inner), args)
                .fetch_one(db.read())
                .await?;
            parse(&json)
        }
        Backend::Postgres => Ok(sqlx::query_as_with(inner, args)
            .fetch_all(db.read())
            .await?),
    }
}

/// `inner` as one row of one text column: its rows as a JSON array, each
/// row an array of `columns` (NULL as `null`, integers as numbers), in
/// `order`. No rows: `[]`.
fn gathered(columns: &str, order: &str, inner: &str) -> String {
    format!(
        "SELECT json_group_array(json_array({columns}) ORDER BY {order}) FROM ({inner}) AS page"
    )
}

/// Rows that do not read as `T` mean the table holds what its code does not
/// expect: an internal error, logged, never shown to the caller.
fn parse<T: DeserializeOwned>(json: &str) -> Result<Vec<T>, Error> {
    serde_json::from_str(json).map_err(Error::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_page_reads_back_in_order_with_nulls_and_numbers() {
        sqlx::any::install_default_drivers();
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect("sqlite::memory:")
            .await
            .unwrap();
        sqlx::Executor::execute(
            &mut conn,
            "CREATE TABLE t (k TEXT, n BIGINT, s TEXT); \
             INSERT INTO t VALUES ('b', 2, NULL), ('a', 1700000000123, 'say \"hi\"\n'), ('c', 3, 'x');",
        )
        .await
        .unwrap();
        let sql = gathered(
            "k, n, s",
            "k",
            "SELECT k, n, s FROM t WHERE k < $1 ORDER BY k LIMIT 5",
        );
        let json: String = sqlx::query_scalar(&sql)
            .bind("c")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let rows: Vec<(String, i64, Option<String>)> = parse(&json).unwrap();
        assert_eq!(
            rows,
            vec![
                ("a".into(), 1_700_000_000_123, Some("say \"hi\"\n".into())),
                ("b".into(), 2, None),
            ]
        );
        let none: String = sqlx::query_scalar(&sql)
            .bind("")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert!(parse::<(String, i64, Option<String>)>(&none)
            .unwrap()
            .is_empty());
        assert!(
            parse::<(String, String)>(&json).is_err(),
            "a row of another shape is an error"
        );
    }
}
