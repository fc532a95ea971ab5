//! Issue 17: read-back exceptions with a lifecycle. Open when a run finds them, found again
//! by later runs, resolved by a later run that looked where they would be and did not find
//! them (and only then), or by a person with a reason; each run's summary kept for the trend.

mod common;

use common::read_back::{DAY, GAP_DAY, WEEK_START, findings, finished_run, revenue, week};
use marketsync::reconcile::exceptions::{Checked, Resolution};
use marketsync::reconcile::impact::{Class, ReadBack, Tier};
use marketsync::store::{ReadBackFilter, Store, StoreError};
use std::collections::BTreeSet;

const HOUR: i64 = 3_600_000;

/// What a run over `[since, until)` of petmarket checked, with the days `read_back` compared.
fn checked(since: i64, until: i64, read_back: &ReadBack) -> Checked {
    Checked {
        since,
        until,
        marketplaces: ["petmarket".to_owned()].into(),
        classes: Class::ALL.into_iter().collect(),
        people: BTreeSet::new(),
        revenue_days: read_back
            .revenue
            .iter()
            .map(|d| (d.marketplace.clone(), d.day.clone()))
            .collect(),
    }
}

/// Records `read_back` as a run over `[since, until)` finished at `now`.
fn record(
    store: &mut Store,
    (since, until): (i64, i64),
    read_back: &ReadBack,
    now: i64,
) -> marketsync::reconcile::exceptions::Lifecycle {
    let run = finished_run(store, since, until, now);
    store
        .record_read_back(run, &checked(since, until, read_back), read_back, now)
        .unwrap()
}

fn open_keys(store: &Store) -> Vec<String> {
    store
        .open_read_back_exceptions(&ReadBackFilter::default())
        .unwrap()
        .into_iter()
        .map(|e| e.discrepancy.key)
        .collect()
}

const WEEK: (i64, i64) = (WEEK_START, WEEK_START + 7 * DAY);
const RECORDED: i64 = WEEK_START + 7 * DAY + HOUR;

#[test]
fn a_week_opens_one_exception_per_class_most_harmful_first() {
    let mut store = Store::in_memory().unwrap();
    let lifecycle = record(&mut store, WEEK, &week(), RECORDED);
    assert_eq!(lifecycle.opened.len(), Class::ALL.len());
    assert!(lifecycle.again.is_empty() && lifecycle.resolved.is_empty());

    let open = store
        .open_read_back_exceptions(&ReadBackFilter::default())
        .unwrap();
    let classes: Vec<Class> = open.iter().map(|e| e.class()).collect();
    assert_eq!(
        classes,
        [
            Class::SubscribedWithoutEvidence,
            // AUD 31,184.00 of double-counted orders, the gap's AUD 182.40, then 23 missed
            // shipping emails at AUD 2.51 each.
            Class::DoubleSource,
            Class::RevenueGap,
            Class::WebhookDisabled,
            // AUD 184.91 (the order and its missed flow), 49.95, 29.90, 25.00, then two
            // missed flow emails of AUD 2.51 (by key), then consent with no money.
            Class::MissingPlacedOrder,
            Class::MissingRefund,
            Class::OrphanedRefund,
            Class::WrongOrderValue,
            Class::MissingFulfilledOrder,
            Class::TrackingMissing,
            Class::ConsentMissed,
            // No money: by key.
            Class::AttributeDrift,
            Class::DuplicateProfile,
        ],
        "compliance, then systemic by money, then records by money, then hygiene"
    );
    let missing = &open[4];
    assert_eq!(missing.discrepancy.order_id.as_deref(), Some("5001"));
    // AUD 182.40 and, with a live post-purchase flow, 1.71% of the average order.
    assert_eq!(missing.discrepancy.money_cents, 18_240 + 251);
    assert_eq!(
        (
            missing.first_seen,
            missing.times_seen,
            missing.closed.clone()
        ),
        (RECORDED, 1, None)
    );

    let summary = &lifecycle.summary;
    assert_eq!(summary.since, "2026-11-24T00:00:00Z");
    assert_eq!(summary.until, "2026-12-01T00:00:00Z");
    assert_eq!(summary.classes.len(), Class::ALL.len());
    for figures in summary.classes.values() {
        assert_eq!((figures.found, figures.opened, figures.open), (1, 1, 1));
    }
    assert_eq!(
        summary.open_by_tier(),
        [
            (Tier::Compliance, 1),
            (Tier::Systemic, 3),
            (Tier::Money, 7),
            (Tier::Hygiene, 2)
        ]
        .into()
    );
    assert!(summary.fails());
    let money = summary.tier(Tier::Money).open_money["AUD"];
    let expected: i64 = findings()
        .iter()
        .filter(|d| d.class.tier() == Tier::Money)
        .map(|d| d.money_cents)
        .sum();
    assert_eq!(money, expected);
    assert_eq!(summary.revenue, revenue());
    assert_eq!(
        store.last_read_backs(5).unwrap(),
        std::slice::from_ref(summary)
    );
}

