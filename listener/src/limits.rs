//! [`Limits`]: the bounds of one listener, and [`HttpArgs`], the flags they come from.

use std::time::Duration;

/// Bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once (TLS handshakes and requests still being read included).
    pub max_connections: usize,
    /// Time to send a request's headers; also the idle time of a kept-alive connection, and on
    /// a TLS listener the time to finish the handshake (before the headers' own period).
    pub header_read_timeout: Duration,
    /// Time from a request's headers to its answer (reading the body included).
    pub request_timeout: Duration,
    /// After shutdown, time in-flight requests get before their connections are dropped.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// The flags of a listener's [`Limits`], flattened into each service's config.
#[derive(clap::Args, Debug, Clone)]
pub struct HttpArgs {
    /// HTTP connections served at once (not counting upgraded WebSockets); past it, new
    /// connections wait in the kernel's accept queue.
    #[arg(long, env = "BERTH_MAX_HTTP_CONNECTIONS", default_value_t = 4096)]
    pub max_http_connections: usize,

    /// Time a client has to send a request's headers, and the longest a kept-alive connection
    /// may sit idle, in milliseconds; with TLS, also the time to finish the handshake.
    #[arg(long, env = "BERTH_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,

    /// Time from a request's headers to its answer, body included, in milliseconds (408 past it).
    #[arg(long, env = "BERTH_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,
}

impl HttpArgs {
    /// The listener's limits; zero values are raised to the smallest workable ones.
    pub fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_http_connections.max(1),
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms.max(1)),
            request_timeout: Duration::from_millis(self.request_timeout_ms.max(1)),
            ..Limits::default()
        }
    }
}
