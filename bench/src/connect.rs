//! Opening a bench connection: from a chosen local address, with small buffers (a run may hold
//! tens of thousands), up to the first frame, which must be `welcome`. [`berth::RoomConnection`]
//! does the same for one connection; this one skips parsing the welcome into structs (in a room
//! of 5,000 it lists 5,000 members) and hands back the raw stream.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::Url;
use serde::Deserialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use berth::ClientError;

/// A bench connection.
pub(crate) type Ws = WebSocketStream<TcpStream>;

/// Bytes read from the socket at once. Small, because a run may hold many connections; frames
/// larger than this still arrive whole (the buffer grows for them).
const READ_BUFFER: usize = 8 * 1024;
/// Largest frame accepted (a welcome listing thousands of members is a few hundred KiB).
const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Just enough of a server frame to route it, borrowing from the frame's text.
#[derive(Debug, Deserialize)]
pub(crate) struct Peek<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "borrowed_str")]
    pub text: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "borrowed_str")]
    pub code: Option<Cow<'a, str>>,
}

/// A string borrowed from the frame when it has no escapes (serde would copy it into an
/// `Option<Cow>` otherwise: one allocation per delivered message).
fn borrowed_str<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Cow<'de, str>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Cow::Borrowed(v))
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v.to_owned()))
        }
    }
    d.deserialize_str(Visitor).map(Some)
}

/// Where to connect: the URL with its ticket, and its address resolved once.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    url: Url,
    addr: SocketAddr,
}

impl Endpoint {
    /// Resolves `url` (a `ws://` URL) and adds `?token=<ticket>`.
    pub async fn resolve(url: &str, ticket: &str) -> Result<Endpoint, ClientError> {
        let mut url =
            Url::parse(url).map_err(|e| ClientError::InvalidUrl(format!("{url}: {e}")))?;
        if url.scheme() != "ws" {
            return Err(ClientError::InvalidUrl(format!(
                "{url}: bench connections are plain ws://"
            )));
        }
        let host = url
            .host_str()
            .ok_or_else(|| ClientError::InvalidUrl(format!("{url}: no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let addr = match host.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, port),
            Err(_) => tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(io_error)?
                .next()
                .ok_or_else(|| ClientError::InvalidUrl(format!("{url}: no address")))?,
        };
        url.query_pairs_mut().append_pair("token", ticket);
        Ok(Endpoint { url, addr })
    }

    /// Opens the connection from `bind` (port chosen by the system) and reads the `welcome`,
    /// within `timeout`.
    pub async fn open(&self, bind: Option<IpAddr>, timeout: Duration) -> Result<Ws, ClientError> {
        tokio::time::timeout(timeout, self.open_unbounded(bind))
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    async fn open_unbounded(&self, bind: Option<IpAddr>) -> Result<Ws, ClientError> {
        let socket = if self.addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(io_error)?;
        if let Some(ip) = bind {
            socket.bind(SocketAddr::new(ip, 0)).map_err(io_error)?;
        }
        let stream = socket.connect(self.addr).await.map_err(io_error)?;
        stream.set_nodelay(true).map_err(io_error)?;
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(0)
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES));
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(self.url.as_str(), stream, Some(config))
                .await?;
        loop {
            return match ws.next().await {
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<Peek>(&text) {
                    Ok(p) if p.kind == "welcome" => Ok(ws),
                    Ok(p) => Err(ClientError::Protocol(format!(
                        "first frame was {:?}, not welcome",
                        p.kind
                    ))),
                    Err(source) => Err(ClientError::Decode {
                        what: "first frame",
                        source,
                    }),
                },
                Some(Ok(Message::Close(frame))) => Err(ClientError::Closed {
                    code: frame.as_ref().map(|f| u16::from(f.code)),
                    reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                }),
                Some(Ok(_)) => continue,
                Some(Err(e)) => Err(e.into()),
                None => Err(ClientError::Closed {
                    code: None,
                    reason: "closed before welcome".into(),
                }),
            };
        }
    }
}

fn io_error(e: std::io::Error) -> ClientError {
    tungstenite::Error::Io(e).into()
}

/// A short, bounded label for an error: `<stage>: <code> (<status>)` for API answers, the OS
/// error for I/O (`connection refused`, `too many open files`), else the error's kind.
pub(crate) fn error_kind(stage: &str, e: &ClientError) -> String {
    match e {
        ClientError::Api { code, .. } if code.starts_with("http_") => format!("{stage}: {code}"),
        ClientError::Api { status, code, .. } => format!("{stage}: {code} ({status})"),
        ClientError::Timeout => format!("{stage}: timeout"),
        ClientError::Closed { code: Some(c), .. } => format!("{stage}: closed {c}"),
        ClientError::Closed { code: None, .. } => format!("{stage}: closed without a code"),
        ClientError::WebSocket(w) => match w.as_ref() {
            tungstenite::Error::Io(io) => format!("{stage}: {}", io_label(io)),
            other => format!("{stage}: websocket {}", websocket_label(other)),
        },
        ClientError::Http(h) if h.is_timeout() => format!("{stage}: timeout"),
        ClientError::Http(h) if h.is_connect() => format!("{stage}: http connect failed"),
        ClientError::Http(_) => format!("{stage}: http failed"),
        ClientError::Decode { .. } => format!("{stage}: bad answer"),
        ClientError::InvalidUrl(_) => format!("{stage}: invalid url"),
        ClientError::Tls(_) => format!("{stage}: tls"),
        ClientError::Protocol(_) => format!("{stage}: protocol"),
        ClientError::NotConnected => format!("{stage}: not connected"),
    }
}

/// `connection refused`, `too many open files`, … (the OS message without its number).
pub(crate) fn io_label(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error") {
        Some(i) => &text[..i],
        None => &text,
    };
    text.to_lowercase()
}

