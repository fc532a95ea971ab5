//! `marketsync customer` (issue 19): a shopper's history for customer service, found as the
//! mappings normalise them, newest first, each request with its fate; and with `--klaviyo`,
//! what Klaviyo holds now and where it disagrees.

mod common;

use common::{marketsync, repo};
use marketsync::standin::{Config, DEFAULT_API_KEY, StandIn};
use serde_json::{Value as Json, json};
use std::path::Path;

const ZOE: &str = "zoe.kowalski@example.com";

fn capture(path: &str) -> Json {
    serde_json::from_str(&std::fs::read_to_string(repo(path)).unwrap()).unwrap()
}

fn order_lines() -> Vec<Json> {
    std::fs::read_to_string(repo("examples/orders.ndjson"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Zoë's deliveries, oldest first: order 5001 on petmarket in two invoices (the second one's
/// Placed Order, opt-in and profile update fire once per key: dropped), order 8001 on toyworld
/// dated in 2099 (Klaviyo refuses its events: dead letters) and carrying no opt-in, the
/// shipment of 5001, and a refund of 5001.
fn shoppers_deliveries() -> String {
    let orders = order_lines();
    let mut toyworld = orders[0].clone();
    toyworld["headers"]["Marketplacer-Vertical"] = json!("toyworld");
    toyworld["headers"]["Idempotency-Key"] = json!("9a1d3c55-1111-4e4f-b546-cf315cc8f11b");
    toyworld["body"]["id"] = json!("V2ViaG9va0V2ZW50LTk5OTk5");
    let order = &mut toyworld["body"]["payload"]["data"]["node"]["order"];
    order["legacyId"] = json!(8001);
    order["createdAt"] = json!("2099-01-01T10:00:00+11:00");
    // A newer profile version than petmarket's: the profile update is sent, not coalesced.
    order["updatedAt"] = json!("2026-03-20T10:00:00+11:00");
    order["metadata"] = json!([{"key": "accepts_marketing", "value": "no"}]);
    let shipment = capture("examples/shipment.json");
    let mut refund = capture("examples/refund.json");
    let order = &mut refund["body"]["payload"]["data"]["node"]["invoice"]["order"];
    order["legacyId"] = json!(5001);
    order["emailAddress"] = json!("Zoe.Kowalski@example.com");
    [&orders[0], &orders[1], &toyworld, &shipment, &refund]
        .iter()
        .map(|c| c.to_string() + "\n")
        .collect()
}

/// A state file after real runs of Zoë's deliveries (and the other shoppers' orders): all of
/// them stored first (`run --no-send`), then sent to the stand-in by a second run. Storing
/// first makes the coalescing certain: sent in one run, petmarket's profile update could reach
/// Klaviyo before toyworld's newer one was read, and then nothing supersedes it.
fn ran(standin: &StandIn, dir: &Path) -> std::path::PathBuf {
    let input = dir.join("zoe.ndjson");
    let others: String = order_lines()[3..]
        .iter()
        .map(|c| c.to_string() + "\n")
        .collect();
    std::fs::write(&input, others + &shoppers_deliveries()).unwrap();
    let state = dir.join("state.db");
    let run = || {
        let mut command = marketsync();
        command
            .args(["run", "--mappings"])
            .arg(repo("mappings"))
            .arg("--state")
            .arg(&state)
            .env("KLAVIYO_API_KEY", DEFAULT_API_KEY)
            .env("KLAVIYO_BASE_URL", standin.url());
        command
    };
    let stored = run().arg("--no-send").arg(&input).output().unwrap();
    assert_eq!(
        stored.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&stored.stderr)
    );
    let out = run().write_stdin("").output().unwrap();
    // Exit 1: the toyworld order's events were refused.
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    state
}

fn customer(state: &Path, who: &str, extra: &[&str]) -> (Option<i32>, Json, String) {
    let out = marketsync()
        .args(["customer", "--format", "json", "--mappings"])
        .arg(repo("mappings"))
        .arg("--state")
        .arg(state)
        .args(extra)
        .arg(who)
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Json::Null);
    (out.status.code(), json, stderr)
}

/// (type, marketplace, order) of each timeline entry, newest first.
fn entries(view: &Json) -> Vec<(String, String, String)> {
    view["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["marketplace"].as_str().unwrap().to_owned(),
                e["order"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect()
}

/// (what, status) of each request of the entry at `index`.
fn requests(view: &Json, index: usize) -> Vec<(String, String)> {
    view["timeline"][index]["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["what"].as_str().unwrap().to_owned(),
                r["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn has(list: &[(String, String)], what: &str, status: &str) -> bool {
    list.iter().any(|(w, s)| w == what && s == status)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_shoppers_history_lists_every_delivery_newest_first_with_each_requests_fate() {
    let rt = runtime();
    let standin = rt.block_on(StandIn::start(Config::default())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = ran(&standin, dir.path());

    let (code, view, stderr) = customer(&state, " Zoe.Kowalski@Example.COM ", &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        !stderr.contains("zoe"),
        "nothing about the person on stderr: {stderr}"
    );
    assert_eq!(view["found"], true);
    assert_eq!(view["lookup"], json!({"kind": "email", "value": ZOE}));
    assert_eq!(view["identity"]["emails"], json!([ZOE]));
    assert_eq!(view["identity"]["phones"], json!(["+61412345678"]));
    assert_eq!(
        view["identity"]["marketplaces"],
        json!(["petmarket", "toyworld"])
    );
    let entries = entries(&view);
    let expected = [
        ("RefundRequest", "petmarket", "5001"),
        ("Shipment", "petmarket", "5001"),
        ("Invoice", "toyworld", "8001"),
        ("Invoice", "petmarket", "5001"),
        ("Invoice", "petmarket", "5001"),
    ];
    let expected: Vec<(String, String, String)> = expected
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(entries, expected, "only Zoë's deliveries, newest first");
    let times: Vec<i64> = view["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["received_at_ms"].as_i64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");

    assert_eq!(
        requests(&view, 0),
        [("Refunded Order".to_owned(), "sent".to_owned())]
    );
    assert_eq!(
        requests(&view, 1),
        [("Fulfilled Order".to_owned(), "sent".to_owned())]
    );
    let toyworld = requests(&view, 2);
    assert!(
        has(&toyworld, "Placed Order", "dead-letter"),
        "{toyworld:?}"
    );
    assert!(has(&toyworld, "profile update", "sent"), "{toyworld:?}");
    assert!(
        !toyworld.iter().any(|(w, _)| w == "email opt-in"),
        "{toyworld:?}"
    );
    let dead = view["timeline"][2]["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["what"] == "Placed Order")
        .unwrap();
    assert!(
        dead["detail"]
            .as_str()
            .unwrap()
            .contains("1 year in the future"),
        "Klaviyo's reason is shown: {dead}"
    );
    assert_eq!(dead["klaviyo_status"], 400);
    let again = requests(&view, 3);
    for what in ["placed-order event", "email opt-in", "profile update"] {
        assert!(has(&again, what, "dropped-once"), "{what}: {again:?}");
    }
    let first = requests(&view, 4);
    for what in ["Placed Order", "Ordered Product", "email opt-in"] {
        assert!(has(&first, what, "sent"), "{what}: {first:?}");
    }
    // Its profile update was replaced, before it was sent, by toyworld's newer one.
    assert!(has(&first, "profile update", "superseded"), "{first:?}");
    assert!(
        view["open_dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("order 8001")),
        "{view:#}"
    );

    // Consent: the petmarket opt-in was sent with what the order carried; the second invoice's
    // was dropped once per key; the toyworld order carried no opt-in.
    let consent = view["consent"].as_array().unwrap();
    let sent = consent.iter().find(|c| c["outcome"] == "sent").unwrap();
    assert_eq!(sent["marketplace"], "petmarket");
    assert_eq!(sent["order"], "5001");
    assert_eq!(sent["consent"], "SUBSCRIBED");
    assert!(sent["accepted_at"].is_string());
    assert!(
        sent["evidence"]
            .as_str()
            .unwrap()
            .contains("accepts_marketing = \"yes\""),
        "{sent}"
    );
    assert!(consent.iter().any(|c| c["outcome"] == "dropped-once"));
    let none = consent
        .iter()
        .find(|c| c["marketplace"] == "toyworld")
        .unwrap();
    assert_eq!(none["outcome"], "none");
    assert!(
        none["why"].as_str().unwrap().contains("no explicit opt-in"),
        "{none}"
    );
    assert!(
        none["evidence"].as_str().unwrap().contains("\"no\""),
        "{none}"
    );

    // The same person, however written, and by phone in any format the mappings read.
    let (_, lower, _) = customer(&state, ZOE, &[]);
    assert_eq!(lower["timeline"], view["timeline"]);
    for phone in ["0412 345 678", "+61 412 345 678", "(04) 1234 5678"] {
        let (code, by_phone, stderr) = customer(&state, phone, &[]);
        assert_eq!(code, Some(0), "{phone}: {stderr}");
        assert_eq!(by_phone["lookup"]["value"], "+61412345678");
        assert_eq!(
            by_phone["timeline"].as_array().unwrap().len(),
            5,
            "a phone brings the email it was seen with: {phone}"
        );
    }

    // The human view reads in the same order, with the statuses in words.
    let out = marketsync()
        .args(["customer", "--mappings"])
        .arg(repo("mappings"))
        .arg("--state")
        .arg(&state)
        .arg(ZOE)
        .output()
        .unwrap();
    let human = String::from_utf8(out.stdout).unwrap();
    let at = |needle: &str| {
        human
            .find(needle)
            .unwrap_or_else(|| panic!("{needle} not in:\n{human}"))
    };
    assert!(at("RefundRequest") < at("Shipment") && at("Shipment") < at("toyworld  Invoice"));
    assert!(human.contains("dropped: once per key"), "{human}");
    assert!(human.contains("dead letter"), "{human}");
    rt.block_on(standin.shutdown());
}

#[test]
fn an_unknown_person_or_an_unreadable_one_says_so_with_its_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.db");
    let out = marketsync()
        .args(["customer", "--state"])
        .arg(&state)
        .arg(ZOE)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "a missing state file is not an empty one"
    );
    marketsync::store::Store::open(&state).unwrap();
    let (code, view, _) = customer(&state, "nobody@example.com", &[]);
    assert_eq!(code, Some(1));
    assert_eq!(view["found"], false);
    assert_eq!(view["timeline"], json!([]));
    let out = marketsync()
        .args(["customer", "--state"])
        .arg(&state)
        .arg("Nobody@Example.com")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let human = String::from_utf8(out.stdout).unwrap();
    assert!(
        human.contains("no delivery concerned nobody@example.com"),
        "{human}"
    );
    for unreadable in ["zoe at example", "12", "zoe@"] {
        let out = marketsync()
            .args(["customer", "--state"])
            .arg(&state)
            .arg(unreadable)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{unreadable}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(
            stderr.contains("neither an email address nor a phone number"),
            "{stderr}"
        );
    }
}

#[test]
fn klaviyo_is_read_back_and_a_consent_that_differs_is_marked() {
    let rt = runtime();
    let standin = rt.block_on(StandIn::start(Config::default())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = ran(&standin, dir.path());
    let with_key = |extra: &[&str]| {
        let out = marketsync()
            .args(["customer", "--format", "json", "--klaviyo", "--mappings"])
            .arg(repo("mappings"))
            .arg("--state")
            .arg(&state)
            .args(extra)
            .arg(ZOE)
            .env("KLAVIYO_API_KEY", DEFAULT_API_KEY)
            .env("KLAVIYO_BASE_URL", standin.url())
            .output()
            .unwrap();
        (
            out.status.code(),
            serde_json::from_slice::<Json>(&out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (code, view, stderr) = with_key(&[]);
    assert_eq!(code, Some(0), "{stderr}");
    let klaviyo = &view["klaviyo"];
    let profiles = klaviyo["profiles"].as_array().unwrap();
    assert_eq!(profiles.len(), 1, "{klaviyo:#}");
    let held = standin.accepted();
    assert_eq!(profiles[0]["id"], held.profile_by_email(ZOE).unwrap().id);
    assert_eq!(profiles[0]["email_consent"], "SUBSCRIBED");
    assert_eq!(profiles[0]["custom_method_detail"], "Marketplacer checkout");
    assert_eq!(
        profiles[0]["properties_we_own"]["Marketplacer Marketplace"], "toyworld",
        "the newest profile update we sent"
    );
    let metrics: Vec<&str> = klaviyo["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["metric"].as_str().unwrap())
        .collect();
    for metric in ["Placed Order", "Fulfilled Order", "Refunded Order"] {
        assert!(metrics.contains(&metric), "{metric}: {metrics:?}");
    }
    assert!(!metrics.is_empty() && metrics.len() < held.events.len());
    assert_eq!(klaviyo["disagreements"], json!([]), "{klaviyo:#}");

    // Zoë unsubscribes in Klaviyo: the opt-in we sent and Klaviyo now disagree, and the view
    // says Klaviyo rightly wins.
    standin.suppress(ZOE, "UNSUBSCRIBE").unwrap();
    let (code, view, _) = with_key(&[]);
    assert_eq!(code, Some(0));
    let disagreements = view["klaviyo"]["disagreements"].as_array().unwrap();
    assert_eq!(disagreements.len(), 1, "{disagreements:?}");
    let consent = disagreements[0].as_str().unwrap();
    assert!(consent.starts_with("email consent: we sent SUBSCRIBED (order 5001 on petmarket"));
    assert!(consent.contains("Klaviyo now says UNSUBSCRIBED, suppressed: UNSUBSCRIBE since"));
    assert_eq!(
        view["klaviyo"]["profiles"][0]["can_receive_email_marketing"],
        false
    );

    // A wrong key: exit 5, the local history still shown.
    let out = marketsync()
        .args(["customer", "--format", "json", "--klaviyo", "--state"])
        .arg(&state)
        .arg(ZOE)
        .env("KLAVIYO_API_KEY", "pk_wrong")
        .env("KLAVIYO_BASE_URL", standin.url())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    let view: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(view["found"], true);
    assert!(
        view["klaviyo_error"]
            .as_str()
            .unwrap()
            .contains("refused the API key")
    );
    assert!(!String::from_utf8(out.stderr).unwrap().contains("pk_wrong"));

    // No key: said so, and the local history is the answer.
    let (code, view, stderr) = customer(&state, ZOE, &["--klaviyo"]);
    assert_eq!(code, Some(0));
    assert!(
        stderr.contains("no Klaviyo key is configured (set KLAVIYO_API_KEY)"),
        "{stderr}"
    );
    assert_eq!(view["klaviyo"], Json::Null);
    assert_eq!(view["timeline"].as_array().unwrap().len(), 5);
    rt.block_on(standin.shutdown());
}
