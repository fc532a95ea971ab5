//! Standalone JSON Schemas for the Klaviyo request bodies marketsync sends.
//!
//! Klaviyo's published OpenAPI spec is the source of truth for every payload we
//! send: rather than hand-writing what a body should look like, we take the
//! request-body schema of each endpoint in [`endpoints`] from that spec and
//! validate every rendered body against it before it leaves the machine.
//!
//! OpenAPI 3.0 schemas are not JSON Schema, so they cannot be handed to a JSON
//! Schema validator as they are: `nullable` has no meaning there, `$ref` points
//! into `#/components/schemas`, siblings of `$ref` must be ignored, `readOnly`
//! properties must not be sent, and keys such as `example` or `x-*` are noise.
//! [`extract`] converts each body schema, with the component schemas it
//! reaches, into a self-contained draft 2020-12 document.
//!
//! One rule is added deliberately, beyond what the spec says: every object
//! schema that lists `properties` becomes closed (`additionalProperties:
//! false`). The published schemas leave objects open, so a template that
//! renders `uniqueId` instead of the optional `unique_id` would pass them while
//! the value we meant to send is missing; the strict schema rejects it. Objects
//! that list no properties (event `properties`, profile `properties`) stay open.
//!
//! Where strictness cannot be applied part by part (object schemas that list
//! properties combined with `allOf`, or beside `oneOf`/`anyOf`) extraction fails
//! with [`ExtractError::CombinedObjectSchemas`] instead of producing a schema
//! that rejects everything. None of the current endpoints has such a case.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// One endpoint we send to: its path and the file name its schema is stored under.
pub struct EndpointSchema {
    pub method: &'static str,
    pub path: &'static str,
    /// `<operationId>.json`; checked against the spec.
    pub file: &'static str,
}

/// The endpoints marketsync sends to, as the extractor needs them (one list, in
/// [`super::Endpoint`], so the extracted files and the validators cannot drift apart).
pub fn endpoints() -> Vec<EndpointSchema> {
    super::Endpoint::ALL
        .iter()
        .map(|e| EndpointSchema {
            method: e.method(),
            path: e.path(),
            file: e.schema_file(),
        })
        .collect()
}

/// Name of the file listing revision, source and endpoints.
pub const INDEX_FILE: &str = "index.json";

const CONTENT_TYPE: &str = "application/vnd.api+json";
const COMPONENTS: &str = "#/components/schemas/";
const DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";
const ID_BASE: &str = "https://marketsync.invalid/klaviyo/";

/// Keywords meaning the same in OpenAPI 3.0 and JSON Schema 2020-12, copied as they are.
const COPIED: &[&str] = &[
    "description",
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

/// OpenAPI-only keywords (besides `x-*`) that are dropped; `nullable` and
/// `readOnly` are acted on before being dropped.
const DROPPED: &[&str] = &[
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

/// Keywords that can reject `null` whatever `type` says: a nullable schema using
/// one is wrapped in `anyOf` with `{"type": "null"}` instead of extending `type`.
const COMPOSITE: &[&str] = &["$ref", "oneOf", "anyOf", "allOf", "not"];

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("the OpenAPI document is not valid JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("the OpenAPI document has no string `info.version` (the Klaviyo API revision)")]
    MissingRevision,
    /// `endpoint` is method and path, e.g. `POST /api/events`.
    #[error("the OpenAPI document has no operation {endpoint}")]
    MissingOperation { endpoint: String },
    #[error("{endpoint} has no `operationId`")]
    MissingOperationId { endpoint: String },
    #[error(
        "{endpoint} has operationId `{operation_id}`, but its schema file is `{file}` \
         (expected `{operation_id}.json`)"
    )]
    OperationIdMismatch {
        endpoint: String,
        operation_id: String,
        file: String,
    },
    #[error("{endpoint} has no request body schema for content type `{CONTENT_TYPE}`")]
    MissingRequestBody { endpoint: String },
    #[error("{endpoint} has no `x-klaviyo-ratelimit` with string `burst` and `steady`")]
    MissingRateLimit { endpoint: String },
    #[error("dangling $ref `{reference}` at {at}: no such schema in #/components/schemas")]
    DanglingRef { reference: String, at: String },
    #[error("$ref {reference} at {at} is not of the form `#/components/schemas/NAME`")]
    UnsupportedRef { reference: String, at: String },
    #[error("{at} is not a schema object")]
    NotASchema { at: String },
    #[error("unsupported OpenAPI keyword `{keyword}` at {at}: the converter does not translate it")]
    UnsupportedKeyword { keyword: String, at: String },
    #[error(
        "{at} combines object schemas that each list `properties` (allOf, or properties beside \
         oneOf/anyOf); closing them part by part would reject every body, so the converter \
         needs to merge them"
    )]
    CombinedObjectSchemas { at: String },
}

