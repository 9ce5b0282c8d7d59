//! `berth-store`: Berth's durable history.
//!
//! One [`Store`] interface over two implementations:
//!
//! - SQLite (the embedded default): one file, `<data-dir>/berth.db`, shared by every Berth
//!   process of a machine (WAL mode, `busy_timeout`, `synchronous=FULL`). Blocking calls run on
//!   tokio's blocking pool, one connection for writes and one for reads per process.
//! - PostgreSQL (`--database-url postgres://…`), for fleets spread over machines: `tokio-postgres`
//!   without TLS, one connection for writes, one for reads and one for [`Store::write_marks`] per
//!   process, reconnected on demand.
//!
//! What it keeps (the schema is created on start, idempotently; see `docs/architecture.md`):
//!
//! - `berth_rooms`: room metadata (id, name, public, created_by, created_at), so that a dormant
//!   room keeps its name and flag and can be found after the whole cluster restarted.
//! - `berth_messages`: every accepted message, primary key `(room_id, seq)`.
//! - `berth_fences`: the newest placement epoch that opened each room. Opening a room claims its
//!   fence; an append whose epoch is older than the fence is refused ([`StoreError::Fenced`]),
//!   so a stale owner (a server declared dead that is still running) can never write again, and
//!   the primary key makes a duplicate `seq` impossible in any case.
//!
//! - `berth_accounts`: registered users (id, display name, lower-case name key, argon2id hash,
//!   token generation). The hash never leaves this crate in a `{:?}` and is bound as a
//!   parameter that prints redacted, so that no driver's debug log can show it.
//!
//! - `berth_members`: who belongs to which room and how far each has read (`read_seq`, which
//!   never moves backwards): the creator and added members of private rooms, both people of a
//!   direct message, and everyone who joined a room. `berth_dms`: the one room of each pair of
//!   accounts (primary key: the sorted pair). `berth_room_activity`: each room's last `seq` and
//!   when it was written, so that "my rooms" is one query (see [`conversations`]).
//!
//! Appends are batched by the caller (group commit): [`Store::append`] writes the messages of
//! many rooms in one transaction and answers per room. What the messages imply for
//! `berth_members` and `berth_room_activity` (a sender has read its own message; the room's
//! last `seq`) the caller gathers across batches into [`Marks`] and writes with
//! [`Store::write_marks`]: one row per sender and room per interval instead of per batch.

pub mod control;
pub mod conversations;
mod postgres;
mod sqlite;
pub mod testing;

pub use conversations::{Marks, MyRoomRow, RoomAccess};

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use berth_protocol::frames::ChatMessage;

/// The file name of the SQLite store inside the data dir.
pub const SQLITE_FILE: &str = "berth.db";
/// Most messages any single read returns, whatever the caller asks.
pub const MAX_READ: usize = 5000;

/// A room's metadata, written when it is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomMeta {
    pub room_id: String,
    pub name: String,
    pub public: bool,
    /// Members only; the creator (`created_by`) is recorded as its first member.
    pub private: bool,
    pub created_by: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

/// A registered account. `Debug` leaves the password hash out.
#[derive(Clone, PartialEq, Eq)]
pub struct Account {
    /// `a-…`, stable for the account's life.
    pub user_id: String,
    /// The name as registered (its case kept for display).
    pub username: String,
    /// The PHC string of the argon2id hash of the password.
    pub password_hash: String,
    /// Moves on when the password changes; user tokens carry the generation they were minted
    /// under, and older ones are refused.
    pub token_gen: u64,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("user_id", &self.user_id)
            .field("username", &self.username)
            .field("token_gen", &self.token_gen)
            .field("created_at_ms", &self.created_at_ms)
            .finish_non_exhaustive()
    }
}

