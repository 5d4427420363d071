//! Webhook endpoints: validation, storage (custom headers sealed at rest) and owner
//! scoping. Secrets are in `signing`, deliveries in `deliveries`, test events and
//! disabling in `lifecycle`.
//!
//! Access: each operation asks the policy (`crate::access`) for its scope, and every
//! query filters with `herald_manages(owner, admin, $caller_owner, $caller_admin)`:
//! another owner's endpoint, or one with admin reach for a non-admin, is "not found".

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::access::{BindCaller, Principal, Scope};
use crate::audit::{self, Target};
use crate::error::{Error, Result};
use crate::retry::RetrySchedule;
use crate::secrets::{self, SecretKey};
use crate::ssrf::Guard;
use crate::transform;
const MAX_HEADERS: usize = 20;

/// Headers Herald sets itself; an endpoint's custom headers cannot set them.
const RESERVED_HEADERS: [&str; 9] = [
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
    "user-agent",
    "te",
    "upgrade",
    "keep-alive",
];

/// `POST /api/v1/endpoints` body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEndpoint {
    pub url: String,
    #[serde(default = "all_events")]
    pub event_types: Vec<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub rate_limit: Option<i32>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub retry_schedule: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A JavaScript `function handler(webhook)` run before each attempt (see
    /// `POST /api/v1/transformations/test`); `null` or absent for none.
    #[serde(default)]
    pub transformation: Option<String>,
    /// How Herald authenticates to the endpoint besides signing (`null` or absent: none).
    #[serde(default)]
    pub auth: Option<EndpointAuth>,
}

/// Authentication to an endpoint, besides the signature and custom headers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum EndpointAuth {
    /// OAuth 2.0 client credentials (RFC 6749 §4.4): Herald fetches a token from
    /// `token_url` (client_secret_basic), caches it until shortly before it expires, and
    /// sends it as `Authorization: Bearer`. A `401` from the endpoint drops the cached
    /// token. `client_secret` reads as `"********"`; sending that back keeps it.
    Oauth2 {
        token_url: String,
        client_id: String,
        client_secret: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
    },
}

fn all_events() -> Vec<String> {
    vec!["*".into()]
}
fn yes() -> bool {
    true
}

