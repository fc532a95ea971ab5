//! The small settings file beside the mappings (`settings.yaml`).
//!
//! Values that vary per client but not per mapping live here, so that switching a metric name or
//! the consent field is one edit in one place rather than a hunt through every mapping.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

/// The settings every mapping can read as `settings.*`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The marketplace name used when neither the delivery nor `--marketplace` names one.
    pub marketplace: String,
    /// ISO 4217 currency of webhook deliveries (backfill pages carry their own).
    pub currency: String,
    /// ISO 3166 region used to read phone numbers written without a country code.
    pub phone_region: String,
    /// Klaviyo metric names by role, so a client can rename them without touching a mapping.
    #[serde(default)]
    pub metrics: Metrics,
    pub consent: ConsentSettings,
    /// Instructions a template may run per evaluation before it is stopped.
    #[serde(default = "default_fuel")]
    pub fuel: u64,
    /// Per-endpoint rate limits, replacing Klaviyo's published ones (an account with
    /// negotiated limits, or a cautious client): `/api/events: { burst: 100, steady: 1000 }`.
    #[serde(default)]
    pub rate_limits: IndexMap<String, RateLimitSettings>,
}

/// Requests a second and a minute for one endpoint.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    pub burst: u32,
    pub steady: u32,
}

/// Where the initial marketing opt-in is read from.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentSettings {
    /// JSONPath, relative to the order, of the opt-in flag (true/false, yes/no, 1/0).
    pub path: String,
}

/// Klaviyo metric names by role (`placed_order: Placed Order`); roles are free, so a client's
/// extra mapping can add its own.
pub type Metrics = IndexMap<String, String>;

fn default_fuel() -> u64 {
    100_000
}
