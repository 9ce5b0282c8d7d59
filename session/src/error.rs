//! Why a session server could not start or run ([`Error`]), and why a connection is refused
//! before its upgrade: [`ApiError`]s (the services' shared error answer, from
//! `berth_runtime::http`), made by the functions below.

use std::path::PathBuf;

use axum::http::StatusCode;
use berth_protocol::ErrorCode;
pub use berth_runtime::http::ApiError;

use crate::scheduler::SchedulerError;
use crate::ticket::TicketError;

/// What [`crate::serve`] fails with. Refusals of single connections are not errors of the
/// server: they are HTTP answers (see `admission`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot read the ticket public key {}", path.display())]
    PublicKeyRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid ticket public key {} (expected an Ed25519 SPKI PEM)", path.display())]
    PublicKey {
        path: PathBuf,
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    #[error(transparent)]
    Secret(#[from] berth_runtime::SecretError),
    #[error("cannot open the message store: {0}")]
    Store(#[from] berth_store::StoreError),
    #[error("cannot set up the scheduler client")]
    Scheduler(#[from] SchedulerError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] berth_runtime::TlsError),
}

/// 421 `wrong_server`: the room (or the ticket) belongs to another server or placement.
pub(crate) fn wrong_server(message: &str) -> ApiError {
    ApiError::new(
        StatusCode::MISDIRECTED_REQUEST,
        ErrorCode::WrongServer,
        message,
    )
}

/// 421 `wrong_server`: the ticket names an older placement of the room.
pub(crate) fn stale_epoch() -> ApiError {
    wrong_server("the ticket is for another placement of this room")
}

/// 503 `server_draining`.
pub(crate) fn draining() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::ServerDraining,
        "the server is draining",
    )
}

/// 503 `server_full`: no connection or room slot left.
pub(crate) fn server_full(message: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::ServerFull,
        message,
    )
}

/// 409 `room_full`.
pub(crate) fn room_full(message: &str) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, ErrorCode::RoomFull, message)
}

/// 503 `store_unavailable`.
pub(crate) fn store_unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::StoreUnavailable,
        "the message store is unavailable; try again",
    )
}

/// 503 `scheduler_unavailable`.
pub(crate) fn scheduler_unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::SchedulerUnavailable,
        "cannot reach the scheduler",
    )
}

/// 503 `scheduler_unavailable`: the server could not renew its lease with the scheduler, so its
/// rooms may be placed elsewhere and it serves none of them until it gets through again.
pub(crate) fn lease_lost() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::SchedulerUnavailable,
        "this server lost touch with the scheduler",
    )
}

impl From<TicketError> for ApiError {
    fn from(e: TicketError) -> Self {
        match e {
            TicketError::Invalid(why) => {
                ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::InvalidTicket, why)
            }
            TicketError::WrongServer => wrong_server("the ticket is for another server"),
        }
    }
}
