//! Every change of a delivery's status, in one place.
//!
//! A delivery's status is written by the statements of this module and by the
//! accepting statement's insert (`notifications::accept`, which sets the first status:
//! `pending`, `in_flight` on the fast lane, or `suppressed`); a test
//! (`server/tests/it/sql.rs`) fails if any other statement in `core/src` writes it.
//! The table below is every change these statements make; each statement's `WHERE`
//! names the statuses it starts from and its `SET` the one it writes.
//!
//! | from | to | by |
//! |---|---|---|
//! | `pending`, `retrying`, `in_flight` past its lease | `in_flight` | [`start_attempts`] |
//! | the same | `failed` | [`start_attempts`] (poisoned: never recorded) |
//! | `in_flight` | `succeeded`, `retrying`, `failed`, `cancelled` | [`record`] (`cancelled`: by the endpoint's transformation) |
//! | `in_flight` | `pending`, `retrying` | [`defer`], [`give_back_lane`] |
//! | `in_flight` (worker gone) | `retrying` | [`sweep`] |
//! | `pending`, `retrying`, `in_flight` | `suppressed` | [`suppress`] (the address was suppressed since) |
//! | `succeeded` | `bounced`, `complained` | [`feedback`] |
//! | `bounced` | `complained` | [`feedback`] |
//! | `succeeded`, `failed`, `cancelled`, `bounced`, `complained`, `suppressed` | `retrying` | [`reopen`] (a resend) |

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::bus::{self, BusMessage, DeliveryJob, Topic};
use crate::model::{Channel, DeliveryStatus};

/// A delivery this worker now owns for one attempt.
#[derive(Debug, sqlx::FromRow)]
pub struct Started {
    pub id: Uuid,
    pub target: String,
    /// The endpoint of a webhook delivery (`None` for email, or once it was deleted).
    pub endpoint_id: Option<Uuid>,
    pub content: serde_json::Value,
    /// The attempt being made (1-based).
    pub attempt: i32,
    /// Attempts made before the current round (a resend starts a new round).
    pub round_start: i32,
}

impl Started {
    /// Failed attempts made in this round, for the retry schedule.
    pub fn round_attempts(&self) -> u32 {
        (self.attempt - self.round_start).max(1) as u32
    }
}

/// What [`start_attempts`] made of a batch's jobs (indexes into the batch).
#[derive(Debug, Default)]
pub struct Claimed {
    /// Attempts this worker now makes.
    pub owned: Vec<(usize, Started)>,
    /// Already done or superseded: ack without work.
    pub stale: Vec<usize>,
    /// Another live worker holds the delivery: hand back, it comes again after its lease.
    pub busy: Vec<usize>,
    /// Started `max_starts` times without an outcome ever being recorded: the delivery
    /// was failed; dead-letter the message with [`POISONED`].
    pub poisoned: Vec<usize>,
}

/// Why a delivery was failed and its message dead-lettered by [`start_attempts`].
pub const POISONED: &str =
    "the attempt's outcome could not be recorded after repeated deliveries of this message; the delivery was failed";

