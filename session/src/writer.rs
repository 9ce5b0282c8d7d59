//! The group-commit writer: one task per process that appends the messages of every room to the
//! store, many rooms per transaction.
//!
//! Rooms never wait on it: a room submits its pending messages (at most one submission in flight
//! per room, so that a failure can never leave a gap) and goes on; the answer comes back on the
//! room's ack channel. Batching is natural: while one transaction runs, submissions pile up in the
//! queue, and the next transaction takes all of them (up to [`MAX_BATCH_MESSAGES`]). Under light
//! load a message waits for one transaction; under heavy load one transaction carries many
//! rooms' messages. Read positions ride along in the same transactions.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use berth_store::{RoomAppend, Store, StoreError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Most messages written in one transaction (a batch always takes at least one submission).
pub(crate) const MAX_BATCH_MESSAGES: usize = 4096;

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
}

impl Writer {
    /// Starts the writer task on `store`. It stops once `stop` is cancelled and its queue is
    /// empty, or when every [`Writer`] is gone.
    pub fn start(
        store: Store,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> (Writer, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(store, rx, metrics, stop));
        (Writer { tx }, task)
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
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut batch: Vec<Submission> = Vec::new();
    let mut appends: Vec<RoomAppend> = Vec::new();
    loop {
        let first = tokio::select! {
            biased;
            s = rx.recv() => match s {
                Some(s) => s,
                None => return,
            },
            () = stop.cancelled() => {
                // Finish what is queued, then stop.
                match rx.try_recv() {
                    Ok(s) => s,
                    Err(_) => return,
                }
            }
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
                Ok(()) => stored += append.messages.len() as u64,
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
