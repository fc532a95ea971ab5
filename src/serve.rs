//! The always-on webhook receiver behind `marketsync serve`.
//!
//! Marketplacer POSTs each event to `/webhooks/marketplacer`. A delivery is answered 200 only
//! once it is committed to the store (its inbox row, its requests and its dead letters, written
//! as a batch `run` writes them, by [`crate::sync::keep_delivery`]), and the sender is woken to
//! send it. Deliveries are mapped side by side, on a few threads of their own; their writes
//! share commits ([`crate::group_commit`]), so the disk's flush rate does not cap the webhooks
//! answered. The one sender is the [`Sink`] a batch run uses, its lanes running until shutdown.
//!
//! What this module must never do: answer 3xx or 4xx (any 4xx but 429 disables Marketplacer's
//! whole webhook, and a 429 lowers its sending rate for good, so our own overload is 503), and
//! answer 200 before the commit. Whatever Marketplacer cannot fix by sending again (a body that
//! is not JSON, a type no mapping reads, a body over the limit) is kept and answered 200; what
//! a later attempt may get through (a bad signature while a secret is being rotated, a busy
//! store, shutdown) is answered 503 with `Retry-After` and nothing kept.
//!
//! Each answered webhook is one log event (`tracing`) with structured fields, so an operator
//! can count outcomes and follow a delivery by its idempotency key. A log line is read by more
//! people and kept longer than the state file, so it never carries a secret, a body (not even
//! its first bytes) or a mapping's messages (they quote emails and phones): those stay in the
//! store, behind `marketsync dead show` and `warnings list`.

use crate::customer;
use crate::engine::Engine;
use crate::group_commit::{GroupCommit, Work};
use crate::metrics::{Metrics, WebhookOutcome};
use crate::page::{self, FiringAlert};
use crate::sink::{Sink, SinkError, now_ms};
use crate::source::webhook::{self, SIGNATURE_HEADER, Secrets, TOKEN_HEADER};
use crate::spec::Lane;
use crate::store::Store;
use crate::sync::{self, IntakeReport};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{any, get};
use http_body_util::BodyExt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tracing::{error, info, warn};

/// The path Marketplacer posts to.
pub const WEBHOOK_PATH: &str = "/webhooks/marketplacer";

/// Limits of the receiver.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// A body larger than this is not read into the store: a dead letter keeps its headers,
    /// its size and its first KiB, and it is answered 200 (sending it again cannot help).
    pub body_limit: usize,
    /// Longest a webhook may take, body read and commit included, before it is answered 503.
    /// Well inside Marketplacer's 30 s.
    pub deadline: Duration,
    /// Webhooks handled at once; one more is answered 503.
    pub max_in_flight: usize,
    /// Threads that parse and map webhooks; the others in flight wait for one. As many as
    /// there are cores: mapping is CPU work.
    pub mapping_threads: usize,
    /// Threads the sender runs on, apart from those that answer webhooks (see [`Threads`]).
    /// One: the sender mostly waits for Klaviyo, and its store work is serial anyway.
    pub sending_threads: usize,
    /// The `Retry-After` of every 503, in seconds.
    pub retry_after_secs: u64,
    /// Longest the sender waits, at shutdown, for the Klaviyo calls it has in flight; those
    /// still going are then dropped (they stay queued and are sent again later, and Klaviyo
    /// deduplicates by `unique_id`).
    pub sender_grace: Duration,
    /// Longest a client may take to send a request's headers (on a kept-alive connection:
    /// from the previous answer) before it is disconnected. Without it a client that sends
    /// nothing holds a connection for ever.
    pub header_timeout: Duration,
    /// How often a refused API key is logged again while it lasts: an error said once, hours
    /// ago, is easily missed while webhooks keep being answered 200.
    pub refusal_reminder: Duration,
}

impl Default for ServeConfig {
    fn default() -> ServeConfig {
        ServeConfig {
            body_limit: 16 * 1024 * 1024,
            deadline: Duration::from_secs(10),
            max_in_flight: 64,
            mapping_threads: std::thread::available_parallelism().map_or(2, usize::from),
            sending_threads: 1,
            retry_after_secs: 60,
            sender_grace: Duration::from_secs(15),
            header_timeout: Duration::from_secs(5),
            refusal_reminder: Duration::from_secs(60),
        }
    }
}

