//! Server-side integrations end to end, with real processes and sockets:
//!
//! - HTTP send (`POST /api/rooms/{roomId}/messages`) reaches WebSocket and SSE members with the
//!   right `seq`, and is refused beyond the limits (text, rate, token, room);
//! - Server-Sent Events: `welcome` first, live messages, heartbeat comments, resume by `since`
//!   and by `Last-Event-ID` on the same server, and on new servers after a drain (the stream
//!   ends with a `close` event 1012) and after a SIGKILL; forged tickets and send tokens used
//!   as tickets are refused (401);
//! - webhooks: signed (checked here with our own HMAC), retried after a 500 with the same
//!   delivery id, and a full queue counted while the room goes on unaffected;
//! - the stock bot answers a known and an unknown code, with the backend, the scheduler, its
//!   spawned session servers and the bot all as separate processes wired as `scripts/launch.sh`
//!   wires them.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use berth::RoomConnection;
use berth::protocol::api::{CreateRoomRequest, RoomTicket};
use berth::protocol::frames::ServerFrame;
use berth_protocol::webhook::{WebhookEvent, hex};
use berth_testkit::{Cluster, ClusterOptions, bin_path, eventually, eventually_some, temp_dir};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

const WAIT: Duration = Duration::from_secs(20);

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

// --- an SSE reader -------------------------------------------------------------------------

/// One event of a stream (`comment` for a `:` line).
#[derive(Debug, Clone, Default)]
struct Event {
    event: String,
    id: Option<String>,
    data: String,
    comment: bool,
}

impl Event {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap()
    }
}

struct Sse {
    response: reqwest::Response,
    buffer: String,
}

impl Sse {
    /// Opens `GET sseUrl?token=…` (with `since`, or a `Last-Event-ID`), expecting 200.
    async fn open(ticket: &RoomTicket, since: Option<u64>, last_event_id: Option<u64>) -> Sse {
        let response = open_sse(ticket, since, last_event_id).await;
        assert_eq!(response.status(), 200, "SSE refused");
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Sse {
            response,
            buffer: String::new(),
        }
    }

    /// The next event (comments included); `None` when the stream ended or `timeout` passed.
    async fn next_any(&mut self, timeout: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = Event::default();
                for line in block.lines() {
                    if line.starts_with(':') {
                        event.comment = true;
                    } else if let Some((field, value)) = line.split_once(": ") {
                        match field {
                            "event" => event.event = value.to_owned(),
                            "id" => event.id = Some(value.to_owned()),
                            "data" => event.data.push_str(value),
                            _ => {}
                        }
                    }
                }
                if event.comment || !event.event.is_empty() {
                    return Some(event);
                }
                continue; // `retry:` only
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .ok()?
                .ok()??;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next event that is not a comment.
    async fn next(&mut self) -> Event {
        loop {
            let event = self.next_any(WAIT).await.expect("an SSE event");
            if !event.comment {
                return event;
            }
        }
    }

    /// Events up to and including the message with `seq`; their seqs.
    async fn messages_until(&mut self, seq: u64) -> Vec<u64> {
        let mut seen = Vec::new();
        loop {
            let event = self.next().await;
            if event.event == "message" {
                let s = event.json()["seq"].as_u64().unwrap();
                assert_eq!(event.id.as_deref(), Some(s.to_string().as_str()));
                seen.push(s);
                if s >= seq {
                    return seen;
                }
            }
        }
    }
}

async fn open_sse(
    ticket: &RoomTicket,
    since: Option<u64>,
    last_event_id: Option<u64>,
) -> reqwest::Response {
    assert!(ticket.sse_url.starts_with("http://") && ticket.sse_url.ends_with("/sse"));
    let mut url = format!("{}?token={}", ticket.sse_url, ticket.token);
    if let Some(since) = since {
        url.push_str(&format!("&since={since}"));
    }
    let mut request = reqwest::Client::new().get(url);
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id.to_string());
    }
    request.send().await.unwrap()
}

