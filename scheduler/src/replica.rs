//! This scheduler as one of several replicas (`--shared`): every decision goes through the
//! shared state in PostgreSQL (`berth_store::control`), so any replica answers any call and a
//! replica's death loses nothing.
//!
//! - Placement and re-placement are one transaction each (slot, metadata, epoch, placement).
//! - A create that finds no slot counts on a `starting` server or enters a new one under the
//!   spawn lock (so `max_servers` holds for the whole fleet), and polls the shared state until
//!   that server registers, with whichever replica it reaches.
//! - This replica spawns the servers it entered, detached: they do not die with it, and they
//!   know every replica's URL, so they move on to another when this one is gone. It supervises
//!   them while it lives (exit, spawn timeout, hung after being declared dead).
//! - Fleet upkeep (dead servers, expiries, scale-down by drain) runs each round in the one
//!   replica that wins the upkeep lock; the warm buffer is topped up under the spawn lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_protocol::cluster::{
    Capacity, Heartbeat, HeartbeatAck, Placement, RegisterServer, RoomInfo, ServerInfo, ServerState,
};
use berth_store::control::{
    ControlStore, Lookup, PlacementRow, Registration, Relocated, SpawnClaim, UpkeepRules,
};
use berth_store::{RoomMeta, StoreError};
use tokio::process::Child;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::error::{self, ApiError};
use crate::metrics::{ExitCause, inc};
use crate::registry::lock;
use crate::spawner;
use crate::state::AppState;

/// Extra time a create waits beyond the spawn timeout.
const WAIT_MARGIN: Duration = Duration::from_millis(500);
/// How often a create waiting for a starting server looks at its state.
const POLL: Duration = Duration::from_millis(25);

/// This replica: the shared state and the children it spawned.
pub struct Replica {
    pub control: Arc<ControlStore>,
    /// Names this replica in `berth_servers.spawned_by` and in logs.
    pub id: String,
    /// Kill switches of the children this replica supervises, by server id.
    children: Mutex<HashMap<String, CancellationToken>>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn unavailable(what: &str, e: &StoreError) -> ApiError {
    warn!(error = %e, "shared state: cannot {what}");
    error::store_unavailable()
}

fn to_placement(row: PlacementRow) -> Placement {
    Placement {
        room_id: row.room_id,
        server_id: row.server_id,
        url: row.url,
        epoch: row.epoch,
        name: row.name,
        public: row.public,
    }
}

impl Replica {
    pub fn new(control: ControlStore) -> Replica {
        Replica {
            control: Arc::new(control),
            id: format!("r-{:08x}", rand_u32()),
            children: Mutex::new(HashMap::new()),
        }
    }

    fn capacity(state: &AppState) -> Capacity {
        Capacity {
            rooms: state.config.rooms_per_server,
            members_per_room: state.config.members_per_room,
        }
    }

    /// `POST /v1/rooms`.
    pub async fn place_new(&self, state: &AppState, meta: RoomMeta) -> Result<Placement, ApiError> {
        let started = Instant::now();
        let deadline = started + state.config.spawn_timeout() + WAIT_MARGIN;
        let mut looked_again = false;
        loop {
            match self.control.place_new(&meta).await {
                Ok(Some(row)) => {
                    inc(&state.metrics.placements);
                    state.metrics.placement_latency.observe(started.elapsed());
                    state.fleet_kick.notify_one();
                    info!(room_id = %row.room_id, server_id = %row.server_id, epoch = row.epoch, "room placed");
                    return Ok(to_placement(row));
                }
                Ok(None) => {
                    self.wait_for_capacity(state, deadline, &mut looked_again)
                        .await?;
                }
                Err(e) => return Err(unavailable("place a room", &e)),
            }
        }
    }

