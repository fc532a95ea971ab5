//! The store's tables, as an ordered list of migration steps.
//!
//! `PRAGMA user_version` holds how many steps a database file has had. Opening a file applies
//! the missing ones, each in its own transaction together with the version bump, so a crash
//! mid-migration leaves the file at the previous version, never between two. Steps are only
//! ever appended: a released step is never edited, because files in the field already ran it.

use super::StoreError;
use rusqlite::{Connection, TransactionBehavior};

/// Step `i` takes a file from version `i` to version `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5, V6, V7, V8, V9, V10, V11, V12];

/// The tables every marketsync file has had since version 1: with an unstamped file (see
/// [`unstamped_versions`]) they are how an earlier marketsync's file is told from another
/// application's.
pub(super) const TABLES: &[&str] = &[
    "inbox",
    "outbox",
    "ledger",
    "watermark",
    "consent",
    "dead_letter",
    "exception",
];

/// The versions written before files carried marketsync's application id: those before the
/// step that stamps it.
pub(super) fn unstamped_versions() -> std::ops::RangeInclusive<u32> {
    let stamp = MIGRATIONS
        .iter()
        .position(|step| *step == V3)
        .expect("the stamping step is listed");
    1..=stamp as u32
}

/// Version 1: inbox, outbox, ledger, watermark, consent, dead letters, exceptions.
const V1: &str = r#"
-- Every delivery read, once per marketplace and delivery id.
CREATE TABLE inbox (
    id           INTEGER PRIMARY KEY,
    marketplace  TEXT    NOT NULL,
    delivery_id  TEXT    NOT NULL,
    origin       TEXT    NOT NULL,   -- file:line, or where a webhook came from
    text         TEXT    NOT NULL,   -- the raw delivery, for retries with fixed mappings
    received_at  INTEGER NOT NULL,
    UNIQUE (marketplace, delivery_id)
) STRICT;

-- Requests to send. `state` moves pending -> sent | dead, or pending -> superseded (a newer
-- request for the same coalesce key took its place) -> sent | dead if it was already in flight.
CREATE TABLE outbox (
    id               INTEGER PRIMARY KEY,
    inbox_id         INTEGER NOT NULL REFERENCES inbox (id),
    mapping          TEXT    NOT NULL,
    endpoint         TEXT    NOT NULL,
    lane             TEXT    NOT NULL,
    body             TEXT    NOT NULL,
    once_key         TEXT,
    unique_id        TEXT,
    waits_for        TEXT,
    coalesce_key     TEXT,
    version          TEXT,   -- normalised UTC RFC 3339: sorts as text in time order
    state            TEXT    NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'superseded', 'sent', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    sent_at          INTEGER,
    CHECK (coalesce_key IS NULL OR version IS NOT NULL)
) STRICT;
CREATE INDEX outbox_due ON outbox (lane, next_attempt_at) WHERE state = 'pending';
CREATE UNIQUE INDEX outbox_open_once ON outbox (mapping, once_key)
    WHERE state IN ('pending', 'superseded') AND once_key IS NOT NULL;
CREATE UNIQUE INDEX outbox_pending_coalesce ON outbox (mapping, coalesce_key)
    WHERE state = 'pending' AND coalesce_key IS NOT NULL;

-- What Klaviyo accepted. `key` is ledger_key(mapping, once_key).
CREATE TABLE ledger (
    id         INTEGER PRIMARY KEY,
    outbox_id  INTEGER NOT NULL UNIQUE REFERENCES outbox (id),
    key        TEXT,
    unique_id  TEXT,
    endpoint   TEXT    NOT NULL,
    status     INTEGER NOT NULL,
    sent_at    INTEGER NOT NULL
) STRICT;
CREATE INDEX ledger_key ON ledger (key) WHERE key IS NOT NULL;
CREATE INDEX ledger_endpoint ON ledger (endpoint, sent_at);

-- The latest version applied per profile, scoped by mapping like once keys.
CREATE TABLE watermark (
    mapping       TEXT    NOT NULL,
    coalesce_key  TEXT    NOT NULL,
    version       TEXT    NOT NULL,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (mapping, coalesce_key)
) STRICT, WITHOUT ROWID;

-- Initial opt-ins Klaviyo accepted, by the subscription's once key (profile and marketplace).
CREATE TABLE consent (
    once_key     TEXT    PRIMARY KEY,
    mapping      TEXT    NOT NULL,
    outbox_id    INTEGER NOT NULL REFERENCES outbox (id),
    accepted_at  INTEGER NOT NULL
) STRICT;

