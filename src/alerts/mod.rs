//! Built-in alerts, for teams without Prometheus: the conditions of
//! `deploy/prometheus/marketsync.rules.yml`, checked by `serve` itself and sent to Slack or a
//! command.
//!
//! A person gets one message when a problem starts, a reminder at most every `repeat` while it
//! lasts, and one when it ends: a message per check would be muted within the hour, and a
//! problem that ends silently leaves someone still looking for it. So each alert is a small
//! state machine ([`Evaluator::step`]), separate from how its condition is read, which lets
//! the status page and `marketsync status` show what is firing from the same state.
//!
//! There is no hold like a Prometheus rule's `for:`: an alert fires at the first check its
//! condition holds. The thresholds already carry the patience (a queue 5 minutes old, 4 hours
//! of silence), and a team without Prometheus is better told a few minutes early;
//! docs/operations.md (11.5) says how quickly each fires beside its rule.
//!
//! Conditions come from the store (what any process sees) and from facts only the serving
//! process knows ([`Facts`]): its webhooks answered 503, whether Klaviyo refused its key, and
//! whether reconciliation is scheduled (a stale reconciliation is only a problem where one is
//! expected). What reading Klaviyo back left open comes from the store too, so an exception
//! resolved by hand, or by the next run, resolves its alert at the next check.
//! Notifying never holds up the sync: it runs in its own task, each notifier bounded by a
//! timeout, and one that fails is logged without stopping the other.

mod notify;
mod settings;

pub use notify::{Notifier, NotifierError};
pub use settings::{AlertSettings, LagThreshold, Span};

use crate::lag;
use crate::reconcile::impact::Tier;
use crate::store::{ReadBackFilter, Store, StoreError};
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};

/// The alerts marketsync raises itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Alert {
    PlacedOrderLag,
    OrderQueueAge,
    DeadLetters,
    NoDelivery,
    IntakeFailures,
    KeyRefused,
    /// The scheduled reconciliation has not finished for longer than its threshold (only
    /// where one is scheduled: [`Evaluator::watch_reconciliation`]).
    ReconciliationStale,
    /// Reading Klaviyo back left a compliance exception open: someone subscribed without
    /// consent on record.
    ComplianceExceptions,
    /// Reading Klaviyo back left a systemic exception open: one cause behind many orders.
    SystemicExceptions,
}

impl Alert {
    pub const ALL: [Alert; 9] = [
        Alert::PlacedOrderLag,
        Alert::OrderQueueAge,
        Alert::DeadLetters,
        Alert::NoDelivery,
        Alert::IntakeFailures,
        Alert::KeyRefused,
        Alert::ReconciliationStale,
        Alert::ComplianceExceptions,
        Alert::SystemicExceptions,
    ];

