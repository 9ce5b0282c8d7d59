//! One admitted WebSocket connection: a single `select!` loop over the client's frames, the
//! connection's outbound queue, a ping timer and the room's kick notice (slow consumer, room
//! revoked, server closing, room failed).
//!
//! Who writes: while the connection waits with nothing queued, its room writes broadcasts to a
//! plain-TCP socket itself (`outbound`: no wake-up per delivery). Otherwise the connection does:
//! a frame from the outbound queue, then every frame already queued behind it (up to
//! [`MAX_BATCH`]), go out in vectored writes straight to the socket (an [`Outbox`]), without
//! copying a payload into a buffer that would keep the capacity of the largest batch for the
//! connection's whole life. Tungstenite only reads: the frames it would write (pongs, pings,
//! refusals, the close) are captured ([`Wire`]) and go out through the outbox after the
//! connection took the socket back from the room. Every write, the `welcome` first, races the
//! room's kick notice and has a deadline (`--write-timeout-ms`), so a client that stopped reading
//! cannot pin its connection. Control frames spend the connection's frame budget like messages
//! do; protocol violations close with the RFC 6455 code (1002, 1007).

use std::time::Duration;

use berth_protocol::ErrorCode;
use berth_protocol::frames::{ClientFrame, MAX_CLIENT_ID_BYTES, close};
use futures_util::{SinkExt as _, StreamExt as _};
use hyper::upgrade::OnUpgrade;
use tokio::sync::oneshot;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::Config;
use crate::admission::Admitted;
use crate::outbound;
use crate::outbox::Outbox;
use crate::rate::{RateLimiter, Verdict};
use crate::room::{Kick, RoomHandle};
use crate::state::{AppState, with_client_id};
use crate::wire::{Socket, Wire};

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
    /// The client broke the protocol: close with this code and reason, without reading on (the
    /// bytes on the wire cannot be parsed any further).
    Fail(u16, &'static str),
    /// A write missed its deadline: the client does not read.
    Stuck,
}

fn end_for_kick(kick: Result<Kick, oneshot::error::RecvError>) -> End {
    match kick {
        Ok(Kick::SlowConsumer) => End::Close(close::POLICY, "slow consumer"),
        Ok(Kick::Restart) => End::Close(close::RESTART, "server restarting; reconnect"),
        // The room dropped us without a word: it failed.
        Err(_) => End::Close(close::INTERNAL, "room failed"),
    }
}

/// The WebSocket as the connection reads it (see [`Wire`]).
type Ws = WebSocketStream<Wire>;

/// Bytes read from the socket per call. Every connection holds this much for its life
/// (tungstenite's default, 128 KiB, wastes memory with thousands of mostly idle connections).
/// Client frames are small; a larger one (up to `--max-frame-bytes`) grows the buffer on demand.
const READ_BUFFER: usize = 512;

/// How tungstenite reads frames. (What it writes is captured; see [`Wire`].)
fn ws_config(config: &Config) -> WebSocketConfig {
    let max_frame = config.max_frame_bytes;
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
}

