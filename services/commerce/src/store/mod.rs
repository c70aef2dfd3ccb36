//! Commerce's storage: plain SQL through sqlx, one dialect for both backends.

pub mod feed;
pub mod links;
pub mod product_keys;
pub mod subscriptions;

use base64::{engine::general_purpose::STANDARD_NO_PAD as B64, Engine};
use sovra_runtime::{db::Migration, Error};

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "commerce",
        sql: include_str!("../../migrations/0001_commerce.sql"),
    },
    Migration {
        version: 2,
        name: "notification_outbox",
        sql: include_str!("../../migrations/0002_notification_outbox.sql"),
    },
    Migration {
        version: 3,
        name: "link_redemption_count",
        sql: include_str!("../../migrations/0003_link_redemption_count.sql"),
    },
    Migration {
        version: 4,
        name: "trial_end_index",
        sql: include_str!("../../migrations/0004_trial_end_index.sql"),
    },
];

/// A stored value that no longer parses: the row is corrupt.
pub(crate) fn corrupt(table: &str, id: &str, column: &str) -> Error {
    Error::internal(format!("{table} row {id} has a bad stored {column}"))
}

/// A message as stored in a TEXT column.
pub(crate) fn encode<M: prost::Message>(m: &M) -> String {
    B64.encode(m.encode_to_vec())
}

pub(crate) fn decode<M: prost::Message + Default>(s: &str) -> Result<M, Error> {
    let bytes = B64.decode(s).map_err(Error::internal)?;
    M::decode(bytes.as_slice()).map_err(Error::internal)
}
