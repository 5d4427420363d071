//! The fast lane: when the API and a dispatcher run in one process, the API hands the
//! messages it just committed straight to that dispatcher instead of through a
//! wake-up and a claim.
//!
//! The guarantee stays with the outbox. The accepting statement inserts the lane's
//! outbox rows *already claimed* by the lane's token, with a lease; after the commit the
//! API sends them over an in-process channel, and the dispatcher settles them like any
//! claimed rows (acks delete them by that token). If the process dies with rows in the
//! channel or in flight, their lease ends and any consumer (or the Kafka relay) claims
//! them from the table: at-least-once, as on the bus. Claimed rows wake nobody (the
//! outbox trigger notifies only for unclaimed ones).
//!
//! Order: the channel keeps acceptance order, and the dispatcher reads the lane through
//! the same loop as its bus ([`Laned`]), so one consumer works on both. When the channel
//! is full, the API stops using it (`overflow`) until the dispatcher has emptied the lane
//! and then found the bus drained, so a later notification does not overtake one that
//! went the bus's way.
//! The bus is still read at least every [`BUS_EVERY`] while the lane is busy (retries,
//! other processes' messages).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::{mpsc, Notify, OwnedMutexGuard};
use uuid::Uuid;

use super::postgres::settle;
use super::{Acks, Consumer, DeliveryJob, Receipt, Received, Topic};

/// How often the bus is read while the lane alone would keep the dispatcher busy.
pub const BUS_EVERY: Duration = Duration::from_millis(50);

/// The most messages one notification may put on the lane (one per endpoint); a larger
/// fan-out goes the bus's way.
pub const MAX_FAN_OUT: i64 = 64;

/// One process's lane for one topic.
pub struct Lane {
    topic: Topic,
    token: Uuid,
    lease: Duration,
    /// The dispatcher's lease on an attempt it started (`deliveries.lease_until`).
    attempt_lease: Duration,
    db: PgPool,
    tx: mpsc::Sender<Vec<Received>>,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Vec<Received>>>>,
    wake: Notify,
    overflow: AtomicBool,
}

/// An outbox row the accepting statement inserted on the lane, with its delivery
/// already started (`in_flight` under the attempt lease, attempt 1).
#[derive(Debug, Clone)]
pub struct LaneRow {
    pub outbox_id: i64,
    pub key: String,
    pub started: Prestarted,
}

/// A first attempt the accepting statement started: what the dispatcher needs to make
/// it without claiming the delivery again.
#[derive(Debug, Clone)]
pub struct Prestarted {
    pub delivery_id: Uuid,
    pub target: String,
    pub endpoint_id: Option<Uuid>,
    pub content: serde_json::Value,
}

/// What the accepting statement stamps on the lane's rows: the outbox rows are claimed
/// by `token` for `lease_secs`, and their deliveries started (`in_flight`) for
/// `attempt_lease_secs`.
#[derive(Debug, Clone, Copy)]
pub struct LaneClaim {
    pub token: Uuid,
    pub lease_secs: f64,
    pub attempt_lease_secs: f64,
}

/// A place on the lane, taken before the accepting transaction.
pub struct Slot<'a> {
    lane: &'a Lane,
    permit: mpsc::Permit<'a, Vec<Received>>,
}

impl Lane {
    /// `capacity`: notifications waiting for the dispatcher; `lease`: how long lane
    /// rows stay claimed (the bus's claim timeout); `attempt_lease`: the dispatcher's
    /// lease on the attempts the accepting statement starts.
    pub fn new(db: PgPool, topic: Topic, lease: Duration, attempt_lease: Duration, capacity: usize) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        Arc::new(Self {
            topic,
            token: Uuid::new_v4(),
            lease,
            attempt_lease,
            db,
            tx,
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
            wake: Notify::new(),
            overflow: AtomicBool::new(false),
        })
    }

    pub fn topic(&self) -> Topic {
        self.topic
    }

    /// A place for one notification's messages, or `None` when the lane is full (or was
    /// full and the bus has not been drained since): then they go the bus's way.
    pub fn reserve(&self) -> Option<Slot<'_>> {
        if self.overflow.load(Ordering::Acquire) {
            return None;
        }
        match self.tx.try_reserve() {
            Ok(permit) => Some(Slot { lane: self, permit }),
            Err(_) => {
                self.overflow.store(true, Ordering::Release);
                crate::metrics::lane_overflowed(self.topic.as_str());
                None
            }
        }
    }

    /// Gives back the rows of this lane that no dispatcher will work on any more (at
    /// shutdown, once every dispatcher task has ended), and the attempts the accepting
    /// statement started for them, so the next consumer takes them at once instead of
    /// after the leases.
    pub async fn release(&self) -> anyhow::Result<i64> {
        Ok(crate::delivery_status::give_back_lane(&self.db, self.token).await?)
    }
}

