//! Reading Klaviyo back: the one client of its read endpoints, shared by reconciliation (which
//! compares what Klaviyo holds with what the orders imply) and `customer --klaviyo`.
//!
//! A 2xx from Klaviyo is not proof, so the only way to know what Klaviyo holds is to ask it,
//! and asking is rationed: each read endpoint has its own published limit, far below the write
//! ones for some (`GET /api/metrics` 10/s and 150/m, `POST /api/metric-aggregates` 3/s and
//! 60/m), and the account's limits are shared with the sender and with every other integration.
//! So every read goes through the same [`Limiter`] the sender uses, one per endpoint, honours a
//! 429's `Retry-After`, and counts against a per-run budget: a run that would read more than the
//! budget stops and says so, rather than starving the sender for an hour. What was read and
//! waited for is reported per endpoint ([`ReadBudget`]).
//!
//! Requests go through the sender's own [`Client`], so the key is sent, and redacted from
//! everything that comes back, exactly as when sending. A query string can name a person (a
//! filter on emails): no error message carries one.
//!
//! Shapes are read as Klaviyo's OpenAPI spec documents them (revision 2026-07-15); the notes in
//! `reference/notes/reconciliation.md` §1–§3 give the pointers. Where the spec says nothing
//! (an event's value), what is read is said where it is read.

use crate::reconcile::impact::ReadBudget;
use crate::sink::http::{Client, Outcome};
use crate::sink::limit::{Limit, Limiter};
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::{StreamExt, stream};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Klaviyo's read endpoints marketsync uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReadEndpoint {
    Metrics,
    Events,
    Profiles,
    MetricAggregates,
}

impl ReadEndpoint {
    pub const ALL: [ReadEndpoint; 4] = [
        ReadEndpoint::Metrics,
        ReadEndpoint::Events,
        ReadEndpoint::Profiles,
        ReadEndpoint::MetricAggregates,
    ];

    pub fn path(self) -> &'static str {
        match self {
            ReadEndpoint::Metrics => "/api/metrics",
            ReadEndpoint::Events => "/api/events",
            ReadEndpoint::Profiles => "/api/profiles",
            ReadEndpoint::MetricAggregates => "/api/metric-aggregates",
        }
    }

    /// `GET /api/events`: how the budget and the errors name it.
    pub fn name(self) -> &'static str {
        match self {
            ReadEndpoint::Metrics => "GET /api/metrics",
            ReadEndpoint::Events => "GET /api/events",
            ReadEndpoint::Profiles => "GET /api/profiles",
            ReadEndpoint::MetricAggregates => "POST /api/metric-aggregates",
        }
    }

    /// The published limit (`x-klaviyo-ratelimit` in the spec). Profiles: the spec says 750 a
    /// minute, Klaviyo's docs 700; the lower is used, as the sender does for profile import.
    pub fn limit(self) -> Limit {
        match self {
            ReadEndpoint::Metrics => Limit::per_second_and_minute(10, 150),
            ReadEndpoint::Events => Limit::per_second_and_minute(350, 3500),
            ReadEndpoint::Profiles => Limit::per_second_and_minute(75, 700),
            ReadEndpoint::MetricAggregates => Limit::per_second_and_minute(3, 60),
        }
    }
}

/// The most requests one reconciliation reads by default: a day of 10,000 orders needs about
/// 450 (docs/operations.md §12), so this leaves room for a week's window without letting a
/// runaway read hold the account's limits for long.
pub const DEFAULT_READ_BUDGET: u64 = 10_000;

/// Events per page: the spec allows up to 1000, but its description says a page holds at most
/// 200 events (unverified which is right), so 200 is asked for.
pub const EVENT_PAGE: usize = 200;

/// Emails (or phone numbers) per `any(...)` filter, and profiles per page (the maximum).
pub const PROFILE_BATCH: usize = 100;

/// Reads kept in flight at once by a caller that has many to make (profile batches, one scan
/// per metric): each waits for Klaviyo's answer far longer than for its limit, and the
/// limiter still paces them all.
pub const IN_FLIGHT: usize = 8;

