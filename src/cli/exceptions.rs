//! `marketsync exceptions`: what an operator works through until it is resolved. Two sources,
//! one list:
//!
//! - requests sent out of the ordinary (after their ordering hold ran out, with a phone Klaviyo
//!   refused left out, ...), ids `7`;
//! - what reading Klaviyo back found (a missing Placed Order, a second sender, a profile
//!   subscribed without consent on record, ...), ids `R12`, ranked most harmful first, their
//!   class as the kind. A later reconciliation that no longer finds one resolves it; a person
//!   resolves it with a reason.
//!
//! `exceptions report` shows the latest read-back report from the state file, as
//! `reconcile` printed it.

use super::dead::{pretty, print_indented, report};
use super::review::{Since, age, concerns, iso, json_or_text, one_line, parse_since};
use super::{EXIT_IO, EXIT_OK, EXIT_OPEN_EXCEPTIONS, EXIT_REJECTED, EXIT_USAGE, StateArgs};
use marketsync::reconcile::exceptions::{ID_PREFIX, ReadBackException};
use marketsync::reconcile::impact::{Class, Tier};
use marketsync::reconcile::report::{self as read_back, ReadBackReport, explain, stake};
use marketsync::sink::now_ms;
use marketsync::store::{Exception, Filter, ReadBackFilter, Store, StoreError};
use serde_json::{Value as Json, json};
use std::path::{Path, PathBuf};

/// Work through exceptions: list, show, resolve; and the read-back report.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: ExceptionsCommand,
}

/// The kinds of flagged requests (the read-back's kinds are its classes).
const REQUEST_KINDS: [&str; 2] = ["sent-after-hold", "phone-removed"];

#[derive(clap::Subcommand)]
enum ExceptionsCommand {
    /// One line per open exception: those read back from Klaviyo (id R…, most harmful first:
    /// tier, class, money at stake, what it concerns), then flagged requests (id, age, kind,
    /// mapping, what it concerns, the request's state).
    #[command(after_help = "Examples:
  marketsync exceptions list
  marketsync exceptions list --tier compliance
  marketsync exceptions list --kind missing-placed-order --format json
  marketsync exceptions list --kind sent-after-hold --since 7d

Kinds read back from Klaviyo (tier): subscribed-without-evidence (compliance); double-source,
webhook-disabled, revenue-gap (systemic); missing-placed-order, wrong-order-value,
missing-fulfilled-order, tracking-missing, missing-refund, orphaned-refund, consent-missed
(money); duplicate-profile, attribute-drift (hygiene). Kinds of flagged requests:
sent-after-hold, phone-removed.")]
    List {
        #[command(flatten)]
        state: StateArgs,
        /// Only this kind: a read-back class (`missing-placed-order`) or a flagged request's
        /// kind (`sent-after-hold`).
        #[arg(long, value_name = "K")]
        kind: Option<String>,
        /// Only read-back exceptions of this tier: compliance, systemic, money, hygiene.
        #[arg(long, value_name = "T", value_parser = parse_tier)]
        tier: Option<Tier>,
        /// Only flagged requests of this mapping.
        #[arg(long, value_name = "M")]
        mapping: Option<String>,
        /// Only those flagged (or first read back) since: an RFC 3339 time or a duration back
        /// from now (24h, 7d).
        #[arg(long, value_name = "T", value_parser = parse_since)]
        since: Option<Since>,
        /// `human` or `json`.
        #[arg(long, value_name = "FORMAT", default_value = "human", value_parser = ["human", "json"])]
        format: String,
    },
    /// An exception in full. A flagged request: the request as sent, every attempt, the
    /// delivery as stored. One read back: what it means for the customer, who fixes it, what to
    /// do, the ids involved and its history.
    #[command(after_help = "Examples:
  marketsync exceptions show 7
  marketsync exceptions show R12 --format json")]
    Show {
        #[command(flatten)]
        state: StateArgs,
        /// The exception's id (the first column of `exceptions list`): `7`, or `R12` for one
        /// read back from Klaviyo.
        #[arg(value_parser = parse_id)]
        id: ExceptionId,
        /// `human` or `json`.
        #[arg(long, value_name = "FORMAT", default_value = "human", value_parser = ["human", "json"])]
        format: String,
    },
    /// Close exceptions once dealt with: each is kept with the reason and the time, and leaves
    /// the counts `status`, the status page and the alerts show.
    #[command(after_help = "Examples:
  marketsync exceptions resolve 7 8 --reason \"fulfilment checked in the Klaviyo timeline\"
  marketsync exceptions resolve R12 --reason \"unsubscribed in Klaviyo; checkout said no\"
  marketsync exceptions resolve --kind phone-removed --reason \"phones fixed in Marketplacer\"
  marketsync exceptions resolve --kind duplicate-profile --reason \"merged in Klaviyo\"

All or nothing: if one id does not exist or is resolved already, none is resolved (exit 1).
A read-back exception that the next reconciliation still finds opens again, as a new id.")]
    Resolve {
        #[command(flatten)]
        state: StateArgs,
        /// Exception ids (`7`, `R12`); or choose them with --kind (and --mapping).
        #[arg(required_unless_present = "kind", conflicts_with = "kind", value_parser = parse_id)]
        ids: Vec<ExceptionId>,
        /// Every open exception of this kind (a read-back class, or a flagged request's kind).
        #[arg(long, value_name = "K")]
        kind: Option<String>,
        /// With --kind: only flagged requests of this mapping.
        #[arg(long, value_name = "M", requires = "kind")]
        mapping: Option<String>,
        /// What was found or done: kept with each exception.
        #[arg(long, value_name = "TEXT", required = true)]
        reason: String,
    },
    /// The latest read-back report: the last reconciliation that read Klaviyo back, with every
    /// exception open now and the trend since the run before it.
    #[command(after_help = "Examples:
  marketsync exceptions report
  marketsync exceptions report --html weekly-review.html
  marketsync exceptions report --format jsonl > exceptions.jsonl

--format human: a table by class (tier, open, new, resolved, money at stake), revenue per
marketplace, the trend, then the top exceptions. --format json: the run's figures and every open
exception. --format jsonl: one open exception a line (class, tier, money at stake, order,
profile and event ids, first seen, suggested action). --html FILE: the weekly-review page, one
self-contained file.

Exit 0, 8 when a compliance or systemic exception is open, 1 when no reconciliation has read
Klaviyo back into this state file yet, 4 on a state or output error.")]
    Report {
        #[command(flatten)]
        state: StateArgs,
        /// `human`, `json` or `jsonl`.
        #[arg(long, value_name = "FORMAT", default_value = "human", value_parser = ["human", "json", "jsonl"])]
        format: String,
        /// Also write the weekly-review page here.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        /// How many exceptions the human form shows in full.
        #[arg(long, value_name = "N", default_value_t = 10)]
        top: usize,
    },
}

