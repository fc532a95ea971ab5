//! The Marketplacer stand-in, driven over HTTP as a reconciliation client drives it: the
//! queries of `notes/reconciliation.md` §4, paging, window edges, the errors a client's
//! mistakes get, rate limits, auth, webhooks, and loading data.

use marketsync::standin::marketplacer::{Config, Data, Faults, StandIn};
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value as Json, json};
use std::path::Path;

const KEY: &str = "mp_test_key";

fn examples() -> Data {
    let mut data = Data::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for name in [
        "orders.ndjson",
        "invoice-unpaid.json",
        "shipment.json",
        "cancellation.json",
        "refund-pending.json",
        "refund.json",
    ] {
        let summary = data.load_file(&root.join(name)).unwrap();
        assert!(
            summary.problems.is_empty(),
            "{name}: {:?}",
            summary.problems
        );
    }
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

    async fn post(&self, body: &Json) -> Response {
        self.client
            .post(self.standin.graphql_url())
            .header("MARKETPLACER-API-KEY", KEY)
            .json(body)
            .send()
            .await
            .expect("an answer")
    }

    /// The JSON answer to a query, which must be a 200.
    async fn query(&self, query: &str, variables: Json) -> Json {
        let response = self
            .post(&json!({"query": query, "variables": variables}))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }
}

#[tokio::test]
async fn smoke() {
    let api = Api::start(config(examples())).await;
    let answer = api
        .query(
            "{ siteConfig { verticalCode country { currencyCode } } invoices(first: 10) { totalCount nodes { legacyId statusFlags order { legacyId invoices { nodes { legacyId } } } shipments { legacyId } refundRequests { legacyId status } } } }",
            json!({}),
        )
        .await;
    println!("{}", serde_json::to_string_pretty(&answer).unwrap());
    assert!(answer.get("errors").is_none(), "{answer}");
}
