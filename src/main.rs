//! The `marketsync` command: a thin shell that wires the library's parts together, renders
//! errors for people and maps every outcome to a documented exit code.

mod cli;

fn main() -> std::process::ExitCode {
    // Rust ignores SIGPIPE, so `marketsync status | head` would panic on the first write after
    // `head` exits. A command-line tool should end quietly instead, as `cat` does.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of one signal, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    cli::main()
}

/// glibc's allocator took a third of a dry run's time in malloc and free (perf, 100 MB of
/// generated deliveries): mimalloc cut the run from 1.54 s to 0.94 s. Without transparent huge
/// pages (`no_thp`), because with them peak memory rose from 36 to 54 MB on one thread and to
/// 99 MB on two (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
