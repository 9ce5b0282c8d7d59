//! The group-commit writer: one task per process that appends the messages of every room to the
//! store, many rooms per transaction.
//!
//! Rooms never wait on it: a room submits its pending messages (at most one submission in flight
//! per room, so that a failure can never leave a gap) and goes on; the answer comes back on the
//! room's ack channel. Batching is natural: while one transaction runs, submissions pile up in the
//! queue, and the next transaction takes all of them (up to [`MAX_BATCH_MESSAGES`]). Under light
//! load a message waits for one transaction; under heavy load one transaction carries many
//! rooms' messages. Explicit read positions ride along in the same transactions; what the
//! messages imply (senders' own reads, room activity) is written every [`MARKS_EVERY`], or at
//! once when a room handing itself over asks for it ([`Writer::sync_marks`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use berth_store::{Marks, RoomAppend, Store, StoreError};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Most messages written in one transaction (a batch always takes at least one submission).
pub(crate) const MAX_BATCH_MESSAGES: usize = 4096;

/// How long what stored messages imply (each sender has read its own message; the room's
/// last `seq` and time) may wait to be written. Gathered across batches, it costs one row per
/// sender and room per interval instead of one per transaction: at 8,000 messages/s in 100
/// rooms, most of the pages each commit wrote. A crash loses at most this much of it; the
/// messages themselves are never deferred, nor are joins and explicit reads.
pub(crate) const MARKS_EVERY: Duration = Duration::from_millis(100);

/// The answer to one submission.
pub(crate) type Ack = Result<(), StoreError>;

/// One room's pending messages and where to answer.
pub(crate) struct Submission {
    pub append: RoomAppend,
    pub ack: mpsc::UnboundedSender<Ack>,
}

/// Submits appends to the writer task; cheap to clone.
#[derive(Clone)]
pub(crate) struct Writer {
    tx: mpsc::UnboundedSender<Submission>,
    /// Who waits for the marks held now to be written.
    syncs: mpsc::UnboundedSender<oneshot::Sender<()>>,
}

impl Writer {
    /// Starts the writer task on `store`. It stops once `stop` is cancelled and its queue is
    /// empty, or when every [`Writer`] is gone, after writing the marks it holds.
    pub fn start(
        store: Store,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> (Writer, tokio::task::JoinHandle<()>) {
        Writer::start_every(store, metrics, stop, MARKS_EVERY)
    }

    /// [`Writer::start`] with the marks written every `marks_every`.
    pub(crate) fn start_every(
        store: Store,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
        marks_every: Duration,
    ) -> (Writer, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (syncs, sync_rx) = mpsc::unbounded_channel();
        let marks = PendingMarks {
            every: marks_every,
            ..PendingMarks::default()
        };
        let task = tokio::spawn(run(store, rx, sync_rx, metrics, stop, marks));
        (Writer { tx, syncs }, task)
    }

    /// Resolves once the marks the writer holds now — those of every message already
    /// acknowledged — are written (or their write failed, or the writer stopped). A room
    /// handing itself over waits for this, so that its next owner reads its senders' positions.
    pub async fn sync_marks(&self) {
        let (tx, rx) = oneshot::channel();
        if self.syncs.send(tx).is_ok() {
            let _ = rx.await;
        }
    }

    /// Queues `append`; the answer goes to `ack`. When the writer is gone the answer is an
    /// immediate failure.
    pub fn submit(&self, append: RoomAppend, ack: &mpsc::UnboundedSender<Ack>) {
        if let Err(mpsc::error::SendError(s)) = self.tx.send(Submission {
            append,
            ack: ack.clone(),
        }) {
            let _ = s.ack.send(Err(StoreError::Unavailable(
                "the store writer has stopped".into(),
            )));
        }
    }
}

async fn run(
    store: Store,
    mut rx: mpsc::UnboundedReceiver<Submission>,
    mut syncs: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    mut marks: PendingMarks,
) {
    let mut batch: Vec<Submission> = Vec::new();
    let mut appends: Vec<RoomAppend> = Vec::new();
    loop {
        let due = marks.due_at();
        let first = tokio::select! {
            biased;
            s = rx.recv() => s,
            () = stop.cancelled() => {
                // Finish what is queued, then stop.
                rx.try_recv().ok()
            }
            written = written(&mut marks.writing) => {
                marks.done(written);
                continue;
            }
            Some(waiter) = syncs.recv() => {
                marks.sync(waiter);
                continue;
            }
            () = sleep_until(due) => {
                marks.write(&store);
                continue;
            }
        };
        let Some(first) = first else {
            marks.write_last(&store).await;
            return;
        };
        let mut messages = first.append.messages.len() + first.append.reads.len();
        batch.push(first);
        while messages < MAX_BATCH_MESSAGES {
            let Ok(next) = rx.try_recv() else { break };
            messages += next.append.messages.len() + next.append.reads.len();
            batch.push(next);
        }
        appends.extend(batch.iter_mut().map(|s| RoomAppend {
            room_id: s.append.room_id.clone(),
            epoch: s.append.epoch,
            messages: std::mem::take(&mut s.append.messages),
            reads: std::mem::take(&mut s.append.reads),
        }));
        let results = store.append(&appends).await;
        metrics.store_batches.fetch_add(1, Ordering::Relaxed);
        let (mut stored, mut failed) = (0u64, 0u64);
        for ((submission, append), result) in batch.drain(..).zip(&appends).zip(results) {
            match &result {
                Ok(()) => {
                    stored += append.messages.len() as u64;
                    marks.add(append);
                }
                Err(e) => {
                    failed += 1;
                    tracing::warn!(room_id = %append.room_id, error = %e, "cannot store messages");
                }
            }
            let _ = submission.ack.send(result);
        }
        metrics.store_messages.fetch_add(stored, Ordering::Relaxed);
        metrics.store_failures.fetch_add(failed, Ordering::Relaxed);
        appends.clear();
    }
}

/// The answer of a marks write: on failure, the marks, for the next one.
type Written = Result<(), (Marks, StoreError)>;

/// What stored messages imply for read positions and room activity, waiting for its write.
/// Writes run on a task of their own (one at a time), so that appends never wait for them on
/// PostgreSQL (a connection of their own); on SQLite they take turns on the one writing
/// connection.
#[derive(Default)]
struct PendingMarks {
    marks: Marks,
    /// When to write them: `every` after the first one came.
    due: Option<Instant>,
    every: Duration,
    writing: Option<JoinHandle<Written>>,
    /// Waiting for the next write to end ([`Writer::sync_marks`]).
    waiting: Vec<oneshot::Sender<()>>,
    /// Waiting for the running write to end.
    waiting_on_write: Vec<oneshot::Sender<()>>,
}

impl PendingMarks {
    fn add(&mut self, append: &RoomAppend) {
        self.marks.add_sent(append);
        if self.due.is_none() && !self.marks.is_empty() {
            self.due = Some(Instant::now() + self.every);
        }
    }

