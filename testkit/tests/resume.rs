//! Resume with `since`, checked by a raw WebSocket client (tokio-tungstenite straight, none of
//! the client library's de-duplication): across several reconnects under live traffic, on the
//! same server and after a drain moved the room, the reader sees every message exactly once, in
//! order, and ends with exactly the stored history.

use std::time::Duration;

use berth::protocol::api::CreateRoomRequest;
use berth::protocol::frames::{SINCE_PARAM, ServerFrame};
use berth::{Backend, ReconnectPolicy, Room, RoomUpdate, Session};
use berth_testkit::{Cluster, ClusterOptions, eventually_some};
use futures_util::StreamExt as _;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const WAIT: Duration = Duration::from_secs(30);
/// Live messages the reader takes in before each reconnect.
const PER_ROUND: usize = 6;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_since_never_repeats_or_skips_a_message() {
    // A drain timeout far beyond the test's bounds: the room moves by hand-off or not at all.
    let cluster = Cluster::start(ClusterOptions {
        scheduler_args: vec!["--drain-timeout-secs".into(), "120".into()],
        ..Default::default()
    })
    .await;
    let backend = cluster.backend();
    let alice = cluster.login("alice").await;
    let reader = cluster.login("reader").await;
    let room = backend
        .create_room(&alice, &CreateRoomRequest::default())
        .await
        .unwrap();
    let (stop_tx, stop_rx) = watch::channel(false);
    let sender = spawn_sender(
        backend.clone(),
        alice.clone(),
        room.room_id.clone(),
        stop_rx,
    );

    // (seq, text) as the raw reader received them, welcome histories and live frames alike.
    let mut seen: Vec<(u64, String)> = Vec::new();
    let mut servers = Vec::new();
    for round in 0..6 {
        let ticket = backend.lookup_room(&reader, &room.room_id).await.unwrap();
        servers.push(ticket.server_id.clone());
        let mut ws = connect(&ticket.url, &ticket.token, last_seq(&seen)).await;
        take_welcome(&mut ws, &mut seen).await;
        for _ in 0..PER_ROUND {
            match next_message(&mut ws).await {
                Some(m) => record(&mut seen, m, "a live message"),
                None => panic!("round {round}: closed while the room is live"),
            }
        }
        match round {
            // The server drains: the room is handed over; the reader reads on until told to go
            // (1012), then resumes on the new owner.
            3 => {
                let res = cluster
                    .scheduler_post(&format!("/v1/servers/{}/drain", ticket.server_id))
                    .await;
                assert_eq!(res.status(), 202);
                while let Some(m) = next_message(&mut ws).await {
                    record(&mut seen, m, "a live message during the drain");
                }
                eventually_some(WAIT, || async {
                    let t = backend.lookup_room(&reader, &room.room_id).await.ok()?;
                    (t.server_id != ticket.server_id).then_some(())
                })
                .await;
            }
            // A clean close.
            r if r % 2 == 0 => ws.close(None).await.unwrap(),
            // The connection just drops (no close frame), as on a network failure.
            _ => drop(ws),
        }
    }
    assert!(
        servers.windows(2).any(|w| w[0] != w[1]),
        "the room moved to another server: {servers:?}"
    );

    // Traffic stops; one last resume brings the reader up to the room's final seq.
    stop_tx.send(true).unwrap();
    let sent = tokio::time::timeout(WAIT, sender)
        .await
        .expect("the sender stopped")
        .unwrap();
    let ticket = backend.lookup_room(&reader, &room.room_id).await.unwrap();
    let mut ws = connect(&ticket.url, &ticket.token, last_seq(&seen)).await;
    take_welcome(&mut ws, &mut seen).await;
    ws.close(None).await.unwrap();

    let stored = stored_history(&backend, &alice, &room.room_id).await;
    assert!(
        stored.len() >= 6 * PER_ROUND,
        "traffic flowed: {} stored, {sent} sent",
        stored.len()
    );
    let expected: Vec<u64> = (1..=stored.len() as u64).collect();
    assert_eq!(
        seen.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        expected,
        "the reader saw 1, 2, 3… once each"
    );
    assert_eq!(seen, stored, "the reader's record is the stored history");
    cluster.stop().await;
}

/// Opens the room's WebSocket with `since` (when given) beside the ticket.
async fn connect(url: &str, ticket: &str, since: Option<u64>) -> Socket {
    let mut url = reqwest::Url::parse(url).unwrap();
    url.query_pairs_mut().append_pair("token", ticket);
    if let Some(since) = since {
        url.query_pairs_mut()
            .append_pair(SINCE_PARAM, &since.to_string());
    }
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url.as_str()))
        .await
        .expect("connect within the bound")
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    ws
}

