//! The durable store: the only stateful part of marketsync, one SQLite file.
//!
//! It exists so that nothing read is lost or sent twice across crashes and restarts:
//!
//! - **inbox and outbox**: a delivery and the requests its mappings produced are written in one
//!   transaction ([`Store::intake`]), deduplicated by marketplace and delivery id. A crash keeps
//!   both or neither. A receiver puts many deliveries in one commit ([`Store::in_one_commit`],
//!   each in a savepoint), because each commit waits for the disk.
//! - **ledger**: what Klaviyo accepted, written in the same transaction that marks the outbox
//!   row sent ([`Store::mark_sent`]). A crash between sending and marking resends on restart,
//!   which Klaviyo absorbs (events deduplicate by `unique_id`, profile imports are idempotent).
//! - **once per key** across runs, **coalescing** of profile updates against a per-profile
//!   **watermark**, **ordering holds** (`waits_for` is a ledger key), the **consent** ledger of
//!   initial opt-ins, **dead letters** with the delivery they came from, and **exceptions**.
//! - **read-back exceptions**: what reading Klaviyo back found, open until a later run that
//!   looked for it no longer finds it or a person resolves it, with each run's summary
//!   ([`Store::record_read_back`]). The findings are the reconciliation's own types, kept as
//!   JSON; which exceptions a run may resolve is the caller's rule, applied here in the run's
//!   transaction.
//! - **people**: which deliveries concerned whom, under opaque keys the caller gives at intake,
//!   and the requests intake dropped, so that a person's history is read without a scan
//!   ([`Store::person_history`]).
//!
//! What it must never do: read the clock (every time is unix milliseconds passed in by the
//! caller, so tests are deterministic and a replay is reproducible), talk to the network, or
//! know about mappings or Klaviyo payloads beyond opaque text. Bodies are stored and returned as
//! written; the one Klaviyo fact it holds is [`CONSENT_ENDPOINT`], whose acceptance also lands
//! in the consent ledger.
//!
//! The architecture puts the store behind a narrow trait so that a Postgres store can serve
//! several instances later. The method set of [`Store`] is that narrow surface; the trait itself
//! is left until the second implementation exists, because several instances will need `due`
//! to *claim* rows with a lease (one SQLite writer does not), and that shape is better designed
//! against the real second store than guessed now.

mod checkpoint;
mod customer;
mod dead;
mod exceptions;
mod intake;
pub mod lock;
mod outbox;
mod readback;
mod reconcile;
mod schema;
mod status;

pub use checkpoint::{Checkpointer, Limits as CheckpointLimits};
pub use customer::{
    DroppedRequest, ExceptionSummary, LetterSummary, PersonDelivery, PersonHistory, PersonRequest,
};
pub use readback::ReadBackFilter;
pub use reconcile::{Found, ReconcileRun};
pub use status::{LaneStatus, SentRequest, Status};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use std::path::Path;
use std::time::Duration;

/// `PRAGMA application_id` of a marketsync state file ("MkSy"): how marketsync tells its own
/// files from another application's (schema step 3 writes the same number).
pub const APPLICATION_ID: i32 = 0x4d6b_5379;

/// The endpoint whose accepted requests (with a once key) are also recorded as consent: the
/// initial opt-in has been applied for that profile and marketplace.
pub const CONSENT_ENDPOINT: &str = "/api/profile-subscription-bulk-create-jobs";

/// The key under which an accepted request is kept in the ledger: its once key, scoped by the
/// mapping that produced it, so that two mappings' keys never collide. Once-per checks at
/// intake, [`Store::mark_sent`] and callers building `waits_for` all use this one spelling.
pub fn ledger_key(mapping: &str, once_key: &str) -> String {
    format!("{mapping}\u{1f}{once_key}")
}

/// Whether Klaviyo accepted a request of `mapping` with this once key: its row is `sent`,
/// which only acceptance writes, beside its ledger row (schema version 12 finds it by the
/// outbox's index, which acceptance leaves alone).
fn accepted_once(conn: &Connection, mapping: &str, once_key: &str) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM outbox
                            WHERE mapping = ?1 AND once_key = ?2 AND state = 'sent')",
        )?
        .query_row([mapping, once_key], |r| r.get(0))?)
}

/// The delivery a batch of requests came from.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryRecord<'a> {
    pub marketplace: &'a str,
    pub delivery_id: &'a str,
    /// Where it was read: `file:line`, or the webhook receiver.
    pub origin: &'a str,
    /// The raw delivery, kept so that a retry can map it again with fixed mappings.
    pub text: &'a str,
}

