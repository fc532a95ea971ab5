//! `marketsync run`: deliveries in, Klaviyo requests out.

use super::{
    EXIT_IO, EXIT_KEY_REFUSED, EXIT_OK, EXIT_REJECTED, EXIT_UNAVAILABLE, EXIT_USAGE, MappingArgs,
    StateArgs,
};
use marketsync::engine::Engine;
use marketsync::klaviyo::Endpoint;
use marketsync::run::dry_run;
use marketsync::sink::http::{self, ApiKey};
use marketsync::sink::limit::Limit;
use marketsync::sink::{DeliveryReport, SinkConfig, SinkError};
use marketsync::source::Input;
use marketsync::sync::{self, IntakeReport, SyncError};
use std::io::{self, BufWriter, IsTerminal};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How to reach Klaviyo and how hard to push: shared by `run` and `serve`.
#[derive(clap::Args)]
pub(super) struct SinkArgs {
    /// Klaviyo's API base URL (a stand-in or staging proxy in tests): https://, or plain
    /// http:// only to this machine (127.0.0.1, ::1, localhost), since it carries the key.
    #[arg(
        long,
        value_name = "URL",
        env = "KLAVIYO_BASE_URL",
        default_value = "https://a.klaviyo.com"
    )]
    klaviyo_url: String,
    /// The Klaviyo API revision sent with every request.
    #[arg(long, value_name = "DATE", default_value = marketsync::sink::REVISION)]
    revision: String,
    /// Seconds a Fulfilled/Refunded/Cancelled Order waits for its Placed Order before it is
    /// sent anyway and flagged, counted while a run is sending (not while none runs).
    #[arg(long, value_name = "SECONDS", default_value_t = 120.0)]
    hold: f64,
    /// Attempts before a request that keeps failing (429, 5xx, timeouts) while others to its
    /// endpoint get through is dead-lettered.
    #[arg(long, value_name = "N", default_value_t = 8)]
    max_attempts: u32,
    /// Seconds an endpoint may answer nothing but timeouts, 5xx or 429 before it counts as
    /// unavailable: its queue is kept, and `run` exits 6 (Klaviyo unavailable) while `serve`
    /// probes it now and then until it answers.
    #[arg(long, value_name = "SECONDS", default_value_t = 120.0)]
    outage_window: f64,
    /// Seconds before a request to Klaviyo times out.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    timeout: f64,
    /// Run the rate-limit clock this many times faster (only for the stand-in's sped-up clock).
    #[arg(long, value_name = "FACTOR", default_value_t = 1.0, hide = true)]
    time_scale: f64,
}

/// Map Marketplacer deliveries to Klaviyo requests, and send them.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  marketsync run --dry-run examples/*.json examples/*.ndjson
  cat captures.ndjson | marketsync run --dry-run --marketplace petmarket -
  KLAVIYO_API_KEY=pk_... marketsync run --state /var/lib/marketsync/state.db captures.ndjson

Inputs: `.json` files hold one delivery; `.ndjson`/`.jsonl` files and standard input (`-`, or
no INPUT) hold one per line; with no INPUT at a terminal, a real run only sends what is queued. Each delivery may be a webhook envelope, a capture with headers,
or a GraphQL backfill page; the shape is detected.

