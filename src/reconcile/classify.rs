//! Comparing what Klaviyo holds with what the orders imply: one [`Discrepancy`] per finding,
//! ranked (see [`super::impact`] for the classes, their tiers and the money at stake).
//!
//! A pure function of what was read: the expected side ([`Expected`], from the sweep), what
//! Klaviyo holds ([`Held`]), what the store knows of each expectation ([`Evidence`]: when
//! Klaviyo accepted it, whether an opt-in was recorded) and the rules ([`Rules`]). Reading is
//! elsewhere ([`super::readback`]), so every class is tested here by planting it in the inputs.
//!
//! What is never a finding, by design:
//! - an event that is on its way (queued), or that Klaviyo accepted less than the settle delay
//!   ago: Klaviyo answers 202 before it processes an event, so "not there yet" is not "lost";
//! - a person who unsubscribed, or was suppressed, after our opt-in: Klaviyo owns consent after
//!   the first order, and a later opt-out must never be "repaired";
//! - a revenue difference that per-record findings explain: a day short by a missing Placed
//!   Order is that Placed Order, found once. A revenue gap is what no record explains (a
//!   second sender, events from elsewhere).

use super::WebhookFinding;
use super::expect::{ExpectedEvent, ExpectedPerson, Kind, Sent, millis, to_minor};
use super::impact::{Class, Discrepancy, RevenueDay, rank, stake};
use crate::klaviyo::read::{DailyTotal, Event, Metric, Profile};
use serde_json::Value as Json;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// What the window's orders say Klaviyo should hold.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    pub events: Vec<ExpectedEvent>,
    pub people: Vec<ExpectedPerson>,
}

/// What Klaviyo holds, as read.
#[derive(Debug, Clone, Default)]
pub struct Held {
    pub metrics: Vec<Metric>,
    /// Events of our metrics: the scans, and the lookups by profile.
    pub events: Vec<Event>,
    /// The profiles of the people expected, by email and by phone.
    pub profiles: Vec<Profile>,
    /// Klaviyo's daily totals of our Placed Order metric over the window; empty when not read.
    pub totals: Vec<DailyTotal>,
}

/// What the store knows of the expected side.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    /// When Klaviyo last accepted each expected event, by its key.
    pub accepted_at: HashMap<String, i64>,
    /// When an opt-in was first recorded as accepted, by the person's email.
    pub consent_at: HashMap<String, i64>,
    /// The newest profile version applied (an RFC 3339 time) and when, by email.
    pub applied: HashMap<String, (String, i64)>,
}

/// What the comparison is judged by.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The metric names of the events checked.
    pub metrics: BTreeMap<Kind, String>,
    /// Every metric name the mappings use (a second sender of any is found).
    pub all_metric_names: Vec<String>,
    /// Now, and the window's bounds (ms).
    pub now: i64,
    pub window: (i64, i64),
    pub settle_ms: i64,
    pub flow_window_ms: i64,
    pub tolerance_percent: f64,
    pub timezone: chrono_tz::Tz,
    /// The marketplace of an event that names none.
    pub default_marketplace: String,
    /// Currency by marketplace, and for any other.
    pub currencies: BTreeMap<String, String>,
    pub default_currency: String,
    /// `custom_source`s our subscriptions are sent with: how Klaviyo's consent names us.
    pub consent_sources: Vec<String>,
    /// The sweep's webhook findings.
    pub webhooks: Vec<WebhookFinding>,
    /// Marketplacer's own Klaviyo e-commerce tracking is on (the sweep read it).
    pub native_tracking: bool,
    /// The marketplace the sweep read.
    pub marketplace: Option<String>,
}

impl Rules {
    fn currency_of(&self, marketplace: &str) -> &str {
        self.currencies
            .get(marketplace)
            .unwrap_or(&self.default_currency)
    }

    fn day_of(&self, at: i64) -> String {
        chrono::DateTime::from_timestamp_millis(at)
            .map(|t| {
                t.with_timezone(&self.timezone)
                    .format("%Y-%m-%d")
                    .to_string()
            })
            .unwrap_or_default()
    }

    fn in_window(&self, at: i64) -> bool {
        at >= self.window.0 && at < self.window.1
    }
}

/// What the comparison found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Classified {
    /// Ranked.
    pub discrepancies: Vec<Discrepancy>,
    pub revenue: Vec<RevenueDay>,
    /// What could not be compared, and why.
    pub notes: Vec<String>,
}

