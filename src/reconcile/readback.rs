//! Reading Klaviyo back after the sweep: what to read, in what order, and the repairs it leads
//! to. The comparison itself is [`super::classify`].
//!
//! Reads are planned to cost O(records / page) rather than one per record:
//! 1. `GET /api/metrics` once: our metrics by name, a second sender of any, and which of them
//!    trigger a live flow;
//! 2. `GET /api/events` per metric over the span of the expected events' times (at least the
//!    window, for the revenue of its days; at most one window-length earlier), 200 a page;
//! 3. `GET /api/profiles` for every person expected, 100 emails (and phones) per `any()`;
//! 4. `GET /api/events` by profile only for what the scans cannot hold: an expected event older
//!    than the scans, and the Placed Order of a refunded order placed before them;
//! 5. `POST /api/metric-aggregates` once, Klaviyo's own daily totals of Placed Order, as a cross
//!    check on the scan.
//!
//! A repair re-sends exactly the request Klaviyo accepted, with its key: an event of a missing
//! class Klaviyo no longer holds. Nothing else is sent: consent is never repaired, a wrong event
//! cannot be (Klaviyo keeps the first of a key), duplicates and drift need a person.

use super::classify::{Evidence, Expected, Held, Rules, classify};
use super::expect::{ExpectedEvent, ExpectedPerson, Kind, Sent};
use super::impact::{Class, ReadBack};
use super::{Findings, ReconcileError, ReconcileSettings, Window};
use crate::klaviyo::email_key;
use crate::klaviyo::read::{Event, IN_FLIGHT, ReadError, ReadOptions, Reader};
use crate::sink::http::Client;
use crate::spec::Settings;
use crate::store::Store;
use chrono::{DateTime, Utc};
use futures_util::{StreamExt, stream};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// How a reconciler reads Klaviyo: the client (the sender's, with its key) and how it paces
/// and budgets each run's reads.
#[derive(Debug, Clone)]
pub struct ReadBackConfig {
    pub client: Client,
    pub options: ReadOptions,
}

/// What one run's read-back is about.
pub(super) struct Run<'a> {
    pub store: &'a Arc<Mutex<Store>>,
    pub run_id: i64,
    pub window: Window,
    pub findings: &'a Findings,
    pub settings: &'a Settings,
    pub reconcile: &'a ReconcileSettings,
    pub settle: chrono::Duration,
    pub repair: bool,
    pub now: DateTime<Utc>,
}

