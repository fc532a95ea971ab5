//! The read-back report: what reading Klaviyo back found, for the people who act on it.
//!
//! Three forms of one [`ReadBackReport`], read from the store after a run is recorded (so
//! `marketsync reconcile`, `marketsync exceptions report` and serve's `/report` page show the
//! same thing): a terminal summary (a table by class, then the top exceptions), JSON lines (one
//! exception a line, for a warehouse or `jq`), and one self-contained HTML page for the weekly
//! review (inline CSS and SVG, no script, nothing fetched), with a chart per marketplace of
//! daily revenue in Marketplacer against Klaviyo, the exceptions grouped by tier with what each
//! class means for the customer and who fixes it, and the trend since the previous report.
//!
//! The HTML is rendered by a minijinja template whose `.html` name turns on auto-escaping:
//! every value from a finding (an email, a detail written from Klaviyo's data) is escaped by the
//! engine, never by hand.

use super::exceptions::{
    ClassFigures, MarketplaceRevenue, ReadBackException, Summary, aligned, money, money_total,
};
use super::impact::{Class, Tier};
use crate::store::{ReadBackFilter, Store, StoreError};
use minijinja::Environment;
use serde::Serialize;
use serde_json::{Value as Json, json};
use std::collections::BTreeMap;
use std::sync::LazyLock;

/// What a class means, for the weekly review and `exceptions show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// A short title.
    pub title: &'static str,
    /// What it means for the customer (or the business), in plain words.
    pub customer: &'static str,
    /// The team that fixes it (docs/operations.md, section 3).
    pub owner: &'static str,
    /// What that team does, in a sentence.
    pub fix: &'static str,
}

/// What each class means and who fixes it. docs/operations.md (the weekly review) says the
/// same; change both together.
pub fn explain(class: Class) -> Explanation {
    let (title, customer, owner, fix) = match class {
        Class::SubscribedWithoutEvidence => (
            "Subscribed without consent on record",
            "Klaviyo will send this person marketing they never agreed to, as far as our records \
             show. Every message is a possible Spam Act breach.",
            "marketing",
            "Unsubscribe them in Klaviyo today, unless you find their consent elsewhere; then ask \
             the consultant why marketsync subscribed them.",
        ),
        Class::DoubleSource => (
            "A second sender of our order metrics",
            "Orders are counted twice in Klaviyo's revenue, and flows triggered by them can send \
             the customer two emails for one order.",
            "e-commerce",
            "Switch off Marketplacer's own Klaviyo e-commerce tracking, or have the consultant \
             rename our metrics; then check which flows use which metric.",
        ),
        Class::WebhookDisabled => (
            "A Marketplacer webhook is disabled",
            "Nothing that happened after it failed reached Klaviyo: no confirmation, shipping or \
             refund emails for those orders.",
            "e-commerce",
            "Re-enable the webhook in Marketplacer (Configuration → Webhooks) after fixing why it \
             failed, then reconcile the whole time it was off.",
        ),
        Class::RevenueGap => (
            "A day's revenue does not add up",
            "Klaviyo's revenue for the day differs from Marketplacer's: reports, CLV and \
             revenue-based segments are wrong. Usually the sum of the missing or wrong orders \
             listed below, or a second sender.",
            "e-commerce",
            "Look for missing or wrong orders of that day in this report first; a gap they do \
             not explain is a second sender or events from outside marketsync.",
        ),
        Class::MissingPlacedOrder => (
            "Order missing in Klaviyo",
            "The customer got no order confirmation or post-purchase flow from Klaviyo, and the \
             order is missing from revenue and their lifetime value.",
            "e-commerce",
            "Nothing, usually: reconcile queues it again with its original key. If it stays \
             open, look for its dead letter (`marketsync dead list --mapping placed-order`).",
        ),
        Class::WrongOrderValue => (
            "Order value wrong in Klaviyo",
            "Revenue and lifetime value are off by the difference, and flows that branch on order \
             value may treat the customer as a smaller or bigger spender than they are.",
            "consultant",
            "Check the placed-order mapping's value against the order; Klaviyo keeps the first \
             event sent, so the fix applies to later orders and this one stays wrong.",
        ),
        Class::MissingFulfilledOrder => (
            "Shipment missing in Klaviyo",
            "The customer got no shipping email and may ask where their order is.",
            "CX",
            "Nothing, usually: reconcile queues it again. If the shipment is days old, send the \
             tracking details by hand.",
        ),
        Class::TrackingMissing => (
            "Shipping email without tracking",
            "The shipping email went out without the tracking number the shipment has: the \
             customer cannot follow the parcel and asks CX instead.",
            "CX",
            "Send the customer the tracking link; ask the consultant to check the fulfilled-order \
             mapping's tracking fields.",
        ),
        Class::MissingRefund => (
            "Refund missing in Klaviyo",
            "Revenue and lifetime value are overstated, and the customer may get review or \
             repeat-purchase emails for an order they returned.",
            "CX",
            "Nothing, usually: reconcile queues it again. Check no review request went out.",
        ),
        Class::OrphanedRefund => (
            "Refund not tied to its order",
            "Klaviyo has the refund but no order for it, so the refund is not taken off the \
             customer's lifetime value.",
            "consultant",
            "Check that the refund and placed-order mappings give the same order id; repair the \
             missing Placed Order first if there is one.",
        ),
        Class::ConsentMissed => (
            "Opted in, never subscribed",
            "The customer said yes to marketing at checkout but gets none: lost reach, and a \
             welcome flow that never started.",
            "marketing",
            "Check the opt-in evidence (`marketsync customer EMAIL`), then subscribe them in \
             Klaviyo by hand; marketsync never does this itself.",
        ),
        Class::DuplicateProfile => (
            "Several Klaviyo profiles for one person",
            "The customer's history is split: flows and segments see part of it, they may get the \
             same email twice, and each profile counts towards Klaviyo's bill.",
            "CX",
            "Merge the profiles in Klaviyo (Profiles → the person → Merge).",
        ),
        Class::AttributeDrift => (
            "Profile details out of date",
            "Names, phone or address in Klaviyo differ from the customer's latest order, so \
             personalisation and SMS use stale details.",
            "consultant",
            "Find what else writes these profile properties (a form, another integration) and \
             agree who owns them.",
        ),
    };
    Explanation {
        title,
        customer,
        owner,
        fix,
    }
}