/// An exception's id: a flagged request's, or (`R12`) one read back from Klaviyo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExceptionId {
    Request(i64),
    ReadBack(i64),
}

impl std::fmt::Display for ExceptionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExceptionId::Request(id) => write!(f, "{id}"),
            ExceptionId::ReadBack(id) => write!(f, "{ID_PREFIX}{id}"),
        }
    }
}

fn parse_id(text: &str) -> Result<ExceptionId, String> {
    let text = text.trim();
    let (read_back, number) = match text.strip_prefix([ID_PREFIX, ID_PREFIX.to_ascii_lowercase()]) {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    match number.parse::<i64>() {
        Ok(id) if id > 0 && read_back => Ok(ExceptionId::ReadBack(id)),
        Ok(id) if id > 0 => Ok(ExceptionId::Request(id)),
        _ => Err(format!(
            "`{text}` is not an exception id: write the number `exceptions list` shows, `7` for \
             a flagged request or `R12` for one read back from Klaviyo"
        )),
    }
}

fn parse_tier(text: &str) -> Result<Tier, String> {
    Tier::ALL
        .into_iter()
        .find(|t| t.name() == text.trim())
        .ok_or_else(|| format!("`{text}` is not a tier: compliance, systemic, money or hygiene"))
}

/// What `--kind` names: a read-back class, or a flagged request's kind.
enum Kind<'a> {
    ReadBack(Class),
    Request(&'a str),
}

fn kind_of(kind: &str) -> Kind<'_> {
    match Class::from_name(kind.trim()) {
        Some(class) => Kind::ReadBack(class),
        None => Kind::Request(kind),
    }
}

