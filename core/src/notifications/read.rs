//! A notification as its sender reads it: its deliveries and their attempts.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::access::{Principal, Scope};
use crate::error::{Error, Result};
use crate::model::{v7_floor, Channel, DeliveryStatus, NotificationStatus};

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
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
    /// The SMTP relay that made an email attempt (`host:port`).
    pub relay: Option<String>,
    #[serde(skip)]
    pub delivery_id: Uuid,
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
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
    /// An email delivery's rendered message (template, version, subject, text, HTML),
    /// fixed when it was accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<Value>,
    /// An email delivery's opens and clicks, when its template version tracks them.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[sqlx(skip)]
    pub tracking: Option<crate::tracking::DeliveryTracking>,
    #[serde(skip)]
    pub endpoint_id: Option<Uuid>,
    #[sqlx(skip)]
    pub attempts: Vec<AttemptView>,
    /// What came back about an email after it was sent: bounces, soft bounces,
    /// complaints, unsubscribes (oldest first).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[sqlx(skip)]
    pub feedback: Vec<FeedbackView>,
}

/// One report about a sent email.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct FeedbackView {
    pub at: DateTime<Utc>,
    /// `bounce`, `soft_bounce`, `complaint` or `unsubscribe`.
    pub kind: String,
    /// `inbound_smtp`, `ses`, `mailgun`, `one_click`, `preferences`, `mailto`.
    pub source: String,
    pub status_code: Option<String>,
    pub detail: Option<String>,
    #[serde(skip)]
    pub delivery_id: Uuid,
}

#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
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
     a.outcome, a.smtp_code, a.smtp_reply, a.http_status, a.response_excerpt, a.error, a.relay";

/// A notification with its deliveries and attempts, if the caller may see it: its
/// sender's owner (or an admin). Another owner's notification is "not found".
///
/// A webhook endpoint's responses belong to the endpoint's owner: the sender sees the
/// status of deliveries to other owners' endpoints, not what those servers said.
pub async fn get(db: &PgPool, who: &Principal, id: Uuid) -> Result<NotificationView> {
    who.require(Scope::NotificationsRead)?;
    let mut n: NotificationView = sqlx::query_as(
        "SELECT id, event_type, payload, recipients, created_at, owner FROM notifications WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await?
    .ok_or(Error::NotFound)?;
    who.visible(&n.owner, ())?;
    n.deliveries = sqlx::query_as(
        "SELECT id, channel, target, status, attempts AS attempt_count, next_attempt_at, last_error, created_at,
                updated_at, endpoint_id, CASE WHEN channel = 'email' THEN content END AS email
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
            sqlx::query_scalar(
                "SELECT id FROM endpoints WHERE id = ANY($1) AND herald_manages(owner, admin, $2, false)",
            )
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
    let emails: Vec<(Uuid, crate::templates::RenderedEmail)> =
        n.deliveries.iter().filter_map(|d| Some((d.id, serde_json::from_value(d.email.clone()?).ok()?))).collect();
    let mut tracked = crate::tracking::for_deliveries(db, &emails).await?;
    for d in &mut n.deliveries {
        d.tracking = tracked.remove(&d.id);
    }
    let email_ids: Vec<Uuid> = n.deliveries.iter().filter(|d| d.channel == Channel::Email).map(|d| d.id).collect();
    if !email_ids.is_empty() {
        let feedback: Vec<FeedbackView> = sqlx::query_as(
            "SELECT at, kind, source, status_code, detail, delivery_id FROM email_feedback
             WHERE delivery_id = ANY($1) ORDER BY at, id",
        )
        .bind(&email_ids)
        .fetch_all(db)
        .await?;
        for f in feedback {
            if let Some(d) = n.deliveries.iter_mut().find(|d| d.id == f.delivery_id) {
                d.feedback.push(f);
            }
        }
    }
    n.status = NotificationStatus::of(n.deliveries.iter().map(|d| d.status));
    Ok(n)
}

/// What the history is narrowed to. Every field set narrows it; none set: everything
/// the caller may see, newest first.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HistoryFilter {
    pub event_type: Option<String>,
    /// Notifications with at least one delivery in this status.
    pub status: Option<DeliveryStatus>,
    /// Notifications with at least one delivery on this channel.
    pub channel: Option<Channel>,
    /// Notifications with an email delivery to this address.
    pub recipient: Option<String>,
    /// Notifications with a delivery to this webhook endpoint.
    pub endpoint: Option<Uuid>,
    /// Accepted at or after.
    pub since: Option<DateTime<Utc>>,
    /// Accepted before.
    pub until: Option<DateTime<Utc>>,
    /// The page cursor: notifications older than this one (a previous page's last id).
    pub before: Option<Uuid>,
}

/// The history's filters as words (a query string, a console form): [`HistoryQuery::filter`]
/// says what is wrong with them. Empty words are no filter.
#[derive(Debug, Default, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    pub event_type: Option<String>,
    pub status: Option<String>,
    pub channel: Option<String>,
    pub recipient: Option<String>,
    pub endpoint: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub before: Option<String>,
    pub limit: Option<i64>,
}