/// Converts the request-body schema of every endpoint in [`endpoints`] into a
/// standalone JSON Schema (draft 2020-12) document.
///
/// `source_label` is how the OpenAPI file is named in the provenance (e.g.
/// `"shared/reference/klaviyo/openapi-stable.json"`), `openapi_bytes` its raw
/// bytes (for sha256). Returns `(file name, document)` pairs: one per endpoint,
/// in [`endpoints`] order, then [`INDEX_FILE`]. Write them with [`render`].
pub fn extract(
    openapi_bytes: &[u8],
    source_label: &str,
) -> Result<Vec<(String, Value)>, ExtractError> {
    extract_endpoints(openapi_bytes, source_label, &endpoints())
}

/// The file contents for a document: pretty-printed JSON with a trailing newline.
pub fn render(document: &Value) -> String {
    let mut text = serde_json::to_string_pretty(document).expect("a JSON value always serializes");
    text.push('\n');
    text
}

fn extract_endpoints(
    openapi_bytes: &[u8],
    source_label: &str,
    endpoints: &[EndpointSchema],
) -> Result<Vec<(String, Value)>, ExtractError> {
    let spec: Value = serde_json::from_slice(openapi_bytes)?;
    let revision = spec
        .pointer("/info/version")
        .and_then(Value::as_str)
        .ok_or(ExtractError::MissingRevision)?;
    let sha256 = hex::encode(Sha256::digest(openapi_bytes));
    let no_components = Map::new();
    let components = spec
        .pointer("/components/schemas")
        .and_then(Value::as_object)
        .unwrap_or(&no_components);

    let mut files = Vec::new();
    let mut index_endpoints = Vec::new();
    for endpoint in endpoints {
        let name = || format!("{} {}", endpoint.method, endpoint.path);
        let operation_pointer = format!(
            "/paths/{}/{}",
            escape(endpoint.path),
            endpoint.method.to_ascii_lowercase()
        );
        let operation = spec
            .pointer(&operation_pointer)
            .ok_or_else(|| ExtractError::MissingOperation { endpoint: name() })?;
        let operation_id = operation
            .get("operationId")
            .and_then(Value::as_str)
            .ok_or_else(|| ExtractError::MissingOperationId { endpoint: name() })?;
        if endpoint.file.strip_suffix(".json") != Some(operation_id) {
            return Err(ExtractError::OperationIdMismatch {
                endpoint: name(),
                operation_id: operation_id.to_string(),
                file: endpoint.file.to_string(),
            });
        }
        let schema_pointer = format!(
            "{operation_pointer}/requestBody/content/{}/schema",
            escape(CONTENT_TYPE)
        );
        let body_schema = spec
            .pointer(&schema_pointer)
            .ok_or_else(|| ExtractError::MissingRequestBody { endpoint: name() })?;
        let rate_limit = rate_limit(operation)
            .ok_or_else(|| ExtractError::MissingRateLimit { endpoint: name() })?;

        let openapi_path = format!("#{schema_pointer}");
        let mut converter = Converter {
            components,
            defs: BTreeMap::new(),
            pending: Vec::new(),
        };
        let root = converter.convert(body_schema, &openapi_path)?;
        let defs = converter.finish()?;

        let mut document = Map::new();
        document.insert("$schema".into(), DIALECT.into());
        document.insert("$id".into(), format!("{ID_BASE}{}", endpoint.file).into());
        document.insert(
            "title".into(),
            format!("{operation_id} request body").into(),
        );
        document.insert(
            "x-provenance".into(),
            json!({
                "revision": revision,
                "source": source_label,
                "sha256": sha256,
                "openapi_path": openapi_path,
            }),
        );
        for (keyword, value) in root {
            document.entry(keyword).or_insert(value);
        }
        document.insert("$defs".into(), Value::Object(defs.into_iter().collect()));
        files.push((endpoint.file.to_string(), Value::Object(document)));

        index_endpoints.push(json!({
            "method": endpoint.method,
            "path": endpoint.path,
            "operation_id": operation_id,
            "file": endpoint.file,
            "rate_limit": rate_limit,
        }));
    }
    files.push((
        INDEX_FILE.to_string(),
        json!({
            "revision": revision,
            "source": source_label,
            "sha256": sha256,
            "endpoints": index_endpoints,
        }),
    ));
    Ok(files)
}

/// `{"burst", "steady"}` from the operation's `x-klaviyo-ratelimit`.
fn rate_limit(operation: &Value) -> Option<Value> {
    let limit = operation.get("x-klaviyo-ratelimit")?;
    let burst = limit.get("burst")?.as_str()?;
    let steady = limit.get("steady")?.as_str()?;
    Some(json!({ "burst": burst, "steady": steady }))
}

/// Converts the schemas of one document, collecting the components they reference.
struct Converter<'a> {
    components: &'a Map<String, Value>,
    /// Converted component schemas by name; a `BTreeMap` so `$defs` comes out sorted.
    defs: BTreeMap<String, Value>,
    /// Referenced component names, possibly not converted yet.
    pending: Vec<String>,
}

