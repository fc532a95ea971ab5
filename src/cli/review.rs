//! What `dead`, `exceptions` and `warnings` share: `--since`, how times and ages are shown,
//! and what a letter or flagged request concerns.
//!
//! The store keeps bodies and deliveries as opaque text; reading an order id or an email out of
//! them for display happens here, and only for display.

use serde_json::Value as Json;

/// `--since`: an RFC 3339 time, or a duration back from now (`90m`, `24h`, `7d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    At(i64),
    Ago(i64),
}

impl Since {
    /// The earliest time (unix ms) the command shows.
    pub fn start(self, now: i64) -> i64 {
        match self {
            Since::At(at) => at,
            Since::Ago(ms) => now.saturating_sub(ms),
        }
    }
}

/// Parses `--since` for clap, so a bad value is a usage error (exit 2).
pub fn parse_since(text: &str) -> Result<Since, String> {
    let text = text.trim();
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(Since::At(at.timestamp_millis()));
    }
    let unit_at = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(unit_at);
    let ms_per = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => 0,
    };
    match number.parse::<i64>() {
        Ok(n) if ms_per > 0 => n
            .checked_mul(ms_per)
            .map(Since::Ago)
            .ok_or_else(|| format!("`{text}` is too long ago")),
        _ => Err(format!(
            "`{text}` is neither an RFC 3339 time (2026-03-13T09:00:00Z) nor a duration \
             (30m, 24h, 7d)"
        )),
    }
}

/// A time as RFC 3339 UTC, to the second.
pub fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// How long ago, shortly: `45s`, `12m`, `5h`, `3d`.
pub fn age(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3_600 => format!("{}m", s / 60),
        3_600..86_400 => format!("{}h", s / 3_600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Text on one line, cut to `max` characters.
pub fn one_line(text: &str, max: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &flat[..at]),
        None => flat,
    }
}

/// Stored text as JSON when it is JSON, else as a string.
pub fn json_or_text(text: &str) -> Json {
    serde_json::from_str(text).unwrap_or_else(|_| Json::String(text.to_owned()))
}

/// The order and profile a request (or, without one, a delivery) is about: `order 5001`,
/// `buyer@example.com`, both, or `None` when neither can be read.
pub fn concerns(body: Option<&str>, delivery: &str) -> Option<String> {
    let body = body.and_then(|b| serde_json::from_str::<Json>(b).ok());
    let delivery = serde_json::from_str::<Json>(delivery).ok();
    let order = body
        .as_ref()
        .and_then(|b| find(b, &|key, _| key == "OrderId"))
        .or_else(|| {
            let order = delivery
                .as_ref()
                .and_then(|d| find(d, &|key, v| key == "order" && v.is_object()))?;
            find(order, &|key, _| key == "legacyId").or_else(|| order.get("id"))
        });
    let profile = body
        .as_ref()
        .and_then(|b| find(b, &|key, v| key == "email" && v.is_string()))
        .or_else(|| {
            delivery
                .as_ref()
                .and_then(|d| find(d, &|key, v| key == "emailAddress" && v.is_string()))
        });
    let shown = |v: &Json| match v {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    };
    match (order.map(shown), profile.map(shown)) {
        (Some(order), Some(email)) => Some(format!("order {order}, {email}")),
        (Some(order), None) => Some(format!("order {order}")),
        (None, Some(email)) => Some(email),
        (None, None) => None,
    }
}

/// The first value (depth first, in document order) whose key passes `wanted`; nulls skipped.
fn find<'a>(value: &'a Json, wanted: &dyn Fn(&str, &Json) -> bool) -> Option<&'a Json> {
    match value {
        Json::Object(map) => map.iter().find_map(|(key, v)| {
            if !v.is_null() && wanted(key, v) {
                Some(v)
            } else {
                find(v, wanted)
            }
        }),
        Json::Array(items) => items.iter().find_map(|v| find(v, wanted)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_time_or_a_duration() {
        assert_eq!(parse_since("24h"), Ok(Since::Ago(86_400_000)));
        assert_eq!(parse_since("7d"), Ok(Since::Ago(7 * 86_400_000)));
        assert_eq!(parse_since("30m").map(|s| s.start(1_800_000)), Ok(0));
        assert_eq!(parse_since("1970-01-01T00:00:01Z"), Ok(Since::At(1_000)));
        for bad in ["yesterday", "24", "h", "-1d", "2026-13-01", ""] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn concerns_reads_the_order_and_profile() {
        let event = r#"{"data": {"attributes": {"properties": {"OrderId": "5001"},
            "profile": {"data": {"attributes": {"email": "a@b.co"}}}}}}"#;
        assert_eq!(concerns(Some(event), "{}").unwrap(), "order 5001, a@b.co");
        let record = r#"{"node": {"order": {"id": "T3Jk", "legacyId": 77, "emailAddress": null}}}"#;
        assert_eq!(concerns(None, record).unwrap(), "order 77");
        assert_eq!(concerns(None, "not json"), None);
    }

    #[test]
    fn ages_are_short() {
        assert_eq!(age(59_000), "59s");
        assert_eq!(age(3 * 3_600_000), "3h");
        assert_eq!(age(-5), "0s");
    }
}
