//! HTTP: the one route, and what happens to a request before it is executed.
//!
//! In order: the request is counted (every request, whatever its answer, takes a slot of the
//! per-IP window, as a limiter in front of an application counts); a scripted or drawn fault
//! replaces the answer (429 or 503); the per-IP limit (429); the key (401); the per-key limit
//! (429); then the query runs. A request without a valid key takes no slot of a key's window.

use super::execute::Ctx;
use super::request::{self, Answer};
use super::{
    Config, Faults, Injected, KlaviyoSettings, LIMIT_WINDOW, Site, StartError, Stats, WebhookState,
    find_webhook,
};
use crate::standin::limits::{Clock, Window};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

/// The header Marketplacer reads the key from (S11).
const KEY_HEADER: &str = "MARKETPLACER-API-KEY";

/// The stand-in's own read-out of its stats, for a process outside it (a benchmark, a demo):
/// not Marketplacer's, loopback only like the rest, never limited.
pub(crate) const STATS_PATH: &str = "/standin/stats";

pub(crate) struct App {
    data: super::Data,
    keys: Vec<String>,
    key_limit: u32,
    ip_limit: u32,
    window: f64,
    clock: Clock,
    site: Site,
    inner: Mutex<Inner>,
}

struct Inner {
    faults: Faults,
    /// Changed while running, as an operator switches the integration on in the admin portal.
    klaviyo: KlaviyoSettings,
    rng: StdRng,
    webhooks: Vec<WebhookState>,
    ip_windows: HashMap<IpAddr, Window>,
    key_windows: HashMap<String, Window>,
    meter: Window,
    stats: Stats,
}

/// What becomes of a request before it is executed.
enum Gate {
    Refuse(Response),
    /// Run it, with what the run needs read under the lock.
    Run {
        webhooks: Vec<WebhookState>,
        klaviyo: KlaviyoSettings,
        failing: std::collections::BTreeMap<String, String>,
    },
}

fn plain(status: StatusCode, text: &str, retry_after: Option<u64>) -> Response {
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "text/plain")],
        text.to_owned(),
    )
        .into_response();
    if let Some(seconds) = retry_after {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            seconds.to_string().parse().expect("digits"),
        );
    }
    response
}

