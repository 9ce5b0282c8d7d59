//! Handlers of the public API (`/api/...` and `/healthz`), as DESIGN.md specifies them.

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use berth_protocol::ErrorBody;
use berth_protocol::ErrorCode;
use berth_protocol::api::{
    CreateRoomRequest, DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT, MessagePage, RoomList, RoomSummary,
    RoomTicket,
};
use berth_protocol::claims::UserClaims;
use berth_protocol::cluster::{PlaceRoomRequest, Placement};
use berth_runtime::http::{JsonOrDefault, Query, RoomId};

use crate::error::{ApiError, chain};
use crate::ratelimit::ClientAddr;
use crate::state::AppState;
use crate::tokens;

/// Longest bearer token looked at; anything longer is refused unread.
const MAX_TOKEN_BYTES: usize = 4096;

/// The user behind a valid `Authorization: Bearer <user token>`; refuses with 401 otherwise.
#[derive(Debug, Clone)]
pub struct AuthUser(pub UserClaims);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <user token>"))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty() && token.len() <= MAX_TOKEN_BYTES)
            .ok_or_else(|| ApiError::unauthorized("malformed Authorization header"))?;
        let claims = crate::accounts::authenticate(state, token).await?;
        state.limits().api_per_user.check(&claims.sub)?;
        Ok(AuthUser(claims))
    }
}

/// `POST /api/rooms`: place a new room and hand back a ticket into it.
#[utoipa::path(post, path = "/api/rooms", tag = "rooms",
    request_body(content = Option<CreateRoomRequest>, description = "Optional; every field has a default"),
    security(("user_token" = [])),
    responses(
        (status = 201, description = "The room, placed, and a ticket into it", body = RoomTicket),
        (status = 400, description = "`invalid_request`", body = ErrorBody), (status = 401, description = "`unauthorized`", body = ErrorBody), (status = 413, description = "`invalid_request`: body too large", body = ErrorBody), (status = 503, description = "`no_capacity` (with `Retry-After`) or `scheduler_unavailable`", body = ErrorBody), (status = 502, description = "`internal`: the scheduler answered oddly", body = ErrorBody),
        (status = 429, description = "`rate_limited` (with `Retry-After`)", body = ErrorBody),
    ))]
pub async fn create_room(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    AuthUser(user): AuthUser,
    // The body is optional: empty (or blank) means all defaults.
    JsonOrDefault(req): JsonOrDefault<CreateRoomRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let name = berth_protocol::api::room_name(req.name.as_deref())
        .map_err(|e| ApiError::invalid_request(e.to_string()))?;
    if req.private && req.public {
        return Err(ApiError::invalid_request(
            "a room is either public or private",
        ));
    }
    if req.private && state.store().is_none() {
        return Err(ApiError::invalid_request(
            "private rooms need a store (this deployment runs with --store none)",
        ));
    }
    // After validation, so that a refused body costs no create.
    state
        .limits()
        .create_per_address
        .check(&addr)
        .inspect_err(|_| tracing::info!(%addr, user_id = %user.sub, "room creates rate limited"))?;
    let placement = state
        .scheduler()
        .place_room(&PlaceRoomRequest {
            name,
            public: req.public,
            private: req.private,
            created_by: Some(user.sub.clone()),
        })
        .await?;
    tracing::info!(room_id = %placement.room_id, server_id = %placement.server_id, user_id = %user.sub, "room created");
    Ok((StatusCode::CREATED, Json(ticket(&state, &user, placement)?)))
}

/// `GET /api/rooms/{roomId}`: where a room lives, and a fresh ticket into it.
#[utoipa::path(get, path = "/api/rooms/{roomId}", tag = "rooms",
    params(("roomId" = String, Path, description = "The room's id")),
    security(("user_token" = [])),
    responses(
        (status = 200, description = "Where the room lives and a fresh ticket", body = RoomTicket),
        (status = 401, description = "`unauthorized`", body = ErrorBody), (status = 404, description = "`room_not_found`", body = ErrorBody), (status = 503, description = "`no_capacity` or `scheduler_unavailable`", body = ErrorBody), (status = 502, description = "`internal`: the scheduler answered oddly", body = ErrorBody),
        (status = 429, description = "`rate_limited` (with `Retry-After`)", body = ErrorBody),
    ))]
pub async fn lookup_room(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    // Ids come from URLs: anything odd is refused before it reaches the scheduler or a log.
    RoomId(room_id): RoomId,
) -> Result<Json<RoomTicket>, ApiError> {
    crate::conversations::check_access(&state, &room_id, &user.sub).await?;
    let placement = state.scheduler().lookup_room(&room_id).await?;
    Ok(Json(ticket(&state, &user, placement)?))
}

/// The query of `GET /api/rooms/{roomId}/messages`, read as strings so that a bad value gets
/// our own error body.
#[derive(Debug, serde::Deserialize)]
pub struct PageQuery {
    before: Option<String>,
    limit: Option<String>,
}

