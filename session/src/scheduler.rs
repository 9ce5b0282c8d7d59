//! HTTP client of the scheduler's internal API (`/v1/...`), as a session server uses it.
//! Every call carries a bearer credential: this server's own (spawned servers get it at start,
//! others in their first registration answer) or, until then, the cluster secret. Never logged.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use berth_protocol::cluster::{
    Heartbeat, HeartbeatAck, Placement, RegisterServer, Registered, ReleaseRoom,
};
use reqwest::StatusCode;

/// Bound on every call, so that a hung scheduler never hangs a drain or a join.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a scheduler call failed.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("scheduler unreachable: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("scheduler answered {0}")]
    Status(StatusCode),
    /// 404 to a heartbeat: the scheduler forgot this server; register again.
    #[error("scheduler does not know this server")]
    UnknownServer,
}

/// The scheduler, seen from a session server.
#[derive(Clone)]
pub struct SchedulerClient {
    http: reqwest::Client,
    base: String,
    /// `Bearer <credential>`; replaced once by the server's own credential.
    bearer: Arc<RwLock<String>>,
}

impl SchedulerClient {
    /// A client of the scheduler at `base_url`; `tls` is the trust for an `https://` one.
    pub fn new(
        base_url: &str,
        secret: &str,
        tls: berth_runtime::tls::ClientConfig,
    ) -> Result<Self, SchedulerError> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        Ok(SchedulerClient {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
            bearer: Arc::new(RwLock::new(format!("Bearer {secret}"))),
        })
    }

    /// From now on, call with this server's own credential (handed out at registration).
    pub fn use_credential(&self, credential: &str) {
        *self.bearer.write().unwrap_or_else(|e| e.into_inner()) = format!("Bearer {credential}");
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let bearer = self
            .bearer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.http
            .request(method, format!("{}{path}", self.base))
            .header(reqwest::header::AUTHORIZATION, bearer)
    }

    /// `POST /v1/servers`.
    pub async fn register(&self, body: &RegisterServer) -> Result<Registered, SchedulerError> {
        let resp = self
            .request(reqwest::Method::POST, "/v1/servers")
            .json(body)
            .send()
            .await?;
        ok(resp)?.json().await.map_err(Into::into)
    }

    /// `PUT /v1/servers/{id}/heartbeat`.
    pub async fn heartbeat(
        &self,
        server_id: &str,
        body: &Heartbeat,
    ) -> Result<HeartbeatAck, SchedulerError> {
        let path = format!("/v1/servers/{server_id}/heartbeat");
        let resp = self
            .request(reqwest::Method::PUT, &path)
            .json(body)
            .send()
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(SchedulerError::UnknownServer);
        }
        ok(resp)?.json().await.map_err(Into::into)
    }

    /// `GET /v1/rooms/{id}`: `None` when the scheduler does not know the room.
    pub async fn placement(&self, room_id: &str) -> Result<Option<Placement>, SchedulerError> {
        let resp = self
            .request(reqwest::Method::GET, &format!("/v1/rooms/{room_id}"))
            .send()
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(ok(resp)?.json().await?))
    }

    /// `POST /v1/rooms/{id}/release`.
    pub async fn release(&self, room_id: &str, body: &ReleaseRoom) -> Result<(), SchedulerError> {
        let path = format!("/v1/rooms/{room_id}/release");
        let resp = self
            .request(reqwest::Method::POST, &path)
            .json(body)
            .send()
            .await?;
        ok(resp).map(drop)
    }

    /// `DELETE /v1/servers/{id}`.
    pub async fn deregister(&self, server_id: &str) -> Result<(), SchedulerError> {
        let resp = self
            .request(reqwest::Method::DELETE, &format!("/v1/servers/{server_id}"))
            .send()
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(()); // already forgotten: same outcome
        }
        ok(resp).map(drop)
    }
}

fn ok(resp: reqwest::Response) -> Result<reqwest::Response, SchedulerError> {
    if resp.status().is_success() {
        Ok(resp)
    } else {
        Err(SchedulerError::Status(resp.status()))
    }
}
