//! The catalog admins manage: event types (schema, sample payload, routing) and email
//! templates (immutable versions, publish and roll back, preview). Every change is
//! validated here, audited in its own transaction, and the same whether it comes from
//! the API or the console.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::access::{BindCaller, Principal};
use crate::audit::{self, Target};
use crate::error::{Error, FieldError, Result};
use crate::model::lookup;
use crate::templates::{render_email, EmailTemplate, RenderedEmail};

/// The catalog is managed and read whole by admins only (owners read what they may
/// receive, `receivable_event_types`).
fn admin_only(who: &Principal) -> Result<()> {
    who.require_admin()
}

/// An event type as the catalog shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct EventType {
    pub name: String,
    pub description: String,
    pub payload_schema: Option<Value>,
    pub sample_payload: Option<Value>,
    pub email_template: Option<String>,
    pub recipient_path: Option<String>,
    /// Who may receive its webhooks: `internal` (admins), `public` (every owner) or
    /// `granted` (the owners in `grants`).
    pub visibility: String,
    /// The owners (teams or `user:<subject>`) granted it, when `granted`.
    pub grants: Vec<String>,
    pub operational: bool,
    /// The category a recipient can unsubscribe from (`general` unless set).
    pub category: String,
    /// Transactional mail (password resets, security notices) is never unsubscribable
    /// and carries no `List-Unsubscribe`.
    pub transactional: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const EVENT_COLUMNS: &str = "name, description, payload_schema, sample_payload, email_template, recipient_path, \
     visibility, ARRAY(SELECT g.grantee FROM event_type_grants g WHERE g.event_type = event_types.name \
     ORDER BY g.grantee) AS grants, operational, category, transactional, created_at, updated_at";

/// `POST /api/v1/event-types`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEventType {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub payload_schema: Option<Value>,
    #[serde(default)]
    pub sample_payload: Option<Value>,
    #[serde(default)]
    pub email_template: Option<String>,
    #[serde(default)]
    pub recipient_path: Option<String>,
    /// `internal`, `public` (the default) or `granted`.
    #[serde(default)]
    pub visibility: Option<String>,
    /// With `granted`: the owners who may receive it.
    #[serde(default)]
    pub grants: Vec<String>,
    /// The unsubscribe category (lower-case letters, digits, `_`, `.`, `-`; default
    /// `general`).
    #[serde(default)]
    pub category: Option<String>,
    /// Never unsubscribable (default `false`).
    #[serde(default)]
    pub transactional: bool,
}

