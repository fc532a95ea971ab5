//! What the stand-in accepted, kept so that tests can assert the exact effect of a run:
//! events once each (Klaviyo's dedupe), profiles as they stand after every upsert,
//! subscriptions, and the body of every bulk job.

use super::consent::{Change, ConsentEvent, EmailMarketing, Subject};
use super::errors::ApiError;
use crate::klaviyo::Endpoint;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value as Json, json};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Everything the stand-in accepted, in the order it accepted it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Accepted {
    /// Events recorded, each once: a duplicate (same profile, metric and `unique_id`) was
    /// answered 202 like Klaviyo does, and left out here.
    pub events: Vec<AcceptedEvent>,
    /// Profiles as they stand now, in the order they were created.
    pub profiles: Vec<Profile>,
    /// One entry per profile of every accepted subscription job.
    pub subscriptions: Vec<Subscription>,
    /// The body of every accepted bulk job (subscription, event and profile import jobs).
    pub bulk_jobs: Vec<BulkJob>,
    /// Every event accepted, duplicates included, in the order they came: what the client
    /// sent, where [`Accepted::events`] is what Klaviyo keeps. A test that counts resends
    /// reads this; the deduplicated list could never show one.
    pub submissions: Vec<EventSubmission>,
}

impl Accepted {
    /// The profile with this email (compared case-insensitively, as Klaviyo does).
    pub fn profile_by_email(&self, email: &str) -> Option<&Profile> {
        self.profiles.iter().find(|p| {
            p.attribute("email")
                .and_then(Json::as_str)
                .is_some_and(|e| e.eq_ignore_ascii_case(email))
        })
    }

    /// How many times each `unique_id` was accepted, duplicates included.
    pub fn submissions_by_unique_id(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for submission in &self.submissions {
            if let Some(unique_id) = &submission.unique_id {
                *counts.entry(unique_id.clone()).or_default() += 1;
            }
        }
        counts
    }

    /// The events of one metric, in order.
    pub fn events_named<'a>(&'a self, metric: &'a str) -> impl Iterator<Item = &'a AcceptedEvent> {
        self.events.iter().filter(move |e| e.metric == metric)
    }
}

/// An event as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptedEvent {
    /// The id the stand-in gave it (what `GET /api/events` lists it by).
    pub id: String,
    /// The profile it was recorded against, when its profile could be created or updated.
    pub profile_id: Option<String>,
    /// When it happened (its `time`, else when it arrived), in Klaviyo's format.
    pub datetime: Option<String>,
    /// [`Endpoint::CreateEvent`] or [`Endpoint::BulkCreateEvents`].
    pub endpoint: Endpoint,
    /// The metric's name.
    pub metric: String,
    /// The identifier that stands for the profile in the dedupe key: `email:…` (lower-cased),
    /// else `phone_number:…`, `external_id:…`, `id:…`, `anonymous_id:…`, `_kx:…`.
    pub profile_key: String,
    pub unique_id: Option<String>,
    /// The profile resource sent with the event (see [`AcceptedEvent::profile`]).
    pub(crate) profile: JsonText,
    /// The event's attributes as sent (see [`AcceptedEvent::attributes`]).
    pub(crate) attributes: JsonText,
}

impl AcceptedEvent {
    /// The profile resource sent with the event (`{"type": "profile", "attributes": {…}}`).
    pub fn profile(&self) -> Json {
        self.profile.read()
    }

    /// The event's attributes as sent (`properties`, `time`, `value`, `metric`, ...; the
    /// profile is in [`AcceptedEvent::profile`]).
    pub fn attributes(&self) -> Json {
        self.attributes.read()
    }

    pub(crate) fn set_attributes(&mut self, attributes: &Json) {
        self.attributes = JsonText::of(attributes);
    }
}

/// JSON the stand-in keeps as its text and parses when read: as trees, several times the size
/// of their text, the events and bulk jobs of the serve benchmark (2,000 webhooks a second)
/// grew the stand-in by tens of MB a second, and a soak run of an hour would not fit.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JsonText(Box<str>);

