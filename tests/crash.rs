//! Killing `marketsync run` at any instant and starting it again loses no delivery and sends
//! nothing twice that Klaviyo would not deduplicate.

mod common;

use marketsync::sink::http::ApiKey;
use marketsync::standin::{Config, DEFAULT_API_KEY, StandIn};
use marketsync::store::Store;
use std::collections::{BTreeSet, HashMap};
use std::process::Stdio;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_again_and_again_delivers_everything_exactly_once_in_effect() {
    let standin = StandIn::start(Config::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("orders.ndjson");
    // Fewer events than a burst (350), so they go one by one and a kill can land between
    // them: more would be queued at once and go as one bulk job.
    let orders = 100;
    std::fs::write(&input, common::synthetic_orders(orders)).unwrap();
    let state = dir.path().join("state.db");
    let url = standin.url();
    let input_arg = input.clone();
    let run = move || {
        common::marketsync_command()
            .args(["run", "--hold", "2", "--state"])
            .arg(&state)
            .arg(&input_arg)
            .env("KLAVIYO_API_KEY", DEFAULT_API_KEY)
            .env("KLAVIYO_BASE_URL", &url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // Kill it (SIGKILL: no chance to tidy up) at points across intake and delivery: twice
    // after a fixed delay (during intake or the first sends), then each time a few more events
    // have reached the stand-in, so kills land mid-delivery however slow the machine is.
    let mut killed = 0;
    // Whether some kill landed while events were being sent (not only during intake).
    let mut mid_delivery = false;
    let events_sent = || standin.accepted().events.len();
    // The last event request each round's run got accepted (the stand-in numbers them), and
    // whether the run was killed.
    let mut rounds: Vec<(u64, bool)> = Vec::new();
    let last_request = || {
        standin
            .accepted()
            .submissions
            .last()
            .map_or(0, |s| s.request)
    };
    for round in 0..6 {
        let mut child = run();
        if round < 2 {
            tokio::time::sleep(Duration::from_millis(40 + 200 * round)).await;
        } else {
            let before = events_sent();
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while events_sent() < before + 10
                && child.try_wait().unwrap().is_none()
                && std::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let was_killed = child.try_wait().unwrap().is_none();
        if was_killed {
            child.kill().unwrap();
            killed += 1;
            let sent = events_sent();
            mid_delivery |= sent > 0 && sent < orders * 3; // 3 events an order
        }
        child.wait().unwrap();
        // A request that reached the stand-in before the kill is answered all the same.
        tokio::time::sleep(Duration::from_millis(200)).await;
        rounds.push((last_request(), was_killed));
    }
    assert!(killed >= 3, "the runs finished before they could be killed");
    assert!(mid_delivery, "no kill landed during delivery");
    let mut last = run();
    let status = tokio::task::spawn_blocking(move || last.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "the final run failed: {status}");
    rounds.push((last_request(), false));

    // Every event arrived, each unique_id once in effect.
    let engine = common::engine();
    let expected: BTreeSet<String> = common::run(&engine, &[input.to_str().unwrap()])
        .requests
        .iter()
        .filter_map(|r| r.unique_id().map(str::to_owned))
        .collect();
    let accepted = standin.accepted();
    let arrived: BTreeSet<String> = accepted.submissions_by_unique_id().into_keys().collect();
    assert_eq!(arrived, expected);
    // Sent again only what a kill caught between Klaviyo's answer and the store's mark: a run
    // resends nothing it got accepted itself, nothing from a run that ended on its own, and
    // from a killed run at most the requests it had in flight.
    let in_flight = marketsync::sink::SinkConfig::new("", ApiKey::new("")).concurrency;
    let round_of = |request: u64| {
        rounds
            .iter()
            .position(|(last, _)| request <= *last)
            .unwrap()
    };
    let mut last_sent: HashMap<&str, u64> = HashMap::new();
    // Per round: its requests whose events a later round sent again.
    let mut lost: Vec<BTreeSet<u64>> = vec![BTreeSet::new(); rounds.len()];
    for submission in &accepted.submissions {
        let Some(unique_id) = submission.unique_id.as_deref() else {
            continue;
        };
        if let Some(previous) = last_sent.insert(unique_id, submission.request) {
            let (now, before) = (round_of(submission.request), round_of(previous));
            assert!(
                now > before && rounds[before].1,
                "{unique_id} was accepted in request {previous} (round {before}) and sent again \
                 in request {} (round {now}); rounds (last request, killed): {rounds:?}",
                submission.request
            );
            lost[before].insert(previous);
        }
    }
    for (round, requests) in lost.iter().enumerate() {
        assert!(
            requests.len() <= in_flight,
            "the events of {} requests of round {round} were sent again, more than one run \
             has in flight ({in_flight}): {requests:?}",
            requests.len()
        );
    }
    // Every customer's profile and opt-in arrived.
    assert_eq!(accepted.profiles.len(), orders);
    let subscribed: BTreeSet<&str> = accepted
        .subscriptions
        .iter()
        .filter_map(|s| s.email.as_deref())
        .collect();
    assert_eq!(subscribed.len(), orders);
    // Nothing is left behind or dead.
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    let status = store.status(0).unwrap();
    assert!(status.lanes.values().all(|l| l.depth == 0), "{status:?}");
    assert!(status.dead_letters.is_empty(), "{status:?}");
    standin.shutdown().await;
}
