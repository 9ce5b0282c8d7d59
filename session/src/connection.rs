//! One admitted WebSocket connection: a single wait over the client's frames, the connection's
//! outbound queue (which also carries the room's ping requests) and the room's kick notice (slow
//! consumer, room revoked, server closing, room failed).
//!
//! Who writes: while the connection waits with nothing queued, its room writes broadcasts to a
//! plain-TCP socket itself (`outbound`: no wake-up per delivery). Otherwise the connection does:
//! a frame from the outbound queue, then every frame already queued behind it (up to
//! [`MAX_BATCH`]), go out in vectored writes straight to the socket (an [`Outbox`]), without
//! copying a payload into a buffer that would keep the capacity of the largest batch for the
//! connection's whole life. Before the connection writes a frame of its own (a pong, a ping, a
//! refusal, the close) it takes the socket back from the room. Every write, the `welcome` first,
//! races the room's kick notice and has a deadline (`--write-timeout-ms`), so a client that
//! stopped reading cannot pin its connection. The client's frames are read by an
//! [`inbound::Reader`], which holds no memory while idle. Control frames spend the connection's
//! frame budget like messages do; protocol violations close with the RFC 6455 code (1002, 1007).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use berth_protocol::ErrorCode;
use berth_protocol::frames::{ClientFrame, MAX_CLIENT_ID_BYTES, close};
use hyper::upgrade::OnUpgrade;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::admission::Admitted;
use crate::inbound::{self, Incoming, ReadError};
use crate::outbound::{Notice, Received};
use crate::outbox::Outbox;
use crate::rate::{RateLimiter, Verdict};
use crate::room::Kick;
use crate::state::{AppState, with_client_id};
use crate::wire::Socket;

/// Most frames written per flush.
const MAX_BATCH: usize = 64;
/// Bound on sending a final close frame and waiting for the client's answer.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// "Going away" (RFC 6455): used when a silent connection is given up.
const GOING_AWAY: u16 = 1001;

/// How the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The socket is gone: nothing more to write.
    Gone,
    /// The client closed (with this code, if any): answer its close.
    Closed(Option<u16>),
    /// Close with this code and reason.
    Close(u16, &'static str),
    /// The client broke the protocol: close with this code and reason, without reading on (the
    /// bytes on the wire cannot be parsed any further).
    Fail(u16, &'static str),
    /// A write missed its deadline: the client does not read.
    Stuck,
}

fn end_for_kick(kick: Option<Kick>) -> End {
    match kick {
        Some(Kick::SlowConsumer) => End::Close(close::POLICY, "slow consumer"),
        Some(Kick::Restart) => End::Close(close::RESTART, "server restarting; reconnect"),
        // The room let go of us without a word: it failed.
        None => End::Close(close::INTERNAL, "room failed"),
    }
}

/// A frame of the connection's own.
enum Own {
    Text(Utf8Bytes),
    Ping,
    Pong(Vec<u8>),
}

/// Runs an admitted connection once its upgrade completes, until it ends, then closes it and
/// leaves the room.
///
/// The connection's future lives as long as the connection, so its size is memory every idle
/// connection holds. The future is an `async` block over its arguments, used in place (an
/// `async fn` copies its arguments into the body, taking their room twice); a [`Conn`] borrows
/// them. The connection waits in a single poll over its sources ([`Conn::poll_event`]), and the
/// futures of what it does then (a batch, a client frame, a ping, the close) are boxed while
/// they run instead of widening every connection's future (an allocation per event costs less
/// than their room in every idle connection).
#[allow(clippy::manual_async_fn)] // An `async fn` would hold its arguments twice.
pub(crate) fn run(
    on_upgrade: OnUpgrade,
    mut admitted: Admitted,
    state: AppState,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        let Some((socket, early)) = Box::pin(upgrade(on_upgrade, &mut admitted, &state)).await
        else {
            return;
        };
        let mut conn = Conn {
            socket,
            reader: inbound::Reader::new(early),
            outbox: Outbox::default(),
            admitted: &mut admitted,
            state: &state,
            last_seen: Instant::now(),
            limiter: None,
        };
        let end = serve(&mut conn).await;
        tracing::debug!(?end, "connection ending");
        Box::pin(conn.close(end)).await;
        // Leave the room, then give back the connection slot and the task.
        drop(admitted.membership);
        drop(admitted.slot);
        drop(admitted.task);
    }
}

