//! RFC 9457 problem details: every API error leaves through [`ApiError`], the edge's
//! error, which wraps the domain's [`Error`] and adds what only HTTP can go wrong.
//!
//! Internal errors are logged here, once, with their whole cause chain; the client sees
//! only a generic body. Nothing else in the API builds error responses by hand.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Problem type URIs are `urn:herald:problem:<slug>`; README.md lists the slugs.
pub const PROBLEM_PREFIX: &str = "urn:herald:problem:";

use crate::error::Error;
pub use crate::error::FieldError;

/// An error as the HTTP API answers it: a domain [`Error`], or one only the edge can
/// make (the request's framing, authentication, rate limits, routing, time).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Domain(#[from] Error),
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("the request is invalid: {0}")]
    InvalidRequest(String),
    #[error("the request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    #[error("too many requests for this API key; retry after {0} s")]
    TooManyRequests(u64),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("not found")]
    NotFound,
    #[error("this method is not allowed on this path")]
    MethodNotAllowed,
    #[error("the request took longer than {0} s and was abandoned")]
    Timeout(u64),
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Domain(e.into())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::Domain(e.into())
    }
}

/// Status, problem slug and title of a domain error.
fn domain_parts(e: &Error) -> (StatusCode, &'static str, &'static str) {
    use Error::*;
    match e {
        Invalid(_) => (StatusCode::BAD_REQUEST, "invalid-request", "Invalid request"),
        UnknownEventType(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unknown-event-type", "Unknown event type"),
        SchemaViolation { .. } => {
            (StatusCode::UNPROCESSABLE_ENTITY, "schema-violation", "Payload does not match the event type's schema")
        }
        ReservedEventType(_) => (StatusCode::UNPROCESSABLE_ENTITY, "reserved-event-type", "Reserved event type"),
        NulCharacter(_) => (StatusCode::BAD_REQUEST, "nul-character", "NUL character in the request"),
        InvalidRetrySchedule(_) => {
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid-retry-schedule", "Retry schedule out of bounds")
        }
        LimitExceeded(_) => (StatusCode::UNPROCESSABLE_ENTITY, "limit-exceeded", "Limit exceeded"),
        RefusedTarget(_) => (StatusCode::UNPROCESSABLE_ENTITY, "refused-target", "Webhook target refused"),
        Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
        TemplateRender(_) => (StatusCode::UNPROCESSABLE_ENTITY, "template-render-failed", "Template rendering failed"),
        NoRecipient(_) => (StatusCode::UNPROCESSABLE_ENTITY, "no-recipient", "No recipient"),
        InvalidRecipient(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-recipient", "Invalid recipient"),
        IdempotencyKeyReused => {
            (StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused", "Idempotency key reused with another body")
        }
        Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
        NotFound => (StatusCode::NOT_FOUND, "not-found", "Not found"),
        Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal server error"),
    }
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use ApiError::*;
        match self {
            Domain(e) => domain_parts(e),
            MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed-json", "Malformed JSON"),
            InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid-request", "Invalid request"),
            PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", "Request body too large"),
            TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Too many requests"),
            Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            NotFound => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "Method not allowed"),
            Timeout(_) => (StatusCode::REQUEST_TIMEOUT, "timeout", "Request timeout"),
        }
    }

    pub fn slug(&self) -> &'static str {
        self.parts().1
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title) = self.parts();
        let detail = match &self {
            ApiError::Domain(Error::Internal(cause)) => {
                tracing::error!(error = %format!("{cause:#}"), "internal error while handling a request");
                "An internal error occurred; it has been logged.".to_owned()
            }
            other => other.to_string(),
        };
        let mut body = json!({
            "type": format!("{PROBLEM_PREFIX}{slug}"),
            "title": title,
            "status": status.as_u16(),
            "detail": detail,
        });
        if let ApiError::Domain(Error::SchemaViolation { errors, .. }) = &self {
            body["errors"] = json!(errors);
        }
        if let ApiError::Domain(Error::NulCharacter(pointer)) = &self {
            body["errors"] =
                json!([FieldError { pointer: pointer.clone(), message: "contains a NUL character".into() }]);
        }
        let mut resp = (status, axum::Json(body)).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let ApiError::TooManyRequests(secs) = &self {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
