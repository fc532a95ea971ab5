//! Planting drift: making what the stand-in holds differ from what marketsync sent, the ways
//! Klaviyo's data comes to differ from ours, so that a reconciliation test can plant one
//! exception of each kind and check that the read-back finds exactly it.
//!
//! Test-only, but real: a plant changes the same store the read endpoints answer from, so
//! every read (`GET /api/events`, `/api/profiles`, `/api/metrics`, `POST /api/metric-aggregates`)
//! shows it, and nothing else changes. In-process tests call [`super::StandIn::plant`];
//! scripts and the README post the same [`Drift`] as JSON to `POST /standin/drift` on a
//! `marketsync standin`.
//!
//! Choices, where Klaviyo has no equivalent to copy:
//! - Deleting an event also forgets its dedupe key (profile, metric, `unique_id`), so the same
//!   event sent again is recorded again: a repair that resends with the original key restores
//!   it, as it would after a Klaviyo data deletion. Without this, a deleted event could never
//!   be repaired and a repair run could not be tested.
//! - A second profile for an email or phone number is one no identifier leads to: the
//!   stand-in's own upserts keep finding the first (and answer 409 `duplicate_profile` when
//!   identifiers of both meet); the reads list both. It has none of the first one's consent.
//! - Consent plants (`Unsubscribe`, `Suppress`, `Subscribe`) happen now, in order with the
//!   accepted subscriptions; `at` is the timestamp the reads show. A `Subscribe` with our own
//!   `custom_method_detail` and no opt-in stored is the compliance plant. `LoseSubscription`
//!   is the consent twin of deleting an event: a subscription Klaviyo accepted and does not
//!   hold (an opt-in that never took), which no unsubscribe or suppression explains.

use super::consent::{Change, Subject, SuppressionReason};
use super::store::{Flow, FlowStatus, Integration, Store, new_id, timestamp};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

/// One kind of drift. As JSON (for `POST /standin/drift`), `{"kind": "<snake_case name>", …
/// the fields}`; times are RFC 3339, and default to now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Drift {
    /// Deletes every event recorded with this `unique_id` (of any profile and metric), and
    /// forgets its dedupe key. Gives the deleted events' ids.
    DeleteEvent { unique_id: String },
    /// Sets one property of every event with this `unique_id` (`null` removes it). `$value`
    /// and `$value_currency` change the event's value and currency. Gives the events' ids.
    ChangeEvent {
        unique_id: String,
        property: String,
        value: Json,
    },
    /// Adds a profile with this email and/or phone number (and custom `properties`) although
    /// one exists. Gives the new profile's id.
    DuplicateProfile {
        #[serde(default)]
        email: Option<String>,
        #[serde(default)]
        phone_number: Option<String>,
        #[serde(default)]
        properties: Map<String, Json>,
    },
    /// Sets a field of the profile an email identifies, or of the profile with this id: a
    /// standard field (`first_name`, `locale`, ...) or `properties.NAME` for a custom property;
    /// `null` removes it. Identifiers cannot change this way. Gives the profile's id.
    ChangeProfile {
        #[serde(default)]
        email: Option<String>,
        #[serde(default)]
        profile_id: Option<String>,
        field: String,
        value: Json,
    },
    /// The shopper unsubscribed: consent `UNSUBSCRIBED` at `at`, with an `UNSUBSCRIBE`
    /// suppression. Gives the profile's id.
    Unsubscribe {
        email: String,
        #[serde(default)]
        at: Option<DateTime<Utc>>,
    },
    /// A global suppression with this reason at `at` (`UNSUBSCRIBE` is an unsubscribe).
    /// Gives the profile's id.
    Suppress {
        email: String,
        reason: SuppressionReason,
        #[serde(default)]
        at: Option<DateTime<Utc>>,
    },
    /// Consent `SUBSCRIBED` as if by a subscribe call with this `method` (`API`,
    /// `PREFERENCE_PAGE`, ...) and details, consent timestamp `at`. Gives the profile's id.
    Subscribe {
        email: String,
        method: String,
        #[serde(default)]
        method_detail: Option<String>,
        #[serde(default)]
        custom_method_detail: Option<String>,
        #[serde(default)]
        at: Option<DateTime<Utc>>,
    },
    /// A subscription Klaviyo accepted (202) whose processing never reached the profile this
    /// email identifies: its subscriptions are forgotten, so the profile reads as it did
    /// before them (`NEVER_SUBSCRIBED`, unless something else changed its consent). A bulk job
    /// has no status to poll, so only the read-back shows this. Gives the profile's id.
    LoseSubscription { email: String },
    /// A metric of this name from another integration (a second sender of the same events).
    /// Gives the metric's id.
    ForeignMetric {
        name: String,
        integration: String,
        #[serde(default = "ecommerce")]
        category: String,
    },
    /// A flow triggered by a metric: `metric` is a metric id, or the name of a metric of the
    /// API integration. Gives the flow's id.
    Flow {
        name: String,
        status: FlowStatus,
        metric: String,
    },
}

