//! `berth bench`: a load generator for Berth, or for any server that speaks its WebSocket
//! protocol.
//!
//! The default mode goes through the real flow — log in (one user per member), create the rooms
//! (each as a different user), look them up, connect — and measures room creates, lookups and
//! connects on the way. The direct mode ([`Target::Direct`]) mints its own tickets and loads one
//! session server (such as `berth-session --standalone`) with no backend or scheduler. Then,
//! for each rate step, senders send stamped messages on a fixed schedule and every member
//! times each stamped message it receives: end-to-end delivery latency from send to every
//! receiver, into HDR histograms.
//!
//! - [`options`]: [`BenchOptions`] and [`Target`], what a run does.
//! - [`command`]: the `berth bench` flags ([`BenchArgs`]) and printing the report.
//! - `run`: the coordinator (setup, members, steps); `setup`: logins and creates;
//!   `member`: one member's task; `connect`: opening bench connections; `ticket`: minting
//!   direct-mode tickets; `stamp`: the message format; `stats`: counters and histograms shared
//!   without a lock per message; `fleet`: the scheduler's server count; `usage`: the
//!   generator's own CPU and memory; `progress`: the status line.
//! - [`report`]: [`BenchReport`], as a table or JSON.
//!
//! ```no_run
//! # async fn demo() -> Result<(), berth_bench::BenchError> {
//! use berth_bench::{BenchOptions, Target};
//! let report = berth_bench::run(BenchOptions {
//!     target: Target::Backend { url: "http://127.0.0.1:8080".into(), fleet: None },
//!     rooms: 2,
//!     members: 3,
//!     ..Default::default()
//! })
//! .await?;
//! print!("{}", report.table());
//! # Ok(()) }
//! ```

pub mod command;
mod connect;
mod fleet;
mod member;
pub mod options;
mod progress;
pub mod report;
mod run;
mod setup;
mod stamp;
mod stats;
mod ticket;
mod usage;

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

pub use command::BenchArgs;
pub use options::{BenchOptions, DirectTarget, Fleet, Target};
pub use report::{BenchReport, GeneratorReport, LatencySummary, SetupReport, StepReport};

/// Why a run could not be done at all. (Failures of single members are counted in
/// [`BenchReport::errors`] instead.)
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// An option out of range or a missing combination.
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// The direct mode's ticket key could not be read.
    #[error("ticket key {}: {message}", path.display())]
    TicketKey { path: PathBuf, message: String },
    /// A ticket could not be signed.
    #[error("minting a ticket failed: {0}")]
    Mint(String),
    /// Stopped (Ctrl-C) before any member connected.
    #[error("interrupted before the load started")]
    Interrupted,
}

/// Runs a benchmark to the end and reports its figures.
pub async fn run(options: BenchOptions) -> Result<BenchReport, BenchError> {
    run_until(options, CancellationToken::new()).await
}

/// [`run`], cut short when `shutdown` is cancelled: the step under way ends early, members
/// close, and the report covers what ran (`interrupted: true`).
pub async fn run_until(
    options: BenchOptions,
    shutdown: CancellationToken,
) -> Result<BenchReport, BenchError> {
    run::run(options, shutdown).await
}
