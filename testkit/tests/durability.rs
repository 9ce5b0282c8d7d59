//! Durable history end to end, with real processes: every scenario runs against the default
//! SQLite store and against PostgreSQL (when `BERTH_TEST_DATABASE_URL` names an admin URL; under
//! `CI=true` the PostgreSQL variants fail without it, they never skip).
//!
//! - history after a room was disposed (idle) and placed again, and after the whole cluster
//!   restarted;
//! - SIGKILL of a session server during a steady stream: every message any client received is
//!   stored, and every client's record is the gap-free stored sequence;
//! - resume with `since` on the same and on a new server;
//! - resume from the store (beyond the room's memory) and history paging over HTTP;
//! - a rolling drain of 3 servers under live traffic: no message lost or duplicated, checked by
//!   the clients' own records;
//! - the store refusing writes: the sender gets `store_unavailable`, nobody sees the message,
//!   and the numbering goes on without a gap once the store is back.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use berth::protocol::api::CreateRoomRequest;
use berth::protocol::frames::{ChatMessage, ServerFrame, close};
use berth::{ReconnectPolicy, Room, RoomConnection, RoomEvent, RoomUpdate, Session, Welcome};
use berth_protocol::cluster::ServerState;
use berth_store::testing::{TempDatabase, postgres_admin_url};
use berth_testkit::{Cluster, ClusterOptions, eventually, eventually_some};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(30);

/// Where a test's cluster keeps its history.
enum Backing {
    /// The default: `<data-dir>/berth.db`.
    Sqlite,
    /// A database of the test's own.
    Postgres(TempDatabase),
}

impl Backing {
    /// `None`: skip (PostgreSQL not configured on a developer's machine).
    async fn new(postgres: bool) -> Option<Backing> {
        if !postgres {
            return Some(Backing::Sqlite);
        }
        let admin = postgres_admin_url()?;
        Some(Backing::Postgres(TempDatabase::create(&admin).await))
    }

    fn url(&self) -> Option<String> {
        match self {
            Backing::Sqlite => None,
            Backing::Postgres(db) => Some(db.url.clone()),
        }
    }

    async fn cluster(&self, mut options: ClusterOptions) -> Cluster {
        options.database_url = self.url();
        Cluster::start(options).await
    }

    /// Flags for a session server started outside the scheduler.
    fn session_args(&self) -> Vec<String> {
        match self.url() {
            Some(url) => vec!["--database-url".into(), url],
            None => Vec::new(),
        }
    }
}

/// Runs `$scenario(postgres: bool)` as `$scenario::sqlite` and `$scenario::postgres`.
macro_rules! on_both_stores {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$scenario(false).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$scenario(true).await
            }
        }
    )*};
}

on_both_stores!(
    history_survives_disposal_and_a_cluster_restart,
    a_sigkill_mid_stream_loses_nothing_anyone_saw,
    resume_with_since_on_the_same_and_a_new_server,
    resume_from_the_store_and_paging,
    a_rolling_drain_under_live_traffic_loses_and_duplicates_nothing,
    a_store_refusing_writes_fails_sends_loudly,
);

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn fast_reconnects() -> ReconnectPolicy {
    ReconnectPolicy {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        max_attempts: None,
    }
}

/// Sends `text` and waits for its echo; returns its `seq`.
async fn send_and_echo(conn: &mut RoomConnection, text: &str) -> u64 {
    conn.send(text, Some(text)).await.unwrap();
    loop {
        match conn.recv_timeout(WAIT).await.unwrap() {
            RoomEvent::Frame(ServerFrame::Message(m)) if m.client_id.as_deref() == Some(text) => {
                return m.seq;
            }
            RoomEvent::Frame(ServerFrame::Error { code, message, .. }) => {
                panic!("{text}: refused {code}: {message}")
            }
            RoomEvent::Frame(_) => continue,
            other => panic!("{text}: expected the echo, got {other:?}"),
        }
    }
}

/// Reads frames until a message with `seq` or more, returning every message seen.
async fn messages_until(conn: &mut RoomConnection, seq: u64) -> Vec<ChatMessage> {
    let mut seen = Vec::new();
    loop {
        match conn.recv_timeout(WAIT).await.unwrap() {
            RoomEvent::Frame(ServerFrame::Message(m)) => {
                let done = m.seq >= seq;
                seen.push(m);
                if done {
                    return seen;
                }
            }
            RoomEvent::Frame(_) => continue,
            other => panic!("expected messages up to {seq}, got {other:?}"),
        }
    }
}

