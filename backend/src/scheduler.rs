//! The scheduler's internal API as the backend uses it: place, look up and list rooms, and
//! check that it is alive. Every call carries the cluster secret as a bearer token.

use std::time::Duration;

use berth_protocol::ErrorBody;
use berth_protocol::cluster::{PlaceRoomRequest, Placement, RoomDirectory, ServerList};
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

/// A client of the scheduler's `/v1` API.
#[derive(Clone)]
pub struct SchedulerClient {
    http: reqwest::Client,
    base: String,
    secret: String,
}

impl std::fmt::Debug for SchedulerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl SchedulerClient {
    /// A client for the scheduler at `base_url` (e.g. `http://127.0.0.1:7070`).
    /// `tls` is the trust for an `https://` scheduler.
    pub fn new(
        base_url: &str,
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
            base: base_url.trim_end_matches('/').to_owned(),
            secret,
        })
    }

    /// `POST /v1/rooms`: place a new room.
    pub async fn place_room(&self, req: &PlaceRoomRequest) -> Result<Placement, SchedulerError> {
        self.call(self.request(Method::POST, "/v1/rooms").json(req))
            .await
    }

    /// `GET /v1/rooms/{id}`: where a room lives (the caller validated the id).
    pub async fn lookup_room(&self, room_id: &str) -> Result<Placement, SchedulerError> {
        self.call(self.request(Method::GET, &format!("/v1/rooms/{room_id}")))
            .await
    }

    /// `GET /v1/rooms?public=true`: the public rooms.
    pub async fn public_rooms(&self) -> Result<RoomDirectory, SchedulerError> {
        self.call(
            self.request(Method::GET, "/v1/rooms")
                .query(&[("public", "true")]),
        )
        .await
    }

    /// `GET /v1/rooms`: every room in the directory (for the operator page).
    pub async fn all_rooms(&self) -> Result<RoomDirectory, SchedulerError> {
        self.call(self.request(Method::GET, "/v1/rooms")).await
    }

    /// `GET /v1/servers`: the fleet (for the operator page).
    pub async fn servers(&self) -> Result<ServerList, SchedulerError> {
        self.call(self.request(Method::GET, "/v1/servers")).await
    }

    /// Whether `candidate` is the cluster secret (compared in constant time).
    pub fn is_cluster_secret(&self, candidate: &str) -> bool {
        let (a, b) = (self.secret.as_bytes(), candidate.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// `GET /healthz` (no secret needed): whether the scheduler answers 2xx.
    pub async fn healthy(&self) -> Result<(), SchedulerError> {
        let resp = self
            .http
            .get(format!("{}/healthz", self.base))
            .timeout(HEALTH_TIMEOUT)
            .send()
            .await
            .map_err(SchedulerError::Unreachable)?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(SchedulerError::Status {
                status: resp.status(),
                body: None,
                retry_after: None,
            })
        }
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.secret)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, SchedulerError> {
        let resp = req.send().await.map_err(SchedulerError::Unreachable)?;
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
}
