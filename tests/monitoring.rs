//! Monitoring: the series `/metrics` exports move as the sync does, and the alert rules in
//! `deploy/prometheus/` pass promtool's own unit tests.

mod common;

use marketsync::metrics::Metrics;
use marketsync::sink::SinkConfig;
use marketsync::sink::http::ApiKey;
use marketsync::source::Input;
use marketsync::standin::{Config, DEFAULT_API_KEY, Faults, StandIn};
use marketsync::store::Store;
use marketsync::sync;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The sum of the samples of `name` whose labels include every one of `labels`
/// (`key="value"` each), from an exposition in the Prometheus text format.
fn sum(exposition: &str, name: &str, labels: &[&str]) -> f64 {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            (metric == name && labels.iter().all(|l| rest.contains(l)))
                .then(|| value.parse::<f64>().unwrap())
        })
        .sum()
}

fn sink_config(standin: &StandIn, key: &str, metrics: &Arc<Metrics>) -> SinkConfig {
    let mut config = SinkConfig::new(&standin.url(), ApiKey::new(key));
    config.time_scale = 20.0;
    config.max_attempts = 12;
    config.timeout = Duration::from_secs(5);
    config.metrics = Arc::clone(metrics);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_senders_series_follow_what_was_sent_retried_and_throttled() {
    let standin = StandIn::start(Config {
        time_scale: 20.0,
        faults: Faults {
            throttle_rate: 0.2,
            error_5xx_rate: 0.1,
            seed: 11,
            ..Faults::none()
        },
        ..Config::default()
    })
    .await
    .unwrap();
    let engine = Arc::new(common::engine());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orders.ndjson");
    std::fs::write(&path, common::synthetic_orders(20)).unwrap();
    let store = Arc::new(Mutex::new(Store::in_memory().unwrap()));
    let metrics = Arc::new(Metrics::default());
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let (_, delivery) = sync::run(
        Arc::clone(&engine),
        Arc::clone(&store),
        vec![Input::File(path)],
        2,
        sink_config(&standin, DEFAULT_API_KEY, &metrics),
        Box::new(std::io::sink()),
    )
    .await
    .unwrap();
    let text = metrics.render();
    let accepted = standin.accepted();
    let placed = accepted.events_named("Placed Order").count() as f64;
    assert_eq!(placed, 20.0);

    let sent_placed = sum(
        &text,
        "marketsync_klaviyo_requests_total",
        &[r#"mapping="placed-order""#, r#"outcome="sent""#],
    );
    assert_eq!(sent_placed, placed, "{text}");
    let sent: usize = delivery.sent.values().sum();
    assert_eq!(
        sum(
            &text,
            "marketsync_klaviyo_requests_total",
            &[r#"outcome="sent""#]
        ),
        sent as f64
    );
    let retried = sum(
        &text,
        "marketsync_klaviyo_requests_total",
        &[r#"outcome="retried""#],
    );
    assert_eq!(retried, delivery.retried as f64);
    assert!(retried > 0.0, "faults were injected: {text}");
    assert!(
        sum(&text, "marketsync_klaviyo_rate_limited_total", &[]) > 0.0,
        "{text}"
    );
    // One lag observation per Placed Order accepted, every one of them well inside an hour.
    let lag = |suffix: &str, extra: &[&str]| {
        let mut labels = vec![r#"mapping="placed-order""#];
        labels.extend_from_slice(extra);
        sum(
            &text,
            &format!("marketsync_delivery_lag_seconds{suffix}"),
            &labels,
        )
    };
    assert_eq!(lag("_count", &[]), placed);
    assert_eq!(lag("_bucket", &[r#"le="3600""#]), placed);
    let last = sum(
        &text,
        "marketsync_klaviyo_last_success_timestamp_seconds",
        &[r#"endpoint="/api/events""#],
    );
    assert!(last >= started, "{last} < {started}");
    assert_eq!(sum(&text, "marketsync_klaviyo_key_refused", &[]), 0.0);
    standin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_sets_its_gauge() {
    let standin = StandIn::start(Config::default()).await.unwrap();
    let engine = Arc::new(common::engine());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orders.ndjson");
    std::fs::write(&path, common::synthetic_orders(2)).unwrap();
    let store = Arc::new(Mutex::new(Store::in_memory().unwrap()));
    let metrics = Arc::new(Metrics::default());
    assert_eq!(
        sum(&metrics.render(), "marketsync_klaviyo_key_refused", &[]),
        0.0
    );
    let result = sync::run(
        engine,
        store,
        vec![Input::File(path)],
        2,
        sink_config(&standin, "pk_wrong", &metrics),
        Box::new(std::io::sink()),
    )
    .await;
    assert!(result.is_err());
    assert_eq!(
        sum(&metrics.render(), "marketsync_klaviyo_key_refused", &[]),
        1.0
    );
    standin.shutdown().await;
}

/// promtool's rule unit tests: each alert fires where it must and stays quiet where it must
/// not. CI installs promtool (Debian's `prometheus` package); elsewhere the test says so and
/// passes only outside CI.
#[test]
fn the_alert_rules_pass_their_promtool_tests() {
    let rules = common::repo("deploy/prometheus");
    let check = std::process::Command::new("promtool")
        .args(["test", "rules", "marketsync.rules.test.yml"])
        .current_dir(&rules)
        .output();
    match check {
        Ok(output) => assert!(
            output.status.success(),
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(err) if std::env::var_os("CI").is_none() => {
            eprintln!("promtool not run ({err}); install Debian's prometheus package");
        }
        Err(err) => panic!("promtool is needed in CI: {err}"),
    }
}
