//! The scheduler's shared state in PostgreSQL, for scheduler replicas (`--shared`): the registry
//! of session servers (`berth_servers`), the room directory (`berth_placements`) and the epoch
//! counter (`berth_epoch`). Every replica started on the same database reads and changes the
//! same rows, so a replica holds nothing that is lost with it.
//!
//! Invariants, and how the SQL keeps them:
//!
//! - *A server is never overfilled.* `berth_servers.rooms` counts its live (not orphaned)
//!   placements. A slot is taken by one `UPDATE … SET rooms = rooms + 1 … WHERE rooms <
//!   capacity` on the server's row (row lock, re-checked after waiting) in the transaction that
//!   inserts the placement; every statement that orphans, moves or forgets a placement adjusts
//!   the count in the same transaction.
//! - *Epochs only grow, across replicas.* One row, `UPDATE berth_epoch SET value = value + 1`,
//!   as the last statement before the placement's `COMMIT` (short row lock); reported epochs push
//!   it up (`GREATEST`). It starts at the current time in milliseconds, above the epochs of a
//!   single-process scheduler that ran before.
//! - *Lock order:* server rows before placement rows, so deadlocks are rare; the few paths that
//!   cannot follow it fail the call if PostgreSQL reports one (503, and the caller retries).
//! - *Spawning:* decisions that add `starting` servers run under the transaction-level advisory
//!   lock [`SPAWN_LOCK`], so the fleet cap holds globally and two replicas never spawn for the
//!   same need (the second sees the first's `starting` rows). The fleet upkeep (dead servers,
//!   expiries, scale-down) runs only in the replica that wins [`UPKEEP_LOCK`] with
//!   `pg_try_advisory_xact_lock` for that round.
//!
//! Times are the database's (`now()`), so replicas' clocks never disagree. Every call is bounded
//! by [`CALL_TIMEOUT`]; a small pool of connections lets a replica run calls side by side.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use berth_protocol::cluster::{Capacity, HostedRoom, RoomInfo, ServerInfo, ServerState};
use tokio::sync::Mutex;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, GenericClient, NoTls, Transaction};

use crate::postgres::{insert_room, pg_error};
use crate::{RoomMeta, StoreError, from_sql, to_sql};

/// Bound on one call (connecting and retries included).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections per replica.
const POOL: usize = 4;
/// Advisory lock (transaction level) around spawn decisions.
pub const SPAWN_LOCK: i64 = 0x0062_6572_7401;
/// Advisory lock (transaction level, tried) that elects the replica doing a fleet upkeep round.
pub const UPKEEP_LOCK: i64 = 0x0062_6572_7402;
/// Same as the store's: serialises schema creation.
const SCHEMA_LOCK: i64 = 0x0062_6572_7468;

const SCHEMA: &str = "
SET LOCAL client_min_messages = warning;
CREATE TABLE IF NOT EXISTS berth_servers (
    server_id       TEXT PRIMARY KEY,
    url             TEXT NOT NULL DEFAULT '',
    admin_url       TEXT,
    state           TEXT NOT NULL,
    capacity        INT NOT NULL,
    members_per_room INT NOT NULL,
    rooms           INT NOT NULL DEFAULT 0,
    claims          INT NOT NULL DEFAULT 0,
    connections     INT NOT NULL DEFAULT 0,
    managed         BOOLEAN NOT NULL,
    pid             INT,
    spawned_by      TEXT,
    drain_requested BOOLEAN NOT NULL DEFAULT false,
    started_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_heartbeat  TIMESTAMPTZ NOT NULL DEFAULT now(),
    empty_since     TIMESTAMPTZ,
    dead_since      TIMESTAMPTZ,
    dead_reason     TEXT
);
CREATE TABLE IF NOT EXISTS berth_placements (
    room_id       TEXT PRIMARY KEY,
    server_id     TEXT NOT NULL,
    epoch         BIGINT NOT NULL,
    name          TEXT NOT NULL,
    public        BOOLEAN NOT NULL,
    members       INT NOT NULL DEFAULT 0,
    placed_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_reported TIMESTAMPTZ,
    orphaned_at   TIMESTAMPTZ,
    released      BOOLEAN NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS berth_placements_live ON berth_placements (server_id) WHERE orphaned_at IS NULL;
CREATE INDEX IF NOT EXISTS berth_placements_orphaned ON berth_placements (orphaned_at) WHERE orphaned_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS berth_epoch (
    id    BOOLEAN PRIMARY KEY DEFAULT true CHECK (id),
    value BIGINT NOT NULL
);
";

/// Takes the next epoch (last statement before a placement's `COMMIT`).
const NEXT_EPOCH: &str = "UPDATE berth_epoch SET value = value + 1 RETURNING value";

/// Where a room lives, as the directory says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementRow {
    pub room_id: String,
    pub server_id: String,
    /// The server's `ws://` URL (empty for a server that is gone).
    pub url: String,
    pub epoch: u64,
    pub name: String,
    pub public: bool,
}

/// What [`ControlStore::lookup`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Placed on a ready or draining server.
    Live(PlacementRow),
    /// Known but dormant (its server released it, died or left): place it again. `from` names
    /// the server it was on (empty when never placed since it was found in `berth_rooms`).
    Dormant { from: String },
    /// Neither in the directory nor in `berth_rooms`.
    Unknown,
}

/// What [`ControlStore::relocate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relocated {
    /// Placed again, under a new epoch.
    Moved(PlacementRow),
    /// Someone placed it first (or its server came back): here it is.
    Current(PlacementRow),
    /// No ready server has a free slot.
    NoSlot,
    /// Forgotten meanwhile.
    Gone,
}

/// What [`ControlStore::claim_capacity`] decided, under [`SPAWN_LOCK`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpawnClaim {
    /// A starting server (spawned by any replica) will have a slot for this create.
    Existing(String),
    /// A `starting` row was inserted under this id: the caller spawns it.
    Spawn(String),
    /// The fleet is at its cap (`active` servers).
    AtCap { active: usize },
}

/// A server's (re-)registration.
#[derive(Debug, Clone)]
pub struct Registration<'a> {
    pub server_id: &'a str,
    pub url: &'a str,
    pub admin_url: Option<&'a str>,
    pub capacity: Capacity,
    pub connections: u32,
    pub draining: bool,
    pub pid: Option<u32>,
    pub rooms: &'a [HostedRoom],
}

/// What a registration found and left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// State before (`None`: a server never seen).
    pub previous: Option<ServerState>,
    pub state: ServerState,
    pub managed: bool,
    /// Milliseconds since its row was created (spawn latency of a managed server).
    pub age_ms: u64,
}

/// Answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Beat {
    pub state: ServerState,
    pub drain: bool,
    /// Reported rooms placed elsewhere, released or forgotten: the server must stop them.
    pub revoked: Vec<String>,
    /// The server switched to draining with this heartbeat.
    pub began_draining: bool,
}

