//! Checkpoints of the write-ahead log, off the commit path.
//!
//! Left to itself, SQLite checkpoints inside the commit that takes the log past 1,000 pages: that
//! commit copies every page of the log into the database file and syncs it, and the messages of
//! its batch, and of the batches queued behind it, wait for all of that before anyone receives
//! them. Here a thread with a connection of its own checkpoints shortly after writes (PASSIVE:
//! it never waits for, nor blocks, a writer or a reader), so the bulk of the copying and the
//! database file's sync happen beside the commits. The write connection still checkpoints past
//! [`WRITER_PAGES`], which bounds the log: by then most pages are copied already, so its
//! checkpoint is short, and once the log is wholly copied the next commit starts it over.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// How long after a commit the checkpoint runs: commits of that moment are copied together, a
/// page rewritten by many of them once.
const AFTER: Duration = Duration::from_millis(20);

/// Log pages past which a commit checkpoints (what is still uncopied) on the write connection.
pub(super) const WRITER_PAGES: u32 = 4000;

/// Failures are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Wakes the checkpoint thread; dropping it stops the thread (once a checkpoint due has run).
pub(super) struct Checkpoints {
    wake: SyncSender<()>,
}

impl Checkpoints {
    /// Starts the thread on `conn`, a connection of its own to the database.
    pub(super) fn start(conn: Connection) -> std::io::Result<Checkpoints> {
        let (wake, woken) = sync_channel(1);
        std::thread::Builder::new()
            .name("berth-sqlite-checkpoint".into())
            .spawn(move || run(&conn, &woken))?;
        Ok(Checkpoints { wake })
    }

    /// Something was committed: checkpoint soon. Never blocks.
    pub(super) fn committed(&self) {
        match self.wake.try_send(()) {
            // Full: a wake-up is pending already.
            Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
        }
    }
}

fn run(conn: &Connection, woken: &Receiver<()>) {
    let mut logged: Option<Instant> = None;
    // Ends when the store is gone; what it committed last is checkpointed first.
    while woken.recv().is_ok() {
        std::thread::sleep(AFTER);
        // The commits of the pause are covered by this checkpoint.
        while woken.try_recv().is_ok() {}
        if let Err(e) = checkpoint(conn)
            && logged.is_none_or(|at| at.elapsed() >= LOG_EVERY)
        {
            logged = Some(Instant::now());
            tracing::warn!(error = %e, "sqlite: checkpoint failed (the write connection checkpoints instead)");
        }
    }
}

/// Runs a PASSIVE checkpoint: `(pages in the log, pages of it copied)`.
pub(super) fn checkpoint(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(1)?, r.get(2)?))
    })
}
