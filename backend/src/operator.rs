//! The operator page's data: `GET /api/operator/fleet`, behind the cluster secret (bearer).
//!
//! It answers the scheduler's fleet (`/v1/servers`) and room directory (`/v1/rooms`) in one
//! call, adding each session server's `berth_session_messages_in_total` read from `/metrics` on
//! its operator listener (the `adminUrl` it registered: `/metrics` is never on the public
//! port), so that the page (`/operator`) can draw messages per second. A server without an
//! operator listener (started by hand without `--admin-listen`) shows no rate (`null`). The cluster secret
//! never leaves the operator's browser tab except as this request's bearer.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use berth_protocol::ErrorBody;
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
#[derive(Debug, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetServer {
    #[serde(flatten)]
    pub info: ServerInfo,
    /// Chat messages it accepted since it started; `null` when its metrics could not be read
    /// (no operator listener, starting, dead, unreachable).
    pub messages_in: Option<u64>,
}

/// `GET /api/operator/fleet`: 401 `unauthorized` without the cluster secret as bearer.
#[utoipa::path(get, path = "/api/operator/fleet", tag = "operations",
    security(("cluster_secret" = [])),
    responses(
        (status = 200, description = "The fleet, its rooms and message counters", body = Fleet),
        (status = 401, description = "`unauthorized`: the cluster secret is needed", body = ErrorBody),
        (status = 429, description = "`rate_limited` (with `Retry-After`)", body = ErrorBody),
        (status = 503, description = "`scheduler_unavailable`", body = ErrorBody),
        (status = 502, description = "`internal`: the scheduler answered oddly", body = ErrorBody),
    ))]
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
    let counts = join_all(servers.iter().map(|s| messages_in(state.sessions(), s))).await;
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

/// A server's `berth_session_messages_in_total`, read from `/metrics` on its operator
/// listener; `None` when it cannot be read (no operator listener, starting, dead, unreachable,
/// or no such line).
async fn messages_in(http: &reqwest::Client, server: &ServerInfo) -> Option<u64> {
    if server.state == ServerState::Dead {
        return None;
    }
    let url = metrics_url(server.admin_url.as_deref()?)?;
    let resp = http.get(url).timeout(SCRAPE_TIMEOUT).send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let body = resp.bytes().await.ok()?;
    let text = std::str::from_utf8(body.get(..MAX_METRICS_BYTES.min(body.len()))?).ok()?;
    counter(text, MESSAGES_IN)
}

/// `http://host:port` (an operator listener's `adminUrl`) → `http://host:port/metrics`.
pub fn metrics_url(admin_url: &str) -> Option<String> {
    let mut url = reqwest::Url::parse(admin_url).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
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
    fn metrics_are_read_on_the_operator_listener() {
        assert_eq!(
            metrics_url("http://127.0.0.1:4101").as_deref(),
            Some("http://127.0.0.1:4101/metrics")
        );
        assert_eq!(
            metrics_url("https://s1.internal:9100/x?y=1").as_deref(),
            Some("https://s1.internal:9100/metrics")
        );
        assert_eq!(metrics_url(""), None);
        assert_eq!(metrics_url("ws://h/ws"), None);
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
