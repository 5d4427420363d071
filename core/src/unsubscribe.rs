//! One-click unsubscribe (RFC 8058) and a recipient's preferences.
//!
//! Every non-transactional email carries `List-Unsubscribe: <https://…/u/<token>>`
//! (and a `mailto:` to its VERP address when a bounce address is set) with
//! `List-Unsubscribe-Post: List-Unsubscribe=One-Click`. The token is sealed under
//! `HERALD_SECRET_KEY` (purpose `unsubscribe`): it carries the address, the category
//! and the delivery, and only Herald can make one. A `POST` of
//! `List-Unsubscribe=One-Click` to the URL unsubscribes at once; a `GET` opens a small
//! page (no JavaScript, no login) where the person chooses categories or all.
//!
//! An unsubscribe is a suppression with reason `unsubscribe` for one category (or,
//! category NULL, for all): transactional mail still goes (`herald_suppression`).

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::access::{Principal, Scope};
use crate::error::{Error, Result};
use crate::secrets::SecretKey;

/// What a template's `{{ unsubscribe_url }}` renders to until the email is sent, when
/// each recipient's own URL takes its place (the rendered content is shared by every
/// recipient of a notification).
pub const UNSUBSCRIBE_MARKER: &str = "HERALD_UNSUBSCRIBE_URL";
/// `{{ preferences_url }}`'s marker (see [`UNSUBSCRIBE_MARKER`]).
pub const PREFERENCES_MARKER: &str = "HERALD_PREFERENCES_URL";

/// What an unsubscribe link is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub address: String,
    pub category: String,
    pub delivery: Uuid,
}

impl Token {
    pub fn seal(&self, key: &SecretKey) -> String {
        let mut msg = self.delivery.as_bytes().to_vec();
        msg.extend_from_slice(self.category.as_bytes());
        msg.push(0);
        msg.extend_from_slice(self.address.as_bytes());
        key.seal_for("unsubscribe", &msg)
    }

    /// `None` for anything forged, altered or sealed under another key.
    pub fn open(keys: &[&SecretKey], token: &str) -> Option<Self> {
        let msg = keys.iter().find_map(|k| k.open_for("unsubscribe", token))?;
        let delivery = Uuid::from_slice(msg.get(..16)?).ok()?;
        let rest = std::str::from_utf8(&msg[16..]).ok()?;
        let (category, address) = rest.split_once('\0')?;
        Some(Self { address: address.to_owned(), category: category.to_owned(), delivery })
    }

    /// The page's URL under `base` (`HERALD_PUBLIC_URL`).
    pub fn url(&self, base: &str, key: &SecretKey) -> String {
        format!("{}/u/{}", base.trim_end_matches('/'), self.seal(key))
    }
}

/// Unsubscribes `address` from `category` (or from every category), recording where
/// it came from and, for a link, an `unsubscribe` event on the delivery it came in.
pub async fn unsubscribe(
    db: &PgPool,
    address: &str,
    category: Option<&str>,
    source: &str,
    delivery: Option<Uuid>,
) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO suppressions (address, category, reason, source, delivery_id)
         VALUES (lower($1), $2, 'unsubscribe', $3, (SELECT id FROM deliveries WHERE id = $4))
         ON CONFLICT (address, category) DO NOTHING",
    )
    .bind(address)
    .bind(category)
    .bind(source)
    .bind(delivery)
    .execute(&mut *tx)
    .await?;
    if let Some(d) = delivery {
        sqlx::query(
            "INSERT INTO email_feedback (delivery_id, kind, source, detail)
             SELECT id, 'unsubscribe', $2, $3 FROM deliveries WHERE id = $1
               AND NOT EXISTS (SELECT 1 FROM email_feedback WHERE delivery_id = $1 AND kind = 'unsubscribe')",
        )
        .bind(d)
        .bind(source)
        .bind(category.map(|c| format!("category {c}")).unwrap_or_else(|| "every category".into()))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    crate::metrics::email_feedback("unsubscribe", source);
    Ok(())
}

/// A recipient's preferences: the categories of non-transactional event types, each
/// subscribed or not, and whether they left everything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Preferences {
    /// Every category non-transactional mail is sent in, and whether this address gets it.
    pub categories: Vec<CategoryChoice>,
    /// Unsubscribed from all non-transactional mail (whatever the categories say).
    pub unsubscribed_from_all: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CategoryChoice {
    pub category: String,
    pub subscribed: bool,
}

