//! The sink: the only part that talks to Klaviyo.
//!
//! It takes due requests from the store's outbox, lane by lane, and sends them under
//! Klaviyo's per-endpoint rate limits. The two lanes never share a queue or a concurrency
//! budget, so order events (the transaction lane) never wait behind profile work, however deep
//! that backlog is. Each answer decides the request's fate in the store: accepted (ledger),
//! tried again later (with backoff, honouring `Retry-After`), or a dead letter with Klaviyo's
//! own reason. A key Klaviyo refuses stops everything at once and leaves the queue intact. An
//! endpoint where everything fails (an outage, not bad data) is left alone with its requests
//! queued untouched, and a batch run ends saying Klaviyo is unavailable ([`health`]).
//!
//! The sink never marks a request done before Klaviyo accepted it, so a crash at any point
//! leads at worst to a resend, which Klaviyo deduplicates by `unique_id`.
//!
//! Retries, dead letters, a refused key and outages are also `tracing` events, for a
//! long-running process (`serve`) whose operator has no summary at the end; a batch run installs
//! no subscriber and reports them in its summary. The events name the request, never its body
//! or Klaviyo's text about it (which may quote an email or a phone).

pub mod bulk;
mod health;
pub mod http;
pub mod limit;

use crate::klaviyo::Endpoint;
use crate::metrics::Metrics;
use crate::spec::Lane;
use crate::store::{Accepted, NewDeadLetter, Pending, Store, StoreError};
use bytes::Bytes;
use http::{ApiError, ApiKey, Client, Outcome};
use limit::{Limit, Limiter};
use serde_json::{Value as Json, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::task::JoinSet;

/// How to reach Klaviyo and how hard to push.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub base_url: String,
    pub key: ApiKey,
    pub revision: String,
    pub limits: HashMap<Endpoint, Limit>,
    /// How many times faster than real time the clock runs (tests and demos against the
    /// stand-in); 1.0 against Klaviyo.
    pub time_scale: f64,
    /// Attempts before a retryable failure becomes a dead letter.
    pub max_attempts: u32,
    /// How long a request waits for the request it depends on before it is sent anyway. The
    /// hold counts from when the request was queued or from when this sink started, whichever
    /// is later: time when no sink was running (a stopped run, a crash, `retry` before a later
    /// `run`) is time its dependency could not have been sent either.
    pub hold: Duration,
    pub timeout: Duration,
    /// Requests in flight at once, per lane.
    pub concurrency: usize,
    /// Whether a backlog may go as bulk requests (event bulk jobs, merged subscriptions).
    pub bulk: bool,
    /// Retryable failures in a row (timeouts, 5xx, 429) after which an endpoint may be taken
    /// for unavailable, and from which on its failures no longer count toward `max_attempts`.
    pub outage_failures: u32,
    /// How long (scaled) an endpoint must fail with nothing it was sent getting through before
    /// it is unavailable: no longer sent to but for a probe every quarter of this, its
    /// requests queued as they are. A batch run then ends with
    /// [`SinkError::KlaviyoUnavailable`].
    pub outage_window: Duration,
    /// Where what is sent, retried, dead-lettered and waited for is counted (`/metrics`).
    pub metrics: Arc<Metrics>,
}

impl SinkConfig {
    /// Klaviyo's documented defaults, for the given key.
    pub fn new(base_url: &str, key: ApiKey) -> SinkConfig {
        SinkConfig {
            base_url: base_url.to_owned(),
            key,
            revision: REVISION.to_owned(),
            limits: default_limits(),
            time_scale: 1.0,
            max_attempts: 8,
            hold: Duration::from_secs(120),
            timeout: Duration::from_secs(30),
            concurrency: 16,
            bulk: true,
            outage_failures: 10,
            outage_window: Duration::from_secs(120),
            metrics: Arc::default(),
        }
    }
}

/// The API revision the schemas were extracted from.
pub const REVISION: &str = "2026-07-15";

/// Per-endpoint limits from the OpenAPI spec's `x-klaviyo-ratelimit`, except profile import,
/// where Klaviyo's docs say 700 a minute against the spec's 750: the lower one is used.
pub fn default_limits() -> HashMap<Endpoint, Limit> {
    HashMap::from([
        (
            Endpoint::CreateEvent,
            Limit::per_second_and_minute(350, 3500),
        ),
        (
            Endpoint::CreateOrUpdateProfile,
            Limit::per_second_and_minute(75, 700),
        ),
        (
            Endpoint::BulkSubscribeProfiles,
            Limit::per_second_and_minute(75, 750),
        ),
        (
            Endpoint::BulkCreateEvents,
            Limit::per_second_and_minute(10, 150),
        ),
        (
            Endpoint::BulkImportProfiles,
            Limit::per_second_and_minute(10, 150),
        ),
    ])
}

/// Why delivery stopped before the queue was empty.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(
        "Klaviyo refused the API key ({status}): {detail}. Check KLAVIYO_API_KEY and that the key has write scopes for events, profiles and subscriptions; nothing was dropped, the queue is intact"
    )]
    KeyRefused { status: u16, detail: String },
    #[error(
        "Klaviyo unavailable: {} answered nothing but timeouts, 5xx or 429 since {} (last: {last_error}); nothing was dead-lettered for it and the queue is kept; run again later",
        endpoints.join(", "),
        chrono::DateTime::<chrono::Utc>::from(*since).format("%Y-%m-%d %H:%M:%S UTC")
    )]
    KlaviyoUnavailable {
        /// The endpoints' paths.
        endpoints: Vec<String>,
        /// When the first of them began failing.
        since: SystemTime,
        last_error: String,
    },
    #[error("state store: {0}")]
    Store(#[from] StoreError),
}

/// What delivery did, for the closing summary.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DeliveryReport {
    pub sent: BTreeMap<String, usize>,
    pub retried: usize,
    pub dead_letters: BTreeMap<String, usize>,
    /// Requests sent after their ordering hold ran out.
    pub sent_after_hold: usize,
    /// Requests retried without their phone number after Klaviyo refused it.
    pub phone_removed: usize,
    /// Time spent waiting for rate-limit slots, summed over requests.
    pub waited_on_limits: Duration,
    /// Bulk requests sent (each carrying many queued requests).
    pub bulk_requests: usize,
}

