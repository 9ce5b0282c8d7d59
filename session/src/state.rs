//! [`AppState`]: what every handler, connection and room of one server shares, and the life of
//! its rooms (opening on a verified placement, supervising, releasing).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use berth_protocol::ErrorCode;
use berth_protocol::claims::TicketClaims;
use berth_protocol::cluster::ReleaseRoom;
use berth_protocol::frames::ServerFrame;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::admission::Refusal;
use crate::config::Config;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::room::{self, Durability, Exit, RoomHandle, RoomSettings};
use crate::rooms::Rooms;
use crate::scheduler::SchedulerClient;
use crate::ticket::{TicketVerifier, UsedTickets};
use crate::writer::Writer;

/// Shared state of one session server; cheap to clone.
#[derive(Clone)]
pub struct AppState(pub(crate) Arc<Shared>);

pub(crate) struct Shared {
    pub config: Config,
    /// `ws://{host}:{port}/ws`, as registered.
    pub url: String,
    server_id: RwLock<Option<Arc<str>>>,
    /// Set once the scheduler has accepted a registration (so there is something to leave).
    pub registered: AtomicBool,
    pub verifier: TicketVerifier,
    /// Tickets already used here (a ticket opens one connection).
    pub used_tickets: UsedTickets,
    pub rooms: Arc<Rooms>,
    pub metrics: Arc<Metrics>,
    /// `None` in `--standalone` mode.
    pub scheduler: Option<SchedulerClient>,
    /// The store and its group-commit writer; `None` with `--store none`.
    pub durability: Option<Durability>,
    /// Stops the writer once the rooms are gone.
    pub writer_stop: CancellationToken,
    pub writer_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Cancelled when the server starts draining (signal or scheduler request).
    pub draining: CancellationToken,
    /// Cancelled when whatever remains must close now (1012).
    pub close_all: CancellationToken,
    /// Rooms, connections and their helpers, waited for at shutdown.
    pub tracker: TaskTracker,
    next_conn: AtomicU64,
    pub errors: ErrorFrames,
    panic_text: Option<Arc<str>>,
}

/// `error` frames a connection may answer with, serialized once per server.
pub(crate) struct ErrorFrames {
    pub text_too_long: Utf8Bytes,
    pub bad_frame: Utf8Bytes,
    pub rate_limited: Utf8Bytes,
}

fn error_frame(code: ErrorCode, message: String) -> Utf8Bytes {
    let frame = ServerFrame::Error {
        code: code.as_str().to_owned(),
        message,
    };
    serde_json::to_string(&frame)
        .expect("frames serialize")
        .into()
}

impl AppState {
    /// Builds the state of a server listening on `local_addr` without a store: reads the ticket
    /// public key and, unless `--standalone`, the cluster secret.
    pub fn new(config: Config, local_addr: SocketAddr) -> Result<Self, Error> {
        Self::with_store(config, local_addr, None)
    }

