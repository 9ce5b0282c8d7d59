//! The web client where WebSockets are blocked: a page whose `window.WebSocket` throws (a script
//! injected before the app loads) chats over Server-Sent Events and HTTP send (the SDK's `auto`
//! transport), with a WebSocket member on the other side, and resumes on the room's new server
//! after a drain ends its stream, with no message lost or shown twice.
//!
//! Needs Debian's `chromium` and `chromium-driver` (see [`berth_testkit::browser`]): without
//! them the test reports a skip, which fails under `CI=true`.

use std::time::Duration;

use berth::RoomConnection;
use berth::protocol::frames::ServerFrame;
use berth_testkit::browser::{Browser, ChromeDriver, ENTER, WAIT, Window};
use berth_testkit::{Cluster, ClusterOptions, eventually_some};
use serde_json::json;

const ACTIVE: &str = "[data-testid=room]:not([hidden])";
/// The hand-over includes the scheduler spawning a server for the room.
const MOVE_WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_without_websockets_chats_over_sse_and_resumes_after_a_drain() {
    let Some(driver) = ChromeDriver::start().await else {
        return;
    };
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let base = cluster.backend_url.clone();

    let ivy = driver.session("ivy-no-websockets", Window::Desktop).await;
    ivy.before_each_page(
        "window.WebSocket = function WebSocket() { throw new Error('WebSockets are blocked here'); };",
    )
    .await;
    ivy.goto(&base).await;
    ivy.wait_for(
        "the login form",
        "return !document.getElementById('login-view').hidden",
    )
    .await;
    assert_eq!(
        ivy.js(
            "try { new WebSocket('ws://127.0.0.1:9/'); return 'open'; } catch (e) { return 'blocked'; }",
            vec![]
        )
        .await,
        "blocked",
        "the page really has no WebSockets"
    );
    ivy.type_into("#username-input", "ivy").await;
    ivy.click("#login-button").await;
    ivy.wait_for(
        "the lobby after login",
        "return !document.getElementById('app-view').hidden && !document.getElementById('lobby').hidden",
    )
    .await;
    ivy.type_into("#room-name-input", "No sockets").await;
    ivy.click("#create-room-button").await;
    let room_id = ivy
        .wait_for(
            "the room to be open over SSE",
            &format!(
                "const r = document.querySelector('{ACTIVE}'); \
                 return r && r.dataset.state === 'open' && r.dataset.transport === 'sse' && r.dataset.roomId"
            ),
        )
        .await
        .as_str()
        .unwrap()
        .to_owned();

    // Ivy sends over HTTP; a WebSocket member hears it, and is heard.
    let composer = format!("{ACTIVE} [data-testid=composer-input]");
    ivy.type_into(&composer, &format!("hello over SSE{ENTER}"))
        .await;
    wait_messages(&ivy, &room_id, &[("ivy", "hello over SSE")]).await;
    let backend = cluster.backend();
    let kai = cluster.login("kai").await;
    let ticket = backend.lookup_room(&kai, &room_id).await.unwrap();
    let first_server = ticket.server_id.clone();
    let (mut ws, welcome) = RoomConnection::connect_ticket(&ticket).await.unwrap();
    assert_eq!(welcome.history.last().unwrap().text, "hello over SSE");
    ws.send("hi ivy, from a WebSocket", None).await.unwrap();
    wait_messages(
        &ivy,
        &room_id,
        &[
            ("ivy", "hello over SSE"),
            ("kai", "hi ivy, from a WebSocket"),
        ],
    )
    .await;
    ivy.type_into(&composer, &format!("and back{ENTER}")).await;
    let echoed = loop {
        match ws.recv_timeout(WAIT).await.unwrap() {
            berth::RoomEvent::Frame(ServerFrame::Message(m)) if m.username == "ivy" => break m,
            berth::RoomEvent::Frame(_) => continue,
            other => panic!("kai's connection ended: {other:?}"),
        }
    };
    assert_eq!((echoed.seq, echoed.text.as_str()), (3, "and back"));

    // A drain hands the room over: the page's stream ends (1012), the SDK looks the room up
    // again and resumes over SSE on the new server.
    let drained = cluster
        .scheduler_post(&format!("/v1/servers/{first_server}/drain"))
        .await;
    assert!(drained.status().is_success());
    let moved = eventually_some(MOVE_WAIT, || async {
        let t = backend.lookup_room(&kai, &room_id).await.ok()?;
        (t.server_id != first_server).then_some(t)
    })
    .await;
    ivy.wait_for_within(
        "the page to be open again on the new server",
        &format!(
            "const r = document.querySelector('{ACTIVE}'); return r.dataset.state === 'open' \
             && r.querySelector('[data-testid=room-server]').textContent === '{}'",
            moved.server_id
        ),
        MOVE_WAIT,
    )
    .await;
    // Kai sends over HTTP this time; ivy sends from the page: each message shows once.
    let sent = reqwest::Client::new()
        .post(format!("{base}/api/rooms/{room_id}/messages"))
        .bearer_auth(&kai.token)
        .json(&json!({ "text": "after the move" }))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 201);
    ivy.type_into(&composer, &format!("still here{ENTER}"))
        .await;
    wait_messages(
        &ivy,
        &room_id,
        &[
            ("ivy", "hello over SSE"),
            ("kai", "hi ivy, from a WebSocket"),
            ("ivy", "and back"),
            ("kai", "after the move"),
            ("ivy", "still here"),
        ],
    )
    .await;
    assert_eq!(
        ivy.js(
            &format!("return document.querySelector('{ACTIVE}').dataset.transport"),
            vec![]
        )
        .await,
        "sse"
    );
    ivy.save_screenshot("chat-over-sse").await;
    ivy.assert_no_uncaught_errors("ivy").await;
    ivy.close().await;
    driver.stop().await;
    cluster.stop().await;
}

/// Waits until the room shows exactly these confirmed messages (author, text), in order, each
/// once, and none still pending.
async fn wait_messages(page: &Browser, room_id: &str, expected: &[(&str, &str)]) {
    let want = json!(
        expected
            .iter()
            .map(|(a, t)| json!([a, t]))
            .collect::<Vec<_>>()
    )
    .to_string();
    let script = format!(
        "const got = [...document.querySelectorAll(`[data-testid=room][data-room-id='{room_id}'] [data-testid=message]`)]
           .map(m => [m.querySelector('[data-testid=message-author]').textContent,
                      m.querySelector('[data-testid=message-text]').textContent, m.dataset.pending || null]);
         return JSON.stringify(got.map(([a, t, p]) => p ? [a, t, p] : [a, t])) === arguments[0];"
    );
    page.wait_for_args(
        &format!("the messages {want}"),
        &script,
        vec![json!(want)],
        WAIT,
    )
    .await;
}
