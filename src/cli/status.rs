//! `marketsync status`: what is waiting, what failed, how late requests reach Klaviyo, and
//! when Klaviyo last said yes.
//!
//! Every figure but the alerts is read from the store, like the status page's, so the two
//! agree. The alerts live in the running `serve` (when each started, what was sent about it),
//! so with `--admin` they are asked of its admin address; a serve that does not answer is
//! itself worth an exit code.

use super::{EXIT_IO, EXIT_OK, StateArgs};
use marketsync::lag::{self, LagFigures};
use marketsync::page::{self, FiringAlert};
use marketsync::reconcile::report;
use marketsync::sink::now_ms;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

/// The short window beside the last hour: is it getting worse right now?
const RECENT_MS: i64 = 10 * 60 * 1000;

/// Show the queue per lane, delivery lag, dead letters and exceptions by category, the last
/// success per endpoint, the exceptions read back from Klaviyo by tier with the last read-back's
/// revenue, and (with --admin) the alerts firing.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  marketsync status
  marketsync status --state /var/lib/marketsync/state.db --format json
  marketsync status --admin http://127.0.0.1:9090

Lag is from a webhook stored to Klaviyo accepting its request: p50 (half are faster), p99 (one
in a hundred is slower) and the slowest, per lane, over the last hour and the last 10 minutes.
With --admin, the alerts firing are asked of serve's admin address (its --admin-listen); exit 4
when it does not answer (the other figures are still printed).")]
pub struct Args {
    #[command(flatten)]
    state: StateArgs,
    /// `human` or `json`.
    #[arg(long, value_name = "FORMAT", default_value = "human", value_parser = ["human", "json"])]
    format: String,
    /// The admin address of the running `marketsync serve`, to show the alerts firing.
    #[arg(long, value_name = "URL")]
    admin: Option<String>,
}

pub fn execute(args: Args) -> u8 {
    let store = match args.state.open_existing() {
        Ok(store) => store,
        Err(code) => return code,
    };
    let now = now_ms();
    let hour_ago = now - page::HOUR_MS;
    let read = store.status(now).and_then(|status| {
        let sent = store.sent_since(hour_ago, page::LAG_SAMPLE_LIMIT)?;
        Ok((status, sent))
    });
    let read = read.and_then(|(status, sent)| {
        let reconciled = store.last_reconcile_run()?;
        let read_back = store.last_read_backs(1)?.into_iter().next();
        Ok((status, sent, reconciled, read_back))
    });
    let (status, sent, reconciled, read_back) = match read {
        Ok(read) => read,
        Err(err) => {
            eprintln!("error: {err}");
            return EXIT_IO;
        }
    };
    let reconciled = reconciled.map(|run| last_reconciliation(&run));
    let last_hour = lag::by_lane(&sent, hour_ago);
    let recent = lag::by_lane(&sent, now - RECENT_MS);
    let overall = |lanes: &BTreeMap<String, lag::LaneLag>, lane: &str| {
        lanes.get(lane).and_then(|l| l.overall.clone())
    };
    let alerts = args.admin.as_deref().map(|url| {
        firing_alerts(url)
            .map_err(|err| format!("could not ask serve at {url} for its alerts: {err}"))
    });
    let lanes: Vec<serde_json::Value> = ["transaction", "profile"]
        .iter()
        .map(|lane| {
            let s = status.lanes.get(*lane).copied().unwrap_or_default();
            json!({
                "lane": lane,
                "depth": s.depth,
                "oldest_pending_seconds": s.oldest_age as f64 / 1000.0,
                "lag": {
                    "last_hour": overall(&last_hour, lane),
                    "last_10_minutes": overall(&recent, lane),
                },
            })
        })
        .collect();
    if args.format == "json" {
        let last: serde_json::Map<String, serde_json::Value> = status
            .last_success
            .iter()
            .map(|(endpoint, at)| (endpoint.clone(), json!(iso(*at))))
            .collect();
        let mut out = json!({
            "lanes": lanes,
            "dead_letters": status.dead_letters,
            "last_success": last,
            "exceptions": status.exceptions,
            "exceptions_by_category": status.exceptions_by_category,
            "last_delivery": status.last_delivery.map(iso),
            "last_reconciliation": reconciled,
            "read_back": read_back_json(&status, read_back.as_ref()),
        });
        match &alerts {
            Some(Ok(alerts)) => {
                out["alerts"] = alerts
                    .iter()
                    .map(|a| json!({"name": a.name, "since": iso(a.since), "message": a.message}))
                    .collect();
            }
            Some(Err(err)) => {
                out["alerts"] = serde_json::Value::Null;
                out["alerts_error"] = json!(err);
            }
            None => {}
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("status serialises")
        );
    } else {
        print_human(&status, &lanes, &last_hour, &recent, alerts.as_ref(), now);
        print_reconciliation(reconciled.as_ref(), now);
        print_read_back(&status, read_back.as_ref(), now);
    }
    match alerts {
        Some(Err(err)) => {
            eprintln!("error: {err}");
            EXIT_IO
        }
        _ => EXIT_OK,
    }
}

