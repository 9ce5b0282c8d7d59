//! The `berth-session` binary; everything but the allocator lives in the library.

/// mimalloc rather than glibc's malloc: a connect burst (every newcomer's `welcome` and the
/// `joined` fan-out) frees most of what it allocated, and glibc kept those pages resident for
/// good, so a full room of 5,000 held several times its working set. mimalloc returns freed
/// pages to the system and packs small objects tighter.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    berth_session::cli::main()
}
