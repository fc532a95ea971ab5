//! Reading Klaviyo back (issue 17): the read client against a local Klaviyo that answers as the
//! OpenAPI spec documents (`GetMetricResponseCollectionCompoundDocument`,
//! `GetEventResponseCollectionCompoundDocument`, `GetProfileResponse…CompoundDocument`,
//! `PostMetricAggregateResponse`), and a reconciliation stopped while reading it back: the
//! Marketplacer stand-in serves the examples, the Klaviyo stand-in takes what is sent, and this
//! Klaviyo holds what the stand-in accepted, shaped as the read endpoints give it, with one
//! endpoint it can take down. A whole week read back from the Klaviyo stand-in itself, with
//! every class planted, is tests/reconcile_week.rs.

mod common;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use marketsync::klaviyo::read::{ReadEndpoint, ReadError, ReadOptions, Reader};
use marketsync::marketplacer::{Client as Marketplacer, Options};
use marketsync::reconcile::impact::Class;
use marketsync::reconcile::{Ask, ReadBack, ReadBackConfig, Reconciler, Report, RunOptions};
use marketsync::sink::SinkConfig;
use marketsync::sink::http::{ApiKey, Client};
use marketsync::sink::limit::Limit;
use marketsync::standin::marketplacer::{self as mp, Data};
use marketsync::store::Store;
use serde_json::{Value as Json, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KEY: &str = "pk_readback_secret";

// ---- a Klaviyo that holds data and answers reads as documented ------------------------------

/// What this Klaviyo holds, and what it was asked.
#[derive(Default)]
struct Holds {
    /// `MetricResponseObjectResource`s.
    metrics: Vec<Json>,
    /// `FlowResponseObjectResource`s, for `include=flow-triggers`.
    flows: Vec<Json>,
    /// `EventResponseObjectResource`s.
    events: Vec<Json>,
    /// `ProfileResponseObjectResource`s with `attributes.subscriptions` (left out unless asked).
    profiles: Vec<Json>,
    /// Metrics per page (the spec: at most 200).
    metric_page: usize,
    /// Answer 429 (`Retry-After: 1`) to this many requests first.
    throttle: u32,
    /// Answer 503 to every profile read.
    profiles_down: bool,
    /// How long a profile read takes, and how many were in flight at once (at most).
    profile_delay: Duration,
    in_flight: usize,
    most_in_flight: usize,
    /// (method, path and query, body) of every request.
    asked: Vec<(String, String, Option<Json>)>,
}

type Shared = Arc<Mutex<Holds>>;

struct Klaviyo {
    url: String,
    holds: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl Klaviyo {
    async fn start() -> Klaviyo {
        let holds: Shared = Arc::new(Mutex::new(Holds {
            metric_page: 200,
            ..Holds::default()
        }));
        let app = axum::Router::new()
            .route("/api/metrics", get(metrics))
            .route("/api/events", get(events))
            .route("/api/profiles", get(profiles))
            .route("/api/metric-aggregates", post(aggregates))
            .with_state(Arc::clone(&holds));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Klaviyo { url, holds, server }
    }

    fn holds(&self) -> std::sync::MutexGuard<'_, Holds> {
        self.holds.lock().unwrap()
    }

    fn reader(&self, options: ReadOptions) -> Reader {
        Reader::new(self.client(), options)
    }

    fn client(&self) -> Client {
        Client::new(
            &self.url,
            ApiKey::new(KEY),
            marketsync::sink::REVISION,
            Duration::from_secs(10),
        )
    }
}

impl Drop for Klaviyo {
    fn drop(&mut self) {
        self.server.abort();
    }
}

type Answer = (StatusCode, HeaderMap, String);

fn answer(status: StatusCode, body: Json) -> Answer {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/vnd.api+json".parse().unwrap());
    (status, headers, body.to_string())
}

fn error(status: StatusCode, code: &str, detail: &str) -> Answer {
    answer(
        status,
        json!({"errors": [{"id": "e", "status": status.as_u16(), "code": code, "title": code, "detail": detail, "source": {"parameter": "filter"}}]}),
    )
}

/// The checks every endpoint makes first: the key, a 429 to give, the request kept.
fn admit(
    holds: &mut Holds,
    headers: &HeaderMap,
    method: &str,
    path: &str,
    query: &HashMap<String, String>,
    body: Option<Json>,
) -> Option<Answer> {
    let mut pairs: Vec<(&String, &String)> = query.iter().collect();
    pairs.sort();
    let query_text = reqwest::Url::parse_with_params("http://x/", pairs)
        .unwrap()
        .query()
        .unwrap_or_default()
        .to_owned();
    holds
        .asked
        .push((method.into(), format!("{path}?{query_text}"), body));
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if authorization != format!("Klaviyo-API-Key {KEY}") {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "not_authenticated",
            "Missing or invalid private key.",
        ));
    }
    if query.get("filter").is_some_and(|f| f.contains("echo")) {
        // A proxy that quotes the request's headers back.
        return Some(error(
            StatusCode::BAD_REQUEST,
            "invalid",
            &format!("bad filter; you sent {authorization}"),
        ));
    }
    if holds.throttle > 0 {
        holds.throttle -= 1;
        let mut throttled = error(
            StatusCode::TOO_MANY_REQUESTS,
            "throttled",
            "Request was throttled.",
        );
        throttled.1.insert("retry-after", "1".parse().unwrap());
        return Some(throttled);
    }
    None
}

