//! Where a dry run's time goes, stage by stage, per delivery of the sample orders.
//!
//! `cargo bench --bench stages`. The stages are those of a dry run: parse (the delivery's JSON
//! into records), select (the JSONPaths of placed-order), map (every default mapping: select,
//! compute, render and validate), validate (one Placed Order body against Klaviyo's schema) and
//! serialize (one request as its output line); render is map less select and validate. The
//! JSON floor (parse and write back) is there for scale. docs/performance.md records the figures.

use criterion::{Criterion, criterion_group, criterion_main};
use marketsync::engine::Engine;
use marketsync::engine::select::Path;
use marketsync::klaviyo::{Endpoint, Schemas};
use marketsync::source::{Record, parse_delivery};
use std::hint::black_box;

fn deliveries() -> Vec<String> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/orders.ndjson"
    ))
    .expect("examples/orders.ndjson");
    text.lines().map(str::to_owned).collect()
}

fn records(deliveries: &[String]) -> Vec<Record> {
    deliveries
        .iter()
        .flat_map(|d| parse_delivery(d).expect("the samples parse"))
        .collect()
}

fn stages(c: &mut Criterion) {
    let deliveries = deliveries();
    let records = records(&deliveries);
    let (engine, _) = Engine::builtin().expect("the default mappings load");
    let paths: Vec<Path> = [
        "$.order.legacyId",
        "$.order.emailAddress",
        "$.order.firstName",
        "$.order.surname",
        "$.order.createdAt",
        "$.order.totalCents",
        "$.order.lineItems.nodes[*]",
        "$.order.invoices.nodes[*].seller.businessName",
    ]
    .iter()
    .map(|p| Path::parse(p).expect("valid paths"))
    .collect();
    let requests: Vec<_> = records
        .iter()
        .flat_map(|r| engine.map(r).requests)
        .collect();
    let placed = requests
        .iter()
        .find(|r| &*r.mapping == "placed-order")
        .expect("a Placed Order");
    let schemas = Schemas::builtin();

    let mut group = c.benchmark_group("per delivery");
    group.bench_function("floor: serde_json parse + write", |b| {
        b.iter(|| {
            for d in &deliveries {
                let value: serde_json::Value = serde_json::from_str(black_box(d)).unwrap();
                black_box(serde_json::to_string(&value).unwrap());
            }
        })
    });
    group.bench_function("parse", |b| {
        b.iter(|| {
            for d in &deliveries {
                black_box(parse_delivery(black_box(d)).unwrap());
            }
        })
    });
    group.bench_function("select (placed-order's paths)", |b| {
        b.iter(|| {
            for record in &records {
                for path in &paths {
                    black_box(path.nodes(&record.node));
                }
            }
        })
    });
    group.bench_function("map (all default mappings)", |b| {
        b.iter(|| {
            for record in &records {
                black_box(engine.map(black_box(record)));
            }
        })
    });
    group.finish();
    let mut group = c.benchmark_group("per request");
    group.bench_function("validate (Placed Order)", |b| {
        b.iter(|| black_box(schemas.check(Endpoint::CreateEvent, black_box(&placed.body))))
    });
    group.bench_function("serialize (output line)", |b| {
        b.iter(|| black_box(black_box(placed).to_line()))
    });
    group.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
