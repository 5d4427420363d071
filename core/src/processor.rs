//! The message processor: validates a notification, renders it, routes it to channels,
//! and persists the notification, its deliveries and their bus messages in one
//! transaction. Nothing is written unless everything checks out.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::apikeys::Principal;
use crate::bus::{BusMessage, Topic};
use crate::problem::{ApiError, FieldError};
use crate::templates::{render_email, EmailTemplate};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationRequest {
    pub event_type: String,
    #[serde(default = "empty_object")]
    pub payload: Value,
    #[serde(default)]
    pub recipients: Option<Vec<String>>,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeliverySummary {
    pub id: Uuid,
    pub channel: String,
    pub target: String,
    pub status: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Accepted {
    pub id: Uuid,
    pub status: String,
    pub deliveries: Vec<DeliverySummary>,
}

#[derive(sqlx::FromRow)]
struct EventTypeRow {
    updated_at: DateTime<Utc>,
    payload_schema: Option<Value>,
    recipient_path: Option<String>,
    template_key: Option<String>,
    template_version: Option<i32>,
    subject: Option<String>,
    html_body: Option<String>,
    text_body: Option<String>,
}

type SchemaCache = RwLock<HashMap<String, (DateTime<Utc>, Arc<jsonschema::Validator>)>>;

pub struct Processor {
    db: PgPool,
    schemas: SchemaCache,
}

/// The status of a notification, derived from its deliveries' statuses.
pub fn derive_status<'a>(statuses: impl IntoIterator<Item = &'a str>) -> &'static str {
    let (mut total, mut pending, mut open, mut ok, mut failed) = (0, 0, 0, 0, 0);
    for s in statuses {
        total += 1;
        match s {
            "pending" => pending += 1,
            "in_flight" | "retrying" => open += 1,
            "succeeded" => ok += 1,
            "failed" => failed += 1,
            _ => {}
        }
    }
    match () {
        _ if total == 0 => "no_deliveries",
        _ if pending == total => "pending",
        _ if pending + open > 0 => "in_progress",
        _ if failed == 0 && ok > 0 => "succeeded",
        _ if ok == 0 && failed > 0 => "failed",
        _ if ok > 0 => "partially_failed",
        _ => "cancelled",
    }
}

/// Follows a dotted path (`user.email`) into a JSON value.
fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |cur, seg| cur.get(seg))
}

/// A recipient, parsed: the address is the ordering key, the mailbox the target.
fn parse_recipient(raw: &str) -> Result<(String, String), ApiError> {
    let mailbox: lettre::message::Mailbox = raw
        .trim()
        .parse()
        .map_err(|_| ApiError::InvalidRecipient(format!("'{raw}' is not a valid email address")))?;
    Ok((mailbox.email.to_string().to_lowercase(), mailbox.to_string()))
}

pub fn request_hash(body: &[u8]) -> Vec<u8> {
    Sha256::digest(body).to_vec()
}

impl Processor {
    pub fn new(db: PgPool) -> Self {
        Self { db, schemas: RwLock::new(HashMap::new()) }
    }

    fn validator(&self, name: &str, updated_at: DateTime<Utc>, schema: &Value) -> Result<Arc<jsonschema::Validator>, ApiError> {
        if let Some((at, v)) = self.schemas.read().expect("schema cache").get(name) {
            if *at == updated_at {
                return Ok(v.clone());
            }
        }
        let v = Arc::new(
            jsonschema::validator_for(schema)
                .map_err(|e| anyhow::anyhow!("event type {name} has an invalid JSON schema: {e}"))?,
        );
        self.schemas.write().expect("schema cache").insert(name.to_owned(), (updated_at, v.clone()));
        Ok(v)
    }