/// Sends the outbox.
pub struct Sink {
    client: Client,
    config: SinkConfig,
    limiters: HashMap<Endpoint, Arc<Mutex<Limiter>>>,
    store: Arc<Mutex<Store>>,
    report: Arc<Mutex<DeliveryReport>>,
    stop: Arc<AtomicBool>,
    /// The first key refusal (status, detail, when in unix ms), kept apart from the task that
    /// met it: a lane that stops on `stop` before joining that task, or the other lane, still
    /// reports it; the status page says since when.
    refusal: Mutex<Option<(u16, String, i64)>>,
    schemas: &'static crate::klaviyo::Schemas,
    /// When this sink could start sending (unix ms): ordering holds count from here at the
    /// earliest.
    started_at: i64,
    /// Which endpoints are failing for everyone, and since when.
    health: Mutex<health::Tracker>,
    /// Rung when new work was committed, so an idle lane looks now rather than at its next
    /// poll. A hint only: a ring no lane was waiting for is lost, and the poll finds the work.
    wake: tokio::sync::Notify,
    /// Set to stop starting requests: each lane waits for the ones it has in flight, then
    /// returns (an always-on receiver shutting down).
    winding_down: AtomicBool,
    /// Answers Klaviyo accepted and the store does not have yet: a lane writes them all in one
    /// commit before it next reads its due rows, and when it returns. Marked one commit an
    /// answer, the sender took the store a thousand times a second under load, each time
    /// waiting for the disk while intake waited for it (perf, 4 December: 9% of `serve`).
    /// Until written, a row is still in flight to its lane, which therefore never reads it as
    /// due; a crash in between resends it on restart, as a crash between the answer and its
    /// commit always did (Klaviyo absorbs it: see the store's ledger).
    accepted: Mutex<Vec<Accepted>>,
}

/// The shortest time between two reads of a lane's due requests.
const SCAN_GAP: Duration = Duration::from_millis(5);