/// What a tier asks of its reader.
pub fn tier_heading(tier: Tier) -> (&'static str, &'static str) {
    match tier {
        Tier::Compliance => (
            "Compliance: act today",
            "Klaviyo is more permissive than our consent records. Every message sent meanwhile \
             is a possible breach, so these come first whatever the money.",
        ),
        Tier::Systemic => (
            "Systemic: one cause, many customers",
            "One fault behind many records: fixing the cause fixes them all.",
        ),
        Tier::Money => (
            "Orders, shipments and refunds",
            "One record each, ranked by the money at stake (the value missing or wrong in \
             Klaviyo, and what a missed flow email would have earned).",
        ),
        Tier::Hygiene => (
            "Profile hygiene",
            "Split histories and stale details: worth a look in the weekly review.",
        ),
    }
}

/// One run's read-back as a report: its summary, the one before, and the exceptions.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadBackReport {
    /// When the report was made (unix ms): ages count from here.
    pub now: i64,
    /// The latest run's summary, its open figures as they are now.
    pub current: Summary,
    /// The run that read back before it, for the trend.
    pub previous: Option<Summary>,
    /// Every open exception (this run's and those left from earlier), most harmful first.
    pub open: Vec<ReadBackException>,
    /// Those the current run resolved.
    pub resolved: Vec<ReadBackException>,
}

/// At most this many exceptions of one class are shown in the HTML page; the rest are counted
/// with the command that lists them.
const HTML_PER_CLASS: usize = 25;

impl ReadBackReport {
    /// The report of the latest run that read Klaviyo back; `None` when none has. Its open
    /// figures are those of now: an exception resolved by hand since the run is no longer open.
    pub fn latest(store: &Store, now: i64) -> Result<Option<ReadBackReport>, StoreError> {
        let mut last = store.last_read_backs(2)?.into_iter();
        let Some(mut current) = last.next() else {
            return Ok(None);
        };
        let mut open_now = store.open_read_back_counts()?;
        for class in Class::ALL {
            let (open, money) = open_now.remove(&class).unwrap_or_default();
            if open == 0 && !current.classes.contains_key(&class) {
                continue;
            }
            let figures = current.classes.entry(class).or_default();
            figures.open = open;
            figures.open_money = money;
        }
        Ok(Some(ReadBackReport {
            now,
            open: store.open_read_back_exceptions(&ReadBackFilter::default())?,
            resolved: store.read_back_resolved_by(current.run_id)?,
            previous: last.next(),
            current,
        }))
    }