    /// `GET /v1/rooms/{id}`: places a dormant room again.
    pub async fn lookup(&self, state: &AppState, room_id: &str) -> Result<Placement, ApiError> {
        let started = Instant::now();
        let deadline = started + state.config.spawn_timeout() + WAIT_MARGIN;
        let from = match self.control.lookup(room_id).await {
            Ok(Lookup::Live(row)) => return Ok(to_placement(row)),
            Ok(Lookup::Unknown) => return Err(ApiError::room_not_found()),
            Ok(Lookup::Dormant { from }) => from,
            Err(e) => return Err(unavailable("look a room up", &e)),
        };
        let mut looked_again = false;
        loop {
            match self.control.relocate(room_id).await {
                Ok(Relocated::Moved(row)) => {
                    inc(&state.metrics.replacements);
                    state.metrics.placement_latency.observe(started.elapsed());
                    state.fleet_kick.notify_one();
                    info!(room_id, server_id = %row.server_id, epoch = row.epoch, from = %from, "dormant room placed again");
                    return Ok(to_placement(row));
                }
                Ok(Relocated::Current(row)) => return Ok(to_placement(row)),
                Ok(Relocated::Gone) => return Err(ApiError::room_not_found()),
                Ok(Relocated::NoSlot) => {
                    self.wait_for_capacity(state, deadline, &mut looked_again)
                        .await?;
                }
                Err(e) => return Err(unavailable("place a room again", &e)),
            }
        }
    }

    /// No ready server has a slot: count on a starting server (spawning one when none has a
    /// free slot) and wait until it registers, or answer 503. At the fleet's cap, the caller is
    /// sent to look for a slot once more first (`looked_again`): a starting server that became
    /// ready since its placement failed is no longer counted on here, but may have slots.
    async fn wait_for_capacity(
        &self,
        state: &AppState,
        deadline: Instant,
        looked_again: &mut bool,
    ) -> Result<(), ApiError> {
        if state.shutdown.is_cancelled() {
            return Err(error::shutting_down());
        }
        let new_id = berth_protocol::ids::new_server_id();
        let claim = self
            .control
            .claim_capacity(
                &new_id,
                Self::capacity(state),
                state.config.max_servers,
                &self.id,
            )
            .await
            .map_err(|e| unavailable("claim capacity", &e))?;
        let server_id = match claim {
            SpawnClaim::Existing(id) => id,
            SpawnClaim::Spawn(id) => {
                self.start(state, &id).await;
                id
            }
            SpawnClaim::AtCap { .. } if !*looked_again => {
                *looked_again = true;
                return Ok(());
            }
            SpawnClaim::AtCap { active } => {
                inc(&state.metrics.no_capacity);
                warn!(
                    active,
                    max_servers = state.config.max_servers,
                    "no free room slot and the fleet is at its cap"
                );
                return Err(error::no_capacity(
                    &state.config,
                    "every session server is full and the fleet is at its cap",
                ));
            }
        };
        debug!(server_id, "waiting for a starting session server");
        let outcome = loop {
            match self.control.server_state(&server_id).await {
                Ok(Some(ServerState::Starting)) | Err(_) => {}
                Ok(other) => break other,
            }
            if Instant::now() >= deadline {
                break Some(ServerState::Starting);
            }
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = state.shutdown.cancelled() => break None,
            }
        };
        if let Err(e) = self.control.unclaim(&server_id).await {
            debug!(server_id, error = %e, "cannot give a claim back (it expires with the spawn)");
        }
        match outcome {
            Some(ServerState::Ready | ServerState::Draining) => Ok(()),
            _ if state.shutdown.is_cancelled() => Err(error::shutting_down()),
            Some(ServerState::Starting) => {
                inc(&state.metrics.no_capacity);
                Err(error::no_capacity(
                    &state.config,
                    "timed out waiting for a session server to start",
                ))
            }
            _ => {
                inc(&state.metrics.no_capacity);
                Err(error::no_capacity(
                    &state.config,
                    "a session server failed to start",
                ))
            }
        }
    }

    /// `POST /v1/rooms/{id}/release`.
    pub async fn release(
        &self,
        room_id: &str,
        server_id: &str,
        epoch: u64,
    ) -> Result<bool, ApiError> {
        self.control
            .release(room_id, server_id, epoch)
            .await
            .map_err(|e| unavailable("release a room", &e))
    }

