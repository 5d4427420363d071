//! `POST /api/v1/notifications` and `GET /api/v1/notifications/{id}`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::auth::{Auth, NotificationsRead, NotificationsWrite};
use super::{json_body, AppState};
use crate::problem::ApiError;
use crate::processor::{derive_status, request_hash, Accepted, NotificationRequest};

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

#[derive(Serialize, sqlx::FromRow)]
pub struct AttemptView {
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub duration_ms: i32,
    pub outcome: String,
    pub smtp_code: Option<i16>,
    pub smtp_reply: Option<String>,
    pub http_status: Option<i16>,
    pub response_excerpt: Option<String>,
    pub error: Option<String>,
    #[serde(skip)]
    pub delivery_id: Uuid,
}

#[derive(Serialize, sqlx::FromRow)]
pub struct DeliveryView {
    pub id: Uuid,
    pub channel: String,
    pub target: String,
    pub status: String,
    pub attempt_count: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[sqlx(skip)]
    pub attempts: Vec<AttemptView>,
}

#[derive(Serialize, sqlx::FromRow)]
pub struct NotificationView {
    pub id: Uuid,
    pub event_type: String,
    pub payload: Value,
    pub recipients: Vec<String>,
    pub created_at: DateTime<Utc>,
    #[serde(skip)]
    pub owner: String,
    #[sqlx(skip)]
    pub status: String,
    #[sqlx(skip)]
    pub deliveries: Vec<DeliveryView>,
}

pub async fn get(
    State(s): State<AppState>,
    Auth(who, ..): Auth<NotificationsRead>,
    Path(id): Path<String>,
) -> Result<Json<NotificationView>, ApiError> {
    let id: Uuid = id.parse().map_err(|_| ApiError::NotFound)?;
    let mut n: NotificationView = sqlx::query_as(
        "SELECT id, event_type, payload, recipients, created_at, owner FROM notifications WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&s.db)
    .await?
    .ok_or(ApiError::NotFound)?;
    // Another owner's notification does not exist, as far as this key can tell.
    if n.owner != who.owner && !who.is_admin() {
        return Err(ApiError::NotFound);
    }
    n.deliveries = sqlx::query_as(
        "SELECT id, channel, target, status, attempts AS attempt_count, next_attempt_at, last_error, created_at, updated_at
         FROM deliveries WHERE notification_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(&s.db)
    .await?;
    let attempts: Vec<AttemptView> = sqlx::query_as(
        "SELECT a.delivery_id, a.attempt_no AS attempt, a.started_at, a.duration_ms, a.outcome, a.smtp_code, a.smtp_reply,
                a.http_status, a.response_excerpt, a.error
         FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
         WHERE d.notification_id = $1 ORDER BY a.delivery_id, a.attempt_no",
    )
    .bind(id)
    .fetch_all(&s.db)
    .await?;
    // A webhook endpoint's responses belong to its owner: the notification's sender sees
    // the status of deliveries to other owners' endpoints, not what those servers said.
    let foreign: Vec<Uuid> = if who.is_admin() {
        Vec::new()
    } else {
        let targets: Vec<&str> =
            n.deliveries.iter().filter(|d| d.channel == "webhook").map(|d| d.target.as_str()).collect();
        let own: Vec<String> = if targets.is_empty() {
            Vec::new()
        } else {
            sqlx::query_scalar("SELECT id::text FROM endpoints WHERE id::text = ANY($1) AND owner = $2")
                .bind(&targets)
                .bind(&who.owner)
                .fetch_all(&s.db)
                .await?
        };
        n.deliveries.iter().filter(|d| d.channel == "webhook" && !own.contains(&d.target)).map(|d| d.id).collect()
    };
    for d in n.deliveries.iter_mut().filter(|d| foreign.contains(&d.id)) {
        d.last_error = None;
    }
    for mut a in attempts {
        // What another owner's server answered (or why it could not be reached) is theirs.
        if foreign.contains(&a.delivery_id) {
            a.response_excerpt = None;
            a.error = None;
        }
        if let Some(d) = n.deliveries.iter_mut().find(|d| d.id == a.delivery_id) {
            d.attempts.push(a);
        }
    }
    n.status = derive_status(n.deliveries.iter().map(|d| d.status.as_str())).to_owned();
    Ok(Json(n))
}
