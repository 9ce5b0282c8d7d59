//! The web client (`client/web/`) end to end, in a real browser: Chromium driven by
//! `chromedriver` over WebDriver, against a whole cluster from the testkit.
//!
//! One test, two browser sessions (starting a browser is slow): a desktop "alice" and a
//! phone-sized "bob", each with its own profile. It covers
//! 1. sharing: alice logs in and creates a room; bob opens its shared link, logs in and lands in
//!    the room; they exchange messages (one multi-line) and see each other in the member list;
//!    alice keeps a second room open and sees an unread count on the first;
//! 2. hostile text: `<img src=x onerror=...>` arrives as literal text, no element, no script;
//! 3. failover: the session server of the open room is SIGKILLed; both pages show that they are
//!    reconnecting, then chat again on the room's new server without a reload, with no message
//!    shown twice.
//!
//! Needs Debian's `chromium` and `chromium-driver` (see [`berth_testkit::browser`]): without
//! them the test reports a skip (`BERTH-SKIP: browser: ...`), which fails under `CI=true`.
//! Screenshots go to `target/screenshots/`, and also to `docs/screenshots/` when
//! `BERTH_UPDATE_SCREENSHOTS=1`.

use std::time::Duration;

use berth_testkit::browser::{Browser, ChromeDriver, ENTER, SHIFT, WAIT, Window};
use berth_testkit::{Cluster, ClusterOptions};
use serde_json::{Value, json};

/// Failover includes the scheduler noticing the dead server and spawning another.
const FAILOVER_WAIT: Duration = Duration::from_secs(60);

