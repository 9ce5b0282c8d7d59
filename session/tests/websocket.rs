//! The WebSocket data plane over real sockets, with `serve` in `--standalone` mode.

mod common;

use common::{Event, Keys, claims, eventually, start};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn two_users_exchange_messages_with_consecutive_seq() {
    let server = start(&[]).await;
    let (mut alice, welcome) = server.join("r-chat", "alice").await;
    assert_eq!(welcome["roomId"], "r-chat");
    assert_eq!(welcome["you"]["userId"], "u-alice");
    assert_eq!(welcome["seq"], 0);
    assert_eq!(welcome["serverId"], "s-test");
    let (mut bob, welcome) = server.join("r-chat", "bob").await;
    assert_eq!(welcome["members"].as_array().unwrap().len(), 2);
    let joined = alice.recv().await;
    assert_eq!(
        (joined["type"].as_str(), joined["user"]["username"].as_str()),
        (Some("joined"), Some("bob"))
    );

    alice.say("hello", Some("c-1")).await;
    for client in [&mut alice, &mut bob] {
        let m = client.recv().await;
        assert_eq!(m["type"], "message", "{m}");
        assert_eq!(
            (m["seq"].as_u64(), m["text"].as_str()),
            (Some(1), Some("hello"))
        );
        assert_eq!(
            (m["userId"].as_str(), m["username"].as_str()),
            (Some("u-alice"), Some("alice"))
        );
        assert_eq!(m["clientId"], "c-1");
        let ts = m["ts"].as_str().unwrap();
        assert!(
            ts.ends_with('Z') && humantime::parse_rfc3339(ts).is_ok(),
            "{ts}"
        );
    }
    bob.say("hi alice", None).await;
    for client in [&mut alice, &mut bob] {
        let m = client.recv().await;
        assert_eq!(
            (m["seq"].as_u64(), m["text"].as_str()),
            (Some(2), Some("hi alice"))
        );
        assert!(m.get("clientId").is_none());
    }
    assert!(server.metric("berth_session_messages_in_total").await >= 2);
    assert_eq!(server.metric("berth_session_connections").await, 2);
}

#[tokio::test]
async fn presence_counts_several_tabs_once() {
    let server = start(&[]).await;
    let (mut alice, _) = server.join("r-p", "alice").await;
    let (mut bob1, _) = server.join("r-p", "bob").await;
    assert_eq!(alice.recv().await["type"], "joined");
    let (bob2, welcome) = server.join("r-p", "bob").await;
    assert_eq!(
        welcome["members"].as_array().unwrap().len(),
        2,
        "bob counts once: {welcome}"
    );

    // No second `joined` for bob's second tab, and bob never sees his own `joined`.
    alice.say("after tabs", None).await;
    assert_eq!(alice.recv().await["type"], "message");
    assert_eq!(bob1.recv().await["type"], "message");

    // Closing one tab is no departure; closing the last one is.
    drop(bob2);
    alice.say("still here?", None).await;
    let m = alice.recv().await;
    assert_eq!(
        (m["type"].as_str(), m["seq"].as_u64()),
        (Some("message"), Some(2)),
        "{m}"
    );
    bob1.ws.close(None).await.unwrap();
    let left = alice.recv().await;
    assert_eq!(
        (left["type"].as_str(), left["user"]["userId"].as_str()),
        (Some("left"), Some("u-bob"))
    );
}

