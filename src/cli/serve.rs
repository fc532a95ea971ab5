//! `marketsync serve`: receive Marketplacer webhooks and send them on, until stopped.
//!
//! Unlike the batch commands, whose stderr is read by a person at the end of a run, serve's
//! stderr goes to a log pipeline for as long as it runs: every line it writes, from the first
//! (which mappings) to the last (the exit), is a `tracing` event, human or JSON, so that a JSON
//! pipeline never meets a line it cannot parse.

use super::run::{SinkArgs, try_sink_setup};
use super::{
    EXIT_BAD_MAPPINGS, EXIT_IO, EXIT_KEY_REFUSED, EXIT_OK, EXIT_USAGE, MappingArgs, StateArgs,
};
use marketsync::alerts::{Alerts, Facts, Notifier};
use marketsync::reconcile::impact::Tier;
use marketsync::reconcile::schedule::Scheduled;
use marketsync::reconcile::{Ask, ReadBackConfig, Reconciler, Report};
use marketsync::serve::{self, Receiver, ServeConfig};
use marketsync::sink::{Sink, SinkError, now_ms};
use marketsync::source::webhook::Secrets;
use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{error, info, warn};

/// The variable holding the webhook secret.
const SECRET_ENV: &str = "MARKETPLACER_WEBHOOK_SECRET";
/// The variable holding the previous secret, accepted too during a rotation.
const PREVIOUS_SECRET_ENV: &str = "MARKETPLACER_WEBHOOK_SECRET_PREVIOUS";
/// The variable holding the token a seller's webhook carries (it cannot be signed).
const TOKEN_ENV: &str = "MARKETPLACER_WEBHOOK_TOKEN";
/// The previous token, accepted too during a rotation.
const PREVIOUS_TOKEN_ENV: &str = "MARKETPLACER_WEBHOOK_TOKEN_PREVIOUS";
/// The variable holding which events are logged, as `RUST_LOG` does (`info` when unset).
const LOG_FILTER_ENV: &str = "MARKETSYNC_LOG";

/// How log events are written on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// One line per event, for a person: time, level, message, then `field=value`s.
    Human,
    /// One JSON object per line, its fields at the top level, for a log pipeline.
    Json,
}

/// Receive Marketplacer webhooks over HTTP and send them to Klaviyo, until stopped.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  KLAVIYO_API_KEY=pk_... MARKETPLACER_WEBHOOK_SECRET=... marketsync serve --state /var/lib/marketsync/state.db
  marketsync serve --client acme --listen 0.0.0.0:8080 --admin-listen 127.0.0.1:9090

Marketplacer posts to POST /webhooks/marketplacer. A delivery is answered 200 once it and its
Klaviyo requests are committed to the state database, then sent (the same store and sender as
`run`). A repeat (same marketplace and envelope id, or Idempotency-Key) is answered 200 and
queues nothing. A body that is not JSON, a query that failed, a type no mapping reads, a mapping
that refuses it, or a body over --max-body is answered 200 and kept as a dead letter or skipped,
as `run` does. A missing or wrong signature while a secret is set, a store that does not take
the write, --deadline reached, more than --max-in-flight at once, or shutting down: 503 with
Retry-After, nothing kept. Never 3xx or 4xx: Marketplacer disables a webhook on any 4xx but 429.