/// `PATCH /api/v1/endpoints/{id}` body: absent fields stay; `null` clears the nullable ones.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointPatch {
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub description: Option<String>,
    #[serde(default, deserialize_with = "crate::model::nullable")]
    pub rate_limit: Option<Option<i32>>,
    pub headers: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "crate::model::nullable")]
    pub retry_schedule: Option<Option<String>>,
    #[serde(default, deserialize_with = "crate::model::nullable")]
    pub transformation: Option<Option<String>>,
    #[serde(default, deserialize_with = "crate::model::nullable")]
    pub auth: Option<Option<EndpointAuth>>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Endpoint {
    pub id: Uuid,
    pub owner: String,
    pub url: String,
    pub description: String,
    pub event_types: Vec<String>,
    pub enabled: bool,
    pub disabled_at: Option<DateTime<Utc>>,
    pub disabled_reason: Option<String>,
    pub rate_limit: Option<i32>,
    /// Header names only: values are sealed at rest and shown as [`MASK`]
    /// (`GET .../headers` with `endpoints:write` reveals them).
    #[serde(serialize_with = "masked")]
    pub headers: Value,
    pub retry_schedule: Option<String>,
    /// The endpoint's transformation script, if any.
    pub transformation: Option<String>,
    /// Its authentication, the secret masked (`{"type": "oauth2", "token_url",
    /// "client_id", "client_secret": "********", "scope"?}`).
    #[schema(value_type = Option<EndpointAuth>)]
    #[serde(serialize_with = "auth_masked")]
    pub auth: Option<Value>,
    pub failing_since: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a custom header's value reads as. Sending it back in a PATCH keeps the value.
pub const MASK: &str = "********";

fn masked<S: serde::Serializer>(headers: &Value, ser: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let names: Vec<&String> = headers.as_object().map(|m| m.keys().collect()).unwrap_or_default();
    let mut map = ser.serialize_map(Some(names.len()))?;
    for n in names {
        map.serialize_entry(n, MASK)?;
    }
    map.end()
}

fn auth_masked<S: serde::Serializer>(auth: &Option<Value>, ser: S) -> Result<S::Ok, S::Error> {
    match auth {
        Some(Value::Object(m)) => {
            let mut m = m.clone();
            m.insert("client_secret".into(), Value::String(MASK.into()));
            m.retain(|_, v| !v.is_null());
            ser.serialize_some(&m)
        }
        other => other.serialize(ser),
    }
}

/// The names of a header map, each mapped to "" (what the `headers` column holds).
fn names_only(headers: &BTreeMap<String, String>) -> Value {
    Value::Object(headers.keys().map(|k| (k.clone(), Value::String(String::new()))).collect())
}

/// Seals a header map for the `headers_sealed` column (`None` when empty).
fn seal_headers(key: &SecretKey, id: Uuid, headers: &BTreeMap<String, String>) -> Result<Option<Vec<u8>>> {
    if headers.is_empty() {
        return Ok(None);
    }
    let json = serde_json::to_string(headers)?;
    Ok(Some(key.seal_headers(id, &json)))
}

/// An endpoint's custom headers in clear, from the sealed column (or, for rows written
/// before headers were sealed, the clear one).
pub fn open_headers(
    key: &SecretKey,
    id: Uuid,
    sealed: Option<&[u8]>,
    legacy: &Value,
) -> Result<BTreeMap<String, String>, String> {
    match sealed {
        Some(bytes) => serde_json::from_str(&key.open_headers(id, bytes)?).map_err(|e| e.to_string()),
        None => Ok(serde_json::from_value(legacy.clone()).unwrap_or_default()),
    }
}

/// Seals the header values of endpoints written before they were sealed. Run at start.
pub async fn seal_legacy_headers(db: &PgPool, key: &SecretKey) -> anyhow::Result<u64> {
    let rows: Vec<(Uuid, Value)> =
        sqlx::query_as("SELECT id, headers FROM endpoints WHERE headers_sealed IS NULL AND headers <> '{}'::jsonb")
            .fetch_all(db)
            .await?;
    for (id, headers) in &rows {
        let map: BTreeMap<String, String> = serde_json::from_value(headers.clone()).unwrap_or_default();
        let sealed = seal_headers(key, *id, &map).map_err(|e| anyhow::anyhow!("{e}"))?;
        sqlx::query("UPDATE endpoints SET headers = $2, headers_sealed = $3 WHERE id = $1 AND headers_sealed IS NULL")
            .bind(id)
            .bind(names_only(&map))
            .bind(sealed)
            .execute(db)
            .await?;
    }
    Ok(rows.len() as u64)
}

/// The audit target of an endpoint.
pub(crate) fn target(id: Uuid) -> Target<'static> {
    Target { kind: "endpoint", id: id.to_string() }
}

/// An endpoint as the audit log records it (header values masked, as the API shows them).
pub(crate) fn snapshot(ep: &Endpoint) -> Option<Value> {
    serde_json::to_value(ep).ok()
}

const COLUMNS: &str = "id, owner, url, description, event_types, enabled, disabled_at, disabled_reason, rate_limit, \
                       headers, retry_schedule, transformation, auth, failing_since, created_at, updated_at";

fn bad(msg: impl Into<String>) -> Error {
    Error::Invalid(msg.into())
}

/// A validated endpoint definition.
struct Valid {
    url: String,
    event_types: Vec<String>,
    description: String,
    rate_limit: Option<i32>,
    headers: BTreeMap<String, String>,
    retry_schedule: Option<String>,
    transformation: Option<String>,
    /// What may be shown of the authentication, and its secret.
    auth: Option<(Value, String)>,
}

