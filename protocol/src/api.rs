//! Bodies of the backend's public HTTP API (`/api/...`). JSON field names are camelCase.

use serde::{Deserialize, Serialize};

/// `POST /api/login`: with a password, signs an account in; without one, a guest (when the
/// name belongs to no account and guests are allowed).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LoginRequest {
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[A-Za-z0-9_-]{1,32}$", min_length = 1, max_length = 32)
    )]
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// `POST /api/register`: a new account.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterRequest {
    pub username: String,
    pub password: String,
}

/// `POST /api/me/password`: changes an account's password; tokens issued before stop working.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChangePasswordRequest {
    pub old_password: String,
    pub new_password: String,
}

// Hand-written: a password must never reach a log line through `{:?}`.
impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl std::fmt::Debug for RegisterRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterRequest")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ChangePasswordRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangePasswordRequest")
            .finish_non_exhaustive()
    }
}

/// Shortest password accepted, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password accepted, in characters.
pub const MAX_PASSWORD_CHARS: usize = 256;

/// Answer to `POST /api/login`, `POST /api/register`, `POST /api/token/refresh` and
/// `POST /api/me/password`: a user token for the other calls, and who it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LoginResponse {
    pub token: String,
    pub user_id: String,
    pub username: String,
    /// A guest: a name without an account.
    #[serde(default)]
    pub guest: bool,
    /// When the token stops working (RFC 3339); renew it before with `POST /api/token/refresh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// Answer to `GET /api/me`: who the user token names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MeResponse {
    pub user_id: String,
    pub username: String,
    pub guest: bool,
}

/// `POST /api/rooms` (the body is optional; every field has a default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateRoomRequest {
    /// Shown in the room list; 1–64 characters. Defaults to the room id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub name: Option<String>,
    /// Public rooms are listed by `GET /api/rooms`. Defaults to private.
    #[serde(default)]
    pub public: bool,
}

/// Answer to `POST /api/rooms` and `GET /api/rooms/{roomId}`: where the room lives and a ticket
/// to get in. Connect to `url` with `?token=` + `token` before `expiresAt`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RoomTicket {
    pub room_id: String,
    pub url: String,
    pub token: String,
    /// RFC 3339.
    pub expires_at: String,
    /// The session server that hosts the room (informational).
    #[serde(default)]
    pub server_id: String,
    #[serde(default)]
    pub name: String,
}

/// Answer to `GET /api/rooms`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RoomList {
    pub rooms: Vec<RoomSummary>,
}

/// One public room in [`RoomList`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RoomSummary {
    pub room_id: String,
    pub name: String,
    /// Distinct users present, as of the hosting server's last heartbeat.
    pub members: u32,
}

/// Longest room name accepted, in characters.
pub const MAX_ROOM_NAME_CHARS: usize = 64;

/// Why a room name was refused (the message tells the user what to change): the rules of
/// [`crate::text`].
pub use crate::text::TextError as RoomNameError;

/// The one room-name rule, applied wherever a name comes in: surrounding blanks are trimmed, a
/// blank name means "no name" (the room id is shown instead), otherwise at most
/// [`MAX_ROOM_NAME_CHARS`] characters and none of the characters [`crate::text::room_name`]
/// refuses (control, bidirectional, invisible).
pub fn room_name(name: Option<&str>) -> Result<Option<String>, RoomNameError> {
    match name {
        None => Ok(None),
        Some(name) => crate::text::room_name(name).map(|n| n.map(str::to_owned)),
    }
}

#[cfg(test)]
mod room_name_tests {
    use super::*;

    #[test]
    fn blank_is_no_name_and_limits_hold() {
        assert_eq!(room_name(None), Ok(None));
        assert_eq!(room_name(Some("  ")), Ok(None));
        assert_eq!(room_name(Some(" lobby ")), Ok(Some("lobby".into())));
        assert_eq!(room_name(Some(&"é".repeat(64))), Ok(Some("é".repeat(64))));
        assert_eq!(
            room_name(Some(&"x".repeat(65))),
            Err(RoomNameError::NameTooLong)
        );
        assert_eq!(room_name(Some("a\tb")), Err(RoomNameError::NameControl));
        // No spoofing: bidirectional overrides and invisible characters are refused.
        assert_eq!(room_name(Some("a\u{202E}b")), Err(RoomNameError::NameBidi));
        assert!(room_name(Some("\u{200B}")).is_err());
    }
}

/// Answer to `GET /api/rooms/{roomId}/messages?before=SEQ&limit=N`: stored history, oldest first,
/// for scrolling back. `before` is exclusive (absent: the newest messages); `limit` defaults to
/// [`DEFAULT_PAGE_LIMIT`] and is at most [`MAX_PAGE_LIMIT`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MessagePage {
    pub messages: Vec<crate::frames::ChatMessage>,
    /// Older messages remain: ask again with `before` = the first message's `seq`.
    pub has_more: bool,
}

/// Messages per history page when `limit` is absent.
pub const DEFAULT_PAGE_LIMIT: usize = 50;
/// Most messages per history page.
pub const MAX_PAGE_LIMIT: usize = 200;
