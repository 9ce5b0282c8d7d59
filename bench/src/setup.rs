//! The real flow's setup through the backend: log every member's user in, then create every
//! room — each as a different user, since the scheduler limits creates per user — timing each
//! create. Lookups and connects happen later, in the members themselves.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use berth_protocol::api::{CreateRoomRequest, RoomTicket};
use futures_util::StreamExt;

use super::connect::error_kind;
use super::progress::{Progress, Stage};
use super::stats::{Errors, Timing};
use berth::{Backend, Session};

/// A room the run created, with the creator's ticket.
#[derive(Debug, Clone)]
pub(crate) struct CreatedRoom {
    pub ticket: RoomTicket,
    pub created_at: Instant,
}

/// What the logins gave.
pub(crate) struct Logins {
    pub sessions: Vec<Option<Session>>,
    pub elapsed: Duration,
}

/// Logs `count` users in (`name(i)`), `concurrency` at a time.
pub(crate) async fn login_all(
    backend: &Backend,
    count: usize,
    name: impl Fn(usize) -> String,
    concurrency: usize,
    errors: &Errors,
    progress: &Progress,
) -> Logins {
    let started = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    progress.set(Stage::Count {
        label: "logging in",
        done: done.clone(),
        total: count as u64,
    });
    let mut sessions: Vec<Option<Session>> = vec![None; count];
    let mut answers = futures_util::stream::iter(0..count)
        .map(|i| {
            let username = name(i);
            async move { (i, backend.login(&username).await) }
        })
        .buffer_unordered(concurrency);
    while let Some((i, result)) = answers.next().await {
        done.fetch_add(1, Relaxed);
        match result {
            Ok(s) => sessions[i] = Some(s),
            Err(e) => errors.add(error_kind("login", &e)),
        }
    }
    Logins {
        sessions,
        elapsed: started.elapsed(),
    }
}

/// What the creates gave.
pub(crate) struct Creates {
    pub rooms: Vec<Option<CreatedRoom>>,
    pub elapsed: Duration,
}

/// Creates `count` rooms, room `r` as `creator(r)`, `concurrency` at a time.
pub(crate) async fn create_all(
    backend: &Backend,
    count: usize,
    creator: impl Fn(usize) -> Option<Session>,
    concurrency: usize,
    latency: &Timing,
    errors: &Errors,
    progress: &Progress,
) -> Creates {
    let started = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    progress.set(Stage::Count {
        label: "creating rooms",
        done: done.clone(),
        total: count as u64,
    });
    let mut rooms: Vec<Option<CreatedRoom>> = vec![None; count];
    let mut answers = futures_util::stream::iter(0..count)
        .map(|r| {
            let session = creator(r);
            async move {
                let Some(session) = session else {
                    return (r, None);
                };
                let req = CreateRoomRequest {
                    name: Some(format!("bench {r}")),
                    public: false,
                    private: false,
                };
                let t = Instant::now();
                let result = backend.create_room(&session, &req).await;
                (r, Some((result, t.elapsed())))
            }
        })
        .buffer_unordered(concurrency);
    while let Some((r, answer)) = answers.next().await {
        done.fetch_add(1, Relaxed);
        match answer {
            None => errors.add("create: no login"),
            Some((Ok(ticket), took)) => {
                latency.record(took);
                rooms[r] = Some(CreatedRoom {
                    ticket,
                    created_at: Instant::now(),
                });
            }
            Some((Err(e), _)) => errors.add(error_kind("create", &e)),
        }
    }
    Creates {
        rooms,
        elapsed: started.elapsed(),
    }
}
