//! Taking a delivery in: inbox row, outbox rows and mapping failures in one transaction, with
//! once-per, staleness and coalescing decided per request.

use super::{
    DeliveryRecord, Intake, NewDeadLetter, NewRequest, Store, StoreError, dead, normalise_version,
};
use rusqlite::{Connection, OptionalExtension, named_params, params};

impl Store {
    /// Takes a delivery in: its inbox row, the requests its mappings produced and the mapping
    /// failures of its records, all in one transaction. A delivery taken in before (same
    /// marketplace and delivery id) writes nothing and reports `duplicate_delivery`.
    ///
    /// Every version is checked before anything is written: one bad version refuses the whole
    /// delivery, so it is never half taken in.
    pub fn intake(
        &mut self,
        delivery: &DeliveryRecord,
        requests: &[NewRequest],
        failures: &[NewDeadLetter],
        now: i64,
    ) -> Result<Intake, StoreError> {
        self.intake_with_warnings(delivery, requests, failures, &[], now)
    }

    /// [`Store::intake`], keeping the warnings its mapping raised (an unreadable phone left
    /// out, say) with the delivery in the same transaction; see [`Store::warnings`]. A
    /// repeated delivery keeps nothing, its warnings included.
    pub fn intake_with_warnings(
        &mut self,
        delivery: &DeliveryRecord,
        requests: &[NewRequest],
        failures: &[NewDeadLetter],
        warnings: &[String],
        now: i64,
    ) -> Result<Intake, StoreError> {
        self.intake_concerning(delivery, requests, failures, warnings, &[], now)
    }

    /// [`Store::intake_with_warnings`], noting in the same transaction which people the
    /// delivery concerned: opaque keys (the caller's, e.g. `email:…`) that
    /// [`Store::person_history`] finds it by. Keys are kept as given, once each.
    pub fn intake_concerning(
        &mut self,
        delivery: &DeliveryRecord,
        requests: &[NewRequest],
        failures: &[NewDeadLetter],
        warnings: &[String],
        people: &[String],
        now: i64,
    ) -> Result<Intake, StoreError> {
        let versions = versions_of(requests)?;
        let tx = self.write()?;
        let inserted = tx
            .prepare_cached(
                "INSERT INTO inbox (marketplace, delivery_id, origin, text, received_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (marketplace, delivery_id) DO NOTHING",
            )?
            .execute(params![
                delivery.marketplace,
                delivery.delivery_id,
                delivery.origin,
                delivery.text,
                now
            ])?;
        if inserted == 0 {
            return Ok(Intake {
                duplicate_delivery: true,
                ..Intake::default()
            });
        }
        let inbox_id = tx.last_insert_rowid();
        let mut intake = Intake::default();
        for (request, version) in requests.iter().zip(&versions) {
            intake.count(queue(&tx, inbox_id, request, version.as_deref(), now)?);
        }
        for letter in failures {
            dead::insert_letter(&tx, inbox_id, None, letter, now)?;
        }
        for warning in warnings {
            tx.prepare_cached(
                "INSERT INTO warning (inbox_id, message, created_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![inbox_id, warning, now])?;
        }
        for person in people {
            tx.prepare_cached("INSERT OR IGNORE INTO person (key, inbox_id) VALUES (?1, ?2)")?
                .execute(params![person, inbox_id])?;
        }
        tx.commit()?;
        Ok(intake)
    }
}

impl Intake {
    pub(super) fn count(&mut self, queued: Queued) {
        *match queued {
            Queued::New => &mut self.queued,
            Queued::DroppedOnce => &mut self.dropped_once,
            Queued::DroppedStale => &mut self.dropped_stale,
            Queued::Coalesced => &mut self.coalesced,
        } += 1;
    }
}

/// Each request's version, normalised; an error for a bad one or a coalesce key without one.
pub(super) fn versions_of(requests: &[NewRequest]) -> Result<Vec<Option<String>>, StoreError> {
    requests
        .iter()
        .map(|r| match (&r.coalesce_key, &r.version) {
            (_, Some(version)) => normalise_version(&r.mapping, version).map(Some),
            (Some(_), None) => Err(StoreError::InvalidRequest {
                mapping: r.mapping.clone(),
                problem: "a coalesce key needs a version".into(),
            }),
            (None, None) => Ok(None),
        })
        .collect()
}

/// What became of one request at intake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Queued {
    New,
    DroppedOnce,
    DroppedStale,
    /// Met a pending row with the same coalesce key; one row remains, with the newer version.
    Coalesced,
}

