//! Counters, gauges and latency histograms (the Prometheus project's `prometheus-client`),
//! exposed in the OpenMetrics text format by `GET /metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use berth_protocol::cluster::ServerState;
use prometheus_client::encoding::text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry as MetricRegistry;

use berth_store::control::FleetCounts;

use crate::directory::Directory;
use crate::registry::Registry;

/// The `Content-Type` of [`Metrics::render`]'s answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the placement latency buckets.
const PLACEMENT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upper bounds (seconds) of the spawn latency buckets.
const SPAWN_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Server states, each always shown (with 0 when no server is in it).
const STATES: [ServerState; 4] = [
    ServerState::Starting,
    ServerState::Ready,
    ServerState::Draining,
    ServerState::Dead,
];

/// A histogram of durations, in seconds, with its count readable (the fleet loop watches
/// registrations through it).
pub struct LatencyHistogram {
    histogram: Histogram,
    count: AtomicU64,
}

impl LatencyHistogram {
    fn new(bounds: &[f64]) -> Self {
        LatencyHistogram {
            histogram: Histogram::new(bounds.iter().copied()),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        self.histogram.observe(d.as_secs_f64());
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Why a session server that had registered stopped being part of the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCause {
    /// Its process exited with status 0 without leaving first.
    Clean,
    /// Its process exited with a non-zero status.
    Error,
    /// Its process was ended by a signal nobody here sent (SIGKILL by the OOM killer, say).
    Signal,
    /// It stayed silent while the scheduler was running and reading: declared dead.
    Silence,
}

impl ExitCause {
    pub const ALL: [ExitCause; 4] = [
        ExitCause::Clean,
        ExitCause::Error,
        ExitCause::Signal,
        ExitCause::Silence,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExitCause::Clean => "clean",
            ExitCause::Error => "error",
            ExitCause::Signal => "signal",
            ExitCause::Silence => "silence",
        }
    }
}

/// Everything `/metrics` shows. Counters and histograms move as things happen; the gauges are
/// read from the registry and directory on each scrape.
pub struct Metrics {
    pub placements: Counter,
    pub replacements: Counter,
    pub spawns: Counter,
    pub spawn_failures: Counter,
    pub no_capacity: Counter,
    pub rate_limited: Counter,
    pub servers_declared_dead: Counter,
    /// Times the scheduler found its own loop had stalled and gave servers a grace period.
    pub stalls: Counter,
    /// Placed rooms nobody opened in time: their slots went back, the rooms dormant.
    pub unclaimed_rooms: Counter,
    /// Registered servers that exited or were declared dead, by [`ExitCause`].
    server_exits: Family<[(&'static str, &'static str); 1], Counter>,
    pub placement_latency: LatencyHistogram,
    pub spawn_latency: LatencyHistogram,
    servers: Family<[(&'static str, &'static str); 1], Gauge>,
    free_room_slots: Gauge,
    rooms: Gauge,
    orphaned_rooms: Gauge,
    registry: MetricRegistry,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = MetricRegistry::default();
        let servers = Family::default();
        registry.register(
            "berth_scheduler_servers",
            "Session servers by state",
            servers.clone(),
        );
        let gauge = |registry: &mut MetricRegistry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let free_room_slots = gauge(
            &mut registry,
            "berth_scheduler_free_room_slots",
            "Free room slots on ready servers",
        );
        let rooms = gauge(
            &mut registry,
            "berth_scheduler_rooms",
            "Rooms in the directory",
        );
        let orphaned_rooms = gauge(
            &mut registry,
            "berth_scheduler_orphaned_rooms",
            "Rooms whose server died, waiting to be re-placed",
        );
        // Counter names get their `_total` suffix from the encoder.
        let counter = |registry: &mut MetricRegistry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let placements = counter(
            &mut registry,
            "berth_scheduler_placements",
            "Rooms placed (new rooms)",
        );
        let replacements = counter(
            &mut registry,
            "berth_scheduler_replacements",
            "Orphaned rooms re-placed on lookup",
        );
        let spawns = counter(
            &mut registry,
            "berth_scheduler_spawns",
            "Session-server processes started",
        );
        let spawn_failures = counter(
            &mut registry,
            "berth_scheduler_spawn_failures",
            "Spawns that failed to start, register in time, or exited before registering",
        );
        let no_capacity = counter(
            &mut registry,
            "berth_scheduler_no_capacity",
            "Creates or lookups answered 503 no_capacity",
        );
        let rate_limited = counter(
            &mut registry,
            "berth_scheduler_rate_limited",
            "Creates answered 429 rate_limited",
        );
        let servers_declared_dead = counter(
            &mut registry,
            "berth_scheduler_servers_declared_dead",
            "Servers declared dead after missing heartbeats",
        );
        let stalls = counter(
            &mut registry,
            "berth_scheduler_stalls",
            "Stalls of the scheduler's own loop, after which servers got a grace period",
        );
        let unclaimed_rooms = counter(
            &mut registry,
            "berth_scheduler_unclaimed_rooms",
            "Placed rooms nobody opened in time (their slots were given back)",
        );
        let server_exits = Family::<[(&'static str, &'static str); 1], Counter>::default();
        for cause in ExitCause::ALL {
            // Every cause shown from the start, at 0.
            drop(server_exits.get_or_create(&[("cause", cause.as_str())]));
        }
        registry.register(
            "berth_scheduler_server_exits",
            "Registered session servers that exited or were declared dead, by cause",
            server_exits.clone(),
        );
        let placement_latency = LatencyHistogram::new(PLACEMENT_BUCKETS);
        registry.register(
            "berth_scheduler_placement_seconds",
            "Time to place a room, including any wait for a spawn",
            placement_latency.histogram.clone(),
        );
        let spawn_latency = LatencyHistogram::new(SPAWN_BUCKETS);
        registry.register(
            "berth_scheduler_spawn_seconds",
            "Time from starting a session server to its registration",
            spawn_latency.histogram.clone(),
        );
        Metrics {
            placements,
            replacements,
            spawns,
            spawn_failures,
            no_capacity,
            rate_limited,
            servers_declared_dead,
            stalls,
            unclaimed_rooms,
            server_exits,
            placement_latency,
            spawn_latency,
            servers,
            free_room_slots,
            rooms,
            orphaned_rooms,
            registry,
        }
    }
}

/// Adds one to a counter.
pub fn inc(counter: &Counter) {
    counter.inc();
}

fn gauge_u64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Metrics {
    /// Counts a server exit or death.
    pub fn server_exit(&self, cause: ExitCause) {
        self.server_exits
            .get_or_create(&[("cause", cause.as_str())])
            .inc();
    }

    /// The OpenMetrics text exposition ([`CONTENT_TYPE`]), with the gauges read now from the
    /// in-memory registry and directory.
    pub fn render(&self, registry: &Registry, directory: &Directory) -> String {
        let servers = registry.snapshot();
        let counts = FleetCounts {
            servers: STATES
                .iter()
                .map(|&state| {
                    let n = servers.iter().filter(|s| s.state() == state).count();
                    (state, n as u64)
                })
                .collect(),
            free_slots: servers
                .iter()
                .filter(|s| s.accepts_rooms())
                .map(|s| u64::from(s.free_slots()))
                .sum(),
            rooms: directory.len() as u64,
            orphaned_rooms: directory.orphaned_count() as u64,
        };
        self.render_counts(&counts)
    }

    /// The exposition with the gauges taken from `counts` (the shared state of replicas).
    pub fn render_counts(&self, counts: &FleetCounts) -> String {
        for state in STATES {
            let n = counts
                .servers
                .iter()
                .filter(|(s, _)| *s == state)
                .map(|(_, n)| *n)
                .sum::<u64>();
            self.servers
                .get_or_create(&[("state", state.as_str())])
                .set(gauge_u64(n));
        }
        self.free_room_slots.set(gauge_u64(counts.free_slots));
        self.rooms.set(gauge_u64(counts.rooms));
        self.orphaned_rooms.set(gauge_u64(counts.orphaned_rooms));
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.placement_latency.observe(Duration::from_micros(100));
        m.placement_latency.observe(Duration::from_millis(3));
        m.placement_latency.observe(Duration::from_secs(60));
        inc(&m.placements);
        let text = m.render(&Registry::default(), &Directory::default());
        assert!(
            text.contains("berth_scheduler_placement_seconds_bucket{le=\"0.0005\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("berth_scheduler_placement_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(text.contains("berth_scheduler_placement_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("berth_scheduler_placement_seconds_count 3\n"));
        assert!(text.contains("berth_scheduler_placements_total 1\n"));
        assert!(text.contains("berth_scheduler_servers{state=\"ready\"} 0\n"));
        m.server_exit(ExitCause::Signal);
        let text = m.render(&Registry::default(), &Directory::default());
        assert!(text.contains("berth_scheduler_server_exits_total{cause=\"signal\"} 1\n"));
        assert!(text.contains("berth_scheduler_server_exits_total{cause=\"silence\"} 0\n"));
        assert!(text.contains("# TYPE berth_scheduler_placements counter\n"));
        assert!(text.ends_with("# EOF\n"));
    }
}
