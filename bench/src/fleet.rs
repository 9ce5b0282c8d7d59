//! How many session servers a run needed, read from the scheduler's `GET /v1/servers`.

use std::time::Duration;

use berth_protocol::cluster::{ServerList, ServerState};

use super::options::Fleet;
use berth::ClientError;
use berth::error::retry_after;

/// Session servers the scheduler knows and that are not dead (starting, ready or draining).
/// `fleet.scheduler_url` may list several replicas (comma-separated): the first that answers
/// is asked.
pub(crate) async fn server_count(
    http: &reqwest::Client,
    fleet: &Fleet,
) -> Result<u32, ClientError> {
    let mut last = None;
    for base in fleet
        .scheduler_url
        .split(',')
        .map(|u| u.trim().trim_end_matches('/'))
        .filter(|u| !u.is_empty())
    {
        match count_at(http, base, &fleet.secret).await {
            Ok(n) => return Ok(n),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| ClientError::InvalidUrl("no scheduler URL given".into())))
}

async fn count_at(http: &reqwest::Client, base: &str, secret: &str) -> Result<u32, ClientError> {
    let resp = http
        .get(format!("{base}/v1/servers"))
        .bearer_auth(secret)
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
