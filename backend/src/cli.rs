//! The `berth-backend` binary: flags, then [`berth_runtime::run`] binds and serves until
//! SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser as _;

use crate::Config;

/// Parses flags and runs the backend; exit code 0 after a graceful stop, 1 on error.
pub fn main() -> ExitCode {
    let config = Config::parse();
    berth_runtime::run("berth-backend", |signals| async move {
        let listener = berth_runtime::bind(&config.listen.to_string()).await?;
        crate::serve(listener, config, signals.shutdown).await?;
        Ok(())
    })
}
