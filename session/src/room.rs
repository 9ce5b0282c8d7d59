//! One room = one task that owns the room's whole state: members, presence, history and `seq`.
//!
//! Connections talk to it through [`RoomHandle`] (an mpsc of [`Command`]s) and receive from it
//! through their own bounded outbound queue of shared frames. Every frame the room broadcasts is
//! serialized once; recipients get a clone of the same refcounted bytes. The room never awaits a
//! member: it corks the frames of one moment, then writes them to each waiting member's socket
//! in one non-blocking write, or queues them to the member's connection ([`Room::uncork`]); a
//! member whose queue is full is dropped as a slow consumer.
//!
//! Durability. With a store, a room first loads its last `seq` and recent history (claiming the
//! placement's fence), then answers joins. An accepted message gets the next `seq` at once and
//! waits, serialized, in `pending`; the room submits its pending messages to the process's
//! group-commit writer (one submission in flight at a time) and goes on serving. Only when the
//! writer says a batch is durable are its messages broadcast, in `seq` order, and added to the
//! history. If the store refuses the batch, every pending message is dropped *loudly*: its
//! sender gets an `error` frame `store_unavailable`, and `seq` goes back to the last durable one
//! (nobody saw the failed messages, so no gap is ever visible). Without a store (`--store none`)
//! messages are broadcast at once.
//!
//! Resume. A join may carry `since`: its `welcome` then holds exactly the durable messages after
//! it (at most [`MAX_RESUME_MESSAGES`], the newest), from the in-memory history when it reaches
//! back far enough, else from the store (the room answers [`JoinError::NeedHistory`] and the
//! admission reads the store and asks again with what it read).
//!
//! Hand-off. A draining server asks each room to hand over: the room refuses new sends with an
//! `error` frame, lets its in-flight writes finish, reports its last durable `seq`, and is then
//! revoked (members closed with 1012) once the scheduler has been told.
//!
//! A room ends when it has been empty for the idle timeout (or at once while the server drains),
//! when the scheduler revokes it, when the server shuts down, when a newer placement fenced it
//! off in the store, or when it panics; in that last case its members' queues are dropped
//! without a kick notice, which their connections read as 1011.

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use berth_protocol::ErrorCode;
use berth_protocol::frames::{
    ChatMessage, MAX_RESUME_MESSAGES, MAX_WELCOME_READS, ReadPosition, ServerFrame, User,
};
use berth_store::{RoomAppend, Store, StoreError};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::outbound;
use crate::reads::Reads;
use crate::rooms::Rooms;
use crate::typing::Typing;
use crate::writer::{Ack, Writer};

/// Id of one WebSocket connection within the process.
pub(crate) type ConnId = u64;

/// Most connections one user may hold in one room (tabs, devices).
pub(crate) const MAX_CONNECTIONS_PER_USER: u8 = 8;
/// Commands queued to a room before senders wait.
const COMMAND_QUEUE: usize = 4096;
/// Messages a room keeps waiting for the store before it refuses more (the store is behind).
const MAX_PENDING: usize = 10_000;

/// Why the room tells a connection to go (`outbound::Sender::kick`; a queue dropped without a
/// notice means the room failed: 1011).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kick {
    /// Its outbound queue was full: close 1008.
    SlowConsumer,
    /// The room was revoked, handed over, or the server is going away: close 1012.
    Restart,
}

/// Why a join was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JoinError {
    /// 409 `room_full`, with the reason.
    Full(&'static str),
    /// The room ended before it took the join: open it again.
    Gone,
    /// The resume needs stored messages `after < seq <= up_to` that the room no longer holds in
    /// memory: read them and join again with them.
    NeedHistory { after: u64, up_to: u64 },
    /// The store could not load the room: 503 `store_unavailable`.
    StoreUnavailable,
    /// A newer placement owns the room: 421 `wrong_server`.
    Fenced,
}

/// A connection asking in.
pub(crate) struct JoinRequest {
    pub conn: ConnId,
    pub user: User,
    /// Its frames, and the room's notice when it must go.
    pub outbound: outbound::Sender,
    /// Resume after this `seq`.
    pub since: Option<u64>,
    /// Stored messages read for a resume after [`JoinError::NeedHistory`], oldest first.
    pub prefetched: Option<Vec<ChatMessage>>,
    /// Answered with the serialized `welcome`.
    pub reply: oneshot::Sender<Result<Utf8Bytes, JoinError>>,
}

/// What connections and the server ask of a room (through [`RoomHandle`]).
enum Command {
    Join(JoinRequest),
    Leave(ConnId),
    Send {
        conn: ConnId,
        text: String,
        client_id: Option<String>,
    },
    /// The connection's user has read up to `seq`.
    Read {
        conn: ConnId,
        seq: u64,
    },
    /// The connection's user is typing (or stopped).
    Typing {
        conn: ConnId,
        active: bool,
    },
    /// Placed elsewhere by the scheduler: close every member with 1012 and end.
    Revoke,
    /// The server drains: stop taking messages, finish the writes in flight, then answer with
    /// the last durable `seq` (the room keeps its members until it is revoked).
    HandOff(oneshot::Sender<u64>),
    /// A message sent over HTTP by someone who need not be a member (`http_send`).
    Post(PostRequest),
}

/// A message sent over HTTP: the same path as a member's `send`, answered with the stored
/// `message` frame or the refusal a member would have got as an `error` frame.
pub(crate) struct PostRequest {
    pub user: User,
    pub text: String,
    pub client_id: Option<String>,
    pub reply: oneshot::Sender<Result<Utf8Bytes, PostRefused>>,
}

/// Why a message sent over HTTP was not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PostRefused {
    pub code: ErrorCode,
    pub message: String,
}

/// Who sent a message: a member's connection (refusals go to it as `error` frames) or an HTTP
/// request waiting for the outcome.
enum Origin {
    Member(ConnId),
    Http(oneshot::Sender<Result<Utf8Bytes, PostRefused>>),
}

/// How a room task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Empty for the idle timeout (or while draining): tell the scheduler it is released.
    Disposed,
    Revoked,
    /// The server closed everything.
    Shutdown,
    /// The store could not load the room; it stays placed here and opens again on the next join.
    Unavailable,
    /// A newer placement claimed the room in the store: this one must not serve it.
    Fenced,
}

/// Numbers the room publishes for heartbeats.
#[derive(Default)]
pub(crate) struct RoomStats {
    users: AtomicU32,
}

/// The room ended before it took the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RoomGone;

/// A cheap, clonable address of a running room.
#[derive(Clone)]
pub(crate) struct RoomHandle {
    pub id: Arc<str>,
    pub epoch: u64,
    /// Tells this incarnation of the room from a later one with the same id.
    pub instance: u64,
    tx: mpsc::Sender<Command>,
    stats: Arc<RoomStats>,
}

impl RoomHandle {
    /// Asks the room to admit connection `conn` of `user`, whose frames and eviction notice go
    /// to `outbound`; on success the answer is the `welcome` frame.
    pub async fn join(
        &self,
        conn: ConnId,
        user: User,
        outbound: outbound::Sender,
        since: Option<u64>,
        prefetched: Option<Vec<ChatMessage>>,
    ) -> Result<Utf8Bytes, JoinError> {
        let (reply, reply_rx) = oneshot::channel();
        let request = JoinRequest {
            conn,
            user,
            outbound,
            since,
            prefetched,
            reply,
        };
        if self.tx.send(Command::Join(request)).await.is_err() {
            return Err(JoinError::Gone);
        }
        reply_rx.await.unwrap_or(Err(JoinError::Gone))
    }