/// Runs an admitted connection once its upgrade completes, until it ends, then closes it and
/// leaves the room.
///
/// The connection's future lives as long as the connection, so its size is memory every idle
/// connection holds: `admitted` is used in place rather than destructured (a moved argument
/// would take its room twice), and the futures of writes and rare events (a batch, a client
/// frame, a ping, the close) are boxed while they run instead of widening every connection's
/// future (an allocation per batch costs less than their room in every idle connection).
pub(crate) async fn run(on_upgrade: OnUpgrade, mut admitted: Admitted, state: AppState) {
    let (mut socket, early) = match on_upgrade.await {
        Ok(upgraded) => Socket::new(upgraded),
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    if let Some(tcp) = socket.tcp() {
        admitted.outbound.lend(tcp);
    }
    let mut signal = Kicked {
        kick: &mut admitted.kick,
        write_timeout: state.0.config.write_timeout(),
    };
    // A client that cannot take its welcome in time is dropped at once: the frame is half
    // written, so no close frame can follow it.
    let mut outbox = Outbox::default();
    outbox.push(std::mem::take(&mut admitted.welcome));
    if let Err(end) = Box::pin(signal.guard(outbox.write_to(&mut socket))).await {
        tracing::debug!(?end, "welcome not written");
        return;
    }
    let config = Some(ws_config(&state.0.config));
    let wire = Wire::new(socket);
    let mut ws = if early.is_empty() {
        WebSocketStream::from_raw_socket(wire, Role::Server, config).await
    } else {
        WebSocketStream::from_partially_read(wire, early, Role::Server, config).await
    };
    let outbound = &mut admitted.outbound;
    let end = serve(
        &mut ws,
        &mut outbox,
        &mut signal,
        &state,
        admitted.conn,
        outbound,
        &admitted.room,
    )
    .await;
    tracing::debug!(?end, "connection ending");
    // From here the room writes nothing more itself: a batch it or the connection left half
    // written is finished first (a close frame in the middle of a frame would be garbage to the
    // client), then the close.
    match end {
        // Nothing more can be written to a client that does not read.
        End::Stuck => {}
        // Tungstenite answered the client's close (or there is nobody left to answer).
        End::Gone => {
            let _ = ws.flush().await;
            let _ = Box::pin(finish(&mut ws, &mut outbox, outbound, None)).await;
        }
        End::Close(code, reason) | End::Fail(code, reason) => {
            let frame = Message::Close(Some(CloseFrame {
                code: code.into(),
                reason: Utf8Bytes::from_static(reason),
            }));
            let sent = Box::pin(finish(&mut ws, &mut outbox, outbound, Some(frame))).await;
            // After a read error the stream cannot be read again: the frame on the wire is bad.
            if sent && matches!(end, End::Close(..)) {
                Box::pin(read_close_answer(&mut ws)).await;
            }
        }
    }
    // Leave the room, then give back the connection slot and the task.
    drop(admitted.membership);
    drop(admitted.slot);
    drop(admitted.task);
}

/// Takes the socket back from the room and queues what the connection writes of its own behind
/// what the room queued (a frame it half wrote, then up to `queued` frames in all): `frame` (a refusal, a ping, the close),
/// and whatever tungstenite wrote meanwhile (pongs, its answer to a client's close).
async fn own_frames(
    ws: &mut Ws,
    outbox: &mut Outbox,
    outbound: &mut outbound::Receiver,
    queued: usize,
    frame: Option<Message>,
) {
    outbound.hold_into(outbox, queued);
    if let Some(frame) = frame {
        // Tungstenite encodes it into its capture at once; it refuses only after a close.
        let _ = ws.send(frame).await;
    }
    if let Some(bytes) = ws.get_mut().take_captured() {
        outbox.push_encoded(bytes);
    }
}

/// Writes something of the connection's own (see [`own_frames`]) with the write deadline, unless
/// the room's kick notice comes first.
async fn send_own(
    ws: &mut Ws,
    outbox: &mut Outbox,
    outbound: &mut outbound::Receiver,
    kicked: &mut Kicked<'_>,
    frame: Option<Message>,
) -> Result<(), End> {
    own_frames(ws, outbox, outbound, MAX_BATCH, frame).await;
    kicked
        .guard(outbox.write_to(&mut ws.get_mut().socket))
        .await
}

/// The connection's last writes, within [`CLOSE_GRACE`]: a frame the room or a batch left half
/// written, then `frame` (the close). Whether everything went out.
async fn finish(
    ws: &mut Ws,
    outbox: &mut Outbox,
    outbound: &mut outbound::Receiver,
    frame: Option<Message>,
) -> bool {
    own_frames(ws, outbox, outbound, 0, frame).await;
    let write = outbox.write_to(&mut ws.get_mut().socket);
    matches!(tokio::time::timeout(CLOSE_GRACE, write).await, Ok(Ok(())))
}

/// Waits (briefly) for the client's answer to our close, so that the client reads the code.
async fn read_close_answer(ws: &mut Ws) {
    let deadline = Instant::now() + CLOSE_GRACE;
    while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, ws.next()).await {}
}

