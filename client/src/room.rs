//! [`Room`]: a room membership that survives its connection — it looks the room up again and
//! reconnects (with backoff) when the server goes away or the socket drops, resumes after the
//! last message it saw (`since`), and never shows a message twice.

use std::time::Duration;

use berth_protocol::api::{CreateRoomRequest, MAX_PAGE_LIMIT, RoomTicket};
use berth_protocol::frames::{ChatMessage, ServerFrame, close};

use crate::backend::{Backend, Session};
use crate::connection::{RoomConnection, RoomEvent, Welcome};
use crate::error::{ClientError, Result};

/// How [`Room`] retries after losing its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// Wait before the first attempt (doubled on each failure, with jitter).
    pub initial_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
    /// Failed attempts in a row before giving up with the last error; `None` retries forever.
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectPolicy {
    /// 100 ms, doubling up to 5 s, 20 attempts (about a minute and a half).
    fn default() -> Self {
        ReconnectPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_attempts: Some(20),
        }
    }
}

impl ReconnectPolicy {
    /// The wait before attempt `attempt` (0-based): exponential, capped, with "equal jitter"
    /// (between half and all of it) so that a room's members do not come back in lockstep.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let full = self
            .initial_backoff
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max_backoff);
        full.mul_f64(0.5 + rand::random::<f64>() * 0.5)
    }
}

/// What [`Room::next`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomUpdate {
    /// A live frame. `message` frames are new: their `seq` is above every one seen before.
    Frame(ServerFrame),
    /// The connection was lost and is back. `history` holds only the messages missed meanwhile
    /// (those above the last seen `seq`: the room resumes with `since`), so printing it shows
    /// no duplicates and no gap.
    Reconnected(Welcome),
    /// The connection was just lost and a reconnect follows (only with
    /// [`Room::report_disconnects`]), so that a user can be told at once.
    Disconnected { code: Option<u16>, reason: String },
    /// The room is over for this client (a close that does not invite a reconnect, such as
    /// 1000 or 1008). Every later call returns it again.
    Closed { code: Option<u16>, reason: String },
}

/// A joined room: a [`RoomConnection`] plus what it takes to get it back.
#[derive(Debug)]
pub struct Room {
    backend: Backend,
    session: Session,
    room_id: String,
    conn: Option<RoomConnection>,
    /// The highest message `seq` handed out so far.
    last_seq: u64,
    policy: ReconnectPolicy,
    /// Failed reconnect attempts in a row.
    attempts: u32,
    /// Set when the room is over.
    finished: Option<(Option<u16>, String)>,
    /// Whether [`Room::next`] yields [`RoomUpdate::Disconnected`].
    report_disconnects: bool,
}

impl Room {
    /// Looks `room_id` up and connects. Failures are returned as they are (no retry here).
    pub async fn join(
        backend: Backend,
        session: Session,
        room_id: &str,
    ) -> Result<(Room, Welcome)> {
        let ticket = backend.lookup_room(&session, room_id).await?;
        Self::enter(backend, session, &ticket).await
    }

    /// Creates a room and connects to it; also returns the creation answer.
    pub async fn create(
        backend: Backend,
        session: Session,
        req: &CreateRoomRequest,
    ) -> Result<(Room, RoomTicket, Welcome)> {
        let ticket = backend.create_room(&session, req).await?;
        let (room, welcome) = Self::enter(backend, session, &ticket).await?;
        Ok((room, ticket, welcome))
    }

    /// Connects with a ticket already in hand (from `create_room` or `lookup_room`).
    pub async fn enter(
        backend: Backend,
        session: Session,
        ticket: &RoomTicket,
    ) -> Result<(Room, Welcome)> {
        let (conn, welcome) =
            RoomConnection::connect_with(&ticket.url, &ticket.token, None, backend.tls()).await?;
        let room = Room {
            backend,
            session,
            room_id: ticket.room_id.clone(),
            conn: Some(conn),
            last_seq: welcome.seq,
            policy: ReconnectPolicy::default(),
            attempts: 0,
            finished: None,
            report_disconnects: false,
        };
        Ok((room, welcome))
    }