/// Reads Klaviyo back for the run, compares, and (repairing) queues again what Klaviyo lost.
/// Returns what was read back, the events queued again, and what could not be compared.
pub(super) async fn read_back(
    config: &ReadBackConfig,
    run: Run<'_>,
) -> Result<(ReadBack, u64, Vec<String>), ReconcileError> {
    let started = std::time::Instant::now();
    let mut options = config.options.clone();
    options.budget = run.reconcile.read_budget;
    let reader = Reader::new(config.client.clone(), options);
    let expected = load(run.store, run.run_id).await?;
    let names: BTreeMap<Kind, String> = Kind::ALL
        .into_iter()
        .filter_map(|k| Some((k, run.settings.metrics.get(k.role())?.clone())))
        .collect();

    let mut held = Held {
        metrics: reader.metrics().await?,
        ..Held::default()
    };
    let ours = |kind: Kind| -> Vec<String> {
        held.metrics
            .iter()
            .filter(|m| Some(&m.name) == names.get(&kind) && m.made_by_api())
            .map(|m| m.id.clone())
            .collect()
    };
    let our_ids: BTreeMap<Kind, Vec<String>> =
        Kind::ALL.into_iter().map(|k| (k, ours(k))).collect();

    // The scans: each metric over the span of its expected events' times.
    let (since, until) = (run.window.since, run.window.until);
    let earliest = since - run.window.length();
    let mut spans: BTreeMap<Kind, (DateTime<Utc>, DateTime<Utc>)> = BTreeMap::new();
    for kind in Kind::ALL {
        let times: Vec<DateTime<Utc>> = expected
            .events
            .iter()
            .filter(|e| e.kind == kind)
            .filter_map(|e| e.at.and_then(DateTime::from_timestamp_millis))
            .collect();
        if times.is_empty() && kind != Kind::PlacedOrder {
            continue;
        }
        let low = times
            .iter()
            .min()
            .copied()
            .unwrap_or(since)
            .clamp(earliest, since);
        let high = times
            .iter()
            .max()
            .map(|t| *t + chrono::Duration::milliseconds(1))
            .unwrap_or(until)
            .max(until)
            .min(run.now);
        spans.insert(kind, (low, high));
    }
    // One scan per metric, a few at once; each is paged in order by its cursor.
    let mut scans = Vec::new();
    for (kind, span) in &spans {
        for id in &our_ids[kind] {
            scans.push(reader.events(id, *span));
        }
    }
    let scanned: Vec<Result<Vec<Event>, ReadError>> =
        stream::iter(scans).buffered(IN_FLIGHT).collect().await;
    for events in scanned {
        held.events.extend(events?);
    }

    // The people.
    let emails: Vec<String> = expected
        .people
        .iter()
        .map(|p| p.email.clone())
        .chain(expected.events.iter().filter_map(|e| e.person.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let phones: Vec<String> = expected
        .people
        .iter()
        .filter_map(|p| p.phone.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    held.profiles = reader.profiles("email", &emails).await?;
    let mut known: HashSet<String> = held.profiles.iter().map(|p| p.id.clone()).collect();
    for profile in reader.profiles("phone_number", &phones).await? {
        if known.insert(profile.id.clone()) {
            held.profiles.push(profile);
        }
    }

    // What the scans cannot hold, by profile.
    let mut wanted: Vec<(String, String)> = Vec::new();
    for (kind, email) in lookups(&expected, &held.events, &spans, &our_ids) {
        for profile in held.profiles.iter().filter(|p| {
            p.email
                .as_deref()
                .is_some_and(|e| e.eq_ignore_ascii_case(&email))
        }) {
            for id in &our_ids[&kind] {
                wanted.push((id.clone(), profile.id.clone()));
            }
        }
    }
    let by_profile: Vec<_> = wanted
        .iter()
        .map(|(metric, profile)| reader.events_of_profile(metric, profile))
        .collect();
    let looked_up: Vec<Result<Vec<Event>, ReadError>> =
        stream::iter(by_profile).buffered(IN_FLIGHT).collect().await;
    let mut known: HashSet<String> = held.events.iter().map(|e| e.id.clone()).collect();
    for events in looked_up {
        for event in events? {
            if known.insert(event.id.clone()) {
                held.events.push(event);
            }
        }
    }

    // Klaviyo's own daily total, to check the scan against.
    let timezone = run.reconcile.timezone.0;
    if let Some(placed) = our_ids[&Kind::PlacedOrder].first() {
        held.totals = reader
            .daily_totals(placed, (since, until), timezone)
            .await?;
    }

    let (evidence, sources) = gather(run.store, &expected).await?;
    let mut consent_sources = sources;
    for source in expected
        .people
        .iter()
        .filter_map(|p| p.opt_in.as_ref()?.source.clone())
    {
        if !consent_sources.contains(&source) {
            consent_sources.push(source);
        }
    }
    let settings = run.settings;
    let rules = Rules {
        metrics: names,
        all_metric_names: settings
            .metrics
            .values()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
        now: run.now.timestamp_millis(),
        window: (since.timestamp_millis(), until.timestamp_millis()),
        settle_ms: run.settle.num_milliseconds(),
        flow_window_ms: run.reconcile.flow_window.millis(),
        tolerance_percent: run.reconcile.revenue_tolerance_percent,
        timezone,
        default_marketplace: run
            .findings
            .marketplace
            .clone()
            .unwrap_or_else(|| settings.marketplace.clone()),
        currencies: settings
            .marketplaces
            .iter()
            .map(|(m, s)| (m.clone(), s.currency.clone()))
            .collect(),
        default_currency: settings.currency.clone(),
        consent_sources,
        webhooks: run.findings.webhooks.clone(),
        native_tracking: run.findings.native_klaviyo_tracking,
        marketplace: run.findings.marketplace.clone(),
    };
    let classified = classify(&expected, &held, &evidence, &rules);

    // Repairs: what Klaviyo accepted and lost is sent again, with its key.
    let mut requeued = 0;
    if run.repair {
        let lost: Vec<(String, String)> = classified
            .discrepancies
            .iter()
            .filter(|d| d.class.repaired_automatically())
            .flat_map(|d| {
                expected.events.iter().filter(move |e| {
                    e.sent == Sent::Accepted
                        && class_of(e.kind) == d.class
                        && d.key == format!("{}:{}:{}", d.class.name(), e.marketplace, e.record())
                })
            })
            .map(|e| (e.endpoint.clone(), e.key.clone()))
            .collect();
        let store = Arc::clone(run.store);
        requeued = tokio::task::spawn_blocking(move || {
            let mut store = store.lock().expect("store lock");
            let now = crate::sink::now_ms();
            let mut queued = 0u64;
            for (endpoint, key) in lost {
                if store.requeue_accepted(&endpoint, &key, now)? {
                    queued += 1;
                }
            }
            Ok::<_, ReconcileError>(queued)
        })
        .await
        .expect("repairs are queued without panicking")?;
    }

    let read = ReadBack {
        discrepancies: classified.discrepancies,
        revenue: classified.revenue,
        reads: reader.budgets(),
        elapsed_ms: started.elapsed().as_millis() as u64,
    };
    Ok((read, requeued, classified.notes))
}

/// The class an expected event's absence is.
fn class_of(kind: Kind) -> Class {
    match kind {
        Kind::PlacedOrder => Class::MissingPlacedOrder,
        Kind::FulfilledOrder => Class::MissingFulfilledOrder,
        Kind::RefundedOrder | Kind::CancelledOrder => Class::MissingRefund,
    }
}

/// The (metric, person) pairs to read by profile: expected events older than their scan, and
/// the Placed Order of a refund Klaviyo holds whose order the scans and the window do not.
fn lookups(
    expected: &Expected,
    scanned: &[Event],
    spans: &BTreeMap<Kind, (DateTime<Utc>, DateTime<Utc>)>,
    our_ids: &BTreeMap<Kind, Vec<String>>,
) -> BTreeSet<(Kind, String)> {
    let keys: HashSet<String> = scanned
        .iter()
        .filter_map(|e| e.property("MarketsyncKey"))
        .collect();
    let placed_ids: HashSet<&str> = our_ids[&Kind::PlacedOrder]
        .iter()
        .map(String::as_str)
        .collect();
    let placed_orders: HashSet<(String, String)> = scanned
        .iter()
        .filter(|e| {
            e.metric_id
                .as_deref()
                .is_some_and(|m| placed_ids.contains(m))
        })
        .filter_map(|e| Some((e.property("Marketplace")?, e.property("OrderId")?)))
        .collect();
    let expected_orders: HashSet<(&str, &str)> = expected
        .events
        .iter()
        .filter(|e| e.kind == Kind::PlacedOrder)
        .filter_map(|e| Some((e.marketplace.as_str(), e.order_id.as_deref()?)))
        .collect();
    let mut pairs = BTreeSet::new();
    for e in &expected.events {
        let Some(person) = &e.person else { continue };
        let outside = match (spans.get(&e.kind), e.at) {
            (Some((low, high)), Some(at)) => {
                at < low.timestamp_millis() || at >= high.timestamp_millis()
            }
            _ => false,
        };
        if outside && !keys.contains(&e.key) {
            pairs.insert((e.kind, person.clone()));
        }
        if e.kind.is_refund()
            && keys.contains(&e.key)
            && let Some(order) = &e.order_id
            && !placed_orders.contains(&(e.marketplace.clone(), order.clone()))
            && !expected_orders.contains(&(e.marketplace.as_str(), order.as_str()))
        {
            pairs.insert((Kind::PlacedOrder, person.clone()));
        }
    }
    pairs
}

/// The run's expected side, as its pages kept it.
async fn load(store: &Arc<Mutex<Store>>, run_id: i64) -> Result<Expected, ReconcileError> {
    let store = Arc::clone(store);
    let rows =
        tokio::task::spawn_blocking(move || store.lock().expect("store lock").expected_all(run_id))
            .await
            .expect("the expected side is read without panicking")?;
    let mut expected = Expected::default();
    for (key, body) in rows {
        let unreadable = |e: serde_json::Error| ReconcileError::Unreadable {
            operation: "the run's expected side".into(),
            problem: format!("{key}: {e}"),
        };
        if key.starts_with("event:") {
            expected
                .events
                .push(serde_json::from_str::<ExpectedEvent>(&body).map_err(unreadable)?);
        } else {
            expected
                .people
                .push(serde_json::from_str::<ExpectedPerson>(&body).map_err(unreadable)?);
        }
    }
    Ok(expected)
}

/// What the store knows of the expected side, and the consent sources it has sent.
async fn gather(
    store: &Arc<Mutex<Store>>,
    expected: &Expected,
) -> Result<(Evidence, Vec<String>), ReconcileError> {
    let store = Arc::clone(store);
    let expected = expected.clone();
    tokio::task::spawn_blocking(move || {
        let store = store.lock().expect("store lock");
        let mut evidence = Evidence::default();
        for e in expected.events.iter().filter(|e| e.sent == Sent::Accepted) {
            if let Some(at) = store.accepted_at(&e.endpoint, &e.key)? {
                evidence.accepted_at.insert(e.key.clone(), at);
            }
        }
        let mut people: BTreeSet<&str> = expected.people.iter().map(|p| p.email.as_str()).collect();
        people.extend(expected.events.iter().filter_map(|e| e.person.as_deref()));
        let once_keys: HashMap<&str, &str> = expected
            .people
            .iter()
            .filter_map(|p| Some((p.email.as_str(), p.opt_in.as_ref()?.once_key.as_deref()?)))
            .collect();
        for email in people {
            let once_key = once_keys.get(email).copied();
            if let Some(at) = store.consent_evidence(once_key, &email_key(email))? {
                evidence.consent_at.insert(email.to_owned(), at);
            }
        }
        for person in &expected.people {
            if let Some(update) = &person.profile
                && let Some(key) = &update.coalesce_key
                && let Some(applied) = store.watermark(&update.mapping, key)?
            {
                evidence.applied.insert(person.email.clone(), applied);
            }
        }
        Ok((evidence, store.consent_sources()?))
    })
    .await
    .expect("the store is read without panicking")
}