impl ServeConfig {
    /// Longest a shutdown takes once it is asked for: in-flight webhooks (each bounded by the
    /// deadline, plus a second), then the sender's in-flight calls.
    pub fn shutdown_bound(&self) -> Duration {
        self.deadline + Duration::from_secs(1) + self.sender_grace
    }
}

/// How webhooks were answered since start, by outcome.
#[derive(Debug, Default)]
pub struct Counters {
    /// New deliveries committed (dead letters and skipped types included).
    pub accepted: AtomicU64,
    pub duplicate: AtomicU64,
    /// Unreadable, refused by a mapping, or over the size limit: kept as dead letters.
    pub dead_lettered: AtomicU64,
    pub too_large: AtomicU64,
    pub bad_signature: AtomicU64,
    /// The store failed, the deadline passed, or too many were in flight.
    pub unavailable: AtomicU64,
    /// Of those, the store failed or the deadline passed: what the intake alert watches.
    pub intake_failed: AtomicU64,
    pub shutting_down: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// How a webhook was answered: the `outcome` of its log event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Duplicate,
    /// Kept, but as a dead letter: unreadable, or refused by a mapping.
    DeadLettered,
    /// Over the size limit: kept as a dead letter with its headers and first KiB.
    TooLarge,
    BadSignature,
    /// The store failed, the deadline passed, too many were in flight, or not a webhook.
    Unavailable(Unavailable),
    ShuttingDown,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::TooLarge => "too_large",
            Outcome::BadSignature => "bad_signature",
            Outcome::Unavailable(_) => "unavailable",
            Outcome::ShuttingDown => "shutting_down",
        }
    }

    /// The series `/metrics` counts it under: finer than the log's outcome, so that an alert
    /// can tell a store failure from a burst.
    pub fn metric(self) -> WebhookOutcome {
        match self {
            Outcome::Accepted => WebhookOutcome::Accepted,
            Outcome::Duplicate => WebhookOutcome::Duplicate,
            Outcome::DeadLettered => WebhookOutcome::DeadLettered,
            Outcome::TooLarge => WebhookOutcome::TooLarge,
            Outcome::BadSignature => WebhookOutcome::BadSignature,
            Outcome::ShuttingDown => WebhookOutcome::ShuttingDown,
            Outcome::Unavailable(why) => match why {
                Unavailable::Store => WebhookOutcome::StoreUnavailable,
                Unavailable::Deadline => WebhookOutcome::Deadline,
                Unavailable::Overloaded => WebhookOutcome::Overloaded,
                Unavailable::WrongPath => WebhookOutcome::WrongPath,
                Unavailable::BodyNotRead => WebhookOutcome::BodyNotRead,
            },
        }
    }
}

/// Why a webhook was answered 503 other than for its signature or a shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    Store,
    Deadline,
    Overloaded,
    /// Another path, or a method other than POST.
    WrongPath,
    BodyNotRead,
}

/// What a response's log event says beyond its status, carried in its extensions from where
/// the answer is decided to where it is logged.
#[derive(Debug, Clone)]
struct Answered {
    outcome: Outcome,
    /// Why it was not accepted as is; never the body nor a mapping's message.
    reason: Option<String>,
    /// The store failed: logged as an error, not a warning.
    store_failed: bool,
}

/// What [`Receiver::take`] learns of a webhook before it is answered, for its log event; kept
/// outside it so that a webhook cut short by the deadline is still logged with its size.
#[derive(Debug, Default)]
struct Seen {
    size: u64,
    /// The records' `__typename`s, when the body could be read.
    delivery_type: Option<String>,
}

fn with_answer(mut response: Response, answered: Answered) -> Response {
    response.extensions_mut().insert(answered);
    response
}

/// A 200 of `outcome`, for its log event.
fn answered_200(outcome: Outcome, body: &'static str, reason: Option<String>) -> Response {
    let answered = Answered {
        outcome,
        reason,
        store_failed: false,
    };
    with_answer((StatusCode::OK, body).into_response(), answered)
}

