//! The registry of session servers: who they are, their state, their load and their room slots.
//!
//! Each [`Server`] is shared as an `Arc` so that the placement code, the supervisor of a spawned
//! child and the HTTP handlers all see one entry. Its state lives in a `watch` channel, so that a
//! create waiting for a spawn wakes as soon as the server registers (or fails). Room slots are an
//! atomic counter reserved with compare-and-swap: it never goes past the capacity.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use berth_protocol::cluster::{Capacity, ServerInfo, ServerState};
use dashmap::DashMap;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Locks a std mutex, ignoring poisoning: the data guarded here stays consistent field by field.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One session server.
pub struct Server {
    pub id: String,
    /// Spawned and supervised by this scheduler.
    pub managed: bool,
    pub started: Instant,
    state: watch::Sender<ServerState>,
    /// Rooms placed here: live (not orphaned) directory entries plus in-flight reservations.
    rooms: AtomicU32,
    /// Room slots.
    capacity: AtomicU32,
    /// Creates waiting for this (starting) server, each counting on one of its slots.
    claims: AtomicU32,
    /// Admin drain or scale-down: the next heartbeat answer says `drain: true`.
    drain_requested: AtomicBool,
    /// Cancelled to make the supervisor kill a managed child (declared dead).
    kill: CancellationToken,
    /// Its process is known to have exited: it can never come back.
    exited: AtomicBool,
    live: Mutex<Live>,
}

/// The mutable, non-counter part of a server.
struct Live {
    url: String,
    members_per_room: u32,
    connections: u32,
    pid: Option<u32>,
    last_heartbeat: Instant,
    /// Since when it has had no rooms (scale-down).
    empty_since: Option<Instant>,
    /// Since when it is dead (forgotten after a while).
    dead_since: Option<Instant>,
    /// Why it is dead: its exit status or how long it was silent.
    dead_reason: Option<String>,
    /// Its operator listener (`/metrics`), as it registered it.
    admin_url: Option<String>,
}

impl Server {
    /// A server this scheduler is about to spawn.
    pub fn starting(id: String, capacity: Capacity) -> Server {
        Server::new(
            id,
            true,
            ServerState::Starting,
            String::new(),
            capacity,
            None,
        )
    }

    /// A server that registered without being spawned by this scheduler.
    pub fn outside(id: String, url: String, capacity: Capacity, pid: Option<u32>) -> Server {
        Server::new(id, false, ServerState::Ready, url, capacity, pid)
    }

    fn new(
        id: String,
        managed: bool,
        state: ServerState,
        url: String,
        capacity: Capacity,
        pid: Option<u32>,
    ) -> Server {
        let now = Instant::now();
        Server {
            id,
            managed,
            started: now,
            state: watch::Sender::new(state),
            rooms: AtomicU32::new(0),
            capacity: AtomicU32::new(capacity.rooms),
            claims: AtomicU32::new(0),
            drain_requested: AtomicBool::new(false),
            kill: CancellationToken::new(),
            exited: AtomicBool::new(false),
            live: Mutex::new(Live {
                url,
                members_per_room: capacity.members_per_room,
                connections: 0,
                pid,
                last_heartbeat: now,
                empty_since: None,
                dead_since: None,
                dead_reason: None,
                admin_url: None,
            }),
        }
    }

    pub fn state(&self) -> ServerState {
        *self.state.borrow()
    }

    /// Changes the state and wakes whoever waits on it.
    pub fn set_state(&self, state: ServerState) {
        self.state.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
        let mut live = lock(&self.live);
        live.dead_since =
            (state == ServerState::Dead).then(|| live.dead_since.unwrap_or_else(Instant::now));
        if state != ServerState::Dead {
            live.dead_reason = None;
        }
    }

    /// Declares it dead, saying why (shown by `GET /v1/servers`).
    pub fn set_dead(&self, reason: String) {
        self.set_state(ServerState::Dead);
        lock(&self.live).dead_reason = Some(reason);
    }

    pub fn dead_reason(&self) -> Option<String> {
        lock(&self.live).dead_reason.clone()
    }

    /// Records that its process exited (it can never register again).
    pub fn set_exited(&self) {
        self.exited.store(true, Ordering::SeqCst);
    }

    pub fn has_exited(&self) -> bool {
        self.exited.load(Ordering::SeqCst)
    }

