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
