//! Reconciliation on a schedule, inside `serve`: the same run as `marketsync reconcile`, on the
//! same store, its repairs sent by the one sender serve already runs.
//!
//! A run that fails (Marketplacer unreachable, an error answer) is logged and left: its
//! checkpoint is kept, and the next scheduled run resumes it. A run still going when the next
//! time comes is not doubled; the time is skipped. What a run found is logged as one event, and
//! its success is what `marketsync_reconciliation_last_success_timestamp_seconds` and the
//! `MarketsyncReconciliationStale` rule watch.

use super::{Ask, Reconciler, Report, RunOptions, Schedule};
use chrono::Utc;
use std::future::Future;
use std::sync::Arc;
use tracing::{error, info, warn};

/// What the schedule runs.
pub struct Scheduled {
    pub reconciler: Arc<Reconciler>,
    pub schedule: Schedule,
    pub ask: Ask,
    /// Called after each run that finished, with its report (serve wakes the sender and sets
    /// the last-success metric).
    pub on_success: Box<dyn Fn(&Report) + Send + Sync>,
}

impl Scheduled {
    /// Runs at each time of the schedule until `stop` resolves (a run in progress is dropped
    /// there: its checkpoint holds the pages already kept).
    pub async fn run(self, stop: impl Future<Output = ()> + Send) {
        let mut stop = std::pin::pin!(stop);
        loop {
            let now = Utc::now();
            let Some(next) = self.schedule.next_after(now) else {
                warn!(schedule = %self.schedule, "the reconciliation schedule never fires again");
                return;
            };
            let wait = (next - now).to_std().unwrap_or_default();
            info!(next = %next.to_rfc3339(), schedule = %self.schedule, "next reconciliation");
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = &mut stop => return,
            }
            tokio::select! {
                () = self.once() => {}
                () = &mut stop => {
                    info!("reconciliation stopped by the shutdown; the next run resumes it");
                    return;
                }
            }
        }
    }

    /// One run, logged.
    async fn once(&self) {
        let options = RunOptions {
            ask: self.ask,
            repair: true,
        };
        info!("reconciliation started");
        let mut on_page = |_: &super::Progress| {};
        match self
            .reconciler
            .run(&options, Utc::now(), &mut on_page)
            .await
        {
            Ok(report) => {
                let f = &report.findings;
                let event = |message: &str| {
                    let read: u64 = f.read.values().sum();
                    let disabled: Vec<String> = f
                        .webhooks
                        .iter()
                        .map(|w| format!("{} {}", w.kind, w.problem))
                        .collect();
                    (read, disabled, message.to_owned())
                };
                let (read, webhooks, message) = event("reconciliation finished");
                let fields = (
                    report.window.since_text(),
                    report.window.until_text(),
                    f.missing_total(),
                );
                let klaviyo_findings = report
                    .read_back
                    .as_ref()
                    .map_or(0, |r| r.discrepancies.len());
                let requeued = f.requeued_from_klaviyo;
                if f.anything_wrong() || klaviyo_findings > 0 {
                    warn!(
                        klaviyo_findings,
                        klaviyo_requeued = requeued,
                        since = fields.0,
                        until = fields.1,
                        read,
                        expected = f.expected,
                        accepted = f.accepted,
                        queued = f.queued,
                        repairs = fields.2,
                        mapping_errors = f.mapping_errors.values().sum::<u64>(),
                        dead_letters_met = f.dead_letters.met,
                        webhooks = webhooks.join(", "),
                        marketplacer_klaviyo_tracking = f.native_klaviyo_tracking,
                        amendments_without_refund_request = f.amendments_without_refund_request,
                        marketplacer_requests = f.marketplacer_requests,
                        waited_ms = f.waited_ms,
                        "{message}: something was missing or wrong"
                    );
                } else {
                    info!(
                        klaviyo_findings,
                        since = fields.0,
                        until = fields.1,
                        read,
                        expected = f.expected,
                        accepted = f.accepted,
                        queued = f.queued,
                        amendments_without_refund_request = f.amendments_without_refund_request,
                        marketplacer_requests = f.marketplacer_requests,
                        waited_ms = f.waited_ms,
                        "{message}: nothing missing"
                    );
                }
                (self.on_success)(&report);
            }
            Err(err) => error!("reconciliation stopped: {err}; its checkpoint is kept"),
        }
    }
}
