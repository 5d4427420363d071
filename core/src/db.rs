//! The connection pool and the embedded migrations.

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// How every pool of Herald's is made: at most `max_connections`, waiting at most 10 s
/// for one.
pub fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new().max_connections(max_connections).acquire_timeout(Duration::from_secs(10))
}

pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let pool = pool_options(max_connections)
        .connect(url)
        .await
        .map_err(|e| anyhow::anyhow!("DATABASE_URL: cannot connect to PostgreSQL: {e}"))?;
    Ok(pool)
}

/// A transaction whose commit does not wait for its WAL record to reach the disk
/// (`SET LOCAL synchronous_commit = off`). Only for writes that a database crash may
/// undo without losing anything acknowledged: a claim on bus messages or an attempt's
/// start, which are simply made again. Commits stay in WAL order, so a later durable
/// commit (an attempt's outcome) makes these durable too.
pub async fn begin_unflushed(pool: &PgPool) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Postgres>> {
    // One round trip: BEGIN and the setting in one simple query.
    pool.begin_with("BEGIN; SET LOCAL synchronous_commit = off").await
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.map_err(|e| anyhow::anyhow!("migrations failed: {e}"))
}
