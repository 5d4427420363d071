//! After the 250: a relay (the SMTP sink) accepts an email, then sends a real DSN or ARF
//! report for it, over SMTP, to Herald's inbound listener; the delivery becomes bounced
//! or complained, the address is suppressed, and the next email to it is not sent.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::harness::*;

/// An SMTP client session, as a relay sending a report: the code answering `RCPT TO`,
/// and (if that was 250) the code answering the end of DATA.
async fn relay_sends(addr: &str, rcpt: &str, message: &str) -> (u16, Option<u16>) {
    let s = TcpStream::connect(addr).await.unwrap();
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    async fn reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> u16 {
        loop {
            let mut l = String::new();
            assert!(r.read_line(&mut l).await.unwrap() > 0, "the server closed the connection");
            if l.as_bytes().get(3) != Some(&b'-') {
                return l[..3].parse().unwrap();
            }
        }
    }
    assert_eq!(reply(&mut r).await, 220);
    w.write_all(b"EHLO relay.test\r\n").await.unwrap();
    assert_eq!(reply(&mut r).await, 250);
    w.write_all(b"MAIL FROM:<>\r\n").await.unwrap();
    assert_eq!(reply(&mut r).await, 250);
    w.write_all(format!("RCPT TO:<{rcpt}>\r\n").as_bytes()).await.unwrap();
    let rcpt_code = reply(&mut r).await;
    if rcpt_code != 250 {
        return (rcpt_code, None);
    }
    w.write_all(b"DATA\r\n").await.unwrap();
    assert_eq!(reply(&mut r).await, 354);
    let mut body = String::new();
    for line in message.replace("\r\n", "\n").lines() {
        if line.starts_with('.') {
            body.push('.');
        }
        body.push_str(line);
        body.push_str("\r\n");
    }
    body.push_str(".\r\n");
    w.write_all(body.as_bytes()).await.unwrap();
    let end = reply(&mut r).await;
    w.write_all(b"QUIT\r\n").await.unwrap();
    (rcpt_code, Some(end))
}

fn dsn(to_verp: &str, recipient: &str, action: &str, status: &str) -> String {
    format!(
        "From: Mail Delivery System <MAILER-DAEMON@relay.test>\r\nTo: {to_verp}\r\nSubject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"R\"\r\n\r\n--R\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n--R\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; relay.test\r\nArrival-Date: Mon, 7 Dec 2026 12:00:00 +0000\r\n\r\nFinal-Recipient: rfc822; {recipient}\r\nOriginal-Recipient: rfc822; {recipient}\r\nAction: {action}\r\nStatus: {status}\r\nRemote-MTA: dns; mx.example.net\r\nDiagnostic-Code: smtp; {code} {status} <{recipient}>: mailbox says no\r\n\r\n--R\r\nContent-Type: text/rfc822-headers\r\n\r\nReturn-Path: <{to_verp}>\r\nFrom: Herald Test <herald@test.example>\r\nTo: {recipient}\r\nSubject: Welcome\r\n\r\n--R--\r\n",
        code = if status.starts_with('5') { 550 } else { 452 },
    )
}

fn arf(verp: &str, recipient: &str) -> String {
    format!(
        "From: Feedback Loop <fbl@isp.test>\r\nTo: bounces@mail.test\r\nSubject: Complaint\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; boundary=\"F\"\r\n\r\n--F\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n--F\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: isp-fbl/1.0\r\nVersion: 1\r\nOriginal-Rcpt-To: {recipient}\r\n\r\n--F\r\nContent-Type: message/rfc822\r\n\r\nReturn-Path: <{verp}>\r\nFrom: Herald Test <herald@test.example>\r\nTo: {recipient}\r\nSubject: Welcome\r\nMessage-ID: <x@test.example>\r\n\r\nHello\r\n--F--\r\n"
    )
}

async fn delivery_of(h: &Herald, key: &str, id: &str) -> Value {
    h.get_notification(key, id).await["deliveries"][0].clone()
}

async fn wait_status(h: &Herald, key: &str, id: &str, want: &str) -> Value {
    eventually(Duration::from_secs(15), &format!("the delivery to become {want}"), || async {
        let d = delivery_of(h, key, id).await;
        (d["status"] == want).then_some(d)
    })
    .await
}

