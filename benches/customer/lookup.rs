//! How long `marketsync customer` takes to read one person's history from a large state file
//! (issue 19: under 100 ms with a million deliveries).
//!
//!   cargo run --release --example customer-lookup -- [--deliveries 1000000] [--people 200000]
//!       [--lookups 200] [--state target/customer-bench/state.db]
//!
//! Builds (once, kept for later runs) a state file through the store's own intake, so every
//! index a real file has is written as a real run writes it: `--deliveries` paid invoices
//! spread over `--people` shoppers on two marketplaces, each with the requests the default
//! mappings make of one (Placed Order, an Ordered Product, a profile update, an opt-in), half
//! of them accepted. Then looks up `--lookups` shoppers picked at random (with the phone
//! number for one in four) through the same [`marketsync::customer::read`] the command and the
//! status page use, and prints the time each took: median, p99 and slowest.

use marketsync::customer::{self, Lookup};
use marketsync::engine::Engine;
use marketsync::store::{DeliveryRecord, NewRequest, Store, StoreError};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

struct Options {
    deliveries: usize,
    people: usize,
    lookups: usize,
    state: PathBuf,
}

fn options() -> Options {
    let mut options = Options {
        deliveries: 1_000_000,
        people: 200_000,
        lookups: 200,
        state: PathBuf::from("target/customer-bench/state.db"),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).expect("every option takes a value");
        match pair[0].as_str() {
            "--deliveries" => options.deliveries = value.parse().expect("a count"),
            "--people" => options.people = value.parse().expect("a count"),
            "--lookups" => options.lookups = value.parse().expect("a count"),
            "--state" => options.state = PathBuf::from(value),
            other => panic!("unknown option {other}"),
        }
    }
    options
}

fn email(person: usize) -> String {
    format!("shopper{person}@example.com")
}

fn phone(person: usize) -> String {
    format!("+614{:08}", 10_000_000 + person)
}

/// Delivery `n`: shopper `n % people`'s order `n`.
fn delivery(n: usize, people: usize) -> (String, String, Vec<NewRequest>, Vec<String>) {
    let person = n % people;
    let marketplace = if n.is_multiple_of(3) {
        "toyworld"
    } else {
        "petmarket"
    };
    let node = json!({
        "__typename": "Invoice",
        "statusFlags": ["PAID"],
        "order": {
            "legacyId": n,
            "emailAddress": email(person),
            "phone": phone(person),
            "createdAt": "2026-03-14T10:15:30+11:00",
            "updatedAt": "2026-03-14T10:15:30+11:00",
            "metadata": [{"key": "accepts_marketing", "value": if n.is_multiple_of(2) { "yes" } else { "no" }}],
        },
    });
    let text = json!({
        "delivery_id": format!("d{n}"),
        "event": "create",
        "typename": "Invoice",
        "marketplace": marketplace,
        "currency": null,
        "node": node,
    })
    .to_string();
    let profile = json!({"type": "profile", "attributes": {"email": email(person)}});
    let event = |metric: &str, unique: String| NewRequest {
        mapping: metric.to_lowercase().replace(' ', "-"),
        endpoint: "/api/events".into(),
        lane: "transaction".into(),
        body: json!({"data": {"type": "event", "attributes": {
            "metric": {"data": {"type": "metric", "attributes": {"name": metric}}},
            "profile": {"data": profile},
            "unique_id": unique,
            "properties": {"OrderId": n.to_string(), "Marketplace": marketplace},
        }}})
        .to_string(),
        once_key: Some(format!("{marketplace}:{n}")),
        unique_id: None,
        ..NewRequest::default()
    };
    let requests = vec![
        event("Placed Order", format!("{marketplace}:placed-order:{n}")),
        event(
            "Ordered Product",
            format!("{marketplace}:ordered-product:{n}:1"),
        ),
        NewRequest {
            mapping: "profile".into(),
            endpoint: "/api/profile-import".into(),
            lane: "profile".into(),
            body: json!({"data": {"type": "profile", "attributes": {
                "email": email(person), "phone_number": phone(person),
                "properties": {"Marketplacer Last Order ID": n.to_string()}}}})
            .to_string(),
            once_key: Some(format!("{marketplace}:{n}")),
            coalesce_key: Some(email(person)),
            version: Some(format!("2026-03-14T10:15:{:02}Z", n % 60)),
            ..NewRequest::default()
        },
        NewRequest {
            mapping: "consent".into(),
            endpoint: marketsync::store::CONSENT_ENDPOINT.into(),
            lane: "profile".into(),
            body: json!({"data": {"type": "profile-subscription-bulk-create-job", "attributes": {
                "profiles": {"data": [{"type": "profile", "attributes": {"email": email(person),
                    "subscriptions": {"email": {"marketing": {"consent": "SUBSCRIBED"}}}}}]}}}})
            .to_string(),
            once_key: Some(format!("{marketplace}:{}", email(person))),
            ..NewRequest::default()
        },
    ];
    let people = vec![
        format!("email:{}", email(person)),
        format!("phone:{}", phone(person)),
    ];
    (marketplace.to_owned(), text, requests, people)
}

