//! End-to-end: real Sovra on port 0, real gRPC, on SQLite and on PostgreSQL.

mod helpers;

mod access;
mod auth;
mod bootstrap;
mod delegated;
mod tenants;
mod users;
