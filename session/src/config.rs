//! The session server's flags, each with an environment fallback (docs/architecture.md).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Everything a session server can be told at start. Tests build it with
/// `Config::parse_from(["berth-session", "--flag", "value", …])`.
#[derive(Parser, Clone, Debug)]
#[command(
    name = "berth-session",
    version,
    about = "Berth session server: the WebSocket data plane"
)]
pub struct Config {
    /// Address to bind.
    #[arg(long, env = "BERTH_SESSION_LISTEN", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,

    /// Host name put in the WebSocket URL this server registers (`ws://{host}:{port}/ws`).
    #[arg(long, env = "BERTH_SESSION_HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// The URL clients are given for this server when a proxy fronts the fleet: a template with
    /// `{serverId}`, `{host}` and `{port}`, e.g. `wss://rooms.example.com/{serverId}/ws`
    /// (default: `ws://{host}:{port}/ws`, `wss://` with `--tls-cert`). With `{serverId}` and
    /// no `--server-id`, the server picks its id itself.
    #[arg(long, env = "BERTH_SESSION_PUBLIC_URL")]
    pub public_url: Option<berth_runtime::PublicUrl>,

    /// The scheduler, the cluster secret and the data directory (`--scheduler-url`,
    /// `--cluster-secret`, `--data-dir`).
    #[command(flatten)]
    pub cluster: berth_runtime::ClusterArgs,

    /// TLS: `--tls-cert` and `--tls-key` serve HTTPS, `--tls-ca` is trusted when calling the
    /// scheduler over `https://`.
    #[command(flatten)]
    pub tls: berth_runtime::TlsArgs,

    /// This server's id (given by the scheduler when it spawns the server; required with
    /// `--standalone`; otherwise the scheduler assigns one at registration).
    #[arg(long, env = "BERTH_SERVER_ID")]
    pub server_id: Option<String>,

    /// Public key (SPKI PEM, Ed25519) that verifies tickets (default: `<data-dir>/ticket.pub.pem`).
    #[arg(long, env = "BERTH_TICKET_PUBLIC_KEY")]
    pub ticket_public_key: Option<PathBuf>,

    /// Room slots of this server.
    #[arg(long, env = "BERTH_ROOMS_PER_SERVER", default_value_t = 10)]
    pub rooms: u32,

    /// Distinct users per room.
    #[arg(long, env = "BERTH_MEMBERS_PER_ROOM", default_value_t = 100)]
    pub members_per_room: u32,

    /// WebSocket connections of the whole process (503 `server_full` past it).
    #[arg(long, env = "BERTH_MAX_CONNECTIONS", default_value_t = 16000)]
    pub max_connections: u32,

    /// Longest message text, in bytes (`error` `text_too_long` past it).
    #[arg(long, env = "BERTH_MAX_TEXT_BYTES", default_value_t = 4096)]
    pub max_text_bytes: usize,

    /// Largest WebSocket frame or message, in bytes (close 1008 past it).
    #[arg(long, env = "BERTH_MAX_FRAME_BYTES", default_value_t = 65536)]
    pub max_frame_bytes: usize,

    /// Messages of history sent in `welcome`.
    #[arg(long, env = "BERTH_HISTORY", default_value_t = 100)]
    pub history: usize,

    /// Messages per second per connection (sustained).
    #[arg(long, env = "BERTH_MESSAGE_RATE", default_value_t = 20.0)]
    pub message_rate: f64,

    /// Messages a connection may send at once above the sustained rate.
    #[arg(long, env = "BERTH_MESSAGE_BURST", default_value_t = 40)]
    pub message_burst: u32,

    /// Frames queued per connection before a slow reader is dropped.
    #[arg(long, env = "BERTH_OUTBOUND_QUEUE", default_value_t = 1024)]
    pub outbound_queue: usize,

    /// Ping period; a connection silent for two periods is closed.
    #[arg(long, env = "BERTH_PING_INTERVAL_MS", default_value_t = 15000)]
    pub ping_interval_ms: u64,

    /// A room without members for this long is disposed of.
    #[arg(long, env = "BERTH_ROOM_IDLE_SECS", default_value_t = 300)]
    pub room_idle_secs: u64,

