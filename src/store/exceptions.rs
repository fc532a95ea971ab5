//! Exceptions and warnings as an operator works through them: requests sent out of the
//! ordinary (flagged by the sink, see [`Store::flag_exception`]) until they are resolved, and
//! the warnings intake kept with their deliveries.

use super::{Closed, Exception, Filter, Store, StoreError, Warning};
use rusqlite::{OptionalExtension, params};

/// The columns [`exception_from`] reads, from `exception e JOIN outbox o JOIN inbox i`.
const EXCEPTION_COLUMNS: &str = "e.id, e.kind, e.outbox_id, o.mapping, o.endpoint, o.body,
    o.state, i.marketplace, i.delivery_id, i.origin, i.text, e.flagged_at, e.resolved_at,
    e.resolve_reason
    FROM exception e JOIN outbox o ON o.id = e.outbox_id JOIN inbox i ON i.id = o.inbox_id";

impl Store {
    /// Open exceptions matching `filter` (`category` is the kind), oldest first.
    pub fn open_exceptions(&self, filter: &Filter) -> Result<Vec<Exception>, StoreError> {
        let mut statement = self.conn.prepare_cached(&format!(
            "SELECT {EXCEPTION_COLUMNS}
             WHERE e.resolved_at IS NULL
               AND (?1 IS NULL OR e.kind = ?1) AND (?2 IS NULL OR o.mapping = ?2)
               AND (?3 IS NULL OR e.flagged_at >= ?3)
             ORDER BY e.id"
        ))?;
        let rows = statement.query_map(
            params![filter.category, filter.mapping, filter.since],
            exception_from,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One exception, open or resolved.
    pub fn find_exception(&self, id: i64) -> Result<Exception, StoreError> {
        self.conn
            .prepare_cached(&format!("SELECT {EXCEPTION_COLUMNS} WHERE e.id = ?1"))?
            .query_row([id], exception_from)
            .optional()?
            .ok_or(StoreError::NotFound {
                what: "exception",
                id,
            })
    }

    /// An operator has looked at these exceptions: each is closed with `reason` and the time,
    /// and kept. All or nothing: an id that does not exist or is resolved already is an error,
    /// and then none is resolved. The same request is not flagged again for the same kind.
    pub fn resolve_exceptions(
        &mut self,
        ids: &[i64],
        reason: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let tx = self.write()?;
        for &id in ids {
            let resolved: Option<i64> = tx
                .query_row(
                    "SELECT resolved_at FROM exception WHERE id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .optional()?
                .ok_or(StoreError::NotFound {
                    what: "exception",
                    id,
                })?;
            if resolved.is_some() {
                return Err(StoreError::ExceptionResolved { id });
            }
            tx.execute(
                "UPDATE exception SET resolved_at = ?2, resolve_reason = ?3 WHERE id = ?1",
                params![id, now, reason],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Warnings raised at intake, oldest first, written at or after `since` when given.
    pub fn warnings(&self, since: Option<i64>) -> Result<Vec<Warning>, StoreError> {
        let mut statement = self.conn.prepare_cached(
            "SELECT w.id, w.message, i.marketplace, i.delivery_id, i.origin, w.created_at
             FROM warning w JOIN inbox i ON i.id = w.inbox_id
             WHERE ?1 IS NULL OR w.created_at >= ?1
             ORDER BY w.id",
        )?;
        let rows = statement.query_map([since], |r| {
            Ok(Warning {
                id: r.get(0)?,
                message: r.get(1)?,
                delivery: (r.get(2)?, r.get(3)?),
                origin: r.get(4)?,
                created_at: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// An [`Exception`] from a row of `SELECT {EXCEPTION_COLUMNS}`.
fn exception_from(r: &rusqlite::Row) -> rusqlite::Result<Exception> {
    let closed = r
        .get::<_, Option<i64>>(12)?
        .map(|at| -> rusqlite::Result<Closed> {
            Ok(Closed {
                at,
                reason: r.get(13)?,
            })
        })
        .transpose()?;
    Ok(Exception {
        id: r.get(0)?,
        kind: r.get(1)?,
        outbox_id: r.get(2)?,
        mapping: r.get(3)?,
        endpoint: r.get(4)?,
        body: r.get(5)?,
        request_state: r.get(6)?,
        delivery: (r.get(7)?, r.get(8)?),
        origin: r.get(9)?,
        text: r.get(10)?,
        flagged_at: r.get(11)?,
        closed,
    })
}
