//! Per-connection message rate: a token bucket, plus a flood detector that tells a client that
//! ignores `rate_limited` errors from one that briefly bursts.

use std::time::{Duration, Instant};

/// Refusals counted over this window to detect flooding.
const FLOOD_WINDOW: Duration = Duration::from_secs(10);

/// What the limiter says about one incoming message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Over the rate: drop the message and tell the client.
    Refuse,
    /// Over the rate again and again: close the connection.
    Flooding,
}

/// Token bucket of `rate` messages per second with room for `burst`.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    flood_limit: u32,
    refused: u32,
    window_start: Instant,
}

impl RateLimiter {
    pub fn new(rate: f64, burst: u32, now: Instant) -> Self {
        RateLimiter {
            rate,
            burst: burst as f64,
            tokens: burst as f64,
            last: now,
            flood_limit: burst.saturating_mul(2),
            refused: 0,
            window_start: now,
        }
    }

    pub fn check(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        if now.saturating_duration_since(self.window_start) > FLOOD_WINDOW {
            self.window_start = now;
            self.refused = 0;
        }
        self.refused += 1;
        if self.refused > self.flood_limit {
            Verdict::Flooding
        } else {
            Verdict::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refuse_then_refill() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(10.0, 3, t0);
        for _ in 0..3 {
            assert_eq!(r.check(t0), Verdict::Allow);
        }
        assert_eq!(r.check(t0), Verdict::Refuse);
        // 100 ms at 10/s gives one token back.
        assert_eq!(r.check(t0 + Duration::from_millis(100)), Verdict::Allow);
        assert_eq!(r.check(t0 + Duration::from_millis(100)), Verdict::Refuse);
    }

    #[test]
    fn flooding_after_twice_the_burst_refused() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(1.0, 2, t0);
        r.check(t0);
        r.check(t0);
        let verdicts: Vec<_> = (0..5).map(|_| r.check(t0)).collect();
        assert_eq!(verdicts[..4], [Verdict::Refuse; 4]);
        assert_eq!(verdicts[4], Verdict::Flooding);
    }

    #[test]
    fn refusals_spread_out_are_forgiven() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(0.001, 1, t0);
        r.check(t0);
        for i in 0..10u64 {
            // one refusal every 11 s never accumulates
            assert_eq!(
                r.check(t0 + Duration::from_secs(11 * (i + 1))),
                Verdict::Refuse
            );
        }
    }
}