const HOSTILE: &str = r#"<img src=x onerror="window.__berthPwned=true">"#;
/// The room in view.
const ACTIVE: &str = "[data-testid=room]:not([hidden])";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_sharing_hostile_text_and_failover_in_a_browser() {
    let Some(driver) = ChromeDriver::start().await else {
        return;
    };
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let base = cluster.backend_url.clone();

    // --- 1. alice logs in and creates a public room ---------------------------------------
    let alice = driver.session("alice", Window::Desktop).await;
    alice.goto(&base).await;
    alice
        .wait_for(
            "the login form",
            "return !document.getElementById('login-view').hidden",
        )
        .await;
    alice.type_into("#username-input", "alice").await;
    alice.click("#login-button").await;
    alice
        .wait_for(
            "the lobby after login",
            "return !document.getElementById('app-view').hidden && !document.getElementById('lobby').hidden \
             && document.getElementById('current-user').textContent",
        )
        .await;
    assert_eq!(
        alice
            .js(
                "return document.getElementById('current-user').textContent",
                vec![]
            )
            .await,
        "alice"
    );

    alice.type_into("#room-name-input", "Harbour crew").await;
    alice.click("#create-room-button").await;
    let room_id = alice
        .wait_for(
            "alice's new room to be open",
            &format!("const r = document.querySelector('{ACTIVE}'); return r && r.dataset.state === 'open' && r.dataset.roomId"),
        )
        .await
        .as_str()
        .unwrap()
        .to_owned();
    assert!(room_id.starts_with("r-"), "room id {room_id}");
    assert_eq!(
        alice.js("return location.hash", vec![]).await,
        format!("#/rooms/{room_id}")
    );
    let link = alice
        .js(
            &format!("return document.querySelector('{ACTIVE} [data-testid=share-link]').value"),
            vec![],
        )
        .await;
    assert_eq!(link, format!("{base}/#/rooms/{room_id}"));
    let server_id = room_text(&alice, &room_id, "room-server").await;
    assert!(
        cluster.servers().await.iter().any(|s| s.id == server_id),
        "the page names the hosting server {server_id}"
    );

    // --- bob opens the shared link on a phone-sized screen --------------------------------
    let bob = driver.session("bob", Window::Phone).await;
    bob.goto(link.as_str().unwrap()).await;
    let hint = bob
        .wait_for(
            "the login form naming the shared room",
            "const h = document.getElementById('login-room-hint'); \
             return !document.getElementById('login-view').hidden && !h.hidden && h.textContent",
        )
        .await;
    assert!(hint.as_str().unwrap().contains(&room_id), "hint: {hint}");
    bob.type_into("#username-input", &format!("bob{ENTER}"))
        .await;
    bob.wait_for(
        "bob to land in the shared room",
        &format!("const r = document.querySelector('{ACTIVE}'); return r && r.dataset.roomId === '{room_id}' && r.dataset.state === 'open'"),
    )
    .await;

    // Both see each other in the member list.
    for (who, page) in [("alice", &alice), ("bob", &bob)] {
        page.wait_for(
            &format!("{who} to see alice and bob in the member list"),
            &format!("{MEMBERS_JS} return JSON.stringify(members('{room_id}')) === JSON.stringify(['alice', 'bob'])"),
        )
        .await;
    }
    // On the phone the member list is a panel behind a button.
    let panel_shown = format!(
        "return getComputedStyle(document.querySelector('{ACTIVE} .members-panel')).display !== 'none'"
    );
    assert_eq!(
        bob.js(&panel_shown, vec![]).await,
        false,
        "the phone layout hides the members panel at first"
    );
    bob.click(&format!("{ACTIVE} [data-testid=members-toggle]"))
        .await;
    bob.wait_for("bob's members panel to open", &panel_shown)
        .await;
    bob.click(&format!("{ACTIVE} [data-testid=members-toggle]"))
        .await;
    assert_eq!(room_text(&bob, &room_id, "members-count").await, "2");

    // --- they talk; the last message is hostile -------------------------------------------
    let mut expected: Vec<(&str, String)> = Vec::new();
    let composer = format!("{ACTIVE} [data-testid=composer-input]");
    alice
        .type_into(
            &composer,
            &format!("Morning, bob! Berth docked our room on its own server.{ENTER}"),
        )
        .await;
    expected.push((
        "alice",
        "Morning, bob! Berth docked our room on its own server.".into(),
    ));
    wait_messages(&bob, "bob", &room_id, &expected).await;
    // Shift+Enter makes a new line; Enter sends.
    bob.type_into(
        &composer,
        &format!(
            "Morning! I opened your link on my phone.{SHIFT}{ENTER}{SHIFT}Works nicely.{ENTER}"
        ),
    )
    .await;
    expected.push((
        "bob",
        "Morning! I opened your link on my phone.\nWorks nicely.".into(),
    ));
    wait_messages(&alice, "alice", &room_id, &expected).await;
    alice
        .type_into(&composer, &format!("Try to break it :){ENTER}"))
        .await;
    expected.push(("alice", "Try to break it :)".into()));
    wait_messages(&bob, "bob", &room_id, &expected).await;
    bob.type_into(&composer, &format!("{HOSTILE}{ENTER}")).await;
    expected.push(("bob", HOSTILE.into()));
    for (who, page) in [("alice", &alice), ("bob", &bob)] {
        wait_messages(page, who, &room_id, &expected).await;
        let check = page
            .js(
                "const list = document.querySelector(`[data-testid=room][data-room-id='${arguments[0]}'] [data-testid=message-list]`);
                 const texts = list.querySelectorAll('[data-testid=message-text]');
                 const last = texts[texts.length - 1];
                 return { text: last.textContent, children: last.childElementCount,
                          imgs: list.querySelectorAll('img').length, pwned: window.__berthPwned === true };",
                vec![json!(room_id)],
            )
            .await;
        assert_eq!(
            check["text"], HOSTILE,
            "{who}: the hostile message is shown as its literal text"
        );
        assert_eq!(
            check["children"], 0,
            "{who}: the message text has no child elements"
        );
        assert_eq!(
            check["imgs"], 0,
            "{who}: no <img> element in the message list"
        );
        assert_eq!(
            check["pwned"], false,
            "{who}: the onerror handler never ran"
        );
    }
    alice.save_screenshot("room").await;
    bob.save_screenshot("room-phone").await;

    // --- several rooms: a second room in view, unread count on the first ----------------------
    alice.click("[data-testid=lobby-link]").await;
    alice
        .wait_for(
            "the lobby",
            "return !document.getElementById('lobby').hidden",
        )
        .await;
    alice.type_into("#room-name-input", "Design review").await;
    alice.click("#create-room-button").await;
    let second = alice
        .wait_for(
            "alice's second room to be open",
            &format!("const r = document.querySelector('{ACTIVE}'); return r && r.dataset.state === 'open' && r.dataset.roomId"),
        )
        .await;
    assert_ne!(second.as_str().unwrap(), room_id);
    bob.type_into(&composer, &format!("Are you still there?{ENTER}"))
        .await;
    expected.push(("bob", "Are you still there?".into()));
    let unread = alice
        .wait_for(
            "an unread count on the room not in view",
            &format!("const b = document.querySelector(\"[data-testid=open-room][data-room-id='{room_id}'] [data-testid=unread-count]\"); return b && !b.hidden && b.textContent"),
        )
        .await;
    assert_eq!(unread, "1");
    assert!(
        alice
            .js("return document.title", vec![])
            .await
            .as_str()
            .unwrap()
            .starts_with("(1) ")
    );

    // The lobby lists both public rooms with member counts (as of the servers' heartbeats).
    alice.click("[data-testid=lobby-link]").await;
    alice
        .wait_for(
            "the public room list with member counts",
            &format!(
                "document.getElementById('refresh-rooms').click();
                 const item = id => document.querySelector(`[data-testid=public-room][data-room-id='${{id}}'] [data-testid=public-room-members]`);
                 const a = item('{room_id}'), b = item('{}');
                 return a && b && a.dataset.count === '2' && b.dataset.count === '1';",
                second.as_str().unwrap()
            ),
        )
        .await;
    alice.save_screenshot("lobby").await;

    // Back in the first room the unread count is gone and the message is there.
    alice
        .click(&format!(
            "[data-testid=open-room][data-room-id='{room_id}']"
        ))
        .await;
    wait_messages(&alice, "alice", &room_id, &expected).await;
    alice
        .wait_for(
            "the unread count to clear",
            &format!("return document.querySelector(\"[data-testid=open-room][data-room-id='{room_id}'] [data-testid=unread-count]\").hidden"),
        )
        .await;

    // --- 3. the room's session server dies ----------------------------------------------------
    // Record what each page shows from now on, so a quick failover cannot slip between polls.
    for page in [&alice, &bob] {
        page.js(
            "window.__berthSamePage = 'yes';
             const r = document.querySelector(`[data-testid=room][data-room-id='${arguments[0]}']`);
             window.__berthShown = [];
             const note = () => window.__berthShown.push(
                 r.dataset.state + ' | ' + r.querySelector('[data-testid=room-status]').textContent);
             new MutationObserver(note).observe(r, { attributes: true, attributeFilter: ['data-state'],
                                                    subtree: true, childList: true, characterData: true });",
            vec![json!(room_id)],
        )
        .await;
    }
    let killed_at = std::time::Instant::now();
    cluster.kill_server(&server_id).await;
    for (who, page) in [("alice", &alice), ("bob", &bob)] {
        let shown = page
            .wait_for(
                &format!("{who}'s page to show that it is reconnecting"),
                "return window.__berthShown.find(s => /^reconnecting \\| Reconnecting/.test(s))",
            )
            .await;
        eprintln!("{who}: the page showed {shown}");
    }
    let mut new_server = String::new();
    for (who, page) in [("alice", &alice), ("bob", &bob)] {
        page.wait_for_within(
            &format!("{who} to be connected again on another server"),
            &format!(
                "const r = document.querySelector(`[data-testid=room][data-room-id='{room_id}']`);
                 const server = r.querySelector('[data-testid=room-server]').textContent;
                 return r.dataset.state === 'open' && server !== '{server_id}' && server"
            ),
            FAILOVER_WAIT,
        )
        .await;
        new_server = room_text(page, &room_id, "room-server").await;
        assert_eq!(
            page.js("return window.__berthSamePage", vec![]).await,
            "yes",
            "{who}'s page was not reloaded"
        );
        assert_eq!(room_text(page, &room_id, "room-status").await, "Connected");
    }
    eprintln!(
        "failover: {server_id} -> {new_server} in {:?}",
        killed_at.elapsed()
    );
    assert!(
        cluster.servers().await.iter().any(|s| s.id == new_server),
        "the page names the new server {new_server}"
    );
    assert_eq!(
        room_text(&bob, &room_id, "room-server").await,
        new_server,
        "both pages agree on the new server"
    );

    // Chat works again, and nothing is shown twice.
    alice
        .type_into(&composer, &format!("Back online?{ENTER}"))
        .await;
    expected.push(("alice", "Back online?".into()));
    wait_messages(&bob, "bob", &room_id, &expected).await;
    bob.type_into(&composer, &format!("Yes, on the new server.{ENTER}"))
        .await;
    expected.push(("bob", "Yes, on the new server.".into()));
    for (who, page) in [("alice", &alice), ("bob", &bob)] {
        wait_messages(page, who, &room_id, &expected).await;
        let notice = page
            .js(
                "return [...document.querySelectorAll(`[data-testid=room][data-room-id='${arguments[0]}'] [data-testid=notice]`)]
                   .map(n => n.textContent).find(t => /Reconnected|History was reset/.test(t)) ?? null",
                vec![json!(room_id)],
            )
            .await;
        assert!(
            notice.is_string(),
            "{who}: a notice tells that the room came back"
        );
        page.wait_for(
            &format!("{who} sees both in the member list again"),
            &format!("{MEMBERS_JS} return JSON.stringify(members('{room_id}')) === JSON.stringify(['alice', 'bob'])"),
        )
        .await;
    }

    // --- a reader who scrolled up is not yanked down; the newest messages are a click away ------
    for i in 1..=12 {
        alice
            .type_into(&composer, &format!("Log line {i}{ENTER}"))
            .await;
        expected.push(("alice", format!("Log line {i}")));
    }
    wait_messages(&bob, "bob", &room_id, &expected).await;
    let list = format!(
        "document.querySelector(`[data-testid=room][data-room-id='{room_id}'] [data-testid=message-list]`)"
    );
    let at_bottom =
        format!("const l = {list}; return l.scrollHeight - l.scrollTop - l.clientHeight < 4");
    assert_eq!(
        alice.js(&at_bottom, vec![]).await,
        true,
        "alice's own messages keep her list at the bottom"
    );
    assert_eq!(
        bob.js(&at_bottom, vec![]).await,
        true,
        "bob's list follows new messages while he is at the bottom"
    );
    let overflows = bob
        .js(
            &format!("const l = {list}; return l.scrollHeight > l.clientHeight + 100"),
            vec![],
        )
        .await;
    assert_eq!(
        overflows, true,
        "bob's message list should overflow for this check"
    );
    bob.js(&format!("{list}.scrollTop = 0"), vec![]).await;
    bob.wait_for(
        "bob's page to notice that he scrolled up",
        &format!("return {list}.scrollTop === 0 && document.querySelector(`[data-testid=room][data-room-id='{room_id}']`).dataset.following === 'false'"),
    )
    .await;
    alice
        .type_into(&composer, &format!("Scroll down, bob.{ENTER}"))
        .await;
    expected.push(("alice", "Scroll down, bob.".into()));
    wait_messages(&bob, "bob", &room_id, &expected).await;
    assert_eq!(
        bob.js(&format!("return {list}.scrollTop"), vec![]).await,
        0,
        "bob's reading position was kept"
    );
    let jump = format!("[data-testid=room][data-room-id='{room_id}'] [data-testid=jump-to-latest]");
    let label = bob
        .wait_for(
            "the jump-to-latest button",
            &format!(
                "const b = document.querySelector(\"{jump}\"); return !b.hidden && b.textContent"
            ),
        )
        .await;
    assert_eq!(label, "1 new message ↓");
    bob.click(&jump).await;
    bob.wait_for("bob's list to reach the newest message", &at_bottom)
        .await;

    // --- an unknown room is reported in the lobby, in words ---------------------------------
    alice.click("[data-testid=lobby-link]").await;
    alice
        .type_into("#join-room-input", &format!("r-doesnotexist{ENTER}"))
        .await;
    let error = alice
        .wait_for(
            "the room-not-found message",
            "const e = document.getElementById('lobby-error'); return !e.hidden && e.textContent.trim()",
        )
        .await;
    assert!(
        error.as_str().unwrap().contains("was not found"),
        "lobby error: {error}"
    );

    // --- the SDK's resume rules, against scripted sockets in the same browser -----------------
    let sdk = alice.js_async(SDK_SCENARIO, vec![]).await;
    eprintln!("sdk scenario: {sdk}");
    assert_eq!(sdk["error"], Value::Null, "the SDK scenario threw");
    assert_eq!(
        sdk["states"],
        json!([
            "connecting",
            "open",
            "reconnecting",
            "open",
            "reconnecting",
            "open",
            "closed"
        ])
    );
    assert_eq!(
        sdk["firstHistory"],
        json!([1, 2]),
        "the first welcome delivers the whole history"
    );
    assert_eq!(
        sdk["resumeUrl"], true,
        "a reconnect looks the room up again (fresh ticket) and asks for since=3"
    );
    assert_eq!(
        sdk["resumedHistory"],
        json!([4]),
        "after a reconnect only messages not seen before are delivered"
    );
    assert_eq!(
        sdk["ownConfirmed"], true,
        "the message sent before the drop is confirmed by its clientId"
    );
    assert_eq!(
        sdk["resent"], 0,
        "a message the server already has is not sent again"
    );
    assert_eq!(
        sdk["queuedSent"], true,
        "a message sent while reconnecting goes out after the welcome"
    );
    assert_eq!(
        sdk["liveDuplicates"], 0,
        "a live message already delivered is dropped"
    );
    assert_eq!(
        sdk["reset"],
        json!({ "historyReset": true, "history": [1] }),
        "a room that restarted empty is accepted"
    );
    assert_eq!(
        sdk["notFound"], "room_not_found",
        "an unknown room ends the connection with room_not_found"
    );
    assert_eq!(
        sdk["policy"], "policy_violation",
        "close 1008 ends the connection"
    );

    for (who, page) in [("alice", &alice), ("bob", &bob)] {
        page.assert_no_uncaught_errors(who).await;
    }
    alice.close().await;
    bob.close().await;
    driver.stop().await;
    cluster.stop().await;
}