fn seqs(messages: &[ChatMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

/// The whole stored history of a room, paged back over HTTP, oldest first.
async fn stored_history(cluster: &Cluster, session: &Session, room_id: &str) -> Vec<ChatMessage> {
    let backend = cluster.backend();
    let mut all = Vec::new();
    let mut before = None;
    loop {
        let page = backend
            .messages(session, room_id, before, Some(200))
            .await
            .unwrap();
        let first = page.messages.first().map(|m| m.seq);
        all.splice(0..0, page.messages);
        if !page.has_more {
            return all;
        }
        before = first;
    }
}

/// `(seq, clientId)` pairs: what a failed comparison prints.
fn brief(messages: &[ChatMessage]) -> Vec<(u64, &str)> {
    messages
        .iter()
        .map(|m| (m.seq, m.client_id.as_deref().unwrap_or(&m.text)))
        .collect()
}

fn assert_gap_free(messages: &[ChatMessage], what: &str) {
    let expected: Vec<u64> = (1..=messages.len() as u64).collect();
    assert_eq!(
        seqs(messages),
        expected,
        "{what}: seq must run 1, 2, 3… without a gap or a repeat"
    );
}

/// How soon a drained server's rooms must be served elsewhere (the drain timeout is far longer).
const HAND_OVER: Duration = Duration::from_secs(10);

/// Polls `GET {server}/metrics` until the server stops answering; yields the highest value of
/// the counter `name` seen (`None`: never read).
fn spawn_metric_watch(server: &str, name: &'static str) -> tokio::task::JoinHandle<Option<u64>> {
    let url = format!("{server}/metrics");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    tokio::spawn(async move {
        let mut highest = None;
        loop {
            let res = http.get(&url).send().await;
            let text = match res {
                Ok(res) => res.text().await,
                Err(e) => Err(e),
            };
            let text = match text {
                Ok(text) => text,
                Err(e) => {
                    eprintln!("metrics watch of {url} ended: {e}");
                    break;
                }
            };
            let value = text.lines().find_map(|l| {
                let (metric, value) = l.split_once(' ')?;
                (metric == name).then(|| value.trim().parse::<u64>().ok())?
            });
            highest = highest.max(value);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        highest
    })
}

async fn wait_closed(conn: &mut RoomConnection) -> Option<u16> {
    loop {
        match conn.recv_timeout(WAIT).await.unwrap() {
            RoomEvent::Closed { code, .. } => return code,
            RoomEvent::Frame(_) => continue,
        }
    }
}

// --- scenarios

async fn history_survives_disposal_and_a_cluster_restart(postgres: bool) {
    let Some(backing) = Backing::new(postgres).await else {
        return;
    };
    let mut cluster = backing
        .cluster(ClusterOptions {
            scheduler_args: args(&["--room-idle-secs", "1"]),
            ..Default::default()
        })
        .await;
    let alice = cluster.login("alice").await;
    let backend = cluster.backend();
    let req = CreateRoomRequest {
        name: Some("durable".into()),
        public: true,
        private: false,
    };
    let room = backend.create_room(&alice, &req).await.unwrap();
    let (mut conn, welcome) = RoomConnection::connect(&room.url, &room.token)
        .await
        .unwrap();
    let first_epoch = welcome.epoch.expect("welcome names its epoch");
    for i in 1..=5 {
        assert_eq!(send_and_echo(&mut conn, &format!("m{i}")).await, i);
    }
    conn.close().await.unwrap();

    // Empty for a second: disposed, its slot freed; the room is dormant, not forgotten.
    eventually(WAIT, || async {
        cluster.server(&room.server_id).await.rooms == 0
    })
    .await;
    let again = backend.lookup_room(&alice, &room.room_id).await.unwrap();
    assert_eq!(again.name, "durable");
    let (mut conn, welcome) = RoomConnection::connect(&again.url, &again.token)
        .await
        .unwrap();
    assert!(
        welcome.epoch.unwrap() > first_epoch,
        "placed again under a new epoch"
    );
    assert_eq!(welcome.seq, 5);
    assert_eq!(
        welcome
            .history
            .iter()
            .map(|m| m.text.as_str())
            .collect::<Vec<_>>(),
        ["m1", "m2", "m3", "m4", "m5"]
    );
    assert_eq!(
        send_and_echo(&mut conn, "m6").await,
        6,
        "seq continues where it stopped"
    );
    conn.close().await.unwrap();

    // The whole cluster goes away (scheduler and every session server) and comes back.
    cluster.restart_scheduler().await;
    let found = eventually_some(WAIT, || async {
        backend.lookup_room(&alice, &room.room_id).await.ok()
    })
    .await;
    assert_eq!(found.name, "durable");
    let (mut conn, welcome) = RoomConnection::connect(&found.url, &found.token)
        .await
        .unwrap();
    assert_eq!((welcome.seq, welcome.history.len()), (6, 6));
    assert_eq!(send_and_echo(&mut conn, "m7").await, 7);
    let listed = backend.list_rooms().await.unwrap();
    assert!(
        listed
            .rooms
            .iter()
            .any(|r| r.room_id == room.room_id && r.name == "durable"),
        "{listed:?}"
    );
    conn.close().await.unwrap();
    cluster.stop().await;
}

/// A member that records every message it is shown (live and in resumed `welcome`s).
fn spawn_reader(
    mut room: Room,
    stop: watch::Receiver<u64>,
) -> tokio::task::JoinHandle<Vec<ChatMessage>> {
    tokio::spawn(async move {
        let mut seen: Vec<ChatMessage> = Vec::new();
        let mut stop = stop;
        loop {
            let target = *stop.borrow();
            if target > 0 && seen.last().is_some_and(|m| m.seq >= target) {
                return seen;
            }
            tokio::select! {
                update = room.next() => match update.unwrap() {
                    RoomUpdate::Frame(ServerFrame::Message(m)) => seen.push(m),
                    RoomUpdate::Reconnected(w) => seen.extend(w.history),
                    RoomUpdate::Frame(_) => {}
                    RoomUpdate::Closed { code, reason } => panic!("reader closed: {code:?} {reason}"),
                    RoomUpdate::Disconnected { .. } => {}
                },
                _ = stop.changed() => {}
            }
        }
    })
}

async fn a_sigkill_mid_stream_loses_nothing_anyone_saw(postgres: bool) {
    let Some(backing) = Backing::new(postgres).await else {
        return;
    };
    let cluster = backing
        .cluster(ClusterOptions {
            scheduler_args: args(&[
                "--heartbeat-interval-ms",
                "200",
                "--heartbeat-timeout-ms",
                "1500",
            ]),
            ..Default::default()
        })
        .await;
    let backend = cluster.backend();
    let alice = cluster.login("alice").await;
    let ticket = backend
        .create_room(&alice, &CreateRoomRequest::default())
        .await
        .unwrap();
    let (stop_tx, stop_rx) = watch::channel(0u64);
    let mut readers = Vec::new();
    for name in ["bob", "carol"] {
        let session = cluster.login(name).await;
        let (mut room, _) = Room::join(backend.clone(), session, &ticket.room_id)
            .await
            .unwrap();
        room.set_policy(fast_reconnects());
        readers.push(spawn_reader(room, stop_rx.clone()));
    }
    let (mut sender, _) = Room::join(backend.clone(), alice.clone(), &ticket.room_id)
        .await
        .unwrap();
    sender.set_policy(fast_reconnects());

    // A steady stream (~16/s, under the rate limit); the server is killed in the middle of it.
    let started = tokio::time::Instant::now();
    let mut killed = false;
    let mut sent = 0u32;
    let mut tick = tokio::time::interval(Duration::from_millis(60));
    while started.elapsed() < Duration::from_secs(8) {
        tokio::select! {
            _ = tick.tick() => {
                sent += 1;
                // Failures while the room moves are fine here: only what was seen must survive.
                let _ = sender.send(&format!("m{sent}"), Some(&format!("a-{sent}"))).await;
                if !killed && started.elapsed() > Duration::from_secs(2) {
                    cluster.kill_server(&ticket.server_id).await;
                    killed = true;
                }
            }
            update = sender.next() => { update.unwrap(); }
        }
    }
    // Everything stored by now: every reader ends with exactly the stored sequence.
    let stored = eventually_some(WAIT, || async {
        let moved = backend.lookup_room(&alice, &ticket.room_id).await.ok()?;
        (moved.server_id != ticket.server_id).then_some(())?;
        let history = stored_history(&cluster, &alice, &ticket.room_id).await;
        (history.len() > 20).then_some(history)
    })
    .await;
    // One more message after the kill, so readers have something to wait for.
    let (mut last, _) = eventually_some(WAIT, || async {
        let t = backend.lookup_room(&alice, &ticket.room_id).await.ok()?;
        RoomConnection::connect(&t.url, &t.token).await.ok()
    })
    .await;
    let final_seq = send_and_echo(&mut last, "final").await;
    assert!(final_seq > stored.last().unwrap().seq);
    stop_tx.send(final_seq).unwrap();
    let stored = stored_history(&cluster, &alice, &ticket.room_id).await;
    assert_gap_free(&stored, "stored history");
    for reader in readers {
        let seen = tokio::time::timeout(WAIT, reader)
            .await
            .expect("reader caught up")
            .unwrap();
        assert_eq!(
            brief(&seen),
            brief(&stored),
            "a reader's record is exactly the stored history"
        );
        assert_eq!(seen, stored);
    }
    last.close().await.unwrap();
    cluster.stop().await;
}

async fn resume_with_since_on_the_same_and_a_new_server(postgres: bool) {
    let Some(backing) = Backing::new(postgres).await else {
        return;
    };
    // A drain timeout far beyond HAND_OVER: the room moves by hand-off, or the test fails.
    let cluster = backing
        .cluster(ClusterOptions {
            scheduler_args: args(&["--drain-timeout-secs", "120"]),
            ..Default::default()
        })
        .await;
    let backend = cluster.backend();
    let alice = cluster.login("alice").await;
    let bob = cluster.login("bob").await;
    let room = backend
        .create_room(&alice, &CreateRoomRequest::default())
        .await
        .unwrap();
    let (mut a, _) = RoomConnection::connect(&room.url, &room.token)
        .await
        .unwrap();
    let for_bob = backend.lookup_room(&bob, &room.room_id).await.unwrap();
    let (mut b, _) = RoomConnection::connect(&for_bob.url, &for_bob.token)
        .await
        .unwrap();
    for i in 1..=3 {
        send_and_echo(&mut a, &format!("m{i}")).await;
    }
    assert_eq!(seqs(&messages_until(&mut b, 3).await), [1, 2, 3]);
    b.close().await.unwrap();
    for i in 4..=6 {
        send_and_echo(&mut a, &format!("m{i}")).await;
    }

    // Same server: exactly what bob missed.
    let t = backend.lookup_room(&bob, &room.room_id).await.unwrap();
    assert_eq!(t.server_id, room.server_id);
    let (b, welcome) = RoomConnection::connect_since(&t.url, &t.token, Some(3))
        .await
        .unwrap();
    assert_eq!((seqs(&welcome.history), welcome.seq), (vec![4, 5, 6], 6));
    b.close().await.unwrap();
    // A ticket opens one connection: a fresh one for the next.
    let t = backend.lookup_room(&bob, &room.room_id).await.unwrap();
    let (b, welcome) = RoomConnection::connect_since(&t.url, &t.token, Some(6))
        .await
        .unwrap();
    assert!(welcome.history.is_empty());
    b.close().await.unwrap();

    // The server drains: the room is handed over and its members told to come back (1012).
    // The old server's hand-off counter is watched until it exits; alice reads her close only
    // then (the server waits a moment for her answer, which keeps it up to be read).
    let handoffs = spawn_metric_watch(
        &cluster.admin_url(&room.server_id).await,
        "berth_session_handoffs_total",
    );
    let drained_at = tokio::time::Instant::now();
    let res = cluster
        .scheduler_post(&format!("/v1/servers/{}/drain", room.server_id))
        .await;
    assert_eq!(res.status(), 202);
    let handoffs = tokio::time::timeout(WAIT, handoffs)
        .await
        .expect("the old server went away")
        .unwrap();
    assert_eq!(
        handoffs,
        Some(1),
        "the old server counted the room it handed over"
    );
    assert_eq!(wait_closed(&mut a).await, Some(close::RESTART));
    let moved = eventually_some(HAND_OVER, || async {
        backend
            .lookup_room(&bob, &room.room_id)
            .await
            .ok()
            .filter(|t| t.server_id != room.server_id)
    })
    .await;
    let (mut b, welcome) = RoomConnection::connect_since(&moved.url, &moved.token, Some(4))
        .await
        .unwrap();
    assert_eq!((seqs(&welcome.history), welcome.seq), (vec![5, 6], 6));
    let served_after = drained_at.elapsed();
    assert!(
        served_after < HAND_OVER,
        "the room was served elsewhere {served_after:?} after the drain: a hand-off, not the drain timeout"
    );
    eprintln!("hand-over: the room was served on its new server {served_after:?} after the drain");
    let t = backend.lookup_room(&alice, &room.room_id).await.unwrap();
    let (mut a, welcome) = RoomConnection::connect_since(&t.url, &t.token, Some(6))
        .await
        .unwrap();
    assert!(welcome.history.is_empty());
    assert_eq!(send_and_echo(&mut a, "m7").await, 7);
    assert_eq!(seqs(&messages_until(&mut b, 7).await), [7]);
    // A malformed since is refused before the upgrade (with a ticket not spent yet).
    let t = backend.lookup_room(&alice, &room.room_id).await.unwrap();
    let err = RoomConnection::connect(&format!("{}?since=x", t.url), &t.token)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("invalid_request"));
    a.close().await.unwrap();
    b.close().await.unwrap();
    cluster.stop().await;
}

async fn resume_from_the_store_and_paging(postgres: bool) {
    let Some(backing) = Backing::new(postgres).await else {
        return;
    };
    // One outside server that keeps only 5 messages in memory: resumes read the store.
    let cluster = backing
        .cluster(ClusterOptions {
            max_servers: 0,
            ..Default::default()
        })
        .await;
    let mut extra = args(&["--history", "5"]);
    extra.extend(backing.session_args());
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let _outside = cluster.start_outside_session(&extra);
    eventually(WAIT, || async {
        cluster
            .servers()
            .await
            .iter()
            .any(|s| s.state == ServerState::Ready)
    })
    .await;

    let backend = cluster.backend();
    let alice = cluster.login("alice").await;
    let room = backend
        .create_room(&alice, &CreateRoomRequest::default())
        .await
        .unwrap();
    // 120 messages from three users (each within its burst allowance).
    let mut conns = Vec::new();
    for name in ["alice", "bob", "carol"] {
        let session = cluster.login(name).await;
        let t = backend.lookup_room(&session, &room.room_id).await.unwrap();
        conns.push(RoomConnection::connect(&t.url, &t.token).await.unwrap().0);
    }
    for (i, conn) in conns.iter_mut().enumerate() {
        for j in 0..40 {
            conn.send(&format!("u{i}-{j}"), Some(&format!("u{i}-{j}")))
                .await
                .unwrap();
        }
    }
    let all = messages_until(&mut conns[0], 120).await;
    assert_gap_free(&all, "live");

    let dave = cluster.login("dave").await;
    let t = backend.lookup_room(&dave, &room.room_id).await.unwrap();
    let (_d, welcome) = RoomConnection::connect(&t.url, &t.token).await.unwrap();
    assert_eq!(
        seqs(&welcome.history),
        [116, 117, 118, 119, 120],
        "a plain welcome: the memory"
    );
    let t = backend.lookup_room(&dave, &room.room_id).await.unwrap();
    let (_d, welcome) = RoomConnection::connect_since(&t.url, &t.token, Some(10))
        .await
        .unwrap();
    assert_eq!(
        seqs(&welcome.history),
        (11..=120).collect::<Vec<_>>(),
        "store + memory, no gap"
    );
    assert_eq!(welcome.history, all[10..], "every field as delivered live");

    // Paging back over HTTP.
    let page = backend
        .messages(&dave, &room.room_id, None, None)
        .await
        .unwrap();
    assert_eq!(
        (seqs(&page.messages), page.has_more),
        ((71..=120).collect::<Vec<_>>(), true)
    );
    let page = backend
        .messages(&dave, &room.room_id, Some(71), None)
        .await
        .unwrap();
    assert_eq!(
        (seqs(&page.messages), page.has_more),
        ((21..=70).collect::<Vec<_>>(), true)
    );
    let page = backend
        .messages(&dave, &room.room_id, Some(21), Some(50))
        .await
        .unwrap();
    assert_eq!(
        (seqs(&page.messages), page.has_more),
        ((1..=20).collect::<Vec<_>>(), false)
    );
    assert_eq!(stored_history(&cluster, &dave, &room.room_id).await, all);
    let err = backend
        .messages(&dave, &room.room_id, None, Some(500))
        .await
        .unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(400), Some("invalid_request"))
    );
    let err = backend
        .messages(&dave, "r-nosuchroom", None, None)
        .await
        .unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(404), Some("room_not_found"))
    );
    let anonymous = reqwest::get(format!(
        "{}/api/rooms/{}/messages",
        cluster.backend_url, room.room_id
    ))
    .await
    .unwrap();
    assert_eq!(anonymous.status(), 401);
    cluster.stop().await;
}

