//! Identity's storage: plain SQL through sqlx, one dialect for both backends.

pub mod grants;
pub mod tenants;
pub mod users;

use sovra_runtime::db::Migration;

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "identity",
    sql: include_str!("../../migrations/0001_identity.sql"),
}];