fn print_human(
    status: &marketsync::store::Status,
    lanes: &[serde_json::Value],
    last_hour: &BTreeMap<String, lag::LaneLag>,
    recent: &BTreeMap<String, lag::LaneLag>,
    alerts: Option<&Result<Vec<FiringAlert>, String>>,
    now: i64,
) {
    println!("queue:");
    for lane in lanes {
        println!(
            "  {:<12} {:>8} pending, oldest {:.0}s",
            lane["lane"].as_str().unwrap_or_default(),
            lane["depth"].as_u64().unwrap_or_default(),
            lane["oldest_pending_seconds"].as_f64().unwrap_or_default()
        );
    }
    println!("lag to Klaviyo (p50 / p99 / max):");
    for lane in ["transaction", "profile"] {
        let figures = |lanes: &BTreeMap<String, lag::LaneLag>| {
            lag_line(lanes.get(lane).and_then(|l| l.overall.as_ref()))
        };
        println!(
            "  {lane:<12} last hour {}; last 10 min {}",
            figures(last_hour),
            figures(recent)
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
    println!(
        "last delivery stored: {}",
        status
            .last_delivery
            .map_or("never".to_owned(), |at| format!(
                "{} ({})",
                iso(at),
                page::ago(at, now)
            ))
    );
    println!("exceptions open: {}", status.exceptions);
    for (category, count) in &status.exceptions_by_category {
        println!("  {category:<28} {count}");
    }
    match alerts {
        None => {}
        Some(Err(err)) => println!("alerts firing: unknown ({err})"),
        Some(Ok(alerts)) if alerts.is_empty() => println!("alerts firing: none"),
        Some(Ok(alerts)) => {
            println!("alerts firing:");
            for alert in alerts {
                println!(
                    "  {} (since {}, {}): {}",
                    alert.name,
                    iso(alert.since),
                    page::ago(alert.since, now),
                    alert.message
                );
            }
        }
    }
}

/// The last reconciliation that finished, as `status` shows it.
fn last_reconciliation(run: &marketsync::store::ReconcileRun) -> serde_json::Value {
    let findings: marketsync::reconcile::Findings =
        serde_json::from_str(&run.counts).unwrap_or_default();
    json!({
        "finished": run.finished_at.map(iso),
        "finished_ms": run.finished_at,
        "window": {"since": run.since, "until": run.until},
        "read": findings.read.values().sum::<u64>(),
        "expected": findings.expected,
        "missing": findings.missing_total(),
        "webhooks": findings.webhooks,
        "anything_wrong": findings.anything_wrong(),
    })
}

fn print_reconciliation(reconciled: Option<&serde_json::Value>, now: i64) {
    let Some(run) = reconciled else {
        println!("last reconciliation: never");
        return;
    };
    let finished = run["finished_ms"].as_i64().unwrap_or_default();
    println!(
        "last reconciliation: {} ({}), window {} .. {}: {} read, {} requests, {} missing{}",
        iso(finished),
        page::ago(finished, now),
        run["window"]["since"].as_str().unwrap_or_default(),
        run["window"]["until"].as_str().unwrap_or_default(),
        run["read"],
        run["expected"],
        run["missing"],
        match run["webhooks"].as_array().map(Vec::len) {
            Some(n) if n > 0 => format!(", {n} webhook problem(s)"),
            _ => String::new(),
        }
    );
}

/// Open read-back exceptions by tier and class, and the last read-back's revenue.
fn read_back_json(
    status: &marketsync::store::Status,
    last: Option<&marketsync::reconcile::exceptions::Summary>,
) -> serde_json::Value {
    let by_tier: BTreeMap<&str, u64> = status
        .read_back_by_tier()
        .into_iter()
        .map(|(tier, n)| (tier.name(), n))
        .collect();
    let by_class: BTreeMap<&str, u64> = status
        .read_back_open
        .iter()
        .map(|(class, (n, _))| (class.name(), *n))
        .collect();
    json!({
        "open_by_tier": by_tier,
        "open_by_class": by_class,
        "last": last.map(|s| json!({
            "run": s.run_id,
            "recorded_at": iso(s.recorded_at),
            "window": {"since": s.since, "until": s.until},
            "revenue": s.revenue_by_marketplace(),
            "revenue_alignment": report::revenue_alignment(s),
        })),
    })
}

fn print_read_back(
    status: &marketsync::store::Status,
    last: Option<&marketsync::reconcile::exceptions::Summary>,
    now: i64,
) {
    let Some(last) = last else {
        println!("read back from Klaviyo: never");
        return;
    };
    let tiers: Vec<String> = status
        .read_back_by_tier()
        .into_iter()
        .map(|(tier, n)| format!("{n} {}", tier.name()))
        .collect();
    println!(
        "read-back exceptions open: {}{}",
        tiers.join(", "),
        if status.read_back_open.is_empty() {
            ""
        } else {
            " (marketsync exceptions list)"
        }
    );
    println!(
        "revenue, read back {} ({}): {}",
        iso(last.recorded_at),
        page::ago(last.recorded_at, now),
        report::revenue_alignment(last)
    );
}

/// "0.8s / 2.1s / 3.0s (120 sent)", or "nothing sent".
fn lag_line(figures: Option<&LagFigures>) -> String {
    match figures {
        None => "nothing sent".to_owned(),
        Some(f) => {
            let s = |ms: i64| format!("{:.1}s", ms as f64 / 1000.0);
            format!(
                "{} / {} / {} ({} sent)",
                s(f.p50_ms),
                s(f.p99_ms),
                s(f.max_ms),
                f.count
            )
        }
    }
}

/// The alerts `serve` reports firing at `{admin}/alerts`.
fn firing_alerts(admin: &str) -> Result<Vec<FiringAlert>, String> {
    let url = format!("{}/alerts", admin.trim_end_matches('/'));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| err.to_string())?;
    runtime.block_on(async {
        let response = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|err| err.to_string())?
            .get(&url)
            .send()
            .await
            .map_err(|err| err.to_string())?;
        if !response.status().is_success() {
            return Err(format!("it answered {}", response.status()));
        }
        let body: serde_json::Value = response.json().await.map_err(|err| err.to_string())?;
        serde_json::from_value(body["alerts"].clone()).map_err(|err| err.to_string())
    })
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}
