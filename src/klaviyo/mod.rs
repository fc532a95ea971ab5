//! Klaviyo requests and the schemas that every one of them must pass before it leaves.
//!
//! Klaviyo's OpenAPI spec is the truth for every payload. The request-body schemas of the
//! endpoints we use are extracted from it into `schemas/klaviyo/` (see [`extract`]), made strict
//! (a key the spec does not list is rejected, so `uniqueId` for `unique_id` is caught here and
//! not by a silent drop on Klaviyo's side), and compiled into the binary so that a fresh clone
//! validates without the spec beside it. Nothing here talks to the network.

pub mod extract;
pub mod read;

use crate::spec::Lane;
use serde::Serialize;
use serde_json::Value as Json;
use std::sync::{Arc, OnceLock};

/// The Klaviyo endpoints marketsync sends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    CreateEvent,
    CreateOrUpdateProfile,
    BulkSubscribeProfiles,
    BulkCreateEvents,
    BulkImportProfiles,
}

impl Endpoint {
    pub const ALL: [Endpoint; 5] = [
        Endpoint::CreateEvent,
        Endpoint::CreateOrUpdateProfile,
        Endpoint::BulkSubscribeProfiles,
        Endpoint::BulkCreateEvents,
        Endpoint::BulkImportProfiles,
    ];

    pub fn method(self) -> &'static str {
        "POST"
    }

    pub fn path(self) -> &'static str {
        match self {
            Endpoint::CreateEvent => "/api/events",
            Endpoint::CreateOrUpdateProfile => "/api/profile-import",
            Endpoint::BulkSubscribeProfiles => "/api/profile-subscription-bulk-create-jobs",
            Endpoint::BulkCreateEvents => "/api/event-bulk-create-jobs",
            Endpoint::BulkImportProfiles => "/api/profile-bulk-import-jobs",
        }
    }

    /// The schema file in `schemas/klaviyo/`: Klaviyo's operation id, checked against the
    /// spec when the schemas are extracted.
    pub fn schema_file(self) -> &'static str {
        match self {
            Endpoint::CreateEvent => "create_event.json",
            Endpoint::CreateOrUpdateProfile => "create_or_update_profile.json",
            Endpoint::BulkSubscribeProfiles => "bulk_subscribe_profiles.json",
            Endpoint::BulkCreateEvents => "bulk_create_events.json",
            Endpoint::BulkImportProfiles => "bulk_import_profiles.json",
        }
    }

    /// Reads `POST /api/events` (the method may be left out).
    pub fn parse(text: &str) -> Option<Endpoint> {
        let text = text.trim();
        let path = match text.split_once(char::is_whitespace) {
            Some((method, path)) if method.eq_ignore_ascii_case("POST") => path.trim(),
            Some(_) => return None,
            None => text,
        };
        Endpoint::ALL.into_iter().find(|e| e.path() == path)
    }

    fn schema_text(self) -> &'static str {
        SCHEMA_FILES
            .get_file(self.schema_file())
            .and_then(|f| f.contents_utf8())
            .expect("every endpoint's schema is in schemas/klaviyo")
    }
}

/// `schemas/klaviyo/`, compiled in so that validation needs nothing beside the binary.
static SCHEMA_FILES: include_dir::Dir<'static> =
    include_dir::include_dir!("$CARGO_MANIFEST_DIR/schemas/klaviyo");

/// Compiled validators for every endpoint, built once per process.
pub struct Schemas {
    validators: Vec<(Endpoint, jsonschema::Validator)>,
}

impl Schemas {
    /// The schemas compiled into the binary.
    pub fn builtin() -> &'static Schemas {
        static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
        SCHEMAS.get_or_init(|| {
            let validators = Endpoint::ALL
                .into_iter()
                .map(|endpoint| {
                    let schema: Json = serde_json::from_str(endpoint.schema_text())
                        .expect("built-in Klaviyo schemas are valid JSON");
                    let validator = jsonschema::options()
                        .with_draft(jsonschema::Draft::Draft202012)
                        .should_validate_formats(true)
                        .build(&schema)
                        .expect("built-in Klaviyo schemas compile");
                    (endpoint, validator)
                })
                .collect();
            Schemas { validators }
        })
    }

    /// Every way `body` breaks the endpoint's schema, as `pointer: message` lines.
    pub fn check(&self, endpoint: Endpoint, body: &Json) -> Result<(), Vec<String>> {
        let (_, validator) = self
            .validators
            .iter()
            .find(|(e, _)| *e == endpoint)
            .expect("a validator for every endpoint");
        // Nearly every body is valid: asking only that is cheaper than collecting errors.
        if validator.is_valid(body) {
            return Ok(());
        }
        let problems: Vec<String> = validator
            .iter_errors(body)
            .map(|e| {
                let pointer = e.instance_path().to_string();
                let pointer = if pointer.is_empty() {
                    "/".into()
                } else {
                    pointer
                };
                format!("{pointer}: {}", e.masked())
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// A request ready to send (or, in a dry run, to print).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub endpoint: Endpoint,
    pub body: Json,
    /// The mapping that produced it.
    pub mapping: Arc<str>,
    pub lane: Lane,
    /// The delivery it came from.
    pub source: Arc<str>,
    /// Set when the mapping fires once per key: a second request with this key is dropped.
    pub once_key: Option<String>,
    /// Hold until this other request has been accepted.
    pub waits_for: Option<WaitsFor>,
    /// Replaces (or is replaced by) pending requests with the same key, newest version wins.
    pub coalesce: Option<Coalesce>,
}

/// A request that must be accepted before this one is sent: a mapping and its once-per key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitsFor {
    pub mapping: Arc<str>,
    pub key: String,
}

/// Which requests replace each other, and which is newer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coalesce {
    pub key: String,
    pub version: String,
}

