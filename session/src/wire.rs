//! A WebSocket connection's socket, as the connection reads and writes it.
//!
//! [`Socket`]: plain TCP behind an `Arc`, so the room can write broadcasts to it directly
//! (`outbound`), or whatever else hyper upgraded (TLS), which only the connection writes.
//!
//! [`Wire`]: what tungstenite is given. Tungstenite parses the client's frames, but does not write
//! to the socket: the bytes it would write (its automatic pongs and close replies, and the pings
//! and close the connection sends through it) are captured, and the connection writes them with
//! its outbox, after taking the socket back from the room. A second writer would otherwise cut
//! into a frame the room is writing.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The connection's socket.
pub(crate) enum Socket {
    /// Plain TCP, shared with the room for direct writes.
    Tcp(Arc<TcpStream>),
    /// Anything else (TLS): only the connection writes.
    Upgraded(TokioIo<Upgraded>),
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
            Err(upgraded) => (Socket::Upgraded(TokioIo::new(upgraded)), Vec::new()),
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
            Socket::Upgraded(io) => Pin::new(io).poll_read(cx, buf),
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
            Socket::Upgraded(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(tcp) => poll_io!(tcp.poll_write_ready(cx), tcp.try_write_vectored(bufs)),
            Socket::Upgraded(io) => Pin::new(io).poll_write_vectored(cx, bufs),
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
            Socket::Upgraded(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            // The socket closes when the connection and the room have let go of it.
            Socket::Tcp(_) => Poll::Ready(Ok(())),
            Socket::Upgraded(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

/// The socket as tungstenite sees it: reads pass through, writes are captured for the
/// connection to write (see the module's notes).
pub(crate) struct Wire {
    pub socket: Socket,
    captured: Vec<u8>,
}

impl Wire {
    pub fn new(socket: Socket) -> Wire {
        Wire {
            socket,
            captured: Vec::new(),
        }
    }

    /// What tungstenite wrote since the last call (encoded frames), if anything.
    pub fn take_captured(&mut self) -> Option<Bytes> {
        (!self.captured.is_empty()).then(|| Bytes::from(std::mem::take(&mut self.captured)))
    }
}

impl AsyncRead for Wire {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_read(cx, buf)
    }
}

impl AsyncWrite for Wire {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().captured.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
