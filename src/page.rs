//! The status page behind `GET /` on serve's admin address: for the CX or marketing lead who
//! wants to know, without a terminal, whether events are reaching Klaviyo in time.
//!
//! The page is built from a plain [`Snapshot`] read from the store (the same figures
//! `marketsync status` prints, so the two never disagree) and rendered by a minijinja template
//! whose `.html` name turns on auto-escaping: every string from data (a category, a mapping, an
//! alert's message) is escaped by the template engine, not by hand at each use. The page is
//! self-contained (inline CSS and SVG, no script) and refreshes itself, so it can be left open
//! on a screen. What reading Klaviyo back left open is a card of counts by tier linking to the
//! weekly report (`/report`, [`crate::reconcile::report`]), which has the people and orders.

use crate::lag::{self, LaneLag};
use crate::reconcile::exceptions::Summary;
use crate::reconcile::impact::Tier;
use crate::reconcile::report::revenue_alignment;
use crate::store::{Status, Store, StoreError};
use minijinja::Environment;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::LazyLock;

/// How often the page reloads itself, in seconds.
pub const REFRESH_SECS: u32 = 30;
/// The window of the lag chart and of the lag figures beside it.
pub const HOUR_MS: i64 = 60 * 60 * 1000;
/// At most this many sent requests are read for the lag of the last hour: the newest ones,
/// which are what a lag figure needs (a busy hour holds many more).
pub const LAG_SAMPLE_LIMIT: usize = 200_000;
/// A lane whose oldest waiting request is older than this is shown in amber. Only a colour:
/// whether it is worth waking someone is for the alerts to say.
const WAITING_TOO_LONG_MS: i64 = 5 * 60 * 1000;

/// An alert firing now, as the built-in alerts report it (and as `GET /alerts` lists it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FiringAlert {
    /// The condition's short name, e.g. `klaviyo-key-refused`.
    pub name: String,
    /// When it started firing (unix ms).
    pub since: i64,
    /// What is wrong and the first thing to do, in plain words.
    pub message: String,
}

/// Everything the page shows, read at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// When it was read (unix ms); "3 minutes ago" counts from here.
    pub now: i64,
    pub status: Status,
    /// Lag by lane over the last hour, minute by minute.
    pub lag: BTreeMap<String, LaneLag>,
    pub alerts: Vec<FiringAlert>,
    /// The last reconciliation that read Klaviyo back; the open exceptions are in `status`.
    pub read_back: Option<Summary>,
}

impl Snapshot {
    /// The store's figures at `now`, with the alerts firing.
    pub fn read(store: &Store, now: i64, alerts: Vec<FiringAlert>) -> Result<Snapshot, StoreError> {
        let status = store.status(now)?;
        let since = now - HOUR_MS;
        let lag = lag::by_lane(&store.sent_since(since, LAG_SAMPLE_LIMIT)?, since);
        let read_back = store.last_read_backs(1)?.into_iter().next();
        Ok(Snapshot {
            now,
            status,
            lag,
            alerts,
            read_back,
        })
    }
}

/// The lanes every installation has, in the order shown, with what they carry.
const LANES: [(&str, &str); 2] = [
    ("transaction", "Orders and other events"),
    ("profile", "Profiles and consent"),
];

static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    // The `.html` name turns on HTML auto-escaping of every value.
    env.add_template("status.html", include_str!("page.html"))
        .expect("the status page template parses");
    env.add_template("customer.html", include_str!("customer.html"))
        .expect("the customer page template parses");
    env
});

/// The page, as one HTML document.
pub fn render(snapshot: &Snapshot) -> String {
    TEMPLATES
        .get_template("status.html")
        .and_then(|template| template.render(minijinja::value::Serde(View::of(snapshot))))
        .expect("the status page renders")
}