/// The dry-run line format, one request per line.
#[derive(Serialize)]
struct RequestLine<'a> {
    method: &'static str,
    path: &'static str,
    body: &'a Json,
    mapping: &'a str,
    lane: &'static str,
    source: &'a str,
}

impl Request {
    /// The event's `unique_id`, the key Klaviyo deduplicates on.
    pub fn unique_id(&self) -> Option<&str> {
        self.body
            .pointer("/data/attributes/unique_id")
            .and_then(Json::as_str)
    }

    /// `{"method", "path", "body", "mapping", "lane", "source"}` as one JSON line, no newline.
    pub fn to_line(&self) -> String {
        serde_json::to_string(&RequestLine {
            method: self.endpoint.method(),
            path: self.endpoint.path(),
            body: &self.body,
            mapping: &self.mapping,
            lane: self.lane.as_str(),
            source: &self.source,
        })
        .expect("a request serialises")
    }
}

/// The people a request body names, as the keys the store notes them under (`email:…`,
/// `phone:…`): the identifiers of every profile resource in it (an event's profile, a profile
/// import, each profile of a subscription or bulk job), in body order, once each. Emails are
/// lowercased as Klaviyo compares them; phone numbers are E.164 as the mappings send them.
pub fn people_in(body: &Json) -> Vec<String> {
    let mut people = Vec::new();
    collect_people(body, &mut people);
    people
}

/// [`people_in`] for a body kept as text; text that is not JSON names nobody.
pub fn people_in_text(body: &str) -> Vec<String> {
    serde_json::from_str(body)
        .map(|body| people_in(&body))
        .unwrap_or_default()
}

/// The key a person is noted under for an email address (already normalised).
pub fn email_key(email: &str) -> String {
    format!("email:{}", email.trim().to_lowercase())
}

/// The key a person is noted under for an E.164 phone number.
pub fn phone_key(phone: &str) -> String {
    format!("phone:{}", phone.trim())
}

fn collect_people(value: &Json, people: &mut Vec<String>) {
    match value {
        Json::Object(map) => {
            if map.get("type").and_then(Json::as_str) == Some("profile")
                && let Some(attributes) = map.get("attributes")
            {
                let text = |name: &str| {
                    attributes
                        .get(name)
                        .and_then(Json::as_str)
                        .map(str::trim)
                        .filter(|v| !v.is_empty())
                };
                let keys = [
                    text("email").map(email_key),
                    text("phone_number").map(phone_key),
                ];
                for key in keys.into_iter().flatten() {
                    if !people.contains(&key) {
                        people.push(key);
                    }
                }
            }
            map.values().for_each(|v| collect_people(v, people));
        }
        Json::Array(items) => items.iter().for_each(|v| collect_people(v, people)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn endpoints_parse_with_or_without_method() {
        assert_eq!(
            Endpoint::parse("POST /api/events"),
            Some(Endpoint::CreateEvent)
        );
        assert_eq!(
            Endpoint::parse("/api/profile-import"),
            Some(Endpoint::CreateOrUpdateProfile)
        );
        assert_eq!(Endpoint::parse("GET /api/events"), None);
        assert_eq!(Endpoint::parse("POST /api/nope"), None);
    }

    fn event(attributes_extra: Json) -> Json {
        let mut body = json!({"data": {"type": "event", "attributes": {
            "properties": {"OrderId": "1"},
            "time": "2026-03-13T23:15:30+00:00",
            "value": 155.3,
            "unique_id": "petmarket:placed-order:5001",
            "metric": {"data": {"type": "metric", "attributes": {"name": "Placed Order"}}},
            "profile": {"data": {"type": "profile", "attributes": {"email": "a@b.co"}}}
        }}});
        for (k, v) in attributes_extra.as_object().unwrap() {
            body["data"]["attributes"][k] = v.clone();
        }
        body
    }

    #[test]
    fn people_are_read_from_every_profile_a_body_names() {
        let event = event(json!({}));
        assert_eq!(people_in(&event), ["email:a@b.co"]);
        let import = json!({"data": {"type": "profile", "attributes": {
            "email": " Zoe@Example.com", "phone_number": "+61412345678"}}});
        assert_eq!(
            people_in(&import),
            ["email:zoe@example.com", "phone:+61412345678"]
        );
        let job = json!({"data": {"type": "profile-subscription-bulk-create-job", "attributes": {
            "profiles": {"data": [
                {"type": "profile", "attributes": {"email": "a@b.co"}},
                {"type": "profile", "attributes": {"email": "c@d.co"}},
                {"type": "profile", "attributes": {"email": "A@B.co"}}]}}}});
        assert_eq!(people_in(&job), ["email:a@b.co", "email:c@d.co"]);
        assert!(people_in_text("not json").is_empty());
        assert!(people_in(&json!({"data": {"type": "event", "attributes": {}}})).is_empty());
    }

    #[test]
    fn a_valid_event_passes() {
        assert_eq!(
            Schemas::builtin().check(Endpoint::CreateEvent, &event(json!({}))),
            Ok(())
        );
    }

    #[test]
    fn an_unlisted_key_is_rejected_with_its_pointer() {
        let problems = Schemas::builtin()
            .check(Endpoint::CreateEvent, &event(json!({"uniqueId": "x"})))
            .unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("/data/attributes: ") && p.contains("uniqueId")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_bad_timestamp_is_rejected() {
        let problems = Schemas::builtin()
            .check(Endpoint::CreateEvent, &event(json!({"time": "yesterday"})))
            .unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("/data/attributes/time")),
            "{problems:?}"
        );
    }
}
