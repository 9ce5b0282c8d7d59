//! [`ClientError`]: everything the client library can fail with.

use tokio_tungstenite::tungstenite;

/// Shorthand for this crate's results.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Why a call failed. `Display` reads `<kind>: <message>` (for API errors, `<code>: <message>`),
/// so that `error: {err}` is always a useful line; transport causes are in `source()`.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A server answered with Berth's error body (`{"error": {"code", "message"}}`), over HTTP
    /// or as the refusal of a WebSocket upgrade. `retry_after` is the `Retry-After` header in
    /// seconds. An answer without that body gets the code `http_<status>`.
    #[error("{code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        retry_after: Option<u64>,
    },
    /// The HTTP request failed without an answer (connection refused, timeout, …).
    #[error("transport: HTTP request failed")]
    Http(#[source] reqwest::Error),
    /// The WebSocket failed (handshake without an HTTP answer, I/O, protocol).
    #[error("websocket: connection failed")]
    WebSocket(#[source] Box<tungstenite::Error>),
    /// An answer or frame that did not parse as the expected type.
    #[error("decode: {what} did not parse")]
    Decode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A URL that cannot be used (the backend base URL, or a room's `ws://` URL).
    #[error("invalid_url: {0}")]
    InvalidUrl(String),
    /// TLS could not be set up (an unreadable or invalid CA file).
    #[error("tls: {0}")]
    Tls(String),
    /// The server broke the protocol (e.g. the first frame was not `welcome`).
    #[error("protocol: {0}")]
    Protocol(String),
    /// The connection closed where a frame was expected (e.g. before `welcome`).
    #[error("closed: connection closed (code {code:?}): {reason}")]
    Closed { code: Option<u16>, reason: String },
    /// [`crate::Room::send`] while the room is reconnecting.
    #[error("not_connected: reconnecting, try again shortly")]
    NotConnected,
    /// A bounded wait ran out.
    #[error("timeout: no answer in time")]
    Timeout,
}

impl ClientError {
    /// The API error code (`no_capacity`, `room_not_found`, `invalid_ticket`, …), if the server
    /// answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The `Retry-After` of an API error, in seconds.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ClientError::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Builds an [`ClientError::Api`] from an HTTP error answer's parts.
    pub fn from_http_answer(status: u16, retry_after: Option<u64>, body: &[u8]) -> ClientError {
        match serde_json::from_slice::<berth_protocol::ErrorBody>(body) {
            Ok(body) => ClientError::Api {
                status,
                code: body.error.code,
                message: body.error.message,
                retry_after,
            },
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let message: String = text.trim().chars().take(200).collect();
                ClientError::Api {
                    status,
                    code: format!("http_{status}"),
                    message: if message.is_empty() {
                        format!("HTTP {status}")
                    } else {
                        message
                    },
                    retry_after,
                }
            }
        }
    }
}

impl From<reqwest::Error> for ClientError {
    fn from(e: reqwest::Error) -> Self {
        ClientError::Http(e)
    }
}

/// A refusal before the upgrade becomes [`ClientError::Api`] (status, code and `Retry-After`
/// from the answer); every other WebSocket failure stays a [`ClientError::WebSocket`].
impl From<tungstenite::Error> for ClientError {
    fn from(e: tungstenite::Error) -> Self {
        match e {
            tungstenite::Error::Http(resp) => {
                let retry = retry_after(resp.headers());
                let body = resp.body().as_deref().unwrap_or_default();
                ClientError::from_http_answer(resp.status().as_u16(), retry, body)
            }
            e => ClientError::WebSocket(Box::new(e)),
        }
    }
}

/// Parses a `Retry-After` header given in seconds (the form Berth uses).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}
