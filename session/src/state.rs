//! [`AppState`]: what every handler, connection and room of one server shares. The life of its
//! rooms is `hosting`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use berth_protocol::ErrorCode;
use berth_protocol::frames::ServerFrame;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::room::{Durability, error_frame};
use crate::rooms::Rooms;
use crate::scheduler::SchedulerClient;
use crate::ticket::{TicketVerifier, UsedTickets};
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
    /// `http://host:port` of the operator listener (`/metrics`), registered with the scheduler
    /// so the operator page can read it; unset without `--admin-listen`.
    admin_url: std::sync::OnceLock<String>,
    /// Set while the server's lease with the scheduler has run out: it admits nobody and its
    /// rooms accept no message until a heartbeat or registration gets through again (shared
    /// with every room).
    pub fenced: Arc<AtomicBool>,
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
    /// Webhook deliveries (`None` without URLs), their worker and what stops it.
    pub webhooks: Option<Arc<crate::webhook::Webhooks>>,
    pub webhook_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    pub webhook_stop: CancellationToken,
    /// The per-user rate of messages sent over HTTP.
    pub send_rate: crate::http_send::SendRate,
    pub panic_text: Option<Arc<str>>,
}

/// `error` frames a connection may answer with, serialized once per server.
pub(crate) struct ErrorFrames {
    pub text_too_long: Utf8Bytes,
    pub invalid_text: Utf8Bytes,
    pub bad_frame: Utf8Bytes,
    pub rate_limited: Utf8Bytes,
}

/// One of the [`ErrorFrames`] naming the refused send's `clientId` (re-serialized only then:
/// refusals are rare, and a sender needs the id to mark its message undelivered).
pub(crate) fn with_client_id(frame: &Utf8Bytes, client_id: Option<&str>) -> Utf8Bytes {
    let Some(id) = client_id else {
        return frame.clone();
    };
    match serde_json::from_str::<ServerFrame>(frame.as_str()) {
        Ok(ServerFrame::Error { code, message, .. }) => {
            serde_json::to_string(&ServerFrame::Error {
                code,
                message,
                client_id: Some(id.to_owned()),
            })
            .expect("frames serialize")
            .into()
        }
        _ => frame.clone(),
    }
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
            let secret = match &config.server_credential {
                Some(credential) => {
                    let credential = credential.trim();
                    if credential.is_empty() {
                        return Err(Error::Config("the server credential is empty".into()));
                    }
                    credential.to_owned()
                }
                None => config.cluster.secret()?.expose().to_owned(),
            };
            Some(SchedulerClient::new(
                &config.cluster.scheduler_url,
                &secret,
                config.tls.client()?,
            )?)
        };
        let errors = ErrorFrames {
            text_too_long: error_frame(
                ErrorCode::TextTooLong,
                format!("text is longer than {} bytes", config.max_text_bytes),
                None,
            ),
            invalid_text: error_frame(
                ErrorCode::InvalidText,
                berth_protocol::text::TextError::TextControl.to_string(),
                None,
            ),
            bad_frame: error_frame(
                ErrorCode::BadFrame,
                "expected a JSON text frame {\"type\":\"send\",\"text\":…,\"clientId\"?}".into(),
                None,
            ),
            rate_limited: error_frame(
                ErrorCode::RateLimited,
                format!(
                    "more than {} messages per second; message dropped",
                    config.message_rate
                ),
                None,
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
        let webhook_stop = CancellationToken::new();
        let (webhooks, webhook_task) = match crate::webhook::Webhooks::start(
            &config.integrations,
            metrics.clone(),
            webhook_stop.clone(),
        )
        .map_err(|e| Error::Config(format!("webhooks: {e}")))?
        {
            Some((webhooks, task)) => (Some(webhooks), Some(task)),
            None => (None, None),
        };
        let server_id = config.initial_server_id().map(Arc::from);
        let url = config.advertised_url(server_id.as_deref().unwrap_or(""), local_addr.port());
        Ok(AppState(Arc::new(Shared {
            webhooks,
            webhook_task: std::sync::Mutex::new(webhook_task),
            webhook_stop,
            send_rate: crate::http_send::SendRate::new(config.message_rate, config.message_burst),
            url,
            server_id: RwLock::new(server_id),
            registered: AtomicBool::new(false),
            admin_url: std::sync::OnceLock::new(),
            fenced: Arc::new(AtomicBool::new(false)),
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
            panic_text: config.panic_text(),
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

    /// Records where the operator listener is (once, before registering).
    pub(crate) fn set_admin_addr(&self, addr: SocketAddr) {
        let scheme = if self.0.config.tls.serves() {
            "https"
        } else {
            "http"
        };
        // An unspecified bind address is reached through the host clients are told about.
        let host = if addr.ip().is_unspecified() {
            self.0.config.host.clone()
        } else {
            addr.ip().to_string()
        };
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host
        };
        let _ = self
            .0
            .admin_url
            .set(format!("{scheme}://{host}:{}", addr.port()));
    }

    /// `http(s)://host:port` of the operator listener, when there is one.
    pub fn admin_url(&self) -> Option<&str> {
        self.0.admin_url.get().map(String::as_str)
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.0.next_conn.fetch_add(1, Ordering::Relaxed)
    }
}
