//! `marketsync reconcile` against the stand-ins: the Marketplacer GraphQL stand-in serves the
//! facts (from the same captures that are replayed as webhooks), the Klaviyo stand-in takes the
//! repairs, and the store is the one `run` and `serve` keep.

mod common;

use marketsync::engine::Engine;
use marketsync::marketplacer::{Client, MarketplacerError, Options};
use marketsync::reconcile::{Ask, Findings, ReconcileError, Reconciler, Report, RunOptions};
use marketsync::sink::http::ApiKey;
use marketsync::standin::marketplacer::{self as mp, Data, Injected, StandIn};
use marketsync::store::Store;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The examples as Marketplacer would hold them: every capture's objects.
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
        let summary = data.load_text(name, &text);
        assert!(
            summary.problems.is_empty(),
            "{name}: {:?}",
            summary.problems
        );
    }
    data
}

fn at(text: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&chrono::Utc)
}

/// March 2026, where the examples happen, with no settle delay.
fn march() -> Ask {
    Ask {
        since: Some(at("2026-03-01T00:00:00Z")),
        until: Some(at("2026-04-01T00:00:00Z")),
        length: chrono::Duration::hours(24),
        length_asked: false,
        settle: chrono::Duration::zero(),
    }
}

fn options() -> Options {
    Options {
        rate_limit: 750,
        rate_window: Duration::from_secs(10),
        retry_wait: Duration::from_millis(200),
        max_attempts: 4,
        timeout: Duration::from_secs(10),
    }
}

fn client(standin: &StandIn, options: Options) -> Arc<Client> {
    Arc::new(Client::new(&standin.url(), ApiKey::new(mp::DEFAULT_API_KEY), options).unwrap())
}

struct Setup {
    engine: Arc<Engine>,
    store: Arc<Mutex<Store>>,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            engine: Arc::new(common::engine()),
            store: Arc::new(Mutex::new(Store::in_memory().unwrap())),
        }
    }

    fn reconciler(&self, client: Arc<Client>, page_size: u32) -> Reconciler {
        Reconciler::new(
            Arc::clone(&self.engine),
            Arc::clone(&self.store),
            client,
            page_size,
        )
        .unwrap()
    }

    async fn run(
        &self,
        client: Arc<Client>,
        page_size: u32,
        repair: bool,
    ) -> Result<Report, ReconcileError> {
        let options = RunOptions {
            ask: march(),
            repair,
        };
        self.reconciler(client, page_size)
            .run(&options, chrono::Utc::now(), &mut |_| {})
            .await
    }
}

/// The Marketplacer stand-in serving the examples, with its default limits and no faults.
async fn examples_standin() -> StandIn {
    StandIn::start(mp::Config {
        data: examples(),
        ..mp::Config::default()
    })
    .await
    .unwrap()
}