impl Converter<'_> {
    /// Converts every component schema reached from what was converted so far.
    fn finish(mut self) -> Result<BTreeMap<String, Value>, ExtractError> {
        let components = self.components;
        while let Some(name) = self.pending.pop() {
            if self.defs.contains_key(&name) {
                continue;
            }
            let at = format!("{COMPONENTS}{}", escape(&name));
            let converted = self.convert(&components[&name], &at)?;
            self.defs.insert(name, Value::Object(converted));
        }
        Ok(self.defs)
    }

    /// Converts one schema; `at` is its JSON pointer in the OpenAPI document, for errors.
    fn convert(&mut self, schema: &Value, at: &str) -> Result<Map<String, Value>, ExtractError> {
        let source = schema
            .as_object()
            .ok_or_else(|| ExtractError::NotASchema { at: at.to_string() })?;
        let mut out = Map::new();
        if let Some(reference) = source.get("$ref") {
            // OpenAPI 3.0 ignores everything beside `$ref`; the description still helps readers.
            out.insert("$ref".into(), self.reference(reference, at)?);
            if let Some(description) = source.get("description") {
                out.insert("description".into(), description.clone());
            }
        } else {
            self.check_composition(source, at)?;
            let mut read_only = Vec::new();
            for (keyword, value) in source {
                let here = child(at, keyword);
                let converted = match keyword.as_str() {
                    "properties" => {
                        let (properties, removed) = self.properties(value, &here)?;
                        read_only = removed;
                        Value::Object(properties)
                    }
                    "items" | "not" => Value::Object(self.convert(value, &here)?),
                    "additionalProperties" if value.is_boolean() => value.clone(),
                    "additionalProperties" => Value::Object(self.convert(value, &here)?),
                    "oneOf" | "anyOf" | "allOf" => self.convert_list(value, &here)?,
                    k if COPIED.contains(&k) => value.clone(),
                    k if DROPPED.contains(&k) || k.starts_with("x-") => continue,
                    _ => {
                        return Err(ExtractError::UnsupportedKeyword {
                            keyword: keyword.clone(),
                            at: at.to_string(),
                        });
                    }
                };
                out.insert(keyword.clone(), converted);
            }
            if let Some(Value::Array(required)) = out.get_mut("required") {
                required.retain(|name| {
                    !name
                        .as_str()
                        .is_some_and(|n| read_only.iter().any(|r| r == n))
                });
                if required.is_empty() {
                    out.remove("required");
                }
            }
            if out.contains_key("properties") && !out.contains_key("additionalProperties") {
                out.insert("additionalProperties".into(), false.into());
            }
        }
        if source.get("nullable") == Some(&Value::Bool(true)) {
            out = allow_null(out);
        }
        Ok(out)
    }

    /// Converts a `properties` map (keys are property names, never keywords),
    /// leaving out `readOnly` properties, whose names are returned.
    fn properties(
        &mut self,
        value: &Value,
        at: &str,
    ) -> Result<(Map<String, Value>, Vec<String>), ExtractError> {
        let source = value
            .as_object()
            .ok_or_else(|| ExtractError::NotASchema { at: at.to_string() })?;
        let mut out = Map::new();
        let mut read_only = Vec::new();
        for (name, schema) in source {
            if schema.get("readOnly") == Some(&Value::Bool(true)) {
                read_only.push(name.clone());
            } else {
                let converted = self.convert(schema, &child(at, name))?;
                out.insert(name.clone(), Value::Object(converted));
            }
        }
        Ok((out, read_only))
    }

    /// Converts the schema list of `oneOf`/`anyOf`/`allOf`.
    fn convert_list(&mut self, value: &Value, at: &str) -> Result<Value, ExtractError> {
        let parts = value
            .as_array()
            .ok_or_else(|| ExtractError::NotASchema { at: at.to_string() })?;
        let mut out = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            out.push(Value::Object(self.convert(part, &format!("{at}/{i}"))?));
        }
        Ok(Value::Array(out))
    }

    /// `#/components/schemas/X` -> `#/$defs/X`, remembering X for conversion.
    fn reference(&mut self, reference: &Value, at: &str) -> Result<Value, ExtractError> {
        let unsupported = || ExtractError::UnsupportedRef {
            reference: reference.to_string(),
            at: at.to_string(),
        };
        let text = reference.as_str().ok_or_else(unsupported)?;
        let escaped = text
            .strip_prefix(COMPONENTS)
            .filter(|name| !name.contains('/'))
            .ok_or_else(unsupported)?;
        let name = unescape(escaped);
        if !self.components.contains_key(&name) {
            return Err(ExtractError::DanglingRef {
                reference: text.to_string(),
                at: at.to_string(),
            });
        }
        self.pending.push(name);
        Ok(format!("#/$defs/{escaped}").into())
    }

    /// Fails where closing object schemas one by one would reject every body.
    fn check_composition(&self, source: &Map<String, Value>, at: &str) -> Result<(), ExtractError> {
        let parts = |keyword: &str| {
            source
                .get(keyword)
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
        };
        let own = source.contains_key("properties");
        let all_of = parts("allOf")
            .iter()
            .filter(|part| self.lists_properties(part))
            .count();
        let alternatives = parts("oneOf")
            .iter()
            .chain(parts("anyOf"))
            .any(|part| self.lists_properties(part));
        if usize::from(own) + all_of >= 2 || (own && alternatives) {
            return Err(ExtractError::CombinedObjectSchemas { at: at.to_string() });
        }
        Ok(())
    }

    /// Whether a schema, or the component its `$ref` names, lists `properties`.
    fn lists_properties(&self, schema: &Value) -> bool {
        let target = match schema.get("$ref").and_then(Value::as_str) {
            Some(reference) => reference
                .strip_prefix(COMPONENTS)
                .and_then(|name| self.components.get(&unescape(name))),
            None => Some(schema),
        };
        target.is_some_and(|schema| schema.get("properties").is_some())
    }
}