impl JsonText {
    pub(crate) fn of(value: &Json) -> JsonText {
        JsonText(value.to_string().into_boxed_str())
    }

    pub(crate) fn read(&self) -> Json {
        serde_json::from_str(&self.0).expect("kept from a JSON value")
    }
}

/// One event as it arrived in an accepted request, whether Klaviyo kept it or deduplicated it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSubmission {
    /// Which accepted event request carried it: 1 for the first `POST /api/events` or event
    /// bulk job the stand-in accepted, 2 for the next, and so on. The events of one bulk job
    /// share a number.
    pub request: u64,
    pub metric: String,
    pub unique_id: Option<String>,
    /// False when it was a duplicate of an event already kept.
    pub kept: bool,
    /// When its request was accepted, by the wall clock (never scaled): to measure how long an
    /// event took to reach Klaviyo from outside the process (`GET /standin/submissions`).
    pub accepted_at: std::time::SystemTime,
}

/// A profile as it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub id: String,
    /// The fields that are set. A field sent as `null` to profile-import is gone; `location`
    /// and `properties` merge key by key.
    pub attributes: Map<String, Json>,
    pub created: String,
    pub updated: String,
}

impl Profile {
    pub fn attribute(&self, name: &str) -> Option<&Json> {
        self.attributes.get(name)
    }
}

/// One profile of an accepted subscription job.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub email: Option<String>,
    pub phone_number: Option<String>,
    /// `data.id` of the profile entry, when sent.
    pub profile_id: Option<String>,
    /// The consent given, by `channel.type`: `email.marketing`, `sms.marketing`,
    /// `sms.transactional`, `whatsapp.marketing`, ... → the parameters sent
    /// (`{"consent": "SUBSCRIBED", "consented_at": …}`).
    pub consents: BTreeMap<String, Json>,
    /// The list in the job's `relationships`, when sent.
    pub list_id: Option<String>,
    pub historical_import: bool,
    pub custom_source: Option<String>,
    /// The profile entry's `attributes` as sent.
    pub attributes: Json,
}

/// The integration a metric belongs to: Klaviyo keeps one metric per name and sending
/// mechanism, so an API "Placed Order" and a Shopify "Placed Order" are two metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Integration {
    pub name: String,
    pub category: String,
}

impl Integration {
    /// Klaviyo's own API, which every event sent to the stand-in comes through. Its name and
    /// category as read back are unverified (the spec leaves `integration` untyped).
    pub fn api() -> Integration {
        Integration {
            name: "API".into(),
            category: "API".into(),
        }
    }
}

/// A metric as `GET /api/metrics` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub id: String,
    pub name: String,
    pub integration: Integration,
    pub created: String,
}

impl Metric {
    fn new(name: &str, integration: Integration) -> Metric {
        let id = if integration == Integration::api() {
            metric_id(name)
        } else {
            metric_id(&format!("{}\u{0}{name}", integration.name))
        };
        Metric {
            id,
            name: name.to_owned(),
            integration,
            created: timestamp(Utc::now()),
        }
    }
}

/// A flow's status, as Klaviyo's flows read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowStatus {
    Live,
    Draft,
    Manual,
}

impl FlowStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FlowStatus::Live => "live",
            FlowStatus::Draft => "draft",
            FlowStatus::Manual => "manual",
        }
    }
}

/// A flow triggered by a metric (planted: the stand-in sends nothing).
#[derive(Debug, Clone, PartialEq)]
pub struct Flow {
    pub id: String,
    pub name: String,
    pub status: FlowStatus,
    pub trigger_metric_id: String,
    pub created: String,
}

/// A metric's id: six characters, as Klaviyo's look, stable per name for the API integration.
pub(crate) fn metric_id(name: &str) -> String {
    use sha2::Digest;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    sha2::Sha256::digest(name.as_bytes())
        .iter()
        .take(6)
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect()
}

