//! The editor schemas in `schemas/` against the Rust spec parser, which is the truth.
//!
//! `schemas/mapping.schema.json`, `settings.schema.json`, `client.schema.json` and
//! `overlay.schema.json` are what a consultant's editor checks while they type; the serde structs
//! in `src/spec/` are what marketsync checks when it loads. These tests keep the two in step:
//! every default file (and what `marketsync init` writes) passes both, and each deliberately
//! broken spec fails both. Rules the parser leaves to the compiler (one test per condition, a
//! known endpoint, ...) are checked against a full compile of a mapping folder.
//!
//! Each schema is one self-contained file: editors resolve a `$ref` into another file
//! inconsistently (some against the schema's `$id`, which no one serves), so the client and
//! overlay schemas hold copies of the mapping and settings rules they share, and a test below
//! keeps each copy equal to its original.

mod common;

use jsonschema::{Draft, Validator};
use marketsync::engine::Engine;
use marketsync::spec::{ClientConfig, OverlaySpec, Settings, parse_mapping};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every editor schema in `schemas/`.
const SCHEMA_FILES: [&str; 4] = [
    "mapping.schema.json",
    "settings.schema.json",
    "client.schema.json",
    "overlay.schema.json",
];

fn schema_json(file: &str) -> Value {
    let path = crate_dir().join("schemas").join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn compile_schema(file: &str) -> Validator {
    let path = crate_dir().join("schemas").join(file);
    let schema = schema_json(file);
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

fn client_schema() -> &'static Validator {
    static SCHEMA: OnceLock<Validator> = OnceLock::new();
    SCHEMA.get_or_init(|| compile_schema("client.schema.json"))
}

fn overlay_schema() -> &'static Validator {
    static SCHEMA: OnceLock<Validator> = OnceLock::new();
    SCHEMA.get_or_init(|| compile_schema("overlay.schema.json"))
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
fn every_schema_is_a_valid_draft_2020_12_schema() {
    mapping_schema();
    settings_schema();
    client_schema();
    overlay_schema();
}

/// Editors show `description` on hover: a key without one leaves a consultant guessing.
/// (Keys named only inside `if`/`then`/`not` are conditions on keys documented elsewhere;
/// `examples`, `default`, `const` and `enum` hold data, whose keys are not schema keys.)
#[test]
fn every_key_in_every_schema_has_a_description() {
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
                    if matches!(
                        key.as_str(),
                        "if" | "then" | "not" | "examples" | "default" | "const" | "enum"
                    ) {
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
    for file in SCHEMA_FILES {
        let schema = schema_json(file);
        let mut missing = Vec::new();
        walk(&schema, "", &mut missing);
        assert!(
            missing.is_empty(),
            "{file}: keys without a description: {missing:#?}"
        );
    }
}

/// Every `$ref` points into its own file: editors resolve a reference to another file against
/// the schema's `$id` or its location depending on their version, so shared rules are copied.
#[test]
fn every_ref_stays_inside_its_schema() {
    fn walk(node: &Value, at: &str, outside: &mut Vec<String>) {
        match node {
            Value::Object(map) => {
                for (key, child) in map {
                    if key == "$ref" && !child.as_str().is_some_and(|r| r.starts_with("#/")) {
                        outside.push(format!("{at}/$ref: {child}"));
                    }
                    walk(child, &format!("{at}/{key}"), outside);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(child, &format!("{at}/{i}"), outside);
                }
            }
            _ => {}
        }
    }
    for file in SCHEMA_FILES {
        let mut outside = Vec::new();
        walk(&schema_json(file), "", &mut outside);
        assert!(
            outside.is_empty(),
            "{file} refers to another file: {outside:#?}"
        );
    }
}

/// The rules of a schema node, without the words around them: a copy may say what the key
/// means where it is copied to, but must check exactly what the original checks.
fn rules(node: &Value) -> Value {
    let mut node = node.clone();
    if let Value::Object(map) = &mut node {
        for annotation in ["title", "description", "examples", "default"] {
            map.remove(annotation);
        }
    }
    node
}

fn node<'v>(schema: &'v Value, file: &str, pointer: &str) -> &'v Value {
    schema
        .pointer(pointer)
        .unwrap_or_else(|| panic!("{file} has nothing at {pointer}"))
}

/// Asserts that each `(copy, original)` pointer pair holds the same rules.
fn assert_copies(copy_file: &str, original_file: &str, pairs: Vec<(String, String)>) {
    let copy = schema_json(copy_file);
    let original = schema_json(original_file);
    for (at, from) in &pairs {
        assert_eq!(
            rules(node(&copy, copy_file, at)),
            rules(node(&original, original_file, from)),
            "{copy_file}#{at} no longer checks what {original_file}#{from} checks: copy the change"
        );
    }
}

