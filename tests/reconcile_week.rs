//! Issue 17's "done when", end to end on the real stand-ins: a generated week of orders synced
//! whole into the Klaviyo stand-in reads back clean; then one exception of each class is
//! planted the way it happens (in Klaviyo through `StandIn::plant` and a second sender's own
//! event, in Marketplacer a disabled webhook and its own Klaviyo tracking switched on), beside
//! an unsubscribe and a bounce that are not exceptions. `marketsync reconcile --report-only`
//! lists exactly the planted ones, ranked, with the money the documented formula gives; a
//! repair run sends the lost events again with their keys, and the reconcile after it leaves
//! only the classes a person has to fix.

mod common;

use common::orders::{self, StandIns, ndjson};
use marketsync::reconcile::impact::{Class, FLOW_PLACED_ORDER_RATE};
use marketsync::standin::marketplacer as mp;
use marketsync::standin::{DEFAULT_API_KEY, Drift, FlowStatus, SuppressionReason};
use serde_json::{Value, json};
use std::path::Path;

/// A week of 30 orders a day, in March (long settled, so nothing is "on its way").
const START: &str = "2026-03-16T00:00:00Z";
const UNTIL: &str = "2026-03-23T00:00:00Z";
const DAYS: u64 = 7;
const PER_DAY: u64 = 30;
const ORDERS: u64 = DAYS * PER_DAY;
/// An order paid ten days before the week, refunded inside it.
const OLD: u64 = 10_015;

// The orders each plant is about (see common::orders for what each `n` has).
const LOST_PLACED: u64 = 11;
const WRONG_VALUE: u64 = 22;
const LOST_SHIPMENT: u64 = 33;
const NO_TRACKING: u64 = 36;
const LOST_REFUND: u64 = 45;
const SUBSCRIPTION_LOST: u64 = 50;
const NEVER_OPTED_IN: u64 = 63;
const SECOND_PROFILE: u64 = 70;
const DRIFTED: u64 = 81;
const UNSUBSCRIBED: u64 = 92;
const BOUNCED: u64 = 101;

/// The second sender's Placed Order: its value, and its day.
const STRAY_CENTS: i64 = 12_345;
const STRAY_AT: &str = "2026-03-18T09:00:00+00:00";

/// The week's webhooks, and the old order's with its refund moved into the week.
fn deliveries() -> Vec<Value> {
    assert!(
        orders::opts_in(SUBSCRIPTION_LOST) && !orders::opts_in(NEVER_OPTED_IN),
        "the consent plants need an opt-in and its absence"
    );
    assert!(orders::opts_in(UNSUBSCRIBED) && orders::opts_in(BOUNCED));
    assert!(orders::has_shipment(LOST_SHIPMENT) && orders::has_shipment(NO_TRACKING));
    assert!(orders::has_refund(LOST_REFUND) && orders::has_refund(OLD));
    assert!(
        !orders::has_refund(LOST_PLACED),
        "its refund would be orphaned too"
    );
    let mut all = orders::generate(START, DAYS, PER_DAY, 0);
    let mut old = orders::generate("2026-03-06T00:00:00Z", 1, 1, OLD);
    let refund = old
        .iter_mut()
        .find(|d| d["body"]["id"] == format!("refund-{OLD}"))
        .unwrap();
    let node = &mut refund["body"]["payload"]["data"]["node"];
    let refunded = orders::time(START, 2 * 86_400 + 10 * 3_600);
    node["updatedAt"] = refunded.clone().into();
    node["refundedAt"] = refunded.into();
    all.extend(old);
    all
}

