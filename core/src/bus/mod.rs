//! The event bus between the processor and the dispatchers.
//!
//! Producers never talk to a broker directly: they write [`BusMessage`]s to the
//! `outbox` table inside their own transaction ([`enqueue`]), so a message exists if and
//! only if the work it announces was committed. Dispatchers read through a
//! [`Consumer`]. The `postgres` backend ([`postgres::PgConsumer`]) consumes the outbox
//! table itself; the `kafka` backend (a later issue) adds a relay from the outbox to
//! topics and implements [`Consumer`] with a consumer group.
//!
//! Contract: at-least-once. A message is redelivered until it is acked, so consumers
//! ack only after the outcome is recorded, and must recognise duplicates (delivery
//! jobs carry the attempt number they are for).

pub mod kafka;
pub mod lane;
pub mod postgres;

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use tokio::sync::{watch, Notify};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    Email,
    Webhook,
}

impl Topic {
    pub fn as_str(self) -> &'static str {
        match self {
            Topic::Email => "email",
            Topic::Webhook => "webhook",
        }
    }
}

/// A message to publish. `key` orders messages: the recipient address for email,
/// the endpoint for webhooks.
#[derive(Debug, Clone)]
pub struct BusMessage {
    pub topic: Topic,
    pub key: String,
    pub payload: Value,
    /// Not to be delivered before this time (retries).
    pub available_at: Option<DateTime<Utc>>,
}

/// The payload of every delivery message: "make attempt `attempt` of this delivery".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryJob {
    pub delivery_id: Uuid,
    pub attempt: i32,
}

impl BusMessage {
    pub fn delivery(topic: Topic, key: String, delivery_id: Uuid, attempt: i32) -> Self {
        let payload = serde_json::to_value(DeliveryJob { delivery_id, attempt }).expect("serializable");
        Self { topic, key, payload, available_at: None }
    }

    pub fn at(mut self, when: DateTime<Utc>) -> Self {
        self.available_at = Some(when);
        self
    }
}

/// Writes messages to the outbox as part of the caller's transaction.
pub async fn enqueue(conn: &mut PgConnection, msgs: &[BusMessage]) -> sqlx::Result<()> {
    if msgs.is_empty() {
        return Ok(());
    }
    let topics: Vec<&str> = msgs.iter().map(|m| m.topic.as_str()).collect();
    let keys: Vec<&str> = msgs.iter().map(|m| m.key.as_str()).collect();
    let payloads: Vec<Value> = msgs.iter().map(|m| m.payload.clone()).collect();
    let at: Vec<Option<DateTime<Utc>>> = msgs.iter().map(|m| m.available_at).collect();
    sqlx::query(
        "INSERT INTO outbox (topic, key, payload, available_at)
         SELECT t, k, p, coalesce(a, now()) FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::timestamptz[]) AS x(t, k, p, a)",
    )
    .bind(&topics)
    .bind(&keys)
    .bind(&payloads)
    .bind(&at)
    .execute(conn)
    .await?;
    Ok(())
}

/// A delivery's messages travel on its channel's topic.
impl From<crate::model::Channel> for Topic {
    fn from(c: crate::model::Channel) -> Self {
        match c {
            crate::model::Channel::Email => Topic::Email,
            crate::model::Channel::Webhook => Topic::Webhook,
        }
    }
}

/// One received message. `receipt` is opaque to users of the trait.
#[derive(Debug, Clone)]
pub struct Received {
    /// The logical topic (`email`, `webhook`).
    pub topic: String,
    pub key: String,
    /// The decoded JSON payload, or `Value::Null` when the bytes were not JSON.
    pub payload: Value,
    /// The payload bytes as received (kept for dead-lettering).
    pub raw: Vec<u8>,
    pub receipt: Receipt,
    /// Set only on the fast lane: the accepting statement already started the attempt.
    pub started: Option<std::sync::Arc<lane::Prestarted>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    Postgres {
        id: i64,
    },
    Kafka {
        partition: i32,
        offset: i64,
    },
    /// An outbox row the API of this process handed over directly ([`lane`]).
    Lane {
        id: i64,
    },
}