-- Everything that could not become an accepted request. A letter comes from a delivery
-- (inbox_id, and outbox_id when Klaviyo refused a request) or from an unreadable line
-- (origin and text, no delivery).
CREATE TABLE dead_letter (
    id           INTEGER PRIMARY KEY,
    outbox_id    INTEGER UNIQUE REFERENCES outbox (id),
    inbox_id     INTEGER REFERENCES inbox (id),
    mapping      TEXT,
    category     TEXT    NOT NULL,
    reason       TEXT    NOT NULL,
    details      TEXT    NOT NULL,   -- JSON
    origin       TEXT,
    text         TEXT,
    created_at   INTEGER NOT NULL,
    resolved_at  INTEGER,
    CHECK ((inbox_id IS NULL) <> (text IS NULL))
) STRICT;
CREATE INDEX dead_letter_unresolved ON dead_letter (category) WHERE resolved_at IS NULL;

-- Requests sent out of the ordinary (after their ordering hold expired), for the report.
CREATE TABLE exception (
    id          INTEGER PRIMARY KEY,
    outbox_id   INTEGER NOT NULL REFERENCES outbox (id),
    kind        TEXT    NOT NULL,
    flagged_at  INTEGER NOT NULL
) STRICT;
"#;

/// Version 2: an exception is one fact about one request, however often the request is tried
/// (a held Fulfilled Order retried through an outage was counted once per attempt).
const V2: &str = r#"
DELETE FROM exception
 WHERE id NOT IN (SELECT MIN(id) FROM exception GROUP BY outbox_id, kind);
CREATE UNIQUE INDEX exception_once ON exception (outbox_id, kind);
"#;

/// Version 3: the file says it is marketsync's (`PRAGMA application_id`, see
/// [`super::APPLICATION_ID`]), so that marketsync can refuse a file that is not, and `file(1)`
/// and other tools can tell what it is. New files carry it from creation; this stamps the files
/// of earlier versions.
const V3: &str = "PRAGMA application_id = 1298879353;";

/// Version 4: what an operator works through. A dead letter can be discarded (given up on,
/// with a reason; `resolved_at` is when), an exception resolved likewise, every answer a
/// request got is kept (`attempt`), and the warnings raised at intake are kept with their
/// delivery. Rows of earlier versions are kept as they were: their letters and exceptions are
/// open or resolved as before, and their requests simply have no attempts.
const V4: &str = r#"
-- Set with resolved_at when an operator discards the letter; a letter resolved without it was
-- requeued (or its line taken in again).
ALTER TABLE dead_letter ADD COLUMN discard_reason TEXT;
CREATE INDEX dead_letter_open_created ON dead_letter (created_at) WHERE resolved_at IS NULL;

ALTER TABLE exception ADD COLUMN resolved_at INTEGER;
ALTER TABLE exception ADD COLUMN resolve_reason TEXT;
CREATE INDEX exception_open ON exception (kind) WHERE resolved_at IS NULL;

-- One row per answer a request got, or per failure to get one; the answer is an excerpt.
CREATE TABLE attempt (
    id            INTEGER PRIMARY KEY,
    outbox_id     INTEGER NOT NULL REFERENCES outbox (id),
    attempted_at  INTEGER NOT NULL,
    status        INTEGER,   -- Klaviyo's HTTP status, when it is known
    answer        TEXT    NOT NULL
) STRICT;
CREATE INDEX attempt_outbox ON attempt (outbox_id, id);