    /// `POST /v1/servers`, once the caller is checked and the id settled.
    pub async fn register(
        &self,
        state: &AppState,
        server_id: &str,
        req: &RegisterServer,
    ) -> Result<ServerState, ApiError> {
        let reg = Registration {
            server_id,
            url: &req.url,
            admin_url: req.admin_url.as_deref(),
            capacity: req.capacity,
            connections: req.connections,
            draining: req.draining,
            pid: req.pid,
            rooms: &req.rooms,
        };
        let done = self
            .control
            .register(&reg)
            .await
            .map_err(|e| unavailable("register a server", &e))?;
        if done.previous == Some(ServerState::Starting) && done.managed {
            state
                .metrics
                .spawn_latency
                .observe(Duration::from_millis(done.age_ms));
            info!(
                server_id,
                rooms = req.rooms.len(),
                startup_ms = done.age_ms,
                "spawned session server registered"
            );
        } else {
            info!(
                server_id,
                managed = done.managed,
                rooms = req.rooms.len(),
                state = done.state.as_str(),
                previous = done.previous.map_or("none", ServerState::as_str),
                "session server registered"
            );
        }
        state.fleet_kick.notify_one();
        Ok(done.state)
    }

    /// `PUT /v1/servers/{id}/heartbeat`.
    pub async fn heartbeat(
        &self,
        state: &AppState,
        server_id: &str,
        hb: &Heartbeat,
    ) -> Result<HeartbeatAck, ApiError> {
        let beat = self
            .control
            .heartbeat(
                server_id,
                hb.connections,
                hb.draining,
                &hb.rooms,
                state.config.unreported_room_ttl(),
            )
            .await
            .map_err(|e| unavailable("record a heartbeat", &e))?
            .ok_or_else(error::unknown_server)?;
        if beat.began_draining {
            info!(server_id, "session server is draining");
        }
        if !beat.revoked.is_empty() {
            info!(
                server_id,
                revoked = beat.revoked.len(),
                "revoking rooms placed elsewhere"
            );
        }
        Ok(HeartbeatAck {
            state: beat.state,
            drain: beat.drain,
            revoked_rooms: beat.revoked,
        })
    }

    /// `POST /v1/servers/{id}/drain`: false when the server is unknown or dead.
    pub async fn drain(&self, server_id: &str) -> Result<bool, ApiError> {
        self.control
            .drain(server_id)
            .await
            .map_err(|e| unavailable("drain a server", &e))
    }

    /// `DELETE /v1/servers/{id}`: false when the server is unknown.
    pub async fn remove(&self, server_id: &str) -> Result<bool, ApiError> {
        self.control
            .remove(server_id)
            .await
            .map_err(|e| unavailable("remove a server", &e))
    }

    /// `GET /v1/servers`.
    pub async fn servers(&self) -> Result<Vec<ServerInfo>, ApiError> {
        self.control
            .servers()
            .await
            .map_err(|e| unavailable("list servers", &e))
    }

    /// `GET /v1/rooms`.
    pub async fn rooms(&self, public: Option<bool>) -> Result<Vec<RoomInfo>, ApiError> {
        self.control
            .rooms(public)
            .await
            .map_err(|e| unavailable("list rooms", &e))
    }

    /// `GET /metrics` (gauges read from the shared state; counters are this replica's).
    pub async fn metrics(&self, state: &AppState) -> String {
        match self.control.counts().await {
            Ok(counts) => state.metrics.render_counts(&counts),
            Err(e) => {
                warn!(error = %e, "shared state: cannot read the fleet's gauges");
                state.metrics.render_counts(&Default::default())
            }
        }
    }

