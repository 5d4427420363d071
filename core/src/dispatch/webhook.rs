//! The webhook dispatcher: signed POSTs (Standard Webhooks v1) with `reqwest`.
//!
//! Outcomes: 2xx → succeeded. 410 → permanent failure, and the endpoint is disabled.
//! Anything else (3xx — redirects are never followed —, 4xx, 5xx, timeouts, connection
//! errors) → transient, retried on the endpoint's schedule or
//! `HERALD_WEBHOOK_RETRY_SCHEDULE`; `Retry-After` is honoured up to
//! `HERALD_WEBHOOK_RETRY_AFTER_MAX`, and 429s and timeouts wait at least
//! `HERALD_WEBHOOK_THROTTLE_FLOOR`. Refused by the SSRF guard, or the endpoint is gone or
//! disabled → permanent failure, not retried.
//!
//! The body was serialized once at acceptance (`deliveries.content.body`) and is sent
//! byte-identical on every attempt; `webhook-id` is the delivery id (stable across
//! retries), `webhook-timestamp` is this attempt's, and `webhook-signature` carries one
//! signature per live secret (the current one and rotated-out ones in their grace period).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use super::oauth;
use super::record::{self, AttemptRecord, Deferred, Outcome, Started};
use crate::bus::{BatchHandler, Consumer, Received, Topic};
use crate::config::{Config, WebhookConfig};
use crate::model::Channel;
use crate::notifications::accept::Processor;
use crate::retry::RetrySchedule;
use crate::secrets::{self, SecretKey};
use crate::ssrf::{self, Guard};
use crate::transform;
use crate::webhooks::transformations;

/// The most of a response body that is read and recorded.
pub const EXCERPT_BYTES: usize = 4096;

/// A rate-limited attempt waits in the batch for its slot at most this long; a later
/// slot is taken by handing the attempt back to the bus for that time.
const MAX_PACE_WAIT: Duration = Duration::from_secs(1);

type Step = record::Step<Health>;

/// The endpoints of a batch, by id.
type Targets = HashMap<Uuid, Arc<Target>>;

/// How long a cached endpoint is used at most, even without a change notification.
const TARGET_TTL: Duration = Duration::from_secs(5);

/// Endpoints as attempts need them (URL, headers, live secrets decrypted), kept between
/// batches: any change to an endpoint or its secrets notifies `herald_endpoints` (row
/// triggers), which empties the cache (`cache::Watched`); an entry is also dropped past
/// [`TARGET_TTL`] or the expiry of a secret it holds.
type TargetCache = crate::cache::Watched<Uuid, Arc<Target>>;

/// The endpoint cache of a process's webhook dispatcher, shared with the server so that a
/// change made through the API empties it before its answer leaves (other processes'
/// changes arrive by `NOTIFY`).
#[derive(Clone)]
pub struct EndpointCache(Arc<TargetCache>);

impl EndpointCache {
    pub fn new() -> Self {
        Self(TargetCache::new(crate::cache::ENDPOINTS, TARGET_TTL))
    }

    pub fn invalidate(&self) {
        self.0.invalidate();
    }
}

impl Default for EndpointCache {
    fn default() -> Self {
        Self::new()
    }
}

