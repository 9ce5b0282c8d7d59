//! `berth chat`: a line-based chat over [`Room`], printing `[12:01:02] alice: hi`.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use berth_protocol::api::CreateRoomRequest;
use berth_protocol::frames::{ChatMessage, ServerFrame};
use tokio::io::AsyncBufReadExt;

use berth::{Backend, ClientError, ReconnectPolicy, Room, RoomUpdate, Session, Welcome};

/// Longest line sent; longer input is cut (the server refuses past its own limit anyway).
const MAX_LINE_BYTES: usize = 4096;

/// Joins `room_id` or creates a room, then relays stdin lines and prints what arrives until
/// EOF, Ctrl-C, or the room closing.
pub async fn run(
    backend: Backend,
    session: Session,
    room_id: Option<String>,
    create: CreateRoomRequest,
) -> anyhow::Result<()> {
    let (mut room, welcome) = match room_id {
        Some(id) => Room::join(backend, session, &id).await?,
        None => {
            let (room, ticket, welcome) = Room::create(backend, session, &create).await?;
            note(&format!(
                "created room {} — others join with: berth chat --room {}",
                ticket.room_id, ticket.room_id
            ));
            (room, welcome)
        }
    };
    room.set_policy(ReconnectPolicy {
        max_attempts: None,
        ..ReconnectPolicy::default()
    });
    print_welcome(&welcome, false);
    note("type a message and press Enter; Ctrl-D or Ctrl-C leaves");

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            update = room.next() => match update? {
                RoomUpdate::Frame(frame) => print_frame(&frame),
                RoomUpdate::Reconnected(welcome) => print_welcome(&welcome, true),
                RoomUpdate::Closed { code, reason } => {
                    note(&format!("room closed (code {}): {reason}", code.map_or("none".into(), |c| c.to_string())));
                    return Ok(());
                }
            },
            line = lines.next_line() => match line? {
                Some(line) => {
                    let text = truncate(line.trim_end(), MAX_LINE_BYTES);
                    if text.trim().is_empty() {
                        continue;
                    }
                    match room.send(text, None).await {
                        Ok(()) => {}
                        Err(ClientError::NotConnected) => note("not connected (reconnecting); message not sent"),
                        Err(e) => note(&format!("send failed: {e}")),
                    }
                }
                None => break,
            },
            _ = &mut ctrl_c => break,
        }
    }
    room.close().await?;
    Ok(())
}

fn print_welcome(welcome: &Welcome, reconnected: bool) {
    if reconnected {
        note(&format!(
            "reconnected to {} on {}",
            welcome.room_id, welcome.server_id
        ));
    } else {
        let names: Vec<&str> = welcome
            .members
            .iter()
            .map(|u| u.username.as_str())
            .collect();
        note(&format!(
            "joined {} as {} — {} here: {}",
            welcome.room_id,
            welcome.you.username,
            names.len(),
            names.join(", ")
        ));
    }
    for m in &welcome.history {
        out(&message_line(m));
    }
}

fn print_frame(frame: &ServerFrame) {
    match frame {
        ServerFrame::Message(m) => out(&message_line(m)),
        ServerFrame::Joined { user } => {
            out(&format!("[{}] * {} joined", clock_now(), user.username))
        }
        ServerFrame::Left { user } => out(&format!("[{}] * {} left", clock_now(), user.username)),
        ServerFrame::Error { code, message, .. } => {
            note(&format!("error: {code}: {}", printable(message)))
        }
        ServerFrame::Welcome { .. } => {}
    }
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

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A chat line on stdout (a closed stdout is not worth a panic).
fn out(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// A status line on stderr, so stdout holds only the conversation.
fn note(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "* {line}");
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
        assert_eq!(truncate("héllo", 2), "h");
    }
}