    /// The name in messages and `ALERT_NAME`.
    pub fn name(self) -> &'static str {
        match self {
            Alert::PlacedOrderLag => "placed-order-lag",
            Alert::OrderQueueAge => "order-queue-age",
            Alert::DeadLetters => "dead-letters",
            Alert::NoDelivery => "no-delivery",
            Alert::IntakeFailures => "intake-failures",
            Alert::KeyRefused => "key-refused",
            Alert::ReconciliationStale => "reconciliation-stale",
            Alert::ComplianceExceptions => "compliance-exceptions",
            Alert::SystemicExceptions => "systemic-exceptions",
        }
    }

    /// The team that acts on it (docs/operations.md, section 3).
    pub fn owner(self) -> &'static str {
        match self {
            Alert::DeadLetters | Alert::ComplianceExceptions => "marketing",
            _ => "e-commerce",
        }
    }

    /// Where docs/operations.md says what to do (section 11.5, a heading per alert).
    pub fn runbook(self) -> &'static str {
        match self {
            Alert::PlacedOrderLag => "docs/operations.md#placed-order-lag",
            Alert::OrderQueueAge => "docs/operations.md#order-queue-age",
            Alert::DeadLetters => "docs/operations.md#dead-letters",
            Alert::NoDelivery => "docs/operations.md#no-delivery",
            Alert::IntakeFailures => "docs/operations.md#intake-failures",
            Alert::KeyRefused => "docs/operations.md#key-refused",
            Alert::ReconciliationStale => "docs/operations.md#reconciliation-stale",
            Alert::ComplianceExceptions => "docs/operations.md#compliance-exceptions",
            Alert::SystemicExceptions => "docs/operations.md#systemic-exceptions",
        }
    }

    /// The first thing to do, in a sentence.
    fn first_step(self) -> &'static str {
        match self {
            Alert::PlacedOrderLag | Alert::OrderQueueAge => {
                "run `marketsync status` to see whether Klaviyo is failing (last success per endpoint) or throttling, and check status.klaviyo.com"
            }
            Alert::DeadLetters => {
                "run `marketsync dead list --mapping placed-order` (and `--mapping consent`), fix the cause, then `marketsync retry`"
            }
            Alert::NoDelivery => {
                "check in Marketplacer that the webhooks are still enabled and point at this server"
            }
            Alert::IntakeFailures => {
                "check the disk and the state file (space, permissions, another process holding it); Marketplacer retries the webhooks meanwhile"
            }
            Alert::KeyRefused => {
                "put a valid Klaviyo private key where serve reads it and restart serve; nothing queued is lost"
            }
            Alert::ReconciliationStale => {
                "look in serve's log for `reconciliation stopped:` (the reason each run failed); for the error in full, stop serve and run `marketsync reconcile --report-only` by hand"
            }
            Alert::ComplianceExceptions => {
                "run `marketsync exceptions list --tier compliance` and unsubscribe each person in Klaviyo unless their consent is found elsewhere; then resolve the exception with the reason"
            }
            Alert::SystemicExceptions => {
                "run `marketsync exceptions list --tier systemic` (or open the weekly report, /report on the admin address) and do what each one says; fixing the cause fixes its orders"
            }
        }
    }
}

/// What only the serving process knows, read at each check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Facts {
    /// Webhooks answered 503 since start because the store failed or the deadline passed.
    pub intake_failures: u64,
    /// Klaviyo refused the API key: nothing is sent until a restart.
    pub key_refused: bool,
}

/// An alert firing now, for the status page and `marketsync status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Firing {
    pub alert: Alert,
    pub owner: &'static str,
    /// When its condition started (unix ms).
    pub since: i64,
    /// The latest message: what is wrong, how much it touches, the first thing to do.
    pub message: String,
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub alert: Alert,
    pub state: NoticeState,
    pub since: i64,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeState {
    Firing,
    Repeat,
    Resolved,
}

impl NoticeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeState::Firing | NoticeState::Repeat => "firing",
            NoticeState::Resolved => "resolved",
        }
    }
}

struct State {
    since: i64,
    last_sent: i64,
    message: String,
}

/// The conditions and the state of each alert.
pub struct Evaluator {
    settings: AlertSettings,
    started_at: i64,
    active: BTreeMap<Alert, State>,
    /// `(when, intake failures so far)`, reaching back one window.
    intake_samples: VecDeque<(i64, u64)>,
    /// Where reconciliation is scheduled: since when (unix ms) it counts as stale without a
    /// finished run (the last one before the schedule started, else its start).
    reconciliation: Option<i64>,
}

/// Placed Orders' lag is computed over at most this many of the newest sends in its window:
/// more than a busy shop sends in ten minutes, and bounded for a check every few seconds.
const LAG_SAMPLE_LIMIT: usize = 50_000;

impl Evaluator {
    pub fn new(settings: AlertSettings, now: i64) -> Evaluator {
        Evaluator {
            settings,
            started_at: now,
            active: BTreeMap::new(),
            intake_samples: VecDeque::from([(now, 0)]),
            reconciliation: None,
        }
    }

    /// Reconciliation is scheduled: its staleness counts from the last run that finished, or
    /// from `since` (unix ms) until one does.
    pub fn watch_reconciliation(&mut self, since: i64) {
        self.reconciliation = Some(since);
    }

    pub fn settings(&self) -> &AlertSettings {
        &self.settings
    }

    /// Reads every condition and returns the messages to send.
    pub fn check(
        &mut self,
        store: &Store,
        facts: Facts,
        now: i64,
    ) -> Result<Vec<Notice>, StoreError> {
        let conditions = self.conditions(store, facts, now)?;
        Ok(self.step(conditions, now))
    }

