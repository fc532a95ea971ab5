//! Read-back exceptions over time: what one run found becomes an exception that stays open
//! until a later run that looked for it no longer finds it, or a person resolves it with a
//! reason.
//!
//! The hard part is "looked for it". A run reads a window (a day, say) of one marketplace: a
//! missing Placed Order of last week is not in it, and not finding it there says nothing about
//! it. Closing it anyway would make the weekly report forget a customer who never got their
//! confirmation, and open it again the next time a wider window is read. So each run says what
//! it checked ([`Checked`]) and an open exception it did not find is resolved only when the run
//! covers it ([`Checked::covers`]):
//!
//! - a record (an order, a shipment, a refund, a person) when it happened inside the window,
//!   or when its person is among those whose profiles the run read;
//! - a day's revenue gap when the run compared that marketplace's day;
//! - the other systemic findings (a second sender, a disabled webhook) always: every run checks
//!   the whole account and instance;
//!
//! and never when the exception is of another marketplace or of a class the run did not look
//! for. Finding one again keeps its id, its first sighting and counts the times; the latest
//! [`Discrepancy`] replaces the stored one (the money or the ids may have moved).
//!
//! A run's [`Summary`] (counts and money per class, the revenue days, the read budget) is kept
//! beside its exceptions, so that a report can show the trend since the previous one.

use super::impact::{Class, Discrepancy, ReadBack, ReadBudget, RevenueDay, Tier, rank};
use super::{Report, Window};
use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// How a read-back exception's id is written, to tell it from a flagged request's
/// (`exceptions show R12` against `exceptions show 12`).
pub const ID_PREFIX: char = 'R';

/// The id as people type it: `R12`.
pub fn label(id: i64) -> String {
    format!("{ID_PREFIX}{id}")
}

/// What one run checked: the scope inside which not finding an open exception resolves it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checked {
    /// The window read (unix ms), `until` excluded.
    pub since: i64,
    pub until: i64,
    /// The marketplaces read; empty when the run did not name one (then any is in scope).
    pub marketplaces: BTreeSet<String>,
    /// The classes the run looked for: a run that could not read profiles did not look for
    /// duplicates, and must not resolve any.
    pub classes: BTreeSet<Class>,
    /// The people whose profiles were read (normalised as [`Discrepancy::person`]).
    pub people: BTreeSet<String>,
    /// The (marketplace, day) pairs whose revenue was compared.
    pub revenue_days: BTreeSet<(String, String)>,
}

impl Checked {
    /// A run over `window` of `marketplace` that looked for every class, with the revenue days
    /// `read_back` compared. The people read are not in a [`ReadBack`]: a record exception
    /// without a time is then resolved only by hand or by a run that names its person.
    pub fn run(window: &Window, marketplace: Option<&str>, read_back: &ReadBack) -> Checked {
        Checked {
            since: window.since.timestamp_millis(),
            until: window.until.timestamp_millis(),
            marketplaces: marketplace.map(str::to_owned).into_iter().collect(),
            classes: Class::ALL.into_iter().collect(),
            people: BTreeSet::new(),
            revenue_days: read_back
                .revenue
                .iter()
                .map(|day| (day.marketplace.clone(), day.day.clone()))
                .collect(),
        }
    }

    /// Whether the run looked where `found` would be: not finding it there means it is gone.
    pub fn covers(&self, found: &Discrepancy) -> bool {
        if !self.classes.contains(&found.class) {
            return false;
        }
        if let Some(marketplace) = &found.marketplace
            && !self.marketplaces.is_empty()
            && !self.marketplaces.contains(marketplace)
        {
            return false;
        }
        match found.class {
            Class::DoubleSource | Class::WebhookDisabled => true,
            // The key is `revenue-gap:MARKETPLACE:DAY` (impact.rs): compared that day or not.
            Class::RevenueGap => self.revenue_days.iter().any(|(marketplace, day)| {
                found.key == format!("{}:{marketplace}:{day}", Class::RevenueGap.name())
            }),
            _ => {
                let in_window = found
                    .happened_at
                    .is_some_and(|at| at >= self.since && at < self.until);
                let person_read = found
                    .person
                    .as_ref()
                    .is_some_and(|person| self.people.contains(person));
                in_window || person_read
            }
        }
    }
}