#[test]
fn the_overlay_schema_copies_the_mapping_rules_unchanged() {
    let mut pairs: Vec<(String, String)> = [
        "newName",
        "match",
        "condition",
        "selection",
        "bodyNode",
        "bodyFor",
        "test",
    ]
    .iter()
    .map(|def| (format!("/$defs/{def}"), format!("/$defs/{def}")))
    .collect();
    for key in ["description", "lane", "examples"] {
        pairs.push((format!("/properties/{key}"), format!("/properties/{key}")));
    }
    // Keys an overlay may set to null to remove: the second alternative is the mapping's rule.
    for key in [
        "when",
        "require",
        "for",
        "once_per",
        "waits_for",
        "coalesce",
    ] {
        pairs.push((
            format!("/properties/{key}/anyOf/1"),
            format!("/properties/{key}"),
        ));
    }
    for (at, from) in [
        (
            "/properties/select/propertyNames",
            "/properties/select/propertyNames",
        ),
        (
            "/properties/compute/propertyNames",
            "/properties/compute/propertyNames",
        ),
        (
            "/properties/compute/additionalProperties/anyOf/1",
            "/properties/compute/additionalProperties",
        ),
        (
            "/properties/emit/properties/endpoint",
            "/$defs/emit/properties/endpoint",
        ),
        (
            "/$defs/bodyForPatch/properties/$for",
            "/$defs/bodyFor/properties/$for",
        ),
    ] {
        pairs.push((at.into(), from.into()));
    }
    assert_copies("overlay.schema.json", "mapping.schema.json", pairs);
}

#[test]
fn the_client_schema_copies_the_settings_rules_unchanged() {
    let pairs: Vec<(String, String)> = [
        "marketplaces",
        "klaviyo_api_key_env",
        "marketplacer_klaviyo_integration",
        "metrics",
        "consent",
        "phone_region",
        "rate_limits",
    ]
    .iter()
    .map(|key| (format!("/properties/{key}"), format!("/properties/{key}")))
    .collect();
    assert_copies("client.schema.json", "settings.schema.json", pairs);
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

#[test]
fn settings_with_marketplaces_a_key_variable_and_the_integration_pass_both() {
    let text = format!(
        "{}\nmarketplaces:\n  petmarket: {{ currency: AUD }}\n  petmarket-nz: {{ currency: NZD }}\nklaviyo_api_key_env: PETMARKET_KLAVIYO_API_KEY\nmarketplacer_klaviyo_integration: true\n",
        default_settings()
    );
    let errors = schema_errors(settings_schema(), &text);
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    let settings: Settings = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(settings.currency_of("petmarket-nz"), "NZD");
    assert!(settings.native_klaviyo_events());
}

#[test]
fn a_marketplace_without_currency_is_rejected_by_both() {
    let text = format!(
        "{}\nmarketplaces:\n  petmarket: {{ currncy: AUD }}\n",
        default_settings()
    );
    assert_both_reject_settings(
        "`currncy` in a marketplace",
        &text,
        "unknown field `currncy`",
    );
}

// ---------------------------------------------------------------------------------------------
// Tests written in a mapping
// ---------------------------------------------------------------------------------------------

/// `VALID` with a `tests:` block using every form a test can take.
fn with_tests(tests: &str) -> String {
    format!("{VALID}{tests}")
}

const TESTS: &str = r#"tests:
  - name: a paid order gives one event per line
    delivery: ../examples/orders.ndjson
    expect:
      - endpoint: POST /api/events
        data.attributes.properties.Region: NSW
        data.attributes.properties.Items.0.SKU: SKU-1
      - {}
  - name: written inline
    delivery:
      id: V2ViaG9va0V2ZW50LTE=
      event_name: create
      payload:
        data:
          node: { __typename: Invoice, legacyId: 1 }
    expect: []
  - name: an order without an email is rejected
    delivery: fixtures/no-email.json
    error: "required value `customer_email` is empty"
  - name: the whole body can be compared
    delivery: ../examples/orders.ndjson
    expect:
      - body: { data: { type: event } }
"#;

#[test]
fn a_mapping_with_tests_passes_the_schema_and_the_parser() {
    let text = with_tests(TESTS);
    let errors = schema_errors(mapping_schema(), &text);
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    let spec = parse_mapping("probe.yaml", &text)
        .unwrap_or_else(|d| panic!("{d}"))
        .spec;
    assert_eq!(spec.tests.len(), 4);
    assert!(spec.tests[1].delivery.value.is_object());
    assert!(spec.tests[1].expect.as_ref().unwrap().value.is_empty());
    assert!(spec.tests[2].error.is_some());
}

#[test]
fn a_test_with_an_unknown_key_is_rejected_by_both() {
    let text = with_tests(&TESTS.replacen("    expect: []", "    expected: []", 1));
    assert_both_reject("`expected` in a test", &text, "unknown field `expected`");
}

#[test]
fn a_test_without_a_delivery_is_rejected_by_both() {
    let text = with_tests(&TESTS.replacen("    delivery: fixtures/no-email.json\n", "", 1));
    assert_both_reject("a test without delivery", &text, "missing field `delivery`");
}

#[test]
fn the_schema_rejects_an_expected_endpoint_without_its_method() {
    // Loads, but can never pass: the request's endpoint is always `POST /api/...`.
    let text =
        with_tests(&TESTS.replacen("endpoint: POST /api/events", "endpoint: /api/events", 1));
    assert_schema_rejects(mapping_schema(), "`endpoint: /api/events` in expect", &text);
    parse_mapping("probe.yaml", &text).unwrap_or_else(|d| panic!("{d}"));
}

// ---------------------------------------------------------------------------------------------
// Clients: client.yaml and overlays, as `marketsync init` writes them
// ---------------------------------------------------------------------------------------------

/// Where `marketsync init acme` writes client.yaml and the overlay, relative to where it runs.
const CLIENT_YAML: &str = "clients/acme/client.yaml";
const OVERLAY_YAML: &str = "clients/acme/mappings/placed-order.yaml";

/// What `marketsync init acme` writes (run once for all the tests below).
struct Scaffold {
    client: String,
    overlay: String,
}

fn scaffold() -> &'static Scaffold {
    static SCAFFOLD: OnceLock<Scaffold> = OnceLock::new();
    SCAFFOLD.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let output = common::marketsync_command()
            .args(["init", "acme"])
            .current_dir(dir.path())
            .output()
            .expect("marketsync runs");
        assert!(
            output.status.success(),
            "marketsync init acme failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let read = |path: &str| {
            std::fs::read_to_string(dir.path().join(path))
                .unwrap_or_else(|e| panic!("init wrote no {path}: {e}"))
        };
        Scaffold {
            client: read(CLIENT_YAML),
            overlay: read(OVERLAY_YAML),
        }
    })
}

