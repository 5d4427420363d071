//! The Kafka backend (rdkafka): an outbox relay that publishes with an idempotent
//! producer, and consumer groups for the dispatchers.
//!
//! - Topics: `<prefix>email`, `<prefix>webhook`, `<prefix>dead-letter`, created at
//!   start when missing.
//! - Relay: claims outbox rows (any topic) like the postgres backend does, publishes
//!   them keyed by the row's key (recipient or endpoint: per-target order), and deletes
//!   them only after the broker acknowledged every one (`acks=all`). A crash between
//!   publish and delete republishes: duplicates possible, loss impossible.
//! - Consumers: one group per dispatcher kind, `enable.auto.offset.store=false`;
//!   offsets are stored only when the dispatcher acks, i.e. after the attempt is
//!   recorded in PostgreSQL, and committed by the auto-commit timer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use futures::FutureExt as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer as _, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::watch;

use super::postgres::PgConsumer;
use super::{Acks, Consumer, Receipt, Received, Topic};

/// Kafka settings from `HERALD_KAFKA_*`.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    pub topic_prefix: String,
    pub partitions: i32,
    pub replication: i32,
    /// librdkafka properties passed through to every client (TLS, SASL, ...).
    pub properties: Vec<(String, String)>,
    /// ... to consumers only (`HERALD_KAFKA_CONSUMER_*`).
    pub consumer_properties: Vec<(String, String)>,
    /// ... to producers only (`HERALD_KAFKA_PRODUCER_*`).
    pub producer_properties: Vec<(String, String)>,
}

impl KafkaSettings {
    pub fn client_config(&self) -> ClientConfig {
        self.client_config_with(&[], &[])
    }

    /// A client configuration with Herald's `defaults`, which the operator's
    /// `HERALD_KAFKA_*` properties (and then the client-kind ones in `extra`) override.
    fn client_config_with(&self, defaults: &[(&str, &str)], extra: &[(String, String)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for (k, v) in self.properties.iter().chain(extra) {
            c.set(k, v);
        }
        c
    }

    pub fn topic(&self, t: &str) -> String {
        format!("{}{t}", self.topic_prefix)
    }

    pub fn dead_letter_topic(&self) -> String {
        self.topic("dead-letter")
    }

    fn logical<'a>(&self, kafka_topic: &'a str) -> &'a str {
        kafka_topic.strip_prefix(self.topic_prefix.as_str()).unwrap_or(kafka_topic)
    }

    pub fn producer(&self) -> anyhow::Result<FutureProducer> {
        Ok(self
            .client_config_with(&[("linger.ms", "1"), ("message.timeout.ms", "30000")], &self.producer_properties)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()?)
    }
}

/// Creates Herald's topics where they are missing.
pub async fn ensure_topics(s: &KafkaSettings) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = s.client_config().create()?;
    let names = [s.topic(Topic::Email.as_str()), s.topic(Topic::Webhook.as_str()), s.dead_letter_topic()];
    let topics: Vec<NewTopic> =
        names.iter().map(|n| NewTopic::new(n, s.partitions, TopicReplication::Fixed(s.replication))).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&topics, &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("cannot create Kafka topic {name}: {code}"),
        }
    }
    Ok(())
}

/// Checks that the brokers answer (for `/readyz`).
pub async fn check_brokers(producer: &FutureProducer) -> anyhow::Result<()> {
    let p = producer.clone();
    tokio::task::spawn_blocking(move || p.client().fetch_metadata(None, Duration::from_secs(3))).await??;
    Ok(())
}

/// Publishes the outbox to Kafka.
pub struct Relay {
    pub outbox: PgConsumer,
    pub producer: FutureProducer,
    pub settings: KafkaSettings,
    pub batch_size: usize,
}

impl Relay {
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let Relay { outbox, producer, settings, batch_size } = self;
        let publisher = Publisher { producer: producer.clone(), settings };
        super::consume(outbox, publisher, batch_size, shutdown, "outbox relay").await;
        let _ = producer.flush(Duration::from_secs(10));
    }
}

/// Publishes outbox batches to Kafka for the [`Relay`].
struct Publisher {
    producer: FutureProducer,
    settings: KafkaSettings,
}

