//! Starts whole Berth clusters on free ports for the end-to-end tests.
//!
//! A [`Cluster`] runs the scheduler and the backend in-process (their `serve` functions on
//! listeners bound to `127.0.0.1:0`) and lets the scheduler spawn real `testkit-session`
//! processes, exactly as `berth-scheduler` spawns `berth-session` in production. The
//! `testkit-*` binaries are one-line copies of the real ones, so `cargo test` rebuilds them.
//!
//! [`browser`] drives Chromium for the web client's tests; [`skip`] is how a test that cannot run
//! here (no Chromium, no PostgreSQL, not root) says so, loudly, and fails under `CI=true`.
//! [`netns`] makes simulated machines (network namespaces) for the multi-host tests.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_protocol::cluster::{ServerInfo, ServerList};
use clap::Parser as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub mod browser;

pub use berth_protocol as protocol;
pub use berth_store::testing::skip;

pub mod netns;

/// How to shape a test cluster. Defaults follow DESIGN.md except `warm_servers` (0, so that
/// tests can count exactly the servers their creates needed).
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub rooms_per_server: u32,
    pub members_per_room: u32,
    pub max_servers: u32,
    pub warm_servers: u32,
    /// Extra flags for the scheduler, e.g. `["--heartbeat-timeout-ms", "800"]`.
    pub scheduler_args: Vec<String>,
    /// Extra flags for the backend.
    pub backend_args: Vec<String>,
    /// PostgreSQL URL of the message store (`--database-url` for the scheduler, which passes it
    /// on to the session servers it spawns, and for the backend). `None`: the default SQLite
    /// store in the cluster's data dir.
    pub database_url: Option<String>,
    /// Serve HTTPS / WSS everywhere with these files (the scheduler hands them to the session
    /// servers it spawns); the cluster's own clients trust `ca`.
    pub tls: Option<TlsFiles>,
}

/// PEM files of a TLS cluster: the certificate and key every process serves, and the CA (or
/// CAs) every process and the test's clients trust.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl TlsFiles {
    /// The flags that make a process serve these files and trust the CA (certificates reload on
    /// SIGHUP only, so that tests decide when).
    pub fn args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            path_str(&self.cert).into(),
            "--tls-key".into(),
            path_str(&self.key).into(),
            "--tls-ca".into(),
            path_str(&self.ca).into(),
            "--tls-reload-secs".into(),
            "0".into(),
        ]
    }

    /// The client library's trust in this cluster.
    pub fn client_tls(&self) -> berth::Tls {
        berth::Tls::with_ca_file(&self.ca).unwrap()
    }
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            rooms_per_server: 10,
            members_per_room: 100,
            max_servers: 16,
            warm_servers: 0,
            scheduler_args: Vec::new(),
            backend_args: Vec::new(),
            database_url: None,
            tls: None,
        }
    }
}

