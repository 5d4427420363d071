//! Email tracking: opens (a 1×1 pixel) and clicks (links rewritten through Herald), for
//! template versions that opt in (`track_opens`, `track_clicks`), under
//! `HERALD_TRACKING` (`full`, `anonymous` or `off`).
//!
//! - The email dispatcher rewrites a message as it builds it ([`rewrite`]); the stored
//!   delivery keeps the content as rendered, so with tracking off (or a version that did
//!   not opt in) the HTML goes out byte for byte as rendered.
//! - A token is sealed with `HERALD_SECRET_KEY` (XChaCha20-Poly1305): it carries the
//!   delivery id, the kind (open or click) and the link's number — never the address or
//!   the URL. A click's target is read from the stored delivery (the same [`rewrite`]
//!   numbering run again), never from the request: no open redirect.
//! - `/t/o/<token>` and `/t/c/<token>` answer without waiting on the recording: hits go
//!   through a bounded channel to one writer task ([`run_recorder`]), which records them
//!   in batches and emits `email.opened` / `email.clicked` for a delivery's first human
//!   open and each link's first human click. When the channel is full, hits are dropped
//!   and counted (`herald_tracking_dropped_total`), never waited on.
//! - Machines are marked, not counted as people: HEAD requests, known mail-privacy and
//!   link-scanning proxies (by User-Agent), and anything within a second of delivery.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::{mpsc, watch, Mutex};
use uuid::Uuid;

use crate::config::TrackingMode;
use crate::notifications::accept::{self, Processor, Submission};
use crate::secrets::SecretKey;
use crate::templates::RenderedEmail;

/// A transparent 1×1 GIF.
pub const PIXEL_GIF: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff,
    0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02,
    0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// Links numbered per email; more are left as they are.
const MAX_LINKS: usize = 1000;
/// An open or click this soon after delivery is a machine's (scanners, prefetch).
const TOO_SOON: Duration = Duration::from_secs(1);
/// Hits waiting to be recorded; more are dropped (and counted).
const QUEUE: usize = 10_000;
/// Hits recorded per transaction.
const BATCH: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Open,
    Click,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Open => "open",
            Kind::Click => "click",
        }
    }
}

/// What a token names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub delivery: Uuid,
    pub kind: Kind,
    pub link: u16,
}

impl Token {
    pub fn seal(&self, key: &SecretKey) -> String {
        let mut msg = Vec::with_capacity(19);
        msg.extend_from_slice(self.delivery.as_bytes());
        msg.push(match self.kind {
            Kind::Open => b'o',
            Kind::Click => b'c',
        });
        msg.extend_from_slice(&self.link.to_be_bytes());
        key.seal_token(&msg)
    }

    /// `None` for a forged, altered or foreign token (all alike).
    pub fn open(key: &SecretKey, token: &str) -> Option<Self> {
        let msg = key.open_token(token)?;
        if msg.len() != 19 {
            return None;
        }
        let kind = match msg[16] {
            b'o' => Kind::Open,
            b'c' => Kind::Click,
            _ => return None,
        };
        Some(Self { delivery: Uuid::from_slice(&msg[..16]).ok()?, kind, link: u16::from_be_bytes([msg[17], msg[18]]) })
    }
}

/// An email as sent, and the links it numbered (in order: HTML first, then text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    pub html: String,
    pub text: String,
    pub links: Vec<String>,
}

/// What to do to an email.
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    pub opens: bool,
    pub clicks: bool,
    /// Rewrite the text part's links too.
    pub text_links: bool,
    /// `HERALD_PUBLIC_URL`, no trailing slash.
    pub base: &'a str,
}

/// Is this URL one to track? `http(s)` only, never an unsubscribe link.
fn trackable(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    (lower.starts_with("http://") || lower.starts_with("https://")) && !lower.contains("unsubscribe")
}

/// Numbers links: the same URL keeps its first number.
struct Numbering {
    links: Vec<String>,
    index: HashMap<String, u16>,
}

