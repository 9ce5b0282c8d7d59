//! The scheduler's internal API as the backend uses it: place, look up and list rooms, and
//! check that it is alive, on any of the scheduler's replicas. Every call carries the cluster
//! secret as a bearer token.

use std::sync::Arc;
use std::time::Duration;

use berth_protocol::cluster::{PlaceRoomRequest, Placement, RoomDirectory, ServerList};
use berth_protocol::{ErrorBody, ErrorCode};
use berth_runtime::failover::Endpoints;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

/// How long to wait for a TCP connection to the scheduler.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one call may take: room creation may wait for a session server to spawn.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// `/healthz` should answer at once.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// What went wrong talking to the scheduler.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// No answer: connection refused, timeout, broken connection.
    #[error("scheduler unreachable")]
    Unreachable(#[source] reqwest::Error),
    /// An error answer. `body` is `None` when it was not the usual error body.
    #[error("scheduler answered {status}")]
    Status {
        status: StatusCode,
        body: Option<ErrorBody>,
        retry_after: Option<u64>,
    },
    /// A success answer that did not parse.
    #[error("scheduler answer did not parse")]
    Decode(#[source] reqwest::Error),
}

/// A client of the scheduler's `/v1` API, over one replica or several (a comma-separated
/// `--scheduler-url`): a call moves on to the next replica when one cannot be reached or
/// answers 5xx (except `no_capacity`, the whole fleet's verdict). A create, which is not safe
/// to repeat, moves on only when no request reached the replica or it answered 5xx.
#[derive(Clone)]
pub struct SchedulerClient {
    http: reqwest::Client,
    endpoints: Arc<Endpoints>,
    secret: String,
}

impl std::fmt::Debug for SchedulerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerClient")
            .field("urls", &self.endpoints.urls())
            .finish_non_exhaustive()
    }
}

impl SchedulerClient {
    /// A client for the scheduler replicas `endpoints` (e.g. `http://127.0.0.1:7070`); `tls` is
    /// the trust for `https://` ones.
    pub fn new(
        endpoints: Endpoints,
        secret: String,
        tls: berth_runtime::tls::ClientConfig,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        Ok(SchedulerClient {
            http,
            endpoints: Arc::new(endpoints),
            secret,
        })
    }

    /// `POST /v1/rooms`: place a new room.
    pub async fn place_room(&self, req: &PlaceRoomRequest) -> Result<Placement, SchedulerError> {
        self.call(Method::POST, "/v1/rooms", &[], Some(req)).await
    }

    /// `GET /v1/rooms/{id}`: where a room lives (the caller validated the id).
    pub async fn lookup_room(&self, room_id: &str) -> Result<Placement, SchedulerError> {
        self.call(Method::GET, &format!("/v1/rooms/{room_id}"), &[], NO_BODY)
            .await
    }

    /// `GET /v1/rooms?public=true`: the public rooms.
    pub async fn public_rooms(&self) -> Result<RoomDirectory, SchedulerError> {
        self.call(Method::GET, "/v1/rooms", &[("public", "true")], NO_BODY)
            .await
    }

    /// `GET /v1/rooms`: every room in the directory (for the operator page).
    pub async fn all_rooms(&self) -> Result<RoomDirectory, SchedulerError> {
        self.call(Method::GET, "/v1/rooms", &[], NO_BODY).await
    }

    /// `GET /v1/servers`: the fleet (for the operator page).
    pub async fn servers(&self) -> Result<ServerList, SchedulerError> {
        self.call(Method::GET, "/v1/servers", &[], NO_BODY).await
    }

    /// Whether `candidate` is the cluster secret (compared in constant time).
    pub fn is_cluster_secret(&self, candidate: &str) -> bool {
        let (a, b) = (self.secret.as_bytes(), candidate.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// `GET /healthz` (no secret needed): whether a scheduler replica answers 2xx.
    pub async fn healthy(&self) -> Result<(), SchedulerError> {
        let mut last = None;
        for (i, base) in self.endpoints.order() {
            match self
                .http
                .get(format!("{base}/healthz"))
                .timeout(HEALTH_TIMEOUT)
                .send()
                .await
            {
                Ok(resp) if resp.status().is_success() => {
                    self.endpoints.answered(i);
                    return Ok(());
                }
                Ok(resp) => {
                    last = Some(SchedulerError::Status {
                        status: resp.status(),
                        body: None,
                        retry_after: None,
                    });
                }
                Err(e) => last = Some(SchedulerError::Unreachable(e)),
            }
        }
        Err(last.expect("at least one endpoint"))
    }

    /// Sends the call to the replicas in turn (see [`SchedulerClient`] for when it moves on).
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&(impl serde::Serialize + Sync)>,
    ) -> Result<T, SchedulerError> {
        let repeatable = method == Method::GET;
        let mut last = None;
        for (i, base) in self.endpoints.order() {
            let mut req = self
                .http
                .request(method.clone(), format!("{base}{path}"))
                .bearer_auth(&self.secret)
                .query(query);
            if let Some(body) = body {
                req = req.json(body);
            }
            let resp = match req.send().await {
                Ok(resp) => resp,
                // A request that may have reached the replica is not sent again unless repeatable.
                Err(e) if repeatable || e.is_connect() => {
                    tracing::warn!(scheduler = base, error = %e, "scheduler replica unreachable; trying the next");
                    last = Some(SchedulerError::Unreachable(e));
                    continue;
                }
                Err(e) => return Err(SchedulerError::Unreachable(e)),
            };
            match answer(resp).await {
                Err(SchedulerError::Status { status, body, .. })
                    if status.is_server_error()
                        && body
                            .as_ref()
                            .is_none_or(|b| b.error.code != ErrorCode::NoCapacity.as_str()) =>
                {
                    tracing::warn!(scheduler = base, %status, "scheduler replica failed; trying the next");
                    last = Some(SchedulerError::Status {
                        status,
                        body,
                        retry_after: None,
                    });
                }
                other => {
                    self.endpoints.answered(i);
                    return other;
                }
            }
        }
        Err(last.expect("at least one endpoint"))
    }
}

/// No request body.
const NO_BODY: Option<&()> = None;

/// A success answer parsed, or the error answer.
async fn answer<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T, SchedulerError> {
    let status = resp.status();
    if status.is_success() {
        return resp.json().await.map_err(SchedulerError::Decode);
    }
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    // A body that does not parse (or does not arrive) is reported as `None`.
    let body = resp
        .bytes()
        .await
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    Err(SchedulerError::Status {
        status,
        body,
        retry_after,
    })
}