/// Takes ownership of the deliveries the jobs refer to, in one statement (see
/// [`Claimed`]). Every start counts in `unrecorded_starts` until an outcome is recorded;
/// a delivery that reached `max_starts` is not started again but failed, so one message
/// whose outcome cannot be recorded is never re-sent forever.
pub async fn start_attempts(
    db: &PgPool,
    channel: Channel,
    jobs: &[(usize, DeliveryJob)],
    lease: Duration,
    max_starts: i32,
) -> sqlx::Result<Claimed> {
    let ids: Vec<Uuid> = jobs.iter().map(|(_, j)| j.delivery_id).collect();
    let attempts: Vec<i32> = jobs.iter().map(|(_, j)| j.attempt).collect();
    // `d.id = ANY($1)` beside the join: the planner then always reaches the batch's rows
    // by primary key. Without it, statistics taken while the table was small can make it
    // scan every open delivery and join each against the whole batch (seen: 0.5 s per
    // batch of 512 instead of a few ms).
    // Not waiting for the disk (see `db::begin_unflushed`): a start lost in a database
    // crash leaves the delivery to be started again; its outcome is always recorded
    // durably before its message is acknowledged.
    let mut tx = crate::db::begin_unflushed(db).await?;
    let started: Vec<Started> = sqlx::query_as(
        "UPDATE deliveries d
         SET status = 'in_flight', lease_until = now() + make_interval(secs => $4), updated_at = now(),
             unrecorded_starts = d.unrecorded_starts + 1
         FROM unnest($1::uuid[], $2::int4[]) AS j(id, attempt)
         WHERE d.id = ANY($1) AND d.id = j.id AND d.channel = $3 AND d.attempts = j.attempt - 1
           AND d.unrecorded_starts < $5
           AND (d.status IN ('pending', 'retrying') OR (d.status = 'in_flight' AND d.lease_until < now()))
         RETURNING d.id, d.target, d.endpoint_id, d.content, j.attempt, d.round_start",
    )
    .bind(&ids)
    .bind(&attempts)
    .bind(channel)
    .bind(lease.as_secs_f64())
    .bind(max_starts)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;

    let mut claimed = Claimed::default();
    let mut rest: Vec<&(usize, DeliveryJob)> = Vec::new();
    let mut started = started;
    for job in jobs {
        if let Some(pos) = started.iter().position(|s| s.id == job.1.delivery_id && s.attempt == job.1.attempt) {
            claimed.owned.push((job.0, started.swap_remove(pos)));
        } else {
            rest.push(job);
        }
    }
    if !rest.is_empty() {
        let ids: Vec<Uuid> = rest.iter().map(|(_, j)| j.delivery_id).collect();
        let attempts: Vec<i32> = rest.iter().map(|(_, j)| j.attempt).collect();
        // One statement: fail the poisoned ones, and report which are held by a live worker.
        let rows: Vec<(Uuid, i32, bool)> = sqlx::query_as(
            "WITH j AS (SELECT * FROM unnest($1::uuid[], $2::int4[]) AS j(id, attempt)),
             poisoned AS (
                UPDATE deliveries d SET status = 'failed', lease_until = NULL, next_attempt_at = NULL,
                       last_error = $3, updated_at = now()
                FROM j
                WHERE d.id = ANY($1) AND d.id = j.id AND d.attempts = j.attempt - 1 AND d.unrecorded_starts >= $4
                  AND (d.status IN ('pending', 'retrying') OR (d.status = 'in_flight' AND d.lease_until < now()))
                RETURNING d.id, j.attempt
             )
             SELECT id, attempt, true FROM poisoned
             UNION ALL
             SELECT d.id, d.attempts + 1, false FROM deliveries d
             WHERE d.id = ANY($1) AND d.status = 'in_flight' AND d.lease_until >= now()",
        )
        .bind(&ids)
        .bind(&attempts)
        .bind(POISONED)
        .bind(max_starts)
        .fetch_all(db)
        .await?;
        for (idx, job) in rest {
            let hit = rows.iter().find(|(id, attempt, _)| *id == job.delivery_id && *attempt == job.attempt);
            match hit {
                Some((_, _, true)) => claimed.poisoned.push(*idx),
                Some((_, _, false)) => claimed.busy.push(*idx),
                None => claimed.stale.push(*idx),
            }
        }
    }
    Ok(claimed)
}

/// Pushes back the lease of deliveries this worker is still attempting.
pub async fn extend_leases(db: &PgPool, ids: &[Uuid], lease: Duration) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE deliveries SET lease_until = now() + make_interval(secs => $2)
         WHERE id = ANY($1) AND status = 'in_flight'",
    )
    .bind(ids)
    .bind(lease.as_secs_f64())
    .execute(db)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    TransientFailure,
    PermanentFailure,
    /// The endpoint's transformation cancelled the delivery: nothing was sent.
    Cancelled,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::TransientFailure => "transient_failure",
            Outcome::PermanentFailure => "permanent_failure",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// One finished attempt, ready to record.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub delivery_id: Uuid,
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub duration_ms: i32,
    pub outcome: Outcome,
    pub smtp_code: Option<i16>,
    pub smtp_reply: Option<String>,
    pub http_status: Option<i16>,
    pub response_excerpt: Option<String>,
    pub error: Option<String>,
    /// The SMTP relay that made an email attempt (the last tried, after fail-overs).
    pub relay: Option<String>,
    /// For transient failures: when to try again, or `None` when the schedule is spent.
    pub retry_at: Option<DateTime<Utc>>,
    /// Ordering key of the retry message.
    pub key: String,
}

