//! The PostgreSQL store, for fleets spread over machines.
//!
//! Two connections per process (one for the writer, one for reads), opened lazily and opened
//! again after the server dropped them, so a restarted database is picked up by the next call.
//! Every call is bounded by [`CALL_TIMEOUT`]. A batch append is four round trips whatever its
//! size: `BEGIN`, the fences of its rooms (`FOR SHARE`, so that a newer placement claiming a
//! fence waits for the batch and then sees its messages), one `INSERT … SELECT FROM UNNEST`
//! of every message, `COMMIT`.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, Row, Transaction};

mod conversations;

use crate::conversations::Marks;
use crate::{
    Account, BatchResult, ChatMessage, OpenedRoom, RoomAppend, RoomMeta, StoreError, from_sql,
    to_sql,
};

/// Bound on one store call (connecting included).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on connecting.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Session options unless the URL sets `options`: the database aborts a transaction left idle
/// this long. A writer cut off mid-batch (its host lost the network) otherwise keeps its locks
/// on the room's fence until the database notices the dead connection, which can take hours,
/// and the room's next placement cannot open meanwhile. Berth's own transactions are a few
/// round trips long.
pub(crate) const SESSION_OPTIONS: &str = "-c idle_in_transaction_session_timeout=5000";
/// Any constant: the advisory lock that serialises schema creation between processes.
const SCHEMA_LOCK: i64 = 0x0062_6572_7468; // "berth"

const SCHEMA: &str = "
SET LOCAL client_min_messages = warning; -- no NOTICE for tables that already exist
CREATE TABLE IF NOT EXISTS berth_rooms (
    room_id       TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    public        BOOLEAN NOT NULL,
    private       BOOLEAN NOT NULL DEFAULT false,
    created_by    TEXT,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS berth_rooms_public ON berth_rooms (public, created_at_ms);
CREATE TABLE IF NOT EXISTS berth_messages (
    room_id   TEXT NOT NULL,
    seq       BIGINT NOT NULL,
    user_id   TEXT NOT NULL,
    username  TEXT NOT NULL,
    text      TEXT NOT NULL,
    ts        TEXT NOT NULL,
    client_id TEXT,
    PRIMARY KEY (room_id, seq)
);
CREATE TABLE IF NOT EXISTS berth_fences (
    room_id TEXT PRIMARY KEY,
    epoch   BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS berth_accounts (
    user_id       TEXT PRIMARY KEY,
    username      TEXT NOT NULL,
    username_key  TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    token_gen     BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
ALTER TABLE berth_rooms ADD COLUMN IF NOT EXISTS private BOOLEAN NOT NULL DEFAULT false;
CREATE TABLE IF NOT EXISTS berth_members (
    user_id     TEXT NOT NULL,
    room_id     TEXT NOT NULL,
    read_seq    BIGINT NOT NULL DEFAULT 0,
    added_at_ms BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id)
);
CREATE INDEX IF NOT EXISTS berth_members_room ON berth_members (room_id, read_seq);
CREATE TABLE IF NOT EXISTS berth_dms (
    user_lo TEXT NOT NULL,
    user_hi TEXT NOT NULL,
    room_id TEXT NOT NULL UNIQUE,
    PRIMARY KEY (user_lo, user_hi)
);
CREATE TABLE IF NOT EXISTS berth_room_activity (
    room_id  TEXT PRIMARY KEY,
    last_seq BIGINT NOT NULL,
    last_ms  BIGINT NOT NULL
);
";

pub(crate) struct PgStore {
    url: String,
    config: tokio_postgres::Config,
    write: Mutex<Option<Client>>,
    read: Mutex<Option<Client>>,
    /// For [`crate::Store::write_marks`], so that appends never wait for it.
    marks: Mutex<Option<Client>>,
}

/// Records a new room's metadata and its creator as its first member (who then finds it among
/// their rooms), inside the caller's transaction. A room that exists already is left as it is.
pub(crate) async fn insert_room(tx: &Transaction<'_>, meta: &RoomMeta) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO berth_rooms (room_id, name, public, private, created_by, created_at_ms)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (room_id) DO NOTHING",
        &[
            &meta.room_id,
            &meta.name,
            &meta.public,
            &meta.private,
            &meta.created_by,
            &to_sql(meta.created_at_ms),
        ],
    )
    .await
    .map_err(pg_error)?;
    if let Some(user) = &meta.created_by {
        conversations::insert_member(tx, &meta.room_id, user, meta.created_at_ms).await?;
    }
    Ok(())
}

pub(crate) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    let detail = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    };
    StoreError::Unavailable(format!("postgres: {detail}"))
}

fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

impl PgStore {
    pub(crate) async fn open(url: &str) -> Result<PgStore, StoreError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Config(format!("invalid --database-url: {e}")))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        if config.get_options().is_none() {
            config.options(SESSION_OPTIONS);
        }
        if config.get_application_name().is_none() {
            config.application_name("berth");
        }
        let store = PgStore {
            url: url.to_owned(),
            config,
            write: Mutex::new(None),
            read: Mutex::new(None),
            marks: Mutex::new(None),
        };
        let mut slot = store.write.lock().await;
        let client = store.connected(&mut slot).await?;
        let schema = async {
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
                .await?;
            tx.batch_execute(SCHEMA).await?;
            tx.commit().await
        };
        tokio::time::timeout(CALL_TIMEOUT, schema)
            .await
            .map_err(|_| StoreError::Unavailable("postgres: creating the schema timed out".into()))?
            .map_err(pg_error)?;
        drop(slot);
        Ok(store)
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The client in `slot`, connecting first when there is none or it was closed.
    async fn connected<'a>(
        &self,
        slot: &'a mut MutexGuard<'_, Option<Client>>,
    ) -> Result<&'a mut Client, StoreError> {
        if slot.as_ref().is_none_or(Client::is_closed) {
            **slot = None;
            let (client, connection) = self.config.connect(NoTls).await.map_err(pg_error)?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "postgres connection ended");
                }
            });
            **slot = Some(client);
        }
        Ok(slot.as_mut().expect("connected above"))
    }

    /// Runs `op` on the write (or read) connection, bounded by [`CALL_TIMEOUT`]. A call that
    /// times out or finds the store unavailable drops its connection, so the next call opens a
    /// fresh one (a session opened while the database was read-only, say after a fail-over,
    /// stays read-only: only a new one sees the database writable again).
    async fn call<T>(
        &self,
        write: bool,
        op: impl AsyncFnOnce(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.call_on(if write { &self.write } else { &self.read }, op)
            .await
    }

    /// [`PgStore::call`] on the connection in `slot`.
    async fn call_on<T>(
        &self,
        slot: &Mutex<Option<Client>>,
        op: impl AsyncFnOnce(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut slot = slot.lock().await;
        let result = tokio::time::timeout(CALL_TIMEOUT, async {
            let client = self.connected(&mut slot).await?;
            op(client).await
        })
        .await;
        match result {
            Ok(Err(StoreError::Unavailable(why))) => {
                *slot = None;
                Err(StoreError::Unavailable(why))
            }
            Ok(r) => r,
            Err(_) => {
                *slot = None;
                Err(StoreError::Unavailable(
                    "postgres: the call timed out".into(),
                ))
            }
        }
    }

    pub(crate) async fn append(&self, batch: &[RoomAppend]) -> BatchResult {
        self.call(true, async |client| {
            let tx = client.transaction().await.map_err(pg_error)?;
            let rooms: Vec<&str> = batch.iter().map(|r| &*r.room_id).collect();
            let fences: HashMap<String, u64> = tx
                .query("SELECT room_id, epoch FROM berth_fences WHERE room_id = ANY($1) FOR SHARE", &[&rooms])
                .await
                .map_err(pg_error)?
                .iter()
                .map(|r| (r.get::<_, String>(0), from_sql(r.get(1))))
                .collect();
            let mut results = Vec::with_capacity(batch.len());
            let total: usize = batch.iter().map(|r| r.messages.len()).sum();
            let mut cols = Columns::with_capacity(total);
            for room in batch {
                if fences.get(&*room.room_id).is_some_and(|&e| e > room.epoch) {
                    results.push(Err(StoreError::Fenced(room.room_id.to_string())));
                    continue;
                }
                for m in &room.messages {
                    cols.push(&room.room_id, m);
                }
                results.push(Ok(()));
            }
            if !cols.room_id.is_empty() {
                let inserted = tx
                    .execute(
                        "INSERT INTO berth_messages (room_id, seq, user_id, username, text, ts, client_id)
                         SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])",
                        &[&cols.room_id, &cols.seq, &cols.user_id, &cols.username, &cols.text, &cols.ts, &cols.client_id],
                    )
                    .await;
                match inserted {
                    Ok(_) => {}
                    Err(e) if is_unique_violation(&e) => {
                        return Err(StoreError::Conflict(batch[0].room_id.to_string()));
                    }
                    Err(e) => return Err(pg_error(e)),
                }
            }
            let mut marks = Marks::default();
            for (room, result) in batch.iter().zip(&results) {
                if result.is_ok() {
                    marks.add_reads(room);
                }
            }
            conversations::write_marks(&tx, &marks).await?;
            tx.commit().await.map_err(pg_error)?;
            Ok(results)
        })
        .await
    }

    pub(crate) async fn open_room(
        &self,
        room_id: &str,
        epoch: u64,
        recent: usize,
    ) -> Result<OpenedRoom, StoreError> {
        self.call(true, async |client| {
            let tx = client.transaction().await.map_err(pg_error)?;
            let claimed = tx
                .execute(
                    "INSERT INTO berth_fences (room_id, epoch) VALUES ($1, $2)
                     ON CONFLICT (room_id) DO UPDATE SET epoch = EXCLUDED.epoch
                     WHERE berth_fences.epoch <= EXCLUDED.epoch",
                    &[&room_id, &to_sql(epoch)],
                )
                .await
                .map_err(pg_error)?;
            if claimed == 0 {
                return Err(StoreError::Fenced(room_id.to_owned()));
            }
            let last: i64 = tx
                .query_one(
                    "SELECT COALESCE(MAX(seq), 0)::int8 FROM berth_messages WHERE room_id = $1",
                    &[&room_id],
                )
                .await
                .map_err(pg_error)?
                .get(0);
            let recent = between(&tx, room_id, 0, from_sql(last), recent).await?;
            tx.commit().await.map_err(pg_error)?;
            Ok(OpenedRoom {
                last_seq: from_sql(last),
                recent,
            })
        })
        .await
    }

    pub(crate) async fn messages_between(
        &self,
        room_id: &str,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        self.call(false, async |client| {
            between(&*client, room_id, after, up_to, limit).await
        })
        .await
    }

    pub(crate) async fn create_room(&self, meta: &RoomMeta) -> Result<(), StoreError> {
        self.call(true, async |client| {
            let tx = client.transaction().await.map_err(pg_error)?;
            insert_room(&tx, meta).await?;
            tx.commit().await.map_err(pg_error)
        })
        .await
    }

    pub(crate) async fn room(&self, room_id: &str) -> Result<Option<RoomMeta>, StoreError> {
        self.call(false, async |client| {
            let row = client
                .query_opt(
                    "SELECT room_id, name, public, created_by, created_at_ms, private FROM berth_rooms WHERE room_id = $1",
                    &[&room_id],
                )
                .await
                .map_err(pg_error)?;
            Ok(row.as_ref().map(meta_row))
        })
        .await
    }

    pub(crate) async fn public_rooms(&self, limit: usize) -> Result<Vec<RoomMeta>, StoreError> {
        self.call(false, async |client| {
            let rows = client
                .query(
                    "SELECT room_id, name, public, created_by, created_at_ms, private FROM berth_rooms
                     WHERE public ORDER BY created_at_ms DESC, room_id LIMIT $1",
                    &[&to_sql(limit as u64)],
                )
                .await
                .map_err(pg_error)?;
            Ok(rows.iter().map(meta_row).collect())
        })
        .await
    }
}