/// The preferences of `address` (a bare address, any case).
pub async fn preferences(db: &PgPool, address: &str) -> sqlx::Result<Preferences> {
    let rows: Vec<(String, bool)> = sqlx::query_as(
        "SELECT c.category, NOT EXISTS (SELECT 1 FROM suppressions s WHERE s.address = lower($1)
                                             AND s.reason = 'unsubscribe' AND s.category = c.category)
         FROM (SELECT DISTINCT category FROM event_types WHERE NOT transactional AND NOT operational) c
         ORDER BY c.category",
    )
    .bind(address)
    .fetch_all(db)
    .await?;
    let all: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM suppressions WHERE address = lower($1) AND reason = 'unsubscribe' AND category IS NULL)",
    )
    .bind(address)
    .fetch_one(db)
    .await?;
    Ok(Preferences {
        categories: rows.into_iter().map(|(category, subscribed)| CategoryChoice { category, subscribed }).collect(),
        unsubscribed_from_all: all,
    })
}

/// Sets the preferences of `address`: the categories listed as subscribed get mail
/// again, the others do not; `unsubscribed_from_all` leaves or rejoins everything.
/// Suppressions for other reasons (bounces, complaints, an admin's) are not touched.
pub async fn set_preferences(db: &PgPool, address: &str, p: &Preferences, source: &str) -> Result<Preferences> {
    let known = preferences(db, address).await?;
    for c in &p.categories {
        if !known.categories.iter().any(|k| k.category == c.category) {
            return Err(Error::Invalid(format!("'{}' is not a category of non-transactional mail", c.category)));
        }
    }
    let mut tx = db.begin().await?;
    for c in &known.categories {
        let want = p.categories.iter().find(|x| x.category == c.category).map(|x| x.subscribed).unwrap_or(c.subscribed);
        if want {
            sqlx::query(
                "DELETE FROM suppressions WHERE address = lower($1) AND category = $2 AND reason = 'unsubscribe'",
            )
            .bind(address)
            .bind(&c.category)
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query(
                "INSERT INTO suppressions (address, category, reason, source) VALUES (lower($1), $2, 'unsubscribe', $3)
                 ON CONFLICT (address, category) DO NOTHING",
            )
            .bind(address)
            .bind(&c.category)
            .bind(source)
            .execute(&mut *tx)
            .await?;
        }
    }
    if p.unsubscribed_from_all {
        sqlx::query(
            "INSERT INTO suppressions (address, category, reason, source) VALUES (lower($1), NULL, 'unsubscribe', $2)
             ON CONFLICT (address, category) DO NOTHING",
        )
        .bind(address)
        .bind(source)
        .execute(&mut *tx)
        .await?;
    } else {
        sqlx::query(
            "DELETE FROM suppressions WHERE address = lower($1) AND category IS NULL AND reason = 'unsubscribe'",
        )
        .bind(address)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(preferences(db, address).await?)
}

/// The address of a recipient the caller may act for: an admin, any; an owner, only one
/// its own notifications have emailed (another owner's recipients are "not found").
async fn recipient_of(db: &PgPool, who: &Principal, address: &str) -> Result<String> {
    who.require(Scope::NotificationsWrite)?;
    let address = crate::suppressions::normalize(address)?;
    if who.is_admin() {
        return Ok(address);
    }
    let mine: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM deliveries d JOIN notifications n ON n.id = d.notification_id
                        WHERE d.channel = 'email' AND herald_ordering_key('email', d.target) = $1 AND n.owner = $2)",
    )
    .bind(&address)
    .bind(&who.owner)
    .fetch_one(db)
    .await?;
    if !mine {
        return Err(Error::NotFound);
    }
    Ok(address)
}

/// The API's read of a recipient's preferences (services that send to them).
pub async fn read_for(db: &PgPool, who: &Principal, address: &str) -> Result<Preferences> {
    let address = recipient_of(db, who, address).await?;
    Ok(preferences(db, &address).await?)
}

/// The API's change of a recipient's preferences.
pub async fn write_for(db: &PgPool, who: &Principal, address: &str, p: &Preferences) -> Result<Preferences> {
    let address = recipient_of(db, who, address).await?;
    set_preferences(db, &address, p, "api").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_open_only_under_their_key_and_purpose() {
        let k = SecretKey::from_bytes([3; 32]);
        let t = Token { address: "a@b.test".into(), category: "news".into(), delivery: Uuid::now_v7() };
        let sealed = t.seal(&k);
        assert_eq!(Token::open(&[&k], &sealed), Some(t.clone()));
        assert_eq!(Token::open(&[&SecretKey::from_bytes([4; 32])], &sealed), None);
        // Not a tracking token, nor anything else sealed for another purpose.
        assert_eq!(Token::open(&[&k], &k.seal_for("portal", b"x")), None);
        assert!(sealed.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert!(t.url("https://h.test/", &k).starts_with("https://h.test/u/"));
    }
}
