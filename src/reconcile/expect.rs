//! What the orders of the window say Klaviyo should hold: the expected side of reading Klaviyo
//! back, taken from the very requests the sweep maps.
//!
//! The sweep already maps every order, shipment and refund of the window into the requests its
//! webhooks would have given. The read-back needs from those requests only what it compares:
//! per event, its class (by metric name, as `settings.metrics` names them), its key, order,
//! value, time, person and tracking number; per person, the properties their latest profile
//! update sets and whether their order opted in. That is read out of the request bodies here
//! and kept with the run's checkpoint, page by page, so a run killed halfway resumes with the
//! expected side of the pages it had already kept (bodies are not kept: a repair reuses the
//! request Klaviyo accepted, which the outbox still holds).

use crate::spec::Settings;
use crate::store::{CONSENT_ENDPOINT, Found, NewRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

/// The events the read-back checks, by what they mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    PlacedOrder,
    FulfilledOrder,
    RefundedOrder,
    CancelledOrder,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::PlacedOrder,
        Kind::FulfilledOrder,
        Kind::RefundedOrder,
        Kind::CancelledOrder,
    ];

    /// The role in `settings.metrics` that names its metric.
    pub fn role(self) -> &'static str {
        match self {
            Kind::PlacedOrder => "placed_order",
            Kind::FulfilledOrder => "fulfilled_order",
            Kind::RefundedOrder => "refunded_order",
            Kind::CancelledOrder => "cancelled_order",
        }
    }

    pub fn is_refund(self) -> bool {
        matches!(self, Kind::RefundedOrder | Kind::CancelledOrder)
    }
}

/// Where the sweep found an expected request, as the store keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sent {
    /// Klaviyo accepted it (it is in the ledger).
    Accepted,
    /// Waiting in the outbox: on its way.
    Queued,
    /// Never accepted: the sweep queues it as a repair.
    Missing,
    /// Nothing tells.
    Unknown,
}

impl From<Found> for Sent {
    fn from(found: Found) -> Sent {
        match found {
            Found::Accepted => Sent::Accepted,
            Found::Queued => Sent::Queued,
            Found::Missing => Sent::Missing,
            Found::Unknown => Sent::Unknown,
        }
    }
}

/// One event the window implies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpectedEvent {
    pub kind: Kind,
    pub metric: String,
    /// Its `unique_id`, which the default mappings also write as `MarketsyncKey`.
    pub key: String,
    pub mapping: String,
    pub endpoint: String,
    pub marketplace: String,
    pub order_id: Option<String>,
    /// The value sent, in minor units of `currency`.
    pub value_cents: Option<i64>,
    pub currency: Option<String>,
    /// The event's time (ms since the epoch).
    pub at: Option<i64>,
    /// The profile's email, as sent.
    pub person: Option<String>,
    /// `TrackingNumber`, for a Fulfilled Order.
    pub tracking: Option<String>,
    pub sent: Sent,
}

impl ExpectedEvent {
    /// The record the event is about, for an exception's key: the order for a Placed Order,
    /// else the key without its marketplace and mapping (`6001` of
    /// `petmarket:fulfilled-order:6001`).
    pub fn record(&self) -> String {
        if self.kind == Kind::PlacedOrder
            && let Some(order) = &self.order_id
        {
            return order.clone();
        }
        let rest = self
            .key
            .strip_prefix(&format!("{}:", self.marketplace))
            .unwrap_or(&self.key);
        rest.strip_prefix(&format!("{}:", self.mapping))
            .unwrap_or(rest)
            .to_owned()
    }
}