/// The comparison.
pub fn classify(
    expected: &Expected,
    held: &Held,
    evidence: &Evidence,
    rules: &Rules,
) -> Classified {
    let mut out = Classified::default();
    let ours = Ours::of(held, rules);
    let aov = average_orders(expected);
    let mut matched: HashSet<&str> = HashSet::new();
    let mut found_refunds: Vec<&ExpectedEvent> = Vec::new();
    let (mut queued, mut settling) = (0u64, 0u64);

    for e in &expected.events {
        let flow_live = ours.flow_live(e.kind);
        let flow_on = ours.flow_on(e, rules);
        let aov = aov.get(&e.marketplace).copied().unwrap_or(0);
        let base = |class: Class, record: &str| Discrepancy {
            class,
            key: format!("{}:{}:{record}", class.name(), e.marketplace),
            marketplace: Some(e.marketplace.clone()),
            order_id: e.order_id.clone(),
            person: e.person.clone(),
            profile_ids: vec![],
            event_ids: vec![],
            money_cents: 0,
            currency: e.currency.clone(),
            flow_live,
            affected: 1,
            happened_at: e.at,
            detail: String::new(),
            action: String::new(),
        };
        if let Some(event) = ours.find(e) {
            matched.insert(event.id.as_str());
            match e.kind {
                Kind::PlacedOrder => {
                    let currency = e.currency.as_deref().unwrap_or("");
                    if let (Some(want), Some(got)) =
                        (e.value_cents, event.value().map(|v| to_minor(v, currency)))
                        && (got - want).abs() > 1
                    {
                        let mut d = base(Class::WrongOrderValue, &e.record());
                        d.profile_ids = event.profile_id.iter().cloned().collect();
                        d.event_ids = vec![event.id.clone()];
                        d.money_cents = stake(got - want, false, aov);
                        d.detail = format!(
                            "Klaviyo's Placed Order for order {} is worth {} {currency}, the order {} {currency}",
                            e.order_id.as_deref().unwrap_or("?"),
                            major(got, currency),
                            major(want, currency)
                        );
                        d.action =
                            "Klaviyo keeps the first event of a unique_id, so resending changes \
                                    nothing: find what sent this value (a second sender, an edited \
                                    event) and correct the revenue report by hand"
                                .into();
                        out.discrepancies.push(d);
                    }
                }
                Kind::FulfilledOrder => {
                    if let Some(want) = &e.tracking
                        && event.property("TrackingNumber").as_deref() != Some(want.as_str())
                    {
                        let mut d = base(Class::TrackingMissing, &e.record());
                        d.profile_ids = event.profile_id.iter().cloned().collect();
                        d.event_ids = vec![event.id.clone()];
                        d.money_cents = stake(0, flow_on, aov);
                        d.detail = format!(
                            "the Fulfilled Order of shipment {} carries tracking number {}, the shipment {want}",
                            e.record(),
                            event
                                .property("TrackingNumber")
                                .map_or("none".into(), |t| format!("`{t}`"))
                        );
                        d.action = "Klaviyo keeps the first event of a unique_id, so resending changes \
                                    nothing: tell the customer their tracking number, and check the \
                                    fulfilled-order mapping reads `trackingNumber`"
                            .into();
                        out.discrepancies.push(d);
                    }
                }
                Kind::RefundedOrder | Kind::CancelledOrder => found_refunds.push(e),
            }
            continue;
        }
        // Not in Klaviyo: lost, or not there yet.
        match e.sent {
            Sent::Queued | Sent::Unknown => {
                queued += 1;
                continue;
            }
            Sent::Accepted | Sent::Missing => {}
        }
        let young = |at: Option<i64>| at.is_some_and(|at| at > rules.now - rules.settle_ms);
        if young(e.at)
            || (e.sent == Sent::Accepted && young(evidence.accepted_at.get(&e.key).copied()))
        {
            settling += 1;
            continue;
        }
        let accepted = match (e.sent, evidence.accepted_at.get(&e.key)) {
            (Sent::Accepted, Some(at)) => format!(
                "Klaviyo accepted it at {} and does not hold it",
                instant(*at)
            ),
            _ => "it never reached Klaviyo".to_owned(),
        };
        let resend = "queued again with its own key by `reconcile` (not with --report-only); \
                      Klaviyo keeps one event per key";
        let d = match e.kind {
            Kind::PlacedOrder => {
                let mut d = base(Class::MissingPlacedOrder, &e.record());
                d.money_cents = stake(e.value_cents.unwrap_or(0), flow_on, aov);
                d.detail = format!(
                    "no Placed Order for order {} ({}): {accepted}; its revenue and CLV are missing{}",
                    e.order_id.as_deref().unwrap_or("?"),
                    money(e.value_cents, e.currency.as_deref()),
                    if flow_on {
                        ", and a live flow never sent its message"
                    } else {
                        ""
                    }
                );
                d
            }
            Kind::FulfilledOrder => {
                let mut d = base(Class::MissingFulfilledOrder, &e.record());
                d.money_cents = stake(0, flow_on, aov);
                d.detail = format!(
                    "no Fulfilled Order for shipment {} of order {}: {accepted}; the customer \
                     got no shipping message",
                    e.record(),
                    e.order_id.as_deref().unwrap_or("?")
                );
                d
            }
            Kind::RefundedOrder | Kind::CancelledOrder => {
                let mut d = base(Class::MissingRefund, &e.record());
                d.money_cents = stake(e.value_cents.unwrap_or(0), flow_on, aov);
                d.detail = format!(
                    "no {} for refund {} of order {} ({}): {accepted}; Klaviyo's revenue and CLV \
                     are overstated",
                    e.metric,
                    e.record(),
                    e.order_id.as_deref().unwrap_or("?"),
                    money(e.value_cents, e.currency.as_deref())
                );
                d
            }
        };
        out.discrepancies.push(Discrepancy {
            action: resend.into(),
            ..d
        });
    }

    // A refund Klaviyo holds whose order it has no Placed Order for, when this run does not
    // expect that Placed Order itself (then the missing Placed Order is the finding).
    let expected_placed: HashSet<(&str, &str)> = expected
        .events
        .iter()
        .filter(|e| e.kind == Kind::PlacedOrder)
        .filter_map(|e| Some((e.marketplace.as_str(), e.order_id.as_deref()?)))
        .collect();
    for e in found_refunds {
        let Some(order) = e.order_id.as_deref() else {
            continue;
        };
        if ours.has_placed(&e.marketplace, order)
            || expected_placed.contains(&(e.marketplace.as_str(), order))
        {
            continue;
        }
        let event = ours.find(e).expect("found before");
        out.discrepancies.push(Discrepancy {
            class: Class::OrphanedRefund,
            key: format!(
                "{}:{}:{}",
                Class::OrphanedRefund.name(),
                e.marketplace,
                e.record()
            ),
            marketplace: Some(e.marketplace.clone()),
            order_id: e.order_id.clone(),
            person: e.person.clone(),
            profile_ids: event.profile_id.iter().cloned().collect(),
            event_ids: vec![event.id.clone()],
            money_cents: stake(e.value_cents.unwrap_or(0), false, 0),
            currency: e.currency.clone(),
            flow_live: false,
            affected: 1,
            happened_at: e.at,
            detail: format!(
                "Klaviyo holds the {} of refund {} but no Placed Order for order {order}: the \
                 refund does not count in CLV",
                e.metric,
                e.record()
            ),
            action: format!(
                "run `marketsync reconcile --since` over the day order {order} was paid, which \
                 sends its Placed Order with its own key"
            ),
        });
    }

    revenue(expected, &ours, &matched, rules, &mut out);
    cross_check(held, &ours, rules, &mut out);
    double_source(expected, held, &ours, rules, &mut out);
    webhooks(expected, &ours, &aov, rules, &mut out);
    people(expected, held, evidence, rules, &mut out);

    if queued > 0 {
        out.notes.push(format!(
            "{queued} expected event(s) are still queued to be sent: not checked in Klaviyo"
        ));
    }
    if settling > 0 {
        out.notes.push(format!(
            "{settling} event(s) reached Klaviyo within the settle delay: not yet expected to show"
        ));
    }
    rank(&mut out.discrepancies);
    out
}

/// Our metrics, and Klaviyo's events of them, indexed.
struct Ours<'h> {
    kinds: HashMap<&'h str, Kind>,
    flows: HashMap<Kind, bool>,
    by_key: HashMap<String, &'h Event>,
    /// Placed Orders by (marketplace, order), with their key or without.
    placed: HashMap<(String, String), Vec<&'h Event>>,
    placed_events: Vec<&'h Event>,
    default_marketplace: &'h str,
}

impl<'h> Ours<'h> {
    fn of(held: &'h Held, rules: &'h Rules) -> Ours<'h> {
        let mut kinds = HashMap::new();
        let mut flows = HashMap::new();
        for (kind, name) in &rules.metrics {
            for metric in held
                .metrics
                .iter()
                .filter(|m| &m.name == name && m.made_by_api())
            {
                kinds.insert(metric.id.as_str(), *kind);
                *flows.entry(*kind).or_insert(false) |= metric.flow_live();
            }
        }
        let mut ours = Ours {
            kinds,
            flows,
            by_key: HashMap::new(),
            placed: HashMap::new(),
            placed_events: Vec::new(),
            default_marketplace: &rules.default_marketplace,
        };
        let mut seen = HashSet::new();
        for event in &held.events {
            let Some(kind) = event
                .metric_id
                .as_deref()
                .and_then(|m| ours.kinds.get(m).copied())
            else {
                continue;
            };
            if !seen.insert(event.id.as_str()) {
                continue;
            }
            if let Some(key) = event.property("MarketsyncKey") {
                ours.by_key.entry(key).or_insert(event);
            }
            if kind == Kind::PlacedOrder {
                ours.placed_events.push(event);
                if let Some(order) = event.property("OrderId") {
                    ours.placed
                        .entry((ours.marketplace_of(event), order))
                        .or_default()
                        .push(event);
                }
            }
        }
        ours
    }

    fn marketplace_of(&self, event: &Event) -> String {
        event
            .property("Marketplace")
            .unwrap_or_else(|| self.default_marketplace.to_owned())
    }

    fn flow_live(&self, kind: Kind) -> bool {
        self.flows.get(&kind).copied().unwrap_or(false)
    }

    /// Whether a missing `e` costs a flow message: a live flow is triggered by its metric, and
    /// it is recent enough for the flow to have sent it.
    fn flow_on(&self, e: &ExpectedEvent, rules: &Rules) -> bool {
        self.flow_live(e.kind)
            && e.at
                .is_some_and(|at| rules.now - at <= rules.flow_window_ms)
    }

    /// The event Klaviyo holds for an expected one: by its key, or, for a Placed Order sent
    /// before events carried their key, by its order and marketplace.
    fn find(&self, e: &ExpectedEvent) -> Option<&'h Event> {
        if let Some(event) = self.by_key.get(&e.key) {
            return Some(event);
        }
        if e.kind != Kind::PlacedOrder {
            return None;
        }
        self.placed
            .get(&(e.marketplace.clone(), e.order_id.clone()?))?
            .iter()
            .find(|event| event.property("MarketsyncKey").is_none())
            .copied()
    }

    fn has_placed(&self, marketplace: &str, order: &str) -> bool {
        self.placed
            .contains_key(&(marketplace.to_owned(), order.to_owned()))
    }
}

