//! The Klaviyo stand-in, driven over HTTP by reqwest as marketsync's sender will drive it: one
//! test per behaviour. Loopback only; seeded faults; time scaled where a window would be slow.

use marketsync::klaviyo::{Endpoint, Schemas};
use marketsync::standin::{Config, Faults, ImportErrors, Limit, Scope, StandIn};
use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value as Json, json};
use std::time::Duration;

const KEY: &str = "pk_test_full";
const READ_ONLY_KEY: &str = "pk_test_read_only";
const REVISION: &str = "2026-07-15";

fn config() -> Config {
    Config {
        api_keys: vec![
            (KEY.to_string(), Scope::Full),
            (READ_ONLY_KEY.to_string(), Scope::ReadOnly),
        ],
        ..Config::default()
    }
}

/// A started stand-in and a client for it.
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

    /// A request with nothing but the URL.
    fn bare(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.standin.url()))
    }

    /// A request with the key and revision headers.
    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.bare(method, path)
            .header("Authorization", format!("Klaviyo-API-Key {KEY}"))
            .header("revision", REVISION)
    }

    async fn post(&self, endpoint: Endpoint, body: &Json) -> Response {
        self.request(Method::POST, endpoint.path())
            .header("content-type", "application/vnd.api+json")
            .body(body.to_string())
            .send()
            .await
            .expect("an answer")
    }

    async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path)
            .send()
            .await
            .expect("an answer")
    }
}

fn with_limit(endpoint: Endpoint, burst_per_second: u32, steady_per_minute: u32) -> Config {
    let mut config = config();
    config.limits.insert(
        endpoint,
        Limit {
            burst_per_second,
            steady_per_minute,
        },
    );
    config
}

fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn error_list(response: Response) -> Vec<Json> {
    assert_eq!(
        header(&response, "content-type"),
        Some("application/vnd.api+json")
    );
    let body: Json = response.json().await.unwrap();
    body["errors"].as_array().expect("an errors array").clone()
}