    /// Passes a member's message to the room (waiting while its queue is full); `Err` when the
    /// room is gone.
    pub async fn send(
        &self,
        conn: ConnId,
        text: String,
        client_id: Option<String>,
    ) -> Result<(), RoomGone> {
        let cmd = Command::Send {
            conn,
            text,
            client_id,
        };
        self.tx.send(cmd).await.map_err(|_| RoomGone)
    }

    /// Connection `conn`'s user has read up to `seq`.
    pub async fn read(&self, conn: ConnId, seq: u64) -> Result<(), RoomGone> {
        let cmd = Command::Read { conn, seq };
        self.tx.send(cmd).await.map_err(|_| RoomGone)
    }

    /// Connection `conn`'s user is typing (or stopped).
    pub async fn typing(&self, conn: ConnId, active: bool) -> Result<(), RoomGone> {
        let cmd = Command::Typing { conn, active };
        self.tx.send(cmd).await.map_err(|_| RoomGone)
    }

    /// Tells the room that `conn` left, without waiting. Queued behind the connection's
    /// earlier commands, so that its last sends are not lost.
    pub fn leave(&self, conn: ConnId) {
        if let Err(mpsc::error::TrySendError::Full(cmd)) = self.tx.try_send(Command::Leave(conn)) {
            let tx = self.tx.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = tx.send(cmd).await;
                });
            }
        }
    }

    /// Passes a message sent over HTTP to the room and waits for its outcome; `None` when the
    /// room ended before it answered.
    pub async fn post(
        &self,
        user: User,
        text: String,
        client_id: Option<String>,
    ) -> Option<Result<Utf8Bytes, PostRefused>> {
        let (reply, answer) = oneshot::channel();
        let post = PostRequest {
            user,
            text,
            client_id,
            reply,
        };
        self.tx.send(Command::Post(post)).await.ok()?;
        answer.await.ok()
    }

    /// Distinct users present.
    pub fn users(&self) -> u32 {
        self.stats.users.load(Ordering::Relaxed)
    }

    /// Closes the room's members with 1012 and ends it (without waiting).
    pub fn revoke(&self) {
        if let Err(mpsc::error::TrySendError::Full(cmd)) = self.tx.try_send(Command::Revoke) {
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(cmd).await;
            });
        }
    }

    /// Asks the room to stop taking messages and flush; answers with its last durable `seq`,
    /// or `None` when the room ended first.
    pub async fn hand_off(&self) -> Option<u64> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::HandOff(tx)).await.ok()?;
        rx.await.ok()
    }
}

/// What every room of a server shares.
#[derive(Clone)]
pub(crate) struct RoomSettings {
    pub server_id: Arc<str>,
    pub members_per_room: u32,
    pub history: usize,
    /// Bound on the serialized history of one `welcome`: the newest messages that fit.
    pub welcome_history_bytes: usize,
    pub idle: Duration,
    pub panic_text: Option<Arc<str>>,
    pub metrics: Arc<Metrics>,
    pub rooms: Arc<Rooms>,
    /// Where messages are made durable; `None` without a store.
    pub durability: Option<Durability>,
    /// Cancelled when the server drains: empty rooms end at once.
    pub draining: CancellationToken,
    /// Cancelled when the server closes everything.
    pub close_all: CancellationToken,
    /// A typing state not renewed for this long ends.
    pub typing_timeout: Duration,
    /// How often members' connections ping their clients: one timer per room, which asks every
    /// member's connection (`outbound::Sender::ping`), rather than one per connection.
    pub ping_interval: Duration,
    /// Where room events go out as webhooks; `None` without webhook URLs.
    pub webhooks: Option<Arc<crate::webhook::Webhooks>>,
    /// Set while the server's lease with the scheduler has run out: no message is accepted
    /// (another server may own the room by now), members stay until the grace ends.
    pub fenced: Arc<std::sync::atomic::AtomicBool>,
}

/// The store (reads) and the group-commit writer (appends).
#[derive(Clone)]
pub(crate) struct Durability {
    pub store: Store,
    pub writer: Writer,
}

/// Creates a room and returns its handle and the future that runs it (for the caller to spawn).
pub(crate) fn new(
    id: Arc<str>,
    epoch: u64,
    instance: u64,
    settings: RoomSettings,
) -> (RoomHandle, impl Future<Output = Exit> + Send + 'static) {
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let stats = Arc::new(RoomStats::default());
    let handle = RoomHandle {
        id: id.clone(),
        epoch,
        instance,
        tx,
        stats: stats.clone(),
    };
    let room = Room {
        id,
        epoch,
        instance,
        members: HashMap::new(),
        users: HashMap::new(),
        history: VecDeque::with_capacity(settings.history.min(128)),
        seq: 0,
        durable: 0,
        pending: VecDeque::new(),
        in_flight: 0,
        ack_tx,
        hand_off: None,
        stats,
        pending_kicks: Vec::new(),
        corked: Vec::new(),
        uncorking: Vec::new(),
        corked_events: 0,
        reads: Reads::default(),
        typing: Typing::new(settings.typing_timeout),
        busy: false,
        settings,
    };
    (handle, room.run(rx, ack_rx))
}

struct Member {
    user: Arc<User>,
    /// Its frames, its ping requests and its kick notice.
    tx: outbound::Sender,
}

/// A frame the room holds until it uncorks (see [`Room::uncork`]), and who gets it. The room
/// keeps one list, not one per member: an idle member holds nothing.
struct Corked {
    frame: Utf8Bytes,
    to: To,
}

enum To {
    /// Every member but this connection (none: every member).
    AllBut(Option<ConnId>),
    /// This connection alone.
    Only(ConnId),
    /// Every member but this user's connections.
    NotUser(Arc<User>),
}

impl To {
    fn includes(&self, conn: ConnId, user: &User) -> bool {
        match self {
            To::AllBut(except) => *except != Some(conn),
            To::Only(only) => *only == conn,
            To::NotUser(not) => not.user_id != user.user_id,
        }
    }
}

/// Largest room whose broadcasts are written to waiting members' sockets by the room itself
/// (`outbound`). A larger room queues them to its connections, which spread the writes over the
/// runtime's threads.
const DIRECT_WRITE_MEMBERS: usize = 64;

/// Most events (messages, acknowledgements, joins) a room handles while holding frames corked
/// before it writes them anyway.
const MAX_CORKED_EVENTS: u32 = 16;

/// A user present in the room, found by its id: the user's one copy is the key, so presence
/// costs no copy of the id.
struct Present(Arc<User>);

impl Borrow<str> for Present {
    fn borrow(&self) -> &str {
        &self.0.user_id
    }
}

impl Hash for Present {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `str` hashes, so that lookups by `&str` find it.
        self.0.user_id.as_str().hash(state);
    }
}

