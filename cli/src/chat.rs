//! `berth chat`: a chat over [`Room`] in a terminal, printing `[12:01:02] alice: hi` above a
//! line editor ([`super::terminal`]) that keeps the line being typed whole.
//!
//! Your own message is shown once: as `[sending…] you: text` until the server echoes it (its
//! `clientId` matches), then with the time the server gave it. A refused send (rate limited,
//! too long) is marked `[refused ]` with the server's reason. While the connection is lost the
//! chat says so at once; lines typed meanwhile are queued and sent after the resume.

use std::time::{SystemTime, UNIX_EPOCH};

use berth_protocol::api::CreateRoomRequest;
use berth_protocol::frames::{ChatMessage, ServerFrame};

use berth::{Backend, ClientError, ReconnectPolicy, Room, RoomUpdate, Session, Welcome};

use crate::terminal::{Input, Screen};

/// Longest line sent, in bytes (the server's limit on a message's text); longer lines are
/// refused here with the limit named, never cut.
pub const MAX_LINE_BYTES: usize = 4096;

/// The marks in the time column of your own message before its echo (as wide as a time).
const SENDING: &str = "[sending…]";
const QUEUED: &str = "[queued… ]";
const REFUSED: &str = "[refused ]";

/// One of your messages not yet confirmed by its echo.
struct Pending {
    client_id: String,
    text: String,
    /// The screen row of its line (None on a plain screen, where it is not shown yet).
    row: Option<u64>,
    /// Whether it went out on the current connection.
    sent: bool,
}

/// The conversation: the room, the screen and your unconfirmed messages.
struct Chat {
    room: Room,
    screen: Screen,
    username: String,
    pending: Vec<Pending>,
    next_id: u64,
}

/// Joins `room_id` or creates a room, then relays typed lines and prints what arrives until
/// the end of input (Ctrl-D, Ctrl-C) or the room closing.
pub async fn run(
    backend: Backend,
    session: Session,
    room_id: Option<String>,
    create: CreateRoomRequest,
) -> anyhow::Result<()> {
    let (mut room, welcome) = match room_id {
        Some(id) => Room::join(backend.clone(), session, &id).await?,
        None => {
            let (room, ticket, welcome) = Room::create(backend.clone(), session, &create).await?;
            let link = share_link(backend.base_url(), &ticket.room_id);
            eprintln!(
                "* created room {} — others join with: berth chat --room {link}",
                ticket.room_id
            );
            (room, welcome)
        }
    };
    room.set_policy(ReconnectPolicy {
        max_attempts: None,
        ..ReconnectPolicy::default()
    });
    room.report_disconnects(true);
    let (screen, mut input) = Screen::start();
    let mut chat = Chat {
        room,
        screen,
        username: welcome.you.username.clone(),
        pending: Vec::new(),
        next_id: 0,
    };
    chat.welcome(&welcome, false);
    chat.screen.note(&format!(
        "type a message and press Enter (at most {MAX_LINE_BYTES} bytes); Ctrl-D or Ctrl-C leaves"
    ));

    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let result = loop {
        tokio::select! {
            update = chat.room.next() => match update {
                Ok(RoomUpdate::Frame(frame)) => chat.frame(frame),
                Ok(RoomUpdate::Reconnected(welcome)) => {
                    chat.welcome(&welcome, true);
                    chat.flush().await;
                }
                Ok(RoomUpdate::Disconnected { reason, .. }) => chat.disconnected(&reason),
                Ok(RoomUpdate::Closed { code, reason }) => {
                    chat.screen.note(&format!(
                        "room closed (code {}): {}",
                        code.map_or("none".into(), |c| c.to_string()),
                        printable(&reason)
                    ));
                    break Ok(());
                }
                Err(e) => break Err(e.into()),
            },
            line = input.recv() => match line {
                Some(Input::Line(line)) => chat.typed(line).await,
                Some(Input::End) | None => break Ok(()),
            },
            _ = &mut ctrl_c => break Ok(()),
        }
    };
    let unsent = chat.pending.len();
    if unsent > 0 {
        chat.screen
            .note(&format!("{unsent} message(s) not confirmed by the server"));
    }
    let _ = chat.room.close().await;
    result
}

/// `http://host:8080/#/rooms/r-…`: the link the web client opens (and `--room` takes).
pub fn share_link(base_url: &str, room_id: &str) -> String {
    format!("{}/#/rooms/{room_id}", base_url.trim_end_matches('/'))
}

impl Chat {
    fn welcome(&mut self, welcome: &Welcome, reconnected: bool) {
        if reconnected {
            self.screen.note(&format!(
                "reconnected to {} on {}",
                welcome.room_id, welcome.server_id
            ));
        } else {
            let names: Vec<String> = welcome
                .members
                .iter()
                .map(|u| printable(&u.username))
                .collect();
            self.screen.note(&format!(
                "joined {} as {} — {} here: {}",
                welcome.room_id,
                welcome.you.username,
                names.len(),
                names.join(", ")
            ));
        }
        for m in &welcome.history {
            self.message(m);
        }
    }

    fn frame(&mut self, frame: ServerFrame) {
        match frame {
            ServerFrame::Message(m) => self.message(&m),
            ServerFrame::Joined { user } => self.presence(&user.username, "joined"),
            ServerFrame::Left { user } => self.presence(&user.username, "left"),
            ServerFrame::Error {
                code,
                message,
                client_id,
            } => self.refused(&code, &message, client_id.as_deref()),
            ServerFrame::Typing { user, active: true } => self
                .screen
                .note(&format!("{} is typing…", printable(&user.username))),
            ServerFrame::Welcome { .. } | ServerFrame::Read { .. } | ServerFrame::Typing { .. } => {
            }
        }
    }