/// Durations of one upkeep round.
#[derive(Debug, Clone, Copy)]
pub struct UpkeepRules {
    pub heartbeat_timeout: Duration,
    /// A `starting` row older than this never registered (its spawner is gone): removed.
    pub never_registered: Duration,
    pub dead_retention: Duration,
    pub unclaimed_room: Duration,
    pub orphan_ttl: Duration,
    pub server_idle: Duration,
    /// Free room slots the warm buffer keeps.
    pub warm_slots: u32,
}

/// What an upkeep round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Upkeep {
    /// Servers declared dead on silence, with the reason.
    pub dead: Vec<(String, String)>,
    /// Their rooms, now dormant.
    pub orphaned: u64,
    /// Placed rooms nobody opened in time (now dormant).
    pub unclaimed: Vec<String>,
    pub forgotten_rooms: u64,
    pub forgotten_servers: u64,
    /// Idle managed servers asked to drain.
    pub drained: Vec<String>,
}

/// Gauges for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetCounts {
    pub servers: Vec<(ServerState, u64)>,
    pub free_slots: u64,
    pub rooms: u64,
    pub orphaned_rooms: u64,
}

/// The scheduler replicas' shared state: one per replica, cheap to share behind an `Arc`.
pub struct ControlStore {
    config: tokio_postgres::Config,
    pool: Vec<Mutex<Option<Client>>>,
    next: AtomicUsize,
}

impl std::fmt::Debug for ControlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlStore").finish_non_exhaustive()
    }
}

