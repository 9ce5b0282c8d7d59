//! JWT claims. Both kinds are signed by the backend with Ed25519 (`EdDSA`); they are told apart
//! by `aud`, so a user token can never pass as a ticket nor a ticket as a user token.

use serde::{Deserialize, Serialize};

/// The `aud` of every user token.
pub const USER_TOKEN_AUDIENCE: &str = "berth-api";

/// Claims of a user token, minted by `POST /api/login`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserClaims {
    /// User id.
    pub sub: String,
    /// Username.
    pub name: String,
    /// Always [`USER_TOKEN_AUDIENCE`].
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
    /// A guest (a name without an account). Absent in tokens minted before accounts existed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub guest: bool,
    /// The account's token generation when the token was minted: changing the password moves
    /// it on, which refuses every older token.
    #[serde(default, rename = "gen", skip_serializing_if = "is_zero")]
    pub token_gen: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Claims of a room ticket: one user, one room, one session server, short-lived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketClaims {
    /// User id.
    pub sub: String,
    /// Username.
    pub name: String,
    /// Room id.
    pub room: String,
    /// The id of the one session server that accepts this ticket.
    pub aud: String,
    /// The placement epoch the ticket was minted for (a fencing token: a server refuses tickets
    /// of a placement it does not own). Absent in tickets of tools that do not know placements.
    #[serde(default)]
    pub epoch: u64,
    pub iat: u64,
    pub exp: u64,
    /// The ticket's own id: a session server remembers it until `exp` and refuses a second
    /// connection with the same ticket. Required (an empty one is refused).
    #[serde(default)]
    pub jti: String,
}

/// Longest ticket id accepted, in bytes.
pub const MAX_TICKET_ID_BYTES: usize = 64;

/// A fresh random ticket id (128 bits, hex).
pub fn new_ticket_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The `use` claim of a send token.
pub const SEND_TOKEN_USE: &str = "send";

/// Claims of a send token: the backend's short-lived credential for one message sent over HTTP
/// (`POST /api/rooms/{roomId}/messages`), presented to the internal send endpoint of the one
/// session server that hosts the room. Signed with the ticket key like tickets, but with a
/// required `use` = [`SEND_TOKEN_USE`] that tickets never carry: a ticket is refused as a send
/// token (the claim is missing) and a send token is refused as a ticket (the claim is present).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendClaims {
    /// User id of the sender.
    pub sub: String,
    /// Username of the sender.
    pub name: String,
    /// Room id.
    pub room: String,
    /// The id of the session server that accepts this token.
    pub aud: String,
    /// The placement epoch, as in tickets.
    #[serde(default)]
    pub epoch: u64,
    /// Always [`SEND_TOKEN_USE`].
    #[serde(rename = "use")]
    pub purpose: String,
    pub iat: u64,
    pub exp: u64,
}
