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

use crate::audit::{self, Actor, ActorKind, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    NotificationsWrite,
    NotificationsRead,
    EndpointsRead,
    EndpointsWrite,
    /// Makes and revokes portal links (for any owner the key may address).
    PortalLinks,
    /// Reaches every owner's resources.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 6] = [
        Scope::NotificationsWrite,
        Scope::NotificationsRead,
        Scope::EndpointsRead,
        Scope::EndpointsWrite,
        Scope::PortalLinks,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::NotificationsWrite => "notifications:write",
            Scope::NotificationsRead => "notifications:read",
            Scope::EndpointsRead => "endpoints:read",
            Scope::EndpointsWrite => "endpoints:write",
            Scope::PortalLinks => "portal_links:write",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|sc| sc.as_str() == s)
    }
}

/// An authenticated caller as the domain layer sees it: an API key, a logged-in user,
/// or an API client holding the identity provider's token.
#[derive(Debug, Clone)]
pub struct Principal {
    pub kind: ActorKind,
    /// The API key id, the user's subject, or the client id.
    pub id: String,
    /// Set for API keys (notifications record the key they came with).
    pub key_id: Option<Uuid>,
    pub owner: String,
    /// The key's scopes (a scope this version does not know is dropped).
    pub scopes: Vec<Scope>,
    /// The key's own requests-per-second limit (`None`: `HERALD_API_RATE_LIMIT`).
    pub rate_limit: Option<u32>,
    /// The owners whose endpoints this caller's notifications may reach (`None`: any).
    pub addressable: Option<Vec<String>>,
    /// The request's id (`x-request-id`) and peer address, for the audit log.
    pub request_id: Option<String>,
    pub source: Option<String>,
}

impl Principal {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
    pub fn is_admin(&self) -> bool {
        self.has(Scope::Admin)
    }

    /// The rate limiter's key for this caller.
    pub fn rate_key(&self) -> Uuid {
        self.key_id
            .unwrap_or_else(|| Uuid::new_v5(&Uuid::NAMESPACE_URL, format!("{:?}:{}", self.kind, self.id).as_bytes()))
    }

    /// This caller as the actor of an audited change.
    pub fn actor(&self) -> Actor {
        Actor {
            kind: self.kind,
            id: self.id.clone(),
            owner: Some(self.owner.clone()),
            request_id: self.request_id.clone(),
            source: self.source.clone(),
        }
    }
}

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

/// Creates a key. `owner_email` is where Herald writes to the owner (for example when
/// it disables one of their endpoints).
/// What a key may do besides its scopes.
#[derive(Debug, Clone, Default)]
pub struct KeyLimits {
    /// Requests per second (`None`: `HERALD_API_RATE_LIMIT`; 0: none).
    pub rate_limit: Option<u32>,
    /// The owners its notifications may address (`None`: any).
    pub addressable: Option<Vec<String>>,
}

pub async fn create(
    db: &PgPool,
    actor: &Actor,
    name: &str,
    scopes: &[String],
    owner: Option<&str>,
    owner_email: Option<&str>,
    limits: KeyLimits,
) -> anyhow::Result<CreatedKey> {
    let KeyLimits { rate_limit, addressable } = limits;
    let name = name.trim();
    anyhow::ensure!(!name.is_empty() && name.len() <= 200, "the key name must be 1 to 200 characters");
    anyhow::ensure!(!scopes.is_empty(), "give the key at least one --scope");
    for s in scopes {
        anyhow::ensure!(
            Scope::parse(s).is_some(),
            "unknown scope '{s}'; known scopes: {}",
            Scope::ALL.map(Scope::as_str).join(", ")
        );
    }
    if let Some(owner) = owner {
        anyhow::ensure!(
            !owner.trim().is_empty() && owner.len() <= 255 && !owner.starts_with("key:"),
            "the owner must be 1 to 255 characters and must not start with 'key:'"
        );
    }
    let addressable: Option<Vec<String>> = addressable.map(|a| {
        let mut a: Vec<String> = a.into_iter().map(|o| o.trim().to_owned()).collect();
        a.sort();
        a.dedup();
        a
    });
    if let Some(a) = &addressable {
        anyhow::ensure!(
            !a.is_empty() && a.len() <= 100 && a.iter().all(|o| !o.is_empty() && o.len() <= 255 && !o.contains('\0')),
            "the owners a key may address must be 1 to 100 names of 1 to 255 characters"
        );
    }
    let owner_email = match owner_email {
        None => None,
        Some(e) => Some(
            e.trim()
                .parse::<lettre::Address>()
                .map_err(|_| anyhow::anyhow!("--owner-email '{e}' is not an email address"))?
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
    let id = Uuid::now_v7();
    let owner = owner.map(str::to_owned).unwrap_or_else(|| format!("key:{id}"));
    let mut scopes = scopes.to_vec();
    scopes.sort();
    scopes.dedup();
    let mut tx = db.begin().await?;
    let info = sqlx::query_as::<_, ApiKeyInfo>(
        "INSERT INTO api_keys (id, name, prefix, key_hash, scopes, owner, rate_limit, addressable_owners)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         RETURNING id, name, prefix, scopes, owner, created_at, revoked_at, last_used_at, addressable_owners",
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
        actor,
        "api_key.created",
        Target { kind: "api_key", id: info.id.to_string() },
        None,
        Some(serde_json::to_value(&info)?),
    )
    .await?;
    tx.commit().await?;
    Ok(CreatedKey { info, secret: key })
}

pub async fn list(db: &PgPool) -> anyhow::Result<Vec<ApiKeyInfo>> {
    Ok(sqlx::query_as::<_, ApiKeyInfo>(
        "SELECT id, name, prefix, scopes, owner, created_at, revoked_at, last_used_at, addressable_owners FROM api_keys
         ORDER BY id",
    )
    .fetch_all(db)
    .await?)
}

/// Revokes a key. Returns false when no such key exists; revoking twice is harmless.
pub async fn revoke(db: &PgPool, actor: &Actor, id: Uuid) -> anyhow::Result<bool> {
    let mut tx = db.begin().await?;
    let revoked: Option<bool> = sqlx::query_scalar(
        "UPDATE api_keys k SET revoked_at = coalesce(k.revoked_at, now())
         FROM api_keys old WHERE k.id = $1 AND old.id = k.id
         RETURNING old.revoked_at IS NULL",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(newly) = revoked else { return Ok(false) };
    // Revoking twice changes nothing, and is not recorded twice.
    if newly {
        audit::record(&mut tx, actor, "api_key.revoked", Target { kind: "api_key", id: id.to_string() }, None, None)
            .await?;
    }
    tx.commit().await?;
    Ok(true)
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
    KeyCache::new("herald_api_keys", KEY_TTL)
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
        request_id: None,
        source: None,
    })
}

/// The most keys one owner may hold through [`create_own`].
pub const MAX_KEYS_PER_OWNER: i64 = 100;

/// What [`create_own`] takes.
#[derive(Debug, Clone, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub name: String,
    pub scopes: Vec<String>,
    /// Only an admin may name another owner.
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub rate_limit: Option<u32>,
    /// The owners its notifications may address (default: any; a limited caller's
    /// keys are limited to at most the caller's owners).
    #[serde(default)]
    pub addressable_owners: Option<Vec<String>>,
}

