//! After the relay's 250: bounces (RFC 3464 delivery status notifications), complaints
//! (RFC 5965 ARF reports), and the suppression list they feed.
//!
//! Every email's envelope sender is its own address (VERP, see [`verp`]), so a bounce
//! names its delivery by the address it is sent back to, and only Herald can make such
//! an address. Reports are recorded by [`record`]: an `email_feedback` row, the
//! delivery's status (through `delivery_status::feedback`), and a suppression of the
//! address when the report calls for one.

use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::delivery_status::{self, Feedback};
use crate::model::DeliveryStatus;
use crate::secrets::SecretKey;

/// Per-delivery envelope senders: `bounces+<token>@domain` for the bounce address
/// `bounces@domain`. The token is the delivery id and an 80-bit HMAC of it under a key
/// derived from `HERALD_SECRET_KEY`, in lower-case base32: mail systems may change the
/// case of a local part, and a local part may be at most 64 characters (42 of them
/// are the token). The delivery id is no secret (it is the email's Message-ID); the
/// HMAC is what makes the address unforgeable.
pub mod verp {
    use hmac::{Hmac, Mac};
    use sha2::Sha256;
    use uuid::Uuid;

    use crate::secrets::SecretKey;

    const TAG: usize = 10;
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

    fn mac(key: &SecretKey, id: &Uuid) -> [u8; TAG] {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&key.derive(b"herald/verp")).expect("any key length");
        m.update(id.as_bytes());
        let full = m.finalize().into_bytes();
        let mut out = [0u8; TAG];
        out.copy_from_slice(&full[..TAG]);
        out
    }

    fn base32(bytes: &[u8]) -> String {
        let (mut out, mut acc, mut bits) = (String::new(), 0u32, 0u32);
        for b in bytes {
            acc = (acc << 8) | *b as u32;
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
            }
        }
        if bits > 0 {
            out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
        }
        out
    }

    fn unbase32(s: &str) -> Option<Vec<u8>> {
        let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0u32);
        for c in s.bytes() {
            let v = ALPHABET.iter().position(|a| *a == c.to_ascii_lowercase())? as u32;
            acc = (acc << 5) | v;
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        Some(out)
    }

    /// The token of a delivery.
    pub fn token(key: &SecretKey, delivery: Uuid) -> String {
        let mut bytes = delivery.as_bytes().to_vec();
        bytes.extend_from_slice(&mac(key, &delivery));
        base32(&bytes)
    }

    /// The delivery a token names; `None` for anything Herald did not make (under
    /// `key`), whatever its case.
    pub fn open(key: &SecretKey, token: &str) -> Option<Uuid> {
        if token.len() != 42 {
            return None;
        }
        let bytes = unbase32(token)?;
        let id = Uuid::from_slice(bytes.get(..16)?).ok()?;
        let tag = bytes.get(16..16 + TAG)?;
        let want = mac(key, &id);
        bool::from(subtle::ConstantTimeEq::ct_eq(tag, &want[..])).then_some(id)
    }

    /// The envelope sender of a delivery's email: `local+token@domain`.
    pub fn sender(bounce_address: &str, key: &SecretKey, delivery: Uuid) -> String {
        let (local, domain) = bounce_address.rsplit_once('@').unwrap_or((bounce_address, ""));
        format!("{local}+{}@{domain}", token(key, delivery))
    }

    /// The token of an address made by [`sender`] for `bounce_address` (case-insensitive),
    /// or `None` for any other address.
    pub fn token_of<'a>(bounce_address: &str, address: &'a str) -> Option<&'a str> {
        let (local, domain) = bounce_address.rsplit_once('@')?;
        let (a_local, a_domain) = address.trim().trim_matches(['<', '>']).rsplit_once('@')?;
        if !a_domain.eq_ignore_ascii_case(domain) {
            return None;
        }
        let (l, token) = a_local.split_once('+')?;
        l.eq_ignore_ascii_case(local).then_some(token)
    }
}

/// What a report says happened to an email.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReportKind {
    /// Permanent failure (5.x.x): the delivery is `bounced`, the address suppressed.
    Bounce,
    /// Temporary failure (4.x.x), such as a full mailbox: noted; past
    /// `HERALD_SOFT_BOUNCE_LIMIT` of them in a row the address is suppressed.
    SoftBounce,
    /// The recipient reported it as spam: the delivery is `complained`, the address
    /// suppressed.
    Complaint,
}

