//! The `restm` binary: parses the command line and hands over to [`restm::cli`].

/// mimalloc instead of the system allocator: under steady write load with garbage
/// collection freeing on another thread, glibc's per-thread arenas kept growing the
/// resident set (see the soak figures in the README).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    restm::cli::main()
}