    fn presence(&self, username: &str, what: &str) {
        self.screen.line(&format!(
            "[{}] * {} {what}",
            clock_now(),
            printable(username)
        ));
    }

    /// An `error` frame: when it names one of your pending sends, that message is marked
    /// refused in place.
    fn refused(&mut self, code: &str, message: &str, client_id: Option<&str>) {
        let refused = client_id
            .and_then(|id| self.pending.iter().position(|p| p.client_id == id))
            .map(|i| self.pending.remove(i));
        let Some(p) = refused else {
            self.screen
                .note(&format!("error: {code}: {}", printable(message)));
            return;
        };
        let shown = p.row.is_some_and(|row| self.screen.rewrite(row, REFUSED));
        if !shown {
            self.screen
                .line(&own_line(REFUSED, &self.username, &p.text));
        }
        self.screen
            .note(&format!("not delivered: {code}: {}", printable(message)));
    }

    /// A message from the room; your own confirms its pending line in place.
    fn message(&mut self, m: &ChatMessage) {
        let mine = m
            .client_id
            .as_deref()
            .and_then(|id| self.pending.iter().position(|p| p.client_id == id));
        if let Some(i) = mine {
            let p = self.pending.remove(i);
            let stamp = format!("[{}]", clock(&m.ts));
            if p.row.is_some_and(|row| self.screen.rewrite(row, &stamp)) {
                return;
            }
        }
        self.screen.line(&message_line(m));
    }

    /// A line typed by the user: refused when too long, otherwise shown pending and sent (or
    /// queued while the connection is down).
    async fn typed(&mut self, line: String) {
        let text = line.trim_end();
        if text.trim().is_empty() {
            return;
        }
        if text.len() > MAX_LINE_BYTES {
            self.screen.note(&format!(
                "not sent: the line is {} bytes, over the limit of {MAX_LINE_BYTES} bytes per message",
                text.len()
            ));
            return;
        }
        self.next_id += 1;
        let connected = self.room.is_connected();
        let mark = if connected { SENDING } else { QUEUED };
        let row = self
            .screen
            .is_terminal()
            .then(|| self.screen.line(&own_line(mark, &self.username, text)));
        self.pending.push(Pending {
            client_id: format!("cli-{}-{}", std::process::id(), self.next_id),
            text: text.to_owned(),
            row,
            sent: false,
        });
        if connected {
            self.flush().await;
        } else {
            self.screen.note(
                "not connected: the message is queued and goes out once the connection is back",
            );
        }
    }

    /// Sends every pending message not sent on this connection, in order.
    async fn flush(&mut self) {
        for i in 0..self.pending.len() {
            if self.pending[i].sent {
                continue;
            }
            let (text, id) = (
                self.pending[i].text.clone(),
                self.pending[i].client_id.clone(),
            );
            match self.room.send(&text, Some(&id)).await {
                Ok(()) => self.pending[i].sent = true,
                Err(ClientError::NotConnected) => return,
                Err(e) => {
                    self.disconnected(&e.to_string());
                    return;
                }
            }
        }
    }

    /// The connection just dropped: say so, and send the unconfirmed messages again after the
    /// resume (those that did arrive come back in the resumed history and are matched then).
    fn disconnected(&mut self, reason: &str) {
        for p in &mut self.pending {
            p.sent = false;
        }
        self.screen.note(&format!(
            "connection lost ({}); reconnecting… lines you type are queued and sent once it is back",
            printable(reason)
        ));
    }
}

/// `[sending…] alice: hi`: your own message before its echo.
fn own_line(mark: &str, username: &str, text: &str) -> String {
    format!("{mark} {}: {}", printable(username), printable(text))
}

/// `[12:01:02] alice: hi` (UTC time of the message).
pub fn message_line(m: &ChatMessage) -> String {
    format!(
        "[{}] {}: {}",
        clock(&m.ts),
        printable(&m.username),
        printable(&m.text)
    )
}

/// `HH:MM:SS` (UTC) of an RFC 3339 timestamp; the raw text if it does not parse.
pub fn clock(ts: &str) -> String {
    match humantime::parse_rfc3339_weak(ts) {
        Ok(t) => clock_of(t),
        Err(_) => printable(ts),
    }
}

fn clock_now() -> String {
    clock_of(SystemTime::now())
}

fn clock_of(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        % 86_400;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// Other people's text with control characters (terminal escapes) made harmless.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_look_like_a_chat() {
        let m = ChatMessage {
            seq: 1,
            user_id: "u-alice".into(),
            username: "alice".into(),
            text: "hi\u{1b}[2J".into(),
            ts: "2026-01-01T12:01:02.345Z".into(),
            client_id: None,
        };
        assert_eq!(message_line(&m), "[12:01:02] alice: hi\u{fffd}[2J");
        assert_eq!(clock("garbage"), "garbage");
        // Pending marks take the width of a time, so the echo's time replaces them in place.
        for mark in [SENDING, QUEUED, REFUSED] {
            assert_eq!(mark.chars().count(), "[12:01:02]".len(), "{mark}");
        }
        assert_eq!(
            own_line(SENDING, "al\u{1b}", "hi"),
            "[sending…] al\u{fffd}: hi"
        );
        assert_eq!(
            share_link("http://h:8080/", "r-1"),
            "http://h:8080/#/rooms/r-1"
        );
    }
}