#[test]
fn found_again_keeps_the_id_and_first_sighting_and_takes_the_latest_finding() {
    let mut store = Store::in_memory().unwrap();
    let first = record(&mut store, WEEK, &week(), RECORDED);
    let mut again = week();
    let moved = again
        .discrepancies
        .iter_mut()
        .find(|d| d.class == Class::WrongOrderValue)
        .unwrap();
    moved.money_cents = 3_000;
    moved.detail = "now off by AUD 30.00".into();
    let second = record(&mut store, WEEK, &again, RECORDED + DAY);
    assert!(second.opened.is_empty());
    assert!(second.resolved.is_empty());
    assert_eq!(
        second.again.iter().collect::<BTreeSet<_>>(),
        first.opened.iter().collect::<BTreeSet<_>>()
    );
    let wrong = store
        .open_read_back_exceptions(&ReadBackFilter {
            class: Some(Class::WrongOrderValue),
            ..ReadBackFilter::default()
        })
        .unwrap();
    assert_eq!(wrong.len(), 1);
    let wrong = &wrong[0];
    assert_eq!(
        (wrong.first_seen, wrong.last_seen, wrong.times_seen),
        (RECORDED, RECORDED + DAY, 2)
    );
    assert_eq!(wrong.discrepancy.detail, "now off by AUD 30.00");
    assert_eq!(
        second.summary.classes[&Class::WrongOrderValue].open_money["AUD"],
        3_000
    );
    assert_eq!(second.summary.total().again, 13);
}

