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
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::access::{Principal, Scope};
use crate::bus::lane::{Lane, LaneClaim, LaneRow, Prestarted};
use crate::error::{Error, FieldError, Result};
use crate::model::{lookup, Channel, DeliveryStatus, NotificationStatus};
use crate::templates::{render_email_for, EmailTemplate};

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
    category: String,
    transactional: bool,
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
    /// The group commit's queue, started at the first notification (see [`Group`]).
    group: std::sync::OnceLock<mpsc::UnboundedSender<Waiting>>,
    /// Group commits in flight at once.
    group_commits: usize,
}

type CatalogCache = crate::cache::Watched<String, Arc<EventTypeRow>>;

/// How long an event type is used from memory at most without a change notification.
const CATALOG_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// Group commit: notifications accepted at the same time are inserted by one statement
/// (one round trip and one durable commit for all of them) and each is answered only
/// after that commit. Nothing waits to form a group: a notification goes at once when a
/// commit slot is free (`HERALD_ACCEPT_COMMITS`, 1 by default), and those that arrive
/// while every slot is busy go together in the next. One slot measured best on two
/// cores: the groups grow with the load, so PostgreSQL's work per notification falls as
/// it rises. If a group's statement fails, each of its notifications is
/// inserted on its own, so one that cannot be stored never fails the others.
struct Group {
    /// The group commit's own connections (see [`Group::pool`]).
    db: PgPool,
    lane: Option<Arc<Lane>>,
    /// Groups being committed at once (`HERALD_ACCEPT_COMMITS`).
    slots: usize,
}

/// The most notifications in one group.
const GROUP_MAX: usize = 256;

/// About the most bytes of notifications in one group (a larger notification goes
/// alone), so that large payloads make several statements instead of one huge one.
const GROUP_BYTES: usize = 4 << 20;

/// A notification waiting for its group's commit, and where its answer goes.
struct Waiting {
    prepared: Prepared,
    reply: oneshot::Sender<Result<Accepted>>,
}

impl Group {
    /// One connection per commit slot, opened when first needed, planning the group's
    /// statement once (`plan_cache_mode = force_generic_plan`): left to choose,
    /// PostgreSQL plans it anew for every execution (its arrays make every custom plan
    /// look cheaper than the generic one), which costs more than running it.
    fn pool(db: &PgPool, slots: usize) -> PgPool {
        let options = (*db.connect_options()).clone().options([("plan_cache_mode", "force_generic_plan")]);
        crate::db::pool_options(slots as u32).connect_lazy_with(options)
    }