impl AttemptRecord {
    /// A record for attempt `s`, starting now, with `outcome` until told otherwise.
    pub fn begin(s: &Started, key: &str, outcome: Outcome) -> Self {
        Self {
            delivery_id: s.id,
            attempt: s.attempt,
            started_at: Utc::now(),
            duration_ms: 0,
            outcome,
            smtp_code: None,
            smtp_reply: None,
            http_status: None,
            response_excerpt: None,
            error: None,
            relay: None,
            retry_at: None,
            key: key.to_owned(),
        }
    }

    /// The delivery's status after this attempt, and when its next attempt is due
    /// (only when it is retrying).
    fn next(&self) -> (DeliveryStatus, Option<DateTime<Utc>>) {
        match (self.outcome, self.retry_at) {
            (Outcome::Succeeded, _) => (DeliveryStatus::Succeeded, None),
            (Outcome::TransientFailure, Some(at)) => (DeliveryStatus::Retrying, Some(at)),
            (Outcome::Cancelled, _) => (DeliveryStatus::Cancelled, None),
            _ => (DeliveryStatus::Failed, None),
        }
    }
}

/// Records a batch of outcomes in one transaction: attempt rows, delivery statuses,
/// and the bus messages for retries. Guarded by the attempt count, so a worker whose
/// lease was taken over cannot overwrite the newer state.
pub async fn record(db: &PgPool, topic: Topic, records: &[AttemptRecord]) -> sqlx::Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let mut tx = db.begin().await?;
    let col = |f: fn(&AttemptRecord) -> Option<String>| records.iter().map(f).collect::<Vec<_>>();
    let ids: Vec<Uuid> = records.iter().map(|r| r.delivery_id).collect();
    let attempts: Vec<i32> = records.iter().map(|r| r.attempt).collect();
    let (statuses, retry_at): (Vec<DeliveryStatus>, Vec<Option<DateTime<Utc>>>) =
        records.iter().map(AttemptRecord::next).unzip();
    let errors: Vec<Option<String>> =
        col(|r| r.error.clone().or_else(|| r.smtp_reply.clone().filter(|_| r.outcome != Outcome::Succeeded)))
            .into_iter()
            .map(|e| e.map(sanitize))
            .collect();
    let updated: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE deliveries d
         SET status = u.status, attempts = u.attempt, next_attempt_at = u.retry_at, lease_until = NULL,
             last_error = u.error, updated_at = now(), unrecorded_starts = 0
         FROM unnest($1::uuid[], $2::int4[], $3::text[], $4::timestamptz[], $5::text[]) AS u(id, attempt, status, retry_at, error)
         WHERE d.id = u.id AND d.attempts = u.attempt - 1
         RETURNING d.id",
    )
    .bind(&ids)
    .bind(&attempts)
    .bind(&statuses)
    .bind(&retry_at)
    .bind(&errors)
    .fetch_all(&mut *tx)
    .await?;
    let kept: Vec<&AttemptRecord> = records.iter().filter(|r| updated.contains(&r.delivery_id)).collect();
    if kept.len() < records.len() {
        tracing::warn!(dropped = records.len() - kept.len(), "attempt outcomes superseded by another worker");
    }
    let k = |f: fn(&AttemptRecord) -> Option<String>| kept.iter().map(|r| f(r).map(sanitize)).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO attempts (delivery_id, attempt_no, started_at, duration_ms, outcome, smtp_code, smtp_reply,
                               http_status, response_excerpt, error, relay)
         SELECT * FROM unnest($1::uuid[], $2::int4[], $3::timestamptz[], $4::int4[], $5::text[], $6::int2[],
                              $7::text[], $8::int2[], $9::text[], $10::text[], $11::text[])",
    )
    .bind(kept.iter().map(|r| r.delivery_id).collect::<Vec<_>>())
    .bind(kept.iter().map(|r| r.attempt).collect::<Vec<_>>())
    .bind(kept.iter().map(|r| r.started_at).collect::<Vec<_>>())
    .bind(kept.iter().map(|r| r.duration_ms).collect::<Vec<_>>())
    .bind(kept.iter().map(|r| r.outcome.as_str()).collect::<Vec<_>>())
    .bind(kept.iter().map(|r| r.smtp_code).collect::<Vec<_>>())
    .bind(k(|r| r.smtp_reply.clone()))
    .bind(kept.iter().map(|r| r.http_status).collect::<Vec<_>>())
    .bind(k(|r| r.response_excerpt.clone()))
    .bind(k(|r| r.error.clone()))
    .bind(kept.iter().map(|r| r.relay.clone()).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    let retries: Vec<BusMessage> = kept
        .iter()
        .filter_map(|r| {
            let (_, at) = r.next();
            Some(BusMessage::delivery(topic, r.key.clone(), r.delivery_id, r.attempt + 1).at(at?))
        })
        .collect();
    bus::enqueue(&mut tx, &retries).await?;
    tx.commit().await
}