/// Completes the upgrade and writes the `welcome`: the socket and the bytes the client sent
/// with its upgrade request, or `None` when the connection is over already. A client that
/// cannot take its welcome in time is dropped at once: the frame is half written, so no close
/// frame can follow it.
async fn upgrade(
    on_upgrade: OnUpgrade,
    admitted: &mut Admitted,
    state: &AppState,
) -> Option<(Socket, Vec<u8>)> {
    let (mut socket, early) = match on_upgrade.await {
        Ok(upgraded) => Socket::new(upgraded),
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return None;
        }
    };
    if let Some(tcp) = socket.tcp() {
        admitted.outbound.lend(tcp);
    }
    let mut outbox = Outbox::default();
    outbox.push(std::mem::take(&mut admitted.welcome));
    let write_timeout = state.0.config.write_timeout();
    let welcome = guard(
        &mut admitted.kick,
        write_timeout,
        outbox.write_to(&mut socket),
    )
    .await;
    if let Err(end) = welcome {
        tracing::debug!(?end, "welcome not written");
        return None;
    }
    Some((socket, early))
}

/// What a connection keeps while it waits for something to do: with the arguments of [`run`],
/// all that an idle connection's task holds.
struct Conn<'a> {
    socket: Socket,
    reader: inbound::Reader,
    outbox: Outbox,
    admitted: &'a mut Admitted,
    state: &'a AppState,
    /// When the client last sent a frame.
    last_seen: Instant,
    /// The client's message rate, from its first frame on: a member that never sends holds
    /// none (a new limiter starts with its whole burst, as one made at connect time would have
    /// by now).
    limiter: Option<Box<RateLimiter>>,
}

/// What ended a connection's wait.
enum Event {
    /// The room's kick notice.
    Kicked(End),
    /// Frames to write, moved into the outbox.
    Batch,
    /// The room let go of the connection.
    RoomGone,
    /// A frame from the client, or why none can be read.
    Frame(Result<Incoming, ReadError>),
    /// The room's ping timer fired.
    Ping,
}

/// What the connection does after handling an event: go on waiting, or end.
type Next = Result<(), End>;

async fn serve(conn: &mut Conn<'_>) -> End {
    loop {
        let next = match std::future::poll_fn(|cx| conn.poll_event(cx)).await {
            Event::Kicked(end) => Err(end),
            Event::RoomGone => Err(Box::pin(room_gone(&mut conn.admitted.kick)).await),
            Event::Batch => Box::pin(conn.write_batch()).await,
            Event::Frame(frame) => Box::pin(conn.on_frame(frame)).await,
            Event::Ping => Box::pin(conn.ping()).await,
        };
        if let Err(end) = next {
            return end;
        }
    }
}

