//! What the members measure, shared without a lock per message: one cache-line-sized slot of
//! counters per member (written only by that member), latency histograms split in shards that
//! members flush buffered samples into, and error counts by kind.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use hdrhistogram::Histogram;

/// Latencies are recorded in microseconds, up to a minute, to three significant figures.
const HIGHEST_US: u64 = 60_000_000;
/// Histograms each step's delivery latencies are spread over (by member index).
const SHARDS: usize = 16;
/// Samples a member buffers before flushing them into its shard.
pub(crate) const FLUSH_SAMPLES: usize = 256;

/// A fresh latency histogram (µs).
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("static bounds are valid")
}

/// One member's counters. Aligned to a cache line so that members on different threads never
/// share one.
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct Slot {
    /// Sends the member's schedules planned.
    pub planned: AtomicU64,
    /// Messages sent.
    pub sent: AtomicU64,
    /// Sends whose lag behind their schedule exceeded a tenth of the send interval.
    pub late: AtomicU64,
    /// Largest lag behind the send schedule, in µs.
    pub max_lag_us: AtomicU64,
    /// Deliveries the sent messages should make: for each send, the members then connected in
    /// the room (the sender included: it gets its own message back).
    pub expected: AtomicU64,
    /// `message` frames received.
    pub delivered: AtomicU64,
}

/// Sums over all members at one instant.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Totals {
    pub planned: u64,
    pub sent: u64,
    pub late: u64,
    pub expected: u64,
    pub delivered: u64,
}

impl Totals {
    pub fn since(self, before: Totals) -> Totals {
        Totals {
            planned: self.planned.saturating_sub(before.planned),
            sent: self.sent.saturating_sub(before.sent),
            late: self.late.saturating_sub(before.late),
            expected: self.expected.saturating_sub(before.expected),
            delivered: self.delivered.saturating_sub(before.delivered),
        }
    }
}

/// All members' slots.
#[derive(Debug)]
pub(crate) struct Counters {
    slots: Box<[Slot]>,
}

impl Counters {
    pub fn new(members: usize) -> Counters {
        Counters {
            slots: (0..members).map(|_| Slot::default()).collect(),
        }
    }

    pub fn slot(&self, member: usize) -> &Slot {
        &self.slots[member]
    }

    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for s in self.slots.iter() {
            t.planned += s.planned.load(Relaxed);
            t.sent += s.sent.load(Relaxed);
            t.late += s.late.load(Relaxed);
            t.expected += s.expected.load(Relaxed);
            t.delivered += s.delivered.load(Relaxed);
        }
        t
    }

    /// Largest send lag of any member so far, in µs; resets them all.
    pub fn take_max_lag_us(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.max_lag_us.swap(0, Relaxed))
            .max()
            .unwrap_or(0)
    }
}

/// Delivery latencies of each rate step, in shards.
#[derive(Debug)]
pub(crate) struct Latencies {
    steps: Vec<[Mutex<Option<Histogram<u64>>>; SHARDS]>,
}

impl Latencies {
    pub fn new(steps: usize) -> Latencies {
        Latencies {
            steps: (0..steps).map(|_| Default::default()).collect(),
        }
    }

    /// Records `samples` (step, µs) of `member`. Samples of unknown steps are ignored.
    pub fn flush(&self, member: usize, samples: &mut Vec<(u8, u32)>) {
        samples.sort_unstable_by_key(|(step, _)| *step);
        let mut rest = &samples[..];
        while let Some(&(step, _)) = rest.first() {
            let n = rest.iter().take_while(|(s, _)| *s == step).count();
            if let Some(shards) = self.steps.get(usize::from(step)) {
                let mut shard = lock(&shards[member % SHARDS]);
                let h = shard.get_or_insert_with(histogram);
                for &(_, us) in &rest[..n] {
                    h.saturating_record(u64::from(us).max(1));
                }
            }
            rest = &rest[n..];
        }
        samples.clear();
    }

    /// The merged histogram of one step so far.
    pub fn merged(&self, step: usize) -> Histogram<u64> {
        let mut all = histogram();
        if let Some(shards) = self.steps.get(step) {
            for shard in shards {
                if let Some(h) = lock(shard).as_ref() {
                    // Same bounds: cannot fail.
                    let _ = all.add(h);
                }
            }
        }
        all
    }
}

/// A histogram that many tasks record into rarely (once per connect, create, lookup).
#[derive(Debug)]
pub(crate) struct Timing(Mutex<Histogram<u64>>);

impl Default for Timing {
    fn default() -> Self {
        Timing(Mutex::new(histogram()))
    }
}

impl Timing {
    pub fn record(&self, d: std::time::Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        lock(&self.0).saturating_record(us);
    }

    pub fn snapshot(&self) -> Histogram<u64> {
        lock(&self.0).clone()
    }
}

/// Failures by kind (`connect: invalid_ticket (401)`, `closed: 1008`, …).
#[derive(Debug, Default)]
pub(crate) struct Errors(Mutex<BTreeMap<String, u64>>);

impl Errors {
    pub fn add(&self, kind: impl Into<String>) {
        *lock(&self.0).entry(kind.into()).or_default() += 1;
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        lock(&self.0).clone()
    }
}

/// A poisoned lock only means a member panicked mid-record: the numbers are still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flushed_samples_land_in_their_step() {
        let l = Latencies::new(2);
        let mut buf = vec![(1, 500), (0, 100), (1, 700), (0, 0), (9, 5)];
        l.flush(3, &mut buf);
        assert!(buf.is_empty());
        let mut more = vec![(0, 300)];
        l.flush(20, &mut more);
        let s0 = l.merged(0);
        assert_eq!(s0.len(), 3);
        assert_eq!(s0.min(), 1);
        assert!(s0.max() >= 300);
        let s1 = l.merged(1);
        assert_eq!(s1.len(), 2);
        assert!(s1.value_at_quantile(0.0) >= 500);
        assert_eq!(l.merged(7).len(), 0);
    }

    #[test]
    fn totals_sum_slots() {
        let c = Counters::new(3);
        c.slot(0).sent.fetch_add(2, Relaxed);
        c.slot(2).delivered.fetch_add(5, Relaxed);
        c.slot(1).max_lag_us.fetch_max(70, Relaxed);
        let t = c.totals();
        assert_eq!((t.sent, t.delivered), (2, 5));
        assert_eq!(c.take_max_lag_us(), 70);
        assert_eq!(c.take_max_lag_us(), 0);
        assert_eq!(
            Totals { sent: 5, ..t }.since(t),
            Totals {
                sent: 3,
                ..Totals::default()
            }
        );
    }
}