fn offset(query: &HashMap<String, String>) -> usize {
    query
        .get("page[cursor]")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// `links`: `self`, and `next` (the same query, the cursor moved) when more follow.
fn links(
    url: &str,
    path: &str,
    query: &HashMap<String, String>,
    from: usize,
    size: usize,
    total: usize,
) -> Json {
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .filter(|(k, _)| *k != "page[cursor]")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    pairs.sort();
    let me = reqwest::Url::parse_with_params(&format!("{url}{path}"), &pairs).unwrap();
    let mut links = json!({"self": me.to_string()});
    if from + size < total {
        pairs.push(("page[cursor]".into(), (from + size).to_string()));
        links["next"] = json!(
            reqwest::Url::parse_with_params(&format!("{url}{path}"), &pairs)
                .unwrap()
                .to_string()
        );
    }
    links
}

fn base(headers: &HeaderMap) -> String {
    format!(
        "http://{}",
        headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
    )
}

async fn metrics(
    State(holds): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Answer {
    let mut holds = holds.lock().unwrap();
    if let Some(refused) = admit(&mut holds, &headers, "GET", "/api/metrics", &query, None) {
        return refused;
    }
    let from = offset(&query);
    let size = holds.metric_page;
    let page: Vec<Json> = holds
        .metrics
        .iter()
        .skip(from)
        .take(size)
        .cloned()
        .collect();
    let mut document = json!({"data": page, "links": links(&base(&headers), "/api/metrics", &query, from, size, holds.metrics.len())});
    if query.get("include").is_some_and(|i| i == "flow-triggers") {
        let ids: Vec<&str> = page
            .iter()
            .flat_map(|m| {
                m["relationships"]["flow-triggers"]["data"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|f| f["id"].as_str().map(str::to_owned))
            .map(|id| {
                holds
                    .flows
                    .iter()
                    .find(|f| f["id"] == id.as_str())
                    .and_then(|f| f["id"].as_str())
                    .unwrap_or("")
            })
            .collect();
        document["included"] = holds
            .flows
            .iter()
            .filter(|f| ids.contains(&f["id"].as_str().unwrap_or_default()))
            .cloned()
            .collect();
    }
    answer(StatusCode::OK, document)
}

/// The value of `name(field,...)` in a filter: the text up to its closing parenthesis.
fn term<'f>(filter: &'f str, head: &str) -> Option<&'f str> {
    let start = filter.find(head)? + head.len();
    let rest = &filter[start..];
    Some(&rest[..rest.find(')')?])
}

fn unquote(text: &str) -> String {
    text.trim().trim_matches('"').to_owned()
}

fn millis(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .unwrap()
        .timestamp_millis()
}

async fn events(
    State(holds): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Answer {
    let mut holds = holds.lock().unwrap();
    if let Some(refused) = admit(&mut holds, &headers, "GET", "/api/events", &query, None) {
        return refused;
    }
    let filter = query.get("filter").cloned().unwrap_or_default();
    let metric = term(&filter, "equals(metric_id,").map(unquote);
    let profile = term(&filter, "equals(profile_id,").map(unquote);
    let since = term(&filter, "greater-or-equal(datetime,").map(millis);
    let until = term(&filter, "less-than(datetime,").map(millis);
    let size: usize = query
        .get("page[size]")
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    if size > 1000 {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid",
            "page[size] must be an integer from 1 to 1000.",
        );
    }
    let mut matching: Vec<&Json> = holds
        .events
        .iter()
        .filter(|e| {
            metric
                .as_deref()
                .is_none_or(|m| e["relationships"]["metric"]["data"]["id"] == m)
        })
        .filter(|e| {
            profile
                .as_deref()
                .is_none_or(|p| e["relationships"]["profile"]["data"]["id"] == p)
        })
        .filter(|e| {
            let at = millis(e["attributes"]["datetime"].as_str().unwrap());
            since.is_none_or(|s| at >= s) && until.is_none_or(|u| at < u)
        })
        .collect();
    matching.sort_by_key(|e| millis(e["attributes"]["datetime"].as_str().unwrap()));
    let from = offset(&query);
    let page: Vec<Json> = matching
        .iter()
        .skip(from)
        .take(size)
        .map(|e| (*e).clone())
        .collect();
    let mut document = json!({"data": page, "links": links(&base(&headers), "/api/events", &query, from, size, matching.len())});
    if query
        .get("include")
        .is_some_and(|i| i.split(',').any(|i| i == "profile"))
    {
        let mut included: Vec<Json> = Vec::new();
        for event in &page {
            let id = &event["relationships"]["profile"]["data"]["id"];
            if let Some(p) = holds.profiles.iter().find(|p| &p["id"] == id)
                && !included.iter().any(|i| i["id"] == p["id"])
            {
                included.push(json!({"type": "profile", "id": p["id"], "attributes": {
                    "email": p["attributes"]["email"], "phone_number": p["attributes"]["phone_number"],
                    "external_id": p["attributes"]["external_id"]}, "links": {"self": "x"}}));
            }
        }
        document["included"] = json!(included);
    }
    answer(StatusCode::OK, document)
}

async fn profiles(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Answer {
    let delay = {
        let mut holds = shared.lock().unwrap();
        holds.in_flight += 1;
        holds.most_in_flight = holds.most_in_flight.max(holds.in_flight);
        holds.profile_delay
    };
    tokio::time::sleep(delay).await;
    let answer = profiles_now(&shared, &headers, &query);
    shared.lock().unwrap().in_flight -= 1;
    answer
}

fn profiles_now(shared: &Shared, headers: &HeaderMap, query: &HashMap<String, String>) -> Answer {
    let mut holds = shared.lock().unwrap();
    if let Some(refused) = admit(&mut holds, headers, "GET", "/api/profiles", query, None) {
        return refused;
    }
    if holds.profiles_down {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "error",
            "Service unavailable.",
        );
    }
    let filter = query.get("filter").cloned().unwrap_or_default();
    let (field, list) = match (
        filter.strip_prefix("any(email,"),
        filter.strip_prefix("any(phone_number,"),
    ) {
        (Some(list), _) => ("email", list),
        (_, Some(list)) => ("phone_number", list),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid",
                "Invalid filter provided.",
            );
        }
    };
    let values: Vec<String> = serde_json::from_str(list.strip_suffix(')').unwrap_or(list)).unwrap();
    if values.len() > 100 {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid",
            "Too many values in any().",
        );
    }
    let size: usize = query
        .get("page[size]")
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    if size > 100 {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid",
            "page[size] must be an integer from 1 to 100.",
        );
    }
    let subscriptions = query
        .get("additional-fields[profile]")
        .is_some_and(|f| f == "subscriptions");
    let matching: Vec<Json> = holds
        .profiles
        .iter()
        .filter(|p| {
            p["attributes"][field]
                .as_str()
                .is_some_and(|v| values.iter().any(|w| w.eq_ignore_ascii_case(v)))
        })
        .map(|p| {
            let mut p = p.clone();
            if !subscriptions {
                p["attributes"]
                    .as_object_mut()
                    .unwrap()
                    .remove("subscriptions");
            }
            p
        })
        .collect();
    let from = offset(query);
    let page: Vec<Json> = matching.iter().skip(from).take(size).cloned().collect();
    answer(
        StatusCode::OK,
        json!({"data": page, "links": links(&base(headers), "/api/profiles", query, from, size, matching.len())}),
    )
}