/// `PATCH /api/v1/event-types/{name}`: absent fields stay; `null` clears.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventTypePatch {
    pub description: Option<String>,
    #[serde(default, deserialize_with = "crate::model::nullable")]
    pub payload_schema: Option<Option<Value>>,
    #[serde(default, deserialize_with = "crate::model::nullable")]
    pub sample_payload: Option<Option<Value>>,
    #[serde(default, deserialize_with = "crate::model::nullable")]
    pub email_template: Option<Option<String>>,
    #[serde(default, deserialize_with = "crate::model::nullable")]
    pub recipient_path: Option<Option<String>>,
    pub visibility: Option<String>,
    /// Replaces the list.
    pub grants: Option<Vec<String>>,
    pub category: Option<String>,
    pub transactional: Option<bool>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name.split('.').all(|seg| !seg.is_empty() && seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

/// Checks an event type's definition: the schema is a JSON Schema, the sample matches
/// it, the template exists and has a published version, and the recipient path leads
/// to an address in the sample.
async fn check(db: &PgPool, e: &NewEventType) -> Result<()> {
    if e.description.len() > 2000 {
        return Err(Error::Invalid("description must be at most 2000 characters".into()));
    }
    let visibility = e.visibility.as_deref().unwrap_or("public");
    if !["internal", "public", "granted"].contains(&visibility) {
        return Err(Error::Invalid(format!("visibility '{visibility}' is not one of internal, public, granted")));
    }
    if let Some(c) = &e.category {
        let ok = !c.is_empty()
            && c.len() <= 64
            && c.starts_with(|x: char| x.is_ascii_lowercase() || x.is_ascii_digit())
            && c.chars().all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || "_.-".contains(x));
        if !ok {
            return Err(Error::Invalid(format!(
                "category '{c}' must be 1 to 64 lower-case letters, digits, '_', '.' or '-', such as product-news"
            )));
        }
    }
    if !e.grants.is_empty() && visibility != "granted" {
        return Err(Error::Invalid("grants need visibility 'granted'".into()));
    }
    if e.grants.len() > 1000 {
        return Err(Error::Invalid("grants may list at most 1000 owners".into()));
    }
    if let Some(g) = e.grants.iter().find(|g| g.trim().is_empty() || g.len() > 200 || g.contains('\0')) {
        return Err(Error::Invalid(format!("grants: '{}' is not an owner (1 to 200 characters)", g.replace('\0', ""))));
    }
    let validator = match &e.payload_schema {
        None => None,
        Some(schema) => Some(
            jsonschema::validator_for(schema)
                .map_err(|err| Error::Invalid(format!("payload_schema is not a valid JSON Schema: {err}")))?,
        ),
    };
    if let (Some(v), Some(sample)) = (&validator, &e.sample_payload) {
        let errors: Vec<FieldError> = v
            .iter_errors(sample)
            .take(20)
            .map(|err| FieldError {
                pointer: format!("/sample_payload{}", err.instance_path),
                message: err.to_string(),
            })
            .collect();
        if !errors.is_empty() {
            return Err(Error::SchemaViolation { event_type: e.name.clone(), errors });
        }
    }
    if let Some(key) = &e.email_template {
        let published: Option<Option<i32>> =
            sqlx::query_scalar("SELECT published_version FROM templates WHERE key = $1")
                .bind(key)
                .fetch_optional(db)
                .await?;
        match published {
            None => return Err(Error::Invalid(format!("email_template '{key}' does not exist"))),
            Some(None) => {
                return Err(Error::Invalid(format!(
                    "email_template '{key}' has no published version; publish one first"
                )))
            }
            Some(Some(_)) => {}
        }
        if e.recipient_path.is_none() {
            return Err(Error::Invalid("an event type that sends email needs recipient_path".into()));
        }
    }
    if let Some(path) = &e.recipient_path {
        if path.is_empty() || path.len() > 200 || !valid_name(path) {
            return Err(Error::Invalid(format!("recipient_path '{path}' is not a dotted path such as user.email")));
        }
        if let Some(sample) = &e.sample_payload {
            match lookup(sample, path) {
                Some(Value::String(_)) | Some(Value::Array(_)) => {}
                _ => {
                    return Err(Error::Invalid(format!(
                        "recipient_path '{path}' does not lead to an address in sample_payload"
                    )))
                }
            }
        }
    }
    Ok(())
}

/// Replaces an event type's grants; returns them sorted.
async fn set_grants(conn: &mut sqlx::PgConnection, name: &str, grants: &[String]) -> Result<Vec<String>> {
    let mut grants = grants.iter().map(|g| crate::access::owner_name(g)).collect::<Result<Vec<String>>>()?;
    grants.sort();
    grants.dedup();
    sqlx::query("DELETE FROM event_type_grants WHERE event_type = $1").bind(name).execute(&mut *conn).await?;
    sqlx::query("INSERT INTO event_type_grants (event_type, grantee) SELECT $1, unnest($2::text[])")
        .bind(name)
        .bind(&grants)
        .execute(&mut *conn)
        .await?;
    Ok(grants)
}

pub async fn list_event_types(db: &PgPool, who: &Principal) -> Result<Vec<EventType>> {
    admin_only(who)?;
    Ok(sqlx::query_as(&format!("SELECT {EVENT_COLUMNS} FROM event_types ORDER BY name")).fetch_all(db).await?)
}

/// The event catalog as the caller sees it: every type for an admin; for an owner, the
/// types they may receive (and Herald's own, which reach only their owner), without
/// the list of other owners granted them.
pub async fn receivable_event_types(db: &PgPool, who: &Principal) -> Result<Vec<EventType>> {
    let mut types: Vec<EventType> = sqlx::query_as(&format!(
        "SELECT {EVENT_COLUMNS} FROM event_types WHERE $2 OR herald_may_receive(name, $1, false)
         ORDER BY name"
    ))
    .bind_caller(who)
    .fetch_all(db)
    .await?;
    if !who.is_admin() {
        for t in &mut types {
            t.grants.clear();
        }
    }
    Ok(types)
}

