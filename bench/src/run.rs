//! The coordinator of a run: setup, members, rate steps, report. Members learn the phase from a
//! `watch` channel ([`Phase`]); the coordinator reads their counters ([`Shared`]) to decide when
//! a step's deliveries are in and to compute its figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::member::{self, MemberPlan};
use super::options::{BenchOptions, Fleet, Target};
use super::progress::{Progress, Stage};
use super::report::{BenchReport, GeneratorReport, LatencySummary, SetupReport, StepReport};
use super::setup::{self, CreatedRoom};
use super::stats::{Counters, Errors, Latencies, Timing};
use super::ticket::TicketMinter;
use super::{BenchError, fleet, stamp, usage};
use berth::{Backend, Session};

/// How long members get to close their connections at the end.
const CLOSE_WAIT: Duration = Duration::from_secs(10);
/// How often the coordinator polls the members' counters.
const POLL: Duration = Duration::from_millis(10);
/// A step that sent this much less than it planned fell behind its target rate.
const SHORTFALL: f64 = 0.01;
/// A step with this share of late sends (each more than a tenth of its interval behind
/// schedule) could not keep its pace, even if it caught up.
const LATE_SHARE: f64 = 0.10;
/// Delay between announcing a step and its start, so every member hears of it in time.
const STEP_LEAD: Duration = Duration::from_millis(20);

/// What the members are doing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Phase {
    /// Connecting, between steps, or draining: read, do not send.
    Idle,
    /// Send (senders only) at `rate` per second from `start` until `end`.
    Step {
        index: u8,
        start: Instant,
        end: Instant,
        rate: f64,
    },
    /// Close and stop.
    Done,
}

/// How members get their tickets.
pub(crate) enum Access {
    Backend {
        backend: Backend,
        /// Per member.
        sessions: Vec<Option<Session>>,
        /// Per room.
        rooms: Vec<Option<CreatedRoom>>,
    },
    Direct {
        minter: TicketMinter,
        url: String,
        room_offset: u32,
    },
}

/// What the coordinator and all members share.
pub(crate) struct Shared {
    pub run: u32,
    pub run_prefix: String,
    /// Finds `"text":"b:<run>:`, how a stamped message's text starts inside a frame.
    pub text_marker: memchr::memmem::Finder<'static>,
    /// The instant message stamps count from.
    pub base: std::time::Instant,
    pub size: usize,
    pub access: Access,
    pub counters: Counters,
    pub latencies: Latencies,
    pub errors: Arc<Errors>,
    pub connect_latency: Timing,
    pub lookup_latency: Timing,
    /// Members connected per room right now.
    pub room_members: Box<[AtomicU32]>,
    pub connected: AtomicU64,
    pub senders_connected: AtomicU64,
    /// Members whose connect attempt is over (connected or failed).
    pub settled: AtomicU64,
    pub failed: AtomicU64,
    pub connect_permits: Semaphore,
    /// Bound on one connection's TCP connect, upgrade and `welcome`.
    pub connect_timeout: Duration,
}

