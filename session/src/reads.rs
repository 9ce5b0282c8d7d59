//! A room's read positions: how far each member has read, as the room knows it.
//!
//! Positions only move forward. Those that moved are kept `dirty` until the room hands them to
//! the group-commit writer with its next submission (in the same transaction as its messages);
//! a failed write puts them back. A sender's own message moves its position when the message
//! is durable; the store derives that write from the message itself.

use std::collections::HashMap;
use std::sync::Arc;

use berth_protocol::frames::{MAX_WELCOME_READS, ReadPosition};

#[derive(Default)]
pub(crate) struct Reads {
    positions: HashMap<Arc<str>, u64>,
    /// Positions to store (user → seq).
    dirty: HashMap<Arc<str>, u64>,
    /// Handed to the writer, not yet acknowledged.
    in_flight: Vec<(Arc<str>, u64)>,
}

impl Reads {
    /// The positions the store holds for the room.
    pub fn load(&mut self, stored: Vec<(String, u64)>) {
        for (user, seq) in stored {
            self.positions.insert(Arc::from(user), seq);
        }
    }

    /// Moves `user`'s position to `seq` unless it is there or further already; answers whether
    /// it moved. `store`: keep it for the next write.
    pub fn advance(&mut self, user: &str, seq: u64, store: bool) -> bool {
        match self.positions.get_mut(user) {
            Some(at) if *at >= seq => return false,
            Some(at) => *at = seq,
            None => {
                self.positions.insert(Arc::from(user), seq);
            }
        }
        if store {
            let key = self.key(user);
            let e = self.dirty.entry(key).or_insert(seq);
            *e = (*e).max(seq);
        }
        true
    }

    /// A user joined: record it as a member (position 0) unless the room knows it already.
    pub fn joined(&mut self, user: &str) {
        if !self.positions.contains_key(user) {
            let key: Arc<str> = Arc::from(user);
            self.positions.insert(key.clone(), 0);
            self.dirty.entry(key).or_insert(0);
        }
    }

    fn key(&self, user: &str) -> Arc<str> {
        self.positions
            .get_key_value(user)
            .map_or_else(|| Arc::from(user), |(k, _)| k.clone())
    }

    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The dirty positions, now in flight.
    pub fn take_dirty(&mut self) -> Vec<(Arc<str>, u64)> {
        self.in_flight = self.dirty.drain().collect();
        self.in_flight.clone()
    }

    /// The writer answered for the positions in flight; on failure they wait for the next write.
    pub fn stored(&mut self, ok: bool) {
        for (user, seq) in std::mem::take(&mut self.in_flight) {
            if !ok {
                let e = self.dirty.entry(user).or_insert(seq);
                *e = (*e).max(seq);
            }
        }
    }

    /// The furthest positions (at most [`MAX_WELCOME_READS`]), for `welcome.reads`.
    pub fn snapshot(&self) -> Vec<ReadPosition> {
        let mut all: Vec<(&Arc<str>, &u64)> =
            self.positions.iter().filter(|(_, s)| **s > 0).collect();
        all.sort_unstable_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        all.into_iter()
            .take(MAX_WELCOME_READS)
            .map(|(u, s)| ReadPosition {
                user_id: u.to_string(),
                seq: *s,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_never_move_backwards_and_failed_writes_wait_for_the_next() {
        let mut reads = Reads::default();
        reads.load(vec![("u-a".into(), 5)]);
        assert!(!reads.advance("u-a", 4, true), "backwards is ignored");
        assert!(!reads.has_dirty());
        assert!(reads.advance("u-a", 7, true));
        assert_eq!(reads.take_dirty(), vec![(Arc::from("u-a"), 7)]);
        reads.stored(false);
        assert!(reads.has_dirty(), "a failed write is kept");
        reads.take_dirty();
        reads.stored(true);
        assert!(!reads.has_dirty());
        reads.joined("u-b");
        reads.joined("u-a");
        assert_eq!(reads.take_dirty(), vec![(Arc::from("u-b"), 0)]);
        assert_eq!(
            reads.snapshot(),
            vec![ReadPosition {
                user_id: "u-a".into(),
                seq: 7
            }]
        );
    }
}