/// Unix milliseconds, the store's clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Sink {
    pub fn new(config: SinkConfig, store: Arc<Mutex<Store>>) -> Arc<Sink> {
        let client = Client::new(
            &config.base_url,
            config.key.clone(),
            &config.revision,
            config.timeout,
        );
        let limiters = Endpoint::ALL
            .into_iter()
            .map(|e| {
                let limit = config
                    .limits
                    .get(&e)
                    .copied()
                    .unwrap_or_else(|| default_limits()[&e]);
                (
                    e,
                    Arc::new(Mutex::new(Limiter::new(limit.scaled(config.time_scale)))),
                )
            })
            .collect();
        Arc::new(Sink {
            client,
            limiters,
            store,
            report: Arc::default(),
            stop: Arc::default(),
            refusal: Mutex::default(),
            schemas: crate::klaviyo::Schemas::builtin(),
            started_at: now_ms(),
            health: Mutex::new(health::Tracker::new(
                config.outage_failures,
                config.outage_window.div_f64(config.time_scale),
            )),
            config,
            wake: tokio::sync::Notify::new(),
            winding_down: AtomicBool::new(false),
            accepted: Mutex::default(),
        })
    }

    /// Tells idle lanes that new work may be due (see `wake`).
    pub fn wake(&self) {
        self.wake.notify_waiters();
    }

    /// Stops starting requests: every lane finishes (and records) the calls it has in flight,
    /// then returns. Nothing queued is touched; a later run sends it.
    pub fn wind_down(&self) {
        self.winding_down.store(true, Ordering::SeqCst);
        self.wake.notify_waiters();
    }

    /// Set when a key is refused; intake watches it too, so the whole run stops.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// The key refusal that stopped this sink, if one did.
    pub fn refused(&self) -> Option<SinkError> {
        let refusal = self.refusal.lock().expect("refusal lock");
        refusal
            .as_ref()
            .map(|(status, detail, _)| SinkError::KeyRefused {
                status: *status,
                detail: detail.clone(),
            })
    }

    /// When Klaviyo first refused the key (unix ms), if it did.
    pub fn refused_at(&self) -> Option<i64> {
        let refusal = self.refusal.lock().expect("refusal lock");
        refusal.as_ref().map(|(_, _, at)| *at)
    }

    /// Klaviyo refused the key: keeps the first refusal, stops everything, and returns the
    /// error for the caller to pass on.
    fn refuse(&self, status: u16, detail: &str) -> SinkError {
        let detail = detail.trim_end_matches('.').to_owned();
        let mut refusal = self.refusal.lock().expect("refusal lock");
        if refusal.is_none() {
            tracing::error!(
                status,
                "Klaviyo refused the API key: sending stopped, the queue is kept"
            );
        }
        refusal.get_or_insert((status, detail.clone(), now_ms()));
        drop(refusal);
        self.stop.store(true, Ordering::SeqCst);
        self.config.metrics.key_refused();
        SinkError::KeyRefused { status, detail }
    }

    /// Where this sink counts what it does; a receiver counts its webhooks there too.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.config.metrics
    }

    pub fn report(&self) -> DeliveryReport {
        self.report.lock().expect("report lock").clone()
    }

    fn health(&self) -> std::sync::MutexGuard<'_, health::Tracker> {
        self.health.lock().expect("health lock")
    }

    /// The endpoints that are unavailable now, as the error that ends a batch run; `None` when
    /// none is.
    pub fn unavailable(&self) -> Option<SinkError> {
        let health = self.health();
        let now = Instant::now();
        let outages: Vec<(Endpoint, health::Outage)> = health
            .unavailable(now)
            .into_iter()
            .filter_map(|e| health.outage(e, now).map(|o| (e, o)))
            .collect();
        let first = outages.iter().min_by_key(|(_, o)| o.since)?;
        Some(SinkError::KlaviyoUnavailable {
            endpoints: outages.iter().map(|(e, _)| e.path().to_owned()).collect(),
            since: first.1.since,
            last_error: first.1.last_error.clone(),
        })
    }

    /// Sends one lane's due requests until `done()` says no more will come and the lane is
    /// empty, or until a key is refused. When no more will come and all that is left is queued
    /// for unavailable endpoints, returns [`SinkError::KlaviyoUnavailable`] with it queued.
    pub async fn drain_lane(
        self: Arc<Self>,
        lane: Lane,
        intake_done: Arc<AtomicBool>,
    ) -> Result<(), SinkError> {
        let drained = Arc::clone(&self).drain(lane, intake_done).await;
        // Whatever ended the lane, the answers it had are kept.
        let recorded = self.record_accepted(&mut self.store.lock().expect("store lock"));
        drained.and(recorded)
    }

    async fn drain(
        self: Arc<Self>,
        lane: Lane,
        intake_done: Arc<AtomicBool>,
    ) -> Result<(), SinkError> {
        // Rows being sent, and the coalescing keys they hold: two updates of one profile must
        // never be in flight together, or the older could reach Klaviyo last.
        let mut in_flight = InFlight::default();
        // Rows a bulk request could not carry: they go one by one.
        let mut single_only: HashSet<i64> = HashSet::new();
        let mut tasks: JoinSet<Sent> = JoinSet::new();
        let poll = Duration::from_millis(10);
        let mut last_scan: Option<Instant> = None;
        loop {
            // However often the lane is woken (a receiver wakes it after every webhook), it
            // reads the store at most once every SCAN_GAP: one read finds all that was queued
            // meanwhile, and the store stays free for intake between reads.
            if let Some(since) = last_scan.map(|at| at.elapsed())
                && since < SCAN_GAP
            {
                tokio::time::sleep(SCAN_GAP - since).await;
            }
            while let Some(joined) = tasks.try_join_next() {
                settle(joined, &mut in_flight, &mut single_only)?;
            }
            if self.stop.load(Ordering::SeqCst) {
                tasks.shutdown().await;
                // Stopped by a refused key (in this lane or the other): say so, whether or
                // not the task that met it was joined.
                return self.refused().map_or(Ok(()), Err);
            }
            if self.winding_down.load(Ordering::SeqCst) {
                while let Some(joined) = tasks.join_next().await {
                    settle(joined, &mut in_flight, &mut single_only)?;
                }
                return self.refused().map_or(Ok(()), Err);
            }
            let room = self.config.concurrency.saturating_sub(tasks.len());
            // Endpoints failing for everyone: their rows stay queued, untouched, but for a
            // probe now and then (one at a time, never in bulk).
            let (unavailable, resting) = {
                let health = self.health();
                let now = Instant::now();
                (health.unavailable(now), health.resting(now))
            };
            let resting_paths: Vec<&str> = resting.iter().map(|e| e.path()).collect();
            let mut bulk: Vec<Endpoint> = Vec::new();
            let due = if room == 0 {
                Vec::new()
            } else {
                last_scan = Some(Instant::now());
                let mut store = self.store.lock().expect("store lock");
                // Rows whose answers are written here were settled above: from now on they
                // are out of flight, and sent in the store.
                self.record_accepted(&mut store)?;
                let bulk_endpoints: &[Endpoint] = if self.config.bulk {
                    &[
                        Endpoint::CreateEvent,
                        Endpoint::BulkSubscribeProfiles,
                        Endpoint::CreateOrUpdateProfile,
                    ]
                } else {
                    &[]
                };
                let now = Instant::now();
                for &endpoint in bulk_endpoints {
                    if unavailable.contains(&endpoint) {
                        continue;
                    }
                    // A backlog deeper than a burst goes in bulk; so does any backlog once the
                    // endpoint's own limit is spent (3,500 events a minute go in 35 s at 100 a
                    // second, and the rest of the minute would wait).
                    let threshold = self.bulk_threshold(endpoint);
                    if !self.can_book_single(endpoint, now)
                        || store.pending_reaches(lane.as_str(), endpoint.path(), threshold)?
                    {
                        bulk.push(endpoint);
                    }
                }
                // A bulk endpoint's rows are read only when a batch of them could go now: read
                // on every scan (up to 200 a second while webhooks arrive), a thousand bodies
                // were parsed and batched to be dropped again unsent, which was most of the
                // sender's CPU in `serve` (perf, 4 December). Left out, they stay queued.
                let mut skipped = resting_paths;
                let mut going = Vec::with_capacity(bulk.len());
                for endpoint in bulk {
                    if self.can_book_steady(bulk::endpoint_for(endpoint), now) {
                        going.push(endpoint);
                    } else {
                        skipped.push(endpoint.path());
                    }
                }
                bulk = going;
                let extra = if bulk.is_empty() { 0 } else { bulk::MAX_ITEMS };
                store.due_beside(lane.as_str(), now_ms(), room + extra, &skipped, |id| {
                    in_flight.contains(id)
                })?
            };
            let mut started = 0;
            let mut batchable: Vec<(Endpoint, Pending)> = Vec::new();
            // Coalescing keys taken by this round's rows: with those in flight, at most one
            // update of a profile is sent or batched at a time, so none can overtake another.
            let mut taken: HashSet<(String, String)> = HashSet::new();
            for row in due {
                if started == room {
                    continue;
                }
                let coalescing = coalescing_of(&row);
                if coalescing
                    .as_ref()
                    .is_some_and(|c| taken.contains(c) || in_flight.holds(c))
                {
                    continue;
                }
                let endpoint = Endpoint::parse(&row.endpoint);
                let batched =
                    endpoint.filter(|e| bulk.contains(e) && !single_only.contains(&row.id));
                // A request goes alone only when its endpoint has a slot for it soon; it
                // stays queued otherwise (in the store, not in memory).
                let booking = match endpoint {
                    Some(endpoint) if batched.is_none() => {
                        match self.book_single(endpoint, Instant::now()) {
                            Some(booking) => Some(booking),
                            None => continue,
                        }
                    }
                    _ => None,
                };
                if let Some(endpoint) = endpoint.filter(|e| unavailable.contains(e))
                    && !self.health().take_probe(endpoint, Instant::now())
                {
                    continue;
                }
                if !self.may_go(&row)? {
                    continue;
                }
                if let Some(endpoint) = batched {
                    taken.extend(coalescing);
                    batchable.push((endpoint, row));
                    continue;
                }
                in_flight.insert(&row);
                started += 1;
                let sink = Arc::clone(&self);
                tasks.spawn(async move {
                    let id = row.id;
                    (vec![id], sink.send(row, booking).await.map(|()| Vec::new()))
                });
            }
            for endpoint in bulk {
                let (rows, rest): (Vec<_>, Vec<_>) =
                    batchable.into_iter().partition(|(e, _)| *e == endpoint);
                batchable = rest;
                let rows: Vec<Pending> = rows.into_iter().map(|(_, row)| row).collect();
                // Batches are built only when one can go soon: a batch waiting for its slot
                // holds a thousand bodies in memory. Bulk jobs, full or not, go no faster than
                // the bulk endpoint's steady rate (see `Limiter::book_steady`).
                if !self.can_book_steady(bulk::endpoint_for(endpoint), Instant::now()) {
                    continue;
                }
                let queued = rows.iter().map(|row| bulk::Queued {
                    id: row.id,
                    text: &row.body,
                });
                // Left out of a batch, a request goes on its own (one that is not JSON is
                // buried there).
                let (batches, left) = match endpoint {
                    Endpoint::CreateEvent => bulk::event_jobs(queued, self.schemas),
                    Endpoint::CreateOrUpdateProfile => bulk::profile_jobs(queued, self.schemas),
                    _ => bulk::subscription_jobs(queued, self.schemas),
                };
                single_only.extend(left);
                let mut rows: HashMap<i64, Pending> =
                    rows.into_iter().map(|row| (row.id, row)).collect();
                for batch in batches {
                    if started == room {
                        break;
                    }
                    let Some(booking) = self.book_steady(batch.endpoint, Instant::now()) else {
                        break;
                    };
                    // The batch carries the bodies; the rows are kept for what becomes of
                    // them, for as long as the job takes.
                    let members: Vec<Pending> = batch
                        .ids
                        .iter()
                        .filter_map(|id| rows.remove(id))
                        .map(|row| Pending {
                            body: String::new(),
                            ..row
                        })
                        .collect();
                    // A job holds its profiles' keys until Klaviyo completed it: an update
                    // sent alone meanwhile would be applied first and then overwritten.
                    for row in &members {
                        in_flight.insert(row);
                    }
                    started += 1;
                    let sink = Arc::clone(&self);
                    tasks.spawn(async move {
                        let ids = batch.ids.clone();
                        (ids, sink.send_batch(batch, members, booking).await)
                    });
                }
            }
            if started == 0 {
                if tasks.is_empty() {
                    if intake_done.load(Ordering::SeqCst) {
                        // Done when nothing is left but what waits for unavailable endpoints.
                        let mut store = self.store.lock().expect("store lock");
                        self.record_accepted(&mut store)?;
                        let mut left = store.pending_count(lane.as_str(), None)?;
                        let mut kept = 0;
                        for endpoint in &unavailable {
                            kept += store.pending_count(lane.as_str(), Some(endpoint.path()))?;
                        }
                        left -= kept.min(left);
                        if left == 0 {
                            drop(store);
                            return match self.unavailable() {
                                Some(err) if kept > 0 => Err(err),
                                _ => Ok(()),
                            };
                        }
                    }
                    tokio::select! {
                        () = tokio::time::sleep(poll) => {}
                        () = self.wake.notified() => {}
                    }
                } else {
                    // Wake on the next completion, or soon, to pick up new work.
                    tokio::select! {
                        Some(joined) = tasks.join_next() => settle(joined, &mut in_flight, &mut single_only)?,
                        () = tokio::time::sleep(poll) => {}
                        () = self.wake.notified() => {}
                    }
                }
            }
        }
    }

    /// Klaviyo accepted these rows at `at`: kept for the lane's next write (see `accepted`).
    fn accept(&self, ids: Vec<i64>, status: u16, at: i64) {
        self.accepted
            .lock()
            .expect("accepted lock")
            .push(Accepted { ids, status, at });
    }

    /// Writes every accepted answer not yet in the store, in one commit. Taken only with the
    /// store held, and read from it with the same hold: a lane that took another lane's answers
    /// and had yet to write them would otherwise let that lane read their rows as due, and
    /// send them again (tests/crash.rs caught it).
    fn record_accepted(&self, store: &mut Store) -> Result<(), SinkError> {
        let answers = std::mem::take(&mut *self.accepted.lock().expect("accepted lock"));
        if answers.is_empty() {
            return Ok(());
        }
        Ok(store.mark_accepted(&answers)?)
    }

    /// How deep a backlog must be before bulk requests beat single ones: more than one burst
    /// of the single endpoint.
    fn bulk_threshold(&self, endpoint: Endpoint) -> usize {
        let limit = self.limiters[&endpoint]
            .lock()
            .expect("limiter lock")
            .limit();
        (limit.burst as usize).max(2)
    }

    /// Sends a bulk request; returns the ids Klaviyo refused it for, to go one by one.
    async fn send_batch(
        self: Arc<Self>,
        batch: bulk::Job,
        rows: Vec<Pending>,
        booking: Booking,
    ) -> Result<Vec<i64>, SinkError> {
        let outcome = self
            .paced(
                batch.endpoint,
                Call::Post(batch.body.clone()),
                Some(booking),
            )
            .await;
        let now = now_ms();
        // Health is the queue's endpoint's (a bulk job of events is news about `/api/events`).
        let queued_to = rows
            .first()
            .and_then(|r| Endpoint::parse(&r.endpoint))
            .unwrap_or(batch.endpoint);
        let failing_for = self.observe(queued_to, &outcome);
        match outcome {
            Outcome::Accepted { status, body } => {
                self.report.lock().expect("report lock").bulk_requests += 1;
                let refused_ids: HashSet<i64> = if batch.endpoint == Endpoint::BulkImportProfiles {
                    let job = body
                        .as_ref()
                        .and_then(|b| b.pointer("/data/id"))
                        .and_then(Json::as_str)
                        .unwrap_or_default()
                        .to_owned();
                    match self.import_errors(&job).await? {
                        Some((failed, errors)) => {
                            // Errors name profiles by identity or place: only then is the
                            // job's body read again.
                            let profiles = if errors.is_empty() {
                                Vec::new()
                            } else {
                                bulk::job_profiles(&batch.body)
                            };
                            let verdict = bulk::match_import_errors(&profiles, &errors, failed);
                            if verdict.unmatched_failures {
                                // Some profile failed and no error says which: none of the
                                // job's can be called imported, so each goes again on its own
                                // (an import is an upsert; the refused one is found there).
                                batch.ids.iter().copied().collect()
                            } else {
                                verdict
                                    .refused
                                    .iter()
                                    .filter_map(|index| batch.ids.get(*index).copied())
                                    .collect()
                            }
                        }
                        None => {
                            // The job did not finish in time: send the profiles again later
                            // (an import is an upsert, so a second one changes nothing).
                            for row in &rows {
                                self.retry_later(
                                    row,
                                    Failure {
                                        reason: "bulk import job did not finish",
                                        status: None,
                                        after: None,
                                    },
                                    now_ms(),
                                    None,
                                )?;
                            }
                            return Ok(Vec::new());
                        }
                    }
                } else {
                    HashSet::new()
                };
                let accepted: Vec<i64> = batch
                    .ids
                    .iter()
                    .copied()
                    .filter(|id| !refused_ids.contains(id))
                    .collect();
                self.accept(accepted, status, now);
                let mut report = self.report.lock().expect("report lock");
                for row in rows.iter().filter(|r| !refused_ids.contains(&r.id)) {
                    *report.sent.entry(row.mapping.clone()).or_default() += 1;
                    self.config.metrics.sent(
                        &row.endpoint,
                        &row.lane,
                        &row.mapping,
                        row.created_at,
                        now,
                    );
                }
                // A profile the job refused goes on its own, where a refused phone is dropped
                // and anything else becomes a dead letter with Klaviyo's reason.
                Ok(refused_ids.into_iter().collect())
            }
            Outcome::Retry {
                reason,
                after,
                status,
            } => {
                if let Some(after) = after {
                    self.limiter(batch.endpoint)
                        .block_until(Instant::now() + after);
                }
                let failure = Failure {
                    reason: &reason,
                    status,
                    after,
                };
                for row in &rows {
                    self.retry_later(row, failure, now, failing_for)?;
                }
                Ok(Vec::new())
            }
            // Something in the batch was refused: each goes on its own, to find which.
            Outcome::Refused { .. } | Outcome::DuplicateProfile { .. } => Ok(batch.ids),
            Outcome::KeyRefused { status, detail } => Err(self.refuse(status, &detail)),
        }
    }

    /// Whether a request may be sent now: one that waits for another is held until that one
    /// is in the ledger, or until the hold runs out (then it goes, flagged). The hold counts
    /// only time this sink was running: from when the row was queued or the sink started,
    /// whichever is later. Counted from queueing alone, a pause longer than the hold would
    /// release the row together with the one it waits for, which it could then overtake.
    fn may_go(&self, row: &Pending) -> Result<bool, SinkError> {
        let Some(waits_for) = &row.waits_for else {
            return Ok(true);
        };
        let mut store = self.store.lock().expect("store lock");
        if store.ledger_has(waits_for)? {
            return Ok(true);
        }
        let now = now_ms();
        let held_since = row.created_at.max(self.started_at);
        let held_for = Duration::from_millis((now - held_since).max(0) as u64);
        if held_for >= self.config.hold {
            if store.flag_exception(row.id, "sent-after-hold", now)? {
                self.report.lock().expect("report lock").sent_after_hold += 1;
            }
            return Ok(true);
        }
        let recheck = (self.config.hold - held_for).min(Duration::from_millis(200));
        store.hold(row.id, now + recheck.as_millis() as i64)?;
        Ok(false)
    }

    async fn send(
        self: Arc<Self>,
        row: Pending,
        booking: Option<Booking>,
    ) -> Result<(), SinkError> {
        let Some(endpoint) = Endpoint::parse(&row.endpoint) else {
            let reason = format!("no such endpoint {}", row.endpoint);
            return self.bury(&row, "unknown-endpoint", reason, json!({}));
        };
        // The stored text is what goes: checked to be JSON without building a tree of it, which
        // only a refusal needs.
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&row.body) {
            return self.bury_corrupt(&row, &e);
        }
        let text = Bytes::from(row.body.clone());
        let outcome = self.paced(endpoint, Call::Post(text), booking).await;
        let parsed = || serde_json::from_str::<Json>(&row.body).unwrap_or_default();
        let now = now_ms();
        let failing_for = self.observe(endpoint, &outcome);
        match outcome {
            Outcome::Accepted { status, .. } => {
                self.accept(vec![row.id], status, now);
                self.config.metrics.sent(
                    &row.endpoint,
                    &row.lane,
                    &row.mapping,
                    row.created_at,
                    now,
                );
                *self
                    .report
                    .lock()
                    .expect("report lock")
                    .sent
                    .entry(row.mapping.clone())
                    .or_default() += 1;
            }
            Outcome::Retry {
                reason,
                after,
                status,
            } => {
                if let Some(after) = after {
                    self.limiter(endpoint).block_until(Instant::now() + after);
                }
                let failure = Failure {
                    reason: &reason,
                    status,
                    after,
                };
                self.retry_later(&row, failure, now, failing_for)?;
            }
            Outcome::Refused { status, errors } => {
                let phone = "/data/attributes/phone_number";
                let phone_refused =
                    status == 400 && errors.iter().any(|e| e.pointer.as_deref() == Some(phone));
                let mut body = parsed();
                if phone_refused && remove_phone(&mut body) {
                    // A phone Klaviyo cannot read is left out and the profile sent without it.
                    let mut store = self.store.lock().expect("store lock");
                    store.replace_body(row.id, &body.to_string())?;
                    store.flag_exception(row.id, "phone-removed", now)?;
                    store.reschedule(
                        row.id,
                        now,
                        Some(status),
                        "phone number refused; retrying without it",
                        now,
                    )?;
                    self.report.lock().expect("report lock").phone_removed += 1;
                } else {
                    let reason = format!("Klaviyo refused it ({status}): {}", describe(&errors));
                    self.bury(
                        &row,
                        "invalid",
                        reason,
                        json!({"status": status, "errors": errors}),
                    )?;
                }
            }
            Outcome::DuplicateProfile {
                errors,
                existing_profile,
            } => {
                let attributes = parsed()
                    .pointer("/data/attributes")
                    .cloned()
                    .unwrap_or_default();
                let reason = format!(
                    "email {} and phone {} belong to different Klaviyo profiles (existing profile {})",
                    attributes["email"],
                    attributes["phone_number"],
                    existing_profile.as_deref().unwrap_or("unknown")
                );
                let details = json!({"status": 409, "email": attributes["email"],
                                     "phone_number": attributes["phone_number"],
                                     "existing_profile": existing_profile, "errors": errors});
                self.bury(&row, "duplicate-profile", reason, details)?;
            }
            Outcome::KeyRefused { status, detail } => {
                return Err(self.refuse(status, &detail));
            }
        }
        Ok(())
    }

    /// Waits for a profile bulk import job to finish and returns its `failed_count` and its
    /// import errors, or `None` if it has not finished after about ten minutes.
    async fn import_errors(
        &self,
        job: &str,
    ) -> Result<Option<(Option<usize>, Vec<bulk::ImportErrorRef>)>, SinkError> {
        let mut wait = Duration::from_millis(500);
        let deadline = Instant::now() + Duration::from_secs(600).div_f64(self.config.time_scale);
        let failed = loop {
            if Instant::now() > deadline || job.is_empty() {
                return Ok(None);
            }
            tokio::time::sleep(wait.div_f64(self.config.time_scale)).await;
            wait = (wait * 2).min(Duration::from_secs(10));
            let path = format!("{}/{job}", Endpoint::BulkImportProfiles.path());
            match self
                .paced(Endpoint::BulkImportProfiles, Call::Get(&path), None)
                .await
            {
                Outcome::Accepted { body, .. } => {
                    let attribute = |name: &str| {
                        body.as_ref()
                            .and_then(|b| b.pointer(&format!("/data/attributes/{name}")))
                            .cloned()
                            .unwrap_or_default()
                    };
                    let status = attribute("status");
                    match status.as_str().unwrap_or_default() {
                        "complete" => {
                            break attribute("failed_count")
                                .as_u64()
                                .and_then(|n| usize::try_from(n).ok());
                        }
                        "cancelled" | "failed" => return Ok(None),
                        _ => continue,
                    }
                }
                Outcome::KeyRefused { status, detail } => {
                    return Err(self.refuse(status, &detail));
                }
                _ => continue,
            }
        };
        let mut errors = Vec::new();
        let mut next = Some(format!(
            "{}/{job}/import-errors?page[size]=100",
            Endpoint::BulkImportProfiles.path()
        ));
        while let Some(path) = next.take() {
            let Outcome::Accepted {
                body: Some(page), ..
            } = self
                .paced(Endpoint::BulkImportProfiles, Call::Get(&path), None)
                .await
            else {
                return Ok(None);
            };
            for item in page["data"].as_array().into_iter().flatten() {
                let attributes = &item["attributes"];
                errors.push(bulk::ImportErrorRef {
                    pointer: attributes
                        .pointer("/source/pointer")
                        .and_then(Json::as_str)
                        .map(str::to_owned),
                    original_payload: attributes
                        .get("original_payload")
                        .filter(|p| !p.is_null())
                        .cloned(),
                });
            }
            // `links.next` is a full URL; the client wants the path from `/api/` on.
            next = page
                .pointer("/links/next")
                .and_then(Json::as_str)
                .and_then(|url| url.find("/api/").map(|at| url[at..].to_owned()));
        }
        Ok(Some((failed, errors)))
    }

    /// Books an answer in the endpoint's health. For a retryable failure, returns `None` when
    /// it counts against the request, or how long the endpoint has been failing for everyone.
    fn observe(&self, endpoint: Endpoint, outcome: &Outcome) -> Option<Duration> {
        let mut health = self.health();
        let now = Instant::now();
        let was_unavailable = health.outage(endpoint, now).is_some();
        let failing_for = match outcome {
            Outcome::Retry { reason, .. } => health.failed(endpoint, reason, now),
            Outcome::KeyRefused { .. } => None,
            _ => {
                health.answered(endpoint, now);
                None
            }
        };
        match (was_unavailable, health.outage(endpoint, now)) {
            (false, Some(outage)) => tracing::warn!(
                endpoint = endpoint.path(),
                last_error = outage.last_error,
                "Klaviyo unavailable: nothing sent to this endpoint got through for the outage \
                 window; its requests stay queued and a probe is sent now and then"
            ),
            (true, None) => tracing::info!(
                endpoint = endpoint.path(),
                "Klaviyo answers again: sending to this endpoint resumes"
            ),
            _ => {}
        }
        failing_for
    }

    /// Schedules another attempt, or gives up after the last one. A failure that says nothing
    /// against the request (`failing_for`: its endpoint has been failing for everyone that
    /// long) is not counted, and waits longer the longer the endpoint has been failing.
    fn retry_later(
        &self,
        row: &Pending,
        failure: Failure<'_>,
        now: i64,
        failing_for: Option<Duration>,
    ) -> Result<(), SinkError> {
        let Failure {
            reason,
            status,
            after,
        } = failure;
        if failing_for.is_none() && row.attempts + 1 >= self.config.max_attempts {
            let gave_up = format!("gave up after {} attempts: {reason}", row.attempts + 1);
            return self.bury(
                row,
                "retries-exhausted",
                gave_up,
                json!({"last_error": reason, "status": status}),
            );
        }
        let wait = after.unwrap_or_else(|| {
            let backoff = self.backoff(row.attempts);
            failing_for.map_or(backoff, |f| backoff.max(self.outage_backoff(f)))
        });
        let next = now + wait.as_millis() as i64;
        tracing::info!(
            request = row.id,
            mapping = row.mapping,
            endpoint = row.endpoint,
            attempt = row.attempts + 1,
            counted = failing_for.is_none(),
            status,
            error = reason,
            retry_in_ms = wait.as_millis() as u64,
            "a Klaviyo call failed; it is tried again"
        );
        let mut store = self.store.lock().expect("store lock");
        match failing_for {
            Some(_) => store.postpone(row.id, next, status, reason, now)?,
            None => store.reschedule(row.id, next, status, reason, now)?,
        }
        drop(store);
        self.report.lock().expect("report lock").retried += 1;
        self.config.metrics.retried(&row.endpoint, &row.mapping);
        Ok(())
    }

    fn limiter(&self, endpoint: Endpoint) -> std::sync::MutexGuard<'_, Limiter> {
        self.limiters[&endpoint].lock().expect("limiter lock")
    }

    /// How soon a request must be able to go for a lane to start it: a burst window.
    fn slot_horizon(&self) -> Duration {
        Duration::from_secs(1).div_f64(self.config.time_scale)
    }

    /// A slot on `endpoint` for a request about to start, if one is free within
    /// [`Sink::slot_horizon`] behind those already booked ([`Limiter::book`]).
    fn book(&self, endpoint: Endpoint, now: Instant) -> Option<Booking> {
        let limiter = &self.limiters[&endpoint];
        let booked = limiter
            .lock()
            .expect("limiter lock")
            .book(now, self.slot_horizon());
        booked.then(|| Booking {
            limiter: Arc::clone(limiter),
            used: false,
        })
    }

    /// Whether a request to `endpoint` could be booked now.
    fn can_book(&self, endpoint: Endpoint, now: Instant) -> bool {
        self.limiter(endpoint).can_book(now, self.slot_horizon())
    }

    /// [`Sink::book`] for a bulk request ([`Limiter::book_steady`]).
    fn book_steady(&self, endpoint: Endpoint, now: Instant) -> Option<Booking> {
        let limiter = &self.limiters[&endpoint];
        let booked = limiter
            .lock()
            .expect("limiter lock")
            .book_steady(now, self.slot_horizon());
        booked.then(|| Booking {
            limiter: Arc::clone(limiter),
            used: false,
        })
    }

    /// A slot for a request sent alone. Where the bulk endpoint is the request's own
    /// (subscriptions, merged into one job), the two share one allowance: a request that could
    /// have been merged then waits for the steady rate, or requests sent one by one at the
    /// burst rate would spend the minute's allowance and leave none for the merged jobs.
    fn book_single(&self, endpoint: Endpoint, now: Instant) -> Option<Booking> {
        if self.shares_allowance(endpoint) {
            self.book_steady(endpoint, now)
        } else {
            self.book(endpoint, now)
        }
    }

    /// Whether [`Sink::book_single`] would book a slot now.
    fn can_book_single(&self, endpoint: Endpoint, now: Instant) -> bool {
        if self.shares_allowance(endpoint) {
            self.can_book_steady(endpoint, now)
        } else {
            self.can_book(endpoint, now)
        }
    }

    /// Whether requests to `endpoint` sent alone and in bulk count against one allowance.
    fn shares_allowance(&self, endpoint: Endpoint) -> bool {
        self.config.bulk && bulk::endpoint_for(endpoint) == endpoint
    }

    /// Whether a bulk request could be booked now.
    fn can_book_steady(&self, endpoint: Endpoint, now: Instant) -> bool {
        self.limiter(endpoint)
            .can_book_steady(now, self.slot_horizon())
    }

    /// One request under `endpoint`'s limits: waits for a slot, sends, and lets the answer's
    /// timing and `RateLimit-*` headers adjust the limiter. A request the lane started with a
    /// [`Booking`] ends it as it takes its slot.
    async fn paced(&self, endpoint: Endpoint, call: Call<'_>, booking: Option<Booking>) -> Outcome {
        self.wait_for_slot(endpoint, booking).await;
        let sent_at = Instant::now();
        let scale = self.config.time_scale;
        let (outcome, rate) = match call {
            Call::Post(body) => self.client.post(endpoint.path(), body, scale).await,
            Call::Get(path) => self.client.get(path, scale).await,
        };
        if let Outcome::Retry {
            status: Some(429), ..
        } = &outcome
        {
            self.config.metrics.rate_limited(endpoint.path());
        }
        let mut limiter = self.limiter(endpoint);
        limiter.observe_latency(sent_at.elapsed(), Instant::now());
        if let (Some(remaining), Some(reset)) = (rate.remaining, rate.reset) {
            limiter.observe(remaining, reset, Instant::now());
        }
        outcome
    }

    /// Waits until the endpoint has a free slot, then takes it. The slot is recorded at the
    /// moment of sending, not when it was first computed: a task that wakes late must not
    /// leave a gap in the log that lets the next requests crowd into one window.
    async fn wait_for_slot(&self, endpoint: Endpoint, mut booking: Option<Booking>) {
        let started = Instant::now();
        // Only a sleep is waiting on the limit: taking a free slot costs a lock, not a wait.
        let mut slept = false;
        loop {
            let now = Instant::now();
            let slot = {
                let mut limiter = self.limiter(endpoint);
                let slot = limiter.next_slot(now);
                if slot <= now {
                    match booking.as_mut() {
                        Some(booking) => {
                            limiter.record_booked(now);
                            booking.used = true;
                        }
                        None => limiter.record(now),
                    }
                }
                slot
            };
            if slot <= now {
                break;
            }
            slept = true;
            tokio::time::sleep_until(slot.into()).await;
        }
        if slept {
            let waited = started.elapsed();
            self.report.lock().expect("report lock").waited_on_limits += waited;
            self.config.metrics.waited_on_limit(endpoint.path(), waited);
        }
    }

    /// Exponential backoff with full jitter: up to 0.5 s, 1 s, 2 s, ... capped at a minute.
    fn backoff(&self, attempts: u32) -> Duration {
        let ceiling = Duration::from_millis(500)
            .saturating_mul(1 << attempts.min(7))
            .min(Duration::from_secs(60));
        ceiling
            .mul_f64(rand::random::<f64>().max(0.1))
            .div_f64(self.config.time_scale)
    }

    /// Backoff while an endpoint fails for everyone: with full jitter, up to as long as it has
    /// been failing (at least 0.5 s, at most a minute, scaled), so that retries thin out as an
    /// outage goes on.
    fn outage_backoff(&self, failing_for: Duration) -> Duration {
        let scale = self.config.time_scale;
        let ceiling = failing_for
            .mul_f64(scale)
            .clamp(Duration::from_millis(500), Duration::from_secs(60));
        ceiling
            .mul_f64(rand::random::<f64>().max(0.1))
            .div_f64(scale)
    }

    /// A request whose stored body is not JSON: a dead letter at once, never sent.
    fn bury_corrupt(&self, row: &Pending, error: &serde_json::Error) -> Result<(), SinkError> {
        let reason = format!("stored body is not JSON: {error}");
        self.bury(row, "corrupt", reason, json!({}))
    }

    /// Turns a request into a dead letter of `category`, and counts it.
    fn bury(
        &self,
        row: &Pending,
        category: &str,
        reason: String,
        details: Json,
    ) -> Result<(), SinkError> {
        // Klaviyo's text is redacted where it arrives (http.rs); this is the last stop before
        // the store, whatever a letter's text came from.
        let mut details = details;
        self.config.key.redact_json(&mut details);
        let letter = NewDeadLetter {
            mapping: Some(row.mapping.clone()),
            category: category.to_owned(),
            reason: self.config.key.redact(&reason),
            details,
        };
        self.store
            .lock()
            .expect("store lock")
            .dead_letter(row.id, &letter, now_ms())?;
        // The category only: the reason may quote what Klaviyo refused (`dead show` has it).
        tracing::warn!(
            request = row.id,
            mapping = row.mapping,
            endpoint = row.endpoint,
            category,
            "a request became a dead letter"
        );
        self.config
            .metrics
            .request_dead_lettered(&row.endpoint, &row.mapping, category);
        *self
            .report
            .lock()
            .expect("report lock")
            .dead_letters
            .entry(category.to_owned())
            .or_default() += 1;
        Ok(())
    }
}

