//! Whether a connection gets in, decided before the WebSocket upgrade: ticket, drain, process
//! capacity, placement and room limits. A refusal is a plain HTTP answer with the error body.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::http::{HeaderMap, header};
use berth_protocol::claims::TicketClaims;
use berth_protocol::frames::{ChatMessage, MAX_RESUME_MESSAGES, User};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::error::{self, ApiError};
use crate::metrics::Metrics;
use crate::outbound;
use crate::room::{ConnId, JoinError, RoomHandle};
use crate::state::AppState;
use crate::ticket::token_from_request;

/// Times a join is retried when the room ends under it (idle disposal racing the join).
const JOIN_ATTEMPTS: usize = 3;

/// One of the process's `--max-connections` slots, given back on drop.
pub(crate) struct ConnectionSlot(Arc<Metrics>);

impl ConnectionSlot {
    fn acquire(metrics: &Arc<Metrics>, max: u32) -> Option<Self> {
        let before = metrics.connections.fetch_add(1, Ordering::Relaxed);
        if before >= u64::from(max) {
            metrics.connections.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(ConnectionSlot(metrics.clone()))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's place in its room: dropping it tells the room the connection left, whether
/// it ends normally, the upgrade never completes, or its task unwinds.
pub(crate) struct Membership {
    room: RoomHandle,
    conn: ConnId,
    armed: bool,
}

impl Membership {
    fn disarm(mut self) {
        self.armed = false;
    }

    /// The connection's id in its room.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    /// The room.
    pub fn room(&self) -> &RoomHandle {
        &self.room
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.room.leave(self.conn);
    }
}

/// Everything an admitted connection needs once upgraded. (A connection holds it for its whole
/// life: the room and the connection's id are its membership's.)
pub(crate) struct Admitted {
    pub welcome: Utf8Bytes,
    pub outbound: outbound::Receiver,
    pub kick: outbound::Notice,
    pub membership: Membership,
    pub slot: ConnectionSlot,
    pub task: TaskTrackerToken,
}

/// The ticket of a `/ws` or `/sse` request (`?token=`, else `Authorization: Bearer`), verified
/// and spent ([`check_ticket`]): the first check of both transports, before anything else is
/// looked at. The ticket is given back unless the caller [`Spent::keep`]s it once admitted, so
/// a refused attempt (draining, wrong server, room full) leaves it usable for one connection.
pub(crate) fn ticket_from_request(
    state: &AppState,
    query_token: Option<&str>,
    headers: &HeaderMap,
) -> Result<(TicketClaims, Spent), ApiError> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let claims = check_ticket(state, token_from_request(query_token, authorization))?;
    let spent = Spent {
        state: state.clone(),
        jti: Some(claims.jti.clone()),
    };
    Ok((claims, spent))
}

/// A ticket spent by an attempt that is not admitted yet: dropped without [`Spent::keep`], it
/// gives the ticket back.
pub(crate) struct Spent {
    state: AppState,
    jti: Option<String>,
}

impl Spent {
    /// The attempt was admitted: the ticket stays spent.
    pub(crate) fn keep(mut self) {
        self.jti = None;
    }
}

impl Drop for Spent {
    fn drop(&mut self) {
        if let Some(jti) = self.jti.take() {
            self.state.0.used_tickets.give_back(&jti);
        }
    }
}

/// Verifies the ticket and records its id as used (a ticket opens one connection or stream).
pub(crate) fn check_ticket(
    state: &AppState,
    token: Option<&str>,
) -> Result<TicketClaims, ApiError> {
    let server_id = state.server_id();
    let claims = state
        .0
        .verifier
        .verify(token.unwrap_or(""), server_id.as_deref())?;
    if !state
        .0
        .used_tickets
        .first_use(&claims, berth_protocol::now_secs())
    {
        return Err(
            crate::ticket::TicketError::Invalid("ticket already used; fetch a fresh one").into(),
        );
    }
    Ok(claims)
}

/// A private room admits its members only: the ticket names its user, and the store says
/// whether that user belongs to the room (a valid ticket alone is not enough).
async fn check_membership(state: &AppState, claims: &TicketClaims) -> Result<(), ApiError> {
    let Some(durability) = &state.0.durability else {
        return Ok(());
    };
    match durability
        .store
        .room_access(&claims.room, &claims.sub)
        .await
    {
        Ok(Some(access)) if access.private && !access.member => {
            tracing::info!(room_id = %claims.room, user_id = %claims.sub, "not a member of the private room");
            Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                berth_protocol::ErrorCode::NotAMember,
                "this room is private and you are not one of its members",
            ))
        }
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!(room_id = %claims.room, error = %e, "cannot check the room's members");
            Err(error::store_unavailable())
        }
    }
}

/// Admits the holder of verified `claims`: joins it to its room (opening the room if needed).
/// With `since`, its `welcome` resumes after that `seq` (reading the store when the room's
/// memory does not reach back far enough).
pub(crate) async fn admit(
    state: &AppState,
    claims: TicketClaims,
    since: Option<u64>,
) -> Result<Admitted, ApiError> {
    let shared = &state.0;
    if state.is_draining() {
        return Err(error::draining());
    }
    if state.is_fenced() {
        return Err(error::lease_lost());
    }
    let slot = ConnectionSlot::acquire(&shared.metrics, shared.config.max_connections)
        .ok_or_else(|| error::server_full("the server is at its connection limit"))?;
    check_membership(state, &claims).await?;
    let user = User {
        user_id: claims.sub.clone(),
        username: claims.name.clone(),
    };
    let mut prefetched: Option<Vec<ChatMessage>> = None;
    let mut attempts = 0;
    while attempts < JOIN_ATTEMPTS {
        let room = crate::hosting::room_for(state, &claims.room, claims.epoch).await?;
        let conn = state.next_conn_id();
        let (tx, outbound, kick) = outbound::channel(shared.config.outbound_queue);
        let membership = Membership {
            room: room.clone(),
            conn,
            armed: true,
        };
        let joined = room
            .join(conn, user.clone(), tx, since, prefetched.take())
            .await;
        let refusal = match joined {
            Ok(welcome) => {
                shared
                    .metrics
                    .connections_total
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(Admitted {
                    welcome,
                    outbound,
                    kick,
                    membership,
                    slot,
                    task: shared.tracker.token(),
                });
            }
            Err(JoinError::Full(why)) => error::room_full(why),
            Err(JoinError::StoreUnavailable) => error::store_unavailable(),
            Err(JoinError::Fenced) => error::wrong_server("a newer placement owns this room"),
            Err(JoinError::NeedHistory { after, up_to }) => {
                membership.disarm();
                let Some(durability) = &shared.durability else {
                    return Err(error::store_unavailable());
                };
                match durability
                    .store
                    .messages_between(&claims.room, after, up_to, MAX_RESUME_MESSAGES)
                    .await
                {
                    Ok(stored) => prefetched = Some(stored),
                    Err(e) => {
                        tracing::warn!(room_id = %claims.room, error = %e, "cannot read history to resume");
                        return Err(error::store_unavailable());
                    }
                }
                continue;
            }
            Err(JoinError::Gone) => {
                membership.disarm();
                attempts += 1;
                continue;
            }
        };
        membership.disarm();
        return Err(refusal);
    }
    Err(error::server_full("the room is closing; try again"))
}
