//! Bring your own identity: user tokens signed by the application's own identity provider,
//! checked against the keys it publishes as a JWKS (`--auth-jwks-url`).
//!
//! Keys are fetched with a timeout and cached. A token whose `kid` is not in the cache makes
//! the cache refresh, but at most once per `--auth-jwks-min-refresh-ms` (one fetch at a time;
//! callers meanwhile wait for it and then look again), so a flood of tokens with made-up `kid`s
//! cannot hammer the provider. The cache is also refreshed on use once it is older than
//! [`MAX_KEY_AGE`]. RS256, ES256 and EdDSA keys are used; others are skipped. `iss`, `aud`,
//! `exp` and `nbf` are checked. `sub` becomes the user id `x-<hash of issuer and sub>`, in a
//! namespace of its own; `preferred_username` (else `name`, else `sub`) the display name.

use std::sync::RwLock;
use std::time::{Duration, Instant};

use berth_protocol::claims::{USER_TOKEN_AUDIENCE, UserClaims};
use berth_protocol::ids::EXTERNAL_ID_PREFIX;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::Digest;

/// Keys older than this are fetched again on the next use.
pub const MAX_KEY_AGE: Duration = Duration::from_secs(600);
/// Bound on one JWKS fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_SECS: u64 = 30;
/// Longest display name kept from a token, in characters.
const MAX_NAME_CHARS: usize = 32;
/// Longest display name kept, in bytes (what a ticket's name may hold).
const MAX_NAME_BYTES: usize = 64;

/// Flags of the outside identity provider (`--auth-*`). All three of URL, issuer and audience,
/// or none.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct JwksArgs {
    /// URL of the identity provider's JWKS (e.g. Keycloak's
    /// `https://HOST/realms/REALM/protocol/openid-connect/certs`): its JWTs are then accepted
    /// as user tokens.
    #[arg(long, env = "BERTH_AUTH_JWKS_URL")]
    pub auth_jwks_url: Option<String>,

    /// The `iss` those tokens must carry (e.g. `https://HOST/realms/REALM`).
    #[arg(long, env = "BERTH_AUTH_ISSUER")]
    pub auth_issuer: Option<String>,

    /// The `aud` those tokens must carry (e.g. the client id the application's tokens are
    /// issued for).
    #[arg(long, env = "BERTH_AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,

    /// Fetch the JWKS again for an unknown `kid` at most this often, in milliseconds.
    #[arg(long, env = "BERTH_AUTH_JWKS_MIN_REFRESH_MS", default_value_t = 5000)]
    pub auth_jwks_min_refresh_ms: u64,
}

/// Why the identity provider's settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum JwksConfigError {
    #[error(
        "--auth-jwks-url needs --auth-issuer and --auth-audience (BERTH_AUTH_ISSUER, BERTH_AUTH_AUDIENCE)"
    )]
    Incomplete,
    #[error("--auth-jwks-url {0:?} is not an http(s) URL")]
    Url(String),
    #[error("building the JWKS HTTP client")]
    Client(#[source] reqwest::Error),
}

/// Why an outside token was refused (for logs only; clients see `unauthorized`).
#[derive(Debug, thiserror::Error)]
pub enum ExternalTokenRefused {
    #[error("malformed token: {0}")]
    Malformed(jsonwebtoken::errors::Error),
    #[error("algorithm {0:?} is not accepted")]
    Algorithm(Algorithm),
    #[error("no key of the identity provider matches")]
    UnknownKey,
    #[error("token refused: {0}")]
    Invalid(jsonwebtoken::errors::Error),
}

/// One usable key of the provider.
struct CachedKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

#[derive(Default)]
struct KeyCache {
    keys: Vec<CachedKey>,
    fetched: Option<Instant>,
}

/// The claims read from an outside token (the standard ones are checked by `jsonwebtoken`).
#[derive(serde::Deserialize)]
struct ExternalClaims {
    sub: String,
    exp: u64,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    preferred_username: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

/// Verifies the identity provider's tokens.
pub struct JwksVerifier {
    url: String,
    issuer: String,
    audience: String,
    min_refresh: Duration,
    http: reqwest::Client,
    cache: RwLock<KeyCache>,
    /// When the last fetch started; held while fetching, so fetches never overlap.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    fetches: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for JwksVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksVerifier")
            .field("url", &self.url)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl JwksVerifier {
    /// A verifier for `args`, or `None` when no JWKS URL is set. Fetches nothing yet.
    pub fn from_args(args: &JwksArgs) -> Result<Option<JwksVerifier>, JwksConfigError> {
        let Some(url) = args
            .auth_jwks_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())
        else {
            return Ok(None);
        };
        let (Some(issuer), Some(audience)) = (&args.auth_issuer, &args.auth_audience) else {
            return Err(JwksConfigError::Incomplete);
        };
        match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => return Err(JwksConfigError::Url(url.to_owned())),
        }
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .build()
            .map_err(JwksConfigError::Client)?;
        Ok(Some(JwksVerifier {
            url: url.to_owned(),
            issuer: issuer.clone(),
            audience: audience.clone(),
            min_refresh: Duration::from_millis(args.auth_jwks_min_refresh_ms),
            http,
            cache: RwLock::new(KeyCache::default()),
            last_fetch: tokio::sync::Mutex::new(None),
            fetches: Default::default(),
        }))
    }

