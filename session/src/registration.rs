//! The server's side of the scheduler conversation: register (with backoff until it works),
//! heartbeat with the load, register again when the scheduler forgot us, and act on what the
//! heartbeat answers (drain, revoked rooms).

use std::time::Duration;

use berth_protocol::cluster::{Capacity, Heartbeat, HeartbeatAck, RegisterServer, Registered};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::scheduler::{SchedulerClient, SchedulerError};
use crate::state::AppState;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Repeated failures are logged at warn at most this often (the rest at debug).
const WARN_EVERY: Duration = Duration::from_secs(30);

/// Runs until `stop` is cancelled. The caller deregisters afterwards.
pub(crate) async fn run(state: AppState, client: SchedulerClient, stop: CancellationToken) {
    loop {
        let Some(registered) = register(&state, &client, &stop).await else {
            return;
        };
        let interval = Duration::from_millis(registered.heartbeat_interval_ms.clamp(20, 60_000));
        if !heartbeats(&state, &client, &stop, interval).await {
            return;
        }
    }
}

/// Warn once, then at most every [`WARN_EVERY`], about the same ongoing failure.
#[derive(Default)]
struct Throttle(Option<Instant>);

impl Throttle {
    fn should_warn(&mut self) -> bool {
        let now = Instant::now();
        if self.0.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
            self.0 = Some(now);
            true
        } else {
            false
        }
    }
}

async fn register(
    state: &AppState,
    client: &SchedulerClient,
    stop: &CancellationToken,
) -> Option<Registered> {
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0u32;
    let mut throttle = Throttle::default();
    loop {
        let config = &state.0.config;
        let body = RegisterServer {
            server_id: state.server_id().map(|id| id.to_string()),
            url: state.url().to_owned(),
            capacity: Capacity {
                rooms: config.rooms,
                members_per_room: config.members_per_room,
            },
            rooms: state.0.rooms.hosted(),
            connections: state.0.metrics.connections() as u32,
            draining: state.is_draining(),
            pid: Some(std::process::id()),
        };
        let result = tokio::select! {
            () = stop.cancelled() => return None,
            r = client.register(&body) => r,
        };
        attempts += 1;
        match result {
            Ok(registered) if berth_protocol::ids::is_valid_server_id(&registered.server_id) => {
                if let Some(credential) = &registered.credential {
                    client.use_credential(credential);
                }
                state.set_server_id(&registered.server_id);
                state
                    .0
                    .registered
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(
                    server_id = %registered.server_id,
                    url = state.url(),
                    rooms = body.rooms.len(),
                    attempts,
                    "registered with the scheduler"
                );
                return Some(registered);
            }
            Ok(_) => {
                if throttle.should_warn() {
                    tracing::warn!(
                        attempts,
                        "the scheduler answered with an invalid server id; retrying"
                    );
                }
            }
            Err(e) => {
                if throttle.should_warn() {
                    tracing::warn!(error = %e, attempts, "cannot register with the scheduler yet; retrying");
                } else {
                    tracing::debug!(error = %e, attempts, "registration failed");
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Heartbeats until `stop` (→ `false`) or until the scheduler forgot this server (→ `true`:
/// register again).
async fn heartbeats(
    state: &AppState,
    client: &SchedulerClient,
    stop: &CancellationToken,
    interval: Duration,
) -> bool {
    let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut throttle = Throttle::default();
    loop {
        tokio::select! {
            () = stop.cancelled() => return false,
            _ = tick.tick() => {}
        }
        let Some(server_id) = state.server_id() else {
            return true;
        };
        let body = Heartbeat {
            connections: state.0.metrics.connections() as u32,
            rooms: state.0.rooms.hosted(),
            draining: state.is_draining(),
        };
        let result = tokio::select! {
            () = stop.cancelled() => return false,
            r = client.heartbeat(&server_id, &body) => r,
        };
        match result {
            Ok(ack) => {
                throttle = Throttle::default();
                apply(state, ack);
            }
            Err(SchedulerError::UnknownServer) => {
                tracing::warn!(%server_id, "the scheduler does not know this server; registering again");
                return true;
            }
            Err(e) => {
                if throttle.should_warn() {
                    tracing::warn!(%server_id, error = %e, "heartbeat failed");
                }
            }
        }
    }
}

/// Acts on what the scheduler asks in a heartbeat answer.
fn apply(state: &AppState, ack: HeartbeatAck) {
    if ack.drain && !state.is_draining() {
        tracing::info!("the scheduler asked this server to drain");
        state.request_drain();
    }
    for room_id in ack.revoked_rooms {
        if let Some(room) = state.0.rooms.remove(&room_id) {
            tracing::info!(
                room_id,
                "the scheduler placed the room elsewhere; closing it here"
            );
            room.revoke();
        }
    }
}
