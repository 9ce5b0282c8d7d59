//! `POST /api/rooms/{roomId}/messages`: a message sent over HTTP, as the calling user.
//!
//! The backend finds the room's server through the scheduler (a lookup, which places a dormant
//! room first), mints a send token for that server, room and user (`TokenIssuer::
//! mint_send_token`: signed with the ticket key, `use` = `send`, 30 s), and calls the server's
//! internal send endpoint. The session server runs the message through a member's path (limits,
//! rate, store before delivery) and answers with the stored `message` frame (201) or the error
//! a WebSocket `send` would have got; both are passed back as they are. When the room moved
//! meanwhile (421 `wrong_server`, 503 `server_draining` during a hand-over) or its server cannot
//! be reached, the lookup and the call are tried again, a bounded number of times.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_protocol::api::{SendMessageRequest, http_base};
use berth_protocol::frames::ChatMessage;
use berth_protocol::{ErrorBody, ErrorCode};
use berth_runtime::http::{Json, RoomId};

use crate::api::AuthUser;
use crate::error::ApiError;
use crate::state::AppState;

/// Calls per send (lookup, then the session server) before giving up.
const ATTEMPTS: u32 = 4;
/// Wait before the second attempt; doubled on each further one.
const RETRY_WAIT: Duration = Duration::from_millis(150);
/// Bound on one call to a session server.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read from a session server (a stored message frame is far smaller).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The HTTP client the backend calls session servers with; `tls` is its trust on `https://`.
pub fn session_client(
    tls: berth_runtime::tls::ClientConfig,
) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(CALL_TIMEOUT)
        .connect_timeout(Duration::from_secs(3))
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// `POST /api/rooms/{roomId}/messages` `{"text", "clientId"?}`.
#[utoipa::path(post, path = "/api/rooms/{roomId}/messages", tag = "rooms",
    params(("roomId" = String, Path, description = "The room's id")),
    request_body = SendMessageRequest,
    security(("user_token" = [])),
    responses(
        (status = 201, description = "Stored and delivered: the `message` frame", body = ChatMessage),
        (status = 400, description = "`invalid_request`, `invalid_text`, `text_too_long` or `bad_frame`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`not_a_member`", body = ErrorBody),
        (status = 404, description = "`room_not_found`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 429, description = "`rate_limited` (with `Retry-After`)", body = ErrorBody),
        (status = 503, description = "`server_unavailable`, `store_unavailable`, `no_capacity` or `scheduler_unavailable`", body = ErrorBody),
    ))]
pub async fn send(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    RoomId(room_id): RoomId,
    // Shape and characters only; the text's size and rate limits are the session server's, as
    // for a WebSocket `send`.
    Json(request): Json<SendMessageRequest>,
) -> Result<Response, ApiError> {
    // The one text rule (`berth_protocol::text`), before any lookup: the session server applies
    // it again, as it does to every WebSocket `send`.
    berth_protocol::text::message_text(&request.text).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidText,
            e.to_string(),
        )
    })?;
    let body = Bytes::from(serde_json::to_vec(&request).map_err(ApiError::internal)?);
    let mut wait = RETRY_WAIT;
    let mut last_failure = String::new();
    for attempt in 1..=ATTEMPTS {
        if attempt > 1 {
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
        let placement = state.scheduler().lookup_room(&room_id).await?;
        let token = state
            .issuer()
            .mint_send_token(&user, &placement)
            .map_err(ApiError::internal)?;
        let url = format!(
            "{}/internal/rooms/{}/messages",
            http_base(&placement.url),
            room_id
        );
        let answer = state
            .sessions()
            .post(&url)
            .bearer_auth(token)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => {
                // Its server died or is stopping: the next lookup places the room anew.
                last_failure = e.without_url().to_string();
                continue;
            }
        };
        let status = answer.status();
        let retry_after = answer.headers().get(header::RETRY_AFTER).cloned();
        let bytes = match read_bounded(answer).await {
            Ok(bytes) => bytes,
            Err(e) => {
                last_failure = e;
                continue;
            }
        };
        if attempt < ATTEMPTS && moved(status, &bytes) {
            last_failure = format!("the room moved ({status})");
            continue;
        }
        if status.is_success() {
            tracing::debug!(room_id = %room_id, user_id = %user.sub, "message sent over HTTP");
        }
        return Ok(pass_on(status, bytes, retry_after));
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::ServerUnavailable,
        "the room's server cannot be reached; try again",
    )
    .with_cause(last_failure))
}

/// The room is being moved: 421 `wrong_server`, or 503 `server_draining` (a hand-over).
fn moved(status: StatusCode, body: &[u8]) -> bool {
    let code = serde_json::from_slice::<berth_protocol::ErrorBody>(body)
        .map(|b| b.error.code)
        .unwrap_or_default();
    status == StatusCode::MISDIRECTED_REQUEST
        || (status == StatusCode::SERVICE_UNAVAILABLE && code == ErrorCode::ServerDraining.as_str())
}

async fn read_bounded(mut answer: reqwest::Response) -> Result<Bytes, String> {
    let mut out = Vec::new();
    while let Some(chunk) = answer
        .chunk()
        .await
        .map_err(|e| e.without_url().to_string())?
    {
        if out.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err("the session server's answer is too large".into());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}

/// The session server's answer, as it is: the stored frame (201) or the error body.
fn pass_on(status: StatusCode, body: Bytes, retry_after: Option<HeaderValue>) -> Response {
    let mut response = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    if let Some(v) = retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}