/// The findings that say what the window holds (not how many requests this process made).
fn facts(findings: &Findings) -> Findings {
    Findings {
        marketplacer_requests: 0,
        waited_ms: 0,
        answering_ms: 0,
        ..findings.clone()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_ledger_finds_every_request_of_the_window_missing_and_a_second_run_none() {
    let standin = examples_standin().await;
    let setup = Setup::new();
    let first = setup
        .run(client(&standin, options()), 500, true)
        .await
        .unwrap();
    let f = &first.findings;
    assert_eq!(f.marketplace.as_deref(), Some("petmarket"), "{f:#?}");
    assert!(f.webhooks.is_empty(), "{f:#?}");
    assert!(f.expected > 0, "{f:#?}");
    assert_eq!(f.accepted + f.queued, 0, "{f:#?}");
    assert_eq!(f.missing_total(), f.expected, "{f:#?}");
    assert!(f.missing["placed-order"] >= 3, "{f:#?}");
    // The repairs are queued: the same window again finds every one of them queued.
    let second = setup
        .run(client(&standin, options()), 500, true)
        .await
        .unwrap();
    let g = &second.findings;
    assert_eq!(g.missing_total(), 0, "{g:#?}");
    assert_eq!(g.queued, f.expected, "{g:#?}");
    assert_eq!(g.read, f.read);
    standin.shutdown().await;
}

/// Marketplacer's own Klaviyo integration, read with the webhooks (reconciliation.md §0 item 4):
/// off, nothing is said; switched on in the admin portal, the next run finds a second sender
/// of our Placed Order, wrong even with nothing missing.
#[tokio::test(flavor = "multi_thread")]
async fn marketplacers_own_klaviyo_tracking_is_read_with_the_webhooks() {
    let standin = examples_standin().await;
    let setup = Setup::new();
    let off = setup
        .run(client(&standin, options()), 500, true)
        .await
        .unwrap();
    assert!(!off.findings.native_klaviyo_tracking, "{:#?}", off.findings);
    standin.set_klaviyo_settings(mp::KlaviyoSettings {
        status: "CONNECTED".into(),
        ecommerce_tracking_enabled: true,
        ..mp::KlaviyoSettings::default()
    });
    let on = setup
        .run(client(&standin, options()), 500, true)
        .await
        .unwrap();
    let f = &on.findings;
    assert!(f.native_klaviyo_tracking, "{f:#?}");
    assert_eq!(f.missing_total(), 0, "the first run queued everything");
    assert!(f.anything_wrong());
    let asked = &standin.stats().queries;
    let webhooks = asked
        .iter()
        .rev()
        .find(|q| q.operation.as_deref() == Some("ReconcileWebhooks"))
        .expect("the webhooks were read");
    assert!(
        webhooks.root_fields.iter().any(|f| f == "klaviyoSettings") && !webhooks.errors,
        "{webhooks:?}"
    );
    standin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_of_one_read_every_object_once_and_find_what_one_page_finds() {
    let standin = examples_standin().await;
    let whole = Setup::new()
        .run(client(&standin, options()), 500, false)
        .await
        .unwrap();
    let paged_client = client(&standin, options());
    let paged = Setup::new()
        .run(Arc::clone(&paged_client), 1, false)
        .await
        .unwrap();
    assert_eq!(facts(&paged.findings), facts(&whole.findings));
    assert!(
        paged.findings.marketplacer_requests > whole.findings.marketplacer_requests + 3,
        "{} requests paged, {} whole",
        paged.findings.marketplacer_requests,
        whole.findings.marketplacer_requests
    );
    standin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_429_is_waited_out_with_or_without_retry_after() {
    let standin = examples_standin().await;
    let baseline = Setup::new()
        .run(client(&standin, options()), 500, false)
        .await
        .unwrap();
    for retry_after in [true, false] {
        standin.set_faults(mp::Faults {
            next: vec![Injected::Throttle, Injected::Unavailable],
            retry_after,
            injected_retry_after: 1,
            ..mp::Faults::none()
        });
        let started = std::time::Instant::now();
        let report = Setup::new()
            .run(client(&standin, options()), 500, false)
            .await
            .unwrap();
        assert_eq!(facts(&report.findings), facts(&baseline.findings));
        assert_eq!(
            report.findings.marketplacer_requests,
            baseline.findings.marketplacer_requests + 2
        );
        // With Retry-After (1 s each) two seconds; without, the configured wait (0.2 s)
        // doubled for the second refusal.
        let waited = report.waited();
        if retry_after {
            assert!(waited >= Duration::from_millis(1900), "{waited:?}");
        } else {
            assert!(
                waited >= Duration::from_millis(590) && waited < Duration::from_millis(1500),
                "{waited:?}"
            );
        }
        assert!(started.elapsed() >= waited);
    }
    standin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_graphql_error_names_the_query_and_the_path_and_keeps_the_checkpoint() {
    let mut faults = mp::Faults::none();
    faults.failing_fields.insert(
        "refundRequests".into(),
        "Internal error in the resolver".into(),
    );
    let standin = StandIn::start(mp::Config {
        data: examples(),
        faults,
        ..mp::Config::default()
    })
    .await
    .unwrap();
    let setup = Setup::new();
    let err = setup
        .run(client(&standin, options()), 500, false)
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with("Marketplacer answered ReconcileRefundedRequests with errors: "),
        "{message}"
    );
    assert!(
        message.contains("Internal error in the resolver"),
        "{message}"
    );
    assert!(message.contains("at refundRequests"), "{message}");
    // The invoices were kept page by page: the run is where it stopped.
    let open = setup
        .store
        .lock()
        .unwrap()
        .open_reconcile_run(&format!("{}/graphql report-only", standin.url()))
        .unwrap()
        .expect("an unfinished run");
    assert_eq!(open.step, "refund-requests-refunded");
    standin.set_faults(mp::Faults::none());
    let resumed = setup
        .run(client(&standin, options()), 500, false)
        .await
        .unwrap();
    assert!(resumed.resumed);
    let fresh = Setup::new()
        .run(client(&standin, options()), 500, false)
        .await
        .unwrap();
    assert_eq!(facts(&resumed.findings), facts(&fresh.findings));
    standin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_instance_and_a_refused_key_are_said_plainly() {
    // A port nothing listens on: bound, then let go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let unreachable = Arc::new(Client::new(&url, ApiKey::new("mp_secret_key"), options()).unwrap());
    let err = Setup::new().run(unreachable, 500, false).await.unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(
            err,
            ReconcileError::Marketplacer(MarketplacerError::Unreachable { .. })
        ),
        "{message}"
    );
    assert!(
        message.starts_with(&format!("cannot reach Marketplacer at {url}/graphql: ")),
        "{message}"
    );
    assert!(!message.contains("mp_secret_key"));

    let standin = StandIn::start(mp::Config::default()).await.unwrap();
    let wrong = Arc::new(Client::new(&standin.url(), ApiKey::new("mp_wrong"), options()).unwrap());
    let err = Setup::new().run(wrong, 500, false).await.unwrap_err();
    assert!(
        matches!(
            err,
            ReconcileError::Marketplacer(MarketplacerError::KeyRefused { status: 401 })
        ),
        "{err}"
    );
    assert!(!err.to_string().contains("mp_wrong"));
    standin.shutdown().await;
}

/// Requests by mapping and key (the `unique_id`, else the once key), with their bodies.
type ByKey = std::collections::BTreeMap<(String, String), Vec<serde_json::Value>>;

fn by_key<'r>(requests: impl IntoIterator<Item = &'r marketsync::klaviyo::Request>) -> ByKey {
    let mut out = ByKey::new();
    for request in requests {
        let key = request
            .unique_id()
            .map(str::to_owned)
            .or_else(|| request.once_key.clone())
            .expect("every default mapping's request has a key");
        out.entry((request.mapping.to_string(), key))
            .or_default()
            .push(request.body.clone());
    }
    out
}

/// Same fact, same request: every object of the examples read back through the reconciliation
/// queries and cut to its webhook's record gives, per default mapping, the requests (bodies
/// and `unique_id`s) the webhooks gave.
#[tokio::test(flavor = "multi_thread")]
async fn per_default_mapping_the_reconcile_path_gives_the_webhooks_requests() {
    use marketsync::queries::reconcile::{Step, reconcile_queries};
    use marketsync::source::reconcile::{Shapes, invoice_facts, refund_fact};
    let engine = common::engine();
    let files: Vec<String> = [
        "orders.ndjson",
        "invoice-unpaid.json",
        "shipment.json",
        "cancellation.json",
        "refund-pending.json",
        "refund.json",
    ]
    .iter()
    .map(|f| common::repo("examples").join(f).display().to_string())
    .collect();
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    let webhooks = common::run(&engine, &files);
    // A fact delivered more than once (a repeat, a create then an update) gave its requests
    // each time; the latest state is what Marketplacer holds now.
    let webhook_requests: ByKey = by_key(&webhooks.requests)
        .into_iter()
        .map(|(key, mut bodies)| {
            let last = bodies.pop().unwrap();
            (key, vec![last])
        })
        .collect();

    let standin = examples_standin().await;
    let client = client(&standin, options());
    let shapes = Shapes::of(engine.queries());
    let (queries, problems) = reconcile_queries(engine.queries(), 2);
    assert!(problems.is_empty(), "{problems:?}");
    let mut records = Vec::new();
    for (step, query) in &queries {
        if !matches!(
            step,
            Step::UpdatedInvoices | Step::PaidInvoices | Step::RefundedRequests
        ) {
            continue;
        }
        let mut after: Option<String> = None;
        loop {
            let variables = serde_json::json!({
                "since": "2026-03-01T00:00:00Z", "until": "2026-04-01T00:00:00Z", "after": after,
            });
            let data = client
                .query(step.operation(), &query.render(), variables)
                .await
                .unwrap();
            let connection = &data[step.root()];
            for node in connection["nodes"].as_array().unwrap() {
                let facts = match step {
                    Step::RefundedRequests => refund_fact(node, &shapes, Some("petmarket"))
                        .unwrap()
                        .into_iter()
                        .collect(),
                    _ => invoice_facts(node, &shapes, Some("petmarket")).unwrap(),
                };
                records.extend(facts.into_iter().map(|f| f.record));
            }
            if connection["pageInfo"]["hasNextPage"] != true {
                break;
            }
            after = connection["pageInfo"]["endCursor"]
                .as_str()
                .map(str::to_owned);
        }
    }
    let mapped: Vec<marketsync::klaviyo::Request> = records
        .iter()
        .flat_map(|record| {
            let mapped = engine.map(record);
            assert!(mapped.errors.is_empty(), "{:?}", mapped.errors);
            mapped.requests
        })
        .collect();
    let reconciled = by_key(&mapped);
    for mapping in engine.mapping_names() {
        let of = |requests: &ByKey| -> ByKey {
            requests
                .iter()
                .filter(|((m, _), _)| **m == *mapping)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let (expected, found) = (of(&webhook_requests), of(&reconciled));
        assert!(!expected.is_empty(), "the examples give no {mapping}");
        assert_eq!(
            found.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "{mapping}: the same requests"
        );
        for (key, bodies) in &found {
            for body in bodies {
                assert_eq!(
                    body, &expected[key][0],
                    "{mapping} {}: the same body",
                    key.1
                );
            }
        }
    }
    standin.shutdown().await;
}

/// `validate --client` over a client.yaml: exit code and stderr.
fn validate(client_yaml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client.yaml"), client_yaml).unwrap();
    let output = common::marketsync()
        .args(["validate", "--client"])
        .arg(dir.path())
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn mistakes_in_the_reconcile_and_marketplacer_blocks_are_errors_at_their_line() {
    let good = "marketplacer:\n  url: https://acme.marketplacer.com\n  page_size: 200\nreconcile:\n  schedule: '15 * * * *'\n  window: 26h\n  settle: 10m\n";
    let (code, stderr) = validate(good);
    assert_eq!(code, Some(0), "{stderr}");
    for (yaml, at, says) in [
        (
            "reconcile:\n  windw: 24h\n",
            "client.yaml:2:3",
            "did you mean `window`",
        ),
        (
            "marketplacer:\n  url: https://a.marketplacer.com\nreconcile:\n  schedule: every hour\n",
            "client.yaml:4:13",
            "`every hour` is not a cron expression",
        ),
        (
            "reconcile:\n  window: 24\n",
            "client.yaml:2:11",
            "`24` is not a length of time",
        ),
        (
            "marketplacer:\n  url: https://a.marketplacer.com\n  api_key_evn: MP_KEY\n",
            "client.yaml:3:3",
            "did you mean `api_key_env`",
        ),
        (
            "marketplacer:\n  url: http://acme.marketplacer.com\n",
            "client.yaml:2:8",
            "would carry the API key unencrypted",
        ),
        (
            "marketplacer:\n  url: https://a.marketplacer.com\n  page_size: 1000\n",
            "client.yaml:3:14",
            "page_size must be 1 to 500",
        ),
        (
            "reconcile:\n  schedule: '0 * * * *'\n",
            "client.yaml:1:1",
            "a schedule needs the instance to read",
        ),
    ] {
        let (code, stderr) = validate(yaml);
        assert_ne!(code, Some(0), "{yaml}");
        assert!(stderr.contains(at), "{yaml}\n{stderr}");
        assert!(stderr.contains(says), "{yaml}\n{stderr}");
    }
}

#[test]
fn the_command_says_what_is_wrong_with_its_window_instance_or_keys() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    let reconcile = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = common::marketsync();
        command
            .arg("reconcile")
            .arg("--state")
            .arg(&state)
            .args(args);
        for (name, value) in env {
            command.env(name, value);
        }
        let output = command.output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let url = ["--marketplacer-url", "https://acme.marketplacer.com"];
    let key = [("MARKETPLACER_API_KEY", "mp_very_secret")];
    let (code, stderr) = reconcile(
        &[
            &url[..],
            &[
                "--since",
                "2026-11-29T00:00:00Z",
                "--until",
                "2026-11-28T00:00:00Z",
            ],
        ]
        .concat(),
        &key,
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--since 2026-11-29T00:00:00Z is not before --until 2026-11-28T00:00:00Z"),
        "{stderr}"
    );
    let (code, stderr) = reconcile(&[&url[..], &["--since", "yesterday"]].concat(), &key);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("--since `yesterday` is not an RFC 3339 time"),
        "{stderr}"
    );
    let (code, stderr) = reconcile(&[&url[..], &["--window", "24"]].concat(), &key);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("--window `24` is not a length of time"),
        "{stderr}"
    );
    let (code, stderr) = reconcile(&["--report-only"], &key);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("no Marketplacer instance to read"),
        "{stderr}"
    );
    let (code, stderr) = reconcile(&[&url[..], &["--report-only"]].concat(), &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("set MARKETPLACER_API_KEY"), "{stderr}");
    // Sending the repairs needs Klaviyo's key too, asked for before anything is read.
    let (code, stderr) = reconcile(&url, &key);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("KLAVIYO_API_KEY"), "{stderr}");
    assert!(stderr.contains("--no-send or --report-only"), "{stderr}");
    // Reading Klaviyo back needs its key even when nothing is sent.
    let (code, stderr) = reconcile(&[&url[..], &["--report-only"]].concat(), &key);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("KLAVIYO_API_KEY"), "{stderr}");
    assert!(stderr.contains("--no-klaviyo-read"), "{stderr}");
    // A mistyped --state: against a new file everything would be missing, opt-ins included.
    let (code, stderr) = reconcile(
        &[&url[..], &["--report-only", "--no-klaviyo-read"]].concat(),
        &key,
    );
    assert_eq!(code, Some(4));
    assert!(stderr.contains("no such file"), "{stderr}");
    assert!(!state.exists(), "nothing was written");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_marketplacer_key_exits_5_without_printing_it() {
    let standin = StandIn::start(mp::Config::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    drop(Store::open(&state).unwrap());
    let output = common::marketsync()
        .args(["reconcile", "--report-only", "--no-klaviyo-read"])
        .arg("--marketplacer-url")
        .arg(standin.url())
        .arg("--state")
        .arg(&state)
        .env("MARKETPLACER_API_KEY", "mp_not_this_one")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains("Marketplacer refused the API key (HTTP 401)"),
        "{stderr}"
    );
    assert!(stderr.contains("the run's checkpoint is kept"), "{stderr}");
    assert!(!stderr.contains("mp_not_this_one"));
    standin.shutdown().await;
}