fn valid_filter(f: &str) -> bool {
    if f == "*" {
        return true;
    }
    let name = f.strip_suffix(".*").unwrap_or(f);
    !name.is_empty()
        && name.len() <= 200
        && name.split('.').all(|seg| !seg.is_empty() && seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

/// Checks an endpoint's definition for an owner (`admin`: an admin's endpoint, which may
/// subscribe to internal event types). An event type the owner may not receive reads
/// as unknown.
async fn validate(db: &PgPool, guard: &Guard, owner: &str, admin: bool, e: NewEndpoint) -> Result<Valid> {
    let url: reqwest::Url =
        e.url.trim().parse().map_err(|err| bad(format!("url '{}' is not a valid URL: {err}", e.url.trim())))?;
    if url.as_str().len() > 2048 {
        return Err(bad("url must be at most 2048 characters"));
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!("url must use http or https, not '{}'", url.scheme())));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("url must not contain credentials; send them in a custom header instead"));
    }
    guard.check_url(&url).map_err(|r| Error::RefusedTarget(format!("url {}: {r}", url)))?;

    let mut event_types: Vec<String> = e.event_types.iter().map(|f| f.trim().to_owned()).collect();
    event_types.sort();
    event_types.dedup();
    if event_types.is_empty() || event_types.len() > 50 {
        return Err(bad(
            "event_types must list 1 to 50 filters, such as [\"user.registered\"], [\"user.*\"] or [\"*\"]",
        ));
    }
    if let Some(f) = event_types.iter().find(|f| !valid_filter(f)) {
        return Err(bad(format!(
            "event type filter '{f}' is not valid; use a name such as user.registered, a prefix such as user.*, or *"
        )));
    }
    let exact: Vec<&String> = event_types.iter().filter(|f| *f != "*" && !f.ends_with(".*")).collect();
    if !exact.is_empty() {
        let known: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM event_types WHERE name = ANY($1) AND herald_may_receive(name, $2, $3)",
        )
        .bind(&exact)
        .bind(owner)
        .bind(admin)
        .fetch_all(db)
        .await?;
        if let Some(unknown) = exact.iter().find(|f| !known.contains(f)) {
            return Err(Error::UnknownEventType((*unknown).clone()));
        }
    }
    if e.description.len() > 1000 {
        return Err(bad("description must be at most 1000 characters"));
    }
    if let Some(r) = e.rate_limit {
        if !(1..=10_000).contains(&r) {
            return Err(bad("rate_limit is requests per second, from 1 to 10000 (or null for no limit)"));
        }
    }
    check_headers(&e.headers)?;
    let retry_schedule = match e.retry_schedule.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => {
            RetrySchedule::parse(s).map_err(Error::InvalidRetrySchedule)?;
            Some(s.to_owned())
        }
    };
    let transformation = match e.transformation.filter(|s| !s.trim().is_empty()) {
        None => None,
        Some(script) => {
            transform::check_blocking(script.as_str().into(), transform::Limits::default())
                .await
                .map_err(|f| bad(format!("transformation: {f}")))?;
            Some(script)
        }
    };
    let auth = match e.auth {
        None => None,
        Some(EndpointAuth::Oauth2 { token_url, client_id, client_secret, scope }) => {
            let token: reqwest::Url = token_url
                .trim()
                .parse()
                .map_err(|err| bad(format!("auth.token_url '{}' is not a valid URL: {err}", token_url.trim())))?;
            if !matches!(token.scheme(), "http" | "https") || token.as_str().len() > 2048 {
                return Err(bad("auth.token_url must be an http or https URL of at most 2048 characters"));
            }
            if !token.username().is_empty() || token.password().is_some() {
                return Err(bad(
                    "auth.token_url must not contain credentials; give them as client_id and client_secret",
                ));
            }
            guard.check_url(&token).map_err(|r| Error::RefusedTarget(format!("auth.token_url {token}: {r}")))?;
            let printable = |v: &str| !v.is_empty() && v.len() <= 1024 && v.chars().all(|c| (' '..='~').contains(&c));
            if !printable(&client_id) || client_id.contains(':') {
                return Err(bad("auth.client_id must be 1 to 1024 printable ASCII characters, without ':'"));
            }
            if !printable(&client_secret) {
                return Err(bad("auth.client_secret must be 1 to 1024 printable ASCII characters"));
            }
            let scope = scope.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
            if scope.as_deref().is_some_and(|s| !printable(s)) {
                return Err(bad("auth.scope must be printable ASCII, at most 1024 characters"));
            }
            let shown =
                json!({"type": "oauth2", "token_url": token.to_string(), "client_id": client_id, "scope": scope});
            Some((shown, client_secret))
        }
    };
    Ok(Valid {
        url: url.to_string(),
        event_types,
        description: e.description,
        rate_limit: e.rate_limit,
        headers: e.headers,
        retry_schedule,
        transformation,
        auth,
    })
}

