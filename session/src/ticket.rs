//! Room tickets: EdDSA JWTs minted by the backend, verified here with its public key only.
//!
//! The signature and `exp` are checked by `jsonwebtoken`; `aud` is checked here, after the
//! signature, so that a genuine ticket for another server (421) is told apart from a forged or
//! broken one (401).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

use berth_protocol::claims::{MAX_TICKET_ID_BYTES, SEND_TOKEN_USE, SendClaims, TicketClaims};
use berth_protocol::ids::is_valid_room_id;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

/// Longest token accepted before any parsing.
const MAX_TOKEN_BYTES: usize = 4096;
/// Clock skew tolerated on `exp`, in seconds.
const LEEWAY_SECS: u64 = 5;
/// Longest user id and username accepted from a ticket.
const MAX_USER_FIELD_BYTES: usize = 64;

/// Why a ticket was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// Missing, forged, expired or malformed: 401 `invalid_ticket`.
    #[error("invalid ticket: {0}")]
    Invalid(&'static str),
    /// Genuine, but minted for another server: 421 `wrong_server`.
    #[error("ticket is for another server")]
    WrongServer,
}

/// Checks tickets against the backend's public key.
pub struct TicketVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl TicketVerifier {
    /// `pem` is the backend's SPKI PEM Ed25519 public key (`ticket.pub.pem`).
    pub fn from_public_pem(pem: &[u8]) -> Result<Self, jsonwebtoken::errors::Error> {
        let key = DecodingKey::from_ed_pem(pem)?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        // `aud` is compared by hand below, after the signature is known to be good.
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        Ok(TicketVerifier { key, validation })
    }

    /// Verifies `token` for the server `server_id` (`None` while this server does not know its
    /// own id yet: every ticket is then for another server).
    pub fn verify(
        &self,
        token: &str,
        server_id: Option<&str>,
    ) -> Result<TicketClaims, TicketError> {
        if token.is_empty() {
            return Err(TicketError::Invalid("missing ticket"));
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TicketError::Invalid("ticket too long"));
        }
        let data = jsonwebtoken::decode::<Ticket>(token, &self.key, &self.validation)
            .map_err(decode_error)?;
        if data.claims.purpose.is_some() {
            // A send token (or any other kind to come) never opens a connection.
            return Err(TicketError::Invalid("not a ticket"));
        }
        let claims = data.claims.claims;
        if !is_valid_room_id(&claims.room) {
            return Err(TicketError::Invalid("malformed ticket: room"));
        }
        if !valid_user_field(&claims.sub) || !valid_user_field(&claims.name) {
            return Err(TicketError::Invalid("malformed ticket: user"));
        }
        if claims.jti.is_empty() || claims.jti.len() > MAX_TICKET_ID_BYTES {
            return Err(TicketError::Invalid("malformed ticket: id"));
        }
        match server_id {
            Some(id) if id == claims.aud => Ok(claims),
            _ => Err(TicketError::WrongServer),
        }
    }
}

/// A ticket as decoded: its claims, and the `use` claim that only other kinds of token carry.
#[derive(serde::Deserialize)]
struct Ticket {
    #[serde(flatten)]
    claims: TicketClaims,
    #[serde(rename = "use", default)]
    purpose: Option<serde::de::IgnoredAny>,
}

fn decode_error(e: jsonwebtoken::errors::Error) -> TicketError {
    use jsonwebtoken::errors::ErrorKind;
    TicketError::Invalid(match e.kind() {
        ErrorKind::ExpiredSignature => "ticket expired",
        ErrorKind::InvalidSignature => "bad ticket signature",
        _ => "malformed ticket",
    })
}

impl TicketVerifier {
    /// Verifies a send token (the backend's credential for one message sent over HTTP) for the
    /// server `server_id`: signature, `exp`, `use` = `send`, `aud`. A ticket is refused here
    /// (it has no `use` claim).
    pub fn verify_send(
        &self,
        token: &str,
        server_id: Option<&str>,
    ) -> Result<SendClaims, TicketError> {
        if token.is_empty() {
            return Err(TicketError::Invalid("missing send token"));
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TicketError::Invalid("send token too long"));
        }
        let claims = jsonwebtoken::decode::<SendClaims>(token, &self.key, &self.validation)
            .map_err(decode_error)?
            .claims;
        if claims.purpose != SEND_TOKEN_USE {
            return Err(TicketError::Invalid("not a send token"));
        }
        if !is_valid_room_id(&claims.room) {
            return Err(TicketError::Invalid("malformed send token: room"));
        }
        if !valid_user_field(&claims.sub) || !valid_user_field(&claims.name) {
            return Err(TicketError::Invalid("malformed send token: user"));
        }
        match server_id {
            Some(id) if id == claims.aud => Ok(claims),
            _ => Err(TicketError::WrongServer),
        }
    }
}

