//! Replacing `HERALD_SECRET_KEY` (`herald secret-key rotate`): an admin operation, asked
//! of the access policy like every other. In one transaction it checks the audit chain,
//! re-seals every endpoint signing secret (current and rotated-out) and every custom
//! header set under the new key, and ends the chain's segment (`audit::record_key_rotation`)
//! so later walks with the new key alone verify every entry. Every Herald process must be
//! stopped first (one still running holds the old key): start them again with the new one.

use sqlx::PgPool;
use uuid::Uuid;

use crate::access::Principal;
use crate::audit::{self, Verdict};
use crate::error::{Error, Result};
use crate::secrets::SecretKey;

/// What [`rotate_secret_key`] re-sealed.
#[derive(Debug, PartialEq, Eq)]
pub struct Rotated {
    pub endpoint_secrets: usize,
    pub endpoint_headers: usize,
    pub endpoint_auth: usize,
    /// The rotation's entry in the audit log.
    pub seq: i64,
}

/// Moves everything sealed under `old` (the current key, which keys the audit chain in
/// this process) to `new`. Refuses, changing nothing: anyone but an admin, the same key,
/// another current key than the chain's, and a broken chain.
pub async fn rotate_secret_key(db: &PgPool, who: &Principal, old: &SecretKey, new: &SecretKey) -> Result<Rotated> {
    who.require_admin()?;
    if old == new {
        return Err(Error::Invalid("the new key is the current key".into()));
    }
    audit::use_key(old)?;
    let mut tx = db.begin().await?;
    // Writers of the chain wait; so do the endpoints' secrets and headers.
    audit::lock_chain(&mut tx).await?;
    sqlx::query("LOCK TABLE endpoint_secrets, endpoints IN SHARE ROW EXCLUSIVE MODE").execute(&mut *tx).await?;
    if let Verdict::Broken { seq, reason } = audit::verify(db).await? {
        return Err(Error::Conflict(format!(
            "the audit log is broken at entry {seq}: {reason}; it is not rotated onto a new key"
        )));
    }
    let secrets: Vec<(Uuid, i32, Vec<u8>)> =
        sqlx::query_as("SELECT endpoint_id, generation, sealed FROM endpoint_secrets").fetch_all(&mut *tx).await?;
    for (endpoint, generation, sealed) in &secrets {
        let plain = old
            .open(*endpoint, sealed)
            .map_err(|e| Error::internal(format!("endpoint {endpoint}, secret generation {generation}: {e}")))?;
        sqlx::query("UPDATE endpoint_secrets SET sealed = $3 WHERE endpoint_id = $1 AND generation = $2")
            .bind(endpoint)
            .bind(generation)
            .bind(new.seal(*endpoint, &plain))
            .execute(&mut *tx)
            .await?;
    }
    let headers: Vec<(Uuid, Vec<u8>)> =
        sqlx::query_as("SELECT id, headers_sealed FROM endpoints WHERE headers_sealed IS NOT NULL")
            .fetch_all(&mut *tx)
            .await?;
    for (endpoint, sealed) in &headers {
        let plain = old
            .open_headers(*endpoint, sealed)
            .map_err(|e| Error::internal(format!("endpoint {endpoint}, headers: {e}")))?;
        sqlx::query("UPDATE endpoints SET headers_sealed = $2 WHERE id = $1")
            .bind(endpoint)
            .bind(new.seal_headers(*endpoint, &plain))
            .execute(&mut *tx)
            .await?;
    }
    let auth: Vec<(Uuid, Vec<u8>)> =
        sqlx::query_as("SELECT id, auth_sealed FROM endpoints WHERE auth_sealed IS NOT NULL")
            .fetch_all(&mut *tx)
            .await?;
    for (endpoint, sealed) in &auth {
        let plain =
            old.open_auth(*endpoint, sealed).map_err(|e| Error::internal(format!("endpoint {endpoint}, auth: {e}")))?;
        sqlx::query("UPDATE endpoints SET auth_sealed = $2 WHERE id = $1")
            .bind(endpoint)
            .bind(new.seal_auth(*endpoint, &plain))
            .execute(&mut *tx)
            .await?;
    }
    let done = serde_json::json!({
        "endpoint_secrets": secrets.len(), "endpoint_headers": headers.len(), "endpoint_auth": auth.len()
    });
    let seq = audit::record_key_rotation(&mut tx, &who.actor(), new, done).await?;
    tx.commit().await?;
    Ok(Rotated { endpoint_secrets: secrets.len(), endpoint_headers: headers.len(), endpoint_auth: auth.len(), seq })
}
