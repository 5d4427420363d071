//! Herald on `HERALD_BUS=kafka` against a real Kafka-protocol broker.

use std::collections::HashMap;
use std::time::Duration;

use crate::broker::Broker;
use crate::harness::*;

fn kafka_env(broker: &str) -> Vec<(&'static str, String)> {
    vec![
        ("HERALD_BUS", "kafka".into()),
        ("HERALD_KAFKA_BROKERS", broker.into()),
        ("HERALD_KAFKA_TOPIC_PREFIX", format!("h{}.", uuid::Uuid::new_v4().simple())),
        ("HERALD_KAFKA_PARTITIONS", "4".into()),
        ("HERALD_BUS_CLAIM_TIMEOUT", "3s".into()),
    ]
}

fn with<'a>(base: &'a [(&'static str, String)], more: &[(&'static str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v: Vec<(&str, &str)> = base.iter().map(|(k, v)| (*k, v.as_str())).collect();
    v.extend(more.iter().copied());
    v
}

/// Counts emails per recipient at the SMTP server.
fn per_recipient(sink: &SmtpSink) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for mail in sink.accepted() {
        for r in mail.rcpt_to {
            *m.entry(r).or_insert(0) += 1;
        }
    }
    m
}

async fn post_many(h: &Herald, key: &str, range: std::ops::Range<usize>) {
    futures::future::join_all(range.map(|i| async move {
        let email = format!("user{i}@example.test");
        h.send_welcome(key, &format!("User {i}"), &email).await;
    }))
    .await;
}

async fn wait_all_succeeded(h: &Herald, n: i64, timeout: Duration) {
    eventually(timeout, "every delivery to succeed", || async {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE status = 'succeeded'")
            .fetch_one(&h.db)
            .await
            .unwrap();
        (done == n).then_some(())
    })
    .await;
    // One recorded attempt per delivery: redeliveries and rebalances never double-record.
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM attempts").fetch_one(&h.db).await.unwrap();
    assert_eq!(attempts, n, "attempts recorded");
}

fn assert_none_missing(sink: &SmtpSink, n: usize) -> usize {
    let counts = per_recipient(sink);
    for i in 0..n {
        assert!(counts.contains_key(&format!("user{i}@example.test")), "user{i} never got an email");
    }
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    println!("{n} notifications: {} emails, {duplicates} duplicates", sink.accepted_count());
    duplicates
}

