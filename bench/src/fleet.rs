//! How many session servers a run needed, read from the scheduler's `GET /v1/servers`.

use std::time::Duration;

use berth_protocol::cluster::{ServerList, ServerState};

use super::options::Fleet;
use berth::ClientError;
use berth::error::retry_after;

/// Session servers the scheduler knows and that are not dead (starting, ready or draining).
pub(crate) async fn server_count(
    http: &reqwest::Client,
    fleet: &Fleet,
) -> Result<u32, ClientError> {
    let url = format!("{}/v1/servers", fleet.scheduler_url.trim_end_matches('/'));
    let resp = http
        .get(url)
        .bearer_auth(&fleet.secret)
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    let status = resp.status();
    if !status.is_success() {
        let retry = retry_after(resp.headers());
        let body = resp.bytes().await.unwrap_or_default();
        return Err(ClientError::from_http_answer(status.as_u16(), retry, &body));
    }
    let bytes = resp.bytes().await?;
    let list: ServerList =
        serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode {
            what: "server list",
            source,
        })?;
    Ok(list
        .servers
        .iter()
        .filter(|s| s.state != ServerState::Dead)
        .count() as u32)
}
