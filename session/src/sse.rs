//! Server-Sent Events: `GET /sse?token=TICKET[&since=SEQ]` (or the `Last-Event-ID` header), the
//! room's frames for clients that cannot open a WebSocket. They send over HTTP
//! (`POST /api/rooms/{roomId}/messages` on the backend).
//!
//! Admission is the WebSocket's ([`crate::admission`]): the same ticket checks (a ticket opens
//! one stream or one WebSocket), refusals answered before the stream starts (401, 421, 409, 503),
//! and a member like any other (presence, `room_full`). Each frame is written as
//! `event: <type>` + `data: <json>` (+ `id: <seq>` on messages), so `Last-Event-ID` is the last
//! message seen; a comment line goes out every `--sse-heartbeat-ms`.
//!
//! One task per stream runs the `select!` loop (room frames, heartbeat, the room's kick notice,
//! the client going away) and hands chunks to the response body through a small channel. Each
//! hand-over has a deadline (`--sse-write-timeout-ms`, by default the WebSocket's
//! `--write-timeout-ms`): a reader that stops taking them loses
//! its stream, as does one whose room queue overflows (the room drops slow consumers). When the
//! room moves (drain, hand-over) or the server stops, a last `event: close` with
//! `{"code": 1012, …}` says to look the room up again and resume with `since`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_protocol::frames::close;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::Instrument as _;

use crate::admission::{self, Admitted};
use crate::error::ApiError;
use crate::outbound::Notice;
use crate::room::Kick;
use crate::state::AppState;

/// Chunks waiting between the stream's task and the response body.
const BODY_CHANNEL: usize = 4;
/// Frames joined into one chunk at most.
const MAX_BATCH: usize = 64;
/// Time the last `close` event gets.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// What EventSource waits before reconnecting by itself (ours reconnect through a lookup).
const RETRY_MS: u64 = 2000;

#[derive(Deserialize)]
pub(crate) struct SseQuery {
    token: Option<String>,
    since: Option<String>,
}

/// `GET /sse`.
pub(crate) async fn stream(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    query: Result<Query<SseQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr);
    let (query_token, since) = match query {
        Ok(Query(q)) => (q.token, q.since),
        Err(_) => (None, None),
    };
    let (claims, spent) =
        match admission::ticket_from_request(&state, query_token.as_deref(), &headers) {
            Ok(ticket) => ticket,
            Err(refusal) => return refuse(&state, refusal, peer),
        };
    // The header is what EventSource sends on its own reconnects: newer than the URL's `since`.
    let last_event = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty());
    let since = match last_event
        .or(since.as_deref())
        .map(|s| s.trim().parse::<u64>())
    {
        None => None,
        Some(Ok(seq)) => Some(seq),
        Some(Err(_)) => {
            let refusal =
                ApiError::invalid_request("since and Last-Event-ID must be a message seq");
            return refuse(&state, refusal, peer);
        }
    };
    let span = tracing::debug_span!(
        "sse",
        room_id = %claims.room,
        user_id = %claims.sub,
        server_id = state.server_id().as_deref().unwrap_or(""),
        peer = peer.map(tracing::field::display),
    );
    let admitted = match admission::admit(&state, claims, since)
        .instrument(span.clone())
        .await
    {
        Ok(admitted) => {
            spent.keep();
            admitted
        }
        Err(refusal) => return refuse(&state, refusal, peer),
    };
    state.0.metrics.sse_streams.fetch_add(1, Ordering::Relaxed);
    let (chunks, body) = mpsc::channel::<Result<Bytes, std::io::Error>>(BODY_CHANNEL);
    let settings = Settings {
        heartbeat: Duration::from_millis(state.0.config.integrations.sse_heartbeat_ms),
        write_timeout: state.0.config.sse_write_timeout(),
    };
    tokio::spawn(run(admitted, chunks, settings).instrument(span));
    let body = futures_util::stream::unfold(body, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Proxies (nginx) must not hold events back.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    // The web client is served by the backend, another origin: EventSource needs this. The
    // ticket in the URL is the credential; no cookie is involved.
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    *response.status_mut() = StatusCode::OK;
    response
}