/// Makes a converted schema also accept `null` (OpenAPI `nullable: true`).
fn allow_null(mut schema: Map<String, Value>) -> Map<String, Value> {
    if COMPOSITE
        .iter()
        .any(|keyword| schema.contains_key(*keyword))
    {
        let mut wrapper = Map::new();
        wrapper.insert(
            "anyOf".into(),
            json!([Value::Object(schema), { "type": "null" }]),
        );
        return wrapper;
    }
    let null_type = Value::from("null");
    match schema.get_mut("type") {
        Some(single @ Value::String(_)) => *single = Value::Array(vec![single.take(), null_type]),
        Some(Value::Array(types)) if !types.contains(&null_type) => types.push(null_type),
        _ => {}
    }
    if let Some(Value::Array(values)) = schema.get_mut("enum")
        && !values.contains(&Value::Null)
    {
        values.push(Value::Null);
    }
    schema
}

/// `at` extended by one JSON pointer segment.
fn child(at: &str, segment: &str) -> String {
    format!("{at}/{}", escape(segment))
}

/// Escapes a JSON pointer segment (RFC 6901).
fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn unescape(segment: &str) -> String {
    segment.replace("~1", "/").replace("~0", "~")
}

#[cfg(test)]
mod tests {
    use std::{path::Path, sync::OnceLock};

    use jsonschema::{Draft, ValidationError, Validator, error::ValidationErrorKind};

    use super::*;

    const SPEC: &str = "shared/reference/klaviyo/openapi-stable.json";

