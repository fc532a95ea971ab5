//! What each endpoint does with a request that got past authentication and the rate limit:
//! parse, validate (schema first, then Klaviyo's other rules), take effect, answer.
//!
//! A request is all or nothing: any problem answers 400 with every problem found, and nothing
//! is recorded. The exception is the profile bulk import job, which Klaviyo accepts as a whole
//! and then imports profile by profile, reporting the ones it could not import as import errors.

use super::ImportErrors;
use super::checks::{self, KB_100, MB_5};
use super::errors::{ApiError, JSON_API, Reply, Source, new_uuid};
use super::store::{
    AcceptedEvent, BulkJob, ImportError, ImportJob, JobOutcome, JsonText, MatchError, Nulls,
    Profile, Store, Subscription, timestamp,
};
use crate::klaviyo::{Endpoint, Schemas};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value as Json, json};
use std::collections::{BTreeMap, HashMap};

/// At most this many profiles in one subscription job.
const MAX_SUBSCRIPTIONS: usize = 1000;
/// At most this many events in one bulk event job.
const MAX_BULK_EVENTS: usize = 1000;
/// At most this many profiles in one bulk import job.
const MAX_BULK_PROFILES: usize = 10_000;

/// What an endpoint works with.
pub(crate) struct Ctx<'a> {
    pub(crate) store: &'a mut Store,
    /// Now, on the scaled clock.
    pub(crate) now: f64,
    /// `http://127.0.0.1:PORT`, for `links`.
    pub(crate) base_url: &'a str,
    /// How import errors name their profile.
    pub(crate) import_errors: super::ImportErrors,
}

/// A POST to one of the endpoints marketsync sends to.
pub(crate) fn post(
    endpoint: Endpoint,
    content_type: Option<&str>,
    body: &[u8],
    ctx: &mut Ctx,
) -> Reply {
    let body = match parse(endpoint, content_type, body) {
        Ok(body) => body,
        Err(reply) => return reply,
    };
    match endpoint {
        Endpoint::CreateEvent => create_event(&body, ctx),
        Endpoint::CreateOrUpdateProfile => create_or_update_profile(&body, ctx),
        Endpoint::BulkSubscribeProfiles => bulk_subscribe_profiles(&body, ctx),
        Endpoint::BulkCreateEvents => bulk_create_events(&body, ctx),
        Endpoint::BulkImportProfiles => bulk_import_profiles(&body, ctx),
    }
}

/// The most a body may weigh, where Klaviyo documents it.
fn max_payload(endpoint: Endpoint) -> Option<(usize, &'static str)> {
    match endpoint {
        Endpoint::CreateEvent | Endpoint::BulkCreateEvents | Endpoint::BulkImportProfiles => {
            Some((MB_5, "5 MB"))
        }
        Endpoint::CreateOrUpdateProfile => Some((KB_100, "100 KB")),
        Endpoint::BulkSubscribeProfiles => None,
    }
}

/// Media type, size, JSON, and the endpoint's schema (Klaviyo's, made strict).
fn parse(endpoint: Endpoint, content_type: Option<&str>, body: &[u8]) -> Result<Json, Reply> {
    // Klaviyo parses both JSON media types; anything else (or none) is 415.
    let media_type = content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media_type != JSON_API && media_type != "application/json" {
        return Err(Reply::error(ApiError::unsupported_media_type(&media_type)));
    }
    if let Some((max, label)) = max_payload(endpoint)
        && body.len() > max
    {
        return Err(Reply::error(ApiError::invalid(
            "/data",
            format!(
                "The payload must not exceed {label}; this one is {} bytes.",
                body.len()
            ),
        )));
    }
    let body: Json =
        serde_json::from_slice(body).map_err(|e| Reply::error(ApiError::parse_error(e)))?;
    Schemas::builtin()
        .check(endpoint, &body)
        .map_err(|problems| {
            Reply::errors(
                problems
                    .iter()
                    .map(|problem| {
                        let (pointer, message) = problem.split_once(": ").unwrap_or(("/", problem));
                        ApiError::invalid(pointer, message)
                    })
                    .collect(),
            )
        })?;
    Ok(body)
}