/// A running cluster. Stop it with [`Cluster::stop`]; dropping it also cancels everything, and
/// the spawned session processes die with the scheduler (kill-on-drop and parent-death signal).
pub struct Cluster {
    /// `http://127.0.0.1:PORT` of the backend (public API and web client).
    pub backend_url: String,
    /// `http://127.0.0.1:PORT` of the scheduler (internal API).
    pub scheduler_url: String,
    /// The cluster secret for the scheduler API.
    pub secret: String,
    /// Temporary data dir holding the ticket keys.
    pub data_dir: PathBuf,
    http: reqwest::Client,
    tls: Option<TlsFiles>,
    scheduler_addr: std::net::SocketAddr,
    scheduler_args: Vec<String>,
    scheduler: Option<Scheduler>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// An in-process scheduler that can be stopped on its own (to test scheduler restarts).
struct Scheduler {
    token: CancellationToken,
    task: JoinHandle<()>,
}

impl Scheduler {
    fn start(listener: TcpListener, args: Vec<String>, token: CancellationToken) -> Scheduler {
        let config = berth_scheduler::Config::parse_from(args);
        let serve_token = token.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = berth_scheduler::serve(listener, config, serve_token).await {
                eprintln!("testkit: scheduler failed: {e:#}");
            }
        });
        Scheduler { token, task }
    }

    async fn stop(self) {
        self.token.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

impl Cluster {
    /// Starts a scheduler and a backend on free ports. Panics on failure (it is for tests).
    pub async fn start(options: ClusterOptions) -> Cluster {
        let data_dir = temp_dir("cluster");
        let key = write_ticket_keys(&data_dir);
        let secret = format!("test-secret-{}", rand::random::<u64>());
        let shutdown = CancellationToken::new();

        let scheduler_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheduler_addr = scheduler_listener.local_addr().unwrap();
        let scheme = if options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let scheduler_url = format!("{scheme}://{scheduler_addr}");
        let mut scheduler_args: Vec<String> = [
            "berth-scheduler",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            path_str(&data_dir),
            "--cluster-secret",
            &secret,
            "--session-bin",
            path_str(&bin_path("testkit-session")),
            "--ticket-public-key",
            path_str(&key.public),
            "--rooms-per-server",
            &options.rooms_per_server.to_string(),
            "--members-per-room",
            &options.members_per_room.to_string(),
            "--max-servers",
            &options.max_servers.to_string(),
            "--warm-servers",
            &options.warm_servers.to_string(),
            "--spawn-timeout-ms",
            "20000",
            "--shutdown-timeout-ms",
            "3000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(url) = &options.database_url {
            // One scheduler keeps its registry in memory here; the replica tests share theirs.
            scheduler_args.extend(["--database-url".to_owned(), url.clone()]);
            scheduler_args.extend(["--shared".to_owned(), "false".to_owned()]);
        }
        if let Some(tls) = &options.tls {
            scheduler_args.extend(tls.args());
        }
        scheduler_args.extend(options.scheduler_args.iter().cloned());
        let scheduler = Scheduler::start(
            scheduler_listener,
            scheduler_args.clone(),
            shutdown.child_token(),
        );

        let backend_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend_url = format!("{scheme}://{}", backend_listener.local_addr().unwrap());
        let mut args: Vec<String> = [
            "berth-backend",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            path_str(&data_dir),
            "--cluster-secret",
            &secret,
            "--scheduler-url",
            &scheduler_url,
            "--ticket-private-key",
            path_str(&key.private),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(url) = &options.database_url {
            args.extend(["--database-url".to_owned(), url.clone()]);
        }
        // Tests drive many requests from one address: no request limits unless a test sets one.
        for flag in [
            "--create-rate-per-address",
            "--api-rate-per-address",
            "--api-rate-per-user",
            "--history-rate",
        ] {
            if !options.backend_args.iter().any(|a| a == flag) {
                args.extend([flag.to_owned(), "0".to_owned()]);
            }
        }
        if let Some(tls) = &options.tls {
            args.extend(tls.args());
        }
        args.extend(options.backend_args.iter().cloned());
        let config = berth_backend::Config::parse_from(args);
        let token = shutdown.clone();
        let backend = tokio::spawn(async move {
            if let Err(e) = berth_backend::serve(backend_listener, config, token).await {
                eprintln!("testkit: backend failed: {e:#}");
            }
        });

        let cluster = Cluster {
            backend_url,
            scheduler_url,
            secret,
            data_dir,
            http: http_client(options.tls.as_ref()),
            tls: options.tls.clone(),
            scheduler_addr,
            scheduler_args,
            scheduler: Some(scheduler),
            shutdown,
            tasks: vec![backend],
        };
        let http = cluster.http.clone();
        let health = format!("{}/healthz", cluster.backend_url);
        eventually(Duration::from_secs(10), || {
            let (http, health) = (http.clone(), health.clone());
            async move { matches!(http.get(&health).send().await, Ok(r) if r.status().is_success()) }
        })
        .await;
        cluster
    }

    /// The public-API client for this cluster's backend.
    pub fn backend(&self) -> berth::Backend {
        match &self.tls {
            Some(tls) => berth::Backend::with_tls(&self.backend_url, &tls.client_tls()),
            None => berth::Backend::new(&self.backend_url),
        }
    }

    /// Logs `username` in through the backend.
    pub async fn login(&self, username: &str) -> berth::Session {
        self.backend().login(username).await.unwrap()
    }

    /// The scheduler's view of the fleet (`GET /v1/servers`).
    pub async fn servers(&self) -> Vec<ServerInfo> {
        let list: ServerList = self
            .scheduler_get("/v1/servers")
            .await
            .json()
            .await
            .unwrap();
        list.servers
    }

    /// A raw authenticated `GET` on the scheduler API.
    pub async fn scheduler_get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{}", self.scheduler_url, path))
            .bearer_auth(&self.secret)
            .send()
            .await
            .unwrap()
    }

    /// The scheduler's `/metrics` text.
    pub async fn scheduler_metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.scheduler_url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// A raw authenticated `POST` on the scheduler API.
    pub async fn scheduler_post(&self, path: &str) -> reqwest::Response {
        self.http
            .post(format!("{}{}", self.scheduler_url, path))
            .bearer_auth(&self.secret)
            .send()
            .await
            .unwrap()
    }

    /// The server `id` as the scheduler lists it. Panics when it is not listed.
    pub async fn server(&self, id: &str) -> ServerInfo {
        self.servers()
            .await
            .into_iter()
            .find(|s| s.id == id)
            .unwrap_or_else(|| panic!("server {id} not listed"))
    }

    /// `http://host:port` of server `id`'s operator listener (`/metrics`), as it registered it.
    pub async fn admin_url(&self, id: &str) -> String {
        self.server(id)
            .await
            .admin_url
            .unwrap_or_else(|| panic!("server {id} has no operator listener"))
    }

    /// SIGKILLs the session process of server `id` (it must be one the scheduler spawned).
    pub async fn kill_server(&self, id: &str) {
        let pid = self
            .server(id)
            .await
            .pid
            .unwrap_or_else(|| panic!("server {id} has no pid"));
        signal(pid, "KILL");
    }

    /// Stops the scheduler (its spawned session servers with it) and starts a fresh one on the
    /// same address, as after a crash or a deploy. Outside session servers keep running.
    pub async fn restart_scheduler(&mut self) {
        if let Some(old) = self.scheduler.take() {
            old.stop().await;
        }
        // Pooled keep-alive connections point at the stopped scheduler: start a fresh pool.
        self.http = http_client(self.tls.as_ref());
        let listener = TcpListener::bind(self.scheduler_addr).await.unwrap();
        self.scheduler = Some(Scheduler::start(
            listener,
            self.scheduler_args.clone(),
            self.shutdown.child_token(),
        ));
    }

    /// Starts a session server the way an outside supervisor would (not spawned by the
    /// scheduler): it registers by itself and the scheduler never stops it. Killed on drop.
    pub fn start_outside_session(&self, extra_args: &[&str]) -> tokio::process::Child {
        tokio::process::Command::new(bin_path("testkit-session"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--scheduler-url",
                &self.scheduler_url,
                // `/metrics` lives on the operator listener.
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .arg("--ticket-public-key")
            .arg(self.ticket_keys().public)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(extra_args)
            .env("BERTH_CLUSTER_SECRET", &self.secret)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    /// Stops the cluster and waits for the scheduler to stop its session processes.
    pub async fn stop(mut self) {
        if let Some(scheduler) = self.scheduler.take() {
            scheduler.stop().await;
        }
        self.shutdown.cancel();
        for task in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Paths of a ticket key pair.
#[derive(Debug, Clone)]
pub struct TicketKeys {
    pub private: PathBuf,
    pub public: PathBuf,
}

/// Writes a fresh Ed25519 ticket key pair (PKCS#8 and SPKI PEM) into `dir`.
pub fn write_ticket_keys(dir: &Path) -> TicketKeys {
    use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
    std::fs::create_dir_all(dir).unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let keys = TicketKeys {
        private: dir.join("ticket.key.pem"),
        public: dir.join("ticket.pub.pem"),
    };
    let private = key.to_pkcs8_pem(Default::default()).unwrap();
    std::fs::write(&keys.private, private.as_bytes()).unwrap();
    std::fs::write(
        &keys.public,
        key.verifying_key()
            .to_public_key_pem(Default::default())
            .unwrap(),
    )
    .unwrap();
    keys
}

/// Mints a ticket as the backend would, for tests that need odd ones (expired, wrong server…).
pub fn mint_ticket(keys: &TicketKeys, claims: &berth_protocol::claims::TicketClaims) -> String {
    let pem = std::fs::read(&keys.private).unwrap();
    let key = jsonwebtoken::EncodingKey::from_ed_pem(&pem).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
        claims,
        &key,
    )
    .unwrap()
}

/// The ticket keys of a running cluster.
impl Cluster {
    pub fn ticket_keys(&self) -> TicketKeys {
        TicketKeys {
            private: self.data_dir.join("ticket.key.pem"),
            public: self.data_dir.join("ticket.pub.pem"),
        }
    }
}

/// Polls `check` every 25 ms until it is true; panics after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_some(timeout, || {
        let done = check();
        async move { done.await.then_some(()) }
    })
    .await
}

/// Polls `check` every 25 ms until it yields a value; panics after `timeout`.
pub async fn eventually_some<T, F, Fut>(timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("condition not met within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Path of a binary built beside the running test (`target/<profile>/NAME`).
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let mut dir = exe.parent().unwrap().to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test` (it builds it)",
        path.display()
    );
    path
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3 is the state; `Z` is a zombie waiting to be reaped, `X` dead.
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .map(|rest| !matches!(rest.trim_start().chars().next(), Some('Z' | 'X')))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Sends `SIG<name>` to `pid` with kill(1).
pub fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid} failed");
}

fn http_client(tls: Option<&TlsFiles>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
    if let Some(tls) = tls {
        let pem = std::fs::read(&tls.ca).unwrap();
        for cert in reqwest::Certificate::from_pem_bundle(&pem).unwrap() {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().unwrap()
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "berth-{tag}-{}-{:x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}