/// How the reader paces itself and how much it may read.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// How many times faster than real time the clock runs (the stand-in's sped-up clock).
    pub time_scale: f64,
    /// Requests allowed, over every endpoint, before the reader refuses to read more.
    pub budget: u64,
    /// Attempts per request when Klaviyo answers 429, 5xx or nothing.
    pub max_attempts: u32,
    /// Replacements for the published limits (an account with negotiated limits, tests).
    pub limits: HashMap<ReadEndpoint, Limit>,
}

impl Default for ReadOptions {
    fn default() -> ReadOptions {
        ReadOptions {
            time_scale: 1.0,
            budget: DEFAULT_READ_BUDGET,
            max_attempts: 6,
            limits: HashMap::new(),
        }
    }
}

/// Why Klaviyo could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(
        "Klaviyo refused the API key ({status}): {detail}; reading Klaviyo back needs the read \
         scopes metrics:read, events:read and profiles:read"
    )]
    KeyRefused { status: u16, detail: String },
    #[error(
        "the read budget of {budget} requests to Klaviyo was spent at {endpoint}: raise \
         `reconcile: read_budget:` in client.yaml, or read a shorter window"
    )]
    BudgetSpent { budget: u64, endpoint: &'static str },
    #[error("{endpoint}: Klaviyo answered {status}: {detail}")]
    Refused {
        endpoint: &'static str,
        status: u16,
        detail: String,
    },
    #[error("{endpoint}: {reason} ({attempts} attempts); run again later")]
    Unavailable {
        endpoint: &'static str,
        reason: String,
        attempts: u32,
    },
    #[error("{endpoint}: the answer is not what Klaviyo documents: {problem}")]
    Unreadable {
        endpoint: &'static str,
        problem: String,
    },
}

/// One endpoint's pacing and what it cost.
#[derive(Debug)]
struct Paced {
    limiter: Limiter,
    requests: u64,
    waited: Duration,
}

/// Klaviyo's read endpoints, paced and budgeted.
#[derive(Debug)]
pub struct Reader {
    client: Client,
    options: ReadOptions,
    endpoints: BTreeMap<ReadEndpoint, Mutex<Paced>>,
    spent: AtomicU64,
}

impl Reader {
    pub fn new(client: Client, options: ReadOptions) -> Reader {
        let endpoints = ReadEndpoint::ALL
            .into_iter()
            .map(|endpoint| {
                let limit = options
                    .limits
                    .get(&endpoint)
                    .copied()
                    .unwrap_or_else(|| endpoint.limit());
                let paced = Paced {
                    limiter: Limiter::new(limit.scaled(options.time_scale)),
                    requests: 0,
                    waited: Duration::ZERO,
                };
                (endpoint, Mutex::new(paced))
            })
            .collect();
        Reader {
            client,
            options,
            endpoints,
            spent: AtomicU64::new(0),
        }
    }

    /// What each endpoint cost so far: those read at least once, in a fixed order.
    pub fn budgets(&self) -> Vec<ReadBudget> {
        self.endpoints
            .iter()
            .filter_map(|(endpoint, paced)| {
                let paced = paced.lock().expect("read pacing lock");
                (paced.requests > 0).then(|| ReadBudget {
                    endpoint: endpoint.name().to_owned(),
                    requests: paced.requests,
                    per_minute: endpoint.limit().steady,
                    waited_ms: paced.waited.as_millis() as u64,
                })
            })
            .collect()
    }

    /// Requests made so far, over every endpoint.
    pub fn spent(&self) -> u64 {
        self.spent.load(Ordering::Relaxed)
    }

    /// GETs `path` (with its query) from `endpoint`: the JSON:API document.
    pub async fn get(&self, endpoint: ReadEndpoint, path: &str) -> Result<Json, ReadError> {
        self.call(endpoint, path, None).await
    }

