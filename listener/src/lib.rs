//! The HTTP listener every Berth service (backend, scheduler, session servers) serves on.
//!
//! `axum::serve` sets no header-read timeout and no bound on connections, so a client that sends
//! half a request and waits (slowloris) holds a socket and a task for as long as it likes. Here
//! every connection is accepted only with a permit from a per-listener budget
//! ([`Limits::max_connections`]; past it, new connections wait in the kernel's accept queue), must
//! send each request's headers within [`Limits::header_read_timeout`] (which also closes a
//! kept-alive connection idle for that long), and each request must be answered within
//! [`Limits::request_timeout`] (a body trickled in too slowly is answered 408). A connection
//! upgraded to a WebSocket gives its permit back: WebSockets have their own limits.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_protocol::{ErrorBody, ErrorCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

/// Pause after a failed `accept` (out of file descriptors, for example) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once (requests still being read included).
    pub max_connections: usize,
    /// Time to send a request's headers; also the idle time of a kept-alive connection.
    pub header_read_timeout: Duration,
    /// Time from a request's headers to its answer (reading the body included).
    pub request_timeout: Duration,
    /// After shutdown, time in-flight requests get before their connections are dropped.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// The flags of a listener's [`Limits`], flattened into each service's config.
#[derive(clap::Args, Debug, Clone)]
pub struct HttpArgs {
    /// HTTP connections served at once (not counting upgraded WebSockets); past it, new
    /// connections wait in the kernel's accept queue.
    #[arg(long, env = "BERTH_MAX_HTTP_CONNECTIONS", default_value_t = 4096)]
    pub max_http_connections: usize,

    /// Time a client has to send a request's headers, and the longest a kept-alive connection
    /// may sit idle, in milliseconds.
    #[arg(long, env = "BERTH_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,

    /// Time from a request's headers to its answer, body included, in milliseconds (408 past it).
    #[arg(long, env = "BERTH_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,
}

impl HttpArgs {
    /// The listener's limits; zero values are raised to the smallest workable ones.
    pub fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_http_connections.max(1),
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms.max(1)),
            request_timeout: Duration::from_millis(self.request_timeout_ms.max(1)),
            ..Limits::default()
        }
    }
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then stops accepting, lets
/// in-flight requests finish within [`Limits::shutdown_grace`] and returns. Handlers see the
/// peer address as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let budget = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    loop {
        let permit = tokio::select! {
            permit = budget.clone().acquire_owned() => permit.expect("the budget is never closed"),
            () = shutdown.cancelled() => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let answer = app.clone().oneshot(request.map(axum::body::Body::new));
            async move {
                match tokio::time::timeout(limits.request_timeout, answer).await {
                    Ok(Ok(response)) => Ok::<_, Infallible>(response),
                    Ok(Err(never)) => match never {},
                    Err(_) => Ok(request_timeout()),
                }
            }
        });
        let connection = http
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        let stop = shutdown.clone();
        let grace = limits.shutdown_grace;
        connections.spawn(async move {
            let _permit = permit;
            tokio::pin!(connection);
            tokio::select! {
                r = connection.as_mut() => log_end(r, peer),
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    if let Ok(r) = tokio::time::timeout(grace, connection.as_mut()).await {
                        log_end(r, peer);
                    }
                }
            }
        });
    }
    connections.close();
    if tokio::time::timeout(limits.shutdown_grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("HTTP connections still open at shutdown, dropped");
    }
    Ok(())
}

fn log_end(result: Result<(), hyper::Error>, peer: SocketAddr) {
    if let Err(e) = result {
        // Timeouts and clients going away are routine; debug level only.
        tracing::debug!(error = %e, %peer, "HTTP connection ended");
    }
}

/// 408 with the error body, closing the connection.
fn request_timeout() -> Response {
    let mut response = (
        StatusCode::REQUEST_TIMEOUT,
        axum::Json(ErrorBody::new(
            ErrorCode::RequestTimeout,
            "the request was not received and answered in time",
        )),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