/// The heart of the lifecycle: a run resolves only what it looked for.
#[test]
fn a_later_run_resolves_only_what_it_covered() {
    let mut store = Store::in_memory().unwrap();
    record(&mut store, WEEK, &week(), RECORDED);

    // The next day, of petmarket, finds nothing. Systemic findings are checked every run: gone.
    // The week's records happened outside this window and their people were not read; the gap
    // day was not compared. All stay open.
    let next_day = ReadBack {
        revenue: vec![],
        ..ReadBack::default()
    };
    let day = record(
        &mut store,
        (WEEK_START + 7 * DAY, WEEK_START + 8 * DAY),
        &next_day,
        RECORDED + DAY,
    );
    let resolved: BTreeSet<Class> = day
        .resolved
        .iter()
        .map(|id| store.find_read_back_exception(*id).unwrap().class())
        .collect();
    assert_eq!(
        resolved,
        [Class::DoubleSource, Class::WebhookDisabled].into()
    );
    assert_eq!(open_keys(&store).len(), 11);
    let double = store.find_read_back_exception(day.resolved[0]).unwrap();
    assert_eq!(
        double.closed,
        Some(Resolution::Run {
            run_id: day.summary.run_id,
            at: RECORDED + DAY
        })
    );

    // Another marketplace's run over the same week resolves none of petmarket's.
    let run = finished_run(&mut store, WEEK.0, WEEK.1, RECORDED + 2 * DAY);
    let mut homewares = checked(WEEK.0, WEEK.1, &ReadBack::default());
    homewares.marketplaces = ["homewares".to_owned()].into();
    let other = store
        .record_read_back(run, &homewares, &ReadBack::default(), RECORDED + 2 * DAY)
        .unwrap();
    let kept: BTreeSet<Class> = other
        .resolved
        .iter()
        .map(|id| store.find_read_back_exception(*id).unwrap().class())
        .collect();
    // Only those of no marketplace (a person's profiles) that happened in the week.
    assert_eq!(
        kept,
        [Class::DuplicateProfile, Class::AttributeDrift].into()
    );

    // The week again, after the repairs: only what is not repaired automatically is found.
    let mut after = week();
    after
        .discrepancies
        .retain(|d| !d.class.repaired_automatically() && d.class != Class::RevenueGap);
    after.revenue.iter_mut().for_each(|d| {
        d.klaviyo_cents = d.marketplacer_cents;
    });
    let repaired = record(&mut store, WEEK, &after, RECORDED + 3 * DAY);
    let resolved: BTreeSet<Class> = repaired
        .resolved
        .iter()
        .map(|id| store.find_read_back_exception(*id).unwrap().class())
        .collect();
    assert_eq!(
        resolved,
        [
            Class::RevenueGap,
            Class::MissingPlacedOrder,
            Class::MissingFulfilledOrder,
            Class::MissingRefund
        ]
        .into()
    );
    let open: BTreeSet<Class> = store
        .open_read_back_exceptions(&ReadBackFilter::default())
        .unwrap()
        .iter()
        .map(|e| e.class())
        .collect();
    assert_eq!(
        open,
        Class::ALL
            .into_iter()
            .filter(|c| !c.repaired_automatically() && *c != Class::RevenueGap)
            .collect()
    );
    assert_eq!(
        store
            .read_back_resolved_by(repaired.summary.run_id)
            .unwrap()
            .len(),
        4
    );
    // The consent finding is still there: reconcile still exits non-zero.
    assert_eq!(repaired.summary.tier(Tier::Compliance).open, 1);
    assert!(repaired.summary.fails());
}

#[test]
fn a_gap_is_resolved_only_by_a_run_that_compared_its_day() {
    let mut store = Store::in_memory().unwrap();
    record(&mut store, WEEK, &week(), RECORDED);
    let gap_key = format!("revenue-gap:petmarket:{GAP_DAY}");
    // A run over the week that compared the other days only.
    let mut other_days = ReadBack {
        revenue: revenue(),
        ..ReadBack::default()
    };
    other_days.revenue.retain(|d| d.day != GAP_DAY);
    record(&mut store, WEEK, &other_days, RECORDED + DAY);
    assert!(open_keys(&store).contains(&gap_key));
    let compared = ReadBack {
        revenue: revenue(),
        ..ReadBack::default()
    };
    record(&mut store, WEEK, &compared, RECORDED + 2 * DAY);
    assert!(!open_keys(&store).contains(&gap_key));
}

#[test]
fn a_class_the_run_did_not_look_for_stays_open() {
    let mut store = Store::in_memory().unwrap();
    record(&mut store, WEEK, &week(), RECORDED);
    let run = finished_run(&mut store, WEEK.0, WEEK.1, RECORDED + DAY);
    // No profiles were read: no duplicates, drift or consent were looked for.
    let mut without_profiles = checked(WEEK.0, WEEK.1, &ReadBack::default());
    for class in [
        Class::DuplicateProfile,
        Class::AttributeDrift,
        Class::ConsentMissed,
        Class::SubscribedWithoutEvidence,
    ] {
        without_profiles.classes.remove(&class);
    }
    store
        .record_read_back(run, &without_profiles, &ReadBack::default(), RECORDED + DAY)
        .unwrap();
    let open: BTreeSet<Class> = store
        .open_read_back_exceptions(&ReadBackFilter::default())
        .unwrap()
        .iter()
        .map(|e| e.class())
        .collect();
    // And the gap, whose day this run did not compare.
    assert_eq!(
        open,
        [
            Class::DuplicateProfile,
            Class::AttributeDrift,
            Class::ConsentMissed,
            Class::SubscribedWithoutEvidence,
            Class::RevenueGap
        ]
        .into()
    );
}

