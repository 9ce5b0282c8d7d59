//! Spawning and supervision with a stand-in for `berth-session`: a bash script that records its
//! arguments, registers with the scheduler through curl (using the secret from its environment),
//! then sleeps until it is signalled. The real session server is exercised end to end elsewhere.
//! Skipped (with a note) where bash or curl is missing.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_protocol::cluster::ServerState;
use common::{Scheduler, eventually, temp_dir};
use reqwest::StatusCode;
use serde_json::json;

/// How the fake session server behaves.
struct Fake {
    /// Seconds to wait before registering; `never` to never register.
    register_delay: &'static str,
    /// Ignore SIGTERM (so only SIGKILL stops it).
    ignore_term: bool,
}

fn tools_present() -> bool {
    let ok = ["/bin/bash", "/usr/bin/env"]
        .iter()
        .all(|p| Path::new(p).exists())
        && std::process::Command::new("curl")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipped: bash or curl is not available");
    }
    ok
}

/// Writes the fake `berth-session` into a fresh directory; returns its path.
fn fake_session(fake: Fake) -> PathBuf {
    let dir = temp_dir("fake-session");
    let path = dir.join("berth-session");
    let trap = if fake.ignore_term { "trap '' TERM" } else { "" };
    let script = format!(
        r#"#!/bin/bash
# Stand-in for berth-session (scheduler tests).
set -u
here="$(cd "$(dirname "$0")" && pwd)"
printf '%s\n' "$@" > "$here/args.$$"
id=""; sched=""; rooms=""; members=""
while [ $# -gt 0 ]; do
  case "$1" in
    --server-id) id="$2"; shift 2 ;;
    --scheduler-url) sched="$2"; shift 2 ;;
    --rooms) rooms="$2"; shift 2 ;;
    --members-per-room) members="$2"; shift 2 ;;
    *) shift ;;
  esac
done
# A spawned server gets its own credential, never the cluster secret.
[ -n "${{BERTH_SERVER_CREDENTIAL:-}}" ] || exit 2
[ -z "${{BERTH_CLUSTER_SECRET:-}}" ] || exit 4
[ "{delay}" = never ] && exec sleep 600
sleep {delay}
curl -sf -X POST "$sched/v1/servers" \
  -H "Authorization: Bearer $BERTH_SERVER_CREDENTIAL" -H 'Content-Type: application/json' \
  -d "{{\"serverId\":\"$id\",\"url\":\"ws://127.0.0.1:9/$id\",\"capacity\":{{\"rooms\":$rooms,\"membersPerRoom\":$members}},\"pid\":$$}}" \
  > /dev/null || exit 3
{trap}
exec sleep 600
"#,
        delay = fake.register_delay,
    );
    std::fs::write(&path, script).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    path
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The argument files the fake servers wrote.
fn recorded_args(bin: &Path) -> Vec<String> {
    std::fs::read_dir(bin.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("args."))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect()
}

/// Pids of the fake servers started so far (from their argument files).
fn recorded_pids(bin: &Path) -> Vec<u32> {
    std::fs::read_dir(bin.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .strip_prefix("args.")
                .and_then(|p| p.parse().ok())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_share_spawns_and_stopping_leaves_no_child() {
    if !tools_present() {
        return;
    }
    let bin = fake_session(Fake {
        register_delay: "0.3",
        ignore_term: false,
    });
    let s = Scheduler::start(&[
        ("--session-bin", bin.to_str().unwrap()),
        ("--max-servers", "10"),
        ("--rooms-per-server", "5"),
        ("--members-per-room", "7"),
        ("--spawn-timeout-ms", "20000"),
    ])
    .await;
    let s = std::sync::Arc::new(s);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let s = s.clone();
        tasks.spawn(async move { s.create(json!({})).await });
    }
    let mut servers = HashSet::new();
    while let Some(result) = tasks.join_next().await {
        let placement = result
            .unwrap()
            .unwrap_or_else(|e| panic!("create failed: {e:?}"));
        servers.insert(placement.server_id);
    }
    assert_eq!(
        servers.len(),
        3,
        "12 creates need exactly 3 servers of 5 slots"
    );
    assert_eq!(
        s.metric("berth_scheduler_spawns_total").await,
        3,
        "waiting creates share spawns"
    );
    assert_eq!(s.metric("berth_scheduler_spawn_seconds_count").await, 3);
    let infos = s.servers().await;
    assert_eq!(infos.len(), 3);
    let mut pids = Vec::new();
    for info in &infos {
        assert!(info.managed && info.state == ServerState::Ready, "{info:?}");
        assert_eq!(
            (info.capacity.rooms, info.capacity.members_per_room),
            (5, 7)
        );
        let pid = info.pid.expect("a managed server has a pid");
        assert!(process_exists(pid));
        pids.push(pid);
    }
    let args = recorded_args(&bin);
    assert_eq!(args.len(), 3);
    for a in &args {
        assert!(
            a.contains("--managed\n") && a.contains("--listen\n127.0.0.1:0\n"),
            "{a}"
        );
        assert!(
            a.contains(&format!("--scheduler-url\nhttp://{}\n", s.addr)),
            "{a}"
        );
        assert!(
            !a.contains(common::SECRET),
            "the secret must not be on the command line"
        );
    }

    std::sync::Arc::into_inner(s).unwrap().stop().await;
    for pid in pids {
        assert!(!process_exists(pid), "child {pid} outlived the scheduler");
    }
}

#[tokio::test]
async fn the_warm_buffer_spawns_ahead_of_creates() {
    if !tools_present() {
        return;
    }
    let bin = fake_session(Fake {
        register_delay: "0",
        ignore_term: false,
    });
    let s = Scheduler::start(&[
        ("--session-bin", bin.to_str().unwrap()),
        ("--max-servers", "5"),
        ("--warm-servers", "1"),
        ("--rooms-per-server", "3"),
    ])
    .await;
    let first = eventually(
        "a warm server at startup",
        Duration::from_secs(20),
        || async {
            let servers = s.servers().await;
            (servers.len() == 1 && servers[0].state == ServerState::Ready)
                .then(|| servers[0].clone())
        },
    )
    .await;
    let p = s.create(json!({})).await.unwrap();
    assert_eq!(p.server_id, first.id, "the create did not wait for a spawn");
    // Two free slots left < three wanted: one more server.
    let servers = eventually("a second warm server", Duration::from_secs(20), || async {
        let servers = s.servers().await;
        (servers.len() == 2 && servers.iter().all(|i| i.state == ServerState::Ready))
            .then_some(servers)
    })
    .await;
    // And no more than that.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.servers().await.len(), 2);
    let pids: Vec<u32> = servers.iter().filter_map(|i| i.pid).collect();
    s.stop().await;
    for pid in pids {
        assert!(!process_exists(pid), "child {pid} outlived the scheduler");
    }
}

#[tokio::test]
async fn a_child_ignoring_sigterm_is_killed_after_the_shutdown_timeout() {
    if !tools_present() {
        return;
    }
    let bin = fake_session(Fake {
        register_delay: "0",
        ignore_term: true,
    });
    let s = Scheduler::start(&[
        ("--session-bin", bin.to_str().unwrap()),
        ("--max-servers", "1"),
        ("--shutdown-timeout-ms", "300"),
    ])
    .await;
    let p = s.create(json!({})).await.unwrap();
    let pid = s.server(&p.server_id).await.unwrap().pid.unwrap();
    // Give bash time to reach the `exec sleep` with SIGTERM ignored.
    eventually(
        "the child to exec sleep",
        Duration::from_secs(10),
        || async {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmdline.starts_with(b"sleep").then_some(())
        },
    )
    .await;
    let started = Instant::now();
    s.stop().await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "SIGTERM alone cannot have stopped it"
    );
    assert!(!process_exists(pid), "child {pid} outlived the scheduler");
}

