//! Many queued requests as one bulk request, when a backlog makes it worth it.
//!
//! Single-resource endpoints answer fastest, so a short queue goes one by one. A backlog of
//! events would take minutes at 3,500 a minute; Klaviyo's bulk job takes 1,000 events a
//! request (and 150 requests a minute). Subscriptions already go to a bulk-job endpoint, so
//! queued ones with the same options are merged, up to 1,000 profiles a request. What goes in
//! a batch is checked against the bulk endpoint's own schema first; a request that does not
//! fit one simply goes on its own.

use crate::klaviyo::{Endpoint, Schemas};
use bytes::Bytes;
use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::Value as Json;
use serde_json::value::RawValue;
use std::collections::HashSet;

/// At most this many events, or profiles to subscribe, in one bulk request.
pub const MAX_ITEMS: usize = 1_000;
/// At most this many bytes in one bulk request (Klaviyo's 5 MB, read as decimal megabytes).
pub const MAX_BYTES: usize = 5_000_000;

/// Where requests queued for `endpoint` go when they go in bulk: events as event bulk jobs,
/// profiles as profile import jobs; subscriptions already go to a bulk endpoint, merged.
pub fn endpoint_for(endpoint: Endpoint) -> Endpoint {
    match endpoint {
        Endpoint::CreateEvent => Endpoint::BulkCreateEvents,
        Endpoint::CreateOrUpdateProfile => Endpoint::BulkImportProfiles,
        other => other,
    }
}

/// A queued request read back to be batched: its id and its stored text.
#[derive(Debug, Clone, Copy)]
pub struct Queued<'a> {
    pub id: i64,
    pub text: &'a str,
}

/// A bulk request ready to go, as text. Event and profile jobs are written from the stored
/// text of their requests, each entry checked against the bulk endpoint's schema on its own:
/// built as one tree, a job of a thousand events was 14 MB of `serve`'s heap at its peak for
/// 4 MB of text (heaptrack, 30,000 webhooks), and it was held until Klaviyo answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub endpoint: Endpoint,
    pub ids: Vec<i64>,
    pub body: Bytes,
}

/// A job being written: the entries so far between the job's fixed head and tail, which are
/// the one place each job's shape and limits are written down.
struct JobText {
    endpoint: Endpoint,
    head: &'static str,
    tail: &'static str,
    /// The most entries Klaviyo takes in one job of this kind.
    max_entries: usize,
    ids: Vec<i64>,
    text: String,
}

impl JobText {
    fn events() -> JobText {
        JobText::new(
            Endpoint::BulkCreateEvents,
            r#"{"data":{"type":"event-bulk-create-job","attributes":{"events-bulk-create":{"data":["#,
            MAX_ITEMS,
        )
    }

    fn profiles() -> JobText {
        JobText::new(
            Endpoint::BulkImportProfiles,
            r#"{"data":{"type":"profile-bulk-import-job","attributes":{"profiles":{"data":["#,
            MAX_PROFILES,
        )
    }

    fn new(endpoint: Endpoint, head: &'static str, max_entries: usize) -> JobText {
        JobText {
            endpoint,
            head,
            tail: "]}}}}",
            max_entries,
            ids: Vec::new(),
            text: head.to_owned(),
        }
    }

    /// Whether `entry` (JSON text) passes the bulk endpoint's schema as the only entry of a
    /// job. Nothing in a job's schema relates its entries to one another (their number is
    /// kept to Klaviyo's limit here), so a job of entries that each pass, passes.
    fn fits(&self, schemas: &Schemas, entry: &str) -> bool {
        let alone = format!("{}{entry}{}", self.head, self.tail);
        serde_json::from_str(&alone).is_ok_and(|job| schemas.check(self.endpoint, &job).is_ok())
    }

    /// Whether `entry` can join the job: it holds fewer than its most entries, and stays
    /// within [`MAX_BYTES`] with it.
    fn has_room(&self, entry: &str) -> bool {
        self.ids.len() < self.max_entries
            && self.text.len() + 1 + entry.len() + self.tail.len() <= MAX_BYTES
    }

