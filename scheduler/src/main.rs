fn main() -> std::process::ExitCode {
    berth_scheduler::cli::main()
}
