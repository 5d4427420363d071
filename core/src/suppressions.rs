//! The suppression list: addresses Herald does not send to (see the `suppressions`
//! table and `herald_suppression`). Bounces, complaints and unsubscribes add to it on
//! their own (`email_feedback`, `unsubscribe`); admins list, add and remove entries here,
//! in the API and the console. Recipients' addresses are other owners' data: only
//! admins see the list, and the audit log names an address only by its SHA-256.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::access::Principal;
use crate::audit::{self, Target};
use crate::error::{Error, Result};

/// One suppressed address (for one category, or for all).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Suppression {
    pub id: i64,
    /// The bare address, lower-cased.
    pub address: String,
    /// The category an unsubscribe is for; `null` for every category.
    pub category: Option<String>,
    /// `bounce`, `complaint`, `unsubscribe`, `soft_bounces` or `manual`.
    pub reason: String,
    /// What was reported (an enhanced status code, or an admin's note).
    pub detail: Option<String>,
    /// Where it came from: `inbound_smtp`, `ses`, `postmark`, `one_click`, `preferences`,
    /// `api`, `console`.
    pub source: String,
    /// The delivery whose report caused it, while that delivery is kept.
    pub delivery_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

/// Which suppressions to list.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Part of an address (case-insensitive).
    pub q: Option<String>,
    /// Only this reason.
    pub reason: Option<String>,
    /// The page cursor: entries older than this id (a previous page's `next_before`).
    pub before: Option<i64>,
    /// At most this many (1 to 200, default 50).
    pub limit: Option<i64>,
}

const REASONS: &[&str] = &["bounce", "complaint", "unsubscribe", "soft_bounces", "manual"];

/// An admin's suppression of an address.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSuppression {
    /// The address (a bare address or `Name <address>`).
    pub address: String,
    /// Only this category's non-transactional mail; absent: every email.
    #[serde(default)]
    pub category: Option<String>,
    /// A note kept with the entry.
    #[serde(default)]
    pub detail: Option<String>,
}

/// The bare, lower-cased address of `raw`, or a clear error.
pub fn normalize(raw: &str) -> Result<String> {
    let mailbox: lettre::message::Mailbox =
        raw.trim().parse().map_err(|_| Error::Invalid(format!("'{}' is not a valid email address", raw.trim())))?;
    Ok(mailbox.email.to_string().to_lowercase())
}

fn address_hash(address: &str) -> String {
    hex::encode(Sha256::digest(address.as_bytes()))
}

const SUPPRESSION_COLUMNS: &str = "id, address, category, reason, detail, source, delivery_id, created_at";

pub async fn list(db: &PgPool, who: &Principal, q: &ListQuery) -> Result<(Vec<Suppression>, Option<i64>)> {
    who.require_admin()?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(Error::Invalid("limit must be from 1 to 200".into()));
    }
    let reason = q.reason.as_deref().map(str::trim).filter(|r| !r.is_empty());
    if let Some(r) = reason {
        if !REASONS.contains(&r) {
            return Err(Error::Invalid(format!("reason '{r}' is not one of {}", REASONS.join(", "))));
        }
    }
    let search = q.q.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(|s| {
        let escaped = s.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
        format!("%{escaped}%")
    });
    let rows: Vec<Suppression> = sqlx::query_as(&format!(
        "SELECT {SUPPRESSION_COLUMNS} FROM suppressions
         WHERE ($1::text IS NULL OR address LIKE $1) AND ($2::text IS NULL OR reason = $2)
           AND ($3::int8 IS NULL OR id < $3)
         ORDER BY id DESC LIMIT $4"
    ))
    .bind(search)
    .bind(reason)
    .bind(q.before)
    .bind(limit)
    .fetch_all(db)
    .await?;
    let next = if rows.len() as i64 == limit { rows.last().map(|s| s.id) } else { None };
    Ok((rows, next))
}

/// Suppresses an address (reason `manual`); `source` is `api` or `console`. An entry
/// for the same address and category is replaced.
pub async fn add(db: &PgPool, who: &Principal, new: NewSuppression, source: &str) -> Result<Suppression> {
    who.require_admin()?;
    let address = normalize(&new.address)?;
    let category = new.category.as_deref().map(str::trim).filter(|c| !c.is_empty()).map(str::to_owned);
    if let Some(c) = &category {
        let known: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM event_types WHERE category = $1)")
            .bind(c)
            .fetch_one(db)
            .await?;
        if !known {
            return Err(Error::Invalid(format!("no event type has the category '{c}'")));
        }
    }
    let detail = new.detail.map(|d| d.chars().take(500).collect::<String>());
    if detail.as_deref().is_some_and(|d| d.contains('\0')) {
        return Err(Error::NulCharacter("detail".into()));
    }
    let mut tx = db.begin().await?;
    let s: Suppression = sqlx::query_as(&format!(
        "INSERT INTO suppressions (address, category, reason, detail, source) VALUES ($1, $2, 'manual', $3, $4)
         ON CONFLICT (address, category) DO UPDATE
            SET reason = 'manual', detail = EXCLUDED.detail, source = EXCLUDED.source, delivery_id = NULL, created_at = now()
         RETURNING {SUPPRESSION_COLUMNS}"
    ))
    .bind(&address)
    .bind(&category)
    .bind(&detail)
    .bind(source)
    .fetch_one(&mut *tx)
    .await?;
    let after = json!({ "address_sha256": address_hash(&address), "category": category, "reason": "manual" });
    audit::record(&mut tx, &who.actor(), "suppression.added", target(s.id), None, Some(after)).await?;
    tx.commit().await?;
    Ok(s)
}

fn target(id: i64) -> Target<'static> {
    Target { kind: "suppression", id: id.to_string() }
}

/// Removes an entry: the address gets email again (of that category).
pub async fn remove(db: &PgPool, who: &Principal, id: i64) -> Result<()> {
    who.require_admin()?;
    let mut tx = db.begin().await?;
    let gone: Option<(String, Option<String>, String)> =
        sqlx::query_as("DELETE FROM suppressions WHERE id = $1 RETURNING address, category, reason")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((address, category, reason)) = gone else { return Err(Error::NotFound) };
    let before = json!({ "address_sha256": address_hash(&address), "category": category, "reason": reason });
    audit::record(&mut tx, &who.actor(), "suppression.removed", target(id), Some(before), None).await?;
    tx.commit().await?;
    Ok(())
}

/// The deliveries among `ids` whose address is suppressed now (for their event type's
/// category), with why: the email dispatcher's check just before sending, for emails
/// accepted before their address was suppressed. One statement; none without a
/// suppression row for the address.
pub async fn suppressed_now(db: &PgPool, ids: &[Uuid]) -> sqlx::Result<Vec<(Uuid, String)>> {
    sqlx::query_as(
        // MATERIALIZED: the planner would otherwise pull the rule up into the WHERE and
        // evaluate it twice per row.
        "WITH r AS MATERIALIZED (
            SELECT d.id, herald_suppression(herald_ordering_key('email', d.target), et.category, et.transactional) AS reason
            FROM deliveries d
            JOIN notifications n ON n.id = d.notification_id
            LEFT JOIN event_types et ON et.name = n.event_type
            WHERE d.id = ANY($1)
              AND EXISTS (SELECT 1 FROM suppressions s WHERE s.address = herald_ordering_key('email', d.target))
         )
         SELECT id, reason FROM r WHERE reason IS NOT NULL",
    )
    .bind(ids)
    .fetch_all(db)
    .await
}
