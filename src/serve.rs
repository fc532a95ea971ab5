//! The always-on webhook receiver behind `marketsync serve`.
//!
//! Marketplacer POSTs each event to `/webhooks/marketplacer`. A delivery is answered 200 only
//! once it is committed to the store (its inbox row, its requests and its dead letters, written
//! as a batch `run` writes them, by [`crate::sync::keep_delivery`]), and the sender is woken to
//! send it. Deliveries are mapped side by side; their writes share commits
//! ([`crate::group_commit`]), so the disk's flush rate does not cap the webhooks answered.
//! The one sender is the [`Sink`] a batch run uses, its lanes running until shutdown.
//!
//! What this module must never do: answer 3xx or 4xx (any 4xx but 429 disables Marketplacer's
//! whole webhook, and a 429 lowers its sending rate for good, so our own overload is 503), and
//! answer 200 before the commit. Whatever Marketplacer cannot fix by sending again (a body that
//! is not JSON, a type no mapping reads, a body over the limit) is kept and answered 200; what
//! a later attempt may get through (a bad signature while a secret is being rotated, a busy
//! store, shutdown) is answered 503 with `Retry-After` and nothing kept. The body of a refused
//! request is never logged.

use crate::engine::Engine;
use crate::group_commit::{GroupCommit, Work};
use crate::sink::{Sink, SinkError, now_ms};
use crate::source::webhook::{self, SIGNATURE_HEADER, Secrets};
use crate::spec::Lane;
use crate::store::Store;
use crate::sync::{self, IntakeReport};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use http_body_util::BodyExt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

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
    /// The `Retry-After` of every 503, in seconds.
    pub retry_after_secs: u64,
    /// Longest the sender waits, at shutdown, for the Klaviyo calls it has in flight; those
    /// still going are then dropped (they stay queued and are sent again later, and Klaviyo
    /// deduplicates by `unique_id`).
    pub sender_grace: Duration,
}

