//! Per-connection read shaping: a token bucket that tells the reader how long to pause, so a
//! fast sender is slowed down (TCP backpressure) rather than disconnected or dropped.

use std::time::{Duration, Instant};

/// A token bucket over bytes: `rate` bytes per second, holding at most `burst` bytes.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate_bytes_per_sec: u64, burst_bytes: u64, now: Instant) -> Self {
        let burst = burst_bytes.max(1) as f64;
        TokenBucket {
            rate: rate_bytes_per_sec.max(1) as f64,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes `n` bytes that were just read; returns how long to wait before reading again
    /// (zero while within the allowance).
    pub fn consume(&mut self, n: usize, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst) - n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_burst_no_wait_then_paced_at_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 2000, t0);
        assert_eq!(b.consume(2000, t0), Duration::ZERO);
        // 500 bytes over the allowance at 1000 B/s: wait half a second.
        assert_eq!(b.consume(500, t0), Duration::from_millis(500));
        // After waiting that long the debt is paid.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(b.consume(0, t1), Duration::ZERO);
    }

    #[test]
    fn refill_is_capped_at_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 1000, t0);
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(b.consume(1000, later), Duration::ZERO);
        assert!(b.consume(1000, later) >= Duration::from_millis(999));
    }

    #[test]
    fn sustained_rate_is_enforced() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10_000, 10_000, t0);
        let mut now = t0;
        // Send 100 KB in 1 KB reads, sleeping as told: it must take about 9 s of virtual time.
        for _ in 0..100 {
            now += b.consume(1000, now);
        }
        let took = now - t0;
        assert!(
            took >= Duration::from_secs(9) && took <= Duration::from_secs(10),
            "{took:?}"
        );
    }
}
