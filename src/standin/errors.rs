//! Klaviyo's error bodies (JSON:API `errors`) and the stand-in's answers.
//!
//! The shape follows what Klaviyo sends: every error has `id` (a UUID), `status` (a number),
//! `code`, `title`, `detail`, `source` (`pointer`, or `parameter` for a header or query
//! parameter), `links` and `meta`. Codes and titles are Klaviyo's (they are Django REST
//! Framework's: `not_authenticated`, `permission_denied`, `throttled` with
//! "Request was throttled. Expected available in 1 second.", `invalid`, `parse_error`, ...);
//! 409 is `duplicate_profile` with `meta.duplicate_profile_id`.

use super::limits::RateHeaders;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value as Json, json};

/// Klaviyo's media type, for every body it sends.
pub(crate) const JSON_API: &str = "application/vnd.api+json";

/// Where an error points: a place in the body, or a header or query parameter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Source {
    Pointer(String),
    Parameter(String),
}

/// One entry of `errors`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) title: &'static str,
    pub(crate) detail: String,
    pub(crate) source: Source,
    pub(crate) meta: Json,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, title: &'static str, detail: String) -> Self {
        ApiError {
            status,
            code,
            title,
            detail,
            source: Source::Pointer("/data/".into()),
            meta: json!({}),
        }
    }

    /// 400: the body breaks a rule; `pointer` is the JSON pointer of the offending value.
    pub(crate) fn invalid(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        ApiError {
            source: Source::Pointer(pointer.into()),
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "invalid",
                "Invalid input.",
                detail.into(),
            )
        }
    }

    /// 400: a required header (or query parameter) is missing or malformed.
    pub(crate) fn invalid_parameter(
        parameter: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        ApiError {
            source: Source::Parameter(parameter.into()),
            ..Self::invalid("", detail)
        }
    }

    /// 400: the body is not JSON.
    pub(crate) fn parse_error(detail: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "parse_error",
            "Malformed request.",
            format!("JSON parse error - {detail}"),
        )
    }

    pub(crate) fn not_authenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "not_authenticated",
            "Authentication credentials were not provided.",
            "Missing or invalid private key.".into(),
        )
    }

    pub(crate) fn permission_denied(scopes: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "permission_denied",
            "You do not have permission to perform this action.",
            format!("This API key is missing required scopes: {scopes}."),
        )
    }

    pub(crate) fn throttled(retry_after: u64) -> Self {
        let unit = if retry_after == 1 {
            "second"
        } else {
            "seconds"
        };
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "throttled",
            "Request was throttled.",
            format!("Request was throttled. Expected available in {retry_after} {unit}."),
        )
    }

    pub(crate) fn not_found(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "Not found.",
            detail.into(),
        )
    }

    pub(crate) fn method_not_allowed(method: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Method not allowed.",
            format!("Method \"{method}\" not allowed."),
        )
    }

    pub(crate) fn unsupported_media_type(media_type: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Unsupported media type.",
            format!("Unsupported media type \"{media_type}\" in request."),
        )
    }

    /// 409: the identifiers sent belong to another profile than the one matched.
    pub(crate) fn duplicate_profile(duplicate_profile_id: &str) -> Self {
        ApiError {
            source: Source::Pointer("/data/attributes".into()),
            meta: json!({ "duplicate_profile_id": duplicate_profile_id }),
            ..Self::new(
                StatusCode::CONFLICT,
                "duplicate_profile",
                "Conflict.",
                "A profile already exists with one of these identifiers.".into(),
            )
        }
    }

    pub(crate) fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "Service unavailable.",
            "The service is temporarily unavailable. Try again later.".into(),
        )
    }

    pub(crate) fn to_json(&self) -> Json {
        let source = match &self.source {
            Source::Pointer(pointer) => json!({ "pointer": pointer }),
            Source::Parameter(parameter) => json!({ "parameter": parameter }),
        };
        json!({
            "id": new_uuid(),
            "status": self.status.as_u16(),
            "code": self.code,
            "title": self.title,
            "detail": self.detail,
            "source": source,
            "links": {},
            "meta": self.meta,
        })
    }
}

/// A random (version 4) UUID, as Klaviyo gives every error.
pub(crate) fn new_uuid() -> String {
    let b: [u8; 16] = rand::random();
    let hex = |range: std::ops::Range<usize>| -> String {
        b[range].iter().map(|x| format!("{x:02x}")).collect()
    };
    let variant = format!("{:02x}", (b[8] & 0x3f) | 0x80);
    format!(
        "{}-{}-4{}-{}{}-{}",
        hex(0..4),
        hex(4..6),
        &hex(6..8)[1..],
        variant,
        hex(9..10),
        hex(10..16)
    )
}

/// An answer before it becomes HTTP: status, body, and the rate-limit headers that go with it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) body: Option<Json>,
    /// `RateLimit-*`: on every answer except a 429, as Klaviyo documents.
    pub(crate) rate: Option<RateHeaders>,
    /// `Retry-After` (seconds): on a 429.
    pub(crate) retry_after: Option<u64>,
}

impl Reply {
    pub(crate) fn empty(status: StatusCode) -> Reply {
        Reply {
            status,
            body: None,
            rate: None,
            retry_after: None,
        }
    }

    pub(crate) fn json(status: StatusCode, body: Json) -> Reply {
        Reply {
            body: Some(body),
            ..Reply::empty(status)
        }
    }

    /// Errors, all of one status (the first's).
    pub(crate) fn errors(errors: Vec<ApiError>) -> Reply {
        let status = errors.first().map_or(StatusCode::BAD_REQUEST, |e| e.status);
        let body = json!({ "errors": errors.iter().map(ApiError::to_json).collect::<Vec<_>>() });
        Reply::json(status, body)
    }

    pub(crate) fn error(error: ApiError) -> Reply {
        Reply::errors(vec![error])
    }

    pub(crate) fn throttled(retry_after: u64) -> Reply {
        Reply {
            retry_after: Some(retry_after),
            ..Reply::error(ApiError::throttled(retry_after))
        }
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = match self.body {
            Some(body) => (
                self.status,
                [(header::CONTENT_TYPE, HeaderValue::from_static(JSON_API))],
                body.to_string(),
            )
                .into_response(),
            None => self.status.into_response(),
        };
        let headers = response.headers_mut();
        if let Some(rate) = self.rate {
            headers.insert("ratelimit-limit", rate.limit.into());
            headers.insert("ratelimit-remaining", rate.remaining.into());
            headers.insert("ratelimit-reset", rate.reset.into());
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_version_4() {
        let id = new_uuid();
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'), "{id}");
        assert!(matches!(&parts[3][..1], "8" | "9" | "a" | "b"), "{id}");
    }
}