    /// Answers a stored idempotent response, refuses a reused key, or says "go ahead".
    async fn replay(&self, owner: &str, key: &str, hash: &[u8]) -> Result<Option<Accepted>, ApiError> {
        let row: Option<(Vec<u8>, Option<Value>)> =
            sqlx::query_as("SELECT request_hash, response_body FROM idempotency_keys WHERE owner = $1 AND key = $2")
                .bind(owner)
                .bind(key)
                .fetch_optional(&self.db)
                .await?;
        match row {
            None => Ok(None),
            Some((h, _)) if h != hash => Err(ApiError::IdempotencyKeyReused),
            Some((_, Some(body))) => Ok(Some(serde_json::from_value(body).map_err(anyhow::Error::from)?)),
            Some((_, None)) => Err(anyhow::anyhow!("idempotency row without a response").into()),
        }
    }

    /// Validates, renders and persists one notification. `idempotency` is the client's
    /// key and the hash of the request body.
    pub async fn accept(
        &self,
        who: &Principal,
        req: NotificationRequest,
        idempotency: Option<(&str, &[u8])>,
    ) -> Result<Accepted, ApiError> {
        if let Some((key, hash)) = idempotency {
            if let Some(previous) = self.replay(&who.owner, key, hash).await? {
                return Ok(previous);
            }
        }

        let et: EventTypeRow = sqlx::query_as(
            "SELECT e.updated_at, e.payload_schema, e.recipient_path,
                    v.template_key, v.version AS template_version, v.subject, v.html_body, v.text_body
             FROM event_types e
             LEFT JOIN templates t ON t.key = e.email_template
             LEFT JOIN template_versions v ON v.template_key = t.key AND v.version = t.published_version
             WHERE e.name = $1",
        )
        .bind(&req.event_type)
        .fetch_optional(&self.db)
        .await?
        .ok_or_else(|| ApiError::UnknownEventType(req.event_type.clone()))?;

        if let Some(schema) = &et.payload_schema {
            let validator = self.validator(&req.event_type, et.updated_at, schema)?;
            let errors: Vec<FieldError> = validator
                .iter_errors(&req.payload)
                .take(20)
                .map(|e| FieldError { pointer: e.instance_path.to_string(), message: e.to_string() })
                .collect();
            if !errors.is_empty() {
                return Err(ApiError::SchemaViolation { event_type: req.event_type.clone(), errors });
            }
        }

        // Recipients: explicit ones win; otherwise the route's path into the payload.
        let raw: Vec<String> = match (&req.recipients, &et.recipient_path) {
            (Some(list), _) if !list.is_empty() => list.clone(),
            (_, Some(path)) => match lookup(&req.payload, path) {
                Some(Value::String(s)) => vec![s.clone()],
                Some(Value::Array(items)) => items.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect(),
                _ => vec![],
            },
            _ => vec![],
        };
        if raw.len() > 100 {
            return Err(ApiError::InvalidRequest("at most 100 recipients per notification".into()));
        }
        let mut recipients: Vec<(String, String)> = Vec::with_capacity(raw.len());
        for r in &raw {
            let parsed = parse_recipient(r)?;
            if !recipients.iter().any(|(addr, _)| *addr == parsed.0) {
                recipients.push(parsed);
            }
        }

        let template = match (&et.template_key, &et.template_version) {
            (Some(key), Some(version)) => Some(EmailTemplate {
                key: key.clone(),
                version: *version,
                subject: et.subject.clone().unwrap_or_default(),
                html_body: et.html_body.clone().unwrap_or_default(),
                text_body: et.text_body.clone().unwrap_or_default(),
            }),
            _ => None,
        };
        let Some(template) = template else {
            return Err(ApiError::NoRecipient(format!(
                "event type '{}' has no published email template to send; nothing would be delivered",
                req.event_type
            )));
        };
        if recipients.is_empty() {
            return Err(ApiError::NoRecipient(match &et.recipient_path {
                Some(path) => format!("no recipients were given and the payload has no address at '{path}'"),
                None => "no recipients were given and the event type does not say where to find one".into(),
            }));
        }
        let content = render_email(&template, &req.payload).map_err(ApiError::TemplateRender)?;
        let content = serde_json::to_value(&content).map_err(anyhow::Error::from)?;

        let id = Uuid::now_v7();
        let deliveries: Vec<(Uuid, &(String, String))> = recipients.iter().map(|r| (Uuid::now_v7(), r)).collect();
        let accepted = Accepted {
            id,
            status: "pending".into(),
            deliveries: deliveries
                .iter()
                .map(|(did, (_, target))| DeliverySummary {
                    id: *did,
                    channel: "email".into(),
                    target: target.clone(),
                    status: "pending".into(),
                })
                .collect(),
        };
        let messages: Vec<BusMessage> = deliveries
            .iter()
            .map(|(did, (addr, _))| BusMessage::delivery(Topic::Email, addr.clone(), *did, 1))
            .collect();

        let recipient_list: Vec<String> = recipients.iter().map(|(_, t)| t.clone()).collect();
        let ids: Vec<Uuid> = deliveries.iter().map(|(d, _)| *d).collect();
        let topics: Vec<&str> = messages.iter().map(|m| m.topic.as_str()).collect();
        let keys: Vec<&str> = messages.iter().map(|m| m.key.as_str()).collect();
        let payloads: Vec<Value> = messages.iter().map(|m| m.payload.clone()).collect();
        // Notification, deliveries and their bus messages in one statement: atomic on
        // its own, and one round trip on the hot path.
        let insert = sqlx::query(
            "WITH n AS (
                INSERT INTO notifications (id, event_type, payload, recipients, api_key_id, owner)
                VALUES ($1, $2, $3, $4, $5, $6)
             ), d AS (
                INSERT INTO deliveries (id, notification_id, channel, target, content)
                SELECT d, $1, 'email', t, $8 FROM unnest($7::uuid[], $4::text[]) AS x(d, t)
             )
             INSERT INTO outbox (topic, key, payload)
             SELECT t, k, p FROM unnest($9::text[], $10::text[], $11::jsonb[]) AS y(t, k, p)",
        )
        .bind(id)
        .bind(&req.event_type)
        .bind(&req.payload)
        .bind(&recipient_list)
        .bind(who.key_id)
        .bind(&who.owner)
        .bind(&ids)
        .bind(&content)
        .bind(&topics)
        .bind(&keys)
        .bind(&payloads);