/// `POST /api/metric-aggregates`: daily `sum_value` and `count` by `$value_currency`, in UTC
/// (the test's timezone).
async fn aggregates(
    State(holds): State<Shared>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Json>,
) -> Answer {
    let mut holds = holds.lock().unwrap();
    if let Some(refused) = admit(
        &mut holds,
        &headers,
        "POST",
        "/api/metric-aggregates",
        &HashMap::new(),
        Some(body.clone()),
    ) {
        return refused;
    }
    let attributes = &body["data"]["attributes"];
    let filters: Vec<String> =
        serde_json::from_value(attributes["filter"].clone()).unwrap_or_default();
    let bound = |head: &str| {
        filters
            .iter()
            .find_map(|f| term(f, head))
            .map(|t| millis(&format!("{t}Z")))
    };
    let (Some(since), Some(until)) = (
        bound("greater-or-equal(datetime,"),
        bound("less-than(datetime,"),
    ) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid",
            "A time range is required.",
        );
    };
    let day = |at: i64| {
        chrono::DateTime::from_timestamp_millis(at)
            .unwrap()
            .date_naive()
    };
    let mut dates = Vec::new();
    let mut d = day(since);
    while d <= day(until - 1) {
        dates.push(d);
        d = d.succ_opt().unwrap();
    }
    let mut rows: BTreeMap<String, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for event in &holds.events {
        if event["relationships"]["metric"]["data"]["id"] != attributes["metric_id"] {
            continue;
        }
        let at = millis(event["attributes"]["datetime"].as_str().unwrap());
        if at < since || at >= until {
            continue;
        }
        let properties = &event["attributes"]["event_properties"];
        let currency = properties["$value_currency"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let row = rows
            .entry(currency)
            .or_insert_with(|| (vec![0.0; dates.len()], vec![0.0; dates.len()]));
        let index = dates.iter().position(|d| *d == day(at)).unwrap();
        row.0[index] += properties["$value"].as_f64().unwrap_or(0.0);
        row.1[index] += 1.0;
    }
    answer(
        StatusCode::OK,
        json!({"data": {"type": "metric-aggregate", "id": "agg", "attributes": {
            "dates": dates.iter().map(|d| format!("{d}T00:00:00+00:00")).collect::<Vec<_>>(),
            "data": rows.into_iter().map(|(currency, (sums, counts))| json!({
                "dimensions": [currency], "measurements": {"sum_value": sums, "count": counts}})).collect::<Vec<_>>()},
            "links": {"self": "x"}}}),
    )
}

