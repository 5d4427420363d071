//! Several SMTP relays: the first refuses connections, the second receives; the first
//! is taken out (shown in /readyz and /metrics), recovers, and takes its traffic back.
//! Each attempt records its relay.

use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

#[tokio::test]
async fn failover_to_the_next_relay_and_back() {
    let primary_port = free_port();
    let backup = SmtpSink::start().await;
    let urls = format!("smtp://127.0.0.1:{primary_port}?priority=1, smtp://{}?priority=2&rate=50/s", backup.addr);
    let db = fresh_database().await;
    let h = Herald::start(&db, &urls, &[("HERALD_SMTP_RELAY_COOLDOWN", "2s")]).await;
    let key = h.api_key(&["notifications:write", "notifications:read"]).await;

    // The primary refuses connections: each email goes by the backup.
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(h.send_welcome(&key, "R", &format!("r{i}@example.net")).await);
    }
    for id in &ids {
        let n = h.wait_terminal(&key, id).await;
        assert_eq!(n["status"], "succeeded", "{n}");
        let a = &n["deliveries"][0]["attempts"][0];
        assert_eq!(a["relay"], backup.addr.to_string(), "{a}");
    }
    assert_eq!(backup.accepted_count(), 4);
    // Three failures in a row took the primary out: /readyz and /metrics say so.
    let ready: Value = h.http.get(format!("{}/readyz", h.base)).send().await.unwrap().json().await.unwrap();
    let relays = ready["checks"]["smtp"]["relays"].as_array().unwrap().clone();
    let primary = relays.iter().find(|r| r["relay"] == format!("127.0.0.1:{primary_port}")).unwrap();
    assert_eq!(primary["state"], "taken_out", "{ready}");
    assert_eq!(primary["answers"], false);
    assert_eq!(ready["checks"]["smtp"]["status"], "ok", "the backup answers: {ready}");
    let text = h.http.get(format!("{}/metrics", h.base)).send().await.unwrap().text().await.unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("herald_smtp_relay_up")
            && l.contains(&primary_port.to_string())
            && l.ends_with(" 0")),
        "{text}"
    );

    // The primary comes back: after the cooldown it is tried again and takes the traffic.
    let primary = SmtpSink::start_on(primary_port).await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let id = h.send_welcome(&key, "R", "back@example.net").await;
    let n = h.wait_terminal(&key, &id).await;
    assert_eq!(n["deliveries"][0]["attempts"][0]["relay"], format!("127.0.0.1:{primary_port}"), "{n}");
    let id = h.send_welcome(&key, "R", "again@example.net").await;
    h.wait_terminal(&key, &id).await;
    assert_eq!(primary.accepted_count(), 2);
    assert_eq!(backup.accepted_count(), 4);
    let ready: Value = h.http.get(format!("{}/readyz", h.base)).send().await.unwrap().json().await.unwrap();
    assert!(
        ready["checks"]["smtp"]["relays"].as_array().unwrap().iter().all(|r| r["state"] == "in_service"),
        "{ready}"
    );

    // A 5xx is the recipient's answer: no fail-over.
    primary.script(&[Reply::Code(550)]);
    let id = h.send_welcome(&key, "R", "nobody@example.net").await;
    let n = h.wait_terminal(&key, &id).await;
    assert_eq!(n["deliveries"][0]["status"], "failed");
    assert_eq!(backup.accepted_count(), 4);
}