impl Slot<'_> {
    /// The claim the accepting statement stamps on the lane's rows.
    pub fn claim(&self) -> LaneClaim {
        LaneClaim {
            token: self.lane.token,
            lease_secs: self.lane.lease.as_secs_f64(),
            attempt_lease_secs: self.lane.attempt_lease.as_secs_f64(),
        }
    }

    /// Hands the committed rows to the dispatcher. Call only after the commit.
    pub fn send(self, rows: Vec<LaneRow>) {
        if rows.is_empty() {
            return;
        }
        let topic = self.lane.topic.as_str();
        let msgs = rows
            .into_iter()
            .map(|r| {
                let payload = serde_json::to_value(DeliveryJob { delivery_id: r.started.delivery_id, attempt: 1 })
                    .expect("a delivery job serializes");
                Received {
                    topic: topic.to_owned(),
                    key: r.key,
                    raw: payload.to_string().into_bytes(),
                    payload,
                    receipt: Receipt::Lane { id: r.outbox_id },
                    started: Some(Arc::new(r.started)),
                }
            })
            .collect();
        self.permit.send(msgs);
        self.lane.wake.notify_one();
    }
}

fn lane_id(m: &Received) -> Option<i64> {
    match m.receipt {
        Receipt::Lane { id } => Some(id),
        _ => None,
    }
}

/// A consumer that reads its bus and this process's lane for the same topic.
pub struct Laned<C: Consumer> {
    inner: C,
    lane: Arc<Lane>,
    /// Where its lane rows are settled (the dispatcher's pool).
    db: PgPool,
    rx: OwnedMutexGuard<mpsc::Receiver<Vec<Received>>>,
    /// A notification's messages that did not fit in the last batch.
    held: Option<Vec<Received>>,
    last_bus: Instant,
}

impl<C: Consumer> Laned<C> {
    /// Waits until no other consumer reads the lane (a restarted dispatcher's
    /// predecessor is dropped first). `db`: the pool its lane rows are settled on.
    pub async fn new(inner: C, lane: Arc<Lane>, db: PgPool) -> Self {
        let rx = lane.rx.clone().lock_owned().await;
        Self { inner, lane, db, rx, held: None, last_bus: Instant::now() }
    }

    /// What the lane holds now, up to `max` messages (a notification's messages are
    /// never split, so a batch may start with more than `max`), counted.
    fn take_lane(&mut self, max: usize) -> Vec<Received> {
        let batch = self.take_held(max);
        if !batch.is_empty() {
            crate::metrics::lane_carried(self.lane.topic.as_str(), batch.len() as u64);
        }
        batch
    }

    fn take_held(&mut self, max: usize) -> Vec<Received> {
        let mut out = self.held.take().unwrap_or_default();
        while out.len() < max {
            match self.rx.try_recv() {
                Ok(v) if out.is_empty() || out.len() + v.len() <= max => out.extend(v),
                Ok(v) => {
                    self.held = Some(v);
                    break;
                }
                Err(_) => break,
            }
        }
        out
    }

    fn lane_waiting(&self) -> bool {
        self.held.is_some() || !self.rx.is_empty()
    }

    /// A bus read that came back with less than a full batch: the bus is drained, so
    /// the lane may take new notifications again.
    fn bus_read(&mut self, got: usize, max: usize) {
        self.last_bus = Instant::now();
        if got < max {
            self.lane.overflow.store(false, Ordering::Release);
        }
    }
}