fn reject_or(problems: Vec<ApiError>, accept: impl FnOnce() -> Reply) -> Reply {
    if problems.is_empty() {
        accept()
    } else {
        Reply::errors(problems)
    }
}

fn array<'a>(body: &'a Json, pointer: &str) -> &'a [Json] {
    body.pointer(pointer)
        .and_then(Json::as_array)
        .map_or(&[], Vec::as_slice)
}

fn object(value: &Json) -> Map<String, Json> {
    value.as_object().cloned().unwrap_or_default()
}

fn string(value: Option<&Json>) -> Option<String> {
    value.and_then(Json::as_str).map(str::to_string)
}

/// `POST /api/events`: 202 and no body; a duplicate is answered the same and not recorded.
fn create_event(body: &Json, ctx: &mut Ctx) -> Reply {
    let attributes = &body["data"]["attributes"];
    let profile = &attributes["profile"]["data"];
    let received = Utc::now();
    let mut problems = checks::event_profile(profile, "/data/attributes/profile/data");
    problems.extend(checks::event_attributes(
        attributes,
        "/data/attributes",
        received,
    ));
    reject_or(problems, || {
        let mut event = attributes.clone();
        if let Some(event) = event.as_object_mut() {
            event.remove("profile");
        }
        let request = ctx.store.next_event_request();
        record_event(
            ctx.store,
            request,
            Endpoint::CreateEvent,
            profile,
            &event,
            received,
        );
        Reply::empty(StatusCode::ACCEPTED)
    })
}