impl Numbering {
    fn number(&mut self, url: &str) -> Option<u16> {
        if let Some(i) = self.index.get(url) {
            return Some(*i);
        }
        if self.links.len() >= MAX_LINKS {
            return None;
        }
        let i = self.links.len() as u16;
        self.links.push(url.to_owned());
        self.index.insert(url.to_owned(), i);
        Some(i)
    }
}

/// Rewrites an email for tracking: a pixel before `</body>` (or at the end) when
/// `opens`, and every trackable `<a href>` (and, with `text_links`, every `http(s)`
/// URL of the text part) through `/t/c/<token>` when `clicks`. A link with the
/// `data-herald-notrack` attribute is left alone (the attribute is removed), as are
/// `mailto:` and other schemes and unsubscribe links. `token` makes each token.
///
/// Deterministic in its numbering, so the click handler finds a link's URL by running
/// it again on the stored content.
pub fn rewrite(html: &str, text: &str, o: Options<'_>, token: &dyn Fn(Kind, u16) -> String) -> Rewritten {
    use lol_html::html_content::ContentType;
    use lol_html::{element, end, rewrite_str, RewriteStrSettings};

    let numbering = RefCell::new(Numbering { links: Vec::new(), index: HashMap::new() });
    if !o.opens && !o.clicks {
        return Rewritten { html: html.to_owned(), text: text.to_owned(), links: Vec::new() };
    }
    let pixel = format!(
        r#"<img src="{}/t/o/{}" width="1" height="1" alt="" style="display:block;border:0;width:1px;height:1px">"#,
        o.base,
        token(Kind::Open, 0)
    );
    let placed = Rc::new(Cell::new(false));
    let mut elements = Vec::new();
    if o.clicks {
        elements.push(element!("a[href]", |el| {
            if el.has_attribute("data-herald-notrack") {
                el.remove_attribute("data-herald-notrack");
                return Ok(());
            }
            let raw = el.get_attribute("href").unwrap_or_default();
            let url = html_escape::decode_html_entities(raw.trim()).into_owned();
            if !trackable(&url) {
                return Ok(());
            }
            if let Some(i) = numbering.borrow_mut().number(&url) {
                el.set_attribute("href", &format!("{}/t/c/{}", o.base, token(Kind::Click, i)))?;
            }
            Ok(())
        }));
    }
    if o.opens {
        let (pixel, placed) = (pixel.clone(), placed.clone());
        elements.push(element!("body", move |el| {
            let (pixel, placed) = (pixel.clone(), placed.clone());
            if let Some(handlers) = el.end_tag_handlers() {
                let before_end: lol_html::EndTagHandler<'static> = Box::new(move |end| {
                    end.before(&pixel, ContentType::Html);
                    placed.set(true);
                    Ok(())
                });
                handlers.push(before_end);
            }
            Ok(())
        }));
    }
    let mut document = Vec::new();
    if o.opens {
        let (pixel, placed) = (pixel.clone(), placed.clone());
        document.push(end!(move |end| {
            if !placed.get() {
                end.append(&pixel, ContentType::Html);
            }
            Ok(())
        }));
    }
    let settings = RewriteStrSettings {
        element_content_handlers: elements,
        document_content_handlers: document,
        ..Default::default()
    };
    let html = match rewrite_str(html, settings) {
        Ok(h) => h,
        Err(e) => {
            // Never fails for text input short of memory limits; send it untracked then.
            tracing::warn!(error = %e, "email tracking: the HTML could not be rewritten; sending it as rendered");
            html.to_owned()
        }
    };
    let text = if o.clicks && o.text_links {
        rewrite_text(text, &mut numbering.borrow_mut(), o.base, token)
    } else {
        text.to_owned()
    };
    Rewritten { html, text, links: numbering.into_inner().links }
}

