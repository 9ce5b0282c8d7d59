//! Per-user limit on room creates: `rate` creates per minute with a burst of `rate`, one
//! GCRA cell per `createdBy` (governor's keyed limiter). The fleet loop calls [`RateLimiter::prune`]
//! so users who are back within their limit are forgotten and the map stays bounded.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter as Gcra};

type Keyed<C> =
    Gcra<String, DefaultKeyedStateStore<String>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Creates by user id (`limiter` is `None` when the limit is off).
pub struct RateLimiter<C: Clock = DefaultClock> {
    limiter: Option<Keyed<C>>,
}

impl RateLimiter {
    /// `per_minute == 0` disables the limit.
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter::with_clock(per_minute, DefaultClock::default())
    }
}

impl<C: Clock> RateLimiter<C> {
    fn with_clock(per_minute: u32, clock: C) -> Self {
        let limiter = NonZeroU32::new(per_minute).map(|n| {
            Gcra::new(
                Quota::per_minute(n),
                DefaultKeyedStateStore::default(),
                clock,
            )
        });
        RateLimiter { limiter }
    }

    /// Takes one create for `key`, or says how long until one is allowed (for `Retry-After`).
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        // governor looks keys up as `&String`: one copy per create, which is rare enough.
        limiter
            .check_key(&key.to_owned())
            .map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }

    /// Forgets users whose allowance has filled up again (they are within their limit anyway).
    pub fn prune(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    pub fn len(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    #[test]
    fn burst_then_refill() {
        let clock = FakeRelativeClock::default();
        let rl = RateLimiter::with_clock(3, clock.clone());
        for _ in 0..3 {
            assert!(rl.check("u-1").is_ok());
        }
        let wait = rl.check("u-1").unwrap_err();
        assert!(
            wait > Duration::from_secs(19) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(rl.check("u-2").is_ok(), "users have their own buckets");
        clock.advance(Duration::from_secs(21));
        assert!(rl.check("u-1").is_ok());
        assert!(rl.check("u-1").is_err());
    }

    #[test]
    fn zero_disables_and_prune_drops_full_buckets() {
        let off = RateLimiter::new(0);
        for _ in 0..100 {
            assert!(off.check("u").is_ok());
        }
        let clock = FakeRelativeClock::default();
        let rl = RateLimiter::with_clock(60, clock.clone());
        rl.check("u-1").unwrap();
        rl.prune();
        assert_eq!(rl.len(), 1);
        clock.advance(Duration::from_secs(2));
        rl.prune();
        assert_eq!(rl.len(), 0);
    }
}