/// Drives `berth.js` against a fake backend and scripted WebSockets: resume without duplicates,
/// a fresh look-up with `since` on reconnect, confirmation by `clientId`, a reset history, and the
/// terminal errors. Resolves to a summary the test checks.
const SDK_SCENARIO: &str = r#"
const done = arguments[arguments.length - 1];
(async () => {
  const { BerthClient } = await import('/berth.js');
  const until = async (what, cond) => {
    for (let i = 0; i < 500; i++) { if (cond()) return; await new Promise(r => setTimeout(r, 10)); }
    throw new Error('timed out: ' + what);
  };
  const sockets = [];
  class FakeSocket {
    constructor(url) { this.url = url; this.readyState = 0; this.sent = []; sockets.push(this); }
    send(data) { this.sent.push(JSON.parse(data)); }
    close(code = 1000) { this.drop(code); }
    frame(f) { this.readyState = 1; this.onmessage?.({ data: JSON.stringify(f) }); }
    drop(code = 1006) { if (this.readyState === 3) return; this.readyState = 3; this.onclose?.({ code, reason: '' }); }
  }
  let lookups = 0;
  const fetch = async (url, init) => {
    const path = new URL(url, location.href).pathname;
    const json = (status, body) => new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json' } });
    if (path === '/api/login') return json(200, { token: 'user-token', userId: 'u-me', username: 'me' });
    if (path === '/api/rooms/r-x') {
      lookups += 1;
      return json(200, { roomId: 'r-x', url: 'ws://fake.invalid/ws', token: 't' + lookups,
                         expiresAt: new Date(Date.now() + 60000).toISOString(), serverId: 's-' + lookups, name: 'X' });
    }
    return json(404, { error: { code: 'room_not_found', message: 'no such room' } });
  };
  const client = new BerthClient({ storage: null, fetch, WebSocket: FakeSocket, reconnect: { baseDelayMs: 5, maxDelayMs: 20 } });
  await client.login('me');
  const msg = (seq, text, extra = {}) => ({ seq, userId: 'u-other', username: 'other', text, ts: new Date(1700000000000 + seq * 1000).toISOString(), ...extra });
  const me = { userId: 'u-me', username: 'me' };
  const out = { states: [], liveDuplicates: 0 };
  const room = client.joinRoom('r-x');
  const welcomes = [], messages = [];
  room.on('status', e => { if (out.states[out.states.length - 1] !== e.state) out.states.push(e.state); });
  room.on('welcome', e => welcomes.push(e));
  room.on('message', m => messages.push(m));

  await until('first socket', () => sockets.length === 1);
  sockets[0].frame({ type: 'welcome', roomId: 'r-x', you: me, members: [me], history: [msg(1, 'a'), msg(2, 'b')], seq: 2, serverId: 's-1' });
  out.firstHistory = welcomes[0].history.map(m => m.seq);
  sockets[0].frame({ type: 'message', ...msg(3, 'c') });
  const clientId = room.send('mine');
  const sentFirst = sockets[0].sent.length;

  sockets[0].drop(1006);
  await until('second socket', () => sockets.length === 2);
  const u = new URL(sockets[1].url);
  out.resumeUrl = u.searchParams.get('token') === 't2' && u.searchParams.get('since') === '3' && sentFirst === 1;
  sockets[1].frame({ type: 'welcome', roomId: 'r-x', you: me, members: [me], seq: 4, serverId: 's-2',
                     history: [msg(1, 'a'), msg(2, 'b'), msg(3, 'c'), { ...msg(4, 'mine'), userId: 'u-me', username: 'me', clientId }] });
  out.resumedHistory = welcomes[1].history.map(m => m.seq);
  out.ownConfirmed = welcomes[1].history[0]?.own === true && welcomes[1].history[0]?.clientId === clientId;
  out.resent = sockets[1].sent.length;
  const before = messages.length;
  sockets[1].frame({ type: 'message', ...msg(4, 'mine') });
  sockets[1].frame({ type: 'message', ...msg(3, 'c') });
  out.liveDuplicates = messages.length - before;

  sockets[1].drop(1012);
  await until('reconnecting', () => room.state === 'reconnecting');
  room.send('while away');
  await until('third socket', () => sockets.length === 3);
  sockets[2].frame({ type: 'welcome', roomId: 'r-x', you: me, members: [me], seq: 1, serverId: 's-3', history: [msg(1, 'fresh start')] });
  out.reset = { historyReset: welcomes[2].historyReset, history: welcomes[2].history.map(m => m.seq) };
  out.queuedSent = sockets[2].sent.length === 1 && sockets[2].sent[0].text === 'while away';
  sockets[2].drop(1008);
  await until('closed', () => room.state === 'closed');
  out.policy = room.error?.code;

  const missing = client.joinRoom('r-missing');
  out.notFound = await missing.ready.then(() => 'opened', e => e.code);
  return out;
})().then(done, e => done({ error: String(e && e.stack || e) }));
"#;