/// The average Placed Order of each marketplace, in the window's orders.
fn average_orders(expected: &Expected) -> HashMap<String, i64> {
    let mut sums: HashMap<String, (i64, i64)> = HashMap::new();
    for e in expected
        .events
        .iter()
        .filter(|e| e.kind == Kind::PlacedOrder)
    {
        if let Some(value) = e.value_cents {
            let sum = sums.entry(e.marketplace.clone()).or_default();
            sum.0 += value;
            sum.1 += 1;
        }
    }
    sums.into_iter()
        .map(|(m, (sum, n))| (m, sum / n.max(1)))
        .collect()
}

/// Revenue per (day, marketplace) on both sides, and a gap where Klaviyo holds Placed Order
/// revenue that no order of the window explains.
fn revenue(
    expected: &Expected,
    ours: &Ours,
    matched: &HashSet<&str>,
    rules: &Rules,
    out: &mut Classified,
) {
    #[derive(Default)]
    struct Day {
        currency: String,
        orders: u64,
        marketplacer: i64,
        klaviyo: i64,
        unexplained: i64,
        extras: Vec<String>,
        unknown: u64,
    }
    let mut days: BTreeMap<(String, String), Day> = BTreeMap::new();
    for e in expected
        .events
        .iter()
        .filter(|e| e.kind == Kind::PlacedOrder)
    {
        let Some(at) = e.at.filter(|at| rules.in_window(*at)) else {
            continue;
        };
        let day = days
            .entry((e.marketplace.clone(), rules.day_of(at)))
            .or_default();
        day.orders += 1;
        day.marketplacer += e.value_cents.unwrap_or(0);
    }
    for event in &ours.placed_events {
        let Some(at) = event.datetime.filter(|at| rules.in_window(*at)) else {
            continue;
        };
        let marketplace = ours.marketplace_of(event);
        let currency = rules.currency_of(&marketplace).to_owned();
        let day = days.entry((marketplace, rules.day_of(at))).or_default();
        match event.value() {
            Some(value) => {
                let cents = to_minor(value, &currency);
                day.klaviyo += cents;
                if !matched.contains(event.id.as_str()) {
                    day.unexplained += cents;
                    day.extras.push(event.id.clone());
                }
            }
            None => day.unknown += 1,
        }
    }
    for ((marketplace, date), day) in days {
        let currency = if day.currency.is_empty() {
            rules.currency_of(&marketplace).to_owned()
        } else {
            day.currency
        };
        out.revenue.push(RevenueDay {
            marketplace: marketplace.clone(),
            day: date.clone(),
            currency: currency.clone(),
            orders: day.orders,
            marketplacer_cents: day.marketplacer,
            klaviyo_cents: day.klaviyo,
        });
        if day.unknown > 0 {
            out.notes.push(format!(
                "{marketplace} {date}: {} Placed Order(s) in Klaviyo give back no value \
                 (`$value`): the day's revenue is not compared",
                day.unknown
            ));
            continue;
        }
        let tolerance =
            day.orders as f64 + day.marketplacer as f64 * rules.tolerance_percent / 100.0;
        if (day.unexplained.abs() as f64) <= tolerance {
            continue;
        }
        out.discrepancies.push(Discrepancy {
            class: Class::RevenueGap,
            key: format!("{}:{marketplace}:{date}", Class::RevenueGap.name()),
            marketplace: Some(marketplace.clone()),
            order_id: None,
            person: None,
            profile_ids: vec![],
            event_ids: day.extras.clone(),
            money_cents: stake(day.unexplained, false, 0),
            currency: Some(currency.clone()),
            flow_live: false,
            affected: day.extras.len() as u64,
            happened_at: None,
            detail: format!(
                "on {date}, Klaviyo's Placed Order revenue for {marketplace} is {} {currency} against \
                 Marketplacer's {} {currency}; {} of it is in {} event(s) that match no paid order",
                major(day.klaviyo, &currency),
                major(day.marketplacer, &currency),
                major(day.unexplained, &currency),
                day.extras.len()
            ),
            action: "find what else sends Placed Order to this account (another integration, a \
                     script, a test) and stop it; the events it sent stay in Klaviyo's revenue"
                .into(),
        });
    }
}

/// Klaviyo's own daily totals against the events scanned: a difference means pages were
/// missed, or something wrote to the metric while it was read.
fn cross_check(held: &Held, ours: &Ours, rules: &Rules, out: &mut Classified) {
    if held.totals.is_empty() {
        return;
    }
    let mut scanned: BTreeMap<(String, String), (i64, u64)> = BTreeMap::new();
    for event in &ours.placed_events {
        let Some(at) = event.datetime.filter(|at| rules.in_window(*at)) else {
            continue;
        };
        let currency = rules.currency_of(&ours.marketplace_of(event)).to_owned();
        let Some(value) = event.value() else {
            return;
        };
        let entry = scanned
            .entry((rules.day_of(at), currency.clone()))
            .or_default();
        entry.0 += to_minor(value, &currency);
        entry.1 += 1;
    }
    let mut totals: BTreeMap<(String, String), (i64, u64)> = BTreeMap::new();
    for total in &held.totals {
        let currency = total
            .currency
            .clone()
            .unwrap_or_else(|| rules.default_currency.clone());
        let entry = totals
            .entry((total.day.clone(), currency.clone()))
            .or_default();
        entry.0 += to_minor(total.sum_value, &currency);
        entry.1 += total.count;
    }
    let keys: BTreeSet<&(String, String)> = scanned.keys().chain(totals.keys()).collect();
    for key in keys {
        let (day, currency) = key;
        let (scan, scan_count) = scanned.get(key).copied().unwrap_or_default();
        let (total, count) = totals.get(key).copied().unwrap_or_default();
        let tolerance =
            scan_count.max(count) as f64 + total.abs() as f64 * rules.tolerance_percent / 100.0;
        if ((total - scan).abs() as f64) <= tolerance && count == scan_count {
            continue;
        }
        out.discrepancies.push(Discrepancy {
            class: Class::RevenueGap,
            key: format!("{}:aggregates:{day}:{currency}", Class::RevenueGap.name()),
            marketplace: None,
            order_id: None,
            person: None,
            profile_ids: vec![],
            event_ids: vec![],
            money_cents: (total - scan).abs(),
            currency: Some(currency.clone()),
            flow_live: false,
            affected: count.abs_diff(scan_count),
            happened_at: None,
            detail: format!(
                "on {day}, Klaviyo's own total of Placed Order is {} {currency} in {count} event(s), \
                 the events read {} {currency} in {scan_count}: pages were missed or something \
                 wrote to the metric while it was read",
                major(total, currency),
                major(scan, currency)
            ),
            action: "run the reconciliation again; if it stays, look for another sender of the metric".into(),
        });
    }
}

