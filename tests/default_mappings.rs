//! The default mappings against the rules they promise, on deliveries written for the purpose.

mod common;

use common::{engine, run};
use marketsync::klaviyo::{Endpoint, Schemas};
use serde_json::{Value, json};
use std::collections::BTreeSet;

const WEBHOOKS: &[&str] = &[
    "examples/orders.ndjson",
    "examples/shipment.json",
    "examples/cancellation.json",
    "examples/refund.json",
];

fn attributes(request: &marketsync::klaviyo::Request) -> &Value {
    &request.body["data"]["attributes"]
}

#[test]
fn every_request_passes_klaviyos_schema() {
    let engine = engine();
    let mut files: Vec<&str> = WEBHOOKS.to_vec();
    files.extend([
        "examples/backfill-page.json",
        "examples/invoice-unpaid.json",
        "examples/refund-pending.json",
        "examples/seller-update.json",
        "tests/fixtures/deliveries/odd-customers.ndjson",
        "tests/fixtures/deliveries/refund-mixed.json",
    ]);
    let run = run(&engine, &files);
    assert!(run.requests.len() > 40, "{}", run.requests.len());
    for request in &run.requests {
        assert_eq!(
            Schemas::builtin().check(request.endpoint, &request.body),
            Ok(())
        );
    }
}

#[test]
fn the_examples_map_cleanly() {
    let engine = engine();
    let mut files: Vec<&str> = WEBHOOKS.to_vec();
    files.extend([
        "examples/backfill-page.json",
        "examples/invoice-unpaid.json",
        "examples/refund-pending.json",
        "examples/seller-update.json",
    ]);
    let run = run(&engine, &files);
    assert_eq!(run.summary.rejected_count(), 0, "{}", run.report);
    assert_eq!(run.summary.skipped.get("Seller"), Some(&1));
}

#[test]
fn backfill_gives_the_same_events_and_keys_as_the_webhooks() {
    let engine = engine();
    let webhooks = run(&engine, WEBHOOKS);
    let backfill = run(&engine, &["examples/backfill-page.json"]);
    let ids = |run: &common::Run, mapping: &str| -> BTreeSet<String> {
        run.unique_ids(mapping).into_iter().collect()
    };
    for mapping in [
        "placed-order",
        "ordered-product",
        "fulfilled-order",
        "refunded-order",
        "cancelled-order",
    ] {
        let from_backfill = ids(&backfill, mapping);
        assert!(!from_backfill.is_empty(), "{mapping}");
        assert!(
            from_backfill.is_subset(&ids(&webhooks, mapping)),
            "{mapping}: {from_backfill:?}"
        );
    }
    // Orders 5001 and 5002 are in both; 5003 only came by webhook, 5004 is unpaid.
    assert_eq!(
        ids(&backfill, "placed-order"),
        BTreeSet::from([
            "petmarket:placed-order:5001".to_owned(),
            "petmarket:placed-order:5002".to_owned()
        ])
    );
    // Order events are built from the whole order, so they are identical, not just alike.
    for mapping in ["placed-order", "ordered-product"] {
        for request in backfill.of_mapping(mapping) {
            let twin = webhooks
                .of_mapping(mapping)
                .into_iter()
                .find(|w| attributes(w)["unique_id"] == attributes(request)["unique_id"])
                .unwrap();
            assert_eq!(twin.body, request.body, "{mapping}");
        }
    }
    // Refunds and fulfilments agree on value and time (backfill lacks shipped items).
    for mapping in ["fulfilled-order", "refunded-order", "cancelled-order"] {
        let b = backfill.of_mapping(mapping)[0];
        let w = webhooks.of_mapping(mapping)[0];
        assert_eq!(attributes(b)["value"], attributes(w)["value"], "{mapping}");
        assert_eq!(attributes(b)["time"], attributes(w)["time"], "{mapping}");
    }
    let profiles = |run: &common::Run| -> Vec<Value> {
        run.of_mapping("profile")
            .iter()
            .map(|r| r.body.clone())
            .collect()
    };
    assert_eq!(profiles(&backfill), profiles(&webhooks)[..2]);
}

