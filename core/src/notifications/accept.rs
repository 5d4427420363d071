//! Accepting a notification (the seed's message processor): validates it, renders it, routes it to channels,
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
use crate::bus::lane::{Lane, LaneClaim, LaneRow, Prestarted};
use crate::error::{Error, FieldError, Result};
use crate::model::{lookup, Channel, DeliveryStatus, NotificationStatus};
use crate::templates::{render_email, EmailTemplate};

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NotificationRequest {
    pub event_type: String,
    #[serde(default = "empty_object")]
    pub payload: Value,
    #[serde(default)]
    pub recipients: Option<Vec<String>>,
    /// Deliver webhooks only to these owners' endpoints (email routing is unchanged).
    #[serde(default)]
    pub owners: Option<Vec<String>>,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct DeliverySummary {
    pub id: Uuid,
    pub channel: Channel,
    pub target: String,
    pub status: DeliveryStatus,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Accepted {
    pub id: Uuid,
    pub status: NotificationStatus,
    pub deliveries: Vec<DeliverySummary>,
}

#[derive(Clone, sqlx::FromRow)]
struct EventTypeRow {
    updated_at: DateTime<Utc>,
    payload_schema: Option<Value>,
    recipient_path: Option<String>,
    operational: bool,
    template_key: Option<String>,
    template_version: Option<i32>,
    subject: Option<String>,
    html_body: Option<String>,
    text_body: Option<String>,
    track_opens: Option<bool>,
    track_clicks: Option<bool>,
}

type SchemaCache = RwLock<HashMap<String, (DateTime<Utc>, Arc<jsonschema::Validator>)>>;

pub struct Processor {
    db: PgPool,
    schemas: SchemaCache,
    max_recipients: usize,
    /// The webhook dispatcher of this process, when there is one (`bus::lane`).
    lane: Option<Arc<Lane>>,
    /// Event types with their published templates, as last read: any change to an
    /// event type, template or template version notifies `herald_catalog` (row
    /// triggers), which empties it (`cache::Watched`). Unknown names are not cached.
    catalog: Arc<CatalogCache>,
}

type CatalogCache = crate::cache::Watched<String, Arc<EventTypeRow>>;

/// How long an event type is used from memory at most without a change notification.
const CATALOG_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// A recipient, parsed: the lowercased address (who the recipient is, for removing
/// duplicates) and the mailbox (the delivery's target).
fn parse_recipient(raw: &str) -> Result<(String, String)> {
    let mailbox: lettre::message::Mailbox =
        raw.trim().parse().map_err(|_| Error::InvalidRecipient(format!("'{raw}' is not a valid email address")))?;
    Ok((mailbox.email.to_string().to_lowercase(), mailbox.to_string()))
}

pub fn request_hash(body: &[u8]) -> Vec<u8> {
    Sha256::digest(body).to_vec()
}

impl Processor {
    pub fn new(db: PgPool) -> Self {
        Self {
            db,
            schemas: RwLock::new(HashMap::new()),
            max_recipients: 100,
            lane: None,
            catalog: CatalogCache::new("herald_catalog", CATALOG_TTL),
        }
    }

    /// Keeps the event type cache in step with the catalog, until the task is aborted;
    /// without it running, every notification reads its event type from the database.
    pub fn watch_catalog(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.catalog.clone().listen(self.db.clone())
    }

    /// Forgets every cached event type (a change was just made through this process).
    pub fn forget_catalog(&self) {
        self.catalog.invalidate();
    }

    /// The event type and its published template, from the cache or the database.
    async fn event_type(&self, name: &str) -> Result<Arc<EventTypeRow>> {
        if let Some(et) = self.catalog.get(name) {
            return Ok(et);
        }
        let token = self.catalog.token();
        let et: EventTypeRow = sqlx::query_as(
            "SELECT e.updated_at, e.payload_schema, e.recipient_path, e.operational,
                    v.template_key, v.version AS template_version, v.subject, v.html_body, v.text_body,
                    v.track_opens, v.track_clicks
             FROM event_types e
             LEFT JOIN templates t ON t.key = e.email_template
             LEFT JOIN template_versions v ON v.template_key = t.key AND v.version = t.published_version
             WHERE e.name = $1",
        )
        .bind(name)
        .fetch_optional(&self.db)
        .await?
        .ok_or_else(|| Error::UnknownEventType(name.to_owned()))?;
        let et = Arc::new(et);
        self.catalog.put(token, name.to_owned(), et.clone());
        Ok(et)
    }

    /// Hands the webhooks of accepted notifications to this process's dispatcher
    /// directly (`bus::lane`).
    pub fn with_lane(mut self, lane: Arc<Lane>) -> Self {
        self.lane = Some(lane);
        self
    }

    /// At most this many recipients per notification (`HERALD_MAX_RECIPIENTS`).
    pub fn with_max_recipients(mut self, n: usize) -> Self {
        self.max_recipients = n;
        self
    }

    fn validator(&self, name: &str, updated_at: DateTime<Utc>, schema: &Value) -> Result<Arc<jsonschema::Validator>> {
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
    async fn replay(&self, owner: &str, key: &str, hash: &[u8]) -> Result<Option<Accepted>> {
        let row: Option<(Vec<u8>, Option<Value>)> =
            sqlx::query_as("SELECT request_hash, response_body FROM idempotency_keys WHERE owner = $1 AND key = $2")
                .bind(owner)
                .bind(key)
                .fetch_optional(&self.db)
                .await?;
        match row {
            None => Ok(None),
            Some((h, _)) if h != hash => Err(Error::IdempotencyKeyReused),
            Some((_, Some(body))) => Ok(Some(serde_json::from_value(body)?)),
            Some((_, None)) => Err(anyhow::anyhow!("idempotency row without a response").into()),
        }
    }

    /// Validates, renders and persists one notification posted by a client.
    /// `idempotency` is the client's key and the hash of the request body.
    pub async fn accept(
        &self,
        who: &Principal,
        req: NotificationRequest,
        idempotency: Option<(&str, &[u8])>,
    ) -> Result<Accepted> {
        if let Some((key, hash)) = idempotency {
            if let Some(previous) = self.replay(&who.owner, key, hash).await? {
                return Ok(previous);
            }
        }
        let owners = addressed_owners(who, req.owners)?;
        let mut prepared = self
            .prepare(Submission {
                event_type: req.event_type,
                payload: req.payload,
                recipients: req.recipients,
                owner: who.owner.clone(),
                key_id: who.key_id,
                operational_owner: None,
                owners,
            })
            .await?;

        // A place on the fast lane, taken before the transaction; used after the commit.
        let slot = self.lane.as_ref().and_then(|l| l.reserve());
        prepared.lane = slot.as_ref().map(|s| s.claim());
        let Some((key, hash)) = idempotency else {
            let mut conn = self.db.acquire().await?;
            let (accepted, laned) = insert_laned(&mut conn, prepared).await?;
            if let Some(slot) = slot {
                slot.send(laned);
            }
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
            return self
                .replay(&who.owner, key, hash)
                .await?
                .ok_or_else(|| anyhow::anyhow!("idempotency row vanished").into());
        }
        let id = prepared.id;
        let (accepted, laned) = insert_laned(&mut tx, prepared).await?;
        sqlx::query(
            "UPDATE idempotency_keys SET notification_id = $3, response_status = 202, response_body = $4
             WHERE owner = $1 AND key = $2",
        )
        .bind(&who.owner)
        .bind(key)
        .bind(id)
        .bind(serde_json::to_value(&accepted)?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if let Some(slot) = slot {
            slot.send(laned);
        }
        crate::metrics::accepted();
        Ok(accepted)
    }

    /// Validates and renders a submission; nothing is written.
    pub async fn prepare(&self, sub: Submission) -> Result<Prepared> {
        let et = self.event_type(&sub.event_type).await?;
        if et.operational && sub.operational_owner.is_none() {
            return Err(Error::ReservedEventType(sub.event_type.clone()));
        }

        if let Some(schema) = &et.payload_schema {
            let validator = self.validator(&sub.event_type, et.updated_at, schema)?;
            let errors: Vec<FieldError> = validator
                .iter_errors(&sub.payload)
                .take(20)
                .map(|e| FieldError { pointer: e.instance_path.to_string(), message: e.to_string() })
                .collect();
            if !errors.is_empty() {
                return Err(Error::SchemaViolation { event_type: sub.event_type.clone(), errors });
            }
        }

        // Recipients: explicit ones win; otherwise the route's path into the payload.
        let raw: Vec<String> = match (&sub.recipients, &et.recipient_path) {
            (Some(list), _) if !list.is_empty() => list.clone(),
            (_, Some(path)) => match lookup(&sub.payload, path) {
                Some(Value::String(s)) => vec![s.clone()],
                Some(Value::Array(items)) => items.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect(),
                _ => vec![],
            },
            _ => vec![],
        };
        if raw.len() > self.max_recipients {
            return Err(Error::LimitExceeded(format!(
                "at most {} recipients per notification (HERALD_MAX_RECIPIENTS)",
                self.max_recipients
            )));
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
                track_opens: et.track_opens.unwrap_or(false),
                track_clicks: et.track_clicks.unwrap_or(false),
            }),
            _ => None,
        };
        // The email route: an event type with a published template must have someone to
        // send it to, and one without cannot take recipients (client errors). Herald's own
        // events skip email when there is no address to send to.
        let operational = sub.operational_owner.is_some();
        let email_content = match template {
            None if !operational && sub.recipients.as_ref().is_some_and(|r| !r.is_empty()) => {
                return Err(Error::NoRecipient(format!(
                    "event type '{}' has no published email template, so recipients cannot be used",
                    sub.event_type
                )));
            }
            None => None,
            Some(_) if recipients.is_empty() && operational => None,
            Some(_) if recipients.is_empty() => {
                return Err(Error::NoRecipient(match &et.recipient_path {
                    Some(path) => format!("no recipients were given and the payload has no address at '{path}'"),
                    None => "no recipients were given and the event type does not say where to find one".into(),
                }));
            }
            Some(template) => {
                let content = render_email(&template, &sub.payload).map_err(Error::TemplateRender)?;
                Some(serde_json::to_value(&content)?)
            }
        };
        if email_content.is_none() {
            recipients.clear();
        }

        // The webhook body, serialized once: every endpoint and every retry sends these bytes.
        let body = serde_json::to_string(&WebhookBody {
            r#type: &sub.event_type,
            timestamp: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            data: &sub.payload,
        })?;
        Ok(Prepared {
            id: Uuid::now_v7(),
            sub,
            operational: et.operational,
            recipients,
            email_content,
            webhook_content: serde_json::json!({ "body": body }),
            only_endpoint: None,
            lane: None,
        })
    }
}

/// The owners a client's notification is addressed to: those it names (each one the
/// caller may address), or, for a caller limited to some owners, those.
fn addressed_owners(who: &Principal, named: Option<Vec<String>>) -> Result<Option<Vec<String>>> {
    let Some(named) = named else { return Ok(who.addressable.clone()) };
    if named.is_empty() || named.len() > 100 {
        return Err(Error::Invalid("owners must list 1 to 100 owners (or be left out: every allowed owner)".into()));
    }
    let mut owners = Vec::with_capacity(named.len());
    for o in named {
        let o = o.trim().to_owned();
        if o.is_empty() || o.len() > 255 {
            return Err(Error::Invalid("owners: each owner is 1 to 255 characters".into()));
        }
        if who.addressable.as_ref().is_some_and(|allowed| !allowed.contains(&o)) {
            return Err(Error::Forbidden(format!("this key may not address the owner '{o}'")));
        }
        owners.push(o);
    }
    owners.sort();
    owners.dedup();
    Ok(Some(owners))
}

/// A notification to validate and persist: from a client, or emitted by Herald.
#[derive(Debug, Clone)]
pub struct Submission {
    pub event_type: String,
    pub payload: Value,
    pub recipients: Option<Vec<String>>,
    pub owner: String,
    pub key_id: Option<Uuid>,
    /// For Herald's operational events: only endpoints of this owner, or endpoints an
    /// admin registered, receive it. `None` for client notifications (every subscriber).
    pub operational_owner: Option<String>,
    /// Only these owners' endpoints receive its webhooks (`None`: every owner allowed to
    /// receive the event type).
    pub owners: Option<Vec<String>>,
}

#[derive(Serialize)]
struct WebhookBody<'a> {
    r#type: &'a str,
    timestamp: String,
    data: &'a Value,
}

/// A validated, rendered notification, ready to insert.
pub struct Prepared {
    pub id: Uuid,
    sub: Submission,
    operational: bool,
    /// (ordering key, mailbox)
    recipients: Vec<(String, String)>,
    email_content: Option<Value>,
    webhook_content: Value,
    only_endpoint: Option<Uuid>,
    /// The fast lane's claim on the webhook messages and their deliveries.
    lane: Option<LaneClaim>,
}

impl Prepared {
    /// Sends the webhook to this one endpoint only, whatever its filter (test events).
    pub fn only_endpoint(mut self, id: Uuid) -> Self {
        self.only_endpoint = Some(id);
        self
    }

    /// Makes it one email, already rendered, to `to`, and no webhook (a template's test
    /// send): no endpoint has the nil id.
    pub fn test_email(mut self, content: Value, to: &str) -> Result<Self> {
        self.recipients = vec![parse_recipient(to)?];
        self.email_content = Some(content);
        self.only_endpoint = Some(Uuid::nil());
        Ok(self)
    }
}

/// Persists a prepared notification in one statement on `conn` (a pool connection or a
/// transaction): the notification, its email deliveries and their bus messages, and a
/// webhook delivery (with its bus message) for every enabled endpoint subscribed to the
/// event type.
pub async fn insert(conn: &mut sqlx::PgConnection, p: Prepared) -> Result<Accepted> {
    Ok(insert_laned(conn, p).await?.0)
}

/// A webhook delivery the accepting statement made, with its bus message.
#[derive(sqlx::FromRow)]
struct WebhookRow {
    id: Uuid,
    target: String,
    endpoint_id: Option<Uuid>,
    outbox_id: i64,
    key: String,
    /// Inserted on the fast lane (claimed by its token).
    laned: bool,
}

/// [`insert`], also returning the webhook messages inserted on the fast lane (claimed
/// by its token), which the caller hands over after the commit. A notification for more
/// than `lane::MAX_FAN_OUT` endpoints goes the bus's way.
async fn insert_laned(conn: &mut sqlx::PgConnection, p: Prepared) -> Result<(Accepted, Vec<LaneRow>)> {
    let ids: Vec<Uuid> = p.recipients.iter().map(|_| Uuid::now_v7()).collect();
    let recipient_list: Vec<String> = p.recipients.iter().map(|(_, t)| t.clone()).collect();
    // Notification, deliveries and their bus messages in one statement: atomic on its
    // own, and one round trip on the hot path. Bus keys come from herald_ordering_key,
    // the one definition of a delivery's ordering key.
    let webhooks: Vec<WebhookRow> = sqlx::query_as(
        "WITH n AS (
            INSERT INTO notifications (id, event_type, payload, recipients, api_key_id, owner)
            VALUES ($1, $2, $3, $4, $5, $6)
         ), d AS (
            INSERT INTO deliveries (id, notification_id, channel, target, content, email_template, tracked)
            SELECT d, $1, 'email', t, $8, $8::jsonb->>'template',
                   coalesce(($8::jsonb->>'track_opens')::boolean, false) OR coalesce(($8::jsonb->>'track_clicks')::boolean, false)
            FROM unnest($7::uuid[], $4::text[]) AS x(d, t)
         ), o AS (
            INSERT INTO outbox (topic, key, payload)
            SELECT 'email', herald_ordering_key('email', t), jsonb_build_object('delivery_id', d, 'attempt', 1)
            FROM unnest($7::uuid[], $4::text[]) AS y(d, t)
         ), e AS (
            SELECT id FROM endpoints
            WHERE CASE WHEN $12::uuid IS NOT NULL THEN id = $12
                       ELSE enabled AND herald_filter_matches(event_types, $2, $10)
                            AND ($11::text IS NULL OR owner = $11 OR admin)
                            -- Visibility (evaluated once per statement): to admins, to
                            -- everyone when public, to the grantees when granted; Herald's
                            -- own events besides only to the owner they are about ($11).
                            AND (admin
                                 OR CASE (SELECT visibility FROM event_types WHERE name = $2)
                                        WHEN 'public' THEN true
                                        WHEN 'granted' THEN owner IN (SELECT grantee FROM event_type_grants
                                                                      WHERE event_type = $2)
                                        ELSE false END)
                            -- Addressed: only these owners' endpoints.
                            AND ($13::text[] IS NULL OR owner = ANY($13)) END
         ), lane AS (
            -- The fast lane (bus::lane): messages claimed by its token, their first
            -- attempts started, for the dispatcher of this process.
            SELECT $14::uuid AS token
            WHERE $14::uuid IS NOT NULL AND (SELECT count(*) FROM e) <= $16
         ), w AS (
            INSERT INTO deliveries (id, notification_id, channel, target, endpoint_id, content,
                                    status, lease_until, unrecorded_starts)
            SELECT herald_uuid_v7(), $1, 'webhook', e.id::text, e.id, $9,
                   CASE WHEN lane.token IS NOT NULL THEN 'in_flight' ELSE 'pending' END,
                   CASE WHEN lane.token IS NOT NULL THEN now() + make_interval(secs => $17) END,
                   CASE WHEN lane.token IS NOT NULL THEN 1 ELSE 0 END
            FROM e LEFT JOIN lane ON true
            RETURNING id, target, endpoint_id
         ), wo AS (
            INSERT INTO outbox (topic, key, payload, claimed_until, claim_token, deliveries)
            SELECT 'webhook', herald_ordering_key('webhook', w.target), jsonb_build_object('delivery_id', w.id, 'attempt', 1),
                   CASE WHEN lane.token IS NOT NULL THEN now() + make_interval(secs => $15) END,
                   lane.token,
                   CASE WHEN lane.token IS NOT NULL THEN 1 ELSE 0 END
            FROM w LEFT JOIN lane ON true
            RETURNING id, key, (payload->>'delivery_id')::uuid AS delivery_id, claim_token IS NOT NULL AS laned
         )
         SELECT w.id, w.target, w.endpoint_id, wo.id AS outbox_id, wo.key, wo.laned FROM w JOIN wo ON wo.delivery_id = w.id ORDER BY w.target",
    )
    .bind(p.id)
    .bind(&p.sub.event_type)
    .bind(&p.sub.payload)
    .bind(&recipient_list)
    .bind(p.sub.key_id)
    .bind(&p.sub.owner)
    .bind(&ids)
    .bind(p.email_content.as_ref().unwrap_or(&Value::Null))
    .bind(&p.webhook_content)
    .bind(p.operational)
    .bind(p.sub.operational_owner.as_deref())
    .bind(p.only_endpoint)
    .bind(&p.sub.owners)
    .bind(p.lane.map(|l| l.token))
    .bind(p.lane.map(|l| l.lease_secs).unwrap_or(0.0))
    .bind(crate::bus::lane::MAX_FAN_OUT)
    .bind(p.lane.map(|l| l.attempt_lease_secs).unwrap_or(0.0))
    .fetch_all(conn)
    .await?;
    let laned: Vec<LaneRow> = webhooks
        .iter()
        .filter(|w| w.laned)
        .map(|w| LaneRow {
            outbox_id: w.outbox_id,
            key: w.key.clone(),
            started: Prestarted {
                delivery_id: w.id,
                target: w.target.clone(),
                endpoint_id: w.endpoint_id,
                content: p.webhook_content.clone(),
            },
        })
        .collect();

    let mut summaries: Vec<DeliverySummary> = ids
        .iter()
        .zip(recipient_list)
        .map(|(id, target)| DeliverySummary {
            id: *id,
            channel: Channel::Email,
            target,
            status: DeliveryStatus::Pending,
        })
        .collect();
    summaries.extend(webhooks.into_iter().map(|w| DeliverySummary {
        id: w.id,
        channel: Channel::Webhook,
        target: w.target,
        status: DeliveryStatus::Pending,
    }));
    let status = NotificationStatus::of(summaries.iter().map(|d| d.status));
    Ok((Accepted { id: p.id, status, deliveries: summaries }, laned))
}

#[cfg(test)]
mod tests {
    use super::*;

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