fn seqs(welcome: &serde_json::Value) -> Vec<u64> {
    welcome["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

// --- HTTP send ------------------------------------------------------------------------------

async fn post(
    cluster: &Cluster,
    token: &str,
    room_id: &str,
    text: &str,
    client_id: Option<&str>,
) -> reqwest::Response {
    let mut body = serde_json::json!({ "text": text });
    if let Some(id) = client_id {
        body["clientId"] = id.into();
    }
    reqwest::Client::new()
        .post(format!(
            "{}/api/rooms/{room_id}/messages",
            cluster.backend_url
        ))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn error_code(response: reqwest::Response) -> String {
    let body: serde_json::Value = response.json().await.unwrap();
    body["error"]["code"].as_str().unwrap().to_owned()
}

/// A WebSocket member's next `message` frame.
async fn ws_message(conn: &mut RoomConnection) -> berth::protocol::frames::ChatMessage {
    loop {
        match conn.recv_timeout(WAIT).await.unwrap() {
            berth::RoomEvent::Frame(ServerFrame::Message(m)) => return m,
            berth::RoomEvent::Frame(_) => continue,
            other => panic!("connection ended: {other:?}"),
        }
    }
}

/// A cluster whose only session server is started outside the scheduler with `extra` flags.
async fn cluster_with_session(extra: &[&str]) -> (Cluster, tokio::process::Child) {
    let cluster = Cluster::start(ClusterOptions {
        max_servers: 0,
        ..Default::default()
    })
    .await;
    let session = cluster.start_outside_session(extra);
    eventually(WAIT, || async { !cluster.servers().await.is_empty() }).await;
    (cluster, session)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_send_reaches_websocket_and_sse_members_and_obeys_the_limits() {
    let (cluster, _session) = cluster_with_session(&[
        "--message-rate",
        "2",
        "--message-burst",
        "6",
        "--max-text-bytes",
        "64",
        "--sse-heartbeat-ms",
        "300",
    ])
    .await;
    let backend = cluster.backend();
    let alice = cluster.login("alice").await;
    let bob = cluster.login("bob").await;
    let carol = cluster.login("carol").await;
    let room = backend
        .create_room(&alice, &CreateRoomRequest::default())
        .await
        .unwrap();
    assert!(
        room.sse_url.ends_with("/sse"),
        "create answers carry sseUrl"
    );

    // Bob over a WebSocket, Carol over SSE; Alice only sends, over HTTP.
    let (mut ws, _) =
        RoomConnection::connect_ticket(&backend.lookup_room(&bob, &room.room_id).await.unwrap())
            .await
            .unwrap();
    let carol_ticket = backend.lookup_room(&carol, &room.room_id).await.unwrap();
    assert_eq!(
        carol_ticket.sse_url, room.sse_url,
        "lookup answers carry sseUrl"
    );
    let mut sse = Sse::open(&carol_ticket, None, None).await;
    let welcome = sse.next().await;
    assert_eq!(welcome.event, "welcome", "welcome comes first");
    assert_eq!(welcome.json()["you"]["username"], "carol");
    assert!(welcome.id.is_none());

    for i in 1..=3u64 {
        let answer = post(
            &cluster,
            &alice.token,
            &room.room_id,
            &format!("hello {i}"),
            Some(&format!("c-{i}")),
        )
        .await;
        assert_eq!(answer.status(), 201);
        let stored: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(stored["type"], "message");
        assert_eq!(stored["seq"], i);
        assert_eq!(stored["clientId"], format!("c-{i}"));
        assert_eq!(stored["username"], "alice");
        let m = ws_message(&mut ws).await;
        assert_eq!(
            (m.seq, m.text.as_str(), m.user_id.as_str()),
            (i, format!("hello {i}").as_str(), alice.user_id.as_str())
        );
        let event = loop {
            let e = sse.next().await;
            if e.event == "message" {
                break e;
            }
        };
        assert_eq!(event.id.as_deref(), Some(i.to_string().as_str()));
        assert_eq!(event.json()["text"], format!("hello {i}"));
    }
    // A WebSocket send and an HTTP send share one numbering.
    ws.send("from bob", None).await.unwrap();
    assert_eq!(sse.messages_until(4).await, vec![4]);

    // Heartbeats: comment lines while nothing happens.
    let mut comments = 0;
    let started = tokio::time::Instant::now();
    while comments < 2 && started.elapsed() < Duration::from_secs(5) {
        if let Some(e) = sse.next_any(Duration::from_secs(2)).await
            && e.comment
        {
            comments += 1;
        }
    }
    assert_eq!(
        comments, 2,
        "two heartbeat comments within 5 s at a 300 ms period"
    );

    // Limits, with the codes a WebSocket send gets.
    let long = post(&cluster, &alice.token, &room.room_id, &"x".repeat(65), None).await;
    assert_eq!(long.status(), 400);
    assert_eq!(error_code(long).await, "text_too_long");
    let nobody = post(&cluster, "not-a-token", &room.room_id, "hi", None).await;
    assert_eq!(nobody.status(), 401);
    let unknown = post(&cluster, &alice.token, "r-doesnotexist", "hi", None).await;
    assert_eq!(unknown.status(), 404);
    let mut limited = None;
    for i in 0..20 {
        let answer = post(
            &cluster,
            &alice.token,
            &room.room_id,
            &format!("flood {i}"),
            None,
        )
        .await;
        if answer.status() == 429 {
            assert!(answer.headers().contains_key("retry-after"));
            limited = Some(error_code(answer).await);
            break;
        }
        assert_eq!(answer.status(), 201);
    }
    assert_eq!(
        limited.as_deref(),
        Some("rate_limited"),
        "a burst of 6 at 2/s is refused"
    );

    // Resume on the same server: by `since`, and by `Last-Event-ID` (which wins over `since`).
    let ticket = backend.lookup_room(&carol, &room.room_id).await.unwrap();
    let mut by_since = Sse::open(&ticket, Some(2), None).await;
    let w = by_since.next().await.json();
    let resumed = seqs(&w);
    assert_eq!(resumed.first(), Some(&3));
    assert_eq!(resumed.last().copied(), w["seq"].as_u64());
    let ticket = backend.lookup_room(&carol, &room.room_id).await.unwrap();
    let mut by_id = Sse::open(&ticket, Some(1), Some(3)).await;
    let w = by_id.next().await.json();
    assert_eq!(seqs(&w).first(), Some(&4));
    assert!(seqs(&w).windows(2).all(|p| p[1] == p[0] + 1), "no gap");

    // Refusals before the stream starts.
    let mut forged = ticket.clone();
    forged.token = forge_ticket(&ticket);
    assert_eq!(open_sse(&forged, None, None).await.status(), 401);
    let mut garbage = ticket.clone();
    garbage.token = "garbage".into();
    assert_eq!(open_sse(&garbage, None, None).await.status(), 401);
    drop((by_since, by_id, sse));
    cluster.stop().await;
}

/// A ticket with the same claims signed by a key that is not the backend's.
fn forge_ticket(ticket: &RoomTicket) -> String {
    let dir = temp_dir("forged");
    let keys = berth_testkit::write_ticket_keys(&dir);
    let claims = berth_protocol::claims::TicketClaims {
        sub: "u-mallory".into(),
        name: "mallory".into(),
        room: ticket.room_id.clone(),
        aud: ticket.server_id.clone(),
        epoch: 1,
        iat: berth_protocol::now_secs(),
        exp: berth_protocol::now_secs() + 60,
        jti: berth_protocol::claims::new_ticket_id(),
    };
    let token = berth_testkit::mint_ticket(&keys, &claims);
    let _ = std::fs::remove_dir_all(dir);
    token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_and_send_tokens_never_stand_in_for_each_other() {
    let (cluster, _session) = cluster_with_session(&[]).await;
    let backend = cluster.backend();
    let alice = cluster.login("alice").await;
    let room = backend
        .create_room(&alice, &CreateRoomRequest::default())
        .await
        .unwrap();
    let base = room.sse_url.trim_end_matches("/sse").to_owned();
    let http = reqwest::Client::new();
    // A ticket at the internal send endpoint.
    let answer = http
        .post(format!("{base}/internal/rooms/{}/messages", room.room_id))
        .bearer_auth(&room.token)
        .json(&serde_json::json!({"text": "sneaky"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);
    // A send token at the ticket path, minted with the real key.
    let keys = cluster.ticket_keys();
    let send_token = {
        // The placement's epoch, read from the genuine ticket.
        let public = std::fs::read(&keys.public).unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
        validation.validate_aud = false;
        let ticket = jsonwebtoken::decode::<berth_protocol::claims::TicketClaims>(
            &room.token,
            &jsonwebtoken::DecodingKey::from_ed_pem(&public).unwrap(),
            &validation,
        )
        .unwrap()
        .claims;
        let claims = berth_protocol::claims::SendClaims {
            sub: alice.user_id.clone(),
            name: "alice".into(),
            room: room.room_id.clone(),
            aud: room.server_id.clone(),
            epoch: ticket.epoch,
            purpose: "send".into(),
            iat: berth_protocol::now_secs(),
            exp: berth_protocol::now_secs() + 30,
        };
        let pem = std::fs::read(&keys.private).unwrap();
        let key = jsonwebtoken::EncodingKey::from_ed_pem(&pem).unwrap();
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
            &claims,
            &key,
        )
        .unwrap()
    };
    let mut as_ticket = room.clone();
    as_ticket.token = send_token.clone();
    assert_eq!(open_sse(&as_ticket, None, None).await.status(), 401);
    // The genuine send token works where it belongs, and only for its room.
    let ok = http
        .post(format!("{base}/internal/rooms/{}/messages", room.room_id))
        .bearer_auth(&send_token)
        .json(&serde_json::json!({"text": "fine"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 201);
    let other_room = http
        .post(format!("{base}/internal/rooms/r-other/messages"))
        .bearer_auth(&send_token)
        .json(&serde_json::json!({"text": "elsewhere"}))
        .send()
        .await
        .unwrap();
    assert_eq!(other_room.status(), 401);
    cluster.stop().await;
}

// --- SSE across servers ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_ends_on_drain_and_resumes_on_new_servers_after_a_drain_and_a_sigkill() {
    let cluster = Cluster::start(ClusterOptions {
        scheduler_args: args(&[
            "--heartbeat-interval-ms",
            "200",
            "--heartbeat-timeout-ms",
            "1500",
        ]),
        ..Default::default()
    })
    .await;
    let backend = cluster.backend();
    let alice = cluster.login("alice").await;
    let room = backend
        .create_room(&alice, &CreateRoomRequest::default())
        .await
        .unwrap();
    let first_server = room.server_id.clone();
    let mut sse = Sse::open(&room, None, None).await;
    assert_eq!(sse.next().await.event, "welcome");
    for i in 1..=3 {
        assert_eq!(
            post(
                &cluster,
                &alice.token,
                &room.room_id,
                &format!("m{i}"),
                None
            )
            .await
            .status(),
            201
        );
    }
    assert_eq!(sse.messages_until(3).await, vec![1, 2, 3]);

    // A drain hands the room over: the stream says 1012 and ends.
    let drained = cluster
        .scheduler_post(&format!("/v1/servers/{first_server}/drain"))
        .await;
    assert!(drained.status().is_success(), "drain: {}", drained.status());
    let close = loop {
        let e = sse.next().await;
        if e.event == "close" {
            break e;
        }
    };
    assert_eq!(close.json()["code"], 1012);
    assert!(
        sse.next_any(Duration::from_secs(5)).await.is_none(),
        "the stream ends"
    );

    // Look the room up again (as the SDK does) and resume by `Last-Event-ID` on the new owner.
    let moved: RoomTicket = eventually_some(WAIT, || async {
        let t = backend.lookup_room(&alice, &room.room_id).await.ok()?;
        (t.server_id != first_server).then_some(t)
    })
    .await;
    let mut sse = Sse::open(&moved, None, Some(2)).await;
    let w = sse.next().await;
    assert_eq!(w.event, "welcome");
    assert_eq!(seqs(&w.json()), vec![3]);
    assert_eq!(
        post(&cluster, &alice.token, &room.room_id, "m4", None)
            .await
            .status(),
        201
    );
    assert_eq!(sse.messages_until(4).await, vec![4]);

    // SIGKILL of the new owner: the stream breaks; the room is placed on a third server, and
    // a resume by `since` there has exactly what came after.
    let second_server = moved.server_id.clone();
    cluster.kill_server(&second_server).await;
    assert!(
        sse.next_any(Duration::from_secs(10)).await.is_none(),
        "the stream breaks"
    );
    let third: RoomTicket = eventually_some(WAIT, || async {
        let t = backend.lookup_room(&alice, &room.room_id).await.ok()?;
        (t.server_id != second_server && t.server_id != first_server).then_some(t)
    })
    .await;
    let mut sse = Sse::open(&third, Some(1), None).await;
    let w = sse.next().await.json();
    assert_eq!(seqs(&w), vec![2, 3, 4]);
    assert_eq!(
        post(&cluster, &alice.token, &room.room_id, "m5", None)
            .await
            .status(),
        201
    );
    assert_eq!(sse.messages_until(5).await, vec![5]);
    cluster.stop().await;
}

// --- webhooks ---------------------------------------------------------------------------------

/// What a webhook receiver got: (headers, body) in arrival order.
type Received = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// A webhook receiver on a free port: answers 500 to the first attempt of every delivery and
/// 200 afterwards (or never answers, with `hang`).
async fn receiver(hang: bool) -> (String, Received) {
    let received: Received = Arc::default();
    let attempts: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let received = received.clone();
            move |headers: HeaderMap, body: Bytes| {
                let (received, attempts) = (received.clone(), attempts.clone());
                async move {
                    let id = headers["x-berth-delivery"].to_str().unwrap().to_owned();
                    received.lock().unwrap().push((headers, body));
                    if hang {
                        std::future::pending::<()>().await;
                    }
                    let mut attempts = attempts.lock().unwrap();
                    let n = attempts.entry(id).or_default();
                    *n += 1;
                    if *n == 1 {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::OK
                    }
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

fn hmac_hex(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(body);
    hex(&mac.finalize().into_bytes())
}

async fn metric(cluster: &Cluster, name: &str) -> u64 {
    // A session server's `/metrics` is on its operator listener.
    let server = cluster.servers().await.into_iter().next().unwrap();
    let base = cluster.admin_url(&server.id).await;
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_and_retried_after_a_500() {
    let (url, received) = receiver(false).await;
    let (cluster, _session) = cluster_with_session(&[
        "--webhook-url",
        &url,
        "--webhook-secret",
        "hook-secret",
        "--webhook-backoff-ms",
        "50",
    ])
    .await;
    let backend = cluster.backend();
    let alice = cluster.login("alice").await;
    let bob = cluster.login("bob").await;
    let room = backend
        .create_room(&alice, &CreateRoomRequest::default())
        .await
        .unwrap();
    let (ws, _) = RoomConnection::connect_ticket(&room).await.unwrap();
    let (bob_ws, _) =
        RoomConnection::connect_ticket(&backend.lookup_room(&bob, &room.room_id).await.unwrap())
            .await
            .unwrap();
    assert_eq!(
        post(&cluster, &bob.token, &room.room_id, "hooked", Some("h-1"))
            .await
            .status(),
        201
    );
    bob_ws.close().await.unwrap();

    // Each event arrives twice (500, then 200), with one delivery id and a valid signature.
    let events: Vec<WebhookEvent> = eventually_some(WAIT, || {
        let received = received.clone();
        async move {
            let received = received.lock().unwrap().clone();
            let mut by_id: HashMap<String, Vec<WebhookEvent>> = HashMap::new();
            for (headers, body) in &received {
                let signature = headers["x-berth-signature"].to_str().unwrap();
                assert_eq!(
                    signature,
                    format!("sha256={}", hmac_hex(b"hook-secret", body))
                );
                assert_ne!(signature, format!("sha256={}", hmac_hex(b"other", body)));
                let event: WebhookEvent = serde_json::from_slice(body).unwrap();
                assert_eq!(headers["x-berth-delivery"].to_str().unwrap(), event.id);
                by_id.entry(event.id.clone()).or_default().push(event);
            }
            let kinds: Vec<&str> = by_id.values().map(|v| v[0].kind.as_str()).collect();
            let done = ["joined", "message", "left"]
                .iter()
                .all(|k| kinds.contains(k))
                && by_id.values().all(|v| v.len() >= 2);
            done.then(|| by_id.into_values().map(|mut v| v.remove(0)).collect())
        }
    })
    .await;
    let message = events.iter().find(|e| e.kind == "message").unwrap();
    assert_eq!(message.room_id, room.room_id);
    assert_eq!(message.data["type"], "message");
    assert_eq!(message.data["text"], "hooked");
    assert_eq!(message.data["clientId"], "h-1");
    assert_eq!(message.data["seq"], 1);
    let left = events.iter().find(|e| e.kind == "left").unwrap();
    assert_eq!(left.data["user"]["username"], "bob");
    assert!(metric(&cluster, "berth_session_webhook_retries_total").await >= 3);
    assert!(metric(&cluster, "berth_session_webhook_delivered_total").await >= 3);
    drop(ws);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_webhook_queue_is_counted_and_never_slows_the_room() {
    let (url, received) = receiver(true).await;
    let (cluster, _session) = cluster_with_session(&[
        "--webhook-url",
        &url,
        "--webhook-secret",
        "s",
        "--webhook-queue",
        "1",
        "--webhook-concurrency",
        "1",
        "--webhook-timeout-ms",
        "30000",
    ])
    .await;
    let backend = cluster.backend();
    let alice = cluster.login("alice").await;
    let room = backend
        .create_room(&alice, &CreateRoomRequest::default())
        .await
        .unwrap();
    let (mut ws, _) = RoomConnection::connect_ticket(&room).await.unwrap();
    let started = tokio::time::Instant::now();
    for i in 1..=20u64 {
        ws.send(&format!("m{i}"), None).await.unwrap();
        assert_eq!(ws_message(&mut ws).await.seq, i);
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the room kept its pace"
    );
    eventually(WAIT, || async {
        metric(&cluster, "berth_session_webhook_dropped_total").await >= 15
    })
    .await;
    // The receiver holds one delivery, the queue one event; the rest were dropped.
    assert!(received.lock().unwrap().len() <= 2);
    cluster.stop().await;
}

// --- the stock bot, as launch.sh runs it ---------------------------------------------------------

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stock_bot_answers_known_and_unknown_codes_end_to_end() {
    let dir = temp_dir("bot");
    let (backend_port, scheduler_port, bot_port) = (free_port(), free_port(), free_port());
    let backend_url = format!("http://127.0.0.1:{backend_port}");
    let scheduler_url = format!("http://127.0.0.1:{scheduler_port}");
    let env = [
        ("BERTH_DATA_DIR", dir.to_str().unwrap().to_owned()),
        ("BERTH_CLUSTER_SECRET", "bot-test-secret".to_owned()),
        ("BERTH_BACKEND_LISTEN", format!("127.0.0.1:{backend_port}")),
        (
            "BERTH_SCHEDULER_LISTEN",
            format!("127.0.0.1:{scheduler_port}"),
        ),
        ("BERTH_SCHEDULER_URL", scheduler_url.clone()),
        ("BERTH_BACKEND_URL", backend_url.clone()),
        ("BERTH_BOT_LISTEN", format!("127.0.0.1:{bot_port}")),
        (
            "BERTH_BOT_WEBHOOK_URL",
            format!("http://127.0.0.1:{bot_port}/webhook"),
        ),
        ("BERTH_BOT_WEBHOOK_SECRET", "bot-hook-secret".to_owned()),
        // An operator's own webhook that goes nowhere must not take the bot's away.
        (
            "BERTH_WEBHOOK_URL",
            "http://127.0.0.1:9/elsewhere".to_owned(),
        ),
        ("BERTH_WEBHOOK_SECRET", "operator-secret".to_owned()),
        ("BERTH_WARM_SERVERS", "0".to_owned()),
    ];
    let spawn = |bin: &str, extra: &[&std::ffi::OsStr]| {
        let mut cmd = tokio::process::Command::new(bin_path(bin));
        cmd.args(extra)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd.spawn().unwrap()
    };
    let http = reqwest::Client::new();
    let healthy = |url: String| {
        let http = http.clone();
        async move { matches!(http.get(url).send().await, Ok(r) if r.status().is_success()) }
    };
    // launch.sh's order: the backend (it makes the ticket keys), the scheduler, the bot.
    let backend_proc = spawn("testkit-backend", &[]);
    eventually(WAIT, || healthy(format!("{backend_url}/"))).await;
    let session_bin = bin_path("testkit-session");
    let scheduler_proc = spawn(
        "testkit-scheduler",
        &["--session-bin".as_ref(), session_bin.as_os_str()],
    );
    eventually(WAIT, || healthy(format!("{scheduler_url}/healthz"))).await;
    let bot_proc = spawn("testkit-bot", &[]);
    eventually(WAIT, || {
        healthy(format!("http://127.0.0.1:{bot_port}/healthz"))
    })
    .await;
    let credentials = dir.join("stockbot.credentials");
    // The bot owns the account `stockbot` and alone knows its password.
    {
        assert!(credentials.exists());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&credentials)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the bot's password is private");
    }

    let impostor = http
        .post(format!("{backend_url}/api/login"))
        .json(&serde_json::json!({"username": "stockbot"}))
        .send()
        .await
        .unwrap();
    assert_eq!(impostor.status(), 401, "nobody else posts as stockbot");
    let backend = berth::Backend::new(&backend_url);
    let alice = backend.login("alice").await.unwrap();
    let room = backend
        .create_room(&alice, &CreateRoomRequest::default())
        .await
        .unwrap();
    let (mut ws, _) = RoomConnection::connect_ticket(&room).await.unwrap();
    let bot_says = async |ws: &mut RoomConnection, ask: &str| -> String {
        ws.send(ask, None).await.unwrap();
        loop {
            let m = ws_message(ws).await;
            if m.username == "stockbot" {
                return m.text;
            }
        }
    };
    let started = tokio::time::Instant::now();
    assert_eq!(
        bot_says(&mut ws, "/stock=aapl.us").await,
        "AAPL.US quote is $93.42 per share"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered within seconds"
    );
    let unknown = bot_says(&mut ws, "/stock=NOSUCH.US").await;
    assert!(
        unknown.contains("NOSUCH.US") && !unknown.contains('$'),
        "{unknown}"
    );
    assert!(bot_says(&mut ws, "/help").await.contains("/stock=CODE"));
    // Plain talk gets no answer, and the bot's own answers none either: after a last command,
    // the next bot message is that command's answer.
    ws.send("just chatting", None).await.unwrap();
    assert!(
        bot_says(&mut ws, "/stock=msft.us")
            .await
            .starts_with("MSFT.US quote is $")
    );

    for mut child in [bot_proc, scheduler_proc, backend_proc] {
        berth_testkit::signal(child.id().unwrap(), "TERM");
        let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
    }
    let _ = std::fs::remove_dir_all(dir);
}