/// Text a peer sent (a response excerpt, an SMTP reply, an error quoting either) made
/// storable: PostgreSQL text cannot hold U+0000, so it becomes U+FFFD.
pub fn sanitize(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    }
}

/// A started attempt handed back without being made (its endpoint is timing out in this
/// batch, or its rate limit has no slot soon): it is made later, at `until`.
#[derive(Debug, Clone)]
pub struct Deferred {
    pub delivery_id: Uuid,
    pub attempt: i32,
    pub until: DateTime<Utc>,
    pub key: String,
}

/// Releases deferred attempts and re-enqueues them for `until`, in one transaction.
/// No attempt row is written: nothing was tried.
pub async fn defer(db: &PgPool, topic: Topic, items: &[Deferred]) -> sqlx::Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    let mut tx = db.begin().await?;
    let released: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE deliveries d
         SET status = CASE WHEN d.attempts = 0 THEN 'pending' ELSE 'retrying' END, lease_until = NULL,
             next_attempt_at = u.until, updated_at = now(), unrecorded_starts = greatest(d.unrecorded_starts - 1, 0)
         FROM unnest($1::uuid[], $2::int4[], $3::timestamptz[]) AS u(id, attempt, until)
         WHERE d.id = u.id AND d.status = 'in_flight' AND d.attempts = u.attempt - 1
         RETURNING d.id",
    )
    .bind(items.iter().map(|i| i.delivery_id).collect::<Vec<_>>())
    .bind(items.iter().map(|i| i.attempt).collect::<Vec<_>>())
    .bind(items.iter().map(|i| i.until).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?;
    let msgs: Vec<BusMessage> = items
        .iter()
        .filter(|i| released.contains(&i.delivery_id))
        .map(|i| BusMessage::delivery(topic, i.key.clone(), i.delivery_id, i.attempt).at(i.until))
        .collect();
    bus::enqueue(&mut tx, &msgs).await?;
    tx.commit().await
}

/// Hands back the leases of attempts whose outcome could not be recorded, so their
/// redelivered messages start again at once (each start counts towards the poison
/// limit). The status stays `in_flight` until then.
pub async fn release_unrecorded(db: &PgPool, records: &[&AttemptRecord]) -> sqlx::Result<()> {
    let ids: Vec<Uuid> = records.iter().map(|r| r.delivery_id).collect();
    let attempts: Vec<i32> = records.iter().map(|r| r.attempt).collect();
    sqlx::query(
        "UPDATE deliveries d SET lease_until = now()
         FROM unnest($1::uuid[], $2::int4[]) AS u(id, attempt)
         WHERE d.id = u.id AND d.status = 'in_flight' AND d.attempts = u.attempt - 1",
    )
    .bind(&ids)
    .bind(&attempts)
    .execute(db)
    .await?;
    Ok(())
}

