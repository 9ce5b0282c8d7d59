//! The scheduler's HTTP API over real sockets, with fake session servers that register and
//! heartbeat over HTTP (no processes are spawned here; see `spawn.rs` for that).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use berth_protocol::cluster::{RoomDirectory, ServerState};
use common::{Scheduler, error_of, eventually, hosted};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn v1_needs_the_secret_healthz_and_metrics_do_not() {
    let s = Scheduler::start(&[]).await;
    let plain = &s.http;
    let res = plain.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.text().await.unwrap(), "ok");
    let res = plain.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.text()
            .await
            .unwrap()
            .contains("berth_scheduler_servers{state=\"ready\"} 0")
    );

    for req in [
        plain.get(s.url("/v1/servers")),
        plain.post(s.url("/v1/rooms")).json(&json!({})),
        plain.get(s.url("/v1/rooms/r-abc")),
        plain.get(s.url("/v1/servers")).bearer_auth("wrong-secret"),
        plain
            .get(s.url("/v1/servers"))
            .bearer_auth(format!("{}x", common::SECRET)),
        plain
            .get(s.url("/v1/servers"))
            .header("authorization", common::SECRET),
        plain.get(s.url("/v1/no-such-call")),
    ] {
        let res = req.send().await.unwrap();
        assert_eq!(res.headers().get("www-authenticate").unwrap(), "Bearer");
        assert_eq!(
            error_of(res).await,
            (StatusCode::UNAUTHORIZED, "unauthorized".into())
        );
    }
    let res = s.get("/v1/servers").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = s.get("/v1/no-such-call").send().await.unwrap();
    assert_eq!(
        error_of(res).await,
        (StatusCode::NOT_FOUND, "not_found".into())
    );
    s.stop().await;
}

#[tokio::test]
async fn register_heartbeat_place_lookup_and_404() {
    let s = Scheduler::start(&[]).await;
    let id = s.register(Some("s-one"), 4, vec![]).await;
    assert_eq!(id, "s-one");
    // Outside servers without an id get one.
    let assigned = s.register(None, 4, vec![]).await;
    assert!(assigned.starts_with("s-") && assigned != "s-one");

    let ack = s.heartbeat("s-one", vec![], false).await.unwrap();
    assert_eq!(
        (ack.state, ack.drain, ack.revoked_rooms.len()),
        (ServerState::Ready, false, 0)
    );
    assert_eq!(
        s.heartbeat("s-nobody", vec![], false).await.unwrap_err(),
        (StatusCode::NOT_FOUND, "unknown_server".into())
    );

    let p = s
        .create(json!({"name": "lobby", "public": true, "createdBy": "u-1"}))
        .await
        .unwrap();
    assert!(p.room_id.starts_with("r-"));
    assert_eq!(p.name, "lobby");
    assert!(p.public);
    assert!(p.url.starts_with("ws://127.0.0.1:9/"));
    assert!(
        p.epoch > 1_600_000_000_000,
        "epochs start from the clock in ms"
    );
    let found = s.lookup(&p.room_id).await.unwrap();
    assert_eq!(found, p);

    // The name defaults to the room id; an empty body is fine.
    let res = s.post("/v1/rooms").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let q: berth_protocol::cluster::Placement = res.json().await.unwrap();
    assert_eq!(q.name, q.room_id);
    assert!(!q.public);
    assert!(q.epoch > p.epoch);

    assert_eq!(
        s.lookup("r-doesnotexist").await.unwrap_err(),
        (StatusCode::NOT_FOUND, "room_not_found".into())
    );
    assert_eq!(
        s.lookup("bad%20id").await.unwrap_err(),
        (StatusCode::BAD_REQUEST, "invalid_request".into())
    );

    // Heartbeats carry member counts into the listing; `public` filters it.
    s.heartbeat(&p.server_id, vec![hosted(&p.room_id, p.epoch)], false)
        .await
        .unwrap();
    let list: RoomDirectory = s
        .get("/v1/rooms?public=true")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.rooms.len(), 1);
    assert_eq!(
        (list.rooms[0].room_id.as_str(), list.rooms[0].members),
        (p.room_id.as_str(), 1)
    );
    let all: RoomDirectory = s
        .get("/v1/rooms")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all.rooms.len(), 2);
    let private: RoomDirectory = s
        .get("/v1/rooms?public=false")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(private.rooms.len(), 1);
    let res = s.get("/v1/rooms?public=maybe").send().await.unwrap();
    assert_eq!(error_of(res).await.1, "invalid_request");

    let info = s.server(&p.server_id).await.unwrap();
    assert_eq!(info.rooms, 2, "both rooms went to the fullest server");
    assert_eq!(
        (
            info.state,
            info.managed,
            info.capacity.rooms,
            info.connections
        ),
        (ServerState::Ready, false, 4, 1)
    );
    s.stop().await;
}