/// Splits messages into lane rows and the bus's own, without copying when all are one
/// kind (batches are: a poll returns either).
fn split(msgs: &[Received]) -> (Vec<i64>, std::borrow::Cow<'_, [Received]>) {
    let lane: Vec<i64> = msgs.iter().filter_map(lane_id).collect();
    if lane.is_empty() {
        (lane, std::borrow::Cow::Borrowed(msgs))
    } else if lane.len() == msgs.len() {
        (lane, std::borrow::Cow::Borrowed(&[]))
    } else {
        (lane, std::borrow::Cow::Owned(msgs.iter().filter(|m| lane_id(m).is_none()).cloned().collect()))
    }
}

/// Settles a [`Laned`] consumer's messages from any task: lane rows with the statements
/// for claimed outbox rows and the lane's token, the rest through the bus.
pub struct LanedAcks<A: Acks> {
    inner: A,
    lane: Arc<Lane>,
    db: PgPool,
}

impl<A: Acks> Acks for LanedAcks<A> {
    async fn ack(&self, msgs: &[Received]) -> anyhow::Result<()> {
        let (lane, rest) = split(msgs);
        settle::ack(&self.db, self.lane.token, &lane).await?;
        if !rest.is_empty() {
            self.inner.ack(&rest).await?;
        }
        Ok(())
    }

    async fn redeliver(&self, msgs: &[Received]) -> anyhow::Result<()> {
        let (lane, rest) = split(msgs);
        settle::redeliver(&self.db, self.lane.token, &lane).await?;
        if !rest.is_empty() {
            self.inner.redeliver(&rest).await?;
        }
        Ok(())
    }

    async fn keep_alive(&self, msgs: &[Received]) {
        let (lane, rest) = split(msgs);
        settle::keep_alive(&self.db, self.lane.token, &lane, self.lane.lease).await;
        if !rest.is_empty() {
            self.inner.keep_alive(&rest).await;
        }
    }
}

impl<C: Consumer> Consumer for Laned<C> {
    type Acks = LanedAcks<C::Acks>;

    fn acks(&self) -> Self::Acks {
        LanedAcks { inner: self.inner.acks(), lane: self.lane.clone(), db: self.db.clone() }
    }

    async fn poll(&mut self, max: usize) -> anyhow::Result<Vec<Received>> {
        // While the lane has messages, they go first when it overflowed: they are older
        // than what the overflow put on the bus (and the API adds nothing to the lane
        // until the bus is drained, so the lane empties). Otherwise the bus is still read,
        // without waiting, every BUS_EVERY (retries, other processes' messages).
        let overflowed = self.lane.overflow.load(Ordering::Acquire);
        if self.lane_waiting() && !overflowed && self.last_bus.elapsed() >= BUS_EVERY {
            let batch = self.inner.poll_now(max).await?;
            self.bus_read(batch.len(), max);
            if !batch.is_empty() {
                return Ok(batch);
            }
        }
        let batch = self.take_lane(max);
        if !batch.is_empty() {
            return Ok(batch);
        }
        // Nothing on the lane: wait on the bus, until the lane has something.
        let batch = self.inner.poll_until(max, &self.lane.wake).await?;
        self.bus_read(batch.len(), max);
        if !batch.is_empty() {
            return Ok(batch);
        }
        Ok(self.take_lane(max))
    }

    async fn poll_now(&mut self, max: usize) -> anyhow::Result<Vec<Received>> {
        let batch = self.take_lane(max);
        if !batch.is_empty() {
            return Ok(batch);
        }
        self.inner.poll_now(max).await
    }

    async fn poll_until(&mut self, max: usize, wake: &Notify) -> anyhow::Result<Vec<Received>> {
        let batch = self.take_lane(max);
        if !batch.is_empty() {
            return Ok(batch);
        }
        self.inner.poll_until(max, wake).await
    }

    async fn ack(&mut self, msgs: &[Received]) -> anyhow::Result<()> {
        self.acks().ack(msgs).await
    }

    async fn dead_letter(&mut self, msg: &Received, reason: &str) -> anyhow::Result<()> {
        match lane_id(msg) {
            Some(id) => {
                settle::dead_letter(&self.db, self.lane.token, id, &msg.raw, reason).await?;
                crate::metrics::dead_lettered(&msg.topic);
                Ok(())
            }
            None => self.inner.dead_letter(msg, reason).await,
        }
    }

    async fn redeliver(&mut self, msgs: &[Received]) -> anyhow::Result<()> {
        self.acks().redeliver(msgs).await
    }

    async fn keep_alive(&mut self) {
        self.inner.keep_alive().await
    }
}