/// A send that is worth trying again: why, Klaviyo's status if it answered, and how long it
/// asked us to wait.
#[derive(Debug, Clone, Copy)]
struct Failure<'a> {
    reason: &'a str,
    status: Option<u16>,
    after: Option<Duration>,
}

type Sent = (Vec<i64>, Result<Vec<i64>, SinkError>);

/// A slot booked on an endpoint's limiter ([`Limiter::book`]) for a request a lane starts;
/// given back if the request ends without being sent.
struct Booking {
    limiter: Arc<Mutex<Limiter>>,
    /// The request took its slot, which ended the booking.
    used: bool,
}

impl Drop for Booking {
    fn drop(&mut self) {
        if !self.used {
            self.limiter.lock().expect("limiter lock").unbook();
        }
    }
}

/// What [`Sink::paced`] sends: a body to the endpoint's own path, or a read of a path under it.
enum Call<'a> {
    Post(Bytes),
    Get(&'a str),
}

/// The rows a lane is sending, and what they hold. Kept up to date as rows start and end,
/// not gathered from the rows on every read of the store: with bulk jobs, thousands of rows are
/// in flight at once, and the lane reads up to 200 times a second.
#[derive(Default)]
struct InFlight {
    /// Each row, with the coalescing key it holds if any.
    rows: HashMap<i64, Option<(String, String)>>,
    /// The coalescing keys (mapping, key) the rows hold; one row at most holds each.
    keys: HashSet<(String, String)>,
}

