//! Marketplacer's GraphQL Operator API, read: the facts `reconcile` checks the ledger against.
//!
//! Webhooks get lost (a webhook disabled after one bad answer, a receiver down for longer than
//! Marketplacer retries, an event kept only 3 days), so marketsync also pulls what changed.
//! This client is the one place that talks to Marketplacer's API, and it is a polite one,
//! because the key it uses is the operator's, shared with their other integrations:
//!
//! - it paces itself under the published limit (750 requests per 10 s per key, configurable),
//!   with the same sliding-window limiter the Klaviyo sender uses, so a 429 is rare;
//! - a 429 or 503 waits for `Retry-After` when given, else at least a minute (Marketplacer's
//!   guidance), doubling while refusals go on; 5xx and timeouts are tried again the same way,
//!   up to `max_attempts`; an instance that cannot be reached at all is said at once;
//! - GraphQL `errors` become one message naming the operation and each error's path, and a
//!   response with errors is never used in part;
//! - the key goes in the `MARKETPLACER-API-KEY` header only, and anything quoted from an answer
//!   is redacted, so the key is never printed or stored.
//!
//! It counts the requests it made and the time it waited (pacing and retries), for the
//! summary: a reconciliation that takes long should say whether Marketplacer's limits are why.
//!
//! Sources: marketplacer.md §3.1 (endpoint, header, limits, 429/503 and `Retry-After`, wait at
//! least 60 s without it), §3.2 (Relay connections, pages of at most 500, forward only).

pub mod settings;

pub use settings::{MAX_PAGE_SIZE, MarketplacerSettings, RateLimit};

use crate::sink::http::ApiKey;
use crate::sink::limit::{Limit, Limiter};
use reqwest::StatusCode;
use serde_json::{Value as Json, json};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The header carrying the Operator API key.
pub const KEY_HEADER: &str = "MARKETPLACER-API-KEY";

/// Longest wait between two tries, however many refusals came before.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(15 * 60);

/// How the client behaves: [`MarketplacerSettings`] as durations (tests use fractions of a
/// second where a client.yaml writes whole ones).
#[derive(Debug, Clone)]
pub struct Options {
    pub rate_limit: u32,
    pub rate_window: Duration,
    pub retry_wait: Duration,
    pub max_attempts: u32,
    pub timeout: Duration,
}

impl From<&MarketplacerSettings> for Options {
    fn from(settings: &MarketplacerSettings) -> Options {
        Options {
            rate_limit: settings.rate_limit.requests.max(1),
            rate_window: settings.rate_limit.per.duration(),
            retry_wait: settings.retry_wait.duration(),
            max_attempts: settings.max_attempts.max(1),
            timeout: settings.timeout.duration(),
        }
    }
}

/// Why a query got no data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MarketplacerError {
    #[error(
        "cannot reach Marketplacer at {url}: {reason} (check `marketplacer: url` in client.yaml, \
         or --marketplacer-url)"
    )]
    Unreachable { url: String, reason: String },
    #[error(
        "Marketplacer refused the API key (HTTP {status}): check that the variable holds an \
         Operator API key of this instance (the key is not printed)"
    )]
    KeyRefused { status: u16 },
    #[error("Marketplacer did not answer {operation} after {attempts} tries; the last: {last}")]
    Unavailable {
        operation: String,
        attempts: u32,
        last: String,
    },
    #[error("Marketplacer answered {operation} with errors: {messages}")]
    Graphql { operation: String, messages: String },
    #[error("Marketplacer answered {operation} with HTTP {status}: {excerpt}")]
    Http {
        operation: String,
        status: u16,
        excerpt: String,
    },
    #[error("Marketplacer's answer to {operation} is not a GraphQL answer: {problem}")]
    Malformed { operation: String, problem: String },
    #[error("marketplacer url `{url}` {problem}")]
    BadUrl { url: String, problem: String },
}

