//! API keys: shown once at creation, stored as a SHA-256 hash, scoped, revocable.
//!
//! Format: `hk_<prefix>_<secret>` — the prefix (12 hex characters) finds the row, the
//! hash of the whole key proves possession. Comparison is constant-time.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::audit::{self, ActorKind, Target};
use crate::error::{Error, Result};

use crate::access::BindCaller;
pub use crate::access::{Principal, Scope};

#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ApiKeyInfo {
    pub id: Uuid,
    pub name: String,
    pub prefix: String,
    pub scopes: Vec<String>,
    pub owner: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    /// Requests per second (`null`: `HERALD_API_RATE_LIMIT`; 0: no limit).
    pub rate_limit: Option<i32>,
    /// The owners its notifications may address (`null`: any).
    pub addressable_owners: Option<Vec<String>>,
}

pub struct CreatedKey {
    pub info: ApiKeyInfo,
    /// The whole key. Shown once; never stored.
    pub secret: String,
}

/// Where Herald writes to an owner (for example when it disables one of their endpoints).
pub(crate) async fn set_owner_email(conn: &mut sqlx::PgConnection, owner: &str, email: &str) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO owners (subject, email) VALUES ($1, $2)
         ON CONFLICT (subject) DO UPDATE SET email = excluded.email, updated_at = now()",
    )
    .bind(owner)
    .bind(email)
    .execute(conn)
    .await?;
    Ok(())
}

fn hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// The most keys one owner may hold.
pub const MAX_KEYS_PER_OWNER: i64 = 100;

/// What [`create`] takes: the API's body, the console's form, the CLI's flags.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub name: String,
    pub scopes: Vec<String>,
    /// Only an admin may name another owner.
    #[serde(default)]
    pub owner: Option<String>,
    /// Requests per second, at most the caller's own (default: the caller's rate or
    /// `HERALD_API_RATE_LIMIT`, whichever is lower; 0, no limit, only for a caller
    /// with none).
    #[serde(default)]
    pub rate_limit: Option<u32>,
    /// The owners its notifications may address (default: any; a limited caller's
    /// keys are limited to at most the caller's owners).
    #[serde(default)]
    pub addressable_owners: Option<Vec<String>>,
}

/// The rate a new key gets: no more than its creator's. `wanted` as asked (`None`:
/// unspecified, `Some(0)`: no limit); the creator's effective rate (`None`: no limit).
fn granted_rate(wanted: Option<u32>, creator: Option<u32>, default: u32) -> Result<Option<u32>> {
    match (wanted, creator) {
        (wanted, None) => Ok(wanted),
        (None, Some(mine)) => Ok((default == 0 || default > mine).then_some(mine)),
        (Some(0), Some(mine)) => {
            Err(Error::Forbidden(format!("you cannot give a key no rate limit: yours is {mine} requests per second")))
        }
        (Some(w), Some(mine)) if w > mine => {
            Err(Error::Forbidden(format!("you cannot give a key {w} requests per second: yours is {mine}")))
        }
        (Some(w), Some(_)) => Ok(Some(w)),
    }
}