/// A request to queue. The body is opaque JSON text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewRequest {
    pub mapping: String,
    /// The endpoint's path, e.g. `/api/events`.
    pub endpoint: String,
    /// `transaction` or `profile`; the store only groups by it.
    pub lane: String,
    pub body: String,
    /// Set when the mapping fires once per key: dropped at intake if
    /// [`ledger_key`]`(mapping, once_key)` was accepted before or is queued now.
    pub once_key: Option<String>,
    pub unique_id: Option<String>,
    /// A ledger key that must be accepted before this request is sent (the sink asks
    /// [`Store::ledger_has`]).
    pub waits_for: Option<String>,
    /// Requests of one mapping with the same coalesce key (e.g. the email) supersede each other:
    /// only the newest `version` is sent. Needs `version`.
    pub coalesce_key: Option<String>,
    /// An RFC 3339 timestamp (the source's `updatedAt`), compared as an instant.
    pub version: Option<String>,
}

/// What [`Store::intake`] (or [`Store::requeue`]) did with the requests: every request is
/// counted in exactly one of `queued`, `dropped_once`, `dropped_stale` and `coalesced`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intake {
    /// The delivery was taken in before: nothing was written, nothing counted.
    pub duplicate_delivery: bool,
    /// New outbox rows.
    pub queued: usize,
    /// Dropped because their once key is in the ledger or already queued.
    pub dropped_once: usize,
    /// Dropped because a version as new or newer was already applied (the watermark).
    pub dropped_stale: usize,
    /// Met a pending row of the same mapping and coalesce key: of the two, the newer version
    /// stays queued, in the older one's place.
    pub coalesced: usize,
}

/// An outbox row waiting to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub id: i64,
    pub mapping: String,
    pub endpoint: String,
    pub lane: String,
    pub body: String,
    pub once_key: Option<String>,
    pub unique_id: Option<String>,
    pub waits_for: Option<String>,
    pub coalesce_key: Option<String>,
    /// Normalised to UTC (`2026-03-13T23:15:30.000000000Z`).
    pub version: Option<String>,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// When it was queued; a row that superseded an older one keeps the older one's time, so
    /// it means "waiting since" for that profile's update.
    pub created_at: i64,
    /// The delivery it came from: (marketplace, delivery id).
    pub delivery: (String, String),
}

/// Requests Klaviyo accepted with one answer: their outbox ids, its status and when (unix ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub ids: Vec<i64>,
    pub status: u16,
    pub at: i64,
}

/// A dead letter to write.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDeadLetter {
    /// The mapping involved; for a refused request, `None` means the request's own mapping.
    pub mapping: Option<String>,
    /// `invalid`, `duplicate-profile`, `retries-exhausted`, `mapping:missing-field`, ...
    pub category: String,
    pub reason: String,
    /// Klaviyo's error code, detail and `source.pointer`, both identifiers of a duplicate
    /// profile, and the like.
    pub details: serde_json::Value,
}

/// An unresolved dead letter, with what it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub id: i64,
    pub category: String,
    pub reason: String,
    pub details: serde_json::Value,
    pub mapping: Option<String>,
    /// The refused request, when Klaviyo refused one.
    pub outbox_id: Option<i64>,
    /// (marketplace, delivery id); `None` for an unreadable line.
    pub delivery: Option<(String, String)>,
    /// Where the delivery or line was read.
    pub origin: String,
    /// The raw delivery or line.
    pub text: String,
    pub created_at: i64,
    /// The refused request's endpoint and body (as last sent), when Klaviyo refused one.
    pub request: Option<(String, String)>,
    /// `None` while the letter is open.
    pub closed: Option<Closed>,
}

/// When and how a dead letter or an exception was closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub at: i64,
    /// Why an operator discarded the letter or resolved the exception; `None` for a letter
    /// that was requeued (or whose line was taken in again).
    pub reason: Option<String>,
}

/// Which open dead letters or exceptions to list. Every part left `None` matches all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Filter<'a> {
    /// A dead letter's category, or an exception's kind.
    pub category: Option<&'a str>,
    pub mapping: Option<&'a str>,
    /// Written at or after this time (unix ms).
    pub since: Option<i64>,
}

/// One answer a request got, or one failure to get an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub at: i64,
    /// Klaviyo's HTTP status, when one is known (a timeout or a dropped connection has none,
    /// nor does a retry the sink reported by its reason alone).
    pub status: Option<u16>,
    /// An excerpt: the error detail or reason, never a whole body.
    pub answer: String,
}

