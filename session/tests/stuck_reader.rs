//! Finding: a member who never reads must not pin the server's memory. A room full of long
//! messages that JSON-escape to twice their size; clients connect with `since=0` and a tiny
//! receive window and never read. The real `berth-session` process must close them within its
//! write deadline (plus the ping period) and its resident memory must stay bounded.

mod common;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Keys;
use futures_util::SinkExt as _;
use tokio::io::AsyncWriteExt as _;
use tokio_tungstenite::tungstenite::Message;

/// Stuck readers opened at once.
const STUCK: usize = 8;
/// Messages in the room (each 4 KiB of text, 8 KiB of JSON).
const MESSAGES: usize = 1000;

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

async fn connections(admin: SocketAddr) -> u64 {
    let v: serde_json::Value = reqwest::get(format!("http://{admin}/healthz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["connections"].as_u64().unwrap()
}

#[tokio::test]
async fn a_client_that_never_reads_is_closed_and_pins_little_memory() {
    let keys = Keys::generate();
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth-session"))
        .args([
            "--standalone",
            "--server-id",
            "s-test",
            "--store",
            "none",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--history",
            &MESSAGES.to_string(),
            "--message-rate",
            "100000",
            "--message-burst",
            "100000",
            "--write-timeout-ms",
            "1500",
            "--ping-interval-ms",
            "1000",
        ])
        .arg("--ticket-public-key")
        .arg(&keys.public_pem_path)
        .arg("--data-dir")
        .arg(&keys.dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // "listening addr=…" then "admin listener up … addr=…".
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut addrs = Vec::new();
    let mut lines = stderr.lines();
    while addrs.len() < 2 {
        let line = lines
            .next()
            .expect("the server logs its addresses")
            .unwrap();
        if line.contains("listening") || line.contains("admin listener up") {
            let addr = line
                .split("addr=")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap();
            addrs.push(addr.parse::<SocketAddr>().unwrap());
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let _process = Process(child);
    let (addr, admin) = (addrs[0], addrs[1]);
    let ticket = |user: &str| keys.mint(&common::claims("s-test", "r-stuck", user));

    // Fill the room: 4 KiB of `"` and `\` each, 8 KiB once escaped.
    let (ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token={}", ticket("writer")))
            .await
            .unwrap();
    let (mut writer, mut echoes) = futures_util::StreamExt::split(ws);
    // The writer reads its echoes, so that it is no stuck reader itself.
    let drain = tokio::spawn(async move {
        use futures_util::StreamExt as _;
        while let Some(Ok(_)) = echoes.next().await {}
    });
    let text = "\"\\".repeat(2048);
    for i in 0..MESSAGES {
        let frame = serde_json::json!({"type": "send", "text": text, "clientId": format!("c{i}")});
        writer.send(Message::text(frame.to_string())).await.unwrap();
    }
    // A reader that does read sees a welcome bounded in bytes, holding the newest messages.
    let deadline = Instant::now() + Duration::from_secs(30);
    let welcome = loop {
        let (mut reader, _) = tokio_tungstenite::connect_async(format!(
            "ws://{addr}/ws?token={}&since=0",
            ticket("reader")
        ))
        .await
        .unwrap();
        use futures_util::StreamExt as _;
        let Some(Ok(Message::Text(t))) = reader.next().await else {
            panic!("no welcome")
        };
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        if v["seq"].as_u64() == Some(MESSAGES as u64) || Instant::now() > deadline {
            break (t.len(), v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (welcome_bytes, welcome) = welcome;
    let history = welcome["history"].as_array().unwrap();
    assert!(
        welcome_bytes <= 256 * 1024 + 4096,
        "welcome of {welcome_bytes} bytes"
    );
    assert!(!history.is_empty() && history.len() < MESSAGES);
    assert_eq!(history.last().unwrap()["seq"], MESSAGES as u64);
    drop(writer);
    drain.abort();

    let before = rss_kib(pid);
    // Stuck readers: a tiny receive window, then never a read.
    let mut stuck = Vec::new();
    for i in 0..STUCK {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(2048).unwrap();
        socket.connect(&addr.into()).unwrap();
        socket.set_nonblocking(true).unwrap();
        let mut tcp = tokio::net::TcpStream::from_std(socket.into()).unwrap();
        let request = format!(
            "GET /ws?token={}&since=0 HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            ticket(&format!("stuck-{i}"))
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        stuck.push(tcp);
    }
    // Wait until they are in, measuring the peak memory meanwhile.
    let mut peak = before;
    let started = Instant::now();
    let mut seen_in = false;
    loop {
        peak = peak.max(rss_kib(pid));
        let n = connections(admin).await;
        seen_in |= n >= STUCK as u64;
        if seen_in && n == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "stuck readers still connected after {:?} ({n} connections)",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let closed_after = started.elapsed();
    let growth = peak.saturating_sub(before);
    eprintln!(
        "{STUCK} stuck readers closed after {closed_after:?}; RSS {before} KiB before, peak {peak} KiB (+{growth} KiB); welcome {welcome_bytes} bytes"
    );
    // Unbounded, each would pin an 8 MiB welcome. Bounded, each holds its ~256 KiB welcome (the
    // text, and the frame being written) until closed; the allocator commits memory in 2 MiB
    // steps, so the bound is 1 MiB a reader: 8 times under the unbounded cost.
    assert!(
        growth < (STUCK as u64) * 1024,
        "RSS grew by {growth} KiB for {STUCK} stuck readers"
    );
    drop(stuck);
}