fn build(options: &Options) -> Result<(), StoreError> {
    std::fs::create_dir_all(options.state.parent().expect("a folder")).expect("a folder");
    let mut store = Store::open(&options.state)?;
    let started = Instant::now();
    let batch = 5_000;
    for first in (0..options.deliveries).step_by(batch) {
        let last = (first + batch).min(options.deliveries);
        store.in_one_commit(first..last, |store, n| {
            let (marketplace, text, requests, people) = delivery(n, options.people);
            let id = format!("d{n}");
            let record = DeliveryRecord {
                marketplace: &marketplace,
                delivery_id: &id,
                origin: "bench",
                text: &text,
            };
            store.intake_concerning(&record, &requests, &[], &[], &people, n as i64)
        })?;
        // Half of what is queued is accepted, as a file mid-way through its life.
        for lane in ["transaction", "profile"] {
            let due = store.due(lane, i64::MAX, batch * 2)?;
            let ids: Vec<i64> = due.iter().step_by(2).map(|p| p.id).collect();
            store.mark_sent(&ids, 202, last as i64)?;
        }
        if last.is_multiple_of(100_000) || last == options.deliveries {
            eprintln!(
                "{last} deliveries written ({:.0}s)",
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

fn main() {
    let options = options();
    if !options.state.exists() {
        eprintln!(
            "building {} with {} deliveries of {} shoppers (kept for later runs)",
            options.state.display(),
            options.deliveries,
            options.people
        );
        if let Err(err) = build(&options) {
            let _ = std::fs::remove_file(&options.state);
            panic!("could not build the state file: {err}");
        }
    }
    let store = Store::open(&options.state).expect("the state file opens");
    let (engine, _) = Engine::builtin().expect("the built-in mappings compile");
    let size = std::fs::metadata(&options.state).map_or(0, |m| m.len());
    let mut timings = Vec::new();
    let mut found = 0;
    for i in 0..options.lookups {
        let person = (rand::random::<u64>() as usize) % options.people;
        let given = if i.is_multiple_of(4) {
            // As a person would type it.
            format!("04{:08}", 10_000_000 + person)
        } else {
            format!(" Shopper{person}@Example.com ")
        };
        let started = Instant::now();
        let lookup = Lookup::parse(&given, "AU").expect("readable");
        let view = customer::read(&store, &engine, &lookup).expect("a lookup");
        timings.push(started.elapsed().as_secs_f64() * 1000.0);
        found +=
            usize::from(view.found && view.timeline.len() >= options.deliveries / options.people);
    }
    timings.sort_by(f64::total_cmp);
    let at = |q: f64| timings[((timings.len() - 1) as f64 * q).round() as usize];
    println!(
        "{} deliveries ({} shoppers, {:.0} MB state file): {} lookups, {found} found whole; \
         median {:.1} ms, p99 {:.1} ms, slowest {:.1} ms",
        options.deliveries,
        options.people,
        size as f64 / 1e6,
        timings.len(),
        at(0.5),
        at(0.99),
        timings[timings.len() - 1]
    );
}
