//! Monitoring: the series `/metrics` exports move as the sync does, and the alert rules in
//! `deploy/prometheus/` pass promtool's own unit tests.

mod common;

use marketsync::klaviyo::Endpoint;
use marketsync::metrics::{Metrics, WebhookOutcome};
use marketsync::sink::SinkConfig;
use marketsync::sink::http::ApiKey;
use marketsync::sink::limit::Limit;
use marketsync::source::Input;
use marketsync::standin::{Config, DEFAULT_API_KEY, Faults, StandIn};
use marketsync::store::Store;
use marketsync::sync;
use std::collections::{BTreeMap, BTreeSet};
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

/// Time waited on limits is time a request slept for a slot: profiles paced at one a
/// (scaled) second wait, events far under their limit wait not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_waited_on_limits_counts_only_requests_that_waited() {
    let standin = StandIn::start(Config {
        time_scale: 20.0,
        ..Config::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orders.ndjson");
    std::fs::write(&path, common::synthetic_orders(5)).unwrap();
    let metrics = Arc::new(Metrics::default());
    let mut config = sink_config(&standin, DEFAULT_API_KEY, &metrics);
    // One profile at a time, each on its own: the five profiles queue for slots.
    config.bulk = false;
    config.limits.insert(
        Endpoint::CreateOrUpdateProfile,
        Limit::per_second_and_minute(1, 700),
    );
    let (_, delivery) = sync::run(
        Arc::new(common::engine()),
        Arc::new(Mutex::new(Store::in_memory().unwrap())),
        vec![Input::File(path)],
        2,
        config,
        Box::new(std::io::sink()),
    )
    .await
    .unwrap();
    let text = metrics.render();
    let waited = |endpoint: Endpoint| {
        sum(
            &text,
            "marketsync_klaviyo_rate_limit_wait_seconds_total",
            &[&format!("endpoint=\"{}\"", endpoint.path())],
        )
    };
    assert_eq!(
        standin
            .stats()
            .endpoint(Endpoint::CreateOrUpdateProfile)
            .accepted,
        5
    );
    // Four profiles waited for the one before, a scaled second (50 ms) each; the sender books a
    // slot only when it can go within a burst window, so part of a wait may be spent queued in
    // the store, which is not waiting on the limiter: at least half of it is counted.
    assert!(
        waited(Endpoint::CreateOrUpdateProfile) >= 4.0 * 0.05 / 2.0,
        "{text}"
    );
    assert_eq!(waited(Endpoint::CreateEvent), 0.0, "{text}");
    let all = sum(
        &text,
        "marketsync_klaviyo_rate_limit_wait_seconds_total",
        &[],
    );
    assert!(
        (all - delivery.waited_on_limits.as_secs_f64()).abs() < 1e-6,
        "{all} vs {:?}",
        delivery.waited_on_limits
    );
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

/// The value of one series, written as the exposition writes it (`name{label="value",...}`).
fn value(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.parse().unwrap())
}

/// [`value`], for a series that must be there.
fn must(exposition: &str, series: &str) -> f64 {
    value(exposition, series).unwrap_or_else(|| panic!("no {series} in\n{exposition}"))
}

async fn scrape(admin: &str) -> String {
    let response = reqwest::get(format!("{admin}/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Requests queued so far (sent or not), by lane and by mapping, read from the state file as
/// an operator would: what a delivery put in the queue, whatever became of it.
fn queued(state: &std::path::Path) -> (BTreeMap<String, f64>, BTreeMap<String, f64>) {
    let conn = rusqlite::Connection::open(state).unwrap();
    let count_by = |column: &str| -> BTreeMap<String, f64> {
        let mut query = conn
            .prepare(&format!(
                "SELECT {column}, count(*) FROM outbox GROUP BY {column}"
            ))
            .unwrap();
        query
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as f64)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    (count_by("lane"), count_by("mapping"))
}

fn minus(after: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

async fn post_capture(webhooks: &str, capture: &str) {
    let capture: serde_json::Value = serde_json::from_str(capture).unwrap();
    let mut request = reqwest::Client::new()
        .post(webhooks)
        .body(capture["body"].to_string());
    for (name, value) in capture["headers"].as_object().unwrap() {
        request = request.header(name.as_str(), value.as_str().unwrap());
    }
    assert_eq!(request.send().await.unwrap().status(), 200);
}

/// Scrapes until `done` holds of the exposition, for up to `wait`; returns that exposition.
async fn scrape_until(
    admin: &str,
    what: &str,
    wait: Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    let until = std::time::Instant::now() + wait;
    loop {
        let text = scrape(admin).await;
        if done(&text) {
            return text;
        }
        assert!(
            std::time::Instant::now() < until,
            "gave up waiting for {what}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue 14: `marketsync serve`, as deployed, with Klaviyo healthy, then slow (every answer
/// held longer than the sender waits), then healthy again. Scraped throughout, `/metrics`
/// must show what an operator needs to catch a late flow: the queue and its oldest request
/// growing per lane while nothing gets through, the calls that timed out as retries, the
/// last success standing still, and then the queue back at 0, the large lag recorded where
/// it belongs in the histogram, and the last success moving on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_metrics_follow_klaviyo_turning_slow_and_recovering() {
    /// How long Klaviyo stays slow: every request queued meanwhile waits at least this long.
    const SLOW_FOR: Duration = Duration::from_secs(3);
    let standin = StandIn::start(Config {
        time_scale: 10.0,
        ..Config::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    let mut command = common::marketsync_command();
    command
        .args(["serve", "--log-format", "json"])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        // Slow answers are held 2 s: each call gives up after 0.5 s and is tried again.
        .args(["--timeout", "0.5"])
        // The sender's clock runs as fast as the stand-in's: backoffs of tens of milliseconds.
        .args(["--time-scale", "10"])
        // The spell must not turn requests into dead letters: this test is about what the
        // series show while it lasts (dead letters have their own tests).
        .args(["--max-attempts", "1000"])
        .arg("--state")
        .arg(&state)
        .env("KLAVIYO_API_KEY", DEFAULT_API_KEY)
        .env("KLAVIYO_BASE_URL", standin.url());
    let mut serve = tokio::task::block_in_place(|| common::ServeProcess::start(command));
    let listening = serve.wait_for("listening", |e| e["message"] == "listening");
    let admin = listening["status_page_and_health"]
        .as_str()
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    let webhooks = listening["webhooks"].as_str().unwrap().to_owned();
    let engine = common::engine();
    let routes = engine.mapping_targets();
    let endpoints: BTreeSet<&str> = routes.iter().map(|(_, _, e)| e.path()).collect();
    let lanes = ["transaction", "profile"];
    let series = |name: &str, labels: &[(&str, &str)]| {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        format!("{name}{{{}}}", labels.join(","))
    };
    let depth = |lane: &str| series("marketsync_queue_requests", &[("lane", lane)]);
    let age = |lane: &str| series("marketsync_queue_oldest_age_seconds", &[("lane", lane)]);
    let last_success = |endpoint: &str| {
        series(
            "marketsync_klaviyo_last_success_timestamp_seconds",
            &[("endpoint", endpoint)],
        )
    };
    let lag = |suffix: &str, lane: &str, mapping: &str, le: Option<&str>| {
        let mut labels = vec![("lane", lane), ("mapping", mapping)];
        labels.extend(le.map(|le| ("le", le)));
        series(&format!("marketsync_delivery_lag_seconds{suffix}"), &labels)
    };

    // At start-up, on a new state file: every series the issue names, at 0.
    let start = scrape(&admin).await;
    assert_eq!(
        must(
            &start,
            &series(
                "marketsync_build_info",
                &[("version", env!("CARGO_PKG_VERSION"))]
            )
        ),
        1.0
    );
    for outcome in WebhookOutcome::ALL {
        let label = [("outcome", outcome.as_str())];
        assert_eq!(
            must(&start, &series("marketsync_webhook_requests_total", &label)),
            0.0
        );
        assert_eq!(
            must(
                &start,
                &series("marketsync_webhook_request_duration_seconds_count", &label)
            ),
            0.0
        );
    }
    assert_eq!(
        must(&start, "marketsync_webhook_last_accepted_timestamp_seconds"),
        0.0
    );
    for lane in lanes {
        assert_eq!(must(&start, &depth(lane)), 0.0);
        assert_eq!(must(&start, &age(lane)), 0.0);
    }
    for (mapping, lane, endpoint) in &routes {
        assert_eq!(
            must(&start, &lag("_count", lane.as_str(), mapping, None)),
            0.0
        );
        for outcome in ["sent", "retried", "dead_lettered"] {
            let labels = [
                ("endpoint", endpoint.path()),
                ("mapping", &**mapping),
                ("outcome", outcome),
            ];
            assert_eq!(
                must(
                    &start,
                    &series("marketsync_klaviyo_requests_total", &labels)
                ),
                0.0
            );
        }
    }
    for endpoint in Endpoint::ALL {
        let label = [("endpoint", endpoint.path())];
        for name in [
            "marketsync_klaviyo_rate_limited_total",
            "marketsync_klaviyo_rate_limit_wait_seconds_total",
        ] {
            assert_eq!(must(&start, &series(name, &label)), 0.0);
        }
    }
    for endpoint in &endpoints {
        assert_eq!(must(&start, &last_success(endpoint)), 0.0);
    }
    assert_eq!(must(&start, "marketsync_klaviyo_key_refused"), 0.0);

    // Klaviyo healthy: the first order goes straight through.
    let orders = common::synthetic_orders(2);
    let mut orders = orders.lines();
    post_capture(&webhooks, orders.next().unwrap()).await;
    let (first_lanes, first_mappings) = queued(&state);
    let first_total: f64 = first_lanes.values().sum();
    assert!(first_lanes.len() == 2, "both lanes: {first_lanes:?}");
    let healthy = scrape_until(
        &admin,
        "the first order sent",
        Duration::from_secs(10),
        |t| {
            sum(
                t,
                "marketsync_klaviyo_requests_total",
                &[r#"outcome="sent""#],
            ) == first_total
        },
    )
    .await;
    let success_before: BTreeMap<&str, f64> = endpoints
        .iter()
        .map(|e| (*e, must(&healthy, &last_success(e))))
        .collect();
    for (endpoint, at) in &success_before {
        assert!(*at > 0.0, "{endpoint} succeeded: {healthy}");
    }

    // Klaviyo turns slow: every answer held 2 s, longer than the sender waits.
    standin.set_faults(Faults {
        slow_rate: 1.0,
        slow: Duration::from_secs(2),
        ..Faults::none()
    });
    let posted = std::time::Instant::now();
    let posted_unix = unix_now();
    post_capture(&webhooks, orders.next().unwrap()).await;
    // Its requests were queued before this: each waits at least as long as from here.
    let stored = std::time::Instant::now();
    let (all_lanes, all_mappings) = queued(&state);
    let second_lanes = minus(&all_lanes, &first_lanes);
    let second_mappings = minus(&all_mappings, &first_mappings);
    assert_eq!(second_lanes.len(), 2, "both lanes: {second_lanes:?}");

    let early = scrape(&admin).await;
    let early_age = |lane: &str| must(&early, &age(lane));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let scraped_at = std::time::Instant::now();
    let during = scrape(&admin).await;
    let waited = posted.elapsed();
    for lane in lanes {
        // Everything the second order queued is still queued: nothing gets through.
        assert_eq!(must(&early, &depth(lane)), second_lanes[lane], "{early}");
        assert_eq!(must(&during, &depth(lane)), second_lanes[lane], "{during}");
        // The oldest ages as the clock does: 1.5 s more between the two scrapes, and never
        // older than the time since the order was posted.
        let later = must(&during, &age(lane));
        assert!(later >= early_age(lane) + 1.4, "{lane}: {early}\n{during}");
        assert!(
            later >= (scraped_at - posted).as_secs_f64() - 0.5 && later <= waited.as_secs_f64(),
            "{lane}: {later} s after {waited:?}"
        );
    }
    // Intake goes on: the second webhook was stored while Klaviyo was slow.
    assert!(
        must(
            &during,
            "marketsync_webhook_last_accepted_timestamp_seconds"
        ) >= posted_unix - 0.01
    );
    // No success, so no new lag observation, and the last success stands still.
    for (endpoint, at) in &success_before {
        assert_eq!(must(&during, &last_success(endpoint)), *at, "{endpoint}");
    }
    for (mapping, lane, _) in &routes {
        let lane = lane.as_str();
        assert_eq!(
            must(&during, &lag("_count", lane, mapping, None)),
            first_mappings.get(mapping.as_ref()).copied().unwrap_or(0.0),
            "{mapping}"
        );
    }
    // The calls that timed out are retries, in each lane.
    let retried_in = |t: &str, lane: &str| -> f64 {
        routes
            .iter()
            .filter(|(_, l, _)| l.as_str() == lane)
            .map(|(mapping, _, endpoint)| {
                let labels = [
                    ("endpoint", endpoint.path()),
                    ("mapping", &**mapping),
                    ("outcome", "retried"),
                ];
                must(t, &series("marketsync_klaviyo_requests_total", &labels))
            })
            .sum()
    };
    let slow = scrape_until(&admin, "the slow spell", Duration::from_secs(10), |t| {
        stored.elapsed() >= SLOW_FOR && lanes.iter().all(|lane| retried_in(t, lane) >= 1.0)
    })
    .await;
    for lane in lanes {
        assert_eq!(must(&slow, &depth(lane)), second_lanes[lane], "{slow}");
    }

    // Klaviyo recovers: the queue drains, and what waited is recorded as the lag it had.
    standin.set_faults(Faults::none());
    let recovered_unix = unix_now();
    let after = scrape_until(&admin, "the queue to drain", Duration::from_secs(15), |t| {
        lanes.iter().all(|lane| value(t, &depth(lane)) == Some(0.0))
    })
    .await;
    let total = first_total + second_lanes.values().sum::<f64>();
    assert_eq!(
        sum(
            &after,
            "marketsync_klaviyo_requests_total",
            &[r#"outcome="sent""#]
        ),
        total,
        "{after}"
    );
    for lane in lanes {
        assert_eq!(must(&after, &age(lane)), 0.0);
    }
    for endpoint in &endpoints {
        let at = must(&after, &last_success(endpoint));
        let sent_to = routes
            .iter()
            .any(|(m, _, e)| e.path() == *endpoint && second_mappings.contains_key(&**m));
        if sent_to {
            assert!(
                at >= recovered_unix - 0.01,
                "{endpoint}: {at} < {recovered_unix}"
            );
        } else {
            assert_eq!(at, success_before[endpoint], "{endpoint}");
        }
    }
    for (mapping, lane, _) in &routes {
        let lane = lane.as_str();
        let first = first_mappings.get(mapping.as_ref()).copied().unwrap_or(0.0);
        let second = second_mappings
            .get(mapping.as_ref())
            .copied()
            .unwrap_or(0.0);
        // Every request of the first order took under 2 s; every one of the second waited
        // out the slow spell, so it lands above 2 s (and, recovered quickly, under 30 s).
        assert_eq!(
            must(&after, &lag("_bucket", lane, mapping, Some("2"))),
            first,
            "{mapping}: {after}"
        );
        assert_eq!(
            must(&after, &lag("_bucket", lane, mapping, Some("30"))),
            first + second,
            "{mapping}: {after}"
        );
        assert_eq!(
            must(&after, &lag("_count", lane, mapping, None)),
            first + second
        );
        // (Less 10 ms: the store's clock is in whole milliseconds.)
        assert!(
            must(&after, &lag("_sum", lane, mapping, None))
                >= second * (SLOW_FOR.as_secs_f64() - 0.01),
            "{mapping}: {after}"
        );
    }
    // Every call Klaviyo saw is a request sent or a retry; slowness is not a rate limit, so
    // nothing waited for a slot and no 429 was counted.
    let stats = standin.stats();
    for endpoint in Endpoint::ALL {
        let label = format!("endpoint=\"{}\"", endpoint.path());
        let calls = sum(
            &after,
            "marketsync_klaviyo_requests_total",
            &[&label, r#"outcome="sent""#],
        ) + sum(
            &after,
            "marketsync_klaviyo_requests_total",
            &[&label, r#"outcome="retried""#],
        );
        assert_eq!(calls, stats.endpoint(endpoint).requests as f64, "{label}");
        for name in [
            "marketsync_klaviyo_rate_limited_total",
            "marketsync_klaviyo_rate_limit_wait_seconds_total",
        ] {
            assert_eq!(sum(&after, name, &[&label]), 0.0, "{name} {label}");
        }
    }
    assert_eq!(
        sum(
            &after,
            "marketsync_klaviyo_requests_total",
            &[r#"outcome="dead_lettered""#]
        ),
        0.0
    );
    serve.signal(libc::SIGTERM);
    let status = tokio::task::block_in_place(|| serve.child.wait().unwrap());
    assert_eq!(status.code(), Some(0));
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

/// GitHub's anchor for a Markdown heading: lower case, spaces to hyphens, other punctuation
/// dropped (`### 11.5 Built-in alerts` is `#115-built-in-alerts`).
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

/// docs/operations.md's sections by anchor, each with its text up to the next heading.
fn runbook() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(common::repo("docs/operations.md")).unwrap();
    let mut sections: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut in_code = false;
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        let heading = (!in_code)
            .then(|| line.strip_prefix('#'))
            .flatten()
            .map(|rest| rest.trim_start_matches('#'))
            .filter(|rest| rest.starts_with(' '));
        if let Some(heading) = heading {
            let id = anchor(heading);
            assert!(
                !sections.contains_key(&id),
                "two headings make the anchor #{id}: links to the second would need #{id}-1"
            );
            sections.insert(id.clone(), String::new());
            current = Some(id);
        } else if let Some(id) = &current {
            let section = sections.get_mut(id).unwrap();
            section.push_str(line);
            section.push('\n');
        }
    }
    sections
}

/// One alerting rule of `deploy/prometheus/marketsync.rules.yml`, as far as the runbook is
/// concerned.
#[derive(serde::Deserialize)]
struct Rule {
    alert: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
struct RuleGroup {
    rules: Vec<Rule>,
}

#[derive(serde::Deserialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

/// Checks one alert's runbook entry: it exists where `link` points, and says what the alert
/// means, who owns it, what to do and when it is over.
fn check_entry(runbook: &BTreeMap<String, String>, alert: &str, link: &str, owner: &str) {
    let id = link.strip_prefix("docs/operations.md#").unwrap_or_else(|| {
        panic!("{alert}: its runbook link {link} is not into docs/operations.md")
    });
    let entry = runbook.get(id).unwrap_or_else(|| {
        panic!("{alert}: docs/operations.md has no heading for #{id} (its runbook link)")
    });
    for part in ["**Means:**", "**Owner:**", "**Do:**", "**Over when:**"] {
        assert!(
            entry.contains(part),
            "{alert}: its runbook entry says nothing under {part}:\n{entry}"
        );
    }
    assert!(
        entry.contains(&format!("**Owner:** {owner}")),
        "{alert}: the runbook's owner is not `{owner}`, as the alert says:\n{entry}"
    );
}

/// Issue 14: docs/operations.md is the runbook. Every Prometheus alert and every built-in
/// alert has an entry under its own name, each alert's link points at it, and the entry names
/// the owner the alert itself names; every link into docs/operations.md from the docs leads to
/// a heading.
#[test]
fn every_alert_has_a_runbook_entry_its_link_finds() {
    let runbook = runbook();
    let rules =
        std::fs::read_to_string(common::repo("deploy/prometheus/marketsync.rules.yml")).unwrap();
    let rules: RuleFile = serde_saphyr::from_str(&rules).unwrap();
    let alerts: Vec<&Rule> = rules
        .groups
        .iter()
        .flat_map(|g| &g.rules)
        .filter(|r| r.alert.is_some())
        .collect();
    assert!(alerts.len() >= 7, "the rules of issue 14");
    for rule in alerts {
        let name = rule.alert.as_deref().unwrap();
        let link = rule
            .annotations
            .get("runbook")
            .unwrap_or_else(|| panic!("{name} has no runbook annotation"));
        assert_eq!(
            *link,
            format!("docs/operations.md#{}", anchor(name)),
            "{name}: its entry is the heading of its exact name"
        );
        let owner = rule
            .labels
            .get("owner")
            .unwrap_or_else(|| panic!("{name} has no owner label"));
        check_entry(&runbook, name, link, owner);
    }
    for alert in marketsync::alerts::Alert::ALL {
        assert_eq!(
            alert.runbook(),
            format!("docs/operations.md#{}", anchor(alert.name())),
            "{}: its entry is the heading of its exact name",
            alert.name()
        );
        check_entry(&runbook, alert.name(), alert.runbook(), alert.owner());
    }

    // Links from the other docs, and the runbook's links within itself.
    for doc in [
        "README.md",
        "docs/serve.md",
        "docs/clients.md",
        "docs/operations.md",
    ] {
        let text = std::fs::read_to_string(common::repo(doc)).unwrap();
        for id in links_into_the_runbook(&text, doc == "docs/operations.md") {
            assert!(
                runbook.contains_key(&id),
                "{doc} links to docs/operations.md#{id}, which is no heading there"
            );
        }
    }
}

/// The anchors of the links into operations.md in `text` (`operations.md#ID`, and `](#ID)`
/// when `text` is operations.md itself).
fn links_into_the_runbook(text: &str, own: bool) -> Vec<String> {
    let mut ids = Vec::new();
    let mut patterns = vec!["operations.md#"];
    if own {
        patterns.push("](#");
    }
    for pattern in patterns {
        for (at, _) in text.match_indices(pattern) {
            let rest = &text[at + pattern.len()..];
            let id: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            ids.push(id);
        }
    }
    ids
}