/// The messages one room appends in a batch, under the placement epoch it holds.
#[derive(Debug, Clone)]
pub struct RoomAppend {
    pub room_id: Arc<str>,
    pub epoch: u64,
    /// In `seq` order, without gaps, continuing the room's stored sequence.
    pub messages: Vec<Arc<ChatMessage>>,
    /// Read positions `(user id, seq)` to store in the same transaction (each only moves a
    /// position forward). That senders of `messages` have read their own messages is not
    /// written here: see [`Marks::add_sent`] and [`Store::write_marks`].
    pub reads: Vec<(Arc<str>, u64)>,
}

/// What a room finds in the store when it opens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenedRoom {
    /// The highest stored `seq` (0 for a room without messages).
    pub last_seq: u64,
    /// The most recent messages, oldest first.
    pub recent: Vec<ChatMessage>,
}

/// A page of history, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub messages: Vec<ChatMessage>,
    /// Older messages remain.
    pub has_more: bool,
}

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or refuses writes (disk full, locked, read-only, down).
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// A newer placement of the room has opened it: this owner must stop.
    #[error("room {0} was opened by a newer placement")]
    Fenced(String),
    /// A message with the same `(room_id, seq)` is already stored.
    #[error("room {0}: a message with this seq is already stored")]
    Conflict(String),
    #[error("invalid store configuration: {0}")]
    Config(String),
    /// An account with this name (compared case-insensitively) exists already.
    #[error("the username is taken")]
    UsernameTaken,
}

/// Which store a process uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// `<data-dir>/berth.db`, shared by the processes of one machine.
    Sqlite,
    /// The PostgreSQL database of `--database-url`.
    Postgres,
    /// No durability: history lives and dies with the room (benchmarks, comparisons).
    None,
}

/// The store flags every Berth service shares (flattened into each `Config`).
#[derive(clap::Args, Clone, Default, PartialEq, Eq)]
pub struct StoreArgs {
    /// Where history and room metadata are kept: `sqlite` (`<data-dir>/berth.db`), `postgres`
    /// (`--database-url`) or `none`. Default: `postgres` when `--database-url` is set, else
    /// `sqlite` (`none` for a `--standalone` session server).
    #[arg(long, env = "BERTH_STORE", value_enum)]
    pub store: Option<StoreKind>,

    /// PostgreSQL URL, `postgres://user:password@host:5432/database` (no TLS).
    #[arg(long, env = "BERTH_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

// Hand-written: the URL may hold a password.
impl std::fmt::Debug for StoreArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreArgs")
            .field("store", &self.store)
            .field(
                "database_url",
                &self.database_url.as_deref().map(redact_url),
            )
            .finish()
    }
}

impl StoreArgs {
    /// The store these flags choose. `none_by_default`: what a `--standalone` session server
    /// gets when nothing is said.
    pub fn kind(&self, none_by_default: bool) -> Result<StoreKind, StoreError> {
        match (self.store, &self.database_url) {
            (Some(StoreKind::Postgres), None) => Err(StoreError::Config(
                "--store postgres needs --database-url (BERTH_DATABASE_URL)".into(),
            )),
            (Some(kind), _) => Ok(kind),
            (None, Some(_)) => Ok(StoreKind::Postgres),
            (None, None) if none_by_default => Ok(StoreKind::None),
            (None, None) => Ok(StoreKind::Sqlite),
        }
    }

