//! Claiming delivery attempts and recording their outcomes, in batches.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use serde::Deserialize;
use uuid::Uuid;

use crate::bus::{self, BusMessage, Consumer, DeliveryJob, Received, Topic};

/// A delivery this worker now owns for one attempt.
#[derive(Debug, sqlx::FromRow)]
pub struct Started {
    pub id: Uuid,
    pub target: String,
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

/// Takes ownership of the deliveries the jobs refer to, in one statement. Returns the
/// started attempts (with the job's index), the stale jobs (already done or superseded:
/// ack without work) and the busy ones (another live worker holds the delivery: leave
/// unacked so the message comes back after its lease).
pub async fn start_attempts(
    db: &PgPool,
    channel: &str,
    jobs: &[(usize, DeliveryJob)],
    lease: Duration,
) -> sqlx::Result<(Vec<(usize, Started)>, Vec<usize>, Vec<usize>)> {
    let ids: Vec<Uuid> = jobs.iter().map(|(_, j)| j.delivery_id).collect();
    let attempts: Vec<i32> = jobs.iter().map(|(_, j)| j.attempt).collect();
    let started: Vec<Started> = sqlx::query_as(
        "UPDATE deliveries d
         SET status = 'in_flight', lease_until = now() + make_interval(secs => $4), updated_at = now()
         FROM unnest($1::uuid[], $2::int4[]) AS j(id, attempt)
         WHERE d.id = j.id AND d.channel = $3 AND d.attempts = j.attempt - 1
           AND (d.status IN ('pending', 'retrying') OR (d.status = 'in_flight' AND d.lease_until < now()))
         RETURNING d.id, d.target, d.content, j.attempt, d.round_start",
    )
    .bind(&ids)
    .bind(&attempts)
    .bind(channel)
    .bind(lease.as_secs_f64())
    .fetch_all(db)
    .await?;

    let mut owned = Vec::with_capacity(started.len());
    let mut rest: Vec<&(usize, DeliveryJob)> = Vec::new();
    let mut started = started;
    for job in jobs {
        if let Some(pos) = started.iter().position(|s| s.id == job.1.delivery_id && s.attempt == job.1.attempt) {
            owned.push((job.0, started.swap_remove(pos)));
        } else {
            rest.push(job);
        }
    }
    let (mut stale, mut busy) = (Vec::new(), Vec::new());
    if !rest.is_empty() {
        let ids: Vec<Uuid> = rest.iter().map(|(_, j)| j.delivery_id).collect();
        let live: Vec<(Uuid, i32)> = sqlx::query_as(
            "SELECT id, attempts FROM deliveries WHERE id = ANY($1) AND status = 'in_flight' AND lease_until >= now()",
        )
        .bind(&ids)
        .fetch_all(db)
        .await?;
        for (idx, job) in rest {
            if live.iter().any(|(id, made)| *id == job.delivery_id && *made == job.attempt - 1) {
                busy.push(*idx);
            } else {
                stale.push(*idx);
            }
        }
    }
    Ok((owned, stale, busy))
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
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::TransientFailure => "transient_failure",
            Outcome::PermanentFailure => "permanent_failure",
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
            retry_at: None,
            key: key.to_owned(),
        }
    }

    fn new_status(&self) -> &'static str {
        match (self.outcome, self.retry_at) {
            (Outcome::Succeeded, _) => "succeeded",
            (Outcome::TransientFailure, Some(_)) => "retrying",
            _ => "failed",
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
    let statuses: Vec<&str> = records.iter().map(|r| r.new_status()).collect();
    let retry_at: Vec<Option<DateTime<Utc>>> = records.iter().map(|r| r.retry_at.filter(|_| r.new_status() == "retrying")).collect();
    let errors = col(|r| r.error.clone().or_else(|| r.smtp_reply.clone().filter(|_| r.outcome != Outcome::Succeeded)));
    let updated: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE deliveries d
         SET status = u.status, attempts = u.attempt, next_attempt_at = u.retry_at, lease_until = NULL,
             last_error = u.error, updated_at = now()
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
    let k = |f: fn(&AttemptRecord) -> Option<String>| kept.iter().map(|r| f(r)).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO attempts (delivery_id, attempt_no, started_at, duration_ms, outcome, smtp_code, smtp_reply,
                               http_status, response_excerpt, error)
         SELECT * FROM unnest($1::uuid[], $2::int4[], $3::timestamptz[], $4::int4[], $5::text[], $6::int2[],
                              $7::text[], $8::int2[], $9::text[], $10::text[])",
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
    .execute(&mut *tx)
    .await?;
    let retries: Vec<BusMessage> = kept
        .iter()
        .filter(|r| r.new_status() == "retrying")
        .map(|r| BusMessage::delivery(topic, r.key.clone(), r.delivery_id, r.attempt + 1).at(r.retry_at.expect("retrying")))
        .collect();
    bus::enqueue(&mut tx, &retries).await?;
    tx.commit().await
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
             next_attempt_at = u.until, updated_at = now()
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

/// Decodes the jobs of a batch; undecodable messages are returned separately.
pub fn decode(batch: &[Received]) -> (Vec<(usize, DeliveryJob)>, Vec<usize>) {
    let mut jobs = Vec::with_capacity(batch.len());
    let mut bad = Vec::new();
    for (i, m) in batch.iter().enumerate() {
        match DeliveryJob::deserialize(&m.payload) {
            Ok(j) if j.attempt >= 1 => jobs.push((i, j)),
            _ => bad.push(i),
        }
    }
    (jobs, bad)
}

/// Runs a batch's attempts while keeping their leases (and the consumer's group
/// membership) alive, so no other worker takes them over and sends twice.
pub async fn with_heartbeat<C: Consumer, F: std::future::Future>(
    db: &PgPool,
    ids: &[Uuid],
    lease: Duration,
    consumer: &mut C,
    work: F,
) -> F::Output {
    tokio::pin!(work);
    let mut heartbeat = tokio::time::interval(lease / 3);
    heartbeat.tick().await;
    loop {
        tokio::select! {
            r = &mut work => return r,
            _ = heartbeat.tick() => {
                if let Err(e) = extend_leases(db, ids, lease).await {
                    tracing::warn!(error = %e, "cannot extend attempt leases");
                }
                consumer.keep_alive().await;
            }
        }
    }
}

/// Finishes a batch after its outcomes are recorded: acks the done and stale messages;
/// busy ones (owned by another live worker) are handed back to come again later, by
/// which time that worker has recorded them or its lease has ended.
pub async fn settle<C: Consumer>(
    consumer: &mut C,
    batch: &[Received],
    mut done: Vec<usize>,
    stale: Vec<usize>,
    busy: Vec<usize>,
) -> anyhow::Result<()> {
    done.extend(stale);
    if !busy.is_empty() {
        let again: Vec<Received> = busy.iter().map(|i| batch[*i].clone()).collect();
        consumer.redeliver(&again).await?;
    }
    let acks: Vec<Received> = done.into_iter().map(|i| batch[i].clone()).collect();
    consumer.ack(&acks).await
}
