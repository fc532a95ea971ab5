//! A person's history, for customer service: every delivery that concerned them and what
//! became of each request it produced.
//!
//! The store does not know what a person is. Intake notes opaque keys per delivery (see
//! [`Store::intake_concerning`]); here they are looked up through the `person` table and the
//! indexes schema version 7 added, so a lookup reads the person's rows and nothing else, however
//! large the file. What a key means (`email:…`, `phone:…`) and how a body names a person is
//! the caller's business, which is why the backfill of files written before version 7 takes
//! the caller's reader of bodies.

use super::{Attempt, Closed, Store, StoreError};
use rusqlite::{OptionalExtension, params};

/// Everything the store holds about the deliveries that concerned some people, newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PersonHistory {
    pub deliveries: Vec<PersonDelivery>,
    /// More deliveries concerned them than the limit asked for; the oldest were left out.
    pub more: bool,
}

/// One delivery that concerned the person, with everything that came of it.
#[derive(Debug, Clone, PartialEq)]
pub struct PersonDelivery {
    pub inbox_id: i64,
    pub marketplace: String,
    pub delivery_id: String,
    pub origin: String,
    /// The delivery as the inbox keeps it.
    pub text: String,
    pub received_at: i64,
    /// Every key the delivery was noted under (the person's, and any other it named).
    pub people: Vec<String>,
    /// The requests queued for it, in the order they were queued.
    pub requests: Vec<PersonRequest>,
    /// The requests its mappings produced that were not queued.
    pub dropped: Vec<DroppedRequest>,
    /// Dead letters written at intake (a mapping that failed for the delivery).
    pub letters: Vec<LetterSummary>,
    /// Warnings raised when it was mapped: (message, when).
    pub warnings: Vec<(String, i64)>,
}

/// One queued request and what became of it.
#[derive(Debug, Clone, PartialEq)]
pub struct PersonRequest {
    pub id: i64,
    pub mapping: String,
    pub endpoint: String,
    pub lane: String,
    pub body: String,
    /// `pending`, `superseded`, `sent` or `dead`.
    pub state: String,
    pub once_key: Option<String>,
    pub unique_id: Option<String>,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub next_attempt_at: i64,
    /// When Klaviyo accepted it, and its HTTP status then.
    pub sent: Option<(i64, u16)>,
    /// The last answer it got (or failure to get one).
    pub last_attempt: Option<Attempt>,
    /// The dead letter Klaviyo's refusal (or giving up) wrote for it.
    pub letter: Option<LetterSummary>,
    pub exceptions: Vec<ExceptionSummary>,
    /// When it was recorded as the initial opt-in (an accepted subscription with a once key).
    pub consent_accepted_at: Option<i64>,
}

/// A request a mapping produced that intake did not queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedRequest {
    pub mapping: String,
    pub endpoint: String,
    /// `once` (its once key was accepted before or is queued), `stale` (a version as new was
    /// already applied), `coalesced` (a version as new is queued).
    pub reason: String,
    pub once_key: Option<String>,
    pub at: i64,
}

/// A dead letter, as a timeline shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LetterSummary {
    pub id: i64,
    pub mapping: Option<String>,
    pub category: String,
    pub reason: String,
    pub created_at: i64,
    pub closed: Option<Closed>,
}

/// An exception flagged on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExceptionSummary {
    pub id: i64,
    pub kind: String,
    pub flagged_at: i64,
    pub closed: Option<Closed>,
}

