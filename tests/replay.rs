//! `marketsync replay` against a small receiver on loopback that records every request and
//! answers as each test scripts it: what Marketplacer sends, and what it does with the answers.

mod common;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{KeyInit, Mac};
use marketsync::source::webhook;
use predicates::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SECRET_VAR: &str = "REPLAY_TEST_SECRET";
const SECRET: &str = "whsec-test-do-not-print";

/// One request as the receiver saw it.
#[derive(Clone)]
struct Seen {
    path: String,
    headers: HeaderMap,
    body: Vec<u8>,
    at: Instant,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn key(&self) -> String {
        self.header("Idempotency-Key")
            .unwrap_or_default()
            .to_owned()
    }
}

/// How the receiver answers: given the request and how many times its Idempotency-Key was
/// seen before (0 the first time) and its place among all requests (0-based).
type Script = dyn Fn(&Seen, usize, usize) -> (u16, Vec<(&'static str, &'static str)>) + Send + Sync;

struct State {
    seen: Mutex<Vec<Seen>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    delay: Duration,
    script: Box<Script>,
}

struct Receiver {
    url: String,
    state: Arc<State>,
    _runtime: tokio::runtime::Runtime,
}

impl Receiver {
    fn start(
        delay: Duration,
        script: impl Fn(&Seen, usize, usize) -> (u16, Vec<(&'static str, &'static str)>)
        + Send
        + Sync
        + 'static,
    ) -> Receiver {
        let state = Arc::new(State {
            seen: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            delay,
            script: Box::new(script),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&state));
        runtime.spawn(async move { axum::serve(listener, app).await });
        Receiver {
            url,
            state,
            _runtime: runtime,
        }
    }

    /// Answers 200 to everything.
    fn accepting() -> Receiver {
        Receiver::start(Duration::ZERO, |_, _, _| (200, vec![]))
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }
}

