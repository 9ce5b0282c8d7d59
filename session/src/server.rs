//! [`serve`]: the life of one session server, from a bound listener to a drained exit.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::Error;
use crate::http::{admin_router, router};
use crate::registration;
use crate::state::AppState;

/// How often a drain checks whether the rooms are empty.
const DRAIN_POLL: Duration = Duration::from_millis(50);
/// Bound on closing the remaining connections and rooms once the drain is over.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on stopping the HTTP listener.
const HTTP_STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// Serves on `listener` until `shutdown` is cancelled or the scheduler asks for a drain, then
/// drains (bounded by `--drain-timeout-secs`) and returns.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    serve_with_force(listener, config, shutdown, CancellationToken::new()).await
}

/// [`serve`], plus `force`: cancelling it cuts a drain short and closes everything at once (the
/// cli cancels it on a second signal). Binds `--admin-listen` when it is set.
pub async fn serve_with_force(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
    force: CancellationToken,
) -> Result<(), Error> {
    let admin = match config.admin_listen {
        Some(addr) => Some(TcpListener::bind(addr).await?),
        None => None,
    };
    serve_with_admin(listener, admin, config, shutdown, force).await
}

/// [`serve_with_force`] with the operator listener (`/metrics`, `/healthz`) already bound.
pub async fn serve_with_admin(
    listener: TcpListener,
    admin: Option<TcpListener>,
    config: Config,
    shutdown: CancellationToken,
    force: CancellationToken,
) -> Result<(), Error> {
    let addr = listener.local_addr()?;
    let store = config
        .store
        .open(&config.cluster.data_dir, config.standalone)
        .await?;
    match &store {
        Some(store) => tracing::info!(store = %store.describe(), "message store open"),
        None => tracing::info!("no message store: history lives and dies with each room"),
    }
    let state = AppState::with_store(config, addr, store)?;
    let shared = state.0.clone();

    let http_stop = CancellationToken::new();
    // The certificate (kept reloaded while the server runs) serves both listeners.
    let tls = shared.config.tls.acceptor(http_stop.clone())?;
    let listener = berth_listener::Listener::new(listener, tls.clone());
    let limits = shared.config.http.limits();
    let mut http = tokio::spawn(berth_listener::serve(
        listener,
        router(state.clone()),
        limits,
        http_stop.clone(),
    ));
    if let Some(admin) = admin {
        let admin_addr = admin.local_addr()?;
        state.set_admin_addr(admin_addr);
        tracing::info!(addr = %admin_addr, "admin listener up (metrics)");
        tokio::spawn(berth_listener::serve(
            berth_listener::Listener::new(admin, tls),
            admin_router(state.clone()),
            berth_listener::Limits {
                max_connections: 64,
                ..limits
            },
            http_stop.clone(),
        ));
    }
    tracing::info!(
        url = state.url(),
        server_id = state
            .server_id()
            .as_deref()
            .unwrap_or("(assigned at registration)"),
        standalone = shared.config.standalone,
        "session server up"
    );

    let agent_stop = CancellationToken::new();
    let agent = shared
        .scheduler
        .clone()
        .map(|client| tokio::spawn(registration::run(state.clone(), client, agent_stop.clone())));

    let mut http_done = false;
    tokio::select! {
        () = shutdown.cancelled() => tracing::info!("shutdown requested; draining"),
        () = shared.draining.cancelled() => tracing::info!("draining"),
        () = force.cancelled() => tracing::info!("forced shutdown"),
        r = &mut http => {
            http_done = true;
            tracing::error!(result = ?r, "the HTTP server stopped; draining");
        }
    }
    state.request_drain();

    let deadline = tokio::time::Instant::now() + shared.config.drain_timeout();
    // With a store and a scheduler, live rooms are handed over to other servers at once.
    if shared.durability.is_some() && shared.scheduler.is_some() && !force.is_cancelled() {
        tokio::select! {
            () = crate::hosting::hand_over_rooms(&state, deadline) => {}
            () = force.cancelled() => {}
        }
    }
    // Rooms end by themselves once empty while draining; wait for that, within the bound.
    while !shared.rooms.is_empty() {
        tokio::select! {
            () = tokio::time::sleep(DRAIN_POLL) => {}
            () = tokio::time::sleep_until(deadline) => {
                tracing::info!(rooms = shared.rooms.len(), "drain timeout; closing what remains");
                break;
            }
            () = force.cancelled() => break,
        }
    }
    shared.close_all.cancel();
    shared.tracker.close();
    if tokio::time::timeout(CLOSE_TIMEOUT, shared.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not close in time");
    }

    // The rooms are gone: let the writer finish what they queued, then stop it.
    shared.writer_stop.cancel();
    let writer = shared
        .writer_task
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(writer) = writer
        && tokio::time::timeout(CLOSE_TIMEOUT, writer).await.is_err()
    {
        tracing::warn!("the store writer did not finish in time");
    }

    // The rooms' last events (`left`) are queued: the webhook worker stops within its grace.
    shared.webhook_stop.cancel();
    let webhooks = shared
        .webhook_task
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if let Some(webhooks) = webhooks
        && tokio::time::timeout(CLOSE_TIMEOUT, webhooks).await.is_err()
    {
        tracing::warn!("the webhook worker did not stop in time");
    }

    agent_stop.cancel();
    if let Some(agent) = agent {
        let _ = agent.await;
    }
    let registered = shared.registered.load(std::sync::atomic::Ordering::Relaxed);
    if let (true, Some(scheduler), Some(server_id)) =
        (registered, &shared.scheduler, state.server_id())
    {
        match scheduler.deregister(&server_id).await {
            Ok(()) => tracing::info!(%server_id, "left the scheduler"),
            Err(e) => {
                tracing::warn!(%server_id, error = %e, "cannot tell the scheduler this server left")
            }
        }
    }

    http_stop.cancel();
    if !http_done
        && tokio::time::timeout(HTTP_STOP_TIMEOUT, &mut http)
            .await
            .is_err()
    {
        http.abort();
    }
    tracing::info!("session server stopped");
    Ok(())
}
