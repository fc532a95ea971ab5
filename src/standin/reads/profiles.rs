//! `GET /api/profiles` (`get_profiles`): the profiles the stand-in holds, by `equals` or `any`
//! on `id`, `email`, `phone_number`, `external_id`, by `created`/`updated`, sorted, 20 a page
//! (at most 100), with `additional-fields[profile]=subscriptions` showing email-marketing
//! consent (see [`super::super::consent`]).
//!
//! Several profiles for one email appear only when a test plants them (Klaviyo can hold them;
//! the stand-in's own upserts answer 409 `duplicate_profile` instead): `any(email,[…])` then
//! lists every one, which is how a reader finds duplicates.

use super::super::errors::{ApiError, Reply};
use super::super::filter::{Condition, Field, Kind, Literal, Op};
use super::super::store::{Profile, Store};
use super::{Query, filter, known_parameters, links, list, page_size, relationship, sort, sparse};
use axum::http::StatusCode;
use chrono::DateTime;
use serde_json::{Map, Value as Json, json};

const PARAMETERS: &[&str] = &[
    "additional-fields[profile]",
    "fields[conversation]",
    "fields[profile]",
    "fields[push-token]",
    "filter",
    "include",
    "page[cursor]",
    "page[size]",
    "sort",
];

const IDENTITY: &[Op] = &[Op::Any, Op::Equals];
const BEFORE_AFTER: &[Op] = &[Op::GreaterThan, Op::LessThan];
const COMPARE: &[Op] = &[
    Op::GreaterOrEqual,
    Op::GreaterThan,
    Op::LessOrEqual,
    Op::LessThan,
];

/// The spec's `filter` parameter of `get_profiles`, field by field.
const FILTER: &[Field] = &[
    Field {
        name: "id",
        ops: IDENTITY,
        kind: Kind::Text,
    },
    Field {
        name: "email",
        ops: IDENTITY,
        kind: Kind::Text,
    },
    Field {
        name: "phone_number",
        ops: IDENTITY,
        kind: Kind::Text,
    },
    Field {
        name: "external_id",
        ops: IDENTITY,
        kind: Kind::Text,
    },
    Field {
        name: "_kx",
        ops: &[Op::Equals],
        kind: Kind::Unmodelled,
    },
    Field {
        name: "created",
        ops: BEFORE_AFTER,
        kind: Kind::DateTime,
    },
    Field {
        name: "updated",
        ops: BEFORE_AFTER,
        kind: Kind::DateTime,
    },
    Field {
        name: "subscriptions.email.marketing.list_suppressions.reason",
        ops: &[Op::Equals],
        kind: Kind::Unmodelled,
    },
    Field {
        name: "subscriptions.email.marketing.list_suppressions.timestamp",
        ops: COMPARE,
        kind: Kind::Unmodelled,
    },
    Field {
        name: "subscriptions.email.marketing.list_suppressions.list_id",
        ops: &[Op::Equals],
        kind: Kind::Unmodelled,
    },
    Field {
        name: "subscriptions.email.marketing.suppression.reason",
        ops: &[Op::Equals],
        kind: Kind::Unmodelled,
    },
    Field {
        name: "subscriptions.email.marketing.suppression.timestamp",
        ops: COMPARE,
        kind: Kind::Unmodelled,
    },
];

const SUPPRESSED_AT: &str = "subscriptions.email.marketing.suppression.timestamp";
const LIST_SUPPRESSED_AT: &str = "subscriptions.email.marketing.list_suppressions.timestamp";

const SORT: &[&str] = &[
    "created",
    "email",
    "id",
    "updated",
    SUPPRESSED_AT,
    LIST_SUPPRESSED_AT,
];

/// The standard fields every profile lists, `null` when not set.
const FIELDS: [&str; 9] = [
    "email",
    "phone_number",
    "external_id",
    "first_name",
    "last_name",
    "organization",
    "locale",
    "title",
    "image",
];

const LOCATION: [&str; 10] = [
    "address1",
    "address2",
    "city",
    "country",
    "latitude",
    "longitude",
    "region",
    "zip",
    "timezone",
    "ip",
];

/// `fields[profile]` as `get_events` lists it (the `get_profiles` list adds `subscriptions.…`
/// and `predictive_analytics.…`, read below as prefixes).
pub(crate) const PROFILE_FIELDS: &[&str] = &[
    "created",
    "email",
    "external_id",
    "first_name",
    "id",
    "image",
    "last_event_date",
    "last_name",
    "locale",
    "location",
    "location.address1",
    "location.address2",
    "location.city",
    "location.country",
    "location.ip",
    "location.latitude",
    "location.longitude",
    "location.region",
    "location.timezone",
    "location.zip",
    "organization",
    "phone_number",
    "properties",
    "title",
    "updated",
];

/// `fields[profile]` of `get_profiles`: [`PROFILE_FIELDS`] and the additional fields.
fn profile_fields(query: &Query) -> Result<Option<Vec<String>>, Box<ApiError>> {
    let Some(text) = query.get("fields[profile]") else {
        return Ok(None);
    };
    let values: Vec<String> = text.split(',').map(|v| v.trim().to_owned()).collect();
    let known = |v: &str| {
        PROFILE_FIELDS.contains(&v)
            || ["subscriptions", "predictive_analytics"]
                .iter()
                .any(|p| v == *p || v.starts_with(&format!("{p}.")))
    };
    match values.iter().find(|v| !known(v)) {
        None => Ok(Some(values)),
        Some(bad) => Err(super::invalid(
            "fields[profile]",
            format!("'{bad}' is not a field of the profile resource."),
        )),
    }
}