/// A second sender of our metrics: two metrics of one of our names from different
/// integrations, or Marketplacer's own Klaviyo e-commerce tracking switched on. The second is
/// found even when Klaviyo shows one metric per name: two senders through the API share one
/// metric (reconciliation.md §0 item 4), and each order is counted once per sender.
fn double_source(
    expected: &Expected,
    held: &Held,
    ours: &Ours,
    rules: &Rules,
    out: &mut Classified,
) {
    // Whether a finding by name already carries the Placed Orders' revenue: then Marketplacer's
    // tracking (most likely that very second sender) is the same money, counted once.
    let mut placed_orders_priced = false;
    for name in &rules.all_metric_names {
        let same: Vec<&Metric> = held.metrics.iter().filter(|m| &m.name == name).collect();
        let integrations: BTreeSet<String> = same
            .iter()
            .map(|m| {
                m.integration
                    .clone()
                    .unwrap_or_else(|| "API".into())
                    .to_lowercase()
            })
            .collect();
        if integrations.len() < 2 {
            continue;
        }
        let kind = rules
            .metrics
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(k, _)| *k);
        let of_kind: Vec<&ExpectedEvent> = expected
            .events
            .iter()
            .filter(|e| Some(e.kind) == kind)
            .collect();
        let revenue: i64 = of_kind
            .iter()
            .filter(|e| e.kind == Kind::PlacedOrder)
            .filter_map(|e| e.value_cents)
            .sum();
        placed_orders_priced |= kind == Some(Kind::PlacedOrder);
        out.discrepancies.push(Discrepancy {
            class: Class::DoubleSource,
            key: format!("{}:{name}", Class::DoubleSource.name()),
            marketplace: rules.marketplace.clone(),
            order_id: None,
            person: None,
            profile_ids: vec![],
            event_ids: same.iter().map(|m| m.id.clone()).collect(),
            money_cents: stake(revenue, false, 0),
            currency: rules
                .marketplace
                .as_deref()
                .map(|m| rules.currency_of(m).to_owned()),
            flow_live: same.iter().any(|m| m.flow_live())
                || kind.is_some_and(|k| ours.flow_live(k)),
            affected: of_kind.len() as u64,
            happened_at: None,
            detail: format!(
                "Klaviyo has {} metrics named \"{name}\", from {}: each order is counted once per \
                 sender, and flows on either fire for it",
                same.len(),
                same.iter()
                    .map(|m| format!("{} ({})", m.integration.as_deref().unwrap_or("API"), m.id))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
            action: "switch off the other sender (Marketplacer's own Klaviyo e-commerce tracking, \
                     or another integration), or rename ours in settings.metrics"
                .into(),
        });
    }
    if rules.native_tracking {
        // Its events share our metric, so they are in the scan: a day whose revenue does not
        // add up may be them, and is only worth looking into once the tracking is off.
        out.notes.push(
            "Marketplacer's own Klaviyo tracking is on: its Placed Orders share our metric, so a \
             day's revenue gap may be them (switch it off before chasing a gap)"
                .into(),
        );
        let placed = rules.metrics.get(&Kind::PlacedOrder);
        let of_kind: Vec<&ExpectedEvent> = expected
            .events
            .iter()
            .filter(|e| e.kind == Kind::PlacedOrder)
            .collect();
        let revenue: i64 = if placed_orders_priced {
            0
        } else {
            of_kind.iter().filter_map(|e| e.value_cents).sum()
        };
        out.discrepancies.push(Discrepancy {
            class: Class::DoubleSource,
            key: format!("{}:marketplacer-tracking", Class::DoubleSource.name()),
            marketplace: rules.marketplace.clone(),
            order_id: None,
            person: None,
            profile_ids: vec![],
            event_ids: vec![],
            money_cents: stake(revenue, false, 0),
            currency: rules
                .marketplace
                .as_deref()
                .map(|m| rules.currency_of(m).to_owned()),
            flow_live: ours.flow_live(Kind::PlacedOrder),
            affected: of_kind.len() as u64,
            happened_at: None,
            detail: format!(
                "Marketplacer's own Klaviyo integration has e-commerce tracking on \
                 (klaviyoSettings.ecommerceTrackingEnabled): it sends its own Placed Order for \
                 every order, beside ours{}, so each order is counted twice and flows on it fire \
                 twice{}",
                placed
                    .map(|name| format!(" (\"{name}\")"))
                    .unwrap_or_default(),
                if placed_orders_priced {
                    "; the money at stake is on the double source found by the metric's name, \
                     which is likely this same sender"
                } else {
                    ""
                }
            ),
            action: "switch off e-commerce tracking in Marketplacer's Klaviyo settings (or, if \
                     its events are the ones to keep, stop ours: settings.metrics)"
                .into(),
        });
    }
}

/// The events a Marketplacer webhook type carries, as the default mappings read them: what is
/// lost while it is off.
fn carried_by(webhook: &str) -> &'static [Kind] {
    match webhook {
        "INVOICE" => &[Kind::PlacedOrder],
        "SHIPMENT" => &[Kind::FulfilledOrder],
        "REFUND_REQUEST" => &[Kind::RefundedOrder, Kind::CancelledOrder],
        _ => &[],
    }
}

/// A disabled or missing webhook, with the money its records of the window carry: each
/// record's own stake (a Placed Order's or refund's value, and a live flow's message), summed.
/// It is what each window loses while the webhook stays off and no reconciliation repairs it.
fn webhooks(
    expected: &Expected,
    ours: &Ours,
    aov: &HashMap<String, i64>,
    rules: &Rules,
    out: &mut Classified,
) {
    for finding in &rules.webhooks {
        let marketplace = rules.marketplace.clone().unwrap_or_else(|| "-".into());
        let kinds = carried_by(&finding.kind);
        let carried: Vec<&ExpectedEvent> = expected
            .events
            .iter()
            .filter(|e| kinds.contains(&e.kind))
            .collect();
        let at_stake: i64 = carried
            .iter()
            .map(|e| {
                let value = match e.kind {
                    Kind::FulfilledOrder => 0,
                    _ => e.value_cents.unwrap_or(0),
                };
                let aov = aov.get(&e.marketplace).copied().unwrap_or(0);
                stake(value, ours.flow_on(e, rules), aov)
            })
            .sum();
        let currency = rules
            .marketplace
            .as_deref()
            .map(|m| rules.currency_of(m).to_owned());
        let state = match &finding.id {
            Some(id) if finding.problem == "disabled" => format!(
                "the {} webhook {id} is disabled: nothing after its failure arrived",
                finding.kind
            ),
            _ => format!("no {} webhook is registered", finding.kind),
        };
        out.discrepancies.push(Discrepancy {
            class: Class::WebhookDisabled,
            key: format!(
                "{}:{marketplace}:{}",
                Class::WebhookDisabled.name(),
                finding.kind
            ),
            marketplace: rules.marketplace.clone(),
            order_id: None,
            person: None,
            profile_ids: vec![],
            event_ids: vec![],
            money_cents: at_stake,
            currency: currency.clone(),
            flow_live: kinds.iter().any(|k| ours.flow_live(*k)),
            affected: carried.len() as u64,
            happened_at: None,
            detail: format!(
                "{state}; {} record(s) of the window ride on it ({})",
                carried.len(),
                money(Some(at_stake), currency.as_deref())
            ),
            action: "fix the receiver, re-enable the webhook in Marketplacer (Configuration → \
                     Webhooks), and reconcile the whole time it was off"
                .into(),
        });
    }
}

