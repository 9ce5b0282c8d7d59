//! [`AppState`]: what every handler, connection and room of one server shares. The life of its
//! rooms is `hosting`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use berth_protocol::ErrorCode;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::room::{Durability, error_frame};
use crate::rooms::Rooms;
use crate::scheduler::SchedulerClient;
use crate::ticket::TicketVerifier;
use crate::writer::Writer;

/// Shared state of one session server; cheap to clone.
#[derive(Clone)]
pub struct AppState(pub(crate) Arc<Shared>);

pub(crate) struct Shared {
    pub config: Config,
    /// `ws://{host}:{port}/ws` (`wss://` with TLS), or the filled `--public-url`, as registered.
    pub url: String,
    server_id: RwLock<Option<Arc<str>>>,
    /// Set once the scheduler has accepted a registration (so there is something to leave).
    pub registered: AtomicBool,
    /// Set while the server's lease with the scheduler has run out: it serves no room and
    /// admits nobody until a heartbeat or registration gets through again.
    pub fenced: AtomicBool,
    pub verifier: TicketVerifier,
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
    pub panic_text: Option<Arc<str>>,
}

/// `error` frames a connection may answer with, serialized once per server.
pub(crate) struct ErrorFrames {
    pub text_too_long: Utf8Bytes,
    pub bad_frame: Utf8Bytes,
    pub rate_limited: Utf8Bytes,
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
            let secret = config.cluster.secret()?;
            Some(SchedulerClient::new(
                &config.cluster.scheduler_url,
                secret.expose(),
                config.tls.client()?,
            )?)
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
        // A public URL that names the server needs its id now: pick one unless given.
        let server_id = match (&config.server_id, &config.public_url) {
            (Some(id), _) => Some(Arc::from(id.as_str())),
            (None, Some(template)) if template.needs_server_id() => {
                Some(Arc::from(berth_protocol::ids::new_server_id()))
            }
            (None, _) => None,
        };
        let url = config.advertised_url(server_id.as_deref().unwrap_or(""), local_addr.port());
        Ok(AppState(Arc::new(Shared {
            url,
            server_id: RwLock::new(server_id),
            registered: AtomicBool::new(false),
            fenced: AtomicBool::new(false),
            verifier,
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

    /// Whether the lease with the scheduler ran out (see `registration`).
    pub fn is_fenced(&self) -> bool {
        self.0.fenced.load(Ordering::Relaxed)
    }

    /// Stops taking rooms and connections; `serve` then drains and returns.
    pub fn request_drain(&self) {
        self.0.draining.cancel();
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.0.next_conn.fetch_add(1, Ordering::Relaxed)
    }
}
