//! The embedded bus: the outbox table as a durable queue.
//!
//! Claims take a batch with `FOR UPDATE SKIP LOCKED` and stamp it with a lease
//! (`claimed_until`) and a claim token; acks delete the rows still held by that token.
//! A worker that dies holding a claim loses it when the lease ends, and the rows are
//! claimed again (at-least-once). Idle consumers sleep on `LISTEN herald_outbox_<topic>`
//! (a statement trigger on the outbox notifies the topics of the unclaimed rows it
//! inserted), with a polling fallback that also wakes them for delayed messages.

use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

use super::{Acks, Consumer, Receipt, Received, Topic};

pub struct PgConsumer {
    db: PgPool,
    /// `None`: every topic (the Kafka relay reads the whole outbox).
    topic: Option<Topic>,
    claim_timeout: Duration,
    poll_interval: Duration,
    listener: Option<PgListener>,
    token: Uuid,
    /// The last claim took everything claimable (fewer rows than asked) and nothing
    /// has woken the consumer since: the next wait needs no claim before it (a row
    /// inserted meanwhile has notified, and the notification is waiting on the listener).
    drained: bool,
    /// The next due time, as last read (when, deadline): reused for [`DUE_REUSE`] so that
    /// an idle consumer between batches waits without a query.
    due: Option<(Instant, Instant)>,
}

/// How long a read of the next due time is reused by waits that nothing woke.
const DUE_REUSE: Duration = Duration::from_millis(100);

impl PgConsumer {
    pub async fn new(
        db: PgPool,
        topic: Option<Topic>,
        claim_timeout: Duration,
        poll_interval: Duration,
    ) -> anyhow::Result<Self> {
        let mut c = Self {
            db,
            topic,
            claim_timeout,
            poll_interval,
            listener: None,
            token: Uuid::new_v4(),
            drained: false,
            due: None,
        };
        c.connect_listener().await;
        Ok(c)
    }

