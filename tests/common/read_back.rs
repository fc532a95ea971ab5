//! A week of reading Klaviyo back, as the read-back would find it: two marketplaces' daily
//! revenue on both sides and one finding of each class, with the values a real shop has
//! (AUD, order ids of Marketplacer's legacy form, Klaviyo's 26-character ids).

use marketsync::reconcile::impact::{
    Class, Discrepancy, ReadBack, ReadBudget, RevenueDay, rank, stake,
};
use marketsync::store::Store;

/// 2026-11-24T00:00:00Z, where the week starts.
pub const WEEK_START: i64 = 1_795_478_400_000;
pub const DAY: i64 = 86_400_000;
/// The petmarket day whose revenue does not add up (the missing order's day).
pub const GAP_DAY: &str = "2026-11-27";

/// The average order value the flow term of the money at stake uses.
const AVERAGE_ORDER: i64 = 14_650;

fn day_name(day: i64) -> String {
    chrono::DateTime::from_timestamp_millis(WEEK_START + day * DAY)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string()
}

/// A finding of `class` with the fields every class shares.
pub fn finding(class: Class, key: &str) -> Discrepancy {
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

/// One order's finding: its key is `CLASS:petmarket:ORDER`, it happened on `day` of the week.
fn order(class: Class, order: &str, day: i64, value: i64, flow_live: bool) -> Discrepancy {
    let mut d = finding(class, &format!("{}:petmarket:{order}", class.name()));
    d.order_id = Some(order.to_owned());
    d.happened_at = Some(WEEK_START + day * DAY + 9 * 3_600_000 + 17 * 60_000);
    d.money_cents = stake(value, flow_live, AVERAGE_ORDER);
    d.flow_live = flow_live;
    d
}

/// One of each class, ranked, as the read-back of the week finds them.
pub fn findings() -> Vec<Discrepancy> {
    let mut all = Vec::new();

    let mut consent = finding(
        Class::SubscribedWithoutEvidence,
        "subscribed-without-evidence:email:liam.nguyen@example.com",
    );
    consent.person = Some("liam.nguyen@example.com".into());
    consent.profile_ids = vec!["01JDB7X2Q8M4TZK9V3N6R5W1HC".into()];
    consent.happened_at = Some(WEEK_START + 3 * DAY + 11 * 3_600_000);
    consent.detail = "Klaviyo has liam.nguyen@example.com SUBSCRIBED to email marketing by marketsync (method API) since 2026-11-27, but no opt-in is on record: their checkout said no".into();
    consent.action = "Unsubscribe them in Klaviyo today unless their consent is found elsewhere; ask the consultant why the consent mapping subscribed them".into();
    all.push(consent);

    let mut double = finding(Class::DoubleSource, "double-source:Placed Order");
    double.marketplace = None;
    double.currency = Some("AUD".into());
    double.money_cents = 3_118_400;
    double.affected = 214;
    double.flow_live = true;
    double.event_ids = vec!["4Z9HqTQ7wXk".into()];
    double.detail = "Two metrics are named Placed Order: ours (API) and one from the Marketplacer integration, which sent 214 orders this week".into();
    double.action = "Switch off Marketplacer's Klaviyo e-commerce tracking (Klaviyo settings in the Marketplacer admin), then check which flows trigger on which metric".into();
    all.push(double);

    let mut webhook = finding(
        Class::WebhookDisabled,
        "webhook-disabled:petmarket:SHIPMENT",
    );
    webhook.affected = 23;
    webhook.money_cents = 23 * stake(0, true, AVERAGE_ORDER);
    webhook.flow_live = true;
    webhook.detail =
        "The SHIPMENT webhook V2ViaG9vay0z is disabled since 2026-11-29: 23 shipments since".into();
    webhook.action = "Re-enable it in Marketplacer (Configuration → Webhooks) after fixing why it failed; reconcile repairs the shipments".into();
    all.push(webhook);

    let mut gap = finding(
        Class::RevenueGap,
        &format!("revenue-gap:petmarket:{GAP_DAY}"),
    );
    gap.money_cents = 18_240;
    gap.happened_at = Some(WEEK_START + 3 * DAY);
    gap.affected = 46;
    gap.detail = format!(
        "{GAP_DAY}: AUD 6,612.85 in Marketplacer, AUD 6,430.45 in Klaviyo (-AUD 182.40) over 46 orders"
    );
    gap.action = "Explained by the missing Placed Order of order 5001 below".into();
    all.push(gap);

    let mut missing = order(Class::MissingPlacedOrder, "5001", 3, 18_240, true);
    missing.person = Some("zoe.kowalski@example.com".into());
    missing.profile_ids = vec!["01JDB80A9FQ3W7E2T6Y1U5I8OP".into()];
    missing.detail =
        "Order 5001 (AUD 182.40, paid 2026-11-27) has no Placed Order in Klaviyo".into();
    missing.action = "Queued again under its original key (backfill: past the flow window)".into();
    all.push(missing);

    let mut wrong = order(Class::WrongOrderValue, "5017", 4, 2_500, false);
    wrong.person = Some("ann.lee@example.com".into());
    wrong.event_ids = vec!["4Z9JbN2xR1p".into()];
    wrong.detail = "Placed Order of order 5017 is AUD 112.95 in Klaviyo, AUD 137.95 in Marketplacer (a second invoice paid later)".into();
    wrong.action =
        "Ask the consultant to check the placed-order value; Klaviyo keeps this event as it is"
            .into();
    all.push(wrong);

    let mut shipped = order(Class::MissingFulfilledOrder, "5023", 5, 0, true);
    shipped.person = Some("raj.patel@example.com".into());
    shipped.detail =
        "Shipment 8812 of order 5023 (dispatched 2026-11-29) has no Fulfilled Order".into();
    shipped.action = "Queued again under its original key".into();
    all.push(shipped);

    let mut tracking = order(Class::TrackingMissing, "5031", 5, 0, true);
    tracking.person = Some("mia.chen@example.com".into());
    tracking.event_ids = vec!["4Z9KcP3yS2q".into()];
    tracking.detail = "Fulfilled Order of order 5031 has no TrackingNumber; the shipment has AusPost 33XYZ0012345".into();
    tracking.action = "Send Mia the tracking link; ask the consultant about the tracking fields of fulfilled-order".into();
    all.push(tracking);

    let mut refund = order(Class::MissingRefund, "4988", 2, 4_995, false);
    refund.person = Some("tom.brown@example.com".into());
    refund.detail = "Refund 771 of order 4988 (AUD 49.95, 2026-11-26) has no Refunded Order".into();
    refund.action = "Queued again under its original key".into();
    all.push(refund);

    let mut orphan = order(Class::OrphanedRefund, "4950", 1, 2_990, false);
    orphan.person = Some("eve.martin@example.com".into());
    orphan.event_ids = vec!["4Z9LdQ4zT3r".into()];
    orphan.detail = "Refunded Order of order 4950 (AUD 29.90) matches no Placed Order".into();
    orphan.action = "Check that refunded-order and placed-order give the same OrderId".into();
    all.push(orphan);

    let mut missed = finding(
        Class::ConsentMissed,
        "consent-missed:email:noah.wilson@example.com",
    );
    missed.person = Some("noah.wilson@example.com".into());
    missed.order_id = Some("5044".into());
    missed.happened_at = Some(WEEK_START + 6 * DAY + 8 * 3_600_000);
    missed.profile_ids = vec!["01JDB83C2HS5Y9G4V8A3W7K0QR".into()];
    missed.detail = "Opted in at checkout of order 5044; Klaviyo says NEVER_SUBSCRIBED".into();
    missed.action = "Check the evidence with `marketsync customer noah.wilson@example.com`, then subscribe them in Klaviyo by hand".into();
    all.push(missed);

    let mut duplicate = finding(
        Class::DuplicateProfile,
        "duplicate-profile:email:olivia.smith@example.com",
    );
    duplicate.marketplace = None;
    duplicate.person = Some("olivia.smith@example.com".into());
    duplicate.profile_ids = vec![
        "01JDB84D3JT6Z0H5W9B4X8L1RS".into(),
        "01JDB85E4KU7A1J6X0C5Y9M2ST".into(),
    ];
    duplicate.happened_at = Some(WEEK_START + 2 * DAY + 14 * 3_600_000);
    duplicate.detail = "Two profiles: one by email, one by phone +61412000017".into();
    duplicate.action = "Merge them in Klaviyo".into();
    all.push(duplicate);

    let mut drift = finding(
        Class::AttributeDrift,
        "attribute-drift:email:jack.taylor@example.com",
    );
    drift.marketplace = None;
    drift.person = Some("jack.taylor@example.com".into());
    drift.profile_ids = vec!["01JDB86F5LV8B2K7Y1D6Z0N3TU".into()];
    drift.happened_at = Some(WEEK_START + 4 * DAY + 10 * 3_600_000);
    drift.detail = "last_name is \"Taylor-Smith\" in Klaviyo, \"Taylor\" on order 5019".into();
    drift.action = "Find what else writes last_name (a sign-up form?)".into();
    all.push(drift);

    rank(&mut all);
    all
}

/// Seven days of two marketplaces: petmarket short one order on [`GAP_DAY`], homewares
/// aligned.
pub fn revenue() -> Vec<RevenueDay> {
    let mut days = Vec::new();
    for day in 0..7 {
        let orders = 38 + (day as u64 * 7) % 13;
        let marketplacer = 512_340 + day * 48_115 + (day * day) * 9_931;
        let klaviyo = if day_name(day) == GAP_DAY {
            marketplacer - 18_240
        } else {
            marketplacer
        };
        days.push(RevenueDay {
            marketplace: "petmarket".into(),
            day: day_name(day),
            currency: "AUD".into(),
            orders,
            marketplacer_cents: marketplacer,
            klaviyo_cents: klaviyo,
        });
        let orders = 12 + (day as u64 * 5) % 7;
        let marketplacer = 231_900 + day * 17_250;
        days.push(RevenueDay {
            marketplace: "homewares".into(),
            day: day_name(day),
            currency: "AUD".into(),
            orders,
            marketplacer_cents: marketplacer,
            klaviyo_cents: marketplacer,
        });
    }
    days
}

/// What reading the week back cost, as the read-back reports it.
pub fn reads() -> Vec<ReadBudget> {
    let read = |endpoint: &str, requests, per_minute, waited_ms| ReadBudget {
        endpoint: endpoint.into(),
        requests,
        per_minute,
        waited_ms,
    };
    vec![
        read("GET /api/metrics", 2, 150, 0),
        read("GET /api/events", 41, 3_500, 0),
        read("GET /api/profiles", 18, 700, 0),
        read("POST /api/metric-aggregates", 2, 60, 400),
    ]
}

/// The week's read-back: every class once.
pub fn week() -> ReadBack {
    ReadBack {
        discrepancies: findings(),
        revenue: revenue(),
        reads: reads(),
        elapsed_ms: 4_180,
    }
}

/// A finished reconciliation run over `[since, until)` (unix ms), as a read-back is recorded
/// against one.
pub fn finished_run(store: &mut Store, since: i64, until: i64, now: i64) -> i64 {
    let text = |ms| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let run = store
        .start_reconcile_run(
            "https://petmarket.example report-only",
            (&text(since), &text(until)),
            "webhooks",
            "{}",
            now,
        )
        .unwrap();
    store
        .finish_reconcile_run(run.id, r#"{"marketplace":"petmarket"}"#, now)
        .unwrap();
    run.id
}

/// The week before: Marketplacer's own tracking already on (the same second sender), two
/// orders that never reached Klaviyo, revenue otherwise aligned.
pub fn previous_week() -> ReadBack {
    let all = findings();
    let mut discrepancies: Vec<Discrepancy> = all
        .iter()
        .filter(|d| d.class == Class::DoubleSource)
        .cloned()
        .collect();
    for (order_id, day, value) in [("4871", -5, 9_995), ("4902", -2, 23_480)] {
        let mut d = order(Class::MissingPlacedOrder, order_id, day, value, false);
        d.person = Some(format!("buyer{order_id}@example.com"));
        d.detail = format!("Order {order_id} has no Placed Order in Klaviyo");
        d.action = "Queued again under its original key".into();
        discrepancies.push(d);
    }
    rank(&mut discrepancies);
    let revenue = revenue()
        .into_iter()
        .map(|mut d| {
            let day = chrono::NaiveDate::parse_from_str(&d.day, "%Y-%m-%d").unwrap()
                - chrono::Duration::days(7);
            d.day = day.format("%Y-%m-%d").to_string();
            d.klaviyo_cents = d.marketplacer_cents;
            d
        })
        .collect();
    ReadBack {
        discrepancies,
        revenue,
        reads: reads(),
        elapsed_ms: 3_900,
    }
}

/// A store that has read back two weeks: the week before (recorded an hour after it ended),
/// then [`week`]. Returns the two runs' ids.
pub fn two_weeks(store: &mut Store) -> (i64, i64) {
    use marketsync::reconcile::exceptions::Checked;
    let mut ids = Vec::new();
    for (start, read_back) in [
        (WEEK_START - 7 * DAY, previous_week()),
        (WEEK_START, week()),
    ] {
        let (since, until) = (start, start + 7 * DAY);
        let now = until + 3_600_000;
        let run = finished_run(store, since, until, now);
        let checked = Checked {
            since,
            until,
            marketplaces: ["petmarket".to_owned(), "homewares".to_owned()].into(),
            classes: Class::ALL.into_iter().collect(),
            people: Default::default(),
            revenue_days: read_back
                .revenue
                .iter()
                .map(|d| (d.marketplace.clone(), d.day.clone()))
                .collect(),
        };
        store
            .record_read_back(run, &checked, &read_back, now)
            .unwrap();
        ids.push(run);
    }
    (ids[0], ids[1])
}