impl ReportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportKind::Bounce => "bounce",
            ReportKind::SoftBounce => "soft_bounce",
            ReportKind::Complaint => "complaint",
        }
    }
}

/// One report about one delivery, however it came (inbound SMTP or a relay's webhook).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub delivery: Uuid,
    pub kind: ReportKind,
    /// RFC 3463 enhanced status code (`5.1.1`), when reported.
    pub status_code: Option<String>,
    /// The diagnostic (capped at 500 characters), never a message body.
    pub detail: Option<String>,
}

/// What [`record`] did with a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Recorded on the delivery; its status afterwards, and whether the address is now
    /// suppressed because of it.
    Done { status: DeliveryStatus, suppressed: bool },
    /// No such email delivery (deleted by retention, or not an email).
    UnknownDelivery,
}

/// How many soft bounces in a row suppress an address (`HERALD_SOFT_BOUNCE_LIMIT`; 0
/// never).
pub type SoftBounceLimit = u32;

/// Records a report: its `email_feedback` row, the delivery's status, and a
/// suppression of its address when called for, in one transaction.
pub async fn record(db: &PgPool, report: &Report, source: &str, soft_limit: SoftBounceLimit) -> sqlx::Result<Recorded> {
    let mut tx = db.begin().await?;
    let detail = report.detail.as_deref().map(cap);
    let change = match report.kind {
        ReportKind::Bounce => Some(Feedback::Bounced),
        ReportKind::Complaint => Some(Feedback::Complained),
        ReportKind::SoftBounce => None,
    };
    let status = match change {
        Some(what) => {
            let text = match (&report.status_code, &detail) {
                (Some(c), Some(d)) => format!("{} {c}: {d}", report.kind.as_str()),
                (Some(c), None) => format!("{} {c}", report.kind.as_str()),
                (None, Some(d)) => format!("{}: {d}", report.kind.as_str()),
                (None, None) => report.kind.as_str().to_owned(),
            };
            delivery_status::feedback(&mut tx, report.delivery, what, &text).await?
        }
        None => {
            sqlx::query_scalar("SELECT status FROM deliveries WHERE id = $1 AND channel = 'email'")
                .bind(report.delivery)
                .fetch_optional(&mut *tx)
                .await?
        }
    };
    let Some(status) = status else {
        return Ok(Recorded::UnknownDelivery);
    };
    sqlx::query(
        "INSERT INTO email_feedback (delivery_id, kind, source, status_code, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(report.delivery)
    .bind(report.kind.as_str())
    .bind(source)
    .bind(&report.status_code)
    .bind(&detail)
    .execute(&mut *tx)
    .await?;
    // The soft bounces in a row: since the address's last delivery that was not
    // soft-bounced (a later success ends a run).
    let reason = match report.kind {
        ReportKind::Bounce => Some("bounce"),
        ReportKind::Complaint => Some("complaint"),
        ReportKind::SoftBounce if soft_limit > 0 => {
            let run: i64 = sqlx::query_scalar(
                "WITH me AS (SELECT herald_ordering_key('email', target) AS address FROM deliveries WHERE id = $1)
                 SELECT count(DISTINCT f.delivery_id) FROM email_feedback f
                 JOIN deliveries d ON d.id = f.delivery_id, me
                 WHERE f.kind = 'soft_bounce' AND d.channel = 'email'
                   AND herald_ordering_key('email', d.target) = me.address
                   AND f.at > coalesce((SELECT max(o.updated_at) FROM deliveries o
                                        WHERE o.channel = 'email' AND herald_ordering_key('email', o.target) = me.address
                                          AND o.status = 'succeeded'
                                          AND NOT EXISTS (SELECT 1 FROM email_feedback g WHERE g.delivery_id = o.id)
                                          AND o.id <> $1), '-infinity')",
            )
            .bind(report.delivery)
            .fetch_one(&mut *tx)
            .await?;
            (run >= soft_limit as i64).then_some("soft_bounces")
        }
        ReportKind::SoftBounce => None,
    };
    let mut suppressed = false;
    if let Some(reason) = reason {
        suppressed = sqlx::query_scalar::<_, bool>(
            "INSERT INTO suppressions (address, category, reason, detail, source, delivery_id)
             SELECT herald_ordering_key('email', d.target), NULL, $2, $3, $4, d.id FROM deliveries d WHERE d.id = $1
             ON CONFLICT (address, category) DO UPDATE
                SET reason = EXCLUDED.reason, detail = EXCLUDED.detail, source = EXCLUDED.source,
                    delivery_id = EXCLUDED.delivery_id, created_at = now()
                WHERE suppressions.reason = 'unsubscribe' OR suppressions.reason = 'soft_bounces'
             RETURNING true",
        )
        .bind(report.delivery)
        .bind(reason)
        .bind(report.status_code.as_deref().or(detail.as_deref()))
        .bind(source)
        .fetch_optional(&mut *tx)
        .await?
        .unwrap_or(false);
    }
    tx.commit().await?;
    crate::metrics::email_feedback(report.kind.as_str(), source);
    Ok(Recorded::Done { status, suppressed })
}

fn cap(s: &str) -> String {
    let s: String = s.chars().filter(|c| !c.is_control() || *c == ' ').take(500).collect();
    crate::delivery_status::sanitize(s)
}

/// What an inbound message turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A delivery status notification: per failed or delayed recipient, the kind and
    /// status code.
    Dsn(Vec<(ReportKind, Option<String>, Option<String>)>),
    /// An ARF report; the VERP token found in the reported message, if any.
    Complaint { token: Option<String>, feedback_type: String },
    /// Neither (or a DSN that reports only successes or relays).
    Other,
}

