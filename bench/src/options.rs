//! [`BenchOptions`]: what one `berth bench` run does, checked before anything connects.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::BenchError;

/// Most members one run may hold (all rooms together).
pub const MAX_MEMBERS: u64 = 1_000_000;
/// Most rate steps in one run.
pub const MAX_STEPS: usize = 32;
/// Largest message text `--size` accepts, in bytes.
pub const MAX_SIZE: usize = 1 << 20;
/// Highest per-member send rate, in messages per second.
pub const MAX_RATE: f64 = 10_000.0;

/// Where the load goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// The real flow through the backend: log in, create rooms, look them up, connect.
    Backend {
        /// The backend's base URL (`http://host:port`).
        url: String,
        /// Where to read the session-server count from; `None` reports it as n/a.
        fleet: Option<Fleet>,
    },
    /// Straight to one session server (or anything speaking the same WebSocket protocol), with
    /// tickets minted here: no backend, no scheduler.
    Direct(DirectTarget),
}

/// The scheduler API, to count the session servers a run needed.
#[derive(Clone)]
pub struct Fleet {
    /// `http://host:port` of the scheduler.
    pub scheduler_url: String,
    /// The cluster secret (bearer).
    pub secret: String,
}

// The secret stays out of `{:?}`.
impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("scheduler_url", &self.scheduler_url)
            .finish_non_exhaustive()
    }
}

/// The direct (data-plane only) mode's target.
#[derive(Debug, Clone)]
pub struct DirectTarget {
    /// The server's WebSocket URL (`ws://host:port/path`); tickets go in `?token=`.
    pub url: String,
    /// The server's id: the `aud` of the minted tickets.
    pub server_id: String,
    /// The ticket private key (PKCS#8 PEM, Ed25519), as the backend holds it.
    pub ticket_key: PathBuf,
    /// Index of the first room (`bench-room-<offset + i>`), so that several processes can
    /// share one server without sharing rooms.
    pub room_offset: u32,
}

/// Everything one run does. `Default` is a small run against a local backend.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub target: Target,
    /// Rooms to create (or, in direct mode, to fill).
    pub rooms: u32,
    /// Members per room, each its own user and connection. 0 (backend mode only) creates the
    /// rooms and stops there: a placement benchmark.
    pub members: u32,
    /// Members per room that send; `None`: all of them.
    pub senders: Option<u32>,
    /// Messages per second per sending member. Several values run one after another on the
    /// same connections (a rate sweep), each for `duration`. 0 holds the connections idle.
    pub rates: Vec<f64>,
    /// Bytes of message text (at least the bench's own header, about 30 bytes).
    pub size: usize,
    /// How long each rate step sends.
    pub duration: Duration,
    /// Connects are spread evenly over this long.
    pub ramp_up: Duration,
    /// After each step, how long to wait at most for messages still on their way.
    pub drain: Duration,
    /// Room creates (and logins) in flight at once.
    pub create_concurrency: usize,
    /// Connection attempts in flight at once.
    pub connect_concurrency: usize,
    /// Bound on one connection's TCP connect, upgrade and `welcome` (filling a big room makes
    /// the server broadcast a `joined` to everyone present for each newcomer, which can take a
    /// slow server minutes).
    pub connect_timeout: Duration,
    /// Local addresses the connections are opened from, round robin (e.g. 127.0.0.2, …), to
    /// get past the ~28,000 ports of one loopback address pair. Empty: the system picks.
    pub bind_ips: Vec<IpAddr>,
    /// Stop the rate sweep after the first step that saturated: its deliveries did not all
    /// arrive within `drain`, or members were lost.
    pub until_saturated: bool,
    /// The server's process id, when it runs on this machine: each step then reports its CPU
    /// use and resident memory.
    pub server_pid: Option<u32>,
    /// Print the one-line status to stderr while running.
    pub progress: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            target: Target::Backend {
                url: berth::DEFAULT_BACKEND_URL.to_owned(),
                fleet: None,
            },
            rooms: 10,
            members: 10,
            senders: None,
            rates: vec![1.0],
            size: 100,
            duration: Duration::from_secs(10),
            ramp_up: Duration::from_secs(2),
            drain: Duration::from_secs(5),
            create_concurrency: 16,
            connect_concurrency: 256,
            connect_timeout: berth::connection::CONNECT_TIMEOUT,
            bind_ips: Vec::new(),
            until_saturated: false,
            server_pid: None,
            progress: false,
        }
    }
}