/// The body of an accepted bulk job.
#[derive(Debug, Clone, PartialEq)]
pub struct BulkJob {
    pub endpoint: Endpoint,
    /// The job id the stand-in gave it (profile import jobs only: the other two answer 202
    /// without a body).
    pub id: Option<String>,
    /// Read back by [`BulkJob::body`].
    body: JsonText,
}

impl BulkJob {
    pub(crate) fn new(endpoint: Endpoint, id: Option<String>, body: &Json) -> BulkJob {
        BulkJob {
            endpoint,
            id,
            body: JsonText::of(body),
        }
    }

    /// The body as accepted.
    pub fn body(&self) -> Json {
        self.body.read()
    }
}

/// A profile bulk import job in progress.
#[derive(Debug, Clone)]
pub(crate) struct ImportJob {
    pub(crate) id: String,
    pub(crate) created_at: DateTime<Utc>,
    /// When it was created, on the scaled clock.
    pub(crate) created: f64,
    pub(crate) total: usize,
    pub(crate) list_ids: Vec<String>,
    /// The profile entries, until the job runs.
    pub(crate) profiles: Vec<Json>,
    pub(crate) started_at: Option<DateTime<Utc>>,
    pub(crate) outcome: Option<JobOutcome>,
}

#[derive(Debug, Clone)]
pub(crate) struct JobOutcome {
    pub(crate) completed: usize,
    pub(crate) completed_at: DateTime<Utc>,
    pub(crate) errors: Vec<ImportError>,
}

/// A profile the job could not import.
#[derive(Debug, Clone)]
pub(crate) struct ImportError {
    pub(crate) id: String,
    pub(crate) error: ApiError,
    pub(crate) original_payload: Json,
}

/// What `null` does to a stored field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nulls {
    /// profile-import (and events): "setting a field to null will clear out the field".
    Clear,
    /// Bulk import: "does not support setting fields to null to clear them".
    Ignore,
}

/// Why an upsert matched no single profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MatchError {
    /// `data.id` names no profile.
    NotFound(String),
    /// The identifiers sent belong to two profiles; this is the other one.
    Duplicate(String),
}

/// The identifiers a profile is found by, in the order they are tried.
const IDENTIFIERS: [&str; 3] = ["email", "phone_number", "external_id"];

#[derive(Debug, Default)]
pub(crate) struct Store {
    events: Vec<AcceptedEvent>,
    event_keys: HashSet<String>,
    profiles: Vec<Profile>,
    by_id: HashMap<String, usize>,
    /// (identifier, value) → profile; emails lower-cased.
    by_identifier: HashMap<(&'static str, String), usize>,
    subscriptions: Vec<Subscription>,
    bulk_jobs: Vec<BulkJob>,
    submissions: Vec<EventSubmission>,
    /// Event requests accepted so far (see [`EventSubmission::request`]).
    event_requests: u64,
    /// Every change of email-marketing consent, in the order it was processed: accepted
    /// subscriptions, and the unsubscribes, suppressions and subscriptions a test plants.
    consent: Vec<ConsentEvent>,
    /// The metrics, in the order they came to be: one per name of the events accepted (the API
    /// integration's), and those a test plants.
    metrics: Vec<Metric>,
    /// The flows a test plants.
    flows: Vec<Flow>,
    pub(crate) jobs: Vec<ImportJob>,
}

impl Store {
    pub(crate) fn accepted(&self) -> Accepted {
        Accepted {
            events: self.events.clone(),
            profiles: self.profiles.clone(),
            subscriptions: self.subscriptions.clone(),
            bulk_jobs: self.bulk_jobs.clone(),
            submissions: self.submissions.clone(),
        }
    }

    pub(crate) fn submissions(&self) -> &[EventSubmission] {
        &self.submissions
    }

    pub(crate) fn profile(&self, index: usize) -> &Profile {
        &self.profiles[index]
    }

