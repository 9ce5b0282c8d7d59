//! Why a session server could not start or run.

use std::path::PathBuf;

use crate::scheduler::SchedulerError;

/// What [`crate::serve`] fails with. Refusals of single connections are not errors of the
/// server: they are HTTP answers (see `admission`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot read the ticket public key {}", path.display())]
    PublicKeyRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid ticket public key {} (expected an Ed25519 SPKI PEM)", path.display())]
    PublicKey {
        path: PathBuf,
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    #[error(transparent)]
    Secret(#[from] berth_runtime::SecretError),
    #[error("cannot open the message store: {0}")]
    Store(#[from] berth_store::StoreError),
    #[error("cannot set up the scheduler client")]
    Scheduler(#[from] SchedulerError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