/// Creates an API key for `who`: with at most the caller's scopes, for the caller's
/// owner (an admin: any owner), at most the caller's rate, addressing at most the
/// caller's owners; at most [`MAX_KEYS_PER_OWNER`] active keys per owner, counted under
/// the owner's lock. A portal link's visitor makes none (a key would outlive the link).
/// `owner_email` is where Herald writes to the owner (the CLI's `--owner-email`).
/// Without an owner, the CLI's key is its own owner (`key:<id>`), anyone else's is
/// the caller's. Audited.
pub async fn create(
    db: &PgPool,
    who: &Principal,
    new: NewKey,
    owner_email: Option<&str>,
    default_rate: u32,
) -> Result<CreatedKey> {
    who.require_account()?;
    let name = new.name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(Error::Invalid("the key name must be 1 to 200 characters".into()));
    }
    if new.scopes.is_empty() {
        return Err(Error::Invalid("give the key at least one scope".into()));
    }
    let mut scopes = Vec::with_capacity(new.scopes.len());
    for s in &new.scopes {
        let scope = Scope::parse(s).ok_or_else(|| {
            Error::Invalid(format!("unknown scope '{s}'; known scopes: {}", Scope::ALL.map(Scope::as_str).join(", ")))
        })?;
        who.require(scope)
            .map_err(|_| Error::Forbidden(format!("you cannot give a key the scope '{s}', which you do not hold")))?;
        scopes.push(scope.as_str().to_owned());
    }
    scopes.sort();
    scopes.dedup();
    let id = Uuid::now_v7();
    let named = match new.owner.as_deref().map(str::trim) {
        None => None,
        Some(o) if o == who.owner => Some(o.to_owned()),
        Some(o) => Some(crate::access::owner_name(o)?),
    };
    let owner = match named {
        Some(o) if who.owns(&o) => o,
        Some(_) => return Err(Error::Forbidden("only an admin may create keys for another owner".into())),
        None if who.kind == ActorKind::Cli => format!("key:{id}"),
        None => who.owner.clone(),
    };
    let rate_limit = granted_rate(new.rate_limit, who.effective_rate(default_rate), default_rate)?;
    let addressable: Option<Vec<String>> = match new.addressable_owners {
        None => None,
        Some(a) if a.is_empty() || a.len() > 100 => {
            return Err(Error::Invalid("the owners a key may address must be 1 to 100 owners".into()))
        }
        Some(a) => {
            let mut a = a.iter().map(|o| crate::access::owner_name(o)).collect::<Result<Vec<_>>>()?;
            a.sort();
            a.dedup();
            Some(a)
        }
    };
    let addressable = match (&who.addressable, addressable) {
        (None, wanted) => wanted,
        (Some(mine), None) => Some(mine.clone()),
        (Some(mine), Some(wanted)) => match wanted.iter().find(|o| !mine.contains(o)) {
            Some(o) => return Err(Error::Forbidden(format!("you cannot let a key address '{o}', which you may not"))),
            None => Some(wanted),
        },
    };
    let owner_email = match owner_email {
        None => None,
        Some(e) => Some(
            e.trim()
                .parse::<lettre::Address>()
                .map_err(|_| Error::Invalid(format!("'{}' is not an email address", e.replace('\0', ""))))?
                .to_string(),
        ),
    };
    let mut prefix = [0u8; 6];
    let mut secret = [0u8; 32];
    {
        let mut rng = rand::thread_rng();
        rng.fill_bytes(&mut prefix);
        rng.fill_bytes(&mut secret);
    }
    let prefix = hex::encode(prefix);
    let key = format!("hk_{prefix}_{}", hex::encode(secret));
    let mut tx = db.begin().await?;
    // One owner's creations queue here, so the count below cannot be raced past.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('api_keys:' || $1, 0))")
        .bind(&owner)
        .execute(&mut *tx)
        .await?;
    let have: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE owner = $1 AND revoked_at IS NULL")
        .bind(&owner)
        .fetch_one(&mut *tx)
        .await?;
    if have >= MAX_KEYS_PER_OWNER {
        return Err(Error::LimitExceeded(format!("an owner may hold at most {MAX_KEYS_PER_OWNER} active API keys")));
    }
    let info = sqlx::query_as::<_, ApiKeyInfo>(
        "INSERT INTO api_keys (id, name, prefix, key_hash, scopes, owner, rate_limit, addressable_owners)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         RETURNING id, name, prefix, scopes, owner, created_at, revoked_at, last_used_at, rate_limit, addressable_owners",
    )
    .bind(id)
    .bind(name)
    .bind(&prefix)
    .bind(hash(&key))
    .bind(&scopes)
    .bind(&owner)
    .bind(rate_limit.map(|r| r.min(i32::MAX as u32) as i32))
    .bind(&addressable)
    .fetch_one(&mut *tx)
    .await?;
    if let Some(email) = owner_email {
        set_owner_email(&mut tx, &info.owner, &email).await?;
    }
    audit::record(
        &mut tx,
        &who.actor(),
        "api_key.created",
        Target { kind: "api_key", id: info.id.to_string() },
        None,
        Some(serde_json::to_value(&info).map_err(Error::internal)?),
    )
    .await?;
    tx.commit().await?;
    Ok(CreatedKey { info, secret: key })
}

/// The caller's owner's keys (an admin: every key), never their secrets.
pub async fn list(db: &PgPool, who: &Principal) -> Result<Vec<ApiKeyInfo>> {
    who.require_account()?;
    Ok(sqlx::query_as::<_, ApiKeyInfo>(
        "SELECT id, name, prefix, scopes, owner, created_at, revoked_at, last_used_at, rate_limit, addressable_owners
         FROM api_keys WHERE herald_owns(owner, $1, $2) ORDER BY id",
    )
    .bind_caller(who)
    .fetch_all(db)
    .await?)
}

/// Revokes one of the caller's owner's keys (an admin: any); another owner's key is
/// "not found". Revoking twice is harmless and recorded once.
pub async fn revoke(db: &PgPool, who: &Principal, id: Uuid) -> Result<()> {
    who.require_account()?;
    let mut tx = db.begin().await?;
    let revoked: Option<bool> = sqlx::query_scalar(
        "UPDATE api_keys k SET revoked_at = coalesce(k.revoked_at, now())
         FROM api_keys old WHERE k.id = $1 AND old.id = k.id AND herald_owns(k.owner, $2, $3)
         RETURNING old.revoked_at IS NULL",
    )
    .bind(id)
    .bind_caller(who)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(newly) = revoked else { return Err(Error::NotFound) };
    let mut reach_taken = false;
    if newly {
        // The endpoints it made as an admin lose their admin reach with it.
        reach_taken =
            crate::webhooks::endpoints::revoke_admin_reach(&mut tx, ActorKind::ApiKey, &id.to_string()).await? > 0;
        audit::record(
            &mut tx,
            &who.actor(),
            "api_key.revoked",
            Target { kind: "api_key", id: id.to_string() },
            None,
            None,
        )
        .await?;
    }
    tx.commit().await?;
    crate::cache::changed(crate::cache::API_KEYS);
    if reach_taken {
        crate::cache::changed(crate::cache::ENDPOINTS);
    }
    Ok(())
}