/// Every error carries Klaviyo's fields.
fn assert_error_shape(error: &Json, status: u16, code: &str) {
    assert_eq!(error["status"], status, "{error}");
    assert_eq!(error["code"], code, "{error}");
    let id = error["id"].as_str().unwrap();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert!(error["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(error["detail"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(error["source"].is_object(), "{error}");
    assert!(
        error["links"].is_object() && error["meta"].is_object(),
        "{error}"
    );
}

fn event_with(profile: Json, metric: &str, unique_id: Option<&str>) -> Json {
    let mut attributes = json!({
        "properties": {"OrderId": "5001"},
        "time": "2026-03-13T23:15:30+00:00",
        "value": 155.3,
        "metric": {"data": {"type": "metric", "attributes": {"name": metric}}},
        "profile": {"data": {"type": "profile", "attributes": profile}},
    });
    if let Some(unique_id) = unique_id {
        attributes["unique_id"] = json!(unique_id);
    }
    json!({"data": {"type": "event", "attributes": attributes}})
}

fn event(email: &str, metric: &str, unique_id: &str) -> Json {
    event_with(json!({"email": email}), metric, Some(unique_id))
}

fn profile(attributes: Json) -> Json {
    json!({"data": {"type": "profile", "attributes": attributes}})
}

fn subscription_job(profiles: Vec<Json>) -> Json {
    json!({"data": {
        "type": "profile-subscription-bulk-create-job",
        "attributes": {
            "custom_source": "marketsync",
            "profiles": {"data": profiles.into_iter()
                .map(|attributes| json!({"type": "profile", "attributes": attributes}))
                .collect::<Vec<_>>()},
        },
        "relationships": {"list": {"data": {"type": "list", "id": "L1"}}},
    }})
}

/// One entry per (email, events), each event (metric, unique_id).
fn bulk_events(entries: &[(&str, Vec<(&str, String)>)]) -> Json {
    let data: Vec<Json> = entries
        .iter()
        .map(|(email, events)| {
            json!({"type": "event-bulk-create", "attributes": {
                "profile": {"data": {"type": "profile", "attributes": {"email": email}}},
                "events": {"data": events.iter().map(|(metric, unique_id)| json!({
                    "type": "event",
                    "attributes": {
                        "properties": {},
                        "unique_id": unique_id,
                        "metric": {"data": {"type": "metric", "attributes": {"name": metric}}},
                    },
                })).collect::<Vec<_>>()},
            }})
        })
        .collect();
    json!({"data": {"type": "event-bulk-create-job", "attributes": {"events-bulk-create": {"data": data}}}})
}

fn bulk_import(profiles: Vec<Json>) -> Json {
    json!({"data": {
        "type": "profile-bulk-import-job",
        "attributes": {"profiles": {"data": profiles.into_iter()
            .map(|attributes| json!({"type": "profile", "attributes": attributes}))
            .collect::<Vec<_>>()}},
    }})
}

#[test]
fn the_test_bodies_pass_klaviyos_schemas() {
    let schemas = Schemas::builtin();
    let checks = [
        (Endpoint::CreateEvent, event("a@b.co", "Placed Order", "u1")),
        (
            Endpoint::CreateOrUpdateProfile,
            profile(json!({"email": "a@b.co", "phone_number": null})),
        ),
        (
            Endpoint::BulkSubscribeProfiles,
            subscription_job(vec![json!({"email": "a@b.co", "subscriptions": {
                "email": {"marketing": {"consent": "SUBSCRIBED"}}}})]),
        ),
        (
            Endpoint::BulkCreateEvents,
            bulk_events(&[("a@b.co", vec![("Placed Order", "u1".into())])]),
        ),
        (
            Endpoint::BulkImportProfiles,
            bulk_import(vec![json!({"email": "a@b.co"})]),
        ),
    ];
    for (endpoint, body) in checks {
        assert_eq!(schemas.check(endpoint, &body), Ok(()), "{endpoint:?}");
    }
}

#[test]
fn default_limits_are_the_specs_or_lower() {
    let index: Json = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/klaviyo/index.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let per = |text: &str, unit: &str| -> u32 { text.strip_suffix(unit).unwrap().parse().unwrap() };
    for entry in index["endpoints"].as_array().unwrap() {
        let endpoint = Endpoint::parse(entry["path"].as_str().unwrap()).unwrap();
        let burst = per(entry["rate_limit"]["burst"].as_str().unwrap(), "/s");
        let steady = per(entry["rate_limit"]["steady"].as_str().unwrap(), "/m");
        let limit = Limit::klaviyo(endpoint);
        assert_eq!(limit.burst_per_second, burst, "{endpoint:?}");
        if endpoint == Endpoint::CreateOrUpdateProfile {
            // The spec says 750/m; the docs say 700/m; the stand-in holds to the lower.
            assert_eq!((steady, limit.steady_per_minute), (750, 700));
        } else {
            assert_eq!(limit.steady_per_minute, steady, "{endpoint:?}");
        }
    }
}

#[tokio::test]
async fn a_missing_or_unknown_key_is_401() {
    let api = Api::start(config()).await;
    let body = event("a@b.co", "Placed Order", "u1");
    let attempts = [
        None,
        Some("Klaviyo-API-Key pk_nope".to_string()),
        Some(format!("Bearer {KEY}")),
    ];
    for authorization in attempts {
        let mut request = api
            .bare(Method::POST, "/api/events")
            .header("revision", REVISION)
            .header("content-type", "application/vnd.api+json")
            .body(body.to_string());
        if let Some(authorization) = authorization {
            request = request.header("Authorization", authorization);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let errors = error_list(response).await;
        assert_eq!(errors.len(), 1);
        assert_error_shape(&errors[0], 401, "not_authenticated");
    }
    assert!(api.standin.accepted().events.is_empty());
    assert_eq!(
        api.standin
            .stats()
            .endpoint(Endpoint::CreateEvent)
            .unauthenticated,
        3
    );
}

#[tokio::test]
async fn a_read_only_key_gets_403_on_writes_and_may_read() {
    let api = Api::start(config()).await;
    let response = api
        .bare(Method::POST, "/api/profile-import")
        .header("Authorization", format!("Klaviyo-API-Key {READ_ONLY_KEY}"))
        .header("revision", REVISION)
        .json(&profile(json!({"email": "a@b.co"})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let errors = error_list(response).await;
    assert_error_shape(&errors[0], 403, "permission_denied");
    assert!(api.standin.accepted().profiles.is_empty());

    // Reading a job is allowed: the answer is about the job (404), not the key.
    let response = api
        .bare(Method::GET, "/api/profile-bulk-import-jobs/nope")
        .header("Authorization", format!("Klaviyo-API-Key {READ_ONLY_KEY}"))
        .header("revision", REVISION)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_revision_header_is_required() {
    let api = Api::start(config()).await;
    let body = event("a@b.co", "Placed Order", "u1");
    let send = |revision: Option<&'static str>| {
        let mut request = api
            .bare(Method::POST, "/api/events")
            .header("Authorization", format!("Klaviyo-API-Key {KEY}"))
            .json(&body);
        if let Some(revision) = revision {
            request = request.header("revision", revision);
        }
        request.send()
    };
    let response = send(None).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let errors = error_list(response).await;
    assert_error_shape(&errors[0], 400, "invalid");
    assert_eq!(errors[0]["source"], json!({"parameter": "revision"}));
    assert_eq!(
        send(Some("latest")).await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        send(Some("2026-13-40")).await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        send(Some("2026-07-15")).await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        send(Some("2024-10-15.pre")).await.unwrap().status(),
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn only_json_media_types_are_parsed() {
    let api = Api::start(config()).await;
    let send = |content_type: &'static str, unique_id: &str| {
        api.request(Method::POST, "/api/events")
            .header("content-type", content_type)
            .body(event("a@b.co", "Placed Order", unique_id).to_string())
            .send()
    };
    let response = send("text/plain", "u0").await.unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_error_shape(
        &error_list(response).await[0],
        415,
        "unsupported_media_type",
    );
    let ok = [
        ("application/vnd.api+json", "u1"),
        ("application/json", "u2"),
        ("application/json; charset=utf-8", "u3"),
    ];
    for (content_type, unique_id) in ok {
        let response = send(content_type, unique_id).await.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{content_type}");
    }
    assert_eq!(api.standin.accepted().events.len(), 3);
}

#[tokio::test]
async fn a_body_that_breaks_the_schema_is_400_with_one_error_per_problem() {
    let api = Api::start(config()).await;
    let mut body = event("a@b.co", "Placed Order", "u1");
    body["data"]["attributes"]["uniqueId"] = json!("u1");
    body["data"]["attributes"]["time"] = json!("yesterday");
    let response = api.post(Endpoint::CreateEvent, &body).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let errors = error_list(response).await;
    assert_eq!(errors.len(), 2, "{errors:#?}");
    for error in &errors {
        assert_error_shape(error, 400, "invalid");
    }
    let pointers: Vec<&str> = errors
        .iter()
        .map(|e| e["source"]["pointer"].as_str().unwrap())
        .collect();
    assert!(pointers.contains(&"/data/attributes"), "{pointers:?}");
    assert!(pointers.contains(&"/data/attributes/time"), "{pointers:?}");
    assert!(
        errors
            .iter()
            .any(|e| e["detail"].as_str().unwrap().contains("uniqueId"))
    );

    let response = api
        .request(Method::POST, "/api/events")
        .header("content-type", "application/json")
        .body("{\"data\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_error_shape(&error_list(response).await[0], 400, "parse_error");
    assert!(api.standin.accepted().events.is_empty());
}

#[tokio::test]
async fn the_burst_window_answers_429_with_retry_after() {
    let api = Api::start(with_limit(Endpoint::CreateEvent, 3, 100)).await;
    for i in 0..3 {
        let response = api
            .post(
                Endpoint::CreateEvent,
                &event("a@b.co", "Viewed", &format!("u{i}")),
            )
            .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        // Non-429 answers describe the steady window.
        assert_eq!(header(&response, "RateLimit-Limit"), Some("100"));
        let remaining = (100 - i - 1).to_string();
        assert_eq!(
            header(&response, "RateLimit-Remaining"),
            Some(remaining.as_str())
        );
        let reset: u64 = header(&response, "RateLimit-Reset")
            .unwrap()
            .parse()
            .unwrap();
        assert!((59..=60).contains(&reset), "{reset}");
    }
    let response = api
        .post(Endpoint::CreateEvent, &event("a@b.co", "Viewed", "u3"))
        .await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&response, "Retry-After"), Some("1"));
    // Klaviyo leaves the RateLimit-* headers off a 429.
    assert_eq!(header(&response, "RateLimit-Limit"), None);
    let errors = error_list(response).await;
    assert_error_shape(&errors[0], 429, "throttled");
    assert_eq!(errors[0]["title"], "Request was throttled.");
    assert_eq!(
        errors[0]["detail"],
        "Request was throttled. Expected available in 1 second."
    );

    let stats = api.standin.stats().endpoint(Endpoint::CreateEvent);
    assert_eq!((stats.requests, stats.accepted, stats.throttled), (4, 3, 1));
    assert_eq!(stats.max_per_second, 4);
    assert_eq!(api.standin.accepted().events.len(), 3);
}

#[tokio::test]
async fn the_steady_window_reports_scaled_seconds_and_frees_up() {
    // 120x: a minute passes in half a second.
    let config = Config {
        time_scale: 120.0,
        ..with_limit(Endpoint::CreateOrUpdateProfile, 100, 5)
    };
    let api = Api::start(config).await;
    for i in 0..5 {
        let body = profile(json!({"email": format!("p{i}@b.co")}));
        let response = api.post(Endpoint::CreateOrUpdateProfile, &body).await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let body = profile(json!({"email": "late@b.co"}));
    let response = api.post(Endpoint::CreateOrUpdateProfile, &body).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = header(&response, "Retry-After").unwrap().parse().unwrap();
    assert!(
        (40..=60).contains(&retry_after),
        "scaled seconds: {retry_after}"
    );

    tokio::time::sleep(Duration::from_secs_f64(retry_after as f64 / 120.0 + 0.02)).await;
    let response = api.post(Endpoint::CreateOrUpdateProfile, &body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let stats = api
        .standin
        .stats()
        .endpoint(Endpoint::CreateOrUpdateProfile);
    assert_eq!(
        (stats.accepted, stats.throttled, stats.max_per_minute),
        (6, 1, 6)
    );
}

#[tokio::test]
async fn every_answer_but_a_429_carries_the_rate_limit_headers() {
    let api = Api::start(with_limit(Endpoint::CreateEvent, 50, 40)).await;
    let unauthenticated = api
        .bare(Method::POST, "/api/events")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&unauthenticated, "RateLimit-Remaining"), Some("40"));
    let invalid = api.post(Endpoint::CreateEvent, &json!({"data": {}})).await;
    assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);
    // A request that fails validation still took a slot.
    assert_eq!(header(&invalid, "RateLimit-Remaining"), Some("39"));
    assert_eq!(header(&invalid, "RateLimit-Limit"), Some("40"));
}

#[tokio::test]
async fn an_event_is_202_and_a_duplicate_is_not_recorded_twice() {
    let api = Api::start(config()).await;
    let first = event("Ann@B.co", "Placed Order", "order-1");
    for _ in 0..2 {
        let response = api.post(Endpoint::CreateEvent, &first).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert_eq!(response.text().await.unwrap(), "");
    }
    // The same email in another case is the same profile.
    let same = event("ann@b.co", "Placed Order", "order-1");
    assert_eq!(
        api.post(Endpoint::CreateEvent, &same).await.status(),
        StatusCode::ACCEPTED
    );
    let others = [
        event("ann@b.co", "Placed Order", "order-2"),
        event("ann@b.co", "Ordered Product", "order-1"),
        event("bob@b.co", "Placed Order", "order-1"),
        event_with(
            json!({"phone_number": "+15005550006"}),
            "Placed Order",
            Some("order-1"),
        ),
    ];
    for body in &others {
        assert_eq!(
            api.post(Endpoint::CreateEvent, body).await.status(),
            StatusCode::ACCEPTED
        );
    }
    let accepted = api.standin.accepted();
    assert_eq!(accepted.events.len(), 5);
    let recorded = &accepted.events[0];
    assert_eq!(recorded.endpoint, Endpoint::CreateEvent);
    assert_eq!(recorded.metric, "Placed Order");
    assert_eq!(recorded.profile_key, "email:ann@b.co");
    assert_eq!(recorded.unique_id.as_deref(), Some("order-1"));
    assert_eq!(recorded.attributes()["value"], 155.3);
    assert_eq!(
        recorded.attributes()["properties"],
        json!({"OrderId": "5001"})
    );
    assert_eq!(recorded.profile()["attributes"]["email"], "Ann@B.co");
    assert_eq!(accepted.events_named("Placed Order").count(), 4);
    // Every accepted request is counted as sent, kept or not: three for order-1 at Ann.
    let kept: Vec<(u64, bool)> = accepted
        .submissions
        .iter()
        .map(|s| (s.request, s.kept))
        .collect();
    assert_eq!(
        kept,
        [
            (1, true),
            (2, false),
            (3, false),
            (4, true),
            (5, true),
            (6, true),
            (7, true)
        ]
    );
    assert_eq!(accepted.submissions_by_unique_id()["order-1"], 6);
    // The events created their profiles, as Klaviyo's do.
    assert!(accepted.profile_by_email("ann@b.co").is_some());
}

#[tokio::test]
async fn every_accepted_event_is_listed_with_the_time_it_arrived() {
    let api = Api::start(config()).await;
    let unix_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let before = unix_ms();
    let sent = [
        event("ann@b.co", "Placed Order", "order-1"),
        event("ann@b.co", "Placed Order", "order-1"),
        event("bob@b.co", "Ordered Product", "order-2:line-1"),
    ];
    for (n, body) in sent.iter().enumerate() {
        if n == 2 {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        assert_eq!(
            api.post(Endpoint::CreateEvent, body).await.status(),
            StatusCode::ACCEPTED
        );
    }
    // Refused requests have no effect, so they are not listed.
    let no_profile = event_with(json!({}), "Placed Order", Some("order-3"));
    assert_eq!(
        api.post(Endpoint::CreateEvent, &no_profile).await.status(),
        StatusCode::BAD_REQUEST
    );
    let after = unix_ms();
    // Outside Klaviyo's API: no key needed, so a script can read it with curl.
    let response = api
        .bare(Method::GET, "/standin/submissions")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "content-type"),
        Some("application/x-ndjson")
    );
    let lines: Vec<Json> = response
        .text()
        .await
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let listed: Vec<(&str, &str, bool, u64)> = lines
        .iter()
        .map(|l| {
            (
                l["metric"].as_str().unwrap(),
                l["unique_id"].as_str().unwrap(),
                l["kept"].as_bool().unwrap(),
                l["request"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("Placed Order", "order-1", true, 1),
            ("Placed Order", "order-1", false, 2),
            ("Ordered Product", "order-2:line-1", true, 3),
        ]
    );
    let times: Vec<u64> = lines
        .iter()
        .map(|l| l["accepted_at_ms"].as_u64().unwrap())
        .collect();
    assert!(
        times.iter().all(|t| (before..=after).contains(t)),
        "{times:?} not within {before}..={after}"
    );
    assert!(
        times[2] >= times[1] + 30,
        "{times:?}: the pause is not seen"
    );
}

#[tokio::test]
async fn without_unique_id_events_are_deduplicated_by_the_second() {
    let api = Api::start(config()).await;
    let at = |time: &str| {
        let mut body = event_with(json!({"email": "a@b.co"}), "Viewed", None);
        body["data"]["attributes"]["time"] = json!(time);
        body
    };
    for time in [
        "2026-03-13T23:15:30.100+00:00",
        "2026-03-13T23:15:30.900+00:00",
        "2026-03-13T23:15:31+00:00",
    ] {
        assert_eq!(
            api.post(Endpoint::CreateEvent, &at(time)).await.status(),
            StatusCode::ACCEPTED
        );
    }
    assert_eq!(api.standin.accepted().events.len(), 2);
}

#[tokio::test]
async fn an_event_needs_a_profile_identifier_and_a_sane_time() {
    let api = Api::start(config()).await;
    let body = event_with(
        json!({"first_name": "Ann", "email": null}),
        "Viewed",
        Some("u1"),
    );
    let response = api.post(Endpoint::CreateEvent, &body).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let errors = error_list(response).await;
    assert_error_shape(&errors[0], 400, "invalid");
    assert_eq!(
        errors[0]["source"]["pointer"],
        "/data/attributes/profile/data/attributes"
    );

    let mut body = event("a@b.co", "Viewed", "u2");
    body["data"]["attributes"]["time"] = json!("1989-12-31T23:59:59+00:00");
    let response = api.post(Endpoint::CreateEvent, &body).await;
    assert_eq!(
        error_list(response).await[0]["source"]["pointer"],
        "/data/attributes/time"
    );

    let body = event_with(json!({"phone_number": "0212345678"}), "Viewed", Some("u3"));
    let response = api.post(Endpoint::CreateEvent, &body).await;
    assert_eq!(
        error_list(response).await[0]["source"]["pointer"],
        "/data/attributes/profile/data/attributes/phone_number"
    );
    assert!(api.standin.accepted().events.is_empty());
}

#[tokio::test]
async fn profile_import_creates_with_201_and_updates_with_200() {
    let api = Api::start(config()).await;
    let response = api
        .post(
            Endpoint::CreateOrUpdateProfile,
            &profile(
                json!({"email": "ann@b.co", "first_name": "Ann", "properties": {"tier": "gold"}}),
            ),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Json = response.json().await.unwrap();
    assert_eq!(created["data"]["type"], "profile");
    let id = created["data"]["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 26);
    let attributes = &created["data"]["attributes"];
    assert_eq!(attributes["email"], "ann@b.co");
    assert_eq!(attributes["first_name"], "Ann");
    assert_eq!(attributes["last_name"], Json::Null);
    assert_eq!(attributes["properties"], json!({"tier": "gold"}));

    let response = api
        .post(
            Endpoint::CreateOrUpdateProfile,
            &profile(
                json!({"email": "ANN@b.co", "last_name": "Lee", "properties": {"since": 2020}}),
            ),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let updated: Json = response.json().await.unwrap();
    assert_eq!(updated["data"]["id"], id.as_str());
    assert_eq!(updated["data"]["attributes"]["first_name"], "Ann");
    assert_eq!(updated["data"]["attributes"]["last_name"], "Lee");

    // Matched by phone when there is no email; the email is then added to that profile.
    let phone = profile(json!({"phone_number": "+15005550006"}));
    assert_eq!(
        api.post(Endpoint::CreateOrUpdateProfile, &phone)
            .await
            .status(),
        StatusCode::CREATED
    );
    let both = profile(json!({"phone_number": "+15005550006", "email": "cy@b.co"}));
    assert_eq!(
        api.post(Endpoint::CreateOrUpdateProfile, &both)
            .await
            .status(),
        StatusCode::OK
    );

    let accepted = api.standin.accepted();
    assert_eq!(accepted.profiles.len(), 2);
    let ann = accepted.profile_by_email("ann@b.co").unwrap();
    assert_eq!(ann.id, id);
    assert_eq!(
        ann.attributes["properties"],
        json!({"tier": "gold", "since": 2020})
    );
    assert_eq!(
        accepted.profile_by_email("cy@b.co").unwrap().attributes["phone_number"],
        "+15005550006"
    );
}

#[tokio::test]
async fn identifiers_of_two_profiles_are_409_duplicate_profile() {
    let api = Api::start(config()).await;
    api.post(
        Endpoint::CreateOrUpdateProfile,
        &profile(json!({"email": "ann@b.co"})),
    )
    .await;
    let response = api
        .post(
            Endpoint::CreateOrUpdateProfile,
            &profile(json!({"phone_number": "+15005550006"})),
        )
        .await;
    let other: Json = response.json().await.unwrap();
    let other_id = other["data"]["id"].as_str().unwrap();

    let body =
        profile(json!({"email": "ann@b.co", "phone_number": "+15005550006", "first_name": "Ann"}));
    let response = api.post(Endpoint::CreateOrUpdateProfile, &body).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let errors = error_list(response).await;
    assert_error_shape(&errors[0], 409, "duplicate_profile");
    assert_eq!(errors[0]["meta"]["duplicate_profile_id"], other_id);
    assert_eq!(errors[0]["source"]["pointer"], "/data/attributes");
    let accepted = api.standin.accepted();
    assert_eq!(
        accepted
            .profile_by_email("ann@b.co")
            .unwrap()
            .attribute("first_name"),
        None
    );
    assert_eq!(
        api.standin
            .stats()
            .endpoint(Endpoint::CreateOrUpdateProfile)
            .conflict,
        1
    );
}

#[tokio::test]
async fn a_phone_number_not_in_e164_is_400_at_its_pointer() {
    let api = Api::start(config()).await;
    let response = api
        .post(
            Endpoint::CreateOrUpdateProfile,
            &profile(json!({"email": "ann@b.co", "phone_number": "021 234 5678"})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let errors = error_list(response).await;
    assert_eq!(errors.len(), 1);
    assert_error_shape(&errors[0], 400, "invalid");
    assert_eq!(
        errors[0]["source"]["pointer"],
        "/data/attributes/phone_number"
    );
    assert!(api.standin.accepted().profiles.is_empty());
}

#[tokio::test]
async fn null_clears_a_field_and_leaving_it_out_keeps_it() {
    let api = Api::start(config()).await;
    let first = profile(json!({
        "email": "ann@b.co", "first_name": "Ann", "last_name": "Lee",
        "location": {"city": "Auckland", "country": "NZ"},
    }));
    api.post(Endpoint::CreateOrUpdateProfile, &first).await;
    let second =
        profile(json!({"email": "ann@b.co", "first_name": null, "location": {"city": null}}));
    let response = api.post(Endpoint::CreateOrUpdateProfile, &second).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Json = response.json().await.unwrap();
    assert_eq!(body["data"]["attributes"]["first_name"], Json::Null);
    let accepted = api.standin.accepted();
    let ann = accepted.profile_by_email("ann@b.co").unwrap();
    assert_eq!(ann.attribute("first_name"), None);
    assert_eq!(ann.attributes["last_name"], "Lee");
    assert_eq!(ann.attributes["location"], json!({"country": "NZ"}));
}

#[tokio::test]
async fn a_subscription_job_records_consent_per_channel() {
    let api = Api::start(config()).await;
    let body = subscription_job(vec![
        json!({"email": "ann@b.co", "subscriptions": {
            "email": {"marketing": {"consent": "SUBSCRIBED", "consented_at": "2026-01-02T03:04:05+00:00"}}}}),
        json!({"email": "bob@b.co", "phone_number": "+15005550006", "subscriptions": {
            "email": {"marketing": {"consent": "SUBSCRIBED"}},
            "sms": {"marketing": {"consent": "SUBSCRIBED"}, "transactional": {"consent": "SUBSCRIBED"}}}}),
    ]);
    let response = api.post(Endpoint::BulkSubscribeProfiles, &body).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(response.text().await.unwrap(), "");
    let accepted = api.standin.accepted();
    let [ann, bob] = accepted.subscriptions.as_slice() else {
        panic!("{:#?}", accepted.subscriptions);
    };
    assert_eq!(ann.email.as_deref(), Some("ann@b.co"));
    assert_eq!(ann.consents.keys().collect::<Vec<_>>(), ["email.marketing"]);
    assert_eq!(
        ann.consents["email.marketing"]["consented_at"],
        "2026-01-02T03:04:05+00:00"
    );
    assert_eq!(ann.list_id.as_deref(), Some("L1"));
    assert_eq!(ann.custom_source.as_deref(), Some("marketsync"));
    assert_eq!(
        bob.consents.keys().collect::<Vec<_>>(),
        ["email.marketing", "sms.marketing", "sms.transactional"]
    );
    assert_eq!(accepted.bulk_jobs.len(), 1);
    assert_eq!(accepted.bulk_jobs[0].body(), body);

    // SMS needs a phone number; a historical import needs consented_at.
    let mut bad = subscription_job(vec![json!({"email": "cy@b.co", "subscriptions": {
        "sms": {"marketing": {"consent": "SUBSCRIBED"}}}})]);
    bad["data"]["attributes"]["historical_import"] = json!(true);
    let response = api.post(Endpoint::BulkSubscribeProfiles, &bad).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let pointers: Vec<Json> = error_list(response)
        .await
        .iter()
        .map(|e| e["source"]["pointer"].clone())
        .collect();
    assert_eq!(
        pointers,
        [
            "/data/attributes/profiles/data/0/attributes/phone_number",
            "/data/attributes/profiles/data/0/attributes/subscriptions/sms/marketing/consented_at",
        ]
    );
    assert_eq!(api.standin.accepted().subscriptions.len(), 2);
}

#[tokio::test]
async fn a_bulk_event_job_is_deduplicated_and_limited() {
    let api = Api::start(config()).await;
    api.post(
        Endpoint::CreateEvent,
        &event("ann@b.co", "Placed Order", "o1"),
    )
    .await;
    let job = bulk_events(&[
        (
            "ann@b.co",
            vec![("Placed Order", "o1".into()), ("Placed Order", "o2".into())],
        ),
        ("bob@b.co", vec![("Placed Order", "o1".into())]),
    ]);
    let response = api.post(Endpoint::BulkCreateEvents, &job).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let accepted = api.standin.accepted();
    // o1 for ann was there already.
    let recorded: Vec<(&str, &str)> = accepted
        .events
        .iter()
        .map(|e| (e.profile_key.as_str(), e.unique_id.as_deref().unwrap()))
        .collect();
    assert_eq!(
        recorded,
        [
            ("email:ann@b.co", "o1"),
            ("email:ann@b.co", "o2"),
            ("email:bob@b.co", "o1")
        ]
    );
    assert_eq!(accepted.events[1].endpoint, Endpoint::BulkCreateEvents);
    // The job's three events share its request number, the duplicate o1 among them.
    let submitted: Vec<(u64, Option<&str>, bool)> = accepted
        .submissions
        .iter()
        .map(|s| (s.request, s.unique_id.as_deref(), s.kept))
        .collect();
    assert_eq!(
        submitted,
        [
            (1, Some("o1"), true),
            (2, Some("o1"), false),
            (2, Some("o2"), true),
            (2, Some("o1"), true)
        ]
    );
    assert_eq!(
        accepted.events[2].profile()["attributes"]["email"],
        "bob@b.co"
    );

    // The same event twice in one job.
    let twice = bulk_events(&[
        ("cy@b.co", vec![("Placed Order", "o9".into())]),
        ("CY@b.co", vec![("Placed Order", "o9".into())]),
    ]);
    let response = api.post(Endpoint::BulkCreateEvents, &twice).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        error_list(response).await[0]["source"]["pointer"],
        "/data/attributes/events-bulk-create/data/1/attributes/events/data/0/attributes/unique_id"
    );

    // 1,001 events.
    let many: Vec<(&str, String)> = (0..1001).map(|i| ("Viewed", format!("v{i}"))).collect();
    let response = api
        .post(
            Endpoint::BulkCreateEvents,
            &bulk_events(&[("dee@b.co", many)]),
        )
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        error_list(response).await[0]["source"]["pointer"],
        "/data/attributes/events-bulk-create/data"
    );

    // Over 5 MB (in strings of under 100 KB each).
    let mut heavy = bulk_events(&[("eve@b.co", vec![("Viewed", "h1".into())])]);
    let chunk = "x".repeat(90_000);
    let properties: serde_json::Map<String, Json> =
        (0..60).map(|i| (format!("p{i}"), json!(chunk))).collect();
    heavy["data"]["attributes"]["events-bulk-create"]["data"][0]["attributes"]["events"]["data"]
        [0]["attributes"]["properties"] = Json::Object(properties);
    let response = api.post(Endpoint::BulkCreateEvents, &heavy).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(
        error_list(response).await[0]["detail"]
            .as_str()
            .unwrap()
            .contains("5 MB")
    );

    let accepted = api.standin.accepted();
    assert_eq!((accepted.events.len(), accepted.bulk_jobs.len()), (3, 1));
}

/// Polls a job until it is complete (bounded).
async fn completed_job(api: &Api, id: &str) -> Json {
    for _ in 0..100 {
        let job: Json = api
            .get(&format!("/api/profile-bulk-import-jobs/{id}"))
            .await
            .json()
            .await
            .unwrap();
        if job["data"]["attributes"]["status"] == "complete" {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("job {id} never completed");
}

#[tokio::test]
async fn a_bulk_import_job_runs_later_and_reports_its_errors() {
    // 2 scaled seconds at 10x: 200 ms.
    let config = Config {
        time_scale: 10.0,
        import_errors: ImportErrors::PayloadAndPointer,
        ..config()
    };
    let api = Api::start(config).await;
    api.post(
        Endpoint::CreateOrUpdateProfile,
        &profile(json!({"email": "ann@b.co", "first_name": "Ann"})),
    )
    .await;
    let job = bulk_import(vec![
        json!({"email": "ann@b.co", "first_name": null, "last_name": "Lee"}),
        json!({"email": "bob@b.co", "phone_number": "12345"}),
        json!({"email": "cy@b.co"}),
        json!({"email": "dee@b.co", "phone_number": "+1 500"}),
    ]);
    let response = api.post(Endpoint::BulkImportProfiles, &job).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let queued: Json = response.json().await.unwrap();
    assert_eq!(queued["data"]["type"], "profile-bulk-import-job");
    assert_eq!(queued["data"]["attributes"]["status"], "queued");
    assert_eq!(queued["data"]["attributes"]["total_count"], 4);
    let id = queued["data"]["id"].as_str().unwrap().to_string();
    // Nothing imported yet.
    assert_eq!(api.standin.accepted().profiles.len(), 1);

    let done = completed_job(&api, &id).await;
    let attributes = &done["data"]["attributes"];
    assert_eq!(
        (
            attributes["completed_count"].clone(),
            attributes["failed_count"].clone(),
            attributes["total_count"].clone()
        ),
        (json!(2), json!(2), json!(4))
    );
    assert!(attributes["completed_at"].is_string());

    let accepted = api.standin.accepted();
    let ann = accepted.profile_by_email("ann@b.co").unwrap();
    // Bulk import ignores nulls.
    assert_eq!(ann.attributes["first_name"], "Ann");
    assert_eq!(ann.attributes["last_name"], "Lee");
    assert!(accepted.profile_by_email("cy@b.co").is_some());
    assert!(accepted.profile_by_email("bob@b.co").is_none());
    assert_eq!(accepted.bulk_jobs[0].id.as_deref(), Some(id.as_str()));

    // The errors, one page at a time.
    let path = format!("/api/profile-bulk-import-jobs/{id}/import-errors");
    let first: Json = api
        .request(Method::GET, &format!("{path}?page%5Bsize%5D=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let error = &first["data"][0];
    assert_eq!(error["type"], "import-error");
    assert_eq!(error["attributes"]["code"], "invalid");
    assert_eq!(
        error["attributes"]["source"]["pointer"],
        "/data/attributes/profiles/data/1/attributes/phone_number"
    );
    assert_eq!(error["attributes"]["original_payload"]["email"], "bob@b.co");
    let next = first["links"]["next"].as_str().unwrap();
    let second: Json = api
        .client
        .get(next)
        .header("Authorization", format!("Klaviyo-API-Key {KEY}"))
        .header("revision", REVISION)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        second["data"][0]["attributes"]["source"]["pointer"],
        "/data/attributes/profiles/data/3/attributes/phone_number"
    );
    assert_eq!(second["links"]["next"], Json::Null);
}

/// The import errors of a job, each shape the spec allows: `source` always present with a
/// `pointer` (`/data` by default), `original_payload` an object or null.
#[tokio::test]
async fn import_errors_come_in_the_shapes_klaviyos_spec_documents() {
    for (shape, pointer, payload_email) in [
        (ImportErrors::default(), "/data", json!("bob@b.co")),
        (
            ImportErrors::PayloadAndPointer,
            "/data/attributes/profiles/data/1/attributes/phone_number",
            json!("bob@b.co"),
        ),
        (ImportErrors::Anonymous, "/data", Json::Null),
    ] {
        let api = Api::start(Config {
            time_scale: 10.0,
            import_errors: shape,
            ..config()
        })
        .await;
        let job = bulk_import(vec![
            json!({"email": "ann@b.co"}),
            json!({"email": "bob@b.co", "phone_number": "12345"}),
        ]);
        let queued: Json = api
            .post(Endpoint::BulkImportProfiles, &job)
            .await
            .json()
            .await
            .unwrap();
        let id = queued["data"]["id"].as_str().unwrap().to_string();
        let done = completed_job(&api, &id).await;
        assert_eq!(done["data"]["attributes"]["failed_count"], 1);
        let errors: Json = api
            .get(&format!("/api/profile-bulk-import-jobs/{id}/import-errors"))
            .await
            .json()
            .await
            .unwrap();
        let attributes = &errors["data"][0]["attributes"];
        for required in ["code", "title", "detail", "source"] {
            assert!(attributes.get(required).is_some(), "{shape:?}: {required}");
        }
        assert_eq!(attributes["source"]["pointer"], pointer, "{shape:?}");
        let payload = &attributes["original_payload"];
        assert!(payload.is_object() || payload.is_null(), "{shape:?}");
        assert_eq!(
            payload.get("email").cloned().unwrap_or(Json::Null),
            payload_email,
            "{shape:?}"
        );
    }
}

#[tokio::test]
async fn a_bulk_import_job_is_limited_and_an_unknown_job_is_404() {
    let api = Api::start(config()).await;
    let many = (0..10_001)
        .map(|i| json!({"email": format!("p{i}@b.co")}))
        .collect();
    let response = api
        .post(Endpoint::BulkImportProfiles, &bulk_import(many))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        error_list(response).await[0]["source"]["pointer"],
        "/data/attributes/profiles/data"
    );
    // Over 5 MB in all, or over 100 KB for one profile.
    let chunk = "x".repeat(90_000);
    let heavy = (0..60)
        .map(|i| json!({"email": format!("p{i}@b.co"), "properties": {"notes": chunk}}))
        .collect();
    let response = api
        .post(Endpoint::BulkImportProfiles, &bulk_import(heavy))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(
        error_list(response).await[0]["detail"]
            .as_str()
            .unwrap()
            .contains("5 MB")
    );
    let fat = json!({"email": "fat@b.co", "properties": {"a": chunk, "b": chunk}});
    let response = api
        .post(
            Endpoint::BulkImportProfiles,
            &bulk_import(vec![json!({"email": "ok@b.co"}), fat]),
        )
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        error_list(response).await[0]["source"]["pointer"],
        "/data/attributes/profiles/data/1"
    );

    let response = api.get("/api/profile-bulk-import-jobs/NOPE").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_error_shape(&error_list(response).await[0], 404, "not_found");
    assert!(api.standin.accepted().bulk_jobs.is_empty());
}

/// The statuses of `n` single events, sent one at a time.
async fn statuses(api: &Api, n: usize, tag: &str) -> Vec<u16> {
    let mut statuses = Vec::new();
    for i in 0..n {
        let response = api
            .post(
                Endpoint::CreateEvent,
                &event("a@b.co", "Viewed", &format!("{tag}{i}")),
            )
            .await;
        statuses.push(response.status().as_u16());
    }
    statuses
}

#[tokio::test]
async fn injected_5xx_are_seeded_and_reproducible() {
    let faults = Faults {
        error_5xx_rate: 0.5,
        seed: 7,
        ..Faults::none()
    };
    let api = Api::start(Config {
        faults: faults.clone(),
        ..config()
    })
    .await;
    let first = statuses(&api, 20, "a").await;
    assert!(first.contains(&503) && first.contains(&202), "{first:?}");
    api.standin.set_faults(faults);
    assert_eq!(statuses(&api, 20, "b").await, first);

    let accepted = first.iter().filter(|&&s| s == 202).count();
    assert_eq!(api.standin.accepted().events.len(), accepted * 2);
    let stats = api.standin.stats().endpoint(Endpoint::CreateEvent);
    assert_eq!(stats.server_errors as usize, 2 * (20 - accepted));

    api.standin.set_faults(Faults {
        error_5xx_rate: 1.0,
        ..Faults::none()
    });
    let response = api
        .post(Endpoint::CreateEvent, &event("a@b.co", "Viewed", "c"))
        .await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_error_shape(&error_list(response).await[0], 503, "service_unavailable");
}

#[tokio::test]
async fn an_injected_429_says_retry_after_1_and_has_no_effect() {
    let api = Api::start(Config {
        faults: Faults {
            throttle_rate: 1.0,
            ..Faults::none()
        },
        ..config()
    })
    .await;
    let response = api
        .post(Endpoint::CreateEvent, &event("a@b.co", "Viewed", "u1"))
        .await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&response, "Retry-After"), Some("1"));
    assert_error_shape(&error_list(response).await[0], 429, "throttled");
    assert!(api.standin.accepted().events.is_empty());
    let stats = api.standin.stats().endpoint(Endpoint::CreateEvent);
    assert_eq!((stats.spurious_throttled, stats.throttled), (1, 0));
}

#[tokio::test]
async fn a_slow_answer_comes_late_but_the_request_took_effect() {
    let api = Api::start(Config {
        faults: Faults {
            slow_rate: 1.0,
            slow: Duration::from_millis(400),
            ..Faults::none()
        },
        ..config()
    })
    .await;
    let impatient = Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let error = impatient
        .post(format!("{}/api/events", api.standin.url()))
        .header("Authorization", format!("Klaviyo-API-Key {KEY}"))
        .header("revision", REVISION)
        .json(&event("a@b.co", "Viewed", "u1"))
        .send()
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    assert_eq!(api.standin.accepted().events.len(), 1);

    // A patient client gets the answer.
    let started = std::time::Instant::now();
    let response = api
        .post(Endpoint::CreateEvent, &event("a@b.co", "Viewed", "u1"))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(api.standin.accepted().events.len(), 1);
}

#[tokio::test]
async fn a_dropped_connection_is_an_error_without_an_answer_or_an_effect() {
    let api = Api::start(Config {
        faults: Faults {
            drop_rate: 1.0,
            ..Faults::none()
        },
        ..config()
    })
    .await;
    let error = api
        .request(Method::POST, "/api/events")
        .json(&event("a@b.co", "Viewed", "u1"))
        .send()
        .await
        .unwrap_err();
    // hyper's "connection closed before message completed".
    assert!(
        error.is_request() && error.status().is_none() && !error.is_timeout(),
        "{error:?}"
    );
    assert!(api.standin.accepted().events.is_empty());
    assert_eq!(
        api.standin.stats().endpoint(Endpoint::CreateEvent).dropped,
        1
    );

    api.standin.set_faults(Faults::none());
    let response = api
        .post(Endpoint::CreateEvent, &event("a@b.co", "Viewed", "u1"))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn stats_count_every_request_once() {
    let api = Api::start(config()).await;
    let bodies = [
        event("a@b.co", "Viewed", "u1"),
        event("a@b.co", "Viewed", "u1"),
        json!({"data": {}}),
    ];
    for body in &bodies {
        api.post(Endpoint::CreateEvent, body).await;
    }
    api.bare(Method::POST, "/api/events").send().await.unwrap();
    let stats = api.standin.stats();
    let events = stats.endpoint(Endpoint::CreateEvent);
    assert_eq!(
        (
            events.requests,
            events.accepted,
            events.invalid,
            events.unauthenticated
        ),
        (4, 2, 1, 1)
    );
    assert_eq!((events.max_per_second, events.max_per_minute), (4, 4));
    assert_eq!(stats.endpoint(Endpoint::BulkCreateEvents).requests, 0);
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405() {
    let api = Api::start(config()).await;
    let response = api.get("/api/nope").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_error_shape(&error_list(response).await[0], 404, "not_found");
    let response = api
        .request(Method::DELETE, "/api/events")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_error_shape(&error_list(response).await[0], 405, "method_not_allowed");
    // A trailing slash is the same endpoint.
    let response = api
        .request(Method::POST, "/api/events/")
        .json(&event("a@b.co", "Viewed", "u1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let api = Api::start(config()).await;
    let url = api.standin.url();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let response = api
        .post(Endpoint::CreateEvent, &event("a@b.co", "Viewed", "u1"))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let started = std::time::Instant::now();
    api.standin.shutdown().await;
    // The client's idle pooled connection does not hold it up.
    assert!(started.elapsed() < Duration::from_secs(2));
    let fresh = Client::builder().no_proxy().build().unwrap();
    assert!(fresh.get(format!("{url}/api/events")).send().await.is_err());
}

#[tokio::test]
async fn a_bad_time_scale_is_refused() {
    let error = StandIn::start(Config {
        time_scale: 0.0,
        ..config()
    })
    .await
    .err()
    .expect("refused");
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
}

// ---- the read endpoints (GET /api/profiles, GET /api/events) ---------------------------------

/// A GET with `params` percent-encoded, as a client builds it.
async fn read(api: &Api, path: &str, params: &[(&str, &str)], key: &str) -> Response {
    let url =
        reqwest::Url::parse_with_params(&format!("{}{path}", api.standin.url()), params).unwrap();
    api.client
        .get(url)
        .header("Authorization", format!("Klaviyo-API-Key {key}"))
        .header("revision", REVISION)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn profiles_are_found_by_email_or_phone_with_their_consent_and_suppressions() {
    let api = Api::start(config()).await;
    let imported = api
        .post(
            Endpoint::CreateOrUpdateProfile,
            &profile(
                json!({"email": "Zoe@Example.com", "phone_number": "+61412345678",
                            "properties": {"Marketplacer Marketplace": "petmarket"}}),
            ),
        )
        .await;
    assert_eq!(imported.status(), StatusCode::CREATED);
    api.post(
        Endpoint::CreateOrUpdateProfile,
        &profile(json!({"email": "sam@example.com"})),
    )
    .await;
    let consent = json!({"email": "zoe@example.com", "subscriptions": {"email": {"marketing": {
        "consent": "SUBSCRIBED", "consented_at": "2026-03-13T23:15:30+00:00"}}}});
    assert_eq!(
        api.post(
            Endpoint::BulkSubscribeProfiles,
            &subscription_job(vec![consent])
        )
        .await
        .status(),
        StatusCode::ACCEPTED
    );

    // By email, case-insensitively, with the subscriptions asked for; a read-only key reads.
    let response = read(
        &api,
        "/api/profiles",
        &[
            ("filter", r#"equals(email,"zoe@example.com")"#),
            ("additional-fields[profile]", "subscriptions"),
        ],
        READ_ONLY_KEY,
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Json = response.json().await.unwrap();
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{body:#}");
    let zoe = &data[0];
    assert_eq!(zoe["type"], "profile");
    assert_eq!(zoe["attributes"]["email"], "Zoe@Example.com");
    assert_eq!(
        zoe["attributes"]["first_name"],
        Json::Null,
        "unset fields are null"
    );
    assert_eq!(
        zoe["attributes"]["properties"]["Marketplacer Marketplace"],
        "petmarket"
    );
    let marketing = &zoe["attributes"]["subscriptions"]["email"]["marketing"];
    assert_eq!(marketing["consent"], "SUBSCRIBED");
    assert_eq!(marketing["can_receive_email_marketing"], true);
    assert_eq!(marketing["consent_timestamp"], "2026-03-13T23:15:30+00:00");
    assert_eq!(marketing["custom_method_detail"], "marketsync");
    assert_eq!(marketing["suppression"], json!([]));
    assert!(body["links"]["self"].is_string() && body["links"].get("next").is_none());

    // Without additional-fields there are no subscriptions; by phone finds the same profile.
    let body: Json = read(
        &api,
        "/api/profiles",
        &[("filter", "equals(phone_number,'+61412345678')")],
        KEY,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(body["data"][0]["id"], zoe["id"]);
    assert!(body["data"][0]["attributes"].get("subscriptions").is_none());

    // An unsubscribe suppresses the address: consent and can_receive change.
    // A reason Klaviyo does not report is refused, and changes nothing.
    let refused = api
        .standin
        .suppress("zoe@example.com", "BOUNCED")
        .unwrap_err();
    assert_eq!(
        refused.to_string(),
        "\"BOUNCED\" is not a suppression reason Klaviyo reports"
    );
    assert!(!refused.is_not_found());
    api.standin
        .suppress("zoe@example.com", "UNSUBSCRIBE")
        .unwrap();
    let body: Json = read(
        &api,
        "/api/profiles",
        &[
            ("filter", r#"equals(email,"zoe@example.com")"#),
            ("additional-fields[profile]", "subscriptions"),
        ],
        KEY,
    )
    .await
    .json()
    .await
    .unwrap();
    let marketing = &body["data"][0]["attributes"]["subscriptions"]["email"]["marketing"];
    assert_eq!(marketing["consent"], "UNSUBSCRIBED");
    assert_eq!(marketing["can_receive_email_marketing"], false);
    assert_eq!(marketing["suppression"][0]["reason"], "UNSUBSCRIBE");

    // Paging: one a page, then the next link.
    let first: Json = read(&api, "/api/profiles", &[("page[size]", "1")], KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["data"].as_array().unwrap().len(), 1);
    let next = first["links"]["next"].as_str().unwrap();
    let second: Json = Client::new()
        .get(next)
        .header("Authorization", format!("Klaviyo-API-Key {KEY}"))
        .header("revision", REVISION)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(second["data"].as_array().unwrap().len(), 1);
    assert_ne!(second["data"][0]["id"], first["data"][0]["id"]);
    assert!(second["links"].get("next").is_none());

    // What Klaviyo refuses: a filter it cannot apply, a page too large, no key.
    for (params, parameter) in [
        (vec![("filter", r#"contains(email,"zoe")"#)], "filter"),
        (vec![("filter", r#"equals(first_name,"Zoe")"#)], "filter"),
        (vec![("page[size]", "101")], "page[size]"),
    ] {
        let response = read(&api, "/api/profiles", &params, KEY).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{params:?}");
        let errors = error_list(response).await;
        assert_eq!(errors[0]["source"]["parameter"], parameter, "{errors:?}");
    }
    let response = read(&api, "/api/profiles", &[], "pk_wrong").await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn events_are_listed_by_profile_with_their_metric() {
    let api = Api::start(config()).await;
    for (email, metric, unique, time) in [
        (
            "zoe@example.com",
            "Placed Order",
            "p1",
            "2026-03-13T23:15:30+00:00",
        ),
        (
            "zoe@example.com",
            "Fulfilled Order",
            "f1",
            "2026-03-17T03:00:00+00:00",
        ),
        (
            "sam@example.com",
            "Placed Order",
            "p2",
            "2026-03-14T01:00:00+00:00",
        ),
    ] {
        let mut body = event(email, metric, unique);
        body["data"]["attributes"]["time"] = json!(time);
        assert_eq!(
            api.post(Endpoint::CreateEvent, &body).await.status(),
            StatusCode::ACCEPTED
        );
    }
    let zoe = api
        .standin
        .accepted()
        .profile_by_email("zoe@example.com")
        .unwrap()
        .id
        .clone();
    let filter = format!(r#"equals(profile_id,"{zoe}")"#);
    let response = read(
        &api,
        "/api/events",
        &[
            ("filter", filter.as_str()),
            ("include", "metric"),
            ("sort", "-datetime"),
        ],
        READ_ONLY_KEY,
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Json = response.json().await.unwrap();
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "only Zoe's: {body:#}");
    assert_eq!(data[0]["type"], "event");
    assert_eq!(
        data[0]["attributes"]["datetime"],
        "2026-03-17T03:00:00+00:00"
    );
    assert_eq!(data[0]["attributes"]["timestamp"], 1_773_716_400);
    assert_eq!(data[0]["attributes"]["event_properties"]["OrderId"], "5001");
    assert_eq!(data[0]["relationships"]["profile"]["data"]["id"], zoe);
    let metric_id = data[0]["relationships"]["metric"]["data"]["id"]
        .as_str()
        .unwrap();
    let included = body["included"].as_array().unwrap();
    let metric = included.iter().find(|i| i["id"] == metric_id).unwrap();
    assert_eq!(metric["type"], "metric");
    assert_eq!(metric["attributes"]["name"], "Fulfilled Order");
    assert_eq!(included.len(), 2);

    // By metric: the same id filters every profile's events of it.
    let placed = included
        .iter()
        .find(|i| i["attributes"]["name"] == "Placed Order")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let filter = format!(r#"equals(metric_id,"{placed}")"#);
    let body: Json = read(&api, "/api/events", &[("filter", filter.as_str())], KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert!(
        body.get("included").is_none(),
        "nothing included unless asked"
    );

    for params in [
        vec![("filter", r#"equals(email,"zoe@example.com")"#)],
        vec![("page[size]", "1001")],
        vec![("sort", "value")],
        vec![("include", "lists")],
    ] {
        let response = read(&api, "/api/events", &params, KEY).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{params:?}");
    }
}
