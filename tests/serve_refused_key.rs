//! Klaviyo refusing the API key while `serve` runs: webhooks are still taken and kept, `/readyz`
//! stays 200 and says that sending stopped, and the refusal is logged as an error when it
//! happens and again while it lasts. Its own test binary: it installs the global log
//! subscriber, to read the events.

mod common;

use marketsync::serve::{self, Receiver, ServeConfig, WEBHOOK_PATH};
use marketsync::sink::http::ApiKey;
use marketsync::sink::{Sink, SinkConfig, SinkError};
use marketsync::source::webhook::Secrets;
use marketsync::standin::{Config, StandIn};
use marketsync::store::Store;
use serde_json::Value as Json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const REFUSED_KEY: &str = "pk_refused_key_canary";

/// Log events written as JSON lines into a buffer shared with the test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn events(&self) -> Vec<Json> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    fn errors_starting(&self, text: &str) -> usize {
        self.events()
            .iter()
            .filter(|e| e["level"] == "ERROR")
            .filter(|e| e["message"].as_str().is_some_and(|m| m.starts_with(text)))
            .count()
    }
}

/// The `n`th synthetic order capture: its headers and its body as sent.
fn order(n: usize) -> (Vec<(String, String)>, String) {
    let text = common::synthetic_orders(n + 1);
    let capture: Json = serde_json::from_str(text.lines().nth(n).unwrap()).unwrap();
    let headers = capture["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    (headers, capture["body"].to_string())
}

async fn post(url: &str, (headers, body): (Vec<(String, String)>, String)) -> u16 {
    let mut request = reqwest::Client::new()
        .post(format!("{url}{WEBHOOK_PATH}"))
        .body(body);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_keeps_webhooks_taken_says_so_on_readyz_and_is_logged_while_it_lasts() {
    let logs = Captured::default();
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .init();
    let standin = StandIn::start(Config::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    let store = Arc::new(Mutex::new(Store::open(&state).unwrap()));
    let sink = Sink::new(
        SinkConfig::new(&standin.url(), ApiKey::new(REFUSED_KEY)),
        Arc::clone(&store),
    );
    let config = ServeConfig {
        refusal_reminder: Duration::from_millis(300),
        ..ServeConfig::default()
    };
    let receiver = Receiver::new(
        Arc::new(common::engine()),
        store,
        Secrets::default(),
        Some(Arc::clone(&sink)),
        config,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(serve::serve(
        receiver,
        Arc::clone(&sink),
        listener,
        None,
        async {
            let _ = stopped.await;
        },
    ));

    assert_eq!(post(&url, order(0)).await, 200);
    let until = Instant::now() + Duration::from_secs(10);
    while sink.refused().is_none() {
        assert!(Instant::now() < until, "the key was never refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused_at = Instant::now();
    // Still taking webhooks: ready, and saying that nothing is sent.
    let readyz = reqwest::get(format!("{url}/readyz")).await.unwrap();
    assert_eq!(readyz.status(), 200);
    let said = readyz.text().await.unwrap();
    assert!(
        said.contains("sending stopped: Klaviyo refused the API key (401)"),
        "{said}"
    );
    assert_eq!(post(&url, order(1)).await, 200);
    let inbox: i64 = rusqlite::Connection::open(&state)
        .unwrap()
        .query_row("SELECT count(*) FROM inbox", [], |r| r.get(0))
        .unwrap();
    assert_eq!(inbox, 2);
    assert!(standin.accepted().events.is_empty());

    // Logged once when it happened, then again and again while it lasts.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(logs.errors_starting("Klaviyo refused the API key"), 1);
    let reminders = logs.errors_starting("sending is still stopped: Klaviyo refused the API key");
    let at_most = (refused_at.elapsed().as_millis() / 300) as usize + 1;
    assert!(
        (2..=at_most).contains(&reminders),
        "{reminders} reminders, not one every 300 ms"
    );
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(!text.contains(REFUSED_KEY), "{text}");

    stop.send(()).unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(30), serving)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(outcome, Err(SinkError::KeyRefused { status: 401, .. })),
        "{outcome:?}"
    );
    standin.shutdown().await;
}