    /// `path` and every page after it (`links.next`), each page given to `each`.
    pub async fn pages(
        &self,
        endpoint: ReadEndpoint,
        path: &str,
        mut each: impl FnMut(&Json) -> Result<(), ReadError>,
    ) -> Result<(), ReadError> {
        let mut path = path.to_owned();
        loop {
            let document = self.get(endpoint, &path).await?;
            if !document["data"].is_array() {
                return Err(ReadError::Unreadable {
                    endpoint: endpoint.name(),
                    problem: "no `data` list".into(),
                });
            }
            each(&document)?;
            match next_path(&document) {
                Some(next) if next != path => path = next,
                _ => return Ok(()),
            }
        }
    }

    /// Every metric, with the flows each triggers (`include=flow-triggers`).
    pub async fn metrics(&self) -> Result<Vec<Metric>, ReadError> {
        let path = with_query(
            ReadEndpoint::Metrics.path(),
            &[
                ("fields[metric]", "name,integration,created"),
                ("fields[flow]", "name,status,trigger_type,archived"),
                ("include", "flow-triggers"),
            ],
        );
        let mut metrics = Vec::new();
        self.pages(ReadEndpoint::Metrics, &path, |document| {
            let flows: HashMap<&str, Flow> = document["included"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|i| i["type"] == "flow")
                .filter_map(|i| Some((i["id"].as_str()?, Flow::of(i))))
                .collect();
            for data in document["data"].as_array().into_iter().flatten() {
                let Some(id) = data["id"].as_str() else {
                    continue;
                };
                let attributes = &data["attributes"];
                let integration = &attributes["integration"];
                metrics.push(Metric {
                    id: id.to_owned(),
                    name: attributes["name"].as_str().unwrap_or_default().to_owned(),
                    integration: integration["name"]
                        .as_str()
                        .or_else(|| integration["key"].as_str())
                        .map(str::to_owned),
                    flows: data["relationships"]["flow-triggers"]["data"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|f| {
                            let id = f["id"].as_str()?;
                            Some(flows.get(id).cloned().unwrap_or_else(|| Flow {
                                id: id.to_owned(),
                                ..Flow::default()
                            }))
                        })
                        .collect(),
                });
            }
            Ok(())
        })
        .await?;
        Ok(metrics)
    }

    /// The events of one metric whose `datetime` is in `since..until` (until excluded),
    /// oldest first, with their profiles' identifiers.
    pub async fn events(
        &self,
        metric_id: &str,
        (since, until): (DateTime<Utc>, DateTime<Utc>),
    ) -> Result<Vec<Event>, ReadError> {
        let filter = format!(
            "and(equals(metric_id,{}),greater-or-equal(datetime,{}),less-than(datetime,{}))",
            quoted(metric_id),
            instant(since),
            instant(until)
        );
        self.events_filtered(&filter).await
    }

    /// The events of one metric on one profile, whenever they happened.
    pub async fn events_of_profile(
        &self,
        metric_id: &str,
        profile_id: &str,
    ) -> Result<Vec<Event>, ReadError> {
        let filter = format!(
            "and(equals(metric_id,{}),equals(profile_id,{}))",
            quoted(metric_id),
            quoted(profile_id)
        );
        self.events_filtered(&filter).await
    }

    async fn events_filtered(&self, filter: &str) -> Result<Vec<Event>, ReadError> {
        let size = EVENT_PAGE.to_string();
        let path = with_query(
            ReadEndpoint::Events.path(),
            &[
                ("filter", filter),
                ("fields[event]", "datetime,event_properties,uuid"),
                ("fields[profile]", "email,phone_number,external_id"),
                ("include", "profile"),
                ("sort", "datetime"),
                ("page[size]", &size),
            ],
        );
        let mut events = Vec::new();
        self.pages(ReadEndpoint::Events, &path, |document| {
            let people: HashMap<&str, &Json> = document["included"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|i| i["type"] == "profile")
                .filter_map(|i| Some((i["id"].as_str()?, &i["attributes"])))
                .collect();
            for data in document["data"].as_array().into_iter().flatten() {
                events.push(Event::of(data, &people));
            }
            Ok(())
        })
        .await?;
        Ok(events)
    }

