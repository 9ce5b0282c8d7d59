//! The webhook receiver (`POST /webhook`) and the bot's replies.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use berth_protocol::api::SendMessageRequest;
use berth_protocol::webhook::{SIGNATURE_HEADER, SIGNATURE_PREFIX, WebhookEvent, unhex};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::account::{self, Identity};
use crate::command;
use crate::quotes::Quotes;

/// Largest webhook body accepted (a message of the largest text, escaped, and its envelope).
const MAX_BODY_BYTES: usize = 256 * 1024;
/// Delivery ids remembered to drop retried duplicates.
const SEEN_DELIVERIES: usize = 4096;
/// Bound on the replies still running at shutdown.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Longest `Retry-After` the bot waits before sending again.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(3);

/// What [`Bot::new`] needs.
pub struct BotParts {
    pub http: reqwest::Client,
    pub backend: String,
    pub data_dir: PathBuf,
    pub username: String,
    pub secret: Vec<u8>,
    pub quotes: Quotes,
    pub identity: Identity,
    pub shutdown: CancellationToken,
}

/// The bot's shared state; cheap to clone.
#[derive(Clone)]
pub struct Bot(Arc<Inner>);

struct Inner {
    http: reqwest::Client,
    backend: String,
    data_dir: PathBuf,
    username: String,
    secret: Vec<u8>,
    quotes: Quotes,
    identity: RwLock<Identity>,
    seen: Mutex<Seen>,
    replies: TaskTracker,
    shutdown: CancellationToken,
}

/// Recent delivery ids, oldest first.
#[derive(Default)]
struct Seen {
    order: VecDeque<String>,
    ids: HashSet<String>,
}

impl Seen {
    /// `true` the first time `id` is seen.
    fn first(&mut self, id: &str) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() >= SEEN_DELIVERIES
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        self.order.push_back(id.to_owned());
        self.ids.insert(id.to_owned());
        true
    }
}

impl Bot {
    pub fn new(parts: BotParts) -> Bot {
        Bot(Arc::new(Inner {
            http: parts.http,
            backend: parts.backend,
            data_dir: parts.data_dir,
            username: parts.username,
            secret: parts.secret,
            quotes: parts.quotes,
            identity: RwLock::new(parts.identity),
            seen: Mutex::new(Seen::default()),
            replies: TaskTracker::new(),
            shutdown: parts.shutdown,
        }))
    }

    /// Waits (bounded) for the replies still running.
    pub async fn stop(&self) {
        self.0.replies.close();
        if tokio::time::timeout(STOP_GRACE, self.0.replies.wait())
            .await
            .is_err()
        {
            tracing::warn!("replies still running at shutdown; dropped");
        }
    }
}

/// The bot's routes: `POST /webhook`, `GET /healthz`.
pub fn router(bot: Bot) -> Router {
    Router::new()
        .route("/webhook", post(webhook))
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(bot)
}

/// `true` when `header` is `sha256=<hex HMAC-SHA256(body) under secret>` (compared in constant
/// time by the `hmac` crate).
pub fn signature_ok(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(mac) = header
        .and_then(|h| h.trim().strip_prefix(SIGNATURE_PREFIX))
        .and_then(unhex)
    else {
        return false;
    };
    let mut expected =
        Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    expected.update(body);
    expected.verify_slice(&mac).is_ok()
}