fn ecommerce() -> String {
    "eCommerce".into()
}

/// Why a plant could not be made (nothing changed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlantError {
    #[error("no event has unique_id {0:?}")]
    NoSuchEvent(String),
    #[error("no profile {0}")]
    NoSuchProfile(String),
    #[error("no metric {0:?} (neither an id nor the name of an API metric)")]
    NoSuchMetric(String),
    #[error("{0}")]
    Invalid(String),
}

impl PlantError {
    /// Whether it names something that does not exist (404 over HTTP), rather than a plant
    /// that makes no sense (400).
    pub fn is_not_found(&self) -> bool {
        !matches!(self, PlantError::Invalid(_))
    }
}

/// Identifiers: changed only by the upserts that keep the stand-in's index of them.
const IDENTIFIERS: [&str; 3] = ["email", "phone_number", "external_id"];

/// Makes the plant; see [`Drift`] for what each gives back.
pub(crate) fn plant(store: &mut Store, drift: Drift) -> Result<Vec<String>, PlantError> {
    let now = Utc::now();
    match drift {
        Drift::DeleteEvent { unique_id } => {
            let deleted = store.delete_events(&unique_id);
            if deleted.is_empty() {
                return Err(PlantError::NoSuchEvent(unique_id));
            }
            Ok(deleted)
        }
        Drift::ChangeEvent {
            unique_id,
            property,
            value,
        } => {
            if property.is_empty() {
                return Err(PlantError::Invalid("the property name is empty".into()));
            }
            let mut changed = Vec::new();
            for event in store.events_with_unique_id(&unique_id) {
                let mut sent = event.attributes();
                let attributes = match &mut sent {
                    Json::Object(attributes) => attributes,
                    other => {
                        *other = Json::Object(Map::new());
                        other.as_object_mut().expect("just made an object")
                    }
                };
                let (target, name) = match property.as_str() {
                    "$value" => (attributes, "value".to_owned()),
                    "$value_currency" => (attributes, "value_currency".to_owned()),
                    name => {
                        let properties = attributes
                            .entry("properties")
                            .or_insert_with(|| Json::Object(Map::new()));
                        if !properties.is_object() {
                            *properties = Json::Object(Map::new());
                        }
                        let properties = properties.as_object_mut().expect("an object");
                        (properties, name.to_owned())
                    }
                };
                set(target, name, value.clone());
                event.set_attributes(&sent);
                changed.push(event.id.clone());
            }
            if changed.is_empty() {
                return Err(PlantError::NoSuchEvent(unique_id));
            }
            Ok(changed)
        }
        Drift::DuplicateProfile {
            email,
            phone_number,
            properties,
        } => {
            if email.is_none() && phone_number.is_none() {
                return Err(PlantError::Invalid(
                    "a second profile needs the email or phone number it shares".into(),
                ));
            }
            let mut attributes = Map::new();
            if let Some(email) = email {
                if !super::checks::is_email(&email) {
                    return Err(PlantError::Invalid(format!("{email:?} is not an email")));
                }
                attributes.insert("email".into(), Json::String(email));
            }
            if let Some(phone) = phone_number {
                if !super::checks::is_e164(&phone) {
                    return Err(PlantError::Invalid(format!(
                        "{phone:?} is not an E.164 phone number"
                    )));
                }
                attributes.insert("phone_number".into(), Json::String(phone));
            }
            if !properties.is_empty() {
                attributes.insert("properties".into(), Json::Object(properties));
            }
            Ok(vec![store.add_unindexed_profile(attributes)])
        }
        Drift::ChangeProfile {
            email,
            profile_id,
            field,
            value,
        } => {
            let index = match (&email, &profile_id) {
                (Some(email), None) => profile_by_email(store, email)?,
                (None, Some(id)) => store
                    .profile_index_by_id(id)
                    .ok_or_else(|| PlantError::NoSuchProfile(format!("with id {id:?}")))?,
                _ => {
                    return Err(PlantError::Invalid(
                        "name the profile by exactly one of email and profile_id".into(),
                    ));
                }
            };
            if IDENTIFIERS.contains(&field.as_str()) {
                return Err(PlantError::Invalid(format!(
                    "{field} is an identifier; plant a duplicate_profile instead"
                )));
            }
            let profile = store.profile_mut(index);
            match field.strip_prefix("properties.") {
                Some("") => return Err(PlantError::Invalid("the property name is empty".into())),
                Some(name) => {
                    let properties = profile
                        .attributes
                        .entry("properties")
                        .or_insert_with(|| Json::Object(Map::new()));
                    if !properties.is_object() {
                        *properties = Json::Object(Map::new());
                    }
                    let properties = properties.as_object_mut().expect("an object");
                    set(properties, name.to_owned(), value);
                }
                None if field.is_empty() || field == "properties" => {
                    return Err(PlantError::Invalid(format!(
                        "{field:?} is not a field: name a standard field or properties.NAME"
                    )));
                }
                None => set(&mut profile.attributes, field, value),
            }
            profile.updated = timestamp(now);
            Ok(vec![profile.id.clone()])
        }
        Drift::Unsubscribe { email, at } => {
            consent(store, &email, at.unwrap_or(now), Change::Unsubscribed)
        }
        Drift::Suppress { email, reason, at } => {
            consent(store, &email, at.unwrap_or(now), Change::Suppressed(reason))
        }
        Drift::Subscribe {
            email,
            method,
            method_detail,
            custom_method_detail,
            at,
        } => {
            let at = at.unwrap_or(now);
            let change = Change::Subscribed {
                method,
                method_detail,
                custom_method_detail,
                consented_at: timestamp(at),
            };
            consent(store, &email, at, change)
        }
        Drift::LoseSubscription { email } => {
            let index = profile_by_email(store, &email)?;
            if store.forget_subscriptions(index) == 0 {
                return Err(PlantError::Invalid(format!(
                    "Klaviyo holds no subscription of {email} to lose"
                )));
            }
            Ok(vec![store.profile(index).id.clone()])
        }
        Drift::ForeignMetric {
            name,
            integration,
            category,
        } => {
            let integration = Integration {
                name: integration,
                category,
            };
            if name.trim().is_empty() || integration == Integration::api() {
                return Err(PlantError::Invalid(
                    "a foreign metric needs a name and an integration other than the API".into(),
                ));
            }
            Ok(vec![store.add_metric(&name, integration)])
        }
        Drift::Flow {
            name,
            status,
            metric,
        } => {
            let api = Integration::api();
            let trigger = store
                .metrics()
                .iter()
                .find(|m| m.id == metric)
                .or_else(|| {
                    store
                        .metrics()
                        .iter()
                        .find(|m| m.name == metric && m.integration == api)
                })
                .ok_or_else(|| PlantError::NoSuchMetric(metric.clone()))?;
            let flow = Flow {
                id: new_id()[2..8].to_owned(),
                name,
                status,
                trigger_metric_id: trigger.id.clone(),
                created: timestamp(now),
            };
            let id = flow.id.clone();
            store.add_flow(flow);
            Ok(vec![id])
        }
    }
}

