//! The deliveries of a webhook endpoint as its owner sees them, and starting finished
//! deliveries again: resend one, recover an endpoint's failures, replay a notification.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::endpoints::get;
use crate::access::{Principal, Scope};
use crate::audit::{self, Target};
use crate::error::{Error, Result};
use crate::model::DeliveryStatus;
use crate::notifications::read::{AttemptView, ATTEMPT_COLUMNS};

/// One webhook delivery, as an endpoint's owner sees it.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct EndpointDelivery {
    pub id: Uuid,
    pub notification_id: Uuid,
    pub event_type: String,
    pub status: DeliveryStatus,
    pub attempt_count: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const DELIVERY_SELECT: &str = "SELECT d.id, d.notification_id, n.event_type, d.status, d.attempts AS attempt_count,
        d.next_attempt_at, d.last_error, d.created_at, d.updated_at
 FROM deliveries d JOIN notifications n ON n.id = d.notification_id";

/// What an endpoint's deliveries are narrowed to.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub status: Option<DeliveryStatus>,
    pub event_type: Option<String>,
    /// Created at or after.
    pub since: Option<DateTime<Utc>>,
    /// Created before.
    pub until: Option<DateTime<Utc>>,
}

/// An endpoint's deliveries, newest first.
pub async fn deliveries(
    db: &PgPool,
    who: &Principal,
    id: Uuid,
    f: &DeliveryFilter,
    limit: i64,
) -> Result<Vec<EndpointDelivery>> {
    get(db, who, id).await?;
    Ok(sqlx::query_as(&format!(
        "{DELIVERY_SELECT} WHERE d.endpoint_id = $1 AND ($2::text IS NULL OR d.status = $2)
           AND ($4::text IS NULL OR n.event_type = $4) AND ($5::timestamptz IS NULL OR d.created_at >= $5)
           AND ($6::timestamptz IS NULL OR d.created_at < $6)
         ORDER BY d.created_at DESC, d.id DESC LIMIT $3"
    ))
    .bind(id)
    .bind(f.status)
    .bind(limit)
    .bind(f.event_type.as_deref())
    .bind(f.since)
    .bind(f.until)
    .fetch_all(db)
    .await?)
}

/// One delivery of an endpoint with every attempt (status, duration, error, response excerpt).
pub async fn delivery(
    db: &PgPool,
    who: &Principal,
    endpoint: Uuid,
    delivery: Uuid,
) -> Result<(EndpointDelivery, Vec<AttemptView>)> {
    get(db, who, endpoint).await?;
    let d: EndpointDelivery = sqlx::query_as(&format!("{DELIVERY_SELECT} WHERE d.id = $1 AND d.endpoint_id = $2"))
        .bind(delivery)
        .bind(endpoint)
        .fetch_optional(db)
        .await?
        .ok_or(Error::NotFound)?;
    let attempts = sqlx::query_as(&format!(
        "SELECT {ATTEMPT_COLUMNS} FROM attempts a WHERE a.delivery_id = $1 ORDER BY a.attempt_no"
    ))
    .bind(delivery)
    .fetch_all(db)
    .await?;
    Ok((d, attempts))
}

// Resends go through `delivery_status::reopen` (every status change is made there).
pub use crate::delivery_status::{reopen as resend_where, ResendFilter, RESEND_PAGE};

/// Resends one webhook delivery of an endpoint. 409 if it is still in progress.
pub async fn resend(db: &PgPool, who: &Principal, endpoint: Uuid, delivery: Uuid) -> Result<()> {
    who.require(Scope::EndpointsWrite)?;
    get(db, who, endpoint).await?;
    let mut tx = db.begin().await?;
    let done = resend_where(&mut tx, ResendFilter::Delivery { delivery, endpoint }).await?;
    if done.is_empty() {
        let exists: Option<DeliveryStatus> =
            sqlx::query_scalar("SELECT status FROM deliveries WHERE id = $1 AND endpoint_id = $2")
                .bind(delivery)
                .bind(endpoint)
                .fetch_optional(&mut *tx)
                .await?;
        return Err(match exists {
            None => Error::NotFound,
            Some(status) => Error::Conflict(format!("the delivery is still {status}; resend it once it has finished")),
        });
    }
    let t = Target { kind: "delivery", id: delivery.to_string() };
    audit::record(&mut tx, &who.actor(), "delivery.resent", t, None, Some(json!({ "endpoint_id": endpoint }))).await?;
    tx.commit().await?;
    Ok(())
}

/// Resends every failed delivery of an endpoint created since `since`.
pub async fn recover(db: &PgPool, who: &Principal, endpoint: Uuid, since: DateTime<Utc>) -> Result<Vec<Uuid>> {
    who.require(Scope::EndpointsWrite)?;
    get(db, who, endpoint).await?;
    let mut tx = db.begin().await?;
    let ids = resend_where(&mut tx, ResendFilter::Endpoint { endpoint, since: &since }).await?;
    let after = json!({ "since": since, "resent": ids.len() });
    audit::record(&mut tx, &who.actor(), "endpoint.recovered", super::endpoints::target(endpoint), None, Some(after))
        .await?;
    tx.commit().await?;
    Ok(ids)
}

/// Replays a notification to its endpoints: every finished webhook delivery of it is
/// resent. The notification's sender may (`notifications:write`, its owner; an admin
/// any), the same through every door.
pub async fn replay_notification(db: &PgPool, who: &Principal, notification: Uuid) -> Result<Vec<Uuid>> {
    who.require(Scope::NotificationsWrite)?;
    let owner: String = sqlx::query_scalar("SELECT owner FROM notifications WHERE id = $1")
        .bind(notification)
        .fetch_optional(db)
        .await?
        .ok_or(Error::NotFound)?;
    who.visible(&owner, ())?;
    let mut tx = db.begin().await?;
    let ids = resend_where(&mut tx, ResendFilter::Notification(notification)).await?;
    let t = Target { kind: "notification", id: notification.to_string() };
    audit::record(&mut tx, &who.actor(), "notification.replayed", t, None, Some(json!({ "resent": ids.len() })))
        .await?;
    tx.commit().await?;
    Ok(ids)
}
