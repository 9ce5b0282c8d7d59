//! Placement: which session server a room goes to.
//!
//! A room goes to a ready server with a free slot, the fullest one first (so that empty servers
//! can be scaled down). The slot is reserved before the answer: a short mutex around the choice
//! plus a compare-and-swap on the server's counter, so concurrent creates never overfill a
//! server. When no ready server has a slot, the create waits for a starting server (sharing
//! spawns with other waiting creates, see [`crate::spawner`]) until it registers, bounded by the
//! spawn timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_protocol::cluster::{Placement, ServerState};
use berth_store::RoomMeta;
use tracing::{debug, info, warn};

use crate::directory::{Replaced, RoomEntry};
use crate::error::{self, ApiError};
use crate::metrics::inc;
use crate::registry::{Server, lock};
use crate::spawner;
use crate::state::AppState;

/// Extra time a create waits beyond the spawn timeout, so that it hears the supervisor's verdict.
const WAIT_MARGIN: Duration = Duration::from_millis(500);

/// Reserves a slot on the fullest ready server that still has one.
pub fn try_reserve(state: &AppState) -> Option<Arc<Server>> {
    let _decision = lock(&state.placement_lock);
    let mut candidates: Vec<Arc<Server>> = state
        .registry
        .snapshot()
        .into_iter()
        .filter(|s| s.accepts_rooms() && s.free_slots() > 0)
        .collect();
    candidates.sort_by(|a, b| {
        a.free_slots()
            .cmp(&b.free_slots())
            .then_with(|| a.id.cmp(&b.id))
    });
    candidates.into_iter().find(|s| s.try_reserve())
}

/// Reserves a slot, spawning (or waiting for) a server when none has one.
async fn reserve_slot(state: &AppState) -> Result<Arc<Server>, ApiError> {
    let deadline = Instant::now() + state.config.spawn_timeout() + WAIT_MARGIN;
    loop {
        if let Some(server) = try_reserve(state) {
            state.fleet_kick.notify_one();
            return Ok(server);
        }
        if state.shutdown.is_cancelled() {
            return Err(error::shutting_down());
        }
        let claim = spawner::claim_capacity(state)?;
        let server = Arc::clone(&claim.server);
        debug!(server_id = %server.id, "waiting for a starting session server");
        let mut rx = server.subscribe();
        let outcome = tokio::select! {
            settled = async { rx.wait_for(|s| *s != ServerState::Starting).await.map(|s| *s) } => settled.ok(),
            _ = tokio::time::sleep_until(deadline.into()) => {
                inc(&state.metrics.no_capacity);
                return Err(error::no_capacity(&state.config, "timed out waiting for a session server to start"));
            }
            _ = state.shutdown.cancelled() => return Err(error::shutting_down()),
        };
        drop(claim);
        match outcome {
            // Registered: try again (another create may have taken its slots: then loop).
            Some(ServerState::Ready | ServerState::Draining) => continue,
            _ => {
                inc(&state.metrics.no_capacity);
                return Err(error::no_capacity(
                    &state.config,
                    "a session server failed to start",
                ));
            }
        }
    }
}

/// Most public rooms loaded from the store at start (so the listing shows them while dormant).
pub const DORMANT_AT_START: usize = 1000;

/// Loads the newest public rooms of the store as dormant entries (after a restart).
pub async fn load_dormant(state: &AppState) {
    let Some(store) = &state.store else { return };
    match store.public_rooms(DORMANT_AT_START).await {
        Ok(rooms) => {
            let loaded = rooms
                .into_iter()
                .filter(|m| {
                    state
                        .directory
                        .insert_dormant(m.room_id.clone(), m.name.clone(), m.public)
                })
                .count();
            if loaded > 0 {
                info!(loaded, "public rooms loaded from the store (dormant)");
            }
        }
        Err(e) => warn!(error = %e, "cannot load public rooms from the store"),
    }
}

/// Places a new room and records it in the directory (and its metadata in the store before the
/// answer, so a room that exists can always be found again; a refused create records nothing).
pub async fn place_new(
    state: &AppState,
    room_id: String,
    name: String,
    public: bool,
    private: bool,
    created_by: Option<String>,
) -> Result<Placement, ApiError> {
    let started = Instant::now();
    // The slot first: a create refused for want of capacity leaves nothing behind.
    let server = reserve_slot(state).await?;
    if let Some(store) = &state.store {
        let meta = RoomMeta {
            room_id: room_id.clone(),
            name: name.clone(),
            public,
            private,
            created_by,
            created_at_ms: berth_protocol::now_ms(),
        };
        if let Err(e) = store.create_room(&meta).await {
            server.release_slot();
            warn!(room_id, error = %e, "cannot record the new room in the store");
            return Err(error::store_unavailable());
        }
    }
    let epoch = state.directory.next_epoch();
    let entry = RoomEntry::new(server.id.clone(), epoch, name, public);
    let placement = to_placement(&room_id, &entry, server.url());
    state.directory.insert_placed(room_id, entry);
    inc(&state.metrics.placements);
    state.metrics.placement_latency.observe(started.elapsed());
    info!(room_id = %placement.room_id, server_id = %server.id, epoch, "room placed");
    Ok(placement)
}

