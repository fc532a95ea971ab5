//! One request to Klaviyo, and what its answer means for the request.
//!
//! Klaviyo's status codes are sorted here into the few outcomes the sink acts on: accepted,
//! try again (and when), refused for good (with Klaviyo's own errors, for the dead-letter
//! store), a duplicate profile, or a key that does not work (which stops everything). The API
//! key lives only inside this module's [`ApiKey`], whose `Debug` never shows it.

use bytes::Bytes;
use serde_json::Value as Json;
use std::fmt;
use std::time::Duration;

/// The Klaviyo private API key. Printed, it is `***`.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> ApiKey {
        ApiKey(key.into())
    }

    /// The key, if it can be sent at all: a character that cannot be in an HTTP header would
    /// fail every request. The problem never quotes the key.
    pub fn checked(key: impl Into<String>) -> Result<ApiKey, &'static str> {
        let key = key.into();
        if key.chars().any(char::is_control) {
            return Err("holds a control character, which cannot be sent in an HTTP header");
        }
        if !key.chars().all(|c| c.is_ascii_graphic()) {
            return Err("holds a space or a non-ASCII character; Klaviyo keys have neither");
        }
        Ok(ApiKey(key))
    }

    /// The key itself, for the header that carries it; never for a message.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with the key, wherever it appears, replaced by `***`. Text from outside
    /// marketsync (Klaviyo's answers, a proxy's, a network error) goes through this before it
    /// is printed or stored: a proxy that echoes the `Authorization` header must not get the
    /// key onto a terminal or into the state file.
    pub fn redact(&self, text: &str) -> String {
        if self.0.is_empty() {
            text.to_owned()
        } else {
            text.replace(&self.0, "***")
        }
    }

    /// [`ApiKey::redact`] on every string and object key in a JSON value.
    pub fn redact_json(&self, value: &mut Json) {
        match value {
            Json::String(text) if !self.0.is_empty() && text.contains(&self.0) => {
                *text = self.redact(text);
            }
            Json::Array(items) => items.iter_mut().for_each(|v| self.redact_json(v)),
            Json::Object(map) if !self.0.is_empty() => {
                let entries = std::mem::take(map);
                for (name, mut v) in entries {
                    self.redact_json(&mut v);
                    map.insert(self.redact(&name), v);
                }
            }
            _ => {}
        }
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

/// Whether the key may be sent to `base_url`: over https anywhere, over plain http only to
/// this machine (a stand-in), because anyone on the way reads a plain-http header. The problem
/// names the host, never the whole URL (which could hold a password).
pub fn check_base_url(base_url: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(base_url)
        .map_err(|e| format!("is not a URL ({e}): expected https://a.klaviyo.com or the like"))?;
    let host = url.host_str().unwrap_or_default();
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" if !host.is_empty() => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(format!(
            "http://{host} would carry the API key unencrypted: use https:// (plain http:// is \
             only for a stand-in on this machine: 127.0.0.1, ::1 or localhost)"
        )),
        scheme => Err(format!(
            "has the scheme `{scheme}`: expected https:// (or http:// to this machine)"
        )),
    }
}

/// Whether `revision` can be one of Klaviyo's API revisions: `YYYY-MM-DD[.suffix]` (the
/// spec's format; `.pre` marks a beta), a real date, and not after `today` (Klaviyo answers an
/// unknown revision with 400, every request alike).
pub fn check_revision(revision: &str, today: chrono::NaiveDate) -> Result<(), String> {
    let (date, suffix) = match revision.split_once('.') {
        Some((date, suffix)) => (date, Some(suffix)),
        None => (revision, None),
    };
    let shape = date.len() == 10
        && suffix.is_none_or(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric()));
    let day = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d")
        .ok()
        .filter(|_| shape)
        .ok_or(
            "is not a Klaviyo API revision: expected YYYY-MM-DD[.suffix] with a real date, \
                e.g. 2026-07-15",
        )?;
    if day > today {
        return Err(format!(
            "is after today ({today}): Klaviyo has released no such revision"
        ));
    }
    Ok(())
}