    /// Someone waits for the marks held now: write them as soon as no write runs.
    fn sync(&mut self, waiter: oneshot::Sender<()>) {
        if !self.marks.is_empty() {
            self.waiting.push(waiter);
            self.due = Some(Instant::now());
        } else if self.writing.is_some() {
            self.waiting_on_write.push(waiter);
        } else {
            let _ = waiter.send(());
        }
    }

    /// When to start the next write: `None` while one runs or nothing waits.
    fn due_at(&self) -> Option<Instant> {
        self.due.filter(|_| self.writing.is_none())
    }

    /// Starts writing the marks gathered so far.
    fn write(&mut self, store: &Store) {
        let marks = std::mem::take(&mut self.marks);
        self.due = None;
        self.waiting_on_write.append(&mut self.waiting);
        let store = store.clone();
        self.writing = Some(tokio::spawn(async move {
            match store.write_marks(&marks).await {
                Ok(()) => Ok(()),
                Err(e) => Err((marks, e)),
            }
        }));
    }

    /// The running write ended; failed marks wait for the next write, an interval later.
    fn done(&mut self, written: Written) {
        self.writing = None;
        // Answered even after a failure: a hand-off waits for this only as long as it may.
        for waiter in self.waiting_on_write.drain(..) {
            let _ = waiter.send(());
        }
        if let Err((marks, e)) = written {
            tracing::warn!(error = %e, "cannot store read positions; trying again");
            self.marks.merge(marks);
            self.due = Some(Instant::now() + self.every);
        }
    }

