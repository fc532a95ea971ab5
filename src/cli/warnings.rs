//! `marketsync warnings`: what intake left out or changed (an unreadable phone, an unreadable
//! consent value), kept with the delivery it came from.

use super::dead::report;
use super::review::{Since, age, iso, parse_since};
use super::{EXIT_OK, StateArgs};
use marketsync::sink::now_ms;
use serde_json::{Value as Json, json};

/// Warnings raised at intake.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: WarningsCommand,
}

#[derive(clap::Subcommand)]
enum WarningsCommand {
    /// One line per warning: id, age, marketplace and delivery, where it was read, the warning.
    #[command(after_help = "Examples:
  marketsync warnings list --since 24h
  marketsync warnings list --format json")]
    List {
        #[command(flatten)]
        state: StateArgs,
        /// Only those raised since: an RFC 3339 time or a duration back from now (24h, 7d).
        #[arg(long, value_name = "T", value_parser = parse_since)]
        since: Option<Since>,
        /// `human` or `json`.
        #[arg(long, value_name = "FORMAT", default_value = "human", value_parser = ["human", "json"])]
        format: String,
    },
}

pub fn execute(args: Args) -> u8 {
    let WarningsCommand::List {
        state,
        since,
        format,
    } = args.command;
    let store = match state.open_existing() {
        Ok(store) => store,
        Err(code) => return code,
    };
    let now = now_ms();
    let warnings = match store.warnings(since.map(|s| s.start(now))) {
        Ok(warnings) => warnings,
        Err(err) => return report(&err),
    };
    if format == "json" {
        let rows: Vec<Json> = warnings
            .iter()
            .map(|w| {
                json!({
                    "id": w.id,
                    "message": w.message,
                    "marketplace": w.delivery.0,
                    "delivery_id": w.delivery.1,
                    "origin": w.origin,
                    "created_at": iso(w.created_at),
                    "age_seconds": (now - w.created_at) / 1000,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).expect("serialises")
        );
        return EXIT_OK;
    }
    for w in &warnings {
        println!(
            "{:>6}  {:>4}  {} {}  {}  {}",
            w.id,
            age(now - w.created_at),
            w.delivery.0,
            w.delivery.1,
            w.origin,
            w.message
        );
    }
    eprintln!("{} warning(s)", warnings.len());
    EXIT_OK
}
