//! Reconciliation: re-read what changed in Marketplacer over a window, map it with the same
//! mappings, and make sure every request it implies reached Klaviyo, repairing what did not.
//!
//! Webhooks get lost in ways the receiver never sees: a webhook Marketplacer disabled after one
//! bad answer, a receiver down longer than Marketplacer retries, events kept only 3 days, a
//! dead letter fixed a week later. So a run:
//!
//! 1. reads the operator's webhooks (a disabled or missing one is the first finding: every
//!    event after it is missing), the marketplace's vertical code, and whether Marketplacer's
//!    own Klaviyo integration sends e-commerce events (a second sender of ours);
//! 2. sweeps the window with the queries of [`crate::queries::reconcile`] (derived from the
//!    webhook queries, so each object carries what its webhook carried) and turns each object
//!    back into its webhook's record ([`crate::source::reconcile`]);
//! 3. maps each record with the engine, exactly as a webhook of the same fact, and asks the
//!    store whether each request was accepted (its once key or `unique_id` in the ledger, or
//!    its profile at or past its version), is queued, or is missing;
//! 4. queues what is missing as a repair in the outbox (unless reporting only), with the same
//!    keys, so Klaviyo deduplicates one that did arrive after all; the one sender sends it.
//!
//! Each object and each request is counted once per run, however many queries return it (an
//! invoice both updated and paid in the window; a Placed Order both invoices of an order
//! imply). A page of the sweep is written in one transaction with the run's checkpoint (the
//! query and cursor reached, and the counts so far), so a run killed anywhere resumes at a
//! page and ends with the report an uninterrupted run gives; and a second run over the same
//! window finds everything accepted or queued, and repairs nothing.
//!
//! Dead letters met: an open dead letter whose object the run read is counted. If its mapping
//! now gives requests that are all accepted or queued, it is closed; if they are missing, they
//! are queued and the letter is closed as `marketsync retry` closes one (requeued), unless
//! Klaviyo refused exactly that body for good (`invalid`, `duplicate-profile`): sending it again
//! would only fail again, so it stays open for a person, counted as left open.
//!
//! That half trusts the ledger. The second half reads Klaviyo back, because a 2xx is not
//! proof ([`readback`], [`classify`]): while the sweep maps each page it keeps, with the
//! checkpoint, what the page's requests say Klaviyo should hold ([`expect`]); after the last
//! page the run reads Klaviyo's metrics, events and profiles, compares, ranks what it finds by
//! impact ([`impact`]), and queues again the events Klaviyo accepted and lost. A run killed
//! while reading Klaviyo resumes at that step, with the whole expected side kept.

pub mod classify;
pub mod exceptions;
pub mod expect;
pub mod impact;
pub mod job;
pub mod readback;
pub mod report;
pub mod schedule;
pub mod settings;
pub mod window;

pub use impact::ReadBack;
pub use job::{Progress, Reconciler, RunOptions};
pub use readback::ReadBackConfig;
pub use settings::{ReconcileSettings, Schedule};
pub use window::{Ask, Window};

use crate::marketplacer::MarketplacerError;
use crate::source::RecordError;
use crate::store::StoreError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Why a run stopped before its end. Its checkpoint is kept: the next run resumes it.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Marketplacer(#[from] MarketplacerError),
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    #[error("{operation}: {problem}")]
    Unreadable { operation: String, problem: String },
    /// The window asked for is empty (or inside the settle delay).
    #[error("{0}")]
    Window(String),
    #[error(
        "the webhook queries cannot be put into the reconciliation queries: {0} (run `marketsync validate`)"
    )]
    Queries(String),
    /// Reading Klaviyo back failed; the sweep is kept, and the next run reads Klaviyo again.
    #[error("reading Klaviyo back: {0}")]
    Klaviyo(#[from] crate::klaviyo::read::ReadError),
}

impl From<(&str, RecordError)> for ReconcileError {
    fn from((operation, err): (&str, RecordError)) -> ReconcileError {
        ReconcileError::Unreadable {
            operation: operation.to_owned(),
            problem: err.to_string(),
        }
    }
}

/// A webhook finding: a webhook type the mappings read that is disabled, or has no webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookFinding {
    /// Marketplacer's webhook type (`INVOICE`).
    #[serde(rename = "type")]
    pub kind: String,
    /// The webhook's id; `None` when no webhook of the type exists.
    pub id: Option<String>,
    /// `disabled` or `missing`.
    pub problem: String,
}