/// What the window says of one person.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExpectedPerson {
    /// Their email, normalised as the mappings send it.
    pub email: String,
    pub phone: Option<String>,
    /// The explicit opt-in their order carried, when it did.
    pub opt_in: Option<OptIn>,
    /// The newest profile update the window implies for them.
    pub profile: Option<ProfileUpdate>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptIn {
    /// The subscription's once key, under which the store keeps its acceptance as consent.
    pub once_key: Option<String>,
    /// `consented_at` (ms): when they opted in.
    pub at: Option<i64>,
    /// The `custom_source` it is sent with: how Klaviyo's consent will name us.
    pub source: Option<String>,
    pub sent: Sent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileUpdate {
    pub mapping: String,
    pub coalesce_key: Option<String>,
    /// Its version, as the mapping wrote it (an RFC 3339 time).
    pub version: Option<String>,
    /// The custom properties it sets: the ones marketsync owns.
    pub properties: Map<String, Json>,
}

/// What one request adds to the expected side.
#[derive(Debug, Clone, PartialEq)]
pub enum Expectation {
    Event(ExpectedEvent),
    Person(ExpectedPerson),
}

impl Expectation {
    /// The key it is kept under with the run: one row per event, one per person.
    pub fn key(&self) -> String {
        match self {
            Expectation::Event(e) => format!("event:{}\u{1f}{}", e.endpoint, e.key),
            Expectation::Person(p) => format!("person:{}", p.email),
        }
    }
}

/// What `request` (mapped from a record of `marketplace`, found by the sweep as `found`) says
/// Klaviyo should hold, if it is anything the read-back checks.
pub fn expectation(
    request: &NewRequest,
    found: Found,
    marketplace: &str,
    settings: &Settings,
) -> Option<Expectation> {
    let body: Json = serde_json::from_str(&request.body).ok()?;
    let attributes = &body["data"]["attributes"];
    let text = |value: &Json| {
        value
            .as_str()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    match request.endpoint.as_str() {
        "/api/events" => {
            let metric = text(&attributes["metric"]["data"]["attributes"]["name"])?;
            let kind = Kind::ALL
                .into_iter()
                .find(|k| settings.metrics.get(k.role()) == Some(&metric))?;
            let key = request.unique_id.clone()?;
            let properties = &attributes["properties"];
            let marketplace = text(&properties["Marketplace"]).unwrap_or(marketplace.to_owned());
            let currency = text(&attributes["value_currency"])
                .unwrap_or_else(|| settings.currency_of(&marketplace).to_owned());
            Some(Expectation::Event(ExpectedEvent {
                kind,
                metric,
                key,
                mapping: request.mapping.clone(),
                endpoint: request.endpoint.clone(),
                order_id: property(&properties["OrderId"]),
                value_cents: attributes["value"].as_f64().map(|v| to_minor(v, &currency)),
                currency: Some(currency),
                marketplace,
                at: text(&attributes["time"]).and_then(|t| millis(&t)),
                person: text(&attributes["profile"]["data"]["attributes"]["email"])
                    .map(|e| e.to_lowercase()),
                tracking: (kind == Kind::FulfilledOrder)
                    .then(|| property(&properties["TrackingNumber"]))
                    .flatten(),
                sent: found.into(),
            }))
        }
        "/api/profile-import" => {
            let email = text(&attributes["email"])?.to_lowercase();
            Some(Expectation::Person(ExpectedPerson {
                email,
                phone: text(&attributes["phone_number"]),
                opt_in: None,
                profile: Some(ProfileUpdate {
                    mapping: request.mapping.clone(),
                    coalesce_key: request.coalesce_key.clone(),
                    version: request.version.clone(),
                    properties: attributes["properties"]
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                }),
            }))
        }
        CONSENT_ENDPOINT => {
            let profile = &attributes["profiles"]["data"][0]["attributes"];
            let marketing = &profile["subscriptions"]["email"]["marketing"];
            if marketing["consent"] != "SUBSCRIBED" {
                return None;
            }
            Some(Expectation::Person(ExpectedPerson {
                email: text(&profile["email"])?.to_lowercase(),
                phone: None,
                opt_in: Some(OptIn {
                    once_key: request.once_key.clone(),
                    at: text(&marketing["consented_at"]).and_then(|t| millis(&t)),
                    source: text(&attributes["custom_source"]),
                    sent: found.into(),
                }),
                profile: None,
            }))
        }
        _ => None,
    }
}

impl ExpectedPerson {
    /// Both parts of what the window says of one person: the opt-in if either has one, and
    /// the newer profile update.
    pub fn merge(mut self, other: ExpectedPerson) -> ExpectedPerson {
        self.phone = other.phone.or(self.phone);
        self.opt_in = match (self.opt_in, other.opt_in) {
            (Some(a), Some(b)) => Some(if b.at < a.at { b } else { a }),
            (a, b) => a.or(b),
        };
        self.profile = match (self.profile, other.profile) {
            (Some(a), Some(b)) => {
                let version =
                    |u: &ProfileUpdate| u.version.as_deref().and_then(millis).unwrap_or(i64::MIN);
                Some(if version(&b) >= version(&a) { b } else { a })
            }
            (a, b) => a.or(b),
        };
        self
    }
}

/// A property as text (`"5001"`; a number written out).
fn property(value: &Json) -> Option<String> {
    match value {
        Json::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Json::Null | Json::String(_) => None,
        other => Some(other.to_string()),
    }
}

/// An RFC 3339 time as ms since the epoch.
pub fn millis(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(|t| t.timestamp_millis())
}

/// A value in major units as minor units of `currency` (2 places when it is unknown).
pub fn to_minor(value: f64, currency: &str) -> i64 {
    let exponent = iso_currency::Currency::from_code(&currency.trim().to_ascii_uppercase())
        .and_then(|c| c.exponent())
        .unwrap_or(2);
    (value * 10f64.powi(i32::from(exponent))).round() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        serde_saphyr::from_str(
            "marketplace: petmarket\ncurrency: AUD\nphone_region: AU\nmetrics:\n  placed_order: Placed Order\n  fulfilled_order: Fulfilled Order\n  refunded_order: Refunded Order\n  cancelled_order: Cancelled Order\nconsent:\n  path: $.x\n",
        )
        .unwrap()
    }

    fn event(metric: &str, unique: &str, properties: Json) -> NewRequest {
        NewRequest {
            mapping: "fulfilled-order".into(),
            endpoint: "/api/events".into(),
            unique_id: Some(unique.into()),
            body: serde_json::json!({"data": {"type": "event", "attributes": {
                "metric": {"data": {"type": "metric", "attributes": {"name": metric}}},
                "profile": {"data": {"type": "profile", "attributes": {"email": "Zoe@Example.com"}}},
                "time": "2026-03-20T10:00:00+11:00", "value": 155.3, "value_currency": "AUD",
                "unique_id": unique, "properties": properties}}})
            .to_string(),
            ..NewRequest::default()
        }
    }

    #[test]
    fn an_event_is_read_out_of_its_request() {
        let request = event(
            "Fulfilled Order",
            "petmarket:fulfilled-order:6001",
            serde_json::json!({"OrderId": "5001", "Marketplace": "petmarket", "TrackingNumber": "33QJ"}),
        );
        let Some(Expectation::Event(e)) =
            expectation(&request, Found::Accepted, "default", &settings())
        else {
            panic!("an event")
        };
        assert_eq!(e.kind, Kind::FulfilledOrder);
        assert_eq!(e.value_cents, Some(15530));
        assert_eq!(e.person.as_deref(), Some("zoe@example.com"));
        assert_eq!(e.tracking.as_deref(), Some("33QJ"));
        assert_eq!(e.at, Some(1_773_961_200_000));
        assert_eq!(e.sent, Sent::Accepted);
        assert_eq!(e.record(), "6001");
        // A metric the settings do not name is not checked (Ordered Product).
        let other = event("Ordered Product", "x", serde_json::json!({}));
        assert_eq!(expectation(&other, Found::Accepted, "m", &settings()), None);
    }

    #[test]
    fn a_person_keeps_their_opt_in_and_their_newest_update() {
        let update = |version: &str, id: &str| ExpectedPerson {
            email: "zoe@example.com".into(),
            phone: None,
            opt_in: None,
            profile: Some(ProfileUpdate {
                mapping: "profile".into(),
                coalesce_key: Some("zoe@example.com".into()),
                version: Some(version.into()),
                properties: serde_json::json!({"Last Order": id})
                    .as_object()
                    .unwrap()
                    .clone(),
            }),
        };
        let opt_in = ExpectedPerson {
            email: "zoe@example.com".into(),
            opt_in: Some(OptIn {
                once_key: Some("petmarket:zoe@example.com".into()),
                at: Some(5),
                source: None,
                sent: Sent::Accepted,
            }),
            ..ExpectedPerson::default()
        };
        let merged = update("2026-03-20T10:00:00Z", "2")
            .merge(opt_in)
            .merge(update("2026-03-19T10:00:00Z", "1"));
        assert_eq!(merged.opt_in.unwrap().at, Some(5));
        assert_eq!(
            merged.profile.unwrap().properties["Last Order"],
            serde_json::json!("2")
        );
    }

    #[test]
    fn values_become_minor_units_of_their_currency() {
        assert_eq!(to_minor(155.3, "AUD"), 15530);
        assert_eq!(to_minor(500.0, "JPY"), 500);
        assert_eq!(to_minor(12.345, "KWD"), 12345);
    }
}
