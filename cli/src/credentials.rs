//! Where `berth login` keeps its user tokens: `credentials.json` in the user's config directory
//! (`--config-dir`, else `$XDG_CONFIG_HOME/berth`, else `~/.config/berth`), one session per
//! backend URL, readable by the user only (0600).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Session;

/// The file's name inside the config directory.
pub const FILE_NAME: &str = "credentials.json";

/// One stored session.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Stored {
    token: String,
    user_id: String,
    username: String,
    #[serde(default)]
    guest: bool,
    #[serde(default)]
    expires_at: Option<String>,
}

#[derive(Default, Serialize, Deserialize)]
struct File {
    /// By backend URL.
    #[serde(default)]
    sessions: BTreeMap<String, Stored>,
}

/// The config directory: `explicit`, else `$XDG_CONFIG_HOME/berth`, else `$HOME/.config/berth`.
pub fn config_dir(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(dir) = explicit {
        return Some(dir.to_owned());
    }
    let xdg = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty());
    let base = match xdg {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".config"),
    };
    Some(base.join("berth"))
}

fn read(dir: &Path) -> anyhow::Result<File> {
    match std::fs::read(dir.join(FILE_NAME)) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).unwrap_or_default()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(File::default()),
        Err(e) => Err(anyhow::anyhow!(
            "reading {}: {e}",
            dir.join(FILE_NAME).display()
        )),
    }
}

fn write(dir: &Path, file: &File) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(FILE_NAME);
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp)?;
    // An existing file keeps its mode on open: make sure.
    #[cfg(unix)]
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    f.write_all(&serde_json::to_vec_pretty(file)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// The session stored for `backend`, if any.
pub fn load(dir: &Path, backend: &str) -> anyhow::Result<Option<Session>> {
    Ok(read(dir)?.sessions.remove(backend).map(|s| Session {
        token: s.token,
        user_id: s.user_id,
        username: s.username,
        guest: s.guest,
        expires_at: s.expires_at,
    }))
}

/// Stores `session` for `backend` (replacing an older one).
pub fn save(dir: &Path, backend: &str, session: &Session) -> anyhow::Result<()> {
    let mut file = read(dir)?;
    file.sessions.insert(
        backend.to_owned(),
        Stored {
            token: session.token.clone(),
            user_id: session.user_id.clone(),
            username: session.username.clone(),
            guest: session.guest,
            expires_at: session.expires_at.clone(),
        },
    );
    write(dir, &file)
}

/// Forgets the session of `backend`; whether there was one.
pub fn remove(dir: &Path, backend: &str) -> anyhow::Result<bool> {
    let mut file = read(dir)?;
    let had = file.sessions.remove(backend).is_some();
    if had {
        write(dir, &file)?;
    }
    Ok(had)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_round_trip_per_backend_with_mode_0600() {
        let dir = std::env::temp_dir().join(format!(
            "berth-cred-{}-{}",
            std::process::id(),
            berth::protocol::now_ms()
        ));
        let s = Session {
            token: "t1".into(),
            user_id: "a-1".into(),
            username: "Ann".into(),
            guest: false,
            expires_at: Some("2030-01-01T00:00:00Z".into()),
        };
        assert!(load(&dir, "http://a").unwrap().is_none());
        save(&dir, "http://a", &s).unwrap();
        save(
            &dir,
            "http://b",
            &Session {
                token: "t2".into(),
                ..s.clone()
            },
        )
        .unwrap();
        assert_eq!(load(&dir, "http://a").unwrap().unwrap(), s);
        assert_eq!(load(&dir, "http://b").unwrap().unwrap().token, "t2");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(FILE_NAME))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(remove(&dir, "http://a").unwrap());
        assert!(load(&dir, "http://a").unwrap().is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn config_dir_prefers_the_flag() {
        assert_eq!(
            config_dir(Some(Path::new("/x/y"))),
            Some(PathBuf::from("/x/y"))
        );
    }
}
