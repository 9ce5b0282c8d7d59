//! The backend's public API over real sockets, against a small fake scheduler (an HTTP test
//! double of the `/v1` API in `berth_protocol::cluster`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use berth_backend::Config;
use berth_protocol::api::{LoginResponse, RoomList, RoomTicket};
use berth_protocol::claims::{TicketClaims, USER_TOKEN_AUDIENCE, UserClaims};
use berth_protocol::cluster::{PlaceRoomRequest, Placement, RoomDirectory, RoomInfo};
use berth_protocol::{ErrorBody, ErrorCode};
use clap::Parser;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "test-cluster-secret";

// ---------------------------------------------------------------------------------------------
// Fake scheduler

#[derive(Default)]
struct FakeScheduler {
    rooms: HashMap<String, Placement>,
    /// Every place request, to check what the backend sent.
    placed: Vec<PlaceRoomRequest>,
    /// When set, `POST /v1/rooms` answers this error (status, code, Retry-After).
    refuse: Option<(StatusCode, &'static str, Option<u64>)>,
    next_epoch: u64,
    lookups: usize,
}

type Fake = Arc<Mutex<FakeScheduler>>;

fn authorized(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {SECRET}"))
}

fn error(status: StatusCode, code: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": format!("fake {code}")}})),
    )
        .into_response()
}

async fn fake_place(
    State(fake): State<Fake>,
    headers: HeaderMap,
    Json(req): Json<PlaceRoomRequest>,
) -> Response {
    if !authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let mut fake = fake.lock().unwrap();
    fake.placed.push(req.clone());
    if let Some((status, code, retry_after)) = fake.refuse {
        let mut resp = error(status, code);
        if let Some(secs) = retry_after {
            resp.headers_mut().insert("retry-after", secs.into());
        }
        return resp;
    }
    fake.next_epoch += 1;
    let room_id = berth_protocol::ids::new_room_id();
    let placement = Placement {
        room_id: room_id.clone(),
        server_id: "s-fake1".into(),
        url: "ws://127.0.0.1:9/ws".into(),
        epoch: fake.next_epoch,
        name: req.name.unwrap_or_else(|| room_id.clone()),
        public: req.public,
    };
    fake.rooms.insert(room_id, placement.clone());
    (StatusCode::CREATED, Json(placement)).into_response()
}

async fn fake_lookup(
    State(fake): State<Fake>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    if !authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let mut fake = fake.lock().unwrap();
    fake.lookups += 1;
    match fake.rooms.get(&id) {
        Some(p) => Json(p.clone()).into_response(),
        None => error(StatusCode::NOT_FOUND, "room_not_found"),
    }
}

async fn fake_list(
    State(fake): State<Fake>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let only_public = q.get("public").map(String::as_str) == Some("true");
    let rooms = fake
        .lock()
        .unwrap()
        .rooms
        .values()
        .filter(|p| p.public || !only_public)
        .map(|p| RoomInfo {
            room_id: p.room_id.clone(),
            name: p.name.clone(),
            public: p.public,
            server_id: p.server_id.clone(),
            epoch: p.epoch,
            members: 2,
        })
        .collect();
    Json(RoomDirectory { rooms }).into_response()
}

async fn start_fake_scheduler() -> (String, Fake) {
    let fake: Fake = Arc::default();
    let app = axum::Router::new()
        .route("/v1/rooms", post(fake_place).get(fake_list))
        .route("/v1/rooms/{id}", get(fake_lookup))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(fake.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), fake)
}

/// A port nothing listens on.
async fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

// ---------------------------------------------------------------------------------------------
// Backend under test

struct Backend {
    url: String,
    data_dir: PathBuf,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), berth_backend::Error>>,
    http: reqwest::Client,
}

