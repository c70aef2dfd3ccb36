//! Relationships' storage: plain SQL through sqlx, one dialect for both backends.

pub mod customers;
pub mod delegated;
pub mod links;
pub mod outbox;
pub mod service_requests;

use sovra_runtime::{db::Migration, Error};

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "relationships",
        sql: include_str!("../../migrations/0001_relationships.sql"),
    },
    Migration {
        version: 2,
        name: "pending_offer_index",
        sql: include_str!("../../migrations/0002_pending_offer_index.sql"),
    },
];

/// A stored name that no longer parses: the row is corrupt.
pub(crate) fn corrupt(table: &str, id: &str, column: &str) -> Error {
    Error::internal(format!("{table} row {id} has a bad stored {column}"))
}