    /// The profiles whose `field` (`email` or `phone_number`) is one of `values`, with their
    /// subscriptions: `any(field,[...])` in batches of [`PROFILE_BATCH`], a few at once (the
    /// limiter paces them; the answers are taken in batch order).
    pub async fn profiles(
        &self,
        field: &str,
        values: &[String],
    ) -> Result<Vec<Profile>, ReadError> {
        // Collected first: a stream over a borrowing iterator's closure would make the
        // future not `Send` for every lifetime, which `serve`'s spawned schedule needs.
        let batches: Vec<_> = values
            .chunks(PROFILE_BATCH)
            .map(|batch| self.profile_batch(field, batch))
            .collect();
        let answers: Vec<Result<Vec<Profile>, ReadError>> =
            stream::iter(batches).buffered(IN_FLIGHT).collect().await;
        let mut profiles: Vec<Profile> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for answer in answers {
            for profile in answer? {
                if seen.insert(profile.id.clone()) {
                    profiles.push(profile);
                }
            }
        }
        Ok(profiles)
    }

    async fn profile_batch(
        &self,
        field: &str,
        batch: &[String],
    ) -> Result<Vec<Profile>, ReadError> {
        let size = PROFILE_BATCH.to_string();
        let list = batch
            .iter()
            .map(|v| quoted(v))
            .collect::<Vec<_>>()
            .join(",");
        let filter = format!("any({field},[{list}])");
        let path = with_query(
            ReadEndpoint::Profiles.path(),
            &[
                ("filter", filter.as_str()),
                ("additional-fields[profile]", "subscriptions"),
                ("page[size]", &size),
            ],
        );
        let mut profiles = Vec::new();
        self.pages(ReadEndpoint::Profiles, &path, |document| {
            for data in document["data"].as_array().into_iter().flatten() {
                let profile = Profile::of(data);
                if !profile.id.is_empty() {
                    profiles.push(profile);
                }
            }
            Ok(())
        })
        .await?;
        Ok(profiles)
    }

