//! Days of webhooks generated from the examples' shapes: what `serve` receives and the
//! Marketplacer stand-in serves, as many orders as a test needs.
//!
//! Order `n` (counted from the `first` a call asks for, so two calls never share an id) is one
//! invoice of one order of two lines, paid in the first 16 hours of its day; every third has a
//! shipment two hours later (with a tracking number and no tracking link), every tenth from the
//! fifth a refund of its first line five hours later; three in four buyers opt in to marketing.
//! Order totals and refunds vary with `n`, so that money at stake tells records apart.

use base64::Engine as _;
use serde_json::{Value, json};

pub fn gid(type_name: &str, id: u64) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{type_name}-{id}"))
}

/// `start` plus `offset_seconds`, written in Sydney's summer offset as Marketplacer writes it.
pub fn time(start: &str, offset_seconds: i64) -> String {
    let start = chrono::DateTime::parse_from_rfc3339(start).unwrap();
    let at = start + chrono::Duration::seconds(offset_seconds);
    at.with_timezone(&chrono::FixedOffset::east_opt(11 * 3600).unwrap())
        .to_rfc3339()
}

fn example(name: &str) -> Value {
    let text = std::fs::read_to_string(super::repo("examples").join(name)).unwrap();
    let text = text.lines().find(|l| !l.trim().is_empty()).unwrap_or(&text);
    serde_json::from_str(text)
        .or_else(|_| {
            serde_json::from_str(
                &std::fs::read_to_string(super::repo("examples").join(name)).unwrap(),
            )
        })
        .unwrap()
}

fn capture(key: String, event: &str, node: Value) -> Value {
    json!({
        "headers": {"Marketplacer-Vertical": "petmarket", "Idempotency-Key": key.clone()},
        "body": {"id": key, "event_name": event, "payload": {"data": {"node": node}}},
    })
}

pub fn ndjson(deliveries: &[&Value]) -> String {
    deliveries.iter().map(|d| d.to_string() + "\n").collect()
}

/// Marketplacer's legacy ids of order `n` and of what belongs to it.
pub fn order_id(n: u64) -> u64 {
    700_000 + n
}
pub fn shipment_id(n: u64) -> u64 {
    900_000 + n
}
pub fn refund_id(n: u64) -> u64 {
    600_000 + n
}
pub fn email(n: u64) -> String {
    format!("buyer{n}@example.com")
}
/// The buyer's phone as Klaviyo holds it (E.164); the order has it as `04…`.
pub fn phone(n: u64) -> String {
    format!("+614{:08}", 12_000_000 + n)
}
pub fn has_shipment(n: u64) -> bool {
    n.is_multiple_of(3)
}
pub fn has_refund(n: u64) -> bool {
    n % 10 == 5
}
pub fn opts_in(n: u64) -> bool {
    n % 4 != 3
}
/// The order's total (its Placed Order's value), in cents.
pub fn total_cents(n: u64) -> i64 {
    5_000 + (n as i64 * 7_919) % 20_000
}
/// The refund of its first line, in cents.
pub fn refund_cents(n: u64) -> i64 {
    1_000 + (n as i64 * 31) % 4_000
}

