//! One contract for every bus backend: publish, consume, per-key order, redelivery of
//! unacked messages after a consumer dies, dead-lettering. Each test runs against the
//! postgres backend and the kafka backend (a real Kafka-protocol broker).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use herald_core::bus::kafka::{ensure_topics, KafkaConsumer, KafkaSettings, Relay};
use herald_core::bus::postgres::PgConsumer;
use herald_core::bus::{self, BusMessage, Consumer, Received, Topic};
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::{Headers, Message};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::broker::Broker;
use crate::harness::fresh_database;

enum AnyConsumer {
    Pg(PgConsumer),
    Kafka(KafkaConsumer),
}

impl AnyConsumer {
    async fn poll(&mut self, max: usize) -> Vec<Received> {
        match self {
            AnyConsumer::Pg(c) => c.poll(max).await.unwrap(),
            AnyConsumer::Kafka(c) => c.poll(max).await.unwrap(),
        }
    }
    async fn ack(&mut self, m: &[Received]) {
        match self {
            AnyConsumer::Pg(c) => c.ack(m).await.unwrap(),
            AnyConsumer::Kafka(c) => c.ack(m).await.unwrap(),
        }
    }
    async fn dead_letter(&mut self, m: &Received, reason: &str) {
        match self {
            AnyConsumer::Pg(c) => c.dead_letter(m, reason).await.unwrap(),
            AnyConsumer::Kafka(c) => c.dead_letter(m, reason).await.unwrap(),
        }
    }
    /// Polls until `n` messages arrived (or panics after 30 s).
    async fn take(&mut self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut got = Vec::new();
        while got.len() < n {
            assert!(Instant::now() < deadline, "got {} of {n} messages", got.len());
            got.extend(self.poll(n - got.len()).await);
        }
        got
    }
    /// Asserts nothing arrives for a while.
    async fn quiet(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            let got = self.poll(10).await;
            assert!(got.is_empty(), "unexpected redelivery of {} messages", got.len());
        }
    }
}

struct Fixture {
    db: PgPool,
    kafka: Option<(Broker, KafkaSettings, watch::Sender<bool>)>,
}

impl Fixture {
    async fn new(use_kafka: bool) -> Fixture {
        let db = PgPool::connect(&fresh_database().await).await.unwrap();
        herald_core::db::migrate(&db).await.unwrap();
        if !use_kafka {
            return Fixture { db, kafka: None };
        }
        let broker = Broker::memory().await;
        let settings = KafkaSettings {
            brokers: broker.addr(),
            topic_prefix: format!("t{}.", uuid::Uuid::new_v4().simple()),
            partitions: 3,
            replication: 1,
            properties: vec![],
            consumer_properties: vec![],
            producer_properties: vec![],
        };
        ensure_topics(&settings).await.unwrap();
        let (stop, stop_rx) = watch::channel(false);
        let relay = Relay {
            outbox: PgConsumer::new(db.clone(), None, Duration::from_secs(5), Duration::from_millis(100))
                .await
                .unwrap(),
            producer: settings.producer().unwrap(),
            settings: settings.clone(),
            batch_size: 100,
        };
        tokio::spawn(relay.run(stop_rx));
        Fixture { db, kafka: Some((broker, settings, stop)) }
    }

    async fn publish(&self, msgs: &[BusMessage]) {
        let mut tx = self.db.begin().await.unwrap();
        bus::enqueue(&mut tx, msgs).await.unwrap();
        tx.commit().await.unwrap();
    }

    async fn consumer(&self) -> AnyConsumer {
        match &self.kafka {
            None => AnyConsumer::Pg(
                PgConsumer::new(
                    self.db.clone(),
                    Some(Topic::Email),
                    Duration::from_secs(1),
                    Duration::from_millis(100),
                )
                .await
                .unwrap(),
            ),
            Some((_, s, _)) => {
                AnyConsumer::Kafka(KafkaConsumer::new(s, Topic::Email, &s.topic("email-dispatchers")).unwrap())
            }
        }
    }
}

fn msg(key: &str, seq: usize) -> BusMessage {
    BusMessage { topic: Topic::Email, key: key.into(), payload: json!({"seq": seq, "key": key}), available_at: None }
}