/// `reconcile: schedule` in client.yaml: serve reconciles on its own store, its sender sends
/// the repairs, `/metrics` says when it last succeeded, and `status` shows the run.
#[test]
fn serve_reconciles_on_its_schedule_and_says_when_it_last_succeeded() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let marketplacer = runtime
        .block_on(StandIn::start(mp::Config {
            data: examples(),
            ..mp::Config::default()
        }))
        .unwrap();
    let klaviyo = runtime
        .block_on(marketsync::standin::StandIn::start(
            marketsync::standin::Config::default(),
        ))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let client = dir.path().join("acme");
    std::fs::create_dir_all(&client).unwrap();
    // Every two seconds (a sixth, leading field is seconds), over the examples' March. The
    // sweep only: reading Klaviyo back is tested in tests/readback.rs.
    std::fs::write(
        client.join("client.yaml"),
        format!(
            "marketplacer:\n  url: {}\n  retry_wait: 1s\nreconcile:\n  schedule: '*/2 * * * * *'\n  window: 400d\n  settle: 1s\n  read_klaviyo: false\n",
            marketplacer.url()
        ),
    )
    .unwrap();
    let state = dir.path().join("state.db");
    let started = chrono::Utc::now().timestamp() as f64;
    let mut command = common::marketsync_command();
    command
        .args(["serve", "--log-format", "json", "--listen", "127.0.0.1:0"])
        .args(["--hold", "2", "--client"])
        .arg(&client)
        .arg("--state")
        .arg(&state)
        .env("KLAVIYO_API_KEY", marketsync::standin::DEFAULT_API_KEY)
        .env("KLAVIYO_BASE_URL", klaviyo.url())
        .env("MARKETPLACER_API_KEY", mp::DEFAULT_API_KEY);
    let mut serve = common::ServeProcess::start(command);
    let scheduled = serve.wait_for("the schedule", |e| {
        e["message"] == "reconciliation scheduled (UTC)"
    });
    assert_eq!(scheduled["schedule"], "*/2 * * * * *");
    let first = serve.wait_for("a reconciliation", |e| {
        e["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("reconciliation finished"))
    });
    assert!(first["repairs"].as_u64().unwrap() > 0, "{first}");
    // The repairs reach Klaviyo through serve's own sender.
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while klaviyo.accepted().events_named("Placed Order").count() < 3 {
        assert!(
            std::time::Instant::now() < until,
            "the repairs were not sent"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let metrics = runtime
        .block_on(async {
            reqwest::get(format!("http://{}/metrics", serve.address))
                .await?
                .text()
                .await
        })
        .unwrap();
    let last: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("marketsync_reconciliation_last_success_timestamp_seconds "))
        .unwrap_or_else(|| panic!("no reconciliation series in\n{metrics}"))
        .parse()
        .unwrap();
    assert!(last >= started, "{last} < {started}");
    let status = common::marketsync()
        .args(["status", "--state"])
        .arg(&state)
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("last reconciliation: 20"), "{status}");
    serve.signal(libc::SIGTERM);
    assert_eq!(serve.child.wait().unwrap().code(), Some(0));
    runtime.block_on(async {
        marketplacer.shutdown().await;
        klaviyo.shutdown().await;
    });
}
