//! The real `berth` command, rebuilt by `cargo test` for the end-to-end tests.

fn main() -> std::process::ExitCode {
    berth_cli::main()
}
