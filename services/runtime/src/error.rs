//! One error type for every service, mapped in one place to `tonic::Status`
//! with `google.rpc.ErrorInfo` (a stable UPPER_SNAKE reason) and, for bad
//! input, `google.rpc.BadRequest` field violations.

use std::{borrow::Cow, collections::HashMap, fmt, time::Duration};

use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every Sovra error.
pub const ERROR_DOMAIN: &str = "sovra";

/// The gRPC code families Sovra uses, as meant by the gRPC spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    Unauthenticated,
    FailedPrecondition,
    Aborted,
    ResourceExhausted,
    Unavailable,
    Internal,
}

/// A field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// An error a caller can act on. `Internal` errors keep their cause for the
/// log and never show it to the caller.
#[derive(Debug)]
pub struct Error {
    pub code: ErrorCode,
    /// Stable, UPPER_SNAKE, part of the contract.
    pub reason: Cow<'static, str>,
    pub message: String,
    pub violations: Vec<FieldViolation>,
    pub retry_after: Option<Duration>,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: ErrorCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason: Cow::Borrowed(reason),
            message: message.into(),
            violations: Vec::new(),
            retry_after: None,
            source: None,
        }
    }

    /// Bad input in one field: `INVALID_ARGUMENT` naming it.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        let field = field.into();
        let description = description.into();
        let mut e = Self::new(
            ErrorCode::InvalidArgument,
            "INVALID_FIELD",
            format!("{field}: {description}"),
        );
        e.violations.push(FieldViolation { field, description });
        e
    }

    pub fn not_found(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, reason, message)
    }

    pub fn already_exists(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::AlreadyExists, reason, message)
    }

    pub fn permission_denied(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::PermissionDenied, reason, message)
    }

    pub fn unauthenticated(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthenticated, reason, message)
    }

    pub fn failed_precondition(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::FailedPrecondition, reason, message)
    }

    pub fn aborted(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Aborted, reason, message)
    }

    pub fn resource_exhausted(
        reason: &'static str,
        message: impl Into<String>,
        retry_after: Duration,
    ) -> Self {
        let mut e = Self::new(ErrorCode::ResourceExhausted, reason, message);
        e.retry_after = Some(retry_after);
        e
    }

    /// A dependency is down; the call may be retried.
    pub fn unavailable(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, reason, message)
    }

    /// Something broke inside: the cause is logged, the caller sees only that
    /// it happened.
    pub fn internal(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        let mut e = Self::new(ErrorCode::Internal, "INTERNAL", "internal error");
        e.source = Some(cause.into());
        e
    }

    /// Adds another field violation to an `INVALID_ARGUMENT` error.
    pub fn with_violation(
        mut self,
        field: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        self.violations.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
        self
    }

    /// Prefixes every violation's field with `prefix.` (for nested messages).
    pub fn in_field(mut self, prefix: &str) -> Self {
        for v in &mut self.violations {
            v.field = format!("{prefix}.{}", v.field);
        }
        if self.code == ErrorCode::InvalidArgument {
            self.message = format!("{prefix}.{}", self.message);
        }
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {}: {}", self.code, self.reason, self.message)?;
        if let Some(s) = &self.source {
            write!(f, " (cause: {s})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl Error {
    /// Another Sovra service's refusal, re-raised with its reason, message
    /// and field violations (the caller's input was at fault, not ours).
    pub fn from_peer(s: Status, fallback_reason: &'static str) -> Self {
        let code = match s.code() {
            tonic::Code::InvalidArgument => ErrorCode::InvalidArgument,
            tonic::Code::NotFound => ErrorCode::NotFound,
            tonic::Code::AlreadyExists => ErrorCode::AlreadyExists,
            tonic::Code::PermissionDenied => ErrorCode::PermissionDenied,
            tonic::Code::Unauthenticated => ErrorCode::Unauthenticated,
            tonic::Code::FailedPrecondition => ErrorCode::FailedPrecondition,
            tonic::Code::Aborted => ErrorCode::Aborted,
            tonic::Code::ResourceExhausted => ErrorCode::ResourceExhausted,
            tonic::Code::Unavailable => ErrorCode::Unavailable,
            _ => ErrorCode::Internal,
        };
        let details = s.get_error_details();
        let reason = details
            .error_info()
            .map(|i| Cow::Owned(i.reason.clone()))
            .unwrap_or(Cow::Borrowed(fallback_reason));
        let mut e = Error::new(code, fallback_reason, s.message());
        e.reason = reason;
        if let Some(br) = details.bad_request() {
            for v in &br.field_violations {
                e = e.with_violation(v.field.clone(), v.description.clone());
            }
        }
        e.retry_after = details.retry_info().and_then(|r| r.retry_delay);
        e
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::internal(e)
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let code = match e.code {
            ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorCode::NotFound => tonic::Code::NotFound,
            ErrorCode::AlreadyExists => tonic::Code::AlreadyExists,
            ErrorCode::PermissionDenied => tonic::Code::PermissionDenied,
            ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorCode::FailedPrecondition => tonic::Code::FailedPrecondition,
            ErrorCode::Aborted => tonic::Code::Aborted,
            ErrorCode::ResourceExhausted => tonic::Code::ResourceExhausted,
            ErrorCode::Unavailable => tonic::Code::Unavailable,
            ErrorCode::Internal => tonic::Code::Internal,
        };
        // Client faults at warn, internal faults at error (with the cause).
        if e.code == ErrorCode::Internal {
            tracing::error!(error = %e, "internal error");
        } else {
            tracing::debug!(code = ?e.code, reason = %e.reason, message = %e.message, "request rejected");
        }
        let mut details = ErrorDetails::new();
        details.set_error_info(
            e.reason.clone(),
            ERROR_DOMAIN,
            HashMap::<String, String>::new(),
        );
        for v in &e.violations {
            details.add_bad_request_violation(v.field.clone(), v.description.clone());
        }
        if let Some(d) = e.retry_after {
            details.set_retry_info(Some(d));
        }
        Status::with_error_details(code, e.message, details)
    }
}

/// The stale-etag answer shared by every update.
pub fn etag_mismatch(what: &str) -> Error {
    Error::aborted(
        "ETAG_MISMATCH",
        format!("the {what} changed since you read it (stale etag): read it again and retry"),
    )
}

/// Checks an optional etag against the stored version.
pub fn check_etag(what: &str, etag: &str, version: i64) -> Result<(), Error> {
    if etag.is_empty() || etag == version.to_string() {
        Ok(())
    } else {
        Err(etag_mismatch(what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_hide_their_cause_from_callers() {
        let status: Status = Error::internal("relation \"users\" does not exist").into();
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(!status.message().contains("users"));
        assert_eq!(status.get_details_error_info().unwrap().reason, "INTERNAL");
    }

    #[test]
    fn invalid_input_carries_its_field() {
        let status: Status = Error::invalid("display_name", "must not be empty")
            .in_field("user")
            .into();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let bad = status.get_details_bad_request().unwrap();
        assert_eq!(bad.field_violations[0].field, "user.display_name");
        assert!(status.message().contains("user.display_name"));
    }
}