    /// [`AppState::new`] with the store messages are made durable in (it starts the store's
    /// group-commit writer, so call it inside a runtime).
    pub fn with_store(
        config: Config,
        local_addr: SocketAddr,
        store: Option<berth_store::Store>,
    ) -> Result<Self, Error> {
        config.validate().map_err(Error::Config)?;
        let key_path = config.public_key_path();
        let pem = std::fs::read(&key_path).map_err(|source| Error::PublicKeyRead {
            path: key_path.clone(),
            source,
        })?;
        let verifier =
            TicketVerifier::from_public_pem(&pem).map_err(|source| Error::PublicKey {
                path: key_path,
                source,
            })?;
        let scheduler = if config.standalone {
            None
        } else {
            let secret = match &config.cluster_secret {
                Some(s) => s.trim().to_owned(),
                None => {
                    let path = config.data_dir.join("cluster.secret");
                    berth_protocol::secret::load_or_create(&path)
                        .map_err(|source| Error::Secret { path, source })?
                }
            };
            if secret.is_empty() {
                return Err(Error::Config("the cluster secret is empty".into()));
            }
            Some(SchedulerClient::new(&config.scheduler_url, &secret)?)
        };
        let errors = ErrorFrames {
            text_too_long: error_frame(
                ErrorCode::TextTooLong,
                format!("text is longer than {} bytes", config.max_text_bytes),
            ),
            bad_frame: error_frame(
                ErrorCode::BadFrame,
                "expected a JSON text frame {\"type\":\"send\",\"text\":…,\"clientId\"?}".into(),
            ),
            rate_limited: error_frame(
                ErrorCode::RateLimited,
                format!(
                    "more than {} messages per second; message dropped",
                    config.message_rate
                ),
            ),
        };
        let metrics = Arc::<Metrics>::default();
        let writer_stop = CancellationToken::new();
        let (durability, writer_task) = match store {
            Some(store) => {
                let (writer, task) =
                    Writer::start(store.clone(), metrics.clone(), writer_stop.clone());
                (Some(Durability { store, writer }), Some(task))
            }
            None => (None, None),
        };
        Ok(AppState(Arc::new(Shared {
            url: format!("ws://{}:{}/ws", config.host, local_addr.port()),
            server_id: RwLock::new(config.server_id.as_deref().map(Arc::from)),
            registered: AtomicBool::new(false),
            verifier,
            used_tickets: UsedTickets::default(),
            rooms: Arc::default(),
            metrics,
            scheduler,
            durability,
            writer_stop,
            writer_task: std::sync::Mutex::new(writer_task),
            draining: CancellationToken::new(),
            close_all: CancellationToken::new(),
            tracker: TaskTracker::new(),
            next_conn: AtomicU64::new(1),
            errors,
            panic_text: config.debug_panic_text.as_deref().map(Arc::from),
            config,
        })))
    }

    /// The URL this server registers.
    pub fn url(&self) -> &str {
        &self.0.url
    }

