//! Attacks on a session server's WebSocket and HTTP edges, replayed over real sockets: protocol
//! violations get their RFC 6455 close codes, a ping flood is closed with 1008, a ticket opens
//! one connection, `/metrics` is not on the public port, and half-sent HTTP requests are closed
//! while real clients are still served.

mod common;

use std::time::{Duration, Instant};

use common::{WAIT, start};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// A WebSocket opened by hand (so that it can send frames no library would), past its
/// `welcome`.
struct Raw {
    tcp: TcpStream,
    /// Bytes read past the handshake answer.
    buf: Vec<u8>,
}

impl Raw {
    async fn open(addr: std::net::SocketAddr, token: &str) -> Raw {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET /ws?token={token} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Raw {
            tcp,
            buf: Vec::new(),
        };
        // The 101 answer, then the welcome frame.
        let end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            raw.fill().await;
        };
        assert!(
            raw.buf.starts_with(b"HTTP/1.1 101"),
            "{:?}",
            String::from_utf8_lossy(&raw.buf)
        );
        raw.buf.drain(..end);
        let (opcode, payload) = raw.frame().await.expect("welcome");
        assert_eq!(opcode, 1);
        assert!(payload.starts_with(br#"{"type":"welcome""#));
        raw
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
            .await
            .expect("read in time")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next server frame (opcode, payload); `None` once the socket ends.
    async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let opcode = self.buf[0] & 0x0f;
                let (len, head) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= head + len {
                    let payload = self.buf[head..head + len].to_vec();
                    self.buf.drain(..head + len);
                    return Some((opcode, payload));
                }
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Writes one frame: FIN, `opcode`, masked unless `masked` is false.
    async fn send(&mut self, opcode: u8, payload: &[u8], masked: bool) {
        let mut frame = vec![0x80 | opcode];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => frame.push(mask_bit | n as u8),
            n => {
                frame.push(mask_bit | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        if masked {
            let key = [0x12, 0x34, 0x56, 0x78];
            frame.extend_from_slice(&key);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            frame.extend_from_slice(payload);
        }
        // The server may already have closed: a failed write is fine, the close frame tells.
        let _ = self.tcp.write_all(&frame).await;
    }

    /// The close code the server ends with (frames before it skipped).
    async fn close_code(&mut self) -> Option<u16> {
        while let Some((opcode, payload)) = self.frame().await {
            if opcode == 8 {
                return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
        None
    }
}

#[tokio::test]
async fn protocol_violations_close_with_their_rfc_6455_codes() {
    let server = start(&[]).await;
    let cases: [(&str, u8, Vec<u8>, bool, u16); 3] = [
        (
            "invalid UTF-8 in a text frame",
            1,
            vec![b'{', 0xff, 0xfe, b'}'],
            true,
            1007,
        ),
        (
            "an unmasked client frame",
            1,
            br#"{"type":"send","text":"hi"}"#.to_vec(),
            false,
            1002,
        ),
        ("a ping over 125 bytes", 9, vec![b'p'; 200], true, 1002),
    ];
    for (what, opcode, payload, masked, code) in cases {
        let mut raw = Raw::open(server.addr, &server.ticket("r-proto", "alice")).await;
        raw.send(opcode, &payload, masked).await;
        assert_eq!(raw.close_code().await, Some(code), "{what}");
    }
}

#[tokio::test]
async fn a_ping_flood_is_closed_with_1008() {
    let server = start(&["--message-rate", "5", "--message-burst", "10"]).await;
    let mut raw = Raw::open(server.addr, &server.ticket("r-ping", "alice")).await;
    let started = Instant::now();
    let mut sent = 0;
    // Far fewer than a flood at full speed: the budget is 10 at once, refusals end it at 20 more.
    while sent < 10_000 {
        raw.send(9, b"x", true).await;
        sent += 1;
    }
    assert_eq!(raw.close_code().await, Some(1008), "after {sent} pings");
    assert!(started.elapsed() < WAIT);
    // Pongs answered are bounded too: far fewer than the pings sent came back.
}

#[tokio::test]
async fn a_ticket_opens_one_connection() {
    let server = start(&[]).await;
    let ticket = server.ticket("r-once", "alice");
    let mut first = server.connect(&ticket).await.expect("first use");
    assert_eq!(first.recv().await["type"], "welcome");
    assert_eq!(
        server.refusal(&ticket).await,
        (401, "invalid_ticket".to_owned())
    );
    // Even after the first connection ended.
    first.ws.close(None).await.unwrap();
    assert_eq!(
        server.refusal(&ticket).await,
        (401, "invalid_ticket".to_owned())
    );
    // A fresh ticket still works.
    let (_c, welcome) = server.join("r-once", "alice").await;
    assert_eq!(welcome["roomId"], "r-once");
}

#[tokio::test]
async fn metrics_are_served_on_the_admin_listener_only() {
    let server = start(&[]).await;
    let public = reqwest::get(format!("http://{}/metrics", server.addr))
        .await
        .unwrap();
    assert_eq!(public.status(), 404);
    let admin = reqwest::get(format!("http://{}/metrics", server.admin))
        .await
        .unwrap();
    assert_eq!(admin.status(), 200);
    assert!(admin.text().await.unwrap().contains("berth_session_"));
}

#[tokio::test]
async fn half_sent_requests_are_closed_and_real_clients_served_meanwhile() {
    let server = start(&[
        "--header-read-timeout-ms",
        "500",
        "--max-http-connections",
        "300",
    ])
    .await;
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(tcp);
    }
    // A real client is served while they hang.
    let (_c, welcome) = server.join("r-slow", "alice").await;
    assert_eq!(welcome["type"], "welcome");
    let health = reqwest::get(format!("http://{}/healthz", server.addr))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // Every half-sent request is closed within the timeout (plus scheduling slack).
    for mut tcp in slow {
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .expect("a half-sent request stays open")
            .unwrap_or(0);
        // Closed, perhaps with a 408 first.
        if n > 0 {
            let rest = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
                .await
                .expect("not closed")
                .unwrap_or(0);
            assert_eq!(rest, 0);
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // An idle kept-alive connection goes too.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = 0;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match idle.read(&mut buf[got..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an idle connection stayed open");
    assert!(buf.starts_with(b"HTTP/1.1 200"));
}

#[tokio::test]
async fn refused_frames_keep_the_connection_and_bad_json_is_an_error_frame() {
    let server = start(&[]).await;
    let (mut c, _) = server.join("r-json", "alice").await;
    use futures_util::SinkExt as _;
    c.ws.send(tokio_tungstenite::tungstenite::Message::text("{nope"))
        .await
        .unwrap();
    let v = c.recv().await;
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str()),
        (Some("error"), Some("bad_frame"))
    );
    // Still open: a good frame goes through.
    c.ws.send(tokio_tungstenite::tungstenite::Message::text(
        r#"{"type":"send","text":"fine"}"#,
    ))
    .await
    .unwrap();
    assert_eq!(c.recv_type("message").await["text"], "fine");
}
