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
    /// Public rooms are listed by `GET /api/rooms`. Defaults to unlisted.
    #[serde(default)]
    pub public: bool,
    /// Only members (the creator, and accounts members add) may look the room up, page its
    /// history or connect. Never together with `public`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub private: bool,
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
    /// The same room over Server-Sent Events: `GET sseUrl?token=…` with the same ticket (which
    /// opens one stream or one WebSocket, not both). Empty from backends that predate it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sse_url: String,
}

/// The Server-Sent Events URL beside a session server's WebSocket URL: same host and port,
/// `http(s)://` for `ws(s)://`, path `/sse` for `/ws`.
pub fn sse_url(ws_url: &str) -> String {
    let base = http_base(ws_url);
    format!("{base}/sse")
}

/// `http(s)://host:port` of a session server from its WebSocket URL (`ws(s)://host:port/ws`).
pub fn http_base(ws_url: &str) -> String {
    let rest = ws_url
        .strip_prefix("wss://")
        .map(|r| ("https://", r))
        .or_else(|| ws_url.strip_prefix("ws://").map(|r| ("http://", r)));
    let (scheme, rest) = rest.unwrap_or(("http://", ws_url));
    let host = rest
        .strip_suffix("/ws")
        .unwrap_or(rest)
        .trim_end_matches('/');
    format!("{scheme}{host}")
}

/// `POST /api/rooms/{roomId}/messages`: a message sent over HTTP, exactly as a WebSocket `send`
/// (same limits, same errors). Answered 201 with the stored `message` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SendMessageRequest {
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
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

/// `POST /api/rooms/{roomId}/members`: a member adds an account to a private room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AddMemberRequest {
    pub username: String,
}

/// `POST /api/dms`: the direct-message room of the caller and `username`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DmRequest {
    pub username: String,
}

/// Answer to `POST /api/dms`: a ticket into the room, and who the other person is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DmTicket {
    #[serde(flatten)]
    pub ticket: RoomTicket,
    pub dm: crate::frames::User,
}

/// Answer to `GET /api/me/rooms`: every room the user created, joined or was added to, most
/// recent activity first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MyRooms {
    pub rooms: Vec<MyRoom>,
}

/// One room in [`MyRooms`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MyRoom {
    pub room_id: String,
    /// For a direct message, the other person's name.
    pub name: String,
    pub private: bool,
    /// The other person of a direct message; `null` for other rooms.
    pub dm: Option<crate::frames::User>,
    /// The room's latest message `seq`.
    pub last_seq: u64,
    /// Where the user has read up to.
    pub read_seq: u64,
    /// Messages after `readSeq`.
    pub unread: u64,
}

/// Most rooms `GET /api/me/rooms` answers (the most recently active).
pub const MAX_MY_ROOMS: usize = 5000;
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_url_sits_beside_the_websocket_url() {
        assert_eq!(
            sse_url("ws://127.0.0.1:4000/ws"),
            "http://127.0.0.1:4000/sse"
        );
        assert_eq!(
            sse_url("wss://s1.example.com/ws"),
            "https://s1.example.com/sse"
        );
        assert_eq!(http_base("ws://h:1/ws"), "http://h:1");
    }
}
