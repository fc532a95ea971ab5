//! Many queued requests as one bulk request, when a backlog makes it worth it.
//!
//! Single-resource endpoints answer fastest, so a short queue goes one by one. A backlog of
//! events would take minutes at 3,500 a minute; Klaviyo's bulk job takes 1,000 events a
//! request (and 150 requests a minute). Subscriptions already go to a bulk-job endpoint, so
//! queued ones with the same options are merged, up to 1,000 profiles a request. Each batch is
//! validated against the bulk endpoint's own schema before it is sent; a request that does not
//! fit a batch simply goes on its own.

use crate::klaviyo::{Endpoint, Schemas};
use serde_json::{Map, Value as Json, json};
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

/// Queued requests sent together.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub endpoint: Endpoint,
    pub ids: Vec<i64>,
    pub body: Json,
}

/// Groups event bodies (`POST /api/events`) into event bulk-create jobs. Two events with the
/// same profile, metric and `unique_id` never share a request (Klaviyo refuses that); the
/// second waits for the next batch. Returns the batches and the ids left for later.
pub fn event_batches(rows: &[(i64, Json)]) -> (Vec<Batch>, Vec<i64>) {
    let mut batches = Vec::new();
    let mut left = Vec::new();
    let mut current = EventBatch::default();
    for (id, body) in rows {
        let Some((profile, event, key)) = split_event(body) else {
            left.push(*id);
            continue;
        };
        if current.keys.contains(&key) {
            left.push(*id);
            continue;
        }
        let size = profile.to_string().len() + event.to_string().len() + 64;
        if current.ids.len() == MAX_ITEMS || current.bytes + size > MAX_BYTES {
            batches.extend(std::mem::take(&mut current).finish());
        }
        current.add(*id, profile, event, key, size);
    }
    batches.extend(current.finish());
    (batches, left)
}

#[derive(Default)]
struct EventBatch {
    ids: Vec<i64>,
    entries: Vec<Json>,
    keys: HashSet<String>,
    bytes: usize,
}

impl EventBatch {
    fn add(&mut self, id: i64, profile: Json, event: Json, key: String, size: usize) {
        self.ids.push(id);
        self.keys.insert(key);
        self.bytes += size;
        self.entries.push(json!({
            "type": "event-bulk-create",
            "attributes": {"profile": profile, "events": {"data": [event]}}
        }));
    }

    fn finish(self) -> Option<Batch> {
        if self.ids.is_empty() {
            return None;
        }
        let body = json!({"data": {"type": "event-bulk-create-job", "attributes": {
            "events-bulk-create": {"data": self.entries}}}});
        Some(Batch {
            endpoint: Endpoint::BulkCreateEvents,
            ids: self.ids,
            body,
        })
    }
}

/// An event body as (profile, bulk event entry, dedupe key).
fn split_event(body: &Json) -> Option<(Json, Json, String)> {
    let attributes = body.pointer("/data/attributes")?.as_object()?;
    let profile = attributes.get("profile")?.clone();
    let metric = attributes
        .get("metric")?
        .pointer("/data/attributes/name")?
        .as_str()?;
    let identity = profile
        .pointer("/data/attributes")
        .and_then(|p| {
            ["email", "phone_number", "external_id"]
                .iter()
                .find_map(|k| p.get(*k))
        })
        .map(Json::to_string)
        .unwrap_or_default();
    let unique_id = attributes
        .get("unique_id")
        .map(Json::to_string)
        .unwrap_or_default();
    let event: Map<String, Json> = attributes
        .iter()
        .filter(|(k, _)| k.as_str() != "profile")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let key = format!("{identity}\u{1f}{metric}\u{1f}{unique_id}");
    Some((profile, json!({"type": "event", "attributes": event}), key))
}

/// Merges subscription jobs whose options (everything but the profiles) are the same, up to
/// [`MAX_ITEMS`] profiles a request.
pub fn subscription_batches(rows: &[(i64, Json)]) -> (Vec<Batch>, Vec<i64>) {
    // (options, ids, profiles)
    let mut groups: Vec<(Json, Vec<i64>, Vec<Json>, usize)> = Vec::new();
    let mut batches = Vec::new();
    let mut left = Vec::new();
    for (id, body) in rows {
        let mut options = body.clone();
        let Some(profiles) = options
            .pointer_mut("/data/attributes/profiles/data")
            .and_then(Json::as_array_mut)
            .map(std::mem::take)
        else {
            left.push(*id);
            continue;
        };
        let size = Json::Array(profiles.clone()).to_string().len();
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
            batches.push(subscription_batch(options, ids, merged));
        }
        let g = &mut groups[group];
        g.1.push(*id);
        g.2.extend(profiles);
        g.3 += size;
    }
    for (options, ids, merged, _) in groups {
        if !ids.is_empty() {
            batches.push(subscription_batch(options, ids, merged));
        }
    }
    (batches, left)
}

