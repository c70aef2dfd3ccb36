//! The shared service runtime every Sovra service stands on: configuration,
//! feature flags, database pools and migrations, the error type and its gRPC
//! mapping, idempotency, link codes, tokens and caller identity, audit, and the server bootstrap.
#![forbid(unsafe_code)]

pub mod audit;
pub mod auth;
mod batch;
pub mod cache;
pub mod clock;
pub mod config;
pub mod db;
mod enums;
pub mod error;
pub mod features;
pub mod group_commit;
pub mod hex;
pub mod idempotency;
pub mod ids;
pub mod json_rows;
pub mod links;
pub mod lookup;
pub mod metrics;
pub mod paging;
pub mod peers;
pub mod pool;
pub mod ratelimit;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod writes;

pub use error::{Error, ErrorCode, Result};
