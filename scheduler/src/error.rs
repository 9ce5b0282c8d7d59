//! Errors: [`Error`] for starting and running the scheduler, and the scheduler's refusals as
//! [`ApiError`]s (the services' shared error answer, from `berth_runtime::http`).

use axum::http::StatusCode;
use berth_protocol::ErrorCode;

use crate::Config;

/// Why [`crate::serve`] could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Secret(#[from] berth_runtime::SecretError),
    #[error("cannot read the listener's bound address")]
    LocalAddr(#[source] std::io::Error),
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
    #[error("cannot open the room store: {0}")]
    Store(#[source] berth_store::StoreError),
    #[error("TLS: {0}")]
    Tls(#[from] berth_runtime::TlsError),
    /// `--shared` without PostgreSQL.
    #[error(
        "scheduler replicas (--shared, BERTH_SCHEDULER_SHARED) keep their shared state in \
         PostgreSQL: set BERTH_DATABASE_URL (or --database-url) and leave --store unset or \
         `postgres`; the single-process scheduler (the default) runs on SQLite"
    )]
    SharedNeedsPostgres,
}

pub use berth_runtime::http::ApiError;

/// 401 `unauthorized`: a call without the cluster secret.
pub(crate) fn unauthorized() -> ApiError {
    ApiError::unauthorized("missing or wrong cluster secret")
}

/// 404 `unknown_server`: the caller should register again.
pub(crate) fn unknown_server() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::UnknownServer,
        "unknown session server",
    )
}

/// 403 `forbidden`: a session server's credential used for something only the cluster secret
/// may do (`action`), or for another server.
pub(crate) fn forbidden(action: &'static str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        ErrorCode::Forbidden,
        format!("this credential may not {action}"),
    )
}

/// 503 `no_capacity` with the `Retry-After` the config gives: no slot can be had.
pub(crate) fn no_capacity(config: &Config, message: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::NoCapacity,
        message,
    )
    .retry_after(config.retry_after_secs())
}

/// 429 `rate_limited`: too many room creates by one user.
pub(crate) fn rate_limited(retry_after_secs: u64) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::RateLimited,
        format!("too many room creates, retry in {retry_after_secs}s"),
    )
    .retry_after(retry_after_secs)
}

/// 503 `scheduler_unavailable`: the scheduler is stopping.
pub(crate) fn shutting_down() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::SchedulerUnavailable,
        "the scheduler is shutting down",
    )
    .retry_after(1)
}

/// 503 `store_unavailable`: the room store cannot be read or written.
pub(crate) fn store_unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::StoreUnavailable,
        "the room store is unavailable",
    )
    .retry_after(1)
}
