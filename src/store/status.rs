//! The figures `marketsync status` shows, read in one snapshot.

use super::{Store, StoreError, count_at};
use std::collections::BTreeMap;

/// The store at a glance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// Lanes with pending rows; a lane missing here is empty.
    pub lanes: BTreeMap<String, LaneStatus>,
    /// Unresolved dead letters by category.
    pub dead_letters: BTreeMap<String, usize>,
    /// When Klaviyo last accepted a request, by endpoint (unix ms).
    pub last_success: BTreeMap<String, i64>,
    /// Open exceptions: flagged requests not yet resolved.
    pub exceptions: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LaneStatus {
    /// Pending rows, due or not.
    pub depth: usize,
    /// How long the oldest pending row has waited, in ms.
    pub oldest_age: i64,
}

impl Store {
    pub fn status(&self, now: i64) -> Result<Status, StoreError> {
        // One read transaction, so the figures agree with each other.
        let tx = self.conn.unchecked_transaction()?;
        let mut status = Status::default();
        let mut lanes = tx.prepare(
            "SELECT lane, count(*), ?1 - min(created_at) FROM outbox
             WHERE state = 'pending' GROUP BY lane",
        )?;
        for row in lanes.query_map([now], |r| Ok((r.get(0)?, count_at(r, 1)?, r.get(2)?)))? {
            let (lane, depth, oldest_age) = row?;
            status.lanes.insert(lane, LaneStatus { depth, oldest_age });
        }
        let mut dead = tx.prepare(
            "SELECT category, count(*) FROM dead_letter
             WHERE resolved_at IS NULL GROUP BY category",
        )?;
        for row in dead.query_map([], |r| Ok((r.get(0)?, count_at(r, 1)?)))? {
            let (category, count) = row?;
            status.dead_letters.insert(category, count);
        }
        let mut sent = tx.prepare("SELECT endpoint, max(sent_at) FROM ledger GROUP BY endpoint")?;
        for row in sent.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))? {
            let (endpoint, at) = row?;
            status.last_success.insert(endpoint, at);
        }
        status.exceptions = tx.query_row(
            "SELECT count(*) FROM exception WHERE resolved_at IS NULL",
            [],
            |r| count_at(r, 0),
        )?;
        Ok(status)
    }
}
