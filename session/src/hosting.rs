//! The life of the rooms this server hosts: opened on a verified placement ([`room_for`]),
//! supervised (a panic ends one room only), handed over on a drain ([`hand_over_rooms`]) and
//! released to the scheduler when they end. The rooms themselves are `room`; the directory
//! they are found in is `rooms`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use berth_protocol::cluster::ReleaseRoom;
use tracing::Instrument as _;

use crate::error::{self, ApiError};
use crate::room::{self, Exit, RoomHandle, RoomSettings};
use crate::state::AppState;

/// The open room `room_id` at placement `epoch` (a verified ticket's or send token's), opening
/// it when this server owns that placement.
pub(crate) async fn room_for(
    state: &AppState,
    room_id: &str,
    epoch: u64,
) -> Result<RoomHandle, ApiError> {
    let shared = &state.0;
    let standalone = shared.config.standalone;
    let epoch_ok = |room: &RoomHandle| standalone || room.epoch == epoch;
    if let Some(room) = shared.rooms.get(room_id) {
        return if epoch_ok(&room) {
            Ok(room)
        } else {
            Err(error::stale_epoch())
        };
    }
    let epoch = match &shared.scheduler {
        None => epoch,
        Some(scheduler) => {
            let me = state.server_id();
            match scheduler.placement(room_id).await {
                Ok(Some(p)) if Some(p.server_id.as_str()) == me.as_deref() && p.epoch == epoch => {
                    p.epoch
                }
                Ok(_) => {
                    return Err(error::wrong_server("the room is not placed on this server"));
                }
                Err(e) => {
                    tracing::warn!(room_id, error = %e, "cannot look the room up");
                    return Err(error::scheduler_unavailable());
                }
            }
        }
    };
    if state.is_draining() {
        return Err(error::draining());
    }
    let room = shared
        .rooms
        .get_or_open(room_id, shared.config.rooms as usize, |instance| {
            spawn_room(state, Arc::from(room_id), epoch, instance)
        })
        .map_err(|()| error::server_full("no free room slot on this server"))?;
    if epoch_ok(&room) {
        Ok(room)
    } else {
        Err(error::stale_epoch())
    }
}

fn spawn_room(state: &AppState, id: Arc<str>, epoch: u64, instance: u64) -> RoomHandle {
    let shared = &state.0;
    let server_id = state.server_id().unwrap_or_else(|| Arc::from(""));
    let settings = RoomSettings {
        server_id: server_id.clone(),
        members_per_room: shared.config.members_per_room,
        history: shared.config.history,
        welcome_history_bytes: shared.config.welcome_history_bytes,
        idle: shared.config.room_idle(),
        panic_text: shared.panic_text.clone(),
        metrics: shared.metrics.clone(),
        rooms: shared.rooms.clone(),
        durability: shared.durability.clone(),
        draining: shared.draining.clone(),
        close_all: shared.close_all.clone(),
        typing_timeout: shared.config.typing_timeout(),
        ping_interval: shared.config.ping_interval(),
        webhooks: shared.webhooks.clone(),
        fenced: shared.fenced.clone(),
    };
    let (handle, run) = room::new(id.clone(), epoch, instance, settings);
    let span = tracing::info_span!("room", room_id = %id, epoch, server_id = %server_id);
    // The room task itself is not instrumented (its few events name the room): entering a
    // span on every poll would cost on the message path.
    let task = tokio::spawn(run);
    let state = state.clone();
    // The supervisor: a panic ends this room only (its members see 1011).
    shared.tracker.spawn(
        async move {
            tracing::info!("room opened");
            match task.await {
                Ok(Exit::Disposed) => {
                    tracing::info!("room disposed");
                    release(&state, &id, epoch, false).await;
                }
                Ok(Exit::Revoked) => tracing::info!("room revoked; members closed with 1012"),
                Ok(Exit::Shutdown) => tracing::debug!("room closed"),
                Ok(Exit::Unavailable) => {
                    tracing::warn!("room not opened: the store is unavailable")
                }
                Ok(Exit::Fenced) => tracing::warn!("room closed: a newer placement owns it"),
                Err(e) => {
                    state.0.rooms.remove_instance(&id, instance);
                    if e.is_panic() {
                        state.0.metrics.room_panics.fetch_add(1, Ordering::Relaxed);
                        tracing::error!("room panicked; members closed with 1011");
                    }
                    release(&state, &id, epoch, false).await;
                }
            }
        }
        .instrument(span),
    );
    handle
}

/// Hands every open room over to whichever server the scheduler places it on next (a drain
/// with a store): each room stops taking messages and flushes its writes, leaves this
/// server's directory, is released to the scheduler (dormant: its next lookup places it
/// elsewhere), and only then closes its members with 1012, so that they reconnect, look it
/// up, and resume on the new owner. Bounded by `deadline` per room.
pub(crate) async fn hand_over_rooms(state: &AppState, deadline: tokio::time::Instant) {
    let mut handoffs = tokio::task::JoinSet::new();
    for room in state.0.rooms.all() {
        let state = state.clone();
        handoffs.spawn(async move { hand_over(&state, room, deadline).await });
    }
    while handoffs.join_next().await.is_some() {}
}

async fn hand_over(state: &AppState, room: RoomHandle, deadline: tokio::time::Instant) {
    match tokio::time::timeout_at(deadline, room.hand_off()).await {
        Ok(Some(seq)) => {
            tracing::info!(room_id = %room.id, seq, "room flushed; handing it over")
        }
        // It ended by itself (disposed, revoked): nothing to hand over.
        Ok(None) => return,
        Err(_) => {
            tracing::warn!(room_id = %room.id, "room did not flush in time; handing it over anyway")
        }
    }
    if state.0.rooms.remove_instance(&room.id, room.instance) {
        release(state, &room.id, room.epoch, true).await;
        state.0.metrics.handoffs.fetch_add(1, Ordering::Relaxed);
    }
    room.revoke();
}

/// Tells the scheduler this server no longer hosts `room_id` (`handoff`: a drain hands it
/// over live).
async fn release(state: &AppState, room_id: &str, epoch: u64, handoff: bool) {
    let (Some(scheduler), Some(server_id)) = (&state.0.scheduler, state.server_id()) else {
        return;
    };
    let body = ReleaseRoom {
        server_id: server_id.to_string(),
        epoch,
        handoff,
    };
    if let Err(e) = scheduler.release(room_id, &body).await {
        tracing::warn!(room_id, error = %e, "cannot tell the scheduler the room was released");
    }
}
