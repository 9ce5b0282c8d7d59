//! Conversations: room membership, read positions, direct messages and "my rooms".
//!
//! - Membership (`berth_members`, keyed by user then room) is what a private room's access
//!   check reads, and what "my rooms" lists: the creator of every room, the added members of
//!   private rooms, both people of a direct message, and everyone who joined a room (the
//!   session server records a join as a read position of 0).
//! - Read positions live in the same rows and only move forward (`MAX` / `GREATEST` in the
//!   upsert). Explicit reads are written by the group-commit append, in the transaction of the
//!   messages; a sender's read of its own message, with the room's activity, follows within
//!   the writer's marks interval ([`Marks`]).
//! - A direct message is the one private room of a pair of accounts: `berth_dms` has the
//!   sorted pair as its primary key, so concurrent first requests from both sides all land on
//!   one row (`INSERT … ON CONFLICT DO NOTHING`, then read back the stored room).
//! - "My rooms" is one query over the user's membership rows joined with the rooms, their
//!   activity (`berth_room_activity`, written with the senders' reads) and the DM pair.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::{Backend, RoomAppend, Store, StoreError};

/// Whether a room is private and whether a user belongs to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomAccess {
    pub private: bool,
    pub member: bool,
}

/// One row of [`Store::my_rooms`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MyRoomRow {
    pub room_id: String,
    pub name: String,
    pub private: bool,
    /// The other person of a direct message: user id and (when it is an account) name.
    pub dm: Option<(String, Option<String>)>,
    pub last_seq: u64,
    pub read_seq: u64,
    /// When the room last had a message (or was created), ms since the Unix epoch.
    pub activity_ms: u64,
}

/// The name stored for direct-message rooms (listings show the other person's name).
pub const DM_ROOM_NAME: &str = "direct message";

/// The sorted pair of a direct message.
pub fn dm_pair<'a>(a: &'a str, b: &'a str) -> (&'a str, &'a str) {
    if a <= b { (a, b) } else { (b, a) }
}

impl Store {
    /// Whether `room_id` is private and whether `user_id` is a member; `None` for a room the
    /// store does not know.
    pub async fn room_access(
        &self,
        room_id: &str,
        user_id: &str,
    ) -> Result<Option<RoomAccess>, StoreError> {
        match &*self.0 {
            Backend::Sqlite(s) => s.room_access(room_id.to_owned(), user_id.to_owned()).await,
            Backend::Postgres(p) => p.room_access(room_id, user_id).await,
        }
    }

    /// Adds `user_id` to `room_id` (answers whether it was not a member yet).
    pub async fn add_member(&self, room_id: &str, user_id: &str) -> Result<bool, StoreError> {
        let now = berth_protocol::now_ms();
        match &*self.0 {
            Backend::Sqlite(s) => {
                s.add_member(room_id.to_owned(), user_id.to_owned(), now)
                    .await
            }
            Backend::Postgres(p) => p.add_member(room_id, user_id, now).await,
        }
    }

    /// The direct-message room of accounts `a` and `b`: records `room_id` for the pair (as a
    /// private room created by `a`, with both as members) unless the pair has a room already,
    /// and answers the pair's room. Safe under any number of concurrent calls for one pair.
    pub async fn open_dm(&self, a: &str, b: &str, room_id: &str) -> Result<String, StoreError> {
        let (lo, hi) = dm_pair(a, b);
        let now = berth_protocol::now_ms();
        match &*self.0 {
            Backend::Sqlite(s) => {
                s.open_dm(
                    lo.to_owned(),
                    hi.to_owned(),
                    a.to_owned(),
                    room_id.to_owned(),
                    now,
                )
                .await
            }
            Backend::Postgres(p) => p.open_dm(lo, hi, a, room_id, now).await,
        }
    }

    /// Every room of `user_id`, most recent activity first (at most `limit`), in one query.
    pub async fn my_rooms(
        &self,
        user_id: &str,
        limit: usize,
    ) -> Result<Vec<MyRoomRow>, StoreError> {
        let limit = limit.min(crate::MAX_READ);
        match &*self.0 {
            Backend::Sqlite(s) => s.my_rooms(user_id.to_owned(), limit).await,
            Backend::Postgres(p) => p.my_rooms(user_id, limit).await,
        }
    }

    /// Writes `marks` (positions only move forward; activity takes the higher `seq` and the
    /// time of this write), at most [`MARKS_PER_TRANSACTION`] rows a transaction. On failure
    /// some may be written: writing them again changes nothing.
    pub async fn write_marks(&self, marks: &Marks) -> Result<(), StoreError> {
        for chunk in marks.chunks(MARKS_PER_TRANSACTION) {
            match &*self.0 {
                Backend::Sqlite(s) => s.write_marks(chunk).await?,
                Backend::Postgres(p) => p.write_marks(&chunk).await?,
            }
        }
        Ok(())
    }

