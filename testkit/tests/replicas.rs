//! Scheduler replicas over one PostgreSQL database: real `testkit-scheduler` processes started
//! on the same `BERTH_DATABASE_URL` (replicas by default), real session servers they spawn, a
//! backend given every replica's URL.
//! Skipped loudly (and failed under `CI=true`) without `BERTH_TEST_DATABASE_URL`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use berth::{RoomConnection, RoomEvent};
use berth_protocol::api::CreateRoomRequest;
use berth_protocol::cluster::{Placement, ServerInfo, ServerList, ServerState};
use berth_protocol::frames::ServerFrame;
use berth_store::testing::{TempDatabase, postgres_admin_url};
use berth_testkit::{bin_path, eventually, process_alive, signal, temp_dir, write_ticket_keys};
use clap::Parser as _;
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);
const ROOMS_PER_SERVER: u32 = 3;

/// Replicas, their database, and a backend that knows them all.
struct Replicas {
    db: TempDatabase,
    urls: Vec<String>,
    processes: Vec<Child>,
    secret: String,
    data_dir: PathBuf,
    public_key: PathBuf,
    backend_url: String,
    shutdown: CancellationToken,
    http: reqwest::Client,
}

/// A free port on loopback (bound and released: the replica binds it right after).
async fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

impl Replicas {
    async fn start(n: usize, max_servers: u32) -> Option<Replicas> {
        let admin = postgres_admin_url()?;
        let db = TempDatabase::create(&admin).await;
        let data_dir = temp_dir("replicas");
        let keys = write_ticket_keys(&data_dir);
        let secret = format!("test-secret-{}", rand::random::<u64>());
        let mut ports = Vec::new();
        for _ in 0..n {
            ports.push(free_port().await);
        }
        let urls: Vec<String> = ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect();
        let mut replicas = Replicas {
            db,
            urls,
            processes: Vec::new(),
            secret,
            data_dir,
            public_key: keys.public.clone(),
            backend_url: String::new(),
            shutdown: CancellationToken::new(),
            http: reqwest::Client::new(),
        };
        for (i, port) in ports.iter().enumerate() {
            let child = replicas.spawn_replica(*port, max_servers);
            replicas.processes.push(child);
            let health = format!("{}/healthz", replicas.urls[i]);
            let http = replicas.http.clone();
            eventually(WAIT, || {
                let (http, health) = (http.clone(), health.clone());
                async move { matches!(http.get(&health).send().await, Ok(r) if r.status().is_success()) }
            })
            .await;
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        replicas.backend_url = format!("http://{}", listener.local_addr().unwrap());
        let config = berth_backend::Config::parse_from([
            "berth-backend",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            path_str(&replicas.data_dir),
            "--cluster-secret",
            &replicas.secret,
            "--scheduler-url",
            &replicas.urls.join(","),
            "--ticket-private-key",
            path_str(&keys.private),
            "--database-url",
            &replicas.db.url,
            "--create-rate-per-address",
            "0",
            "--api-rate-per-address",
            "0",
            "--api-rate-per-user",
            "0",
        ]);
        let token = replicas.shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = berth_backend::serve(listener, config, token).await {
                eprintln!("replicas test: backend failed: {e:#}");
            }
        });
        Some(replicas)
    }

    fn spawn_replica(&self, port: u16, max_servers: u32) -> Child {
        Command::new(bin_path("testkit-scheduler"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            // No `--shared`: schedulers on one PostgreSQL database are replicas by default.
            .args(["--scheduler-url", &self.urls.join(",")])
            .args(["--data-dir", path_str(&self.data_dir)])
            .args(["--session-bin", path_str(&bin_path("testkit-session"))])
            .args(["--ticket-public-key", path_str(&self.public_key)])
            .args(["--rooms-per-server", &ROOMS_PER_SERVER.to_string()])
            .args(["--max-servers", &max_servers.to_string()])
            .args(["--warm-servers", "0"])
            .args(["--heartbeat-interval-ms", "200"])
            .args(["--heartbeat-timeout-ms", "2000"])
            .args(["--create-rate", "0"])
            .env("BERTH_CLUSTER_SECRET", &self.secret)
            .env("BERTH_DATABASE_URL", &self.db.url)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    async fn servers(&self, replica: usize) -> Vec<ServerInfo> {
        let list: ServerList = self
            .http
            .get(format!("{}/v1/servers", self.urls[replica]))
            .bearer_auth(&self.secret)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        list.servers
    }

    /// `POST /v1/rooms` on one replica: the placement, or the error status.
    async fn create(&self, replica: usize) -> Result<Placement, u16> {
        let resp = self
            .http
            .post(format!("{}/v1/rooms", self.urls[replica]))
            .bearer_auth(&self.secret)
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        if resp.status().as_u16() == 201 {
            Ok(resp.json().await.unwrap())
        } else {
            Err(resp.status().as_u16())
        }
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        self.shutdown.cancel();
        // Spawned session servers outlive their replicas by design: stop them by pid.
        let pids: Vec<u32> = std::fs::read_dir("/proc")
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                    .filter(|pid| {
                        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                            let c = String::from_utf8_lossy(&c);
                            c.contains("testkit-session")
                                && self.urls.iter().any(|u| c.contains(u.as_str()))
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        for pid in pids {
            signal(pid, "KILL");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_through_two_replicas_never_overfill_and_epochs_grow() {
    let Some(r) = Replicas::start(2, 4).await else {
        return;
    };
    // 4 servers × 3 slots = 12 slots for 20 creates, half through each replica, at once.
    let creates = (0..20).map(|i| {
        let r = &r;
        async move { r.create(i % 2).await }
    });
    let results = futures_util::future::join_all(creates).await;
    let placed: Vec<&Placement> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let refused: Vec<u16> = results
        .iter()
        .filter_map(|r| r.as_ref().err().copied())
        .collect();
    assert!(refused.iter().all(|&s| s == 503), "{refused:?}");
    assert_eq!(
        placed.len(),
        12,
        "every slot of the capped fleet used, no more: {refused:?}"
    );
    let mut per_server: HashMap<&str, u32> = HashMap::new();
    for p in &placed {
        *per_server.entry(p.server_id.as_str()).or_default() += 1;
    }
    assert!(
        per_server.values().all(|&n| n <= ROOMS_PER_SERVER),
        "{per_server:?}"
    );
    let epochs: HashSet<u64> = placed.iter().map(|p| p.epoch).collect();
    assert_eq!(
        epochs.len(),
        placed.len(),
        "epochs are unique across replicas"
    );
    // Both replicas see one fleet, within the cap.
    for replica in 0..2 {
        let servers = r.servers(replica).await;
        let live: Vec<_> = servers
            .iter()
            .filter(|s| s.state != ServerState::Dead)
            .collect();
        assert_eq!(live.len(), 4, "{servers:?}");
        assert!(live.iter().all(|s| s.rooms <= ROOMS_PER_SERVER));
    }
    // Epochs keep growing whichever replica places: sequential creates after a release.
    let mut last = placed.iter().map(|p| p.epoch).max().unwrap();
    for p in placed.iter().take(4) {
        let released = r
            .http
            .post(format!("{}/v1/rooms/{}/release", r.urls[0], p.room_id))
            .bearer_auth(&r.secret)
            .json(&serde_json::json!({"serverId": p.server_id, "epoch": p.epoch}))
            .send()
            .await
            .unwrap();
        assert_eq!(released.status().as_u16(), 204);
    }
    for (i, p) in placed.iter().take(4).enumerate() {
        let again: Placement = r
            .http
            .get(format!("{}/v1/rooms/{}", r.urls[i % 2], p.room_id))
            .bearer_auth(&r.secret)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(again.epoch > last, "{} after {last}", again.epoch);
        last = again.epoch;
    }
}

/// Waits for the next `message` frame; fails on a close or anything unexpected.
async fn next_text(conn: &mut RoomConnection) -> String {
    loop {
        match conn.recv_timeout(WAIT).await.unwrap() {
            RoomEvent::Frame(ServerFrame::Message(m)) => return m.text,
            RoomEvent::Frame(ServerFrame::Left { .. }) => panic!("a member left"),
            RoomEvent::Frame(_) => continue,
            RoomEvent::Closed { code, reason } => panic!("connection closed: {code:?} {reason}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sigkilled_replica_drops_no_member_and_its_servers_rehome() {
    let Some(mut r) = Replicas::start(2, 6).await else {
        return;
    };
    let backend = berth::Backend::new(&r.backend_url);
    let alice = backend.login("alice").await.unwrap();
    let bob = backend.login("bob").await.unwrap();
    // The backend prefers the first replica: it places these rooms and spawns their servers.
    let mut rooms = Vec::new();
    for _ in 0..4 {
        let ticket = backend
            .create_room(&alice, &CreateRoomRequest::default())
            .await
            .unwrap();
        let (a, _) = RoomConnection::connect_ticket(&ticket).await.unwrap();
        let ticket_b = backend.lookup_room(&bob, &ticket.room_id).await.unwrap();
        let (b, _) = RoomConnection::connect_ticket(&ticket_b).await.unwrap();
        rooms.push((ticket.room_id.clone(), a, b));
    }
    let before: HashMap<String, ServerInfo> = r
        .servers(1)
        .await
        .into_iter()
        .map(|s| (s.id.clone(), s))
        .collect();
    assert!(!before.is_empty());

    let killed = r.processes.remove(0);
    let pid = killed.id().unwrap();
    signal(pid, "KILL");
    eventually(WAIT, || async move { !process_alive(pid) }).await;
    let killed_at = std::time::Instant::now();

    // Creates and lookups continue through the other replica. The first create may still go out
    // on the backend's pooled keep-alive connection to the dead replica: a create is not sent
    // again once it may have reached a replica (the scheduler names the room, so a repeat could
    // make two), and the caller gets 503 `scheduler_unavailable`, "try again shortly". The next
    // one must go through.
    let fresh = match backend
        .create_room(&alice, &CreateRoomRequest::default())
        .await
    {
        Ok(placement) => placement,
        Err(berth::ClientError::Api {
            status: 503, code, ..
        }) if code == "scheduler_unavailable" => {
            eprintln!("the first create after the SIGKILL met the dead replica; trying again");
            backend
                .create_room(&alice, &CreateRoomRequest::default())
                .await
                .expect("a create after the kill, tried again")
        }
        Err(e) => panic!("a create after the kill: {e:?}"),
    };
    eprintln!(
        "first create after the SIGKILL: {} ms",
        killed_at.elapsed().as_millis()
    );
    for (room_id, _, _) in &rooms {
        backend
            .lookup_room(&bob, room_id)
            .await
            .expect("lookup after the kill");
    }
    let (mut c, _) = RoomConnection::connect_ticket(&fresh).await.unwrap();

    // Well past the heartbeat timeout: every server is still there, ready, heartbeating (to
    // the surviving replica), and no member was dropped.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let after = r.servers(1).await;
    for id in before.keys() {
        let s = after
            .iter()
            .find(|s| &s.id == id)
            .expect("server still listed");
        assert_eq!(s.state, ServerState::Ready, "{s:?}");
        assert!(
            s.last_heartbeat_ms_ago < 1500,
            "re-homed and heartbeating: {s:?}"
        );
        assert!(
            process_alive(s.pid.unwrap()),
            "session server outlived its replica"
        );
    }
    for (i, (_, a, b)) in rooms.iter_mut().enumerate() {
        let text = format!("after the kill {i}");
        a.send(&text, None).await.unwrap();
        assert_eq!(next_text(a).await, text);
        assert_eq!(next_text(b).await, text, "bob is still in room {i}");
    }
    c.send("new room works", None).await.unwrap();
    assert_eq!(next_text(&mut c).await, "new room works");
}