/// The coalescing key a row holds while it is sent: its mapping and coalesce key.
fn coalescing_of(row: &Pending) -> Option<(String, String)> {
    row.coalesce_key.clone().map(|k| (row.mapping.clone(), k))
}

impl InFlight {
    fn insert(&mut self, row: &Pending) {
        let coalescing = coalescing_of(row);
        // The replaced entry's key is let go before this one's is taken: the same row inserted
        // again holds the same key, which must stay held.
        if let Some(replaced) = self.rows.insert(row.id, coalescing.clone()) {
            self.forget(replaced);
        }
        self.keys.extend(coalescing);
    }

    fn remove(&mut self, id: i64) {
        if let Some(held) = self.rows.remove(&id) {
            self.forget(held);
        }
    }

    fn forget(&mut self, coalescing: Option<(String, String)>) {
        if let Some(key) = coalescing {
            self.keys.remove(&key);
        }
    }

    fn contains(&self, id: i64) -> bool {
        self.rows.contains_key(&id)
    }

    fn holds(&self, coalescing: &(String, String)) -> bool {
        self.keys.contains(coalescing)
    }
}

/// Books a finished send task: its rows leave the in-flight set, and rows a bulk request was
/// refused for are sent one by one from now on.
fn settle(
    joined: Result<Sent, tokio::task::JoinError>,
    in_flight: &mut InFlight,
    single_only: &mut HashSet<i64>,
) -> Result<(), SinkError> {
    let (ids, result) = joined.expect("a send task does not panic");
    for id in &ids {
        in_flight.remove(*id);
    }
    single_only.extend(result?);
    Ok(())
}