#[tokio::test]
async fn welcome_carries_capped_history() {
    let server = start(&["--history", "3"]).await;
    let (mut alice, _) = server.join("r-h", "alice").await;
    for i in 1..=5 {
        alice.say(&format!("m{i}"), None).await;
        assert_eq!(alice.recv().await["seq"], i);
    }
    let (_late, welcome) = server.join("r-h", "late").await;
    let history: Vec<_> = welcome["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["seq"].as_u64().unwrap(),
                m["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        history,
        [(3, "m3".into()), (4, "m4".into()), (5, "m5".into())]
    );
    assert_eq!(welcome["seq"], 5);

    let server = start(&[]).await;
    let (mut alice, _) = server.join("r-h", "alice").await;
    for i in 1..=5 {
        alice.say(&format!("m{i}"), None).await;
        alice.recv().await;
    }
    let (_late, welcome) = server.join("r-h", "late").await;
    assert_eq!(welcome["history"].as_array().unwrap().len(), 5);
    assert_eq!(welcome["history"][0]["text"], "m1");
}

#[tokio::test]
async fn tickets_are_checked_before_the_upgrade() {
    let server = start(&[]).await;
    let now = berth_protocol::now_secs();

    let mut expired = claims("s-test", "r-t", "alice");
    (expired.iat, expired.exp) = (now - 300, now - 120);
    assert_eq!(
        server.refusal(&server.keys.mint(&expired)).await,
        (401, "invalid_ticket".into())
    );

    let forger = Keys::generate();
    let forged = forger.mint(&claims("s-test", "r-t", "alice"));
    assert_eq!(
        server.refusal(&forged).await,
        (401, "invalid_ticket".into())
    );

    let elsewhere = server.keys.mint(&claims("s-other", "r-t", "alice"));
    assert_eq!(
        server.refusal(&elsewhere).await,
        (421, "wrong_server".into())
    );

    assert_eq!(server.refusal("").await, (401, "invalid_ticket".into()));
    assert_eq!(
        server.refusal("not.a.jwt").await,
        (401, "invalid_ticket".into())
    );
    let bad_room = server.keys.mint(&claims("s-test", "r t/../x", "alice"));
    assert_eq!(
        server.refusal(&bad_room).await,
        (401, "invalid_ticket".into())
    );

    // A plain GET without a ticket is refused with the same body, before any upgrade check.
    let resp = reqwest::get(format!("http://{}/ws", server.addr))
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_ticket");

    // The bearer header works as well as the query.
    let mut client = server
        .connect_bearer(&server.ticket("r-t", "alice"))
        .await
        .unwrap();
    assert_eq!(client.recv().await["type"], "welcome");

    let metrics = server.metrics().await;
    assert!(
        metrics.contains("berth_session_refusals_total{code=\"invalid_ticket\"} 6"),
        "{metrics}"
    );
    assert!(
        metrics.contains("berth_session_refusals_total{code=\"wrong_server\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn room_full_counts_users_and_tabs() {
    let server = start(&["--members-per-room", "2"]).await;
    let (_a, _) = server.join("r-f", "alice").await;
    let (_b, _) = server.join("r-f", "bob").await;
    assert_eq!(
        server.refusal(&server.ticket("r-f", "carol")).await,
        (409, "room_full".into())
    );
    // Present users may open more tabs, up to 8 each.
    let mut tabs = Vec::new();
    for _ in 0..7 {
        tabs.push(server.join("r-f", "alice").await.0);
    }
    assert_eq!(
        server.refusal(&server.ticket("r-f", "alice")).await,
        (409, "room_full".into())
    );
    // Another room is unaffected.
    server.join("r-other", "carol").await;
}

#[tokio::test]
async fn server_full_at_max_connections_and_rooms() {
    let server = start(&["--max-connections", "2", "--rooms", "1"]).await;
    let (_a, _) = server.join("r-1", "alice").await;
    assert_eq!(
        server.refusal(&server.ticket("r-2", "bob")).await,
        (503, "server_full".into())
    );
    let (_b, _) = server.join("r-1", "bob").await;
    assert_eq!(
        server.refusal(&server.ticket("r-1", "carol")).await,
        (503, "server_full".into())
    );
}

#[tokio::test]
async fn text_too_long_keeps_the_connection() {
    let server = start(&["--max-text-bytes", "10"]).await;
    let (mut alice, _) = server.join("r-l", "alice").await;
    alice.say("0123456789A", None).await;
    let e = alice.recv().await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("text_too_long"))
    );
    alice.say("0123456789", None).await;
    let m = alice.recv().await;
    assert_eq!(
        (m["type"].as_str(), m["seq"].as_u64()),
        (Some("message"), Some(1))
    );
}

#[tokio::test]
async fn bad_frames_get_an_error_and_the_connection_stays() {
    let server = start(&[]).await;
    let (mut alice, _) = server.join("r-b", "alice").await;
    let long_id = "x".repeat(65);
    let frames = [
        Message::text("not json"),
        Message::text(r#"{"type":"shout","text":"hi"}"#),
        Message::text(r#"{"text":"no type"}"#),
        Message::binary(vec![1u8, 2, 3]),
        Message::text(format!(
            r#"{{"type":"send","text":"hi","clientId":"{long_id}"}}"#
        )),
    ];
    for frame in frames {
        alice.ws.send(frame).await.unwrap();
        let e = alice.recv().await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("bad_frame")),
            "{e}"
        );
    }
    alice.say("fine", Some(&"y".repeat(64))).await;
    assert_eq!(alice.recv().await["type"], "message");
}

#[tokio::test]
async fn oversize_frame_closes_with_1008() {
    let server = start(&["--max-frame-bytes", "1024"]).await;
    let (mut alice, _) = server.join("r-o", "alice").await;
    // The send may fail if the server closes first; the close code is what matters.
    let _ = alice.ws.send(Message::text("x".repeat(2000))).await;
    assert_eq!(alice.close_code().await, Some(1008));
}

#[tokio::test]
async fn flooding_is_refused_then_closed() {
    let server = start(&["--message-rate", "1", "--message-burst", "2"]).await;
    let (mut alice, _) = server.join("r-r", "alice").await;
    for i in 0..30 {
        if alice
            .ws
            .send(Message::text(format!(r#"{{"type":"send","text":"m{i}"}}"#)))
            .await
            .is_err()
        {
            break;
        }
    }
    let (mut messages, mut limited) = (0, 0);
    let code = loop {
        match alice.next_event().await {
            Event::Frame(v) if v["type"] == "message" => messages += 1,
            Event::Frame(v) if v["code"] == "rate_limited" => limited += 1,
            Event::Frame(v) => panic!("unexpected {v}"),
            Event::Closed(code) => break code,
            Event::Ended => break None,
        }
    };
    // The burst of 2 (plus whatever refilled) got in; the close may overtake their echoes.
    let accepted = server.metric("berth_session_messages_in_total").await;
    assert!((2..=4).contains(&accepted), "accepted {accepted}");
    assert!(messages <= accepted);
    assert_eq!(
        limited, 4,
        "rate_limited errors until twice the burst was refused"
    );
    assert_eq!(code, Some(1008));
    assert!(
        server
            .metrics()
            .await
            .contains("berth_session_refusals_total{code=\"rate_limited\"}")
    );
}

#[tokio::test]
async fn slow_reader_is_dropped_while_the_room_keeps_serving() {
    let server = start(&[
        "--outbound-queue",
        "4",
        "--max-text-bytes",
        "60000",
        "--message-rate",
        "100000",
        "--message-burst",
        "100000",
    ])
    .await;
    let (alice, _) = server.join("r-s", "alice").await;
    let (_bob, _) = server.join("r-s", "bob").await; // never reads again
    let (mut carol, _) = server.join("r-s", "carol").await;

    // Alice's own echoes are drained in the background so that only bob is slow.
    let (mut alice_tx, mut alice_rx) = alice.ws.split();
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = alice_rx.next().await {} });

    // Lockstep: one message, then wait for carol to see it; bob's socket buffers fill, then
    // his queue of 4, and the room drops him. Bounded at 2000 × 60 kB.
    let text = "z".repeat(60_000);
    let frame = serde_json::json!({"type": "send", "text": text}).to_string();
    let mut saw_left = false;
    let mut expected_seq = 1;
    while !saw_left && expected_seq <= 2000 {
        alice_tx.send(Message::text(frame.clone())).await.unwrap();
        loop {
            let v = carol.recv().await;
            match v["type"].as_str() {
                Some("message") => {
                    assert_eq!(v["seq"], expected_seq);
                    expected_seq += 1;
                    break;
                }
                Some("left") => {
                    assert_eq!(v["user"]["userId"], "u-bob");
                    saw_left = true;
                }
                _ => {}
            }
        }
    }
    assert!(saw_left, "bob was never dropped");
    assert!(server.metric("berth_session_slow_consumers_total").await >= 1);

    // The room still serves the others.
    alice_tx
        .send(Message::text(r#"{"type":"send","text":"after"}"#))
        .await
        .unwrap();
    let m = carol.recv_type("message").await;
    assert_eq!(
        (m["text"].as_str(), m["seq"].as_u64()),
        (Some("after"), Some(expected_seq))
    );
    drain.abort();
}

#[tokio::test]
async fn a_panicking_room_closes_with_1011_and_the_server_lives_on() {
    let server = start(&["--debug-panic-text", "boom!"]).await;
    let (mut alice, _) = server.join("r-x", "alice").await;
    let (mut bob, _) = server.join("r-x", "bob").await;
    let (mut carol, _) = server.join("r-y", "carol").await;
    alice.say("boom!", None).await;
    assert_eq!(alice.close_code().await, Some(1011));
    assert_eq!(bob.close_code().await, Some(1011));

    // Another room was not touched; the failed room opens afresh.
    carol.say("still fine", None).await;
    assert_eq!(carol.recv().await["seq"], 1);
    eventually("the failed room to be removed", || async {
        server.metric("berth_session_rooms").await == 1
    })
    .await;
    let (_again, welcome) = server.join("r-x", "alice").await;
    assert_eq!(welcome["seq"], 0);
    assert_eq!(server.metric("berth_session_room_panics_total").await, 1);
}

#[tokio::test]
async fn shutdown_drains_then_closes_with_1012() {
    let mut server = start(&["--drain-timeout-secs", "2"]).await;
    let (mut alice, _) = server.join("r-d", "alice").await;
    server.shutdown.cancel();
    eventually("draining", || async {
        server.metric("berth_session_draining").await == 1
    })
    .await;
    assert_eq!(
        server.refusal(&server.ticket("r-d", "bob")).await,
        (503, "server_draining".into())
    );
    assert_eq!(alice.close_code().await, Some(1012));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_without_rooms_is_quick() {
    let mut server = start(&["--drain-timeout-secs", "600"]).await;
    let (alice, _) = server.join("r-q", "alice").await;
    drop(alice);
    eventually("the room to empty", || async {
        server.metric("berth_session_connections").await == 0
    })
    .await;
    // The empty room is disposed at once by the drain, so this does not wait 600 s.
    server.stop().await.unwrap();
}

#[tokio::test]
async fn silent_connections_are_closed_and_answering_ones_are_pinged() {
    let server = start(&["--ping-interval-ms", "100"]).await;
    // A client that reads answers every ping (tungstenite pongs as it reads); it sends nothing
    // else.
    let answering = server
        .connect(&server.ticket("r-ping", "bob"))
        .await
        .unwrap();
    let pings = tokio::spawn(async move {
        let mut ws = answering.ws;
        let mut pings = 0;
        let until = tokio::time::Instant::now() + std::time::Duration::from_millis(1200);
        while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(until, ws.next()).await {
            if matches!(msg, Message::Ping(_)) {
                pings += 1;
            }
        }
        (pings, ws)
    });
    let silent = server
        .connect(&server.ticket("r-ping", "alice"))
        .await
        .unwrap();
    // The silent client never reads, so it never answers a ping.
    eventually("the silent connection to be closed", || async {
        server.metric("berth_session_connections").await == 1
    })
    .await;
    drop(silent);
    // Pinged every 100 ms for 1.2 s, and still connected.
    let (pings, ws) = pings.await.unwrap();
    assert!(pings >= 5, "only {pings} pings in 1.2 s");
    assert_eq!(server.metric("berth_session_connections").await, 1);
    drop(ws);
}

#[tokio::test]
async fn idle_rooms_are_disposed() {
    let server = start(&["--room-idle-secs", "1"]).await;
    let (alice, _) = server.join("r-i", "alice").await;
    assert_eq!(server.metric("berth_session_rooms").await, 1);
    drop(alice);
    eventually("the idle room to be disposed", || async {
        server.metric("berth_session_rooms").await == 0
    })
    .await;
    let health: serde_json::Value = reqwest::get(format!("http://{}/healthz", server.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (health["status"].as_str(), health["rooms"].as_u64()),
        (Some("ok"), Some(0))
    );
}

/// Broadcasts are written past tungstenite while tungstenite answers pings: both reach the
/// client whole and in order, however they interleave.
#[tokio::test]
async fn pongs_and_broadcasts_interleave_without_breaking_frames() {
    let server = start(&[]).await;
    let (mut alice, _) = server.join("r-pong", "alice").await;
    let (mut bob, _) = server.join("r-pong", "bob").await;
    alice.recv_type("joined").await;
    const ROUNDS: usize = 10;
    for i in 0..ROUNDS {
        bob.ws
            .send(Message::Ping(format!("p{i}").into_bytes().into()))
            .await
            .unwrap();
        alice.say(&format!("m{i}"), None).await;
    }
    let (mut pongs, mut texts) = (Vec::new(), Vec::new());
    while pongs.len() < ROUNDS || texts.len() < ROUNDS {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(10), bob.ws.next())
            .await
            .expect("frames in time")
            .expect("the stream goes on")
            .expect("well-formed frames");
        match msg {
            Message::Pong(p) => pongs.push(String::from_utf8(p.to_vec()).unwrap()),
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "message" {
                    texts.push(v["text"].as_str().unwrap().to_owned());
                }
            }
            _ => {}
        }
    }
    let expected = |prefix: &str| {
        (0..ROUNDS)
            .map(|i| format!("{prefix}{i}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(pongs, expected("p"));
    assert_eq!(texts, expected("m"));
}

/// A client may send its first frame in the same packet as its upgrade request, so that hyper
/// has read it already with the request: the connection still reads it first.
#[tokio::test]
async fn a_frame_sent_with_the_upgrade_request_is_read() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_tungstenite::tungstenite::protocol::Role;

    let server = start(&[]).await;
    let token = server.ticket("r-early", "alice");
    let mut bytes = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    )
    .into_bytes();
    // A masked text frame (RFC 6455 section 5.2), as clients must send.
    let text = r#"{"type":"send","text":"early"}"#;
    let mask = [7u8, 1, 9, 4];
    bytes.extend([0x81, 0x80 | text.len() as u8]);
    bytes.extend(mask);
    bytes.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(&bytes).await.unwrap();

    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.expect("a response"));
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(tcp, Role::Client, None).await;
    let mut types = Vec::new();
    while !types.contains(&"message".to_owned()) {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .expect("frames in time")
            .expect("the stream goes on")
            .expect("well-formed frames");
        if let Message::Text(t) = msg {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "message" {
                assert_eq!(v["text"], "early");
            }
            types.push(v["type"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(types, ["welcome", "message"]);
}