    /// Whether an exception was opened by the current run.
    fn is_new(&self, exception: &ReadBackException) -> bool {
        exception.first_run == self.current.run_id
    }

    /// The terminal form: a table by class, revenue per marketplace, the trend, then the `top`
    /// most harmful exceptions.
    pub fn terminal(&self, top: usize) -> String {
        let c = &self.current;
        let total = c.total();
        let mut out = format!(
            "Klaviyo read back over {} .. {} (run {}): {} open, {} new, {} resolved\n",
            c.since,
            c.until,
            c.run_id,
            plural(total.open, "exception"),
            total.opened,
            total.resolved
        );
        let shown: Vec<(&Class, &ClassFigures)> = c
            .classes
            .iter()
            .filter(|(_, f)| f.open + f.found + f.resolved > 0)
            .collect();
        if shown.is_empty() {
            out.push_str("  nothing found: Klaviyo holds what Marketplacer says it should\n");
        } else {
            out.push_str(&format!(
                "  {:<28} {:<11} {:>5} {:>5} {:>9}  MONEY AT STAKE\n",
                "CLASS", "TIER", "OPEN", "NEW", "RESOLVED"
            ));
            for (class, f) in shown {
                out.push_str(&format!(
                    "  {:<28} {:<11} {:>5} {:>5} {:>9}  {}\n",
                    class.name(),
                    class.tier().name(),
                    f.open,
                    f.opened,
                    f.resolved,
                    money_total(&f.open_money)
                ));
            }
            out.push_str(&format!(
                "  {:<28} {:<11} {:>5} {:>5} {:>9}  {}\n",
                "total",
                "",
                total.open,
                total.opened,
                total.resolved,
                money_total(&total.open_money)
            ));
        }
        let revenue = c.revenue_by_marketplace();
        if !revenue.is_empty() {
            out.push_str("revenue, Marketplacer against Klaviyo:\n");
            for m in &revenue {
                out.push_str(&format!("  {}\n", revenue_line(m)));
            }
        }
        if let Some(previous) = &self.previous {
            out.push_str(&format!(
                "since the last report (run {}, {}): {}\n",
                previous.run_id,
                iso(previous.recorded_at),
                trend_line(previous, c)
            ));
        }
        if !self.open.is_empty() {
            out.push_str(&format!(
                "top exceptions (of {}; all: marketsync exceptions list):\n",
                self.open.len()
            ));
            for e in self.open.iter().take(top) {
                let d = &e.discrepancy;
                out.push_str(&format!(
                    "  {:<5} {:<11} {:<28} {:<14} {}{}\n",
                    e.label(),
                    e.tier().name(),
                    d.class.name(),
                    stake(e),
                    concerns(e),
                    if self.is_new(e) {
                        " (new)".to_owned()
                    } else {
                        format!(" (open {})", age(self.now - e.first_seen))
                    }
                ));
                if !d.detail.is_empty() {
                    out.push_str(&format!("        {}\n", d.detail));
                }
                if !d.action.is_empty() {
                    out.push_str(&format!("        do: {}\n", d.action));
                }
            }
        }
        if !c.reads.is_empty() {
            let reads: Vec<String> = c
                .reads
                .iter()
                .map(|r| {
                    format!(
                        "{} {} ({}/min, waited {:.1}s)",
                        r.endpoint,
                        r.requests,
                        r.per_minute,
                        r.waited_ms as f64 / 1000.0
                    )
                })
                .collect();
            out.push_str(&format!(
                "read from Klaviyo in {:.1}s: {}\n",
                c.elapsed_ms as f64 / 1000.0,
                reads.join(", ")
            ));
        }
        out
    }

