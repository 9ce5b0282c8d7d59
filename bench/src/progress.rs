//! The one-line status on stderr while a run goes (`\r`-rewritten twice a second): the phase,
//! and during a step the send and delivery rates, the p99 so far and the elapsed time.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::report::num;
use super::run::Shared;
use super::stats::Totals;

const PERIOD: Duration = Duration::from_millis(500);

/// What the status line shows.
#[derive(Clone)]
pub(crate) enum Stage {
    /// A counted setup phase (`logging in 120/1000`).
    Count {
        label: &'static str,
        done: Arc<AtomicU64>,
        total: u64,
    },
    /// Members connecting.
    Connect { shared: Arc<Shared>, total: u64 },
    /// A rate step.
    Step {
        shared: Arc<Shared>,
        index: usize,
        steps: usize,
        rate: f64,
    },
    /// Waiting for deliveries after a step, or closing.
    Other(&'static str),
}

/// The status line's printer; does nothing when disabled.
pub(crate) struct Progress {
    stage: Arc<Mutex<Stage>>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Progress {
    pub fn start(enabled: bool) -> Progress {
        let stage = Arc::new(Mutex::new(Stage::Other("starting")));
        let stop = CancellationToken::new();
        let task = enabled.then(|| tokio::spawn(print_loop(stage.clone(), stop.clone())));
        Progress { stage, stop, task }
    }

    pub fn set(&self, stage: Stage) {
        *self.stage.lock().unwrap_or_else(|e| e.into_inner()) = stage;
    }

    /// Stops printing and clears the line.
    pub async fn finish(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn print_loop(stage: Arc<Mutex<Stage>>, stop: CancellationToken) {
    let started = tokio::time::Instant::now();
    let mut last: Option<(usize, Totals, tokio::time::Instant)> = None;
    let mut ticker = tokio::time::interval(PERIOD);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => return,
        }
        let current = stage.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let elapsed = started.elapsed().as_secs_f64();
        let line = match current {
            Stage::Count { label, done, total } => {
                format!("{label} {}/{total}", done.load(Relaxed))
            }
            Stage::Connect { shared, total } => format!(
                "connecting {}/{total} ({} failed)",
                shared.settled.load(Relaxed),
                shared.failed.load(Relaxed)
            ),
            Stage::Step {
                shared,
                index,
                steps,
                rate,
            } => {
                let now = tokio::time::Instant::now();
                let totals = shared.counters.totals();
                let (sent_rate, delivered_rate) = match last {
                    Some((i, before, at)) if i == index => {
                        let d = totals.since(before);
                        let secs = (now - at).as_secs_f64().max(1e-3);
                        (d.sent as f64 / secs, d.delivered as f64 / secs)
                    }
                    _ => (0.0, 0.0),
                };
                last = Some((index, totals, now));
                let h = shared.latencies.merged(index);
                let p99 = if h.is_empty() {
                    "-".to_owned()
                } else {
                    num(h.value_at_quantile(0.99) as f64 / 1000.0)
                };
                format!(
                    "step {}/{steps} ({}/s per member): sent {}/s, delivered {}/s, p99 {p99} ms, connected {}",
                    index + 1,
                    num(rate),
                    num(sent_rate),
                    num(delivered_rate),
                    shared.connected.load(Relaxed)
                )
            }
            Stage::Other(label) => label.to_owned(),
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K[berth bench {}s] {line}",
            num(elapsed.floor())
        );
        let _ = err.flush();
    }
}