impl PartialEq for Present {
    fn eq(&self, other: &Self) -> bool {
        self.0.user_id == other.0.user_id
    }
}

impl Eq for Present {}

/// An accepted message waiting for the store.
struct Pending {
    msg: Arc<ChatMessage>,
    /// Its `message` frame, serialized once.
    frame: Utf8Bytes,
    sender: Origin,
}

/// A hand-off under way: refuse sends; answer once nothing is in flight.
struct HandOff {
    flushed: Option<oneshot::Sender<u64>>,
}

struct Room {
    id: Arc<str>,
    epoch: u64,
    instance: u64,
    members: HashMap<ConnId, Member>,
    /// Each user present and how many connections it has here (a user counts once).
    users: HashMap<Present, u8>,
    /// The newest durable messages (at most `settings.history`).
    history: VecDeque<Arc<ChatMessage>>,
    /// The last `seq` handed out (durable or pending).
    seq: u64,
    /// The last `seq` made durable and broadcast.
    durable: u64,
    /// Accepted messages not yet durable, in `seq` order.
    pending: VecDeque<Pending>,
    /// How many of `pending` (from the front) the writer is storing now; 0 when idle.
    in_flight: usize,
    ack_tx: mpsc::UnboundedSender<Ack>,
    hand_off: Option<HandOff>,
    stats: Arc<RoomStats>,
    /// Members found slow while uncorking, removed once it is over.
    pending_kicks: Vec<ConnId>,
    /// Frames held for members until the room uncorks ([`Room::uncork`]), in order.
    corked: Vec<Corked>,
    /// The frames of one member while uncorking (kept for its capacity).
    uncorking: Vec<Utf8Bytes>,
    /// Events handled since the room last uncorked.
    corked_events: u32,
    /// Read positions (stored with the messages) and who is typing (never stored).
    reads: Reads,
    typing: Typing,
    /// A submission (messages and/or read positions) is with the writer.
    busy: bool,
    settings: RoomSettings,
}

/// `welcome` serialized from borrowed state; its JSON is exactly [`ServerFrame::Welcome`]'s
/// (a unit test holds the two together), without cloning the history.
#[derive(Serialize)]
#[serde(tag = "type", rename = "welcome", rename_all = "camelCase")]
struct WelcomeRef<'a> {
    room_id: &'a str,
    you: &'a User,
    members: Vec<&'a User>,
    history: Vec<&'a ChatMessage>,
    seq: u64,
    server_id: &'a str,
    epoch: Option<u64>,
    reads: Vec<ReadPosition>,
}

/// Drops the oldest of `history` until its JSON takes at most `budget` bytes, so that one
/// `welcome` (which a client that never reads can pin) stays small; clients page the rest over
/// HTTP. Runs on joins only, never on the message path.
fn keep_newest_within(history: &mut Vec<&ChatMessage>, budget: usize) {
    let mut total = 0usize;
    let keep = history
        .iter()
        .rev()
        .take_while(|m| {
            // +1 for the comma between array elements.
            total = total.saturating_add(json_len(m).saturating_add(1));
            total <= budget
        })
        .count();
    history.drain(..history.len() - keep);
}

