//! [`AppState`]: what every handler shares — the token issuer, the scheduler client and the
//! web files.

use std::sync::Arc;

use crate::config::Config;
use crate::error::Error;
use crate::keys;
use crate::ratelimit::Limits;
use crate::scheduler::SchedulerClient;
use crate::tokens::TokenIssuer;
use crate::web::WebFiles;

/// Shared, cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("issuer", &self.inner.issuer)
            .field("web", &self.inner.web)
            .finish_non_exhaustive()
    }
}

struct Inner {
    issuer: TokenIssuer,
    scheduler: SchedulerClient,
    web: WebFiles,
    store: Option<berth_store::Store>,
    accounts: crate::accounts::Accounts,
    /// Calls session servers: their internal send endpoint (`messages`) and their operator
    /// listeners' `/metrics` (`operator`).
    sessions: reqwest::Client,
    limits: Limits,
}

impl AppState {
    /// Loads (or generates) the ticket key, reads the cluster secret and builds the scheduler
    /// client, as `config` says. Touches the file system, so call it once at start.
    pub fn new(config: &Config) -> Result<AppState, Error> {
        Self::with_store(config, None)
    }

    /// [`AppState::new`] with the store history pages are read from.
    pub fn with_store(
        config: &Config,
        store: Option<berth_store::Store>,
    ) -> Result<AppState, Error> {
        let keys = keys::load_or_generate(&config.ticket_private_key_path())?;
        tracing::info!(
            private_key = %keys.private_path.display(),
            public_key = %keys.public_path.display(),
            "ticket keys ready"
        );
        let secret = config.cluster.secret()?;
        let endpoints = berth_runtime::failover::Endpoints::parse(&config.cluster.scheduler_url)
            .ok()
            .filter(|e| e.urls().iter().all(|u| reqwest::Url::parse(u).is_ok()))
            .ok_or_else(|| Error::SchedulerUrl(config.cluster.scheduler_url.clone()))?;
        // Whom `https://` schedulers and session servers must present certificates from.
        let trust = config.tls.client()?;
        let scheduler = SchedulerClient::new(endpoints, secret.expose().to_owned(), trust.clone())
            .map_err(Error::HttpClient)?;
        let issuer = TokenIssuer::new(keys, config.user_token_ttl(), config.ticket_ttl());
        let web = WebFiles::new(config.web_dir.as_deref());
        let accounts = crate::accounts::Accounts::new(&config.accounts)?;
        let sessions = crate::messages::session_client(trust).map_err(Error::HttpClient)?;
        Ok(AppState {
            inner: Arc::new(Inner {
                sessions,
                issuer,
                scheduler,
                web,
                store,
                accounts,
                limits: Limits::new(config),
            }),
        })
    }

    /// Mints and verifies tokens.
    pub fn issuer(&self) -> &TokenIssuer {
        &self.inner.issuer
    }

    /// Talks to the scheduler.
    pub fn scheduler(&self) -> &SchedulerClient {
        &self.inner.scheduler
    }

    /// The message store; `None` with `--store none`.
    pub fn store(&self) -> Option<&berth_store::Store> {
        self.inner.store.as_ref()
    }

    /// Accounts, guests, password hashing, sign-in throttles, the outside identity provider.
    pub fn accounts(&self) -> &crate::accounts::Accounts {
        &self.inner.accounts
    }

    /// The HTTP client for session servers.
    pub fn sessions(&self) -> &reqwest::Client {
        &self.inner.sessions
    }

    /// Request limits per address and per user.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Where the web client's files come from.
    pub fn web(&self) -> &WebFiles {
        &self.inner.web
    }
}