/// Checks custom headers: an endpoint's, or those a transformation returns.
pub fn check_headers(headers: &BTreeMap<String, String>) -> Result<()> {
    if headers.len() > MAX_HEADERS {
        return Err(bad(format!("at most {MAX_HEADERS} custom headers")));
    }
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(bad(format!("'{name}' is not a valid header name")));
        }
        if lower.starts_with("webhook-") || RESERVED_HEADERS.contains(&lower.as_str()) {
            return Err(bad(format!("header '{name}' is set by Herald and cannot be customised")));
        }
        if reqwest::header::HeaderValue::from_str(value).is_err() || value.len() > 4096 {
            return Err(bad(format!("the value of header '{name}' is not a valid header value")));
        }
    }
    Ok(())
}

/// Creates an endpoint owned by the caller, with a fresh signing secret. Returns the
/// endpoint and the secret (the only time it is part of a response besides `GET .../secret`).
/// An owner may have at most `max_per_owner` endpoints.
pub async fn create(
    db: &PgPool,
    key: &SecretKey,
    guard: &Guard,
    who: &Principal,
    e: NewEndpoint,
    max_per_owner: i64,
) -> Result<(Endpoint, String)> {
    who.require(Scope::EndpointsWrite)?;
    let enabled = e.enabled;
    let v = validate(db, guard, &who.owner, who.is_admin(), e).await?;
    let id = Uuid::now_v7();
    let secret = secrets::generate_secret();
    let mut tx = db.begin().await?;
    // One owner's creations queue here, so the count below cannot be raced past.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('endpoints:' || $1, 0))")
        .bind(&who.owner)
        .execute(&mut *tx)
        .await?;
    let have: i64 = sqlx::query_scalar("SELECT count(*) FROM endpoints WHERE owner = $1")
        .bind(&who.owner)
        .fetch_one(&mut *tx)
        .await?;
    if have >= max_per_owner {
        return Err(Error::LimitExceeded(format!(
            "an owner may have at most {max_per_owner} endpoints (HERALD_MAX_ENDPOINTS_PER_OWNER); delete one first"
        )));
    }
    let ep: Endpoint = sqlx::query_as(&format!(
        "INSERT INTO endpoints (id, owner, url, description, event_types, enabled, rate_limit, headers, retry_schedule, admin,
                                headers_sealed, created_by, transformation, auth, auth_sealed)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(&who.owner)
    .bind(&v.url)
    .bind(&v.description)
    .bind(&v.event_types)
    .bind(enabled)
    .bind(v.rate_limit)
    .bind(names_only(&v.headers))
    .bind(&v.retry_schedule)
    .bind(who.is_admin())
    .bind(seal_headers(key, id, &v.headers)?)
    .bind(creator(who))
    .bind(&v.transformation)
    .bind(v.auth.as_ref().map(|a| &a.0))
    .bind(v.auth.as_ref().map(|a| key.seal_auth(id, &a.1)))
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO endpoint_secrets (endpoint_id, generation, sealed) VALUES ($1, 1, $2)")
        .bind(id)
        .bind(key.seal(id, &secret))
        .execute(&mut *tx)
        .await?;
    audit::record(&mut tx, &who.actor(), "endpoint.created", target(id), None, snapshot(&ep)).await?;
    tx.commit().await?;
    crate::cache::changed(crate::cache::ENDPOINTS);
    Ok((ep, secret))
}

pub async fn list(db: &PgPool, who: &Principal, limit: i64, after: Option<Uuid>) -> Result<Vec<Endpoint>> {
    who.require(Scope::EndpointsRead)?;
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM endpoints WHERE herald_manages(owner, admin, $1, $2) AND ($3::uuid IS NULL OR id > $3)
         ORDER BY id LIMIT $4"
    ))
    .bind_caller(who)
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await?)
}