fn word(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

fn time(name: &str, v: &Option<String>) -> Result<Option<DateTime<Utc>>> {
    crate::model::parse_time(name, v.as_deref().unwrap_or(""))
}

fn parsed<T: std::str::FromStr<Err = String>>(name: &str, v: &Option<String>) -> Result<Option<T>> {
    word(v).map(|v| v.parse().map_err(|e| Error::Invalid(format!("{name}: {e}")))).transpose()
}

fn id(name: &str, v: &Option<String>) -> Result<Option<Uuid>> {
    word(v).map(|v| v.parse().map_err(|_| Error::Invalid(format!("{name} must be an id")))).transpose()
}

impl HistoryQuery {
    /// The filter and the page size (50 unless given).
    pub fn filter(&self) -> Result<(HistoryFilter, i64)> {
        let f = HistoryFilter {
            event_type: word(&self.event_type).map(str::to_owned),
            status: parsed("status", &self.status)?,
            channel: parsed("channel", &self.channel)?,
            recipient: word(&self.recipient).map(str::to_owned),
            endpoint: id("endpoint", &self.endpoint)?,
            since: time("since", &self.since)?,
            until: time("until", &self.until)?,
            before: id("before", &self.before)?,
        };
        Ok((f, self.limit.unwrap_or(50)))
    }
}

/// A notification as the history lists it.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct NotificationSummary {
    pub id: Uuid,
    pub event_type: String,
    pub recipients: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub owner: String,
    #[sqlx(skip)]
    pub status: NotificationStatus,
    #[sqlx(skip)]
    pub deliveries: i64,
    #[sqlx(skip)]
    pub failed: i64,
}

/// The history's statement up to the delivery filters: the caller's owner, the event
/// type, the cursor and the time range ($1 to $5).
const HISTORY_SELECT: &str = "SELECT n.id, n.event_type, n.recipients, n.created_at, n.owner
 FROM notifications n
 WHERE ($1::text IS NULL OR n.owner = $1)
   AND ($2::text IS NULL OR n.event_type = $2)
   AND ($3::uuid IS NULL OR n.id < $3)
   AND ($4::uuid IS NULL OR n.id >= $4)
   AND ($5::uuid IS NULL OR n.id < $5)";

/// The largest page the history answers.
pub const HISTORY_PAGE_MAX: i64 = 200;

