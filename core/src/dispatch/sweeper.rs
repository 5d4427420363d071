//! The safety net: deliveries that should be moving but are not get a new bus message.
//!
//! - `in_flight` past its lease by more than the grace period: the worker died
//!   mid-attempt (and, with Kafka, its message may already be acked).
//! - `pending`/`retrying` overdue by more than the grace period whose current message
//!   is neither in the outbox nor recorded as published to Kafka (`published_at` at or
//!   after it became due): the message was lost before reaching the bus. A delivery
//!   waiting in Kafka consumer lag has been published and is left alone; the rule reads
//!   what the delivery records, not the outbox alone (the relay empties it on Kafka).
//!
//! The new message asks for the next attempt number, so if the original message turns
//! up after all, only one of the two starts an attempt.

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;

/// One sweep (the statement is `delivery_status::sweep`'s).
pub async fn sweep_once(db: &PgPool, grace: Duration) -> sqlx::Result<u64> {
    crate::delivery_status::sweep(db, grace).await
}

pub async fn run(db: PgPool, grace: Duration, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let every = (grace / 4).max(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tokio::time::sleep(every) => {}
        }
        let swept = sweep_once(&db, grace).await;
        crate::metrics::swept();
        match swept {
            Ok(0) => {}
            Ok(n) => tracing::warn!(deliveries = n, "sweeper re-enqueued stuck deliveries"),
            Err(e) => tracing::warn!(error = %e, "sweeper failed"),
        }
    }
    Ok(())
}