fn assert_client_passes_both(what: &str, text: &str) {
    let errors = schema_errors(client_schema(), text);
    assert!(
        errors.is_empty(),
        "{what} breaks the client schema:\n{}\n{text}",
        errors.join("\n")
    );
    if let Err(e) = serde_saphyr::from_str::<ClientConfig>(text) {
        panic!("the parser rejects {what}: {e}\n{text}");
    }
}

fn assert_client_rejected_by_both(what: &str, text: &str, parser_says: &str) {
    assert_schema_rejects(client_schema(), what, text);
    match serde_saphyr::from_str::<ClientConfig>(text) {
        Ok(_) => panic!("the parser accepts {what}:\n{text}"),
        Err(e) => assert!(
            e.to_string().contains(parser_says),
            "the parser's message for {what} should mention `{parser_says}`: {e}"
        ),
    }
}

fn parse_overlay(text: &str) -> Result<OverlaySpec, String> {
    serde_saphyr::from_str::<OverlaySpec>(text).map_err(|e| e.to_string())
}

fn assert_overlay_passes_both(what: &str, text: &str) -> OverlaySpec {
    let errors = schema_errors(overlay_schema(), text);
    assert!(
        errors.is_empty(),
        "{what} breaks the overlay schema:\n{}\n{text}",
        errors.join("\n")
    );
    parse_overlay(text).unwrap_or_else(|e| panic!("the parser rejects {what}: {e}\n{text}"))
}

fn assert_overlay_rejected_by_both(what: &str, text: &str, parser_says: &str) {
    assert_schema_rejects(overlay_schema(), what, text);
    match parse_overlay(text) {
        Ok(_) => panic!("the parser accepts {what}:\n{text}"),
        Err(e) => assert!(
            e.contains(parser_says),
            "the parser's message for {what} should mention `{parser_says}`: {e}"
        ),
    }
}

/// The `$schema` of a `# yaml-language-server: $schema=PATH` first line.
fn schema_comment(text: &str) -> &str {
    text.lines()
        .next()
        .and_then(|line| line.strip_prefix("# yaml-language-server: $schema="))
        .unwrap_or_else(|| panic!("the first line names no schema:\n{text}"))
        .trim()
}

/// `a/b/../c` as `a/c`, without touching the disk.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn the_files_init_writes_name_their_schemas_from_a_clients_folder_beside_schemas() {
    // In a checkout, `clients/` sits beside `schemas/`: each file's `$schema` path, taken from
    // where init put the file, must land on the schema.
    let s = scaffold();
    for (file, text, schema) in [
        (CLIENT_YAML, &s.client, "client.schema.json"),
        (OVERLAY_YAML, &s.overlay, "overlay.schema.json"),
    ] {
        let relative = schema_comment(text);
        let folder = Path::new(file).parent().unwrap();
        let target = normalise(&crate_dir().join(folder).join(relative));
        assert_eq!(
            target,
            normalise(&crate_dir().join("schemas").join(schema)),
            "{file} names {relative}"
        );
        assert!(target.is_file(), "{} does not exist", target.display());
    }
}