impl super::BatchHandler<PgConsumer> for Publisher {
    async fn handle(&mut self, outbox: &mut PgConsumer, batch: &[Received]) -> anyhow::Result<()> {
        let topics: Vec<String> = batch.iter().map(|m| self.settings.topic(&m.topic)).collect();
        let sends = batch.iter().zip(&topics).map(|(m, topic)| {
            self.producer.send(FutureRecord::to(topic).key(m.key.as_bytes()).payload(&m.raw), Duration::from_secs(30))
        });
        let results = join_all(sends).await;
        let mut done = Vec::with_capacity(batch.len());
        let mut failed = Vec::new();
        let mut first_error = None;
        for (m, r) in batch.iter().zip(results) {
            match r {
                Ok(_) => done.push(m.clone()),
                Err((e, _)) => {
                    first_error.get_or_insert(e);
                    failed.push(m.clone());
                }
            }
        }
        let mut per_topic: HashMap<&str, u64> = HashMap::new();
        for m in &done {
            *per_topic.entry(m.topic.as_str()).or_default() += 1;
        }
        for (t, n) in per_topic {
            crate::metrics::published(t, n);
        }
        // Delete only what the broker acknowledged.
        outbox.ack_published(&done).await?;
        if let Some(e) = first_error {
            outbox.redeliver(&failed).await?;
            anyhow::bail!("{} of {} messages not acknowledged by Kafka: {e}", failed.len(), batch.len());
        }
        Ok(())
    }
}

/// Reports consumer lag per partition from librdkafka's statistics.
pub struct LagContext {
    prefix: String,
    /// Partitions taken away by a rebalance, for the consumer to forget their marks.
    revoked: Arc<std::sync::Mutex<Vec<i32>>>,
    /// Partitions this consumer holds, per topic (`herald_consumer_assigned_partitions`).
    assigned: std::sync::Mutex<HashMap<String, std::collections::BTreeSet<i32>>>,
}

impl LagContext {
    /// Adds (`assign`) or removes partitions and publishes the per-topic count.
    fn track(&self, tpl: &rdkafka::TopicPartitionList, assign: bool) {
        let mut held = self.assigned.lock().expect("assigned partitions");
        for e in tpl.elements() {
            let set = held.entry(e.topic().to_owned()).or_default();
            if assign {
                set.insert(e.partition());
            } else {
                set.remove(&e.partition());
            }
        }
        for (name, set) in held.iter() {
            let logical = name.strip_prefix(self.prefix.as_str()).unwrap_or(name);
            crate::metrics::assigned_partitions(logical, set.len());
        }
    }
}

impl ClientContext for LagContext {
    fn stats(&self, stats: Statistics) {
        for (name, topic) in &stats.topics {
            let logical = name.strip_prefix(self.prefix.as_str()).unwrap_or(name);
            for (id, p) in &topic.partitions {
                // Only the partitions assigned to this consumer.
                if *id < 0 || !p.desired || p.hi_offset < 0 {
                    continue;
                }
                // librdkafka reports -1 until the group has committed an offset; the
                // consumer then starts from the log start, so that is the lag's base.
                let lag = if p.consumer_lag >= 0 {
                    p.consumer_lag
                } else {
                    let base = if p.committed_offset >= 0 { p.committed_offset } else { p.lo_offset.max(0) };
                    (p.hi_offset - base).max(0)
                };
                crate::metrics::consumer_lag(logical, *id, lag);
            }
        }
    }
}

impl ConsumerContext for LagContext {
    fn pre_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if let rdkafka::consumer::Rebalance::Revoke(tpl) = rebalance {
            self.track(tpl, false);
            if tpl.count() > 0 {
                crate::metrics::revoked(tpl.count() as u64);
                let mut revoked = self.revoked.lock().expect("revoked partitions");
                revoked.extend(tpl.elements().iter().map(|e| e.partition()));
            }
        }
    }

    fn post_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if let rdkafka::consumer::Rebalance::Assign(tpl) = rebalance {
            self.track(tpl, true);
        }
    }
}

/// Per partition: which received messages are unfinished, so the stored offset never
/// passes one of them. Messages of one partition finish out of order (different
/// endpoints or recipients share a partition), so "the highest acked offset" is not safe:
/// the offset stored is always the lowest unfinished one.
#[derive(Debug, Default)]
pub struct Watermarks {
    parts: HashMap<i32, PartitionMarks>,
}