    async fn connect_listener(&mut self) {
        let listener = async {
            let mut l = PgListener::connect_with(&self.db).await?;
            match self.topic {
                Some(t) => l.listen(&channel(t)).await?,
                None => {
                    let names = [Topic::Email, Topic::Webhook].map(channel);
                    l.listen_all(names.iter().map(String::as_str)).await?
                }
            }
            Ok::<_, sqlx::Error>(l)
        };
        match listener.await {
            Ok(l) => self.listener = Some(l),
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN for outbox notifications; polling only");
                self.listener = None;
            }
        }
    }

    async fn claim(&mut self, max: usize) -> sqlx::Result<Vec<Received>> {
        // A fresh token per claim: an ack only removes rows this very claim still holds.
        self.token = Uuid::new_v4();
        // Not waiting for the disk: a claim lost in a database crash only makes the rows
        // claimable again, and it is off the path of every message's first delivery.
        let mut tx = crate::db::begin_unflushed(&self.db).await?;
        let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
            "UPDATE outbox SET claimed_until = now() + make_interval(secs => $3), claim_token = $4,
                               deliveries = deliveries + 1
             WHERE id IN (
                SELECT id FROM outbox
                WHERE ($1::text IS NULL OR topic = $1) AND available_at <= now()
                  AND (claimed_until IS NULL OR claimed_until < now())
                ORDER BY id LIMIT $2
                FOR UPDATE SKIP LOCKED)
             RETURNING id, topic, key, payload::text",
        )
        .bind(self.topic.map(Topic::as_str))
        .bind(max as i64)
        .bind(self.claim_timeout.as_secs_f64())
        .bind(self.token)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        self.drained = rows.len() < max && self.listener.is_some();
        let mut out: Vec<Received> = rows
            .into_iter()
            .map(|(id, topic, key, text)| Received {
                topic,
                key,
                payload: serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
                raw: text.into_bytes(),
                receipt: Receipt::Postgres { id },
                started: None,
            })
            .collect();
        out.sort_by_key(row_id);
        Ok(out)
    }

    /// How long until the next message of this topic could become claimable.
    async fn next_due(&self) -> sqlx::Result<Option<Duration>> {
        let secs: Option<f64> = sqlx::query_scalar(
            "SELECT extract(epoch FROM min(greatest(available_at, coalesce(claimed_until, available_at))) - now())::float8
             FROM outbox WHERE ($1::text IS NULL OR topic = $1)",
        )
        .bind(self.topic.map(Topic::as_str))
        .fetch_one(&self.db)
        .await?;
        Ok(secs.map(|s| Duration::from_secs_f64(s.max(0.0))))
    }

    /// Sleeps until a notification, the next delayed message, or the poll interval;
    /// returns `true` when `wake` (the fast lane) ended it instead.
    async fn wait(&mut self, wake: &Notify) -> bool {
        let deadline = match self.due {
            Some((read, deadline)) if read.elapsed() < DUE_REUSE => deadline,
            _ => {
                let mut wait = self.poll_interval;
                match self.next_due().await {
                    Ok(Some(d)) => wait = wait.min(d + Duration::from_millis(5)),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "outbox: cannot read the next due time"),
                }
                let now = Instant::now();
                self.due = Some((now, now + wait));
                now + wait
            }
        };
        let wait = deadline.saturating_duration_since(Instant::now());
        // Whatever ends the wait but the lane may have made something claimable.
        let woke = |c: &mut Self| {
            c.drained = false;
            c.due = None;
        };
        match self.listener.as_mut() {
            Some(l) => {
                let r = tokio::select! {
                    biased;
                    _ = wake.notified() => return true,
                    r = tokio::time::timeout(wait, l.try_recv()) => r,
                };
                woke(self);
                match r {
                    Err(_elapsed) => {}
                    Ok(Ok(Some(_))) => {}
                    // The connection dropped; sqlx reconnects on the next call.
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "outbox listener failed; reconnecting");
                        tokio::time::sleep(wait).await;
                        self.connect_listener().await;
                    }
                }
            }
            None => {
                tokio::select! {
                    biased;
                    _ = wake.notified() => return true,
                    _ = tokio::time::sleep(wait) => {}
                }
                woke(self);
                self.connect_listener().await;
            }
        }
        false
    }
}

/// The notification channel of a topic (see the outbox trigger).
fn channel(t: Topic) -> String {
    format!("herald_outbox_{}", t.as_str())
}

fn row_id(m: &Received) -> i64 {
    match m.receipt {
        Receipt::Postgres { id } => id,
        other => panic!("a postgres consumer got a foreign receipt {other:?}"),
    }
}

impl PgConsumer {
    /// Acks messages the Kafka relay published, and records on each delivery that its
    /// current message is in the broker (the sweeper leaves such deliveries alone).
    pub async fn ack_published(&mut self, msgs: &[Received]) -> anyhow::Result<()> {
        let ids: Vec<i64> = msgs.iter().map(row_id).collect();
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "WITH gone AS (DELETE FROM outbox WHERE id = ANY($1) AND claim_token = $2 RETURNING payload->>'delivery_id' AS d)
             UPDATE deliveries SET published_at = now()
             FROM gone
             -- Only delivery jobs name a delivery; the CASE keeps any other payload from the cast.
             WHERE deliveries.id = (CASE WHEN gone.d ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                                         THEN gone.d END)::uuid",
        )
        .bind(&ids)
        .bind(self.token)
        .execute(&self.db)
        .await?;
        Ok(())
    }
}

/// Settles rows of one claim (its token), from any task.
#[derive(Clone)]
pub struct PgAcks {
    db: PgPool,
    token: Uuid,
    claim_timeout: Duration,
}

/// Settling outbox rows held by a claim token: shared by claims from the table
/// ([`PgAcks`]) and rows the fast lane carried (`lane::LanedAcks`).
pub(crate) mod settle {
    use std::time::Duration;

    use sqlx::PgPool;
    use uuid::Uuid;

