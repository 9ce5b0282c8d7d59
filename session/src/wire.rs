//! A WebSocket connection's socket, as the connection reads and writes it: plain TCP behind an
//! `Arc`, so the room can write broadcasts to it directly (`outbound`), or whatever else hyper
//! upgraded (TLS), which only the connection writes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The connection's socket.
pub(crate) enum Socket {
    /// Plain TCP, shared with the room for direct writes.
    Tcp(Arc<TcpStream>),
    /// Anything else (TLS): only the connection writes. (Boxed: most connections are plain TCP,
    /// and every connection holds a `Socket`.)
    Upgraded(Box<TokioIo<Upgraded>>),
}

impl Socket {
    /// The upgraded connection, and the bytes hyper read past the HTTP request (a client may
    /// send its first frames before it reads the `101`), copied: hyper's are a slice of its
    /// read buffer, which they would keep alive (8 KiB, even when the slice is empty).
    pub fn new(upgraded: Upgraded) -> (Socket, Vec<u8>) {
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => (
                Socket::Tcp(Arc::new(parts.io.into_inner())),
                parts.read_buf.to_vec(),
            ),
            Err(upgraded) => (
                Socket::Upgraded(Box::new(TokioIo::new(upgraded))),
                Vec::new(),
            ),
        }
    }

    /// The TCP socket to lend to the room, when the connection is plain TCP.
    pub fn tcp(&self) -> Option<Arc<TcpStream>> {
        match self {
            Socket::Tcp(tcp) => Some(tcp.clone()),
            Socket::Upgraded(_) => None,
        }
    }
}

/// Retries a non-blocking socket operation until it does not block (the readiness it waited for
/// is cleared by tokio when the operation blocks anyway).
macro_rules! poll_io {
    ($ready:expr, $op:expr) => {
        loop {
            ready!($ready)?;
            match $op {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    };
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(tcp) => poll_io!(
                tcp.poll_read_ready(cx),
                tcp.try_read(buf.initialize_unfilled())
                    .map(|n| buf.advance(n))
            ),
            Socket::Upgraded(io) => Pin::new(&mut **io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(tcp) => poll_io!(tcp.poll_write_ready(cx), tcp.try_write(buf)),
            Socket::Upgraded(io) => Pin::new(&mut **io).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(tcp) => poll_io!(tcp.poll_write_ready(cx), tcp.try_write_vectored(bufs)),
            Socket::Upgraded(io) => Pin::new(&mut **io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Socket::Tcp(_) => true,
            Socket::Upgraded(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            // TCP has no buffer of its own to flush.
            Socket::Tcp(_) => Poll::Ready(Ok(())),
            Socket::Upgraded(io) => Pin::new(&mut **io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            // The socket closes when the connection and the room have let go of it.
            Socket::Tcp(_) => Poll::Ready(Ok(())),
            Socket::Upgraded(io) => Pin::new(&mut **io).poll_shutdown(cx),
        }
    }
}