/// The customer page (`GET /customer?q=…` on the admin address): a search box, and the
/// person's history when one was asked for. `problem` is why the query could not be read.
pub fn render_customer(
    query: &str,
    view: Option<&crate::customer::CustomerView>,
    problem: Option<&str>,
) -> String {
    let context = match view {
        None => minijinja::context! { query => query, problem => problem, found => false },
        Some(view) => {
            let join = |items: &[String]| {
                if items.is_empty() {
                    "none".to_owned()
                } else {
                    items.join(", ")
                }
            };
            let timeline: Vec<serde_json::Value> = view
                .timeline
                .iter()
                .map(|entry| {
                    let mut value = serde_json::to_value(entry).expect("an entry serialises");
                    for (i, request) in entry.requests.iter().enumerate() {
                        value["requests"][i]["label"] = request.status.label().into();
                    }
                    value
                })
                .collect();
            let consent: Vec<serde_json::Value> = view
                .consent
                .iter()
                .map(|row| {
                    let mut value = serde_json::to_value(row).expect("evidence serialises");
                    value["outcome_label"] = row.outcome.replace('-', " ").into();
                    value
                })
                .collect();
            let attention: Vec<String> = view
                .open_dead_letters
                .iter()
                .chain(&view.open_exceptions)
                .cloned()
                .collect();
            minijinja::context! {
                query => query,
                problem => problem,
                found => view.found,
                person => view.lookup.value().to_owned(),
                emails => join(&view.identity.emails),
                phones => join(&view.identity.phones),
                marketplaces => join(&view.identity.marketplaces),
                timeline => minijinja::value::Serde(&timeline),
                consent => minijinja::value::Serde(&consent),
                attention => attention,
                older_left_out => view.older_left_out,
                index_incomplete => view.index_incomplete,
            }
        }
    };
    TEMPLATES
        .get_template("customer.html")
        .and_then(|template| template.render(context))
        .expect("the customer page renders")
}

#[derive(Serialize)]
struct View {
    refresh_secs: u32,
    generated: String,
    problems: Vec<String>,
    alerts: Vec<AlertView>,
    lanes: Vec<LaneView>,
    dead_letters: Vec<Count>,
    dead_letters_total: usize,
    exceptions: Vec<Count>,
    exceptions_total: usize,
    last_delivery: String,
    endpoints: Vec<EndpointView>,
    read_back: Option<ReadBackView>,
}

/// The read-back card: open exceptions by tier and the last run's revenue.
#[derive(Serialize)]
struct ReadBackView {
    tiers: Vec<Count>,
    urgent: bool,
    when: String,
    revenue: String,
}

#[derive(Serialize)]
struct AlertView {
    name: String,
    message: String,
    since: String,
}

#[derive(Serialize)]
struct LaneView {
    name: String,
    label: String,
    depth: usize,
    oldest: String,
    waiting_too_long: bool,
    lag: Option<LagView>,
    chart: Chart,
}

#[derive(Serialize)]
struct LagView {
    count: usize,
    p50: String,
    p99: String,
    max: String,
}

/// An SVG line of p99 per minute over the last hour.
#[derive(Serialize)]
struct Chart {
    width: u32,
    height: u32,
    /// `x,y` pairs for a polyline.
    points: String,
    dots: Vec<(f64, f64)>,
    /// The lag at the top of the chart.
    top: String,
}

#[derive(Serialize)]
struct Count {
    category: String,
    count: usize,
}

#[derive(Serialize)]
struct EndpointView {
    endpoint: String,
    ago: String,
    at: String,
}

