//! Driving a dispatcher's batch: claiming its attempts, running them by ordering key,
//! recording and settling their outcomes (the statements are `delivery_status`'s).

use std::time::Duration;

use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use std::collections::HashMap;
use std::sync::Arc;

use crate::bus::{Acks, Consumer, DeliveryJob, Received, Topic};
use crate::model::Channel;

// Every change of a delivery's status is made in `delivery_status`; the dispatchers
// reach those statements through here.
pub use crate::delivery_status::{
    defer, extend_leases, record, release_unrecorded, sanitize, start_attempts, AttemptRecord, Claimed, Deferred,
    Outcome, Started, POISONED,
};

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
        let unrecorded: Vec<&AttemptRecord> = failed.iter().map(|i| &records[*i]).collect();
        release_unrecorded(db, &unrecorded).await?;
    }
    Ok(failed)
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
