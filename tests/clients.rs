//! The consultant's loop: a client folder set up with `init`, changed by overlays and
//! `client.yaml`, checked by `validate` and `test` (for people and for CI), and compared with
//! `config` and `diff`.

mod common;

use assert_cmd::Command;
use marketsync::engine::Engine;
use marketsync::spec::load_client;
use predicates::prelude::*;
use serde_json::Value;
use std::fs;
use std::path::Path;

/// A consultant's repository in a temp folder.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Workspace {
        Workspace {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, path: &str, text: &str) -> &Self {
        let path = self.path().join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
        self
    }

    /// A sample delivery from the repository's examples, copied into the workspace.
    fn example(&self, example: &str, to: &str) -> &Self {
        let text = fs::read_to_string(common::repo("examples").join(example)).unwrap();
        self.write(to, &text)
    }

    /// A folder of the repository (`mappings`, `examples`) copied into the workspace.
    fn copy(&self, folder: &str, to: &str) -> &Self {
        for entry in fs::read_dir(common::repo(folder)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap();
            self.write(&format!("{to}/{name}"), &fs::read_to_string(&path).unwrap());
        }
        self
    }

    /// The command, run in the workspace, blind to the caller's settings.
    fn marketsync(&self) -> Command {
        let mut cmd = common::marketsync();
        cmd.current_dir(self.path());
        cmd
    }

    /// The client's compiled engine and warnings, or its problems rendered.
    fn engine(&self, client: &str) -> Result<(Engine, String), String> {
        Engine::compile(load_client(None, &self.path().join("clients").join(client)))
            .map(|(engine, warnings)| (engine, format!("{warnings:#}")))
            .map_err(|problems| format!("{problems:#}"))
    }
}

const CLIENT: &str = "\
rate_limits:
  /api/events: { burst: 10, steady: 100 }
marketplaces:
  petmarket: { currency: AUD }
  petmarket-nz: { currency: NZD }
klaviyo_api_key_env: ACME_KLAVIYO_API_KEY
metrics:
  placed_order: Placed Order (Marketplace)
profile_attributes:
  Customer Note: $.order.metadata[?@.key == 'customer_note'].value
";

/// Requests of one mapping for the sample orders, as a dry run gives them.
fn bodies(engine: &Engine, mapping: &str) -> Vec<Value> {
    common::run(
        engine,
        &[common::repo("examples/orders.ndjson").to_str().unwrap()],
    )
    .of_mapping(mapping)
    .iter()
    .map(|r| r.body.clone())
    .collect()
}

