//! The engine's semantics, one small inline mapping at a time.

mod common;

use marketsync::engine::{Engine, Mapped, MappingErrorKind};
use marketsync::source::parse_delivery;
use serde_json::{Value, json};

/// Compiles a one-mapping set (with the default settings) and maps `node` as an Invoice.
fn map_with(spec: &str, node: Value) -> Mapped {
    let engine = compile(spec).unwrap_or_else(|d| panic!("{d:#}"));
    map(&engine, node)
}

fn compile(spec: &str) -> Result<Engine, marketsync::diagnostic::Diagnostics> {
    let root = tempfile::tempdir().unwrap();
    let mappings = root.path().join("mappings");
    std::fs::create_dir(&mappings).unwrap();
    std::fs::copy(
        common::repo("mappings/settings.yaml"),
        mappings.join("settings.yaml"),
    )
    .unwrap();
    std::fs::write(mappings.join("test.yaml"), spec).unwrap();
    // The webhook query beside the mappings is the default one, with the invoice's own
    // `metadata` that `invoice()` carries (its other made-up fields the schema check warns of).
    let query = std::fs::read_to_string(common::repo("queries/invoice.graphql"))
        .unwrap()
        .replacen(
            "    ... on Invoice {\n",
            "    ... on Invoice {\n      metadata { key value }\n",
            1,
        );
    std::fs::create_dir(root.path().join("queries")).unwrap();
    std::fs::write(root.path().join("queries/invoice.graphql"), query).unwrap();
    Engine::load_dir(&mappings).map(|(engine, _)| engine)
}

fn map(engine: &Engine, node: Value) -> Mapped {
    let delivery = json!({"id": "E1", "event_name": "create", "payload": {"data": {"node": node}}});
    let records = parse_delivery(&delivery.to_string()).unwrap();
    engine.map(&records[0])
}

/// An event mapping whose `properties` are the given YAML block (indented 10 spaces).
fn event_spec(select: &str, properties: &str) -> String {
    format!(
        r#"name: test
lane: transaction
match:
  type: Invoice
select:
  id: $.legacyId
{select}
emit:
  endpoint: POST /api/events
  body:
    data:
      type: event
      attributes:
        metric: {{ data: {{ type: metric, attributes: {{ name: Test }} }} }}
        profile: {{ data: {{ type: profile, attributes: {{ email: a@example.com }} }} }}
        unique_id: "m:{{{{ id }}}}"
        properties:
{properties}
"#
    )
}

fn properties(mapped: &Mapped) -> &Value {
    assert!(mapped.errors.is_empty(), "{:?}", mapped.errors);
    &mapped.requests[0].body["data"]["attributes"]["properties"]
}

fn invoice() -> Value {
    json!({"__typename": "Invoice", "legacyId": 7, "totalCents": 15995, "flags": ["PAID"], "note": "<b>Fish & Chips</b> — Ünïcode",
           "lines": [{"id": 1, "qty": 2, "sku": "A"}, {"id": 2, "qty": 1}], "empty": "", "nothing": null,
           "metadata": [{"key": "accepts_marketing", "value": "yes"}]})
}

#[test]
fn a_single_expression_keeps_its_native_type() {
    let spec = event_spec(
        "  total: $.totalCents\n  lines: { path: \"$.lines[*]\", many: true }",
        "          Number: \"{{ total }}\"\n          Money: \"{{ total | money }}\"\n          List: \"{{ lines | map(attribute='qty') | list }}\"\n          Object: \"{{ lines[0] }}\"\n          Bool: \"{{ total > 100 }}\"\n          Text: \"total {{ total }}\"\n          Padded: \"  {{ total }}  \"",
    );
    let mapped = map_with(&spec, invoice());
    assert_eq!(
        properties(&mapped),
        &json!({"Number": 15995, "Money": 159.95, "List": [2, 1], "Object": {"id": 1, "qty": 2, "sku": "A"}, "Bool": true, "Text": "total 15995", "Padded": 15995})
    );
}