#[test]
fn a_multi_seller_order_is_one_placed_order_with_every_line() {
    let run = run(&engine(), &["examples/orders.ndjson"]);
    let placed: Vec<_> = run
        .of_mapping("placed-order")
        .into_iter()
        .filter(|r| attributes(r)["properties"]["OrderId"] == "5001")
        .collect();
    assert_eq!(placed.len(), 1, "two invoices, one Placed Order");
    let a = attributes(placed[0]);
    assert_eq!(a["value"], json!(155.3));
    assert_eq!(a["value_currency"], "AUD");
    assert_eq!(a["time"], "2026-03-13T23:15:30+00:00");
    assert_eq!(
        a["properties"]["Sellers"],
        json!(["Paws & Claws Co.", "Fetch! Supplies"])
    );
    assert_eq!(a["properties"]["Items"].as_array().unwrap().len(), 3);
    assert_eq!(
        a["properties"]["Items"][0]["Quantity"],
        json!(2),
        "native number, not text"
    );
    assert_eq!(a["properties"]["Items"][0]["ItemPrice"], json!(19.95));
    assert_eq!(
        a["profile"]["data"]["attributes"]["email"],
        "zoe.kowalski@example.com"
    );
    let lines: Vec<String> = run
        .unique_ids("ordered-product")
        .into_iter()
        .filter(|id| id.contains(":5001:"))
        .collect();
    assert_eq!(
        lines,
        [
            "petmarket:ordered-product:5001:9001",
            "petmarket:ordered-product:5001:9002",
            "petmarket:ordered-product:5001:9003"
        ]
    );
}

#[test]
fn a_repeated_delivery_is_mapped_once() {
    let run = run(&engine(), &["examples/orders.ndjson"]);
    assert_eq!(run.summary.deliveries, 5);
    assert_eq!(run.summary.repeated_deliveries, 1);
    let ids = run.unique_ids("placed-order");
    assert_eq!(ids.len(), BTreeSet::from_iter(ids.iter()).len(), "{ids:?}");
}

#[test]
fn an_unpaid_invoice_and_a_pending_refund_give_nothing() {
    let run = run(
        &engine(),
        &[
            "examples/invoice-unpaid.json",
            "examples/refund-pending.json",
        ],
    );
    assert!(run.requests.is_empty());
    assert_eq!(run.summary.without_request, 2);
    assert_eq!(run.summary.rejected_count(), 0);
}

#[test]
fn consent_needs_an_explicit_yes() {
    let run = run(
        &engine(),
        &[
            "examples/orders.ndjson",
            "tests/fixtures/deliveries/odd-customers.ndjson",
        ],
    );
    let subscribed: Vec<&str> = run
        .of_mapping("consent")
        .iter()
        .map(|r| {
            attributes(r)["profiles"]["data"][0]["attributes"]["email"]
                .as_str()
                .unwrap()
        })
        .collect();
    // yes, TRUE, 1 and a JSON true subscribe; no, 0, maybe and a missing flag do not.
    assert_eq!(
        subscribed,
        [
            "zoe.kowalski@example.com",
            "john.smith@example.com",
            "ana.lima@exemplo.com.br",
            "bool.optin@example.com"
        ]
    );
    let zoe = attributes(run.of_mapping("consent")[0]);
    assert_eq!(zoe["historical_import"], json!(true));
    assert_eq!(
        zoe["profiles"]["data"][0]["attributes"]["subscriptions"],
        json!({"email": {"marketing": {"consent": "SUBSCRIBED", "consented_at": "2026-03-13T23:15:30+00:00"}}})
    );
    assert!(
        run.requests
            .iter()
            .all(|r| !r.body.to_string().contains("UNSUBSCRIBED"))
    );
    assert!(
        run.report.contains("consent value \"maybe\""),
        "{}",
        run.report
    );
}

