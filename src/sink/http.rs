//! One request to Klaviyo, and what its answer means for the request.
//!
//! Klaviyo's status codes are sorted here into the few outcomes the sink acts on: accepted,
//! try again (and when), refused for good (with Klaviyo's own errors, for the dead-letter
//! store), a duplicate profile, or a key that does not work (which stops everything). The API
//! key lives only inside this module's [`ApiKey`], whose `Debug` never shows it.

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
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
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
    key: ApiKey,
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
        Client {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            key,
            revision: revision.to_owned(),
        }
    }

    /// POSTs `body` to `path`; `scale` converts Klaviyo's seconds to this clock's (tests).
    pub async fn post(&self, path: &str, body: &Json, scale: f64) -> (Outcome, RateInfo) {
        let request = self
            .http
            .post(format!("{}{path}", self.base_url))
            .header("Authorization", format!("Klaviyo-API-Key {}", self.key.0))
            .header("revision", &self.revision)
            .header("Accept", "application/vnd.api+json")
            .header("Content-Type", "application/vnd.api+json")
            .body(serde_json::to_vec(body).expect("a JSON value serialises"));
        self.answer(request.send().await, scale).await
    }

    /// GETs `path` (bulk job status and errors).
    pub async fn get(&self, path: &str, scale: f64) -> (Outcome, RateInfo) {
        let request = self
            .http
            .get(format!("{}{path}", self.base_url))
            .header("Authorization", format!("Klaviyo-API-Key {}", self.key.0))
            .header("revision", &self.revision)
            .header("Accept", "application/vnd.api+json");
        self.answer(request.send().await, scale).await
    }

    async fn answer(
        &self,
        sent: Result<reqwest::Response, reqwest::Error>,
        scale: f64,
    ) -> (Outcome, RateInfo) {
        let response = match sent {
            Ok(response) => response,
            Err(err) => {
                let reason = if err.is_timeout() {
                    "timed out".to_owned()
                } else {
                    // reqwest's message names the URL but never the headers, so no key leaks.
                    format!("connection failed: {err}")
                };
                return (
                    Outcome::Retry {
                        reason,
                        after: None,
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
                let reason = format!("the answer ({status}) was cut off: {err}");
                return (
                    Outcome::Retry {
                        reason,
                        after: None,
                    },
                    rate,
                );
            }
        };
        let body: Option<Json> = serde_json::from_str(&text).ok();
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