/// What happened to the open dead letters whose objects a run read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLettersMet {
    pub met: u64,
    /// Their requests were missing, and are queued again: the letter is closed (requeued).
    pub requeued: u64,
    /// Their requests were accepted or queued meanwhile: the letter is closed.
    pub closed: u64,
    /// Still failing (the mapping refuses the record again), refused by Klaviyo for this very
    /// body, or nothing to send now: left open for a person.
    pub left_open: u64,
}

/// What a run found: kept in its checkpoint as it goes, so a resumed run adds to it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Findings {
    /// The marketplace, as `siteConfig { verticalCode }` names it.
    pub marketplace: Option<String>,
    pub webhooks: Vec<WebhookFinding>,
    /// The types of the webhooks the instance has (all of them, not only those read).
    #[serde(default)]
    pub webhook_types: Vec<String>,
    /// Marketplacer's own Klaviyo integration sends e-commerce events
    /// (`klaviyoSettings.ecommerceTrackingEnabled`): its Placed Order beside ours, one order
    /// counted twice, even when Klaviyo shows one metric of the name (two senders through the
    /// API share it).
    #[serde(default)]
    pub native_klaviyo_tracking: bool,
    /// Objects of the window read, by type (each once).
    pub read: BTreeMap<String, u64>,
    /// Shipments and refund requests read with their invoice that did not change inside the
    /// window: facts of another window, not checked.
    pub outside_window: u64,
    /// Requests the records imply, each once.
    pub expected: u64,
    pub accepted: u64,
    /// Waiting in the outbox already.
    pub queued: u64,
    /// Missing: queued as repairs (or, reporting only, would be), by mapping.
    pub missing: BTreeMap<String, u64>,
    /// Missing, but Klaviyo refused exactly this request for good: left with its dead letter.
    pub left_with_dead_letters: u64,
    /// Requests without a once key, `unique_id` or coalesce key: nothing tells whether they
    /// were sent, so they are not checked.
    pub unchecked: u64,
    /// Records a mapping refused, by mapping.
    pub mapping_errors: BTreeMap<String, u64>,
    pub dead_letters: DeadLettersMet,
    /// Invoice amendments created in the window.
    pub amendments: u64,
    /// Of those, on an invoice with no refunded refund request: refunds made outside refund
    /// requests, which no mapping reads.
    pub amendments_without_refund_request: u64,
    /// Requests to Marketplacer and time waited on its limits, over every part of the run.
    pub marketplacer_requests: u64,
    pub waited_ms: u64,
    /// Time spent waiting for Marketplacer's answers, over every part of the run.
    #[serde(default)]
    pub answering_ms: u64,
    /// Events Klaviyo had accepted and no longer holds, found by reading it back and queued
    /// again with their own keys (not when reporting only). Those Klaviyo never accepted are
    /// in `missing`.
    #[serde(default)]
    pub requeued_from_klaviyo: u64,
    /// What reading Klaviyo back could not compare, and why (a value Klaviyo gives no back,
    /// events still on their way).
    #[serde(default)]
    pub read_back_notes: Vec<String>,
}

impl Findings {
    pub fn missing_total(&self) -> u64 {
        self.missing.values().sum()
    }

    /// Whether anything was missing or wrong: the exit code a cron job alerts on.
    pub fn anything_wrong(&self) -> bool {
        self.missing_total() > 0
            || self.left_with_dead_letters > 0
            || self.dead_letters.left_open > 0
            || !self.webhooks.is_empty()
            || self.native_klaviyo_tracking
            || !self.mapping_errors.is_empty()
    }
}

/// The end of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub run_id: i64,
    pub window: Window,
    pub settle: chrono::Duration,
    /// Whether this process went on from a run killed or stopped earlier.
    pub resumed: bool,
    /// Reporting only: nothing was queued or closed.
    pub report_only: bool,
    pub findings: Findings,
    /// What the user should know about how the window was chosen.
    pub notes: Vec<String>,
    /// How long this process took over it (a resumed run: since it resumed).
    pub elapsed: Duration,
    /// Of that, mapping the records read, and classifying and keeping them in the state file
    /// (each overlaps with waiting for Marketplacer's next page).
    pub mapping: Duration,
    pub storing: Duration,
    /// What reading Klaviyo back found; `None` when Klaviyo was not read.
    pub read_back: Option<ReadBack>,
}

impl Report {
    pub fn waited(&self) -> Duration {
        Duration::from_millis(self.findings.waited_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_sender_is_wrong_even_when_nothing_is_missing() {
        assert!(!Findings::default().anything_wrong());
        let findings = Findings {
            native_klaviyo_tracking: true,
            ..Findings::default()
        };
        assert!(findings.anything_wrong());
    }
}
