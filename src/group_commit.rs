//! Group commit: many callers' writes made durable by one commit.
//!
//! A receiver may answer a webhook only once its writes are committed, and with
//! `synchronous = FULL` every commit waits for the disk to flush: one commit per webhook caps
//! the receiver at the disk's flush rate, however many webhooks arrive at once. So one writer
//! thread takes every write waiting, does them all in one transaction (each in its own
//! savepoint, so one write's failure undoes only that write, see [`Store::in_one_commit`]),
//! commits once, and only then answers each caller.
//!
//! Nothing waits on purpose to fill a batch: a batch is what queued while the previous commit
//! ran (or while the writer waited for the store), so a lone webhook is committed at once and a
//! burst shares its flushes. [`MAX_BATCH`] bounds how long one commit keeps the store and the
//! callers in it waiting.

use crate::store::{Store, StoreError};
use crate::sync::SyncError;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// The most writes one commit takes; the rest go in the next.
pub const MAX_BATCH: usize = 256;

/// One caller's writes: done inside the batch's transaction, on the writer thread.
pub type Work<T> = Box<dyn FnOnce(&mut Store) -> Result<T, SyncError> + Send>;

/// Why a caller's writes were not kept. Nothing of them is in the store.
#[derive(Debug, thiserror::Error)]
pub enum NotKept {
    /// The writes themselves failed; the rest of their batch was kept.
    #[error(transparent)]
    Failed(#[from] SyncError),
    /// The batch's commit failed: none of its writes were kept.
    #[error("the commit of {writes} webhooks failed: {cause}")]
    Commit {
        writes: usize,
        cause: Arc<StoreError>,
    },
    /// The writer is gone (it panicked): nothing more is written.
    #[error("the store's writer stopped")]
    Stopped,
}

struct Job<T> {
    work: Work<T>,
    answer: oneshot::Sender<Result<T, NotKept>>,
}

/// The handle callers submit writes through; the writer thread ends when it is dropped.
pub struct GroupCommit<T> {
    jobs: mpsc::UnboundedSender<Job<T>>,
    figures: Arc<Figures>,
}

#[derive(Default)]
struct Figures {
    waiting: AtomicUsize,
    commits: AtomicU64,
}

impl<T: Send + 'static> GroupCommit<T> {
    /// Starts the writer thread, which locks `store` for each batch it writes.
    pub fn start(store: Arc<Mutex<Store>>) -> GroupCommit<T> {
        let (jobs, queue) = mpsc::unbounded_channel();
        let figures = Arc::new(Figures::default());
        let writer_figures = Arc::clone(&figures);
        std::thread::Builder::new()
            .name("marketsync-commit".into())
            .spawn(move || write_batches(&store, queue, &writer_figures))
            .expect("the commit thread starts");
        GroupCommit { jobs, figures }
    }

    /// Does `work` in the next commit; returns once that commit is durable (or failed).
    pub async fn commit(&self, work: Work<T>) -> Result<T, NotKept> {
        let (answer, answered) = oneshot::channel();
        self.figures.waiting.fetch_add(1, Ordering::SeqCst);
        if self.jobs.send(Job { work, answer }).is_err() {
            self.figures.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(NotKept::Stopped);
        }
        answered.await.unwrap_or(Err(NotKept::Stopped))
    }

    /// Writes submitted and not yet taken into a batch.
    pub fn waiting(&self) -> usize {
        self.figures.waiting.load(Ordering::SeqCst)
    }

    /// Commits that succeeded since start.
    pub fn commits(&self) -> u64 {
        self.figures.commits.load(Ordering::SeqCst)
    }
}

