//! End to end: login, create, look up, connect, chat — over real sockets, with session servers
//! spawned by the scheduler as real processes.

use std::collections::HashMap;
use std::time::Duration;

use berth::{RoomConnection, RoomEvent};
use berth_protocol::api::CreateRoomRequest;
use berth_protocol::frames::{ChatMessage, ServerFrame};
use berth_testkit::{Cluster, ClusterOptions, eventually};

const WAIT: Duration = Duration::from_secs(10);

/// Receives frames until a `message` arrives, skipping presence frames.
async fn next_message(conn: &mut RoomConnection) -> ChatMessage {
    loop {
        match conn.recv_timeout(WAIT).await.unwrap() {
            RoomEvent::Frame(ServerFrame::Message(m)) => return m,
            RoomEvent::Frame(ServerFrame::Joined { .. } | ServerFrame::Left { .. }) => continue,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_chat_in_one_room() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let backend = cluster.backend();
    let alice = cluster.login("alice").await;
    let bob = cluster.login("bob").await;

    let created = backend
        .create_room(
            &alice,
            &CreateRoomRequest {
                name: Some("lounge".into()),
                public: true,
                private: false,
            },
        )
        .await
        .unwrap();
    assert!(
        created.url.starts_with("ws://127.0.0.1:"),
        "url: {}",
        created.url
    );
    let (mut a, welcome_a) = RoomConnection::connect(&created.url, &created.token)
        .await
        .unwrap();
    assert_eq!(welcome_a.room_id, created.room_id);
    assert_eq!(welcome_a.you.username, "alice");
    assert_eq!(welcome_a.seq, 0);
    assert!(welcome_a.history.is_empty());

    let found = backend.lookup_room(&bob, &created.room_id).await.unwrap();
    assert_eq!(found.url, created.url);
    let (mut b, welcome_b) = RoomConnection::connect(&found.url, &found.token)
        .await
        .unwrap();
    let names: Vec<_> = welcome_b
        .members
        .iter()
        .map(|m| m.username.as_str())
        .collect();
    assert!(
        names.contains(&"alice") && names.contains(&"bob"),
        "members: {names:?}"
    );

    // Alice sees Bob arrive.
    match a.recv_timeout(WAIT).await.unwrap() {
        RoomEvent::Frame(ServerFrame::Joined { user }) => assert_eq!(user.username, "bob"),
        other => panic!("expected joined, got {other:?}"),
    }

    // The public room shows up in the listing with its members.
    let rooms = backend.list_rooms().await.unwrap();
    assert!(
        rooms
            .rooms
            .iter()
            .any(|r| r.room_id == created.room_id && r.name == "lounge")
    );

    // Interleaved sends: everyone sees every message in one order with consecutive seq.
    for i in 0..5 {
        a.send(&format!("a{i}"), Some(&format!("ca{i}")))
            .await
            .unwrap();
        b.send(&format!("b{i}"), None).await.unwrap();
    }
    let mut seen_a = Vec::new();
    let mut seen_b = Vec::new();
    for _ in 0..10 {
        seen_a.push(next_message(&mut a).await);
        seen_b.push(next_message(&mut b).await);
    }
    assert_eq!(seen_a, seen_b, "both members see the same sequence");
    for (i, m) in seen_a.iter().enumerate() {
        assert_eq!(m.seq, i as u64 + 1, "consecutive seq");
    }
    let from_alice: Vec<_> = seen_a.iter().filter(|m| m.username == "alice").collect();
    assert_eq!(from_alice.len(), 5);
    for (i, m) in from_alice.iter().enumerate() {
        assert_eq!(
            m.text,
            format!("a{i}"),
            "a member's own messages stay in order"
        );
        assert_eq!(m.client_id.as_deref(), Some(format!("ca{i}").as_str()));
    }
    assert!(
        seen_a
            .iter()
            .filter(|m| m.username == "bob")
            .all(|m| m.client_id.is_none())
    );

    // Bob leaves; Alice is told.
    b.close().await.unwrap();
    match a.recv_timeout(WAIT).await.unwrap() {
        RoomEvent::Frame(ServerFrame::Left { user }) => assert_eq!(user.username, "bob"),
        other => panic!("expected left, got {other:?}"),
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_rooms_and_missing_tokens_are_refused() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let backend = cluster.backend();
    let alice = cluster.login("alice").await;

    let err = backend
        .lookup_room(&alice, "r-doesnotexist")
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert_eq!(err.code(), Some("room_not_found"));

    let http = reqwest::Client::new();
    let no_token = http
        .post(format!("{}/api/rooms", cluster.backend_url))
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), 401);
    let body: serde_json::Value = no_token.json().await.unwrap();
    assert!(
        body["error"]["code"].is_string() && body["error"]["message"].is_string(),
        "{body}"
    );

    let bad_token = http
        .post(format!("{}/api/rooms", cluster.backend_url))
        .bearer_auth("not.a.jwt")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_token.status(), 401);
    let lookup_without = http
        .get(format!("{}/api/rooms/r-x", cluster.backend_url))
        .send()
        .await
        .unwrap();
    assert_eq!(lookup_without.status(), 401);

    let bad_name = http
        .post(format!("{}/api/login", cluster.backend_url))
        .json(&serde_json::json!({"username": "no spaces allowed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_name.status(), 400);
    let body: serde_json::Value = bad_name.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_username");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_spawn_servers_as_needed_and_every_room_is_reachable() {
    let cluster = Cluster::start(ClusterOptions {
        rooms_per_server: 2,
        ..Default::default()
    })
    .await;
    let backend = cluster.backend();
    let alice = cluster.login("alice").await;
    assert!(
        cluster.servers().await.is_empty(),
        "no warm servers in this test"
    );

    let mut tickets = Vec::new();
    for _ in 0..5 {
        tickets.push(
            backend
                .create_room(&alice, &CreateRoomRequest::default())
                .await
                .unwrap(),
        );
    }
    let servers = cluster.servers().await;
    assert_eq!(
        servers.len(),
        3,
        "5 rooms at 2 per server need exactly 3 servers: {servers:?}"
    );
    let mut per_server: HashMap<&str, u32> = HashMap::new();
    for t in &tickets {
        *per_server.entry(t.server_id.as_str()).or_default() += 1;
    }
    assert!(per_server.values().all(|&n| n <= 2), "{per_server:?}");

    for t in &tickets {
        let (_conn, welcome) = RoomConnection::connect(&t.url, &t.token).await.unwrap();
        assert_eq!(welcome.room_id, t.room_id);
        assert_eq!(welcome.server_id, t.server_id);
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_respect_slots_and_the_fleet_cap() {
    let cluster = Cluster::start(ClusterOptions {
        rooms_per_server: 2,
        max_servers: 3,
        scheduler_args: vec!["--create-rate".into(), "1000".into()],
        ..Default::default()
    })
    .await;
    let backend = cluster.backend();
    let alice = cluster.login("alice").await;

    let creates = (0..50).map(|_| {
        let (backend, alice) = (backend.clone(), alice.clone());
        tokio::spawn(async move {
            backend
                .create_room(&alice, &CreateRoomRequest::default())
                .await
        })
    });
    let mut placed: HashMap<String, u32> = HashMap::new();
    let mut refused = 0;
    for create in creates {
        match create.await.unwrap() {
            Ok(ticket) => *placed.entry(ticket.server_id).or_default() += 1,
            Err(err) => {
                assert_eq!(err.status(), Some(503), "{err}");
                assert_eq!(err.code(), Some("no_capacity"));
                assert!(err.retry_after().is_some(), "503 carries Retry-After");
                refused += 1;
            }
        }
    }
    let total: u32 = placed.values().sum();
    assert!(placed.len() <= 3, "at most 3 servers: {placed:?}");
    assert!(
        placed.values().all(|&n| n <= 2),
        "at most 2 rooms per server: {placed:?}"
    );
    assert_eq!(total, 6, "the fleet's 6 slots all get used: {placed:?}");
    assert_eq!(refused, 44);
    let servers = cluster.servers().await;
    assert!(servers.len() <= 3, "{servers:?}");
    assert!(servers.iter().all(|s| s.rooms <= 2), "{servers:?}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_leaves_the_registry() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let alice = cluster.login("alice").await;
    let ticket = cluster
        .backend()
        .create_room(&alice, &CreateRoomRequest::default())
        .await
        .unwrap();
    let server = cluster.server(&ticket.server_id).await;
    let pid = server.pid.expect("spawned servers have a pid");
    assert!(berth_testkit::process_alive(pid));

    cluster.kill_server(&ticket.server_id).await;
    eventually(WAIT, || async {
        cluster.servers().await.iter().all(|s| {
            s.id != ticket.server_id || s.state == berth_protocol::cluster::ServerState::Dead
        })
    })
    .await;
    assert!(!berth_testkit::process_alive(pid));
    cluster.stop().await;
}