    async fn run(self, mut rx: mpsc::UnboundedReceiver<Waiting>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(self.slots));
        let this = Arc::new(self);
        // What did not fit in the last group: the first of the next.
        let mut carried: Option<Waiting> = None;
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else { return };
            let first = match carried.take() {
                Some(w) => w,
                None => match rx.recv().await {
                    Some(w) => w,
                    None => return,
                },
            };
            let mut bytes = first.prepared.weight;
            let mut group = vec![first];
            while group.len() < GROUP_MAX {
                match rx.try_recv() {
                    Ok(w) if bytes + w.prepared.weight > GROUP_BYTES => {
                        carried = Some(w);
                        break;
                    }
                    Ok(w) => {
                        bytes += w.prepared.weight;
                        group.push(w);
                    }
                    Err(_) => break,
                }
            }
            let this = this.clone();
            tokio::spawn(async move {
                this.commit(group).await;
                drop(slot);
            });
        }
    }

    /// The group's results, in its order: all of it in one statement, or, if that
    /// fails, each notification on its own on the same connection. Without a connection
    /// (the database unreachable), every one fails at once.
    async fn insert(&self, prepared: &[Prepared]) -> Vec<Result<(Accepted, Vec<LaneRow>)>> {
        let mut conn = match self.db.acquire().await {
            Ok(conn) => conn,
            Err(e) => {
                let e = anyhow::Error::new(e).context("no connection for a group commit");
                return prepared.iter().map(|_| Err(anyhow::anyhow!("{e:#}").into())).collect();
            }
        };
        let e = match insert_many(&mut conn, prepared).await {
            Ok(all) => {
                crate::metrics::accept_group();
                return all.into_iter().map(Ok).collect();
            }
            Err(e) if prepared.len() == 1 => return vec![Err(e)],
            Err(e) => e,
        };
        tracing::warn!(error = %format!("{e:#}"), notifications = prepared.len(), "a group commit failed; inserting its notifications one by one");
        let mut each = Vec::with_capacity(prepared.len());
        for p in prepared {
            let one = insert_many(&mut conn, std::slice::from_ref(p)).await;
            each.push(one.map(|mut v| v.pop().expect("one result per notification")));
        }
        each
    }

    async fn commit(&self, group: Vec<Waiting>) {
        let (mut prepared, replies): (Vec<Prepared>, Vec<_>) = group.into_iter().map(|w| (w.prepared, w.reply)).unzip();
        // Places on the fast lane, in the group's order; used after the commit.
        let slots: Vec<_> = prepared
            .iter_mut()
            .map(|p| {
                let slot = self.lane.as_ref().and_then(|l| l.reserve());
                p.lane = slot.as_ref().map(|s| s.claim());
                slot
            })
            .collect();
        let results = self.insert(&prepared).await;
        for ((result, slot), reply) in results.into_iter().zip(slots).zip(replies) {
            let answer = result.map(|(accepted, laned)| {
                if let Some(slot) = slot {
                    slot.send(laned);
                }
                crate::metrics::accepted();
                accepted
            });
            // A client that went away is not answered; what was committed stays.
            let _ = reply.send(answer);
        }
    }
}

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
            catalog: CatalogCache::new(crate::cache::CATALOG, CATALOG_TTL),
            group: std::sync::OnceLock::new(),
            group_commits: 1,
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
                    v.track_opens, v.track_clicks, e.category, e.transactional
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

    /// Group commits in flight at once (`HERALD_ACCEPT_COMMITS`, at least 1).
    pub fn with_group_commits(mut self, n: usize) -> Self {
        self.group_commits = n.max(1);
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
        who.require(Scope::NotificationsWrite)?;
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

        let Some((key, hash)) = idempotency else {
            // Committed together with whatever else is being accepted (group commit).
            let (reply, answer) = oneshot::channel();
            self.group().send(Waiting { prepared, reply }).map_err(|_| anyhow::anyhow!("the group commit stopped"))?;
            return answer.await.map_err(|_| anyhow::anyhow!("the group commit stopped"))?;
        };
        // A place on the fast lane, taken before the transaction; used after the commit.
        let slot = self.lane.as_ref().and_then(|l| l.reserve());
        prepared.lane = slot.as_ref().map(|s| s.claim());
        // The accepting statement's plan is made once per connection (see `Group::pool`).
        let mut tx = self.db.begin_with("BEGIN; SET LOCAL plan_cache_mode = force_generic_plan").await?;
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

    /// The group commit's queue; its task starts with the first notification.
    fn group(&self) -> &mpsc::UnboundedSender<Waiting> {
        self.group.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let slots = self.group_commits;
            tokio::spawn(Group { db: Group::pool(&self.db, slots), lane: self.lane.clone(), slots }.run(rx));
            tx
        })
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
        let mut email_bytes = 0;
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
                let unsubscribe = (!et.transactional && !et.operational).then_some(et.category.as_str());
                let content = render_email_for(&template, &sub.payload, unsubscribe).map_err(Error::TemplateRender)?;
                email_bytes = content.subject.len() + content.html.len() + content.text.len();
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
        let weight = 2 * body.len() + email_bytes * recipients.len().max(1);
        Ok(Prepared {
            id: Uuid::now_v7(),
            sub,
            operational: et.operational,
            recipients,
            email_content,
            weight,
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
        let o = crate::access::owner_name(&o)?;
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
    /// About how many bytes it is to insert: its payload (stored, and serialized in the
    /// webhook body) and its email content once per recipient.
    weight: usize,
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
    notification_id: Uuid,
    id: Uuid,
    target: String,
    endpoint_id: Option<Uuid>,
    outbox_id: i64,
    key: String,
    /// Inserted on the fast lane (claimed by its token).
    laned: bool,
    /// Not a webhook: an email delivery recorded as suppressed (nothing else is set).
    suppressed: bool,
}

/// [`insert`] for several notifications in one statement (the group commit's), also
/// returning each one's webhook messages inserted on the fast lane (claimed by its
/// token), which the caller hands over after the commit. A notification for more than
/// `lane::MAX_FAN_OUT` endpoints goes the bus's way. Results come in the order of `ps`.
async fn insert_many(conn: &mut sqlx::PgConnection, ps: &[Prepared]) -> Result<Vec<(Accepted, Vec<LaneRow>)>> {
    // One row per notification ...
    let n = ps.len();
    let mut ids = Vec::with_capacity(n);
    let mut event_types = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    let mut key_ids = Vec::with_capacity(n);
    let mut owners = Vec::with_capacity(n);
    let mut emails = Vec::with_capacity(n);
    let mut webhooks = Vec::with_capacity(n);
    let mut operational = Vec::with_capacity(n);
    let mut operational_owners = Vec::with_capacity(n);
    let mut only_endpoints = Vec::with_capacity(n);
    let mut addressed = Vec::with_capacity(n);
    let mut laned = Vec::with_capacity(n);
    // ... and one per email delivery.
    let mut r_notifications = Vec::new();
    let mut r_ids = Vec::new();
    let mut r_targets = Vec::new();
    let mut lane_claim = None;
    for p in ps {
        ids.push(p.id);
        event_types.push(p.sub.event_type.as_str());
        payloads.push(&p.sub.payload);
        key_ids.push(p.sub.key_id);
        owners.push(p.sub.owner.as_str());
        emails.push(p.email_content.as_ref());
        webhooks.push(&p.webhook_content);
        operational.push(p.operational);
        operational_owners.push(p.sub.operational_owner.as_deref());
        only_endpoints.push(p.only_endpoint);
        addressed.push(p.sub.owners.as_ref().map(|o| serde_json::json!(o)));
        laned.push(p.lane.is_some());
        lane_claim = lane_claim.or(p.lane);
        for (_, target) in &p.recipients {
            r_notifications.push(p.id);
            r_ids.push(Uuid::now_v7());
            r_targets.push(target.as_str());
        }
    }
    // Notifications, deliveries and their bus messages in one statement: atomic on its
    // own, and one round trip for a whole group. Bus keys come from herald_ordering_key,
    // the one definition of a delivery's ordering key. Rows go in in the order of `ps`
    // (outbox ids, hence bus order, follow it).
    let rows: Vec<WebhookRow> = sqlx::query_as(
        "WITH i AS (
            -- Visibility and grantees, read once per notification; who may receive
            -- is herald_visible's to say, per endpoint.
            SELECT u.*, v.visibility, v.category, v.transactional,
                   CASE WHEN v.visibility = 'granted'
                        THEN ARRAY(SELECT g.grantee FROM event_type_grants g WHERE g.event_type = u.event_type)
                   END AS grantees
            FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::uuid[], $5::text[], $6::jsonb[],
                        $7::jsonb[], $8::bool[], $9::text[], $10::uuid[], $11::jsonb[], $12::bool[])
                WITH ORDINALITY AS u(id, event_type, payload, api_key_id, owner, email_content, webhook_content,
                                     operational, operational_owner, only_endpoint, owners, laned, ord)
            LEFT JOIN LATERAL (SELECT et.visibility, et.category, et.transactional
                               FROM event_types et WHERE et.name = u.event_type) v ON true
         ), r AS (
            -- An email to a suppressed address is recorded as suppressed, and not sent.
            SELECT r.*, herald_suppression(herald_ordering_key('email', r.target), i.category, i.transactional) AS suppressed
            FROM unnest($13::uuid[], $14::uuid[], $15::text[]) WITH ORDINALITY AS r(nid, id, target, ord)
            JOIN i ON i.id = r.nid
         ), n AS (
            INSERT INTO notifications (id, event_type, payload, recipients, api_key_id, owner)
            SELECT i.id, i.event_type, i.payload, coalesce(ra.targets, '{}'), i.api_key_id, i.owner
            FROM i LEFT JOIN (SELECT nid, array_agg(target ORDER BY ord) AS targets FROM r GROUP BY nid) ra ON ra.nid = i.id
         ), d AS (
            INSERT INTO deliveries (id, notification_id, channel, target, content, email_template, tracked,
                                    status, last_error)
            SELECT r.id, r.nid, 'email', r.target, i.email_content, i.email_content->>'template',
                   coalesce((i.email_content->>'track_opens')::boolean, false)
                   OR coalesce((i.email_content->>'track_clicks')::boolean, false),
                   CASE WHEN r.suppressed IS NULL THEN 'pending' ELSE 'suppressed' END, r.suppressed
            FROM r JOIN i ON i.id = r.nid
         ), o AS (
            INSERT INTO outbox (topic, key, payload)
            SELECT 'email', herald_ordering_key('email', r.target), jsonb_build_object('delivery_id', r.id, 'attempt', 1)
            FROM r WHERE r.suppressed IS NULL ORDER BY r.ord
         ), e AS (
            -- A notification's webhooks go on the fast lane (bus::lane: messages claimed
            -- by its token, their first attempts started, for the dispatcher of this
            -- process) when it has a place there and not too many endpoints.
            SELECT i.id AS nid, i.webhook_content, x.id,
                   i.laned AND $16::uuid IS NOT NULL AND count(*) OVER (PARTITION BY i.id) <= $17 AS on_lane
            FROM i
            CROSS JOIN LATERAL (
                SELECT ep.id FROM endpoints ep
                WHERE CASE WHEN i.only_endpoint IS NOT NULL THEN ep.id = i.only_endpoint
                           ELSE ep.enabled AND herald_filter_matches(ep.event_types, i.event_type, i.operational)
                                -- Herald's own events only to the owner they are about.
                                AND (i.operational_owner IS NULL OR ep.owner = i.operational_owner OR ep.admin)
                                AND herald_visible(i.visibility, i.grantees, ep.owner, ep.admin)
                                -- Addressed: only these owners' endpoints.
                                AND (i.owners IS NULL OR i.owners ? ep.owner) END
            ) x
         ), w AS (
            INSERT INTO deliveries (id, notification_id, channel, target, endpoint_id, content,
                                    status, lease_until, unrecorded_starts)
            SELECT herald_uuid_v7(), e.nid, 'webhook', e.id::text, e.id, e.webhook_content,
                   CASE WHEN e.on_lane THEN 'in_flight' ELSE 'pending' END,
                   CASE WHEN e.on_lane THEN now() + make_interval(secs => $19) END,
                   CASE WHEN e.on_lane THEN 1 ELSE 0 END
            FROM e
            RETURNING id, notification_id, target, endpoint_id, status = 'in_flight' AS laned
         ), wo AS (
            INSERT INTO outbox (topic, key, payload, claimed_until, claim_token, deliveries)
            SELECT 'webhook', herald_ordering_key('webhook', w.target), jsonb_build_object('delivery_id', w.id, 'attempt', 1),
                   CASE WHEN w.laned THEN now() + make_interval(secs => $18) END,
                   CASE WHEN w.laned THEN $16::uuid END,
                   CASE WHEN w.laned THEN 1 ELSE 0 END
            FROM w JOIN i ON i.id = w.notification_id
            ORDER BY i.ord, w.target
            RETURNING id, key, (payload->>'delivery_id')::uuid AS delivery_id, claim_token IS NOT NULL AS laned
         )
         (SELECT w.notification_id, w.id, w.target, w.endpoint_id, wo.id AS outbox_id, wo.key, wo.laned,
                 false AS suppressed
          FROM w JOIN wo ON wo.delivery_id = w.id ORDER BY wo.id)
         UNION ALL
         SELECT r.nid, r.id, r.target, NULL, 0, '', false, true FROM r WHERE r.suppressed IS NOT NULL",
    )
    .bind(&ids)
    .bind(&event_types)
    .bind(&payloads)
    .bind(&key_ids)
    .bind(&owners)
    .bind(&emails)
    .bind(&webhooks)
    .bind(&operational)
    .bind(&operational_owners)
    .bind(&only_endpoints)
    .bind(&addressed)
    .bind(&laned)
    .bind(&r_notifications)
    .bind(&r_ids)
    .bind(&r_targets)
    .bind(lane_claim.map(|l| l.token))
    .bind(crate::bus::lane::MAX_FAN_OUT)
    .bind(lane_claim.map(|l| l.lease_secs).unwrap_or(0.0))
    .bind(lane_claim.map(|l| l.attempt_lease_secs).unwrap_or(0.0))
    .fetch_all(conn)
    .await?;

    // Each notification's webhook rows are together, in the order of `ps`; the
    // suppressed emails come last.
    let (suppressed, rows): (Vec<WebhookRow>, Vec<WebhookRow>) = rows.into_iter().partition(|r| r.suppressed);
    let suppressed: std::collections::HashSet<Uuid> = suppressed.into_iter().map(|r| r.id).collect();
    if !suppressed.is_empty() {
        crate::metrics::suppressed("accepting", suppressed.len() as u64);
    }
    let mut rows = rows.into_iter().peekable();
    let mut r_ids = r_ids.into_iter();
    let mut out = Vec::with_capacity(n);
    for p in ps {
        let mut summaries: Vec<DeliverySummary> = p
            .recipients
            .iter()
            .map(|(_, target)| {
                let id = r_ids.next().expect("one id per recipient");
                let status =
                    if suppressed.contains(&id) { DeliveryStatus::Suppressed } else { DeliveryStatus::Pending };
                DeliverySummary { id, channel: Channel::Email, target: target.clone(), status }
            })
            .collect();
        let mut lane_rows = Vec::new();
        while let Some(w) = rows.next_if(|w| w.notification_id == p.id) {
            if w.laned {
                lane_rows.push(LaneRow {
                    outbox_id: w.outbox_id,
                    key: w.key,
                    started: Prestarted {
                        delivery_id: w.id,
                        target: w.target.clone(),
                        endpoint_id: w.endpoint_id,
                        content: p.webhook_content.clone(),
                    },
                });
            }
            summaries.push(DeliverySummary {
                id: w.id,
                channel: Channel::Webhook,
                target: w.target,
                status: DeliveryStatus::Pending,
            });
        }
        let status = NotificationStatus::of(summaries.iter().map(|d| d.status));
        out.push((Accepted { id: p.id, status, deliveries: summaries }, lane_rows));
    }
    Ok(out)
}

/// [`insert_many`] for one notification.
async fn insert_laned(conn: &mut sqlx::PgConnection, p: Prepared) -> Result<(Accepted, Vec<LaneRow>)> {
    Ok(insert_many(conn, std::slice::from_ref(&p)).await?.pop().expect("one result per notification"))
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
