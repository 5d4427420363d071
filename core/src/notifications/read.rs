//! A notification as its sender reads it: its deliveries and their attempts.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::apikeys::Principal;
use crate::error::{Error, Result};
use crate::model::{Channel, DeliveryStatus, NotificationStatus};

#[derive(Debug, Serialize, sqlx::FromRow)]
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

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct DeliveryView {
    pub id: Uuid,
    pub channel: Channel,
    pub target: String,
    pub status: DeliveryStatus,
    pub attempt_count: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(skip)]
    pub endpoint_id: Option<Uuid>,
    #[sqlx(skip)]
    pub attempts: Vec<AttemptView>,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct NotificationView {
    pub id: Uuid,
    pub event_type: String,
    pub payload: Value,
    pub recipients: Vec<String>,
    pub created_at: DateTime<Utc>,
    #[serde(skip)]
    pub owner: String,
    #[sqlx(skip)]
    pub status: NotificationStatus,
    #[sqlx(skip)]
    pub deliveries: Vec<DeliveryView>,
}

/// The columns of an attempt as [`AttemptView`] reads them (table alias `a`).
pub(crate) const ATTEMPT_COLUMNS: &str = "a.delivery_id, a.attempt_no AS attempt, a.started_at, a.duration_ms, \
     a.outcome, a.smtp_code, a.smtp_reply, a.http_status, a.response_excerpt, a.error";

/// A notification with its deliveries and attempts, if the caller may see it: its
/// sender's owner (or an admin). Another owner's notification is "not found".
///
/// A webhook endpoint's responses belong to the endpoint's owner: the sender sees the
/// status of deliveries to other owners' endpoints, not what those servers said.
pub async fn get(db: &PgPool, who: &Principal, id: Uuid) -> Result<NotificationView> {
    let mut n: NotificationView = sqlx::query_as(
        "SELECT id, event_type, payload, recipients, created_at, owner FROM notifications WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await?
    .ok_or(Error::NotFound)?;
    if n.owner != who.owner && !who.is_admin() {
        return Err(Error::NotFound);
    }
    n.deliveries = sqlx::query_as(
        "SELECT id, channel, target, status, attempts AS attempt_count, next_attempt_at, last_error, created_at,
                updated_at, endpoint_id
         FROM deliveries WHERE notification_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(db)
    .await?;
    let attempts: Vec<AttemptView> = sqlx::query_as(&format!(
        "SELECT {ATTEMPT_COLUMNS} FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
         WHERE d.notification_id = $1 ORDER BY a.delivery_id, a.attempt_no"
    ))
    .bind(id)
    .fetch_all(db)
    .await?;
    let foreign: Vec<Uuid> = if who.is_admin() {
        Vec::new()
    } else {
        let endpoints: Vec<Uuid> = n.deliveries.iter().filter_map(|d| d.endpoint_id).collect();
        let own: Vec<Uuid> = if endpoints.is_empty() {
            Vec::new()
        } else {
            sqlx::query_scalar("SELECT id FROM endpoints WHERE id = ANY($1) AND owner = $2")
                .bind(&endpoints)
                .bind(&who.owner)
                .fetch_all(db)
                .await?
        };
        n.deliveries
            .iter()
            .filter(|d| d.channel == Channel::Webhook && !d.endpoint_id.is_some_and(|e| own.contains(&e)))
            .map(|d| d.id)
            .collect()
    };
    for d in n.deliveries.iter_mut().filter(|d| foreign.contains(&d.id)) {
        d.last_error = None;
    }
    for mut a in attempts {
        if foreign.contains(&a.delivery_id) {
            a.response_excerpt = None;
            a.error = None;
        }
        if let Some(d) = n.deliveries.iter_mut().find(|d| d.id == a.delivery_id) {
            d.attempts.push(a);
        }
    }
    n.status = NotificationStatus::of(n.deliveries.iter().map(|d| d.status));
    Ok(n)
}
