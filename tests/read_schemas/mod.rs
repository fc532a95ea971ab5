//! The JSON Schemas of Klaviyo's read operations (`schemas/klaviyo-reads/`), converted from
//! its OpenAPI spec, and the checks that the committed files are what the spec gives.
//!
//! `src/klaviyo/extract.rs` converts the request bodies marketsync *sends*; this converts what
//! the stand-in *answers* on the read side (and the one read that takes a body,
//! `MetricAggregateQuery`), so that tests validate the stand-in against the spec rather than
//! against what a reader expects. The rules are the extractor's (`$ref` to `$defs`,
//! `nullable` to a `null` type, OpenAPI-only keys dropped, objects that list `properties`
//! closed with `additionalProperties: false`), plus one: `allOf` of object schemas (the
//! profile list's `attributes.subscriptions` beside the profile resource) is merged into one
//! object before closing, since closing each part would reject every profile.
//!
//! The error schema (`ClientError`) stays open: Klaviyo's errors carry `status`, `links` and
//! `meta`, which the spec's schema leaves out.

use serde_json::{Map, Value as Json, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const SPEC: &str = "shared/reference/klaviyo/openapi-stable.json";
const COMPONENTS: &str = "#/components/schemas/";
const ID_BASE: &str = "https://marketsync.invalid/klaviyo-reads/";

const COPIED: &[&str] = &[
    "title",
    "type",
    "enum",
    "format",
    "default",
    "required",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "multipleOf",
    "pattern",
    "minProperties",
    "maxProperties",
];

const DROPPED: &[&str] = &[
    "description",
    "nullable",
    "readOnly",
    "writeOnly",
    "example",
    "examples",
    "discriminator",
    "xml",
    "externalDocs",
    "deprecated",
];

const COMPOSITE: &[&str] = &["$ref", "oneOf", "anyOf", "allOf", "not"];

/// One generated file: where its schema is in the spec, and whether objects are closed.
pub struct Target {
    pub file: &'static str,
    pub pointer: &'static str,
    pub closed: bool,
}

pub const TARGETS: &[Target] = &[
    Target {
        file: "get_profiles.json",
        pointer: "/paths/~1api~1profiles/get/responses/200/content/application~1vnd.api+json/schema",
        closed: true,
    },
    Target {
        file: "get_events.json",
        pointer: "/paths/~1api~1events/get/responses/200/content/application~1vnd.api+json/schema",
        closed: true,
    },
    Target {
        file: "get_metrics.json",
        pointer: "/paths/~1api~1metrics/get/responses/200/content/application~1vnd.api+json/schema",
        closed: true,
    },
    Target {
        file: "query_metric_aggregates.json",
        pointer: "/paths/~1api~1metric-aggregates/post/responses/200/content/application~1vnd.api+json/schema",
        closed: true,
    },
    Target {
        file: "query_metric_aggregates.request.json",
        pointer: "/paths/~1api~1metric-aggregates/post/requestBody/content/application~1vnd.api+json/schema",
        closed: true,
    },
    Target {
        file: "client_error.json",
        pointer: "/components/responses/ClientError/content/application~1vnd.api+json/schema",
        closed: false,
    },
];

/// The operations, for `index.json`: method, path, operation id.
const OPERATIONS: &[(&str, &str)] = &[
    ("get", "/api/profiles"),
    ("get", "/api/events"),
    ("get", "/api/metrics"),
    ("post", "/api/metric-aggregates"),
];

/// `schemas/klaviyo-reads/` in this checkout.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/klaviyo-reads")
}

/// The spec, from the nearest ancestor of the crate with `shared/` beside it; `None` on a
/// clone without it (the committed files then stand in).
pub fn spec() -> Option<(Vec<u8>, Json)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join(SPEC))
        .find(|path| path.is_file())?;
    let bytes = std::fs::read(path).expect("the spec is readable");
    let document = serde_json::from_slice(&bytes).expect("the spec is JSON");
    Some((bytes, document))
}

