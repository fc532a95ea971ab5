//! A local stand-in for Klaviyo's API: the five endpoints marketsync sends to, and the four a
//! reconciliation reads back through (`GET /api/metrics`, `GET /api/events`, `GET
//! /api/profiles`, `POST /api/metric-aggregates`; see `reads`), answered as Klaviyo documents,
//! on loopback.
//!
//! Why it exists: tests must never call the real Klaviyo, yet the sender has to be tested against
//! everything Klaviyo does to a client: validation errors with JSON pointers, upsert answers
//! (201 / 200 / 409), rate limits with `Retry-After`, asynchronous jobs, 5xx, dropped
//! connections. A test starts a [`StandIn`], points marketsync at [`StandIn::url`], runs, and
//! then asserts the exact effect with [`StandIn::accepted`] (what Klaviyo would now hold) and
//! [`StandIn::stats`] (how the client behaved: never over a limit, retries counted).
//!
//! What it must never do:
//! - **Be lenient where Klaviyo is strict.** Every body is checked against Klaviyo's own schemas
//!   (`schemas/klaviyo`, made stricter still: unknown keys are rejected), then against the rules
//!   the schemas cannot say (identifiers, E.164 phone numbers, counts, sizes, event times, the
//!   dedupe of events). Where the docs leave room, it takes the stricter reading: sliding
//!   rate-limit windows rather than fixed ones, decimal megabytes, the lower of two documented
//!   limits. A client that passes here may meet a more forgiving Klaviyo, never a stricter one.
//! - **Invent success.** A request that is rejected, throttled, failed or dropped has no effect.
//! - **Talk to anything but loopback.** It binds 127.0.0.1 only and calls nothing.
//! - **Hide what it did.** Everything accepted is recorded, duplicates left out as Klaviyo
//!   leaves them out, so a test can tell "sent twice" from "recorded twice". A process outside
//!   (`marketsync standin` under a benchmark) reads every event accepted, with the time it
//!   arrived, at `GET /standin/submissions`.
//!
//! Time can run faster than real time ([`Config::time_scale`]), so that minute windows and job
//! delays take a fraction of a second in tests; every number of seconds the stand-in reports
//! (`Retry-After`, `RateLimit-Reset`, the throttle detail) is in scaled seconds.
//!
//! Reading back is only worth testing if Klaviyo's data can differ from what was sent: a test
//! plants drift ([`StandIn::plant`], or `POST /standin/drift` from a script) that every read
//! then shows (see `drift`).
//!
//! Deliberate simplifications (each is marked where it is made): one account; events create or
//! update their profile, subscriptions do not; `meta.patch_identifiers` is accepted but not
//! modelled; a bulk event job is recorded as soon as it is accepted; what the read side shows
//! where the spec is silent (`event_properties`, consent, a metric's integration, aggregate
//! buckets) is inferred and listed in docs/standins.md.

mod checks;
mod consent;
mod drift;
mod endpoints;
mod errors;
mod faults;
mod filter;
mod limits;
pub mod marketplacer;
mod reads;
mod server;
mod store;

pub use consent::SuppressionReason;
pub use drift::{Drift, PlantError};
pub use faults::Faults;
pub use store::{
    Accepted, AcceptedEvent, BulkJob, EventSubmission, Flow, FlowStatus, Integration, Metric,
    Profile, Subscription,
};

use crate::klaviyo::Endpoint;
use server::{App, Listener};
use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The key [`Config::default`] accepts, with full scope.
pub const DEFAULT_API_KEY: &str = "pk_standin";

/// What a key may do: a read-only key gets 403 on every write, as a key without the write
/// scopes does at Klaviyo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Full,
    ReadOnly,
    /// Exactly these scopes (`profiles:read`, `events:write`, ...), as a Klaviyo key made with
    /// custom access has: a request needing one not listed gets 403 naming it.
    Granted(&'static [&'static str]),
}

