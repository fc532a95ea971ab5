//! What Klaviyo holds now for a person (`marketsync customer --klaviyo`), beside what we sent,
//! and where the two disagree.
//!
//! Only Klaviyo's documented read endpoints are used (`GET /api/profiles` filtered by email
//! or phone with `additional-fields[profile]=subscriptions`, `GET /api/events` filtered by
//! profile with its metric included), through the one read client ([`Reader`]), so the key is
//! sent and redacted exactly as when sending, and each endpoint is paced by its own limit. A disagreement is not always a fault: a shopper who
//! unsubscribed after their opt-in is one Klaviyo rightly wins; the view says which is which.

use super::{CustomerView, RequestStatus};
pub use crate::klaviyo::read::ReadError;
use crate::klaviyo::read::{ReadEndpoint, Reader, next_path, quoted, with_query};
use serde::Serialize;
use serde_json::Value as Json;
use std::collections::BTreeMap;

/// At most this many pages of events are read per profile (200 a page, newest first).
const EVENT_PAGES: usize = 5;

/// What Klaviyo holds now, and where it differs from our history.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KlaviyoView {
    pub profiles: Vec<KlaviyoProfile>,
    /// The profiles' events, newest first.
    pub events: Vec<KlaviyoEvent>,
    /// Where Klaviyo and our history disagree, in plain words; empty when they agree.
    pub disagreements: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct KlaviyoProfile {
    pub id: String,
    pub email: Option<String>,
    pub phone_number: Option<String>,
    /// The custom properties our profile updates set, as Klaviyo holds them.
    pub properties_we_own: BTreeMap<String, Json>,
    /// `subscriptions.email.marketing.consent`: `SUBSCRIBED`, `UNSUBSCRIBED`, `NEVER_SUBSCRIBED`.
    pub email_consent: Option<String>,
    pub can_receive_email_marketing: Option<bool>,
    pub consent_timestamp: Option<String>,
    pub consent_method: Option<String>,
    pub custom_method_detail: Option<String>,
    /// Global suppressions: `UNSUBSCRIBE since 2026-03-20T01:00:00+00:00`.
    pub suppressions: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KlaviyoEvent {
    pub id: String,
    pub profile_id: Option<String>,
    pub metric: Option<String>,
    pub datetime: Option<String>,
    /// `event_properties.OrderId`, which our events carry.
    pub order: Option<String>,
}

/// Reads the person's profiles (by every email and phone we hold for them, or the one looked
/// up when we hold nothing) and their events, and compares them with `local`.
pub async fn read(reader: &Reader, local: &CustomerView) -> Result<KlaviyoView, ReadError> {
    let mut filters: Vec<String> = local
        .identity
        .emails
        .iter()
        .map(|e| format!("equals(email,{})", quoted(e)))
        .chain(
            local
                .identity
                .phones
                .iter()
                .map(|p| format!("equals(phone_number,{})", quoted(p))),
        )
        .collect();
    if filters.is_empty() {
        filters.push(match &local.lookup {
            super::Lookup::Email(e) => format!("equals(email,{})", quoted(e)),
            super::Lookup::Phone(p) => format!("equals(phone_number,{})", quoted(p)),
        });
    }
    let mut view = KlaviyoView::default();
    let mut owned: Vec<String> = local_properties(local).keys().cloned().collect();
    owned.sort();
    for filter in filters {
        let path = with_query(
            "/api/profiles",
            &[
                ("filter", filter.as_str()),
                ("additional-fields[profile]", "subscriptions"),
                ("page[size]", "100"),
            ],
        );
        let document = reader.get(ReadEndpoint::Profiles, &path).await?;
        for data in document["data"].as_array().into_iter().flatten() {
            let profile = profile_of(data, &owned);
            if !view.profiles.iter().any(|p| p.id == profile.id) {
                view.profiles.push(profile);
            }
        }
    }
    for profile in &view.profiles {
        let filter = format!("equals(profile_id,{})", quoted(&profile.id));
        let mut path = with_query(
            "/api/events",
            &[
                ("filter", filter.as_str()),
                ("include", "metric"),
                ("sort", "-datetime"),
                ("page[size]", "200"),
            ],
        );
        for _ in 0..EVENT_PAGES {
            let document = reader.get(ReadEndpoint::Events, &path).await?;
            let metrics: BTreeMap<&str, &str> = document["included"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|i| i["type"] == "metric")
                .filter_map(|i| Some((i["id"].as_str()?, i["attributes"]["name"].as_str()?)))
                .collect();
            for event in document["data"].as_array().into_iter().flatten() {
                let metric_id = event["relationships"]["metric"]["data"]["id"].as_str();
                let properties = &event["attributes"]["event_properties"];
                view.events.push(KlaviyoEvent {
                    id: event["id"].as_str().unwrap_or_default().to_owned(),
                    profile_id: event["relationships"]["profile"]["data"]["id"]
                        .as_str()
                        .map(str::to_owned),
                    metric: metric_id
                        .and_then(|id| metrics.get(id))
                        .map(|n| (*n).to_owned()),
                    datetime: event["attributes"]["datetime"].as_str().map(str::to_owned),
                    order: text(&properties["OrderId"]),
                });
            }
            match next_path(&document) {
                Some(next) => path = next,
                None => break,
            }
        }
    }
    view.events
        .sort_by(|a, b| b.datetime.cmp(&a.datetime).then(a.id.cmp(&b.id)));
    view.disagreements = disagreements(local, &view);
    Ok(view)
}

fn text(value: &Json) -> Option<String> {
    match value {
        Json::String(s) => Some(s.clone()),
        Json::Null => None,
        other => Some(other.to_string()),
    }
}

fn profile_of(data: &Json, owned: &[String]) -> KlaviyoProfile {
    let attributes = &data["attributes"];
    let marketing = &attributes["subscriptions"]["email"]["marketing"];
    KlaviyoProfile {
        id: data["id"].as_str().unwrap_or_default().to_owned(),
        email: attributes["email"].as_str().map(str::to_owned),
        phone_number: attributes["phone_number"].as_str().map(str::to_owned),
        properties_we_own: owned
            .iter()
            .filter_map(|name| Some((name.clone(), attributes["properties"].get(name)?.clone())))
            .collect(),
        email_consent: marketing["consent"].as_str().map(str::to_owned),
        can_receive_email_marketing: marketing["can_receive_email_marketing"].as_bool(),
        consent_timestamp: marketing["consent_timestamp"].as_str().map(str::to_owned),
        consent_method: marketing["method"].as_str().map(str::to_owned),
        custom_method_detail: marketing["custom_method_detail"]
            .as_str()
            .map(str::to_owned),
        suppressions: marketing["suppression"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                format!(
                    "{} since {}",
                    s["reason"].as_str().unwrap_or("?"),
                    s["timestamp"].as_str().unwrap_or("?")
                )
            })
            .collect(),
    }
}

