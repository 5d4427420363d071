//! The domain's error: what an operation of the domain layer (notifications, webhooks,
//! API keys) can answer, whichever door (API, console, dispatcher) called it.
//!
//! Nothing here knows HTTP: the API maps an [`Error`] to problem+json in
//! `problem.rs`, the console to a readable message. `Internal` keeps its whole cause
//! chain for the log (`{e}` prints it); no door shows it to a caller.

use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct FieldError {
    /// JSON pointer into the payload, e.g. `/user/email`.
    pub pointer: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input is not acceptable as given (a field out of range, a bad URL, ...).
    #[error("{0}")]
    Invalid(String),
    #[error("unknown event type '{0}'")]
    UnknownEventType(String),
    #[error("the payload does not match the schema of event type '{event_type}'")]
    SchemaViolation { event_type: String, errors: Vec<FieldError> },
    #[error("event type '{0}' is emitted by Herald itself and cannot be posted")]
    ReservedEventType(String),
    #[error("the field '{0}' contains a NUL character (\\u0000), which Herald does not store")]
    NulCharacter(String),
    #[error("retry_schedule: {0}")]
    InvalidRetrySchedule(String),
    #[error("{0}")]
    LimitExceeded(String),
    #[error("{0}")]
    RefusedTarget(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the template could not be rendered: {0}")]
    TemplateRender(String),
    #[error("{0}")]
    NoRecipient(String),
    #[error("{0}")]
    InvalidRecipient(String),
    #[error("this Idempotency-Key was already used with a different request body")]
    IdempotencyKeyReused,
    /// The caller may not do this (beyond its scope).
    #[error("{0}")]
    Forbidden(String),
    /// Absent, or not the caller's to see (another owner's resource is "not found").
    #[error("not found")]
    NotFound,
    /// A fault of Herald or what it depends on; the cause is for the log only.
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Internal(e.into())
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Internal(e.into())
    }
}

/// A domain result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An internal error from a message (a sealed value that does not open, ...).
    pub fn internal(msg: impl std::fmt::Display) -> Self {
        Error::Internal(anyhow::anyhow!("{msg}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_internal_error_keeps_its_cause_chain_for_the_log() {
        let cause = anyhow::anyhow!("connection refused").context("cannot disable endpoint 42");
        let e = Error::Internal(cause);
        assert_eq!(e.to_string(), "internal error: cannot disable endpoint 42: connection refused");
        // Wrapped once more (as the dispatcher does), the chain is still whole.
        let wrapped = anyhow::Error::new(e).context("endpoint health");
        assert!(format!("{wrapped:#}").ends_with("cannot disable endpoint 42: connection refused"));
    }
}