async fn start(extra: &[(&str, &str)]) -> (SmtpSink, Herald, String, String) {
    let port = free_port();
    let inbound = format!("127.0.0.1:{port}");
    let mut env = vec![("HERALD_BOUNCE_ADDRESS", "bounces@mail.test"), ("HERALD_INBOUND_SMTP_ADDR", inbound.as_str())];
    env.extend_from_slice(extra);
    let (sink, h, key) = setup(&[], &env).await;
    (sink, h, key, inbound)
}

#[tokio::test]
async fn a_bounce_suppresses_the_address_and_the_next_email_is_not_sent() {
    let (sink, h, key, inbound) = start(&[("HERALD_SOFT_BOUNCE_LIMIT", "2")]).await;

    // Sent from its own envelope sender.
    let id = h.send_welcome(&key, "Gone", "Gone <Gone@Example.net>").await;
    wait_status(&h, &key, &id, "succeeded").await;
    let mail = sink.accepted().pop().unwrap();
    let verp = mail.mail_from.trim_matches(['<', '>']).to_owned();
    assert!(verp.starts_with("bounces+") && verp.ends_with("@mail.test"), "{verp}");
    assert!(verp.split('@').next().unwrap().len() <= 64);

    // The relay's DSN for it, over SMTP.
    let (rcpt, end) = relay_sends(&inbound, &verp, &dsn(&verp, "gone@example.net", "failed", "5.1.1")).await;
    assert_eq!((rcpt, end), (250, Some(250)));
    let d = wait_status(&h, &key, &id, "bounced").await;
    assert!(d["last_error"].as_str().unwrap().contains("5.1.1"), "{d}");
    let n = h.get_notification(&key, &id).await;
    assert_eq!(n["status"], "failed", "a bounced email fails its notification");
    let row: (String, String, Option<String>) =
        sqlx::query_as("SELECT reason, source, detail FROM suppressions WHERE address = 'gone@example.net'")
            .fetch_one(&h.db)
            .await
            .unwrap();
    assert_eq!((row.0.as_str(), row.1.as_str(), row.2.as_deref()), ("bounce", "inbound_smtp", Some("5.1.1")));

    // The dashboard's rates: per template and per relay, the bounce counted.
    let admin = h.api_key(&["admin"]).await;
    let (s, stats) = h.call(Method::GET, "/api/v1/stats?window=1h", &admin, None).await;
    assert_eq!(s, 200, "{stats}");
    let rows = stats["email_feedback"].as_array().unwrap();
    let template = rows.iter().find(|r| r["by"] == "template" && r["name"] == "welcome-email").expect("template row");
    assert_eq!((template["sent"].as_i64(), template["bounced"].as_i64()), (Some(1), Some(1)), "{template}");
    assert_eq!((template["complained"].as_i64(), template["bounce_rate"].as_f64()), (Some(0), Some(1.0)));
    let relay = rows.iter().find(|r| r["by"] == "relay").expect("relay row");
    assert_eq!((relay["sent"].as_i64(), relay["bounced"].as_i64()), (Some(1), Some(1)), "{relay}");

    // The next email to the address is recorded as suppressed and not sent.
    let r = h.post(&key, &welcome("Gone", "gone@example.net")).await;
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["deliveries"][0]["status"], "suppressed", "{body}");
    let again = body["id"].as_str().unwrap();
    let d = delivery_of(&h, &key, again).await;
    assert_eq!(d["status"], "suppressed");
    assert!(d["last_error"].as_str().unwrap().contains("bounce"), "{d}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(sink.accepted_count(), 1, "nothing was sent to a suppressed address");

    // The same DSN again changes nothing and is no error.
    let (_, end) = relay_sends(&inbound, &verp, &dsn(&verp, "gone@example.net", "failed", "5.1.1")).await;
    assert_eq!(end, Some(250));

    // Soft bounces: noted; two in a row (HERALD_SOFT_BOUNCE_LIMIT=2) suppress.
    let mut verps = Vec::new();
    for _ in 0..2 {
        let id = h.send_welcome(&key, "Full", "full@example.net").await;
        wait_status(&h, &key, &id, "succeeded").await;
        let v = sink.accepted().pop().unwrap().mail_from.trim_matches(['<', '>']).to_owned();
        let (_, end) = relay_sends(&inbound, &v, &dsn(&v, "full@example.net", "delayed", "4.2.2")).await;
        assert_eq!(end, Some(250));
        verps.push((id, v));
    }
    let reason: String = eventually(Duration::from_secs(10), "soft bounces to suppress", || async {
        sqlx::query_scalar("SELECT reason FROM suppressions WHERE address = 'full@example.net'")
            .fetch_optional(&h.db)
            .await
            .unwrap()
    })
    .await;
    assert_eq!(reason, "soft_bounces");
    let soft: i64 = sqlx::query_scalar("SELECT count(*) FROM email_feedback WHERE kind = 'soft_bounce'")
        .fetch_one(&h.db)
        .await
        .unwrap();
    assert_eq!(soft, 2);
    // A soft bounce leaves the delivery as it was.
    assert_eq!(delivery_of(&h, &key, &verps[0].0).await["status"], "succeeded");
}