impl PgStore {
    pub(crate) async fn create_account(&self, a: &Account) -> Result<(), StoreError> {
        self.call(true, async |client| {
            let done = client
                .execute(
                    "INSERT INTO berth_accounts (user_id, username, username_key, password_hash, token_gen, created_at_ms)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    &[
                        &a.user_id,
                        &a.username,
                        &berth_protocol::ids::username_key(&a.username),
                        &Redacted(&a.password_hash),
                        &to_sql(a.token_gen),
                        &to_sql(a.created_at_ms),
                    ],
                )
                .await;
            match done {
                Ok(_) => Ok(()),
                Err(e) if is_unique_violation(&e) => Err(StoreError::UsernameTaken),
                Err(e) => Err(pg_error(e)),
            }
        })
        .await
    }

    /// The account whose `column` (`user_id` or `username_key`, never caller input) is `value`.
    pub(crate) async fn account_where(
        &self,
        column: &'static str,
        value: &str,
    ) -> Result<Option<Account>, StoreError> {
        self.call(false, async |client| {
            let row = client
                .query_opt(
                    &format!(
                        "SELECT user_id, username, password_hash, token_gen, created_at_ms
                         FROM berth_accounts WHERE {column} = $1"
                    ),
                    &[&value],
                )
                .await
                .map_err(pg_error)?;
            Ok(row.map(|r| Account {
                user_id: r.get(0),
                username: r.get(1),
                password_hash: r.get(2),
                token_gen: from_sql(r.get(3)),
                created_at_ms: from_sql(r.get(4)),
            }))
        })
        .await
    }

    pub(crate) async fn set_password(
        &self,
        user_id: &str,
        hash: &str,
        expected_gen: u64,
    ) -> Result<bool, StoreError> {
        self.call(true, async |client| {
            let changed = client
                .execute(
                    "UPDATE berth_accounts SET password_hash = $1, token_gen = token_gen + 1
                     WHERE user_id = $2 AND token_gen = $3",
                    &[&Redacted(hash), &user_id, &to_sql(expected_gen)],
                )
                .await
                .map_err(pg_error)?;
            Ok(changed == 1)
        })
        .await
    }
}

