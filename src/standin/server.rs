//! HTTP: the routes, the order of Klaviyo's checks, the faults, and the listener that can drop a
//! connection without answering.
//!
//! Every request goes through, in order: the fault draw (drop, 503, spurious 429), then
//! authentication (401), the `revision` header (400), the key's scope (403), the rate limit
//! (429), and only then the endpoint (415, 400, 404, 409, or success). This is the order of
//! Django REST Framework, which Klaviyo's error codes show it runs on: a request that fails
//! authentication takes no slot of the rate limit, one that fails validation does.

use super::endpoints::{self, Ctx};
use super::errors::{ApiError, Reply};
use super::faults::{Fault, FaultPlan};
use super::limits::{Clock, Limiter, Meter};
use super::reads;
use super::store::Store;
use super::{Config, EndpointStats, Limit, Read, Scope, Stats};
use crate::klaviyo::Endpoint;
use axum::Router;
use axum::body::Bytes;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Route {
    Post(Endpoint),
    GetJob,
    GetJobErrors,
    /// A read endpoint (see [`super::reads`]).
    Read(Read),
}

/// Klaviyo's limits for reading a bulk import job and its errors (not configurable).
const JOB_READ_LIMIT: Limit = Limit {
    burst_per_second: 10,
    steady_per_minute: 150,
};

/// The scopes a request needs (the operation's `x-klaviyo-scopes`).
fn scopes(route: Route) -> &'static [&'static str] {
    match route {
        Route::Post(Endpoint::CreateEvent | Endpoint::BulkCreateEvents) => &["events:write"],
        Route::Post(Endpoint::CreateOrUpdateProfile) => &["profiles:write"],
        Route::Post(Endpoint::BulkSubscribeProfiles) => {
            &["lists:write", "profiles:write", "subscriptions:write"]
        }
        Route::Post(Endpoint::BulkImportProfiles) => &["lists:write", "profiles:write"],
        Route::GetJob | Route::GetJobErrors => &["lists:read", "profiles:read"],
        Route::Read(Read::Profiles) => &["profiles:read"],
        Route::Read(Read::Events) => &["events:read"],
        Route::Read(Read::Metrics | Read::MetricAggregates) => &["metrics:read"],
    }
}

/// The server's state, shared by every request.
pub(crate) struct App {
    keys: Vec<(String, Scope)>,
    limits: HashMap<Endpoint, Limit>,
    read_limits: HashMap<Read, Limit>,
    pub(crate) clock: Clock,
    pub(crate) job_seconds: f64,
    import_errors: super::ImportErrors,
    pub(crate) base_url: String,
    inner: Mutex<Inner>,
}

/// What changes, behind one lock (never held across an await).
pub(crate) struct Inner {
    pub(crate) faults: FaultPlan,
    limiters: HashMap<Route, Limiter>,
    meters: HashMap<Route, Meter>,
    stats: HashMap<Route, EndpointStats>,
    pub(crate) store: Store,
}

/// What becomes of one request.
enum Fate {
    /// Close the connection without answering.
    Drop,
    /// Answer, after the delay if there is one.
    Answer(Reply, Option<Duration>),
}

/// A request as the pipeline reads it.
struct Incoming {
    headers: HeaderMap,
    body: Bytes,
    job_id: String,
    query: HashMap<String, String>,
}

