//! Every default mapping over every sample delivery, snapshotted under `snapshots/`.
//!
//! A change to a mapping, a filter or the engine shows up in review as a diff of the requests
//! it changes. `cargo insta review` (or `INSTA_UPDATE=always`) accepts a new output.

mod common;

use std::path::Path;

/// The requests as pretty JSON, then what was reported and the summary, with paths made
/// relative so snapshots do not depend on the checkout's location.
fn dry_run_text(path: &Path) -> String {
    let engine = common::engine();
    let relative = path
        .strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap()
        .to_str()
        .unwrap();
    let run = common::run(&engine, &[relative]);
    let mut text = String::new();
    for request in &run.requests {
        let line: serde_json::Value = serde_json::from_str(&request.to_line()).unwrap();
        text.push_str(&serde_json::to_string_pretty(&line).unwrap());
        text.push('\n');
    }
    text.push_str("--- report ---\n");
    text.push_str(&run.report);
    text.push_str(&run.summary.render());
    text
}

#[test]
fn default_mappings_over_sample_deliveries() {
    insta::with_settings!({snapshot_path => "../snapshots/default-mappings", prepend_module_to_snapshot => false, omit_expression => true}, {
        insta::glob!("../examples", "*.{json,ndjson}", |path| {
            insta::assert_snapshot!(dry_run_text(path));
        });
        insta::glob!("fixtures/deliveries", "*.{json,ndjson}", |path| {
            insta::assert_snapshot!(dry_run_text(path));
        });
    });
}

/// `marketsync explain` in a terminal, for one mapping over one sample delivery: a change to
/// the report (or to what it explains) shows up as a diff here.
#[test]
fn explain_human_output() {
    for (mapping, input) in [
        ("placed-order", "examples/orders.ndjson"),
        ("refunded-order", "examples/refund.json"),
    ] {
        let output = common::marketsync()
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["explain", "--mapping", mapping, input])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0));
        let stdout = String::from_utf8(output.stdout).unwrap();
        let name = format!("{mapping}@{}", input.rsplit('/').next().unwrap());
        insta::with_settings!({snapshot_path => "../snapshots/explain", prepend_module_to_snapshot => false, omit_expression => true}, {
            insta::assert_snapshot!(name, stdout);
        });
    }
}