impl Scope {
    /// Whether the key holds every scope in `needed`.
    pub fn allows(self, needed: &[&str]) -> bool {
        match self {
            Scope::Full => true,
            Scope::ReadOnly => needed.iter().all(|s| s.ends_with(":read")),
            Scope::Granted(granted) => needed.iter().all(|s| granted.contains(s)),
        }
    }
}

/// The read endpoints (see `reads`): what reconciliation reads Klaviyo back through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Read {
    /// `GET /api/profiles`.
    Profiles,
    /// `GET /api/events`.
    Events,
    /// `GET /api/metrics`.
    Metrics,
    /// `POST /api/metric-aggregates` (a query, so a read, though a POST).
    MetricAggregates,
}

impl Read {
    pub const ALL: [Read; 4] = [
        Read::Profiles,
        Read::Events,
        Read::Metrics,
        Read::MetricAggregates,
    ];

    pub fn method(self) -> &'static str {
        match self {
            Read::MetricAggregates => "POST",
            _ => "GET",
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Read::Profiles => "/api/profiles",
            Read::Events => "/api/events",
            Read::Metrics => "/api/metrics",
            Read::MetricAggregates => "/api/metric-aggregates",
        }
    }

    /// The scope the operation needs (its `x-klaviyo-scopes` in the spec).
    pub fn scope(self) -> &'static str {
        match self {
            Read::Profiles => "profiles:read",
            Read::Events => "events:read",
            Read::Metrics | Read::MetricAggregates => "metrics:read",
        }
    }
}

/// One endpoint's rate limits: at most `burst_per_second` requests in any second and
/// `steady_per_minute` in any minute (scaled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    pub burst_per_second: u32,
    pub steady_per_minute: u32,
}

impl Limit {
    /// Klaviyo's limits for the endpoint: the OpenAPI spec's `x-klaviyo-ratelimit` (in
    /// `schemas/klaviyo/index.json`), except where Klaviyo documents a lower figure.
    pub fn klaviyo(endpoint: Endpoint) -> Limit {
        let (burst_per_second, steady_per_minute) = match endpoint {
            Endpoint::CreateEvent => (350, 3500),
            // The 2026-07-15 spec says 750/m; the endpoint's reference pages (and the "L" tier
            // of the rate-limit guide) say 700/m. The lower one is the safe one to test against.
            Endpoint::CreateOrUpdateProfile => (75, 700),
            Endpoint::BulkSubscribeProfiles => (75, 750),
            Endpoint::BulkCreateEvents | Endpoint::BulkImportProfiles => (10, 150),
        };
        Limit {
            burst_per_second,
            steady_per_minute,
        }
    }

    /// Klaviyo's limits for a read endpoint: the spec's `x-klaviyo-ratelimit`, except where
    /// Klaviyo documents a lower figure.
    pub fn klaviyo_read(read: Read) -> Limit {
        let (burst_per_second, steady_per_minute) = match read {
            // The spec says 750/m, the docs 700/m (notes/klaviyo.md §2): the lower one.
            Read::Profiles => (75, 700),
            Read::Events => (350, 3500),
            Read::Metrics => (10, 150),
            Read::MetricAggregates => (3, 60),
        };
        Limit {
            burst_per_second,
            steady_per_minute,
        }
    }

    /// [`Limit::klaviyo`] for every endpoint.
    pub fn klaviyo_all() -> HashMap<Endpoint, Limit> {
        Endpoint::ALL
            .into_iter()
            .map(|endpoint| (endpoint, Limit::klaviyo(endpoint)))
            .collect()
    }
}

