//! The directory of the rooms this server hosts: room id → [`RoomHandle`].
//!
//! Touched only when a connection is admitted, a room opens or ends, and by heartbeats; the
//! message path never sees it, so a plain mutex is enough.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use berth_protocol::cluster::HostedRoom;

use crate::room::RoomHandle;

/// Open rooms by id.
#[derive(Default)]
pub(crate) struct Rooms {
    map: Mutex<HashMap<Arc<str>, RoomHandle>>,
    next_instance: AtomicU64,
}

impl Rooms {
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, RoomHandle>> {
        // A panic while holding this lock cannot leave the map half-updated: recover it.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, id: &str) -> Option<RoomHandle> {
        self.lock().get(id).cloned()
    }

    /// The room `id`, or a new one made by `open` when there is none and fewer than `capacity`
    /// rooms are open. `Err(())` when full.
    pub fn get_or_open(
        &self,
        id: &str,
        capacity: usize,
        open: impl FnOnce(u64) -> RoomHandle,
    ) -> Result<RoomHandle, ()> {
        let mut map = self.lock();
        if let Some(room) = map.get(id) {
            return Ok(room.clone());
        }
        if map.len() >= capacity {
            return Err(());
        }
        let room = open(self.next_instance.fetch_add(1, Ordering::Relaxed));
        map.insert(room.id.clone(), room.clone());
        Ok(room)
    }

    /// Removes `id` if it is still the incarnation `instance`.
    pub fn remove_instance(&self, id: &str, instance: u64) -> bool {
        let mut map = self.lock();
        if map.get(id).is_some_and(|r| r.instance == instance) {
            map.remove(id);
            true
        } else {
            false
        }
    }

    pub fn remove(&self, id: &str) -> Option<RoomHandle> {
        self.lock().remove(id)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every open room.
    pub fn all(&self) -> Vec<RoomHandle> {
        self.lock().values().cloned().collect()
    }

    /// What heartbeats and registrations report.
    pub fn hosted(&self) -> Vec<HostedRoom> {
        self.lock()
            .values()
            .map(|r| HostedRoom {
                room_id: r.id.to_string(),
                epoch: r.epoch,
                members: r.users(),
            })
            .collect()
    }
}
