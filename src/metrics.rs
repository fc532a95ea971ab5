//! What `marketsync serve` exports on `/metrics`, in the Prometheus text format.
//!
//! The promise to marketing and CX is that a late or failed event is seen before a customer
//! notices; a Prometheus shop sees it through these series and the rules in
//! `deploy/prometheus/`. The names follow Prometheus's guide: a `marketsync_` prefix, base
//! units (`_seconds`), `_total` on counters, "last done" as a `_timestamp_seconds` and an age
//! computed when scraped, explicit histogram buckets so replicas aggregate. Labels are only
//! bounded sets (outcome, lane, mapping, endpoint, category): never an order id or an email.
//!
//! Every series that will exist is exported from start-up (0, or the store's last value), so
//! an alert on `increase()` or on absence works from the first scrape. The receiver and the
//! sender record into one [`Metrics`]; the queue's depth and age are read from the store at
//! scrape time rather than tracked, so they cannot drift from what is really queued.

use crate::klaviyo::Endpoint;
use crate::reconcile::exceptions::{OpenCounts, Summary};
use crate::reconcile::impact::Class;
use crate::spec::Lane;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

/// How a webhook was answered: the `outcome` label of the webhook series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WebhookOutcome {
    /// A new delivery, committed (skipped types and dead letters included).
    Accepted,
    /// Already stored; nothing queued again.
    Duplicate,
    /// Committed, but kept as a dead letter (unreadable, or a mapping refused it).
    DeadLettered,
    /// Over the body limit: kept as a dead letter with its head.
    TooLarge,
    /// Signature or token missing or wrong: 503, nothing kept.
    BadSignature,
    /// The store did not take the write: 503.
    StoreUnavailable,
    /// The internal deadline passed: 503.
    Deadline,
    /// Too many webhooks in flight: 503.
    Overloaded,
    /// Shutting down: 503.
    ShuttingDown,
    /// Another path or method: 503 (a misconfigured URL).
    WrongPath,
    /// The sender broke off the body: 503.
    BodyNotRead,
}

impl WebhookOutcome {
    pub const ALL: [WebhookOutcome; 11] = [
        WebhookOutcome::Accepted,
        WebhookOutcome::Duplicate,
        WebhookOutcome::DeadLettered,
        WebhookOutcome::TooLarge,
        WebhookOutcome::BadSignature,
        WebhookOutcome::StoreUnavailable,
        WebhookOutcome::Deadline,
        WebhookOutcome::Overloaded,
        WebhookOutcome::ShuttingDown,
        WebhookOutcome::WrongPath,
        WebhookOutcome::BodyNotRead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookOutcome::Accepted => "accepted",
            WebhookOutcome::Duplicate => "duplicate",
            WebhookOutcome::DeadLettered => "dead_lettered",
            WebhookOutcome::TooLarge => "too_large",
            WebhookOutcome::BadSignature => "bad_signature",
            WebhookOutcome::StoreUnavailable => "store_unavailable",
            WebhookOutcome::Deadline => "deadline",
            WebhookOutcome::Overloaded => "overloaded",
            WebhookOutcome::ShuttingDown => "shutting_down",
            WebhookOutcome::WrongPath => "wrong_path",
            WebhookOutcome::BodyNotRead => "body_not_read",
        }
    }
}

/// What happened to a request sent to Klaviyo: the `outcome` label of the request series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestOutcome {
    Sent,
    Retried,
    DeadLettered,
}

impl RequestOutcome {
    const ALL: [RequestOutcome; 3] = [
        RequestOutcome::Sent,
        RequestOutcome::Retried,
        RequestOutcome::DeadLettered,
    ];

    fn as_str(self) -> &'static str {
        match self {
            RequestOutcome::Sent => "sent",
            RequestOutcome::Retried => "retried",
            RequestOutcome::DeadLettered => "dead_lettered",
        }
    }
}