    /// Opens the chosen store (creating its schema), or `None` for `--store none`.
    pub async fn open(
        &self,
        data_dir: &Path,
        none_by_default: bool,
    ) -> Result<Option<Store>, StoreError> {
        match self.kind(none_by_default)? {
            StoreKind::None => Ok(None),
            StoreKind::Sqlite => Store::sqlite(data_dir.join(SQLITE_FILE)).await.map(Some),
            StoreKind::Postgres => {
                let url = self.database_url.as_deref().unwrap_or_default();
                Store::postgres(url).await.map(Some)
            }
        }
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`, for logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".into();
    };
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, None), |(a, p)| (a, Some(p)));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    match path {
        Some(path) => format!("{scheme}://{authority}/{path}"),
        None => format!("{scheme}://{authority}"),
    }
}

/// A store, cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Store(Arc<Backend>);

enum Backend {
    Sqlite(sqlite::SqliteStore),
    // Boxed: its connection config is large, and the enum sits behind one `Arc` anyway.
    Postgres(Box<postgres::PgStore>),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Per-room answers of one batch, or the failure of the whole batch.
type BatchResult = Result<Vec<Result<(), StoreError>>, StoreError>;

impl Store {
    /// Opens (creating if needed) the SQLite store at `path`.
    pub async fn sqlite(path: PathBuf) -> Result<Store, StoreError> {
        Ok(Store(Arc::new(Backend::Sqlite(
            sqlite::SqliteStore::open(path).await?,
        ))))
    }

    /// Connects to the PostgreSQL store at `url` (creating the schema if needed).
    pub async fn postgres(url: &str) -> Result<Store, StoreError> {
        Ok(Store(Arc::new(Backend::Postgres(Box::new(
            postgres::PgStore::open(url).await?,
        )))))
    }

    /// For logs: `sqlite:/path` or the redacted PostgreSQL URL.
    pub fn describe(&self) -> String {
        match &*self.0 {
            Backend::Sqlite(s) => format!("sqlite:{}", s.path().display()),
            Backend::Postgres(p) => redact_url(p.url()),
        }
    }

    /// Appends the messages of several rooms in one transaction. Answers per room, in the order
    /// of `batch`: a fenced room fails alone; a duplicate `seq` fails its room alone (the batch is
    /// retried room by room); an unavailable store fails them all.
    pub async fn append(&self, batch: &[RoomAppend]) -> Vec<Result<(), StoreError>> {
        if batch.is_empty() {
            return Vec::new();
        }
        match self.append_batch(batch).await {
            Ok(results) => results,
            Err(StoreError::Conflict(_)) if batch.len() > 1 => {
                let mut results = Vec::with_capacity(batch.len());
                for room in batch {
                    let one = std::slice::from_ref(room);
                    results.push(match self.append_batch(one).await {
                        Ok(mut r) => r.pop().unwrap_or(Ok(())),
                        Err(e) => Err(e),
                    });
                }
                results
            }
            Err(StoreError::Conflict(_)) => {
                vec![Err(StoreError::Conflict(batch[0].room_id.to_string()))]
            }
            Err(e) => vec![Err(e); batch.len()],
        }
    }

    async fn append_batch(&self, batch: &[RoomAppend]) -> BatchResult {
        match &*self.0 {
            Backend::Sqlite(s) => s.append(batch.to_vec()).await,
            Backend::Postgres(p) => p.append(batch).await,
        }
    }

    /// Opens `room_id` under placement `epoch`: claims its fence (refused with
    /// [`StoreError::Fenced`] when a newer placement already did) and loads its last `seq` and
    /// its `recent` newest messages.
    pub async fn open_room(
        &self,
        room_id: &str,
        epoch: u64,
        recent: usize,
    ) -> Result<OpenedRoom, StoreError> {
        let recent = recent.min(MAX_READ);
        match &*self.0 {
            Backend::Sqlite(s) => s.open_room(room_id.to_owned(), epoch, recent).await,
            Backend::Postgres(p) => p.open_room(room_id, epoch, recent).await,
        }
    }

    /// The newest `limit` messages with `after < seq <= up_to`, oldest first.
    pub async fn messages_between(
        &self,
        room_id: &str,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        if up_to <= after || limit == 0 {
            return Ok(Vec::new());
        }
        let limit = limit.min(MAX_READ);
        match &*self.0 {
            Backend::Sqlite(s) => {
                s.messages_between(room_id.to_owned(), after, up_to, limit)
                    .await
            }
            Backend::Postgres(p) => p.messages_between(room_id, after, up_to, limit).await,
        }
    }

    /// The `limit` messages just before `before` (exclusive; `None`: the newest), oldest first.
    pub async fn messages_before(
        &self,
        room_id: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let before = before.unwrap_or(u64::MAX);
        if before <= 1 || limit == 0 {
            return Ok(Page::default());
        }
        let limit = limit.min(MAX_READ);
        // One more than asked tells whether older ones remain.
        let mut messages = self
            .messages_between(room_id, 0, before - 1, limit + 1)
            .await?;
        let has_more = messages.len() > limit;
        if has_more {
            messages.remove(0);
        }
        Ok(Page { messages, has_more })
    }

    /// Records a new room (an existing id is left as it is).
    pub async fn create_room(&self, meta: &RoomMeta) -> Result<(), StoreError> {
        match &*self.0 {
            Backend::Sqlite(s) => s.create_room(meta.clone()).await,
            Backend::Postgres(p) => p.create_room(meta).await,
        }
    }

    /// The metadata of `room_id`, if it was ever created.
    pub async fn room(&self, room_id: &str) -> Result<Option<RoomMeta>, StoreError> {
        match &*self.0 {
            Backend::Sqlite(s) => s.room(room_id.to_owned()).await,
            Backend::Postgres(p) => p.room(room_id).await,
        }
    }

    /// The newest `limit` public rooms, newest first.
    pub async fn public_rooms(&self, limit: usize) -> Result<Vec<RoomMeta>, StoreError> {
        let limit = limit.min(MAX_READ);
        match &*self.0 {
            Backend::Sqlite(s) => s.public_rooms(limit).await,
            Backend::Postgres(p) => p.public_rooms(limit).await,
        }
    }
}

/// Accounts.
impl Store {
    /// Records a new account; [`StoreError::UsernameTaken`] when its name, compared
    /// case-insensitively, is taken.
    pub async fn create_account(&self, account: &Account) -> Result<(), StoreError> {
        match &*self.0 {
            Backend::Sqlite(s) => s.create_account(account.clone()).await,
            Backend::Postgres(p) => p.create_account(account).await,
        }
    }

    /// The account named `username` (case-insensitively).
    pub async fn account_by_name(&self, username: &str) -> Result<Option<Account>, StoreError> {
        let key = berth_protocol::ids::username_key(username);
        match &*self.0 {
            Backend::Sqlite(s) => s.account_where("username_key", key).await,
            Backend::Postgres(p) => p.account_where("username_key", &key).await,
        }
    }

    /// The account with the id `user_id`.
    pub async fn account_by_id(&self, user_id: &str) -> Result<Option<Account>, StoreError> {
        match &*self.0 {
            Backend::Sqlite(s) => s.account_where("user_id", user_id.to_owned()).await,
            Backend::Postgres(p) => p.account_where("user_id", user_id).await,
        }
    }

    /// Replaces the password hash of `user_id` and moves its token generation on, if the
    /// generation is still `expected_gen` (so two concurrent changes cannot both win). Answers
    /// the new generation, or `None` when the account is gone or was changed meanwhile.
    pub async fn set_password(
        &self,
        user_id: &str,
        password_hash: &str,
        expected_gen: u64,
    ) -> Result<Option<u64>, StoreError> {
        let changed = match &*self.0 {
            Backend::Sqlite(s) => {
                s.set_password(user_id.to_owned(), password_hash.to_owned(), expected_gen)
                    .await?
            }
            Backend::Postgres(p) => p.set_password(user_id, password_hash, expected_gen).await?,
        };
        Ok(changed.then_some(expected_gen + 1))
    }
}

/// `u64` → SQL `BIGINT` (every value Berth stores fits; larger ones saturate).
pub(crate) fn to_sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// SQL `BIGINT` → `u64` (negative values never written; read as 0).
pub(crate) fn from_sql(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[cfg(test)]
mod tests;
