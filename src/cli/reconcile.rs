//! `marketsync reconcile`: re-read a window of Marketplacer through its API, and repair what
//! never reached Klaviyo.

use super::exceptions::write_html;
use super::run::{SinkArgs, sink_setup};
use super::{
    EXIT_BAD_MAPPINGS, EXIT_IO, EXIT_KEY_REFUSED, EXIT_OK, EXIT_OPEN_EXCEPTIONS, EXIT_REJECTED,
    EXIT_UNAVAILABLE, EXIT_USAGE, MappingArgs, StateArgs,
};
use marketsync::alerts::Span;
use marketsync::engine::Engine;
use marketsync::klaviyo::read::{ReadError, ReadOptions};
use marketsync::marketplacer::{self, Client, MarketplacerError, MarketplacerSettings};
use marketsync::reconcile::report::ReadBackReport;
use marketsync::reconcile::window::describe;
use marketsync::reconcile::{
    Ask, Findings, Progress, ReadBackConfig, ReconcileError, ReconcileSettings, Reconciler, Report,
    RunOptions, exceptions,
};
use marketsync::sink::http::{self, ApiKey};
use marketsync::sink::{DeliveryReport, SinkError};
use marketsync::sync::{self, SyncError};
use serde_json::json;
use std::io::Write;
use std::sync::{Arc, Mutex};

/// Re-read what changed in Marketplacer over a window, map it as its webhooks would have been
/// mapped, and queue (and send) every request Klaviyo never accepted.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  MARKETPLACER_API_KEY=... KLAVIYO_API_KEY=pk_... marketsync reconcile --client acme --state /var/lib/marketsync/state.db
  marketsync reconcile --client acme --window 72h --report-only
  marketsync reconcile --client acme --since 2026-11-28T00:00:00Z --until 2026-11-29T00:00:00Z --format json

The instance is `marketplacer: url:` in client.yaml (or --marketplacer-url); its Operator API
key is read from MARKETPLACER_API_KEY (or the variable `marketplacer: api_key_env:` names) and
never printed.

The window: --since and --until (RFC 3339), or the last --window (default: `reconcile: window:`
in client.yaml, else 24h) ending `settle` ago (default 15m): changes younger than that are left
out, their webhooks may still be on their way. --until within the settle delay is moved back.

What it reads: the operator's webhooks (a disabled or missing one is reported first), invoices
updated or paid in the window with their shipments and refund requests, refund requests refunded
in it, and invoice amendments created in it, with the fields the webhook queries select. Each
object is mapped as its webhook was; each request is then already accepted (in the ledger),
already queued, or missing. Missing ones are queued as repairs with the same keys (Klaviyo
drops one that did arrive after all) and sent, as `run` sends, unless --no-send. With
--report-only nothing is queued or sent.

Then it reads Klaviyo back (unless --no-klaviyo-read), with KLAVIYO_API_KEY and each read
endpoint's published limit: the metrics, the window's events, the profiles of its people and
the day's Placed Order totals; and reports what differs, ranked by impact (compliance, systemic,
money, hygiene). Events Klaviyo accepted and no longer holds are queued again with their own keys
(not with --report-only); consent, wrong events, duplicates and drift are only reported. The
reads a run may make are `reconcile: read_budget:` in client.yaml.

Each finding is an exception, kept in the state file until a later run that looks where it would
be no longer finds it, or a person resolves it (`marketsync exceptions`). The report follows the
run's: a table by class with counts and money at stake, revenue per marketplace, the trend since
the last run, then the top exceptions. --format json adds it as `read_back`; --format jsonl
prints only the open exceptions, one a line (class, tier, money at stake, order, profile and
event ids, first seen, suggested action); --html FILE writes the weekly-review page.
`marketsync exceptions report` shows the latest one again.

