//! Dead letters: what could not become an accepted request, kept with what it came from until
//! it is requeued or resolved.

use super::intake::{queue, versions_of};
use super::outbox::{insert_attempt, state_of};
use super::{Closed, DeadLetter, Filter, Intake, NewDeadLetter, NewRequest, Store, StoreError};
use rusqlite::{Connection, OptionalExtension, params};

/// The columns [`letter_from`] reads, from `dead_letter d LEFT JOIN inbox i LEFT JOIN outbox o`.
const LETTER_COLUMNS: &str = "d.id, d.category, d.reason, d.details, d.mapping, d.outbox_id,
    i.marketplace, i.delivery_id, coalesce(i.origin, d.origin), coalesce(i.text, d.text),
    d.created_at, o.endpoint, o.body, d.resolved_at, d.discard_reason
    FROM dead_letter d LEFT JOIN inbox i ON i.id = d.inbox_id
                       LEFT JOIN outbox o ON o.id = d.outbox_id";

impl Store {
    /// Klaviyo refused an outbox row for good: in one transaction the row becomes dead and the
    /// letter is written, pointing at the row and its delivery. Without a mapping of its own,
    /// the letter takes the row's.
    ///
    /// A letter with details came from an answer (or the last of several failures): that
    /// answer is recorded as the row's last [`super::Attempt`], with `details.status` when
    /// there is one. A letter with empty details (a body that is not JSON, an unknown
    /// endpoint) was never sent, so no attempt is recorded for it.
    pub fn dead_letter(
        &mut self,
        id: i64,
        letter: &NewDeadLetter,
        now: i64,
    ) -> Result<(), StoreError> {
        let tx = self.write()?;
        match state_of(&tx, id)?.as_str() {
            "pending" | "superseded" => {}
            state => {
                return Err(StoreError::NotPending {
                    id,
                    state: state.to_owned(),
                });
            }
        }
        tx.execute("UPDATE outbox SET state = 'dead' WHERE id = ?1", [id])?;
        let inbox_id: i64 =
            tx.query_row("SELECT inbox_id FROM outbox WHERE id = ?1", [id], |r| {
                r.get(0)
            })?;
        insert_letter(&tx, inbox_id, Some(id), letter, now)?;
        if letter.details.as_object().is_none_or(|d| !d.is_empty()) {
            let status = letter.details["status"]
                .as_u64()
                .and_then(|s| u16::try_from(s).ok());
            insert_attempt(&tx, id, now, status, &letter.reason)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// A line that could not be read as a delivery: kept as a dead letter (`unreadable`) with
    /// its origin and raw text, as there is no delivery id to file it under. Reading the same
    /// line again (same origin and text) while its letter is unresolved adds nothing; returns
    /// whether a letter was written.
    pub fn record_unreadable(
        &mut self,
        origin: &str,
        text: &str,
        reason: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let tx = self.write()?;
        let known: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM dead_letter
                            WHERE inbox_id IS NULL AND resolved_at IS NULL
                              AND origin = ?1 AND text = ?2)",
            params![origin, text],
            |r| r.get(0),
        )?;
        if !known {
            tx.execute(
                "INSERT INTO dead_letter (category, reason, details, origin, text, created_at)
                 VALUES ('unreadable', ?1, '{}', ?2, ?3, ?4)",
                params![reason, origin, text, now],
            )?;
        }
        tx.commit()?;
        Ok(!known)
    }

    /// Unresolved dead letters, oldest first, of one category and/or mapping or all, each with
    /// the raw delivery (or line) it came from.
    pub fn dead_letters(
        &self,
        category: Option<&str>,
        mapping: Option<&str>,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        self.open_dead_letters(&Filter {
            category,
            mapping,
            since: None,
        })
    }