/// The log event of one answered webhook. Header values are visible ASCII (or left out), so a
/// client cannot break a log line with them.
fn log_answer(headers: &HeaderMap, response: &Response, seen: &Seen, took: Duration) {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let answered = response.extensions().get::<Answered>();
    let outcome = answered.map_or("unavailable", |a| a.outcome.as_str());
    let reason = answered.and_then(|a| a.reason.as_deref());
    let status = response.status().as_u16();
    let marketplace = header("Marketplacer-Vertical");
    let idempotency_key = header("Idempotency-Key");
    let sequence = header("Marketplacer-Sequence");
    let delivery_type = seen.delivery_type.as_deref();
    let size = seen.size;
    let duration_ms = took.as_millis() as u64;
    macro_rules! answer_at {
        ($level:expr) => {
            tracing::event!(
                $level,
                outcome,
                status,
                marketplace,
                idempotency_key,
                sequence,
                delivery_type,
                size,
                duration_ms,
                reason,
                "webhook answered"
            )
        };
    }
    match answered {
        Some(a) if a.store_failed => answer_at!(tracing::Level::ERROR),
        Some(Answered {
            outcome: Outcome::Accepted | Outcome::Duplicate,
            ..
        }) => answer_at!(tracing::Level::INFO),
        _ => answer_at!(tracing::Level::WARN),
    }
}

/// What one webhook's writes left in the store: the delivery's summary (`None` for a body
/// over the limit).
struct Kept {
    summary: Option<IntakeReport>,
}

/// A fixed few threads of their own, on a runtime that is not the one answering webhooks.
///
/// Mapping: each thread that maps keeps caches of its own (the phone library's compiled
/// regexes, the allocator's pages): on tokio's blocking pool, which grows a thread for each
/// webhook in flight, 64 in flight made 74 threads, and `serve` grew to 119 MB in a minute at
/// 500 webhooks a second, against 54 MB, flat, with two.
///
/// Sending: the sender reads and writes the store and builds bulk jobs between its awaits,
/// some milliseconds at a time. On the runtime that answers webhooks that held up every
/// webhook queued behind it on the same worker: answers' p50 at 2,000 a second was 12.9 ms,
/// and 7.6 to 10 ms with the sender kept off that runtime's workers (docs/serve.md).
struct Threads {
    /// Taken when dropped: a runtime cannot be dropped inside another one's tasks.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Threads {
    fn start(name: &str, threads: usize) -> Threads {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name(name)
            .enable_all()
            .build()
            .expect("a runtime of our own starts");
        Threads {
            runtime: Some(runtime),
        }
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime
            .as_ref()
            .expect("running until dropped")
            .handle()
    }

    /// Runs `work` on one of these threads once one is free; `Err` if it panicked.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        self.handle().spawn(async move { work() }).await
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The receiver's shared state: one engine, one store and its writer, and the sender to wake.
pub struct Receiver {
    engine: Arc<Engine>,
    store: Arc<Mutex<Store>>,
    writer: GroupCommit<Kept>,
    secrets: Secrets,
    sink: Option<Arc<Sink>>,
    config: ServeConfig,
    draining: AtomicBool,
    in_flight: Semaphore,
    mapping: Threads,
    pub counters: Counters,
    /// The sender's metrics (a fresh set without one), where webhooks are counted too.
    metrics: Arc<Metrics>,
    /// The built-in alerts, when `alerts:` is configured: what the status page shows firing.
    alerts: std::sync::OnceLock<Arc<crate::alerts::Alerts>>,
}

impl Receiver {
    /// `sink` is woken after each commit; `None` leaves the work to the sender's poll.
    pub fn new(
        engine: Arc<Engine>,
        store: Arc<Mutex<Store>>,
        secrets: Secrets,
        sink: Option<Arc<Sink>>,
        config: ServeConfig,
    ) -> Arc<Receiver> {
        let metrics = sink
            .as_ref()
            .map_or_else(Arc::default, |sink| Arc::clone(sink.metrics()));
        if let Ok(status) = store.lock().expect("store lock").status(now_ms()) {
            // "Last done" series start from the store, not from zero: a restart must not look
            // like hours without a webhook.
            if let Some(at) = status.last_delivery {
                metrics.webhook_accepted_at(at);
            }
            for (endpoint, at) in &status.last_success {
                metrics.succeeded(endpoint, *at);
            }
        }
        Arc::new(Receiver {
            metrics,
            alerts: std::sync::OnceLock::new(),
            engine,
            writer: GroupCommit::start(Arc::clone(&store)),
            store,
            secrets,
            sink,
            in_flight: Semaphore::new(config.max_in_flight.max(1)),
            mapping: Threads::start("marketsync-map", config.mapping_threads),
            config,
            draining: AtomicBool::new(false),
            counters: Counters::default(),
        })
    }

    /// Commits of webhooks' writes since start: fewer than the webhooks kept when they arrive
    /// together.
    pub fn commits(&self) -> u64 {
        self.writer.commits()
    }