    /// A metric's daily `sum_value` and `count` per currency over `since..until`, in
    /// `timezone` (IANA): Klaviyo's own total, to cross-check a scan of the events.
    pub async fn daily_totals(
        &self,
        metric_id: &str,
        (since, until): (DateTime<Utc>, DateTime<Utc>),
        timezone: chrono_tz::Tz,
    ) -> Result<Vec<DailyTotal>, ReadError> {
        // The filter's times are written without an offset, as the spec's example does, in
        // the query's own timezone [inferred: the spec does not say which zone they are read in].
        let local = |at: DateTime<Utc>| {
            at.with_timezone(&timezone)
                .naive_local()
                .format("%Y-%m-%dT%H:%M:%S")
                .to_string()
        };
        let mut body = json!({"data": {"type": "metric-aggregate", "attributes": {
            "metric_id": metric_id,
            "measurements": ["sum_value", "count"],
            "filter": [
                format!("greater-or-equal(datetime,{})", local(since)),
                format!("less-than(datetime,{})", local(until)),
            ],
            "interval": "day",
            "timezone": timezone.name(),
            "by": ["$value_currency"],
            "page_size": 500,
        }}});
        let endpoint = ReadEndpoint::MetricAggregates;
        let mut totals = Vec::new();
        // Rows page through `page_cursor`; no more than a handful of pages are expected (a
        // row per currency), so a cursor that repeats ends the reading.
        let mut cursors = Vec::new();
        loop {
            let document = self.call(endpoint, endpoint.path(), Some(&body)).await?;
            let attributes = &document["data"]["attributes"];
            let Some(dates) = attributes["dates"].as_array() else {
                return Err(ReadError::Unreadable {
                    endpoint: endpoint.name(),
                    problem: "no `dates` list".into(),
                });
            };
            let days: Vec<String> = dates
                .iter()
                .map(|d| {
                    d.as_str()
                        .and_then(|d| DateTime::parse_from_rfc3339(d).ok())
                        .map(|d| d.with_timezone(&timezone).format("%Y-%m-%d").to_string())
                        .unwrap_or_else(|| {
                            d.as_str().unwrap_or_default().chars().take(10).collect()
                        })
                })
                .collect();
            for row in attributes["data"].as_array().into_iter().flatten() {
                let currency = row["dimensions"][0]
                    .as_str()
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned);
                let measurements = &row["measurements"];
                for (index, day) in days.iter().enumerate() {
                    let sum = measurements["sum_value"][index].as_f64().unwrap_or(0.0);
                    let count = measurements["count"][index].as_f64().unwrap_or(0.0) as u64;
                    totals.push(DailyTotal {
                        day: day.clone(),
                        currency: currency.clone(),
                        sum_value: sum,
                        count,
                    });
                }
            }
            let next = document["links"]["next"]
                .as_str()
                .and_then(|next| reqwest::Url::parse(next).ok())
                .and_then(|url| {
                    url.query_pairs()
                        .find(|(k, _)| k == "page_cursor")
                        .map(|(_, v)| v.into_owned())
                })
                .or_else(|| attributes["page_cursor"].as_str().map(str::to_owned))
                .filter(|c| !c.is_empty() && !cursors.contains(c));
            match next {
                Some(cursor) => {
                    body["data"]["attributes"]["page_cursor"] = json!(cursor);
                    cursors.push(cursor);
                }
                None => return Ok(totals),
            }
        }
    }

    /// One request, paced, budgeted and retried; the document it answered.
    async fn call(
        &self,
        endpoint: ReadEndpoint,
        path: &str,
        body: Option<&Json>,
    ) -> Result<Json, ReadError> {
        let scale = self.options.time_scale;
        let mut attempts = 0;
        loop {
            if self.spent.fetch_add(1, Ordering::Relaxed) >= self.options.budget {
                self.spent.fetch_sub(1, Ordering::Relaxed);
                return Err(ReadError::BudgetSpent {
                    budget: self.options.budget,
                    endpoint: endpoint.name(),
                });
            }
            attempts += 1;
            self.wait_for_slot(endpoint).await;
            let sent = Instant::now();
            let (outcome, rate) = match body {
                Some(body) => {
                    let text = serde_json::to_vec(body).expect("a JSON value serialises");
                    self.client.post(path, text.into(), scale).await
                }
                None => self.client.get(path, scale).await,
            };
            {
                let mut paced = self.paced(endpoint);
                paced.requests += 1;
                paced
                    .limiter
                    .observe_latency(sent.elapsed(), Instant::now());
                if let (Some(remaining), Some(reset)) = (rate.remaining, rate.reset) {
                    paced.limiter.observe(remaining, reset, Instant::now());
                }
            }
            match outcome {
                Outcome::Accepted { body, .. } => return Ok(body.unwrap_or(Json::Null)),
                Outcome::KeyRefused { status, detail } => {
                    return Err(ReadError::KeyRefused { status, detail });
                }
                Outcome::Retry {
                    reason,
                    after,
                    status,
                } => {
                    let reason = unnamed(&reason, path);
                    if attempts >= self.options.max_attempts {
                        return Err(ReadError::Unavailable {
                            endpoint: endpoint.name(),
                            reason,
                            attempts,
                        });
                    }
                    // A 429 says how long; anything else backs off.
                    let wait = match (status, after) {
                        (_, Some(after)) => after,
                        (Some(429), None) => Duration::from_secs(1).div_f64(scale),
                        _ => Duration::from_millis(500)
                            .saturating_mul(1 << attempts.min(6))
                            .min(Duration::from_secs(30))
                            .div_f64(scale),
                    };
                    self.paced(endpoint)
                        .limiter
                        .block_until(Instant::now() + wait);
                }
                Outcome::Refused { status, errors } => {
                    let detail = errors
                        .iter()
                        .map(|e| e.detail.as_str())
                        .collect::<Vec<_>>()
                        .join("; ");
                    return Err(ReadError::Refused {
                        endpoint: endpoint.name(),
                        status,
                        detail: unnamed(&detail, path),
                    });
                }
                Outcome::DuplicateProfile { .. } => {
                    return Err(ReadError::Refused {
                        endpoint: endpoint.name(),
                        status: 409,
                        detail: "a conflict, on a read".into(),
                    });
                }
            }
        }
    }

    fn paced(&self, endpoint: ReadEndpoint) -> std::sync::MutexGuard<'_, Paced> {
        self.endpoints[&endpoint].lock().expect("read pacing lock")
    }

    /// Waits for a slot of the endpoint's limit (and any `Retry-After`), then takes it.
    async fn wait_for_slot(&self, endpoint: ReadEndpoint) {
        let started = Instant::now();
        loop {
            let now = Instant::now();
            let slot = {
                let mut paced = self.paced(endpoint);
                let slot = paced.limiter.next_slot(now);
                if slot <= now {
                    paced.limiter.record(now);
                    if now > started {
                        paced.waited += now - started;
                    }
                }
                slot
            };
            if slot <= now {
                return;
            }
            tokio::time::sleep_until(slot.into()).await;
        }
    }
}