async fn handle(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let seen = Seen {
        path: uri.path().to_owned(),
        headers,
        body: body.to_vec(),
        at: Instant::now(),
    };
    let (before, place) = {
        let mut all = state.seen.lock().unwrap();
        let before = all.iter().filter(|s| s.key() == seen.key()).count();
        all.push(seen.clone());
        (before, all.len() - 1)
    };
    tokio::time::sleep(state.delay).await;
    let (status, extra) = (state.script)(&seen, before, place);
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    let mut response = (StatusCode::from_u16(status).unwrap(), "answer body").into_response();
    for (name, value) in extra {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

/// A bare envelope line, compact, with the given id.
fn envelope(id: &str) -> String {
    format!(
        r#"{{"id":"{id}","event_name":"update","payload":{{"data":{{"node":{{"__typename":"Seller","id":"U2VsbGVyLTQ="}}}}}}}}"#
    )
}

/// An NDJSON file of `count` bare envelopes `E1`..`En`.
fn envelopes(dir: &tempfile::TempDir, count: usize) -> std::path::PathBuf {
    let text: String = (1..=count)
        .map(|n| envelope(&format!("E{n}")) + "\n")
        .collect();
    let path = dir.path().join("envelopes.ndjson");
    std::fs::write(&path, text).unwrap();
    path
}

fn replay(receiver: &Receiver) -> assert_cmd::Command {
    let mut cmd = common::marketsync();
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["replay", "--to", &receiver.url, "--backoff-base", "0.01"])
        .env(SECRET_VAR, SECRET);
    cmd
}

fn independent_hmac(secret: &[u8], body: &[u8]) -> Vec<u8> {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

#[test]
fn sends_marketplacer_headers_and_an_hmac_over_the_exact_bytes() {
    let receiver = Receiver::accepting();
    let dir = tempfile::tempdir().unwrap();
    // A capture whose body is spaced oddly: those bytes, not a re-serialisation, are sent.
    let capture_body = r#"{ "id" : "C1",   "event_name":"create","payload":{"data":{"node":{"__typename":"Seller","id":"U2VsbGVyLTE="}}} }"#;
    let capture = format!(
        r#"{{"received_at": "2026-03-13T23:15:36Z", "headers": {{"idempotency-key": "YmZiOjI1NTI=", "Marketplacer-Sequence": "2552", "Marketplacer-Vertical": "bestfriendbazaar", "Marketplacer-Hmac-256": "stale", "X-Forwarded-For": "10.0.0.1"}}, "body":   {capture_body}  }}"#
    );
    let bare = envelope("E1");
    std::fs::write(
        dir.path().join("mixed.ndjson"),
        format!("{capture}\n\n{bare}\n"),
    )
    .unwrap();
    replay(&receiver)
        .args(["--secret-env", SECRET_VAR, "--vertical", "petmarket"])
        .args(["--header", "auth-key: x123"])
        .arg(dir.path().join("mixed.ndjson"))
        .arg("examples/shipment.json")
        .assert()
        .code(0)
        .stderr(predicate::str::contains(
            "summary: 3 deliveries sent (3 requests), 3 accepted, 0 retried, 0 failed",
        ))
        .stderr(predicate::str::contains(SECRET).not());
    let seen = receiver.seen();
    assert_eq!(seen.len(), 3);
    for request in &seen {
        assert_eq!(request.path, "/hook");
        assert_eq!(
            request.header("User-Agent"),
            Some("Marketplacer Client/1.0.0")
        );
        assert_eq!(request.header("Content-Type"), Some("application/json"));
        assert_eq!(request.header("auth-key"), Some("x123"));
        let signature = request.header("Marketplacer-Hmac-256").unwrap();
        assert!(webhook::verify(
            &[SECRET.as_bytes()],
            &request.body,
            signature
        ));
        assert_eq!(
            base64_decode(signature),
            independent_hmac(SECRET.as_bytes(), &request.body)
        );
        assert!(!webhook::verify(&[b"another"], &request.body, signature));
        assert!(request.header("X-Forwarded-For").is_none());
    }
    let by_key = |key: &str| seen.iter().find(|s| s.key() == key).unwrap();
    let captured = by_key("YmZiOjI1NTI=");
    assert_eq!(captured.body, capture_body.as_bytes());
    assert_eq!(captured.header("Marketplacer-Sequence"), Some("2552"));
    assert_eq!(
        captured.header("Marketplacer-Vertical"),
        Some("bestfriendbazaar")
    );
    let bare_seen = by_key("E1");
    assert_eq!(bare_seen.body, bare.as_bytes());
    assert_eq!(bare_seen.header("Marketplacer-Sequence"), Some("2"));
    assert_eq!(bare_seen.header("Marketplacer-Vertical"), Some("petmarket"));
    // A pretty-printed capture file: its body's bytes as they stand in the file.
    let file = std::fs::read_to_string(common::repo("examples/shipment.json")).unwrap();
    let shipment = by_key("723e7e5f-666b-4e4f-b546-cf315cc8f11b");
    let body = std::str::from_utf8(&shipment.body).unwrap();
    assert!(body.starts_with("{\n    \"id\": \"V2ViaG9va0V2ZW50LTg4MTMx\""));
    assert!(file.contains(body));
}

#[test]
fn without_a_secret_nothing_is_signed() {
    let receiver = Receiver::accepting();
    let dir = tempfile::tempdir().unwrap();
    replay(&receiver).arg(envelopes(&dir, 1)).assert().code(0);
    assert!(receiver.seen()[0].header("Marketplacer-Hmac-256").is_none());
}

#[test]
fn a_missing_secret_variable_is_a_usage_error_and_nothing_is_sent() {
    let receiver = Receiver::accepting();
    let dir = tempfile::tempdir().unwrap();
    replay(&receiver)
        .args(["--secret-env", "REPLAY_TEST_UNSET"])
        .env_remove("REPLAY_TEST_UNSET")
        .arg(envelopes(&dir, 2))
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "error: --secret-env REPLAY_TEST_UNSET: the variable is not set or empty",
        ));
    replay(&receiver)
        .args(["--secret-env", "REPLAY_TEST_EMPTY"])
        .env("REPLAY_TEST_EMPTY", "")
        .arg(envelopes(&dir, 2))
        .assert()
        .code(2);
    assert!(receiver.seen().is_empty());
}