async fn webhook(State(bot): State<Bot>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let inner = &bot.0;
    let signature = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    if !signature_ok(&inner.secret, &body, signature) {
        tracing::warn!("webhook with a bad signature refused");
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(event) = serde_json::from_slice::<WebhookEvent>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    if event.kind != "message" {
        return StatusCode::NO_CONTENT;
    }
    if !inner
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .first(&event.id)
    {
        return StatusCode::NO_CONTENT;
    }
    let field = |name: &str| event.data.get(name).and_then(|v| v.as_str()).unwrap_or("");
    let (user_id, username, text) = (field("userId"), field("username"), field("text"));
    // Never answer a bot: ourselves, or any account named like one.
    let own_id = inner.identity.read().await.user_id.clone();
    if user_id == own_id || username.eq_ignore_ascii_case(&inner.username) {
        return StatusCode::NO_CONTENT;
    }
    let Some(command) = command::parse(text) else {
        return StatusCode::NO_CONTENT;
    };
    if !berth_protocol::ids::is_valid_room_id(&event.room_id) {
        return StatusCode::BAD_REQUEST;
    }
    tracing::info!(room_id = %event.room_id, ?command, "answering");
    let reply_bot = bot.clone();
    let room_id = event.room_id.clone();
    let client_id = format!("bot-{}", event.id.chars().take(40).collect::<String>());
    inner.replies.spawn(async move {
        let inner = &reply_bot.0;
        tokio::select! {
            () = inner.shutdown.cancelled() => {}
            () = async {
                let text = command::answer(&command, &inner.quotes).await;
                reply_bot.say(&room_id, text, client_id).await;
            } => {}
        }
    });
    StatusCode::ACCEPTED
}

impl Bot {
    /// Sends `text` into `room_id`, signing in again once if the token was refused and waiting
    /// once (bounded) if rate limited.
    async fn say(&self, room_id: &str, text: String, client_id: String) {
        let inner = &self.0;
        let url = format!("{}/api/rooms/{room_id}/messages", inner.backend);
        let body = SendMessageRequest {
            text,
            client_id: Some(client_id),
        };
        for attempt in 0..3 {
            let token = inner.identity.read().await.token.clone();
            let answer = inner
                .http
                .post(&url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await;
            let answer = match answer {
                Ok(answer) => answer,
                Err(e) => {
                    tracing::warn!(room_id, error = %e.without_url(), "cannot send the answer");
                    return;
                }
            };
            let status = answer.status();
            if status.is_success() {
                return;
            }
            if attempt < 2 && status == StatusCode::UNAUTHORIZED {
                match account::sign_in(
                    &inner.http,
                    &inner.backend,
                    &inner.data_dir,
                    &inner.username,
                )
                .await
                {
                    Ok(identity) => *inner.identity.write().await = identity,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot sign in again");
                        return;
                    }
                }
                continue;
            }
            if attempt < 2
                && (status == StatusCode::TOO_MANY_REQUESTS
                    || status == StatusCode::SERVICE_UNAVAILABLE)
            {
                let wait = answer
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .map_or(Duration::from_millis(500), Duration::from_secs)
                    .min(MAX_RETRY_WAIT);
                tokio::time::sleep(wait).await;
                continue;
            }
            let detail = answer.text().await.unwrap_or_default();
            tracing::warn!(room_id, %status, detail = %detail.chars().take(200).collect::<String>(), "answer refused");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked() {
        let body = b"{\"id\":\"1\"}";
        let mut mac = Hmac::<Sha256>::new_from_slice(b"k").unwrap();
        mac.update(body);
        let good = format!(
            "sha256={}",
            berth_protocol::webhook::hex(&mac.finalize().into_bytes())
        );
        assert!(signature_ok(b"k", body, Some(&good)));
        assert!(!signature_ok(b"other", body, Some(&good)));
        assert!(!signature_ok(b"k", b"{}", Some(&good)));
        assert!(!signature_ok(b"k", body, Some("sha256=zz")));
        assert!(!signature_ok(b"k", body, None));
    }

    #[test]
    fn deliveries_are_seen_once_and_forgotten_in_order() {
        let mut seen = Seen::default();
        assert!(seen.first("a") && !seen.first("a"));
        for i in 0..SEEN_DELIVERIES {
            seen.first(&i.to_string());
        }
        assert!(seen.first("a"), "the oldest ids are forgotten");
        assert!(seen.ids.len() <= SEEN_DELIVERIES);
    }
}