#[tokio::test]
async fn a_child_that_never_registers_is_killed_at_the_spawn_timeout() {
    if !tools_present() {
        return;
    }
    let bin = fake_session(Fake {
        register_delay: "never",
        ignore_term: false,
    });
    let s = Scheduler::start(&[
        ("--session-bin", bin.to_str().unwrap()),
        ("--max-servers", "1"),
        ("--spawn-timeout-ms", "400"),
    ])
    .await;
    let (status, code, retry_after) = s.create(json!({})).await.unwrap_err();
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "no_capacity")
    );
    assert!(retry_after.is_some());
    eventually(
        "the starting entry to go",
        Duration::from_secs(10),
        || async { s.servers().await.is_empty().then_some(()) },
    )
    .await;
    assert_eq!(s.metric("berth_scheduler_spawn_failures_total").await, 1);
    // The child (its pid names its argument file) was killed.
    let pids = recorded_pids(&bin);
    assert_eq!(pids.len(), 1);
    eventually("the child to be gone", Duration::from_secs(10), || async {
        (!process_exists(pids[0])).then_some(())
    })
    .await;
    s.stop().await;
}

#[tokio::test]
async fn a_silent_managed_child_is_killed_and_its_room_moves_to_a_new_one() {
    if !tools_present() {
        return;
    }
    let bin = fake_session(Fake {
        register_delay: "0",
        ignore_term: false,
    });
    let s = Scheduler::start(&[
        ("--session-bin", bin.to_str().unwrap()),
        ("--max-servers", "2"),
        ("--heartbeat-timeout-ms", "800"),
    ])
    .await;
    // The fake never heartbeats: it is declared dead, killed once it stays silent, and
    // forgotten after the dead-listing time.
    let p = s.create(json!({})).await.unwrap();
    let pid = s.server(&p.server_id).await.unwrap().pid.unwrap();
    eventually(
        "the silent child to be killed",
        Duration::from_secs(15),
        || async { (!process_exists(pid) && s.server(&p.server_id).await.is_none()).then_some(()) },
    )
    .await;
    // Its room goes to a fresh server on lookup.
    let moved = s.lookup(&p.room_id).await.unwrap();
    assert_ne!(moved.server_id, p.server_id);
    assert!(moved.epoch > p.epoch);
    s.stop().await;
}

#[tokio::test]
async fn an_idle_managed_server_is_drained() {
    if !tools_present() {
        return;
    }
    let bin = fake_session(Fake {
        register_delay: "0",
        ignore_term: false,
    });
    let s = Scheduler::start(&[
        ("--session-bin", bin.to_str().unwrap()),
        ("--max-servers", "2"),
        ("--server-idle-secs", "0.2"),
    ])
    .await;
    let p = s.create(json!({})).await.unwrap();
    // Not while it hosts a room.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let ack = s
        .heartbeat(
            &p.server_id,
            vec![common::hosted(&p.room_id, p.epoch)],
            false,
        )
        .await
        .unwrap();
    assert_eq!((ack.state, ack.drain), (ServerState::Ready, false));
    let res = s
        .post(&format!("/v1/rooms/{}/release", p.room_id))
        .json(&json!({"serverId": p.server_id, "epoch": p.epoch}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let ack = eventually(
        "the idle server to be asked to drain",
        Duration::from_secs(10),
        || async {
            let ack = s.heartbeat(&p.server_id, vec![], false).await.unwrap();
            ack.drain.then_some(ack)
        },
    )
    .await;
    assert_eq!(ack.state, ServerState::Draining);
    s.stop().await;
}
