//! The email dispatcher: SMTP over a pooled lettre transport.
//!
//! Classification of outcomes: 2xx → succeeded; 5xx → permanent failure (the delivery
//! fails at once); 4xx, connection errors and timeouts → transient (retried on
//! `HERALD_EMAIL_RETRY_SCHEDULE`). Every email carries `Message-ID: <delivery-id@host>`,
//! the same on every retry, so receivers can deduplicate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use lettre::message::{header, Mailbox, MultiPart};
use lettre::Message;
use sqlx::PgPool;
use tokio::sync::watch;

use super::record::{self, AttemptRecord, Outcome, Started};
use crate::bus::{BatchHandler, Consumer, Received, Topic};
use crate::config::{Config, TrackingMode};
use crate::model::Channel;
use crate::retry::RetrySchedule;
use crate::secrets::SecretKey;
use crate::templates::RenderedEmail;
use crate::tracking;

pub use crate::smtp::{transport, Smtp};

pub struct EmailDispatcher {
    pub db: PgPool,
    pub smtp: Smtp,
    pub from: Mailbox,
    pub host: String,
    pub schedule: RetrySchedule,
    pub lease: Duration,
    pub concurrency: usize,
    pub batch_size: usize,
    /// `HERALD_BUS_MAX_REDELIVERIES` (see [`record::start_attempts`]).
    pub max_starts: i32,
    /// Slow batch remainders running in their own tasks.
    pub detach: record::Detach,
    /// Email tracking (`HERALD_TRACKING`), applied to versions that opt in.
    pub tracking: Tracking,
    /// `HERALD_BOUNCE_ADDRESS`: each email's envelope sender is made from it (VERP).
    pub bounce_address: Option<String>,
    /// `HERALD_DKIM_*`: signs every email.
    pub dkim: Option<Arc<crate::dkim::Signer>>,
}

/// What the dispatcher needs to add tracking to an email.
#[derive(Clone)]
pub struct Tracking {
    pub mode: TrackingMode,
    pub text_links: bool,
    pub base: String,
    pub key: SecretKey,
}

const REPLY_CAP: usize = 1000;