/// What a chatting client knows at the end: its own record and which of its sends were stored.
struct Chatter {
    seen: Vec<ChatMessage>,
    acked: Vec<String>,
}

/// A member that sends one message at a time and records everything it is shown. A send counts
/// as stored when its echo comes, or when a resumed `welcome` holds it; it is sent again only
/// when the server said it was not stored (an `error` frame naming it) or when a reconnect
/// shows it is not there. Sending stops when `stop` is set; the task ends once it has seen
/// `finish` (the room's last seq). Once stopped with nothing in doubt, it counts itself in
/// `settled`.
fn spawn_chatter(
    mut room: Room,
    welcome: Welcome,
    prefix: String,
    stop: watch::Receiver<bool>,
    finish: watch::Receiver<u64>,
    settled: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Chatter> {
    tokio::spawn(async move {
        let (mut stop, mut finish) = (stop, finish);
        let mut counted = false;
        let mut seen: Vec<ChatMessage> = welcome.history;
        let mut acked: Vec<String> = Vec::new();
        let mut next = 0u32;
        // The send waiting for its fate, and whether it must go (again) at the next chance.
        let mut outstanding: Option<String> = None;
        let mut due = true;
        let mut pace = tokio::time::interval(Duration::from_millis(80));
        loop {
            if !counted && *stop.borrow() && outstanding.is_none() {
                settled.fetch_add(1, Ordering::SeqCst);
                counted = true;
            }
            let target = *finish.borrow();
            if target > 0 && outstanding.is_none() && seen.last().is_some_and(|m| m.seq >= target) {
                return Chatter { seen, acked };
            }
            tokio::select! {
                _ = pace.tick() => {
                    if outstanding.is_none() && !*stop.borrow() {
                        next += 1;
                        outstanding = Some(format!("{prefix}-{next}"));
                        due = true;
                    }
                    if let (Some(id), true) = (&outstanding, due) && room.is_connected() {
                        // A failed write leaves it in doubt: the next reconnect settles it.
                        let _ = room.send(id, Some(id)).await;
                        due = false;
                    }
                }
                update = room.next() => match update.unwrap() {
                    RoomUpdate::Frame(ServerFrame::Message(m)) => {
                        if m.client_id.is_some() && m.client_id == outstanding {
                            acked.push(outstanding.take().unwrap());
                        }
                        seen.push(m);
                    }
                    RoomUpdate::Frame(ServerFrame::Error { code, message, .. }) => {
                        if let Some(id) = &outstanding && message.contains(id.as_str()) {
                            assert!(code == "server_draining" || code == "store_unavailable", "{code}: {message}");
                            due = true;
                        }
                    }
                    RoomUpdate::Frame(_) => {}
                    RoomUpdate::Reconnected(w) => {
                        for m in w.history {
                            if m.client_id.is_some() && m.client_id == outstanding {
                                acked.push(outstanding.take().unwrap());
                            }
                            seen.push(m);
                        }
                        due = outstanding.is_some();
                    }
                    RoomUpdate::Closed { code, reason } => panic!("{prefix}: closed {code:?} {reason}"),
                    RoomUpdate::Disconnected { .. } => {}
                },
                _ = stop.changed() => {}
                _ = finish.changed() => {}
            }
        }
    })
}

async fn a_rolling_drain_under_live_traffic_loses_and_duplicates_nothing(postgres: bool) {
    let Some(backing) = Backing::new(postgres).await else {
        return;
    };
    let cluster = backing
        .cluster(ClusterOptions {
            rooms_per_server: 1,
            max_servers: 6,
            scheduler_args: args(&[
                "--drain-timeout-secs",
                "10",
                "--heartbeat-interval-ms",
                "200",
            ]),
            ..Default::default()
        })
        .await;
    let backend = cluster.backend();
    let owner = cluster.login("owner").await;
    let mut rooms = Vec::new();
    for _ in 0..3 {
        rooms.push(
            backend
                .create_room(&owner, &CreateRoomRequest::default())
                .await
                .unwrap(),
        );
    }
    let first_servers: HashSet<String> = rooms.iter().map(|r| r.server_id.clone()).collect();
    assert_eq!(first_servers.len(), 3, "one room per server");

    let (stop_tx, stop_rx) = watch::channel(false);
    let settled = Arc::new(AtomicUsize::new(0));
    let mut finish = Vec::new();
    let mut chatters = Vec::new();
    for (r, room) in rooms.iter().enumerate() {
        let (finish_tx, finish_rx) = watch::channel(0u64);
        finish.push(finish_tx);
        for u in 0..2 {
            let session = cluster.login(&format!("user{r}x{u}")).await;
            let (mut joined, welcome) = Room::join(backend.clone(), session, &room.room_id)
                .await
                .unwrap();
            joined.set_policy(fast_reconnects());
            let chatter = spawn_chatter(
                joined,
                welcome,
                format!("r{r}u{u}"),
                stop_rx.clone(),
                finish_rx.clone(),
                settled.clone(),
            );
            chatters.push((r, chatter));
        }
    }

    // Drain the three original servers one after the other while everyone chats; before each
    // drain and at the end, every room has moved on by a few messages.
    let progress = |min_growth: usize, from: Vec<usize>| {
        let (cluster, owner, rooms) = (&cluster, &owner, &rooms);
        eventually_some(WAIT, move || {
            let from = from.clone();
            async move {
                let mut now = Vec::new();
                for (room, before) in rooms.iter().zip(&from) {
                    let len = stored_history(cluster, owner, &room.room_id).await.len();
                    (len >= before + min_growth).then_some(())?;
                    now.push(len);
                }
                Some(now)
            }
        })
    };
    let mut stored_counts = progress(3, vec![0; rooms.len()]).await;
    for server in &first_servers {
        let res = cluster
            .scheduler_post(&format!("/v1/servers/{server}/drain"))
            .await;
        assert_eq!(res.status(), 202);
        eventually(WAIT, || async {
            cluster.servers().await.iter().all(|s| &s.id != server)
        })
        .await;
        stored_counts = progress(3, stored_counts).await;
    }
    stop_tx.send(true).unwrap();

    // Once every send is settled, the stored history is final: everyone must end up with it.
    eventually(WAIT, || async {
        settled.load(Ordering::SeqCst) == chatters.len()
    })
    .await;
    let mut stored = Vec::new();
    for (r, room) in rooms.iter().enumerate() {
        let history = stored_history(&cluster, &owner, &room.room_id).await;
        assert!(
            history.len() >= 5,
            "room {r}: traffic flowed ({} messages)",
            history.len()
        );
        finish[r].send(history.last().unwrap().seq).unwrap();
        stored.push(history);
    }
    let mut acked_by_room: Vec<Vec<String>> = vec![Vec::new(); rooms.len()];
    for (r, chatter) in chatters {
        let chatter = tokio::time::timeout(WAIT, chatter)
            .await
            .expect("the chatter settled")
            .unwrap();
        assert_eq!(
            brief(&chatter.seen),
            brief(&stored[r]),
            "room {r}: a client's own record is the whole history, once"
        );
        assert_eq!(chatter.seen, stored[r]);
        acked_by_room[r].extend(chatter.acked);
    }
    for (r, history) in stored.iter().enumerate() {
        assert_gap_free(history, &format!("room {r}"));
        let ids: Vec<&str> = history
            .iter()
            .map(|m| m.client_id.as_deref().unwrap())
            .collect();
        let unique: HashSet<&str> = ids.iter().copied().collect();
        assert_eq!(
            unique.len(),
            ids.len(),
            "room {r}: a message was stored twice"
        );
        let acked: HashSet<&str> = acked_by_room[r].iter().map(String::as_str).collect();
        assert_eq!(
            acked.len(),
            acked_by_room[r].len(),
            "room {r}: a send was acknowledged twice"
        );
        assert_eq!(
            unique, acked,
            "room {r}: stored = what the senders saw acknowledged (nothing lost)"
        );
    }
    // Every room left the first three servers.
    for room in &rooms {
        let now = backend.lookup_room(&owner, &room.room_id).await.unwrap();
        assert!(!first_servers.contains(&now.server_id));
    }
    cluster.stop().await;
}

async fn a_store_refusing_writes_fails_sends_loudly(postgres: bool) {
    let Some(backing) = Backing::new(postgres).await else {
        return;
    };
    let cluster = backing.cluster(ClusterOptions::default()).await;
    let backend = cluster.backend();
    let alice = cluster.login("alice").await;
    let bob = cluster.login("bob").await;
    let room = backend
        .create_room(&alice, &CreateRoomRequest::default())
        .await
        .unwrap();
    let (mut a, _) = RoomConnection::connect(&room.url, &room.token)
        .await
        .unwrap();
    let t = backend.lookup_room(&bob, &room.room_id).await.unwrap();
    let (mut b, _) = RoomConnection::connect(&t.url, &t.token).await.unwrap();
    assert_eq!(send_and_echo(&mut a, "one").await, 1);

    // Break the store: SQLite locked by another writer; PostgreSQL gone read-only (as after a
    // fail-over to a replica), its sessions cut.
    let blocker = match &backing {
        Backing::Sqlite => {
            let conn = rusqlite::Connection::open(cluster.data_dir.join("berth.db")).unwrap();
            conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
            Some(conn)
        }
        Backing::Postgres(db) => {
            db.admin_execute(&format!(
                "ALTER DATABASE {0} SET default_transaction_read_only = on;
                 SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{0}' AND pid <> pg_backend_pid();",
                db.name
            ))
            .await;
            None
        }
    };
    a.send("two", Some("c-two")).await.unwrap();
    loop {
        match a.recv_timeout(WAIT).await.unwrap() {
            RoomEvent::Frame(ServerFrame::Error { code, message, .. }) => {
                assert_eq!(code, "store_unavailable");
                assert!(message.contains("c-two"), "{message}");
                // The store's own words stay in the logs.
                for internal in ["sqlite", "locked", "postgres", "read-only", "transaction"] {
                    assert!(
                        !message.to_lowercase().contains(internal),
                        "internal cause reached the client: {message}"
                    );
                }
                break;
            }
            RoomEvent::Frame(ServerFrame::Message(m)) => {
                panic!("a message the store refused was delivered: {m:?}")
            }
            RoomEvent::Frame(_) => continue,
            other => panic!("{other:?}"),
        }
    }

    // Back to normal: the numbering goes on from the last stored message.
    match (&backing, blocker) {
        (_, Some(conn)) => conn.execute_batch("ROLLBACK").unwrap(),
        (Backing::Postgres(db), None) => {
            db.admin_execute(&format!(
                "ALTER DATABASE {} SET default_transaction_read_only = off",
                db.name
            ))
            .await
        }
        _ => unreachable!(),
    }
    // The first tries may still meet the broken connection: each is refused loudly or stored.
    let mut seq = None;
    for attempt in 0..10 {
        let id = format!("three-{attempt}");
        a.send("three", Some(&id)).await.unwrap();
        match a.recv_timeout(WAIT).await.unwrap() {
            RoomEvent::Frame(ServerFrame::Message(m)) => {
                seq = Some(m.seq);
                break;
            }
            RoomEvent::Frame(ServerFrame::Error { code, .. }) => {
                assert_eq!(code, "store_unavailable")
            }
            other => panic!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        seq,
        Some(2),
        "no gap where the refused message would have been"
    );
    let seen = messages_until(&mut b, 2).await;
    assert_eq!(
        seen.iter()
            .map(|m| (m.seq, m.text.as_str()))
            .collect::<Vec<_>>(),
        [(1, "one"), (2, "three")]
    );
    let stored = stored_history(&cluster, &alice, &room.room_id).await;
    assert_eq!(stored, seen);
    a.close().await.unwrap();
    b.close().await.unwrap();
    cluster.stop().await;
}