fn subscription_batch(mut options: Json, ids: Vec<i64>, profiles: Vec<Json>) -> Batch {
    if let Some(slot) = options.pointer_mut("/data/attributes/profiles/data") {
        *slot = Json::Array(profiles);
    }
    Batch {
        endpoint: Endpoint::BulkSubscribeProfiles,
        ids,
        body: options,
    }
}

/// At most this many profiles in one bulk import job.
pub const MAX_PROFILES: usize = 10_000;

/// Groups profile upserts (`POST /api/profile-import`) into bulk import jobs, 10,000 profiles
/// and 5 MB at most. Entry `i` of a job is the `i`-th id of the batch, which is how import
/// errors, once matched to an entry ([`match_import_errors`]), find their request.
pub fn profile_batches(rows: &[(i64, Json)]) -> (Vec<Batch>, Vec<i64>) {
    let mut batches = Vec::new();
    let mut left = Vec::new();
    let (mut ids, mut entries, mut bytes) = (Vec::new(), Vec::new(), 0);
    let finish = |ids: Vec<i64>, entries: Vec<Json>| Batch {
        endpoint: Endpoint::BulkImportProfiles,
        ids,
        body: json!({"data": {"type": "profile-bulk-import-job", "attributes": {"profiles": {"data": entries}}}}),
    };
    for (id, body) in rows {
        let Some(resource) = body.get("data").filter(|d| d.is_object()) else {
            left.push(*id);
            continue;
        };
        let size = resource.to_string().len() + 2;
        if ids.len() == MAX_PROFILES || bytes + size > MAX_BYTES {
            batches.push(finish(
                std::mem::take(&mut ids),
                std::mem::take(&mut entries),
            ));
            bytes = 0;
        }
        ids.push(*id);
        entries.push(resource.clone());
        bytes += size;
    }
    if !ids.is_empty() {
        batches.push(finish(ids, entries));
    }
    (batches, left)
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

/// Keeps the batches that pass their endpoint's schema; the ids of the others go back to be
/// sent one by one.
pub fn valid(batches: Vec<Batch>, schemas: &Schemas) -> (Vec<Batch>, Vec<i64>) {
    let mut good = Vec::new();
    let mut single = Vec::new();
    for batch in batches {
        if schemas.check(batch.endpoint, &batch.body).is_ok() {
            good.push(batch);
        } else {
            single.extend(batch.ids);
        }
    }
    (good, single)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (batches, left) = event_batches(&rows);
        assert!(left.is_empty());
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].ids, [0, 1, 2]);
        let (good, single) = valid(batches, Schemas::builtin());
        assert!(single.is_empty(), "the bulk body passes Klaviyo's schema");
        let entry = &good[0].body["data"]["attributes"]["events-bulk-create"]["data"][1];
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
        let (batches, left) = event_batches(&rows);
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
    fn profiles_become_a_bulk_import_job_whose_errors_find_their_request() {
        let profile = |email: &str| json!({"data": {"type": "profile", "attributes": {"email": email, "first_name": "A"}}});
        let rows = vec![(7, profile("a@x.co")), (9, profile("b@x.co"))];
        let (batches, left) = profile_batches(&rows);
        assert!(left.is_empty());
        assert_eq!(batches[0].ids, [7, 9]);
        let (good, single) = valid(batches, Schemas::builtin());
        assert!(
            single.is_empty(),
            "the bulk import body passes Klaviyo's schema"
        );
        assert_eq!(
            good[0].body["data"]["attributes"]["profiles"]["data"][1]["attributes"]["email"],
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
        let (batches, left) = subscription_batches(&rows);
        assert!(left.is_empty());
        assert_eq!(
            batches.iter().map(|b| b.ids.clone()).collect::<Vec<_>>(),
            [vec![1, 2], vec![3]]
        );
        let (good, single) = valid(batches, Schemas::builtin());
        assert!(single.is_empty());
        assert_eq!(
            good[0].body["data"]["attributes"]["profiles"]["data"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }
}
