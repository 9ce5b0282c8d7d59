//! One admitted WebSocket connection: a single `select!` loop over the client's frames, the
//! connection's outbound queue, a ping timer and the room's kick notice (slow consumer, room
//! revoked, server closing, room failed).
//!
//! Writes are coalesced: a frame from the outbound queue is fed, then every frame already queued
//! behind it (up to [`MAX_BATCH`]), then the socket is flushed once. Every write races the
//! room's kick notice, so a client that stopped reading cannot pin its connection.
//!
//! The `welcome` is written to the raw socket before tungstenite takes it over: tungstenite's
//! write buffer keeps the capacity of the largest frame it ever wrote, and the welcome (every
//! member, recent history) is by far the largest, so through tungstenite each connection would
//! hold a welcome-sized buffer for its whole life.

use std::time::Duration;

use berth_protocol::ErrorCode;
use berth_protocol::frames::{ClientFrame, MAX_CLIENT_ID_BYTES, close};
use bytes::Buf as _;
use futures_util::{SinkExt as _, StreamExt as _};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::admission::Admitted;
use crate::rate::{RateLimiter, Verdict};
use crate::room::{Kick, RoomHandle};
use crate::state::{AppState, with_client_id};

/// Most frames written per flush.
const MAX_BATCH: usize = 64;
/// Bound on sending a final close frame and waiting for the client's answer.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// "Going away" (RFC 6455): used when a silent connection is given up.
const GOING_AWAY: u16 = 1001;

/// How the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client closed (its close frame is answered by tungstenite) or the socket is gone.
    Gone,
    /// Close with this code and reason.
    Close(u16, &'static str),
}

fn end_for_kick(kick: Result<Kick, oneshot::error::RecvError>) -> End {
    match kick {
        Ok(Kick::SlowConsumer) => End::Close(close::POLICY, "slow consumer"),
        Ok(Kick::Restart) => End::Close(close::RESTART, "server restarting; reconnect"),
        // The room dropped us without a word: it failed.
        Err(_) => End::Close(close::INTERNAL, "room failed"),
    }
}

/// The upgraded socket, as the connection sees it.
pub(crate) type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// Runs an admitted connection until it ends, then closes it and leaves the room.
pub(crate) async fn run(
    mut io: TokioIo<Upgraded>,
    config: WebSocketConfig,
    admitted: Admitted,
    state: AppState,
) {
    let Admitted {
        conn,
        room,
        welcome,
        mut outbound,
        kick,
        membership,
        slot,
        task,
    } = admitted;
    let mut signal = Kicked(kick);
    let welcomed = signal.guard(write_text_frame(&mut io, welcome)).await;
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    let end = match welcomed {
        Ok(()) => serve(&mut ws, &mut signal, &state, conn, &mut outbound, &room).await,
        Err(end) => end,
    };
    tracing::debug!(?end, "connection ending");
    match end {
        End::Gone => {
            let _ = tokio::time::timeout(CLOSE_GRACE, ws.flush()).await;
        }
        End::Close(code, reason) => close_with(&mut ws, code, reason).await,
    }
    drop(membership); // leave the room
    drop(slot);
    drop(task);
}