pub async fn get_event_type(db: &PgPool, who: &Principal, name: &str) -> Result<EventType> {
    admin_only(who)?;
    sqlx::query_as(&format!("SELECT {EVENT_COLUMNS} FROM event_types WHERE name = $1"))
        .bind(name)
        .fetch_optional(db)
        .await?
        .ok_or(Error::NotFound)
}

fn snapshot<T: Serialize>(v: &T) -> Option<Value> {
    serde_json::to_value(v).ok()
}

pub async fn create_event_type(db: &PgPool, who: &Principal, e: NewEventType) -> Result<EventType> {
    admin_only(who)?;
    if !valid_name(&e.name) {
        return Err(Error::Invalid(format!(
            "name '{}' is not an event type name such as user.registered (letters, digits, _ and dots)",
            e.name
        )));
    }
    check(db, &e).await?;
    let mut tx = db.begin().await?;
    let created: Option<EventType> = sqlx::query_as(&format!(
        "INSERT INTO event_types (name, description, payload_schema, sample_payload, email_template, recipient_path,
                                  visibility, category, transactional)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (name) DO NOTHING RETURNING {EVENT_COLUMNS}"
    ))
    .bind(&e.name)
    .bind(&e.description)
    .bind(&e.payload_schema)
    .bind(&e.sample_payload)
    .bind(&e.email_template)
    .bind(&e.recipient_path)
    .bind(e.visibility.as_deref().unwrap_or("public"))
    .bind(e.category.as_deref().unwrap_or("general"))
    .bind(e.transactional)
    .fetch_optional(&mut *tx)
    .await?;
    let mut created = created.ok_or_else(|| Error::Conflict(format!("event type '{}' already exists", e.name)))?;
    created.grants = set_grants(&mut tx, &e.name, &e.grants).await?;
    let t = Target { kind: "event_type", id: created.name.clone() };
    audit::record(&mut tx, &who.actor(), "event_type.created", t, None, snapshot(&created)).await?;
    tx.commit().await?;
    crate::cache::changed(crate::cache::CATALOG);
    Ok(created)
}

pub async fn update_event_type(db: &PgPool, who: &Principal, name: &str, p: EventTypePatch) -> Result<EventType> {
    admin_only(who)?;
    let mut tx = db.begin().await?;
    let cur: EventType =
        sqlx::query_as(&format!("SELECT {EVENT_COLUMNS} FROM event_types WHERE name = $1 FOR NO KEY UPDATE"))
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(Error::NotFound)?;
    // Herald's own event types: only who may receive them can change.
    let routing_only = p.description.is_none()
        && p.payload_schema.is_none()
        && p.sample_payload.is_none()
        && p.email_template.is_none()
        && p.recipient_path.is_none()
        && p.category.is_none()
        && p.transactional.is_none();
    if cur.operational && !routing_only {
        return Err(Error::Conflict(format!(
            "event type '{name}' is Herald's own: only its visibility and grants can be changed"
        )));
    }
    let merged = NewEventType {
        name: cur.name.clone(),
        description: p.description.unwrap_or(cur.description.clone()),
        payload_schema: p.payload_schema.unwrap_or(cur.payload_schema.clone()),
        sample_payload: p.sample_payload.unwrap_or(cur.sample_payload.clone()),
        email_template: p.email_template.unwrap_or(cur.email_template.clone()),
        recipient_path: p.recipient_path.unwrap_or(cur.recipient_path.clone()),
        visibility: Some(p.visibility.unwrap_or(cur.visibility.clone())),
        grants: p.grants.unwrap_or(cur.grants.clone()),
        category: Some(p.category.unwrap_or(cur.category.clone())),
        transactional: p.transactional.unwrap_or(cur.transactional),
    };
    check(db, &merged).await?;
    let mut updated: EventType = sqlx::query_as(&format!(
        "UPDATE event_types SET description = $2, payload_schema = $3, sample_payload = $4, email_template = $5,
                recipient_path = $6, visibility = $7, category = $8, transactional = $9, updated_at = clock_timestamp()
         WHERE name = $1 RETURNING {EVENT_COLUMNS}"
    ))
    .bind(name)
    .bind(&merged.description)
    .bind(&merged.payload_schema)
    .bind(&merged.sample_payload)
    .bind(&merged.email_template)
    .bind(&merged.recipient_path)
    .bind(merged.visibility.as_deref().unwrap_or("public"))
    .bind(merged.category.as_deref().unwrap_or("general"))
    .bind(merged.transactional)
    .fetch_one(&mut *tx)
    .await?;
    updated.grants = set_grants(&mut tx, name, &merged.grants).await?;
    let t = Target { kind: "event_type", id: name.to_owned() };
    audit::record(&mut tx, &who.actor(), "event_type.updated", t, snapshot(&cur), snapshot(&updated)).await?;
    tx.commit().await?;
    crate::cache::changed(crate::cache::CATALOG);
    Ok(updated)
}

