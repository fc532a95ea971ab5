//! The sink's side of the outbox: what is due, and what became of each send.

use super::{
    Accepted, Attempt, CONSENT_ENDPOINT, Pending, Store, StoreError, count_at, excerpt, ledger_key,
};
use rusqlite::{Connection, OptionalExtension, params};

/// A lane's due rows, oldest first (by when they were queued, then by id): the order of the
/// `outbox_due` index, which also holds the columns filtered on, so the read never sorts and
/// never reads a row.
const DUE_IDS: &str = "SELECT id FROM outbox
     WHERE state = 'pending' AND lane = ?1 AND next_attempt_at <= ?2
       AND endpoint NOT IN (SELECT value FROM json_each(?3))
     ORDER BY created_at, id";

impl Store {
    /// Pending rows of a lane whose `next_attempt_at` has come, oldest first (by when they were
    /// queued; a row that superseded an older one has the older one's place).
    ///
    /// The store does not know what is in flight, so a row returned here stays due until it is
    /// marked, rescheduled, held or dead. The caller keeps its own in-flight set, and should
    /// also hold back a row whose mapping and coalesce key are in flight: a newer profile
    /// update may have superseded a row being sent, and sending both at once lets the older
    /// body arrive last.
    pub fn due(&self, lane: &str, now: i64, limit: usize) -> Result<Vec<Pending>, StoreError> {
        self.due_except(lane, now, limit, &[])
    }

    /// [`Store::due`] without the rows of the `skipped` endpoints (paths): those the sink is
    /// not sending to now, which would otherwise fill every page of due rows.
    pub fn due_except(
        &self,
        lane: &str,
        now: i64,
        limit: usize,
        skipped: &[&str],
    ) -> Result<Vec<Pending>, StoreError> {
        self.due_beside(lane, now, limit, skipped, |_| false)
    }