Health: GET /livez (the process answers) and GET /readyz (200 when the store takes a write; 503
while shutting down); the status page for people, GET / (queues, lag, dead letters, exceptions,
alerts firing, read-back exceptions by tier), the weekly read-back report, GET /report, a
customer's history, GET /customer?q=EMAIL, and the alerts as JSON, GET /alerts (read by `status
--admin`): on --admin-listen, else on --listen. Keep that address private (localhost or an
internal network): the report and a customer's history name people and orders; it is for the
team, not the world.

A client that has not sent a request's headers within --header-timeout is disconnected.

Klaviyo refusing the API key (401/403) stops sending but not receiving: webhooks are still
answered 200 and kept, /readyz stays 200 and its body says sending stopped, and the refusal is
logged as an error when it happens and again every minute; at shutdown serve exits 5.

SIGTERM or SIGINT: /readyz and new webhooks answer 503, webhooks in flight finish (at most
--deadline), the sender finishes its Klaviyo calls in flight (at most 15 s; what is unfinished
stays queued), and the process exits 0: within --deadline + 16 s in all.

Environment (read, never printed):
  KLAVIYO_API_KEY (or the variable a client's `klaviyo_api_key_env` names)  Klaviyo private key
  KLAVIYO_BASE_URL                       Klaviyo's base URL (as --klaviyo-url)
  MARKETPLACER_WEBHOOK_SECRET            the webhook's HMAC secret; unset: webhooks are not checked
  MARKETPLACER_WEBHOOK_SECRET_PREVIOUS   the previous secret, also accepted during a rotation
  MARKETPLACER_WEBHOOK_TOKEN             the value of the X-Marketsync-Token header that seller
                                         webhooks (which cannot be signed) carry; a webhook is
                                         taken when its signature or its token is right
  MARKETPLACER_WEBHOOK_TOKEN_PREVIOUS    the previous token, also accepted during a rotation
  MARKETSYNC_MAPPINGS                    the mapping folder when --mappings is left out
  MARKETSYNC_LOG_FORMAT                  as --log-format
  MARKETSYNC_LOG                         which events are logged, as RUST_LOG (default: info),
                                         e.g. warn, or info,marketsync::sink=warn

Logs: one event per webhook answered (outcome, status, marketplace, idempotency key, sequence,
delivery type, size, duration), and for start-up, shutdown, Klaviyo retries, dead letters,
outages and a refused key; never a secret, a body, an email or a phone. See docs/serve.md.
  (the variable client.yaml's `alerts: slack_webhook_env` names)  a Slack incoming-webhook URL

Alerts: with `alerts:` in client.yaml, serve checks for late or stuck order events, dead
letters of orders or consent, no webhook for hours, webhooks it could not store, a refused
key, a scheduled reconciliation that stopped succeeding, and compliance or systemic exceptions
read back from Klaviyo, and tells Slack and/or a command once when each starts, at most every `repeat` while it
lasts, and when it ends (docs/clients.md, docs/operations.md 11.5).

Exit 0 after a shutdown, 2 on a usage error, 3 when the mappings do not load, 4 when the
address cannot be bound or the state file cannot be opened or is held by another writer, 5
when Klaviyo refused the API key (webhooks were still received and kept until shutdown).")]
pub struct Args {
    #[command(flatten)]
    mappings: MappingArgs,
    /// Marketplace for webhooks that do not name one (no Marketplacer-Vertical header).
    #[arg(long, value_name = "NAME")]
    marketplace: Option<String>,
    #[command(flatten)]
    state: StateArgs,
    /// Address for webhooks.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Address for /livez and /readyz (default: on --listen).
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Largest body read into the store, in bytes; a larger one is kept as a dead letter with
    /// its headers, size and first KiB.
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024 * 1024)]
    max_body: usize,
    /// Seconds a webhook may take (body and commit) before it is answered 503.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    deadline: f64,
    /// Webhooks handled at once; more are answered 503.
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_in_flight: usize,
    /// Seconds a client may take to send a request's headers (or, on a kept-alive connection,
    /// to start the next request) before it is disconnected.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    header_timeout: f64,
    #[command(flatten)]
    sink: SinkArgs,
    /// How log events are written on stderr: human lines, or one JSON object a line.
    #[arg(
        long,
        value_enum,
        value_name = "FORMAT",
        env = "MARKETSYNC_LOG_FORMAT",
        default_value = "human"
    )]
    log_format: LogFormat,
}

/// Every event from here on goes to stderr in `format`, filtered by `MARKETSYNC_LOG`.
fn start_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(LOG_FILTER_ENV);
    let (filter, bad_filter) = match filter {
        Ok(filter) => (filter, None),
        Err(err) => {
            let unset = std::env::var_os(LOG_FILTER_ENV).is_none();
            let bad = (!unset).then(|| err.to_string());
            (tracing_subscriber::EnvFilter::new("info"), bad)
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Human => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs
            .with_ansi(false)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
    if let Some(problem) = bad_filter {
        warn!("{LOG_FILTER_ENV} not understood ({problem}); logging at info");
    }
}

pub fn execute(args: Args) -> u8 {
    start_logging(args.log_format);
    let (engine, mappings) = match args.mappings.load_quietly(args.marketplace.as_ref()) {
        Ok(loaded) => loaded,
        Err(problems) => {
            for problem in problems.iter() {
                error!("{problem}");
            }
            error!("the mappings do not load; run `marketsync validate` for details");
            return EXIT_BAD_MAPPINGS;
        }
    };
    let secret = |name: &str| std::env::var(name).ok();
    let (current, previous) = (secret(SECRET_ENV), secret(PREVIOUS_SECRET_ENV));
    let secrets = match Secrets::new(current.as_deref(), previous.as_deref()) {
        Ok(secrets) => secrets,
        Err(problem) => {
            error!("{SECRET_ENV} / {PREVIOUS_SECRET_ENV}: {problem} (not printed)");
            return EXIT_USAGE;
        }
    };
    let (current, previous) = (secret(TOKEN_ENV), secret(PREVIOUS_TOKEN_ENV));
    let secrets = match secrets.with_tokens(current.as_deref(), previous.as_deref()) {
        Ok(secrets) => secrets,
        Err(problem) => {
            error!("{TOKEN_ENV} / {PREVIOUS_TOKEN_ENV}: {problem} (not printed)");
            return EXIT_USAGE;
        }
    };
    let Some(deadline) = Duration::try_from_secs_f64(args.deadline)
        .ok()
        .filter(|d| !d.is_zero())
    else {
        error!(
            "--deadline must be more than 0 seconds, not {}",
            args.deadline
        );
        return EXIT_USAGE;
    };
    let Some(header_timeout) = Duration::try_from_secs_f64(args.header_timeout)
        .ok()
        .filter(|d| !d.is_zero())
    else {
        error!(
            "--header-timeout must be more than 0 seconds, not {}",
            args.header_timeout
        );
        return EXIT_USAGE;
    };
    let alerts = match &engine.settings().alerts {
        Some(settings) => match Notifier::new(settings, |name| std::env::var(name).ok()) {
            Ok(notifier) => {
                let mut to: Vec<String> = settings
                    .slack_webhook_env
                    .iter()
                    .map(|variable| format!("Slack (the URL in {variable})"))
                    .collect();
                to.extend(settings.command.first().map(|c| format!("command `{c}`")));
                info!(
                    check_every = %settings.check_every,
                    to = to.join(" and "),
                    "alerts on"
                );
                Some(Alerts::new(settings.clone(), notifier, now_ms()))
            }
            Err(problem) => {
                error!("{problem}");
                return EXIT_USAGE;
            }
        },
        None => None,
    };
    let (mut sink_config, redactor) = match try_sink_setup(&args.sink, &engine, "") {
        Ok(setup) => setup,
        Err(message) => {
            error!("{message}");
            return EXIT_USAGE;
        }
    };
    // Reconciliation on a schedule needs the instance and its key now, not at the first run.
    let scheduled = match &engine.settings().reconcile {
        Some(settings) if settings.schedule.is_some() => {
            match super::reconcile::marketplacer_client(None, &engine) {
                Ok(client) => Some((settings.clone(), client)),
                Err(problem) => {
                    error!("reconcile: schedule: {problem}");
                    return EXIT_USAGE;
                }
            }
        }
        _ => None,
    };
    let config = ServeConfig {
        body_limit: args.max_body,
        deadline,
        max_in_flight: args.max_in_flight.max(1),
        header_timeout,
        ..ServeConfig::default()
    };
    // Checkpoints off the commits that answer webhooks (src/store/checkpoint.rs).
    let (_lock, _checkpointer, store) = match args.state.try_lock_and_open_checkpointed() {
        Ok((lock, checkpointer, store)) => (lock, checkpointer, Arc::new(Mutex::new(store))),
        Err(message) => {
            error!("{message}");
            return EXIT_IO;
        }
    };
    // Every mapping's series exist from start-up, at 0 (`/metrics`); reconciliation's when it
    // is scheduled, from its last success in the store.
    let mut metrics = marketsync::metrics::Metrics::for_engine(&engine);
    if scheduled.is_some() {
        let last = store.lock().expect("store lock").last_reconcile_run();
        let since = match last {
            Ok(run) => run.and_then(|r| r.finished_at).unwrap_or_else(now_ms),
            Err(err) => {
                error!("state database: {err}");
                return EXIT_IO;
            }
        };
        metrics = metrics.with_reconciliation(since);
        if let Some(alerts) = &alerts {
            alerts.watch_reconciliation(since);
        }
    }
    sink_config.metrics = Arc::new(metrics);
    let engine = Arc::new(engine);
    let state = args.state.path.display().to_string();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    runtime.block_on(async move {
        let bind = |addr: String| async move {
            tokio::net::TcpListener::bind(&addr).await.map_err(|err| {
                error!("cannot listen on {addr}: {err}");
                EXIT_IO
            })
        };
        let listener = match bind(args.listen.clone()).await {
            Ok(listener) => listener,
            Err(code) => return code,
        };
        let admin = match args.admin_listen.clone() {
            Some(addr) => match bind(addr).await {
                Ok(listener) => Some(listener),
                Err(code) => return code,
            },
            None => None,
        };
        let address = |l: &tokio::net::TcpListener| {
            l.local_addr()
                .map_or_else(|_| "?".into(), |a| a.to_string())
        };
        let stop = stop_signal();
        let webhooks = format!("http://{}{}", address(&listener), serve::WEBHOOK_PATH);
        let health = format!(
            "http://{}/",
            admin.as_ref().map_or_else(|| address(&listener), address)
        );
        let signatures = match (secrets.configured(), secrets.tokens_configured()) {
            (false, _) => "NOT checked (no secret or token set)",
            (true, false) => "checked",
            (true, true) => "checked (a signature or the seller token)",
        };
        info!(
            webhooks,
            status_page_and_health = health,
            signatures,
            mappings,
            state,
            max_body = config.body_limit,
            deadline_ms = config.deadline.as_millis() as u64,
            max_in_flight = config.max_in_flight,
            header_timeout_ms = config.header_timeout.as_millis() as u64,
            "listening"
        );
        let read_back = ReadBackConfig {
            client: marketsync::sink::http::Client::new(
                &sink_config.base_url,
                sink_config.key.clone(),
                &sink_config.revision,
                sink_config.timeout,
            ),
            options: marketsync::klaviyo::read::ReadOptions {
                time_scale: sink_config.time_scale,
                ..Default::default()
            },
        };
        let sink = Sink::new(sink_config, Arc::clone(&store));
        let alerts_store = Arc::clone(&store);
        let reconcile_store = Arc::clone(&store);
        let read_back_store = Arc::clone(&store);
        let receiver = Receiver::new(
            Arc::clone(&engine),
            store,
            secrets,
            Some(Arc::clone(&sink)),
            config,
        );
        let (stopping, stopped) = tokio::sync::watch::channel(false);
        if let Some(alerts) = alerts {
            receiver.show_alerts(Arc::clone(&alerts));
            let (receiver, sink) = (Arc::clone(&receiver), Arc::clone(&sink));
            let facts = move || Facts {
                intake_failures: receiver.counters.intake_failed.load(Ordering::Relaxed),
                key_refused: sink.refused().is_some(),
            };
            let mut stopped = stopped.clone();
            let stopped = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            tokio::spawn(alerts.run(alerts_store, facts, stopped));
        }
        if let Some((settings, (client, page_size))) = scheduled {
            let reconciler = match Reconciler::new(
                Arc::clone(&engine),
                reconcile_store,
                Arc::new(client),
                page_size,
            ) {
                // Klaviyo is read back with the sender's key, each read endpoint under its own
                // limit (separate from the send endpoints').
                Ok(reconciler) if settings.read_klaviyo => {
                    Arc::new(reconciler.reading_klaviyo(read_back))
                }
                Ok(reconciler) => Arc::new(reconciler),
                Err(err) => {
                    error!("reconcile: {err}");
                    return EXIT_BAD_MAPPINGS;
                }
            };
            let schedule = settings.schedule.clone().expect("scheduled");
            info!(
                schedule = %schedule,
                window = %settings.window,
                settle = %settings.settle,
                "reconciliation scheduled (UTC)"
            );
            let chrono =
                |span: marketsync::alerts::Span| chrono::Duration::milliseconds(span.millis());
            let (sink, metrics) = (Arc::clone(&sink), Arc::clone(sink.metrics()));
            let scheduled = Scheduled {
                reconciler,
                schedule,
                ask: Ask {
                    since: None,
                    until: None,
                    length: chrono(settings.window),
                    length_asked: false,
                    settle: chrono(settings.settle),
                },
                on_success: Box::new(move |report| {
                    metrics.reconciled(now_ms());
                    keep_read_back(Arc::clone(&read_back_store), report);
                    let requeued = report.findings.requeued_from_klaviyo;
                    if report.findings.missing_total() > 0 || requeued > 0 {
                        sink.wake();
                    }
                }),
            };
            let mut stopped = stopped.clone();
            let stopped = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            tokio::spawn(scheduled.run(stopped));
        }
        let stop = async move {
            stop.await;
            let _ = stopping.send(true);
        };
        match serve::serve(receiver, sink, listener, admin, stop).await {
            Ok(Ok(())) => {
                info!(exit = EXIT_OK, "stopped");
                EXIT_OK
            }
            Ok(Err(err @ SinkError::KeyRefused { .. })) => {
                let err = redactor.redact(&err.to_string());
                error!(exit = EXIT_KEY_REFUSED, "stopped: {err}");
                EXIT_KEY_REFUSED
            }
            Ok(Err(err)) => {
                let err = redactor.redact(&err.to_string());
                error!(exit = EXIT_IO, "stopped: {err}");
                EXIT_IO
            }
            Err(err) => {
                error!(exit = EXIT_IO, "stopped: serving: {err}");
                EXIT_IO
            }
        }
    })
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed at once, not when first polled,
/// so a signal sent as soon as the address is announced is not missed.
fn stop_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM can be handled");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT can be handled");
    async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}

/// Keeps what a scheduled run read back from Klaviyo (its exceptions and summary), off the
/// runtime's threads, and logs the counts (never a person or an order: the store and the
/// status page have those).
fn keep_read_back(store: Arc<Mutex<marketsync::store::Store>>, report: &Report) {
    if report.read_back.is_none() {
        return;
    }
    let report = report.clone();
    tokio::task::spawn_blocking(move || {
        let mut store = store.lock().expect("store lock");
        match marketsync::reconcile::exceptions::record(&mut store, &report, now_ms()) {
            Ok(Some(kept)) => {
                let s = &kept.summary;
                let tiers = s.open_by_tier();
                let open = |tier| tiers.get(&tier).copied().unwrap_or_default();
                let fields = (
                    open(Tier::Compliance),
                    open(Tier::Systemic),
                    open(Tier::Money),
                    open(Tier::Hygiene),
                );
                if s.fails() {
                    warn!(
                        run = s.run_id,
                        compliance = fields.0,
                        systemic = fields.1,
                        money = fields.2,
                        hygiene = fields.3,
                        new = kept.opened.len(),
                        resolved = kept.resolved.len(),
                        "read back from Klaviyo: compliance or systemic exceptions open (marketsync exceptions list --tier …)"
                    );
                } else {
                    info!(
                        run = s.run_id,
                        compliance = fields.0,
                        systemic = fields.1,
                        money = fields.2,
                        hygiene = fields.3,
                        new = kept.opened.len(),
                        resolved = kept.resolved.len(),
                        "read back from Klaviyo"
                    );
                }
            }
            Ok(None) => {}
            Err(err) => error!("keeping what was read back from Klaviyo: {err}"),
        }
    });
}