/// Writes `text` as one unmasked, final text frame (RFC 6455 section 5.2) straight to `io`.
async fn write_text_frame(io: &mut TokioIo<Upgraded>, text: Utf8Bytes) -> std::io::Result<()> {
    let payload = bytes::Bytes::from(text);
    let len = payload.len();
    let mut header = Vec::with_capacity(10);
    header.push(0x81); // FIN, text
    if len < 126 {
        header.push(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        header.push(126);
        header.extend_from_slice(&len.to_be_bytes());
    } else {
        header.push(127);
        header.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let mut frame = bytes::Bytes::from(header).chain(payload);
    io.write_all_buf(&mut frame).await?;
    io.flush().await
}

/// The room's notice that this connection must go, which every wait and write races. (Server
/// shutdown reaches connections through their rooms too, so that no connection polls a
/// process-wide signal on the message path.)
struct Kicked(oneshot::Receiver<Kick>);

impl Kicked {
    /// Waits for the notice.
    async fn fired(&mut self) -> End {
        end_for_kick((&mut self.0).await)
    }

    /// Runs `op` unless the notice comes first.
    async fn guard<T, E>(&mut self, op: impl Future<Output = Result<T, E>>) -> Result<T, End> {
        tokio::select! {
            biased;
            end = self.fired() => Err(end),
            r = op => r.map_err(|_| End::Gone),
        }
    }

    /// The room let go of this connection: its notice says why; none means the room failed.
    async fn room_gone(&mut self) -> End {
        match tokio::time::timeout(CLOSE_GRACE, &mut self.0).await {
            Ok(k) => end_for_kick(k),
            Err(_) => End::Close(close::INTERNAL, "room failed"),
        }
    }
}

async fn serve(
    ws: &mut Socket,
    kicked: &mut Kicked,
    state: &AppState,
    conn: u64,
    outbound: &mut mpsc::Receiver<Utf8Bytes>,
    room: &RoomHandle,
) -> End {
    let shared = &state.0;
    let config = &shared.config;
    let period = config.ping_interval();
    let mut ping = tokio::time::interval_at(Instant::now() + period, period);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_seen = Instant::now();
    let mut limiter = RateLimiter::new(config.message_rate, config.message_burst);

    loop {
        tokio::select! {
            biased;
            end = kicked.fired() => return end,
            frame = outbound.recv() => {
                let Some(frame) = frame else {
                    // The room let go of us; its kick notice (or its absence) says why.
                    return kicked.room_gone().await;
                };
                let batch = async {
                    ws.feed(Message::Text(frame)).await?;
                    for _ in 1..MAX_BATCH {
                        let Ok(next) = outbound.try_recv() else { break };
                        ws.feed(Message::Text(next)).await?;
                    }
                    ws.flush().await
                };
                if let Err(end) = kicked.guard(batch).await {
                    return end;
                }
            }
            msg = ws.next() => {
                last_seen = Instant::now();
                let text = match msg {
                    Some(Ok(Message::Text(text))) => Some(text),
                    Some(Ok(Message::Binary(_))) => None,
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Ok(Message::Close(_))) | None => return End::Gone,
                    Some(Err(e)) => return read_error(e),
                };
                match limiter.check() {
                    Verdict::Allow => {}
                    Verdict::Refuse => {
                        shared.metrics.refused(ErrorCode::RateLimited);
                        let client_id = text.as_deref().and_then(client_id_of);
                        let frame = with_client_id(&shared.errors.rate_limited, client_id.as_deref());
                        if let Err(end) = kicked.guard(ws.send(Message::Text(frame))).await {
                            return end;
                        }
                        continue;
                    }
                    Verdict::Flooding => {
                        shared.metrics.refused(ErrorCode::RateLimited);
                        return End::Close(close::POLICY, "flooding");
                    }
                }
                let refusal = match text.as_deref().map(|t| parse(t, config.max_text_bytes)) {
                    Some(Ok((text, client_id))) => {
                        shared.metrics.messages_in.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if let Err(end) = kicked.guard(room.send(conn, text, client_id)).await {
                            return match end {
                                End::Gone => kicked.room_gone().await,
                                end => end,
                            };
                        }
                        continue;
                    }
                    Some(Err(refused)) => refused,
                    None => (ErrorCode::BadFrame, None),
                };
                shared.metrics.refused(refusal.0);
                let frame = match refusal {
                    (ErrorCode::TextTooLong, id) => {
                        with_client_id(&shared.errors.text_too_long, id.as_deref())
                    }
                    (ErrorCode::InvalidText, id) => {
                        with_client_id(&shared.errors.invalid_text, id.as_deref())
                    }
                    _ => shared.errors.bad_frame.clone(),
                };
                if let Err(end) = kicked.guard(ws.send(Message::Text(frame))).await {
                    return end;
                }
            }
            _ = ping.tick() => {
                if last_seen.elapsed() >= period * 2 {
                    return End::Close(GOING_AWAY, "no answer to pings");
                }
                if let Err(end) = kicked.guard(ws.send(Message::Ping(bytes::Bytes::new()))).await {
                    return end;
                }
            }
        }
    }
}

/// An oversize frame is abuse (1008); any other read error means the socket is unusable.
fn read_error(e: tokio_tungstenite::tungstenite::Error) -> End {
    match e {
        tokio_tungstenite::tungstenite::Error::Capacity(_) => {
            End::Close(close::POLICY, "frame too large")
        }
        _ => End::Gone,
    }
}

/// The refusal of a client frame: its error code and the send's `clientId`, when known.
type Refusal = (ErrorCode, Option<String>);

/// A client `send` frame: its text and clientId, or the refusal.
fn parse(raw: &str, max_text_bytes: usize) -> Result<(String, Option<String>), Refusal> {
    let frame: ClientFrame = serde_json::from_str(raw).map_err(|_| (ErrorCode::BadFrame, None))?;
    match frame {
        ClientFrame::Send { text, client_id } => {
            if client_id
                .as_ref()
                .is_some_and(|c| c.len() > MAX_CLIENT_ID_BYTES)
            {
                return Err((ErrorCode::BadFrame, None));
            }
            if text.len() > max_text_bytes {
                return Err((ErrorCode::TextTooLong, client_id));
            }
            if berth_protocol::text::message_text(&text).is_err() {
                return Err((ErrorCode::InvalidText, client_id));
            }
            Ok((text, client_id))
        }
    }
}

/// The `clientId` of a `send` frame refused before parsing (rate limited), if it has a usable one.
fn client_id_of(raw: &str) -> Option<String> {
    match serde_json::from_str::<ClientFrame>(raw) {
        Ok(ClientFrame::Send {
            client_id: Some(id),
            ..
        }) if id.len() <= MAX_CLIENT_ID_BYTES => Some(id),
        _ => None,
    }
}

/// Sends a close frame and waits (briefly) for the client's answer, so the client reads the code.
async fn close_with(ws: &mut Socket, code: u16, reason: &'static str) {
    let deadline = Instant::now() + CLOSE_GRACE;
    let frame = Message::Close(Some(CloseFrame {
        code: code.into(),
        reason: Utf8Bytes::from_static(reason),
    }));
    if tokio::time::timeout_at(deadline, ws.send(frame))
        .await
        .is_err()
    {
        return;
    }
    // After a read error the stream cannot be read again: the frame on the wire is bad.
    if code == close::POLICY && reason == "frame too large" {
        return;
    }
    while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, ws.next()).await {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_send_frames_and_refuses_the_rest() {
        assert_eq!(
            parse(r#"{"type":"send","text":"hi"}"#, 10),
            Ok(("hi".into(), None))
        );
        assert_eq!(
            parse(r#"{"type":"send","text":"hi","clientId":"c"}"#, 10),
            Ok(("hi".into(), Some("c".into())))
        );
        assert_eq!(
            parse(r#"{"type":"send","text":"hello world"}"#, 10),
            Err((ErrorCode::TextTooLong, None))
        );
        assert_eq!(
            parse(r#"{"type":"send","text":"a\u0000b","clientId":"c"}"#, 10),
            Err((ErrorCode::InvalidText, Some("c".into())))
        );
        assert_eq!(
            parse(r#"{"type":"send","text":"a\nb\tc"}"#, 10),
            Ok(("a\nb\tc".into(), None))
        );
        assert_eq!(parse("nope", 10), Err((ErrorCode::BadFrame, None)));
        assert_eq!(
            parse(r#"{"type":"shout","text":"hi"}"#, 10),
            Err((ErrorCode::BadFrame, None))
        );
        let long_id = format!(
            r#"{{"type":"send","text":"hi","clientId":"{}"}}"#,
            "x".repeat(65)
        );
        assert_eq!(parse(&long_id, 10), Err((ErrorCode::BadFrame, None)));
        // A refusal names the send it refuses, so the sender can mark it undelivered.
        assert_eq!(
            parse(
                r#"{"type":"send","text":"hello world","clientId":"c7"}"#,
                10
            ),
            Err((ErrorCode::TextTooLong, Some("c7".into())))
        );
        assert_eq!(
            client_id_of(r#"{"type":"send","text":"x","clientId":"c8"}"#).as_deref(),
            Some("c8")
        );
        assert_eq!(client_id_of(&long_id), None);
        assert_eq!(client_id_of("nope"), None);
    }
}
