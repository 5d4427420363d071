//! Claiming delivery attempts and recording their outcomes, in batches.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use std::collections::HashMap;
use std::sync::Arc;

use crate::bus::{self, Acks, BusMessage, Consumer, DeliveryJob, Received, Topic};
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

/// The start of every dispatcher's batch: decodes its jobs (dead-lettering a message
/// that is not one) and claims their deliveries with [`start_attempts`].
pub async fn begin<C: Consumer>(
    db: &PgPool,
    consumer: &mut C,
    channel: Channel,
    batch: &[Received],
    lease: Duration,
    max_starts: i32,
) -> anyhow::Result<Claimed> {
    let (jobs, bad) = decode(batch);
    for i in &bad {
        tracing::error!(channel = channel.as_str(), "undecodable bus message dead-lettered");
        consumer.dead_letter(&batch[*i], "undecodable delivery job: expected {\"delivery_id\", \"attempt\"}").await?;
    }
    // Attempts the accepting statement already started (the fast lane) are this
    // worker's without another statement; the rest are started here.
    let (pre, jobs): (Vec<_>, Vec<_>) = jobs.into_iter().partition(|(i, _)| batch[*i].started.is_some());
    let mut claimed = if jobs.is_empty() {
        Claimed::default()
    } else {
        start_attempts(db, channel, &jobs, lease, max_starts).await?
    };
    if !pre.is_empty() {
        for (i, job) in pre {
            let p = batch[i].started.as_deref().expect("partitioned on it");
            claimed.owned.push((
                i,
                Started {
                    id: p.delivery_id,
                    target: p.target.clone(),
                    endpoint_id: p.endpoint_id,
                    content: p.content.clone(),
                    attempt: job.attempt,
                    round_start: 0,
                },
            ));
        }
        claimed.owned.sort_by_key(|(i, _)| *i);
    }
    Ok(claimed)
}

