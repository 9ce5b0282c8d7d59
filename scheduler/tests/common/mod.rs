//! Test support: a scheduler served on 127.0.0.1:0 with a typed HTTP client, and fake session
//! servers that register and heartbeat over HTTP.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use berth_protocol::ErrorBody;
use berth_protocol::cluster::{
    Capacity, Heartbeat, HeartbeatAck, HostedRoom, Placement, RegisterServer, Registered,
    ServerInfo, ServerList,
};
use clap::Parser;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "test-cluster-secret";

pub struct Scheduler {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), berth_scheduler::Error>>,
    data_dir: std::path::PathBuf,
}

/// A temp dir unique to this test.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "berth-sched-{tag}-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_suffix() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n}", berth_protocol::now_ms())
}

impl Scheduler {
    /// Starts a scheduler. Defaults keep it from spawning (`--max-servers 0`, no warm buffer);
    /// `flags` override them (`("--max-servers", "3")`).
    pub async fn start(flags: &[(&str, &str)]) -> Scheduler {
        let data_dir = temp_dir("data");
        let mut args: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in [
            ("--cluster-secret", SECRET),
            ("--max-servers", "0"),
            ("--warm-servers", "0"),
            ("--session-bin", "/nonexistent/berth-session"),
            ("--heartbeat-interval-ms", "100"),
            ("--heartbeat-timeout-ms", "60000"),
            ("--spawn-timeout-ms", "10000"),
            ("--shutdown-timeout-ms", "2000"),
        ] {
            args.insert(k.into(), v.into());
        }
        args.insert("--data-dir".into(), data_dir.display().to_string());
        for (k, v) in flags {
            args.insert((*k).into(), (*v).into());
        }
        let mut argv = vec!["berth-scheduler".to_owned()];
        for (k, v) in args {
            argv.push(k);
            argv.push(v);
        }
        let config = berth_scheduler::Config::parse_from(argv);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(berth_scheduler::serve(listener, config, shutdown.clone()));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Scheduler {
            addr,
            http,
            shutdown,
            handle,
            data_dir,
        }
    }

    /// This scheduler's data dir (its SQLite store lives there).
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path)).bearer_auth(SECRET)
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.post(self.url(path)).bearer_auth(SECRET)
    }

    pub fn put(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.put(self.url(path)).bearer_auth(SECRET)
    }

    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.delete(self.url(path)).bearer_auth(SECRET)
    }

    /// Registers a fake session server; returns its id.
    pub async fn register(&self, id: Option<&str>, rooms: u32, hosted: Vec<HostedRoom>) -> String {
        let body = RegisterServer {
            server_id: id.map(str::to_owned),
            url: format!("ws://127.0.0.1:9/{}", id.unwrap_or("outside")),
            capacity: Capacity {
                rooms,
                members_per_room: 50,
            },
            rooms: hosted,
            connections: 0,
            draining: false,
            pid: None,
            admin_url: None,
        };
        let res = self.post("/v1/servers").json(&body).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let reg: Registered = res.json().await.unwrap();
        assert_eq!(reg.heartbeat_interval_ms, 100);
        reg.server_id
    }

    /// Sends a heartbeat; Ok(ack) or Err(status, error code).
    pub async fn heartbeat(
        &self,
        id: &str,
        rooms: Vec<HostedRoom>,
        draining: bool,
    ) -> Result<HeartbeatAck, (StatusCode, String)> {
        let body = Heartbeat {
            connections: 1,
            rooms,
            draining,
        };
        let res = self
            .put(&format!("/v1/servers/{id}/heartbeat"))
            .json(&body)
            .send()
            .await
            .unwrap();
        if res.status() == StatusCode::OK {
            Ok(res.json().await.unwrap())
        } else {
            Err(error_of(res).await)
        }
    }

    /// `POST /v1/rooms`: Ok(placement) or Err(status, code, Retry-After).
    pub async fn create(
        &self,
        body: Value,
    ) -> Result<Placement, (StatusCode, String, Option<u64>)> {
        let res = self.post("/v1/rooms").json(&body).send().await.unwrap();
        let retry = res
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
        if res.status() == StatusCode::CREATED {
            Ok(res.json().await.unwrap())
        } else {
            let (status, code) = error_of(res).await;
            Err((status, code, retry))
        }
    }

    pub async fn lookup(&self, room_id: &str) -> Result<Placement, (StatusCode, String)> {
        let res = self
            .get(&format!("/v1/rooms/{room_id}"))
            .send()
            .await
            .unwrap();
        if res.status() == StatusCode::OK {
            Ok(res.json().await.unwrap())
        } else {
            Err(error_of(res).await)
        }
    }

    pub async fn servers(&self) -> Vec<ServerInfo> {
        let res = self.get("/v1/servers").send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.json::<ServerList>().await.unwrap().servers
    }

    pub async fn server(&self, id: &str) -> Option<ServerInfo> {
        self.servers().await.into_iter().find(|s| s.id == id)
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// A counter's value from `/metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("metric {name} missing:\n{text}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// Cancels the shutdown token and waits for `serve` to return.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("serve did not return");
        result.unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Status and error code of an error answer (checks the body is the ErrorBody).
pub async fn error_of(res: reqwest::Response) -> (StatusCode, String) {
    let status = res.status();
    let body: ErrorBody = res
        .json()
        .await
        .unwrap_or_else(|e| panic!("{status}: not an ErrorBody: {e}"));
    (status, body.error.code)
}

pub fn hosted(room_id: &str, epoch: u64) -> HostedRoom {
    HostedRoom {
        room_id: room_id.into(),
        epoch,
        members: 1,
    }
}

/// Polls `check` until it returns Some, or panics after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
