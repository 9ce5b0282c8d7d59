//! The `berth-session` binary: flags, then [`berth_runtime::run`] binds and serves; the first
//! SIGINT/SIGTERM drains, a second one closes everything at once ([`crate::serve_with_force`]).

use std::process::ExitCode;

use clap::Parser as _;

use crate::Config;

/// Parses flags and runs the session server; exit code 0 after a graceful stop, 1 on error.
pub fn main() -> ExitCode {
    let config = Config::parse();
    berth_runtime::run("berth-session", |signals| async move {
        let listener = berth_runtime::bind(&config.listen.to_string()).await?;
        crate::serve_with_force(listener, config, signals.shutdown, signals.force).await?;
        Ok(())
    })
}
