//! The webhook queries as configuration (issue 15): `validate` checks every mapping path
//! against the query that shapes its record, `queries` prints what to paste into Marketplacer
//! and compares a live copy, and clients add fields without copying a query.

mod common;

use marketsync::diagnostic::Severity;
use marketsync::queries::QuerySet;
use marketsync::source::schema::MarketplacerSchema;
use predicates::prelude::*;
use std::fs;
use std::path::Path;

/// A consultant's checkout: the default mappings, queries and examples, side by side.
fn checkout() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for folder in ["mappings", "queries", "examples"] {
        copy_folder(&common::repo(folder), &root.path().join(folder));
    }
    root
}

fn copy_folder(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} has no `{from}`", path.display());
    fs::write(path, text.replacen(from, to, 1)).unwrap();
}

/// The 1-based line of the first line of `file` containing `needle`.
fn line_of(file: &Path, needle: &str) -> usize {
    fs::read_to_string(file)
        .unwrap()
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle} not in {}", file.display()))
        + 1
}

fn validate(root: &Path, format: &str) -> (i32, String, String) {
    let out = common::marketsync()
        .current_dir(root)
        .args(["validate", "--mappings", "mappings", "--format", format])
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn removing_a_field_a_default_mapping_reads_fails_validate_at_the_mappings_line() {
    let root = checkout();
    let (code, _, stderr) = validate(root.path(), "human");
    assert_eq!(code, 0, "{stderr}");
    // profile.yaml reads `$.order.phone`; the Invoice query stops selecting it.
    edit(
        &root.path().join("queries/invoice.graphql"),
        "        phone\n",
        "",
    );
    let line = line_of(&root.path().join("mappings/profile.yaml"), "$.order.phone");
    let (code, _, human) = validate(root.path(), "human");
    assert_eq!(code, 1, "{human}");
    assert!(
        human.contains(&format!(
            "mappings/profile.yaml:{line}:10: error: $.order.phone is not selected by queries/invoice.graphql; add \"phone\" under \"order\""
        )),
        "{human}"
    );
    let (code, json, _) = validate(root.path(), "json");
    assert_eq!(code, 1);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let diagnostics = &json["diagnostics"];
    let (code, github, _) = validate(root.path(), "github");
    assert_eq!(code, 1);
    insta::with_settings!({snapshot_path => "../snapshots/diagnostics", prepend_module_to_snapshot => false, omit_expression => true}, {
        insta::assert_snapshot!("query_lacks_a_field_human", human);
        insta::assert_json_snapshot!("query_lacks_a_field_json", diagnostics);
        insta::assert_snapshot!("query_lacks_a_field_github", github);
    });
}

#[test]
fn a_broken_query_is_reported_at_its_line_and_column() {
    let root = checkout();
    let query = root.path().join("queries/shipment.graphql");
    edit(&query, "      trackingLink\n", "      trackingLnk\n");
    edit(
        &query,
        "      shippedItems {",
        "      shippedItems(first: 5) {",
    );
    let (code, _, human) = validate(root.path(), "human");
    assert_eq!(code, 1, "{human}");
    let line = line_of(&query, "trackingLnk");
    assert!(
        human.contains(&format!(
            "queries/shipment.graphql:{line}:7: error: `Shipment` has no field `trackingLnk` (did you mean `trackingLink`?)"
        )),
        "{human}"
    );
    let line = line_of(&query, "shippedItems(first");
    assert!(
        human.contains(&format!(
            "queries/shipment.graphql:{line}:7: error: `Shipment.shippedItems` has no argument `first` (it takes none)"
        )),
        "{human}"
    );
}

#[test]
fn verbose_lists_what_the_queries_select_that_no_mapping_reads() {
    let root = checkout();
    let out = common::marketsync()
        .current_dir(root.path())
        .args(["validate", "--mappings", "mappings", "--verbose"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let line = line_of(&root.path().join("queries/invoice.graphql"), "deliveryType");
    assert!(
        stderr.contains(&format!(
            "queries/invoice.graphql:{line}:7: the Invoice query selects `deliveryType`, which no mapping reads"
        )),
        "{stderr}"
    );
    // What a mapping reads, and what lies below a selection read whole, is not listed.
    for read in [
        "`order.emailAddress`",
        "`order.phone`",
        "`lineItems",
        "`order.metadata",
    ] {
        assert!(!stderr.contains(read), "{read} listed:\n{stderr}");
    }
    // Without --verbose, nothing of it.
    let (_, _, quiet) = validate(root.path(), "human");
    assert!(!quiet.contains("no mapping reads"), "{quiet}");
}

/// A client whose profile reads a field only its own query adds, and whose overlay reads one
/// that no query selects.
fn client_acme(root: &Path, overlay_reads: &str) {
    let client = root.join("clients/acme");
    fs::create_dir_all(client.join("mappings")).unwrap();
    fs::create_dir_all(client.join("queries")).unwrap();
    fs::write(
        client.join("client.yaml"),
        "marketplaces:\n  acme-pets: { currency: NZD }\nklaviyo_api_key_env: ACME_KLAVIYO_API_KEY\nprofile_attributes:\n  Company: $.order.companyName\n",
    )
    .unwrap();
    fs::write(
        client.join("queries/invoice.graphql"),
        "# acme's storefront sends gifts: the profile says so.\nquery {\n  node(id: $id) {\n    ... on Invoice {\n      order { companyName isGift }\n    }\n  }\n}\n",
    )
    .unwrap();
    fs::write(
        client.join("queries/shipment.graphql"),
        "query { node(id: $id) { ... on Shipment { invoice { order { companyName } } } } }\n",
    )
    .unwrap();
    fs::write(
        client.join("mappings/fulfilled-order.yaml"),
        format!("overlay: fulfilled-order\nselect:\n  company: {{ path: {overlay_reads}, optional: true }}\n"),
    )
    .unwrap();
}

#[test]
fn queries_for_a_client_print_the_merged_queries_each_valid_against_the_schema() {
    let root = checkout();
    client_acme(root.path(), "$.invoice.order.companyName");
    let out = common::marketsync()
        .current_dir(root.path())
        .args(["queries", "--mappings", "mappings", "--client", "acme"])
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let printed = String::from_utf8(out.stdout).unwrap();
    insta::with_settings!({snapshot_path => "../snapshots/queries", prepend_module_to_snapshot => false, omit_expression => true}, {
        insta::assert_snapshot!("queries_client_acme", printed);
    });
    // Every printed query, pasted back, is a webhook query the schema accepts.
    let set: QuerySet = marketsync::queries::live::parse("printed", &printed)
        .expect("the printed queries parse")
        .queries;
    assert_eq!(set.queries.len(), 3);
    for query in set.queries.values() {
        // Errors none; the deprecations the query files note as kept on purpose come back as
        // warnings, since the printed query carries no comments.
        let problems = marketsync::queries::check::check(query, MarketplacerSchema::builtin());
        let errors: Vec<_> = problems
            .iter()
            .filter(|p| p.severity() == Severity::Error)
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
    }
    let invoice = set.queries["Invoice"].record();
    let order = &invoice.find("order").unwrap().selection;
    assert!(order.find("companyName").is_some() && order.find("isGift").is_some());
    assert!(order.find("metadata").is_some(), "the base fields are kept");
    // The client's overlays and profile attributes pass against the merged queries.
    common::marketsync()
        .current_dir(root.path())
        .args(["validate", "--mappings", "mappings", "--client", "acme"])
        .assert()
        .code(0);
}

#[test]
fn a_client_overlay_is_checked_against_the_merged_query() {
    let root = checkout();
    client_acme(root.path(), "$.invoice.order.isGift");
    let overlay = root
        .path()
        .join("clients/acme/mappings/fulfilled-order.yaml");
    let line = line_of(&overlay, "isGift");
    common::marketsync()
        .current_dir(root.path())
        .args(["validate", "--mappings", "mappings", "--client", "acme"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!(
            "clients/acme/mappings/fulfilled-order.yaml:{line}:12: error: $.invoice.order.isGift is not selected by queries/shipment.graphql; add \"isGift\" under \"invoice.order\""
        )));
    // Without the client's query, its profile attribute is not selected either.
    fs::remove_dir_all(root.path().join("clients/acme/queries")).unwrap();
    common::marketsync()
        .current_dir(root.path())
        .args(["validate", "--mappings", "mappings", "--client", "acme"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "clients/acme/client.yaml:5:12: error: $.order.companyName is not selected by queries/invoice.graphql; add \"companyName\" under \"order\"",
        ));
}

#[test]
fn check_live_says_what_a_registered_query_lacks() {
    let root = checkout();
    let live = fs::read_to_string(root.path().join("queries/invoice.graphql"))
        .unwrap()
        .replacen("        metadata { key value }\n", "", 1)
        .replacen("  image { url }\n", "", 1);
    fs::write(root.path().join("live.graphql"), &live).unwrap();
    common::marketsync()
        .current_dir(root.path())
        .args(["queries", "--mappings", "mappings", "--check-live", "live.graphql"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains(
            "Invoice: the live query lacks 3 field(s) the effective one selects:\n  lineItems > image\n  order > metadata\n  order > lineItems > nodes > image\n",
        ));
    // An export of the webhooks, each with its query: the missing webhook is named too.
    let export = serde_json::json!({"data": {"webhooks": {"nodes": [
        {"klass": "INVOICE", "query": fs::read_to_string(root.path().join("queries/invoice.graphql")).unwrap()},
        {"klass": "SHIPMENT", "query": fs::read_to_string(root.path().join("queries/shipment.graphql")).unwrap()},
    ]}}});
    fs::write(root.path().join("export.json"), export.to_string()).unwrap();
    common::marketsync()
        .current_dir(root.path())
        .args([
            "queries",
            "--mappings",
            "mappings",
            "--check-live",
            "export.json",
        ])
        .assert()
        .code(1)
        .stdout(predicate::str::contains(
            "Invoice: the live query selects every field of the effective one",
        ))
        .stdout(predicate::str::contains(
            "RefundRequest: export.json has no RefundRequest query",
        ));
    // The same query back: nothing is missing.
    common::marketsync()
        .current_dir(root.path())
        .args([
            "queries",
            "--mappings",
            "mappings",
            "--type",
            "Invoice",
            "--check-live",
            "queries/invoice.graphql",
        ])
        .assert()
        .code(0);
}

#[test]
fn init_creates_a_commented_query_example_that_changes_nothing() {
    let root = checkout();
    common::marketsync()
        .current_dir(root.path())
        .args(["init", "acme"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains(
            "created clients/acme/queries/invoice.graphql",
        ));
    let example =
        fs::read_to_string(root.path().join("clients/acme/queries/invoice.graphql")).unwrap();
    assert!(example.lines().all(|l| l.starts_with('#')), "{example}");
    let printed = |args: &[&str]| {
        let out = common::marketsync()
            .current_dir(root.path())
            .args(["queries", "--mappings", "mappings"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(printed(&["--client", "acme"]), printed(&[]));
}
