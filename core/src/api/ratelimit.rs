//! Per-key request rate limits: a token bucket per API key, holding one second's worth
//! of requests and refilled continuously. Over the limit: `429` with `Retry-After`.
//!
//! Buckets live in process memory (each API process limits on its own); full buckets
//! are forgotten when the map grows, so it holds only keys active in the last second.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use uuid::Uuid;

struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<Uuid, Bucket>>,
}

impl RateLimiter {
    /// Takes one request from `key`'s bucket at `per_second` (0: unlimited). `Err` holds
    /// the whole seconds to wait.
    pub fn check(&self, key: Uuid, per_second: u32) -> Result<(), u64> {
        if per_second == 0 {
            return Ok(());
        }
        let rate = per_second as f64;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate limiter");
        if buckets.len() > 10_000 {
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < rate);
        }
        let b = buckets.entry(key).or_insert(Bucket { tokens: rate, at: now });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(rate);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / rate).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_one_second_then_refusal_with_a_wait() {
        let l = RateLimiter::default();
        let k = Uuid::now_v7();
        for _ in 0..5 {
            assert!(l.check(k, 5).is_ok());
        }
        assert_eq!(l.check(k, 5), Err(1));
        assert!(l.check(Uuid::now_v7(), 5).is_ok(), "another key has its own bucket");
        assert!((0..1000).all(|_| l.check(k, 0).is_ok()), "0 is unlimited");
    }
}