/// The writer thread: a batch at a time, until every handle is dropped.
fn write_batches<T>(
    store: &Mutex<Store>,
    mut queue: mpsc::UnboundedReceiver<Job<T>>,
    figures: &Figures,
) {
    while let Some(first) = queue.blocking_recv() {
        let mut store = store.lock().expect("store lock");
        // Taken once the store is ours: whatever queued while it was busy joins this commit.
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH
            && let Ok(job) = queue.try_recv()
        {
            batch.push(job);
        }
        figures.waiting.fetch_sub(batch.len(), Ordering::SeqCst);
        let (works, answers): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|job| (job.work, job.answer)).unzip();
        let writes = works.len();
        let outcome = store.in_one_commit(works, |store, work| work(store));
        drop(store);
        match outcome {
            Ok(results) => {
                figures.commits.fetch_add(1, Ordering::SeqCst);
                for (answer, result) in answers.into_iter().zip(results) {
                    let _ = answer.send(result.map_err(NotKept::Failed));
                }
            }
            Err(cause) => {
                let cause = Arc::new(cause);
                for answer in answers {
                    let _ = answer.send(Err(NotKept::Commit {
                        writes,
                        cause: Arc::clone(&cause),
                    }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DeliveryRecord;
    use std::time::{Duration, Instant};

    /// Three deliveries' writes, queued while the store is busy, in one commit; `sql` sets up
    /// what goes wrong with the delivery `fail`. Returns each write's outcome, the commits and
    /// the inbox rows kept.
    async fn three_writes_in_one_commit(sql: &str) -> (Vec<Result<(), NotKept>>, u64, i64) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = Arc::new(Mutex::new(Store::open(&path).unwrap()));
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(sql).unwrap();
        let writer = Arc::new(GroupCommit::<()>::start(Arc::clone(&store)));
        let busy = store.lock().unwrap();
        let writes: Vec<_> = ["a", "fail", "b"]
            .into_iter()
            .map(|id| {
                let writer = Arc::clone(&writer);
                tokio::spawn(async move {
                    let work: Work<()> = Box::new(move |store| {
                        let delivery = DeliveryRecord {
                            marketplace: "m",
                            delivery_id: id,
                            origin: "test",
                            text: "{}",
                        };
                        store.intake(&delivery, &[], &[], 0)?;
                        Ok(())
                    });
                    writer.commit(work).await
                })
            })
            .collect();
        let until = Instant::now() + Duration::from_secs(5);
        while writer.waiting() < 3 {
            assert!(Instant::now() < until, "the writes never queued");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(busy);
        let mut outcomes = Vec::new();
        for write in writes {
            outcomes.push(write.await.unwrap());
        }
        let kept = conn
            .query_row("SELECT count(*) FROM inbox", [], |r| r.get(0))
            .unwrap();
        (outcomes, writer.commits(), kept)
    }

    #[tokio::test]
    async fn a_failing_write_fails_alone_and_the_others_share_one_commit() {
        let (outcomes, commits, kept) = three_writes_in_one_commit(
            "CREATE TRIGGER injected BEFORE INSERT ON inbox WHEN NEW.delivery_id = 'fail'
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
        )
        .await;
        assert!(outcomes[0].is_ok() && outcomes[2].is_ok(), "{outcomes:?}");
        assert!(matches!(outcomes[1], Err(NotKept::Failed(_))), "{outcomes:?}");
        assert_eq!((commits, kept), (1, 2));
    }

    #[tokio::test]
    async fn a_failed_commit_fails_every_write_of_it() {
        // A deferred foreign key is only checked at COMMIT.
        let (outcomes, commits, kept) = three_writes_in_one_commit(
            "CREATE TABLE parent (id INTEGER PRIMARY KEY);
             CREATE TABLE child (parent_id REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);
             CREATE TRIGGER orphan AFTER INSERT ON inbox WHEN NEW.delivery_id = 'fail'
             BEGIN INSERT INTO child VALUES (42); END",
        )
        .await;
        for outcome in &outcomes {
            assert!(
                matches!(outcome, Err(NotKept::Commit { writes: 3, .. })),
                "{outcomes:?}"
            );
        }
        assert_eq!((commits, kept), (0, 0));
    }
}