    /// How many times the JWKS was fetched (for logs and tests).
    pub fn fetches(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Verifies `token` and answers the user it names, as the claims of a user token.
    pub async fn verify(&self, token: &str) -> Result<UserClaims, ExternalTokenRefused> {
        let header = jsonwebtoken::decode_header(token).map_err(ExternalTokenRefused::Malformed)?;
        if !matches!(
            header.alg,
            Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA
        ) {
            return Err(ExternalTokenRefused::Algorithm(header.alg));
        }
        let kid = header.kid.as_deref();
        let stale = self
            .read_cache()
            .fetched
            .is_none_or(|at| at.elapsed() >= MAX_KEY_AGE);
        if stale || !self.has_key(kid, header.alg) {
            self.refresh().await;
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        let claims = {
            let cache = self.read_cache();
            let mut candidates = cache
                .keys
                .iter()
                .filter(|k| k.alg == header.alg && (kid.is_none() || k.kid.as_deref() == kid))
                .peekable();
            if candidates.peek().is_none() {
                return Err(ExternalTokenRefused::UnknownKey);
            }
            let mut last = None;
            let mut found = None;
            for k in candidates {
                match jsonwebtoken::decode::<ExternalClaims>(token, &k.key, &validation) {
                    Ok(data) => {
                        found = Some(data.claims);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            match (found, last) {
                (Some(c), _) => c,
                (None, Some(e)) => return Err(ExternalTokenRefused::Invalid(e)),
                (None, None) => return Err(ExternalTokenRefused::UnknownKey),
            }
        };
        let name = display_name(
            claims
                .preferred_username
                .as_deref()
                .or(claims.name.as_deref())
                .unwrap_or(&claims.sub),
        );
        Ok(UserClaims {
            sub: external_user_id(&self.issuer, &claims.sub),
            name,
            aud: USER_TOKEN_AUDIENCE.to_owned(),
            iat: claims.iat.unwrap_or(0),
            exp: claims.exp,
            guest: false,
            token_gen: 0,
        })
    }

    fn read_cache(&self) -> std::sync::RwLockReadGuard<'_, KeyCache> {
        self.cache.read().unwrap_or_else(|e| e.into_inner())
    }

    fn has_key(&self, kid: Option<&str>, alg: Algorithm) -> bool {
        self.read_cache()
            .keys
            .iter()
            .any(|k| k.alg == alg && (kid.is_none() || k.kid.as_deref() == kid))
    }

    /// Fetches the JWKS unless a fetch started less than `min_refresh` ago. Failures keep the
    /// old keys.
    pub async fn refresh(&self) {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|at| at.elapsed() < self.min_refresh) {
            return;
        }
        *last = Some(Instant::now());
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(url = %self.url, keys = keys.len(), "identity provider keys fetched");
                let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
                cache.keys = keys;
                cache.fetched = Some(Instant::now());
            }
            Err(why) => {
                tracing::warn!(url = %self.url, error = %why, "cannot fetch the identity provider's keys");
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<CachedKey>, String> {
        let mut resp = self
            .http
            .get(&self.url)
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("answered {}", resp.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("reading: {e}"))? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        #[derive(serde::Deserialize)]
        struct RawSet {
            keys: Vec<serde_json::Value>,
        }
        let set: RawSet = serde_json::from_slice(&body).map_err(|e| format!("not a JWKS: {e}"))?;
        // One key this crate cannot read must not cost the others.
        Ok(set
            .keys
            .into_iter()
            .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
            .filter_map(usable)
            .collect())
    }
}

/// The key, if it is a signing key of an accepted algorithm.
fn usable(jwk: Jwk) -> Option<CachedKey> {
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature)
    {
        return None;
    }
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    let alg = match jwk.common.key_algorithm {
        None => by_type,
        Some(KeyAlgorithm::RS256) if by_type == Algorithm::RS256 => by_type,
        Some(KeyAlgorithm::ES256) if by_type == Algorithm::ES256 => by_type,
        Some(KeyAlgorithm::EdDSA) if by_type == Algorithm::EdDSA => by_type,
        Some(_) => return None,
    };
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    Some(CachedKey {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    })
}

/// `x-` and 24 hex digits of SHA-256 over the issuer and the subject: a stable id per user of
/// the provider that can never equal an account's (`a-`) or a guest's (`g-`) id.
pub fn external_user_id(issuer: &str, sub: &str) -> String {
    let mut h = sha2::Sha256::new();
    h.update(issuer.as_bytes());
    h.update([0]);
    h.update(sub.as_bytes());
    let digest = h.finalize();
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("{EXTERNAL_ID_PREFIX}{hex}")
}

/// A display name from a token: no control characters, at most 32 characters and 64 bytes.
fn display_name(raw: &str) -> String {
    let mut name = String::new();
    for c in raw
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME_CHARS)
    {
        if name.len() + c.len_utf8() > MAX_NAME_BYTES {
            break;
        }
        name.push(c);
    }
    if name.is_empty() {
        "user".to_owned()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_ids_are_namespaced_and_stable() {
        let a = external_user_id("https://idp", "alice");
        assert!(a.starts_with("x-") && a.len() == 26, "{a}");
        assert_eq!(a, external_user_id("https://idp", "alice"));
        assert_ne!(a, external_user_id("https://other", "alice"));
        assert!(berth_protocol::ids::is_valid_room_id(&a));
    }

    #[test]
    fn display_names_are_bounded() {
        assert_eq!(display_name("  Ada\u{7}  "), "Ada");
        assert_eq!(display_name("").as_str(), "user");
        assert_eq!(display_name(&"é".repeat(40)).len(), 64);
        assert_eq!(display_name(&"a".repeat(40)).len(), 32);
    }

    #[test]
    fn settings_must_be_complete() {
        let args = JwksArgs {
            auth_jwks_url: Some("http://idp/certs".into()),
            ..JwksArgs::default()
        };
        assert!(matches!(
            JwksVerifier::from_args(&args),
            Err(JwksConfigError::Incomplete)
        ));
        assert!(
            JwksVerifier::from_args(&JwksArgs::default())
                .unwrap()
                .is_none()
        );
    }
}