#[derive(Debug, Default)]
struct PartitionMarks {
    /// Received and not finished (a count: a rewound message may be received twice).
    open: std::collections::BTreeMap<i64, u32>,
    /// Rewound to here by `redeliver`: nothing at or past it is finished until it is
    /// received again.
    floor: Option<i64>,
    /// The highest finished offset.
    finished: Option<i64>,
    /// The next offset to consume that was last stored.
    stored: Option<i64>,
}

impl Watermarks {
    pub fn received(&mut self, partition: i32, offset: i64) {
        let p = self.parts.entry(partition).or_default();
        *p.open.entry(offset).or_default() += 1;
        if p.floor.is_some_and(|f| offset <= f) {
            p.floor = None;
        }
    }

    fn close(&mut self, partition: i32, offset: i64) -> &mut PartitionMarks {
        let p = self.parts.entry(partition).or_default();
        if let Some(n) = p.open.get_mut(&offset) {
            *n -= 1;
            if *n == 0 {
                p.open.remove(&offset);
            }
        }
        p
    }

    /// A partition was revoked: its next position is the group's committed offset. Drop
    /// the rewind pin, the progress and the last stored offset; keep the unfinished
    /// messages, which are still being worked on (a detached batch remainder, or the
    /// buffer) and close when they finish.
    pub fn reset(&mut self, partition: i32) {
        if let Some(p) = self.parts.get_mut(&partition) {
            p.floor = None;
            p.finished = None;
            p.stored = None;
        }
    }

    /// The message is done (recorded, stale or dead-lettered).
    pub fn finished(&mut self, partition: i32, offset: i64) {
        let p = self.close(partition, offset);
        p.finished = Some(p.finished.map_or(offset, |f| f.max(offset)));
    }

    /// The message will be consumed again from `offset` (a seek back).
    pub fn rewound(&mut self, partition: i32, offset: i64) {
        let p = self.close(partition, offset);
        p.floor = Some(p.floor.map_or(offset, |f| f.min(offset)));
    }

    /// The next offset to consume that may be committed for `partition`, if it moved
    /// forward since last asked: the lowest unfinished or rewound offset, or one past the
    /// highest finished when nothing is open.
    pub fn advance(&mut self, partition: i32) -> Option<i64> {
        let p = self.parts.get_mut(&partition)?;
        let lowest_open = p.open.keys().next().copied();
        let next = match (lowest_open, p.floor) {
            (Some(o), Some(f)) => o.min(f),
            (Some(o), None) => o,
            (None, Some(f)) => f,
            (None, None) => p.finished? + 1,
        };
        if p.stored.is_some_and(|s| s >= next) || next <= 0 {
            return None;
        }
        p.stored = Some(next);
        Some(next)
    }
}

/// A dispatcher's view of its Kafka topic, in a consumer group.
pub struct KafkaConsumer {
    marks: Arc<std::sync::Mutex<Watermarks>>,
    revoked: Arc<std::sync::Mutex<Vec<i32>>>,
    consumer: Arc<StreamConsumer<LagContext>>,
    /// Messages received by `keep_alive` during a batch, served by the next `poll`.
    buffered: std::collections::VecDeque<Received>,
    settings: KafkaSettings,
    topic: String,
    dead_letters: FutureProducer,
}

impl KafkaConsumer {
    pub fn new(settings: &KafkaSettings, topic: Topic, group: &str) -> anyhow::Result<Self> {
        let revoked = Arc::new(std::sync::Mutex::new(Vec::new()));
        // A dead member is noticed after the session timeout; keep it short so its
        // partitions move to the living quickly.
        let consumer: StreamConsumer<LagContext> = settings
            .client_config_with(
                &[
                    ("session.timeout.ms", "10000"),
                    ("heartbeat.interval.ms", "2000"),
                    ("statistics.interval.ms", "5000"),
                    // Latency: a fetch that finds nothing comes back after at most 10 ms
                    // (librdkafka's default, 500 ms, is the wait before a message that
                    // arrives meanwhile is seen, on brokers that do not answer early).
                    ("fetch.wait.max.ms", "10"),
                ],
                &settings.consumer_properties,
            )
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .create_with_context(LagContext {
                prefix: settings.topic_prefix.clone(),
                revoked: revoked.clone(),
                assigned: Default::default(),
            })?;
        let name = settings.topic(topic.as_str());
        consumer.subscribe(&[&name])?;
        Ok(Self {
            consumer: Arc::new(consumer),
            buffered: Default::default(),
            marks: Default::default(),
            revoked,
            settings: settings.clone(),
            topic: name,
            dead_letters: settings.producer()?,
        })
    }