    /// The conditions that hold now, each with its message.
    fn conditions(
        &mut self,
        store: &Store,
        facts: Facts,
        now: i64,
    ) -> Result<BTreeMap<Alert, String>, StoreError> {
        let settings = &self.settings;
        let status = store.status(now)?;
        let mut holds = BTreeMap::new();
        let transaction = status.lanes.get("transaction").copied().unwrap_or_default();
        let queued: usize = status.lanes.values().map(|l| l.depth).sum();

        let window = settings.placed_order_lag.window;
        let threshold = settings.placed_order_lag.p99;
        let sent = store.sent_since(now - window.millis(), LAG_SAMPLE_LIMIT)?;
        if let Some(figures) = lag::of_mapping(&sent, "placed-order", now - window.millis())
            && figures.p99_ms > threshold.millis()
        {
            let late = sent
                .iter()
                .filter(|r| r.mapping == "placed-order" && r.lag_ms > threshold.millis())
                .count();
            holds.insert(
                Alert::PlacedOrderLag,
                format!(
                    "Placed Order events are reaching Klaviyo late: {late} of the {} orders sent in the last {window} took over {threshold} (p99 {}), so post-purchase flows start late",
                    figures.count,
                    seconds(figures.p99_ms)
                ),
            );
        }

        if transaction.depth > 0 && transaction.oldest_age > settings.order_queue_age.millis() {
            holds.insert(
                Alert::OrderQueueAge,
                format!(
                    "Order events are not reaching Klaviyo: {} order events are queued, the oldest for {} (over {})",
                    transaction.depth,
                    seconds(transaction.oldest_age),
                    settings.order_queue_age
                ),
            );
        }

        let dead = store.open_dead_letter_counts_by_mapping()?;
        let counts: Vec<String> = settings
            .dead_letter_mappings
            .iter()
            .filter_map(|mapping| {
                let n = *dead.get(mapping)?;
                (n > 0).then(|| format!("{n} {mapping}"))
            })
            .collect();
        if !counts.is_empty() {
            holds.insert(
                Alert::DeadLetters,
                format!(
                    "Klaviyo never got some requests: open dead letters: {}. Each is an order Klaviyo does not know of or an opt-in not recorded",
                    counts.join(", ")
                ),
            );
        }

        let last = status.last_delivery.unwrap_or(self.started_at);
        if now - last > settings.no_delivery.millis() {
            let when = match status.last_delivery {
                Some(_) => format!("the last was stored {} ago", seconds(now - last)),
                None => format!("none since serve started {} ago", seconds(now - last)),
            };
            holds.insert(
                Alert::NoDelivery,
                format!(
                    "No webhook from Marketplacer for over {}: {when}. A webhook Marketplacer disabled looks exactly like this",
                    settings.no_delivery
                ),
            );
        }

        let window = settings.intake_failures.millis();
        self.intake_samples.push_back((now, facts.intake_failures));
        while self.intake_samples.len() > 1 && self.intake_samples[1].0 <= now - window {
            self.intake_samples.pop_front();
        }
        let failed = facts.intake_failures - self.intake_samples[0].1.min(facts.intake_failures);
        if failed > 0 {
            holds.insert(
                Alert::IntakeFailures,
                format!(
                    "Webhooks cannot be stored: {failed} answered 503 in the last {} because the state file did not take the write; nothing new reaches Klaviyo meanwhile",
                    settings.intake_failures
                ),
            );
        }

        if let Some(since) = self.reconciliation {
            let finished = store.last_reconcile_run()?.and_then(|run| run.finished_at);
            let last = finished.unwrap_or(since);
            let threshold = settings.reconciliation_stale;
            if now - last > threshold.millis() {
                let when = match finished {
                    Some(_) => format!("the last run finished {} ago", seconds(now - last)),
                    None => format!(
                        "none has finished in the {} since serve started",
                        seconds(now - last)
                    ),
                };
                holds.insert(
                    Alert::ReconciliationStale,
                    format!(
                        "Reconciliation with Marketplacer has not succeeded for over {threshold}: {when}. Webhooks that went missing meanwhile are not repaired, and Klaviyo is not read back"
                    ),
                );
            }
        }

        let tiers = status.read_back_by_tier();
        if tiers[&Tier::Compliance] > 0 {
            let people = tiers[&Tier::Compliance];
            holds.insert(
                Alert::ComplianceExceptions,
                format!(
                    "Reading Klaviyo back found {} subscribed to marketing without consent on record ({}). Every campaign sent to them is a possible Spam Act breach",
                    if people == 1 { "1 person".to_owned() } else { format!("{people} people") },
                    classes_of(&status, Tier::Compliance)
                ),
            );
        }
        if tiers[&Tier::Systemic] > 0 {
            let open = store.open_read_back_exceptions(&ReadBackFilter {
                tier: Some(Tier::Systemic),
                ..ReadBackFilter::default()
            })?;
            let affected: u64 = open.iter().map(|e| e.discrepancy.affected).sum();
            holds.insert(
                Alert::SystemicExceptions,
                format!(
                    "Reading Klaviyo back found {} behind many orders ({}), touching {affected} orders or people in all",
                    if open.len() == 1 { "1 cause".to_owned() } else { format!("{} causes", open.len()) },
                    classes_of(&status, Tier::Systemic)
                ),
            );
        }

        if facts.key_refused {
            holds.insert(
                Alert::KeyRefused,
                format!(
                    "Klaviyo refused the API key: nothing is being sent. {queued} requests are queued ({} of them order events); webhooks are still stored",
                    transaction.depth
                ),
            );
        }
        Ok(holds)
    }