/// `GET /api/profiles`.
pub(crate) fn get(query: &Query, store: &Store, base_url: &str) -> Reply {
    match answer(query, store, base_url) {
        Ok(document) => Reply::json(StatusCode::OK, document),
        Err(error) => Reply::error(*error),
    }
}

fn answer(query: &Query, store: &Store, base_url: &str) -> Result<Json, Box<ApiError>> {
    known_parameters(query, PARAMETERS)?;
    let terms = filter(query, FILTER)?;
    let size = page_size(query, 20, 100)?;
    let offset = super::cursor(query)?;
    let order = sort(query, SORT)?;
    let additional = list(
        query,
        "additional-fields[profile]",
        &["subscriptions", "predictive_analytics"],
    )?
    .unwrap_or_default();
    if additional.iter().any(|a| a == "predictive_analytics") {
        return Err(super::invalid(
            "additional-fields[profile]",
            "Klaviyo answers predictive_analytics, but the stand-in does not model it.",
        ));
    }
    let subscriptions = additional.iter().any(|a| a == "subscriptions");
    let fields = profile_fields(query)?;
    list(query, "fields[conversation]", &["channel", "id"])?;
    let include = list(query, "include", &["conversations", "push-tokens"])?;
    let mut matching: Vec<&Profile> = store
        .all_profiles()
        .iter()
        .filter(|p| terms.iter().all(|t| matches(p, t)))
        .collect();
    if let Some((field, descending)) = order {
        let key = |p: &Profile| -> String {
            match field {
                "created" => p.created.clone(),
                "updated" => p.updated.clone(),
                "id" => p.id.clone(),
                "email" => text(p, "email").unwrap_or_default().to_lowercase(),
                SUPPRESSED_AT => store
                    .consent_of(p)
                    .suppressed_at()
                    .unwrap_or_default()
                    .to_owned(),
                // The stand-in holds no list suppressions: every profile sorts alike.
                _ => String::new(),
            }
        };
        matching.sort_by_cached_key(|p| key(p));
        if descending {
            matching.reverse();
        }
    }
    let data: Vec<Json> = matching
        .iter()
        .skip(offset)
        .take(size)
        .map(|p| resource(p, store, base_url, fields.as_deref(), subscriptions))
        .collect();
    let mut document = json!({
        "data": data,
        "links": links(base_url, "/api/profiles/", query, offset, size, matching.len()),
    });
    if include.is_some() {
        // The stand-in holds no conversations or push tokens: nothing to include.
        document["included"] = json!([]);
    }
    Ok(document)
}

fn text<'a>(profile: &'a Profile, field: &str) -> Option<&'a str> {
    profile.attribute(field).and_then(Json::as_str)
}

fn matches(profile: &Profile, term: &Condition) -> bool {
    let Some(wanted) = (match term.op {
        Op::Equals | Op::Any => Some(term.value.strings()),
        _ => None,
    }) else {
        let stamp = match term.field.as_str() {
            "created" => &profile.created,
            _ => &profile.updated,
        };
        return match (&term.value, DateTime::parse_from_rfc3339(stamp)) {
            (Literal::DateTime(bound), Ok(at)) => term.op.compares(&at, bound),
            _ => false,
        };
    };
    match term.field.as_str() {
        "id" => wanted.contains(&profile.id.as_str()),
        "email" => text(profile, "email")
            .is_some_and(|email| wanted.iter().any(|w| w.eq_ignore_ascii_case(email))),
        field => text(profile, field).is_some_and(|value| wanted.contains(&value)),
    }
}

/// A profile's attributes as every profile endpoint answers them: each standard field and
/// location field (`null` when not set), its timestamps and its properties.
pub(crate) fn standard_attributes(profile: &Profile, last_event_date: Json) -> Map<String, Json> {
    let stored = &profile.attributes;
    let mut attributes: Map<String, Json> = FIELDS
        .iter()
        .map(|&f| (f.to_string(), stored.get(f).cloned().unwrap_or(Json::Null)))
        .collect();
    attributes.insert("created".into(), json!(profile.created));
    attributes.insert("updated".into(), json!(profile.updated));
    attributes.insert("last_event_date".into(), last_event_date);
    let location = stored.get("location");
    let location: Map<String, Json> = LOCATION
        .iter()
        .map(|&f| {
            let value = location
                .and_then(|l| l.get(f))
                .cloned()
                .unwrap_or(Json::Null);
            (f.to_string(), value)
        })
        .collect();
    attributes.insert("location".into(), Json::Object(location));
    attributes.insert(
        "properties".into(),
        stored
            .get("properties")
            .cloned()
            .unwrap_or_else(|| json!({})),
    );
    attributes
}

/// A profile as the read endpoints list it (`ProfileResponseObjectResource`): every standard
/// field (`null` when not set), `subscriptions` when asked for, trimmed to `fields` when a
/// sparse fieldset was asked for.
pub(crate) fn resource(
    profile: &Profile,
    store: &Store,
    base_url: &str,
    fields: Option<&[String]>,
    subscriptions: bool,
) -> Json {
    let last_event_date = store
        .events_of(&profile.id)
        .filter_map(|e| e.datetime.clone())
        .max()
        .map_or(Json::Null, Json::String);
    let mut attributes = standard_attributes(profile, last_event_date);
    if subscriptions {
        attributes.insert(
            "subscriptions".into(),
            json!({ "email": { "marketing": store.consent_of(profile).to_json() } }),
        );
    }
    let path = format!("/api/profiles/{}/", profile.id);
    json!({
        "type": "profile",
        "id": profile.id,
        "attributes": sparse(attributes, fields),
        "relationships": {
            "lists": relationship(base_url, &path, "lists", None),
            "segments": relationship(base_url, &path, "segments", None),
        },
        "links": { "self": format!("{base_url}{path}") },
    })
}
