//! Klaviyo's rules that the schemas cannot say: identifiers, phone and email formats, sizes,
//! counts, the range of an event's time, and the event dedupe key.
//!
//! Each check gives the problems it finds as [`ApiError`]s with the JSON pointer of the value;
//! every problem in a body is reported, not only the first.

use super::errors::ApiError;
use chrono::{DateTime, Datelike, Duration as Span, Utc};
use serde_json::{Map, Value as Json};

/// Klaviyo's ingestion limits, at their strictest reading (decimal units, so never above).
pub(crate) const MB_5: usize = 5_000_000;
pub(crate) const KB_100: usize = 100_000;
/// "Properties of this event (must not exceed 400 properties)".
const MAX_EVENT_PROPERTIES: usize = 400;

/// E.164: `+`, a non-zero digit, then 6 to 14 digits.
pub(crate) fn is_e164(phone: &str) -> bool {
    let Some(digits) = phone.strip_prefix('+') else {
        return false;
    };
    (7..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// A plain shape check: one `@`, something before it, a dotted domain after it, no spaces.
pub(crate) fn is_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && !email.chars().any(char::is_whitespace)
        && domain.split('.').count() >= 2
        && domain.split('.').all(|part| !part.is_empty())
}

fn text<'a>(attributes: &'a Map<String, Json>, name: &str) -> Option<&'a str> {
    attributes.get(name).and_then(Json::as_str)
}

/// The formats of the email and phone number, when they are sent.
pub(crate) fn contact_formats(attributes: &Map<String, Json>, pointer: &str) -> Vec<ApiError> {
    let mut problems = Vec::new();
    if let Some(email) = text(attributes, "email")
        && !is_email(email)
    {
        problems.push(ApiError::invalid(
            format!("{pointer}/email"),
            format!("Invalid email address: {email:?}."),
        ));
    }
    if let Some(phone) = text(attributes, "phone_number")
        && !is_e164(phone)
    {
        problems.push(ApiError::invalid(
            format!("{pointer}/phone_number"),
            format!(
                "Invalid phone number format (Example of a valid format: +13239169023): {phone:?}."
            ),
        ));
    }
    problems
}

/// The identifiers a profile is known by, in the order the dedupe key tries them.
const EVENT_IDENTIFIERS: [&str; 5] = [
    "email",
    "phone_number",
    "external_id",
    "anonymous_id",
    "_kx",
];

/// What stands for an event's profile in its dedupe key: the email (lower-cased), else the phone
/// number, external id, profile id, anonymous id or `_kx`. None when the profile has none.
pub(crate) fn profile_key(profile: &Json) -> Option<String> {
    let attributes = profile.get("attributes").and_then(Json::as_object);
    let of = |name: &str| {
        attributes
            .and_then(|a| text(a, name))
            .filter(|v| !v.is_empty())
    };
    if let Some(email) = of("email") {
        return Some(format!("email:{}", email.to_lowercase()));
    }
    for name in ["phone_number", "external_id"] {
        if let Some(value) = of(name) {
            return Some(format!("{name}:{value}"));
        }
    }
    if let Some(id) = profile.get("id").and_then(Json::as_str) {
        return Some(format!("id:{id}"));
    }
    EVENT_IDENTIFIERS[3..]
        .iter()
        .find_map(|&name| of(name).map(|value| format!("{name}:{value}")))
}

/// An event's profile (`…/profile/data`): it needs an identifier, and well-formed contacts.
pub(crate) fn event_profile(profile: &Json, pointer: &str) -> Vec<ApiError> {
    let empty = Map::new();
    let attributes = profile
        .get("attributes")
        .and_then(Json::as_object)
        .unwrap_or(&empty);
    let mut problems = contact_formats(attributes, &format!("{pointer}/attributes"));
    if profile_key(profile).is_none() {
        problems.push(ApiError::invalid(
            format!("{pointer}/attributes"),
            "A profile identifier is required: one of `email`, `phone_number`, `external_id`, \
             `anonymous_id`, `_kx`, or the profile `id`.",
        ));
    }
    problems
}

/// A profile to create or update: it needs `id`, `email`, `phone_number` or `external_id`, and
/// well-formed contacts. `pointer` is that of the resource object (`/data`).
pub(crate) fn upsert_profile(resource: &Json, pointer: &str) -> Vec<ApiError> {
    let empty = Map::new();
    let attributes = resource
        .get("attributes")
        .and_then(Json::as_object)
        .unwrap_or(&empty);
    let mut problems = contact_formats(attributes, &format!("{pointer}/attributes"));
    let has_id = resource.get("id").and_then(Json::as_str).is_some();
    let has_identifier = ["email", "phone_number", "external_id"]
        .iter()
        .any(|name| text(attributes, name).is_some_and(|v| !v.is_empty()));
    if !has_id && !has_identifier {
        problems.push(ApiError::invalid(
            format!("{pointer}/attributes"),
            "One of `email`, `phone_number` or `external_id` (or the profile `id`) is required.",
        ));
    }
    problems
}

