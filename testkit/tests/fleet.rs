//! The fleet's lifecycle, end to end: warm buffer, idle rooms and servers, drain, failure,
//! per-user create limits, and a scheduler restart under outside session servers.

use std::time::Duration;

use berth::{RoomConnection, RoomEvent};
use berth_protocol::api::CreateRoomRequest;
use berth_protocol::cluster::ServerState;
use berth_protocol::frames::{ServerFrame, close};
use berth_testkit::{Cluster, ClusterOptions, eventually, eventually_some, process_alive};

const WAIT: Duration = Duration::from_secs(15);

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

async fn ready_servers(cluster: &Cluster) -> usize {
    cluster
        .servers()
        .await
        .iter()
        .filter(|s| s.state == ServerState::Ready)
        .count()
}

/// Sends a message and waits for it to come back: proves the connection works end to end.
async fn round_trip(conn: &mut RoomConnection, text: &str) {
    conn.send(text, Some("rt")).await.unwrap();
    loop {
        match conn.recv_timeout(WAIT).await.unwrap() {
            RoomEvent::Frame(ServerFrame::Message(m)) if m.text == text => return,
            RoomEvent::Frame(_) => continue,
            other => panic!("expected our message back, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_warm_buffer_is_refilled_in_the_background() {
    let cluster = Cluster::start(ClusterOptions {
        rooms_per_server: 2,
        warm_servers: 1,
        ..Default::default()
    })
    .await;
    // At start the buffer is filled without any create.
    eventually(WAIT, || async { ready_servers(&cluster).await == 1 }).await;

    let alice = cluster.login("alice").await;
    let backend = cluster.backend();
    let first = backend
        .create_room(&alice, &CreateRoomRequest::default())
        .await
        .unwrap();
    let second = backend
        .create_room(&alice, &CreateRoomRequest::default())
        .await
        .unwrap();
    assert_eq!(
        first.server_id, second.server_id,
        "both fit on the warm server"
    );

    // The buffer is used up: a new server appears with no create waiting for it.
    eventually(WAIT, || async { ready_servers(&cluster).await == 2 }).await;
    let third = backend
        .create_room(&alice, &CreateRoomRequest::default())
        .await
        .unwrap();
    assert_ne!(third.server_id, first.server_id);
    let metrics = reqwest::get(format!("{}/metrics", cluster.scheduler_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("berth_scheduler_spawns_total"),
        "{metrics}"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_rooms_are_disposed_and_idle_servers_stopped() {
    let cluster = Cluster::start(ClusterOptions {
        scheduler_args: args(&["--room-idle-secs", "1", "--server-idle-secs", "1"]),
        ..Default::default()
    })
    .await;
    let alice = cluster.login("alice").await;
    let backend = cluster.backend();
    let room = backend
        .create_room(&alice, &CreateRoomRequest::default())
        .await
        .unwrap();
    let pid = cluster.server(&room.server_id).await.pid.unwrap();
    let (conn, _) = RoomConnection::connect(&room.url, &room.token)
        .await
        .unwrap();
    conn.close().await.unwrap();

    // Empty for a second: the room is disposed (dormant: its slot is free, it is not forgotten).
    eventually(WAIT, || async {
        cluster
            .servers()
            .await
            .iter()
            .find(|s| s.id == room.server_id)
            .is_none_or(|s| s.rooms == 0)
    })
    .await;
    // The server, now empty, is drained and stopped; its process is gone.
    eventually(WAIT, || async {
        cluster
            .servers()
            .await
            .iter()
            .all(|s| s.id != room.server_id)
    })
    .await;
    eventually(WAIT, || async move { !process_alive(pid) }).await;
    // Looking the dormant room up places it again, on a new server.
    let again = backend.lookup_room(&alice, &room.room_id).await.unwrap();
    assert_ne!(again.server_id, room.server_id);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_server_moves_new_rooms_elsewhere_and_closes_with_1012() {
    let cluster = Cluster::start(ClusterOptions {
        scheduler_args: args(&["--drain-timeout-secs", "1"]),
        ..Default::default()
    })
    .await;
    let alice = cluster.login("alice").await;
    let backend = cluster.backend();
    let room = backend
        .create_room(&alice, &CreateRoomRequest::default())
        .await
        .unwrap();
    let (mut conn, _) = RoomConnection::connect(&room.url, &room.token)
        .await
        .unwrap();

    let drained = cluster
        .scheduler_post(&format!("/v1/servers/{}/drain", room.server_id))
        .await;
    assert_eq!(drained.status(), 202);
    eventually(WAIT, || async {
        cluster.server(&room.server_id).await.state == ServerState::Draining
    })
    .await;

    // No new room lands on the draining server.
    let other = backend
        .create_room(&alice, &CreateRoomRequest::default())
        .await
        .unwrap();
    assert_ne!(other.server_id, room.server_id);

    // The member keeps being served until the drain timeout, then is told to go (1012)…
    loop {
        match conn.recv_timeout(WAIT).await.unwrap() {
            RoomEvent::Closed { code, .. } => {
                assert_eq!(code, Some(close::RESTART));
                break;
            }
            RoomEvent::Frame(_) => continue,
        }
    }
    // …and looking the room up again gives a working URL on another server.
    let moved = eventually_some(WAIT, || async {
        backend
            .lookup_room(&alice, &room.room_id)
            .await
            .ok()
            .filter(|t| t.server_id != room.server_id)
    })
    .await;
    let (mut conn, welcome) = RoomConnection::connect(&moved.url, &moved.token)
        .await
        .unwrap();
    assert_eq!(welcome.room_id, room.room_id);
    round_trip(&mut conn, "after the drain").await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_s_rooms_are_placed_again_on_lookup() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let alice = cluster.login("alice").await;
    let backend = cluster.backend();
    let room = backend
        .create_room(&alice, &CreateRoomRequest::default())
        .await
        .unwrap();
    let (mut conn, _) = RoomConnection::connect(&room.url, &room.token)
        .await
        .unwrap();
    round_trip(&mut conn, "before").await;

    cluster.kill_server(&room.server_id).await;
    match conn.recv_timeout(WAIT).await.unwrap() {
        RoomEvent::Closed { .. } => {}
        other => panic!("expected the socket to drop, got {other:?}"),
    }
    let moved = eventually_some(WAIT, || async {
        backend
            .lookup_room(&alice, &room.room_id)
            .await
            .ok()
            .filter(|t| t.server_id != room.server_id)
    })
    .await;
    let (mut conn, _) = RoomConnection::connect(&moved.url, &moved.token)
        .await
        .unwrap();
    round_trip(&mut conn, "after").await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_creation_is_rate_limited_per_user() {
    let cluster = Cluster::start(ClusterOptions {
        scheduler_args: args(&["--create-rate", "3"]),
        ..Default::default()
    })
    .await;
    let backend = cluster.backend();
    let alice = cluster.login("alice").await;
    let bob = cluster.login("bob").await;
    for _ in 0..3 {
        backend
            .create_room(&alice, &CreateRoomRequest::default())
            .await
            .unwrap();
    }
    let err = backend
        .create_room(&alice, &CreateRoomRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(429), Some("rate_limited"))
    );
    assert!(err.retry_after().is_some_and(|s| s >= 1));
    // Other users are not affected.
    backend
        .create_room(&bob, &CreateRoomRequest::default())
        .await
        .unwrap();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_scheduler_finds_outside_servers_and_their_rooms() {
    let mut cluster = Cluster::start(ClusterOptions {
        max_servers: 0,
        ..Default::default()
    })
    .await;
    let _outside = cluster.start_outside_session(&[]);
    eventually(WAIT, || async { ready_servers(&cluster).await == 1 }).await;
    let server = cluster.servers().await.remove(0);
    assert!(!server.managed, "started by someone else");

    let alice = cluster.login("alice").await;
    let backend = cluster.backend();
    let room = backend
        .create_room(&alice, &CreateRoomRequest::default())
        .await
        .unwrap();
    assert_eq!(room.server_id, server.id);
    let (mut conn, _) = RoomConnection::connect(&room.url, &room.token)
        .await
        .unwrap();

    cluster.restart_scheduler().await;
    // The outside server re-registers with its rooms; the room is found where it was.
    eventually(WAIT, || async { ready_servers(&cluster).await == 1 }).await;
    let found = eventually_some(WAIT, || async {
        backend.lookup_room(&alice, &room.room_id).await.ok()
    })
    .await;
    assert_eq!(
        (found.server_id.as_str(), found.url.as_str()),
        (server.id.as_str(), room.url.as_str())
    );
    // The member was never disconnected, and a newcomer with a fresh ticket gets in.
    round_trip(&mut conn, "still connected").await;
    let bob = cluster.login("bob").await;
    let for_bob = backend.lookup_room(&bob, &room.room_id).await.unwrap();
    let (mut b, _) = RoomConnection::connect(&for_bob.url, &for_bob.token)
        .await
        .unwrap();
    round_trip(&mut b, "hello after restart").await;
    cluster.stop().await;
}