    fn push(&mut self, id: i64, entry: &str) {
        if !self.ids.is_empty() {
            self.text.push(',');
        }
        self.text.push_str(entry);
        self.ids.push(id);
    }

    /// The job so far, if it has an entry; this one starts again empty.
    fn finish(&mut self) -> Option<Job> {
        if self.ids.is_empty() {
            return None;
        }
        let mut text = std::mem::replace(&mut self.text, self.head.to_owned());
        text.push_str(self.tail);
        text.shrink_to_fit();
        Some(Job {
            endpoint: self.endpoint,
            ids: std::mem::take(&mut self.ids),
            body: Bytes::from(text.into_bytes()),
        })
    }
}

/// A stored `POST /api/events` body, its attributes kept as text.
#[derive(Deserialize)]
struct StoredEvent<'a> {
    #[serde(borrow)]
    data: StoredEventData<'a>,
}

#[derive(Deserialize)]
struct StoredEventData<'a> {
    #[serde(borrow)]
    attributes: IndexMap<String, &'a RawValue>,
}

/// Groups event bodies (`POST /api/events`) into event bulk-create jobs. Two events with the
/// same profile, metric and `unique_id` never share a request (Klaviyo refuses that); the
/// second waits for the next batch. Returns the jobs and the ids left to go one by one: those
/// second ones, and any that is not an event or does not pass the bulk schema.
pub fn event_jobs<'a>(
    rows: impl IntoIterator<Item = Queued<'a>>,
    schemas: &Schemas,
) -> (Vec<Job>, Vec<i64>) {
    let mut jobs = Vec::new();
    let mut left = Vec::new();
    let mut job = JobText::events();
    let mut keys = HashSet::new();
    for Queued { id, text } in rows {
        let Some((entry, key)) = event_entry(text) else {
            left.push(id);
            continue;
        };
        if keys.contains(&key) || !job.fits(schemas, &entry) {
            left.push(id);
            continue;
        }
        if !job.has_room(&entry) {
            jobs.extend(job.finish());
            keys.clear();
        }
        keys.insert(key);
        job.push(id, &entry);
    }
    jobs.extend(job.finish());
    (jobs, left)
}