/// The `http(s)://` URLs of a plain-text part, rewritten. A URL ends at whitespace or
/// one of `<>"'`; trailing punctuation (`.,;:!?)`) stays outside it.
fn rewrite_text(text: &str, numbering: &mut Numbering, base: &str, token: &dyn Fn(Kind, u16) -> String) -> String {
    // ASCII lowercasing keeps byte offsets, so positions in `lower` are positions in `text`.
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while let Some(found) = lower[at..].find("http") {
        let start = at + found;
        if !(lower[start..].starts_with("http://") || lower[start..].starts_with("https://")) {
            out.push_str(&text[at..start + 4]);
            at = start + 4;
            continue;
        }
        out.push_str(&text[at..start]);
        let tail = &text[start..];
        let mut len = tail.find(|c: char| c.is_whitespace() || "<>\"'".contains(c)).unwrap_or(tail.len());
        while tail[..len].ends_with(['.', ',', ';', ':', '!', '?', ')']) {
            len -= 1;
        }
        let url = &tail[..len];
        match (trackable(url) && url.len() > "https://".len()).then(|| numbering.number(url)).flatten() {
            Some(i) => out.push_str(&format!("{base}/t/c/{}", token(Kind::Click, i))),
            None => out.push_str(url),
        }
        at = start + len;
    }
    out.push_str(&text[at..]);
    out
}

/// The links a stored email numbered when it was sent. The text part's links come after
/// the HTML's, so the numbers are the same whether `HERALD_TRACKING_TEXT_LINKS` was on.
pub fn links(content: &RenderedEmail) -> Vec<String> {
    let o = Options { opens: false, clicks: content.track_clicks, text_links: true, base: "" };
    rewrite(&content.html, &content.text, o, &|_, _| String::new()).links
}

/// Why a hit is a machine's, if it is: a HEAD request, or a known proxy by User-Agent.
/// (Too soon after delivery is decided when recording.)
pub fn machine_by_request(head: bool, user_agent: Option<&str>) -> Option<&'static str> {
    if head {
        return Some("head");
    }
    let ua = user_agent.unwrap_or("");
    // Apple Mail Privacy Protection fetches with exactly this; the others name themselves.
    const PROXIES: [&str; 12] = [
        "googleimageproxy",
        "yahoomailproxy",
        "ggpht.com",
        "bingpreview",
        "barracuda",
        "mimecast",
        "proofpoint",
        "microsoft office protocol discovery",
        "ms-office",
        "symantec",
        "bot",
        "spider",
    ];
    let lower = ua.to_ascii_lowercase();
    if ua.trim() == "Mozilla/5.0" || PROXIES.iter().any(|p| lower.contains(p)) {
        return Some("proxy");
    }
    None
}

/// One open or click, as the handler saw it.
#[derive(Debug, Clone)]
pub struct Hit {
    pub token: Token,
    pub at: DateTime<Utc>,
    pub machine: Option<&'static str>,
}

/// The handlers' side: opens tokens, queues hits, finds click targets.
#[derive(Clone)]
pub struct Tracker {
    key: SecretKey,
    previous: Option<SecretKey>,
    tx: mpsc::Sender<Hit>,
    pub mode: TrackingMode,
}

/// The writer's side of the queue, shared by every (re)start of the recorder task.
pub type HitQueue = Arc<Mutex<mpsc::Receiver<Hit>>>;

impl Tracker {
    /// `previous`: the key before the last rotation, which sealed the links of emails
    /// sent before it (`HERALD_PREVIOUS_SECRET_KEY`).
    pub fn new(key: SecretKey, previous: Option<SecretKey>, mode: TrackingMode) -> (Self, HitQueue) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Self { key, previous, tx, mode }, Arc::new(Mutex::new(rx)))
    }

    pub fn token(&self, token: &str) -> Option<Token> {
        if self.mode == TrackingMode::Off {
            return None;
        }
        Token::open(&self.key, token).or_else(|| Token::open(self.previous.as_ref()?, token))
    }

    /// Queues a hit without waiting; a full queue drops it (counted).
    pub fn hit(&self, hit: Hit) {
        if self.tx.try_send(hit).is_err() {
            crate::metrics::tracking_dropped();
        }
    }

    /// Where a click token leads: the link it numbers in its stored delivery.
    pub async fn click_target(&self, db: &PgPool, t: &Token) -> sqlx::Result<Option<String>> {
        if t.kind != Kind::Click {
            return Ok(None);
        }
        let content: Option<serde_json::Value> =
            sqlx::query_scalar("SELECT content FROM deliveries WHERE id = $1 AND channel = 'email'")
                .bind(t.delivery)
                .fetch_optional(db)
                .await?;
        let Some(content) = content.and_then(|c| serde_json::from_value::<RenderedEmail>(c).ok()) else {
            return Ok(None);
        };
        Ok(links(&content).into_iter().nth(t.link as usize))
    }
}