    /// Starts the process of a `starting` row this replica entered, detached, and supervises it.
    async fn start(&self, state: &AppState, server_id: &str) {
        let bin = spawner::session_bin(&state.config);
        let urls = scheduler_urls(&state.scheduler_url, &state.config.cluster.scheduler_url);
        let mut cmd = spawner::session_command(
            &state.config,
            &bin,
            server_id,
            &urls,
            &state.secret,
            spawner::Lifetime::Detached,
        );
        inc(&state.metrics.spawns);
        match cmd.spawn() {
            Ok(child) => {
                let pid = child.id();
                info!(server_id, pid = ?pid, bin = %bin.display(), replica = %self.id, "spawned a session server");
                if let Some(pid) = pid
                    && let Err(e) = self.control.set_pid(server_id, pid).await
                {
                    warn!(server_id, error = %e, "cannot record a spawned server's pid");
                }
                let kill = CancellationToken::new();
                lock(&self.children).insert(server_id.to_owned(), kill.clone());
                state
                    .tasks
                    .spawn(supervise(state.clone(), server_id.to_owned(), child, kill));
            }
            Err(e) => {
                inc(&state.metrics.spawn_failures);
                error!(server_id, bin = %bin.display(), error = %e, "cannot spawn a session server (see --session-bin)");
                if let Err(e) = self.control.remove(server_id).await {
                    warn!(server_id, error = %e, "cannot remove a failed spawn");
                }
            }
        }
    }
}

/// What spawned servers are told: this replica first, then every other `--scheduler-url`.
pub fn scheduler_urls(own: &str, configured: &str) -> String {
    let mut urls = vec![own.to_owned()];
    for url in configured
        .split(',')
        .map(|u| u.trim().trim_end_matches('/'))
    {
        if !url.is_empty() && !urls.iter().any(|u| u == url) {
            urls.push(url.to_owned());
        }
    }
    urls.join(",")
}

fn rand_u32() -> u32 {
    // An id for logs, not a secret: the clock's nanoseconds and the pid suffice.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    nanos ^ std::process::id().rotate_left(16)
}

/// Watches one child until it exits (recording why in the shared state), killing it when it
/// does not register within the spawn timeout or hangs after being declared dead. When this
/// replica stops, the child is left running: it re-homes to another replica.
async fn supervise(state: AppState, server_id: String, mut child: Child, kill: CancellationToken) {
    let Some(replica) = state.replica() else {
        return;
    };
    let spawn_deadline = tokio::time::sleep(state.config.spawn_timeout());
    tokio::pin!(spawn_deadline);
    let mut awaiting_registration = true;
    let (status, killed) = loop {
        tokio::select! {
            status = child.wait() => break (status, false),
            () = &mut spawn_deadline, if awaiting_registration => {
                awaiting_registration = false;
                if matches!(replica.control.server_state(&server_id).await, Ok(Some(ServerState::Starting))) {
                    error!(server_id, timeout_ms = state.config.spawn_timeout_ms, "session server did not register in time; killing it");
                    break (spawner::kill(&mut child).await, true);
                }
            }
            () = kill.cancelled() => {
                warn!(server_id, "a session server declared dead stayed silent; killing it");
                break (spawner::kill(&mut child).await, true);
            }
            () = state.shutdown.cancelled() => {
                info!(server_id, "leaving a session server running: it moves to another replica");
                lock(&replica.children).remove(&server_id);
                return;
            }
        }
    };
    lock(&replica.children).remove(&server_id);
    let cause = spawner::exit_cause(&status);
    let status = status.map_or_else(|e| format!("unknown ({e})"), |s| s.to_string());
    match replica.control.server_state(&server_id).await {
        Ok(Some(ServerState::Starting)) => {
            inc(&state.metrics.spawn_failures);
            error!(server_id, %status, "session server exited before registering");
            if let Err(e) = replica.control.remove(&server_id).await {
                warn!(server_id, error = %e, "cannot remove a failed spawn");
            }
        }
        Ok(None) => info!(server_id, %status, "session server exited after leaving"),
        _ => {
            let reason = if killed {
                format!("killed ({status})")
            } else {
                format!("process exited: {status}")
            };
            match replica.control.bury(&server_id, &reason).await {
                Ok(Some(was)) if was != ServerState::Dead => state.metrics.server_exit(cause),
                Ok(_) => {}
                Err(e) => warn!(server_id, error = %e, "cannot record a server's exit"),
            }
            warn!(server_id, %status, cause = cause.as_str(), "session server exited");
        }
    }
}

