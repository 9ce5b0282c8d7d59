//! The one local-file convention every Berth process shares: when no cluster secret is given,
//! processes on one machine agree on `<data dir>/cluster.secret`, created by whoever comes first.
use std::io::{self, Read, Write};
use std::path::Path;

/// Reads the secret at `path`, or creates it with 32 random bytes (hex) and mode 0600 when it
/// does not exist yet. Safe when several processes race to create it.
pub fn load_or_create(path: &Path) -> io::Result<String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
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

#[cfg(test)]
mod tests {
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