/// Where a room lives; places it again first when it is dormant (its server died, left, or
/// released it). A room the directory does not know is looked for in the store.
pub async fn lookup(state: &AppState, room_id: &str) -> Result<Placement, ApiError> {
    // A couple of rounds: another lookup may re-place the room while this one waits.
    for _ in 0..3 {
        let entry = match state.directory.get(room_id) {
            Some(entry) => entry,
            None => {
                let store = state.store.as_ref().ok_or_else(ApiError::room_not_found)?;
                let meta = store.room(room_id).await.map_err(|e| {
                    warn!(room_id, error = %e, "cannot look the room up in the store");
                    error::store_unavailable()
                })?;
                let meta = meta.ok_or_else(ApiError::room_not_found)?;
                if state
                    .directory
                    .insert_dormant(meta.room_id, meta.name, meta.public)
                {
                    info!(room_id, "dormant room found in the store");
                }
                continue;
            }
        };
        if !entry.is_orphaned()
            && let Some(server) = state.registry.get(&entry.server_id)
            && matches!(server.state(), ServerState::Ready | ServerState::Draining)
        {
            return Ok(to_placement(room_id, &entry, server.url()));
        }
        let from = entry.server_id;
        let started = Instant::now();
        let server = reserve_slot(state).await?;
        let epoch = state.directory.next_epoch();
        match state
            .directory
            .replace(room_id, &server, epoch, &state.registry)
        {
            Replaced::Moved(entry) => {
                inc(&state.metrics.replacements);
                state.metrics.placement_latency.observe(started.elapsed());
                info!(room_id, server_id = %server.id, epoch, from = %from, "dormant room placed again");
                return Ok(to_placement(room_id, &entry, server.url()));
            }
            Replaced::Current(_) => server.release_slot(),
            Replaced::Gone => {
                server.release_slot();
                return Err(ApiError::room_not_found());
            }
        }
    }
    Err(error::no_capacity(
        &state.config,
        "the room's placement keeps changing; retry",
    ))
}

fn to_placement(room_id: &str, entry: &RoomEntry, url: String) -> Placement {
    Placement {
        room_id: room_id.to_owned(),
        server_id: entry.server_id.clone(),
        url,
        epoch: entry.epoch,
        name: entry.name.clone(),
        public: entry.public,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::registry::Server;
    use berth_protocol::cluster::Capacity;
    use clap::Parser;
    use tokio_util::sync::CancellationToken;

    fn state() -> AppState {
        let config = Config::parse_from([
            "berth-scheduler",
            "--max-servers",
            "0",
            "--cluster-secret",
            "s",
        ]);
        AppState::new(
            config,
            "s".into(),
            "http://127.0.0.1:1".into(),
            CancellationToken::new(),
        )
    }

    fn add_server(state: &AppState, id: &str, rooms: u32) -> Arc<Server> {
        state.registry.insert_if_absent(Server::outside(
            id.into(),
            format!("ws://{id}/ws"),
            Capacity {
                rooms,
                members_per_room: 10,
            },
            None,
        ))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_placements_never_exceed_capacity() {
        let state = state();
        let servers: Vec<_> = (0..4)
            .map(|i| add_server(&state, &format!("s-{i}"), 7))
            .collect();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..80 {
            let state = state.clone();
            tasks.spawn(async move {
                place_new(
                    &state,
                    format!("r-{i}"),
                    format!("r-{i}"),
                    false,
                    false,
                    None,
                )
                .await
            });
        }
        let mut placed = 0;
        let mut refused = 0;
        while let Some(result) = tasks.join_next().await {
            match result.unwrap() {
                Ok(_) => placed += 1,
                Err(e) if e.code() == "no_capacity" => refused += 1,
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        assert_eq!((placed, refused), (28, 52));
        for s in &servers {
            assert_eq!(s.rooms(), 7, "server {} overfilled or underfilled", s.id);
        }
        // And the directory agrees with the counters.
        for s in &servers {
            let n = state
                .directory
                .list(None)
                .iter()
                .filter(|r| r.server_id == s.id)
                .count();
            assert_eq!(n, 7);
        }
    }

    #[test]
    fn the_fullest_server_with_room_comes_first() {
        let state = state();
        let a = add_server(&state, "s-a", 3);
        let b = add_server(&state, "s-b", 3);
        assert!(b.try_reserve());
        assert_eq!(try_reserve(&state).unwrap().id, "s-b");
        assert_eq!(try_reserve(&state).unwrap().id, "s-b");
        assert_eq!(try_reserve(&state).unwrap().id, "s-a", "s-b is full now");
        assert_eq!((a.rooms(), b.rooms()), (1, 3));
        b.request_drain();
        b.release_slot();
        assert_eq!(
            try_reserve(&state).unwrap().id,
            "s-a",
            "a draining server gets no rooms"
        );
    }
}
