//! [`RoomConnection`]: one WebSocket connection to the session server hosting a room.

use std::time::Duration;

use berth_protocol::api::RoomTicket;
use berth_protocol::frames::{ChatMessage, ClientFrame, ServerFrame, User};
use futures_util::{SinkExt, StreamExt};
use reqwest::Url;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::error::{ClientError, Result};
use crate::tls::Tls;

/// How long opening a connection (TCP, upgrade and `welcome`) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`RoomConnection::close`] waits for the server's side of the close handshake.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest frame accepted from a server (a `welcome` with 100 messages of history is ~0.5 MiB).
const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// The `welcome` frame, always the first of a connection, as a struct of its own so that
/// callers need not destructure [`ServerFrame::Welcome`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub room_id: String,
    /// This connection's user.
    pub you: User,
    /// Everyone present, including `you`.
    pub members: Vec<User>,
    /// Recent messages, oldest first.
    pub history: Vec<ChatMessage>,
    /// The room's latest message sequence number (0 before the first message).
    pub seq: u64,
    /// The session server hosting the room (informational).
    pub server_id: String,
    /// The room's placement epoch on that server (absent from older servers).
    pub epoch: Option<u64>,
    /// Stored read positions of the room's members, furthest first.
    pub reads: Vec<berth_protocol::frames::ReadPosition>,
}

impl TryFrom<ServerFrame> for Welcome {
    type Error = ServerFrame;

    /// `Ok` for a `welcome` frame; any other frame is handed back.
    fn try_from(frame: ServerFrame) -> Result<Self, ServerFrame> {
        match frame {
            ServerFrame::Welcome {
                room_id,
                you,
                members,
                history,
                seq,
                server_id,
                epoch,
                reads,
            } => Ok(Welcome {
                room_id,
                you,
                members,
                history,
                seq,
                server_id,
                epoch,
                reads,
            }),
            other => Err(other),
        }
    }
}

/// What [`RoomConnection::recv`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomEvent {
    /// A frame from the server (`message`, `joined`, `left`, `error`).
    Frame(ServerFrame),
    /// The connection is over. `code` is the close code the server sent (1008 abuse, 1011
    /// internal error, 1012 server going away: look the room up again); `None` when it ended
    /// without a close frame (dropped socket, reset, protocol error; `reason` says which).
    /// Every later `recv` returns the same event.
    Closed { code: Option<u16>, reason: String },
}

/// A connection to a room, opened with a ticket. Reading keeps it alive: pings are answered
/// (and the answers flushed) inside [`RoomConnection::recv`], so keep a `recv` running.
pub struct RoomConnection {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Set once the connection is over; replayed by later `recv`s.
    closed: Option<(Option<u16>, String)>,
}

