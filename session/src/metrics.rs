//! Process counters, exposed in the OpenMetrics text format at `GET /metrics` by the Prometheus
//! project's `prometheus-client`.
//!
//! Plain relaxed atomics: the hot path adds to them (rooms add a whole broadcast's deliveries in
//! one `fetch_add`), and a scrape copies them into constant metrics for the encoder.

use std::sync::atomic::{AtomicU64, Ordering};

use berth_protocol::ErrorCode;
use prometheus_client::encoding::text;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`Metrics::render`]'s answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Codes counted by `berth_session_refusals_total`: HTTP refusals before the upgrade and
/// `error` frames / policy closes after it.
const REFUSAL_CODES: [ErrorCode; 11] = [
    ErrorCode::InvalidTicket,
    ErrorCode::WrongServer,
    ErrorCode::RoomFull,
    ErrorCode::ServerDraining,
    ErrorCode::ServerFull,
    ErrorCode::SchedulerUnavailable,
    ErrorCode::TextTooLong,
    ErrorCode::BadFrame,
    ErrorCode::RateLimited,
    ErrorCode::StoreUnavailable,
    ErrorCode::Internal,
];

/// Counters of one session-server process.
#[derive(Default)]
pub struct Metrics {
    /// Open WebSocket connections (including those between admission and upgrade).
    pub(crate) connections: AtomicU64,
    pub(crate) connections_total: AtomicU64,
    pub(crate) messages_in: AtomicU64,
    pub(crate) messages_out: AtomicU64,
    pub(crate) slow_consumers: AtomicU64,
    pub(crate) room_panics: AtomicU64,
    /// Group-commit transactions, messages they stored, and rooms whose append failed.
    pub(crate) store_batches: AtomicU64,
    pub(crate) store_messages: AtomicU64,
    pub(crate) store_failures: AtomicU64,
    /// Live rooms handed over to another server by a drain.
    pub(crate) handoffs: AtomicU64,
    /// Messages sent over HTTP (the internal send endpoint) and stored.
    pub(crate) http_sends: AtomicU64,
    /// SSE streams opened.
    pub(crate) sse_streams: AtomicU64,
    /// Webhook deliveries: answered 2xx, given up, retried, and events dropped because the
    /// queue was full.
    pub(crate) webhook_delivered: AtomicU64,
    pub(crate) webhook_failed: AtomicU64,
    pub(crate) webhook_retries: AtomicU64,
    pub(crate) webhook_dropped: AtomicU64,
    refusals: [AtomicU64; REFUSAL_CODES.len()],
}

impl Metrics {
    /// Counts one refusal with `code` (codes outside the list are counted as `internal`).
    pub fn refused(&self, code: ErrorCode) {
        let i = REFUSAL_CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(REFUSAL_CODES.len() - 1);
        self.refusals[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// The OpenMetrics text exposition ([`CONTENT_TYPE`]); `rooms` and `draining` are read by
    /// the caller. The counters are copied into a registry of constant metrics, which
    /// prometheus-client encodes.
    pub fn render(&self, rooms: usize, draining: bool) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut registry = Registry::default();
        let mut gauge = |name: &str, help: &str, value: u64| {
            let value = i64::try_from(value).unwrap_or(i64::MAX);
            registry.register(name, help, ConstGauge::new(value));
        };
        gauge(
            "berth_session_connections",
            "Open WebSocket connections",
            get(&self.connections),
        );
        gauge(
            "berth_session_rooms",
            "Rooms open on this server",
            rooms as u64,
        );
        gauge(
            "berth_session_draining",
            "1 while the server drains",
            u64::from(draining),
        );
        // Counter names get their `_total` suffix from the encoder.
        let counters = [
            // Not `berth_session_connections`: in OpenMetrics that family is the gauge above.
            (
                "berth_session_connections_accepted",
                "WebSocket connections accepted",
                &self.connections_total,
            ),
            (
                "berth_session_messages_in",
                "Chat messages accepted from clients",
                &self.messages_in,
            ),
            (
                "berth_session_messages_out",
                "Frames queued to clients by rooms",
                &self.messages_out,
            ),
            (
                "berth_session_slow_consumers",
                "Connections dropped for not reading",
                &self.slow_consumers,
            ),
            (
                "berth_session_room_panics",
                "Rooms ended by a panic",
                &self.room_panics,
            ),
            (
                "berth_session_store_batches",
                "Group-commit transactions written to the store",
                &self.store_batches,
            ),
            (
                "berth_session_store_messages",
                "Messages made durable in the store",
                &self.store_messages,
            ),
            (
                "berth_session_store_failures",
                "Room appends the store refused",
                &self.store_failures,
            ),
            (
                "berth_session_handoffs",
                "Live rooms handed over by a drain",
                &self.handoffs,
            ),
            (
                "berth_session_http_sends",
                "Messages sent over HTTP and stored",
                &self.http_sends,
            ),
            (
                "berth_session_sse_streams",
                "Server-Sent Events streams opened",
                &self.sse_streams,
            ),
            (
                "berth_session_webhook_delivered",
                "Webhook deliveries answered with 2xx",
                &self.webhook_delivered,
            ),
            (
                "berth_session_webhook_failed",
                "Webhook deliveries given up after every attempt",
                &self.webhook_failed,
            ),
            (
                "berth_session_webhook_retries",
                "Webhook delivery attempts retried",
                &self.webhook_retries,
            ),
            (
                "berth_session_webhook_dropped",
                "Webhook events dropped because the delivery queue was full",
                &self.webhook_dropped,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, ConstCounter::new(get(counter)));
        }
        let refusals = Family::<[(&'static str, &'static str); 1], Counter>::default();
        for (code, n) in REFUSAL_CODES.iter().zip(&self.refusals) {
            refusals
                .get_or_create(&[("code", code.as_str())])
                .inc_by(get(n));
        }
        registry.register(
            "berth_session_refusals",
            "Refused connections and frames, by error code",
            refusals,
        );
        let mut out = String::with_capacity(2048);
        // Writing into a String cannot fail.
        let _ = text::encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_refusals_by_code() {
        let m = Metrics::default();
        m.refused(ErrorCode::RoomFull);
        m.refused(ErrorCode::RoomFull);
        m.connections.fetch_add(3, Ordering::Relaxed);
        let text = m.render(2, false);
        assert!(text.contains("berth_session_refusals_total{code=\"room_full\"} 2\n"));
        assert!(text.contains("berth_session_refusals_total{code=\"bad_frame\"} 0\n"));
        assert!(text.contains("berth_session_connections 3\n"));
        assert!(text.contains("berth_session_rooms 2\n"));
        assert!(text.contains("berth_session_connections_accepted_total 0\n"));
        assert!(text.ends_with("# EOF\n"));
    }
}