fn parse_state(s: &str) -> ServerState {
    match s {
        "starting" => ServerState::Starting,
        "ready" => ServerState::Ready,
        "draining" => ServerState::Draining,
        _ => ServerState::Dead,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn int(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

fn uint(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

/// A deadlock or serialization failure: the connection itself is fine.
/// Runs of one control-plane transaction that PostgreSQL rolled back for a deadlock or a
/// serialization failure, before the call fails.
const TRANSIENT_ATTEMPTS: u32 = 4;

/// Runs `op` again when PostgreSQL rolled its transaction back for a deadlock or a
/// serialization failure (creates racing for the same servers' rows), after a pause of a few
/// milliseconds that differs between contenders; at most [`TRANSIENT_ATTEMPTS`] runs.
async fn retry_transient<T, F, Fut>(mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Err(e) if is_transient(&e) && attempt < TRANSIENT_ATTEMPTS => {
                tracing::debug!(error = %e, attempt, "control-plane transaction rolled back; running it again");
                tokio::time::sleep(Duration::from_millis(rand::random_range(2..20))).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

fn is_transient(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable(why) if why.contains(SqlState::T_R_DEADLOCK_DETECTED.code())
        || why.contains(SqlState::T_R_SERIALIZATION_FAILURE.code()))
}

impl ControlStore {
    /// Connects to `url` and creates the tables (idempotent). The store's own schema
    /// (`berth_rooms`, …) must exist already: open the [`crate::Store`] first.
    pub async fn open(url: &str) -> Result<ControlStore, StoreError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Config(format!("invalid --database-url: {e}")))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        if config.get_options().is_none() {
            config.options(crate::postgres::SESSION_OPTIONS);
        }
        if config.get_application_name().is_none() {
            config.application_name("berth-scheduler");
        }
        let store = ControlStore {
            config,
            pool: (0..POOL).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        };
        let now_ms = to_sql(berth_protocol::now_ms());
        store
            .call(async |c| {
                let tx = c.transaction().await.map_err(pg_error)?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
                    .await
                    .map_err(pg_error)?;
                tx.batch_execute(SCHEMA).await.map_err(pg_error)?;
                tx.execute(
                    "INSERT INTO berth_epoch (id, value) VALUES (true, $1) ON CONFLICT DO NOTHING",
                    &[&now_ms],
                )
                .await
                .map_err(pg_error)?;
                tx.commit().await.map_err(pg_error)
            })
            .await?;
        Ok(store)
    }

    /// Runs `op` on a pooled connection, bounded by [`CALL_TIMEOUT`]. A connection that failed
    /// is dropped; the next call opens a new one. A deadlock (rare: see the lock order above)
    /// fails the call; the calls that lock several servers' or placements' rows run again
    /// through [`retry_transient`].
    async fn call<T>(
        &self,
        op: impl AsyncFnOnce(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len();
        let mut slot = self.pool[i].lock().await;
        let result = tokio::time::timeout(CALL_TIMEOUT, async {
            if slot.as_ref().is_none_or(Client::is_closed) {
                *slot = None;
                let (client, connection) = self.config.connect(NoTls).await.map_err(pg_error)?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "postgres connection ended");
                    }
                });
                *slot = Some(client);
            }
            op(slot.as_mut().expect("connected above")).await
        })
        .await;
        match result {
            Ok(Err(e)) => {
                if !is_transient(&e) {
                    *slot = None;
                }
                Err(e)
            }
            Ok(ok) => ok,
            Err(_) => {
                *slot = None;
                Err(StoreError::Unavailable(
                    "postgres: a control-plane call timed out".into(),
                ))
            }
        }
    }

    // ---- placement ----------------------------------------------------------------------

    /// Places a new room: reserves a slot on the fullest ready server with one, records the
    /// room's metadata (and its creator as first member) and its placement under a fresh epoch,
    /// all in one transaction. `None`: no ready server has a free slot (nothing recorded).
    pub async fn place_new(&self, meta: &RoomMeta) -> Result<Option<PlacementRow>, StoreError> {
        retry_transient(|| {
            self.call(async |c| {
                let tx = c.transaction().await.map_err(pg_error)?;
                let Some((server_id, url)) = reserve(&tx).await? else {
                    return Ok(None);
                };
                insert_room(&tx, meta).await?;
                let epoch: i64 = tx
                    .query_one(
                        &format!(
                            "WITH e AS ({NEXT_EPOCH})
                         INSERT INTO berth_placements (room_id, server_id, epoch, name, public)
                         SELECT $1, $2, e.value, $3, $4 FROM e RETURNING epoch"
                        ),
                        &[&meta.room_id, &server_id, &meta.name, &meta.public],
                    )
                    .await
                    .map_err(pg_error)?
                    .get(0);
                tx.commit().await.map_err(pg_error)?;
                Ok(Some(PlacementRow {
                    room_id: meta.room_id.clone(),
                    server_id,
                    url,
                    epoch: from_sql(epoch),
                    name: meta.name.clone(),
                    public: meta.public,
                }))
            })
        })
        .await
    }

    /// Where `room_id` lives. A room the directory does not know but `berth_rooms` does is
    /// entered as dormant (so that the next step places it).
    pub async fn lookup(&self, room_id: &str) -> Result<Lookup, StoreError> {
        self.call(async |c| {
            for _ in 0..2 {
                let row = c
                    .query_opt(
                        "SELECT p.server_id, p.epoch, p.name, p.public, p.orphaned_at IS NULL,
                                s.state, s.url
                         FROM berth_placements p LEFT JOIN berth_servers s USING (server_id)
                         WHERE p.room_id = $1",
                        &[&room_id],
                    )
                    .await
                    .map_err(pg_error)?;
                if let Some(row) = row {
                    let server_id: String = row.get(0);
                    let live: bool = row.get(4);
                    let state = row.get::<_, Option<String>>(5).map(|s| parse_state(&s));
                    if live && matches!(state, Some(ServerState::Ready | ServerState::Draining)) {
                        return Ok(Lookup::Live(PlacementRow {
                            room_id: room_id.to_owned(),
                            server_id,
                            url: row.get::<_, Option<String>>(6).unwrap_or_default(),
                            epoch: from_sql(row.get(1)),
                            name: row.get(2),
                            public: row.get(3),
                        }));
                    }
                    return Ok(Lookup::Dormant { from: server_id });
                }
                let found = c
                    .execute(
                        "INSERT INTO berth_placements (room_id, server_id, epoch, name, public, orphaned_at, released)
                         SELECT room_id, '', 0, name, public, now(), true FROM berth_rooms WHERE room_id = $1
                         ON CONFLICT (room_id) DO NOTHING",
                        &[&room_id],
                    )
                    .await
                    .map_err(pg_error)?;
                if found == 0
                    && c.query_opt("SELECT 1 FROM berth_rooms WHERE room_id = $1", &[&room_id])
                        .await
                        .map_err(pg_error)?
                        .is_none()
                {
                    return Ok(Lookup::Unknown);
                }
            }
            Ok(Lookup::Unknown)
        })
        .await
    }

    /// Places a dormant room again (new server, new epoch), unless someone did meanwhile.
    pub async fn relocate(&self, room_id: &str) -> Result<Relocated, StoreError> {
        retry_transient(|| self.call(async |c| {
            let tx = c.transaction().await.map_err(pg_error)?;
            let Some((server_id, url)) = reserve(&tx).await? else {
                return Ok(Relocated::NoSlot);
            };
            let Some(row) = tx
                .query_opt(
                    "SELECT p.server_id, p.epoch, p.name, p.public, p.orphaned_at IS NULL, s.state, s.url
                     FROM berth_placements p LEFT JOIN berth_servers s USING (server_id)
                     WHERE p.room_id = $1 FOR UPDATE OF p",
                    &[&room_id],
                )
                .await
                .map_err(pg_error)?
            else {
                return Ok(Relocated::Gone); // dropping `tx` rolls the reservation back
            };
            let old_server: String = row.get(0);
            let name: String = row.get(2);
            let public: bool = row.get(3);
            let live: bool = row.get(4);
            let state = row.get::<_, Option<String>>(5).map(|s| parse_state(&s));
            if live && matches!(state, Some(ServerState::Ready | ServerState::Draining)) {
                return Ok(Relocated::Current(PlacementRow {
                    room_id: room_id.to_owned(),
                    server_id: old_server,
                    url: row.get::<_, Option<String>>(6).unwrap_or_default(),
                    epoch: from_sql(row.get(1)),
                    name,
                    public,
                }));
            }
            if live {
                tx.execute(
                    "UPDATE berth_servers SET rooms = GREATEST(rooms - 1, 0) WHERE server_id = $1",
                    &[&old_server],
                )
                .await
                .map_err(pg_error)?;
            }
            let epoch: i64 = tx
                .query_one(
                    &format!(
                        "WITH e AS ({NEXT_EPOCH})
                         UPDATE berth_placements SET server_id = $2, epoch = e.value, members = 0,
                             placed_at = now(), last_reported = NULL, orphaned_at = NULL, released = false
                         FROM e WHERE room_id = $1 RETURNING epoch"
                    ),
                    &[&room_id, &server_id],
                )
                .await
                .map_err(pg_error)?
                .get(0);
            tx.commit().await.map_err(pg_error)?;
            Ok(Relocated::Moved(PlacementRow {
                room_id: room_id.to_owned(),
                server_id,
                url,
                epoch: from_sql(epoch),
                name,
                public,
            }))
        }))
        .await
    }

    /// Makes the room dormant if `server_id`/`epoch` is still its placement (a stale release is
    /// ignored); returns whether it was.
    pub async fn release(
        &self,
        room_id: &str,
        server_id: &str,
        epoch: u64,
    ) -> Result<bool, StoreError> {
        self.call(async |c| {
            let tx = c.transaction().await.map_err(pg_error)?;
            tx.execute(
                "SELECT 1 FROM berth_servers WHERE server_id = $1 FOR UPDATE",
                &[&server_id],
            )
            .await
            .map_err(pg_error)?;
            let Some(row) = tx
                .query_opt(
                    "SELECT orphaned_at IS NULL FROM berth_placements
                     WHERE room_id = $1 AND server_id = $2 AND epoch = $3 FOR UPDATE",
                    &[&room_id, &server_id, &to_sql(epoch)],
                )
                .await
                .map_err(pg_error)?
            else {
                return Ok(false);
            };
            let live: bool = row.get(0);
            tx.execute(
                "UPDATE berth_placements SET released = true, members = 0,
                     orphaned_at = COALESCE(orphaned_at, now()) WHERE room_id = $1",
                &[&room_id],
            )
            .await
            .map_err(pg_error)?;
            if live {
                tx.execute(
                    "UPDATE berth_servers SET rooms = GREATEST(rooms - 1, 0) WHERE server_id = $1",
                    &[&server_id],
                )
                .await
                .map_err(pg_error)?;
            }
            tx.commit().await.map_err(pg_error)?;
            Ok(true)
        })
        .await
    }

    /// Enters the newest `limit` public rooms of `berth_rooms` as dormant (so the public list
    /// shows them after a restart of the whole cluster); returns how many were new.
    pub async fn load_dormant(&self, limit: usize) -> Result<u64, StoreError> {
        self.call(async |c| {
            c.execute(
                "INSERT INTO berth_placements (room_id, server_id, epoch, name, public, orphaned_at, released)
                 SELECT room_id, '', 0, name, public, now(), true FROM berth_rooms
                 WHERE public ORDER BY created_at_ms DESC, room_id LIMIT $1
                 ON CONFLICT (room_id) DO NOTHING",
                &[&to_sql(limit as u64)],
            )
            .await
            .map_err(pg_error)
        })
        .await
    }

    /// `GET /v1/rooms`, newest placements first.
    pub async fn rooms(&self, public: Option<bool>) -> Result<Vec<RoomInfo>, StoreError> {
        self.call(async |c| {
            let rows = c
                .query(
                    "SELECT room_id, name, public, server_id, epoch, members FROM berth_placements
                     WHERE $1::bool IS NULL OR public = $1 ORDER BY epoch DESC, room_id",
                    &[&public],
                )
                .await
                .map_err(pg_error)?;
            Ok(rows
                .iter()
                .map(|r| RoomInfo {
                    room_id: r.get(0),
                    name: r.get(1),
                    public: r.get(2),
                    server_id: r.get(3),
                    epoch: from_sql(r.get(4)),
                    members: uint(r.get(5)),
                })
                .collect())
        })
        .await
    }

    // ---- registry -----------------------------------------------------------------------

    /// Records a (re-)registration and adopts the rooms it reports: unknown rooms and dormant
    /// ones of its own are adopted, rooms it holds under a newer epoch move to it, rooms placed
    /// elsewhere since are left alone (its next heartbeat gets them revoked). A server never seen
    /// is entered as an outside (unmanaged) one.
    pub async fn register(&self, reg: &Registration<'_>) -> Result<Registered, StoreError> {
        retry_transient(|| {
            self.call(async |c| {
                let tx = c.transaction().await.map_err(pg_error)?;
                let found = tx
                    .query_opt(
                        "SELECT state, managed, drain_requested,
                            (extract(epoch FROM now() - started_at) * 1000)::int8
                     FROM berth_servers WHERE server_id = $1 FOR UPDATE",
                        &[&reg.server_id],
                    )
                    .await
                    .map_err(pg_error)?;
                let pid = reg.pid.map(|p| i32::try_from(p).unwrap_or(0));
                let (previous, managed, drain_requested, age_ms) = match &found {
                    Some(r) => (
                        Some(parse_state(&r.get::<_, String>(0))),
                        r.get::<_, bool>(1),
                        r.get::<_, bool>(2),
                        from_sql(r.get(3)),
                    ),
                    None => (None, false, false, 0),
                };
                let state = if reg.draining || drain_requested {
                    ServerState::Draining
                } else {
                    ServerState::Ready
                };
                if found.is_some() {
                    tx.execute(
                        "UPDATE berth_servers SET url = $2, admin_url = $3, capacity = $4,
                         members_per_room = $5, connections = $6,
                         pid = CASE WHEN managed THEN COALESCE(pid, $7) ELSE $7 END,
                         last_heartbeat = now(), state = $8, dead_since = NULL, dead_reason = NULL
                     WHERE server_id = $1",
                        &[
                            &reg.server_id,
                            &reg.url,
                            &reg.admin_url,
                            &int(reg.capacity.rooms),
                            &int(reg.capacity.members_per_room),
                            &int(reg.connections),
                            &pid,
                            &state.as_str(),
                        ],
                    )
                    .await
                    .map_err(pg_error)?;
                } else {
                    tx.execute(
                        "INSERT INTO berth_servers (server_id, url, admin_url, state, capacity,
                         members_per_room, connections, managed, pid)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, false, $8)",
                        &[
                            &reg.server_id,
                            &reg.url,
                            &reg.admin_url,
                            &state.as_str(),
                            &int(reg.capacity.rooms),
                            &int(reg.capacity.members_per_room),
                            &int(reg.connections),
                            &pid,
                        ],
                    )
                    .await
                    .map_err(pg_error)?;
                }
                let adopted = adopt(&tx, reg.server_id, reg.rooms).await?;
                if adopted != 0 {
                    tx.execute(
                    "UPDATE berth_servers SET rooms = GREATEST(rooms + $2, 0) WHERE server_id = $1",
                    &[&reg.server_id, &adopted],
                )
                .await
                .map_err(pg_error)?;
                }
                if let Some(max) = reg.rooms.iter().map(|r| r.epoch).max() {
                    tx.execute(
                        "UPDATE berth_epoch SET value = GREATEST(value, $1)",
                        &[&to_sql(max)],
                    )
                    .await
                    .map_err(pg_error)?;
                }
                tx.commit().await.map_err(pg_error)?;
                Ok(Registered {
                    previous,
                    state,
                    managed,
                    age_ms,
                })
            })
        })
        .await
    }

    /// Records a heartbeat of a ready or draining server (`None`: unknown, dead or gone: it must
    /// register again). Reported rooms that are its current placements are refreshed (dormant
    /// ones adopted back); the others are revoked; its placements unreported for `forget_after`
    /// are forgotten.
    pub async fn heartbeat(
        &self,
        server_id: &str,
        connections: u32,
        draining: bool,
        rooms: &[HostedRoom],
        forget_after: Duration,
    ) -> Result<Option<Beat>, StoreError> {
        retry_transient(|| self.call(async |c| {
            let tx = c.transaction().await.map_err(pg_error)?;
            let Some(row) = tx
                .query_opt(
                    "UPDATE berth_servers SET connections = $2, last_heartbeat = now(),
                         state = CASE WHEN $3 AND state = 'ready' THEN 'draining' ELSE state END
                     WHERE server_id = $1 AND state IN ('ready', 'draining')
                     RETURNING state, drain_requested",
                    &[&server_id, &int(connections), &draining],
                )
                .await
                .map_err(pg_error)?
            else {
                return Ok(None);
            };
            let state = parse_state(&row.get::<_, String>(0));
            let drain: bool = row.get(1);
            let ids: Vec<&str> = rooms.iter().map(|r| r.room_id.as_str()).collect();
            let current: HashMap<String, (String, u64, bool, bool)> = tx
                .query(
                    "SELECT room_id, server_id, epoch, orphaned_at IS NOT NULL, released
                     FROM berth_placements WHERE room_id = ANY($1) ORDER BY room_id FOR UPDATE",
                    &[&ids],
                )
                .await
                .map_err(pg_error)?
                .iter()
                .map(|r| {
                    (
                        r.get(0),
                        (r.get(1), from_sql(r.get(2)), r.get(3), r.get(4)),
                    )
                })
                .collect();
            let mut revoked = Vec::new();
            let mut kept_ids = Vec::new();
            let mut kept_members = Vec::new();
            let mut readopted = 0i32;
            for room in rooms {
                match current.get(&room.room_id) {
                    Some((sid, epoch, orphaned, released))
                        if sid == server_id && *epoch == room.epoch && !released =>
                    {
                        if *orphaned {
                            // Declared gone but alive, and nobody placed the room again.
                            readopted += 1;
                        }
                        kept_ids.push(room.room_id.as_str());
                        kept_members.push(int(room.members));
                    }
                    _ => revoked.push(room.room_id.clone()),
                }
            }
            if !kept_ids.is_empty() {
                tx.execute(
                    "UPDATE berth_placements p SET members = r.members, last_reported = now(),
                         orphaned_at = NULL
                     FROM UNNEST($1::text[], $2::int4[]) AS r(room_id, members)
                     WHERE p.room_id = r.room_id",
                    &[&kept_ids, &kept_members],
                )
                .await
                .map_err(pg_error)?;
            }
            let forgotten = tx
                .query(
                    "DELETE FROM berth_placements WHERE server_id = $1 AND orphaned_at IS NULL
                         AND NOT (room_id = ANY($2))
                         AND COALESCE(last_reported, placed_at) < now() - ($3::float8 * interval '1 millisecond')
                     RETURNING room_id",
                    &[&server_id, &ids, &ms(forget_after)],
                )
                .await
                .map_err(pg_error)?;
            for row in &forgotten {
                tracing::info!(room_id = %row.get::<_, String>(0), server_id, "forgetting a placement its server never reported");
            }
            let delta = readopted - i32::try_from(forgotten.len()).unwrap_or(i32::MAX);
            if delta != 0 {
                tx.execute(
                    "UPDATE berth_servers SET rooms = GREATEST(rooms + $2, 0) WHERE server_id = $1",
                    &[&server_id, &delta],
                )
                .await
                .map_err(pg_error)?;
            }
            tx.commit().await.map_err(pg_error)?;
            Ok(Some(Beat {
                state,
                drain,
                revoked,
                began_draining: draining && state == ServerState::Draining,
            }))
        }))
        .await
    }

    /// Asks a server to drain (no new rooms; its next heartbeat answer says so). False when it
    /// is unknown or dead.
    pub async fn drain(&self, server_id: &str) -> Result<bool, StoreError> {
        self.call(async |c| {
            Ok(c.execute(
                "UPDATE berth_servers SET drain_requested = true,
                     state = CASE WHEN state = 'ready' THEN 'draining' ELSE state END
                 WHERE server_id = $1 AND state <> 'dead'",
                &[&server_id],
            )
            .await
            .map_err(pg_error)?
                > 0)
        })
        .await
    }

    /// A server leaving (or a spawn that never registered): its row goes, its rooms go dormant.
    /// False when it was unknown.
    pub async fn remove(&self, server_id: &str) -> Result<bool, StoreError> {
        self.call(async |c| {
            let tx = c.transaction().await.map_err(pg_error)?;
            let gone = tx
                .execute(
                    "DELETE FROM berth_servers WHERE server_id = $1",
                    &[&server_id],
                )
                .await
                .map_err(pg_error)?;
            orphan(&tx, &[server_id]).await?;
            tx.commit().await.map_err(pg_error)?;
            Ok(gone > 0)
        })
        .await
    }

    /// A spawned process ended after registering: listed as dead with `reason`, its rooms
    /// dormant. Returns the state it had.
    pub async fn bury(
        &self,
        server_id: &str,
        reason: &str,
    ) -> Result<Option<ServerState>, StoreError> {
        self.call(async |c| {
            let tx = c.transaction().await.map_err(pg_error)?;
            let Some(row) = tx
                .query_opt(
                    "SELECT state FROM berth_servers WHERE server_id = $1 FOR UPDATE",
                    &[&server_id],
                )
                .await
                .map_err(pg_error)?
            else {
                return Ok(None);
            };
            tx.execute(
                "UPDATE berth_servers SET state = 'dead', rooms = 0, connections = 0,
                     dead_since = COALESCE(dead_since, now()), dead_reason = $2 WHERE server_id = $1",
                &[&server_id, &reason],
            )
            .await
            .map_err(pg_error)?;
            orphan(&tx, &[server_id]).await?;
            tx.commit().await.map_err(pg_error)?;
            Ok(Some(parse_state(&row.get::<_, String>(0))))
        })
        .await
    }

    /// The state of one server (`None`: not listed).
    pub async fn server_state(&self, server_id: &str) -> Result<Option<ServerState>, StoreError> {
        self.call(async |c| {
            Ok(c.query_opt(
                "SELECT state FROM berth_servers WHERE server_id = $1",
                &[&server_id],
            )
            .await
            .map_err(pg_error)?
            .map(|r| parse_state(&r.get::<_, String>(0))))
        })
        .await
    }

    /// Records the pid of a server this replica spawned.
    pub async fn set_pid(&self, server_id: &str, pid: u32) -> Result<(), StoreError> {
        let pid = i32::try_from(pid).unwrap_or(0);
        self.call(async |c| {
            c.execute(
                "UPDATE berth_servers SET pid = $2 WHERE server_id = $1",
                &[&server_id, &pid],
            )
            .await
            .map(drop)
            .map_err(pg_error)
        })
        .await
    }

    /// `GET /v1/servers`, oldest first.
    pub async fn servers(&self) -> Result<Vec<ServerInfo>, StoreError> {
        self.call(async |c| {
            let rows = c
                .query(
                    "SELECT server_id, url, state, rooms, connections, capacity, members_per_room,
                         managed, pid, extract(epoch FROM now() - started_at)::int8,
                         GREATEST(extract(epoch FROM now() - last_heartbeat) * 1000, 0)::int8,
                         dead_reason, admin_url
                     FROM berth_servers ORDER BY started_at, server_id",
                    &[],
                )
                .await
                .map_err(pg_error)?;
            Ok(rows
                .iter()
                .map(|r| ServerInfo {
                    id: r.get(0),
                    url: r.get(1),
                    state: parse_state(&r.get::<_, String>(2)),
                    rooms: uint(r.get(3)),
                    connections: uint(r.get(4)),
                    capacity: Capacity {
                        rooms: uint(r.get(5)),
                        members_per_room: uint(r.get(6)),
                    },
                    managed: r.get(7),
                    pid: r
                        .get::<_, Option<i32>>(8)
                        .and_then(|p| u32::try_from(p).ok()),
                    age_secs: from_sql(r.get(9)),
                    last_heartbeat_ms_ago: from_sql(r.get(10)),
                    dead_reason: r.get(11),
                    admin_url: r.get(12),
                })
                .collect())
        })
        .await
    }

    /// Gauges for `/metrics`.
    pub async fn counts(&self) -> Result<FleetCounts, StoreError> {
        self.call(async |c| {
            let servers = c
                .query(
                    "SELECT state, count(*)::int8,
                         COALESCE(sum(CASE WHEN state = 'ready' AND NOT drain_requested
                             THEN GREATEST(capacity - rooms, 0) ELSE 0 END), 0)::int8
                     FROM berth_servers GROUP BY state",
                    &[],
                )
                .await
                .map_err(pg_error)?;
            let rooms = c
                .query_one(
                    "SELECT count(*)::int8, count(orphaned_at)::int8 FROM berth_placements",
                    &[],
                )
                .await
                .map_err(pg_error)?;
            Ok(FleetCounts {
                servers: servers
                    .iter()
                    .map(|r| (parse_state(&r.get::<_, String>(0)), from_sql(r.get(1))))
                    .collect(),
                free_slots: servers.iter().map(|r| from_sql(r.get(2))).sum(),
                rooms: from_sql(rooms.get(0)),
                orphaned_rooms: from_sql(rooms.get(1)),
            })
        })
        .await
    }

    // ---- spawning -----------------------------------------------------------------------

    /// For a create that found no free slot: counts it on a starting server that still has an
    /// unclaimed slot, or enters a new `starting` server `new_id` (spawned by `replica`) for the
    /// caller to start, within `max_servers`. Under [`SPAWN_LOCK`].
    pub async fn claim_capacity(
        &self,
        new_id: &str,
        capacity: Capacity,
        max_servers: u32,
        replica: &str,
    ) -> Result<SpawnClaim, StoreError> {
        self.call(async |c| {
            let tx = c.transaction().await.map_err(pg_error)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SPAWN_LOCK])
                .await
                .map_err(pg_error)?;
            if let Some(row) = tx
                .query_opt(
                    "UPDATE berth_servers SET claims = claims + 1 WHERE server_id = (
                         SELECT server_id FROM berth_servers
                         WHERE state = 'starting' AND NOT drain_requested AND claims < capacity
                         ORDER BY started_at, server_id LIMIT 1)
                     RETURNING server_id",
                    &[],
                )
                .await
                .map_err(pg_error)?
            {
                tx.commit().await.map_err(pg_error)?;
                return Ok(SpawnClaim::Existing(row.get(0)));
            }
            let active = active_count(&tx).await?;
            if active >= max_servers as usize {
                return Ok(SpawnClaim::AtCap { active });
            }
            insert_starting(&tx, new_id, capacity, replica, 1).await?;
            tx.commit().await.map_err(pg_error)?;
            Ok(SpawnClaim::Spawn(new_id.to_owned()))
        })
        .await
    }

    /// Gives back a claim of [`ControlStore::claim_capacity`].
    pub async fn unclaim(&self, server_id: &str) -> Result<(), StoreError> {
        self.call(async |c| {
            c.execute(
                "UPDATE berth_servers SET claims = GREATEST(claims - 1, 0) WHERE server_id = $1",
                &[&server_id],
            )
            .await
            .map(drop)
            .map_err(pg_error)
        })
        .await
    }

    /// Enters `starting` servers (ids drawn by `new_id`) until the free slots of the whole fleet
    /// cover `target`, within `max_servers`; returns the ids for the caller to start. Under
    /// [`SPAWN_LOCK`].
    pub async fn top_up(
        &self,
        target: u32,
        capacity: Capacity,
        max_servers: u32,
        replica: &str,
        new_id: impl Fn() -> String,
    ) -> Result<Vec<String>, StoreError> {
        self.call(async |c| {
            let tx = c.transaction().await.map_err(pg_error)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SPAWN_LOCK])
                .await
                .map_err(pg_error)?;
            let mut free = spare_slots(&tx).await?;
            let mut active = active_count(&tx).await?;
            let mut started = Vec::new();
            while free < u64::from(target) && active < max_servers as usize {
                let id = new_id();
                insert_starting(&tx, &id, capacity, replica, 0).await?;
                free += u64::from(capacity.rooms);
                active += 1;
                started.push(id);
            }
            tx.commit().await.map_err(pg_error)?;
            Ok(started)
        })
        .await
    }

    /// Of `servers` (spawned by this replica), those declared dead for `dead_for` and silent for
    /// `silent_for`: hung processes to kill.
    pub async fn hung(
        &self,
        servers: &[String],
        dead_for: Duration,
        silent_for: Duration,
    ) -> Result<Vec<String>, StoreError> {
        if servers.is_empty() {
            return Ok(Vec::new());
        }
        self.call(async |c| {
            Ok(c.query(
                "SELECT server_id FROM berth_servers WHERE server_id = ANY($1) AND state = 'dead'
                     AND dead_since < now() - ($2::float8 * interval '1 millisecond')
                     AND last_heartbeat < now() - ($3::float8 * interval '1 millisecond')",
                &[&servers, &ms(dead_for), &ms(silent_for)],
            )
            .await
            .map_err(pg_error)?
            .iter()
            .map(|r| r.get(0))
            .collect())
        })
        .await
    }

    // ---- upkeep -------------------------------------------------------------------------

    /// One round of fleet upkeep, if this replica wins [`UPKEEP_LOCK`] for it (`None`: another
    /// replica is doing it): silent servers are declared dead and their rooms made dormant,
    /// `starting` rows whose spawner vanished are removed, long-dead servers forgotten, placed
    /// rooms nobody opened made dormant, old dormant rooms forgotten, and idle managed servers
    /// beyond the warm buffer asked to drain (they exit by themselves once drained).
    pub async fn upkeep(&self, rules: &UpkeepRules) -> Result<Option<Upkeep>, StoreError> {
        self.call(async |c| {
            let tx = c.transaction().await.map_err(pg_error)?;
            let won: bool = tx
                .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&UPKEEP_LOCK])
                .await
                .map_err(pg_error)?
                .get(0);
            if !won {
                return Ok(None);
            }
            let dead: Vec<(String, String)> = tx
                .query(
                    "UPDATE berth_servers SET state = 'dead', rooms = 0, connections = 0,
                         dead_since = now(),
                         dead_reason = 'silent for '
                             || (extract(epoch FROM now() - last_heartbeat) * 1000)::int8 || ' ms'
                     WHERE state IN ('ready', 'draining')
                         AND last_heartbeat < now() - ($1::float8 * interval '1 millisecond')
                     RETURNING server_id, dead_reason",
                    &[&ms(rules.heartbeat_timeout)],
                )
                .await
                .map_err(pg_error)?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let mut done = Upkeep {
                dead,
                ..Upkeep::default()
            };
            let never: Vec<String> = tx
                .query(
                    "DELETE FROM berth_servers WHERE state = 'starting'
                         AND started_at < now() - ($1::float8 * interval '1 millisecond')
                     RETURNING server_id",
                    &[&ms(rules.never_registered)],
                )
                .await
                .map_err(pg_error)?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let mut gone: Vec<&str> = done.dead.iter().map(|(id, _)| id.as_str()).collect();
            gone.extend(never.iter().map(String::as_str));
            done.orphaned = orphan(&tx, &gone).await?;
            done.forgotten_servers = tx
                .execute(
                    "DELETE FROM berth_servers WHERE state = 'dead'
                         AND dead_since < now() - ($1::float8 * interval '1 millisecond')",
                    &[&ms(rules.dead_retention)],
                )
                .await
                .map_err(pg_error)?;
            // Unclaimed placements: their servers' rows first (lock order).
            let unclaimed = "orphaned_at IS NULL AND last_reported IS NULL
                AND placed_at < now() - ($1::float8 * interval '1 millisecond')";
            tx.execute(
                &format!(
                    "SELECT 1 FROM berth_servers WHERE server_id IN (
                         SELECT server_id FROM berth_placements WHERE {unclaimed})
                     ORDER BY server_id FOR UPDATE"
                ),
                &[&ms(rules.unclaimed_room)],
            )
            .await
            .map_err(pg_error)?;
            let rows = tx
                .query(
                    &format!(
                        "UPDATE berth_placements SET orphaned_at = now(), members = 0
                         WHERE {unclaimed} RETURNING room_id, server_id"
                    ),
                    &[&ms(rules.unclaimed_room)],
                )
                .await
                .map_err(pg_error)?;
            let mut per_server: HashMap<String, i32> = HashMap::new();
            for r in &rows {
                done.unclaimed.push(r.get(0));
                *per_server.entry(r.get(1)).or_default() += 1;
            }
            for (server_id, n) in &per_server {
                tx.execute(
                    "UPDATE berth_servers SET rooms = GREATEST(rooms - $2, 0) WHERE server_id = $1",
                    &[server_id, n],
                )
                .await
                .map_err(pg_error)?;
            }
            done.forgotten_rooms = tx
                .execute(
                    "DELETE FROM berth_placements
                     WHERE orphaned_at < now() - ($1::float8 * interval '1 millisecond')",
                    &[&ms(rules.orphan_ttl)],
                )
                .await
                .map_err(pg_error)?;
            // Scale-down: note since when servers are empty, then drain idle managed ones,
            // youngest first, while the warm buffer stays covered.
            tx.execute(
                "UPDATE berth_servers SET empty_since = CASE WHEN rooms = 0 THEN now() END
                 WHERE state <> 'dead' AND (rooms = 0) = (empty_since IS NULL)",
                &[],
            )
            .await
            .map_err(pg_error)?;
            let mut free = spare_slots(&tx).await?;
            let idle = tx
                .query(
                    "SELECT server_id, capacity FROM berth_servers
                     WHERE managed AND state = 'ready' AND NOT drain_requested AND rooms = 0
                         AND empty_since < now() - ($1::float8 * interval '1 millisecond')
                     ORDER BY started_at DESC, server_id",
                    &[&ms(rules.server_idle)],
                )
                .await
                .map_err(pg_error)?;
            for r in &idle {
                let capacity = u64::from(uint(r.get(1)));
                if free.saturating_sub(capacity) < u64::from(rules.warm_slots) {
                    continue;
                }
                let server_id: String = r.get(0);
                let drained = tx
                    .execute(
                        "UPDATE berth_servers SET drain_requested = true, state = 'draining'
                         WHERE server_id = $1 AND rooms = 0 AND state = 'ready'",
                        &[&server_id],
                    )
                    .await
                    .map_err(pg_error)?;
                if drained > 0 {
                    free = free.saturating_sub(capacity);
                    done.drained.push(server_id);
                }
            }
            tx.commit().await.map_err(pg_error)?;
            Ok(Some(done))
        })
        .await
    }
}