    pub(crate) fn all_profiles(&self) -> &[Profile] {
        &self.profiles
    }

    pub(crate) fn recorded_events(&self) -> &[AcceptedEvent] {
        &self.events
    }

    /// The events recorded against a profile.
    pub(crate) fn events_of<'a>(
        &'a self,
        profile_id: &'a str,
    ) -> impl Iterator<Item = &'a AcceptedEvent> {
        self.events
            .iter()
            .filter(move |e| e.profile_id.as_deref() == Some(profile_id))
    }

    /// A profile's email-marketing consent now: the changes about it by id, and those about its
    /// email when it is the profile that email identifies (a second profile planted for the
    /// same address has none of the first one's consent).
    pub(crate) fn consent_of(&self, profile: &Profile) -> EmailMarketing {
        let primary_email = profile
            .attribute("email")
            .and_then(Json::as_str)
            .map(str::to_lowercase)
            .filter(|email| {
                self.by_identifier
                    .get(&("email", email.clone()))
                    .is_some_and(|&i| self.profiles[i].id == profile.id)
            });
        EmailMarketing::fold(self.consent.iter().filter(|c| match &c.subject {
            Subject::Profile(id) => *id == profile.id,
            Subject::Email(email) => primary_email.as_ref() == Some(email),
        }))
    }

    /// Records a change of consent, as of now in the order of processing.
    pub(crate) fn record_consent(&mut self, subject: Subject, at: DateTime<Utc>, change: Change) {
        let subject = match subject {
            Subject::Email(email) => Subject::Email(email.to_lowercase()),
            other => other,
        };
        self.consent.push(ConsentEvent {
            subject,
            at,
            change,
        });
    }

    /// Forgets the subscriptions recorded about the profile at `index` (by its id, or by the
    /// email it is identified by); how many there were.
    pub(crate) fn forget_subscriptions(&mut self, index: usize) -> usize {
        let profile = &self.profiles[index];
        let id = profile.id.clone();
        let email = profile
            .attribute("email")
            .and_then(Json::as_str)
            .map(str::to_lowercase);
        let before = self.consent.len();
        self.consent.retain(|c| {
            let about = match &c.subject {
                Subject::Profile(p) => *p == id,
                Subject::Email(e) => email.as_ref() == Some(e),
            };
            !(about && matches!(c.change, Change::Subscribed { .. }))
        });
        before - self.consent.len()
    }

    /// Records which profile the newest event was recorded against.
    pub(crate) fn link_last_event(&mut self, profile_id: String) {
        if let Some(event) = self.events.last_mut() {
            event.profile_id = Some(profile_id);
        }
    }

    /// Numbers an accepted request that carries events; its events are recorded under it.
    pub(crate) fn next_event_request(&mut self) -> u64 {
        self.event_requests += 1;
        self.event_requests
    }

    /// Records the event unless its key was seen; says whether it was recorded. Either way it
    /// counts as a submission of `request`.
    pub(crate) fn record_event(&mut self, request: u64, key: String, event: AcceptedEvent) -> bool {
        let kept = self.event_keys.insert(key);
        if kept {
            self.metric_for(&event.metric);
        }
        self.submissions.push(EventSubmission {
            request,
            metric: event.metric.clone(),
            unique_id: event.unique_id.clone(),
            kept,
            accepted_at: std::time::SystemTime::now(),
        });
        if kept {
            self.events.push(event);
        }
        kept
    }

    /// Records a profile of an accepted subscription job, and its email-marketing consent.
    pub(crate) fn record_subscription(&mut self, subscription: Subscription, at: DateTime<Utc>) {
        if let Some(parameters) = subscription.consents.get("email.marketing") {
            let subject = match (&subscription.profile_id, &subscription.email) {
                (Some(id), _) => Some(Subject::Profile(id.clone())),
                (None, Some(email)) => Some(Subject::Email(email.clone())),
                (None, None) => None,
            };
            if let Some(subject) = subject {
                let consented_at = parameters["consented_at"]
                    .as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map_or(at, |t| t.with_timezone(&Utc));
                let change = Change::Subscribed {
                    method: "API".into(),
                    method_detail: None,
                    custom_method_detail: subscription.custom_source.clone(),
                    consented_at: timestamp(consented_at),
                };
                self.record_consent(subject, at, change);
            }
        }
        self.subscriptions.push(subscription);
    }

    /// The metrics, oldest first.
    pub(crate) fn metrics(&self) -> &[Metric] {
        &self.metrics
    }

    /// The metric an event was recorded under (the API integration's of its name).
    pub(crate) fn metric_of(&self, event: &AcceptedEvent) -> Option<&Metric> {
        let api = Integration::api();
        self.metrics
            .iter()
            .find(|m| m.name == event.metric && m.integration == api)
    }

    /// The API integration's metric of this name, created on its first event.
    fn metric_for(&mut self, name: &str) -> &Metric {
        let api = Integration::api();
        let index = match self
            .metrics
            .iter()
            .position(|m| m.name == name && m.integration == api)
        {
            Some(index) => index,
            None => {
                self.metrics.push(Metric::new(name, api));
                self.metrics.len() - 1
            }
        };
        &self.metrics[index]
    }

    /// Adds a metric (of another integration); gives its id. One of the same name and
    /// integration is the same metric.
    pub(crate) fn add_metric(&mut self, name: &str, integration: Integration) -> String {
        if let Some(metric) = self
            .metrics
            .iter()
            .find(|m| m.name == name && m.integration == integration)
        {
            return metric.id.clone();
        }
        let metric = Metric::new(name, integration);
        let id = metric.id.clone();
        self.metrics.push(metric);
        id
    }

    pub(crate) fn flows(&self) -> &[Flow] {
        &self.flows
    }

    pub(crate) fn add_flow(&mut self, flow: Flow) {
        self.flows.push(flow);
    }

    /// Deletes every event with this `unique_id` and forgets its dedupe key, so that the same
    /// event sent again is recorded again; gives the deleted events' ids.
    pub(crate) fn delete_events(&mut self, unique_id: &str) -> Vec<String> {
        let mut deleted = Vec::new();
        let keys = &mut self.event_keys;
        self.events.retain(|event| {
            if event.unique_id.as_deref() != Some(unique_id) {
                return true;
            }
            let instant = format!("unique_id:{unique_id}");
            keys.remove(&super::checks::event_key(
                &event.profile_key,
                &event.metric,
                &instant,
            ));
            deleted.push(event.id.clone());
            false
        });
        deleted
    }

    /// The events with this `unique_id`, to change them.
    pub(crate) fn events_with_unique_id(
        &mut self,
        unique_id: &str,
    ) -> impl Iterator<Item = &mut AcceptedEvent> {
        self.events
            .iter_mut()
            .filter(move |e| e.unique_id.as_deref() == Some(unique_id))
    }

    /// The profile an email identifies (the one upserts update), by index.
    pub(crate) fn profile_index_by_email(&self, email: &str) -> Option<usize> {
        self.by_identifier.get(&key("email", email)).copied()
    }

    pub(crate) fn profile_index_by_id(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    pub(crate) fn profile_mut(&mut self, index: usize) -> &mut Profile {
        &mut self.profiles[index]
    }

    /// A profile that no identifier leads to: a second one for an email or phone number that
    /// already has one, as Klaviyo can hold (an email-only call after an email change, an
    /// import). Upserts keep finding the first; reads list both. Gives its id.
    pub(crate) fn add_unindexed_profile(&mut self, attributes: Map<String, Json>) -> String {
        let now = timestamp(Utc::now());
        let id = new_id();
        self.by_id.insert(id.clone(), self.profiles.len());
        self.profiles.push(Profile {
            id: id.clone(),
            attributes,
            created: now.clone(),
            updated: now,
        });
        id
    }

    pub(crate) fn record_bulk_job(&mut self, job: BulkJob) {
        self.bulk_jobs.push(job);
    }

    /// The profile these identifiers lead to: `id` if given (it must exist), else the first of
    /// email, phone number, external id that matches. Any identifier that leads elsewhere is a
    /// duplicate.
    fn find(
        &self,
        id: Option<&str>,
        attributes: &Map<String, Json>,
    ) -> Result<Option<usize>, MatchError> {
        let matches: Vec<usize> = IDENTIFIERS
            .iter()
            .filter_map(|&name| {
                let value = attributes.get(name)?.as_str()?;
                self.by_identifier.get(&key(name, value)).copied()
            })
            .collect();
        let primary = match id {
            Some(id) => Some(
                *self
                    .by_id
                    .get(id)
                    .ok_or_else(|| MatchError::NotFound(id.to_string()))?,
            ),
            None => matches.first().copied(),
        };
        if let Some(primary) = primary
            && let Some(&other) = matches.iter().find(|&&i| i != primary)
        {
            return Err(MatchError::Duplicate(self.profiles[other].id.clone()));
        }
        Ok(primary)
    }

    /// Creates or updates a profile; gives its index and whether it was created.
    pub(crate) fn upsert(
        &mut self,
        id: Option<&str>,
        attributes: &Map<String, Json>,
        meta: Option<&Json>,
        nulls: Nulls,
    ) -> Result<(usize, bool), MatchError> {
        let found = self.find(id, attributes)?;
        let now = timestamp(Utc::now());
        let index = match found {
            Some(index) => index,
            None => {
                let id = new_id();
                self.by_id.insert(id.clone(), self.profiles.len());
                self.profiles.push(Profile {
                    id,
                    attributes: Map::new(),
                    created: now.clone(),
                    updated: now.clone(),
                });
                self.profiles.len() - 1
            }
        };
        let profile = &mut self.profiles[index];
        for name in IDENTIFIERS {
            if let Some(value) = profile.attributes.get(name).and_then(Json::as_str) {
                self.by_identifier.remove(&key(name, value));
            }
        }
        apply(&mut profile.attributes, attributes, meta, nulls);
        profile.updated = now;
        for name in IDENTIFIERS {
            if let Some(value) = profile.attributes.get(name).and_then(Json::as_str) {
                self.by_identifier.insert(key(name, value), index);
            }
        }
        Ok((index, found.is_none()))
    }
}

