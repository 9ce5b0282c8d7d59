//! The operator page's data: `GET /api/operator/fleet`, behind the cluster secret (bearer).
//!
//! It answers the scheduler's fleet (`/v1/servers`) and room directory (`/v1/rooms`) in one
//! call, adding each session server's `berth_session_messages_in_total` read from its
//! `/metrics`, so that the page (`/operator`) can draw messages per second. The cluster secret
//! never leaves the operator's browser tab except as this request's bearer.

use std::sync::OnceLock;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use berth_protocol::cluster::{RoomInfo, ServerInfo, ServerState};
use futures_util::future::join_all;
use serde::Serialize;

use crate::error::ApiError;
use crate::state::AppState;

/// How long one session server's `/metrics` may take before the page shows no rate for it.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest `/metrics` answer read.
const MAX_METRICS_BYTES: usize = 256 * 1024;
/// The counter summed for messages per second.
const MESSAGES_IN: &str = "berth_session_messages_in_total";

/// `GET /api/operator/fleet`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Fleet {
    pub servers: Vec<FleetServer>,
    pub rooms: Vec<RoomInfo>,
    /// The sum of the servers' `messagesIn` that could be read.
    pub messages_in: u64,
    /// Milliseconds since the Unix epoch, when this was put together.
    pub at_ms: u64,
}

/// A server of [`Fleet`]: the scheduler's view plus its message counter.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetServer {
    #[serde(flatten)]
    pub info: ServerInfo,
    /// Chat messages it accepted since it started; `null` when its metrics could not be read.
    pub messages_in: Option<u64>,
}

/// `GET /api/operator/fleet`: 401 `unauthorized` without the cluster secret as bearer.
pub async fn fleet(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Fleet>, ApiError> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if !bearer.is_some_and(|b| state.scheduler().is_cluster_secret(b)) {
        return Err(ApiError::unauthorized(
            "the operator API needs the cluster secret as a bearer token",
        ));
    }
    let (servers, rooms) = tokio::join!(state.scheduler().servers(), state.scheduler().all_rooms());
    let (servers, rooms) = (servers?.servers, rooms?.rooms);
    let counts = join_all(servers.iter().map(messages_in)).await;
    let servers: Vec<FleetServer> = servers
        .into_iter()
        .zip(counts)
        .map(|(info, messages_in)| FleetServer { info, messages_in })
        .collect();
    let messages_in = servers.iter().filter_map(|s| s.messages_in).sum();
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Ok(Json(Fleet {
        servers,
        rooms,
        messages_in,
        at_ms,
    }))
}

/// A server's `berth_session_messages_in_total`, read from `/metrics` beside its WebSocket
/// endpoint; `None` when it cannot be read (starting, dead, unreachable, or no such line).
async fn messages_in(server: &ServerInfo) -> Option<u64> {
    if server.state == ServerState::Dead {
        return None;
    }
    let url = metrics_url(&server.url)?;
    let http = HTTP.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(SCRAPE_TIMEOUT)
            .build()
            .unwrap_or_default()
    });
    let resp = http.get(url).send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let body = resp.bytes().await.ok()?;
    let text = std::str::from_utf8(body.get(..MAX_METRICS_BYTES.min(body.len()))?).ok()?;
    counter(text, MESSAGES_IN)
}

static HTTP: OnceLock<reqwest::Client> = OnceLock::new();

/// `ws://host:port/ws` → `http://host:port/metrics` (and `wss` → `https`).
pub fn metrics_url(ws_url: &str) -> Option<String> {
    let mut url = reqwest::Url::parse(ws_url).ok()?;
    let scheme = match url.scheme() {
        "ws" => "http",
        "wss" => "https",
        _ => return None,
    };
    url.set_scheme(scheme).ok()?;
    url.set_path("/metrics");
    url.set_query(None);
    Some(url.into())
}

/// The value of an unlabelled counter in Prometheus text.
pub fn counter(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
        let value = rest.split_whitespace().next()?;
        value.parse::<u64>().ok().or_else(|| {
            value
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map(|v| v as u64)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_sit_beside_the_websocket() {
        assert_eq!(
            metrics_url("ws://127.0.0.1:4100/ws").as_deref(),
            Some("http://127.0.0.1:4100/metrics")
        );
        assert_eq!(
            metrics_url("wss://s1.example/ws?x=1").as_deref(),
            Some("https://s1.example/metrics")
        );
        assert_eq!(metrics_url(""), None);
        assert_eq!(metrics_url("http://h/ws"), None);
    }

    #[test]
    fn counters_parse() {
        let text = "# HELP berth_session_messages_in_total x\n# TYPE berth_session_messages_in_total counter\nberth_session_messages_in_total_other 9\nberth_session_messages_in_total 42\n";
        assert_eq!(counter(text, MESSAGES_IN), Some(42));
        assert_eq!(
            counter("berth_session_messages_in_total 7.0\n", MESSAGES_IN),
            Some(7)
        );
        assert_eq!(counter("nothing 1\n", MESSAGES_IN), None);
    }
}
