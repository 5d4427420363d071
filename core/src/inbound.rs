//! The `inbound` role: a small SMTP server on `HERALD_INBOUND_SMTP_ADDR` that takes the
//! bounces (DSNs) and complaints (ARF reports) mail systems send back to Herald's
//! per-delivery envelope senders (`email_feedback::verp`), and records them.
//!
//! It accepts mail only for addresses Herald made (`bounces+<token>@domain`, whose
//! token must verify) and for the bounce address itself (a feedback loop's reports,
//! whose reported message must carry such an address); anything else is refused at
//! `RCPT` with 550. A message that is not a report, or names no delivery Herald knows,
//! is accepted and dropped with a metric (`herald_inbound_dropped_total`), so a remote
//! server never retries it in a loop. Only when the database cannot record a report
//! does it answer 451, and the sender tries again later.
//!
//! Limits: 64 connections at once, 60 s per command, 10 minutes per connection, lines
//! of 2,000 bytes, messages of `MAX_MESSAGE` bytes, 50 recipients per message.
//! Nothing of a message is logged but its outcome.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use uuid::Uuid;

use crate::email_feedback::{self, Parsed, Recorded, Report, ReportKind};
use crate::secrets::SecretKey;

/// The largest message taken (a DSN usually carries the original message's headers,
/// sometimes all of it).
pub const MAX_MESSAGE: usize = 4 * 1024 * 1024;
const MAX_LINE: usize = 2000;
const MAX_RCPTS: usize = 50;
const MAX_CONNECTIONS: usize = 64;
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const SESSION_TIMEOUT: Duration = Duration::from_secs(600);

/// What the inbound server needs.
pub struct Inbound {
    pub db: PgPool,
    /// `HERALD_BOUNCE_ADDRESS`.
    pub bounce_address: String,
    /// The current secret key, then the previous one (for emails sent before a rotation).
    pub keys: Vec<SecretKey>,
    pub soft_bounce_limit: u32,
    /// The name in the greeting.
    pub host: String,
}

impl Inbound {
    fn delivery_of(&self, token: &str) -> Option<Uuid> {
        let keys: Vec<&SecretKey> = self.keys.iter().collect();
        email_feedback::delivery_of(&keys, token)
    }

    /// The delivery an envelope recipient names: `Some(Some(id))` for a VERP address
    /// that verifies, `Some(None)` for the bounce address itself, `None` otherwise.
    fn recipient(&self, address: &str) -> Option<Option<Uuid>> {
        let bare = address.trim().trim_matches(['<', '>']);
        if bare.eq_ignore_ascii_case(&self.bounce_address) {
            return Some(None);
        }
        let token = email_feedback::verp::token_of(&self.bounce_address, bare)?;
        self.delivery_of(token).map(Some)
    }