/// Queues one request of a delivery, or drops it.
///
/// In order: a once key accepted before or still queued drops it; a version no newer than the
/// watermark drops it as stale; a pending row with the same coalesce key keeps only the newer
/// of the two.
///
/// A newer request does not overwrite the older row in place: the older row may be in flight
/// (returned by `due`, not yet marked), and marking it sent would then record the newer version
/// as applied when Klaviyo got the older body. So the older row becomes `superseded` (out of
/// the queue, still markable) and the newer one is queued in its place: same `created_at` and
/// `next_attempt_at`, so a profile that keeps changing is not pushed to the back forever.
pub(super) fn queue(
    tx: &Connection,
    inbox_id: i64,
    request: &NewRequest,
    version: Option<&str>,
    now: i64,
) -> Result<Queued, StoreError> {
    if let Some(once_key) = &request.once_key {
        // Accepted (`sent`), or queued: one lookup of the outbox's once-key index.
        let seen: bool = tx
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM outbox WHERE mapping = ?1 AND once_key = ?2
                                AND state IN ('pending', 'superseded', 'sent'))",
            )?
            .query_row(params![request.mapping, once_key], |r| r.get(0))?;
        if seen {
            note_dropped(tx, inbox_id, request, "once", now)?;
            return Ok(Queued::DroppedOnce);
        }
    }
    let (mut outcome, mut place) = (Queued::New, (now, now));
    if let (Some(key), Some(version)) = (&request.coalesce_key, version) {
        let applied: bool = tx
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM watermark
                                WHERE mapping = ?1 AND coalesce_key = ?2 AND version >= ?3)",
            )?
            .query_row(params![request.mapping, key, version], |r| r.get(0))?;
        if applied {
            note_dropped(tx, inbox_id, request, "stale", now)?;
            return Ok(Queued::DroppedStale);
        }
        let older: Option<(i64, String, i64, i64)> = tx
            .prepare_cached(
                "SELECT id, version, created_at, next_attempt_at FROM outbox
                 WHERE mapping = ?1 AND coalesce_key = ?2 AND state = 'pending'",
            )?
            .query_row(params![request.mapping, key], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()?;
        if let Some((id, older_version, created_at, next_attempt_at)) = older {
            if older_version.as_str() >= version {
                note_dropped(tx, inbox_id, request, "coalesced", now)?;
                return Ok(Queued::Coalesced);
            }
            tx.execute("UPDATE outbox SET state = 'superseded' WHERE id = ?1", [id])?;
            (outcome, place) = (Queued::Coalesced, (created_at, next_attempt_at));
        }
    }
    tx.prepare_cached(
        "INSERT INTO outbox (inbox_id, mapping, endpoint, lane, body, once_key, unique_id,
                             waits_for, coalesce_key, version, created_at, next_attempt_at)
         VALUES (:inbox_id, :mapping, :endpoint, :lane, :body, :once_key, :unique_id,
                 :waits_for, :coalesce_key, :version, :created_at, :next_attempt_at)",
    )?
    .execute(named_params! {
        ":inbox_id": inbox_id,
        ":mapping": request.mapping,
        ":endpoint": request.endpoint,
        ":lane": request.lane,
        ":body": request.body,
        ":once_key": request.once_key,
        ":unique_id": request.unique_id,
        ":waits_for": request.waits_for,
        ":coalesce_key": request.coalesce_key,
        ":version": version,
        ":created_at": place.0,
        ":next_attempt_at": place.1,
    })?;
    Ok(outcome)
}

/// Keeps the fact that a request of this delivery was not queued, and why: `once` (its once
/// key was accepted or is queued), `stale` (an as-new version was applied), `coalesced` (an
/// as-new version is queued).
fn note_dropped(
    tx: &Connection,
    inbox_id: i64,
    request: &NewRequest,
    reason: &str,
    now: i64,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO dropped_request (inbox_id, mapping, endpoint, reason, once_key, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        inbox_id,
        request.mapping,
        request.endpoint,
        reason,
        request.once_key,
        now
    ])?;
    Ok(())
}