/// Records an event unless it is a duplicate; a recorded event creates or updates its profile,
/// as Klaviyo's event endpoints do (a profile that matches none or two is left alone: the event
/// still counts).
fn record_event(
    store: &mut Store,
    request: u64,
    endpoint: Endpoint,
    profile: &Json,
    attributes: &Json,
    received: DateTime<Utc>,
) {
    let profile_key = checks::profile_key(profile).expect("checked: the profile has an identifier");
    let metric = attributes
        .pointer("/metric/data/attributes/name")
        .and_then(Json::as_str)
        .unwrap_or_default()
        .to_string();
    let key = checks::event_key(
        &profile_key,
        &metric,
        &checks::event_instant(attributes, received),
    );
    let datetime = attributes
        .get("time")
        .and_then(Json::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or(received, |t| t.with_timezone(&Utc));
    let event = AcceptedEvent {
        id: super::store::new_id(),
        profile_id: None,
        datetime: Some(timestamp(datetime)),
        endpoint,
        metric,
        profile_key,
        unique_id: string(attributes.get("unique_id")),
        profile: JsonText::of(profile),
        attributes: JsonText::of(attributes),
    };
    if store.record_event(request, key, event) {
        let id = profile.get("id").and_then(Json::as_str);
        if let Ok((index, _)) = store.upsert(
            id,
            &object(&profile["attributes"]),
            profile.get("meta"),
            Nulls::Clear,
        ) {
            let profile_id = store.profile(index).id.clone();
            store.link_last_event(profile_id);
        }
    }
}

/// `POST /api/profile-import`: 201 with the profile when created, 200 when updated.
fn create_or_update_profile(body: &Json, ctx: &mut Ctx) -> Reply {
    let data = &body["data"];
    reject_or(checks::upsert_profile(data, "/data"), || {
        let id = data.get("id").and_then(Json::as_str);
        match ctx.store.upsert(
            id,
            &object(&data["attributes"]),
            data.get("meta"),
            Nulls::Clear,
        ) {
            Ok((index, created)) => {
                let status = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                Reply::json(
                    status,
                    profile_document(ctx.store.profile(index), ctx.base_url),
                )
            }
            Err(MatchError::NotFound(id)) => Reply::error(ApiError::not_found(format!(
                "A profile with id {id} does not exist."
            ))),
            Err(MatchError::Duplicate(other)) => Reply::error(ApiError::duplicate_profile(&other)),
        }
    })
}

/// The profile as profile-import returns it: every standard field, `null` when not set.
fn profile_document(profile: &Profile, base_url: &str) -> Json {
    let attributes = super::reads::profiles::standard_attributes(profile, Json::Null);
    let link = format!("{base_url}/api/profiles/{}/", profile.id);
    json!({
        "data": {
            "type": "profile",
            "id": profile.id,
            "attributes": attributes,
            "links": { "self": link },
        },
        "links": { "self": format!("{base_url}/api/profile-import") },
    })
}

/// The consents in a profile's `subscriptions`, as `channel.type` → parameters.
fn consents(subscriptions: &Json) -> BTreeMap<String, Json> {
    let mut consents = BTreeMap::new();
    for (channel, kinds) in subscriptions.as_object().into_iter().flatten() {
        for (kind, parameters) in kinds.as_object().into_iter().flatten() {
            if parameters.is_object() {
                consents.insert(format!("{channel}.{kind}"), parameters.clone());
            }
        }
    }
    consents
}

/// `POST /api/profile-subscription-bulk-create-jobs`: 202 and no body.
fn bulk_subscribe_profiles(body: &Json, ctx: &mut Ctx) -> Reply {
    let base = "/data/attributes/profiles/data";
    let profiles = array(body, base);
    let historical = body.pointer("/data/attributes/historical_import") == Some(&json!(true));
    let now = Utc::now();
    let mut problems = Vec::new();
    if profiles.is_empty() || profiles.len() > MAX_SUBSCRIPTIONS {
        problems.push(ApiError::invalid(
            base,
            format!(
                "A job subscribes 1 to {MAX_SUBSCRIPTIONS} profiles; this one has {}.",
                profiles.len()
            ),
        ));
    }
    for (i, profile) in profiles.iter().enumerate() {
        let pointer = format!("{base}/{i}/attributes");
        let attributes = object(&profile["attributes"]);
        problems.extend(checks::contact_formats(&attributes, &pointer));
        let consents = consents(&profile["attributes"]["subscriptions"]);
        if consents.is_empty() {
            problems.push(ApiError::invalid(
                format!("{pointer}/subscriptions"),
                "At least one channel must be subscribed.",
            ));
        }
        let needs = |prefixes: &[&str]| {
            consents
                .keys()
                .any(|k| prefixes.iter().any(|p| k.starts_with(p)))
        };
        if needs(&["email."]) && attributes.get("email").and_then(Json::as_str).is_none() {
            problems.push(ApiError::invalid(
                format!("{pointer}/email"),
                "An email address is required to subscribe to email.",
            ));
        }
        if needs(&["sms.", "whatsapp."])
            && attributes
                .get("phone_number")
                .and_then(Json::as_str)
                .is_none()
        {
            problems.push(ApiError::invalid(
                format!("{pointer}/phone_number"),
                "A phone number is required to subscribe to SMS or WhatsApp.",
            ));
        }
        if historical {
            for (name, parameters) in &consents {
                let consented_at = parameters
                    .get("consented_at")
                    .and_then(Json::as_str)
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok());
                if consented_at.is_none_or(|t| t.with_timezone(&Utc) >= now) {
                    problems.push(ApiError::invalid(
                        format!(
                            "{pointer}/subscriptions/{}/consented_at",
                            name.replace('.', "/")
                        ),
                        "A historical import needs `consented_at`, in the past, for every consent.",
                    ));
                }
            }
        }
    }
    reject_or(problems, || {
        let attributes = &body["data"]["attributes"];
        let list_id = string(body.pointer("/data/relationships/list/data/id"));
        for profile in profiles {
            let profile_attributes = &profile["attributes"];
            ctx.store.record_subscription(
                Subscription {
                    email: string(profile_attributes.get("email")),
                    phone_number: string(profile_attributes.get("phone_number")),
                    profile_id: string(profile.get("id")),
                    consents: consents(&profile_attributes["subscriptions"]),
                    list_id: list_id.clone(),
                    historical_import: historical,
                    custom_source: string(attributes.get("custom_source")),
                    attributes: profile_attributes.clone(),
                },
                now,
            );
        }
        ctx.store
            .record_bulk_job(BulkJob::new(Endpoint::BulkSubscribeProfiles, None, body));
        Reply::empty(StatusCode::ACCEPTED)
    })
}

