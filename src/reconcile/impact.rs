//! What reading Klaviyo back can find wrong, and the order a person should look at it in.
//!
//! A 2xx from Klaviyo is not proof: events are accepted before they are processed, bulk jobs
//! have no status, and Klaviyo can hold two profiles for one shopper or a consent state that
//! disagrees with checkout. Each [`Discrepancy`] is one such finding ("exception" in the
//! docs and the CLI), classified so that a reader starts where the harm is greatest:
//!
//! 1. **compliance** ([`Tier::Compliance`]): Klaviyo is more permissive than our evidence. Every
//!    message sent on it is a breach (penalties scale with messages), so it is first whatever
//!    money the others carry;
//! 2. **systemic** ([`Tier::Systemic`]): one cause behind many records (a second sender of our
//!    metrics, a disabled webhook, a day's revenue that does not add up);
//! 3. **money** ([`Tier::Money`]): one record, ranked by the money at stake, which counts the
//!    value missing or wrong in Klaviyo's revenue and, when a live flow is triggered by the
//!    metric, the flow revenue the customer's missed message would have earned ([`stake`]);
//! 4. **hygiene** ([`Tier::Hygiene`]): split history and stale attributes, counted.
//!
//! Tiers are lexicographic: money never lifts a finding above a higher tier. Within a tier the
//! order is money, then a live flow, then people affected, then the key, so the same input gives
//! the same ranking, byte for byte (../shared/reference/notes/reconciliation.md §6).
//!
//! A customer who unsubscribed or was suppressed in Klaviyo after our opt-in is not a
//! discrepancy of any class: Klaviyo owns consent after the first order.

use serde::{Deserialize, Serialize};
use std::cmp::Reverse;

/// How bad a class of discrepancy is, most harmful first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    Compliance,
    Systemic,
    Money,
    Hygiene,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Compliance, Tier::Systemic, Tier::Money, Tier::Hygiene];

    pub fn name(self) -> &'static str {
        match self {
            Tier::Compliance => "compliance",
            Tier::Systemic => "systemic",
            Tier::Money => "money",
            Tier::Hygiene => "hygiene",
        }
    }

    /// Whether an open discrepancy of this tier makes `reconcile` exit non-zero.
    pub fn fails_the_run(self) -> bool {
        matches!(self, Tier::Compliance | Tier::Systemic)
    }
}

/// One kind of discrepancy. The serialised name (kebab-case) is what the CLI, the JSON report
/// and the store use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    /// Subscribed in Klaviyo by marketsync (the subscription's method or detail names us)
    /// while the store holds no opt-in evidence for that person.
    SubscribedWithoutEvidence,
    /// A second sender of our metrics: two metrics of one name from different integrations,
    /// or Marketplacer's own Klaviyo e-commerce tracking switched on.
    DoubleSource,
    /// A Marketplacer webhook the mappings read is disabled or missing: everything after it is
    /// missing. Its money at stake is the sum of the [`stake`]s of the window's records it
    /// carries (Placed Orders for INVOICE, Fulfilled Orders for SHIPMENT, refunds for
    /// REFUND_REQUEST): what each window loses while it stays off.
    WebhookDisabled,
    /// A day's revenue for a marketplace in Klaviyo differs from Marketplacer's beyond the
    /// tolerance.
    RevenueGap,
    /// A paid order with no Placed Order in Klaviyo after the settle delay.
    MissingPlacedOrder,
    /// A Placed Order whose value differs from the order's.
    WrongOrderValue,
    /// A shipment with no Fulfilled Order.
    MissingFulfilledOrder,
    /// A Fulfilled Order without the tracking number its shipment has.
    TrackingMissing,
    /// A refund or cancellation with no Refunded or Cancelled Order.
    MissingRefund,
    /// A Refunded or Cancelled Order whose order has no Placed Order: not counted in CLV.
    OrphanedRefund,
    /// Opted in at checkout, and never subscribed in Klaviyo. No money at stake: no revenue in
    /// Klaviyo is wrong, and the reach lost (the campaigns they will not get) cannot be priced
    /// from what is read, so it ranks after the orders of its tier.
    ConsentMissed,
    /// Several Klaviyo profiles for one email or phone.
    DuplicateProfile,
    /// Profile properties marketsync owns that differ from what the latest order maps to.
    AttributeDrift,
}

