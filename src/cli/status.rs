//! `marketsync status`: what is waiting, what failed, and when Klaviyo last said yes.

use super::{EXIT_IO, EXIT_OK, StateArgs};
use marketsync::sink::now_ms;
use serde_json::json;

/// Show the queue per lane, dead letters by category and the last success per endpoint.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  marketsync status
  marketsync status --state /var/lib/marketsync/state.db --format json")]
pub struct Args {
    #[command(flatten)]
    state: StateArgs,
    /// `human` or `json`.
    #[arg(long, value_name = "FORMAT", default_value = "human", value_parser = ["human", "json"])]
    format: String,
}

pub fn execute(args: Args) -> u8 {
    let store = match args.state.open_existing() {
        Ok(store) => store,
        Err(code) => return code,
    };
    let now = now_ms();
    let status = match store.status(now) {
        Ok(status) => status,
        Err(err) => {
            eprintln!("error: {err}");
            return EXIT_IO;
        }
    };
    let lanes: Vec<serde_json::Value> = ["transaction", "profile"]
        .iter()
        .map(|lane| {
            let s = status.lanes.get(*lane).copied().unwrap_or_default();
            json!({"lane": lane, "depth": s.depth, "oldest_pending_seconds": s.oldest_age as f64 / 1000.0})
        })
        .collect();
    if args.format == "json" {
        let last: serde_json::Map<String, serde_json::Value> = status
            .last_success
            .iter()
            .map(|(endpoint, at)| (endpoint.clone(), json!(iso(*at))))
            .collect();
        let out = json!({
            "lanes": lanes,
            "dead_letters": status.dead_letters,
            "last_success": last,
            "exceptions": status.exceptions,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("status serialises")
        );
        return EXIT_OK;
    }
    println!("queue:");
    for lane in &lanes {
        println!(
            "  {:<12} {:>8} pending, oldest {:.0}s",
            lane["lane"].as_str().unwrap_or_default(),
            lane["depth"].as_u64().unwrap_or_default(),
            lane["oldest_pending_seconds"].as_f64().unwrap_or_default()
        );
    }
    println!(
        "dead letters:{}",
        if status.dead_letters.is_empty() {
            " none"
        } else {
            ""
        }
    );
    for (category, count) in &status.dead_letters {
        println!("  {category:<28} {count}");
    }
    println!(
        "last success:{}",
        if status.last_success.is_empty() {
            " never"
        } else {
            ""
        }
    );
    for (endpoint, at) in &status.last_success {
        println!("  {endpoint:<44} {}", iso(*at));
    }
    println!("exceptions open: {}", status.exceptions);
    EXIT_OK
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}