pub async fn get(db: &PgPool, who: &Principal, id: Uuid) -> Result<Endpoint> {
    who.require(Scope::EndpointsRead)?;
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM endpoints WHERE id = $1 AND herald_manages(owner, admin, $2, $3)"))
        .bind(id)
        .bind_caller(who)
        .fetch_optional(db)
        .await?
        .ok_or(Error::NotFound)
}

/// Changes an endpoint. The row is locked from read to write, so concurrent PATCHes
/// apply one after the other and none silently undoes another's change.
pub async fn update(
    db: &PgPool,
    key: &SecretKey,
    guard: &Guard,
    who: &Principal,
    id: Uuid,
    p: EndpointPatch,
) -> Result<Endpoint> {
    #[derive(sqlx::FromRow)]
    struct Locked {
        #[sqlx(flatten)]
        cur: Endpoint,
        headers_sealed: Option<Vec<u8>>,
        auth_sealed: Option<Vec<u8>>,
        admin: bool,
    }
    who.require(Scope::EndpointsWrite)?;
    let mut tx = db.begin().await?;
    let Locked { cur, headers_sealed, auth_sealed, admin } = sqlx::query_as(&format!(
        "SELECT {COLUMNS}, headers_sealed, auth_sealed, admin FROM endpoints WHERE id = $1 AND herald_manages(owner, admin, $2, $3) FOR NO KEY UPDATE"
    ))
    .bind(id)
    .bind_caller(who)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(Error::NotFound)?;
    let before = snapshot(&cur);
    let current = open_headers(key, id, headers_sealed.as_deref(), &cur.headers).map_err(|m| anyhow::anyhow!(m))?;
    // A value sent back as the mask keeps the stored one.
    let headers = match p.headers {
        None => current,
        Some(new) => new
            .into_iter()
            .map(|(k, v)| {
                let kept = if v == MASK { current.get(&k).cloned().unwrap_or(v) } else { v };
                (k, kept)
            })
            .collect(),
    };
    let owner = cur.owner.clone();
    // The authentication as stored (its secret opened), for absent fields and a masked secret.
    let stored_auth = match (&cur.auth, &auth_sealed) {
        (Some(shown), Some(sealed)) => {
            let secret = key.open_auth(id, sealed).map_err(|m| anyhow::anyhow!(m))?;
            let mut v = shown.clone();
            v["client_secret"] = Value::String(secret);
            serde_json::from_value::<EndpointAuth>(v).ok()
        }
        _ => None,
    };
    let auth = match p.auth {
        None => stored_auth,
        Some(None) => None,
        Some(Some(EndpointAuth::Oauth2 { token_url, client_id, client_secret, scope })) => {
            let kept = match (&stored_auth, client_secret == MASK) {
                (Some(EndpointAuth::Oauth2 { client_secret: old, .. }), true) => old.clone(),
                _ => client_secret,
            };
            Some(EndpointAuth::Oauth2 { token_url, client_id, client_secret: kept, scope })
        }
    };
    let merged = NewEndpoint {
        url: p.url.unwrap_or(cur.url),
        event_types: p.event_types.unwrap_or(cur.event_types),
        description: p.description.unwrap_or(cur.description),
        rate_limit: p.rate_limit.unwrap_or(cur.rate_limit),
        headers,
        retry_schedule: p.retry_schedule.unwrap_or(cur.retry_schedule),
        enabled: cur.enabled,
        transformation: p.transformation.unwrap_or(cur.transformation),
        auth,
    };
    let v = validate(db, guard, &owner, admin, merged).await?;
    let ep = sqlx::query_as(&format!(
        "UPDATE endpoints SET url = $2, event_types = $3, description = $4, rate_limit = $5, headers = $6,
                retry_schedule = $7, headers_sealed = $8, transformation = $9, auth = $10, auth_sealed = $11,
                updated_at = now()
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(&v.url)
    .bind(&v.event_types)
    .bind(&v.description)
    .bind(v.rate_limit)
    .bind(names_only(&v.headers))
    .bind(&v.retry_schedule)
    .bind(seal_headers(key, id, &v.headers)?)
    .bind(&v.transformation)
    .bind(v.auth.as_ref().map(|a| &a.0))
    .bind(v.auth.as_ref().map(|a| key.seal_auth(id, &a.1)))
    .fetch_one(&mut *tx)
    .await?;
    audit::record(&mut tx, &who.actor(), "endpoint.updated", target(id), before, snapshot(&ep)).await?;
    tx.commit().await?;
    crate::cache::changed(crate::cache::ENDPOINTS);
    Ok(ep)
}

/// An endpoint's custom headers with their values (a write-level read, like the secret).
pub async fn headers(db: &PgPool, key: &SecretKey, who: &Principal, id: Uuid) -> Result<BTreeMap<String, String>> {
    who.require(Scope::EndpointsWrite)?;
    let (legacy, sealed): (Value, Option<Vec<u8>>) = sqlx::query_as(
        "SELECT headers, headers_sealed FROM endpoints WHERE id = $1 AND herald_manages(owner, admin, $2, $3)",
    )
    .bind(id)
    .bind_caller(who)
    .fetch_optional(db)
    .await?
    .ok_or(Error::NotFound)?;
    let headers = open_headers(key, id, sealed.as_deref(), &legacy).map_err(|m| anyhow::anyhow!(m))?;
    audit::record_alone(db, &who.actor(), "endpoint.headers.revealed", target(id), None).await?;
    Ok(headers)
}

pub async fn delete(db: &PgPool, who: &Principal, id: Uuid) -> Result<()> {
    who.require(Scope::EndpointsWrite)?;
    let mut tx = db.begin().await?;
    let gone: Endpoint = sqlx::query_as(&format!(
        "DELETE FROM endpoints WHERE id = $1 AND herald_manages(owner, admin, $2, $3) RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind_caller(who)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(Error::NotFound)?;
    audit::record(&mut tx, &who.actor(), "endpoint.deleted", target(id), snapshot(&gone), None).await?;
    tx.commit().await?;
    crate::cache::changed(crate::cache::ENDPOINTS);
    Ok(())
}

/// Enables (and resets the auto-disable clock) or disables an endpoint on request.
pub async fn set_enabled(db: &PgPool, who: &Principal, id: Uuid, enabled: bool) -> Result<Endpoint> {
    who.require(Scope::EndpointsWrite)?;
    let mut tx = db.begin().await?;
    let ep: Endpoint = sqlx::query_as(&format!(
        "UPDATE endpoints SET enabled = $4,
                disabled_at = CASE WHEN $4 THEN NULL WHEN enabled THEN now() ELSE disabled_at END,
                disabled_reason = CASE WHEN $4 THEN NULL WHEN enabled THEN 'disabled on request' ELSE disabled_reason END,
                failing_since = NULL, updated_at = now()
         WHERE id = $1 AND herald_manages(owner, admin, $2, $3) RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind_caller(who)
    .bind(enabled)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(Error::NotFound)?;
    let action = if enabled { "endpoint.enabled" } else { "endpoint.disabled" };
    audit::record(&mut tx, &who.actor(), action, target(id), None, snapshot(&ep)).await?;
    tx.commit().await?;
    crate::cache::changed(crate::cache::ENDPOINTS);
    Ok(ep)
}

/// Who made an endpoint, as `endpoints.created_by` keeps it.
fn creator(who: &Principal) -> String {
    format!("{}:{}", who.kind.as_str(), who.id)
}

/// Takes admin reach from the endpoints `creator` (an actor kind and id) made as an
/// admin, when that creator is no longer one: a person who logs in without the admin
/// role, an admin key revoked. The endpoints stay their owner's, managed by that
/// owner from now on, and receive what any of the owner's endpoints may.
pub async fn revoke_admin_reach(conn: &mut sqlx::PgConnection, kind: crate::audit::ActorKind, id: &str) -> Result<u64> {
    let creator = format!("{}:{id}", kind.as_str());
    Ok(sqlx::query("UPDATE endpoints SET admin = false, updated_at = now() WHERE created_by = $1 AND admin")
        .bind(creator)
        .execute(conn)
        .await?
        .rows_affected())
}