#[tokio::test]
async fn bad_requests_get_the_error_body() {
    let s = Scheduler::start(&[]).await;
    s.register(Some("s-one"), 4, vec![]).await;
    for body in [
        json!({"name": "x".repeat(65)}),
        json!({"name": "tab\there"}),
        json!({"public": "yes"}),
        json!({"createdBy": "u".repeat(200)}),
    ] {
        assert_eq!(s.create(body).await.unwrap_err().1, "invalid_request");
    }
    let res = s.post("/v1/rooms").body("{not json").send().await.unwrap();
    assert_eq!(
        error_of(res).await,
        (StatusCode::BAD_REQUEST, "invalid_request".into())
    );
    let huge = format!("{{\"name\": \"{}\"}}", "a".repeat(100 * 1024));
    let res = s
        .post("/v1/rooms")
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(res).await,
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large".into())
    );
    for bad in [
        json!({"url": "http://x/ws", "capacity": {"rooms": 1, "membersPerRoom": 1}}),
        json!({"url": "ws://x/ws", "capacity": {"rooms": 0, "membersPerRoom": 1}}),
        json!({"serverId": "bad id", "url": "ws://x/ws", "capacity": {"rooms": 1, "membersPerRoom": 1}}),
        json!({"url": "ws://x/ws", "capacity": {"rooms": 1, "membersPerRoom": 1}, "rooms": [{"roomId": "no/slash", "epoch": 1, "members": 0}]}),
    ] {
        let res = s.post("/v1/servers").json(&bad).send().await.unwrap();
        assert_eq!(
            error_of(res).await,
            (StatusCode::BAD_REQUEST, "invalid_request".into()),
            "{bad}"
        );
    }
    let res = s
        .put("/v1/servers/s-one/heartbeat")
        .json(&json!({"rooms": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(res).await.1, "invalid_request");
    let res = s.delete("/v1/rooms").send().await.unwrap();
    assert_eq!(
        error_of(res).await,
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed".into())
    );
    // The one room-name rule (berth_protocol::api::room_name): blank means "no name".
    let blank = s.create(json!({"name": "  "})).await.unwrap();
    assert_eq!(blank.name, blank.room_id);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_creates_never_overfill_and_get_503_past_the_cap() {
    // Three servers of 5 slots, and the fleet already at its cap of 3: no spawn is attempted.
    let s = Scheduler::start(&[("--max-servers", "3")]).await;
    for id in ["s-a", "s-b", "s-c"] {
        s.register(Some(id), 5, vec![]).await;
    }
    let s = std::sync::Arc::new(s);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let s = s.clone();
        tasks.spawn(async move { s.create(json!({"name": format!("room {i}")})).await });
    }
    let mut per_server: HashMap<String, u32> = HashMap::new();
    let mut refused = 0;
    while let Some(result) = tasks.join_next().await {
        match result.unwrap() {
            Ok(p) => *per_server.entry(p.server_id).or_default() += 1,
            Err((status, code, retry_after)) => {
                assert_eq!(
                    (status, code.as_str()),
                    (StatusCode::SERVICE_UNAVAILABLE, "no_capacity")
                );
                assert!(
                    retry_after.is_some_and(|r| r >= 1),
                    "503 without Retry-After"
                );
                refused += 1;
            }
        }
    }
    assert_eq!(refused, 35);
    assert_eq!(per_server.len(), 3);
    assert!(per_server.values().all(|n| *n == 5), "{per_server:?}");
    for info in s.servers().await {
        assert_eq!(info.rooms, 5, "{info:?}");
    }
    assert_eq!(s.metric("berth_scheduler_placements_total").await, 15);
    assert_eq!(s.metric("berth_scheduler_spawns_total").await, 0);
    assert_eq!(s.metric("berth_scheduler_no_capacity_total").await, 35);
    std::sync::Arc::into_inner(s).unwrap().stop().await;
}

#[tokio::test]
async fn a_failed_spawn_answers_503_and_leaves_no_entry() {
    // The binary does not exist.
    let s = Scheduler::start(&[("--max-servers", "2")]).await;
    let (status, code, retry_after) = s.create(json!({})).await.unwrap_err();
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "no_capacity")
    );
    assert!(retry_after.is_some());
    assert!(s.servers().await.is_empty());
    assert_eq!(s.metric("berth_scheduler_spawn_failures_total").await, 1);
    s.stop().await;

    // The binary exists but exits at once without registering.
    let s = Scheduler::start(&[("--max-servers", "2"), ("--session-bin", "/bin/false")]).await;
    let (status, code, retry_after) = s.create(json!({})).await.unwrap_err();
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "no_capacity")
    );
    assert!(retry_after.is_some());
    eventually(
        "the failed child to leave the registry",
        Duration::from_secs(10),
        || async { s.servers().await.is_empty().then_some(()) },
    )
    .await;
    assert_eq!(s.metric("berth_scheduler_spawn_failures_total").await, 1);
    s.stop().await;
}