/// `POST /api/event-bulk-create-jobs`: 202 and no body. Each event is deduplicated like a single
/// event; the same event twice in one request is an error.
fn bulk_create_events(body: &Json, ctx: &mut Ctx) -> Reply {
    let base = "/data/attributes/events-bulk-create/data";
    let entries = array(body, base);
    // Borrowed, not copied: a copy of every entry's events, three times a job, was 40% of the
    // stand-in's CPU in the serve benchmark (perf, 4 December).
    fn events_of(entry: &Json) -> &[Json] {
        array(entry, "/attributes/events/data")
    }
    let total: usize = entries.iter().map(|e| events_of(e).len()).sum();
    let received = Utc::now();
    let mut problems = Vec::new();
    if total > MAX_BULK_EVENTS {
        problems.push(ApiError::invalid(
            base,
            format!("A job holds at most {MAX_BULK_EVENTS} events; this one holds {total}."),
        ));
    }
    let mut seen: HashMap<String, String> = HashMap::new();
    for (i, entry) in entries.iter().enumerate() {
        let profile = &entry["attributes"]["profile"]["data"];
        problems.extend(checks::event_profile(
            profile,
            &format!("{base}/{i}/attributes/profile/data"),
        ));
        let profile_key = checks::profile_key(profile);
        for (j, event) in events_of(entry).iter().enumerate() {
            let pointer = format!("{base}/{i}/attributes/events/data/{j}/attributes");
            let attributes = &event["attributes"];
            problems.extend(checks::event_attributes(attributes, &pointer, received));
            let metric = attributes
                .pointer("/metric/data/attributes/name")
                .and_then(Json::as_str);
            let unique_id = attributes.get("unique_id").and_then(Json::as_str);
            if let (Some(profile_key), Some(metric), Some(unique_id)) =
                (&profile_key, metric, unique_id)
            {
                let key = checks::event_key(profile_key, metric, unique_id);
                if let Some(first) = seen.get(&key) {
                    problems.push(ApiError::invalid(
                        format!("{pointer}/unique_id"),
                        format!(
                            "Duplicate event: the same profile, metric and unique_id as {first}."
                        ),
                    ));
                } else {
                    seen.insert(key, pointer);
                }
            }
        }
    }
    reject_or(problems, || {
        let request = ctx.store.next_event_request();
        for entry in entries {
            let profile = &entry["attributes"]["profile"]["data"];
            for event in events_of(entry) {
                let attributes = &event["attributes"];
                record_event(
                    ctx.store,
                    request,
                    Endpoint::BulkCreateEvents,
                    profile,
                    attributes,
                    received,
                );
            }
        }
        ctx.store
            .record_bulk_job(BulkJob::new(Endpoint::BulkCreateEvents, None, body));
        Reply::empty(StatusCode::ACCEPTED)
    })
}

