//! Per-user limit on room creates: a token bucket per `createdBy`, `rate` tokens per minute with
//! a burst of `rate`.

use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Buckets kept before full (idle) ones are pruned on the spot.
const MAX_BUCKETS: usize = 100_000;

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets by user id.
pub struct RateLimiter {
    per_minute: u32,
    buckets: DashMap<String, Bucket>,
}

impl RateLimiter {
    /// `per_minute == 0` disables the limit.
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter {
            per_minute,
            buckets: DashMap::new(),
        }
    }

    fn refill_per_sec(&self) -> f64 {
        f64::from(self.per_minute) / 60.0
    }

    fn refilled(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        (bucket.tokens + elapsed * self.refill_per_sec()).min(f64::from(self.per_minute))
    }

    /// Takes one token for `key`, or says how long until one is available.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &str, now: Instant) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Ok(());
        }
        if self.buckets.len() >= MAX_BUCKETS {
            self.prune_at(now);
        }
        let burst = f64::from(self.per_minute);
        let mut bucket = self.buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let tokens = self.refilled(&bucket, now);
        bucket.updated = now;
        if tokens >= 1.0 {
            bucket.tokens = tokens - 1.0;
            Ok(())
        } else {
            bucket.tokens = tokens;
            Err(Duration::from_secs_f64(
                (1.0 - tokens) / self.refill_per_sec(),
            ))
        }
    }

    /// Forgets buckets that have filled up again (their users are within their limit anyway).
    pub fn prune(&self) {
        self.prune_at(Instant::now());
    }

    fn prune_at(&self, now: Instant) {
        let burst = f64::from(self.per_minute);
        self.buckets.retain(|_, b| self.refilled(b, now) < burst);
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let rl = RateLimiter::new(3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(rl.check_at("u-1", t0).is_ok());
        }
        let wait = rl.check_at("u-1", t0).unwrap_err();
        assert!(
            wait > Duration::from_secs(19) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(
            rl.check_at("u-2", t0).is_ok(),
            "users have their own buckets"
        );
        assert!(rl.check_at("u-1", t0 + Duration::from_secs(21)).is_ok());
        assert!(rl.check_at("u-1", t0 + Duration::from_secs(21)).is_err());
    }

    #[test]
    fn zero_disables_and_prune_drops_full_buckets() {
        let off = RateLimiter::new(0);
        for _ in 0..100 {
            assert!(off.check("u").is_ok());
        }
        let rl = RateLimiter::new(60);
        let t0 = Instant::now();
        rl.check_at("u-1", t0).unwrap();
        rl.prune_at(t0);
        assert_eq!(rl.len(), 1);
        rl.prune_at(t0 + Duration::from_secs(2));
        assert_eq!(rl.len(), 0);
    }
}