/// Creates an API key for the caller: an owner only for themselves and with at most
/// their own scopes; an admin for any owner. Audited.
pub async fn create_own(db: &PgPool, who: &Principal, new: NewKey) -> crate::error::Result<CreatedKey> {
    use crate::error::Error;
    let mut scopes = Vec::with_capacity(new.scopes.len());
    for s in &new.scopes {
        let scope = Scope::parse(s).ok_or_else(|| {
            Error::Invalid(format!("unknown scope '{s}'; known scopes: {}", Scope::ALL.map(Scope::as_str).join(", ")))
        })?;
        if !who.is_admin() && !who.has(scope) {
            return Err(Error::Forbidden(format!("you cannot give a key the scope '{s}', which you do not hold")));
        }
        scopes.push(scope.as_str().to_owned());
    }
    let owner = match new.owner {
        Some(o) if who.is_admin() => o,
        Some(o) if o == who.owner => o,
        Some(_) => return Err(Error::Forbidden("only an admin may create keys for another owner".into())),
        None => who.owner.clone(),
    };
    let have: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE owner = $1 AND revoked_at IS NULL")
        .bind(&owner)
        .fetch_one(db)
        .await?;
    if have >= MAX_KEYS_PER_OWNER {
        return Err(Error::LimitExceeded(format!("an owner may hold at most {MAX_KEYS_PER_OWNER} active API keys")));
    }
    let addressable = match (&who.addressable, new.addressable_owners) {
        (None, wanted) => wanted,
        (Some(mine), None) => Some(mine.clone()),
        (Some(mine), Some(wanted)) => match wanted.iter().find(|o| !mine.contains(o)) {
            Some(o) => return Err(Error::Forbidden(format!("you cannot let a key address '{o}', which you may not"))),
            None => Some(wanted),
        },
    };
    create(
        db,
        &who.actor(),
        &new.name,
        &scopes,
        Some(&owner),
        None,
        KeyLimits { rate_limit: new.rate_limit, addressable },
    )
    .await
    .map_err(|e| {
        // `create` explains input problems in its message; anything else is internal.
        match e.downcast::<sqlx::Error>() {
            Ok(db) => Error::from(db),
            Err(e) => Error::Invalid(e.to_string()),
        }
    })
}

/// The caller's keys (an admin: every key), never their secrets.
pub async fn list_own(db: &PgPool, who: &Principal) -> crate::error::Result<Vec<ApiKeyInfo>> {
    Ok(sqlx::query_as::<_, ApiKeyInfo>(
        "SELECT id, name, prefix, scopes, owner, created_at, revoked_at, last_used_at, addressable_owners FROM api_keys
         WHERE owner = $1 OR $2 ORDER BY id",
    )
    .bind(&who.owner)
    .bind(who.is_admin())
    .fetch_all(db)
    .await?)
}

/// Revokes one of the caller's keys (an admin: any). Another owner's key is "not found".
pub async fn revoke_own(db: &PgPool, who: &Principal, id: Uuid) -> crate::error::Result<()> {
    let owner: Option<String> =
        sqlx::query_scalar("SELECT owner FROM api_keys WHERE id = $1").bind(id).fetch_optional(db).await?;
    match owner {
        Some(o) if o == who.owner || who.is_admin() => {
            revoke(db, &who.actor(), id).await.map_err(crate::error::Error::Internal)?;
            Ok(())
        }
        _ => Err(crate::error::Error::NotFound),
    }
}