/// Every file, as `(name, text)`, from the spec.
pub fn generate(bytes: &[u8], spec: &Json) -> Vec<(String, String)> {
    let sha256: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let revision = spec["info"]["version"].as_str().expect("info.version");
    let mut files = Vec::new();
    for target in TARGETS {
        let source = spec
            .pointer(target.pointer)
            .unwrap_or_else(|| panic!("the spec has {}", target.pointer));
        let mut converter = Converter {
            components: spec["components"]["schemas"]
                .as_object()
                .expect("components.schemas"),
            closed: target.closed,
            defs: BTreeMap::new(),
        };
        let root = converter.convert(source, target.pointer);
        let mut document = Map::new();
        document.insert(
            "$schema".into(),
            json!("https://json-schema.org/draft/2020-12/schema"),
        );
        document.insert("$id".into(), json!(format!("{ID_BASE}{}", target.file)));
        document.insert(
            "x-provenance".into(),
            json!({"revision": revision, "source": SPEC, "sha256": sha256, "pointer": target.pointer}),
        );
        for (key, value) in root {
            document.insert(key, value);
        }
        if !converter.defs.is_empty() {
            document.insert(
                "$defs".into(),
                Json::Object(converter.defs.into_iter().collect()),
            );
        }
        files.push((target.file.to_owned(), render(&Json::Object(document))));
    }
    let operations: Vec<Json> = OPERATIONS
        .iter()
        .map(|(method, path)| {
            let operation = &spec["paths"][*path][*method];
            json!({
                "method": method.to_uppercase(),
                "path": path,
                "operation_id": operation["operationId"],
                "scopes": operation["x-klaviyo-scopes"],
                "rate_limit": operation["x-klaviyo-ratelimit"],
            })
        })
        .collect();
    let index =
        json!({"revision": revision, "source": SPEC, "sha256": sha256, "operations": operations});
    files.push(("index.json".into(), render(&index)));
    files
}

fn render(document: &Json) -> String {
    let mut text = serde_json::to_string_pretty(document).expect("JSON renders");
    text.push('\n');
    text
}

struct Converter<'a> {
    components: &'a Map<String, Json>,
    closed: bool,
    defs: BTreeMap<String, Json>,
}