#[derive(Clone, sqlx::FromRow)]
struct KeyRow {
    id: Uuid,
    key_hash: Vec<u8>,
    scopes: Vec<String>,
    owner: String,
    revoked: bool,
    stale: bool,
    rate_limit: Option<i32>,
    addressable_owners: Option<Vec<String>>,
}

/// Keys as last read, by prefix, so that a request costs no query (the hash is still
/// compared on every request). Any change to a key that matters — revocation, scopes,
/// owner, limits, deletion — notifies `herald_api_keys` (a row trigger), which empties the
/// cache before the change's next request can read it (`cache::Watched`); entries live at
/// most [`KEY_TTL`]. Unknown prefixes are never cached.
pub type KeyCache = crate::cache::Watched<String, CachedKey>;

/// How long a cached key is used at most without a change notification.
pub const KEY_TTL: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct CachedKey {
    row: KeyRow,
    /// When this process last recorded the key's use (`last_used_at`).
    marked: Option<std::time::Instant>,
}

pub fn key_cache() -> std::sync::Arc<KeyCache> {
    KeyCache::new(crate::cache::API_KEYS, KEY_TTL)
}

/// Checks a presented key, from `cache` when it holds it. `Ok(None)` for unknown,
/// malformed or revoked keys.
pub async fn verify(db: &PgPool, cache: &KeyCache, presented: &str) -> sqlx::Result<Option<Principal>> {
    let Some(prefix) = presented.strip_prefix("hk_").and_then(|r| r.split('_').next()) else {
        return Ok(None);
    };
    if prefix.len() != 12 {
        return Ok(None);
    }
    if let Some(cached) = cache.get(prefix) {
        let mut row = cached.row;
        // Mark it used at most once a minute from here, as the query would.
        row.stale = cached.marked.is_none_or(|t| t.elapsed() > Duration::from_secs(60));
        if row.stale {
            cache.update(prefix, |k| k.marked = Some(std::time::Instant::now()));
        }
        return Ok(principal_of(db, row, presented));
    }
    let token = cache.token();
    let row: Option<KeyRow> = sqlx::query_as(
        "SELECT id, key_hash, scopes, owner, revoked_at IS NOT NULL AS revoked, rate_limit, addressable_owners,
                last_used_at IS NULL OR last_used_at < now() - interval '60 seconds' AS stale
         FROM api_keys WHERE prefix = $1",
    )
    .bind(prefix)
    .fetch_optional(db)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let marked = row.stale.then(std::time::Instant::now);
    cache.put(token, prefix.to_owned(), CachedKey { row: row.clone(), marked });
    Ok(principal_of(db, row, presented))
}

fn principal_of(db: &PgPool, row: KeyRow, presented: &str) -> Option<Principal> {
    if row.revoked || !bool::from(row.key_hash.ct_eq(&hash(presented))) {
        return None;
    }
    if row.stale {
        // Off the request path, and at most once a minute per key.
        let db = db.clone();
        let id = row.id;
        tokio::spawn(async move {
            let r = sqlx::query("UPDATE api_keys SET last_used_at = now() WHERE id = $1").bind(id).execute(&db).await;
            if let Err(e) = r {
                tracing::warn!(api_key_id = %id, error = %e, "could not record API key use");
            }
        });
    }
    Some(Principal {
        kind: ActorKind::ApiKey,
        id: row.id.to_string(),
        key_id: Some(row.id),
        owner: row.owner,
        scopes: row.scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
        rate_limit: row.rate_limit.map(|r| r.max(0) as u32),
        addressable: row.addressable_owners,
        portal_link: None,
        request_id: None,
        source: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_runs_no_faster_than_its_creator() {
        // A creator without a limit grants anything, unspecified stays the default.
        assert_eq!(granted_rate(Some(0), None, 100).unwrap(), Some(0));
        assert_eq!(granted_rate(None, None, 100).unwrap(), None);
        // A creator at 5/s: no "no limit", nothing above 5, unspecified becomes 5.
        assert!(matches!(granted_rate(Some(0), Some(5), 100), Err(Error::Forbidden(_))));
        assert!(matches!(granted_rate(Some(6), Some(5), 100), Err(Error::Forbidden(_))));
        assert_eq!(granted_rate(Some(5), Some(5), 100).unwrap(), Some(5));
        assert_eq!(granted_rate(None, Some(5), 100).unwrap(), Some(5));
        // Unspecified under a default no higher than the creator's: the default.
        assert_eq!(granted_rate(None, Some(500), 100).unwrap(), None);
        // A default of "no limit" never passes to a limited creator's key.
        assert_eq!(granted_rate(None, Some(5), 0).unwrap(), Some(5));
    }
}
