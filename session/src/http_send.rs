//! The internal send endpoint: `POST /internal/rooms/{roomId}/messages`, how the backend sends
//! a message over HTTP (`POST /api/rooms/{roomId}/messages`) into the room this server hosts.
//!
//! It is not on the ticket path: the caller presents a send token (`berth_protocol::claims::
//! SendClaims`), which only the backend can mint (it is signed with the ticket key), which names
//! this server, the room and the sender, and which a ticket can never stand in for. The message
//! then takes a member's path through the room: the same text (length and `protocol::text`
//! rules) and `clientId` checks, a rate per user (the sustained rate and burst of a connection),
//! store before delivery, the same refusals.
//! The answer is the stored `message` frame (201).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_protocol::ErrorCode;
use berth_protocol::api::SendMessageRequest;
use berth_protocol::frames::{MAX_CLIENT_ID_BYTES, User};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::error::{self, ApiError};
use crate::state::AppState;
use crate::ticket::token_from_request;

/// Times a send is retried when its room ends under it (idle disposal racing the send).
const ATTEMPTS: usize = 3;
/// Checks between two prunings of the rate limiter's idle users.
const PRUNE_EVERY: u64 = 1024;

/// The per-user rate of messages sent over HTTP.
pub(crate) struct SendRate {
    limiter: DefaultKeyedRateLimiter<String>,
    checks: AtomicU64,
}

impl SendRate {
    /// `rate` per second with room for `burst`, per user (`rate` is positive: the config says so).
    pub fn new(rate: f64, burst: u32) -> Self {
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let period = Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(burst);
        SendRate {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
            checks: AtomicU64::new(0),
        }
    }

    fn allow(&self, user_id: &str) -> bool {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&user_id.to_owned()).is_ok()
    }
}

fn refusal(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ApiError {
    let refusal = ApiError::new(status, code, message);
    // A rate refusal says when to try again.
    if code == ErrorCode::RateLimited {
        refusal.retry_after(1)
    } else {
        refusal
    }
}

fn refuse(state: &AppState, refusal: ApiError) -> Response {
    if let Some(code) = refusal.error_code() {
        state.0.metrics.refused(code);
    }
    tracing::debug!(
        code = refusal.code(),
        reason = refusal.message(),
        "HTTP send refused"
    );
    refusal.into_response()
}

/// `POST /internal/rooms/{roomId}/messages` with `Authorization: Bearer <send token>` and the
/// body `{"text", "clientId"?}`.
pub(crate) async fn send(
    State(state): State<AppState>,
    room_id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = token_from_request(None, authorization).unwrap_or("");
    let server_id = state.server_id();
    let claims = match state.0.verifier.verify_send(token, server_id.as_deref()) {
        Ok(claims) => claims,
        Err(e) => return refuse(&state, e.into()),
    };
    if !matches!(&room_id, Ok(Path(id)) if *id == claims.room) {
        return refuse(
            &state,
            refusal(
                StatusCode::UNAUTHORIZED,
                ErrorCode::InvalidTicket,
                "the send token is for another room",
            ),
        );
    }
    let config = &state.0.config;
    let request = match parse(&body, config.max_text_bytes, config.max_frame_bytes) {
        Ok(request) => request,
        Err(refusal) => return refuse(&state, refusal),
    };
    if !state.0.send_rate.allow(&claims.sub) {
        let message = format!(
            "more than {} messages per second; message dropped",
            config.message_rate
        );
        return refuse(
            &state,
            refusal(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                message,
            ),
        );
    }
    if state.is_draining() {
        return refuse(&state, error::draining());
    }
    if state.is_fenced() {
        return refuse(&state, error::lease_lost());
    }
    let (target, epoch) = (claims.room.clone(), claims.epoch);
    let user = User {
        user_id: claims.sub,
        username: claims.name,
    };
    for _ in 0..ATTEMPTS {
        let room = match crate::hosting::room_for(&state, &target, epoch).await {
            Ok(room) => room,
            Err(refusal) => return refuse(&state, refusal),
        };
        state.0.metrics.messages_in.fetch_add(1, Ordering::Relaxed);
        match room
            .post(
                user.clone(),
                request.text.clone(),
                request.client_id.clone(),
            )
            .await
        {
            Some(Ok(frame)) => {
                return (
                    StatusCode::CREATED,
                    [(header::CONTENT_TYPE, "application/json")],
                    String::from(frame.as_str()),
                )
                    .into_response();
            }
            Some(Err(refused)) => {
                // The room counted it already.
                let status = match refused.code {
                    ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
                    ErrorCode::TextTooLong | ErrorCode::InvalidText | ErrorCode::BadFrame => {
                        StatusCode::BAD_REQUEST
                    }
                    _ => StatusCode::SERVICE_UNAVAILABLE,
                };
                return refusal(status, refused.code, refused.message).into_response();
            }
            // The room ended before it took the message: open it again.
            None => continue,
        }
    }
    refuse(&state, error::server_full("the room is closing; try again"))
}

/// The body of a send: the same checks as a WebSocket `send` frame.
fn parse(
    body: &[u8],
    max_text_bytes: usize,
    max_body_bytes: usize,
) -> Result<SendMessageRequest, ApiError> {
    if body.len() > max_body_bytes {
        return Err(refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TextTooLong,
            format!("the request body is longer than {max_body_bytes} bytes"),
        ));
    }
    let request: SendMessageRequest = serde_json::from_slice(body).map_err(|_| {
        refusal(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadFrame,
            "expected a JSON body {\"text\":…,\"clientId\"?}",
        )
    })?;
    if request
        .client_id
        .as_ref()
        .is_some_and(|c| c.len() > MAX_CLIENT_ID_BYTES)
    {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadFrame,
            format!("clientId is longer than {MAX_CLIENT_ID_BYTES} bytes"),
        ));
    }
    if request.text.len() > max_text_bytes {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            ErrorCode::TextTooLong,
            format!("text is longer than {max_text_bytes} bytes"),
        ));
    }
    // The text rules of `protocol::text`, as on a WebSocket `send` (`invalid_text`).
    if let Err(e) = berth_protocol::text::message_text(&request.text) {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidText,
            e.to_string(),
        ));
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_checked_like_send_frames() {
        assert_eq!(
            parse(br#"{"text":"hi","clientId":"c"}"#, 10, 100)
                .unwrap()
                .client_id
                .as_deref(),
            Some("c")
        );
        let code = |b: &[u8]| parse(b, 10, 100).unwrap_err().error_code().unwrap();
        assert_eq!(code(br#"{"text":"hello world!"}"#), ErrorCode::TextTooLong);
        assert_eq!(code(b"nope"), ErrorCode::BadFrame);
        assert_eq!(code(br#"{"text":"a\u0000b"}"#), ErrorCode::InvalidText);
        assert!(parse(br#"{"text":"a\nb\tc"}"#, 10, 100).is_ok());
        let long_id = format!(r#"{{"text":"hi","clientId":"{}"}}"#, "x".repeat(65));
        assert_eq!(
            parse(long_id.as_bytes(), 10, 1000)
                .unwrap_err()
                .error_code()
                .unwrap(),
            ErrorCode::BadFrame
        );
    }

    #[test]
    fn the_rate_is_per_user() {
        let rate = SendRate::new(1.0, 2);
        assert!(rate.allow("a") && rate.allow("a"));
        assert!(!rate.allow("a"));
        assert!(rate.allow("b"));
    }
}