#[test]
fn the_client_yaml_init_writes_passes_the_schema_and_the_parser() {
    assert_client_passes_both("client.yaml from init", &scaffold().client);
}

/// The commented-out keys in init's client.yaml are examples to switch on: they must work
/// once uncommented.
#[test]
fn the_commented_out_examples_in_the_client_yaml_pass_once_uncommented() {
    let text: String = scaffold()
        .client
        .lines()
        .map(|line| {
            let key = line.strip_prefix("# ").filter(|rest| {
                rest.starts_with("  ")
                    || rest.split_once(':').is_some_and(|(key, _)| {
                        key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    })
            });
            key.unwrap_or(line).to_owned() + "\n"
        })
        .collect();
    for key in [
        "metrics:",
        "consent:",
        "profile_attributes:",
        "rate_limits:",
    ] {
        assert!(
            text.lines().any(|line| line == key),
            "`{key}` was not uncommented:\n{text}"
        );
    }
    assert_client_passes_both("client.yaml with its examples uncommented", &text);
}

#[test]
fn a_misspelt_key_in_client_yaml_is_rejected_by_both() {
    let text = scaffold()
        .client
        .replacen("klaviyo_api_key_env:", "klaviyo_api_key:", 1);
    assert_client_rejected_by_both(
        "`klaviyo_api_key` for `klaviyo_api_key_env`",
        &text,
        "unknown field `klaviyo_api_key`",
    );
    // `marketplace` is the base settings' key; a client lists `marketplaces`.
    let text = scaffold()
        .client
        .replacen("marketplaces:", "marketplace:", 1);
    assert_client_rejected_by_both(
        "`marketplace` in client.yaml",
        &text,
        "unknown field `marketplace`",
    );
}

#[test]
fn the_overlay_init_writes_passes_the_schema_and_the_parser() {
    let overlay = assert_overlay_passes_both("the overlay from init", &scaffold().overlay);
    assert_eq!(overlay.overlay.value, "placed-order");
    assert_eq!(overlay.tests.len(), 1);
}

#[test]
fn a_misspelt_key_in_an_overlay_is_rejected_by_both() {
    let text = scaffold().overlay.replacen("tests:", "test:", 1);
    assert_overlay_rejected_by_both("`test` for `tests`", &text, "unknown field `test`");
    let text = scaffold().overlay.replacen("  body:", "  bdy:", 1);
    assert_overlay_rejected_by_both("`bdy` in emit", &text, "unknown field `bdy`");
}

#[test]
fn an_overlay_may_remove_a_selection_and_when_with_null() {
    let text = "overlay: placed-order\nselect: { x: null, store: { path: $.order.store, optional: true } }\ncompute: { y: null }\nwhen: null\nonce_per: null\n";
    let overlay = assert_overlay_passes_both("select: { x: null } and when: null", text);
    assert!(overlay.select["x"].value.is_none());
    assert!(overlay.select["store"].value.is_some());
    assert!(overlay.compute["y"].value.is_none());
    assert!(format!("{:?}", overlay.when).starts_with("Remove"));
}

#[test]
fn an_overlay_may_patch_a_list_built_with_for() {
    // Merged into the base's `$for`/`$yield` map, `$yield` alone changes each element.
    let text = "overlay: ordered-product\nemit:\n  body:\n    data:\n      attributes:\n        properties:\n          Items:\n            $yield: { Brand: \"{{ item.brand }}\", Legacy: null }\n";
    assert_overlay_passes_both("a `$yield` patch", text);
    let text = text.replacen("$yield:", "$yield: {}\n            Other:", 1);
    assert_schema_rejects(overlay_schema(), "a third key beside `$yield`", &text);
}

#[test]
fn an_overlay_without_overlay_is_rejected_by_both() {
    let text = scaffold()
        .overlay
        .replacen("overlay: placed-order\n", "", 1);
    assert_overlay_rejected_by_both(
        "an overlay without `overlay`",
        &text,
        "missing field `overlay`",
    );
}

#[test]
fn issue11_an_overlay_may_leave_out_the_base_tests() {
    let overlay = assert_overlay_passes_both(
        "base_tests: false",
        "overlay: placed-order\nbase_tests: false\n",
    );
    assert!(!overlay.base_tests);
    assert_overlay_rejected_by_both(
        "base_tests that is not a boolean",
        "overlay: placed-order\nbase_tests: [a]\n",
        "base_tests",
    );
}
