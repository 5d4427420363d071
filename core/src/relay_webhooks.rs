//! Bounces and complaints from hosted relays in front of SMTP, as webhooks, mapped to
//! the same records as inbound DSNs and ARF reports (`email_feedback::record`):
//!
//! - Amazon SES through SNS (`POST /inbound/ses`): the SNS message signature is
//!   verified (SignatureVersion 1, SHA1withRSA, or 2, SHA256withRSA) with the
//!   certificate at `SigningCertURL`, which is fetched only from
//!   `https://sns.<region>.amazonaws.com/` (or an origin in `HERALD_SNS_CERT_ORIGINS`),
//!   and the topic must be one of `HERALD_SNS_TOPIC_ARNS` (without it the route is
//!   off). A subscription confirmation is confirmed by fetching its `SubscribeURL`
//!   (same origin rule).
//! - Mailgun (`POST /inbound/mailgun`): the `signature` object is checked with
//!   `HERALD_MAILGUN_SIGNING_KEY` (HMAC-SHA256 of timestamp and token; timestamps
//!   older than 15 minutes and reused tokens are refused).
//!
//! An email is found by its VERP envelope sender (SES's `mail.source`) or its
//! `Message-ID` (`<delivery-id@host>`), which the relay reports. Anything forged,
//! unparsable or about no known delivery is refused or dropped with a metric
//! (`herald_inbound_dropped_total{source}`), never retried in a loop: the answer is
//! 2xx for what was understood and dropped, 4xx for what is not authentic.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::email_feedback::{self, Recorded, Report, ReportKind};
use crate::secrets::SecretKey;

