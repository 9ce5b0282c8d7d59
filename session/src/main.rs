//! The `berth-session` binary; everything but the allocator lives in the library.

/// mimalloc rather than glibc's malloc: it returns freed pages to the system and packs small
/// objects tighter; measured, idle connections take less memory each (docs/benchmarks.md,
/// "Allocator", which also says where it did not help).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    berth_session::cli::main()
}
