//! `marketsync exceptions`: requests sent out of the ordinary (after their ordering hold ran
//! out, with a phone Klaviyo refused left out, ...), listed until an operator resolves them.

use super::dead::{pretty, print_indented, report};
use super::review::{Since, age, concerns, iso, json_or_text, one_line, parse_since};
use super::{EXIT_OK, EXIT_USAGE, StateArgs};
use marketsync::sink::now_ms;
use marketsync::store::{Exception, Filter};
use serde_json::{Value as Json, json};

/// Work through exceptions: list, show, resolve.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: ExceptionsCommand,
}

#[derive(clap::Subcommand)]
enum ExceptionsCommand {
    /// One line per open exception: id, age, kind, mapping, what it concerns, the request's
    /// state.
    #[command(after_help = "Examples:
  marketsync exceptions list
  marketsync exceptions list --kind sent-after-hold --since 7d --format json")]
    List {
        #[command(flatten)]
        state: StateArgs,
        /// Only this kind (`sent-after-hold`, `phone-removed`).
        #[arg(long, value_name = "K")]
        kind: Option<String>,
        /// Only this mapping.
        #[arg(long, value_name = "M")]
        mapping: Option<String>,
        /// Only those flagged since: an RFC 3339 time or a duration back from now (24h, 7d).
        #[arg(long, value_name = "T", value_parser = parse_since)]
        since: Option<Since>,
        /// `human` or `json`.
        #[arg(long, value_name = "FORMAT", default_value = "human", value_parser = ["human", "json"])]
        format: String,
    },
    /// An exception in full: the request as sent, every attempt, the delivery as stored.
    #[command(after_help = "Examples:
  marketsync exceptions show 7
  marketsync exceptions show 7 --format json")]
    Show {
        #[command(flatten)]
        state: StateArgs,
        /// The exception's id (the first column of `exceptions list`).
        id: i64,
        /// `human` or `json`.
        #[arg(long, value_name = "FORMAT", default_value = "human", value_parser = ["human", "json"])]
        format: String,
    },
    /// Close exceptions once looked at: each is kept with the reason and the time, and leaves
    /// the count `status` shows.
    #[command(after_help = "Examples:
  marketsync exceptions resolve 7 8 --reason \"fulfilment checked in the Klaviyo timeline\"
  marketsync exceptions resolve --kind phone-removed --reason \"phones fixed in Marketplacer\"

All or nothing: if one id does not exist or is resolved already, none is resolved (exit 1).")]
    Resolve {
        #[command(flatten)]
        state: StateArgs,
        /// Exception ids; or choose them with --kind (and --mapping).
        #[arg(required_unless_present = "kind", conflicts_with = "kind")]
        ids: Vec<i64>,
        /// Every open exception of this kind.
        #[arg(long, value_name = "K")]
        kind: Option<String>,
        /// With --kind: only exceptions of this mapping.
        #[arg(long, value_name = "M", requires = "kind")]
        mapping: Option<String>,
        /// What was found or done: kept with each exception.
        #[arg(long, value_name = "TEXT", required = true)]
        reason: String,
    },
}

pub fn execute(args: Args) -> u8 {
    match args.command {
        ExceptionsCommand::List {
            state,
            kind,
            mapping,
            since,
            format,
        } => {
            let store = match state.open_existing() {
                Ok(store) => store,
                Err(code) => return code,
            };
            let now = now_ms();
            let filter = Filter {
                category: kind.as_deref(),
                mapping: mapping.as_deref(),
                since: since.map(|s| s.start(now)),
            };
            match store.open_exceptions(&filter) {
                Ok(found) => list(&found, now, &format),
                Err(err) => report(&err),
            }
        }
        ExceptionsCommand::Show { state, id, format } => {
            let store = match state.open_existing() {
                Ok(store) => store,
                Err(code) => return code,
            };
            let shown = store
                .find_exception(id)
                .and_then(|e| Ok((store.attempts(e.outbox_id)?, e)));
            match shown {
                Ok((attempts, exception)) => show(&exception, &attempts, &format),
                Err(err) => report(&err),
            }
        }
        ExceptionsCommand::Resolve {
            state,
            ids,
            kind,
            mapping,
            reason,
        } => {
            if reason.trim().is_empty() {
                eprintln!("error: --reason must say what was found or done");
                return EXIT_USAGE;
            }
            let mut store = match state.open_existing() {
                Ok(store) => store,
                Err(code) => return code,
            };
            let ids = match kind {
                Some(kind) => {
                    let filter = Filter {
                        category: Some(&kind),
                        mapping: mapping.as_deref(),
                        since: None,
                    };
                    match store.open_exceptions(&filter) {
                        Ok(found) => found.iter().map(|e| e.id).collect(),
                        Err(err) => return report(&err),
                    }
                }
                None => ids,
            };
            if ids.is_empty() {
                eprintln!("no open exceptions match; nothing resolved");
                return EXIT_OK;
            }
            match store.resolve_exceptions(&ids, &reason, now_ms()) {
                Ok(()) => {
                    let shown: Vec<String> = ids.iter().map(i64::to_string).collect();
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
    }
}

fn exception_concerns(e: &Exception) -> String {
    concerns(Some(&e.body), &e.text).unwrap_or_else(|| format!("delivery {}", e.delivery.1))
}

fn summary_json(e: &Exception, now: i64) -> Json {
    json!({
        "id": e.id,
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

fn list(found: &[Exception], now: i64, format: &str) -> u8 {
    if format == "json" {
        let rows: Vec<Json> = found.iter().map(|e| summary_json(e, now)).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).expect("serialises")
        );
        return EXIT_OK;
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
    eprintln!("{} open exception(s)", found.len());
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
