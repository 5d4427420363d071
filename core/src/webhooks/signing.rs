//! Signing secrets of webhook endpoints: revealing the current one, rotating with a
//! grace period during which the old ones keep signing.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use super::endpoints::target;
use crate::access::{BindCaller, Principal, Scope};
use crate::audit;
use crate::error::{Error, Result};
use crate::secrets::{self, SecretKey};

/// At most this many rotated-out secrets keep signing.
pub const MAX_OLD_SECRETS: i64 = 10;

/// The grace period of a rotation: `None` is the configured default; otherwise a
/// duration such as `1h`, at most 7 days.
pub fn grace(requested: Option<&str>, default: Duration) -> Result<Duration> {
    match requested.map(str::trim).filter(|g| !g.is_empty()) {
        None => Ok(default),
        Some(g) => humantime::parse_duration(g)
            .ok()
            .filter(|d| d.as_secs() <= 7 * 86400)
            .ok_or_else(|| Error::Invalid(format!("grace '{g}' is not a duration from 0s to 7d"))),
    }
}

/// The current signing secret.
pub async fn secret(db: &PgPool, key: &SecretKey, who: &Principal, id: Uuid) -> Result<String> {
    who.require(Scope::EndpointsWrite)?;
    let sealed: Vec<u8> = sqlx::query_scalar(
        "SELECT s.sealed FROM endpoint_secrets s JOIN endpoints e ON e.id = s.endpoint_id
         WHERE e.id = $1 AND herald_manages(e.owner, e.admin, $2, $3) AND s.expires_at IS NULL",
    )
    .bind(id)
    .bind_caller(who)
    .fetch_optional(db)
    .await?
    .ok_or(Error::NotFound)?;
    let secret = key.open(id, &sealed).map_err(Error::internal)?;
    audit::record_alone(db, &who.actor(), "endpoint.secret.revealed", target(id), None).await?;
    Ok(secret)
}

/// Makes a new current secret; the old one keeps signing for `grace`. At most
/// [`MAX_OLD_SECRETS`] old secrets are kept; expired ones are dropped.
pub async fn rotate(db: &PgPool, key: &SecretKey, who: &Principal, id: Uuid, grace: Duration) -> Result<String> {
    who.require(Scope::EndpointsWrite)?;
    let mut tx = db.begin().await?;
    let found: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM endpoints WHERE id = $1 AND herald_manages(owner, admin, $2, $3) FOR NO KEY UPDATE",
    )
    .bind(id)
    .bind_caller(who)
    .fetch_optional(&mut *tx)
    .await?;
    if found.is_none() {
        return Err(Error::NotFound);
    }
    let secret = secrets::generate_secret();
    sqlx::query(
        "UPDATE endpoint_secrets SET expires_at = now() + make_interval(secs => $2)
         WHERE endpoint_id = $1 AND expires_at IS NULL",
    )
    .bind(id)
    .bind(grace.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO endpoint_secrets (endpoint_id, generation, sealed)
         SELECT $1, coalesce(max(generation), 0) + 1, $2 FROM endpoint_secrets WHERE endpoint_id = $1",
    )
    .bind(id)
    .bind(key.seal(id, &secret))
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "DELETE FROM endpoint_secrets WHERE endpoint_id = $1 AND expires_at IS NOT NULL
           AND (expires_at <= now() OR generation NOT IN (
                SELECT generation FROM endpoint_secrets WHERE endpoint_id = $1 AND expires_at IS NOT NULL
                ORDER BY generation DESC LIMIT $2))",
    )
    .bind(id)
    .bind(MAX_OLD_SECRETS)
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        &who.actor(),
        "endpoint.secret.rotated",
        target(id),
        None,
        Some(serde_json::json!({ "previous_valid_for_seconds": grace.as_secs() })),
    )
    .await?;
    tx.commit().await?;
    crate::cache::changed(crate::cache::ENDPOINTS);
    Ok(secret)
}