/// `in_flight` → `pending`: gives back a fast lane's rows (claimed by `token`) that no
/// dispatcher will work on any more, and the attempts the accepting statement started
/// for them, so the next consumer takes them at once instead of after the leases.
/// Returns how many outbox rows were handed back.
pub async fn give_back_lane(db: &PgPool, token: Uuid) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "WITH r AS (
            UPDATE outbox SET claimed_until = NULL, claim_token = NULL WHERE claim_token = $1
            RETURNING payload
         ), d AS (
            UPDATE deliveries d SET status = 'pending', lease_until = NULL,
                   unrecorded_starts = greatest(d.unrecorded_starts - 1, 0), updated_at = now()
            FROM r
            WHERE d.id = (r.payload->>'delivery_id')::uuid AND d.status = 'in_flight'
              AND d.attempts = (r.payload->>'attempt')::int - 1
         )
         SELECT count(*) FROM r",
    )
    .bind(token)
    .fetch_one(db)
    .await
}

/// The sweeper's statement (see `dispatch::sweeper`): `in_flight` past its lease by more
/// than `grace` → `retrying`; `pending`/`retrying` overdue with no message on its way keep
/// their status. Either gets a new bus message for its next attempt.
pub async fn sweep(db: &PgPool, grace: Duration) -> sqlx::Result<u64> {
    let r = sqlx::query(
        "WITH stuck AS (
            SELECT d.id FROM deliveries d
            WHERE (d.status = 'in_flight' AND d.lease_until < now() - make_interval(secs => $1))
               OR (d.status IN ('pending', 'retrying')
                   AND coalesce(d.next_attempt_at, d.created_at) < now() - make_interval(secs => $1)
                   AND (d.published_at IS NULL OR d.published_at < coalesce(d.next_attempt_at, d.created_at))
                   AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.payload->>'delivery_id' = d.id::text))
            ORDER BY d.id LIMIT 1000
            FOR UPDATE SKIP LOCKED
         ), moved AS (
            UPDATE deliveries d
            SET status = CASE WHEN d.status = 'in_flight' THEN 'retrying' ELSE d.status END,
                lease_until = NULL, next_attempt_at = now(), updated_at = now()
            FROM stuck WHERE d.id = stuck.id
            RETURNING d.id, d.channel, d.target, d.attempts
         )
         INSERT INTO outbox (topic, key, payload)
         SELECT channel, herald_ordering_key(channel, target), jsonb_build_object('delivery_id', id, 'attempt', attempts + 1) FROM moved",
    )
    .bind(grace.as_secs_f64())
    .execute(db)
    .await?;
    Ok(r.rows_affected())
}

/// Open or started → `suppressed`: attempts a dispatcher started for an address that
/// was suppressed after the notification was accepted. Nothing is sent and no attempt
/// row is written; `last_error` says why. Returns the deliveries changed.
pub async fn suppress(db: &PgPool, items: &[(Uuid, i32, String)]) -> sqlx::Result<Vec<Uuid>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        "UPDATE deliveries d
         SET status = 'suppressed', lease_until = NULL, next_attempt_at = NULL, last_error = u.reason,
             updated_at = now(), unrecorded_starts = 0
         FROM unnest($1::uuid[], $2::int4[], $3::text[]) AS u(id, attempt, reason)
         WHERE d.id = u.id AND d.attempts = u.attempt - 1 AND d.status IN ('pending', 'retrying', 'in_flight')
         RETURNING d.id",
    )
    .bind(items.iter().map(|i| i.0).collect::<Vec<_>>())
    .bind(items.iter().map(|i| i.1).collect::<Vec<_>>())
    .bind(items.iter().map(|i| i.2.clone()).collect::<Vec<_>>())
    .fetch_all(db)
    .await
}

/// What a mail system reported about an email after it was accepted for delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feedback {
    /// A permanent (5.x.x) bounce: `succeeded` → `bounced`.
    Bounced,
    /// The recipient marked it as spam: `succeeded`/`bounced` → `complained`.
    Complained,
}

