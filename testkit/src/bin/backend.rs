//! The real `berth-backend` binary, rebuilt by `cargo test` for the end-to-end tests.

fn main() -> std::process::ExitCode {
    berth_backend::cli::main()
}
