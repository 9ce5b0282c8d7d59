//! The bot's identity: the account `stockbot`, whose password only the bot knows.
//!
//! On its first start the bot picks a random password, writes it to
//! `<data dir>/stockbot.credentials` (mode 0600, before anything is sent, so a crash never leaves
//! an account nobody can sign in to), and registers the account (`POST /api/register`). Later
//! starts sign in with it (`POST /api/login`). The token is renewed when the backend refuses it.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The credentials file, in the data dir.
pub const CREDENTIALS_FILE: &str = "stockbot.credentials";

/// Why the bot could not sign in.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error("cannot reach the backend: {0}")]
    Unreachable(String),
    #[error("the backend refused the bot's sign-in ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("the account {0} exists but {1} holds no credentials for it (another bot data dir?)")]
    Taken(String, PathBuf),
    #[error("credentials file {0}: {1}")]
    File(PathBuf, std::io::Error),
}

impl SignInError {
    /// Worth trying again later (the backend may be starting).
    pub fn is_transient(&self) -> bool {
        matches!(self, SignInError::Unreachable(_))
            || matches!(self, SignInError::Refused { status, .. } if *status >= 500 || *status == 429)
    }
}

#[derive(Serialize, Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

/// Who the bot is once signed in.
#[derive(Debug, Clone)]
pub struct Identity {
    pub token: String,
    pub user_id: String,
    pub username: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignedIn {
    token: String,
    user_id: String,
    username: String,
}

/// Signs in as `username`, registering the account on the first start.
pub async fn sign_in(
    http: &reqwest::Client,
    backend: &str,
    data_dir: &Path,
    username: &str,
) -> Result<Identity, SignInError> {
    let path = data_dir.join(CREDENTIALS_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let creds: Credentials = serde_json::from_slice(&bytes).map_err(|e| {
                SignInError::File(path.clone(), std::io::Error::other(e.to_string()))
            })?;
            post(http, &format!("{backend}/api/login"), &creds).await
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let creds = Credentials {
                username: username.to_owned(),
                password: berth_protocol::webhook::hex(&rand::random::<[u8; 24]>()),
            };
            write_private(&path, &serde_json::to_vec(&creds).expect("serializes"))
                .map_err(|e| SignInError::File(path.clone(), e))?;
            tracing::info!(username, file = %path.display(), "registering the bot's account");
            match post(http, &format!("{backend}/api/register"), &creds).await {
                Err(SignInError::Refused { status: 409, .. }) => {
                    // Not ours: forget the password we made up.
                    let _ = std::fs::remove_file(&path);
                    Err(SignInError::Taken(username.to_owned(), path))
                }
                Err(e) if e.is_transient() => {
                    // Nothing was registered: start afresh next time.
                    let _ = std::fs::remove_file(&path);
                    Err(e)
                }
                other => other,
            }
        }
        Err(e) => Err(SignInError::File(path, e)),
    }
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    creds: &Credentials,
) -> Result<Identity, SignInError> {
    let answer = http
        .post(url)
        .json(creds)
        .send()
        .await
        .map_err(|e| SignInError::Unreachable(e.without_url().to_string()))?;
    let status = answer.status();
    if !status.is_success() {
        let message = answer
            .json::<berth_protocol::ErrorBody>()
            .await
            .map(|b| format!("{}: {}", b.error.code, b.error.message))
            .unwrap_or_default();
        return Err(SignInError::Refused {
            status: status.as_u16(),
            message,
        });
    }
    let signed: SignedIn = answer
        .json()
        .await
        .map_err(|e| SignInError::Unreachable(e.without_url().to_string()))?;
    Ok(Identity {
        token: signed.token,
        user_id: signed.user_id,
        username: signed.username,
    })
}

/// Creates `path` with mode 0600 and `bytes` (never overwriting).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut file = opts.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}
