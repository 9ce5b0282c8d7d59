//! What every Berth service shares at its edges, so that the backend, the scheduler and the
//! session servers start, log, stop and refuse requests the same way.
//!
//! - [`signal`]: two-stage shutdown: the first SIGINT/SIGTERM drains, a second one forces.
//! - [`trace`]: the `tracing` subscriber (`RUST_LOG`, stderr, plain text when piped).
//! - [`cluster`]: [`ClusterArgs`], the flags naming the scheduler, the cluster secret and the
//!   data directory, flattened into each service's config; [`secret`] the file behind it.
//! - [`failover`]: [`failover::Endpoints`], the scheduler replicas of a comma-separated
//!   `BERTH_SCHEDULER_URL`, tried in turn.
//! - `http` (feature `http`, on by default): [`http::ApiError`], the one error answer of every
//!   HTTP service, and the extractors that produce it.
//! - `layers` (feature `http`): the tower-http layers around every service's routes (timeout,
//!   body limit, security headers, request tracing), whose own refusals carry that answer.
//! - [`run`]: a binary's `main`: tracing, the tokio runtime, signals, exit code.
//! - [`tls`]: [`TlsArgs`] (`BERTH_TLS_CERT`, `BERTH_TLS_KEY`, `BERTH_TLS_CA`), the server's
//!   certificate (reloaded on SIGHUP or file change) and the client side's trust.
//! - [`public_url`]: [`PublicUrl`], the template of a session server's advertised URL.

pub mod cluster;
pub mod failover;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "http")]
pub mod layers;
pub mod public_url;
pub mod secret;
pub mod signal;
pub mod tls;
pub mod trace;

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

pub use cluster::{ClusterArgs, ClusterSecret, SecretError};
pub use public_url::PublicUrl;
pub use signal::Signals;
pub use tls::{ServerTls, TlsArgs, TlsError};

/// How long a service may still run after the second signal before the process exits anyway.
pub const FORCE_GRACE: Duration = Duration::from_secs(3);

/// Runs a service binary: sets up tracing (default filter `info`), starts the tokio runtime,
/// listens for signals and runs `service` with them. Exit code 0 after a graceful stop, 1 when
/// the service failed, or when it had not stopped [`FORCE_GRACE`] after a second signal.
pub fn run<F, Fut>(name: &str, service: F) -> ExitCode
where
    F: FnOnce(Signals) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    trace::init("info");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let signals = Signals::listen();
        let force = signals.force.clone();
        tokio::select! {
            result = service(signals) => result.map(|()| true),
            () = async { force.cancelled().await; tokio::time::sleep(FORCE_GRACE).await } => {
                tracing::warn!("still running after a second signal; exiting now");
                Ok(false)
            }
        }
    });
    // Tasks still running (a blocked read, a child's supervisor) are not waited for long.
    runtime.shutdown_timeout(Duration::from_millis(500));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("{name}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Binds `addr` and logs the bound address as `addr=` (launchers and tests read it from the log;
/// port 0 picks a free port).
pub async fn bind(addr: &str) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context as _;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind {addr}"))?;
    let bound = listener
        .local_addr()
        .context("cannot read the bound address")?;
    tracing::info!(addr = %bound, "listening");
    Ok(listener)
}