impl Conn<'_> {
    /// Waits for the first of: the room's kick notice, frames queued (the room writes to the
    /// socket itself meanwhile) or the room's ping request, a client frame; in that order of
    /// priority. (The room's ping timer stands in for one per connection.)
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        if let Poll::Ready(kick) = Pin::new(&mut self.admitted.kick).poll(cx) {
            return Poll::Ready(Event::Kicked(end_for_kick(kick)));
        }
        if let Poll::Ready(queued) =
            self.admitted
                .outbound
                .poll_recv_into(cx, &mut self.outbox, MAX_BATCH)
        {
            return Poll::Ready(match queued {
                Received::Frames => Event::Batch,
                Received::Ping => Event::Ping,
                Received::Closed => Event::RoomGone,
            });
        }
        let max = self.state.0.config.max_frame_bytes;
        if let Poll::Ready(frame) = self.reader.poll_next(cx, &mut self.socket, max) {
            return Poll::Ready(Event::Frame(frame));
        }
        Poll::Pending
    }

    /// Writes the batch in the outbox.
    async fn write_batch(&mut self) -> Next {
        let write_timeout = self.state.0.config.write_timeout();
        let batch = self.outbox.write_to(&mut self.socket);
        guard(&mut self.admitted.kick, write_timeout, batch).await
    }

    /// Writes a frame of the connection's own, with the write deadline, unless the room's kick
    /// notice comes first. The socket is taken back from the room first: a frame the room half
    /// wrote, and up to a batch of frames queued behind it, go out before it.
    async fn send_own(&mut self, frame: Own) -> Next {
        self.admitted
            .outbound
            .hold_into(&mut self.outbox, MAX_BATCH);
        match frame {
            Own::Text(text) => self.outbox.push(text),
            Own::Ping => self.outbox.push_ping(),
            Own::Pong(payload) => self.outbox.push_pong(payload),
        }
        let write_timeout = self.state.0.config.write_timeout();
        let write = self.outbox.write_to(&mut self.socket);
        guard(&mut self.admitted.kick, write_timeout, write).await
    }

    /// Pings the client, or gives up on one that has been silent for two ping periods.
    async fn ping(&mut self) -> Next {
        let period = self.state.0.config.ping_interval();
        if self.last_seen.elapsed() >= period * 2 {
            return Err(End::Close(GOING_AWAY, "no answer to pings"));
        }
        self.send_own(Own::Ping).await
    }

    fn check_rate(&mut self) -> Verdict {
        let config = &self.state.0.config;
        self.limiter
            .get_or_insert_with(|| {
                Box::new(RateLimiter::new(config.message_rate, config.message_burst))
            })
            .check()
    }

    /// Handles a client frame: answers pings, refuses what it must (rate, size, shape), and
    /// passes the rest to the room.
    async fn on_frame(&mut self, frame: Result<Incoming, ReadError>) -> Next {
        let shared = &self.state.0;
        let config = &shared.config;
        self.last_seen = Instant::now();
        let text = match frame {
            Ok(Incoming::Text(text)) => Some(text),
            Ok(Incoming::Binary) => None,
            Ok(control @ (Incoming::Ping(_) | Incoming::Pong)) => {
                // Control frames spend the same budget: a ping flood is closed.
                if self.check_rate() == Verdict::Flooding {
                    shared.metrics.refused(ErrorCode::RateLimited);
                    return Err(End::Close(close::POLICY, "flooding"));
                }
                if let Incoming::Ping(payload) = control {
                    return self.send_own(Own::Pong(payload)).await;
                }
                return Ok(());
            }
            Ok(Incoming::Close(code)) => return Err(End::Closed(code)),
            Err(e) => return Err(end_for_read(e)),
        };
        match self.check_rate() {
            Verdict::Allow => {}
            Verdict::Refuse => {
                shared.metrics.refused(ErrorCode::RateLimited);
                let client_id = match text.as_deref().map(refused_frame) {
                    Some(Refused::Send(client_id)) => client_id,
                    // Read and typing state is renewed by the client: no answer.
                    Some(Refused::State) => return Ok(()),
                    None => None,
                };
                let frame = with_client_id(&shared.errors.rate_limited, client_id.as_deref());
                return self.send_own(Own::Text(frame)).await;
            }
            Verdict::Flooding => {
                shared.metrics.refused(ErrorCode::RateLimited);
                return Err(End::Close(close::POLICY, "flooding"));
            }
        }
        let refusal = match text.as_deref().map(|t| parse(t, config.max_text_bytes)) {
            Some(Ok(inbound)) => {
                let conn = self.admitted.membership.conn();
                let room = self.admitted.membership.room();
                let kick = &mut self.admitted.kick;
                let write_timeout = config.write_timeout();
                let sent = match inbound {
                    Inbound::Send { text, client_id } => {
                        shared
                            .metrics
                            .messages_in
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        guard(kick, write_timeout, room.send(conn, text, client_id)).await
                    }
                    Inbound::Read(seq) => guard(kick, write_timeout, room.read(conn, seq)).await,
                    Inbound::Typing(active) => {
                        guard(kick, write_timeout, room.typing(conn, active)).await
                    }
                };
                return match sent {
                    Ok(()) => Ok(()),
                    Err(End::Gone) => Err(room_gone(&mut self.admitted.kick).await),
                    Err(end) => Err(end),
                };
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
        self.send_own(Own::Text(frame)).await
    }

    /// Closes the connection as `end` says. From here the room writes nothing more itself: a
    /// batch it or the connection left half written is finished first (a close frame in the
    /// middle of a frame would be garbage to the client), then the close.
    async fn close(&mut self, end: End) {
        match end {
            // Nothing more can be written to a client that does not read or is gone.
            End::Stuck | End::Gone => {}
            // Answer the client's close with its code (RFC 6455 section 5.5.1).
            End::Closed(code) => {
                self.finish(code, "").await;
            }
            End::Close(code, reason) | End::Fail(code, reason) => {
                let sent = self.finish(Some(code), reason).await;
                // After a read error the stream cannot be read again: the frame on the wire
                // is bad.
                if sent && matches!(end, End::Close(..)) {
                    self.read_close_answer().await;
                }
            }
        }
    }

    /// The connection's last writes, within [`CLOSE_GRACE`]: a frame the room or a batch left
    /// half written, then the close frame (`code` and `reason`; no code, an empty close).
    /// Whether everything went out.
    async fn finish(&mut self, code: Option<u16>, reason: &str) -> bool {
        self.admitted.outbound.hold_into(&mut self.outbox, 0);
        match code {
            Some(code) => self.outbox.push_close(code, reason),
            None => self.outbox.push_empty_close(),
        }
        let write = self.outbox.write_to(&mut self.socket);
        matches!(tokio::time::timeout(CLOSE_GRACE, write).await, Ok(Ok(())))
    }

    /// Waits (briefly) for the client's answer to our close, so that the client reads the code.
    async fn read_close_answer(&mut self) {
        let max = self.state.0.config.max_frame_bytes;
        let deadline = Instant::now() + CLOSE_GRACE;
        loop {
            let read = self.reader.next(&mut self.socket, max);
            let Ok(Ok(incoming)) = tokio::time::timeout_at(deadline, read).await else {
                return;
            };
            if matches!(incoming, Incoming::Close(_)) {
                return;
            }
        }
    }
}

/// Runs the write `op` unless the room's kick notice or the write deadline comes first. (The
/// deadline's timer is only registered when the write does not complete at once.) Every wait
/// and write races the notice; server shutdown reaches connections through their rooms too, so
/// that no connection polls a process-wide signal on the message path.
async fn guard<T, E>(
    kick: &mut Notice,
    write_timeout: Duration,
    op: impl Future<Output = Result<T, E>>,
) -> Result<T, End> {
    tokio::select! {
        biased;
        kick = &mut *kick => Err(end_for_kick(kick)),
        r = tokio::time::timeout(write_timeout, op) => match r {
            Ok(r) => r.map_err(|_| End::Gone),
            Err(_) => Err(End::Stuck),
        },
    }
}

/// The close a read error earns (RFC 6455 section 7.4.1): an oversize frame is abuse (1008),
/// invalid UTF-8 in a text frame 1007, a broken frame (unmasked, oversize control frame, bad
/// opcode or fragmentation) 1002; a socket that ended or failed has nobody left to tell.
fn end_for_read(e: ReadError) -> End {
    match e {
        ReadError::TooLarge => End::Fail(close::POLICY, "frame too large"),
        ReadError::NotUtf8 => End::Fail(close::INVALID_DATA, "text frame is not UTF-8"),
        ReadError::Protocol => End::Fail(close::PROTOCOL, "protocol error"),
        ReadError::Gone => End::Gone,
    }
}

/// The room let go of this connection: its kick notice says why; none (or none in time) means
/// the room failed.
async fn room_gone(kick: &mut Notice) -> End {
    match tokio::time::timeout(CLOSE_GRACE, kick).await {
        Ok(kick) => end_for_kick(kick),
        Err(_) => End::Close(close::INTERNAL, "room failed"),
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
