//! A connection's outbound queue: the frames its room broadcast that the connection has not
//! written yet. One producer (the room), one consumer (the connection), a fixed bound.
//!
//! Direct writes: a WebSocket connection over plain TCP lends its socket to the queue. While the
//! connection waits with nothing queued and nothing of its own half written, the room writes a
//! frame to the socket itself ([`Sender::send`]: one non-blocking `writev`, no wake-up, no
//! task switch). A frame the socket does not take whole is queued (remembering how much of it
//! went out) and the connection, woken, writes the rest with its deadline; frames after it queue
//! behind it until the connection has caught up and waits again. Before the connection writes
//! anything of its own (a pong, a ping, a refusal, the close) it takes the socket back
//! ([`Receiver::hold_into`]), so two writers never interleave.
//!
//! Why not `tokio::sync::mpsc`: a bounded mpsc allocates a block of 32 slots when it is made and
//! keeps the blocks its deepest backlog needed, over a kilobyte for every connection, idle ones
//! included. Here the frames sit in a `VecDeque` that holds memory only while frames wait (a
//! larger backlog's buffer is given back once the connection caught up), behind a mutex that
//! each side holds for a few instructions; a push wakes the connection only when it waits.
//!
//! The queue's shared state also carries the room's two other messages to the connection, so
//! that an idle connection holds no timer or channel of its own for them: a ping request
//! ([`Sender::ping`], from the room's one ping timer) and the kick notice ([`Sender::kick`],
//! read through a [`Notice`]).

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker, ready};

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::outbox::{Outbox, text_header};
use crate::room::Kick;

/// Capacity an emptied queue keeps: none. Most frames are written directly, so a queue is used
/// in bursts, and an idle connection must hold nothing.
const KEEP_CAPACITY: usize = 0;

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TrySendError {
    /// The queue is at its bound: the connection does not keep up.
    Full,
    /// The connection is gone.
    Closed,
}

struct State {
    frames: VecDeque<Utf8Bytes>,
    /// Bytes of the first queued frame that the room already wrote to the socket itself.
    first_written: usize,
    /// The connection, when it waits for a frame.
    waker: Option<Waker>,
    /// The connection's socket, lent for direct writes.
    socket: Option<Arc<TcpStream>>,
    /// Whether the room may write to `socket` now: the connection waits, nothing is queued and
    /// nothing the connection wrote is half way out.
    direct: bool,
    sender_gone: bool,
    receiver_gone: bool,
    /// The room asked the connection to ping its client ([`Sender::ping`]).
    ping_due: bool,
    /// The room's notice that the connection must go ([`Sender::kick`]).
    kick: Option<Kick>,
}

struct Shared {
    state: Mutex<State>,
    bound: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned queue is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The room's end.
pub(crate) struct Sender(Arc<Shared>);

/// The connection's end.
pub(crate) struct Receiver(Arc<Shared>);

/// A queue of at most `bound` frames, and the connection's end of the room's kick notice.
pub(crate) fn channel(bound: usize) -> (Sender, Receiver, Notice) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            frames: VecDeque::new(),
            first_written: 0,
            waker: None,
            socket: None,
            direct: false,
            sender_gone: false,
            receiver_gone: false,
            ping_due: false,
            kick: None,
        }),
        bound: bound.max(1),
    });
    (
        Sender(shared.clone()),
        Receiver(shared.clone()),
        Notice(shared),
    )
}

impl Sender {
    /// Queues `frame` unless the queue is full or the connection is gone.
    #[cfg(test)]
    pub fn try_send(&self, frame: Utf8Bytes) -> Result<(), TrySendError> {
        self.send(std::slice::from_ref(&frame), false)
    }

