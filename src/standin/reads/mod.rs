//! The read endpoints, as Klaviyo documents them in its OpenAPI spec: `GET /api/profiles`,
//! `GET /api/events`, `GET /api/metrics` and `POST /api/metric-aggregates`, answered from what
//! the stand-in accepted (and what a test planted, see [`super::drift`]), filtered, sorted,
//! paged and shaped as Klaviyo answers.
//!
//! Why: reconciliation reads Klaviyo back to prove what a 202 never proves. If the stand-in's
//! reads were built from what our reader expects, a wrong reader would pass its own mirror.
//! So each answer follows the operation's response schema in the spec (a test validates every
//! one against it), and each request is held to the operation's parameters: a filter field or
//! operator the spec does not list, a value of the wrong type, a parameter the operation does
//! not take, a page size out of bounds or a cursor it never gave out is a 400 naming the
//! parameter, as Klaviyo refuses what it cannot apply, never silently ignored.
//!
//! Where the stand-in cannot know what Klaviyo does, it says so in the module that answers:
//! [`events`] (`event_properties`), [`super::consent`] (subscriptions), [`metrics`] (the
//! integration object), [`aggregates`] (buckets and dates).

pub(crate) mod aggregates;
pub(crate) mod events;
pub(crate) mod metrics;
pub(crate) mod profiles;

use super::errors::ApiError;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value as Json, json};
use std::collections::HashMap;

type Query = HashMap<String, String>;

/// Refuses any query parameter the operation does not list (`revision` travels as a header):
/// a misspelt `fitler` would otherwise answer every record as if it were the filtered few.
fn known_parameters(query: &Query, known: &[&str]) -> Result<(), Box<ApiError>> {
    let mut names: Vec<&String> = query.keys().collect();
    names.sort();
    match names
        .into_iter()
        .find(|name| !known.contains(&name.as_str()))
    {
        None => Ok(()),
        Some(name) => Err(invalid(
            name.as_str(),
            format!(
                "'{name}' is not a query parameter of this endpoint; it takes {}.",
                known.join(", ")
            ),
        )),
    }
}

fn invalid(parameter: &str, detail: impl Into<String>) -> Box<ApiError> {
    Box::new(ApiError::invalid_parameter(parameter, detail))
}

/// A comma-separated list parameter (`fields[event]`, `include`, ...), each value one of
/// `allowed`; `None` when the parameter is absent.
fn list(
    query: &Query,
    parameter: &str,
    allowed: &[&str],
) -> Result<Option<Vec<String>>, Box<ApiError>> {
    let Some(text) = query.get(parameter) else {
        return Ok(None);
    };
    let values: Vec<String> = text.split(',').map(|v| v.trim().to_owned()).collect();
    if let Some(bad) = values.iter().find(|v| !allowed.contains(&v.as_str())) {
        return Err(invalid(
            parameter,
            format!(
                "'{bad}' is not a valid value for {parameter}; it takes {}.",
                allowed.join(", ")
            ),
        ));
    }
    Ok(Some(values))
}

/// `sort`: one of `fields`, or one of them with `-` for descending. Gives the field and
/// whether it descends.
fn sort<'a>(query: &'a Query, fields: &[&str]) -> Result<Option<(&'a str, bool)>, Box<ApiError>> {
    let Some(text) = query.get("sort") else {
        return Ok(None);
    };
    let (field, descending) = match text.strip_prefix('-') {
        Some(field) => (field, true),
        None => (text.as_str(), false),
    };
    if fields.contains(&field) {
        Ok(Some((field, descending)))
    } else {
        Err(invalid(
            "sort",
            format!(
                "'{text}' is not a valid sort field; sort by {} (prefix - to descend).",
                fields.join(", ")
            ),
        ))
    }
}

/// The filter, held to `fields`; no terms when there is none.
fn filter(
    query: &Query,
    fields: &[super::filter::Field],
) -> Result<Vec<super::filter::Condition>, Box<ApiError>> {
    match query.get("filter") {
        None => Ok(Vec::new()),
        Some(text) => super::filter::parse_for(text, fields).map_err(|e| invalid("filter", e)),
    }
}

