//! Wire types shared by every Berth part.
//!
//! Nothing here does I/O: these are the shapes that cross process boundaries, so that the
//! backend, the scheduler, the session servers and the clients can never disagree about them.
//!
//! - [`api`]: the public HTTP API of the backend (`/api/...`).
//! - [`frames`]: the WebSocket frames between a client and a session server.
//! - [`claims`]: the JWT claims of user tokens and room tickets.
//! - [`cluster`]: the internal scheduler API (`/v1/...`) used by the backend and session servers.
//! - [`error`]: the one error body every HTTP answer uses, and its codes.
//! - [`webhook`]: the JSON and headers of webhook deliveries (room events POSTed out).
//! - [`ids`]: how room, server and user ids look and are minted.
//! - [`text`]: which room names and message texts are accepted (no spoofing characters).

pub mod api;
pub mod claims;
pub mod cluster;
pub mod error;
pub mod frames;
pub mod ids;
pub mod text;
pub mod webhook;

pub use error::{ErrorBody, ErrorCode};

/// Milliseconds since the Unix epoch, the unit of every timestamp that is not shown to people.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch, the unit of JWT `exp` and `iat`.
pub fn now_secs() -> u64 {
    now_ms() / 1000
}