/// A metric: our metrics are found by name, and a second one of the same name from another
/// integration is a second sender.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    pub id: String,
    pub name: String,
    /// `integration.name` (`API` for metrics made by API calls), else its `key`.
    pub integration: Option<String>,
    /// The flows the metric triggers.
    pub flows: Vec<Flow>,
}

impl Metric {
    /// Whether a live flow is triggered by this metric: a missing event is then also a
    /// message the customer never got.
    pub fn flow_live(&self) -> bool {
        self.flows.iter().any(Flow::live)
    }

    /// Whether the metric was made by API calls, as marketsync's events make theirs.
    pub fn made_by_api(&self) -> bool {
        self.integration
            .as_deref()
            .is_none_or(|i| i.eq_ignore_ascii_case("api"))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Flow {
    pub id: String,
    pub name: Option<String>,
    /// `live`, `manual`, `draft` (a free string in the spec).
    pub status: Option<String>,
    pub archived: bool,
    pub trigger_type: Option<String>,
}

impl Flow {
    fn of(resource: &Json) -> Flow {
        let attributes = &resource["attributes"];
        let text = |name: &str| attributes[name].as_str().map(str::to_owned);
        Flow {
            id: resource["id"].as_str().unwrap_or_default().to_owned(),
            name: text("name"),
            status: text("status"),
            archived: attributes["archived"].as_bool().unwrap_or(false),
            trigger_type: text("trigger_type"),
        }
    }

    pub fn live(&self) -> bool {
        !self.archived
            && self
                .status
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case("live"))
    }
}

/// An event as `GET /api/events` lists it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    pub metric_id: Option<String>,
    pub profile_id: Option<String>,
    /// When it happened (ms since the epoch).
    pub datetime: Option<i64>,
    /// `event_properties`: the `properties` the event was sent with.
    pub properties: Map<String, Json>,
    /// The profile's identifiers, from `included` (`include=profile`).
    pub email: Option<String>,
    pub phone_number: Option<String>,
}