/// The custom properties of the newest profile update Klaviyo accepted from us.
fn local_properties(local: &CustomerView) -> serde_json::Map<String, Json> {
    local
        .timeline
        .iter()
        .flat_map(|entry| &entry.requests)
        .filter(|r| r.status == RequestStatus::Sent && r.what == "profile update")
        .find_map(|r| {
            r.body
                .as_ref()?
                .pointer("/data/attributes/properties")?
                .as_object()
                .cloned()
        })
        .unwrap_or_default()
}

fn disagreements(local: &CustomerView, klaviyo: &KlaviyoView) -> Vec<String> {
    let mut found = Vec::new();
    let sent: Vec<_> = local
        .timeline
        .iter()
        .flat_map(|entry| entry.requests.iter().map(move |r| (entry, r)))
        .filter(|(_, r)| r.status == RequestStatus::Sent)
        .collect();
    match klaviyo.profiles.len() {
        0 if !sent.is_empty() => found.push(format!(
            "Klaviyo holds no profile for this person, though it accepted {} request(s) for them",
            sent.len()
        )),
        0 | 1 => {}
        n => found.push(format!(
            "Klaviyo holds {n} profiles for this person ({}): one person should be one profile",
            klaviyo
                .profiles
                .iter()
                .map(|p| p.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
    for (name, ours) in local_properties(local) {
        for profile in &klaviyo.profiles {
            let theirs = profile.properties_we_own.get(&name);
            if theirs != Some(&ours) {
                found.push(format!(
                    "property `{name}`: we last sent {ours}, Klaviyo's profile {} has {}",
                    profile.id,
                    theirs.map_or("nothing".to_owned(), Json::to_string)
                ));
            }
        }
    }
    let opt_in = local
        .consent
        .iter()
        .find(|c| c.outcome == "sent" && c.consent.is_some());
    for profile in &klaviyo.profiles {
        let now = profile.email_consent.as_deref().unwrap_or("unknown");
        let can_receive = profile.can_receive_email_marketing.unwrap_or(false);
        match opt_in {
            Some(opt_in) if now != opt_in.consent.as_deref().unwrap_or("") || !can_receive => {
                let suppressed = if profile.suppressions.is_empty() {
                    String::new()
                } else {
                    format!(", suppressed: {}", profile.suppressions.join(", "))
                };
                found.push(format!(
                    "email consent: we sent {} (order {} on {}, accepted {}); Klaviyo now says \
                     {now}{suppressed}. A later change in Klaviyo (an unsubscribe, a bounce) \
                     rightly wins over the opt-in",
                    opt_in.consent.as_deref().unwrap_or("?"),
                    opt_in.order.as_deref().unwrap_or("?"),
                    opt_in.marketplace,
                    opt_in.accepted_at.as_deref().unwrap_or("?"),
                ));
            }
            None if now == "SUBSCRIBED" => found.push(format!(
                "email consent: Klaviyo says SUBSCRIBED ({}{}), but marketsync never sent an \
                 opt-in for this person: the consent came from elsewhere",
                profile
                    .consent_method
                    .as_deref()
                    .unwrap_or("method unknown"),
                profile
                    .custom_method_detail
                    .as_deref()
                    .map(|d| format!(", {d}"))
                    .unwrap_or_default()
            )),
            _ => {}
        }
    }
    if !klaviyo.profiles.is_empty() {
        for (entry, request) in &sent {
            let Some(body) = &request.body else { continue };
            let Some(metric) = body
                .pointer("/data/attributes/metric/data/attributes/name")
                .and_then(Json::as_str)
            else {
                continue;
            };
            let order = body
                .pointer("/data/attributes/properties/OrderId")
                .and_then(text);
            let held = klaviyo
                .events
                .iter()
                .any(|e| e.metric.as_deref() == Some(metric) && e.order == order);
            if !held {
                found.push(format!(
                    "event: Klaviyo has no `{metric}` for order {} ({}), which it accepted at {}",
                    order.as_deref().unwrap_or("?"),
                    entry.marketplace,
                    request.at
                ));
            }
        }
    }
    found
}