impl BenchOptions {
    /// Members of the whole run.
    pub fn total_members(&self) -> u64 {
        u64::from(self.rooms) * u64::from(self.members)
    }

    /// Sending members per room.
    pub fn senders_per_room(&self) -> u32 {
        self.senders.unwrap_or(self.members).min(self.members)
    }

    /// Refuses values the run cannot work with.
    pub fn validate(&self) -> Result<(), BenchError> {
        let bad = |m: String| Err(BenchError::InvalidOptions(m));
        if self.rooms == 0 {
            return bad("--rooms must be at least 1".into());
        }
        if self.total_members() > MAX_MEMBERS {
            return bad(format!("--rooms x --members must be at most {MAX_MEMBERS}"));
        }
        if self.members == 0 && matches!(self.target, Target::Direct(_)) {
            return bad("--members 0 (create rooms only) needs the backend, not --direct".into());
        }
        if let Some(s) = self.senders
            && s > self.members
        {
            return bad(format!(
                "--senders ({s}) must not exceed --members ({})",
                self.members
            ));
        }
        if self.rates.is_empty() || self.rates.len() > MAX_STEPS {
            return bad(format!("--rate takes 1 to {MAX_STEPS} values"));
        }
        if let Some(r) = self
            .rates
            .iter()
            .find(|r| !(r.is_finite() && **r >= 0.0 && **r <= MAX_RATE))
        {
            return bad(format!("--rate {r}: must be between 0 and {MAX_RATE}"));
        }
        if self.size > MAX_SIZE {
            return bad(format!("--size must be at most {MAX_SIZE} bytes"));
        }
        if self.duration.is_zero() || self.duration > Duration::from_secs(86_400) {
            return bad("--duration must be between 1 ms and 24 h".into());
        }
        if self.ramp_up > Duration::from_secs(3_600)
            || self.drain > Duration::from_secs(3_600)
            || self.connect_timeout > Duration::from_secs(3_600)
        {
            return bad("--ramp-up, --drain and --connect-timeout must be at most 1 h".into());
        }
        if self.connect_timeout.is_zero() {
            return bad("--connect-timeout must be positive".into());
        }
        if self.create_concurrency == 0 || self.connect_concurrency == 0 {
            return bad("concurrency limits must be at least 1".into());
        }
        if let Target::Direct(d) = &self.target {
            if !(d.url.starts_with("ws://")) {
                return bad(format!("--direct {}: must be a ws:// URL", d.url));
            }
            if !berth_protocol::ids::is_valid_server_id(&d.server_id) {
                return bad("--server-id must be 1-64 of letters, digits, '-' and '_'".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_do_not() {
        assert!(BenchOptions::default().validate().is_ok());
        let with = |f: fn(&mut BenchOptions)| {
            let mut o = BenchOptions::default();
            f(&mut o);
            o.validate()
        };
        assert!(with(|o| o.rooms = 0).is_err());
        assert!(with(|o| o.senders = Some(11)).is_err());
        assert!(with(|o| o.rates = vec![]).is_err());
        assert!(with(|o| o.rates = vec![1.0, f64::NAN]).is_err());
        assert!(with(|o| o.rates = vec![-1.0]).is_err());
        assert!(with(|o| o.duration = Duration::ZERO).is_err());
        assert!(with(|o| o.rooms = 2_000_000).is_err());
        assert!(with(|o| o.members = 0).is_ok());
        assert!(with(|o| o.rates = vec![0.0, 0.5, 100.0]).is_ok());
        assert!(
            with(|o| {
                o.members = 0;
                o.target = Target::Direct(DirectTarget {
                    url: "ws://127.0.0.1:1/ws".into(),
                    server_id: "s-1".into(),
                    ticket_key: "k.pem".into(),
                    room_offset: 0,
                });
            })
            .is_err()
        );
    }

    #[test]
    fn fleet_debug_hides_the_secret() {
        let f = Fleet {
            scheduler_url: "http://s".into(),
            secret: "hunter2".into(),
        };
        assert!(!format!("{f:?}").contains("hunter2"));
    }
}
