//! The fast lane (`bus::lane`): with the API and the webhook dispatcher in one process,
//! accepted webhooks go straight to the dispatcher, while the outbox row (claimed for
//! the lane) keeps the guarantee.

use std::time::Duration;

use herald_testkit::receiver::{Receiver, Respond};
use serde_json::{json, Value};

use crate::harness::*;

const ENDPOINT_SCOPES: &[&str] = &["endpoints:read", "endpoints:write"];

/// One request in flight per endpoint, so arrival order is start order (with more,
/// attempts start in order but may overtake each other on the wire).
const ONE_AT_A_TIME: (&str, &str) = ("HERALD_WEBHOOK_ENDPOINT_CONCURRENCY", "1");

#[tokio::test]
async fn the_lane_carries_webhooks_in_acceptance_order_and_settles_them() {
    let (_sink, h, key) = setup(&[], &[ONE_AT_A_TIME]).await;
    carries_in_order(h, key).await;
}

#[tokio::test]
async fn on_kafka_the_lane_carries_webhooks_of_its_own_process() {
    let broker = crate::broker::Broker::memory().await;
    let prefix = format!("h{}.", uuid::Uuid::new_v4().simple());
    let extra = [
        ("HERALD_BUS", "kafka"),
        ("HERALD_KAFKA_BROKERS", &broker.addr()),
        ("HERALD_KAFKA_TOPIC_PREFIX", &prefix),
        ONE_AT_A_TIME,
    ];
    let (_sink, h, key) = setup(&[], &extra).await;
    carries_in_order(h, key).await;
}

async fn carries_in_order(h: Herald, key: String) {
    let owner = h.api_key(ENDPOINT_SCOPES).await;
    let rx = Receiver::start().await;
    h.create_endpoint(&owner, &json!({"url": rx.url("/"), "event_types": ["user.*"]})).await;
    // Sequential: each one accepted (202) before the next is sent.
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(h.send_welcome(&key, &format!("User {i}"), &format!("u{i}@example.test")).await);
    }
    eventually(Duration::from_secs(20), "30 webhooks", || async { (rx.count() >= 30).then_some(()) }).await;
    let names: Vec<String> = rx
        .requests()
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            v["data"]["user"]["name"].as_str().unwrap().to_owned()
        })
        .collect();
    let expected: Vec<String> = (0..30).map(|i| format!("User {i}")).collect();
    assert_eq!(names, expected, "first attempts in acceptance order");
    // They went by the lane (the dispatcher shares the API's process), and every row was
    // settled: the outbox is empty and nothing stays claimed.
    assert!(metric(&h, "herald_lane_carried_total{topic=\"webhook\"}").await >= 30.0);
    h.wait_count("outbox WHERE topic = 'webhook'", 0).await;
    for id in &ids {
        let n = h.wait_terminal(&key, id).await;
        let webhook = n["deliveries"].as_array().unwrap().iter().find(|d| d["channel"] == "webhook").unwrap().clone();
        assert_eq!(webhook["status"], "succeeded");
        assert_eq!(webhook["attempts"].as_array().unwrap().len(), 1);
    }
    assert_eq!(rx.count(), 30, "no duplicates");
    h.stop().await;
}

#[tokio::test]
async fn a_process_killed_with_a_webhook_on_its_lane_loses_nothing() {
    let db = fresh_database().await;
    let sink = herald_testkit::smtp::SmtpSink::start().await;
    // A short claim on lane rows; the webhook's own lease is twice its timeout (10 s).
    let extra = [("HERALD_BUS_CLAIM_TIMEOUT", "2s"), ("HERALD_WEBHOOK_TIMEOUT", "5s")];
    let mut h = Herald::start(&db, &sink.url(), &extra).await;
    let key = h.api_key(&["notifications:write", "notifications:read"]).await;
    let owner = h.api_key(ENDPOINT_SCOPES).await;
    let rx = Receiver::start().await;
    rx.set_default(Respond::After(Duration::from_secs(30), 200));
    h.create_endpoint(&owner, &json!({"url": rx.url("/"), "event_types": ["user.*"]})).await;
    let id = h.send_welcome(&key, "Ada", "ada@example.test").await;

    // The dispatcher of the accepting process is mid-request, the row claimed for its lane.
    eventually(Duration::from_secs(10), "the webhook to reach the receiver", || async {
        (rx.count() == 1).then_some(())
    })
    .await;
    let claimed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE topic = 'webhook' AND claim_token IS NOT NULL AND claimed_until > now()",
    )
    .fetch_one(&h.db)
    .await
    .unwrap();
    assert_eq!(claimed, 1, "the lane's row is claimed from the moment it is committed");
    h.kill();
    h.child.wait().await.unwrap();

    rx.set_default(Respond::Status(200));
    let h = Herald::start(&db, &sink.url(), &extra).await;
    let n = eventually(Duration::from_secs(40), "the webhook to be delivered again", || async {
        let n = h.get_notification(&key, &id).await;
        let w = n["deliveries"].as_array().unwrap().iter().find(|d| d["channel"] == "webhook").unwrap().clone();
        (w["status"] == "succeeded").then_some(w)
    })
    .await;
    // The killed attempt left no record; the one after the lease did.
    assert_eq!(n["attempts"].as_array().unwrap().len(), 1);
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].headers["webhook-id"], reqs[1].headers["webhook-id"], "the same webhook, again");
    h.wait_count("outbox WHERE topic = 'webhook'", 0).await;
    h.stop().await;
}