impl App {
    pub(crate) fn new(config: Config, base_url: String) -> App {
        let job_seconds = config.job_duration.as_secs_f64();
        App {
            keys: config.api_keys,
            limits: config.limits,
            read_limits: config.read_limits,
            clock: Clock::new(config.time_scale),
            job_seconds,
            import_errors: config.import_errors,
            base_url,
            inner: Mutex::new(Inner {
                faults: FaultPlan::new(config.faults),
                limiters: HashMap::new(),
                meters: HashMap::new(),
                stats: HashMap::new(),
                store: Store::default(),
            }),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic under the lock leaves nothing half-done that matters to a test double.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The bulk jobs moved on to now, then what was accepted.
    pub(crate) fn settled_store(&self) -> MutexGuard<'_, Inner> {
        let mut inner = self.lock();
        endpoints::settle(&mut inner.store, self.clock.now(), self.job_seconds);
        inner
    }

    pub(crate) fn stats(&self) -> Stats {
        let inner = self.lock();
        let mut all = inner.stats.clone();
        for (route, meter) in &inner.meters {
            let stats = all.entry(*route).or_default();
            stats.max_per_second = meter.max_per_second;
            stats.max_per_minute = meter.max_per_minute;
        }
        let mut stats = Stats::default();
        for (route, counts) in all {
            match route {
                Route::Post(endpoint) => {
                    stats.endpoints.insert(endpoint, counts);
                }
                Route::Read(read) => {
                    stats.reads.insert(read, counts);
                }
                Route::GetJob | Route::GetJobErrors => {}
            }
        }
        stats
    }

    fn limit(&self, route: Route) -> Limit {
        match route {
            Route::Post(endpoint) => self
                .limits
                .get(&endpoint)
                .copied()
                .unwrap_or_else(|| Limit::klaviyo(endpoint)),
            Route::GetJob | Route::GetJobErrors => JOB_READ_LIMIT,
            Route::Read(read) => self
                .read_limits
                .get(&read)
                .copied()
                .unwrap_or_else(|| Limit::klaviyo_read(read)),
        }
    }

    fn scope(&self, headers: &HeaderMap) -> Option<Scope> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, key) = value.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("Klaviyo-API-Key") {
            return None;
        }
        let key = key.trim();
        self.keys
            .iter()
            .find(|(known, _)| known == key)
            .map(|(_, scope)| *scope)
    }

    /// Everything that happens to a request before its answer is sent.
    fn decide(&self, route: Route, request: &Incoming) -> Fate {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let now = self.clock.now();
        if matches!(route, Route::Post(_) | Route::Read(_)) {
            inner.meters.entry(route).or_default().arrive(now);
        }
        let (fault, delay) = inner.faults.draw(&request.body);
        let reply = match fault {
            Some(Fault::Drop) => {
                inner.tally(route, |s| s.dropped += 1);
                return Fate::Drop;
            }
            Some(Fault::Throttle) => {
                inner.tally(route, |s| s.spurious_throttled += 1);
                return Fate::Answer(Reply::throttled(1), delay);
            }
            Some(Fault::Unavailable) => Reply::error(ApiError::unavailable()),
            None => self.process(inner, route, request, now),
        };
        let mut reply = reply;
        if reply.status != StatusCode::TOO_MANY_REQUESTS && reply.rate.is_none() {
            let limit = self.limit(route);
            let limiter = inner
                .limiters
                .entry(route)
                .or_insert_with(|| Limiter::new(limit));
            reply.rate = Some(limiter.headers(now));
        }
        let status = reply.status;
        inner.tally(route, |s| match status.as_u16() {
            200..=299 => s.accepted += 1,
            400 => s.invalid += 1,
            401 => s.unauthenticated += 1,
            403 => s.forbidden += 1,
            409 => s.conflict += 1,
            429 => s.throttled += 1,
            500..=599 => s.server_errors += 1,
            _ => s.other += 1,
        });
        Fate::Answer(reply, delay)
    }

    /// Klaviyo's checks in Klaviyo's order, then the endpoint.
    fn process(&self, inner: &mut Inner, route: Route, request: &Incoming, now: f64) -> Reply {
        let Some(scope) = self.scope(&request.headers) else {
            return Reply::error(ApiError::not_authenticated());
        };
        if let Some(error) = revision_problem(&request.headers) {
            return Reply::error(error);
        }
        let needed = scopes(route);
        if !scope.allows(needed) {
            return Reply::error(ApiError::permission_denied(&needed.join(", ")));
        }
        let limit = self.limit(route);
        let limiter = inner
            .limiters
            .entry(route)
            .or_insert_with(|| Limiter::new(limit));
        let rate = match limiter.admit(now) {
            Ok(rate) => rate,
            Err(retry_after) => return Reply::throttled(retry_after),
        };
        endpoints::settle(&mut inner.store, now, self.job_seconds);
        let mut ctx = Ctx {
            store: &mut inner.store,
            now,
            base_url: &self.base_url,
            import_errors: self.import_errors,
        };
        let mut reply = match route {
            Route::Post(endpoint) => {
                let content_type = request
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok());
                endpoints::post(endpoint, content_type, &request.body, &mut ctx)
            }
            Route::GetJob => endpoints::get_job(&request.job_id, &mut ctx),
            Route::GetJobErrors => {
                endpoints::get_job_errors(&request.job_id, &request.query, &mut ctx)
            }
            Route::Read(Read::Profiles) => {
                reads::profiles::get(&request.query, ctx.store, ctx.base_url)
            }
            Route::Read(Read::Events) => {
                reads::events::get(&request.query, ctx.store, ctx.base_url)
            }
            Route::Read(Read::Metrics) => {
                reads::metrics::get(&request.query, ctx.store, ctx.base_url)
            }
            Route::Read(Read::MetricAggregates) => {
                let content_type = request
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok());
                reads::aggregates::post(
                    &request.query,
                    content_type,
                    &request.body,
                    ctx.store,
                    ctx.base_url,
                )
            }
        };
        reply.rate = Some(rate);
        reply
    }
}

