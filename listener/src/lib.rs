//! The HTTP listener every Berth service (backend, scheduler, session servers) serves on, over
//! plain TCP or TLS.
//!
//! `axum::serve` sets no header-read timeout and no bound on connections, so a client that sends
//! half a request and waits (slowloris) holds a socket and a task for as long as it likes. Here
//! every connection is accepted only with a permit from a per-listener budget
//! ([`Limits::max_connections`]; past it, new connections wait in the kernel's accept queue), must
//! send each request's headers within [`Limits::header_read_timeout`] (which also closes a
//! kept-alive connection idle for that long), and each request must be answered within
//! [`Limits::request_timeout`] (a body trickled in too slowly is answered 408). A connection
//! upgraded to a WebSocket gives its permit back: WebSockets have their own limits.
//!
//! - [`limits`]: [`Limits`] and the flags they come from, [`HttpArgs`].
//! - [`listener`]: [`Listener`], a bound socket with or without a TLS acceptor. A TLS handshake
//!   runs in the connection's own task (never on the accept path), holds a permit of the budget
//!   like any connection, and must finish within the header-read timeout.

pub mod limits;
pub mod listener;

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
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

pub use limits::{HttpArgs, Limits};
pub use listener::Listener;
use listener::{Io, handshake};

/// Pause after a failed `accept` (out of file descriptors, for example) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `app` on `listener` (a `TcpListener`, or a [`Listener`] with TLS) until `shutdown` is
/// cancelled, then stops accepting, lets in-flight requests finish within
/// [`Limits::shutdown_grace`] and returns. Handlers see the peer address as
/// `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: impl Into<Listener>,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let (listener, tls) = listener.into().parts();
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
        let connection = Connection {
            http: http.clone(),
            app: app.clone(),
            peer,
            limits,
            stop: shutdown.clone(),
        };
        let tls = tls.clone();
        connections.spawn(async move {
            let _permit = permit;
            let Some(tls) = tls else {
                return connection.serve(tcp).await;
            };
            let handshake = tokio::select! {
                r = handshake(&tls, tcp, limits.header_read_timeout) => r,
                () = connection.stop.cancelled() => return,
            };
            match handshake {
                Ok(stream) => connection.serve(stream).await,
                // Scanners, plain-HTTP clients and clients that distrust us are routine.
                Err(e) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
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

/// One accepted connection's HTTP side.
struct Connection {
    http: hyper::server::conn::http1::Builder,
    app: Router,
    peer: SocketAddr,
    limits: Limits,
    stop: CancellationToken,
}

impl Connection {
    /// Serves HTTP/1.1 requests (and upgrades) on `io` until it closes, or until shutdown plus
    /// the grace period.
    async fn serve(self, io: impl Io) {
        let Connection {
            http,
            app,
            peer,
            limits,
            stop,
        } = self;
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
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        tokio::pin!(connection);
        tokio::select! {
            r = connection.as_mut() => log_end(r, peer),
            () = stop.cancelled() => {
                connection.as_mut().graceful_shutdown();
                if let Ok(r) = tokio::time::timeout(limits.shutdown_grace, connection.as_mut()).await {
                    log_end(r, peer);
                }
            }
        }
    }
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
