//! The `berth-scheduler` binary: flags, then [`berth_runtime::run`] binds and serves until
//! SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser as _;

use crate::Config;

/// Parses flags and runs the scheduler; exit code 0 after a graceful stop, 1 on error.
pub fn main() -> ExitCode {
    let config = Config::parse();
    berth_runtime::run("berth-scheduler", |signals| async move {
        let listener = berth_runtime::bind(&config.listen).await?;
        crate::serve(listener, config, signals.shutdown).await?;
        Ok(())
    })
}
