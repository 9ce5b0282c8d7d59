//! The client's WebSocket frames (RFC 6455), as a connection reads them.
//!
//! Why not tungstenite: its reader keeps a read buffer, two waker cells and a few hundred bytes
//! of state for every connection, idle or not, and most connections are idle. A [`Reader`]
//! holds no memory while nothing is half read: bytes are read into the stack and only what a
//! partial frame leaves over is kept, until the frame is whole.
//!
//! What it enforces is what the connection closes for: frames must be masked, carry no reserved
//! bits or opcodes, control frames must be final and at most 125 bytes, fragments must continue
//! a message and data frames not interleave one (1002); a frame or message over the limit is
//! refused as soon as its header says so, before its payload is read (1008); a text message must
//! be UTF-8 (1007).

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Bytes read from the socket per call (on the stack, not kept).
const READ_CHUNK: usize = 4096;
/// Longest control payload (RFC 6455 section 5.5).
pub(crate) const MAX_CONTROL: usize = 125;

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xa;

/// A message or control frame from the client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming {
    Text(String),
    /// A binary message (its content is of no use to a chat room).
    Binary,
    /// A ping, with the payload its pong must carry.
    Ping(Vec<u8>),
    Pong,
    /// The client's close, with its status code if it gave one.
    Close(Option<u16>),
}

/// Why reading stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// A frame or message over the size limit (close 1008).
    TooLarge,
    /// A text message that is not UTF-8 (close 1007).
    NotUtf8,
    /// A frame that breaks the protocol (close 1002).
    Protocol,
    /// The socket ended or failed.
    Gone,
}

/// A frame's header, parsed.
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    /// Header bytes, mask included.
    size: usize,
    len: u64,
}

impl Header {
    /// The header at the start of `buf`; `None` until it is all there. Violations are found as
    /// soon as the first two bytes are.
    fn parse(buf: &[u8]) -> Result<Option<Header>, ReadError> {
        let [b0, b1, ..] = *buf else { return Ok(None) };
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        if b0 & 0x70 != 0 || b1 & 0x80 == 0 {
            // Reserved bits (no extension was agreed), or an unmasked client frame.
            return Err(ReadError::Protocol);
        }
        let len7 = b1 & 0x7f;
        match opcode {
            CONTINUATION | TEXT | BINARY => {}
            CLOSE | PING | PONG if fin && usize::from(len7) <= MAX_CONTROL => {}
            _ => return Err(ReadError::Protocol),
        }
        let (len, at) = match len7 {
            126 => match buf.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(b) => {
                    let len = u64::from_be_bytes(b.try_into().expect("8 bytes"));
                    if len >> 63 != 0 {
                        return Err(ReadError::Protocol);
                    }
                    (len, 10)
                }
                None => return Ok(None),
            },
            n => (u64::from(n), 2),
        };
        let Some(mask) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        Ok(Some(Header {
            fin,
            opcode,
            mask: mask.try_into().expect("4 bytes"),
            size: at + 4,
            len,
        }))
    }
}

/// Reads a client's frames; holds memory only while a frame or a fragmented message is half
/// read.
#[derive(Default)]
pub(crate) struct Reader {
    /// Bytes read and not parsed yet.
    buf: Vec<u8>,
    /// The fragments of a message so far, unmasked.
    message: Vec<u8>,
    /// While a fragmented message is open: whether it is text.
    open: Option<bool>,
}

impl Reader {
    /// A reader that starts with `early`: bytes read with the upgrade request.
    pub fn new(early: Vec<u8>) -> Reader {
        Reader {
            buf: early,
            ..Reader::default()
        }
    }