impl Store {
    /// The deliveries noted under any of `keys`, newest first, at most `limit` of them, each
    /// with its requests (and their answers, letters, exceptions, consent), the requests
    /// dropped at intake, its intake dead letters and its warnings. Read in one snapshot.
    pub fn person_history(
        &self,
        keys: &[String],
        limit: usize,
    ) -> Result<PersonHistory, StoreError> {
        let tx = self.conn.unchecked_transaction()?;
        let keys = serde_json::to_string(keys).expect("a list of strings serialises");
        let limit = i64::try_from(limit).unwrap_or(i64::MAX - 1);
        let mut ids: Vec<i64> = {
            let mut query = tx.prepare_cached(
                "SELECT DISTINCT inbox_id FROM person
                 WHERE key IN (SELECT value FROM json_each(?1))
                 ORDER BY inbox_id DESC LIMIT ?2",
            )?;
            query
                .query_map(params![keys, limit + 1], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
        let more = ids.len() as i64 > limit;
        ids.truncate(limit as usize);
        let mut history = PersonHistory {
            deliveries: Vec::with_capacity(ids.len()),
            more,
        };
        for id in ids {
            history.deliveries.push(self.person_delivery(id)?);
        }
        tx.commit()?;
        Ok(history)
    }

    /// Every key noted on a delivery that also carries `key`: how a phone number leads to the
    /// email addresses it was seen with.
    pub fn keys_seen_with(&self, key: &str) -> Result<Vec<String>, StoreError> {
        let mut query = self.conn.prepare_cached(
            "SELECT DISTINCT other.key FROM person mine
             JOIN person other ON other.inbox_id = mine.inbox_id
             WHERE mine.key = ?1 ORDER BY other.key",
        )?;
        let keys = query
            .query_map([key], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(keys)
    }

    /// Whether requests written before schema version 7 still wait for their people to be
    /// noted (see [`Store::backfill_people`]): until then, older history may be missing.
    pub fn people_backfill_pending(&self) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT EXISTS (SELECT 1 FROM person_backfill)", [], |r| {
                r.get(0)
            })?)
    }

    /// Notes the people of up to `batch` requests written before schema version 7, newest
    /// first, reading each body with `people_in` (the caller's: the store does not read
    /// bodies). One transaction per call, so a writer waits at most one batch. Returns whether
    /// the backfill is finished.
    pub fn backfill_people(
        &mut self,
        batch: usize,
        people_in: impl Fn(&str) -> Vec<String>,
    ) -> Result<bool, StoreError> {
        let tx = self.write()?;
        let Some(through): Option<i64> = tx
            .query_row("SELECT through_outbox_id FROM person_backfill", [], |r| {
                r.get(0)
            })
            .optional()?
        else {
            return Ok(true);
        };
        let rows: Vec<(i64, i64, String)> = {
            let mut query = tx.prepare(
                "SELECT id, inbox_id, body FROM outbox WHERE id <= ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            query
                .query_map(params![through, batch.max(1) as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect::<Result<_, _>>()?
        };
        for (_, inbox_id, body) in &rows {
            for person in people_in(body) {
                tx.prepare_cached("INSERT OR IGNORE INTO person (key, inbox_id) VALUES (?1, ?2)")?
                    .execute(params![person, inbox_id])?;
            }
        }
        let done = match rows.last() {
            Some((lowest, _, _)) if rows.len() >= batch.max(1) => {
                tx.execute(
                    "UPDATE person_backfill SET through_outbox_id = ?1",
                    [lowest - 1],
                )?;
                false
            }
            _ => {
                tx.execute("DELETE FROM person_backfill", [])?;
                true
            }
        };
        tx.commit()?;
        Ok(done)
    }

    fn person_delivery(&self, inbox_id: i64) -> Result<PersonDelivery, StoreError> {
        let conn = &self.conn;
        let (marketplace, delivery_id, origin, text, received_at) = conn
            .prepare_cached(
                "SELECT marketplace, delivery_id, origin, text, received_at FROM inbox
                 WHERE id = ?1",
            )?
            .query_row([inbox_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?;
        let people = conn
            .prepare_cached("SELECT key FROM person WHERE inbox_id = ?1 ORDER BY key")?
            .query_map([inbox_id], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut requests: Vec<PersonRequest> = conn
            .prepare_cached(
                "SELECT o.id, o.mapping, o.endpoint, o.lane, o.body, o.state, o.once_key,
                        o.unique_id, o.attempts, o.last_error, o.created_at, o.next_attempt_at,
                        l.sent_at, l.status, c.accepted_at
                 FROM outbox o LEFT JOIN ledger l ON l.outbox_id = o.id
                               LEFT JOIN consent c ON c.outbox_id = o.id
                                                  AND c.once_key = o.once_key
                 WHERE o.inbox_id = ?1 ORDER BY o.id",
            )?
            .query_map([inbox_id], |r| {
                let sent_at: Option<i64> = r.get(12)?;
                let status: Option<u16> = r.get(13)?;
                Ok(PersonRequest {
                    id: r.get(0)?,
                    mapping: r.get(1)?,
                    endpoint: r.get(2)?,
                    lane: r.get(3)?,
                    body: r.get(4)?,
                    state: r.get(5)?,
                    once_key: r.get(6)?,
                    unique_id: r.get(7)?,
                    attempts: r.get(8)?,
                    last_error: r.get(9)?,
                    created_at: r.get(10)?,
                    next_attempt_at: r.get(11)?,
                    sent: sent_at.zip(status),
                    last_attempt: None,
                    letter: None,
                    exceptions: Vec::new(),
                    consent_accepted_at: r.get(14)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        for request in &mut requests {
            request.last_attempt = conn
                .prepare_cached(
                    "SELECT attempted_at, status, answer FROM attempt WHERE outbox_id = ?1
                     ORDER BY id DESC LIMIT 1",
                )?
                .query_row([request.id], |r| {
                    Ok(Attempt {
                        at: r.get(0)?,
                        status: r.get(1)?,
                        answer: r.get(2)?,
                    })
                })
                .optional()?;
            request.letter = conn
                .prepare_cached(&format!(
                    "SELECT {LETTER_SUMMARY} FROM dead_letter WHERE outbox_id = ?1"
                ))?
                .query_row([request.id], letter_summary)
                .optional()?;
            request.exceptions = conn
                .prepare_cached(
                    "SELECT id, kind, flagged_at, resolved_at, resolve_reason FROM exception
                     WHERE outbox_id = ?1 ORDER BY id",
                )?
                .query_map([request.id], |r| {
                    Ok(ExceptionSummary {
                        id: r.get(0)?,
                        kind: r.get(1)?,
                        flagged_at: r.get(2)?,
                        closed: closed(r.get(3)?, r.get(4)?),
                    })
                })?
                .collect::<Result<_, _>>()?;
        }
        let dropped = conn
            .prepare_cached(
                "SELECT mapping, endpoint, reason, once_key, created_at FROM dropped_request
                 WHERE inbox_id = ?1 ORDER BY id",
            )?
            .query_map([inbox_id], |r| {
                Ok(DroppedRequest {
                    mapping: r.get(0)?,
                    endpoint: r.get(1)?,
                    reason: r.get(2)?,
                    once_key: r.get(3)?,
                    at: r.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let letters = conn
            .prepare_cached(&format!(
                "SELECT {LETTER_SUMMARY} FROM dead_letter
                 WHERE inbox_id = ?1 AND outbox_id IS NULL ORDER BY id"
            ))?
            .query_map([inbox_id], letter_summary)?
            .collect::<Result<_, _>>()?;
        let warnings = conn
            .prepare_cached(
                "SELECT message, created_at FROM warning WHERE inbox_id = ?1 ORDER BY id",
            )?
            .query_map([inbox_id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok(PersonDelivery {
            inbox_id,
            marketplace,
            delivery_id,
            origin,
            text,
            received_at,
            people,
            requests,
            dropped,
            letters,
            warnings,
        })
    }
}

/// The columns [`letter_summary`] reads from `dead_letter`.
const LETTER_SUMMARY: &str =
    "id, mapping, category, reason, created_at, resolved_at, discard_reason";

fn letter_summary(r: &rusqlite::Row) -> rusqlite::Result<LetterSummary> {
    Ok(LetterSummary {
        id: r.get(0)?,
        mapping: r.get(1)?,
        category: r.get(2)?,
        reason: r.get(3)?,
        created_at: r.get(4)?,
        closed: closed(r.get(5)?, r.get(6)?),
    })
}

fn closed(at: Option<i64>, reason: Option<String>) -> Option<Closed> {
    at.map(|at| Closed { at, reason })
}

#[cfg(test)]
mod tests {
    use super::super::{DeliveryRecord, NewRequest, schema};
    use super::*;
    use rusqlite::Connection;

    fn request(mapping: &str, once: &str, body: &str) -> NewRequest {
        NewRequest {
            mapping: mapping.into(),
            endpoint: "/api/events".into(),
            lane: "transaction".into(),
            body: body.into(),
            once_key: Some(once.into()),
            ..NewRequest::default()
        }
    }

    fn delivery(id: &str) -> DeliveryRecord<'_> {
        DeliveryRecord {
            marketplace: "petmarket",
            delivery_id: id,
            origin: "test",
            text: "{}",
        }
    }

    /// The test's reader of bodies: `{"who": "..."}` names one person.
    fn who(body: &str) -> Vec<String> {
        serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|b| b["who"].as_str().map(|w| vec![format!("email:{w}")]))
            .unwrap_or_default()
    }

    #[test]
    fn a_persons_deliveries_come_newest_first_with_their_drops() {
        let mut store = Store::in_memory().unwrap();
        let zoe = vec!["email:zoe@example.com".to_owned()];
        let placed = request("placed-order", "5001", r#"{"who":"zoe@example.com"}"#);
        store
            .intake_concerning(
                &delivery("d1"),
                std::slice::from_ref(&placed),
                &[],
                &[],
                &zoe,
                1_000,
            )
            .unwrap();
        // Someone else's delivery is not hers.
        store
            .intake_concerning(
                &delivery("other"),
                &[request("placed-order", "6000", "{}")],
                &[],
                &[],
                &["email:sam@example.com".to_owned()],
                1_500,
            )
            .unwrap();
        // The same order again in another invoice: dropped once per key, and kept as a fact.
        let warning = vec!["phone \"12\" cannot be read".to_owned()];
        store
            .intake_concerning(&delivery("d2"), &[placed], &[], &warning, &zoe, 2_000)
            .unwrap();
        let history = store.person_history(&zoe, 10).unwrap();
        let ids: Vec<&str> = history
            .deliveries
            .iter()
            .map(|d| d.delivery_id.as_str())
            .collect();
        assert_eq!(ids, ["d2", "d1"]);
        assert!(!history.more);
        let newest = &history.deliveries[0];
        assert!(newest.requests.is_empty());
        assert_eq!(newest.dropped.len(), 1);
        assert_eq!(newest.dropped[0].reason, "once");
        assert_eq!(newest.dropped[0].once_key.as_deref(), Some("5001"));
        assert_eq!(newest.warnings, [(warning[0].clone(), 2_000)]);
        let oldest = &history.deliveries[1];
        assert_eq!(oldest.requests.len(), 1);
        assert_eq!(oldest.requests[0].state, "pending");
        assert_eq!(oldest.people, zoe);
        let limited = store.person_history(&zoe, 1).unwrap();
        assert_eq!(limited.deliveries.len(), 1);
        assert!(limited.more);
        assert_eq!(
            store
                .person_history(&["email:nobody@x.co".into()], 10)
                .unwrap(),
            PersonHistory::default()
        );
        assert!(!store.people_backfill_pending().unwrap());
    }

    #[test]
    fn a_phone_leads_to_the_emails_it_was_seen_with() {
        let mut store = Store::in_memory().unwrap();
        let both = vec!["email:zoe@example.com".into(), "phone:+61412345678".into()];
        store
            .intake_concerning(&delivery("d1"), &[], &[], &[], &both, 0)
            .unwrap();
        assert_eq!(store.keys_seen_with("phone:+61412345678").unwrap(), both);
        assert!(
            store
                .keys_seen_with("phone:+61400000000")
                .unwrap()
                .is_empty()
        );
    }

    /// A file written by schema version 5 keeps its rows, and its requests' people are noted
    /// by the backfill, batch by batch, with the caller's reader of bodies.
    #[test]
    fn a_version_5_file_is_backfilled_from_its_bodies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "application_id", super::super::APPLICATION_ID)
            .unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        assert_eq!(
            schema::migrate(&mut conn, &schema::MIGRATIONS[..5]).unwrap(),
            5
        );
        for i in 1..=5 {
            let who = if i == 2 {
                "sam@example.com"
            } else {
                "zoe@example.com"
            };
            conn.execute(
                "INSERT INTO inbox (id, marketplace, delivery_id, origin, text, received_at)
                 VALUES (?1, 'petmarket', ?2, 'f:1', '{}', ?1)",
                params![i, format!("d{i}")],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO outbox (inbox_id, mapping, endpoint, lane, body, next_attempt_at,
                                     created_at)
                 VALUES (?1, 'placed-order', '/api/events', 'transaction', ?2, 0, ?1)",
                params![i, format!(r#"{{"who":"{who}"}}"#)],
            )
            .unwrap();
        }
        drop(conn);
        let mut store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), 12);
        assert!(store.people_backfill_pending().unwrap());
        let zoe = vec!["email:zoe@example.com".to_owned()];
        assert!(
            store
                .person_history(&zoe, 10)
                .unwrap()
                .deliveries
                .is_empty()
        );
        // Batches of two: 5, 4 | 3, 2 | 1.
        assert!(!store.backfill_people(2, who).unwrap());
        assert_eq!(store.person_history(&zoe, 10).unwrap().deliveries.len(), 2);
        assert!(!store.backfill_people(2, who).unwrap());
        assert!(store.backfill_people(2, who).unwrap());
        assert!(!store.people_backfill_pending().unwrap());
        assert!(store.backfill_people(2, who).unwrap(), "nothing left to do");
        let ids: Vec<String> = store
            .person_history(&zoe, 10)
            .unwrap()
            .deliveries
            .into_iter()
            .map(|d| d.delivery_id)
            .collect();
        assert_eq!(ids, ["d5", "d4", "d3", "d1"]);
    }

    /// A delivery whose mapping failed at intake named nobody; mapped again by `retry`, it is
    /// noted under the people its requests name, and its letter shows as closed.
    #[test]
    fn a_retried_delivery_is_found_by_its_person() {
        let mut store = Store::in_memory().unwrap();
        let failure = super::super::NewDeadLetter {
            mapping: Some("placed-order".into()),
            category: "mapping:missing-field".into(),
            reason: "`email` is missing".into(),
            details: serde_json::json!({}),
        };
        store
            .intake(&delivery("d1"), &[], std::slice::from_ref(&failure), 0)
            .unwrap();
        let zoe = vec!["email:zoe@example.com".to_owned()];
        assert!(
            store
                .person_history(&zoe, 10)
                .unwrap()
                .deliveries
                .is_empty()
        );
        let letter = store.dead_letters(None, None).unwrap()[0].id;
        let placed = request("placed-order", "5001", "{}");
        store
            .requeue_concerning(letter, &[placed], &zoe, 5)
            .unwrap();
        let history = store.person_history(&zoe, 10).unwrap();
        let delivery = &history.deliveries[0];
        assert_eq!(delivery.requests.len(), 1);
        assert_eq!(delivery.letters.len(), 1);
        assert_eq!(delivery.letters[0].closed.as_ref().unwrap().at, 5);
    }

    /// A new file has nothing to backfill.
    #[test]
    fn a_new_file_has_nothing_to_backfill() {
        let store = Store::in_memory().unwrap();
        assert!(!store.people_backfill_pending().unwrap());
    }
}
