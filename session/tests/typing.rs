//! Typing and read frames over real sockets, with `serve` in `--standalone` mode (no store:
//! read positions live in the room; the stored side is tested end to end in the testkit).

mod common;

use std::time::{Duration, Instant};

use common::start;
use serde_json::json;

fn typing(active: bool) -> String {
    json!({"type": "typing", "active": active}).to_string()
}

#[tokio::test]
async fn typing_is_relayed_to_others_not_echoed_and_ended_by_timeout_send_and_leave() {
    let server = start(&["--typing-timeout-ms", "400"]).await;
    let (mut alice, _) = server.join("r-t", "alice").await;
    let (mut alice_tab, _) = server.join("r-t", "alice").await;
    let (mut bob, _) = server.join("r-t", "bob").await;
    alice.recv_type("joined").await;

    // Relayed to bob, not to alice's own tabs.
    alice.send_text(typing(true)).await;
    let t = bob.recv_type("typing").await;
    assert_eq!(
        t,
        json!({"type": "typing", "user": {"userId": "u-alice", "username": "alice"}, "active": true})
    );
    let started = Instant::now();
    // Ended by the server once not renewed for the timeout.
    let t = bob.recv_type("typing").await;
    assert_eq!(
        (t["user"]["userId"].as_str(), t["active"].as_bool()),
        (Some("u-alice"), Some(false))
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "ended after the timeout, not before: {:?}",
        started.elapsed()
    );
    // Alice's own tabs saw none of it: their next frame is bob's message.
    bob.say("ping", None).await;
    for tab in [&mut alice, &mut alice_tab] {
        loop {
            let next = tab.recv().await;
            assert_ne!(
                next["type"], "typing",
                "the typist's tabs get no typing frames: {next}"
            );
            if next["type"] == "message" {
                break;
            }
        }
    }
    bob.recv_type("message").await;

    // Renewals are silent; a send ends the state.
    alice.send_text(typing(true)).await;
    assert_eq!(bob.recv_type("typing").await["active"], true);
    alice.send_text(typing(true)).await;
    alice.say("done typing", None).await;
    let next = bob.recv().await;
    assert_eq!(
        (next["type"].as_str(), next["active"].as_bool()),
        (Some("typing"), Some(false)),
        "{next}"
    );
    assert_eq!(bob.recv().await["text"], "done typing");

    // Explicit stop.
    bob.send_text(typing(true)).await;
    assert_eq!(alice.recv_type("typing").await["active"], true);
    bob.send_text(typing(false)).await;
    let t = alice.recv_type("typing").await;
    assert_eq!(
        (t["user"]["userId"].as_str(), t["active"].as_bool()),
        (Some("u-bob"), Some(false))
    );

    // Leaving ends it (before the timeout could).
    bob.send_text(typing(true)).await;
    // (alice's other tab still holds bob's start and stop from above.)
    let t = alice_tab.recv_type("typing").await;
    assert_eq!(t["active"], true);
    let t = alice_tab.recv_type("typing").await;
    assert_eq!(t["active"], false);
    let t = alice_tab.recv_type("typing").await;
    assert_eq!(t["active"], true);
    let left_at = Instant::now();
    bob.ws.close(None).await.unwrap();
    let t = alice_tab.recv().await;
    assert_eq!(
        (t["type"].as_str(), t["active"].as_bool()),
        (Some("typing"), Some(false)),
        "{t}"
    );
    assert!(left_at.elapsed() < Duration::from_millis(400));
    assert_eq!(alice_tab.recv().await["type"], "left");
}

#[tokio::test]
async fn typing_frames_are_rate_limited_like_sends() {
    let server = start(&["--message-rate", "1", "--message-burst", "3"]).await;
    let (mut alice, _) = server.join("r-rl", "alice").await;
    // Over the rate, typing state is dropped without an answer; the send after it is refused
    // with an error naming it, so no error frame came for the typing frames.
    for _ in 0..4 {
        alice.send_text(typing(true)).await;
    }
    alice.say("over the rate", Some("c-1")).await;
    let e = alice.recv_type("error").await;
    assert_eq!(
        (e["code"].as_str(), e["clientId"].as_str()),
        (Some("rate_limited"), Some("c-1"))
    );
}

#[tokio::test]
async fn read_positions_are_relayed_forward_only_and_in_welcome() {
    let server = start(&[]).await;
    let (mut alice, _) = server.join("r-r", "alice").await;
    let (mut bob, _) = server.join("r-r", "bob").await;
    alice.recv_type("joined").await;
    for i in 0..3 {
        alice.say(&format!("m{i}"), None).await;
    }
    for _ in 0..3 {
        bob.recv_type("message").await;
    }
    bob.send_text(json!({"type": "read", "seq": 2}).to_string())
        .await;
    assert_eq!(
        alice.recv_type("read").await,
        json!({"type": "read", "userId": "u-bob", "seq": 2})
    );
    // Backwards: nothing. Beyond the last message: clamped to it.
    bob.send_text(json!({"type": "read", "seq": 1}).to_string())
        .await;
    bob.send_text(json!({"type": "read", "seq": 50}).to_string())
        .await;
    assert_eq!(
        alice.recv_type("read").await,
        json!({"type": "read", "userId": "u-bob", "seq": 3})
    );
    let (_carol, welcome) = server.join("r-r", "carol").await;
    let mut reads: Vec<(String, u64)> = welcome["reads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["userId"].as_str().unwrap().to_owned(),
                r["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    reads.sort();
    // Alice read her own messages by sending them.
    assert_eq!(reads, [("u-alice".to_owned(), 3), ("u-bob".to_owned(), 3)]);
}