    fn receive(&mut self, m: &rdkafka::message::BorrowedMessage<'_>) -> Received {
        let raw = m.payload().unwrap_or_default().to_vec();
        self.marks.lock().expect("offset marks").received(m.partition(), m.offset());
        Received {
            topic: self.settings.logical(m.topic()).to_owned(),
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default(),
            payload: serde_json::from_slice(&raw).unwrap_or(serde_json::Value::Null),
            raw,
            receipt: Receipt::Kafka { partition: m.partition(), offset: m.offset() },
            started: None,
        }
    }

    fn store(&self, msgs: &[Received]) -> anyhow::Result<()> {
        self.acks().store(msgs)
    }
}

/// Settles a Kafka consumer's messages from any task: offset marks are shared with the
/// consumer, and seeking is thread-safe.
pub struct KafkaAcks {
    consumer: Arc<StreamConsumer<LagContext>>,
    marks: Arc<std::sync::Mutex<Watermarks>>,
    topic: String,
}

impl KafkaAcks {
    /// Marks messages finished and stores, per partition, the offset below which every
    /// received message is finished (never past an unfinished or rewound one).
    fn store(&self, msgs: &[Received]) -> anyhow::Result<()> {
        let mut marks = self.marks.lock().expect("offset marks");
        let mut touched = Vec::new();
        for m in msgs {
            if let Receipt::Kafka { partition, offset } = m.receipt {
                marks.finished(partition, offset);
                if !touched.contains(&partition) {
                    touched.push(partition);
                }
            }
        }
        for partition in touched {
            if let Some(next) = marks.advance(partition) {
                // rd_kafka_offset_store commits offset + 1: "everything up to here is done".
                // Fails for a partition a rebalance just took away; its new owner gets the
                // message again and finds the attempt already recorded.
                if let Err(e) = self.consumer.store_offset(&self.topic, partition, next - 1) {
                    tracing::debug!(partition, next, error = %e, "kafka: offset not stored (partition revoked?)");
                }
            }
        }
        Ok(())
    }
}

impl Acks for KafkaAcks {
    async fn ack(&self, msgs: &[Received]) -> anyhow::Result<()> {
        self.store(msgs)
    }

    async fn redeliver(&self, msgs: &[Received]) -> anyhow::Result<()> {
        // A short pause: the usual cause is another worker still holding the delivery.
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Rewind each partition to its earliest unfinished message, so later acks in
        // that partition cannot commit past it.
        let mut earliest: HashMap<i32, i64> = HashMap::new();
        {
            let mut marks = self.marks.lock().expect("offset marks");
            for m in msgs {
                if let Receipt::Kafka { partition, offset } = m.receipt {
                    marks.rewound(partition, offset);
                    let e = earliest.entry(partition).or_insert(offset);
                    *e = (*e).min(offset);
                }
            }
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in earliest {
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(o))?;
        }
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || consumer.seek_partitions(tpl, Duration::from_secs(5))).await??;
        Ok(())
    }

    /// The consumer itself keeps polling (and so its group membership) meanwhile.
    async fn keep_alive(&self, _msgs: &[Received]) {}
}

impl Consumer for KafkaConsumer {
    type Acks = KafkaAcks;

    fn acks(&self) -> KafkaAcks {
        KafkaAcks { consumer: self.consumer.clone(), marks: self.marks.clone(), topic: self.topic.clone() }
    }

    async fn poll_now(&mut self, max: usize) -> anyhow::Result<Vec<Received>> {
        self.take(max, None).await
    }

    async fn poll_until(&mut self, max: usize, wake: &tokio::sync::Notify) -> anyhow::Result<Vec<Received>> {
        self.take(max, Some(wake)).await
    }

    async fn ack(&mut self, msgs: &[Received]) -> anyhow::Result<()> {
        self.store(msgs)
    }