/// Length of `value`'s JSON, counted without building it.
fn json_len(value: &impl Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// A serialized `error` frame; `client_id` names the refused `send` when it had one.
pub(crate) fn error_frame(code: ErrorCode, message: String, client_id: Option<&str>) -> Utf8Bytes {
    let frame = ServerFrame::Error {
        code: code.as_str().to_owned(),
        message,
        client_id: client_id.map(str::to_owned),
    };
    Utf8Bytes::from(serde_json::to_string(&frame).expect("frames serialize"))
}

/// What a sender learns when its message was not stored (the `clientId`, when it gave one, is
/// named so that it can match the refusal to its send).
fn not_stored(why: &str, client_id: Option<&str>) -> Utf8Bytes {
    let id = client_id
        .map(|c| format!(" (clientId {c})"))
        .unwrap_or_default();
    error_frame(
        ErrorCode::StoreUnavailable,
        format!("message not stored{id}: {why}; nobody received it, send it again"),
        client_id,
    )
}

impl Room {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut acks: mpsc::UnboundedReceiver<Ack>,
    ) -> Exit {
        if let Err(exit) = self.load().await {
            let refusal = if exit == Exit::Fenced {
                JoinError::Fenced
            } else {
                JoinError::StoreUnavailable
            };
            self.settings.rooms.remove_instance(&self.id, self.instance);
            rx.close();
            while let Some(cmd) = rx.recv().await {
                if let Command::Join(join) = cmd {
                    let _ = join.reply.send(Err(refusal.clone()));
                }
            }
            return exit;
        }
        // Child tokens: each room waits on its own node, not on one lock shared by all rooms.
        let draining = self.settings.draining.child_token();
        let close_all = self.settings.close_all.child_token();
        let drain = draining.cancelled();
        let closed = close_all.cancelled();
        let idle = tokio::time::sleep(self.settings.idle);
        tokio::pin!(drain, closed, idle);
        let period = self.settings.ping_interval;
        let mut ping = tokio::time::interval_at(Instant::now() + period, period);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::debug!(room_id = %self.id, epoch = self.epoch, seq = self.seq, "room opened");
        loop {
            if !self.corked.is_empty() {
                self.corked_events += 1;
                if self.corked_events > MAX_CORKED_EVENTS {
                    self.uncork();
                }
            }
            let empty = self.members.is_empty();
            // An empty room may end only once nothing waits for the store.
            let settled = empty && self.pending.is_empty() && !self.busy && !self.reads.has_dirty();
            let typing_ends = self.typing.next_deadline();
            tokio::select! {
                biased;
                () = &mut closed => {
                    self.kick_all(Kick::Restart);
                    return Exit::Shutdown;
                }
                Some(ack) = acks.recv() => {
                    if let Some(exit) = self.stored(ack) {
                        self.settings.rooms.remove_instance(&self.id, self.instance);
                        return exit;
                    }
                    if !empty && self.members.is_empty() {
                        idle.as_mut().reset(Instant::now() + self.settings.idle);
                    }
                }
                cmd = rx.recv() => match cmd {
                    Some(Command::Revoke) => {
                        self.kick_all(Kick::Restart);
                        return Exit::Revoked;
                    }
                    Some(cmd) => {
                        self.handle(cmd);
                        if !empty && self.members.is_empty() {
                            idle.as_mut().reset(Instant::now() + self.settings.idle);
                        }
                    }
                    // Every handle is gone: nobody can reach the room any more.
                    None => return Exit::Shutdown,
                },
                () = tokio::time::sleep_until(typing_ends.unwrap_or_else(Instant::now)),
                    if typing_ends.is_some() =>
                {
                    for user in self.typing.expired(Instant::now()) {
                        self.broadcast_typing(&user, false);
                    }
                }
                _ = ping.tick() => {
                    for member in self.members.values() {
                        member.tx.ping();
                    }
                }
                () = &mut idle, if settled => break,
                () = &mut drain, if settled && self.hand_off.is_none() => break,
                // Last: the tasks ready now run first (see `uncork`).
                () = tokio::task::yield_now(), if !self.corked.is_empty() => self.uncork(),
            }
        }
        // Disposal: leave the directory first so no new join finds this room, then turn away
        // joins that were already queued (their connections open the room again).
        self.settings.rooms.remove_instance(&self.id, self.instance);
        rx.close();
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Command::Join(join) => {
                    let _ = join.reply.send(Err(JoinError::Gone));
                }
                Command::HandOff(flushed) => {
                    let _ = flushed.send(self.durable);
                }
                _ => {}
            }
        }
        Exit::Disposed
    }

    /// Loads the last `seq` and recent history from the store, claiming the placement's fence.
    async fn load(&mut self) -> Result<(), Exit> {
        let Some(durability) = &self.settings.durability else {
            return Ok(());
        };
        match durability
            .store
            .open_room(&self.id, self.epoch, self.settings.history)
            .await
        {
            Ok(opened) => {
                self.seq = opened.last_seq;
                self.durable = opened.last_seq;
                self.history.extend(opened.recent.into_iter().map(Arc::new));
                match durability
                    .store
                    .read_positions(&self.id, MAX_WELCOME_READS)
                    .await
                {
                    Ok(stored) => self.reads.load(stored),
                    Err(e) => {
                        tracing::warn!(room_id = %self.id, error = %e, "cannot load read positions");
                        return Err(Exit::Unavailable);
                    }
                }
                Ok(())
            }
            Err(StoreError::Fenced(_)) => {
                tracing::warn!(room_id = %self.id, epoch = self.epoch, "a newer placement owns the room; not opening it");
                Err(Exit::Fenced)
            }
            Err(e) => {
                tracing::warn!(room_id = %self.id, error = %e, "cannot load the room from the store");
                Err(Exit::Unavailable)
            }
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Join(join) => {
                let reply = self.join(join);
                match reply {
                    // A join whose asker went away is undone by that connection's `Leave`.
                    Ok((welcome, reply)) => {
                        let _ = reply.send(Ok(welcome));
                    }
                    Err((e, reply)) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::Leave(conn) => {
                self.remove_member(conn, None);
            }
            Command::Send {
                conn,
                text,
                client_id,
            } => {
                // A member dropped meanwhile (slow, revoked) may still have sends in flight.
                if let Some(member) = self.members.get(&conn) {
                    let user = member.user.clone();
                    self.message(Origin::Member(conn), user, text, client_id);
                }
            }
            Command::Post(post) => {
                let user = Arc::new(post.user);
                self.message(Origin::Http(post.reply), user, post.text, post.client_id);
            }
            Command::Read { conn, seq } => self.read(conn, seq),
            Command::Typing { conn, active } => self.typing(conn, active),
            Command::HandOff(flushed) => {
                self.hand_off = Some(HandOff {
                    flushed: Some(flushed),
                });
                self.check_flushed();
            }
            Command::Revoke => {}
        }
    }

    /// The messages a resume after `since` gets, oldest first; `Err` when the store must be read
    /// first.
    fn resume<'a>(
        &'a self,
        since: u64,
        prefetched: Option<&'a [ChatMessage]>,
    ) -> Result<Vec<&'a ChatMessage>, JoinError> {
        let from = since.max(self.durable.saturating_sub(MAX_RESUME_MESSAGES as u64));
        if from >= self.durable {
            return Ok(Vec::new());
        }
        let first_in_memory = self.history.front().map_or(self.durable + 1, |m| m.seq);
        let memory = self.history.iter().filter(|m| m.seq > from).map(|m| &**m);
        if first_in_memory <= from + 1 || self.settings.durability.is_none() {
            return Ok(memory.collect());
        }
        match prefetched {
            None => Err(JoinError::NeedHistory {
                after: from,
                up_to: first_in_memory - 1,
            }),
            Some(stored) => {
                // Read before this join: it ends where memory starts unless more than a whole
                // history's worth of messages came in meanwhile (then the gap is left, logged).
                let stored: Vec<&ChatMessage> = stored
                    .iter()
                    .filter(|m| m.seq > from && m.seq < first_in_memory)
                    .collect();
                if stored.last().map_or(from, |m| m.seq) + 1 < first_in_memory {
                    tracing::warn!(room_id = %self.id, since, "resume left a gap: the room moved on while reading");
                }
                Ok(stored.into_iter().chain(memory).collect())
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn join(
        &mut self,
        join: JoinRequest,
    ) -> Result<
        (Utf8Bytes, oneshot::Sender<Result<Utf8Bytes, JoinError>>),
        (JoinError, oneshot::Sender<Result<Utf8Bytes, JoinError>>),
    > {
        let JoinRequest {
            conn,
            user,
            outbound,
            since,
            prefetched,
            reply,
        } = join;
        if self.hand_off.is_some() {
            return Err((JoinError::Gone, reply));
        }
        // Frames corked before this member joined are not for it: its welcome carries what they
        // tell (the messages, who is here).
        self.uncork();
        // Everything that may refuse comes before anything changes.
        if let Some(since) = since
            && let Err(e) = self.resume(since, prefetched.as_deref())
        {
            return Err((e, reply));
        }
        let full = self.users.len() >= self.settings.members_per_room as usize;
        let present = self
            .users
            .get_key_value(user.user_id.as_str())
            .map(|(present, &connections)| (present.0.clone(), connections));
        let (user, first) = match present {
            Some((_, connections)) if connections >= MAX_CONNECTIONS_PER_USER => {
                return Err((
                    JoinError::Full("too many connections for this user in the room"),
                    reply,
                ));
            }
            Some((user, _)) => {
                if let Some(connections) = self.users.get_mut(user.user_id.as_str()) {
                    *connections += 1;
                }
                (user, false)
            }
            None if full => {
                return Err((JoinError::Full("the room is full"), reply));
            }
            None => {
                let user = Arc::new(user);
                self.users.insert(Present(user.clone()), 1);
                self.stats
                    .users
                    .store(self.users.len() as u32, Ordering::Relaxed);
                (user, true)
            }
        };
        self.members.insert(
            conn,
            Member {
                user: user.clone(),
                tx: outbound,
            },
        );
        let mut history = match since {
            Some(since) => self
                .resume(since, prefetched.as_deref())
                .unwrap_or_default(),
            None => self.history.iter().map(|m| &**m).collect(),
        };
        keep_newest_within(&mut history, self.settings.welcome_history_bytes);
        let welcome = WelcomeRef {
            room_id: &self.id,
            you: &user,
            members: self.users.keys().map(|p| &*p.0).collect(),
            history,
            seq: self.durable,
            server_id: &self.settings.server_id,
            epoch: Some(self.epoch),
            reads: self.reads.snapshot(),
        };
        let welcome = Utf8Bytes::from(serde_json::to_string(&welcome).expect("welcome serializes"));
        if first {
            self.broadcast(
                &ServerFrame::Joined {
                    user: (*user).clone(),
                },
                Some(conn),
            );
            // Joining makes the room one of the user's rooms (stored as a read position of 0).
            if self.settings.durability.is_some() {
                self.reads.joined(&user.user_id);
                self.flush_reads();
            }
        }
        Ok((welcome, reply))
    }

    /// Tells the sender of a message that was not accepted why.
    fn refuse(&mut self, origin: Origin, code: ErrorCode, frame: Utf8Bytes, message: String) {
        self.settings.metrics.refused(code);
        match origin {
            Origin::Member(conn) => {
                if self.members.contains_key(&conn) {
                    self.corked.push(Corked {
                        frame,
                        to: To::Only(conn),
                    });
                }
            }
            Origin::Http(reply) => {
                let _ = reply.send(Err(PostRefused { code, message }));
            }
        }
    }

    fn message(
        &mut self,
        origin: Origin,
        user: Arc<User>,
        text: String,
        client_id: Option<String>,
    ) {
        if self
            .settings
            .panic_text
            .as_deref()
            .is_some_and(|p| p == text)
        {
            panic!("room {}: test panic requested", self.id);
        }
        if self.hand_off.is_some() {
            let id = client_id
                .as_deref()
                .map(|c| format!(" (clientId {c})"))
                .unwrap_or_default();
            let message = format!(
                "message not accepted{id}: the room is moving to another server; send it again after reconnecting"
            );
            let frame = error_frame(
                ErrorCode::ServerDraining,
                message.clone(),
                client_id.as_deref(),
            );
            self.refuse(origin, ErrorCode::ServerDraining, frame, message);
            return;
        }
        if self
            .settings
            .fenced
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            let id = client_id
                .as_deref()
                .map(|c| format!(" (clientId {c})"))
                .unwrap_or_default();
            let message = format!(
                "message not accepted{id}: this server lost touch with the scheduler; send it again in a moment"
            );
            let frame = error_frame(
                ErrorCode::SchedulerUnavailable,
                message.clone(),
                client_id.as_deref(),
            );
            self.refuse(origin, ErrorCode::SchedulerUnavailable, frame, message);
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            let frame = not_stored("the store is behind", client_id.as_deref());
            let message = "message not stored: the store is behind; send it again".to_owned();
            self.refuse(origin, ErrorCode::StoreUnavailable, frame, message);
            return;
        }
        // Sending ends the sender's typing state.
        if let Some(typist) = self.typing.stop(&user.user_id) {
            self.broadcast_typing(&typist, false);
        }
        self.seq += 1;
        let frame = ServerFrame::Message(ChatMessage {
            seq: self.seq,
            user_id: user.user_id.clone(),
            username: user.username.clone(),
            text,
            ts: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            client_id,
        });
        let bytes = Utf8Bytes::from(serde_json::to_string(&frame).expect("frames serialize"));
        let ServerFrame::Message(msg) = frame else {
            unreachable!("built as a message")
        };
        let msg = Arc::new(msg);
        if self.settings.durability.is_none() {
            self.deliver(msg, bytes, origin);
            return;
        }
        self.pending.push_back(Pending {
            msg,
            frame: bytes,
            sender: origin,
        });
        if !self.busy {
            self.submit();
        }
    }

    /// A `read` frame: moves the user's position (never backwards, never past the last durable
    /// message), tells the others, and stores it with the next write.
    fn read(&mut self, conn: ConnId, seq: u64) {
        let Some(member) = self.members.get(&conn) else {
            return;
        };
        let user = member.user.clone();
        let seq = seq.min(self.durable);
        let store = self.settings.durability.is_some();
        if seq == 0 || !self.reads.advance(&user.user_id, seq, store) {
            return;
        }
        self.broadcast(
            &ServerFrame::Read {
                user_id: user.user_id.clone(),
                seq,
            },
            Some(conn),
        );
        self.flush_reads();
    }

    /// A `typing` frame: the others learn when the user starts or stops (renewals are silent).
    fn typing(&mut self, conn: ConnId, active: bool) {
        let Some(member) = self.members.get(&conn) else {
            return;
        };
        let user = member.user.clone();
        if active {
            if self.typing.start(&user, Instant::now()) {
                self.broadcast_typing(&user, true);
            }
        } else if let Some(user) = self.typing.stop(&user.user_id) {
            self.broadcast_typing(&user, false);
        }
    }

    /// Tells everyone but `user`'s own connections that it started or stopped typing.
    fn broadcast_typing(&mut self, user: &Arc<User>, active: bool) {
        let frame = ServerFrame::Typing {
            user: (**user).clone(),
            active,
        };
        let frame = Utf8Bytes::from(serde_json::to_string(&frame).expect("frames serialize"));
        self.corked.push(Corked {
            frame,
            to: To::NotUser(user.clone()),
        });
    }

    /// Hands moved read positions to the writer unless a submission is already in flight (its
    /// answer submits what accumulated meanwhile).
    fn flush_reads(&mut self) {
        if !self.busy && self.reads.has_dirty() {
            self.submit();
        }
    }

    /// Hands every pending message to the writer.
    fn submit(&mut self) {
        let Some(durability) = &self.settings.durability else {
            return;
        };
        let messages: Vec<Arc<ChatMessage>> = self.pending.iter().map(|p| p.msg.clone()).collect();
        let reads = self.reads.take_dirty();
        if messages.is_empty() && reads.is_empty() {
            return;
        }
        self.in_flight = messages.len();
        self.busy = true;
        let append = RoomAppend {
            room_id: self.id.clone(),
            epoch: self.epoch,
            messages,
            reads,
        };
        durability.writer.submit(append, &self.ack_tx);
    }

    /// The writer's answer for the messages in flight. `Some` when the room must end.
    fn stored(&mut self, ack: Ack) -> Option<Exit> {
        let done = std::mem::take(&mut self.in_flight);
        self.busy = false;
        self.reads.stored(ack.is_ok());
        match ack {
            Ok(()) => {
                for p in self
                    .pending
                    .drain(..done.min(self.pending.len()))
                    .collect::<Vec<_>>()
                {
                    self.deliver(p.msg, p.frame, p.sender);
                }
                if !self.pending.is_empty() || self.reads.has_dirty() {
                    self.submit();
                }
                self.check_flushed();
                None
            }
            Err(e) => {
                // Nobody saw these: tell each sender, and number from the last durable one again.
                // The store's own words (`database is locked`, a host name) go to the log only.
                tracing::warn!(room_id = %self.id, error = %e, "the store refused a batch of messages");
                let why = match &e {
                    StoreError::Fenced(_) => "the room moved to another server",
                    _ => "the message store is unavailable",
                };
                for p in std::mem::take(&mut self.pending) {
                    let frame = not_stored(why, p.msg.client_id.as_deref());
                    let message = format!("message not stored: {why}; send it again");
                    self.refuse(p.sender, ErrorCode::StoreUnavailable, frame, message);
                }
                self.seq = self.durable;
                self.check_flushed();
                if matches!(e, StoreError::Fenced(_) | StoreError::Conflict(_)) {
                    // Another placement owns the room now: its members must go there.
                    tracing::warn!(room_id = %self.id, epoch = self.epoch, error = %e, "room superseded; closing it here");
                    self.kick_all(Kick::Restart);
                    return Some(Exit::Fenced);
                }
                None
            }
        }
    }

    /// A durable message: broadcast its frame, answer its HTTP sender, and remember it.
    fn deliver(&mut self, msg: Arc<ChatMessage>, frame: Utf8Bytes, origin: Origin) {
        self.broadcast_bytes(&frame, None);
        if let Some(webhooks) = &self.settings.webhooks {
            webhooks.emit("message", &self.id, &frame);
        }
        if let Origin::Http(reply) = origin {
            self.settings
                .metrics
                .http_sends
                .fetch_add(1, Ordering::Relaxed);
            let _ = reply.send(Ok(frame));
        }
        self.durable = msg.seq;
        // A sender has read its own message (the store derives the write from the message).
        self.reads.advance(&msg.user_id, msg.seq, false);
        if self.settings.history > 0 {
            if self.history.len() >= self.settings.history {
                self.history.pop_front();
            }
            self.history.push_back(msg);
        }
    }

    /// Answers a hand-off once nothing waits for the store, and the read positions its
    /// messages imply (written by the writer every [`crate::writer::MARKS_EVERY`]) are stored
    /// too: the next owner loads them for `welcome.reads`.
    fn check_flushed(&mut self) {
        if self.pending.is_empty()
            && let Some(h) = &mut self.hand_off
            && let Some(flushed) = h.flushed.take()
        {
            let seq = self.durable;
            match &self.settings.durability {
                // Bounded by the store's own timeouts, and by the hand-off's deadline, which
                // stops waiting for the answer.
                Some(durability) => {
                    let writer = durability.writer.clone();
                    tokio::spawn(async move {
                        writer.sync_marks().await;
                        let _ = flushed.send(seq);
                    });
                }
                None => {
                    let _ = flushed.send(seq);
                }
            }
        }
    }

    /// Serializes `frame` once and queues the same bytes to every member but `except`.
    fn broadcast(&mut self, frame: &ServerFrame, except: Option<ConnId>) {
        let bytes = Utf8Bytes::from(serde_json::to_string(frame).expect("frames serialize"));
        self.broadcast_bytes(&bytes, except);
        // Presence changes go out as webhooks too.
        if let Some(webhooks) = &self.settings.webhooks {
            match frame {
                ServerFrame::Joined { .. } => webhooks.emit("joined", &self.id, &bytes),
                ServerFrame::Left { .. } => webhooks.emit("left", &self.id, &bytes),
                _ => {}
            }
        }
    }

    /// Sends `bytes` to every member but `except` (corked: see [`Room::uncork`]).
    fn broadcast_bytes(&mut self, bytes: &Utf8Bytes, except: Option<ConnId>) {
        let delivered =
            self.members.len() - usize::from(except.is_some_and(|c| self.members.contains_key(&c)));
        if delivered > 0 {
            self.corked.push(Corked {
                frame: bytes.clone(),
                to: To::AllBut(except),
            });
        }
        let delivered = delivered as u64;
        self.settings
            .metrics
            .messages_out
            .fetch_add(delivered, Ordering::Relaxed);
    }

    /// Hands every member the frames corked for it. A room does not write each frame the moment
    /// it has it: it lets the runtime run the other tasks ready first (once, or for at most
    /// [`MAX_CORKED_EVENTS`] events), so that under load the messages of the same moment go out
    /// in one write per member, as uWebSockets.js corks a socket for a turn of its event loop.
    /// A small room writes to the sockets of waiting members itself, in one `writev` each
    /// (`outbound`); other frames are queued to the member's connection. A member whose queue
    /// is full is dropped as a slow consumer (its connection ended, if it is closed: its
    /// `Leave` is on the way).
    fn uncork(&mut self) {
        while !self.corked.is_empty() {
            self.corked_events = 0;
            let mut corked = std::mem::take(&mut self.corked);
            let direct = self.members.len() <= DIRECT_WRITE_MEMBERS;
            let frames = &mut self.uncorking;
            for (&conn, member) in &self.members {
                frames.extend(
                    corked
                        .iter()
                        .filter(|c| c.to.includes(conn, &member.user))
                        .map(|c| c.frame.clone()),
                );
                if member.tx.send(frames, direct).is_err() {
                    self.pending_kicks.push(conn);
                }
                frames.clear();
            }
            corked.clear();
            self.corked = corked;
            // Dropping a member may broadcast `left`, which corks again.
            self.settle();
        }
    }

    /// Removes the members found slow while uncorking, which may broadcast `left` in turn.
    fn settle(&mut self) {
        while let Some(conn) = self.pending_kicks.pop() {
            if self.members.contains_key(&conn) {
                self.settings
                    .metrics
                    .slow_consumers
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(room_id = %self.id, conn, "dropping slow consumer");
                self.remove_member(conn, Some(Kick::SlowConsumer));
            }
        }
    }

    /// Removes one connection; when it was its user's last, the others see `left`.
    fn remove_member(&mut self, conn: ConnId, kick: Option<Kick>) {
        let Some(member) = self.members.remove(&conn) else {
            return;
        };
        if let Some(kick) = kick {
            member.tx.kick(kick);
        }
        let user_id = &member.user.user_id;
        let last = match self.users.get_mut(user_id.as_str()) {
            Some(connections) if *connections > 1 => {
                *connections -= 1;
                false
            }
            Some(_) => true,
            None => false,
        };
        if last {
            if let Some(user) = self.typing.stop(user_id) {
                self.broadcast_typing(&user, false);
            }
            self.users.remove(user_id.as_str());
            self.stats
                .users
                .store(self.users.len() as u32, Ordering::Relaxed);
            self.broadcast(
                &ServerFrame::Left {
                    user: (*member.user).clone(),
                },
                None,
            );
        }
    }

    fn kick_all(&mut self, kick: Kick) {
        for (_, member) in self.members.drain() {
            member.tx.kick(kick);
        }
        self.users.clear();
        self.stats.users.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> User {
        User {
            user_id: id.into(),
            username: format!("name-{id}"),
        }
    }

    #[test]
    fn welcome_ref_matches_the_protocol_type() {
        let history: Vec<ChatMessage> = vec![ChatMessage {
            seq: 3,
            user_id: "u-1".into(),
            username: "a".into(),
            text: "hi".into(),
            ts: "2026-01-01T00:00:00.000Z".into(),
            client_id: None,
        }];
        let (you, other) = (user("u-1"), user("u-2"));
        let json = serde_json::to_string(&WelcomeRef {
            room_id: "r-1",
            you: &you,
            members: vec![&you, &other],
            history: history.iter().collect(),
            seq: 3,
            server_id: "s-1",
            epoch: Some(7),
            reads: vec![ReadPosition {
                user_id: "u-2".into(),
                seq: 2,
            }],
        })
        .unwrap();
        let parsed: ServerFrame = serde_json::from_str(&json).unwrap();
        assert_eq!(
            parsed,
            ServerFrame::Welcome {
                room_id: "r-1".into(),
                you: you.clone(),
                members: vec![you, other],
                history,
                seq: 3,
                server_id: "s-1".into(),
                epoch: Some(7),
                reads: vec![ReadPosition {
                    user_id: "u-2".into(),
                    seq: 2,
                }],
            }
        );
    }

    struct TestRoom {
        handle: RoomHandle,
        task: tokio::task::JoinHandle<Exit>,
    }

    #[test]
    fn welcome_history_keeps_the_newest_messages_within_the_byte_budget() {
        let msgs: Vec<ChatMessage> = (1..=10)
            .map(|seq| ChatMessage {
                seq,
                user_id: "u".into(),
                username: "a".into(),
                // Each escapes to 6 bytes per character.
                text: "\u{1}".repeat(100),
                ts: "2026-01-01T00:00:00Z".into(),
                client_id: None,
            })
            .collect();
        let one = json_len(&msgs[0]) + 1;
        assert!(one > 600, "{one}");
        let mut history: Vec<&ChatMessage> = msgs.iter().collect();
        keep_newest_within(&mut history, one * 3 + 1);
        assert_eq!(
            history.iter().map(|m| m.seq).collect::<Vec<_>>(),
            [8, 9, 10]
        );
        let mut history: Vec<&ChatMessage> = msgs.iter().collect();
        keep_newest_within(&mut history, 10);
        assert!(history.is_empty());
        let mut history: Vec<&ChatMessage> = msgs.iter().collect();
        keep_newest_within(&mut history, usize::MAX);
        assert_eq!(history.len(), 10);
    }

    fn start(members_per_room: u32, history: usize) -> TestRoom {
        start_with(members_per_room, history, None, 1)
    }

    fn start_with(
        members_per_room: u32,
        history: usize,
        durability: Option<Durability>,
        epoch: u64,
    ) -> TestRoom {
        let settings = RoomSettings {
            server_id: "s-1".into(),
            members_per_room,
            history,
            welcome_history_bytes: 1 << 20,
            idle: Duration::from_secs(60),
            panic_text: None,
            metrics: Arc::new(Metrics::default()),
            rooms: Arc::new(Rooms::default()),
            durability,
            draining: CancellationToken::new(),
            close_all: CancellationToken::new(),
            typing_timeout: Duration::from_millis(200),
            ping_interval: Duration::from_secs(15),
            webhooks: None,
            fenced: Arc::default(),
        };
        let (handle, run) = new("r-1".into(), epoch, 1, settings);
        TestRoom {
            handle,
            task: tokio::spawn(run),
        }
    }

    struct TestMember {
        rx: outbound::Receiver,
        kick: outbound::Notice,
        welcome: serde_json::Value,
    }

    async fn join(
        room: &TestRoom,
        conn: ConnId,
        u: User,
        queue: usize,
    ) -> Result<TestMember, JoinError> {
        join_since(room, conn, u, queue, None, None).await
    }

    async fn join_since(
        room: &TestRoom,
        conn: ConnId,
        u: User,
        queue: usize,
        since: Option<u64>,
        prefetched: Option<Vec<ChatMessage>>,
    ) -> Result<TestMember, JoinError> {
        let (tx, rx, kick) = outbound::channel(queue);
        let welcome = room.handle.join(conn, u, tx, since, prefetched).await?;
        Ok(TestMember {
            rx,
            kick,
            welcome: serde_json::from_str(&welcome).unwrap(),
        })
    }

    async fn send(room: &TestRoom, conn: ConnId, text: &str) {
        let cmd = Command::Send {
            conn,
            text: text.into(),
            client_id: None,
        };
        room.handle.tx.send(cmd).await.unwrap();
    }

    /// Waits until the room has handled everything queued before.
    async fn sync(room: &TestRoom) {
        let (tx, _rx, _) = outbound::channel(1);
        let _ = room
            .handle
            .join(u64::MAX, user("sync"), tx, None, None)
            .await;
        room.handle.tx.send(Command::Leave(u64::MAX)).await.unwrap();
    }

    #[tokio::test]
    async fn presence_counts_a_user_once() {
        let room = start(10, 10);
        let mut a = join(&room, 1, user("u-a"), 16).await.unwrap();
        let _b1 = join(&room, 2, user("u-b"), 16).await.unwrap();
        assert_eq!(next_async(&mut a).await["type"], "joined");
        let b2 = join(&room, 3, user("u-b"), 16).await.unwrap();
        assert_eq!(b2.welcome["members"].as_array().unwrap().len(), 2);
        assert_eq!(room.handle.users(), 2);
        room.handle.tx.send(Command::Leave(3)).await.unwrap();
        send(&room, 1, "x").await;
        // No `left` for the second tab: the next frame is the message.
        let frame = next_async(&mut a).await;
        assert_eq!(frame["type"], "message");
        room.handle.tx.send(Command::Leave(2)).await.unwrap();
        let frame = next_async(&mut a).await;
        assert_eq!(frame["type"], "left");
        assert_eq!(frame["user"]["userId"], "u-b");
        assert_eq!(room.handle.users(), 1);
        room.task.abort();
    }

    #[tokio::test]
    async fn a_member_joining_while_frames_are_corked_gets_none_of_them() {
        let room = start(10, 10);
        let mut a = join(&room, 1, user("u-a"), 16).await.unwrap();
        // The room handles both before it uncorks: message 1 is corked when b joins.
        send(&room, 1, "before").await;
        let mut b = join(&room, 2, user("u-b"), 16).await.unwrap();
        assert_eq!(seqs(&b.welcome["history"]), [1]);
        send(&room, 1, "after").await;
        let frame = next_async(&mut b).await;
        assert_eq!(frame["type"], "message");
        assert_eq!(frame["seq"], 2, "{frame}");
        // The member already there got both, once each, then b's arrival in between.
        let types: Vec<_> = [
            next_async(&mut a).await,
            next_async(&mut a).await,
            next_async(&mut a).await,
        ]
        .iter()
        .map(|f| format!("{} {}", f["type"], f["seq"]))
        .collect();
        assert_eq!(types, ["\"message\" 1", "\"joined\" null", "\"message\" 2"]);
        room.task.abort();
    }

    async fn next_async(m: &mut TestMember) -> serde_json::Value {
        let bytes = tokio::time::timeout(Duration::from_secs(5), m.rx.recv())
            .await
            .unwrap()
            .unwrap();
        serde_json::from_str(&bytes).unwrap()
    }

    #[tokio::test]
    async fn limits_users_and_connections_per_user() {
        let room = start(1, 10);
        let _a = join(&room, 1, user("u-a"), 16).await.unwrap();
        assert!(matches!(
            join(&room, 2, user("u-b"), 16).await,
            Err(JoinError::Full(_))
        ));
        let mut tabs = Vec::new();
        for conn in 2..2 + u64::from(MAX_CONNECTIONS_PER_USER) - 1 {
            tabs.push(join(&room, conn, user("u-a"), 16).await.unwrap());
        }
        assert!(matches!(
            join(&room, 100, user("u-a"), 16).await,
            Err(JoinError::Full(_))
        ));
        room.task.abort();
    }

    #[tokio::test]
    async fn slow_member_is_kicked_and_others_keep_receiving() {
        let room = start(10, 10);
        let mut fast = join(&room, 1, user("u-a"), 64).await.unwrap();
        let mut slow = join(&room, 2, user("u-b"), 1).await.unwrap();
        assert_eq!(next_async(&mut fast).await["type"], "joined");
        for i in 0..5 {
            send(&room, 1, &format!("m{i}")).await;
        }
        sync(&room).await;
        assert_eq!((&mut slow.kick).await.unwrap(), Kick::SlowConsumer);
        assert!(slow.rx.try_recv().is_some(), "it got the frame that fitted");
        let mut seqs = Vec::new();
        while let Some(bytes) = fast.rx.try_recv() {
            let v: serde_json::Value = serde_json::from_str(&bytes).unwrap();
            if v["type"] == "message" {
                seqs.push(v["seq"].as_u64().unwrap());
            }
        }
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
        room.task.abort();
    }

    #[tokio::test]
    async fn history_is_capped() {
        let room = start(10, 3);
        let _a = join(&room, 1, user("u-a"), 64).await.unwrap();
        for i in 0..5 {
            send(&room, 1, &format!("m{i}")).await;
        }
        let late = join(&room, 2, user("u-b"), 16).await.unwrap();
        let texts: Vec<_> = late.welcome["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["text"].clone())
            .collect();
        assert_eq!(texts, ["m2", "m3", "m4"]);
        assert_eq!(late.welcome["seq"], 5);
        room.task.abort();
    }

    // --- durability

    async fn sqlite() -> (Store, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "berth-room-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        (Store::sqlite(dir.join("berth.db")).await.unwrap(), dir)
    }

    /// The writer holds marks for an hour, so that a test sees when something else writes them.
    fn durability(store: &Store) -> Durability {
        let (writer, _task) = Writer::start_every(
            store.clone(),
            Arc::new(Metrics::default()),
            CancellationToken::new(),
            Duration::from_secs(3600),
        );
        Durability {
            store: store.clone(),
            writer,
        }
    }

    fn seqs(history: &serde_json::Value) -> Vec<u64> {
        history
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect()
    }

    /// Frames of `m` until a `message` with `seq`, returning the message seqs seen.
    async fn messages_until(m: &mut TestMember, seq: u64) -> Vec<u64> {
        let mut seen = Vec::new();
        loop {
            let frame = next_async(m).await;
            if frame["type"] == "message" {
                let s = frame["seq"].as_u64().unwrap();
                seen.push(s);
                if s >= seq {
                    return seen;
                }
            }
        }
    }

    #[tokio::test]
    async fn messages_are_stored_before_delivery_and_seq_continues_after_reopening() {
        let (store, dir) = sqlite().await;
        let room = start_with(10, 3, Some(durability(&store)), 5);
        let mut a = join(&room, 1, user("u-a"), 64).await.unwrap();
        for i in 0..5 {
            send(&room, 1, &format!("m{i}")).await;
        }
        assert_eq!(messages_until(&mut a, 5).await, [1, 2, 3, 4, 5]);
        // Everything delivered is in the store.
        assert_eq!(
            store
                .messages_between("r-1", 0, 100, 100)
                .await
                .unwrap()
                .len(),
            5
        );
        room.task.abort();

        // A later placement loads the history and continues the numbering; the old one is fenced.
        let again = start_with(10, 3, Some(durability(&store)), 6);
        let mut b = join(&again, 1, user("u-b"), 64).await.unwrap();
        assert_eq!(
            (b.welcome["seq"].as_u64(), seqs(&b.welcome["history"])),
            (Some(5), vec![3, 4, 5])
        );
        assert_eq!(b.welcome["epoch"], 6);
        send(&again, 1, "after").await;
        assert_eq!(messages_until(&mut b, 6).await, [6]);
        let stale = start_with(10, 3, Some(durability(&store)), 5);
        assert_eq!(
            join(&stale, 1, user("u-c"), 8).await.err(),
            Some(JoinError::Fenced)
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn resume_gets_exactly_the_messages_after_since_from_memory_or_the_store() {
        let (store, dir) = sqlite().await;
        let room = start_with(10, 3, Some(durability(&store)), 1);
        let mut a = join(&room, 1, user("u-a"), 64).await.unwrap();
        for i in 0..10 {
            send(&room, 1, &format!("m{i}")).await;
        }
        messages_until(&mut a, 10).await;
        // Memory covers 8..=10.
        let b = join_since(&room, 2, user("u-b"), 16, Some(7), None)
            .await
            .unwrap();
        assert_eq!(seqs(&b.welcome["history"]), [8, 9, 10]);
        let c = join_since(&room, 3, user("u-c"), 16, Some(10), None)
            .await
            .unwrap();
        assert!(seqs(&c.welcome["history"]).is_empty());
        // Further back: the room asks for the stored part…
        let need = join_since(&room, 4, user("u-d"), 16, Some(2), None)
            .await
            .err();
        assert_eq!(need, Some(JoinError::NeedHistory { after: 2, up_to: 7 }));
        // …and joins with it, without a gap or a duplicate.
        let stored = store
            .messages_between("r-1", 2, 7, MAX_RESUME_MESSAGES)
            .await
            .unwrap();
        let d = join_since(&room, 4, user("u-d"), 16, Some(2), Some(stored))
            .await
            .unwrap();
        assert_eq!(seqs(&d.welcome["history"]), (3..=10).collect::<Vec<_>>());
        assert_eq!(d.welcome["seq"], 10);
        room.task.abort();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_refused_write_tells_the_sender_and_leaves_no_gap() {
        let (store, dir) = sqlite().await;
        let room = start_with(10, 10, Some(durability(&store)), 1);
        let mut a = join(&room, 1, user("u-a"), 64).await.unwrap();
        send(&room, 1, "kept").await;
        assert_eq!(messages_until(&mut a, 1).await, [1]);
        let blocker = rusqlite::Connection::open(dir.join("berth.db")).unwrap();
        blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let cmd = Command::Send {
            conn: 1,
            text: "lost".into(),
            client_id: Some("c-9".into()),
        };
        room.handle.tx.send(cmd).await.unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(30), a.rx.recv())
            .await
            .unwrap()
            .unwrap();
        let frame: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(
            (frame["type"].as_str(), frame["code"].as_str()),
            (Some("error"), Some("store_unavailable"))
        );
        assert!(
            frame["message"].as_str().unwrap().contains("c-9"),
            "{frame}"
        );
        blocker.execute_batch("ROLLBACK").unwrap();
        // The numbering goes on from the last stored message.
        send(&room, 1, "next").await;
        let frame = next_async(&mut a).await;
        assert_eq!(
            (frame["seq"].as_u64(), frame["text"].as_str()),
            (Some(2), Some("next"))
        );
        room.task.abort();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_hand_off_refuses_sends_and_reports_the_last_stored_seq() {
        let (store, dir) = sqlite().await;
        let room = start_with(10, 10, Some(durability(&store)), 1);
        let mut a = join(&room, 1, user("u-a"), 64).await.unwrap();
        for i in 0..3 {
            send(&room, 1, &format!("m{i}")).await;
        }
        assert_eq!(room.handle.hand_off().await, Some(3));
        // The sender's own position, which the writer holds for up to its interval, is stored
        // by the time the hand-off answers.
        assert_eq!(
            store.read_positions("r-1", 10).await.unwrap(),
            [("u-a".to_owned(), 3)]
        );
        assert_eq!(messages_until(&mut a, 3).await, [1, 2, 3]);
        send(&room, 1, "too late").await;
        let frame = next_async(&mut a).await;
        assert_eq!(
            (frame["type"].as_str(), frame["code"].as_str()),
            (Some("error"), Some("server_draining"))
        );
        room.handle.revoke();
        assert_eq!((&mut a.kick).await.unwrap(), Kick::Restart);
        assert_eq!(room.task.await.unwrap(), Exit::Revoked);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
