//! The backend's configuration: every flag of `docs/architecture.md`, each with its `BERTH_*`
//! environment fallback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Flags of `berth-backend`. Tests build one with `Config::parse_from([...])`.
#[derive(Parser, Clone)]
#[command(
    name = "berth-backend",
    version,
    about = "Berth's public API: login, rooms, tickets, web client."
)]
pub struct Config {
    /// Address to bind.
    #[arg(long, env = "BERTH_BACKEND_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Where the scheduler's internal API is.
    #[arg(
        long,
        env = "BERTH_SCHEDULER_URL",
        default_value = "http://127.0.0.1:7070"
    )]
    pub scheduler_url: String,

    /// Shared secret for the scheduler API; read from (or created at) `<data-dir>/cluster.secret`
    /// when unset.
    #[arg(long, env = "BERTH_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,

    /// Where keys and data live.
    #[arg(long, env = "BERTH_DATA_DIR", default_value = "./.berth")]
    pub data_dir: PathBuf,

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
            .unwrap_or_else(|| self.data_dir.join("ticket.key.pem"))
    }

    /// Where the cluster secret file lives when `--cluster-secret` is not given.
    pub fn cluster_secret_path(&self) -> PathBuf {
        self.data_dir.join("cluster.secret")
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

// Hand-written so that the cluster secret never reaches a log line through `{:?}`.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("scheduler_url", &self.scheduler_url)
            .field(
                "cluster_secret",
                &self.cluster_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("data_dir", &self.data_dir)
            .field("ticket_private_key", &self.ticket_private_key)
            .field("ticket_ttl_secs", &self.ticket_ttl_secs)
            .field("user_token_ttl_secs", &self.user_token_ttl_secs)
            .field("web_dir", &self.web_dir)
            .field("store", &self.store)
            .field("accounts", &self.accounts)
            .field("http", &self.http)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::parse_from(["berth-backend"]);
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.scheduler_url, "http://127.0.0.1:7070");
        assert_eq!(c.ticket_ttl_secs, 60);
        assert_eq!(c.user_token_ttl_secs, 86_400);
        assert_eq!(
            c.ticket_private_key_path(),
            PathBuf::from("./.berth/ticket.key.pem")
        );
        assert!(c.web_dir.is_none());
    }

    #[test]
    fn debug_redacts_the_secret() {
        let c = Config::parse_from(["berth-backend", "--cluster-secret", "hunter2"]);
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