#[test]
fn text_is_not_html_escaped() {
    let spec = event_spec(
        "  note: $.note",
        "          Note: \"{{ note }}\"\n          Quoted: \"[{{ note }}]\"",
    );
    let mapped = map_with(&spec, invoice());
    assert_eq!(properties(&mapped)["Note"], "<b>Fish & Chips</b> — Ünïcode");
    assert_eq!(
        properties(&mapped)["Quoted"],
        "[<b>Fish & Chips</b> — Ünïcode]"
    );
}

#[test]
fn empty_values_are_left_out_and_so_are_objects_they_empty() {
    let spec = event_spec(
        "  empty: $.empty\n  nothing: { path: $.nothing, optional: true }\n  absent: { path: $.absent, optional: true }",
        "          Empty: \"{{ empty }}\"\n          Nothing: \"{{ nothing }}\"\n          Absent: \"{{ absent.deeper.still }}\"\n          Nested: { A: \"{{ nothing }}\" }\n          Kept: 0\n          KeptFalse: \"{{ false }}\"",
    );
    let mapped = map_with(&spec, invoice());
    assert_eq!(properties(&mapped), &json!({"Kept": 0, "KeptFalse": false}));
}

#[test]
fn selections_are_required_optional_defaulted_or_many() {
    let spec = event_spec(
        "  note: $.note\n  missing: { path: $.missing, default: fallback }\n  skus: { path: \"$.lines[*].sku\", many: true }\n  opt_in: { from: meta, path: \"{{ settings.consent.path }}\" }\n  meta: $.metadata",
        "          Missing: \"{{ missing }}\"\n          Skus: \"{{ skus }}\"",
    );
    // `from` must name a selection above it.
    let err = compile(&spec).err().unwrap();
    assert!(
        err.to_string()
            .contains("reads `from: meta`, which is not a selection defined above it"),
        "{err}"
    );
    let spec = spec.replace("  opt_in: { from: meta, path: \"{{ settings.consent.path }}\" }\n  meta: $.metadata", "  meta: $.metadata\n  opt_in: { from: meta, path: \"$[?@.key == 'accepts_marketing'].value\" }");
    let mapped = map_with(&spec, invoice());
    assert_eq!(
        properties(&mapped),
        &json!({"Missing": "fallback", "Skus": ["A"]})
    );

    let mut no_note = invoice();
    no_note.as_object_mut().unwrap().remove("note");
    let mapped = map_with(&spec, no_note);
    assert!(mapped.requests.is_empty());
    assert_eq!(mapped.errors[0].kind, MappingErrorKind::Missing);
    assert_eq!(
        mapped.errors[0].to_string(),
        "mapping `test`: required field `note` is missing (path `$.note` matched nothing)"
    );
}

#[test]
fn settings_can_name_a_path() {
    let spec = event_spec(
        "  order: $\n  opt_in: { from: order, path: \"{{ settings.consent.path }}\", optional: true }",
        "          OptIn: \"{{ opt_in | opt_in }}\"",
    );
    assert_eq!(
        properties(&map_with(&spec, invoice()))["OptIn"],
        json!(true)
    );
}

#[test]
fn conditions_and_when_decide_whether_a_mapping_applies() {
    let spec = event_spec("", "          X: 1").replace(
        "  type: Invoice\n",
        "  type: Invoice\n  events: [create]\n  where:\n    - path: $.flags\n      contains: PAID\n    - any:\n        - path: $.totalCents\n          equals: 1\n        - path: \"$.lines[*].sku\"\n          one_of: [A, B]\n    - path: $.nothing\n      exists: false\n",
    );
    assert_eq!(map_with(&spec, invoice()).requests.len(), 1);
    let mut unpaid = invoice();
    unpaid["flags"] = json!(["REFUNDED"]);
    let mapped = map_with(&spec, unpaid);
    assert!(mapped.matched && mapped.requests.is_empty() && mapped.errors.is_empty());
    let other_type = map_with(&spec, json!({"__typename": "Seller", "legacyId": 1}));
    assert!(!other_type.matched);

    let gated = event_spec("  total: $.totalCents", "          X: 1")
        .replace("emit:", "when: total > 20000\nemit:");
    assert!(map_with(&gated, invoice()).requests.is_empty());
}