    /// One exception as one JSON object: what `--format jsonl` prints a line of.
    pub fn exception_json(&self, e: &ReadBackException) -> Json {
        let d = &e.discrepancy;
        json!({
            "id": e.label(),
            "class": d.class,
            "tier": d.class.tier(),
            "money_at_stake_cents": d.money_cents,
            "money_at_stake": d.currency.as_deref().map(|c| money(d.money_cents, c)),
            "currency": d.currency,
            "marketplace": d.marketplace,
            "order_id": d.order_id,
            "person": d.person,
            "profile_ids": d.profile_ids,
            "event_ids": d.event_ids,
            "flow_live": d.flow_live,
            "affected": d.affected,
            "happened_at": d.happened_at.map(iso),
            "first_seen": iso(e.first_seen),
            "last_seen": iso(e.last_seen),
            "times_seen": e.times_seen,
            "new": self.is_new(e),
            "repaired_automatically": d.class.repaired_automatically(),
            "detail": d.detail,
            "suggested_action": d.action,
            "owner": explain(d.class).owner,
            "key": d.key,
        })
    }

    /// Every open exception, one JSON object a line, most harmful first.
    pub fn jsonl(&self) -> String {
        self.open
            .iter()
            .map(|e| self.exception_json(e).to_string() + "\n")
            .collect()
    }

    /// The summary for a script (`reconcile --format json`'s `read_back`, `exceptions report
    /// --format json`): the run's figures, the trend, and every open exception.
    pub fn json(&self) -> Json {
        let c = &self.current;
        let classes: BTreeMap<&str, Json> = c
            .classes
            .iter()
            .map(|(class, f)| {
                (
                    class.name(),
                    json!({
                        "tier": class.tier(),
                        "found": f.found,
                        "new": f.opened,
                        "again": f.again,
                        "resolved": f.resolved,
                        "open": f.open,
                        "open_money_cents": f.open_money,
                    }),
                )
            })
            .collect();
        let open_by_tier: BTreeMap<&str, u64> = c
            .open_by_tier()
            .into_iter()
            .map(|(tier, n)| (tier.name(), n))
            .collect();
        json!({
            "run": c.run_id,
            "window": {"since": c.since, "until": c.until},
            "recorded_at": iso(c.recorded_at),
            "open_by_tier": open_by_tier,
            "fails": c.fails(),
            "classes": classes,
            "revenue": c.revenue_by_marketplace(),
            "revenue_days": c.revenue,
            "reads": c.reads,
            "elapsed_seconds": c.elapsed_ms as f64 / 1000.0,
            "previous_run": self.previous.as_ref().map(|p| json!({
                "run": p.run_id,
                "recorded_at": iso(p.recorded_at),
                "open_by_tier": p.open_by_tier().into_iter().map(|(t, n)| (t.name(), n)).collect::<BTreeMap<_, _>>(),
            })),
            "exceptions": self.open.iter().map(|e| self.exception_json(e)).collect::<Vec<_>>(),
            "resolved": self.resolved.iter().map(ReadBackException::label).collect::<Vec<_>>(),
        })
    }

    /// The weekly-review page, as one self-contained HTML document.
    pub fn html(&self) -> String {
        TEMPLATES
            .get_template("report.html")
            .and_then(|template| template.render(minijinja::value::Serde(self.view())))
            .expect("the report template renders")
    }