impl Event {
    fn of(data: &Json, people: &HashMap<&str, &Json>) -> Event {
        let attributes = &data["attributes"];
        let profile_id = data["relationships"]["profile"]["data"]["id"]
            .as_str()
            .map(str::to_owned);
        let person = profile_id.as_deref().and_then(|id| people.get(id));
        let text = |name: &str| {
            person
                .and_then(|p| p[name].as_str())
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let datetime = attributes["datetime"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_millis())
            .or_else(|| attributes["timestamp"].as_i64().map(|s| s * 1000));
        Event {
            id: data["id"].as_str().unwrap_or_default().to_owned(),
            metric_id: data["relationships"]["metric"]["data"]["id"]
                .as_str()
                .map(str::to_owned),
            profile_id,
            datetime,
            properties: attributes["event_properties"]
                .as_object()
                .cloned()
                .unwrap_or_default(),
            email: text("email"),
            phone_number: text("phone_number"),
        }
    }

    /// A property as text (`OrderId` is sent as a string; a number is written out).
    pub fn property(&self, name: &str) -> Option<String> {
        match self.properties.get(name)? {
            Json::String(s) => Some(s.clone()),
            Json::Null => None,
            other => Some(other.to_string()),
        }
    }

    /// The event's value in major units, when Klaviyo gives it back. The spec documents no
    /// value on a read event; Klaviyo's own integrations and its legacy API carry it as
    /// `event_properties.$value` (unverified on the current API: notes §2), so that is read.
    pub fn value(&self) -> Option<f64> {
        match self.properties.get("$value")? {
            Json::Number(n) => n.as_f64(),
            Json::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
}

/// A profile as `GET /api/profiles` lists it with `additional-fields[profile]=subscriptions`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub id: String,
    pub email: Option<String>,
    pub phone_number: Option<String>,
    pub external_id: Option<String>,
    /// The custom properties.
    pub properties: Map<String, Json>,
    /// `subscriptions.email.marketing`.
    pub email_marketing: Option<EmailMarketing>,
}

/// `subscriptions.email.marketing` (the spec's `EmailMarketing`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EmailMarketing {
    /// `SUBSCRIBED`, `UNSUBSCRIBED`, `NEVER_SUBSCRIBED` (a free string in the spec).
    pub consent: Option<String>,
    pub can_receive_email_marketing: Option<bool>,
    /// ms since the epoch.
    pub consent_timestamp: Option<i64>,
    pub method: Option<String>,
    pub method_detail: Option<String>,
    pub custom_method_detail: Option<String>,
    /// Global suppressions: reason (`UNSUBSCRIBE`, `HARD_BOUNCE`, ...) and when.
    pub suppressions: Vec<Suppression>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suppression {
    pub reason: String,
    /// ms since the epoch.
    pub at: Option<i64>,
}

impl Profile {
    pub fn of(data: &Json) -> Profile {
        let attributes = &data["attributes"];
        let text = |value: &Json| value.as_str().filter(|v| !v.is_empty()).map(str::to_owned);
        let marketing = &attributes["subscriptions"]["email"]["marketing"];
        let email_marketing = marketing.is_object().then(|| EmailMarketing {
            consent: text(&marketing["consent"]),
            can_receive_email_marketing: marketing["can_receive_email_marketing"].as_bool(),
            consent_timestamp: time(&marketing["consent_timestamp"]),
            method: text(&marketing["method"]),
            method_detail: text(&marketing["method_detail"]),
            custom_method_detail: text(&marketing["custom_method_detail"]),
            suppressions: marketing["suppression"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| Suppression {
                    reason: s["reason"].as_str().unwrap_or_default().to_owned(),
                    at: time(&s["timestamp"]),
                })
                .collect(),
        });
        Profile {
            id: data["id"].as_str().unwrap_or_default().to_owned(),
            email: text(&attributes["email"]),
            phone_number: text(&attributes["phone_number"]),
            external_id: text(&attributes["external_id"]),
            properties: attributes["properties"]
                .as_object()
                .cloned()
                .unwrap_or_default(),
            email_marketing,
        }
    }
}

/// One day's total of a metric, in one currency, as metric-aggregates gives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DailyTotal {
    /// `YYYY-MM-DD` in the query's timezone.
    pub day: String,
    /// `$value_currency`; `None` when the events have none.
    pub currency: Option<String>,
    /// The sum of the events' values, in major units.
    pub sum_value: f64,
    pub count: u64,
}

/// An RFC 3339 time as ms since the epoch.
fn time(value: &Json) -> Option<i64> {
    value
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis())
}

/// An instant as a filter writes it: RFC 3339 with its offset, unquoted (notes §2).
fn instant(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, false)
}