/// When `kind` matched nothing and is neither a class nor a request kind: the nearest name.
fn did_you_mean(kind: &str) {
    let known: Vec<&str> = Class::ALL
        .iter()
        .map(|c| c.name())
        .chain(REQUEST_KINDS)
        .collect();
    if known.contains(&kind) {
        return;
    }
    let nearest = known
        .iter()
        .map(|name| (strsim::levenshtein(kind, name), *name))
        .min();
    match nearest {
        Some((distance, name)) if distance <= 3 => {
            eprintln!("note: no exception is of kind `{kind}`; did you mean `{name}`?");
        }
        _ => eprintln!(
            "note: no exception is of kind `{kind}`; the kinds are {}",
            known.join(", ")
        ),
    }
}

pub fn execute(args: Args) -> u8 {
    match args.command {
        ExceptionsCommand::List {
            state,
            kind,
            tier,
            mapping,
            since,
            format,
        } => {
            let kind = kind.as_deref().map(kind_of);
            let contradiction = match (&kind, tier, &mapping) {
                (_, Some(_), Some(_)) => Some("--tier and --mapping"),
                (Some(Kind::Request(_)), Some(_), _) => {
                    Some("--tier and a flagged request's --kind")
                }
                (Some(Kind::ReadBack(_)), _, Some(_)) => Some("--mapping and a read-back --kind"),
                _ => None,
            };
            if let Some(both) = contradiction {
                eprintln!(
                    "error: {both} together match nothing: --tier and the read-back kinds narrow \
                     what was read back from Klaviyo, --mapping and the other kinds narrow \
                     flagged requests"
                );
                return EXIT_USAGE;
            }
            let store = match state.open_existing() {
                Ok(store) => store,
                Err(code) => return code,
            };
            let now = now_ms();
            let since = since.map(|s| s.start(now));
            // A class, a tier: read-back only. A request kind, a mapping: flagged requests only.
            let want_read_back = mapping.is_none() && !matches!(kind, Some(Kind::Request(_)));
            let want_requests = tier.is_none() && !matches!(kind, Some(Kind::ReadBack(_)));
            let read = || -> Result<_, StoreError> {
                let read_back = if want_read_back {
                    store.open_read_back_exceptions(&ReadBackFilter {
                        class: match kind {
                            Some(Kind::ReadBack(class)) => Some(class),
                            _ => None,
                        },
                        tier,
                        since,
                    })?
                } else {
                    Vec::new()
                };
                let requests = if want_requests {
                    store.open_exceptions(&Filter {
                        category: match kind {
                            Some(Kind::Request(kind)) => Some(kind),
                            _ => None,
                        },
                        mapping: mapping.as_deref(),
                        since,
                    })?
                } else {
                    Vec::new()
                };
                Ok((read_back, requests))
            };
            match read() {
                Ok((read_back, requests)) => {
                    if read_back.is_empty()
                        && requests.is_empty()
                        && let Some(Kind::Request(kind)) = kind
                    {
                        did_you_mean(kind);
                    }
                    list(&read_back, &requests, now, &format)
                }
                Err(err) => report(&err),
            }
        }
        ExceptionsCommand::Show { state, id, format } => {
            let store = match state.open_existing() {
                Ok(store) => store,
                Err(code) => return code,
            };
            match id {
                ExceptionId::Request(id) => {
                    let shown = store
                        .find_exception(id)
                        .and_then(|e| Ok((store.attempts(e.outbox_id)?, e)));
                    match shown {
                        Ok((attempts, exception)) => show(&exception, &attempts, &format),
                        Err(err) => report(&err),
                    }
                }
                ExceptionId::ReadBack(id) => match store.find_read_back_exception(id) {
                    Ok(exception) => show_read_back(&exception, &format),
                    Err(err) => report(&err),
                },
            }
        }
        ExceptionsCommand::Resolve {
            state,
            ids,
            kind,
            mapping,
            reason,
        } => resolve(&state, ids, kind, mapping, &reason),
        ExceptionsCommand::Report {
            state,
            format,
            html,
            top,
        } => {
            let store = match state.open_existing() {
                Ok(store) => store,
                Err(code) => return code,
            };
            match ReadBackReport::latest(&store, now_ms()) {
                Ok(Some(report)) => print_report(&report, &format, html.as_deref(), top),
                Ok(None) => {
                    eprintln!(
                        "nothing to report: no reconciliation has read Klaviyo back into {} yet",
                        state.path.display()
                    );
                    EXIT_REJECTED
                }
                Err(err) => report(&err),
            }
        }
    }
}

