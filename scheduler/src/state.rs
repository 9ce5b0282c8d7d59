//! The state every handler and background task shares.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::directory::Directory;
use crate::fleet::Vigil;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::registry::Registry;
use crate::replica::Replica;

/// Where the registry and the room directory live.
#[derive(Debug)]
pub enum Backing {
    /// In this process (`registry`, `directory`): the single-process scheduler, the default.
    Memory,
    /// In PostgreSQL, shared with other replicas (`--shared`).
    Shared(Replica),
}

/// Cheap to clone: one `Arc` around the scheduler's state.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub config: Config,
    /// The cluster secret (never logged; see the manual `Debug`).
    pub secret: String,
    /// How spawned session servers reach this scheduler (`http://<bound addr>`).
    pub scheduler_url: String,
    /// The in-memory registry and directory ([`Backing::Memory`]; empty with `Shared`).
    pub registry: Registry,
    pub directory: Directory,
    pub backing: Backing,
    pub metrics: Metrics,
    /// Evidence that the scheduler itself runs and reads (stall detection).
    pub vigil: Vigil,
    pub rate_limiter: RateLimiter,
    /// Room metadata (so dormant rooms survive a restart of the whole cluster); `None` with
    /// `--store none`.
    pub store: Option<berth_store::Store>,
    /// Held around each placement decision and around flips out of `ready` (drain), so that a
    /// room is never placed on a server that is being drained.
    pub placement_lock: Mutex<()>,
    /// Held around spawn decisions, so that `max_servers` holds and concurrent creates share
    /// spawns.
    pub spawn_lock: Mutex<()>,
    /// Wakes the fleet loop early (a placement ate into the warm buffer).
    pub fleet_kick: Notify,
    pub shutdown: CancellationToken,
    /// Supervisors of spawned children and the fleet loop.
    pub tasks: TaskTracker,
}

impl AppState {
    /// Builds the state. `scheduler_url` is passed to spawned session servers.
    pub fn new(
        config: Config,
        secret: String,
        scheduler_url: String,
        shutdown: CancellationToken,
    ) -> AppState {
        Self::with_store(
            config,
            secret,
            scheduler_url,
            shutdown,
            None,
            Backing::Memory,
        )
    }

    /// This replica, when the state is shared (`--shared`).
    pub fn replica(&self) -> Option<&Replica> {
        match &self.backing {
            Backing::Memory => None,
            Backing::Shared(replica) => Some(replica),
        }
    }

    /// [`AppState::new`] with the store that keeps room metadata.
    pub fn with_store(
        config: Config,
        secret: String,
        scheduler_url: String,
        shutdown: CancellationToken,
        store: Option<berth_store::Store>,
        backing: Backing,
    ) -> AppState {
        let rate_limiter = RateLimiter::new(config.create_rate);
        AppState(Arc::new(Inner {
            config,
            secret,
            scheduler_url,
            registry: Registry::default(),
            directory: Directory::default(),
            backing,
            metrics: Metrics::default(),
            vigil: Vigil::default(),
            rate_limiter,
            store,
            placement_lock: Mutex::new(()),
            spawn_lock: Mutex::new(()),
            fleet_kick: Notify::new(),
            shutdown,
            tasks: TaskTracker::new(),
        }))
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.config)
            .field("scheduler_url", &self.scheduler_url)
            .field("servers", &self.registry.len())
            .field("rooms", &self.directory.len())
            .finish_non_exhaustive()
    }
}