With --dry-run: one request per line on stdout, {\"method\", \"path\", \"body\", \"mapping\",
\"lane\", \"source\"}; nothing is stored or sent.

With --no-send: every delivery is kept in the state database and nothing is sent (no API key
needed): a later `run` or `serve` on the same file sends what was queued.

Without it: every delivery is kept in the state database before anything is sent, requests go
to Klaviyo under its rate limits (order events first), and a run that is killed picks up where
it stopped when started again. The API key is read from KLAVIYO_API_KEY (or the variable a client's
`klaviyo_api_key_env` names) only, and never printed.

A line that cannot be read (not JSON, not UTF-8, not a delivery) is reported with its file and
line number, and the run goes on (a real run keeps it as an `unreadable` dead letter). An input
that cannot be opened or read is reported, and the other inputs are still read.

Exit 0 when nothing was rejected, 1 when any delivery or request was rejected or dead-lettered,
2 on a usage error, 3 when the mappings do not load, 4 when an input could not be read (after
reading the others), on an output or state error, or when another run is writing the state
file, 5 when Klaviyo refuses the API key (the queue is left intact), 6 when Klaviyo is
unavailable (the queue is kept; run again later).

Klaviyo unavailable: when an endpoint answers nothing but timeouts, 5xx or 429 for
--outage-window, the run stops sending to it, keeps its requests queued as they are (none
becomes a dead letter for it), finishes the rest, prints its summary and exits 6. A request
becomes a `retries-exhausted` dead letter only when it failed --max-attempts times while other
requests to its endpoint got through.

One writer per state file: a run holds STATE.lock (beside the state file) while it runs; a
second `run` or `retry` on the same file exits 4 naming the process that holds it. `status`
works meanwhile. A killed run's lock is released by the system.")]
pub struct Args {
    /// Print the requests instead of sending them.
    #[arg(long)]
    dry_run: bool,
    /// Keep what is read in the state file and send nothing: a later `run` (or `serve`) on
    /// the same file sends it. Needs no API key.
    #[arg(long, conflicts_with = "dry_run")]
    no_send: bool,
    /// Threads that parse and map deliveries (default: every core). Output, the order things
    /// are stored in, and what is sent are the same whatever the number.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    jobs: Option<u16>,
    #[command(flatten)]
    mappings: MappingArgs,
    /// Marketplace for deliveries that do not name one (no Marketplacer-Vertical header).
    #[arg(long, value_name = "NAME")]
    marketplace: Option<String>,
    #[command(flatten)]
    state: StateArgs,
    #[command(flatten)]
    sink: SinkArgs,
    /// Files to read; `-` or nothing for standard input.
    #[arg(value_name = "INPUT")]
    inputs: Vec<String>,
}

pub fn execute(args: Args) -> u8 {
    let engine = match args
        .mappings
        .load_for_marketplace(args.marketplace.as_ref())
    {
        Ok(engine) => engine,
        Err(code) => return code,
    };
    let inputs: Vec<Input> = if args.inputs.is_empty() {
        // `marketsync run` typed at a terminal sends what is queued (after `retry`, say)
        // rather than waiting for deliveries to be typed in.
        if !args.dry_run && io::stdin().is_terminal() {
            Vec::new()
        } else {
            vec![Input::Stdin]
        }
    } else {
        args.inputs.iter().map(|a| Input::from_arg(a)).collect()
    };
    let jobs = args.jobs.map_or_else(
        || std::thread::available_parallelism().map_or(1, usize::from),
        usize::from,
    );
    if args.dry_run {
        return dry(&engine, &inputs, jobs);
    }
    if args.no_send {
        return keep_only(&engine, &args.state, &inputs, jobs);
    }
    let (config, redactor) = match sink_setup(&args.sink, &engine, " (or use --dry-run)") {
        Ok(setup) => setup,
        Err(code) => return code,
    };
    // One writer per state file, for the whole run: taken before the store is opened (which
    // may migrate it) and released when the process ends, however it ends.
    let (_lock, _checkpointer, store) = match args.state.lock_and_open_checkpointed() {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    // A spinner with counts on long runs; indicatif draws nothing when stderr is not a
    // terminal (CI logs, files).
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .expect("a valid template"),
    );
    let ticker = bar.clone();
    let on_tick: sync::OnTick = Box::new(move |tick: sync::Tick| {
        ticker.set_message(format!(
            "read {} · sent {} · retried {} · dead-lettered {}",
            tick.read, tick.sent, tick.retried, tick.dead
        ));
        ticker.tick();
    });
    let mut report = AboveTheBar(bar.clone());
    let result = runtime.block_on(sync::run_with_progress(
        Arc::new(engine),
        Arc::new(Mutex::new(store)),
        inputs,
        jobs,
        config,
        &mut report,
        Some(on_tick),
    ));
    bar.finish_and_clear();
    match result {
        Ok((intake, delivery)) => {
            eprint!("{}", render(&intake, &delivery));
            let dead: usize = delivery.dead_letters.values().sum();
            finished(
                intake.input_errors,
                dead + intake.rejected.values().sum::<usize>(),
            )
        }
        // Errors can quote what Klaviyo (or a proxy) said: never the key.
        Err(SyncError::Unavailable {
            cause,
            intake,
            delivery,
        }) => {
            eprint!("{}", render(&intake, &delivery));
            eprintln!("error: {}", redactor.redact(&cause.to_string()));
            EXIT_UNAVAILABLE
        }
        Err(SyncError::Sink(err @ SinkError::KeyRefused { .. })) => {
            eprintln!("error: {}", redactor.redact(&err.to_string()));
            EXIT_KEY_REFUSED
        }
        Err(err) => {
            eprintln!("error: {}", redactor.redact(&err.to_string()));
            EXIT_IO
        }
    }
}

/// `run --no-send`: intake alone, into the state file.
fn keep_only(engine: &Engine, state: &StateArgs, inputs: &[Input], jobs: usize) -> u8 {
    let (_lock, _checkpointer, store) = match state.lock_and_open_checkpointed() {
        Ok((lock, checkpointer, store)) => (lock, checkpointer, Mutex::new(store)),
        Err(code) => return code,
    };
    let stderr = io::stderr();
    let mut report = stderr.lock();
    let (stop, read) = (AtomicBool::new(false), AtomicUsize::new(0));
    match sync::intake(engine, &store, inputs, jobs, &mut report, &stop, &read) {
        Ok(intake) => {
            eprint!("{}", render(&intake, &DeliveryReport::default()));
            finished(intake.input_errors, intake.rejected.values().sum())
        }
        Err(err) => {
            eprintln!("error: {err}");
            EXIT_IO
        }
    }
}

/// The exit code of a run that read to its end: an input that could not be read says more than
/// a rejected delivery or request.
fn finished(input_errors: usize, rejected: usize) -> u8 {
    if input_errors > 0 {
        EXIT_IO
    } else if rejected > 0 {
        EXIT_REJECTED
    } else {
        EXIT_OK
    }
}

fn dry(engine: &Engine, inputs: &[Input], jobs: usize) -> u8 {
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(256 * 1024, stdout.lock());
    let stderr = io::stderr();
    let mut report = stderr.lock();
    match dry_run(engine, inputs, jobs, &mut out, &mut report) {
        Ok(summary) => {
            eprint!("{}", summary.render());
            finished(summary.input_errors, summary.rejected_count())
        }
        Err(err) => {
            eprintln!("error: {err}");
            EXIT_IO
        }
    }
}

/// The API key (from the variable the client names, else KLAVIYO_API_KEY) and the sink's
/// configuration, checked before anything is opened; or the error printed and the exit code.
/// Also returns the key, to redact it from error messages. `hint` ends the missing-key error.
pub(super) fn sink_setup(
    args: &SinkArgs,
    engine: &Engine,
    hint: &str,
) -> Result<(SinkConfig, ApiKey), u8> {
    try_sink_setup(args, engine, hint).map_err(|message| {
        eprintln!("error: {message}");
        EXIT_USAGE
    })
}

/// [`sink_setup`], with the message for the caller to say (`serve` logs it); every failure is
/// a usage error.
pub(super) fn try_sink_setup(
    args: &SinkArgs,
    engine: &Engine,
    hint: &str,
) -> Result<(SinkConfig, ApiKey), String> {
    // A client names its own variable, so several clients' keys can sit side by side.
    let key_variable = engine
        .settings()
        .klaviyo_api_key_env
        .as_deref()
        .unwrap_or("KLAVIYO_API_KEY");
    let Some(key) = std::env::var(key_variable)
        .ok()
        .filter(|k| !k.trim().is_empty())
    else {
        return Err(format!(
            "set {key_variable} to a Klaviyo private API key to send{hint}"
        ));
    };
    let key = match ApiKey::checked(key.trim()) {
        Ok(key) => key,
        Err(problem) => {
            return Err(format!("{key_variable} {problem} (the key is not printed)"));
        }
    };
    // Everything that would fail every request is checked before the store is opened, so
    // that it is one clear error rather than a dead letter per request.
    let redactor = key.clone();
    Ok((sink_config(args, engine, key)?, redactor))
}

fn sink_config(args: &SinkArgs, engine: &Engine, key: ApiKey) -> Result<SinkConfig, String> {
    http::check_base_url(&args.klaviyo_url)
        .map_err(|problem| format!("--klaviyo-url (or KLAVIYO_BASE_URL) {problem}"))?;
    let today = chrono::Utc::now().date_naive();
    http::check_revision(&args.revision, today)
        .map_err(|problem| format!("--revision {} {problem}", args.revision))?;
    let mut config = SinkConfig::new(&args.klaviyo_url, key);
    config.revision = args.revision.clone();
    config.hold = Duration::try_from_secs_f64(args.hold)
        .map_err(|_| format!("--hold must be 0 or more seconds, not {}", args.hold))?;
    config.timeout = Duration::try_from_secs_f64(args.timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .ok_or_else(|| {
            format!(
                "--timeout must be more than 0 seconds, not {}",
                args.timeout
            )
        })?;
    config.max_attempts = args.max_attempts.max(1);
    config.outage_window = Duration::try_from_secs_f64(args.outage_window).map_err(|_| {
        format!(
            "--outage-window must be 0 or more seconds, not {}",
            args.outage_window
        )
    })?;
    if !args.time_scale.is_finite() || args.time_scale <= 0.0 {
        return Err("--time-scale must be positive".into());
    }
    config.time_scale = args.time_scale;
    for (path, limit) in &engine.settings().rate_limits {
        let endpoint = Endpoint::parse(path)
            .expect("rate_limits endpoints are checked where written when the mappings load");
        config.limits.insert(
            endpoint,
            Limit::per_second_and_minute(limit.burst, limit.steady),
        );
    }
    Ok(config)
}

/// The closing summary of a real run.
fn render(intake: &IntakeReport, delivery: &DeliveryReport) -> String {
    let mut out = String::from("summary:\n");
    let mut line = |label: &str, value: String| out.push_str(&format!("  {label:<28} {value}\n"));
    line("deliveries read", intake.deliveries.to_string());
    line("records", intake.records.to_string());
    line("repeated (already in store)", intake.repeated.to_string());
    line("queued", intake.queued.to_string());
    line(
        "dropped as once-per-key",
        intake.once_per_key_dropped.to_string(),
    );
    line(
        "coalesced / stale dropped",
        format!("{} / {}", intake.coalesced, intake.stale_dropped),
    );
    line(
        "skipped (type not mapped)",
        intake.skipped.values().sum::<usize>().to_string(),
    );
    line("sent", delivery.sent.values().sum::<usize>().to_string());
    for (mapping, count) in &delivery.sent {
        line(&format!("  {mapping}"), count.to_string());
    }
    line("retried", delivery.retried.to_string());
    line(
        "held past the hold (flagged)",
        delivery.sent_after_hold.to_string(),
    );
    line("sent without phone", delivery.phone_removed.to_string());
    let dead = intake.rejected.iter().chain(&delivery.dead_letters);
    let total: usize = dead.clone().map(|(_, n)| n).sum();
    line("dead-lettered", total.to_string());
    for (category, count) in dead {
        line(&format!("  {category}"), count.to_string());
    }
    line(
        "waiting on rate limits",
        format!("{:.1}s", delivery.waited_on_limits.as_secs_f64()),
    );
    line("warnings", intake.warnings.to_string());
    if intake.input_errors > 0 {
        line("input errors", intake.input_errors.to_string());
    }
    out
}

/// Writes report lines to stderr with the progress spinner out of the way.
struct AboveTheBar(indicatif::ProgressBar);

impl io::Write for AboveTheBar {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.suspend(|| io::stderr().write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}
