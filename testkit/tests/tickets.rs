//! Tickets are checked by the session server before the upgrade: signature, expiry, server,
//! room and placement epoch.

use std::time::Duration;

use berth::RoomConnection;
use berth_protocol::api::CreateRoomRequest;
use berth_protocol::claims::TicketClaims;
use berth_protocol::now_secs;
use berth_testkit::{Cluster, ClusterOptions, mint_ticket, temp_dir, write_ticket_keys};

async fn refusal(url: &str, token: &str) -> (u16, String) {
    match RoomConnection::connect(url, token).await {
        Ok(_) => panic!("ticket was accepted"),
        Err(err) => (
            err.status().unwrap_or(0),
            err.code().unwrap_or_default().to_owned(),
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_are_checked_before_the_upgrade() {
    let cluster = Cluster::start(ClusterOptions {
        rooms_per_server: 1,
        ..Default::default()
    })
    .await;
    let alice = cluster.login("alice").await;
    let backend = cluster.backend();
    let room_a = backend
        .create_room(&alice, &CreateRoomRequest::default())
        .await
        .unwrap();
    let room_b = backend
        .create_room(&alice, &CreateRoomRequest::default())
        .await
        .unwrap();
    assert_ne!(
        room_a.server_id, room_b.server_id,
        "one room per server in this test"
    );
    let keys = cluster.ticket_keys();
    let placement: berth_protocol::cluster::Placement = cluster
        .scheduler_get(&format!("/v1/rooms/{}", room_a.room_id))
        .await
        .json()
        .await
        .unwrap();

    let claims = |room: &str, aud: &str, exp: u64| TicketClaims {
        sub: "u-alice".into(),
        name: "alice".into(),
        room: room.into(),
        aud: aud.into(),
        epoch: placement.epoch,
        iat: now_secs(),
        exp,
        jti: berth_protocol::claims::new_ticket_id(),
    };

    // A valid ticket works (and so does the backend's own).
    let good = mint_ticket(
        &keys,
        &claims(&room_a.room_id, &room_a.server_id, now_secs() + 60),
    );
    let (_conn, welcome) = RoomConnection::connect(&room_a.url, &good).await.unwrap();
    assert_eq!(welcome.room_id, room_a.room_id);
    RoomConnection::connect(&room_a.url, &room_a.token)
        .await
        .unwrap();

    // Expired.
    let expired = mint_ticket(
        &keys,
        &claims(&room_a.room_id, &room_a.server_id, now_secs() - 120),
    );
    assert_eq!(
        refusal(&room_a.url, &expired).await,
        (401, "invalid_ticket".into())
    );

    // Signed by a key that is not the backend's.
    let rogue = write_ticket_keys(&temp_dir("rogue"));
    let forged = mint_ticket(
        &rogue,
        &claims(&room_a.room_id, &room_a.server_id, now_secs() + 60),
    );
    assert_eq!(
        refusal(&room_a.url, &forged).await,
        (401, "invalid_ticket".into())
    );

    // Garbage and no ticket at all.
    assert_eq!(
        refusal(&room_a.url, "not-a-jwt").await,
        (401, "invalid_ticket".into())
    );
    assert_eq!(
        refusal(&room_a.url, "").await,
        (401, "invalid_ticket".into())
    );

    // A ticket for server B presented to server A.
    assert_eq!(
        refusal(&room_a.url, &room_b.token).await,
        (421, "wrong_server".into())
    );

    // A ticket for room B (hosted on server B) but addressed to server A: server A does not own
    // room B, so it must not open it.
    let other_room = mint_ticket(
        &keys,
        &claims(&room_b.room_id, &room_a.server_id, now_secs() + 60),
    );
    let (status, code) = refusal(&room_a.url, &other_room).await;
    assert_eq!((status, code.as_str()), (421, "wrong_server"));

    // A ticket from a stale placement epoch (a fencing token) is refused.
    let mut stale = claims(&room_a.room_id, &room_a.server_id, now_secs() + 60);
    stale.epoch = placement.epoch - 1;
    assert_eq!(
        refusal(&room_a.url, &mint_ticket(&keys, &stale)).await,
        (421, "wrong_server".into())
    );

    // A ticket opens one connection: the good one, used above, is refused now.
    assert_eq!(
        refusal(&room_a.url, &good).await,
        (401, "invalid_ticket".into())
    );
    assert_eq!(
        refusal(&room_a.url, &room_a.token).await,
        (401, "invalid_ticket".into())
    );

    // The refusals did not disturb the room.
    let fresh = mint_ticket(
        &keys,
        &claims(&room_a.room_id, &room_a.server_id, now_secs() + 60),
    );
    let (mut conn, _) = RoomConnection::connect(&room_a.url, &fresh).await.unwrap();
    conn.send("still here", None).await.unwrap();
    loop {
        match conn.recv_timeout(Duration::from_secs(5)).await.unwrap() {
            berth::RoomEvent::Frame(berth_protocol::frames::ServerFrame::Message(m)) => {
                assert_eq!(m.text, "still here");
                break;
            }
            berth::RoomEvent::Frame(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
    cluster.stop().await;
}
