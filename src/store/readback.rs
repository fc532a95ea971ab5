//! What reading Klaviyo back found, kept across runs: each finding is an exception with a
//! lifecycle, and each run leaves a summary for the trend.
//!
//! The rules of the lifecycle (which open exceptions a run may resolve) are the caller's
//! [`Checked`]; the store applies them in the same transaction that writes the run's findings,
//! so a crash keeps a run's read-back whole or not at all, and a run is recorded once. The
//! findings are kept as the caller's JSON beside the few columns the store counts and filters
//! on (class, key, money, currency).

use super::{Store, StoreError};
use crate::reconcile::exceptions::{
    Checked, ClassFigures, Lifecycle, OpenCounts, ReadBackException, Resolution, Summary,
    rank_exceptions,
};
use crate::reconcile::impact::{Class, Discrepancy, ReadBack, Tier};
use rusqlite::{OptionalExtension, params};
use std::collections::{BTreeMap, HashSet};

/// Which open read-back exceptions to list. Every part left `None` matches all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadBackFilter {
    pub class: Option<Class>,
    pub tier: Option<Tier>,
    /// First seen at or after this time (unix ms).
    pub since: Option<i64>,
}

/// The columns [`exception_from`] reads.
const COLUMNS: &str = "id, discrepancy, first_seen, last_seen, times_seen, first_run, last_run,
    resolved_at, resolved_run, resolve_reason";