/// Takes a slot on the fullest ready server that has one (row-locked until the transaction
/// ends): first among servers nobody else is placing on right now, then waiting for the others.
async fn reserve(tx: &Transaction<'_>) -> Result<Option<(String, String)>, StoreError> {
    for skip in [" SKIP LOCKED", ""] {
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE berth_servers SET rooms = rooms + 1, empty_since = NULL
                     WHERE server_id = (
                         SELECT server_id FROM berth_servers
                         WHERE state = 'ready' AND NOT drain_requested AND rooms < capacity
                         ORDER BY capacity - rooms, server_id LIMIT 1 FOR UPDATE{skip})
                       AND state = 'ready' AND NOT drain_requested AND rooms < capacity
                     RETURNING server_id, url"
                ),
                &[],
            )
            .await
            .map_err(pg_error)?;
        if let Some(row) = row {
            return Ok(Some((row.get(0), row.get(1))));
        }
    }
    Ok(None)
}

/// Adopts the rooms a registering server reports; returns the change of its room count.
async fn adopt(
    tx: &Transaction<'_>,
    server_id: &str,
    rooms: &[HostedRoom],
) -> Result<i32, StoreError> {
    let mut delta = 0;
    for room in rooms {
        let epoch = to_sql(room.epoch);
        let members = int(room.members);
        let row = tx
            .query_opt(
                "SELECT server_id, epoch, orphaned_at IS NOT NULL, released
                 FROM berth_placements WHERE room_id = $1 FOR UPDATE",
                &[&room.room_id],
            )
            .await
            .map_err(pg_error)?;
        let Some(row) = row else {
            tx.execute(
                "INSERT INTO berth_placements (room_id, server_id, epoch, name, public, members, last_reported)
                 SELECT $1, $2, $3, COALESCE(r.name, $1), COALESCE(r.public, false), $4, now()
                 FROM (SELECT 1) AS one LEFT JOIN berth_rooms r ON r.room_id = $1",
                &[&room.room_id, &server_id, &epoch, &members],
            )
            .await
            .map_err(pg_error)?;
            delta += 1;
            continue;
        };
        let (owner, current, orphaned, released): (String, i64, bool, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let ours = owner == server_id;
        if ours && released && epoch == current {
            continue; // it let go of this placement: its next heartbeat gets it revoked
        } else if ours && epoch >= current {
            if orphaned {
                delta += 1;
            }
        } else if !ours && epoch > current {
            if !orphaned {
                tx.execute(
                    "UPDATE berth_servers SET rooms = GREATEST(rooms - 1, 0) WHERE server_id = $1",
                    &[&owner],
                )
                .await
                .map_err(pg_error)?;
            }
            delta += 1;
        } else {
            continue;
        }
        tx.execute(
            "UPDATE berth_placements SET server_id = $2, epoch = $3, members = $4,
                 last_reported = now(), orphaned_at = NULL, released = false
             WHERE room_id = $1",
            &[&room.room_id, &server_id, &epoch, &members],
        )
        .await
        .map_err(pg_error)?;
    }
    Ok(delta)
}

/// Makes the live rooms of `servers` dormant; returns how many.
async fn orphan(tx: &impl GenericClient, servers: &[&str]) -> Result<u64, StoreError> {
    if servers.is_empty() {
        return Ok(0);
    }
    tx.execute(
        "UPDATE berth_placements SET orphaned_at = now(), members = 0
         WHERE server_id = ANY($1) AND orphaned_at IS NULL",
        &[&servers],
    )
    .await
    .map_err(pg_error)
}

/// Servers counting against the cap: starting, ready and draining.
async fn active_count(tx: &impl GenericClient) -> Result<usize, StoreError> {
    let n: i64 = tx
        .query_one(
            "SELECT count(*)::int8 FROM berth_servers WHERE state IN ('starting', 'ready', 'draining')",
            &[],
        )
        .await
        .map_err(pg_error)?
        .get(0);
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// Free room slots of the warm buffer: ready servers taking rooms, plus unclaimed slots of
/// starting servers not asked to drain (as `registry::spare_slots` counts them in memory).
async fn spare_slots(tx: &impl GenericClient) -> Result<u64, StoreError> {
    let n: i64 = tx
        .query_one(
            "SELECT COALESCE(sum(CASE
                 WHEN state = 'ready' AND NOT drain_requested THEN GREATEST(capacity - rooms, 0)
                 WHEN state = 'starting' AND NOT drain_requested THEN GREATEST(capacity - claims, 0)
                 ELSE 0 END), 0)::int8
             FROM berth_servers",
            &[],
        )
        .await
        .map_err(pg_error)?
        .get(0);
    Ok(from_sql(n))
}

