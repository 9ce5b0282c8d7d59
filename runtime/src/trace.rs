//! The `tracing` subscriber every Berth binary installs.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// Logs to stderr, filtered by `RUST_LOG` (else `default`, e.g. `info`), without colours when
/// stderr is not a terminal (launchers and tests read `addr=` from the log). Does nothing when a
/// subscriber is already installed.
pub fn init(default: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
