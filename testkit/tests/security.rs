//! The control-plane attacks of the security review, replayed against real processes with
//! bounded load (docs/security.md, "Control plane"): create floods from throwaway names, rooms
//! nobody opens, history scraping, a stalled scheduler, loose file modes, spoofing names and
//! text, a compromised session process, and a server killed outright.

use std::process::Stdio;
use std::time::Duration;

use berth::{ClientError, RoomConnection, RoomEvent};
use berth_protocol::api::CreateRoomRequest;
use berth_protocol::claims::TicketClaims;
use berth_protocol::cluster::{Heartbeat, PlaceRoomRequest, Placement, ServerList, ServerState};
use berth_protocol::frames::ServerFrame;
use berth_testkit::{
    Cluster, ClusterOptions, bin_path, eventually, eventually_some, process_alive, signal,
    temp_dir, write_ticket_keys,
};

const WAIT: Duration = Duration::from_secs(15);

fn retry_after(resp: &reqwest::Response) -> u64 {
    resp.headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After header in whole seconds")
}

async fn error_code(resp: reqwest::Response) -> String {
    let body: serde_json::Value = resp.json().await.unwrap();
    body["error"]["code"].as_str().unwrap().to_owned()
}

/// The next frame that is not presence.
async fn next_frame(conn: &mut RoomConnection) -> ServerFrame {
    loop {
        match conn.recv_timeout(WAIT).await.unwrap() {
            RoomEvent::Frame(ServerFrame::Joined { .. } | ServerFrame::Left { .. }) => continue,
            RoomEvent::Frame(frame) => return frame,
            RoomEvent::Closed { code, .. } => panic!("connection closed ({code:?})"),
        }
    }
}

/// Finding 2: fresh guest names from one address cannot fill the fleet; placed rooms nobody
/// opens give their slots back and are placed again on their next lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_floods_are_limited_per_address_and_unclaimed_slots_come_back() {
    let cluster = Cluster::start(ClusterOptions {
        rooms_per_server: 4,
        max_servers: 2,
        backend_args: vec!["--create-rate-per-address".into(), "5".into()],
        scheduler_args: vec!["--unclaimed-room-secs".into(), "1".into()],
        ..Default::default()
    })
    .await;
    let backend = cluster.backend();
    let http = reqwest::Client::new();
    let mut created = Vec::new();
    let mut refused = 0;
    // 12 throwaway guests, 3 creates each: the per-user limit alone would allow all 36.
    for i in 0..12 {
        let guest = cluster.login(&format!("throwaway{i}")).await;
        for _ in 0..3 {
            let resp = http
                .post(format!("{}/api/rooms", cluster.backend_url))
                .bearer_auth(&guest.token)
                .send()
                .await
                .unwrap();
            match resp.status().as_u16() {
                201 => created.push(resp.json::<serde_json::Value>().await.unwrap()),
                429 => {
                    assert!((1..=60).contains(&retry_after(&resp)));
                    assert_eq!(error_code(resp).await, "rate_limited");
                    refused += 1;
                }
                other => panic!("unexpected status {other}"),
            }
        }
    }
    assert_eq!((created.len(), refused), (5, 31));
    // Refused creates left nothing behind: neither in the directory nor in the store.
    let rooms: serde_json::Value = cluster
        .scheduler_get("/v1/rooms")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rooms["rooms"].as_array().unwrap().len(), 5);
    let db = rusqlite::Connection::open(cluster.data_dir.join("berth.db")).unwrap();
    let rows: i64 = db
        .query_row("SELECT count(*) FROM berth_rooms", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 5);

    // Nobody opened them: within the unclaimed timeout (1 s here) every slot is free again.
    eventually(WAIT, || async {
        let servers = cluster.servers().await;
        !servers.is_empty() && servers.iter().all(|s| s.rooms == 0)
    })
    .await;
    let metrics = cluster.scheduler_metrics().await;
    assert!(
        metrics.contains("berth_scheduler_unclaimed_rooms_total 5\n"),
        "{metrics}"
    );
    // Dormant, not lost: the next lookup places the room again and it opens.
    let alice = cluster.login("alice").await;
    let room_id = created[0]["roomId"].as_str().unwrap();
    let ticket = backend.lookup_room(&alice, room_id).await.unwrap();
    let (_conn, welcome) = RoomConnection::connect_ticket(&ticket).await.unwrap();
    assert_eq!(welcome.room_id, room_id);
    cluster.stop().await;
}

