//! `POST /api/v1/notifications`, `GET /api/v1/notifications` (the history) and
//! `GET /api/v1/notifications/{id}`.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::auth::{Auth, NotificationsRead, NotificationsWrite};
use super::{json_body, AppState};
use crate::notifications::accept::{request_hash, Accepted, NotificationRequest};
use crate::notifications::read::{self, HistoryFilter, NotificationView};
use crate::problem::ApiError;

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else { return Ok(None) };
    let key =
        v.to_str().ok().map(str::trim).filter(|k| !k.is_empty() && k.len() <= 255).ok_or_else(|| {
            ApiError::InvalidRequest("Idempotency-Key must be 1 to 255 visible ASCII characters".into())
        })?;
    Ok(Some(key.to_owned()))
}

pub async fn create(
    State(s): State<AppState>,
    Auth(who, ..): Auth<NotificationsWrite>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let key = idempotency_key(&headers)?;
    let hash = body.as_ref().map(|b| request_hash(b)).unwrap_or_default();
    let req: NotificationRequest = json_body(body, s.config.max_body_bytes)?;
    let accepted = s.processor.accept(&who, req, key.as_deref().map(|k| (k, hash.as_slice()))).await?;
    tracing::info!(notification_id = %accepted.id, deliveries = accepted.deliveries.len(), "notification accepted");
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

pub async fn get(
    State(s): State<AppState>,
    Auth(who, ..): Auth<NotificationsRead>,
    Path(id): Path<String>,
) -> Result<Json<NotificationView>, ApiError> {
    let id: Uuid = id.parse().map_err(|_| ApiError::NotFound)?;
    Ok(Json(read::get(&s.db, &who, id).await?))
}

/// The history's query string, as words; [`History::filter`] says what is wrong with it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct History {
    event_type: Option<String>,
    status: Option<String>,
    channel: Option<String>,
    recipient: Option<String>,
    endpoint: Option<String>,
    since: Option<String>,
    until: Option<String>,
    before: Option<String>,
    limit: Option<i64>,
}

fn time(name: &str, v: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    v.filter(|v| !v.is_empty())
        .map(|v| {
            DateTime::parse_from_rfc3339(v).map(|t| t.with_timezone(&Utc)).map_err(|_| {
                ApiError::InvalidRequest(format!("{name} must be an RFC 3339 time, such as 2026-11-29T12:00:00Z"))
            })
        })
        .transpose()
}

fn word<T: std::str::FromStr<Err = String>>(name: &str, v: Option<&str>) -> Result<Option<T>, ApiError> {
    v.filter(|v| !v.is_empty())
        .map(|v| v.parse().map_err(|e| ApiError::InvalidRequest(format!("{name}: {e}"))))
        .transpose()
}

fn uuid(name: &str, v: Option<&str>) -> Result<Option<Uuid>, ApiError> {
    v.filter(|v| !v.is_empty())
        .map(|v| v.parse().map_err(|_| ApiError::InvalidRequest(format!("{name} must be an id"))))
        .transpose()
}

impl History {
    pub fn filter(&self) -> Result<(HistoryFilter, i64), ApiError> {
        let text = |v: &Option<String>| v.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
        let f = HistoryFilter {
            event_type: text(&self.event_type),
            status: word("status", self.status.as_deref())?,
            channel: word("channel", self.channel.as_deref())?,
            recipient: text(&self.recipient),
            endpoint: uuid("endpoint", self.endpoint.as_deref())?,
            since: time("since", self.since.as_deref())?,
            until: time("until", self.until.as_deref())?,
            before: uuid("before", self.before.as_deref())?,
        };
        Ok((f, self.limit.unwrap_or(50)))
    }
}

/// `GET /api/v1/notifications`: the history, newest first, one page at a time
/// (`next_before` is the next page's cursor).
pub async fn list(
    State(s): State<AppState>,
    Auth(who, ..): Auth<NotificationsRead>,
    q: Result<Query<History>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|r| ApiError::InvalidRequest(format!("query string: {}", r.body_text())))?;
    let (filter, limit) = q.filter()?;
    let page = read::list(&s.db, &who, &filter, limit).await?;
    let next = if page.len() as i64 == limit { page.last().map(|n| n.id) } else { None };
    Ok(Json(json!({ "data": page, "next_before": next })))
}