/// How a bulk import job's import errors say which profile they are about. Klaviyo's spec
/// (`ImportErrorResponseObjectResource`) gives each error a `source` whose `pointer` is
/// nullable and defaults to `/data`, and an `original_payload` object, also nullable; it does
/// not promise a pointer to the profile's place in the job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ImportErrors {
    /// `original_payload` is the profile's attributes as sent; `source.pointer` is the spec's
    /// default, `/data`.
    #[default]
    Payload,
    /// As [`ImportErrors::Payload`], with `source.pointer` at the profile's place in the job
    /// (`/data/attributes/profiles/data/N/...`).
    PayloadAndPointer,
    /// `original_payload` null and `source.pointer` `/data`: nothing says which profile, as the
    /// spec allows. Only the job's `failed_count` tells that some failed.
    Anonymous,
}

/// How a stand-in behaves.
#[derive(Debug, Clone)]
pub struct Config {
    /// The keys it accepts (`Authorization: Klaviyo-API-Key <key>`), each with its scope.
    pub api_keys: Vec<(String, Scope)>,
    /// Per endpoint; an endpoint left out gets [`Limit::klaviyo`].
    pub limits: HashMap<Endpoint, Limit>,
    /// Per read endpoint; one left out gets [`Limit::klaviyo_read`].
    pub read_limits: HashMap<Read, Limit>,
    /// How much faster than real time the stand-in's clock runs: 1.0 is real time, 60.0 makes a
    /// minute pass in a second. Must be above 0.
    pub time_scale: f64,
    /// Faults to inject; change them while running with [`StandIn::set_faults`].
    pub faults: Faults,
    /// How long (scaled) a profile bulk import job takes: `queued` for the first half,
    /// `processing` for the second, then `complete`, with its profiles imported.
    pub job_duration: Duration,
    /// What a bulk import job's import errors carry to find their profile.
    pub import_errors: ImportErrors,
}

impl Default for Config {
    /// [`DEFAULT_API_KEY`] with full scope, Klaviyo's limits, real time, no faults, 2-second jobs
    /// whose import errors carry their `original_payload` but no pointer into the job.
    fn default() -> Config {
        Config {
            api_keys: vec![(DEFAULT_API_KEY.to_string(), Scope::Full)],
            limits: Limit::klaviyo_all(),
            read_limits: HashMap::new(),
            time_scale: 1.0,
            faults: Faults::none(),
            job_duration: Duration::from_secs(2),
            import_errors: ImportErrors::default(),
        }
    }
}

/// What the stand-in saw, per endpoint (reads of bulk import jobs are not counted).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub endpoints: HashMap<Endpoint, EndpointStats>,
    /// The read endpoints: what a reconciliation's read budget spent.
    pub reads: HashMap<Read, EndpointStats>,
}

impl Stats {
    /// One endpoint's counts (all zero if it saw no request).
    pub fn endpoint(&self, endpoint: Endpoint) -> EndpointStats {
        self.endpoints.get(&endpoint).copied().unwrap_or_default()
    }

    /// One read endpoint's counts (all zero if it saw no request).
    pub fn read(&self, read: Read) -> EndpointStats {
        self.reads.get(&read).copied().unwrap_or_default()
    }
}

/// One endpoint's counts. Every request is counted once in `requests` and once in exactly one
/// of the outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointStats {
    pub requests: u64,
    /// Answered 2xx.
    pub accepted: u64,
    /// 429 from the rate limiter.
    pub throttled: u64,
    /// 429 injected by [`Faults::throttle_rate`].
    pub spurious_throttled: u64,
    /// 400.
    pub invalid: u64,
    /// 409.
    pub conflict: u64,
    /// 401.
    pub unauthenticated: u64,
    /// 403.
    pub forbidden: u64,
    /// 5xx (injected by [`Faults::error_5xx_rate`]).
    pub server_errors: u64,
    /// Connections closed without an answer ([`Faults::drop_rate`]).
    pub dropped: u64,
    /// Any other status (404, 413, 415).
    pub other: u64,
    /// The most requests that arrived in any one second, and in any one minute (scaled,
    /// sliding): every request counts, whatever its answer. A client that respects the limits
    /// keeps these at or under [`Limit`]'s figures.
    pub max_per_second: u32,
    pub max_per_minute: u32,
}

