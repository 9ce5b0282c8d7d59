//! Test doubles for the client's tests: a fake scheduler (behind the real backend) and a fake
//! session server (a WebSocket endpoint that speaks the room protocol, with a few commands to
//! misbehave on purpose).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use berth_protocol::claims::TicketClaims;
use berth_protocol::cluster::{PlaceRoomRequest, Placement, RoomDirectory, RoomInfo};
use berth_protocol::frames::{ChatMessage, ClientFrame, ServerFrame, User};
use clap::Parser;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "client-test-secret";
pub const SERVER_ID: &str = "s-fake";

fn error(status: StatusCode, code: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": format!("fake {code}")}})),
    )
        .into_response()
}

async fn serve(app: axum::Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr.to_string()
}

// ---------------------------------------------------------------------------------------------
// Fake scheduler

#[derive(Default)]
pub struct SchedulerState {
    pub rooms: HashMap<String, Placement>,
    /// The `ws://` URL every placement points to.
    pub session_url: String,
    /// When set, `POST /v1/rooms` answers this (status, code, Retry-After).
    pub refuse: Option<(StatusCode, &'static str, Option<u64>)>,
}

pub type FakeScheduler = Arc<Mutex<SchedulerState>>;

async fn place(State(s): State<FakeScheduler>, Json(req): Json<PlaceRoomRequest>) -> Response {
    let mut s = s.lock().unwrap();
    if let Some((status, code, retry)) = s.refuse {
        let mut resp = error(status, code);
        if let Some(secs) = retry {
            resp.headers_mut().insert("retry-after", secs.into());
        }
        return resp;
    }
    let room_id = berth_protocol::ids::new_room_id();
    let placement = Placement {
        room_id: room_id.clone(),
        server_id: SERVER_ID.into(),
        url: s.session_url.clone(),
        epoch: 1,
        name: req.name.unwrap_or_else(|| room_id.clone()),
        public: req.public,
    };
    s.rooms.insert(room_id, placement.clone());
    (StatusCode::CREATED, Json(placement)).into_response()
}

async fn lookup(State(s): State<FakeScheduler>, Path(id): Path<String>) -> Response {
    match s.lock().unwrap().rooms.get(&id) {
        Some(p) => Json(p.clone()).into_response(),
        None => error(StatusCode::NOT_FOUND, "room_not_found"),
    }
}

async fn list(State(s): State<FakeScheduler>) -> Json<RoomDirectory> {
    let rooms = s
        .lock()
        .unwrap()
        .rooms
        .values()
        .filter(|p| p.public)
        .map(|p| RoomInfo {
            room_id: p.room_id.clone(),
            name: p.name.clone(),
            public: true,
            server_id: p.server_id.clone(),
            epoch: p.epoch,
            members: 1,
        })
        .collect();
    Json(RoomDirectory { rooms })
}

/// The real backend in front of a fake scheduler whose rooms all live at `session_url`.
pub struct Cluster {
    pub backend_url: String,
    pub scheduler: FakeScheduler,
    pub data_dir: PathBuf,
    shutdown: CancellationToken,
}

impl Cluster {
    pub async fn start(session_url: &str) -> Cluster {
        let scheduler: FakeScheduler = Arc::new(Mutex::new(SchedulerState {
            session_url: session_url.to_owned(),
            ..Default::default()
        }));
        let app = axum::Router::new()
            .route("/v1/rooms", post(place).get(list))
            .route("/v1/rooms/{id}", get(lookup))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(scheduler.clone());
        let scheduler_url = format!("http://{}", serve(app).await);

        let data_dir =
            std::env::temp_dir().join(format!("berth-client-test-{}", rand::random::<u64>()));
        let config = berth_backend::Config::parse_from([
            "berth-backend",
            "--scheduler-url",
            &scheduler_url,
            "--cluster-secret",
            SECRET,
            "--data-dir",
            &data_dir.display().to_string(),
        ]);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend_url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        tokio::spawn(berth_backend::serve(listener, config, shutdown.clone()));
        Cluster {
            backend_url,
            scheduler,
            data_dir,
            shutdown,
        }
    }

