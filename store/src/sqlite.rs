//! The SQLite store: one file shared by the processes of a machine.
//!
//! WAL mode lets readers run beside the one writer; `busy_timeout` makes a writer wait for
//! another process's transaction instead of failing at once (after [`BUSY_TIMEOUT`] it fails:
//! the store is unavailable). `synchronous=FULL` syncs every commit, so an accepted message
//! survives a crash of the machine too; group commit amortises the sync over a batch. Each
//! process holds one connection for writes and one for reads, used on tokio's blocking pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

mod conversations;

use crate::conversations::Marks;
use crate::{
    Account, BatchResult, ChatMessage, OpenedRoom, RoomAppend, RoomMeta, StoreError, from_sql,
    to_sql,
};

/// How long a write waits for another process's transaction before the store counts as
/// unavailable.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS berth_rooms (
    room_id       TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    public        INTEGER NOT NULL,
    private       INTEGER NOT NULL DEFAULT 0,
    created_by    TEXT,
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS berth_rooms_public ON berth_rooms (public, created_at_ms);
CREATE TABLE IF NOT EXISTS berth_messages (
    room_id   TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    user_id   TEXT NOT NULL,
    username  TEXT NOT NULL,
    text      TEXT NOT NULL,
    ts        TEXT NOT NULL,
    client_id TEXT,
    PRIMARY KEY (room_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS berth_fences (
    room_id TEXT PRIMARY KEY,
    epoch   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS berth_accounts (
    user_id       TEXT PRIMARY KEY,
    username      TEXT NOT NULL,
    username_key  TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    token_gen     INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS berth_members (
    user_id     TEXT NOT NULL,
    room_id     TEXT NOT NULL,
    read_seq    INTEGER NOT NULL DEFAULT 0,
    added_at_ms INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS berth_members_room ON berth_members (room_id, read_seq);
CREATE TABLE IF NOT EXISTS berth_dms (
    user_lo TEXT NOT NULL,
    user_hi TEXT NOT NULL,
    room_id TEXT NOT NULL UNIQUE,
    PRIMARY KEY (user_lo, user_hi)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS berth_room_activity (
    room_id  TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    last_ms  INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Columns added after a table was first shipped: `(table, column, definition)`.
const ADDED_COLUMNS: &[(&str, &str, &str)] =
    &[("berth_rooms", "private", "INTEGER NOT NULL DEFAULT 0")];

/// Adds the [`ADDED_COLUMNS`] a store made by an older version lacks (inside the schema
/// transaction, so processes starting together do it once).
fn add_columns(conn: &Connection) -> rusqlite::Result<()> {
    for (table, column, definition) in ADDED_COLUMNS {
        let present: i64 = conn.query_row(
            "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
            params![table, column],
            |r| r.get(0),
        )?;
        if present == 0 {
            conn.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {column} {definition}"
            ))?;
        }
    }
    Ok(())
}

pub(crate) struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    write: Mutex<Connection>,
    read: Mutex<Connection>,
}

fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic mid-call leaves the connection usable (an open transaction rolls back on drop).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let _mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    conn.execute_batch("PRAGMA synchronous=FULL;")?;
    Ok(conn)
}

/// Creates the database file 0600 before SQLite opens it (SQLite gives its `-wal` and `-shm`
/// files the database file's mode), and tightens the three files of an older deployment.
fn protect(path: &Path) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    drop(opts.open(path)?);
    let with_suffix = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        berth_runtime::secret::private_file(Path::new(&name))
    };
    with_suffix("")?;
    with_suffix("-wal")?;
    with_suffix("-shm")
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("sqlite: {e}"))
}

/// Tries at opening while another process holds the file busy.
const OPEN_ATTEMPTS: u32 = 100;

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
}

