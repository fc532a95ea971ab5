//! The small settings file beside the mappings (`settings.yaml`).
//!
//! Values that vary per client but not per mapping live here, so that switching a metric name or
//! the consent field is one edit in one place rather than a hunt through every mapping.

use super::Spanned;
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
    /// The Marketplacer verticals (marketplaces) served, each with its own currency when it
    /// differs from `currency`.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub marketplaces: IndexMap<String, MarketplaceSettings>,
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
    /// The environment variable holding the Klaviyo private key (`KLAVIYO_API_KEY` when left
    /// out), so several clients' keys can sit side by side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub klaviyo_api_key_env: Option<String>,
    /// Whether Marketplacer's own Klaviyo integration is switched on for this account: it sends
    /// "Placed Order" and "Ordered Product" itself, so ours must be named differently.
    #[serde(default)]
    pub marketplacer_klaviyo_integration: Option<Spanned<bool>>,
    /// The client's built-in alerts (`alerts:` in client.yaml only: where alerts go is the
    /// client's, not the base's).
    #[serde(skip)]
    pub alerts: Option<crate::alerts::AlertSettings>,
    /// The Marketplacer instance `reconcile` reads (`marketplacer:` in client.yaml only: the
    /// instance and its key are the client's).
    #[serde(skip)]
    pub marketplacer: Option<crate::marketplacer::MarketplacerSettings>,
    /// The scheduled reconciliation (`reconcile:` in client.yaml only).
    #[serde(skip)]
    pub reconcile: Option<crate::reconcile::ReconcileSettings>,
}

/// One marketplace (Marketplacer vertical) of a client.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MarketplaceSettings {
    /// ISO 4217 currency of this marketplace's webhook deliveries.
    pub currency: String,
}

impl Settings {
    /// The currency of a marketplace's webhook deliveries.
    pub fn currency_of(&self, marketplace: &str) -> &str {
        self.marketplaces
            .get(marketplace)
            .map_or(&self.currency, |m| &m.currency)
    }

    /// Whether Marketplacer's own Klaviyo events are on for this account.
    pub fn native_klaviyo_events(&self) -> bool {
        self.marketplacer_klaviyo_integration
            .as_ref()
            .is_some_and(|on| on.value)
    }
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
