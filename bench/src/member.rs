//! One member: a task that gets a ticket (looks the room up, or mints one), connects, then in
//! one `select!` loop reads every frame (counting deliveries, timing stamped messages) and, while
//! a rate step runs and it is a sender, sends on a fixed schedule — so a late send shows as lag
//! instead of silently stretching the interval.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::Message;

use super::connect::{Endpoint, Peek, Ws, error_kind, io_label};
use super::run::{Access, Phase, Shared};
use super::stamp;
use super::stats::FLUSH_SAMPLES;
use berth::ClientError;

/// How long buffered latency samples may wait before they are flushed (for the live p99).
const FLUSH_AFTER: Duration = Duration::from_millis(250);
/// A create ticket older than this is replaced by a lookup (tickets live about a minute).
const TICKET_FRESH: Duration = Duration::from_secs(30);
/// How long closing a connection at the end may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Frames handled per wake-up before the member looks at its timers and the phase again.
const BATCH: usize = 64;
/// The key before a message's text, as servers write it.
pub(crate) const TEXT_KEY: &str = r#""text":""#;

/// What a read asks of the member's loop.
enum Received {
    Nothing,
    /// Latency samples are buffered: flush them in a while.
    ArmFlush,
    /// The connection is over.
    Stop,
}

/// Who this member is.
#[derive(Debug, Clone)]
pub(crate) struct MemberPlan {
    /// Index over the whole run (also the counter slot).
    pub index: usize,
    pub room: usize,
    /// Index within its room (0 created it, in backend mode).
    pub seat: u32,
    pub sender: bool,
    pub bind: Option<std::net::IpAddr>,
    /// When to start connecting, after the ramp-up's start.
    pub offset: Duration,
}

/// The send schedule of one step: every `interval` from a random point in the first interval,
/// until `end`.
#[derive(Debug)]
struct Schedule {
    step: u8,
    next: Instant,
    interval: Duration,
    end: Instant,
}

impl Schedule {
    /// Also returns how many sends it plans.
    fn new(step: u8, start: Instant, end: Instant, rate: f64) -> (Schedule, u64) {
        let interval = Duration::from_secs_f64(1.0 / rate);
        let first = start + interval.mul_f64(rand::random::<f64>());
        let planned = if first >= end {
            0
        } else {
            ((end - first).as_secs_f64() / interval.as_secs_f64()).ceil() as u64
        };
        let s = Schedule {
            step,
            next: first,
            interval,
            end,
        };
        (s, planned)
    }
}

/// Runs one member until the run is done or its connection fails.
pub(crate) async fn run(
    shared: Arc<Shared>,
    plan: MemberPlan,
    mut phase: watch::Receiver<Phase>,
    ramp_start: Instant,
) {
    tokio::select! {
        () = sleep_until(ramp_start + plan.offset) => {}
        () = until_done(&mut phase) => {
            shared.settled.fetch_add(1, Relaxed);
            return;
        }
    }
    let ws = tokio::select! {
        result = connect(&shared, &plan) => result,
        () = until_done(&mut phase) => Err("connect: cancelled".into()),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(kind) => {
            shared.errors.add(kind);
            shared.failed.fetch_add(1, Relaxed);
            shared.settled.fetch_add(1, Relaxed);
            return;
        }
    };
    shared.room_members[plan.room].fetch_add(1, Relaxed);
    shared.connected.fetch_add(1, Relaxed);
    if plan.sender {
        shared.senders_connected.fetch_add(1, Relaxed);
    }
    shared.settled.fetch_add(1, Relaxed);

    let mut member = Member {
        shared: &shared,
        plan: &plan,
        samples: Vec::new(),
        flush_armed: false,
        now: 0,
        delivered: 0,
    };
    member.serve(ws, &mut phase).await;
    member.flush();

    shared.room_members[plan.room].fetch_sub(1, Relaxed);
    shared.connected.fetch_sub(1, Relaxed);
    if plan.sender {
        shared.senders_connected.fetch_sub(1, Relaxed);
    }
}

/// Resolves when the run is over (or the coordinator went away).
async fn until_done(phase: &mut watch::Receiver<Phase>) {
    let _ = phase.wait_for(|p| matches!(p, Phase::Done)).await;
}

