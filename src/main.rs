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
    allocator::return_freed_memory_soon();
    cli::main()
}

/// glibc's allocator took a third of a dry run's time in malloc and free (perf, 100 MB of
/// generated deliveries): mimalloc cut the run from 1.54 s to 0.94 s. Without transparent huge
/// pages (`no_thp`), because with them peak memory rose from 36 to 54 MB on one thread and to
/// 99 MB on two (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod allocator {
    //! mimalloc holds on to freed pages for a second (its `purge_delay`) in case they are
    //! wanted again. Worker threads free what another thread allocated, so those pages pile up:
    //! a two-job dry run of all default mappings over 1 GB peaked at 67 MB with the default
    //! delay and 62 MB with 10 ms, at the same speed. With no delay at all it was 61 MB, but
    //! compiling the mappings then made 3,275 `madvise` calls and `validate` took 0.12 s
    //! instead of 0.08 s.

    use libmimalloc_sys as ffi;

    /// `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (mimalloc.h); libmimalloc-sys
    /// does not name it. The test below checks the number against the option's default.
    const PURGE_DELAY: ffi::mi_option_t = 15;

    pub fn return_freed_memory_soon() {
        // SAFETY: setting a documented numeric option (milliseconds) before other threads exist.
        unsafe { ffi::mi_option_set(PURGE_DELAY, 10) }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn option_15_is_the_purge_delay() {
            // mimalloc 3 purges after 1000 ms by default and no other option defaults to that;
            // reading it also shows the option is a delay in milliseconds we may shorten.
            // SAFETY: reading an option.
            assert_eq!(unsafe { ffi::mi_option_get(PURGE_DELAY) }, 1000);
        }
    }
}