/// The replica's background loop, until shutdown: upkeep rounds (in whichever replica wins the
/// lock), kills of hung children, and the warm buffer.
pub async fn run(state: AppState) {
    let Some(replica) = state.replica() else {
        return;
    };
    let mut tick = tokio::time::interval(state.config.fleet_tick());
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut backoff = crate::fleet::Backoff::new(&state);
    let config = &state.config;
    let rules = UpkeepRules {
        heartbeat_timeout: config.heartbeat_timeout(),
        never_registered: config.spawn_timeout() * 2 + config.heartbeat_timeout(),
        dead_retention: config.dead_retention(),
        unclaimed_room: config.unclaimed_room(),
        orphan_ttl: config.orphan_ttl(),
        server_idle: config.server_idle(),
        warm_slots: config.warm_slots(),
    };
    loop {
        let full_round = tokio::select! {
            () = state.shutdown.cancelled() => return,
            _ = tick.tick() => true,
            () = state.fleet_kick.notified() => false,
        };
        if full_round {
            if state.vigil.round(Instant::now(), config.fleet_tick()) {
                // This replica was not running: its view of time is stale for a round.
                inc(&state.metrics.stalls);
                warn!("this replica was stalled; skipping an upkeep round");
                continue;
            }
            upkeep(&state, replica, &rules).await;
            state.rate_limiter.prune();
        }
        if backoff.allows(&state) && config.warm_slots() > 0 && !state.shutdown.is_cancelled() {
            let started = replica
                .control
                .top_up(
                    config.warm_slots(),
                    Replica::capacity(&state),
                    config.max_servers,
                    &replica.id,
                    berth_protocol::ids::new_server_id,
                )
                .await;
            match started {
                Ok(ids) => {
                    for id in ids {
                        info!(server_id = %id, "spawning a session server for the warm buffer");
                        replica.start(&state, &id).await;
                    }
                }
                Err(e) => warn!(error = %e, "shared state: cannot top the warm buffer up"),
            }
        }
    }
}

async fn upkeep(state: &AppState, replica: &Replica, rules: &UpkeepRules) {
    match replica.control.upkeep(rules).await {
        Ok(Some(done)) => {
            for (server_id, reason) in &done.dead {
                inc(&state.metrics.servers_declared_dead);
                state.metrics.server_exit(ExitCause::Silence);
                warn!(
                    server_id,
                    reason, "no heartbeat: session server declared dead"
                );
            }
            if done.orphaned > 0 {
                info!(
                    orphaned = done.orphaned,
                    "rooms of dead servers will be re-placed on lookup"
                );
            }
            for room_id in &done.unclaimed {
                inc(&state.metrics.unclaimed_rooms);
                info!(
                    room_id,
                    "nobody opened the room in time: its slot is free, the room dormant"
                );
            }
            for server_id in &done.drained {
                info!(server_id, "draining an idle session server");
            }
            if done.forgotten_rooms > 0 {
                info!(
                    forgotten = done.forgotten_rooms,
                    "forgot dormant rooms nobody looked up"
                );
            }
        }
        Ok(None) => debug!("another replica runs this upkeep round"),
        Err(e) => warn!(error = %e, "shared state: upkeep round failed"),
    }
    let mine: Vec<String> = lock(&replica.children).keys().cloned().collect();
    match replica
        .control
        .hung(
            &mine,
            state.config.dead_retention() / 2,
            state.config.heartbeat_timeout(),
        )
        .await
    {
        Ok(hung) => {
            let children = lock(&replica.children);
            for id in hung {
                if let Some(kill) = children.get(&id) {
                    kill.cancel();
                }
            }
        }
        Err(e) => debug!(error = %e, "shared state: cannot look for hung children"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawned_servers_know_every_replica_own_first() {
        assert_eq!(
            scheduler_urls(
                "http://127.0.0.1:7071",
                "http://127.0.0.1:7070, http://127.0.0.1:7071/,http://127.0.0.1:7072"
            ),
            "http://127.0.0.1:7071,http://127.0.0.1:7070,http://127.0.0.1:7072"
        );
        assert_eq!(scheduler_urls("http://a", ""), "http://a");
    }
}