fn key(identifier: &'static str, value: &str) -> (&'static str, String) {
    let value = if identifier == "email" {
        value.to_lowercase()
    } else {
        value.to_string()
    };
    (identifier, value)
}

/// Writes `attributes` over `target`: a value sets the field, `null` clears it (or is ignored),
/// `location` and `properties` merge key by key; then `meta.patch_properties`.
fn apply(
    target: &mut Map<String, Json>,
    attributes: &Map<String, Json>,
    meta: Option<&Json>,
    nulls: Nulls,
) {
    for (name, value) in attributes {
        match value {
            Json::Null => {
                if nulls == Nulls::Clear {
                    target.remove(name);
                }
            }
            Json::Object(fields) if name == "location" || name == "properties" => {
                let entry = target.entry(name.clone()).or_insert_with(|| json!({}));
                if !entry.is_object() {
                    *entry = json!({});
                }
                let object = entry.as_object_mut().expect("made an object above");
                for (field, value) in fields {
                    if !value.is_null() {
                        object.insert(field.clone(), value.clone());
                    } else if nulls == Nulls::Clear {
                        object.remove(field);
                    }
                }
            }
            _ => {
                target.insert(name.clone(), value.clone());
            }
        }
    }
    if let Some(patch) = meta.and_then(|m| m.get("patch_properties")) {
        patch_properties(target, patch);
    }
}