#[test]
fn emails_are_normalised_and_phones_are_e164_or_left_out() {
    let run = run(
        &engine(),
        &[
            "examples/orders.ndjson",
            "tests/fixtures/deliveries/odd-customers.ndjson",
        ],
    );
    let profiles: Vec<(String, Option<String>)> = run
        .of_mapping("profile")
        .iter()
        .map(|r| {
            let a = attributes(r);
            (
                a["email"].as_str().unwrap().to_owned(),
                a.get("phone_number")
                    .map(|p| p.as_str().unwrap().to_owned()),
            )
        })
        .collect();
    let expect = |email: &str, phone: Option<&str>| (email.to_owned(), phone.map(str::to_owned));
    assert_eq!(
        profiles,
        [
            expect("zoe.kowalski@example.com", Some("+61412345678")),
            expect("jose.nunez@example.com.au", Some("+61298765432")),
            expect("oyvind.hansen@example.net", None),
            expect("john.smith@example.com", Some("+61412345678")),
            expect("ana.lima@exemplo.com.br", Some("+442079460958")),
            expect("kenji@example.jp", Some("+442079460958")),
            expect("amelie@example.fr", None),
            expect("bool.optin@example.com", None),
        ]
    );
    // The unreadable phones were reported, and their profiles still sent without them.
    assert!(
        run.report.contains("phone \"12345\" cannot be read"),
        "{}",
        run.report
    );
    assert!(
        run.report.contains("phone \"not a phone\" cannot be read"),
        "{}",
        run.report
    );
    // An address that is not one rejects that customer's mappings, with the reason.
    assert!(
        run.report
            .contains("email \"no-at-sign.example.com\" is not a valid address")
    );
    assert!(
        run.report
            .contains("mapping `placed-order`: required value `customer_email` is empty")
    );
    // Nothing is ever sent as null: Klaviyo would clear the field.
    for request in &run.requests {
        assert!(
            !request.body.to_string().contains("null"),
            "{}",
            request.to_line()
        );
    }
}

#[test]
fn html_special_and_non_ascii_text_pass_unchanged() {
    let run = run(
        &engine(),
        &[
            "examples/orders.ndjson",
            "tests/fixtures/deliveries/odd-customers.ndjson",
        ],
    );
    let names: Vec<&Value> = run
        .of_mapping("placed-order")
        .iter()
        .map(|r| &attributes(r)["properties"]["ItemNames"])
        .collect();
    assert_eq!(names[1][0], "Chew Toy <XL> \"Tough\" & Durable");
    assert!(
        names
            .iter()
            .any(|n| n[0] == "<script>alert(\"x\")</script> & Co — Ünïcødé 🐶")
    );
    let profile = run
        .of_mapping("profile")
        .into_iter()
        .find(|r| attributes(r)["email"] == "kenji@example.jp")
        .unwrap();
    assert_eq!(attributes(profile)["first_name"], "健二");
    assert_eq!(
        attributes(run.of_mapping("placed-order")[1])["properties"]["Sellers"],
        json!(["Café Canin — Sydney"])
    );
}

#[test]
fn refunds_split_into_refunded_and_cancelled_by_dispatch() {
    let run = run(&engine(), &["tests/fixtures/deliveries/refund-mixed.json"]);
    let refunded = run.of_mapping("refunded-order");
    let cancelled = run.of_mapping("cancelled-order");
    assert_eq!((refunded.len(), cancelled.len()), (1, 1));
    assert_eq!(attributes(refunded[0])["value"], json!(24.95));
    assert_eq!(
        attributes(refunded[0])["unique_id"],
        "petmarket:refunded-order:7003"
    );
    assert_eq!(attributes(cancelled[0])["value"], json!(13.05));
    assert_eq!(
        attributes(cancelled[0])["properties"]["Reasons"],
        json!(["Cancelled before dispatch"])
    );
    assert_eq!(
        attributes(cancelled[0])["unique_id"],
        "petmarket:cancelled-order:7003"
    );
}