/// A template as the catalog lists it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Template {
    pub key: String,
    pub channel: String,
    pub published_version: Option<i32>,
    pub latest_version: i32,
    pub created_at: DateTime<Utc>,
}

/// One immutable version.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Version {
    pub version: i32,
    pub subject: String,
    pub html_body: String,
    pub text_body: String,
    pub track_opens: bool,
    pub track_clicks: bool,
    pub created_at: DateTime<Utc>,
}

/// The content of a new version.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Content {
    pub subject: String,
    pub html_body: String,
    pub text_body: String,
    /// Add a tracking pixel to the HTML (default false).
    #[serde(default)]
    pub track_opens: bool,
    /// Rewrite `http(s)` links through Herald's click tracking (default false).
    #[serde(default)]
    pub track_clicks: bool,
}

/// `POST /api/v1/templates`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTemplate {
    pub key: String,
    pub subject: String,
    pub html_body: String,
    pub text_body: String,
    #[serde(default)]
    pub track_opens: bool,
    #[serde(default)]
    pub track_clicks: bool,
}

const TEMPLATE_SELECT: &str = "SELECT t.key, t.channel, t.published_version,
        (SELECT coalesce(max(version), 0) FROM template_versions v WHERE v.template_key = t.key) AS latest_version,
        t.created_at
 FROM templates t";

/// Checks that every part of a template compiles (syntax only; variables are checked
/// when rendering against a payload).
fn compile(c: &Content) -> Result<()> {
    for (part, source) in [("subject", &c.subject), ("html_body", &c.html_body), ("text_body", &c.text_body)] {
        if source.len() > 256 * 1024 {
            return Err(Error::Invalid(format!("{part} must be at most 256 KiB")));
        }
        let mut env = minijinja::Environment::new();
        env.add_template_owned("t", source.clone()).map_err(|e| Error::TemplateRender(format!("{part}: {e}")))?;
    }
    if c.subject.trim().is_empty() {
        return Err(Error::Invalid("subject must not be empty".into()));
    }
    Ok(())
}

pub async fn list_templates(db: &PgPool, who: &Principal) -> Result<Vec<Template>> {
    admin_only(who)?;
    Ok(sqlx::query_as(&format!("{TEMPLATE_SELECT} ORDER BY t.key")).fetch_all(db).await?)
}

pub async fn get_template(db: &PgPool, who: &Principal, key: &str) -> Result<(Template, Vec<Version>)> {
    admin_only(who)?;
    let t: Template = sqlx::query_as(&format!("{TEMPLATE_SELECT} WHERE t.key = $1"))
        .bind(key)
        .fetch_optional(db)
        .await?
        .ok_or(Error::NotFound)?;
    let versions = sqlx::query_as(
        "SELECT version, subject, html_body, text_body, track_opens, track_clicks, created_at FROM template_versions
         WHERE template_key = $1 ORDER BY version",
    )
    .bind(key)
    .fetch_all(db)
    .await?;
    Ok((t, versions))
}

pub async fn create_template(db: &PgPool, who: &Principal, n: NewTemplate) -> Result<Template> {
    admin_only(who)?;
    let valid_key = !n.key.is_empty()
        && n.key.len() <= 128
        && n.key.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && n.key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c));
    if !valid_key {
        return Err(Error::Invalid(format!(
            "key '{}' must be lowercase letters, digits, '.', '_' or '-' (at most 128)",
            n.key
        )));
    }
    let content = Content {
        subject: n.subject,
        html_body: n.html_body,
        text_body: n.text_body,
        track_opens: n.track_opens,
        track_clicks: n.track_clicks,
    };
    compile(&content)?;
    let mut tx = db.begin().await?;
    let fresh = sqlx::query("INSERT INTO templates (key) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(&n.key)
        .execute(&mut *tx)
        .await?
        .rows_affected()
        == 1;
    if !fresh {
        return Err(Error::Conflict(format!("template '{}' already exists", n.key)));
    }
    insert_version(&mut tx, &n.key, 1, &content).await?;
    let t = Target { kind: "template", id: n.key.clone() };
    audit::record(&mut tx, &who.actor(), "template.created", t, None, Some(json!({ "version": 1 }))).await?;
    tx.commit().await?;
    crate::cache::changed(crate::cache::CATALOG);
    Ok(get_template(db, who, &n.key).await?.0)
}

