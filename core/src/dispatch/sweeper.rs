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

pub async fn sweep_once(db: &PgPool, grace: Duration) -> sqlx::Result<u64> {
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
