//! Berth's session server: the data plane.
//!
//! Clients connect to `GET /ws` with a room ticket; the ticket and the room's limits are checked
//! before the upgrade (`admission`), then each connection runs one `select!` loop
//! (`connection`) and each room is one task owning its state (`room`), found through the
//! server's directory (`rooms`). The server registers and heartbeats with the scheduler
//! (`registration`, over `scheduler`), disposes of idle rooms, and drains on SIGTERM or on
//! request ([`serve`]).
//!
//! - `config`: flags and environment.
//! - `ticket`: EdDSA ticket verification.
//! - `rate`: per-connection token bucket and flood detection.
//! - `metrics`: Prometheus counters.
//! - `http`: the routes.
//! - `outbound`: a connection's bounded queue of frames from its room, and the room's direct
//!   writes to a waiting connection's socket.
//! - `outbox`: broadcast frames written straight to a WebSocket, without copying them.
//! - `wire`: a WebSocket's socket, shared with its room, under tungstenite.
//! - `state`: what everything shares, and how rooms are opened and supervised.
//! - `sse`: the same rooms over Server-Sent Events (`GET /sse`).
//! - `http_send`: the internal endpoint the backend sends HTTP messages through.
//! - `webhook`: room events POSTed out, signed, retried, never blocking a room.
//! - `writer`: the group-commit writer that makes messages durable in the `berth_store::Store`
//!   before rooms deliver them.

mod admission;
pub mod cli;
mod config;
mod connection;
mod error;
mod hosting;
mod http;
mod http_send;
mod inbound;
mod metrics;
mod outbound;
mod outbox;
mod rate;
mod reads;
mod registration;
mod room;
mod rooms;
mod scheduler;
mod server;
mod sse;
mod state;
mod ticket;
mod typing;
mod webhook;
mod wire;
mod writer;

pub use config::Config;
pub use error::Error;
pub use http::router;
pub use server::{serve, serve_with_admin, serve_with_force};
pub use state::AppState;
