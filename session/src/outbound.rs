//! A connection's outbound queue: the frames its room broadcast that the connection has not
//! written yet. One producer (the room), one consumer (the connection), a fixed bound.
//!
//! Why not `tokio::sync::mpsc`: a bounded mpsc allocates a block of 32 slots when it is made and
//! keeps the blocks its deepest backlog needed, over a kilobyte for every connection, idle ones
//! included. Here the frames sit in a `VecDeque` that holds memory only while frames wait (a
//! larger backlog's buffer is given back once the connection caught up), behind a mutex that
//! each side holds for a few instructions; a push wakes the connection only when it waits.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Capacity an emptied queue keeps (so that a trickle of single frames does not allocate each
/// time); anything larger is given back.
const KEEP_CAPACITY: usize = 4;

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
    /// The connection, when it waits for a frame.
    waker: Option<Waker>,
    sender_gone: bool,
    receiver_gone: bool,
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

/// A queue of at most `bound` frames.
pub(crate) fn channel(bound: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            frames: VecDeque::new(),
            waker: None,
            sender_gone: false,
            receiver_gone: false,
        }),
        bound: bound.max(1),
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl Sender {
    /// Queues `frame` unless the queue is full or the connection is gone.
    pub fn try_send(&self, frame: Utf8Bytes) -> Result<(), TrySendError> {
        let waker = {
            let mut state = self.0.lock();
            if state.receiver_gone {
                return Err(TrySendError::Closed);
            }
            if state.frames.len() >= self.0.bound {
                return Err(TrySendError::Full);
            }
            state.frames.push_back(frame);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }
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
    /// The next frame; `None` once the room let go of the queue and every frame was taken.
    pub async fn recv(&mut self) -> Option<Utf8Bytes> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Utf8Bytes>> {
        let mut state = self.0.lock();
        if let Some(frame) = pop(&mut state) {
            return Poll::Ready(Some(frame));
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

    /// A frame already queued, if any.
    #[cfg(test)]
    pub fn try_recv(&mut self) -> Option<Utf8Bytes> {
        pop(&mut self.0.lock())
    }

    /// Moves up to `max` queued frames to `into`, under one lock.
    pub fn drain_into(&mut self, max: usize, mut into: impl FnMut(Utf8Bytes)) {
        let mut state = self.0.lock();
        for _ in 0..max {
            let Some(frame) = pop(&mut state) else { break };
            into(frame);
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let frames = {
            let mut state = self.0.lock();
            state.receiver_gone = true;
            state.waker = None;
            std::mem::take(&mut state.frames)
        };
        drop(frames); // outside the lock
    }
}

/// Takes the first frame; an emptied queue gives back a buffer its backlog grew.
fn pop(state: &mut State) -> Option<Utf8Bytes> {
    let frame = state.frames.pop_front()?;
    if state.frames.is_empty() && state.frames.capacity() > KEEP_CAPACITY {
        state.frames = VecDeque::new();
    }
    Some(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn frame(s: &str) -> Utf8Bytes {
        Utf8Bytes::from(s.to_owned())
    }

    #[test]
    fn keeps_order_refuses_past_its_bound_and_after_the_connection_left() {
        let (tx, mut rx) = channel(2);
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
        let (tx, mut rx) = channel(1000);
        for i in 0..500 {
            tx.try_send(frame(&i.to_string())).unwrap();
        }
        assert!(rx.0.lock().frames.capacity() >= 500);
        rx.drain_into(1000, drop);
        assert_eq!(rx.0.lock().frames.capacity(), 0);
    }

    #[tokio::test]
    async fn a_waiting_connection_is_woken_and_sees_the_room_let_go() {
        let (tx, mut rx) = channel(4);
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