/// A running stand-in. Dropping it stops the server too; [`StandIn::shutdown`] also waits for it.
pub struct StandIn {
    app: Arc<App>,
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<()>>,
}

impl StandIn {
    /// Starts a stand-in on a free port of 127.0.0.1.
    pub async fn start(config: Config) -> io::Result<StandIn> {
        StandIn::start_on(config, 0).await
    }

    /// Starts a stand-in on 127.0.0.1:`port` (0 for a free one).
    pub async fn start_on(config: Config, port: u16) -> io::Result<StandIn> {
        if !(config.time_scale.is_finite() && config.time_scale > 0.0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("time_scale must be above 0, not {}", config.time_scale),
            ));
        }
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let app = Arc::new(App::new(config, url.clone()));
        let service =
            server::router(app.clone()).into_make_service_with_connect_info::<server::Connection>();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(Listener(listener), service)
                .with_graceful_shutdown(async {
                    // A send or a dropped sender: either way, stop.
                    let _ = stopped.await;
                })
                .await
        });
        Ok(StandIn {
            app,
            url,
            stop: Some(stop),
            task,
        })
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash: the base for `/api/...`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Replaces the faults, and restarts their RNG from the new seed.
    pub fn set_faults(&self, faults: Faults) {
        self.app.lock().faults = faults::FaultPlan::new(faults);
    }

    /// What it accepted so far (bulk import jobs that are due are run first).
    pub fn accepted(&self) -> Accepted {
        self.app.settled_store().store.accepted()
    }

    /// Suppresses an email address globally, now, as Klaviyo does when the shopper unsubscribes
    /// (`UNSUBSCRIBE`), a mail hard-bounces (`HARD_BOUNCE`) or marks spam (`SPAM_COMPLAINT`):
    /// what a test needs to make Klaviyo's consent differ from what was sent. Unlike
    /// [`Drift::Suppress`] the address needs no profile. A reason not in the spec's
    /// `EmailMarketingSuppression` enum is refused, and nothing changes.
    pub fn suppress(&self, email: &str, reason: &str) -> Result<(), PlantError> {
        let reason = SuppressionReason::parse(reason).ok_or_else(|| {
            PlantError::Invalid(format!(
                "{reason:?} is not a suppression reason Klaviyo reports"
            ))
        })?;
        self.app.lock().store.record_consent(
            consent::Subject::Email(email.to_owned()),
            chrono::Utc::now(),
            consent::Change::Suppressed(reason),
        );
        Ok(())
    }

    /// Makes what the stand-in holds differ from what was sent, as Klaviyo can come to differ
    /// (see [`Drift`]); gives the ids of what the plant created or changed. Test-only, but real:
    /// every read endpoint shows the drift. `POST /standin/drift` does the same over HTTP.
    pub fn plant(&self, drift: Drift) -> Result<Vec<String>, PlantError> {
        let mut inner = self.app.settled_store();
        drift::plant(&mut inner.store, drift)
    }

    /// What it saw so far.
    pub fn stats(&self) -> Stats {
        self.app.stats()
    }

    /// Stops accepting, lets answers under way finish (5 seconds at most), and stops.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

/// Runs a stand-in on 127.0.0.1:`port` until Ctrl-C: for demos (`marketsync standin --port N`).
/// Blocks; builds its own Tokio runtime, so call it from outside one.
pub fn serve_forever(config: Config, port: u16) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let keys = config.api_keys.len();
        let standin = StandIn::start_on(config, port).await?;
        eprintln!(
            "Klaviyo stand-in listening on {} ({keys} API key{}); Ctrl-C stops it",
            standin.url(),
            if keys == 1 { "" } else { "s" }
        );
        tokio::signal::ctrl_c().await?;
        standin.shutdown().await;
        Ok(())
    })
}