/// What a webhook came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Recorded on a delivery.
    Recorded,
    /// Authentic, but nothing to record (a delivery notice, an unknown email, a
    /// confirmed subscription): dropped, 200.
    Dropped(&'static str),
    /// Not authentic or not understood: refused, 4xx.
    Refused(&'static str),
}

/// The SNS and Mailgun settings, and what they need to keep.
pub struct RelayWebhooks {
    pub sns_topics: Vec<String>,
    /// Extra origins (`scheme://host[:port]`) certificates and confirmations may come from.
    pub sns_cert_origins: Vec<String>,
    pub mailgun_key: Option<String>,
    pub bounce_address: Option<String>,
    pub keys: Vec<SecretKey>,
    pub soft_bounce_limit: u32,
    http: reqwest::Client,
    certs: Mutex<HashMap<String, rsa::RsaPublicKey>>,
    /// Mailgun tokens seen (replay protection), newest last.
    tokens: Mutex<VecDeque<String>>,
}

impl RelayWebhooks {
    pub fn new(
        sns_topics: Vec<String>,
        sns_cert_origins: Vec<String>,
        mailgun_key: Option<String>,
        bounce_address: Option<String>,
        keys: Vec<SecretKey>,
        soft_bounce_limit: u32,
    ) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an HTTP client");
        Self {
            sns_topics,
            sns_cert_origins,
            mailgun_key,
            bounce_address,
            keys,
            soft_bounce_limit,
            http,
            certs: Mutex::new(HashMap::new()),
            tokens: Mutex::new(VecDeque::new()),
        }
    }

    pub fn sns_enabled(&self) -> bool {
        !self.sns_topics.is_empty()
    }

    /// Whether SNS certificates and confirmations may be fetched from `url`.
    fn allowed(&self, url: &str) -> bool {
        let Ok(u) = url::Url::parse(url) else { return false };
        let origin = u.origin().ascii_serialization();
        if self.sns_cert_origins.iter().any(|o| o.trim_end_matches('/') == origin) {
            return true;
        }
        let host = u.host_str().unwrap_or_default();
        let region_host = host
            .strip_prefix("sns.")
            .and_then(|h| h.strip_suffix(".amazonaws.com").or_else(|| h.strip_suffix(".amazonaws.com.cn")))
            .is_some_and(|region| {
                !region.is_empty() && region.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            });
        u.scheme() == "https" && u.port().is_none() && region_host
    }

    async fn certificate(&self, url: &str) -> Result<rsa::RsaPublicKey, &'static str> {
        if let Some(k) = self.certs.lock().expect("certs").get(url) {
            return Ok(k.clone());
        }
        if !self.allowed(url) || !url.ends_with(".pem") {
            return Err("certificate_host");
        }
        let r = self.http.get(url).send().await.map_err(|_| "certificate_unreachable")?;
        if !r.status().is_success() {
            return Err("certificate_unreachable");
        }
        let body = r.bytes().await.map_err(|_| "certificate_unreachable")?;
        if body.len() > 16 * 1024 {
            return Err("certificate_unparsable");
        }
        let key = public_key(&body).ok_or("certificate_unparsable")?;
        let mut certs = self.certs.lock().expect("certs");
        if certs.len() >= 16 {
            certs.clear();
        }
        certs.insert(url.to_owned(), key.clone());
        Ok(key)
    }

    /// An SNS message (SES notifications through an SNS topic).
    pub async fn sns(&self, db: &PgPool, body: &[u8]) -> sqlx::Result<Outcome> {
        if !self.sns_enabled() {
            return Ok(Outcome::Refused("not_configured"));
        }
        let Ok(m) = serde_json::from_slice::<SnsMessage>(body) else {
            return Ok(Outcome::Refused("unparsable"));
        };
        if !self.sns_topics.contains(&m.topic_arn) {
            return Ok(Outcome::Refused("unknown_topic"));
        }
        let key = match self.certificate(&m.signing_cert_url).await {
            Ok(k) => k,
            Err(why) => return Ok(Outcome::Refused(why)),
        };
        let Some(text) = m.string_to_sign() else { return Ok(Outcome::Refused("unparsable")) };
        if !verify_sns(&key, &m.signature_version, &text, &m.signature) {
            return Ok(Outcome::Refused("forged"));
        }
        match m.kind.as_str() {
            "SubscriptionConfirmation" => {
                let Some(url) = m.subscribe_url.as_deref().filter(|u| self.allowed(u)) else {
                    return Ok(Outcome::Refused("subscribe_url_host"));
                };
                match self.http.get(url).send().await {
                    Ok(r) if r.status().is_success() => {
                        tracing::info!(topic = %m.topic_arn, "SNS subscription confirmed");
                        Ok(Outcome::Dropped("subscription_confirmed"))
                    }
                    _ => Ok(Outcome::Refused("subscription_not_confirmed")),
                }
            }
            "Notification" => {
                let Ok(ses) = serde_json::from_str::<Value>(&m.message) else {
                    return Ok(Outcome::Dropped("unparsable"));
                };
                self.ses(db, &ses).await
            }
            _ => Ok(Outcome::Dropped("not_a_report")),
        }
    }

    /// An SES event (bounce or complaint), as SES notifications and event publishing
    /// give it.
    async fn ses(&self, db: &PgPool, ses: &Value) -> sqlx::Result<Outcome> {
        let kind = ses["notificationType"].as_str().or(ses["eventType"].as_str()).unwrap_or_default();
        let mail = &ses["mail"];
        let message_id = mail["headers"]
            .as_array()
            .and_then(|hs| hs.iter().find(|h| h["name"].as_str().is_some_and(|n| n.eq_ignore_ascii_case("message-id"))))
            .and_then(|h| h["value"].as_str())
            .or(mail["commonHeaders"]["messageId"].as_str());
        let delivery = self.delivery(mail["source"].as_str(), message_id);
        let report = match kind {
            "Bounce" => {
                let b = &ses["bounce"];
                let r = &b["bouncedRecipients"][0];
                Report {
                    delivery: Uuid::nil(),
                    kind: if b["bounceType"] == "Permanent" { ReportKind::Bounce } else { ReportKind::SoftBounce },
                    status_code: r["status"].as_str().map(str::to_owned),
                    detail: r["diagnosticCode"].as_str().or(b["bounceSubType"].as_str()).map(str::to_owned),
                }
            }
            "Complaint" => Report {
                delivery: Uuid::nil(),
                kind: ReportKind::Complaint,
                status_code: None,
                detail: Some(format!(
                    "feedback type {}",
                    ses["complaint"]["complaintFeedbackType"].as_str().unwrap_or("abuse")
                )),
            },
            _ => return Ok(Outcome::Dropped("not_a_report")),
        };
        self.record(db, delivery, report, "ses").await
    }

    /// A Mailgun webhook (`failed` or `complained` events).
    pub async fn mailgun(&self, db: &PgPool, body: &[u8]) -> sqlx::Result<Outcome> {
        let Some(key) = &self.mailgun_key else { return Ok(Outcome::Refused("not_configured")) };
        let Ok(v) = serde_json::from_slice::<Value>(body) else { return Ok(Outcome::Refused("unparsable")) };
        let sig = &v["signature"];
        let (Some(ts), Some(token), Some(signature)) =
            (sig["timestamp"].as_str(), sig["token"].as_str(), sig["signature"].as_str())
        else {
            return Ok(Outcome::Refused("forged"));
        };
        if !verify_mailgun(key, ts, token, signature) {
            return Ok(Outcome::Refused("forged"));
        }
        let fresh = ts.parse::<i64>().is_ok_and(|t| (chrono::Utc::now().timestamp() - t).abs() <= 15 * 60);
        if !fresh {
            return Ok(Outcome::Refused("stale"));
        }
        {
            let mut seen = self.tokens.lock().expect("tokens");
            if seen.iter().any(|t| t == token) {
                return Ok(Outcome::Refused("replayed"));
            }
            seen.push_back(token.to_owned());
            if seen.len() > 10_000 {
                seen.pop_front();
            }
        }
        let e = &v["event-data"];
        let message_id = e["message"]["headers"]["message-id"].as_str();
        let delivery = self.delivery(e["envelope"]["sender"].as_str(), message_id);
        let status = &e["delivery-status"];
        let report = match e["event"].as_str().unwrap_or_default() {
            "failed" => Report {
                delivery: Uuid::nil(),
                kind: if e["severity"] == "permanent" { ReportKind::Bounce } else { ReportKind::SoftBounce },
                status_code: status["enhanced-code"]
                    .as_str()
                    .map(str::to_owned)
                    .or_else(|| status["code"].as_i64().map(|c| c.to_string())),
                detail: status["description"].as_str().or(status["message"].as_str()).map(str::to_owned),
            },
            "complained" => Report {
                delivery: Uuid::nil(),
                kind: ReportKind::Complaint,
                status_code: None,
                detail: Some("feedback type abuse".into()),
            },
            _ => return Ok(Outcome::Dropped("not_a_report")),
        };
        self.record(db, delivery, report, "mailgun").await
    }

    /// The delivery an email is: its VERP envelope sender, else its Message-ID.
    fn delivery(&self, envelope_sender: Option<&str>, message_id: Option<&str>) -> Option<Uuid> {
        if let (Some(bounce), Some(sender)) = (&self.bounce_address, envelope_sender) {
            if let Some(token) = email_feedback::verp::token_of(bounce, sender) {
                let keys: Vec<&SecretKey> = self.keys.iter().collect();
                if let Some(d) = email_feedback::delivery_of(&keys, token) {
                    return Some(d);
                }
            }
        }
        let id = message_id?.trim().trim_start_matches('<').split('@').next()?;
        Uuid::parse_str(id).ok()
    }

    async fn record(
        &self,
        db: &PgPool,
        delivery: Option<Uuid>,
        mut report: Report,
        source: &str,
    ) -> sqlx::Result<Outcome> {
        let Some(d) = delivery else { return Ok(Outcome::Dropped("unknown_delivery")) };
        report.delivery = d;
        Ok(match email_feedback::record(db, &report, source, self.soft_bounce_limit).await? {
            Recorded::Done { .. } => Outcome::Recorded,
            Recorded::UnknownDelivery => Outcome::Dropped("unknown_delivery"),
        })
    }
}