fn is_constraint(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

impl SqliteStore {
    pub(crate) async fn open(path: PathBuf) -> Result<SqliteStore, StoreError> {
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent()
                && !dir.as_os_str().is_empty()
            {
                berth_runtime::secret::private_dir(dir).map_err(|e| {
                    StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
            protect(&path).map_err(|e| {
                StoreError::Unavailable(format!("cannot protect {}: {e}", path.display()))
            })?;
            // Processes starting together race to create the file and switch it to WAL, which
            // SQLite answers with "busy" outside the busy handler: try again for a while.
            let mut attempt = 0;
            let (write, read) = loop {
                let opened = connection(&path).and_then(|write| {
                    write.execute_batch(&format!("BEGIN IMMEDIATE; {SCHEMA}"))?;
                    if let Err(e) = add_columns(&write) {
                        let _ = write.execute_batch("ROLLBACK");
                        return Err(e);
                    }
                    write.execute_batch("COMMIT")?;
                    Ok((write, connection(&path)?))
                });
                match opened {
                    Ok(pair) => break pair,
                    Err(e) if attempt < OPEN_ATTEMPTS && is_busy(&e) => {
                        attempt += 1;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => return Err(unavailable(e)),
                }
            };
            Ok(SqliteStore {
                inner: Arc::new(Inner {
                    path,
                    write: Mutex::new(write),
                    read: Mutex::new(read),
                }),
            })
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("sqlite open task failed: {e}")))?
    }

    pub(crate) fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on the write (or read) connection on the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        write: bool,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = lock(if write { &inner.write } else { &inner.read });
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("sqlite task failed: {e}")))?
    }

    pub(crate) async fn append(&self, batch: Vec<RoomAppend>) -> BatchResult {
        self.run(true, move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(unavailable)?;
            let mut results = Vec::with_capacity(batch.len());
            {
                let mut fence = tx.prepare_cached("SELECT epoch FROM berth_fences WHERE room_id = ?1").map_err(unavailable)?;
                let mut insert = tx
                    .prepare_cached(
                        "INSERT INTO berth_messages (room_id, seq, user_id, username, text, ts, client_id)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )
                    .map_err(unavailable)?;
                for room in &batch {
                    let fenced: Option<i64> =
                        fence.query_row([&*room.room_id], |r| r.get(0)).optional().map_err(unavailable)?;
                    if fenced.is_some_and(|e| from_sql(e) > room.epoch) {
                        results.push(Err(StoreError::Fenced(room.room_id.to_string())));
                        continue;
                    }
                    for m in &room.messages {
                        let done = insert.execute(params![
                            &*room.room_id,
                            to_sql(m.seq),
                            m.user_id,
                            m.username,
                            m.text,
                            m.ts,
                            m.client_id
                        ]);
                        match done {
                            Ok(_) => {}
                            Err(e) if is_constraint(&e) => return Err(StoreError::Conflict(room.room_id.to_string())),
                            Err(e) => return Err(unavailable(e)),
                        }
                    }
                    results.push(Ok(()));
                }
            }
            let mut marks = Marks::default();
            for (room, result) in batch.iter().zip(&results) {
                if result.is_ok() {
                    marks.add_reads(room);
                }
            }
            conversations::write_marks(&tx, &marks).map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
            Ok(results)
        })
        .await
    }

    pub(crate) async fn open_room(
        &self,
        room_id: String,
        epoch: u64,
        recent: usize,
    ) -> Result<OpenedRoom, StoreError> {
        self.run(true, move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            let claimed = tx
                .execute(
                    "INSERT INTO berth_fences (room_id, epoch) VALUES (?1, ?2)
                     ON CONFLICT (room_id) DO UPDATE SET epoch = excluded.epoch
                     WHERE berth_fences.epoch <= excluded.epoch",
                    params![room_id, to_sql(epoch)],
                )
                .map_err(unavailable)?;
            if claimed == 0 {
                return Err(StoreError::Fenced(room_id));
            }
            let last: i64 = tx
                .query_row(
                    "SELECT COALESCE(MAX(seq), 0) FROM berth_messages WHERE room_id = ?1",
                    [&room_id],
                    |r| r.get(0),
                )
                .map_err(unavailable)?;
            let recent = between(&tx, &room_id, 0, from_sql(last), recent)?;
            tx.commit().map_err(unavailable)?;
            Ok(OpenedRoom {
                last_seq: from_sql(last),
                recent,
            })
        })
        .await
    }

    pub(crate) async fn messages_between(
        &self,
        room_id: String,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        self.run(false, move |conn| {
            between(conn, &room_id, after, up_to, limit)
        })
        .await
    }

    pub(crate) async fn create_room(&self, meta: RoomMeta) -> Result<(), StoreError> {
        self.run(true, move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            tx.execute(
                "INSERT INTO berth_rooms (room_id, name, public, private, created_by, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (room_id) DO NOTHING",
                params![
                    meta.room_id,
                    meta.name,
                    meta.public,
                    meta.private,
                    meta.created_by,
                    to_sql(meta.created_at_ms)
                ],
            )
            .map_err(unavailable)?;
            // The creator is the room's first member (and finds it among its rooms).
            if let Some(user) = &meta.created_by {
                conversations::insert_member(&tx, &meta.room_id, user, meta.created_at_ms)
                    .map_err(unavailable)?;
            }
            tx.commit().map_err(unavailable)
        })
        .await
    }

    pub(crate) async fn room(&self, room_id: String) -> Result<Option<RoomMeta>, StoreError> {
        self.run(false, move |conn| {
            conn.query_row(
                "SELECT room_id, name, public, created_by, created_at_ms, private FROM berth_rooms WHERE room_id = ?1",
                [&room_id],
                meta_row,
            )
            .optional()
            .map_err(unavailable)
        })
        .await
    }

    pub(crate) async fn public_rooms(&self, limit: usize) -> Result<Vec<RoomMeta>, StoreError> {
        self.run(false, move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT room_id, name, public, created_by, created_at_ms, private FROM berth_rooms
                     WHERE public = 1 ORDER BY created_at_ms DESC, room_id LIMIT ?1",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map([to_sql(limit as u64)], meta_row)
                .map_err(unavailable)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(unavailable)
        })
        .await
    }
}