fn describe(errors: &[ApiError]) -> String {
    errors
        .iter()
        .map(|e| match &e.pointer {
            Some(pointer) => format!("{} at {pointer}: {}", e.code, e.detail),
            None => format!("{}: {}", e.code, e.detail),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Drops `phone_number` from a profile body; false when there was none to drop.
fn remove_phone(body: &mut Json) -> bool {
    body.pointer_mut("/data/attributes")
        .and_then(Json::as_object_mut)
        .and_then(|a| a.remove("phone_number"))
        .is_some()
}

#[cfg(test)]
mod tests {
    use super::InFlight;
    use crate::klaviyo::Endpoint;
    use crate::store::Pending;

    fn row(id: i64, endpoint: &str, coalesce_key: Option<&str>) -> Pending {
        Pending {
            id,
            mapping: "profile".into(),
            endpoint: endpoint.into(),
            lane: "bulk".into(),
            body: String::new(),
            once_key: None,
            unique_id: None,
            waits_for: None,
            coalesce_key: coalesce_key.map(str::to_owned),
            version: None,
            attempts: 0,
            last_error: None,
            created_at: 0,
            delivery: ("m".into(), "d".into()),
        }
    }

    #[test]
    fn rows_in_flight_hold_their_keys_until_they_end() {
        let profiles = Endpoint::CreateOrUpdateProfile;
        let key = ("profile".to_owned(), "a@example.com".to_owned());
        let mut in_flight = InFlight::default();
        in_flight.insert(&row(1, profiles.path(), Some("a@example.com")));
        in_flight.insert(&row(2, profiles.path(), None));
        assert!(in_flight.contains(1) && in_flight.holds(&key));

        // Inserted again (a row resent while its first attempt is still held): still one, and
        // it still holds its key.
        in_flight.insert(&row(1, profiles.path(), Some("a@example.com")));
        assert!(in_flight.contains(1) && in_flight.holds(&key));
        in_flight.remove(1);
        assert!(!in_flight.contains(1) && !in_flight.holds(&key));
        in_flight.remove(1); // ending twice changes nothing
        assert!(in_flight.contains(2));
        in_flight.remove(2);
        assert!(!in_flight.contains(2));
    }
}
