//! `Room` reconnects: real backend, fake scheduler, fake session server that checks tickets.

mod support;

use std::time::Duration;

use berth::{Backend, ReconnectPolicy, Room, RoomConnection, RoomUpdate, Session};
use berth_protocol::api::CreateRoomRequest;
use berth_protocol::frames::ServerFrame;
use support::{Cluster, FakeSession, TokenCheck, start_session};

const WAIT: Duration = Duration::from_secs(20);

struct Setup {
    cluster: Cluster,
    session: FakeSession,
    backend: Backend,
    user: Session,
}

async fn setup() -> Setup {
    // The session server needs the backend's public key, the backend needs the session's URL:
    // start the session server with a placeholder check, then swap in the real key.
    let (url, session) = start_session(TokenCheck::Exact(String::new())).await;
    let cluster = Cluster::start(&url).await;
    let backend = Backend::new(&cluster.backend_url);
    let user = backend.login("alice").await.unwrap();
    session.lock().unwrap().check = TokenCheck::Ticket(cluster.public_key());
    Setup {
        cluster,
        session,
        backend,
        user,
    }
}

fn fast() -> ReconnectPolicy {
    ReconnectPolicy {
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        max_attempts: Some(3),
    }
}

async fn next(room: &mut Room) -> RoomUpdate {
    tokio::time::timeout(WAIT, room.next())
        .await
        .expect("an update in time")
        .unwrap()
}

async fn next_text(room: &mut Room) -> (u64, String) {
    match next(room).await {
        RoomUpdate::Frame(ServerFrame::Message(m)) => (m.seq, m.text),
        other => panic!("expected a message, got {other:?}"),
    }
}

async fn create(s: &Setup) -> Room {
    let (mut room, ticket, welcome) = Room::create(
        s.backend.clone(),
        s.user.clone(),
        &CreateRoomRequest::default(),
    )
    .await
    .unwrap();
    assert_eq!(welcome.you.user_id, "g-alice");
    assert_eq!(room.room_id(), ticket.room_id);
    room.set_policy(fast());
    room
}

#[tokio::test]
async fn reconnects_after_1012_without_duplicates() {
    let s = setup().await;
    let mut room = create(&s).await;
    room.send("one", None).await.unwrap();
    assert_eq!(next_text(&mut room).await, (1, "one".into()));
    room.send("two", None).await.unwrap();
    assert_eq!(next_text(&mut room).await, (2, "two".into()));

    room.send("!close 1012", None).await.unwrap();
    match next(&mut room).await {
        RoomUpdate::Reconnected(welcome) => {
            assert!(
                welcome.history.is_empty(),
                "already seen: {:?}",
                welcome.history
            );
            assert_eq!(welcome.seq, 2);
        }
        other => panic!("expected a reconnect, got {other:?}"),
    }
    assert_eq!(s.session.lock().unwrap().connections, 2);
    assert!(room.is_connected());
    room.send("three", None).await.unwrap();
    assert_eq!(next_text(&mut room).await, (3, "three".into()));
    assert_eq!(room.last_seq(), 3);
}

#[tokio::test]
async fn a_dropped_socket_reconnects_and_shows_what_was_missed_once() {
    let s = setup().await;
    let mut room = create(&s).await;
    room.send("before", None).await.unwrap();
    assert_eq!(next_text(&mut room).await, (1, "before".into()));

    room.send("!drop", None).await.unwrap();
    // Someone else talks while we are away (our reconnect only runs inside `next`).
    let other = s.backend.login("bob").await.unwrap();
    let ticket = s.backend.lookup_room(&other, room.room_id()).await.unwrap();
    let (mut bob, _) = RoomConnection::connect_ticket(&ticket).await.unwrap();
    bob.send("while you were away", None).await.unwrap();
    bob.recv_timeout(WAIT).await.unwrap();

    // The server replays the last message live after welcome: it must not show twice.
    s.session.lock().unwrap().replay_on_join = true;
    match next(&mut room).await {
        RoomUpdate::Reconnected(welcome) => {
            let missed: Vec<_> = welcome
                .history
                .iter()
                .map(|m| (m.seq, m.text.as_str()))
                .collect();
            assert_eq!(missed, [(2, "while you were away")]);
        }
        other => panic!("expected a reconnect, got {other:?}"),
    }
    room.send("after", None).await.unwrap();
    assert_eq!(next_text(&mut room).await, (3, "after".into()));
}

#[tokio::test]
async fn policy_close_is_final() {
    let s = setup().await;
    let mut room = create(&s).await;
    room.send("!close 1008", None).await.unwrap();
    let closed = next(&mut room).await;
    assert!(
        matches!(
            closed,
            RoomUpdate::Closed {
                code: Some(1008),
                ..
            }
        ),
        "{closed:?}"
    );
    assert_eq!(next(&mut room).await, closed);
    assert_eq!(s.session.lock().unwrap().connections, 1, "no reconnect");
    assert!(matches!(
        room.send("x", None).await,
        Err(berth::ClientError::NotConnected)
    ));
}

#[tokio::test]
async fn a_vanished_room_ends_the_reconnect() {
    let s = setup().await;
    let mut room = create(&s).await;
    s.cluster.scheduler.lock().unwrap().rooms.clear();
    room.send("!close 1012", None).await.unwrap();
    let err = tokio::time::timeout(WAIT, room.next())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), Some("room_not_found"));
}

#[tokio::test]
async fn gives_up_after_the_policy_attempts() {
    let s = setup().await;
    let mut room = create(&s).await;
    s.session.lock().unwrap().check = TokenCheck::Exact("nobody has this".into());
    let seen_before = s.session.lock().unwrap().queries.len();
    room.send("!close 1011", None).await.unwrap();
    let err = tokio::time::timeout(WAIT, room.next())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), Some("invalid_ticket"));
    assert_eq!(
        s.session.lock().unwrap().queries.len() - seen_before,
        3,
        "three attempts"
    );
}

#[tokio::test]
async fn join_by_id_sees_history() {
    let s = setup().await;
    let mut first = create(&s).await;
    first.send("hi", None).await.unwrap();
    assert_eq!(next_text(&mut first).await, (1, "hi".into()));

    let bob = s.backend.login("bob").await.unwrap();
    let (room, welcome) = Room::join(s.backend.clone(), bob, first.room_id())
        .await
        .unwrap();
    assert_eq!(welcome.you.user_id, "g-bob");
    assert_eq!(welcome.history.len(), 1);
    assert_eq!(room.last_seq(), 1);
    room.close().await.unwrap();

    let err = Room::join(s.backend.clone(), s.user.clone(), "r-nope")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("room_not_found"));
}