/// How an exception was closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "by", rename_all = "kebab-case")]
pub enum Resolution {
    /// A later run covered it and did not find it.
    Run { run_id: i64, at: i64 },
    /// A person closed it, saying why.
    Hand { at: i64, reason: String },
}

impl Resolution {
    pub fn at(&self) -> i64 {
        match self {
            Resolution::Run { at, .. } | Resolution::Hand { at, .. } => *at,
        }
    }

    /// In plain words: `no longer found by run 12` or `by hand: merged in Klaviyo`.
    pub fn describe(&self) -> String {
        match self {
            Resolution::Run { run_id, .. } => format!("no longer found by run {run_id}"),
            Resolution::Hand { reason, .. } => format!("by hand: {reason}"),
        }
    }
}

/// A read-back exception as kept: the latest finding and its history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBackException {
    pub id: i64,
    /// As the latest run that found it found it.
    pub discrepancy: Discrepancy,
    /// When a run found it first and last (unix ms), and how many runs did.
    pub first_seen: i64,
    pub last_seen: i64,
    pub times_seen: u64,
    pub first_run: i64,
    pub last_run: i64,
    /// `None` while open.
    pub closed: Option<Resolution>,
}

impl ReadBackException {
    pub fn class(&self) -> Class {
        self.discrepancy.class
    }

    pub fn tier(&self) -> Tier {
        self.discrepancy.class.tier()
    }

    pub fn label(&self) -> String {
        label(self.id)
    }
}

/// Sorts exceptions most harmful first, by [`rank`]'s order of their findings.
pub fn rank_exceptions(exceptions: &mut [ReadBackException]) {
    let mut findings: Vec<Discrepancy> = exceptions.iter().map(|e| e.discrepancy.clone()).collect();
    rank(&mut findings);
    let position: BTreeMap<&str, usize> = findings
        .iter()
        .enumerate()
        .map(|(at, d)| (d.key.as_str(), at))
        .collect();
    // Keys are unique among open exceptions; among resolved ones a key may repeat, and then
    // the newer comes first.
    exceptions.sort_by(|a, b| {
        position[a.discrepancy.key.as_str()]
            .cmp(&position[b.discrepancy.key.as_str()])
            .then(b.id.cmp(&a.id))
    });
}

/// Money per currency (ISO 4217 code, empty when unknown), in minor units.
pub type Money = BTreeMap<String, i64>;

/// Open exceptions per class: how many, and their money at stake.
pub type OpenCounts = BTreeMap<Class, (u64, Money)>;

/// One class's figures in one run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassFigures {
    /// Found by this run.
    pub found: u64,
    /// Of those, not open before: new exceptions.
    pub opened: u64,
    /// Of those, open before: found again.
    pub again: u64,
    /// Open before, covered by this run and not found: resolved.
    pub resolved: u64,
    /// Open once the run was recorded (found by this run or left from earlier ones).
    pub open: u64,
    /// The money at stake of those open.
    pub open_money: Money,
}

/// What one run's reading back gave, kept for the trend: per class, the revenue compared, and
/// what the reading cost.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub run_id: i64,
    pub recorded_at: i64,
    /// The window, RFC 3339 UTC.
    pub since: String,
    pub until: String,
    /// Every class with anything found, resolved or open.
    pub classes: BTreeMap<Class, ClassFigures>,
    pub revenue: Vec<RevenueDay>,
    pub reads: Vec<ReadBudget>,
    pub elapsed_ms: u64,
}

impl Summary {
    fn figures(&self, wanted: impl Fn(Class) -> bool) -> ClassFigures {
        let mut total = ClassFigures::default();
        for f in self
            .classes
            .iter()
            .filter(|(class, _)| wanted(**class))
            .map(|(_, f)| f)
        {
            total.found += f.found;
            total.opened += f.opened;
            total.again += f.again;
            total.resolved += f.resolved;
            total.open += f.open;
            for (currency, cents) in &f.open_money {
                *total.open_money.entry(currency.clone()).or_default() += cents;
            }
        }
        total
    }

    /// The figures of one tier's classes together.
    pub fn tier(&self, tier: Tier) -> ClassFigures {
        self.figures(|class| class.tier() == tier)
    }

    /// Every class together.
    pub fn total(&self) -> ClassFigures {
        self.figures(|_| true)
    }