/// A client of one instance's GraphQL endpoint.
pub struct Client {
    http: reqwest::Client,
    endpoint: reqwest::Url,
    key: ApiKey,
    limiter: tokio::sync::Mutex<Limiter>,
    options: Options,
    requests: AtomicU64,
    waited_ms: AtomicU64,
    answering_ms: AtomicU64,
}

/// The GraphQL endpoint of an instance's address: `/graphql` there, unless the address
/// already ends with it. Plain http only to this machine (a stand-in): the key would travel
/// in clear.
pub fn endpoint(url: &str) -> Result<reqwest::Url, MarketplacerError> {
    let bad = |problem: String| MarketplacerError::BadUrl {
        url: url.to_owned(),
        problem,
    };
    let mut parsed = reqwest::Url::parse(url.trim()).map_err(|e| {
        bad(format!(
            "is not a URL ({e}): expected the instance's address, such as https://acme.marketplacer.com"
        ))
    })?;
    crate::sink::http::check_base_url(parsed.as_str()).map_err(bad)?;
    if !parsed.path().trim_end_matches('/').ends_with("/graphql") {
        let path = format!("{}/graphql", parsed.path().trim_end_matches('/'));
        parsed.set_path(&path);
    }
    Ok(parsed)
}

impl Client {
    /// A client of the instance at `url` (see [`endpoint`]).
    pub fn new(url: &str, key: ApiKey, options: Options) -> Result<Client, MarketplacerError> {
        let endpoint = endpoint(url)?;
        let http = reqwest::Client::builder()
            .timeout(options.timeout)
            .user_agent(concat!("marketsync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| MarketplacerError::BadUrl {
                url: url.to_owned(),
                problem: format!("no HTTP client: {e}"),
            })?;
        let window = options.rate_window.max(Duration::from_millis(1));
        let limit = Limit {
            burst: options.rate_limit,
            burst_window: window,
            steady: options.rate_limit,
            steady_window: window,
        };
        Ok(Client {
            http,
            endpoint,
            key,
            limiter: tokio::sync::Mutex::new(Limiter::new(limit)),
            options,
            requests: AtomicU64::new(0),
            waited_ms: AtomicU64::new(0),
            answering_ms: AtomicU64::new(0),
        })
    }

    /// The endpoint queries go to.
    pub fn endpoint(&self) -> &reqwest::Url {
        &self.endpoint
    }

    /// Requests sent so far, tries included.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Time spent waiting on Marketplacer's limits so far: pacing, and waits after a 429, 503,
    /// 5xx or timeout.
    pub fn waited(&self) -> Duration {
        Duration::from_millis(self.waited_ms.load(Ordering::Relaxed))
    }

    /// Time spent waiting for Marketplacer's answers so far (from sending a request to its
    /// whole body received), tries included.
    pub fn answering(&self) -> Duration {
        Duration::from_millis(self.answering_ms.load(Ordering::Relaxed))
    }

    fn wait_counted(&self, wait: Duration) {
        self.waited_ms
            .fetch_add(wait.as_millis() as u64, Ordering::Relaxed);
    }

