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
pub mod record;
pub mod sweeper;
