//! Portal links: an admin makes a short-lived, single-owner, revocable link; whoever
//! opens it gets a console session as that owner (the owners' portal) until the link
//! expires or is revoked — checked at every request of such a session, so revoking
//! ends sessions already opened with it. Only the token's SHA-256 is stored. Audited.

use chrono::{DateTime, Duration, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::access::{Principal, Scope};
use crate::audit::{self, Actor, Target};
use crate::error::{Error, Result};

/// The longest a link may live.
pub const MAX_TTL: Duration = Duration::days(7);

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct PortalLink {
    pub id: Uuid,
    pub owner: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// `POST /api/v1/portal-links`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPortalLink {
    /// The owner (a team, or `user:<subject>`) the portal opens for.
    pub owner: String,
    /// How long the link works, such as `1h` (default `1h`, at most `7d`).
    #[serde(default)]
    pub ttl: Option<String>,
}

fn digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn target(id: Uuid) -> Target<'static> {
    Target { kind: "portal_link", id: id.to_string() }
}

/// The address that opens the portal with `token`.
pub fn url(public_url: &str, token: &str) -> String {
    format!("{}/auth/portal?token={token}", public_url.trim_end_matches('/'))
}

/// Makes a link (admins, or a key with `portal_links:write`). Returns it and its token, shown once.
pub async fn create(db: &PgPool, who: &Principal, new: NewPortalLink) -> Result<(PortalLink, String)> {
    who.require(Scope::PortalLinks)?;
    let owner = crate::access::owner_name(&new.owner)?;
    if who.addressable.as_ref().is_some_and(|allowed| !allowed.contains(&owner)) {
        return Err(Error::Forbidden(format!("this key may not open a portal for '{owner}'")));
    }
    let ttl = match new.ttl.as_deref().map(str::trim) {
        None | Some("") => Duration::hours(1),
        Some(t) => humantime::parse_duration(t)
            .ok()
            .and_then(|d| Duration::from_std(d).ok())
            .filter(|d| *d >= Duration::seconds(1) && *d <= MAX_TTL)
            .ok_or_else(|| Error::Invalid(format!("ttl '{t}' is not a duration from 1s to 7d")))?,
    };
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let token = format!("hpl_{}", hex::encode(bytes));
    let id = Uuid::now_v7();
    let mut tx = db.begin().await?;
    let link: PortalLink = sqlx::query_as(
        "INSERT INTO portal_links (id, owner, token_hash, created_by, expires_at)
         VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
         RETURNING id, owner, created_by, created_at, expires_at, revoked_at",
    )
    .bind(id)
    .bind(&owner)
    .bind(digest(&token))
    .bind(&who.id)
    .bind(ttl.num_milliseconds() as f64 / 1000.0)
    .fetch_one(&mut *tx)
    .await?;
    let after = serde_json::json!({ "owner": link.owner, "expires_at": link.expires_at });
    audit::record(&mut tx, &who.actor(), "portal_link.created", target(id), None, Some(after)).await?;
    tx.commit().await?;
    Ok((link, token))
}

/// The links (admins), newest first.
pub async fn list(db: &PgPool, who: &Principal) -> Result<Vec<PortalLink>> {
    who.require(Scope::PortalLinks)?;
    Ok(sqlx::query_as(
        "SELECT id, owner, created_by, created_at, expires_at, revoked_at FROM portal_links
         WHERE $1::text[] IS NULL OR owner = ANY($1) ORDER BY id DESC LIMIT 500",
    )
    .bind(if who.is_admin() { None } else { who.addressable.clone() })
    .fetch_all(db)
    .await?)
}

/// Revokes a link (admins, or a key with `portal_links:write` for its owners): it stops opening the portal, and sessions opened with it end.
pub async fn revoke(db: &PgPool, who: &Principal, id: Uuid) -> Result<()> {
    who.require(Scope::PortalLinks)?;
    let mut tx = db.begin().await?;
    let newly: Option<bool> = sqlx::query_scalar(
        "UPDATE portal_links l SET revoked_at = coalesce(l.revoked_at, now()) FROM portal_links old
         WHERE l.id = $1 AND old.id = l.id AND ($2::text[] IS NULL OR l.owner = ANY($2))
         RETURNING old.revoked_at IS NULL",
    )
    .bind(id)
    .bind(if who.is_admin() { None } else { who.addressable.clone() })
    .fetch_optional(&mut *tx)
    .await?;
    match newly {
        None => return Err(Error::NotFound),
        Some(true) => audit::record(&mut tx, &who.actor(), "portal_link.revoked", target(id), None, None).await?,
        Some(false) => {}
    }
    tx.commit().await?;
    Ok(())
}

/// Opens a link: its id, owner and expiry when the token is valid (not expired, not
/// revoked). Audited as `portal_link.used` with the visitor's address.
pub async fn redeem(db: &PgPool, token: &str, source: Option<String>) -> Result<Option<PortalLink>> {
    if !token.starts_with("hpl_") || token.len() != 68 {
        return Ok(None);
    }
    let link: Option<PortalLink> = sqlx::query_as(
        "SELECT id, owner, created_by, created_at, expires_at, revoked_at FROM portal_links
         WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > now()",
    )
    .bind(digest(token))
    .fetch_optional(db)
    .await?;
    if let Some(l) = &link {
        // The visitor acts as a portal user of the link's owner.
        let actor = Actor {
            kind: crate::audit::ActorKind::User,
            id: format!("portal:{}", l.id),
            owner: Some(l.owner.clone()),
            request_id: None,
            source,
        };
        audit::record_alone(db, &actor, "portal_link.used", target(l.id), None).await?;
    }
    Ok(link)
}

/// Whether a session opened with link `id` may go on.
pub async fn still_valid(db: &PgPool, id: Uuid) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM portal_links WHERE id = $1 AND revoked_at IS NULL AND expires_at > now())",
    )
    .bind(id)
    .fetch_one(db)
    .await?)
}
