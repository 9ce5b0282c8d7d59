//! [`Outbox`]: a batch of server text frames written straight to the socket, each frame's header
//! and its shared payload gathered into vectored writes (`writev`), without copying the payload.
//!
//! Why not through tungstenite: its write buffer copies every payload (a `memmove` per delivery)
//! and keeps the capacity of the largest batch it ever held for the connection's whole life. An
//! outbox holds memory only while a batch is being written.
//!
//! The outbox remembers how far a batch got, so a write that was abandoned half way (a kick, a
//! deadline) can be finished before a close frame follows it: the client then still reads a
//! well-formed stream and the close code.

use std::io::IoSlice;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// Longest header of an unmasked frame (RFC 6455 section 5.2): 2 bytes and a 64-bit length.
pub(crate) const MAX_HEADER: usize = 10;

/// The header of a final, unmasked text frame of `len` bytes, and its length.
pub(crate) fn text_header(len: usize) -> ([u8; MAX_HEADER], usize) {
    header(OpCode::Data(Data::Text), len)
}

/// The header of a final, unmasked frame of `opcode` and `len` bytes, and its length
/// (tungstenite encodes it).
fn header(opcode: OpCode, len: usize) -> ([u8; MAX_HEADER], usize) {
    let len = len as u64;
    let head = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    let mut header = [0u8; MAX_HEADER];
    head.format(len, &mut &mut header[..])
        .expect("an unmasked header fits in 10 bytes");
    (header, head.len(len))
}

/// One frame: its encoded header and its payload.
struct Frame {
    header: [u8; MAX_HEADER],
    header_len: u8,
    payload: Bytes,
}

impl Frame {
    /// A final, unmasked text frame carrying `payload`.
    fn text(payload: Utf8Bytes) -> Frame {
        let (header, header_len) = text_header(payload.len());
        Frame {
            header,
            header_len: header_len as u8,
            payload: payload.into(),
        }
    }

    /// Part `i` of the frame: 0 the header, 1 the payload.
    fn part(&self, i: usize) -> &[u8] {
        if i == 0 {
            &self.header[..usize::from(self.header_len)]
        } else {
            &self.payload
        }
    }
}

/// Frames waiting to be written, and how far the first of them got.
#[derive(Default)]
pub(crate) struct Outbox {
    frames: Vec<Frame>,
    /// The part being written: `2 × frame + (0 header | 1 payload)`.
    part: usize,
    /// Bytes of that part already written.
    offset: usize,
    /// Bytes left in all.
    remaining: usize,
}

impl Outbox {
    /// Queues `payload` as a text frame behind what is already queued.
    pub fn push(&mut self, payload: Utf8Bytes) {
        self.push_frame(Frame::text(payload));
    }

    /// Queues a text frame of which the first `written` bytes (header included) already went
    /// out: a half-written frame must come first, so the outbox must then be empty.
    pub fn push_started(&mut self, payload: Utf8Bytes, written: usize) {
        assert!(
            written == 0 || self.is_empty(),
            "a half-written frame goes first"
        );
        self.push(payload);
        self.advance(written);
    }

    /// Frames queued (the first possibly half written).
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Queues a ping (with an empty payload).
    pub fn push_ping(&mut self) {
        self.push_control(Control::Ping, Bytes::new());
    }

    /// Queues the pong that answers a ping carrying `payload` (at most 125 bytes).
    pub fn push_pong(&mut self, payload: Vec<u8>) {
        self.push_control(Control::Pong, payload.into());
    }

    /// Queues a close frame with `code` and `reason` (a short, fixed text).
    pub fn push_close(&mut self, code: u16, reason: &str) {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        self.push_control(Control::Close, payload.into());
    }

    /// Queues a close frame without a status code (the answer to a client's close that gave
    /// none).
    pub fn push_empty_close(&mut self) {
        self.push_control(Control::Close, Bytes::new());
    }

    fn push_control(&mut self, control: Control, payload: Bytes) {
        assert!(
            payload.len() <= crate::inbound::MAX_CONTROL,
            "a control payload is at most 125 bytes"
        );
        let (header, header_len) = header(OpCode::Control(control), payload.len());
        self.push_frame(Frame {
            header,
            header_len: header_len as u8,
            payload,
        });
    }

    fn push_frame(&mut self, frame: Frame) {
        if self.is_empty() {
            // Drop what a finished batch left behind before starting anew.
            *self = Outbox::default();
        }
        self.remaining += usize::from(frame.header_len) + frame.payload.len();
        self.frames.push(frame);
        // An empty part (an empty payload) must not be the current chunk.
        while self.remaining > 0 && self.current().len() == self.offset {
            self.part += 1;
            self.offset = 0;
        }
    }

    /// Whether nothing is left to write.
    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }

    /// Writes everything queued to `io` and flushes it; the outbox is then empty and holds no
    /// memory. When the future is dropped half way, the outbox keeps what is left.
    pub async fn write_to<W: AsyncWrite + Unpin>(&mut self, io: &mut W) -> std::io::Result<()> {
        io.write_all_buf(self).await?;
        *self = Outbox::default();
        io.flush().await
    }

    fn current(&self) -> &[u8] {
        self.frames[self.part / 2].part(self.part % 2)
    }
}

