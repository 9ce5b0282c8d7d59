//! Bodies of the scheduler's internal API (`/v1/...`), used by the backend and session servers.
//! Every call carries `Authorization: Bearer <credential>`: the cluster secret (backend,
//! operators: every call), or a session server's own [`server_credential`], which may only
//! register that server, heartbeat for it, release its rooms, look rooms up and leave.
//!
//! | call | body | answer |
//! | --- | --- | --- |
//! | `POST /v1/rooms` | [`PlaceRoomRequest`] | 201 [`Placement`]; 503 `no_capacity` + `Retry-After` |
//! | `GET /v1/rooms/{id}` | — | 200 [`Placement`]; 404 `room_not_found` |
//! | `GET /v1/rooms?public=true` | — | 200 [`RoomDirectory`] |
//! | `POST /v1/rooms/{id}/release` | [`ReleaseRoom`] | 204; the hosting server disposed of the room (it becomes dormant) |
//! | `POST /v1/servers` | [`RegisterServer`] | 200 [`Registered`] |
//! | `PUT /v1/servers/{id}/heartbeat` | [`Heartbeat`] | 200 [`HeartbeatAck`]; 404 `unknown_server` → register again |
//! | `POST /v1/servers/{id}/drain` | — | 202 |
//! | `DELETE /v1/servers/{id}` | — | 204; a server leaving on its own |
//! | `GET /v1/servers` | — | 200 [`ServerList`] |

use serde::{Deserialize, Serialize};

/// `POST /v1/rooms`: place a new room.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlaceRoomRequest {
    /// Name shown in listings; the scheduler uses the room id when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub public: bool,
    /// Members only (recorded in the store with the room; the creator is its first member).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub private: bool,
    /// Who asked (for logs and per-user limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
}

/// Where a room lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    pub room_id: String,
    pub server_id: String,
    /// Full `ws://` URL of the hosting server's WebSocket endpoint (clients add `?token=`).
    pub url: String,
    /// Grows with every placement; carried in tickets as a fencing token.
    pub epoch: u64,
    pub name: String,
    pub public: bool,
}

/// Answer to `GET /v1/rooms`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomDirectory {
    pub rooms: Vec<RoomInfo>,
}

/// One room in [`RoomDirectory`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RoomInfo {
    pub room_id: String,
    pub name: String,
    pub public: bool,
    pub server_id: String,
    pub epoch: u64,
    /// Distinct users present at the server's last heartbeat.
    pub members: u32,
}

/// `POST /v1/rooms/{id}/release`: the hosting server no longer hosts the room. The room is not
/// forgotten: it becomes *dormant*, and its next lookup places it again (on another server than
/// the releasing one when that one is draining), where its history is loaded from the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseRoom {
    pub server_id: String,
    pub epoch: u64,
    /// A draining server handing a live room over (its members reconnect right after), as
    /// opposed to an idle room disposed of. Informational: both make the room dormant.
    #[serde(default)]
    pub handoff: bool,
}

/// What a session server can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Capacity {
    pub rooms: u32,
    pub members_per_room: u32,
}

/// A room a session server currently hosts, as reported in registration and heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostedRoom {
    pub room_id: String,
    pub epoch: u64,
    /// Distinct users present.
    pub members: u32,
}

/// `POST /v1/servers`: a session server announces itself (also again after the scheduler forgot
/// it, for example after a scheduler restart; `rooms` then rebuilds the directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterServer {
    /// Spawned servers get their id from the scheduler (`--server-id`); outside servers may
    /// leave it out and take the one the scheduler answers with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    /// Full `ws://` URL of its WebSocket endpoint.
    pub url: String,
    pub capacity: Capacity,
    #[serde(default)]
    pub rooms: Vec<HostedRoom>,
    #[serde(default)]
    pub connections: u32,
    #[serde(default)]
    pub draining: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// `http://host:port` of its operator listener (`/metrics`, `/healthz`), when it has one:
    /// `/metrics` is never served on the public port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_url: Option<String>,
}

/// Answer to [`RegisterServer`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registered {
    pub server_id: String,
    /// How often the scheduler expects a heartbeat.
    pub heartbeat_interval_ms: u64,
    /// How long the scheduler waits for a heartbeat before it declares the server dead and may
    /// place its rooms elsewhere. A server that cannot renew within this lease stops serving
    /// first (fencing). Absent from schedulers that predate it: no lease then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_timeout_ms: Option<u64>,
    /// The server's own credential, handed to a server that registered with the cluster
    /// secret: it uses this one from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// `PUT /v1/servers/{id}/heartbeat`: the server's load.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    pub connections: u32,
    pub rooms: Vec<HostedRoom>,
    #[serde(default)]
    pub draining: bool,
}

