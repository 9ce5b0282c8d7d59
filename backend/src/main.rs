fn main() -> std::process::ExitCode {
    berth_backend::cli::main()
}
