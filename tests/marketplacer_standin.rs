//! The Marketplacer stand-in, driven over HTTP as a reconciliation client drives it: the
//! seven queries of `notes/reconciliation.md` §4, paging, window edges, the errors a client's
//! mistakes get, rate limits, faults, auth, webhooks, and loading data.

mod common;

use base64::Engine as _;
use marketsync::standin::marketplacer::{Config, Data, Faults, Injected, LineProblem, StandIn};
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value as Json, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

const KEY: &str = "mp_test_key";

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// Every webhook example of the repository (not the backfill page), as `serve` receives them.
fn examples() -> Data {
    let mut data = Data::new();
    for name in [
        "orders.ndjson",
        "invoice-unpaid.json",
        "shipment.json",
        "cancellation.json",
        "refund-pending.json",
        "refund.json",
    ] {
        let summary = data.load_file(&examples_dir().join(name)).unwrap();
        assert!(
            summary.problems.is_empty(),
            "{name}: {:?}",
            summary.problems
        );
    }
    data
}

fn gid(type_name: &str, n: u64) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{type_name}-{n}"))
}

/// A capture of an Invoice `create`, as `serve` stores one.
fn invoice_capture(n: u64, created: &str, paid: Option<&str>, updated: &str) -> Json {
    let order = 90_000 + n;
    json!({
        "received_at": "2026-12-01T00:00:00.000Z",
        "headers": {"Marketplacer-Vertical": "petmarket", "Idempotency-Key": format!("key-{n}")},
        "body": {
            "id": gid("WebhookEvent", n),
            "event_name": "create",
            "payload": {"data": {"node": {
                "__typename": "Invoice",
                "id": gid("Invoice", n),
                "legacyId": n,
                "createdAt": created,
                "updatedAt": updated,
                "paidAt": paid,
                "statusFlags": if paid.is_some() { json!(["PAID"]) } else { json!(["PAYMENT_UNDER_REVIEW"]) },
                "totalCents": 1000 + n,
                "seller": {"id": gid("Seller", 11), "legacyId": 11, "businessName": "Paws & Claws Co."},
                "lineItems": [{"id": gid("LineItem", n * 10), "legacyId": n * 10, "quantity": 1, "totalCents": 1000 + n}],
                "order": {
                    "id": gid("Order", order),
                    "legacyId": order,
                    "createdAt": created,
                    "updatedAt": updated,
                    "status": "COMPLETE",
                    "emailAddress": format!("buyer{n}@example.com"),
                }
            }}}
        }
    })
}

fn data_of(captures: &[Json]) -> Data {
    let text: String = captures.iter().map(|c| format!("{c}\n")).collect();
    let mut data = Data::new();
    let summary = data.load_text("captures.ndjson", &text);
    assert!(summary.problems.is_empty(), "{:?}", summary.problems);
    assert_eq!(summary.loaded, captures.len());
    data
}

fn config(data: Data) -> Config {
    Config {
        data,
        api_keys: vec![KEY.to_owned()],
        ..Config::default()
    }
}

struct Api {
    standin: StandIn,
    client: Client,
}

impl Api {
    async fn start(config: Config) -> Api {
        let standin = StandIn::start(config).await.expect("the stand-in starts");
        let client = Client::builder().no_proxy().build().unwrap();
        Api { standin, client }
    }

    async fn post_with(&self, key: Option<(&str, &str)>, body: &Json) -> Response {
        let mut request = self.client.post(self.standin.graphql_url()).json(body);
        if let Some((header, value)) = key {
            request = request.header(header, value);
        }
        request.send().await.expect("an answer")
    }

    async fn post(&self, body: &Json) -> Response {
        self.post_with(Some(("MARKETPLACER-API-KEY", KEY)), body)
            .await
    }

    /// The JSON answer to a query, which must be a 200.
    async fn query(&self, query: &str, variables: Json) -> Json {
        let response = self
            .post(&json!({"query": query, "variables": variables}))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    /// The `data` of a query that must answer without errors.
    async fn data(&self, query: &str, variables: Json) -> Json {
        let answer = self.query(query, variables).await;
        assert!(answer.get("errors").is_none(), "{answer:#}");
        answer["data"].clone()
    }
}

fn legacy_ids(nodes: &Json) -> Vec<u64> {
    nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["legacyId"].as_u64().unwrap())
        .collect()
}

// The seven queries of notes/reconciliation.md §4, verbatim.
const RECON_UPDATED_ORDERS: &str = r#"query ReconUpdatedOrders($since: ISO8601DateTime!, $after: String) {
  siteConfig { verticalCode country { code currencyCode taxInclusive } }
  updatedOrders(first: 100, after: $after, updatedSince: $since) { totalCount pageInfo { hasNextPage endCursor }
    nodes { id legacyId createdAt updatedAt status emailAddress phone
      totalCents subtotalCents discountCents shippingCostCents taxTotalCents
      invoices(first: 50) { pageInfo { hasNextPage endCursor }
        nodes { id legacyId updatedAt paidAt statusFlags totalCents totalIncludingAdjustmentsCents
          seller { legacyId businessName }
          shipments { id legacyId createdAt dispatchedAt carrier trackingNumber trackingLink }
          refundRequests { id legacyId status refundedAt refundAmountCents totalCents }
          amendments { id legacyId createdAt totalCents } } } } } }"#;
const RECON_PAID_INVOICES: &str = r#"query ReconPaidInvoices($from: ISO8601DateTime!, $to: ISO8601DateTime!, $after: String) {
  invoices(first: 500, after: $after, filters: { paidSince: $from, paidUntil: $to },
           sort: { fields: [PAID_AT], ordering: ASCENDING }) { totalCount pageInfo { hasNextPage endCursor }
    nodes { id legacyId paidAt totalCents statusFlags order { legacyId createdAt status } } } }"#;