async fn insert_starting(
    tx: &impl GenericClient,
    id: &str,
    capacity: Capacity,
    replica: &str,
    claims: i32,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO berth_servers (server_id, state, capacity, members_per_room, claims, managed, spawned_by)
         VALUES ($1, 'starting', $2, $3, $4, true, $5)",
        &[&id, &int(capacity.rooms), &int(capacity.members_per_room), &claims, &replica],
    )
    .await
    .map(drop)
    .map_err(pg_error)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::Store;
    use crate::testing::{TempDatabase, postgres_admin_url};

    /// Two replicas' views of one fresh database.
    async fn replicas() -> Option<(TempDatabase, Arc<ControlStore>, Arc<ControlStore>)> {
        let admin = postgres_admin_url()?;
        let db = TempDatabase::create(&admin).await;
        Store::postgres(&db.url).await.unwrap();
        let a = Arc::new(ControlStore::open(&db.url).await.unwrap());
        let b = Arc::new(ControlStore::open(&db.url).await.unwrap());
        Some((db, a, b))
    }

    fn cap(rooms: u32) -> Capacity {
        Capacity {
            rooms,
            members_per_room: 10,
        }
    }

    async fn ready(store: &ControlStore, id: &str, rooms: u32) {
        let reg = Registration {
            server_id: id,
            url: &format!("ws://{id}/ws"),
            admin_url: None,
            capacity: cap(rooms),
            connections: 0,
            draining: false,
            pid: None,
            rooms: &[],
        };
        store.register(&reg).await.unwrap();
    }

    fn meta(id: &str) -> RoomMeta {
        RoomMeta {
            room_id: id.into(),
            name: id.into(),
            public: false,
            private: false,
            created_by: None,
            created_at_ms: 1,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_placements_through_two_replicas_never_overfill() {
        let Some((_db, a, b)) = replicas().await else {
            return;
        };
        for i in 0..3 {
            ready(&a, &format!("s-{i}"), 5).await;
        }
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..40 {
            let store = Arc::clone(if i % 2 == 0 { &a } else { &b });
            tasks.spawn(async move { store.place_new(&meta(&format!("r-{i}"))).await.unwrap() });
        }
        let mut placed = Vec::new();
        while let Some(r) = tasks.join_next().await {
            placed.extend(r.unwrap());
        }
        assert_eq!(placed.len(), 15, "exactly the 15 slots are handed out");
        let mut epochs: Vec<u64> = placed.iter().map(|p| p.epoch).collect();
        epochs.sort_unstable();
        epochs.dedup();
        assert_eq!(epochs.len(), 15, "every placement has its own epoch");
        for server in b.servers().await.unwrap() {
            assert_eq!(server.rooms, 5, "{} overfilled or underfilled", server.id);
            let n = placed.iter().filter(|p| p.server_id == server.id).count();
            assert_eq!(n, 5);
        }
        assert_eq!(a.rooms(None).await.unwrap().len(), 15);
    }

    #[tokio::test]
    async fn epochs_grow_across_replicas_and_past_reported_ones() {
        let Some((_db, a, b)) = replicas().await else {
            return;
        };
        ready(&a, "s-a", 100).await;
        let mut last = 0;
        for i in 0..10 {
            let store = if i % 2 == 0 { &a } else { &b };
            let p = store
                .place_new(&meta(&format!("r-{i}")))
                .await
                .unwrap()
                .unwrap();
            assert!(p.epoch > last, "{} after {last}", p.epoch);
            last = p.epoch;
        }
        // A server reports a room under a far newer epoch (say, from an older database).
        let far = last + 1_000_000;
        let hosted = [HostedRoom {
            room_id: "r-old".into(),
            epoch: far,
            members: 1,
        }];
        let reg = Registration {
            server_id: "s-b",
            url: "ws://s-b/ws",
            admin_url: None,
            capacity: cap(10),
            connections: 1,
            draining: false,
            pid: None,
            rooms: &hosted,
        };
        b.register(&reg).await.unwrap();
        let p = a.place_new(&meta("r-next")).await.unwrap().unwrap();
        assert!(p.epoch > far);
        // Re-placing a dormant room gives it a newer epoch, on either replica.
        assert!(b.release("r-next", &p.server_id, p.epoch).await.unwrap());
        assert!(matches!(
            a.lookup("r-next").await.unwrap(),
            Lookup::Dormant { .. }
        ));
        let Relocated::Moved(again) = b.relocate("r-next").await.unwrap() else {
            panic!("not moved")
        };
        assert!(again.epoch > p.epoch);
        assert!(
            matches!(a.relocate("r-next").await.unwrap(), Relocated::Current(c) if c.epoch == again.epoch)
        );
    }

    #[tokio::test]
    async fn spawning_is_shared_and_capped() {
        let Some((_db, a, b)) = replicas().await else {
            return;
        };
        let claim = a.claim_capacity("s-1", cap(2), 2, "ra").await.unwrap();
        assert_eq!(claim, SpawnClaim::Spawn("s-1".into()));
        // The other replica counts on the same starting server while it has unclaimed slots.
        assert_eq!(
            b.claim_capacity("s-2", cap(2), 2, "rb").await.unwrap(),
            SpawnClaim::Existing("s-1".into())
        );
        assert_eq!(
            b.claim_capacity("s-3", cap(2), 2, "rb").await.unwrap(),
            SpawnClaim::Spawn("s-3".into())
        );
        b.unclaim("s-3").await.unwrap();
        assert_eq!(
            a.claim_capacity("s-4", cap(2), 2, "ra").await.unwrap(),
            SpawnClaim::Existing("s-3".into())
        );
        a.claim_capacity("s-5", cap(2), 2, "ra").await.unwrap();
        assert_eq!(
            a.claim_capacity("s-6", cap(2), 2, "ra").await.unwrap(),
            SpawnClaim::AtCap { active: 2 }
        );
        // The warm buffer counts the whole fleet against the same cap.
        let n = std::sync::atomic::AtomicU32::new(0);
        let draw = || format!("w-{}", n.fetch_add(1, Ordering::SeqCst));
        assert!(
            b.top_up(2, cap(2), 2, "rb", draw).await.unwrap().is_empty(),
            "at the cap"
        );
        let ids = b.top_up(5, cap(2), 4, "rb", draw).await.unwrap();
        assert_eq!(ids, vec!["w-0".to_owned(), "w-1".to_owned()], "capped at 4");
        assert!(
            a.top_up(5, cap(2), 4, "ra", draw).await.unwrap().is_empty(),
            "never twice"
        );
    }

    #[tokio::test]
    async fn upkeep_runs_in_one_replica_and_reaps_silent_servers() {
        let Some((_db, a, b)) = replicas().await else {
            return;
        };
        ready(&a, "s-a", 3).await;
        let p = a.place_new(&meta("r-1")).await.unwrap().unwrap();
        let rules = UpkeepRules {
            heartbeat_timeout: Duration::ZERO,
            never_registered: Duration::from_secs(60),
            dead_retention: Duration::from_secs(60),
            unclaimed_room: Duration::from_secs(60),
            orphan_ttl: Duration::from_secs(60),
            server_idle: Duration::from_secs(60),
            warm_slots: 0,
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let done = b.upkeep(&rules).await.unwrap().unwrap();
        assert_eq!(done.dead.len(), 1);
        assert_eq!(done.orphaned, 1);
        assert!(
            matches!(a.lookup("r-1").await.unwrap(), Lookup::Dormant { from } if from == p.server_id)
        );
        // A heartbeat of the dead server is refused: it registers again and keeps its room.
        assert!(
            a.heartbeat("s-a", 0, false, &[], Duration::from_secs(60))
                .await
                .unwrap()
                .is_none()
        );
        let hosted = [HostedRoom {
            room_id: "r-1".into(),
            epoch: p.epoch,
            members: 2,
        }];
        let reg = Registration {
            server_id: "s-a",
            url: "ws://s-a/ws",
            admin_url: None,
            capacity: cap(3),
            connections: 2,
            draining: false,
            pid: None,
            rooms: &hosted,
        };
        a.register(&reg).await.unwrap();
        assert!(matches!(b.lookup("r-1").await.unwrap(), Lookup::Live(l) if l.epoch == p.epoch));
        assert_eq!(b.servers().await.unwrap()[0].rooms, 1);
        let beat = b
            .heartbeat("s-a", 2, false, &hosted, Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        assert!(beat.revoked.is_empty());
    }
}