    /// Watches the state (a create waiting for this server to register).
    pub fn subscribe(&self) -> watch::Receiver<ServerState> {
        self.state.subscribe()
    }

    /// Whether new rooms may go here.
    pub fn accepts_rooms(&self) -> bool {
        self.state() == ServerState::Ready && !self.drain_requested()
    }

    /// Starting, ready or draining: counts against `max_servers`.
    pub fn is_active(&self) -> bool {
        matches!(
            self.state(),
            ServerState::Starting | ServerState::Ready | ServerState::Draining
        )
    }

    pub fn rooms(&self) -> u32 {
        self.rooms.load(Ordering::SeqCst)
    }

    pub fn capacity(&self) -> u32 {
        self.capacity.load(Ordering::SeqCst)
    }

    pub fn free_slots(&self) -> u32 {
        self.capacity().saturating_sub(self.rooms())
    }

    /// Takes one room slot if one is free. Never lets `rooms` exceed the capacity.
    pub fn try_reserve(&self) -> bool {
        let cap = self.capacity();
        self.rooms
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives a slot back (a released room, a reservation that was not used, an orphaned room).
    pub fn release_slot(&self) {
        let _ = self
            .rooms
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }

    /// Counts a room the server reports hosting (adoption): a fact, so not bounded.
    pub fn adopt_slot(&self) {
        self.rooms.fetch_add(1, Ordering::SeqCst);
    }

    /// Counts one more create waiting for this starting server, if its slots still cover it.
    pub fn try_claim(&self) -> bool {
        let cap = self.capacity();
        self.claims
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn unclaim(&self) {
        let _ = self
            .claims
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }

    /// Free slots not yet counted on by waiting creates (for a starting server).
    pub fn unclaimed_slots(&self) -> u32 {
        self.capacity()
            .saturating_sub(self.claims.load(Ordering::SeqCst))
    }

    pub fn drain_requested(&self) -> bool {
        self.drain_requested.load(Ordering::SeqCst)
    }

    pub fn request_drain(&self) {
        self.drain_requested.store(true, Ordering::SeqCst);
    }

    /// Asks the supervisor of a managed child to kill it.
    pub fn request_kill(&self) {
        self.kill.cancel();
    }

    pub fn kill_was_requested(&self) -> bool {
        self.kill.is_cancelled()
    }

    /// Resolves when [`Server::request_kill`] was called.
    pub async fn kill_requested(&self) {
        self.kill.cancelled().await
    }

    pub fn url(&self) -> String {
        lock(&self.live).url.clone()
    }

    pub fn pid(&self) -> Option<u32> {
        lock(&self.live).pid
    }

    pub fn set_pid(&self, pid: Option<u32>) {
        lock(&self.live).pid = pid;
    }

    /// Records a (re-)registration: where it is and what it holds.
    pub fn registered(&self, url: String, capacity: Capacity, connections: u32, pid: Option<u32>) {
        self.capacity.store(capacity.rooms, Ordering::SeqCst);
        let mut live = lock(&self.live);
        live.url = url;
        live.members_per_room = capacity.members_per_room;
        live.connections = connections;
        if pid.is_some() {
            live.pid = pid;
        }
        live.last_heartbeat = Instant::now();
    }

    /// Where its operator listener is (`None`: it has none).
    pub fn set_admin_url(&self, admin_url: Option<String>) {
        lock(&self.live).admin_url = admin_url;
    }

    /// Records a heartbeat.
    pub fn heartbeat(&self, connections: u32) {
        let mut live = lock(&self.live);
        live.connections = connections;
        live.last_heartbeat = Instant::now();
    }

    pub fn last_heartbeat(&self) -> Instant {
        lock(&self.live).last_heartbeat
    }

    pub fn dead_since(&self) -> Option<Instant> {
        lock(&self.live).dead_since
    }

    /// Updates and returns since when the server has had no rooms (None while it has some).
    pub fn track_empty(&self, now: Instant) -> Option<Instant> {
        let empty = self.rooms() == 0;
        let mut live = lock(&self.live);
        live.empty_since = if empty {
            Some(live.empty_since.unwrap_or(now))
        } else {
            None
        };
        live.empty_since
    }

    /// What `GET /v1/servers` shows.
    pub fn info(&self) -> ServerInfo {
        let state = self.state();
        let live = lock(&self.live);
        ServerInfo {
            id: self.id.clone(),
            url: live.url.clone(),
            state,
            rooms: self.rooms(),
            connections: live.connections,
            capacity: Capacity {
                rooms: self.capacity(),
                members_per_room: live.members_per_room,
            },
            managed: self.managed,
            pid: live.pid,
            age_secs: self.started.elapsed().as_secs(),
            last_heartbeat_ms_ago: u64::try_from(live.last_heartbeat.elapsed().as_millis())
                .unwrap_or(u64::MAX),
            dead_reason: live.dead_reason.clone(),
            admin_url: live.admin_url.clone(),
        }
    }
}

/// The free room slots the warm buffer counts: those of ready servers that take rooms, plus the
/// unclaimed ones of starting servers not asked to drain. The one place this is computed, so
/// that spawning (`spawner::top_up`) and scaling down (`fleet::scale_down`) never disagree,
/// which would make the fleet oscillate.
pub fn spare_slots(servers: &[Arc<Server>]) -> u32 {
    servers
        .iter()
        .map(|s| match s.state() {
            ServerState::Ready if s.accepts_rooms() => s.free_slots(),
            ServerState::Starting if !s.drain_requested() => s.unclaimed_slots(),
            _ => 0,
        })
        .fold(0, u32::saturating_add)
}

/// All known session servers by id.
#[derive(Default)]
pub struct Registry {
    servers: DashMap<String, Arc<Server>>,
}

impl Registry {
    pub fn get(&self, id: &str) -> Option<Arc<Server>> {
        self.servers.get(id).map(|s| Arc::clone(&s))
    }

    /// Inserts `server` unless its id is taken; returns the entry now under that id.
    pub fn insert_if_absent(&self, server: Server) -> Arc<Server> {
        Arc::clone(
            self.servers
                .entry(server.id.clone())
                .or_insert_with(|| Arc::new(server))
                .value(),
        )
    }

    /// Inserts `server` if its id is free; None when the id is taken.
    pub fn try_insert(&self, server: Server) -> Option<Arc<Server>> {
        match self.servers.entry(server.id.clone()) {
            dashmap::mapref::entry::Entry::Occupied(_) => None,
            dashmap::mapref::entry::Entry::Vacant(v) => {
                Some(Arc::clone(v.insert(Arc::new(server)).value()))
            }
        }
    }

    /// Removes the entry if it is still this very server (not a newer one under the same id).
    pub fn remove_if_same(&self, server: &Arc<Server>) -> bool {
        self.servers
            .remove_if(&server.id, |_, s| Arc::ptr_eq(s, server))
            .is_some()
    }

    /// Every server, cloned out so no map lock is held while the caller works.
    pub fn snapshot(&self) -> Vec<Arc<Server>> {
        self.servers.iter().map(|s| Arc::clone(s.value())).collect()
    }

    /// Servers that count against `max_servers`.
    pub fn active_count(&self) -> usize {
        self.servers.iter().filter(|s| s.is_active()).count()
    }

    /// Whether `id` names a server that can host rooms now (not dead, not gone).
    pub fn is_live(&self, id: &str) -> bool {
        self.get(id)
            .is_some_and(|s| matches!(s.state(), ServerState::Ready | ServerState::Draining))
    }

    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_never_exceed_capacity() {
        let s = Server::outside(
            "s-1".into(),
            "ws://x/ws".into(),
            Capacity {
                rooms: 2,
                members_per_room: 5,
            },
            None,
        );
        assert!(s.try_reserve());
        assert!(s.try_reserve());
        assert!(!s.try_reserve());
        assert_eq!(s.rooms(), 2);
        s.release_slot();
        s.release_slot();
        s.release_slot();
        assert_eq!(s.rooms(), 0, "release saturates at zero");
    }

    #[test]
    fn dead_since_follows_the_state() {
        let s = Server::starting(
            "s-2".into(),
            Capacity {
                rooms: 1,
                members_per_room: 1,
            },
        );
        assert!(s.dead_since().is_none());
        s.set_state(ServerState::Dead);
        assert!(s.dead_since().is_some());
        s.set_state(ServerState::Ready);
        assert!(s.dead_since().is_none());
    }
}
