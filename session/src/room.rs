//! One room = one task that owns the room's whole state: members, presence, history and `seq`.
//!
//! Connections talk to it through [`RoomHandle`] (an mpsc of [`Command`]s) and receive from it
//! through their own bounded outbound queue of shared frames. Every frame the room broadcasts is
//! serialized once; recipients get a clone of the same refcounted bytes. The room never awaits a
//! member: it `try_send`s, and a member whose queue is full is dropped as a slow consumer.
//!
//! A room ends when it has been empty for the idle timeout (or at once while the server drains),
//! when the scheduler revokes it, when the server shuts down, or when it panics; in that last
//! case its members' kick channels are dropped unsent, which their connections read as 1011.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use berth_protocol::frames::{ChatMessage, ServerFrame, User};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::rooms::Rooms;

/// Id of one WebSocket connection within the process.
pub(crate) type ConnId = u64;

/// Most connections one user may hold in one room (tabs, devices).
pub(crate) const MAX_CONNECTIONS_PER_USER: u8 = 8;
/// Commands queued to a room before senders wait.
const COMMAND_QUEUE: usize = 4096;

/// Why the room tells a connection to go (a dropped kick sender means the room failed: 1011).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kick {
    /// Its outbound queue was full: close 1008.
    SlowConsumer,
    /// The room was revoked or the server is going away: close 1012.
    Restart,
}

/// Why a join was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JoinError {
    /// 409 `room_full`, with the reason.
    Full(&'static str),
    /// The room ended before it took the join: open it again.
    Gone,
}

/// A connection asking in.
pub(crate) struct JoinRequest {
    conn: ConnId,
    user: User,
    outbound: mpsc::Sender<Utf8Bytes>,
    kick: oneshot::Sender<Kick>,
    /// Answered with the serialized `welcome`.
    reply: oneshot::Sender<Result<Utf8Bytes, JoinError>>,
}

/// What connections and the server ask of a room.
pub(crate) enum Command {
    Join(JoinRequest),
    Leave(ConnId),
    Send { conn: ConnId, text: String, client_id: Option<String> },
    /// Placed elsewhere by the scheduler: close every member with 1012 and end.
    Revoke,
}

/// How a room task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Empty for the idle timeout (or while draining): tell the scheduler it is released.
    Disposed,
    Revoked,
    /// The server closed everything.
    Shutdown,
}

/// Numbers the room publishes for heartbeats.
#[derive(Default)]
pub(crate) struct RoomStats {
    users: AtomicU32,
}

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
    /// Asks the room to admit connection `conn` of `user`, whose frames go to `outbound` and
    /// whose eviction notice to `kick`; on success the answer is the `welcome` frame.
    pub async fn join(
        &self,
        conn: ConnId,
        user: User,
        outbound: mpsc::Sender<Utf8Bytes>,
        kick: oneshot::Sender<Kick>,
    ) -> Result<Utf8Bytes, JoinError> {
        let (reply, reply_rx) = oneshot::channel();
        let request = JoinRequest { conn, user, outbound, kick, reply };
        if self.tx.send(Command::Join(request)).await.is_err() {
            return Err(JoinError::Gone);
        }
        reply_rx.await.unwrap_or(Err(JoinError::Gone))
    }

    /// The command queue, for a member's connection.
    pub fn commands(&self) -> mpsc::Sender<Command> {
        self.tx.clone()
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
}

/// What every room of a server shares.
#[derive(Clone)]
pub(crate) struct RoomSettings {
    pub server_id: Arc<str>,
    pub members_per_room: u32,
    pub history: usize,
    pub idle: Duration,
    pub panic_text: Option<Arc<str>>,
    pub metrics: Arc<Metrics>,
    pub rooms: Arc<Rooms>,
    /// Cancelled when the server drains: empty rooms end at once.
    pub draining: CancellationToken,
    /// Cancelled when the server closes everything.
    pub close_all: CancellationToken,
}

/// Creates a room and returns its handle and the future that runs it (for the caller to spawn).
pub(crate) fn new(
    id: Arc<str>,
    epoch: u64,
    instance: u64,
    settings: RoomSettings,
) -> (RoomHandle, impl Future<Output = Exit> + Send + 'static) {
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let stats = Arc::new(RoomStats::default());
    let handle = RoomHandle { id: id.clone(), epoch, instance, tx, stats: stats.clone() };
    let room = Room {
        id,
        epoch,
        instance,
        members: HashMap::new(),
        users: HashMap::new(),
        history: VecDeque::with_capacity(settings.history.min(128)),
        seq: 0,
        stats,
        pending_kicks: Vec::new(),
        settings,
    };
    (handle, room.run(rx))
}