/// One page of the history, newest first: the caller's own notifications (an admin:
/// everyone's). Keyset-paginated on the time-ordered id, so every page costs the same
/// however deep it is.
pub async fn list(db: &PgPool, who: &Principal, f: &HistoryFilter, limit: i64) -> Result<Vec<NotificationSummary>> {
    who.require(Scope::NotificationsRead)?;
    if !(1..=HISTORY_PAGE_MAX).contains(&limit) {
        return Err(Error::Invalid(format!("limit must be between 1 and {HISTORY_PAGE_MAX}")));
    }
    for (name, v) in [("recipient", &f.recipient), ("event_type", &f.event_type)] {
        if v.as_deref().is_some_and(|v| v.contains('\0')) {
            return Err(Error::NulCharacter(name.into()));
        }
    }
    let owner = (!who.is_admin()).then_some(who.owner.as_str());
    // Not a prepared statement: planned with the values, so the unused filters fold
    // away and the planner picks the index of the filter that is there. The delivery
    // filters are an EXISTS at the top level (a semi-join the planner can drive from a
    // deliveries index), present only when one is given: a notification without
    // deliveries still lists.
    let by_delivery = f.status.is_some() || f.channel.is_some() || f.recipient.is_some() || f.endpoint.is_some();
    let sql = if by_delivery {
        format!(
            "{HISTORY_SELECT}
               AND EXISTS (SELECT 1 FROM deliveries d
                           WHERE d.notification_id = n.id
                             AND ($6::text IS NULL OR d.status = $6)
                             AND ($7::text IS NULL OR d.channel = $7)
                             AND ($8::text IS NULL OR (d.channel = 'email' AND d.target = $8))
                             AND ($9::uuid IS NULL OR d.endpoint_id = $9))
             ORDER BY n.id DESC LIMIT $10"
        )
    } else {
        // $6 to $9 are all null here.
        format!(
            "{HISTORY_SELECT}
               AND $6::text IS NULL AND $7::text IS NULL AND $8::text IS NULL AND $9::uuid IS NULL
             ORDER BY n.id DESC LIMIT $10"
        )
    };
    let mut page: Vec<NotificationSummary> = sqlx::query_as(&sql)
        .persistent(false)
        .bind(owner)
        .bind(f.event_type.as_deref())
        .bind(f.before)
        .bind(f.since.map(v7_floor))
        .bind(f.until.map(v7_floor))
        .bind(f.status)
        .bind(f.channel)
        .bind(f.recipient.as_deref())
        .bind(f.endpoint)
        .bind(limit)
        .fetch_all(db)
        .await?;
    if page.is_empty() {
        return Ok(page);
    }
    let ids: Vec<Uuid> = page.iter().map(|n| n.id).collect();
    let counts: Vec<(Uuid, DeliveryStatus, i64)> = sqlx::query_as(
        "SELECT notification_id, status, count(*) FROM deliveries WHERE notification_id = ANY($1) GROUP BY 1, 2",
    )
    .bind(&ids)
    .fetch_all(db)
    .await?;
    for n in &mut page {
        let mine = counts.iter().filter(|(id, ..)| *id == n.id);
        n.deliveries = mine.clone().map(|(.., c)| c).sum();
        n.failed = mine.clone().filter(|(_, s, _)| *s == DeliveryStatus::Failed).map(|(.., c)| c).sum();
        // One row per status present: the derived status depends only on which are.
        n.status = NotificationStatus::of(mine.map(|(_, s, _)| *s));
    }
    Ok(page)
}

/// Sends a finished email delivery again (a new round of attempts), unless its address
/// is suppressed now. The caller must see the notification and may write notifications.
pub async fn resend_email(
    db: &sqlx::PgPool,
    who: &crate::access::Principal,
    delivery: Uuid,
) -> crate::error::Result<()> {
    use crate::error::Error;
    who.require(crate::access::Scope::NotificationsWrite)?;
    let row: Option<(String, crate::model::DeliveryStatus, Option<String>)> = sqlx::query_as(
        "SELECT n.owner, d.status,
                herald_suppression(herald_ordering_key('email', d.target), et.category, et.transactional)
         FROM deliveries d JOIN notifications n ON n.id = d.notification_id
         LEFT JOIN event_types et ON et.name = n.event_type
         WHERE d.id = $1 AND d.channel = 'email'",
    )
    .bind(delivery)
    .fetch_optional(db)
    .await?;
    let Some((owner, status, suppressed)) = row else { return Err(Error::NotFound) };
    who.visible(&owner, ())?;
    if let Some(why) = suppressed {
        return Err(Error::Conflict(format!("not resent: {why}")));
    }
    if status.is_open() {
        return Err(Error::Conflict(format!("the delivery is still {status}; resend it once it has finished")));
    }
    let mut tx = db.begin().await?;
    let done = crate::delivery_status::reopen(&mut tx, crate::delivery_status::ResendFilter::Email(delivery)).await?;
    if done.is_empty() {
        return Err(Error::Conflict("the delivery changed meanwhile; look again".into()));
    }
    let t = crate::audit::Target { kind: "delivery", id: delivery.to_string() };
    crate::audit::record(
        &mut tx,
        &who.actor(),
        "delivery.resent",
        t,
        None,
        Some(serde_json::json!({ "channel": "email" })),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_bound_is_the_smallest_id_of_its_millisecond() {
        let t = DateTime::parse_from_rfc3339("2026-11-29T12:00:00.123Z").unwrap().with_timezone(&Utc);
        let floor = v7_floor(t);
        assert_eq!(floor.get_version_num(), 7);
        let (secs, nanos) = floor.get_timestamp().unwrap().to_unix();
        assert_eq!((secs, nanos / 1_000_000), (t.timestamp() as u64, 123));
        let later = Uuid::new_v7(uuid::Timestamp::from_unix(uuid::NoContext, secs, nanos));
        assert!(later >= floor);
        // Out of UUIDv7's range: clamped, never wrapped round to a small id.
        let far = DateTime::parse_from_rfc3339("+200000-01-01T00:00:00Z").map(|d| d.with_timezone(&Utc));
        if let Ok(far) = far {
            assert!(v7_floor(far) > floor);
        }
        assert!(v7_floor(DateTime::<Utc>::MIN_UTC) < floor);
    }
}
