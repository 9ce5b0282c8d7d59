//! Webhook deliveries: the JSON a session server POSTs for room events, and how it is signed.
//!
//! Body: `{"id", "type", "roomId", "ts", "data"}` where `data` is the room's frame exactly as
//! members receive it. Headers: [`SIGNATURE_HEADER`] = `sha256=` + the hex HMAC-SHA256 of the
//! raw body under the webhook secret, [`DELIVERY_HEADER`] = `id` (the same on every retry, so a
//! receiver can drop duplicates), [`EVENT_HEADER`] = `type`.

use serde::{Deserialize, Serialize};

/// `X-Berth-Signature: sha256=<hex>`.
pub const SIGNATURE_HEADER: &str = "x-berth-signature";
/// `X-Berth-Delivery: <id>`.
pub const DELIVERY_HEADER: &str = "x-berth-delivery";
/// `X-Berth-Event: message | joined | left`.
pub const EVENT_HEADER: &str = "x-berth-event";
/// Prefix of the signature header's value.
pub const SIGNATURE_PREFIX: &str = "sha256=";

/// One delivery, as receivers read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEvent {
    /// Unique per event (kept across retries and across the URLs it is sent to).
    pub id: String,
    /// `message`, `joined` or `left`.
    #[serde(rename = "type")]
    pub kind: String,
    pub room_id: String,
    /// RFC 3339, when the server emitted the event.
    pub ts: String,
    /// The frame (`message`, `joined` or `left`) as the room's members got it.
    pub data: serde_json::Value,
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Bytes of lower- or upper-case hex; `None` when `s` is not hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(unhex("00AB10"), Some(vec![0, 0xab, 0x10]));
        assert_eq!(unhex("0g"), None);
        assert_eq!(unhex("abc"), None);
    }
}