/// Consent, duplicate profiles and attribute drift, per person.
fn people(
    expected: &Expected,
    held: &Held,
    evidence: &Evidence,
    rules: &Rules,
    out: &mut Classified,
) {
    let mut people: BTreeMap<String, ExpectedPerson> = expected
        .people
        .iter()
        .map(|p| (p.email.clone(), p.clone()))
        .collect();
    for person in expected.events.iter().filter_map(|e| e.person.as_ref()) {
        people
            .entry(person.clone())
            .or_insert_with(|| ExpectedPerson {
                email: person.clone(),
                ..ExpectedPerson::default()
            });
    }
    let mut by_email: HashMap<String, Vec<&Profile>> = HashMap::new();
    let mut by_phone: HashMap<&str, Vec<&Profile>> = HashMap::new();
    for profile in &held.profiles {
        if let Some(email) = &profile.email {
            by_email
                .entry(email.to_lowercase())
                .or_default()
                .push(profile);
        }
        if let Some(phone) = &profile.phone_number {
            by_phone.entry(phone.as_str()).or_default().push(profile);
        }
    }
    let settled = |at: i64| at <= rules.now - rules.settle_ms;
    for (email, person) in people {
        let own = by_email.get(&email).cloned().unwrap_or_default();
        let base = |class: Class, profiles: &[&Profile]| Discrepancy {
            class,
            key: format!("{}:email:{email}", class.name()),
            marketplace: rules.marketplace.clone(),
            order_id: None,
            person: Some(email.clone()),
            profile_ids: profiles.iter().map(|p| p.id.clone()).collect(),
            event_ids: vec![],
            money_cents: 0,
            currency: None,
            flow_live: false,
            affected: 1,
            happened_at: None,
            detail: String::new(),
            action: String::new(),
        };

        // Duplicates: the person's email and phone lead to more than one profile.
        let mut all: Vec<&Profile> = own.clone();
        if let Some(phone) = &person.phone {
            for profile in by_phone.get(phone.as_str()).into_iter().flatten() {
                if !all.iter().any(|p| p.id == profile.id) {
                    all.push(profile);
                }
            }
        }
        if all.len() > 1 {
            let mut d = base(Class::DuplicateProfile, &all);
            d.profile_ids.sort();
            d.detail = format!(
                "{} Klaviyo profiles for {email}{}: {}",
                all.len(),
                person
                    .phone
                    .as_deref()
                    .map(|p| format!(" and {p}"))
                    .unwrap_or_default(),
                d.profile_ids.join(", ")
            );
            d.action =
                "merge them in Klaviyo (Profiles → Merge), keeping the one with the orders; \
                        the history is split until then"
                    .into();
            out.discrepancies.push(d);
        }

        // Consent.
        let marketing: Vec<_> = own
            .iter()
            .filter_map(|p| p.email_marketing.as_ref())
            .collect();
        let consent_is = |word: &str| {
            marketing.iter().any(|m| {
                m.consent
                    .as_deref()
                    .is_some_and(|c| c.eq_ignore_ascii_case(word))
            })
        };
        let evidence_at = evidence.consent_at.get(&email).copied();
        let by_us = own.iter().any(|p| {
            p.email_marketing.as_ref().is_some_and(|m| {
                m.consent.as_deref() == Some("SUBSCRIBED")
                    && [&m.custom_method_detail, &m.method_detail]
                        .into_iter()
                        .flatten()
                        .any(|d| rules.consent_sources.iter().any(|s| s == d))
            })
        });
        if by_us && evidence_at.is_none() && person.opt_in.is_none() {
            let mut d = base(Class::SubscribedWithoutEvidence, &own);
            d.detail = format!(
                "Klaviyo says {email} was subscribed by marketsync (Marketplacer checkout), but the \
                 state file holds no opt-in of theirs, and no order of the window carried one"
            );
            d.action =
                "stop marketing to them until consent is shown: find where the subscription \
                        came from; never resubscribe without the order's explicit opt-in"
                    .into();
            out.discrepancies.push(d);
        }
        if let (Some(opt_in), Some(accepted)) = (&person.opt_in, evidence_at)
            && opt_in.sent == Sent::Accepted
            && settled(accepted)
            && !consent_is("SUBSCRIBED")
            && !consent_is("UNSUBSCRIBED")
        {
            let since = opt_in.at.unwrap_or(accepted);
            let opted_out_later = marketing.iter().any(|m| {
                m.suppressions
                    .iter()
                    .any(|s| s.at.is_none_or(|at| at >= since))
            });
            if !opted_out_later {
                let mut d = base(Class::ConsentMissed, &own);
                d.happened_at = opt_in.at;
                d.detail = format!(
                    "{email} opted in at checkout and Klaviyo accepted the subscription at {}, but \
                     Klaviyo says {}",
                    instant(accepted),
                    marketing
                        .iter()
                        .find_map(|m| m.consent.clone())
                        .unwrap_or_else(|| if own.is_empty() {
                            "it holds no profile for them".into()
                        } else {
                            "they were never subscribed".into()
                        })
                );
                d.action = "check the subscription in Klaviyo and subscribe them by hand with the \
                            order as evidence: consent is never repaired automatically"
                    .into();
                out.discrepancies.push(d);
            }
        }

        // Drift: the properties we own, once our newest update was applied and settled.
        let Some(update) = &person.profile else {
            continue;
        };
        let Some((applied, applied_at)) = evidence.applied.get(&email) else {
            continue;
        };
        let ours = update.version.as_deref().and_then(millis);
        if ours.is_none() || ours != millis(applied) || !settled(*applied_at) {
            continue;
        }
        let mut differences = Vec::new();
        for profile in &own {
            for (name, want) in &update.properties {
                let have = profile.properties.get(name);
                if !same(have, want) {
                    differences.push(format!(
                        "`{name}`: we sent {want}, profile {} has {}",
                        profile.id,
                        have.map_or("nothing".to_owned(), Json::to_string)
                    ));
                }
            }
        }
        if !differences.is_empty() {
            let mut d = base(Class::AttributeDrift, &own);
            d.affected = 1;
            d.detail = differences.join("; ");
            d.action = "something else writes these properties (a form, another integration, an \
                        edit by hand): they are marketsync's, set from the latest order; find the \
                        other writer, and the next order sets them again"
                .into();
            out.discrepancies.push(d);
        }
    }
}

/// Whether Klaviyo's value is the one we sent: equal, or the same scalar written differently
/// (`5001` for `"5001"`).
fn same(have: Option<&Json>, want: &Json) -> bool {
    let Some(have) = have else {
        return false;
    };
    if have == want {
        return true;
    }
    let scalar = |v: &Json| match v {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        Json::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    scalar(have).is_some() && scalar(have) == scalar(want)
}

fn instant(at: i64) -> String {
    chrono::DateTime::from_timestamp_millis(at)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| at.to_string())
}

/// Minor units as major, for a person to read (`155.30`).
fn major(cents: i64, currency: &str) -> String {
    let exponent = iso_currency::Currency::from_code(&currency.to_ascii_uppercase())
        .and_then(|c| c.exponent())
        .unwrap_or(2) as usize;
    if exponent == 0 {
        return cents.to_string();
    }
    let scale = 10i64.pow(exponent as u32);
    let sign = if cents < 0 { "-" } else { "" };
    format!(
        "{sign}{}.{:0width$}",
        cents.abs() / scale,
        cents.abs() % scale,
        width = exponent
    )
}

