//! [`BenchReport`]: every figure of a run, as a table for people ([`BenchReport::table`]) or
//! one JSON object for machines (`Serialize`, snake_case field names).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// `backend` (the real flow) or `direct`.
    pub mode: String,
    /// The backend URL, or the session server's WebSocket URL in direct mode.
    pub target: String,
    /// This run's id (in user names and message stamps).
    pub run_id: String,
    pub rooms: u32,
    pub members_per_room: u32,
    pub senders_per_room: u32,
    /// Message text bytes.
    pub size: usize,
    /// Seconds each rate step sends.
    pub step_secs: f64,
    pub ramp_up_secs: f64,
    pub setup: SetupReport,
    /// One per `--rate` value, in order.
    pub steps: Vec<StepReport>,
    /// Session servers in the fleet after the connects (not dead), read from the scheduler;
    /// `None` when it could not be read (direct mode, or no `--scheduler-url`/secret).
    pub servers: Option<u32>,
    /// Why `servers` is missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub servers_note: Option<String>,
    /// Members still connected when the last step ended.
    pub members_connected_at_end: u64,
    /// Failures by kind (`connect: room_full (409)`, `closed: 1008`, …).
    pub errors: BTreeMap<String, u64>,
    /// The run was cut short (Ctrl-C).
    pub interrupted: bool,
    pub generator: GeneratorReport,
}

/// The setup phases: logins, room creates, lookups and connects.
#[derive(Debug, Clone, Serialize)]
pub struct SetupReport {
    /// Users logged in (backend mode).
    pub logins: u64,
    pub login_secs: f64,
    /// Rooms created (backend mode) or filled (direct mode: each room opens on its first
    /// connection).
    pub rooms_created: u64,
    /// Wall time of the create phase.
    pub create_secs: f64,
    pub creates_per_sec: f64,
    pub create_latency: Option<LatencySummary>,
    pub lookup_latency: Option<LatencySummary>,
    pub members_connected: u64,
    pub members_failed: u64,
    /// Wall time of the connect phase (ramp-up included).
    pub connect_secs: f64,
    /// TCP connect, upgrade and `welcome`.
    pub connect_latency: Option<LatencySummary>,
}

/// One rate step.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// Messages per second per sending member.
    pub rate_per_member: f64,
    /// Sends per second the schedule asked for (connected senders × rate).
    pub target_sends_per_sec: f64,
    pub sent: u64,
    pub sends_per_sec: f64,
    /// Sends that went out more than a tenth of their interval behind schedule.
    pub late_sends: u64,
    /// late_sends ÷ sent, in percent.
    pub late_percent: f64,
    /// Largest lag behind the send schedule, in ms.
    pub max_send_lag_ms: f64,
    /// How far the generator fell behind its target send rate (sends planned but not made by
    /// the end of the step), in percent; `None` when it was less than 1% short.
    pub fell_behind_percent: Option<f64>,
    /// The generator could not keep its pace: it fell behind, or more than 10% of its sends
    /// were late. Its figures are then a floor, not the server's limit.
    pub generator_behind: bool,
    /// Deliveries the sent messages should have made (sent × members present at each send).
    pub expected_deliveries: u64,
    /// `message` frames received by all members.
    pub delivered: u64,
    /// Deliveries per second over the window.
    pub delivered_per_sec: f64,
    /// delivered ÷ expected.
    pub delivery_ratio: f64,
    /// From the step's start until the last expected delivery (or the drain timeout).
    pub window_secs: f64,
    /// Every expected delivery arrived before the drain timeout.
    pub drained: bool,
    /// Send to receive, over every receiver of every stamped message of this step.
    pub latency: Option<LatencySummary>,
    /// CPU time the generator used during the step, in percent of one core.
    pub generator_cpu_percent: Option<f64>,
    /// CPU time the server (`--server-pid`) used during the step, in percent of one core.
    pub server_cpu_percent: Option<f64>,
    /// CPU time the server used during the step, in seconds (10 ms resolution).
    pub server_cpu_secs: Option<f64>,
    /// Server CPU time per delivery, in microseconds: the server's cost of a delivery whether
    /// or not the generator kept up, so the fair figure when both share a small machine.
    pub server_cpu_us_per_delivery: Option<f64>,
    /// The server's resident memory at the end of the step, in MiB.
    pub server_rss_mib: Option<f64>,
    /// How busy each core of the machine was during the step (interrupts included), in
    /// percent; empty where `/proc/stat` cannot be read.
    pub core_busy_percent: Vec<f64>,
}

