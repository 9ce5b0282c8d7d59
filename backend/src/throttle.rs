//! Failed-login throttling: a token bucket per username and one per client address.
//!
//! Every password check takes one token from both buckets before it runs (so parallel guesses
//! cannot slip past), and a successful check gives them back: only failures count. An empty
//! bucket answers 429 `rate_limited` with the wait until its next token.
//!
//! The per-address bucket refills more slowly than the per-name one (defaults: 10 then one a
//! minute per address; 5 then one per 12 s per name), so one attacker's address cannot keep a
//! name's bucket empty for long: once the address has spent its burst (about a minute of
//! hammering), the real user waits at most one name refill (12 s) for a try. Guessing stays
//! hopeless: at most 5 guesses a minute per name whoever guesses, 60 an hour per address.
//!
//! This is hand-written rather than `governor`'s keyed limiter because it needs to give a token
//! back after a success, which `governor` does not offer.

use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Buckets kept per limiter before full (idle) ones are pruned on the spot.
const MAX_BUCKETS: usize = 100_000;

/// Throttle flags (`--login-*`).
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct ThrottleArgs {
    /// Failed logins allowed for one username before it is throttled.
    #[arg(long, env = "BERTH_LOGIN_NAME_BURST", default_value_t = 5)]
    pub login_name_burst: u32,
    /// Then one more failed login per username every this many seconds.
    #[arg(long, env = "BERTH_LOGIN_NAME_REFILL_SECS", default_value_t = 12)]
    pub login_name_refill_secs: u64,
    /// Failed logins allowed from one client address before it is throttled.
    #[arg(long, env = "BERTH_LOGIN_ADDRESS_BURST", default_value_t = 10)]
    pub login_address_burst: u32,
    /// Then one more failed login per address every this many seconds.
    #[arg(long, env = "BERTH_LOGIN_ADDRESS_REFILL_SECS", default_value_t = 60)]
    pub login_address_refill_secs: u64,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets by key: `burst` tokens, one more every `refill`.
pub struct Buckets<K> {
    burst: f64,
    refill: Duration,
    buckets: DashMap<K, Bucket>,
}

impl<K: Eq + Hash + Clone> Buckets<K> {
    /// `burst == 0` disables the limit.
    pub fn new(burst: u32, refill: Duration) -> Self {
        Buckets {
            burst: f64::from(burst),
            refill: refill.max(Duration::from_millis(1)),
            buckets: DashMap::new(),
        }
    }

    fn refilled(&self, b: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
        (b.tokens + elapsed / self.refill.as_secs_f64()).min(self.burst)
    }

    /// Takes a token for `key`, or says how long until one is free.
    pub fn take(&self, key: &K, now: Instant) -> Result<(), Duration> {
        if self.burst == 0.0 {
            return Ok(());
        }
        if self.buckets.len() >= MAX_BUCKETS {
            self.buckets
                .retain(|_, b| self.refilled(b, now) < self.burst);
        }
        let mut b = self.buckets.entry(key.clone()).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let tokens = self.refilled(&b, now);
        b.updated = now;
        if tokens >= 1.0 {
            b.tokens = tokens - 1.0;
            Ok(())
        } else {
            b.tokens = tokens;
            Err(self.refill.mul_f64(1.0 - tokens))
        }
    }

    /// Gives back a token taken by [`Buckets::take`].
    pub fn give_back(&self, key: &K, now: Instant) {
        if let Some(mut b) = self.buckets.get_mut(key) {
            let tokens = self.refilled(&b, now);
            b.tokens = (tokens + 1.0).min(self.burst);
            b.updated = now;
        }
    }
}

/// The two limiters of password checks.
pub struct LoginThrottle {
    by_name: Buckets<String>,
    by_address: Buckets<IpAddr>,
}

impl std::fmt::Debug for LoginThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginThrottle").finish_non_exhaustive()
    }
}

/// One password check under way; call [`Attempt::succeeded`] when the password was right.
#[derive(Debug)]
pub struct Attempt {
    name: String,
    address: Option<IpAddr>,
}

impl LoginThrottle {
    pub fn new(args: &ThrottleArgs) -> LoginThrottle {
        LoginThrottle {
            by_name: Buckets::new(
                args.login_name_burst,
                Duration::from_secs(args.login_name_refill_secs),
            ),
            by_address: Buckets::new(
                args.login_address_burst,
                Duration::from_secs(args.login_address_refill_secs),
            ),
        }
    }