/// The room's notice that this connection must go, which every wait and write races, and the
/// deadline of every write. (Server shutdown reaches connections through their rooms too, so
/// that no connection polls a process-wide signal on the message path.)
struct Kicked<'a> {
    kick: &'a mut oneshot::Receiver<Kick>,
    write_timeout: Duration,
}

impl Kicked<'_> {
    /// Waits for the notice.
    async fn fired(&mut self) -> End {
        end_for_kick((&mut *self.kick).await)
    }

    /// Runs the write `op` unless the notice or the write deadline comes first. (The deadline's
    /// timer is only registered when the write does not complete at once.)
    async fn guard<T, E>(&mut self, op: impl Future<Output = Result<T, E>>) -> Result<T, End> {
        let write_timeout = self.write_timeout;
        tokio::select! {
            biased;
            end = self.fired() => Err(end),
            r = tokio::time::timeout(write_timeout, op) => match r {
                Ok(r) => r.map_err(|_| End::Gone),
                Err(_) => Err(End::Stuck),
            },
        }
    }

    /// The room let go of this connection: its notice says why; none means the room failed.
    async fn room_gone(&mut self) -> End {
        match tokio::time::timeout(CLOSE_GRACE, &mut *self.kick).await {
            Ok(k) => end_for_kick(k),
            Err(_) => End::Close(close::INTERNAL, "room failed"),
        }
    }
}

