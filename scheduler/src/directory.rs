//! The room directory: where each room lives, under which placement epoch.
//!
//! The epoch is one global counter that only grows. It starts at the current time in
//! milliseconds so that it keeps growing across scheduler restarts, and it is pushed above every
//! epoch a registering server reports. A room whose server died, or whose server released it
//! (idle disposal, or a drain handing it over), stays here *dormant* until its next lookup
//! places it again (new server, new epoch); its history waits in the store. Dormant rooms are
//! forgotten after `orphan_ttl` (and beyond [`MAX_DORMANT`], oldest first), which loses nothing
//! when there is a store: a lookup of an id the directory does not know consults the store's
//! room metadata (see `placement::lookup`).
//!
//! Room slot accounting: [`Server::rooms`](crate::registry::Server::rooms) counts the live (not
//! orphaned) entries on a server plus in-flight reservations, so every function here that adds,
//! moves, orphans or removes an entry adjusts the counters of the servers involved.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use berth_protocol::cluster::{HostedRoom, RoomInfo};
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use crate::registry::{Registry, Server};

/// Most dormant rooms kept in memory; the oldest beyond it are forgotten (a store still finds
/// them by id).
pub const MAX_DORMANT: usize = 100_000;

/// One room's placement.
#[derive(Debug, Clone)]
pub struct RoomEntry {
    pub server_id: String,
    pub epoch: u64,
    pub name: String,
    pub public: bool,
    /// Distinct users present at the server's last heartbeat.
    pub members: u32,
    pub placed_at: Instant,
    /// When its server last reported it (heartbeat or registration).
    pub last_reported: Option<Instant>,
    /// Set when the room went dormant (its server died, left, or released it): the next
    /// lookup re-places the room.
    pub orphaned_at: Option<Instant>,
    /// Dormant because its server released it (as opposed to died): that server no longer
    /// serves it, so a report of it from there is stale.
    pub released: bool,
}

impl RoomEntry {
    pub fn new(server_id: String, epoch: u64, name: String, public: bool) -> RoomEntry {
        RoomEntry {
            server_id,
            epoch,
            name,
            public,
            members: 0,
            placed_at: Instant::now(),
            last_reported: None,
            orphaned_at: None,
            released: false,
        }
    }

    /// A dormant room known from the store (after a restart): placed nowhere yet.
    pub fn dormant(name: String, public: bool) -> RoomEntry {
        let mut entry = RoomEntry::new(String::new(), 0, name, public);
        entry.orphaned_at = Some(Instant::now());
        entry.released = true;
        entry
    }

    pub fn is_orphaned(&self) -> bool {
        self.orphaned_at.is_some()
    }
}

/// What [`Directory::replace`] did.
#[derive(Debug)]
pub enum Replaced {
    /// The room now lives on the new server.
    Moved(RoomEntry),
    /// Someone else re-placed it first, or its server came back: here is where it is.
    Current(RoomEntry),
    /// The room is gone (released meanwhile).
    Gone,
}

/// Every placed room by id, and the epoch counter.
pub struct Directory {
    rooms: DashMap<String, RoomEntry>,
    epoch: AtomicU64,
}

impl Default for Directory {
    fn default() -> Self {
        Directory::new(berth_protocol::now_ms())
    }
}

impl Directory {
    pub fn new(initial_epoch: u64) -> Directory {
        Directory {
            rooms: DashMap::new(),
            epoch: AtomicU64::new(initial_epoch),
        }
    }