/// `append` adds values to an array property, `unappend` removes them, `unset` removes keys.
fn patch_properties(target: &mut Map<String, Json>, patch: &Json) {
    let properties = target.entry("properties").or_insert_with(|| json!({}));
    let Some(properties) = properties.as_object_mut() else {
        return;
    };
    let values = |v: &Json| match v {
        Json::Array(items) => items.clone(),
        other => vec![other.clone()],
    };
    if let Some(append) = patch.get("append").and_then(Json::as_object) {
        for (name, value) in append {
            let entry = properties.entry(name.clone()).or_insert_with(|| json!([]));
            if !entry.is_array() {
                *entry = Json::Array(values(entry));
            }
            let list = entry.as_array_mut().expect("made an array above");
            list.extend(values(value));
        }
    }
    if let Some(unappend) = patch.get("unappend").and_then(Json::as_object) {
        for (name, value) in unappend {
            if let Some(list) = properties.get_mut(name).and_then(Json::as_array_mut) {
                let gone = values(value);
                list.retain(|item| !gone.contains(item));
            }
        }
    }
    match patch.get("unset") {
        Some(Json::String(name)) => {
            properties.remove(name);
        }
        Some(Json::Array(names)) => {
            for name in names.iter().filter_map(Json::as_str) {
                properties.remove(name);
            }
        }
        _ => {}
    }
}