    /// Webhooks read, mapped and waiting for the next commit.
    pub fn waiting_to_commit(&self) -> usize {
        self.writer.waiting()
    }

    /// The status page shows what these built-in alerts have firing.
    pub fn show_alerts(&self, alerts: Arc<crate::alerts::Alerts>) {
        let _ = self.alerts.set(alerts);
    }

    /// The alerts firing now, for the status page: the built-in alerts' when configured, else
    /// the one condition the receiver knows first-hand: Klaviyo refused the API key.
    pub fn firing_alerts(&self) -> Vec<FiringAlert> {
        if let Some(alerts) = self.alerts.get() {
            return alerts
                .firing()
                .into_iter()
                .map(|firing| FiringAlert {
                    name: firing.alert.name().to_owned(),
                    since: firing.since,
                    message: firing.message,
                })
                .collect();
        }
        let Some(sink) = &self.sink else {
            return Vec::new();
        };
        sink.refused_at()
            .map(|since| FiringAlert {
                name: "klaviyo-key-refused".to_owned(),
                since,
                message: "Klaviyo refused the API key, so nothing is being sent. Webhooks are \
                          still received and kept. Ask whoever manages the Klaviyo account for a \
                          private key with write access to events, profiles and subscriptions, \
                          set it as KLAVIYO_API_KEY and restart marketsync serve."
                    .to_owned(),
            })
            .into_iter()
            .collect()
    }

    /// Counts an answered webhook in `/metrics`, by its outcome.
    fn count(&self, response: &Response, took: Duration) {
        let outcome = response
            .extensions()
            .get::<Answered>()
            .map_or(WebhookOutcome::StoreUnavailable, |a| a.outcome.metric());
        self.metrics.webhook(outcome, took);
    }

    /// From now on webhooks and `/readyz` are answered 503.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// A 503 of `outcome` (`unavailable`, `bad_signature` or `shutting_down`), counted.
    fn unavailable(&self, outcome: Outcome, why: &str) -> Response {
        let counter = match outcome {
            Outcome::BadSignature => &self.counters.bad_signature,
            Outcome::ShuttingDown => &self.counters.shutting_down,
            _ => &self.counters.unavailable,
        };
        let answered = Answered {
            outcome,
            reason: Some(why.to_owned()),
            store_failed: false,
        };
        self.answer_503(counter, why, answered)
    }

    /// A 503 because the store did not take the write; `problem` is logged, not answered.
    fn store_failed(&self, problem: String) -> Response {
        Counters::add(&self.counters.intake_failed);
        let answered = Answered {
            outcome: Outcome::Unavailable(Unavailable::Store),
            reason: Some(problem),
            store_failed: true,
        };
        self.answer_503(&self.counters.unavailable, "store unavailable", answered)
    }

    fn answer_503(&self, counter: &AtomicU64, why: &str, answered: Answered) -> Response {
        Counters::add(counter);
        let mut response = (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response();
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(self.config.retry_after_secs),
        );
        with_answer(response, answered)
    }

