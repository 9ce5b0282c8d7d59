//! The fleet loop: the scheduler's background upkeep of its session servers.
//!
//! Every tick it declares silent servers dead (their rooms are orphaned and re-placed on lookup),
//! forgets long-dead entries and orphans, drains managed servers that have
//! been empty for `server_idle_secs` beyond what the warm buffer needs, and spawns servers so
//! that at least `warm_servers × rooms_per_server` room slots are free. A placement wakes it early
//! so the buffer is topped up right away. Failed spawns back the buffer off exponentially, so a
//! broken `--session-bin` does not fork in a tight loop.
//!
//! Silence is evidence only while the scheduler itself demonstrably runs and reads: the loop
//! notices when its own rounds were held up (a SIGSTOP, a frozen VM, a starved host) and then
//! gives every server a full heartbeat timeout from the moment it resumed; and when other
//! servers exist, a server counts as silent only while heartbeats from others keep arriving. A
//! server declared dead that turns out alive registers again and keeps what was not placed
//! elsewhere (the rest is revoked in its heartbeat answers); a managed process is killed only
//! if it stays silent for long after.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth_protocol::cluster::ServerState;
use tokio::time::MissedTickBehavior;
use tracing::{info, warn};

use crate::metrics::{ExitCause, inc};
use crate::registry::{Server, lock, spare_slots};
use crate::spawner;
use crate::state::AppState;

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The scheduler's evidence that it is itself running and reading.
pub struct Vigil {
    /// When the fleet loop last ran a full round.
    last_round: Mutex<Instant>,
    /// When the loop last resumed after a stall: silence before it does not count.
    resumed_at: Mutex<Instant>,
    /// When any server's heartbeat last arrived.
    last_heartbeat: Mutex<Instant>,
}

impl Default for Vigil {
    fn default() -> Self {
        let now = Instant::now();
        Vigil {
            last_round: Mutex::new(now),
            resumed_at: Mutex::new(now),
            last_heartbeat: Mutex::new(now),
        }
    }
}

impl Vigil {
    /// A heartbeat arrived: the scheduler is reading its sockets.
    pub fn heard(&self) {
        *lock(&self.last_heartbeat) = Instant::now();
    }

    /// Records a round of the loop at `now`; true when the gap since the previous round shows
    /// that the scheduler itself was stalled (then silence up to `now` is forgiven).
    pub(crate) fn round(&self, now: Instant, tick: Duration) -> bool {
        let previous = std::mem::replace(&mut *lock(&self.last_round), now);
        let stalled = now.saturating_duration_since(previous) > stall_threshold(tick);
        if stalled {
            *lock(&self.resumed_at) = now;
        }
        stalled
    }

    /// How long `server` has been silent while the scheduler was running.
    fn silence(&self, server: &Server, now: Instant) -> Duration {
        let since = server.last_heartbeat().max(*lock(&self.resumed_at));
        now.saturating_duration_since(since)
    }

    /// Whether heartbeats (from anyone) arrived within `window` before `now`.
    fn reading(&self, now: Instant, window: Duration) -> bool {
        now.saturating_duration_since(*lock(&self.last_heartbeat)) <= window
    }
}

/// A gap between two rounds longer than this means the scheduler was not running.
fn stall_threshold(tick: Duration) -> Duration {
    (tick * 4).max(Duration::from_millis(1500))
}

/// Runs until shutdown.
pub async fn run(state: AppState) {
    let mut tick = tokio::time::interval(state.config.fleet_tick());
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut backoff = Backoff::new(&state);
    loop {
        let full_round = tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => true,
            _ = state.fleet_kick.notified() => false,
        };
        if full_round {
            let now = Instant::now();
            if state.vigil.round(now, state.config.fleet_tick()) {
                inc(&state.metrics.stalls);
                warn!(
                    grace_ms = state.config.heartbeat_timeout_ms,
                    "the scheduler was stalled; servers get a full heartbeat timeout from now"
                );
            }
            reap(&state);
            scale_down(&state);
            let unclaimed = state
                .directory
                .expire_unclaimed(state.config.unclaimed_room(), &state.registry);
            for room_id in &unclaimed {
                inc(&state.metrics.unclaimed_rooms);
                info!(
                    room_id,
                    "nobody opened the room in time: its slot is free, the room dormant"
                );
            }
            let expired = state.directory.expire_orphans(state.config.orphan_ttl());
            if expired > 0 {
                info!(expired, "forgot orphaned rooms nobody looked up");
            }
            state.rate_limiter.prune();
        }
        if backoff.allows(&state) {
            let target = state.config.warm_slots();
            if target > 0 && !state.shutdown.is_cancelled() {
                spawner::top_up(&state, target);
            }
        }
    }
}

