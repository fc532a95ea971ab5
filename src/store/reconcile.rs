//! What a reconciliation asks of the store: where a run is (its checkpoint), which objects it
//! has read, whether a request was accepted or is queued, and the repairs it queues.
//!
//! A run's findings are the caller's JSON and its scope an opaque name: the store knows no
//! mapping and no Marketplacer query. A page of the sweep is written in one transaction (see
//! [`Store::in_transaction`]): the objects read, the repairs, the letters closed and the new
//! checkpoint together, so a run killed anywhere resumes at a page boundary with counts that
//! match what was written.

use super::intake::{queue, versions_of};
use super::{
    DeliveryRecord, Intake, NewDeadLetter, NewRequest, Store, StoreError, dead, normalise_version,
};
use rusqlite::{OptionalExtension, params};

/// A reconciliation run, as far as it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileRun {
    pub id: i64,
    pub scope: String,
    /// The window, RFC 3339, `until` excluded.
    pub since: String,
    pub until: String,
    /// The query reached and its cursor (`None`: its first page).
    pub step: String,
    pub cursor: Option<String>,
    /// What it found so far, as the caller wrote it.
    pub counts: String,
    pub started_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

/// Where a request stands, as far as the store knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Klaviyo accepted it (its once key, or its `unique_id` at its endpoint, is in the
    /// ledger), or a newer version of its profile.
    Accepted,
    /// A row for it is waiting in the outbox.
    Queued,
    /// Neither: it never reached Klaviyo.
    Missing,
    /// It has no once key, `unique_id` or coalesce key, so nothing tells whether it was sent.
    Unknown,
}

const RUN_COLUMNS: &str = "id, scope, since, until, step, cursor, counts, started_at, \
                           updated_at, finished_at";

fn run_from(r: &rusqlite::Row) -> rusqlite::Result<ReconcileRun> {
    Ok(ReconcileRun {
        id: r.get(0)?,
        scope: r.get(1)?,
        since: r.get(2)?,
        until: r.get(3)?,
        step: r.get(4)?,
        cursor: r.get(5)?,
        counts: r.get(6)?,
        started_at: r.get(7)?,
        updated_at: r.get(8)?,
        finished_at: r.get(9)?,
    })
}