    /// One webhook: read, verified, committed; see the module docs for the answers.
    async fn take(&self, headers: HeaderMap, body: Body, seen: &mut Seen) -> Response {
        let mut verifier = self.secrets.verifier();
        let limit = self.config.body_limit;
        let mut kept: Vec<u8> = Vec::new();
        let mut size: u64 = 0;
        let mut body = body;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                // The sender went away or broke the body: it sends it again.
                return self.unavailable(
                    Outcome::Unavailable(Unavailable::BodyNotRead),
                    "body not read",
                );
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            verifier.update(&data);
            size += data.len() as u64;
            seen.size = size;
            if kept.len() <= limit {
                kept.extend_from_slice(&data);
            }
            if size > limit as u64 {
                // Only the first KiB of an oversize body is kept.
                kept.truncate(1024);
            }
        }
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let kept_headers = webhook::kept_headers(header);
        let sequence = header("Marketplacer-Sequence").map(str::to_owned);
        let presented = |name: &str| headers.get(name).map(|v| v.as_bytes());
        if let Err(refusal) = verifier.finish(presented(SIGNATURE_HEADER), presented(TOKEN_HEADER))
        {
            // Counted and logged without the body; nothing is kept. A 503 rather than a 4xx:
            // a mis-rotated secret must not get the webhook disabled.
            return self.unavailable(Outcome::BadSignature, refusal.as_str());
        }
        let origin = match &sequence {
            Some(sequence) => format!("webhook seq {sequence}"),
            None => "webhook".to_owned(),
        };
        let engine = Arc::clone(&self.engine);
        let oversize = size > limit as u64;
        let work: Work<Kept> = if oversize {
            let text = webhook::oversize_capture(kept_headers, size, &kept);
            let reason = format!("body of {size} bytes is over the limit of {limit} bytes");
            Box::new(move |store| {
                store.record_unreadable(&origin, &text, &reason, now_ms())?;
                Ok(Kept { summary: None })
            })
        } else {
            // Parsing and mapping are CPU work: done on a mapping thread, beside other
            // webhooks; only the writes wait for the store's one writer.
            let prepared = self
                .mapping
                .run(move || {
                    let (text, not_utf8_at) = crate::source::text_of(kept);
                    sync::prepare_webhook(&engine, &origin, kept_headers, &text, not_utf8_at)
                })
                .await;
            let Ok(prepared) = prepared else {
                return self.store_failed("not kept: intake failed".to_owned());
            };
            Box::new(move |store| {
                // Its report quotes mappings' messages, which may hold an email or a phone:
                // the store keeps them; the log has only the summary's categories.
                let summary = sync::keep_delivery(store, prepared, &mut std::io::sink())?;
                Ok(Kept {
                    summary: Some(summary),
                })
            })
        };
        // The deadline around this call still answers in time if the store is stuck (the commit
        // may then land, and the resend is a duplicate).
        let stored = self.writer.commit(work).await;
        match stored.map(|kept| kept.summary) {
            Ok(None) => {
                Counters::add(&self.counters.too_large);
                Counters::add(&self.counters.dead_lettered);
                self.metrics.webhook_accepted_at(now_ms());
                self.metrics.dead_lettered("", "unreadable");
                let reason = format!("body over the limit of {limit} bytes");
                answered_200(
                    Outcome::TooLarge,
                    "kept as a dead letter: over the size limit\n",
                    Some(reason),
                )
            }
            Ok(Some(summary)) => {
                let types: Vec<&str> = summary.types.keys().map(String::as_str).collect();
                seen.delivery_type = (!types.is_empty()).then(|| types.join(","));
                if summary.repeated > 0 && summary.repeated == summary.records {
                    Counters::add(&self.counters.duplicate);
                    return answered_200(Outcome::Duplicate, "duplicate: already received\n", None);
                }
                Counters::add(&self.counters.accepted);
                self.metrics.webhook_accepted_at(now_ms());
                for ((mapping, category), count) in &summary.rejected_by_mapping {
                    for _ in 0..*count {
                        self.metrics.dead_lettered(mapping, category);
                    }
                }
                if !summary.rejected.is_empty() {
                    Counters::add(&self.counters.dead_lettered);
                }
                if summary.queued > 0
                    && let Some(sink) = &self.sink
                {
                    sink.wake();
                }
                if summary.rejected.is_empty() {
                    return answered_200(Outcome::Accepted, "received\n", None);
                }
                // The categories only: a mapping's message may quote an email or a phone.
                let categories: Vec<&str> = summary.rejected.keys().map(String::as_str).collect();
                let reason = format!("dead letter: {}", categories.join(", "));
                answered_200(Outcome::DeadLettered, "received\n", Some(reason))
            }
            Err(err) => self.store_failed(format!("not kept: {err}")),
        }
    }
}

async fn webhook_handler(
    State(receiver): State<Arc<Receiver>>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let mut seen = Seen::default();
    let response = answer(&receiver, method, headers.clone(), body, &mut seen).await;
    receiver.count(&response, started.elapsed());
    log_answer(&headers, &response, &seen, started.elapsed());
    response
}

async fn answer(
    receiver: &Receiver,
    method: Method,
    headers: HeaderMap,
    body: Body,
    seen: &mut Seen,
) -> Response {
    if method != Method::POST {
        // Not a 405: any 4xx could disable the webhook if Marketplacer ever met it.
        return receiver.unavailable(
            Outcome::Unavailable(Unavailable::WrongPath),
            "POST webhooks here",
        );
    }
    if receiver.draining.load(Ordering::SeqCst) {
        return receiver.unavailable(Outcome::ShuttingDown, "shutting down");
    }
    let Ok(_permit) = receiver.in_flight.try_acquire() else {
        return receiver.unavailable(
            Outcome::Unavailable(Unavailable::Overloaded),
            "too many in flight",
        );
    };
    let deadline = receiver.config.deadline;
    match tokio::time::timeout(deadline, receiver.take(headers, body, seen)).await {
        Ok(response) => response,
        Err(_) => {
            Counters::add(&receiver.counters.intake_failed);
            receiver.unavailable(
                Outcome::Unavailable(Unavailable::Deadline),
                "deadline reached",
            )
        }
    }
}

