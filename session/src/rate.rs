//! Per-connection message rate: governor's direct GCRA limiter (one atomic compare-and-swap per
//! message), plus a flood detector that tells a client that ignores `rate_limited` errors from
//! one that briefly bursts.

use std::num::NonZeroU32;
use std::sync::LazyLock;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter as Gcra};

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

/// `rate` messages per second with room for `burst`.
pub struct RateLimiter<C: Clock = DefaultClock> {
    limiter: Gcra<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
    flood_limit: u32,
    refused: u32,
    window_start: C::Instant,
}

/// One clock for every connection: making one asks the CPU what counters it has (`cpuid`,
/// which traps to the hypervisor on a virtual machine), a cost no connection should pay again.
static CLOCK: LazyLock<DefaultClock> = LazyLock::new(DefaultClock::default);

impl RateLimiter {
    /// `rate` must be positive and finite (the config checks it); a zero burst counts as one.
    pub fn new(rate: f64, burst: u32) -> Self {
        RateLimiter::with_clock(rate, burst, CLOCK.clone())
    }
}

impl<C: Clock> RateLimiter<C> {
    fn with_clock(rate: f64, burst: u32, clock: C) -> Self {
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        // One message every 1/rate seconds; at least a nanosecond so the quota is valid.
        let period = Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(burst);
        let window_start = clock.now();
        RateLimiter {
            limiter: Gcra::direct_with_clock(quota, clock),
            flood_limit: burst.get().saturating_mul(2),
            refused: 0,
            window_start,
        }
    }

    pub fn check(&mut self) -> Verdict {
        if self.limiter.check().is_ok() {
            return Verdict::Allow;
        }
        let now = self.limiter.clock().now();
        if Duration::from(now.duration_since(self.window_start)) > FLOOD_WINDOW {
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
    use governor::clock::FakeRelativeClock;

    use super::*;

    #[test]
    fn burst_then_refuse_then_refill() {
        let clock = FakeRelativeClock::default();
        let mut r = RateLimiter::with_clock(10.0, 3, clock.clone());
        for _ in 0..3 {
            assert_eq!(r.check(), Verdict::Allow);
        }
        assert_eq!(r.check(), Verdict::Refuse);
        // 100 ms at 10/s gives one message back.
        clock.advance(Duration::from_millis(100));
        assert_eq!(r.check(), Verdict::Allow);
        assert_eq!(r.check(), Verdict::Refuse);
    }

    #[test]
    fn flooding_after_twice_the_burst_refused() {
        let clock = FakeRelativeClock::default();
        let mut r = RateLimiter::with_clock(1.0, 2, clock);
        r.check();
        r.check();
        let verdicts: Vec<_> = (0..5).map(|_| r.check()).collect();
        assert_eq!(verdicts[..4], [Verdict::Refuse; 4]);
        assert_eq!(verdicts[4], Verdict::Flooding);
    }

    #[test]
    fn refusals_spread_out_are_forgiven() {
        let clock = FakeRelativeClock::default();
        let mut r = RateLimiter::with_clock(0.001, 1, clock.clone());
        r.check();
        for _ in 0..10 {
            // one refusal every 11 s never accumulates
            clock.advance(Duration::from_secs(11));
            assert_eq!(r.check(), Verdict::Refuse);
        }
    }
}