    async fn keep_alive(&mut self) {
        // Polling resets librdkafka's max.poll.interval.ms clock.
        let consumer = self.consumer.clone();
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(1), consumer.recv()).await {
            let r = self.receive(&m);
            self.buffered.push_back(r);
        }
    }

    async fn dead_letter(&mut self, msg: &Received, reason: &str) -> anyhow::Result<()> {
        let topic = self.settings.dead_letter_topic();
        let headers = OwnedHeaders::new()
            .insert(Header { key: "herald-reason", value: Some(reason) })
            .insert(Header { key: "herald-topic", value: Some(msg.topic.as_str()) });
        self.dead_letters
            .send(
                FutureRecord::to(&topic).key(msg.key.as_bytes()).payload(&msg.raw).headers(headers),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("cannot dead-letter a message: {e}"))?;
        crate::metrics::dead_lettered(&msg.topic);
        self.store(std::slice::from_ref(msg))
    }

    async fn redeliver(&mut self, msgs: &[Received]) -> anyhow::Result<()> {
        self.acks().redeliver(msgs).await
    }
}

impl KafkaConsumer {
    /// Up to `max` messages: what `keep_alive` buffered, else — when there is a `wake` to
    /// wait on — the first one within a second (or until `wake`), then what is already
    /// there.
    async fn take(&mut self, max: usize, wake: Option<&tokio::sync::Notify>) -> anyhow::Result<Vec<Received>> {
        let consumer = self.consumer.clone();

        // A partition that left us starts afresh if it comes back (its new position is the
        // group's committed offset); what is still open on it stays open until finished.
        for p in std::mem::take(&mut *self.revoked.lock().expect("revoked partitions")) {
            self.marks.lock().expect("offset marks").reset(p);
        }
        let mut out: Vec<Received> = self.buffered.drain(..self.buffered.len().min(max)).collect();
        if let (true, Some(wake)) = (out.is_empty(), wake) {
            let first = tokio::select! {
                biased;
                _ = wake.notified() => return Ok(out),
                r = tokio::time::timeout(Duration::from_secs(1), consumer.recv()) => r,
            };
            match first {
                Err(_) => return Ok(out),
                Ok(Ok(first)) => out.push(self.receive(&first)),
                Ok(Err(e)) => {
                    if matches!(e, KafkaError::MessageConsumption(RDKafkaErrorCode::PollExceeded)) {
                        crate::metrics::evicted();
                    }
                    return Err(e.into());
                }
            }
        }
        // Then what the client already holds, without waiting for more.
        while out.len() < max {
            match consumer.recv().now_or_never() {
                Some(Ok(m)) => out.push(self.receive(&m)),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "kafka consumer error");
                    break;
                }
                None => break,
            }
        }
        let Some(first) = out.first() else { return Ok(out) };
        crate::metrics::consumed(&first.topic, out.len() as u64);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::Watermarks;

    #[test]
    fn offsets_never_pass_an_unfinished_message() {
        let mut w = Watermarks::default();
        for o in 10..15 {
            w.received(0, o);
        }
        // 12 and 14 finish first: nothing below 10 is unfinished, but 10 is.
        w.finished(0, 12);
        w.finished(0, 14);
        assert_eq!(w.advance(0), Some(10));
        w.finished(0, 10);
        assert_eq!(w.advance(0), Some(11), "11 is still open");
        w.finished(0, 11);
        assert_eq!(w.advance(0), Some(13));
        w.finished(0, 13);
        assert_eq!(w.advance(0), Some(15), "everything received is done");
        assert_eq!(w.advance(0), None, "no change, nothing to store");
    }

    #[test]
    fn a_rewound_message_holds_the_mark_until_received_again() {
        let mut w = Watermarks::default();
        for o in 0..3 {
            w.received(1, o);
        }
        w.rewound(1, 1);
        w.finished(1, 0);
        w.finished(1, 2);
        assert_eq!(w.advance(1), Some(1), "1 was handed back: the mark stays at it");
        w.received(1, 1);
        w.received(1, 2); // the seek redelivers 2 as well
        w.finished(1, 1);
        assert_eq!(w.advance(1), Some(2));
        w.finished(1, 2);
        assert_eq!(w.advance(1), Some(3));
        assert_eq!(w.advance(7), None, "an unknown partition");
    }

    #[test]
    fn a_revoked_partition_keeps_its_open_messages_but_not_its_pin() {
        let mut w = Watermarks::default();
        for o in 5..8 {
            w.received(2, o);
        }
        w.rewound(2, 5);
        w.reset(2); // revoked: another consumer may commit past 5 meanwhile
        w.finished(2, 7);
        assert_eq!(w.advance(2), Some(6), "6 is still being worked on (a detached remainder)");
        w.finished(2, 6);
        assert_eq!(w.advance(2), Some(8), "the stale pin at 5 is gone");
    }
}