#[test]
fn resolved_by_hand_it_keeps_the_reason_and_a_new_sighting_opens_a_new_one() {
    let mut store = Store::in_memory().unwrap();
    record(&mut store, WEEK, &week(), RECORDED);
    let compliance = store
        .open_read_back_exceptions(&ReadBackFilter {
            tier: Some(Tier::Compliance),
            ..ReadBackFilter::default()
        })
        .unwrap();
    assert_eq!(compliance.len(), 1);
    let id = compliance[0].id;

    // All or nothing: an unknown id resolves none.
    let err = store
        .resolve_read_back_exceptions(&[id, 999], "x", RECORDED)
        .unwrap_err();
    assert!(
        matches!(err, StoreError::ReadBackNotFound { id: 999 }),
        "{err}"
    );
    assert_eq!(err.to_string(), "no exception R999");
    assert!(store.find_read_back_exception(id).unwrap().closed.is_none());

    let reason = "unsubscribed in Klaviyo; checkout said no";
    store
        .resolve_read_back_exceptions(&[id], reason, RECORDED + HOUR)
        .unwrap();
    let err = store
        .resolve_read_back_exceptions(&[id], reason, RECORDED + HOUR)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("exception R{id} is already resolved")
    );
    assert_eq!(
        store.find_read_back_exception(id).unwrap().closed,
        Some(Resolution::Hand {
            at: RECORDED + HOUR,
            reason: reason.into()
        })
    );
    let counts = store.open_read_back_counts().unwrap();
    assert!(!counts.contains_key(&Class::SubscribedWithoutEvidence));

    // Still subscribed in Klaviyo a day later: a new exception, the old one kept as closed.
    let again = record(&mut store, WEEK, &week(), RECORDED + DAY);
    assert_eq!(again.opened.len(), 1);
    let reopened = store.find_read_back_exception(again.opened[0]).unwrap();
    assert_eq!(reopened.class(), Class::SubscribedWithoutEvidence);
    assert_ne!(reopened.id, id);
    assert_eq!(reopened.times_seen, 1);
    assert!(store.find_read_back_exception(id).unwrap().closed.is_some());
    assert_eq!(
        again.summary.classes[&Class::SubscribedWithoutEvidence].opened,
        1
    );
}

#[test]
fn a_run_is_recorded_once() {
    let mut store = Store::in_memory().unwrap();
    let first = record(&mut store, WEEK, &week(), RECORDED);
    let run = first.summary.run_id;
    let err = store
        .record_read_back(
            run,
            &checked(WEEK.0, WEEK.1, &ReadBack::default()),
            &ReadBack::default(),
            RECORDED + DAY,
        )
        .unwrap_err();
    assert!(
        matches!(err, StoreError::ReadBackRecorded { run_id } if run_id == run),
        "{err}"
    );
    // Nothing the refused call would have resolved was resolved.
    assert_eq!(open_keys(&store).len(), Class::ALL.len());
    assert_eq!(store.last_read_backs(5).unwrap().len(), 1);
}