/// Builds the HTTP client every webhook goes through: the SSRF guard as its resolver,
/// no proxies (an ambient proxy would connect somewhere unchecked), no redirects, and
/// bounded timeouts.
pub fn client(cfg: &WebhookConfig) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .dns_resolver(Guard::new(cfg.allow_cidrs.clone()).resolver())
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(cfg.connect_timeout)
        .timeout(cfg.timeout)
        .pool_max_idle_per_host(cfg.endpoint_concurrency)
        .pool_idle_timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .user_agent(concat!("Herald-Webhooks/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// What an attempt needs to know about its endpoint.
struct Target {
    /// Until when it may be cached: the first expiry of a secret it holds.
    valid_until: Option<DateTime<Utc>>,
    url: String,
    enabled: bool,
    /// `failing_since IS NOT NULL` when the batch started.
    failing: bool,
    headers: HeaderMap,
    rate_limit: Option<i32>,
    schedule: Option<RetrySchedule>,
    keys: Vec<Vec<u8>>,
    /// The endpoint's transformation and (for its input) its custom headers in clear.
    transformation: Option<(Arc<str>, BTreeMap<String, String>)>,
    /// OAuth client credentials, when the endpoint wants a bearer token.
    oauth: Option<oauth::Credentials>,
}

#[derive(sqlx::FromRow)]
struct TargetRow {
    id: Uuid,
    url: String,
    enabled: bool,
    headers: serde_json::Value,
    rate_limit: Option<i32>,
    retry_schedule: Option<String>,
    failing: bool,
    sealed: Vec<Vec<u8>>,
    headers_sealed: Option<Vec<u8>>,
    expires: Option<DateTime<Utc>>,
    transformation: Option<String>,
    auth: Option<serde_json::Value>,
    auth_sealed: Option<Vec<u8>>,
}

/// What an attempt means for its endpoint's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    /// The endpoint answered 2xx.
    Ok,
    /// The attempt reached for the endpoint and failed.
    Failed,
    /// 410 Gone: disable the endpoint.
    Gone,
    /// Nothing was tried (the endpoint is disabled or deleted).
    NotTried,
}

pub struct WebhookDispatcher {
    pub db: PgPool,
    pub http: reqwest::Client,
    pub guard: Guard,
    pub key: SecretKey,
    pub cfg: WebhookConfig,
    pub processor: Arc<Processor>,
    pub lease: Duration,
    pub batch_size: usize,
    /// `HERALD_BUS_MAX_REDELIVERIES`: starts without a recorded outcome before a
    /// delivery is failed and its message dead-lettered.
    pub max_starts: i32,
    /// Slow batch remainders running in their own tasks.
    detach: record::Detach,
    /// Attempts in flight per endpoint, across batches (a detached remainder's and the
    /// next batch's): at most `endpoint_concurrency`.
    inflight: Mutex<HashMap<Uuid, usize>>,
    /// Per-endpoint pacing for rate-limited endpoints: the next free slot.
    slots: Mutex<HashMap<Uuid, Instant>>,
    targets: Arc<TargetCache>,
    /// OAuth tokens of endpoints that use client credentials.
    tokens: oauth::Tokens,
}

/// One attempt in flight to an endpoint, counted until dropped.
struct InFlight<'a> {
    map: &'a Mutex<HashMap<Uuid, usize>>,
    id: Uuid,
}

impl<'a> InFlight<'a> {
    fn take(map: &'a Mutex<HashMap<Uuid, usize>>, id: Uuid, max: usize) -> Option<Self> {
        let mut m = map.lock().expect("in-flight counts");
        let n = m.entry(id).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Self { map, id })
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut m = self.map.lock().expect("in-flight counts");
        if let Some(n) = m.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.id);
            }
        }
    }
}

/// Parses `Retry-After`: delay-seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
    Some((when - Utc::now()).to_std().unwrap_or(Duration::ZERO))
}

/// The wait before the next attempt after a transient failure, or `None` when the
/// schedule is spent.
fn next_delay(
    schedule: &RetrySchedule,
    round_attempts: u32,
    throttled: bool,
    retry_after: Option<Duration>,
    cfg: &WebhookConfig,
) -> Option<Duration> {
    let mut d = schedule.next_delay(round_attempts)?;
    if throttled {
        d = d.max(cfg.throttle_floor);
    }
    if let Some(ra) = retry_after {
        d = d.max(ra.min(cfg.retry_after_max));
    }
    Some(d)
}

/// The error chain of a failed request, without the URL (it may carry tokens).
pub(crate) fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut parts = vec![e.to_string()];
    let mut cur = std::error::Error::source(&e);
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

pub use crate::ssrf::REFUSED_BY_POLICY;

fn refused_by_policy(rec: &mut AttemptRecord, endpoint: &str, refused: &ssrf::Refused) {
    crate::metrics::ssrf_refused();
    tracing::warn!(endpoint_id = endpoint, detail = %refused, "webhook attempt refused by the SSRF guard");
    rec.error = Some(REFUSED_BY_POLICY.to_owned());
}