/// `POST /api/profile-bulk-import-jobs`: 202 with the job, `queued`. The profiles are imported
/// when the job runs (see [`settle`]).
fn bulk_import_profiles(body: &Json, ctx: &mut Ctx) -> Reply {
    let base = "/data/attributes/profiles/data";
    let profiles = array(body, base);
    let mut problems = Vec::new();
    if profiles.is_empty() || profiles.len() > MAX_BULK_PROFILES {
        problems.push(ApiError::invalid(
            base,
            format!(
                "A job imports 1 to {MAX_BULK_PROFILES} profiles; this one has {}.",
                profiles.len()
            ),
        ));
    }
    for (i, profile) in profiles.iter().enumerate() {
        let size = profile.to_string().len();
        if size > KB_100 {
            problems.push(ApiError::invalid(
                format!("{base}/{i}"),
                format!("A profile may be at most 100 KB; this one is {size} bytes."),
            ));
        }
    }
    reject_or(problems, || {
        let job = ImportJob {
            id: super::store::new_id(),
            created_at: Utc::now(),
            created: ctx.now,
            total: profiles.len(),
            list_ids: array(body, "/data/relationships/lists/data")
                .iter()
                .filter_map(|list| string(list.get("id")))
                .collect(),
            profiles: profiles.to_vec(),
            started_at: None,
            outcome: None,
        };
        let document = job_document(&job, ctx);
        ctx.store.record_bulk_job(BulkJob::new(
            Endpoint::BulkImportProfiles,
            Some(job.id.clone()),
            body,
        ));
        ctx.store.jobs.push(job);
        Reply::json(StatusCode::ACCEPTED, document)
    })
}

/// Moves the bulk import jobs on: `queued` for the first half of their time, `processing` for the
/// second, then `complete` with their profiles imported, in the order the jobs came.
pub(crate) fn settle(store: &mut Store, now: f64, job_seconds: f64) {
    for i in 0..store.jobs.len() {
        let job = &mut store.jobs[i];
        if job.outcome.is_some() {
            continue;
        }
        if job.started_at.is_none() && now >= job.created + job_seconds / 2.0 {
            job.started_at = Some(Utc::now());
        }
        if now >= job.created + job_seconds {
            let profiles = std::mem::take(&mut job.profiles);
            let outcome = import(store, &profiles);
            store.jobs[i].outcome = Some(outcome);
        }
    }
}

/// Imports a job's profiles one by one, as profile-import would, except that `null` leaves a
/// field as it is (Klaviyo: bulk import "does not support setting fields to null to clear them").
fn import(store: &mut Store, profiles: &[Json]) -> JobOutcome {
    let mut completed = 0;
    let mut errors = Vec::new();
    for (i, resource) in profiles.iter().enumerate() {
        let pointer = format!("/data/attributes/profiles/data/{i}");
        let mut problems = checks::upsert_profile(resource, &pointer);
        if problems.is_empty() {
            let id = resource.get("id").and_then(Json::as_str);
            let attributes = object(&resource["attributes"]);
            match store.upsert(id, &attributes, resource.get("meta"), Nulls::Ignore) {
                Ok(_) => {}
                Err(MatchError::NotFound(id)) => problems.push(ApiError {
                    source: Source::Pointer(format!("{pointer}/id")),
                    ..ApiError::not_found(format!("A profile with id {id} does not exist."))
                }),
                Err(MatchError::Duplicate(other)) => problems.push(ApiError {
                    source: Source::Pointer(format!("{pointer}/attributes")),
                    ..ApiError::duplicate_profile(&other)
                }),
            }
        }
        if problems.is_empty() {
            completed += 1;
        }
        errors.extend(problems.into_iter().map(|error| ImportError {
            id: new_uuid(),
            error,
            original_payload: resource.get("attributes").cloned().unwrap_or(Json::Null),
        }));
    }
    JobOutcome {
        completed,
        completed_at: Utc::now(),
        errors,
    }
}

fn job_link(base_url: &str, id: &str) -> String {
    format!("{base_url}/api/profile-bulk-import-jobs/{id}")
}

