//! The editor schemas in `schemas/` against the Rust spec parser, which is the truth.
//!
//! `schemas/mapping.schema.json` and `schemas/settings.schema.json` are what a consultant's
//! editor checks while they type; the serde structs in `src/spec/` are what marketsync checks
//! when it loads. These tests keep the two in step: every default file passes both, and each
//! deliberately broken spec fails both. Rules the parser leaves to the compiler (one test per
//! condition, a known endpoint, ...) are checked against a full compile of a mapping folder.

use jsonschema::{Draft, Validator};
use marketsync::engine::Engine;
use marketsync::spec::{Settings, parse_mapping};
use serde_json::Value;
use std::path::Path;
use std::sync::OnceLock;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn compile_schema(file: &str) -> Validator {
    let path = crate_dir().join("schemas").join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let schema: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    jsonschema::options()
        .with_draft(Draft::Draft202012)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{} is not a valid 2020-12 schema: {e}", path.display()))
}

fn mapping_schema() -> &'static Validator {
    static SCHEMA: OnceLock<Validator> = OnceLock::new();
    SCHEMA.get_or_init(|| compile_schema("mapping.schema.json"))
}

fn settings_schema() -> &'static Validator {
    static SCHEMA: OnceLock<Validator> = OnceLock::new();
    SCHEMA.get_or_init(|| compile_schema("settings.schema.json"))
}

/// YAML as the editor sees it: plain JSON values.
fn yaml(text: &str) -> Value {
    serde_saphyr::from_str::<Value>(text).unwrap_or_else(|e| panic!("not YAML: {e}\n{text}"))
}

/// Every way `text` breaks `schema`, as `pointer: message` lines; empty when it passes.
fn schema_errors(schema: &Validator, text: &str) -> Vec<String> {
    let value = yaml(text);
    schema
        .iter_errors(&value)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// The default mappings (every YAML file in `mappings/` but settings.yaml), sorted by name.
fn default_mappings() -> Vec<(String, String)> {
    let dir = crate_dir().join("mappings");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("a readable directory entry").path())
        .filter(|path| {
            matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) && path.file_name().is_some_and(|n| n != "settings.yaml")
        })
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            (name, text)
        })
        .collect();
    files.sort();
    files
}

fn default_settings() -> String {
    std::fs::read_to_string(crate_dir().join("mappings/settings.yaml")).unwrap()
}

/// A small mapping that passes the schema, the parser and the compiler. The broken specs
/// below are each this text with one edit, so each failure has exactly one cause.
const VALID: &str = r#"
name: probe
lane: transaction
match:
  type: Invoice
  events: [create, update, backfill]
  where:
    - path: $.statusFlags
      contains: PAID
    - any:
        - path: $.order.status
          equals: COMPLETE
        - path: $.order.status
          one_of: [DISPATCHED, PARTIALLY_DISPATCHED]
select:
  order: $.order
  order_id: $.order.legacyId
  email: $.order.emailAddress
  first_name: { path: $.order.firstName, optional: true }
  region: { path: $.order.address.state.short, default: NSW }
  lines: { path: "$.lineItems[*]", many: true }
  accepts_marketing: { from: order, path: "{{ settings.consent.path }}", optional: true }
compute:
  customer_email: email | email
when: lines
require: [customer_email]
for: line in lines
once_per: "{{ marketplace }}:{{ line.legacyId }}"
emit:
  endpoint: POST /api/events
  body:
    data:
      type: event
      attributes:
        metric: { data: { type: metric, attributes: { name: "{{ settings.metrics.ordered_product }}" } } }
        profile: { data: { type: profile, attributes: { email: "{{ customer_email }}" } } }
        unique_id: "{{ marketplace }}:probe:{{ order_id }}:{{ line.legacyId }}"
        properties:
          Region: "{{ region }}"
          Items:
            $for: item in lines
            $yield: { SKU: "{{ item.variantSku }}", Quantity: "{{ item.quantity }}" }
"#;

/// `VALID` with `from` replaced by `to`; panics if `from` is not there, so a case cannot
/// silently stop testing anything.
fn edited(from: &str, to: &str) -> String {
    assert!(
        VALID.contains(from),
        "the valid mapping has no `{from}` to edit"
    );
    VALID.replacen(from, to, 1)
}

