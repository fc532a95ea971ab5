//! Issue 16, end to end: a day of webhooks replayed into `serve` with 5% of them withheld and
//! one mapping's deliveries dead-lettered (a client overlay that fails, then is fixed); then
//! `marketsync reconcile` against the Marketplacer stand-in (serving the whole day) and the
//! Klaviyo stand-in. Exactly the withheld and dead-lettered facts are queued and accepted; a
//! second run queues nothing; `--report-only` sends nothing; a killed-and-resumed run gives the
//! report an uninterrupted one gives.

mod common;

use common::ServeProcess;
use common::orders::{self, StandIns, ndjson};
use marketsync::serve::WEBHOOK_PATH;
use marketsync::standin::StandIn;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const ORDERS: u64 = 120;
const DAY: &str = "2026-03-20T00:00:00Z";
const UNTIL: &str = "2026-03-21T00:00:00Z";

/// The day's webhooks: `ORDERS` paid orders spread over the first 16 hours, a shipment for
/// every third (with no tracking link, which the broken client requires), a completed refund
/// for every tenth.
fn day() -> Vec<Value> {
    orders::generate(DAY, 1, ORDERS, 0)
}

/// A workspace with two clients: `broken`, whose fulfilled-order overlay requires a tracking
/// link the day's shipments lack, and `fixed`, without it.
fn clients(dir: &Path, page_size: u32, rate: &str) {
    let client = format!(
        "marketplaces:\n  petmarket: {{ currency: AUD }}\n\
         marketplacer:\n  url: http://127.0.0.1:1\n  page_size: {page_size}\n  retry_wait: 1s\n  rate_limit: {rate}\n\
         reconcile:\n  settle: 1m\n"
    );
    for name in ["broken", "fixed"] {
        std::fs::create_dir_all(dir.join("clients").join(name).join("mappings")).unwrap();
        std::fs::write(dir.join("clients").join(name).join("client.yaml"), &client).unwrap();
    }
    std::fs::write(
        dir.join("clients/broken/mappings/fulfilled-order.yaml"),
        "overlay: fulfilled-order\nselect:\n  tracking_link: $.trackingLink\n",
    )
    .unwrap();
}

/// The day's stand-ins, and its webhooks.
struct Day {
    stand_ins: StandIns,
    all: Vec<Value>,
}

impl std::ops::Deref for Day {
    type Target = StandIns;
    fn deref(&self) -> &StandIns {
        &self.stand_ins
    }
}

impl Day {
    fn new(page_size: u32, rate: &str) -> Day {
        let dir = tempfile::tempdir().unwrap();
        clients(dir.path(), page_size, rate);
        let all = day();
        let text = ndjson(&all.iter().collect::<Vec<_>>());
        Day {
            stand_ins: StandIns::start(dir, "day.ndjson", &text),
            all,
        }
    }

    /// `marketsync reconcile` over the day with the fixed client: exit code and JSON report.
    fn reconcile(&self, state: &Path, extra: &[&str]) -> (Option<i32>, Value, String) {
        let output = self
            // The sweep against the ledger: reading Klaviyo back is tests/readback.rs's.
            .command(&["reconcile", "--client", "fixed", "--format", "json"])
            .arg("--no-klaviyo-read")
            .args(["--since", DAY, "--until", UNTIL, "--hold", "5"])
            .arg("--marketplacer-url")
            .arg(self.marketplacer.url())
            .arg("--state")
            .arg(state)
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let report = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("not a JSON report ({e}); stderr:\n{stderr}"));
        (output.status.code(), report, stderr)
    }

    /// Unique ids of the events Klaviyo holds, and how often each was submitted.
    fn events(&self) -> BTreeMap<String, usize> {
        self.klaviyo.accepted().submissions_by_unique_id()
    }
}

/// Requests the Klaviyo stand-in received, to every endpoint.
fn klaviyo_requests(standin: &StandIn) -> u64 {
    standin.stats().endpoints.values().map(|e| e.requests).sum()
}

/// Events the day implies with the fixed mappings, by unique id and mapping.
fn expected_events(deliveries: &[&Value], client: &Path) -> BTreeMap<String, String> {
    let (engine, _) = marketsync::engine::Engine::load_client(None, client).unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), ndjson(deliveries)).unwrap();
    common::run(&engine, &[file.path().to_str().unwrap()])
        .requests
        .iter()
        .filter_map(|r| Some((r.unique_id()?.to_owned(), r.mapping.to_string())))
        .collect()
}