The state file must exist (the one `run` or `serve` keeps): against a new one everything would
be missing, opt-ins included. A run keeps a checkpoint in the state file: killed, it resumes on the next run (with no window
given, or the same one) and ends with the same report. A second run over the same window finds
nothing missing. One writer per state file: with `serve` running, use its `reconcile: schedule:`
instead.

Exit 0 when nothing was missing or wrong, 1 when repairs were queued (or, reporting only, were
missing), a webhook is disabled or missing, Marketplacer's own Klaviyo tracking is on, a
mapping refused a record, a dead letter was left
open or reading Klaviyo back found anything, 8 when a compliance or systemic exception read back
from Klaviyo is open (whatever else was found), 2 on a usage error, 3 when the mappings or queries
do not load, 4 on a Marketplacer answer that is not data (GraphQL errors), a state or output
error, another writer holding the state file, or a read budget spent, 5 when Marketplacer or
Klaviyo refused the API key, 6 when Marketplacer or Klaviyo's read endpoints could not be reached
or kept refusing (the checkpoint is kept: run again later) or Klaviyo was unavailable while
sending (the repairs stay queued).")]
pub struct Args {
    #[command(flatten)]
    mappings: MappingArgs,
    #[command(flatten)]
    state: StateArgs,
    /// Start of the window (RFC 3339, e.g. 2026-11-28T00:00:00Z).
    #[arg(long, value_name = "TIME", conflicts_with = "window")]
    since: Option<String>,
    /// End of the window, excluded (RFC 3339); default: now less the settle delay.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Length of the window ending at --until: 90m, 24h, 7d.
    #[arg(long, value_name = "LENGTH")]
    window: Option<String>,
    /// Report what is missing; queue and send nothing.
    #[arg(long)]
    report_only: bool,
    /// Queue the repairs but do not send them (the next `run`, or `serve`, sends them).
    #[arg(long, conflicts_with = "report_only")]
    no_send: bool,
    /// Do not read Klaviyo back: check the window against the state file's ledger only.
    #[arg(long)]
    no_klaviyo_read: bool,
    /// `human`, `json` (the report, on standard output), or `jsonl` (only the open exceptions
    /// read back from Klaviyo, one a line).
    #[arg(long, value_name = "FORMAT", default_value = "human", value_parser = ["human", "json", "jsonl"])]
    format: String,
    /// Write the read-back report as one self-contained HTML page (the weekly review).
    #[arg(long, value_name = "FILE")]
    html: Option<std::path::PathBuf>,
    /// The Marketplacer instance (overrides `marketplacer: url:` in client.yaml).
    #[arg(long, value_name = "URL", env = "MARKETPLACER_URL")]
    marketplacer_url: Option<String>,
    #[command(flatten)]
    sink: SinkArgs,
}