#[test]
fn a_503_is_retried_and_then_accepted() {
    let receiver = Receiver::start(Duration::ZERO, |_, before, _| {
        if before == 0 {
            (503, vec![])
        } else {
            (200, vec![])
        }
    });
    let dir = tempfile::tempdir().unwrap();
    replay(&receiver)
        .args(["--secret-env", SECRET_VAR])
        .arg(envelopes(&dir, 3))
        .assert()
        .code(0)
        .stderr(predicate::str::contains(
            "summary: 3 deliveries sent (6 requests), 3 accepted, 3 retried, 0 failed",
        ));
    let seen = receiver.seen();
    for key in ["E1", "E2", "E3"] {
        let attempts: Vec<&Seen> = seen.iter().filter(|s| s.key() == key).collect();
        assert_eq!(attempts.len(), 2, "{key}");
        // A retry is the same request: the same bytes, key and signature.
        assert_eq!(attempts[0].body, attempts[1].body);
        assert_eq!(
            attempts[0].header("Marketplacer-Hmac-256"),
            attempts[1].header("Marketplacer-Hmac-256")
        );
    }
}

/// The milliseconds after `label` in `answer times: N answers: p50 X ms, p95 ...`.
fn answer_ms(stderr: &str, label: &str) -> f64 {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("answer times: "))
        .unwrap_or_else(|| panic!("no answer times in {stderr}"));
    let after = line
        .split_once(&format!("{label} "))
        .unwrap_or_else(|| panic!("no {label} in {line}"))
        .1;
    after.split(" ms").next().unwrap().parse().unwrap()
}