impl View {
    fn of(snapshot: &Snapshot) -> View {
        let now = snapshot.now;
        let status = &snapshot.status;
        let mut names: Vec<String> = LANES.iter().map(|(name, _)| (*name).to_owned()).collect();
        for name in status.lanes.keys().chain(snapshot.lag.keys()) {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        let lanes: Vec<LaneView> = names
            .into_iter()
            .map(|name| {
                let waiting = status.lanes.get(&name).copied().unwrap_or_default();
                let lag = snapshot.lag.get(&name);
                let label = LANES
                    .iter()
                    .find(|(known, _)| *known == name)
                    .map_or(name.as_str(), |(_, label)| label)
                    .to_owned();
                LaneView {
                    label,
                    depth: waiting.depth,
                    oldest: if waiting.depth == 0 {
                        "nothing waiting".to_owned()
                    } else {
                        format!("oldest waiting {}", duration(waiting.oldest_age))
                    },
                    waiting_too_long: waiting.depth > 0 && waiting.oldest_age > WAITING_TOO_LONG_MS,
                    lag: lag.and_then(|l| l.overall.as_ref()).map(|f| LagView {
                        count: f.count,
                        p50: duration(f.p50_ms),
                        p99: duration(f.p99_ms),
                        max: duration(f.max_ms),
                    }),
                    chart: Chart::of(lag, now),
                    name,
                }
            })
            .collect();
        let counts = |map: &BTreeMap<String, usize>| -> Vec<Count> {
            map.iter()
                .map(|(category, count)| Count {
                    category: category.clone(),
                    count: *count,
                })
                .collect()
        };
        let dead_letters_total: usize = status.dead_letters.values().sum();
        let mut problems = Vec::new();
        for alert in &snapshot.alerts {
            problems.push(format!("Alert: {}", alert.name));
        }
        for lane in lanes.iter().filter(|l| l.waiting_too_long) {
            problems.push(format!("{}: {}", lane.label, lane.oldest));
        }
        if dead_letters_total > 0 {
            problems.push(format!(
                "{} could not be sent (dead {})",
                plural(dead_letters_total, "request"),
                if dead_letters_total == 1 {
                    "letter"
                } else {
                    "letters"
                }
            ));
        }
        if status.exceptions > 0 {
            problems.push(format!(
                "{} to review",
                plural(status.exceptions, "exception")
            ));
        }
        let tiers = status.read_back_by_tier();
        let urgent: Vec<String> = [Tier::Compliance, Tier::Systemic]
            .into_iter()
            .filter(|t| tiers[t] > 0)
            .map(|t| format!("{} {}", tiers[&t], t.name()))
            .collect();
        if !urgent.is_empty() {
            problems.push(format!(
                "Read back from Klaviyo: {} open (see the weekly report)",
                urgent.join(" and ")
            ));
        }
        let read_back = snapshot.read_back.as_ref().map(|last| ReadBackView {
            tiers: tiers
                .iter()
                .map(|(tier, count)| Count {
                    category: tier.name().to_owned(),
                    count: *count as usize,
                })
                .collect(),
            urgent: !urgent.is_empty(),
            when: ago(last.recorded_at, now),
            revenue: revenue_alignment(last),
        });
        View {
            refresh_secs: REFRESH_SECS,
            generated: iso(now),
            problems,
            alerts: snapshot
                .alerts
                .iter()
                .map(|a| AlertView {
                    name: a.name.clone(),
                    message: a.message.clone(),
                    since: ago(a.since, now),
                })
                .collect(),
            lanes,
            dead_letters: counts(&status.dead_letters),
            dead_letters_total,
            exceptions: counts(&status.exceptions_by_category),
            exceptions_total: status.exceptions,
            last_delivery: status
                .last_delivery
                .map_or("none received yet".to_owned(), |at| ago(at, now)),
            endpoints: status
                .last_success
                .iter()
                .map(|(endpoint, at)| EndpointView {
                    endpoint: endpoint.clone(),
                    ago: ago(*at, now),
                    at: iso(*at),
                })
                .collect(),
            read_back,
        }
    }
}

impl Chart {
    const WIDTH: u32 = 360;
    const HEIGHT: u32 = 80;