impl Shared {
    /// Nanoseconds since `base`: the stamp of a message sent now.
    pub fn nanos(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// Member `i`'s username: `bench-<run>-<i>` (at most 24 characters).
    pub fn username(&self, i: usize) -> String {
        username(self.run, i)
    }
}

fn username(run: u32, i: usize) -> String {
    format!("bench-{run:08x}-{i}")
}

/// Runs the whole benchmark, phase by phase: set-up (logins and creates, or a ticket minter),
/// connect the members, the rate steps, close; see [`super::run_until`].
pub(crate) async fn run(
    options: BenchOptions,
    shutdown: CancellationToken,
) -> Result<BenchReport, BenchError> {
    options.validate()?;
    let run_id: u32 = rand::random();
    let base = std::time::Instant::now();
    let cpu_start = usage::cpu_time();
    let progress = Progress::start(options.progress);
    let errors = Arc::new(Errors::default());

    let (access, mut setup) = set_up(&options, run_id, &errors, &progress, &shutdown).await?;
    let shared = Arc::new(Shared::new(&options, run_id, base, access, errors.clone()));
    let members = connect_members(&shared, &options, &mut setup, &progress, &shutdown).await;
    let mut interrupted = members.interrupted;

    let http = reqwest::Client::new();
    let fleet = match &options.target {
        Target::Backend { fleet, .. } => fleet.as_ref(),
        Target::Direct(_) => None,
    };
    let (mut servers, servers_note) = count_servers(&http, &options.target, fleet).await;

    let (mut steps, cut) = if options.members > 0 && setup.members_connected > 0 {
        run_steps(
            &shared,
            &members.phase,
            &options,
            interrupted,
            &shutdown,
            &progress,
        )
        .await
    } else {
        (Vec::new(), false)
    };
    interrupted |= cut;
    if let (Some(f), Some(n)) = (fleet, servers) {
        // The fleet may have grown while members connected; report the larger count.
        if let Ok(now) = fleet::server_count(&http, f).await {
            servers = Some(n.max(now));
        }
    }

    let connected_at_end = shared.connected.load(Relaxed);
    close_members(&shared, members, progress, &mut steps).await;

    let wall = base.elapsed();
    let (mode, target) = match &options.target {
        Target::Backend { url, .. } => ("backend", url.clone()),
        Target::Direct(d) => ("direct", d.url.clone()),
    };
    Ok(BenchReport {
        mode: mode.to_owned(),
        target,
        run_id: format!("{run_id:08x}"),
        rooms: options.rooms,
        members_per_room: options.members,
        senders_per_room: options.senders_per_room(),
        size: options.size,
        step_secs: options.duration.as_secs_f64(),
        ramp_up_secs: options.ramp_up.as_secs_f64(),
        setup,
        steps,
        servers,
        servers_note,
        members_connected_at_end: connected_at_end,
        errors: errors.snapshot(),
        interrupted,
        generator: GeneratorReport {
            worker_threads: tokio::runtime::Handle::current().metrics().num_workers(),
            cpu_percent: usage::cpu_percent(cpu_start, usage::cpu_time(), wall),
            peak_rss_mib: usage::peak_rss_mib(),
        },
    })
}

impl Shared {
    fn new(
        options: &BenchOptions,
        run_id: u32,
        base: std::time::Instant,
        access: Access,
        errors: Arc<Errors>,
    ) -> Self {
        let rooms = options.rooms as usize;
        Shared {
            run: run_id,
            run_prefix: stamp::run_prefix(run_id),
            text_marker: memchr::memmem::Finder::new(&format!(
                "{}{}",
                member::TEXT_KEY,
                stamp::run_prefix(run_id)
            ))
            .into_owned(),
            base,
            size: options.size,
            access,
            counters: Counters::new(rooms * options.members as usize),
            latencies: Latencies::new(options.rates.len()),
            errors,
            connect_latency: Timing::default(),
            lookup_latency: Timing::default(),
            room_members: (0..rooms).map(|_| AtomicU32::new(0)).collect(),
            connected: AtomicU64::new(0),
            senders_connected: AtomicU64::new(0),
            settled: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            connect_permits: Semaphore::new(options.connect_concurrency),
            connect_timeout: options.connect_timeout,
        }
    }
}

/// Set-up: through a backend, log every member in and create the rooms (timing both); in
/// direct mode, load the ticket key. Fills the login and create figures of the report.
async fn set_up(
    options: &BenchOptions,
    run_id: u32,
    errors: &Errors,
    progress: &Progress,
    shutdown: &CancellationToken,
) -> Result<(Access, SetupReport), BenchError> {
    let rooms = options.rooms as usize;
    let mut setup = SetupReport {
        logins: 0,
        login_secs: 0.0,
        rooms_created: 0,
        create_secs: 0.0,
        creates_per_sec: 0.0,
        create_latency: None,
        lookup_latency: None,
        members_connected: 0,
        members_failed: 0,
        connect_secs: 0.0,
        connect_latency: None,
    };
    let access = match &options.target {
        Target::Backend { url, .. } => {
            let backend = Backend::new(url.clone());
            // One user per member; with --members 0, one creator per room.
            let per_room = (options.members as usize).max(1);
            let logins = tokio::select! {
                l = setup::login_all(
                    &backend,
                    rooms * per_room,
                    |i| username(run_id, i),
                    options.create_concurrency,
                    errors,
                    progress,
                ) => l,
                () = shutdown.cancelled() => return Err(BenchError::Interrupted),
            };
            setup.logins = logins.sessions.iter().filter(|s| s.is_some()).count() as u64;
            setup.login_secs = logins.elapsed.as_secs_f64();
            let sessions = logins.sessions;
            let create_latency = Timing::default();
            let creates = tokio::select! {
                c = setup::create_all(
                    &backend,
                    rooms,
                    |r| sessions[r * per_room].clone(),
                    options.create_concurrency,
                    &create_latency,
                    errors,
                    progress,
                ) => c,
                () = shutdown.cancelled() => return Err(BenchError::Interrupted),
            };
            setup.rooms_created = creates.rooms.iter().filter(|r| r.is_some()).count() as u64;
            setup.create_secs = creates.elapsed.as_secs_f64();
            setup.creates_per_sec = setup.rooms_created as f64 / setup.create_secs.max(1e-9);
            setup.create_latency = LatencySummary::from_us(&create_latency.snapshot());
            Access::Backend {
                backend,
                sessions,
                rooms: creates.rooms,
            }
        }
        Target::Direct(d) => {
            setup.rooms_created = rooms as u64;
            Access::Direct {
                minter: TicketMinter::from_pem_file(&d.ticket_key, &d.server_id)?,
                url: d.url.clone(),
                room_offset: d.room_offset,
            }
        }
    };
    Ok((access, setup))
}

/// The members' tasks and the channel that tells them the phase.
struct Members {
    phase: watch::Sender<Phase>,
    tracker: TaskTracker,
    /// Stopped (Ctrl-C) while they connected.
    interrupted: bool,
}

/// Connect: starts every member, their connects spread over the ramp-up, and waits until each
/// has connected or failed. Fills the connect and lookup figures of the report.
async fn connect_members(
    shared: &Arc<Shared>,
    options: &BenchOptions,
    setup: &mut SetupReport,
    progress: &Progress,
    shutdown: &CancellationToken,
) -> Members {
    let members = options.members as usize;
    let total = options.rooms as usize * members;
    let senders = options.senders_per_room();
    let (phase_tx, phase_rx) = watch::channel(Phase::Idle);
    let tracker = TaskTracker::new();
    let connect_started = Instant::now();
    let ramp_start = connect_started + Duration::from_millis(10);
    progress.set(Stage::Connect {
        shared: shared.clone(),
        total: total as u64,
    });
    for index in 0..total {
        let plan = MemberPlan {
            index,
            room: index / members,
            seat: (index % members) as u32,
            sender: ((index % members) as u32) < senders,
            bind: (!options.bind_ips.is_empty())
                .then(|| options.bind_ips[index % options.bind_ips.len()]),
            offset: options.ramp_up.mul_f64(index as f64 / total as f64),
        };
        tracker.spawn(member::run(
            shared.clone(),
            plan,
            phase_rx.clone(),
            ramp_start,
        ));
    }
    tracker.close();
    let mut interrupted = false;
    while shared.settled.load(Relaxed) < total as u64 {
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = shutdown.cancelled() => { interrupted = true; break; }
        }
    }
    setup.connect_secs = connect_started.elapsed().as_secs_f64();
    setup.members_connected = shared.connected.load(Relaxed);
    setup.members_failed = shared.failed.load(Relaxed);
    setup.connect_latency = LatencySummary::from_us(&shared.connect_latency.snapshot());
    setup.lookup_latency = LatencySummary::from_us(&shared.lookup_latency.snapshot());
    Members {
        phase: phase_tx,
        tracker,
        interrupted,
    }
}