impl Store {
    /// Keeps run `run_id`'s read-back: each finding opens an exception or is found again (one
    /// open exception per key), each open exception the run `checked` covers and did not find
    /// is resolved, and the run's summary is kept. In one transaction; a run is recorded once
    /// ([`StoreError::ReadBackRecorded`]).
    pub fn record_read_back(
        &mut self,
        run_id: i64,
        checked: &Checked,
        read_back: &ReadBack,
        now: i64,
    ) -> Result<Lifecycle, StoreError> {
        let tx = self.write()?;
        let recorded: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM read_back_run WHERE run_id = ?1)",
            [run_id],
            |r| r.get(0),
        )?;
        if recorded {
            return Err(StoreError::ReadBackRecorded { run_id });
        }
        let mut lifecycle = Lifecycle::default();
        let mut classes: BTreeMap<Class, ClassFigures> = BTreeMap::new();
        let mut keys = HashSet::new();
        for found in &read_back.discrepancies {
            // A key found twice in one run is one exception; the first (higher ranked) counts.
            if !keys.insert(found.key.as_str()) {
                continue;
            }
            let json = serde_json::to_string(found).expect("a finding serialises");
            let currency = found.currency.clone().unwrap_or_default();
            let figures = classes.entry(found.class).or_default();
            figures.found += 1;
            let open: Option<i64> = tx
                .prepare_cached(
                    "SELECT id FROM read_back_exception WHERE key = ?1 AND resolved_at IS NULL",
                )?
                .query_row([&found.key], |r| r.get(0))
                .optional()?;
            match open {
                Some(id) => {
                    tx.prepare_cached(
                        "UPDATE read_back_exception
                         SET class = ?2, money_cents = ?3, currency = ?4, discrepancy = ?5,
                             last_seen = ?6, times_seen = times_seen + 1, last_run = ?7
                         WHERE id = ?1",
                    )?
                    .execute(params![
                        id,
                        found.class.name(),
                        found.money_cents,
                        currency,
                        json,
                        now,
                        run_id
                    ])?;
                    figures.again += 1;
                    lifecycle.again.push(id);
                }
                None => {
                    tx.prepare_cached(
                        "INSERT INTO read_back_exception (class, key, money_cents, currency,
                             discrepancy, first_seen, last_seen, times_seen, first_run, last_run)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, 1, ?7, ?7)",
                    )?
                    .execute(params![
                        found.class.name(),
                        found.key,
                        found.money_cents,
                        currency,
                        json,
                        now,
                        run_id
                    ])?;
                    figures.opened += 1;
                    lifecycle.opened.push(tx.last_insert_rowid());
                }
            }
        }
        let left: Vec<(i64, String)> = tx
            .prepare_cached(
                "SELECT id, discrepancy FROM read_back_exception
                 WHERE resolved_at IS NULL AND last_run <> ?1 ORDER BY id",
            )?
            .query_map([run_id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (id, json) in left {
            let earlier = finding(id, &json)?;
            if checked.covers(&earlier) {
                tx.prepare_cached(
                    "UPDATE read_back_exception SET resolved_at = ?2, resolved_run = ?3
                     WHERE id = ?1",
                )?
                .execute(params![id, now, run_id])?;
                classes.entry(earlier.class).or_default().resolved += 1;
                lifecycle.resolved.push(id);
            }
        }
        for (class, (count, money)) in open_counts(&tx)? {
            let figures = classes.entry(class).or_default();
            figures.open = count;
            figures.open_money = money;
        }
        let summary = Summary {
            run_id,
            recorded_at: now,
            since: iso(checked.since),
            until: iso(checked.until),
            classes,
            revenue: read_back.revenue.clone(),
            reads: read_back.reads.clone(),
            elapsed_ms: read_back.elapsed_ms,
        };
        tx.execute(
            "INSERT INTO read_back_run (run_id, recorded_at, summary) VALUES (?1, ?2, ?3)",
            params![
                run_id,
                now,
                serde_json::to_string(&summary).expect("a summary serialises")
            ],
        )?;
        tx.commit()?;
        lifecycle.summary = summary;
        Ok(lifecycle)
    }

    /// Open read-back exceptions matching `filter`, most harmful first.
    pub fn open_read_back_exceptions(
        &self,
        filter: &ReadBackFilter,
    ) -> Result<Vec<ReadBackException>, StoreError> {
        let mut statement = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM read_back_exception
             WHERE resolved_at IS NULL AND (?1 IS NULL OR class = ?1)
               AND (?2 IS NULL OR first_seen >= ?2)"
        ))?;
        let rows = statement.query_map(
            params![filter.class.map(Class::name), filter.since],
            columns,
        )?;
        let mut found = Vec::new();
        for row in rows {
            let exception = exception_from(row?)?;
            if filter.tier.is_none_or(|tier| exception.tier() == tier) {
                found.push(exception);
            }
        }
        rank_exceptions(&mut found);
        Ok(found)
    }

    /// One read-back exception, open or resolved.
    pub fn find_read_back_exception(&self, id: i64) -> Result<ReadBackException, StoreError> {
        let row = self
            .conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM read_back_exception WHERE id = ?1"
            ))?
            .query_row([id], columns)
            .optional()?
            .ok_or(StoreError::ReadBackNotFound { id })?;
        exception_from(row)
    }

    /// The exceptions run `run_id` resolved by no longer finding them, most harmful first.
    pub fn read_back_resolved_by(&self, run_id: i64) -> Result<Vec<ReadBackException>, StoreError> {
        let mut statement = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM read_back_exception WHERE resolved_run = ?1"
        ))?;
        let rows = statement.query_map([run_id], columns)?;
        let mut found = rows
            .map(|row| exception_from(row?))
            .collect::<Result<Vec<_>, _>>()?;
        rank_exceptions(&mut found);
        Ok(found)
    }

    /// A person has dealt with these read-back exceptions: each is closed with `reason` and
    /// the time, and kept. All or nothing, as [`Store::resolve_exceptions`]. A run that finds
    /// the same thing again opens a new exception.
    pub fn resolve_read_back_exceptions(
        &mut self,
        ids: &[i64],
        reason: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let tx = self.write()?;
        for &id in ids {
            let resolved: Option<i64> = tx
                .query_row(
                    "SELECT resolved_at FROM read_back_exception WHERE id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .optional()?
                .ok_or(StoreError::ReadBackNotFound { id })?;
            if resolved.is_some() {
                return Err(StoreError::ReadBackResolved { id });
            }
            tx.execute(
                "UPDATE read_back_exception SET resolved_at = ?2, resolve_reason = ?3
                 WHERE id = ?1",
                params![id, now, reason],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The summaries of the last `n` runs that read Klaviyo back, newest first.
    pub fn last_read_backs(&self, n: usize) -> Result<Vec<Summary>, StoreError> {
        let mut statement = self.conn.prepare_cached(
            "SELECT run_id, summary FROM read_back_run
             ORDER BY recorded_at DESC, run_id DESC LIMIT ?1",
        )?;
        let rows = statement.query_map([n as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut summaries = Vec::new();
        for row in rows {
            let (run_id, json) = row?;
            summaries.push(
                serde_json::from_str(&json).map_err(|e| StoreError::Unreadable {
                    what: format!("the read-back summary of run {run_id}"),
                    problem: e.to_string(),
                })?,
            );
        }
        Ok(summaries)
    }

    /// Open read-back exceptions by class: how many, and their money at stake per currency.
    pub fn open_read_back_counts(&self) -> Result<OpenCounts, StoreError> {
        open_counts(&self.conn)
    }
}

pub(super) fn open_counts(conn: &rusqlite::Connection) -> Result<OpenCounts, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT class, currency, count(*), sum(money_cents) FROM read_back_exception
         WHERE resolved_at IS NULL GROUP BY class, currency",
    )?;
    let rows = statement.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    let mut counts = OpenCounts::new();
    for row in rows {
        let (name, currency, count, money) = row?;
        let class = Class::from_name(&name).ok_or_else(|| StoreError::Unreadable {
            what: "a read-back exception".into(),
            problem: format!("unknown class `{name}`"),
        })?;
        let entry = counts.entry(class).or_default();
        entry.0 += count as u64;
        *entry.1.entry(currency).or_default() += money;
    }
    Ok(counts)
}

/// A row of `SELECT {COLUMNS}`, before its finding is read.
type Row = (
    i64,
    String,
    i64,
    i64,
    i64,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    Option<String>,
);

fn columns(r: &rusqlite::Row) -> rusqlite::Result<Row> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
    ))
}

fn exception_from(row: Row) -> Result<ReadBackException, StoreError> {
    let (id, json, first_seen, last_seen, times_seen, first_run, last_run, at, run, reason) = row;
    let closed = match (at, run, reason) {
        (None, _, _) => None,
        (Some(at), Some(run_id), _) => Some(Resolution::Run { run_id, at }),
        (Some(at), None, reason) => Some(Resolution::Hand {
            at,
            reason: reason.unwrap_or_default(),
        }),
    };
    Ok(ReadBackException {
        id,
        discrepancy: finding(id, &json)?,
        first_seen,
        last_seen,
        times_seen: times_seen as u64,
        first_run,
        last_run,
        closed,
    })
}

fn finding(id: i64, json: &str) -> Result<Discrepancy, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Unreadable {
        what: format!("read-back exception {id}"),
        problem: e.to_string(),
    })
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}