impl Backend {
    async fn start(scheduler_url: &str, data_dir: &Path, extra: &[&str]) -> Backend {
        let mut args = vec![
            "berth-backend".to_owned(),
            "--scheduler-url".into(),
            scheduler_url.into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
        ];
        if !extra.contains(&"--cluster-secret") {
            args.extend(["--cluster-secret".into(), SECRET.into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let config = Config::parse_from(args);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(berth_backend::serve(listener, config, shutdown.clone()));
        Backend {
            url,
            data_dir: data_dir.to_owned(),
            shutdown,
            task,
            http: reqwest::Client::new(),
        }
    }

    /// Stops the backend and removes its data dir.
    async fn stop(self) {
        let dir = self.data_dir.clone();
        self.stop_keeping_data().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    async fn stop_keeping_data(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }

    async fn login(&self, username: &str) -> LoginResponse {
        let resp = self
            .http
            .post(format!("{}/api/login", self.url))
            .json(&json!({"username": username}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.post(format!("{}{path}", self.url))
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(format!("{}{path}", self.url))
    }

    fn public_key(&self) -> DecodingKey {
        let pem = std::fs::read(self.data_dir.join("ticket.pub.pem")).unwrap();
        DecodingKey::from_ed_pem(&pem).unwrap()
    }
}

fn temp_dir() -> PathBuf {
    std::env::temp_dir().join(format!("berth-backend-test-{}", rand::random::<u64>()))
}

async fn error_of(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: ErrorBody = resp.json().await.expect("error body");
    assert!(!body.error.message.is_empty());
    (status, body.error.code)
}

async fn setup() -> (Backend, Fake) {
    let (scheduler_url, fake) = start_fake_scheduler().await;
    (Backend::start(&scheduler_url, &temp_dir(), &[]).await, fake)
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn login_mints_a_user_token_for_a_stable_user_id() {
    let (backend, _) = setup().await;
    let a = backend.login("alice").await;
    assert_eq!(a.user_id, "g-alice");
    assert!(a.guest && a.expires_at.is_some());
    assert_eq!(a.username, "alice");
    let b = backend.login("alice").await;
    assert_eq!(b.user_id, a.user_id, "same name, same user");

    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&[USER_TOKEN_AUDIENCE]);
    let claims = jsonwebtoken::decode::<UserClaims>(&a.token, &backend.public_key(), &validation)
        .unwrap()
        .claims;
    assert_eq!(claims.sub, "g-alice");
    assert_eq!(claims.name, "alice");
    assert_eq!(claims.exp - claims.iat, 86_400);

    for bad in [
        json!({"username": ""}),
        json!({"username": "a b"}),
        json!({"username": "x".repeat(33)}),
    ] {
        let resp = backend.post("/api/login").json(&bad).send().await.unwrap();
        assert_eq!(error_of(resp).await, (400, "invalid_username".into()));
    }
    let resp = backend
        .post("/api/login")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await, (400, "invalid_request".into()));
    backend.stop().await;
}

#[tokio::test]
async fn room_calls_need_a_valid_user_token() {
    let (backend, _) = setup().await;
    let resp = backend.post("/api/rooms").send().await.unwrap();
    assert_eq!(error_of(resp).await, (401, "unauthorized".into()));
    let resp = backend
        .post("/api/rooms")
        .bearer_auth("not.a.jwt")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await, (401, "unauthorized".into()));
    let resp = backend.get("/api/rooms/r-whatever").send().await.unwrap();
    assert_eq!(error_of(resp).await, (401, "unauthorized".into()));

    // Signed with the right key, but expired, or with a ticket's audience.
    let key =
        EncodingKey::from_ed_pem(&std::fs::read(backend.data_dir.join("ticket.key.pem")).unwrap())
            .unwrap();
    let now = berth_protocol::now_secs();
    let expired = UserClaims {
        sub: "g-a".into(),
        name: "a".into(),
        aud: USER_TOKEN_AUDIENCE.into(),
        iat: now - 7200,
        exp: now - 3600,
        guest: true,
        token_gen: 0,
    };
    let wrong_aud = UserClaims {
        aud: "s-1".into(),
        iat: now,
        exp: now + 3600,
        ..expired.clone()
    };
    for claims in [expired, wrong_aud] {
        let token = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &key).unwrap();
        let resp = backend
            .post("/api/rooms")
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(error_of(resp).await, (401, "unauthorized".into()));
    }

    // A ticket is not a user token either.
    let user = backend.login("bob").await;
    let ticket: RoomTicket = backend
        .post("/api/rooms")
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let resp = backend
        .post("/api/rooms")
        .bearer_auth(&ticket.token)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await, (401, "unauthorized".into()));

    // A token of another backend key is refused.
    let other = Backend::start(&closed_port_url().await, &temp_dir(), &[]).await;
    let foreign = other.login("bob").await;
    let resp = backend
        .post("/api/rooms")
        .bearer_auth(&foreign.token)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await, (401, "unauthorized".into()));
    other.stop().await;
    backend.stop().await;
}

#[tokio::test]
async fn create_room_answers_a_ticket_for_the_placement() {
    let (backend, fake) = setup().await;
    let user = backend.login("carol").await;
    let resp = backend
        .post("/api/rooms")
        .bearer_auth(&user.token)
        .json(&json!({"name": "Carol's room", "public": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let ticket: RoomTicket = resp.json().await.unwrap();
    assert_eq!(ticket.name, "Carol's room");
    assert_eq!(ticket.server_id, "s-fake1");
    assert_eq!(ticket.url, "ws://127.0.0.1:9/ws");

    let placement = fake.lock().unwrap().rooms[&ticket.room_id].clone();
    let placed = fake.lock().unwrap().placed.last().cloned().unwrap();
    assert_eq!(placed.created_by.as_deref(), Some("g-carol"));
    assert_eq!(placed.name.as_deref(), Some("Carol's room"));
    assert!(placed.public);

    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&["s-fake1"]);
    let claims =
        jsonwebtoken::decode::<TicketClaims>(&ticket.token, &backend.public_key(), &validation)
            .unwrap()
            .claims;
    assert_eq!(claims.room, ticket.room_id);
    assert_eq!(claims.aud, "s-fake1");
    assert_eq!(claims.epoch, placement.epoch);
    assert_eq!(
        (claims.sub.as_str(), claims.name.as_str()),
        ("g-carol", "carol")
    );
    assert_eq!(claims.exp - claims.iat, 60);
    let expires = humantime::parse_rfc3339(&ticket.expires_at).unwrap();
    assert_eq!(
        expires
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        claims.exp
    );
    // The ticket does not pass as a ticket for another server.
    validation.set_audience(&["s-other"]);
    assert!(
        jsonwebtoken::decode::<TicketClaims>(&ticket.token, &backend.public_key(), &validation)
            .is_err()
    );

    // No body, an empty object, and a blank name are all defaults.
    for body in [None, Some("{}"), Some(r#"{"name": "  "}"#)] {
        let mut req = backend.post("/api/rooms").bearer_auth(&user.token);
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 201, "body {body:?}");
        let t: RoomTicket = resp.json().await.unwrap();
        assert_eq!(t.name, t.room_id);
        let placed = fake.lock().unwrap().placed.last().cloned().unwrap();
        assert_eq!((placed.name, placed.public), (None, false));
    }

    let placed_before = fake.lock().unwrap().placed.len();
    for bad in [
        json!({"name": "x".repeat(65)}),
        json!({"name": "a\u{7}b"}),
        json!({"public": "yes"}),
    ] {
        let resp = backend
            .post("/api/rooms")
            .bearer_auth(&user.token)
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(error_of(resp).await, (400, "invalid_request".into()));
    }
    // 64 characters (not bytes) is fine.
    let resp = backend
        .post("/api/rooms")
        .bearer_auth(&user.token)
        .json(&json!({"name": "é".repeat(64)}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(
        fake.lock().unwrap().placed.len(),
        placed_before + 1,
        "refused bodies never reach the scheduler"
    );

    let resp = backend
        .post("/api/rooms")
        .bearer_auth(&user.token)
        .body(vec![b' '; 20_000])
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await, (413, "payload_too_large".into()));
    backend.stop().await;
}

#[tokio::test]
async fn lookup_answers_a_fresh_ticket_or_404() {
    let (backend, fake) = setup().await;
    let alice = backend.login("alice").await;
    let created: RoomTicket = backend
        .post("/api/rooms")
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let bob = backend.login("bob").await;
    let resp = backend
        .get(&format!("/api/rooms/{}", created.room_id))
        .bearer_auth(&bob.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let found: RoomTicket = resp.json().await.unwrap();
    assert_eq!(found.room_id, created.room_id);
    assert_eq!(found.url, created.url);
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&[&found.server_id]);
    let claims =
        jsonwebtoken::decode::<TicketClaims>(&found.token, &backend.public_key(), &validation)
            .unwrap()
            .claims;
    assert_eq!(
        (claims.sub.as_str(), claims.room.as_str()),
        ("g-bob", created.room_id.as_str())
    );

    let resp = backend
        .get("/api/rooms/r-doesnotexist")
        .bearer_auth(&bob.token)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await, (404, "room_not_found".into()));
    let lookups_seen = fake.lock().unwrap().lookups;
    for bad in [
        "/api/rooms/bad%20id",
        "/api/rooms/%3Cscript%3E",
        &format!("/api/rooms/{}", "r".repeat(65)),
    ] {
        let resp = backend
            .get(bad)
            .bearer_auth(&bob.token)
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_of(resp).await,
            (404, "room_not_found".into()),
            "{bad}"
        );
    }
    assert_eq!(
        fake.lock().unwrap().lookups,
        lookups_seen,
        "invalid ids never reach the scheduler"
    );
    backend.stop().await;
}

#[tokio::test]
async fn list_shows_public_rooms_only_without_a_token() {
    let (backend, _) = setup().await;
    let user = backend.login("dave").await;
    let public: RoomTicket = backend
        .post("/api/rooms")
        .bearer_auth(&user.token)
        .json(&json!({"name": "lobby", "public": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let _private: RoomTicket = backend
        .post("/api/rooms")
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let resp = backend.get("/api/rooms").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let list: Value = resp.json().await.unwrap();
    assert_eq!(
        list,
        json!({"rooms": [{"roomId": public.room_id, "name": "lobby", "members": 2}]})
    );
    let _: RoomList = serde_json::from_value(list).unwrap();
    backend.stop().await;
}

#[tokio::test]
async fn scheduler_down_means_503() {
    let backend = Backend::start(&closed_port_url().await, &temp_dir(), &[]).await;
    // Login needs no scheduler.
    let user = backend.login("erin").await;
    let resp = backend
        .post("/api/rooms")
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await, (503, "scheduler_unavailable".into()));
    let resp = backend
        .get("/api/rooms/r-1")
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await, (503, "scheduler_unavailable".into()));
    let resp = backend.get("/api/rooms").send().await.unwrap();
    assert_eq!(error_of(resp).await, (503, "scheduler_unavailable".into()));
    let resp = backend.get("/healthz").send().await.unwrap();
    assert_eq!(error_of(resp).await, (503, "scheduler_unavailable".into()));
    backend.stop().await;

    let (backend, _) = setup().await;
    assert_eq!(backend.get("/healthz").send().await.unwrap().status(), 200);
    backend.stop().await;
}

#[tokio::test]
async fn scheduler_refusals_pass_through_with_retry_after() {
    let (backend, fake) = setup().await;
    let user = backend.login("frank").await;
    for (status, code, retry) in [
        (StatusCode::SERVICE_UNAVAILABLE, "no_capacity", Some(7)),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited", Some(30)),
    ] {
        fake.lock().unwrap().refuse = Some((status, code, retry));
        let resp = backend
            .post("/api/rooms")
            .bearer_auth(&user.token)
            .send()
            .await
            .unwrap();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(error_of(resp).await, (status.as_u16(), code.into()));
        assert_eq!(retry_after, retry.map(|s| s.to_string()));
    }
    // A scheduler failure is not passed through verbatim.
    fake.lock().unwrap().refuse = Some((StatusCode::INTERNAL_SERVER_ERROR, "internal", None));
    let resp = backend
        .post("/api/rooms")
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: ErrorBody = resp.json().await.unwrap();
    assert_eq!(
        (status, body.error.code.as_str()),
        (502, ErrorCode::Internal.as_str())
    );
    assert!(!body.error.message.contains("fake"));
    backend.stop().await;
}

#[tokio::test]
async fn wrong_cluster_secret_is_a_server_fault_not_a_401() {
    let (scheduler_url, _) = start_fake_scheduler().await;
    let backend = Backend::start(&scheduler_url, &temp_dir(), &["--cluster-secret", "wrong"]).await;
    let user = backend.login("gina").await;
    let resp = backend
        .post("/api/rooms")
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await, (500, "internal".into()));
    backend.stop().await;
}

#[tokio::test]
async fn web_client_is_served_with_content_types() {
    let (backend, _) = setup().await;
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("../client/web");
    for (path, file, content_type) in [
        ("/", "index.html", "text/html; charset=utf-8"),
        ("/berth.js", "berth.js", "text/javascript; charset=utf-8"),
        ("/app.js", "app.js", "text/javascript; charset=utf-8"),
        ("/style.css", "style.css", "text/css; charset=utf-8"),
        (
            "/conversations.js",
            "conversations.js",
            "text/javascript; charset=utf-8",
        ),
        ("/operator", "operator.html", "text/html; charset=utf-8"),
        (
            "/operator.js",
            "operator.js",
            "text/javascript; charset=utf-8",
        ),
    ] {
        let resp = backend.get(path).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.headers()["content-type"], content_type);
        assert_eq!(resp.headers()["cache-control"], "no-cache");
        assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
        assert_eq!(resp.headers()["referrer-policy"], "no-referrer");
        assert_eq!(resp.headers()["x-frame-options"], "DENY");
        // A strict policy: no inline code, never framed; SSE and HTTP send still reach the
        // session servers.
        let csp = resp.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe"),
            "{path}: {csp}"
        );
        assert!(csp.contains("default-src 'none'"), "{path}: {csp}");
        assert!(
            csp.contains("connect-src 'self' ws: wss: http: https:"),
            "{path}: {csp}"
        );
        assert_eq!(
            resp.text().await.unwrap(),
            std::fs::read_to_string(web.join(file)).unwrap(),
            "{path}"
        );
    }
    let resp = backend.get("/nope.js").send().await.unwrap();
    assert_eq!(error_of(resp).await, (404, "not_found".into()));
    let resp = backend.get("/api/nope").send().await.unwrap();
    assert_eq!(error_of(resp).await, (404, "not_found".into()));
    let resp = backend
        .http
        .delete(format!("{}/api/rooms", backend.url))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(resp).await, (405, "method_not_allowed".into()));
    backend.stop().await;
}

