//! Passwords: argon2id hashes (RustCrypto `argon2`), their rules, and a verification that takes
//! as long for an unknown name as for a wrong password.
//!
//! Hashing is deliberately slow and memory-hungry, so it runs on the blocking pool and at most
//! [`Passwords::concurrency`] hashes run at once: a flood of logins queues instead of taking all
//! memory. Parameters are stored inside each hash (PHC string), so changing them affects new
//! hashes only and old ones keep verifying.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use berth_protocol::api::{MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS};
use tokio::sync::Semaphore;

/// argon2id cost parameters (flags `--argon2-*`). The defaults are OWASP's first choice:
/// 19 MiB, 2 passes, 1 lane (about 20-40 ms per hash on a server core).
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct Argon2Args {
    /// argon2id memory cost of new password hashes, in KiB.
    #[arg(long, env = "BERTH_ARGON2_MEMORY_KIB", default_value_t = Params::DEFAULT_M_COST)]
    pub argon2_memory_kib: u32,

    /// argon2id passes (time cost) of new password hashes.
    #[arg(long, env = "BERTH_ARGON2_ITERATIONS", default_value_t = Params::DEFAULT_T_COST)]
    pub argon2_iterations: u32,

    /// argon2id lanes (parallelism) of new password hashes.
    #[arg(long, env = "BERTH_ARGON2_PARALLELISM", default_value_t = Params::DEFAULT_P_COST)]
    pub argon2_parallelism: u32,
}

/// Why a password could not be hashed or checked (a fault of ours, never the caller's).
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("invalid argon2 parameters: {0}")]
    Params(String),
    #[error("hashing failed: {0}")]
    Hash(String),
    #[error("the hashing task failed")]
    Task,
}

/// Hashes and verifies passwords with one set of parameters.
#[derive(Clone)]
pub struct Passwords {
    params: Params,
    /// A hash of a random password, verified against when a name has no account, so that an
    /// unknown name costs as much time as a wrong password.
    dummy: Arc<str>,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passwords")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl Passwords {
    /// Checks the parameters and makes the dummy hash (one hash: call it at start).
    pub fn new(args: &Argon2Args) -> Result<Passwords, PasswordError> {
        let params = Params::new(
            args.argon2_memory_kib,
            args.argon2_iterations,
            args.argon2_parallelism,
            None,
        )
        .map_err(|e| PasswordError::Params(e.to_string()))?;
        let dummy_password: [u8; 32] = rand::random();
        let dummy = hash_with(&params, &dummy_password)?;
        let concurrency = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Passwords {
            params,
            dummy: dummy.into(),
            permits: Arc::new(Semaphore::new(concurrency)),
        })
    }

    /// The PHC string of a new argon2id hash of `password`, with a fresh random salt.
    pub async fn hash(&self, password: &str) -> Result<String, PasswordError> {
        let params = self.params.clone();
        let password = password.to_owned();
        self.blocking(move || hash_with(&params, password.as_bytes()))
            .await?
    }

    /// Whether `password` matches `hash` (`None`: the name has no account, so it is checked
    /// against a dummy hash and never matches). The comparison is constant-time; a malformed
    /// stored hash never matches.
    pub async fn verify(&self, password: &str, hash: Option<&str>) -> Result<bool, PasswordError> {
        let known = hash.is_some();
        let hash = hash.map_or_else(|| self.dummy.to_string(), str::to_owned);
        let password = password.to_owned();
        let matched = self
            .blocking(move || {
                PasswordHash::new(&hash).is_ok_and(|parsed| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
            })
            .await?;
        Ok(known && matched)
    }

    /// Runs `f` on the blocking pool once a hashing permit is free.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PasswordError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| PasswordError::Task)?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|_| PasswordError::Task)
    }
}

fn hash_with(params: &Params, password: &[u8]) -> Result<String, PasswordError> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| PasswordError::Hash(e.to_string()))?;
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Whether `password` is acceptable for a new account: 8-256 characters.
pub fn acceptable(password: &str) -> bool {
    (MIN_PASSWORD_CHARS..=MAX_PASSWORD_CHARS).contains(&password.chars().count())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> Passwords {
        Passwords::new(&Argon2Args {
            argon2_memory_kib: 64,
            argon2_iterations: 1,
            argon2_parallelism: 1,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn hashes_verify_and_never_hold_the_password() {
        let p = cheap();
        let hash = p.hash("correct horse").await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{hash}");
        assert!(!hash.contains("correct horse"));
        assert!(p.verify("correct horse", Some(&hash)).await.unwrap());
        assert!(!p.verify("correct horsE", Some(&hash)).await.unwrap());
        // Two hashes of one password differ (fresh salt).
        assert_ne!(hash, p.hash("correct horse").await.unwrap());
        // No account: never a match, whatever the password.
        assert!(!p.verify("correct horse", None).await.unwrap());
        assert!(!p.verify("x", Some("not a hash")).await.unwrap());
    }

    #[test]
    fn password_rules() {
        assert!(!acceptable("1234567"));
        assert!(acceptable("12345678"));
        assert!(acceptable(&"é".repeat(256)));
        assert!(!acceptable(&"a".repeat(257)));
    }

    #[test]
    fn bad_parameters_are_refused() {
        let args = Argon2Args {
            argon2_memory_kib: 1,
            argon2_iterations: 0,
            argon2_parallelism: 1,
        };
        assert!(Passwords::new(&args).is_err());
    }
}