/// The session servers the run needed (from the scheduler, when it can be asked), or why the
/// report has no figure.
async fn count_servers(
    http: &reqwest::Client,
    target: &Target,
    fleet: Option<&Fleet>,
) -> (Option<u32>, Option<String>) {
    match (target, fleet) {
        (Target::Direct(_), _) => (None, Some("direct mode: one server".to_owned())),
        (_, None) => (
            None,
            Some("give --scheduler-url and the cluster secret to read it".to_owned()),
        ),
        (_, Some(f)) => match fleet::server_count(http, f).await {
            Ok(n) => (Some(n), None),
            Err(e) => (None, Some(format!("scheduler: {e}"))),
        },
    }
}

/// Measure: runs the rate steps one after the other on the same connections, until the last,
/// an interruption, or (with `until_saturated`) the first step the server could not keep up
/// with. Also says whether the run was interrupted.
async fn run_steps(
    shared: &Arc<Shared>,
    phase: &watch::Sender<Phase>,
    options: &BenchOptions,
    mut interrupted: bool,
    shutdown: &CancellationToken,
    progress: &Progress,
) -> (Vec<StepReport>, bool) {
    let mut steps = Vec::new();
    for (index, &rate) in options.rates.iter().enumerate() {
        if interrupted {
            break;
        }
        progress.set(Stage::Step {
            shared: shared.clone(),
            index,
            steps: options.rates.len(),
            rate,
        });
        let connected_before = shared.connected.load(Relaxed);
        let (report, cut) = run_step(shared, phase, options, index, rate, shutdown, progress).await;
        let saturated = !report.drained || shared.connected.load(Relaxed) < connected_before;
        steps.push(report);
        interrupted |= cut;
        if options.until_saturated && saturated {
            break;
        }
    }
    (steps, interrupted)
}

/// Close: tells the members to stop, waits (bounded) for them to close, and fills each step's
/// delivery latencies from the samples they flushed on the way out.
async fn close_members(
    shared: &Shared,
    members: Members,
    progress: Progress,
    steps: &mut [StepReport],
) {
    progress.set(Stage::Other("closing connections"));
    let _ = members.phase.send(Phase::Done);
    if tokio::time::timeout(CLOSE_WAIT, members.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some members did not close in time");
    }
    progress.finish().await;
    // Members flush their last latency samples as they stop: read the histograms only now.
    for (index, step) in steps.iter_mut().enumerate() {
        step.latency = LatencySummary::from_us(&shared.latencies.merged(index));
    }
}

