//! How much of Klaviyo's rate ceiling delivery uses, measured against the stand-in.
//!
//! `cargo bench --bench delivery` queues more events and profile updates than two steady
//! windows can carry, sends them to the local stand-in (Klaviyo's published limits, on a
//! clock twice as fast: a minute lasts 30 s) for two windows, stops, and prints per endpoint:
//! requests, 429s, the most requests the stand-in admitted in any second and any minute
//! against the limits, and how many it accepted in the two windows against the ceiling
//! (2 × the steady limit). docs/delivery.md records the figures.

use marketsync::klaviyo::Endpoint;
use marketsync::sink::http::ApiKey;
use marketsync::sink::{Sink, SinkConfig};
use marketsync::spec::Lane;
use marketsync::standin::{Config, DEFAULT_API_KEY, Limit, StandIn};
use marketsync::store::{DeliveryRecord, NewRequest, Store};
use serde_json::json;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

const SCALE: f64 = 2.0;
/// Steady windows measured.
const WINDOWS: f64 = 2.0;
const EVENTS: usize = 9_000; // more than two steady windows of /api/events (3,500 each)
const PROFILES: usize = 1_800; // more than two of /api/profile-import (700 each)

fn request(endpoint: Endpoint, lane: Lane, body: serde_json::Value) -> NewRequest {
    NewRequest {
        mapping: "bench".into(),
        endpoint: endpoint.path().into(),
        lane: lane.as_str().into(),
        body: body.to_string(),
        ..Default::default()
    }
}

fn backlog(store: &mut Store) {
    let events: Vec<NewRequest> = (0..EVENTS)
        .map(|n| {
            request(Endpoint::CreateEvent, Lane::Transaction, json!({"data": {"type": "event", "attributes": {
                "properties": {"n": n}, "unique_id": format!("bench:{n}"),
                "metric": {"data": {"type": "metric", "attributes": {"name": "Placed Order"}}},
                "profile": {"data": {"type": "profile", "attributes": {"email": format!("e{n}@example.com")}}}}}}))
        })
        .collect();
    let profiles: Vec<NewRequest> = (0..PROFILES)
        .map(|n| {
            request(
                Endpoint::CreateOrUpdateProfile,
                Lane::Profile,
                json!({"data": {"type": "profile",
                "attributes": {"email": format!("p{n}@example.com"), "first_name": "Bench"}}}),
            )
        })
        .collect();
    for (id, requests) in [("events", events), ("profiles", profiles)] {
        let delivery = DeliveryRecord {
            marketplace: "bench",
            delivery_id: id,
            origin: "bench",
            text: "{}",
        };
        store.intake(&delivery, &requests, &[], 0).unwrap();
    }
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let standin = StandIn::start(Config { time_scale: SCALE, ..Config::default() }).await.unwrap();
        let store = Arc::new(Mutex::new(Store::in_memory().unwrap()));
        backlog(&mut store.lock().unwrap());
        let mut config = SinkConfig::new(&standin.url(), ApiKey::new(DEFAULT_API_KEY));
        config.time_scale = SCALE;
        config.concurrency = 64;
        let sink = Sink::new(config, Arc::clone(&store));
        let done = Arc::new(AtomicBool::new(true));
        let started = Instant::now();
        let lanes: Vec<_> = [Lane::Transaction, Lane::Profile]
            .into_iter()
            .map(|lane| tokio::spawn(Arc::clone(&sink).drain_lane(lane, Arc::clone(&done))))
            .collect();
        // Two steady windows, less a moment, so a third window's first sends are not counted.
        let measured = std::time::Duration::from_secs_f64(WINDOWS * 60.0 / SCALE - 0.25);
        tokio::time::sleep(measured).await;
        let stats = standin.stats();
        sink.stop_flag().store(true, std::sync::atomic::Ordering::SeqCst);
        for lane in lanes {
            lane.await.unwrap().unwrap();
        }
        println!(
            "machine: {} cores; stand-in clock x{SCALE}; measured {:.1}s real ({WINDOWS} steady windows)",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            started.elapsed().as_secs_f64()
        );
        println!("| endpoint | requests | 429s | max in a second / burst | max in a minute / steady | accepted in {WINDOWS} windows / ceiling |");
        println!("|---|---|---|---|---|---|");
        for endpoint in [Endpoint::CreateEvent, Endpoint::CreateOrUpdateProfile] {
            let s = stats.endpoint(endpoint);
            let limit = Limit::klaviyo(endpoint);
            let ceiling = WINDOWS * f64::from(limit.steady_per_minute);
            println!(
                "| {} | {} | {} | {} / {} | {} / {} | {} / {ceiling:.0} ({:.1}%) |",
                endpoint.path(), s.requests, s.throttled, s.max_per_second, limit.burst_per_second,
                s.max_per_minute, limit.steady_per_minute, s.accepted,
                100.0 * s.accepted as f64 / ceiling
            );
        }
        standin.shutdown().await;
    });
}