#[test]
fn fan_out_gives_one_request_per_element_with_its_own_key() {
    let spec = event_spec(
        "  lines: { path: \"$.lines[*]\", many: true }",
        "          Line: \"{{ line.id }}\"",
    )
    .replace(
        "emit:",
        "for: line in lines\nonce_per: \"{{ line.id }}\"\nemit:",
    )
    .replace(
        "unique_id: \"m:{{ id }}\"",
        "unique_id: \"m:{{ id }}:{{ line.id }}\"",
    );
    let mapped = map_with(&spec, invoice());
    let keys: Vec<(&Value, Option<&str>)> = mapped
        .requests
        .iter()
        .map(|r| {
            (
                &r.body["data"]["attributes"]["unique_id"],
                r.once_key.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        keys,
        [(&json!("m:7:1"), Some("1")), (&json!("m:7:2"), Some("2"))]
    );
}

#[test]
fn a_body_klaviyo_would_reject_is_an_error_not_a_request() {
    let spec = event_spec("", "          X: 1").replace(
        "        unique_id:",
        "        uniqueId: x\n        unique_id:",
    );
    let mapped = map_with(&spec, invoice());
    assert!(mapped.requests.is_empty());
    assert_eq!(mapped.errors[0].kind, MappingErrorKind::Schema);
    assert!(
        mapped.errors[0]
            .message
            .contains("'uniqueId' was unexpected"),
        "{}",
        mapped.errors[0].message
    );
}

#[test]
fn a_runaway_template_runs_out_of_fuel() {
    let spec = event_spec(
        "",
        "          X: \"{% for i in range(100000) %}{{ i }}{% endfor %}\"",
    );
    let mapped = map_with(&spec, invoice());
    assert_eq!(mapped.errors[0].kind, MappingErrorKind::Render);
    assert!(
        mapped.errors[0].message.contains("fuel"),
        "{}",
        mapped.errors[0].message
    );
}

#[test]
fn a_filter_that_cannot_convert_fails_the_record_with_the_field() {
    let spec = event_spec("  note: $.note", "          Price: \"{{ note | money }}\"");
    let mapped = map_with(&spec, invoice());
    assert_eq!(mapped.errors[0].kind, MappingErrorKind::Render);
    assert!(
        mapped.errors[0]
            .message
            .starts_with("body/data/attributes/properties/Price: "),
        "{}",
        mapped.errors[0].message
    );
}

#[test]
fn undefined_names_are_caught_before_any_record() {
    let spec = event_spec("", "          X: \"{{ idd }}\"");
    let err = compile(&spec).err().unwrap().to_string();
    assert!(
        err.contains("test.yaml:18:18: error: `idd` is not defined here"),
        "{err}"
    );
}

#[test]
fn none_inside_text_renders_as_nothing() {
    let spec = event_spec(
        "  note: $.note\n  absent: { path: $.absent, optional: true }",
        "          Joined: \"[{{ absent }}]\"\n          AsString: \"{{ absent | string }}\"",
    );
    let mapped = map_with(&spec, invoice());
    // `| string` of a missing value is empty too, so the field is left out.
    assert_eq!(properties(&mapped), &json!({"Joined": "[]"}));
}

#[test]
fn requests_carry_their_ordering_and_coalescing_keys() {
    let spec = event_spec("  total: $.totalCents", "          X: 1").replace(
        "emit:",
        "once_per: \"k{{ id }}\"\nwaits_for:\n  mapping: test\n  key: \"order:{{ id }}\"\ncoalesce:\n  key: \"{{ id }}\"\n  version: \"v{{ total }}\"\nemit:",
    );
    let mapped = map_with(&spec, invoice());
    let request = &mapped.requests[0];
    let waits = request.waits_for.as_ref().unwrap();
    assert_eq!((&*waits.mapping, waits.key.as_str()), ("test", "order:7"));
    let coalesce = request.coalesce.as_ref().unwrap();
    assert_eq!(
        (coalesce.key.as_str(), coalesce.version.as_str()),
        ("7", "v15995")
    );
    assert_eq!(request.unique_id(), Some("m:7"));
}

#[test]
fn waiting_for_a_mapping_needs_one_with_a_once_per_key() {
    let spec = event_spec("", "          X: 1").replace(
        "emit:",
        "waits_for:\n  mapping: nowhere\n  key: \"{{ id }}\"\nemit:",
    );
    let err = compile(&spec).err().unwrap().to_string();
    assert!(
        err.contains("`waits_for.mapping: nowhere` is not a mapping in this set"),
        "{err}"
    );
    let spec = spec.replace("mapping: nowhere", "mapping: test");
    let err = compile(&spec).err().unwrap().to_string();
    assert!(
        err.contains("`waits_for.mapping: test` has no `once_per`"),
        "{err}"
    );
}

#[test]
fn an_event_mapping_needs_a_unique_id_that_names_its_item_when_it_fans_out() {
    let spec = event_spec("", "          X: 1").replace("        unique_id: \"m:{{ id }}\"\n", "");
    let err = compile(&spec).err().unwrap().to_string();
    assert!(
        err.contains("an event mapping must set data.attributes.unique_id"),
        "{err}"
    );

    let spec = event_spec(
        "  lines: { path: \"$.lines[*]\", many: true }",
        "          X: 1",
    )
    .replace("emit:", "for: line in lines\nemit:");
    let err = compile(&spec).err().unwrap().to_string();
    assert!(
        err.contains("fans out with `line`, so its unique_id must include the item"),
        "{err}"
    );
}

#[test]
fn a_subscription_mapping_must_rest_on_an_explicit_opt_in_and_never_unsubscribe() {
    let consent = std::fs::read_to_string(common::repo("mappings/consent.yaml")).unwrap();
    let consent = consent.replace(
        "examples:\n  - ../examples/orders.ndjson\n  - ../examples/backfill-page.json\n",
        "",
    );
    compile(&consent).unwrap_or_else(|d| panic!("{d:#}"));

    let unconditional = consent.replace("when: opted_in\n", "");
    let err = compile(&unconditional).err().unwrap().to_string();
    assert!(
        err.contains("a subscription mapping must subscribe only on an explicit opt-in"),
        "{err}"
    );

    let by_hand = consent.replace("when: opted_in\n", "when: accepts_marketing == 'yes'\n");
    let err = compile(&by_hand).err().unwrap().to_string();
    assert!(
        err.contains("explicit opt-in"),
        "a condition that bypasses opt_in is refused: {err}"
    );

    let unsubscribe = consent.replace("consent: SUBSCRIBED", "consent: UNSUBSCRIBED");
    let err = compile(&unsubscribe).err().unwrap().to_string();
    assert!(err.contains("mappings never unsubscribe"), "{err}");
}

#[test]
fn issue11_a_literal_that_is_not_plainly_a_number_stays_text() {
    let spec = event_spec(
        "",
        "          Phone: 0800123456\n          Intl: +61412345678\n          Exp: 1e5\n          Count: 12\n          Below: -3\n          Half: 1.5\n          Flow: { code: 007, n: 2 }\n          List: [0123, 4]",
    );
    let mapped = map_with(&spec, invoice());
    assert_eq!(
        properties(&mapped),
        &json!({"Phone": "0800123456", "Intl": "+61412345678", "Exp": "1e5", "Count": 12, "Below": -3,
                "Half": 1.5, "Flow": {"code": "007", "n": 2}, "List": ["0123", 4]})
    );
}

#[test]
fn issue11_yaml_1_1_booleans_in_a_body_are_warned_about_at_their_line() {
    let spec = event_spec(
        "",
        "          Gift: yes\n          Wrapped: Off\n          Letter: n\n          Plain: true\n          Quoted: \"yes\"\n          Words: yes please",
    );
    let dir = common::mapping_folder(&[("test.yaml", &spec)]);
    let (_, warnings) = Engine::load_dir(dir.path()).unwrap_or_else(|d| panic!("{d:#}"));
    let warnings = warnings.to_string();
    for (at, word) in [("18:17", "yes"), ("19:20", "Off"), ("20:19", "n")] {
        let expected =
            format!("test.yaml:{at}: warning: `{word}` is a boolean to YAML 1.1 readers");
        assert!(warnings.contains(&expected), "{expected}\n{warnings}");
    }
    assert_eq!(warnings.matches("YAML 1.1").count(), 3, "{warnings}");
}
