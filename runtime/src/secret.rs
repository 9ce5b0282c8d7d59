//! The one local-file convention every Berth process shares: when no cluster secret is given,
//! processes on one machine agree on `<data dir>/cluster.secret`, created by whoever comes first.
use std::io::{self, Read, Write};
use std::path::Path;

/// Reads the secret at `path`, or creates it with 32 random bytes (hex) and mode 0600 when it
/// does not exist yet. Safe when several processes race to create it.
pub fn load_or_create(path: &Path) -> io::Result<String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        private_dir(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    match opts.open(path) {
        Ok(mut file) => {
            let secret: String = (0..32)
                .map(|_| format!("{:02x}", rand::random::<u8>()))
                .collect();
            file.write_all(secret.as_bytes())?;
            file.sync_all()?;
            Ok(secret)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // Another process may be between create and write: give it a moment.
            for _ in 0..50 {
                let mut s = String::new();
                std::fs::File::open(path)?.read_to_string(&mut s)?;
                let s = s.trim().to_owned();
                if !s.is_empty() {
                    return Ok(s);
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is empty", path.display()),
            ))
        }
        Err(e) => Err(e),
    }
}

/// Creates `dir` (and its parents) and makes it private to this user (0700): it holds the
/// cluster secret, the ticket key and the database. A shared directory (sticky bit, like
/// `/tmp`) is left as it is rather than locked for everyone else.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o1000 == 0 && mode & 0o777 != 0o700 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
}

/// Makes an existing file readable and writable by this user only (0600); a missing file is
/// not an error. For files created before Berth tightened their modes.
pub fn private_file(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(path) {
            Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            }
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[cfg(unix)]
    #[test]
    fn data_dir_and_secret_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("berth-mode-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.join("cluster.secret");
        super::load_or_create(&path).unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&path), 0o600);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn created_once_then_read_back() {
        let dir = std::env::temp_dir().join(format!("berth-secret-{}", rand::random::<u64>()));
        let path = dir.join("cluster.secret");
        let a = super::load_or_create(&path).unwrap();
        let b = super::load_or_create(&path).unwrap();
        assert_eq!(a.len(), 64);
        assert_eq!(a, b);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