    fn view(&self) -> ReportView {
        let c = &self.current;
        let total = c.total();
        let classes = c
            .classes
            .iter()
            .filter(|(_, f)| f.open + f.found + f.resolved > 0)
            .map(|(class, f)| ClassRow {
                name: class.name(),
                title: explain(*class).title,
                tier: class.tier().name(),
                open: f.open,
                new: f.opened,
                resolved: f.resolved,
                money: money_total(&f.open_money),
            })
            .collect();
        let tiers = Tier::ALL
            .into_iter()
            .filter_map(|tier| {
                let open: Vec<&ReadBackException> =
                    self.open.iter().filter(|e| e.tier() == tier).collect();
                if open.is_empty() {
                    return None;
                }
                let (title, meaning) = tier_heading(tier);
                let classes = Class::ALL
                    .into_iter()
                    .filter(|class| class.tier() == tier)
                    .filter_map(|class| {
                        let of: Vec<&&ReadBackException> =
                            open.iter().filter(|e| e.class() == class).collect();
                        if of.is_empty() {
                            return None;
                        }
                        Some(ClassSection {
                            name: class.name(),
                            explanation: explain(class),
                            repaired: class.repaired_automatically(),
                            count: of.len(),
                            rows: of
                                .iter()
                                .take(HTML_PER_CLASS)
                                .map(|e| self.row(e))
                                .collect(),
                            more: of.len().saturating_sub(HTML_PER_CLASS),
                        })
                    })
                    .collect();
                Some(TierSection {
                    name: tier.name(),
                    title,
                    meaning,
                    count: open.len(),
                    classes,
                })
            })
            .collect();
        let trend = self.previous.as_ref().map(|p| {
            let mut rows: Vec<TrendRow> = Tier::ALL
                .into_iter()
                .map(|tier| {
                    let (was, now) = (p.tier(tier).open, c.tier(tier).open);
                    TrendRow {
                        what: format!("{} exceptions open", tier.name()),
                        was: was.to_string(),
                        now: now.to_string(),
                        change: change(was as i64, now as i64),
                        worse: now > was,
                    }
                })
                .collect();
            rows.push(TrendRow {
                what: "money at stake".into(),
                was: money_total(&p.total().open_money),
                now: money_total(&total.open_money),
                change: String::new(),
                worse: false,
            });
            let days = |s: &Summary| {
                let all = s.revenue.len();
                let ok = s.revenue.iter().filter(|d| aligned(d)).count();
                (ok, all)
            };
            let ((was_ok, was_all), (now_ok, now_all)) = (days(p), days(c));
            rows.push(TrendRow {
                what: "revenue days that add up".into(),
                was: format!("{was_ok} of {was_all}"),
                now: format!("{now_ok} of {now_all}"),
                change: String::new(),
                worse: now_all > 0 && now_ok * was_all.max(1) < was_ok * now_all,
            });
            TrendView {
                run: p.run_id,
                recorded: iso(p.recorded_at),
                rows,
            }
        });
        ReportView {
            generated: iso(self.now),
            run: c.run_id,
            since: c.since.clone(),
            until: c.until.clone(),
            fails: c.fails(),
            verdict: {
                let urgent: Vec<String> = [Tier::Compliance, Tier::Systemic]
                    .into_iter()
                    .filter(|t| c.tier(*t).open > 0)
                    .map(|t| format!("{} {}", c.tier(t).open, t.name()))
                    .collect();
                format!(
                    "{} {} open: start with the first section below.",
                    urgent.join(" and "),
                    if c.tier(Tier::Compliance).open + c.tier(Tier::Systemic).open == 1 {
                        "exception"
                    } else {
                        "exceptions"
                    }
                )
            },
            open_by_tier: Tier::ALL
                .into_iter()
                .map(|t| TierCount {
                    name: t.name(),
                    count: c.tier(t).open,
                })
                .collect(),
            total_open: total.open,
            total_new: total.opened,
            total_resolved: total.resolved,
            total_money: money_total(&total.open_money),
            classes,
            marketplaces: c
                .revenue_by_marketplace()
                .iter()
                .map(|m| RevenueChart::of(m, c))
                .collect(),
            trend,
            tiers,
            resolved: self.resolved.iter().map(|e| self.row(e)).collect(),
            reads: c
                .reads
                .iter()
                .map(|r| ReadRow {
                    endpoint: r.endpoint.clone(),
                    requests: r.requests,
                    per_minute: r.per_minute,
                    waited: format!("{:.1} s", r.waited_ms as f64 / 1000.0),
                })
                .collect(),
            elapsed: format!("{:.1} s", c.elapsed_ms as f64 / 1000.0),
        }
    }

    fn row(&self, e: &ReadBackException) -> ExceptionRow {
        let d = &e.discrepancy;
        ExceptionRow {
            id: e.label(),
            class: d.class.name(),
            concerns: concerns(e),
            detail: d.detail.clone(),
            action: d.action.clone(),
            money: stake(e),
            first_seen: iso(e.first_seen),
            age: age(self.now - e.first_seen),
            new: self.is_new(e),
            times_seen: e.times_seen,
            resolved: e.closed.as_ref().map(|r| r.describe()),
        }
    }
}

/// What an exception is about, shortly: `order 5001 (petmarket), zoe@example.com`.
pub fn concerns(e: &ReadBackException) -> String {
    let d = &e.discrepancy;
    let mut parts = Vec::new();
    match (&d.order_id, &d.marketplace) {
        (Some(order), Some(m)) => parts.push(format!("order {order} ({m})")),
        (Some(order), None) => parts.push(format!("order {order}")),
        (None, Some(m)) if d.person.is_none() => parts.push(m.clone()),
        _ => {}
    }
    if let Some(person) = &d.person {
        parts.push(person.clone());
    }
    if d.affected > 1 {
        parts.push(format!("{} affected", d.affected));
    }
    if parts.is_empty() {
        d.key.clone()
    } else {
        parts.join(", ")
    }
}

