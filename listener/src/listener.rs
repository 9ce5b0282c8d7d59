//! [`Listener`]: a bound TCP socket and, for HTTPS / WSS, the TLS acceptor its connections go
//! through. Where the certificate comes from (files, reloads) is the caller's business: the
//! acceptor's rustls configuration is asked on every handshake.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// What [`crate::serve`] accepts on: plain TCP, or TLS over it.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("local_addr", &self.tcp.local_addr().ok())
            .field("tls", &self.is_tls())
            .finish()
    }
}

impl From<TcpListener> for Listener {
    fn from(tcp: TcpListener) -> Listener {
        Listener { tcp, tls: None }
    }
}

impl Listener {
    /// Serves `tcp` as is, or through `tls` when given.
    pub fn new(tcp: TcpListener, tls: Option<TlsAcceptor>) -> Listener {
        Listener { tcp, tls }
    }

    /// Whether connections are TLS (so URLs to this listener are `https://` / `wss://`).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    pub(crate) fn parts(self) -> (TcpListener, Option<TlsAcceptor>) {
        (self.tcp, self.tls)
    }
}

/// An accepted connection, after its TLS handshake when there is one.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// The TLS handshake on `tcp`, within `timeout` (a client that connects and says nothing must
/// not hold its connection slot for longer).
pub(crate) async fn handshake(
    tls: &TlsAcceptor,
    tcp: TcpStream,
    timeout: Duration,
) -> io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(timeout, tls.accept(tcp)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "TLS handshake timed out",
        )),
    }
}
