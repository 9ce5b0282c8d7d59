//! `berth chat` in a pseudo-terminal, read through a terminal emulator (`vt100`), as a person
//! would see it: messages arriving while a line is being typed leave that line whole on the
//! prompt; your own message is shown once (its pending mark replaced by the echo's time); a
//! line over 4096 bytes is refused with the limit named and never sent; a share link is
//! accepted as the room.

use std::io::{Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth::{RoomConnection, RoomEvent};
use berth_protocol::frames::ServerFrame;
use berth_testkit::{Cluster, ClusterOptions, bin_path, eventually, temp_dir};

const ROWS: u16 = 30;
const COLS: u16 = 100;
const WAIT: Duration = Duration::from_secs(20);

/// A program running in a pseudo-terminal, with the screen it drew.
struct Pty {
    child: std::process::Child,
    input: std::fs::File,
    screen: Arc<Mutex<vt100::Parser>>,
}

impl Pty {
    fn spawn(program: &std::path::Path, args: &[&str]) -> Pty {
        let size = nix::pty::Winsize {
            ws_row: ROWS,
            ws_col: COLS,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(&size, None).expect("openpty");
        let stdio = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
        let child = std::process::Command::new(program)
            .args(args)
            .env("TERM", "xterm-256color")
            .env("RUST_LOG", "error")
            .stdin(stdio(&pty.slave))
            .stdout(stdio(&pty.slave))
            .stderr(stdio(&pty.slave))
            .spawn()
            .unwrap();
        drop(pty.slave);
        let mut output = std::fs::File::from(pty.master.try_clone().unwrap());
        let input = std::fs::File::from(pty.master);
        let mut answer = input.try_clone().unwrap();
        let screen = Arc::new(Mutex::new(vt100::Parser::new(ROWS, COLS, 0)));
        let shared = screen.clone();
        // Reads the screen until the program ends, answering cursor-position queries like a
        // real terminal (the line editor asks where the cursor is before each prompt).
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                let n = match output.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut parser = shared.lock().unwrap();
                parser.process(&buf[..n]);
                let queries = buf[..n].windows(4).filter(|w| w == b"\x1b[6n").count();
                for _ in 0..queries {
                    let (row, col) = parser.screen().cursor_position();
                    let _ = write!(answer, "\x1b[{};{}R", row + 1, col + 1);
                }
            }
        });
        Pty {
            child,
            input,
            screen,
        }
    }

    fn type_text(&mut self, text: &str) {
        for chunk in text.as_bytes().chunks(512) {
            self.input.write_all(chunk).unwrap();
            self.input.flush().unwrap();
        }
    }

    /// The screen's rows, right-trimmed.
    fn rows(&self) -> Vec<String> {
        let parser = self.screen.lock().unwrap();
        parser
            .screen()
            .rows(0, COLS)
            .map(|r| r.trim_end().to_owned())
            .collect()
    }

    /// The row the cursor is on (the prompt's).
    fn cursor_row(&self) -> String {
        let parser = self.screen.lock().unwrap();
        let (row, _) = parser.screen().cursor_position();
        parser
            .screen()
            .rows(0, COLS)
            .nth(row as usize)
            .unwrap_or_default()
            .trim_end()
            .to_owned()
    }

    async fn wait_for(&self, what: &str, check: impl Fn(&[String]) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let rows = self.rows();
            if check(&rows) {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "{what}: not on screen within {WAIT:?}:\n{}",
                    rows.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The next chat message from alice that `conn` receives (other frames skipped).
async fn next_text(conn: &mut RoomConnection) -> String {
    loop {
        match conn.recv_timeout(WAIT).await.unwrap() {
            RoomEvent::Frame(ServerFrame::Message(m)) if m.username == "alice" => return m.text,
            RoomEvent::Frame(_) => {}
            RoomEvent::Closed { code, reason } => panic!("closed {code:?}: {reason}"),
        }
    }
}

fn count(rows: &[String], needle: &str) -> usize {
    rows.iter().filter(|r| r.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berth_chat_keeps_the_typed_line_whole_and_refuses_long_lines() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let backend = cluster.backend();
    let bob = cluster.login("bob").await;
    let ticket = backend
        .create_room(&bob, &Default::default())
        .await
        .unwrap();
    let (mut bob_conn, _) = RoomConnection::connect_ticket(&ticket).await.unwrap();
    let link = format!("{}/#/rooms/{}", cluster.backend_url, ticket.room_id);

    let config = temp_dir("chat-pty-config");
    let mut alice = Pty::spawn(
        &bin_path("testkit-berth"),
        &[
            "--config-dir",
            config.to_str().unwrap(),
            "--backend",
            &cluster.backend_url,
            "--username",
            "alice",
            "chat",
            "--room",
            &link,
        ],
    );
    let joined = format!("joined {} as alice", ticket.room_id);
    alice
        .wait_for("the share link opens the room", |rows| {
            count(rows, &joined) == 1 && rows.iter().any(|r| r.starts_with('>'))
        })
        .await;

    // Half a line typed; then five messages arrive.
    alice.type_text("hello wor");
    eventually(WAIT, || async { alice.cursor_row() == "> hello wor" }).await;
    for i in 1..=5 {
        bob_conn.send(&format!("bob says {i}"), None).await.unwrap();
    }
    alice
        .wait_for("bob's messages", |rows| count(rows, "bob: bob says 5") == 1)
        .await;
    let rows = alice.rows();
    assert_eq!(
        alice.cursor_row(),
        "> hello wor",
        "the typed line stays whole on the prompt:\n{}",
        rows.join("\n")
    );
    assert_eq!(
        count(&rows, "hello wor"),
        1,
        "the half line is nowhere else:\n{}",
        rows.join("\n")
    );
    let order: Vec<usize> = (1..=5)
        .map(|i| {
            let needle = format!("bob: bob says {i}");
            assert_eq!(count(&rows, &needle), 1, "{needle} once");
            rows.iter().position(|r| r.contains(&needle)).unwrap()
        })
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "in order: {order:?}");

    // Finishing the line sends it, whole; it shows once, with the time of its echo.
    alice.type_text("ld\r");
    assert_eq!(next_text(&mut bob_conn).await, "hello world");
    alice
        .wait_for("alice's message, confirmed", |rows| {
            count(rows, "alice: hello world") == 1
                && count(rows, "[sending…]") == 0
                && rows
                    .iter()
                    .any(|r| r.ends_with("] alice: hello world") && r.starts_with('['))
        })
        .await;
    assert_eq!(
        count(&alice.rows(), "> hello world"),
        0,
        "the typed line gives way to the message"
    );

    // A line over the limit is refused with the limit named, and not sent.
    alice.type_text(&format!("{}\r", "y".repeat(5000)));
    alice
        .wait_for("the refusal of the long line", |rows| {
            count(rows, "over the limit of 4096 bytes") == 1
        })
        .await;
    alice.type_text("short one\r");
    assert_eq!(
        next_text(&mut bob_conn).await,
        "short one",
        "the long line never went out"
    );

    // Ctrl-D on an empty line leaves.
    alice.type_text("\x04");
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = alice.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "berth chat did not exit"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(status.success(), "{status:?}");
    cluster.stop().await;
}
