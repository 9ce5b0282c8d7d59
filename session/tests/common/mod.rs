//! Test support: a fresh Ed25519 key pair, tickets, a session server on `127.0.0.1:0`, and a
//! WebSocket client that reads JSON frames with bounded waits.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use berth_protocol::claims::TicketClaims;
use berth_session::Config;
use clap::Parser as _;
use futures_util::{SinkExt as _, StreamExt as _};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(15);

/// A key pair made for one test: the private key mints tickets, the public PEM is on disk.
pub struct Keys {
    pub encoding: EncodingKey,
    pub public_pem_path: PathBuf,
    pub dir: PathBuf,
}

impl Keys {
    pub fn generate() -> Keys {
        use ed25519_dalek::SigningKey;
        use ed25519_dalek::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
        let signing = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
        let private_pem = signing.to_pkcs8_pem(Default::default()).unwrap();
        let public_pem = signing
            .verifying_key()
            .to_public_key_pem(Default::default())
            .unwrap();
        let dir =
            std::env::temp_dir().join(format!("berth-session-test-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let public_pem_path = dir.join("ticket.pub.pem");
        std::fs::write(&public_pem_path, public_pem).unwrap();
        Keys {
            encoding: EncodingKey::from_ed_pem(private_pem.as_bytes()).unwrap(),
            public_pem_path,
            dir,
        }
    }

    pub fn mint(&self, claims: &TicketClaims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &self.encoding).unwrap()
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Claims of a valid ticket for `user` in `room` on `server_id`, epoch 0, a minute to live.
pub fn claims(server_id: &str, room: &str, user: &str) -> TicketClaims {
    let now = berth_protocol::now_secs();
    TicketClaims {
        sub: format!("u-{user}"),
        name: user.to_owned(),
        room: room.to_owned(),
        aud: server_id.to_owned(),
        epoch: 0,
        iat: now,
        exp: now + 60,
        jti: berth_protocol::claims::new_ticket_id(),
    }
}

/// A session server running `serve` in this process.
pub struct Server {
    pub addr: SocketAddr,
    /// The operator listener (`/metrics`).
    pub admin: SocketAddr,
    pub server_id: String,
    pub keys: Keys,
    pub shutdown: CancellationToken,
    pub handle: Option<JoinHandle<Result<(), berth_session::Error>>>,
}

/// Starts a `--standalone` server with id `s-test` and the given extra flags.
pub async fn start(extra: &[&str]) -> Server {
    let keys = Keys::generate();
    let mut args = vec![
        "berth-session".to_owned(),
        "--standalone".into(),
        "--server-id".into(),
        "s-test".into(),
        "--ticket-public-key".into(),
        keys.public_pem_path.display().to_string(),
        "--data-dir".into(),
        keys.dir.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    start_with(keys, "s-test", args).await
}

/// Starts `serve` with exactly `args`.
pub async fn start_with(keys: Keys, server_id: &str, args: Vec<String>) -> Server {
    let config = Config::parse_from(args);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = admin_listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(berth_session::serve_with_admin(
        listener,
        Some(admin_listener),
        config,
        shutdown.clone(),
        CancellationToken::new(),
    ));
    Server {
        addr,
        admin,
        server_id: server_id.to_owned(),
        keys,
        shutdown,
        handle: Some(handle),
    }
}

impl Server {
    pub fn ticket(&self, room: &str, user: &str) -> String {
        self.keys.mint(&claims(&self.server_id, room, user))
    }

    pub fn url(&self, token: &str) -> String {
        format!("ws://{}/ws?token={token}", self.addr)
    }

    /// Connects `user` to `room` and reads its `welcome`.
    pub async fn join(&self, room: &str, user: &str) -> (Client, Value) {
        let mut client = self
            .connect(&self.ticket(room, user))
            .await
            .expect("connect");
        let welcome = client.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        (client, welcome)
    }

    pub async fn connect(&self, token: &str) -> Result<Client, tungstenite::Error> {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(self.url(token)))
            .await
            .expect("connect timed out")?;
        Ok(Client { ws })
    }

    /// Connects with the ticket in `Authorization: Bearer` instead of the query.
    pub async fn connect_bearer(&self, token: &str) -> Result<Client, tungstenite::Error> {
        let mut request = format!("ws://{}/ws", self.addr)
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("connect timed out")?;
        Ok(Client { ws })
    }

    /// The HTTP refusal of a connection attempt: status and error code.
    pub async fn refusal(&self, token: &str) -> (u16, String) {
        match self.connect(token).await {
            Ok(_) => panic!("the connection was accepted"),
            Err(e) => refusal_of(e),
        }
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of an unlabelled metric.
    pub async fn metric(&self, name: &str) -> u64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }

    /// Cancels the shutdown token and waits (bounded) for `serve` to return.
    pub async fn stop(&mut self) -> Result<(), berth_session::Error> {
        self.shutdown.cancel();
        let handle = self.handle.take().expect("running");
        tokio::time::timeout(Duration::from_secs(60), handle)
            .await
            .expect("serve returns")
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn refusal_of(e: tungstenite::Error) -> (u16, String) {
    match e {
        tungstenite::Error::Http(resp) => {
            let status = resp.status().as_u16();
            let body: Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or(b"null")).unwrap();
            (
                status,
                body["error"]["code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        }
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
}

/// A test WebSocket client.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// What [`Client::next_event`] saw.
#[derive(Debug)]
pub enum Event {
    Frame(Value),
    Closed(Option<u16>),
    /// The stream ended or failed without a close frame.
    Ended,
}

impl Client {
    pub async fn next_event(&mut self) -> Event {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("no frame in time");
            return match msg {
                Some(Ok(Message::Text(t))) => Event::Frame(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(frame))) => Event::Closed(frame.map(|f| u16::from(f.code))),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Binary(_))) => panic!("unexpected binary frame"),
                Some(Err(_)) | None => Event::Ended,
            };
        }
    }

    /// The next JSON frame (panics on a close).
    pub async fn recv(&mut self) -> Value {
        match self.next_event().await {
            Event::Frame(v) => v,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Skips frames until one of type `kind`.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// Reads until the close frame and returns its code (skipping frames before it).
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.next_event().await {
                Event::Frame(_) => continue,
                Event::Closed(code) => return code,
                Event::Ended => return None,
            }
        }
    }

    pub async fn send_text(&mut self, raw: impl Into<String>) {
        self.ws.send(Message::text(raw.into())).await.unwrap();
    }

    pub async fn say(&mut self, text: &str, client_id: Option<&str>) {
        let mut frame = serde_json::json!({"type": "send", "text": text});
        if let Some(id) = client_id {
            frame["clientId"] = id.into();
        }
        self.send_text(frame.to_string()).await;
    }
}

/// Polls `cond` every 20 ms until it holds (panics after [`WAIT`]).
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