impl Default for ServeConfig {
    fn default() -> ServeConfig {
        ServeConfig {
            body_limit: 16 * 1024 * 1024,
            deadline: Duration::from_secs(10),
            max_in_flight: 64,
            retry_after_secs: 60,
            sender_grace: Duration::from_secs(15),
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
    pub shutting_down: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What one webhook's writes left in the store: the delivery's summary (`None` for a body
/// over the limit), and its report lines to log.
struct Kept {
    summary: Option<IntakeReport>,
    report: Vec<u8>,
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
    pub counters: Counters,
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
        Arc::new(Receiver {
            engine,
            writer: GroupCommit::start(Arc::clone(&store)),
            store,
            secrets,
            sink,
            in_flight: Semaphore::new(config.max_in_flight.max(1)),
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

    /// From now on webhooks and `/readyz` are answered 503.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    fn unavailable(&self, counter: &AtomicU64, why: &str) -> Response {
        Counters::add(counter);
        let mut response = (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response();
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(self.config.retry_after_secs),
        );
        response
    }

    /// One webhook: read, verified, committed; see the module docs for the answers.
    async fn take(&self, headers: HeaderMap, body: Body) -> Response {
        let mut verifier = self.secrets.verifier();
        let limit = self.config.body_limit;
        let mut kept: Vec<u8> = Vec::new();
        let mut size: u64 = 0;
        let mut body = body;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                // The sender went away or broke the body: it sends it again.
                return self.unavailable(&self.counters.unavailable, "body not read");
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            verifier.update(&data);
            size += data.len() as u64;
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
        if let Err(refusal) = verifier.finish(headers.get(SIGNATURE_HEADER).map(|v| v.as_bytes())) {
            // Counted and logged without the body; nothing is kept. A 503 rather than a 4xx:
            // a mis-rotated secret must not get the webhook disabled.
            eprintln!(
                "serve: webhook refused: {} (vertical {}, idempotency key {}, {size} bytes); answered 503",
                refusal.as_str(),
                header("Marketplacer-Vertical").unwrap_or("-"),
                header("Idempotency-Key").unwrap_or("-"),
            );
            return self.unavailable(&self.counters.bad_signature, refusal.as_str());
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
            eprintln!("serve: {origin}: rejected: {reason}");
            Box::new(move |store| {
                store.record_unreadable(&origin, &text, &reason, now_ms())?;
                Ok(Kept {
                    summary: None,
                    report: Vec::new(),
                })
            })
        } else {
            // Parsing and mapping are CPU work: done on a blocking thread, beside other
            // webhooks; only the writes wait for the store's one writer.
            let prepared = tokio::task::spawn_blocking(move || {
                let (text, not_utf8_at) = match String::from_utf8(kept) {
                    Ok(text) => (text, None),
                    Err(err) => {
                        let at = err.utf8_error().valid_up_to() + 1;
                        (
                            String::from_utf8_lossy(err.as_bytes()).into_owned(),
                            Some(at),
                        )
                    }
                };
                let capture = webhook::capture(kept_headers, &text);
                sync::prepare_delivery(&engine, &origin, &capture, not_utf8_at)
            })
            .await;
            let Ok(prepared) = prepared else {
                eprintln!("serve: webhook not kept: intake failed; answered 503");
                return self.unavailable(&self.counters.unavailable, "store unavailable");
            };
            Box::new(move |store| {
                let mut report = Vec::new();
                let summary = sync::keep_delivery(store, prepared, &mut report)?;
                Ok(Kept {
                    summary: Some(summary),
                    report,
                })
            })
        };
        // The deadline around this call still answers in time if the store is stuck (the commit
        // may then land, and the resend is a duplicate).
        let stored = self.writer.commit(work).await;
        if let Ok(Kept { report, .. }) = &stored
            && !report.is_empty()
        {
            eprint!("serve: {}", String::from_utf8_lossy(report));
        }
        match stored.map(|kept| kept.summary) {
            Ok(None) => {
                Counters::add(&self.counters.too_large);
                Counters::add(&self.counters.dead_lettered);
                (
                    StatusCode::OK,
                    "kept as a dead letter: over the size limit\n",
                )
                    .into_response()
            }
            Ok(Some(summary)) => {
                if summary.repeated > 0 && summary.repeated == summary.records {
                    Counters::add(&self.counters.duplicate);
                    return (StatusCode::OK, "duplicate: already received\n").into_response();
                }
                Counters::add(&self.counters.accepted);
                if !summary.rejected.is_empty() {
                    Counters::add(&self.counters.dead_lettered);
                }
                if summary.queued > 0
                    && let Some(sink) = &self.sink
                {
                    sink.wake();
                }
                (StatusCode::OK, "received\n").into_response()
            }
            Err(err) => {
                eprintln!("serve: webhook not kept: {err}; answered 503");
                self.unavailable(&self.counters.unavailable, "store unavailable")
            }
        }
    }
}

async fn webhook_handler(
    State(receiver): State<Arc<Receiver>>,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if method != Method::POST {
        // Not a 405: any 4xx could disable the webhook if Marketplacer ever met it.
        return receiver.unavailable(&receiver.counters.unavailable, "POST webhooks here");
    }
    if receiver.draining.load(Ordering::SeqCst) {
        return receiver.unavailable(&receiver.counters.shutting_down, "shutting down");
    }
    let Ok(_permit) = receiver.in_flight.try_acquire() else {
        return receiver.unavailable(&receiver.counters.unavailable, "too many in flight");
    };
    match tokio::time::timeout(receiver.config.deadline, receiver.take(headers, body)).await {
        Ok(response) => response,
        Err(_) => {
            eprintln!("serve: webhook not kept: deadline reached; answered 503");
            receiver.unavailable(&receiver.counters.unavailable, "deadline reached")
        }
    }
}

async fn elsewhere(State(receiver): State<Arc<Receiver>>) -> Response {
    // A misconfigured webhook URL must not get the webhook disabled: 503, and it retries.
    receiver.unavailable(&receiver.counters.unavailable, "no such path")
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
    match tokio::time::timeout(Duration::from_secs(2), check).await {
        Ok(Ok(Ok(()))) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Ok(Err(err))) => not_ready(&format!("store: {err}")),
        _ => not_ready("store did not answer"),
    }
}

/// The webhook route; every other path is answered 503, never 404.
pub fn router(receiver: Arc<Receiver>) -> Router {
    Router::new()
        .route(WEBHOOK_PATH, any(webhook_handler))
        .fallback(elsewhere)
        .with_state(receiver)
}

/// `/livez` (the process answers) and `/readyz` (not draining, and the store takes a write).
pub fn admin_router(receiver: Arc<Receiver>) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(receiver)
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
    // The lanes run until wound down: more work may come at any time.
    let never_done = Arc::new(AtomicBool::new(false));
    let lanes: Vec<_> = [Lane::Transaction, Lane::Profile]
        .into_iter()
        .map(|lane| {
            let sink = Arc::clone(&sink);
            let never_done = Arc::clone(&never_done);
            tokio::spawn(async move {
                let result = sink.drain_lane(lane, never_done).await;
                if let Err(err) = &result {
                    eprintln!(
                        "serve: sending stopped: {err}; webhooks are still received and kept"
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
    let main_app = match admin {
        Some(admin) => {
            let app = admin_router(Arc::clone(&receiver));
            let stopped = wait(admin_stop_rx.clone());
            tokio::spawn(async move {
                axum::serve(admin, app)
                    .with_graceful_shutdown(stopped)
                    .await
            });
            router(Arc::clone(&receiver))
        }
        None => admin_router(Arc::clone(&receiver)).merge(router(Arc::clone(&receiver))),
    };
    let main = tokio::spawn({
        let stopped = wait(draining_rx.clone());
        async move {
            axum::serve(listener, main_app)
                .with_graceful_shutdown(stopped)
                .await
        }
    });
    shutdown.await;
    eprintln!(
        "serve: shutting down (within {}s): new webhooks answered 503",
        config.shutdown_bound().as_secs()
    );
    receiver.drain();
    let _ = draining_tx.send(true);
    // Webhooks in flight finish within the deadline; a connection still open after that
    // (a client sending nothing) is dropped.
    let grace = config.deadline + Duration::from_secs(1);
    match tokio::time::timeout(grace, main).await {
        Ok(Ok(result)) => result?,
        Ok(Err(_)) => {}
        Err(_) => eprintln!(
            "serve: connections still open after {}s dropped",
            grace.as_secs()
        ),
    }
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
                eprintln!("serve: a Klaviyo call still in flight was dropped; it stays queued");
            }
        }
    }
    let _ = admin_stop_tx.send(true);
    if let Some(refused) = sink.refused() {
        return Ok(Err(refused));
    }
    Ok(outcome)
}