fn last_seq(seen: &[(u64, String)]) -> Option<u64> {
    Some(seen.last().map_or(0, |(seq, _)| *seq))
}

/// Appends `m`, failing unless it is exactly the next message.
fn record(seen: &mut Vec<(u64, String)>, m: (u64, String), what: &str) {
    let want = last_seq(seen).unwrap() + 1;
    assert_eq!(
        m.0,
        want,
        "{what}: got seq {} ({:?}) after {}: a repeat or a gap",
        m.0,
        m.1,
        want - 1
    );
    seen.push(m);
}

/// Reads the first frame, a `welcome`: its history must be exactly the messages after the last
/// one seen, up to its `seq`.
async fn take_welcome(ws: &mut Socket, seen: &mut Vec<(u64, String)>) {
    let frame = next_frame(ws).await.expect("a welcome, not a close");
    assert_eq!(frame["type"], "welcome", "the first frame: {frame}");
    let seq = frame["seq"].as_u64().unwrap();
    let before = last_seq(seen).unwrap();
    assert!(seq >= before, "the room's seq {seq} is behind {before}");
    let history = frame["history"].as_array().unwrap();
    assert_eq!(
        history.len() as u64,
        seq - before,
        "the welcome holds exactly the messages after since={before}, up to {seq}: {history:?}"
    );
    for m in history {
        record(seen, message(m), "the welcome's history");
    }
}

/// The next `message` frame, or `None` once the server closed the connection with 1012.
async fn next_message(ws: &mut Socket) -> Option<(u64, String)> {
    loop {
        let frame = next_frame(ws).await?;
        match frame["type"].as_str() {
            Some("message") => return Some(message(&frame)),
            Some("welcome") => panic!("a second welcome: {frame}"),
            _ => continue,
        }
    }
}

/// The next JSON frame, or `None` after a close with code 1012 (the only close expected here).
async fn next_frame(ws: &mut Socket) -> Option<Value> {
    loop {
        let next = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame within the bound");
        match next {
            Some(Ok(Message::Text(text))) => return Some(serde_json::from_str(&text).unwrap()),
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map(|f| u16::from(f.code));
                assert_eq!(code, Some(1012), "closed with {code:?}");
                return None;
            }
            Some(Ok(_)) => continue,
            other => panic!("the connection failed: {other:?}"),
        }
    }
}

fn message(frame: &Value) -> (u64, String) {
    (
        frame["seq"].as_u64().unwrap(),
        frame["text"].as_str().unwrap().to_owned(),
    )
}

/// The room's whole stored history over HTTP, oldest first.
async fn stored_history(backend: &Backend, session: &Session, room_id: &str) -> Vec<(u64, String)> {
    let mut all = Vec::new();
    let mut before = None;
    loop {
        let page = backend
            .messages(session, room_id, before, Some(200))
            .await
            .unwrap();
        let first = page.messages.first().map(|m| m.seq);
        all.splice(0..0, page.messages.into_iter().map(|m| (m.seq, m.text)));
        if !page.has_more {
            return all;
        }
        before = first;
    }
}

/// Sends a message every 60 ms (under the rate limit) through the client library, which
/// reconnects by itself, until `stop`; returns how many it sent. Sends that fail while the room
/// moves are simply not stored: the reader's record is compared with the store. It ends with a
/// message whose echo it waits for, so that nothing it sent is still in flight.
fn spawn_sender(
    backend: Backend,
    session: Session,
    room_id: String,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<u32> {
    tokio::spawn(async move {
        let (mut room, _) = Room::join(backend, session, &room_id).await.unwrap();
        room.set_policy(ReconnectPolicy {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            max_attempts: None,
        });
        let mut sent = 0u32;
        let mut tick = tokio::time::interval(Duration::from_millis(60));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    sent += 1;
                    let _ = room.send(&format!("m{sent}"), None).await;
                }
                update = room.next() => { update.unwrap(); }
                _ = stop.changed() => break,
            }
        }
        let settled = async {
            room.send("last", Some("last")).await.unwrap();
            loop {
                match room.next().await.unwrap() {
                    RoomUpdate::Frame(ServerFrame::Message(m))
                        if m.client_id.as_deref() == Some("last") =>
                    {
                        return;
                    }
                    RoomUpdate::Frame(_) => {}
                    other => panic!("the last send: {other:?}"),
                }
            }
        };
        tokio::time::timeout(WAIT, settled)
            .await
            .expect("the last send's echo");
        let _ = room.close().await;
        sent
    })
}
