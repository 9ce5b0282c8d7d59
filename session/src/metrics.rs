//! Process counters, rendered as Prometheus text at `GET /metrics`.
//!
//! Plain relaxed atomics: the hot path adds to them (rooms add a whole broadcast's deliveries in
//! one `fetch_add`), and a scrape reads them.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use berth_protocol::ErrorCode;

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

    /// The Prometheus text exposition; `rooms` and `draining` are read by the caller.
    pub fn render(&self, rooms: usize, draining: bool) -> String {
        let mut out = String::with_capacity(2048);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "berth_session_connections",
            "gauge",
            "Open WebSocket connections.",
            get(&self.connections),
        );
        metric(
            "berth_session_rooms",
            "gauge",
            "Rooms open on this server.",
            rooms as u64,
        );
        metric(
            "berth_session_draining",
            "gauge",
            "1 while the server drains.",
            draining as u64,
        );
        metric(
            "berth_session_connections_total",
            "counter",
            "WebSocket connections accepted.",
            get(&self.connections_total),
        );
        metric(
            "berth_session_messages_in_total",
            "counter",
            "Chat messages accepted from clients.",
            get(&self.messages_in),
        );
        metric(
            "berth_session_messages_out_total",
            "counter",
            "Frames queued to clients by rooms.",
            get(&self.messages_out),
        );
        metric(
            "berth_session_slow_consumers_total",
            "counter",
            "Connections dropped for not reading.",
            get(&self.slow_consumers),
        );
        metric(
            "berth_session_room_panics_total",
            "counter",
            "Rooms ended by a panic.",
            get(&self.room_panics),
        );
        metric(
            "berth_session_store_batches_total",
            "counter",
            "Group-commit transactions written to the store.",
            get(&self.store_batches),
        );
        metric(
            "berth_session_store_messages_total",
            "counter",
            "Messages made durable in the store.",
            get(&self.store_messages),
        );
        metric(
            "berth_session_store_failures_total",
            "counter",
            "Room appends the store refused.",
            get(&self.store_failures),
        );
        metric(
            "berth_session_handoffs_total",
            "counter",
            "Live rooms handed over by a drain.",
            get(&self.handoffs),
        );
        let name = "berth_session_refusals_total";
        let _ = writeln!(
            out,
            "# HELP {name} Refused connections and frames, by error code.\n# TYPE {name} counter"
        );
        for (code, n) in REFUSAL_CODES.iter().zip(&self.refusals) {
            let _ = writeln!(out, "{name}{{code=\"{code}\"}} {}", get(n));
        }
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
    }
}