-- What did not stop a mapping but was left out or changed (an unreadable phone, say).
CREATE TABLE warning (
    id          INTEGER PRIMARY KEY,
    inbox_id    INTEGER NOT NULL REFERENCES inbox (id),
    message     TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX warning_created ON warning (created_at);
"#;

/// Version 5: how late requests reached Klaviyo is read by when they were accepted (the
/// status page's last hour, the lag alert's last minutes), so the ledger is indexed by it.
const V5: &str = r#"
CREATE INDEX ledger_sent_at ON ledger (sent_at);
"#;

/// Version 6: reconciliation. A run keeps its window and how far its sweep got (the query and
/// the cursor reached, and what it found so far, as the caller's opaque JSON), so a run that is
/// killed resumes where it stopped and ends with the report an uninterrupted run gives; and the
/// objects it has read, so each is counted once however many of its queries return it. It asks
/// the ledger and the outbox whether a request with a given `unique_id` was accepted or is
/// queued, hence their indexes.
const V6: &str = r#"
CREATE TABLE reconcile_run (
    id            INTEGER PRIMARY KEY,
    scope         TEXT    NOT NULL,   -- what is read: the instance, and whether it repairs
    since         TEXT    NOT NULL,   -- the window, RFC 3339 UTC, until excluded
    until         TEXT    NOT NULL,
    step          TEXT    NOT NULL,   -- the query reached
    cursor        TEXT,               -- its `after`, NULL for its first page
    counts        TEXT    NOT NULL,   -- what the run found so far (JSON)
    started_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    finished_at   INTEGER,
    abandoned_at  INTEGER             -- another window was asked for before it finished
) STRICT;
CREATE INDEX reconcile_run_open ON reconcile_run (scope)
    WHERE finished_at IS NULL AND abandoned_at IS NULL;
CREATE INDEX reconcile_run_finished ON reconcile_run (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE reconcile_seen (
    run_id     INTEGER NOT NULL REFERENCES reconcile_run (id),
    object_id  TEXT    NOT NULL,
    PRIMARY KEY (run_id, object_id)
) STRICT, WITHOUT ROWID;

CREATE INDEX ledger_unique_id ON ledger (endpoint, unique_id) WHERE unique_id IS NOT NULL;
CREATE INDEX outbox_open_unique_id ON outbox (endpoint, unique_id)
    WHERE state IN ('pending', 'superseded') AND unique_id IS NOT NULL;
"#;

/// Version 7: a person's history (`marketsync customer`). Which deliveries concerned whom is
/// kept as opaque keys the caller derives (`email:…`, `phone:…`), so the store stays free of
/// Klaviyo's payloads; requests dropped at intake (once per key, stale, coalesced) are kept as
/// facts, because "why was nothing sent?" is the question a customer asks. The indexes let a
/// person's deliveries, requests, letters and warnings be read without a scan.
///
/// Files of earlier versions hold requests whose people are not indexed yet: the highest such
/// outbox id is noted in `person_backfill`, and [`super::Store::backfill_people`] works down
/// from it with the caller's reader of bodies, then deletes the note.
const V7: &str = r#"
-- Which deliveries concerned which person: one row per (key, delivery).
CREATE TABLE person (
    key       TEXT    NOT NULL,
    inbox_id  INTEGER NOT NULL REFERENCES inbox (id),
    PRIMARY KEY (key, inbox_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX person_inbox ON person (inbox_id);

-- Requests a mapping produced that intake did not queue, and why.
CREATE TABLE dropped_request (
    id          INTEGER PRIMARY KEY,
    inbox_id    INTEGER NOT NULL REFERENCES inbox (id),
    mapping     TEXT    NOT NULL,
    endpoint    TEXT    NOT NULL,
    reason      TEXT    NOT NULL CHECK (reason IN ('once', 'stale', 'coalesced')),
    once_key    TEXT,
    created_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX dropped_request_inbox ON dropped_request (inbox_id);

CREATE INDEX outbox_inbox ON outbox (inbox_id);
CREATE INDEX dead_letter_inbox ON dead_letter (inbox_id) WHERE inbox_id IS NOT NULL;
CREATE INDEX warning_inbox ON warning (inbox_id);

-- Requests written before version 7, whose people are still to be indexed: ids up to this.
CREATE TABLE person_backfill (through_outbox_id INTEGER NOT NULL) STRICT;
INSERT INTO person_backfill SELECT max(id) FROM outbox WHERE id IS NOT NULL HAVING max(id) IS NOT NULL;
"#;

/// Version 8: the sender reads a lane's due requests oldest first (`created_at, id`), many
/// times a second while webhooks arrive. The index of version 1 was on `next_attempt_at`, so
/// every read sorted the whole pending lane, bodies included, under the store's lock that
/// intake needs too (0.1 s with 3,000 requests pending). This one is in the order of the read,
/// and holds what the read filters on (when due, the endpoint), so the read walks the index,
/// leaves out what it does not want without touching the rows, and stops once it has enough.
const V8: &str = r#"
DROP INDEX outbox_due;
CREATE INDEX outbox_due ON outbox (lane, created_at, id, next_attempt_at, endpoint)
    WHERE state = 'pending';
"#;

/// Version 9: what reading Klaviyo back found, over time. An exception is one finding (by its
/// stable key) from the run that first found it until a later run that covered it no longer
/// does, or a person resolves it with a reason; its latest finding is kept as the caller's
/// JSON. At most one open exception per key: found again, the open one is updated, and once it
/// is resolved a new sighting opens a new one (the old keeps how it was closed). Each run's
/// summary (counts and money per class, the revenue compared, the read budget) is kept for the
/// trend a report shows.
const V9: &str = r#"
CREATE TABLE read_back_exception (
    id              INTEGER PRIMARY KEY,
    class           TEXT    NOT NULL,
    key             TEXT    NOT NULL,
    money_cents     INTEGER NOT NULL,
    currency        TEXT    NOT NULL,   -- '' when the finding names none
    discrepancy     TEXT    NOT NULL,   -- the latest finding (JSON)
    first_seen      INTEGER NOT NULL,
    last_seen       INTEGER NOT NULL,
    times_seen      INTEGER NOT NULL,
    first_run       INTEGER NOT NULL REFERENCES reconcile_run (id),
    last_run        INTEGER NOT NULL REFERENCES reconcile_run (id),
    resolved_at     INTEGER,
    resolved_run    INTEGER REFERENCES reconcile_run (id),   -- a run no longer found it
    resolve_reason  TEXT,                                    -- a person resolved it
    CHECK (resolved_at IS NULL
           OR (resolved_run IS NULL) <> (resolve_reason IS NULL))
) STRICT;
CREATE UNIQUE INDEX read_back_exception_open ON read_back_exception (key)
    WHERE resolved_at IS NULL;
CREATE INDEX read_back_exception_open_class ON read_back_exception (class, currency)
    WHERE resolved_at IS NULL;
CREATE INDEX read_back_exception_resolved_run ON read_back_exception (resolved_run)
    WHERE resolved_run IS NOT NULL;

CREATE TABLE read_back_run (
    run_id       INTEGER PRIMARY KEY REFERENCES reconcile_run (id),
    recorded_at  INTEGER NOT NULL,
    summary      TEXT    NOT NULL   -- JSON
) STRICT;
CREATE INDEX read_back_run_recorded ON read_back_run (recorded_at);
"#;

/// Version 10: reading Klaviyo back. A reconciliation keeps, with its checkpoint, what the
/// window's requests say Klaviyo should hold (an event's key, order, value and time; a person's
/// owned properties and opt-in), written in the same transaction as each page of the sweep: a
/// run killed anywhere, in the sweep or while reading Klaviyo, resumes with the expected side
/// of every page it kept, and compares Klaviyo with the same set an uninterrupted run does.
/// The rows are the caller's JSON, and go when the run finishes or is abandoned.
const V10: &str = r#"
CREATE TABLE reconcile_expected (
    run_id  INTEGER NOT NULL REFERENCES reconcile_run (id),
    key     TEXT    NOT NULL,   -- one event (endpoint and unique_id) or one person
    body    TEXT    NOT NULL,   -- JSON, the caller's
    PRIMARY KEY (run_id, key)
) STRICT, WITHOUT ROWID;
"#;

/// Version 11: the sender asks, many times a second, whether a lane holds enough pending
/// requests of one endpoint for a bulk job (`Store::pending_reaches`). The due index is in
/// time order, so the answer walked every pending row of the lane, all of them when the lane
/// holds none of that endpoint's (a profile backlog of 30,000 was walked for events). This one
/// walks only that endpoint's rows, and at most as many as asked for.
const V11: &str = r#"
CREATE INDEX outbox_pending_endpoint ON outbox (lane, endpoint) WHERE state = 'pending';
"#;

/// Version 12: a request's once key and `unique_id` are each found through one index that
/// keeps the row whatever its state. Before, each key had a partial index of open rows, which a
/// row left when Klaviyo accepted it, and a ledger index it entered then: four changes to
/// indexes on random keys per accepted event, where now acceptance changes none (`serve`'s
/// CPU for the 120,000-webhook benchmark: 46.5 s -> 43.1 s of user time, 4 December). The
/// ledger still says when and with what status; whether a key was accepted is a row in state
/// `sent`, which only acceptance writes, with its ledger row. That an open once key is not
/// queued twice is kept by intake's check in the same transaction (`intake::queue`), as it
/// was for accepted ones.
const V12: &str = r#"
DROP INDEX outbox_open_once;
DROP INDEX outbox_open_unique_id;
DROP INDEX ledger_key;
DROP INDEX ledger_unique_id;
CREATE INDEX outbox_once ON outbox (mapping, once_key) WHERE once_key IS NOT NULL;
CREATE INDEX outbox_unique_id ON outbox (endpoint, unique_id) WHERE unique_id IS NOT NULL;
"#;

/// Applies the steps a file has not had yet and returns its version. Each step reads the
/// version inside its own write transaction, so two processes opening one new file do not
/// both run a step.
pub(super) fn migrate(conn: &mut Connection, steps: &[&str]) -> Result<u32, StoreError> {
    let known = steps.len() as u32;
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found = user_version(&tx)?;
        if found > known {
            return Err(StoreError::SchemaTooNew { found, known });
        }
        if found == known {
            return Ok(found);
        }
        tx.execute_batch(steps[found as usize])?;
        tx.pragma_update(None, "user_version", found + 1)?;
        tx.commit()?;
    }
}

pub(super) fn user_version(conn: &Connection) -> Result<u32, StoreError> {
    Ok(conn.pragma_query_value(None, "user_version", |row| row.get(0))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v1_file_takes_a_later_step_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let mut conn = Connection::open(&path).unwrap();
        assert_eq!(migrate(&mut conn, &[V1]).unwrap(), 1);
        conn.execute(
            "INSERT INTO inbox (marketplace, delivery_id, origin, text, received_at)
             VALUES ('m', 'd', 'f:1', '{}', 0)",
            [],
        )
        .unwrap();
        drop(conn);

        let v2 = "ALTER TABLE inbox ADD COLUMN sequence INTEGER";
        let mut conn = Connection::open(&path).unwrap();
        assert_eq!(migrate(&mut conn, &[V1, v2]).unwrap(), 2);
        let (id, sequence): (String, Option<i64>) = conn
            .query_row("SELECT delivery_id, sequence FROM inbox", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((id.as_str(), sequence), ("d", None));
        // Opening again runs nothing.
        assert_eq!(migrate(&mut conn, &[V1, v2]).unwrap(), 2);
    }

    #[test]
    fn a_failing_step_leaves_the_previous_version() {
        let mut conn = Connection::open_in_memory().unwrap();
        let broken = "CREATE TABLE extra (x INTEGER); THIS IS NOT SQL;";
        assert!(migrate(&mut conn, &[V1, broken]).is_err());
        assert_eq!(user_version(&conn).unwrap(), 1);
        let extra: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'extra'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(extra, 0, "the failed step's table was rolled back");
    }

    #[test]
    fn version_2_keeps_one_exception_per_request_and_kind() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, &[V1]).unwrap();
        // Exceptions alone, without their outbox rows: only the index is under test.
        conn.pragma_update(None, "foreign_keys", false).unwrap();
        for (outbox_id, kind) in [
            (1, "sent-after-hold"),
            (1, "sent-after-hold"),
            (1, "phone-removed"),
            (2, "sent-after-hold"),
        ] {
            conn.execute(
                "INSERT INTO exception (outbox_id, kind, flagged_at) VALUES (?1, ?2, 0)",
                rusqlite::params![outbox_id, kind],
            )
            .unwrap();
        }
        assert_eq!(migrate(&mut conn, &[V1, V2]).unwrap(), 2);
        let count: i64 = conn
            .query_row("SELECT count(*) FROM exception", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 3);
        let again = conn.execute(
            "INSERT OR IGNORE INTO exception (outbox_id, kind, flagged_at) VALUES (1, 'sent-after-hold', 9)",
            [],
        );
        assert_eq!(again.unwrap(), 0);
    }

    #[test]
    fn version_3_stamps_the_application_id() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, &[V1, V2]).unwrap();
        let id = |conn: &Connection| -> i32 {
            conn.pragma_query_value(None, "application_id", |r| r.get(0))
                .unwrap()
        };
        assert_eq!(id(&conn), 0);
        migrate(&mut conn, MIGRATIONS).unwrap();
        assert_eq!(id(&conn), super::super::APPLICATION_ID);
        assert_eq!(unstamped_versions(), 1..=2);
    }

    #[test]
    fn a_newer_file_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        let known = MIGRATIONS.len() as u32;
        conn.pragma_update(None, "user_version", known + 1).unwrap();
        let result = migrate(&mut conn, MIGRATIONS);
        assert!(
            matches!(result, Err(StoreError::SchemaTooNew { found, known: k }) if found == known + 1 && k == known),
            "{result:?}"
        );
    }
}