/// Percentiles of a histogram, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    /// The summary of a µs histogram; `None` when it is empty.
    pub(crate) fn from_us(h: &Histogram<u64>) -> Option<LatencySummary> {
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(LatencySummary {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        })
    }

    fn line(&self) -> String {
        format!(
            "p50 {} · p90 {} · p99 {} · p99.9 {} · max {} ms (n={})",
            num(self.p50_ms),
            num(self.p90_ms),
            num(self.p99_ms),
            num(self.p999_ms),
            num(self.max_ms),
            self.count
        )
    }
}

/// What the load generator itself used.
#[derive(Debug, Clone, Serialize)]
pub struct GeneratorReport {
    /// Tokio worker threads (1 when pinned to one core).
    pub worker_threads: usize,
    /// CPU time over the whole run, in percent of one core.
    pub cpu_percent: Option<f64>,
    /// Peak resident memory (VmHWM), in MiB.
    pub peak_rss_mib: Option<f64>,
}

impl BenchReport {
    /// The run was worth reporting: some member connected, or (create-only) some room exists.
    pub fn is_useful(&self) -> bool {
        self.setup.members_connected > 0
            || (self.members_per_room == 0 && self.setup.rooms_created > 0)
    }

    /// One line per step where the generator could not keep up, for people.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, s) in self.steps.iter().enumerate() {
            if let Some(p) = s.fell_behind_percent {
                out.push(format!(
                    "warning: step {} ({}/s per member): the load generator fell behind its target send rate by {}% (sent {} of {} planned; max lag {} ms); the figures are a floor",
                    i + 1,
                    num(s.rate_per_member),
                    num(p),
                    s.sent,
                    num(s.target_sends_per_sec * self.step_secs),
                    num(s.max_send_lag_ms)
                ));
            } else if s.generator_behind {
                out.push(format!(
                    "warning: step {} ({}/s per member): the load generator kept its send rate but {}% of its sends were late (max lag {} ms)",
                    i + 1,
                    num(s.rate_per_member),
                    num(s.late_percent),
                    num(s.max_send_lag_ms)
                ));
            }
            if !s.drained && s.expected_deliveries > 0 {
                out.push(format!(
                    "warning: step {}: {} of {} expected deliveries arrived before the drain timeout",
                    i + 1,
                    s.delivered,
                    s.expected_deliveries
                ));
            }
        }
        out
    }

    /// A two-column table (metric, value).
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut row = |k: &str, v: String| rows.push((k.to_owned(), v));
        row("mode", format!("{} {}", self.mode, self.target));
        row(
            "load",
            format!(
                "{} rooms x {} members ({} sending), {} B messages, {} s per step, ramp-up {} s",
                self.rooms,
                self.members_per_room,
                self.senders_per_room,
                self.size,
                num(self.step_secs),
                num(self.ramp_up_secs)
            ),
        );
        let s = &self.setup;
        if self.mode == "backend" {
            row("logins", format!("{} in {} s", s.logins, num(s.login_secs)));
            row(
                "rooms created",
                format!(
                    "{} in {} s = {}/s",
                    s.rooms_created,
                    num(s.create_secs),
                    num(s.creates_per_sec)
                ),
            );
            row("create latency", summary(&s.create_latency));
            row("lookup latency", summary(&s.lookup_latency));
        }
        if self.members_per_room > 0 {
            row(
                "members connected",
                format!(
                    "{} ({} failed) in {} s",
                    s.members_connected,
                    s.members_failed,
                    num(s.connect_secs)
                ),
            );
            row("connect latency", summary(&s.connect_latency));
        }
        for (i, st) in self.steps.iter().enumerate() {
            let p = format!("step {} ({}/s per member)", i + 1, num(st.rate_per_member));
            row(
                &format!("{p} sent"),
                format!(
                    "{} = {}/s (target {}/s){}",
                    st.sent,
                    num(st.sends_per_sec),
                    num(st.target_sends_per_sec),
                    match (st.fell_behind_percent, st.generator_behind) {
                        (Some(b), _) => format!(", FELL BEHIND by {}%", num(b)),
                        (None, true) => format!(", {}% late", num(st.late_percent)),
                        (None, false) => String::new(),
                    }
                ),
            );
            row(
                &format!("{p} delivered"),
                format!(
                    "{} of {} = {}/s ({}%) in {} s{}",
                    st.delivered,
                    st.expected_deliveries,
                    num(st.delivered_per_sec),
                    num(st.delivery_ratio * 100.0),
                    num(st.window_secs),
                    if st.drained { "" } else { ", not drained" }
                ),
            );
            row(&format!("{p} latency"), summary(&st.latency));
            let cpu = |c: Option<f64>| c.map(|c| format!("{}%", num(c)));
            let usage = [
                cpu(st.generator_cpu_percent).map(|c| format!("generator {c}")),
                cpu(st.server_cpu_percent).map(|c| format!("server {c}")),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>();
            if !usage.is_empty() {
                row(
                    &format!("{p} cpu"),
                    format!("{} of a core", usage.join(", ")),
                );
            }
            if let Some(us) = st.server_cpu_us_per_delivery {
                row(
                    &format!("{p} server cost"),
                    format!("{} µs of CPU per delivery", num(us)),
                );
            }
            if !st.core_busy_percent.is_empty() {
                let cores: Vec<String> = st
                    .core_busy_percent
                    .iter()
                    .enumerate()
                    .map(|(i, b)| format!("cpu{i} {}%", num(*b)))
                    .collect();
                row(&format!("{p} cores busy"), cores.join(", "));
            }
            if let Some(rss) = st.server_rss_mib {
                row(&format!("{p} server rss"), format!("{} MiB", num(rss)));
            }
        }
        row(
            "session servers",
            match (self.servers, &self.servers_note) {
                (Some(n), _) => n.to_string(),
                (None, Some(note)) => format!("n/a ({note})"),
                (None, None) => "n/a".into(),
            },
        );
        row(
            "connected at end",
            self.members_connected_at_end.to_string(),
        );
        if self.errors.is_empty() {
            row("errors", "none".into());
        } else {
            for (kind, n) in &self.errors {
                row(&format!("error {kind}"), n.to_string());
            }
        }
        let g = &self.generator;
        row(
            "generator",
            format!(
                "{} worker threads, cpu {}, peak rss {}",
                g.worker_threads,
                g.cpu_percent
                    .map(|c| format!("{}% of a core", num(c)))
                    .unwrap_or_else(|| "n/a".into()),
                g.peak_rss_mib
                    .map(|m| format!("{} MiB", num(m)))
                    .unwrap_or_else(|| "n/a".into())
            ),
        );
        if self.interrupted {
            row(
                "interrupted",
                "yes (figures cover the part that ran)".into(),
            );
        }

        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        let _ = writeln!(out, "{:width$}  value", "metric");
        let _ = writeln!(out, "{:-<width$}  {:-<5}", "", "");
        for (k, v) in &rows {
            let _ = writeln!(out, "{k:width$}  {v}");
        }
        for w in self.warnings() {
            let _ = writeln!(out, "{w}");
        }
        out
    }
}