/// One mapping as the sender sees it: the series it gets from start-up.
#[derive(Debug, Clone)]
pub struct Route {
    pub mapping: String,
    pub lane: Lane,
    pub endpoint: Endpoint,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LaneLabel {
    lane: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LaneMappingLabels {
    lane: String,
    mapping: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    mapping: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeadLetterLabels {
    mapping: String,
    category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: &'static str,
    tier: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct MoneyLabels {
    tier: &'static str,
    currency: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;
type FloatCounter = Counter<f64, AtomicU64>;

/// A webhook's answer time, in seconds: Marketplacer gives up at 30 s; the goal is p99 under
/// 100 ms.
const WEBHOOK_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];
/// From webhook accepted to Klaviyo accepted, in seconds: a Placed Order should take about
/// a second; a profile update behind a backlog may take an hour.
const LAG_BUCKETS: [f64; 14] = [
    0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0,
];

/// The process's metrics, shared by the receiver and the sender.
pub struct Metrics {
    registry: Registry,
    webhook_requests: Family<OutcomeLabel, Counter>,
    webhook_duration: Family<OutcomeLabel, Histogram>,
    webhook_last_accepted: FloatGauge,
    delivery_lag: Family<LaneMappingLabels, Histogram>,
    queue_depth: Family<LaneLabel, Gauge>,
    queue_oldest_age: Family<LaneLabel, FloatGauge>,
    requests: Family<RequestLabels, Counter>,
    rate_limited: Family<EndpointLabel, Counter>,
    rate_limit_wait: Family<EndpointLabel, FloatCounter>,
    last_success: Family<EndpointLabel, FloatGauge>,
    dead_letters: Family<DeadLetterLabels, Counter>,
    key_refused: Gauge,
    /// Registered only where reconciliation is scheduled ([`Metrics::with_reconciliation`]):
    /// elsewhere the staleness rule must have no series to fire on.
    reconciliation_last_success: FloatGauge,
    /// What reading Klaviyo back found, open now: read from the store at scrape time
    /// ([`Metrics::read_back`]), like the queue.
    exceptions_open: Family<ClassLabels, Gauge>,
    exceptions_at_stake: Family<MoneyLabels, FloatGauge>,
    /// The (tier, currency) pairs exported so far: one no longer open is set to 0, not left at
    /// its last value.
    at_stake_seen: std::sync::Mutex<std::collections::BTreeSet<MoneyLabels>>,
    read_back_last: FloatGauge,
    read_back_requests: Family<EndpointLabel, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new(&[])
    }
}

impl Metrics {
    /// Every series `routes` will produce, at 0, besides the webhook and queue series.
    pub fn new(routes: &[Route]) -> Metrics {
        let mut registry = Registry::with_prefix("marketsync");
        let metrics = Metrics {
            webhook_requests: Family::default(),
            webhook_duration: Family::new_with_constructor(|| {
                Histogram::new(WEBHOOK_BUCKETS.iter().copied())
            }),
            webhook_last_accepted: FloatGauge::default(),
            delivery_lag: Family::new_with_constructor(|| {
                Histogram::new(LAG_BUCKETS.iter().copied())
            }),
            queue_depth: Family::default(),
            queue_oldest_age: Family::default(),
            requests: Family::default(),
            rate_limited: Family::default(),
            rate_limit_wait: Family::default(),
            last_success: Family::default(),
            dead_letters: Family::default(),
            key_refused: Gauge::default(),
            reconciliation_last_success: FloatGauge::default(),
            exceptions_open: Family::default(),
            exceptions_at_stake: Family::default(),
            at_stake_seen: std::sync::Mutex::default(),
            read_back_last: FloatGauge::default(),
            read_back_requests: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "webhook_requests",
            "Webhooks answered, by outcome",
            metrics.webhook_requests.clone(),
        );
        registry.register(
            "webhook_request_duration_seconds",
            "Time to answer a webhook (body read, verified, committed), by outcome",
            metrics.webhook_duration.clone(),
        );
        registry.register(
            "webhook_last_accepted_timestamp_seconds",
            "When the newest delivery was stored (Unix time; from the store at start-up)",
            metrics.webhook_last_accepted.clone(),
        );
        registry.register(
            "delivery_lag_seconds",
            "From a delivery stored to Klaviyo accepting its request, by lane and mapping",
            metrics.delivery_lag.clone(),
        );
        registry.register(
            "queue_requests",
            "Requests queued for Klaviyo, by lane",
            metrics.queue_depth.clone(),
        );
        registry.register(
            "queue_oldest_age_seconds",
            "Age of the oldest queued request, by lane (0 when the lane is empty)",
            metrics.queue_oldest_age.clone(),
        );
        registry.register(
            "klaviyo_requests",
            "Requests to Klaviyo by queued endpoint, mapping and outcome (sent, retried, dead_lettered)",
            metrics.requests.clone(),
        );
        registry.register(
            "klaviyo_rate_limited",
            "Answers 429 from Klaviyo, by endpoint",
            metrics.rate_limited.clone(),
        );
        registry.register(
            "klaviyo_rate_limit_wait_seconds",
            "Time requests waited for a rate-limit slot, by endpoint",
            metrics.rate_limit_wait.clone(),
        );
        registry.register(
            "klaviyo_last_success_timestamp_seconds",
            "When Klaviyo last accepted a request, by queued endpoint (Unix time; from the store at start-up, 0 before the first)",
            metrics.last_success.clone(),
        );
        registry.register(
            "dead_letters",
            "Dead letters written, by mapping and category",
            metrics.dead_letters.clone(),
        );
        registry.register(
            "klaviyo_key_refused",
            "1 when Klaviyo refused the API key (401/403) and nothing is being sent",
            metrics.key_refused.clone(),
        );
        registry.register(
            "reconciliation_exceptions_open",
            "Exceptions read back from Klaviyo and still open, by class and tier (compliance, systemic, money, hygiene)",
            metrics.exceptions_open.clone(),
        );
        registry.register(
            "reconciliation_exceptions_at_stake",
            "Money at stake of the open read-back exceptions, by tier and currency, in the currency's major unit",
            metrics.exceptions_at_stake.clone(),
        );
        registry.register(
            "reconciliation_read_back_last_timestamp_seconds",
            "When a reconciliation last read Klaviyo back (Unix time; 0 before the first)",
            metrics.read_back_last.clone(),
        );
        registry.register(
            "reconciliation_read_back_requests",
            "Requests the last read-back made to Klaviyo, by endpoint (its read budget)",
            metrics.read_back_requests.clone(),
        );
        for class in Class::ALL {
            let _ = metrics.exceptions_open.get_or_create(&ClassLabels {
                class: class.name(),
                tier: class.tier().name(),
            });
        }
        let build_info: Family<BuildLabels, Gauge> = Family::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "The running marketsync's version", build_info);

        for outcome in WebhookOutcome::ALL {
            let label = OutcomeLabel {
                outcome: outcome.as_str(),
            };
            let _ = metrics.webhook_requests.get_or_create(&label);
            let _ = metrics.webhook_duration.get_or_create(&label);
        }
        for lane in [Lane::Transaction, Lane::Profile] {
            let label = LaneLabel {
                lane: lane.as_str().to_owned(),
            };
            let _ = metrics.queue_depth.get_or_create(&label);
            let _ = metrics.queue_oldest_age.get_or_create(&label);
        }
        for endpoint in Endpoint::ALL {
            let label = EndpointLabel {
                endpoint: endpoint.path().to_owned(),
            };
            let _ = metrics.rate_limited.get_or_create(&label);
            let _ = metrics.rate_limit_wait.get_or_create(&label);
        }
        for route in routes {
            // 0 until Klaviyo first accepts something for it (the store's last success, once
            // there is one): an alert on its age must see the series before the first success.
            let _ = metrics.last_success.get_or_create(&EndpointLabel {
                endpoint: route.endpoint.path().to_owned(),
            });
            let _ = metrics.delivery_lag.get_or_create(&LaneMappingLabels {
                lane: route.lane.as_str().to_owned(),
                mapping: route.mapping.clone(),
            });
            for outcome in RequestOutcome::ALL {
                let _ = metrics.requests.get_or_create(&RequestLabels {
                    endpoint: route.endpoint.path().to_owned(),
                    mapping: route.mapping.clone(),
                    outcome: outcome.as_str(),
                });
            }
        }
        Metrics {
            registry,
            ..metrics
        }
    }

    /// [`Metrics::new`] with a route for every mapping of `engine`.
    pub fn for_engine(engine: &crate::engine::Engine) -> Metrics {
        let routes: Vec<Route> = engine
            .mapping_targets()
            .into_iter()
            .map(|(mapping, lane, endpoint)| Route {
                mapping: mapping.to_string(),
                lane,
                endpoint,
            })
            .collect();
        Metrics::new(&routes)
    }

    /// Exports when reconciliation last succeeded, starting at `since_ms`: the last success in
    /// the store, else when the schedule started (a schedule that has never succeeded for a
    /// day is as stale as one that stopped succeeding).
    pub fn with_reconciliation(mut self, since_ms: i64) -> Metrics {
        self.registry.register(
            "reconciliation_last_success_timestamp_seconds",
            "When a scheduled reconciliation last finished (Unix time; from the store at start-up, else the start of the schedule)",
            self.reconciliation_last_success.clone(),
        );
        self.reconciled(since_ms);
        self
    }

    /// A reconciliation finished at `at_ms`.
    pub fn reconciled(&self, at_ms: i64) {
        self.reconciliation_last_success.set(at_ms as f64 / 1000.0);
    }

    /// What reading Klaviyo back left open, and the last read-back, as the store has them now.
    pub fn read_back(&self, open: &OpenCounts, last: Option<&Summary>) {
        let mut at_stake: BTreeMap<MoneyLabels, i64> = BTreeMap::new();
        for class in Class::ALL {
            let (count, money) = open.get(&class).cloned().unwrap_or_default();
            self.exceptions_open
                .get_or_create(&ClassLabels {
                    class: class.name(),
                    tier: class.tier().name(),
                })
                .set(count as i64);
            for (currency, cents) in money {
                *at_stake
                    .entry(MoneyLabels {
                        tier: class.tier().name(),
                        currency,
                    })
                    .or_default() += cents;
            }
        }
        let mut seen = self.at_stake_seen.lock().expect("not poisoned");
        seen.extend(at_stake.keys().cloned());
        for labels in seen.iter() {
            let cents = at_stake.get(labels).copied().unwrap_or(0);
            let exponent = iso_currency::Currency::from_code(&labels.currency)
                .and_then(|c| c.exponent())
                .unwrap_or(2);
            self.exceptions_at_stake
                .get_or_create(labels)
                .set(cents as f64 / 10f64.powi(i32::from(exponent)));
        }
        if let Some(last) = last {
            self.read_back_last.set(last.recorded_at as f64 / 1000.0);
            for read in &last.reads {
                self.read_back_requests
                    .get_or_create(&EndpointLabel {
                        endpoint: read.endpoint.clone(),
                    })
                    .set(read.requests as i64);
            }
        }
    }

    /// The exposition, as `GET /metrics` answers it.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }

    /// The `Content-Type` of [`Metrics::render`].
    pub const CONTENT_TYPE: &'static str =
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

    pub fn webhook(&self, outcome: WebhookOutcome, took: Duration) {
        let label = OutcomeLabel {
            outcome: outcome.as_str(),
        };
        self.webhook_requests.get_or_create(&label).inc();
        self.webhook_duration
            .get_or_create(&label)
            .observe(took.as_secs_f64());
    }

    /// A delivery was stored at `at_ms` (Unix ms).
    pub fn webhook_accepted_at(&self, at_ms: i64) {
        let seconds = at_ms as f64 / 1000.0;
        if seconds > self.webhook_last_accepted.get() {
            self.webhook_last_accepted.set(seconds);
        }
    }

    /// The queue as the store has it now: depth and age of the oldest, in a lane.
    pub fn queue(&self, lane: &str, depth: u64, oldest_age: Duration) {
        let label = LaneLabel {
            lane: lane.to_owned(),
        };
        self.queue_depth.get_or_create(&label).set(depth as i64);
        self.queue_oldest_age
            .get_or_create(&label)
            .set(oldest_age.as_secs_f64());
    }

    /// Klaviyo accepted a request of `mapping`, queued for `endpoint` in `lane` at
    /// `queued_at_ms`, at `now_ms`.
    pub fn sent(&self, endpoint: &str, lane: &str, mapping: &str, queued_at_ms: i64, now_ms: i64) {
        self.request(endpoint, mapping, RequestOutcome::Sent);
        let lag = (now_ms - queued_at_ms).max(0) as f64 / 1000.0;
        self.delivery_lag
            .get_or_create(&LaneMappingLabels {
                lane: lane.to_owned(),
                mapping: mapping.to_owned(),
            })
            .observe(lag);
        self.succeeded(endpoint, now_ms);
    }

    /// Klaviyo accepted something for `endpoint` at `now_ms`.
    pub fn succeeded(&self, endpoint: &str, now_ms: i64) {
        let gauge = self.last_success.get_or_create(&EndpointLabel {
            endpoint: endpoint.to_owned(),
        });
        let seconds = now_ms as f64 / 1000.0;
        if seconds > gauge.get() {
            gauge.set(seconds);
        }
    }

    pub fn retried(&self, endpoint: &str, mapping: &str) {
        self.request(endpoint, mapping, RequestOutcome::Retried);
    }

    /// A request became a dead letter: counted as a request of its endpoint, and as a dead
    /// letter of its mapping and category.
    pub fn request_dead_lettered(&self, endpoint: &str, mapping: &str, category: &str) {
        self.request(endpoint, mapping, RequestOutcome::DeadLettered);
        self.dead_lettered(mapping, category);
    }

    /// A dead letter was written (at intake: a delivery no mapping could read, or refused).
    pub fn dead_lettered(&self, mapping: &str, category: &str) {
        self.dead_letters
            .get_or_create(&DeadLetterLabels {
                mapping: mapping.to_owned(),
                category: category.to_owned(),
            })
            .inc();
    }

    pub fn rate_limited(&self, endpoint: &str) {
        self.rate_limited
            .get_or_create(&EndpointLabel {
                endpoint: endpoint.to_owned(),
            })
            .inc();
    }

    pub fn waited_on_limit(&self, endpoint: &str, waited: Duration) {
        self.rate_limit_wait
            .get_or_create(&EndpointLabel {
                endpoint: endpoint.to_owned(),
            })
            .inc_by(waited.as_secs_f64());
    }

    pub fn key_refused(&self) {
        self.key_refused.set(1);
    }

    fn request(&self, endpoint: &str, mapping: &str, outcome: RequestOutcome) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_owned(),
                mapping: mapping.to_owned(),
                outcome: outcome.as_str(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(mapping: &str, lane: Lane, endpoint: Endpoint) -> Route {
        Route {
            mapping: mapping.into(),
            lane,
            endpoint,
        }
    }

    /// The value of the sample line that starts with `series` (name and labels as rendered).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(|value| value.parse().unwrap())
    }

    #[test]
    fn every_series_exists_at_zero_from_the_start() {
        let metrics = Metrics::new(&[route(
            "placed-order",
            Lane::Transaction,
            Endpoint::CreateEvent,
        )]);
        let text = metrics.render();
        for series in [
            r#"marketsync_webhook_requests_total{outcome="accepted"}"#,
            r#"marketsync_webhook_requests_total{outcome="bad_signature"}"#,
            r#"marketsync_webhook_requests_total{outcome="store_unavailable"}"#,
            r#"marketsync_webhook_request_duration_seconds_count{outcome="duplicate"}"#,
            "marketsync_webhook_last_accepted_timestamp_seconds",
            r#"marketsync_delivery_lag_seconds_count{lane="transaction",mapping="placed-order"}"#,
            r#"marketsync_queue_requests{lane="profile"}"#,
            r#"marketsync_queue_oldest_age_seconds{lane="transaction"}"#,
            r#"marketsync_klaviyo_requests_total{endpoint="/api/events",mapping="placed-order",outcome="dead_lettered"}"#,
            r#"marketsync_klaviyo_rate_limited_total{endpoint="/api/events"}"#,
            r#"marketsync_klaviyo_rate_limit_wait_seconds_total{endpoint="/api/events"}"#,
            r#"marketsync_klaviyo_last_success_timestamp_seconds{endpoint="/api/events"}"#,
            "marketsync_klaviyo_key_refused",
        ] {
            assert_eq!(sample(&text, series), Some(0.0), "{series} in\n{text}");
        }
        // Only the endpoints a mapping queues for: a bulk endpoint never "last succeeds" by
        // that name, and a series stuck at 0 would look like an endpoint never answering.
        assert_eq!(
            sample(
                &text,
                r#"marketsync_klaviyo_last_success_timestamp_seconds{endpoint="/api/event-bulk-create-jobs"}"#
            ),
            None
        );
        assert_eq!(
            sample(&text, r#"marketsync_build_info{version="0.1.0"}"#),
            Some(1.0)
        );
        assert!(text.contains("# TYPE marketsync_webhook_requests_total counter"));
        assert!(text.contains("# TYPE marketsync_delivery_lag_seconds histogram"));
    }

    #[test]
    fn what_is_recorded_is_what_is_rendered() {
        let metrics = Metrics::new(&[]);
        metrics.webhook(WebhookOutcome::Accepted, Duration::from_millis(30));
        metrics.webhook(WebhookOutcome::Accepted, Duration::from_millis(300));
        metrics.webhook_accepted_at(1_700_000_000_500);
        metrics.webhook_accepted_at(1_600_000_000_000);
        metrics.sent(
            "/api/events",
            "transaction",
            "placed-order",
            1_700_000_000_000,
            1_700_000_001_500,
        );
        metrics.request_dead_lettered("/api/events", "placed-order", "invalid");
        metrics.dead_lettered("consent", "mapping:missing-field");
        metrics.queue("transaction", 3, Duration::from_secs(42));
        metrics.waited_on_limit("/api/events", Duration::from_millis(250));
        metrics.key_refused();
        let text = metrics.render();
        let check = |series: &str, value: f64| {
            assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
        };
        check(
            r#"marketsync_webhook_requests_total{outcome="accepted"}"#,
            2.0,
        );
        check(
            r#"marketsync_webhook_request_duration_seconds_bucket{outcome="accepted",le="0.05"}"#,
            1.0,
        );
        check(
            "marketsync_webhook_last_accepted_timestamp_seconds",
            1_700_000_000.5,
        );
        check(
            r#"marketsync_delivery_lag_seconds_bucket{lane="transaction",mapping="placed-order",le="1"}"#,
            0.0,
        );
        check(
            r#"marketsync_delivery_lag_seconds_bucket{lane="transaction",mapping="placed-order",le="2"}"#,
            1.0,
        );
        check(
            r#"marketsync_klaviyo_requests_total{endpoint="/api/events",mapping="placed-order",outcome="sent"}"#,
            1.0,
        );
        check(
            r#"marketsync_klaviyo_last_success_timestamp_seconds{endpoint="/api/events"}"#,
            1_700_000_001.5,
        );
        check(
            r#"marketsync_dead_letters_total{mapping="placed-order",category="invalid"}"#,
            1.0,
        );
        check(
            r#"marketsync_dead_letters_total{mapping="consent",category="mapping:missing-field"}"#,
            1.0,
        );
        check(r#"marketsync_queue_requests{lane="transaction"}"#, 3.0);
        check(
            r#"marketsync_queue_oldest_age_seconds{lane="transaction"}"#,
            42.0,
        );
        check(
            r#"marketsync_klaviyo_rate_limit_wait_seconds_total{endpoint="/api/events"}"#,
            0.25,
        );
        check("marketsync_klaviyo_key_refused", 1.0);
    }

    /// The series `MarketsyncReconciliationStale` (deploy/prometheus) watches exists only where
    /// reconciliation is scheduled, and moves with each success.
    #[test]
    fn the_reconciliation_series_exists_only_where_it_is_scheduled() {
        let series = "marketsync_reconciliation_last_success_timestamp_seconds";
        assert_eq!(sample(&Metrics::new(&[]).render(), series), None);
        let metrics = Metrics::new(&[]).with_reconciliation(1_700_000_000_000);
        assert_eq!(sample(&metrics.render(), series), Some(1_700_000_000.0));
        metrics.reconciled(1_700_003_600_000);
        assert_eq!(sample(&metrics.render(), series), Some(1_700_003_600.0));
    }

    /// Issue 17: every class's open count exists from the start at 0, follows the store, and
    /// drops back to 0 (money included) once resolved.
    #[test]
    fn read_back_exceptions_are_exported_by_class_and_tier_from_the_start() {
        let metrics = Metrics::new(&[]);
        let text = metrics.render();
        for class in Class::ALL {
            let series = format!(
                r#"marketsync_reconciliation_exceptions_open{{class="{}",tier="{}"}}"#,
                class.name(),
                class.tier().name()
            );
            assert_eq!(sample(&text, &series), Some(0.0), "{series} in\n{text}");
        }
        assert_eq!(
            sample(
                &text,
                "marketsync_reconciliation_read_back_last_timestamp_seconds"
            ),
            Some(0.0)
        );

        let open: OpenCounts = [
            (
                Class::SubscribedWithoutEvidence,
                (1, [("AUD".to_owned(), 0)].into()),
            ),
            (
                Class::MissingPlacedOrder,
                (3, [("AUD".to_owned(), 51_966)].into()),
            ),
            (
                Class::WrongOrderValue,
                (1, [("JPY".to_owned(), 2_500)].into()),
            ),
        ]
        .into();
        let last = Summary {
            recorded_at: 1_796_086_800_000,
            reads: vec![crate::reconcile::impact::ReadBudget {
                endpoint: "GET /api/events".into(),
                requests: 41,
                per_minute: 3_500,
                waited_ms: 0,
            }],
            ..Summary::default()
        };
        metrics.read_back(&open, Some(&last));
        let text = metrics.render();
        let check = |series: &str, value: f64| {
            assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
        };
        check(
            r#"marketsync_reconciliation_exceptions_open{class="subscribed-without-evidence",tier="compliance"}"#,
            1.0,
        );
        check(
            r#"marketsync_reconciliation_exceptions_open{class="missing-placed-order",tier="money"}"#,
            3.0,
        );
        check(
            r#"marketsync_reconciliation_exceptions_open{class="double-source",tier="systemic"}"#,
            0.0,
        );
        check(
            r#"marketsync_reconciliation_exceptions_at_stake{tier="money",currency="AUD"}"#,
            519.66,
        );
        check(
            r#"marketsync_reconciliation_exceptions_at_stake{tier="money",currency="JPY"}"#,
            2_500.0,
        );
        check(
            "marketsync_reconciliation_read_back_last_timestamp_seconds",
            1_796_086_800.0,
        );
        check(
            r#"marketsync_reconciliation_read_back_requests{endpoint="GET /api/events"}"#,
            41.0,
        );

        metrics.read_back(&OpenCounts::new(), Some(&last));
        let text = metrics.render();
        assert_eq!(
            sample(
                &text,
                r#"marketsync_reconciliation_exceptions_open{class="missing-placed-order",tier="money"}"#
            ),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"marketsync_reconciliation_exceptions_at_stake{tier="money",currency="AUD"}"#
            ),
            Some(0.0)
        );
    }
}