/// The response excerpt as text; a character cut by the byte cap is dropped whole.
fn excerpt(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(t) => t.to_owned(),
        // Only the end is incomplete: keep the valid part.
        Err(e) if e.error_len().is_none() => String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

impl WebhookDispatcher {
    /// `endpoints`: the process's endpoint cache (kept across restarts, emptied by the
    /// server too).
    pub fn from_config(
        config: &Config,
        db: PgPool,
        processor: Arc<Processor>,
        endpoints: &EndpointCache,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            db,
            http: client(&config.webhook)?,
            guard: Guard::new(config.webhook.allow_cidrs.clone()),
            key: config.secret_key.clone(),
            cfg: config.webhook.clone(),
            processor,
            lease: Self::attempt_lease(config),
            batch_size: config.webhook.batch_size,
            max_starts: config.bus_max_redeliveries,
            detach: record::Detach::new(4),
            inflight: Mutex::new(HashMap::new()),
            slots: Mutex::new(HashMap::new()),
            targets: endpoints.0.clone(),
            tokens: oauth::Tokens::default(),
        })
    }

    /// How long a started attempt belongs to its dispatcher (`deliveries.lease_until`).
    pub fn attempt_lease(config: &Config) -> Duration {
        config.bus_claim_timeout.max(config.webhook.timeout * 2)
    }

    pub async fn run<C: Consumer>(self, consumer: C, shutdown: watch::Receiver<bool>) {
        let batch_size = self.batch_size;
        let detach = self.detach.clone();
        let listener = tokio::spawn(self.targets.clone().listen(self.db.clone()));
        crate::bus::consume(consumer, Arc::new(self), batch_size, shutdown, "webhook dispatcher").await;
        detach.drain().await;
        listener.abort();
    }

    /// Endpoints of a batch, with their live secrets decrypted: from the cache, and the
    /// rest in one query.
    async fn targets(&self, ids: &[Uuid]) -> anyhow::Result<Targets> {
        let cache = &self.targets;
        let token = cache.token();
        let now = Utc::now();
        let mut out: Targets = HashMap::with_capacity(ids.len());
        let mut missing: Vec<Uuid> = Vec::new();
        for id in ids {
            match cache.get(id).filter(|t| t.valid_until.is_none_or(|v| v > now)) {
                Some(t) => {
                    out.insert(*id, t);
                }
                None => missing.push(*id),
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        for (id, t) in self.load_targets(&missing).await? {
            let t = Arc::new(t);
            cache.put(token, id, t.clone());
            out.insert(id, t);
        }
        Ok(out)
    }

    async fn load_targets(&self, ids: &[Uuid]) -> anyhow::Result<HashMap<Uuid, Target>> {
        let rows: Vec<TargetRow> = sqlx::query_as(
            "SELECT e.id, e.url, e.enabled, e.headers, e.headers_sealed, e.rate_limit, e.retry_schedule, e.transformation,
                    e.auth, e.auth_sealed,
                    e.failing_since IS NOT NULL AS failing,
                    coalesce(array_agg(s.sealed ORDER BY s.generation DESC) FILTER (WHERE s.sealed IS NOT NULL), '{}') AS sealed,
                    min(s.expires_at) AS expires
             FROM endpoints e
             LEFT JOIN endpoint_secrets s ON s.endpoint_id = e.id AND (s.expires_at IS NULL OR s.expires_at > now())
             WHERE e.id = ANY($1)
             GROUP BY e.id, e.headers_sealed",
        )
        .bind(ids)
        .fetch_all(&self.db)
        .await?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in rows {
            let mut keys = Vec::with_capacity(r.sealed.len());
            for sealed in &r.sealed {
                let secret = self.key.open(r.id, sealed).map_err(|m| anyhow::anyhow!("endpoint {}: {m}", r.id))?;
                keys.push(secrets::secret_bytes(&secret).map_err(|m| anyhow::anyhow!("endpoint {}: {m}", r.id))?);
            }
            let mut headers = HeaderMap::new();
            let clear =
                crate::webhooks::endpoints::open_headers(&self.key, r.id, r.headers_sealed.as_deref(), &r.headers)
                    .map_err(|m| anyhow::anyhow!("endpoint {}: {m}", r.id))?;
            for (k, v) in &clear {
                if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
                    headers.insert(name, value);
                }
            }
            let oauth = match (&r.auth, &r.auth_sealed) {
                (Some(auth), Some(sealed)) => {
                    let secret =
                        self.key.open_auth(r.id, sealed).map_err(|m| anyhow::anyhow!("endpoint {}: {m}", r.id))?;
                    let text = |k: &str| auth.get(k).and_then(|v| v.as_str()).map(str::to_owned);
                    Some(oauth::Credentials {
                        token_url: text("token_url").unwrap_or_default(),
                        client_id: text("client_id").unwrap_or_default(),
                        client_secret: secret,
                        scope: text("scope"),
                    })
                }
                _ => None,
            };
            out.insert(
                r.id,
                Target {
                    valid_until: r.expires,
                    url: r.url,
                    enabled: r.enabled,
                    failing: r.failing,
                    headers,
                    rate_limit: r.rate_limit,
                    schedule: r.retry_schedule.as_deref().and_then(|s| RetrySchedule::parse(s).ok()),
                    keys,
                    transformation: r.transformation.map(|script| (Arc::from(script), clear)),
                    oauth,
                },
            );
        }
        Ok(out)
    }

    async fn process<C: Consumer>(self: &Arc<Self>, consumer: &mut C, batch: &[Received]) -> anyhow::Result<()> {
        let claimed = record::begin(&self.db, consumer, Channel::Webhook, batch, self.lease, self.max_starts).await?;
        let endpoint_ids: Vec<Uuid> = {
            let mut ids: Vec<Uuid> = claimed.owned.iter().filter_map(|(_, s)| s.endpoint_id).collect();
            ids.sort();
            ids.dedup();
            ids
        };
        let targets = Arc::new(self.targets(&endpoint_ids).await?);
        self.prune_slots();
        let per_endpoint = self.cfg.endpoint_concurrency;
        let concurrency = self.cfg.concurrency;
        // Each endpoint may start attempts for one request timeout per batch; what it has
        // not started by then is deferred to the next batch, so a slow endpoint that does
        // answer cannot stretch a batch (and everyone's next one) to many timeouts.
        let deadline = Instant::now() + self.cfg.timeout.max(Duration::from_secs(1));
        // Per endpoint: attempts start in bus order, up to endpoint_concurrency at once;
        // endpoints in parallel; each endpoint's outcomes are recorded as soon as its
        // attempts are done.
        let groups = |owned: Vec<(usize, Started)>| {
            let groups = record::group_by(owned, |_, s| s.target.clone());
            let this = self.clone();
            let targets = targets.clone();
            stream::iter(groups)
                .map(move |(endpoint, items)| {
                    let this = this.clone();
                    let targets = targets.clone();
                    async move {
                        // Every item of the group names the same endpoint (or none: deleted).
                        let id: Option<Uuid> = items.first().and_then(|(_, s)| s.endpoint_id);
                        let target = id.and_then(|id| targets.get(&id)).map(|t| &**t);
                        // Set when an attempt to this endpoint times out or cannot connect:
                        // its attempts not yet started are deferred instead of holding the
                        // endpoint's other messages for a timeout each.
                        let tripped = AtomicBool::new(false);
                        let tripped = &tripped;
                        stream::iter(items)
                            .map(|(idx, s)| {
                                let this = this.clone();
                                let endpoint = endpoint.clone();
                                async move { (idx, this.attempt(id, target, &endpoint, s, tripped, deadline).await) }
                            })
                            .buffered(per_endpoint)
                            .collect::<Vec<_>>()
                            .await
                    }
                })
                .buffer_unordered(concurrency)
        };
        let on_recorded = {
            let (this, targets) = (self.clone(), targets.clone());
            move |made: Vec<(AttemptRecord, Health)>| {
                let (this, targets) = (this.clone(), targets.clone());
                async move { this.recorded(made, &targets).await }
            }
        };
        record::drive(&self.db, consumer, Topic::Webhook, batch, claimed, self.lease, &self.detach, groups, on_recorded)
            .await
    }

    /// After a part of a batch is recorded: log it, and update its endpoints' health.
    async fn recorded(&self, made: Vec<(AttemptRecord, Health)>, targets: &Targets) {
        // Per endpoint: did anything succeed, did everything fail, did it say 410.
        let mut health: HashMap<Uuid, Health> = HashMap::new();
        for (rec, h) in &made {
            tracing::info!(
                delivery_id = %rec.delivery_id, endpoint_id = %rec.key, attempt = rec.attempt, outcome = rec.outcome.as_str(),
                http_status = rec.http_status, duration_ms = rec.duration_ms, "webhook attempt recorded"
            );
            if let Ok(id) = rec.key.parse::<Uuid>() {
                let e = health.entry(id).or_insert(Health::NotTried);
                *e = match (*e, *h) {
                    (Health::Gone, _) | (_, Health::Gone) => Health::Gone,
                    (Health::Ok, _) | (_, Health::Ok) => Health::Ok,
                    (Health::Failed, _) | (_, Health::Failed) => Health::Failed,
                    _ => Health::NotTried,
                };
            }
        }
        if let Err(e) = self.endpoint_health(&health, targets).await {
            // The attempts are recorded; the next failure re-evaluates the endpoint.
            tracing::warn!(error = %format!("{e:#}"), "cannot update endpoint health");
        }
    }

    /// Forgets pacing slots in the past (an endpoint not sent to for a while), so the
    /// map holds only endpoints being paced right now.
    fn prune_slots(&self) {
        let mut slots = self.slots.lock().expect("slots");
        if slots.len() > 64 {
            let now = Instant::now();
            slots.retain(|_, t| *t > now);
        }
    }

    /// Tracks since when each endpoint has been failing (in PostgreSQL), and disables
    /// endpoints that answered 410 or have failed for longer than the window.
    async fn endpoint_health(&self, health: &HashMap<Uuid, Health>, targets: &Targets) -> anyhow::Result<()> {
        // Only endpoints whose state changes need a write: a success while failing, or a
        // failure while healthy (as loaded for this batch; the UPDATE re-checks).
        let (ids, ok): (Vec<Uuid>, Vec<bool>) = health
            .iter()
            .filter(|(id, h)| {
                let failing = targets.get(id).is_some_and(|t| t.failing);
                (**h == Health::Ok && failing) || (**h == Health::Failed && !failing)
            })
            .map(|(id, h)| (*id, *h == Health::Ok))
            .unzip();
        if !ids.is_empty() {
            sqlx::query(
                "UPDATE endpoints e SET failing_since = CASE WHEN h.ok THEN NULL ELSE now() END
                 FROM unnest($1::uuid[], $2::bool[]) AS h(id, ok)
                 WHERE e.id = h.id AND e.enabled
                   AND ((h.ok AND e.failing_since IS NOT NULL) OR (NOT h.ok AND e.failing_since IS NULL))",
            )
            .bind(&ids)
            .bind(&ok)
            .execute(&self.db)
            .await?;
        }
        let failing: Vec<Uuid> = health.iter().filter(|(_, h)| **h == Health::Failed).map(|(id, _)| *id).collect();
        let expired: Vec<(Uuid, DateTime<Utc>)> = if failing.is_empty() {
            Vec::new()
        } else {
            sqlx::query_as(
                "SELECT id, failing_since FROM endpoints
                 WHERE id = ANY($1) AND enabled AND failing_since < now() - make_interval(secs => $2)",
            )
            .bind(&failing)
            .bind(self.cfg.disable_after.as_secs_f64())
            .fetch_all(&self.db)
            .await?
        };
        for (id, since) in expired {
            let reason = format!(
                "every delivery attempt failed for longer than {} (failing since {})",
                humantime::format_duration(self.cfg.disable_after),
                since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
            crate::webhooks::lifecycle::disable_and_notify(&self.db, &self.processor, id, &reason).await?;
        }
        for (id, _) in health.iter().filter(|(_, h)| **h == Health::Gone) {
            crate::webhooks::lifecycle::disable_and_notify(
                &self.db,
                &self.processor,
                *id,
                "the endpoint answered 410 Gone",
            )
            .await?;
        }
        Ok(())
    }

    /// Waits for this endpoint's next free slot when it has a rate limit. When that slot
    /// is further than [`MAX_PACE_WAIT`], takes nothing and says how long it is.
    async fn pace(&self, id: Uuid, per_second: i32) -> Result<(), Duration> {
        let wait = {
            let mut slots = self.slots.lock().expect("slots");
            let now = Instant::now();
            let slot = slots.get(&id).copied().filter(|t| *t > now).unwrap_or(now);
            let wait = slot - now;
            if wait > MAX_PACE_WAIT {
                return Err(wait);
            }
            slots.insert(id, slot + Duration::from_secs_f64(1.0 / per_second as f64));
            wait
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    async fn attempt(
        &self,
        id: Option<Uuid>,
        target: Option<&Target>,
        key: &str,
        s: Started,
        tripped: &AtomicBool,
        deadline: Instant,
    ) -> Step {
        let defer = |s: &Started, wait: Duration| {
            record::Step::Deferred(Deferred {
                delivery_id: s.id,
                attempt: s.attempt,
                until: crate::retry::after(wait.min(crate::retry::MAX_DELAY)).unwrap_or_else(Utc::now),
                key: key.to_owned(),
            })
        };
        if tripped.load(Ordering::Relaxed) {
            return defer(&s, self.cfg.throttle_floor);
        }
        if Instant::now() >= deadline {
            return defer(&s, Duration::ZERO);
        }
        if let (Some(id), Some(Target { enabled: true, rate_limit: Some(rate), .. })) = (id, target) {
            if let Err(wait) = self.pace(id, *rate).await {
                return defer(&s, wait);
            }
        }
        // An endpoint still busy with a detached remainder's attempts gets no more than
        // endpoint_concurrency requests in all.
        let _slot = match id {
            Some(id) => match InFlight::take(&self.inflight, id, self.cfg.endpoint_concurrency) {
                Some(slot) => Some(slot),
                None => return defer(&s, Duration::from_secs(1)),
            },
            None => None,
        };
        let (rec, health) = self.make(target, key, s).await;
        if health == Health::Failed && rec.http_status.is_none() && rec.outcome == Outcome::TransientFailure {
            tripped.store(true, Ordering::Relaxed);
        }
        record::Step::Made(rec, health)
    }

    /// Runs the endpoint's transformation on a stored body: the URL, body and headers to
    /// send, `None` when the script cancelled the delivery, or why it failed.
    async fn transform(
        &self,
        script: &Arc<str>,
        headers: &BTreeMap<String, String>,
        url: &str,
        body: &str,
    ) -> Result<Option<(String, String, HeaderMap)>, String> {
        let clock = Instant::now();
        let payload: serde_json::Value =
            serde_json::from_str(body).map_err(|e| format!("stored webhook content is unreadable: {e}"))?;
        let input = transform::Webhook {
            event_type: payload.get("type").and_then(|t| t.as_str()).unwrap_or_default().to_owned(),
            payload,
            url: url.to_owned(),
            headers: headers.clone(),
        };
        let ran = transform::run_blocking(script.clone(), input, transform::Limits::default()).await;
        let checked = ran
            .map_err(|f| format!("transformation failed: {f}"))
            .and_then(|o| transformations::checked(&self.guard, o).map_err(|e| e.to_string()));
        let outcome = match &checked {
            Ok(Some(_)) => "send",
            Ok(None) => "cancel",
            Err(_) => "error",
        };
        crate::metrics::transformation(outcome, clock.elapsed().as_secs_f64());
        let Some((w, body)) = checked? else { return Ok(None) };
        let mut out = HeaderMap::new();
        for (k, v) in &w.headers {
            if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
                out.insert(name, value);
            }
        }
        Ok(Some((w.url, body, out)))
    }

    /// An attempt that failed before its request (its transformation or its token):
    /// a transient failure, retried on the endpoint's schedule.
    fn failed_before_sending(
        &self,
        t: &Target,
        s: &Started,
        mut rec: AttemptRecord,
        clock: Instant,
        error: String,
    ) -> AttemptRecord {
        rec.outcome = Outcome::TransientFailure;
        rec.error = Some(error);
        rec.duration_ms = clock.elapsed().as_millis().min(i32::MAX as u128) as i32;
        crate::metrics::attempt("webhook", rec.outcome.as_str(), clock.elapsed().as_secs_f64());
        let schedule = t.schedule.as_ref().unwrap_or(&self.cfg.retry_schedule);
        rec.retry_at = next_delay(schedule, s.round_attempts(), false, None, &self.cfg).and_then(crate::retry::after);
        rec
    }

    /// Makes one attempt: the signed POST, and its classification.
    async fn make(&self, target: Option<&Target>, key: &str, s: Started) -> (AttemptRecord, Health) {
        let clock = Instant::now();
        let mut rec = AttemptRecord::begin(&s, key, Outcome::PermanentFailure);
        let Some(t) = target else {
            rec.error = Some("the endpoint was deleted".into());
            return (rec, Health::NotTried);
        };
        if !t.enabled {
            rec.error = Some("the endpoint is disabled".into());
            return (rec, Health::NotTried);
        }
        let Some(stored) = s.content.get("body").and_then(|b| b.as_str()) else {
            rec.error = Some("stored webhook content is unreadable".into());
            return (rec, Health::NotTried);
        };
        let mut body = std::borrow::Cow::Borrowed(stored);
        let mut headers = t.headers.clone();
        let mut target_url = std::borrow::Cow::Borrowed(t.url.as_str());
        if let Some((script, clear)) = &t.transformation {
            match self.transform(script, clear, &t.url, stored).await {
                Ok(Some((url, new_body, new_headers))) => {
                    body = new_body.into();
                    headers = new_headers;
                    target_url = url.into();
                }
                Ok(None) => {
                    rec.outcome = Outcome::Cancelled;
                    rec.error = Some("cancelled by the endpoint's transformation".into());
                    rec.duration_ms = clock.elapsed().as_millis().min(i32::MAX as u128) as i32;
                    crate::metrics::attempt("webhook", rec.outcome.as_str(), clock.elapsed().as_secs_f64());
                    return (rec, Health::NotTried);
                }
                // Only this attempt fails; it is retried on the schedule, so a script the
                // owner fixes meanwhile is used by the next one.
                Err(e) => return (self.failed_before_sending(t, &s, rec, clock, e), Health::NotTried),
            }
        }
        let url: Url = match target_url.parse() {
            Ok(u) => u,
            Err(e) => {
                rec.error = Some(format!("the endpoint URL is invalid: {e}"));
                return (rec, Health::Failed);
            }
        };
        if let Err(refused) = self.guard.check_url(&url) {
            refused_by_policy(&mut rec, key, &refused);
            return (rec, Health::Failed);
        }

        if let (Some(creds), Some(endpoint)) = (&t.oauth, s.endpoint_id) {
            match self.tokens.bearer(&self.http, endpoint, creds).await {
                Ok(bearer) => {
                    headers.insert(AUTHORIZATION, bearer);
                }
                // The endpoint's own token service failed: retried like a failed request.
                Err(e) => return (self.failed_before_sending(t, &s, rec, clock, e), Health::Failed),
            }
        }

        let msg_id = s.id.to_string();
        let ts = Utc::now().timestamp();
        // Herald's own headers last: custom headers never override them.
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert("webhook-id", HeaderValue::from_str(&msg_id).expect("uuid is a header value"));
        headers.insert("webhook-timestamp", HeaderValue::from(ts));
        let signature = secrets::signature_header(&t.keys, &msg_id, ts, body.as_bytes());
        headers.insert("webhook-signature", HeaderValue::from_str(&signature).expect("base64 is a header value"));

        let sent = self.http.post(url).headers(headers).body(body.into_owned()).send().await;
        let mut throttled = false;
        let mut wait_hint = None;
        let health = match sent {
            Ok(mut resp) => {
                let status = resp.status();
                rec.http_status = Some(status.as_u16() as i16);
                wait_hint = retry_after(resp.headers());
                let location =
                    resp.headers().get(reqwest::header::LOCATION).and_then(|l| l.to_str().ok()).map(str::to_owned);
                let mut buf: Vec<u8> = Vec::new();
                loop {
                    match resp.chunk().await {
                        Ok(Some(chunk)) => {
                            let room = EXCERPT_BYTES - buf.len();
                            buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
                            if buf.len() >= EXCERPT_BYTES {
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            if !status.is_success() {
                                rec.error = Some(format!("reading the response failed: {}", describe(e)));
                            }
                            break;
                        }
                    }
                }
                if !buf.is_empty() {
                    rec.response_excerpt = Some(excerpt(&buf));
                }
                if status == StatusCode::UNAUTHORIZED && t.oauth.is_some() {
                    // Perhaps revoked before it expired: the next attempt fetches a new one.
                    if let Some(endpoint) = s.endpoint_id {
                        self.tokens.forget(endpoint);
                    }
                }
                if status.is_success() {
                    rec.outcome = Outcome::Succeeded;
                    rec.error = None;
                    Health::Ok
                } else if status == StatusCode::GONE {
                    rec.error = Some("410 Gone: the endpoint is disabled".into());
                    Health::Gone
                } else {
                    rec.outcome = Outcome::TransientFailure;
                    throttled = status == StatusCode::TOO_MANY_REQUESTS;
                    if rec.error.is_none() {
                        rec.error = Some(if status.is_redirection() {
                            match location {
                                Some(l) => format!("HTTP {status}: redirects are not followed (Location: {l})"),
                                None => format!("HTTP {status}: redirects are not followed"),
                            }
                        } else {
                            format!("HTTP {status}")
                        });
                    }
                    Health::Failed
                }
            }
            Err(e) => {
                if let Some(refused) = ssrf::refused_in(&e) {
                    refused_by_policy(&mut rec, key, refused);
                } else if e.is_timeout() {
                    rec.outcome = Outcome::TransientFailure;
                    throttled = true;
                    rec.error = Some(format!("timed out after {} ms", clock.elapsed().as_millis()));
                } else {
                    rec.outcome = Outcome::TransientFailure;
                    rec.error = Some(describe(e));
                }
                Health::Failed
            }
        };
        rec.duration_ms = clock.elapsed().as_millis().min(i32::MAX as u128) as i32;
        crate::metrics::attempt("webhook", rec.outcome.as_str(), clock.elapsed().as_secs_f64());
        if rec.outcome == Outcome::TransientFailure {
            let schedule = t.schedule.as_ref().unwrap_or(&self.cfg.retry_schedule);
            rec.retry_at =
                next_delay(schedule, s.round_attempts(), throttled, wait_hint, &self.cfg).and_then(crate::retry::after);
        }
        (rec, health)
    }
}

impl<C: Consumer> BatchHandler<C> for Arc<WebhookDispatcher> {
    async fn handle(&mut self, consumer: &mut C, batch: &[Received]) -> anyhow::Result<()> {
        self.process(consumer, batch).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> WebhookConfig {
        WebhookConfig {
            retry_schedule: RetrySchedule::parse("1s,2s").unwrap(),
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            concurrency: 1,
            batch_size: 1,
            endpoint_concurrency: 1,
            allow_cidrs: vec![],
            throttle_floor: Duration::from_secs(10),
            retry_after_max: Duration::from_secs(60),
            disable_after: Duration::from_secs(60),
            secret_grace: Duration::from_secs(60),
        }
    }

    #[test]
    fn delays_honour_floor_retry_after_and_exhaustion() {
        let c = cfg();
        let s = c.retry_schedule.clone();
        let d = next_delay(&s, 1, false, None, &c).unwrap();
        assert!(d >= Duration::from_millis(800) && d <= Duration::from_millis(1200));
        assert!(next_delay(&s, 1, true, None, &c).unwrap() >= Duration::from_secs(10), "throttle floor");
        assert_eq!(next_delay(&s, 1, false, Some(Duration::from_secs(30)), &c).unwrap(), Duration::from_secs(30));
        assert_eq!(
            next_delay(&s, 1, false, Some(Duration::from_secs(3600)), &c).unwrap(),
            Duration::from_secs(60),
            "capped"
        );
        assert_eq!(next_delay(&s, 3, true, Some(Duration::from_secs(5)), &c), None, "spent");
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = (Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
        h.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        let d = retry_after(&h).unwrap();
        assert!(d > Duration::from_secs(100) && d <= Duration::from_secs(120), "{d:?}");
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn excerpts_are_capped_on_a_char_boundary() {
        let text = "é".repeat(3000); // 6000 bytes
        let e = excerpt(&text.as_bytes()[..EXCERPT_BYTES.min(text.len())]);
        assert!(e.len() <= EXCERPT_BYTES && e.chars().all(|c| c == 'é'));
        // 4096 is not a multiple of 3: the cap cuts a '€' in two, which is dropped.
        let euros = "€".repeat(2000);
        let e = excerpt(&euros.as_bytes()[..EXCERPT_BYTES]);
        assert_eq!(e.chars().count(), EXCERPT_BYTES / 3);
        assert!(e.chars().all(|c| c == '€'));
    }
}