/// `members(roomId)`: the usernames in a room's member list, sorted.
/// The details a user notices first (one browser, so that it ports to any WebDriver client:
/// it only navigates, runs scripts, types and clicks):
/// 1. a message refused for its rate shows "Not delivered · Retry" at once (matched by its
///    `clientId`), and Retry delivers it;
/// 2. a link in a message is clickable, http(s) only, `rel="noopener noreferrer"`, and cannot
///    run script; messages sit under a day separator;
/// 3. the room's server, id and share link sit behind "Details" ("Copy link" stays);
/// 4. the rooms a user had open come back after a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_links_details_and_reopened_rooms_in_a_browser() {
    let Some(driver) = ChromeDriver::start().await else {
        return;
    };
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let base = cluster.backend_url.clone();
    let carol = driver.session("carol", Window::Desktop).await;
    carol.goto(&base).await;
    carol
        .wait_for(
            "the login form",
            "return !document.getElementById('login-view').hidden",
        )
        .await;
    carol
        .type_into("#username-input", &format!("carol{ENTER}"))
        .await;
    carol
        .wait_for(
            "the lobby",
            "return !document.getElementById('lobby').hidden",
        )
        .await;
    let mut open_rooms = Vec::new();
    for name in ["Ops", "Release"] {
        carol.click("[data-testid=lobby-link]").await;
        carol
            .wait_for(
                "the lobby",
                "return !document.getElementById('lobby').hidden",
            )
            .await;
        carol.type_into("#room-name-input", name).await;
        carol.click("#create-room-button").await;
        let id = carol
            .wait_for(
                &format!("room {name} to be open"),
                &format!("const r = document.querySelector('{ACTIVE}'); return r && r.dataset.state === 'open' && r.dataset.roomId"),
            )
            .await;
        open_rooms.push(id.as_str().unwrap().to_owned());
    }
    let room_id = open_rooms[1].clone();
    let room = format!("[data-testid=room][data-room-id='{room_id}']");

    // --- 1. a burst over the rate limit: the refused ones fail at once, Retry delivers --------
    // Well over the default burst (40 at 20/s): some are refused unless the server takes
    // (burst - 40) / 20 s to read them all (at 70 a loaded CI machine once took the 1.5 s and
    // refused none), and fewer than 80 refusals (twice the burst) in 10 s, or the connection is
    // closed as flooding (at 200 it was). 100: 3 s of slack, at most 60 refused. (The client
    // sends no `read` for its own echoes, which once spent the budget too.)
    let burst = 100;
    carol
        .js(
            &format!(
                "const r = document.querySelector(\"{room}\");
                 const form = r.querySelector('form.composer'), input = r.querySelector('[data-testid=composer-input]');
                 for (let i = 1; i <= {burst}; i++) {{ input.value = 'burst ' + i; form.requestSubmit(); }}"
            ),
            vec![],
        )
        .await;
    let refused_at = std::time::Instant::now();
    let failed = carol
        .wait_for_within(
            "refused messages marked 'Not delivered · Retry'",
            &format!(
                "const f = [...document.querySelectorAll(\"{room} [data-testid=message][data-pending=failed]\")];
                 const ok = document.querySelectorAll(\"{room} [data-testid=message]:not([data-pending])\").length;
                 return f.length > 0 && f.length + ok === {burst}
                   && f.every(m => m.querySelector('[data-testid=message-status]').textContent === 'Not delivered · Retry'
                                   && m.querySelector('[data-testid=message-status]').dataset.code === 'rate_limited')
                   && f.length"
            ),
            // A loaded machine may take seconds to store and echo the accepted ones.
            Duration::from_secs(15),
        )
        .await;
    assert!(
        refused_at.elapsed() < Duration::from_secs(15),
        "failures show before the 20 s pending timeout would mark them"
    );
    eprintln!("rate limit: {failed} of {burst} refused");
    // Retry once the bucket has refilled (20/s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let retried = carol
        .js(
            &format!(
                "const m = document.querySelector(\"{room} [data-testid=message][data-pending=failed]\");
                 const text = m.querySelector('[data-testid=message-text]').textContent;
                 m.querySelector('[data-testid=retry-send]').click();
                 return text;"
            ),
            vec![],
        )
        .await;
    carol
        .wait_for_args(
            "the retried message to be delivered",
            &format!(
                "return [...document.querySelectorAll(\"{room} [data-testid=message]:not([data-pending])\")]
                   .some(m => m.querySelector('[data-testid=message-text]').textContent === arguments[0])"
            ),
            vec![retried.clone()],
            WAIT,
        )
        .await;

    // --- 2. links: clickable, http(s) only, no script; a day separator ------------------------
    let text = "Runbook: https://example.com/runbook?step=2, not javascript:window.__berthPwned=true \
                nor <a href=\"javascript:window.__berthPwned=true\">this</a>.";
    // Wait for the rate limiter's bucket to refill a little before sending.
    tokio::time::sleep(Duration::from_millis(300)).await;
    carol
        .type_into(
            &format!("{room} [data-testid=composer-input]"),
            &format!("{text}{ENTER}"),
        )
        .await;
    let link = carol
        .wait_for_args(
            "the message with its link",
            &format!(
                "const m = [...document.querySelectorAll(\"{room} [data-testid=message]:not([data-pending])\")]
                   .find(m => m.querySelector('[data-testid=message-text]').textContent === arguments[0]);
                 if (!m) return null;
                 const links = [...m.querySelectorAll('[data-testid=message-text] a')];
                 return {{ n: links.length, href: links[0]?.href, rel: links[0]?.rel, target: links[0]?.target,
                          text: links[0]?.textContent, other: m.querySelectorAll('[data-testid=message-text] *').length }};"
            ),
            vec![json!(text)],
            WAIT,
        )
        .await;
    assert_eq!(link["n"], 1, "one link: {link}");
    assert_eq!(link["href"], "https://example.com/runbook?step=2");
    assert_eq!(link["text"], "https://example.com/runbook?step=2");
    assert_eq!(link["rel"], "noopener noreferrer");
    assert_eq!(link["target"], "_blank");
    assert_eq!(link["other"], 1, "no element but the link: {link}");
    let script_ran = carol
        .js(
            &format!(
                "document.querySelectorAll(\"{room} [data-testid=message-text] a\").forEach(a => a.dispatchEvent(new MouseEvent('click', {{cancelable: true}})));
                 return window.__berthPwned === true || [...document.querySelectorAll('a')].some(a => a.protocol === 'javascript:')"
            ),
            vec![],
        )
        .await;
    assert_eq!(script_ran, false, "no link can run script");
    let separators = carol
        .js(
            &format!(
                "return [...document.querySelectorAll(\"{room} [data-testid=day-separator]\")].map(s => s.textContent)"
            ),
            vec![],
        )
        .await;
    assert_eq!(separators, json!(["Today"]), "one day, one separator");

    // --- 3. details behind a toggle; "Copy link" stays ---------------------------------------
    let details = format!("{room} [data-testid=room-details]");
    let shown = format!(
        "const d = document.querySelector(\"{details}\"); return !d.hidden && d.getBoundingClientRect().height > 0"
    );
    assert_eq!(
        carol.js(&shown, vec![]).await,
        false,
        "details start hidden"
    );
    assert_eq!(
        carol
            .js(
                &format!("return document.querySelector(\"{room} [data-testid=share-button]\").getBoundingClientRect().width > 0"),
                vec![]
            )
            .await,
        true,
        "Copy link is in view"
    );
    carol
        .click(&format!("{room} [data-testid=details-toggle]"))
        .await;
    carol.wait_for("the details to show", &shown).await;
    assert_eq!(
        room_text(&carol, &room_id, "room-id").await,
        room_id,
        "the details name the room"
    );

    // --- 4. a reload reopens both rooms --------------------------------------------------------
    carol.goto(&format!("{base}/#/")).await;
    let reopened = carol
        .wait_for(
            "both rooms reopened after the reload",
            "const ids = [...document.querySelectorAll('[data-testid=open-room]')].map(a => a.dataset.roomId);
             const open = [...document.querySelectorAll('[data-testid=room]')].filter(r => r.dataset.state === 'open').length;
             return ids.length === 2 && open === 2 && ids",
        )
        .await;
    let mut reopened: Vec<String> = serde_json::from_value(reopened).unwrap();
    reopened.sort();
    let mut want = open_rooms.clone();
    want.sort();
    assert_eq!(reopened, want);
    assert_eq!(
        carol
            .js("return !document.getElementById('lobby').hidden", vec![])
            .await,
        true,
        "the reload kept the lobby in view"
    );
    carol.assert_no_uncaught_errors("carol").await;
    carol.close().await;
    driver.stop().await;
    cluster.stop().await;
}