fn refuse(state: &AppState, refusal: ApiError, peer: Option<SocketAddr>) -> Response {
    if let Some(code) = refusal.error_code() {
        state.0.metrics.refused(code);
    }
    tracing::debug!(code = refusal.code(), reason = refusal.message(), peer = ?peer, "SSE refused");
    let mut response = refusal.into_response();
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

#[derive(Clone, Copy)]
struct Settings {
    heartbeat: Duration,
    write_timeout: Duration,
}

/// Why a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client went away, or stopped reading.
    Gone,
    /// Tell the client with a last `close` event.
    Close(u16, &'static str),
}

fn end_for_kick(kick: Option<Kick>) -> End {
    match kick {
        Some(Kick::SlowConsumer) => End::Close(close::POLICY, "slow consumer"),
        Some(Kick::Restart) => End::Close(close::RESTART, "server restarting; reconnect"),
        None => End::Close(close::INTERNAL, "room failed"),
    }
}

/// One stream's loop, until the client goes, the room lets go of it, or the server stops.
async fn run(
    admitted: Admitted,
    chunks: mpsc::Sender<Result<Bytes, std::io::Error>>,
    settings: Settings,
) {
    let Admitted {
        welcome,
        mut outbound,
        mut kick,
        membership,
        slot,
        task,
        ..
    } = admitted;
    let mut first = format!("retry: {RETRY_MS}\n\n");
    push_event(&mut first, &welcome);
    let mut end = write(&chunks, &mut kick, first, settings.write_timeout).await;
    let mut heartbeat =
        tokio::time::interval_at(Instant::now() + settings.heartbeat, settings.heartbeat);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    while end.is_none() {
        end = tokio::select! {
            biased;
            k = &mut kick => Some(end_for_kick(k)),
            () = chunks.closed() => Some(End::Gone),
            frame = outbound.recv() => match frame {
                Some(frame) => {
                    let mut chunk = String::with_capacity(frame.len() + 64);
                    push_event(&mut chunk, &frame);
                    outbound.drain_into(MAX_BATCH - 1, |next| push_event(&mut chunk, &next));
                    write(&chunks, &mut kick, chunk, settings.write_timeout).await
                }
                // The room let go of us: its notice (or its absence) says why.
                None => Some(match tokio::time::timeout(CLOSE_GRACE, &mut kick).await {
                    Ok(k) => end_for_kick(k),
                    Err(_) => End::Close(close::INTERNAL, "room failed"),
                }),
            },
            _ = heartbeat.tick() => {
                write(&chunks, &mut kick, ":\n\n".to_owned(), settings.write_timeout).await
            }
        };
    }
    tracing::debug!(?end, "SSE stream ending");
    if let Some(End::Close(code, reason)) = end {
        let data = serde_json::json!({ "code": code, "reason": reason });
        let last = format!("event: close\ndata: {data}\n\n");
        let _ = tokio::time::timeout(CLOSE_GRACE, chunks.send(Ok(Bytes::from(last)))).await;
    }
    drop(membership); // leave the room
    drop(slot);
    drop(task);
}

/// Hands `chunk` to the response body within `deadline`, unless the room's notice comes first.
/// `Some` when the stream must end.
async fn write(
    chunks: &mpsc::Sender<Result<Bytes, std::io::Error>>,
    kick: &mut Notice,
    chunk: String,
    deadline: Duration,
) -> Option<End> {
    tokio::select! {
        biased;
        k = kick => Some(end_for_kick(k)),
        sent = tokio::time::timeout(deadline, chunks.send(Ok(Bytes::from(chunk)))) => match sent {
            Ok(Ok(())) => None,
            // Closed: the client went away. Timed out: it stopped reading.
            Ok(Err(_)) | Err(_) => Some(End::Gone),
        },
    }
}

/// The leading fields every server frame starts with (`type`; `seq` on messages).
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    seq: Option<u64>,
}

/// Appends `frame` as one event: `event: <type>`, `id: <seq>` for messages, `data: <json>`.
/// Serialized frames hold no raw line breaks (JSON escapes them), so one `data:` line suffices.
fn push_event(out: &mut String, frame: &Utf8Bytes) {
    use std::fmt::Write as _;
    let text = frame.as_str();
    let head: Option<Head<'_>> = serde_json::from_str(text).ok();
    let kind = head.as_ref().map_or("message", |h| h.kind);
    let _ = writeln!(out, "event: {kind}");
    if kind == "message"
        && let Some(seq) = head.as_ref().and_then(|h| h.seq)
    {
        let _ = writeln!(out, "id: {seq}");
    }
    let _ = write!(out, "data: {text}\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_become_events_with_ids_on_messages() {
        let mut out = String::new();
        push_event(
            &mut out,
            &Utf8Bytes::from_static(r#"{"type":"message","seq":7,"text":"a\nb"}"#),
        );
        push_event(
            &mut out,
            &Utf8Bytes::from_static(r#"{"type":"joined","user":{"userId":"u","username":"u"}}"#),
        );
        assert_eq!(
            out,
            "event: message\nid: 7\ndata: {\"type\":\"message\",\"seq\":7,\"text\":\"a\\nb\"}\n\n\
             event: joined\ndata: {\"type\":\"joined\",\"user\":{\"userId\":\"u\",\"username\":\"u\"}}\n\n"
        );
    }
}