/// An event's own attributes (`…/attributes`): the metric name, at most 400 properties, strings
/// of at most 100 KB, and a time after 1990 and at most a year ahead.
pub(crate) fn event_attributes(
    attributes: &Json,
    pointer: &str,
    now: DateTime<Utc>,
) -> Vec<ApiError> {
    let mut problems = Vec::new();
    let name = attributes.pointer("/metric/data/attributes/name");
    if name
        .and_then(Json::as_str)
        .is_some_and(|n| n.trim().is_empty())
    {
        problems.push(ApiError::invalid(
            format!("{pointer}/metric/data/attributes/name"),
            "The metric name must not be blank.",
        ));
    }
    if let Some(properties) = attributes.get("properties").and_then(Json::as_object)
        && properties.len() > MAX_EVENT_PROPERTIES
    {
        problems.push(ApiError::invalid(
            format!("{pointer}/properties"),
            format!(
                "An event has at most {MAX_EVENT_PROPERTIES} properties; this one has {}.",
                properties.len()
            ),
        ));
    }
    long_strings(attributes, pointer, &mut problems);
    if let Some(time) = attributes.get("time").and_then(Json::as_str)
        && let Ok(time) = DateTime::parse_from_rfc3339(time)
    {
        let time = time.with_timezone(&Utc);
        if time.year() < 1990 || time > now + Span::days(365) {
            problems.push(ApiError::invalid(
                format!("{pointer}/time"),
                "The time must be after the year 1990 and at most 1 year in the future.",
            ));
        }
    }
    problems
}

/// Every string longer than 100 KB, with its pointer.
fn long_strings(value: &Json, pointer: &str, problems: &mut Vec<ApiError>) {
    match value {
        Json::String(s) if s.len() > KB_100 => problems.push(ApiError::invalid(
            pointer,
            format!(
                "A string may be at most 100 KB; this one is {} bytes.",
                s.len()
            ),
        )),
        Json::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                long_strings(item, &format!("{pointer}/{i}"), problems);
            }
        }
        Json::Object(fields) => {
            for (name, item) in fields {
                let escaped = name.replace('~', "~0").replace('/', "~1");
                long_strings(item, &format!("{pointer}/{escaped}"), problems);
            }
        }
        _ => {}
    }
}

/// The third part of an event's dedupe key: its `unique_id`, else its time to the second, else
/// the second it was received ("Using the default, this limits only one event per profile per
/// second").
pub(crate) fn event_instant(attributes: &Json, received: DateTime<Utc>) -> String {
    if let Some(unique_id) = attributes.get("unique_id").and_then(Json::as_str) {
        return format!("unique_id:{unique_id}");
    }
    let time = attributes
        .get("time")
        .and_then(Json::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or(received, |t| t.with_timezone(&Utc));
    format!("second:{}", time.timestamp())
}

/// The whole dedupe key of an event: profile, metric, and unique id (or second).
pub(crate) fn event_key(profile_key: &str, metric: &str, instant: &str) -> String {
    serde_json::to_string(&[profile_key, metric, instant]).expect("strings serialise")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn e164() {
        assert!(is_e164("+15005550006"));
        assert!(is_e164("+6421234567"));
        assert!(!is_e164("15005550006"));
        assert!(!is_e164("+0123456789"));
        assert!(!is_e164("+1 500 555 0006"));
        assert!(!is_e164("+12345"));
        assert!(!is_e164("+1234567890123456"));
    }

    #[test]
    fn emails() {
        assert!(is_email("a@b.co"));
        assert!(!is_email("a@b"));
        assert!(!is_email("@b.co"));
        assert!(!is_email("a b@c.co"));
        assert!(!is_email("a@@b.co"));
    }

    #[test]
    fn profile_keys_prefer_email() {
        let profile = json!({"type": "profile", "id": "P1", "attributes": {"phone_number": "+15005550006", "email": "A@B.co"}});
        assert_eq!(profile_key(&profile).as_deref(), Some("email:a@b.co"));
        let profile = json!({"type": "profile", "id": "P1", "attributes": {}});
        assert_eq!(profile_key(&profile).as_deref(), Some("id:P1"));
        assert_eq!(
            profile_key(&json!({"type": "profile", "attributes": {"email": null}})),
            None
        );
    }

    #[test]
    fn without_unique_id_the_second_is_the_key() {
        let now = Utc::now();
        let a = json!({"time": "2026-03-13T23:15:30.250+00:00"});
        let b = json!({"time": "2026-03-13T23:15:30.900Z"});
        assert_eq!(event_instant(&a, now), event_instant(&b, now));
        assert_eq!(
            event_instant(&json!({"unique_id": "u"}), now),
            "unique_id:u"
        );
    }
}