struct Member {
    user: Arc<User>,
    tx: mpsc::Sender<Utf8Bytes>,
    kick: Option<oneshot::Sender<Kick>>,
}

struct Presence {
    user: Arc<User>,
    connections: u8,
}

struct Room {
    id: Arc<str>,
    epoch: u64,
    instance: u64,
    members: HashMap<ConnId, Member>,
    /// Keyed by user id; a user counts once however many connections it has.
    users: HashMap<String, Presence>,
    history: VecDeque<ChatMessage>,
    seq: u64,
    stats: Arc<RoomStats>,
    /// Members found slow during a broadcast, removed once it is over.
    pending_kicks: Vec<ConnId>,
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
    history: &'a VecDeque<ChatMessage>,
    seq: u64,
    server_id: &'a str,
}

impl Room {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) -> Exit {
        // Child tokens: each room waits on its own node, not on one lock shared by all rooms.
        let draining = self.settings.draining.child_token();
        let close_all = self.settings.close_all.child_token();
        let drain = draining.cancelled();
        let closed = close_all.cancelled();
        let idle = tokio::time::sleep(self.settings.idle);
        tokio::pin!(drain, closed, idle);
        tracing::debug!(room_id = %self.id, epoch = self.epoch, "room opened");
        loop {
            let empty = self.members.is_empty();
            tokio::select! {
                biased;
                () = &mut closed => {
                    self.kick_all(Kick::Restart);
                    return Exit::Shutdown;
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
                () = &mut idle, if empty => break,
                () = &mut drain, if empty => break,
            }
        }
        // Disposal: leave the directory first so no new join finds this room, then turn away
        // joins that were already queued (their connections open the room again).
        self.settings.rooms.remove_instance(&self.id, self.instance);
        rx.close();
        while let Some(cmd) = rx.recv().await {
            if let Command::Join(join) = cmd {
                let _ = join.reply.send(Err(JoinError::Gone));
            }
        }
        Exit::Disposed
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Join(join) => {
                let reply = self.join(join.conn, join.user, join.outbound, join.kick);
                // A join whose asker went away is undone by that connection's `Leave`.
                let _ = join.reply.send(reply);
            }
            Command::Leave(conn) => {
                self.remove_member(conn, None);
                self.settle();
            }
            Command::Send { conn, text, client_id } => self.message(conn, text, client_id),
            Command::Revoke => {}
        }
    }

    fn join(
        &mut self,
        conn: ConnId,
        user: User,
        outbound: mpsc::Sender<Utf8Bytes>,
        kick: oneshot::Sender<Kick>,
    ) -> Result<Utf8Bytes, JoinError> {
        let full = self.users.len() >= self.settings.members_per_room as usize;
        let (user, first) = match self.users.get_mut(&user.user_id) {
            Some(p) if p.connections >= MAX_CONNECTIONS_PER_USER => {
                return Err(JoinError::Full("too many connections for this user in the room"));
            }
            Some(p) => {
                p.connections += 1;
                (p.user.clone(), false)
            }
            None if full => {
                return Err(JoinError::Full("the room is full"));
            }
            None => {
                let user = Arc::new(user);
                self.users.insert(user.user_id.clone(), Presence { user: user.clone(), connections: 1 });
                self.stats.users.store(self.users.len() as u32, Ordering::Relaxed);
                (user, true)
            }
        };
        self.members.insert(conn, Member { user: user.clone(), tx: outbound, kick: Some(kick) });
        let welcome = WelcomeRef {
            room_id: &self.id,
            you: &user,
            members: self.users.values().map(|p| &*p.user).collect(),
            history: &self.history,
            seq: self.seq,
            server_id: &self.settings.server_id,
        };
        let welcome = Utf8Bytes::from(serde_json::to_string(&welcome).expect("welcome serializes"));
        if first {
            self.broadcast(&ServerFrame::Joined { user: (*user).clone() }, Some(conn));
            self.settle();
        }
        Ok(welcome)
    }

    fn message(&mut self, conn: ConnId, text: String, client_id: Option<String>) {
        // A member dropped meanwhile (slow, revoked) may still have sends in flight.
        let Some(member) = self.members.get(&conn) else { return };
        if self.settings.panic_text.as_deref().is_some_and(|p| p == text) {
            panic!("room {}: test panic requested", self.id);
        }
        self.seq += 1;
        let frame = ServerFrame::Message(ChatMessage {
            seq: self.seq,
            user_id: member.user.user_id.clone(),
            username: member.user.username.clone(),
            text,
            ts: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            client_id,
        });
        self.broadcast(&frame, None);
        if let ServerFrame::Message(msg) = frame
            && self.settings.history > 0
        {
            if self.history.len() >= self.settings.history {
                self.history.pop_front();
            }
            self.history.push_back(msg);
        }
        self.settle();
    }

    /// Serializes `frame` once and queues the same bytes to every member but `except`.
    fn broadcast(&mut self, frame: &ServerFrame, except: Option<ConnId>) {
        let bytes = Utf8Bytes::from(serde_json::to_string(frame).expect("frames serialize"));
        let mut delivered = 0u64;
        for (&conn, member) in &self.members {
            if Some(conn) == except {
                continue;
            }
            match member.tx.try_send(bytes.clone()) {
                Ok(()) => delivered += 1,
                // Full: a slow reader. Closed: its connection ended and its `Leave` is on the way.
                Err(_) => self.pending_kicks.push(conn),
            }
        }
        self.settings.metrics.messages_out.fetch_add(delivered, Ordering::Relaxed);
    }

    /// Removes the members found slow by broadcasts, which may broadcast `left` in turn.
    fn settle(&mut self) {
        while let Some(conn) = self.pending_kicks.pop() {
            if self.members.contains_key(&conn) {
                self.settings.metrics.slow_consumers.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(room_id = %self.id, conn, "dropping slow consumer");
                self.remove_member(conn, Some(Kick::SlowConsumer));
            }
        }
    }

    /// Removes one connection; when it was its user's last, the others see `left`.
    fn remove_member(&mut self, conn: ConnId, kick: Option<Kick>) {
        let Some(mut member) = self.members.remove(&conn) else { return };
        if let (Some(kick), Some(tx)) = (kick, member.kick.take()) {
            let _ = tx.send(kick);
        }
        let user_id = &member.user.user_id;
        let last = match self.users.get_mut(user_id) {
            Some(p) if p.connections > 1 => {
                p.connections -= 1;
                false
            }
            Some(_) => true,
            None => false,
        };
        if last {
            self.users.remove(user_id);
            self.stats.users.store(self.users.len() as u32, Ordering::Relaxed);
            self.broadcast(&ServerFrame::Left { user: (*member.user).clone() }, None);
        }
    }

    fn kick_all(&mut self, kick: Kick) {
        for (_, mut member) in self.members.drain() {
            if let Some(tx) = member.kick.take() {
                let _ = tx.send(kick);
            }
        }
        self.users.clear();
        self.stats.users.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> User {
        User { user_id: id.into(), username: format!("name-{id}") }
    }

    #[test]
    fn welcome_ref_matches_the_protocol_type() {
        let history: VecDeque<ChatMessage> = [ChatMessage {
            seq: 3,
            user_id: "u-1".into(),
            username: "a".into(),
            text: "hi".into(),
            ts: "2026-01-01T00:00:00.000Z".into(),
            client_id: None,
        }]
        .into();
        let (you, other) = (user("u-1"), user("u-2"));
        let json = serde_json::to_string(&WelcomeRef {
            room_id: "r-1",
            you: &you,
            members: vec![&you, &other],
            history: &history,
            seq: 3,
            server_id: "s-1",
        })
        .unwrap();
        let parsed: ServerFrame = serde_json::from_str(&json).unwrap();
        assert_eq!(
            parsed,
            ServerFrame::Welcome {
                room_id: "r-1".into(),
                you: you.clone(),
                members: vec![you, other],
                history: history.into(),
                seq: 3,
                server_id: "s-1".into(),
            }
        );
    }

    struct TestRoom {
        handle: RoomHandle,
        task: tokio::task::JoinHandle<Exit>,
    }

    fn start(members_per_room: u32, history: usize) -> TestRoom {
        let settings = RoomSettings {
            server_id: "s-1".into(),
            members_per_room,
            history,
            idle: Duration::from_secs(60),
            panic_text: None,
            metrics: Arc::new(Metrics::default()),
            rooms: Arc::new(Rooms::default()),
            draining: CancellationToken::new(),
            close_all: CancellationToken::new(),
        };
        let (handle, run) = new("r-1".into(), 1, 1, settings);
        TestRoom { handle, task: tokio::spawn(run) }
    }

    struct TestMember {
        rx: mpsc::Receiver<Utf8Bytes>,
        kick: oneshot::Receiver<Kick>,
        welcome: serde_json::Value,
    }

    async fn join(room: &TestRoom, conn: ConnId, u: User, queue: usize) -> Result<TestMember, JoinError> {
        let (tx, rx) = mpsc::channel(queue);
        let (kick_tx, kick) = oneshot::channel();
        let welcome = room.handle.join(conn, u, tx, kick_tx).await?;
        Ok(TestMember { rx, kick, welcome: serde_json::from_str(&welcome).unwrap() })
    }

    fn next(m: &mut TestMember) -> serde_json::Value {
        serde_json::from_str(&m.rx.try_recv().expect("a frame")).unwrap()
    }

    async fn send(room: &TestRoom, conn: ConnId, text: &str) {
        let cmd = Command::Send { conn, text: text.into(), client_id: None };
        room.handle.commands().send(cmd).await.unwrap();
    }

    /// Waits until the room has handled everything queued before.
    async fn sync(room: &TestRoom) {
        let (tx, _rx) = mpsc::channel(1);
        let (kick, _) = oneshot::channel();
        let _ = room.handle.join(u64::MAX, user("sync"), tx, kick).await;
        room.handle.commands().send(Command::Leave(u64::MAX)).await.unwrap();
    }

    #[tokio::test]
    async fn presence_counts_a_user_once() {
        let room = start(10, 10);
        let mut a = join(&room, 1, user("u-a"), 16).await.unwrap();
        let _b1 = join(&room, 2, user("u-b"), 16).await.unwrap();
        assert_eq!(next(&mut a)["type"], "joined");
        let b2 = join(&room, 3, user("u-b"), 16).await.unwrap();
        assert_eq!(b2.welcome["members"].as_array().unwrap().len(), 2);
        assert_eq!(room.handle.users(), 2);
        room.handle.commands().send(Command::Leave(3)).await.unwrap();
        send(&room, 1, "x").await;
        // No `left` for the second tab: the next frame is the message.
        let frame = next_async(&mut a).await;
        assert_eq!(frame["type"], "message");
        room.handle.commands().send(Command::Leave(2)).await.unwrap();
        let frame = next_async(&mut a).await;
        assert_eq!(frame["type"], "left");
        assert_eq!(frame["user"]["userId"], "u-b");
        assert_eq!(room.handle.users(), 1);
        room.task.abort();
    }

    async fn next_async(m: &mut TestMember) -> serde_json::Value {
        let bytes = tokio::time::timeout(Duration::from_secs(5), m.rx.recv()).await.unwrap().unwrap();
        serde_json::from_str(&bytes).unwrap()
    }

    #[tokio::test]
    async fn limits_users_and_connections_per_user() {
        let room = start(1, 10);
        let _a = join(&room, 1, user("u-a"), 16).await.unwrap();
        assert!(matches!(join(&room, 2, user("u-b"), 16).await, Err(JoinError::Full(_))));
        let mut tabs = Vec::new();
        for conn in 2..2 + u64::from(MAX_CONNECTIONS_PER_USER) - 1 {
            tabs.push(join(&room, conn, user("u-a"), 16).await.unwrap());
        }
        assert!(matches!(join(&room, 100, user("u-a"), 16).await, Err(JoinError::Full(_))));
        room.task.abort();
    }

    #[tokio::test]
    async fn slow_member_is_kicked_and_others_keep_receiving() {
        let room = start(10, 10);
        let mut fast = join(&room, 1, user("u-a"), 64).await.unwrap();
        let mut slow = join(&room, 2, user("u-b"), 1).await.unwrap();
        assert_eq!(next(&mut fast)["type"], "joined");
        for i in 0..5 {
            send(&room, 1, &format!("m{i}")).await;
        }
        sync(&room).await;
        assert_eq!((&mut slow.kick).await.unwrap(), Kick::SlowConsumer);
        assert!(slow.rx.try_recv().is_ok(), "it got the frame that fitted");
        let mut seqs = Vec::new();
        while let Ok(bytes) = fast.rx.try_recv() {
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
        let texts: Vec<_> = late.welcome["history"].as_array().unwrap().iter().map(|m| m["text"].clone()).collect();
        assert_eq!(texts, ["m2", "m3", "m4"]);
        assert_eq!(late.welcome["seq"], 5);
        room.task.abort();
    }
}