const MEMBERS_JS: &str = "const members = id => [...document.querySelectorAll(`[data-testid=room][data-room-id='${id}'] [data-testid=member]`)]
                             .map(m => m.dataset.username).sort();";

/// The text of a room's element `[data-testid=TESTID]`.
async fn room_text(page: &Browser, room_id: &str, testid: &str) -> String {
    let v = page
        .js(
            "return document.querySelector(`[data-testid=room][data-room-id='${arguments[0]}'] [data-testid=${arguments[1]}]`).textContent",
            vec![json!(room_id), json!(testid)],
        )
        .await;
    v.as_str().unwrap_or_default().to_owned()
}

/// Waits until the room shows exactly these confirmed messages (author, text), in order, each
/// once, and none still pending.
async fn wait_messages(page: &Browser, who: &str, room_id: &str, expected: &[(&str, String)]) {
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
         window.__berthLastMessages = got;
         return JSON.stringify(got.map(([a, t, p]) => p ? [a, t, p] : [a, t])) === arguments[0];"
    );
    let what = format!("{who} to show the messages {want}");
    page.wait_for_args(&what, &script, vec![json!(want)], WAIT)
        .await;
}

// --- accounts -------------------------------------------------------------------------------

/// Whether the sign-in view is showing.
const SIGN_IN_SHOWN: &str = "return !document.getElementById('login-view').hidden";
/// The signed-in user's name and kind once the app shows, e.g. `Hana|` or `ivy|guest`.
const SIGNED_IN_AS: &str = "return !document.getElementById('app-view').hidden \
     && document.getElementById('current-user').textContent + '|' + document.getElementById('current-user-kind').textContent";