/// Compiles `mapping` in a folder with the default settings; the diagnostics as text.
fn compile(mapping: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("settings.yaml"), default_settings()).unwrap();
    std::fs::write(dir.path().join("probe.yaml"), mapping).unwrap();
    Engine::load_dir(dir.path())
        .map(|_| ())
        .map_err(|diagnostics| diagnostics.to_string())
}

fn assert_schema_rejects(schema: &Validator, what: &str, text: &str) {
    assert!(
        !schema_errors(schema, text).is_empty(),
        "the schema accepts {what}:\n{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// The schemas themselves
// ---------------------------------------------------------------------------------------------

#[test]
fn both_schemas_are_valid_draft_2020_12_schemas() {
    mapping_schema();
    settings_schema();
}

/// Editors show `description` on hover: a key without one leaves a consultant guessing.
/// (Keys named only inside `if`/`then`/`not` are conditions on keys documented elsewhere.)
#[test]
fn every_key_in_both_schemas_has_a_description() {
    fn walk(node: &Value, at: &str, missing: &mut Vec<String>) {
        match node {
            Value::Object(map) => {
                if let Some(Value::Object(properties)) = map.get("properties") {
                    for (key, property) in properties {
                        let described = property.get("description").is_some()
                            || property
                                .get("$ref")
                                .and_then(Value::as_str)
                                .is_some_and(|r| r.starts_with("#/$defs/"));
                        if !described {
                            missing.push(format!("{at}/properties/{key}"));
                        }
                    }
                }
                for (key, child) in map {
                    if matches!(key.as_str(), "if" | "then" | "not") {
                        continue;
                    }
                    walk(child, &format!("{at}/{key}"), missing);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(child, &format!("{at}/{i}"), missing);
                }
            }
            _ => {}
        }
    }
    for file in ["mapping.schema.json", "settings.schema.json"] {
        let text = std::fs::read_to_string(crate_dir().join("schemas").join(file)).unwrap();
        let schema: Value = serde_json::from_str(&text).unwrap();
        let mut missing = Vec::new();
        walk(&schema, "", &mut missing);
        assert!(
            missing.is_empty(),
            "{file}: keys without a description: {missing:#?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// What is valid passes both
// ---------------------------------------------------------------------------------------------

#[test]
fn every_default_mapping_passes_the_schema_and_the_parser() {
    let mappings = default_mappings();
    assert!(
        mappings.len() >= 7,
        "expected the default mappings, found {mappings:?}"
    );
    for (name, text) in &mappings {
        let errors = schema_errors(mapping_schema(), text);
        assert!(
            errors.is_empty(),
            "{name} breaks the mapping schema:\n{}",
            errors.join("\n")
        );
        if let Err(d) = parse_mapping(name, text) {
            panic!("the parser rejects {name}: {d}");
        }
    }
}

#[test]
fn the_default_settings_pass_the_schema_and_the_parser() {
    let text = default_settings();
    let errors = schema_errors(settings_schema(), &text);
    assert!(
        errors.is_empty(),
        "settings.yaml breaks the settings schema:\n{}",
        errors.join("\n")
    );
    if let Err(e) = serde_saphyr::from_str::<Settings>(&text) {
        panic!("the parser rejects settings.yaml: {e}");
    }
}

#[test]
fn the_probe_mapping_used_below_passes_the_schema_the_parser_and_the_compiler() {
    let errors = schema_errors(mapping_schema(), VALID);
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    compile(VALID).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Mistakes the parser catches: the schema must catch them too
// ---------------------------------------------------------------------------------------------

/// Asserts that the schema and `parse_mapping` both reject `text`, and that the parser's
/// message says what the consultant needs to hear.
fn assert_both_reject(what: &str, text: &str, parser_says: &str) {
    assert_schema_rejects(mapping_schema(), what, text);
    match parse_mapping("x.yaml", text) {
        Ok(_) => panic!("the parser accepts {what}:\n{text}"),
        Err(d) => assert!(
            d.to_string().contains(parser_says),
            "the parser's message for {what} should mention `{parser_says}`: {d}"
        ),
    }
}

#[test]
fn a_misspelt_top_level_key_is_rejected_by_both() {
    let text = format!("{VALID}uniqeId: \"{{{{ marketplace }}}}:{{{{ order_id }}}}\"\n");
    assert_both_reject("a misspelt top-level key", &text, "unknown field `uniqeId`");
}

#[test]
fn an_unknown_key_inside_match_is_rejected_by_both() {
    let text = edited("  events: [create", "  event: [create");
    assert_both_reject(
        "`event` for `events` in match",
        &text,
        "unknown field `event`",
    );
}

#[test]
fn a_lane_that_is_not_transaction_or_profile_is_rejected_by_both() {
    let text = edited("lane: transaction", "lane: Transaction");
    assert_both_reject("a capitalised lane", &text, "unknown variant `Transaction`");
    let text = edited("lane: transaction", "lane: orders");
    assert_both_reject("an unknown lane", &text, "unknown variant `orders`");
}

#[test]
fn a_selection_map_without_path_is_rejected_by_both() {
    let text = edited(
        "first_name: { path: $.order.firstName, optional: true }",
        "first_name: { optional: true }",
    );
    assert_both_reject("a selection without `path`", &text, "missing field `path`");
}

#[test]
fn a_misspelt_selection_option_is_rejected_by_both() {
    let text = edited("firstName, optional: true", "firstName, optinal: true");
    assert_both_reject("`optinal` in a selection", &text, "unknown field `optinal`");
}

#[test]
fn a_condition_with_an_unknown_test_is_rejected_by_both() {
    let text = edited("      contains: PAID", "      matches: PAID");
    assert_both_reject(
        "a condition with `matches`",
        &text,
        "unknown field `matches`",
    );
    let text = edited("          equals: COMPLETE", "          equal: COMPLETE");
    assert_both_reject("`equal` inside `any`", &text, "unknown field `equal`");
}

#[test]
fn an_unknown_key_inside_emit_is_rejected_by_both() {
    let text = edited(
        "  endpoint: POST /api/events",
        "  endpoint: POST /api/events\n  method: POST",
    );
    assert_both_reject("`method` in emit", &text, "unknown field `method`");
}

#[test]
fn a_mapping_without_emit_body_is_rejected_by_both() {
    let cut = VALID.find("  body:").unwrap();
    let text = &VALID[..cut];
    assert_both_reject("emit without body", text, "missing field `body`");
}

#[test]
fn one_name_may_be_written_without_brackets_for_require_and_events() {
    let text = edited("require: [customer_email]", "require: customer_email");
    assert!(schema_errors(mapping_schema(), &text).is_empty());
    compile(&text).unwrap();
    let text = text.replacen("events: [create, update, backfill]", "events: create", 1);
    assert!(text.contains("events: create\n"));
    assert!(schema_errors(mapping_schema(), &text).is_empty());
    compile(&text).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Mistakes the compiler catches: the schema catches them while the consultant types
// ---------------------------------------------------------------------------------------------

/// Asserts that the schema rejects `text`, that the parser accepts it (the rule lives in the
/// compiler), and that compiling it reports `compiler_says`.
fn assert_schema_and_compiler_reject(what: &str, text: &str, compiler_says: &str) {
    assert_schema_rejects(mapping_schema(), what, text);
    if let Err(d) = parse_mapping("x.yaml", text) {
        panic!("expected the parser to leave {what} to the compiler, but it says: {d}");
    }
    match compile(text) {
        Ok(()) => panic!("the compiler accepts {what}:\n{text}"),
        Err(message) => assert!(
            message.contains(compiler_says),
            "the compiler's message for {what} should mention `{compiler_says}`: {message}"
        ),
    }
}

#[test]
fn a_condition_with_two_tests_is_rejected_by_schema_and_compiler() {
    let text = edited(
        "      contains: PAID",
        "      contains: PAID\n      equals: PAID",
    );
    assert_schema_and_compiler_reject("two tests", &text, "exactly one test");
}

#[test]
fn a_condition_without_a_test_is_rejected_by_schema_and_compiler() {
    let text = edited("      contains: PAID\n", "");
    assert_schema_and_compiler_reject("a path without a test", &text, "exactly one test");
}

#[test]
fn any_beside_a_path_is_rejected_by_schema_and_compiler() {
    let text = edited("    - any:", "    - path: $.order.status\n      any:");
    assert_schema_and_compiler_reject("`any` with a `path`", &text, "cannot have its own `path`");
}

#[test]
fn many_with_optional_is_rejected_by_schema_and_compiler() {
    let text = edited("many: true }", "many: true, optional: true }");
    assert_schema_and_compiler_reject(
        "many with optional",
        &text,
        "`many` already allows no match",
    );
}

#[test]
fn a_selection_named_like_a_built_in_is_rejected_by_schema_and_compiler() {
    let text = edited("  region: {", "  currency: {").replace("{{ region }}", "{{ currency }}");
    assert_schema_and_compiler_reject("a selection named currency", &text, "built-in name");
}

#[test]
fn an_unknown_endpoint_is_rejected_by_schema_and_compiler() {
    let text = edited("endpoint: POST /api/events", "endpoint: POST /api/event");
    assert_schema_and_compiler_reject("/api/event", &text, "unknown endpoint");
}

#[test]
fn the_endpoint_may_leave_out_post() {
    let text = edited("endpoint: POST /api/events", "endpoint: /api/events");
    assert!(schema_errors(mapping_schema(), &text).is_empty());
    compile(&text).unwrap();
}

#[test]
fn a_for_that_does_not_read_name_in_expression_is_rejected_by_schema_and_compiler() {
    let text = edited("for: line in lines", "for: line of lines");
    assert_schema_and_compiler_reject(
        "`for: line of lines`",
        &text,
        "should read `NAME in EXPRESSION`",
    );
    let text = edited("$for: item in lines", "$for: lines");
    assert_schema_and_compiler_reject("`$for: lines`", &text, "should read `NAME in EXPRESSION`");
}

#[test]
fn a_dollar_for_map_with_a_third_key_is_rejected_by_schema_and_compiler() {
    let text = edited(
        "$for: item in lines",
        "$for: item in lines\n            $sort: sku",
    );
    assert_schema_and_compiler_reject("`$for` with `$sort`", &text, "exactly two keys");
}

// ---------------------------------------------------------------------------------------------
// Rules only the schema has: mistakes that load, but cannot work
// ---------------------------------------------------------------------------------------------

#[test]
fn the_schema_rejects_a_yield_without_for() {
    // Loads, but sends a property literally named `$yield` instead of a list.
    let text = edited("$for: item in lines", "for: item in lines");
    assert_schema_rejects(mapping_schema(), "`$yield` beside `for` (no dollar)", &text);
}

#[test]
fn the_schema_rejects_names_templates_cannot_read() {
    // `order-id` would parse as `order - id` in every expression that reads it.
    let text = edited(
        "  order_id: $.order.legacyId",
        "  order-id: $.order.legacyId",
    );
    assert_schema_rejects(mapping_schema(), "a selection named order-id", &text);
}

#[test]
fn a_null_default_is_rejected_by_both_in_favour_of_optional() {
    let text = edited("default: NSW", "default: null");
    assert_schema_rejects(mapping_schema(), "default: null", &text);
    let message = compile(&text).unwrap_err();
    assert!(
        message.contains("`default: null` would make a missing value none; write `optional: true`"),
        "{message}"
    );
}

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

fn assert_both_reject_settings(what: &str, text: &str, parser_says: &str) {
    assert_schema_rejects(settings_schema(), what, text);
    match serde_saphyr::from_str::<Settings>(text) {
        Ok(_) => panic!("the parser accepts {what}:\n{text}"),
        Err(e) => assert!(
            e.to_string().contains(parser_says),
            "the parser's message for {what} should mention `{parser_says}`: {e}"
        ),
    }
}

#[test]
fn a_misspelt_settings_key_is_rejected_by_both() {
    let text = default_settings().replacen("metrics:", "metric:", 1);
    assert_both_reject_settings("`metric` for `metrics`", &text, "unknown field `metric`");
}

#[test]
fn settings_without_consent_are_rejected_by_both() {
    let text = default_settings();
    let cut = text.find("consent:").expect("settings.yaml has consent");
    assert_both_reject_settings(
        "settings without consent",
        &text[..cut],
        "missing field `consent`",
    );
}

#[test]
fn an_unknown_key_inside_consent_is_rejected_by_both() {
    let text = default_settings().replacen("  path:", "  jsonpath:", 1);
    assert_both_reject_settings("`jsonpath` in consent", &text, "unknown field `jsonpath`");
}

#[test]
fn negative_fuel_is_rejected_by_both() {
    let text = format!("{}\nfuel: -1\n", default_settings());
    assert_both_reject_settings("fuel: -1", &text, "u64");
}