/// An event body's bulk entry (its profile beside the event, which keeps every other
/// attribute in its order) and its dedupe key, written from the stored text.
fn event_entry(text: &str) -> Option<(String, String)> {
    let StoredEvent {
        data: StoredEventData { mut attributes },
    } = serde_json::from_str(text).ok()?;
    let metric: Json = serde_json::from_str(attributes.get("metric")?.get()).ok()?;
    let metric = metric.pointer("/data/attributes/name")?.as_str()?;
    let profile = attributes.shift_remove("profile")?;
    let identity = serde_json::from_str::<Json>(profile.get())
        .ok()?
        .pointer("/data/attributes")
        .and_then(|p| {
            ["email", "phone_number", "external_id"]
                .iter()
                .find_map(|k| p.get(*k))
        })
        .map(Json::to_string)
        .unwrap_or_default();
    let unique_id = attributes.get("unique_id").map_or("", |raw| raw.get());
    let key = format!("{identity}\u{1f}{metric}\u{1f}{unique_id}");
    let mut entry = String::with_capacity(text.len() + 64);
    entry.push_str(r#"{"type":"event-bulk-create","attributes":{"profile":"#);
    entry.push_str(profile.get());
    entry.push_str(r#","events":{"data":[{"type":"event","attributes":{"#);
    for (i, (name, value)) in attributes.iter().enumerate() {
        if i > 0 {
            entry.push(',');
        }
        entry.push_str(&Json::from(name.as_str()).to_string());
        entry.push(':');
        entry.push_str(value.get());
    }
    entry.push_str("}}]}}}");
    Some((entry, key))
}

/// Merges subscription jobs whose options (everything but the profiles) are the same, up to
/// [`MAX_ITEMS`] profiles a request. Returns the jobs and the ids left to go one by one.
pub fn subscription_jobs<'a>(
    rows: impl IntoIterator<Item = Queued<'a>>,
    schemas: &Schemas,
) -> (Vec<Job>, Vec<i64>) {
    // (options, ids, profiles, bytes)
    let mut groups: Vec<(Json, Vec<i64>, Vec<Json>, usize)> = Vec::new();
    let mut batches = Vec::new();
    let mut left = Vec::new();
    for Queued { id, text } in rows {
        let Ok(mut options) = serde_json::from_str::<Json>(text) else {
            left.push(id);
            continue;
        };
        let Some(profiles) = options
            .pointer_mut("/data/attributes/profiles/data")
            .and_then(Json::as_array_mut)
            .map(std::mem::take)
        else {
            left.push(id);
            continue;
        };
        // The profiles are part of the request's text, so its length bounds theirs.
        let size = text.len();
        let group = match groups.iter_mut().position(|g| g.0 == options) {
            Some(i) => i,
            None => {
                groups.push((options, Vec::new(), Vec::new(), 0));
                groups.len() - 1
            }
        };
        let full = {
            let g = &groups[group];
            g.2.len() + profiles.len() > MAX_ITEMS || g.3 + size > MAX_BYTES
        };
        if full {
            let fresh = (groups[group].0.clone(), Vec::new(), Vec::new(), 0);
            let (options, ids, merged, _) = std::mem::replace(&mut groups[group], fresh);
            batches.push((subscription_body(options, merged), ids));
        }
        let g = &mut groups[group];
        g.1.push(id);
        g.2.extend(profiles);
        g.3 += size;
    }
    for (options, ids, merged, _) in groups {
        if !ids.is_empty() {
            batches.push((subscription_body(options, merged), ids));
        }
    }
    let mut jobs = Vec::new();
    for (body, ids) in batches {
        if schemas
            .check(Endpoint::BulkSubscribeProfiles, &body)
            .is_ok()
        {
            let text = serde_json::to_vec(&body).expect("a JSON value serialises");
            jobs.push(Job {
                endpoint: Endpoint::BulkSubscribeProfiles,
                ids,
                body: text.into(),
            });
        } else {
            left.extend(ids);
        }
    }
    (jobs, left)
}

fn subscription_body(mut options: Json, profiles: Vec<Json>) -> Json {
    if let Some(slot) = options.pointer_mut("/data/attributes/profiles/data") {
        *slot = Json::Array(profiles);
    }
    options
}

/// At most this many profiles in one bulk import job.
pub const MAX_PROFILES: usize = 10_000;

/// A stored `POST /api/profile-import` body: its profile resource, as text.
#[derive(Deserialize)]
struct StoredResource<'a> {
    #[serde(borrow)]
    data: &'a RawValue,
}

/// Groups profile upserts (`POST /api/profile-import`) into bulk import jobs, 10,000 profiles
/// and 5 MB at most. Entry `i` of a job is the `i`-th id of the batch, which is how import
/// errors, once matched to an entry ([`match_import_errors`]), find their request. Returns the
/// jobs and the ids left to go one by one (not a profile, or not passing the bulk schema).
pub fn profile_jobs<'a>(
    rows: impl IntoIterator<Item = Queued<'a>>,
    schemas: &Schemas,
) -> (Vec<Job>, Vec<i64>) {
    let mut jobs = Vec::new();
    let mut left = Vec::new();
    let mut job = JobText::profiles();
    for Queued { id, text } in rows {
        let resource = serde_json::from_str::<StoredResource>(text)
            .ok()
            .map(|stored| stored.data.get())
            .filter(|resource| resource.starts_with('{'));
        let Some(resource) = resource.filter(|r| job.fits(schemas, r)) else {
            left.push(id);
            continue;
        };
        if !job.has_room(resource) {
            jobs.extend(job.finish());
        }
        job.push(id, resource);
    }
    jobs.extend(job.finish());
    (jobs, left)
}