#[test]
fn the_summary_gives_the_receivers_answer_times() {
    let receiver = Receiver::start(Duration::from_millis(80), |_, before, _| {
        if before == 0 {
            (503, vec![])
        } else {
            (200, vec![])
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let output = replay(&receiver)
        .args(["--concurrency", "2"])
        .arg(envelopes(&dir, 3))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stderr = String::from_utf8(output.stderr).unwrap();
    // Every answer counts, the 503s too.
    assert!(stderr.contains("answer times: 6 answers: p50 "), "{stderr}");
    for label in ["p50", "p95", "p99", "max"] {
        let ms = answer_ms(&stderr, label);
        assert!((80.0..2000.0).contains(&ms), "{label} {ms} ms in {stderr}");
    }
    assert!(answer_ms(&stderr, "p50") <= answer_ms(&stderr, "max"));
}

#[test]
fn a_report_says_when_each_delivery_was_accepted_and_how_it_ended() {
    // E1 at once, E2 after a 500, E3 never (500 until out of attempts).
    let receiver = Receiver::start(Duration::from_millis(40), |seen, before, _| {
        match (seen.key().as_str(), before) {
            ("E1", _) | ("E2", 1..) => (200, vec![]),
            _ => (500, vec![]),
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.jsonl");
    let unix_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let before = unix_ms();
    replay(&receiver)
        .args(["--concurrency", "1", "--max-attempts", "2", "--report"])
        .arg(&report)
        .arg(envelopes(&dir, 3))
        .assert()
        .code(1);
    let after = unix_ms();
    let mut lines: Vec<serde_json::Value> = std::fs::read_to_string(&report)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    lines.sort_by_key(|l| l["id"].as_str().unwrap().to_owned());
    let ended: Vec<(&str, &str, Option<u64>, u64)> = lines
        .iter()
        .map(|l| {
            (
                l["id"].as_str().unwrap(),
                l["idempotency_key"].as_str().unwrap(),
                l["status"].as_u64(),
                l["attempts"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ended,
        [
            ("E1", "E1", Some(200), 1),
            ("E2", "E2", Some(200), 2),
            ("E3", "E3", Some(500), 2)
        ]
    );
    assert!(
        lines[0]["origin"]
            .as_str()
            .unwrap()
            .ends_with("envelopes.ndjson:1")
    );
    for line in &lines[..2] {
        let at = line["accepted_at_ms"].as_u64().unwrap();
        assert!((before..=after).contains(&at), "{line}");
    }
    assert!(lines[2]["accepted_at_ms"].is_null(), "{}", lines[2]);
    // The 200 that accepted E2 came after its 503 and E1's 200 (one at a time).
    assert!(
        lines[1]["accepted_at_ms"].as_u64()
            >= Some(lines[0]["accepted_at_ms"].as_u64().unwrap() + 80),
        "{lines:?}"
    );
    for line in &lines {
        let answer_ms = line["answer_ms"].as_f64().unwrap();
        assert!((40.0..2000.0).contains(&answer_ms), "{line}");
    }
}

#[test]
fn a_report_that_cannot_be_created_stops_before_sending() {
    let receiver = Receiver::accepting();
    let dir = tempfile::tempdir().unwrap();
    replay(&receiver)
        .args(["--report"])
        .arg(dir.path().join("no-such-folder").join("report.jsonl"))
        .arg(envelopes(&dir, 1))
        .assert()
        .code(4)
        .stderr(predicate::str::contains("error: --report "));
    assert!(receiver.seen().is_empty());
}

#[test]
fn a_429_waits_for_retry_after_and_lowers_the_concurrency() {
    let receiver = Receiver::start(Duration::ZERO, |_, before, _| {
        if before == 0 {
            (429, vec![("Retry-After", "1")])
        } else {
            (200, vec![])
        }
    });
    let dir = tempfile::tempdir().unwrap();
    replay(&receiver)
        .args(["--concurrency", "4"])
        .arg(envelopes(&dir, 1))
        .assert()
        .code(0)
        .stderr(predicate::str::contains("1 retried"))
        .stderr(predicate::str::contains(
            "429 answers lowered the concurrency to 3",
        ));
    let seen = receiver.seen();
    assert_eq!(seen.len(), 2);
    let waited = seen[1].at - seen[0].at;
    assert!(waited >= Duration::from_millis(950), "{waited:?}");
}

#[test]
fn a_400_fails_the_delivery_disables_the_webhook_and_stops_sending() {
    let receiver = Receiver::start(Duration::ZERO, |_, _, place| {
        if place == 2 {
            (400, vec![])
        } else {
            (200, vec![])
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let input = envelopes(&dir, 10);
    replay(&receiver)
        .args(["--concurrency", "1", "--secret-env", SECRET_VAR])
        .arg(&input)
        .assert()
        .code(7)
        .stderr(predicate::str::contains(format!(
            "failed: {}:3 delivery E3: status 400: answer body",
            input.display()
        )))
        .stderr(predicate::str::contains(
            "summary: 3 deliveries sent (3 requests), 2 accepted, 0 retried, 1 failed, 7 not delivered (sending stopped)",
        ))
        .stderr(predicate::str::contains(format!(
            "webhook would be disabled at delivery E3 ({}:3, status 400)",
            input.display()
        )))
        .stderr(predicate::str::contains(SECRET).not());
    assert_eq!(receiver.seen().len(), 3, "nothing is sent after the 400");
}

#[test]
fn a_redirect_is_not_followed_and_disables_the_webhook() {
    let receiver = Receiver::start(Duration::ZERO, |seen, _, _| {
        if seen.path == "/hook" {
            (302, vec![("Location", "/elsewhere")])
        } else {
            (200, vec![])
        }
    });
    let dir = tempfile::tempdir().unwrap();
    replay(&receiver)
        .args(["--concurrency", "1"])
        .arg(envelopes(&dir, 3))
        .assert()
        .code(7)
        .stderr(predicate::str::contains("status 302"))
        .stderr(predicate::str::contains("(a redirect)"))
        .stderr(predicate::str::contains(
            "webhook would be disabled at delivery E1",
        ));
    let seen = receiver.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/hook");
}

#[test]
fn a_delivery_that_keeps_failing_is_reported_after_max_attempts() {
    let receiver = Receiver::start(Duration::ZERO, |seen, _, _| {
        if seen.key() == "E2" {
            (500, vec![])
        } else {
            (200, vec![])
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let input = envelopes(&dir, 3);
    replay(&receiver)
        .args(["--max-attempts", "3"])
        .arg(&input)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!(
            "failed: {}:2 delivery E2: status 500: answer body, after 3 attempts",
            input.display()
        )))
        .stderr(predicate::str::contains(
            "summary: 3 deliveries sent (5 requests), 2 accepted, 1 retried, 1 failed",
        ))
        .stderr(predicate::str::contains("would be disabled").not());
    let attempts = receiver.seen().iter().filter(|s| s.key() == "E2").count();
    assert_eq!(attempts, 3);
}

#[test]
fn a_slow_answer_times_out_and_is_retried() {
    let receiver = Receiver::start(Duration::from_millis(600), |_, _, _| (200, vec![]));
    let dir = tempfile::tempdir().unwrap();
    replay(&receiver)
        .args(["--timeout", "0.2", "--max-attempts", "2"])
        .arg(envelopes(&dir, 1))
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "delivery E1: timed out, after 2 attempts",
        ));
    assert_eq!(receiver.seen().len(), 2);
}

#[test]
fn the_concurrency_bounds_requests_in_flight() {
    let receiver = Receiver::start(Duration::from_millis(150), |_, _, _| (200, vec![]));
    let dir = tempfile::tempdir().unwrap();
    replay(&receiver)
        .args(["--concurrency", "3"])
        .arg(envelopes(&dir, 12))
        .assert()
        .code(0)
        .stderr(predicate::str::contains("12 accepted"));
    assert_eq!(receiver.max_in_flight(), 3);
}

#[test]
fn the_rate_spaces_requests() {
    let receiver = Receiver::accepting();
    let dir = tempfile::tempdir().unwrap();
    replay(&receiver)
        .args(["--rate", "20/s"])
        .arg(envelopes(&dir, 9))
        .assert()
        .code(0);
    let seen = receiver.seen();
    assert_eq!(seen.len(), 9);
    // Nine requests at 20 a second: the last starts 8 × 50 ms after the first.
    let span = seen[8].at - seen[0].at;
    assert!(span >= Duration::from_millis(380), "{span:?}");
    let in_any_200ms = seen
        .iter()
        .map(|a| {
            seen.iter()
                .filter(|b| b.at >= a.at && b.at - a.at < Duration::from_millis(200))
                .count()
        })
        .max()
        .unwrap();
    assert!(in_any_200ms <= 5, "{in_any_200ms} requests within 200 ms");
}

#[test]
fn starts_missed_while_the_receiver_stalled_are_made_when_it_answers() {
    // The third request is answered after 400 ms, one at a time at 20 a second: the starts
    // planned meanwhile (150 to 400 ms) are made as soon as it answers, as Marketplacer sends
    // the events it kept, not dropped from the schedule and the rate begun again.
    let receiver = Receiver::start(Duration::ZERO, |_, _, place| {
        if place == 2 {
            // A blocking wait is fine here: one request at a time.
            std::thread::sleep(Duration::from_millis(400));
        }
        (200, vec![])
    });
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.ndjson");
    replay(&receiver)
        .args(["--rate", "20/s", "--concurrency", "1", "--report"])
        .arg(&report)
        .arg(envelopes(&dir, 10))
        .assert()
        .code(0);
    let seen = receiver.seen();
    assert_eq!(seen.len(), 10);
    let after_stall: Vec<Duration> = seen[3..8].iter().map(|s| s.at - seen[2].at).collect();
    assert!(
        after_stall[0] >= Duration::from_millis(400),
        "{after_stall:?}"
    );
    // Five missed starts at once, not 50 ms apart (200 ms from the first to the fifth).
    assert!(
        after_stall[4] - after_stall[0] < Duration::from_millis(120),
        "{after_stall:?}"
    );
    let late: std::collections::HashMap<String, f64> = std::fs::read_to_string(&report)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .map(|l| {
            (
                l["id"].as_str().unwrap().to_owned(),
                l["started_late_ms"].as_f64().unwrap(),
            )
        })
        .collect();
    // E4 was planned at 150 ms and waited for the slot until about 400 ms.
    assert!(late["E4"] >= 200.0, "{late:?}");
    assert!(late["E1"] < 50.0, "{late:?}");
}

#[test]
fn lines_that_are_no_webhook_delivery_are_skipped_and_reported() {
    let receiver = Receiver::accepting();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.ndjson");
    std::fs::write(&path, format!("{{not json\n{}\n", envelope("E1"))).unwrap();
    replay(&receiver)
        .arg(&path)
        .arg("examples/backfill-page.json")
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!(
            "skipped: {}:1: not JSON",
            path.display()
        )))
        .stderr(predicate::str::contains(
            "skipped: examples/backfill-page.json:1: not a Marketplacer delivery: a backfill page",
        ))
        .stderr(predicate::str::contains("1 accepted"))
        .stderr(predicate::str::contains("2 lines skipped"));
    let seen = receiver.seen();
    assert_eq!(seen.len(), 1);
    // Skipped lines take no sequence number.
    assert_eq!(seen[0].header("Marketplacer-Sequence"), Some("1"));
}

#[test]
fn deliveries_are_read_from_standard_input_and_start_in_order() {
    let receiver = Receiver::accepting();
    let input: String = (1..=5).map(|n| envelope(&format!("S{n}")) + "\n").collect();
    replay(&receiver)
        .args(["--concurrency", "1"])
        .write_stdin(input)
        .assert()
        .code(0)
        .stderr(predicate::str::contains("5 accepted"));
    let keys: Vec<String> = receiver.seen().iter().map(Seen::key).collect();
    assert_eq!(keys, ["S1", "S2", "S3", "S4", "S5"]);
    let sequences: Vec<String> = receiver
        .seen()
        .iter()
        .map(|s| s.header("Marketplacer-Sequence").unwrap().to_owned())
        .collect();
    assert_eq!(sequences, ["1", "2", "3", "4", "5"]);
}

#[test]
fn ctrl_c_stops_at_once_and_still_summarises() {
    // Every answer is a 503 and the next retry a minute away: only an interrupt ends this soon.
    let receiver = Receiver::start(Duration::ZERO, |_, _, _| (503, vec![]));
    let dir = tempfile::tempdir().unwrap();
    let child = common::marketsync_command()
        .args(["replay", "--to", &receiver.url])
        .arg(envelopes(&dir, 2))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while receiver.seen().len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(20), "nothing sent");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: signals the child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "summary: 2 deliveries sent (2 requests), 0 accepted, 0 retried, 0 failed, 2 not delivered (interrupted)"
        ),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn the_library_replays_in_process() {
    let receiver = Receiver::start(Duration::ZERO, |seen, _, _| {
        if seen.key() == "E2" {
            (410, vec![])
        } else {
            (200, vec![])
        }
    });
    let deliveries: Vec<marketsync::replay::Delivery> = (1..=3)
        .map(|n| marketsync::replay::Delivery {
            origin: format!("test:{n}"),
            outgoing: webhook::outgoing(&envelope(&format!("E{n}")), &Default::default()).unwrap(),
        })
        .collect();
    let options = marketsync::replay::Options {
        concurrency: 1,
        secret: Some(SECRET.as_bytes().to_vec()),
        ..Default::default()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let summary = runtime.block_on(marketsync::replay::replay_all(
        receiver.url.parse().unwrap(),
        options,
        deliveries,
    ));
    assert_eq!((summary.sent, summary.accepted, summary.unsent), (2, 1, 1));
    let disabled = summary.disabled_at.unwrap();
    assert_eq!((disabled.id.as_str(), disabled.status), ("E2", Some(410)));
    assert!(disabled.disabling);
    for seen in receiver.seen() {
        let signature = seen.header("Marketplacer-Hmac-256").unwrap();
        assert!(webhook::verify(
            &[b"old", SECRET.as_bytes()],
            &seen.body,
            signature
        ));
    }
}