impl<'a> Converter<'a> {
    fn component<'r>(&self, reference: &'r str, at: &str) -> (&'r str, &'a Json) {
        let name = reference
            .strip_prefix(COMPONENTS)
            .unwrap_or_else(|| panic!("{at}: unsupported $ref {reference}"));
        let schema = self
            .components
            .get(name)
            .unwrap_or_else(|| panic!("{at}: dangling $ref {reference}"));
        (name, schema)
    }

    /// A schema with its `$ref` (if it is one) followed, for merging.
    fn resolved(&self, schema: &Json, at: &str) -> Json {
        match schema.get("$ref").and_then(Json::as_str) {
            Some(reference) => {
                let (_, target) = self.component(reference, at);
                self.resolved(target, at)
            }
            None => schema.clone(),
        }
    }

    /// `allOf` parts merged into one schema: properties united (a property in several parts
    /// merged the same way), `required` united, everything else equal in every part.
    fn merge(&self, parts: &[Json], at: &str) -> Json {
        let mut merged = Map::new();
        for part in parts {
            let part = self.resolved(part, at);
            let part = part
                .as_object()
                .unwrap_or_else(|| panic!("{at}: an allOf part is not an object"));
            for (key, value) in part {
                match (key.as_str(), merged.get_mut(key)) {
                    (_, None) => {
                        merged.insert(key.clone(), value.clone());
                    }
                    ("properties", Some(Json::Object(properties))) => {
                        for (name, schema) in value.as_object().expect("properties") {
                            let combined = match properties.get(name) {
                                Some(existing) if existing == schema => existing.clone(),
                                Some(existing) => {
                                    self.merge(&[existing.clone(), schema.clone()], at)
                                }
                                None => schema.clone(),
                            };
                            properties.insert(name.clone(), combined);
                        }
                    }
                    ("required", Some(Json::Array(required))) => {
                        for name in value.as_array().expect("required") {
                            if !required.contains(name) {
                                required.push(name.clone());
                            }
                        }
                    }
                    ("description", Some(_)) => {}
                    (_, Some(existing)) => {
                        assert_eq!(existing, value, "{at}: allOf parts disagree on {key}")
                    }
                }
            }
        }
        Json::Object(merged)
    }

    fn convert(&mut self, schema: &Json, at: &str) -> Map<String, Json> {
        let source = schema
            .as_object()
            .unwrap_or_else(|| panic!("{at} is not a schema object"));
        if let Some(parts) = source.get("allOf") {
            let mut merged = self.merge(parts.as_array().expect("allOf list"), at);
            for (key, value) in source {
                if key != "allOf" {
                    merged[key] = value.clone();
                }
            }
            return self.convert(&merged, at);
        }
        let mut out = Map::new();
        if let Some(reference) = source.get("$ref").and_then(Json::as_str) {
            let (name, target) = self.component(reference, at);
            let name = name.to_owned();
            if !self.defs.contains_key(&name) {
                self.defs.insert(name.clone(), Json::Null);
                let converted = self.convert(target, &format!("{COMPONENTS}{name}"));
                self.defs.insert(name.clone(), Json::Object(converted));
            }
            out.insert("$ref".into(), json!(format!("#/$defs/{name}")));
        }
        for (key, value) in source {
            match key.as_str() {
                "$ref" => {}
                "properties" => {
                    let properties: Map<String, Json> = value
                        .as_object()
                        .expect("properties")
                        .iter()
                        .map(|(name, schema)| {
                            let converted =
                                self.convert(schema, &format!("{at}/properties/{name}"));
                            (name.clone(), Json::Object(converted))
                        })
                        .collect();
                    out.insert("properties".into(), Json::Object(properties));
                    if self.closed {
                        out.insert("additionalProperties".into(), json!(false));
                    }
                }
                "items" | "not" => {
                    let converted = self.convert(value, &format!("{at}/{key}"));
                    out.insert(key.clone(), Json::Object(converted));
                }
                "oneOf" | "anyOf" => {
                    let list: Vec<Json> = value
                        .as_array()
                        .expect("a list")
                        .iter()
                        .enumerate()
                        .map(|(i, s)| Json::Object(self.convert(s, &format!("{at}/{key}/{i}"))))
                        .collect();
                    out.insert(key.clone(), Json::Array(list));
                }
                "additionalProperties" => {
                    let converted = match value {
                        Json::Bool(_) => value.clone(),
                        schema => Json::Object(self.convert(schema, &format!("{at}/{key}"))),
                    };
                    out.insert(key.clone(), converted);
                }
                k if COPIED.contains(&k) => {
                    out.insert(key.clone(), value.clone());
                }
                k if DROPPED.contains(&k) || k.starts_with("x-") => {}
                k => panic!("{at}: unsupported OpenAPI keyword {k}"),
            }
        }
        if source.get("nullable") == Some(&json!(true)) {
            out = allow_null(out);
        }
        out
    }
}

/// `nullable: true` as JSON Schema: `null` added to `type` (and `enum`), or the schema wrapped
/// in `anyOf` with `{"type": "null"}` where a composite keyword could reject `null` anyway.
fn allow_null(mut schema: Map<String, Json>) -> Map<String, Json> {
    let composite = COMPOSITE.iter().any(|k| schema.contains_key(*k));
    match schema.get("type") {
        Some(Json::String(t)) if !composite => {
            let t = t.clone();
            schema.insert("type".into(), json!([t, "null"]));
            if let Some(Json::Array(values)) = schema.get_mut("enum")
                && !values.contains(&Json::Null)
            {
                values.push(Json::Null);
            }
            schema
        }
        _ => {
            let mut wrapper = Map::new();
            wrapper.insert(
                "anyOf".into(),
                json!([Json::Object(schema), {"type": "null"}]),
            );
            wrapper
        }
    }
}

/// Validators for the committed files, by file name.
pub fn validators() -> BTreeMap<String, jsonschema::Validator> {
    TARGETS
        .iter()
        .map(|target| {
            let text = std::fs::read_to_string(dir().join(target.file))
                .unwrap_or_else(|e| panic!("schemas/klaviyo-reads/{}: {e}", target.file));
            let schema: Json = serde_json::from_str(&text).expect("committed schemas are JSON");
            let validator = jsonschema::options()
                .with_draft(jsonschema::Draft::Draft202012)
                .should_validate_formats(true)
                .build(&schema)
                .unwrap_or_else(|e| panic!("{} does not compile: {e}", target.file));
            (target.file.to_owned(), validator)
        })
        .collect()
}
