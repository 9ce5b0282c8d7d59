//! Errors: [`Error`] for starting and running the scheduler, [`ApiError`] for HTTP answers (always
//! the JSON [`ErrorBody`] of `berth_protocol`, with a code from [`ErrorCode`]).

use std::path::PathBuf;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_protocol::{ErrorBody, ErrorCode};

/// Why [`crate::serve`] could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read or create the cluster secret at {}", path.display())]
    Secret {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the cluster secret is empty")]
    EmptySecret,
    #[error("cannot read the listener's bound address")]
    LocalAddr(#[source] std::io::Error),
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
    #[error("cannot open the room store: {0}")]
    Store(#[source] berth_store::StoreError),
}

/// An error answer of the HTTP API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or wrong cluster secret")]
    Unauthorized,
    /// A session server's credential used for something only operators (and the backend) may
    /// do, or for another server.
    #[error("this credential may not {0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    InvalidRequest(String),
    /// An extractor refused the request (body too large, bad query string, ...).
    #[error("{message}")]
    Rejected { status: StatusCode, message: String },
    #[error("room not found")]
    RoomNotFound,
    #[error("unknown session server")]
    UnknownServer,
    #[error("no such endpoint")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{message}")]
    NoCapacity {
        message: String,
        retry_after_secs: u64,
    },
    #[error("too many room creates, retry in {retry_after_secs}s")]
    RateLimited { retry_after_secs: u64 },
    #[error("the scheduler is shutting down")]
    ShuttingDown,
    #[error("the room store is unavailable")]
    StoreUnavailable,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, ErrorCode) {
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, ErrorCode::Forbidden),
            ApiError::InvalidRequest(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest),
            ApiError::Rejected { status, .. } => (*status, ErrorCode::InvalidRequest),
            ApiError::RoomNotFound => (StatusCode::NOT_FOUND, ErrorCode::RoomNotFound),
            ApiError::UnknownServer => (StatusCode::NOT_FOUND, ErrorCode::UnknownServer),
            ApiError::NotFound => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            ApiError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::InvalidRequest)
            }
            ApiError::NoCapacity { .. } => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::NoCapacity),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited),
            ApiError::ShuttingDown => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::SchedulerUnavailable,
            ),
            ApiError::StoreUnavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::StoreUnavailable)
            }
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::NoCapacity {
                retry_after_secs, ..
            }
            | ApiError::RateLimited { retry_after_secs } => Some((*retry_after_secs).max(1)),
            ApiError::ShuttingDown | ApiError::StoreUnavailable => Some(1),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        let mut response = (status, Json(ErrorBody::new(code, self.to_string()))).into_response();
        if let Some(secs) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
