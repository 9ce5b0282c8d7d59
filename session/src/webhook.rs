//! Webhooks: room events (`message`, `joined`, `left`) POSTed to the configured URLs.
//!
//! Rooms never wait for a delivery: [`Webhooks::emit`] `try_send`s the event's frame (already
//! serialized for the members) into one bounded queue per server; when it is full the event is
//! dropped, counted (`berth_session_webhook_dropped_total`) and logged. One worker task takes
//! events off the queue, builds each body once (`berth_protocol::webhook::WebhookEvent`), signs
//! it per target with HMAC-SHA256 and delivers it to every target concurrently (bounded by
//! `--webhook-concurrency`), each attempt bounded by `--webhook-timeout-ms`, retried with
//! exponential backoff on network errors, 408, 429 and 5xx up to `--webhook-attempts`. The
//! worker stops when the server shuts down, giving deliveries in flight a short grace.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use berth_protocol::webhook::{
    DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, SIGNATURE_PREFIX, hex,
};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use crate::config::IntegrationArgs;
use crate::metrics::Metrics;

/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Time deliveries in flight get once the server stops.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// At most one "queue full" warning per this period (each drop is counted regardless).
const DROP_WARN_PERIOD_MS: u64 = 1000;

/// One event waiting for delivery.
struct Event {
    kind: &'static str,
    room_id: Arc<str>,
    frame: Utf8Bytes,
    at: SystemTime,
}

/// A URL and the key its deliveries are signed with.
#[derive(Clone)]
struct Target {
    url: Arc<str>,
    key: Arc<[u8]>,
}

/// The server's webhook queue; rooms hold it through their settings.
pub(crate) struct Webhooks {
    queue: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
    /// `now_ms` of the last "queue full" warning.
    last_warning: AtomicU64,
}

/// The queue and its worker task, as [`Webhooks::start`] hands them over.
pub(crate) type Started = (Arc<Webhooks>, tokio::task::JoinHandle<()>);

/// How deliveries are made.
#[derive(Clone)]
struct Policy {
    timeout: Duration,
    attempts: u32,
    backoff: Duration,
}

impl Webhooks {
    /// Starts the worker when `args` name any URL; `None` otherwise. The worker ends when
    /// `stop` is cancelled.
    pub fn start(
        args: &IntegrationArgs,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> Result<Option<Started>, reqwest::Error> {
        let targets = targets(args);
        if targets.is_empty() {
            return Ok(None);
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(args.webhook_timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let (queue, events) = mpsc::channel(args.webhook_queue);
        let policy = Policy {
            timeout: Duration::from_millis(args.webhook_timeout_ms),
            attempts: args.webhook_attempts,
            backoff: Duration::from_millis(args.webhook_backoff_ms),
        };
        tracing::info!(
            targets = targets.len(),
            queue = args.webhook_queue,
            "webhooks on"
        );
        let worker = Worker {
            client,
            targets,
            policy,
            metrics: metrics.clone(),
            slots: Arc::new(Semaphore::new(args.webhook_concurrency)),
            stop,
        };
        let task = tokio::spawn(worker.run(events));
        let webhooks = Arc::new(Webhooks {
            queue,
            metrics,
            last_warning: AtomicU64::new(0),
        });
        Ok(Some((webhooks, task)))
    }

    /// Queues `frame` (a `message`, `joined` or `left` frame of `room_id`) for delivery, without
    /// ever waiting: a full queue drops the event, counted and logged.
    pub fn emit(&self, kind: &'static str, room_id: &Arc<str>, frame: &Utf8Bytes) {
        let event = Event {
            kind,
            room_id: room_id.clone(),
            frame: frame.clone(),
            at: SystemTime::now(),
        };
        if self.queue.try_send(event).is_err() {
            let dropped = self.metrics.webhook_dropped.fetch_add(1, Ordering::Relaxed) + 1;
            let now = berth_protocol::now_ms();
            let last = self.last_warning.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= DROP_WARN_PERIOD_MS
                && self
                    .last_warning
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(
                    room_id = %room_id,
                    kind,
                    dropped_total = dropped,
                    "webhook queue full; event dropped"
                );
            }
        }
    }
}

/// The operator's URLs with `--webhook-secret`, then the bots' with theirs.
fn targets(args: &IntegrationArgs) -> Vec<Target> {
    let key =
        |s: Option<&String>| -> Arc<[u8]> { Arc::from(s.map_or("", |s| s.trim()).as_bytes()) };
    let operator = key(args.webhook_secret.as_ref());
    let bots = key(args
        .bot_webhook_secret
        .as_ref()
        .or(args.webhook_secret.as_ref()));
    let list = |urls: &[String], key: &Arc<[u8]>| -> Vec<Target> {
        urls.iter()
            .map(|u| u.trim())
            .filter(|u| !u.is_empty())
            .map(|u| Target {
                url: Arc::from(u),
                key: key.clone(),
            })
            .collect()
    };
    let mut all = list(&args.webhook_url, &operator);
    for target in list(&args.bot_webhook_url, &bots) {
        if !all.iter().any(|t| t.url == target.url) {
            all.push(target);
        }
    }
    all
}

/// `sha256=<hex HMAC-SHA256(body) under key>`.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("{SIGNATURE_PREFIX}{}", hex(&mac.finalize().into_bytes()))
}

/// The JSON body of one delivery: `{"id","type","roomId","ts","data"}`, with the frame spliced
/// in as it is (it is already JSON).
fn body(id: &str, event: &Event) -> bytes::Bytes {
    let ts = humantime::format_rfc3339_millis(event.at).to_string();
    let quote = |s: &str| serde_json::to_string(s).expect("strings serialize");
    let json = format!(
        r#"{{"id":{},"type":{},"roomId":{},"ts":{},"data":{}}}"#,
        quote(id),
        quote(event.kind),
        quote(&event.room_id),
        quote(&ts),
        event.frame.as_str(),
    );
    bytes::Bytes::from(json)
}

/// A fresh delivery id: 128 random bits, hex.
fn delivery_id() -> String {
    hex(&rand::random::<[u8; 16]>())
}

struct Worker {
    client: reqwest::Client,
    targets: Vec<Target>,
    policy: Policy,
    metrics: Arc<Metrics>,
    slots: Arc<Semaphore>,
    stop: CancellationToken,
}

impl Worker {
    async fn run(self, mut events: mpsc::Receiver<Event>) {
        let mut deliveries = JoinSet::new();
        'events: loop {
            let event = tokio::select! {
                biased;
                () = self.stop.cancelled() => break,
                event = events.recv() => match event {
                    Some(event) => event,
                    None => break,
                },
            };
            let id: Arc<str> = Arc::from(delivery_id());
            let body = body(&id, &event);
            for target in &self.targets {
                let slot = tokio::select! {
                    biased;
                    () = self.stop.cancelled() => break 'events,
                    slot = self.slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break 'events,
                    },
                };
                let delivery = Delivery {
                    client: self.client.clone(),
                    target: target.clone(),
                    id: id.clone(),
                    kind: event.kind,
                    body: body.clone(),
                    policy: self.policy.clone(),
                    metrics: self.metrics.clone(),
                    stop: self.stop.clone(),
                };
                deliveries.spawn(async move {
                    delivery.run().await;
                    drop(slot);
                });
            }
            while deliveries.try_join_next().is_some() {}
        }
        let left = events.len();
        if left > 0 {
            tracing::info!(
                events = left,
                "webhook events not delivered: the server stopped"
            );
        }
        let drained = tokio::time::timeout(STOP_GRACE, async {
            while deliveries.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            deliveries.abort_all();
            tracing::info!("webhook deliveries cut short: the server stopped");
        }
    }
}

