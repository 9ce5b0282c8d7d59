//! `berth`: the Rust client library of Berth. The `berth` command is built on it in `cli/`
//! (`berth-cli`), and its load generator lives in `bench/` (`berth-bench`).
//!
//! - [`Backend`]: the backend's public HTTP API — log in ([`Session`]), create, look up and list
//!   rooms.
//! - [`RoomConnection`]: one WebSocket connection to the session server hosting a room, opened
//!   with a ticket; starts with a [`Welcome`], then yields [`RoomEvent`]s.
//! - [`Room`]: a membership that reconnects by itself (look up again, backoff, no duplicate
//!   messages); what the CLI chat and load tools use.
//! - [`ClientError`]: every failure, with the server's error `code` when there is one.
//!
//! ```no_run
//! # async fn demo() -> berth::Result<()> {
//! use berth::{Backend, RoomConnection, RoomEvent};
//! let backend = Backend::new("http://127.0.0.1:8080");
//! let session = backend.login("alice").await?;
//! let ticket = backend.create_room(&session, &Default::default()).await?;
//! let (mut conn, welcome) = RoomConnection::connect(&ticket.url, &ticket.token).await?;
//! conn.send("hello", Some("c1")).await?;
//! while let RoomEvent::Frame(frame) = conn.recv().await? {
//!     println!("{frame:?}");
//! }
//! # Ok(()) }
//! ```

pub mod backend;
pub mod connection;
pub mod error;
pub mod room;
pub mod tls;

pub use backend::{Backend, Session};
pub use berth_protocol as protocol;
pub use connection::{RoomConnection, RoomEvent, Welcome};
pub use error::{ClientError, Result};
pub use room::{ReconnectPolicy, Room, RoomUpdate};
pub use tls::Tls;
/// The WebSocket message type of [`RoomConnection::send_raw`].
pub use tokio_tungstenite::tungstenite::Message;

/// Backend URL used when neither `--backend` nor `BERTH_BACKEND_URL` is given.
pub const DEFAULT_BACKEND_URL: &str = "http://127.0.0.1:8080";