/// One error object of a Klaviyo JSON:API error response.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApiError {
    pub code: String,
    pub title: String,
    pub detail: String,
    pub pointer: Option<String>,
}

/// What an answer means for the request that got it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// 2xx: done.
    Accepted { status: u16, body: Option<Json> },
    /// Worth trying again: connection errors, timeouts, 429 and 5xx.
    Retry {
        reason: String,
        after: Option<Duration>,
        /// Klaviyo's status, when it answered at all.
        status: Option<u16>,
    },
    /// 409 `duplicate_profile`: the email and phone belong to different profiles.
    DuplicateProfile {
        errors: Vec<ApiError>,
        existing_profile: Option<String>,
    },
    /// Other 4xx: Klaviyo will refuse it again, so it is not retried.
    Refused { status: u16, errors: Vec<ApiError> },
    /// 401 or 403: the key is wrong or lacks a scope; nothing else will work either.
    KeyRefused { status: u16, detail: String },
}

/// What the `RateLimit-*` headers said.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateInfo {
    pub remaining: Option<u64>,
    pub reset: Option<Duration>,
}

/// A connection to Klaviyo's API (or a stand-in), reused for every request.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base_url: String,
    /// Only to redact it from what comes back.
    key: ApiKey,
    /// `Klaviyo-API-Key …`, marked sensitive so that no `Debug` of a request shows it and
    /// HTTP/2 never puts it in a compression table.
    authorization: reqwest::header::HeaderValue,
    revision: String,
}

impl Client {
    pub fn new(base_url: &str, key: ApiKey, revision: &str, timeout: Duration) -> Client {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(64)
            .user_agent(concat!("marketsync/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client with these settings builds");
        // A key that cannot be a header value (`ApiKey::checked` refuses those) goes as an
        // empty one: Klaviyo's 401 stops the run once, rather than every request failing.
        let mut authorization =
            reqwest::header::HeaderValue::from_str(&format!("Klaviyo-API-Key {}", key.0))
                .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static(""));
        authorization.set_sensitive(true);
        Client {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            key,
            authorization,
            revision: revision.to_owned(),
        }
    }

    /// A request to `path` with the key, the revision and the media type.
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base_url))
            .header(reqwest::header::AUTHORIZATION, self.authorization.clone())
            .header("revision", &self.revision)
            .header("Accept", "application/vnd.api+json")
    }

    /// POSTs `body` to `path`; `scale` converts Klaviyo's seconds to this clock's (tests).
    /// The body is JSON text already: a queued request's stored text, or a bulk job
    /// serialised once and shared by its attempts.
    pub async fn post(&self, path: &str, body: Bytes, scale: f64) -> (Outcome, RateInfo) {
        let request = self
            .request(reqwest::Method::POST, path)
            .header("Content-Type", "application/vnd.api+json")
            .body(body);
        self.answer(request.send().await, scale).await
    }

    /// GETs `path` (bulk job status and errors).
    pub async fn get(&self, path: &str, scale: f64) -> (Outcome, RateInfo) {
        let request = self.request(reqwest::Method::GET, path);
        self.answer(request.send().await, scale).await
    }

    async fn answer(
        &self,
        sent: Result<reqwest::Response, reqwest::Error>,
        scale: f64,
    ) -> (Outcome, RateInfo) {
        // Everything read from the answer below is redacted (see `ApiKey::redact`) before it
        // leaves this function.
        let response = match sent {
            Ok(response) => response,
            Err(err) => {
                let reason = if err.is_timeout() {
                    "timed out".to_owned()
                } else {
                    self.key.redact(&format!("connection failed: {err}"))
                };
                return (
                    Outcome::Retry {
                        reason,
                        after: None,
                        status: None,
                    },
                    RateInfo::default(),
                );
            }
        };
        let status = response.status().as_u16();
        let headers = response.headers();
        let number = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        let seconds = |s: f64| Duration::from_secs_f64((s / scale).max(0.0));
        let rate = RateInfo {
            remaining: number("RateLimit-Remaining").map(|n| n as u64),
            reset: number("RateLimit-Reset").map(seconds),
        };
        let retry_after = number("Retry-After").map(seconds).or_else(|| {
            headers
                .get("Retry-After")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| httpdate::parse_http_date(v).ok())
                .and_then(|t| t.duration_since(std::time::SystemTime::now()).ok())
        });
        let text = match response.text().await {
            Ok(text) => text,
            Err(err) => {
                let reason = self
                    .key
                    .redact(&format!("the answer ({status}) was cut off: {err}"));
                return (
                    Outcome::Retry {
                        reason,
                        after: None,
                        status: Some(status),
                    },
                    rate,
                );
            }
        };
        let mut body: Option<Json> = serde_json::from_str(&text).ok();
        if let Some(body) = &mut body {
            self.key.redact_json(body);
        }
        (classify(status, body, retry_after), rate)
    }
}