#[tokio::test]
async fn a_complaint_by_feedback_loop_suppresses_and_forgeries_are_refused() {
    let (sink, h, key, inbound) = start(&[]).await;
    let id = h.send_welcome(&key, "Ann", "ann@example.net").await;
    wait_status(&h, &key, &id, "succeeded").await;
    let verp = sink.accepted().pop().unwrap().mail_from.trim_matches(['<', '>']).to_owned();

    // A feedback loop's ARF report, sent to the bounce address itself: the reported
    // message's Return-Path names the delivery.
    let (rcpt, end) = relay_sends(&inbound, "bounces@mail.test", &arf(&verp, "ann@example.net")).await;
    assert_eq!((rcpt, end), (250, Some(250)));
    let d = wait_status(&h, &key, &id, "complained").await;
    assert!(d["last_error"].as_str().unwrap().contains("abuse"), "{d}");
    let reason: String = sqlx::query_scalar("SELECT reason FROM suppressions WHERE address = 'ann@example.net'")
        .fetch_one(&h.db)
        .await
        .unwrap();
    assert_eq!(reason, "complaint");

    // Forged VERP addresses and strangers are refused at RCPT.
    let forged = format!("bounces+{}@mail.test", "a".repeat(42));
    assert_eq!(relay_sends(&inbound, &forged, "Subject: x\r\n\r\nx").await, (550, None));
    assert_eq!(relay_sends(&inbound, "postmaster@mail.test", "Subject: x\r\n\r\nx").await, (550, None));
    let altered = format!("{}x@mail.test", verp.split('@').next().unwrap());
    assert_eq!(relay_sends(&inbound, &altered, "Subject: x\r\n\r\nx").await, (550, None));
    // An ARF naming no Herald address, and a message that is no report: taken and dropped.
    let (_, end) = relay_sends(&inbound, "bounces@mail.test", &arf("someone@else.test", "ann@example.net")).await;
    assert_eq!(end, Some(250));
    let (_, end) = relay_sends(&inbound, &verp, "Subject: out of office\r\n\r\nI am away.").await;
    assert_eq!(end, Some(250));
    // Garbage, a huge line, and a long junk session do not take the listener down.
    let (_, end) = relay_sends(&inbound, &verp, &format!("{}\r\n\u{0}\u{1}\r\n", "x".repeat(100_000))).await;
    assert_eq!(end, Some(250));
    assert!(metric(&h, "herald_inbound_dropped_total").await >= 5.0);
    assert_eq!(delivery_of(&h, &key, &id).await["status"], "complained", "nothing else changed it");
    assert!(metric(&h, "herald_email_feedback_total").await >= 1.0);
}