/// Records hits in batches until shutdown; restartable (the queue outlives it).
pub async fn run_recorder(
    db: PgPool,
    processor: Arc<Processor>,
    queue: HitQueue,
    mode: TrackingMode,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut rx = queue.lock().await;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let (stopping, closed) = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => (false, n == 0),
            r = shutdown.wait_for(|s| *s) => {
                drop(r);
                (true, false)
            }
        };
        if closed {
            // Every sender is gone: the HTTP server stopped first on the way out. Not a
            // failure to restart from; wait for the stop itself.
            let _ = shutdown.wait_for(|s| *s).await;
            return Ok(());
        }
        if stopping {
            // Record what is already queued, then stop.
            while let Ok(h) = rx.try_recv() {
                batch.push(h);
                if batch.len() == BATCH {
                    record(&db, &processor, std::mem::take(&mut batch), mode).await?;
                }
            }
            if !batch.is_empty() {
                record(&db, &processor, std::mem::take(&mut batch), mode).await?;
            }
            return Ok(());
        }
        let hits = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
        if let Err(e) = record(&db, &processor, hits, mode).await {
            // A lost hit is a lost statistic, never a lost notification: log and go on.
            tracing::warn!(error = %format!("{e:#}"), "email tracking: a batch of hits could not be recorded");
        }
    }
}

#[derive(sqlx::FromRow)]
struct DeliveryRow {
    id: Uuid,
    status: crate::model::DeliveryStatus,
    updated_at: DateTime<Utc>,
    content: serde_json::Value,
    notification_id: Uuid,
    owner: String,
    event_type: String,
}

/// The rows of one batch, a column each (for one `INSERT … unnest`).
#[derive(Default)]
struct Columns {
    at: Vec<DateTime<Utc>>,
    delivery: Vec<Option<Uuid>>,
    template: Vec<String>,
    version: Vec<i32>,
    kind: Vec<&'static str>,
    link: Vec<Option<i32>>,
    machine: Vec<Option<&'static str>>,
}