    /// The last write, on the way out (bounded by the store's own timeouts and the caller's).
    async fn write_last(&mut self, store: &Store) {
        if self.writing.is_some() {
            let answer = written(&mut self.writing).await;
            self.done(answer);
        }
        if !self.marks.is_empty()
            && let Err(e) = store.write_marks(&self.marks).await
        {
            tracing::warn!(error = %e, "cannot store the last read positions");
        }
        for waiter in self.waiting.drain(..) {
            let _ = waiter.send(());
        }
    }
}

/// Resolves with the answer of the running write, if any.
async fn written(writing: &mut Option<JoinHandle<Written>>) -> Written {
    match writing {
        Some(task) => task.await.unwrap_or_else(|e| {
            Err((
                Marks::default(),
                StoreError::Unavailable(format!("the marks task failed: {e}")),
            ))
        }),
        None => std::future::pending().await,
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use berth_store::ChatMessage;

    use super::*;

    async fn store() -> Store {
        let dir = std::env::temp_dir().join(format!(
            "berth-writer-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        Store::sqlite(dir.join("berth.db")).await.unwrap()
    }

    fn sent(room: &str, seq: u64, user: &str) -> RoomAppend {
        RoomAppend {
            room_id: Arc::from(room),
            epoch: 1,
            messages: vec![Arc::new(ChatMessage {
                seq,
                user_id: user.into(),
                username: user.into(),
                text: "hi".into(),
                ts: "2026-01-01T00:00:00.000Z".into(),
                client_id: None,
            })],
            reads: Vec::new(),
        }
    }

    /// Long enough that no test sees the interval's write.
    const HOUR: Duration = Duration::from_secs(3600);

    /// A store with room `r-1` open, and a writer on it writing its marks every `every`.
    async fn started(every: Duration) -> (Store, Writer, CancellationToken, JoinHandle<()>) {
        let store = store().await;
        store.open_room("r-1", 1, 0).await.unwrap();
        let stop = CancellationToken::new();
        let (writer, task) =
            Writer::start_every(store.clone(), Arc::default(), stop.clone(), every);
        (store, writer, stop, task)
    }

    async fn positions(store: &Store, room: &str) -> Vec<(String, u64)> {
        let mut p = store.read_positions(room, 10).await.unwrap();
        p.sort();
        p
    }

    /// A sender's read of its own message follows the message within the interval.
    #[tokio::test]
    async fn a_senders_position_follows_its_message() {
        let (store, writer, stop, task) = started(MARKS_EVERY).await;
        let (ack_tx, mut acks) = mpsc::unbounded_channel();
        writer.submit(sent("r-1", 1, "u-a"), &ack_tx);
        writer.submit(sent("r-1", 2, "u-b"), &ack_tx);
        assert!(acks.recv().await.unwrap().is_ok() && acks.recv().await.unwrap().is_ok());
        let deadline = Instant::now() + Duration::from_secs(10);
        while positions(&store, "r-1").await.len() < 2 {
            assert!(
                Instant::now() < deadline,
                "{:?}",
                positions(&store, "r-1").await
            );
            tokio::time::sleep(MARKS_EVERY / 4).await;
        }
        assert_eq!(
            positions(&store, "r-1").await,
            [("u-a".to_owned(), 1), ("u-b".to_owned(), 2)]
        );
        stop.cancel();
        task.await.unwrap();
    }

    /// A sync answers once the marks held when it was asked are in the store, long before
    /// their interval.
    #[tokio::test]
    async fn a_sync_answers_once_the_marks_it_found_are_written() {
        let (store, writer, stop, task) = started(HOUR).await;
        // Nothing held: answered at once.
        tokio::time::timeout(Duration::from_secs(10), writer.sync_marks())
            .await
            .expect("a sync with nothing held answers");
        let (ack_tx, mut acks) = mpsc::unbounded_channel();
        writer.submit(sent("r-1", 1, "u-a"), &ack_tx);
        writer.submit(sent("r-1", 2, "u-b"), &ack_tx);
        assert!(acks.recv().await.unwrap().is_ok() && acks.recv().await.unwrap().is_ok());
        assert_eq!(positions(&store, "r-1").await, [], "held for the interval");
        tokio::time::timeout(Duration::from_secs(10), writer.sync_marks())
            .await
            .expect("the sync answers");
        assert_eq!(
            positions(&store, "r-1").await,
            [("u-a".to_owned(), 1), ("u-b".to_owned(), 2)]
        );
        stop.cancel();
        task.await.unwrap();
    }

    /// The marks a stopping writer holds are written before it ends.
    #[tokio::test]
    async fn a_stopping_writer_writes_the_marks_it_holds() {
        let (store, writer, stop, task) = started(HOUR).await;
        let (ack_tx, mut acks) = mpsc::unbounded_channel();
        writer.submit(sent("r-1", 1, "u-a"), &ack_tx);
        assert!(acks.recv().await.unwrap().is_ok());
        assert_eq!(positions(&store, "r-1").await, [], "held for the interval");
        stop.cancel();
        task.await.unwrap();
        assert_eq!(positions(&store, "r-1").await, [("u-a".to_owned(), 1)]);
    }
}