    /// The next message or control frame, frames and messages at most `max` bytes. Cancel-safe:
    /// what was read stays here for the next call.
    pub async fn next<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        max: usize,
    ) -> Result<Incoming, ReadError> {
        std::future::poll_fn(|cx| self.poll_next(cx, io, max)).await
    }

    /// [`Reader::next`], as a poll.
    pub fn poll_next<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut R,
        max: usize,
    ) -> Poll<Result<Incoming, ReadError>> {
        loop {
            if let Some(incoming) = self.parse(max)? {
                return Poll::Ready(Ok(incoming));
            }
            match ready!(read_some(Pin::new(&mut *io), cx, &mut self.buf)) {
                Ok(0) | Err(_) => return Poll::Ready(Err(ReadError::Gone)),
                Ok(_) => {}
            }
        }
    }

    /// The first whole message or control frame in the buffer, if any.
    fn parse(&mut self, max: usize) -> Result<Option<Incoming>, ReadError> {
        loop {
            let Some(head) = Header::parse(&self.buf)? else {
                return Ok(None);
            };
            let so_far = if head.opcode == CONTINUATION {
                self.message.len() as u64
            } else {
                0
            };
            if head.len.saturating_add(so_far) > max as u64 {
                return Err(ReadError::TooLarge);
            }
            let end = head.size + head.len as usize;
            if self.buf.len() < end {
                return Ok(None);
            }
            let payload = &mut self.buf[head.size..end];
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= head.mask[i & 3];
            }
            let incoming = self.frame(&head, end)?;
            self.buf.drain(..end);
            if self.buf.is_empty() {
                // Hold nothing while idle.
                self.buf = Vec::new();
            }
            if incoming.is_some() {
                return Ok(incoming);
            }
        }
    }

    /// What the frame at the start of the buffer (payload unmasked, ending at `end`) completes:
    /// `None` for a fragment that leaves its message open.
    fn frame(&mut self, head: &Header, end: usize) -> Result<Option<Incoming>, ReadError> {
        let payload = &self.buf[head.size..end];
        let incoming = match (head.opcode, self.open) {
            (PING, _) => Incoming::Ping(payload.to_vec()),
            (PONG, _) => Incoming::Pong,
            (CLOSE, _) => Incoming::Close(close_code(payload)?),
            (TEXT | BINARY, None) if head.fin => message(head.opcode == TEXT, payload.to_vec())?,
            (TEXT | BINARY, None) => {
                self.open = Some(head.opcode == TEXT);
                self.message = payload.to_vec();
                return Ok(None);
            }
            (CONTINUATION, Some(text)) => {
                self.message.extend_from_slice(payload);
                if !head.fin {
                    return Ok(None);
                }
                self.open = None;
                message(text, std::mem::take(&mut self.message))?
            }
            // A continuation with no message open, or a new message inside one.
            _ => return Err(ReadError::Protocol),
        };
        Ok(Some(incoming))
    }
}

fn message(text: bool, payload: Vec<u8>) -> Result<Incoming, ReadError> {
    if !text {
        return Ok(Incoming::Binary);
    }
    String::from_utf8(payload)
        .map(Incoming::Text)
        .map_err(|_| ReadError::NotUtf8)
}

/// The status code of a close frame's payload: none, or a code a peer may send (RFC 6455
/// section 7.4) followed by a UTF-8 reason.
fn close_code(payload: &[u8]) -> Result<Option<u16>, ReadError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ReadError::Protocol),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !CloseCode::from(code).is_allowed() {
                return Err(ReadError::Protocol);
            }
            std::str::from_utf8(reason).map_err(|_| ReadError::NotUtf8)?;
            Ok(Some(code))
        }
    }
}

