//! The Klaviyo stand-in's read side, driven over HTTP as a reader would drive it: `GET
//! /api/metrics`, `GET /api/events`, `GET /api/profiles`, `POST /api/metric-aggregates`, and
//! drift planted through `StandIn::plant` and `POST /standin/drift`.
//!
//! Every answer is validated against the operation's response schema from Klaviyo's OpenAPI
//! spec (`schemas/klaviyo-reads/`, checked here to be what the spec gives), never against what
//! a client expects.

mod read_schemas;

use marketsync::klaviyo::Endpoint;
use marketsync::standin::{
    Config, Drift, FlowStatus, Limit, PlantError, Read, Scope, StandIn, SuppressionReason,
};
use reqwest::{Client, Response, StatusCode, Url};
use serde_json::{Value as Json, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

const KEY: &str = "pk_reads_full";
const READ_ONLY_KEY: &str = "pk_reads_read_only";
const EVENTS_ONLY_KEY: &str = "pk_reads_events_only";
const REVISION: &str = "2026-07-15";

// ---- the schemas -----------------------------------------------------------------------------

#[test]
fn read_schemas_are_what_the_spec_gives() {
    let Some((bytes, spec)) = read_schemas::spec() else {
        eprintln!(
            "{} not found: the committed schemas are used unchecked",
            read_schemas::SPEC
        );
        return;
    };
    let update = std::env::var_os("UPDATE_READ_SCHEMAS").is_some();
    for (file, text) in read_schemas::generate(&bytes, &spec) {
        let path = read_schemas::dir().join(&file);
        if update {
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == text,
            "schemas/klaviyo-reads/{file} is stale: run UPDATE_READ_SCHEMAS=1 cargo test \
             --test standin_reads read_schemas_are_what_the_spec_gives"
        );
    }
}

fn validators() -> &'static BTreeMap<String, jsonschema::Validator> {
    static VALIDATORS: OnceLock<BTreeMap<String, jsonschema::Validator>> = OnceLock::new();
    VALIDATORS.get_or_init(read_schemas::validators)
}

/// `body` is valid against `file`'s schema, or the test fails listing why.
fn assert_schema(file: &str, body: &Json) {
    let validator = &validators()[file];
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{file} rejects the answer:\n{}\n{body:#}",
        errors.join("\n")
    );
}

#[test]
fn the_schemas_are_strict() {
    // A misspelt attribute is refused, so a stand-in that invents a field would fail.
    let event = json!({"data": [{"type": "event", "id": "e1",
        "attributes": {"timestamp": 1, "datetime": "2026-03-14T00:00:00+00:00", "unique_id": "x"},
        "links": {"self": "http://127.0.0.1/api/events/e1/"}}],
        "links": {"self": "http://127.0.0.1/api/events/"}});
    assert!(!validators()["get_events.json"].is_valid(&event));
    // The merged profile list accepts subscriptions beside the standard attributes.
    let profile = json!({"data": [{"type": "profile", "id": "p1",
        "attributes": {"email": "a@b.co", "subscriptions": {"email": {"marketing": {
            "can_receive_email_marketing": true, "consent": "SUBSCRIBED"}}}},
        "links": {"self": "http://127.0.0.1/api/profiles/p1/"}}],
        "links": {"self": "http://127.0.0.1/api/profiles/"}});
    assert_schema("get_profiles.json", &profile);
    let mut wrong = profile.clone();
    wrong["data"][0]["attributes"]["subscriptions"]["email"]["marketing"]["suppression"] =
        json!([{"reason": "BOUNCED", "timestamp": "2026-03-14T00:00:00+00:00"}]);
    assert!(!validators()["get_profiles.json"].is_valid(&wrong));
}

#[test]
fn default_read_limits_are_the_specs_or_lower() {
    let index: Json = serde_json::from_str(
        &std::fs::read_to_string(read_schemas::dir().join("index.json")).unwrap(),
    )
    .unwrap();
    let per = |text: &str, unit: &str| -> u32 { text.strip_suffix(unit).unwrap().parse().unwrap() };
    let operations = index["operations"].as_array().unwrap();
    assert_eq!(operations.len(), Read::ALL.len());
    for operation in operations {
        let read = Read::ALL
            .into_iter()
            .find(|r| r.path() == operation["path"] && r.method() == operation["method"])
            .unwrap();
        let limit = Limit::klaviyo_read(read);
        let burst = per(operation["rate_limit"]["burst"].as_str().unwrap(), "/s");
        let steady = per(operation["rate_limit"]["steady"].as_str().unwrap(), "/m");
        assert_eq!(limit.burst_per_second, burst, "{read:?}");
        if read == Read::Profiles {
            // The spec says 750/m; the docs say 700/m; the stand-in holds to the lower.
            assert_eq!((steady, limit.steady_per_minute), (750, 700));
        } else {
            assert_eq!(limit.steady_per_minute, steady, "{read:?}");
        }
        assert_eq!(operation["scopes"], json!([read.scope()]), "{read:?}");
    }
}

// ---- a stand-in and a client ---------------------------------------------------------------

/// Keys of three scopes, and read limits far above Klaviyo's (3 aggregate queries a second
/// would throttle the tests of what the answers say); [`published`] has Klaviyo's.
fn config() -> Config {
    let generous = Limit {
        burst_per_second: 10_000,
        steady_per_minute: 100_000,
    };
    Config {
        read_limits: Read::ALL.into_iter().map(|r| (r, generous)).collect(),
        ..published()
    }
}

fn published() -> Config {
    Config {
        api_keys: vec![
            (KEY.to_string(), Scope::Full),
            (READ_ONLY_KEY.to_string(), Scope::ReadOnly),
            (
                EVENTS_ONLY_KEY.to_string(),
                Scope::Granted(&["events:read"]),
            ),
        ],
        ..Config::default()
    }
}

struct Api {
    standin: StandIn,
    client: Client,
}

/// The response schema of a read path.
fn schema_of(path: &str) -> &'static str {
    match path.trim_end_matches('/') {
        "/api/profiles" => "get_profiles.json",
        "/api/events" => "get_events.json",
        "/api/metrics" => "get_metrics.json",
        "/api/metric-aggregates" => "query_metric_aggregates.json",
        other => panic!("no schema for {other}"),
    }
}

impl Api {
    async fn start(config: Config) -> Api {
        let standin = StandIn::start(config).await.expect("the stand-in starts");
        let client = Client::builder().no_proxy().build().unwrap();
        Api { standin, client }
    }

    /// `path` with `params` percent-encoded, as a client builds it.
    fn url(&self, path: &str, params: &[(&str, &str)]) -> Url {
        Url::parse_with_params(&format!("{}{path}", self.standin.url()), params).unwrap()
    }

    async fn send(&self, key: &str, url: Url) -> Response {
        self.client
            .get(url)
            .header("Authorization", format!("Klaviyo-API-Key {key}"))
            .header("revision", REVISION)
            .send()
            .await
            .expect("an answer")
    }

    /// A read that must succeed: 200, valid against the operation's response schema.
    async fn read(&self, path: &str, params: &[(&str, &str)]) -> Json {
        self.read_url(self.url(path, params)).await
    }