/// A graceful stop gives what the lane still holds back to the bus, with the attempts
/// the accepting statement started, so the next process takes them at once. (The
/// dispatcher here waits for a broker that is not there, so the lane is never read.)
#[tokio::test]
async fn a_graceful_stop_gives_the_lane_back_to_the_bus() {
    let nobody = free_port().to_string();
    let brokers = format!("127.0.0.1:{nobody}");
    let extra = [("HERALD_BUS", "kafka"), ("HERALD_KAFKA_BROKERS", brokers.as_str())];
    let (_sink, h, key) = setup(&[], &extra).await;
    let owner = h.api_key(ENDPOINT_SCOPES).await;
    let rx = Receiver::start().await;
    h.create_endpoint(&owner, &json!({"url": rx.url("/"), "event_types": ["user.*"]})).await;
    for i in 0..3 {
        h.send_welcome(&key, &format!("User {i}"), &format!("u{i}@example.test")).await;
    }
    let laned = "SELECT count(*) FROM outbox o JOIN deliveries d ON d.id = (o.payload->>'delivery_id')::uuid
                 WHERE o.topic = 'webhook' AND o.claim_token IS NOT NULL AND d.status = 'in_flight'";
    let n: i64 = sqlx::query_scalar(laned).fetch_one(&h.db).await.unwrap();
    assert_eq!(n, 3, "claimed for the lane, attempts started, when accepted");
    let db = h.db.clone();
    h.stop().await;
    let given_back = "SELECT count(*) FROM outbox o JOIN deliveries d ON d.id = (o.payload->>'delivery_id')::uuid
                      WHERE o.topic = 'webhook' AND o.claim_token IS NULL AND d.status = 'pending' AND d.lease_until IS NULL";
    let n: i64 = sqlx::query_scalar(given_back).fetch_one(&db).await.unwrap();
    assert_eq!(n, 3, "unclaimed again, attempts not started");
    assert_eq!(rx.count(), 0);
}

/// A full lane sends webhooks the bus's way, and nothing overtakes anything: the lane's
/// older messages go first, then the bus's (found at c=256 in the benchmark: the bus was
/// read first while the lane overflowed, and the lane's messages waited for seconds).
#[tokio::test]
async fn a_full_lane_overflows_to_the_bus_in_order() {
    let (_sink, h, key) = setup(&[], &[ONE_AT_A_TIME, ("HERALD_LANE_CAPACITY", "2")]).await;
    let owner = h.api_key(ENDPOINT_SCOPES).await;
    let rx = Receiver::start().await;
    rx.set_default(Respond::After(Duration::from_millis(150), 200));
    h.create_endpoint(&owner, &json!({"url": rx.url("/"), "event_types": ["user.*"]})).await;
    for i in 0..12 {
        h.send_welcome(&key, &format!("User {i}"), &format!("u{i}@example.test")).await;
    }
    eventually(Duration::from_secs(30), "12 webhooks", || async { (rx.count() >= 12).then_some(()) }).await;
    let names: Vec<String> = rx
        .requests()
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["data"]["user"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, (0..12).map(|i| format!("User {i}")).collect::<Vec<_>>());
    assert!(metric(&h, "herald_lane_overflows_total{topic=\"webhook\"}").await >= 1.0);
    let carried = metric(&h, "herald_lane_carried_total{topic=\"webhook\"}").await;
    assert!((1.0..12.0).contains(&carried), "some by the lane, the rest by the bus: {carried}");
    h.wait_count("outbox WHERE topic = 'webhook'", 0).await;
    assert_eq!(rx.count(), 12);
    h.stop().await;
}

/// Endpoints are cached by the dispatcher between batches; a change through the API is
/// seen by the very next webhook (the server empties the cache before it answers).
#[tokio::test]
async fn an_endpoint_changed_through_the_api_applies_to_the_next_webhook() {
    let (_sink, h, key) = setup(&[], &[]).await;
    let owner = h.api_key(ENDPOINT_SCOPES).await;
    let (a, b) = (Receiver::start().await, Receiver::start().await);
    let ep = h.create_endpoint(&owner, &json!({"url": a.url("/"), "event_types": ["user.*"]})).await;
    let path = format!("/api/v1/endpoints/{}", ep["id"].as_str().unwrap());
    for round in 0..5 {
        let (from, to) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let before = (from.count(), to.count());
        h.send_welcome(&key, "Ada", "ada@example.test").await;
        eventually(Duration::from_secs(10), "the webhook", || async { (from.count() > before.0).then_some(()) }).await;
        let (s, v) = h.call(reqwest::Method::PATCH, &path, &owner, Some(&json!({"url": to.url("/")}))).await;
        assert_eq!(s, 200, "{v}");
        h.send_welcome(&key, "Bob", "bob@example.test").await;
        eventually(Duration::from_secs(10), "the webhook at the new URL", || async {
            (to.count() > before.1).then_some(())
        })
        .await;
        assert_eq!(from.count(), before.0 + 1, "nothing more went to the old URL");
    }
    h.stop().await;
}
