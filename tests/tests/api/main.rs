//! End-to-end: real Sovra on port 0, real gRPC, on SQLite and on PostgreSQL.

mod helpers;

mod access;
mod auth;
mod bootstrap;
mod commerce;
mod commerce_links;
mod customers;
mod delegated;
mod instances;
mod journey;
mod links;
mod pool;
mod product_keys;
mod prometheus;
mod tenants;
mod traces;
mod users;
mod writes;