impl Class {
    pub const ALL: [Class; 13] = [
        Class::SubscribedWithoutEvidence,
        Class::DoubleSource,
        Class::WebhookDisabled,
        Class::RevenueGap,
        Class::MissingPlacedOrder,
        Class::WrongOrderValue,
        Class::MissingFulfilledOrder,
        Class::TrackingMissing,
        Class::MissingRefund,
        Class::OrphanedRefund,
        Class::ConsentMissed,
        Class::DuplicateProfile,
        Class::AttributeDrift,
    ];

    pub fn tier(self) -> Tier {
        match self {
            Class::SubscribedWithoutEvidence => Tier::Compliance,
            Class::DoubleSource | Class::WebhookDisabled | Class::RevenueGap => Tier::Systemic,
            Class::MissingPlacedOrder
            | Class::WrongOrderValue
            | Class::MissingFulfilledOrder
            | Class::TrackingMissing
            | Class::MissingRefund
            | Class::OrphanedRefund
            | Class::ConsentMissed => Tier::Money,
            Class::DuplicateProfile | Class::AttributeDrift => Tier::Hygiene,
        }
    }

    /// The kebab-case name, as serialised.
    pub fn name(self) -> &'static str {
        match self {
            Class::SubscribedWithoutEvidence => "subscribed-without-evidence",
            Class::DoubleSource => "double-source",
            Class::WebhookDisabled => "webhook-disabled",
            Class::RevenueGap => "revenue-gap",
            Class::MissingPlacedOrder => "missing-placed-order",
            Class::WrongOrderValue => "wrong-order-value",
            Class::MissingFulfilledOrder => "missing-fulfilled-order",
            Class::TrackingMissing => "tracking-missing",
            Class::MissingRefund => "missing-refund",
            Class::OrphanedRefund => "orphaned-refund",
            Class::ConsentMissed => "consent-missed",
            Class::DuplicateProfile => "duplicate-profile",
            Class::AttributeDrift => "attribute-drift",
        }
    }

    pub fn from_name(name: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Whether `reconcile` (not `--report-only`) repairs it by queuing the missing requests
    /// with their original keys. A wrong event is not among them: Klaviyo keeps the first
    /// event of a (profile, metric, `unique_id`) and drops later ones with a 202, so sending it
    /// again would look like a repair and change nothing. Consent is never repaired
    /// automatically; duplicates, drift and the systemic classes need a person.
    pub fn repaired_automatically(self) -> bool {
        matches!(
            self,
            Class::MissingPlacedOrder | Class::MissingFulfilledOrder | Class::MissingRefund
        )
    }
}

/// One finding of reading Klaviyo back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discrepancy {
    pub class: Class,
    /// What the finding is about, stable across runs so that finding it again is the same
    /// exception and not finding it closes it: the class, then the marketplace and the record
    /// (`missing-placed-order:petmarket:5001`, `duplicate-profile:email:zoe@example.com`,
    /// `revenue-gap:petmarket:2026-11-30`).
    pub key: String,
    pub marketplace: Option<String>,
    /// Marketplacer's legacy order id, when one order is concerned.
    pub order_id: Option<String>,
    /// The person, as we normalise them (email, else E.164 phone).
    pub person: Option<String>,
    /// Klaviyo's ids involved.
    pub profile_ids: Vec<String>,
    pub event_ids: Vec<String>,
    /// The money at stake in minor units of `currency` (see [`stake`]).
    pub money_cents: i64,
    pub currency: Option<String>,
    /// Whether a live Klaviyo flow is triggered by the metric concerned.
    pub flow_live: bool,
    /// Orders or people one systemic finding touches; 1 for a record.
    pub affected: u64,
    /// When the record happened (ms since the epoch): the order placed, the shipment
    /// dispatched. The age a reader sees.
    pub happened_at: Option<i64>,
    /// What is wrong, in plain words, with the values that disagree.
    pub detail: String,
    /// The first thing to do about it.
    pub action: String,
}

impl Discrepancy {
    pub fn tier(&self) -> Tier {
        self.class.tier()
    }
}

/// The benchmark median share of a flow's recipients who place an order (Klaviyo's 2024
/// benchmark report, 1.71%), the default weight of a missed flow message.
pub const FLOW_PLACED_ORDER_RATE: f64 = 0.0171;