    /// Starts a password check for the name key `name` from `address`, or answers how long to
    /// wait (whole seconds, at least 1) when either is throttled.
    pub fn begin(&self, name: &str, address: Option<IpAddr>) -> Result<Attempt, u64> {
        self.begin_at(name, address, Instant::now())
    }

    fn begin_at(&self, name: &str, address: Option<IpAddr>, now: Instant) -> Result<Attempt, u64> {
        let secs = |d: Duration| d.as_secs_f64().ceil().max(1.0) as u64;
        if let Some(addr) = &address {
            self.by_address.take(addr, now).map_err(secs)?;
        }
        let name = name.to_owned();
        if let Err(wait) = self.by_name.take(&name, now) {
            if let Some(addr) = &address {
                self.by_address.give_back(addr, now);
            }
            return Err(secs(wait));
        }
        Ok(Attempt { name, address })
    }

    /// The password was right: the attempt does not count.
    pub fn succeeded(&self, attempt: Attempt) {
        self.succeeded_at(attempt, Instant::now());
    }

    fn succeeded_at(&self, attempt: Attempt, now: Instant) {
        self.by_name.give_back(&attempt.name, now);
        if let Some(addr) = &attempt.address {
            self.by_address.give_back(addr, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle() -> LoginThrottle {
        LoginThrottle::new(&ThrottleArgs {
            login_name_burst: 5,
            login_name_refill_secs: 12,
            login_address_burst: 10,
            login_address_refill_secs: 60,
        })
    }

    #[test]
    fn failures_are_limited_per_name_and_successes_do_not_count() {
        let t = throttle();
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..30 {
            let ok = t.begin_at("bob", Some(a), t0).unwrap();
            t.succeeded_at(ok, t0);
        }
        for _ in 0..5 {
            t.begin_at("bob", Some(a), t0).unwrap();
        }
        let wait = t.begin_at("bob", Some(a), t0).unwrap_err();
        assert_eq!(wait, 12);
        // Another name from the same address is not affected.
        assert!(t.begin_at("carol", Some(a), t0).is_ok());
        // One more try after one refill.
        assert!(
            t.begin_at("bob", Some(a), t0 + Duration::from_secs(12))
                .is_ok()
        );
    }

    #[test]
    fn one_attacker_cannot_lock_a_user_out_for_long() {
        let t = throttle();
        let t0 = Instant::now();
        let attacker: IpAddr = "10.6.6.6".parse().unwrap();
        let user: IpAddr = "10.1.1.1".parse().unwrap();
        // The attacker hammers bob's name, once a second, for ten minutes.
        let mut guesses = 0;
        let mut user_waits = Vec::new();
        for s in 0..600u64 {
            let now = t0 + Duration::from_secs(s);
            if t.begin_at("bob", Some(attacker), now).is_ok() {
                guesses += 1;
            }
            // Every 30 s the real bob tries once (and gets in when he may try).
            if s % 30 == 29 {
                match t.begin_at("bob", Some(user), now) {
                    Ok(attempt) => t.succeeded_at(attempt, now),
                    Err(wait) => user_waits.push(wait),
                }
            }
        }
        // The attacker got its address burst and one a minute: hopeless for guessing…
        assert!(guesses <= 10 + 10, "{guesses} guesses");
        // …and the real user was refused only in the first minute, never for long.
        assert!(
            user_waits.len() <= 2 && user_waits.iter().all(|&w| w <= 12),
            "{user_waits:?}"
        );
    }

    #[test]
    fn a_throttled_address_is_refused_before_the_name_is_charged() {
        let t = LoginThrottle::new(&ThrottleArgs {
            login_name_burst: 3,
            login_name_refill_secs: 60,
            login_address_burst: 2,
            login_address_refill_secs: 60,
        });
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        t.begin_at("bob", Some(a), t0).unwrap();
        t.begin_at("bob", Some(a), t0).unwrap();
        for _ in 0..5 {
            assert!(t.begin_at("bob", Some(a), t0).is_err());
        }
        // bob's name kept its last try for others.
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        t.begin_at("bob", Some(b), t0).unwrap();
        assert_eq!(t.begin_at("bob", Some(b), t0).unwrap_err(), 60);
    }
}
