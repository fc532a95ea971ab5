//! The read endpoints, as Klaviyo documents them in its OpenAPI spec (`get_profiles`,
//! `get_events`): what the stand-in holds, filtered, paged and shaped as Klaviyo answers, so
//! that a client reading Klaviyo back (`marketsync customer --klaviyo`) is tested against the
//! documented shapes, not against what it expects.
//!
//! Supported: `filter` with `equals(field,"value")` (and `and(...)` of them) on the fields the
//! spec lists for equality (profiles: `id`, `email`, `phone_number`, `external_id`; events:
//! `profile_id`, `metric_id`); `page[size]` within the spec's bounds and `page[cursor]`;
//! `additional-fields[profile]=subscriptions`; `include=metric` and `sort=±datetime` for
//! events. Anything else in `filter` is refused with 400, as Klaviyo refuses a filter it cannot
//! apply, rather than ignored.
//!
//! Simplifications, each marked: a subscription's `method` is `API` (the spec gives only an
//! example, `PREFERENCE_PAGE`); a profile never subscribed reads `NEVER_SUBSCRIBED` (the wire
//! spelling is unverified); a metric's `integration` is the API integration.

use super::errors::{ApiError, Reply};
use super::store::{Profile, Store, timestamp};
use axum::http::StatusCode;
use chrono::DateTime;
use serde_json::{Map, Value as Json, json};
use std::collections::HashMap;

/// One `equals(field,value)` term of a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Equals {
    pub(crate) field: String,
    pub(crate) value: String,
}

/// Reads `equals(f,"v")` or `and(equals(...),equals(...))`; `None` for anything else.
pub(crate) fn parse_filter(filter: &str) -> Option<Vec<Equals>> {
    let filter = filter.trim();
    if let Some(inner) = filter
        .strip_prefix("and(")
        .and_then(|f| f.strip_suffix(')'))
    {
        let mut terms = Vec::new();
        let mut rest = inner.trim();
        while !rest.is_empty() {
            let end = term_end(rest)?;
            terms.extend(parse_filter(&rest[..end])?);
            rest = rest[end..]
                .trim_start()
                .trim_start_matches(',')
                .trim_start();
        }
        return (!terms.is_empty()).then_some(terms);
    }
    let inner = filter.strip_prefix("equals(")?.strip_suffix(')')?;
    let (field, value) = inner.split_once(',')?;
    let value = value.trim();
    let quote = value.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let unquoted = value.strip_prefix(quote)?.strip_suffix(quote)?;
    Some(vec![Equals {
        field: field.trim().to_owned(),
        value: unquoted
            .replace(&format!("\\{quote}"), &quote.to_string())
            .replace("\\\\", "\\"),
    }])
}

/// Where the first term of `text` ends: after its closing parenthesis, quotes respected.
fn term_end(text: &str) -> Option<usize> {
    let (mut depth, mut quote, mut escaped) = (0, None, false);
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (Some(_), '\\') if !escaped => {
                escaped = true;
                continue;
            }
            (Some(q), c) if c == q && !escaped => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        escaped = false;
    }
    None
}

/// `page[size]` within `1..=max` (default `default`), and the offset in `page[cursor]`.
fn paging(
    query: &HashMap<String, String>,
    default: usize,
    max: usize,
) -> Result<(usize, usize), Box<ApiError>> {
    let size = match query.get("page[size]") {
        None => default,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                Box::new(ApiError::invalid_parameter(
                    "page[size]",
                    format!("page[size] must be an integer from 1 to {max}."),
                ))
            })?,
    };
    let offset = match query.get("page[cursor]") {
        None => 0,
        Some(cursor) => cursor
            .parse()
            .map_err(|_| ApiError::invalid_parameter("page[cursor]", "Invalid page cursor."))?,
    };
    Ok((size, offset))
}

