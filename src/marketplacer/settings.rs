//! `marketplacer:` in client.yaml: which instance to read, with which key, and how hard.
//!
//! Every default is Marketplacer's published figure (reconciliation.md §4, marketplacer.md
//! §3.1), so a client writes only its instance's address; the rest is there for an account
//! with other limits and for tests, which cannot wait a real minute for a 429 to pass.

use crate::alerts::Span;
use serde::{Deserialize, Serialize};

/// How to reach one Marketplacer instance's GraphQL Operator API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MarketplacerSettings {
    /// The instance's address, `https://acme.marketplacer.com`: queries go to `/graphql`
    /// there (an address already ending in `/graphql` is used as it is).
    pub url: String,
    /// The environment variable holding the Operator API key. The key itself never goes in a
    /// file.
    #[serde(default = "defaults::api_key_env")]
    pub api_key_env: String,
    /// Requests allowed per window for one key: Marketplacer publishes 750 per 10 s.
    #[serde(default)]
    pub rate_limit: RateLimit,
    /// How long to wait after a 429 or 503 that names no `Retry-After` (Marketplacer says at
    /// least a minute), doubled for each further refusal in a row.
    #[serde(default = "defaults::retry_wait")]
    pub retry_wait: Span,
    /// Tries of one request (429, 5xx, timeouts) before the run stops; its checkpoint is kept.
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
    /// Longest one request may take.
    #[serde(default = "defaults::timeout")]
    pub timeout: Span,
    /// Nodes asked for per page: Marketplacer's maximum is 500.
    #[serde(default = "defaults::page_size")]
    pub page_size: u32,
}

/// At most `requests` in any `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub requests: u32,
    pub per: Span,
}

impl Default for RateLimit {
    fn default() -> RateLimit {
        RateLimit {
            requests: 750,
            per: Span::seconds(10),
        }
    }
}

/// The largest page Marketplacer serves.
pub const MAX_PAGE_SIZE: u32 = 500;

impl MarketplacerSettings {
    /// The settings for an instance, every other value Marketplacer's published default.
    pub fn new(url: impl Into<String>) -> MarketplacerSettings {
        MarketplacerSettings {
            url: url.into(),
            api_key_env: defaults::api_key_env(),
            rate_limit: RateLimit::default(),
            retry_wait: defaults::retry_wait(),
            max_attempts: defaults::max_attempts(),
            timeout: defaults::timeout(),
            page_size: defaults::page_size(),
        }
    }
}

pub(crate) mod defaults {
    use super::Span;

    pub fn api_key_env() -> String {
        "MARKETPLACER_API_KEY".into()
    }
    pub fn retry_wait() -> Span {
        Span::seconds(60)
    }
    pub fn max_attempts() -> u32 {
        6
    }
    pub fn timeout() -> Span {
        Span::seconds(60)
    }
    pub fn page_size() -> u32 {
        super::MAX_PAGE_SIZE
    }
}
