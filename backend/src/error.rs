//! Errors: [`ApiError`] (the services' shared error answer, from `berth_runtime::http`) and how
//! a scheduler failure becomes one, and [`Error`], why the service could not start or stopped.

use axum::http::StatusCode;
use berth_protocol::ErrorCode;
pub use berth_runtime::http::ApiError;

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
    #[error("TLS")]
    Tls(#[from] berth_runtime::TlsError),
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
                    Some(body) if passes => ApiError::relayed(status, body)
                        .with_retry_after(retry_after)
                        .with_cause(format!("scheduler answered {status}")),
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