/// The money at stake of one exception, `-` when none.
pub fn stake(e: &ReadBackException) -> String {
    let d = &e.discrepancy;
    if d.money_cents == 0 {
        "-".to_owned()
    } else {
        money(d.money_cents, d.currency.as_deref().unwrap_or_default())
    }
}

/// `petmarket: 7 days, 312 orders: AUD 45,210.00 in Marketplacer, AUD 44,988.50 in Klaviyo
/// (-AUD 221.50); 6 of 7 days add up`.
pub fn revenue_line(m: &MarketplaceRevenue) -> String {
    let difference = m.difference_cents();
    format!(
        "{}: {}, {}: {} in Marketplacer, {} in Klaviyo ({}); {}",
        m.marketplace,
        plural(m.days, "day"),
        plural(m.orders, "order"),
        money(m.marketplacer_cents, &m.currency),
        money(m.klaviyo_cents, &m.currency),
        if difference == 0 {
            "no difference".to_owned()
        } else {
            let sign = if difference > 0 { "+" } else { "" };
            format!("{sign}{}", money(difference, &m.currency))
        },
        adding_up(m)
    )
}

/// `6 of 7 days add up`, or for one day whether it does.
fn adding_up(m: &MarketplaceRevenue) -> String {
    match (m.days, m.aligned_days) {
        (1, 1) => "the day adds up".to_owned(),
        (1, _) => "the day does not add up".to_owned(),
        (days, aligned) => format!("{aligned} of {days} days add up"),
    }
}