    /// Records what a message reports. `Err` only when the database fails.
    async fn take(&self, raw: &[u8], rcpts: &[Option<Uuid>]) -> sqlx::Result<&'static str> {
        let named: Vec<Uuid> = rcpts.iter().flatten().copied().collect();
        let reports: Vec<Report> = match email_feedback::parse(raw, &self.bounce_address) {
            Parsed::Dsn(entries) => {
                // The worst of what it reports, on each delivery it was sent back for (or,
                // sent to the bounce address itself, the one its returned headers name).
                let worst = entries.iter().find(|e| e.0 == ReportKind::Bounce).or(entries.first()).cloned();
                let Some((kind, status_code, detail)) = worst else { return Ok("not_a_report") };
                let targets = if named.is_empty() { self.token_in(raw).into_iter().collect() } else { named };
                targets
                    .into_iter()
                    .map(|delivery| Report { delivery, kind, status_code: status_code.clone(), detail: detail.clone() })
                    .collect()
            }
            Parsed::Complaint { token, feedback_type } => {
                let from_report = token.as_deref().and_then(|t| self.delivery_of(t));
                let targets: Vec<Uuid> = from_report.into_iter().chain(named).collect();
                let Some(delivery) = targets.first().copied() else { return Ok("forged") };
                vec![Report {
                    delivery,
                    kind: ReportKind::Complaint,
                    status_code: None,
                    detail: Some(format!("feedback type {feedback_type}")),
                }]
            }
            // The `mailto:` of List-Unsubscribe: a message to a delivery's own address
            // asking to unsubscribe.
            Parsed::Other
                if !named.is_empty()
                    && email_feedback::subject(raw).is_some_and(|s| s.to_lowercase().contains("unsubscribe")) =>
            {
                let mut done = false;
                for d in named {
                    let found: Option<(String, Option<String>, bool)> = sqlx::query_as(
                        "SELECT herald_ordering_key('email', d.target), et.category,
                                coalesce(et.transactional, false) OR coalesce(et.operational, false)
                         FROM deliveries d JOIN notifications n ON n.id = d.notification_id
                         LEFT JOIN event_types et ON et.name = n.event_type
                         WHERE d.id = $1 AND d.channel = 'email'",
                    )
                    .bind(d)
                    .fetch_optional(&self.db)
                    .await?;
                    if let Some((address, Some(category), false)) = found {
                        crate::unsubscribe::unsubscribe(&self.db, &address, Some(&category), "mailto", Some(d)).await?;
                        done = true;
                    }
                }
                return Ok(if done { "recorded" } else { "unknown_delivery" });
            }
            Parsed::Other => return Ok("not_a_report"),
        };
        if reports.is_empty() {
            return Ok("forged");
        }
        let mut outcome = "unknown_delivery";
        for r in &reports {
            if let Recorded::Done { .. } =
                email_feedback::record(&self.db, r, "inbound_smtp", self.soft_bounce_limit).await?
            {
                outcome = "recorded";
            }
        }
        Ok(outcome)
    }

    fn token_in(&self, raw: &[u8]) -> Option<Uuid> {
        email_feedback::tokens_in(raw, &self.bounce_address).iter().find_map(|t| self.delivery_of(t))
    }
}

/// Serves until `shutdown`; a connection in progress is cut at shutdown.
pub async fn run(
    listener: TcpListener,
    inbound: Arc<Inbound>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "inbound SMTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            let mut s = stream;
            let _ = s.write_all(b"421 4.3.2 too many connections, try again later\r\n").await;
            continue;
        };
        let (inbound, mut stop) = (inbound.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = stop.changed() => {}
                r = tokio::time::timeout(SESSION_TIMEOUT, session(stream, &inbound)) => {
                    if let Ok(Err(e)) = r {
                        tracing::debug!(error = %e, "inbound SMTP session ended");
                    }
                }
            }
        });
    }
}

/// Reads one line (up to `MAX_LINE`, CRLF or LF ended) within the command timeout.
/// `Ok(None)` at end of stream; a longer line is read to its end and reported as `Err`.
async fn line(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>, buf: &mut Vec<u8>) -> std::io::Result<Option<bool>> {
    buf.clear();
    let mut too_long = false;
    loop {
        let chunk = tokio::time::timeout(COMMAND_TIMEOUT, r.fill_buf())
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "command timeout"))??;
        if chunk.is_empty() {
            return Ok(if buf.is_empty() && !too_long { None } else { Some(!too_long) });
        }
        let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        if !too_long && buf.len() + take <= MAX_LINE + 2 {
            buf.extend_from_slice(&chunk[..take]);
        } else {
            too_long = true;
        }
        r.consume(take);
        if done {
            while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                buf.pop();
            }
            return Ok(Some(!too_long));
        }
    }
}