    /// How long a drain waits for rooms to empty before closing what remains.
    #[arg(long, env = "BERTH_DRAIN_TIMEOUT_SECS", default_value_t = 30)]
    pub drain_timeout_secs: u64,

    /// Set by the scheduler on servers it spawns.
    #[arg(long)]
    pub managed: bool,

    /// No scheduler: accept valid tickets for any room (benchmarks, `berth bench --direct`).
    #[arg(long)]
    pub standalone: bool,

    /// Where messages are made durable (`--store`, `--database-url`). A `--standalone` server
    /// keeps history in memory only unless a store is named.
    #[command(flatten)]
    pub store: berth_store::StoreArgs,

    /// Test hook: a message with exactly this text makes its room panic. Off unless set.
    #[arg(long, hide = true)]
    pub debug_panic_text: Option<String>,
}

impl Config {
    pub(crate) fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }

    pub(crate) fn room_idle(&self) -> Duration {
        Duration::from_secs(self.room_idle_secs)
    }

    pub(crate) fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }

    /// The URL this server registers, given its id and bound port.
    pub(crate) fn advertised_url(&self, server_id: &str, port: u16) -> String {
        match &self.public_url {
            Some(template) => template.fill(server_id, &self.host, port),
            None => {
                let scheme = if self.tls.tls_cert.is_some() {
                    "wss"
                } else {
                    "ws"
                };
                format!("{scheme}://{}:{port}/ws", self.host)
            }
        }
    }

    pub(crate) fn public_key_path(&self) -> PathBuf {
        self.ticket_public_key
            .clone()
            .unwrap_or_else(|| self.cluster.data_dir.join("ticket.pub.pem"))
    }

    /// Refuses values the server cannot work with, before anything binds or registers.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.standalone && self.server_id.is_none() {
            return Err("--standalone needs --server-id".into());
        }
        if let Some(id) = &self.server_id
            && !berth_protocol::ids::is_valid_server_id(id)
        {
            return Err("--server-id must be 1-64 of letters, digits, '-' and '_'".into());
        }
        let positive = [
            ("--rooms", self.rooms as u64),
            ("--members-per-room", self.members_per_room as u64),
            ("--max-connections", self.max_connections as u64),
            ("--max-text-bytes", self.max_text_bytes as u64),
            ("--max-frame-bytes", self.max_frame_bytes as u64),
            ("--message-burst", self.message_burst as u64),
            ("--outbound-queue", self.outbound_queue as u64),
            ("--ping-interval-ms", self.ping_interval_ms),
        ];
        for (flag, value) in positive {
            if value == 0 {
                return Err(format!("{flag} must be greater than 0"));
            }
        }
        if !(self.message_rate.is_finite() && self.message_rate > 0.0) {
            return Err("--message-rate must be a positive number".into());
        }
        let scheduler_url = &self.cluster.scheduler_url;
        if !scheduler_url.starts_with("http://") && !scheduler_url.starts_with("https://") {
            return Err("--scheduler-url must be an http:// or https:// URL".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_architecture_doc() {
        let c = Config::parse_from(["berth-session"]);
        assert_eq!(c.listen.to_string(), "127.0.0.1:0");
        assert_eq!(
            (c.rooms, c.members_per_room, c.max_connections),
            (10, 100, 16000)
        );
        assert_eq!(
            (c.max_text_bytes, c.max_frame_bytes, c.history),
            (4096, 65536, 100)
        );
        assert_eq!(
            (c.message_burst, c.outbound_queue, c.ping_interval_ms),
            (40, 1024, 15000)
        );
        assert_eq!((c.room_idle_secs, c.drain_timeout_secs), (300, 30));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let c = Config::parse_from(["berth-session", "--cluster-secret", "hunter2-very-secret"]);
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn standalone_needs_a_server_id() {
        let c = Config::parse_from(["berth-session", "--standalone"]);
        assert!(c.validate().is_err());
        let c = Config::parse_from(["berth-session", "--standalone", "--server-id", "s-1"]);
        assert!(c.validate().is_ok());
        let c = Config::parse_from(["berth-session", "--server-id", "bad id"]);
        assert!(c.validate().is_err());
    }
}