    /// The stored read positions of `room_id`, furthest first (at most `limit`).
    pub async fn read_positions(
        &self,
        room_id: &str,
        limit: usize,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let limit = limit.min(crate::MAX_READ);
        match &*self.0 {
            Backend::Sqlite(s) => s.read_positions(room_id.to_owned(), limit).await,
            Backend::Postgres(p) => p.read_positions(room_id, limit).await,
        }
    }
}

/// Rows a transaction of [`Store::write_marks`] writes at most: SQLite's one writing
/// connection is shared with the appends, which wait for a transaction of marks at most.
pub const MARKS_PER_TRANSACTION: usize = 128;

/// Read positions and room activity to write. An append batch writes its rooms' explicit
/// reads (joins, `read` frames) in its own transaction; what its messages imply (each sender has
/// read its own message, the room's last `seq`) the group-commit writer gathers across batches
/// and writes with [`Store::write_marks`] a little later.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Marks {
    /// `(room, user) → seq`, one entry per pair (an upsert may touch a row once), sorted so
    /// that concurrent writers lock rows in one order.
    pub reads: BTreeMap<(Arc<str>, Arc<str>), u64>,
    /// `room → last seq` of the rooms that got messages.
    pub activity: BTreeMap<Arc<str>, u64>,
}

impl Marks {
    pub fn is_empty(&self) -> bool {
        self.reads.is_empty() && self.activity.is_empty()
    }

    /// These marks in parts of at most `rows` rows each (none when empty).
    pub fn chunks(&self, rows: usize) -> Vec<Marks> {
        let mut parts = Vec::new();
        let mut part = Marks::default();
        let full = |p: &Marks| p.reads.len() + p.activity.len() >= rows.max(1);
        for (key, seq) in &self.reads {
            part.reads.insert(key.clone(), *seq);
            if full(&part) {
                parts.push(std::mem::take(&mut part));
            }
        }
        for (room, seq) in &self.activity {
            part.activity.insert(room.clone(), *seq);
            if full(&part) {
                parts.push(std::mem::take(&mut part));
            }
        }
        if !part.is_empty() {
            parts.push(part);
        }
        parts
    }

    /// Adds `other` (marks whose write failed, say) to these.
    pub fn merge(&mut self, other: Marks) {
        for (key, seq) in other.reads {
            raise(&mut self.reads, key, seq);
        }
        for (room, seq) in other.activity {
            raise(&mut self.activity, room, seq);
        }
    }

    /// Adds `room`'s explicit reads.
    pub fn add_reads(&mut self, room: &RoomAppend) {
        for (user, seq) in &room.reads {
            raise(&mut self.reads, (room.room_id.clone(), user.clone()), *seq);
        }
    }

    /// Adds what `room`'s stored messages imply: each sender's read of its own messages and
    /// the room's last `seq`.
    pub fn add_sent(&mut self, room: &RoomAppend) {
        for m in &room.messages {
            let user = Arc::from(m.user_id.as_str());
            raise(&mut self.reads, (room.room_id.clone(), user), m.seq);
        }
        if let Some(last) = room.messages.last() {
            raise(&mut self.activity, room.room_id.clone(), last.seq);
        }
    }
}

/// Moves `key`'s `seq` in `map` up to `seq` (marks never move backwards).
fn raise<K: Ord>(map: &mut BTreeMap<K, u64>, key: K, seq: u64) {
    let e = map.entry(key).or_insert(seq);
    *e = (*e).max(seq);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_split_into_parts_of_at_most_n_rows_and_nothing_is_lost() {
        let mut marks = Marks::default();
        for i in 0..5u64 {
            marks
                .reads
                .insert((Arc::from(format!("r-{i}")), Arc::from("u-a")), i + 1);
        }
        for i in 0..2u64 {
            marks.activity.insert(Arc::from(format!("r-{i}")), 10 + i);
        }
        let parts = marks.chunks(3);
        let sizes: Vec<usize> = parts
            .iter()
            .map(|p| p.reads.len() + p.activity.len())
            .collect();
        assert_eq!(sizes, [3, 3, 1]);
        let mut whole = Marks::default();
        for p in parts {
            whole.merge(p);
        }
        assert_eq!(whole, marks);
        assert!(Marks::default().chunks(3).is_empty());
        assert_eq!(marks.chunks(0).len(), 7, "at least one row a part");
    }
}