const RECON_REFUNDS: &str = r#"query ReconRefunds($from: ISO8601DateTime!, $to: ISO8601DateTime!, $after: String) {
  refundRequests(first: 500, after: $after, filters: { refundedSince: $from, refundedUntil: $to, statuses: [REFUNDED] }) {
    totalCount pageInfo { hasNextPage endCursor }
    nodes { id legacyId status refundedAt refundAmountCents totalCents
      lineItems { dispatched status amountCents quantity lineItem { legacyId } }
      invoice { legacyId order { legacyId emailAddress } } } } }"#;
const RECON_AMENDMENTS: &str = r#"query ReconAmendments($from: ISO8601DateTime!, $to: ISO8601DateTime!, $after: String) {
  invoiceAmendments(first: 500, after: $after, filters: { createdSince: $from, createdUntil: $to },
                    sort: { fields: [CREATED_AT], ordering: ASCENDING }) { pageInfo { hasNextPage endCursor }
    nodes { id legacyId createdAt totalCents invoice { legacyId } order { legacyId } } } }"#;
const RECON_SHIPMENTS: &str = r#"query ReconShipments($from: ISO8601DateTime!, $to: ISO8601DateTime!, $after: String) {
  invoices(first: 200, after: $after, filters: { updatedSince: $from, updatedUntil: $to },
           sort: { fields: [UPDATED_AT], ordering: ASCENDING }) { pageInfo { hasNextPage endCursor }
    nodes { legacyId statusFlags order { legacyId emailAddress }
      shipments { legacyId createdAt dispatchedAt carrier trackingNumber trackingLink } } } }"#;
const RECON_WEBHOOK_HEALTH: &str = r#"query ReconWebhookHealth($after: String) {
  klaviyoSettings { status ecommerceTrackingEnabled edmEnabled }
  webhooks(first: 50) { nodes { id type enabled eventName maxRetries } }
  webhookEvents(first: 500, after: $after) { pageInfo { hasNextPage endCursor }
    nodes { id eventName status createdAt processedAt skipped retryAfter
      invoice { legacyId } shipment { legacyId } refundRequest { legacyId } } } }"#;
const RECON_SUBSCRIPTIONS: &str = r#"query ReconSubscriptions($since: ISO8601Date, $after: String) {
  emailMarketingSubscriptions(first: 500, after: $after, subscribedSince: $since) {
    pageInfo { hasNextPage endCursor } nodes { email sourceType subscribedAt } } }"#;