    /// A fresh epoch, greater than every epoch handed out or observed before.
    pub fn next_epoch(&self) -> u64 {
        self.epoch.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Pushes the counter to at least `epoch` (an epoch reported by a server).
    pub fn observe_epoch(&self, epoch: u64) {
        self.epoch.fetch_max(epoch, Ordering::SeqCst);
    }

    pub fn get(&self, room_id: &str) -> Option<RoomEntry> {
        self.rooms.get(room_id).map(|e| e.clone())
    }

    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    pub fn orphaned_count(&self) -> usize {
        self.rooms.iter().filter(|e| e.is_orphaned()).count()
    }

    /// Records a new room on `server`, whose slot the caller has already reserved.
    pub fn insert_placed(&self, room_id: String, entry: RoomEntry) {
        self.rooms.insert(room_id, entry);
    }

    /// Makes the room dormant if it is still the placement `server_id`/`epoch` (a stale release
    /// is ignored), freeing its slot. Returns whether it was the current placement.
    pub fn release(&self, room_id: &str, server_id: &str, epoch: u64, registry: &Registry) -> bool {
        let Some(mut entry) = self.rooms.get_mut(room_id) else {
            return false;
        };
        if entry.server_id != server_id || entry.epoch != epoch {
            return false;
        }
        if !entry.is_orphaned() {
            if let Some(server) = registry.get(server_id) {
                server.release_slot();
            }
            entry.orphaned_at = Some(Instant::now());
        }
        entry.released = true;
        entry.members = 0;
        true
    }

    /// Records a dormant room found in the store, unless the id is known already.
    pub fn insert_dormant(&self, room_id: String, name: String, public: bool) -> bool {
        match self.rooms.entry(room_id) {
            Entry::Vacant(v) => {
                v.insert(RoomEntry::dormant(name, public));
                true
            }
            Entry::Occupied(_) => false,
        }
    }

    /// Sets the name and flag of a room adopted from a server's report (which knows neither).
    pub fn set_meta(&self, room_id: &str, name: String, public: bool) {
        if let Some(mut entry) = self.rooms.get_mut(room_id) {
            entry.name = name;
            entry.public = public;
        }
    }

    /// Marks every room of `server` orphaned (it died or left); returns how many.
    pub fn orphan_server(&self, server: &Server) -> usize {
        let now = Instant::now();
        let mut count = 0;
        for mut entry in self.rooms.iter_mut() {
            if entry.server_id == server.id && !entry.is_orphaned() {
                entry.orphaned_at = Some(now);
                entry.members = 0;
                server.release_slot();
                count += 1;
            }
        }
        count
    }

    /// Moves `room_id` to `server` under `epoch` if it still needs a new home (orphaned, or its
    /// server is no longer live). The caller reserved a slot on `server` and must give it back
    /// unless the answer is [`Replaced::Moved`].
    pub fn replace(
        &self,
        room_id: &str,
        server: &Server,
        epoch: u64,
        registry: &Registry,
    ) -> Replaced {
        let Some(mut entry) = self.rooms.get_mut(room_id) else {
            return Replaced::Gone;
        };
        let orphaned = entry.is_orphaned();
        if !orphaned && registry.is_live(&entry.server_id) {
            return Replaced::Current(entry.clone());
        }
        if !orphaned && let Some(old) = registry.get(&entry.server_id) {
            old.release_slot();
        }
        entry.server_id = server.id.clone();
        entry.epoch = epoch;
        entry.members = 0;
        entry.placed_at = Instant::now();
        entry.last_reported = None;
        entry.orphaned_at = None;
        entry.released = false;
        Replaced::Moved(entry.clone())
    }

    /// Takes in the rooms a (re-)registering server reports: unknown rooms and orphans of its
    /// own are adopted, rooms it holds under a newer epoch than the directory move to it; rooms
    /// placed elsewhere since are left alone (its next heartbeat gets them revoked).
    pub fn adopt(&self, server: &Server, hosted: &[HostedRoom], registry: &Registry) {
        let now = Instant::now();
        for room in hosted {
            self.observe_epoch(room.epoch);
            match self.rooms.entry(room.room_id.clone()) {
                Entry::Vacant(v) => {
                    let mut entry =
                        RoomEntry::new(server.id.clone(), room.epoch, room.room_id.clone(), false);
                    entry.members = room.members;
                    entry.last_reported = Some(now);
                    v.insert(entry);
                    server.adopt_slot();
                }
                Entry::Occupied(mut o) => {
                    let entry = o.get_mut();
                    let ours = entry.server_id == server.id;
                    if ours && entry.released && room.epoch == entry.epoch {
                        // It let go of this placement already: its next heartbeat gets it revoked.
                        continue;
                    } else if ours && room.epoch >= entry.epoch {
                        if entry.is_orphaned() {
                            entry.orphaned_at = None;
                            server.adopt_slot();
                        }
                    } else if !ours && room.epoch > entry.epoch {
                        if !entry.is_orphaned()
                            && let Some(old) = registry.get(&entry.server_id)
                        {
                            old.release_slot();
                        }
                        entry.server_id = server.id.clone();
                        entry.orphaned_at = None;
                        entry.released = false;
                        server.adopt_slot();
                    } else {
                        continue;
                    }
                    entry.epoch = room.epoch;
                    entry.members = room.members;
                    entry.last_reported = Some(now);
                }
            }
        }
    }

    /// Takes in a heartbeat's room list. Returns the reported rooms the server must stop
    /// serving (placed elsewhere, under a newer epoch, or forgotten). Placements on this server
    /// it has not reported for `forget_after` are forgotten, freeing their slots.
    pub fn heartbeat(
        &self,
        server: &Server,
        hosted: &[HostedRoom],
        forget_after: Duration,
    ) -> Vec<String> {
        let now = Instant::now();
        let mut revoked = Vec::new();
        for room in hosted {
            match self.rooms.get_mut(&room.room_id) {
                // Released (handed over or disposed) meanwhile: the report is stale.
                Some(entry)
                    if entry.server_id == server.id
                        && entry.epoch == room.epoch
                        && entry.released =>
                {
                    revoked.push(room.room_id.clone());
                }
                Some(mut entry) if entry.server_id == server.id && entry.epoch == room.epoch => {
                    if entry.is_orphaned() {
                        // It was declared gone but is alive and nobody re-placed the room yet.
                        entry.orphaned_at = None;
                        server.adopt_slot();
                    }
                    entry.members = room.members;
                    entry.last_reported = Some(now);
                }
                _ => revoked.push(room.room_id.clone()),
            }
        }
        let reported: HashSet<&str> = hosted.iter().map(|r| r.room_id.as_str()).collect();
        self.rooms.retain(|id, e| {
            let stale = e.server_id == server.id
                && !e.is_orphaned()
                && !reported.contains(id.as_str())
                && now.saturating_duration_since(e.last_reported.unwrap_or(e.placed_at)) > forget_after;
            if stale {
                tracing::info!(room_id = %id, server_id = %server.id, "forgetting a placement its server never reported");
                server.release_slot();
            }
            !stale
        });
        revoked
    }

    /// Makes rooms dormant that were placed more than `after` ago and that their server never
    /// reported (nobody opened them), giving their slots back; returns how many. A member who
    /// opens one later finds it again: its server re-adopts it if it is still there, or the
    /// next lookup places it anew.
    pub fn expire_unclaimed(&self, after: Duration, registry: &Registry) -> Vec<String> {
        let now = Instant::now();
        let mut expired = Vec::new();
        for mut entry in self.rooms.iter_mut() {
            if !entry.is_orphaned()
                && entry.last_reported.is_none()
                && now.saturating_duration_since(entry.placed_at) > after
            {
                entry.orphaned_at = Some(now);
                entry.members = 0;
                if let Some(server) = registry.get(&entry.server_id) {
                    server.release_slot();
                }
                expired.push(entry.key().clone());
            }
        }
        expired
    }

    /// Forgets dormant rooms nobody looked up for `after`, and the oldest ones beyond
    /// [`MAX_DORMANT`]; returns how many.
    pub fn expire_orphans(&self, after: Duration) -> usize {
        let now = Instant::now();
        let before = self.rooms.len();
        self.rooms.retain(|_, e| {
            e.orphaned_at
                .is_none_or(|t| now.saturating_duration_since(t) < after)
        });
        let dormant = self.orphaned_count();
        if dormant > MAX_DORMANT {
            let mut oldest: Vec<(Instant, String)> = self
                .rooms
                .iter()
                .filter_map(|e| e.orphaned_at.map(|t| (t, e.key().clone())))
                .collect();
            oldest.sort();
            for (_, id) in oldest.into_iter().take(dormant - MAX_DORMANT) {
                self.rooms.remove_if(&id, |_, e| e.is_orphaned());
            }
        }
        before.saturating_sub(self.rooms.len())
    }

    /// `GET /v1/rooms`, newest placements first; `public` filters when given.
    pub fn list(&self, public: Option<bool>) -> Vec<RoomInfo> {
        let mut rooms: Vec<RoomInfo> = self
            .rooms
            .iter()
            .filter(|e| public.is_none_or(|p| e.public == p))
            .map(|e| RoomInfo {
                room_id: e.key().clone(),
                name: e.name.clone(),
                public: e.public,
                server_id: e.server_id.clone(),
                epoch: e.epoch,
                members: e.members,
            })
            .collect();
        rooms.sort_by(|a, b| {
            b.epoch
                .cmp(&a.epoch)
                .then_with(|| a.room_id.cmp(&b.room_id))
        });
        rooms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_protocol::cluster::Capacity;

    fn server(registry: &Registry, id: &str) -> std::sync::Arc<Server> {
        registry.insert_if_absent(Server::outside(
            id.into(),
            format!("ws://{id}/ws"),
            Capacity {
                rooms: 10,
                members_per_room: 10,
            },
            None,
        ))
    }

    fn place(dir: &Directory, s: &Server, room: &str) -> u64 {
        assert!(s.try_reserve());
        let epoch = dir.next_epoch();
        dir.insert_placed(
            room.into(),
            RoomEntry::new(s.id.clone(), epoch, room.into(), false),
        );
        epoch
    }

    #[test]
    fn epochs_only_grow_and_jump_past_observed_ones() {
        let dir = Directory::new(100);
        let a = dir.next_epoch();
        assert!(a > 100);
        dir.observe_epoch(5_000);
        assert!(dir.next_epoch() > 5_000);
        dir.observe_epoch(10);
        assert!(dir.next_epoch() > 5_001);
    }

    #[test]
    fn release_with_stale_epoch_is_ignored() {
        let registry = Registry::default();
        let s = server(&registry, "s-a");
        let dir = Directory::default();
        let epoch = place(&dir, &s, "r-1");
        assert!(!dir.release("r-1", "s-a", epoch - 1, &registry));
        assert!(!dir.release("r-1", "s-b", epoch, &registry));
        assert_eq!(s.rooms(), 1);
        assert!(dir.release("r-1", "s-a", epoch, &registry));
        assert_eq!(s.rooms(), 0);
        // Dormant, not forgotten; a report of it from its old server is stale.
        let entry = dir.get("r-1").unwrap();
        assert!(entry.is_orphaned() && entry.released);
        let report = HostedRoom {
            room_id: "r-1".into(),
            epoch,
            members: 1,
        };
        assert_eq!(
            dir.heartbeat(&s, std::slice::from_ref(&report), Duration::from_secs(60)),
            vec!["r-1".to_owned()]
        );
        dir.adopt(&s, &[report], &registry);
        assert!(dir.get("r-1").unwrap().is_orphaned());
        assert_eq!(s.rooms(), 0);
        // The next placement takes it.
        assert!(s.try_reserve());
        assert!(
            matches!(dir.replace("r-1", &s, dir.next_epoch(), &registry), Replaced::Moved(e) if !e.released)
        );
    }

    #[test]
    fn dormant_rooms_are_bounded() {
        let dir = Directory::default();
        assert!(dir.insert_dormant("r-1".into(), "one".into(), true));
        assert!(!dir.insert_dormant("r-1".into(), "again".into(), false));
        assert_eq!(dir.get("r-1").unwrap().name, "one");
        assert_eq!(dir.expire_orphans(Duration::from_secs(60)), 0);
        assert_eq!(dir.expire_orphans(Duration::ZERO), 1);
    }

    #[test]
    fn orphans_move_once_and_slots_follow() {
        let registry = Registry::default();
        let a = server(&registry, "s-a");
        let b = server(&registry, "s-b");
        let dir = Directory::default();
        let first = place(&dir, &a, "r-1");
        assert_eq!(dir.orphan_server(&a), 1);
        assert_eq!(a.rooms(), 0);
        assert!(b.try_reserve());
        let epoch = dir.next_epoch();
        let Replaced::Moved(e) = dir.replace("r-1", &b, epoch, &registry) else {
            panic!("not moved")
        };
        assert_eq!((e.server_id.as_str(), e.epoch > first), ("s-b", true));
        // A second re-placement finds it settled.
        assert!(matches!(
            dir.replace("r-1", &a, dir.next_epoch(), &registry),
            Replaced::Current(_)
        ));
        assert_eq!(b.rooms(), 1);
    }

    #[test]
    fn heartbeat_revokes_rooms_placed_elsewhere() {
        let registry = Registry::default();
        let a = server(&registry, "s-a");
        let b = server(&registry, "s-b");
        let dir = Directory::default();
        let epoch = place(&dir, &a, "r-1");
        let report = |id: &str, epoch| HostedRoom {
            room_id: id.into(),
            epoch,
            members: 3,
        };
        let ttl = Duration::from_secs(60);
        assert!(dir.heartbeat(&a, &[report("r-1", epoch)], ttl).is_empty());
        assert_eq!(dir.get("r-1").unwrap().members, 3);
        assert_eq!(
            dir.heartbeat(&b, &[report("r-1", epoch)], ttl),
            vec!["r-1".to_owned()]
        );
        assert_eq!(
            dir.heartbeat(&a, &[report("r-1", epoch - 1)], ttl),
            vec!["r-1".to_owned()]
        );
        assert_eq!(
            dir.heartbeat(&a, &[report("r-unknown", 1)], ttl),
            vec!["r-unknown".to_owned()]
        );
    }

    #[test]
    fn unclaimed_placements_give_their_slot_back_and_stay_dormant() {
        let registry = Registry::default();
        let a = server(&registry, "s-a");
        let dir = Directory::default();
        let epoch = place(&dir, &a, "r-1");
        assert!(
            dir.expire_unclaimed(Duration::from_secs(60), &registry)
                .is_empty()
        );
        assert_eq!(
            dir.expire_unclaimed(Duration::ZERO, &registry),
            vec!["r-1".to_owned()]
        );
        assert_eq!(a.rooms(), 0);
        assert!(
            dir.get("r-1").unwrap().is_orphaned(),
            "dormant, not forgotten"
        );
        // Opened at the last moment: its server reports it and keeps it.
        let report = HostedRoom {
            room_id: "r-1".into(),
            epoch,
            members: 1,
        };
        assert!(
            dir.heartbeat(&a, &[report], Duration::from_secs(60))
                .is_empty()
        );
        assert_eq!(a.rooms(), 1);
        assert!(!dir.get("r-1").unwrap().is_orphaned());
        assert!(
            dir.expire_unclaimed(Duration::ZERO, &registry).is_empty(),
            "claimed"
        );
    }

    #[test]
    fn unreported_placements_are_forgotten() {
        let registry = Registry::default();
        let a = server(&registry, "s-a");
        let dir = Directory::default();
        place(&dir, &a, "r-1");
        dir.heartbeat(&a, &[], Duration::from_secs(60));
        assert_eq!(a.rooms(), 1);
        dir.heartbeat(&a, &[], Duration::ZERO);
        assert!(dir.get("r-1").is_none());
        assert_eq!(a.rooms(), 0);
    }

    #[test]
    fn adoption_takes_newer_epochs_only() {
        let registry = Registry::default();
        let a = server(&registry, "s-a");
        let b = server(&registry, "s-b");
        let dir = Directory::default();
        let epoch = place(&dir, &a, "r-1");
        dir.adopt(
            &b,
            &[HostedRoom {
                room_id: "r-1".into(),
                epoch: epoch - 1,
                members: 0,
            }],
            &registry,
        );
        assert_eq!(dir.get("r-1").unwrap().server_id, "s-a");
        dir.adopt(
            &b,
            &[HostedRoom {
                room_id: "r-1".into(),
                epoch: epoch + 10,
                members: 0,
            }],
            &registry,
        );
        assert_eq!(dir.get("r-1").unwrap().server_id, "s-b");
        assert_eq!((a.rooms(), b.rooms()), (0, 1));
        dir.adopt(
            &b,
            &[HostedRoom {
                room_id: "r-2".into(),
                epoch: u64::MAX / 2,
                members: 1,
            }],
            &registry,
        );
        assert!(dir.next_epoch() > u64::MAX / 2);
        assert_eq!(b.rooms(), 2);
    }
}
