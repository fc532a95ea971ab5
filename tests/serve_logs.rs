//! `marketsync serve --log-format json`: one JSON event per webhook answered, with its fields,
//! and never a secret, the API key, a body, an email or a phone.

mod common;

use common::ServeProcess;
use marketsync::serve::WEBHOOK_PATH;
use marketsync::source::webhook::sign;
use marketsync::standin::{Config, DEFAULT_API_KEY, Faults, StandIn};
use serde_json::Value as Json;
use std::io::{Read, Write};
use std::time::Duration;

const SECRET: &str = "whsec-log-canary-7f3a";
/// In every body sent, in several spellings: none may reach a log line.
const EMAIL: &str = "Quillon.Brackwater@Logcanary.example";
const PHONE_DIGITS: &str = "412345678";

/// The first capture of `examples/orders.ndjson`, its buyer given the canary email: its headers
/// and its body as sent.
fn order() -> (Vec<(String, String)>, String) {
    let text = std::fs::read_to_string(common::repo("examples/orders.ndjson")).unwrap();
    let capture: Json = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let headers = capture["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    let body = capture["body"]
        .to_string()
        .replace("  Zoe.Kowalski@Example.COM ", EMAIL);
    assert!(body.contains(EMAIL) && body.contains("0412 345 678"));
    (headers, body)
}

/// One request on its own connection; the status it is answered.
fn request(address: &str, method: &str, headers: &[(String, String)], body: &str) -> u16 {
    let mut text = format!(
        "{method} {WEBHOOK_PATH} HTTP/1.1\r\nHost: marketsync\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text.push_str(body);
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.write_all(text.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer}"))
}

/// A signed POST of `body` with `headers`.
fn post(address: &str, headers: &[(String, String)], body: &str, secret: &str) -> u16 {
    let mut headers = headers.to_vec();
    headers.push((
        "Marketplacer-Hmac-256".into(),
        sign(secret, body.as_bytes()),
    ));
    request(address, "POST", &headers, body)
}

/// The `webhook answered` events, in order.
fn answers(serve: &ServeProcess) -> Vec<Json> {
    serve
        .events()
        .into_iter()
        .filter(|e| e["message"] == "webhook answered")
        .collect()
}

#[test]
fn every_answer_is_one_json_event_with_its_fields_and_nothing_secret_or_personal() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Klaviyo fails whatever carries the buyer's email: the sender's retries are logged too.
    let faults = Faults {
        error_5xx_marker: Some(EMAIL.to_lowercase()),
        ..Faults::none()
    };
    let config = Config {
        faults,
        ..Config::default()
    };
    let standin = runtime.block_on(StandIn::start(config)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut command = common::marketsync_command();
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(["--max-body", "8192", "--state"])
        .arg(dir.path().join("state.db"))
        .env("KLAVIYO_API_KEY", DEFAULT_API_KEY)
        .env("KLAVIYO_BASE_URL", standin.url())
        .env("MARKETPLACER_WEBHOOK_SECRET", SECRET);
    let mut serve = ServeProcess::start(command);
    let (headers, body) = order();

    assert_eq!(post(&serve.address, &headers, &body, SECRET), 200);
    assert_eq!(post(&serve.address, &headers, &body, SECRET), 200);
    let mut other = headers.clone();
    for (name, value) in &mut other {
        match name.as_str() {
            "Idempotency-Key" => *value = "log-test-not-json".into(),
            "Marketplacer-Sequence" => *value = "31743".into(),
            _ => {}
        }
    }
    let not_json = format!("{{not json, buyer {EMAIL}, phone 0{PHONE_DIGITS}");
    assert_eq!(post(&serve.address, &other, &not_json, SECRET), 200);
    assert_eq!(
        post(&serve.address, &headers, &body, "whsec-some-other"),
        503
    );
    let oversize = format!("{body}{}", " ".repeat(8192));
    assert_eq!(post(&serve.address, &other, &oversize, SECRET), 200);
    assert_eq!(request(&serve.address, "GET", &[], ""), 503);
    let retry = serve.wait_for("a retry", |e| {
        e["message"] == "a Klaviyo call failed; it is tried again"
    });
    assert_eq!(retry["level"], "INFO");
    assert_eq!(retry["status"], 503);
    assert_eq!(retry["error"], "Klaviyo answered 503");
    for field in ["request", "attempt", "retry_in_ms"] {
        assert!(retry[field].is_u64(), "{field}: {retry}");
    }
    assert!(retry["endpoint"].as_str().unwrap().starts_with("/api/"));
    assert!(retry["mapping"].is_string(), "{retry}");

    // Shutting down: a request whose headers began before SIGTERM is answered 503.
    let mut late = std::net::TcpStream::connect(&serve.address).unwrap();
    late.write_all(format!("POST {WEBHOOK_PATH} HTTP/1.1\r\n").as_bytes())
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    serve.signal(libc::SIGTERM);
    serve.wait_for("the shutdown event", |e| {
        e["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("shutting down"))
    });
    let signature = sign(SECRET, body.as_bytes());
    let mut rest = format!(
        "Host: marketsync\r\nContent-Length: {}\r\nMarketplacer-Hmac-256: {signature}\r\n",
        body.len()
    );
    for (name, value) in &headers {
        rest.push_str(&format!("{name}: {value}\r\n"));
    }
    rest.push_str("\r\n");
    rest.push_str(&body);
    late.write_all(rest.as_bytes()).unwrap();
    let mut answer = String::new();
    late.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let status = serve.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", serve.lines().join("\n"));
    std::thread::sleep(Duration::from_millis(100));

    let events = serve.events();
    let answered = answers(&serve);
    let outcomes: Vec<&str> = answered
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        [
            "accepted",
            "duplicate",
            "dead_lettered",
            "bad_signature",
            "too_large",
            "unavailable",
            "shutting_down"
        ]
    );
    let level = |e: &Json| e["level"].as_str().unwrap().to_owned();
    let levels: Vec<String> = answered.iter().map(level).collect();
    assert_eq!(
        levels,
        ["INFO", "INFO", "WARN", "WARN", "WARN", "WARN", "WARN"]
    );
    let statuses: Vec<u64> = answered
        .iter()
        .map(|e| e["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 200, 200, 503, 200, 503, 503]);
    for event in &answered {
        assert!(event["timestamp"].is_string(), "{event}");
        assert!(event["duration_ms"].is_u64(), "{event}");
        if event["outcome"] != "unavailable" {
            assert_eq!(event["marketplace"], "petmarket", "{event}");
            assert!(event["idempotency_key"].is_string(), "{event}");
            assert!(event["sequence"].is_string(), "{event}");
        }
    }
    let first = &answered[0];
    assert_eq!(first["size"], body.len() as u64);
    assert_eq!(
        first["idempotency_key"],
        headers_value(&headers, "Idempotency-Key")
    );
    assert_eq!(first["sequence"], "31742");
    assert_eq!(first["delivery_type"], "Invoice");
    assert_eq!(answered[1]["delivery_type"], "Invoice");
    assert_eq!(answered[2]["idempotency_key"], "log-test-not-json");
    assert_eq!(answered[2]["reason"], "dead letter: unreadable");
    assert_eq!(answered[3]["reason"], "signature wrong");
    assert_eq!(answered[4]["size"], oversize.len() as u64);

    let listening = events.iter().find(|e| e["message"] == "listening").unwrap();
    assert_eq!(listening["signatures"], "checked");
    assert!(listening["mappings"].is_string(), "{listening}");
    assert!(listening["state"].as_str().unwrap().ends_with("state.db"));
    let last = events.last().unwrap();
    assert_eq!(
        (&last["message"], &last["exit"]),
        (&"stopped".into(), &0.into())
    );

    let all = serve.lines().join("\n");
    let lowered = all.to_lowercase();
    for secret in [SECRET, DEFAULT_API_KEY] {
        assert!(!all.contains(secret), "{secret} logged:\n{all}");
    }
    for personal in [
        "quillon",
        "brackwater",
        "logcanary",
        PHONE_DIGITS,
        "412 345",
    ] {
        assert!(!lowered.contains(personal), "{personal} logged:\n{all}");
    }
    assert!(!all.contains("not json"), "a body logged:\n{all}");
    runtime.block_on(standin.shutdown());
}

fn headers_value(headers: &[(String, String)], name: &str) -> String {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .unwrap()
}