    /// [`Store::due_except`] without the rows `in_flight` says the caller is sending already:
    /// up to `limit` due rows it is not sending yet.
    ///
    /// A sender with a backlog in flight (a bulk job of thousands of requests, waiting for
    /// Klaviyo to finish it) asks many times a second for what else is due. The due order is
    /// read from the index alone, and only the rows wanted are then read whole: their bodies,
    /// kilobytes each, are never read for rows that are left out or already in flight.
    pub fn due_beside(
        &self,
        lane: &str,
        now: i64,
        limit: usize,
        skipped: &[&str],
        in_flight: impl Fn(i64) -> bool,
    ) -> Result<Vec<Pending>, StoreError> {
        // The read below walks the lane's queue in order and drops the skipped endpoints' rows
        // as it goes: a lane whose every queued row is skipped (a profile backlog waiting for
        // its bulk slot) would walk all of them, up to 200 times a second, to find nothing.
        if !skipped.is_empty()
            && self
                .pending_endpoints(lane)?
                .iter()
                .all(|endpoint| skipped.contains(&endpoint.as_str()))
        {
            return Ok(Vec::new());
        }
        let skipped = serde_json::to_string(skipped).expect("a list of strings serialises");
        let mut ids: Vec<i64> = Vec::new();
        // No LIMIT: rows are read as the index gives them, and the read stops once enough
        // rows are not in flight.
        let mut in_order = self.conn.prepare_cached(DUE_IDS)?;
        let mut rows = in_order.query(params![lane, now, skipped])?;
        while ids.len() < limit {
            let Some(row) = rows.next()? else { break };
            let id: i64 = row.get(0)?;
            if !in_flight(id) {
                ids.push(id);
            }
        }
        drop(rows);
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = serde_json::to_string(&ids).expect("a list of numbers serialises");
        let mut statement = self.conn.prepare_cached(
            "SELECT o.id, o.mapping, o.endpoint, o.lane, o.body, o.once_key, o.unique_id,
                    o.waits_for, o.coalesce_key, o.version, o.attempts, o.last_error,
                    o.created_at, i.marketplace, i.delivery_id
             FROM outbox o JOIN inbox i ON i.id = o.inbox_id
             WHERE o.id IN (SELECT value FROM json_each(?1))
             ORDER BY o.created_at, o.id",
        )?;
        let rows = statement.query_map([ids], |r| {
            Ok(Pending {
                id: r.get(0)?,
                mapping: r.get(1)?,
                endpoint: r.get(2)?,
                lane: r.get(3)?,
                body: r.get(4)?,
                once_key: r.get(5)?,
                unique_id: r.get(6)?,
                waits_for: r.get(7)?,
                coalesce_key: r.get(8)?,
                version: r.get(9)?,
                attempts: r.get(10)?,
                last_error: r.get(11)?,
                created_at: r.get(12)?,
                delivery: (r.get(13)?, r.get(14)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The endpoints a lane has pending rows for, one step along `outbox_pending_endpoint`
    /// each (there are a handful), not a walk of the rows.
    fn pending_endpoints(&self, lane: &str) -> Result<Vec<String>, StoreError> {
        let mut next = self.conn.prepare_cached(
            "SELECT endpoint FROM outbox WHERE state = 'pending' AND lane = ?1 AND endpoint > ?2
             ORDER BY endpoint LIMIT 1",
        )?;
        let mut endpoints: Vec<String> = Vec::new();
        loop {
            let after = endpoints.last().map_or("", String::as_str);
            match next
                .query_row(params![lane, after], |r| r.get(0))
                .optional()?
            {
                Some(endpoint) => endpoints.push(endpoint),
                None => return Ok(endpoints),
            }
        }
    }

    /// Whether at least `n` rows of a lane's endpoint are pending, due or not: counts no
    /// further than `n`, so a deep backlog costs no more to ask about than a shallow one.
    pub fn pending_reaches(
        &self,
        lane: &str,
        endpoint: &str,
        n: usize,
    ) -> Result<bool, StoreError> {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let found: i64 = self
            .conn
            .prepare_cached(
                "SELECT count(*) FROM (SELECT 1 FROM outbox
                  WHERE state = 'pending' AND lane = ?1 AND endpoint = ?2 LIMIT ?3)",
            )?
            .query_row(params![lane, endpoint, n], |r| r.get(0))?;
        Ok(found >= n)
    }

    /// Pending rows of a lane, of one endpoint or all, due or not.
    pub fn pending_count(&self, lane: &str, endpoint: Option<&str>) -> Result<usize, StoreError> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM outbox
             WHERE state = 'pending' AND lane = ?1 AND (?2 IS NULL OR endpoint = ?2)",
            params![lane, endpoint],
            |r| count_at(r, 0),
        )?)
    }

    /// Klaviyo accepted these rows. In one transaction: each row is marked sent and written to
    /// the ledger (its [`ledger_key`], `unique_id`, endpoint, time and HTTP status), its
    /// coalesce key's watermark rises to its version, and an accepted subscription with a once
    /// key is recorded as consent.
    ///
    /// Each row newly marked also gets an [`Attempt`] with the status and `accepted`.
    ///
    /// A row already sent is left as it is, so marking twice is harmless. A superseded row that
    /// was in flight is marked too: its (older) version is what Klaviyo applied. Any other id
    /// is an error, and then nothing is marked.
    pub fn mark_sent(&mut self, ids: &[i64], status: u16, now: i64) -> Result<(), StoreError> {
        self.mark_accepted(&[Accepted {
            ids: ids.to_vec(),
            status,
            at: now,
        }])
    }

    /// Several answers' rows marked sent as [`Store::mark_sent`] does, in one commit: a sender
    /// marking each answer in a commit of its own waited for the disk a thousand times a second
    /// under load, holding the store that intake needs.
    pub fn mark_accepted(&mut self, answers: &[Accepted]) -> Result<(), StoreError> {
        let tx = self.write()?;
        let rows = answers
            .iter()
            .flat_map(|a| a.ids.iter().map(move |&id| (id, a.status, a.at)));
        for (id, status, now) in rows {
            // Cached statements: a bulk job's answer marks up to 1,000 rows, and parsing each
            // statement anew for every row was 3% of `serve`'s CPU (perf, 4 December).
            let row = tx
                .prepare_cached(
                    "SELECT state, mapping, endpoint, once_key, unique_id, coalesce_key, version
                     FROM outbox WHERE id = ?1",
                )?
                .query_row([id], |r| {
                    Ok(SentRow {
                        state: r.get(0)?,
                        mapping: r.get(1)?,
                        endpoint: r.get(2)?,
                        once_key: r.get(3)?,
                        unique_id: r.get(4)?,
                        coalesce_key: r.get(5)?,
                        version: r.get(6)?,
                    })
                })
                .optional()?
                .ok_or(StoreError::NotFound {
                    what: "outbox row",
                    id,
                })?;
            match row.state.as_str() {
                "sent" => continue,
                "pending" | "superseded" => {}
                _ => {
                    return Err(StoreError::NotPending {
                        id,
                        state: row.state,
                    });
                }
            }
            tx.prepare_cached("UPDATE outbox SET state = 'sent', sent_at = ?2 WHERE id = ?1")?
                .execute(params![id, now])?;
            let key = row.once_key.as_deref().map(|k| ledger_key(&row.mapping, k));
            tx.prepare_cached(
                "INSERT INTO ledger (outbox_id, key, unique_id, endpoint, status, sent_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![id, key, row.unique_id, row.endpoint, status, now])?;
            insert_attempt(&tx, id, now, Some(status), "accepted")?;
            if let (Some(coalesce_key), Some(version)) = (&row.coalesce_key, &row.version) {
                tx.prepare_cached(
                    "INSERT INTO watermark (mapping, coalesce_key, version, updated_at)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (mapping, coalesce_key) DO UPDATE
                     SET version = max(version, excluded.version), updated_at = excluded.updated_at"
                )?
                .execute(params![row.mapping, coalesce_key, version, now])?;
            }
            if row.endpoint == CONSENT_ENDPOINT
                && let Some(once_key) = &row.once_key
            {
                tx.prepare_cached(
                    "INSERT INTO consent (once_key, mapping, outbox_id, accepted_at)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (once_key) DO NOTHING",
                )?
                .execute(params![once_key, row.mapping, id, now])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// A send failed at `now` and will be tried again at `next_attempt_at`: attempts go up by
    /// one, the error is kept and recorded as an [`Attempt`] with Klaviyo's `status` (none
    /// when it did not answer: a timeout, a connection refused). A superseded row is not
    /// retried (the newer row carries the update), so for one only the attempt is recorded.
    pub fn reschedule(
        &mut self,
        id: i64,
        next_attempt_at: i64,
        status: Option<u16>,
        error: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.try_again(id, next_attempt_at, status, error, now, 1)
    }

    /// Every attempt recorded for an outbox row, oldest first. Rows sent before attempts were
    /// kept (schema version 4) have none.
    pub fn attempts(&self, outbox_id: i64) -> Result<Vec<Attempt>, StoreError> {
        let mut statement = self.conn.prepare_cached(
            "SELECT attempted_at, status, answer FROM attempt WHERE outbox_id = ?1 ORDER BY id",
        )?;
        let rows = statement.query_map([outbox_id], |r| {
            Ok(Attempt {
                at: r.get(0)?,
                status: r.get(1)?,
                answer: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A send failed at `now` but the failure says nothing against the request (its endpoint
    /// was failing for every request): tried again at `next_attempt_at`, the error kept and
    /// the attempt recorded, but not counted toward giving up. Records only the attempt for a
    /// superseded row.
    pub fn postpone(
        &mut self,
        id: i64,
        next_attempt_at: i64,
        status: Option<u16>,
        error: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.try_again(id, next_attempt_at, status, error, now, 0)
    }

    /// [`Store::reschedule`] and [`Store::postpone`]: the row tried again later, its error kept
    /// and the attempt recorded, with `counted` (1 or 0) added to the attempts that lead to
    /// giving up.
    fn try_again(
        &mut self,
        id: i64,
        next_attempt_at: i64,
        status: Option<u16>,
        error: &str,
        now: i64,
        counted: u32,
    ) -> Result<(), StoreError> {
        let tx = self.write()?;
        let changed = tx.execute(
            "UPDATE outbox SET attempts = attempts + ?4, next_attempt_at = ?2, last_error = ?3
             WHERE id = ?1 AND state = 'pending'",
            params![id, next_attempt_at, error, counted],
        )?;
        unless_superseded(&tx, id, changed)?;
        insert_attempt(&tx, id, now, status, error)?;
        tx.commit()?;
        Ok(())
    }

    /// Postpones a pending row to `until` without counting an attempt: an ordering hold whose
    /// `waits_for` is not in the ledger yet. Does nothing to a superseded row.
    pub fn hold(&mut self, id: i64, until: i64) -> Result<(), StoreError> {
        let changed = self.conn.execute(
            "UPDATE outbox SET next_attempt_at = ?2 WHERE id = ?1 AND state = 'pending'",
            params![id, until],
        )?;
        unless_superseded(&self.conn, id, changed)
    }

    /// Replaces a pending row's body (the sink rewrote it, e.g. to drop a field Klaviyo
    /// refused). Does nothing to a superseded row, which is not sent again.
    pub fn replace_body(&mut self, id: i64, body: &str) -> Result<(), StoreError> {
        let changed = self.conn.execute(
            "UPDATE outbox SET body = ?2 WHERE id = ?1 AND state = 'pending'",
            params![id, body],
        )?;
        unless_superseded(&self.conn, id, changed)
    }

    /// Notes that a row was sent out of the ordinary (`kind`, e.g. `sent-after-hold`: sent
    /// after its ordering hold ran out), for the exceptions report. A row is flagged once per
    /// kind, however often it is tried; returns whether this call flagged it.
    pub fn flag_exception(&mut self, id: i64, kind: &str, now: i64) -> Result<bool, StoreError> {
        state_of(&self.conn, id)?;
        let added = self.conn.execute(
            "INSERT OR IGNORE INTO exception (outbox_id, kind, flagged_at) VALUES (?1, ?2, ?3)",
            params![id, kind, now],
        )?;
        Ok(added == 1)
    }
}

struct SentRow {
    state: String,
    mapping: String,
    endpoint: String,
    once_key: Option<String>,
    unique_id: Option<String>,
    coalesce_key: Option<String>,
    version: Option<String>,
}

/// Records one attempt of an outbox row, its answer cut to an excerpt.
pub(super) fn insert_attempt(
    conn: &Connection,
    outbox_id: i64,
    at: i64,
    status: Option<u16>,
    answer: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO attempt (outbox_id, attempted_at, status, answer) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![outbox_id, at, status, excerpt(answer)])?;
    Ok(())
}

/// The state of an outbox row, or `NotFound`.
pub(super) fn state_of(conn: &Connection, id: i64) -> Result<String, StoreError> {
    conn.query_row("SELECT state FROM outbox WHERE id = ?1", [id], |r| r.get(0))
        .optional()?
        .ok_or(StoreError::NotFound {
            what: "outbox row",
            id,
        })
}

/// After an update of a pending row: fine if it changed the row or the row is superseded,
/// otherwise the error saying why not.
fn unless_superseded(conn: &Connection, id: i64, changed: usize) -> Result<(), StoreError> {
    if changed > 0 {
        return Ok(());
    }
    match state_of(conn, id)?.as_str() {
        "superseded" => Ok(()),
        state => Err(StoreError::NotPending {
            id,
            state: state.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What SQLite plans for a query, one line per step.
    fn plan(store: &Store, sql: &str, params: impl rusqlite::Params) -> String {
        let mut explain = store
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap();
        let steps = explain
            .query_map(params, |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        steps.join("\n")
    }

    /// Issue 13: the sender's read of due rows walks the index in due order and stops at what
    /// it needs; a sort would read the whole pending lane on every call.
    #[test]
    fn the_due_order_is_read_from_the_index_without_a_sort() {
        let store = Store::in_memory().unwrap();
        let plan = plan(&store, DUE_IDS, params!["transaction", 0, "[]"]);
        assert!(
            plan.contains("USING COVERING INDEX outbox_due (lane=?)"),
            "{plan}"
        );
        assert!(!plan.contains("TEMP B-TREE"), "{plan}");
    }
}
