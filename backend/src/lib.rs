//! `berth-backend`: Berth's public API.
//!
//! It signs users in (accounts with passwords, guests, or an outside identity provider), asks the scheduler to place or find rooms,
//! mints short-lived tickets that one session server accepts for one room, lists public rooms,
//! and serves the browser client. It keeps no state of its own besides its signing key.
//!
//! - `config`: flags and environment ([`Config`]).
//! - `keys`: the Ed25519 ticket key pair on disk.
//! - `tokens`: minting and checking user tokens and tickets.
//! - `accounts`: register, sign in (accounts and guests), `/api/me`, token refresh, password
//!   change, and who a user token names (`accounts::authenticate`); with `password`
//!   (argon2id), `throttle` (failed sign-ins) and `jwks` (an outside identity provider).
//! - `conversations`: private rooms (membership checks, adding members), direct messages
//!   and `/api/me/rooms`.
//! - `scheduler`: the client of the scheduler's internal API.
//! - `messages`: `POST /api/rooms/{roomId}/messages`, messages sent over HTTP.
//! - `api`: the `/api` handlers; `web`: the web client's files.
//! - `operator`: the operator page's fleet view, behind the cluster secret.
//! - `ratelimit`: request limits per client address and per user, and the client address.
//! - `error`: the one error answer ([`ApiError`]) and why serving failed ([`Error`]).
//! - `cli`: the binary's `main`.

mod accounts;
mod api;
pub mod cli;
mod config;
mod conversations;
mod error;
mod jwks;
mod keys;
mod messages;
mod openapi;
mod operator;
mod password;
mod ratelimit;
mod scheduler;
mod state;
mod throttle;
mod tokens;
mod web;

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use berth_runtime::layers::{DEFAULT_REQUEST_TIMEOUT, Layers, WEB_CLIENT_CSP};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::{ApiError, Error};
pub use state::AppState;

/// Largest request body accepted (every API body is a few hundred bytes).
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// How long in-flight requests get to finish once shutdown starts.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Every route of the backend over `state`, inside the shared layers (the web client's CSP).
pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        // Accounts and identity (`accounts`).
        .route("/api/login", axum::routing::post(accounts::login))
        .route("/api/register", axum::routing::post(accounts::register))
        .route("/api/me", get(accounts::me))
        .route(
            "/api/me/password",
            axum::routing::post(accounts::change_password),
        )
        .route("/api/token/refresh", axum::routing::post(accounts::refresh))
        .route("/api/rooms", get(api::list_rooms).post(api::create_room))
        .route("/api/rooms/{room_id}", get(api::lookup_room))
        .route(
            "/api/rooms/{room_id}/messages",
            get(api::room_messages).post(messages::send),
        )
        // Private rooms, direct messages, my rooms (`conversations`).
        .route(
            "/api/rooms/{room_id}/members",
            axum::routing::post(conversations::add_member),
        )
        .route("/api/dms", axum::routing::post(conversations::open_dm))
        .route("/api/me/rooms", get(conversations::my_rooms))
        .route("/api/operator/fleet", get(operator::fleet))
        .route("/healthz", get(api::healthz))
        .route("/api/openapi.json", get(openapi::openapi_json))
        .route("/", get(web::index))
        .route("/berth.js", get(web::sdk))
        .route("/app.js", get(web::app))
        .route("/conversations.js", get(web::conversations))
        .route("/style.css", get(web::style))
        .route("/operator", get(web::operator_page))
        .route("/operator.js", get(web::operator_script))
        .fallback(berth_runtime::http::not_found)
        .method_not_allowed_fallback(berth_runtime::http::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Per-address request limits (`ratelimit`), inside the shared layers so that a 429 is
        // traced and carries the security headers.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ratelimit::per_address,
        ))
        .with_state(state);
    Layers {
        request_timeout: DEFAULT_REQUEST_TIMEOUT,
        max_body_bytes: MAX_BODY_BYTES,
        content_security_policy: Some(WEB_CLIENT_CSP),
    }
    .apply(routes)
}

/// Serves the backend on `listener` until `shutdown` is cancelled, then lets in-flight requests
/// finish for at most [`SHUTDOWN_TIMEOUT`].
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let store = config
        .store
        .open(&config.cluster.data_dir, false)
        .await
        .map_err(Error::Store)?;
    if let Some(store) = &store {
        tracing::info!(store = %store.describe(), "message store open");
    }
    let state = AppState::with_store(&config, store)?;
    let tls = config.tls.acceptor(shutdown.clone())?;
    let listener = berth_listener::Listener::new(listener, tls);
    let addr = listener.local_addr().map_err(Error::Serve)?;
    tracing::info!(%addr, tls = listener.is_tls(), scheduler_url = %config.cluster.scheduler_url, "backend serving");

    // The listener hands handlers the client address (`ConnectInfo`) the login throttle keys on.
    let limits = berth_listener::Limits {
        shutdown_grace: SHUTDOWN_TIMEOUT,
        ..config.http.limits()
    };
    let server = berth_listener::serve(listener, router(state), limits, shutdown.clone());
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result.map_err(Error::Serve),
        () = shutdown.cancelled() => {
            match tokio::time::timeout(SHUTDOWN_TIMEOUT, server).await {
                Ok(result) => result.map_err(Error::Serve)?,
                Err(_) => tracing::warn!(timeout = ?SHUTDOWN_TIMEOUT, "requests still running at shutdown, dropped"),
            }
            tracing::info!("backend stopped");
            Ok(())
        }
    }
}