fn cap(s: String) -> String {
    if s.len() <= REPLY_CAP {
        return s;
    }
    let mut end = REPLY_CAP;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

impl EmailDispatcher {
    pub fn from_config(config: &Config, db: PgPool, smtp: Smtp) -> Self {
        Self {
            db,
            smtp,
            from: config.email_from.clone(),
            host: config.public_host().to_owned(),
            schedule: config.email_retry_schedule.clone(),
            lease: config.bus_claim_timeout,
            concurrency: config.email_concurrency,
            batch_size: config.bus_batch_size,
            max_starts: config.bus_max_redeliveries,
            detach: record::Detach::new(4),
            tracking: Tracking {
                mode: config.tracking,
                text_links: config.tracking_text_links,
                base: config.public_url.clone(),
                key: config.secret_key.clone(),
            },
            bounce_address: config.bounce_address.clone(),
            dkim: config.dkim.as_ref().map(|d| Arc::new(crate::dkim::Signer::new(d))),
        }
    }

    /// Consumes until `shutdown` turns true; a batch already started is finished,
    /// recorded and acked first.
    pub async fn run<C: Consumer>(self, consumer: C, shutdown: watch::Receiver<bool>) {
        let batch_size = self.batch_size;
        let detach = self.detach.clone();
        crate::bus::consume(consumer, Arc::new(self), batch_size, shutdown, "email dispatcher").await;
        detach.drain().await;
    }

    async fn process<C: Consumer>(self: &Arc<Self>, consumer: &mut C, batch: &[Received]) -> anyhow::Result<()> {
        let clock = Instant::now();
        let mut claimed = record::begin(&self.db, consumer, Channel::Email, batch, self.lease, self.max_starts).await?;
        self.drop_suppressed(&mut claimed).await?;
        let started_ms = clock.elapsed().as_millis();

        // Per recipient in order; different recipients concurrently; each recipient's
        // outcomes recorded as soon as they are known.
        let groups = |owned: Vec<(usize, Started)>| {
            let groups = record::group_by(owned, |idx, _| batch[idx].key.clone());
            let this = self.clone();
            stream::iter(groups)
                .map(move |(key, items)| {
                    let this = this.clone();
                    async move {
                        let mut out = Vec::with_capacity(items.len());
                        for (idx, s) in items {
                            out.push((idx, record::Step::Made(this.attempt(&key, s).await, ())));
                        }
                        out
                    }
                })
                .buffer_unordered(self.concurrency)
        };
        let on_recorded = |made: Vec<(AttemptRecord, ())>| async move {
            for (r, ()) in &made {
                tracing::info!(
                    delivery_id = %r.delivery_id, attempt = r.attempt, outcome = r.outcome.as_str(),
                    smtp_code = r.smtp_code, duration_ms = r.duration_ms, "email attempt recorded"
                );
            }
        };
        record::drive(&self.db, consumer, Topic::Email, batch, claimed, self.lease, &self.detach, groups, on_recorded)
            .await?;
        tracing::debug!(
            batch = batch.len(),
            started_ms,
            done_ms = clock.elapsed().as_millis() as u64,
            "email batch done"
        );
        Ok(())
    }

    /// Emails whose address was suppressed after they were accepted are not sent: they
    /// become `suppressed` and their messages are acked with the stale ones.
    async fn drop_suppressed(&self, claimed: &mut record::Claimed) -> anyhow::Result<()> {
        if claimed.owned.is_empty() {
            return Ok(());
        }
        let ids: Vec<uuid::Uuid> = claimed.owned.iter().map(|(_, s)| s.id).collect();
        let found = crate::suppressions::suppressed_now(&self.db, &ids).await?;
        if found.is_empty() {
            return Ok(());
        }
        let items: Vec<(uuid::Uuid, i32, String)> = found
            .iter()
            .filter_map(|(id, why)| {
                let (_, s) = claimed.owned.iter().find(|(_, s)| s.id == *id)?;
                Some((*id, s.attempt, why.clone()))
            })
            .collect();
        let changed = crate::delivery_status::suppress(&self.db, &items).await?;
        crate::metrics::suppressed("sending", changed.len() as u64);
        let (gone, kept): (Vec<_>, Vec<_>) =
            std::mem::take(&mut claimed.owned).into_iter().partition(|(_, s)| changed.contains(&s.id));
        claimed.owned = kept;
        claimed.stale.extend(gone.into_iter().map(|(i, _)| i));
        Ok(())
    }

    fn build(&self, s: &Started) -> Result<Message, String> {
        let content: RenderedEmail =
            serde_json::from_value(s.content.clone()).map_err(|e| format!("stored content is unreadable: {e}"))?;
        let to: Mailbox = s.target.parse().map_err(|_| "the recipient address is invalid".to_owned())?;
        let t = &self.tracking;
        let on = t.mode != TrackingMode::Off;
        let options = tracking::Options {
            opens: on && content.track_opens,
            clicks: on && content.track_clicks,
            text_links: t.text_links,
            base: &t.base,
        };
        let (text, html) = if options.opens || options.clicks {
            let delivery = s.id;
            let token = |kind, link| tracking::Token { delivery, kind, link }.seal(&t.key);
            let sent = tracking::rewrite(&content.html, &content.text, options, &token);
            (sent.text, sent.html)
        } else {
            // Untracked: the rendered parts as they are, not even copied.
            (content.text, content.html)
        };
        let mut builder = Message::builder()
            .from(self.from.clone())
            .to(to.clone())
            .subject(content.subject)
            .message_id(Some(format!("<{}@{}>", s.id, self.host)))
            .header(header::MIME_VERSION_1_0);
        let (text, html) = match &content.unsubscribe {
            // Non-transactional: this recipient's own unsubscribe link, in the body where
            // the template asked for it and in the headers mail providers read (RFC 8058).
            Some(category) => {
                let token = crate::unsubscribe::Token {
                    address: to.email.to_string().to_lowercase(),
                    category: category.clone(),
                    delivery: s.id,
                };
                let url = token.url(&t.base, &t.key);
                let prefs = format!("{url}#preferences");
                let mut list = format!("<{url}>");
                if let Some(b) = &self.bounce_address {
                    let verp = crate::email_feedback::verp::sender(b, &t.key, s.id);
                    list.push_str(&format!(", <mailto:{verp}?subject=unsubscribe>"));
                }
                builder = builder
                    .raw_header(header::HeaderValue::new(
                        header::HeaderName::new_from_ascii_str("List-Unsubscribe"),
                        list,
                    ))
                    .raw_header(header::HeaderValue::new(
                        header::HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                        "List-Unsubscribe=One-Click".to_owned(),
                    ));
                let fill = |body: String| {
                    body.replace(crate::unsubscribe::UNSUBSCRIBE_MARKER, &url)
                        .replace(crate::unsubscribe::PREFERENCES_MARKER, &prefs)
                };
                (fill(text), fill(html))
            }
            None => (text, html),
        };
        let listed = content.unsubscribe.is_some();
        let mut message = builder
            .multipart(MultiPart::alternative_plain_html(text, html))
            .map_err(|e| format!("cannot build the message: {e}"))?;
        if let Some(signer) = &self.dkim {
            signer.sign(&mut message, listed);
        }
        Ok(message)
    }

    async fn attempt(&self, key: &str, s: Started) -> AttemptRecord {
        let clock = Instant::now();
        let mut rec = AttemptRecord::begin(&s, key, Outcome::Succeeded);
        let sent = match self.build(&s) {
            Err(e) => Err(e),
            Ok(message) => {
                let sent = self.send(&s, message).await;
                rec.relay = sent.relay;
                Ok(sent.result)
            }
        };
        match sent {
            Err(e) => {
                rec.outcome = Outcome::PermanentFailure;
                rec.error = Some(e);
            }
            Ok(result) => match result {
                Ok(resp) => {
                    rec.smtp_code = resp.code().to_string().parse().ok();
                    rec.smtp_reply =
                        Some(cap(format!("{} {}", resp.code(), resp.message().collect::<Vec<_>>().join(" "))));
                }
                Err(e) => {
                    rec.outcome = if e.permanent { Outcome::PermanentFailure } else { Outcome::TransientFailure };
                    rec.smtp_code = e.code;
                    let text = cap(e.text);
                    if rec.smtp_code.is_some() {
                        rec.smtp_reply = Some(text);
                    } else {
                        rec.error = Some(text);
                    }
                }
            },
        }
        rec.duration_ms = clock.elapsed().as_millis().min(i32::MAX as u128) as i32;
        crate::metrics::attempt("email", rec.outcome.as_str(), clock.elapsed().as_secs_f64());
        if rec.outcome == Outcome::TransientFailure {
            rec.retry_at = self.schedule.next_delay(s.round_attempts()).and_then(crate::retry::after);
        }
        rec
    }
}

impl EmailDispatcher {
    /// Sends through the relays; with a bounce address, from the delivery's own
    /// envelope sender (VERP) instead of the From address.
    async fn send(&self, s: &Started, message: Message) -> crate::smtp::Sent {
        let mut envelope = message.envelope().clone();
        if let Some(bounce) = &self.bounce_address {
            let sender = crate::email_feedback::verp::sender(bounce, &self.tracking.key, s.id);
            if let Ok(from) = sender.parse::<lettre::Address>() {
                if let Ok(env) = lettre::address::Envelope::new(Some(from), envelope.to().to_vec()) {
                    envelope = env;
                }
            }
        }
        self.smtp.send(&envelope, &message.formatted()).await
    }
}

impl<C: Consumer> BatchHandler<C> for Arc<EmailDispatcher> {
    async fn handle(&mut self, consumer: &mut C, batch: &[Received]) -> anyhow::Result<()> {
        self.process(consumer, batch).await
    }
}
