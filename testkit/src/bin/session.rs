//! The real `berth-session` binary, rebuilt by `cargo test` for the end-to-end tests.

fn main() -> std::process::ExitCode {
    berth_session::cli::main()
}
