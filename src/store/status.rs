//! The figures `marketsync status` shows, read in one snapshot.

use super::{Store, StoreError, count_at};
use crate::reconcile::exceptions::OpenCounts;
use crate::reconcile::impact::Tier;
use rusqlite::OptionalExtension;
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
    /// Open exceptions by kind (their category); the counts add up to `exceptions`.
    pub exceptions_by_category: BTreeMap<String, usize>,
    /// When the newest delivery was stored (unix ms); `None` for an empty store.
    pub last_delivery: Option<i64>,
    /// Open exceptions read back from Klaviyo, by class (only classes with some open).
    pub read_back_open: OpenCounts,
}

impl Status {
    /// Open read-back exceptions per tier, every tier present.
    pub fn read_back_by_tier(&self) -> BTreeMap<Tier, u64> {
        let mut tiers: BTreeMap<Tier, u64> = Tier::ALL.into_iter().map(|t| (t, 0)).collect();
        for (class, (count, _)) in &self.read_back_open {
            *tiers.entry(class.tier()).or_default() += count;
        }
        tiers
    }
}

/// One request Klaviyo accepted, and how long it waited for that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentRequest {
    pub lane: String,
    pub mapping: String,
    /// The endpoint it was queued for.
    pub endpoint: String,
    /// When Klaviyo accepted it (unix ms).
    pub sent_at: i64,
    /// From queued (its delivery stored) to accepted, in ms. A coalesced profile update
    /// counts from the oldest update it replaced: how long that profile waited.
    pub lag_ms: i64,
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
        let mut exceptions = tx.prepare(
            "SELECT kind, count(*) FROM exception WHERE resolved_at IS NULL GROUP BY kind",
        )?;
        for row in exceptions.query_map([], |r| Ok((r.get(0)?, count_at(r, 1)?)))? {
            let (kind, count) = row?;
            status.exceptions += count;
            status.exceptions_by_category.insert(kind, count);
        }
        // Ids grow with time: the newest row is found without a scan.
        status.last_delivery = tx
            .query_row(
                "SELECT received_at FROM inbox ORDER BY id DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        status.read_back_open = super::readback::open_counts(&tx)?;
        Ok(status)
    }

    /// The requests Klaviyo accepted at or after `since` (unix ms), newest first, at most
    /// `limit` of them (a busy hour holds millions; the newest are what a lag figure needs).
    pub fn sent_since(&self, since: i64, limit: usize) -> Result<Vec<SentRequest>, StoreError> {
        let mut query = self.conn.prepare_cached(
            "SELECT o.lane, o.mapping, o.endpoint, l.sent_at, l.sent_at - o.created_at
             FROM ledger l JOIN outbox o ON o.id = l.outbox_id
             WHERE l.sent_at >= ?1 ORDER BY l.sent_at DESC LIMIT ?2",
        )?;
        let rows = query.query_map(rusqlite::params![since, limit as i64], |r| {
            Ok(SentRequest {
                lane: r.get(0)?,
                mapping: r.get(1)?,
                endpoint: r.get(2)?,
                sent_at: r.get(3)?,
                lag_ms: r.get::<_, i64>(4)?.max(0),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
