//! Counters and latency histograms, rendered as Prometheus text by `GET /metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use berth_protocol::cluster::ServerState;

use crate::directory::Directory;
use crate::registry::Registry;

/// Upper bounds (seconds) of the placement latency buckets.
const PLACEMENT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Upper bounds (seconds) of the spawn latency buckets.
const SPAWN_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// A fixed-bucket histogram of durations.
pub struct Histogram {
    bounds: &'static [f64],
    /// Non-cumulative counts per bucket; the last one is `+Inf`.
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = self
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {}", self.count());
    }
}

/// Everything `/metrics` shows besides the live gauges read from the registry and directory.
pub struct Metrics {
    pub placements: AtomicU64,
    pub replacements: AtomicU64,
    pub spawns: AtomicU64,
    pub spawn_failures: AtomicU64,
    pub no_capacity: AtomicU64,
    pub rate_limited: AtomicU64,
    pub servers_declared_dead: AtomicU64,
    pub placement_latency: Histogram,
    pub spawn_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            placements: AtomicU64::new(0),
            replacements: AtomicU64::new(0),
            spawns: AtomicU64::new(0),
            spawn_failures: AtomicU64::new(0),
            no_capacity: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            servers_declared_dead: AtomicU64::new(0),
            placement_latency: Histogram::new(PLACEMENT_BUCKETS),
            spawn_latency: Histogram::new(SPAWN_BUCKETS),
        }
    }
}

/// Adds one to a counter.
pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self, registry: &Registry, directory: &Directory) -> String {
        let mut out = String::with_capacity(4096);
        let servers = registry.snapshot();
        let _ = writeln!(
            out,
            "# HELP berth_scheduler_servers Session servers by state.\n# TYPE berth_scheduler_servers gauge"
        );
        for state in [
            ServerState::Starting,
            ServerState::Ready,
            ServerState::Draining,
            ServerState::Dead,
        ] {
            let n = servers.iter().filter(|s| s.state() == state).count();
            let _ = writeln!(
                out,
                "berth_scheduler_servers{{state=\"{}\"}} {n}",
                state.as_str()
            );
        }
        let slots: u64 = servers
            .iter()
            .filter(|s| s.accepts_rooms())
            .map(|s| u64::from(s.free_slots()))
            .sum();
        gauge(
            &mut out,
            "berth_scheduler_free_room_slots",
            "Free room slots on ready servers.",
            slots,
        );
        gauge(
            &mut out,
            "berth_scheduler_rooms",
            "Rooms in the directory.",
            directory.len() as u64,
        );
        gauge(
            &mut out,
            "berth_scheduler_orphaned_rooms",
            "Rooms whose server died, waiting to be re-placed.",
            directory.orphaned_count() as u64,
        );
        let counters = [
            (
                "berth_scheduler_placements_total",
                "Rooms placed (new rooms).",
                &self.placements,
            ),
            (
                "berth_scheduler_replacements_total",
                "Orphaned rooms re-placed on lookup.",
                &self.replacements,
            ),
            (
                "berth_scheduler_spawns_total",
                "Session-server processes started.",
                &self.spawns,
            ),
            (
                "berth_scheduler_spawn_failures_total",
                "Spawns that failed to start, register in time, or exited before registering.",
                &self.spawn_failures,
            ),
            (
                "berth_scheduler_no_capacity_total",
                "Creates or lookups answered 503 no_capacity.",
                &self.no_capacity,
            ),
            (
                "berth_scheduler_rate_limited_total",
                "Creates answered 429 rate_limited.",
                &self.rate_limited,
            ),
            (
                "berth_scheduler_servers_declared_dead_total",
                "Servers declared dead after missing heartbeats.",
                &self.servers_declared_dead,
            ),
        ];
        for (name, help, counter) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        self.placement_latency.render(
            &mut out,
            "berth_scheduler_placement_seconds",
            "Time to place a room, including any wait for a spawn.",
        );
        self.spawn_latency.render(
            &mut out,
            "berth_scheduler_spawn_seconds",
            "Time from starting a session server to its registration.",
        );
        out
    }
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
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
    }
}