fn money(cents: Option<i64>, currency: Option<&str>) -> String {
    match (cents, currency) {
        (Some(cents), Some(currency)) => format!("{} {currency}", major(cents, currency)),
        _ => "value unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::klaviyo::read::{EmailMarketing, Flow, Suppression};
    use crate::reconcile::expect::{OptIn, ProfileUpdate};
    use serde_json::json;

    const HOUR: i64 = 3_600_000;
    /// 2026-03-20T00:00:00Z: the window is that day, and now is an hour after it.
    const DAY: i64 = 1_773_964_800_000;

    fn at(hour: i64) -> i64 {
        DAY + hour * HOUR
    }

    fn expected_event(
        kind: Kind,
        key: &str,
        order: &str,
        value: Option<i64>,
        hour: i64,
        who: &str,
    ) -> ExpectedEvent {
        let mapping = match kind {
            Kind::PlacedOrder => "placed-order",
            Kind::FulfilledOrder => "fulfilled-order",
            Kind::RefundedOrder => "refunded-order",
            Kind::CancelledOrder => "cancelled-order",
        };
        ExpectedEvent {
            kind,
            metric: names()[&kind].clone(),
            key: format!("petmarket:{mapping}:{key}"),
            mapping: mapping.into(),
            endpoint: "/api/events".into(),
            marketplace: "petmarket".into(),
            order_id: Some(order.into()),
            value_cents: value,
            currency: Some("AUD".into()),
            at: Some(at(hour)),
            person: Some(who.into()),
            tracking: None,
            sent: Sent::Accepted,
        }
    }

    fn names() -> BTreeMap<Kind, String> {
        BTreeMap::from([
            (Kind::PlacedOrder, "Placed Order".to_owned()),
            (Kind::FulfilledOrder, "Fulfilled Order".to_owned()),
            (Kind::RefundedOrder, "Refunded Order".to_owned()),
            (Kind::CancelledOrder, "Cancelled Order".to_owned()),
        ])
    }

    fn metric(id: &str, name: &str, integration: &str, live: bool) -> Metric {
        Metric {
            id: id.into(),
            name: name.into(),
            integration: Some(integration.into()),
            flows: if live {
                vec![Flow {
                    id: format!("F{id}"),
                    status: Some("live".into()),
                    ..Flow::default()
                }]
            } else {
                vec![]
            },
        }
    }

    /// The event Klaviyo holds for an expected one, as our mapping sent it.
    fn held_event(e: &ExpectedEvent, metric: &str) -> Event {
        let mut properties = serde_json::Map::new();
        properties.insert("MarketsyncKey".into(), json!(e.key));
        properties.insert("OrderId".into(), json!(e.order_id));
        properties.insert("Marketplace".into(), json!("petmarket"));
        if let Some(value) = e.value_cents {
            properties.insert("$value".into(), json!(value as f64 / 100.0));
        }
        if let Some(tracking) = &e.tracking {
            properties.insert("TrackingNumber".into(), json!(tracking));
        }
        Event {
            id: format!("E-{}", e.key),
            metric_id: Some(metric.into()),
            profile_id: Some(format!("P-{}", e.person.as_deref().unwrap_or(""))),
            datetime: e.at,
            properties,
            email: e.person.clone(),
            phone_number: None,
        }
    }

    fn profile(
        email: &str,
        phone: Option<&str>,
        consent: &str,
        source: Option<&str>,
        last_order: &str,
    ) -> Profile {
        Profile {
            id: format!("P-{email}"),
            email: Some(email.into()),
            phone_number: phone.map(str::to_owned),
            external_id: None,
            properties: json!({"Marketplacer Last Order ID": last_order})
                .as_object()
                .unwrap()
                .clone(),
            email_marketing: Some(EmailMarketing {
                consent: Some(consent.into()),
                can_receive_email_marketing: Some(consent == "SUBSCRIBED"),
                consent_timestamp: None,
                method: source.map(|_| "API".to_owned()),
                method_detail: None,
                custom_method_detail: source.map(str::to_owned),
                suppressions: vec![],
            }),
        }
    }

    struct World {
        expected: Expected,
        held: Held,
        evidence: Evidence,
        rules: Rules,
    }

    const ZOE: &str = "zoe@example.com";
    const ANN: &str = "ann@example.com";

    /// A clean day: two paid orders (one shipped, one partly refunded) and a refund of an
    /// order placed the week before, all in Klaviyo as sent; Zoe opted in, Ann did not.
    fn world() -> World {
        let mut shipped = expected_event(Kind::FulfilledOrder, "6001", "5001", None, 12, ZOE);
        shipped.tracking = Some("33QJQ5001".into());
        let events = vec![
            expected_event(Kind::PlacedOrder, "5001", "5001", Some(15_530), 10, ZOE),
            expected_event(Kind::PlacedOrder, "5002", "5002", Some(20_690), 11, ANN),
            shipped,
            expected_event(Kind::RefundedOrder, "7002", "5002", Some(2_450), 13, ANN),
            expected_event(Kind::RefundedOrder, "7003", "4000", Some(1_000), 14, ZOE),
        ];
        let update = |email: &str, order: &str, hour: i64| ProfileUpdate {
            mapping: "profile".into(),
            coalesce_key: Some(email.into()),
            version: Some(instant(at(hour))),
            properties: json!({"Marketplacer Last Order ID": order})
                .as_object()
                .unwrap()
                .clone(),
        };
        let people = vec![
            ExpectedPerson {
                email: ZOE.into(),
                phone: Some("+61412345678".into()),
                opt_in: Some(OptIn {
                    once_key: Some(format!("petmarket:{ZOE}")),
                    at: Some(at(10)),
                    source: Some("Marketplacer checkout".into()),
                    sent: Sent::Accepted,
                }),
                profile: Some(update(ZOE, "5001", 10)),
            },
            ExpectedPerson {
                email: ANN.into(),
                phone: None,
                opt_in: None,
                profile: Some(update(ANN, "5002", 11)),
            },
        ];
        let metrics = vec![
            metric("PO", "Placed Order", "API", true),
            metric("FO", "Fulfilled Order", "API", true),
            metric("RO", "Refunded Order", "API", false),
            metric("CO", "Cancelled Order", "API", false),
        ];
        let id = |kind: Kind| match kind {
            Kind::PlacedOrder => "PO",
            Kind::FulfilledOrder => "FO",
            Kind::RefundedOrder => "RO",
            Kind::CancelledOrder => "CO",
        };
        let mut held_events: Vec<Event> =
            events.iter().map(|e| held_event(e, id(e.kind))).collect();
        // Order 4000 was placed the week before; its Placed Order was read by profile.
        let mut earlier =
            expected_event(Kind::PlacedOrder, "4000", "4000", Some(1_000), -7 * 24, ZOE);
        earlier.at = Some(at(-7 * 24));
        held_events.push(held_event(&earlier, "PO"));
        let mut evidence = Evidence::default();
        for e in &events {
            evidence
                .accepted_at
                .insert(e.key.clone(), e.at.unwrap() + 60_000);
        }
        evidence.consent_at.insert(ZOE.into(), at(10) + 60_000);
        evidence
            .applied
            .insert(ZOE.into(), (instant(at(10)), at(10) + 60_000));
        evidence
            .applied
            .insert(ANN.into(), (instant(at(11)), at(11) + 60_000));
        World {
            held: Held {
                metrics,
                events: held_events,
                profiles: vec![
                    profile(
                        ZOE,
                        Some("+61412345678"),
                        "SUBSCRIBED",
                        Some("Marketplacer checkout"),
                        "5001",
                    ),
                    profile(ANN, None, "NEVER_SUBSCRIBED", None, "5002"),
                ],
                totals: vec![DailyTotal {
                    day: "2026-03-20".into(),
                    currency: Some("AUD".into()),
                    sum_value: 362.2,
                    count: 2,
                }],
            },
            expected: Expected { events, people },
            evidence,
            rules: Rules {
                metrics: names(),
                all_metric_names: vec![
                    "Cancelled Order".into(),
                    "Fulfilled Order".into(),
                    "Ordered Product".into(),
                    "Placed Order".into(),
                    "Refunded Order".into(),
                ],
                now: at(25),
                window: (DAY, at(24)),
                settle_ms: 15 * 60_000,
                flow_window_ms: 48 * HOUR,
                tolerance_percent: 0.0,
                timezone: chrono_tz::UTC,
                default_marketplace: "petmarket".into(),
                currencies: BTreeMap::new(),
                default_currency: "AUD".into(),
                consent_sources: vec!["Marketplacer checkout".into()],
                webhooks: vec![],
                native_tracking: false,
                marketplace: Some("petmarket".into()),
            },
        }
    }

    impl World {
        fn classify(&self) -> Classified {
            classify(&self.expected, &self.held, &self.evidence, &self.rules)
        }

        fn drop_event(&mut self, key: &str) {
            self.held
                .events
                .retain(|e| e.property("MarketsyncKey").as_deref() != Some(key));
        }

        fn event(&mut self, key: &str) -> &mut Event {
            self.held
                .events
                .iter_mut()
                .find(|e| e.property("MarketsyncKey").as_deref() == Some(key))
                .unwrap()
        }

        fn profile(&mut self, email: &str) -> &mut Profile {
            self.held
                .profiles
                .iter_mut()
                .find(|p| p.email.as_deref() == Some(email))
                .unwrap()
        }

        /// Klaviyo's own daily total, as it would be for what it holds.
        fn total(&mut self, sum_value: f64, count: u64) {
            self.held.totals[0].sum_value = sum_value;
            self.held.totals[0].count = count;
        }
    }

    /// The one finding, after checking it is the only one.
    fn only(found: &Classified, class: Class) -> Discrepancy {
        let classes: Vec<(Class, &str)> = found
            .discrepancies
            .iter()
            .map(|d| (d.class, d.key.as_str()))
            .collect();
        assert_eq!(found.discrepancies.len(), 1, "{classes:?}");
        assert_eq!(found.discrepancies[0].class, class, "{classes:?}");
        found.discrepancies[0].clone()
    }

    #[test]
    fn a_clean_day_finds_nothing_and_both_sides_of_its_revenue_agree() {
        let found = world().classify();
        assert_eq!(found.discrepancies, vec![], "{:#?}", found.discrepancies);
        assert_eq!(
            found.revenue,
            vec![RevenueDay {
                marketplace: "petmarket".into(),
                day: "2026-03-20".into(),
                currency: "AUD".into(),
                orders: 2,
                marketplacer_cents: 36_220,
                klaviyo_cents: 36_220,
            }]
        );
        assert!(found.notes.is_empty(), "{:?}", found.notes);
    }

    #[test]
    fn a_subscription_in_our_name_without_evidence_is_compliance() {
        let mut w = world();
        w.profile(ANN).email_marketing = profile(
            ANN,
            None,
            "SUBSCRIBED",
            Some("Marketplacer checkout"),
            "5002",
        )
        .email_marketing;
        let d = only(&w.classify(), Class::SubscribedWithoutEvidence);
        assert_eq!(d.key, "subscribed-without-evidence:email:ann@example.com");
        assert_eq!(d.profile_ids, ["P-ann@example.com"]);
    }

    #[test]
    fn a_subscription_from_elsewhere_is_klaviyos_business() {
        let mut w = world();
        w.profile(ANN).email_marketing =
            profile(ANN, None, "SUBSCRIBED", Some("footer form"), "5002").email_marketing;
        assert_eq!(w.classify().discrepancies, vec![]);
    }

    #[test]
    fn a_second_metric_of_our_name_from_another_integration_is_a_double_source() {
        let mut w = world();
        w.held
            .metrics
            .push(metric("XO", "Placed Order", "Marketplacer", false));
        let d = only(&w.classify(), Class::DoubleSource);
        assert_eq!(d.key, "double-source:Placed Order");
        assert_eq!(d.money_cents, 36_220, "the window's whole revenue");
        assert_eq!(d.affected, 2);
        assert!(d.flow_live);
    }

    #[test]
    fn a_second_metric_and_marketplacers_tracking_are_two_findings_and_one_stake() {
        let mut w = world();
        w.rules.native_tracking = true;
        w.held
            .metrics
            .push(metric("XO", "Placed Order", "Marketplacer", false));
        let found = w.classify();
        let double: Vec<&Discrepancy> = found
            .discrepancies
            .iter()
            .filter(|d| d.class == Class::DoubleSource)
            .collect();
        let keys: Vec<&str> = double.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "double-source:Placed Order",
                "double-source:marketplacer-tracking"
            ]
        );
        let money: i64 = double.iter().map(|d| d.money_cents).sum();
        assert_eq!(money, 36_220, "the window's revenue once, not twice");
        assert!(double[1].detail.contains("likely this same sender"));
        assert_eq!(
            double[1].affected, 2,
            "the orders it doubles are still named"
        );
    }

    #[test]
    fn marketplacers_own_tracking_switched_on_is_a_double_source_with_one_metric_a_name() {
        let mut w = world();
        w.rules.native_tracking = true;
        let d = only(&w.classify(), Class::DoubleSource);
        assert_eq!(d.key, "double-source:marketplacer-tracking");
        assert_eq!(d.money_cents, 36_220, "the window's whole revenue");
        assert_eq!(d.affected, 2);
        assert!(d.flow_live, "the post-purchase flow fires twice");
        assert!(
            d.detail.contains("ecommerceTrackingEnabled"),
            "{}",
            d.detail
        );
        let found = w.classify();
        assert!(
            found
                .notes
                .iter()
                .any(|n| n.contains("revenue gap may be them")),
            "{:?}",
            found.notes
        );
    }

    #[test]
    fn a_disabled_webhook_is_systemic() {
        let mut w = world();
        w.rules.webhooks.push(WebhookFinding {
            kind: "SHIPMENT".into(),
            id: Some("V2ViaG9vay0z".into()),
            problem: "disabled".into(),
        });
        let d = only(&w.classify(), Class::WebhookDisabled);
        assert_eq!(d.key, "webhook-disabled:petmarket:SHIPMENT");
        assert!(d.detail.contains("V2ViaG9vay0z"), "{}", d.detail);
        // What rides on it: the window's one shipment, whose message the live shipping flow
        // sends (1.71% of the average order, 181.10).
        assert_eq!((d.affected, d.money_cents, d.flow_live), (1, 310, true));
        // The Invoice webhook carries the Placed Orders: their value, and the flow's messages.
        let mut w = world();
        w.rules.webhooks.push(WebhookFinding {
            kind: "INVOICE".into(),
            id: None,
            problem: "missing".into(),
        });
        let d = only(&w.classify(), Class::WebhookDisabled);
        assert_eq!((d.affected, d.money_cents), (2, 36_220 + 2 * 310));
        assert!(d.detail.starts_with("no INVOICE webhook"), "{}", d.detail);
    }

    #[test]
    fn placed_order_revenue_no_order_explains_is_a_gap() {
        let mut w = world();
        let mut stray = held_event(
            &expected_event(Kind::PlacedOrder, "9999", "9999", Some(5_000), 15, ANN),
            "PO",
        );
        stray.properties.remove("MarketsyncKey");
        stray.id = "E-stray".into();
        w.held.events.push(stray);
        w.total(412.2, 3);
        let found = w.classify();
        let d = only(&found, Class::RevenueGap);
        assert_eq!(d.key, "revenue-gap:petmarket:2026-03-20");
        assert_eq!(d.money_cents, 5_000);
        assert_eq!(d.event_ids, ["E-stray"]);
        assert_eq!(
            found.revenue[0].klaviyo_cents - found.revenue[0].marketplacer_cents,
            5_000
        );
    }

    #[test]
    fn klaviyos_own_total_disagreeing_with_the_events_read_is_a_gap() {
        let mut w = world();
        w.total(400.0, 3);
        let d = only(&w.classify(), Class::RevenueGap);
        assert_eq!(d.key, "revenue-gap:aggregates:2026-03-20:AUD");
        assert_eq!(d.marketplace, None);
        assert_eq!(d.money_cents, 3_780);
    }

    #[test]
    fn a_missing_placed_order_counts_its_value_and_the_live_flows_message() {
        let mut w = world();
        w.drop_event("petmarket:placed-order:5001");
        w.total(206.9, 1);
        let found = w.classify();
        let d = only(&found, Class::MissingPlacedOrder);
        assert_eq!(d.key, "missing-placed-order:petmarket:5001");
        assert_eq!(d.order_id.as_deref(), Some("5001"));
        // 155.30, and 1.71% of the average order (181.10) for the post-purchase flow.
        assert_eq!(d.money_cents, 15_530 + 310);
        assert!(d.flow_live);
        assert!(
            d.detail.contains("accepted it at 2026-03-20T10:01:00Z"),
            "{}",
            d.detail
        );
        // The day's revenue is short by exactly that order, which explains it: no gap.
        assert_eq!(found.revenue[0].klaviyo_cents, 20_690);
    }

    #[test]
    fn a_missing_event_older_than_the_flow_window_costs_no_flow_message() {
        let mut w = world();
        w.rules.now = at(24 * 5);
        w.drop_event("petmarket:placed-order:5001");
        w.total(206.9, 1);
        let d = only(&w.classify(), Class::MissingPlacedOrder);
        assert_eq!(d.money_cents, 15_530);
    }

    #[test]
    fn events_on_their_way_or_settling_are_never_missing() {
        let mut w = world();
        w.drop_event("petmarket:placed-order:5001");
        w.drop_event("petmarket:fulfilled-order:6001");
        w.total(206.9, 1);
        // The Placed Order is still queued; the Fulfilled Order was accepted a minute ago.
        w.expected.events[0].sent = Sent::Queued;
        w.evidence.accepted_at.insert(
            "petmarket:fulfilled-order:6001".into(),
            w.rules.now - 60_000,
        );
        let found = w.classify();
        assert_eq!(found.discrepancies, vec![], "{:#?}", found.discrepancies);
        assert_eq!(found.notes.len(), 2, "{:?}", found.notes);
    }

    #[test]
    fn a_placed_order_sent_before_events_carried_their_key_is_found_by_its_order() {
        let mut w = world();
        w.event("petmarket:placed-order:5001")
            .properties
            .remove("MarketsyncKey");
        assert_eq!(w.classify().discrepancies, vec![]);
    }

    #[test]
    fn a_placed_order_of_another_value_is_wrong() {
        let mut w = world();
        w.event("petmarket:placed-order:5001")
            .properties
            .insert("$value".into(), json!(150.0));
        w.total(356.9, 2);
        let d = only(&w.classify(), Class::WrongOrderValue);
        assert_eq!(d.money_cents, 530);
        assert_eq!(d.event_ids, ["E-petmarket:placed-order:5001"]);
        assert!(d.detail.contains("150.00 AUD"), "{}", d.detail);
    }

    #[test]
    fn a_missing_fulfilled_order_is_found() {
        let mut w = world();
        w.drop_event("petmarket:fulfilled-order:6001");
        let d = only(&w.classify(), Class::MissingFulfilledOrder);
        assert_eq!(d.key, "missing-fulfilled-order:petmarket:6001");
        assert_eq!(d.money_cents, 310, "the shipping flow's message");
    }

    #[test]
    fn a_fulfilled_order_without_its_tracking_number_is_found() {
        let mut w = world();
        w.event("petmarket:fulfilled-order:6001")
            .properties
            .insert("TrackingNumber".into(), json!(""));
        let d = only(&w.classify(), Class::TrackingMissing);
        assert_eq!(d.key, "tracking-missing:petmarket:6001");
        assert!(d.detail.contains("33QJQ5001"), "{}", d.detail);
        // A shipment without a tracking number expects none.
        let mut w = world();
        w.expected.events[2].tracking = None;
        w.event("petmarket:fulfilled-order:6001")
            .properties
            .remove("TrackingNumber");
        assert_eq!(w.classify().discrepancies, vec![]);
    }

    #[test]
    fn a_missing_refund_is_found_with_its_value() {
        let mut w = world();
        w.drop_event("petmarket:refunded-order:7002");
        let d = only(&w.classify(), Class::MissingRefund);
        assert_eq!(d.key, "missing-refund:petmarket:7002");
        assert_eq!(d.money_cents, 2_450);
    }

    #[test]
    fn a_refund_whose_order_klaviyo_has_no_placed_order_of_is_orphaned() {
        let mut w = world();
        w.held.events.retain(|e| {
            e.property("OrderId").as_deref() != Some("4000") || e.metric_id.as_deref() != Some("PO")
        });
        let d = only(&w.classify(), Class::OrphanedRefund);
        assert_eq!(d.key, "orphaned-refund:petmarket:7003");
        assert_eq!(d.money_cents, 1_000);
        // An order of the window whose Placed Order is missing is that missing Placed Order.
        let mut w = world();
        w.drop_event("petmarket:placed-order:5002");
        w.total(155.3, 1);
        only(&w.classify(), Class::MissingPlacedOrder);
    }

    #[test]
    fn an_opt_in_klaviyo_never_subscribed_is_consent_missed() {
        let mut w = world();
        w.profile(ZOE).email_marketing.as_mut().unwrap().consent = Some("NEVER_SUBSCRIBED".into());
        let d = only(&w.classify(), Class::ConsentMissed);
        assert_eq!(d.key, "consent-missed:email:zoe@example.com");
        assert!(
            d.action.contains("never repaired automatically"),
            "{}",
            d.action
        );
    }

    #[test]
    fn an_unsubscribe_or_a_suppression_after_our_opt_in_is_never_a_finding() {
        let mut w = world();
        let marketing = w.profile(ZOE).email_marketing.as_mut().unwrap();
        marketing.consent = Some("UNSUBSCRIBED".into());
        marketing.suppressions = vec![Suppression {
            reason: "UNSUBSCRIBE".into(),
            at: Some(at(20)),
        }];
        assert_eq!(w.classify().discrepancies, vec![]);
        let mut w = world();
        let marketing = w.profile(ZOE).email_marketing.as_mut().unwrap();
        marketing.consent = Some("NEVER_SUBSCRIBED".into());
        marketing.suppressions = vec![Suppression {
            reason: "HARD_BOUNCE".into(),
            at: Some(at(20)),
        }];
        assert_eq!(w.classify().discrepancies, vec![]);
        // A suppression from before the opt-in does not explain it away.
        w.profile(ZOE)
            .email_marketing
            .as_mut()
            .unwrap()
            .suppressions[0]
            .at = Some(at(-48));
        only(&w.classify(), Class::ConsentMissed);
    }

    #[test]
    fn two_profiles_for_one_person_are_duplicates() {
        let mut w = world();
        let mut second = profile(
            "zoe.k@example.com",
            Some("+61412345678"),
            "NEVER_SUBSCRIBED",
            None,
            "",
        );
        second.id = "P-second".into();
        w.held.profiles.push(second);
        let d = only(&w.classify(), Class::DuplicateProfile);
        assert_eq!(d.key, "duplicate-profile:email:zoe@example.com");
        assert_eq!(d.profile_ids, ["P-second", "P-zoe@example.com"]);
    }

    #[test]
    fn a_property_we_own_changed_in_klaviyo_is_drift_unless_a_newer_update_was_applied() {
        let mut w = world();
        w.profile(ANN)
            .properties
            .insert("Marketplacer Last Order ID".into(), json!("1234"));
        let d = only(&w.classify(), Class::AttributeDrift);
        assert_eq!(d.key, "attribute-drift:email:ann@example.com");
        assert!(d.detail.contains("\"1234\""), "{}", d.detail);
        // A newer order's update was applied since: Klaviyo rightly holds that one.
        w.evidence
            .applied
            .insert(ANN.into(), (instant(at(23)), at(23)));
        assert_eq!(w.classify().discrepancies, vec![]);
        // A number for the text we sent is the same value.
        let mut w = world();
        w.profile(ANN)
            .properties
            .insert("Marketplacer Last Order ID".into(), json!(5002));
        assert_eq!(w.classify().discrepancies, vec![]);
    }

    #[test]
    fn every_class_planted_at_once_comes_out_ranked_the_same_every_time() {
        let mut w = world();
        w.profile(ANN).email_marketing = profile(
            ANN,
            None,
            "SUBSCRIBED",
            Some("Marketplacer checkout"),
            "5002",
        )
        .email_marketing;
        w.held
            .metrics
            .push(metric("XO", "Fulfilled Order", "Shopify", false));
        w.drop_event("petmarket:placed-order:5001");
        w.drop_event("petmarket:refunded-order:7002");
        w.total(206.9, 1);
        let first = w.classify();
        let classes: Vec<Class> = first.discrepancies.iter().map(|d| d.class).collect();
        assert_eq!(
            classes,
            [
                Class::SubscribedWithoutEvidence,
                Class::DoubleSource,
                Class::MissingPlacedOrder,
                Class::MissingRefund,
            ]
        );
        w.held.events.reverse();
        w.held.profiles.reverse();
        assert_eq!(w.classify(), first);
    }
}