pub fn execute(args: Args) -> u8 {
    let engine = match args.mappings.load_or_report() {
        Ok(engine) => engine,
        Err(code) => return code,
    };
    let settings = engine.settings().reconcile.clone().unwrap_or_default();
    let ask = match ask(&args, &settings) {
        Ok(ask) => ask,
        Err(problem) => {
            eprintln!("error: {problem}");
            return EXIT_USAGE;
        }
    };
    let (client, page_size) = match marketplacer_client(args.marketplacer_url.as_ref(), &engine) {
        Ok(client) => client,
        Err(problem) => {
            eprintln!("error: {problem}");
            return EXIT_USAGE;
        }
    };
    let send = !args.report_only && !args.no_send;
    let read = !args.no_klaviyo_read && settings.read_klaviyo;
    let klaviyo = if send || read {
        match sink_setup(
            &args.sink,
            &engine,
            " the repairs and read Klaviyo back (or use --no-klaviyo-read with --no-send or \
             --report-only)",
        ) {
            Ok(setup) => Some(setup),
            Err(code) => return code,
        }
    } else {
        None
    };
    let read_back_config = klaviyo
        .as_ref()
        .filter(|_| read)
        .map(|(config, _)| ReadBackConfig {
            client: http::Client::new(
                &config.base_url,
                config.key.clone(),
                &config.revision,
                config.timeout,
            ),
            options: ReadOptions {
                time_scale: config.time_scale,
                ..ReadOptions::default()
            },
        });
    let sink = klaviyo.filter(|_| send);
    // Against a state file that does not exist, everything would be missing: every order of
    // the window sent again and, worse, every opt-in (a new file has forgotten who was
    // subscribed). A mistyped --state is an error, as for `status` and `retry`.
    if let Err(code) = args.state.exists() {
        return code;
    }
    let (_lock, store) = match args.state.lock_and_open() {
        Ok((lock, store)) => (lock, Arc::new(Mutex::new(store))),
        Err(code) => return code,
    };
    let engine = Arc::new(engine);
    let reconciler = match Reconciler::new(
        Arc::clone(&engine),
        Arc::clone(&store),
        Arc::new(client),
        page_size,
    ) {
        Ok(reconciler) => match read_back_config {
            Some(config) => reconciler.reading_klaviyo(config),
            None => reconciler,
        },
        Err(err) => {
            eprintln!("error: {err}");
            return EXIT_BAD_MAPPINGS;
        }
    };
    let options = RunOptions {
        ask,
        repair: !args.report_only,
    };
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .expect("a valid template"),
    );
    let ticker = bar.clone();
    let mut on_page = move |progress: &Progress| {
        let read: u64 = progress.findings.read.values().sum();
        ticker.set_message(format!(
            "{}: page {} · read {read} · missing {}",
            progress.step.name(),
            progress.pages,
            progress.findings.missing_total()
        ));
        ticker.tick();
    };
    let result = runtime.block_on(reconciler.run(&options, chrono::Utc::now(), &mut on_page));
    bar.finish_and_clear();
    let report = match result {
        Ok(report) => report,
        Err(err) => return reconcile_failed(&err),
    };
    for note in &report.notes {
        eprintln!("note: {note}");
    }
    let mut sent = None;
    let found_in_klaviyo = report
        .read_back
        .as_ref()
        .is_some_and(|r| !r.discrepancies.is_empty());
    let mut code = if report.findings.anything_wrong() || found_in_klaviyo {
        EXIT_REJECTED
    } else {
        EXIT_OK
    };
    if let Some((config, redactor)) = sink {
        let result = runtime.block_on(sync::run(
            Arc::clone(&engine),
            Arc::clone(&store),
            Vec::new(),
            1,
            config,
            Box::new(std::io::stderr()),
        ));
        match result {
            Ok((_, delivery)) => sent = Some(delivery),
            Err(SyncError::Unavailable {
                cause, delivery, ..
            }) => {
                eprintln!("error: {}", redactor.redact(&cause.to_string()));
                sent = Some(*delivery);
                code = EXIT_UNAVAILABLE;
            }
            Err(SyncError::Sink(err @ SinkError::KeyRefused { .. })) => {
                eprintln!("error: {}", redactor.redact(&err.to_string()));
                code = EXIT_KEY_REFUSED;
            }
            Err(err) => {
                eprintln!("error: {}", redactor.redact(&err.to_string()));
                code = EXIT_IO;
            }
        }
    }
    let read_back = match read_back(&store, &report) {
        Ok(read_back) => read_back,
        Err(problem) => {
            eprintln!("error: {problem}");
            code = EXIT_IO;
            None
        }
    };
    if read_back.is_none() && (args.html.is_some() || args.format == "jsonl") {
        eprintln!("note: this run did not read Klaviyo back: there is no read-back report");
    }
    if let Some(read_back) = &read_back
        && read_back.current.fails()
        && matches!(code, EXIT_OK | EXIT_REJECTED)
    {
        code = EXIT_OPEN_EXCEPTIONS;
    }
    let text = match (args.format.as_str(), &read_back) {
        ("jsonl", Some(read_back)) => read_back.jsonl(),
        ("jsonl", None) => String::new(),
        ("json", _) => {
            let mut out = json_report(&report, sent.as_ref());
            out["read_back"] = read_back
                .as_ref()
                .map_or(serde_json::Value::Null, ReadBackReport::json);
            serde_json::to_string_pretty(&out).expect("serialises") + "\n"
        }
        (_, read_back) => {
            let mut text = human_report(&report, sent.as_ref());
            if let Some(read_back) = read_back {
                text.push_str(&read_back.terminal(10));
            }
            text
        }
    };
    if std::io::stdout().write_all(text.as_bytes()).is_err() {
        return EXIT_IO;
    }
    if let (Some(path), Some(read_back)) = (&args.html, &read_back)
        && let Err(failed) = write_html(read_back, path)
    {
        code = failed;
    }
    code
}