async fn publish_consume_ack(use_kafka: bool) {
    let f = Fixture::new(use_kafka).await;
    f.publish(&[msg("a", 0), msg("b", 1), msg("c", 2)]).await;
    let mut c = f.consumer().await;
    let got = c.take(3).await;
    let mut seqs: Vec<i64> = got.iter().map(|m| m.payload["seq"].as_i64().unwrap()).collect();
    seqs.sort();
    assert_eq!(seqs, [0, 1, 2]);
    for m in &got {
        assert_eq!(m.topic, "email");
        assert_eq!(m.payload["key"], Value::String(m.key.clone()));
    }
    c.ack(&got).await;
    // Acked messages are not delivered again, to this consumer or to its successor.
    c.quiet(Duration::from_millis(1500)).await;
    drop(c);
    let mut next = f.consumer().await;
    next.quiet(Duration::from_secs(3)).await;
}

async fn order_per_key(use_kafka: bool) {
    let f = Fixture::new(use_kafka).await;
    let keys = ["ada@example.test", "bob@example.test", "eve@example.test"];
    let msgs: Vec<BusMessage> = (0..60).map(|i| msg(keys[i % 3], i)).collect();
    f.publish(&msgs[..30]).await;
    f.publish(&msgs[30..]).await;
    let mut c = f.consumer().await;
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < 60 {
        assert!(Instant::now() < deadline);
        let batch = c.poll(7).await;
        c.ack(&batch).await;
        got.extend(batch);
    }
    let mut last: HashMap<String, i64> = HashMap::new();
    for m in &got {
        let seq = m.payload["seq"].as_i64().unwrap();
        if let Some(prev) = last.insert(m.key.clone(), seq) {
            assert!(prev < seq, "key {} went from {prev} to {seq}", m.key);
        }
    }
    assert_eq!(last.len(), 3);
}

async fn redelivery_after_crash_before_ack(use_kafka: bool) {
    let f = Fixture::new(use_kafka).await;
    f.publish(&[msg("a", 0), msg("a", 1)]).await;
    let mut first = f.consumer().await;
    let got = first.take(2).await;
    assert_eq!(got.len(), 2);
    drop(first); // dies without acking
    let mut second = f.consumer().await;
    let again = second.take(2).await;
    let seqs: Vec<i64> = again.iter().map(|m| m.payload["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [0, 1]);
    second.ack(&again).await;
}

async fn dead_lettering(use_kafka: bool) {
    let f = Fixture::new(use_kafka).await;
    f.publish(&[msg("a", 0)]).await;
    let mut c = f.consumer().await;
    let got = c.take(1).await;
    c.dead_letter(&got[0], "undecodable: test").await;
    c.quiet(Duration::from_millis(1500)).await;
    match &f.kafka {
        None => {
            let (reason, payload): (String, Vec<u8>) =
                sqlx::query_as("SELECT reason, payload FROM dead_letters").fetch_one(&f.db).await.unwrap();
            assert_eq!(reason, "undecodable: test");
            assert_eq!(serde_json::from_slice::<Value>(&payload).unwrap()["seq"], 0);
            assert_eq!(sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox").fetch_one(&f.db).await.unwrap(), 0);
        }
        Some((_, s, _)) => {
            let dlq: StreamConsumer =
                s.client_config().set("group.id", "dlq-reader").set("auto.offset.reset", "earliest").create().unwrap();
            dlq.subscribe(&[&s.dead_letter_topic()]).unwrap();
            let m = tokio::time::timeout(Duration::from_secs(30), dlq.recv()).await.unwrap().unwrap();
            let reason = m
                .headers()
                .unwrap()
                .iter()
                .find(|h| h.key == "herald-reason")
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned());
            assert_eq!(reason.as_deref(), Some("undecodable: test"));
            assert_eq!(serde_json::from_slice::<Value>(m.payload().unwrap()).unwrap()["seq"], 0);
        }
    }
}

macro_rules! both_backends {
    ($($name:ident),*) => {
        mod postgres { $( #[tokio::test] async fn $name() { super::$name(false).await } )* }
        mod kafka { $( #[tokio::test] async fn $name() { super::$name(true).await } )* }
    };
}

both_backends!(publish_consume_ack, order_per_key, redelivery_after_crash_before_ack, dead_lettering);