    /// The real spec, found in the nearest ancestor of the crate that has `shared/` beside
    /// it; `None` on a clone without `shared/`, where the committed schemas stand in.
    fn spec_bytes() -> Option<&'static [u8]> {
        static BYTES: OnceLock<Option<Vec<u8>>> = OnceLock::new();
        BYTES
            .get_or_init(|| {
                let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
                let path = manifest
                    .ancestors()
                    .map(|dir| dir.join(SPEC))
                    .find(|path| path.is_file())?;
                Some(std::fs::read(path).expect("spec readable"))
            })
            .as_deref()
    }

    /// The files as committed in `schemas/klaviyo/`.
    fn committed() -> Vec<(String, Value)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/klaviyo");
        endpoints()
            .iter()
            .map(|e| e.file)
            .chain([INDEX_FILE])
            .map(|file| {
                let text = std::fs::read_to_string(dir.join(file)).expect("committed schema");
                (
                    file.to_owned(),
                    serde_json::from_str(&text).expect("committed JSON"),
                )
            })
            .collect()
    }

    /// Extracted from the real spec when it is there, else the committed files.
    fn extracted() -> &'static [(String, Value)] {
        static FILES: OnceLock<Vec<(String, Value)>> = OnceLock::new();
        FILES.get_or_init(|| match spec_bytes() {
            Some(bytes) => extract(bytes, SPEC).expect("extraction succeeds"),
            None => committed(),
        })
    }

    #[test]
    fn committed_schemas_are_what_the_spec_gives() {
        let Some(bytes) = spec_bytes() else {
            eprintln!("{SPEC} not found: comparison with the committed schemas skipped");
            return;
        };
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/klaviyo");
        for (file, document) in extract(bytes, SPEC).unwrap() {
            let committed = std::fs::read_to_string(dir.join(&file)).unwrap();
            assert!(
                committed == render(&document),
                "schemas/klaviyo/{file} is stale: run `marketsync schemas extract --openapi ../{SPEC} --label {SPEC}`"
            );
        }
    }

    fn document(file: &str) -> &'static Value {
        let found = extracted().iter().find(|(name, _)| name == file);
        &found.unwrap_or_else(|| panic!("no {file}")).1
    }

    fn compile(document: &Value) -> Validator {
        jsonschema::options()
            .with_draft(Draft::Draft202012)
            .should_validate_formats(true)
            .build(document)
            .unwrap_or_else(|error| panic!("schema does not compile: {error}"))
    }

    fn assert_valid(validator: &Validator, body: &Value) {
        let errors: Vec<String> = validator.iter_errors(body).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "expected valid, got {errors:#?}");
    }

    /// The messages of an error and, for `anyOf`/`oneOf`, of every branch's errors.
    fn messages(error: &ValidationError<'_>, out: &mut Vec<String>) {
        out.push(error.to_string());
        if let ValidationErrorKind::AnyOf { context }
        | ValidationErrorKind::OneOfNotValid { context } = error.kind()
        {
            context
                .iter()
                .flatten()
                .for_each(|inner| messages(inner, out));
        }
    }

    /// Rejected, and for the expected reason: some error message contains `needle`.
    fn assert_rejected(validator: &Validator, body: &Value, needle: &str) {
        let mut errors = Vec::new();
        validator
            .iter_errors(body)
            .for_each(|error| messages(&error, &mut errors));
        assert!(
            errors.iter().any(|error| error.contains(needle)),
            "expected an error containing {needle:?}, got {errors:#?}"
        );
    }

    fn event_body() -> Value {
        json!({"data": {"type": "event", "attributes": {
            "properties": {"OrderId": "1"},
            "time": "2024-03-01T10:00:00+00:00",
            "value": 12.5,
            "value_currency": "AUD",
            "unique_id": "m:placed-order:1",
            "metric": {"data": {"type": "metric", "attributes": {"name": "Placed Order"}}},
            "profile": {"data": {"type": "profile", "attributes": {"email": "a@b.co", "first_name": "A"}}}
        }}})
    }

    fn attributes(body: &mut Value) -> &mut Map<String, Value> {
        body.pointer_mut("/data/attributes")
            .and_then(Value::as_object_mut)
            .expect("body has data.attributes")
    }

    #[test]
    fn files_and_index_match_endpoints() {
        let names: Vec<&str> = extracted().iter().map(|(name, _)| name.as_str()).collect();
        let mut expected: Vec<&str> = endpoints().iter().map(|e| e.file).collect();
        expected.push(INDEX_FILE);
        assert_eq!(names, expected);

        let index = document(INDEX_FILE);
        let sha256 = match spec_bytes() {
            Some(bytes) => hex::encode(Sha256::digest(bytes)),
            None => index["sha256"].as_str().unwrap().to_owned(),
        };
        assert_eq!(index["revision"], "2026-07-15");
        assert_eq!(index["source"], SPEC);
        assert_eq!(index["sha256"], sha256.as_str());
        assert_eq!(
            index["endpoints"][0],
            json!({"method": "POST", "path": "/api/events", "operation_id": "create_event",
                   "file": "create_event.json", "rate_limit": {"burst": "350/s", "steady": "3500/m"}})
        );
        for (endpoint, entry) in endpoints()
            .iter()
            .zip(index["endpoints"].as_array().unwrap())
        {
            assert_eq!(entry["path"], endpoint.path);
            assert_eq!(
                format!("{}.json", entry["operation_id"].as_str().unwrap()),
                endpoint.file
            );
            let doc = document(endpoint.file);
            assert_eq!(doc["x-provenance"]["sha256"], sha256.as_str());
            assert_eq!(doc["x-provenance"]["revision"], "2026-07-15");
            assert_eq!(
                doc["$id"],
                format!("https://marketsync.invalid/klaviyo/{}", endpoint.file)
            );
        }
        assert_eq!(
            document("create_event.json")["x-provenance"]["openapi_path"],
            "#/paths/~1api~1events/post/requestBody/content/application~1vnd.api+json/schema"
        );
    }

    #[test]
    fn every_document_compiles_and_is_self_contained() {
        for endpoint in &endpoints() {
            let doc = document(endpoint.file);
            compile(doc);
            let text = render(doc);
            assert!(
                !text.contains("#/components/"),
                "{} refers into the OpenAPI file",
                endpoint.file
            );
            for keyword in ["\"nullable\"", "\"example\"", "\"readOnly\"", "\"x-klaviyo"] {
                assert!(
                    !text.contains(keyword),
                    "{} still has {keyword}",
                    endpoint.file
                );
            }
            let defs: Vec<&String> = doc["$defs"].as_object().unwrap().keys().collect();
            assert!(defs.is_sorted(), "{} $defs not sorted", endpoint.file);
        }
    }

    #[test]
    fn event_body_validates_and_mistakes_are_rejected() {
        let validator = compile(document("create_event.json"));
        assert_valid(&validator, &event_body());

        let mut renamed = event_body();
        let unique_id = attributes(&mut renamed).remove("unique_id").unwrap();
        attributes(&mut renamed).insert("uniqueId".into(), unique_id);
        assert_rejected(&validator, &renamed, "'uniqueId' was unexpected");

        let mut plural_type = event_body();
        plural_type["data"]["type"] = json!("events");
        assert_rejected(
            &validator,
            &plural_type,
            "\"events\" is not one of \"event\"",
        );

        let mut no_metric = event_body();
        attributes(&mut no_metric).remove("metric");
        assert_rejected(&validator, &no_metric, "\"metric\" is a required property");

        let mut bad_time = event_body();
        attributes(&mut bad_time).insert("time".into(), json!("yesterday"));
        assert_rejected(
            &validator,
            &bad_time,
            "\"yesterday\" is not a \"date-time\"",
        );

        let mut no_profile = event_body();
        attributes(&mut no_profile).remove("profile");
        assert_rejected(
            &validator,
            &no_profile,
            "\"profile\" is a required property",
        );

        let mut nulls = event_body();
        for key in ["time", "value", "value_currency", "unique_id"] {
            attributes(&mut nulls).insert(key.into(), Value::Null);
        }
        assert_valid(&validator, &nulls);
    }

    #[test]
    fn profile_import_body() {
        let validator = compile(document("create_or_update_profile.json"));
        let body = |location: Value, phone: Value| {
            json!({"data": {"type": "profile", "attributes": {
                "email": "a@b.co",
                "phone_number": phone,
                "location": location,
                "properties": {"anything": {"nested": [1, "two"]}, "LTV": 12}
            }}})
        };
        let location = json!({"city": "Perth", "region": "WA", "zip": "6000",
                              "country": "Australia", "address1": "1 Hay St"});
        assert_valid(&validator, &body(location.clone(), json!("+61400000000")));
        assert_valid(&validator, &body(location.clone(), Value::Null));
        assert_valid(&validator, &body(Value::Null, Value::Null));
        assert_rejected(
            &validator,
            &body(json!({"postcode": "6000"}), Value::Null),
            "'postcode' was unexpected",
        );
        assert_rejected(
            &validator,
            &body(location, json!(61400000000_u64)),
            "61400000000 is not of types",
        );
    }

    fn subscription_body() -> Value {
        json!({"data": {"type": "profile-subscription-bulk-create-job", "attributes": {
            "profiles": {"data": [{"type": "profile", "attributes": {
                "email": "a@b.co",
                "subscriptions": {"email": {"marketing": {
                    "consent": "SUBSCRIBED", "consented_at": "2024-03-01T10:00:00+00:00"}}}
            }}]},
            "historical_import": true
        }}})
    }

    #[test]
    fn subscription_body_validates() {
        let validator = compile(document("bulk_subscribe_profiles.json"));
        assert_valid(&validator, &subscription_body());

        let mut with_list = subscription_body();
        attributes(&mut with_list).insert("custom_source".into(), json!("Checkout"));
        with_list["data"]["relationships"] =
            json!({"list": {"data": {"type": "list", "id": "Y6nRLr"}}});
        assert_valid(&validator, &with_list);

        let mut unsubscribed = subscription_body();
        let consent =
            "/data/attributes/profiles/data/0/attributes/subscriptions/email/marketing/consent";
        *unsubscribed.pointer_mut(consent).unwrap() = json!("UNSUBSCRIBED");
        assert_rejected(
            &validator,
            &unsubscribed,
            "\"UNSUBSCRIBED\" is not one of \"SUBSCRIBED\"",
        );

        let mut no_subscriptions = subscription_body();
        let profile = no_subscriptions.pointer_mut("/data/attributes/profiles/data/0/attributes");
        profile
            .unwrap()
            .as_object_mut()
            .unwrap()
            .remove("subscriptions");
        assert_rejected(
            &validator,
            &no_subscriptions,
            "\"subscriptions\" is a required property",
        );

        let mut lists = subscription_body();
        lists["data"]["relationships"] =
            json!({"lists": {"data": [{"type": "list", "id": "Y6nRLr"}]}});
        assert_rejected(&validator, &lists, "'lists' was unexpected");
    }

    #[test]
    fn bulk_bodies_validate() {
        let events = compile(document("bulk_create_events.json"));
        let profile = json!({"data": {"type": "profile", "attributes": {"email": "a@b.co"}}});
        let metric = json!({"data": {"type": "metric", "attributes": {"name": "Placed Order"}}});
        let body = json!({"data": {"type": "event-bulk-create-job", "attributes": {
            "events-bulk-create": {"data": [{"type": "event-bulk-create", "attributes": {
                "profile": profile,
                "events": {"data": [{"type": "event", "attributes": {
                    "properties": {"OrderId": "1"}, "metric": metric, "unique_id": "1"}}]}
            }}]}
        }}});
        assert_valid(&events, &body);
        let mut nested_profile = body.clone();
        let event =
            "/data/attributes/events-bulk-create/data/0/attributes/events/data/0/attributes";
        let event = nested_profile
            .pointer_mut(event)
            .unwrap()
            .as_object_mut()
            .unwrap();
        event.insert("profile".into(), profile.clone());
        assert_rejected(&events, &nested_profile, "'profile' was unexpected");

        let import = compile(document("bulk_import_profiles.json"));
        let body = json!({"data": {"type": "profile-bulk-import-job",
            "attributes": {"profiles": {"data": [{"type": "profile", "attributes": {"email": "a@b.co"}}]}},
            "relationships": {"lists": {"data": [{"type": "list", "id": "Y6nRLr"}]}}}});
        assert_valid(&import, &body);
    }

    #[test]
    fn output_is_deterministic() {
        let fixture = fixture_with(fixture_components());
        let render_all = || -> Vec<(String, String)> {
            let files = match spec_bytes() {
                Some(bytes) => extract(bytes, SPEC).unwrap(),
                None => extract_endpoints(&fixture, "fixture.json", FIXTURE).unwrap(),
            };
            files
                .iter()
                .map(|(name, doc)| (name.clone(), render(doc)))
                .collect()
        };
        let first = render_all();
        assert_eq!(first, render_all());
        assert!(first.iter().all(|(_, text)| text.ends_with("}\n")));
    }

    // ---- hand-written fixture exercising each conversion rule ----

    const FIXTURE: &[EndpointSchema] = &[EndpointSchema {
        method: "POST",
        path: "/api/fixture",
        file: "fixture_op.json",
    }];

    fn fixture_with(components: Value) -> Vec<u8> {
        let spec = json!({
            "openapi": "3.0.2",
            "info": {"title": "fixture", "version": "2000-01-01"},
            "paths": {"/api/fixture": {"post": {
                "operationId": "fixture_op",
                "x-klaviyo-ratelimit": {"burst": "1/s", "steady": "10/m"},
                "requestBody": {"content": {"application/vnd.api+json": {
                    "schema": {"$ref": "#/components/schemas/Root"}}}}
            }}},
            "components": {"schemas": components}
        });
        serde_json::to_vec(&spec).unwrap()
    }

    fn fixture_components() -> Value {
        json!({
            "Root": {
                "type": "object",
                "description": "root",
                "example": {"type": "thing"},
                "x-internal": true,
                "discriminator": {"propertyName": "type"},
                "externalDocs": {"url": "https://example.invalid"},
                "properties": {
                    "properties": {"type": "object", "description": "open", "example": {"a": 1}},
                    "type": {"$ref": "#/components/schemas/KindEnum", "description": "kind",
                             "example": "thing", "deprecated": true, "type": "integer"},
                    "example": {"type": "string", "nullable": true, "enum": ["a", "b"]},
                    "x-named-like-an-extension": {"type": "integer", "minimum": 0},
                    "id": {"type": "string", "readOnly": true},
                    "secret": {"type": "string", "writeOnly": true, "nullable": false},
                    "nested": {"$ref": "#/components/schemas/Nested", "nullable": true},
                    "choice": {"oneOf": [{"type": "string"}, {"type": "number"}], "nullable": true},
                    "labels": {"type": "object",
                               "additionalProperties": {"type": "string", "nullable": true, "x-a": 1}},
                    "open": {"type": "object", "properties": {"a": {"type": "string"}},
                             "additionalProperties": true},
                    "list": {"type": "array", "items": {"$ref": "#/components/schemas/Nested"},
                             "minItems": 1, "xml": {"wrapped": true}}
                },
                "required": ["type", "id", "properties"]
            },
            "KindEnum": {"type": "string", "enum": ["thing"]},
            "Nested": {"type": "object", "properties": {
                "properties": {"type": "object", "properties": {"color": {"type": "string"}}}}},
            "Unused": {"type": "string"}
        })
    }

    fn fixture_document() -> Value {
        let files = extract_endpoints(&fixture_with(fixture_components()), "fixture.json", FIXTURE)
            .expect("fixture extracts");
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].0, "fixture_op.json");
        files.into_iter().next().unwrap().1
    }

    #[test]
    fn fixture_conversion_rules() {
        let doc = fixture_document();
        let keys: Vec<&str> = doc
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            ["$schema", "$id", "title", "x-provenance", "$ref", "$defs"]
        );
        assert_eq!(doc["title"], "fixture_op request body");
        assert_eq!(doc["$ref"], "#/$defs/Root");
        assert_eq!(
            doc["x-provenance"]["openapi_path"],
            "#/paths/~1api~1fixture/post/requestBody/content/application~1vnd.api+json/schema"
        );
        let defs: Vec<&str> = doc["$defs"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            defs,
            ["KindEnum", "Nested", "Root"],
            "only reachable components, sorted"
        );

        assert_eq!(
            doc["$defs"]["Root"],
            json!({
                "type": "object",
                "description": "root",
                "properties": {
                    "properties": {"type": "object", "description": "open"},
                    "type": {"$ref": "#/$defs/KindEnum", "description": "kind"},
                    "example": {"type": ["string", "null"], "enum": ["a", "b", null]},
                    "x-named-like-an-extension": {"type": "integer", "minimum": 0},
                    "secret": {"type": "string"},
                    "nested": {"anyOf": [{"$ref": "#/$defs/Nested"}, {"type": "null"}]},
                    "choice": {"anyOf": [
                        {"oneOf": [{"type": "string"}, {"type": "number"}]}, {"type": "null"}]},
                    "labels": {"type": "object", "additionalProperties": {"type": ["string", "null"]}},
                    "open": {"type": "object", "properties": {"a": {"type": "string"}},
                             "additionalProperties": true},
                    "list": {"type": "array", "items": {"$ref": "#/$defs/Nested"}, "minItems": 1}
                },
                "required": ["type", "properties"],
                "additionalProperties": false
            })
        );
        assert_eq!(
            doc["$defs"]["Nested"],
            json!({"type": "object", "properties": {"properties": {"type": "object",
                "properties": {"color": {"type": "string"}}, "additionalProperties": false}},
                "additionalProperties": false})
        );
    }

    #[test]
    fn fixture_schema_behaves() {
        let validator = compile(&fixture_document());
        let base = json!({"type": "thing", "properties": {"anything": [1, {"x": null}]}});
        assert_valid(&validator, &base);
        let with = |key: &str, value: Value| {
            let mut body = base.clone();
            body[key] = value;
            body
        };
        assert_valid(&validator, &with("nested", Value::Null));
        assert_valid(
            &validator,
            &with("nested", json!({"properties": {"color": "red"}})),
        );
        assert_rejected(
            &validator,
            &with("nested", json!({"properties": {"colour": "red"}})),
            "'colour' was unexpected",
        );
        assert_rejected(&validator, &with("id", json!("x")), "'id' was unexpected");
        assert_valid(&validator, &with("example", Value::Null));
        assert_rejected(
            &validator,
            &with("example", json!("c")),
            "\"c\" is not one of",
        );
        assert_valid(&validator, &with("choice", json!(1.5)));
        assert_valid(&validator, &with("choice", Value::Null));
        assert_valid(&validator, &with("labels", json!({"a": "b", "c": null})));
        assert_rejected(
            &validator,
            &with("labels", json!({"a": 1})),
            "1 is not of types \"null\", \"string\"",
        );
        assert_valid(&validator, &with("open", json!({"a": "b", "extra": 1})));
        assert_rejected(
            &validator,
            &with("type", json!("other")),
            "\"other\" is not one of \"thing\"",
        );
        assert_rejected(
            &validator,
            &json!({"type": "thing"}),
            "\"properties\" is a required property",
        );
    }

    fn fixture_error(components: Value) -> ExtractError {
        match extract_endpoints(&fixture_with(components), "fixture.json", FIXTURE) {
            Ok(_) => panic!("expected an error"),
            Err(error) => error,
        }
    }

    #[test]
    fn fixture_dangling_ref_is_named() {
        let mut components = fixture_components();
        components["Nested"]["properties"]["broken"] =
            json!({"$ref": "#/components/schemas/Missing"});
        let error = fixture_error(components);
        assert_eq!(
            error.to_string(),
            "dangling $ref `#/components/schemas/Missing` at \
             #/components/schemas/Nested/properties/broken: no such schema in #/components/schemas"
        );
        assert!(matches!(error, ExtractError::DanglingRef { .. }));
    }

    #[test]
    fn fixture_errors() {
        let not_json = extract_endpoints(b"{", "x", FIXTURE).unwrap_err();
        assert!(matches!(not_json, ExtractError::NotJson(_)), "{not_json}");

        let missing_path = extract(&fixture_with(fixture_components()), "x").unwrap_err();
        assert_eq!(
            missing_path.to_string(),
            "the OpenAPI document has no operation POST /api/events"
        );

        let mut spec: Value = serde_json::from_slice(&fixture_with(fixture_components())).unwrap();
        let operation = spec.pointer_mut("/paths/~1api~1fixture/post").unwrap();
        operation.as_object_mut().unwrap().remove("requestBody");
        let no_body =
            extract_endpoints(&serde_json::to_vec(&spec).unwrap(), "x", FIXTURE).unwrap_err();
        assert!(
            matches!(no_body, ExtractError::MissingRequestBody { .. }),
            "{no_body}"
        );

        let renamed = [EndpointSchema {
            method: "POST",
            path: "/api/fixture",
            file: "other.json",
        }];
        let mismatch =
            extract_endpoints(&fixture_with(fixture_components()), "x", &renamed).unwrap_err();
        assert!(
            matches!(mismatch, ExtractError::OperationIdMismatch { .. }),
            "{mismatch}"
        );

        let mut components = fixture_components();
        components["KindEnum"]["exclusiveMinimum"] = json!(true);
        let keyword = fixture_error(components);
        assert!(
            matches!(keyword, ExtractError::UnsupportedKeyword { .. }),
            "{keyword}"
        );

        let mut components = fixture_components();
        components["Root"]["allOf"] = json!([{"$ref": "#/components/schemas/Nested"}]);
        let combined = fixture_error(components);
        assert!(
            matches!(combined, ExtractError::CombinedObjectSchemas { .. }),
            "{combined}"
        );
    }
}
