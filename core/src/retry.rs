//! Retry schedules: the delays between attempts, with ±20 % jitter.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

/// The longest single delay a schedule may hold.
pub const MAX_DELAY: Duration = Duration::from_secs(7 * 86400);
/// The longest a whole schedule may last.
pub const MAX_TOTAL: Duration = Duration::from_secs(30 * 86400);
/// The most delays a schedule may list.
pub const MAX_DELAYS: usize = 20;

/// `now + d`, or `None` when that is not a representable time (checked arithmetic:
/// every place a delay becomes a timestamp goes through here).
pub fn after(d: Duration) -> Option<DateTime<Utc>> {
    Utc::now().checked_add_signed(chrono::Duration::from_std(d).ok()?)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    /// Delay before attempt 2, 3, ...; its length is the number of retries.
    delays: Vec<Duration>,
}

impl RetrySchedule {
    /// Email default: 5 s, 1 min, 10 min, 1 h, 4 h, 12 h (about 17 h in all).
    pub fn email_default() -> Self {
        Self::parse("5s,1m,10m,1h,4h,12h").expect("valid default")
    }

    /// Webhook default, the Standard Webhooks / Svix schedule: the first attempt at once,
    /// then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (8 attempts, about 28 h).
    pub fn webhook_default() -> Self {
        Self::parse("5s,5m,30m,2h,5h,10h,10h").expect("valid default")
    }

    /// Parses `5s,1m,10m` (humantime durations, comma-separated). Empty = no retries.
    /// At most [`MAX_DELAYS`] delays, each at most 7 days, 30 days in all.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut delays = Vec::new();
        let mut total = Duration::ZERO;
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let d = humantime::parse_duration(part)
                .map_err(|_| format!("'{part}' is not a duration; use a list such as 5s,1m,10m,1h"))?;
            if d > MAX_DELAY {
                return Err(format!("'{part}' is longer than the longest allowed delay, 7d"));
            }
            total += d;
            if total > MAX_TOTAL {
                return Err("the delays add up to more than 30d, the longest a delivery may keep retrying".into());
            }
            delays.push(d);
            if delays.len() > MAX_DELAYS {
                return Err(format!("at most {MAX_DELAYS} delays"));
            }
        }
        Ok(Self { delays })
    }

    /// The delay to wait after `attempts_made` failed attempts, or `None` when the
    /// schedule is exhausted. Jitter is ±20 %.
    pub fn next_delay(&self, attempts_made: u32) -> Option<Duration> {
        let base = *self.delays.get((attempts_made as usize).checked_sub(1)?)?;
        let factor = rand::thread_rng().gen_range(0.8..=1.2);
        Some(base.mul_f64(factor))
    }

    pub fn max_attempts(&self) -> u32 {
        self.delays.len() as u32 + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_with_jitter_and_exhaustion() {
        let s = RetrySchedule::parse("10s, 1m").unwrap();
        assert_eq!(s.max_attempts(), 3);
        for _ in 0..100 {
            let d = s.next_delay(1).unwrap();
            assert!(d >= Duration::from_secs(8) && d <= Duration::from_secs(12), "{d:?}");
            let d = s.next_delay(2).unwrap();
            assert!(d >= Duration::from_secs(48) && d <= Duration::from_secs(72), "{d:?}");
        }
        assert_eq!(s.next_delay(3), None);
        assert_eq!(s.next_delay(0), None);
        assert!(RetrySchedule::parse("5s,later").is_err());
        assert_eq!(RetrySchedule::parse("").unwrap().max_attempts(), 1);
    }

    #[test]
    fn absurd_schedules_are_refused_and_times_are_checked() {
        assert!(RetrySchedule::parse("100000000000000s").unwrap_err().contains("7d"));
        assert!(RetrySchedule::parse("8d").is_err());
        assert!(RetrySchedule::parse("7d,7d,7d,7d,7d").unwrap_err().contains("30d"));
        assert!(RetrySchedule::parse(&vec!["1s"; 21].join(",")).is_err());
        assert!(RetrySchedule::parse("7d,7d,7d,7d").is_ok());
        assert_eq!(after(Duration::from_secs(u64::MAX)), None);
        assert!(after(Duration::from_secs(60)).is_some());
    }
}
