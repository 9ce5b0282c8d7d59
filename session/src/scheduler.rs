//! HTTP client of the scheduler's internal API (`/v1/...`), as a session server uses it.
//! Every call carries a bearer credential: this server's own (spawned servers get it at start,
//! others in their first registration answer) or, until then, the cluster secret. Never logged.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use berth_protocol::cluster::{
    Heartbeat, HeartbeatAck, Placement, RegisterServer, Registered, ReleaseRoom,
};
use berth_runtime::failover::Endpoints;
use reqwest::StatusCode;

/// Bound on every call to one replica, so that a hung scheduler never hangs a drain or a join.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on connecting to one replica: a replica whose host is gone costs at most this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a scheduler call failed.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("scheduler unreachable: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("scheduler answered {0}")]
    Status(StatusCode),
    #[error("invalid --scheduler-url: {0}")]
    Url(String),
    /// 404 to a heartbeat: the scheduler forgot this server; register again.
    #[error("scheduler does not know this server")]
    UnknownServer,
}

/// The scheduler, seen from a session server: one replica or several (a comma-separated
/// `--scheduler-url`). Every call it makes is safe to repeat, so a call moves on to the next
/// replica when one cannot be reached, times out or answers 5xx.
#[derive(Clone)]
pub struct SchedulerClient {
    http: reqwest::Client,
    endpoints: Arc<Endpoints>,
    /// `Bearer <credential>`; replaced once by the server's own credential.
    bearer: Arc<RwLock<String>>,
}

impl SchedulerClient {
    /// A client of the scheduler replicas `base_urls` (comma-separated); `tls` is the trust for
    /// `https://` ones.
    pub fn new(
        base_urls: &str,
        secret: &str,
        tls: berth_runtime::tls::ClientConfig,
    ) -> Result<Self, SchedulerError> {
        let endpoints = Endpoints::parse(base_urls).map_err(SchedulerError::Url)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        Ok(SchedulerClient {
            http,
            endpoints: Arc::new(endpoints),
            bearer: Arc::new(RwLock::new(format!("Bearer {secret}"))),
        })
    }

    /// From now on, call with this server's own credential (handed out at registration).
    pub fn use_credential(&self, credential: &str) {
        *self.bearer.write().unwrap_or_else(|e| e.into_inner()) = format!("Bearer {credential}");
    }

    /// Sends `method path` (with `body`) to the replicas in turn; the first answer that is not
    /// a 5xx wins. Otherwise the last failure.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&(impl serde::Serialize + Sync)>,
    ) -> Result<reqwest::Response, SchedulerError> {
        let bearer = self
            .bearer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut last = None;
        for (i, base) in self.endpoints.order() {
            let mut req = self
                .http
                .request(method.clone(), format!("{base}{path}"))
                .header(reqwest::header::AUTHORIZATION, &bearer);
            if let Some(body) = body {
                req = req.json(body);
            }
            match req.send().await {
                Ok(resp) if !resp.status().is_server_error() => {
                    self.endpoints.answered(i);
                    return Ok(resp);
                }
                Ok(resp) => {
                    tracing::debug!(scheduler = base, status = %resp.status(), "scheduler replica failed; trying the next");
                    last = Some(SchedulerError::Status(resp.status()));
                }
                Err(e) => {
                    tracing::debug!(scheduler = base, error = %e, "scheduler replica unreachable; trying the next");
                    last = Some(SchedulerError::Transport(e));
                }
            }
        }
        Err(last.expect("at least one endpoint"))
    }

    /// `POST /v1/servers`.
    pub async fn register(&self, body: &RegisterServer) -> Result<Registered, SchedulerError> {
        let resp = self
            .send(reqwest::Method::POST, "/v1/servers", Some(body))
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
        let resp = self.send(reqwest::Method::PUT, &path, Some(body)).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(SchedulerError::UnknownServer);
        }
        ok(resp)?.json().await.map_err(Into::into)
    }

    /// `GET /v1/rooms/{id}`: `None` when the scheduler does not know the room.
    pub async fn placement(&self, room_id: &str) -> Result<Option<Placement>, SchedulerError> {
        let resp = self
            .send(
                reqwest::Method::GET,
                &format!("/v1/rooms/{room_id}"),
                NO_BODY,
            )
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(ok(resp)?.json().await?))
    }

    /// `POST /v1/rooms/{id}/release`.
    pub async fn release(&self, room_id: &str, body: &ReleaseRoom) -> Result<(), SchedulerError> {
        let path = format!("/v1/rooms/{room_id}/release");
        let resp = self.send(reqwest::Method::POST, &path, Some(body)).await?;
        ok(resp).map(drop)
    }

    /// `DELETE /v1/servers/{id}`.
    pub async fn deregister(&self, server_id: &str) -> Result<(), SchedulerError> {
        let resp = self
            .send(
                reqwest::Method::DELETE,
                &format!("/v1/servers/{server_id}"),
                NO_BODY,
            )
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(()); // already forgotten: same outcome
        }
        ok(resp).map(drop)
    }
}

/// No request body.
const NO_BODY: Option<&()> = None;

fn ok(resp: reqwest::Response) -> Result<reqwest::Response, SchedulerError> {
    if resp.status().is_success() {
        Ok(resp)
    } else {
        Err(SchedulerError::Status(resp.status()))
    }
}