/// Answer to [`Heartbeat`]: what the scheduler wants of the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatAck {
    pub state: ServerState,
    /// The scheduler asks the server to drain (admin drain, scale-down).
    #[serde(default)]
    pub drain: bool,
    /// Rooms the server reported that the scheduler has placed elsewhere (or forgotten in favour
    /// of a newer placement): the server must stop serving them.
    #[serde(default)]
    pub revoked_rooms: Vec<String>,
}

/// A session server's life: `starting` → `ready` → `draining` → gone; `dead` when heartbeats stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ServerState {
    Starting,
    Ready,
    Draining,
    Dead,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Starting => "starting",
            ServerState::Ready => "ready",
            ServerState::Draining => "draining",
            ServerState::Dead => "dead",
        }
    }
}

/// Answer to `GET /v1/servers`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerList {
    pub servers: Vec<ServerInfo>,
}

/// One session server in [`ServerList`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServerInfo {
    pub id: String,
    /// Empty while `starting`.
    pub url: String,
    pub state: ServerState,
    /// Rooms placed on it (including reserved slots).
    pub rooms: u32,
    pub connections: u32,
    pub capacity: Capacity,
    /// Spawned and supervised by this scheduler (as opposed to started by something else).
    pub managed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub age_secs: u64,
    /// Milliseconds since its last heartbeat (or registration).
    pub last_heartbeat_ms_ago: u64,
    /// Why a `dead` server is dead: its exit status, or how long it stayed silent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_reason: Option<String>,
    /// `http://host:port` of its operator listener (`/metrics`), as it registered it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_url: Option<String>,
}

/// Prefix of a session server's credential: `srv.<server id>.<hex HMAC>`.
const CREDENTIAL_PREFIX: &str = "srv.";

/// The credential of session server `server_id`: `srv.<id>.<hex HMAC-SHA256(secret, id)>`.
/// Only the holder of the cluster secret can mint one, and it names the one server it speaks
/// for, so a compromised session process cannot act for the fleet.
pub fn server_credential(cluster_secret: &str, server_id: &str) -> String {
    format!(
        "{CREDENTIAL_PREFIX}{server_id}.{}",
        hex(&credential_mac(cluster_secret, server_id))
    )
}

/// The server id a credential claims to speak for (`srv.<id>.<mac>`), unchecked: for the server
/// holding it, which has no secret to check it with.
pub fn credential_server_id(credential: &str) -> Option<&str> {
    let (server_id, _mac) = credential
        .strip_prefix(CREDENTIAL_PREFIX)?
        .rsplit_once('.')?;
    (!server_id.is_empty()).then_some(server_id)
}

fn credential_mac(cluster_secret: &str, server_id: &str) -> [u8; 32] {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(cluster_secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(b"berth session server\0");
    mac.update(server_id.as_bytes());
    mac.finalize().into_bytes().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The server id a credential speaks for, when `presented` is a valid server credential under
/// `cluster_secret` (compared in constant time).
pub fn verify_server_credential<'a>(cluster_secret: &str, presented: &'a str) -> Option<&'a str> {
    use hmac::Mac as _;
    let rest = presented.strip_prefix(CREDENTIAL_PREFIX)?;
    let (server_id, mac_hex) = rest.rsplit_once('.')?;
    if server_id.is_empty() || mac_hex.len() != 64 {
        return None;
    }
    let mut given = [0u8; 32];
    for (i, byte) in given.iter_mut().enumerate() {
        *byte = u8::from_str_radix(mac_hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(cluster_secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(b"berth session server\0");
    mac.update(server_id.as_bytes());
    mac.verify_slice(&given).ok().map(|()| server_id)
}

#[cfg(test)]
mod credential_tests {
    use super::*;

    #[test]
    fn a_credential_names_its_server_and_needs_the_secret() {
        let c = server_credential("secret", "s-abc");
        assert!(c.starts_with("srv.s-abc."));
        assert_eq!(verify_server_credential("secret", &c), Some("s-abc"));
        assert_eq!(verify_server_credential("other", &c), None);
        assert_eq!(credential_server_id(&c), Some("s-abc"));
        assert_eq!(credential_server_id("srv..ab"), None);
        assert_eq!(credential_server_id("s-abc"), None);
        let forged = c.replace("s-abc", "s-xyz");
        assert_eq!(verify_server_credential("secret", &forged), None);
        assert_eq!(verify_server_credential("secret", "secret"), None);
        assert_eq!(verify_server_credential("secret", "srv.s-abc.zz"), None);
    }
}