/// A text parameter whose `Debug` hides it: tokio-postgres logs the parameters of every
/// statement at debug level, and a password hash must never reach a log line.
struct Redacted<'a>(&'a str);

impl std::fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl tokio_postgres::types::ToSql for Redacted<'_> {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        self.0.to_sql(ty, out)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        <&str as tokio_postgres::types::ToSql>::accepts(ty)
    }

    tokio_postgres::types::to_sql_checked!();
}

/// A batch as one array per column, for `UNNEST`.
struct Columns<'a> {
    room_id: Vec<&'a str>,
    seq: Vec<i64>,
    user_id: Vec<&'a str>,
    username: Vec<&'a str>,
    text: Vec<&'a str>,
    ts: Vec<&'a str>,
    client_id: Vec<Option<&'a str>>,
}

impl<'a> Columns<'a> {
    fn with_capacity(n: usize) -> Self {
        Columns {
            room_id: Vec::with_capacity(n),
            seq: Vec::with_capacity(n),
            user_id: Vec::with_capacity(n),
            username: Vec::with_capacity(n),
            text: Vec::with_capacity(n),
            ts: Vec::with_capacity(n),
            client_id: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, room_id: &'a str, m: &'a ChatMessage) {
        self.room_id.push(room_id);
        self.seq.push(to_sql(m.seq));
        self.user_id.push(&m.user_id);
        self.username.push(&m.username);
        self.text.push(&m.text);
        self.ts.push(&m.ts);
        self.client_id.push(m.client_id.as_deref());
    }
}

fn meta_row(r: &Row) -> RoomMeta {
    RoomMeta {
        room_id: r.get(0),
        name: r.get(1),
        public: r.get(2),
        created_by: r.get(3),
        created_at_ms: from_sql(r.get(4)),
        private: r.get(5),
    }
}

/// The newest `limit` messages with `after < seq <= up_to`, oldest first.
async fn between(
    client: &impl tokio_postgres::GenericClient,
    room_id: &str,
    after: u64,
    up_to: u64,
    limit: usize,
) -> Result<Vec<ChatMessage>, StoreError> {
    if limit == 0 || up_to <= after {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT seq, user_id, username, text, ts, client_id FROM berth_messages
             WHERE room_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq DESC LIMIT $4",
            &[
                &room_id,
                &to_sql(after),
                &to_sql(up_to),
                &to_sql(limit as u64),
            ],
        )
        .await
        .map_err(pg_error)?;
    let mut messages: Vec<ChatMessage> = rows
        .iter()
        .map(|r| ChatMessage {
            seq: from_sql(r.get(0)),
            user_id: r.get(1),
            username: r.get(2),
            text: r.get(3),
            ts: r.get(4),
            client_id: r.get(5),
        })
        .collect();
    messages.reverse();
    Ok(messages)
}