/// Finding 5 (HTTP): history pages and every other endpoint are limited per user and per
/// address, answered 429 with `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_and_api_calls_are_rate_limited() {
    let cluster = Cluster::start(ClusterOptions {
        backend_args: vec![
            "--history-rate".into(),
            "3".into(),
            "--api-rate-per-user".into(),
            "10".into(),
            "--api-rate-per-address".into(),
            "40".into(),
        ],
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
    let http = reqwest::Client::new();
    let page = |token: String| {
        let http = http.clone();
        let url = format!(
            "{}/api/rooms/{}/messages?limit=200",
            cluster.backend_url, room.room_id
        );
        async move { http.get(url).bearer_auth(token).send().await.unwrap() }
    };
    for _ in 0..3 {
        assert_eq!(page(alice.token.clone()).await.status(), 200);
    }
    let refused = page(alice.token.clone()).await;
    assert_eq!(refused.status(), 429);
    assert!(retry_after(&refused) >= 1);
    assert_eq!(error_code(refused).await, "rate_limited");
    // Another user from the same address is held by the per-address limit.
    let refused = page(bob.token.clone()).await;
    assert_eq!(refused.status(), 429);

    // Any authenticated call counts against the user's own budget (10 here; 5 used so far).
    let mut statuses = Vec::new();
    for _ in 0..8 {
        match backend.lookup_room(&alice, &room.room_id).await {
            Ok(_) => statuses.push(200),
            Err(ClientError::Api {
                status,
                retry_after,
                ..
            }) => {
                assert!(retry_after.is_some_and(|s| s >= 1));
                statuses.push(status);
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    // And every endpoint, even without a token, counts against the address (40 here).
    let mut limited = false;
    for _ in 0..60 {
        let resp = http
            .get(format!("{}/api/rooms", cluster.backend_url))
            .send()
            .await
            .unwrap();
        if resp.status() == 429 {
            assert!(retry_after(&resp) >= 1);
            limited = true;
            break;
        }
    }
    assert!(limited, "60 listings from one address were all answered");
    // Health probes are never limited.
    let health = http
        .get(format!("{}/healthz", cluster.backend_url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    cluster.stop().await;
}

/// Finding 3: SIGSTOP the scheduler for several heartbeat timeouts, SIGCONT: no server is
/// declared dead or killed, and a member's connection stays up and can still chat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_scheduler_never_takes_down_the_data_plane() {
    let dir = temp_dir("stall");
    let keys = write_ticket_keys(&dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let secret = "stall-test-secret";
    let mut scheduler = tokio::process::Command::new(bin_path("testkit-scheduler"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--warm-servers", "0", "--rooms-per-server", "1"])
        .args([
            "--heartbeat-interval-ms",
            "200",
            "--heartbeat-timeout-ms",
            "1000",
        ])
        .arg("--session-bin")
        .arg(bin_path("testkit-session"))
        .arg("--ticket-public-key")
        .arg(&keys.public)
        .arg("--data-dir")
        .arg(&dir)
        .env("BERTH_CLUSTER_SECRET", secret)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let scheduler_pid = scheduler.id().unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    eventually(WAIT, || {
        let (http, url) = (http.clone(), url.clone());
        async move { matches!(http.get(format!("{url}/healthz")).send().await, Ok(r) if r.status().is_success()) }
    })
    .await;
    // Two rooms at one per server: two session processes (so heartbeats from others exist).
    let mut placements = Vec::new();
    for _ in 0..2 {
        let resp = http
            .post(format!("{url}/v1/rooms"))
            .bearer_auth(secret)
            .json(&PlaceRoomRequest::default())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        placements.push(resp.json::<Placement>().await.unwrap());
    }
    let servers = |http: reqwest::Client| {
        let url = url.clone();
        async move {
            http.get(format!("{url}/v1/servers"))
                .bearer_auth(secret)
                .send()
                .await
                .unwrap()
                .json::<ServerList>()
                .await
                .unwrap()
                .servers
        }
    };
    let before = servers(http.clone()).await;
    assert_eq!(before.len(), 2);
    let pids: Vec<u32> = before.iter().filter_map(|s| s.pid).collect();

    let p = &placements[0];
    let now = berth_protocol::now_secs();
    let ticket = berth_testkit::mint_ticket(
        &keys,
        &TicketClaims {
            sub: "u-alice".into(),
            name: "alice".into(),
            room: p.room_id.clone(),
            aud: p.server_id.clone(),
            epoch: p.epoch,
            iat: now,
            exp: now + 60,
            jti: berth_protocol::claims::new_ticket_id(),
        },
    );
    let (mut conn, _welcome) = RoomConnection::connect(&p.url, &ticket).await.unwrap();
    conn.send("before the stall", Some("c-1")).await.unwrap();
    assert!(
        matches!(next_frame(&mut conn).await, ServerFrame::Message(m) if m.text == "before the stall")
    );

    // The attack: the control plane freezes for four heartbeat timeouts.
    signal(scheduler_pid, "STOP");
    tokio::time::sleep(Duration::from_secs(4)).await;
    signal(scheduler_pid, "CONT");

    // For three heartbeat timeouts after it resumes, every server stays ready and alive.
    let watch_until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < watch_until {
        let list = servers(http.clone()).await;
        assert_eq!(list.len(), 2, "{list:?}");
        assert!(
            list.iter().all(|s| s.state == ServerState::Ready),
            "a server was declared dead after the stall: {list:?}"
        );
        assert!(pids.iter().all(|&pid| process_alive(pid)));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The member never lost its connection and can still chat.
    conn.send("after the stall", Some("c-2")).await.unwrap();
    assert!(
        matches!(next_frame(&mut conn).await, ServerFrame::Message(m) if m.text == "after the stall")
    );
    let metrics = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !metrics.contains("berth_scheduler_stalls_total 0\n"),
        "the stall was noticed: {metrics}"
    );
    assert!(metrics.contains("berth_scheduler_servers_declared_dead_total 0\n"));

    signal(scheduler_pid, "TERM");
    let _ = tokio::time::timeout(WAIT, scheduler.wait()).await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Finding 6: the data dir is 0700; keys and the database (with its WAL and SHM) are 0600.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_keys_and_database_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let alice = cluster.login("alice").await;
    let room = cluster
        .backend()
        .create_room(&alice, &CreateRoomRequest::default())
        .await
        .unwrap();
    // A message makes the session server write to the database too.
    let (mut conn, _) = RoomConnection::connect_ticket(&room).await.unwrap();
    conn.send("hello", None).await.unwrap();
    next_frame(&mut conn).await;
    let mode = |name: &str| {
        let path = cluster.data_dir.join(name);
        std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(""), 0o700, "data dir");
    for file in ["berth.db", "berth.db-wal", "berth.db-shm", "ticket.key.pem"] {
        assert_eq!(mode(file), 0o600, "{file}");
    }
    cluster.stop().await;
}

/// Finding 7: room names with control, bidi-override or only invisible characters are refused
/// with 400; message text keeps newlines and tabs and refuses other control characters with an
/// `error` frame naming the `clientId`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofing_names_and_control_characters_are_refused() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let alice = cluster.login("alice").await;
    let http = reqwest::Client::new();
    for name in [
        "invoice\u{202E}fdp.exe",
        "\u{2066}admin\u{2069}",
        "\u{200B}\u{200B}",
        "\u{200D}",
        "ad\u{200B}min",
        "bell\u{7}",
    ] {
        let resp = http
            .post(format!("{}/api/rooms", cluster.backend_url))
            .bearer_auth(&alice.token)
            .json(&serde_json::json!({ "name": name }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{name:?}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_request");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("room names"),
            "{body}"
        );
    }
    // The scheduler applies the same rule to whoever calls it directly.
    let resp = http
        .post(format!("{}/v1/rooms", cluster.scheduler_url))
        .bearer_auth(&cluster.secret)
        .json(&serde_json::json!({ "name": "a\u{202E}b" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    let room = cluster
        .backend()
        .create_room(
            &alice,
            &CreateRoomRequest {
                name: Some("café 👩\u{200D}💻".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (mut conn, _) = RoomConnection::connect_ticket(&room).await.unwrap();
    conn.send("nul\u{0} inside", Some("c-nul")).await.unwrap();
    match next_frame(&mut conn).await {
        ServerFrame::Error {
            code, client_id, ..
        } => {
            assert_eq!(code, "invalid_text");
            assert_eq!(client_id.as_deref(), Some("c-nul"));
        }
        other => panic!("expected an error frame, got {other:?}"),
    }
    conn.send("line one\nline two\tcolumn", Some("c-ok"))
        .await
        .unwrap();
    match next_frame(&mut conn).await {
        ServerFrame::Message(m) => assert_eq!(m.text, "line one\nline two\tcolumn"),
        other => panic!("expected the message, got {other:?}"),
    }
    cluster.stop().await;
}

/// Finding 8: a session process holds a credential that speaks for itself only: it cannot
/// create rooms, drain servers, list the fleet or heartbeat for another server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_servers_credential_cannot_drive_the_fleet() {
    let cluster = Cluster::start(ClusterOptions {
        rooms_per_server: 1,
        ..Default::default()
    })
    .await;
    let alice = cluster.login("alice").await;
    for _ in 0..2 {
        cluster
            .backend()
            .create_room(&alice, &CreateRoomRequest::default())
            .await
            .unwrap();
    }
    let servers = cluster.servers().await;
    assert_eq!(servers.len(), 2);
    let (mine, other) = (&servers[0], &servers[1]);
    // What a compromised session process can read: its own environment.
    let environ = std::fs::read(format!("/proc/{}/environ", mine.pid.unwrap())).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        !environ.contains(&cluster.secret),
        "the cluster secret reached a session process"
    );
    let credential = environ
        .split('\0')
        .find_map(|kv| kv.strip_prefix("BERTH_SERVER_CREDENTIAL="))
        .expect("a spawned server gets its own credential")
        .to_owned();

    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: String, body: Option<serde_json::Value>| {
        let http = http.clone();
        let url = format!("{}{path}", cluster.scheduler_url);
        let credential = credential.clone();
        async move {
            let mut req = http.request(method, url).bearer_auth(credential);
            if let Some(body) = body {
                req = req.json(&body);
            }
            req.send().await.unwrap().status().as_u16()
        }
    };
    use reqwest::Method;
    let heartbeat = serde_json::to_value(Heartbeat::default()).unwrap();
    assert_eq!(
        call(
            Method::POST,
            "/v1/rooms".into(),
            Some(serde_json::json!({}))
        )
        .await,
        403
    );
    assert_eq!(call(Method::GET, "/v1/servers".into(), None).await, 403);
    assert_eq!(call(Method::GET, "/v1/rooms".into(), None).await, 403);
    for target in [&mine.id, &other.id] {
        assert_eq!(
            call(Method::POST, format!("/v1/servers/{target}/drain"), None).await,
            403
        );
    }
    assert_eq!(
        call(
            Method::PUT,
            format!("/v1/servers/{}/heartbeat", other.id),
            Some(heartbeat.clone())
        )
        .await,
        403
    );
    assert_eq!(
        call(Method::DELETE, format!("/v1/servers/{}", other.id), None).await,
        403
    );
    // A forged credential for the other server is no credential at all.
    let forged = credential.replace(&mine.id, &other.id);
    let status = http
        .put(format!(
            "{}/v1/servers/{}/heartbeat",
            cluster.scheduler_url, other.id
        ))
        .bearer_auth(forged)
        .json(&heartbeat)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);
    // Nothing moved: both servers are ready and no room was created.
    let after = cluster.servers().await;
    assert!(
        after
            .iter()
            .all(|s| s.state == ServerState::Ready && s.rooms == 1),
        "{after:?}"
    );
    cluster.stop().await;
}

/// Issue 16: a SIGKILLed server stays listed as `dead` with why, and is counted by cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_is_listed_dead_and_counted() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let alice = cluster.login("alice").await;
    let room = cluster
        .backend()
        .create_room(&alice, &CreateRoomRequest::default())
        .await
        .unwrap();
    cluster.kill_server(&room.server_id).await;
    let dead = eventually_some(WAIT, || async {
        cluster
            .servers()
            .await
            .into_iter()
            .find(|s| s.id == room.server_id && s.state == ServerState::Dead)
    })
    .await;
    let reason = dead.dead_reason.expect("a dead server says why");
    assert!(
        reason.contains("SIGKILL") || reason.contains("signal: 9"),
        "{reason}"
    );
    let metrics = cluster.scheduler_metrics().await;
    assert!(
        metrics.contains("berth_scheduler_servers{state=\"dead\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("berth_scheduler_server_exits_total{cause=\"signal\"} 1\n"),
        "{metrics}"
    );
    // Its room is placed again on the next lookup, on a live server.
    let again = cluster
        .backend()
        .lookup_room(&alice, &room.room_id)
        .await
        .unwrap();
    assert_ne!(again.server_id, room.server_id);
    cluster.stop().await;
}
