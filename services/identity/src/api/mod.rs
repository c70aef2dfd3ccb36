//! tonic handlers: unpack the request, call the rules and the store, convert.

pub mod access;
pub mod auth;
pub mod convert;
pub mod tenants;
pub mod users;

use sovra_runtime::Error;

/// The stale-etag answer shared by every update.
pub(crate) fn etag_mismatch(what: &str) -> Error {
    Error::aborted(
        "ETAG_MISMATCH",
        format!("the {what} changed since you read it (stale etag): read it again and retry"),
    )
}

/// Checks an optional etag against the stored version.
pub(crate) fn check_etag(what: &str, etag: &str, version: i64) -> Result<(), Error> {
    if etag.is_empty() || etag == version.to_string() {
        Ok(())
    } else {
        Err(etag_mismatch(what))
    }
}