/// Settles messages of one batch from anywhere, also after the consumer has moved on to
/// later batches: a slow part of a batch can finish in its own task while the consumer
/// polls again (see `dispatch::record::drive`). Acking through it is the same as acking
/// through the consumer.
pub trait Acks: Send + Sync + 'static {
    fn ack(&self, msgs: &[Received]) -> impl Future<Output = anyhow::Result<()>> + Send;
    fn redeliver(&self, msgs: &[Received]) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Keeps these messages' claim alive while they are still being worked on.
    fn keep_alive(&self, msgs: &[Received]) -> impl Future<Output = ()> + Send;
}

pub trait Consumer: Send {
    type Acks: Acks;

    /// A handle that settles messages of the batch last returned by `poll`.
    fn acks(&self) -> Self::Acks;

    /// Waits for and returns up to `max` messages, oldest first. Returns an empty batch
    /// after a while without messages so callers can check for shutdown.
    fn poll(&mut self, max: usize) -> impl Future<Output = anyhow::Result<Vec<Received>>> + Send {
        async move { self.poll_until(max, &Notify::new()).await }
    }

    /// Returns up to `max` messages that are there now, without waiting for more.
    fn poll_now(&mut self, max: usize) -> impl Future<Output = anyhow::Result<Vec<Received>>> + Send;

    /// Like `poll`, but stops waiting, and returns an empty batch, as soon as `wake` is
    /// notified (the fast lane has messages).
    fn poll_until(&mut self, max: usize, wake: &Notify) -> impl Future<Output = anyhow::Result<Vec<Received>>> + Send;

    /// Marks messages done. Unacked messages are delivered again later.
    fn ack(&mut self, msgs: &[Received]) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Moves a message that cannot be processed out of the way, with the reason, and
    /// counts it (`herald_bus_dead_lettered_total`). Acks it.
    fn dead_letter(&mut self, msg: &Received, reason: &str) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Processing of these messages failed before their outcome was recorded: make
    /// sure they are delivered again (and nothing after them is acked past them).
    fn redeliver(&mut self, msgs: &[Received]) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Called periodically while a batch is being processed, so a slow batch does not
    /// make the broker think the consumer died. Messages it receives are kept for the
    /// next `poll`.
    fn keep_alive(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Work done on each batch a [`Consumer`] returns (the relay, a dispatcher).
pub trait BatchHandler<C: Consumer>: Send {
    /// Processes and acks a batch. On error the batch is handed back with `redeliver`.
    fn handle(&mut self, consumer: &mut C, batch: &[Received]) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// The loop every bus reader runs: poll a batch, hand it to `handler`, back off on
/// errors (handing a failed batch back), and stop at shutdown between batches, so a
/// batch already started is finished, recorded and acked first.
pub async fn consume<C: Consumer, H: BatchHandler<C>>(
    mut consumer: C,
    mut handler: H,
    batch_size: usize,
    mut shutdown: watch::Receiver<bool>,
    name: &'static str,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if *shutdown.borrow() {
            break;
        }
        let batch = tokio::select! {
            _ = shutdown.changed() => break,
            b = consumer.poll(batch_size) => b,
        };
        let result = match batch {
            Ok(batch) if batch.is_empty() => Ok(()),
            Ok(batch) => {
                let r = handler.handle(&mut consumer, &batch).await;
                if r.is_err() {
                    if let Err(e) = consumer.redeliver(&batch).await {
                        tracing::error!(consumer = name, error = %format!("{e:#}"), "cannot hand a failed batch back");
                    }
                }
                r
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::error!(consumer = name, error = %format!("{e:#}"), "batch failed; its messages will be delivered again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
    tracing::info!(consumer = name, "stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rolling upgrades (docs/operations.md): a message written by a newer release, with
    /// fields this one does not know, is still understood.
    #[test]
    fn a_job_from_a_newer_release_decodes() {
        let id = Uuid::now_v7();
        let newer = serde_json::json!({"delivery_id": id, "attempt": 3, "priority": "high"});
        assert_eq!(serde_json::from_value::<DeliveryJob>(newer).unwrap(), DeliveryJob { delivery_id: id, attempt: 3 });
    }
}