/// Reads a DSN (RFC 3464) or an ARF report (RFC 5965) with `mail-parser`. An ARF
/// report's reported message is searched for a VERP address (its `Return-Path`, or
/// anywhere in its headers) with `bounce_address`.
pub fn parse(raw: &[u8], bounce_address: &str) -> Parsed {
    use mail_parser::{MessageParser, MimeHeaders};
    let Some(msg) = MessageParser::default().parse(raw) else {
        return Parsed::Other;
    };
    let is = |p: &mail_parser::MessagePart, t: &str, s: &str| {
        p.content_type().is_some_and(|ct| {
            ct.ctype().eq_ignore_ascii_case(t) && ct.subtype().is_some_and(|x| x.eq_ignore_ascii_case(s))
        })
    };
    if let Some(part) = msg.parts.iter().find(|p| is(p, "message", "feedback-report")) {
        let fields = fields(part.contents());
        let feedback_type =
            fields.iter().find(|(k, _)| k == "feedback-type").map(|(_, v)| v.to_lowercase()).unwrap_or_default();
        // The reported message (or its headers): message/rfc822 or text/rfc822-headers.
        let token = msg
            .parts
            .iter()
            .filter(|p| is(p, "message", "rfc822") || is(p, "text", "rfc822-headers"))
            .find_map(|p| tokens_in(p.contents(), bounce_address).into_iter().next());
        return Parsed::Complaint { token, feedback_type };
    }
    if let Some(part) = msg.parts.iter().find(|p| is(p, "message", "delivery-status")) {
        let mut out = Vec::new();
        // Per-message fields, then one group per recipient, separated by blank lines.
        for group in split_groups(part.contents()) {
            let f = fields(group.as_bytes());
            let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            let Some(action) = get("action") else { continue };
            let status = get("status").map(|s| s.split_whitespace().next().unwrap_or_default().to_owned());
            let kind = match (action.to_lowercase().as_str(), status.as_deref().and_then(|s| s.chars().next())) {
                ("failed", Some('4')) | ("delayed", _) => ReportKind::SoftBounce,
                ("failed", _) => ReportKind::Bounce,
                _ => continue,
            };
            let diagnostic = get("diagnostic-code").map(|d| match d.split_once(';') {
                Some((_, rest)) => rest.trim().to_owned(),
                None => d,
            });
            out.push((kind, status, diagnostic));
        }
        return if out.is_empty() { Parsed::Other } else { Parsed::Dsn(out) };
    }
    Parsed::Other
}

/// A message's subject, if it has one.
pub fn subject(raw: &[u8]) -> Option<String> {
    mail_parser::MessageParser::default().parse_headers(raw)?.subject().map(str::to_owned)
}

/// Header-style fields (`Name: value`, continuation lines unfolded), names lower-cased.
fn fields(raw: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(raw);
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            out.push((k.trim().to_lowercase(), v.trim().to_owned()));
        }
    }
    out
}