fn websocket_label(e: &tungstenite::Error) -> &'static str {
    match e {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => "closed",
        tungstenite::Error::Capacity(_) => "frame too large",
        tungstenite::Error::Protocol(_) => "protocol error",
        tungstenite::Error::Url(_) => "bad url",
        tungstenite::Error::Http(_) | tungstenite::Error::HttpFormat(_) => "http error",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peek_borrows_and_ignores_the_rest() {
        let f = r#"{"type":"message","seq":3,"userId":"u","username":"n","text":"b:1:2","ts":"t","clientId":"c"}"#;
        let p: Peek = serde_json::from_str(f).unwrap();
        assert_eq!(p.kind, "message");
        assert!(matches!(p.text, Some(Cow::Borrowed("b:1:2"))));
        let p: Peek = serde_json::from_str(
            r#"{"type":"welcome","roomId":"r","you":{},"members":[{"text":"x"}],"history":[],"seq":0}"#,
        )
        .unwrap();
        assert_eq!((p.kind.as_ref(), p.text), ("welcome", None));
        let p: Peek =
            serde_json::from_str(r#"{"type":"error","code":"rate_limited","message":"m"}"#)
                .unwrap();
        assert_eq!(p.code.as_deref(), Some("rate_limited"));
        // Escapes still parse (owned).
        let p: Peek = serde_json::from_str(r#"{"type":"message","text":"a\"b"}"#).unwrap();
        assert_eq!(p.text.as_deref(), Some("a\"b"));
    }

    #[test]
    fn error_kinds_are_short() {
        let api = ClientError::Api {
            status: 401,
            code: "invalid_ticket".into(),
            message: "m".into(),
            retry_after: None,
        };
        assert_eq!(error_kind("connect", &api), "connect: invalid_ticket (401)");
        let io = io_error(std::io::Error::from_raw_os_error(111));
        assert_eq!(error_kind("connect", &io), "connect: connection refused");
        assert_eq!(
            error_kind("lookup", &ClientError::Timeout),
            "lookup: timeout"
        );
    }

    #[tokio::test]
    async fn endpoint_adds_the_ticket_and_refuses_wss() {
        let e = Endpoint::resolve("ws://127.0.0.1:9/ws?x=1", "t k")
            .await
            .unwrap();
        assert_eq!(e.url.as_str(), "ws://127.0.0.1:9/ws?x=1&token=t+k");
        assert_eq!(e.addr, "127.0.0.1:9".parse().unwrap());
        assert!(
            Endpoint::resolve("wss://127.0.0.1:9/ws", "t")
                .await
                .is_err()
        );
        assert!(
            Endpoint::resolve("http://127.0.0.1:9/ws", "t")
                .await
                .is_err()
        );
        // Nothing listens on port 9 (discard) here: refused, labelled by the OS message.
        match e.open(None, Duration::from_secs(10)).await {
            Err(err) => assert!(error_kind("connect", &err).starts_with("connect: ")),
            Ok(_) => panic!("connected to port 9"),
        }
    }
}