#[tokio::test]
async fn a_silent_server_dies_and_its_room_is_replaced_on_lookup() {
    let s = Scheduler::start(&[("--heartbeat-timeout-ms", "1500")]).await;
    s.register(Some("s-quiet"), 5, vec![]).await;
    let p = s.create(json!({"name": "r"})).await.unwrap();
    assert_eq!(p.server_id, "s-quiet");

    // Another server that keeps heartbeating.
    s.register(Some("s-alive"), 5, vec![]).await;
    let keep_alive = {
        let http = s.http.clone();
        let url = s.url("/v1/servers/s-alive/heartbeat");
        tokio::spawn(async move {
            loop {
                let _ = http
                    .put(&url)
                    .bearer_auth(common::SECRET)
                    .json(&json!({"connections": 0, "rooms": []}))
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    eventually("s-quiet declared dead", Duration::from_secs(15), || async {
        s.server("s-quiet")
            .await
            .filter(|i| i.state == ServerState::Dead)
            .map(|_| ())
    })
    .await;
    assert!(s.metric("berth_scheduler_orphaned_rooms").await >= 1);
    // A dead server's heartbeat is refused, so it registers again.
    assert_eq!(
        s.heartbeat("s-quiet", vec![], false).await.unwrap_err().1,
        "unknown_server"
    );

    let moved = s.lookup(&p.room_id).await.unwrap();
    assert_eq!(moved.server_id, "s-alive");
    assert!(moved.epoch > p.epoch);
    assert_eq!(moved.name, "r");
    // Stable afterwards.
    assert_eq!(s.lookup(&p.room_id).await.unwrap(), moved);
    assert_eq!(s.metric("berth_scheduler_replacements_total").await, 1);

    // The old owner comes back and reports the room: it is revoked there.
    s.register(Some("s-quiet"), 5, vec![hosted(&p.room_id, p.epoch)])
        .await;
    let ack = s
        .heartbeat("s-quiet", vec![hosted(&p.room_id, p.epoch)], false)
        .await
        .unwrap();
    assert_eq!(ack.revoked_rooms, vec![p.room_id.clone()]);
    assert_eq!(s.lookup(&p.room_id).await.unwrap().server_id, "s-alive");
    keep_alive.abort();
    s.stop().await;
}

#[tokio::test]
async fn release_makes_the_room_dormant_but_a_stale_release_does_not() {
    let s = Scheduler::start(&[]).await;
    s.register(Some("s-one"), 5, vec![]).await;
    let p = s.create(json!({})).await.unwrap();
    for stale in [
        json!({"serverId": "s-one", "epoch": p.epoch - 1}),
        json!({"serverId": "s-two", "epoch": p.epoch}),
    ] {
        let res = s
            .post(&format!("/v1/rooms/{}/release", p.room_id))
            .json(&stale)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        assert!(s.lookup(&p.room_id).await.is_ok());
    }
    let res = s
        .post(&format!("/v1/rooms/{}/release", p.room_id))
        .json(&json!({"serverId": "s-one", "epoch": p.epoch}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        s.server("s-one").await.unwrap().rooms,
        0,
        "the slot is free again"
    );
    // Dormant, not forgotten: the next lookup places it again, under a new epoch.
    let again = s.lookup(&p.room_id).await.unwrap();
    assert!(again.epoch > p.epoch);
    assert_eq!(s.server("s-one").await.unwrap().rooms, 1);
    // Unknown ids are looked for in the store (here: the default SQLite one): still 404.
    assert_eq!(
        s.lookup("r-neverexisted").await.unwrap_err().1,
        "room_not_found"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_restarted_scheduler_finds_rooms_in_the_store() {
    let s = Scheduler::start(&[]).await;
    s.register(Some("s-one"), 5, vec![]).await;
    let p = s
        .create(json!({"name": "lounge", "public": true}))
        .await
        .unwrap();
    let data_dir = s.data_dir().to_path_buf();
    // A second scheduler over the same data dir (the first one's store), with nothing placed.
    let t = Scheduler::start(&[("--data-dir", data_dir.to_str().unwrap())]).await;
    let listed: RoomDirectory = t
        .get("/v1/rooms?public=true")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed
            .rooms
            .iter()
            .map(|r| (r.room_id.as_str(), r.name.as_str()))
            .collect::<Vec<_>>(),
        [(p.room_id.as_str(), "lounge")]
    );
    t.register(Some("s-two"), 5, vec![]).await;
    let found = t.lookup(&p.room_id).await.unwrap();
    assert_eq!(
        (found.name.as_str(), found.public, found.server_id.as_str()),
        ("lounge", true, "s-two")
    );
    t.stop().await;
    s.stop().await;
}

#[tokio::test]
async fn creates_are_rate_limited_per_user() {
    let s = Scheduler::start(&[("--create-rate", "3")]).await;
    s.register(Some("s-one"), 50, vec![]).await;
    for _ in 0..3 {
        s.create(json!({"createdBy": "u-alice"})).await.unwrap();
    }
    let (status, code, retry_after) = s.create(json!({"createdBy": "u-alice"})).await.unwrap_err();
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    let secs = retry_after.expect("429 without Retry-After");
    assert!((1..=20).contains(&secs), "{secs}");
    s.create(json!({"createdBy": "u-bob"})).await.unwrap();
    assert_eq!(s.metric("berth_scheduler_rate_limited_total").await, 1);
    s.stop().await;
}

#[tokio::test]
async fn a_drained_server_gets_no_new_rooms() {
    let s = Scheduler::start(&[]).await;
    s.register(Some("s-a"), 10, vec![]).await;
    s.register(Some("s-b"), 10, vec![]).await;
    let first = s.create(json!({})).await.unwrap();
    let (drained, other) = if first.server_id == "s-a" {
        ("s-a", "s-b")
    } else {
        ("s-b", "s-a")
    };
    let res = s
        .post(&format!("/v1/servers/{drained}/drain"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    for _ in 0..5 {
        assert_eq!(s.create(json!({})).await.unwrap().server_id, other);
    }
    let ack = s
        .heartbeat(drained, vec![hosted(&first.room_id, first.epoch)], false)
        .await
        .unwrap();
    assert_eq!((ack.state, ack.drain), (ServerState::Draining, true));
    // Its rooms are still found where they are while it drains.
    assert_eq!(s.lookup(&first.room_id).await.unwrap().server_id, drained);
    let res = s.post("/v1/servers/s-nobody/drain").send().await.unwrap();
    assert_eq!(
        error_of(res).await,
        (StatusCode::NOT_FOUND, "unknown_server".into())
    );

    // A server may also announce that it drains (SIGTERM).
    let ack = s.heartbeat(other, vec![], true).await.unwrap();
    assert_eq!((ack.state, ack.drain), (ServerState::Draining, false));
    let (status, code, _) = s.create(json!({})).await.unwrap_err();
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "no_capacity")
    );

    // It leaves: its remaining rooms are re-placed on their next lookup.
    let res = s
        .delete(&format!("/v1/servers/{drained}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert!(s.server(drained).await.is_none());
    s.register(Some("s-new"), 10, vec![]).await;
    let moved = s.lookup(&first.room_id).await.unwrap();
    assert_eq!(moved.server_id, "s-new");
    assert!(moved.epoch > first.epoch);
    let res = s
        .delete(&format!("/v1/servers/{drained}"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(res).await.1, "unknown_server");
    s.stop().await;
}

#[tokio::test]
async fn heartbeats_revoke_rooms_owned_elsewhere() {
    let s = Scheduler::start(&[]).await;
    s.register(Some("s-a"), 10, vec![]).await;
    let p = s.create(json!({})).await.unwrap();
    assert_eq!(p.server_id, "s-a");
    s.register(Some("s-b"), 10, vec![]).await;

    // The owner with the current epoch: nothing revoked.
    let ack = s
        .heartbeat("s-a", vec![hosted(&p.room_id, p.epoch)], false)
        .await
        .unwrap();
    assert!(ack.revoked_rooms.is_empty());
    // Another server claiming it, the owner with an old epoch, or a room nobody placed.
    let ack = s
        .heartbeat(
            "s-b",
            vec![hosted(&p.room_id, p.epoch), hosted("r-ghost", 7)],
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        ack.revoked_rooms,
        vec![p.room_id.clone(), "r-ghost".to_owned()]
    );
    let ack = s
        .heartbeat("s-a", vec![hosted(&p.room_id, p.epoch - 1)], false)
        .await
        .unwrap();
    assert_eq!(ack.revoked_rooms, vec![p.room_id.clone()]);
    // None of that moved the room.
    assert_eq!(s.lookup(&p.room_id).await.unwrap(), p);
    s.stop().await;
}

#[tokio::test]
async fn registration_rebuilds_the_directory_and_lifts_the_epoch() {
    // As after a scheduler restart: a server comes with rooms the directory does not know.
    let s = Scheduler::start(&[]).await;
    let far = berth_protocol::now_ms() + 10_000_000;
    s.register(
        Some("s-old"),
        10,
        vec![hosted("r-kept", far), hosted("r-kept2", 5)],
    )
    .await;
    let kept = s.lookup("r-kept").await.unwrap();
    assert_eq!(
        (kept.server_id.as_str(), kept.epoch, kept.name.as_str()),
        ("s-old", far, "r-kept")
    );
    assert_eq!(s.server("s-old").await.unwrap().rooms, 2);
    let fresh = s.create(json!({})).await.unwrap();
    assert!(fresh.epoch > far, "new epochs go past adopted ones");
    assert_eq!(fresh.server_id, "s-old");
    // Re-registering with the same rooms does not count them twice.
    s.register(
        Some("s-old"),
        10,
        vec![hosted("r-kept", far), hosted("r-kept2", 5)],
    )
    .await;
    assert_eq!(s.server("s-old").await.unwrap().rooms, 3);
    s.stop().await;
}
