//! Every limit of a session server is enforced and answered clearly, through the real flow.

use std::time::Duration;

use berth::{RoomConnection, RoomEvent};
use berth_protocol::api::CreateRoomRequest;
use berth_protocol::frames::{ServerFrame, close};
use berth_testkit::{Cluster, ClusterOptions};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

/// The next frame that is not presence.
async fn next_non_presence(conn: &mut RoomConnection) -> RoomEvent {
    loop {
        match conn.recv_timeout(WAIT).await.unwrap() {
            RoomEvent::Frame(ServerFrame::Joined { .. } | ServerFrame::Left { .. }) => continue,
            other => return other,
        }
    }
}

fn assert_error(event: RoomEvent, code: &str) {
    match event {
        RoomEvent::Frame(ServerFrame::Error {
            code: got, message, ..
        }) => {
            assert_eq!(got, code);
            assert!(!message.is_empty());
        }
        other => panic!("expected error {code}, got {other:?}"),
    }
}

async fn closed_with(conn: &mut RoomConnection, want: u16) {
    loop {
        match conn.recv_timeout(WAIT).await.unwrap() {
            RoomEvent::Closed { code, .. } => {
                assert_eq!(code, Some(want));
                return;
            }
            RoomEvent::Frame(_) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_server_limits() {
    let cluster = Cluster::start(ClusterOptions {
        members_per_room: 2,
        ..Default::default()
    })
    .await;
    let backend = cluster.backend();
    let alice = cluster.login("alice").await;
    let bob = cluster.login("bob").await;
    let carol = cluster.login("carol").await;
    let room = backend
        .create_room(&alice, &CreateRoomRequest::default())
        .await
        .unwrap();
    let (mut a, _) = RoomConnection::connect(&room.url, &room.token)
        .await
        .unwrap();

    // Over-long text: an error frame, and the connection keeps working.
    a.send(&"x".repeat(4097), Some("long")).await.unwrap();
    assert_error(next_non_presence(&mut a).await, "text_too_long");
    a.send(&"y".repeat(4096), None).await.unwrap();
    match next_non_presence(&mut a).await {
        RoomEvent::Frame(ServerFrame::Message(m)) => assert_eq!(m.text.len(), 4096),
        other => panic!("expected the 4096-byte message, got {other:?}"),
    }

    // Malformed frames.
    a.send_raw(Message::text("{not json")).await.unwrap();
    assert_error(next_non_presence(&mut a).await, "bad_frame");
    a.send_raw(Message::text(r#"{"type":"shout","text":"hi"}"#))
        .await
        .unwrap();
    assert_error(next_non_presence(&mut a).await, "bad_frame");

    // Full room: two members fit, a third user is refused before the upgrade.
    let for_bob = backend.lookup_room(&bob, &room.room_id).await.unwrap();
    let (mut b, _) = RoomConnection::connect(&for_bob.url, &for_bob.token)
        .await
        .unwrap();
    let for_carol = backend.lookup_room(&carol, &room.room_id).await.unwrap();
    let err = RoomConnection::connect(&for_carol.url, &for_carol.token)
        .await
        .unwrap_err();
    assert_eq!((err.status(), err.code()), (Some(409), Some("room_full")));
    // …but a member already present may open another tab.
    let again = backend.lookup_room(&bob, &room.room_id).await.unwrap();
    RoomConnection::connect(&again.url, &again.token)
        .await
        .unwrap();

    // Oversize frame: closed with 1008.
    b.send_raw(Message::text("z".repeat(100 * 1024)))
        .await
        .unwrap();
    closed_with(&mut b, close::POLICY).await;

    // Flooding: refused with rate_limited, then closed with 1008 if it keeps on.
    let mut rate_limited = 0;
    for i in 0..400 {
        if a.send(&format!("flood {i}"), None).await.is_err() {
            break;
        }
    }
    loop {
        match a.recv_timeout(WAIT).await.unwrap() {
            RoomEvent::Frame(ServerFrame::Error { code, .. }) if code == "rate_limited" => {
                rate_limited += 1
            }
            RoomEvent::Frame(_) => continue,
            RoomEvent::Closed { code, .. } => {
                assert_eq!(code, Some(close::POLICY));
                break;
            }
        }
    }
    assert!(
        rate_limited >= 1,
        "a flood is told it is rate limited before it is closed"
    );
    cluster.stop().await;
}