/// Klaviyo's timestamp format: `2022-11-08T00:00:00+00:00`.
pub(crate) fn timestamp(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, false)
}

/// A new id in the shape of Klaviyo's profile ids: 26 characters of Crockford base 32.
pub(crate) fn new_id() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let random: [u8; 24] = rand::random();
    let tail: String = random
        .iter()
        .map(|b| ALPHABET[(*b % 32) as usize] as char)
        .collect();
    format!("01{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(value: Json) -> Map<String, Json> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn upsert_matches_by_email_then_phone_and_reports_duplicates() {
        let mut store = Store::default();
        let (a, created) = store
            .upsert(None, &attrs(json!({"email": "A@x.co"})), None, Nulls::Clear)
            .unwrap();
        assert!(created);
        let (b, _) = store
            .upsert(
                None,
                &attrs(json!({"phone_number": "+15005550006"})),
                None,
                Nulls::Clear,
            )
            .unwrap();
        assert_ne!(a, b);
        let (again, created) = store
            .upsert(
                None,
                &attrs(json!({"email": "a@x.co", "first_name": "Ann"})),
                None,
                Nulls::Clear,
            )
            .unwrap();
        assert_eq!((again, created), (a, false));
        let both = attrs(json!({"email": "a@x.co", "phone_number": "+15005550006"}));
        assert_eq!(
            store.upsert(None, &both, None, Nulls::Clear),
            Err(MatchError::Duplicate(store.profile(b).id.clone()))
        );
    }

    #[test]
    fn nulls_clear_or_are_ignored() {
        let mut store = Store::default();
        let first =
            attrs(json!({"email": "a@x.co", "first_name": "Ann", "properties": {"a": 1, "b": 2}}));
        store.upsert(None, &first, None, Nulls::Clear).unwrap();
        let nulls =
            attrs(json!({"email": "a@x.co", "first_name": null, "properties": {"a": null}}));
        store.upsert(None, &nulls, None, Nulls::Ignore).unwrap();
        assert_eq!(store.profile(0).attributes["first_name"], "Ann");
        store.upsert(None, &nulls, None, Nulls::Clear).unwrap();
        let profile = store.profile(0);
        assert_eq!(profile.attribute("first_name"), None);
        assert_eq!(profile.attributes["properties"], json!({"b": 2}));
    }

    #[test]
    fn patch_properties_appends_and_unsets() {
        let mut target = attrs(json!({"properties": {"tags": ["a"], "gone": 1}}));
        let meta = json!({"patch_properties": {"append": {"tags": ["b", "c"]}, "unappend": {"tags": "a"}, "unset": "gone"}});
        apply(&mut target, &Map::new(), Some(&meta), Nulls::Clear);
        assert_eq!(target["properties"], json!({"tags": ["b", "c"]}));
    }
}