impl Inner {
    fn tally(&mut self, route: Route, count: impl FnOnce(&mut EndpointStats)) {
        if matches!(route, Route::Post(_) | Route::Read(_)) {
            let stats = self.stats.entry(route).or_default();
            stats.requests += 1;
            count(stats);
        }
    }
}

/// `revision: YYYY-MM-DD[.suffix]` is required.
fn revision_problem(headers: &HeaderMap) -> Option<ApiError> {
    let Some(value) = headers.get("revision") else {
        return Some(ApiError::invalid_parameter(
            "revision",
            "The `revision` header is required (format: YYYY-MM-DD[.suffix]).",
        ));
    };
    let value = value.to_str().unwrap_or("");
    let (date, suffix) = value.split_once('.').unwrap_or((value, "x"));
    let date_ok = date.len() == 10 && chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").is_ok();
    (!date_ok || suffix.is_empty()).then(|| {
        ApiError::invalid_parameter(
            "revision",
            format!("Invalid revision {value:?}: expected YYYY-MM-DD[.suffix]."),
        )
    })
}

async fn handle(
    app: Arc<App>,
    connection: Connection,
    route: Route,
    request: Incoming,
) -> Response {
    match app.decide(route, &request) {
        Fate::Drop => {
            connection.drop_now();
            // Never written: the connection fails first.
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        Fate::Answer(reply, delay) => {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            reply.into_response()
        }
    }
}

/// The routes: every endpoint marketsync sends to (with or without a trailing slash), the bulk
/// import job and its errors, and the stand-in's own [`SUBMISSIONS_PATH`]; anything else is a
/// JSON:API 404 or 405.
pub(crate) fn router(app: Arc<App>) -> Router {
    let mut router = Router::new();
    for endpoint in Endpoint::ALL {
        let handler = move |State(app): State<Arc<App>>,
                            ConnectInfo(connection): ConnectInfo<Connection>,
                            headers: HeaderMap,
                            body: Bytes| {
            let request = Incoming {
                headers,
                body,
                job_id: String::new(),
                query: HashMap::new(),
            };
            handle(app, connection, Route::Post(endpoint), request)
        };
        router = router
            .route(endpoint.path(), post(handler))
            .route(&format!("{}/", endpoint.path()), post(handler));
    }
    let job = |State(app): State<Arc<App>>,
               ConnectInfo(connection): ConnectInfo<Connection>,
               Path(job_id): Path<String>,
               headers: HeaderMap| {
        let request = Incoming {
            headers,
            body: Bytes::new(),
            job_id,
            query: HashMap::new(),
        };
        handle(app, connection, Route::GetJob, request)
    };
    let job_errors = |State(app): State<Arc<App>>,
                      ConnectInfo(connection): ConnectInfo<Connection>,
                      Path(job_id): Path<String>,
                      Query(query): Query<HashMap<String, String>>,
                      headers: HeaderMap| {
        let request = Incoming {
            headers,
            body: Bytes::new(),
            job_id,
            query,
        };
        handle(app, connection, Route::GetJobErrors, request)
    };
    let read = |route: Route| {
        move |State(app): State<Arc<App>>,
              ConnectInfo(connection): ConnectInfo<Connection>,
              Query(query): Query<HashMap<String, String>>,
              headers: HeaderMap| {
            let request = Incoming {
                headers,
                body: Bytes::new(),
                job_id: String::new(),
                query,
            };
            handle(app, connection, route, request)
        }
    };
    let query = |route: Route| {
        move |State(app): State<Arc<App>>,
              ConnectInfo(connection): ConnectInfo<Connection>,
              Query(query): Query<HashMap<String, String>>,
              headers: HeaderMap,
              body: Bytes| {
            let request = Incoming {
                headers,
                body,
                job_id: String::new(),
                query,
            };
            handle(app, connection, route, request)
        }
    };
    for which in [Read::Profiles, Read::Events, Read::Metrics] {
        let path = which.path();
        router = router
            .route(path, get(read(Route::Read(which))))
            .route(&format!("{path}/"), get(read(Route::Read(which))));
    }
    let aggregates = Read::MetricAggregates.path();
    let jobs = Endpoint::BulkImportProfiles.path();
    router
        .route(aggregates, post(query(Route::Read(Read::MetricAggregates))))
        .route(
            &format!("{aggregates}/"),
            post(query(Route::Read(Read::MetricAggregates))),
        )
        .route(SUBMISSIONS_PATH, get(submissions))
        .route(DRIFT_PATH, post(plant))
        .route(&format!("{jobs}/{{id}}"), get(job))
        .route(&format!("{jobs}/{{id}}/"), get(job))
        .route(&format!("{jobs}/{{id}}/import-errors"), get(job_errors))
        .route(&format!("{jobs}/{{id}}/import-errors/"), get(job_errors))
        .fallback(|| async {
            Reply::error(ApiError::not_found(
                "No such endpoint in the Klaviyo stand-in.",
            ))
        })
        .method_not_allowed_fallback(|method: Method| async move {
            Reply::error(ApiError::method_not_allowed(method.as_str()))
        })
        // Bodies over Klaviyo's limits must reach the size check, to be answered as Klaviyo does.
        .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
        .with_state(app)
}

/// Every event accepted so far, duplicates included, as JSON lines: `metric`, `unique_id`,
/// `kept`, `request` and `accepted_at_ms` (Unix milliseconds, wall clock). Not Klaviyo's: it
/// lets a process outside the stand-in (a benchmark, a demo) see when each event arrived. Open
/// to any caller, like the rest of the stand-in it listens on loopback only; never limited.
pub(crate) const SUBMISSIONS_PATH: &str = "/standin/submissions";

async fn submissions(State(app): State<Arc<App>>) -> Response {
    let inner = app.lock();
    let mut lines = String::new();
    for submission in inner.store.submissions() {
        let accepted_at_ms = submission
            .accepted_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let line = serde_json::json!({
            "metric": submission.metric,
            "unique_id": submission.unique_id,
            "kept": submission.kept,
            "request": submission.request,
            "accepted_at_ms": accepted_at_ms,
        });
        lines.push_str(&line.to_string());
        lines.push('\n');
    }
    drop(inner);
    ([(header::CONTENT_TYPE, "application/x-ndjson")], lines).into_response()
}

/// Plants drift (`super::Drift` as JSON) and answers `{"kind", "ids"}`; 400 or 404 with
/// `{"error"}` when the plant cannot be made. Not Klaviyo's: the way a script makes the
/// stand-in's data differ from what was sent. Loopback only, never limited, no key.
pub(crate) const DRIFT_PATH: &str = "/standin/drift";

async fn plant(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let answer = |status: StatusCode, body: serde_json::Value| {
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    };
    let drift: super::Drift = match serde_json::from_slice(&body) {
        Ok(drift) => drift,
        Err(err) => {
            return answer(
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": format!("not a drift: {err}") }),
            );
        }
    };
    let kind = serde_json::to_value(&drift)
        .ok()
        .and_then(|v| v["kind"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut inner = app.settled_store();
    match super::drift::plant(&mut inner.store, drift) {
        Ok(ids) => answer(
            StatusCode::OK,
            serde_json::json!({ "kind": kind, "ids": ids }),
        ),
        Err(err) => {
            let status = if err.is_not_found() {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::BAD_REQUEST
            };
            answer(status, serde_json::json!({ "error": err.to_string() }))
        }
    }
}

/// Accepts connections that a handler can close without answering.
pub(crate) struct Listener(pub(crate) TcpListener);

impl axum::serve::Listener for Listener {
    type Io = DroppableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((stream, addr)) => {
                    let stream = DroppableStream {
                        stream,
                        dropped: Arc::default(),
                    };
                    return (stream, addr);
                }
                // Out of file descriptors and the like: wait and try again, as axum does.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// A TCP stream that fails every read and write once it is dropped, so hyper gives up on the
/// connection and closes it, with nothing written: the client sees a connection error.
pub(crate) struct DroppableStream {
    stream: TcpStream,
    dropped: Arc<AtomicBool>,
}

impl DroppableStream {
    fn check(&self) -> io::Result<()> {
        if self.dropped.load(Ordering::SeqCst) {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "dropped by the Klaviyo stand-in",
            ))
        } else {
            Ok(())
        }
    }
}

impl AsyncRead for DroppableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for DroppableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A handler's hold on its connection: enough to drop it.
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    dropped: Arc<AtomicBool>,
}

impl Connection {
    fn drop_now(&self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

impl Connected<IncomingStream<'_, Listener>> for Connection {
    fn connect_info(stream: IncomingStream<'_, Listener>) -> Self {
        Connection {
            dropped: stream.io().dropped.clone(),
        }
    }
}