async fn insert_version(conn: &mut sqlx::PgConnection, key: &str, version: i32, c: &Content) -> Result<()> {
    sqlx::query(
        "INSERT INTO template_versions (template_key, version, subject, html_body, text_body, track_opens, track_clicks)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(key)
    .bind(version)
    .bind(&c.subject)
    .bind(&c.html_body)
    .bind(&c.text_body)
    .bind(c.track_opens)
    .bind(c.track_clicks)
    .execute(conn)
    .await?;
    Ok(())
}

/// Adds a version (never changing an existing one). Returns its number.
pub async fn add_version(db: &PgPool, who: &Principal, key: &str, c: Content) -> Result<i32> {
    admin_only(who)?;
    compile(&c)?;
    let mut tx = db.begin().await?;
    let locked: Option<String> = sqlx::query_scalar("SELECT key FROM templates WHERE key = $1 FOR NO KEY UPDATE")
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
    if locked.is_none() {
        return Err(Error::NotFound);
    }
    let next: i32 =
        sqlx::query_scalar("SELECT coalesce(max(version), 0) + 1 FROM template_versions WHERE template_key = $1")
            .bind(key)
            .fetch_one(&mut *tx)
            .await?;
    insert_version(&mut tx, key, next, &c).await?;
    let t = Target { kind: "template", id: key.to_owned() };
    audit::record(&mut tx, &who.actor(), "template.version_added", t, None, Some(json!({ "version": next }))).await?;
    tx.commit().await?;
    crate::cache::changed(crate::cache::CATALOG);
    Ok(next)
}

/// Publishes a version (an older one rolls back); the processor renders the published one.
pub async fn publish(db: &PgPool, who: &Principal, key: &str, version: i32) -> Result<Template> {
    admin_only(who)?;
    let mut tx = db.begin().await?;
    let before: Option<Option<i32>> =
        sqlx::query_scalar("SELECT published_version FROM templates WHERE key = $1 FOR NO KEY UPDATE")
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
    let Some(before) = before else { return Err(Error::NotFound) };
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM template_versions WHERE template_key = $1 AND version = $2)")
            .bind(key)
            .bind(version)
            .fetch_one(&mut *tx)
            .await?;
    if !exists {
        return Err(Error::Invalid(format!("template '{key}' has no version {version}")));
    }
    sqlx::query("UPDATE templates SET published_version = $2 WHERE key = $1")
        .bind(key)
        .bind(version)
        .execute(&mut *tx)
        .await?;
    // Event types routing to it render the new version from now on (their cached
    // schemas are keyed by updated_at, which this does not need to touch).
    let t = Target { kind: "template", id: key.to_owned() };
    let (b, a) = (json!({ "published_version": before }), json!({ "published_version": version }));
    audit::record(&mut tx, &who.actor(), "template.published", t, Some(b), Some(a)).await?;
    tx.commit().await?;
    crate::cache::changed(crate::cache::CATALOG);
    Ok(get_template(db, who, key).await?.0)
}

/// What a preview renders: a stored version or unsaved content, against a payload or
/// the sample of an event type.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewRequest {
    #[serde(default)]
    pub version: Option<i32>,
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default)]
    pub payload: Option<Value>,
    #[serde(default)]
    pub event_type: Option<String>,
}

