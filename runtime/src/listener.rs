//! [`Listener`]: what every service accepts connections on, plain TCP or TLS, so that a service's
//! `serve` does not care which.
//!
//! With TLS, handshakes run in their own tasks (at most [`MAX_HANDSHAKES`] at once, each within
//! [`crate::tls::HANDSHAKE_TIMEOUT`]) and only finished ones are handed to the HTTP server: a client
//! that opens a socket and says nothing never holds up the next one. The certificate is watched
//! for as long as the listener lives ([`ServerTls::watch`]).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::tls::ServerTls;

/// TLS handshakes in progress at once; past it, accepted sockets wait for one to finish.
pub const MAX_HANDSHAKES: usize = 256;
/// Pause after a failed `accept` (out of file descriptors, for example).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A bound listener, plain or TLS.
pub struct Listener {
    local_addr: SocketAddr,
    inner: Inner,
}

enum Inner {
    Plain(TcpListener),
    Tls {
        accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
        /// Stops the accept task and the certificate watch when the listener goes.
        _stop: DropGuard,
    },
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("local_addr", &self.local_addr)
            .field("tls", &self.is_tls())
            .finish()
    }
}

impl Listener {
    /// Serves `tcp` as is, or through TLS when `tls` is given (then call inside a runtime: the
    /// accept loop and the certificate watch start at once).
    pub fn new(tcp: TcpListener, tls: Option<ServerTls>) -> io::Result<Listener> {
        let local_addr = tcp.local_addr()?;
        let inner = match tls {
            None => Inner::Plain(tcp),
            Some(tls) => {
                let stop = CancellationToken::new();
                let (tx, accepted) = mpsc::channel(64);
                tls.watch(stop.clone());
                tokio::spawn(accept_tls(tcp, tls, tx, stop.clone()));
                Inner::Tls {
                    accepted,
                    _stop: stop.drop_guard(),
                }
            }
        };
        Ok(Listener { local_addr, inner })
    }

    /// Whether connections are TLS (so URLs to this listener are `https://` / `wss://`).
    pub fn is_tls(&self) -> bool {
        matches!(self.inner, Inner::Tls { .. })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The next connection (with `TCP_NODELAY` set) and its peer. Accept errors are logged and
    /// retried.
    pub async fn accept(&mut self) -> (Conn, SocketAddr) {
        match &mut self.inner {
            Inner::Plain(tcp) => loop {
                match tcp.accept().await {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        return (Conn::Plain(stream), peer);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                }
            },
            Inner::Tls { accepted, .. } => match accepted.recv().await {
                Some((stream, peer)) => (Conn::Tls(Box::new(stream)), peer),
                // The accept task only ends when the listener is dropped.
                None => std::future::pending().await,
            },
        }
    }
}

async fn accept_tls(
    tcp: TcpListener,
    tls: ServerTls,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    stop: CancellationToken,
) {
    let handshakes = std::sync::Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            permit = handshakes.clone().acquire_owned() => permit.expect("never closed"),
            () = stop.cancelled() => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = tcp.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        let (tls, tx) = (tls.clone(), tx.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tls.accept(stream).await {
                Ok(stream) => {
                    let _ = tx.send((stream, peer)).await;
                }
                // Scanners, plain-HTTP clients and clients that distrust us are routine.
                Err(e) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
            }
        });
    }
}

#[cfg(feature = "http")]
impl Listener {
    /// For `axum::serve` with `into_make_service_with_connect_info::<SocketAddr>()`: axum gives
    /// the peer address to listeners it wraps with `tap_io`.
    pub fn with_connect_info(self) -> axum::serve::TapIo<Listener, fn(&mut Conn)> {
        use axum::serve::ListenerExt as _;
        self.tap_io(|_| {})
    }
}

#[cfg(feature = "http")]
impl axum::serve::Listener for Listener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        Listener::accept(self).await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local_addr)
    }
}

/// An accepted connection, plain or TLS.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Plain(_) => "Conn::Plain",
            Conn::Tls(_) => "Conn::Tls",
        })
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