#[test]
fn a_day_with_webhooks_withheld_and_dead_lettered_is_repaired_exactly_once() {
    let day = Day::new(500, "{ requests: 750, per: 10s }");
    // Every twentieth webhook never arrives.
    let withheld = |i: &usize| i % 20 == 7;
    let kept: Vec<&Value> = day
        .all
        .iter()
        .enumerate()
        .filter(|(i, _)| !withheld(i))
        .map(|(_, d)| d)
        .collect();
    assert_eq!(
        day.all.len() - kept.len(),
        (day.all.len() + 12) / 20,
        "5% withheld"
    );
    let replayed = day.dir.path().join("replayed.ndjson");
    std::fs::write(&replayed, ndjson(&kept)).unwrap();

    // serve takes the kept webhooks with the broken client: fulfilled-order is dead-lettered.
    let mut command = day.command(&["serve", "--client", "broken", "--log-format", "json"]);
    command
        .args(["--listen", "127.0.0.1:0", "--hold", "5", "--state"])
        .arg(day.state());
    let mut serve = ServeProcess::start(command);
    let url = format!("http://{}{WEBHOOK_PATH}", serve.address);
    let replay = day
        .command(&[
            "replay",
            "--to",
            &url,
            "--concurrency",
            "8",
            "--backoff-base",
            "0.1",
        ])
        .arg(&replayed)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let status = marketsync::store::Store::open(&day.state())
            .unwrap()
            .status(0)
            .unwrap();
        if status.lanes.values().all(|l| l.depth == 0) {
            break;
        }
        assert!(
            Instant::now() < until,
            "serve did not send everything: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    serve.signal(libc::SIGTERM);
    assert_eq!(serve.child.wait().unwrap().code(), Some(0));
    let dead = marketsync::store::Store::open(&day.state())
        .unwrap()
        .dead_letters(None, Some("fulfilled-order"))
        .unwrap();
    assert!(
        !dead.is_empty(),
        "the broken client dead-letters fulfilled orders"
    );

    let fixed = day.dir.path().join("clients/fixed");
    let all: Vec<&Value> = day.all.iter().collect();
    let expected = expected_events(&all, &fixed);
    let after_serve = day.events();
    let missing: BTreeSet<&String> = expected
        .keys()
        .filter(|id| !after_serve.contains_key(*id))
        .collect();
    let dead_fulfilments = expected
        .iter()
        .filter(|(id, m)| *m == "fulfilled-order" && !after_serve.contains_key(*id))
        .count();
    assert!(dead_fulfilments > 0 && missing.len() > dead_fulfilments);

    // Reporting only: the missing are named, nothing reaches Klaviyo, nothing is queued.
    let requests_before = klaviyo_requests(&day.klaviyo);
    let (code, report, stderr) = day.reconcile(&day.state(), &["--report-only"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        klaviyo_requests(&day.klaviyo),
        requests_before,
        "report-only sent something"
    );
    let findings = &report["findings"];
    let missing_events: u64 = [
        "placed-order",
        "ordered-product",
        "fulfilled-order",
        "refunded-order",
        "cancelled-order",
    ]
    .iter()
    .map(|m| findings["missing"][m].as_u64().unwrap_or(0))
    .sum();
    assert_eq!(missing_events, missing.len() as u64, "{report:#}");
    assert_eq!(
        findings["missing"]["fulfilled-order"].as_u64().unwrap() as usize,
        dead_fulfilments,
        "{report:#}"
    );
    assert_eq!(
        findings["dead_letters"]["met"].as_u64().unwrap() as usize,
        dead.len(),
        "{report:#}"
    );
    let pending = marketsync::store::Store::open(&day.state())
        .unwrap()
        .status(0)
        .unwrap();
    assert!(
        pending.lanes.values().all(|l| l.depth == 0),
        "report-only queued something"
    );

    // Repairing: exactly the missing events reach Klaviyo, each once, and the letters close.
    let (code, report, stderr) = day.reconcile(&day.state(), &[]);
    assert_eq!(code, Some(1), "{stderr}\n{report:#}");
    let after = day.events();
    let new: BTreeSet<&String> = after
        .keys()
        .filter(|id| !after_serve.contains_key(*id))
        .collect();
    assert_eq!(new, missing, "the repairs are exactly what was missing");
    for (id, count) in &after_serve {
        assert_eq!(after[id], *count, "{id} was sent again");
    }
    assert_eq!(
        report["findings"]["dead_letters"]["requeued"]
            .as_u64()
            .unwrap() as usize,
        dead.len(),
        "{report:#}"
    );
    let store = marketsync::store::Store::open(&day.state()).unwrap();
    let status = store.status(0).unwrap();
    assert!(status.dead_letters.is_empty(), "{status:?}");
    assert!(status.lanes.values().all(|l| l.depth == 0), "{status:?}");
    drop(store);

    // The same window again: nothing is missing, nothing is sent.
    let requests_before = klaviyo_requests(&day.klaviyo);
    let (code, report, stderr) = day.reconcile(&day.state(), &[]);
    assert_eq!(code, Some(0), "{stderr}\n{report:#}");
    assert_eq!(report["missing"], 0);
    assert_eq!(
        report["findings"]["expected"],
        report["findings"]["accepted"]
    );
    assert_eq!(klaviyo_requests(&day.klaviyo), requests_before);

    day.stand_ins.shutdown();
}

/// The report's facts: everything but what this process itself asked of Marketplacer.
fn facts(report: &Value) -> Value {
    let mut findings = report["findings"].clone();
    findings["marketplacer_requests"] = Value::Null;
    findings["waited_ms"] = Value::Null;
    findings["answering_ms"] = Value::Null;
    findings
}

#[test]
fn a_run_killed_halfway_resumes_and_ends_with_the_uninterrupted_report() {
    // Small pages, eight requests a second: a run takes several seconds to kill in.
    let day = Day::new(4, "{ requests: 8, per: 1s }");
    let original = day.dir.path().join("copy.db");
    // Half the day's webhooks reached Klaviyo already (a batch run).
    let half: Vec<&Value> = day.all.iter().step_by(2).collect();
    let input = day.dir.path().join("half.ndjson");
    std::fs::write(&input, ndjson(&half)).unwrap();
    let mut seed = day.command(&["run", "--client", "fixed", "--hold", "5", "--state"]);
    let seeded = seed.arg(&original).arg(&input).output().unwrap();
    assert_eq!(
        seeded.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&seeded.stderr)
    );
    let whole = day.dir.path().join("whole.db");
    let killed = day.dir.path().join("killed.db");
    std::fs::copy(&original, &whole).unwrap();
    std::fs::copy(&original, &killed).unwrap();

    let (code, uninterrupted, stderr) = day.reconcile(&whole, &["--no-send"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(uninterrupted["resumed"], false);

    let mut run = day.command(&[
        "reconcile",
        "--client",
        "fixed",
        "--format",
        "json",
        "--no-send",
        "--no-klaviyo-read",
    ]);
    run.args(["--since", DAY, "--until", UNTIL])
        .arg("--marketplacer-url")
        .arg(day.marketplacer.url())
        .arg("--state")
        .arg(&killed)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = run.spawn().unwrap();
    // Killed once it is some pages into the invoices.
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was killed"
        );
        assert!(Instant::now() < until, "the run never reached the invoices");
        let reached = rusqlite::Connection::open_with_flags(
            &killed,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .and_then(|conn| {
            conn.query_row(
                "SELECT count(*) FROM reconcile_run WHERE finished_at IS NULL
                   AND step = 'invoices-updated' AND cursor IS NOT NULL",
                [],
                |r| r.get::<_, i64>(0),
            )
        });
        if reached.is_ok_and(|n| n > 0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    let checkpoint = marketsync::store::Store::open(&killed)
        .unwrap()
        .open_reconcile_run(&format!("{}/graphql repair", day.marketplacer.url()))
        .unwrap()
        .expect("the killed run left its checkpoint");
    assert_ne!(checkpoint.step, "webhooks", "{checkpoint:?}");

    let (code, resumed, stderr) = day.reconcile(&killed, &["--no-send"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(resumed["resumed"], true);
    assert_eq!(facts(&resumed), facts(&uninterrupted));
    // And the store agrees: the same repairs are queued in both.
    let pending = |state: &Path| {
        let status = marketsync::store::Store::open(state)
            .unwrap()
            .status(0)
            .unwrap();
        status.lanes.values().map(|l| l.depth).sum::<usize>()
    };
    assert_eq!(pending(&killed), pending(&whole));

    day.stand_ins.shutdown();
}
