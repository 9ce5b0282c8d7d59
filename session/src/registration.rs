//! The server's side of the scheduler conversation: register (with backoff until it works),
//! heartbeat with the load, register again when the scheduler forgot us, and act on what the
//! heartbeat answers (drain, revoked rooms).
//!
//! Fencing. Every registration or heartbeat that gets through renews the server's *lease*. The
//! scheduler declares a silent server dead after its heartbeat timeout and may then place the
//! server's rooms elsewhere; a server cut off from the scheduler (while its clients may still
//! reach it) must not keep serving those rooms. So when the lease runs out — [`LEASE_SHARE`] of
//! the timeout after the last renewing request was *sent*, hence before the scheduler can have
//! given up on it — the server is *fenced*: it refuses connections (503 `scheduler_unavailable`)
//! and its rooms accept no message (an `error` naming the `clientId`), but members keep their
//! connections for `--fence-grace-ms`: a scheduler that only stalled answers again within it and
//! nothing was lost. Past the grace the server closes every room (members get 1012 and look the
//! room up again, now on whichever server owns it).

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
/// The lease lasts this share of the scheduler's heartbeat timeout, counted from the sending of
/// the request that renewed it: the rest is the margin by which the server stops serving before
/// the scheduler may place its rooms elsewhere.
const LEASE_SHARE: f64 = 0.75;

/// Runs until `stop` is cancelled. The caller deregisters afterwards.
pub(crate) async fn run(state: AppState, client: SchedulerClient, stop: CancellationToken) {
    let mut lease = Lease::default();
    loop {
        let Some(registered) = register(&state, &client, &stop, &mut lease).await else {
            return;
        };
        let interval = Duration::from_millis(registered.heartbeat_interval_ms.clamp(20, 60_000));
        if !heartbeats(&state, &client, &stop, interval, &mut lease).await {
            return;
        }
    }
}

/// How long this server may keep serving without hearing from the scheduler.
#[derive(Default)]
struct Lease {
    /// `None` until a scheduler named its heartbeat timeout (older schedulers do not).
    length: Option<Duration>,
    /// When the request that last renewed it was sent.
    renewed: Option<Instant>,
    /// Since when the server is fenced, while its rooms still keep their members.
    fenced_at: Option<Instant>,
}

impl Lease {
    /// When the next step is due: the lease running out (→ fenced), then the grace of a fenced
    /// server running out (→ rooms closed); `None` without a lease or once both happened.
    fn deadline(&self, state: &AppState) -> Option<Instant> {
        if state.is_fenced() {
            return Some(self.fenced_at? + state.0.config.fence_grace());
        }
        Some(self.renewed? + self.length?)
    }

    /// The deadline passed: fence the server, or close its rooms at the end of the grace.
    fn expire(&mut self, state: &AppState) {
        if state.is_fenced() {
            self.fenced_at = None;
            close_rooms(state, "still no answer from the scheduler");
        } else {
            self.fenced_at = Some(Instant::now());
            fence(state);
        }
    }

    /// A request sent at `sent` got through: the lease runs again, and a fenced server serves
    /// again.
    fn renew(&mut self, state: &AppState, sent: Instant, timeout_ms: Option<u64>) {
        if let Some(ms) = timeout_ms {
            self.length = Some(Duration::from_millis(ms).mul_f64(LEASE_SHARE));
        }
        self.renewed = Some(sent);
        self.fenced_at = None;
        if state
            .0
            .fenced
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::info!("the scheduler answers again; accepting connections");
        }
    }
}

/// Resolves when `deadline` passes; never without one.
async fn expiry(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The lease ran out: refuse connections and messages until it is renewed; members stay for
/// the grace.
fn fence(state: &AppState) {
    state
        .0
        .fenced
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::warn!(
        rooms = state.0.rooms.all().len(),
        grace_ms = state.0.config.fence_grace_ms,
        "no answer from the scheduler within the lease; refusing connections and messages until it answers"
    );
}

/// Closes every room (1012), so that members look their rooms up again: a fenced server's grace
/// ran out, or the scheduler forgot the server while it was fenced (its rooms may have moved).
fn close_rooms(state: &AppState, why: &'static str) {
    let rooms = state.0.rooms.all();
    tracing::warn!(rooms = rooms.len(), "{why}; closing every room");
    for room in rooms {
        if state.0.rooms.remove_instance(&room.id, room.instance) {
            room.revoke();
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
    lease: &mut Lease,
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
            admin_url: state.admin_url().map(str::to_owned),
        };
        let sent = Instant::now();
        let result = tokio::select! {
            () = stop.cancelled() => return None,
            r = client.register(&body) => r,
            () = expiry(lease.deadline(state)) => {
                lease.expire(state);
                continue;
            }
        };
        attempts += 1;
        match result {
            Ok(registered) if berth_protocol::ids::is_valid_server_id(&registered.server_id) => {
                if state.is_fenced() {
                    // Registering again means the scheduler forgot this server while it was
                    // fenced: any of its rooms may be placed elsewhere by now. Closed before
                    // the lease is renewed, so that none of them takes a message meanwhile.
                    close_rooms(
                        state,
                        "the scheduler forgot this server while it was fenced",
                    );
                }
                if let Some(credential) = &registered.credential {
                    client.use_credential(credential);
                }
                lease.renew(state, sent, registered.heartbeat_timeout_ms);
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
            () = expiry(lease.deadline(state)) => lease.expire(state),
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
    lease: &mut Lease,
) -> bool {
    let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut throttle = Throttle::default();
    loop {
        tokio::select! {
            () = stop.cancelled() => return false,
            _ = tick.tick() => {}
            () = expiry(lease.deadline(state)) => {
                lease.expire(state);
                continue;
            }
        }
        let Some(server_id) = state.server_id() else {
            return true;
        };
        let body = Heartbeat {
            connections: state.0.metrics.connections() as u32,
            rooms: state.0.rooms.hosted(),
            draining: state.is_draining(),
        };
        let sent = Instant::now();
        let result = tokio::select! {
            () = stop.cancelled() => return false,
            r = client.heartbeat(&server_id, &body) => r,
            () = expiry(lease.deadline(state)) => {
                lease.expire(state);
                continue;
            }
        };
        match result {
            Ok(ack) => {
                lease.renew(state, sent, None);
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