#[tokio::test]
async fn admins_manage_suppressions_and_a_later_suppression_stops_a_retry() {
    let (sink, h, key, _) = start(&[("HERALD_EMAIL_RETRY_SCHEDULE", "2s")]).await;
    let admin = h.api_key(&["admin"]).await;
    let owner = h.api_key_for(&["notifications:write", "notifications:read"], Some("alice"), None).await;

    // An owner neither reads nor changes the list.
    for (m, path, body) in [
        (reqwest::Method::GET, "/api/v1/suppressions", None),
        (reqwest::Method::POST, "/api/v1/suppressions", Some(json!({"address": "x@example.net"}))),
    ] {
        let (status, p) = h.call(m, path, &owner, body.as_ref()).await;
        assert_eq!(status, 403, "{p}");
    }
    // Bad input is a problem and changes nothing.
    for bad in [json!({"address": "not an address"}), json!({"address": "a@b.test", "category": "nope"}), json!({})] {
        let (status, p) = h.call(reqwest::Method::POST, "/api/v1/suppressions", &admin, Some(&bad)).await;
        assert_eq!(status, 400, "{bad}: {p}");
    }
    let (status, _) = h.call(reqwest::Method::GET, "/api/v1/suppressions?limit=0", &admin, None).await;
    assert_eq!(status, 400);
    assert_eq!(h.count("suppressions").await, 0);

    // An email whose first attempt fails (451) and whose address is suppressed before
    // its retry is not retried: it becomes suppressed.
    sink.script(&[Reply::Code(451)]);
    let id = h.send_welcome(&key, "Bo", "bo@example.net").await;
    eventually(Duration::from_secs(10), "the first attempt", || async {
        (delivery_of(&h, &key, &id).await["status"] == "retrying").then_some(())
    })
    .await;
    let (status, s) = h
        .call(
            reqwest::Method::POST,
            "/api/v1/suppressions",
            &admin,
            Some(&json!({"address": "Bo <BO@example.net>", "detail": "asked by phone"})),
        )
        .await;
    assert_eq!(status, 201, "{s}");
    assert_eq!(s["address"], "bo@example.net");
    assert_eq!(s["reason"], "manual");
    let d = wait_status(&h, &key, &id, "suppressed").await;
    assert_eq!(d["attempt_count"], 1, "{d}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.accepted_count(), 0);

    // List and search.
    let (_, page) = h.call(reqwest::Method::GET, "/api/v1/suppressions?q=BO%40", &admin, None).await;
    assert_eq!(page["data"].as_array().unwrap().len(), 1, "{page}");
    let (_, page) = h.call(reqwest::Method::GET, "/api/v1/suppressions?q=nobody", &admin, None).await;
    assert_eq!(page["data"].as_array().unwrap().len(), 0);
    let (_, page) = h.call(reqwest::Method::GET, "/api/v1/suppressions?reason=bounce", &admin, None).await;
    assert_eq!(page["data"].as_array().unwrap().len(), 0);

    // An email to a suppressed address is not resent.
    let did = d["id"].as_str().unwrap().to_owned();
    let (status, p) = h.call(reqwest::Method::POST, &format!("/api/v1/deliveries/{did}/resend"), &key, None).await;
    assert_eq!(status, 409, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("suppressed"), "{p}");
    let (status, _) = h.call(reqwest::Method::POST, &format!("/api/v1/deliveries/{did}/resend"), &owner, None).await;
    assert_eq!(status, 404, "another owner's delivery is not found");

    // Removing it: audited (by the address's hash, not the address), and mail flows again.
    let sid = s["id"].as_i64().unwrap();
    let (status, _) = h.call(reqwest::Method::DELETE, &format!("/api/v1/suppressions/{sid}"), &owner, None).await;
    assert_eq!(status, 403);
    let (status, _) = h.call(reqwest::Method::DELETE, &format!("/api/v1/suppressions/{sid}"), &admin, None).await;
    assert_eq!(status, 204);
    let (status, _) = h.call(reqwest::Method::DELETE, &format!("/api/v1/suppressions/{sid}"), &admin, None).await;
    assert_eq!(status, 404);
    let audit: Vec<(String, String)> = sqlx::query_as(
        "SELECT action, coalesce(after, before)::text FROM audit_log WHERE action LIKE 'suppression.%' ORDER BY seq",
    )
    .fetch_all(&h.db)
    .await
    .unwrap();
    assert_eq!(audit.iter().map(|a| a.0.as_str()).collect::<Vec<_>>(), ["suppression.added", "suppression.removed"]);
    assert!(audit.iter().all(|a| !a.1.contains("bo@example.net") && a.1.contains("address_sha256")), "{audit:?}");
    let id2 = h.send_welcome(&key, "Bo", "bo@example.net").await;
    wait_status(&h, &key, &id2, "succeeded").await;
    // And the suppressed email can be resent now.
    let (status, p) = h.call(reqwest::Method::POST, &format!("/api/v1/deliveries/{did}/resend"), &key, None).await;
    assert_eq!(status, 202, "{p}");
    let d = wait_status(&h, &key, &id, "succeeded").await;
    assert_eq!(d["attempt_count"], 2, "{d}");
    assert_eq!(sink.accepted_count(), 2);
}