/// One rate step: announce it, let it run, wait for its deliveries, measure. Also says whether
/// the run was interrupted during it.
async fn run_step(
    shared: &Shared,
    phase: &watch::Sender<Phase>,
    options: &BenchOptions,
    index: usize,
    rate: f64,
    shutdown: &CancellationToken,
    progress: &Progress,
) -> (StepReport, bool) {
    let before = shared.counters.totals();
    shared.counters.take_max_lag_us();
    let cpu_before = usage::cpu_time();
    let server_cpu_before = options.server_pid.and_then(usage::cpu_time_of_pid);
    let cores_before = usage::core_times();
    let senders = shared.senders_connected.load(Relaxed);
    let start = Instant::now() + STEP_LEAD;
    let end = start + options.duration;
    let _ = phase.send(Phase::Step {
        index: index as u8,
        start,
        end,
        rate,
    });
    let mut interrupted = false;
    tokio::select! {
        () = tokio::time::sleep_until(end) => {}
        () = shutdown.cancelled() => interrupted = true,
    }
    let send_end = Instant::now().min(end);
    let _ = phase.send(Phase::Idle);

    // Wait for what is still on its way.
    progress.set(Stage::Other("waiting for the last deliveries"));
    let drain_deadline = Instant::now() + options.drain;
    let mut drained = false;
    let mut last_delivered = before.delivered;
    let mut last_delivery_at = Instant::now();
    loop {
        let totals = shared.counters.totals();
        if totals.delivered != last_delivered {
            last_delivered = totals.delivered;
            last_delivery_at = Instant::now();
        }
        let d = totals.since(before);
        if d.delivered >= d.expected {
            drained = true;
            break;
        }
        if Instant::now() >= drain_deadline || interrupted {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = shutdown.cancelled() => interrupted = true,
        }
    }
    // The window ends with the last delivery (or the end of sending, whichever is later).
    let window_end = last_delivery_at.max(send_end);
    let cpu_after = usage::cpu_time();
    let server_cpu_after = options.server_pid.and_then(usage::cpu_time_of_pid);
    let cores_after = usage::core_times();
    let step_wall = (Instant::now() - start).max(Duration::from_millis(1));
    let d = shared.counters.totals().since(before);
    let max_lag_us = shared.counters.take_max_lag_us();
    let send_secs = (send_end - start).as_secs_f64().max(1e-9);
    let window_secs = (window_end - start).as_secs_f64().max(1e-9);

    let shortfall = if d.planned > 0 {
        1.0 - d.sent as f64 / d.planned as f64
    } else {
        0.0
    };
    let late_share = if d.sent > 0 {
        d.late as f64 / d.sent as f64
    } else {
        0.0
    };
    let server_cpu_secs = server_cpu_after
        .zip(server_cpu_before)
        .and_then(|(a, b)| a.checked_sub(b))
        .map(|d| d.as_secs_f64());
    let fell_behind = (!interrupted && shortfall > SHORTFALL).then_some(shortfall * 100.0);
    let report = StepReport {
        rate_per_member: rate,
        target_sends_per_sec: senders as f64 * rate,
        sent: d.sent,
        sends_per_sec: d.sent as f64 / send_secs,
        late_sends: d.late,
        late_percent: late_share * 100.0,
        generator_behind: fell_behind.is_some() || late_share > LATE_SHARE,
        max_send_lag_ms: max_lag_us as f64 / 1000.0,
        fell_behind_percent: fell_behind,
        expected_deliveries: d.expected,
        delivered: d.delivered,
        delivered_per_sec: d.delivered as f64 / window_secs,
        delivery_ratio: if d.expected > 0 {
            d.delivered as f64 / d.expected as f64
        } else {
            0.0
        },
        window_secs,
        drained,
        // Filled in once the members have flushed their last samples.
        latency: None,
        generator_cpu_percent: usage::cpu_percent(cpu_before, cpu_after, step_wall),
        server_cpu_percent: usage::cpu_percent(server_cpu_before, server_cpu_after, step_wall),
        server_cpu_secs,
        server_cpu_us_per_delivery: server_cpu_secs
            .filter(|_| d.delivered > 0)
            .map(|s| s * 1e6 / d.delivered as f64),
        server_rss_mib: options.server_pid.and_then(usage::rss_mib_of_pid),
        core_busy_percent: usage::core_busy_percent(
            cores_before.as_deref(),
            cores_after.as_deref(),
        ),
    };
    (report, interrupted)
}