/// A bulk import job as Klaviyo shows it.
fn job_document(job: &ImportJob, ctx: &Ctx) -> Json {
    let status = if job.outcome.is_some() {
        "complete"
    } else if job.started_at.is_some() {
        "processing"
    } else {
        "queued"
    };
    let completed = job.outcome.as_ref().map_or(0, |o| o.completed);
    let failed = job.outcome.as_ref().map_or(0, |o| job.total - o.completed);
    let link = job_link(ctx.base_url, &job.id);
    let lists: Vec<Json> = job
        .list_ids
        .iter()
        .map(|id| json!({"type": "list", "id": id}))
        .collect();
    json!({
        "data": {
            "type": "profile-bulk-import-job",
            "id": job.id,
            "attributes": {
                "status": status,
                "created_at": timestamp(job.created_at),
                "total_count": job.total,
                "completed_count": completed,
                "failed_count": failed,
                "completed_at": job.outcome.as_ref().map(|o| timestamp(o.completed_at)),
                "expires_at": Json::Null,
                "started_at": job.started_at.map(timestamp),
            },
            "relationships": { "lists": { "data": lists } },
            "links": { "self": link },
        },
        "links": { "self": link },
    })
}

fn find_job<'a>(ctx: &'a Ctx, id: &str) -> Result<&'a ImportJob, Reply> {
    ctx.store.jobs.iter().find(|j| j.id == id).ok_or_else(|| {
        Reply::error(ApiError::not_found(format!(
            "A profile bulk import job with id {id} does not exist."
        )))
    })
}

/// `GET /api/profile-bulk-import-jobs/{id}`.
pub(crate) fn get_job(id: &str, ctx: &mut Ctx) -> Reply {
    match find_job(ctx, id) {
        Ok(job) => Reply::json(StatusCode::OK, job_document(job, ctx)),
        Err(reply) => reply,
    }
}

/// `GET /api/profile-bulk-import-jobs/{id}/import-errors`: paginated like Klaviyo's
/// (`page[size]` from 1 to 100, 20 by default; `links.next` carries the cursor).
pub(crate) fn get_job_errors(id: &str, query: &HashMap<String, String>, ctx: &mut Ctx) -> Reply {
    let job = match find_job(ctx, id) {
        Ok(job) => job,
        Err(reply) => return reply,
    };
    let size = match query.get("page[size]").map(|s| s.parse::<usize>()) {
        None => 20,
        Some(Ok(size)) if (1..=100).contains(&size) => size,
        Some(_) => {
            return Reply::error(ApiError::invalid_parameter(
                "page[size]",
                "page[size] must be a whole number from 1 to 100.",
            ));
        }
    };
    let start = match query.get("page[cursor]").map(|s| s.parse::<usize>()) {
        None => 0,
        Some(Ok(start)) => start,
        Some(Err(_)) => {
            return Reply::error(ApiError::invalid_parameter(
                "page[cursor]",
                "page[cursor] is not a cursor this server gave.",
            ));
        }
    };
    let errors = job
        .outcome
        .as_ref()
        .map_or(&[][..], |o| o.errors.as_slice());
    let page = errors.iter().skip(start).take(size);
    let shape = ctx.import_errors;
    let data: Vec<Json> = page
        .map(|e| {
            // The spec's `ErrorSource`: `pointer` is nullable and defaults to `/data`.
            let pointer = match (&e.error.source, shape) {
                (Source::Pointer(pointer), ImportErrors::PayloadAndPointer) => pointer.clone(),
                (Source::Parameter(parameter), _) => parameter.to_string(),
                (Source::Pointer(_), _) => "/data".to_owned(),
            };
            let original_payload = match shape {
                ImportErrors::Anonymous => Json::Null,
                _ => e.original_payload.clone(),
            };
            json!({
                "type": "import-error",
                "id": e.id,
                "attributes": {
                    "code": e.error.code,
                    "title": e.error.title,
                    "detail": e.error.detail,
                    "source": { "pointer": pointer },
                    "original_payload": original_payload,
                },
            })
        })
        .collect();
    let link = format!("{}/import-errors", job_link(ctx.base_url, id));
    let next = (start + size < errors.len()).then(|| {
        format!(
            "{link}?page%5Bcursor%5D={}&page%5Bsize%5D={size}",
            start + size
        )
    });
    Reply::json(
        StatusCode::OK,
        json!({ "data": data, "links": { "self": link, "next": next, "prev": Json::Null } }),
    )
}
