//! [`Backend`]: the client of the backend's public HTTP API (`/api/...`).

use std::time::Duration;

use berth_protocol::api::{
    AddMemberRequest, ChangePasswordRequest, CreateRoomRequest, DmRequest, DmTicket, LoginRequest,
    LoginResponse, MeResponse, MessagePage, MyRooms, RegisterRequest, RoomList, RoomTicket,
};
use reqwest::Url;
use serde::de::DeserializeOwned;

use crate::error::{ClientError, Result, retry_after};
use crate::tls::Tls;

/// How long to wait for a TCP connection to the backend.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one call may take (creating a room may wait for a session server to spawn).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A logged-in user: the user token the room calls need, and who it names.
#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    /// The user token (a JWT); send as `Authorization: Bearer`.
    pub token: String,
    pub user_id: String,
    pub username: String,
    /// A guest (a name without an account).
    pub guest: bool,
    /// When the token stops working (RFC 3339), if the backend said.
    pub expires_at: Option<String>,
}

impl From<LoginResponse> for Session {
    fn from(r: LoginResponse) -> Self {
        Session {
            token: r.token,
            user_id: r.user_id,
            username: r.username,
            guest: r.guest,
            expires_at: r.expires_at,
        }
    }
}

impl Session {
    /// A session from a user token obtained elsewhere (e.g. the application's own identity
    /// provider); who it names is known after [`Backend::me`].
    pub fn from_token(token: impl Into<String>) -> Session {
        Session {
            token: token.into(),
            user_id: String::new(),
            username: String::new(),
            guest: false,
            expires_at: None,
        }
    }
}

// The token stays out of `{:?}` so it cannot end up in a log line.
impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("user_id", &self.user_id)
            .field("username", &self.username)
            .field("guest", &self.guest)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A client of one backend (`http://host:port`). Cheap to clone; clones share connections.
#[derive(Clone, Debug)]
pub struct Backend {
    http: reqwest::Client,
    base: String,
    tls: Tls,
}

impl Backend {
    /// A client of the backend at `base_url`, e.g. `http://127.0.0.1:8080` (a trailing `/` is
    /// fine). The URL is checked on the first call.
    pub fn new(base_url: impl Into<String>) -> Backend {
        Backend::with_tls(base_url, &Tls::default())
    }