/// Ids of the tickets already used on this server, each kept until its ticket expires: a ticket
/// opens one connection.
///
/// An id is remembered as its 64-bit digest under a key of this process (SipHash): 16 bytes an
/// entry instead of a copy of the id, the same for ids of any length. Ids are random and signed by
/// the backend, and the key is secret, so two live tickets share a digest with a chance of about
/// n² / 2⁶⁵ (n tickets live at once); such a ticket is refused as used and its client fetches a
/// fresh one.
#[derive(Default)]
pub struct UsedTickets {
    inner: Mutex<Used>,
    digest: RandomState,
}

#[derive(Default)]
struct Used {
    /// Digest of a ticket id → its `exp` (seconds).
    ids: HashMap<u64, u64>,
    /// When expired ids are next swept out.
    next_sweep: u64,
}

impl UsedTickets {
    /// Records `claims`' ticket as used at `now` (seconds); `false` when it was used before.
    pub fn first_use(&self, claims: &TicketClaims, now: u64) -> bool {
        let mut used = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if now >= used.next_sweep {
            // Expired tickets are refused anyway (their `exp`, plus leeway): forget them.
            used.ids
                .retain(|_, exp| exp.saturating_add(LEEWAY_SECS) >= now);
            used.next_sweep = now + 10;
        }
        match used.ids.entry(self.digest.hash_one(claims.jti.as_str())) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(claims.exp);
                true
            }
        }
    }

    /// Forgets ticket id `jti`: the attempt that spent it was refused, so the ticket may be
    /// presented again (it still opens one connection at most).
    pub fn give_back(&self, jti: &str) {
        let digest = self.digest.hash_one(jti);
        let mut used = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        used.ids.remove(&digest);
    }

    /// Ids remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ids
            .len()
    }
}

fn valid_user_field(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_USER_FIELD_BYTES && !s.chars().any(char::is_control)
}

/// The token of a request: `?token=` first, else `Authorization: Bearer`.
pub fn token_from_request<'a>(
    query_token: Option<&'a str>,
    authorization: Option<&'a str>,
) -> Option<&'a str> {
    query_token.filter(|t| !t.is_empty()).or_else(|| {
        let value = authorization?;
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(token.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_query_tokens() {
        assert_eq!(token_from_request(Some("a"), Some("Bearer b")), Some("a"));
        assert_eq!(token_from_request(None, Some("Bearer b")), Some("b"));
        assert_eq!(token_from_request(Some(""), Some("bearer  b ")), Some("b"));
        assert_eq!(token_from_request(None, Some("Basic b")), None);
        assert_eq!(token_from_request(None, None), None);
    }

    #[test]
    fn a_ticket_id_is_used_once_until_it_expires() {
        let used = UsedTickets::default();
        let claims = |jti: &str, exp: u64| TicketClaims {
            sub: "u".into(),
            name: "a".into(),
            room: "r".into(),
            aud: "s".into(),
            epoch: 0,
            iat: 0,
            exp,
            jti: jti.into(),
        };
        assert!(used.first_use(&claims("a", 100), 50));
        assert!(!used.first_use(&claims("a", 100), 51));
        assert!(used.first_use(&claims("b", 100), 51));
        // Given back by a refused attempt: usable once more.
        used.give_back("b");
        assert!(used.first_use(&claims("b", 100), 52));
        assert!(!used.first_use(&claims("b", 100), 52));
        // Long expired: swept out.
        assert!(used.first_use(&claims("c", 300), 200));
        assert_eq!(used.len(), 1);
    }

    #[test]
    fn user_fields_are_bounded() {
        assert!(valid_user_field("alice"));
        assert!(!valid_user_field(""));
        assert!(!valid_user_field(&"a".repeat(65)));
        assert!(!valid_user_field("a\nb"));
    }
}