/// Keeps what the run read back from Klaviyo (its exceptions' lifecycle and its summary) and
/// reads the report of it back from the state file, so that it shows every exception open, not
/// only this run's; `None` when the run read nothing back.
fn read_back(
    store: &Mutex<marketsync::store::Store>,
    report: &Report,
) -> Result<Option<ReadBackReport>, String> {
    if report.read_back.is_none() {
        return Ok(None);
    }
    let now = marketsync::sink::now_ms();
    let mut store = store.lock().expect("store lock");
    exceptions::record(&mut store, report, now)
        .and_then(|_| ReadBackReport::latest(&store, now))
        .map_err(|err| format!("keeping what was read back from Klaviyo: {err}"))
}

/// The window asked for, from the flags and `reconcile:` in client.yaml.
fn ask(args: &Args, settings: &ReconcileSettings) -> Result<Ask, String> {
    let time = |flag: &str, text: &Option<String>| -> Result<_, String> {
        text.as_deref()
            .map(|t| {
                chrono::DateTime::parse_from_rfc3339(t.trim())
                    .map(|t| t.with_timezone(&chrono::Utc))
                    .map_err(|e| {
                        format!(
                            "{flag} `{t}` is not an RFC 3339 time ({e}), such as 2026-11-28T00:00:00Z"
                        )
                    })
            })
            .transpose()
    };
    let since = time("--since", &args.since)?;
    let until = time("--until", &args.until)?;
    if let (Some(since), Some(until)) = (since, until)
        && since >= until
    {
        return Err(format!(
            "--since {} is not before --until {}: the window would be empty",
            args.since.as_deref().unwrap_or_default(),
            args.until.as_deref().unwrap_or_default()
        ));
    }
    let length = match &args.window {
        Some(text) => Span::parse(text).map_err(|problem| format!("--window {problem}"))?,
        None => settings.window,
    };
    let chrono = |span: Span| chrono::Duration::milliseconds(span.millis());
    Ok(Ask {
        since,
        until,
        length: chrono(length),
        length_asked: args.window.is_some(),
        settle: chrono(settings.settle),
    })
}

/// The Marketplacer client, from client.yaml's `marketplacer:` (or `url`, --marketplacer-url)
/// and the key's variable; and the page size. Shared with `serve`'s schedule.
pub(super) fn marketplacer_client(
    url: Option<&String>,
    engine: &Engine,
) -> Result<(Client, u32), String> {
    let settings = match (url, &engine.settings().marketplacer) {
        (Some(url), Some(settings)) => MarketplacerSettings {
            url: url.clone(),
            ..settings.clone()
        },
        (Some(url), None) => MarketplacerSettings::new(url.clone()),
        (None, Some(settings)) => settings.clone(),
        (None, None) => {
            return Err(
                "no Marketplacer instance to read: add `marketplacer: { url: https://… }` to the \
                 client's client.yaml, or give --marketplacer-url"
                    .into(),
            );
        }
    };
    let variable = &settings.api_key_env;
    let key = std::env::var(variable)
        .ok()
        .filter(|k| !k.trim().is_empty())
        .ok_or_else(|| {
            format!(
                "set {variable} to the instance's Operator API key (Marketplacer's admin portal: Configuration → API keys)"
            )
        })?;
    let key = ApiKey::checked(key.trim())
        .map_err(|problem| format!("{variable} {problem} (the key is not printed)"))?;
    let client = Client::new(&settings.url, key, marketplacer::Options::from(&settings))
        .map_err(|e| e.to_string())?;
    Ok((client, settings.page_size))
}

