//! WebSocket frames between a client and a session server: JSON text frames, each an object
//! with a `type`.

use serde::{Deserialize, Serialize};

/// A user as other members see it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct User {
    pub user_id: String,
    pub username: String,
}

/// One chat message, as delivered live and in `welcome.history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChatMessage {
    /// Increases by exactly one per message within a room.
    pub seq: u64,
    pub user_id: String,
    pub username: String,
    pub text: String,
    /// RFC 3339, UTC.
    pub ts: String,
    /// The sender's own id for this message, echoed so it can match its send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// Server → client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Always the first frame of a connection.
    #[serde(rename_all = "camelCase")]
    Welcome {
        room_id: String,
        you: User,
        members: Vec<User>,
        history: Vec<ChatMessage>,
        /// The room's latest message sequence number (0 before the first message).
        seq: u64,
        /// The session server hosting the room (informational).
        #[serde(default)]
        server_id: String,
        /// The placement epoch of the room on this server (informational; absent from servers
        /// that predate it and in `--standalone` mode).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<u64>,
        /// Stored read positions of the room's members (furthest first, at most
        /// [`MAX_WELCOME_READS`]); absent from servers that predate read state.
        #[serde(default)]
        reads: Vec<ReadPosition>,
    },
    Message(ChatMessage),
    Joined {
        user: User,
    },
    Left {
        user: User,
    },
    /// `userId` has read up to `seq` (read positions never move backwards). A user's own
    /// `message` moves its read position too, without a `read` frame.
    #[serde(rename_all = "camelCase")]
    Read {
        user_id: String,
        seq: u64,
    },
    /// `user` started or stopped typing (never sent to the typist's own connections). The
    /// server sends `active: false` itself when the user sends, leaves, or stops renewing.
    Typing {
        user: User,
        active: bool,
    },
    /// A refused frame; the connection stays open unless a close follows. `clientId` names
    /// the refused `send` when it had one, so the sender can mark that message undelivered.
    #[serde(rename_all = "camelCase")]
    Error {
        code: String,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
    },
}

/// Client → server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    #[serde(rename_all = "camelCase")]
    Send {
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
    },
    /// The user has read the room up to `seq` (stored; never moves backwards).
    Read { seq: u64 },
    /// The user is typing (`true`, renewed at least every [`TYPING_TIMEOUT_MS`]) or stopped.
    Typing { active: bool },
}

/// One member's read position, in `welcome.reads`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadPosition {
    pub user_id: String,
    pub seq: u64,
}

/// Most read positions a `welcome` carries.
pub const MAX_WELCOME_READS: usize = 256;

/// A typing state not renewed for this long is ended by the server (`typing {active: false}`).
pub const TYPING_TIMEOUT_MS: u64 = 6000;

/// WebSocket close codes Berth uses.
pub mod close {
    /// The client broke the framing protocol (unmasked frame, oversize or fragmented control
    /// frame, unknown opcode).
    pub const PROTOCOL: u16 = 1002;
    /// A text frame that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// Abuse: oversize frames, flooding.
    pub const POLICY: u16 = 1008;
    /// The server hit an internal error (for example its room failed).
    pub const INTERNAL: u16 = 1011;
    /// The server is going away: look the room up again and reconnect.
    pub const RESTART: u16 = 1012;
}

/// Longest `clientId` accepted, in bytes.
pub const MAX_CLIENT_ID_BYTES: usize = 64;

/// The query parameter (beside `token`) with which a reconnecting client asks for the messages
/// after the last `seq` it saw: `welcome.history` then holds exactly the messages with a greater
/// `seq`, at most [`MAX_RESUME_MESSAGES`] of them (the newest; page older ones over HTTP).
pub const SINCE_PARAM: &str = "since";

/// Most messages a resuming `welcome` carries.
pub const MAX_RESUME_MESSAGES: usize = 1000;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn message_frame_is_flat() {
        let frame = ServerFrame::Message(ChatMessage {
            seq: 7,
            user_id: "u-1".into(),
            username: "alice".into(),
            text: "hi".into(),
            ts: "2026-01-01T00:00:00Z".into(),
            client_id: Some("c1".into()),
        });
        let v = serde_json::to_value(&frame).unwrap();
        assert_eq!(
            v,
            json!({"type": "message", "seq": 7, "userId": "u-1", "username": "alice", "text": "hi",
                   "ts": "2026-01-01T00:00:00Z", "clientId": "c1"})
        );
        assert_eq!(serde_json::from_value::<ServerFrame>(v).unwrap(), frame);
    }

    #[test]
    fn send_frame_parses_with_and_without_client_id() {
        let f: ClientFrame = serde_json::from_str(r#"{"type":"send","text":"yo"}"#).unwrap();
        assert_eq!(
            f,
            ClientFrame::Send {
                text: "yo".into(),
                client_id: None
            }
        );
        let f: ClientFrame =
            serde_json::from_str(r#"{"type":"send","text":"yo","clientId":"x"}"#).unwrap();
        assert_eq!(
            f,
            ClientFrame::Send {
                text: "yo".into(),
                client_id: Some("x".into())
            }
        );
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"shout","text":"yo"}"#).is_err());
    }

    #[test]
    fn read_and_typing_frames() {
        let f: ClientFrame = serde_json::from_str(r#"{"type":"read","seq":4}"#).unwrap();
        assert_eq!(f, ClientFrame::Read { seq: 4 });
        let f: ClientFrame = serde_json::from_str(r#"{"type":"typing","active":true}"#).unwrap();
        assert_eq!(f, ClientFrame::Typing { active: true });
        let v = serde_json::to_value(ServerFrame::Read {
            user_id: "u-1".into(),
            seq: 4,
        })
        .unwrap();
        assert_eq!(v, json!({"type": "read", "userId": "u-1", "seq": 4}));
        let v = serde_json::to_value(ServerFrame::Typing {
            user: User {
                user_id: "u-1".into(),
                username: "a".into(),
            },
            active: false,
        })
        .unwrap();
        assert_eq!(
            v,
            json!({"type": "typing", "user": {"userId": "u-1", "username": "a"}, "active": false})
        );
    }

    #[test]
    fn welcome_uses_camel_case() {
        let v = serde_json::to_value(ServerFrame::Welcome {
            room_id: "r-1".into(),
            you: User {
                user_id: "u-1".into(),
                username: "a".into(),
            },
            members: vec![],
            history: vec![],
            seq: 0,
            server_id: "s-1".into(),
            epoch: Some(9),
            reads: vec![ReadPosition {
                user_id: "u-2".into(),
                seq: 3,
            }],
        })
        .unwrap();
        assert_eq!(v["type"], "welcome");
        assert_eq!(v["roomId"], "r-1");
        assert_eq!(v["you"]["userId"], "u-1");
        assert_eq!(v["serverId"], "s-1");
        assert_eq!(v["epoch"], 9);
        assert_eq!(v["reads"], json!([{"userId": "u-2", "seq": 3}]));
        // Older servers send no epoch.
        let old = json!({"type": "welcome", "roomId": "r", "you": {"userId": "u", "username": "a"},
                         "members": [], "history": [], "seq": 0});
        assert!(matches!(
            serde_json::from_value(old).unwrap(),
            ServerFrame::Welcome { epoch: None, .. }
        ));
    }
}