impl Buf for Outbox {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        if self.remaining == 0 {
            return &[];
        }
        &self.current()[self.offset..]
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advance past the end of the outbox");
        self.remaining -= cnt;
        while cnt > 0 {
            let left = self.current().len() - self.offset;
            if cnt < left {
                self.offset += cnt;
                return;
            }
            cnt -= left;
            self.part += 1;
            self.offset = 0;
        }
        // Step over empty parts (an empty payload), so that `chunk` is never empty early.
        while self.remaining > 0 && self.current().len() == self.offset {
            self.part += 1;
            self.offset = 0;
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        if self.remaining == 0 {
            return 0;
        }
        let mut n = 0;
        let mut offset = self.offset;
        for part in self.part..self.frames.len() * 2 {
            if n == dst.len() {
                break;
            }
            let bytes = &self.frames[part / 2].part(part % 2)[offset..];
            offset = 0;
            if !bytes.is_empty() {
                dst[n] = IoSlice::new(bytes);
                n += 1;
            }
        }
        n
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::io::AsyncRead;
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
    use tokio_tungstenite::tungstenite::{Message, WebSocket};

    /// Reads `bytes` as a client would and returns the text frames (of any size).
    pub(crate) fn parse(bytes: Vec<u8>) -> Vec<String> {
        let config = WebSocketConfig::default()
            .max_frame_size(None)
            .max_message_size(None);
        let mut ws =
            WebSocket::from_raw_socket(std::io::Cursor::new(bytes), Role::Client, Some(config));
        let mut out = Vec::new();
        while let Ok(msg) = ws.read() {
            match msg {
                Message::Text(t) => out.push(t.to_string()),
                other => panic!("unexpected {other:?}"),
            }
        }
        out
    }

    /// Reads everything from `client` until it is closed, in a task.
    pub(crate) fn read_all(
        mut client: impl AsyncRead + Unpin + Send + 'static,
    ) -> tokio::task::JoinHandle<Vec<u8>> {
        tokio::spawn(async move {
            let mut wire = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut client, &mut wire)
                .await
                .unwrap();
            wire
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the payload sizes and however the socket splits the writes, a client reads
        /// exactly the frames queued, in order.
        #[test]
        fn any_batch_reads_back_as_its_frames(
            texts in proptest::collection::vec(
                prop_oneof![".{0,20}", ".{100,140}", "x{65530,65540}"], 0..8),
            step in prop_oneof![1usize..16, 16usize..5000],
            vectored in any::<bool>(),
        ) {
            let mut outbox = Outbox::default();
            for t in &texts {
                outbox.push(Utf8Bytes::from(t.clone()));
            }
            let mut wire = Vec::new();
            // Take at most `step` bytes per write, as a nearly full socket would.
            while outbox.has_remaining() {
                let n = if vectored {
                    let mut slices = [IoSlice::new(&[]); 64];
                    let k = outbox.chunks_vectored(&mut slices);
                    let mut taken = 0;
                    for s in &slices[..k] {
                        let t = s.len().min(step - taken);
                        wire.extend_from_slice(&s[..t]);
                        taken += t;
                        if taken == step { break; }
                    }
                    taken
                } else {
                    let c = outbox.chunk();
                    let t = c.len().min(step);
                    wire.extend_from_slice(&c[..t]);
                    t
                };
                prop_assert!(n > 0);
                outbox.advance(n);
            }
            prop_assert_eq!(parse(wire), texts);
        }
    }

    #[tokio::test]
    async fn control_frames_read_back_as_a_client_reads_them() {
        let (client, mut server) = tokio::io::duplex(64);
        let mut outbox = Outbox::default();
        outbox.push_ping();
        outbox.push_pong(b"p1".to_vec());
        outbox.push(Utf8Bytes::from_static("hi"));
        outbox.push_close(1008, "slow consumer");
        let reader = read_all(client);
        outbox.write_to(&mut server).await.unwrap();
        drop(server);
        let mut ws = WebSocket::from_raw_socket(
            std::io::Cursor::new(reader.await.unwrap()),
            Role::Client,
            None,
        );
        assert_eq!(ws.read().unwrap(), Message::Ping(Bytes::new()));
        assert_eq!(ws.read().unwrap(), Message::Pong(Bytes::from_static(b"p1")));
        assert_eq!(ws.read().unwrap(), Message::Text("hi".into()));
        match ws.read().unwrap() {
            Message::Close(Some(frame)) => {
                assert_eq!(u16::from(frame.code), 1008);
                assert_eq!(frame.reason.as_str(), "slow consumer");
            }
            other => panic!("expected the close, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn write_to_writes_everything_and_lets_go_of_the_batch() {
        let (client, mut server) = tokio::io::duplex(64);
        let mut outbox = Outbox::default();
        let big = "y".repeat(70_000);
        for t in ["hello", big.as_str(), ""] {
            outbox.push(Utf8Bytes::from(t.to_owned()));
        }
        assert_eq!(outbox.len(), 3);
        let reader = read_all(client);
        outbox.write_to(&mut server).await.unwrap();
        assert!(outbox.is_empty());
        assert_eq!(outbox.frames.capacity(), 0);
        drop(server);
        let texts = parse(reader.await.unwrap());
        assert_eq!(texts, vec!["hello".to_owned(), big, String::new()]);
    }
}