    /// Moves each alert on: one that starts fires, one that lasts repeats once `repeat` has
    /// passed since it was last sent, one that ends is resolved.
    pub fn step(&mut self, mut holds: BTreeMap<Alert, String>, now: i64) -> Vec<Notice> {
        let mut notices = Vec::new();
        let repeat = self.settings.repeat.millis();
        for alert in Alert::ALL {
            let message = holds.remove(&alert);
            match (message, self.active.get_mut(&alert)) {
                (Some(message), None) => {
                    notices.push(Notice {
                        alert,
                        state: NoticeState::Firing,
                        since: now,
                        text: firing_text(alert, &message, None),
                    });
                    self.active.insert(
                        alert,
                        State {
                            since: now,
                            last_sent: now,
                            message,
                        },
                    );
                }
                (Some(message), Some(state)) => {
                    state.message = message;
                    if now - state.last_sent >= repeat {
                        state.last_sent = now;
                        notices.push(Notice {
                            alert,
                            state: NoticeState::Repeat,
                            since: state.since,
                            text: firing_text(alert, &state.message, Some(now - state.since)),
                        });
                    }
                }
                (None, Some(_)) => {
                    let state = self.active.remove(&alert).expect("active");
                    notices.push(Notice {
                        alert,
                        state: NoticeState::Resolved,
                        since: state.since,
                        text: format!(
                            "[marketsync] RESOLVED {} after {}: {}",
                            alert.name(),
                            seconds(now - state.since),
                            state.message
                        ),
                    });
                }
                (None, None) => {}
            }
        }
        notices
    }

    /// The alerts firing now, oldest first.
    pub fn firing(&self) -> Vec<Firing> {
        let mut firing: Vec<Firing> = self
            .active
            .iter()
            .map(|(alert, state)| Firing {
                alert: *alert,
                owner: alert.owner(),
                since: state.since,
                message: state.message.clone(),
            })
            .collect();
        firing.sort_by_key(|f| f.since);
        firing
    }
}