/// One client, `week`: the default mappings, petmarket in AUD; what Klaviyo accepted two
/// seconds ago is settled (the sync is seconds before the checks, not a day); every missed flow
/// message counts however old (the week is months past the default 48 hours), so that the flow
/// term of the money at stake is in play.
fn client(dir: &Path) {
    let folder = dir.join("clients/week");
    std::fs::create_dir_all(folder.join("mappings")).unwrap();
    std::fs::write(
        folder.join("client.yaml"),
        "marketplaces:\n  petmarket: { currency: AUD }\n\
         marketplacer:\n  url: http://127.0.0.1:1\n  page_size: 500\n  retry_wait: 1s\n\
         reconcile:\n  settle: 2s\n  flow_window: 3650d\n",
    )
    .unwrap();
}

/// The week's stand-ins, and what the test does with them.
struct Week(StandIns);

impl std::ops::Deref for Week {
    type Target = StandIns;
    fn deref(&self) -> &StandIns {
        &self.0
    }
}

impl Week {
    fn start() -> Week {
        let dir = tempfile::tempdir().unwrap();
        client(dir.path());
        let all = deliveries();
        let text = ndjson(&all.iter().collect::<Vec<_>>());
        std::fs::write(dir.path().join("week.ndjson"), &text).unwrap();
        Week(StandIns::start(dir, "week.ndjson", &text))
    }

    /// Every webhook of the week sent as it arrived: Klaviyo holds all of it.
    fn sync(&self) {
        let output = self
            .command(&["run", "--client", "week", "--hold", "5", "--state"])
            .arg(self.state())
            .arg(self.dir.path().join("week.ndjson"))
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// `marketsync reconcile` over the week, reading Klaviyo back: exit code and JSON report.
    fn reconcile(&self, extra: &[&str]) -> (Option<i32>, Value) {
        let output = self
            .command(&["reconcile", "--client", "week", "--format", "json"])
            .args(["--since", START, "--until", UNTIL, "--hold", "5"])
            .arg("--marketplacer-url")
            .arg(self.marketplacer.url())
            .arg("--state")
            .arg(self.state())
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let report: Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("not a JSON report ({e}); stderr:\n{stderr}"));
        assert!(
            !stderr.contains(DEFAULT_API_KEY) && !report.to_string().contains(DEFAULT_API_KEY),
            "the key is never shown"
        );
        (output.status.code(), report)
    }

    /// Requests to Klaviyo's write endpoints so far.
    fn writes(&self) -> u64 {
        self.klaviyo
            .stats()
            .endpoints
            .values()
            .map(|e| e.requests)
            .sum()
    }

    fn plant(&self, drift: Drift) {
        let what = format!("{drift:?}");
        self.klaviyo
            .plant(drift)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }

    /// A Placed Order from another sender, through Klaviyo's own Create Event, for an order
    /// Marketplacer does not have.
    fn send_stray_placed_order(&self) {
        let body = json!({"data": {"type": "event", "attributes": {
            "properties": {"OrderId": "990001", "Marketplace": "petmarket"},
            "time": STRAY_AT,
            "value": STRAY_CENTS as f64 / 100.0,
            "value_currency": "AUD",
            "unique_id": "elsewhere:990001",
            "metric": {"data": {"type": "metric", "attributes": {"name": "Placed Order"}}},
            "profile": {"data": {"type": "profile", "attributes": {"email": "stray@example.com"}}},
        }}});
        let status = self.runtime.block_on(async {
            reqwest::Client::new()
                .post(format!("{}/api/events", self.klaviyo.url()))
                .header(
                    "Authorization",
                    format!("Klaviyo-API-Key {DEFAULT_API_KEY}"),
                )
                .header("revision", marketsync::sink::REVISION)
                .header("content-type", "application/vnd.api+json")
                .body(body.to_string())
                .send()
                .await
                .unwrap()
                .status()
        });
        assert_eq!(status, reqwest::StatusCode::ACCEPTED);
    }