async fn elsewhere(
    State(receiver): State<Arc<Receiver>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    // A misconfigured webhook URL must not get the webhook disabled: 503, and it retries.
    let started = Instant::now();
    let response = receiver.unavailable(
        Outcome::Unavailable(Unavailable::WrongPath),
        &format!("no such path: {}", uri.path()),
    );
    receiver.count(&response, started.elapsed());
    log_answer(&headers, &response, &Seen::default(), started.elapsed());
    response
}

/// The Prometheus exposition. The queue's depth and age, and the open read-back exceptions,
/// are read from the store now, so they are what is really there (0 when none).
async fn metrics(State(receiver): State<Arc<Receiver>>) -> Response {
    let store = Arc::clone(&receiver.store);
    let status = tokio::task::spawn_blocking(move || {
        let store = store.lock().expect("store lock");
        let status = store.status(now_ms())?;
        let last = store.last_read_backs(1)?.into_iter().next();
        Ok::<_, crate::store::StoreError>((status, last))
    })
    .await;
    if let Ok(Ok((status, last))) = status {
        receiver
            .metrics
            .read_back(&status.read_back_open, last.as_ref());
        for lane in [Lane::Transaction, Lane::Profile] {
            let queued = status.lanes.get(lane.as_str()).copied().unwrap_or_default();
            receiver.metrics.queue(
                lane.as_str(),
                queued.depth as u64,
                Duration::from_millis(queued.oldest_age.max(0) as u64),
            );
        }
    }
    (
        [(header::CONTENT_TYPE, Metrics::CONTENT_TYPE)],
        receiver.metrics.render(),
    )
        .into_response()
}

async fn livez() -> &'static str {
    "ok\n"
}

async fn readyz(State(receiver): State<Arc<Receiver>>) -> Response {
    let not_ready =
        |why: &str| (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response();
    if receiver.draining.load(Ordering::SeqCst) {
        return not_ready("shutting down");
    }
    let store = Arc::clone(&receiver.store);
    let check =
        tokio::task::spawn_blocking(move || store.lock().expect("store lock").check_writable());
    // Ready means webhooks are taken without loss, which a refused key does not change: the
    // queue is kept for when the key is fixed. The body says that sending has stopped.
    let sending = match receiver.sink.as_ref().and_then(|sink| sink.refused()) {
        Some(SinkError::KeyRefused { status, .. }) => format!(
            "; sending stopped: Klaviyo refused the API key ({status}), webhooks are still \
             kept; fix the key and restart"
        ),
        _ => String::new(),
    };
    match tokio::time::timeout(Duration::from_secs(2), check).await {
        Ok(Ok(Ok(()))) => (StatusCode::OK, format!("ready{sending}\n")).into_response(),
        Ok(Ok(Err(err))) => not_ready(&format!("store: {err}")),
        _ => not_ready("store did not answer"),
    }
}

/// The status page: the store's figures and the alerts firing, as one HTML page.
async fn status_page(State(receiver): State<Arc<Receiver>>) -> Response {
    let alerts = receiver.firing_alerts();
    let store = Arc::clone(&receiver.store);
    let read = tokio::task::spawn_blocking(move || {
        page::Snapshot::read(&store.lock().expect("store lock"), now_ms(), alerts)
    });
    match tokio::time::timeout(Duration::from_secs(5), read).await {
        Ok(Ok(Ok(snapshot))) => Html(page::render(&snapshot)).into_response(),
        Ok(Ok(Err(err))) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("store: {err}\n")).into_response()
        }
        _ => (StatusCode::SERVICE_UNAVAILABLE, "store did not answer\n").into_response(),
    }
}

