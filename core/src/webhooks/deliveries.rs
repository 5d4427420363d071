//! The deliveries of a webhook endpoint as its owner sees them, and starting finished
//! deliveries again: resend one, recover an endpoint's failures, replay a notification.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::endpoints::get;
use crate::access::{Principal, Scope};
use crate::audit::{self, Target};
use crate::bus::{self, BusMessage, Topic};
use crate::error::{Error, Result};
use crate::model::{Channel, DeliveryStatus};
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

/// Starts a new round of attempts for finished deliveries (never touching their past
/// attempts): status `retrying`, a fresh retry schedule from the next attempt, and a bus
/// message for attempt `attempts + 1`. Deliveries still in progress are left alone.
/// Returns the ids resent.
pub async fn resend_where(conn: &mut PgConnection, which: ResendFilter<'_>) -> Result<Vec<Uuid>> {
    let filter = match which {
        ResendFilter::Delivery { .. } => RESEND_DELIVERY,
        ResendFilter::Notification(_) => RESEND_NOTIFICATION,
        ResendFilter::Endpoint { .. } => RESEND_FAILED,
    };
    // Bounded: at most RESEND_PAGE deliveries per statement (the caller asks again).
    let sql = format!(
        "UPDATE deliveries d SET status = 'retrying', round_start = d.attempts, next_attempt_at = now(),
                lease_until = NULL, updated_at = now(), unrecorded_starts = 0
         WHERE d.id IN (SELECT d.id FROM deliveries d
                        WHERE d.status IN ('succeeded', 'failed', 'cancelled') AND {filter}
                        ORDER BY d.created_at, d.id LIMIT {RESEND_PAGE} FOR UPDATE SKIP LOCKED)
         RETURNING d.id, d.channel, herald_ordering_key(d.channel, d.target), d.attempts"
    );
    let q = sqlx::query_as::<_, (Uuid, Channel, String, i32)>(&sql);
    let q = match which {
        ResendFilter::Delivery { delivery, endpoint } => q.bind(delivery).bind(endpoint),
        ResendFilter::Notification(n) => q.bind(n),
        ResendFilter::Endpoint { endpoint, since } => q.bind(endpoint).bind(since),
    };
    let rows = q.fetch_all(&mut *conn).await?;
    let msgs: Vec<BusMessage> = rows
        .iter()
        .map(|(id, channel, key, attempts)| BusMessage::delivery(Topic::from(*channel), key.clone(), *id, attempts + 1))
        .collect();
    bus::enqueue(conn, &msgs).await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

// The filters of `resend_where` (the SQL check test expands `{filter}` with each).
const RESEND_DELIVERY: &str = "d.id = $1 AND d.endpoint_id = $2";
const RESEND_NOTIFICATION: &str = "d.notification_id = $1 AND d.channel = 'webhook'";
const RESEND_FAILED: &str = "d.endpoint_id = $1 AND d.status = 'failed' AND d.created_at >= $2";

/// The most deliveries one resend, recover or replay call starts again.
pub const RESEND_PAGE: usize = 1000;

/// Which finished deliveries to resend.
pub enum ResendFilter<'a> {
    /// One webhook delivery of an endpoint.
    Delivery { delivery: Uuid, endpoint: Uuid },
    /// Every webhook delivery of a notification.
    Notification(Uuid),
    /// An endpoint's failed deliveries created since a time.
    Endpoint { endpoint: Uuid, since: &'a DateTime<Utc> },
}

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
