//! `berth-bot`: the stock bot.
//!
//! It hears rooms through Berth's webhook (`POST /webhook`, signature checked in constant time),
//! and answers `/stock=CODE` and `/help` in the room the message came from, over HTTP send
//! (`POST /api/rooms/{roomId}/messages`), as the account `stockbot`. It never answers a bot
//! (itself or any `stockbot`), so two bots cannot talk to each other forever, and it drops a
//! delivery it has already seen (webhooks are retried).
//!
//! - [`quotes`]: prices from the shipped sample CSV, another file, or a stooq-style endpoint.
//! - [`command`]: what a message asks and what the bot answers.
//! - [`account`]: the bot's account and its credentials file.
//! - [`hook`]: the webhook receiver and the replies.

pub mod account;
pub mod command;
pub mod hook;
pub mod quotes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use hook::router;

/// The bot's flags, each with an environment fallback.
#[derive(Parser, Clone, Debug)]
#[command(name = "berth-bot", version, about = "Berth's stock bot")]
pub struct Config {
    /// Address to bind (the webhook endpoint is `/webhook`).
    #[arg(long, env = "BERTH_BOT_LISTEN", default_value = "127.0.0.1:7081")]
    pub listen: SocketAddr,

    /// The backend's public URL.
    #[arg(
        long,
        env = "BERTH_BACKEND_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub backend_url: String,

    /// Key of the webhook signatures (the session servers' `--bot-webhook-secret`).
    #[arg(long, env = "BERTH_BOT_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: String,

    /// Where the bot keeps its account's credentials.
    #[arg(long, env = "BERTH_DATA_DIR", default_value = "./.berth")]
    pub data_dir: PathBuf,

    /// The bot's account.
    #[arg(long, env = "BERTH_BOT_USERNAME", default_value = "stockbot")]
    pub username: String,

    /// A stooq-format CSV (`Symbol,Date,Time,Open,High,Low,Close,Volume`) replacing the sample
    /// quotes shipped with the bot.
    #[arg(long, env = "BERTH_STOCK_QUOTES_FILE")]
    pub quotes_file: Option<PathBuf>,

    /// A stooq-style quote endpoint, asked `{url}?s={code}&f=sd2t2ohlcv&h&e=csv` (or with
    /// `{code}` in the URL replaced); takes precedence over the file.
    #[arg(long, env = "BERTH_STOCK_QUOTES_URL")]
    pub quotes_url: Option<String>,

    /// Time a quote endpoint has to answer, in milliseconds.
    #[arg(long, env = "BERTH_STOCK_QUOTES_TIMEOUT_MS", default_value_t = 3000)]
    pub quotes_timeout_ms: u64,

    /// CA certificate(s) (PEM) trusted, besides the system's web roots, when the backend is
    /// reached over `https://` with a private certificate.
    #[arg(long, env = "BERTH_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

impl Config {
    /// Where quotes come from, as the flags say.
    pub fn quotes(&self) -> anyhow::Result<quotes::Quotes> {
        if let Some(url) = self.quotes_url.as_deref().filter(|u| !u.trim().is_empty()) {
            anyhow::ensure!(
                url.starts_with("http://") || url.starts_with("https://"),
                "--quotes-url must be an http(s):// URL"
            );
            return Ok(quotes::Quotes::from_url(
                url,
                Duration::from_millis(self.quotes_timeout_ms.max(1)),
            )?);
        }
        match &self.quotes_file {
            Some(path) => {
                let csv = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                Ok(quotes::Quotes::from_csv(&csv)?)
            }
            None => Ok(quotes::Quotes::from_csv(quotes::SAMPLE_CSV)?),
        }
    }
}

/// The binary's `main`: flags, logs to stderr, SIGINT/SIGTERM, then [`serve`].
pub async fn cli() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = Config::parse();
    let listener = TcpListener::bind(config.listen).await?;
    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminated = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = terminated => {}
        }
        signals.cancel();
    });
    serve(listener, config, shutdown).await
}

/// Signs in (retrying while the backend is not up, until `shutdown`), then serves the webhook
/// on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !config.webhook_secret.trim().is_empty(),
        "the webhook secret is empty"
    );
    let quotes = config.quotes()?;
    let backend = config.backend_url.trim_end_matches('/').to_owned();
    let tls = berth_runtime::tls::client_config(config.tls_ca.as_deref())?;
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut wait = Duration::from_millis(200);
    let identity = loop {
        match account::sign_in(&http, &backend, &config.data_dir, &config.username).await {
            Ok(identity) => break identity,
            Err(e) if e.is_transient() => {
                tracing::info!(error = %e, "cannot sign in yet; trying again");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
    };
    tracing::info!(user_id = %identity.user_id, username = %identity.username, "signed in");
    let bot = hook::Bot::new(hook::BotParts {
        http,
        backend,
        data_dir: config.data_dir.clone(),
        username: config.username.clone(),
        secret: config.webhook_secret.trim().as_bytes().to_vec(),
        quotes,
        identity,
        shutdown: shutdown.clone(),
    });
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "stock bot listening; webhook at /webhook");
    axum::serve(listener, router(bot.clone()))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await?;
    bot.stop().await;
    tracing::info!("stock bot stopped");
    Ok(())
}
