//! [`TicketMinter`]: the direct mode's stand-in for the backend — it signs room tickets with
//! the backend's private key, so that a session server (or a peer speaking the same protocol)
//! can be loaded without a backend or a scheduler.

use std::path::Path;

use berth_protocol::claims::TicketClaims;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use super::BenchError;

/// How long minted tickets live: longer than any sane ramp-up.
const TICKET_TTL_SECS: u64 = 3600;

/// Signs tickets for one session server.
pub(crate) struct TicketMinter {
    key: EncodingKey,
    server_id: String,
}

impl std::fmt::Debug for TicketMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketMinter")
            .field("server_id", &self.server_id)
            .finish_non_exhaustive()
    }
}

impl TicketMinter {
    /// Reads the Ed25519 private key (PKCS#8 PEM) at `path`.
    pub fn from_pem_file(path: &Path, server_id: &str) -> Result<TicketMinter, BenchError> {
        let pem = std::fs::read(path).map_err(|source| BenchError::TicketKey {
            path: path.to_owned(),
            message: source.to_string(),
        })?;
        let key = EncodingKey::from_ed_pem(&pem).map_err(|e| BenchError::TicketKey {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Ok(TicketMinter {
            key,
            server_id: server_id.to_owned(),
        })
    }

    /// A ticket for user `user_id` (`username`) into `room`, valid for an hour.
    pub fn mint(&self, user_id: &str, username: &str, room: &str) -> Result<String, BenchError> {
        let now = berth_protocol::now_secs();
        let claims = TicketClaims {
            sub: user_id.to_owned(),
            name: username.to_owned(),
            room: room.to_owned(),
            aud: self.server_id.clone(),
            epoch: 0,
            iat: now,
            exp: now + TICKET_TTL_SECS,
            jti: berth_protocol::claims::new_ticket_id(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &self.key)
            .map_err(|e| BenchError::Mint(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A fixed Ed25519 test key pair (RFC 8032 test vector 1), PKCS#8 and SPKI.
    const PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n-----END PRIVATE KEY-----\n";
    const PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n-----END PUBLIC KEY-----\n";

    #[test]
    fn minted_tickets_verify_with_the_public_key() {
        let dir = std::env::temp_dir().join(format!("berth-bench-key-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k.pem");
        std::fs::write(&path, PRIVATE).unwrap();
        let minter = TicketMinter::from_pem_file(&path, "s-bench").unwrap();
        let token = minter.mint("u-1", "bench-1", "bench-room-0").unwrap();

        let key = jsonwebtoken::DecodingKey::from_ed_pem(PUBLIC.as_bytes()).unwrap();
        let mut v = jsonwebtoken::Validation::new(Algorithm::EdDSA);
        v.set_audience(&["s-bench"]);
        let claims = jsonwebtoken::decode::<TicketClaims>(&token, &key, &v)
            .unwrap()
            .claims;
        assert_eq!(
            (claims.sub.as_str(), claims.room.as_str()),
            ("u-1", "bench-room-0")
        );
        assert!(claims.exp > berth_protocol::now_secs() + 3000);
        assert!(!format!("{minter:?}").contains("PRIVATE"));

        assert!(TicketMinter::from_pem_file(&dir.join("missing.pem"), "s").is_err());
        std::fs::write(&path, "not a key").unwrap();
        assert!(TicketMinter::from_pem_file(&path, "s").is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