/// The longest answer an [`Attempt`] keeps, in characters.
pub const ANSWER_EXCERPT: usize = 300;

/// A request flagged for the exceptions report, with what it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exception {
    pub id: i64,
    /// `sent-after-hold`, `phone-removed`, ...
    pub kind: String,
    pub outbox_id: i64,
    pub mapping: String,
    pub endpoint: String,
    pub body: String,
    /// The request's state: `pending`, `sent`, ...
    pub request_state: String,
    /// (marketplace, delivery id).
    pub delivery: (String, String),
    pub origin: String,
    pub text: String,
    pub flagged_at: i64,
    pub closed: Option<Closed>,
}

/// A warning raised while a delivery was mapped at intake, kept with the delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub id: i64,
    pub message: String,
    /// (marketplace, delivery id).
    pub delivery: (String, String),
    pub origin: String,
    pub created_at: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The file exists but is not a marketsync store; it was not written to.
    #[error("not a marketsync state file ({why}); it was left as it was")]
    NotOurs { why: String },
    #[error(
        "the store's schema is version {found}, newer than this marketsync knows ({known}): \
         upgrade marketsync"
    )]
    SchemaTooNew { found: u32, known: u32 },
    #[error("request from mapping `{mapping}`: {problem}")]
    InvalidRequest { mapping: String, problem: String },
    #[error("cannot create {}: {problem}", path.display())]
    Create {
        path: std::path::PathBuf,
        problem: String,
    },
    #[error("no {what} with id {id}")]
    NotFound { what: &'static str, id: i64 },
    #[error("outbox row {id} is {state}, not pending")]
    NotPending { id: i64, state: String },
    #[error("dead letter {id} is already resolved")]
    AlreadyResolved { id: i64 },
    #[error("dead letter {id} was already discarded: {reason}")]
    AlreadyDiscarded { id: i64, reason: String },
    #[error("exception {id} is already resolved")]
    ExceptionResolved { id: i64 },
    #[error("no exception R{id}")]
    ReadBackNotFound { id: i64 },
    #[error("exception R{id} is already resolved")]
    ReadBackResolved { id: i64 },
    #[error("the read-back of reconciliation run {run_id} was recorded already")]
    ReadBackRecorded { run_id: i64 },
    /// Something marketsync wrote cannot be read back (a file edited by hand, say).
    #[error("{what} cannot be read: {problem}")]
    Unreadable { what: String, problem: String },
    #[error(
        "dead letter {id} is an unreadable line with no stored delivery: take the line in \
         again with `intake`, then resolve the letter"
    )]
    NoDelivery { id: i64 },
}

/// The store. One connection; writes take SQLite's write lock up front (`BEGIN IMMEDIATE`) so
/// that another process waits on the busy timeout instead of failing mid-transaction.
pub struct Store {
    conn: Connection,
}

/// Statements kept prepared on a connection: more than all the store's queries.
const STATEMENT_CACHE: usize = 128;