/// Sets an input's value as a person clearing it would.
async fn clear(page: &Browser, css: &str) {
    page.js(
        "const i = document.querySelector(arguments[0]); i.value = ''; i.dispatchEvent(new Event('input'));",
        vec![json!(css)],
    )
    .await;
}

/// The sign-in screen: create an account, sign out, be refused as a guest on its name and with a
/// wrong password, sign in again (any case of the name), then continue as a guest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_sign_out_and_sign_in_in_a_browser() {
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
    let page = driver.session("hana", Window::Desktop).await;
    page.goto(&cluster.backend_url).await;
    page.wait_for("the sign-in screen", SIGN_IN_SHOWN).await;

    // Create an account.
    page.type_into("#username-input", "Hana").await;
    page.type_into("#password-input", "hana-secret-1").await;
    page.click("#register-button").await;
    let who = page.wait_for("the app after sign-up", SIGNED_IN_AS).await;
    assert_eq!(who, "Hana|", "an account, not a guest");
    page.save_screenshot("accounts-signed-in").await;

    // Sign out: back to the sign-in screen, nothing kept.
    page.click("#logout-button").await;
    page.wait_for("the sign-in screen after signing out", SIGN_IN_SHOWN)
        .await;
    assert_eq!(
        page.js("return localStorage.getItem('berth.session')", vec![])
            .await,
        Value::Null
    );

    // The name without a password (Enter) is refused: it belongs to an account.
    clear(&page, "#username-input").await;
    page.type_into("#username-input", &format!("hana{ENTER}"))
        .await;
    let error = page
        .wait_for(
            "the password-required message",
            "return document.getElementById('login-error').textContent",
        )
        .await;
    assert!(
        error.as_str().unwrap().contains("belongs to an account"),
        "{error}"
    );
    // A wrong password.
    page.type_into("#password-input", "not-her-password").await;
    page.click("#login-button").await;
    page.wait_for(
        "the wrong-password message",
        "return document.getElementById('login-error').textContent.includes('Wrong username or password')",
    )
    .await;
    page.save_screenshot("accounts-sign-in").await;
    // The right one, signing in with another case of the name.
    clear(&page, "#password-input").await;
    page.type_into("#password-input", &format!("hana-secret-1{ENTER}"))
        .await;
    let who = page
        .wait_for("the app after signing in", SIGNED_IN_AS)
        .await;
    assert_eq!(who, "Hana|", "the registered case is shown");
    let me = page
        .js_async(
            "const done = arguments[arguments.length - 1];
             import('/berth.js').then(m => m.me()).then(done, e => done(String(e)));",
            vec![],
        )
        .await;
    assert_eq!(me["username"], "Hana", "{me}");
    assert_eq!(me["guest"], false, "{me}");

    // Sign out again, and continue as a guest under another name.
    page.click("#logout-button").await;
    page.wait_for("the sign-in screen", SIGN_IN_SHOWN).await;
    clear(&page, "#username-input").await;
    page.type_into("#username-input", "ivy").await;
    page.click("#guest-button").await;
    let who = page.wait_for("the app as a guest", SIGNED_IN_AS).await;
    assert_eq!(who, "ivy|guest");

    page.assert_no_uncaught_errors("hana").await;
    page.close().await;
    driver.stop().await;
    cluster.stop().await;
}