/// The reason without the query string, which can name a person (an HTTP error quotes the URL
/// it failed on).
fn unnamed(reason: &str, path: &str) -> String {
    match path.split_once('?') {
        Some((_, query)) if !query.is_empty() => reason.replace(query, "…"),
        _ => reason.to_owned(),
    }
}

/// `links.next` as a path on the same host, to follow.
pub(crate) fn next_path(document: &Json) -> Option<String> {
    let next = document["links"]["next"].as_str()?;
    let url = reqwest::Url::parse(next).ok()?;
    Some(match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    })
}

/// `path?name=value&...`, every value percent-encoded.
pub(crate) fn with_query(path: &str, params: &[(&str, &str)]) -> String {
    let url = reqwest::Url::parse_with_params(&format!("http://localhost{path}"), params)
        .expect("a path with parameters is a URL");
    format!("{}?{}", url.path(), url.query().unwrap_or_default())
}

/// A filter's string value: double-quoted, with `\` and `"` escaped.
pub(crate) fn quoted(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_quoted_and_queries_encoded() {
        assert_eq!(quoted("a\"b@x.co"), "\"a\\\"b@x.co\"");
        let path = with_query(
            "/api/profiles",
            &[
                ("filter", "equals(email,\"a+b@x.co\")"),
                ("page[size]", "100"),
            ],
        );
        assert_eq!(
            path,
            "/api/profiles?filter=equals%28email%2C%22a%2Bb%40x.co%22%29&page%5Bsize%5D=100"
        );
        let next = next_path(
            &json!({"links": {"next": "http://127.0.0.1:1/api/events?page%5Bcursor%5D=abc"}}),
        );
        assert_eq!(next.as_deref(), Some("/api/events?page%5Bcursor%5D=abc"));
        let at = DateTime::parse_from_rfc3339("2026-03-20T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(instant(at), "2026-03-20T00:00:00+00:00");
    }

    #[test]
    fn an_error_never_carries_the_query_that_names_a_person() {
        let path = "/api/profiles?filter=any%28email%2C%5B%22zoe%40x.co%22%5D%29";
        let reason = format!("connection failed: error sending request for url (http://h{path})");
        let said = unnamed(&reason, path);
        assert!(!said.contains("zoe"), "{said}");
        assert!(said.contains("/api/profiles?…"), "{said}");
    }

    #[test]
    fn a_profile_reads_as_the_spec_documents_it() {
        let data = json!({"type": "profile", "id": "01P", "attributes": {
            "email": "zoe@example.com", "phone_number": null, "external_id": null,
            "properties": {"Marketplacer Marketplace": "petmarket"},
            "subscriptions": {"email": {"marketing": {
                "can_receive_email_marketing": false, "consent": "UNSUBSCRIBED",
                "consent_timestamp": "2026-03-21T01:00:00+00:00", "method": "API",
                "custom_method_detail": "Marketplacer checkout",
                "suppression": [{"reason": "UNSUBSCRIBE", "timestamp": "2026-03-21T01:00:00+00:00"}],
                "list_suppressions": []}}}},
            "links": {"self": "x"}});
        let profile = Profile::of(&data);
        assert_eq!(profile.email.as_deref(), Some("zoe@example.com"));
        assert_eq!(profile.phone_number, None);
        let marketing = profile.email_marketing.unwrap();
        assert_eq!(marketing.consent.as_deref(), Some("UNSUBSCRIBED"));
        assert_eq!(marketing.suppressions[0].reason, "UNSUBSCRIBE");
        assert!(marketing.suppressions[0].at.is_some());
        assert_eq!(
            marketing.custom_method_detail.as_deref(),
            Some("Marketplacer checkout")
        );
    }

    #[test]
    fn a_flow_is_live_when_its_status_says_so_and_it_is_not_archived() {
        let flow = |status: &str, archived: bool| Flow {
            status: Some(status.into()),
            archived,
            ..Flow::default()
        };
        assert!(flow("live", false).live());
        assert!(flow("Live", false).live());
        assert!(!flow("live", true).live());
        assert!(!flow("manual", false).live());
        assert!(!flow("draft", false).live());
    }
}
