//! `marketsync serve` killed (SIGKILL) again and again while `marketsync replay` sends to it:
//! every delivery answered 200 is in the store, the rest are sent again by the replay's
//! retries, and Klaviyo gets every event, each once in effect.

mod common;

use common::ServeProcess;
use marketsync::serve::WEBHOOK_PATH;
use marketsync::sink::http::ApiKey;
use marketsync::standin::{Config, DEFAULT_API_KEY, StandIn};
use marketsync::store::Store;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const SECRET: &str = "whsec-crash-test";
const DELIVERIES: usize = 200;

/// The idempotency keys of the deliveries this process logged as accepted (its 200s).
fn accepted_keys(serve: &ServeProcess) -> Vec<String> {
    serve
        .events()
        .iter()
        .filter(|e| e["message"] == "webhook answered" && e["outcome"] == "accepted")
        .map(|e| e["idempotency_key"].as_str().unwrap().to_owned())
        .collect()
}

fn inbox_delivery_ids(state: &Path) -> BTreeSet<String> {
    let conn = rusqlite::Connection::open(state).unwrap();
    let mut query = conn.prepare("SELECT delivery_id FROM inbox").unwrap();
    query
        .query_map([], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn serve_killed_during_a_replay_keeps_every_200_and_delivers_everything_once_in_effect() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let standin = runtime.block_on(StandIn::start(Config::default())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("orders.ndjson");
    std::fs::write(&input, common::synthetic_orders(DELIVERIES)).unwrap();
    let state = dir.path().join("state.db");
    // One port for every start, as a load balancer would have it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let start_serve = || {
        let mut command = common::marketsync_command();
        command
            .args(["serve", "--log-format", "json", "--hold", "2"])
            .args(["--listen", &listen, "--state"])
            .arg(&state)
            .env("KLAVIYO_API_KEY", DEFAULT_API_KEY)
            .env("KLAVIYO_BASE_URL", standin.url())
            .env("MARKETPLACER_WEBHOOK_SECRET", SECRET);
        ServeProcess::start(command)
    };
    let mut serve = start_serve();
    let mut replay = common::marketsync_command()
        .args(["replay", "--to", &format!("http://{listen}{WEBHOOK_PATH}")])
        .args(["--secret-env", "CRASH_TEST_SECRET", "--concurrency", "8"])
        .args(["--max-attempts", "200", "--backoff-base", "0.05"])
        .args(["--backoff-max", "0.4", "--timeout", "5"])
        .arg(&input)
        .env("CRASH_TEST_SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("replay.log")).unwrap())
        .spawn()
        .unwrap();

    // Killed twice once it has answered some, not all, of the deliveries 200.
    let mut acknowledged: BTreeSet<String> = BTreeSet::new();
    for kill in 0..2 {
        let until = Instant::now() + Duration::from_secs(20);
        // Counted on the raw lines: parsing them all every few milliseconds would take a core.
        let accepted = |serve: &ServeProcess| {
            let lines = serve.lines();
            let outcome = "\"outcome\":\"accepted\"";
            lines.iter().filter(|line| line.contains(outcome)).count()
        };
        while accepted(&serve) < 40 {
            assert!(Instant::now() < until, "serve took no deliveries");
            std::thread::sleep(Duration::from_millis(5));
        }
        serve.signal(libc::SIGKILL);
        serve.child.wait().unwrap();
        let answered = accepted_keys(&serve);
        assert!(
            acknowledged.len() + answered.len() < DELIVERIES,
            "kill {kill} came after the last delivery"
        );
        // Every 200 is in the store: accepted means committed.
        let stored = inbox_delivery_ids(&state);
        for key in &answered {
            let n = key.trim_start_matches("synthetic-");
            let id = format!("synthetic-delivery-{n}");
            assert!(
                stored.contains(&id),
                "{key} was answered 200 but is not stored"
            );
        }
        acknowledged.extend(answered);
        serve = start_serve();
    }

    let replayed = replay.wait().unwrap();
    let replay_said = std::fs::read_to_string(dir.path().join("replay.log")).unwrap();
    assert!(replayed.success(), "replay: {replayed}\n{replay_said}");

    // Every delivery is in the store, once.
    let stored = inbox_delivery_ids(&state);
    let expected: BTreeSet<String> = (0..DELIVERIES)
        .map(|n| format!("synthetic-delivery-{n}"))
        .collect();
    assert_eq!(stored, expected);
    let inbox_rows: i64 = rusqlite::Connection::open(&state)
        .unwrap()
        .query_row("SELECT count(*) FROM inbox", [], |r| r.get(0))
        .unwrap();
    assert_eq!(inbox_rows, DELIVERIES as i64);

    // Everything reaches Klaviyo.
    let engine = common::engine();
    let expected_ids: BTreeSet<String> = common::run(&engine, &[input.to_str().unwrap()])
        .requests
        .iter()
        .filter_map(|r| r.unique_id().map(str::to_owned))
        .collect();
    let until = Instant::now() + Duration::from_secs(20);
    let arrived = loop {
        let arrived: BTreeSet<String> = standin
            .accepted()
            .submissions_by_unique_id()
            .into_keys()
            .collect();
        // Profiles and consent too: the profile lane may finish after the last event.
        let pending: i64 = rusqlite::Connection::open(&state)
            .unwrap()
            .query_row(
                "SELECT count(*) FROM outbox WHERE state = 'pending'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        if (arrived == expected_ids && pending == 0) || Instant::now() > until {
            break arrived;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(arrived, expected_ids);
    serve.signal(libc::SIGTERM);
    assert_eq!(serve.child.wait().unwrap().code(), Some(0));

    // Once each in effect: Klaviyo kept each event once, and sent again were at most what the
    // two killed processes had in flight to it.
    let accepted = standin.accepted();
    let kept: Vec<&str> = accepted
        .events
        .iter()
        .filter_map(|e| e.unique_id.as_deref())
        .collect();
    assert_eq!(kept.len(), expected_ids.len(), "an event was kept twice");
    let resent: usize = accepted
        .submissions_by_unique_id()
        .values()
        .map(|n| n - 1)
        .sum();
    let in_flight = 2 * marketsync::sink::SinkConfig::new("", ApiKey::new("")).concurrency;
    assert!(
        resent <= 2 * in_flight,
        "{resent} events sent again, more than two kills could leave in flight"
    );
    // Nothing pending or dead.
    let status = Store::open(&state).unwrap().status(0).unwrap();
    assert!(status.lanes.values().all(|l| l.depth == 0), "{status:?}");
    assert!(status.dead_letters.is_empty(), "{status:?}");
    runtime.block_on(standin.shutdown());
}