/// An SNS message's fields (only those signed or used).
#[derive(Debug, Deserialize)]
struct SnsMessage {
    #[serde(rename = "Type")]
    kind: String,
    #[serde(rename = "MessageId")]
    message_id: String,
    #[serde(rename = "TopicArn")]
    topic_arn: String,
    #[serde(rename = "Message")]
    message: String,
    #[serde(rename = "Subject")]
    subject: Option<String>,
    #[serde(rename = "Timestamp")]
    timestamp: String,
    #[serde(rename = "SignatureVersion")]
    signature_version: String,
    #[serde(rename = "Signature")]
    signature: String,
    #[serde(rename = "SigningCertURL")]
    signing_cert_url: String,
    #[serde(rename = "SubscribeURL")]
    subscribe_url: Option<String>,
    #[serde(rename = "Token")]
    token: Option<String>,
}

impl SnsMessage {
    /// The text SNS signs (the AWS documentation's order of fields).
    fn string_to_sign(&self) -> Option<String> {
        let mut out = String::new();
        let mut add = |k: &str, v: &str| {
            out.push_str(k);
            out.push('\n');
            out.push_str(v);
            out.push('\n');
        };
        match self.kind.as_str() {
            "Notification" => {
                add("Message", &self.message);
                add("MessageId", &self.message_id);
                if let Some(s) = &self.subject {
                    add("Subject", s);
                }
                add("Timestamp", &self.timestamp);
                add("TopicArn", &self.topic_arn);
                add("Type", &self.kind);
            }
            "SubscriptionConfirmation" | "UnsubscribeConfirmation" => {
                add("Message", &self.message);
                add("MessageId", &self.message_id);
                add("SubscribeURL", self.subscribe_url.as_deref()?);
                add("Timestamp", &self.timestamp);
                add("Token", self.token.as_deref()?);
                add("TopicArn", &self.topic_arn);
                add("Type", &self.kind);
            }
            _ => return None,
        }
        Some(out)
    }
}