    /// Open dead letters matching `filter`, oldest first: what `retry` takes and `dead list`
    /// shows. Discarded and requeued letters are not among them.
    pub fn open_dead_letters(&self, filter: &Filter) -> Result<Vec<DeadLetter>, StoreError> {
        let mut statement = self.conn.prepare_cached(&format!(
            "SELECT {LETTER_COLUMNS}
             WHERE d.resolved_at IS NULL
               AND (?1 IS NULL OR d.category = ?1) AND (?2 IS NULL OR d.mapping = ?2)
               AND (?3 IS NULL OR d.created_at >= ?3)
             ORDER BY d.id"
        ))?;
        let rows = statement.query_map(
            params![filter.category, filter.mapping, filter.since],
            letter_from,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Open dead letters by mapping (those of no mapping, such as unreadable lines, left
    /// out): how many orders or opt-ins an alert on a mapping touches.
    pub fn open_dead_letter_counts_by_mapping(
        &self,
    ) -> Result<std::collections::BTreeMap<String, usize>, StoreError> {
        let mut statement = self.conn.prepare_cached(
            "SELECT mapping, count(*) FROM dead_letter
             WHERE resolved_at IS NULL AND mapping IS NOT NULL GROUP BY mapping",
        )?;
        let rows = statement.query_map([], |r| Ok((r.get(0)?, super::count_at(r, 1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One dead letter, open or closed.
    pub fn find_dead_letter(&self, id: i64) -> Result<DeadLetter, StoreError> {
        self.conn
            .prepare_cached(&format!("SELECT {LETTER_COLUMNS} WHERE d.id = ?1"))?
            .query_row([id], letter_from)
            .optional()?
            .ok_or(StoreError::NotFound {
                what: "dead letter",
                id,
            })
    }

    /// An operator gives up on these letters: each is closed with `reason` and the time, kept,
    /// and no longer open (so neither counted by `status` nor taken by `retry`). All or
    /// nothing: an id that does not exist or is not open is an error, and then no letter is
    /// discarded.
    pub fn discard(&mut self, ids: &[i64], reason: &str, now: i64) -> Result<(), StoreError> {
        let tx = self.write()?;
        for &id in ids {
            open_letter(&tx, id)?;
            tx.execute(
                "UPDATE dead_letter SET resolved_at = ?2, discard_reason = ?3 WHERE id = ?1",
                params![id, now, reason],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Retries a dead letter: in one transaction the letter is resolved and `requests` (mapped
    /// again from its delivery, with fixed mappings) are queued as fresh rows of that delivery,
    /// under the same rules as at intake. A once key already accepted is still dropped; dead
    /// rows hold no once key, so the refused request itself does not block its retry.
    ///
    /// An unreadable line has no delivery to queue under: take it in again with
    /// [`Store::intake`] and [`Store::resolve`] its letter.
    pub fn requeue(
        &mut self,
        dead_letter_id: i64,
        requests: &[NewRequest],
        now: i64,
    ) -> Result<Intake, StoreError> {
        self.requeue_concerning(dead_letter_id, requests, &[], now)
    }

    /// [`Store::requeue`], noting the people the requests name on the letter's delivery (see
    /// [`Store::intake_concerning`]): a delivery whose mapping failed at intake named nobody
    /// until it was mapped again.
    pub fn requeue_concerning(
        &mut self,
        dead_letter_id: i64,
        requests: &[NewRequest],
        people: &[String],
        now: i64,
    ) -> Result<Intake, StoreError> {
        let versions = versions_of(requests)?;
        let tx = self.write()?;
        let inbox_id = open_letter(&tx, dead_letter_id)?
            .ok_or(StoreError::NoDelivery { id: dead_letter_id })?;
        resolve_letter(&tx, dead_letter_id, now)?;
        let mut intake = Intake::default();
        for (request, version) in requests.iter().zip(&versions) {
            intake.count(queue(&tx, inbox_id, request, version.as_deref(), now)?);
        }
        for person in people {
            tx.prepare_cached("INSERT OR IGNORE INTO person (key, inbox_id) VALUES (?1, ?2)")?
                .execute(params![person, inbox_id])?;
        }
        tx.commit()?;
        Ok(intake)
    }

    /// Closes a dead letter without queueing anything: given up on, or taken in again.
    pub fn resolve(&mut self, dead_letter_id: i64, now: i64) -> Result<(), StoreError> {
        let tx = self.write()?;
        open_letter(&tx, dead_letter_id)?;
        resolve_letter(&tx, dead_letter_id, now)?;
        tx.commit()?;
        Ok(())
    }
}

/// The delivery of an unresolved letter (`None` for an unreadable line), or why it cannot be
/// retried.
fn open_letter(conn: &Connection, id: i64) -> Result<Option<i64>, StoreError> {
    type Row = (Option<i64>, Option<i64>, Option<String>);
    let (inbox_id, resolved_at, discarded): Row = conn
        .query_row(
            "SELECT inbox_id, resolved_at, discard_reason FROM dead_letter WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?
        .ok_or(StoreError::NotFound {
            what: "dead letter",
            id,
        })?;
    match (resolved_at, discarded) {
        (Some(_), Some(reason)) => Err(StoreError::AlreadyDiscarded { id, reason }),
        (Some(_), None) => Err(StoreError::AlreadyResolved { id }),
        (None, _) => Ok(inbox_id),
    }
}

/// A [`DeadLetter`] from a row of `SELECT {LETTER_COLUMNS}`.
fn letter_from(r: &rusqlite::Row) -> rusqlite::Result<DeadLetter> {
    let details: String = r.get(3)?;
    let details = serde_json::from_str(&details).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, e.into())
    })?;
    let delivery = match (r.get(6)?, r.get(7)?) {
        (Some(marketplace), Some(delivery_id)) => Some((marketplace, delivery_id)),
        _ => None,
    };
    let request = match (r.get(11)?, r.get(12)?) {
        (Some(endpoint), Some(body)) => Some((endpoint, body)),
        _ => None,
    };
    let closed = r
        .get::<_, Option<i64>>(13)?
        .map(|at| -> rusqlite::Result<Closed> {
            Ok(Closed {
                at,
                reason: r.get(14)?,
            })
        })
        .transpose()?;
    Ok(DeadLetter {
        id: r.get(0)?,
        category: r.get(1)?,
        reason: r.get(2)?,
        details,
        mapping: r.get(4)?,
        outbox_id: r.get(5)?,
        delivery,
        origin: r.get(8)?,
        text: r.get(9)?,
        created_at: r.get(10)?,
        request,
        closed,
    })
}

fn resolve_letter(conn: &Connection, id: i64, now: i64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE dead_letter SET resolved_at = ?2 WHERE id = ?1",
        params![id, now],
    )?;
    Ok(())
}

/// Writes a letter from a delivery (and a refused outbox row, if any).
pub(super) fn insert_letter(
    conn: &Connection,
    inbox_id: i64,
    outbox_id: Option<i64>,
    letter: &NewDeadLetter,
    now: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO dead_letter (inbox_id, outbox_id, mapping, category, reason, details,
                                  created_at)
         VALUES (?1, ?2, coalesce(?3, (SELECT mapping FROM outbox WHERE id = ?2)), ?4, ?5, ?6,
                 ?7)",
    )?
    .execute(params![
        inbox_id,
        outbox_id,
        letter.mapping,
        letter.category,
        letter.reason,
        letter.details.to_string(),
        now
    ])?;
    Ok(())
}