#[test]
fn summaries_come_newest_first_and_filters_narrow_the_list() {
    let mut store = Store::in_memory().unwrap();
    let a = record(&mut store, WEEK, &week(), RECORDED);
    let b = record(&mut store, WEEK, &week(), RECORDED + DAY);
    let runs: Vec<i64> = store
        .last_read_backs(5)
        .unwrap()
        .iter()
        .map(|s| s.run_id)
        .collect();
    assert_eq!(runs, [b.summary.run_id, a.summary.run_id]);
    assert_eq!(
        store.last_read_backs(1).unwrap()[0].run_id,
        b.summary.run_id
    );

    let tier = |tier| {
        store
            .open_read_back_exceptions(&ReadBackFilter {
                tier: Some(tier),
                ..ReadBackFilter::default()
            })
            .unwrap()
            .len()
    };
    assert_eq!(
        (
            tier(Tier::Compliance),
            tier(Tier::Systemic),
            tier(Tier::Money),
            tier(Tier::Hygiene)
        ),
        (1, 3, 7, 2)
    );
    let since = |at| {
        store
            .open_read_back_exceptions(&ReadBackFilter {
                since: Some(at),
                ..ReadBackFilter::default()
            })
            .unwrap()
            .len()
    };
    assert_eq!(since(RECORDED), 13);
    assert_eq!(since(RECORDED + 1), 0, "first seen by the first run");
}

#[test]
fn the_lifecycle_survives_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let mut store = Store::open(&path).unwrap();
        record(&mut store, WEEK, &week(), RECORDED);
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(open_keys(&store).len(), Class::ALL.len());
    assert_eq!(store.last_read_backs(1).unwrap()[0].revenue, revenue());
}

/// The one connection a finished run makes: `record` keeps a `Report`'s read-back against the
/// run's window and marketplace, and a run that read nothing back keeps nothing.
#[test]
fn a_report_with_a_read_back_is_recorded_against_its_window_and_marketplace() {
    use marketsync::reconcile::{Findings, Report, Window, exceptions};
    let mut store = Store::in_memory().unwrap();
    let run = finished_run(&mut store, WEEK.0, WEEK.1, RECORDED);
    let window = Window {
        since: chrono::DateTime::from_timestamp_millis(WEEK.0).unwrap(),
        until: chrono::DateTime::from_timestamp_millis(WEEK.1).unwrap(),
    };
    let mut report = Report {
        run_id: run,
        window,
        settle: chrono::Duration::minutes(15),
        resumed: false,
        report_only: true,
        findings: Findings {
            marketplace: Some("petmarket".into()),
            ..Findings::default()
        },
        notes: vec![],
        elapsed: std::time::Duration::from_secs(5),
        mapping: std::time::Duration::ZERO,
        storing: std::time::Duration::ZERO,
        read_back: None,
    };
    assert_eq!(
        exceptions::record(&mut store, &report, RECORDED).unwrap(),
        None
    );
    assert!(store.last_read_backs(1).unwrap().is_empty());

    report.read_back = Some(week());
    let kept = exceptions::record(&mut store, &report, RECORDED)
        .unwrap()
        .unwrap();
    assert_eq!(kept.opened.len(), Class::ALL.len());
    assert_eq!(
        (kept.summary.since.as_str(), kept.summary.until.as_str()),
        ("2026-11-24T00:00:00Z", "2026-12-01T00:00:00Z")
    );

    // The next day's run of the same marketplace, finding nothing, resolves the systemic
    // findings only; one of another marketplace resolves none of petmarket's.
    let next = finished_run(&mut store, WEEK.1, WEEK.1 + DAY, RECORDED + DAY);
    report.run_id = next;
    report.window = Window {
        since: window.until,
        until: window.until + chrono::Duration::days(1),
    };
    report.findings.marketplace = Some("homewares".into());
    report.read_back = Some(ReadBack::default());
    let other = exceptions::record(&mut store, &report, RECORDED + DAY)
        .unwrap()
        .unwrap();
    let resolved: BTreeSet<Class> = other
        .resolved
        .iter()
        .map(|id| store.find_read_back_exception(*id).unwrap().class())
        .collect();
    assert_eq!(resolved, [Class::DoubleSource].into(), "of no marketplace");
}
