//! The fleet loop: the scheduler's background upkeep of its session servers.
//!
//! Every tick it declares silent servers dead (killing managed ones; their rooms are orphaned and
//! re-placed on lookup), forgets long-dead entries and orphans, drains managed servers that have
//! been empty for `server_idle_secs` beyond what the warm buffer needs, and spawns servers so
//! that at least `warm_servers × rooms_per_server` room slots are free. A placement wakes it early
//! so the buffer is topped up right away. Failed spawns back the buffer off exponentially, so a
//! broken `--session-bin` does not fork in a tight loop.

use std::time::{Duration, Instant};

use berth_protocol::cluster::ServerState;
use tokio::time::MissedTickBehavior;
use tracing::{info, warn};

use crate::metrics::inc;
use crate::registry::{Server, lock, spare_slots};
use crate::spawner;
use crate::state::AppState;

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

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
            reap(&state);
            scale_down(&state);
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

/// Declares silent servers dead and forgets servers dead for long.
pub fn reap(state: &AppState) {
    let now = Instant::now();
    let timeout = state.config.heartbeat_timeout();
    for server in state.registry.snapshot() {
        match server.state() {
            ServerState::Ready | ServerState::Draining => {
                let silent = now.saturating_duration_since(server.last_heartbeat());
                if silent > timeout {
                    declare_dead(state, &server, silent);
                }
            }
            ServerState::Dead => {
                if server.dead_since().is_some_and(|t| {
                    now.saturating_duration_since(t) > state.config.dead_retention()
                }) {
                    state.registry.remove_if_same(&server);
                }
            }
            ServerState::Starting => {}
        }
    }
}

fn declare_dead(state: &AppState, server: &Server, silent: Duration) {
    server.set_state(ServerState::Dead);
    inc(&state.metrics.servers_declared_dead);
    let orphaned = state.directory.orphan_server(server);
    warn!(
        server_id = %server.id,
        silent_ms = u64::try_from(silent.as_millis()).unwrap_or(u64::MAX),
        orphaned,
        managed = server.managed,
        "no heartbeat: session server declared dead"
    );
    if server.managed {
        server.request_kill();
    }
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
struct Backoff {
    failures_seen: u64,
    registrations_seen: u64,
    delay: Duration,
    until: Option<Instant>,
}

impl Backoff {
    fn new(state: &AppState) -> Backoff {
        Backoff {
            failures_seen: state.metrics.spawn_failures.get(),
            registrations_seen: state.metrics.spawn_latency.count(),
            delay: BACKOFF_MIN,
            until: None,
        }
    }

    fn allows(&mut self, state: &AppState) -> bool {
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