fn resolve(
    state: &StateArgs,
    ids: Vec<ExceptionId>,
    kind: Option<String>,
    mapping: Option<String>,
    reason: &str,
) -> u8 {
    if reason.trim().is_empty() {
        eprintln!("error: --reason must say what was found or done");
        return EXIT_USAGE;
    }
    if kind
        .as_deref()
        .map(kind_of)
        .is_some_and(|k| matches!(k, Kind::ReadBack(_)))
        && mapping.is_some()
    {
        eprintln!("error: --mapping narrows flagged requests only; read-back exceptions have none");
        return EXIT_USAGE;
    }
    let mut store = match state.open_existing() {
        Ok(store) => store,
        Err(code) => return code,
    };
    let ids = match kind {
        Some(kind) => {
            let found = match kind_of(&kind) {
                Kind::ReadBack(class) => store
                    .open_read_back_exceptions(&ReadBackFilter {
                        class: Some(class),
                        ..ReadBackFilter::default()
                    })
                    .map(|found| {
                        found
                            .iter()
                            .map(|e| ExceptionId::ReadBack(e.id))
                            .collect::<Vec<_>>()
                    }),
                Kind::Request(kind) => store
                    .open_exceptions(&Filter {
                        category: Some(kind),
                        mapping: mapping.as_deref(),
                        since: None,
                    })
                    .map(|found| found.iter().map(|e| ExceptionId::Request(e.id)).collect()),
            };
            match found {
                Ok(found) => {
                    if found.is_empty() {
                        did_you_mean(&kind);
                    }
                    found
                }
                Err(err) => return report(&err),
            }
        }
        None => ids,
    };
    if ids.is_empty() {
        eprintln!("no open exceptions match; nothing resolved");
        return EXIT_OK;
    }
    let (requests, read_back): (Vec<i64>, Vec<i64>) = (
        ids.iter()
            .filter_map(|id| match id {
                ExceptionId::Request(id) => Some(*id),
                ExceptionId::ReadBack(_) => None,
            })
            .collect(),
        ids.iter()
            .filter_map(|id| match id {
                ExceptionId::ReadBack(id) => Some(*id),
                ExceptionId::Request(_) => None,
            })
            .collect(),
    );
    let now = now_ms();
    let resolved = store.in_transaction(|store: &mut Store| {
        if !requests.is_empty() {
            store.resolve_exceptions(&requests, reason, now)?;
        }
        if !read_back.is_empty() {
            store.resolve_read_back_exceptions(&read_back, reason, now)?;
        }
        Ok::<_, StoreError>(())
    });
    match resolved {
        Ok(()) => {
            let shown: Vec<String> = ids.iter().map(ExceptionId::to_string).collect();
            eprintln!("{} exception(s) resolved: {}", ids.len(), shown.join(", "));
            EXIT_OK
        }
        Err(err) => {
            let code = report(&err);
            eprintln!("nothing was resolved");
            code
        }
    }
}

/// Prints a read-back report in `format` (and writes the page to `html`), and gives the exit
/// code: [`EXIT_OPEN_EXCEPTIONS`] while a compliance or systemic exception is open.
fn print_report(report: &ReadBackReport, format: &str, html: Option<&Path>, top: usize) -> u8 {
    let text = match format {
        "json" => serde_json::to_string_pretty(&report.json()).expect("serialises") + "\n",
        "jsonl" => report.jsonl(),
        _ => report.terminal(top),
    };
    if let Err(err) = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes()) {
        eprintln!("error: standard output: {err}");
        return EXIT_IO;
    }
    if let Some(path) = html
        && let Err(code) = write_html(report, path)
    {
        return code;
    }
    if report.current.fails() {
        EXIT_OPEN_EXCEPTIONS
    } else {
        EXIT_OK
    }
}

/// Writes the page to `path`, whole or not at all (a temporary file beside it, renamed).
pub(super) fn write_html(report: &ReadBackReport, path: &Path) -> Result<(), u8> {
    let building = path.with_extension("html.part");
    let written =
        std::fs::write(&building, report.html()).and_then(|()| std::fs::rename(&building, path));
    match written {
        Ok(()) => {
            eprintln!("report page written to {}", path.display());
            Ok(())
        }
        Err(err) => {
            let _ = std::fs::remove_file(&building);
            eprintln!(
                "error: cannot write the report page {}: {err}",
                path.display()
            );
            Err(EXIT_IO)
        }
    }
}

