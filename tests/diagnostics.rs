//! What a consultant sees for a broken spec, snapshotted under `snapshots/diagnostics/`, so
//! that a worse error message shows up in review like any other regression.

mod common;

use marketsync::engine::Engine;
use std::fs;
use std::path::Path;

/// A mapping folder holding the default settings, the given specs, and `examples/` beside
/// it (broken specs name `../examples/...` as the defaults do).
fn folder_with(specs: &[&Path]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let mappings = root.path().join("mappings");
    fs::create_dir(&mappings).unwrap();
    fs::copy(
        common::repo("mappings/settings.yaml"),
        mappings.join("settings.yaml"),
    )
    .unwrap();
    for spec in specs {
        fs::copy(spec, mappings.join(spec.file_name().unwrap())).unwrap();
    }
    let examples = root.path().join("examples");
    fs::create_dir(&examples).unwrap();
    for entry in fs::read_dir(common::repo("examples")).unwrap() {
        let path = entry.unwrap().path();
        fs::copy(&path, examples.join(path.file_name().unwrap())).unwrap();
    }
    root
}

fn diagnostics_of(root: &tempfile::TempDir) -> marketsync::diagnostic::Diagnostics {
    match Engine::load_dir(&root.path().join("mappings")) {
        Ok(_) => panic!("a broken spec compiled"),
        Err(diagnostics) => diagnostics,
    }
}

#[test]
fn broken_specs_are_reported_with_file_line_and_column() {
    insta::with_settings!({snapshot_path => "../snapshots/diagnostics", prepend_module_to_snapshot => false, omit_expression => true}, {
        insta::glob!("fixtures/broken-specs", "*.yaml", |path| {
            let root = folder_with(&[path]);
            let rendered = format!("{:#}", diagnostics_of(&root));
            let prefix = format!("{}/", root.path().display());
            insta::assert_snapshot!(rendered.replace(&prefix, ""));
        });
    });
}

#[test]
fn every_problem_in_every_file_is_reported_in_one_pass() {
    let dir = common::repo("tests/fixtures/broken-specs");
    let mut specs: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    specs.sort();
    let alone: usize = specs
        .iter()
        .map(|spec| diagnostics_of(&folder_with(&[spec])).error_count())
        .sum();
    let spec_refs: Vec<&Path> = specs.iter().map(|p| p.as_path()).collect();
    let together = diagnostics_of(&folder_with(&spec_refs));
    assert_eq!(together.error_count(), alone);
    for spec in &specs {
        let name = spec.file_name().unwrap().to_str().unwrap();
        assert!(
            together.iter().any(|d| d.file.name.ends_with(name)),
            "nothing reported for {name}"
        );
    }
}

#[test]
fn two_mappings_with_one_name_are_an_error() {
    let root = folder_with(&[]);
    let text = fs::read_to_string(common::repo("mappings/placed-order.yaml")).unwrap();
    fs::write(root.path().join("mappings/a.yaml"), &text).unwrap();
    fs::write(root.path().join("mappings/b.yaml"), &text).unwrap();
    let diagnostics = diagnostics_of(&root);
    let messages: Vec<String> = diagnostics.iter().map(|d| d.to_string()).collect();
    assert_eq!(diagnostics.error_count(), 1, "{messages:?}");
    assert!(
        messages[0].contains("b.yaml:2:7: error: mapping name `placed-order` is already used by"),
        "{messages:?}"
    );
}

#[test]
fn a_folder_without_settings_is_an_error() {
    let root = tempfile::tempdir().unwrap();
    fs::copy(
        common::repo("mappings/profile.yaml"),
        root.path().join("profile.yaml"),
    )
    .unwrap();
    let diagnostics = Engine::load_dir(root.path()).err().unwrap();
    assert!(
        diagnostics.to_string().contains("missing settings file"),
        "{diagnostics}"
    );
}

#[test]
fn issue11_errors_inside_block_scalars_are_at_their_line_and_column() {
    let spec = "\
name: blocks
lane: transaction
match:
  type: Invoice
select:
  order_id: $.order.legacyId
  total_cents: $.order.totalCents
compute:
  literal: |
    total_cents
      + ) 1
  folded: >-
    total_cents
    + ordr_id
emit:
  endpoint: POST /api/events
  body:
    data:
      type: event
      attributes:
        unique_id: \"{{ marketplace }}:blocks:{{ order_id }}\"
        properties:
          Literal: |
            Order {{ order_id }}
            for {{ ordr }}
          Folded: >
            Order {{ order_id }}
            for {{ total_cents | mony }}
          Unclosed: >-
            Order {{ order_id }}
            for {{ total_cents }}

            and {{ order_id
";
    let specs = tempfile::tempdir().unwrap();
    let path = specs.path().join("blocks.yaml");
    fs::write(&path, spec).unwrap();
    let root = folder_with(&[&path]);
    let rendered = diagnostics_of(&root).to_string();
    for expected in [
        "blocks.yaml:11:7: error: expression `total_cents + ) 1`: syntax error: unexpected `)`",
        "blocks.yaml:14:7: error: `ordr_id` is not defined here",
        "blocks.yaml:25:20: error: `ordr` is not defined here",
        "blocks.yaml:28:34: error: unknown filter `mony`",
        "blocks.yaml:33:27: error: template: syntax error: unexpected end of input",
    ] {
        assert!(rendered.contains(expected), "{expected}\n{rendered}");
    }
}

#[test]
fn issue11_misspelt_names_filters_tests_keys_and_mappings_get_a_did_you_mean() {
    let spec = "\
name: typos
lane: transaction
match:
  type: Invoice
select:
  order_id: $.order.legacyId
  total_cents: $.order.totalCents
compute:
  value: total_cents | monye
once_per: \"typos:{{ order_id }}\"
waits_for:
  mapping: typo
  key: \"{{ order_id }}\"
emit:
  endpoint: POST /api/events
  body:
    data:
      type: event
      attributes:
        unique_id: \"{{ marketplace }}:typos:{{ order_idd }}\"
        properties:
          Even: \"{{ 'yes' if order_id is evn else 'no' }}\"
          Shown: \"{{ order_id | lowr }}\"
";
    let keys = "name: keys\nmatch:\n  type: Invoice\n  evnts: [create]\n";
    let specs = tempfile::tempdir().unwrap();
    let typos = specs.path().join("typos.yaml");
    fs::write(&typos, spec).unwrap();
    let misspelt_key = specs.path().join("keys.yaml");
    fs::write(&misspelt_key, keys).unwrap();
    let root = folder_with(&[&typos, &misspelt_key]);
    let rendered = diagnostics_of(&root).to_string();
    for expected in [
        "typos.yaml:9:24: error: unknown filter `monye`; did you mean `money`?",
        "typos.yaml:12:12: error: `waits_for.mapping: typo` is not a mapping in this set; did you mean `typos`?",
        "typos.yaml:20:48: error: `order_idd` is not defined here; did you mean `order_id`?",
        "typos.yaml:22:42: error: unknown test `evn`; did you mean `even`?",
        "typos.yaml:23:33: error: unknown filter `lowr`; did you mean `lower`?",
        "keys.yaml:4:3: error: unknown field `evnts`, expected one of type, events, where; did you mean `events`?",
    ] {
        assert!(rendered.contains(expected), "{expected}\n{rendered}");
    }
}
