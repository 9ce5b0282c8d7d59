//! The scheduler-facing side (registration, heartbeats, re-registration, placement epochs, room
//! release, revocation, drain requests) against a small HTTP test double of the scheduler API.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use berth_protocol::cluster::{
    Heartbeat, HeartbeatAck, Placement, RegisterServer, Registered, ReleaseRoom, ServerState,
};
use berth_protocol::{ErrorBody, ErrorCode};
use common::{Keys, Server, claims, eventually, refusal_of, start_with};

const SECRET: &str = "test-cluster-secret";

/// What the fake scheduler saw and what it will answer.
#[derive(Default)]
struct Fake {
    registrations: Mutex<Vec<RegisterServer>>,
    registration_attempts: AtomicU32,
    heartbeats: Mutex<Vec<Heartbeat>>,
    releases: Mutex<Vec<(String, ReleaseRoom)>>,
    deletes: Mutex<Vec<String>>,
    placements: Mutex<HashMap<String, Placement>>,
    /// Answer 500 to this many registrations first.
    fail_registrations: AtomicU32,
    /// Answer 404 `unknown_server` to the next heartbeat.
    forget: AtomicBool,
    drain: AtomicBool,
    revoked: Mutex<Vec<String>>,
    unauthorized: AtomicU32,
    /// Id given to servers that register without one.
    assign_id: String,
    /// The heartbeat timeout announced at registration, in ms (0: none, as older schedulers).
    timeout_ms: AtomicU64,
    /// Registrations and heartbeats hang, as when the network to the scheduler is cut.
    unreachable: AtomicBool,
}

impl Fake {
    fn lease_ms(&self) -> Option<u64> {
        Some(self.timeout_ms.load(Ordering::SeqCst)).filter(|&ms| ms > 0)
    }

    async fn hang_while_unreachable(&self) {
        if self.unreachable.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }
}

type Shared = Arc<Fake>;

fn authorized(fake: &Fake, headers: &HeaderMap) -> bool {
    let ok = headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {SECRET}"));
    if !ok {
        fake.unauthorized.fetch_add(1, Ordering::SeqCst);
    }
    ok
}