    /// Open exceptions per tier, every tier present.
    pub fn open_by_tier(&self) -> BTreeMap<Tier, u64> {
        Tier::ALL
            .into_iter()
            .map(|t| (t, self.tier(t).open))
            .collect()
    }

    /// Whether a compliance or systemic exception is open: `reconcile` exits non-zero.
    pub fn fails(&self) -> bool {
        Tier::ALL
            .into_iter()
            .any(|tier| tier.fails_the_run() && self.tier(tier).open > 0)
    }

    /// Revenue per marketplace over the days compared.
    pub fn revenue_by_marketplace(&self) -> Vec<MarketplaceRevenue> {
        let mut by: BTreeMap<&str, MarketplaceRevenue> = BTreeMap::new();
        for day in &self.revenue {
            let entry = by
                .entry(day.marketplace.as_str())
                .or_insert_with(|| MarketplaceRevenue {
                    marketplace: day.marketplace.clone(),
                    currency: day.currency.clone(),
                    ..MarketplaceRevenue::default()
                });
            entry.days += 1;
            entry.orders += day.orders;
            entry.marketplacer_cents += day.marketplacer_cents;
            entry.klaviyo_cents += day.klaviyo_cents;
            if aligned(day) {
                entry.aligned_days += 1;
            }
        }
        by.into_values().collect()
    }
}

/// One marketplace's revenue over the days a run compared.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MarketplaceRevenue {
    pub marketplace: String,
    pub currency: String,
    pub days: u64,
    /// Days whose difference is within the tolerance.
    pub aligned_days: u64,
    pub orders: u64,
    pub marketplacer_cents: i64,
    pub klaviyo_cents: i64,
}

impl MarketplaceRevenue {
    pub fn difference_cents(&self) -> i64 {
        self.klaviyo_cents - self.marketplacer_cents
    }
}

/// Whether a day's revenue agrees within the tolerance: a cent per order (rounding of each
/// order's value), reconciliation.md §8.5.
pub fn aligned(day: &RevenueDay) -> bool {
    day.difference_cents().unsigned_abs() <= day.orders.max(1)
}

/// What recording a run did to the exceptions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lifecycle {
    /// Ids of the exceptions this run opened, found again and resolved.
    pub opened: Vec<i64>,
    pub again: Vec<i64>,
    pub resolved: Vec<i64>,
    pub summary: Summary,
}

/// Keeps what `report`'s run read back (nothing when it read nothing back): its exceptions'
/// lifecycle and its summary. The one place a finished run reaches the exceptions, for
/// `marketsync reconcile` and serve's schedule alike.
pub fn record(
    store: &mut Store,
    report: &Report,
    now: i64,
) -> Result<Option<Lifecycle>, StoreError> {
    let Some(read_back) = &report.read_back else {
        return Ok(None);
    };
    let checked = Checked::run(
        &report.window,
        report.findings.marketplace.as_deref(),
        read_back,
    );
    store
        .record_read_back(report.run_id, &checked, read_back, now)
        .map(Some)
}