/// `1 double-source, 2 revenue-gap`: the open classes of a tier with their counts.
fn classes_of(status: &crate::store::Status, tier: Tier) -> String {
    status
        .read_back_open
        .iter()
        .filter(|(class, _)| class.tier() == tier)
        .map(|(class, (count, _))| format!("{count} {}", class.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn firing_text(alert: Alert, message: &str, lasting: Option<i64>) -> String {
    let head = match lasting {
        None => format!("[marketsync] FIRING {}", alert.name()),
        Some(ms) => format!(
            "[marketsync] STILL FIRING {} (for {})",
            alert.name(),
            seconds(ms)
        ),
    };
    format!(
        "{head}: {message}.\nFirst: {}.\nOwner: {}. Runbook: {}.",
        alert.first_step(),
        alert.owner(),
        alert.runbook()
    )
}

/// A length of time for a person: `45s`, `12 min`, `3.5 h`.
fn seconds(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{} min", s / 60),
        _ => format!("{:.1} h", s as f64 / 3600.0),
    }
}

/// The evaluator as `serve` runs it: checked every `check_every`, its notices sent, and its
/// firing alerts readable meanwhile.
pub struct Alerts {
    evaluator: Mutex<Evaluator>,
    notifier: Notifier,
}

impl Alerts {
    pub fn new(settings: AlertSettings, notifier: Notifier, now: i64) -> Arc<Alerts> {
        Arc::new(Alerts {
            evaluator: Mutex::new(Evaluator::new(settings, now)),
            notifier,
        })
    }

    /// The alerts firing now.
    pub fn firing(&self) -> Vec<Firing> {
        self.evaluator.lock().expect("not poisoned").firing()
    }

    /// See [`Evaluator::watch_reconciliation`].
    pub fn watch_reconciliation(&self, since: i64) {
        self.evaluator
            .lock()
            .expect("not poisoned")
            .watch_reconciliation(since);
    }

    /// Checks and notifies every `check_every` until `stop` resolves. A store that cannot be
    /// read is logged and tried again at the next check (it is also what the intake alert
    /// watches).
    pub async fn run(
        self: Arc<Alerts>,
        store: Arc<Mutex<Store>>,
        facts: impl Fn() -> Facts + Send + 'static,
        stop: impl Future<Output = ()> + Send + 'static,
    ) {
        let every = self
            .evaluator
            .lock()
            .expect("not poisoned")
            .settings()
            .check_every
            .duration();
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = ticks.tick() => {}
            }
            let facts = facts();
            let alerts = Arc::clone(&self);
            let store = Arc::clone(&store);
            let checked = tokio::task::spawn_blocking(move || {
                let store = store.lock().expect("store not poisoned");
                let now = crate::sink::now_ms();
                alerts
                    .evaluator
                    .lock()
                    .expect("not poisoned")
                    .check(&store, facts, now)
            })
            .await;
            match checked {
                Ok(Ok(notices)) => {
                    for notice in notices {
                        tracing::warn!(
                            alert = notice.alert.name(),
                            state = notice.state.as_str(),
                            "alerts: {} {}",
                            notice.alert.name(),
                            notice.state.as_str()
                        );
                        self.notifier.send(&notice).await;
                    }
                }
                Ok(Err(err)) => tracing::error!("alerts: could not read the store: {err}"),
                Err(err) => tracing::error!("alerts: the check failed: {err}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000;

    fn evaluator(repeat: Span) -> Evaluator {
        Evaluator::new(
            AlertSettings {
                repeat,
                ..AlertSettings::default()
            },
            0,
        )
    }

    fn holds(message: &str) -> BTreeMap<Alert, String> {
        BTreeMap::from([(Alert::OrderQueueAge, message.to_owned())])
    }

    #[test]
    fn an_alert_fires_once_repeats_at_most_every_repeat_and_resolves_once() {
        let mut alerts = evaluator(Span::minutes(10));
        let states = |notices: Vec<Notice>| notices.iter().map(|n| n.state).collect::<Vec<_>>();
        assert_eq!(
            states(alerts.step(holds("3 queued"), 0)),
            [NoticeState::Firing]
        );
        assert_eq!(states(alerts.step(holds("4 queued"), MINUTE)), []);
        assert_eq!(states(alerts.step(holds("5 queued"), 9 * MINUTE)), []);
        let repeat = alerts.step(holds("6 queued"), 10 * MINUTE);
        assert_eq!(states(repeat.clone()), [NoticeState::Repeat]);
        assert!(repeat[0].text.contains("6 queued"), "{}", repeat[0].text);
        assert!(repeat[0].text.contains("for 10 min"), "{}", repeat[0].text);
        assert_eq!(states(alerts.step(holds("7 queued"), 15 * MINUTE)), []);
        assert_eq!(alerts.firing().len(), 1);
        assert_eq!(alerts.firing()[0].message, "7 queued");
        assert_eq!(alerts.firing()[0].since, 0);
        let resolved = alerts.step(BTreeMap::new(), 16 * MINUTE);
        assert_eq!(states(resolved.clone()), [NoticeState::Resolved]);
        assert!(
            resolved[0].text.contains("after 16 min"),
            "{}",
            resolved[0].text
        );
        assert_eq!(states(alerts.step(BTreeMap::new(), 30 * MINUTE)), []);
        assert!(alerts.firing().is_empty());
        // It starts again as a new alert.
        assert_eq!(
            states(alerts.step(holds("1 queued"), 31 * MINUTE)),
            [NoticeState::Firing]
        );
    }

    #[test]
    fn silence_counts_from_the_last_delivery_or_else_from_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let mut alerts = evaluator(Span::minutes(60));
        let hour = 60 * MINUTE;
        assert!(
            alerts
                .check(&store, Facts::default(), 4 * hour)
                .unwrap()
                .is_empty()
        );
        let fired = alerts
            .check(&store, Facts::default(), 4 * hour + MINUTE)
            .unwrap();
        assert_eq!(fired.len(), 1, "{fired:?}");
        assert_eq!(fired[0].alert, Alert::NoDelivery);
        assert!(
            fired[0].text.contains("none since serve started 4.0 h ago"),
            "{}",
            fired[0].text
        );
        assert_eq!(alerts.firing()[0].owner, "e-commerce");
    }

    #[test]
    fn intake_failures_count_within_their_window_and_then_clear() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let mut alerts = evaluator(Span::minutes(60));
        let facts = |n| Facts {
            intake_failures: n,
            key_refused: false,
        };
        assert!(alerts.check(&store, facts(0), MINUTE).unwrap().is_empty());
        let fired = alerts.check(&store, facts(3), 2 * MINUTE).unwrap();
        assert_eq!(fired.len(), 1);
        assert!(
            fired[0].text.contains("3 answered 503"),
            "{}",
            fired[0].text
        );
        assert!(
            alerts
                .check(&store, facts(3), 11 * MINUTE)
                .unwrap()
                .is_empty()
        );
        let resolved = alerts.check(&store, facts(3), 13 * MINUTE).unwrap();
        assert_eq!(resolved[0].state, NoticeState::Resolved);
    }

    fn of(notices: &[Notice], alert: Alert) -> Vec<&Notice> {
        notices.iter().filter(|n| n.alert == alert).collect()
    }

    /// Issue 14's last alert: only where reconciliation is scheduled, counted from the last
    /// run that finished (or the schedule's start), resolved by the next run that finishes.
    #[test]
    fn a_reconciliation_that_stops_succeeding_fires_where_one_is_scheduled() {
        let hour = 60 * MINUTE;
        let mut store = Store::in_memory().unwrap();
        let mut unscheduled = evaluator(Span::minutes(60));
        let fired = unscheduled
            .check(&store, Facts::default(), 30 * hour)
            .unwrap();
        assert!(of(&fired, Alert::ReconciliationStale).is_empty());

        let mut alerts = evaluator(Span::minutes(60));
        alerts.watch_reconciliation(0);
        let quiet = alerts.check(&store, Facts::default(), 26 * hour).unwrap();
        assert!(
            of(&quiet, Alert::ReconciliationStale).is_empty(),
            "26 h is not over 26h"
        );
        let fired = alerts
            .check(&store, Facts::default(), 26 * hour + MINUTE)
            .unwrap();
        let stale = of(&fired, Alert::ReconciliationStale);
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].state, NoticeState::Firing);
        assert!(
            stale[0].text.contains(
                "Reconciliation with Marketplacer has not succeeded for over 26h: none has finished in the 26.0 h since serve started"
            ),
            "{}",
            stale[0].text
        );
        assert!(
            stale[0].text.contains("reconciliation stopped:"),
            "{}",
            stale[0].text
        );
        assert!(
            stale[0]
                .text
                .contains("Owner: e-commerce. Runbook: docs/operations.md#reconciliation-stale")
        );

        let run = store
            .start_reconcile_run(
                "s",
                ("2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"),
                "webhooks",
                "{}",
                27 * hour,
            )
            .unwrap();
        store.finish_reconcile_run(run.id, "{}", 27 * hour).unwrap();
        let resolved = alerts
            .check(&store, Facts::default(), 27 * hour + MINUTE)
            .unwrap();
        assert_eq!(
            of(&resolved, Alert::ReconciliationStale)[0].state,
            NoticeState::Resolved
        );
        let again = alerts
            .check(&store, Facts::default(), 53 * hour + MINUTE)
            .unwrap();
        let stale = of(&again, Alert::ReconciliationStale);
        assert!(
            stale[0].text.contains("the last run finished 26.0 h ago"),
            "{}",
            stale[0].text
        );
    }

    /// Issue 17: compliance and systemic exceptions read back from Klaviyo fire their alerts
    /// with counts, and resolve when the exceptions are.
    #[test]
    fn compliance_and_systemic_exceptions_read_back_fire_and_resolve() {
        use crate::reconcile::exceptions::Checked;
        use crate::reconcile::impact::{Class, Discrepancy, ReadBack};
        let mut store = Store::in_memory().unwrap();
        let found = |class: Class, key: &str, affected: u64| Discrepancy {
            class,
            key: key.into(),
            marketplace: Some("petmarket".into()),
            order_id: None,
            person: None,
            profile_ids: vec![],
            event_ids: vec![],
            money_cents: 0,
            currency: None,
            flow_live: false,
            affected,
            happened_at: None,
            detail: String::new(),
            action: String::new(),
        };
        let read_back = ReadBack {
            discrepancies: vec![
                found(
                    Class::SubscribedWithoutEvidence,
                    "subscribed-without-evidence:email:a@b.co",
                    1,
                ),
                found(
                    Class::SubscribedWithoutEvidence,
                    "subscribed-without-evidence:email:c@d.co",
                    1,
                ),
                found(Class::DoubleSource, "double-source:Placed Order", 214),
                found(
                    Class::WebhookDisabled,
                    "webhook-disabled:petmarket:SHIPMENT",
                    23,
                ),
                found(
                    Class::MissingPlacedOrder,
                    "missing-placed-order:petmarket:5001",
                    1,
                ),
            ],
            ..ReadBack::default()
        };
        let run = store
            .start_reconcile_run(
                "s",
                ("2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"),
                "webhooks",
                "{}",
                0,
            )
            .unwrap();
        store
            .record_read_back(run.id, &Checked::default(), &read_back, 0)
            .unwrap();
        let mut alerts = evaluator(Span::minutes(60));
        let fired = alerts.check(&store, Facts::default(), MINUTE).unwrap();
        let compliance = of(&fired, Alert::ComplianceExceptions);
        assert!(
            compliance[0].text.contains(
                "Reading Klaviyo back found 2 people subscribed to marketing without consent on record (2 subscribed-without-evidence)"
            ),
            "{}",
            compliance[0].text
        );
        assert!(compliance[0].text.contains("--tier compliance"));
        assert!(compliance[0].text.contains("Owner: marketing."));
        let systemic = of(&fired, Alert::SystemicExceptions);
        assert!(
            systemic[0].text.contains(
                "found 2 causes behind many orders (1 double-source, 1 webhook-disabled), touching 237 orders or people in all"
            ),
            "{}",
            systemic[0].text
        );
        assert!(systemic[0].text.contains("Owner: e-commerce."));

        let open = store
            .open_read_back_exceptions(&ReadBackFilter::default())
            .unwrap();
        let compliance: Vec<i64> = open
            .iter()
            .filter(|e| e.tier() == Tier::Compliance)
            .map(|e| e.id)
            .collect();
        store
            .resolve_read_back_exceptions(&compliance, "unsubscribed", 2 * MINUTE)
            .unwrap();
        let next = alerts.check(&store, Facts::default(), 3 * MINUTE).unwrap();
        assert_eq!(
            of(&next, Alert::ComplianceExceptions)[0].state,
            NoticeState::Resolved
        );
        assert!(
            of(&next, Alert::SystemicExceptions).is_empty(),
            "still firing, not repeated yet"
        );
        assert_eq!(
            alerts.firing().iter().map(|f| f.alert).collect::<Vec<_>>(),
            [Alert::SystemicExceptions]
        );
    }
}