// ---- what this Klaviyo holds, from what the Klaviyo stand-in accepted -----------------------

fn metric(id: &str, name: &str, integration: &str, flows: &[&str]) -> Json {
    json!({"type": "metric", "id": id, "attributes": {"name": name, "created": "2026-01-01T00:00:00+00:00",
        "updated": "2026-01-01T00:00:00+00:00",
        "integration": {"object": "integration", "id": format!("int-{integration}"), "key": integration.to_lowercase(), "name": integration, "category": integration}},
        "relationships": {"flow-triggers": {"data": flows.iter().map(|f| json!({"type": "flow", "id": f})).collect::<Vec<_>>()}},
        "links": {"self": "x"}})
}

/// Every event, profile and subscription the stand-in accepted, as the read endpoints list
/// them; a live flow triggered by Placed Order.
fn holding(accepted: &marketsync::standin::Accepted) -> Holds {
    let mut holds = Holds {
        metric_page: 200,
        ..Holds::default()
    };
    let mut names: Vec<&str> = accepted.events.iter().map(|e| e.metric.as_str()).collect();
    names.sort();
    names.dedup();
    for (i, name) in names.iter().enumerate() {
        let flows: &[&str] = if *name == "Placed Order" {
            &["FLOW1"]
        } else {
            &[]
        };
        holds
            .metrics
            .push(metric(&format!("M{i}"), name, "API", flows));
    }
    holds.flows.push(json!({"type": "flow", "id": "FLOW1", "attributes": {"name": "Post-purchase", "status": "live", "archived": false, "trigger_type": "Metric"}, "links": {"self": "x"}}));
    for event in &accepted.events {
        let metric = names.iter().position(|n| *n == event.metric).unwrap();
        let attributes = event.attributes();
        let mut properties = attributes["properties"].clone();
        properties["$value"] = attributes["value"].clone();
        properties["$value_currency"] = attributes["value_currency"].clone();
        let datetime = event.datetime.clone().unwrap();
        holds.events.push(json!({"type": "event", "id": event.id, "attributes": {
            "timestamp": millis(&datetime) / 1000, "event_properties": properties, "datetime": datetime, "uuid": event.id},
            "relationships": {"profile": {"data": {"type": "profile", "id": event.profile_id}}, "metric": {"data": {"type": "metric", "id": format!("M{metric}")}}},
            "links": {"self": "x"}}));
    }
    for profile in &accepted.profiles {
        let email = profile.attribute("email").and_then(Json::as_str);
        let subscription = accepted.subscriptions.iter().rfind(|s| {
            s.email
                .as_deref()
                .zip(email)
                .is_some_and(|(a, b)| a.eq_ignore_ascii_case(b))
        });
        let marketing = match subscription {
            Some(s) => json!({"can_receive_email_marketing": true, "consent": "SUBSCRIBED",
                "consent_timestamp": s.consents["email.marketing"]["consented_at"], "last_updated": null,
                "method": "API", "method_detail": "", "custom_method_detail": s.custom_source,
                "double_optin": null, "suppression": [], "list_suppressions": []}),
            None => json!({"can_receive_email_marketing": false, "consent": "NEVER_SUBSCRIBED",
                "consent_timestamp": null, "last_updated": null, "method": null, "method_detail": null,
                "custom_method_detail": null, "double_optin": null, "suppression": [], "list_suppressions": []}),
        };
        holds
            .profiles
            .push(json!({"type": "profile", "id": profile.id, "attributes": {
            "email": email, "phone_number": profile.attribute("phone_number"), "external_id": null,
            "properties": profile.attribute("properties").cloned().unwrap_or(json!({})),
            "subscriptions": {"email": {"marketing": marketing}}}, "links": {"self": "x"}}));
    }
    holds
}