fn exception_concerns(e: &Exception) -> String {
    concerns(Some(&e.body), &e.text).unwrap_or_else(|| format!("delivery {}", e.delivery.1))
}

fn summary_json(e: &Exception, now: i64) -> Json {
    json!({
        "id": e.id,
        "source": "request",
        "kind": e.kind,
        "mapping": e.mapping,
        "concerns": exception_concerns(e),
        "request_state": e.request_state,
        "flagged_at": iso(e.flagged_at),
        "age_seconds": (now - e.flagged_at) / 1000,
        "marketplace": e.delivery.0,
        "delivery_id": e.delivery.1,
        "origin": e.origin,
    })
}

fn read_back_json(e: &ReadBackException, now: i64) -> Json {
    let d = &e.discrepancy;
    json!({
        "id": e.label(),
        "source": "read-back",
        "kind": d.class,
        "tier": d.class.tier(),
        "money_at_stake_cents": d.money_cents,
        "money_at_stake": stake(e),
        "currency": d.currency,
        "concerns": read_back::concerns(e),
        "marketplace": d.marketplace,
        "order_id": d.order_id,
        "person": d.person,
        "profile_ids": d.profile_ids,
        "event_ids": d.event_ids,
        "first_seen": iso(e.first_seen),
        "last_seen": iso(e.last_seen),
        "age_seconds": (now - e.first_seen) / 1000,
        "times_seen": e.times_seen,
        "detail": d.detail,
        "suggested_action": d.action,
        "owner": explain(d.class).owner,
        "repaired_automatically": d.class.repaired_automatically(),
    })
}

fn list(read_back: &[ReadBackException], found: &[Exception], now: i64, format: &str) -> u8 {
    if format == "json" {
        let rows: Vec<Json> = read_back
            .iter()
            .map(|e| read_back_json(e, now))
            .chain(found.iter().map(|e| summary_json(e, now)))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).expect("serialises")
        );
        return EXIT_OK;
    }
    if !read_back.is_empty() {
        println!(
            "{:>6}  {:>4}  {:<10}  {:<27} {:>13}  CONCERNS",
            "ID", "AGE", "TIER", "KIND", "AT STAKE"
        );
    }
    for e in read_back {
        println!(
            "{:>6}  {:>4}  {:<10}  {:<27} {:>13}  {}",
            e.label(),
            age(now - e.first_seen),
            e.tier().name(),
            e.class().name(),
            stake(e),
            one_line(&read_back::concerns(e), 48)
        );
    }
    if !found.is_empty() {
        println!(
            "{:>6}  {:>4}  {:<18} {:<20} {:<36} REQUEST",
            "ID", "AGE", "KIND", "MAPPING", "CONCERNS"
        );
    }
    for e in found {
        println!(
            "{:>6}  {:>4}  {:<18} {:<20} {:<36} {}",
            e.id,
            age(now - e.flagged_at),
            e.kind,
            e.mapping,
            one_line(&exception_concerns(e), 36),
            e.request_state
        );
    }
    eprintln!("{} open exception(s)", read_back.len() + found.len());
    EXIT_OK
}