impl Store {
    /// Runs `work` in one transaction: every write it makes through the store's methods is
    /// committed together when it returns `Ok`, and none is kept when it returns `Err`.
    pub fn in_transaction<T, E: From<StoreError>>(
        &mut self,
        work: impl FnOnce(&mut Store) -> Result<T, E>,
    ) -> Result<T, E> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(StoreError::from)?;
        match work(self) {
            Ok(done) => {
                if let Err(err) = self.conn.execute_batch("COMMIT") {
                    let _ = self.conn.execute_batch("ROLLBACK");
                    return Err(StoreError::from(err).into());
                }
                Ok(done)
            }
            Err(err) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(err)
            }
        }
    }

    /// The run of `scope` that has not finished (nor been abandoned), if there is one.
    pub fn open_reconcile_run(&self, scope: &str) -> Result<Option<ReconcileRun>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM reconcile_run
                     WHERE scope = ?1 AND finished_at IS NULL AND abandoned_at IS NULL
                     ORDER BY id DESC LIMIT 1"
                ),
                [scope],
                run_from,
            )
            .optional()?)
    }

    /// The run that finished last, of any scope.
    pub fn last_reconcile_run(&self) -> Result<Option<ReconcileRun>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM reconcile_run WHERE finished_at IS NOT NULL
                     ORDER BY finished_at DESC, id DESC LIMIT 1"
                ),
                [],
                run_from,
            )
            .optional()?)
    }

    /// Starts a run of `scope` over `since..until` at its first `step`; an unfinished run of
    /// the same scope is abandoned (kept, marked, its read objects forgotten).
    pub fn start_reconcile_run(
        &mut self,
        scope: &str,
        (since, until): (&str, &str),
        step: &str,
        counts: &str,
        now: i64,
    ) -> Result<ReconcileRun, StoreError> {
        let tx = self.write()?;
        for table in ["reconcile_seen", "reconcile_expected"] {
            tx.execute(
                &format!(
                    "DELETE FROM {table} WHERE run_id IN (SELECT id FROM reconcile_run
                       WHERE scope = ?1 AND finished_at IS NULL AND abandoned_at IS NULL)"
                ),
                [scope],
            )?;
        }
        tx.execute(
            "UPDATE reconcile_run SET abandoned_at = ?2
             WHERE scope = ?1 AND finished_at IS NULL AND abandoned_at IS NULL",
            params![scope, now],
        )?;
        tx.execute(
            "INSERT INTO reconcile_run (scope, since, until, step, counts, started_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
            params![scope, since, until, step, counts, now],
        )?;
        let id = tx.last_insert_rowid();
        let run = tx.query_row(
            &format!("SELECT {RUN_COLUMNS} FROM reconcile_run WHERE id = ?1"),
            [id],
            run_from,
        )?;
        tx.commit()?;
        Ok(run)
    }

    /// Notes that run `run_id` has read `object_id`; `false` when it had already.
    pub fn reconcile_seen(&mut self, run_id: i64, object_id: &str) -> Result<bool, StoreError> {
        let tx = self.write()?;
        let added = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO reconcile_seen (run_id, object_id) VALUES (?1, ?2)",
            )?
            .execute(params![run_id, object_id])?;
        tx.commit()?;
        Ok(added == 1)
    }

    /// Moves run `run_id`'s checkpoint: the query and cursor to go on from, and what it found.
    pub fn reconcile_progress(
        &mut self,
        run_id: i64,
        (step, cursor): (&str, Option<&str>),
        counts: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let tx = self.write()?;
        let changed = tx.execute(
            "UPDATE reconcile_run SET step = ?2, cursor = ?3, counts = ?4, updated_at = ?5
             WHERE id = ?1 AND finished_at IS NULL AND abandoned_at IS NULL",
            params![run_id, step, cursor, counts, now],
        )?;
        if changed == 0 {
            return Err(StoreError::NotFound {
                what: "unfinished reconciliation run",
                id: run_id,
            });
        }
        tx.commit()?;
        Ok(())
    }

    /// Keeps what run `run_id` expects of Klaviyo under `key` (the caller's JSON), replacing
    /// what was kept under it.
    pub fn keep_expected(&mut self, run_id: i64, key: &str, body: &str) -> Result<(), StoreError> {
        let tx = self.write()?;
        tx.prepare_cached(
            "INSERT INTO reconcile_expected (run_id, key, body) VALUES (?1, ?2, ?3)
             ON CONFLICT (run_id, key) DO UPDATE SET body = excluded.body",
        )?
        .execute(params![run_id, key, body])?;
        tx.commit()?;
        Ok(())
    }

    /// What run `run_id` keeps under `key`, if anything.
    pub fn expected_one(&self, run_id: i64, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT body FROM reconcile_expected WHERE run_id = ?1 AND key = ?2")?
            .query_row(params![run_id, key], |r| r.get(0))
            .optional()?)
    }

    /// Everything run `run_id` expects of Klaviyo: (key, body), in key order.
    pub fn expected_all(&self, run_id: i64) -> Result<Vec<(String, String)>, StoreError> {
        let mut query = self.conn.prepare_cached(
            "SELECT key, body FROM reconcile_expected WHERE run_id = ?1 ORDER BY key",
        )?;
        let rows = query.query_map([run_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// When Klaviyo last accepted the request with this `unique_id` at `endpoint`, if it did.
    pub fn accepted_at(&self, endpoint: &str, unique_id: &str) -> Result<Option<i64>, StoreError> {
        // The newest is taken here, not with `max()`: SQLite would then walk the endpoint's
        // index by time (every event of a day, 10 ms a lookup) instead of the `unique_id` one.
        let mut query = self.conn.prepare_cached(
            "SELECT sent_at FROM outbox
              WHERE endpoint = ?1 AND unique_id = ?2 AND state = 'sent'",
        )?;
        let times = query.query_map(params![endpoint, unique_id], |r| r.get::<_, i64>(0))?;
        Ok(times.collect::<Result<Vec<_>, _>>()?.into_iter().max())
    }

    /// The newest version applied for a mapping's coalesce key, and when, if any was.
    pub fn watermark(
        &self,
        mapping: &str,
        coalesce_key: &str,
    ) -> Result<Option<(String, i64)>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT version, updated_at FROM watermark WHERE mapping = ?1 AND coalesce_key = ?2",
            )?
            .query_row(params![mapping, coalesce_key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    /// When the store first recorded an opt-in for a person as accepted: under the
    /// subscription's once key, or through any delivery noted under `person_key` whose
    /// subscription was accepted (see [`Store::intake_concerning`]). `None`: no evidence.
    pub fn consent_evidence(
        &self,
        once_key: Option<&str>,
        person_key: &str,
    ) -> Result<Option<i64>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT min(accepted_at) FROM (
                     SELECT accepted_at FROM consent WHERE once_key = ?1
                     UNION ALL
                     SELECT c.accepted_at FROM person p
                       JOIN outbox o ON o.inbox_id = p.inbox_id
                       -- by its once key, which consent is keyed by (it has no index on
                       -- outbox_id: that join would scan every opt-in per person)
                       JOIN consent c ON c.once_key = o.once_key AND c.outbox_id = o.id
                      WHERE p.key = ?2)",
            )?
            .query_row(params![once_key, person_key], |r| r.get(0))?)
    }

    /// The `custom_source`s of the subscriptions Klaviyo accepted from us: how its consent
    /// names a subscription marketsync made.
    pub fn consent_sources(&self) -> Result<Vec<String>, StoreError> {
        let mut query = self.conn.prepare_cached(
            "SELECT DISTINCT json_extract(o.body, '$.data.attributes.custom_source')
               FROM consent c JOIN outbox o ON o.id = c.outbox_id
              WHERE json_valid(o.body)",
        )?;
        let rows = query.query_map([], |r| r.get::<_, Option<String>>(0))?;
        let mut sources: Vec<String> = rows
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect();
        sources.sort();
        Ok(sources)
    }

    /// Queues again the request Klaviyo accepted with this `unique_id` at `endpoint` (the
    /// newest such), with its body and keys as they were: Klaviyo lost it, or someone deleted
    /// it, so the ledger's word that it was accepted must not stop it (the way
    /// [`Store::queue_repairs`] drops a once key already accepted). `false` when it is queued
    /// already, or the store holds no accepted request of that key.
    pub fn requeue_accepted(
        &mut self,
        endpoint: &str,
        unique_id: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let tx = self.write()?;
        let queued: bool = tx
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM outbox WHERE endpoint = ?1 AND unique_id = ?2
                                AND state IN ('pending', 'superseded'))",
            )?
            .query_row(params![endpoint, unique_id], |r| r.get(0))?;
        if queued {
            return Ok(false);
        }
        let inserted = tx
            .prepare_cached(
                "INSERT INTO outbox (inbox_id, mapping, endpoint, lane, body, once_key, unique_id,
                                     waits_for, coalesce_key, version, created_at, next_attempt_at)
                 SELECT o.inbox_id, o.mapping, o.endpoint, o.lane, o.body, o.once_key,
                        o.unique_id, o.waits_for, o.coalesce_key, o.version, ?3, ?3
                   FROM outbox o
                  WHERE o.endpoint = ?1 AND o.unique_id = ?2 AND o.state = 'sent'
                  ORDER BY o.sent_at DESC, o.id DESC LIMIT 1",
            )?
            .execute(params![endpoint, unique_id, now])?;
        tx.commit()?;
        Ok(inserted == 1)
    }

    /// Run `run_id` is done, with what it found; the objects it read are forgotten.
    pub fn finish_reconcile_run(
        &mut self,
        run_id: i64,
        counts: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let tx = self.write()?;
        let changed = tx.execute(
            "UPDATE reconcile_run SET counts = ?2, updated_at = ?3, finished_at = ?3,
                                      cursor = NULL
             WHERE id = ?1 AND finished_at IS NULL AND abandoned_at IS NULL",
            params![run_id, counts, now],
        )?;
        if changed == 0 {
            return Err(StoreError::NotFound {
                what: "unfinished reconciliation run",
                id: run_id,
            });
        }
        tx.execute("DELETE FROM reconcile_seen WHERE run_id = ?1", [run_id])?;
        tx.execute("DELETE FROM reconcile_expected WHERE run_id = ?1", [run_id])?;
        tx.commit()?;
        Ok(())
    }

    /// Whether a request was accepted, is queued, or is missing: by its once key (scoped by
    /// its mapping, as at intake), its `unique_id` at its endpoint, and its coalesce key's
    /// watermark (a profile at or past its version was applied, if by a newer update).
    pub fn request_found(&self, request: &NewRequest) -> Result<Found, StoreError> {
        let version = match &request.version {
            Some(version) => Some(normalise_version(&request.mapping, version)?),
            None => None,
        };
        let exists = |sql: &str, params: &[&dyn rusqlite::ToSql]| -> Result<bool, StoreError> {
            Ok(self
                .conn
                .prepare_cached(sql)?
                .query_row(params, |r| r.get(0))?)
        };
        if let Some(once_key) = &request.once_key
            && super::accepted_once(&self.conn, &request.mapping, once_key)?
        {
            return Ok(Found::Accepted);
        }
        if let Some(unique_id) = &request.unique_id
            && self.accepted_at(&request.endpoint, unique_id)?.is_some()
        {
            return Ok(Found::Accepted);
        }
        if let (Some(key), Some(version)) = (&request.coalesce_key, &version)
            && exists(
                "SELECT EXISTS (SELECT 1 FROM watermark
                                WHERE mapping = ?1 AND coalesce_key = ?2 AND version >= ?3)",
                &[&request.mapping, key, version],
            )?
        {
            return Ok(Found::Accepted);
        }
        if let Some(once_key) = &request.once_key
            && exists(
                "SELECT EXISTS (SELECT 1 FROM outbox WHERE mapping = ?1 AND once_key = ?2
                                AND state IN ('pending', 'superseded'))",
                &[&request.mapping, once_key],
            )?
        {
            return Ok(Found::Queued);
        }
        if let Some(unique_id) = &request.unique_id
            && exists(
                "SELECT EXISTS (SELECT 1 FROM outbox WHERE endpoint = ?1 AND unique_id = ?2
                                AND state IN ('pending', 'superseded'))",
                &[&request.endpoint, unique_id],
            )?
        {
            return Ok(Found::Queued);
        }
        if let (Some(key), Some(version)) = (&request.coalesce_key, &version)
            && exists(
                "SELECT EXISTS (SELECT 1 FROM outbox WHERE mapping = ?1 AND coalesce_key = ?2
                                AND state = 'pending' AND version >= ?3)",
                &[&request.mapping, key, version],
            )?
        {
            return Ok(Found::Queued);
        }
        if request.once_key.is_none() && request.unique_id.is_none() && version.is_none() {
            return Ok(Found::Unknown);
        }
        Ok(Found::Missing)
    }

    /// Queues a reconciliation's repairs of one object: `delivery` (the record as read, so
    /// that `dead show` and `retry` work on it as on a webhook's) is kept in the inbox, or
    /// found there from an earlier run, and the requests are queued under it by the rules of
    /// intake (a once key accepted or queued meanwhile still drops one); the mapping failures
    /// are kept as dead letters of it.
    pub fn queue_repairs(
        &mut self,
        delivery: &DeliveryRecord,
        requests: &[NewRequest],
        failures: &[NewDeadLetter],
        now: i64,
    ) -> Result<Intake, StoreError> {
        let versions = versions_of(requests)?;
        let tx = self.write()?;
        tx.execute(
            "INSERT INTO inbox (marketplace, delivery_id, origin, text, received_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (marketplace, delivery_id) DO NOTHING",
            params![
                delivery.marketplace,
                delivery.delivery_id,
                delivery.origin,
                delivery.text,
                now
            ],
        )?;
        let inbox_id: i64 = tx.query_row(
            "SELECT id FROM inbox WHERE marketplace = ?1 AND delivery_id = ?2",
            params![delivery.marketplace, delivery.delivery_id],
            |r| r.get(0),
        )?;
        let mut intake = Intake::default();
        for (request, version) in requests.iter().zip(&versions) {
            intake.count(queue(&tx, inbox_id, request, version.as_deref(), now)?);
        }
        for letter in failures {
            dead::insert_letter(&tx, inbox_id, None, letter, now)?;
        }
        tx.commit()?;
        Ok(intake)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::CONSENT_ENDPOINT;

    fn delivery(id: &str) -> DeliveryRecord<'_> {
        DeliveryRecord {
            marketplace: "petmarket",
            delivery_id: id,
            origin: "test",
            text: "{}",
        }
    }

    fn placed(order: &str) -> NewRequest {
        NewRequest {
            mapping: "placed-order".into(),
            endpoint: "/api/events".into(),
            lane: "transaction".into(),
            body: format!(r#"{{"order":"{order}"}}"#),
            once_key: Some(format!("petmarket:{order}")),
            unique_id: Some(format!("petmarket:placed-order:{order}")),
            ..NewRequest::default()
        }
    }

    fn opt_in(email: &str, source: &str) -> NewRequest {
        NewRequest {
            mapping: "consent".into(),
            endpoint: CONSENT_ENDPOINT.into(),
            lane: "profile".into(),
            body: format!(r#"{{"data":{{"attributes":{{"custom_source":"{source}"}}}}}}"#),
            once_key: Some(format!("petmarket:{email}")),
            ..NewRequest::default()
        }
    }

    /// Queues and sends every due request at `now`.
    fn send_all(store: &mut Store, now: i64) {
        for lane in ["transaction", "profile"] {
            let ids: Vec<i64> = store
                .due(lane, now, 100)
                .unwrap()
                .iter()
                .map(|p| p.id)
                .collect();
            store.mark_sent(&ids, 202, now).unwrap();
        }
    }

    #[test]
    fn an_accepted_event_klaviyo_lost_is_queued_again_once_with_its_keys() {
        let mut store = Store::in_memory().unwrap();
        store
            .intake(&delivery("d1"), &[placed("5001")], &[], 1_000)
            .unwrap();
        send_all(&mut store, 2_000);
        let key = "petmarket:placed-order:5001";
        assert_eq!(store.accepted_at("/api/events", key).unwrap(), Some(2_000));
        // The ordinary way drops it: its once key was accepted.
        assert!(store.requeue_accepted("/api/events", key, 3_000).unwrap());
        assert!(
            !store.requeue_accepted("/api/events", key, 3_001).unwrap(),
            "queued already"
        );
        let due = store.due("transaction", 3_000, 10).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].body, r#"{"order":"5001"}"#);
        assert_eq!(due[0].once_key.as_deref(), Some("petmarket:5001"));
        assert_eq!(due[0].unique_id.as_deref(), Some(key));
        send_all(&mut store, 4_000);
        assert_eq!(
            store.accepted_at("/api/events", key).unwrap(),
            Some(4_000),
            "the newest acceptance"
        );
        assert!(
            !store
                .requeue_accepted("/api/events", "petmarket:placed-order:9", 5_000)
                .unwrap(),
            "nothing accepted under that key"
        );
    }

    #[test]
    fn opt_in_evidence_is_found_by_once_key_or_through_the_person() {
        let mut store = Store::in_memory().unwrap();
        store
            .intake_concerning(
                &delivery("d1"),
                &[opt_in("zoe@example.com", "Marketplacer checkout")],
                &[],
                &[],
                &["email:zoe@example.com".to_owned()],
                1_000,
            )
            .unwrap();
        assert_eq!(
            store
                .consent_evidence(None, "email:zoe@example.com")
                .unwrap(),
            None,
            "queued is not accepted"
        );
        send_all(&mut store, 2_000);
        assert_eq!(
            store
                .consent_evidence(None, "email:zoe@example.com")
                .unwrap(),
            Some(2_000)
        );
        assert_eq!(
            store
                .consent_evidence(Some("petmarket:zoe@example.com"), "email:other@example.com")
                .unwrap(),
            Some(2_000)
        );
        assert_eq!(
            store
                .consent_evidence(Some("petmarket:ann@example.com"), "email:ann@example.com")
                .unwrap(),
            None
        );
        assert_eq!(store.consent_sources().unwrap(), ["Marketplacer checkout"]);
    }

    #[test]
    fn a_runs_expected_side_is_kept_until_it_finishes_or_is_abandoned() {
        let mut store = Store::in_memory().unwrap();
        let run = store
            .start_reconcile_run("scope", ("a", "b"), "webhooks", "{}", 0)
            .unwrap();
        store.keep_expected(run.id, "event:x", "1").unwrap();
        store.keep_expected(run.id, "event:x", "2").unwrap();
        store.keep_expected(run.id, "person:y", "3").unwrap();
        assert_eq!(
            store.expected_one(run.id, "event:x").unwrap().as_deref(),
            Some("2")
        );
        assert_eq!(store.expected_all(run.id).unwrap().len(), 2);
        // Another window abandons it, and forgets what it expected.
        let next = store
            .start_reconcile_run("scope", ("c", "d"), "webhooks", "{}", 1)
            .unwrap();
        assert!(store.expected_all(run.id).unwrap().is_empty());
        store.keep_expected(next.id, "event:x", "4").unwrap();
        store.finish_reconcile_run(next.id, "{}", 2).unwrap();
        assert!(store.expected_all(next.id).unwrap().is_empty());
    }
}