/// What an import error of a profile bulk import job says about which profile it is about.
/// Klaviyo's spec (`ImportErrorResponseObjectResource`) gives `original_payload` (an object,
/// nullable) and `source.pointer` (nullable, `/data` by default); neither is promised to name
/// the profile.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportErrorRef {
    pub pointer: Option<String>,
    pub original_payload: Option<Json>,
}

/// Which profiles of a job its import errors are about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportVerdict {
    /// Places in the job of the profiles an error was matched to.
    pub refused: Vec<usize>,
    /// The job failed more profiles than the errors could be matched to (its `failed_count`,
    /// or, without one, an error that matched nothing): no profile of it can be called
    /// imported without being sent again.
    pub unmatched_failures: bool,
}

/// Matches a job's import errors to its profiles (`profiles[i]` is entry `i` of the job, a
/// profile resource). Each error is matched by its `original_payload`'s identifiers (email,
/// phone number, external id: every one both name must agree, and at least one must be
/// shared), then, when that finds no single profile, by a pointer of the form
/// `/data/attributes/profiles/data/N`.
pub fn match_import_errors(
    profiles: &[Json],
    errors: &[ImportErrorRef],
    failed_count: Option<usize>,
) -> ImportVerdict {
    let identities: Vec<Identity> = profiles
        .iter()
        .map(|p| Identity::of(p.get("attributes").unwrap_or(&Json::Null)))
        .collect();
    let mut refused = std::collections::BTreeSet::new();
    let mut unmatched = 0;
    for error in errors {
        let by_pointer = error
            .pointer
            .as_deref()
            .and_then(profile_index)
            .filter(|i| *i < profiles.len());
        let candidates: Vec<usize> = error
            .original_payload
            .as_ref()
            .map(Identity::of_payload)
            .filter(|identity| !identity.is_empty())
            .map(|identity| {
                (0..profiles.len())
                    .filter(|i| identities[*i].same_profile(&identity))
                    .collect()
            })
            .unwrap_or_default();
        let found = match candidates.as_slice() {
            [only] => Some(*only),
            [] => by_pointer,
            several => by_pointer.filter(|i| several.contains(i)),
        };
        match found {
            Some(index) => {
                refused.insert(index);
            }
            None => unmatched += 1,
        }
    }
    let unmatched_failures = match failed_count {
        Some(failed) => failed > refused.len(),
        None => unmatched > 0,
    };
    ImportVerdict {
        refused: refused.into_iter().collect(),
        unmatched_failures,
    }
}

/// The identifiers a profile is known by.
#[derive(Debug, Default, PartialEq)]
struct Identity {
    email: Option<String>,
    phone_number: Option<String>,
    external_id: Option<String>,
}

