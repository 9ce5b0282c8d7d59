//! Conversations in the web client, in a real browser (see `browser.rs` for the setup): a
//! direct message arriving in a room that is not open shows up in the sidebar with an unread
//! badge without a reload; opening it reads it (the sender gets `read`); the typing line shows
//! who is typing and clears when they send; typing in the page reaches the other person; "seen
//! by" appears under one's own message once the other reads it.

use std::time::Duration;

use berth::protocol::frames::ServerFrame;
use berth::{RoomConnection, RoomEvent};
use berth_testkit::browser::{ChromeDriver, Window};
use berth_testkit::{Cluster, ClusterOptions};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);
const PASSWORD: &str = "correct horse battery";

/// The next frame of `conn` that `pick` accepts, within [`WAIT`].
async fn frame_where(
    conn: &mut RoomConnection,
    pick: impl Fn(&ServerFrame) -> bool,
) -> ServerFrame {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match conn.recv_timeout(left).await.expect("a frame in time") {
            RoomEvent::Frame(f) if pick(&f) => return f,
            RoomEvent::Frame(_) => {}
            RoomEvent::Closed { code, reason } => panic!("closed {code:?}: {reason}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dm_badge_and_the_typing_line_in_a_browser() {
    let Some(driver) = ChromeDriver::start().await else {
        return;
    };
    let cluster = Cluster::start(ClusterOptions {
        backend_args: ["--argon2-memory-kib", "64", "--argon2-iterations", "1"]
            .map(String::from)
            .to_vec(),
        ..ClusterOptions::default()
    })
    .await;
    let backend = cluster.backend();
    backend.register("alice", PASSWORD).await.unwrap();
    let bob = backend.register("bob", PASSWORD).await.unwrap();

    // Alice signs in and opens a room of her own: the DM will arrive elsewhere.
    let page = driver.session("alice", Window::Desktop).await;
    page.goto(&cluster.backend_url).await;
    page.wait_for(
        "the sign-in screen",
        "return !document.getElementById('login-view').hidden",
    )
    .await;
    page.type_into("#username-input", "alice").await;
    page.type_into("#password-input", PASSWORD).await;
    page.click("#login-button").await;
    page.wait_for(
        "the lobby",
        "return !document.getElementById('app-view').hidden && !document.getElementById('lobby').hidden",
    )
    .await;
    page.type_into("#room-name-input", "workroom").await;
    page.click("#create-room-button").await;
    page.wait_for(
        "the new room open",
        "return document.querySelector('[data-testid=room]:not([hidden]) [data-testid=room-status]')\
         ?.closest('[data-testid=room]').dataset.state === 'open'",
    )
    .await;

    // Bob starts a DM and writes: alice's sidebar shows it with a badge, no reload.
    let dm = backend.open_dm(&bob, "alice").await.unwrap();
    let (mut bob_conn, _) = RoomConnection::connect_ticket(&dm.ticket).await.unwrap();
    bob_conn.send("hi alice", None).await.unwrap();
    let badge = page
        .wait_for(
            "a DM with an unread badge",
            "const a = document.querySelector('[data-testid=dm-item]');\
             const b = a?.querySelector('[data-testid=my-room-unread]');\
             return a && b && !b.hidden && a.querySelector('.nav-name').textContent + '|' + b.textContent",
        )
        .await;
    assert_eq!(badge, json!("bob|1"));
    page.save_screenshot("conversations-dm-badge").await;

    // Opening it reads it: bob learns alice's position.
    page.click("[data-testid=dm-item]").await;
    let read = frame_where(&mut bob_conn, |f| matches!(f, ServerFrame::Read { .. })).await;
    assert!(matches!(read, ServerFrame::Read { seq: 1, .. }), "{read:?}");
    page.wait_for(
        "the badge gone once the DM is open",
        "const b = document.querySelector('[data-testid=dm-item] [data-testid=my-room-unread]');\
         return b && b.hidden",
    )
    .await;

    // Bob types: the typing line names him; his message clears it.
    const ACTIVE: &str = "[data-testid=room]:not([hidden])";
    let title = page
        .wait_for(
            "the DM open",
            &format!(
                "return document.querySelector('{ACTIVE} [data-testid=room-title]')?.textContent"
            ),
        )
        .await;
    assert_eq!(title, json!("bob"), "a DM is named after the other person");
    bob_conn.send_typing(true).await.unwrap();
    let line = page
        .wait_for(
            "the typing line",
            &format!(
                "const t = document.querySelector('{ACTIVE} [data-testid=typing-line]');\
                 return t && t.textContent"
            ),
        )
        .await;
    assert_eq!(line, json!("bob is typing…"));
    page.save_screenshot("conversations-typing").await;
    bob_conn.send("are you there?", None).await.unwrap();
    page.wait_for(
        "the typing line cleared by the message",
        &format!(
            "const t = document.querySelector('{ACTIVE} [data-testid=typing-line]');\
             return t && t.textContent === '' && document.querySelector('{ACTIVE} [data-testid=message-list]')\
             .textContent.includes('are you there?')"
        ),
    )
    .await;

    // Alice types in the page: bob sees her typing; she sends; bob reads; "Seen by bob".
    page.type_into(&format!("{ACTIVE} [data-testid=composer-input]"), "yes")
        .await;
    let typing = frame_where(&mut bob_conn, |f| matches!(f, ServerFrame::Typing { .. })).await;
    assert!(
        matches!(&typing, ServerFrame::Typing { user, active: true } if user.username == "alice"),
        "{typing:?}"
    );
    page.click(&format!("{ACTIVE} [data-testid=send-button]"))
        .await;
    let seq = match frame_where(
        &mut bob_conn,
        |f| matches!(f, ServerFrame::Message(m) if m.text == "yes"),
    )
    .await
    {
        ServerFrame::Message(m) => m.seq,
        _ => unreachable!(),
    };
    bob_conn.send_read(seq).await.unwrap();
    let seen = page
        .wait_for(
            "seen by bob",
            &format!(
                "const s = document.querySelector('{ACTIVE} [data-testid=seen-by]');\
                 return s && !s.hidden && s.textContent"
            ),
        )
        .await;
    assert_eq!(seen, json!("Seen by bob"));
    page.assert_no_uncaught_errors("alice").await;
    page.close().await;
    bob_conn.close().await.unwrap();
    driver.stop().await;
    cluster.stop().await;
}