impl Store {
    /// Opens the file, creating it or migrating it to the current schema.
    ///
    /// WAL lets readers (`marketsync status`) run beside the writer; `synchronous = FULL`
    /// makes a commit durable across power loss, not only a process crash, because a webhook is
    /// acknowledged once its intake commits.
    ///
    /// A file is created only where none exists. An existing file is first read without writing
    /// (setting WAL writes) and refused with [`StoreError::NotOurs`] unless it is marketsync's:
    /// taking a zero-byte file for an empty store would send old opt-ins again, and another
    /// application's database must not get marketsync's tables.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        // An error here (a folder that cannot be read) counts as existing: the check reports it.
        if !path.try_exists().unwrap_or(true) {
            create(path)?;
        }
        check_is_ours(path)?;
        let conn = Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let _mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Each webhook's writes run in a savepoint of a group commit, and SQLite keeps the
        // pages a savepoint changes in a statement journal. Past 64 KiB that journal moves to
        // a temporary file for the rest of the connection, and from then on every page a
        // savepoint touches is written there too: two in five of `serve`'s pwrites (strace,
        // 5 December). In memory it is freed as each savepoint ends.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        Store::ready(conn)
    }

    /// A store that lives as long as the value: for dry runs and tests.
    pub fn in_memory() -> Result<Store, StoreError> {
        Store::ready(Connection::open_in_memory()?)
    }

    fn ready(mut conn: Connection) -> Result<Store, StoreError> {
        conn.pragma_update(None, "foreign_keys", true)?;
        // `serve` runs intake, the sender and its pages on this one connection, some forty
        // statements in turn: with rusqlite's default cache of 16, each pushed the others out
        // and was parsed again (5% of serve's CPU in `sqlite3Prepare`, perf, 4 December).
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        schema::migrate(&mut conn, schema::MIGRATIONS)?;
        Ok(Store { conn })
    }

    /// Checkpoints this store's log on a thread of its own, with a second connection, instead
    /// of inside whichever commit takes the log past SQLite's threshold (see [`checkpoint`]).
    /// The store's commits stop checkpointing for good, so keep the [`Checkpointer`] as long
    /// as the store (closing the store still copies the log in). `None` for a store in
    /// memory, which has no log.
    pub fn checkpoint_beside(
        &mut self,
        limits: CheckpointLimits,
    ) -> Result<Option<Checkpointer>, StoreError> {
        let path = match self.conn.path() {
            Some(path) if !path.is_empty() => std::path::PathBuf::from(path),
            _ => return Ok(None),
        };
        let checkpointer = Checkpointer::start(path, limits)?;
        checkpoint::restart_when_long(&mut self.conn, limits.restart_above)?;
        Ok(Some(checkpointer))
    }

    pub fn schema_version(&self) -> Result<u32, StoreError> {
        schema::user_version(&self.conn)
    }

    /// Whether Klaviyo accepted a request under this [`ledger_key`].
    pub fn ledger_has(&self, key: &str) -> Result<bool, StoreError> {
        match key.split_once('\u{1f}') {
            Some((mapping, once_key)) => accepted_once(&self.conn, mapping, once_key),
            None => Ok(false),
        }
    }

    /// When the initial opt-in under this once key was accepted, if it was.
    pub fn consent_accepted_at(&self, once_key: &str) -> Result<Option<i64>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT accepted_at FROM consent WHERE once_key = ?1",
                [once_key],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Whether the store accepts a write now: takes the write lock and lets it go, writing
    /// nothing. A receiver's readiness check.
    pub fn check_writable(&mut self) -> Result<(), StoreError> {
        self.write()?.rollback()?;
        Ok(())
    }

    /// Runs `each` on every item in one transaction, each item in a savepoint of its own, and
    /// commits once: one flush to disk for the lot. An item whose `each` fails is undone alone
    /// (its `Err` is its outcome, the other items are kept); the outcomes are in item order.
    /// `Err` when the transaction could not be begun or committed: then nothing is kept.
    ///
    /// Every write `each` makes through the store's methods nests in the item's savepoint.
    pub fn in_one_commit<I, T, E>(
        &mut self,
        items: impl IntoIterator<Item = I>,
        mut each: impl FnMut(&mut Store, I) -> Result<T, E>,
    ) -> Result<Vec<Result<T, E>>, StoreError> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let kept = || -> Result<_, StoreError> {
            let mut outcomes = Vec::new();
            for item in items {
                // Prepared once per connection, not parsed again for every item.
                self.conn.prepare_cached("SAVEPOINT item")?.execute([])?;
                let outcome = each(self, item);
                if outcome.is_err() {
                    self.conn.prepare_cached("ROLLBACK TO item")?.execute([])?;
                }
                self.conn.prepare_cached("RELEASE item")?.execute([])?;
                outcomes.push(outcome);
            }
            self.conn.execute_batch("COMMIT")?;
            Ok(outcomes)
        };
        let outcomes = kept();
        if outcomes.is_err() && !self.conn.is_autocommit() {
            // The error is what the caller needs; a failed rollback leaves nothing committed.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        outcomes
    }

    /// A write of its own (taking the write lock up front), or a savepoint when it is part of
    /// [`Store::in_one_commit`].
    fn write(&mut self) -> Result<Write<'_>, StoreError> {
        Ok(if self.conn.is_autocommit() {
            Write::Alone(
                self.conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)?,
            )
        } else {
            Write::Nested(self.conn.savepoint()?)
        })
    }
}

/// A write that is committed, or rolled back when dropped uncommitted.
enum Write<'a> {
    Alone(rusqlite::Transaction<'a>),
    Nested(rusqlite::Savepoint<'a>),
}

impl Write<'_> {
    fn commit(self) -> rusqlite::Result<()> {
        match self {
            Write::Alone(tx) => tx.commit(),
            Write::Nested(savepoint) => savepoint.commit(),
        }
    }

    fn rollback(self) -> rusqlite::Result<()> {
        match self {
            Write::Alone(tx) => tx.rollback(),
            // Rolled back and released.
            Write::Nested(savepoint) => savepoint.finish(),
        }
    }
}

