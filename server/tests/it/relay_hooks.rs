//! Hosted relays' bounce and complaint webhooks: Amazon SES through SNS (messages signed
//! with a test key pair by openssl, the certificate served by a local server standing
//! for sns.<region>.amazonaws.com) and Mailgun (HMAC-signed), mapped to the same records
//! as inbound DSNs; forged, replayed and foreign messages refused.

use std::process::Command;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use crate::harness::*;
use herald_testkit::receiver::{Receiver, Respond};

const TOPIC: &str = "arn:aws:sns:eu-west-1:123456789012:ses-feedback";

struct Signer {
    dir: std::path::PathBuf,
}

impl Signer {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("herald-sns-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
                "-days",
                "1",
                "-subj",
                "/CN=sns.test",
            ])
            .current_dir(&dir)
            .output()
            .unwrap()
            .status
            .success();
        assert!(ok, "openssl req");
        Signer { dir }
    }

    fn cert(&self) -> Vec<u8> {
        std::fs::read(self.dir.join("cert.pem")).unwrap()
    }

    /// `openssl dgst -<digest> -sign key.pem`, base64.
    fn sign(&self, text: &str, digest: &str) -> String {
        std::fs::write(self.dir.join("text"), text).unwrap();
        let out = Command::new("openssl")
            .args(["dgst", &format!("-{digest}"), "-sign", "key.pem", "text"])
            .current_dir(&self.dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl dgst: {}", String::from_utf8_lossy(&out.stderr));
        base64::engine::general_purpose::STANDARD.encode(out.stdout)
    }
}

/// An SNS Notification carrying `message`, signed (SignatureVersion `version`).
fn sns_notification(s: &Signer, cert_url: &str, message: &Value, version: &str) -> Value {
    let message = message.to_string();
    let (id, ts) = (uuid::Uuid::new_v4().to_string(), "2026-12-07T12:00:00.000Z");
    let text = format!("Message\n{message}\nMessageId\n{id}\nTimestamp\n{ts}\nTopicArn\n{TOPIC}\nType\nNotification\n");
    let sig = s.sign(&text, if version == "1" { "sha1" } else { "sha256" });
    json!({"Type": "Notification", "MessageId": id, "TopicArn": TOPIC, "Message": message, "Timestamp": ts,
           "SignatureVersion": version, "Signature": sig, "SigningCertURL": cert_url,
           "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/unsubscribe"})
}

