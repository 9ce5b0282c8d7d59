//! Private rooms, direct messages and "my rooms" (DESIGN.md "Private rooms, direct messages,
//! read state, typing").
//!
//! Membership lives in the store. The backend checks it before it looks a room up (so it only
//! mints tickets for members), before it pages history and before it adds a member; session
//! servers check it again when a ticket is used, so that a ticket alone never lets a
//! non-member in.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use berth_protocol::api::{AddMemberRequest, DmRequest, DmTicket, MAX_MY_ROOMS, MyRoom, MyRooms};
use berth_protocol::claims::UserClaims;
use berth_protocol::frames::User;
use berth_protocol::{ErrorBody, ErrorCode, ids};
use berth_runtime::http::{Json as JsonBody, RoomId};
use berth_store::{Store, StoreError};
use sha2::Digest as _;

use crate::api::{AuthUser, ticket};
use crate::error::ApiError;
use crate::state::AppState;

/// 403 `not_a_member`.
pub fn not_a_member() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        ErrorCode::NotAMember,
        "this room is private and you are not one of its members",
    )
}

fn user_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::UserNotFound,
        "no account has that name",
    )
}

fn store_unavailable(e: StoreError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::StoreUnavailable,
        "the store is unavailable, try again shortly",
    )
    .with_cause(e)
}

fn store(state: &AppState) -> Result<&Store, ApiError> {
    state.store().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::StoreUnavailable,
            "this deployment keeps no store (--store none): no private rooms",
        )
    })
}

/// Refuses `user_id` with 403 `not_a_member` when `room_id` is private and it is not a member.
/// Rooms the store does not know (or a deployment without a store) are not private.
pub async fn check_access(state: &AppState, room_id: &str, user_id: &str) -> Result<(), ApiError> {
    let Some(store) = state.store() else {
        return Ok(());
    };
    match store.room_access(room_id, user_id).await {
        Ok(Some(access)) if access.private && !access.member => Err(not_a_member()),
        Ok(_) => Ok(()),
        Err(e) => Err(store_unavailable(e)),
    }
}

fn require_account(user: &UserClaims, what: &str) -> Result<(), ApiError> {
    if user.sub.starts_with(ids::ACCOUNT_ID_PREFIX) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::AccountRequired,
            format!("{what} need an account (register first)"),
        ))
    }
}

/// `POST /api/rooms/{roomId}/members` `{"username"}`: a member of a private room adds an
/// account to it. 204; 404 `user_not_found`; 403 `not_a_member`; 400 for rooms that are not
/// private (anyone may join those) and for direct messages (always two people).
#[utoipa::path(post, path = "/api/rooms/{roomId}/members", tag = "conversations",
    params(("roomId" = String, Path, description = "The private room's id")),
    request_body = AddMemberRequest,
    security(("user_token" = [])),
    responses(
        (status = 204, description = "The account is a member"),
        (status = 400, description = "`invalid_request`: not a private room, or a direct message", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`not_a_member`", body = ErrorBody),
        (status = 404, description = "`room_not_found` or `user_not_found`", body = ErrorBody),
        (status = 429, description = "`rate_limited` (with `Retry-After`)", body = ErrorBody),
        (status = 503, description = "`store_unavailable`", body = ErrorBody),
    ))]