fn split_groups(raw: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(raw).replace("\r\n", "\n");
    text.split("\n\n").map(str::to_owned).collect()
}

/// Every VERP token for `bounce_address` in a reported message's text, in order (the
/// caller keeps the first that opens).
pub fn tokens_in(raw: &[u8], bounce_address: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(raw);
    text.split(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"' | ',' | ';' | ':' | '(' | ')'))
        .filter(|w| w.contains('@'))
        .filter_map(|w| verp::token_of(bounce_address, w).map(str::to_owned))
        .collect()
}

/// The deliveries of inbound reports: the VERP token opened under `keys` (the current
/// secret key first, then the previous one, for emails sent before a rotation).
pub fn delivery_of(keys: &[&SecretKey], token: &str) -> Option<Uuid> {
    keys.iter().find_map(|k| verp::open(k, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::from_bytes([7; 32])
    }

    #[test]
    fn verp_tokens_round_trip_and_refuse_forgeries() {
        let id = Uuid::now_v7();
        let t = verp::token(&key(), id);
        assert_eq!(t.len(), 42);
        assert_eq!(verp::open(&key(), &t), Some(id));
        assert_eq!(verp::open(&key(), &t.to_uppercase()), Some(id), "case changed by a mail system");
        assert_eq!(verp::open(&SecretKey::from_bytes([8; 32]), &t), None);
        let mut forged = t.clone().into_bytes();
        forged[3] = if forged[3] == b'a' { b'b' } else { b'a' };
        assert_eq!(verp::open(&key(), std::str::from_utf8(&forged).unwrap()), None);
        assert_eq!(verp::open(&key(), "short"), None);
        let sender = verp::sender("bounces@mail.example.com", &key(), id);
        assert!(sender.starts_with("bounces+") && sender.ends_with("@mail.example.com"));
        assert!(sender.split('@').next().unwrap().len() <= 64);
        assert_eq!(verp::token_of("bounces@mail.example.com", &sender.to_uppercase()), Some(&*t.to_uppercase()));
        assert_eq!(verp::token_of("bounces@mail.example.com", "other+x@mail.example.com"), None);
        assert_eq!(verp::token_of("bounces@mail.example.com", "bounces+x@elsewhere.test"), None);
    }

    const DSN: &str = "From: MAILER-DAEMON@relay.test\r\nTo: bounces+tok@mail.example.com\r\nSubject: Undelivered\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nSorry.\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; relay.test\r\n\r\nFinal-Recipient: rfc822; gone@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 <gone@example.net>:\r\n  user unknown\r\n\r\nFinal-Recipient: rfc822; full@example.net\r\nAction: delayed\r\nStatus: 4.2.2\r\n\r\nFinal-Recipient: rfc822; ok@example.net\r\nAction: delivered\r\nStatus: 2.0.0\r\n--b--\r\n";

    #[test]
    fn dsns_are_read_per_recipient() {
        let Parsed::Dsn(r) = parse(DSN.as_bytes(), "bounces@mail.example.com") else { panic!() };
        assert_eq!(
            r,
            vec![
                (ReportKind::Bounce, Some("5.1.1".into()), Some("550 5.1.1 <gone@example.net>: user unknown".into())),
                (ReportKind::SoftBounce, Some("4.2.2".into()), None),
            ]
        );
        assert_eq!(parse(b"not a message at all", "bounces@x.test"), Parsed::Other);
        assert_eq!(parse(b"Subject: hi\r\n\r\nhello", "bounces@x.test"), Parsed::Other);
    }

    #[test]
    fn arf_reports_name_their_delivery_by_the_reported_return_path() {
        let t = verp::token(&key(), Uuid::now_v7());
        let arf = format!("From: fbl@isp.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; boundary=\"x\"\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nA complaint.\r\n--x\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: test/1.0\r\nVersion: 1\r\n--x\r\nContent-Type: text/rfc822-headers\r\n\r\nReturn-Path: <bounces+{t}@mail.example.com>\r\nFrom: Herald <noreply@example.com>\r\nSubject: Welcome\r\n--x--\r\n");
        assert_eq!(
            parse(arf.as_bytes(), "bounces@mail.example.com"),
            Parsed::Complaint { token: Some(t), feedback_type: "abuse".into() }
        );
    }
}
