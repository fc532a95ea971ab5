//! `GET /api/events` (`get_events`): the events the stand-in recorded, by metric, profile and
//! time window, sorted by `datetime` or `timestamp`, with their profile and metric included on
//! request, in cursor pages.
//!
//! Unverified, and simplified on purpose (notes/reconciliation.md §2 and §9):
//! - `event_properties` are the `properties` as sent, plus `$value` (the `value` sent) and
//!   `$value_currency` (when sent). The spec types `event_properties` as an open object and
//!   says nothing of where `value` goes; that it comes back as `$value` rests on legacy-API
//!   remarks and third-party mocks. `unique_id` is **not** echoed (no `$event_id`): the spec
//!   has no `unique_id` on the read side, so a reader must match on a property it sent.
//! - A page holds at most 200 events whatever `page[size]` asks for (the spec allows up to
//!   1000; its description says "Returns a maximum of 200 events per page").
//! - `include=attributions` includes nothing: the stand-in sends no campaigns or flows.
//! - `uuid` is derived from the event's id; `datetime` is to the second, in UTC.

use super::super::errors::{ApiError, Reply};
use super::super::filter::{Condition, Field, Kind, Literal, Op};
use super::super::store::{AcceptedEvent, Store};
use super::{Query, filter, known_parameters, links, list, page_size, relationship, sort, sparse};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value as Json, json};

const PARAMETERS: &[&str] = &[
    "fields[attribution]",
    "fields[event]",
    "fields[metric]",
    "fields[profile]",
    "filter",
    "include",
    "page[cursor]",
    "page[size]",
    "sort",
];

const COMPARE: &[Op] = &[
    Op::GreaterOrEqual,
    Op::GreaterThan,
    Op::LessOrEqual,
    Op::LessThan,
];

/// The spec's `filter` parameter of `get_events`, field by field.
const FILTER: &[Field] = &[
    Field {
        name: "metric_id",
        ops: &[Op::Equals],
        kind: Kind::Text,
    },
    Field {
        name: "profile_id",
        ops: &[Op::Equals],
        kind: Kind::Text,
    },
    Field {
        name: "profile",
        ops: &[Op::Has],
        kind: Kind::Unmodelled,
    },
    Field {
        name: "metric",
        ops: &[Op::Has],
        kind: Kind::Unmodelled,
    },
    Field {
        name: "datetime",
        ops: COMPARE,
        kind: Kind::DateTime,
    },
    Field {
        name: "timestamp",
        ops: COMPARE,
        kind: Kind::Integer,
    },
];

/// The most events on one page ("Returns a maximum of 200 events per page").
pub(crate) const MAX_PAGE: usize = 200;