/// Says why a run stopped, and gives its exit code. The checkpoint is kept.
fn reconcile_failed(err: &ReconcileError) -> u8 {
    eprintln!("error: {err}");
    let code = match err {
        ReconcileError::Marketplacer(MarketplacerError::KeyRefused { .. })
        | ReconcileError::Klaviyo(ReadError::KeyRefused { .. }) => EXIT_KEY_REFUSED,
        ReconcileError::Klaviyo(ReadError::Unavailable { .. }) => EXIT_UNAVAILABLE,
        ReconcileError::Marketplacer(
            MarketplacerError::Unreachable { .. } | MarketplacerError::Unavailable { .. },
        ) => EXIT_UNAVAILABLE,
        ReconcileError::Queries(_) => EXIT_BAD_MAPPINGS,
        ReconcileError::Window(_) => EXIT_USAGE,
        _ => EXIT_IO,
    };
    if matches!(code, EXIT_UNAVAILABLE | EXIT_IO | EXIT_KEY_REFUSED) {
        eprintln!(
            "the run's checkpoint is kept: `marketsync reconcile` again (with no window, or the same one) goes on from it"
        );
    }
    code
}

fn join(counts: &std::collections::BTreeMap<String, u64>) -> String {
    counts
        .iter()
        .map(|(name, n)| format!("{n} {name}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The report for a person.
fn human_report(report: &Report, sent: Option<&DeliveryReport>) -> String {
    let f: &Findings = &report.findings;
    let mut out = format!(
        "reconciled {} .. {} (settle {}){}{}\n",
        report.window.since_text(),
        report.window.until_text(),
        describe(report.settle),
        if report.resumed {
            ", resumed from its checkpoint"
        } else {
            ""
        },
        if report.report_only {
            ", report only: nothing queued"
        } else {
            ""
        }
    );
    let mut line = |label: &str, value: String| out.push_str(&format!("  {label:<30} {value}\n"));
    line(
        "marketplace",
        f.marketplace
            .clone()
            .unwrap_or_else(|| "(not named)".into()),
    );
    if f.webhooks.is_empty() {
        line("webhooks", "every webhook type read is enabled".into());
    }
    for finding in &f.webhooks {
        let what = match (&finding.id, finding.problem.as_str()) {
            (Some(id), "disabled") => format!(
                "{} webhook {id} is DISABLED: nothing after its failure arrived",
                finding.kind
            ),
            _ => format!("no {} webhook is registered", finding.kind),
        };
        line("webhooks", what);
    }
    if f.native_klaviyo_tracking {
        line(
            "Marketplacer's Klaviyo",
            "e-commerce tracking is ON: it sends its own Placed Order beside ours".into(),
        );
    }
    let read: u64 = f.read.values().sum();
    line(
        "records read",
        if read == 0 {
            "0".into()
        } else {
            format!("{read} ({})", join(&f.read))
        },
    );
    if f.outside_window > 0 {
        line(
            "  changed outside the window",
            format!("{} (not checked)", f.outside_window),
        );
    }
    line("requests expected", f.expected.to_string());
    line("  already accepted", f.accepted.to_string());
    line("  already queued", f.queued.to_string());
    let missing = f.missing_total();
    let label = if report.report_only {
        "  missing (not queued)"
    } else {
        "  missing, queued as repairs"
    };
    line(label, missing.to_string());
    for (mapping, n) in &f.missing {
        line(&format!("    {mapping}"), n.to_string());
    }
    if f.left_with_dead_letters > 0 {
        line(
            "  left with their dead letters",
            f.left_with_dead_letters.to_string(),
        );
    }
    if f.unchecked > 0 {
        line("  not checkable (no key)", f.unchecked.to_string());
    }
    if !f.mapping_errors.is_empty() {
        line("mapping errors", join(&f.mapping_errors));
    }
    let d = &f.dead_letters;
    line(
        "dead letters met",
        if d.met == 0 {
            "0".into()
        } else {
            format!(
                "{} (requeued {}, closed as accepted {}, left open {})",
                d.met, d.requeued, d.closed, d.left_open
            )
        },
    );
    line(
        "invoice amendments",
        if f.amendments_without_refund_request > 0 {
            format!(
                "{} ({} without a refunded refund request: refunds no mapping sends)",
                f.amendments, f.amendments_without_refund_request
            )
        } else {
            f.amendments.to_string()
        },
    );
    line(
        "Marketplacer",
        format!(
            "{} requests, {:.1}s waiting for its answers, {:.1}s waiting on its limits",
            f.marketplacer_requests,
            f.answering_ms as f64 / 1000.0,
            report.waited().as_secs_f64()
        ),
    );
    if let Some(read) = &report.read_back {
        // By class, with money and the trend, in the read-back report that follows.
        line(
            "Klaviyo read back",
            if read.discrepancies.is_empty() {
                "holds what the window implies".into()
            } else {
                format!("{} finding(s), by class below", read.discrepancies.len())
            },
        );
        if f.requeued_from_klaviyo > 0 {
            let label = "  lost by Klaviyo, queued again";
            line(label, f.requeued_from_klaviyo.to_string());
        }
        for note in &f.read_back_notes {
            line("  note", note.clone());
        }
        let requests: u64 = read.reads.iter().map(|r| r.requests).sum();
        line(
            "Klaviyo reads",
            format!(
                "{requests} requests ({}), {:.1}s waiting on its limits",
                read.reads
                    .iter()
                    .map(|r| format!("{} {}", r.requests, r.endpoint))
                    .collect::<Vec<_>>()
                    .join(", "),
                read.reads.iter().map(|r| r.waited_ms).sum::<u64>() as f64 / 1000.0
            ),
        );
    } else {
        line("Klaviyo read back", "not read (--no-klaviyo-read)".into());
    }
    line("took", format!("{:.1}s", report.elapsed.as_secs_f64()));
    if let Some(sent) = sent {
        let total: usize = sent.sent.values().sum();
        line("sent to Klaviyo", total.to_string());
        let dead: usize = sent.dead_letters.values().sum();
        if dead > 0 {
            line("dead-lettered while sending", dead.to_string());
        }
    }
    out
}

/// The report for a script.
fn json_report(report: &Report, sent: Option<&DeliveryReport>) -> serde_json::Value {
    let mut out = json!({
        "run": report.run_id,
        "window": {"since": report.window.since_text(), "until": report.window.until_text()},
        "settle": describe(report.settle),
        "resumed": report.resumed,
        "report_only": report.report_only,
        "notes": report.notes,
        "findings": report.findings,
        "missing": report.findings.missing_total(),
        "anything_wrong": report.findings.anything_wrong()
            || report.read_back.as_ref().is_some_and(|r| !r.discrepancies.is_empty()),
        "read_back": report.read_back,
        "elapsed_seconds": report.elapsed.as_secs_f64(),
        "mapping_seconds": report.mapping.as_secs_f64(),
        "state_file_seconds": report.storing.as_secs_f64(),
    });
    if let Some(sent) = sent {
        out["sent"] = json!({
            "by_mapping": sent.sent,
            "dead_letters": sent.dead_letters,
            "retried": sent.retried,
        });
    }
    out
}