async fn serve(
    ws: &mut Ws,
    outbox: &mut Outbox,
    kicked: &mut Kicked<'_>,
    state: &AppState,
    conn: u64,
    outbound: &mut outbound::Receiver,
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
            queued = outbound.recv_into(outbox, MAX_BATCH) => {
                if queued.is_none() {
                    // The room let go of us; its kick notice (or its absence) says why.
                    return Box::pin(kicked.room_gone()).await;
                }
                let batch = outbox.write_to(&mut ws.get_mut().socket);
                if let Err(end) = Box::pin(kicked.guard(batch)).await {
                    return end;
                }
            }
            msg = ws.next() => {
                last_seen = Instant::now();
                let text = match msg {
                    Some(Ok(Message::Text(text))) => Some(text),
                    Some(Ok(Message::Binary(_))) => None,
                    Some(Ok(control @ (Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => {
                        // Control frames spend the same budget: a ping flood is closed.
                        if limiter.check() == Verdict::Flooding {
                            shared.metrics.refused(ErrorCode::RateLimited);
                            return End::Close(close::POLICY, "flooding");
                        }
                        if matches!(control, Message::Ping(_)) {
                            // Tungstenite's pong is written on its next write: now.
                            let _ = ws.flush().await;
                            if let Err(end) = Box::pin(send_own(ws, outbox, outbound, kicked, None)).await {
                                return end;
                            }
                        }
                        continue;
                    }
                    Some(Ok(Message::Close(_))) | None => return End::Gone,
                    Some(Err(e)) => return read_error(e),
                };
                match limiter.check() {
                    Verdict::Allow => {}
                    Verdict::Refuse => {
                        shared.metrics.refused(ErrorCode::RateLimited);
                        let client_id = match text.as_deref().map(refused_frame) {
                            Some(Refused::Send(client_id)) => client_id,
                            // Read and typing state is renewed by the client: no answer.
                            Some(Refused::State) => continue,
                            None => None,
                        };
                        let frame = with_client_id(&shared.errors.rate_limited, client_id.as_deref());
                        if let Err(end) = Box::pin(send_own(ws, outbox, outbound, kicked, Some(Message::Text(frame)))).await {
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
                    Some(Ok(inbound)) => {
                        let sent = match inbound {
                            Inbound::Send { text, client_id } => {
                                shared.metrics.messages_in.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                Box::pin(kicked.guard(room.send(conn, text, client_id))).await
                            }
                            Inbound::Read(seq) => Box::pin(kicked.guard(room.read(conn, seq))).await,
                            Inbound::Typing(active) => Box::pin(kicked.guard(room.typing(conn, active))).await,
                        };
                        if let Err(end) = sent {
                            return match end {
                                End::Gone => Box::pin(kicked.room_gone()).await,
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
                if let Err(end) = Box::pin(send_own(ws, outbox, outbound, kicked, Some(Message::Text(frame)))).await {
                    return end;
                }
            }
            _ = ping.tick() => {
                if last_seen.elapsed() >= period * 2 {
                    return End::Close(GOING_AWAY, "no answer to pings");
                }
                let ping = Message::Ping(bytes::Bytes::new());
                if let Err(end) = Box::pin(send_own(ws, outbox, outbound, kicked, Some(ping))).await {
                    return end;
                }
            }
        }
    }
}

/// The close a read error earns (RFC 6455 section 7.4.1): an oversize frame is abuse (1008),
/// invalid UTF-8 in a text frame 1007, a broken frame (unmasked, oversize control frame, bad
/// opcode or fragmentation) 1002; any other error means the socket is unusable.
fn read_error(e: tokio_tungstenite::tungstenite::Error) -> End {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Capacity(_) => End::Fail(close::POLICY, "frame too large"),
        Error::Utf8(_) => End::Fail(close::INVALID_DATA, "text frame is not UTF-8"),
        Error::Protocol(p) => match p {
            // The peer is gone, or closed: there is nobody to tell.
            ProtocolError::ResetWithoutClosingHandshake
            | ProtocolError::ReceivedAfterClosing
            | ProtocolError::SendAfterClosing => End::Gone,
            _ => End::Fail(close::PROTOCOL, "protocol error"),
        },
        _ => End::Gone,
    }
}

/// What a client frame asks of the room.
#[derive(Debug, PartialEq, Eq)]
enum Inbound {
    Send {
        text: String,
        client_id: Option<String>,
    },
    Read(u64),
    Typing(bool),
}

/// The refusal of a client frame: its error code and the send's `clientId`, when known.
type Refusal = (ErrorCode, Option<String>);

/// A client frame (each counts against the connection's rate like a `send`), or the refusal
/// (with the send's `clientId`, when known).
fn parse(raw: &str, max_text_bytes: usize) -> Result<Inbound, Refusal> {
    let frame: ClientFrame = serde_json::from_str(raw).map_err(|_| (ErrorCode::BadFrame, None))?;
    match frame {
        ClientFrame::Read { seq } => Ok(Inbound::Read(seq)),
        ClientFrame::Typing { active } => Ok(Inbound::Typing(active)),
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
            Ok(Inbound::Send { text, client_id })
        }
    }
}

/// A frame refused before parsing (rate limited), as far as its answer goes.
#[derive(Debug, PartialEq)]
enum Refused {
    /// A `send` (or anything unreadable): answered `rate_limited`, naming its `clientId` when it
    /// has a usable one.
    Send(Option<String>),
    /// `read` or `typing`: state the client renews, dropped without an answer.
    State,
}

fn refused_frame(raw: &str) -> Refused {
    match serde_json::from_str::<ClientFrame>(raw) {
        Ok(ClientFrame::Send { client_id, .. }) => {
            Refused::Send(client_id.filter(|id| id.len() <= MAX_CLIENT_ID_BYTES))
        }
        Ok(ClientFrame::Read { .. } | ClientFrame::Typing { .. }) => Refused::State,
        _ => Refused::Send(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::io::AsyncWriteExt as _;

    proptest! {
        /// Any text a client may send is a message or a refusal from the documented list.
        #[test]
        fn any_text_is_a_send_or_a_documented_refusal(raw in ".{0,200}", max in 1usize..64) {
            match parse(&raw, max) {
                Ok(Inbound::Send { text, client_id }) => {
                    prop_assert!(text.len() <= max);
                    prop_assert!(client_id.is_none_or(|c| c.len() <= MAX_CLIENT_ID_BYTES));
                }
                Ok(Inbound::Read(_) | Inbound::Typing(_)) => {}
                Err((code, _)) => prop_assert!(matches!(
                    code,
                    ErrorCode::BadFrame | ErrorCode::TextTooLong | ErrorCode::InvalidText
                )),
            }
        }

        /// Any JSON object with a `type` is a message or a documented refusal.
        #[test]
        fn any_json_is_a_send_or_a_documented_refusal(
            kind in prop_oneof![Just("send".to_owned()), ".{0,8}"],
            text in proptest::option::of(".{0,80}"),
            client_id in proptest::option::of(".{0,80}"),
            extra in proptest::option::of(any::<i64>()),
        ) {
            let mut v = serde_json::json!({"type": kind});
            if let Some(t) = text { v["text"] = t.into(); }
            if let Some(c) = client_id { v["clientId"] = c.into(); }
            if let Some(x) = extra { v["text2"] = x.into(); }
            let r = parse(&v.to_string(), 40);
            prop_assert!(matches!(
                r,
                Ok(_) | Err((ErrorCode::BadFrame | ErrorCode::TextTooLong | ErrorCode::InvalidText, _))
            ));
        }

        /// Arbitrary bytes from a client, read as a server-side WebSocket: every frame is read or
        /// ends the connection with a documented close code, and nothing panics.
        #[test]
        fn arbitrary_bytes_end_with_a_documented_close(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let ends = rt.block_on(async move {
                let (mut client, server) = tokio::io::duplex(4096);
                client.write_all(&bytes).await.unwrap();
                drop(client);
                let config = WebSocketConfig::default()
                    .max_message_size(Some(256))
                    .max_frame_size(Some(256));
                let mut ws = WebSocketStream::from_raw_socket(server, Role::Server, Some(config)).await;
                let mut ends = Vec::new();
                for _ in 0..64 {
                    match ws.next().await {
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => { ends.push(read_error(e)); break; }
                        None => break,
                    }
                }
                ends
            });
            for end in ends {
                prop_assert!(matches!(
                    end,
                    End::Gone
                        | End::Fail(close::POLICY | close::PROTOCOL | close::INVALID_DATA, _)
                ), "{end:?}");
            }
        }
    }

    #[test]
    fn parses_send_frames_and_refuses_the_rest() {
        let send = |text: &str, client_id: Option<&str>| Inbound::Send {
            text: text.into(),
            client_id: client_id.map(Into::into),
        };
        assert_eq!(
            parse(r#"{"type":"send","text":"hi"}"#, 10),
            Ok(send("hi", None))
        );
        assert_eq!(
            parse(r#"{"type":"send","text":"hi","clientId":"c"}"#, 10),
            Ok(send("hi", Some("c")))
        );
        assert_eq!(
            parse(r#"{"type":"read","seq":3}"#, 10),
            Ok(Inbound::Read(3))
        );
        assert_eq!(
            parse(r#"{"type":"typing","active":true}"#, 10),
            Ok(Inbound::Typing(true))
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
            Ok(send("a\nb\tc", None))
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
            refused_frame(r#"{"type":"send","text":"x","clientId":"c8"}"#),
            Refused::Send(Some("c8".into()))
        );
        assert_eq!(refused_frame(&long_id), Refused::Send(None));
        assert_eq!(refused_frame("nope"), Refused::Send(None));
        // Read and typing state over the budget is dropped, not answered.
        assert_eq!(
            refused_frame(r#"{"type":"typing","active":true}"#),
            Refused::State
        );
        assert_eq!(refused_frame(r#"{"type":"read","seq":3}"#), Refused::State);
    }
}