/// Reads what the socket has (up to [`READ_CHUNK`] bytes, through the stack) onto `buf`.
fn read_some<R: AsyncRead>(
    io: Pin<&mut R>,
    cx: &mut Context<'_>,
    buf: &mut Vec<u8>,
) -> Poll<io::Result<usize>> {
    let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
    let mut read = ReadBuf::uninit(&mut chunk);
    ready!(io.poll_read(cx, &mut read))?;
    buf.extend_from_slice(read.filled());
    Poll::Ready(Ok(read.filled().len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::io::AsyncWriteExt as _;

    /// A masked client frame.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::from(fin) << 7 | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0xa1, 0x02, 0xf3, 0x44];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// Everything `bytes` reads as, delivered `step` bytes at a time, up to the first error.
    fn read_all(bytes: Vec<u8>, step: usize, max: usize) -> Vec<Result<Incoming, ReadError>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (mut client, mut server) = tokio::io::duplex(1 << 20);
            tokio::spawn(async move {
                for piece in bytes.chunks(step.max(1)) {
                    client.write_all(piece).await.unwrap();
                    tokio::task::yield_now().await;
                }
            });
            let mut reader = Reader::default();
            let mut out = Vec::new();
            loop {
                let r = reader.next(&mut server, max).await;
                let end = r.is_err();
                out.push(r);
                if end {
                    return out;
                }
            }
        })
    }

    #[test]
    fn reads_messages_fragments_and_control_frames_however_they_arrive() {
        let mut wire = frame(true, TEXT, br#"{"type":"send","text":"hi"}"#);
        wire.extend(frame(false, TEXT, "caf".as_bytes()));
        wire.extend(frame(true, PING, b"p1"));
        wire.extend(frame(false, CONTINUATION, &[0xc3]));
        wire.extend(frame(true, CONTINUATION, &[0xa9]));
        wire.extend(frame(true, BINARY, &[0, 1, 2]));
        wire.extend(frame(true, PONG, b""));
        wire.extend(frame(true, TEXT, &"x".repeat(70_000).into_bytes()));
        wire.extend(frame(true, CLOSE, &[0x03, 0xe8, b'o', b'k']));
        let expected = vec![
            Ok(Incoming::Text(r#"{"type":"send","text":"hi"}"#.into())),
            Ok(Incoming::Ping(b"p1".to_vec())),
            Ok(Incoming::Text("café".into())),
            Ok(Incoming::Binary),
            Ok(Incoming::Pong),
            Ok(Incoming::Text("x".repeat(70_000))),
            Ok(Incoming::Close(Some(1000))),
            Err(ReadError::Gone),
        ];
        for step in [1, 3, 7, 100, 5000, 1 << 20] {
            assert_eq!(
                read_all(wire.clone(), step, 100_000),
                expected,
                "step {step}"
            );
        }
    }

    #[test]
    fn violations_end_reading_with_their_reason() {
        let unmasked = {
            let mut f = frame(true, TEXT, b"hi");
            f[1] &= 0x7f;
            f
        };
        let reserved_bit = {
            let mut f = frame(true, TEXT, b"hi");
            f[0] |= 0x40;
            f
        };
        let cases: Vec<(&str, Vec<u8>, ReadError)> = vec![
            ("unmasked", unmasked, ReadError::Protocol),
            ("reserved bit", reserved_bit, ReadError::Protocol),
            (
                "reserved opcode",
                frame(true, 0x3, b""),
                ReadError::Protocol,
            ),
            (
                "long ping",
                frame(true, PING, &[b'p'; 126]),
                ReadError::Protocol,
            ),
            (
                "fragmented ping",
                frame(false, PING, b""),
                ReadError::Protocol,
            ),
            (
                "lone continuation",
                frame(true, CONTINUATION, b"x"),
                ReadError::Protocol,
            ),
            (
                "text inside a message",
                [frame(false, TEXT, b"a"), frame(true, TEXT, b"b")].concat(),
                ReadError::Protocol,
            ),
            (
                "one-byte close",
                frame(true, CLOSE, &[3]),
                ReadError::Protocol,
            ),
            (
                "close code 1005",
                frame(true, CLOSE, &[0x03, 0xed]),
                ReadError::Protocol,
            ),
            (
                "not UTF-8",
                frame(true, TEXT, &[b'{', 0xff, b'}']),
                ReadError::NotUtf8,
            ),
            (
                "UTF-8 cut between fragments, never finished",
                [frame(false, TEXT, &[0xc3]), frame(true, CONTINUATION, b"a")].concat(),
                ReadError::NotUtf8,
            ),
            (
                "frame over the limit",
                frame(true, TEXT, &[b'x'; 101]),
                ReadError::TooLarge,
            ),
            (
                "message over the limit",
                [
                    frame(false, TEXT, &[b'x'; 60]),
                    frame(true, CONTINUATION, &[b'x'; 60]),
                ]
                .concat(),
                ReadError::TooLarge,
            ),
        ];
        for (what, wire, error) in cases {
            assert_eq!(
                read_all(wire, 1 << 20, 100).pop(),
                Some(Err(error)),
                "{what}"
            );
        }
    }

    #[test]
    fn an_oversize_frame_is_refused_before_its_payload_arrives() {
        // Only the header of a 1 GiB frame: refused at once, nothing buffered.
        let mut wire = vec![0x81, 0x80 | 127];
        wire.extend_from_slice(&(1u64 << 30).to_be_bytes());
        wire.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(
            read_all(wire, 1 << 20, 65_536),
            vec![Err(ReadError::TooLarge)]
        );
    }

    #[test]
    fn an_idle_reader_holds_no_memory() {
        let mut reader = Reader::new(frame(true, TEXT, b"hello"));
        assert_eq!(reader.parse(100), Ok(Some(Incoming::Text("hello".into()))));
        assert_eq!(reader.buf.capacity(), 0);
        assert_eq!(reader.message.capacity(), 0);
    }

    proptest! {
        /// Arbitrary bytes from a client: read as frames or refused with a documented reason,
        /// never a panic, and never more buffered than a frame's limit and one read.
        #[test]
        fn arbitrary_bytes_are_read_or_refused(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut reader = Reader::new(bytes);
            loop {
                match reader.parse(256) {
                    Ok(Some(_)) => continue,
                    Ok(None) => {
                        prop_assert!(reader.buf.len() <= 600);
                        break;
                    }
                    Err(e) => {
                        prop_assert!(matches!(e, ReadError::Protocol | ReadError::NotUtf8 | ReadError::TooLarge));
                        break;
                    }
                }
            }
        }
    }
}