/// The weekly-review page of what reading Klaviyo back found (`marketsync exceptions report
/// --html`): the latest read-back, every exception open now, the revenue charts and the trend.
/// It names people and orders, so it is on the admin address only, like `/customer`.
async fn report_page(State(receiver): State<Arc<Receiver>>) -> Response {
    let store = Arc::clone(&receiver.store);
    let read = tokio::task::spawn_blocking(move || {
        crate::reconcile::report::ReadBackReport::latest(
            &store.lock().expect("store lock"),
            now_ms(),
        )
    });
    match tokio::time::timeout(Duration::from_secs(5), read).await {
        Ok(Ok(Ok(Some(report)))) => Html(report.html()).into_response(),
        Ok(Ok(Ok(None))) => (
            StatusCode::NOT_FOUND,
            Html(
                "<!doctype html><title>No report yet</title><p>No reconciliation has read \
                 Klaviyo back yet: the report appears after the first one.</p>",
            ),
        )
            .into_response(),
        Ok(Ok(Err(err))) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("store: {err}\n")).into_response()
        }
        _ => (StatusCode::SERVICE_UNAVAILABLE, "store did not answer\n").into_response(),
    }
}

/// A customer's history (`?q=` an email or phone number), for customer service: the same
/// view as `marketsync customer`, on the admin address only. Nothing about the person is
/// logged; a query that cannot be read says why on the page.
async fn customer_page(
    State(receiver): State<Arc<Receiver>>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    let asked = query
        .get("q")
        .map(|q| q.trim().to_owned())
        .unwrap_or_default();
    if asked.is_empty() {
        return Html(page::render_customer("", None, None)).into_response();
    }
    let lookup = match customer::Lookup::parse(&asked, &receiver.engine.settings().phone_region) {
        Ok(lookup) => lookup,
        Err(err) => {
            let page = page::render_customer(&asked, None, Some(&err.to_string()));
            return (StatusCode::BAD_REQUEST, Html(page)).into_response();
        }
    };
    let (store, engine) = (Arc::clone(&receiver.store), Arc::clone(&receiver.engine));
    let read = tokio::task::spawn_blocking(move || {
        customer::read(&store.lock().expect("store lock"), &engine, &lookup)
    });
    match tokio::time::timeout(Duration::from_secs(5), read).await {
        Ok(Ok(Ok(view))) => {
            let status = if view.found {
                StatusCode::OK
            } else {
                StatusCode::NOT_FOUND
            };
            (
                status,
                Html(page::render_customer(&asked, Some(&view), None)),
            )
                .into_response()
        }
        Ok(Ok(Err(err))) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("store: {err}\n")).into_response()
        }
        _ => (StatusCode::SERVICE_UNAVAILABLE, "store did not answer\n").into_response(),
    }
}

/// The alerts firing, as JSON (`{"alerts": [{"name", "since" (unix ms), "message"}]}`), for
/// `marketsync status --admin`.
async fn alerts(State(receiver): State<Arc<Receiver>>) -> Response {
    axum::Json(serde_json::json!({ "alerts": receiver.firing_alerts() })).into_response()
}

/// The webhook route; every other path is answered 503, never 404.
pub fn router(receiver: Arc<Receiver>) -> Router {
    Router::new()
        .route(WEBHOOK_PATH, any(webhook_handler))
        .fallback(elsewhere)
        .with_state(receiver)
}

/// `/livez` (the process answers), `/readyz` (not draining, and the store takes a write), the
/// status page at `/`, a customer's history at `/customer`, the read-back report at `/report`
/// and the alerts firing at `/alerts`.
pub fn admin_router(receiver: Arc<Receiver>) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/customer", get(customer_page))
        .route("/report", get(report_page))
        .route("/alerts", get(alerts))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(receiver)
}

/// Serves `app` on `listener` until `stop` resolves, then lets each connection finish the
/// request it is answering. This is `axum::serve` plus a header-read timeout, which it does not
/// offer: a client slower than `header_timeout` to send its headers is disconnected (no answer:
/// there is no request to answer).
async fn serve_http(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let connections = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let mut stop = std::pin::pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // The client gave up before it was accepted.
                Err(err) if matches!(
                    err.kind(),
                    std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
                ) => continue,
                // Out of file descriptors, most likely: wait for some to close (as axum does).
                Err(err) => {
                    error!("cannot accept a connection: {err}; trying again in 1s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let watched = connections.watch(connection);
        tokio::spawn(async move {
            // A connection that ends badly (a timeout, a reset) is the client's business.
            let _ = watched.await;
        });
    }
    drop(listener);
    connections.shutdown().await;
    Ok(())
}

/// Logs a refused API key again every `every` while it lasts (the sender logged it once when it
/// happened): webhooks are still answered 200, so nothing else would show that nothing is sent.
async fn remind_of_refusal(sink: Arc<Sink>, every: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        ticks.tick().await;
        if let Some(SinkError::KeyRefused { status, .. }) = sink.refused() {
            error!(
                status,
                "sending is still stopped: Klaviyo refused the API key; webhooks are still \
                 received and kept, nothing is sent until the key is fixed and serve restarted"
            );
        }
    }
}