#[tokio::test]
async fn the_reconciliation_queries_answer_the_examples_for_a_window() {
    let api = Api::start(config(examples())).await;
    let window = json!({"from": "2026-03-14T00:00:00+11:00", "to": "2026-03-16T00:00:00+11:00"});

    let data = api
        .data(
            RECON_UPDATED_ORDERS,
            json!({"since": "2026-03-15T00:00:00+11:00"}),
        )
        .await;
    assert_eq!(data["siteConfig"]["verticalCode"], "petmarket");
    assert_eq!(data["siteConfig"]["country"]["currencyCode"], "AUD");
    let orders = &data["updatedOrders"];
    // 5001 was last updated on the 14th; 5002, 5003 and the unpaid 5004 since the 15th.
    assert_eq!(legacy_ids(&orders["nodes"]), [5002, 5003, 5004]);
    assert_eq!(orders["totalCount"], 3);
    let invoice = &orders["nodes"][0]["invoices"]["nodes"][0];
    assert_eq!(invoice["legacyId"], 1003);
    assert_eq!(
        invoice["totalIncludingAdjustmentsCents"],
        invoice["totalCents"]
    );
    assert_eq!(invoice["refundRequests"][0]["legacyId"], 7002);
    assert_eq!(invoice["refundRequests"][0]["status"], "REFUNDED");

    let data = api.data(RECON_PAID_INVOICES, window.clone()).await;
    let paid = &data["invoices"];
    assert_eq!(legacy_ids(&paid["nodes"]), [1001, 1002, 1003]);
    assert_eq!(paid["totalCount"], 3);
    assert_eq!(paid["pageInfo"]["hasNextPage"], false);
    assert_eq!(paid["nodes"][2]["order"]["legacyId"], 5002);

    let all_march = json!({"from": "2026-03-01T00:00:00Z", "to": "2026-03-31T00:00:00Z"});
    let data = api.data(RECON_REFUNDS, all_march.clone()).await;
    let refunds = &data["refundRequests"]["nodes"];
    assert_eq!(legacy_ids(refunds), [7001, 7002]);
    assert_eq!(refunds[0]["lineItems"][0]["dispatched"], false);
    assert_eq!(refunds[1]["lineItems"][0]["lineItem"]["legacyId"], 9004);
    assert_eq!(refunds[1]["invoice"]["order"]["legacyId"], 5002);

    let data = api.data(RECON_AMENDMENTS, all_march.clone()).await;
    assert_eq!(data["invoiceAmendments"]["nodes"], json!([]));

    let data = api.data(RECON_SHIPMENTS, all_march.clone()).await;
    let invoices = &data["invoices"]["nodes"];
    let with_shipments: Vec<(u64, u64)> = invoices
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| {
            i["shipments"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    (
                        i["legacyId"].as_u64().unwrap(),
                        s["legacyId"].as_u64().unwrap(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(with_shipments, [(1001, 6001)]);
    // Seen inside the later shipment, invoice 1001 is sent as well as paid.
    assert_eq!(invoices[0]["statusFlags"], json!(["PAID", "SENT"]));

    let data = api.data(RECON_WEBHOOK_HEALTH, json!({})).await;
    assert_eq!(data["klaviyoSettings"]["ecommerceTrackingEnabled"], false);
    let webhooks = data["webhooks"]["nodes"].as_array().unwrap();
    let types: Vec<&str> = webhooks
        .iter()
        .map(|w| w["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["INVOICE", "REFUND_REQUEST", "SHIPMENT"]);
    assert!(webhooks.iter().all(|w| w["enabled"] == true));
    let events = data["webhookEvents"]["nodes"].as_array().unwrap();
    // Ten deliveries, one of them a redelivery of the same event.
    assert_eq!(events.len(), 9);
    assert!(events.iter().any(|e| e["shipment"]["legacyId"] == 6001));
    assert!(
        events
            .iter()
            .all(|e| e["status"] == "sent" && e["createdAt"].is_string())
    );

    let data = api
        .data(RECON_SUBSCRIPTIONS, json!({"since": "2026-03-01"}))
        .await;
    assert_eq!(data["emailMarketingSubscriptions"]["nodes"], json!([]));

    let stats = api.standin.stats();
    assert_eq!(stats.answered, 7);
    assert_eq!(stats.root_fields["invoices"], 2);
    assert_eq!(
        stats.queries[1].operation.as_deref(),
        Some("ReconPaidInvoices")
    );
    assert_eq!(stats.queries[1].variables, window);
}

#[tokio::test]
async fn paging_returns_each_node_exactly_once() {
    let captures: Vec<Json> = (1..=1234)
        .map(|n| {
            let at = format!("2026-11-30T{:02}:{:02}:00+11:00", n % 24, n % 60);
            invoice_capture(n, &at, Some(&at), &at)
        })
        .collect();
    let api = Api::start(config(data_of(&captures))).await;
    let query = "query Page($after: String) { invoices(first: 100, after: $after) { totalCount pageInfo { hasNextPage endCursor } edges { cursor node { legacyId } } } }";
    let mut seen = Vec::new();
    let mut after = Json::Null;
    let mut pages = 0;
    loop {
        let data = api.data(query, json!({"after": after})).await;
        let connection = &data["invoices"];
        assert_eq!(connection["totalCount"], 1234);
        let edges = connection["edges"].as_array().unwrap();
        seen.extend(
            edges
                .iter()
                .map(|e| e["node"]["legacyId"].as_u64().unwrap()),
        );
        assert_eq!(
            connection["pageInfo"]["endCursor"],
            edges.last().unwrap()["cursor"]
        );
        pages += 1;
        if connection["pageInfo"]["hasNextPage"] == false {
            break;
        }
        after = connection["pageInfo"]["endCursor"].clone();
    }
    assert_eq!(pages, 13);
    let mut unique = seen.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(seen.len(), 1234, "every node once");
    assert_eq!(unique, (1..=1234).collect::<Vec<_>>());

    // No `first`: Marketplacer's default page of 50. Over the maximum: cut to 500, no error,
    // as graphql-ruby's max_page_size does.
    let data = api
        .data("{ invoices { nodes { legacyId } } }", json!({}))
        .await;
    assert_eq!(data["invoices"]["nodes"].as_array().unwrap().len(), 50);
    let data = api
        .data(
            "{ invoices(first: 1000) { pageInfo { hasNextPage endCursor } nodes { legacyId } } }",
            json!({}),
        )
        .await;
    assert_eq!(data["invoices"]["nodes"].as_array().unwrap().len(), 500);
    assert_eq!(data["invoices"]["pageInfo"]["hasNextPage"], true);
    // Cursors are positions, base64url without padding, as graphql-ruby writes them.
    assert_eq!(data["invoices"]["pageInfo"]["endCursor"], "NTAw");

    // Backwards paging is not in use at Marketplacer: refused, with the field's path.
    let answer = api
        .query("{ invoices(last: 5) { nodes { legacyId } } }", json!({}))
        .await;
    assert_eq!(answer["errors"][0]["path"], json!(["invoices"]));
    assert!(
        answer["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("`last`")
    );
    let answer = api
        .query(
            "{ invoices(after: \"not base64!\") { nodes { legacyId } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        answer["errors"][0]["message"],
        "Invalid input: \"not base64!\""
    );
}

#[tokio::test]
async fn windows_compare_instants_and_include_both_edges() {
    let from = "2026-11-30T00:00:00+11:00";
    let to = "2026-12-01T00:00:00+11:00";
    let api = Api::start(config(data_of(&[
        // Just before the window.
        invoice_capture(
            1,
            "2026-11-29T23:00:00+11:00",
            Some("2026-11-29T23:59:59+11:00"),
            "2026-11-29T23:59:59+11:00",
        ),
        // Exactly at its start, written in UTC.
        invoice_capture(
            2,
            "2026-11-29T13:00:00Z",
            Some("2026-11-29T13:00:00Z"),
            "2026-11-29T13:00:00Z",
        ),
        // Inside, written in another offset.
        invoice_capture(
            3,
            "2026-11-30T08:00:00+08:00",
            Some("2026-11-30T08:00:00+08:00"),
            "2026-11-30T08:00:00+08:00",
        ),
        // Exactly at its end.
        invoice_capture(4, "2026-11-30T23:00:00+11:00", Some(to), to),
        // Just after.
        invoice_capture(
            5,
            "2026-11-30T23:00:00+11:00",
            Some("2026-12-01T00:00:01+11:00"),
            "2026-12-01T00:00:01+11:00",
        ),
        // Created inside, never paid.
        invoice_capture(
            6,
            "2026-11-30T12:00:00+11:00",
            None,
            "2026-11-30T12:00:00+11:00",
        ),
    ])))
    .await;
    let data = api
        .data(RECON_PAID_INVOICES, json!({"from": from, "to": to}))
        .await;
    assert_eq!(legacy_ids(&data["invoices"]["nodes"]), [2, 3, 4]);
    let data = api
        .data(
            "query($from: ISO8601DateTime) { invoices(filters: {createdSince: $from}, sort: {fields: [CREATED_AT], ordering: DESCENDING}) { nodes { legacyId } } }",
            json!({"from": from}),
        )
        .await;
    // Newest first; 4 and 5 were created at the same instant and keep legacy id order.
    assert_eq!(legacy_ids(&data["invoices"]["nodes"]), [4, 5, 6, 3, 2]);
    let data = api
        .data(
            "{ updatedOrders(updatedSince: \"2026-11-30T13:00:00Z\") { nodes { legacyId } } }",
            json!({}),
        )
        .await;
    // "Updated since" includes the instant itself.
    assert_eq!(legacy_ids(&data["updatedOrders"]["nodes"]), [90004, 90005]);
}

#[tokio::test]
async fn a_misspelt_field_is_answered_as_marketplacer_answers_it() {
    let api = Api::start(config(examples())).await;
    let query = "query ReconPaidInvoices($from: ISO8601DateTime!) {\n  invoices(filters: {paidSince: $from}) {\n    nodes { legacyID }\n  }\n}";
    let answer = api
        .query(query, json!({"from": "2026-03-01T00:00:00Z"}))
        .await;
    assert!(
        answer.get("data").is_none(),
        "validation errors come without data"
    );
    assert_eq!(
        answer["errors"],
        json!([{
            "message": "Field 'legacyID' doesn't exist on type 'Invoice'",
            "locations": [{"line": 3, "column": 13}],
            "path": ["query ReconPaidInvoices", "invoices", "nodes", "legacyID"],
            "extensions": {"code": "undefinedField", "typeName": "Invoice", "fieldName": "legacyID"}
        }])
    );
    // The same in a fragment on an interface.
    let answer = api
        .query(
            "{ node(id: \"x\") { ... on Advert { badQuery } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        answer["errors"][0]["path"],
        json!(["query", "node", "... on Advert", "badQuery"])
    );
    assert_eq!(api.standin.stats().with_errors, 2);
}

#[tokio::test]
async fn wrong_arguments_are_refused_by_name() {
    let api = Api::start(config(examples())).await;
    let errors = |answer: Json| -> Vec<String> {
        assert!(answer.get("data").is_none(), "{answer}");
        answer["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["message"].as_str().unwrap().to_owned())
            .collect()
    };
    let answer = api
        .query(
            "{ invoices(filter: {paidSince: \"2026-03-01T00:00:00Z\"}) { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(
        answer["errors"][0]["path"],
        json!(["query", "invoices", "filter"])
    );
    assert_eq!(
        answer["errors"][0]["extensions"]["code"],
        "argumentNotAccepted"
    );
    assert_eq!(
        errors(answer),
        ["Field 'invoices' doesn't accept argument 'filter'"]
    );

    let answer = api
        .query(
            "{ invoices(filters: {paidSinse: \"2026-03-01T00:00:00Z\"}) { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(
        errors(answer),
        ["InputObject 'InvoiceFilters' doesn't accept argument 'paidSinse'"]
    );

    let answer = api
        .query("{ invoices(first: \"ten\") { totalCount } }", json!({}))
        .await;
    assert_eq!(
        errors(answer),
        [
            "Argument 'first' on Field 'invoices' has an invalid value (\"ten\"). Expected type 'Int'."
        ]
    );

    // A time without its offset would be read in the server's zone: refused.
    let answer = api
        .query(
            "{ invoices(filters: {paidSince: \"2026-03-01T00:00:00\"}) { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(
        errors(answer),
        [
            "Argument 'paidSince' on InputObject 'InvoiceFilters' has an invalid value (\"2026-03-01T00:00:00\"). Expected type 'ISO8601DateTime'."
        ]
    );

    let answer = api
        .query("{ updatedOrders(first: 10) { totalCount } }", json!({}))
        .await;
    assert_eq!(
        answer["errors"][0]["extensions"]["code"],
        "missingRequiredArguments"
    );
    assert_eq!(
        errors(answer),
        ["Field 'updatedOrders' is missing required arguments: updatedSince"]
    );

    let answer = api
        .query(
            "{ invoices(sort: {ordering: DESCENDING}) { totalCount } }",
            json!({}),
        )
        .await;
    // `fields` has a default in the SDL, so leaving it out is fine.
    assert!(answer.get("errors").is_none(), "{answer}");

    let answer = api
        .query(
            "{ invoices { nodes { ... on Shipment { trackingNumber } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        errors(answer),
        ["Fragment on Shipment can't be spread inside Invoice"]
    );

    let answer = api
        .query("{ invoices { nodes { seller } } }", json!({}))
        .await;
    assert_eq!(
        errors(answer),
        [
            "Field must have selections (field 'seller' returns Seller but has no selections. Did you mean 'seller { ... }'?)"
        ]
    );
}

#[tokio::test]
async fn variables_missing_undeclared_or_of_the_wrong_type_are_refused() {
    let api = Api::start(config(examples())).await;
    let answer = api
        .query(RECON_PAID_INVOICES, json!({"from": "2026-03-01T00:00:00Z"}))
        .await;
    assert!(answer.get("data").is_none());
    assert_eq!(
        answer["errors"],
        json!([{
            "message": "Variable $to of type ISO8601DateTime! was provided invalid value",
            "locations": [{"line": 1, "column": 50}],
            "extensions": {"value": null, "problems": [{"path": [], "explanation": "Expected value to not be null"}]}
        }])
    );
    let answer = api
        .query(
            RECON_PAID_INVOICES,
            json!({"from": "yesterday", "to": "2026-03-31T00:00:00Z"}),
        )
        .await;
    assert_eq!(
        answer["errors"][0]["extensions"]["problems"][0]["explanation"],
        "Could not coerce value \"yesterday\" to ISO8601DateTime"
    );

    let answer = api
        .query("query Q($from: ISO8601DateTime!) { invoices(filters: {paidSince: $from, paidUntil: $to}) { totalCount } }", json!({"from": "2026-03-01T00:00:00Z"}))
        .await;
    assert_eq!(
        answer["errors"][0]["message"],
        "Variable $to is used by Q but not declared"
    );
    assert_eq!(
        answer["errors"][0]["extensions"]["code"],
        "variableNotDefined"
    );

    let answer = api
        .query(
            "query Q($from: String) { invoices(filters: {paidSince: $from}) { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(
        answer["errors"][0]["message"],
        "Type mismatch on variable $from and argument paidSince (String / ISO8601DateTime)"
    );
    let answer = api
        .query("query Q($since: ISO8601DateTime) { updatedOrders(updatedSince: $since) { totalCount } }", json!({}))
        .await;
    assert_eq!(
        answer["errors"][0]["message"],
        "Nullability mismatch on variable $since and argument updatedSince (ISO8601DateTime / ISO8601DateTime!)"
    );
    let answer = api
        .query(
            "query Q($unused: Int) { siteConfig { verticalCode } }",
            json!({}),
        )
        .await;
    assert_eq!(
        answer["errors"][0]["message"],
        "Variable $unused is declared by Q but not used"
    );
}

#[tokio::test]
async fn any_selection_is_answered_from_the_data() {
    let api = Api::start(config(examples())).await;
    let data = api
        .data(
            r#"query One($id: ID!) {
                 byId: node(id: $id) { __typename id ...Inv }
                 nodes(ids: [$id, "bm8tc3VjaC1pZA=="]) { ... on Invoice { legacyId } }
               }
               fragment Inv on Invoice {
                 paid: paidAt
                 seller { businessName }
                 lineItems { variant { advert { ... on Advert { taxonNullable { treeName(separator: " / ") } } } } }
                 order { lineItems(first: 2) { totalCount nodes { legacyId } } shipments { trackingNumber } }
               }"#,
            json!({"id": "SW52b2ljZS0xMDAx"}),
        )
        .await;
    let invoice = &data["byId"];
    assert_eq!(invoice["__typename"], "Invoice");
    assert_eq!(invoice["paid"], "2026-03-14T10:15:32+11:00");
    assert_eq!(invoice["seller"]["businessName"], "Paws & Claws Co.");
    // The capture's `taxon` was `taxonNullable` in the webhook query that wrote it.
    assert_eq!(
        invoice["lineItems"][0]["variant"]["advert"]["taxonNullable"]["treeName"],
        "Pets > Dog > Toys"
    );
    // Order 5001's line items across both its invoices, paged.
    assert_eq!(invoice["order"]["lineItems"]["totalCount"], 3);
    assert_eq!(
        invoice["order"]["lineItems"]["nodes"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        invoice["order"]["shipments"][0]["trackingNumber"],
        "33QJQ500123401000931509"
    );
    assert_eq!(data["nodes"], json!([{"legacyId": 1001}, null]));

    // Introspection works, as on Marketplacer (its docs point at GraphQL Voyager).
    let data = api
        .data(
            "{ __type(name: \"WebhookKlassEnum\") { enumValues { name } } }",
            json!({}),
        )
        .await;
    assert!(
        data["__type"]["enumValues"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "SHIPMENT"}))
    );

    // A non-null field no capture selected is an error naming it, not an invented value.
    let answer = api
        .query(
            "{ invoices(first: 1) { nodes { legacyId shippingDescription } } }",
            json!({}),
        )
        .await;
    let message = answer["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("Invoice.shippingDescription"), "{message}");
    assert_eq!(
        answer["errors"][0]["path"],
        json!(["invoices", "nodes", 0, "shippingDescription"])
    );
    // A nullable one is null.
    let data = api
        .data(
            "{ invoices(first: 1) { nodes { remittedAt buyerMessageToSeller } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        data["invoices"]["nodes"][0],
        json!({"remittedAt": null, "buyerMessageToSeller": null})
    );
}

#[tokio::test]
async fn the_key_is_required_and_never_echoed() {
    let api = Api::start(config(examples())).await;
    let body = json!({"query": "{ siteConfig { verticalCode } }"});
    let missing = api.post_with(None, &body).await;
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    let answer: Json = missing.json().await.unwrap();
    assert!(
        answer["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("MARKETPLACER-API-KEY")
    );
    let wrong = api
        .post_with(Some(("MARKETPLACER-API-KEY", "mp_wrong_secret")), &body)
        .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let text = wrong.text().await.unwrap();
    assert!(
        !text.contains("mp_wrong_secret") && !text.contains(KEY),
        "{text}"
    );
    let bearer = api
        .post_with(Some(("Authorization", &format!("Bearer {KEY}"))), &body)
        .await;
    assert_eq!(bearer.status(), StatusCode::OK);
    let stats = api.standin.stats();
    assert_eq!(
        (stats.requests, stats.unauthenticated, stats.answered),
        (3, 2, 1)
    );
    let stats_text = serde_json::to_string(&stats).unwrap();
    assert!(!stats_text.contains(KEY));
}

#[tokio::test]
async fn over_the_key_limit_it_answers_429_with_retry_after() {
    let api = Api::start(Config {
        key_limit: 5,
        // A 10-second window passes in a second.
        time_scale: 10.0,
        ..config(examples())
    })
    .await;
    let body = json!({"query": "{ siteConfig { verticalCode } }"});
    for _ in 0..5 {
        assert_eq!(api.post(&body).await.status(), StatusCode::OK);
    }
    let throttled = api.post(&body).await;
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = throttled.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=10).contains(&retry_after), "{retry_after}");
    tokio::time::sleep(Duration::from_secs_f64(retry_after as f64 / 10.0 + 0.05)).await;
    assert_eq!(api.post(&body).await.status(), StatusCode::OK);
    let stats = api.standin.stats();
    assert_eq!((stats.requests, stats.throttled, stats.answered), (7, 1, 6));

    // Without Retry-After, as Marketplacer may answer: the client must fall back on 60 s.
    api.standin.set_faults(Faults {
        retry_after: false,
        ..Faults::none()
    });
    let mut last = StatusCode::OK;
    for _ in 0..6 {
        let response = api.post(&body).await;
        last = response.status();
        if last == StatusCode::TOO_MANY_REQUESTS {
            assert!(response.headers().get("retry-after").is_none());
            break;
        }
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn the_per_ip_limit_binds_before_the_per_key_one() {
    let api = Api::start(Config {
        ip_limit: 3,
        api_keys: vec![KEY.to_owned(), "mp_second".to_owned()],
        ..config(examples())
    })
    .await;
    let body = json!({"query": "{ siteConfig { verticalCode } }"});
    for key in [KEY, "mp_second", KEY] {
        let status = api
            .post_with(Some(("MARKETPLACER-API-KEY", key)), &body)
            .await
            .status();
        assert_eq!(status, StatusCode::OK);
    }
    let status = api
        .post_with(Some(("MARKETPLACER-API-KEY", "mp_second")), &body)
        .await
        .status();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(api.standin.stats().max_per_window, 4);
}

#[tokio::test]
async fn injected_faults_answer_429_and_503_with_or_without_retry_after() {
    let api = Api::start(Config {
        faults: Faults {
            next: vec![Injected::Throttle, Injected::Unavailable],
            injected_retry_after: 7,
            ..Faults::none()
        },
        ..config(examples())
    })
    .await;
    let body = json!({"query": "{ siteConfig { verticalCode } }"});
    let first = api.post(&body).await;
    assert_eq!(first.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(first.headers()["retry-after"], "7");
    let second = api.post(&body).await;
    assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(second.headers()["retry-after"], "7");
    assert_eq!(api.post(&body).await.status(), StatusCode::OK);

    api.standin.set_faults(Faults {
        next: vec![Injected::Throttle, Injected::Unavailable],
        retry_after: false,
        ..Faults::none()
    });
    for expected in [
        StatusCode::TOO_MANY_REQUESTS,
        StatusCode::SERVICE_UNAVAILABLE,
    ] {
        let response = api.post(&body).await;
        assert_eq!(response.status(), expected);
        assert!(response.headers().get("retry-after").is_none());
    }
    let stats = api.standin.stats();
    assert_eq!(
        (stats.throttled, stats.unavailable, stats.answered),
        (2, 2, 1)
    );
}

#[tokio::test]
async fn a_failing_root_field_answers_a_graphql_error_with_its_path() {
    let mut faults = Faults::none();
    faults
        .failing_fields
        .insert("klaviyoSettings".into(), "Internal server error".into());
    let api = Api::start(Config {
        faults,
        ..config(examples())
    })
    .await;
    let answer = api.query(RECON_WEBHOOK_HEALTH, json!({})).await;
    assert_eq!(answer["errors"][0]["message"], "Internal server error");
    assert_eq!(answer["errors"][0]["path"], json!(["klaviyoSettings"]));
    // The field is nullable: the rest of the answer is there.
    assert_eq!(answer["data"]["klaviyoSettings"], Json::Null);
    assert_eq!(
        answer["data"]["webhooks"]["nodes"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test]
async fn a_disabled_webhook_shows_enabled_false() {
    let api = Api::start(Config {
        disabled_webhooks: vec!["SHIPMENT".into()],
        ..config(examples())
    })
    .await;
    let query = "{ webhooks { nodes { type enabled queryString } } }";
    let enabled = |data: &Json| -> Vec<(String, bool)> {
        data["webhooks"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                (
                    w["type"].as_str().unwrap().to_owned(),
                    w["enabled"].as_bool().unwrap(),
                )
            })
            .collect()
    };
    let data = api.data(query, json!({})).await;
    assert_eq!(
        enabled(&data),
        [
            ("INVOICE".into(), true),
            ("REFUND_REQUEST".into(), true),
            ("SHIPMENT".into(), false)
        ]
    );
    assert!(
        data["webhooks"]["nodes"][0]["queryString"]
            .as_str()
            .unwrap()
            .starts_with("query InvoiceWebhook($id: ID!)")
    );
    api.standin
        .set_webhook_enabled("refund_request", false)
        .unwrap();
    api.standin.set_webhook_enabled("Shipment", true).unwrap();
    let data = api.data(query, json!({})).await;
    assert_eq!(
        enabled(&data),
        [
            ("INVOICE".into(), true),
            ("REFUND_REQUEST".into(), false),
            ("SHIPMENT".into(), true)
        ]
    );
    assert!(api.standin.set_webhook_enabled("ORDER", false).is_err());
    let unknown = StandIn::start(Config {
        disabled_webhooks: vec!["ORDER".into()],
        ..Config::default()
    })
    .await;
    assert!(unknown.is_err());
}

#[tokio::test]
async fn a_broken_line_is_reported_with_its_file_and_line_and_the_rest_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("day.ndjson");
    let good = |n| {
        invoice_capture(
            n,
            "2026-11-30T10:00:00+11:00",
            Some("2026-11-30T10:00:01+11:00"),
            "2026-11-30T10:00:02+11:00",
        )
        .to_string()
    };
    let mut other = invoice_capture(
        4,
        "2026-11-30T10:00:00+11:00",
        None,
        "2026-11-30T10:00:02+11:00",
    );
    other["headers"]["Marketplacer-Vertical"] = json!("toymarket");
    let text = format!(
        "{}\n{{\"received_at\": \"2026-11-30\", \"headers\": \n\n{}\n{}\n{}\n",
        good(1),
        good(2),
        other,
        good(3)
    );
    std::fs::write(&path, text).unwrap();
    let mut data = Data::new();
    let summary = data.load_file(&path).unwrap();
    assert_eq!(summary.loaded, 3);
    assert_eq!(summary.problems.len(), 2);
    let origin = path.display().to_string();
    assert_eq!(
        (
            summary.problems[0].origin.as_str(),
            summary.problems[0].line
        ),
        (origin.as_str(), 2)
    );
    assert!(
        summary.problems[0]
            .to_string()
            .starts_with(&format!("{origin}:2: not JSON")),
        "{}",
        summary.problems[0]
    );
    assert_eq!(summary.problems[1].line, 5);
    assert!(matches!(
        summary.problems[1].problem,
        LineProblem::OtherVertical { .. }
    ));
    assert_eq!(data.count("Invoice"), 3);
    assert_eq!(data.vertical(), Some("petmarket"));
    assert!(data.load_file(&dir.path().join("missing.ndjson")).is_err());
}

#[tokio::test]
async fn every_example_loads_and_a_later_view_wins_whatever_the_file_order() {
    let mut data = Data::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("json" | "ndjson")
            )
        })
        .collect();
    // Backwards: the completed refund is read before the pending one it completes.
    names.sort();
    names.reverse();
    for path in &names {
        let summary = data.load_file(path).unwrap();
        assert!(
            summary.problems.is_empty(),
            "{}: {:?}",
            path.display(),
            summary.problems
        );
    }
    assert_eq!(data.count("Order"), 4);
    assert_eq!(data.count("Invoice"), 5);
    assert_eq!(data.count("Seller"), 4);
    let api = Api::start(config(data)).await;
    let data = api
        .data("{ node(id: \"UmVmdW5kUmVxdWVzdC03MDAy\") { ... on RefundRequest { status refundedAt } } }", json!({}))
        .await;
    assert_eq!(
        data["node"],
        json!({"status": "REFUNDED", "refundedAt": "2026-03-20T11:30:02+11:00"})
    );
}

#[tokio::test]
async fn anything_but_a_graphql_post_is_refused() {
    let api = Api::start(config(examples())).await;
    let response = api
        .client
        .post(api.standin.graphql_url())
        .header("MARKETPLACER-API-KEY", KEY)
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let answer = api.query("mutation { webhookUpdate(input: {webhookId: \"V2ViaG9vay0x\", attributes: {enabled: true}}) { status } }", json!({})).await;
    assert!(
        answer["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("queries only"),
        "{answer}"
    );
    let answer = api.query("{ invoices { totalCount ", json!({})).await;
    assert!(answer["errors"][0]["locations"].is_array(), "{answer}");
    let elsewhere = api
        .client
        .get(format!("{}/nowhere", api.standin.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), StatusCode::NOT_FOUND);
    let stats = api.standin.stats();
    assert_eq!((stats.bad_requests, stats.other), (1, 1));
}

#[tokio::test]
async fn a_capture_stored_by_serve_loads_with_its_raw_body() {
    // `serve` keeps the body as the text it received (source::webhook::capture).
    let envelope = invoice_capture(
        7,
        "2026-11-30T10:00:00+11:00",
        Some("2026-11-30T10:00:01+11:00"),
        "2026-11-30T10:00:02+11:00",
    )["body"]
        .to_string();
    let capture = json!({"headers": {"Marketplacer-Vertical": "petmarket"}, "body": envelope});
    let api = Api::start(config(data_of(&[capture]))).await;
    let data = api
        .data("{ webhookEvents { nodes { eventName invoice { legacyId } } } siteConfig { verticalCode } }", json!({}))
        .await;
    assert_eq!(
        data["webhookEvents"]["nodes"],
        json!([{"eventName": "create", "invoice": {"legacyId": 7}}])
    );
    assert_eq!(data["siteConfig"]["verticalCode"], "petmarket");
}

/// `marketsync standin marketplacer` as a user runs it: what it loaded and left out on stderr,
/// then a working endpoint on the port it names.
#[tokio::test]
async fn the_command_reports_what_it_loaded_and_serves_it() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.ndjson");
    std::fs::write(&broken, "{\"headers\": {}, \"body\": \n").unwrap();
    let mut child = common::marketsync_command()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "standin",
            "marketplacer",
            "--port",
            "0",
            "--api-key",
            "mp_secret_given",
            "--data",
            "examples/orders.ndjson",
        ])
        .arg("--data")
        .arg(&broken)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let url = loop {
        let line = lines
            .next()
            .expect("the stand-in says where it listens")
            .unwrap();
        seen.push(line.clone());
        if let Some(rest) = line.strip_prefix("Marketplacer stand-in listening on ") {
            break rest.split(';').next().unwrap().to_owned();
        }
    };
    let text = seen.join("\n");
    assert!(
        text.contains("examples/orders.ndjson: 5 deliveries loaded"),
        "{text}"
    );
    assert!(
        text.contains(&format!("{}:1: not JSON", broken.display())),
        "{text}"
    );
    assert!(text.contains("3 Order, 4 Invoice"), "{text}");
    assert!(
        !text.contains("mp_secret_given"),
        "the key is never printed: {text}"
    );
    let answer: Json = Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(&url)
        .header("MARKETPLACER-API-KEY", "mp_secret_given")
        .json(&json!({"query": "{ invoices { totalCount } }"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(answer, json!({"data": {"invoices": {"totalCount": 4}}}));
}

#[test]
fn the_command_refuses_an_unknown_webhook_and_a_missing_file() {
    // `standin` alone, and `standin klaviyo`, are still the Klaviyo stand-in.
    for args in [&["standin"][..], &["standin", "klaviyo"][..]] {
        common::marketsync()
            .args(args)
            .args(["--time-scale", "0"])
            .assert()
            .code(2)
            .stderr(predicates::str::contains("--time-scale must be positive"));
    }
    common::marketsync()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "standin",
            "marketplacer",
            "--port",
            "0",
            "--disable-webhook",
            "ORDER",
        ])
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "no webhook of type \"ORDER\": the stand-in holds INVOICE, REFUND_REQUEST, SHIPMENT",
        ));
    common::marketsync()
        .args([
            "standin",
            "marketplacer",
            "--port",
            "0",
            "--data",
            "/nonexistent/day.ndjson",
        ])
        .assert()
        .code(4)
        .stderr(predicates::str::contains(
            "cannot open /nonexistent/day.ndjson",
        ));
}

/// The generator's example binary, which `cargo test` builds beside the tests.
fn generator() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples")
        .join("generate-deliveries");
    assert!(path.exists(), "{} is built by `cargo test`", path.display());
    path
}

/// A generated day is served whole: every time it carries is inside the window, so a sweep
/// over exactly that window finds every paid invoice, shipment and refund in the file.
#[tokio::test]
async fn a_generated_day_is_served_whole_for_its_window() {
    let dir = tempfile::tempdir().unwrap();
    let day = dir.path().join("day.ndjson");
    let status = std::process::Command::new(generator())
        .args([
            "--seed",
            "7",
            "--count",
            "600",
            "--start",
            "2026-11-30T00:00:00+11:00",
            "--span",
            "6h",
            "--out",
        ])
        .arg(&day)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let (from, to) = ("2026-11-30T00:00:00+11:00", "2026-11-30T06:00:00+11:00");
    let instant = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap();
    let mut paid = std::collections::BTreeSet::new();
    let mut shipments = std::collections::BTreeSet::new();
    let mut refunded = std::collections::BTreeSet::new();
    for line in std::fs::read_to_string(&day).unwrap().lines() {
        let capture: Json = serde_json::from_str(line).unwrap();
        let node = &capture["body"]["payload"]["data"]["node"];
        for field in [
            "createdAt",
            "updatedAt",
            "paidAt",
            "dispatchedAt",
            "refundedAt",
        ] {
            if let Some(at) = node[field].as_str() {
                assert!(
                    (instant(from)..instant(to)).contains(&instant(at)),
                    "{field} {at}"
                );
            }
        }
        match node["__typename"].as_str().unwrap() {
            "Invoice" if node["paidAt"].is_string() => {
                paid.insert(node["legacyId"].as_u64().unwrap());
            }
            "Shipment" => {
                shipments.insert(node["legacyId"].as_u64().unwrap());
            }
            "RefundRequest" if node["status"] == "REFUNDED" => {
                refunded.insert(node["legacyId"].as_u64().unwrap());
            }
            _ => {}
        }
    }
    let mut data = Data::new();
    let summary = data.load_file(&day).unwrap();
    assert!(summary.problems.is_empty(), "{:?}", summary.problems);
    assert_eq!(summary.loaded, 600);
    let api = Api::start(config(data)).await;
    let window = |after: Json| json!({"from": from, "to": to, "after": after});
    // Every page of a sweep, as a client walks it.
    let sweep = async |query: &str, root: &str| -> Vec<Json> {
        let mut nodes = Vec::new();
        let mut after = Json::Null;
        loop {
            let data = api.data(query, window(after)).await;
            nodes.extend(data[root]["nodes"].as_array().unwrap().iter().cloned());
            if data[root]["pageInfo"]["hasNextPage"] == false {
                return nodes;
            }
            after = data[root]["pageInfo"]["endCursor"].clone();
        }
    };
    let found: std::collections::BTreeSet<u64> =
        legacy_ids(&Json::Array(sweep(RECON_PAID_INVOICES, "invoices").await))
            .into_iter()
            .collect();
    assert_eq!(found, paid);
    let served: std::collections::BTreeSet<u64> = sweep(RECON_SHIPMENTS, "invoices")
        .await
        .iter()
        .flat_map(|i| legacy_ids(&i["shipments"]))
        .collect();
    assert_eq!(served, shipments);
    let data = api.data(RECON_REFUNDS, window(Json::Null)).await;
    let served: std::collections::BTreeSet<u64> = legacy_ids(&data["refundRequests"]["nodes"])
        .into_iter()
        .collect();
    assert_eq!(served, refunded);
    assert_eq!(
        api.data("{ siteConfig { verticalCode } }", json!({})).await["siteConfig"]["verticalCode"],
        "petmarket"
    );
}

#[tokio::test]
async fn without_a_vertical_site_config_says_so_rather_than_invent_one() {
    // Bare envelopes carry no Marketplacer-Vertical header.
    let mut data = Data::new();
    let summary = data
        .load_file(&examples_dir().join("invoice-unpaid.json"))
        .unwrap();
    assert!(summary.problems.is_empty());
    assert_eq!(data.vertical(), None);
    let api = Api::start(config(data)).await;
    let answer = api
        .query("{ siteConfig { siteName verticalCode } }", json!({}))
        .await;
    assert!(
        answer["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("SiteConfig.verticalCode")
    );
    assert_eq!(
        answer["errors"][0]["path"],
        json!(["siteConfig", "verticalCode"])
    );
}