/// The revenue a run compared, per marketplace, in one line: `petmarket AUD 54,822.76 in
/// Klaviyo of AUD 55,005.16 (-AUD 182.40), 6 of 7 days add up; homewares ...`.
pub fn revenue_alignment(summary: &Summary) -> String {
    let marketplaces = summary.revenue_by_marketplace();
    if marketplaces.is_empty() {
        return "no revenue compared".to_owned();
    }
    marketplaces
        .iter()
        .map(|m| {
            let difference = m.difference_cents();
            format!(
                "{} {} in Klaviyo of {}{}, {}",
                m.marketplace,
                money(m.klaviyo_cents, &m.currency),
                money(m.marketplacer_cents, &m.currency),
                if difference == 0 {
                    String::new()
                } else {
                    let sign = if difference > 0 { "+" } else { "" };
                    format!(" ({sign}{})", money(difference, &m.currency))
                },
                adding_up(m)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `compliance 0 -> 1, systemic 2 -> 3, ...; money at stake AUD 12.00 -> AUD 30.00`.
pub fn trend_line(previous: &Summary, current: &Summary) -> String {
    let tiers: Vec<String> = Tier::ALL
        .into_iter()
        .map(|t| {
            format!(
                "{} {} -> {}",
                t.name(),
                previous.tier(t).open,
                current.tier(t).open
            )
        })
        .collect();
    format!(
        "{}; money at stake {} -> {}",
        tiers.join(", "),
        money_total(&previous.total().open_money),
        money_total(&current.total().open_money)
    )
}

fn change(was: i64, now: i64) -> String {
    match now - was {
        0 => "same".to_owned(),
        d if d > 0 => format!("+{d}"),
        d => d.to_string(),
    }
}

fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// How long ago, shortly: `45s`, `12m`, `5h`, `3d`.
fn age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3_600 => format!("{}m", s / 60),
        3_600..86_400 => format!("{}h", s / 3_600),
        _ => format!("{}d", s / 86_400),
    }
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    // The `.html` name turns on HTML auto-escaping of every value.
    env.add_template("report.html", include_str!("report.html"))
        .expect("the report template parses");
    env
});

#[derive(Serialize)]
struct ReportView {
    generated: String,
    run: i64,
    since: String,
    until: String,
    fails: bool,
    /// What to do first, when a compliance or systemic exception is open.
    verdict: String,
    open_by_tier: Vec<TierCount>,
    total_open: u64,
    total_new: u64,
    total_resolved: u64,
    total_money: String,
    classes: Vec<ClassRow>,
    marketplaces: Vec<RevenueChart>,
    trend: Option<TrendView>,
    tiers: Vec<TierSection>,
    resolved: Vec<ExceptionRow>,
    reads: Vec<ReadRow>,
    elapsed: String,
}

#[derive(Serialize)]
struct TierCount {
    name: &'static str,
    count: u64,
}

#[derive(Serialize)]
struct ClassRow {
    name: &'static str,
    title: &'static str,
    tier: &'static str,
    open: u64,
    new: u64,
    resolved: u64,
    money: String,
}

#[derive(Serialize)]
struct TrendView {
    run: i64,
    recorded: String,
    rows: Vec<TrendRow>,
}

#[derive(Serialize)]
struct TrendRow {
    what: String,
    was: String,
    now: String,
    change: String,
    worse: bool,
}

#[derive(Serialize)]
struct TierSection {
    name: &'static str,
    title: &'static str,
    meaning: &'static str,
    count: usize,
    classes: Vec<ClassSection>,
}

#[derive(Serialize)]
struct ClassSection {
    name: &'static str,
    explanation: Explanation,
    repaired: bool,
    count: usize,
    rows: Vec<ExceptionRow>,
    more: usize,
}

#[derive(Serialize)]
struct ExceptionRow {
    id: String,
    class: &'static str,
    concerns: String,
    detail: String,
    action: String,
    money: String,
    first_seen: String,
    age: String,
    new: bool,
    times_seen: u64,
    resolved: Option<String>,
}

#[derive(Serialize)]
struct ReadRow {
    endpoint: String,
    requests: u64,
    per_minute: u32,
    waited: String,
}

/// One marketplace's daily revenue, both sides, as SVG bars.
#[derive(Serialize)]
struct RevenueChart {
    marketplace: String,
    summary: String,
    width: u32,
    height: u32,
    /// The amount at the top of the chart.
    top: String,
    days: Vec<ChartDay>,
}

#[derive(Serialize)]
struct ChartDay {
    /// `11-30`.
    label: String,
    day: String,
    x: f64,
    bar_width: f64,
    /// Marketplacer's bar and Klaviyo's: top and height.
    marketplacer: (f64, f64),
    klaviyo: (f64, f64),
    marketplacer_text: String,
    klaviyo_text: String,
    aligned: bool,
}

impl RevenueChart {
    const WIDTH: u32 = 1000;
    const HEIGHT: u32 = 180;

    fn of(m: &MarketplaceRevenue, summary: &Summary) -> RevenueChart {
        let mut days: Vec<_> = summary
            .revenue
            .iter()
            .filter(|d| d.marketplace == m.marketplace)
            .collect();
        days.sort_by(|a, b| a.day.cmp(&b.day));
        let highest = days
            .iter()
            .map(|d| d.marketplacer_cents.max(d.klaviyo_cents))
            .max()
            .unwrap_or(0)
            .max(1);
        // A round top: the highest day rounded up to 1, 2 or 5 times a power of ten.
        let top = {
            let mut step = 1i64;
            loop {
                if let Some(top) = [step, 2 * step, 5 * step]
                    .into_iter()
                    .find(|t| *t >= highest)
                {
                    break top;
                }
                step *= 10;
            }
        };
        let (width, height) = (f64::from(Self::WIDTH), f64::from(Self::HEIGHT));
        let slot = width / days.len().max(1) as f64;
        let bar_width = (slot * 0.36).floor().max(2.0);
        let bar = |cents: i64| {
            let h = (cents.max(0) as f64 / top as f64 * height).round();
            (height - h, h)
        };
        RevenueChart {
            marketplace: m.marketplace.clone(),
            summary: revenue_line(m),
            width: Self::WIDTH,
            height: Self::HEIGHT,
            top: money(top, &m.currency),
            days: days
                .iter()
                .enumerate()
                .map(|(at, d)| ChartDay {
                    label: d.day.get(5..).unwrap_or(&d.day).to_owned(),
                    day: d.day.clone(),
                    x: (at as f64 * slot + slot * 0.12).round(),
                    bar_width,
                    marketplacer: bar(d.marketplacer_cents),
                    klaviyo: bar(d.klaviyo_cents),
                    marketplacer_text: money(d.marketplacer_cents, &d.currency),
                    klaviyo_text: money(d.klaviyo_cents, &d.currency),
                    aligned: aligned(d),
                })
                .collect(),
        }
    }
}
