//! User tokens and room tickets: the two JWTs the backend mints, both EdDSA with the ticket key
//! and told apart by `aud` (see `berth_protocol::claims`).

use std::time::{Duration, UNIX_EPOCH};

use berth_protocol::claims::{
    SEND_TOKEN_USE, SendClaims, TicketClaims, USER_TOKEN_AUDIENCE, UserClaims,
};
use berth_protocol::cluster::Placement;
use jsonwebtoken::{Algorithm, Header, Validation};

use crate::keys::TicketKeys;

/// Lifetime of a send token: it is used at once, by the backend itself.
const SEND_TOKEN_SECS: u64 = 30;

/// Clock skew tolerated when checking a user token's `exp`, in seconds.
const LEEWAY_SECS: u64 = 5;

/// Why a user token was refused. The detail is for logs only; clients see `unauthorized`.
#[derive(Debug, thiserror::Error)]
#[error("user token refused: {0}")]
pub struct TokenRefused(#[from] jsonwebtoken::errors::Error);

/// A minted room ticket with its expiry.
#[derive(Debug, Clone)]
pub struct MintedTicket {
    pub token: String,
    /// Seconds since the Unix epoch.
    pub expires_at: u64,
}

/// Mints and checks tokens with one key pair and the configured lifetimes.
#[derive(Clone, Debug)]
pub struct TokenIssuer {
    keys: TicketKeys,
    user_token_ttl: Duration,
    ticket_ttl: Duration,
}

impl TokenIssuer {
    pub fn new(keys: TicketKeys, user_token_ttl: Duration, ticket_ttl: Duration) -> Self {
        TokenIssuer {
            keys,
            user_token_ttl,
            ticket_ttl,
        }
    }

    /// The key pair (tests decode tickets with its public half).
    pub fn keys(&self) -> &TicketKeys {
        &self.keys
    }

    /// A user token for `user_id` / `username`.
    pub fn mint_user_token(
        &self,
        user_id: &str,
        username: &str,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        Ok(self.mint_user(user_id, username, false, 0)?.0)
    }

    /// A user token and its `exp` (seconds since the epoch): a guest's, or an account's under
    /// its token generation `token_gen`.
    pub fn mint_user(
        &self,
        user_id: &str,
        username: &str,
        guest: bool,
        token_gen: u64,
    ) -> Result<(String, u64), jsonwebtoken::errors::Error> {
        let iat = berth_protocol::now_secs();
        let claims = UserClaims {
            sub: user_id.to_owned(),
            name: username.to_owned(),
            aud: USER_TOKEN_AUDIENCE.to_owned(),
            iat,
            exp: iat + self.user_token_ttl.as_secs(),
            guest,
            token_gen,
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &self.keys.encoding)?;
        Ok((token, claims.exp))
    }

    /// Checks a user token's signature, `exp` and `aud` (a ticket never passes: its `aud` is a
    /// server id).
    pub fn verify_user_token(&self, token: &str) -> Result<UserClaims, TokenRefused> {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[USER_TOKEN_AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        validation.leeway = LEEWAY_SECS;
        Ok(jsonwebtoken::decode::<UserClaims>(token, &self.keys.decoding, &validation)?.claims)
    }

    /// A ticket for `user` into the room of `placement`, valid only on its server and epoch.
    pub fn mint_ticket(
        &self,
        user: &UserClaims,
        placement: &Placement,
    ) -> Result<MintedTicket, jsonwebtoken::errors::Error> {
        let iat = berth_protocol::now_secs();
        let exp = iat + self.ticket_ttl.as_secs();
        let claims = TicketClaims {
            sub: user.sub.clone(),
            name: user.name.clone(),
            room: placement.room_id.clone(),
            aud: placement.server_id.clone(),
            epoch: placement.epoch,
            iat,
            exp,
            jti: berth_protocol::claims::new_ticket_id(),
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &self.keys.encoding)?;
        Ok(MintedTicket {
            token,
            expires_at: exp,
        })
    }
}

impl TokenIssuer {
    /// A send token: `user` may send one message into the room of `placement` through its
    /// server's internal send endpoint (`use` = `send`, so it never passes as a ticket).
    pub fn mint_send_token(
        &self,
        user: &UserClaims,
        placement: &Placement,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let iat = berth_protocol::now_secs();
        let claims = SendClaims {
            sub: user.sub.clone(),
            name: user.name.clone(),
            room: placement.room_id.clone(),
            aud: placement.server_id.clone(),
            epoch: placement.epoch,
            purpose: SEND_TOKEN_USE.to_owned(),
            iat,
            exp: iat + SEND_TOKEN_SECS,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &self.keys.encoding)
    }
}

/// `secs` since the Unix epoch as RFC 3339 (UTC, whole seconds), the form of `expiresAt`.
pub fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer() -> (TokenIssuer, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("berth-tokens-{}", rand::random::<u64>()));
        let keys = crate::keys::load_or_generate(&dir.join("ticket.key.pem")).unwrap();
        (
            TokenIssuer::new(keys, Duration::from_secs(3600), Duration::from_secs(60)),
            dir,
        )
    }

    #[test]
    fn user_token_round_trips_and_ticket_is_not_a_user_token() {
        let (issuer, dir) = issuer();
        let token = issuer.mint_user_token("u-alice", "alice").unwrap();
        let claims = issuer.verify_user_token(&token).unwrap();
        assert_eq!(
            (claims.sub.as_str(), claims.name.as_str()),
            ("u-alice", "alice")
        );
        assert_eq!(claims.aud, USER_TOKEN_AUDIENCE);

        let placement = Placement {
            room_id: "r-1".into(),
            server_id: "s-1".into(),
            url: "ws://x/ws".into(),
            epoch: 3,
            name: "r-1".into(),
            public: false,
        };
        let ticket = issuer.mint_ticket(&claims, &placement).unwrap();
        assert!(issuer.verify_user_token(&ticket.token).is_err());
        assert!(issuer.verify_user_token("garbage").is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn rfc3339_is_utc_seconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_600), "2026-01-01T00:00:00Z");
    }
}
