//! The scheduler's configuration: every flag with its environment variable, as listed in
//! `docs/architecture.md`. Durations are kept in the units the flags use and turned into
//! [`Duration`]s by small accessors, so tests can run the whole fleet logic in milliseconds.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Flags of `berth-scheduler`.
#[derive(Parser, Clone, Debug)]
#[command(
    name = "berth-scheduler",
    version,
    about = "Berth's control plane: places rooms on session servers and spawns them."
)]
pub struct Config {
    /// Address to bind.
    #[arg(long, env = "BERTH_SCHEDULER_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: String,

    /// The cluster secret and the data directory (`--cluster-secret`, `--data-dir`); the
    /// scheduler tells the session servers it spawns its own URL, not `--scheduler-url`.
    #[command(flatten)]
    pub cluster: berth_runtime::ClusterArgs,

    /// TLS: `--tls-cert` and `--tls-key` serve HTTPS, `--tls-ca` is trusted when calling the
    /// scheduler over `https://`.
    #[command(flatten)]
    pub tls: berth_runtime::TlsArgs,

    /// Room slots per session server (passed to spawned servers as `--rooms`).
    #[arg(long, env = "BERTH_ROOMS_PER_SERVER", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rooms_per_server: u32,

    /// Members per room (passed to spawned servers).
    #[arg(long, env = "BERTH_MEMBERS_PER_ROOM", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub members_per_room: u32,

    /// Cap on session servers (starting, ready and draining ones all count).
    #[arg(long, env = "BERTH_MAX_SERVERS", default_value_t = 16)]
    pub max_servers: u32,

    /// Servers' worth of free room slots kept ready, so that most creates never wait for a spawn.
    #[arg(long, env = "BERTH_WARM_SERVERS", default_value_t = 1)]
    pub warm_servers: u32,

    /// The session-server binary; default: `berth-session` beside this executable.
    #[arg(long, env = "BERTH_SESSION_BIN")]
    pub session_bin: Option<PathBuf>,

    /// Webhooks of the session servers it spawns (passed on in their environment): see the
    /// session server's `--webhook-url`, `--webhook-secret`, `--bot-webhook-url` and
    /// `--bot-webhook-secret`.
    #[command(flatten)]
    pub webhooks: SessionWebhooks,

    /// Host name spawned session servers put in the URLs clients receive.
    #[arg(long, env = "BERTH_SESSION_HOST", default_value = "127.0.0.1")]
    pub session_host: String,

    /// Address spawned session servers bind their operator listener (`/metrics`, `/healthz`) to,
    /// on a free port; the backend's operator page reads `/metrics` there. Keep it private.
    #[arg(long, env = "BERTH_SESSION_ADMIN_HOST", default_value = "127.0.0.1")]
    pub session_admin_host: std::net::IpAddr,

    /// Ticket public key passed to spawned servers; default `<data-dir>/ticket.pub.pem`.
    #[arg(long, env = "BERTH_TICKET_PUBLIC_KEY")]
    pub ticket_public_key: Option<PathBuf>,

    /// How long a spawned server may take to register before it is killed.
    #[arg(long, env = "BERTH_SPAWN_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub spawn_timeout_ms: u64,

    /// How often session servers are asked to heartbeat.
    #[arg(long, env = "BERTH_HEARTBEAT_INTERVAL_MS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_interval_ms: u64,

    /// A server silent for this long is declared dead.
    #[arg(long, env = "BERTH_HEARTBEAT_TIMEOUT_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_timeout_ms: u64,

    /// Idle time after which a session server disposes of an empty room (passed to spawned
    /// servers). The scheduler also forgets a placement its server has not reported for this long.
    #[arg(long, env = "BERTH_ROOM_IDLE_SECS", default_value_t = 300)]
    pub room_idle_secs: u64,

    /// A placed room that no member opens within this many seconds gives its slot back (it
    /// stays dormant and is placed again on its next lookup). Fractions are accepted.
    #[arg(long, env = "BERTH_UNCLAIMED_ROOM_SECS", default_value = "30", value_parser = parse_secs)]
    pub unclaimed_room_secs: f64,

    /// A managed server without rooms for this long is drained, unless the warm buffer needs it.
    /// Fractions are accepted (`0.5`).
    #[arg(long, env = "BERTH_SERVER_IDLE_SECS", default_value = "120", value_parser = parse_secs)]
    pub server_idle_secs: f64,

    /// How long a draining session server waits for its rooms to empty (passed to spawned servers).
    #[arg(long, env = "BERTH_DRAIN_TIMEOUT_SECS", default_value_t = 30)]
    pub drain_timeout_secs: u64,

    /// Room creates per user per minute (0: unlimited).
    #[arg(long, env = "BERTH_CREATE_RATE", default_value_t = 10)]
    pub create_rate: u32,

    /// Where room metadata lives (`--store`, `--database-url`); passed on to spawned servers,
    /// the database URL in their environment only.
    #[command(flatten)]
    pub store: berth_store::StoreArgs,

    /// Run as one of several replicas: keep the registry of session servers and the room
    /// directory in PostgreSQL (`--database-url`), shared with every scheduler started on the
    /// same database. Unset: shared exactly when the store is PostgreSQL; `false` keeps them in
    /// this process; `true` without PostgreSQL refuses to start. Spawned session servers of a
    /// replica outlive it and are told every `--scheduler-url` as well as its own URL.
    #[arg(long, env = "BERTH_SCHEDULER_SHARED", action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub shared: Option<bool>,

