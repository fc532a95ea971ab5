//! `marketsync serve`: webhooks over real HTTP on 127.0.0.1, sent on to the Klaviyo stand-in.

mod common;

use marketsync::serve::{self, Receiver, ServeConfig, WEBHOOK_PATH};
use marketsync::sink::http::ApiKey;
use marketsync::sink::{Sink, SinkConfig};
use marketsync::source::webhook::{Secrets, sign};
use marketsync::standin::{Config, DEFAULT_API_KEY, StandIn};
use marketsync::store::Store;
use serde_json::Value as Json;
use std::io::BufRead;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A receiver serving on a free port, with its sender pointed at a stand-in.
struct Harness {
    standin: StandIn,
    receiver: Arc<Receiver>,
    state: std::path::PathBuf,
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn start(secrets: Secrets, config: ServeConfig) -> Harness {
    let standin = StandIn::start(Config::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    let store = Arc::new(Mutex::new(Store::open(&state).unwrap()));
    let mut sink_config = SinkConfig::new(&standin.url(), ApiKey::new(DEFAULT_API_KEY));
    sink_config.timeout = Duration::from_secs(5);
    let sink = Sink::new(sink_config, Arc::clone(&store));
    let receiver = Receiver::new(
        Arc::new(common::engine()),
        store,
        secrets,
        Some(Arc::clone(&sink)),
        config,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn({
        let receiver = Arc::clone(&receiver);
        async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            serve::serve(receiver, sink, listener, None, shutdown)
                .await
                .unwrap()
                .unwrap();
        }
    });
    Harness {
        standin,
        receiver,
        state,
        url,
        stop: Some(stop),
        task,
        _dir: dir,
    }
}

impl Harness {
    async fn post(&self, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> reqwest::Response {
        let mut request = reqwest::Client::new()
            .post(format!("{}{WEBHOOK_PATH}", self.url))
            .body(body.into());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap()
    }

    async fn get(&self, path: &str) -> u16 {
        reqwest::get(format!("{}{path}", self.url))
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Rows of a store table, read beside the receiver as `marketsync status` would.
    fn count(&self, table: &str) -> i64 {
        let conn = rusqlite::Connection::open(&self.state).unwrap();
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    /// Runs SQL on the state file beside the receiver: how a test injects a store failure.
    fn sql(&self, sql: &str) {
        let conn = rusqlite::Connection::open(&self.state).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn.execute_batch(sql).unwrap();
    }

    /// Rows of every table a delivery writes to at intake, or that its sending writes to.
    fn rows_of_deliveries(&self) -> [(&'static str, i64); 5] {
        ["inbox", "outbox", "dead_letter", "warning", "ledger"].map(|t| (t, self.count(t)))
    }

    fn dead_letters(&self) -> Vec<marketsync::store::DeadLetter> {
        Store::open(&self.state)
            .unwrap()
            .dead_letters(None, None)
            .unwrap()
    }

    async fn placed_orders_within(&self, wait: Duration) -> usize {
        let until = Instant::now() + wait;
        loop {
            let n = self.standin.accepted().events_named("Placed Order").count();
            if n > 0 || Instant::now() > until {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asks for a shutdown without waiting for it.
    fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    async fn stop(mut self) {
        self.begin_stop();
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("serve stops within its bound")
            .unwrap();
        self.standin.shutdown().await;
    }
}

/// The first capture of `examples/orders.ndjson`: its headers and its body as sent.
fn first_order() -> (Vec<(String, String)>, String) {
    let text = std::fs::read_to_string(common::repo("examples/orders.ndjson")).unwrap();
    let capture: Json = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let headers = capture["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    (headers, capture["body"].to_string())
}

/// Captures of NDJSON text (as [`common::synthetic_orders`] writes): headers and body as sent.
fn captures(text: &str) -> Vec<(Vec<(String, String)>, String)> {
    text.lines()
        .map(|line| {
            let capture: Json = serde_json::from_str(line).unwrap();
            let headers = capture["headers"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            (headers, capture["body"].to_string())
        })
        .collect()
}

fn borrowed(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_is_answered_200_and_its_placed_order_reaches_klaviyo_once() {
    let h = start(Secrets::default(), ServeConfig::default()).await;
    let (headers, body) = first_order();
    let response = h.post(&borrowed(&headers), body.clone()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(h.placed_orders_within(Duration::from_secs(10)).await, 1);
    assert_eq!(h.count("inbox"), 1);
    let queued = h.count("outbox");

    // Marketplacer sends it again (a retry after a lost answer): 200, nothing queued again.
    let again = h.post(&borrowed(&headers), body).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.text().await.unwrap(), "duplicate: already received\n");
    assert_eq!(h.count("inbox"), 1);
    assert_eq!(h.count("outbox"), queued);
    // The origin keeps Marketplacer-Sequence.
    let conn = rusqlite::Connection::open(&h.state).unwrap();
    let origin: String = conn
        .query_row("SELECT origin FROM inbox", [], |r| r.get(0))
        .unwrap();
    assert_eq!(origin, "webhook seq 31742");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_json_is_kept_as_a_dead_letter_and_answered_200() {
    let h = start(Secrets::default(), ServeConfig::default()).await;
    let response = h
        .post(&[("Marketplacer-Vertical", "petmarket")], "{not json")
        .await;
    assert_eq!(response.status(), 200);
    let letters = h.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].category, "unreadable");
    assert!(letters[0].text.contains("{not json"), "{}", letters[0].text);
    assert!(letters[0].text.contains("petmarket"), "{}", letters[0].text);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_utf8_is_kept_with_where_it_breaks_and_answered_200() {
    let h = start(Secrets::default(), ServeConfig::default()).await;
    let mut body = b"{\"id\": \"WH-1\", \"note\": \"caf".to_vec();
    body.extend_from_slice(&[0xe9, b'"', b'}']);
    let response = h
        .post(&[("Marketplacer-Vertical", "petmarket")], body)
        .await;
    assert_eq!(response.status(), 200);
    let letters = h.dead_letters();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].category, "unreadable");
    // Byte 28 is the 0xE9 of a Latin-1 "café"; the rest of the body is still kept.
    assert!(
        letters[0].reason.contains("not valid UTF-8 at byte 28"),
        "{}",
        letters[0].reason
    );
    assert!(letters[0].text.contains("WH-1"), "{}", letters[0].text);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_wrong_signature_is_503_and_nothing_is_kept_and_rotation_accepts_both() {
    let secrets = Secrets::new(Some("current-secret"), Some("previous-secret")).unwrap();
    let h = start(secrets, ServeConfig::default()).await;
    let (headers, body) = first_order();
    let mut headers = borrowed(&headers);

    let missing = h.post(&headers, body.clone()).await;
    assert_eq!(missing.status(), 503);
    assert!(missing.headers().contains_key("retry-after"));
    let wrong_signature = sign("some-other-secret", body.as_bytes());
    headers.push(("Marketplacer-Hmac-256", &wrong_signature));
    let wrong = h.post(&headers, body.clone()).await;
    assert_eq!(wrong.status(), 503);
    assert!(wrong.headers().contains_key("retry-after"));
    // Signed over other bytes (the body re-serialised): refused too.
    headers.pop();
    let reserialised = sign("current-secret", format!("{body} ").as_bytes());
    headers.push(("Marketplacer-Hmac-256", &reserialised));
    assert_eq!(h.post(&headers, body.clone()).await.status(), 503);
    assert_eq!((h.count("inbox"), h.count("dead_letter")), (0, 0));
    assert_eq!(
        h.receiver
            .counters
            .bad_signature
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );

    // During a rotation Marketplacer may still sign with the previous secret.
    headers.pop();
    let previous = sign("previous-secret", body.as_bytes());
    headers.push(("Marketplacer-Hmac-256", &previous));
    assert_eq!(h.post(&headers, body.clone()).await.status(), 200);
    assert_eq!(h.count("inbox"), 1);
    headers.pop();
    let current = sign("current-secret", body.as_bytes());
    headers.push(("Marketplacer-Hmac-256", &current));
    assert_eq!(h.post(&headers, body).await.status(), 200);
    assert_eq!(h.placed_orders_within(Duration::from_secs(10)).await, 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seller_webhook_with_its_static_token_is_taken_and_a_wrong_token_is_503() {
    // Seller webhooks cannot be signed; they carry a static header set up in Marketplacer.
    let secrets = Secrets::new(Some("operator-secret"), None)
        .unwrap()
        .with_tokens(Some("seller-token"), Some("old-seller-token"))
        .unwrap();
    let h = start(secrets, ServeConfig::default()).await;
    let (headers, body) = first_order();
    let mut headers = borrowed(&headers);

    headers.push(("X-Marketsync-Token", "seller-tokem"));
    let wrong = h.post(&headers, body.clone()).await;
    assert_eq!(wrong.status(), 503);
    assert!(wrong.headers().contains_key("retry-after"));
    assert_eq!(wrong.text().await.unwrap().trim(), "token wrong");
    headers.pop();
    let missing = h.post(&headers, body.clone()).await;
    assert_eq!(missing.text().await.unwrap().trim(), "signature missing");
    assert_eq!((h.count("inbox"), h.count("dead_letter")), (0, 0));

    headers.push(("X-Marketsync-Token", "old-seller-token"));
    assert_eq!(h.post(&headers, body.clone()).await.status(), 200);
    headers.pop();
    headers.push(("X-Marketsync-Token", "seller-token"));
    let repeat = h.post(&headers, body).await;
    assert_eq!(repeat.status(), 200);
    assert_eq!(h.count("inbox"), 1);
    assert_eq!(h.placed_orders_within(Duration::from_secs(10)).await, 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_a_dead_letter_with_its_headers_size_and_first_kib() {
    let config = ServeConfig {
        body_limit: 4096,
        ..ServeConfig::default()
    };
    let h = start(Secrets::default(), config).await;
    let body = format!("{{\"id\":\"E9\",\"pad\":\"{}\"}}", "x".repeat(10_000));
    let response = h
        .post(
            &[
                ("Marketplacer-Vertical", "petmarket"),
                ("Idempotency-Key", "petmarket:9"),
            ],
            body.clone(),
        )
        .await;
    assert_eq!(response.status(), 200);
    let letters = h.dead_letters();
    assert_eq!(letters.len(), 1);
    let kept: Json = serde_json::from_str(&letters[0].text).unwrap();
    assert_eq!(kept["size"], body.len());
    assert_eq!(kept["headers"]["Idempotency-Key"], "petmarket:9");
    assert_eq!(kept["body_head"].as_str().unwrap(), &body[..1024]);
    assert_eq!(h.count("inbox"), 0);
    // Just under the limit is read as usual (here: not a delivery, so a dead letter too, but
    // of the whole body).
    let small = format!("{{\"pad\":\"{}\"}}", "y".repeat(4000));
    assert_eq!(h.post(&[], small.clone()).await.status(), 200);
    let whole = "y".repeat(4000);
    assert!(h.dead_letters().iter().any(|l| l.text.contains(&whole)));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_and_draining_turns_readyz_and_webhooks_to_503() {
    let h = start(Secrets::default(), ServeConfig::default()).await;
    assert_eq!(h.get("/livez").await, 200);
    assert_eq!(h.get("/readyz").await, 200);
    // Another path, or another method, is never a 4xx (that would disable the webhook).
    assert_eq!(h.get("/webhooks/elsewhere").await, 503);
    assert_eq!(h.get(WEBHOOK_PATH).await, 503);
    h.receiver.drain();
    assert_eq!(h.get("/readyz").await, 503);
    assert_eq!(h.get("/livez").await, 200);
    let (headers, body) = first_order();
    let response = h.post(&borrowed(&headers), body).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(h.count("inbox"), 0);
    h.stop().await;
}

/// A small xorshift generator: the same cases on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bodies_and_headers_are_only_ever_answered_200_429_or_5xx() {
    for secrets in [
        Secrets::default(),
        Secrets::new(Some("s3cret"), None).unwrap(),
    ] {
        let config = ServeConfig {
            body_limit: 2048,
            ..ServeConfig::default()
        };
        let h = start(secrets, config).await;
        let (_, order) = first_order();
        let fragments = [
            "{",
            "}",
            "\"id\":",
            "\"E1\"",
            "\"payload\":",
            "{\"data\":{\"node\":{\"__typename\":\"Invoice\"}}}",
            "{\"errors\":[{\"message\":\"boom\"}]}",
            "\"event_name\":\"create\"",
            "null",
            "[",
            "]",
            ",",
            "\u{0}",
            "é",
            &order,
        ];
        let header_values = ["", "petmarket", "x", "AA==", "not base64", "31742", "é"];
        let header_names = [
            "Marketplacer-Vertical",
            "Idempotency-Key",
            "Marketplacer-Sequence",
            "Marketplacer-Hmac-256",
            "Content-Type",
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for case in 0..150 {
            let mut body: Vec<u8> = Vec::new();
            for _ in 0..rng.next() % 8 {
                body.extend_from_slice(rng.pick(&fragments).as_bytes());
            }
            if case % 10 == 0 {
                // Bytes that are not UTF-8.
                body.extend_from_slice(&[0xff, 0xfe, (rng.next() % 256) as u8]);
            }
            let mut headers = Vec::new();
            for _ in 0..rng.next() % 4 {
                headers.push((rng.pick(&header_names), rng.pick(&header_values)));
            }
            let status = h.post(&headers, body).await.status().as_u16();
            assert!(
                status == 200 || status == 429 || status >= 500,
                "case {case}: answered {status}"
            );
        }
        assert_eq!(h.get("/livez").await, 200);
        h.stop().await;
    }
}

#[test]
fn sigterm_stops_serve_with_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = common::marketsync_command()
        .args(["serve", "--listen", "127.0.0.1:0", "--state"])
        .arg(dir.path().join("state.db"))
        // Nothing is sent: the key only has to look like one.
        .env("KLAVIYO_API_KEY", DEFAULT_API_KEY)
        .env("KLAVIYO_BASE_URL", "http://127.0.0.1:9")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let address = loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "serve ended early"
        );
        // The human log line: `… INFO listening webhooks="http://ADDR/webhooks/marketplacer" …`.
        if let Some((_, rest)) = line.split_once(" listening webhooks=\"http://") {
            break rest.split('/').next().unwrap().to_owned();
        }
    };
    let ready = std::net::TcpStream::connect(&address).is_ok();
    assert!(ready, "serve listens on {address}");
    let started = Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(status.code(), Some(0), "{rest}");
    assert!(started.elapsed() < Duration::from_secs(26), "{rest}");
    assert!(rest.contains(" stopped exit=0"), "{rest}");
}

#[test]
fn serve_help_names_every_variable_it_reads() {
    let output = common::marketsync()
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for variable in [
        "KLAVIYO_API_KEY",
        "KLAVIYO_BASE_URL",
        "MARKETPLACER_WEBHOOK_SECRET",
        "MARKETPLACER_WEBHOOK_SECRET_PREVIOUS",
        "MARKETPLACER_WEBHOOK_TOKEN",
        "MARKETPLACER_WEBHOOK_TOKEN_PREVIOUS",
        "MARKETSYNC_MAPPINGS",
        "MARKETSYNC_LOG_FORMAT",
        "MARKETSYNC_LOG",
    ] {
        assert!(help.contains(variable), "{variable} missing from:\n{help}");
    }
}

#[test]
fn serve_refuses_an_empty_secret_and_a_held_state_file_without_printing_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    let empty = common::marketsync()
        .args(["serve", "--listen", "127.0.0.1:0", "--state"])
        .arg(&state)
        .env("KLAVIYO_API_KEY", DEFAULT_API_KEY)
        .env("MARKETPLACER_WEBHOOK_SECRET", " ")
        .env("MARKETPLACER_WEBHOOK_SECRET_PREVIOUS", "old-secret-value")
        .output()
        .unwrap();
    assert_eq!(empty.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&empty.stderr);
    assert!(stderr.contains("MARKETPLACER_WEBHOOK_SECRET"), "{stderr}");
    assert!(!stderr.contains("old-secret-value"), "{stderr}");
    let empty_token = common::marketsync()
        .args(["serve", "--listen", "127.0.0.1:0", "--state"])
        .arg(&state)
        .env("KLAVIYO_API_KEY", DEFAULT_API_KEY)
        .env("MARKETPLACER_WEBHOOK_TOKEN", "")
        .output()
        .unwrap();
    assert_eq!(empty_token.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&empty_token.stderr);
    assert!(stderr.contains("MARKETPLACER_WEBHOOK_TOKEN"), "{stderr}");

    // One writer per state file: serve takes the lock as run does.
    let _held = marketsync::store::lock::WriterLock::acquire(&state).unwrap();
    let held = common::marketsync()
        .args(["serve", "--listen", "127.0.0.1:0", "--state"])
        .arg(&state)
        .env("KLAVIYO_API_KEY", DEFAULT_API_KEY)
        .output()
        .unwrap();
    assert_eq!(
        held.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&held.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_in_flight_at_shutdown_is_finished_and_committed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut h = start(Secrets::default(), ServeConfig::default()).await;
    let (headers, body) = first_order();
    let mut request = format!(
        "POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: marketsync\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in &headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let address = h.url.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let (first, rest) = body.as_bytes().split_at(body.len() / 2);
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // SIGTERM arrives while half the body is in.
    h.begin_stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stream.write_all(rest).await.unwrap();
    let mut answer = vec![0u8; 1024];
    let n = stream.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(h.count("inbox"), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_does_not_take_the_write_is_answered_503_and_the_resend_is_kept_once() {
    let config = ServeConfig {
        deadline: Duration::from_secs(1),
        ..ServeConfig::default()
    };
    let h = start(Secrets::default(), config).await;
    // Another writer holds SQLite's write lock (what a stuck disk or a stray process does).
    let blocker = rusqlite::Connection::open(&h.state).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (headers, body) = first_order();
    let response = h.post(&borrowed(&headers), body.clone()).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(h.get("/readyz").await, 503);
    assert_eq!(h.get("/livez").await, 200);
    blocker.execute_batch("ROLLBACK").unwrap();
    // The intake that timed out may still land once the lock is free: the resend is then a
    // duplicate. Either way it is kept exactly once.
    let until = Instant::now() + Duration::from_secs(10);
    while h.get("/readyz").await != 200 {
        assert!(Instant::now() < until, "the store never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(h.post(&borrowed(&headers), body).await.status(), 200);
    assert_eq!(h.count("inbox"), 1);
    assert_eq!(h.placed_orders_within(Duration::from_secs(10)).await, 1);
    h.stop().await;
}

/// `replay` drives `serve` as Marketplacer would: every sample capture, signed, is answered 200
/// and nothing is disabled; what the receiver stored is what a batch `run` of the same file
/// stores; sent again, every delivery is a repeat and nothing is queued twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_drives_serve_as_marketplacer_would() {
    use marketsync::replay::{Delivery, Options, replay_all};
    use marketsync::source::webhook::{Defaults, outgoing};
    let secret = "whsec-replay-test";
    let h = start(
        Secrets::new(Some(secret), None).unwrap(),
        ServeConfig::default(),
    )
    .await;
    let text = std::fs::read_to_string(common::repo("examples/orders.ndjson")).unwrap();
    let deliveries: Vec<Delivery> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(n, line)| Delivery {
            origin: format!("orders.ndjson:{}", n + 1),
            outgoing: outgoing(line, &Defaults::default()).unwrap(),
        })
        .collect();
    let options = || Options {
        concurrency: 4,
        secret: Some(secret.as_bytes().to_vec()),
        backoff_base: Duration::from_millis(50),
        max_attempts: 3,
        ..Options::default()
    };
    let url: reqwest::Url = format!("{}{WEBHOOK_PATH}", h.url).parse().unwrap();
    let summary = replay_all(url.clone(), options(), deliveries.clone()).await;
    assert_eq!(summary.accepted, deliveries.len() as u64, "{summary:?}");
    assert!(summary.failed.is_empty() && summary.disabled_at.is_none());
    // The same deliveries taken in by a batch intake give the same inbox.
    let engine = common::engine();
    let batch = std::sync::Mutex::new(Store::in_memory().unwrap());
    let report = marketsync::sync::intake(
        &engine,
        &batch,
        &[marketsync::source::Input::File(common::repo(
            "examples/orders.ndjson",
        ))],
        1,
        &mut Vec::new(),
        &std::sync::atomic::AtomicBool::new(false),
        &std::sync::atomic::AtomicUsize::new(0),
    )
    .unwrap();
    assert_eq!(
        h.count("inbox") as usize,
        report.records - report.repeated,
        "{report:?}"
    );
    let queued = h.count("outbox");
    assert!(queued > 0);
    // Marketplacer retries everything (a lost answer): all repeats, nothing queued again.
    let again = replay_all(url, options(), deliveries.clone()).await;
    assert_eq!(again.accepted, deliveries.len() as u64);
    assert_eq!(h.count("outbox"), queued);
    assert!(h.placed_orders_within(Duration::from_secs(10)).await > 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_slow_to_send_its_headers_is_disconnected_while_others_are_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = ServeConfig {
        header_timeout: Duration::from_secs(1),
        ..ServeConfig::default()
    };
    let h = start(Secrets::default(), config).await;
    let address = h.url.trim_start_matches("http://").to_owned();
    let started = Instant::now();
    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    slow.write_all(format!("POST {WEBHOOK_PATH} HT").as_bytes())
        .await
        .unwrap();
    let silent = tokio::net::TcpStream::connect(&address).await.unwrap();
    // Meanwhile a webhook on another connection is answered as usual.
    let (headers, body) = first_order();
    assert_eq!(h.post(&borrowed(&headers), body).await.status(), 200);
    for (what, mut stream) in [("half a request line", slow), ("nothing", silent)] {
        let mut answer = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        assert!(
            read.is_ok(),
            "a client that sent {what} was still connected after 5 s"
        );
        assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "disconnected after {took:?}, not at the 1 s header timeout"
    );
    assert_eq!(h.count("inbox"), 1);
    h.stop().await;
}

/// Issue 13: a store failure in the middle of a delivery's intake (its inbox row written, its
/// first request refused by the database) is answered 503 and leaves no row of it; once the
/// store takes writes again, the resend is kept and queued exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failure_after_the_inbox_row_is_503_and_leaves_no_partial_row() {
    let h = start(Secrets::default(), ServeConfig::default()).await;
    h.sql(
        "CREATE TRIGGER injected BEFORE INSERT ON outbox
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
    );
    let (headers, body) = first_order();
    let response = h.post(&borrowed(&headers), body.clone()).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let nothing = ["inbox", "outbox", "dead_letter", "warning", "ledger"].map(|t| (t, 0));
    assert_eq!(h.rows_of_deliveries(), nothing);

    h.sql("DROP TRIGGER injected");
    let response = h.post(&borrowed(&headers), body.clone()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "received\n");
    assert_eq!(h.count("inbox"), 1);
    let queued = h.count("outbox");
    assert!(queued > 0);
    let again = h.post(&borrowed(&headers), body).await;
    assert_eq!(again.text().await.unwrap(), "duplicate: already received\n");
    assert_eq!((h.count("inbox"), h.count("outbox")), (1, queued));
    assert_eq!(h.placed_orders_within(Duration::from_secs(10)).await, 1);
    h.stop().await;
}

/// Issue 13: the same when the failure hits a dead letter: a delivery its mappings refuse (no
/// email), and a body that is not JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failure_writing_a_dead_letter_is_503_and_leaves_no_partial_row() {
    let h = start(Secrets::default(), ServeConfig::default()).await;
    h.sql(
        "CREATE TRIGGER injected BEFORE INSERT ON dead_letter
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
    );
    let orders = common::synthetic_orders(1).replace("\"buyer0@example.com\"", "null");
    let (headers, body) = captures(&orders).remove(0);
    let refused = h.post(&borrowed(&headers), body.clone()).await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let not_json = h
        .post(&[("Marketplacer-Vertical", "petmarket")], "{not json")
        .await;
    assert_eq!(not_json.status(), 503);
    let nothing = ["inbox", "outbox", "dead_letter", "warning", "ledger"].map(|t| (t, 0));
    assert_eq!(h.rows_of_deliveries(), nothing);

    h.sql("DROP TRIGGER injected");
    assert_eq!(
        h.post(&borrowed(&headers), body.clone()).await.status(),
        200
    );
    let letters = h.count("dead_letter");
    assert!(letters > 0, "the mappings refuse a delivery with no email");
    assert_eq!(h.count("inbox"), 1);
    let again = h.post(&borrowed(&headers), body).await;
    assert_eq!(again.text().await.unwrap(), "duplicate: already received\n");
    assert_eq!((h.count("inbox"), h.count("dead_letter")), (1, letters));
    let not_json = h
        .post(&[("Marketplacer-Vertical", "petmarket")], "{not json")
        .await;
    assert_eq!(not_json.status(), 200);
    assert_eq!(h.count("dead_letter"), letters + 1);
    h.stop().await;
}

/// Issue 13: webhooks arriving together share commits. 200 deliveries over 32 connections are
/// all answered 200 and stored once each, in fewer commits than deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_arriving_together_are_each_kept_once_in_fewer_commits() {
    let h = Arc::new(start(Secrets::default(), ServeConfig::default()).await);
    let deliveries = captures(&common::synthetic_orders(200));
    let queue = Arc::new(Mutex::new(deliveries));
    let connections: Vec<_> = (0..32)
        .map(|_| {
            let (h, queue) = (Arc::clone(&h), Arc::clone(&queue));
            tokio::spawn(async move {
                // One client, so one connection, each.
                let client = reqwest::Client::new();
                let mut statuses = Vec::new();
                loop {
                    let Some((headers, body)) = queue.lock().unwrap().pop() else {
                        return statuses;
                    };
                    let mut request = client.post(format!("{}{WEBHOOK_PATH}", h.url)).body(body);
                    for (name, value) in headers {
                        request = request.header(name, value);
                    }
                    statuses.push(request.send().await.unwrap().status().as_u16());
                }
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for connection in connections {
        statuses.extend(connection.await.unwrap());
    }
    assert_eq!(statuses, vec![200; 200]);
    let accepted = h.receiver.counters.accepted.load(Ordering::Relaxed);
    assert_eq!(accepted, 200);
    let conn = rusqlite::Connection::open(&h.state).unwrap();
    let (rows, deliveries): (i64, i64) = conn
        .query_row(
            "SELECT count(*), count(DISTINCT delivery_id) FROM inbox",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((rows, deliveries), (200, 200));
    // Every order's Placed Order is queued (or already sent) exactly once.
    let placed: i64 = conn
        .query_row(
            "SELECT count(*) FROM outbox WHERE mapping = 'placed-order'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(placed, 200);
    let commits = h.receiver.commits();
    assert!(commits > 0 && commits < 200, "{commits} commits");
    eprintln!("200 webhooks over 32 connections: {commits} commits");
    Arc::into_inner(h).unwrap().stop().await;
}

/// Issue 13: one delivery whose writes fail inside a shared commit is answered 503 and leaves
/// no row, while the others of that commit are answered 200 and kept. The commit is made
/// shared on purpose: a first webhook holds the writer (another connection holds SQLite's
/// write lock) while the others queue behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_failing_inside_a_shared_commit_fails_alone() {
    // No sender: nothing but the writer uses the store while its lock is held.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    let store = Arc::new(Mutex::new(Store::open(&state).unwrap()));
    let receiver = Receiver::new(
        Arc::new(common::engine()),
        store,
        Secrets::default(),
        None,
        ServeConfig::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}{WEBHOOK_PATH}", listener.local_addr().unwrap());
    let app = serve::router(Arc::clone(&receiver));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let sql = rusqlite::Connection::open(&state).unwrap();
    // Fails the failing delivery's first request, after its inbox row is written.
    sql.execute_batch(
        "CREATE TRIGGER injected BEFORE INSERT ON outbox
         WHEN (SELECT delivery_id FROM inbox WHERE id = NEW.inbox_id) = 'synthetic-delivery-7'
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
    )
    .unwrap();
    let deliveries = captures(&common::synthetic_orders(20));
    let post = |(headers, body): (Vec<(String, String)>, String)| {
        let mut request = reqwest::Client::new().post(&url).body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
    };

    sql.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut deliveries = deliveries.into_iter();
    let first = post(deliveries.next().unwrap());
    // The first webhook is mapped and its commit waits for the write lock.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.waiting_to_commit(), 0);
    let others: Vec<_> = deliveries.map(post).collect();
    let until = Instant::now() + Duration::from_secs(3);
    while receiver.waiting_to_commit() < 19 {
        assert!(Instant::now() < until, "the webhooks never queued");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sql.execute_batch("ROLLBACK").unwrap();

    assert_eq!(first.await.unwrap(), 200);
    let mut statuses = Vec::new();
    for other in others {
        statuses.push(other.await.unwrap());
    }
    // synthetic-delivery-7 is the eighth capture, the seventh of the others.
    let mut expected = vec![200; 19];
    expected[6] = 503;
    assert_eq!(statuses, expected);
    assert_eq!(receiver.commits(), 2, "the first alone, then the other 19");
    let count = |sql_text: &str| -> i64 { sql.query_row(sql_text, [], |r| r.get(0)).unwrap() };
    assert_eq!(count("SELECT count(*) FROM inbox"), 19);
    assert_eq!(
        count("SELECT count(*) FROM inbox WHERE delivery_id = 'synthetic-delivery-7'"),
        0
    );
    assert_eq!(
        count("SELECT count(DISTINCT inbox_id) FROM outbox WHERE mapping = 'placed-order'"),
        19
    );
    assert_eq!(count("SELECT count(*) FROM dead_letter"), 0);
}

/// The value of one series in a Prometheus exposition (name and labels as rendered).
fn series(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in\n{exposition}"))
        .parse()
        .unwrap()
}

/// Issue 14: `/metrics` has every webhook outcome and both lanes from the start, and each
/// moves as webhooks are accepted, repeated, refused for their signature and refused by a
/// failing store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_accepted_duplicate_refused_and_failing_store_webhooks() {
    let h = start(
        Secrets::new(Some("s3cret"), None).unwrap(),
        ServeConfig::default(),
    )
    .await;
    let scrape = || async {
        let response = reqwest::get(format!("{}/metrics", h.url)).await.unwrap();
        assert_eq!(response.status(), 200);
        let kind = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
        response.text().await.unwrap()
    };
    let outcome = |text: &str, outcome: &str| {
        series(
            text,
            &format!("marketsync_webhook_requests_total{{outcome=\"{outcome}\"}}"),
        )
    };
    let start = scrape().await;
    for name in [
        "accepted",
        "duplicate",
        "bad_signature",
        "store_unavailable",
    ] {
        assert_eq!(outcome(&start, name), 0.0, "{name}");
    }
    assert_eq!(
        series(&start, r#"marketsync_queue_requests{lane="profile"}"#),
        0.0
    );
    assert_eq!(
        series(&start, "marketsync_webhook_last_accepted_timestamp_seconds"),
        0.0
    );

    let mut orders = captures(&common::synthetic_orders(2)).into_iter();
    let (headers, body) = orders.next().unwrap();
    let mut headers = borrowed(&headers);
    assert_eq!(h.post(&headers, body.clone()).await.status(), 503);
    let signature = sign("s3cret", body.as_bytes());
    headers.push(("Marketplacer-Hmac-256", &signature));
    assert_eq!(h.post(&headers, body.clone()).await.status(), 200);
    assert_eq!(h.post(&headers, body).await.status(), 200);

    h.sql(
        "CREATE TRIGGER injected BEFORE INSERT ON outbox
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
    );
    let (headers, body) = orders.next().unwrap();
    let mut headers = borrowed(&headers);
    let signature = sign("s3cret", body.as_bytes());
    headers.push(("Marketplacer-Hmac-256", &signature));
    assert_eq!(h.post(&headers, body).await.status(), 503);

    let text = scrape().await;
    assert_eq!(outcome(&text, "accepted"), 1.0);
    assert_eq!(outcome(&text, "duplicate"), 1.0);
    assert_eq!(outcome(&text, "bad_signature"), 1.0);
    assert_eq!(outcome(&text, "store_unavailable"), 1.0);
    assert_eq!(
        series(
            &text,
            r#"marketsync_webhook_request_duration_seconds_count{outcome="accepted"}"#
        ),
        1.0
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let last = series(&text, "marketsync_webhook_last_accepted_timestamp_seconds");
    assert!(now - last < 60.0, "{last} vs {now}");
    // The Placed Order reaches the stand-in: sent, with its lag observed.
    assert_eq!(h.placed_orders_within(Duration::from_secs(10)).await, 1);
    let text = scrape().await;
    assert_eq!(
        series(
            &text,
            r#"marketsync_klaviyo_requests_total{endpoint="/api/events",mapping="placed-order",outcome="sent"}"#
        ),
        1.0
    );
    assert_eq!(
        series(
            &text,
            r#"marketsync_delivery_lag_seconds_count{lane="transaction",mapping="placed-order"}"#
        ),
        1.0
    );
    h.stop().await;
}
