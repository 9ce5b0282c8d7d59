//! The real `berth-scheduler` binary supervises its session processes: stopping it with SIGTERM
//! leaves none behind, and neither does SIGKILL (the parent-death signal the session processes
//! ask for).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use berth_protocol::cluster::{PlaceRoomRequest, Placement, ServerList};
use berth_testkit::{bin_path, eventually, process_alive, signal, temp_dir, write_ticket_keys};
use tokio::process::Child;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_scheduler_stops_its_session_servers() {
    let (dir, mut scheduler, pids) = scheduler_with_two_session_processes().await;
    signal(scheduler.id().unwrap(), "TERM");
    let status = tokio::time::timeout(Duration::from_secs(15), scheduler.wait())
        .await
        .expect("scheduler exits")
        .unwrap();
    assert!(status.success(), "graceful exit: {status:?}");
    for pid in pids {
        eventually(
            Duration::from_secs(5),
            || async move { !process_alive(pid) },
        )
        .await;
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_scheduler_leaves_no_session_process_behind() {
    let (dir, mut scheduler, pids) = scheduler_with_two_session_processes().await;
    // SIGKILL: the scheduler cleans nothing up; only the kernel's parent-death signal
    // (PR_SET_PDEATHSIG, SIGTERM) tells the session processes to go.
    signal(scheduler.id().unwrap(), "KILL");
    let status = tokio::time::timeout(Duration::from_secs(5), scheduler.wait())
        .await
        .expect("the scheduler is gone")
        .unwrap();
    assert!(!status.success(), "killed, not exited: {status:?}");
    let killed_at = std::time::Instant::now();
    for pid in pids {
        eventually(
            Duration::from_secs(10),
            || async move { !process_alive(pid) },
        )
        .await;
    }
    eprintln!(
        "the orphaned session processes were gone {:?} after the SIGKILL",
        killed_at.elapsed()
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Starts the `testkit-scheduler` binary on a free port and has it spawn two session processes
/// (two rooms at one room per server). Returns the data dir, the scheduler and their pids.
async fn scheduler_with_two_session_processes() -> (PathBuf, Child, Vec<u32>) {
    let dir = temp_dir("process");
    let keys = write_ticket_keys(&dir);
    // A free port for the scheduler process (it must be known before it starts).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let secret = "process-test-secret";
    let scheduler = tokio::process::Command::new(bin_path("testkit-scheduler"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--warm-servers",
            "0",
            "--rooms-per-server",
            "1",
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

    let http = reqwest::Client::new();
    eventually(Duration::from_secs(10), || {
        let (http, url) = (http.clone(), url.clone());
        async move { matches!(http.get(format!("{url}/healthz")).send().await, Ok(r) if r.status().is_success()) }
    })
    .await;

    for _ in 0..2 {
        let placed = http
            .post(format!("{url}/v1/rooms"))
            .bearer_auth(secret)
            .json(&PlaceRoomRequest::default())
            .send()
            .await
            .unwrap();
        assert_eq!(placed.status(), 201);
        let _: Placement = placed.json().await.unwrap();
    }
    let list: ServerList = http
        .get(format!("{url}/v1/servers"))
        .bearer_auth(secret)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pids: Vec<u32> = list.servers.iter().filter_map(|s| s.pid).collect();
    assert_eq!(
        pids.len(),
        2,
        "two rooms at one per server: two session processes"
    );
    assert!(pids.iter().all(|&pid| process_alive(pid)));
    (dir, scheduler, pids)
}