/// When an event happened, as the read side shows it (to the second, UTC).
pub(crate) fn instant(event: &AcceptedEvent) -> Option<DateTime<Utc>> {
    event
        .datetime
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// `event_properties`: the properties sent, with `$value` and `$value_currency`.
pub(crate) fn event_properties(event: &AcceptedEvent) -> Map<String, Json> {
    let attributes = event.attributes();
    let mut properties = attributes
        .get("properties")
        .and_then(Json::as_object)
        .cloned()
        .unwrap_or_default();
    for (sent, read) in [("value", "$value"), ("value_currency", "$value_currency")] {
        if let Some(value) = attributes.get(sent).filter(|v| !v.is_null()) {
            properties.insert(read.into(), value.clone());
        }
    }
    properties
}

/// `GET /api/events`.
pub(crate) fn get(query: &Query, store: &Store, base_url: &str) -> Reply {
    match answer(query, store, base_url) {
        Ok(document) => Reply::json(StatusCode::OK, document),
        Err(error) => Reply::error(*error),
    }
}

fn answer(query: &Query, store: &Store, base_url: &str) -> Result<Json, Box<ApiError>> {
    known_parameters(query, PARAMETERS)?;
    let terms = filter(query, FILTER)?;
    let size = page_size(query, 200, 1000)?.min(MAX_PAGE);
    let offset = super::cursor(query)?;
    let order = sort(query, &["datetime", "timestamp"])?;
    let event_fields = list(
        query,
        "fields[event]",
        &["datetime", "event_properties", "id", "timestamp", "uuid"],
    )?;
    let metric_fields = list(
        query,
        "fields[metric]",
        &["created", "id", "integration", "name", "updated"],
    )?;
    let profile_fields = list(query, "fields[profile]", super::profiles::PROFILE_FIELDS)?;
    list(query, "fields[attribution]", &["id"])?;
    let include = list(query, "include", &["attributions", "metric", "profile"])?;
    let included = |name: &str| {
        include
            .as_ref()
            .is_some_and(|i| i.iter().any(|x| x == name))
    };

    let mut matching: Vec<&AcceptedEvent> = store
        .recorded_events()
        .iter()
        .filter(|e| terms.iter().all(|t| matches(e, t, store)))
        .collect();
    // Both sort fields are the same instant; the id breaks ties so pages never overlap.
    matching.sort_by(|a, b| instant(a).cmp(&instant(b)).then(a.id.cmp(&b.id)));
    if order.is_some_and(|(_, descending)| descending) {
        matching.reverse();
    }
    let page: Vec<&AcceptedEvent> = matching.iter().skip(offset).take(size).copied().collect();
    let data: Vec<Json> = page
        .iter()
        .map(|e| resource(e, store, base_url, event_fields.as_deref()))
        .collect();
    let mut document = json!({
        "data": data,
        "links": links(base_url, "/api/events/", query, offset, size, matching.len()),
    });
    if include.is_some() {
        let mut resources = Vec::new();
        if included("metric") {
            let mut seen = Vec::new();
            for event in &page {
                if let Some(metric) = store.metric_of(event)
                    && !seen.contains(&metric.id)
                {
                    seen.push(metric.id.clone());
                    resources.push(super::metrics::resource(
                        metric,
                        base_url,
                        metric_fields.as_deref(),
                        None,
                    ));
                }
            }
        }
        if included("profile") {
            let mut seen = Vec::new();
            for id in page.iter().filter_map(|e| e.profile_id.as_deref()) {
                if seen.contains(&id) {
                    continue;
                }
                seen.push(id);
                if let Some(index) = store.profile_index_by_id(id) {
                    resources.push(super::profiles::resource(
                        store.profile(index),
                        store,
                        base_url,
                        profile_fields.as_deref(),
                        false,
                    ));
                }
            }
        }
        document["included"] = Json::Array(resources);
    }
    Ok(document)
}

fn matches(event: &AcceptedEvent, term: &Condition, store: &Store) -> bool {
    match (term.field.as_str(), &term.value) {
        ("metric_id", Literal::Str(id)) => store.metric_of(event).is_some_and(|m| m.id == *id),
        ("profile_id", Literal::Str(id)) => event.profile_id.as_deref() == Some(id.as_str()),
        ("datetime", Literal::DateTime(bound)) => {
            instant(event).is_some_and(|at| term.op.compares(&at, &bound.with_timezone(&Utc)))
        }
        ("timestamp", Literal::Integer(bound)) => {
            instant(event).is_some_and(|at| term.op.compares(&at.timestamp(), bound))
        }
        _ => false,
    }
}

/// An event as `GET /api/events` lists it (`EventResponseObjectResource`).
fn resource(
    event: &AcceptedEvent,
    store: &Store,
    base_url: &str,
    fields: Option<&[String]>,
) -> Json {
    let at = instant(event);
    let mut attributes = Map::new();
    attributes.insert("timestamp".into(), json!(at.map(|t| t.timestamp())));
    attributes.insert(
        "event_properties".into(),
        Json::Object(event_properties(event)),
    );
    attributes.insert("datetime".into(), json!(event.datetime));
    attributes.insert("uuid".into(), json!(uuid(&event.id)));
    let path = format!("/api/events/{}/", event.id);
    let mut relationships = Map::new();
    if let Some(profile) = &event.profile_id {
        relationships.insert(
            "profile".into(),
            relationship(
                base_url,
                &path,
                "profile",
                Some(json!({"type": "profile", "id": profile})),
            ),
        );
    }
    if let Some(metric) = store.metric_of(event) {
        relationships.insert(
            "metric".into(),
            relationship(
                base_url,
                &path,
                "metric",
                Some(json!({"type": "metric", "id": metric.id})),
            ),
        );
    }
    relationships.insert(
        "attributions".into(),
        relationship(base_url, &path, "attributions", Some(json!([]))),
    );
    json!({
        "type": "event",
        "id": event.id,
        "attributes": sparse(attributes, fields),
        "relationships": relationships,
        "links": {"self": format!("{base_url}{path}")},
    })
}

/// A UUID (version 4 shape) derived from the event's id, so it is stable across reads.
fn uuid(id: &str) -> String {
    use sha2::Digest;
    let b = sha2::Sha256::digest(id.as_bytes());
    let hex: String = b[..16].iter().map(|x| format!("{x:02x}")).collect();
    let variant = ['8', '9', 'a', 'b'][(b[8] % 4) as usize];
    format!(
        "{}-{}-4{}-{variant}{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}
