//! The one error answer of every Berth HTTP service, and the extractors that produce it.
//!
//! [`ApiError`] is what handlers of the backend, the scheduler and the session servers return
//! when they refuse a request: it becomes the body `{"error":{"code","message"}}` of
//! `berth_protocol::ErrorBody`, with `Retry-After` when the caller may try again, and it carries
//! an internal cause that is logged but never sent. The extractors ([`Json`], [`JsonOrDefault`],
//! [`Query`], [`RoomId`], [`ClusterRoomId`], [`ServerId`]) turn axum's rejections into it, in the
//! style of axum's `error-handling` example, so that handlers never check those by hand.
//!
//! It lives here rather than in `berth-protocol` so that the protocol crate, which clients use,
//! stays free of axum and of server concerns; every service already depends on this crate.

use std::borrow::Cow;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_protocol::error::{ErrorBody, ErrorCode, ErrorDetail};
use berth_protocol::ids;
use serde::de::DeserializeOwned;

/// A refused or failed request: status, public code and message, and an internal cause that is
/// logged (at debug for a 4xx, warn for a 5xx) and never sent.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    /// A string so that codes passed through from another service survive even when unknown.
    code: Cow<'static, str>,
    message: String,
    retry_after: Option<u64>,
    cause: Option<String>,
}

impl ApiError {
    /// An answer with one of our own codes.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: Cow::Borrowed(code.as_str()),
            message: message.into(),
            retry_after: None,
            cause: None,
        }
    }

    /// Passes on an error answer of another Berth service (its code may be newer than ours).
    pub fn relayed(status: StatusCode, body: ErrorBody) -> Self {
        ApiError {
            status,
            code: Cow::Owned(body.error.code),
            message: body.error.message,
            retry_after: None,
            cause: None,
        }
    }

    /// Attaches the internal cause to log (never sent to the client).
    pub fn with_cause(mut self, cause: impl std::fmt::Display) -> Self {
        self.cause = Some(cause.to_string());
        self
    }

    /// Adds `Retry-After: secs` (at least 1).
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }

    /// Sets or clears `Retry-After` as given.
    pub fn with_retry_after(mut self, secs: Option<u64>) -> Self {
        self.retry_after = secs;
        self
    }

    /// 400 `invalid_request`.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, message)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
    }

    /// 404 `room_not_found`.
    pub fn room_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorCode::RoomNotFound,
            "no such room",
        )
    }

    /// 404 `not_found`: no such endpoint.
    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no such endpoint",
        )
    }

    /// 405 `method_not_allowed`.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::MethodNotAllowed,
            "method not allowed",
        )
    }

    /// 413 `payload_too_large`.
    pub fn payload_too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            "request body too large",
        )
    }

    /// 500 `internal`, with the cause logged.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "internal error",
        )
        .with_cause(cause)
    }

    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The public error code, as sent.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The public code when it is one of ours (for metrics by code).
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::parse(&self.code)
    }

    /// The public message, as sent.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Some(cause) = &self.cause {
            if self.status.is_server_error() {
                tracing::warn!(status = self.status.as_u16(), code = %self.code, cause, "request failed");
            } else {
                tracing::debug!(status = self.status.as_u16(), code = %self.code, cause, "request refused");
            }
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.into_owned(),
                message: self.message,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::payload_too_large()
        } else {
            ApiError::new(
                status,
                ErrorCode::InvalidRequest,
                "could not read the request body",
            )
            .with_cause(rejection.body_text())
        }
    }
}

/// Fallback handler for unknown paths: 404 `not_found`.
pub async fn not_found() -> ApiError {
    ApiError::not_found()
}

/// Fallback handler for known paths with the wrong method: 405 `method_not_allowed`.
pub async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// A JSON body, read whatever its `Content-Type` (callers are scripts as often as browsers),
/// within the router's body limit: 413 `payload_too_large` past it, 400 `invalid_request` when
/// it does not parse.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let body = Bytes::from_request(req, state).await?;
        parse_json(&body).map(Json)
    }
}

/// Like [`Json`], but an empty (or blank) body means `T::default()`: for calls whose body is
/// optional.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonOrDefault<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for JsonOrDefault<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let body = Bytes::from_request(req, state).await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonOrDefault(T::default()));
        }
        parse_json(&body).map(JsonOrDefault)
    }
}

fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_request(format!("invalid JSON body: {e}")))
}

/// A query string; one that does not parse is 400 `invalid_request`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(q)| Query(q))
            .map_err(|r| ApiError::invalid_request(r.body_text()))
    }
}

/// The one id segment of a path such as `/rooms/{id}`, or `None` when it does not decode.
async fn path_id<S: Send + Sync>(parts: &mut Parts, state: &S) -> Option<String> {
    axum::extract::Path::<String>::from_request_parts(parts, state)
        .await
        .ok()
        .map(|axum::extract::Path(id)| id)
}

/// A room id from a public path (`/api/rooms/{roomId}`): anything that is not a valid room id
/// names no room, so it is 404 `room_not_found`, and it never reaches the scheduler or a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RoomId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match path_id(parts, state).await {
            Some(id) if ids::is_valid_room_id(&id) => Ok(RoomId(id)),
            _ => Err(ApiError::room_not_found()),
        }
    }
}

/// A room id from the scheduler's internal API (`/v1/rooms/{id}`): a malformed one is the
/// caller's bug, 400 `invalid_request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRoomId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClusterRoomId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match path_id(parts, state).await {
            Some(id) if ids::is_valid_room_id(&id) => Ok(ClusterRoomId(id)),
            _ => Err(ApiError::invalid_request("invalid room id")),
        }
    }
}

/// A session-server id from a path (`/v1/servers/{id}`): 400 `invalid_request` when malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ServerId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match path_id(parts, state).await {
            Some(id) if ids::is_valid_server_id(&id) => Ok(ServerId(id)),
            _ => Err(ApiError::invalid_request("invalid server id")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::extract::DefaultBodyLimit;
    use axum::routing::{get, post};
    use tower::ServiceExt as _;

    async fn answer(router: Router, request: axum::http::Request<Body>) -> (StatusCode, String) {
        let response = router.oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: ErrorBody = serde_json::from_slice(&body).unwrap();
        (status, body.error.code)
    }

    fn router() -> Router {
        Router::new()
            .route(
                "/echo",
                post(|Json(v): Json<serde_json::Value>| async move { axum::Json(v) }),
            )
            .route("/rooms/{id}", get(|RoomId(id): RoomId| async move { id }))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(DefaultBodyLimit::max(16))
    }

    fn request(method: &str, uri: &str, body: &str) -> axum::http::Request<Body> {
        axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body.to_owned()))
            .unwrap()
    }

    #[tokio::test]
    async fn rejections_become_the_error_body() {
        let cases = [
            (request("POST", "/echo", "{nope"), 400, "invalid_request"),
            (
                request("POST", "/echo", &"1".repeat(64)),
                413,
                "payload_too_large",
            ),
            (request("GET", "/echo", ""), 405, "method_not_allowed"),
            (request("GET", "/nowhere", ""), 404, "not_found"),
            (request("GET", "/rooms/bad%20id", ""), 404, "room_not_found"),
        ];
        for (req, status, code) in cases {
            let uri = req.uri().clone();
            assert_eq!(
                answer(router(), req).await,
                (StatusCode::from_u16(status).unwrap(), code.to_owned()),
                "{uri}"
            );
        }
    }

    #[test]
    fn the_cause_is_never_sent() {
        let response = ApiError::internal("db password=hunter2").into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let shown = format!("{:?}", response.headers());
        assert!(!shown.contains("hunter2"));
    }
}
