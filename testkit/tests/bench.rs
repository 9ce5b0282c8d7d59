//! `berth bench` end to end: a tiny load through the real flow (backend, scheduler, spawned
//! session servers), and the direct mode against a standalone session server; the reports
//! must hold sane, non-zero figures.

use std::process::Stdio;
use std::time::Duration;

use berth_bench::{BenchOptions, BenchReport, DirectTarget, Fleet, Target};
use berth_testkit::{Cluster, ClusterOptions, bin_path, temp_dir, write_ticket_keys};
use clap::Parser as _;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Checks what every run with connected senders must show.
fn assert_sane_step(report: &BenchReport, members: u64) {
    assert_eq!(report.steps.len(), 1, "{report:#?}");
    let step = &report.steps[0];
    assert!(step.sent > 0, "{step:#?}");
    // Every member was present at every send: each message reaches all of its room.
    assert_eq!(
        step.expected_deliveries,
        step.sent * u64::from(report.members_per_room),
        "{step:#?}"
    );
    assert!(step.drained, "{step:#?}");
    assert_eq!(step.delivered, step.expected_deliveries, "{step:#?}");
    assert!((step.delivery_ratio - 1.0).abs() < 1e-9);
    assert!(
        step.sends_per_sec > 0.0 && step.delivered_per_sec > 0.0,
        "{step:#?}"
    );
    let lat = step.latency.expect("delivery latencies");
    // Every delivered message is one of ours, and timed.
    assert_eq!(lat.count, step.delivered, "{lat:?}");
    assert!(lat.p50_ms > 0.0, "{lat:?}");
    assert!(
        lat.p50_ms <= lat.p90_ms
            && lat.p90_ms <= lat.p99_ms
            && lat.p99_ms <= lat.p999_ms
            && lat.p999_ms <= lat.max_ms,
        "{lat:?}"
    );
    let connect = report.setup.connect_latency.expect("connect latencies");
    assert_eq!(connect.count, members);
    assert!(
        connect.p50_ms > 0.0 && connect.p50_ms <= connect.max_ms,
        "{connect:?}"
    );
    assert_eq!(report.setup.members_connected, members);
    assert_eq!(report.setup.members_failed, 0);
    assert_eq!(report.members_connected_at_end, members);
    assert!(report.errors.is_empty(), "errors: {:?}", report.errors);
    assert!(!report.interrupted);
    assert!(report.is_useful());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_through_the_real_flow_reports_sane_figures() {
    // One room per server: the two rooms need two spawned servers.
    let cluster = Cluster::start(ClusterOptions {
        rooms_per_server: 1,
        ..Default::default()
    })
    .await;
    let report = berth_bench::run(BenchOptions {
        target: Target::Backend {
            url: cluster.backend_url.clone(),
            fleet: Some(Fleet {
                scheduler_url: cluster.scheduler_url.clone(),
                secret: cluster.secret.clone(),
            }),
        },
        rooms: 2,
        members: 3,
        rates: vec![2.0],
        duration: Duration::from_secs(2),
        ramp_up: Duration::from_millis(300),
        drain: Duration::from_secs(10),
        ..Default::default()
    })
    .await
    .unwrap();

    assert_eq!(report.mode, "backend");
    assert_sane_step(&report, 6);
    let step = &report.steps[0];
    // 6 senders at 2/s for 2 s plan 24 sends; each one is either sent or counted as behind.
    assert!(
        step.sent <= 24 && step.target_sends_per_sec == 12.0,
        "{step:#?}"
    );
    assert!(
        step.sent >= 20 || step.fell_behind_percent.is_some(),
        "{step:#?}"
    );

    let setup = &report.setup;
    assert_eq!(setup.logins, 6);
    assert_eq!(setup.rooms_created, 2);
    assert!(setup.creates_per_sec > 0.0);
    let create = setup.create_latency.expect("create latencies");
    assert_eq!(create.count, 2);
    assert!(create.p50_ms > 0.0);
    // The creators connect with their create tickets; the 4 others look the room up.
    assert_eq!(setup.lookup_latency.expect("lookup latencies").count, 4);
    assert!(
        report.servers.unwrap_or(0) >= 2,
        "servers: {:?} {:?}",
        report.servers,
        report.servers_note
    );

    // Both outputs carry the figures.
    let table = report.table();
    for needle in [
        "rooms created",
        "create latency",
        "delivered",
        "p99",
        "session servers",
    ] {
        assert!(table.contains(needle), "{needle} missing from:\n{table}");
    }
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["setup"]["rooms_created"], 2);
    assert!(json["steps"][0]["latency"]["p99_ms"].as_f64().unwrap() > 0.0);

    // The CLI path, as a script would call it.
    let cli = berth_cli::Cli::parse_from([
        "berth",
        "--backend",
        &cluster.backend_url,
        "bench",
        "--rooms",
        "1",
        "--members",
        "2",
        "--duration",
        "1s",
        "--ramp-up",
        "0s",
        "--json",
        "--quiet",
    ]);
    berth_cli::run(cli).await.unwrap();
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_creates_only_measures_placement() {
    let cluster = Cluster::start(ClusterOptions {
        rooms_per_server: 4,
        ..Default::default()
    })
    .await;
    let report = berth_bench::run(BenchOptions {
        target: Target::Backend {
            url: cluster.backend_url.clone(),
            fleet: None,
        },
        rooms: 6,
        members: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(report.setup.rooms_created, 6, "{:?}", report.errors);
    assert_eq!(report.setup.create_latency.unwrap().count, 6);
    assert!(report.steps.is_empty());
    assert_eq!(report.servers, None);
    assert!(report.servers_note.is_some());
    assert!(report.is_useful());
    // 6 rooms at 4 per server: the scheduler spawned a second server.
    assert!(cluster.servers().await.len() >= 2);
    cluster.stop().await;
}

/// A `testkit-session --standalone` on a free port, and its WebSocket URL.
async fn standalone_session(
    server_id: &str,
    public_key: &std::path::Path,
) -> (tokio::process::Child, String) {
    let data_dir = temp_dir("bench-direct");
    let mut child = tokio::process::Command::new(bin_path("testkit-session"))
        .args([
            "--standalone",
            "--server-id",
            server_id,
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--ticket-public-key")
        .arg(public_key)
        .arg("--data-dir")
        .arg(&data_dir)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("listening") {
                let rest = line.split("addr=").nth(1).expect("an addr field");
                return rest.split_whitespace().next().unwrap().to_owned();
            }
        }
        panic!("the session server exited before listening");
    })
    .await
    .expect("the session server listens");
    // Keep draining its logs so that it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, format!("ws://{addr}/ws"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_direct_loads_a_standalone_session_server() {
    let keys = write_ticket_keys(&temp_dir("bench-keys"));
    let (mut server, url) = standalone_session("s-direct", &keys.public).await;
    let direct = |server_id: &str| {
        Target::Direct(DirectTarget {
            url: url.clone(),
            server_id: server_id.into(),
            ticket_key: keys.private.clone(),
            room_offset: 0,
        })
    };

    let report = berth_bench::run(BenchOptions {
        target: direct("s-direct"),
        rooms: 2,
        members: 3,
        rates: vec![2.0],
        duration: Duration::from_secs(2),
        ramp_up: Duration::from_millis(200),
        drain: Duration::from_secs(10),
        bind_ips: vec!["127.0.0.1".parse().unwrap()],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(report.mode, "direct");
    assert_sane_step(&report, 6);
    assert_eq!(report.servers, None);

    // Tickets for another server are refused before the upgrade, and counted by kind.
    let refused = berth_bench::run(BenchOptions {
        target: direct("s-other"),
        rooms: 1,
        members: 2,
        duration: Duration::from_millis(200),
        ramp_up: Duration::ZERO,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(refused.setup.members_connected, 0);
    assert_eq!(refused.setup.members_failed, 2);
    assert_eq!(
        refused.errors.get("connect: wrong_server (421)"),
        Some(&2),
        "{:?}",
        refused.errors
    );
    assert!(refused.steps.is_empty());
    assert!(!refused.is_useful());
    server.kill().await.unwrap();
}