/// Records one batch of hits in one transaction, and the events of first human opens and
/// clicks when some endpoint listens for them.
pub async fn record(db: &PgPool, processor: &Processor, hits: Vec<Hit>, mode: TrackingMode) -> anyhow::Result<()> {
    let ids: Vec<Uuid> = hits.iter().map(|h| h.token.delivery).collect::<HashSet<_>>().into_iter().collect();
    let rows: Vec<DeliveryRow> = sqlx::query_as(
        "SELECT d.id, d.status, d.updated_at, d.content, n.id AS notification_id, n.owner, n.event_type
         FROM deliveries d JOIN notifications n ON n.id = d.notification_id
         WHERE d.id = ANY($1) AND d.channel = 'email'",
    )
    .bind(&ids)
    .fetch_all(db)
    .await?;
    let deliveries: HashMap<Uuid, (DeliveryRow, RenderedEmail)> = rows
        .into_iter()
        .filter_map(|r| serde_json::from_value::<RenderedEmail>(r.content.clone()).ok().map(|c| (r.id, (r, c))))
        .collect();
    let full = mode == TrackingMode::Full;
    // (delivery, kind, link) already opened/clicked by a person: no second event.
    let mut seen: HashSet<(Uuid, &'static str, i32)> = HashSet::new();
    if full {
        let done: Vec<(Uuid, String, Option<i32>)> = sqlx::query_as(
            "SELECT DISTINCT delivery_id, kind, link_index FROM email_events
             WHERE delivery_id = ANY($1) AND machine IS NULL",
        )
        .bind(&ids)
        .fetch_all(db)
        .await?;
        for (d, k, l) in done {
            seen.insert((d, if k == "open" { "open" } else { "click" }, l.unwrap_or(-1)));
        }
    }
    let mut cols = Columns::default();
    let mut firsts = Vec::new();
    for h in &hits {
        let Some((d, content)) = deliveries.get(&h.token.delivery) else { continue };
        let kind = h.token.kind;
        if (kind == Kind::Open && !content.track_opens) || (kind == Kind::Click && !content.track_clicks) {
            continue;
        }
        let delivered = d.status == crate::model::DeliveryStatus::Succeeded;
        let too_soon = !delivered || h.at < d.updated_at + chrono::Duration::from_std(TOO_SOON).expect("a second fits");
        let machine = h.machine.or(too_soon.then_some("too_soon"));
        let link = (kind == Kind::Click).then_some(h.token.link as i32);
        cols.at.push(h.at);
        cols.delivery.push(full.then_some(d.id));
        cols.template.push(content.template.clone());
        cols.version.push(content.version);
        cols.kind.push(kind.as_str());
        cols.link.push(link);
        cols.machine.push(machine);
        crate::metrics::tracking_event(kind.as_str(), machine.is_none());
        if full && machine.is_none() && seen.insert((d.id, kind.as_str(), link.unwrap_or(-1))) {
            firsts.push((d, content, kind, link, h.at));
        }
    }
    if cols.at.is_empty() {
        return Ok(());
    }
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO email_events (at, delivery_id, template_key, template_version, kind, link_index, machine)
         SELECT * FROM unnest($1::timestamptz[], $2::uuid[], $3::text[], $4::int[], $5::text[], $6::int[], $7::text[])",
    )
    .bind(&cols.at)
    .bind(&cols.delivery)
    .bind(&cols.template)
    .bind(&cols.version)
    .bind(&cols.kind)
    .bind(&cols.link)
    .bind(&cols.machine)
    .execute(&mut *tx)
    .await?;
    // Events only when some endpoint may take them: no empty notifications in history.
    let listened: Vec<String> = sqlx::query_scalar(
        "SELECT t.name FROM event_types t WHERE t.name IN ('email.opened', 'email.clicked')
           AND EXISTS (SELECT 1 FROM endpoints e WHERE e.enabled AND herald_filter_matches(e.event_types, t.name, true))",
    )
    .fetch_all(&mut *tx)
    .await?;
    for (d, content, kind, link, at) in firsts {
        let event_type = if kind == Kind::Open { "email.opened" } else { "email.clicked" };
        if !listened.iter().any(|l| l == event_type) {
            continue;
        }
        let when = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut payload = json!({
            "delivery_id": d.id,
            "notification_id": d.notification_id,
            "event_type": d.event_type,
            "template": { "key": content.template, "version": content.version },
        });
        match link {
            None => payload["opened_at"] = json!(when),
            Some(i) => {
                payload["clicked_at"] = json!(when);
                let url = links(content).into_iter().nth(i as usize);
                payload["link"] = json!({ "index": i, "url": url });
            }
        }
        let prepared = processor
            .prepare(Submission {
                event_type: event_type.into(),
                payload,
                recipients: None,
                owner: d.owner.clone(),
                key_id: None,
                operational_owner: Some(d.owner.clone()),
                owners: None,
            })
            .await?;
        accept::insert(&mut tx, prepared).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// One link's clicks on a delivery.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct LinkClicks {
    pub index: i32,
    pub url: String,
    pub clicks: i64,
    pub first_clicked_at: Option<DateTime<Utc>>,
    pub last_clicked_at: Option<DateTime<Utc>>,
}

/// What tracking recorded of one email delivery (people only; machines counted apart).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct DeliveryTracking {
    pub track_opens: bool,
    pub track_clicks: bool,
    pub opens: i64,
    pub first_opened_at: Option<DateTime<Utc>>,
    pub last_opened_at: Option<DateTime<Utc>>,
    /// Opens by machines (HEAD requests, privacy proxies, within a second of delivery).
    pub machine_opens: i64,
    pub clicks: Vec<LinkClicks>,
    pub machine_clicks: i64,
}

