//! The error body of every HTTP answer: `{"error": {"code": "snake_case_code", "message": "..."}}`.

use serde::{Deserialize, Serialize};

/// Every error code Berth answers with, over HTTP and in WebSocket `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    // Public API.
    InvalidUsername,
    InvalidRequest,
    Unauthorized,
    /// A valid credential that may not do this (a session server's, for an operator call).
    Forbidden,
    RoomNotFound,
    NoCapacity,
    RateLimited,
    NotFound,
    Internal,
    SchedulerUnavailable,
    // Accounts.
    WeakPassword,
    UsernameTaken,
    InvalidCredentials,
    PasswordRequired,
    GuestsDisabled,
    /// The call needs an account (guests and outside identities cannot make it).
    AccountRequired,
    // Private rooms and direct messages.
    /// The room is private and the caller is not one of its members.
    NotAMember,
    /// No account has that name.
    UserNotFound,
    /// The request was not received and answered in time (408).
    RequestTimeout,
    // Session server, before the upgrade.
    InvalidTicket,
    WrongServer,
    RoomFull,
    ServerDraining,
    /// The room's session server cannot be reached (HTTP send).
    ServerUnavailable,
    // Session server, after the upgrade (error frames).
    TextTooLong,
    /// A message text with control characters other than newline and tab.
    InvalidText,
    BadFrame,
    RoomClosed,
    /// The message was not stored (the store refuses writes or cannot be reached), so nobody
    /// received it: send it again later.
    StoreUnavailable,
    // Scheduler internal API.
    UnknownServer,
    ServerFull,
    // Any HTTP service.
    /// The request body is over the service's limit (413).
    PayloadTooLarge,
    /// The path exists but not with this method (405).
    MethodNotAllowed,
}

impl ErrorCode {
    /// The snake_case string of the code, as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidUsername => "invalid_username",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RoomNotFound => "room_not_found",
            ErrorCode::NoCapacity => "no_capacity",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Internal => "internal",
            ErrorCode::SchedulerUnavailable => "scheduler_unavailable",
            ErrorCode::WeakPassword => "weak_password",
            ErrorCode::UsernameTaken => "username_taken",
            ErrorCode::InvalidCredentials => "invalid_credentials",
            ErrorCode::PasswordRequired => "password_required",
            ErrorCode::GuestsDisabled => "guests_disabled",
            ErrorCode::AccountRequired => "account_required",
            ErrorCode::NotAMember => "not_a_member",
            ErrorCode::UserNotFound => "user_not_found",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::InvalidTicket => "invalid_ticket",
            ErrorCode::WrongServer => "wrong_server",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::ServerDraining => "server_draining",
            ErrorCode::ServerUnavailable => "server_unavailable",
            ErrorCode::TextTooLong => "text_too_long",
            ErrorCode::InvalidText => "invalid_text",
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::RoomClosed => "room_closed",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::UnknownServer => "unknown_server",
            ErrorCode::ServerFull => "server_full",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
        }
    }

    /// Every code, for lookups by string.
    pub const ALL: [ErrorCode; 33] = [
        ErrorCode::InvalidUsername,
        ErrorCode::InvalidRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::RoomNotFound,
        ErrorCode::NoCapacity,
        ErrorCode::RateLimited,
        ErrorCode::NotFound,
        ErrorCode::Internal,
        ErrorCode::SchedulerUnavailable,
        ErrorCode::WeakPassword,
        ErrorCode::UsernameTaken,
        ErrorCode::InvalidCredentials,
        ErrorCode::PasswordRequired,
        ErrorCode::GuestsDisabled,
        ErrorCode::AccountRequired,
        ErrorCode::NotAMember,
        ErrorCode::UserNotFound,
        ErrorCode::RequestTimeout,
        ErrorCode::InvalidTicket,
        ErrorCode::WrongServer,
        ErrorCode::RoomFull,
        ErrorCode::ServerDraining,
        ErrorCode::ServerUnavailable,
        ErrorCode::TextTooLong,
        ErrorCode::InvalidText,
        ErrorCode::BadFrame,
        ErrorCode::RoomClosed,
        ErrorCode::StoreUnavailable,
        ErrorCode::UnknownServer,
        ErrorCode::ServerFull,
        ErrorCode::PayloadTooLarge,
        ErrorCode::MethodNotAllowed,
    ];

    /// The code spelled `s` on the wire, if it is one of ours.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON body of every HTTP error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`]. `code` is kept as a string so that clients of an older version
/// still read codes they do not know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: code.as_str().to_owned(),
                message: message.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_strings() {
        for code in [
            ErrorCode::RoomNotFound,
            ErrorCode::NoCapacity,
            ErrorCode::TextTooLong,
            ErrorCode::WrongServer,
            ErrorCode::StoreUnavailable,
        ] {
            assert_eq!(
                serde_json::to_string(&code).unwrap(),
                format!("\"{}\"", code.as_str())
            );
        }
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        let body = serde_json::to_value(ErrorBody::new(ErrorCode::RoomFull, "full")).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": {"code": "room_full", "message": "full"}})
        );
    }
}