    /// Runs `query` (whose operation is `operation`) with `variables`, and returns its `data`.
    pub async fn query(
        &self,
        operation: &str,
        query: &str,
        variables: Json,
    ) -> Result<Json, MarketplacerError> {
        let body = json!({"query": query, "variables": variables, "operationName": operation});
        let mut refusals = 0u32;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            self.pace().await;
            self.requests.fetch_add(1, Ordering::Relaxed);
            let asked = Instant::now();
            let sent = self
                .http
                .post(self.endpoint.clone())
                .header(KEY_HEADER, self.key_value())
                .json(&body)
                .send()
                .await;
            let (why, retry_after) = match sent {
                Err(err) if err.is_connect() => {
                    return Err(MarketplacerError::Unreachable {
                        url: self.endpoint.to_string(),
                        reason: self.key.redact(&describe(&err)),
                    });
                }
                Err(err) => (self.key.redact(&describe(&err)), None),
                Ok(response) => {
                    let status = response.status();
                    let retry_after = retry_after(response.headers());
                    let text = response.text().await.unwrap_or_default();
                    self.answering_ms
                        .fetch_add(asked.elapsed().as_millis() as u64, Ordering::Relaxed);
                    match status {
                        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                            return Err(MarketplacerError::KeyRefused {
                                status: status.as_u16(),
                            });
                        }
                        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                            (format!("HTTP {}", status.as_u16()), Some(retry_after))
                        }
                        s if s.is_server_error() => (
                            format!("HTTP {}: {}", s.as_u16(), self.excerpt(&text)),
                            None,
                        ),
                        s if s.is_success() => return self.data(operation, &text),
                        s => {
                            // A 4xx with a GraphQL body says more than its status.
                            if let Ok(found) = self.data(operation, &text) {
                                return Ok(found);
                            }
                            if let Err(err @ MarketplacerError::Graphql { .. }) =
                                self.data(operation, &text)
                            {
                                return Err(err);
                            }
                            return Err(MarketplacerError::Http {
                                operation: operation.to_owned(),
                                status: s.as_u16(),
                                excerpt: self.excerpt(&text),
                            });
                        }
                    }
                }
            };
            if attempts >= self.options.max_attempts {
                return Err(MarketplacerError::Unavailable {
                    operation: operation.to_owned(),
                    attempts,
                    last: why,
                });
            }
            // A refusal (429/503) names its own wait, or gets Marketplacer's minimum, doubled
            // while refusals go on; other failures back off from the same base.
            let wait = match retry_after {
                Some(Some(named)) => named,
                _ => {
                    refusals += 1;
                    let doubled = self
                        .options
                        .retry_wait
                        .saturating_mul(1u32 << (refusals - 1).min(16));
                    doubled.min(MAX_RETRY_WAIT.max(self.options.retry_wait))
                }
            };
            self.wait_counted(wait);
            tokio::time::sleep(wait).await;
        }
    }

    /// Waits for a slot under the rate limit and takes it.
    async fn pace(&self) {
        let mut limiter = self.limiter.lock().await;
        let now = Instant::now();
        let slot = limiter.next_slot(now);
        if slot > now {
            self.wait_counted(slot - now);
            tokio::time::sleep_until(slot.into()).await;
        }
        limiter.record(Instant::now().max(slot));
    }

    fn key_value(&self) -> reqwest::header::HeaderValue {
        // Checked when the key was read: visible ASCII only.
        let mut value = reqwest::header::HeaderValue::from_str(self.key.expose())
            .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static(""));
        value.set_sensitive(true);
        value
    }

    /// The first 300 characters of an answer, the key taken out.
    fn excerpt(&self, text: &str) -> String {
        let text = self.key.redact(text.trim());
        match text.char_indices().nth(300) {
            Some((at, _)) => format!("{}…", &text[..at]),
            None => text,
        }
    }

    /// The `data` of a GraphQL answer, or its errors as one message.
    fn data(&self, operation: &str, text: &str) -> Result<Json, MarketplacerError> {
        let malformed = |problem: String| MarketplacerError::Malformed {
            operation: operation.to_owned(),
            problem,
        };
        let mut answer: Json = serde_json::from_str(text)
            .map_err(|e| malformed(format!("not JSON ({e}): {}", self.excerpt(text))))?;
        if let Some(errors) = answer.get("errors").filter(|e| !e.is_null()) {
            let messages = match errors.as_array() {
                Some(list) if !list.is_empty() => list
                    .iter()
                    .map(describe_error)
                    .collect::<Vec<_>>()
                    .join("; "),
                _ => errors.to_string(),
            };
            return Err(MarketplacerError::Graphql {
                operation: operation.to_owned(),
                messages: self.key.redact(&messages),
            });
        }
        match answer.get_mut("data").map(Json::take) {
            Some(data @ Json::Object(_)) => Ok(data),
            _ => Err(malformed(format!(
                "no `data` object: {}",
                self.excerpt(text)
            ))),
        }
    }
}

