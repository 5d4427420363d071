//! Retention: `HERALD_RETENTION` (default 30 days) prunes what is older — finished
//! notifications with their deliveries and attempts (and the idempotency keys that
//! answer for them, and their email tracking events), other idempotency keys, dead
//! letters and older email tracking events — in small batches, off
//! the request path, counted in `herald_retention_pruned_total{table}`.
//!
//! A notification with any delivery still pending, in flight or retrying is never
//! pruned, whatever its age: nothing acknowledged is lost to retention.

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;

/// Rows deleted per statement: short transactions, short locks.
pub const BATCH: i64 = 500;

/// Runs one `DELETE` (binding `$1`, and `$2` = [`BATCH`]) until it removes fewer than a
/// batch. Returns the rows removed.
async fn drain<'q, T>(db: &PgPool, sql: &'q str, bound: T) -> sqlx::Result<u64>
where
    T: 'q + Clone + Send + sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    let mut total = 0;
    loop {
        let n = sqlx::query(sql).bind(bound.clone()).bind(BATCH).execute(db).await?.rows_affected();
        total += n;
        if n < BATCH as u64 {
            return Ok(total);
        }
    }
}

/// The tables pruned by age (`created_at`); the SQL check test prepares the statement
/// of `drain_by_age` for each.
const AGED_TABLES: [&str; 2] = [AGED_IDEMPOTENCY_KEYS, AGED_DEAD_LETTERS];
const AGED_IDEMPOTENCY_KEYS: &str = "idempotency_keys";
const AGED_DEAD_LETTERS: &str = "dead_letters";

/// Deletes rows of `table` whose `created_at` is older than `secs`, oldest first.
async fn drain_by_age(db: &PgPool, table: &str, secs: f64) -> sqlx::Result<u64> {
    let sql = format!(
        "DELETE FROM {table} WHERE ctid IN (
            SELECT ctid FROM {table} WHERE created_at < now() - make_interval(secs => $1)
            ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
    );
    drain(db, &sql, secs).await
}

/// One pass: deletes everything older than `keep`, `BATCH` rows at a time. Returns the
/// rows removed per table (notifications, idempotency keys, dead letters, email
/// tracking events).
pub async fn prune_once(db: &PgPool, keep: Duration) -> sqlx::Result<(u64, u64, u64, u64)> {
    // Settings are at most ten years, so this never leaves chrono's range; be safe anyway.
    let cutoff = chrono::Duration::from_std(keep)
        .ok()
        .and_then(|k| chrono::Utc::now().checked_sub_signed(k))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
    let notifications = drain(
        db,
        "DELETE FROM notifications WHERE id IN (
            SELECT n.id FROM notifications n
            WHERE n.id < $1
              AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.notification_id = n.id
                              AND d.status IN ('pending', 'in_flight', 'retrying'))
            ORDER BY n.id LIMIT $2
            FOR UPDATE SKIP LOCKED)",
        crate::model::v7_floor(cutoff),
    )
    .await?;
    let secs = keep.as_secs_f64();
    let keys = drain_by_age(db, AGED_TABLES[0], secs).await?;
    let dead = drain_by_age(db, AGED_TABLES[1], secs).await?;
    // Tracking events of pruned deliveries went with them; these are the older ones
    // left (anonymous ones, and those of deliveries still kept).
    let events = drain(
        db,
        "DELETE FROM email_events WHERE id IN (
            SELECT id FROM email_events WHERE at < $1 ORDER BY at LIMIT $2 FOR UPDATE SKIP LOCKED)",
        cutoff,
    )
    .await?;
    Ok((notifications, keys, dead, events))
}

/// How often retention runs: a tenth of the retention period, between 1 s and 5 min.
pub fn interval(keep: Duration) -> Duration {
    (keep / 10).clamp(Duration::from_secs(1), Duration::from_secs(300))
}

pub async fn run(db: PgPool, keep: Duration, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let every = interval(keep);
    loop {
        match prune_once(&db, keep).await {
            Ok((n, i, d, e)) => {
                crate::metrics::pruned("notifications", n);
                crate::metrics::pruned("idempotency_keys", i);
                crate::metrics::pruned("dead_letters", d);
                crate::metrics::pruned("email_events", e);
                if n + i + d + e > 0 {
                    tracing::info!(
                        notifications = n,
                        idempotency_keys = i,
                        dead_letters = d,
                        email_events = e,
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

#[cfg(test)]
mod tests {
    use crate::model::v7_floor as uuid_v7_floor;
    use uuid::Uuid;

    #[test]
    fn the_uuid_floor_orders_with_now_v7_ids() {
        let before = Uuid::now_v7();
        let floor = uuid_v7_floor(chrono::Utc::now() + chrono::Duration::milliseconds(2));
        assert!(before < floor, "an id made before the instant is below it");
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(Uuid::now_v7() > floor, "an id made after it is not");
        assert_eq!(uuid_v7_floor(chrono::DateTime::<chrono::Utc>::MIN_UTC), Uuid::nil(), "before 1970: nothing");
    }
}