#[tokio::test]
async fn welcome_flow_on_kafka() {
    let broker = Broker::memory().await;
    let env = kafka_env(&broker.addr());
    let (sink, h, key) = setup(&[], &with(&env, &[])).await;
    // The welcome event also reaches a subscribed webhook endpoint, through the broker.
    let owner = h.api_key(&["endpoints:write"]).await;
    let rx = herald_testkit::receiver::Receiver::start().await;
    let ep =
        h.create_endpoint(&owner, &serde_json::json!({"url": rx.url("/"), "event_types": ["user.registered"]})).await;
    let id = h.send_welcome(&key, "Ada", "ada@example.test").await;
    let n = h.wait_terminal(&key, &id).await;
    assert_eq!(n["status"], "succeeded");
    let deliveries = n["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 2);
    for d in deliveries {
        assert_eq!(d["attempts"].as_array().unwrap().len(), 1, "{d}");
    }
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 1);
    let wh = standardwebhooks::Webhook::new(ep["secret"].as_str().unwrap()).unwrap();
    assert!(wh.verify(&reqs[0].body, &reqs[0].headers).is_ok());
    let mails = sink.accepted();
    assert_eq!(mails.len(), 1);
    assert!(mails[0].header("Subject").unwrap().contains("Ada"));
    // The email was published to and consumed from the broker; the webhook went to the
    // dispatcher of this very process by the fast lane (first attempts from another
    // process go through the broker: `a_killed_consumer_never_commits_past_…`); the
    // outbox drained.
    assert!(metric(&h, "herald_bus_published_total{topic=\"email\"}").await >= 1.0);
    assert!(metric(&h, "herald_bus_consumed_total{topic=\"email\"}").await >= 1.0);
    assert!(metric(&h, "herald_lane_carried_total{topic=\"webhook\"}").await >= 1.0);
    h.wait_count("outbox", 0).await;
    let ready = h.http.get(format!("{}/readyz", h.base)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    h.stop().await;
}

#[tokio::test]
async fn webhook_retries_and_endpoint_disable_go_through_kafka() {
    use herald_testkit::receiver::{Receiver, Respond};
    let broker = Broker::memory().await;
    let env = kafka_env(&broker.addr());
    let (sink, h, key) = setup(&[], &with(&env, &[])).await;
    let owner = h.api_key_for(&["endpoints:write"], Some("partner-k"), Some("k@partner.test")).await;
    let flaky = Receiver::start().await;
    flaky.script(vec![Respond::Status(500), Respond::Status(503)]);
    let gone = Receiver::start().await;
    gone.set_default(Respond::Status(410));
    let ep = h.create_endpoint(&owner, &serde_json::json!({"url": flaky.url("/"), "event_types": ["user.*"]})).await;
    h.create_endpoint(&owner, &serde_json::json!({"url": gone.url("/"), "event_types": ["user.registered"]})).await;
    let id = h.send_welcome(&key, "Ada", "ada@example.test").await;
    let n = h.wait_terminal(&key, &id).await;
    let d = n["deliveries"].as_array().unwrap().iter().find(|d| d["target"] == ep["id"]).unwrap().clone();
    assert_eq!(d["status"], "succeeded");
    assert_eq!(d["attempts"].as_array().unwrap().len(), 3, "two retries republished through the outbox and the broker");
    let reqs = flaky.requests();
    assert!(reqs.iter().all(|r| r.body == reqs[0].body && r.headers["webhook-id"] == reqs[0].headers["webhook-id"]));
    // The 410 endpoint was disabled and its owner emailed, through the broker too.
    eventually(Duration::from_secs(20), "the endpoint-disabled email", || async {
        sink.accepted().iter().any(|m| m.rcpt_to.iter().any(|r| r.contains("k@partner.test"))).then_some(())
    })
    .await;
    h.stop().await;
}

#[tokio::test]
async fn transient_failures_retry_through_kafka() {
    let broker = Broker::memory().await;
    let env = kafka_env(&broker.addr());
    let (sink, h, key) = setup(&[Reply::Code(451), Reply::Code(451)], &with(&env, &[])).await;
    let id = h.send_welcome(&key, "Ada", "ada@example.test").await;
    let n = h.wait_terminal(&key, &id).await;
    let outcomes: Vec<&str> =
        n["deliveries"][0]["attempts"].as_array().unwrap().iter().map(|a| a["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["transient_failure", "transient_failure", "succeeded"]);
    assert_eq!(sink.accepted_count(), 1);
    h.stop().await;
}

#[tokio::test]
async fn broker_down_still_accepts_and_delivers_later() {
    let port = free_port();
    let env = kafka_env(&format!("127.0.0.1:{port}"));
    let (sink, h, key) = setup(&[], &with(&env, &[])).await;
    let id = h.send_welcome(&key, "Ada", "ada@example.test").await;
    // Accepted and committed; the outbox holds it while there is no broker.
    assert_eq!(h.count("outbox").await, 1);
    let ready = h.http.get(format!("{}/readyz", h.base)).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let status: String = sqlx::query_scalar("SELECT status FROM deliveries").fetch_one(&h.db).await.unwrap();
    assert_eq!((status.as_str(), sink.accepted_count()), ("pending", 0), "nothing goes out without a broker");
    // The broker comes up on the configured address; Herald connects by itself.
    let broker = Broker::on_port(port).await;
    let n = h.wait_terminal(&key, &id).await;
    assert_eq!(n["status"], "succeeded");
    assert_eq!(sink.accepted_count(), 1);
    drop(broker);
    h.stop().await;
}

/// A broker, an SMTP server, one database, a process with the api and relay roles
/// and a key for it; `email_worker` starts email-role processes on the same parts.
struct Cluster {
    _broker: Broker,
    env: Vec<(&'static str, String)>,
    sink: SmtpSink,
    db: String,
    api: Herald,
    key: String,
}

impl Cluster {
    async fn start() -> Cluster {
        let broker = Broker::memory().await;
        let env = kafka_env(&broker.addr());
        let sink = SmtpSink::start().await;
        let db = fresh_database().await;
        let api = Herald::start(&db, &sink.url(), &with(&env, &[("HERALD_ROLES", "api,relay")])).await;
        let key = api.api_key(&["notifications:write", "notifications:read"]).await;
        Cluster { _broker: broker, env, sink, db, api, key }
    }

    async fn email_worker(&self) -> Herald {
        Herald::start(&self.db, &self.sink.url(), &with(&self.env, &[("HERALD_ROLES", "email")])).await
    }
}

#[tokio::test]
async fn scale_out_two_email_processes() {
    let c = Cluster::start().await;
    let (w1, w2) = (c.email_worker().await, c.email_worker().await);
    // Work spreads only once the group has given each worker partitions of its own.
    eventually(Duration::from_secs(60), "both email workers to hold partitions", || async {
        let a = metric(&w1, "herald_consumer_assigned_partitions{topic=\"email\"}").await;
        let b = metric(&w2, "herald_consumer_assigned_partitions{topic=\"email\"}").await;
        (a > 0.0 && b > 0.0).then_some(())
    })
    .await;
    const N: usize = 1000;
    post_many(&c.api, &c.key, 0..N).await;
    wait_all_succeeded(&c.api, N as i64, Duration::from_secs(120)).await;
    assert_none_missing(&c.sink, N);
    // Both email processes did work.
    let c1 = metric(&w1, "herald_attempts_total").await;
    let c2 = metric(&w2, "herald_attempts_total").await;
    println!("attempts: process 1 {c1}, process 2 {c2}");
    assert!(c1 > 0.0 && c2 > 0.0, "work did not spread: {c1} / {c2}");
    for h in [c.api, w1, w2] {
        h.stop().await;
    }
}

#[tokio::test]
async fn killed_email_process_loses_nothing_on_kafka() {
    let c = Cluster::start().await;
    let mut worker = c.email_worker().await;
    const N: usize = 300;
    post_many(&c.api, &c.key, 0..N).await;
    eventually(Duration::from_secs(60), "some emails to go out", || async {
        (c.sink.accepted_count() >= 20).then_some(())
    })
    .await;
    worker.kill();
    worker.child.wait().await.unwrap();
    let worker = c.email_worker().await;
    wait_all_succeeded(&c.api, N as i64, Duration::from_secs(120)).await;
    assert_none_missing(&c.sink, N);
    c.api.stop().await;
    worker.stop().await;
}

#[tokio::test]
async fn broker_restart_mid_stream_loses_nothing() {
    let broker_db = fresh_database().await;
    let mut broker = Broker::durable(&broker_db).await;
    let env = kafka_env(&broker.addr());
    let (sink, h, key) = setup(&[], &with(&env, &[])).await;
    const N: usize = 200;
    post_many(&h, &key, 0..N / 2).await;
    eventually(Duration::from_secs(60), "some emails to go out", || async {
        (sink.accepted_count() >= 10).then_some(())
    })
    .await;
    broker.stop().await;
    post_many(&h, &key, N / 2..N).await;
    broker.restart().await;
    wait_all_succeeded(&h, N as i64, Duration::from_secs(180)).await;
    assert_none_missing(&sink, N);
    h.stop().await;
}

#[tokio::test]
async fn slow_smtp_does_not_get_the_consumer_evicted() {
    let broker = Broker::memory().await;
    let env = kafka_env(&broker.addr());
    // librdkafka would leave the group after 7 s without a poll; one email takes 12 s.
    let settings = with(
        &env,
        &[
            ("HERALD_KAFKA_CONSUMER_SESSION_TIMEOUT_MS", "6000"),
            ("HERALD_KAFKA_CONSUMER_HEARTBEAT_INTERVAL_MS", "1000"),
            ("HERALD_KAFKA_CONSUMER_MAX_POLL_INTERVAL_MS", "7000"),
            ("HERALD_KAFKA_CONSUMER_STATISTICS_INTERVAL_MS", "500"),
        ],
    );
    let (sink, h, key) = setup(&[Reply::Slow(Duration::from_secs(12))], &settings).await;
    let id = h.send_welcome(&key, "Ada", "ada@example.test").await;
    let n = h.wait_terminal(&key, &id).await;
    assert_eq!(n["deliveries"][0]["status"], "succeeded");
    assert_eq!(n["deliveries"][0]["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(sink.data_ends(), 1);
    // Watch for a while: an evicted consumer reports it on its next poll.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        assert_eq!(metric(&h, "herald_consumer_evictions_total").await, 0.0, "the consumer was evicted");
        assert_eq!(metric(&h, "herald_consumer_partitions_revoked_total").await, 0.0, "partitions were revoked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Lag is reported per partition.
    let text = h.http.get(format!("{}/metrics", h.base)).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("herald_consumer_lag{"), "{text}");
    h.stop().await;
}

/// Two webhook messages in one partition: an early one whose endpoint is slow, a later
/// one that finishes at once. The consumer is killed between: the stored offset must
/// not have passed the unfinished early message, or it is never delivered.
#[tokio::test]
async fn a_killed_consumer_never_commits_past_an_unfinished_message() {
    use herald_testkit::receiver::{Receiver, Respond};
    let broker = Broker::memory().await;
    let env = kafka_env(&broker.addr());
    let sink = SmtpSink::start().await;
    let db = fresh_database().await;
    let one = with(&env, &[("HERALD_KAFKA_PARTITIONS", "1"), ("HERALD_ROLES", "api,relay,email")]);
    let api = Herald::start(&db, &sink.url(), &one).await;
    let key = api.api_key(&["notifications:write", "notifications:read"]).await;
    let owner = api.api_key(&["endpoints:read", "endpoints:write"]).await;
    let slow = Receiver::start().await;
    slow.script(vec![Respond::After(Duration::from_secs(30), 200)]);
    let fast = Receiver::start().await;
    let slow_ep =
        api.create_endpoint(&owner, &serde_json::json!({"url": slow.url("/"), "event_types": ["user.*"]})).await;
    let fast_ep = api
        .create_endpoint(&owner, &serde_json::json!({"url": fast.url("/"), "event_types": ["endpoint.disabled"]}))
        .await;
    let id = api.send_welcome(&key, "Ada", "ada@example.test").await;
    let (s, _) = api
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/endpoints/{}/test", fast_ep["id"].as_str().unwrap()),
            &owner,
            None,
        )
        .await;
    assert_eq!(s, 202);
    api.wait_count("outbox", 0).await;
    // Both messages are in the partition, the slow one first; one worker takes both.
    let worker_env =
        with(&env, &[("HERALD_KAFKA_PARTITIONS", "1"), ("HERALD_ROLES", "webhook"), ("HERALD_WEBHOOK_TIMEOUT", "40s")]);
    let mut worker = Herald::start(&db, &sink.url(), &worker_env).await;
    eventually(Duration::from_secs(30), "the fast delivery to be recorded", || async {
        let ok: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE target = $1 AND status = 'succeeded'")
            .bind(fast_ep["id"].as_str().unwrap())
            .fetch_one(&api.db)
            .await
            .unwrap();
        (ok == 1).then_some(())
    })
    .await;
    eventually(Duration::from_secs(10), "the slow endpoint's request", || async { (slow.count() == 1).then_some(()) })
        .await;
    // Long enough for the auto-commit timer to write whatever offset was stored.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    worker.kill();
    worker.child.wait().await.unwrap();
    // The dead worker's lease on the slow delivery runs out (here: at once).
    sqlx::query("UPDATE deliveries SET lease_until = now() - interval '1 second' WHERE status = 'in_flight'")
        .execute(&api.db)
        .await
        .unwrap();
    let worker = Herald::start(&db, &sink.url(), &worker_env).await;
    let n = api.wait_terminal(&key, &id).await;
    let d = n["deliveries"].as_array().unwrap().iter().find(|d| d["target"] == slow_ep["id"]).unwrap().clone();
    assert_eq!(d["status"], "succeeded", "{n}");
    assert_eq!(slow.count(), 2, "the unfinished message was consumed again after the crash");
    assert_eq!(fast.count(), 1, "the finished one was not sent again");
    worker.stop().await;
    api.stop().await;
}

/// Deliveries waiting in consumer lag were published: the sweeper leaves them alone.
#[tokio::test]
async fn the_sweeper_leaves_published_deliveries_in_consumer_lag_alone() {
    let broker = Broker::memory().await;
    let env = kafka_env(&broker.addr());
    let sink = SmtpSink::start().await;
    let db = fresh_database().await;
    // The sweeper runs with the webhook role; nobody consumes email yet.
    let api = Herald::start(
        &db,
        &sink.url(),
        &with(&env, &[("HERALD_ROLES", "api,relay,webhook"), ("HERALD_SWEEP_AFTER", "1s")]),
    )
    .await;
    let key = api.api_key(&["notifications:write", "notifications:read"]).await;
    const N: usize = 5;
    post_many(&api, &key, 0..N).await;
    api.wait_count("outbox", 0).await;
    // Once the deliveries are older than HERALD_SWEEP_AFTER, the sweeper looks at least
    // twice: each look would have re-enqueued them, were they taken for stuck.
    eventually(Duration::from_secs(20), "the deliveries to be older than the sweep grace", || async {
        let young: i64 =
            sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE created_at > now() - interval '1.2 seconds'")
                .fetch_one(&api.db)
                .await
                .unwrap();
        (young == 0).then_some(())
    })
    .await;
    let passes = metric(&api, "herald_sweeps_total").await;
    eventually(Duration::from_secs(20), "two sweeps", || async {
        (metric(&api, "herald_sweeps_total").await >= passes + 2.0).then_some(())
    })
    .await;
    let swept: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE next_attempt_at IS NOT NULL")
        .fetch_one(&api.db)
        .await
        .unwrap();
    assert_eq!(swept, 0, "published deliveries were re-enqueued by the sweeper");
    let published: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE published_at IS NOT NULL")
        .fetch_one(&api.db)
        .await
        .unwrap();
    assert_eq!(published, N as i64);
    let email = Herald::start(&db, &sink.url(), &with(&env, &[("HERALD_ROLES", "email")])).await;
    wait_all_succeeded(&api, N as i64, Duration::from_secs(60)).await;
    assert_eq!(assert_none_missing(&sink, N), 0, "each email sent once");
    email.stop().await;
    api.stop().await;
}