impl SqliteStore {
    pub(crate) async fn create_account(&self, a: Account) -> Result<(), StoreError> {
        self.run(true, move |conn| {
            let done = conn.execute(
                "INSERT INTO berth_accounts (user_id, username, username_key, password_hash, token_gen, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    a.user_id,
                    a.username,
                    berth_protocol::ids::username_key(&a.username),
                    a.password_hash,
                    to_sql(a.token_gen),
                    to_sql(a.created_at_ms)
                ],
            );
            match done {
                Ok(_) => Ok(()),
                Err(e) if is_constraint(&e) => Err(StoreError::UsernameTaken),
                Err(e) => Err(unavailable(e)),
            }
        })
        .await
    }

    /// The account whose `column` (`user_id` or `username_key`, never caller input) is `value`.
    pub(crate) async fn account_where(
        &self,
        column: &'static str,
        value: String,
    ) -> Result<Option<Account>, StoreError> {
        self.run(false, move |conn| {
            conn.prepare_cached(&format!(
                "SELECT user_id, username, password_hash, token_gen, created_at_ms
                 FROM berth_accounts WHERE {column} = ?1"
            ))
            .and_then(|mut stmt| {
                stmt.query_row([&value], |r| {
                    Ok(Account {
                        user_id: r.get(0)?,
                        username: r.get(1)?,
                        password_hash: r.get(2)?,
                        token_gen: from_sql(r.get(3)?),
                        created_at_ms: from_sql(r.get(4)?),
                    })
                })
                .optional()
            })
            .map_err(unavailable)
        })
        .await
    }

    pub(crate) async fn set_password(
        &self,
        user_id: String,
        hash: String,
        expected_gen: u64,
    ) -> Result<bool, StoreError> {
        self.run(true, move |conn| {
            let changed = conn
                .execute(
                    "UPDATE berth_accounts SET password_hash = ?1, token_gen = token_gen + 1
                     WHERE user_id = ?2 AND token_gen = ?3",
                    params![hash, user_id, to_sql(expected_gen)],
                )
                .map_err(unavailable)?;
            Ok(changed == 1)
        })
        .await
    }
}

fn meta_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RoomMeta> {
    Ok(RoomMeta {
        room_id: r.get(0)?,
        name: r.get(1)?,
        public: r.get(2)?,
        created_by: r.get(3)?,
        created_at_ms: from_sql(r.get(4)?),
        private: r.get(5)?,
    })
}

/// The newest `limit` messages with `after < seq <= up_to`, oldest first.
fn between(
    conn: &Connection,
    room_id: &str,
    after: u64,
    up_to: u64,
    limit: usize,
) -> Result<Vec<ChatMessage>, StoreError> {
    if limit == 0 || up_to <= after {
        return Ok(Vec::new());
    }
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, user_id, username, text, ts, client_id FROM berth_messages
             WHERE room_id = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq DESC LIMIT ?4",
        )
        .map_err(unavailable)?;
    let rows = stmt
        .query_map(
            params![room_id, to_sql(after), to_sql(up_to), to_sql(limit as u64)],
            |r| {
                Ok(ChatMessage {
                    seq: from_sql(r.get(0)?),
                    user_id: r.get(1)?,
                    username: r.get(2)?,
                    text: r.get(3)?,
                    ts: r.get(4)?,
                    client_id: r.get(5)?,
                })
            },
        )
        .map_err(unavailable)?;
    let mut messages = rows
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(unavailable)?;
    messages.reverse();
    Ok(messages)
}
