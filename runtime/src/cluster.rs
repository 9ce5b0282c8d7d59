//! [`ClusterArgs`]: the flags that tie a process to its cluster, the same in every service.

use std::path::PathBuf;
use std::sync::Arc;

/// Where the scheduler is, the secret of its internal API, and where keys and data live.
/// Flattened into each service's config (`#[command(flatten)]`).
#[derive(clap::Args, Clone)]
pub struct ClusterArgs {
    /// Where the scheduler's internal API is (used by the backend and session servers); a
    /// comma-separated list of replicas, tried in turn when one fails.
    #[arg(
        long,
        env = "BERTH_SCHEDULER_URL",
        default_value = "http://127.0.0.1:7070"
    )]
    pub scheduler_url: String,

    /// Shared secret of the scheduler API (bearer). When unset, `<data-dir>/cluster.secret` is
    /// read, or created when missing.
    #[arg(long, env = "BERTH_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,

    /// Where keys and data live.
    #[arg(long, env = "BERTH_DATA_DIR", default_value = "./.berth")]
    pub data_dir: PathBuf,
}

/// Why no cluster secret could be had.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read or create the cluster secret at {}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the cluster secret is empty")]
    Empty,
}

impl ClusterArgs {
    /// Where the cluster secret is read from when none is given.
    pub fn secret_path(&self) -> PathBuf {
        self.data_dir.join("cluster.secret")
    }

    /// The cluster secret: the flag or environment variable (trimmed), else the shared file
    /// (created when missing). Never empty.
    pub fn secret(&self) -> Result<ClusterSecret, SecretError> {
        let secret = match &self.cluster_secret {
            Some(given) => given.trim().to_owned(),
            None => {
                let path = self.secret_path();
                let secret =
                    crate::secret::load_or_create(&path).map_err(|source| SecretError::File {
                        path: path.clone(),
                        source,
                    })?;
                tracing::info!(path = %path.display(), "cluster secret from file");
                secret
            }
        };
        if secret.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(ClusterSecret(Arc::from(secret)))
    }
}

// By hand, so that the secret never reaches a log line through `{:?}`.
impl std::fmt::Debug for ClusterArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterArgs")
            .field("scheduler_url", &self.scheduler_url)
            .field(
                "cluster_secret",
                &self.cluster_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

/// A resolved cluster secret; its `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(Arc<str>);

impl ClusterSecret {
    /// The secret itself, for the `Authorization` header and a child's environment only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        cluster: ClusterArgs,
    }

    #[test]
    fn given_secret_is_trimmed_and_never_shown() {
        let cli = Cli::parse_from(["x", "--cluster-secret", " hunter2 \n"]);
        assert_eq!(cli.cluster.secret().unwrap().expose(), "hunter2");
        let shown = format!("{cli:?} {:?}", cli.cluster.secret().unwrap());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn blank_secret_is_refused() {
        let cli = Cli::parse_from(["x", "--cluster-secret", "  "]);
        assert!(matches!(cli.cluster.secret(), Err(SecretError::Empty)));
    }

    #[test]
    fn missing_secret_comes_from_the_shared_file() {
        let dir = std::env::temp_dir().join(format!("berth-cluster-{}", rand::random::<u64>()));
        let cli = Cli::parse_from(["x", "--data-dir", dir.to_str().unwrap()]);
        let a = cli.cluster.secret().unwrap();
        assert_eq!(a, cli.cluster.secret().unwrap());
        assert_eq!(a.expose().len(), 64);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