/// `value` into `target[name]`, or `null` to remove it.
fn set(target: &mut Map<String, Json>, name: String, value: Json) {
    if value.is_null() {
        target.remove(&name);
    } else {
        target.insert(name, value);
    }
}

fn profile_by_email(store: &Store, email: &str) -> Result<usize, PlantError> {
    store
        .profile_index_by_email(email)
        .ok_or_else(|| PlantError::NoSuchProfile(format!("with email {email:?}")))
}

/// A change of consent about the profile an email identifies; the time is what the read shows,
/// the order is that of processing (now).
fn consent(
    store: &mut Store,
    email: &str,
    at: DateTime<Utc>,
    change: Change,
) -> Result<Vec<String>, PlantError> {
    let index = profile_by_email(store, email)?;
    let id = store.profile(index).id.clone();
    store.record_consent(Subject::Email(email.to_owned()), at, change);
    Ok(vec![id])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plants_read_as_json_and_misspellings_are_refused() {
        let drift: Drift =
            serde_json::from_value(json!({"kind": "delete_event", "unique_id": "x:1"})).unwrap();
        assert_eq!(
            drift,
            Drift::DeleteEvent {
                unique_id: "x:1".into()
            }
        );
        let drift: Drift = serde_json::from_value(json!({"kind": "suppress",
            "email": "a@b.co", "reason": "HARD_BOUNCE", "at": "2026-03-20T01:00:00+11:00"}))
        .unwrap();
        assert!(
            matches!(drift, Drift::Suppress { reason: SuppressionReason::HardBounce, at: Some(at), .. }
            if timestamp(at) == "2026-03-19T14:00:00+00:00")
        );
        for wrong in [
            json!({"kind": "delete_event", "uniqueId": "x:1"}),
            json!({"kind": "suppress", "email": "a@b.co", "reason": "BOUNCED"}),
            json!({"kind": "flow", "name": "Thanks", "status": "on", "metric": "Placed Order"}),
            json!({"kind": "rename_metric"}),
        ] {
            assert!(
                serde_json::from_value::<Drift>(wrong.clone()).is_err(),
                "{wrong}"
            );
        }
    }
}