/// A ticket, then the connection. Errors come back as their kind.
async fn connect(shared: &Shared, plan: &MemberPlan) -> Result<Ws, String> {
    let _permit = shared
        .connect_permits
        .acquire()
        .await
        .map_err(|_| "connect: cancelled".to_owned())?;
    let endpoint = match &shared.access {
        Access::Backend {
            backend,
            sessions,
            rooms,
        } => {
            let Some(session) = &sessions[plan.index] else {
                return Err("connect: no login".into());
            };
            let Some(room) = &rooms[plan.room] else {
                return Err("connect: room not created".into());
            };
            let fresh = plan.seat == 0 && room.created_at.elapsed() < TICKET_FRESH;
            let ticket = if fresh {
                room.ticket.clone()
            } else {
                let started = Instant::now();
                let t = backend
                    .lookup_room(session, &room.ticket.room_id)
                    .await
                    .map_err(|e| error_kind("lookup", &e))?;
                shared.lookup_latency.record(started.elapsed());
                t
            };
            Endpoint::resolve(&ticket.url, &ticket.token)
                .await
                .map_err(|e| error_kind("connect", &e))?
        }
        Access::Direct {
            minter,
            url,
            room_offset,
        } => {
            let user = shared.username(plan.index);
            let room = format!("bench-room-{}", u64::from(*room_offset) + plan.room as u64);
            let token = minter
                .mint(&format!("u-{user}"), &user, &room)
                .map_err(|_| "connect: ticket not minted".to_owned())?;
            Endpoint::resolve(url, &token)
                .await
                .map_err(|e| error_kind("connect", &e))?
        }
    };
    let started = Instant::now();
    let ws = endpoint
        .open(plan.bind, shared.connect_timeout)
        .await
        .map_err(|e| error_kind("connect", &e))?;
    shared.connect_latency.record(started.elapsed());
    Ok(ws)
}

/// A connected member's state.
struct Member<'a> {
    shared: &'a Shared,
    plan: &'a MemberPlan,
    /// Latency samples (step, µs) not yet in the shared histograms.
    samples: Vec<(u8, u32)>,
    flush_armed: bool,
    /// When the frames being handled were read ([`Shared::nanos`]): one clock read a batch.
    now: u64,
    /// Deliveries handled and not yet in the member's counter: one atomic add a batch.
    delivered: u64,
}