    fn of(lag: Option<&LaneLag>, now: i64) -> Chart {
        let minutes = lag.map_or(&[][..], |l| &l.minutes[..]);
        // The top is a round number of seconds, at least one, so a quiet lane's line sits low.
        let highest = minutes.iter().map(|p| p.figures.p99_ms).max().unwrap_or(0);
        let top = ((highest + 999) / 1000).max(1) * 1000;
        let start = now - HOUR_MS;
        let (width, height) = (f64::from(Self::WIDTH), f64::from(Self::HEIGHT));
        let dots: Vec<(f64, f64)> = minutes
            .iter()
            .map(|p| {
                // Each minute is drawn at its middle.
                let x = ((p.minute + 30_000 - start) as f64 / HOUR_MS as f64).clamp(0.0, 1.0);
                let y = 1.0 - p.figures.p99_ms as f64 / top as f64;
                ((x * width).round(), (y * height).round())
            })
            .collect();
        Chart {
            width: Self::WIDTH,
            height: Self::HEIGHT,
            points: dots
                .iter()
                .map(|(x, y)| format!("{x},{y}"))
                .collect::<Vec<_>>()
                .join(" "),
            dots,
            top: duration(top),
        }
    }
}

fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// A span in the largest unit that keeps it readable: "800 ms", "4.2 seconds", "3 minutes".
pub fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    let whole = |n: i64, unit: &str| plural(n as usize, unit);
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..10_000 => format!("{:.1} seconds", ms as f64 / 1000.0),
        10_000..120_000 => whole(ms / 1000, "second"),
        120_000..7_200_000 => whole(ms / 60_000, "minute"),
        7_200_000..172_800_000 => whole(ms / 3_600_000, "hour"),
        _ => whole(ms / 86_400_000, "day"),
    }
}

