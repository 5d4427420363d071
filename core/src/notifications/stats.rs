//! The dashboard's figures for a window of time: notifications accepted, deliveries by
//! channel and outcome, the success rate, attempt durations, failing and disabled
//! endpoints, and the bus backlog. Every query reads a time range as a range of UUIDv7
//! ids (notifications, deliveries and therefore attempts are keyed by them), so each is
//! an index range scan.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::access::Principal;
use crate::config::TrackingMode;
use crate::error::{Error, Result};
use crate::model::{Channel, DeliveryStatus};

/// A window the dashboard shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Hour,
    Day,
    Week,
}

impl Window {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "1h" | "" => Ok(Window::Hour),
            "24h" => Ok(Window::Day),
            "7d" => Ok(Window::Week),
            other => Err(Error::Invalid(format!("window '{other}' is not one of 1h, 24h, 7d"))),
        }
    }

    pub fn length(self) -> Duration {
        match self {
            Window::Hour => Duration::hours(1),
            Window::Day => Duration::hours(24),
            Window::Week => Duration::days(7),
        }
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Outcome {
    pub channel: Channel,
    pub status: DeliveryStatus,
    pub count: i64,
}

/// One bar of the chart: a twelfth of the window.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Bucket {
    pub start: DateTime<Utc>,
    pub accepted: i64,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct EndpointHealth {
    pub id: Uuid,
    pub url: String,
    pub owner: String,
    pub enabled: bool,
    pub since: Option<DateTime<Utc>>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Dashboard {
    pub since: DateTime<Utc>,
    pub accepted: i64,
    pub outcomes: Vec<Outcome>,
    /// Succeeded over finished (succeeded + failed) deliveries; `None` before any finished.
    pub success_rate: Option<f64>,
    pub attempts: i64,
    pub attempt_p50_ms: Option<f64>,
    pub attempt_p99_ms: Option<f64>,
    pub buckets: Vec<Bucket>,
    pub failing_endpoints: i64,
    pub disabled_endpoints: i64,
    /// The failing and disabled endpoints, most recent first (at most 20).
    pub unhealthy: Vec<EndpointHealth>,
    /// Bus messages due and not yet taken from the outbox (at most 100,000 counted).
    pub backlog: i64,
    /// How long the oldest of them has been due.
    pub oldest_backlog_seconds: Option<f64>,
    /// Email tracking: open and click rates per template that tracks (`HERALD_TRACKING`).
    pub tracking_mode: &'static str,
    pub email_tracking: Vec<crate::tracking::TemplateRates>,
    /// Bounce and complaint rates of the window's emails, per template and per relay.
    pub email_feedback: Vec<FeedbackRates>,
}

/// Bounces and complaints over emails the relay accepted (succeeded, bounced or
/// complained), for one template or one relay.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct FeedbackRates {
    /// `template` or `relay`.
    pub by: String,
    pub name: String,
    pub sent: i64,
    pub bounced: i64,
    pub complained: i64,
    pub bounce_rate: Option<f64>,
    pub complaint_rate: Option<f64>,
}

/// Gmail's guidance: keep complaints under 0.3 % (under 0.1 % to be safe).
pub const COMPLAINT_RATE_LIMIT: f64 = 0.003;
/// Bounces: providers warn from about 2 % (Amazon SES reviews accounts at 5 %).
pub const BOUNCE_RATE_LIMIT: f64 = 0.02;

/// The dashboard (admins).
pub async fn dashboard(db: &PgPool, who: &Principal, window: Window, tracking: TrackingMode) -> Result<Dashboard> {
    who.require_admin()?;
    let now = Utc::now();
    let since = now - window.length();
    let from = crate::model::v7_floor(since);
    let accepted: i64 =
        sqlx::query_scalar("SELECT count(*) FROM notifications WHERE id >= $1").bind(from).fetch_one(db).await?;
    let outcomes: Vec<Outcome> = sqlx::query_as(
        "SELECT channel, status, count(*) AS count FROM deliveries WHERE notification_id >= $1
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(from)
    .fetch_all(db)
    .await?;
    let count = |s: DeliveryStatus| outcomes.iter().filter(|o| o.status == s).map(|o| o.count).sum::<i64>();
    let (ok, failed) = (count(DeliveryStatus::Succeeded), count(DeliveryStatus::Failed));
    let success_rate = (ok + failed > 0).then(|| ok as f64 / (ok + failed) as f64);
    let (attempts, p50, p99): (i64, Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms),
                percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_ms)
         FROM attempts WHERE delivery_id >= $1",
    )
    .bind(from)
    .fetch_one(db)
    .await?;
    let step = window.length() / 12;
    let buckets: Vec<Bucket> = sqlx::query_as(
        "SELECT g.start, count(n.id) AS accepted
         FROM generate_series(0, 11) AS i
         CROSS JOIN LATERAL (SELECT $2::timestamptz + i * make_interval(secs => $3) AS start) AS g
         LEFT JOIN notifications n
           ON n.id >= $1 AND n.created_at >= g.start AND n.created_at < g.start + make_interval(secs => $3)
         GROUP BY g.start ORDER BY g.start",
    )
    .bind(from)
    .bind(since)
    .bind(step.num_milliseconds() as f64 / 1000.0)
    .fetch_all(db)
    .await?;
    let (failing, disabled): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE enabled AND failing_since IS NOT NULL), count(*) FILTER (WHERE NOT enabled)
         FROM endpoints",
    )
    .fetch_one(db)
    .await?;
    let unhealthy: Vec<EndpointHealth> = sqlx::query_as(
        "SELECT id, url, owner, enabled, CASE WHEN enabled THEN failing_since ELSE disabled_at END AS since,
                disabled_reason AS reason
         FROM endpoints WHERE NOT enabled OR failing_since IS NOT NULL
         ORDER BY coalesce(failing_since, disabled_at) DESC NULLS LAST LIMIT 20",
    )
    .fetch_all(db)
    .await?;
    let (backlog, oldest): (i64, Option<f64>) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM (SELECT 1 FROM outbox WHERE available_at <= now() LIMIT 100000) b),
                (SELECT extract(epoch FROM now() - available_at)::float8 FROM outbox WHERE available_at <= now()
                 ORDER BY id LIMIT 1)",
    )
    .fetch_one(db)
    .await?;
    let email_tracking = crate::tracking::template_rates(db, since, tracking).await?;
    // Per relay: the relay of each email's last attempt.
    let email_feedback: Vec<FeedbackRates> = sqlx::query_as(
        "WITH e AS (
            SELECT d.status, coalesce(d.email_template, '(none)') AS template,
                   (SELECT a.relay FROM attempts a WHERE a.delivery_id = d.id ORDER BY a.attempt_no DESC LIMIT 1) AS relay
            FROM deliveries d
            WHERE d.notification_id >= $1 AND d.channel = 'email' AND d.status IN ('succeeded', 'bounced', 'complained')
         ), g AS (
            SELECT 'template' AS by, template AS name, count(*) AS sent,
                   count(*) FILTER (WHERE status = 'bounced') AS bounced,
                   count(*) FILTER (WHERE status = 'complained') AS complained
            FROM e GROUP BY template
            UNION ALL
            SELECT 'relay', relay, count(*), count(*) FILTER (WHERE status = 'bounced'),
                   count(*) FILTER (WHERE status = 'complained')
            FROM e WHERE relay IS NOT NULL GROUP BY relay
         )
         SELECT by, name, sent, bounced, complained,
                bounced::float8 / nullif(sent, 0) AS bounce_rate, complained::float8 / nullif(sent, 0) AS complaint_rate
         FROM g ORDER BY by DESC, name",
    )
    .bind(from)
    .fetch_all(db)
    .await?;
    Ok(Dashboard {
        since,
        accepted,
        outcomes,
        success_rate,
        attempts,
        attempt_p50_ms: p50,
        attempt_p99_ms: p99,
        buckets,
        failing_endpoints: failing,
        disabled_endpoints: disabled,
        unhealthy,
        backlog,
        oldest_backlog_seconds: oldest,
        tracking_mode: tracking.as_str(),
        email_tracking,
        email_feedback,
    })
}