/// `links` of one page: `self`, and `next` when more follow.
fn links(
    base_url: &str,
    path: &str,
    query: &HashMap<String, String>,
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
            params.push(("page[cursor]".into(), cursor.to_string()));
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

fn filter_of(
    query: &HashMap<String, String>,
    allowed: &[&str],
) -> Result<Vec<Equals>, Box<ApiError>> {
    let Some(text) = query.get("filter") else {
        return Ok(Vec::new());
    };
    let terms = parse_filter(text).ok_or_else(|| {
        Box::new(ApiError::invalid_parameter(
            "filter",
            format!("Invalid filter provided: {text}"),
        ))
    })?;
    if let Some(term) = terms.iter().find(|t| !allowed.contains(&t.field.as_str())) {
        return Err(Box::new(ApiError::invalid_parameter(
            "filter",
            format!(
                "'{}' is not a valid field for the resource with operator 'equals'.",
                term.field
            ),
        )));
    }
    Ok(terms)
}

/// `GET /api/profiles`.
pub(crate) fn get_profiles(
    query: &HashMap<String, String>,
    store: &Store,
    base_url: &str,
) -> Reply {
    let answer = || -> Result<Json, Box<ApiError>> {
        let terms = filter_of(query, &["id", "email", "phone_number", "external_id"])?;
        let (size, offset) = paging(query, 20, 100)?;
        let subscriptions = query
            .get("additional-fields[profile]")
            .is_some_and(|fields| fields.split(',').any(|f| f.trim() == "subscriptions"));
        let matching: Vec<&Profile> = store
            .all_profiles()
            .iter()
            .filter(|p| {
                terms.iter().all(|t| match t.field.as_str() {
                    "id" => p.id == t.value,
                    "email" => p
                        .attribute("email")
                        .and_then(Json::as_str)
                        .is_some_and(|e| e.eq_ignore_ascii_case(&t.value)),
                    field => p.attribute(field).and_then(Json::as_str) == Some(t.value.as_str()),
                })
            })
            .collect();
        let data: Vec<Json> = matching
            .iter()
            .skip(offset)
            .take(size)
            .map(|p| profile_resource(p, store, base_url, subscriptions))
            .collect();
        Ok(json!({
            "data": data,
            "links": links(base_url, "/api/profiles/", query, offset, size, matching.len()),
        }))
    };
    match answer() {
        Ok(document) => Reply::json(StatusCode::OK, document),
        Err(error) => Reply::error(*error),
    }
}

/// A profile as `GET /api/profiles` lists it: every standard field, `null` when not set.
fn profile_resource(profile: &Profile, store: &Store, base_url: &str, subscriptions: bool) -> Json {
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
    let stored = &profile.attributes;
    let mut attributes: Map<String, Json> = FIELDS
        .iter()
        .map(|&f| (f.to_string(), stored.get(f).cloned().unwrap_or(Json::Null)))
        .collect();
    attributes.insert("created".into(), json!(profile.created));
    attributes.insert("updated".into(), json!(profile.updated));
    attributes.insert(
        "last_event_date".into(),
        store
            .events_of(&profile.id)
            .filter_map(|e| e.datetime.clone())
            .max()
            .map_or(Json::Null, Json::String),
    );
    attributes.insert(
        "location".into(),
        stored.get("location").cloned().unwrap_or_else(|| json!({})),
    );
    attributes.insert(
        "properties".into(),
        stored
            .get("properties")
            .cloned()
            .unwrap_or_else(|| json!({})),
    );
    if subscriptions {
        attributes.insert("subscriptions".into(), subscriptions_of(profile, store));
    }
    json!({
        "type": "profile",
        "id": profile.id,
        "attributes": attributes,
        "relationships": {
            "lists": {"links": {"self": format!("{base_url}/api/profiles/{}/relationships/lists/", profile.id)}},
            "segments": {"links": {"self": format!("{base_url}/api/profiles/{}/relationships/segments/", profile.id)}},
        },
        "links": { "self": format!("{base_url}/api/profiles/{}/", profile.id) },
    })
}

/// `subscriptions.email.marketing` (the `EmailMarketing` schema): the newest email-marketing
/// consent accepted for the profile, then any global suppression.
fn subscriptions_of(profile: &Profile, store: &Store) -> Json {
    let email = profile.attribute("email").and_then(Json::as_str);
    let subscription = store.subscriptions_of(&profile.id, email).last().cloned();
    let suppression = email.and_then(|e| store.suppression_of(e));
    let (consent, consent_timestamp, custom) = match &subscription {
        Some((parameters, custom_source)) => (
            parameters["consent"]
                .as_str()
                .unwrap_or("SUBSCRIBED")
                .to_owned(),
            parameters["consented_at"]
                .as_str()
                .map_or(Json::Null, |t| json!(t)),
            custom_source.clone().map_or(Json::Null, Json::String),
        ),
        None => ("NEVER_SUBSCRIBED".to_owned(), Json::Null, Json::Null),
    };
    let mut marketing = json!({
        "can_receive_email_marketing": suppression.is_none(),
        "consent": consent,
        "consent_timestamp": consent_timestamp,
        "last_updated": consent_timestamp,
        "method": if subscription.is_some() { json!("API") } else { Json::Null },
        "method_detail": "",
        "custom_method_detail": custom,
        "double_optin": Json::Null,
        "suppression": [],
        "list_suppressions": [],
    });
    if let Some((reason, at)) = suppression {
        if reason.as_str() == "UNSUBSCRIBE" {
            marketing["consent"] = json!("UNSUBSCRIBED");
            marketing["consent_timestamp"] = json!(timestamp(*at));
        }
        marketing["last_updated"] = json!(timestamp(*at));
        marketing["suppression"] = json!([{ "reason": reason, "timestamp": timestamp(*at) }]);
    }
    json!({ "email": { "marketing": marketing } })
}

/// `GET /api/events`.
pub(crate) fn get_events(query: &HashMap<String, String>, store: &Store, base_url: &str) -> Reply {
    let answer = || -> Result<Json, Box<ApiError>> {
        let terms = filter_of(query, &["profile_id", "metric_id"])?;
        let (size, offset) = paging(query, 200, 1000)?;
        let descending = match query.get("sort").map(String::as_str) {
            None | Some("datetime") | Some("timestamp") => false,
            Some("-datetime") | Some("-timestamp") => true,
            Some(other) => {
                return Err(Box::new(ApiError::invalid_parameter(
                    "sort",
                    format!("'{other}' is not a valid sort field."),
                )));
            }
        };
        let include_metric = match query.get("include") {
            None => false,
            Some(include) => {
                for item in include.split(',') {
                    if !["attributions", "metric", "profile"].contains(&item.trim()) {
                        return Err(Box::new(ApiError::invalid_parameter(
                            "include",
                            format!("'{item}' is not a valid related resource."),
                        )));
                    }
                }
                include.split(',').any(|i| i.trim() == "metric")
            }
        };
        let mut matching: Vec<_> = store
            .recorded_events()
            .iter()
            .filter(|e| {
                terms.iter().all(|t| match t.field.as_str() {
                    "profile_id" => e.profile_id.as_deref() == Some(t.value.as_str()),
                    _ => metric_id(&e.metric) == t.value,
                })
            })
            .collect();
        matching.sort_by(|a, b| a.datetime.cmp(&b.datetime).then(a.id.cmp(&b.id)));
        if descending {
            matching.reverse();
        }
        let page: Vec<_> = matching.iter().skip(offset).take(size).collect();
        let data: Vec<Json> = page
            .iter()
            .map(|e| {
                let mut properties = e
                    .attributes
                    .get("properties")
                    .cloned()
                    .unwrap_or_else(|| json!({}));
                if !properties.is_object() {
                    properties = json!({});
                }
                let seconds = e
                    .datetime
                    .as_deref()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.timestamp());
                json!({
                    "type": "event",
                    "id": e.id,
                    "attributes": {
                        "timestamp": seconds,
                        "event_properties": properties,
                        "datetime": e.datetime,
                        "uuid": e.id,
                    },
                    "relationships": {
                        "profile": {"data": e.profile_id.as_ref().map(|id| json!({"type": "profile", "id": id}))},
                        "metric": {"data": {"type": "metric", "id": metric_id(&e.metric)}},
                    },
                    "links": {"self": format!("{base_url}/api/events/{}/", e.id)},
                })
            })
            .collect();
        let mut document = json!({
            "data": data,
            "links": links(base_url, "/api/events/", query, offset, size, matching.len()),
        });
        if include_metric {
            let mut names: Vec<&str> = page.iter().map(|e| e.metric.as_str()).collect();
            names.sort();
            names.dedup();
            document["included"] = names
                .into_iter()
                .map(|name| {
                    json!({
                        "type": "metric",
                        "id": metric_id(name),
                        "attributes": {
                            "name": name,
                            "created": Json::Null,
                            "updated": Json::Null,
                            "integration": {"name": "API", "category": "API"},
                        },
                        "links": {"self": format!("{base_url}/api/metrics/{}/", metric_id(name))},
                    })
                })
                .collect();
        }
        Ok(document)
    };
    match answer() {
        Ok(document) => Reply::json(StatusCode::OK, document),
        Err(error) => Reply::error(*error),
    }
}

/// A metric's id, stable per name (six characters, as Klaviyo's look).
pub(crate) fn metric_id(name: &str) -> String {
    use sha2::Digest;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    sha2::Sha256::digest(name.as_bytes())
        .iter()
        .take(6)
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_read_as_klaviyo_writes_them() {
        assert_eq!(
            parse_filter(r#"equals(email,"a@b.co")"#),
            Some(vec![Equals {
                field: "email".into(),
                value: "a@b.co".into()
            }])
        );
        assert_eq!(
            parse_filter("equals(phone_number,'+61412345678')").unwrap()[0].value,
            "+61412345678"
        );
        let both =
            parse_filter(r#"and(equals(profile_id,"01A"),equals(metric_id,"Xy,z)"))"#).unwrap();
        assert_eq!(both.len(), 2);
        assert_eq!(both[1].value, "Xy,z)");
        assert_eq!(
            parse_filter(r#"equals(email,"a\"b@c.co")"#).unwrap()[0].value,
            "a\"b@c.co"
        );
        for bad in [
            "email = a@b.co",
            r#"contains(email,"a")"#,
            "equals(email,a@b.co)",
            "and()",
        ] {
            assert_eq!(parse_filter(bad), None, "{bad}");
        }
    }
}