/// "3 minutes ago", or "just now" for the last few seconds.
pub fn ago(at: i64, now: i64) -> String {
    let since = now - at;
    if since < 5_000 {
        "just now".to_owned()
    } else {
        format!("{} ago", duration(since))
    }
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lag::{LagFigures, LagPoint};
    use crate::store::LaneStatus;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn an_idle_store_reads_everything_is_fine() {
        let page = render(&Snapshot {
            now: NOW,
            ..Snapshot::default()
        });
        assert!(page.contains("Everything is fine"), "{page}");
        assert!(page.contains(&format!(
            r#"<meta http-equiv="refresh" content="{REFRESH_SECS}">"#
        )));
        assert!(page.contains("Orders and other events"));
        assert!(page.contains("nothing waiting"));
        assert!(page.contains("none received yet"));
        assert!(!page.contains("<script"), "no script on the page");
        assert!(
            !page.contains("http://") && !page.contains("https://"),
            "no external asset"
        );
    }

    #[test]
    fn problems_are_named_and_data_is_escaped() {
        let mut status = Status::default();
        status.lanes.insert(
            "transaction".into(),
            LaneStatus {
                depth: 12,
                oldest_age: 20 * 60_000,
            },
        );
        status
            .dead_letters
            .insert("<script>alert(1)</script>".into(), 3);
        status
            .exceptions_by_category
            .insert("phone-removed".into(), 2);
        status.exceptions = 2;
        let page = render(&Snapshot {
            now: NOW,
            status,
            lag: BTreeMap::new(),
            alerts: vec![FiringAlert {
                name: "placed-order-lag".into(),
                since: NOW - 3 * 60_000,
                message: "Orders are late <img src=x onerror=alert(1)> & \"quoted\"".into(),
            }],
            read_back: None,
        });
        assert!(!page.contains("Everything is fine"));
        assert!(page.contains("placed-order-lag"));
        assert!(page.contains("3 minutes ago"));
        assert!(page.contains("oldest waiting 20 minutes"));
        assert!(page.contains("3 requests could not be sent"));
        assert!(page.contains("2 exceptions to review"));
        assert!(!page.contains("<script>alert(1)"), "{page}");
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
            "{page}"
        );
        assert!(!page.contains("<img src=x"));
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt; &amp; &quot;quoted&quot;"));
    }

    /// Issue 17: open read-back exceptions by tier, the banner naming the compliance and
    /// systemic ones, and the way to the weekly report.
    #[test]
    fn the_read_back_card_counts_by_tier_and_links_the_report() {
        use crate::reconcile::impact::{Class, RevenueDay};
        let page = render(&Snapshot {
            now: NOW,
            ..Snapshot::default()
        });
        assert!(page.contains("No reconciliation has read Klaviyo back yet"));
        let mut status = Status::default();
        status.read_back_open.insert(
            Class::SubscribedWithoutEvidence,
            (1, [("AUD".to_owned(), 0)].into()),
        );
        status.read_back_open.insert(
            Class::MissingPlacedOrder,
            (4, [("AUD".to_owned(), 40_000)].into()),
        );
        let last = Summary {
            recorded_at: NOW - 3 * 3_600_000,
            revenue: vec![RevenueDay {
                marketplace: "petmarket".into(),
                day: "2027-01-15".into(),
                currency: "AUD".into(),
                orders: 40,
                marketplacer_cents: 500_000,
                klaviyo_cents: 480_000,
            }],
            ..Summary::default()
        };
        let page = render(&Snapshot {
            now: NOW,
            status,
            read_back: Some(last),
            ..Snapshot::default()
        });
        assert!(page.contains("Needs attention"));
        assert!(
            page.contains(
                "<li>Read back from Klaviyo: 1 compliance open (see the weekly report)</li>"
            ),
            "{page}"
        );
        let card = &page[page.find("id=\"read-back\"").unwrap()..];
        assert!(
            card.contains("<td>compliance</td><td class=\"count bad\">1</td>"),
            "{card}"
        );
        assert!(
            card.contains("<td>money</td><td class=\"count warn\">4</td>"),
            "{card}"
        );
        assert!(
            card.contains("<td>systemic</td><td class=\"count\">0</td>"),
            "{card}"
        );
        assert!(card.contains("(3 hours ago)"), "{card}");
        assert!(
            card.contains("petmarket AUD 4,800.00 in Klaviyo of AUD 5,000.00 (-AUD 200.00), the day does not add up"),
            "{card}"
        );
        assert!(card.contains("<a href=\"/report\">"), "{card}");
    }

    #[test]
    fn the_chart_draws_p99_per_minute_across_the_hour() {
        let minute = |m: i64, p99_ms: i64| LagPoint {
            minute: NOW - HOUR_MS + m * 60_000,
            figures: LagFigures {
                count: 1,
                p50_ms: 1,
                p99_ms,
                max_ms: p99_ms,
            },
        };
        let lag = LaneLag {
            overall: LagFigures::of([1_500, 3_200]),
            minutes: vec![minute(0, 1_500), minute(59, 3_200)],
        };
        let chart = Chart::of(Some(&lag), NOW);
        // The top is 4 s: 3.2 s rounded up to a whole second.
        assert_eq!(chart.top, "4.0 seconds");
        assert_eq!(chart.points, "3,50 357,16");
        let empty = Chart::of(None, NOW);
        assert!(empty.points.is_empty());
        assert_eq!(empty.top, "1.0 seconds");
    }

    #[test]
    fn spans_read_in_plain_words() {
        assert_eq!(duration(800), "800 ms");
        assert_eq!(duration(4_200), "4.2 seconds");
        assert_eq!(duration(61_000), "61 seconds");
        assert_eq!(duration(3 * 60_000 + 5), "3 minutes");
        assert_eq!(duration(5 * 3_600_000), "5 hours");
        assert_eq!(duration(3 * 86_400_000), "3 days");
        assert_eq!(ago(NOW - 1_000, NOW), "just now");
        assert_eq!(ago(NOW - 60 * 60_000, NOW), "60 minutes ago");
    }
}