pub async fn add_member(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    RoomId(room_id): RoomId,
    JsonBody(req): JsonBody<AddMemberRequest>,
) -> Result<StatusCode, ApiError> {
    let store = store(&state)?;
    let access = store
        .room_access(&room_id, &user.sub)
        .await
        .map_err(store_unavailable)?
        .ok_or_else(ApiError::room_not_found)?;
    if !access.private {
        return Err(ApiError::invalid_request(
            "only private rooms have members to add; anyone may join this room",
        ));
    }
    if !access.member {
        return Err(not_a_member());
    }
    if room_id.starts_with(DM_ROOM_PREFIX) {
        return Err(ApiError::invalid_request(
            "a direct message is between two people",
        ));
    }
    if !ids::is_valid_username(&req.username) {
        return Err(user_not_found());
    }
    let account = store
        .account_by_name(&req.username)
        .await
        .map_err(store_unavailable)?
        .ok_or_else(user_not_found)?;
    if store
        .add_member(&room_id, &account.user_id)
        .await
        .map_err(store_unavailable)?
    {
        tracing::info!(room_id, user_id = %account.user_id, by = %user.sub, "member added");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Prefix of direct-message room ids.
pub const DM_ROOM_PREFIX: &str = "d-";

/// The room id of the pair's direct message: the same whoever asks (a hash of the sorted
/// pair), so that concurrent first requests agree on it before any of them is stored.
pub fn dm_room_id(a: &str, b: &str) -> String {
    let (lo, hi) = berth_store::conversations::dm_pair(a, b);
    let digest = sha2::Sha256::new()
        .chain_update(lo.as_bytes())
        .chain_update([0u8])
        .chain_update(hi.as_bytes())
        .finalize();
    let hex: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
    format!("{DM_ROOM_PREFIX}{hex}")
}

/// `POST /api/dms` `{"username"}`: the one private room of the caller and that account
/// (created on first use), with a ticket into it.
#[utoipa::path(post, path = "/api/dms", tag = "conversations",
    request_body = DmRequest,
    security(("user_token" = [])),
    responses(
        (status = 200, description = "The direct-message room, a ticket into it, and the other person", body = DmTicket),
        (status = 400, description = "`invalid_request`", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`account_required`", body = ErrorBody),
        (status = 404, description = "`user_not_found`", body = ErrorBody),
        (status = 429, description = "`rate_limited` (with `Retry-After`)", body = ErrorBody),
        (status = 503, description = "`store_unavailable`, `no_capacity` or `scheduler_unavailable`", body = ErrorBody),
        (status = 502, description = "`internal`: the scheduler answered oddly", body = ErrorBody),
    ))]
pub async fn open_dm(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    JsonBody(req): JsonBody<DmRequest>,
) -> Result<Json<DmTicket>, ApiError> {
    require_account(&user, "direct messages")?;
    if !ids::is_valid_username(&req.username) {
        return Err(user_not_found());
    }
    let store = store(&state)?;
    let other = store
        .account_by_name(&req.username)
        .await
        .map_err(store_unavailable)?
        .ok_or_else(user_not_found)?;
    if other.user_id == user.sub {
        return Err(ApiError::invalid_request(
            "a direct message needs someone else",
        ));
    }
    let room_id = store
        .open_dm(
            &user.sub,
            &other.user_id,
            &dm_room_id(&user.sub, &other.user_id),
        )
        .await
        .map_err(store_unavailable)?;
    // The scheduler finds the stored room and places it (or answers where it lives).
    let placement = state.scheduler().lookup_room(&room_id).await?;
    let mut ticket = ticket(&state, &user, placement)?;
    ticket.name = other.username.clone();
    Ok(Json(DmTicket {
        ticket,
        dm: User {
            user_id: other.user_id,
            username: other.username,
        },
    }))
}

/// `GET /api/me/rooms`: every room of the caller with its unread count, most recent activity
/// first, from one store query.
#[utoipa::path(get, path = "/api/me/rooms", tag = "conversations",
    security(("user_token" = [])),
    responses(
        (status = 200, description = "The caller's rooms, most recent activity first", body = MyRooms),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 429, description = "`rate_limited` (with `Retry-After`)", body = ErrorBody),
        (status = 503, description = "`store_unavailable`", body = ErrorBody),
    ))]
pub async fn my_rooms(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Json<MyRooms>, ApiError> {
    let rows = store(&state)?
        .my_rooms(&user.sub, MAX_MY_ROOMS)
        .await
        .map_err(store_unavailable)?;
    let rooms = rows
        .into_iter()
        .map(|r| {
            let dm = r.dm.map(|(user_id, username)| User {
                username: username.unwrap_or_else(|| user_id.clone()),
                user_id,
            });
            MyRoom {
                name: dm.as_ref().map_or(r.name, |d| d.username.clone()),
                room_id: r.room_id,
                private: r.private,
                dm,
                last_seq: r.last_seq,
                read_seq: r.read_seq.min(r.last_seq),
                unread: r.last_seq.saturating_sub(r.read_seq),
            }
        })
        .collect();
    Ok(Json(MyRooms { rooms }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn dm_room_ids_do_not_depend_on_who_asks() {
        let a = super::dm_room_id("a-one", "a-two");
        assert_eq!(a, super::dm_room_id("a-two", "a-one"));
        assert_ne!(a, super::dm_room_id("a-one", "a-three"));
        assert!(berth_protocol::ids::is_valid_room_id(&a) && a.starts_with("d-"));
    }
}