/// An amount for a person: `AUD 1,234.56` (the currency's own decimals; none for JPY).
pub fn money(cents: i64, currency: &str) -> String {
    let decimals = iso_currency::Currency::from_code(currency)
        .and_then(|c| c.exponent())
        .unwrap_or(2) as u32;
    let sign = if cents < 0 { "-" } else { "" };
    let whole = cents.unsigned_abs() / 10u64.pow(decimals);
    let fraction = cents.unsigned_abs() % 10u64.pow(decimals);
    let digits = whole.to_string();
    let mut grouped = String::new();
    for (at, digit) in digits.chars().enumerate() {
        if at > 0 && (digits.len() - at).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    let amount = if decimals == 0 {
        grouped
    } else {
        format!("{grouped}.{fraction:0width$}", width = decimals as usize)
    };
    if currency.is_empty() {
        format!("{sign}{amount}")
    } else {
        format!("{sign}{currency} {amount}")
    }
}

/// Money in several currencies, `AUD 12.00 + NZD 3.50`; `-` for none.
pub fn money_total(total: &Money) -> String {
    let shown: Vec<String> = total
        .iter()
        .filter(|(_, cents)| **cents != 0)
        .map(|(currency, cents)| money(*cents, currency))
        .collect();
    if shown.is_empty() {
        "-".to_owned()
    } else {
        shown.join(" + ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn found(class: Class, key: &str) -> Discrepancy {
        Discrepancy {
            class,
            key: key.to_owned(),
            marketplace: Some("petmarket".into()),
            order_id: None,
            person: None,
            profile_ids: vec![],
            event_ids: vec![],
            money_cents: 0,
            currency: Some("AUD".into()),
            flow_live: false,
            affected: 1,
            happened_at: None,
            detail: String::new(),
            action: String::new(),
        }
    }

    fn checked() -> Checked {
        Checked {
            since: 10 * DAY,
            until: 11 * DAY,
            marketplaces: ["petmarket".to_owned()].into(),
            classes: Class::ALL.into_iter().collect(),
            people: ["zoe@example.com".to_owned()].into(),
            revenue_days: [("petmarket".to_owned(), "1970-01-11".to_owned())].into(),
        }
    }

    #[test]
    fn a_record_is_covered_when_it_happened_in_the_window_or_its_person_was_read() {
        let checked = checked();
        let mut order = found(
            Class::MissingPlacedOrder,
            "missing-placed-order:petmarket:1",
        );
        order.happened_at = Some(10 * DAY + 5);
        assert!(checked.covers(&order));
        order.happened_at = Some(11 * DAY);
        assert!(!checked.covers(&order), "until is excluded");
        order.happened_at = Some(3 * DAY);
        assert!(!checked.covers(&order), "last week's order was not read");
        order.happened_at = None;
        assert!(!checked.covers(&order), "no time, no person: only by hand");
        let mut duplicate = found(
            Class::DuplicateProfile,
            "duplicate-profile:email:zoe@example.com",
        );
        duplicate.marketplace = None;
        duplicate.person = Some("zoe@example.com".into());
        assert!(checked.covers(&duplicate));
        duplicate.person = Some("ann@example.com".into());
        assert!(!checked.covers(&duplicate));
    }

    #[test]
    fn systemic_findings_are_always_covered_but_a_revenue_gap_only_on_its_day() {
        let checked = checked();
        assert!(checked.covers(&found(Class::DoubleSource, "double-source:placed-order")));
        assert!(checked.covers(&found(
            Class::WebhookDisabled,
            "webhook-disabled:petmarket:INVOICE"
        )));
        assert!(checked.covers(&found(
            Class::RevenueGap,
            "revenue-gap:petmarket:1970-01-11"
        )));
        assert!(!checked.covers(&found(
            Class::RevenueGap,
            "revenue-gap:petmarket:1970-01-04"
        )));
    }

    #[test]
    fn another_marketplace_or_a_class_not_looked_for_is_never_covered() {
        let mut checked = checked();
        let mut other = found(Class::DoubleSource, "double-source:x");
        other.marketplace = Some("homewares".into());
        assert!(!checked.covers(&other));
        checked.classes.remove(&Class::DoubleSource);
        assert!(!checked.covers(&found(Class::DoubleSource, "double-source:y")));
        // A run that names no marketplace reads them all.
        let mut any = Checked::default();
        any.classes.insert(Class::DoubleSource);
        assert!(any.covers(&other));
    }

    #[test]
    fn money_reads_as_a_person_writes_it() {
        assert_eq!(money(123_456, "AUD"), "AUD 1,234.56");
        assert_eq!(money(-5, "AUD"), "-AUD 0.05");
        assert_eq!(money(1_000_000, "JPY"), "JPY 1,000,000");
        assert_eq!(money(100, ""), "1.00");
        let total = Money::from([("AUD".into(), 1200), ("NZD".into(), 350), ("USD".into(), 0)]);
        assert_eq!(money_total(&total), "AUD 12.00 + NZD 3.50");
        assert_eq!(money_total(&Money::new()), "-");
    }

    #[test]
    fn a_day_is_aligned_within_a_cent_per_order() {
        let day = |orders, marketplacer_cents, klaviyo_cents| RevenueDay {
            marketplace: "petmarket".into(),
            day: "2026-11-30".into(),
            currency: "AUD".into(),
            orders,
            marketplacer_cents,
            klaviyo_cents,
        };
        assert!(aligned(&day(40, 100_000, 99_960)));
        assert!(!aligned(&day(40, 100_000, 99_959)));
        assert!(aligned(&day(0, 0, 1)), "a cent of rounding on a quiet day");
        assert!(!aligned(&day(0, 0, 2)));
    }
}