#[test]
fn an_overlay_adds_a_property_changes_a_path_and_removes_a_property_by_name() {
    let ws = Workspace::new();
    ws.write("clients/acme/client.yaml", CLIENT).write(
        "clients/acme/mappings/placed-order.yaml",
        "\
overlay: placed-order
select:
  first_name: { path: $.order.billingSurname, optional: true }   # changed path
emit:
  body:
    data:
      attributes:
        properties:
          SalesChannel: Marketplace    # added
          Brands: null                 # removed
",
    );
    let (engine, _) = ws.engine("acme").unwrap();
    let base = bodies(&common::engine(), "placed-order");
    let client = bodies(&engine, "placed-order");
    assert_eq!(base.len(), client.len());
    let properties = &client[0]["data"]["attributes"]["properties"];
    assert_eq!(properties["SalesChannel"], "Marketplace");
    assert!(properties.get("Brands").is_none(), "{properties}");
    assert!(
        base[0]["data"]["attributes"]["properties"]
            .get("Brands")
            .is_some()
    );
    // Everything the overlay does not name is the base's.
    assert_eq!(
        properties["Items"],
        base[0]["data"]["attributes"]["properties"]["Items"]
    );
    // client.yaml renamed the metric.
    assert_eq!(
        client[0]["data"]["attributes"]["metric"]["data"]["attributes"]["name"],
        "Placed Order (Marketplace)"
    );
    // The changed path is read.
    let order: Value = serde_json::from_str(
        fs::read_to_string(common::repo("examples/orders.ndjson"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let billing = &order["body"]["payload"]["data"]["node"]["order"]["billingSurname"];
    let profile = &client[0]["data"]["attributes"]["profile"]["data"]["attributes"];
    assert_eq!(&profile["first_name"], billing);
    assert_ne!(
        profile["first_name"],
        base[0]["data"]["attributes"]["profile"]["data"]["attributes"]["first_name"]
    );
}

#[test]
fn disable_turns_a_base_mapping_off_for_one_client() {
    let ws = Workspace::new();
    ws.write("clients/acme/client.yaml", CLIENT).write(
        "clients/acme/mappings/no-cancellations.yaml",
        "overlay: cancelled-order\ndisable: true\n",
    );
    let (engine, _) = ws.engine("acme").unwrap();
    let names: Vec<String> = engine
        .mapping_names()
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert!(!names.contains(&"cancelled-order".to_owned()), "{names:?}");
    assert_eq!(names.len(), 6);
}

#[test]
fn a_client_mapping_without_overlay_is_added_to_the_set() {
    let ws = Workspace::new();
    let extra = fs::read_to_string(common::repo("mappings/placed-order.yaml"))
        .unwrap()
        .replace("name: placed-order", "name: placed-order-copy")
        .replace(
            "examples:\n  - ../examples/orders.ndjson\n  - ../examples/backfill-page.json\n",
            "",
        )
        .replace(":placed-order:", ":placed-order-copy:");
    let extra = extra[..extra.find("\ntests:").unwrap()].to_owned();
    ws.write("clients/acme/client.yaml", CLIENT)
        .write("clients/acme/mappings/extra.yaml", &extra);
    let (engine, _) = ws.engine("acme").unwrap();
    assert_eq!(engine.mapping_names().len(), 8);
    assert_eq!(bodies(&engine, "placed-order-copy").len(), 3);
}

#[test]
fn client_settings_choose_currency_by_marketplace_and_add_profile_attributes() {
    let ws = Workspace::new();
    ws.write("clients/acme/client.yaml", CLIENT);
    let (engine, _) = ws.engine("acme").unwrap();
    assert_eq!(
        engine.settings().klaviyo_api_key_env.as_deref(),
        Some("ACME_KLAVIYO_API_KEY")
    );
    let events = engine.settings().rate_limits["/api/events"];
    assert_eq!((events.burst, events.steady), (10, 100));
    // A delivery from the NZ vertical is valued in NZD.
    let text = fs::read_to_string(common::repo("examples/orders.ndjson")).unwrap();
    let nz = text.lines().next().unwrap().replace(
        "\"Marketplacer-Vertical\":\"petmarket\"",
        "\"Marketplacer-Vertical\":\"petmarket-nz\"",
    );
    let records = marketsync::source::parse_delivery(&nz).unwrap();
    let mapped = engine.map(&records[0]);
    let placed = mapped
        .requests
        .iter()
        .find(|r| &*r.mapping == "placed-order")
        .unwrap();
    assert_eq!(placed.body["data"]["attributes"]["value_currency"], "NZD");
    assert!(
        placed.body["data"]["attributes"]["unique_id"]
            .as_str()
            .unwrap()
            .starts_with("petmarket-nz:")
    );
    // The extra attribute is read where present and left out where not.
    let with_note = text.lines().next().unwrap().replacen(
        "\"metadata\":[",
        "\"metadata\":[{\"key\":\"customer_note\",\"value\":\"Leave at the back door\"},",
        1,
    );
    let records = marketsync::source::parse_delivery(&with_note).unwrap();
    let profile = engine
        .map(&records[0])
        .requests
        .into_iter()
        .find(|r| &*r.mapping == "profile")
        .unwrap();
    let properties = &profile.body["data"]["attributes"]["properties"];
    assert_eq!(
        properties["Customer Note"], "Leave at the back door",
        "{properties}"
    );
    let plain = bodies(&engine, "profile");
    assert!(
        plain[0]["data"]["attributes"]["properties"]
            .get("Customer Note")
            .is_none()
    );
}

#[test]
fn the_client_names_the_variable_holding_its_klaviyo_key() {
    let ws = Workspace::new();
    ws.write("clients/acme/client.yaml", CLIENT)
        .example("refund.json", "refund.json");
    ws.marketsync()
        .args([
            "run",
            "--client",
            "acme",
            "--state",
            "state.db",
            "refund.json",
        ])
        .env_remove("ACME_KLAVIYO_API_KEY")
        .env("KLAVIYO_API_KEY", "pk_not_this_one")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("set ACME_KLAVIYO_API_KEY"));
}

#[test]
fn mistakes_in_overlays_are_reported_in_the_overlay_file_at_their_line() {
    let ws = Workspace::new();
    ws.write("clients/acme/client.yaml", CLIENT)
        .write(
            "clients/acme/mappings/placed-order.yaml",
            "overlay: placed-order\nemit:\n  body:\n    data:\n      attributes:\n        properties:\n          Gift: \"{{ gift_mesage }}\"\n",
        )
        .write(
            "clients/acme/mappings/typo.yaml",
            "overlay: refunded-ordr\ndisable: true\n",
        )
        .write("clients/acme/mappings/settings.yaml", "marketplace: x\n");
    let problems = ws.engine("acme").err().expect("the overlays are wrong");
    assert!(
        problems.contains(
            "clients/acme/mappings/placed-order.yaml:7:21: error: `gift_mesage` is not defined here"
        ),
        "{problems}"
    );
    assert!(
        problems.contains("clients/acme/mappings/typo.yaml:1:10: error: `overlay: refunded-ordr` names no base mapping"),
        "{problems}"
    );
    assert!(
        problems.contains("a client's settings go in client.yaml"),
        "{problems}"
    );
}

#[test]
fn native_metric_names_warn_when_marketplacers_own_integration_is_on() {
    let ws = Workspace::new();
    ws.write(
        "clients/acme/client.yaml",
        "marketplaces:\n  petmarket: { currency: AUD }\nmarketplacer_klaviyo_integration: true\n",
    );
    let (_, warnings) = ws.engine("acme").unwrap();
    assert!(
        warnings.contains("clients/acme/client.yaml:3:35: warning: mapping `placed-order` sends metric `Placed Order`"),
        "{warnings}"
    );
    assert!(
        warnings.contains("`ordered-product` sends metric `Ordered Product`"),
        "{warnings}"
    );
    // Renamed, the warnings go.
    ws.write(
        "clients/acme/client.yaml",
        "marketplacer_klaviyo_integration: true\nmetrics:\n  placed_order: Placed Order (Marketplace)\n  ordered_product: Ordered Product (Marketplace)\n",
    );
    let (_, warnings) = ws.engine("acme").unwrap();
    assert!(warnings.is_empty(), "{warnings}");
    // And with the integration off, the native names are ours to use.
    ws.write(
        "clients/acme/client.yaml",
        "marketplacer_klaviyo_integration: false\n",
    );
    assert!(ws.engine("acme").unwrap().1.is_empty());
}

#[test]
fn init_scaffolds_a_client_that_validates_and_passes_its_tests() {
    let ws = Workspace::new();
    ws.marketsync()
        .args([
            "init",
            "acme",
            "--marketplace",
            "acme-pets",
            "--currency",
            "NZD",
        ])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("created clients/acme/client.yaml"));
    for file in [
        "clients/acme/client.yaml",
        "clients/acme/mappings/placed-order.yaml",
        "clients/acme/fixtures/sample-order.json",
        "snapshots/acme/sample-order.snap",
    ] {
        assert!(ws.path().join(file).is_file(), "{file} was not created");
    }
    ws.marketsync()
        .args(["validate", "--client", "acme"])
        .assert()
        .code(0);
    ws.marketsync()
        .args(["test", "--client", "acme"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains(
            "ok    placed-order › the sample order",
        ))
        .stderr(predicate::str::contains("10 passed, 0 failed"));
    // Never over an existing client.
    ws.marketsync()
        .args(["init", "acme"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("already exists"));
}

/// A client with two failing tests and one passing, for the output formats.
fn client_with_failing_tests() -> Workspace {
    let ws = Workspace::new();
    ws.write("clients/acme/client.yaml", CLIENT)
        .example("orders.ndjson", "clients/acme/fixtures/orders.ndjson")
        .write(
            "clients/acme/mappings/consent.yaml",
            "\
overlay: consent
base_tests: true
tests:
  - name: opted-in buyer is subscribed
    delivery: ../fixtures/orders.ndjson
    expect:
      - data.attributes.profiles.data.0.attributes.email: zoe.kowalski@example.com
  - name: wrong email on purpose
    delivery: ../fixtures/orders.ndjson
    expect:
      - data.attributes.profiles.data.0.attributes.email: someone@else.com
  - name: wrong count on purpose
    delivery: ../fixtures/orders.ndjson
    expect: []
",
        );
    ws
}

#[test]
fn test_reports_every_failure_at_its_line_and_exits_1() {
    let ws = client_with_failing_tests();
    // Accept the fixture snapshot first, so only the spec tests fail.
    ws.marketsync()
        .args(["test", "--client", "acme", "--update"])
        .assert()
        .code(1);
    ws.marketsync()
        .args(["test", "--client", "acme"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("ok    consent › opted-in buyer is subscribed"))
        .stdout(predicate::str::contains(
            "clients/acme/mappings/consent.yaml:11:59: error: test `wrong email on purpose` of `consent`: request 1: `data.attributes.profiles.data.0.attributes.email` is `\"zoe.kowalski@example.com\"`, expected `\"someone@else.com\"`",
        ))
        .stdout(predicate::str::contains(
            "clients/acme/mappings/consent.yaml:14:13: error: test `wrong count on purpose` of `consent`: expected 0 request(s), got 1",
        ))
        // The base mappings' own tests run for the client too (8 of them).
        .stderr(predicate::str::contains("10 passed, 2 failed"));
}

#[test]
fn test_speaks_github_annotations_and_json() {
    let ws = client_with_failing_tests();
    let github = ws
        .marketsync()
        .args(["test", "--client", "acme", "--format", "github"])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let github = String::from_utf8(github).unwrap();
    assert!(
        github.contains("::error file=clients/acme/mappings/consent.yaml,line=11,col=59::test `wrong email on purpose`"),
        "{github}"
    );
    // The new fixture snapshot is a failure too, annotated on the snapshot file.
    assert!(
        github.contains("::error file=snapshots/acme/orders.snap::clients/acme/fixtures/orders.ndjson no longer matches"),
        "{github}"
    );
    // The diff goes in a folded group of the log, not in the annotation.
    assert!(
        github.contains("::group::snapshots/acme/orders.snap\n"),
        "{github}"
    );
    assert!(github.contains("\n::endgroup::"), "{github}");
    let json = ws
        .marketsync()
        .args(["test", "--client", "acme", "--format", "json"])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let report: Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["passed"], 9);
    assert_eq!(report["failed"], 3);
    let wrong_email = report["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "consent › wrong email on purpose")
        .unwrap();
    assert_eq!(wrong_email["ok"], false);
    assert_eq!(wrong_email["failures"][0]["line"], 11);
}

#[test]
fn fixture_snapshots_are_pending_until_accepted_and_changes_show_as_a_diff() {
    let ws = Workspace::new();
    ws.write("clients/acme/client.yaml", CLIENT)
        .example("refund.json", "clients/acme/fixtures/refund.json");
    // New: a failure, held as .snap.new for review (insta's name for a pending snapshot).
    ws.marketsync()
        .args(["test", "--client", "acme"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("new snapshot"));
    assert!(ws.path().join("snapshots/acme/refund.snap.new").is_file());
    assert!(!ws.path().join("snapshots/acme/refund.snap").exists());
    // Accepted with --update: written in insta's format, pending file gone, and it passes.
    ws.marketsync()
        .args(["test", "--client", "acme", "--update"])
        .assert()
        .code(0);
    let snap = fs::read_to_string(ws.path().join("snapshots/acme/refund.snap")).unwrap();
    assert!(snap.starts_with("---\nsource: "), "{snap}");
    assert!(snap.contains("\"unique_id\": \"petmarket:refunded-order:7002\""));
    assert!(!ws.path().join("snapshots/acme/refund.snap.new").exists());
    ws.marketsync()
        .args(["test", "--client", "acme"])
        .assert()
        .code(0);
    // An overlay changes the payload: the diff names the line that changed.
    ws.write(
        "clients/acme/mappings/refunded-order.yaml",
        "overlay: refunded-order\nemit:\n  body:\n    data:\n      attributes:\n        properties:\n          Marketplace: Acme\n",
    );
    ws.marketsync()
        .args(["test", "--client", "acme"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains(
            "-            \"Marketplace\": \"petmarket\",",
        ))
        .stdout(predicate::str::contains(
            "+            \"Marketplace\": \"Acme\",",
        ));
    // insta's own reader accepts the file we wrote.
    let read =
        marketsync::testing::snapshot::Snapshot::read(ws.path().join("snapshots/acme/refund.snap"))
            .unwrap()
            .unwrap();
    assert!(read.contents.starts_with('['));
}

#[test]
fn config_prints_the_effective_mappings_and_diff_compares_two_clients() {
    let ws = Workspace::new();
    ws.write("clients/acme/client.yaml", CLIENT)
        .write(
            "clients/acme/mappings/placed-order.yaml",
            "overlay: placed-order\nemit:\n  body:\n    data:\n      attributes:\n        properties:\n          SalesChannel: Marketplace\n",
        )
        .write("clients/beta/client.yaml", "marketplaces:\n  beta: { currency: USD }\n");
    ws.marketsync()
        .args(["config", "--client", "acme"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains(
            "# mapping placed-order, from <builtin>/placed-order.yaml + clients/acme/mappings/placed-order.yaml",
        ))
        .stdout(predicate::str::contains("SalesChannel: Marketplace"))
        .stdout(predicate::str::contains("placed_order: Placed Order (Marketplace)"));
    ws.marketsync()
        .args(["diff", "--client", "acme", "--client", "beta"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("--- acme\n+++ beta"))
        .stdout(predicate::str::contains(
            "-          SalesChannel: Marketplace",
        ))
        .stdout(predicate::str::contains("+  beta:"));
    ws.marketsync()
        .args(["diff", "--client", "acme", "--client", "acme"])
        .assert()
        .code(0);
}

#[test]
fn the_default_mappings_pass_their_own_tests() {
    // Every test the mapping files declare runs and passes: "0 passed, 0 failed" (tests not
    // found, or not run) is a failure here too.
    let declared =
        marketsync::testing::cases::collect(&marketsync::spec::load_dir(&common::repo("mappings")))
            .0
            .len();
    assert!(declared >= 8, "the default mappings declare their tests");
    common::marketsync()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("test")
        .assert()
        .code(0)
        .stderr(predicate::str::contains(format!(
            "{declared} passed, 0 failed"
        )));
}

#[test]
fn paths_marketplacer_never_sends_are_warned_about_at_their_line() {
    let ws = Workspace::new();
    ws.write(
        "clients/acme/client.yaml",
        "profile_attributes:\n  Tier: $.order.loyaltyTeir\n",
    )
    .write(
        "clients/acme/mappings/placed-order.yaml",
        "overlay: placed-order\nselect:\n  gift: { path: $.order.emailAdress, optional: true }\n",
    );
    ws.marketsync()
        .args(["validate", "--client", "acme"])
        .assert()
        .code(0)
        .stderr(predicate::str::contains(
            "clients/acme/mappings/placed-order.yaml:3:9: warning: selection `gift`: `$.order.emailAdress`: `Order` has no field `emailAdress` (did you mean `emailAddress`?)",
        ))
        .stderr(predicate::str::contains(
            "clients/acme/client.yaml:2:9: warning: profile_attributes.Tier: `$.order.loyaltyTeir`: `Order` has no field `loyaltyTeir`",
        ));
    ws.marketsync()
        .args([
            "validate", "--client", "acme", "--strict", "--format", "github",
        ])
        .assert()
        .code(1)
        .stdout(predicate::str::contains(
            "::warning file=clients/acme/mappings/placed-order.yaml,line=3,col=9::",
        ));
}

#[test]
fn tests_take_inline_deliveries_whole_bodies_endpoints_and_expected_rejections() {
    let ws = Workspace::new();
    let delivery = fs::read_to_string(common::repo("examples/refund.json")).unwrap();
    let delivery: Value = serde_json::from_str(&delivery).unwrap();
    // The whole body the base mapping makes of it, to expect in full.
    let body = {
        let records = marketsync::source::parse_delivery(&delivery.to_string()).unwrap();
        common::engine()
            .map(&records[0])
            .requests
            .into_iter()
            .find(|r| &*r.mapping == "refunded-order")
            .unwrap()
            .body
    };
    let mut no_email = delivery.clone();
    no_email["body"]["payload"]["data"]["node"]["invoice"]["order"]
        .as_object_mut()
        .unwrap()
        .remove("emailAddress");
    let overlay = serde_json::json!({
        "overlay": "refunded-order",
        "tests": [
            {"name": "inline, whole body", "delivery": delivery,
             "expect": [{"endpoint": "POST /api/events", "body": body}]},
            {"name": "no email is rejected", "delivery": no_email,
             "error": "required field `email` is missing"},
            {"name": "a rejection not expected fails", "delivery": no_email, "expect": []},
        ]
    });
    // JSON is YAML: the overlay is written as one JSON document.
    ws.write("clients/acme/client.yaml", CLIENT).write(
        "clients/acme/mappings/refunded-order.yaml",
        &overlay.to_string(),
    );
    ws.marketsync()
        .args(["test", "--client", "acme"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("ok    refunded-order › inline, whole body"))
        .stdout(predicate::str::contains("ok    refunded-order › no email is rejected"))
        .stdout(predicate::str::contains(
            "test `a rejection not expected fails` of `refunded-order`: the mapping rejected the delivery: required field `email` is missing",
        ))
        .stderr(predicate::str::contains("10 passed, 1 failed"));
}

#[test]
fn explain_values_a_delivery_in_its_marketplaces_currency_as_run_does() {
    let ws = Workspace::new();
    let text = fs::read_to_string(common::repo("examples/orders.ndjson")).unwrap();
    let nz = text.lines().next().unwrap().replace(
        "\"Marketplacer-Vertical\":\"petmarket\"",
        "\"Marketplacer-Vertical\":\"petmarket-nz\"",
    );
    ws.write("clients/acme/client.yaml", CLIENT)
        .write("nz.json", &nz);
    ws.marketsync()
        .args([
            "explain",
            "--client",
            "acme",
            "--mapping",
            "placed-order",
            "nz.json",
        ])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("currency NZD"))
        .stdout(predicate::str::contains("\"NZD\""));
    ws.marketsync()
        .args(["run", "--dry-run", "--client", "acme", "nz.json"])
        .assert()
        .stdout(predicate::str::contains("\"value_currency\":\"NZD\""));
}

/// The default mappings as a consultant's checkout has them, with one unknown key appended to
/// `placed-order.yaml`.
fn checkout_with_an_edited_mapping() -> Workspace {
    let ws = Workspace::new();
    ws.copy("mappings", "mappings").copy("examples", "examples");
    let edited = fs::read_to_string(ws.path().join("mappings/placed-order.yaml")).unwrap();
    ws.write(
        "mappings/placed-order.yaml",
        &format!("{edited}unknown_key: 1\n"),
    );
    ws
}

#[test]
fn issue11_every_command_reads_the_mappings_folder_of_the_checkout() {
    let ws = checkout_with_an_edited_mapping();
    let line = fs::read_to_string(ws.path().join("mappings/placed-order.yaml"))
        .unwrap()
        .lines()
        .count();
    let at = format!("mappings/placed-order.yaml:{line}:1: error: unknown field `unknown_key`");
    let commands: [&[&str]; 6] = [
        &["validate"],
        &["test"],
        &["config"],
        &["run", "--dry-run", "examples/orders.ndjson"],
        &[
            "explain",
            "--mapping",
            "placed-order",
            "examples/orders.ndjson",
        ],
        &["retry", "--state", "state.db"],
    ];
    for args in commands {
        let expected = if args[0] == "validate" { 1 } else { 3 };
        ws.marketsync()
            .args(args)
            .assert()
            .code(expected)
            .stderr(predicate::str::contains("mappings: mappings/ (7 specs)\n"))
            .stderr(predicate::str::contains(&at));
    }
}

#[test]
fn issue11_mappings_are_chosen_by_flag_then_variable_then_folder_then_built_in() {
    let ws = checkout_with_an_edited_mapping();
    ws.copy("mappings", "good");
    // MARKETSYNC_MAPPINGS comes before ./mappings ...
    ws.marketsync()
        .arg("validate")
        .env("MARKETSYNC_MAPPINGS", "good")
        .assert()
        .code(0)
        .stderr(predicate::str::contains(
            "mappings: good/ (7 specs, from MARKETSYNC_MAPPINGS)\n",
        ));
    // ... and --mappings before both.
    ws.marketsync()
        .args(["validate", "--mappings", "mappings"])
        .env("MARKETSYNC_MAPPINGS", "good")
        .assert()
        .code(1);
    // A folder without specs is no mapping set: the built-in defaults.
    let empty = Workspace::new();
    empty.write("mappings/notes.txt", "not a spec");
    let out = empty
        .marketsync()
        .args(["validate", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said = format!(
        "mappings: built-in defaults (marketsync {})\n",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(stderr.matches(&said).count(), 1, "{stderr}");
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["mapping_set"]["base"], "built-in", "{json}");
    // A client's overlays go on top of whichever base was chosen.
    ws.write("clients/acme/client.yaml", "description: acme\n")
        .write(
            "clients/acme/mappings/consent.yaml",
            "overlay: consent\ndisable: true\n",
        );
    ws.marketsync()
        .args(["config", "--client", "acme"])
        .env("MARKETSYNC_MAPPINGS", "good")
        .assert()
        .code(0)
        .stderr(predicate::str::contains(
            "mappings: good/ (7 specs, from MARKETSYNC_MAPPINGS) + client clients/acme\n",
        ))
        .stdout(predicate::str::contains(
            "# mapping placed-order, from good/placed-order.yaml\n",
        ))
        .stdout(predicate::str::contains("mapping consent").not());
    let out = ws
        .marketsync()
        .args(["validate", "--client", "acme", "--format", "json"])
        .env("MARKETSYNC_MAPPINGS", "good")
        .output()
        .unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["mapping_set"]["base"], "good", "{json}");
    assert_eq!(json["mapping_set"]["client"], "clients/acme", "{json}");
}

#[test]
fn issue11_a_client_folder_given_as_a_base_set_says_to_use_client() {
    let ws = Workspace::new();
    ws.write("clients/acme/client.yaml", "description: acme\n")
        .write(
            "clients/acme/mappings/placed-order.yaml",
            "# a comment\noverlay: placed-order\ndescription: acme's\n",
        )
        .write(
            "clients/acme/mappings/consent.yaml",
            "overlay: consent\ndisable: true\n",
        );
    ws.marketsync()
        .args(["validate", "--mappings", "clients/acme/mappings"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("unknown field `overlay`").not())
        .stderr(predicate::str::contains(
            "clients/acme/mappings/placed-order.yaml:2:10: error: this is a client's overlay",
        ))
        .stderr(predicate::str::contains(
            "is checked with `marketsync validate --client acme`",
        ))
        .stderr(predicate::str::contains("failed: 2 error(s)"));
}

#[test]
fn issue11_client_settings_that_would_fail_at_run_time_fail_validate_at_their_line() {
    let ws = Workspace::new();
    ws.write(
        "clients/acme/client.yaml",
        "\
marketplaces:
  acme-pets: { currency: NZ }
  acme-nz: { currency: nzd }
default_marketplace: \"\"
metrics:
  placed_ordr: Placed Order (Marketplace)
rate_limits:
  /api/event:
    burst: 10
    steady: 100
phone_region: nz
",
    );
    let out = ws
        .marketsync()
        .args(["validate", "--client", "acme"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for expected in [
        "clients/acme/client.yaml:2:26: error: marketplace `acme-pets`: currency `NZ` is not an ISO 4217 currency code (three capitals, such as AUD or NZD); did you mean NZD?",
        "clients/acme/client.yaml:3:24: error: marketplace `acme-nz`: currency `nzd`: write currency codes in capitals, `NZD`",
        "clients/acme/client.yaml:4:22: error: `default_marketplace` is empty",
        "clients/acme/client.yaml:6:3: error: no mapping reads metric role `placed_ordr`, so this name would never be sent; did you mean `placed_order`?",
        "clients/acme/client.yaml:8:3: error: rate_limits: `/api/event` is not an endpoint marketsync sends to; did you mean `/api/events`?",
        "clients/acme/client.yaml:11:15: error: phone_region `nz` is not an ISO 3166 country code",
        "failed: 6 error(s)",
    ] {
        assert!(stderr.contains(expected), "{expected}\n---\n{stderr}");
    }
    // The default marketplace must be one of them.
    ws.write(
        "clients/acme/client.yaml",
        "marketplaces:\n  acme-pets: { currency: NZD }\ndefault_marketplace: acme\n",
    );
    ws.marketsync()
        .args(["validate", "--client", "acme"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "clients/acme/client.yaml:3:22: error: `default_marketplace: acme` is not one of the marketplaces (acme-pets)",
        ));
}

#[test]
fn issue11_a_zero_rate_limit_fails_validate_and_run_does_not_panic() {
    let ws = Workspace::new();
    ws.write(
        "clients/acme/client.yaml",
        "rate_limits:\n  /api/events: { burst: 10, steady: 0 }\n",
    )
    .example("orders.ndjson", "orders.ndjson");
    ws.marketsync()
        .args(["validate", "--client", "acme"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "clients/acme/client.yaml:2:37: error: rate_limits `/api/events`: `steady: 0` would never let a request through",
        ));
    ws.marketsync()
        .args(["run", "--client", "acme", "--state", "state.db"])
        .args(["--klaviyo-url", "http://127.0.0.1:9", "orders.ndjson"])
        .env("KLAVIYO_API_KEY", "pk_test")
        .timeout(std::time::Duration::from_secs(60))
        .assert()
        .code(3)
        .stderr(predicate::str::contains("panicked").not());
}

#[test]
fn issue11_init_for_a_zero_decimal_currency_passes_its_own_tests() {
    let ws = Workspace::new();
    ws.marketsync()
        .args(["init", "acme", "--currency", "JPY"])
        .assert()
        .code(0);
    ws.marketsync()
        .args(["validate", "--client", "acme"])
        .assert()
        .code(0);
    ws.marketsync()
        .args(["test", "--client", "acme"])
        .assert()
        .code(0)
        .stderr(predicate::str::contains(" 0 failed"));
    let overlay =
        fs::read_to_string(ws.path().join("clients/acme/mappings/placed-order.yaml")).unwrap();
    assert!(
        overlay.contains("JPY amounts have 0 decimal place(s)"),
        "{overlay}"
    );
}

#[test]
fn issue11_init_checks_its_arguments_first_and_writes_nothing_on_failure() {
    let ws = Workspace::new();
    for (args, says) in [
        (
            &["init", "acme", "--currency", "XYZ"][..],
            "--currency XYZ: not an ISO 4217 currency code",
        ),
        (
            &["init", "acme", "--currency", "nzd"][..],
            "--currency nzd: write currency codes in capitals, `NZD`",
        ),
        (
            &["init", "acme", "--marketplace", " "][..],
            "--marketplace ` `: a Marketplacer vertical name",
        ),
    ] {
        ws.marketsync()
            .args(args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(says))
            .stderr(predicate::str::contains("bug").not());
        assert!(!ws.path().join("clients").exists(), "{args:?}");
        assert!(!ws.path().join("snapshots").exists(), "{args:?}");
    }
}

#[test]
fn issue11_strict_json_says_not_ok_when_warnings_fail_it() {
    let ws = Workspace::new();
    ws.write("clients/acme/client.yaml", "description: acme\n")
        .write(
            "clients/acme/mappings/placed-order.yaml",
            "overlay: placed-order\nselect:\n  gift: { path: $.order.emailAdress, optional: true }\n",
        );
    let out = ws
        .marketsync()
        .args([
            "validate", "--client", "acme", "--strict", "--format", "json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ok"], false, "{json}");
    assert_eq!(json["errors"], 0, "{json}");
    // Without --strict the same warnings pass, and say so.
    let out = ws
        .marketsync()
        .args(["validate", "--client", "acme", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ok"], true, "{json}");
}

#[test]
fn issue11_fixtures_sharing_a_snapshot_are_refused_and_a_stale_pending_one_is_removed() {
    let ws = Workspace::new();
    ws.write("clients/acme/client.yaml", "description: acme\n")
        .example("refund.json", "clients/acme/fixtures/refund.json")
        .example("orders.ndjson", "clients/acme/fixtures/refund.ndjson");
    ws.marketsync()
        .args(["test", "--client", "acme"])
        .assert()
        .code(4)
        .stderr(predicate::str::contains(
            "clients/acme/fixtures/refund.json and clients/acme/fixtures/refund.ndjson would share the snapshot snapshots/acme/refund.snap",
        ));
    fs::remove_file(ws.path().join("clients/acme/fixtures/refund.ndjson")).unwrap();
    ws.marketsync()
        .args(["test", "--client", "acme", "--update"])
        .assert()
        .code(0);
    // A change leaves its output pending; changed back, the pending file is stale and goes.
    let fixture = ws.path().join("clients/acme/fixtures/refund.json");
    let original = fs::read_to_string(&fixture).unwrap();
    fs::write(&fixture, original.replace("2495", "2490")).unwrap();
    ws.marketsync()
        .args(["test", "--client", "acme"])
        .assert()
        .code(1);
    let pending = ws.path().join("snapshots/acme/refund.snap.new");
    assert!(pending.is_file());
    fs::write(&fixture, &original).unwrap();
    ws.marketsync()
        .args(["test", "--client", "acme"])
        .assert()
        .code(0);
    assert!(
        !pending.exists(),
        "a stale pending snapshot was left behind"
    );
}

#[test]
fn issue11_a_null_removal_that_removes_nothing_is_an_error_with_a_did_you_mean() {
    let ws = Workspace::new();
    ws.write("clients/acme/client.yaml", "phone_region: NZ\n")
        .write(
            "clients/acme/mappings/profile.yaml",
            "\
overlay: profile
select:
  phne: null
compute:
  adress: null
emit:
  body:
    data:
      attributes:
        phone_numbr: null
        location:
          adress1: null
        extra:
          nothing: null
",
        );
    let problems = ws
        .engine("acme")
        .err()
        .expect("the removals remove nothing");
    for expected in [
        "clients/acme/mappings/profile.yaml:3:3: error: `phne: null` removes nothing: the base mapping `profile` has no selection `phne`; did you mean `phone`?",
        "clients/acme/mappings/profile.yaml:5:3: error: `adress: null` removes nothing: the base mapping `profile` has no computed value `adress`; did you mean `address`?",
        "clients/acme/mappings/profile.yaml:10:9: error: `phone_numbr: null` removes nothing: the base mapping `profile` has no `data.attributes.phone_numbr` in its body; did you mean `phone_number`?",
        "clients/acme/mappings/profile.yaml:12:11: error: `adress1: null` removes nothing: the base mapping `profile` has no `data.attributes.location.adress1` in its body; did you mean `address1`?",
        "clients/acme/mappings/profile.yaml:14:11: error: `nothing: null` removes nothing",
    ] {
        assert!(problems.contains(expected), "{expected}\n\n{problems}");
    }
}

#[test]
fn issue11_yaml_errors_in_an_overlay_are_reported_at_their_line() {
    let ws = Workspace::new();
    let mut bomb = String::from(
        "overlay: profile\nemit:\n  body:\n    a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n",
    );
    for level in 1..8 {
        let above = format!("*a{}", level - 1);
        bomb += &format!(
            "    a{level}: &a{level} [{}]\n",
            [above.as_str(); 10].join(", ")
        );
    }
    ws.write("clients/acme/client.yaml", "phone_region: NZ\n")
        .write(
            "clients/acme/mappings/a-tab.yaml",
            "overlay: profile\nselect:\n\tphone: $.order.phone\n",
        )
        .write(
            "clients/acme/mappings/b-duplicate.yaml",
            "overlay: profile\ndescription: one\ndescription: two\n",
        )
        .write(
            "clients/acme/mappings/c-unclosed.yaml",
            "overlay: profile\nselect: { phone: $.order.phone\n",
        )
        .write(
            "clients/acme/mappings/d-nan.yaml",
            "overlay: profile\nemit:\n  body:\n    data:\n      attributes:\n        properties:\n          Score: .nan\n",
        )
        .write("clients/acme/mappings/e-bomb.yaml", &bomb);
    let problems = ws.engine("acme").err().expect("the overlays are broken");
    assert!(!problems.contains("unknown field `overlay`"), "{problems}");
    for expected in [
        "clients/acme/mappings/a-tab.yaml:3:",
        "clients/acme/mappings/b-duplicate.yaml:3:",
        "clients/acme/mappings/c-unclosed.yaml:",
        "clients/acme/mappings/d-nan.yaml:7:",
        "clients/acme/mappings/e-bomb.yaml:",
    ] {
        assert!(problems.contains(expected), "{expected}\n\n{problems}");
    }
    assert!(!problems.contains("c-unclosed.yaml:1:1:"), "{problems}");
    assert!(!problems.contains("e-bomb.yaml:1:1:"), "{problems}");
}

/// The problems of a client made of `client.yaml` and one overlay, which must all be in the
/// client's own files.
fn client_problems(client_yaml: &str, overlay: Option<&str>) -> String {
    let ws = Workspace::new();
    ws.write("clients/acme/client.yaml", client_yaml);
    if let Some(overlay) = overlay {
        ws.write("clients/acme/mappings/overlay.yaml", overlay);
    }
    let problems = ws.engine("acme").err().expect("the client is wrong");
    assert!(
        !problems.lines().any(|line| line.starts_with("<builtin>/")),
        "{problems}"
    );
    problems
}

#[test]
fn issue11_what_an_overlay_or_client_yaml_breaks_is_reported_where_it_was_written() {
    let overlay = "clients/acme/mappings/overlay.yaml";
    let problems = client_problems(
        "phone_region: NZ\n",
        Some(
            "overlay: placed-order\nemit:\n  body:\n    data:\n      attributes:\n        unique_id: null\n",
        ),
    );
    assert!(
        problems.contains(&format!("{overlay}:6:9: error: `unique_id: null`")),
        "{problems}"
    );
    assert!(problems.contains("`placed-order`"), "{problems}");

    let problems = client_problems(
        "phone_region: NZ\n",
        Some(
            "overlay: placed-order\nemit:\n  body:\n    data:\n      attributes:\n        uniqueId: \"{{ order_id }}\"\n",
        ),
    );
    assert!(
        problems.contains(&format!("{overlay}:6:9: error: `uniqueId`")),
        "{problems}"
    );
    assert!(problems.contains("did you mean `unique_id`?"), "{problems}");

    let problems = client_problems(
        "phone_region: NZ\nconsent:\n  path: \"$.metadata[?@.key == \"\n",
        None,
    );
    assert!(
        problems.contains("clients/acme/client.yaml:3:9: error: consent.path"),
        "{problems}"
    );
    assert!(problems.contains("`consent`"), "{problems}");

    let problems = client_problems(
        "phone_region: NZ\n",
        Some("overlay: consent\nwhen: customer_email is not none\n"),
    );
    assert!(
        problems.contains(&format!("{overlay}:2:7: error:")),
        "{problems}"
    );
    assert!(problems.contains("`consent`"), "{problems}");

    let problems = client_problems(
        "phone_region: NZ\n",
        Some("overlay: profile\nselect:\n  phone: null\n"),
    );
    assert!(
        problems.contains(&format!("{overlay}:3:3: error: `phone: null`")),
        "{problems}"
    );
    assert!(
        problems.contains("`profile`") && problems.contains("<builtin>/profile.yaml:34"),
        "{problems}"
    );

    let problems = client_problems(
        "phone_region: NZ\n",
        Some("overlay: placed-order\ndisable: true\n"),
    );
    assert!(
        problems.contains(&format!("{overlay}:2:10: error: `disable: true`")),
        "{problems}"
    );
    for waiting in ["cancelled-order", "fulfilled-order", "refunded-order"] {
        assert!(problems.contains(waiting), "{problems}");
    }
    assert_eq!(problems.matches("error:").count(), 1, "{problems}");
}

#[test]
fn issue11_an_overlay_can_leave_out_base_examples_that_a_client_setting_makes_empty() {
    let ws = Workspace::new();
    ws.write(
        "clients/acme/client.yaml",
        "consent:\n  path: \"$.metadata[?@.key == 'newsletter_opt_in'].value\"\n",
    );
    ws.marketsync()
        .args(["validate", "--strict", "--client", "acme"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("produces no request"));
    ws.write(
        "clients/acme/mappings/consent.yaml",
        "overlay: consent\nbase_examples: false   # our opt-in is under another key\n",
    );
    ws.marketsync()
        .args(["validate", "--strict", "--client", "acme"])
        .assert()
        .code(0);
    // The scaffold passes --strict as it is written.
    ws.marketsync()
        .args(["init", "beta", "--marketplace", "beta", "--currency", "JPY"])
        .assert()
        .code(0);
    ws.marketsync()
        .args(["validate", "--strict", "--client", "beta"])
        .assert()
        .code(0);
}

#[test]
fn issue11_every_overlay_file_is_read_and_each_problem_is_at_its_own_file() {
    let ws = Workspace::new();
    ws.write(
        "clients/acme/client.yaml",
        "phone_region: NZ\nprofile_attributes:\n  Note: $.order.note\n",
    )
    .write(
        "clients/acme/mappings/NO-PROFILE.YAML",
        "overlay: profile\ndisable: true\n",
    )
    .write(
        "clients/acme/mappings/typo.yaml",
        "overlay: refunded-ordr\ndisable: true\n",
    );
    fs::write(
        ws.path().join("clients/acme/mappings/latin1.yaml"),
        b"overlay: placed-order\ndescription: caf\xe9\n",
    )
    .unwrap();
    let problems = ws.engine("acme").err().expect("the client is wrong");
    // The upper-case file is read: profile is disabled, so the attributes have nowhere to go.
    assert!(
        problems.contains("clients/acme/client.yaml:2:1: error: `profile_attributes`"),
        "{problems}"
    );
    assert!(problems.contains("NO-PROFILE.YAML"), "{problems}");
    // The file that is not UTF-8 is reported, at its line, and hides nothing else.
    assert!(
        problems.contains("clients/acme/mappings/latin1.yaml:2:"),
        "{problems}"
    );
    assert!(
        problems.contains("clients/acme/mappings/typo.yaml:1:10: error:"),
        "{problems}"
    );
    assert!(!problems.contains(":0:0:"), "{problems}");
}

#[test]
fn issue11_yaml_errors_are_worded_for_the_consultant() {
    let message = |text: &str| {
        marketsync::spec::parse_mapping("m.yaml", text)
            .expect_err("the YAML is wrong")
            .message
    };
    let duplicate = message("name: a\nname: b\n");
    assert!(!duplicate.contains("DuplicateKeyPolicy"), "{duplicate}");
    assert!(
        duplicate.contains("`name`") && duplicate.contains("twice"),
        "{duplicate}"
    );
    let nan = message("name: a\nlane: .nan\n");
    assert!(!nan.contains("configured policy"), "{nan}");
    let mut bomb =
        String::from("name: a\nemit:\n  body:\n    a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for level in 1..8 {
        let above = format!("*a{}", level - 1);
        bomb += &format!(
            "    a{level}: &a{level} [{}]\n",
            [above.as_str(); 10].join(", ")
        );
    }
    let bomb = message(&bomb);
    assert!(
        !bomb.contains("budget breached") && !bomb.contains("Nodes {"),
        "{bomb}"
    );
}

#[test]
fn issue11_a_profile_attribute_is_named_as_the_consultant_wrote_it() {
    let ws = Workspace::new();
    ws.write(
        "clients/acme/client.yaml",
        "profile_attributes:\n  Tier: $.order.loyaltyTeir\n  Notes: $.order[\n",
    );
    let out = ws
        .marketsync()
        .args(["validate", "--client", "acme"])
        .assert()
        .code(1)
        .get_output()
        .stderr
        .clone();
    let out = String::from_utf8(out).unwrap();
    assert!(!out.contains("client_attribute"), "{out}");
    assert!(
        out.contains(
            "clients/acme/client.yaml:2:9: warning: profile_attributes.Tier: `$.order.loyaltyTeir`: `Order` has no field `loyaltyTeir`"
        ),
        "{out}"
    );
    assert!(
        out.contains("clients/acme/client.yaml:3:10: error: profile_attributes.Notes: "),
        "{out}"
    );
}

#[test]
fn issue11_an_overlay_of_a_misspelt_mapping_gets_a_did_you_mean() {
    let ws = Workspace::new();
    ws.write("clients/acme/client.yaml", CLIENT)
        .write(
            "clients/acme/mappings/typo.yaml",
            "overlay: refunded-ordr\ndisable: true\n",
        )
        .write(
            "clients/acme/mappings/far.yaml",
            "overlay: shipping\ndisable: true\n",
        );
    let problems = ws.engine("acme").err().expect("the overlays are wrong");
    assert!(
        problems.contains("clients/acme/mappings/typo.yaml:1:10: error: `overlay: refunded-ordr` names no base mapping; did you mean `refunded-order`?"),
        "{problems}"
    );
    // Nothing close: the names to choose from.
    assert!(
        problems.contains("`overlay: shipping` names no base mapping; the base mappings are cancelled-order, consent,"),
        "{problems}"
    );
}
