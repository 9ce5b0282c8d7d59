//! `berth-scheduler`: Berth's control plane.
//!
//! It keeps the `registry` of session servers and the `directory` of rooms, answers the
//! internal `/v1` API of `berth_protocol::cluster` (`api`), places new rooms on the fullest
//! ready server with a free slot (`placement`), spawns and supervises `berth-session` processes
//! when capacity runs out (`spawner`), and looks after the fleet in the background: dead
//! servers, the warm buffer, scale-down (`fleet`). Per-user create limits live in
//! `ratelimit`, Prometheus counters in `metrics`. With `--shared`, `replica` does all of this
//! over the shared state in PostgreSQL (`berth_store::control`) instead of the in-memory
//! registry and directory, so that any number of replicas can serve side by side.
//!
//! ```no_run
//! # async fn run() -> Result<(), berth_scheduler::Error> {
//! use clap::Parser;
//! let config = berth_scheduler::Config::parse_from(["berth-scheduler", "--cluster-secret", "s"]);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! berth_scheduler::serve(listener, config, shutdown).await
//! # }
//! ```

mod api;
pub mod cli;
mod config;
mod directory;
mod error;
mod fleet;
mod metrics;
mod placement;
mod ratelimit;
mod registry;
mod replica;
mod spawner;
mod state;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use api::router;
pub use config::Config;
pub use error::{ApiError, Error};
pub use state::AppState;

/// Serves the scheduler on `listener` until `shutdown` is cancelled, then stops every spawned
/// session server (SIGTERM, then SIGKILL after `shutdown_timeout_ms`) and returns. A replica
/// (`--shared`) leaves its spawned servers running instead: they move to another replica.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let addr = listener.local_addr().map_err(Error::LocalAddr)?;
    let secret = config.cluster.secret()?.expose().to_owned();
    // Our own token, so that an HTTP failure stops our tasks without cancelling the caller's.
    let shutdown = shutdown.child_token();
    let listener = berth_listener::Listener::new(listener, config.tls.acceptor(shutdown.clone())?);
    let tls = listener.is_tls();
    let store = config
        .store
        .open(&config.cluster.data_dir, false)
        .await
        .map_err(Error::Store)?;
    match &store {
        Some(store) => info!(store = %store.describe(), "room store open"),
        None => info!("no room store: dormant rooms are forgotten when the scheduler stops"),
    }
    let backing = backing(&config, store.as_ref()).await?;
    let state = AppState::with_store(
        config,
        secret,
        scheduler_url(addr, tls),
        shutdown.clone(),
        store,
        backing,
    );
    match state.replica() {
        None => placement::load_dormant(&state).await,
        Some(replica) => {
            info!(replica = %replica.id, "scheduler replica: registry and room directory shared in PostgreSQL");
            match replica
                .control
                .load_dormant(placement::DORMANT_AT_START)
                .await
            {
                Ok(n) if n > 0 => info!(loaded = n, "public rooms loaded from the store (dormant)"),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "cannot load public rooms from the store"),
            }
        }
    }
    info!(
        %addr,
        tls,
        rooms_per_server = state.config.rooms_per_server,
        max_servers = state.config.max_servers,
        warm_servers = state.config.warm_servers,
        "scheduler serving"
    );
    match state.backing {
        state::Backing::Memory => state.tasks.spawn(fleet::run(state.clone())),
        state::Backing::Shared(_) => state.tasks.spawn(replica::run(state.clone())),
    };

    let grace = state.config.shutdown_timeout() + std::time::Duration::from_secs(1);
    let limits = berth_listener::Limits {
        shutdown_grace: grace,
        ..state.config.http.limits()
    };
    let server = berth_listener::serve(listener, router(state.clone()), limits, shutdown.clone());
    let served = tokio::select! {
        result = server => result,
        () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            warn!("HTTP connections did not close in time; stopping anyway");
            Ok(())
        }
    };

    // Stop the fleet loop and the supervisors (which SIGTERM, then SIGKILL, their children).
    shutdown.cancel();
    state.tasks.close();
    if tokio::time::timeout(grace, state.tasks.wait())
        .await
        .is_err()
    {
        warn!("background tasks did not stop in time");
    }
    info!("scheduler stopped");
    served.map_err(Error::Serve)
}

/// The registry's and directory's home: shared in PostgreSQL when the store is PostgreSQL
/// (schedulers on one database are replicas of one another), unless `--shared false`; in memory
/// otherwise. `--shared true` refuses to start on any other store.
async fn backing(
    config: &Config,
    store: Option<&berth_store::Store>,
) -> Result<state::Backing, Error> {
    let postgres = match (config.store.kind(false), &config.store.database_url) {
        (Ok(berth_store::StoreKind::Postgres), Some(url)) if store.is_some() => Some(url),
        _ => None,
    };
    let url = match (config.shared, postgres) {
        (Some(false), _) | (None, None) => return Ok(state::Backing::Memory),
        (Some(true), None) => return Err(Error::SharedNeedsPostgres),
        (_, Some(url)) => url,
    };
    let control = berth_store::control::ControlStore::open(url)
        .await
        .map_err(Error::Store)?;
    Ok(state::Backing::Shared(replica::Replica::new(control)))
}

/// How spawned children reach us: the bound address, with a wildcard turned into loopback
/// (`https://` when we serve TLS: our certificate must then name that address).
fn scheduler_url(addr: SocketAddr, tls: bool) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{}", SocketAddr::new(ip, addr.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_url_uses_a_reachable_address() {
        assert_eq!(
            scheduler_url("127.0.0.1:7070".parse().unwrap(), false),
            "http://127.0.0.1:7070"
        );
        assert_eq!(
            scheduler_url("0.0.0.0:81".parse().unwrap(), true),
            "https://127.0.0.1:81"
        );
        assert_eq!(
            scheduler_url("[::]:82".parse().unwrap(), false),
            "http://[::1]:82"
        );
    }

    #[tokio::test]
    async fn replicas_refuse_to_start_without_postgres() {
        use clap::Parser as _;
        let shared = |extra: &[&str]| {
            let mut args = vec!["berth-scheduler", "--shared"];
            args.extend_from_slice(extra);
            Config::parse_from(args)
        };
        let err = backing(&shared(&[]), None).await.unwrap_err();
        assert!(matches!(err, Error::SharedNeedsPostgres));
        assert!(err.to_string().contains("BERTH_DATABASE_URL"), "{err}");
        let sqlite = shared(&["--store", "sqlite", "--database-url", "postgres://x/y"]);
        assert!(matches!(
            backing(&sqlite, None).await,
            Err(Error::SharedNeedsPostgres)
        ));
        let memory = Config::parse_from(["berth-scheduler"]);
        assert!(matches!(
            backing(&memory, None).await,
            Ok(state::Backing::Memory)
        ));
        // PostgreSQL makes replicas unless told otherwise.
        let single = Config::parse_from([
            "berth-scheduler",
            "--database-url",
            "postgres://x/y",
            "--shared",
            "false",
        ]);
        assert!(matches!(
            backing(&single, None).await,
            Ok(state::Backing::Memory)
        ));
    }
}