impl std::fmt::Debug for RoomConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomConnection")
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl RoomConnection {
    /// Opens `url` (a room's `ws://` URL) with `?token=<ticket>` appended (kept alongside any
    /// query it already has), and reads the first frame, which must be `welcome`.
    ///
    /// A refusal before the upgrade (401 `invalid_ticket`, 421 `wrong_server`, 409 `room_full`,
    /// 503 `server_draining`, …) is [`ClientError::Api`] with the server's code. The whole
    /// opening is bounded by [`CONNECT_TIMEOUT`] ([`ClientError::Timeout`]).
    pub async fn connect(url: &str, ticket: &str) -> Result<(RoomConnection, Welcome)> {
        Self::connect_since(url, ticket, None).await
    }

    /// [`RoomConnection::connect`] resuming after message `since`: the `welcome`'s `history`
    /// then holds exactly the messages with a greater `seq` (at most 1000, the newest; page
    /// older ones with [`crate::Backend::messages`]), whether the room is on the same server as
    /// before or was moved.
    pub async fn connect_since(
        url: &str,
        ticket: &str,
        since: Option<u64>,
    ) -> Result<(RoomConnection, Welcome)> {
        Self::connect_with(url, ticket, since, &Tls::default()).await
    }

    /// [`RoomConnection::connect_since`] trusting `tls` on a `wss://` URL.
    pub async fn connect_with(
        url: &str,
        ticket: &str,
        since: Option<u64>,
        tls: &Tls,
    ) -> Result<(RoomConnection, Welcome)> {
        let mut url =
            Url::parse(url).map_err(|e| ClientError::InvalidUrl(format!("{url}: {e}")))?;
        if !matches!(url.scheme(), "ws" | "wss") {
            return Err(ClientError::InvalidUrl(format!(
                "{url}: not a ws:// or wss:// URL"
            )));
        }
        url.query_pairs_mut().append_pair("token", ticket);
        if let Some(since) = since {
            url.query_pairs_mut()
                .append_pair(berth_protocol::frames::SINCE_PARAM, &since.to_string());
        }
        tokio::time::timeout(CONNECT_TIMEOUT, Self::open(url, tls))
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    /// [`RoomConnection::connect`] with a ticket from the backend.
    pub async fn connect_ticket(ticket: &RoomTicket) -> Result<(RoomConnection, Welcome)> {
        Self::connect(&ticket.url, &ticket.token).await
    }

    async fn open(url: Url, tls: &Tls) -> Result<(RoomConnection, Welcome)> {
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES));
        let connector = tokio_tungstenite::Connector::Rustls(tls.client_config());
        let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
            url.as_str(),
            Some(config),
            true,
            Some(connector),
        )
        .await?;
        let mut conn = RoomConnection { ws, closed: None };
        match conn.recv().await? {
            RoomEvent::Frame(frame) => match Welcome::try_from(frame) {
                Ok(welcome) => Ok((conn, welcome)),
                Err(other) => Err(ClientError::Protocol(format!(
                    "first frame was not welcome: {other:?}"
                ))),
            },
            RoomEvent::Closed { code, reason } => Err(ClientError::Closed { code, reason }),
        }
    }

    /// Sends a `send` frame. `client_id` comes back in the echoed `message` so the sender can
    /// match it (at most 64 bytes).
    pub async fn send(&mut self, text: &str, client_id: Option<&str>) -> Result<()> {
        let frame = ClientFrame::Send {
            text: text.to_owned(),
            client_id: client_id.map(str::to_owned),
        };
        let json = serde_json::to_string(&frame).map_err(|source| ClientError::Decode {
            what: "send frame",
            source,
        })?;
        self.send_raw(Message::text(json)).await
    }

    /// Sends a `read` frame: this user has read the room up to `seq` (stored; it never moves
    /// backwards, and the others get `read {userId, seq}`).
    pub async fn send_read(&mut self, seq: u64) -> Result<()> {
        self.send_frame(&ClientFrame::Read { seq }).await
    }

    /// Sends a `typing` frame. Renew `true` within [`berth_protocol::frames::TYPING_TIMEOUT_MS`]
    /// or the server ends it; sending a message ends it too.
    pub async fn send_typing(&mut self, active: bool) -> Result<()> {
        self.send_frame(&ClientFrame::Typing { active }).await
    }

    async fn send_frame(&mut self, frame: &ClientFrame) -> Result<()> {
        let json = serde_json::to_string(frame).map_err(|source| ClientError::Decode {
            what: "client frame",
            source,
        })?;
        self.send_raw(Message::text(json)).await
    }

    /// Sends any WebSocket message as is (tests use it for malformed or oversized frames).
    pub async fn send_raw(&mut self, message: Message) -> Result<()> {
        self.ws.send(message).await.map_err(Into::into)
    }

    /// The next frame, or [`RoomEvent::Closed`] once the connection is over. A text frame that
    /// is not a known server frame is [`ClientError::Decode`]; the connection stays usable.
    /// Cancel-safe: dropping the future loses no frame.
    pub async fn recv(&mut self) -> Result<RoomEvent> {
        loop {
            if let Some((code, reason)) = &self.closed {
                return Ok(RoomEvent::Closed {
                    code: *code,
                    reason: reason.clone(),
                });
            }
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(text.as_str())
                        .map(RoomEvent::Frame)
                        .map_err(|source| ClientError::Decode {
                            what: "server frame",
                            source,
                        });
                }
                Some(Ok(Message::Ping(_))) => {
                    // tungstenite queued the pong; push it out now rather than on the next read.
                    if let Err(e) = self.ws.flush().await {
                        self.closed = Some((None, e.to_string()));
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    self.closed = Some(match frame {
                        Some(f) => (Some(u16::from(f.code)), f.reason.to_string()),
                        None => (None, "closed without a code".to_owned()),
                    });
                    // Completes the close handshake (tungstenite queued our reply).
                    let _ = self.ws.flush().await;
                }
                // Pongs, binary and raw frames carry nothing for us.
                Some(Ok(_)) => {}
                Some(Err(e)) => self.closed = Some((None, e.to_string())),
                None => self.closed = Some((None, "connection closed".to_owned())),
            }
        }
    }

    /// [`RoomConnection::recv`] bounded by `timeout` ([`ClientError::Timeout`] when it runs out;
    /// the connection stays usable).
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<RoomEvent> {
        tokio::time::timeout(timeout, self.recv())
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    /// Whether the connection is known to be over.
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// Closes with 1000 and waits (briefly) for the server's side of the handshake.
    pub async fn close(mut self) -> Result<()> {
        if self.closed.is_some() {
            return Ok(());
        }
        let frame = tungstenite::protocol::CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        };
        match self.ws.close(Some(frame)).await {
            Ok(()) => {}
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        let drain = async { while let Some(Ok(_)) = self.ws.next().await {} };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, drain).await;
        Ok(())
    }
}
