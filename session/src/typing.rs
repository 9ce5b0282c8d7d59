//! Who is typing in a room. Never stored: a typing state lives until the user says it stopped,
//! sends a message, leaves, or has not renewed it for the timeout.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use berth_protocol::frames::User;
use tokio::time::Instant;

pub(crate) struct Typing {
    timeout: Duration,
    /// User id → (user, when its state ends unless renewed).
    active: HashMap<String, (Arc<User>, Instant)>,
}

impl Typing {
    pub fn new(timeout: Duration) -> Self {
        Typing {
            timeout,
            active: HashMap::new(),
        }
    }

    /// `user` is typing; answers whether it was not already (so the others must be told).
    pub fn start(&mut self, user: &Arc<User>, now: Instant) -> bool {
        let until = now + self.timeout;
        match self.active.get_mut(&user.user_id) {
            Some(entry) => {
                entry.1 = until;
                false
            }
            None => {
                self.active
                    .insert(user.user_id.clone(), (user.clone(), until));
                true
            }
        }
    }

    /// `user_id` stopped; answers the user when it was typing.
    pub fn stop(&mut self, user_id: &str) -> Option<Arc<User>> {
        self.active.remove(user_id).map(|(user, _)| user)
    }

    /// The earliest end of a typing state.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.active.values().map(|(_, until)| *until).min()
    }

    /// Ends (and answers) the states not renewed by `now`.
    pub fn expired(&mut self, now: Instant) -> Vec<Arc<User>> {
        let ended: Vec<String> = self
            .active
            .iter()
            .filter(|(_, (_, until))| *until <= now)
            .map(|(id, _)| id.clone())
            .collect();
        ended.iter().filter_map(|id| self.stop(id)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewals_extend_and_deadlines_end() {
        let mut typing = Typing::new(Duration::from_secs(6));
        let alice = Arc::new(User {
            user_id: "u-a".into(),
            username: "alice".into(),
        });
        let t0 = Instant::now();
        assert!(typing.start(&alice, t0));
        assert!(
            !typing.start(&alice, t0 + Duration::from_secs(3)),
            "a renewal"
        );
        assert_eq!(typing.next_deadline(), Some(t0 + Duration::from_secs(9)));
        assert!(typing.expired(t0 + Duration::from_secs(8)).is_empty());
        assert_eq!(typing.expired(t0 + Duration::from_secs(9)).len(), 1);
        assert!(typing.stop("u-a").is_none());
    }
}