#[test]
fn a_shipment_carries_its_tracking_data_and_dispatch_time() {
    let run = run(&engine(), &["examples/shipment.json"]);
    let fulfilled = attributes(run.of_mapping("fulfilled-order")[0]);
    assert_eq!(fulfilled["time"], "2026-03-17T03:00:00+00:00");
    assert_eq!(
        fulfilled["properties"]["TrackingNumber"],
        "33QJQ500123401000931509"
    );
    assert_eq!(fulfilled["properties"]["Carrier"], "Australia Post");
    assert_eq!(fulfilled["properties"]["Seller"], "Paws & Claws Co.");
    assert_eq!(
        fulfilled["properties"]["Items"].as_array().unwrap().len(),
        2
    );
}

#[test]
fn bad_lines_are_reported_with_their_line_and_the_run_goes_on() {
    let run = run(&engine(), &["tests/fixtures/malformed.ndjson"]);
    let report = &run.report;
    for expected in [
        "tests/fixtures/malformed.ndjson:1: rejected: not JSON: EOF while parsing an object",
        "tests/fixtures/malformed.ndjson:2: rejected: Marketplacer reported errors instead of data: delivery V2ViaG9va0V2ZW50LTk5MDAz: Field 'paidAt' doesn't exist on type 'Invoice'",
        "tests/fixtures/malformed.ndjson:4: rejected: not a Marketplacer delivery: delivery V2ViaG9va0V2ZW50LTk5MDA0 has no `payload.data.node`",
        "tests/fixtures/malformed.ndjson:5: rejected: not a Marketplacer delivery: delivery V2ViaG9va0V2ZW50LTk5MDA1: the node has no `__typename`",
        "tests/fixtures/malformed.ndjson:6: rejected: not a Marketplacer delivery: expected a JSON object",
        "tests/fixtures/malformed.ndjson:7: rejected: delivery V2ViaG9va0V2ZW50LTk5MDAx: mapping `placed-order`: required field `email` is missing (path `$.order.emailAddress` matched nothing)",
    ] {
        assert!(
            report.contains(expected),
            "missing {expected:?} in\n{report}"
        );
    }
    // The good delivery on line 3 was still mapped.
    assert_eq!(
        run.unique_ids("placed-order"),
        ["petmarket:placed-order:5003"]
    );
    assert_eq!(run.summary.rejected.get("not-json"), Some(&1));
    assert_eq!(run.summary.rejected.get("graphql-errors"), Some(&1));
    assert_eq!(run.summary.rejected.get("unrecognised"), Some(&3));
    assert_eq!(run.summary.rejected.get("missing-field"), Some(&4));
}

#[test]
fn the_marketplace_comes_from_the_header_else_the_flag_else_settings() {
    let envelope = std::fs::read_to_string(common::repo("examples/invoice-unpaid.json")).unwrap();
    let mut paid: Value = serde_json::from_str(&envelope).unwrap();
    paid["payload"]["data"]["node"]["statusFlags"] = json!(["PAID"]);
    let records = marketsync::source::parse_delivery(&paid.to_string()).unwrap();
    let placed_id = |engine: &marketsync::engine::Engine| -> Value {
        let mapped = engine.map(&records[0]);
        let placed = mapped
            .requests
            .iter()
            .find(|r| &*r.mapping == "placed-order")
            .unwrap();
        attributes(placed)["unique_id"].clone()
    };
    assert_eq!(placed_id(&engine()), "default:placed-order:5004");
    assert_eq!(
        placed_id(&engine().with_default_marketplace("petmarket")),
        "petmarket:placed-order:5004"
    );
    let mut captured = records[0].clone();
    captured.marketplace = Some("vertical".into());
    let mapped = engine()
        .with_default_marketplace("petmarket")
        .map(&captured);
    assert!(mapped.requests.iter().all(|r| {
        r.endpoint != Endpoint::CreateEvent
            || attributes(r)["unique_id"]
                .as_str()
                .unwrap()
                .starts_with("vertical:")
    }));
}
