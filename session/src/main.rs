fn main() -> std::process::ExitCode {
    berth_session::cli::main()
}
