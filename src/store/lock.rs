//! One writer per state file: an advisory lock on a file beside it, `STATE.lock`.
//!
//! SQLite alone would let two runs interleave on one file, each sending what the other is
//! sending. A writer (`run`, `retry`) takes this lock before it opens the store and holds it
//! until it exits; a second writer is refused at once, told which process holds it. Readers
//! (`status`) never take it.
//!
//! The lock is the kernel's (`flock`, through `File::try_lock`), not the file's existence: a process that dies, however
//! it dies, releases it, so a killed run never blocks the next. The file is never deleted (a
//! lock on a deleted file would let a third process lock a new one beside it); its text, the
//! holder's pid and start time, is only for the message.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock, held until dropped.
#[derive(Debug)]
pub struct WriterLock {
    _file: File,
    path: PathBuf,
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another marketsync process is writing it ({holder}; lock {})", path.display())]
    Held { holder: String, path: PathBuf },
    #[error("lock {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// `STATE.lock`, beside the state file.
pub fn lock_path(state: &Path) -> PathBuf {
    let mut path = state.as_os_str().to_owned();
    path.push(".lock");
    PathBuf::from(path)
}

impl WriterLock {
    /// Takes the lock of the state file `state`, or says who holds it. Never waits.
    pub fn acquire(state: &Path) -> Result<WriterLock, LockError> {
        let path = lock_path(state);
        let io_error = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error)?;
        if !try_lock(&file).map_err(io_error)? {
            return Err(LockError::Held {
                holder: holder(&mut file),
                path,
            });
        }
        let started = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC");
        let text = format!("pid {}, started {started}\n", std::process::id());
        file.set_len(0).map_err(io_error)?;
        file.rewind().map_err(io_error)?;
        file.write_all(text.as_bytes()).map_err(io_error)?;
        file.flush().map_err(io_error)?;
        Ok(WriterLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The holder as it wrote itself down; it may not have yet, just after taking the lock.
fn holder(file: &mut File) -> String {
    for _ in 0..20 {
        let mut text = String::new();
        if file.rewind().is_ok() && file.read_to_string(&mut text).is_ok() && !text.is_empty() {
            return text.trim().to_owned();
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    "pid unknown".to_owned()
}

/// An exclusive lock without waiting (`flock` on Unix): `Ok(false)` when another holds it.
fn try_lock(file: &File) -> io::Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(err)) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_and_the_lock_is_free_once_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.db");
        let held = WriterLock::acquire(&state).unwrap();
        assert_eq!(held.path(), dir.path().join("state.db.lock"));
        let err = WriterLock::acquire(&state).unwrap_err();
        let pid = format!("pid {}", std::process::id());
        assert!(err.to_string().contains(&pid), "{err}");
        drop(held);
        WriterLock::acquire(&state).unwrap();
    }
}