type EventSums = (Uuid, String, Option<i32>, i64, i64, Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// What tracking recorded of these email deliveries, for those whose content opted in.
pub async fn for_deliveries(
    db: &PgPool,
    emails: &[(Uuid, RenderedEmail)],
) -> sqlx::Result<HashMap<Uuid, DeliveryTracking>> {
    let tracked: Vec<&(Uuid, RenderedEmail)> = emails.iter().filter(|(_, c)| c.track_opens || c.track_clicks).collect();
    if tracked.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<Uuid> = tracked.iter().map(|(id, _)| *id).collect();
    let sums: Vec<EventSums> = sqlx::query_as(
        "SELECT delivery_id, kind, link_index, count(*) FILTER (WHERE machine IS NULL),
                count(*) FILTER (WHERE machine IS NOT NULL),
                min(at) FILTER (WHERE machine IS NULL), max(at) FILTER (WHERE machine IS NULL)
         FROM email_events WHERE delivery_id = ANY($1)
         GROUP BY delivery_id, kind, link_index ORDER BY delivery_id, link_index",
    )
    .bind(&ids)
    .fetch_all(db)
    .await?;
    let mut out = HashMap::new();
    for (id, content) in tracked {
        let mut t = DeliveryTracking {
            track_opens: content.track_opens,
            track_clicks: content.track_clicks,
            ..Default::default()
        };
        let urls = if content.track_clicks { links(content) } else { Vec::new() };
        for (_, kind, link, people, machines, first, last) in sums.iter().filter(|s| s.0 == *id) {
            match (kind.as_str(), link) {
                ("open", _) => {
                    t.opens = *people;
                    t.machine_opens = *machines;
                    t.first_opened_at = *first;
                    t.last_opened_at = *last;
                }
                (_, Some(i)) => {
                    t.machine_clicks += machines;
                    if *people > 0 {
                        t.clicks.push(LinkClicks {
                            index: *i,
                            url: urls.get(*i as usize).cloned().unwrap_or_default(),
                            clicks: *people,
                            first_clicked_at: *first,
                            last_clicked_at: *last,
                        });
                    }
                }
                _ => {}
            }
        }
        out.insert(*id, t);
    }
    Ok(out)
}

/// Open and click figures of one template over a window.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct TemplateRates {
    pub template: String,
    /// Tracked emails delivered in the window.
    pub delivered: i64,
    /// Opens and clicks by people (every one, repeated ones included).
    pub opens: i64,
    pub clicks: i64,
    /// Deliveries opened / clicked at least once (`HERALD_TRACKING=full` only; with
    /// `anonymous` nothing is kept per delivery and these stay 0).
    pub unique_opens: i64,
    pub unique_clicks: i64,
    /// unique_opens / delivered (with `anonymous`: opens / delivered).
    pub open_rate: Option<f64>,
    pub click_rate: Option<f64>,
    /// Opens and clicks marked as machines'.
    pub machine: i64,
}

