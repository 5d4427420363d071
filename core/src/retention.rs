//! Retention: `HERALD_RETENTION` (default 30 days) prunes what is older — finished
//! notifications with their deliveries and attempts (and the idempotency keys that
//! answer for them), other idempotency keys, and dead letters — in small batches, off
//! the request path, counted in `herald_retention_pruned_total{table}`.
//!
//! A notification with any delivery still pending, in flight or retrying is never
//! pruned, whatever its age: nothing acknowledged is lost to retention.

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;

/// Rows deleted per statement: short transactions, short locks.
pub const BATCH: i64 = 500;

/// Runs one `DELETE` (binding `$1` = seconds kept, `$2` = [`BATCH`]) until it removes
/// fewer than a batch. Returns the rows removed.
async fn drain(db: &PgPool, sql: &str, secs: f64) -> sqlx::Result<u64> {
    let mut total = 0;
    loop {
        let n = sqlx::query(sql).bind(secs).bind(BATCH).execute(db).await?.rows_affected();
        total += n;
        if n < BATCH as u64 {
            return Ok(total);
        }
    }
}

/// One pass: deletes everything older than `keep`, `BATCH` rows at a time. Returns the
/// rows removed per table (notifications, idempotency keys, dead letters).
pub async fn prune_once(db: &PgPool, keep: Duration) -> sqlx::Result<(u64, u64, u64)> {
    let secs = keep.as_secs_f64();
    let notifications = drain(
        db,
        "DELETE FROM notifications WHERE id IN (
            SELECT n.id FROM notifications n
            WHERE n.created_at < now() - make_interval(secs => $1)
              AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.notification_id = n.id
                              AND d.status IN ('pending', 'in_flight', 'retrying'))
            ORDER BY n.created_at LIMIT $2
            FOR UPDATE SKIP LOCKED)",
        secs,
    )
    .await?;
    let keys = drain(
        db,
        "DELETE FROM idempotency_keys WHERE ctid IN (
            SELECT ctid FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1)
            ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
        secs,
    )
    .await?;
    let dead = drain(
        db,
        "DELETE FROM dead_letters WHERE id IN (
            SELECT id FROM dead_letters WHERE created_at < now() - make_interval(secs => $1)
            ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
        secs,
    )
    .await?;
    Ok((notifications, keys, dead))
}

/// How often retention runs: a tenth of the retention period, between 1 s and 5 min.
pub fn interval(keep: Duration) -> Duration {
    (keep / 10).clamp(Duration::from_secs(1), Duration::from_secs(300))
}

pub async fn run(db: PgPool, keep: Duration, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let every = interval(keep);
    loop {
        match prune_once(&db, keep).await {
            Ok((n, i, d)) => {
                crate::metrics::pruned("notifications", n);
                crate::metrics::pruned("idempotency_keys", i);
                crate::metrics::pruned("dead_letters", d);
                if n + i + d > 0 {
                    tracing::info!(
                        notifications = n,
                        idempotency_keys = i,
                        dead_letters = d,
                        "retention pruned old rows"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "retention pass failed; trying again later"),
        }
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
    }
}