    /// Like [`Backend::new`], trusting `tls` on `https://` (and on the `wss://` URLs of the
    /// rooms entered through it, see [`Backend::tls`]).
    pub fn with_tls(base_url: impl Into<String>, tls: &Tls) -> Backend {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls.client_config()).clone())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            // Building fails only when the TLS backend cannot start, and ours is preconfigured.
            .unwrap_or_default();
        let mut backend = Backend::with_client(base_url, http);
        backend.tls = tls.clone();
        backend
    }

    /// Like [`Backend::new`] with a caller-made `reqwest::Client` (own timeouts, pool sizes).
    pub fn with_client(base_url: impl Into<String>, http: reqwest::Client) -> Backend {
        let base = base_url.into().trim_end_matches('/').to_owned();
        Backend {
            http,
            base,
            tls: Tls::default(),
        }
    }

    /// Whom this client trusts; [`crate::Room`] opens its `wss://` connections with it.
    pub fn tls(&self) -> &Tls {
        &self.tls
    }

    /// The base URL calls go to (without a trailing `/`).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `POST /api/login` without a password: a guest [`Session`] for `username` (1–32 letters,
    /// digits, `_`, `-`; otherwise `invalid_username`). `password_required` when the name
    /// belongs to an account, `guests_disabled` when the backend takes no guests.
    pub async fn login(&self, username: &str) -> Result<Session> {
        self.sign_in(username, None).await
    }

    /// `POST /api/login` with a password: the account's [`Session`]. `invalid_credentials`
    /// (401) for a wrong password or an unknown name, `rate_limited` (429, with
    /// [`ClientError::retry_after`]) after repeated failures.
    pub async fn login_with_password(&self, username: &str, password: &str) -> Result<Session> {
        self.sign_in(username, Some(password)).await
    }

    async fn sign_in(&self, username: &str, password: Option<&str>) -> Result<Session> {
        let req = self
            .http
            .post(self.url(&["api", "login"])?)
            .json(&LoginRequest {
                username: username.to_owned(),
                password: password.map(str::to_owned),
            });
        let resp: LoginResponse = call(req, "login answer").await?;
        Ok(resp.into())
    }

    /// `POST /api/register`: creates an account and signs it in. `invalid_username`,
    /// `weak_password` (8–256 characters), `username_taken` (names compare case-insensitively).
    pub async fn register(&self, username: &str, password: &str) -> Result<Session> {
        let req = self
            .http
            .post(self.url(&["api", "register"])?)
            .json(&RegisterRequest {
                username: username.to_owned(),
                password: password.to_owned(),
            });
        let resp: LoginResponse = call(req, "register answer").await?;
        Ok(resp.into())
    }

    /// `GET /api/me`: who `session`'s token names (`unauthorized` when it no longer works).
    pub async fn me(&self, session: &Session) -> Result<MeResponse> {
        let req = self
            .http
            .get(self.url(&["api", "me"])?)
            .bearer_auth(&session.token);
        call(req, "me answer").await
    }

    /// `POST /api/token/refresh`: a new session with a fresh expiry for a still valid one.
    pub async fn refresh(&self, session: &Session) -> Result<Session> {
        let req = self
            .http
            .post(self.url(&["api", "token", "refresh"])?)
            .bearer_auth(&session.token);
        let resp: LoginResponse = call(req, "refresh answer").await?;
        Ok(resp.into())
    }

    /// `POST /api/me/password`: changes the account's password. Tokens issued before stop
    /// working; the answer is the new session.
    pub async fn change_password(
        &self,
        session: &Session,
        old_password: &str,
        new_password: &str,
    ) -> Result<Session> {
        let req = self
            .http
            .post(self.url(&["api", "me", "password"])?)
            .bearer_auth(&session.token)
            .json(&ChangePasswordRequest {
                old_password: old_password.to_owned(),
                new_password: new_password.to_owned(),
            });
        let resp: LoginResponse = call(req, "password change answer").await?;
        Ok(resp.into())
    }

    /// `POST /api/rooms`: a new room and a ticket into it. Watch for `no_capacity` (503) and
    /// `rate_limited` (429), both with [`ClientError::retry_after`].
    pub async fn create_room(
        &self,
        session: &Session,
        req: &CreateRoomRequest,
    ) -> Result<RoomTicket> {
        let req = self
            .http
            .post(self.url(&["api", "rooms"])?)
            .bearer_auth(&session.token)
            .json(req);
        call(req, "room ticket").await
    }

    /// `GET /api/rooms/{roomId}`: where the room lives and a fresh ticket into it;
    /// `room_not_found` (404) when it does not exist.
    pub async fn lookup_room(&self, session: &Session, room_id: &str) -> Result<RoomTicket> {
        let req = self
            .http
            .get(self.url(&["api", "rooms", room_id])?)
            .bearer_auth(&session.token);
        call(req, "room ticket").await
    }

    /// `GET /api/rooms/{roomId}/messages`: stored history, oldest first, the `limit` (1–200;
    /// `None`: 50) messages just before `before` (`None`: the newest). Page back with `before` =
    /// the first message's `seq` while `has_more`.
    pub async fn messages(
        &self,
        session: &Session,
        room_id: &str,
        before: Option<u64>,
        limit: Option<usize>,
    ) -> Result<MessagePage> {
        let mut url = self.url(&["api", "rooms", room_id, "messages"])?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(before) = before {
                query.append_pair("before", &before.to_string());
            }
            if let Some(limit) = limit {
                query.append_pair("limit", &limit.to_string());
            }
        }
        let req = self.http.get(url).bearer_auth(&session.token);
        call(req, "message page").await
    }

    /// `POST /api/dms`: the direct-message room of this account and `username` (the same room
    /// whichever of the two asks) and a ticket into it; `user_not_found` (404).
    pub async fn open_dm(&self, session: &Session, username: &str) -> Result<DmTicket> {
        let req = self
            .http
            .post(self.url(&["api", "dms"])?)
            .bearer_auth(&session.token)
            .json(&DmRequest {
                username: username.to_owned(),
            });
        call(req, "direct-message ticket").await
    }

    /// `POST /api/rooms/{roomId}/members`: adds the account `username` to a private room this
    /// user belongs to; `not_a_member` (403), `user_not_found` (404).
    pub async fn add_member(&self, session: &Session, room_id: &str, username: &str) -> Result<()> {
        let req = self
            .http
            .post(self.url(&["api", "rooms", room_id, "members"])?)
            .bearer_auth(&session.token)
            .json(&AddMemberRequest {
                username: username.to_owned(),
            });
        let resp = req.send().await?;
        check(resp).await.map(drop)
    }

    /// `GET /api/me/rooms`: this user's rooms with unread counts, most recent activity first.
    pub async fn my_rooms(&self, session: &Session) -> Result<MyRooms> {
        let req = self
            .http
            .get(self.url(&["api", "me", "rooms"])?)
            .bearer_auth(&session.token);
        call(req, "my rooms").await
    }

    /// `GET /api/rooms`: the public rooms (no login needed).
    pub async fn list_rooms(&self) -> Result<RoomList> {
        call(self.http.get(self.url(&["api", "rooms"])?), "room list").await
    }

    /// `GET /healthz`: `Ok` when the backend answers 200 (it then reaches its scheduler).
    pub async fn healthz(&self) -> Result<()> {
        let resp = self.http.get(self.url(&["healthz"])?).send().await?;
        check(resp).await.map(drop)
    }

    /// `base` + the path segments, each percent-encoded (a room id cannot escape its segment).
    fn url(&self, segments: &[&str]) -> Result<Url> {
        let mut url = Url::parse(&self.base)
            .map_err(|e| ClientError::InvalidUrl(format!("{}: {e}", self.base)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ClientError::InvalidUrl(format!(
                "{}: not an http(s) URL",
                self.base
            )));
        }
        url.path_segments_mut()
            .map_err(|()| ClientError::InvalidUrl(format!("{}: cannot be a base", self.base)))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }
}

/// Sends `req`; a 2xx answer is parsed as `T`, anything else becomes [`ClientError::Api`].
async fn call<T: DeserializeOwned>(req: reqwest::RequestBuilder, what: &'static str) -> Result<T> {
    let resp = check(req.send().await?).await?;
    let bytes = resp.bytes().await?;
    serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode { what, source })
}

async fn check(resp: reqwest::Response) -> Result<reqwest::Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let retry = retry_after(resp.headers());
    let body = resp.bytes().await.unwrap_or_default();
    Err(ClientError::from_http_answer(status.as_u16(), retry, &body))
}