/// Serves webhooks on `listener` (and health on `admin`, or on `listener` when `None`) and
/// sends the queue until `shutdown` resolves. Then: webhooks and `/readyz` answer 503, webhooks
/// in flight finish (bounded by the deadline), the sender finishes its calls in flight
/// (bounded by `sender_grace`), and this returns; within [`ServeConfig::shutdown_bound`].
/// Returns the sender's error if it stopped on its own (a refused key), after the shutdown.
pub async fn serve(
    receiver: Arc<Receiver>,
    sink: Arc<Sink>,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<Result<(), SinkError>> {
    let config = receiver.config.clone();
    // A state file from before the person index is indexed in the background, a batch per
    // turn of the store's lock, so webhooks wait at most one batch.
    let indexing = Arc::clone(&receiver.store);
    tokio::task::spawn_blocking(move || {
        loop {
            let done = customer::backfill(&mut indexing.lock().expect("store lock"), 2_000);
            match done {
                Ok(true) => break,
                Ok(false) => {}
                Err(err) => {
                    warn!("indexing the state file for customer lookups stopped: {err}");
                    break;
                }
            }
        }
    });
    // The lanes run until wound down: more work may come at any time.
    let never_done = Arc::new(AtomicBool::new(false));
    let sending = Threads::start("marketsync-send", config.sending_threads);
    let lanes: Vec<_> = [Lane::Transaction, Lane::Profile]
        .into_iter()
        .map(|lane| {
            let sink = Arc::clone(&sink);
            let never_done = Arc::clone(&never_done);
            sending.handle().spawn(async move {
                let result = sink.drain_lane(lane, never_done).await;
                // A refused key was logged by the sender when it happened, and is again while
                // it lasts (`remind_of_refusal`); each lane saying so too would add nothing.
                if let Err(err) = &result
                    && !matches!(err, SinkError::KeyRefused { .. })
                {
                    error!(
                        lane = lane.as_str(),
                        "sending stopped: {err}; webhooks are still received and kept"
                    );
                }
                result
            })
        })
        .collect();
    let (draining_tx, draining_rx) = watch::channel(false);
    let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
    let wait = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let header_timeout = config.header_timeout;
    let main_app = match admin {
        Some(admin) => {
            let app = admin_router(Arc::clone(&receiver));
            let stopped = wait(admin_stop_rx.clone());
            tokio::spawn(serve_http(admin, app, header_timeout, stopped));
            router(Arc::clone(&receiver))
        }
        None => admin_router(Arc::clone(&receiver)).merge(router(Arc::clone(&receiver))),
    };
    let main = tokio::spawn(serve_http(
        listener,
        main_app,
        header_timeout,
        wait(draining_rx.clone()),
    ));
    let reminder = tokio::spawn(remind_of_refusal(
        Arc::clone(&sink),
        config.refusal_reminder,
    ));
    shutdown.await;
    reminder.abort();
    info!(
        within_s = config.shutdown_bound().as_secs(),
        "shutting down: new webhooks and /readyz answered 503"
    );
    receiver.drain();
    let _ = draining_tx.send(true);
    // Webhooks in flight finish within the deadline; a connection still open after that
    // (a client sending nothing) is dropped.
    let grace = config.deadline + Duration::from_secs(1);
    match tokio::time::timeout(grace, main).await {
        Ok(Ok(result)) => result?,
        Ok(Err(_)) => {}
        Err(_) => warn!(
            after_s = grace.as_secs(),
            "connections still open were dropped"
        ),
    }
    info!(
        within_s = config.sender_grace.as_secs(),
        "webhooks finished; the sender finishes its Klaviyo calls in flight"
    );
    sink.wind_down();
    let mut outcome = Ok(());
    let deadline = tokio::time::Instant::now() + config.sender_grace;
    for lane in lanes {
        let abort = lane.abort_handle();
        match tokio::time::timeout_at(deadline, lane).await {
            Ok(Ok(Err(err))) if outcome.is_ok() => outcome = Err(err),
            Ok(_) => {}
            Err(_) => {
                abort.abort();
                warn!("a Klaviyo call still in flight was dropped; it stays queued");
            }
        }
    }
    let _ = admin_stop_tx.send(true);
    if let Some(refused) = sink.refused() {
        return Ok(Err(refused));
    }
    Ok(outcome)
}
