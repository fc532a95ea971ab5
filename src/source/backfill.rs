//! Backfill pages, reshaped into the records their webhooks would have carried.
//!
//! A backfill order nests its invoices, and each invoice its shipments and refund requests,
//! while webhooks arrive one object at a time with the order embedded. Rather than make every
//! mapping read two shapes (and risk the two drifting into different `unique_id`s), each order
//! becomes what the webhooks would have delivered:
//! - one `Invoice` record per invoice, with the whole `order` embedded (all its line items under
//!   `order.lineItems.nodes`, its invoices under `order.invoices.nodes`), as the Invoice webhook
//!   query returns it;
//! - one `Shipment` record per shipment, with its `invoice` and that invoice's `order`;
//! - one `RefundRequest` record per refund request, with its `invoice` and `order`, and each
//!   refunded line's `lineItem` filled in from the invoice's line items.
//!
//! Whole subtrees are moved, not picked field by field, so fields a client adds to the backfill
//! query reach the mappings too: a shipment's or refund's `invoice` is its whole invoice with
//! the whole order, and an order's invoice summaries are whole invoices (without their
//! children). A record may so carry more than its webhook did, never less of what the webhook
//! query selects. What the backfill query does not carry (a shipment's `shippedItems`, an
//! invoice's `shippingAddress`) is simply absent, and mappings treat it as optional.

use super::{Record, RecordError};
use serde_json::{Map, Value as Json, json};

/// The records of one backfill page's `data` object, in page order: for each order its
/// invoices, then its shipments, then its refund requests.
pub fn records(mut data: Map<String, Json>) -> Result<Vec<Record>, RecordError> {
    let site = data.remove("siteConfig").unwrap_or(Json::Null);
    let marketplace = site
        .get("verticalCode")
        .and_then(Json::as_str)
        .map(str::to_owned);
    let currency = site
        .pointer("/country/currencyCode")
        .and_then(Json::as_str)
        .map(str::to_owned);
    let orders = match data.remove("updatedOrders") {
        Some(Json::Object(mut page)) => match page.remove("nodes") {
            Some(Json::Array(nodes)) => nodes,
            _ => {
                return Err(RecordError::Unrecognised(
                    "backfill page has no `updatedOrders.nodes` list".into(),
                ));
            }
        },
        _ => {
            return Err(RecordError::Unrecognised(
                "backfill page has no `updatedOrders` object".into(),
            ));
        }
    };
    let mut records = Vec::new();
    for (index, order) in orders.into_iter().enumerate() {
        let Json::Object(order) = order else {
            return Err(RecordError::Unrecognised(format!(
                "backfill order #{index} is not an object"
            )));
        };
        for (typename, node) in reshape_order(order) {
            // By content, not by the node id alone: a backfill is run again to catch what
            // changed (an invoice paid since, a refund approved), and an id-only key would
            // count the changed invoice as a repeat and never map it. An unchanged node is
            // still a repeat; what a changed one sends twice, once-per keys and `unique_id`s
            // absorb.
            let delivery_id = super::content_id("backfill", typename, &node);
            records.push(Record {
                delivery_id,
                event: "backfill".into(),
                typename: typename.into(),
                marketplace: marketplace.clone(),
                currency: currency.clone(),
                node: std::sync::Arc::new(node),
            });
        }
    }
    Ok(records)
}