    /// The backend's public key, to check tickets with.
    pub fn public_key(&self) -> jsonwebtoken::DecodingKey {
        let path = self.data_dir.join("ticket.pub.pem");
        // The backend writes it as it starts serving; wait for it (bounded).
        for _ in 0..200 {
            if let Ok(pem) = std::fs::read(&path) {
                return jsonwebtoken::DecodingKey::from_ed_pem(&pem).unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("no public key at {}", path.display());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

// ---------------------------------------------------------------------------------------------
// Fake session server

/// How the fake session server checks tokens.
#[derive(Clone)]
pub enum TokenCheck {
    /// The token must be exactly this.
    Exact(String),
    /// A ticket signed by the backend for [`SERVER_ID`].
    Ticket(jsonwebtoken::DecodingKey),
}

pub struct SessionState {
    pub check: TokenCheck,
    /// The room's log, shared by every connection (so a reconnect sees history).
    pub messages: Vec<ChatMessage>,
    /// Connections accepted so far.
    pub connections: usize,
    /// The raw query strings seen, to check how the token was appended.
    pub queries: Vec<String>,
    /// Replay the last message as a live frame right after `welcome` (a duplicate).
    pub replay_on_join: bool,
}

pub type FakeSession = Arc<Mutex<SessionState>>;

/// Starts a fake session server; returns its `ws://…/ws` URL.
pub async fn start_session(check: TokenCheck) -> (String, FakeSession) {
    let state: FakeSession = Arc::new(Mutex::new(SessionState {
        check,
        messages: Vec::new(),
        connections: 0,
        queries: Vec::new(),
        replay_on_join: false,
    }));
    let app = axum::Router::new()
        .route("/ws", get(ws_handler))
        .with_state(state.clone());
    (format!("ws://{}/ws", serve(app).await), state)
}

async fn ws_handler(
    State(state): State<FakeSession>,
    Query(query): Query<HashMap<String, String>>,
    uri: axum::http::Uri,
    ws: WebSocketUpgrade,
) -> Response {
    let check = {
        let mut s = state.lock().unwrap();
        s.queries.push(uri.query().unwrap_or_default().to_owned());
        s.check.clone()
    };
    let token = query.get("token").cloned().unwrap_or_default();
    let you = match check {
        TokenCheck::Exact(expected) if expected == token => User {
            user_id: "u-test".into(),
            username: "test".into(),
        },
        TokenCheck::Ticket(key) => {
            let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
            v.set_audience(&[SERVER_ID]);
            match jsonwebtoken::decode::<TicketClaims>(&token, &key, &v) {
                Ok(t) => User {
                    user_id: t.claims.sub,
                    username: t.claims.name,
                },
                Err(_) => return error(StatusCode::UNAUTHORIZED, "invalid_ticket"),
            }
        }
        _ => {
            let mut resp = error(StatusCode::UNAUTHORIZED, "invalid_ticket");
            resp.headers_mut().insert("retry-after", 3.into());
            return resp;
        }
    };
    ws.on_upgrade(move |socket| connection(socket, state, you))
}

fn text(frame: &ServerFrame) -> Message {
    Message::Text(serde_json::to_string(frame).unwrap().into())
}

async fn connection(mut socket: WebSocket, state: FakeSession, you: User) {
    let (welcome, replay) = {
        let mut s = state.lock().unwrap();
        s.connections += 1;
        let seq = s.messages.last().map_or(0, |m| m.seq);
        let welcome = ServerFrame::Welcome {
            room_id: "r-test".into(),
            you: you.clone(),
            members: vec![you.clone()],
            history: s.messages.clone(),
            seq,
            server_id: SERVER_ID.into(),
            epoch: None,
            reads: Vec::new(),
        };
        let replay = s.messages.last().cloned().filter(|_| s.replay_on_join);
        (welcome, replay)
    };
    if socket.send(text(&welcome)).await.is_err() {
        return;
    }
    if let Some(m) = replay {
        let _ = socket.send(text(&ServerFrame::Message(m))).await;
    }
    while let Some(Ok(msg)) = socket.recv().await {
        let frame = match msg {
            Message::Text(t) => serde_json::from_str::<ClientFrame>(t.as_str()),
            Message::Pong(payload) if &payload[..] == b"are you there" => {
                let _ = socket
                    .send(text(&ServerFrame::Error {
                        code: "pong_seen".into(),
                        message: String::new(),
                        client_id: None,
                    }))
                    .await;
                continue;
            }
            Message::Close(_) => return,
            Message::Binary(_) => {
                let bad = ServerFrame::Error {
                    code: "bad_frame".into(),
                    message: "binary".into(),
                    client_id: None,
                };
                let _ = socket.send(text(&bad)).await;
                continue;
            }
            _ => continue,
        };
        let Ok(ClientFrame::Send {
            text: body,
            client_id,
        }) = frame
        else {
            let bad = ServerFrame::Error {
                code: "bad_frame".into(),
                message: "not a send frame".into(),
                client_id: None,
            };
            let _ = socket.send(text(&bad)).await;
            continue;
        };
        if let Some(code) = body.strip_prefix("!close ") {
            let frame = CloseFrame {
                code: code.parse().unwrap(),
                reason: "told to".into(),
            };
            let _ = socket.send(Message::Close(Some(frame))).await;
            return;
        }
        if body == "!drop" {
            return; // The socket is dropped without a close frame.
        }
        if body == "!ping" {
            let _ = socket
                .send(Message::Ping(b"are you there".to_vec().into()))
                .await;
            continue;
        }
        let message = {
            let mut s = state.lock().unwrap();
            let seq = s.messages.last().map_or(0, |m| m.seq) + 1;
            let m = ChatMessage {
                seq,
                user_id: you.user_id.clone(),
                username: you.username.clone(),
                text: body,
                ts: "2026-01-01T00:00:00Z".into(),
                client_id,
            };
            s.messages.push(m.clone());
            m
        };
        if socket
            .send(text(&ServerFrame::Message(message)))
            .await
            .is_err()
        {
            return;
        }
    }
}