/// `per_day` orders on each of `days` days from `start` (RFC 3339), numbered from `first`.
pub fn generate(start: &str, days: u64, per_day: u64, first: u64) -> Vec<Value> {
    let invoice = example("orders.ndjson")["body"]["payload"]["data"]["node"].clone();
    let shipment = example("shipment.json")["body"]["payload"]["data"]["node"].clone();
    let refund = example("refund.json")["body"]["payload"]["data"]["node"].clone();
    let mut out = Vec::new();
    for i in 0..days * per_day {
        let n = first + i;
        let day = (i / per_day) as i64 * 86_400;
        let at = day + (i % per_day) as i64 * (16 * 3600) / per_day as i64 + 60;
        let time = |offset: i64| time(start, at + offset);
        let (order_id, invoice_id) = (order_id(n), 800_000 + n);
        let email = email(n);
        let mut node = invoice.clone();
        node["id"] = gid("Invoice", invoice_id).into();
        node["legacyId"] = invoice_id.into();
        node["createdAt"] = time(0).into();
        node["paidAt"] = time(1).into();
        node["updatedAt"] = time(2).into();
        let lines = node["lineItems"].as_array_mut().unwrap();
        for (i, line) in lines.iter_mut().enumerate() {
            let line_id = order_id * 10 + i as u64;
            line["id"] = gid("LineItem", line_id).into();
            line["legacyId"] = line_id.into();
        }
        let lines = node["lineItems"].clone();
        let seller = node["seller"].clone();
        let order = &mut node["order"];
        order["id"] = gid("Order", order_id).into();
        order["legacyId"] = order_id.into();
        order["emailAddress"] = email.clone().into();
        // One customer, one phone: Klaviyo refuses a phone another profile holds.
        order["phone"] = format!("04{:08}", 12_000_000 + n).into();
        order["createdAt"] = time(0).into();
        order["updatedAt"] = time(2).into();
        order["totalCents"] = total_cents(n).into();
        order["metadata"] = json!([
            {"key": "accepts_marketing", "value": if opts_in(n) { "yes" } else { "no" }},
            {"key": "checkout_channel", "value": "web"},
        ]);
        order["lineItems"]["nodes"] = lines.clone();
        order["invoices"]["nodes"] =
            json!([{"id": gid("Invoice", invoice_id), "legacyId": invoice_id, "seller": seller}]);
        let summary = json!({
            "id": gid("Invoice", invoice_id), "legacyId": invoice_id,
            "seller": node["seller"].clone(),
            "order": {"id": gid("Order", order_id), "legacyId": order_id, "emailAddress": email,
                      "firstName": node["order"]["firstName"].clone(),
                      "surname": node["order"]["surname"].clone()},
        });
        out.push(capture(format!("invoice-{n}"), "create", node));
        if has_shipment(n) {
            let mut ship = shipment.clone();
            let id = shipment_id(n);
            ship["id"] = gid("Shipment", id).into();
            ship["legacyId"] = id.into();
            ship["createdAt"] = time(7200).into();
            ship["updatedAt"] = time(7200).into();
            ship["dispatchedAt"] = time(7000).into();
            ship.as_object_mut().unwrap().remove("trackingLink");
            let items: Vec<Value> = lines
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
                .map(|(i, line)| {
                    json!({"id": gid("ShippedItem", id * 10 + i as u64), "quantity": line["quantity"].clone(),
                           "lineItem": {"id": line["id"].clone(), "legacyId": line["legacyId"].clone(),
                                        "advertTitle": line["advertTitle"].clone(), "brandName": line["brandName"].clone(),
                                        "variantName": line["variantName"].clone(), "variantSku": line["variantSku"].clone(),
                                        "totalCents": line["totalCents"].clone()}})
                })
                .collect();
            ship["shippedItems"] = items.into();
            let mut on = summary.clone();
            on["statusFlags"] = json!(["PAID", "SENT"]);
            on["order"]["phone"] = Value::Null;
            on["order"]["totalCents"] = total_cents(n).into();
            ship["invoice"] = on;
            out.push(capture(format!("shipment-{n}"), "create", ship));
        }
        if has_refund(n) {
            let mut back = refund.clone();
            let id = refund_id(n);
            let cents = refund_cents(n);
            back["id"] = gid("RefundRequest", id).into();
            back["legacyId"] = id.into();
            back["createdAt"] = time(3600).into();
            back["updatedAt"] = time(5 * 3600).into();
            back["refundedAt"] = time(5 * 3600).into();
            for field in ["refundAmountCents", "cashAmountCents", "totalCents"] {
                back[field] = cents.into();
            }
            let first = &lines[0];
            let line = &mut back["lineItems"][0];
            line["id"] = gid("RefundRequestLineItem", id).into();
            line["legacyId"] = id.into();
            line["amountCents"] = cents.into();
            line["amountPerItemCents"] = cents.into();
            line["lineItem"] = json!({"id": first["id"].clone(), "legacyId": first["legacyId"].clone(),
                "advertTitle": first["advertTitle"].clone(), "brandName": first["brandName"].clone(),
                "variantSku": first["variantSku"].clone()});
            let mut on = summary.clone();
            on.as_object_mut().unwrap().remove("statusFlags");
            back["invoice"] = on;
            out.push(capture(format!("refund-{n}"), "update", back));
        }
    }
    out
}

/// Both stand-ins for a reconciliation test, with a folder of its own: Marketplacer serving
/// `text` (webhook captures as NDJSON, what `serve` would have received), Klaviyo empty.
pub struct StandIns {
    pub dir: tempfile::TempDir,
    pub runtime: tokio::runtime::Runtime,
    pub klaviyo: marketsync::standin::StandIn,
    pub marketplacer: marketsync::standin::marketplacer::StandIn,
}

impl StandIns {
    /// Starts both; `dir` may already hold the test's clients.
    pub fn start(dir: tempfile::TempDir, name: &str, text: &str) -> StandIns {
        use marketsync::standin::marketplacer as mp;
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let mut data = mp::Data::new();
        let summary = data.load_text(name, text);
        assert!(summary.problems.is_empty(), "{:?}", summary.problems);
        let marketplacer = runtime
            .block_on(mp::StandIn::start(mp::Config {
                data,
                ..mp::Config::default()
            }))
            .unwrap();
        let klaviyo = runtime
            .block_on(marketsync::standin::StandIn::start(
                marketsync::standin::Config::default(),
            ))
            .unwrap();
        StandIns {
            dir,
            runtime,
            klaviyo,
            marketplacer,
        }
    }

    pub fn state(&self) -> std::path::PathBuf {
        self.dir.path().join("state.db")
    }

    /// The binary in the test's folder, with both stand-ins' keys and Klaviyo's address.
    pub fn command(&self, args: &[&str]) -> std::process::Command {
        let mut command = super::marketsync_command();
        command
            .current_dir(self.dir.path())
            .args(args)
            .env("KLAVIYO_API_KEY", marketsync::standin::DEFAULT_API_KEY)
            .env("KLAVIYO_BASE_URL", self.klaviyo.url())
            .env(
                "MARKETPLACER_API_KEY",
                marketsync::standin::marketplacer::DEFAULT_API_KEY,
            );
        command
    }

    pub fn shutdown(self) {
        self.runtime.block_on(async {
            self.klaviyo.shutdown().await;
            self.marketplacer.shutdown().await;
        });
    }
}