/// One GraphQL error as `message (at path.to.field, line L column C)`.
fn describe_error(error: &Json) -> String {
    let message = error
        .get("message")
        .and_then(Json::as_str)
        .unwrap_or("(no message)");
    let mut place = Vec::new();
    if let Some(path) = error.get("path").and_then(Json::as_array) {
        let path: Vec<String> = path
            .iter()
            .map(|p| match p {
                Json::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        if !path.is_empty() {
            place.push(format!("at {}", path.join(".")));
        }
    }
    if let Some(at) = error
        .get("locations")
        .and_then(Json::as_array)
        .and_then(|l| l.first())
    {
        let number = |key: &str| at.get(key).and_then(Json::as_u64).unwrap_or(0);
        place.push(format!(
            "line {} column {} of the query",
            number("line"),
            number("column")
        ));
    }
    if place.is_empty() {
        message.to_owned()
    } else {
        format!("{message} ({})", place.join(", "))
    }
}

/// A transport error in a sentence, with its causes (reqwest's own message is terse).
fn describe(err: &reqwest::Error) -> String {
    use std::error::Error;
    let mut text = if err.is_timeout() {
        "timed out".to_owned()
    } else {
        err.to_string()
    };
    let mut source = err.source();
    while let Some(cause) = source {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = cause_of(source);
    }
    // The URL reqwest prints may hold a password: the caller names the endpoint itself.
    text.replace(
        &format!(" for url ({})", err.url().map_or("", |u| u.as_str())),
        "",
    )
}

fn cause_of<'a>(
    error: Option<&'a (dyn std::error::Error + 'static)>,
) -> Option<&'a (dyn std::error::Error + 'static)> {
    error.and_then(std::error::Error::source)
}

/// `Retry-After` as a wait: seconds, or an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0)
            .then(|| Duration::from_secs_f64(seconds.min(86_400.0)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_is_graphql_at_the_instance_and_the_key_never_travels_in_clear() {
        let at = |url: &str| endpoint(url).map(|u| u.to_string());
        assert_eq!(
            at("https://acme.marketplacer.com").unwrap(),
            "https://acme.marketplacer.com/graphql"
        );
        assert_eq!(
            at("https://acme.marketplacer.com/graphql").unwrap(),
            "https://acme.marketplacer.com/graphql"
        );
        assert_eq!(
            at("http://127.0.0.1:4000/").unwrap(),
            "http://127.0.0.1:4000/graphql"
        );
        let clear = at("http://acme.marketplacer.com").unwrap_err().to_string();
        assert!(clear.contains("unencrypted"), "{clear}");
        let not_url = at("acme.marketplacer.com").unwrap_err().to_string();
        assert!(
            not_url.contains("https://acme.marketplacer.com"),
            "{not_url}"
        );
    }

    #[test]
    fn graphql_errors_name_their_path_and_place() {
        let error = json!({"message": "Field 'x' doesn't exist", "path": ["invoices", "nodes", 3, "x"],
                           "locations": [{"line": 2, "column": 5}]});
        assert_eq!(
            describe_error(&error),
            "Field 'x' doesn't exist (at invoices.nodes.3.x, line 2 column 5 of the query)"
        );
        assert_eq!(describe_error(&json!({"message": "boom"})), "boom");
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let later = std::time::SystemTime::now() + Duration::from_secs(30);
        headers.insert(
            "retry-after",
            httpdate::fmt_http_date(later).parse().unwrap(),
        );
        let wait = retry_after(&headers).unwrap();
        assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30));
        headers.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }
}
