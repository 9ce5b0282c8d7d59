//! The ticket signing key: an Ed25519 key pair kept as PEM files in the data dir.
//!
//! The backend is the only holder of the private key (PKCS#8 PEM, mode 0600); the public key
//! (SPKI PEM) is written beside it for the session servers, which verify tickets but can never
//! mint them. Key material is never logged, only paths.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use jsonwebtoken::{DecodingKey, EncodingKey};

/// Why the key files could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a PKCS#8 PEM Ed25519 private key")]
    BadPrivateKey { path: PathBuf },
    #[error("encoding the Ed25519 key as PEM/DER failed")]
    Encode,
}

/// The loaded key pair, ready for `jsonwebtoken`.
#[derive(Clone)]
pub struct TicketKeys {
    /// Signs user tokens and tickets.
    pub encoding: EncodingKey,
    /// Verifies user tokens (and, in tests, tickets).
    pub decoding: DecodingKey,
    /// The public key as SPKI PEM, exactly as written to the `.pub.pem` file.
    pub public_pem: String,
    /// Where the private key lives.
    pub private_path: PathBuf,
    /// Where the public key lives.
    pub public_path: PathBuf,
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKeys")
            .field("private_path", &self.private_path)
            .field("public_path", &self.public_path)
            .finish_non_exhaustive()
    }
}

/// The public key file that goes with a private key file: `X.key.pem` → `X.pub.pem`,
/// `X.pem` → `X.pub.pem`, anything else → `<name>.pub.pem`, in the same folder.
pub fn public_key_path(private: &Path) -> PathBuf {
    let name = private
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name
        .strip_suffix(".key.pem")
        .or_else(|| name.strip_suffix(".pem"))
        .unwrap_or(&name);
    private.with_file_name(format!("{stem}.pub.pem"))
}

/// Loads the private key at `private_path`, or generates one (and its directory) when the file
/// does not exist. The public key file is (re)written whenever it is missing or does not match.
pub fn load_or_generate(private_path: &Path) -> Result<TicketKeys, KeyError> {
    if let Some(dir) = private_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        berth_runtime::secret::private_dir(dir).map_err(io_err("creating directory", dir))?;
    }
    berth_runtime::secret::private_file(private_path)
        .map_err(io_err("protecting", private_path))?;
    let signing = match std::fs::read_to_string(private_path) {
        Ok(pem) => {
            let key = SigningKey::from_pkcs8_pem(&pem).map_err(|_| KeyError::BadPrivateKey {
                path: private_path.to_owned(),
            })?;
            tracing::info!(path = %private_path.display(), "loaded ticket private key");
            key
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => generate(private_path)?,
        Err(e) => return Err(io_err("reading", private_path)(e)),
    };

    let public_path = public_key_path(private_path);
    let public_pem = signing
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|_| KeyError::Encode)?;
    let current = std::fs::read_to_string(&public_path).ok();
    if current.as_deref() != Some(public_pem.as_str()) {
        std::fs::write(&public_path, public_pem.as_bytes())
            .map_err(io_err("writing", &public_path))?;
        tracing::info!(path = %public_path.display(), "wrote ticket public key");
    }

    let der = signing.to_pkcs8_der().map_err(|_| KeyError::Encode)?;
    Ok(TicketKeys {
        encoding: EncodingKey::from_ed_der(der.as_bytes()),
        decoding: DecodingKey::from_ed_der(signing.verifying_key().as_bytes()),
        public_pem,
        private_path: private_path.to_owned(),
        public_path,
    })
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> KeyError + 'a {
    move |source| KeyError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Creates a fresh key file. `create_new` makes a concurrent starter lose cleanly; it then reads
/// the winner's key.
fn generate(path: &Path) -> Result<SigningKey, KeyError> {
    let key = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|_| KeyError::Encode)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    match opts.open(path) {
        Ok(mut file) => {
            file.write_all(pem.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|source| KeyError::Io {
                    action: "writing",
                    path: path.to_owned(),
                    source,
                })?;
            tracing::info!(path = %path.display(), "generated ticket private key");
            Ok(key)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // Someone else is creating it right now: wait for the content.
            for _ in 0..50 {
                if let Ok(pem) = std::fs::read_to_string(path)
                    && let Ok(key) = SigningKey::from_pkcs8_pem(&pem)
                {
                    return Ok(key);
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(KeyError::BadPrivateKey {
                path: path.to_owned(),
            })
        }
        Err(source) => Err(KeyError::Io {
            action: "creating",
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> PathBuf {
        std::env::temp_dir().join(format!("berth-keys-{}", rand::random::<u64>()))
    }

    #[test]
    fn public_path_is_derived_from_the_private_one() {
        assert_eq!(
            public_key_path(Path::new("/d/ticket.key.pem")),
            PathBuf::from("/d/ticket.pub.pem")
        );
        assert_eq!(
            public_key_path(Path::new("/d/mine.pem")),
            PathBuf::from("/d/mine.pub.pem")
        );
        assert_eq!(
            public_key_path(Path::new("/d/raw")),
            PathBuf::from("/d/raw.pub.pem")
        );
    }

    #[test]
    fn generated_once_then_reused_and_public_key_restored() {
        let dir = temp_dir();
        let path = dir.join("nested/ticket.key.pem");
        let a = load_or_generate(&path).unwrap();
        let pem = std::fs::read_to_string(&path).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let public = std::fs::read_to_string(dir.join("nested/ticket.pub.pem")).unwrap();
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"));
        assert_eq!(public, a.public_pem);
        // The session servers' way of reading it must work.
        DecodingKey::from_ed_pem(public.as_bytes()).unwrap();

        std::fs::remove_file(&a.public_path).unwrap();
        let b = load_or_generate(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            pem,
            "private key kept"
        );
        assert_eq!(b.public_pem, a.public_pem);
        assert_eq!(
            std::fs::read_to_string(&b.public_path).unwrap(),
            public,
            "public key rewritten"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn garbage_key_is_refused() {
        let dir = temp_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ticket.key.pem");
        std::fs::write(&path, "not a key").unwrap();
        assert!(matches!(
            load_or_generate(&path),
            Err(KeyError::BadPrivateKey { .. })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
