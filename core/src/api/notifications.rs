//! `POST /api/v1/notifications`, `GET /api/v1/notifications` (the history) and
//! `GET /api/v1/notifications/{id}`.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};
use uuid::Uuid;

use super::auth::Auth;
use super::{json_body, AppState};
use crate::notifications::accept::{request_hash, Accepted, NotificationRequest};
use crate::notifications::read::{self, HistoryQuery, NotificationView};
use crate::notifications::stats::{self, Dashboard, Window};
use crate::problem::ApiError;
use serde::Deserialize;

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else { return Ok(None) };
    let key =
        v.to_str().ok().map(str::trim).filter(|k| !k.is_empty() && k.len() <= 255).ok_or_else(|| {
            ApiError::InvalidRequest("Idempotency-Key must be 1 to 255 visible ASCII characters".into())
        })?;
    Ok(Some(key.to_owned()))
}

#[utoipa::path(
    post,
    operation_id = "notifications_create",
    path = "/api/v1/notifications",
    tag = "notifications",
    summary = "Accept a notification (202 once it is durable)",
    request_body = crate::notifications::accept::NotificationRequest,
    responses((status = 202, description = "Accepted; deliveries are under way", body = crate::notifications::accept::Accepted), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn create(
    State(s): State<AppState>,
    Auth(who): Auth,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let key = idempotency_key(&headers)?;
    // Only a request with an idempotency key needs its body's hash.
    let hash = match (&key, &body) {
        (Some(_), Ok(b)) => request_hash(b),
        _ => Vec::new(),
    };
    let req: NotificationRequest = json_body(body, s.config.max_body_bytes)?;
    let accepted = s.processor.accept(&who, req, key.as_deref().map(|k| (k, hash.as_slice()))).await?;
    tracing::info!(notification_id = %accepted.id, deliveries = accepted.deliveries.len(), "notification accepted");
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

#[utoipa::path(
    get,
    operation_id = "notifications_get",
    path = "/api/v1/notifications/{id}",
    tag = "notifications",
    summary = "A notification with its deliveries and attempts",
    params(("id" = uuid::Uuid, Path, description = "The notification's id")),
    responses((status = 200, description = "The notification", body = crate::notifications::read::NotificationView), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn get(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(id): Path<String>,
) -> Result<Json<NotificationView>, ApiError> {
    let id: Uuid = id.parse().map_err(|_| ApiError::NotFound)?;
    Ok(Json(read::get(&s.db, &who, id).await?))
}

/// `GET /api/v1/notifications`: the history, newest first, one page at a time
/// (`next_before` is the next page's cursor).
#[utoipa::path(
    get,
    operation_id = "notifications_list",
    path = "/api/v1/notifications",
    tag = "notifications",
    summary = "The history: filtered, newest first, keyset pages",
    params(crate::notifications::read::HistoryQuery),
    responses((status = 200, description = "One page", body = crate::api::openapi::HistoryPage), (status = "4XX", description = "A problem (RFC 9457): bad input, no or bad credentials, a missing scope, not found, a conflict, a rate limit", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn list(
    State(s): State<AppState>,
    Auth(who): Auth,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|r| ApiError::InvalidRequest(format!("query string: {}", r.body_text())))?;
    let (filter, limit) = q.filter()?;
    let page = read::list(&s.db, &who, &filter, limit).await?;
    let next = if page.len() as i64 == limit { page.last().map(|n| n.id) } else { None };
    Ok(Json(json!({ "data": page, "next_before": next })))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    /// `1h` (the default), `24h` or `7d`.
    window: Option<String>,
}

/// `GET /api/v1/stats`: the dashboard's figures (admins).
#[utoipa::path(
    get,
    operation_id = "notifications_stats",
    path = "/api/v1/stats",
    tag = "notifications",
    summary = "Figures for a window: accepted, outcomes, success rate, attempt durations, unhealthy endpoints, backlog",
    params(StatsQuery),
    responses((status = 200, description = "The figures", body = crate::notifications::stats::Dashboard), (status = "4XX", description = "A problem (RFC 9457)", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn stats(
    State(s): State<AppState>,
    Auth(who): Auth,
    q: Result<Query<StatsQuery>, QueryRejection>,
) -> Result<Json<Dashboard>, ApiError> {
    let Query(q) = q.map_err(|r| ApiError::InvalidRequest(format!("query string: {}", r.body_text())))?;
    let window = Window::parse(q.window.as_deref().unwrap_or(""))?;
    Ok(Json(stats::dashboard(&s.db, &who, window, s.config.tracking).await?))
}

/// `POST /api/v1/deliveries/{id}/resend`: an email delivery again.
#[utoipa::path(
    post,
    operation_id = "deliveries_resend_email",
    path = "/api/v1/deliveries/{id}/resend",
    tag = "notifications",
    summary = "Send a finished email delivery again (refused while its address is suppressed)",
    params(("id" = uuid::Uuid, Path, description = "The email delivery's id")),
    responses((status = 202, description = "Queued again"), (status = "4XX", description = "A problem (RFC 9457): no or bad credentials, a missing scope, not found, still in progress or suppressed (409)", body = crate::api::openapi::Problem, content_type = "application/problem+json"))
)]
pub async fn resend_email(
    State(s): State<AppState>,
    Auth(who): Auth,
    Path(id): Path<String>,
) -> Result<axum::http::StatusCode, ApiError> {
    let id: Uuid = id.parse().map_err(|_| ApiError::NotFound)?;
    read::resend_email(&s.db, &who, id).await?;
    Ok(axum::http::StatusCode::ACCEPTED)
}