async fn post(h: &Herald, path: &str, body: &Value) -> (u16, String) {
    let r = h.http.post(format!("{}{path}", h.base)).json(body).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn status_of(h: &Herald, key: &str, id: &str) -> Value {
    h.get_notification(key, id).await["deliveries"][0]["status"].clone()
}

async fn delivered(h: &Herald, sink: &SmtpSink, key: &str, to: &str) -> (String, String, String) {
    let id = h.send_welcome(key, "S", to).await;
    let n = h.wait_terminal(key, &id).await;
    assert_eq!(n["status"], "succeeded");
    let mail = sink.accepted().pop().unwrap();
    let verp = mail.mail_from.trim_matches(['<', '>']).to_owned();
    (id, verp, mail.header("Message-ID").unwrap())
}

#[tokio::test]
async fn ses_through_sns_and_mailgun_record_bounces_and_complaints() {
    let aws = Receiver::start().await;
    let stranger = Receiver::start().await;
    let signer = Signer::new();
    aws.set_default(Respond::Body(200, signer.cert()));
    stranger.set_default(Respond::Body(200, signer.cert()));
    let origin = aws.url("");
    let origin = origin.trim_end_matches('/');
    let (sink, h, key) = setup(
        &[],
        &[
            ("HERALD_BOUNCE_ADDRESS", "bounces@mail.test"),
            ("HERALD_SNS_TOPIC_ARNS", TOPIC),
            ("HERALD_SNS_CERT_ORIGINS", origin),
            ("HERALD_MAILGUN_SIGNING_KEY", "mg-signing-key"),
        ],
    )
    .await;
    let cert_url = aws.url("/SimpleNotificationService-test.pem");

    // A subscription confirmation: verified, then confirmed by fetching SubscribeURL.
    let (mid, ts, token) = ("c0ffee", "2026-12-07T12:00:00.000Z", "tok-1");
    let subscribe = aws.url("/confirm?Token=tok-1");
    let text = format!("Message\nconfirm\nMessageId\n{mid}\nSubscribeURL\n{subscribe}\nTimestamp\n{ts}\nToken\n{token}\nTopicArn\n{TOPIC}\nType\nSubscriptionConfirmation\n");
    let confirm = json!({"Type": "SubscriptionConfirmation", "MessageId": mid, "Token": token, "TopicArn": TOPIC,
        "Message": "confirm", "SubscribeURL": subscribe, "Timestamp": ts, "SignatureVersion": "2",
        "Signature": signer.sign(&text, "sha256"), "SigningCertURL": cert_url});
    assert_eq!(post(&h, "/inbound/ses", &confirm).await.0, 200);
    assert!(aws.requests().iter().any(|r| r.path == "/confirm"), "the subscription was confirmed");

    // A permanent bounce, found by its VERP envelope sender (SES's mail.source).
    let (id, verp, _) = delivered(&h, &sink, &key, "gone@example.net").await;
    let bounce = json!({"notificationType": "Bounce", "bounce": {"bounceType": "Permanent", "bounceSubType": "General",
        "bouncedRecipients": [{"emailAddress": "gone@example.net", "status": "5.1.1", "diagnosticCode": "smtp; 550 5.1.1 user unknown"}]},
        "mail": {"source": verp, "messageId": "0102-ses", "destination": ["gone@example.net"]}});
    let msg = sns_notification(&signer, &cert_url, &bounce, "2");
    assert_eq!(post(&h, "/inbound/ses", &msg).await, (200, "recorded\n".into()));
    assert_eq!(status_of(&h, &key, &id).await, "bounced");
    let src: String = sqlx::query_scalar("SELECT source FROM suppressions WHERE address = 'gone@example.net'")
        .fetch_one(&h.db)
        .await
        .unwrap();
    assert_eq!(src, "ses");

    // A complaint, SignatureVersion 1 (SHA1withRSA), found by its Message-ID.
    let (id, _, message_id) = delivered(&h, &sink, &key, "ann@example.net").await;
    let complaint = json!({"notificationType": "Complaint", "complaint": {"complaintFeedbackType": "abuse",
        "complainedRecipients": [{"emailAddress": "ann@example.net"}]},
        "mail": {"source": "someone-else@mail.test", "headers": [{"name": "Message-ID", "value": message_id}]}});
    let msg = sns_notification(&signer, &cert_url, &complaint, "1");
    assert_eq!(post(&h, "/inbound/ses", &msg).await.0, 200);
    assert_eq!(status_of(&h, &key, &id).await, "complained");

    // Forgeries: an altered message, another topic, a certificate from anywhere else.
    let (other, _, _) = delivered(&h, &sink, &key, "bo@example.net").await;
    let mut altered = sns_notification(&signer, &cert_url, &bounce, "2");
    altered["Message"] = json!(bounce.to_string().replace("gone@", "bo@"));
    assert_eq!(post(&h, "/inbound/ses", &altered).await.0, 403);
    let mut foreign = sns_notification(&signer, &cert_url, &bounce, "2");
    foreign["TopicArn"] = json!("arn:aws:sns:eu-west-1:999999999999:theirs");
    assert_eq!(post(&h, "/inbound/ses", &foreign).await.0, 403);
    let elsewhere = sns_notification(&signer, &stranger.url("/SimpleNotificationService-x.pem"), &bounce, "2");
    assert_eq!(post(&h, "/inbound/ses", &elsewhere).await.0, 403);
    let lookalike = sns_notification(&signer, "https://sns.eu-west-1.amazonaws.com.evil.test/x.pem", &bounce, "2");
    assert_eq!(post(&h, "/inbound/ses", &lookalike).await.0, 403);
    assert_eq!(stranger.count(), 0, "no certificate is fetched from a host that is not SNS's");
    assert_eq!(post(&h, "/inbound/ses", &json!("garbage")).await.0, 403);
    assert_eq!(status_of(&h, &key, &other).await, "succeeded", "nothing forged changed anything");

    // Mailgun: signed events; a bad signature, a replay and a stale timestamp refused.
    let (id, _, message_id) = delivered(&h, &sink, &key, "mg@example.net").await;
    let sign = |ts: &str, token: &str| {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(b"mg-signing-key").unwrap();
        mac.update(ts.as_bytes());
        mac.update(token.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    };
    let now = chrono::Utc::now().timestamp().to_string();
    let event = |ts: &str, token: &str, sig: String| {
        json!({"signature": {"timestamp": ts, "token": token, "signature": sig},
               "event-data": {"event": "failed", "severity": "permanent", "recipient": "mg@example.net",
                              "message": {"headers": {"message-id": message_id.trim_matches(['<', '>'])}},
                              "delivery-status": {"code": 550, "enhanced-code": "5.1.1", "description": "No such user"}}})
    };
    assert_eq!(post(&h, "/inbound/mailgun", &event(&now, "t1", "00".repeat(32))).await.0, 403);
    assert_eq!(post(&h, "/inbound/mailgun", &event("1700000000", "t0", sign("1700000000", "t0"))).await.0, 403);
    assert_eq!(status_of(&h, &key, &id).await, "succeeded");
    assert_eq!(post(&h, "/inbound/mailgun", &event(&now, "t1", sign(&now, "t1"))).await, (200, "recorded\n".into()));
    assert_eq!(status_of(&h, &key, &id).await, "bounced");
    assert_eq!(post(&h, "/inbound/mailgun", &event(&now, "t1", sign(&now, "t1"))).await.0, 403, "a replay");
    assert!(metric(&h, "herald_inbound_dropped_total").await >= 8.0);
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn relay_webhooks_are_off_until_configured() {
    let (_sink, h, _key) = setup(&[], &[]).await;
    assert_eq!(post(&h, "/inbound/ses", &json!({})).await.0, 404);
    assert_eq!(post(&h, "/inbound/mailgun", &json!({})).await.0, 404);
}