/// Klaviyo's errors from a JSON:API error body.
pub fn api_errors(body: Option<&Json>) -> Vec<ApiError> {
    let Some(errors) = body.and_then(|b| b.get("errors")).and_then(Json::as_array) else {
        return Vec::new();
    };
    let text = |e: &Json, key: &str| {
        e.get(key)
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    errors
        .iter()
        .map(|e| ApiError {
            code: text(e, "code"),
            title: text(e, "title"),
            detail: text(e, "detail"),
            pointer: e
                .pointer("/source/pointer")
                .and_then(Json::as_str)
                .map(str::to_owned),
        })
        .collect()
}

/// The outcome of an answer.
pub fn classify(status: u16, body: Option<Json>, retry_after: Option<Duration>) -> Outcome {
    match status {
        200..=299 => Outcome::Accepted { status, body },
        401 | 403 => {
            let errors = api_errors(body.as_ref());
            let detail = errors
                .first()
                .map(|e| format!("{}: {}", e.code, e.detail))
                .unwrap_or_default();
            Outcome::KeyRefused { status, detail }
        }
        409 => {
            let existing_profile = body
                .as_ref()
                .and_then(|b| b.pointer("/errors/0/meta/duplicate_profile_id"))
                .and_then(Json::as_str)
                .map(str::to_owned);
            Outcome::DuplicateProfile {
                errors: api_errors(body.as_ref()),
                existing_profile,
            }
        }
        408 | 429 | 500..=599 => Outcome::Retry {
            reason: match status {
                429 => "throttled (429)".to_owned(),
                _ => format!("Klaviyo answered {status}"),
            },
            after: retry_after,
            status: Some(status),
        },
        _ => Outcome::Refused {
            status,
            errors: api_errors(body.as_ref()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn statuses_map_to_outcomes() {
        assert!(matches!(
            classify(202, None, None),
            Outcome::Accepted { status: 202, .. }
        ));
        for status in [429, 500, 503, 504, 524] {
            assert!(
                matches!(classify(status, None, None), Outcome::Retry { .. }),
                "{status}"
            );
        }
        assert!(matches!(
            classify(401, None, None),
            Outcome::KeyRefused { status: 401, .. }
        ));
        assert!(matches!(
            classify(403, None, None),
            Outcome::KeyRefused { status: 403, .. }
        ));
        let body = json!({"errors": [{"id": "x", "status": 400, "code": "invalid", "title": "Invalid input.",
            "detail": "Invalid phone number format", "source": {"pointer": "/data/attributes/phone_number"}}]});
        assert_eq!(
            classify(400, Some(body), None),
            Outcome::Refused {
                status: 400,
                errors: vec![ApiError {
                    code: "invalid".into(),
                    title: "Invalid input.".into(),
                    detail: "Invalid phone number format".into(),
                    pointer: Some("/data/attributes/phone_number".into()),
                }]
            }
        );
        let body = json!({"errors": [{"status": 409, "code": "duplicate_profile", "title": "Conflict.", "detail": "A profile already exists with one of these identifiers.", "meta": {"duplicate_profile_id": "01ABC"}}]});
        match classify(409, Some(body), None) {
            Outcome::DuplicateProfile {
                existing_profile,
                errors,
            } => {
                assert_eq!(existing_profile.as_deref(), Some("01ABC"));
                assert_eq!(errors[0].code, "duplicate_profile");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_key_goes_over_https_or_to_this_machine_only() {
        for ok in [
            "https://a.klaviyo.com",
            "https://staging.example.com:8443/",
            "http://127.0.0.1:8765",
            "http://127.8.0.1",
            "http://localhost:8765/",
            "http://LOCALHOST",
            "http://[::1]:8765",
        ] {
            assert_eq!(check_base_url(ok), Ok(()), "{ok}");
        }
        for refused in [
            "http://a.klaviyo.com",
            "http://10.0.0.5:8765",
            "http://192.168.1.20",
            "http://localhost.example.com",
            "http://[::2]:8765",
            "ftp://127.0.0.1",
            "a.klaviyo.com",
            "",
        ] {
            assert!(check_base_url(refused).is_err(), "{refused}");
        }
        let problem = check_base_url("http://user:secret@proxy.example.com/x").unwrap_err();
        assert!(!problem.contains("secret"), "{problem}");
    }

    #[test]
    fn revisions_are_real_dates_up_to_today() {
        let today = chrono::NaiveDate::from_ymd_opt(2026, 12, 3).unwrap();
        for ok in ["2026-07-15", "2026-10-15.pre", "2023-02-22", "2026-12-03"] {
            assert_eq!(check_revision(ok, today), Ok(()), "{ok}");
        }
        for bad in [
            "2026-12-04",
            "2027-01-15",
            "2026-02-30",
            "2026-7-15",
            "2026-07-15.",
            "2026-07-15.pre x",
            "latest",
            "",
        ] {
            let problem = check_revision(bad, today).unwrap_err();
            assert!(!problem.is_empty(), "{bad}");
        }
    }

    #[test]
    fn a_key_that_cannot_be_a_header_is_refused_without_being_quoted() {
        assert!(ApiKey::checked("pk_0123abcdef").is_ok());
        for bad in [
            "pk_01\u{1}23",
            "pk_01\n23",
            "pk_01 23",
            "pk_01é23",
            "pk_01\u{7f}23",
        ] {
            let problem = ApiKey::checked(bad).unwrap_err();
            assert!(!problem.contains("pk_01"), "{problem}");
        }
    }

    #[test]
    fn the_authorization_header_is_sensitive() {
        let client = Client::new(
            "http://127.0.0.1:1",
            ApiKey::new("pk_live_secret"),
            "2026-07-15",
            Duration::from_secs(1),
        );
        for method in [reqwest::Method::POST, reqwest::Method::GET] {
            let request = client.request(method, "/api/events").build().unwrap();
            let auth = &request.headers()["authorization"];
            assert!(auth.is_sensitive());
            assert!(!format!("{request:?}").contains("pk_live_secret"));
        }
    }

    #[test]
    fn the_key_is_redacted_from_text_and_json() {
        let key = ApiKey::new("pk_abc");
        assert_eq!(
            key.redact("Klaviyo-API-Key pk_abc, again pk_abc"),
            "Klaviyo-API-Key ***, again ***"
        );
        let mut body =
            json!({"errors": [{"detail": "got pk_abc", "meta": {"pk_abc": ["x pk_abc"]}}], "n": 1});
        key.redact_json(&mut body);
        assert_eq!(
            body,
            json!({"errors": [{"detail": "got ***", "meta": {"***": ["x ***"]}}], "n": 1})
        );
        assert_eq!(ApiKey::new("").redact("text"), "text");
    }

    #[test]
    fn the_key_never_prints() {
        let key = ApiKey::new("pk_live_secret");
        assert_eq!(format!("{key:?}"), "ApiKey(***)");
        let client = Client::new(
            "http://127.0.0.1:1",
            key,
            "2026-07-15",
            Duration::from_secs(1),
        );
        assert!(!format!("{client:?}").contains("pk_live_secret"));
    }
}