/// Renders a template without sending anything. An undefined variable or a syntax error
/// is a `TemplateRender` error naming the part and line.
pub async fn preview(db: &PgPool, who: &Principal, key: &str, req: PreviewRequest) -> Result<RenderedEmail> {
    admin_only(who)?;
    let (template, versions) = get_template(db, who, key).await?;
    let (version, content) = match (req.content, req.version) {
        (Some(c), _) => (0, c),
        (None, v) => {
            let wanted = v.or(template.published_version).unwrap_or(template.latest_version);
            let found = versions
                .into_iter()
                .find(|x| x.version == wanted)
                .ok_or_else(|| Error::Invalid(format!("template '{key}' has no version {wanted}")))?;
            (
                found.version,
                Content {
                    subject: found.subject,
                    html_body: found.html_body,
                    text_body: found.text_body,
                    track_opens: found.track_opens,
                    track_clicks: found.track_clicks,
                },
            )
        }
    };
    let payload = match (req.payload, req.event_type) {
        (Some(p), _) => p,
        (None, Some(et)) => get_event_type(db, who, &et).await?.sample_payload.unwrap_or(json!({})),
        (None, None) => {
            // The sample of an event type that routes to this template, if any.
            sqlx::query_scalar::<_, Option<Value>>(
                "SELECT sample_payload FROM event_types WHERE email_template = $1 ORDER BY name LIMIT 1",
            )
            .bind(key)
            .fetch_optional(db)
            .await?
            .flatten()
            .unwrap_or(json!({}))
        }
    };
    let t = EmailTemplate {
        key: key.to_owned(),
        version,
        subject: content.subject,
        html_body: content.html_body,
        text_body: content.text_body,
        track_opens: content.track_opens,
        track_clicks: content.track_clicks,
    };
    render_email(&t, &payload).map_err(Error::TemplateRender)
}

/// One line of a diff between two versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DiffLine {
    /// The part: subject, html_body, text_body or tracking.
    pub part: &'static str,
    /// `+` added in the newer, `-` removed from the older, ` ` in both.
    pub tag: char,
    pub text: String,
}

/// The line diff between two versions of a template, part by part.
pub async fn diff(db: &PgPool, who: &Principal, key: &str, from: i32, to: i32) -> Result<Vec<DiffLine>> {
    admin_only(who)?;
    let (_, versions) = get_template(db, who, key).await?;
    let find = |v: i32| {
        versions
            .iter()
            .find(|x| x.version == v)
            .ok_or_else(|| Error::Invalid(format!("template '{key}' has no version {v}")))
    };
    let (a, b) = (find(from)?, find(to)?);
    let mut out = Vec::new();
    for (part, old, new) in [
        ("subject", &a.subject, &b.subject),
        ("html_body", &a.html_body, &b.html_body),
        ("text_body", &a.text_body, &b.text_body),
    ] {
        out.extend(crate::model::line_diff(old, new).into_iter().map(|(tag, text)| DiffLine { part, tag, text }));
    }
    let tracking = |v: &Version| format!("opens: {}, clicks: {}", v.track_opens, v.track_clicks);
    out.extend(crate::model::line_diff(&tracking(a), &tracking(b)).into_iter().map(|(tag, text)| DiffLine {
        part: "tracking",
        tag,
        text,
    }));
    Ok(out)
}

/// `POST /api/v1/templates/{key}/test`: what to send where.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestSend {
    /// The address to send to.
    pub to: String,
    /// The version (default: published, else latest).
    #[serde(default)]
    pub version: Option<i32>,
    /// Render with this event type's sample (default: one routed to the template).
    #[serde(default)]
    pub event_type: Option<String>,
}

/// Sends one version of a template, rendered against a sample, to one address, as a
/// `template.test` notification (email only; recorded like any other, with its
/// attempts). Audited.
pub async fn test_send(
    db: &PgPool,
    processor: &crate::notifications::accept::Processor,
    who: &Principal,
    key: &str,
    t: TestSend,
) -> Result<crate::notifications::accept::Accepted> {
    use crate::notifications::accept::{self, Submission};
    admin_only(who)?;
    let req = PreviewRequest { version: t.version, content: None, payload: None, event_type: t.event_type };
    let rendered = preview(db, who, key, req).await?;
    let prepared = processor
        .prepare(Submission {
            event_type: "template.test".into(),
            payload: json!({ "template": key, "version": rendered.version }),
            recipients: None,
            owner: who.owner.clone(),
            key_id: who.key_id,
            operational_owner: Some(who.owner.clone()),
            owners: None,
        })
        .await?
        .test_email(serde_json::to_value(&rendered)?, &t.to)?;
    let mut tx = db.begin().await?;
    let accepted = accept::insert(&mut tx, prepared).await?;
    let after = json!({ "version": rendered.version, "notification_id": accepted.id });
    let target = Target { kind: "template", id: key.to_owned() };
    audit::record(&mut tx, &who.actor(), "template.test_sent", target, None, Some(after)).await?;
    tx.commit().await?;
    Ok(accepted)
}