/// `GET /api/rooms/{roomId}/messages?before=SEQ&limit=N`: older history from the store, oldest
/// first, for scrolling back (an addition to DESIGN.md; see README "Durable history").
#[utoipa::path(get, path = "/api/rooms/{roomId}/messages", tag = "rooms",
    params(
        ("roomId" = String, Path, description = "The room's id"),
        ("before" = Option<u64>, Query, description = "Messages before this seq (exclusive); absent: the newest", minimum = 1),
        ("limit" = Option<usize>, Query, description = "1-200, default 50", minimum = 1, maximum = 200),
    ),
    security(("user_token" = [])),
    responses(
        (status = 200, description = "Stored history, oldest first", body = MessagePage),
        (status = 400, description = "`invalid_request`", body = ErrorBody), (status = 401, description = "`unauthorized`", body = ErrorBody), (status = 404, description = "`room_not_found`", body = ErrorBody), (status = 503, description = "`store_unavailable`", body = ErrorBody),
        (status = 429, description = "`rate_limited` (with `Retry-After`)", body = ErrorBody),
    ))]
pub async fn room_messages(
    State(state): State<AppState>,
    ClientAddr(addr): ClientAddr,
    AuthUser(user): AuthUser,
    RoomId(room_id): RoomId,
    Query(query): Query<PageQuery>,
) -> Result<Json<MessagePage>, ApiError> {
    state.limits().history_per_user.check(&user.sub)?;
    state.limits().history_per_address.check(&addr)?;
    crate::conversations::check_access(&state, &room_id, &user.sub).await?;
    let before = match query.before.as_deref() {
        None | Some("") => None,
        Some(s) => Some(s.parse::<u64>().ok().filter(|&b| b >= 1).ok_or_else(|| {
            ApiError::invalid_request("before must be a message seq (1 or more)")
        })?),
    };
    let limit = match query.limit.as_deref() {
        None | Some("") => DEFAULT_PAGE_LIMIT,
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=MAX_PAGE_LIMIT).contains(l))
            .ok_or_else(|| {
                ApiError::invalid_request(format!("limit must be 1-{MAX_PAGE_LIMIT}"))
            })?,
    };
    let store = state.store().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::StoreUnavailable,
            "this deployment keeps no history (--store none)",
        )
    })?;
    let unavailable = |e: berth_store::StoreError| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::StoreUnavailable,
            "the message store is unavailable, try again shortly",
        )
        .with_cause(e)
    };
    let page = store
        .messages_before(&room_id, before, limit)
        .await
        .map_err(unavailable)?;
    // No message at all: tell an unknown room from an empty one.
    if page.messages.is_empty()
        && before.is_none()
        && store.room(&room_id).await.map_err(unavailable)?.is_none()
    {
        return Err(ApiError::room_not_found());
    }
    Ok(Json(MessagePage {
        messages: page.messages,
        has_more: page.has_more,
    }))
}

/// `GET /api/rooms`: the public rooms (no token needed).
#[utoipa::path(get, path = "/api/rooms", tag = "rooms",
    responses(
        (status = 200, description = "The public rooms", body = RoomList),
        (status = 503, description = "`scheduler_unavailable`", body = ErrorBody), (status = 502, description = "`internal`: the scheduler answered oddly", body = ErrorBody),
        (status = 429, description = "`rate_limited` (with `Retry-After`)", body = ErrorBody),
    ))]
pub async fn list_rooms(State(state): State<AppState>) -> Result<Json<RoomList>, ApiError> {
    let directory = state.scheduler().public_rooms().await?;
    let rooms = directory
        .rooms
        .into_iter()
        .filter(|r| r.public)
        .map(|r| RoomSummary {
            room_id: r.room_id,
            name: r.name,
            members: r.members,
        })
        .collect();
    Ok(Json(RoomList { rooms }))
}

/// `GET /healthz`: 200 while the scheduler answers its own `/healthz`.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses(
        (status = 200, description = "The scheduler answers", body = Object),
        (status = 503, description = "`scheduler_unavailable`", body = ErrorBody),
    ))]
pub async fn healthz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    match state.scheduler().healthy().await {
        Ok(()) => Ok(Json(serde_json::json!({"status": "ok"}))),
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::SchedulerUnavailable,
            "the scheduler is unavailable",
        )
        .with_cause(chain(&e))),
    }
}

pub(crate) fn ticket(
    state: &AppState,
    user: &UserClaims,
    placement: Placement,
) -> Result<RoomTicket, ApiError> {
    let minted = state
        .issuer()
        .mint_ticket(user, &placement)
        .map_err(ApiError::internal)?;
    Ok(RoomTicket {
        sse_url: berth_protocol::api::sse_url(&placement.url),
        room_id: placement.room_id,
        url: placement.url,
        token: minted.token,
        expires_at: tokens::rfc3339(minted.expires_at),
        server_id: placement.server_id,
        name: placement.name,
    })
}
