//! Checkpoints on a thread of their own, for a store that answers callers as it commits.
//!
//! In WAL mode a commit only appends pages to the log; a checkpoint copies them into the
//! database file and flushes it. SQLite runs one by itself inside the commit that takes the
//! log past 1,000 pages, so that commit returns only after the copy and a second flush. In
//! `serve` that commit is the group-commit thread's, with every webhook of its batch waiting
//! on it, or a sender's, holding the store: checkpoints were 15% of the commit thread's time
//! and 5% of the tokio workers' (perf, 4 December). Here the store's connection stops
//! checkpointing and a second connection on this thread does it beside the writes, in
//! PASSIVE mode, which never blocks a writer.
//!
//! A log is started again from its beginning only by a write that finds it wholly copied,
//! which writes arriving all the time may never let happen: the log (and the index of it that
//! every read searches) would grow for as long as they came. So once the log is past
//! [`Limits::restart_above`] pages, the store's own commit checkpoints too (SQLite's hook
//! after each commit): this thread has copied nearly all of it, so that copies little, and
//! the store's next write, finding the log copied, starts it again.

use super::StoreError;
use rusqlite::wal::CheckpointMode;
use rusqlite::{Connection, ErrorCode, OpenFlags};
use std::ffi::c_int;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// When the checkpointer looks, and how long the log may grow before the store's commits
/// checkpoint too.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Between checkpoints while writes come (SQLite's own threshold, 1,000 pages, is about
    /// 40 ms of `serve` at 2,000 webhooks a second).
    pub busy_every: Duration,
    /// Between looks while nothing was written.
    pub idle_every: Duration,
    /// Log pages past which the store's commits checkpoint too, so that the log starts again
    /// (4,096 pages of 4 KiB: 16 MiB).
    pub restart_above: i64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            busy_every: Duration::from_millis(40),
            idle_every: Duration::from_millis(500),
            restart_above: 4_096,
        }
    }
}

/// The running checkpointer; dropping it stops it (after the checkpoint in hand).
pub struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Opens a second connection on the database at `path` and checkpoints it on a thread.
    /// The store's own connection must stop checkpointing by itself: [`restart_when_long`]
    /// (see [`super::Store::checkpoint_beside`]).
    pub(super) fn start(path: PathBuf, limits: Limits) -> Result<Checkpointer, StoreError> {
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // A connection opens the log on its first read; until then a checkpoint finds none.
        conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("marketsync-ckpt".into())
            .spawn(move || checkpoint_until_stopped(&conn, &stopped, limits))
            .map_err(|err| StoreError::Create {
                path,
                problem: format!("cannot start the checkpoint thread: {err}"),
            })?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn checkpoint_until_stopped(conn: &Connection, stopped: &mpsc::Receiver<()>, limits: Limits) {
    let mut wait = limits.idle_every;
    let mut last_log = 0;
    loop {
        match stopped.recv_timeout(wait) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // Stopped (the sender dropped, or said so).
            _ => return,
        }
        wait = match checkpoint(conn) {
            Ok(log) => {
                // Pages came since the last look, or some could not be copied yet.
                let busy = log.pages != last_log || log.copied < log.pages;
                last_log = log.pages;
                if busy {
                    limits.busy_every
                } else {
                    limits.idle_every
                }
            }
            // The store's commit is checkpointing (see `restart_when_long`).
            Err(err) if err.sqlite_error_code() == Some(ErrorCode::DatabaseBusy) => {
                limits.busy_every
            }
            Err(err) => {
                // Writes go on meanwhile; the log waits for the next try.
                tracing::warn!("state database: checkpoint failed: {err}");
                limits.idle_every
            }
        };
    }
}

/// What one checkpoint found: pages in the log, and how many of them are now in the file.
struct Log {
    pages: i64,
    copied: i64,
}

fn checkpoint(conn: &Connection) -> Result<Log, rusqlite::Error> {
    let (pages, copied) = conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE)?;
    Ok(Log {
        pages: pages.into(),
        copied: copied.into(),
    })
}

/// Installed on the store's connection in place of SQLite's own checkpoint after a commit:
/// nothing until the log is past `restart_above` pages, then a passive checkpoint of what the
/// thread has left, so that the next write starts the log again. Busy (the thread is
/// checkpointing) is no error: the next commit tries again.
pub(super) fn restart_when_long(
    conn: &mut Connection,
    restart_above: i64,
) -> Result<(), rusqlite::Error> {
    conn.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, pages: c_int| {
        if i64::from(pages) > restart_above {
            match wal.checkpoint_v2(CheckpointMode::PASSIVE) {
                Err(err) if err.sqlite_error_code() == Some(ErrorCode::DatabaseBusy) => {}
                other => {
                    other?;
                }
            }
        }
        Ok(())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use std::path::Path;
    use std::time::Instant;

    /// Writes `letters` dead letters of 16 KiB (four log pages each), one commit each.
    fn write(store: &mut Store, from: usize, letters: usize) {
        for n in from..from + letters {
            let text = format!("{n:>16384}");
            store
                .record_unreadable(&format!("test:{n}"), &text, "test", 0)
                .unwrap();
        }
    }

    fn size(path: &Path) -> u64 {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }

    fn quick(restart_above: i64) -> Limits {
        Limits {
            busy_every: Duration::from_millis(5),
            idle_every: Duration::from_millis(20),
            restart_above,
        }
    }

    #[test]
    fn the_log_is_copied_into_the_file_beside_the_writes_not_by_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut store = Store::open(&path).unwrap();
        let before = size(&path);
        // Stopped at once: from here on the commits alone must not copy the log, which
        // passes SQLite's own threshold (1,000 pages) by a fifth.
        drop(store.checkpoint_beside(quick(1_000_000)).unwrap());
        write(&mut store, 0, 300);
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            size(&path) < before + 1_000_000,
            "the commits checkpointed: {} -> {} bytes",
            before,
            size(&path)
        );
        // The checkpointer copies it, with no write to set it off.
        let _checkpointer = store.checkpoint_beside(quick(1_000_000)).unwrap().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while size(&path) < before + 4_800_000 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            size(&path) >= before + 4_800_000,
            "not copied: {} bytes",
            size(&path)
        );
    }

    #[test]
    fn a_log_written_without_a_pause_does_not_grow_past_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let wal = dir.path().join("state.db-wal");
        let mut store = Store::open(&path).unwrap();
        let _checkpointer = store.checkpoint_beside(quick(256)).unwrap().unwrap();
        // 1,200 commits of four pages each, as fast as they go: 4,800 pages of log unless it
        // is started again; its file keeps its greatest size.
        write(&mut store, 0, 1_200);
        let pages = size(&wal) / 4_096;
        assert!(pages < 1_600, "the log reached {pages} pages");
        let kept: i64 = store
            .conn
            .query_row("SELECT count(*) FROM dead_letter", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, 1_200);
    }

    #[test]
    fn a_store_in_memory_has_no_log_to_checkpoint() {
        let mut store = Store::in_memory().unwrap();
        assert!(
            store
                .checkpoint_beside(Limits::default())
                .unwrap()
                .is_none()
        );
    }
}