/// Records a bounce or complaint on an email delivery (see [`Feedback`]). Returns the
/// status the delivery has afterwards (unchanged when the report does not change it,
/// say a second report), or `None` for a delivery that does not exist or is not an email.
pub async fn feedback(
    conn: &mut PgConnection,
    delivery: Uuid,
    what: Feedback,
    detail: &str,
) -> sqlx::Result<Option<DeliveryStatus>> {
    let (to, from): (&str, &[&str]) = match what {
        Feedback::Bounced => ("bounced", &["succeeded"]),
        Feedback::Complained => ("complained", &["succeeded", "bounced"]),
    };
    sqlx::query_scalar(
        "WITH u AS (
            UPDATE deliveries SET status = $2, last_error = $4, updated_at = now()
            WHERE id = $1 AND channel = 'email' AND status = ANY($3)
            RETURNING status
         )
         SELECT status FROM u
         UNION ALL
         SELECT status FROM deliveries WHERE id = $1 AND channel = 'email' AND NOT EXISTS (SELECT 1 FROM u)",
    )
    .bind(delivery)
    .bind(to)
    .bind(from)
    .bind(sanitize(detail.to_owned()))
    .fetch_optional(conn)
    .await
}

/// Starts a new round of attempts for finished deliveries (never touching their past
/// attempts): status `retrying`, a fresh retry schedule from the next attempt, and a bus
/// message for attempt `attempts + 1`. Deliveries still in progress are left alone.
/// Returns the ids resent.
pub async fn reopen(conn: &mut PgConnection, which: ResendFilter<'_>) -> sqlx::Result<Vec<Uuid>> {
    let filter = match which {
        ResendFilter::Delivery { .. } => RESEND_DELIVERY,
        ResendFilter::Notification(_) => RESEND_NOTIFICATION,
        ResendFilter::Endpoint { .. } => RESEND_FAILED,
        ResendFilter::Email(_) => RESEND_EMAIL,
    };
    // Bounded: at most RESEND_PAGE deliveries per statement (the caller asks again).
    let sql = format!(
        "UPDATE deliveries d SET status = 'retrying', round_start = d.attempts, next_attempt_at = now(),
                lease_until = NULL, updated_at = now(), unrecorded_starts = 0
         WHERE d.id IN (SELECT d.id FROM deliveries d
                        WHERE d.status IN ('succeeded', 'failed', 'cancelled', 'bounced', 'complained', 'suppressed')
                          AND {filter}
                        ORDER BY d.created_at, d.id LIMIT {RESEND_PAGE} FOR UPDATE SKIP LOCKED)
         RETURNING d.id, d.channel, herald_ordering_key(d.channel, d.target), d.attempts"
    );
    let q = sqlx::query_as::<_, (Uuid, Channel, String, i32)>(&sql);
    let q = match which {
        ResendFilter::Delivery { delivery, endpoint } => q.bind(delivery).bind(endpoint),
        ResendFilter::Notification(n) => q.bind(n),
        ResendFilter::Endpoint { endpoint, since } => q.bind(endpoint).bind(since),
        ResendFilter::Email(d) => q.bind(d),
    };
    let rows = q.fetch_all(&mut *conn).await?;
    let msgs: Vec<BusMessage> = rows
        .iter()
        .map(|(id, channel, key, attempts)| BusMessage::delivery(Topic::from(*channel), key.clone(), *id, attempts + 1))
        .collect();
    bus::enqueue(conn, &msgs).await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

// The filters of `reopen` (the SQL check test expands `{filter}` with each).
const RESEND_DELIVERY: &str = "d.id = $1 AND d.endpoint_id = $2";
const RESEND_NOTIFICATION: &str = "d.notification_id = $1 AND d.channel = 'webhook'";
const RESEND_FAILED: &str = "d.endpoint_id = $1 AND d.status = 'failed' AND d.created_at >= $2";
// An email is resent only if its address is not suppressed now.
const RESEND_EMAIL: &str = "d.id = $1 AND d.channel = 'email'
     AND herald_suppression(herald_ordering_key('email', d.target),
                            (SELECT et.category FROM notifications n JOIN event_types et ON et.name = n.event_type
                             WHERE n.id = d.notification_id),
                            (SELECT et.transactional FROM notifications n JOIN event_types et ON et.name = n.event_type
                             WHERE n.id = d.notification_id)) IS NULL";

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
    /// One email delivery, unless its address is suppressed.
    Email(Uuid),
}