impl Member<'_> {
    async fn serve(&mut self, mut ws: Ws, phase: &mut watch::Receiver<Phase>) {
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let mut send_timer = Box::pin(sleep_until(far));
        let mut flush_timer = Box::pin(sleep_until(far));
        let mut schedule: Option<Schedule> = None;
        let slot = self.shared.counters.slot(self.plan.index);
        let room_members = &self.shared.room_members[self.plan.room];
        // The step may have started while this member was connecting.
        let mut current = Some(*phase.borrow_and_update());
        loop {
            if let Some(p) = current.take() {
                schedule = None;
                match p {
                    Phase::Step {
                        index,
                        start,
                        end,
                        rate,
                    } if self.plan.sender && rate > 0.0 => {
                        let (s, planned) = Schedule::new(index, start, end, rate);
                        slot.planned.fetch_add(planned, Relaxed);
                        if planned > 0 {
                            send_timer.as_mut().reset(s.next);
                            schedule = Some(s);
                        }
                    }
                    Phase::Done => {
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(None)).await;
                        return;
                    }
                    _ => {}
                }
                self.flush();
            }
            tokio::select! {
                biased;
                changed = phase.changed() => match changed {
                    Ok(()) => current = Some(*phase.borrow_and_update()),
                    Err(_) => return,
                },
                () = &mut send_timer, if schedule.is_some() => {
                    let Some(s) = schedule.as_mut() else { continue };
                    let now = Instant::now();
                    let lag = now.saturating_duration_since(s.next);
                    if lag > s.interval / 10 {
                        slot.late.fetch_add(1, Relaxed);
                    }
                    slot.max_lag_us.fetch_max(lag.as_micros() as u64, Relaxed);
                    let mut frame = String::with_capacity(self.shared.size + 48);
                    stamp::send_frame(&mut frame, self.shared.run, s.step, self.shared.nanos(), self.shared.size);
                    slot.expected.fetch_add(u64::from(room_members.load(Relaxed)), Relaxed);
                    if let Err(e) = ws.send(Message::text(frame)).await {
                        self.shared.errors.add(error_kind("send", &ClientError::from(e)));
                        return;
                    }
                    slot.sent.fetch_add(1, Relaxed);
                    s.next += s.interval;
                    if s.next >= s.end {
                        schedule = None;
                    } else {
                        send_timer.as_mut().reset(s.next);
                    }
                }
                frame = ws.next() => {
                    // Then whatever else is already buffered, without going round the select.
                    let mut next = Some(frame);
                    let mut batch = 0;
                    self.now = self.shared.nanos();
                    while let Some(frame) = next.take() {
                        match self.on_frame(&mut ws, frame).await {
                            Received::Stop => return,
                            Received::ArmFlush => flush_timer.as_mut().reset(Instant::now() + FLUSH_AFTER),
                            Received::Nothing => {}
                        }
                        batch += 1;
                        if batch < BATCH {
                            next = ws.next().now_or_never();
                        }
                    }
                    self.count_delivered();
                }
                () = &mut flush_timer, if self.flush_armed => self.flush(),
            }
        }
    }

    /// Handles one read from the connection.
    async fn on_frame(
        &mut self,
        ws: &mut Ws,
        frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Received {
        match frame {
            Some(Ok(Message::Text(text))) => self.on_text(&text),
            Some(Ok(Message::Ping(_))) => {
                // tungstenite queued the pong: send it now, not with the next write.
                if let Err(e) = ws.flush().await {
                    self.shared
                        .errors
                        .add(error_kind("closed", &ClientError::from(e)));
                    return Received::Stop;
                }
                Received::Nothing
            }
            Some(Ok(Message::Close(frame))) => {
                self.shared.errors.add(match frame {
                    Some(f) => format!("closed: {}", u16::from(f.code)),
                    None => "closed: without a code".into(),
                });
                Received::Stop
            }
            Some(Ok(_)) => Received::Nothing,
            Some(Err(e)) => {
                let kind = match &e {
                    tokio_tungstenite::tungstenite::Error::Io(io) => {
                        format!("closed: {}", io_label(io))
                    }
                    _ => error_kind("closed", &ClientError::from(e)),
                };
                self.shared.errors.add(kind);
                Received::Stop
            }
            None => {
                self.shared.errors.add("closed: connection ended");
                Received::Stop
            }
        }
    }

    /// Handles a text frame. Servers write frames compactly with `type` first (serde's tagged
    /// enums, `JSON.stringify`), so the common frames are recognised by their start and a
    /// stamp by its `"text":"b:<run>:` without parsing the JSON; anything else is parsed.
    fn on_text(&mut self, text: &str) -> Received {
        if let Some(rest) = text.strip_prefix(r#"{"type":""#) {
            // Presence frames are the bulk of a filling room.
            if rest.starts_with(r#"joined""#) || rest.starts_with(r#"left""#) {
                return Received::Nothing;
            }
            if rest.starts_with(r#"message""#) {
                let stamp = self.shared.text_marker.find(rest.as_bytes()).and_then(|i| {
                    stamp::parse(&rest[i + TEXT_KEY.len()..], &self.shared.run_prefix)
                });
                return match stamp {
                    Some(stamp) => self.on_message(Some(stamp)),
                    // Not ours, or written differently: parse it.
                    None => self.on_parsed(text),
                };
            }
        }
        self.on_parsed(text)
    }

    fn on_parsed(&mut self, text: &str) -> Received {
        let peek = match serde_json::from_str::<Peek>(text) {
            Ok(p) => p,
            Err(_) => {
                self.shared.errors.add("frame: not a server frame");
                return Received::Nothing;
            }
        };
        match peek.kind.as_ref() {
            "message" => {
                let stamp = peek
                    .text
                    .as_deref()
                    .and_then(|t| stamp::parse(t, &self.shared.run_prefix));
                self.on_message(stamp)
            }
            "error" => {
                self.shared.errors.add(format!(
                    "error frame: {}",
                    peek.code.as_deref().unwrap_or("no code")
                ));
                Received::Nothing
            }
            _ => Received::Nothing,
        }
    }

    /// Counts a delivered message and times it when it carries this run's stamp.
    fn on_message(&mut self, stamp: Option<(u8, u64)>) -> Received {
        self.delivered += 1;
        let Some((step, sent)) = stamp else {
            return Received::Nothing;
        };
        let us = self.now.saturating_sub(sent) / 1000;
        self.samples
            .push((step, u32::try_from(us).unwrap_or(u32::MAX)));
        if self.samples.len() >= FLUSH_SAMPLES {
            self.flush();
            Received::Nothing
        } else if !self.flush_armed {
            self.flush_armed = true;
            Received::ArmFlush
        } else {
            Received::Nothing
        }
    }

    /// Adds the deliveries handled since the last call to the member's counter.
    fn count_delivered(&mut self) {
        if self.delivered > 0 {
            self.shared
                .counters
                .slot(self.plan.index)
                .delivered
                .fetch_add(std::mem::take(&mut self.delivered), Relaxed);
        }
    }

    fn flush(&mut self) {
        self.count_delivered();
        self.flush_armed = false;
        if !self.samples.is_empty() {
            self.shared
                .latencies
                .flush(self.plan.index, &mut self.samples);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_plan_rate_times_duration() {
        let start = Instant::now();
        let end = start + Duration::from_secs(10);
        let mut total = 0;
        for _ in 0..200 {
            let (s, planned) = Schedule::new(0, start, end, 2.0);
            assert_eq!(planned, 20);
            assert!(s.next >= start && s.next < start + Duration::from_millis(500));
            total += planned;
        }
        assert_eq!(total, 4000);
        // A rate slower than the step: 0 or 1 send, 1 in 10 on average.
        let mut ones = 0;
        for _ in 0..2000 {
            let (_, planned) = Schedule::new(0, start, end, 0.01);
            assert!(planned <= 1);
            ones += planned;
        }
        assert!((100..=300).contains(&ones), "{ones}");
    }
}