/// Per template: tracked emails delivered since `since`, and the opens and clicks
/// recorded since then.
pub async fn template_rates(db: &PgPool, since: DateTime<Utc>, mode: TrackingMode) -> sqlx::Result<Vec<TemplateRates>> {
    let rows: Vec<(String, i64, i64, i64, i64, i64, i64)> = sqlx::query_as(
        "WITH sent AS (
            SELECT email_template AS template, count(*) AS delivered
            FROM deliveries
            WHERE id >= $1 AND tracked AND status = 'succeeded'
            GROUP BY 1
         ), ev AS (
            SELECT template_key AS template,
                   count(*) FILTER (WHERE kind = 'open' AND machine IS NULL) AS opens,
                   count(*) FILTER (WHERE kind = 'click' AND machine IS NULL) AS clicks,
                   count(DISTINCT delivery_id) FILTER (WHERE kind = 'open' AND machine IS NULL) AS unique_opens,
                   count(DISTINCT delivery_id) FILTER (WHERE kind = 'click' AND machine IS NULL) AS unique_clicks,
                   count(*) FILTER (WHERE machine IS NOT NULL) AS machine
            FROM email_events WHERE at >= $2
            GROUP BY 1
         )
         SELECT coalesce(s.template, e.template), coalesce(s.delivered, 0), coalesce(e.opens, 0),
                coalesce(e.clicks, 0), coalesce(e.unique_opens, 0), coalesce(e.unique_clicks, 0),
                coalesce(e.machine, 0)
         FROM sent s FULL JOIN ev e ON e.template = s.template
         ORDER BY 1",
    )
    .bind(crate::model::v7_floor(since))
    .bind(since)
    .fetch_all(db)
    .await?;
    let rate = |n: i64, of: i64| (of > 0).then(|| n as f64 / of as f64);
    Ok(rows
        .into_iter()
        .map(|(template, delivered, opens, clicks, unique_opens, unique_clicks, machine)| {
            let (o, c) = match mode {
                TrackingMode::Anonymous => (opens, clicks),
                _ => (unique_opens, unique_clicks),
            };
            TemplateRates {
                template,
                delivered,
                opens,
                clicks,
                unique_opens,
                unique_clicks,
                open_rate: rate(o, delivered),
                click_rate: rate(c, delivered),
                machine,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(opens: bool, clicks: bool) -> Options<'static> {
        Options { opens, clicks, text_links: true, base: "https://h.example" }
    }

    fn tok(k: Kind, i: u16) -> String {
        format!("{}{i}", k.as_str())
    }

    #[test]
    fn off_leaves_the_email_byte_for_byte() {
        let html = "<html><body><a href=\"https://x.test/a?b=1&amp;c=2\">x</a></body></html>\r\n";
        let r = rewrite(html, "see https://x.test/a", opts(false, false), &tok);
        assert_eq!(r.html.as_bytes(), html.as_bytes());
        assert_eq!(r.text, "see https://x.test/a");
        assert!(r.links.is_empty());
    }

    #[test]
    fn links_are_numbered_and_rewritten_except_opted_out_mailto_and_unsubscribe() {
        let html = r#"<html><body><p>Hi</p><a href="https://x.test/a?b=1&amp;c=2">A</a>
<a href="mailto:help@x.test">mail</a><a data-herald-notrack href="https://x.test/private">P</a>
<a href="https://x.test/unsubscribe?u=1">U</a><A HREF="HTTP://X.TEST/B">B</A><a href="https://x.test/a?b=1&amp;c=2">again</a>
<a href="/relative">R</a></body></html>"#;
        let text =
            "Start: https://x.test/a?b=1&c=2. Or <https://x.test/t>, mail mailto:x@y.z, https://x.test/unsubscribe";
        let r = rewrite(html, text, opts(true, true), &tok);
        assert_eq!(r.links, vec!["https://x.test/a?b=1&c=2", "HTTP://X.TEST/B", "https://x.test/t"]);
        assert!(r.html.contains(r#"href="https://h.example/t/c/click0">A</a>"#), "{}", r.html);
        assert!(r.html.contains(r#"<A HREF="https://h.example/t/c/click1">B</A>"#), "{}", r.html);
        assert!(r.html.contains(r#"href="https://h.example/t/c/click0">again</a>"#), "same URL, same number");
        assert!(r.html.contains(r#"<a href="mailto:help@x.test">"#));
        assert!(r.html.contains(r#"<a href="https://x.test/private">P</a>"#), "{}", r.html);
        assert!(!r.html.contains("data-herald-notrack"));
        assert!(r.html.contains(r#"href="https://x.test/unsubscribe?u=1""#));
        assert!(r.html.contains(r#"href="/relative""#));
        assert!(r.html.contains(r#"src="https://h.example/t/o/open0""#));
        assert!(r.html.find("t/o/open0").unwrap() < r.html.find("</body>").unwrap(), "the pixel sits inside the body");
        assert_eq!(
            r.text,
            "Start: https://h.example/t/c/click0. Or <https://h.example/t/c/click2>, mail mailto:x@y.z, https://x.test/unsubscribe"
        );
    }

    #[test]
    fn opens_only_adds_a_pixel_and_leaves_links() {
        let r = rewrite("<p><a href=\"https://x.test/\">x</a></p>", "https://x.test/", opts(true, false), &tok);
        assert_eq!(r.html, "<p><a href=\"https://x.test/\">x</a></p><img src=\"https://h.example/t/o/open0\" width=\"1\" height=\"1\" alt=\"\" style=\"display:block;border:0;width:1px;height:1px\">");
        assert_eq!(r.text, "https://x.test/");
        assert!(r.links.is_empty());
    }

    #[test]
    fn text_links_can_be_left_alone() {
        let o = Options { text_links: false, ..opts(false, true) };
        let r = rewrite("<a href='https://x.test/h'>h</a>", "https://x.test/t", o, &tok);
        assert_eq!(r.links, vec!["https://x.test/h"]);
        assert_eq!(r.text, "https://x.test/t");
    }

    #[test]
    fn hostile_text_does_not_break_the_scanner() {
        for t in [
            "http://",
            "https://",
            "x http:// y",
            "https://.",
            "((https://a.b)))",
            "héllo https://ü.test/ä ok",
            "\0https://a.b\0",
        ] {
            let r = rewrite("", t, opts(false, true), &tok);
            assert!(!r.text.is_empty());
        }
        let many: String = (0..2000).map(|i| format!("https://x.test/{i} ")).collect();
        let r = rewrite("", &many, opts(false, true), &tok);
        assert_eq!(r.links.len(), MAX_LINKS, "numbering stops at the cap; the rest stay as they are");
        assert!(r.text.ends_with("https://x.test/1999 "));
    }

    #[test]
    fn tokens_round_trip_and_name_nothing_in_clear() {
        let key = SecretKey::from_bytes([3; 32]);
        let t = Token { delivery: Uuid::now_v7(), kind: Kind::Click, link: 7 };
        let s = t.seal(&key);
        assert!(!s.contains(&t.delivery.simple().to_string()));
        assert_eq!(Token::open(&key, &s), Some(t));
        assert_eq!(Token::open(&SecretKey::from_bytes([4; 32]), &s), None);
        assert_eq!(Token::open(&key, "not-a-token"), None);
    }

    #[tokio::test]
    async fn links_sealed_before_a_rotation_open_with_the_previous_key() {
        let (old, new) = (SecretKey::from_bytes([3; 32]), SecretKey::from_bytes([4; 32]));
        let t = Token { delivery: Uuid::now_v7(), kind: Kind::Open, link: 0 };
        let sent_before = t.seal(&old);
        let (without, _) = Tracker::new(new.clone(), None, TrackingMode::Full);
        assert_eq!(without.token(&sent_before), None);
        let (with, _) = Tracker::new(new.clone(), Some(old), TrackingMode::Full);
        assert_eq!(with.token(&sent_before), Some(t));
        assert_eq!(with.token(&t.seal(&new)), Some(t));
    }

    #[test]
    fn machines_are_told_apart() {
        assert_eq!(machine_by_request(true, None), Some("head"));
        assert_eq!(
            machine_by_request(
                false,
                Some("Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)")
            ),
            Some("proxy")
        );
        assert_eq!(machine_by_request(false, Some("Mozilla/5.0")), Some("proxy"));
        assert_eq!(machine_by_request(false, Some("Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0")), None);
        assert_eq!(machine_by_request(false, None), None);
    }
}
