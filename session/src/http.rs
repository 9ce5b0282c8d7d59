//! HTTP routes: `GET /ws` (admission, then the WebSocket upgrade), `GET /healthz`, `GET /metrics`.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json};
use serde::Deserialize;
use tracing::Instrument as _;

use crate::admission::{self, Refusal};
use crate::connection;
use crate::state::AppState;
use crate::ticket::token_from_request;

/// Bytes read from the socket per call (tungstenite's default, 128 KiB per connection, wastes
/// memory with thousands of mostly idle connections).
const READ_BUFFER: usize = 4 * 1024;
/// Bytes buffered before a write reaches the socket (flushes write earlier).
const WRITE_BUFFER: usize = 8 * 1024;

/// The session server's routes over `state`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/ws", get(websocket))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
    /// Resume after this `seq` (`berth_protocol::frames::SINCE_PARAM`).
    since: Option<String>,
}

async fn websocket(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    query: Result<Query<TokenQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr);
    let (query_token, since) = match query {
        Ok(Query(q)) => (q.token, q.since),
        Err(_) => (None, None),
    };
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let token = token_from_request(query_token.as_deref(), authorization);

    // The ticket comes first: nothing else is revealed to a caller without one.
    let claims = match admission::check_ticket(&state, token) {
        Ok(claims) => claims,
        Err(refusal) => return refuse(&state, refusal, peer),
    };
    let since = match since.as_deref().map(str::parse::<u64>) {
        None => None,
        Some(Ok(seq)) => Some(seq),
        Some(Err(_)) => return refuse(&state, Refusal::invalid_request("since must be a message seq"), peer),
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    // Debug level: an enabled span costs something on every poll of the connection task.
    let span = tracing::debug_span!(
        "conn",
        room_id = %claims.room,
        user_id = %claims.sub,
        server_id = state.server_id().as_deref().unwrap_or(""),
        peer = peer.map(tracing::field::display),
    );
    let admitted = match admission::admit(&state, claims, since).instrument(span.clone()).await {
        Ok(admitted) => admitted,
        Err(refusal) => return refuse(&state, refusal, peer),
    };
    let config = &state.0.config;
    let max_frame = config.max_frame_bytes;
    upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(max_write_buffer(config))
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        .on_upgrade(move |socket| connection::run(socket, admitted, state).instrument(span))
}

/// Bound on a connection's write buffer: room for the largest frame the server may send (a
/// `welcome` with full history, every text escaped at worst) on top of the normal buffer.
fn max_write_buffer(config: &crate::Config) -> usize {
    let per_message = config.max_text_bytes.saturating_mul(6).saturating_add(512);
    let welcome = config
        .history
        .max(berth_protocol::frames::MAX_RESUME_MESSAGES)
        .saturating_mul(per_message)
        .saturating_add((config.members_per_room as usize).saturating_mul(1024));
    WRITE_BUFFER.saturating_add(welcome).saturating_add(64 * 1024).max(1 << 20)
}

fn refuse(state: &AppState, refusal: Refusal, peer: Option<SocketAddr>) -> Response {
    state.0.metrics.refused(refusal.code);
    tracing::debug!(code = %refusal.code, reason = %refusal.message, peer = ?peer, "connection refused");
    refusal.into_response()
}

async fn healthz(State(state): State<AppState>) -> Response {
    let body = serde_json::json!({
        "status": "ok",
        "serverId": state.server_id().as_deref(),
        "draining": state.is_draining(),
        "rooms": state.0.rooms.len(),
        "connections": state.0.metrics.connections(),
    });
    (StatusCode::OK, Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let text = state.0.metrics.render(state.0.rooms.len(), state.is_draining());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}
