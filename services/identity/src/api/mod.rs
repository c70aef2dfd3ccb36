//! tonic handlers: unpack the request, call the rules and the store, convert.

pub mod access;
pub mod auth;
pub mod convert;
pub mod tenants;
pub mod users;

pub(crate) use sovra_runtime::error::{check_etag, etag_mismatch};