    /// This server's id; `None` until the scheduler assigned one (when none was configured).
    pub fn server_id(&self) -> Option<Arc<str>> {
        self.0
            .server_id
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_server_id(&self, id: &str) {
        let mut current = self.0.server_id.write().unwrap_or_else(|e| e.into_inner());
        if current.as_deref() != Some(id) {
            if let Some(old) = current.as_deref() {
                tracing::warn!(
                    old_id = old,
                    server_id = id,
                    "the scheduler gave this server another id"
                );
            }
            *current = Some(Arc::from(id));
        }
    }

    pub fn is_draining(&self) -> bool {
        self.0.draining.is_cancelled()
    }

    /// Stops taking rooms and connections; `serve` then drains and returns.
    pub fn request_drain(&self) {
        self.0.draining.cancel();
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.0.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// The open room a verified ticket names, opening it when this server owns its placement.
    pub(crate) async fn room_for(&self, claims: &TicketClaims) -> Result<RoomHandle, Refusal> {
        let shared = &self.0;
        let standalone = shared.config.standalone;
        let epoch_ok = |room: &RoomHandle| standalone || room.epoch == claims.epoch;
        if let Some(room) = shared.rooms.get(&claims.room) {
            return if epoch_ok(&room) {
                Ok(room)
            } else {
                Err(Refusal::stale_epoch())
            };
        }
        let epoch = match &shared.scheduler {
            None => claims.epoch,
            Some(scheduler) => {
                let me = self.server_id();
                match scheduler.placement(&claims.room).await {
                    Ok(Some(p))
                        if Some(p.server_id.as_str()) == me.as_deref()
                            && p.epoch == claims.epoch =>
                    {
                        p.epoch
                    }
                    Ok(_) => {
                        return Err(Refusal::wrong_server(
                            "the room is not placed on this server",
                        ));
                    }
                    Err(e) => {
                        tracing::warn!(room_id = %claims.room, error = %e, "cannot look the room up");
                        return Err(Refusal::scheduler_unavailable());
                    }
                }
            }
        };
        if self.is_draining() {
            return Err(Refusal::draining());
        }
        let room = shared
            .rooms
            .get_or_open(&claims.room, shared.config.rooms as usize, |instance| {
                self.spawn_room(Arc::from(claims.room.as_str()), epoch, instance)
            })
            .map_err(|()| Refusal::server_full("no free room slot on this server"))?;
        if epoch_ok(&room) {
            Ok(room)
        } else {
            Err(Refusal::stale_epoch())
        }
    }

    fn spawn_room(&self, id: Arc<str>, epoch: u64, instance: u64) -> RoomHandle {
        let shared = &self.0;
        let server_id = self.server_id().unwrap_or_else(|| Arc::from(""));
        let settings = RoomSettings {
            server_id: server_id.clone(),
            members_per_room: shared.config.members_per_room,
            history: shared.config.history,
            welcome_history_bytes: shared.config.welcome_history_bytes,
            idle: shared.config.room_idle(),
            panic_text: shared.panic_text.clone(),
            metrics: shared.metrics.clone(),
            rooms: shared.rooms.clone(),
            durability: shared.durability.clone(),
            draining: shared.draining.clone(),
            close_all: shared.close_all.clone(),
        };
        let (handle, run) = room::new(id.clone(), epoch, instance, settings);
        let span = tracing::info_span!("room", room_id = %id, epoch, server_id = %server_id);
        // The room task itself is not instrumented (its few events name the room): entering a
        // span on every poll would cost on the message path.
        let task = tokio::spawn(run);
        let state = self.clone();
        // The supervisor: a panic ends this room only (its members see 1011).
        shared.tracker.spawn(
            async move {
                tracing::info!("room opened");
                match task.await {
                    Ok(Exit::Disposed) => {
                        tracing::info!("room disposed");
                        state.release(&id, epoch, false).await;
                    }
                    Ok(Exit::Revoked) => tracing::info!("room revoked; members closed with 1012"),
                    Ok(Exit::Shutdown) => tracing::debug!("room closed"),
                    Ok(Exit::Unavailable) => {
                        tracing::warn!("room not opened: the store is unavailable")
                    }
                    Ok(Exit::Fenced) => tracing::warn!("room closed: a newer placement owns it"),
                    Err(e) => {
                        state.0.rooms.remove_instance(&id, instance);
                        if e.is_panic() {
                            state.0.metrics.room_panics.fetch_add(1, Ordering::Relaxed);
                            tracing::error!("room panicked; members closed with 1011");
                        }
                        state.release(&id, epoch, false).await;
                    }
                }
            }
            .instrument(span),
        );
        handle
    }

    /// Hands every open room over to whichever server the scheduler places it on next (a drain
    /// with a store): each room stops taking messages and flushes its writes, leaves this
    /// server's directory, is released to the scheduler (dormant: its next lookup places it
    /// elsewhere), and only then closes its members with 1012, so that they reconnect, look it
    /// up, and resume on the new owner. Bounded by `deadline` per room.
    pub(crate) async fn hand_over_rooms(&self, deadline: tokio::time::Instant) {
        let mut handoffs = tokio::task::JoinSet::new();
        for room in self.0.rooms.all() {
            let state = self.clone();
            handoffs.spawn(async move { state.hand_over(room, deadline).await });
        }
        while handoffs.join_next().await.is_some() {}
    }

    async fn hand_over(&self, room: RoomHandle, deadline: tokio::time::Instant) {
        match tokio::time::timeout_at(deadline, room.hand_off()).await {
            Ok(Some(seq)) => {
                tracing::info!(room_id = %room.id, seq, "room flushed; handing it over")
            }
            // It ended by itself (disposed, revoked): nothing to hand over.
            Ok(None) => return,
            Err(_) => {
                tracing::warn!(room_id = %room.id, "room did not flush in time; handing it over anyway")
            }
        }
        if self.0.rooms.remove_instance(&room.id, room.instance) {
            self.release(&room.id, room.epoch, true).await;
            self.0.metrics.handoffs.fetch_add(1, Ordering::Relaxed);
        }
        room.revoke();
    }

    /// Tells the scheduler this server no longer hosts `room_id` (`handoff`: a drain hands it
    /// over live).
    async fn release(&self, room_id: &str, epoch: u64, handoff: bool) {
        let (Some(scheduler), Some(server_id)) = (&self.0.scheduler, self.server_id()) else {
            return;
        };
        let body = ReleaseRoom {
            server_id: server_id.to_string(),
            epoch,
            handoff,
        };
        if let Err(e) = scheduler.release(room_id, &body).await {
            tracing::warn!(room_id, error = %e, "cannot tell the scheduler the room was released");
        }
    }
}
