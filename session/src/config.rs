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

    /// This server's own scheduler credential (`srv.<id>.<mac>`), which can only register,
    /// heartbeat and release this server's rooms. Spawned servers get it from the scheduler
    /// instead of the cluster secret; when set, the cluster secret is not read at all.
    #[arg(long, env = "BERTH_SERVER_CREDENTIAL", hide_env_values = true)]
    pub server_credential: Option<String>,
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

    /// Bytes of history (as serialized JSON) sent in `welcome` at most: the newest messages that
    /// fit; older ones are paged over HTTP (`GET /api/rooms/{id}/messages`).
    #[arg(long, env = "BERTH_WELCOME_HISTORY_BYTES", default_value_t = 256 * 1024)]
    pub welcome_history_bytes: usize,

    /// Deadline of every write to a client (the `welcome`, a batch of frames, a close): a client
    /// that cannot take it in time is disconnected.
    #[arg(long, env = "BERTH_WRITE_TIMEOUT_MS", default_value_t = 10000)]
    pub write_timeout_ms: u64,

    /// Operator listener serving `/metrics` (and `/healthz`); off unless set. The public port
    /// never serves `/metrics`. Its address is registered with the scheduler (`adminUrl`).
    #[arg(long, env = "BERTH_SESSION_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    /// Bounds of the HTTP listeners (connection budget, header-read and request timeouts).
    #[command(flatten)]
    pub http: berth_listener::HttpArgs,

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

    /// A typing state not renewed for this long is ended by the server (milliseconds).
    #[arg(long, env = "BERTH_TYPING_TIMEOUT_MS", default_value_t = berth_protocol::frames::TYPING_TIMEOUT_MS)]
    pub typing_timeout_ms: u64,

    /// How long rooms keep their members, paused, once the lease with the scheduler has run out
    /// (a scheduler that stalls and comes back costs no member its connection); then they are
    /// closed (1012) so that members look their rooms up again.
    #[arg(long, env = "BERTH_FENCE_GRACE_MS", default_value_t = 15_000)]
    pub fence_grace_ms: u64,

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

    /// Server-Sent Events and webhooks (`sse`, `webhook`).
    #[command(flatten)]
    pub integrations: IntegrationArgs,

    /// Test hook: a message with exactly this text makes its room panic. Off unless set; only in
    /// builds with the `debug-hooks` feature.
    #[cfg(feature = "debug-hooks")]
    #[arg(long, hide = true)]
    pub debug_panic_text: Option<String>,
}

/// Flags of the server-side integrations: the SSE endpoint and webhook deliveries.
#[derive(clap::Args, Clone, Debug)]
pub struct IntegrationArgs {
    /// Where room events (`message`, `joined`, `left`) are POSTed: one URL or a comma-separated
    /// list (empty: none).
    #[arg(long, env = "BERTH_WEBHOOK_URL", value_delimiter = ',')]
    pub webhook_url: Vec<String>,

    /// HMAC-SHA256 key signing the deliveries to `--webhook-url` (required with it).
    #[arg(long, env = "BERTH_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// Webhooks of the bundled bots (the stock bot), kept apart from `--webhook-url` so that
    /// whatever the operator sets there, the bots keep hearing rooms. `scripts/launch.sh` sets it.
    #[arg(long, env = "BERTH_BOT_WEBHOOK_URL", value_delimiter = ',')]
    pub bot_webhook_url: Vec<String>,

    /// HMAC key for `--bot-webhook-url` (default: `--webhook-secret`).
    #[arg(long, env = "BERTH_BOT_WEBHOOK_SECRET", hide_env_values = true)]
    pub bot_webhook_secret: Option<String>,

    /// Events waiting for delivery before new ones are dropped (and counted).
    #[arg(long, env = "BERTH_WEBHOOK_QUEUE", default_value_t = 1024)]
    pub webhook_queue: usize,

    /// Time one delivery attempt may take, in milliseconds.
    #[arg(long, env = "BERTH_WEBHOOK_TIMEOUT_MS", default_value_t = 5000)]
    pub webhook_timeout_ms: u64,

    /// Attempts per delivery (the first one included) before it is given up.
    #[arg(long, env = "BERTH_WEBHOOK_ATTEMPTS", default_value_t = 5)]
    pub webhook_attempts: u32,

    /// Wait before the first retry, in milliseconds; doubled on every further retry (at most
    /// 30 s).
    #[arg(long, env = "BERTH_WEBHOOK_BACKOFF_MS", default_value_t = 500)]
    pub webhook_backoff_ms: u64,

    /// Deliveries in flight at once.
    #[arg(long, env = "BERTH_WEBHOOK_CONCURRENCY", default_value_t = 32)]
    pub webhook_concurrency: usize,

    /// Period of the comment line that keeps an idle SSE stream alive, in milliseconds.
    #[arg(long, env = "BERTH_SSE_HEARTBEAT_MS", default_value_t = 10_000)]
    pub sse_heartbeat_ms: u64,

    /// Time an SSE reader has to take each write before its stream is closed, in milliseconds
    /// (default: `--write-timeout-ms`, the deadline of every WebSocket write).
    #[arg(long, env = "BERTH_SSE_WRITE_TIMEOUT_MS")]
    pub sse_write_timeout_ms: Option<u64>,
}

