//! The real `berth-scheduler` binary, rebuilt by `cargo test` for the end-to-end tests.

fn main() -> std::process::ExitCode {
    berth_scheduler::cli::main()
}