impl std::ops::Deref for Write<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        match self {
            Write::Alone(tx) => tx,
            Write::Nested(savepoint) => savepoint,
        }
    }
}

/// Whether the existing file at `path` is a marketsync store, read without writing a byte:
/// marketsync's application id, or (a file of an earlier marketsync, written before the id)
/// none, a version from before the id, and all of marketsync's tables.
fn check_is_ours(path: &Path) -> Result<(), StoreError> {
    let not_ours = |why: String| Err(StoreError::NotOurs { why });
    if std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0) {
        return not_ours("the file is empty".into());
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let read = || -> rusqlite::Result<(i32, u32, Vec<String>)> {
        let id = conn.pragma_query_value(None, "application_id", |r| r.get(0))?;
        let version = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let mut tables = conn.prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' \
             AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )?;
        let tables = tables
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok((id, version, tables))
    };
    let (id, version, tables) = match read() {
        Ok(found) => found,
        Err(err) if err.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase) => {
            return not_ours("not an SQLite database".into());
        }
        Err(err) => return Err(err.into()),
    };
    if id == APPLICATION_ID {
        return Ok(());
    }
    if id != 0 {
        return not_ours(format!(
            "an SQLite database of another application: application id {id:#x}"
        ));
    }
    let has_all = schema::TABLES.iter().all(|t| tables.iter().any(|n| n == t));
    if has_all && schema::unstamped_versions().contains(&version) {
        return Ok(());
    }
    if tables.is_empty() {
        return not_ours("an SQLite database without marketsync's tables".into());
    }
    let shown = tables
        .iter()
        .take(5)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    let more = if tables.len() > 5 { ", ..." } else { "" };
    not_ours(format!(
        "an SQLite database whose tables are not marketsync's: {shown}{more}"
    ))
}

/// Makes a new, stamped and migrated store at `path`, which did not exist.
///
/// The store is built under a temporary name beside `path` and linked into place only when
/// whole, so no kill leaves a half-made file at `path` (a zero-byte file there would rightly be
/// refused as not marketsync's, and block every later run). Linking, unlike renaming, fails if
/// `path` appeared meanwhile: then another process made it first, and its file is used.
fn create(path: &Path) -> Result<(), StoreError> {
    let name = path.file_name().map_or_else(
        || "state".into(),
        |name| name.to_string_lossy().into_owned(),
    );
    // Unique to this attempt: two threads of one process may be creating the same store.
    let building = path.with_file_name(format!(
        ".{name}.{}-{:016x}.new",
        std::process::id(),
        rand::random::<u64>()
    ));
    let made = (|| -> Result<(), StoreError> {
        let mut conn = Connection::open(&building)?;
        conn.pragma_update(None, "application_id", APPLICATION_ID)?;
        let _mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        schema::migrate(&mut conn, schema::MIGRATIONS)?;
        // Closing the only connection checkpoints the WAL into the file and removes it.
        conn.close().map_err(|(_, e)| e)?;
        Ok(())
    })();
    let linked = made.and_then(|()| match std::fs::hard_link(&building, path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        // A file system without hard links: rename, which is as atomic but may replace a file
        // made in the instant since `path` was checked.
        Err(_) if !path.exists() => {
            std::fs::rename(&building, path).map_err(|e| StoreError::Create {
                path: path.to_owned(),
                problem: e.to_string(),
            })
        }
        Err(_) => Ok(()),
    });
    for leftover in ["", "-wal", "-shm"] {
        let mut file = building.clone().into_os_string();
        file.push(leftover);
        let _ = std::fs::remove_file(file);
    }
    linked
}

/// The first [`ANSWER_EXCERPT`] characters of an answer, marked when cut.
fn excerpt(answer: &str) -> String {
    let answer = answer.trim();
    match answer.char_indices().nth(ANSWER_EXCERPT) {
        Some((at, _)) => format!("{}…", &answer[..at]),
        None => answer.to_owned(),
    }
}

/// A `count(*)` column. (rusqlite reads no `usize` without a feature; a count is never
/// negative.)
fn count_at(row: &rusqlite::Row, index: usize) -> rusqlite::Result<usize> {
    Ok(row.get::<_, i64>(index)? as usize)
}

