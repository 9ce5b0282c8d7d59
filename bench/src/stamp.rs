//! The bench's message text: `b:<run>:<step>:<nanos>:<padding>`. The sender writes its send
//! instant (nanoseconds since the run's base instant, in the same process as every receiver),
//! so a receiver's latency is `now - nanos`. `run` (8 hex digits) keeps other runs' messages,
//! which share no base instant, out of the figures.

use std::fmt::Write as _;

/// Appends the `send` frame of a stamped message of at least `size` text bytes to `out`.
pub(crate) fn send_frame(out: &mut String, run: u32, step: u8, nanos: u64, size: usize) {
    out.push_str(r#"{"type":"send","text":""#);
    let start = out.len();
    // Writing into a String cannot fail.
    let _ = write!(out, "b:{run:08x}:{step}:{nanos}:");
    let written = out.len() - start;
    out.extend(std::iter::repeat_n('x', size.saturating_sub(written)));
    out.push_str(r#""}"#);
}

/// The (step, nanos) of a text stamped by run `run`, or `None` for any other text.
pub(crate) fn parse(text: &str, run_prefix: &str) -> Option<(u8, u64)> {
    let rest = text.strip_prefix(run_prefix)?;
    let mut parts = rest.splitn(3, ':');
    let step = parts.next()?.parse().ok()?;
    let nanos = parts.next()?.parse().ok()?;
    parts.next()?;
    Some((step, nanos))
}

/// What [`parse`] needs to recognise run `run`: `b:<run>:`.
pub(crate) fn run_prefix(run: u32) -> String {
    format!("b:{run:08x}:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_size() {
        let mut frame = String::new();
        send_frame(&mut frame, 0xab, 2, 123_456_789, 100);
        let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v["type"], "send");
        let text = v["text"].as_str().unwrap();
        assert_eq!(text.len(), 100);
        assert!(text.starts_with("b:000000ab:2:123456789:x"));
        assert_eq!(parse(text, &run_prefix(0xab)), Some((2, 123_456_789)));
        assert_eq!(parse(text, &run_prefix(0xac)), None);

        // A size below the header gives just the header.
        frame.clear();
        send_frame(&mut frame, 1, 0, 5, 0);
        let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v["text"], "b:00000001:0:5:");
        assert_eq!(parse("b:00000001:0:5:", &run_prefix(1)), Some((0, 5)));
    }

    #[test]
    fn foreign_texts_are_not_stamps() {
        let p = run_prefix(7);
        for text in [
            "hello",
            "b:00000007:",
            "b:00000007:x:1:",
            "b:00000007:1:2",
            "b:00000007:300:1:",
        ] {
            assert_eq!(parse(text, &p), None, "{text}");
        }
    }
}