    /// Replaces the reconnect policy.
    pub fn set_policy(&mut self, policy: ReconnectPolicy) {
        self.policy = policy;
    }

    /// Makes [`Room::next`] yield [`RoomUpdate::Disconnected`] as soon as a connection is lost
    /// (before reconnecting), for clients that show the connection's state.
    pub fn report_disconnects(&mut self, report: bool) {
        self.report_disconnects = report;
    }

    /// The room's id.
    pub fn room_id(&self) -> &str {
        &self.room_id
    }

    /// The highest message `seq` seen (from `welcome` or live).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Whether a connection is up right now (false while reconnecting or once closed).
    pub fn is_connected(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| !c.is_closed())
    }

    /// Sends a message. [`ClientError::NotConnected`] while reconnecting; a failed write drops
    /// the connection, and the next [`Room::next`] reconnects.
    pub async fn send(&mut self, text: &str, client_id: Option<&str>) -> Result<()> {
        let conn = self.conn.as_mut().ok_or(ClientError::NotConnected)?;
        let result = conn.send(text, client_id).await;
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    /// Sends a `read` frame (see [`RoomConnection::send_read`]); errors as [`Room::send`].
    pub async fn send_read(&mut self, seq: u64) -> Result<()> {
        let conn = self.conn.as_mut().ok_or(ClientError::NotConnected)?;
        let result = conn.send_read(seq).await;
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    /// Sends a `typing` frame (see [`RoomConnection::send_typing`]); errors as [`Room::send`].
    pub async fn send_typing(&mut self, active: bool) -> Result<()> {
        let conn = self.conn.as_mut().ok_or(ClientError::NotConnected)?;
        let result = conn.send_typing(active).await;
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    /// The next update, reconnecting as needed. Fails when reconnecting is hopeless (the room
    /// is gone: `room_not_found`; the user token expired: `unauthorized`) or the policy's
    /// attempts ran out. Cancel-safe: it can sit in a `select!` beside other work.
    pub async fn next(&mut self) -> Result<RoomUpdate> {
        loop {
            if let Some((code, reason)) = &self.finished {
                return Ok(RoomUpdate::Closed {
                    code: *code,
                    reason: reason.clone(),
                });
            }
            let Some(conn) = self.conn.as_mut() else {
                match self.reconnect().await {
                    Ok(welcome) => return Ok(RoomUpdate::Reconnected(welcome)),
                    Err(e) => {
                        self.attempts += 1;
                        let hopeless = matches!(
                            e.code(),
                            Some("room_not_found" | "unauthorized" | "invalid_request")
                        );
                        if hopeless
                            || self
                                .policy
                                .max_attempts
                                .is_some_and(|max| self.attempts >= max)
                        {
                            return Err(e);
                        }
                        tracing::debug!(room_id = %self.room_id, attempt = self.attempts, error = %e, "reconnect failed");
                        continue;
                    }
                }
            };
            match conn.recv().await? {
                RoomEvent::Frame(ServerFrame::Message(m)) => {
                    if m.seq <= self.last_seq {
                        continue; // Already shown (replayed around a reconnect).
                    }
                    self.last_seq = m.seq;
                    return Ok(RoomUpdate::Frame(ServerFrame::Message(m)));
                }
                RoomEvent::Frame(frame) => return Ok(RoomUpdate::Frame(frame)),
                RoomEvent::Closed { code, reason } => {
                    self.conn = None;
                    if reconnects_after(code) {
                        tracing::info!(room_id = %self.room_id, ?code, %reason, "connection lost, reconnecting");
                        self.attempts = 0;
                        if self.report_disconnects {
                            return Ok(RoomUpdate::Disconnected { code, reason });
                        }
                    } else {
                        self.finished = Some((code, reason));
                    }
                }
            }
        }
    }

    /// One attempt: wait the backoff, look the room up, connect. `self` changes only once it
    /// succeeded, so cancelling it midway is harmless.
    async fn reconnect(&mut self) -> Result<Welcome> {
        tokio::time::sleep(self.policy.backoff(self.attempts)).await;
        let ticket = self
            .backend
            .lookup_room(&self.session, &self.room_id)
            .await?;
        let (conn, mut welcome) = RoomConnection::connect_with(
            &ticket.url,
            &ticket.token,
            Some(self.last_seq),
            self.backend.tls(),
        )
        .await?;
        if welcome.seq < self.last_seq {
            // The room started over (a new incarnation without the old history): its numbering
            // restarts, so everything it has is new.
            tracing::info!(room_id = %self.room_id, seq = welcome.seq, last_seq = self.last_seq, "room sequence went back");
        } else {
            // The server sends only newer messages; the filter stays as a safety net.
            welcome.history.retain(|m| m.seq > self.last_seq);
            // `welcome` carries a bounded number of bytes: page the older missed ones over HTTP.
            self.fill_gap(&mut welcome.history).await;
        }
        self.last_seq = welcome.seq;
        self.conn = Some(conn);
        self.attempts = 0;
        tracing::info!(room_id = %self.room_id, server_id = %welcome.server_id, "reconnected");
        Ok(welcome)
    }

    /// Prepends to `history` (the newest missed messages) the stored ones between the last seen
    /// `seq` and its first, a page at a time (bounded: a long gap keeps its newest pages). A
    /// failed page leaves the gap as it is: the live stream matters more.
    async fn fill_gap(&self, history: &mut Vec<ChatMessage>) {
        /// Most pages fetched to fill one gap.
        const MAX_PAGES: usize = 20;
        let mut before = match history.first() {
            Some(m) if m.seq > self.last_seq + 1 => m.seq,
            _ => return,
        };
        let mut missed = Vec::new();
        for _ in 0..MAX_PAGES {
            let page = match self
                .backend
                .messages(
                    &self.session,
                    &self.room_id,
                    Some(before),
                    Some(MAX_PAGE_LIMIT),
                )
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(room_id = %self.room_id, error = %e, "cannot page the missed messages");
                    break;
                }
            };
            let Some(first) = page.messages.first().map(|m| m.seq) else {
                break;
            };
            let done = first <= self.last_seq + 1 || !page.has_more;
            missed.splice(
                0..0,
                page.messages.into_iter().filter(|m| m.seq > self.last_seq),
            );
            before = first;
            if done {
                break;
            }
        }
        missed.append(history);
        *history = missed;
    }

    /// Leaves the room (close 1000).
    pub async fn close(self) -> Result<()> {
        match self.conn {
            Some(conn) => conn.close().await,
            None => Ok(()),
        }
    }
}

/// Close codes after which the room is looked up again: the server went away (1001, 1012),
/// failed (1011), asked to come back later (1013), or the socket just dropped (no code, 1006).
fn reconnects_after(code: Option<u16>) -> bool {
    match code {
        None => true,
        Some(code) => {
            matches!(code, 1001 | 1006 | 1013) || code == close::INTERNAL || code == close::RESTART
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let p = ReconnectPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_attempts: None,
        };
        for attempt in 0..40 {
            let full = Duration::from_millis(100)
                .saturating_mul(1 << attempt.min(20))
                .min(Duration::from_secs(5));
            let d = p.backoff(attempt);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
        assert!(p.backoff(30) >= Duration::from_millis(2500));
    }

    #[test]
    fn which_closes_reconnect() {
        assert!(reconnects_after(None));
        assert!(reconnects_after(Some(1012)));
        assert!(reconnects_after(Some(1011)));
        assert!(!reconnects_after(Some(1000)));
        assert!(!reconnects_after(Some(1008)));
    }
}