/// An RFC 3339 timestamp as UTC text of fixed width, so that text order is time order
/// (`+10:00` and `Z` spellings of one instant become equal).
fn normalise_version(mapping: &str, version: &str) -> Result<String, StoreError> {
    let instant = chrono::DateTime::parse_from_rfc3339(version.trim()).map_err(|e| {
        StoreError::InvalidRequest {
            mapping: mapping.to_owned(),
            problem: format!("version `{version}` is not an RFC 3339 timestamp: {e}"),
        }
    })?;
    Ok(instant
        .with_timezone(&chrono::Utc)
        .format("%Y-%m-%dT%H:%M:%S%.9fZ")
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_normalise_to_sortable_utc() {
        let v = |s| normalise_version("m", s).unwrap();
        assert_eq!(
            v("2026-03-13T23:15:30+10:00"),
            "2026-03-13T13:15:30.000000000Z"
        );
        assert_eq!(v("2026-03-13T13:15:30Z"), v("2026-03-13T23:15:30+10:00"));
        assert!(v("2026-03-13T13:15:30.5Z") > v("2026-03-13T13:15:30Z"));
        assert!(v("2026-03-13T13:15:31Z") > v("2026-03-13T13:15:30.999Z"));
        assert!(normalise_version("m", "yesterday").is_err());
    }

    /// Files written before the application id (versions 1 and 2) still open, keep their
    /// rows, and are stamped.
    #[test]
    fn a_store_of_an_earlier_marketsync_opens_and_is_stamped() {
        for steps in 1..=2 {
            let (_dir, path) = file_at_version(
                steps,
                "INSERT INTO inbox (marketplace, delivery_id, origin, text, received_at)
                 VALUES ('m', 'd', 'f:1', '{}', 0)",
            );
            let store = Store::open(&path).unwrap_or_else(|e| panic!("version {steps}: {e}"));
            assert_eq!(
                store.schema_version().unwrap(),
                schema::MIGRATIONS.len() as u32
            );
            let (id, rows): (i32, i64) = store
                .conn
                .query_row(
                    "SELECT (SELECT application_id FROM pragma_application_id), \
                     (SELECT count(*) FROM inbox)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            assert_eq!((id, rows), (APPLICATION_ID, 1), "version {steps}");
        }
    }

    /// A state file (in a directory that lives as long as the returned guard) that has had
    /// the first `steps` schema steps and then `sql`, as an earlier marketsync left it.
    fn file_at_version(steps: usize, sql: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        assert_eq!(
            schema::migrate(&mut conn, &schema::MIGRATIONS[..steps]).unwrap(),
            steps as u32
        );
        conn.execute_batch(sql).unwrap();
        (dir, path)
    }

    /// Version 12 finds accepted keys through the outbox instead of the ledger's indexes: a
    /// request Klaviyo accepted under version 11 is still accepted after the step, by its once
    /// key and by its unique id, and its repeat is still dropped at intake.
    #[test]
    fn keys_accepted_before_version_12_stay_accepted() {
        let (_dir, path) = file_at_version(
            11,
            "INSERT INTO inbox (id, marketplace, delivery_id, origin, text, received_at)
                 VALUES (1, 'm', 'd', 'f:1', '{}', 0);
             INSERT INTO outbox (id, inbox_id, mapping, endpoint, lane, body, once_key,
                                 unique_id, state, next_attempt_at, created_at, sent_at)
                 VALUES (1, 1, 'placed-order', '/api/events', 'transaction', '{}', '5001',
                         'po-5001', 'sent', 0, 0, 7);
             INSERT INTO ledger (outbox_id, key, unique_id, endpoint, status, sent_at)
                 VALUES (1, 'placed-order' || char(31) || '5001', 'po-5001', '/api/events',
                         202, 7);",
        );
        let mut store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), 12);
        assert!(
            store
                .ledger_has(&ledger_key("placed-order", "5001"))
                .unwrap()
        );
        assert!(
            !store
                .ledger_has(&ledger_key("placed-order", "5002"))
                .unwrap()
        );
        assert!(
            !store
                .ledger_has(&ledger_key("ordered-product", "5001"))
                .unwrap()
        );
        assert_eq!(
            store.accepted_at("/api/events", "po-5001").unwrap(),
            Some(7)
        );
        assert_eq!(store.accepted_at("/api/events", "po-5002").unwrap(), None);
        let repeat = NewRequest {
            once_key: Some("5001".into()),
            ..queued("placed-order", "transaction", "/api/events", "po-5001")
        };
        assert_eq!(
            store.request_found(&repeat).unwrap(),
            reconcile::Found::Accepted
        );
        let intake = store.intake(&delivery("d2"), &[repeat], &[], 8).unwrap();
        assert_eq!((intake.queued, intake.dropped_once), (0, 1));
    }

    /// Issue 12: a version 3 file (the last before attempts, warnings, discards and resolved
    /// exceptions) keeps its letters and exceptions open, and its requests have no attempts.
    #[test]
    fn a_version_3_store_keeps_its_rows_and_gains_the_operators_tables() {
        let (_dir, path) = file_at_version(
            3,
            "INSERT INTO inbox (id, marketplace, delivery_id, origin, text, received_at)
                 VALUES (1, 'm', 'd', 'f:1', '{}', 0);
             INSERT INTO outbox (id, inbox_id, mapping, endpoint, lane, body, state, attempts,
                                 next_attempt_at, last_error, created_at)
                 VALUES (1, 1, 'placed-order', '/api/events', 'transaction', '{}', 'dead', 3,
                         0, 'Klaviyo answered 503', 0);
             INSERT INTO dead_letter (outbox_id, inbox_id, mapping, category, reason, details,
                                      created_at)
                 VALUES (1, 1, 'placed-order', 'retries-exhausted', 'gave up', '{}', 5);
             INSERT INTO exception (outbox_id, kind, flagged_at)
                 VALUES (1, 'sent-after-hold', 6);",
        );
        let mut store = Store::open(&path).unwrap();
        assert_eq!(
            store.schema_version().unwrap(),
            schema::MIGRATIONS.len() as u32
        );
        let letters = store.open_dead_letters(&Filter::default()).unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].category, "retries-exhausted");
        assert_eq!(letters[0].closed, None);
        assert_eq!(store.attempts(1).unwrap(), []);
        assert_eq!(store.open_exceptions(&Filter::default()).unwrap().len(), 1);
        assert_eq!(store.status(10).unwrap().exceptions, 1);
        assert_eq!(store.warnings(None).unwrap(), []);
        store.discard(&[letters[0].id], "old outage", 20).unwrap();
        assert_eq!(store.status(30).unwrap().dead_letters.len(), 0);
    }

    fn delivery(id: &str) -> DeliveryRecord<'_> {
        DeliveryRecord {
            marketplace: "m",
            delivery_id: id,
            origin: "test",
            text: "{}",
        }
    }

    fn inbox(store: &Store) -> Vec<String> {
        let mut query = store
            .conn
            .prepare("SELECT delivery_id FROM inbox ORDER BY id")
            .unwrap();
        query
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Issue 13: one commit for many items keeps those that succeed and undoes one that fails,
    /// its own earlier writes included, alone.
    #[test]
    fn one_commit_undoes_a_failing_item_alone() {
        let mut store = Store::in_memory().unwrap();
        store
            .conn
            .execute_batch(
                "CREATE TRIGGER injected BEFORE INSERT ON inbox WHEN NEW.delivery_id = 'bad'
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
            )
            .unwrap();
        let items = [vec!["a"], vec!["b", "bad"], vec!["c"]];
        let outcomes = store
            .in_one_commit(items, |store, ids| {
                for id in ids {
                    store.intake(&delivery(id), &[], &[], 0)?;
                }
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let failed: Vec<bool> = outcomes.iter().map(Result::is_err).collect();
        assert_eq!(failed, [false, true, false]);
        assert!(store.conn.is_autocommit(), "committed");
        assert_eq!(inbox(&store), ["a", "c"]);
        // An item sees the items before it: a repeat inside one commit is a duplicate.
        let outcomes = store
            .in_one_commit(["d", "d"], |store, id| {
                store.intake(&delivery(id), &[], &[], 0)
            })
            .unwrap();
        let duplicates: Vec<bool> = outcomes
            .into_iter()
            .map(|o| o.unwrap().duplicate_delivery)
            .collect();
        assert_eq!(duplicates, [false, true]);
    }

    /// Issue 13: when the commit itself fails, no item of it is kept, and the store takes
    /// writes again.
    #[test]
    fn a_failed_commit_keeps_no_item() {
        let mut store = Store::in_memory().unwrap();
        // A deferred foreign key is checked at COMMIT, not at the item's savepoint.
        store
            .conn
            .execute_batch(
                "CREATE TABLE parent (id INTEGER PRIMARY KEY);
                 CREATE TABLE child (parent_id REFERENCES parent (id)
                                     DEFERRABLE INITIALLY DEFERRED);
                 CREATE TRIGGER orphan AFTER INSERT ON inbox WHEN NEW.delivery_id = 'orphan'
                 BEGIN INSERT INTO child VALUES (42); END",
            )
            .unwrap();
        let outcome = store.in_one_commit(["a", "orphan", "b"], |store, id| {
            store.intake(&delivery(id), &[], &[], 0)
        });
        assert!(outcome.is_err());
        assert!(store.conn.is_autocommit(), "rolled back");
        assert_eq!(inbox(&store), Vec::<String>::new());
        store.intake(&delivery("a"), &[], &[], 0).unwrap();
        assert_eq!(inbox(&store), ["a"]);
    }

    /// A request queued with an empty body and a unique id of its own.
    fn queued(mapping: &str, lane: &str, endpoint: &str, unique: &str) -> NewRequest {
        NewRequest {
            mapping: mapping.into(),
            endpoint: endpoint.into(),
            lane: lane.into(),
            body: "{}".into(),
            unique_id: Some(unique.into()),
            ..NewRequest::default()
        }
    }

    /// Issue 14: lag is read back per request accepted, newest first, and the newest
    /// delivery's time is known without a scan.
    #[test]
    fn sent_requests_carry_their_lag_and_the_newest_delivery_is_known() {
        let mut store = Store::in_memory().unwrap();
        assert_eq!(store.status(0).unwrap().last_delivery, None);
        let request = |unique: &str| queued("placed-order", "transaction", "/api/events", unique);
        let delivery = |id: &'static str| DeliveryRecord {
            marketplace: "m",
            delivery_id: id,
            origin: "test",
            text: "{}",
        };
        store
            .intake(&delivery("d1"), &[request("u1")], &[], 1_000)
            .unwrap();
        store
            .intake(&delivery("d2"), &[request("u2")], &[], 2_000)
            .unwrap();
        assert_eq!(store.status(0).unwrap().last_delivery, Some(2_000));
        let due = store.due_except("transaction", 10_000, 10, &[]).unwrap();
        // Two answers written in one commit keep their own times.
        let answer = |id: i64, at: i64| Accepted {
            ids: vec![id],
            status: 202,
            at,
        };
        store
            .mark_accepted(&[answer(due[0].id, 1_500), answer(due[1].id, 9_000)])
            .unwrap();
        let sent = store.sent_since(0, 10).unwrap();
        let lags: Vec<(i64, i64)> = sent.iter().map(|s| (s.sent_at, s.lag_ms)).collect();
        assert_eq!(lags, [(9_000, 7_000), (1_500, 500)]);
        assert_eq!(sent[0].mapping, "placed-order");
        assert_eq!(sent[0].lane, "transaction");
        assert_eq!(store.sent_since(2_000, 10).unwrap().len(), 1);
        assert_eq!(store.sent_since(0, 1).unwrap()[0].sent_at, 9_000);
    }

    /// A lane's skipped endpoints are left out; a lane whose every queued row is skipped has
    /// nothing due (answered without walking its queue).
    #[test]
    fn due_rows_leave_out_skipped_endpoints_and_a_wholly_skipped_lane_has_none() {
        let mut store = Store::in_memory().unwrap();
        let request = |endpoint: &str, unique: &str| queued("m", "profile", endpoint, unique);
        let delivery = DeliveryRecord {
            marketplace: "m",
            delivery_id: "d1",
            origin: "test",
            text: "{}",
        };
        let queued = [
            request("/api/profile-import", "p1"),
            request("/api/profile-subscription-bulk-create-jobs", "s1"),
            request("/api/profile-import", "p2"),
        ];
        store.intake(&delivery, &queued, &[], 1_000).unwrap();
        let endpoints = |due: Vec<Pending>| -> Vec<String> {
            due.into_iter().map(|row| row.endpoint).collect()
        };
        let import = "/api/profile-import";
        let subscribe = "/api/profile-subscription-bulk-create-jobs";
        assert_eq!(
            endpoints(store.due_except("profile", 2_000, 10, &[import]).unwrap()),
            [subscribe]
        );
        assert_eq!(
            endpoints(
                store
                    .due_except("profile", 2_000, 10, &["/api/events"])
                    .unwrap()
            ),
            [import, subscribe, import]
        );
        assert!(
            store
                .due_except("profile", 2_000, 10, &[import, subscribe])
                .unwrap()
                .is_empty()
        );
        let subscription = store.due_except("profile", 2_000, 10, &[import]).unwrap()[0].id;
        store.mark_sent(&[subscription], 202, 2_000).unwrap();
        assert!(
            store
                .due_except("profile", 2_000, 10, &[import])
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store.due_except("profile", 2_000, 10, &[]).unwrap().len(),
            2
        );
        assert!(
            store
                .due_except("transaction", 2_000, 10, &[])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn ledger_keys_are_scoped_by_mapping() {
        assert_eq!(ledger_key("placed-order", "5001"), "placed-order\u{1f}5001");
    }
}