/// The RSA public key of a PEM certificate.
fn public_key(pem: &[u8]) -> Option<rsa::RsaPublicKey> {
    use rsa::pkcs8::DecodePublicKey;
    use x509_cert::der::{DecodePem, Encode};
    let cert = x509_cert::Certificate::from_pem(pem).ok()?;
    let der = cert.tbs_certificate.subject_public_key_info.to_der().ok()?;
    rsa::RsaPublicKey::from_public_key_der(&der).ok()
}

fn verify_sns(key: &rsa::RsaPublicKey, version: &str, text: &str, signature: &str) -> bool {
    use base64::Engine;
    use rsa::signature::Verifier;
    let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else { return false };
    let Ok(sig) = rsa::pkcs1v15::Signature::try_from(sig.as_slice()) else { return false };
    match version {
        "1" => rsa::pkcs1v15::VerifyingKey::<sha1::Sha1>::new(key.clone()).verify(text.as_bytes(), &sig).is_ok(),
        "2" => rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(key.clone()).verify(text.as_bytes(), &sig).is_ok(),
        _ => false,
    }
}

fn verify_mailgun(key: &str, timestamp: &str, token: &str, signature: &str) -> bool {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(timestamp.as_bytes());
    mac.update(token.as_bytes());
    let Ok(given) = hex::decode(signature) else { return false };
    mac.verify_slice(&given).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hooks(origins: &[&str]) -> RelayWebhooks {
        RelayWebhooks::new(vec!["arn:t".into()], origins.iter().map(|o| o.to_string()).collect(), None, None, vec![], 5)
    }

    #[test]
    fn certificates_come_only_from_sns_hosts() {
        let h = hooks(&["http://127.0.0.1:9"]);
        assert!(h.allowed("https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem"));
        assert!(h.allowed("https://sns.cn-north-1.amazonaws.com.cn/x.pem"));
        assert!(h.allowed("http://127.0.0.1:9/cert.pem"));
        for bad in [
            "http://sns.eu-west-1.amazonaws.com/x.pem",
            "https://sns.eu-west-1.amazonaws.com.evil.test/x.pem",
            "https://evil.test/sns.eu-west-1.amazonaws.com/x.pem",
            "https://sns..amazonaws.com/x.pem",
            "https://sns.eu-west-1.amazonaws.com:8443/x.pem",
            "https://user@sns.eu-west-1.amazonaws.com@evil.test/x.pem",
            "http://127.0.0.1:10/cert.pem",
            "not a url",
        ] {
            assert!(!h.allowed(bad), "{bad}");
        }
    }

    #[test]
    fn mailgun_signatures() {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(b"key-1").unwrap();
        mac.update(b"1700000000tok");
        let good = hex::encode(mac.finalize().into_bytes());
        assert!(verify_mailgun("key-1", "1700000000", "tok", &good));
        assert!(!verify_mailgun("key-2", "1700000000", "tok", &good));
        assert!(!verify_mailgun("key-1", "1700000001", "tok", &good));
        assert!(!verify_mailgun("key-1", "1700000000", "tok", "zz"));
    }
}
