//! The backend's configuration: every flag of `docs/architecture.md`, each with its `BERTH_*`
//! environment fallback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Flags of `berth-backend`. Tests build one with `Config::parse_from([...])`.
#[derive(Parser, Clone, Debug)]
#[command(
    name = "berth-backend",
    version,
    about = "Berth's public API: login, rooms, tickets, web client."
)]
pub struct Config {
    /// Address to bind.
    #[arg(long, env = "BERTH_BACKEND_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// The scheduler, the cluster secret and the data directory (`--scheduler-url`,
    /// `--cluster-secret`, `--data-dir`).
    #[command(flatten)]
    pub cluster: berth_runtime::ClusterArgs,

    /// TLS: `--tls-cert` and `--tls-key` serve HTTPS, `--tls-ca` is trusted when calling the
    /// scheduler over `https://`.
    #[command(flatten)]
    pub tls: berth_runtime::TlsArgs,

    /// PKCS#8 PEM Ed25519 key that signs user tokens and tickets; generated (with its
    /// `.pub.pem` beside it) when absent. Default `<data-dir>/ticket.key.pem`.
    #[arg(long, env = "BERTH_TICKET_PRIVATE_KEY")]
    pub ticket_private_key: Option<PathBuf>,

    /// Lifetime of a room ticket, in seconds.
    #[arg(long, env = "BERTH_TICKET_TTL_SECS", default_value_t = 60)]
    pub ticket_ttl_secs: u64,

    /// Lifetime of a user token, in seconds.
    #[arg(long, env = "BERTH_USER_TOKEN_TTL_SECS", default_value_t = 86_400)]
    pub user_token_ttl_secs: u64,

    /// Serve the web client from this folder instead of the copy embedded in the binary
    /// (development: edit and reload).
    #[arg(long, env = "BERTH_WEB_DIR")]
    pub web_dir: Option<PathBuf>,

    /// Room creates per client address per minute (0: unlimited); the scheduler also limits
    /// creates per user (`BERTH_CREATE_RATE`).
    #[arg(long, env = "BERTH_CREATE_RATE_PER_ADDRESS", default_value_t = 30)]
    pub create_rate_per_address: u32,

    /// Requests per client address per minute, on every endpoint but `/healthz` (0: unlimited).
    #[arg(long, env = "BERTH_API_RATE_PER_ADDRESS", default_value_t = 1200)]
    pub api_rate_per_address: u32,

    /// Requests per user (user token) per minute (0: unlimited).
    #[arg(long, env = "BERTH_API_RATE_PER_USER", default_value_t = 600)]
    pub api_rate_per_user: u32,

    /// History pages (`GET /api/rooms/{id}/messages`) per user and per address per minute
    /// (0: unlimited).
    #[arg(long, env = "BERTH_HISTORY_RATE", default_value_t = 60)]
    pub history_rate: u32,

    /// Proxies whose `X-Forwarded-For` is believed (comma-separated IP addresses or CIDR
    /// blocks). Requests from anyone else are limited by their TCP peer address.
    #[arg(long, env = "BERTH_TRUSTED_PROXIES", value_delimiter = ',', value_parser = crate::ratelimit::parse_proxy)]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// Where the history that `GET /api/rooms/{id}/messages` pages through is read from
    /// (`--store`, `--database-url`): the session servers' store.
    #[command(flatten)]
    pub store: berth_store::StoreArgs,

    /// Accounts, guests, password hashing, sign-in throttles, outside identity provider.
    #[command(flatten)]
    pub accounts: crate::accounts::AccountArgs,
    /// Bounds of the HTTP listener (connection budget, header-read and request timeouts).
    #[command(flatten)]
    pub http: berth_listener::HttpArgs,
}

impl Config {
    /// The ticket private key's path, defaulted under the data dir.
    pub fn ticket_private_key_path(&self) -> PathBuf {
        self.ticket_private_key
            .clone()
            .unwrap_or_else(|| self.cluster.data_dir.join("ticket.key.pem"))
    }

    /// How long a ticket stays valid.
    pub fn ticket_ttl(&self) -> Duration {
        Duration::from_secs(self.ticket_ttl_secs)
    }

    /// How long a user token stays valid.
    pub fn user_token_ttl(&self) -> Duration {
        Duration::from_secs(self.user_token_ttl_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::parse_from(["berth-backend"]);
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.cluster.scheduler_url, "http://127.0.0.1:7070");
        assert_eq!(c.ticket_ttl_secs, 60);
        assert_eq!(c.user_token_ttl_secs, 86_400);
        assert_eq!(
            c.ticket_private_key_path(),
            PathBuf::from("./.berth/ticket.key.pem")
        );
        assert!(c.web_dir.is_none());
        assert_eq!(c.create_rate_per_address, 30);
        assert!(c.trusted_proxies.is_empty());
        let c = Config::parse_from(["berth-backend", "--trusted-proxies", "10.0.0.0/8,::1"]);
        assert_eq!(c.trusted_proxies.len(), 2);
        assert!(Config::try_parse_from(["berth-backend", "--trusted-proxies", "nope"]).is_err());
    }

    #[test]
    fn debug_redacts_the_secret() {
        let c = Config::parse_from(["berth-backend", "--cluster-secret", "hunter2"]);
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