    /// The email-marketing consent Klaviyo holds for a person, as the read endpoint gives it.
    fn consent(&self, email: &str) -> Value {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/profiles", self.klaviyo.url()),
            [
                ("filter", format!("equals(email,\"{email}\")")),
                ("additional-fields[profile]", "subscriptions".into()),
            ],
        )
        .unwrap();
        let body: Value = self.runtime.block_on(async {
            reqwest::Client::new()
                .get(url)
                .header(
                    "Authorization",
                    format!("Klaviyo-API-Key {DEFAULT_API_KEY}"),
                )
                .header("revision", marketsync::sink::REVISION)
                .header("accept", "application/vnd.api+json")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        });
        body["data"][0]["attributes"]["subscriptions"]["email"]["marketing"].clone()
    }
}

/// The open exceptions of a report, as (class, key), in the report's order.
fn open(report: &Value) -> Vec<(String, String)> {
    report["read_back"]["exceptions"]
        .as_array()
        .unwrap_or_else(|| panic!("no read-back in {report:#}"))
        .iter()
        .map(|e| {
            (
                e["class"].as_str().unwrap().to_owned(),
                e["key"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn money_of(report: &Value, key: &str) -> i64 {
    report["read_back"]["exceptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == key)
        .unwrap_or_else(|| panic!("no {key}"))["money_at_stake_cents"]
        .as_i64()
        .unwrap()
}

/// What each planted exception should be: its class, key and money at stake, ranked as
/// `impact::rank` documents (tier, then money, a live flow, people affected, the key).
fn planted() -> Vec<(Class, String, i64)> {
    let week: Vec<u64> = (0..ORDERS).collect();
    let revenue: i64 = week.iter().map(|n| orders::total_cents(*n)).sum();
    // The average Placed Order of the window, and what one missed flow message would earn.
    let average = revenue / ORDERS as i64;
    let flow = (average as f64 * FLOW_PLACED_ORDER_RATE).round() as i64;
    let shipments = week.iter().filter(|n| orders::has_shipment(**n)).count() as i64;
    let order = |n: u64| orders::order_id(n);
    let all = vec![
        (
            Class::SubscribedWithoutEvidence,
            format!(
                "subscribed-without-evidence:email:{}",
                orders::email(NEVER_OPTED_IN)
            ),
            0,
        ),
        // Every Placed Order of the window counted twice.
        (
            Class::DoubleSource,
            "double-source:marketplacer-tracking".to_owned(),
            revenue,
        ),
        // Each shipment of the window rides on the Shipment webhook: its shipping email.
        (
            Class::WebhookDisabled,
            "webhook-disabled:petmarket:SHIPMENT".to_owned(),
            shipments * flow,
        ),
        (
            Class::RevenueGap,
            "revenue-gap:petmarket:2026-03-18".to_owned(),
            STRAY_CENTS,
        ),
        // The order's value, and the post-purchase flow's message.
        (
            Class::MissingPlacedOrder,
            format!("missing-placed-order:petmarket:{}", order(LOST_PLACED)),
            orders::total_cents(LOST_PLACED) + flow,
        ),
        (
            Class::OrphanedRefund,
            format!("orphaned-refund:petmarket:{}", orders::refund_id(OLD)),
            orders::refund_cents(OLD),
        ),
        // No flow is triggered by Refunded Order.
        (
            Class::MissingRefund,
            format!(
                "missing-refund:petmarket:{}",
                orders::refund_id(LOST_REFUND)
            ),
            orders::refund_cents(LOST_REFUND),
        ),
        (
            Class::WrongOrderValue,
            format!("wrong-order-value:petmarket:{}", order(WRONG_VALUE)),
            1_000,
        ),
        // A shipment's money is its shipping flow's message.
        (
            Class::MissingFulfilledOrder,
            format!(
                "missing-fulfilled-order:petmarket:{}",
                orders::shipment_id(LOST_SHIPMENT)
            ),
            flow,
        ),
        (
            Class::TrackingMissing,
            format!(
                "tracking-missing:petmarket:{}",
                orders::shipment_id(NO_TRACKING)
            ),
            flow,
        ),
        (
            Class::ConsentMissed,
            format!("consent-missed:email:{}", orders::email(SUBSCRIPTION_LOST)),
            0,
        ),
        (
            Class::AttributeDrift,
            format!("attribute-drift:email:{}", orders::email(DRIFTED)),
            0,
        ),
        (
            Class::DuplicateProfile,
            format!("duplicate-profile:email:{}", orders::email(SECOND_PROFILE)),
            0,
        ),
    ];
    // The order above is the ranking only if the money falls as it is written: check it.
    let tiers: Vec<_> = all.iter().map(|(c, _, _)| c.tier()).collect();
    assert!(tiers.is_sorted());
    for pair in all.windows(2) {
        if pair[0].0.tier() == pair[1].0.tier() {
            assert!(pair[0].2 >= pair[1].2, "{pair:?}");
        }
    }
    assert_eq!(all.len(), Class::ALL.len());
    all
}

#[test]
fn a_week_with_one_of_each_class_planted_is_reported_ranked_then_repaired_where_it_can_be() {
    let week = Week::start();
    week.sync();
    // Live flows on the metrics whose missing events cost a message.
    for metric in ["Placed Order", "Fulfilled Order"] {
        week.plant(Drift::Flow {
            name: format!("After {metric}"),
            status: FlowStatus::Live,
            metric: metric.into(),
        });
    }

    // Past the settle delay, a clean sync reads back clean, and everything was compared.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (code, clean) = week.reconcile(&["--report-only"]);
    assert_eq!(code, Some(0), "{clean:#}");
    assert_eq!(open(&clean), vec![]);
    assert_eq!(clean["findings"]["read_back_notes"], json!([]), "{clean:#}");
    let reads: Vec<&str> = clean["read_back"]["reads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["endpoint"].as_str().unwrap())
        .collect();
    assert_eq!(
        reads,
        [
            "GET /api/metrics",
            "GET /api/events",
            "GET /api/profiles",
            "POST /api/metric-aggregates"
        ]
    );
    let days = clean["read_back"]["revenue_days"].as_array().unwrap();
    assert_eq!(days.len(), DAYS as usize, "{days:#?}");
    for day in days {
        assert_eq!(day["klaviyo_cents"], day["marketplacer_cents"], "{day}");
    }

    // One of each class.
    let unique = |mapping: &str, id: u64| format!("petmarket:{mapping}:{id}");
    week.plant(Drift::Subscribe {
        email: orders::email(NEVER_OPTED_IN),
        method: "API".into(),
        method_detail: None,
        custom_method_detail: Some("Marketplacer checkout".into()),
        at: None,
    });
    week.marketplacer.set_klaviyo_settings(mp::KlaviyoSettings {
        status: "CONNECTED".into(),
        ecommerce_tracking_enabled: true,
        ..mp::KlaviyoSettings::default()
    });
    week.marketplacer
        .set_webhook_enabled("SHIPMENT", false)
        .unwrap();
    week.send_stray_placed_order();
    week.plant(Drift::DeleteEvent {
        unique_id: unique("placed-order", orders::order_id(LOST_PLACED)),
    });
    week.plant(Drift::DeleteEvent {
        unique_id: unique("placed-order", orders::order_id(OLD)),
    });
    week.plant(Drift::DeleteEvent {
        unique_id: unique("refunded-order", orders::refund_id(LOST_REFUND)),
    });
    week.plant(Drift::ChangeEvent {
        unique_id: unique("placed-order", orders::order_id(WRONG_VALUE)),
        property: "$value".into(),
        value: json!((orders::total_cents(WRONG_VALUE) - 1_000) as f64 / 100.0),
    });
    week.plant(Drift::DeleteEvent {
        unique_id: unique("fulfilled-order", orders::shipment_id(LOST_SHIPMENT)),
    });
    week.plant(Drift::ChangeEvent {
        unique_id: unique("fulfilled-order", orders::shipment_id(NO_TRACKING)),
        property: "TrackingNumber".into(),
        value: Value::Null,
    });
    week.plant(Drift::LoseSubscription {
        email: orders::email(SUBSCRIPTION_LOST),
    });
    week.plant(Drift::DuplicateProfile {
        email: None,
        phone_number: Some(orders::phone(SECOND_PROFILE)),
        properties: Default::default(),
    });
    week.plant(Drift::ChangeProfile {
        email: Some(orders::email(DRIFTED)),
        profile_id: None,
        field: "properties.Marketplacer Last Order ID".into(),
        value: json!("1"),
    });
    // Not exceptions: Klaviyo owns consent after the first order.
    week.plant(Drift::Unsubscribe {
        email: orders::email(UNSUBSCRIBED),
        at: None,
    });
    week.plant(Drift::Suppress {
        email: orders::email(BOUNCED),
        reason: SuppressionReason::HardBounce,
        at: None,
    });

    // The report lists exactly those, ranked, with their money; compliance and systemic open
    // make it exit 8.
    let expected = planted();
    let subscriptions_before = week.klaviyo.accepted().subscriptions.len();
    let writes_before = week.writes();
    let (code, report) = week.reconcile(&["--report-only"]);
    assert_eq!(week.writes(), writes_before, "reading back never writes");
    let keys = |all: &[(Class, String, i64)]| -> Vec<(String, String)> {
        all.iter()
            .map(|(c, k, _)| (c.name().to_owned(), k.clone()))
            .collect()
    };
    assert_eq!(open(&report), keys(&expected), "{:#}", report["read_back"]);
    for (class, key, money) in &expected {
        assert_eq!(money_of(&report, key), *money, "{class:?} {key}");
    }
    assert_eq!(code, Some(8), "{:#}", report["read_back"]);
    assert_eq!(report["read_back"]["fails"], true);
    assert_eq!(
        report["findings"]["requeued_from_klaviyo"], 0,
        "reporting only"
    );

    // A repair run sends the lost events again with their own keys, and nothing else.
    let (code, repaired) = week.reconcile(&[]);
    assert_eq!(code, Some(8), "{:#}", repaired["read_back"]);
    assert_eq!(
        repaired["findings"]["requeued_from_klaviyo"], 3,
        "{repaired:#}"
    );
    let by_id = week.klaviyo.accepted().submissions_by_unique_id();
    for id in [
        unique("placed-order", orders::order_id(LOST_PLACED)),
        unique("fulfilled-order", orders::shipment_id(LOST_SHIPMENT)),
        unique("refunded-order", orders::refund_id(LOST_REFUND)),
    ] {
        assert_eq!(by_id.get(&id), Some(&2), "{id}: sent, deleted, sent again");
    }
    assert_eq!(
        by_id.get(&unique("placed-order", orders::order_id(OLD))),
        Some(&1),
        "an order outside the window is not sent by this window's repair"
    );
    assert_eq!(
        week.klaviyo.accepted().subscriptions.len(),
        subscriptions_before,
        "consent is never repaired"
    );
    assert_eq!(
        week.consent(&orders::email(UNSUBSCRIBED))["consent"],
        "UNSUBSCRIBED"
    );
    assert_eq!(
        week.consent(&orders::email(BOUNCED))["suppression"][0]["reason"],
        "HARD_BOUNCE"
    );

    // The next reconcile finds only what a person has to fix.
    let (code, after) = week.reconcile(&["--report-only"]);
    let left: Vec<(Class, String, i64)> = expected
        .into_iter()
        .filter(|(class, _, _)| !class.repaired_automatically())
        .collect();
    assert_eq!(left.len(), Class::ALL.len() - 3);
    assert_eq!(open(&after), keys(&left), "{:#}", after["read_back"]);
    assert_eq!(code, Some(8));

    week.0.shutdown();
}