async fn session(stream: TcpStream, inbound: &Inbound) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    w.write_all(format!("220 {} Herald inbound ESMTP\r\n", inbound.host).as_bytes()).await?;
    let mut buf = Vec::with_capacity(256);
    let mut mail_from = false;
    let mut rcpts: Vec<Option<Uuid>> = Vec::new();
    let mut bad = 0;
    loop {
        let Some(ok) = line(&mut r, &mut buf).await? else { return Ok(()) };
        if !ok {
            w.write_all(b"500 5.5.2 line too long\r\n").await?;
            bad += 1;
            if bad > 3 {
                return Ok(());
            }
            continue;
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        let upper = text.to_ascii_uppercase();
        let verb = upper.split_whitespace().next().unwrap_or("");
        let reply: &[u8] = match verb {
            "EHLO" => {
                let m = format!("250-{}\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE {MAX_MESSAGE}\r\n", inbound.host);
                w.write_all(m.as_bytes()).await?;
                mail_from = false;
                rcpts.clear();
                continue;
            }
            "HELO" => b"250 ok\r\n",
            "MAIL" if upper.starts_with("MAIL FROM:") => {
                mail_from = true;
                rcpts.clear();
                b"250 2.1.0 ok\r\n"
            }
            "RCPT" if upper.starts_with("RCPT TO:") => {
                let addr = text[8..].split_whitespace().next().unwrap_or("");
                if !mail_from {
                    b"503 5.5.1 MAIL first\r\n"
                } else if rcpts.len() >= MAX_RCPTS {
                    b"452 4.5.3 too many recipients\r\n"
                } else {
                    match inbound.recipient(addr) {
                        Some(d) => {
                            rcpts.push(d);
                            b"250 2.1.5 ok\r\n"
                        }
                        None => {
                            crate::metrics::inbound_dropped("inbound_smtp", "forged");
                            b"550 5.1.1 no such mailbox\r\n"
                        }
                    }
                }
            }
            "DATA" => {
                if rcpts.is_empty() {
                    b"503 5.5.1 RCPT first\r\n"
                } else {
                    w.write_all(b"354 end data with <CR><LF>.<CR><LF>\r\n").await?;
                    let raw = read_data(&mut r).await?;
                    let taken = std::mem::take(&mut rcpts);
                    mail_from = false;
                    match raw {
                        None => {
                            crate::metrics::inbound_dropped("inbound_smtp", "too_large");
                            b"552 5.3.4 message too large\r\n"
                        }
                        Some(raw) => match inbound.take(&raw, &taken).await {
                            Ok(outcome) => {
                                if outcome != "recorded" {
                                    crate::metrics::inbound_dropped("inbound_smtp", outcome);
                                }
                                tracing::info!(outcome, bytes = raw.len(), "inbound report");
                                b"250 2.0.0 ok\r\n"
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot record an inbound report; the sender will retry");
                                b"451 4.3.0 try again later\r\n"
                            }
                        },
                    }
                }
            }
            "RSET" => {
                mail_from = false;
                rcpts.clear();
                b"250 2.0.0 ok\r\n"
            }
            "NOOP" => b"250 2.0.0 ok\r\n",
            "VRFY" => b"252 2.5.0 cannot verify\r\n",
            "QUIT" => {
                w.write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(());
            }
            _ => {
                bad += 1;
                if bad > 10 {
                    w.write_all(b"421 4.7.0 too many errors\r\n").await?;
                    return Ok(());
                }
                b"502 5.5.2 command not recognised\r\n"
            }
        };
        w.write_all(reply).await?;
    }
}

/// The message after DATA, dot-unstuffed; `None` when it was over `MAX_MESSAGE` (read
/// to its end all the same). A line over `MAX_LINE` is cut there (RFC 5321 allows 1,000).
async fn read_data(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> std::io::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    let mut buf = Vec::with_capacity(1024);
    let mut over = false;
    loop {
        if line(r, &mut buf).await?.is_none() {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed in DATA"));
        }
        if buf == b"." {
            return Ok(if over { None } else { Some(out) });
        }
        let content = buf.strip_prefix(b".").unwrap_or(&buf);
        if out.len() + content.len() + 2 > MAX_MESSAGE {
            over = true;
            out = Vec::new();
        }
        if !over {
            out.extend_from_slice(content);
            out.extend_from_slice(b"\r\n");
        }
    }
}