    /// Hands `frames` to the connection, in order: with `direct`, written to its socket at once
    /// in one `writev` when the connection lent it and waits (see the module's notes); queued
    /// otherwise, like [`Sender::try_send`]. `Full` when they did not all fit in the queue (a
    /// frame half written always does).
    pub fn send(&self, frames: &[Utf8Bytes], direct: bool) -> Result<(), TrySendError> {
        if frames.is_empty() {
            return Ok(());
        }
        let waker = {
            let mut state = self.0.lock();
            if state.receiver_gone {
                return Err(TrySendError::Closed);
            }
            let mut rest = frames;
            if direct && let Some(socket) = state.socket.as_ref().filter(|_| state.direct) {
                let (whole, partly) = write_direct(socket, frames);
                if whole == frames.len() {
                    return Ok(());
                }
                // The socket did not take them all: the connection writes the rest (one may be
                // half written), and every frame after them, until it has caught up.
                state.first_written = partly;
                rest = &frames[whole..];
            }
            // Whatever is queued goes out before anything the room could write itself.
            state.direct = false;
            let mut full = false;
            for frame in rest {
                if state.frames.len() >= self.0.bound {
                    full = true;
                    break;
                }
                state.frames.push_back(frame.clone());
            }
            if full {
                return Err(TrySendError::Full);
            }
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Tells the connection to go, and why (the room then drops this end). A connection whose
    /// room drops the sender without a notice learns that the room failed.
    pub fn kick(&self, kick: Kick) {
        let waker = {
            let mut state = self.0.lock();
            state.kick.get_or_insert(kick);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Asks the connection to ping its client (the room's ping timer stands in for one timer per
    /// connection): the connection sees it after the frames already queued
    /// ([`Receiver::poll_recv_into`]). A stream that does not ping (SSE) never looks.
    pub fn ping(&self) {
        let waker = {
            let mut state = self.0.lock();
            if state.receiver_gone || state.ping_due {
                return;
            }
            state.ping_due = true;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The room's notice that the connection must go, which every wait and write of the
/// connection races: it resolves to the [`Kick`], or to `None` once the room let go of the
/// queue without one (the room failed). It rides on the queue's shared state and waker, so a
/// connection holds no channel of its own for it; it may be polled again once resolved.
pub(crate) struct Notice(Arc<Shared>);

impl Future for Notice {
    type Output = Option<Kick>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Kick>> {
        let mut state = self.0.lock();
        if let Some(kick) = state.kick {
            return Poll::Ready(Some(kick));
        }
        if state.sender_gone {
            return Poll::Ready(None);
        }
        match &mut state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// What a connection waiting on its queue gets ([`Receiver::poll_recv_into`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Received {
    /// Frames, moved into the outbox.
    Frames,
    /// The room's ping timer fired: ping the client.
    Ping,
    /// The room let go of the queue and every frame was taken.
    Closed,
}

enum Next {
    Frame(Utf8Bytes, usize),
    Ping,
    Closed,
}

/// Most frames one direct write gathers.
const MAX_DIRECT_FRAMES: usize = 32;

/// Writes `frames` (up to [`MAX_DIRECT_FRAMES`]) to `socket` in one non-blocking `writev`: how
/// many went out whole, and how many bytes of the next one. Any error but a full socket is left
/// for the connection's own write to see.
fn write_direct(socket: &TcpStream, frames: &[Utf8Bytes]) -> (usize, usize) {
    let frames = &frames[..frames.len().min(MAX_DIRECT_FRAMES)];
    let mut headers = [([0u8; crate::outbox::MAX_HEADER], 0usize); MAX_DIRECT_FRAMES];
    for (header, frame) in headers.iter_mut().zip(frames) {
        *header = text_header(frame.len());
    }
    let mut slices = [IoSlice::new(&[]); 2 * MAX_DIRECT_FRAMES];
    for (i, (frame, (header, len))) in frames.iter().zip(&headers).enumerate() {
        slices[2 * i] = IoSlice::new(&header[..*len]);
        slices[2 * i + 1] = IoSlice::new(frame.as_bytes());
    }
    let mut written = socket
        .try_write_vectored(&slices[..2 * frames.len()])
        .unwrap_or(0);
    for (i, (frame, (_, len))) in frames.iter().zip(&headers).enumerate() {
        let size = len + frame.len();
        if written < size {
            return (i, written);
        }
        written -= size;
    }
    (frames.len(), 0)
}

impl Drop for Sender {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.0.lock();
            state.sender_gone = true;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Receiver {
    /// Lends the connection's socket to the room for direct writes, which begin once the
    /// connection next waits with nothing queued ([`Receiver::recv_into`]).
    pub fn lend(&mut self, socket: Arc<TcpStream>) {
        self.0.lock().socket = Some(socket);
    }

    /// The next frame; `None` once the room let go of the queue and every frame was taken.
    /// (For a queue whose socket was never lent.)
    pub async fn recv(&mut self) -> Option<Utf8Bytes> {
        std::future::poll_fn(|cx| {
            self.poll_next(cx, false).map(|next| match next {
                Next::Frame(frame, written) => {
                    debug_assert_eq!(written, 0, "no direct writes without a socket");
                    Some(frame)
                }
                Next::Ping => unreachable!("pings are not asked for"),
                Next::Closed => None,
            })
        })
        .await
    }

    /// Waits for frames and moves up to `max` of them into `outbox` (the first one minus what
    /// the room already wrote of it); `None` once the room let go of the queue and every frame
    /// was taken. While it waits, the room writes to the lent socket itself.
    #[cfg(test)]
    pub async fn recv_into(&mut self, outbox: &mut Outbox, max: usize) -> Option<()> {
        loop {
            match std::future::poll_fn(|cx| self.poll_recv_into(cx, outbox, max)).await {
                Received::Frames => return Some(()),
                Received::Ping => continue,
                Received::Closed => return None,
            }
        }
    }

    /// [`Receiver::recv_into`], as a poll, which also reports the room's ping requests
    /// ([`Sender::ping`]) once the frames queued before them were taken.
    pub fn poll_recv_into(
        &mut self,
        cx: &mut Context<'_>,
        outbox: &mut Outbox,
        max: usize,
    ) -> Poll<Received> {
        let (first, written) = match ready!(self.poll_next(cx, true)) {
            Next::Frame(first, written) => (first, written),
            Next::Ping => return Poll::Ready(Received::Ping),
            Next::Closed => return Poll::Ready(Received::Closed),
        };
        outbox.push_started(first, written);
        self.drain_into(max.saturating_sub(outbox.len()), |next| outbox.push(next));
        Poll::Ready(Received::Frames)
    }

    /// Stops the room's direct writes, so that the connection can write something of its own,
    /// and moves what is queued into `outbox` ahead of it: a frame the room half wrote (which
    /// must be finished before anything else), then up to `max` frames in all. Direct writes
    /// resume when the connection next waits in [`Receiver::recv_into`].
    pub fn hold_into(&mut self, outbox: &mut Outbox, max: usize) {
        let mut state = self.0.lock();
        state.direct = false;
        if state.first_written > 0 {
            let (first, written) = pop(&mut state).expect("a half-written frame is queued");
            outbox.push_started(first, written);
        }
        for _ in outbox.len()..max {
            let Some((next, _)) = pop(&mut state) else {
                break;
            };
            outbox.push(next);
        }
    }

    /// The next frame (and how much of it the room wrote), else with `pings` a ping request,
    /// else whether the room let go; all under one lock, so that nothing the room does between
    /// the checks and the waker's registration is missed.
    fn poll_next(&mut self, cx: &mut Context<'_>, pings: bool) -> Poll<Next> {
        let mut state = self.0.lock();
        if let Some((first, written)) = pop(&mut state) {
            return Poll::Ready(Next::Frame(first, written));
        }
        if pings && state.ping_due {
            state.ping_due = false;
            return Poll::Ready(Next::Ping);
        }
        if state.sender_gone {
            return Poll::Ready(Next::Closed);
        }
        match &mut state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        // Caught up and waiting: the room may write itself.
        state.direct = state.socket.is_some();
        Poll::Pending
    }

    /// A frame already queued, if any.
    #[cfg(test)]
    pub fn try_recv(&mut self) -> Option<Utf8Bytes> {
        pop(&mut self.0.lock()).map(|(frame, _)| frame)
    }

    /// Moves up to `max` queued frames to `into`, under one lock. (Only the first frame taken
    /// after a wait can be half written, and [`Receiver::recv_into`] takes that one.)
    pub fn drain_into(&mut self, max: usize, mut into: impl FnMut(Utf8Bytes)) {
        let mut state = self.0.lock();
        for _ in 0..max {
            let Some((frame, _)) = pop(&mut state) else {
                break;
            };
            into(frame);
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let (frames, socket) = {
            let mut state = self.0.lock();
            state.receiver_gone = true;
            state.direct = false;
            state.waker = None;
            (std::mem::take(&mut state.frames), state.socket.take())
        };
        // Outside the lock; the socket closes once the connection lets go of it too.
        drop((frames, socket));
    }
}

/// Takes the first frame and how much of it the room already wrote; an emptied queue gives
/// back a buffer its backlog grew.
fn pop(state: &mut State) -> Option<(Utf8Bytes, usize)> {
    let frame = state.frames.pop_front()?;
    let written = std::mem::take(&mut state.first_written);
    if state.frames.is_empty() && state.frames.capacity() > KEEP_CAPACITY {
        state.frames = VecDeque::new();
    }
    Some((frame, written))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::tests::{parse, read_all};
    use std::time::Duration;

    fn frame(s: &str) -> Utf8Bytes {
        Utf8Bytes::from(s.to_owned())
    }

    #[test]
    fn keeps_order_refuses_past_its_bound_and_after_the_connection_left() {
        let (tx, mut rx, _) = channel(2);
        tx.try_send(frame("a")).unwrap();
        tx.try_send(frame("b")).unwrap();
        assert_eq!(tx.try_send(frame("c")), Err(TrySendError::Full));
        assert_eq!(rx.try_recv().as_deref(), Some("a"));
        tx.try_send(frame("c")).unwrap();
        let mut got = Vec::new();
        rx.drain_into(8, |f| got.push(f.to_string()));
        assert_eq!(got, ["b", "c"]);
        assert_eq!(rx.try_recv(), None);
        drop(rx);
        assert_eq!(tx.try_send(frame("d")), Err(TrySendError::Closed));
    }

    #[test]
    fn a_caught_up_queue_gives_its_backlog_buffer_back() {
        let (tx, mut rx, _) = channel(1000);
        for i in 0..500 {
            tx.try_send(frame(&i.to_string())).unwrap();
        }
        assert!(rx.0.lock().frames.capacity() >= 500);
        rx.drain_into(1000, drop);
        assert_eq!(rx.0.lock().frames.capacity(), 0);
    }

    /// A connected pair of TCP sockets on loopback: (server side, client side).
    async fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (accepted.unwrap().0, client.unwrap())
    }

    impl Sender {
        fn try_write(&self, frame: Utf8Bytes) -> Result<(), TrySendError> {
            self.send(&[frame], true)
        }
    }

    fn queued(tx: &Sender) -> (usize, usize, bool) {
        let state = tx.0.lock();
        (state.frames.len(), state.first_written, state.direct)
    }

    #[tokio::test]
    async fn direct_writes_and_the_rest_of_a_half_written_frame_read_back_whole_and_in_order() {
        let (server, client) = socket_pair().await;
        let server = Arc::new(server);
        let (tx, mut rx, _) = channel(100);
        rx.lend(server.clone());
        // The connection: writes what is queued, waits again.
        let connection = tokio::spawn(async move {
            let mut socket = crate::wire::Socket::Tcp(server);
            let mut outbox = Outbox::default();
            while rx.recv_into(&mut outbox, 64).await.is_some() {
                outbox.write_to(&mut socket).await.unwrap();
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            queued(&tx).2,
            "a waiting connection lends its socket to the room"
        );

        // Written by the room itself: nothing queued (the connection cannot have run since).
        tx.try_write(frame("one")).unwrap();
        assert_eq!(queued(&tx), (0, 0, true));
        // One gathered write of three frames; the second is larger than loopback's buffers
        // with nobody reading: the socket takes the first whole and part of the second, the
        // rest is queued, and so is everything after it, until the connection caught up.
        let big = "b".repeat(32 << 20);
        let frames = [frame("one-b"), frame(&big), frame("two")];
        tx.send(&frames, true).unwrap();
        let (len, written, direct) = queued(&tx);
        assert_eq!(len, 2);
        assert!(
            written > 0 && written < big.len(),
            "half written: {written}"
        );
        assert!(!direct);
        tx.try_write(frame("three")).unwrap();
        assert_eq!(queued(&tx).0, 3);

        let reader = read_all(client);
        // Once the connection caught up, the room writes itself again.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while queued(&tx) != (0, 0, true) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the connection caught up"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tx.try_write(frame("four")).unwrap();
        assert_eq!(queued(&tx), (0, 0, true));
        drop(tx);
        connection.await.unwrap();
        let got = parse(reader.await.unwrap());
        assert_eq!(got.len(), 6);
        assert!(got[2] == big, "the half-written frame was finished whole");
        let small = [&got[0], &got[1], &got[3], &got[4], &got[5]];
        assert_eq!(small, ["one", "one-b", "two", "three", "four"]);
    }

    #[tokio::test]
    async fn a_connection_that_writes_its_own_frame_takes_the_socket_back_first() {
        let (server, _client) = socket_pair().await;
        let (tx, mut rx, _) = channel(8);
        rx.lend(Arc::new(server));
        let mut outbox = Outbox::default();
        let waited = tokio::time::timeout(Duration::from_millis(10), rx.recv_into(&mut outbox, 8));
        assert!(waited.await.is_err(), "nothing queued");
        assert!(queued(&tx).2);
        rx.hold_into(&mut outbox, 8);
        assert!(!queued(&tx).2);
        tx.try_write(frame("queued")).unwrap();
        assert_eq!(queued(&tx), (1, 0, false));
        // A frame queued without a direct write (a room grown past the direct-write size) ends
        // direct writes too: a later frame queues behind it instead of overtaking it.
        let (server, _client) = socket_pair().await;
        let (tx, mut rx, _) = channel(8);
        rx.lend(Arc::new(server));
        let waited = tokio::time::timeout(Duration::from_millis(10), rx.recv_into(&mut outbox, 8));
        assert!(waited.await.is_err());
        assert!(queued(&tx).2);
        tx.try_send(frame("first")).unwrap();
        tx.try_write(frame("second")).unwrap();
        assert_eq!(queued(&tx), (2, 0, false));
        // Without a lent socket the room never writes itself.
        let (tx, mut rx, _) = channel(8);
        let waited = tokio::time::timeout(Duration::from_millis(10), rx.recv_into(&mut outbox, 8));
        assert!(waited.await.is_err());
        tx.try_write(frame("queued")).unwrap();
        assert_eq!(queued(&tx), (1, 0, false));
    }

    #[tokio::test]
    async fn a_ping_request_wakes_a_waiting_connection_after_the_frames_queued_before_it() {
        let (tx, mut rx, _) = channel(4);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut outbox = Outbox::default();
            loop {
                let next = std::future::poll_fn(|cx| rx.poll_recv_into(cx, &mut outbox, 8)).await;
                match next {
                    Received::Frames => {
                        got.push(format!("frames: {}", outbox.len()));
                        outbox = Outbox::default();
                    }
                    Received::Ping => got.push("ping".to_owned()),
                    Received::Closed => return got,
                }
            }
        });
        // Asked while the connection waits: it is woken for it.
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.ping();
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Asked behind queued frames: the frames come first; asked twice, one ping.
        tx.try_send(frame("x")).unwrap();
        tx.try_send(frame("y")).unwrap();
        tx.ping();
        tx.ping();
        drop(tx);
        let got = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the reader was woken")
            .unwrap();
        assert_eq!(got, ["ping", "frames: 2", "ping"]);
    }

    #[tokio::test]
    async fn the_kick_notice_says_why_or_that_the_room_failed() {
        let (tx, _rx, mut notice) = channel(4);
        let waiting = tokio::spawn(async move {
            let kick = (&mut notice).await;
            // Resolved once, it stays resolved.
            assert_eq!((&mut notice).await, kick);
            kick
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.kick(Kick::SlowConsumer);
        tx.kick(Kick::Restart);
        drop(tx);
        let kick = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert_eq!(kick.expect("woken").unwrap(), Some(Kick::SlowConsumer));

        let (tx, _rx, notice) = channel(4);
        drop(tx);
        assert_eq!(
            notice.await,
            None,
            "dropped without a notice: the room failed"
        );
    }

    #[tokio::test]
    async fn a_waiting_connection_is_woken_and_sees_the_room_let_go() {
        let (tx, mut rx, _) = channel(4);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(f) = rx.recv().await {
                got.push(f.to_string());
            }
            got
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.try_send(frame("x")).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.try_send(frame("y")).unwrap();
        drop(tx);
        let got = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the reader was woken")
            .unwrap();
        assert_eq!(got, ["x", "y"]);
    }
}