fn take_list(object: &mut Map<String, Json>, key: &str) -> Vec<Json> {
    match object.remove(key) {
        Some(Json::Array(items)) => items,
        Some(Json::Object(mut connection)) => match connection.remove("nodes") {
            Some(Json::Array(items)) => items,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// One order node into (typename, webhook-shaped node) pairs.
fn reshape_order(mut order: Map<String, Json>) -> Vec<(&'static str, Json)> {
    let invoices: Vec<Map<String, Json>> = take_list(&mut order, "invoices")
        .into_iter()
        .filter_map(|i| match i {
            Json::Object(i) => Some(i),
            _ => None,
        })
        .collect();
    let all_lines: Vec<Json> = invoices
        .iter()
        .flat_map(|i| {
            i.get("lineItems")
                .and_then(Json::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    // Whole subtrees, never a list of fields: whatever a client adds to the backfill query
    // (on the order, an invoice, a shipment or a refund) reaches its records. An invoice as a
    // summary or as a child's parent is the invoice without its children.
    let summary = |invoice: &Map<String, Json>| {
        let mut summary = invoice.clone();
        for children in ["shipments", "refundRequests", "lineItems"] {
            summary.remove(children);
        }
        Json::Object(summary)
    };
    let invoice_summaries: Vec<Json> = invoices.iter().map(summary).collect();
    let mut full_order = order;
    full_order.insert("lineItems".into(), json!({ "nodes": all_lines }));
    full_order.insert("invoices".into(), json!({ "nodes": invoice_summaries }));
    let full_order = Json::Object(full_order);

    let mut invoice_records = Vec::new();
    let mut shipment_records = Vec::new();
    let mut refund_records = Vec::new();
    for mut invoice in invoices {
        let shipments = take_list(&mut invoice, "shipments");
        let refunds = take_list(&mut invoice, "refundRequests");
        let mut parent = invoice.clone();
        parent.insert("order".into(), full_order.clone());
        let parent = Json::Object(parent);
        let lines = invoice
            .get("lineItems")
            .and_then(Json::as_array)
            .cloned()
            .unwrap_or_default();

        for shipment in shipments {
            if let Json::Object(mut shipment) = shipment {
                shipment.insert("__typename".into(), "Shipment".into());
                shipment.insert("invoice".into(), parent.clone());
                shipment_records.push(("Shipment", Json::Object(shipment)));
            }
        }
        for refund in refunds {
            if let Json::Object(mut refund) = refund {
                if let Some(Json::Array(refund_lines)) = refund.get_mut("lineItems") {
                    for refund_line in refund_lines {
                        fill_line_item(refund_line, &lines);
                    }
                }
                refund.insert("__typename".into(), "RefundRequest".into());
                refund.insert("invoice".into(), parent.clone());
                refund_records.push(("RefundRequest", Json::Object(refund)));
            }
        }
        invoice.insert("__typename".into(), "Invoice".into());
        invoice.insert("order".into(), full_order.clone());
        invoice_records.push(("Invoice", Json::Object(invoice)));
    }
    invoice_records.extend(shipment_records);
    invoice_records.extend(refund_records);
    invoice_records
}

/// Completes a refund line's `lineItem` (which the backfill query gives only as `legacyId`)
/// from the invoice line with the same `legacyId`, keeping anything the refund line had.
fn fill_line_item(refund_line: &mut Json, invoice_lines: &[Json]) {
    let Some(line_item) = refund_line
        .get_mut("lineItem")
        .and_then(Json::as_object_mut)
    else {
        return;
    };
    let Some(legacy_id) = line_item.get("legacyId").cloned() else {
        return;
    };
    let Some(Json::Object(full)) = invoice_lines
        .iter()
        .find(|l| l.get("legacyId") == Some(&legacy_id))
    else {
        return;
    };
    for (key, value) in full {
        line_item
            .entry(key.clone())
            .or_insert_with(|| value.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> Map<String, Json> {
        let page = json!({
            "siteConfig": {"verticalCode": "petmarket", "country": {"code": "AU", "currencyCode": "AUD"}},
            "updatedOrders": {"totalCount": 1, "pageInfo": {"hasNextPage": false}, "nodes": [{
                "id": "O1", "legacyId": 1, "status": "COMPLETE", "emailAddress": "a@b.co",
                "invoices": {"nodes": [
                    {"id": "I1", "legacyId": 11, "statusFlags": ["PAID"], "seller": {"legacyId": 7},
                     "lineItems": [{"legacyId": 101, "advertTitle": "Toy"}],
                     "shipments": [{"id": "S1", "carrier": "AusPost"}],
                     "refundRequests": [{"id": "R1", "status": "REFUNDED", "lineItems": [{"dispatched": false, "lineItem": {"legacyId": 101}}]}]},
                    {"id": "I2", "legacyId": 12, "statusFlags": ["PAID"], "seller": {"legacyId": 8},
                     "lineItems": [{"legacyId": 102, "advertTitle": "Lead"}], "shipments": [], "refundRequests": []}
                ]}
            }]}
        });
        page.as_object().unwrap().clone()
    }

    #[test]
    fn an_order_becomes_its_webhook_records() {
        let records = records(page()).unwrap();
        let kinds: Vec<(&str, &str)> = records
            .iter()
            .map(|r| {
                (
                    r.typename.as_str(),
                    r.delivery_id.rsplit_once(':').unwrap().0,
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("Invoice", "backfill:Invoice:I1"),
                ("Invoice", "backfill:Invoice:I2"),
                ("Shipment", "backfill:Shipment:S1"),
                ("RefundRequest", "backfill:RefundRequest:R1")
            ]
        );
        assert!(records.iter().all(|r| r.event == "backfill"
            && r.marketplace.as_deref() == Some("petmarket")
            && r.currency.as_deref() == Some("AUD")));
        let invoice = &records[0].node;
        assert_eq!(invoice["__typename"], "Invoice");
        assert_eq!(
            invoice["order"]["lineItems"]["nodes"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            invoice["order"]["invoices"]["nodes"][1],
            json!({"id": "I2", "legacyId": 12, "statusFlags": ["PAID"], "seller": {"legacyId": 8}}),
            "a summary is the whole invoice without its children"
        );
        assert!(invoice.get("shipments").is_none());
        let shipment = &records[2].node;
        assert_eq!(shipment["invoice"]["order"]["emailAddress"], "a@b.co");
        assert_eq!(shipment["invoice"]["statusFlags"], json!(["PAID"]));
        let refund = &records[3].node;
        assert_eq!(refund["lineItems"][0]["lineItem"]["advertTitle"], "Toy");
        assert_eq!(refund["invoice"]["order"]["legacyId"], 1);
    }

    /// A field a client adds to the backfill query on an order or an invoice reaches the
    /// shipment's and refund's records too (they used to carry a fixed list of fields).
    #[test]
    fn children_carry_their_whole_invoice_and_order() {
        let mut page = Json::Object(page());
        page["updatedOrders"]["nodes"][0]["companyName"] = json!("Acme Pty Ltd");
        page["updatedOrders"]["nodes"][0]["invoices"]["nodes"][0]["buyerPhone"] = json!("0400");
        let records = records(page.as_object().unwrap().clone()).unwrap();
        for child in &records[2..] {
            assert_eq!(
                child.node["invoice"]["order"]["companyName"],
                "Acme Pty Ltd"
            );
            assert_eq!(child.node["invoice"]["buyerPhone"], "0400");
            assert!(child.node["invoice"].get("shipments").is_none());
        }
    }

    #[test]
    fn an_object_that_changed_since_the_last_backfill_is_a_new_delivery() {
        let ids = |page: Map<String, Json>| -> Vec<String> {
            records(page)
                .unwrap()
                .into_iter()
                .map(|r| r.delivery_id)
                .collect()
        };
        let before = ids(page());
        assert_eq!(ids(page()), before, "the same page again is all repeats");
        // Invoice I1 is refunded since: every record of the order embeds it (whole subtrees),
        // so each is mapped again, and once-per keys absorb what was sent before.
        let mut changed = Json::Object(page());
        changed["updatedOrders"]["nodes"][0]["invoices"]["nodes"][0]["statusFlags"] =
            json!(["PAID", "REFUNDED"]);
        let after = ids(changed.as_object().unwrap().clone());
        assert_ne!(after[0], before[0], "the changed invoice is mapped again");
        for (index, (after, before)) in after.iter().zip(&before).enumerate() {
            assert_ne!(after, before, "record {index} embeds the changed invoice");
        }
    }

    #[test]
    fn nodes_without_an_id_get_one_from_their_content() {
        let mut page = page();
        for id in [
            "/updatedOrders/nodes/0/invoices/nodes/0/id",
            "/updatedOrders/nodes/0/invoices/nodes/1/id",
        ] {
            let (parent, key) = id.rsplit_once('/').unwrap();
            let mut value = Json::Object(page.clone());
            value
                .pointer_mut(parent)
                .unwrap()
                .as_object_mut()
                .unwrap()
                .remove(key);
            page = value.as_object().unwrap().clone();
        }
        let ids: Vec<String> = records(page.clone())
            .unwrap()
            .into_iter()
            .map(|r| r.delivery_id)
            .collect();
        assert!(ids[0].starts_with("backfill:Invoice:"), "{ids:?}");
        assert_ne!(ids[0], ids[1], "two invoices are two deliveries");
        let again: Vec<String> = records(page)
            .unwrap()
            .into_iter()
            .map(|r| r.delivery_id)
            .collect();
        assert_eq!(ids, again, "the same page gives the same ids");
    }

    #[test]
    fn a_page_without_orders_is_an_error() {
        let err = records(json!({"siteConfig": {}}).as_object().unwrap().clone()).unwrap_err();
        assert!(err.to_string().contains("updatedOrders"));
    }
}