fn summary(s: &Option<LatencySummary>) -> String {
    s.as_ref()
        .map(LatencySummary::line)
        .unwrap_or_else(|| "n/a".into())
}

/// A figure with about three significant digits, without noise.
pub(crate) fn num(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    let a = x.abs();
    if a >= 100.0 || x == x.trunc() && a < 1e15 {
        format!("{}", x.round() as i64)
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(num(1234.567), "1235");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(1.2345), "1.23");
        assert_eq!(num(0.01234), "0.012");
        assert_eq!(num(3.0), "3");
        assert_eq!(num(f64::NAN), "n/a");
    }

    #[test]
    fn summary_of_a_histogram_is_ordered() {
        let mut h = crate::stats::histogram();
        assert!(LatencySummary::from_us(&h).is_none());
        for us in 1..=1000 {
            h.record(us * 10).unwrap();
        }
        let s = LatencySummary::from_us(&h).unwrap();
        assert_eq!(s.count, 1000);
        assert!(s.p50_ms > 4.9 && s.p50_ms < 5.1, "{s:?}");
        assert!(s.p50_ms <= s.p90_ms && s.p90_ms <= s.p99_ms && s.p99_ms <= s.p999_ms);
        assert!(s.p999_ms <= s.max_ms && (s.max_ms - 10.0).abs() < 0.02);
    }
}