/// The money at stake of one record: the value missing or wrong in Klaviyo's revenue and CLV,
/// plus, when a live flow is triggered by the metric, what the missed message would have
/// earned (the flow order rate of an average order).
pub fn stake(value_cents: i64, flow_live: bool, average_order_cents: i64) -> i64 {
    let flow = if flow_live {
        (average_order_cents as f64 * FLOW_PLACED_ORDER_RATE).round() as i64
    } else {
        0
    };
    value_cents.abs() + flow
}

/// Sorts most harmful first: tier, then money at stake, a live flow, people affected, and the
/// key, so that the same findings always come out in the same order.
pub fn rank(found: &mut [Discrepancy]) {
    found.sort_by(|a, b| {
        let order = |d: &Discrepancy| {
            (
                d.tier(),
                Reverse(d.money_cents),
                Reverse(d.flow_live),
                Reverse(d.affected),
            )
        };
        order(a).cmp(&order(b)).then_with(|| a.key.cmp(&b.key))
    });
}

/// One day's revenue for one marketplace, on both sides, bucketed by the same timestamp (the
/// order's placing) in the same timezone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevenueDay {
    pub marketplace: String,
    /// `YYYY-MM-DD` in the reconciliation's timezone.
    pub day: String,
    pub currency: String,
    pub orders: u64,
    pub marketplacer_cents: i64,
    pub klaviyo_cents: i64,
}

impl RevenueDay {
    pub fn difference_cents(&self) -> i64 {
        self.klaviyo_cents - self.marketplacer_cents
    }
}

/// The reads one run made of one Klaviyo endpoint, against its published limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadBudget {
    /// `GET /api/events`, `POST /api/metric-aggregates`, ...
    pub endpoint: String,
    pub requests: u64,
    /// The endpoint's published steady limit (`x-klaviyo-ratelimit`), per minute.
    pub per_minute: u32,
    /// Time spent waiting on that limit (and on 429s' `Retry-After`).
    pub waited_ms: u64,
}

/// What reading Klaviyo back gave one reconciliation run: what the store keeps, the report
/// shows and the alerts count.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadBack {
    /// Ranked with [`rank`].
    pub discrepancies: Vec<Discrepancy>,
    pub revenue: Vec<RevenueDay>,
    pub reads: Vec<ReadBudget>,
    /// How long the reading and comparing took.
    pub elapsed_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(class: Class, key: &str, money_cents: i64) -> Discrepancy {
        Discrepancy {
            class,
            key: key.to_owned(),
            marketplace: Some("petmarket".into()),
            order_id: None,
            person: None,
            profile_ids: vec![],
            event_ids: vec![],
            money_cents,
            currency: Some("AUD".into()),
            flow_live: false,
            affected: 1,
            happened_at: None,
            detail: String::new(),
            action: String::new(),
        }
    }

    #[test]
    fn a_higher_tier_comes_first_whatever_the_money() {
        let mut all = vec![
            found(Class::MissingPlacedOrder, "b", 1_000_000),
            found(Class::AttributeDrift, "a", 0),
            found(Class::SubscribedWithoutEvidence, "c", 0),
            found(Class::RevenueGap, "d", 10),
        ];
        rank(&mut all);
        let classes: Vec<Class> = all.iter().map(|d| d.class).collect();
        assert_eq!(
            classes,
            [
                Class::SubscribedWithoutEvidence,
                Class::RevenueGap,
                Class::MissingPlacedOrder,
                Class::AttributeDrift
            ]
        );
    }

    #[test]
    fn within_a_tier_money_then_a_live_flow_then_the_key_decide() {
        let mut live = found(Class::MissingFulfilledOrder, "z", 500);
        live.flow_live = true;
        let mut all = vec![
            found(Class::MissingPlacedOrder, "y", 500),
            found(Class::WrongOrderValue, "x", 900),
            live,
            found(Class::MissingRefund, "a", 500),
        ];
        rank(&mut all);
        let keys: Vec<&str> = all.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(keys, ["x", "z", "a", "y"]);
    }

    #[test]
    fn a_live_flow_adds_what_the_missed_message_would_earn() {
        assert_eq!(stake(-2_000, false, 10_000), 2_000);
        assert_eq!(stake(2_000, true, 10_000), 2_171);
    }

    #[test]
    fn every_class_has_its_name_back() {
        for class in Class::ALL {
            assert_eq!(Class::from_name(class.name()), Some(class));
            let json = serde_json::to_value(class).unwrap();
            assert_eq!(json, class.name());
        }
    }
}