/// Declares silent servers dead, kills managed ones that stay silent long after, and forgets
/// servers dead for long.
pub fn reap(state: &AppState) {
    let now = Instant::now();
    let timeout = state.config.heartbeat_timeout();
    let servers = state.registry.snapshot();
    let live = servers
        .iter()
        .filter(|s| matches!(s.state(), ServerState::Ready | ServerState::Draining))
        .count();
    // With other servers around, their heartbeats prove that we are reading our sockets.
    let window = (state.config.heartbeat_interval() * 3).max(timeout / 2);
    let reading = live <= 1 || state.vigil.reading(now, window);
    for server in servers {
        match server.state() {
            ServerState::Ready | ServerState::Draining => {
                let silent = state.vigil.silence(&server, now);
                if silent > timeout && reading {
                    declare_dead(state, &server, silent);
                }
            }
            ServerState::Dead => {
                let dead_for = server
                    .dead_since()
                    .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
                // Still silent well after being declared dead: a hung process, not a hiccup.
                if server.managed
                    && !server.has_exited()
                    && !server.kill_was_requested()
                    && dead_for > state.config.dead_retention() / 2
                    && state.vigil.silence(&server, now) > timeout
                {
                    warn!(server_id = %server.id, "a session server declared dead stayed silent; killing it");
                    server.request_kill();
                }
                if dead_for > state.config.dead_retention() {
                    state.registry.remove_if_same(&server);
                }
            }
            ServerState::Starting => {}
        }
    }
}

/// Declares `server` dead on silence: no new rooms, its rooms orphaned (placed again on their
/// next lookup). Its process is left running: if it is alive after all, it registers again and
/// is told which of its rooms moved.
fn declare_dead(state: &AppState, server: &Server, silent: Duration) {
    let silent_ms = u64::try_from(silent.as_millis()).unwrap_or(u64::MAX);
    server.set_dead(format!("silent for {silent_ms} ms"));
    inc(&state.metrics.servers_declared_dead);
    state.metrics.server_exit(ExitCause::Silence);
    let orphaned = state.directory.orphan_server(server);
    warn!(
        server_id = %server.id,
        silent_ms,
        orphaned,
        managed = server.managed,
        "no heartbeat: session server declared dead"
    );
}

/// Drains managed servers empty for `server_idle_secs`, keeping the ones the warm buffer needs.
pub fn scale_down(state: &AppState) {
    let now = Instant::now();
    let idle = state.config.server_idle();
    let target = state.config.warm_slots();
    let mut servers = state.registry.snapshot();
    // Youngest first: keep the long-lived ones.
    servers.sort_by_key(|s| std::cmp::Reverse(s.started));
    let mut free = spare_slots(&servers);
    for server in servers {
        let Some(empty_since) = server.track_empty(now) else {
            continue;
        };
        if !server.managed
            || !server.accepts_rooms()
            || now.saturating_duration_since(empty_since) < idle
        {
            continue;
        }
        if free.saturating_sub(server.capacity()) < target {
            continue;
        }
        {
            // Under the placement lock, so no room slips onto it between the check and the flip.
            let _decision = lock(&state.placement_lock);
            if server.rooms() != 0 {
                continue;
            }
            server.request_drain();
            server.set_state(ServerState::Draining);
        }
        free = free.saturating_sub(server.capacity());
        info!(server_id = %server.id, idle_ms = u64::try_from(now.saturating_duration_since(empty_since).as_millis()).unwrap_or(u64::MAX), "draining an idle session server");
    }
}

/// Exponential back-off of warm-buffer spawns after spawn failures; reset by a registration.
pub(crate) struct Backoff {
    failures_seen: u64,
    registrations_seen: u64,
    delay: Duration,
    until: Option<Instant>,
}

impl Backoff {
    pub(crate) fn new(state: &AppState) -> Backoff {
        Backoff {
            failures_seen: state.metrics.spawn_failures.get(),
            registrations_seen: state.metrics.spawn_latency.count(),
            delay: BACKOFF_MIN,
            until: None,
        }
    }

    pub(crate) fn allows(&mut self, state: &AppState) -> bool {
        let now = Instant::now();
        let registrations = state.metrics.spawn_latency.count();
        if registrations > self.registrations_seen {
            self.registrations_seen = registrations;
            self.delay = BACKOFF_MIN;
        }
        let failures = state.metrics.spawn_failures.get();
        if failures > self.failures_seen {
            self.failures_seen = failures;
            self.until = Some(now + self.delay);
            warn!(
                retry_in_ms = u64::try_from(self.delay.as_millis()).unwrap_or(u64::MAX),
                "session server spawn failed; backing off the warm buffer"
            );
            self.delay = (self.delay * 2).min(BACKOFF_MAX);
        }
        self.until.is_none_or(|t| now >= t)
    }
}
