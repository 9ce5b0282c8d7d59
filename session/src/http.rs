//! HTTP routes. The public listener: `GET /ws` (admission, then the WebSocket upgrade),
//! `GET /sse` (the same room over Server-Sent Events, `sse`),
//! `POST /internal/rooms/{roomId}/messages` (the backend's HTTP send, `http_send`) and
//! `GET /healthz`. The operator listener (`--admin-listen`): `GET /metrics` and `GET /healthz`.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json};
use berth_runtime::layers::Layers;
use hyper::upgrade::OnUpgrade;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tracing::Instrument as _;

use crate::admission;
use crate::connection;
use crate::error::ApiError;
use crate::state::AppState;

/// Smallest bound on a request body. The one route that reads a body (the internal HTTP send)
/// takes what a WebSocket `send` frame may be: `--max-frame-bytes`.
const MIN_BODY_BYTES: usize = 4 * 1024;

/// The session server's public routes over `state`, inside the shared layers. The request
/// timeout bounds a WebSocket's admission (until the `101`) but not the connection: that runs in
/// a task of its own once upgraded. `/metrics` is not among them: operators scrape the admin
/// listener ([`admin_router`], `--admin-listen`).
pub fn router(state: AppState) -> Router {
    let max_body_bytes = state.0.config.max_frame_bytes.max(MIN_BODY_BYTES);
    let request_timeout = state.0.config.http.limits().request_timeout;
    let routes = Router::new()
        .route("/ws", get(websocket))
        .route("/sse", get(crate::sse::stream))
        .route(
            "/internal/rooms/{room_id}/messages",
            axum::routing::post(crate::http_send::send),
        )
        .route("/healthz", get(healthz))
        .fallback(berth_runtime::http::not_found)
        .method_not_allowed_fallback(berth_runtime::http::method_not_allowed)
        .with_state(state);
    layers(request_timeout, max_body_bytes).apply(routes)
}

/// The shared layers (timeout, body limit, security headers, request tracing) of both listeners.
/// The listener (`berth_listener`) bounds each request by `--request-timeout-ms` as well; the
/// layers use the same bound.
fn layers(request_timeout: std::time::Duration, max_body_bytes: usize) -> Layers {
    Layers {
        request_timeout,
        max_body_bytes,
        content_security_policy: None,
    }
}

/// The operator routes (`--admin-listen`): `/metrics` and `/healthz`, without credentials.
pub fn admin_router(state: AppState) -> Router {
    let request_timeout = state.0.config.http.limits().request_timeout;
    let routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(berth_runtime::http::not_found)
        .method_not_allowed_fallback(berth_runtime::http::method_not_allowed)
        .with_state(state);
    layers(request_timeout, MIN_BODY_BYTES).apply(routes)
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
    mut request: Request,
) -> Response {
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr);
    let (query_token, since) = match query {
        Ok(Query(q)) => (q.token, q.since),
        Err(_) => (None, None),
    };
    // The ticket comes first: nothing else is revealed to a caller without one.
    let (claims, spent) =
        match admission::ticket_from_request(&state, query_token.as_deref(), &headers) {
            Ok(ticket) => ticket,
            Err(refusal) => return refuse(&state, refusal, peer),
        };
    let since = match since.as_deref().map(str::parse::<u64>) {
        None => None,
        Some(Ok(seq)) => Some(seq),
        Some(Err(_)) => {
            return refuse(
                &state,
                ApiError::invalid_request("since must be a message seq"),
                peer,
            );
        }
    };
    let (accept, on_upgrade) = match handshake(&headers, &mut request) {
        Ok(upgrade) => upgrade,
        Err((status, why)) => {
            return ApiError::new(status, berth_protocol::ErrorCode::InvalidRequest, why)
                .into_response();
        }
    };
    // Debug level: an enabled span costs something on every poll of the connection task.
    let span = tracing::debug_span!(
        "conn",
        room_id = %claims.room,
        user_id = %claims.sub,
        server_id = state.server_id().as_deref().unwrap_or(""),
        peer = peer.map(tracing::field::display),
    );
    let admitted = match admission::admit(&state, claims, since)
        .instrument(span.clone())
        .await
    {
        Ok(admitted) => {
            spent.keep();
            admitted
        }
        Err(refusal) => return refuse(&state, refusal, peer),
    };
    let run = connection::run(on_upgrade, admitted, state);
    // The span is 40 bytes in every connection's task: carried only while debug logs are on.
    if span.is_disabled() {
        tokio::spawn(run);
    } else {
        tokio::spawn(run.instrument(span));
    }
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, HeaderValue::from_static("upgrade"))
        .header(header::UPGRADE, HeaderValue::from_static("websocket"))
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(axum::body::Body::empty())
        .expect("a valid 101 response")
}

/// Checks an HTTP/1.1 WebSocket upgrade request (RFC 6455 section 4.2.1): the
/// `Sec-WebSocket-Accept` value and the pending upgrade, or the status and reason refusing it.
///
/// The upgrade is done here rather than by axum's `WebSocketUpgrade` so that the connection gets
/// the raw socket first: it writes the `welcome` (the largest frame it ever sends) straight to it,
/// because tungstenite's write buffer would keep that frame's capacity for the connection's life.
fn handshake(
    headers: &HeaderMap,
    request: &mut Request,
) -> Result<(HeaderValue, OnUpgrade), (StatusCode, &'static str)> {
    let has_token = |name: header::HeaderName, token: &str| {
        let mut values = headers
            .get_all(name)
            .into_iter()
            .filter_map(|v| v.to_str().ok());
        values.any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token(header::CONNECTION, "upgrade") {
        return Err((
            StatusCode::BAD_REQUEST,
            "Connection header did not include 'upgrade'",
        ));
    }
    if !has_token(header::UPGRADE, "websocket") {
        return Err((
            StatusCode::BAD_REQUEST,
            "`Upgrade` header did not include 'websocket'",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err((
            StatusCode::BAD_REQUEST,
            "`Sec-WebSocket-Version` header did not include '13'",
        ));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err((
            StatusCode::BAD_REQUEST,
            "`Sec-WebSocket-Key` header missing",
        ));
    };
    let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
        .expect("base64 is a valid header value");
    let on_upgrade = request.extensions_mut().remove::<OnUpgrade>().ok_or((
        StatusCode::UPGRADE_REQUIRED,
        "the connection cannot be upgraded",
    ))?;
    Ok((accept, on_upgrade))
}

fn refuse(state: &AppState, refusal: ApiError, peer: Option<SocketAddr>) -> Response {
    if let Some(code) = refusal.error_code() {
        state.0.metrics.refused(code);
    }
    tracing::debug!(code = refusal.code(), reason = refusal.message(), peer = ?peer, "connection refused");
    refusal.into_response()
}

async fn healthz(State(state): State<AppState>) -> Response {
    let body = serde_json::json!({
        "status": "ok",
        "serverId": state.server_id().as_deref(),
        "draining": state.is_draining(),
        "fenced": state.is_fenced(),
        "rooms": state.0.rooms.len(),
        "connections": state.0.metrics.connections(),
    });
    (StatusCode::OK, Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let text = state
        .0
        .metrics
        .render(state.0.rooms.len(), state.is_draining());
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
}