impl IntegrationArgs {
    fn validate(&self) -> Result<(), String> {
        let secret_set = |s: &Option<String>| s.as_deref().is_some_and(|s| !s.trim().is_empty());
        let urls = |v: &[String]| v.iter().any(|u| !u.trim().is_empty());
        if urls(&self.webhook_url) && !secret_set(&self.webhook_secret) {
            return Err("--webhook-url needs --webhook-secret (BERTH_WEBHOOK_SECRET)".into());
        }
        if urls(&self.bot_webhook_url)
            && !secret_set(&self.bot_webhook_secret)
            && !secret_set(&self.webhook_secret)
        {
            return Err("--bot-webhook-url needs --bot-webhook-secret or --webhook-secret".into());
        }
        for url in self.webhook_url.iter().chain(&self.bot_webhook_url) {
            let url = url.trim();
            if !url.is_empty() && !url.starts_with("http://") && !url.starts_with("https://") {
                return Err(format!("webhook URL {url:?} must be an http(s):// URL"));
            }
        }
        let positive = [
            ("--webhook-queue", self.webhook_queue as u64),
            ("--webhook-timeout-ms", self.webhook_timeout_ms),
            ("--webhook-attempts", u64::from(self.webhook_attempts)),
            ("--webhook-concurrency", self.webhook_concurrency as u64),
            ("--sse-heartbeat-ms", self.sse_heartbeat_ms),
            (
                "--sse-write-timeout-ms",
                self.sse_write_timeout_ms.unwrap_or(1),
            ),
        ];
        for (flag, value) in positive {
            if value == 0 {
                return Err(format!("{flag} must be greater than 0"));
            }
        }
        Ok(())
    }
}

impl Config {
    /// The text that makes a room panic (test builds only).
    pub(crate) fn panic_text(&self) -> Option<std::sync::Arc<str>> {
        #[cfg(feature = "debug-hooks")]
        return self.debug_panic_text.as_deref().map(std::sync::Arc::from);
        #[cfg(not(feature = "debug-hooks"))]
        None
    }

    pub(crate) fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }

    pub(crate) fn typing_timeout(&self) -> Duration {
        Duration::from_millis(self.typing_timeout_ms.max(1))
    }

    pub(crate) fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    /// The deadline of each write to an SSE reader: `--sse-write-timeout-ms`, else the one of
    /// every WebSocket write (`--write-timeout-ms`).
    pub(crate) fn sse_write_timeout(&self) -> Duration {
        self.integrations
            .sse_write_timeout_ms
            .map_or_else(|| self.write_timeout(), Duration::from_millis)
    }

    pub(crate) fn room_idle(&self) -> Duration {
        Duration::from_secs(self.room_idle_secs)
    }

    pub(crate) fn fence_grace(&self) -> Duration {
        Duration::from_millis(self.fence_grace_ms)
    }

    pub(crate) fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }

    /// The URL this server registers, given its id and bound port.
    pub(crate) fn advertised_url(&self, server_id: &str, port: u16) -> String {
        match &self.public_url {
            Some(template) => template.fill(server_id, &self.host, port),
            None => {
                let scheme = if self.tls.serves() { "wss" } else { "ws" };
                format!("{scheme}://{}:{port}/ws", self.host)
            }
        }
    }

    /// The id to start with: `--server-id`, or, when the public URL names the server (so the id
    /// is needed before registering), the one its credential speaks for (the scheduler takes no
    /// other) or a fresh one. Otherwise `None`: the scheduler assigns it.
    pub(crate) fn initial_server_id(&self) -> Option<String> {
        if let Some(id) = &self.server_id {
            return Some(id.clone());
        }
        if !self.public_url.as_ref()?.needs_server_id() {
            return None;
        }
        let claimed = self
            .server_credential
            .as_deref()
            .and_then(|c| berth_protocol::cluster::credential_server_id(c.trim()));
        Some(claimed.map_or_else(berth_protocol::ids::new_server_id, str::to_owned))
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
            ("--write-timeout-ms", self.write_timeout_ms),
        ];
        for (flag, value) in positive {
            if value == 0 {
                return Err(format!("{flag} must be greater than 0"));
            }
        }
        self.integrations.validate()?;
        if !(self.message_rate.is_finite() && self.message_rate > 0.0) {
            return Err("--message-rate must be a positive number".into());
        }
        berth_runtime::failover::Endpoints::parse(&self.cluster.scheduler_url).map_err(|e| {
            format!("--scheduler-url must be http:// or https:// URLs, comma-separated: {e}")
        })?;
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

    #[test]
    fn the_advertised_url_follows_tls_and_the_template() {
        let c = Config::parse_from(["berth-session", "--host", "10.0.0.5"]);
        assert_eq!(c.advertised_url("s-1", 9000), "ws://10.0.0.5:9000/ws");
        assert_eq!(c.initial_server_id(), None);
        let c = Config::parse_from([
            "berth-session",
            "--host",
            "10.0.0.5",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
        ]);
        assert_eq!(c.advertised_url("s-1", 9000), "wss://10.0.0.5:9000/ws");
        let template = ["--public-url", "wss://rooms.example.com/{serverId}/ws"];
        let c = Config::parse_from(["berth-session", template[0], template[1]]);
        assert_eq!(
            c.advertised_url("s-1", 9000),
            "wss://rooms.example.com/s-1/ws"
        );
        let picked = c.initial_server_id().expect("the template needs an id");
        assert!(berth_protocol::ids::is_valid_server_id(&picked));
    }

    #[test]
    fn a_templated_server_takes_the_id_its_credential_names() {
        let credential = berth_protocol::cluster::server_credential("secret", "s-vm1");
        let template = ["--public-url", "wss://rooms.example.com/{serverId}/ws"];
        let c = Config::parse_from([
            "berth-session",
            template[0],
            template[1],
            "--server-credential",
            &credential,
        ]);
        assert_eq!(c.initial_server_id().as_deref(), Some("s-vm1"));
        let c = Config::parse_from([
            "berth-session",
            template[0],
            template[1],
            "--server-credential",
            &credential,
            "--server-id",
            "s-given",
        ]);
        assert_eq!(c.initial_server_id().as_deref(), Some("s-given"));
    }
}
