//! Errors: [`ApiError`], the one error answer of every handler, and [`Error`], why the service
//! could not start or stopped.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_protocol::{ErrorBody, ErrorCode};

use crate::keys::KeyError;
use crate::scheduler::SchedulerError;

/// Why [`crate::serve`] failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ticket key")]
    Keys(#[from] KeyError),
    #[error("cluster secret")]
    ClusterSecret(#[from] berth_runtime::SecretError),
    #[error("building the HTTP client")]
    HttpClient(#[source] reqwest::Error),
    #[error("invalid --scheduler-url {0:?}")]
    SchedulerUrl(String),
    #[error("serving HTTP")]
    Serve(#[source] std::io::Error),
    #[error("opening the message store: {0}")]
    Store(#[source] berth_store::StoreError),
    #[error("accounts")]
    Accounts(#[from] crate::accounts::AccountsError),
}

/// An error answer: status, the public code and message of `ErrorBody`, and an internal cause
/// that is logged but never sent.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: String,
    message: String,
    retry_after: Option<u64>,
    cause: Option<String>,
}

impl ApiError {
    /// An answer with one of our own codes.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.as_str().to_owned(),
            message: message.into(),
            retry_after: None,
            cause: None,
        }
    }

    /// Attaches the internal cause to log (never sent to the client).
    pub fn with_cause(mut self, cause: impl std::fmt::Display) -> Self {
        self.cause = Some(cause.to_string());
        self
    }

    /// Adds a `Retry-After` header (seconds) to the answer.
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
    }

    /// 400 `invalid_request`.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, message)
    }

    /// 404 `room_not_found`.
    pub fn room_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorCode::RoomNotFound,
            "no such room",
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

    /// The public error code of the answer.
    pub fn code(&self) -> &str {
        &self.code
    }
}

impl From<SchedulerError> for ApiError {
    /// Unreachable → 503 `scheduler_unavailable`. A 4xx or 503 error body passes through with its
    /// status (and `Retry-After`), except 401/403, which mean our cluster secret is wrong: a
    /// configuration fault, not the caller's. Anything else → 502 with a sanitised message.
    fn from(err: SchedulerError) -> Self {
        match err {
            SchedulerError::Unreachable(source) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::SchedulerUnavailable,
                "the scheduler is unavailable, try again shortly",
            )
            .with_cause(format!("scheduler unreachable: {}", chain(&source))),
            SchedulerError::Status {
                status,
                body,
                retry_after,
            } => {
                let passes = (status.is_client_error()
                    && status != StatusCode::UNAUTHORIZED
                    && status != StatusCode::FORBIDDEN)
                    || status == StatusCode::SERVICE_UNAVAILABLE;
                match body {
                    Some(body) if passes => ApiError {
                        status,
                        code: body.error.code,
                        message: body.error.message,
                        retry_after,
                        cause: Some(format!("scheduler answered {status}")),
                    },
                    Some(body)
                        if status == StatusCode::UNAUTHORIZED
                            || status == StatusCode::FORBIDDEN =>
                    {
                        Self::internal(format!(
                            "scheduler refused the cluster secret ({status} {}): check BERTH_CLUSTER_SECRET",
                            body.error.code
                        ))
                    }
                    body => Self::new(
                        StatusCode::BAD_GATEWAY,
                        ErrorCode::Internal,
                        "the scheduler failed",
                    )
                    .with_cause(format!(
                        "scheduler answered {status} ({})",
                        body.map(|b| b.error.code).unwrap_or_default()
                    )),
                }
            }
            SchedulerError::Decode(source) => Self::new(
                StatusCode::BAD_GATEWAY,
                ErrorCode::Internal,
                "the scheduler failed",
            )
            .with_cause(format!(
                "scheduler answer did not parse: {}",
                chain(&source)
            )),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let cause = self.cause.as_deref().unwrap_or("");
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), code = %self.code, cause, "request failed");
        } else {
            tracing::debug!(status = self.status.as_u16(), code = %self.code, cause, "request refused");
        }
        let body = ErrorBody {
            error: berth_protocol::error::ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// An error and its sources on one line, for logs.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}