    pub async fn ack(db: &PgPool, token: Uuid, ids: &[i64]) -> anyhow::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        // Rows whose lease expired and that another worker re-claimed keep existing:
        // that worker finds the delivery already advanced and acks them itself.
        // Not waiting for the disk: what a message asked for was recorded durably before
        // this ack, and an ack lost in a database crash only brings the message back,
        // to be found done and acked again.
        let mut tx = crate::db::begin_unflushed(db).await?;
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1) AND claim_token = $2")
            .bind(ids)
            .bind(token)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Gives the claim back after a short pause instead of waiting out the lease.
    pub async fn redeliver(db: &PgPool, token: Uuid, ids: &[i64]) -> anyhow::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE outbox SET claimed_until = now() + interval '1 second' WHERE id = ANY($1) AND claim_token = $2",
        )
        .bind(ids)
        .bind(token)
        .execute(db)
        .await?;
        Ok(())
    }

    pub async fn keep_alive(db: &PgPool, token: Uuid, ids: &[i64], lease: Duration) {
        if ids.is_empty() {
            return;
        }
        let r = sqlx::query(
            "UPDATE outbox SET claimed_until = now() + make_interval(secs => $3) WHERE id = ANY($1) AND claim_token = $2",
        )
        .bind(ids)
        .bind(token)
        .bind(lease.as_secs_f64())
        .execute(db)
        .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "outbox: cannot extend the claim");
        }
    }

    pub async fn dead_letter(db: &PgPool, token: Uuid, id: i64, raw: &[u8], reason: &str) -> anyhow::Result<()> {
        sqlx::query(
            "WITH gone AS (DELETE FROM outbox WHERE id = $1 AND claim_token = $2 RETURNING topic, key)
             INSERT INTO dead_letters (topic, key, payload, reason)
             SELECT topic, key, $3, $4 FROM gone",
        )
        .bind(id)
        .bind(token)
        .bind(raw)
        .bind(reason)
        .execute(db)
        .await?;
        Ok(())
    }
}

impl Acks for PgAcks {
    async fn ack(&self, msgs: &[Received]) -> anyhow::Result<()> {
        let ids: Vec<i64> = msgs.iter().map(row_id).collect();
        settle::ack(&self.db, self.token, &ids).await
    }

    async fn redeliver(&self, msgs: &[Received]) -> anyhow::Result<()> {
        let ids: Vec<i64> = msgs.iter().map(row_id).collect();
        settle::redeliver(&self.db, self.token, &ids).await
    }

    /// A long batch keeps its claim: other workers must not take these rows (and find
    /// them busy, again and again) while this one is still working on them. (This is the
    /// only claim extension: the consumer's own `keep_alive` has nothing to add.)
    async fn keep_alive(&self, msgs: &[Received]) {
        let ids: Vec<i64> = msgs.iter().map(row_id).collect();
        settle::keep_alive(&self.db, self.token, &ids, self.claim_timeout).await
    }
}

impl Consumer for PgConsumer {
    type Acks = PgAcks;

    fn acks(&self) -> PgAcks {
        PgAcks { db: self.db.clone(), token: self.token, claim_timeout: self.claim_timeout }
    }

    async fn poll_now(&mut self, max: usize) -> anyhow::Result<Vec<Received>> {
        Ok(self.claim(max).await?)
    }

    async fn poll_until(&mut self, max: usize, wake: &Notify) -> anyhow::Result<Vec<Received>> {
        if !self.drained {
            let batch = self.claim(max).await?;
            if !batch.is_empty() {
                return Ok(batch);
            }
        }
        if self.wait(wake).await {
            return Ok(Vec::new());
        }
        Ok(self.claim(max).await?)
    }

    async fn ack(&mut self, msgs: &[Received]) -> anyhow::Result<()> {
        self.acks().ack(msgs).await
    }

    async fn dead_letter(&mut self, msg: &Received, reason: &str) -> anyhow::Result<()> {
        settle::dead_letter(&self.db, self.token, row_id(msg), &msg.raw, reason).await?;
        crate::metrics::dead_lettered(&msg.topic);
        Ok(())
    }

    async fn redeliver(&mut self, msgs: &[Received]) -> anyhow::Result<()> {
        self.acks().redeliver(msgs).await
    }
}