fn graphql(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

impl App {
    pub(crate) fn new(config: Config, webhooks: Vec<WebhookState>) -> App {
        let window = LIMIT_WINDOW.as_secs_f64();
        App {
            data: config.data,
            keys: config.api_keys,
            key_limit: config.key_limit,
            ip_limit: config.ip_limit,
            window,
            clock: Clock::new(config.time_scale),
            site: config.site,
            inner: Mutex::new(Inner {
                klaviyo: config.klaviyo,
                rng: StdRng::seed_from_u64(config.faults.seed),
                faults: config.faults,
                webhooks,
                ip_windows: HashMap::new(),
                key_windows: HashMap::new(),
                meter: Window::new(window),
                stats: Stats::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic under the lock leaves nothing half-done that matters to a test double.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    pub(crate) fn set_faults(&self, faults: Faults) {
        let mut inner = self.lock();
        inner.rng = StdRng::seed_from_u64(faults.seed);
        inner.faults = faults;
    }

    pub(crate) fn set_webhook_enabled(&self, name: &str, enabled: bool) -> Result<(), StartError> {
        let mut inner = self.lock();
        find_webhook(&mut inner.webhooks, name)?.enabled = enabled;
        Ok(())
    }

    pub(crate) fn set_klaviyo_settings(&self, settings: KlaviyoSettings) {
        self.lock().klaviyo = settings;
    }

    /// The key a request carries: `MARKETPLACER-API-KEY`, else `Authorization: Bearer`.
    fn key<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        if let Some(value) = headers.get(KEY_HEADER) {
            return value.to_str().ok().map(str::trim);
        }
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, key) = value.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("Bearer").then(|| key.trim())
    }

    fn gate(&self, ip: IpAddr, headers: &HeaderMap) -> Gate {
        let now = self.clock.now();
        let mut inner = self.lock();
        let inner = &mut *inner;
        inner.stats.requests += 1;
        inner.meter.push(now);
        let in_window = inner.meter.count(now) as u32;
        inner.stats.max_per_window = inner.stats.max_per_window.max(in_window);
        let retry_after = inner.faults.retry_after;
        let injected_after = retry_after.then_some(inner.faults.injected_retry_after.max(1));
        // Always two draws, so a seed gives the same faults whatever the rates.
        let [throttle, unavailable]: [f64; 2] = std::array::from_fn(|_| inner.rng.random());
        let fault = if inner.faults.next.is_empty() {
            if unavailable < inner.faults.unavailable_rate {
                Some(Injected::Unavailable)
            } else if throttle < inner.faults.throttle_rate {
                Some(Injected::Throttle)
            } else {
                None
            }
        } else {
            Some(inner.faults.next.remove(0))
        };
        match fault {
            Some(Injected::Throttle) => {
                inner.stats.throttled += 1;
                return Gate::Refuse(plain(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Retry later\n",
                    injected_after,
                ));
            }
            Some(Injected::Unavailable) => {
                inner.stats.unavailable += 1;
                return Gate::Refuse(plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Service Unavailable\n",
                    injected_after,
                ));
            }
            None => {}
        }
        let window = self.window;
        let ip_window = inner
            .ip_windows
            .entry(ip)
            .or_insert_with(|| Window::new(window));
        if let Err(wait) = admit(ip_window, self.ip_limit, now) {
            inner.stats.throttled += 1;
            return Gate::Refuse(plain(
                StatusCode::TOO_MANY_REQUESTS,
                "Retry later\n",
                retry_after.then_some(wait),
            ));
        }
        let Some(key) = self
            .key(headers)
            .filter(|key| self.keys.iter().any(|known| known == key))
        else {
            inner.stats.unauthenticated += 1;
            let message = match self.key(headers) {
                None | Some("") => {
                    "No API key: send it in the MARKETPLACER-API-KEY header (or Authorization: Bearer)"
                }
                Some(_) => "The API key is not valid for this marketplace",
            };
            return Gate::Refuse(graphql(
                StatusCode::UNAUTHORIZED,
                &serde_json::json!({"errors": [{"message": message}]}),
            ));
        };
        let key_window = inner
            .key_windows
            .entry(key.to_owned())
            .or_insert_with(|| Window::new(window));
        if let Err(wait) = admit(key_window, self.key_limit, now) {
            inner.stats.throttled += 1;
            return Gate::Refuse(plain(
                StatusCode::TOO_MANY_REQUESTS,
                "Retry later\n",
                retry_after.then_some(wait),
            ));
        }
        Gate::Run {
            webhooks: inner.webhooks.clone(),
            klaviyo: inner.klaviyo.clone(),
            failing: inner.faults.failing_fields.clone(),
        }
    }

    fn record(&self, answer: &Answer) {
        let mut inner = self.lock();
        let stats = &mut inner.stats;
        if answer.bad_request {
            stats.bad_requests += 1;
            return;
        }
        stats.answered += 1;
        if answer.asked.errors {
            stats.with_errors += 1;
        }
        for field in &answer.asked.root_fields {
            *stats.root_fields.entry(field.clone()).or_default() += 1;
        }
        stats.queries.push(answer.asked.clone());
    }
}

/// Takes a slot of a sliding window, or says in how many whole (scaled) seconds one frees.
fn admit(window: &mut Window, limit: u32, now: f64) -> Result<(), u64> {
    if window.count(now) >= limit as usize {
        return Err((window.frees_in(now).ceil() as u64).max(1));
    }
    window.push(now);
    Ok(())
}

async fn graphql_handler(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (webhooks, klaviyo, failing) = match app.gate(peer.ip(), &headers) {
        Gate::Refuse(response) => return response,
        Gate::Run {
            webhooks,
            klaviyo,
            failing,
        } => (webhooks, klaviyo, failing),
    };
    let run = {
        let app = Arc::clone(&app);
        move || {
            let ctx = Ctx {
                data: &app.data,
                site: &app.site,
                klaviyo: &klaviyo,
                webhooks: &webhooks,
                failing: &failing,
            };
            request::answer(&ctx, &body)
        }
    };
    // A 500-node page is a few milliseconds of work: off the async threads all the same.
    let answer = match tokio::task::spawn_blocking(run).await {
        Ok(answer) => answer,
        Err(_) => {
            return graphql(
                StatusCode::INTERNAL_SERVER_ERROR,
                &serde_json::json!({"errors": [{"message": "the stand-in failed answering this query"}]}),
            );
        }
    };
    app.record(&answer);
    let status = if answer.bad_request {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    graphql(status, &answer.body)
}

async fn stats_handler(State(app): State<Arc<App>>) -> Response {
    let stats = app.stats();
    graphql(
        StatusCode::OK,
        &serde_json::to_value(&stats).unwrap_or_default(),
    )
}

pub(crate) fn router(app: Arc<App>) -> Router {
    let elsewhere = |app: Arc<App>, status: StatusCode| {
        let mut inner = app.lock();
        inner.stats.requests += 1;
        inner.stats.other += 1;
        plain(
            status,
            "The Marketplacer stand-in answers POST /graphql\n",
            None,
        )
    };
    let (not_found, not_allowed) = (Arc::clone(&app), Arc::clone(&app));
    Router::new()
        .route("/graphql", post(graphql_handler))
        .route(STATS_PATH, get(stats_handler))
        .fallback(move || async move { elsewhere(not_found, StatusCode::NOT_FOUND) })
        .method_not_allowed_fallback(move || async move {
            elsewhere(not_allowed, StatusCode::METHOD_NOT_ALLOWED)
        })
        .layer(DefaultBodyLimit::max(8 * 1024 * 1024))
        .with_state(app)
}
