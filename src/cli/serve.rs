//! `marketsync serve`: receive Marketplacer webhooks and send them on, until stopped.

use super::run::{SinkArgs, sink_setup};
use super::{EXIT_IO, EXIT_KEY_REFUSED, EXIT_OK, EXIT_USAGE, MappingArgs, StateArgs};
use marketsync::alerts::{Alerts, Facts, Notifier};
use marketsync::serve::{self, Receiver, ServeConfig};
use marketsync::sink::{Sink, SinkError, now_ms};
use marketsync::source::webhook::Secrets;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The variable holding the webhook secret.
const SECRET_ENV: &str = "MARKETPLACER_WEBHOOK_SECRET";
/// The variable holding the previous secret, accepted too during a rotation.
const PREVIOUS_SECRET_ENV: &str = "MARKETPLACER_WEBHOOK_SECRET_PREVIOUS";
/// The variable holding the token a seller's webhook carries (it cannot be signed).
const TOKEN_ENV: &str = "MARKETPLACER_WEBHOOK_TOKEN";
/// The previous token, accepted too during a rotation.
const PREVIOUS_TOKEN_ENV: &str = "MARKETPLACER_WEBHOOK_TOKEN_PREVIOUS";

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
while shutting down), on --admin-listen, else on --listen.

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
  (the variable client.yaml's `alerts: slack_webhook_env` names)  a Slack incoming-webhook URL

Alerts: with `alerts:` in client.yaml, serve checks for late or stuck order events, dead
letters of orders or consent, no webhook for hours, webhooks it could not store and a refused
key, and tells Slack and/or a command once when each starts, at most every `repeat` while it
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
    #[command(flatten)]
    sink: SinkArgs,
}

pub fn execute(args: Args) -> u8 {
    let engine = match args
        .mappings
        .load_for_marketplace(args.marketplace.as_ref())
    {
        Ok(engine) => engine,
        Err(code) => return code,
    };
    let secret = |name: &str| std::env::var(name).ok();
    let (current, previous) = (secret(SECRET_ENV), secret(PREVIOUS_SECRET_ENV));
    let secrets = match Secrets::new(current.as_deref(), previous.as_deref()) {
        Ok(secrets) => secrets,
        Err(problem) => {
            eprintln!("error: {SECRET_ENV} / {PREVIOUS_SECRET_ENV}: {problem} (not printed)");
            return EXIT_USAGE;
        }
    };
    let (current, previous) = (secret(TOKEN_ENV), secret(PREVIOUS_TOKEN_ENV));
    let secrets = match secrets.with_tokens(current.as_deref(), previous.as_deref()) {
        Ok(secrets) => secrets,
        Err(problem) => {
            eprintln!("error: {TOKEN_ENV} / {PREVIOUS_TOKEN_ENV}: {problem} (not printed)");
            return EXIT_USAGE;
        }
    };
    let Some(deadline) = Duration::try_from_secs_f64(args.deadline)
        .ok()
        .filter(|d| !d.is_zero())
    else {
        eprintln!(
            "error: --deadline must be more than 0 seconds, not {}",
            args.deadline
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
                eprintln!(
                    "serve: alerts checked every {}, sent to {}",
                    settings.check_every,
                    to.join(" and ")
                );
                Some(Alerts::new(settings.clone(), notifier, now_ms()))
            }
            Err(problem) => {
                eprintln!("error: {problem}");
                return EXIT_USAGE;
            }
        },
        None => None,
    };
    let (sink_config, redactor) = match sink_setup(&args.sink, &engine, "") {
        Ok(setup) => setup,
        Err(code) => return code,
    };
    let config = ServeConfig {
        body_limit: args.max_body,
        deadline,
        max_in_flight: args.max_in_flight.max(1),
        ..ServeConfig::default()
    };
    let _lock = match args.state.lock() {
        Ok(lock) => lock,
        Err(code) => return code,
    };
    let store = match args.state.open() {
        Ok(store) => Arc::new(Mutex::new(store)),
        Err(code) => return code,
    };
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    runtime.block_on(async move {
        let bind = |addr: String| async move {
            tokio::net::TcpListener::bind(&addr).await.map_err(|err| {
                eprintln!("error: cannot listen on {addr}: {err}");
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
        eprintln!(
            "serve: listening on http://{}{} (health on http://{}); webhook signatures {}",
            address(&listener),
            serve::WEBHOOK_PATH,
            admin.as_ref().map_or_else(|| address(&listener), address),
            if secrets.configured() {
                "checked"
            } else {
                "NOT checked (no secret set)"
            },
        );
        let sink = Sink::new(sink_config, Arc::clone(&store));
        let alerts_store = Arc::clone(&store);
        let receiver = Receiver::new(
            Arc::new(engine),
            store,
            secrets,
            Some(Arc::clone(&sink)),
            config,
        );
        let (stopping, stopped) = tokio::sync::watch::channel(false);
        if let Some(alerts) = alerts {
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
        let stop = async move {
            stop.await;
            let _ = stopping.send(true);
        };
        match serve::serve(receiver, sink, listener, admin, stop).await {
            Ok(Ok(())) => {
                eprintln!("serve: stopped");
                EXIT_OK
            }
            Ok(Err(err @ SinkError::KeyRefused { .. })) => {
                eprintln!("error: {}", redactor.redact(&err.to_string()));
                EXIT_KEY_REFUSED
            }
            Ok(Err(err)) => {
                eprintln!("error: {}", redactor.redact(&err.to_string()));
                EXIT_IO
            }
            Err(err) => {
                eprintln!("error: serving: {err}");
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
