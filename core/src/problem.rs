//! RFC 9457 problem details: every API error leaves through [`ApiError`].
//!
//! Internal errors are logged here, once, with their cause; the client sees only a
//! generic body. Nothing else in the API builds error responses by hand.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

/// Problem type URIs are `urn:herald:problem:<slug>`; README.md lists the slugs.
pub const PROBLEM_PREFIX: &str = "urn:herald:problem:";

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldError {
    /// JSON pointer into the payload, e.g. `/user/email`.
    pub pointer: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("the request is invalid: {0}")]
    InvalidRequest(String),
    #[error("the request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
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
    #[error("too many requests for this API key; retry after {0} s")]
    TooManyRequests(u64),
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
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("the API key lacks the scope '{0}'")]
    Forbidden(&'static str),
    #[error("not found")]
    NotFound,
    #[error("this method is not allowed on this path")]
    MethodNotAllowed,
    #[error("the request took longer than {0} s and was abandoned")]
    Timeout(u64),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Internal(e.into())
    }
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use ApiError::*;
        match self {
            MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed-json", "Malformed JSON"),
            InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid-request", "Invalid request"),
            PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", "Request body too large"),
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
            TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Too many requests"),
            RefusedTarget(_) => (StatusCode::UNPROCESSABLE_ENTITY, "refused-target", "Webhook target refused"),
            Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            TemplateRender(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "template-render-failed", "Template rendering failed")
            }
            NoRecipient(_) => (StatusCode::UNPROCESSABLE_ENTITY, "no-recipient", "No recipient"),
            InvalidRecipient(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid-recipient", "Invalid recipient"),
            IdempotencyKeyReused => {
                (StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused", "Idempotency key reused with another body")
            }
            Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            NotFound => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "Method not allowed"),
            Timeout(_) => (StatusCode::REQUEST_TIMEOUT, "timeout", "Request timeout"),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal server error"),
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
            ApiError::Internal(cause) => {
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
        if let ApiError::SchemaViolation { errors, .. } = &self {
            body["errors"] = json!(errors);
        }
        if let ApiError::NulCharacter(pointer) = &self {
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
