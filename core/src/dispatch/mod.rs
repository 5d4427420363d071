//! Dispatchers: consume delivery jobs from the bus, make attempts, record them.
//!
//! Invariants every dispatcher keeps:
//! - A job is "make attempt N of delivery D". An attempt starts only if D has made
//!   exactly N-1 attempts and is not owned by another live worker, so duplicate bus
//!   messages never produce duplicate attempt records.
//! - The outcome (attempt row, delivery status, retry message) is committed in one
//!   transaction *before* the bus message is acked.
//! - Retry timing lives in PostgreSQL (`deliveries.next_attempt_at` and the retry
//!   message's `available_at`), never in memory.

pub mod email;
pub mod oauth;
pub mod record;
pub mod sweeper;
pub mod webhook;

use std::future::Future;

use tokio::sync::watch;

use crate::bus::Consumer;

/// A dispatcher consumes its topic until shutdown (see [`crate::bus::consume`]).
pub trait Dispatcher: Send + 'static {
    fn run<C: Consumer + 'static>(
        self,
        consumer: C,
        shutdown: watch::Receiver<bool>,
    ) -> impl Future<Output = ()> + Send;
}

impl Dispatcher for email::EmailDispatcher {
    fn run<C: Consumer + 'static>(
        self,
        consumer: C,
        shutdown: watch::Receiver<bool>,
    ) -> impl Future<Output = ()> + Send {
        email::EmailDispatcher::run(self, consumer, shutdown)
    }
}

impl Dispatcher for webhook::WebhookDispatcher {
    fn run<C: Consumer + 'static>(
        self,
        consumer: C,
        shutdown: watch::Receiver<bool>,
    ) -> impl Future<Output = ()> + Send {
        webhook::WebhookDispatcher::run(self, consumer, shutdown)
    }
}