impl Identity {
    /// From profile attributes.
    fn of(attributes: &Json) -> Identity {
        let text = |key: &str| {
            attributes
                .get(key)
                .and_then(Json::as_str)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        Identity {
            // Klaviyo does not tell emails apart by case.
            email: text("email").map(|e| e.to_lowercase()),
            phone_number: text("phone_number"),
            external_id: text("external_id"),
        }
    }

    /// From an `original_payload`: the attributes as sent, or the profile resource (alone or
    /// under `data`), whichever names an identifier.
    fn of_payload(payload: &Json) -> Identity {
        [
            Some(payload),
            payload.get("attributes"),
            payload.pointer("/data/attributes"),
        ]
        .into_iter()
        .flatten()
        .map(Identity::of)
        .find(|identity| !identity.is_empty())
        .unwrap_or_default()
    }

    fn is_empty(&self) -> bool {
        *self == Identity::default()
    }

    /// Whether both name the same profile: no identifier both have differs, and one agrees.
    fn same_profile(&self, other: &Identity) -> bool {
        let pairs = [
            (&self.email, &other.email),
            (&self.phone_number, &other.phone_number),
            (&self.external_id, &other.external_id),
        ];
        let shared: Vec<bool> = pairs
            .iter()
            .filter_map(|(a, b)| Some(a.as_ref()? == b.as_ref()?))
            .collect();
        !shared.is_empty() && shared.iter().all(|same| *same)
    }
}

/// The index of the profile an import error points at (`/data/attributes/profiles/data/3/...`).
pub fn profile_index(pointer: &str) -> Option<usize> {
    pointer
        .strip_prefix("/data/attributes/profiles/data/")?
        .split('/')
        .next()?
        .parse()
        .ok()
}

/// The profiles of a profile import job's body, entry `i` at place `i`, for matching its
/// import errors ([`match_import_errors`]); read again only when Klaviyo reported errors.
pub fn job_profiles(body: &[u8]) -> Vec<Json> {
    let Ok(mut body) = serde_json::from_slice::<Json>(body) else {
        return Vec::new();
    };
    match body.pointer_mut("/data/attributes/profiles/data") {
        Some(Json::Array(profiles)) => std::mem::take(profiles),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Rows as the store keeps them: their bodies as text.
    fn stored(rows: Vec<(i64, Json)>) -> Vec<(i64, String)> {
        rows.into_iter()
            .map(|(id, body)| (id, body.to_string()))
            .collect()
    }

    fn queued(texts: &[(i64, String)]) -> Vec<Queued<'_>> {
        texts
            .iter()
            .map(|(id, text)| Queued { id: *id, text })
            .collect()
    }

    fn body_of(job: &Job) -> Json {
        serde_json::from_slice(&job.body).expect("a job's body is JSON")
    }

    fn event(email: &str, metric: &str, unique_id: &str) -> Json {
        json!({"data": {"type": "event", "attributes": {
            "properties": {"OrderId": "1"}, "time": "2026-03-13T23:15:30+00:00", "value": 1.5,
            "unique_id": unique_id,
            "metric": {"data": {"type": "metric", "attributes": {"name": metric}}},
            "profile": {"data": {"type": "profile", "attributes": {"email": email}}}}}})
    }

    #[test]
    fn events_become_a_valid_bulk_job() {
        let rows: Vec<(i64, Json)> = (0..3)
            .map(|i| {
                (
                    i,
                    event(&format!("{i}@x.co"), "Placed Order", &format!("u{i}")),
                )
            })
            .collect();
        let texts = stored(rows);
        let (jobs, left) = event_jobs(queued(&texts), Schemas::builtin());
        assert!(left.is_empty(), "every entry passes the bulk schema");
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].ids, [0, 1, 2]);
        let body = body_of(&jobs[0]);
        assert!(
            Schemas::builtin()
                .check(Endpoint::BulkCreateEvents, &body)
                .is_ok(),
            "the job passes Klaviyo's schema as a whole"
        );
        let first = &body["data"]["attributes"]["events-bulk-create"]["data"][0];
        assert_eq!(
            first["attributes"]["events"]["data"][0]["attributes"]
                .as_object()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            ["properties", "time", "value", "unique_id", "metric"],
            "the event keeps its attributes in their order"
        );
        let entry = &body["data"]["attributes"]["events-bulk-create"]["data"][1];
        assert_eq!(
            entry["attributes"]["profile"]["data"]["attributes"]["email"],
            "1@x.co"
        );
        assert_eq!(
            entry["attributes"]["events"]["data"][0]["attributes"]["unique_id"],
            "u1"
        );
        assert!(
            entry["attributes"]["events"]["data"][0]["attributes"]
                .get("profile")
                .is_none()
        );
    }

    #[test]
    fn a_batch_holds_at_most_a_thousand_and_never_one_event_twice() {
        let mut rows: Vec<(i64, Json)> = (0..2_500)
            .map(|i| (i, event(&format!("{i}@x.co"), "M", &format!("u{i}"))))
            .collect();
        rows.insert(1, (9_999, event("0@x.co", "M", "u0")));
        let texts = stored(rows);
        let (batches, left) = event_jobs(queued(&texts), Schemas::builtin());
        assert_eq!(
            batches.iter().map(|b| b.ids.len()).collect::<Vec<_>>(),
            [1_000, 1_000, 500]
        );
        assert_eq!(
            left,
            [9_999],
            "the duplicate of event 0 waits for another request"
        );
    }

    #[test]
    fn a_request_the_bulk_schema_refuses_or_that_is_not_json_goes_alone_and_the_rest_are_batched() {
        let mut refused = event("1@x.co", "Placed Order", "u1");
        refused["data"]["attributes"]["value"] = json!("not a number");
        let mut texts = stored(vec![
            (0, event("0@x.co", "Placed Order", "u0")),
            (1, refused),
            (2, event("2@x.co", "Placed Order", "u2")),
        ]);
        texts.push((3, "{\"data\": {\"type\": \"event\", \"attrib".to_owned()));
        let (jobs, left) = event_jobs(queued(&texts), Schemas::builtin());
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].ids, [0, 2]);
        assert_eq!(left, [1, 3]);
        let profile = json!({"data": {"type": "profile", "attributes": {"email": 5}}});
        let texts = stored(vec![(4, profile)]);
        assert_eq!(
            profile_jobs(queued(&texts), Schemas::builtin()),
            (Vec::new(), vec![4])
        );
    }

    #[test]
    fn a_bulk_request_stays_within_five_megabytes_though_sizes_come_from_the_stored_text() {
        // 1,000 events of 6 KB, 8,000 profiles of 700 bytes: each set is more than one request
        // may carry, so it must be split, and each serialised job must fit.
        let big = "é".repeat(3_000);
        let events: Vec<_> = (0..1_000)
            .map(|i| {
                let mut body = event(&format!("{i}@x.co"), "Placed Order", &format!("u{i}"));
                body["data"]["attributes"]["properties"]["Note"] = json!(big);
                (i, body)
            })
            .collect();
        let profiles: Vec<_> = (0..8_000)
            .map(|i| {
                (
                    i,
                    json!({"data": {"type": "profile", "attributes": {
                    "email": format!("{i}@x.co"), "properties": {"Note": "x".repeat(640)}}}}),
                )
            })
            .collect();
        let (events, profiles) = (stored(events), stored(profiles));
        for ((jobs, single), total) in [
            (event_jobs(queued(&events), Schemas::builtin()), 1_000),
            (profile_jobs(queued(&profiles), Schemas::builtin()), 8_000),
        ] {
            assert!(single.is_empty());
            assert!(jobs.len() >= 2, "more than one request's worth is split");
            assert_eq!(jobs.iter().map(|j| j.ids.len()).sum::<usize>(), total);
            for job in &jobs {
                assert!(job.body.len() <= MAX_BYTES, "{} bytes", job.body.len());
                let body: Json = serde_json::from_slice(&job.body).expect("a job is JSON");
                assert!(Schemas::builtin().check(job.endpoint, &body).is_ok());
            }
        }
    }

    #[test]
    fn profiles_become_a_bulk_import_job_whose_errors_find_their_request() {
        let profile = |email: &str| json!({"data": {"type": "profile", "attributes": {"email": email, "first_name": "A"}}});
        let rows = vec![(7, profile("a@x.co")), (9, profile("b@x.co"))];
        let texts = stored(rows);
        let (good, left) = profile_jobs(queued(&texts), Schemas::builtin());
        assert!(
            left.is_empty(),
            "the bulk import body passes Klaviyo's schema"
        );
        assert_eq!(good[0].ids, [7, 9]);
        assert_eq!(
            body_of(&good[0])["data"]["attributes"]["profiles"]["data"][1]["attributes"]["email"],
            "b@x.co"
        );
        assert_eq!(
            profile_index("/data/attributes/profiles/data/1/attributes/phone_number"),
            Some(1)
        );
        assert_eq!(profile_index("/data/attributes/other"), None);
    }

    fn resource(attributes: Json) -> Json {
        json!({"type": "profile", "attributes": attributes})
    }

    fn error(pointer: &str, payload: Json) -> ImportErrorRef {
        ImportErrorRef {
            pointer: Some(pointer.to_owned()),
            original_payload: Some(payload).filter(|p| !p.is_null()),
        }
    }

    #[test]
    fn import_errors_find_their_profile_by_original_payload_then_pointer() {
        let profiles = [
            resource(json!({"email": "a@x.co"})),
            resource(json!({"email": "b@x.co", "phone_number": "+1234"})),
            resource(json!({"external_id": "c-1"})),
        ];
        // Payload only (the spec's default pointer), in each form it might take.
        for payload in [
            json!({"email": "B@x.co", "phone_number": "+1234"}),
            json!({"type": "profile", "attributes": {"email": "b@x.co"}}),
            json!({"data": {"type": "profile", "attributes": {"phone_number": "+1234"}}}),
        ] {
            let verdict = match_import_errors(&profiles, &[error("/data", payload)], Some(1));
            assert_eq!(verdict.refused, [1]);
            assert!(!verdict.unmatched_failures);
        }
        // Two errors of one profile count it once.
        let twice = [
            error("/data", json!({"external_id": "c-1"})),
            error("/data", json!({"external_id": "c-1"})),
        ];
        let verdict = match_import_errors(&profiles, &twice, Some(1));
        assert_eq!(verdict.refused, [2]);
        assert!(!verdict.unmatched_failures);
        // No payload: the pointer; a payload naming no profile of the job: the pointer too.
        let pointed = [
            error(
                "/data/attributes/profiles/data/0/attributes/email",
                Json::Null,
            ),
            error(
                "/data/attributes/profiles/data/2",
                json!({"email": "zz@x.co"}),
            ),
        ];
        let verdict = match_import_errors(&profiles, &pointed, Some(2));
        assert_eq!(verdict.refused, [0, 2]);
        assert!(!verdict.unmatched_failures);
        // An identifier that disagrees is another profile.
        let other = [error(
            "/data",
            json!({"email": "b@x.co", "phone_number": "+9999"}),
        )];
        assert_eq!(
            match_import_errors(&profiles, &other, Some(1)).refused,
            Vec::<usize>::new()
        );
    }

    #[test]
    fn failures_no_error_names_leave_the_job_unconfirmed() {
        let profiles = [
            resource(json!({"email": "a@x.co"})),
            resource(json!({"email": "b@x.co"})),
        ];
        let anonymous = [error("/data", Json::Null)];
        let verdict = match_import_errors(&profiles, &anonymous, Some(1));
        assert!(verdict.refused.is_empty());
        assert!(verdict.unmatched_failures);
        // More failed than matched, though every error matched.
        let one = [error("/data", json!({"email": "a@x.co"}))];
        assert!(match_import_errors(&profiles, &one, Some(2)).unmatched_failures);
        // Without a failed_count, an error that matched nothing says as much.
        assert!(match_import_errors(&profiles, &anonymous, None).unmatched_failures);
        assert!(!match_import_errors(&profiles, &one, None).unmatched_failures);
        assert!(!match_import_errors(&profiles, &[], Some(0)).unmatched_failures);
    }

    #[test]
    fn subscriptions_with_the_same_options_merge() {
        let sub = |email: &str, source: &str| {
            json!({"data": {"type": "profile-subscription-bulk-create-job", "attributes": {
            "custom_source": source, "historical_import": true,
            "profiles": {"data": [{"type": "profile", "attributes": {"email": email, "subscriptions": {"email": {"marketing": {"consent": "SUBSCRIBED", "consented_at": "2026-03-13T23:15:30+00:00"}}}}}]}}}})
        };
        let rows = vec![
            (1, sub("a@x.co", "checkout")),
            (2, sub("b@x.co", "checkout")),
            (3, sub("c@x.co", "other")),
        ];
        let texts = stored(rows);
        let (good, left) = subscription_jobs(queued(&texts), Schemas::builtin());
        assert!(left.is_empty());
        assert_eq!(
            good.iter().map(|b| b.ids.clone()).collect::<Vec<_>>(),
            [vec![1, 2], vec![3]]
        );
        assert_eq!(
            body_of(&good[0])["data"]["attributes"]["profiles"]["data"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }
}