    /// Bounds of the HTTP listener (connection budget, header-read and request timeouts).
    #[command(flatten)]
    pub http: berth_listener::HttpArgs,
    /// The URL template spawned session servers advertise (`{serverId}`, `{host}`, `{port}`),
    /// for a fleet behind a proxy; passed to them as `--public-url`.
    #[arg(long, env = "BERTH_SESSION_PUBLIC_URL")]
    pub session_public_url: Option<berth_runtime::PublicUrl>,

    /// How long stopping waits for spawned servers to exit after SIGTERM before killing them.
    #[arg(long, env = "BERTH_SHUTDOWN_TIMEOUT_MS", default_value_t = 5_000)]
    pub shutdown_timeout_ms: u64,
}

fn parse_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|e| format!("not a number of seconds: {e}"))?;
    if v.is_finite() && (0.0..=1e9).contains(&v) {
        Ok(v)
    } else {
        Err("seconds must be between 0 and 1e9".to_owned())
    }
}

impl Config {
    /// The ticket public key spawned servers are told to use.
    pub fn ticket_public_key_path(&self) -> PathBuf {
        self.ticket_public_key
            .clone()
            .unwrap_or_else(|| self.cluster.data_dir.join("ticket.pub.pem"))
    }

    pub fn spawn_timeout(&self) -> Duration {
        Duration::from_millis(self.spawn_timeout_ms)
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeat_timeout_ms)
    }

    pub fn unclaimed_room(&self) -> Duration {
        Duration::from_secs_f64(self.unclaimed_room_secs)
    }

    pub fn server_idle(&self) -> Duration {
        Duration::from_secs_f64(self.server_idle_secs)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    /// A placement its server never reports (the room was never opened, or its release got
    /// lost) is forgotten after this long, so that its slot is not held forever.
    pub fn unreported_room_ttl(&self) -> Duration {
        Duration::from_secs(self.room_idle_secs) + self.heartbeat_timeout()
    }

    /// An orphaned room (its server died) nobody looked up is forgotten after this long: its
    /// server would have disposed of it by then had it stayed idle.
    pub fn orphan_ttl(&self) -> Duration {
        Duration::from_secs(self.room_idle_secs)
    }

    /// How long a dead server stays in `GET /v1/servers` before it is forgotten.
    pub fn dead_retention(&self) -> Duration {
        (self.heartbeat_timeout() * 6).max(Duration::from_secs(1))
    }

    /// How often the fleet loop (reaper, warm buffer, scale-down) runs.
    pub fn fleet_tick(&self) -> Duration {
        (self.heartbeat_interval().min(self.heartbeat_timeout() / 4))
            .clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    /// The `Retry-After` (seconds) of a 503 `no_capacity`: about when dead servers are reaped or
    /// a spawn could have finished.
    pub fn retry_after_secs(&self) -> u64 {
        self.heartbeat_timeout_ms.div_ceil(1000).clamp(1, 60)
    }

    /// Free room slots the warm buffer keeps.
    pub fn warm_slots(&self) -> u32 {
        self.warm_servers.saturating_mul(self.rooms_per_server)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_architecture_doc() {
        let c = Config::parse_from(["berth-scheduler"]);
        assert_eq!(c.listen, "127.0.0.1:7070");
        assert_eq!(c.rooms_per_server, 10);
        assert_eq!(c.max_servers, 16);
        assert_eq!(c.warm_servers, 1);
        assert_eq!(c.spawn_timeout(), Duration::from_secs(10));
        assert_eq!(c.server_idle(), Duration::from_secs(120));
        assert_eq!(c.create_rate, 10);
        assert_eq!(c.unclaimed_room(), Duration::from_secs(30));
        assert_eq!(
            c.ticket_public_key_path(),
            PathBuf::from("./.berth/ticket.pub.pem")
        );
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let c = Config::parse_from(["berth-scheduler", "--cluster-secret", "hunter2-very-secret"]);
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn fractional_idle_seconds_and_bad_values() {
        let c = Config::parse_from(["berth-scheduler", "--server-idle-secs", "0.25"]);
        assert_eq!(c.server_idle(), Duration::from_millis(250));
        assert!(Config::try_parse_from(["berth-scheduler", "--server-idle-secs", "-1"]).is_err());
        assert!(Config::try_parse_from(["berth-scheduler", "--rooms-per-server", "0"]).is_err());
    }
}

/// Webhook settings handed to spawned session servers, in their environment only (the secrets
/// must not show in process listings).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SessionWebhooks {
    /// Where spawned session servers POST room events (comma-separated).
    #[arg(long = "webhook-url", env = "BERTH_WEBHOOK_URL")]
    pub url: Option<String>,
    /// Key signing those deliveries.
    #[arg(
        long = "webhook-secret",
        env = "BERTH_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub secret: Option<String>,
    /// Webhooks of the bundled bots (comma-separated), on top of `--webhook-url`.
    #[arg(long = "bot-webhook-url", env = "BERTH_BOT_WEBHOOK_URL")]
    pub bot_url: Option<String>,
    /// Key signing the bots' deliveries.
    #[arg(
        long = "bot-webhook-secret",
        env = "BERTH_BOT_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub bot_secret: Option<String>,
}

impl SessionWebhooks {
    /// `(variable, value)` pairs for a spawned session server's environment.
    pub fn env(&self) -> Vec<(&'static str, &str)> {
        [
            ("BERTH_WEBHOOK_URL", &self.url),
            ("BERTH_WEBHOOK_SECRET", &self.secret),
            ("BERTH_BOT_WEBHOOK_URL", &self.bot_url),
            ("BERTH_BOT_WEBHOOK_SECRET", &self.bot_secret),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value.as_deref()?)))
        .collect()
    }
}