// ---- the read client ------------------------------------------------------------------------

fn event(id: usize, metric: &str, at: &str, email_profile: &str) -> Json {
    json!({"type": "event", "id": format!("E{id}"), "attributes": {"timestamp": millis(at) / 1000,
        "event_properties": {"OrderId": id.to_string(), "$value": 10.5}, "datetime": at, "uuid": format!("E{id}")},
        "relationships": {"profile": {"data": {"type": "profile", "id": email_profile}}, "metric": {"data": {"type": "metric", "id": metric}}},
        "links": {"self": "x"}})
}

fn person(n: usize) -> Json {
    json!({"type": "profile", "id": format!("P{n}"), "attributes": {"email": format!("buyer{n}@example.com"),
        "phone_number": format!("+614120{n:05}"), "external_id": null, "properties": {},
        "subscriptions": {"email": {"marketing": {"can_receive_email_marketing": true, "consent": "SUBSCRIBED",
            "consent_timestamp": "2026-03-20T00:00:00+00:00", "method": "API", "custom_method_detail": "Marketplacer checkout",
            "suppression": [], "list_suppressions": []}}}}, "links": {"self": "x"}})
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reader_pages_batches_and_reads_the_documented_shapes() {
    let klaviyo = Klaviyo::start().await;
    {
        let mut holds = klaviyo.holds();
        holds.metric_page = 2;
        holds.metrics = vec![
            metric("PO", "Placed Order", "API", &["F1", "F2"]),
            metric("FO", "Fulfilled Order", "API", &[]),
            metric("XO", "Placed Order", "Shopify", &[]),
        ];
        holds.flows = vec![
            json!({"type": "flow", "id": "F1", "attributes": {"name": "Post-purchase", "status": "draft", "archived": false}, "links": {"self": "x"}}),
            json!({"type": "flow", "id": "F2", "attributes": {"name": "Thanks", "status": "live", "archived": false}, "links": {"self": "x"}}),
        ];
        for n in 0..450 {
            let at = format!("2026-03-20T{:02}:{:02}:00+00:00", n / 60 % 24, n % 60);
            holds
                .events
                .push(event(n, if n % 3 == 0 { "FO" } else { "PO" }, &at, "P1"));
        }
        holds
            .events
            .push(event(999, "PO", "2026-03-21T00:00:00+00:00", "P1"));
        holds.profiles = (0..250).map(person).collect();
    }
    let reader = klaviyo.reader(ReadOptions::default());
    let metrics = reader.metrics().await.unwrap();
    assert_eq!(metrics.len(), 3, "both pages");
    assert!(metrics[0].flow_live() && !metrics[1].flow_live());
    assert!(metrics[0].made_by_api() && !metrics[2].made_by_api());

    let day = (
        chrono::DateTime::parse_from_rfc3339("2026-03-20T00:00:00Z")
            .unwrap()
            .to_utc(),
        chrono::DateTime::parse_from_rfc3339("2026-03-21T00:00:00Z")
            .unwrap()
            .to_utc(),
    );
    let events = reader.events("PO", day).await.unwrap();
    assert_eq!(events.len(), 300, "the day's, not the next day's");
    assert_eq!(
        events[0].email.as_deref(),
        Some("buyer1@example.com"),
        "from included"
    );
    assert_eq!(events[0].value(), Some(10.5));
    assert!(events.windows(2).all(|w| w[0].datetime <= w[1].datetime));

    // The three batches are in flight at once, and come back in order.
    klaviyo.holds().profile_delay = Duration::from_millis(400);
    let emails: Vec<String> = (0..250).map(|n| format!("buyer{n}@example.com")).collect();
    let started = Instant::now();
    let profiles = reader.profiles("email", &emails).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(1100),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(klaviyo.holds().most_in_flight, 3);
    assert_eq!(profiles.len(), 250);
    assert!(
        profiles
            .iter()
            .enumerate()
            .all(|(n, p)| p.id == format!("P{n}"))
    );
    let marketing = profiles[0].email_marketing.as_ref().unwrap();
    assert_eq!(
        marketing.custom_method_detail.as_deref(),
        Some("Marketplacer checkout")
    );

    let totals = reader
        .daily_totals("PO", day, chrono_tz::UTC)
        .await
        .unwrap();
    assert_eq!(totals.len(), 1);
    assert_eq!(totals[0].day, "2026-03-20");
    assert_eq!(totals[0].count, 300);

    let asked = klaviyo.holds().asked.clone();
    let of = |path: &str| {
        asked
            .iter()
            .filter(|(_, p, _)| p.starts_with(path))
            .collect::<Vec<_>>()
    };
    assert_eq!(of("/api/metrics").len(), 2);
    assert!(of("/api/metrics")[0].1.contains("include=flow-triggers"));
    let event_reads = of("/api/events");
    assert_eq!(event_reads.len(), 2, "300 events at 200 a page");
    let first = &event_reads[0].1;
    for part in [
        "page%5Bsize%5D=200",
        "include=profile",
        "sort=datetime",
        "greater-or-equal%28datetime%2C2026-03-20T00%3A00%3A00%2B00%3A00%29",
    ] {
        assert!(first.contains(part), "{part} in {first}");
    }
    let profile_reads = of("/api/profiles");
    assert_eq!(profile_reads.len(), 3, "250 emails in batches of 100");
    assert!(
        profile_reads
            .iter()
            .all(|(_, p, _)| p.contains("additional-fields%5Bprofile%5D=subscriptions"))
    );
    let body = of("/api/metric-aggregates")[0].2.clone().unwrap();
    let attributes = &body["data"]["attributes"];
    assert_eq!(body["data"]["type"], "metric-aggregate");
    assert_eq!(attributes["interval"], "day");
    assert_eq!(attributes["timezone"], "UTC");
    assert_eq!(attributes["by"], json!(["$value_currency"]));
    assert_eq!(
        attributes["filter"],
        json!([
            "greater-or-equal(datetime,2026-03-20T00:00:00)",
            "less-than(datetime,2026-03-21T00:00:00)"
        ])
    );

    let budgets = reader.budgets();
    let requests: BTreeMap<&str, u64> = budgets
        .iter()
        .map(|b| (b.endpoint.as_str(), b.requests))
        .collect();
    assert_eq!(
        requests,
        BTreeMap::from([
            ("GET /api/events", 2),
            ("GET /api/metrics", 2),
            ("GET /api/profiles", 3),
            ("POST /api/metric-aggregates", 1)
        ])
    );
    assert_eq!(
        budgets
            .iter()
            .find(|b| b.endpoint == "POST /api/metric-aggregates")
            .unwrap()
            .per_minute,
        60
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_429_is_waited_out_and_counted_and_the_budget_stops_a_runaway_read() {
    let klaviyo = Klaviyo::start().await;
    klaviyo.holds().metrics = vec![metric("PO", "Placed Order", "API", &[])];
    klaviyo.holds().throttle = 1;
    let reader = klaviyo.reader(ReadOptions::default());
    let started = Instant::now();
    assert_eq!(reader.metrics().await.unwrap().len(), 1);
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "Retry-After: 1 honoured"
    );
    let budget = &reader.budgets()[0];
    assert_eq!(
        (budget.endpoint.as_str(), budget.requests),
        ("GET /api/metrics", 2)
    );
    assert!(budget.waited_ms >= 900, "{budget:?}");

    let reader = klaviyo.reader(ReadOptions {
        budget: 2,
        ..ReadOptions::default()
    });
    reader.metrics().await.unwrap();
    reader.metrics().await.unwrap();
    let spent = reader.metrics().await.unwrap_err();
    assert!(
        matches!(spent, ReadError::BudgetSpent { budget: 2, .. }),
        "{spent}"
    );
    assert!(spent.to_string().contains("read_budget"), "{spent}");
    assert_eq!(
        klaviyo.holds().asked.len(),
        4,
        "nothing asked past the budget"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_endpoint_is_paced_by_its_own_limit() {
    let klaviyo = Klaviyo::start().await;
    klaviyo.holds().metrics = vec![metric("PO", "Placed Order", "API", &[])];
    // Metrics at 2 a second; events unlimited in practice.
    let reader = klaviyo.reader(ReadOptions {
        limits: HashMap::from([(ReadEndpoint::Metrics, Limit::per_second_and_minute(2, 100))]),
        ..ReadOptions::default()
    });
    let started = Instant::now();
    for _ in 0..5 {
        reader.metrics().await.unwrap();
    }
    let metrics_took = started.elapsed();
    assert!(
        metrics_took >= Duration::from_secs(2),
        "5 at 2/s: {metrics_took:?}"
    );
    let started = Instant::now();
    let day = (
        chrono::Utc::now() - chrono::Duration::days(1),
        chrono::Utc::now(),
    );
    for _ in 0..5 {
        reader.events("PO", day).await.unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "events are not held by metrics' limit"
    );
    let waited = reader
        .budgets()
        .iter()
        .find(|b| b.endpoint == "GET /api/metrics")
        .unwrap()
        .waited_ms;
    assert!(waited >= 1500, "{waited}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_key_and_the_people_in_a_query_never_reach_an_error() {
    let klaviyo = Klaviyo::start().await;
    let reader = klaviyo.reader(ReadOptions::default());
    let err = reader
        .profiles("email", &["echo@example.com".to_owned()])
        .await
        .unwrap_err()
        .to_string();
    assert!(!err.contains(KEY), "{err}");
    assert!(err.contains("***"), "{err}");
    let wrong = Reader::new(
        Client::new(
            &klaviyo.url,
            ApiKey::new("pk_wrong"),
            marketsync::sink::REVISION,
            Duration::from_secs(5),
        ),
        ReadOptions::default(),
    );
    let err = wrong.metrics().await.unwrap_err();
    assert!(
        matches!(err, ReadError::KeyRefused { status: 401, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("metrics:read"), "{err}");
    // A Klaviyo that does not answer: the reason names the endpoint, not the person asked for.
    let gone = Reader::new(
        Client::new(
            "http://127.0.0.1:9",
            ApiKey::new(KEY),
            marketsync::sink::REVISION,
            Duration::from_secs(1),
        ),
        ReadOptions {
            max_attempts: 2,
            time_scale: 100.0,
            ..ReadOptions::default()
        },
    );
    let err = gone
        .profiles("email", &["zoe@example.com".to_owned()])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("GET /api/profiles:"), "{err}");
    assert!(!err.contains("zoe"), "{err}");
}

// ---- a whole reconciliation -----------------------------------------------------------------

fn examples() -> Data {
    let mut data = Data::new();
    for name in [
        "orders.ndjson",
        "shipment.json",
        "refund.json",
        "cancellation.json",
        "refund-pending.json",
    ] {
        let text = std::fs::read_to_string(common::repo("examples").join(name)).unwrap();
        assert!(data.load_text(name, &text).problems.is_empty());
    }
    data
}

fn march() -> Ask {
    let at = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap().to_utc();
    Ask {
        since: Some(at("2026-03-01T00:00:00Z")),
        until: Some(at("2026-04-01T00:00:00Z")),
        length: chrono::Duration::hours(24),
        length_asked: false,
        settle: chrono::Duration::zero(),
    }
}

struct Day {
    engine: Arc<marketsync::engine::Engine>,
    store: Arc<Mutex<Store>>,
    marketplacer: mp::StandIn,
    sink: marketsync::standin::StandIn,
    klaviyo: Klaviyo,
}

impl Day {
    /// The examples' March, received and sent: every request is in the ledger, and the
    /// Klaviyo stand-in holds them.
    async fn synced() -> Day {
        let day = Day {
            engine: Arc::new(common::engine()),
            store: Arc::new(Mutex::new(Store::in_memory().unwrap())),
            marketplacer: mp::StandIn::start(mp::Config {
                data: examples(),
                ..mp::Config::default()
            })
            .await
            .unwrap(),
            sink: marketsync::standin::StandIn::start(marketsync::standin::Config::default())
                .await
                .unwrap(),
            klaviyo: Klaviyo::start().await,
        };
        // An empty ledger: the sweep queues the whole month, and the sender sends it.
        let report = day.reconcile(false, true).await;
        assert!(report.findings.missing_total() > 0);
        day.send().await;
        *day.klaviyo.holds() = holding(&day.sink.accepted());
        day
    }

    async fn send(&self) {
        let mut config = SinkConfig::new(
            &self.sink.url(),
            ApiKey::new(marketsync::standin::DEFAULT_API_KEY),
        );
        config.hold = Duration::from_secs(1);
        marketsync::sync::run(
            Arc::clone(&self.engine),
            Arc::clone(&self.store),
            Vec::new(),
            1,
            config,
            Box::new(std::io::sink()),
        )
        .await
        .unwrap();
    }

    fn reconciler(&self, read: bool) -> Reconciler {
        let client = Marketplacer::new(
            &self.marketplacer.url(),
            ApiKey::new(mp::DEFAULT_API_KEY),
            Options {
                rate_limit: 750,
                rate_window: Duration::from_secs(10),
                retry_wait: Duration::from_millis(200),
                max_attempts: 2,
                timeout: Duration::from_secs(10),
            },
        )
        .unwrap();
        let reconciler = Reconciler::new(
            Arc::clone(&self.engine),
            Arc::clone(&self.store),
            Arc::new(client),
            500,
        )
        .unwrap();
        if !read {
            return reconciler;
        }
        reconciler.reading_klaviyo(ReadBackConfig {
            client: self.klaviyo.client(),
            options: ReadOptions {
                max_attempts: 2,
                time_scale: 50.0,
                ..ReadOptions::default()
            },
        })
    }

    async fn try_reconcile(
        &self,
        read: bool,
        repair: bool,
    ) -> Result<Report, marketsync::reconcile::ReconcileError> {
        self.reconciler(read)
            .run(
                &RunOptions {
                    ask: march(),
                    repair,
                },
                chrono::Utc::now(),
                &mut |_| {},
            )
            .await
    }

    async fn reconcile(&self, read: bool, repair: bool) -> Report {
        self.try_reconcile(read, repair).await.unwrap()
    }

    /// Removes the event with this key from what Klaviyo holds.
    fn delete_event(&self, key: &str) {
        self.klaviyo
            .holds()
            .events
            .retain(|e| e["attributes"]["event_properties"]["MarketsyncKey"] != key);
    }
}

fn classes(read: &ReadBack) -> Vec<(Class, String)> {
    read.discrepancies
        .iter()
        .map(|d| (d.class, d.key.clone()))
        .collect()
}

/// The read-back as a later run would give it, leaving out what this process spent on it.
fn facts(read: &ReadBack) -> ReadBack {
    ReadBack {
        reads: vec![],
        elapsed_ms: 0,
        ..read.clone()
    }
}

// A clean sync read back, every class planted, repaired and left: tests/reconcile_week.rs, on
// the Klaviyo stand-in itself. This Klaviyo stays for what the stand-in cannot do: fail one
// read endpoint alone (below: a run stopped between its reads), count reads in flight, and
// page metrics as small as a test needs.

#[tokio::test(flavor = "multi_thread")]
async fn a_run_stopped_while_reading_klaviyo_resumes_there_and_ends_as_an_uninterrupted_one() {
    let day = Day::synced().await;
    day.delete_event("petmarket:placed-order:5001");
    let whole = day.reconcile(true, false).await;
    assert!(!whole.resumed);
    day.klaviyo.holds().profiles_down = true;
    let stopped = day.try_reconcile(true, false).await.unwrap_err();
    assert!(
        stopped
            .to_string()
            .starts_with("reading Klaviyo back: GET /api/profiles:"),
        "{stopped}"
    );
    let checkpoint = day
        .store
        .lock()
        .unwrap()
        .open_reconcile_run(&format!("{}/graphql report-only", day.marketplacer.url()))
        .unwrap()
        .expect("the checkpoint is kept");
    assert_eq!(checkpoint.step, "klaviyo");
    day.klaviyo.holds().profiles_down = false;
    let marketplacer_before = day.marketplacer.stats().requests;
    let resumed = day.reconcile(true, false).await;
    assert!(resumed.resumed);
    assert_eq!(
        day.marketplacer.stats().requests,
        marketplacer_before,
        "the sweep is not read again"
    );
    assert_eq!(
        facts(resumed.read_back.as_ref().unwrap()),
        facts(whole.read_back.as_ref().unwrap())
    );
    assert_eq!(
        classes(resumed.read_back.as_ref().unwrap()),
        [(
            Class::MissingPlacedOrder,
            "missing-placed-order:petmarket:5001".to_owned()
        )]
    );
}