fn show_read_back(e: &ReadBackException, format: &str) -> u8 {
    let now = now_ms();
    let d = &e.discrepancy;
    let explanation = explain(d.class);
    if format == "json" {
        let mut out = read_back_json(e, now);
        out["state"] = json!(if e.closed.is_some() {
            "resolved"
        } else {
            "open"
        });
        out["resolved"] = json!(e.closed.as_ref().map(|r| json!({
            "at": iso(r.at()),
            "how": r,
        })));
        out["first_run"] = json!(e.first_run);
        out["last_run"] = json!(e.last_run);
        out["happened_at"] = json!(d.happened_at.map(iso));
        out["flow_live"] = json!(d.flow_live);
        out["affected"] = json!(d.affected);
        out["key"] = json!(d.key);
        out["explanation"] = json!(explanation);
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("serialises")
        );
        return EXIT_OK;
    }
    let state = if e.closed.is_some() {
        "resolved"
    } else {
        "open"
    };
    println!("exception {} ({state})", e.label());
    if let Some(closed) = &e.closed {
        println!("resolved:  {} — {}", iso(closed.at()), closed.describe());
    }
    println!(
        "kind:      {} ({} tier): {}",
        d.class.name(),
        d.class.tier().name(),
        explanation.title
    );
    println!("concerns:  {}", read_back::concerns(e));
    println!(
        "at stake:  {}{}",
        stake(e),
        if d.flow_live {
            " (a live Klaviyo flow is triggered by this metric)"
        } else {
            ""
        }
    );
    if let Some(at) = d.happened_at {
        println!("happened:  {}", iso(at));
    }
    println!(
        "found:     first {} ({} ago, run {}), last {} (run {}), {} time(s)",
        iso(e.first_seen),
        age(now - e.first_seen),
        e.first_run,
        iso(e.last_seen),
        e.last_run,
        e.times_seen
    );
    if !d.profile_ids.is_empty() {
        println!("profiles:  {}", d.profile_ids.join(", "));
    }
    if !d.event_ids.is_empty() {
        println!("events:    {}", d.event_ids.join(", "));
    }
    if !d.detail.is_empty() {
        println!("\n{}", d.detail);
    }
    if !d.action.is_empty() {
        println!("do:        {}", d.action);
    }
    println!("\nfor the customer: {}", explanation.customer);
    println!(
        "who fixes it:     {}. {}",
        explanation.owner, explanation.fix
    );
    if d.class.repaired_automatically() {
        println!(
            "                  `marketsync reconcile` (not --report-only) queues it again; the \
             next run that no longer finds it resolves it."
        );
    }
    println!("key:       {}", d.key);
    EXIT_OK
}

fn show(e: &Exception, attempts: &[marketsync::store::Attempt], format: &str) -> u8 {
    let now = now_ms();
    if format == "json" {
        let mut out = summary_json(e, now);
        out["state"] = json!(if e.closed.is_some() {
            "resolved"
        } else {
            "open"
        });
        out["resolved_at"] = json!(e.closed.as_ref().map(|c| iso(c.at)));
        out["resolve_reason"] = json!(e.closed.as_ref().and_then(|c| c.reason.clone()));
        out["request"] = json!({"endpoint": e.endpoint, "body": json_or_text(&e.body)});
        out["attempts"] = attempts
            .iter()
            .map(|a| json!({"at": iso(a.at), "status": a.status, "answer": a.answer}))
            .collect();
        out["delivery"] = json_or_text(&e.text);
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("serialises")
        );
        return EXIT_OK;
    }
    let state = if e.closed.is_some() {
        "resolved"
    } else {
        "open"
    };
    println!("exception {} ({state})", e.id);
    if let Some(closed) = &e.closed {
        println!(
            "resolved:  {} — {}",
            iso(closed.at),
            closed.reason.as_deref().unwrap_or("")
        );
    }
    println!("kind:      {}", e.kind);
    println!("mapping:   {}", e.mapping);
    println!("concerns:  {}", exception_concerns(e));
    println!(
        "flagged:   {} ({} ago)",
        iso(e.flagged_at),
        age(now - e.flagged_at)
    );
    println!(
        "delivery:  {} {}, read from {}",
        e.delivery.0, e.delivery.1, e.origin
    );
    println!("\nrequest: POST {} ({})", e.endpoint, e.request_state);
    print_indented(&pretty(&e.body));
    println!(
        "\nattempts:{}",
        if attempts.is_empty() {
            " none recorded"
        } else {
            ""
        }
    );
    for attempt in attempts {
        let status = attempt.status.map_or("-".to_owned(), |s| s.to_string());
        println!("  {}  {status:>3}  {}", iso(attempt.at), attempt.answer);
    }
    println!("\ndelivery as stored:");
    print_indented(&pretty(&e.text));
    EXIT_OK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_a_number_or_r_and_a_number() {
        assert_eq!(parse_id("7"), Ok(ExceptionId::Request(7)));
        assert_eq!(parse_id("R12"), Ok(ExceptionId::ReadBack(12)));
        assert_eq!(parse_id(" r12 "), Ok(ExceptionId::ReadBack(12)));
        assert_eq!(ExceptionId::ReadBack(12).to_string(), "R12");
        for bad in ["", "R", "X12", "-3", "0", "R-1", "12R"] {
            let err = parse_id(bad).unwrap_err();
            assert!(err.contains("`R12`"), "{bad}: {err}");
        }
        assert_eq!(parse_tier("systemic"), Ok(Tier::Systemic));
        assert!(
            parse_tier("urgent")
                .unwrap_err()
                .contains("compliance, systemic")
        );
    }
}