#[tokio::test]
async fn web_dir_serves_from_disk() {
    let (scheduler_url, _) = start_fake_scheduler().await;
    let web = temp_dir();
    std::fs::create_dir_all(&web).unwrap();
    std::fs::write(web.join("index.html"), "<p>dev copy</p>").unwrap();
    let backend = Backend::start(
        &scheduler_url,
        &temp_dir(),
        &["--web-dir", &web.display().to_string()],
    )
    .await;
    let resp = backend.get("/").send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(resp.text().await.unwrap(), "<p>dev copy</p>");
    std::fs::write(web.join("index.html"), "<p>edited</p>").unwrap();
    assert_eq!(
        backend.get("/").send().await.unwrap().text().await.unwrap(),
        "<p>edited</p>"
    );
    let resp = backend.get("/app.js").send().await.unwrap();
    assert_eq!(error_of(resp).await, (404, "not_found".into()));
    backend.stop().await;
    std::fs::remove_dir_all(web).unwrap();
}

#[tokio::test]
async fn keys_are_generated_on_first_start_and_reused() {
    let (scheduler_url, _) = start_fake_scheduler().await;
    let dir = temp_dir();
    let first = Backend::start(&scheduler_url, &dir, &[]).await;
    let token = first.login("hal").await.token;
    first.stop_keeping_data().await;
    let private = std::fs::read_to_string(dir.join("ticket.key.pem")).unwrap();
    let public = std::fs::read_to_string(dir.join("ticket.pub.pem")).unwrap();
    assert!(private.contains("PRIVATE KEY") && public.contains("PUBLIC KEY"));

    std::fs::remove_file(dir.join("ticket.pub.pem")).unwrap();
    let second = Backend::start(&scheduler_url, &dir, &[]).await;
    // Same key: the first run's token still works, and the public key came back unchanged.
    let resp = second
        .post("/api/rooms")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(
        std::fs::read_to_string(dir.join("ticket.key.pem")).unwrap(),
        private
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("ticket.pub.pem")).unwrap(),
        public
    );
    second.stop().await;

    // A custom key path gets its public key beside it.
    let custom = dir.join("keys/signing.key.pem");
    let third = Backend::start(
        &scheduler_url,
        &dir,
        &["--ticket-private-key", &custom.display().to_string()],
    )
    .await;
    third.login("ivy").await;
    assert!(dir.join("keys/signing.pub.pem").exists());
    third.stop().await;
}