/// Groups a batch's started attempts by `key` (recipient or endpoint), each group in
/// bus order: a group's attempts run one after the other, groups run side by side.
pub fn group_by(
    owned: Vec<(usize, Started)>,
    key: impl Fn(usize, &Started) -> String,
) -> std::collections::BTreeMap<String, Vec<(usize, Started)>> {
    let mut groups: std::collections::BTreeMap<String, Vec<(usize, Started)>> = Default::default();
    for (idx, s) in owned {
        groups.entry(key(idx, &s)).or_default().push((idx, s));
    }
    groups
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

    /// The delivery's status after this attempt, and when its next attempt is due
    /// (only when it is retrying).
    fn next(&self) -> (DeliveryStatus, Option<DateTime<Utc>>) {
        match (self.outcome, self.retry_at) {
            (Outcome::Succeeded, _) => (DeliveryStatus::Succeeded, None),
            (Outcome::TransientFailure, Some(at)) => (DeliveryStatus::Retrying, Some(at)),
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

/// Records a batch of outcomes so that one bad row never fails the batch: the batch in
/// one transaction, and if that fails, each outcome on its own. Returns the indexes (into
/// `records`) that could not be recorded; their leases are released so the redelivered
/// message can start again at once (each start counts towards the poison limit). Fails
/// only when the database itself is unreachable.
pub async fn record_each(db: &PgPool, topic: Topic, records: &[AttemptRecord]) -> anyhow::Result<Vec<usize>> {
    let batch_error = match record(db, topic, records).await {
        Ok(()) => return Ok(Vec::new()),
        Err(e) => e,
    };
    if sqlx::query("SELECT 1").execute(db).await.is_err() {
        return Err(anyhow::Error::new(batch_error).context("recording a batch of outcomes"));
    }
    tracing::warn!(error = %batch_error, records = records.len(), "recording a batch failed; recording its outcomes one by one");
    let mut failed = Vec::new();
    for (i, r) in records.iter().enumerate() {
        if let Err(e) = record(db, topic, std::slice::from_ref(r)).await {
            tracing::error!(delivery_id = %r.delivery_id, attempt = r.attempt, error = %e, "an attempt's outcome cannot be recorded");
            failed.push(i);
        }
    }
    if !failed.is_empty() {
        crate::metrics::unrecorded(topic.as_str(), failed.len() as u64);
        let ids: Vec<Uuid> = failed.iter().map(|i| records[*i].delivery_id).collect();
        let attempts: Vec<i32> = failed.iter().map(|i| records[*i].attempt).collect();
        sqlx::query(
            "UPDATE deliveries d SET lease_until = now()
             FROM unnest($1::uuid[], $2::int4[]) AS u(id, attempt)
             WHERE d.id = u.id AND d.status = 'in_flight' AND d.attempts = u.attempt - 1",
        )
        .bind(&ids)
        .bind(&attempts)
        .execute(db)
        .await?;
    }
    Ok(failed)
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

/// How long [`drive`] waits for more groups to finish before recording what has.
pub const COALESCE: Duration = Duration::from_millis(250);

/// What became of one started attempt.
pub enum Step<T> {
    /// Made: its outcome to record, and what the dispatcher wants back about it.
    Made(AttemptRecord, T),
    /// Handed back unmade, for later.
    Deferred(Deferred),
}

/// A batch that has run this long without finishing hands what is left (its slow
/// groups) to a task of its own, and the consumer polls the next batch.
pub const DETACH_AFTER: Duration = Duration::from_secs(1);

/// How many slow batch remainders may run in their own tasks at once (per dispatcher).
#[derive(Clone)]
pub struct Detach {
    permits: Arc<tokio::sync::Semaphore>,
    max: u32,
}

impl Detach {
    pub fn new(max: u32) -> Self {
        Self { permits: Arc::new(tokio::sync::Semaphore::new(max as usize)), max }
    }

    /// Waits until every detached remainder has recorded and settled (at shutdown).
    pub async fn drain(&self) {
        let _ = self.permits.acquire_many(self.max).await;
    }
}

/// Keeps a consumer's group membership (or claim) alive during a batch.
trait Pulse: Send {
    fn pulse(&mut self) -> impl std::future::Future<Output = ()> + Send;
}

struct ConsumerPulse<'a, C>(&'a mut C);

impl<C: Consumer> Pulse for ConsumerPulse<'_, C> {
    async fn pulse(&mut self) {
        self.0.keep_alive().await
    }
}

/// A detached remainder: the consumer polls on by itself.
struct NoPulse;

impl Pulse for NoPulse {
    async fn pulse(&mut self) {}
}

/// How [`Remainder::run`] ended.
enum Ran<T> {
    /// Every group made and settled.
    Done,
    /// Every attempt made; this last part is not settled yet.
    Last(Vec<(usize, Step<T>)>),
    /// The deadline passed with groups still running.
    TimedOut,
}

/// What is left of a batch: its running groups, and the messages not yet settled.
struct Remainder<S, F> {
    groups: std::pin::Pin<Box<S>>,
    pending: HashMap<usize, Received>,
    ids: Vec<Uuid>,
    on_recorded: Arc<F>,
}

impl<S, T, F, Fut> Remainder<S, F>
where
    S: futures::Stream<Item = Vec<(usize, Step<T>)>> + Send + 'static,
    T: Send + 'static,
    F: Fn(Vec<(AttemptRecord, T)>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    /// Runs the groups, recording and settling each as it finishes, until they are all
    /// done or `until` passes. With an `until` (the consumer's own first run), the part
    /// that finishes last is returned unsettled (every attempt is made by then), for the
    /// caller to settle.
    async fn run<A: Acks, P: Pulse>(
        &mut self,
        db: &PgPool,
        topic: Topic,
        lease: Duration,
        acks: &A,
        pulse: &mut P,
        until: Option<tokio::time::Instant>,
    ) -> anyhow::Result<Ran<T>> {
        use futures::StreamExt;
        let mut heartbeat = tokio::time::interval(lease / 3);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        loop {
            let deadline = async {
                match until {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let mut ready = tokio::select! {
                g = self.groups.next() => match g {
                    Some(g) => g,
                    None => return Ok(Ran::Done),
                },
                _ = heartbeat.tick() => {
                    if let Err(e) = extend_leases(db, &self.ids, lease).await {
                        tracing::warn!(error = %e, "cannot extend attempt leases");
                    }
                    let pending: Vec<Received> = self.pending.values().cloned().collect();
                    acks.keep_alive(&pending).await;
                    pulse.pulse().await;
                    continue;
                }
                _ = deadline => return Ok(Ran::TimedOut),
            };
            // Whatever else finishes within a short window goes into the same transaction:
            // one slow group holds the others back by at most COALESCE, and a batch of many
            // quick groups (recipients) is still recorded in a few transactions, not one each.
            let window = tokio::time::Instant::now() + COALESCE;
            let mut ended = false;
            loop {
                match tokio::time::timeout_at(window, self.groups.next()).await {
                    Ok(Some(more)) => ready.extend(more),
                    Ok(None) => {
                        ended = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            if ended && until.is_some() {
                return Ok(Ran::Last(ready));
            }
            self.settle(db, topic, acks, ready).await?;
            if ended {
                return Ok(Ran::Done);
            }
        }
    }

    /// Records a part's outcomes (one by one if need be), defers what was deferred,
    /// acks what is recorded and hands back what could not be.
    async fn settle<A: Acks>(
        &mut self,
        db: &PgPool,
        topic: Topic,
        acks: &A,
        ready: Vec<(usize, Step<T>)>,
    ) -> anyhow::Result<()> {
        let mut records = Vec::with_capacity(ready.len());
        let mut made = Vec::with_capacity(ready.len());
        let mut deferred = Vec::new();
        let mut deferred_idx = Vec::new();
        for (idx, step) in ready {
            match step {
                Step::Made(rec, tag) => {
                    records.push(rec);
                    made.push((idx, tag));
                }
                Step::Deferred(d) => {
                    deferred.push(d);
                    deferred_idx.push(idx);
                }
            }
        }
        let failed = record_each(db, topic, &records).await?;
        defer(db, topic, &deferred).await?;
        if !deferred.is_empty() && topic == Topic::Webhook {
            crate::metrics::webhook_deferred(deferred.len() as u64);
            tracing::info!(
                deferred = deferred.len(),
                "webhook attempts deferred (endpoint timing out or rate-limited)"
            );
        }
        let mut done: Vec<Received> = deferred_idx.iter().filter_map(|i| self.pending.remove(i)).collect();
        let mut again = Vec::new();
        let mut recorded = Vec::with_capacity(made.len());
        for (n, ((idx, tag), rec)) in made.into_iter().zip(records).enumerate() {
            let Some(msg) = self.pending.remove(&idx) else { continue };
            if failed.contains(&n) {
                again.push(msg);
            } else {
                done.push(msg);
                recorded.push((rec, tag));
            }
        }
        acks.ack(&done).await?;
        if !again.is_empty() {
            acks.redeliver(&again).await?;
        }
        if !recorded.is_empty() {
            (self.on_recorded)(recorded).await;
        }
        Ok(())
    }
}

/// Runs a batch after [`start_attempts`]: hands back the busy messages, dead-letters
/// the poisoned ones, acks the stale ones, then drives `groups` (one item per ordering
/// key, finished in any order), recording and acking each group's outcomes as soon as it
/// completes and calling `on_recorded` with them. Meanwhile the attempts' leases and the
/// consumer's claim or group membership are kept alive. A batch still running after
/// [`DETACH_AFTER`] hands its unfinished groups to a task of its own (if `detach` has
/// room) and returns, so the consumer polls the next batch: a slow endpoint holds back
/// only its own deliveries, never the next batch.
#[allow(clippy::too_many_arguments)]
pub async fn drive<C, S, T, F, Fut>(
    db: &PgPool,
    consumer: &mut C,
    topic: Topic,
    batch: &[Received],
    claimed: Claimed,
    lease: Duration,
    detach: &Detach,
    groups: impl FnOnce(Vec<(usize, Started)>) -> S,
    on_recorded: F,
) -> anyhow::Result<()>
where
    C: Consumer,
    S: futures::Stream<Item = Vec<(usize, Step<T>)>> + Send + 'static,
    T: Send + 'static,
    F: Fn(Vec<(AttemptRecord, T)>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let Claimed { owned, stale, busy, poisoned } = claimed;
    for i in &poisoned {
        tracing::error!(delivery_id = ?batch[*i].payload.get("delivery_id"), "delivery failed: its outcome could not be recorded");
        consumer.dead_letter(&batch[*i], POISONED).await?;
    }
    if !busy.is_empty() {
        let again: Vec<Received> = busy.iter().map(|i| batch[*i].clone()).collect();
        consumer.redeliver(&again).await?;
    }
    let acks: Vec<Received> = stale.iter().map(|i| batch[*i].clone()).collect();
    consumer.ack(&acks).await?;

    let mut rest = Remainder {
        pending: owned.iter().map(|(idx, _)| (*idx, batch[*idx].clone())).collect(),
        ids: owned.iter().map(|(_, s)| s.id).collect(),
        groups: Box::pin(groups(owned)),
        on_recorded: Arc::new(on_recorded),
    };
    let acks = consumer.acks();
    let until = tokio::time::Instant::now() + DETACH_AFTER;
    let last = match rest.run(db, topic, lease, &acks, &mut ConsumerPulse(&mut *consumer), Some(until)).await? {
        Ran::Done => return Ok(()),
        Ran::Last(ready) => Some(ready),
        Ran::TimedOut => None,
    };
    let Ok(permit) = detach.permits.clone().try_acquire_owned() else {
        // Enough remainders run already: finish this one here.
        match last {
            Some(ready) => rest.settle(db, topic, &acks, ready).await?,
            None => {
                rest.run(db, topic, lease, &acks, &mut ConsumerPulse(consumer), None).await?;
            }
        }
        return Ok(());
    };
    // Every attempt of the batch made (the last part only to record and settle), or a
    // slow remainder: either goes on in a task of its own while the consumer polls the
    // next batch. Attempts of the next batch start only after this one's were all made
    // (when only the recording is left), so each endpoint's and recipient's order holds.
    let db = db.clone();
    tokio::spawn(async move {
        use futures::FutureExt;
        let _permit = permit;
        // A remainder that fails, or panics, hands what it has not settled back, so no
        // message is left unacked (on Kafka, a partition's offset would stop there).
        let work = async {
            match last {
                Some(ready) => rest.settle(&db, topic, &acks, ready).await,
                None => rest.run(&db, topic, lease, &acks, &mut NoPulse, None).await.map(|_| ()),
            }
        };
        let outcome = std::panic::AssertUnwindSafe(work).catch_unwind().await;
        let failure = match outcome {
            Ok(Ok(_)) => return,
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => "it panicked".to_owned(),
        };
        tracing::error!(error = %failure, "a detached batch remainder failed; its messages will be delivered again");
        let left: Vec<Received> = rest.pending.values().cloned().collect();
        if let Err(e) = acks.redeliver(&left).await {
            tracing::error!(error = %format!("{e:#}"), "cannot hand a detached remainder back");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::sanitize;

    #[test]
    fn peer_text_is_made_storable() {
        assert_eq!(sanitize("ok\0\0end".into()), "ok\u{FFFD}\u{FFFD}end");
        assert_eq!(sanitize("plain".into()), "plain");
    }
}