        let Some((key, hash)) = idempotency else {
            insert.execute(&self.db).await?;
            crate::metrics::accepted();
            return Ok(accepted);
        };
        let mut tx = self.db.begin().await?;
        // A concurrent request with the same key blocks here until it commits.
        let fresh = sqlx::query(
            "INSERT INTO idempotency_keys (owner, key, request_hash) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(&who.owner)
        .bind(key)
        .bind(hash)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !fresh {
            tx.rollback().await?;
            return self.replay(&who.owner, key, hash).await?.ok_or_else(|| anyhow::anyhow!("idempotency row vanished").into());
        }
        insert.execute(&mut *tx).await?;
        sqlx::query(
            "UPDATE idempotency_keys SET notification_id = $3, response_status = 202, response_body = $4
             WHERE owner = $1 AND key = $2",
        )
        .bind(&who.owner)
        .bind(key)
        .bind(id)
        .bind(serde_json::to_value(&accepted).map_err(anyhow::Error::from)?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(accepted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_derivation() {
        assert_eq!(derive_status(["pending", "pending"]), "pending");
        assert_eq!(derive_status(["pending", "succeeded"]), "in_progress");
        assert_eq!(derive_status(["retrying"]), "in_progress");
        assert_eq!(derive_status(["succeeded", "succeeded"]), "succeeded");
        assert_eq!(derive_status(["failed"]), "failed");
        assert_eq!(derive_status(["failed", "succeeded"]), "partially_failed");
        assert_eq!(derive_status([]), "no_deliveries");
    }

    #[test]
    fn recipients_parse_and_normalise() {
        assert_eq!(
            parse_recipient("Ada <Ada@Example.test>").unwrap(),
            ("ada@example.test".to_owned(), "Ada <Ada@Example.test>".to_owned())
        );
        assert!(parse_recipient("not an address").is_err());
        assert_eq!(lookup(&serde_json::json!({"user": {"email": "x@y.z"}}), "user.email").unwrap(), "x@y.z");
    }
}