/// `page[size]` within `1..=max` (`default` when absent).
fn page_size(query: &Query, default: usize, max: usize) -> Result<usize, Box<ApiError>> {
    match query.get("page[size]") {
        None => Ok(default),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                invalid(
                    "page[size]",
                    format!("page[size] must be an integer from 1 to {max}; it is {text:?}."),
                )
            }),
    }
}

/// Where `page[cursor]` starts: an opaque cursor this stand-in gave out in `links`, or the
/// start. A client builds no cursor of its own; it follows `links.next`.
fn cursor(query: &Query) -> Result<usize, Box<ApiError>> {
    let Some(text) = query.get("page[cursor]") else {
        return Ok(0);
    };
    URL_SAFE_NO_PAD
        .decode(text)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix("offset:")?.parse().ok())
        .ok_or_else(|| {
            invalid(
                "page[cursor]",
                "Invalid page cursor: follow links.next rather than building one.",
            )
        })
}

fn encode_cursor(offset: usize) -> String {
    URL_SAFE_NO_PAD.encode(format!("offset:{offset}"))
}

/// `links` of one page of `total` items from `offset`: `self`, `next` when more follow,
/// `prev` when some came before.
fn links(
    base_url: &str,
    path: &str,
    query: &Query,
    offset: usize,
    size: usize,
    total: usize,
) -> Json {
    let url = |cursor: Option<usize>| {
        let mut params: Vec<(String, String)> = query
            .iter()
            .filter(|(k, _)| k.as_str() != "page[cursor]")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        params.sort();
        if let Some(cursor) = cursor {
            params.push(("page[cursor]".into(), encode_cursor(cursor)));
        }
        reqwest::Url::parse_with_params(&format!("{base_url}{path}"), &params)
            .map(|u| u.to_string())
            .unwrap_or_default()
    };
    let mut links = json!({ "self": url((offset > 0).then_some(offset)) });
    if offset + size < total {
        links["next"] = json!(url(Some(offset + size)));
    }
    if offset > 0 {
        links["prev"] = json!(url(Some(offset.saturating_sub(size))));
    }
    links
}

/// A sparse fieldset: only the attributes named (a dotted name such as `location.city` keeps
/// that part of an object attribute); all of them when no fieldset was asked for.
fn sparse(attributes: Map<String, Json>, fields: Option<&[String]>) -> Map<String, Json> {
    let Some(fields) = fields else {
        return attributes;
    };
    let mut kept = Map::new();
    for (name, value) in attributes {
        if fields.contains(&name) {
            kept.insert(name, value);
            continue;
        }
        let prefix = format!("{name}.");
        let parts: Vec<String> = fields
            .iter()
            .filter_map(|f| f.strip_prefix(&prefix).map(str::to_owned))
            .collect();
        if let (false, Json::Object(inner)) = (parts.is_empty(), &value) {
            let inner = sparse(inner.clone(), Some(&parts));
            kept.insert(name, Json::Object(inner));
        }
    }
    kept
}

/// `relationships.X` pointing at related resources: their links, and their identifiers when
/// asked for (`data`).
fn relationship(base_url: &str, path: &str, name: &str, data: Option<Json>) -> Json {
    let mut relationship = json!({
        "links": {
            "self": format!("{base_url}{path}relationships/{name}/"),
            "related": format!("{base_url}{path}{name}/"),
        }
    });
    if let Some(data) = data {
        relationship["data"] = data;
    }
    relationship
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_what_was_never_given() {
        let mut query = Query::new();
        query.insert("page[cursor]".into(), encode_cursor(400));
        assert_eq!(cursor(&query).unwrap(), 400);
        query.insert("page[cursor]".into(), "400".into());
        assert!(cursor(&query).is_err());
    }

    #[test]
    fn sparse_fieldsets_keep_named_parts() {
        let attributes = json!({"email": "a@b.co", "first_name": "A",
            "location": {"city": "Hobart", "zip": "7000"}})
        .as_object()
        .unwrap()
        .clone();
        let fields = vec!["email".to_owned(), "location.city".to_owned()];
        assert_eq!(
            Json::Object(sparse(attributes, Some(&fields))),
            json!({"email": "a@b.co", "location": {"city": "Hobart"}})
        );
    }
}