async fn register(
    State(f): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<RegisterServer>,
) -> Response {
    if !authorized(&f, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    f.hang_while_unreachable().await;
    f.registration_attempts.fetch_add(1, Ordering::SeqCst);
    if f.fail_registrations.load(Ordering::SeqCst) > 0 {
        f.fail_registrations.fetch_sub(1, Ordering::SeqCst);
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let server_id = body
        .server_id
        .clone()
        .unwrap_or_else(|| f.assign_id.clone());
    f.registrations.lock().unwrap().push(body);
    Json(Registered {
        credential: None,
        server_id,
        heartbeat_interval_ms: 50,
        heartbeat_timeout_ms: f.lease_ms(),
    })
    .into_response()
}

async fn heartbeat(
    State(f): State<Shared>,
    headers: HeaderMap,
    Path(_id): Path<String>,
    Json(body): Json<Heartbeat>,
) -> Response {
    if !authorized(&f, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    f.hang_while_unreachable().await;
    if f.forget.swap(false, Ordering::SeqCst) {
        let body = ErrorBody::new(ErrorCode::UnknownServer, "who are you?");
        return (StatusCode::NOT_FOUND, Json(body)).into_response();
    }
    let draining = body.draining;
    f.heartbeats.lock().unwrap().push(body);
    let ack = HeartbeatAck {
        state: if draining {
            ServerState::Draining
        } else {
            ServerState::Ready
        },
        drain: f.drain.load(Ordering::SeqCst),
        revoked_rooms: std::mem::take(&mut *f.revoked.lock().unwrap()),
    };
    Json(ack).into_response()
}

async fn placement(
    State(f): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !authorized(&f, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match f.placements.lock().unwrap().get(&id) {
        Some(p) => Json(p.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(ErrorBody::new(ErrorCode::RoomNotFound, "no such room")),
        )
            .into_response(),
    }
}

async fn release(
    State(f): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<ReleaseRoom>,
) -> Response {
    if !authorized(&f, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    f.releases.lock().unwrap().push((id, body));
    StatusCode::NO_CONTENT.into_response()
}

async fn deregister(
    State(f): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !authorized(&f, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    f.deletes.lock().unwrap().push(id);
    StatusCode::NO_CONTENT.into_response()
}

async fn start_fake(fake: Fake) -> (Shared, SocketAddr) {
    let fake = Arc::new(fake);
    let app = Router::new()
        .route("/v1/servers", post(register))
        .route("/v1/servers/{id}/heartbeat", put(heartbeat))
        .route("/v1/servers/{id}", delete(deregister))
        .route("/v1/rooms/{id}", get(placement))
        .route("/v1/rooms/{id}/release", post(release))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (fake, addr)
}

/// A managed-style session server (not standalone) talking to the fake at `scheduler`.
async fn start_session(scheduler: SocketAddr, server_id: Option<&str>, extra: &[&str]) -> Server {
    let keys = Keys::generate();
    let mut args: Vec<String> = [
        "berth-session",
        "--scheduler-url",
        &format!("http://{scheduler}"),
        "--cluster-secret",
        SECRET,
        "--ticket-public-key",
        &keys.public_pem_path.display().to_string(),
        "--data-dir",
        &keys.dir.display().to_string(),
        "--managed",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(id) = server_id {
        args.extend(["--server-id".to_owned(), id.to_owned()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    start_with(keys, server_id.unwrap_or("s-assigned"), args).await
}

fn place(fake: &Fake, room: &str, server_id: &str, epoch: u64) {
    let placement = Placement {
        room_id: room.into(),
        server_id: server_id.into(),
        url: "ws://unused".into(),
        epoch,
        name: room.into(),
        public: false,
    };
    fake.placements
        .lock()
        .unwrap()
        .insert(room.into(), placement);
}

fn ticket(server: &Server, room: &str, user: &str, epoch: u64) -> String {
    let mut c = claims(&server.server_id, room, user);
    c.epoch = epoch;
    server.keys.mint(&c)
}

#[tokio::test]
async fn registers_heartbeats_checks_epochs_and_releases_idle_rooms() {
    let (fake, addr) = start_fake(Fake::default()).await;
    let mut server = start_session(addr, Some("s-1"), &["--room-idle-secs", "1"]).await;

    eventually("registration", || async {
        !fake.registrations.lock().unwrap().is_empty()
    })
    .await;
    {
        let regs = fake.registrations.lock().unwrap();
        let reg = &regs[0];
        assert_eq!(reg.server_id.as_deref(), Some("s-1"));
        assert_eq!(reg.url, format!("ws://127.0.0.1:{}/ws", server.addr.port()));
        assert_eq!(
            (reg.capacity.rooms, reg.capacity.members_per_room),
            (10, 100)
        );
        assert_eq!(reg.pid, Some(std::process::id()));
        assert!(reg.rooms.is_empty());
    }
    eventually("heartbeats", || async {
        fake.heartbeats.lock().unwrap().len() >= 2
    })
    .await;

    // A room opens only on a placement naming this server with the ticket's epoch.
    place(&fake, "r-a", "s-1", 3);
    place(&fake, "r-b", "s-2", 1);
    assert_eq!(
        server.refusal(&ticket(&server, "r-a", "alice", 2)).await,
        (421, "wrong_server".into())
    );
    assert_eq!(
        server.refusal(&ticket(&server, "r-b", "alice", 1)).await,
        (421, "wrong_server".into())
    );
    assert_eq!(
        server.refusal(&ticket(&server, "r-none", "alice", 1)).await,
        (421, "wrong_server".into())
    );
    let mut alice = server
        .connect(&ticket(&server, "r-a", "alice", 3))
        .await
        .unwrap();
    assert_eq!(alice.recv().await["type"], "welcome");
    // Once open, a ticket of another epoch is refused even if the placement changed.
    place(&fake, "r-a", "s-1", 4);
    assert_eq!(
        server.refusal(&ticket(&server, "r-a", "bob", 4)).await,
        (421, "wrong_server".into())
    );

    eventually("a heartbeat reporting r-a", || async {
        fake.heartbeats.lock().unwrap().iter().any(|h| {
            h.connections == 1
                && h.rooms
                    .iter()
                    .any(|r| r.room_id == "r-a" && r.epoch == 3 && r.members == 1)
        })
    })
    .await;

    // Forgotten by the scheduler: it registers again, with its rooms.
    fake.forget.store(true, Ordering::SeqCst);
    eventually("a second registration", || async {
        let regs = fake.registrations.lock().unwrap();
        regs.len() >= 2
            && regs[1]
                .rooms
                .iter()
                .any(|r| r.room_id == "r-a" && r.epoch == 3)
    })
    .await;

    // Left alone, the room is disposed and released.
    alice.ws.close(None).await.unwrap();
    eventually("the release of r-a", || async {
        fake.releases
            .lock()
            .unwrap()
            .iter()
            .any(|(id, r)| id == "r-a" && r.server_id == "s-1" && r.epoch == 3)
    })
    .await;

    server.stop().await.unwrap();
    assert_eq!(*fake.deletes.lock().unwrap(), ["s-1"]);
    assert_eq!(fake.unauthorized.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn revoked_rooms_close_and_a_drain_request_ends_the_server() {
    let (fake, addr) = start_fake(Fake::default()).await;
    let mut server = start_session(addr, Some("s-2"), &["--drain-timeout-secs", "1"]).await;
    eventually("registration", || async {
        !fake.registrations.lock().unwrap().is_empty()
    })
    .await;
    place(&fake, "r-v", "s-2", 1);
    place(&fake, "r-w", "s-2", 1);
    let mut victim = server
        .connect(&ticket(&server, "r-v", "alice", 1))
        .await
        .unwrap();
    let mut stayer = server
        .connect(&ticket(&server, "r-w", "bob", 1))
        .await
        .unwrap();
    assert_eq!(victim.recv().await["type"], "welcome");
    assert_eq!(stayer.recv().await["type"], "welcome");

    fake.revoked.lock().unwrap().push("r-v".into());
    assert_eq!(victim.close_code().await, Some(1012));

    fake.drain.store(true, Ordering::SeqCst);
    assert_eq!(stayer.close_code().await, Some(1012));
    let handle = server.handle.take().unwrap();
    let result = tokio::time::timeout(Duration::from_secs(30), handle)
        .await
        .expect("serve returns")
        .unwrap();
    assert!(result.is_ok());
    assert!(
        fake.heartbeats.lock().unwrap().iter().any(|h| h.draining),
        "heartbeats said draining"
    );
    assert_eq!(*fake.deletes.lock().unwrap(), ["s-2"]);
    // A revoked room is not released: the scheduler already placed it elsewhere.
    assert!(
        !fake
            .releases
            .lock()
            .unwrap()
            .iter()
            .any(|(id, _)| id == "r-v")
    );
}

#[tokio::test]
async fn registration_retries_and_takes_the_assigned_id() {
    let fake = Fake {
        assign_id: "s-assigned".into(),
        ..Fake::default()
    };
    fake.fail_registrations.store(3, Ordering::SeqCst);
    let (fake, addr) = start_fake(fake).await;
    let server = start_session(addr, None, &[]).await;

    eventually("a heartbeat after retries", || async {
        !fake.heartbeats.lock().unwrap().is_empty()
    })
    .await;
    assert!(fake.registration_attempts.load(Ordering::SeqCst) >= 4);
    assert_eq!(fake.registrations.lock().unwrap()[0].server_id, None);

    place(&fake, "r-z", "s-assigned", 7);
    let mut client = server
        .connect(&ticket(&server, "r-z", "alice", 7))
        .await
        .unwrap();
    let welcome = client.recv().await;
    assert_eq!(welcome["serverId"], "s-assigned");
    let other = server.keys.mint(&claims("s-1", "r-z", "bob"));
    match server.connect(&other).await {
        Ok(_) => panic!("a ticket for another server was accepted"),
        Err(e) => assert_eq!(refusal_of(e), (421, "wrong_server".into())),
    }
}

#[tokio::test]
async fn a_fenced_server_the_scheduler_forgot_closes_its_rooms_when_it_registers_again() {
    let fake = Fake::default();
    fake.timeout_ms.store(1000, Ordering::SeqCst);
    let (fake, addr) = start_fake(fake).await;
    // A grace far longer than the test: only the registration can close the room.
    let server = start_session(addr, Some("s-5"), &["--fence-grace-ms", "60000"]).await;
    eventually("registration", || async {
        !fake.registrations.lock().unwrap().is_empty()
    })
    .await;
    place(&fake, "r-f", "s-5", 1);
    let mut alice = server
        .connect(&ticket(&server, "r-f", "alice", 1))
        .await
        .unwrap();
    assert_eq!(alice.recv().await["type"], "welcome");

    // Cut off long enough to be fenced (750 ms): the member stays, its messages are refused.
    fake.unreachable.store(true, Ordering::SeqCst);
    eventually("the server to be fenced", || async {
        server
            .connect(&ticket(&server, "r-f", "bob", 1))
            .await
            .is_err()
    })
    .await;
    // The scheduler comes back having forgotten the server (as after declaring it dead): the
    // next heartbeat is refused, the server registers again and closes the room, whose
    // placement may have moved meanwhile.
    let registered = fake.registrations.lock().unwrap().len();
    fake.forget.store(true, Ordering::SeqCst);
    fake.unreachable.store(false, Ordering::SeqCst);
    assert_eq!(alice.close_code().await, Some(1012));
    assert!(fake.registrations.lock().unwrap().len() > registered);
}

#[tokio::test]
async fn a_server_that_cannot_renew_its_lease_is_fenced_then_closes_its_rooms_until_the_scheduler_answers()
 {
    let fake = Fake::default();
    fake.timeout_ms.store(2000, Ordering::SeqCst);
    let (fake, addr) = start_fake(fake).await;
    let server = start_session(addr, Some("s-4"), &["--fence-grace-ms", "500"]).await;
    eventually("registration", || async {
        !fake.registrations.lock().unwrap().is_empty()
    })
    .await;
    place(&fake, "r-l", "s-4", 1);
    let mut alice = server
        .connect(&ticket(&server, "r-l", "alice", 1))
        .await
        .unwrap();
    assert_eq!(alice.recv().await["type"], "welcome");
    // Heartbeats (every 50 ms) keep renewing the lease well past its length (1.5 s).
    tokio::time::sleep(Duration::from_millis(1800)).await;
    alice.say("still served", None).await;
    assert_eq!(alice.recv_type("message").await["text"], "still served");

    // Cut off: before the scheduler's 2 s timeout could have let another server take the
    // room, the server is fenced: the room accepts no message (its member stays, for the
    // grace) and the server admits nobody while it cannot renew.
    fake.unreachable.store(true, Ordering::SeqCst);
    let cut = tokio::time::Instant::now();
    let fenced_after = loop {
        alice.say("while cut off", Some("c-cut")).await;
        let frame = alice.recv().await;
        if frame["type"] == "error" {
            assert_eq!(
                (frame["code"].as_str(), frame["clientId"].as_str()),
                (Some("scheduler_unavailable"), Some("c-cut")),
                "{frame}"
            );
            break cut.elapsed();
        }
        assert_eq!(frame["text"], "while cut off", "{frame}");
        assert!(cut.elapsed() < Duration::from_secs(3), "never fenced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        fenced_after < Duration::from_millis(2000),
        "fenced after {fenced_after:?}"
    );
    assert_eq!(
        server.refusal(&ticket(&server, "r-l", "alice", 1)).await,
        (503, "scheduler_unavailable".into())
    );
    // The grace ends: the room is closed, its member told to come back.
    assert_eq!(alice.close_code().await, Some(1012));
    let closed_after = cut.elapsed();
    assert!(
        closed_after >= fenced_after + Duration::from_millis(250),
        "closed {closed_after:?} after the cut, fenced after {fenced_after:?}: no grace"
    );

    // The scheduler answers again: the server takes connections again.
    fake.unreachable.store(false, Ordering::SeqCst);
    let mut back = None;
    for _ in 0..200 {
        if let Ok(client) = server.connect(&ticket(&server, "r-l", "alice", 1)).await {
            back = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut alice = back.expect("admitted again once the scheduler answers");
    assert_eq!(alice.recv().await["type"], "welcome");
}