/// One event to one target, with its retries.
struct Delivery {
    client: reqwest::Client,
    target: Target,
    id: Arc<str>,
    kind: &'static str,
    body: bytes::Bytes,
    policy: Policy,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
}

impl Delivery {
    async fn run(self) {
        let signature = signature(&self.target.key, &self.body);
        let mut wait = self.policy.backoff;
        let mut outcome = String::new();
        for attempt in 0..self.policy.attempts {
            if attempt > 0 {
                self.metrics.webhook_retries.fetch_add(1, Ordering::Relaxed);
                tokio::select! {
                    () = self.stop.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(MAX_BACKOFF);
            }
            let request = self
                .client
                .post(&*self.target.url)
                .timeout(self.policy.timeout)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, &signature)
                .header(DELIVERY_HEADER, &*self.id)
                .header(EVENT_HEADER, self.kind)
                .body(self.body.clone());
            let answer = tokio::select! {
                () = self.stop.cancelled() => return,
                answer = request.send() => answer,
            };
            match answer {
                Ok(r) if r.status().is_success() => {
                    self.metrics
                        .webhook_delivered
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(r) => {
                    let status = r.status();
                    outcome = format!("answered {status}");
                    let retry = status.is_server_error()
                        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                        || status == reqwest::StatusCode::REQUEST_TIMEOUT;
                    if !retry {
                        break;
                    }
                }
                // Without the URL: it may carry credentials.
                Err(e) => outcome = format!("{}", e.without_url()),
            }
        }
        self.metrics.webhook_failed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            delivery = %self.id,
            kind = self.kind,
            target = %host_of(&self.target.url),
            outcome,
            "webhook delivery given up"
        );
    }
}

/// The scheme and authority of `url`, for logs (no path, query or credentials).
fn host_of(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "(invalid URL)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hex_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn body_embeds_the_frame_as_json() {
        let event = Event {
            kind: "message",
            room_id: Arc::from("r-1"),
            frame: Utf8Bytes::from_static(r#"{"type":"message","seq":1}"#),
            at: SystemTime::UNIX_EPOCH,
        };
        let parsed: berth_protocol::webhook::WebhookEvent =
            serde_json::from_slice(&body("d-1", &event)).unwrap();
        assert_eq!(parsed.id, "d-1");
        assert_eq!(parsed.kind, "message");
        assert_eq!(parsed.room_id, "r-1");
        assert_eq!(parsed.ts, "1970-01-01T00:00:00.000Z");
        assert_eq!(parsed.data["seq"], 1);
    }

    #[test]
    fn bot_targets_keep_their_own_key_and_are_not_duplicated() {
        use clap::Parser as _;
        let c = crate::Config::parse_from([
            "berth-session",
            "--webhook-url",
            "http://a/hook,http://b/hook",
            "--webhook-secret",
            "op",
            "--bot-webhook-url",
            "http://bot/hook,http://a/hook",
            "--bot-webhook-secret",
            "bot",
        ]);
        let t = targets(&c.integrations);
        let urls: Vec<&str> = t.iter().map(|t| &*t.url).collect();
        assert_eq!(urls, ["http://a/hook", "http://b/hook", "http://bot/hook"]);
        assert_eq!(&*t[0].key, b"op");
        assert_eq!(&*t[2].key, b"bot");
        assert!(!delivery_id().is_empty() && delivery_id() != delivery_id());
    }
}