    async fn read_url(&self, url: Url) -> Json {
        let response = self.send(KEY, url.clone()).await;
        let status = response.status();
        let body: Json = response.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{url}: {body:#}");
        assert_schema(schema_of(url.path()), &body);
        body
    }

    /// Every page from `path`, following `links.next`: the `data` of all of them.
    async fn read_all(&self, path: &str, params: &[(&str, &str)]) -> (Vec<Json>, usize) {
        let mut url = self.url(path, params);
        let mut data = Vec::new();
        let mut pages = 0;
        loop {
            let page = self.read_url(url).await;
            pages += 1;
            data.extend(page["data"].as_array().unwrap().iter().cloned());
            match page["links"]["next"].as_str() {
                Some(next) => url = Url::parse(next).unwrap(),
                None => return (data, pages),
            }
        }
    }

    /// A request that must be refused with 400: its errors, valid against `ClientError`.
    async fn refused(&self, url: Url) -> Vec<Json> {
        let response = self.send(KEY, url.clone()).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{url}");
        let body: Json = response.json().await.unwrap();
        assert_schema("client_error.json", &body);
        body["errors"].as_array().unwrap().clone()
    }

    async fn post(&self, endpoint: Endpoint, body: &Json) -> StatusCode {
        self.client
            .post(format!("{}{}", self.standin.url(), endpoint.path()))
            .header("Authorization", format!("Klaviyo-API-Key {KEY}"))
            .header("revision", REVISION)
            .header("content-type", "application/vnd.api+json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
            .status()
    }

    async fn aggregate_as(&self, key: &str, body: &Json) -> Response {
        self.client
            .post(format!("{}/api/metric-aggregates", self.standin.url()))
            .header("Authorization", format!("Klaviyo-API-Key {key}"))
            .header("revision", REVISION)
            .header("content-type", "application/vnd.api+json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    /// An aggregate query that must succeed: 200 and valid.
    async fn aggregate(&self, body: &Json) -> Json {
        let response = self.aggregate_as(KEY, body).await;
        let status = response.status();
        let answer: Json = response.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{answer:#}");
        assert_schema("query_metric_aggregates.json", &answer);
        answer
    }

    /// The id of the API metric of this name.
    async fn metric_id(&self, name: &str) -> String {
        let metrics = self
            .read(
                "/api/metrics",
                &[("filter", r#"equals(integration.name,"API")"#)],
            )
            .await;
        metrics["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["attributes"]["name"] == name)
            .unwrap_or_else(|| panic!("no metric {name}: {metrics:#}"))["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn profile_id(&self, email: &str) -> String {
        self.standin
            .accepted()
            .profile_by_email(email)
            .unwrap_or_else(|| panic!("no profile {email}"))
            .id
            .clone()
    }

    /// `subscriptions.email.marketing` of every profile with this email, in order.
    async fn consent(&self, email: &str) -> Vec<Json> {
        let filter = format!(r#"any(email,["{email}"])"#);
        let body = self
            .read(
                "/api/profiles",
                &[
                    ("filter", &filter),
                    ("additional-fields[profile]", "subscriptions"),
                ],
            )
            .await;
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["attributes"]["subscriptions"]["email"]["marketing"].clone())
            .collect()
    }
}

/// An order event as marketsync's mappings send it: `OrderId`, a value, maybe a currency.
fn order_event(
    email: &str,
    metric: &str,
    unique_id: &str,
    time: &str,
    value: f64,
    currency: Option<&str>,
) -> Json {
    let mut attributes = json!({
        "properties": {"OrderId": unique_id.rsplit(':').next().unwrap(), "Marketplace": "petmarket"},
        "time": time,
        "value": value,
        "unique_id": unique_id,
        "metric": {"data": {"type": "metric", "attributes": {"name": metric}}},
        "profile": {"data": {"type": "profile", "attributes": {"email": email}}},
    });
    if let Some(currency) = currency {
        attributes["value_currency"] = json!(currency);
    }
    json!({"data": {"type": "event", "attributes": attributes}})
}

/// Placed Orders around Melbourne's midnights (AEDT, +11:00) and one Fulfilled Order:
///
/// | id | who | UTC | Melbourne | value |
/// | P1 | zoe | 03-03 12:30 | 03-03 23:30 | 100 AUD |
/// | P2 | sam | 03-03 13:30 | 03-04 00:30 | 50 AUD |
/// | P3 | ann | 03-04 02:00 | 03-04 13:00 | 20.5 NZD |
/// | P4 | zoe | 03-05 12:59:59 | 03-05 23:59:59 | 10 AUD |
const WEEK: [(&str, &str, &str, &str, f64, &str); 5] = [
    (
        "zoe@example.com",
        "Placed Order",
        "petmarket:placed-order:P1",
        "2026-03-03T12:30:00+00:00",
        100.0,
        "AUD",
    ),
    (
        "sam@example.com",
        "Placed Order",
        "petmarket:placed-order:P2",
        "2026-03-03T13:30:00+00:00",
        50.0,
        "AUD",
    ),
    (
        "ann@example.com",
        "Placed Order",
        "petmarket:placed-order:P3",
        "2026-03-04T02:00:00+00:00",
        20.5,
        "NZD",
    ),
    (
        "zoe@example.com",
        "Placed Order",
        "petmarket:placed-order:P4",
        "2026-03-05T12:59:59+00:00",
        10.0,
        "AUD",
    ),
    (
        "zoe@example.com",
        "Fulfilled Order",
        "petmarket:fulfilled-order:S1",
        "2026-03-04T05:00:00+00:00",
        0.0,
        "AUD",
    ),
];

async fn seed_week(api: &Api) {
    let ann = json!({"data": {"type": "profile", "attributes": {
        "email": "ann@example.com", "phone_number": "+61412345678", "external_id": "mp:ann"}}});
    assert_eq!(
        api.post(Endpoint::CreateOrUpdateProfile, &ann).await,
        StatusCode::CREATED
    );
    for (email, metric, unique_id, time, value, currency) in WEEK {
        let body = order_event(email, metric, unique_id, time, value, Some(currency));
        assert_eq!(
            api.post(Endpoint::CreateEvent, &body).await,
            StatusCode::ACCEPTED
        );
    }
}

fn ids(data: &[Json]) -> Vec<String> {
    data.iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect()
}

fn order_ids(data: &[Json]) -> Vec<String> {
    data.iter()
        .map(|d| {
            d["attributes"]["event_properties"]["OrderId"]
                .as_str()
                .unwrap_or("-")
                .to_owned()
        })
        .collect()
}

// ---- GET /api/metrics ------------------------------------------------------------------------

#[tokio::test]
async fn metrics_are_one_per_name_and_source_with_the_flows_they_trigger() {
    let api = Api::start(config()).await;
    let empty = api.read("/api/metrics", &[]).await;
    assert_eq!(empty["data"], json!([]), "no events, no metrics");
    seed_week(&api).await;

    let body = api.read("/api/metrics", &[]).await;
    let data = body["data"].as_array().unwrap();
    let names: Vec<&str> = data
        .iter()
        .map(|m| m["attributes"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Placed Order", "Fulfilled Order"]);
    assert_eq!(data[0]["type"], "metric");
    assert_eq!(data[0]["attributes"]["integration"]["name"], "API");
    assert_eq!(data[0]["attributes"]["integration"]["category"], "API");
    assert!(body["links"].get("next").is_none() && body.get("included").is_none());
    let placed = data[0]["id"].as_str().unwrap().to_owned();

    // A second sender of "Placed Order" (Marketplacer's own integration), and flows.
    let shopify = api
        .standin
        .plant(Drift::ForeignMetric {
            name: "Placed Order".into(),
            integration: "Marketplacer".into(),
            category: "eCommerce".into(),
        })
        .unwrap()
        .remove(0);
    assert_ne!(shopify, placed);
    let live = api
        .standin
        .plant(Drift::Flow {
            name: "Post-purchase thank you".into(),
            status: FlowStatus::Live,
            metric: "Placed Order".into(),
        })
        .unwrap()
        .remove(0);
    let draft = api
        .standin
        .plant(Drift::Flow {
            name: "Cross-sell".into(),
            status: FlowStatus::Draft,
            metric: shopify.clone(),
        })
        .unwrap()
        .remove(0);

    let body = api.read("/api/metrics", &[]).await;
    let placed_orders: Vec<(&str, &str)> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["attributes"]["name"] == "Placed Order")
        .map(|m| {
            (
                m["id"].as_str().unwrap(),
                m["attributes"]["integration"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        placed_orders,
        [(placed.as_str(), "API"), (shopify.as_str(), "Marketplacer")]
    );

    // Filtered by integration: equals on name or category.
    for (filter, expected) in [
        (
            r#"equals(integration.name,"Marketplacer")"#,
            vec![shopify.clone()],
        ),
        (
            r#"equals(integration.category,"eCommerce")"#,
            vec![shopify.clone()],
        ),
        (r#"equals(integration.name,"Shopify")"#, vec![]),
    ] {
        let body = api.read("/api/metrics", &[("filter", filter)]).await;
        assert_eq!(ids(body["data"].as_array().unwrap()), expected, "{filter}");
    }

    // include=flow-triggers: the relationship's identifiers, the flows in included[].
    let body = api
        .read(
            "/api/metrics",
            &[
                ("include", "flow-triggers"),
                ("fields[flow]", "name,status,trigger_type"),
                ("fields[metric]", "name,integration"),
            ],
        )
        .await;
    let metric = |id: &str| {
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(
        metric(&placed)["relationships"]["flow-triggers"]["data"],
        json!([{"type": "flow", "id": live}])
    );
    assert_eq!(
        metric(&shopify)["relationships"]["flow-triggers"]["data"],
        json!([{"type": "flow", "id": draft}])
    );
    let fulfilled = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["attributes"]["name"] == "Fulfilled Order")
        .unwrap()
        .clone();
    assert_eq!(
        fulfilled["relationships"]["flow-triggers"]["data"],
        json!([])
    );
    assert_eq!(
        fulfilled["attributes"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["name", "integration"],
        "fields[metric] trims the attributes"
    );
    let flows = body["included"].as_array().unwrap();
    assert_eq!(flows.len(), 2);
    let live_flow = flows.iter().find(|f| f["id"] == live).unwrap();
    assert_eq!(live_flow["type"], "flow");
    assert_eq!(
        live_flow["attributes"],
        json!({"name": "Post-purchase thank you", "status": "live", "trigger_type": "Metric"})
    );
    let draft_flow = flows.iter().find(|f| f["id"] == draft).unwrap();
    assert_eq!(draft_flow["attributes"]["status"], "draft");
}

#[tokio::test]
async fn metrics_come_200_a_page() {
    let api = Api::start(config()).await;
    for i in 0..205 {
        api.standin
            .plant(Drift::ForeignMetric {
                name: format!("Metric {i:03}"),
                integration: "Elsewhere".into(),
                category: "Custom".into(),
            })
            .unwrap();
    }
    let (data, pages) = api.read_all("/api/metrics", &[]).await;
    assert_eq!((data.len(), pages), (205, 2));
    let distinct: BTreeSet<String> = ids(&data).into_iter().collect();
    assert_eq!(distinct.len(), 205);
}

// ---- GET /api/events -------------------------------------------------------------------------

#[tokio::test]
async fn events_are_filtered_by_metric_and_window_sorted_and_paged() {
    let api = Api::start(config()).await;
    seed_week(&api).await;
    let placed = api.metric_id("Placed Order").await;

    // The recipe of notes/reconciliation.md §2: one metric over a day in Melbourne.
    let filter = format!(
        "and(equals(metric_id,\"{placed}\"),greater-or-equal(datetime,2026-03-04T00:00:00+11:00),less-than(datetime,2026-03-05T00:00:00+11:00))"
    );
    let body = api
        .read(
            "/api/events",
            &[
                ("filter", &filter),
                ("include", "profile"),
                ("fields[event]", "datetime,event_properties,uuid"),
                ("fields[profile]", "email,external_id"),
                ("sort", "datetime"),
                ("page[size]", "200"),
            ],
        )
        .await;
    let data = body["data"].as_array().unwrap();
    assert_eq!(order_ids(data), ["P2", "P3"]);
    let p2 = &data[0];
    assert_eq!(
        p2["attributes"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["event_properties", "datetime", "uuid"]
    );
    assert_eq!(p2["attributes"]["datetime"], "2026-03-03T13:30:00+00:00");
    assert_eq!(
        p2["attributes"]["event_properties"],
        json!({"OrderId": "P2", "Marketplace": "petmarket", "$value": 50.0, "$value_currency": "AUD"}),
        "the properties sent, $value and $value_currency, and no unique_id"
    );
    assert_eq!(p2["relationships"]["metric"]["data"]["id"], placed.as_str());
    let sam = api.profile_id("sam@example.com").await;
    assert_eq!(p2["relationships"]["profile"]["data"]["id"], sam.as_str());
    let included = body["included"].as_array().unwrap();
    assert_eq!(included.len(), 2, "one profile per event's profile");
    let ann = included
        .iter()
        .find(|p| p["attributes"]["email"] == "ann@example.com")
        .unwrap();
    assert_eq!(ann["type"], "profile");
    assert_eq!(
        ann["attributes"],
        json!({"email": "ann@example.com", "external_id": "mp:ann"}),
        "fields[profile] trims the included profile"
    );

    // Both ends: greater-than excludes the boundary, less-or-equal includes it.
    let boundary = "2026-03-03T13:30:00Z";
    for (op, expected) in [
        ("greater-or-equal", vec!["P2", "P3", "P4"]),
        ("greater-than", vec!["P3", "P4"]),
        ("less-or-equal", vec!["P1", "P2"]),
        ("less-than", vec!["P1"]),
    ] {
        let filter = format!("and(equals(metric_id,\"{placed}\"),{op}(datetime,{boundary}))");
        let body = api.read("/api/events", &[("filter", &filter)]).await;
        assert_eq!(
            order_ids(body["data"].as_array().unwrap()),
            expected,
            "{op}"
        );
    }
    // timestamp takes seconds since the epoch.
    let filter = format!("equals(metric_id,\"{placed}\"),greater-or-equal(timestamp,1772715599)");
    let body = api.read("/api/events", &[("filter", &filter)]).await;
    assert_eq!(order_ids(body["data"].as_array().unwrap()), ["P4"]);
    assert_eq!(body["data"][0]["attributes"]["timestamp"], 1_772_715_599);

    // By profile, newest first, metric included.
    let zoe = api.profile_id("zoe@example.com").await;
    let filter = format!("equals(profile_id,\"{zoe}\")");
    let body = api
        .read(
            "/api/events",
            &[
                ("filter", &filter),
                ("sort", "-timestamp"),
                ("include", "metric"),
            ],
        )
        .await;
    assert_eq!(
        order_ids(body["data"].as_array().unwrap()),
        ["P4", "S1", "P1"]
    );
    let names: BTreeSet<&str> = body["included"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["attributes"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, BTreeSet::from(["Placed Order", "Fulfilled Order"]));

    // Cursor pages of one: every event once, in order, then no next link.
    let filter = format!("equals(metric_id,\"{placed}\")");
    let (data, pages) = api
        .read_all(
            "/api/events",
            &[
                ("filter", &filter),
                ("page[size]", "1"),
                ("sort", "-datetime"),
            ],
        )
        .await;
    assert_eq!(pages, 4);
    assert_eq!(order_ids(&data), ["P4", "P3", "P2", "P1"]);
}

#[tokio::test]
async fn an_events_page_holds_at_most_200() {
    let api = Api::start(config()).await;
    let events: Vec<Json> = (0..250)
        .map(|i| {
            json!({"type": "event", "attributes": {
                "properties": {"OrderId": format!("{i}")},
                "time": format!("2026-03-10T{:02}:{:02}:00+00:00", i / 60, i % 60),
                "unique_id": format!("viewed:{i}"),
                "metric": {"data": {"type": "metric", "attributes": {"name": "Viewed Product"}}},
            }})
        })
        .collect();
    let job = json!({"data": {"type": "event-bulk-create-job", "attributes": {"events-bulk-create": {"data": [
        {"type": "event-bulk-create", "attributes": {
            "profile": {"data": {"type": "profile", "attributes": {"email": "zoe@example.com"}}},
            "events": {"data": events}}}]}}}});
    assert_eq!(
        api.post(Endpoint::BulkCreateEvents, &job).await,
        StatusCode::ACCEPTED
    );
    // The spec lets page[size] go to 1000; its description says 200 a page at most.
    let first = api.read("/api/events", &[("page[size]", "1000")]).await;
    assert_eq!(first["data"].as_array().unwrap().len(), 200);
    let (data, pages) = api.read_all("/api/events", &[("page[size]", "1000")]).await;
    assert_eq!((data.len(), pages), (250, 2));
    let distinct: BTreeSet<String> = ids(&data).into_iter().collect();
    assert_eq!(distinct.len(), 250, "no event twice across pages");
}

// ---- GET /api/profiles -----------------------------------------------------------------------

#[tokio::test]
async fn profiles_are_found_in_batches_sorted_with_their_consent() {
    let api = Api::start(config()).await;
    seed_week(&api).await;
    let (zoe, sam, ann) = (
        api.profile_id("zoe@example.com").await,
        api.profile_id("sam@example.com").await,
        api.profile_id("ann@example.com").await,
    );
    let found = |body: Json| -> BTreeSet<String> {
        ids(body["data"].as_array().unwrap()).into_iter().collect()
    };
    for (filter, expected) in [
        (
            r#"any(email,["ZOE@example.com","sam@example.com","nobody@example.com"])"#.to_owned(),
            vec![&zoe, &sam],
        ),
        (
            r#"any(phone_number,["+61412345678"])"#.to_owned(),
            vec![&ann],
        ),
        (
            r#"any(external_id,["mp:ann","mp:nobody"])"#.to_owned(),
            vec![&ann],
        ),
        (format!(r#"any(id,["{zoe}","{ann}"])"#), vec![&zoe, &ann]),
        (r#"equals(email,"sam@example.com")"#.to_owned(), vec![&sam]),
        (
            r#"any(email,["zoe@example.com","ann@example.com"]),equals(external_id,"mp:ann")"#
                .to_owned(),
            vec![&ann],
        ),
    ] {
        let body = api.read("/api/profiles", &[("filter", &filter)]).await;
        let expected: BTreeSet<String> = expected.into_iter().cloned().collect();
        assert_eq!(found(body), expected, "{filter}");
    }

    // Sorted by email, two a page: the pages put together are the whole sorted list.
    let (data, pages) = api
        .read_all("/api/profiles", &[("sort", "email"), ("page[size]", "2")])
        .await;
    assert_eq!(pages, 2);
    assert_eq!(ids(&data), [ann.clone(), sam.clone(), zoe.clone()]);
    let body = api.read("/api/profiles", &[("sort", "-email")]).await;
    assert_eq!(
        ids(body["data"].as_array().unwrap()),
        [zoe.clone(), sam.clone(), ann.clone()]
    );
    let body = api.read("/api/profiles", &[("page[size]", "100")]).await;
    assert_eq!(body["data"].as_array().unwrap().len(), 3);

    // Consent: what the subscription job sent, as Klaviyo shows it.
    let job = json!({"data": {"type": "profile-subscription-bulk-create-job", "attributes": {
        "custom_source": "Marketplacer checkout", "historical_import": true,
        "profiles": {"data": [{"type": "profile", "attributes": {"email": "zoe@example.com",
            "subscriptions": {"email": {"marketing": {"consent": "SUBSCRIBED",
                "consented_at": "2026-03-03T12:30:00+00:00"}}}}}]}}}});
    assert_eq!(
        api.post(Endpoint::BulkSubscribeProfiles, &job).await,
        StatusCode::ACCEPTED
    );
    let consent = api.consent("zoe@example.com").await;
    assert_eq!(consent.len(), 1);
    assert_eq!(consent[0]["consent"], "SUBSCRIBED");
    assert_eq!(consent[0]["consent_timestamp"], "2026-03-03T12:30:00+00:00");
    assert_eq!(consent[0]["method"], "API");
    assert_eq!(consent[0]["custom_method_detail"], "Marketplacer checkout");
    assert_eq!(consent[0]["can_receive_email_marketing"], true);
    assert_eq!(consent[0]["suppression"], json!([]));
    let never = api.consent("sam@example.com").await;
    assert_eq!(never[0]["consent"], "NEVER_SUBSCRIBED");
    assert_eq!(never[0]["method"], Json::Null);

    // A second profile for Zoe's email: only by planting (the normal path answers 409 or
    // updates the first); the batch lookup lists both; the second has none of her consent.
    let second = api
        .standin
        .plant(Drift::DuplicateProfile {
            email: Some("zoe@example.com".into()),
            phone_number: None,
            properties: serde_json::Map::new(),
        })
        .unwrap()
        .remove(0);
    let body = api
        .read(
            "/api/profiles",
            &[("filter", r#"any(email,["zoe@example.com"])"#)],
        )
        .await;
    assert_eq!(
        ids(body["data"].as_array().unwrap()),
        [zoe.clone(), second.clone()]
    );
    let consent = api.consent("zoe@example.com").await;
    assert_eq!(
        (
            consent[0]["consent"].as_str(),
            consent[1]["consent"].as_str()
        ),
        (Some("SUBSCRIBED"), Some("NEVER_SUBSCRIBED"))
    );
    let update = json!({"data": {"type": "profile", "attributes": {
        "email": "zoe@example.com", "first_name": "Zoe"}}});
    assert_eq!(
        api.post(Endpoint::CreateOrUpdateProfile, &update).await,
        StatusCode::OK,
        "upserts keep finding the first profile"
    );
    let body = api
        .read(
            "/api/profiles",
            &[
                ("filter", r#"any(email,["zoe@example.com"])"#),
                ("fields[profile]", "first_name"),
            ],
        )
        .await;
    assert_eq!(
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["attributes"].clone())
            .collect::<Vec<_>>(),
        [json!({"first_name": "Zoe"}), json!({"first_name": null})]
    );
}

// ---- POST /api/metric-aggregates -------------------------------------------------------------

fn aggregate_query(metric_id: &str, timezone: &str, extra: Json) -> Json {
    let mut attributes = json!({
        "metric_id": metric_id,
        "measurements": ["count", "sum_value", "unique"],
        "filter": [
            "greater-or-equal(datetime,2026-03-03T00:00:00)",
            "less-than(datetime,2026-03-06T00:00:00)",
        ],
        "interval": "day",
        "timezone": timezone,
    });
    for (key, value) in extra.as_object().unwrap() {
        attributes[key] = value.clone();
    }
    json!({"data": {"type": "metric-aggregate", "attributes": attributes}})
}

fn measurement(row: &Json, name: &str) -> Vec<f64> {
    row["measurements"][name]
        .as_array()
        .unwrap_or_else(|| panic!("no {name} in {row}"))
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

#[tokio::test]
async fn aggregates_bucket_events_by_their_day_in_the_timezone() {
    let api = Api::start(config()).await;
    seed_week(&api).await;
    let placed = api.metric_id("Placed Order").await;

    let answer = api
        .aggregate(&aggregate_query(&placed, "Australia/Melbourne", json!({})))
        .await;
    let data = &answer["data"];
    assert_eq!(data["type"], "metric-aggregate");
    assert_eq!(
        data["attributes"]["dates"],
        json!([
            "2026-03-03T00:00:00+11:00",
            "2026-03-04T00:00:00+11:00",
            "2026-03-05T00:00:00+11:00"
        ])
    );
    let rows = data["attributes"]["data"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["dimensions"], json!([]));
    assert_eq!(measurement(&rows[0], "count"), [1.0, 2.0, 1.0]);
    assert_eq!(measurement(&rows[0], "sum_value"), [100.0, 70.5, 10.0]);
    assert_eq!(measurement(&rows[0], "unique"), [1.0, 2.0, 1.0]);

    // The same days in UTC: P2 (00:30 in Melbourne) falls on the day before.
    let answer = api
        .aggregate(&aggregate_query(
            &placed,
            "UTC",
            json!({"measurements": ["sum_value"]}),
        ))
        .await;
    let rows = answer["data"]["attributes"]["data"].as_array().unwrap();
    assert_eq!(
        answer["data"]["attributes"]["dates"][0],
        "2026-03-03T00:00:00+00:00"
    );
    assert_eq!(measurement(&rows[0], "sum_value"), [150.0, 20.5, 10.0]);
    assert!(
        rows[0]["measurements"].get("count").is_none(),
        "only what was asked"
    );

    // Per currency, biggest first; an offset in the filter is that instant.
    let answer = api
        .aggregate(&aggregate_query(
            &placed,
            "Australia/Melbourne",
            json!({"by": ["$value_currency"], "sort": "-sum_value", "filter": [
                "greater-or-equal(datetime,2026-03-03T00:00:00+11:00)",
                "less-than(datetime,2026-03-05T13:00:00Z)"]}),
        ))
        .await;
    let rows = answer["data"]["attributes"]["data"].as_array().unwrap();
    let by: Vec<(&str, Vec<f64>)> = rows
        .iter()
        .map(|r| {
            (
                r["dimensions"][0].as_str().unwrap(),
                measurement(r, "sum_value"),
            )
        })
        .collect();
    assert_eq!(
        by,
        [
            ("AUD", vec![100.0, 50.0, 10.0]),
            ("NZD", vec![0.0, 20.5, 0.0])
        ]
    );

    // Hours and weeks; a week starts on Monday, before the range if it must.
    let answer = api
        .aggregate(&aggregate_query(
            &placed,
            "UTC",
            json!({"interval": "hour", "measurements": ["count"], "filter": [
                "greater-or-equal(datetime,2026-03-03T12:00:00Z)",
                "less-than(datetime,2026-03-03T14:00:00Z)"]}),
        ))
        .await;
    assert_eq!(
        answer["data"]["attributes"]["dates"],
        json!(["2026-03-03T12:00:00+00:00", "2026-03-03T13:00:00+00:00"])
    );
    assert_eq!(
        measurement(&answer["data"]["attributes"]["data"][0], "count"),
        [1.0, 1.0]
    );
    let answer = api
        .aggregate(&aggregate_query(
            &placed,
            "Australia/Melbourne",
            json!({"interval": "week", "filter": [
                "greater-or-equal(datetime,2026-03-03T00:00:00)",
                "less-than(datetime,2026-03-17T00:00:00)"]}),
        ))
        .await;
    assert_eq!(
        answer["data"]["attributes"]["dates"],
        json!([
            "2026-03-02T00:00:00+11:00",
            "2026-03-09T00:00:00+11:00",
            "2026-03-16T00:00:00+11:00"
        ])
    );
    assert_eq!(
        measurement(&answer["data"]["attributes"]["data"][0], "count"),
        [4.0, 0.0, 0.0]
    );

    // Nothing happened: one row of zeros without `by`.
    let fulfilled = api.metric_id("Fulfilled Order").await;
    let answer = api
        .aggregate(&aggregate_query(
            &fulfilled,
            "UTC",
            json!({"filter": [
                "greater-or-equal(datetime,2026-04-01T00:00:00Z)",
                "less-than(datetime,2026-04-03T00:00:00Z)"]}),
        ))
        .await;
    assert_eq!(
        measurement(&answer["data"]["attributes"]["data"][0], "count"),
        [0.0, 0.0]
    );
}

#[tokio::test]
async fn a_wrong_aggregate_query_is_400_at_its_pointer() {
    let api = Api::start(config()).await;
    seed_week(&api).await;
    let placed = api.metric_id("Placed Order").await;
    let good = aggregate_query(&placed, "Australia/Melbourne", json!({}));
    let mut cases: Vec<(Json, &str, &str)> = Vec::new();
    let with = |extra: Json| aggregate_query(&placed, "Australia/Melbourne", extra);
    cases.push((
        with(json!({"filter": ["greater-or-equal(datetime,2026-03-03T00:00:00)"]})),
        "/data/attributes/filter",
        "a greater-or-equal and a less-than filter",
    ));
    cases.push((
        with(json!({"timezone": "australia/melbourne"})),
        "/data/attributes/timezone",
        "case-sensitive",
    ));
    cases.push((
        with(json!({"timezone": "Europe/Kyiv"})),
        "/data/attributes/timezone",
        "not a supported timezone",
    ));
    cases.push((
        with(json!({"metricId": placed})),
        "/data/attributes",
        "metricId",
    ));
    cases.push((
        with(json!({"measurements": ["average"]})),
        "/data/attributes/measurements/0",
        "not one of \"count\"",
    ));
    cases.push((
        with(json!({"interval": "fortnight"})),
        "/data/attributes/interval",
        "not one of",
    ));
    cases.push((
        with(json!({"by": ["Campaign Name"]})),
        "/data/attributes/by",
        "$value_currency only",
    ));
    cases.push((
        with(json!({"metric_id": "nope"})),
        "/data/attributes/metric_id",
        "does not exist",
    ));
    cases.push((
        with(json!({"filter": [
            "greater-or-equal(datetime,\"2026-03-03T00:00:00\")",
            "less-than(datetime,2026-03-06T00:00:00)"]})),
        "/data/attributes/filter/0",
        "unquoted ISO 8601 datetime",
    ));
    cases.push((
        with(json!({"filter": [
            "greater-or-equal(datetime,2026-03-06T00:00:00)",
            "less-than(datetime,2026-03-03T00:00:00)"]})),
        "/data/attributes/filter",
        "empty",
    ));
    for (body, pointer, needle) in cases {
        let response = api.aggregate_as(KEY, &body).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let answer: Json = response.json().await.unwrap();
        assert_schema("client_error.json", &answer);
        let error = &answer["errors"][0];
        assert_eq!(error["source"]["pointer"], pointer, "{answer:#}");
        assert!(
            error["detail"].as_str().unwrap().contains(needle),
            "{needle}: {answer:#}"
        );
    }
    let response = api
        .client
        .post(format!("{}/api/metric-aggregates", api.standin.url()))
        .header("Authorization", format!("Klaviyo-API-Key {KEY}"))
        .header("revision", REVISION)
        .header("content-type", "text/plain")
        .body(good.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // The good one, to show the cases failed for their own reason.
    api.aggregate(&good).await;
}

// ---- planted drift ---------------------------------------------------------------------------

fn at(text: &str) -> chrono::DateTime<chrono::Utc> {
    text.parse().unwrap()
}

#[tokio::test]
async fn every_plant_shows_through_the_reads() {
    let api = Api::start(config()).await;
    seed_week(&api).await;
    let placed = api.metric_id("Placed Order").await;
    let by_metric = format!("equals(metric_id,\"{placed}\")");
    let daily = aggregate_query(&placed, "Australia/Melbourne", json!({}));

    // A deleted event is gone from the events and the totals...
    let deleted = api
        .standin
        .plant(Drift::DeleteEvent {
            unique_id: "petmarket:placed-order:P2".into(),
        })
        .unwrap();
    assert_eq!(deleted.len(), 1);
    let body = api.read("/api/events", &[("filter", &by_metric)]).await;
    assert_eq!(
        order_ids(body["data"].as_array().unwrap()),
        ["P1", "P3", "P4"]
    );
    let totals = api.aggregate(&daily).await;
    assert_eq!(
        measurement(&totals["data"]["attributes"]["data"][0], "count"),
        [1.0, 1.0, 1.0]
    );
    // ...and its key is forgotten: sent again with the same unique_id, it is recorded again.
    let (email, metric, unique_id, time, value, currency) = WEEK[1];
    let resend = order_event(email, metric, unique_id, time, value, Some(currency));
    assert_eq!(
        api.post(Endpoint::CreateEvent, &resend).await,
        StatusCode::ACCEPTED
    );
    let body = api.read("/api/events", &[("filter", &by_metric)]).await;
    assert_eq!(
        order_ids(body["data"].as_array().unwrap()),
        ["P1", "P2", "P3", "P4"]
    );
    assert_ne!(ids(&body["data"].as_array().unwrap()[1..2])[0], deleted[0]);

    // A changed value, a changed property, a removed property.
    for (property, value) in [
        ("$value", json!(90.0)),
        ("TrackingNumber", json!("ZZ1")),
        ("Marketplace", Json::Null),
    ] {
        api.standin
            .plant(Drift::ChangeEvent {
                unique_id: "petmarket:placed-order:P1".into(),
                property: property.into(),
                value,
            })
            .unwrap();
    }
    let body = api.read("/api/events", &[("filter", &by_metric)]).await;
    assert_eq!(
        body["data"][0]["attributes"]["event_properties"],
        json!({"OrderId": "P1", "TrackingNumber": "ZZ1", "$value": 90.0, "$value_currency": "AUD"})
    );
    let totals = api.aggregate(&daily).await;
    assert_eq!(
        measurement(&totals["data"]["attributes"]["data"][0], "sum_value"),
        [90.0, 70.5, 10.0]
    );

    // A changed profile property and standard field.
    api.standin
        .plant(Drift::ChangeProfile {
            email: Some("zoe@example.com".into()),
            profile_id: None,
            field: "properties.Marketplacer Marketplace".into(),
            value: json!("elsewhere"),
        })
        .unwrap();
    let zoe = api.profile_id("zoe@example.com").await;
    api.standin
        .plant(Drift::ChangeProfile {
            email: None,
            profile_id: Some(zoe.clone()),
            field: "first_name".into(),
            value: json!("Zed"),
        })
        .unwrap();
    let body = api
        .read(
            "/api/profiles",
            &[("filter", r#"equals(email,"zoe@example.com")"#)],
        )
        .await;
    let attributes = &body["data"][0]["attributes"];
    assert_eq!(
        attributes["properties"]["Marketplacer Marketplace"],
        "elsewhere"
    );
    assert_eq!(attributes["first_name"], "Zed");

    // Consent: an unsubscribe, a suppression, a subscribe by someone else's call.
    api.standin
        .plant(Drift::Unsubscribe {
            email: "zoe@example.com".into(),
            at: Some(at("2026-03-20T01:00:00Z")),
        })
        .unwrap();
    let zoe_consent = &api.consent("zoe@example.com").await[0];
    assert_eq!(zoe_consent["consent"], "UNSUBSCRIBED");
    assert_eq!(
        zoe_consent["consent_timestamp"],
        "2026-03-20T01:00:00+00:00"
    );
    assert_eq!(zoe_consent["can_receive_email_marketing"], false);
    assert_eq!(
        zoe_consent["suppression"],
        json!([{"reason": "UNSUBSCRIBE", "timestamp": "2026-03-20T01:00:00+00:00"}])
    );
    api.standin
        .plant(Drift::Suppress {
            email: "sam@example.com".into(),
            reason: SuppressionReason::HardBounce,
            at: Some(at("2026-03-21T02:00:00+11:00")),
        })
        .unwrap();
    let sam_consent = &api.consent("sam@example.com").await[0];
    assert_eq!(sam_consent["consent"], "NEVER_SUBSCRIBED");
    assert_eq!(sam_consent["can_receive_email_marketing"], false);
    assert_eq!(
        sam_consent["suppression"],
        json!([{"reason": "HARD_BOUNCE", "timestamp": "2026-03-20T15:00:00+00:00"}])
    );
    api.standin
        .plant(Drift::Subscribe {
            email: "ann@example.com".into(),
            method: "API".into(),
            method_detail: None,
            custom_method_detail: Some("Marketplacer checkout".into()),
            at: Some(at("2026-03-04T02:00:00Z")),
        })
        .unwrap();
    let ann_consent = &api.consent("ann@example.com").await[0];
    assert_eq!(ann_consent["consent"], "SUBSCRIBED");
    assert_eq!(ann_consent["method"], "API");
    assert_eq!(ann_consent["custom_method_detail"], "Marketplacer checkout");
    assert_eq!(
        ann_consent["consent_timestamp"],
        "2026-03-04T02:00:00+00:00"
    );
    // A subscription Klaviyo accepted and lost: she reads as before it, and there is nothing
    // left to lose.
    let lost = api
        .standin
        .plant(Drift::LoseSubscription {
            email: "ann@example.com".into(),
        })
        .unwrap();
    let ann_consent = &api.consent("ann@example.com").await[0];
    assert_eq!(ann_consent["consent"], "NEVER_SUBSCRIBED");
    assert_eq!(ann_consent["custom_method_detail"], Json::Null);
    assert_eq!(ann_consent["can_receive_email_marketing"], true);
    let again = api.standin.plant(Drift::LoseSubscription {
        email: "ann@example.com".into(),
    });
    assert!(
        matches!(&again, Err(PlantError::Invalid(why)) if why.contains("no subscription")),
        "{again:?} after {lost:?}"
    );

    // A second phone-number profile.
    let second = api
        .standin
        .plant(Drift::DuplicateProfile {
            email: None,
            phone_number: Some("+61412345678".into()),
            properties: json!({"Source": "pos"}).as_object().unwrap().clone(),
        })
        .unwrap()
        .remove(0);
    let body = api
        .read(
            "/api/profiles",
            &[("filter", r#"equals(phone_number,"+61412345678")"#)],
        )
        .await;
    let found = ids(body["data"].as_array().unwrap());
    assert_eq!(found.len(), 2);
    assert_eq!(found[1], second);
    assert_eq!(
        body["data"][1]["attributes"]["properties"],
        json!({"Source": "pos"})
    );

    // What cannot be planted says why, and changes nothing.
    let before = api.standin.accepted();
    for (drift, expected) in [
        (
            Drift::DeleteEvent {
                unique_id: "petmarket:placed-order:P9".into(),
            },
            PlantError::NoSuchEvent("petmarket:placed-order:P9".into()),
        ),
        (
            Drift::Unsubscribe {
                email: "nobody@example.com".into(),
                at: None,
            },
            PlantError::NoSuchProfile("with email \"nobody@example.com\"".into()),
        ),
        (
            Drift::Flow {
                name: "Winback".into(),
                status: FlowStatus::Manual,
                metric: "Opened Email".into(),
            },
            PlantError::NoSuchMetric("Opened Email".into()),
        ),
    ] {
        assert_eq!(api.standin.plant(drift), Err(expected));
    }
    let error = api
        .standin
        .plant(Drift::ChangeProfile {
            email: Some("zoe@example.com".into()),
            profile_id: None,
            field: "email".into(),
            value: json!("other@example.com"),
        })
        .unwrap_err();
    assert!(error.to_string().contains("identifier"), "{error}");
    assert_eq!(api.standin.accepted(), before);
}

#[tokio::test]
async fn drift_is_planted_over_http_too() {
    let api = Api::start(config()).await;
    seed_week(&api).await;
    let plant = |body: Json| {
        let client = api.client.clone();
        let url = format!("{}/standin/drift", api.standin.url());
        async move {
            let response = client.post(url).json(&body).send().await.unwrap();
            let status = response.status();
            (status, response.json::<Json>().await.unwrap())
        }
    };
    let (status, answer) = plant(json!({"kind": "delete_event",
        "unique_id": "petmarket:placed-order:P1"}))
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["kind"], "delete_event");
    assert_eq!(answer["ids"].as_array().unwrap().len(), 1);
    let placed = api.metric_id("Placed Order").await;
    let filter = format!("equals(metric_id,\"{placed}\")");
    let body = api.read("/api/events", &[("filter", &filter)]).await;
    assert_eq!(
        order_ids(body["data"].as_array().unwrap()),
        ["P2", "P3", "P4"]
    );

    let (status, answer) = plant(json!({"kind": "suppress", "email": "sam@example.com",
        "reason": "SPAM_COMPLAINT", "at": "2026-03-22T00:00:00Z"}))
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer["ids"],
        json!([api.profile_id("sam@example.com").await])
    );
    assert_eq!(
        api.consent("sam@example.com").await[0]["suppression"][0]["reason"],
        "SPAM_COMPLAINT"
    );
    let (status, answer) = plant(json!({"kind": "flow", "name": "Thanks",
        "status": "live", "metric": "Placed Order"}))
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");

    // Mistakes: a key misspelt, a kind unknown, something that does not exist.
    for (body, status, needle) in [
        (
            json!({"kind": "delete_event", "uniqueId": "x"}),
            StatusCode::BAD_REQUEST,
            "unknown field `uniqueId`",
        ),
        (
            json!({"kind": "rename_metric", "name": "x"}),
            StatusCode::BAD_REQUEST,
            "unknown variant `rename_metric`",
        ),
        (
            json!({"kind": "delete_event", "unique_id": "petmarket:placed-order:P1"}),
            StatusCode::NOT_FOUND,
            "no event has unique_id",
        ),
        (
            json!({"kind": "duplicate_profile"}),
            StatusCode::BAD_REQUEST,
            "needs the email or phone number",
        ),
    ] {
        let (got, answer) = plant(body.clone()).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(needle),
            "{needle}: {answer}"
        );
    }
}

// ---- limits and scopes -----------------------------------------------------------------------

#[tokio::test]
async fn each_read_answers_429_with_retry_after_over_its_published_burst() {
    for read in Read::ALL {
        // 50 real seconds to a scaled one: the burst fills long before its window passes.
        let mut config = published();
        config.time_scale = 0.02;
        if read == Read::MetricAggregates {
            // The query needs a metric id, read through GET /api/metrics.
            config.read_limits = self::config().read_limits;
            config.read_limits.remove(&read);
        }
        let api = Api::start(config).await;
        seed_week(&api).await;
        let query = match read {
            Read::MetricAggregates => {
                aggregate_query(&api.metric_id("Placed Order").await, "UTC", json!({}))
            }
            _ => Json::Null,
        };
        let burst = Limit::klaviyo_read(read).burst_per_second as usize;
        let before = api.standin.stats().read(read);
        for i in 0..=burst {
            let response = match read {
                Read::MetricAggregates => api.aggregate_as(KEY, &query).await,
                _ => api.send(KEY, api.url(read.path(), &[])).await,
            };
            if i < burst {
                assert_eq!(response.status(), StatusCode::OK, "{read:?} #{i}");
                continue;
            }
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS, "{read:?}");
            let retry_after: u64 = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(retry_after, 1, "{read:?}");
            let body: Json = response.json().await.unwrap();
            assert_schema("client_error.json", &body);
            assert_eq!(body["errors"][0]["code"], "throttled");
        }
        let stats = api.standin.stats().read(read);
        assert_eq!(
            (
                stats.requests - before.requests,
                stats.accepted - before.accepted,
                stats.throttled - before.throttled
            ),
            (burst as u64 + 1, burst as u64, 1),
            "{read:?}"
        );
        assert!(stats.max_per_second as usize > burst, "{read:?}");
    }
}

#[tokio::test]
async fn a_read_over_its_steady_window_waits_for_the_minute() {
    let mut config = config();
    config.read_limits.insert(
        Read::Profiles,
        Limit {
            burst_per_second: 100,
            steady_per_minute: 3,
        },
    );
    let api = Api::start(config).await;
    for _ in 0..3 {
        api.read("/api/profiles", &[]).await;
    }
    let response = api.send(KEY, api.url("/api/profiles", &[])).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((59..=60).contains(&retry_after), "{retry_after}");
    // Another read endpoint has its own window.
    api.read("/api/events", &[]).await;
}

#[tokio::test]
async fn each_read_needs_its_scope() {
    let api = Api::start(config()).await;
    seed_week(&api).await;
    let placed = api.metric_id("Placed Order").await;
    let query = aggregate_query(&placed, "UTC", json!({}));
    for (key, read, allowed) in [
        (EVENTS_ONLY_KEY, Read::Events, true),
        (EVENTS_ONLY_KEY, Read::Profiles, false),
        (EVENTS_ONLY_KEY, Read::Metrics, false),
        (EVENTS_ONLY_KEY, Read::MetricAggregates, false),
        (READ_ONLY_KEY, Read::Profiles, true),
        (READ_ONLY_KEY, Read::Metrics, true),
        (READ_ONLY_KEY, Read::MetricAggregates, true),
    ] {
        let response = match read {
            Read::MetricAggregates => api.aggregate_as(key, &query).await,
            _ => api.send(key, api.url(read.path(), &[])).await,
        };
        if allowed {
            assert_eq!(response.status(), StatusCode::OK, "{key} {read:?}");
            continue;
        }
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{key} {read:?}");
        let body: Json = response.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], "permission_denied");
        let detail = body["errors"][0]["detail"].as_str().unwrap();
        assert!(detail.contains(read.scope()), "{detail}");
    }
    // An events-only key cannot write events either.
    let response = api
        .client
        .post(format!("{}/api/events", api.standin.url()))
        .header(
            "Authorization",
            format!("Klaviyo-API-Key {EVENTS_ONLY_KEY}"),
        )
        .header("revision", REVISION)
        .header("content-type", "application/vnd.api+json")
        .body(
            order_event(
                "a@b.co",
                "Placed Order",
                "x:1",
                "2026-03-03T00:00:00Z",
                1.0,
                None,
            )
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

// ---- what Klaviyo refuses --------------------------------------------------------------------

#[tokio::test]
async fn a_read_klaviyo_cannot_apply_is_400_naming_the_parameter_and_the_problem() {
    let api = Api::start(config()).await;
    seed_week(&api).await;
    let hundred_and_one: Vec<String> = (0..101).map(|i| format!("\"p{i}@x.co\"")).collect();
    let too_many = format!("any(email,[{}])", hundred_and_one.join(","));
    /// Path, query, the parameter the error names, words in its detail.
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            "/api/events",
            vec![("filter", "equals(metric_id,abc)")],
            "filter",
            "Strings are quoted",
        ),
        (
            "/api/events",
            vec![("filter", r#"greater-than(datetime,"2026-03-04T00:00:00Z")"#)],
            "filter",
            "Datetimes are not quoted",
        ),
        (
            "/api/events",
            vec![("filter", "greater-than(datetime,2026-03-04T00:00:00)")],
            "filter",
            "needs an offset",
        ),
        (
            "/api/events",
            vec![("filter", r#"equals(unique_id,"petmarket:placed-order:P1")"#)],
            "filter",
            "'unique_id' is not a valid field",
        ),
        (
            "/api/events",
            vec![("filter", "equals(datetime,2026-03-04T00:00:00Z)")],
            "filter",
            "not a valid operator for the field 'datetime'",
        ),
        (
            "/api/events",
            vec![("filter", r#"has(profile,"x")"#)],
            "filter",
            "does not model",
        ),
        (
            "/api/events",
            vec![("page[size]", "1001")],
            "page[size]",
            "from 1 to 1000",
        ),
        (
            "/api/events",
            vec![("sort", "-value")],
            "sort",
            "'-value' is not a valid sort",
        ),
        (
            "/api/events",
            vec![("include", "lists")],
            "include",
            "'lists'",
        ),
        (
            "/api/events",
            vec![("fields[event]", "unique_id")],
            "fields[event]",
            "'unique_id'",
        ),
        (
            "/api/events",
            vec![("fitler", "x")],
            "fitler",
            "'fitler' is not a query parameter",
        ),
        (
            "/api/events",
            vec![("page[cursor]", "200")],
            "page[cursor]",
            "follow links.next",
        ),
        (
            "/api/profiles",
            vec![("filter", "greater-or-equal(created,2026-03-04T00:00:00Z)")],
            "filter",
            "not a valid operator for the field 'created'",
        ),
        (
            "/api/profiles",
            vec![("filter", r#"equals(_kx,"x")"#)],
            "filter",
            "does not model",
        ),
        (
            "/api/profiles",
            vec![("filter", &too_many)],
            "filter",
            "1 to 100 values",
        ),
        (
            "/api/profiles",
            vec![("filter", r#"equals(email,["a@b.co"])"#)],
            "filter",
            "use any(...)",
        ),
        (
            "/api/profiles",
            vec![("page[size]", "101")],
            "page[size]",
            "from 1 to 100",
        ),
        (
            "/api/profiles",
            vec![("additional-fields[profile]", "predictive_analytics")],
            "additional-fields[profile]",
            "does not model",
        ),
        (
            "/api/profiles",
            vec![("sort", "first_name")],
            "sort",
            "'first_name'",
        ),
        (
            "/api/metrics",
            vec![("filter", r#"equals(name,"Placed Order")"#)],
            "filter",
            "'name' is not a valid field",
        ),
        (
            "/api/metrics",
            vec![("page[size]", "10")],
            "page[size]",
            "'page[size]'",
        ),
    ];
    for (path, params, parameter, needle) in cases {
        let errors = api.refused(api.url(path, &params)).await;
        let error = &errors[0];
        assert_eq!(error["code"], "invalid", "{path} {params:?}");
        assert_eq!(
            error["source"]["parameter"], parameter,
            "{path} {params:?}: {error}"
        );
        let detail = error["detail"].as_str().unwrap();
        assert!(
            detail.contains(needle),
            "{path} {params:?}: {needle:?} not in {detail:?}"
        );
    }
    // An offset's `+` sent unencoded arrives as a space.
    let raw = Url::parse(&format!(
        "{}/api/events?filter=greater-than(datetime,2026-03-04T00:00:00+11:00)",
        api.standin.url()
    ))
    .unwrap();
    let errors = api.refused(raw).await;
    assert!(
        errors[0]["detail"].as_str().unwrap().contains("%2B"),
        "{errors:?}"
    );
}
