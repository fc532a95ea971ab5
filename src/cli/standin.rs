//! `marketsync standin`: local stand-ins for Klaviyo (the default, as the README and scripts
//! use it) and for Marketplacer's GraphQL API (`standin marketplacer`), for demos, manual
//! testing and benchmarks.

use super::{EXIT_IO, EXIT_OK, EXIT_USAGE};
use marketsync::standin::marketplacer;
use marketsync::standin::{Config, DEFAULT_API_KEY, Faults, serve_forever};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Run a local HTTP server that behaves as Klaviyo documents (schemas, rate limits, 429 with
/// Retry-After, event dedupe, 409 duplicate profiles), for trying marketsync without Klaviyo;
/// `standin marketplacer` runs one for Marketplacer's GraphQL API instead.
#[derive(clap::Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Example:
  marketsync standin --port 8765 &
  KLAVIYO_API_KEY=pk_standin KLAVIYO_BASE_URL=http://127.0.0.1:8765 \\
    marketsync run --state demo.db examples/*.json examples/*.ndjson

It accepts the key `pk_standin` and stops on Ctrl-C. GET /standin/submissions lists every event
it accepted, duplicates included, one JSON line each: metric, unique_id, kept, request and
accepted_at_ms (Unix milliseconds), to see when each arrived.

It answers the reads a reconciliation makes (GET /api/metrics, /api/events, /api/profiles,
POST /api/metric-aggregates) from what it accepted. POST /standin/drift makes its data differ
from what was sent, as Klaviyo's can:
  curl -s http://127.0.0.1:8765/standin/drift \\
    -d '{\"kind\": \"delete_event\", \"unique_id\": \"petmarket:placed-order:5001\"}'
Kinds: delete_event, change_event, duplicate_profile, change_profile, unsubscribe, suppress,
subscribe, foreign_metric, flow; docs/standins.md gives their fields.

`marketsync standin klaviyo` is the same; `marketsync standin marketplacer --help` describes
the Marketplacer stand-in."
)]
pub struct Args {
    #[command(subcommand)]
    which: Option<Which>,
    #[command(flatten)]
    klaviyo: KlaviyoArgs,
}

#[derive(clap::Subcommand)]
enum Which {
    /// The Klaviyo stand-in (what `marketsync standin` runs without a subcommand).
    Klaviyo(KlaviyoArgs),
    Marketplacer(MarketplacerArgs),
}

#[derive(clap::Args)]
struct KlaviyoArgs {
    /// Port on 127.0.0.1.
    #[arg(long, default_value_t = 8765)]
    port: u16,
    /// Run its clock this many times faster (a minute's limit passes in a second at 60).
    #[arg(long, value_name = "FACTOR", default_value_t = 1.0)]
    time_scale: f64,
    /// Share of requests answered 503, 0 to 1.
    #[arg(long, value_name = "RATE", default_value_t = 0.0)]
    errors: f64,
    /// Share of requests answered 429 regardless of the limits, 0 to 1.
    #[arg(long, value_name = "RATE", default_value_t = 0.0)]
    throttle: f64,
    /// Share of connections dropped without an answer, 0 to 1.
    #[arg(long, value_name = "RATE", default_value_t = 0.0)]
    drop: f64,
}

/// Run a local HTTP server that answers Marketplacer's GraphQL Operator API (POST /graphql)
/// from webhook captures: every query validated against Marketplacer's schema, filters,
/// cursors, the published rate limits, and the operator's webhooks.
#[derive(clap::Args)]
#[command(after_help = "Example:
  cargo run --example generate-deliveries -- --count 2000 --start 2026-11-30T00:00:00+11:00 \\
    --span 24h --out day.ndjson
  marketsync standin marketplacer --port 8766 --data day.ndjson &
  curl -s http://127.0.0.1:8766/graphql -H 'MARKETPLACER-API-KEY: mp_standin' \\
    -H 'content-type: application/json' \\
    -d '{\"query\": \"{ invoices(first: 2) { totalCount nodes { legacyId paidAt } } }\"}'

--data reads files as `marketsync run` does (NDJSON captures from the generator or from
`serve`'s store, bare webhook envelopes, backfill pages, `.json` examples): every object with
an id is merged by id, the latest view winning each field, and the vertical comes from the
Marketplacer-Vertical header. A line that cannot be read is reported with its file and line;
the rest load. The same file replayed into `serve` (`marketsync replay`) is then served here.

It accepts the key `mp_standin` unless --api-key names another, in the MARKETPLACER-API-KEY
header or as Authorization: Bearer. Limits are Marketplacer's: 750 requests per 10 s per key
and 600 per 10 s per source IP, over which it answers 429 with Retry-After (--no-retry-after
leaves the header out: a client must then wait at least 60 s). GET /standin/stats shows what
it saw: requests, 429s, and each query's operation, root fields and variables. docs/standins.md
describes everything it does and does not model.")]
struct MarketplacerArgs {
    /// Port on 127.0.0.1.
    #[arg(long, default_value_t = 8766)]
    port: u16,
    /// Captures to serve (repeatable).
    #[arg(long, value_name = "FILE", num_args = 1.., action = clap::ArgAction::Append)]
    data: Vec<PathBuf>,
    /// The API key it accepts (never printed).
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// Requests per API key per 10 seconds.
    #[arg(long, value_name = "N", default_value_t = marketplacer::KEY_LIMIT)]
    rate_limit: u32,
    /// Requests per source IP per 10 seconds.
    #[arg(long, value_name = "N", default_value_t = marketplacer::IP_LIMIT)]
    ip_rate_limit: u32,
    /// Start with this webhook disabled, by type: INVOICE, SHIPMENT, REFUND_REQUEST
    /// (repeatable), as Marketplacer disables one after a 4xx other than 429.
    #[arg(long, value_name = "NAME")]
    disable_webhook: Vec<String>,
    /// Answer 429 and 503 without Retry-After.
    #[arg(long)]
    no_retry_after: bool,
    /// Share of requests answered 429 regardless of the limits, 0 to 1.
    #[arg(long, value_name = "RATE", default_value_t = 0.0)]
    throttle: f64,
    /// Share of requests answered 503, 0 to 1.
    #[arg(long, value_name = "RATE", default_value_t = 0.0)]
    unavailable: f64,
    /// Make a root field (invoices, refundRequests, …) answer a GraphQL error (repeatable).
    #[arg(long, value_name = "FIELD")]
    fail_field: Vec<String>,
    /// Seed of the drawn faults.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run its clock this many times faster (the 10-second window passes in a second at 10).
    #[arg(long, value_name = "FACTOR", default_value_t = 1.0)]
    time_scale: f64,
    /// siteConfig.verticalCode, when the data names none (or to override it).
    #[arg(long)]
    vertical: Option<String>,
    /// siteConfig.country.currencyCode.
    #[arg(long, default_value = "AUD")]
    currency: String,
    /// Show Marketplacer's own Klaviyo integration as sending events
    /// (klaviyoSettings.ecommerceTrackingEnabled).
    #[arg(long)]
    native_klaviyo_tracking: bool,
}

pub fn execute(args: Args) -> u8 {
    match args.which {
        Some(Which::Marketplacer(args)) => marketplacer(args),
        Some(Which::Klaviyo(args)) => klaviyo(args),
        None => klaviyo(args.klaviyo),
    }
}

fn klaviyo(args: KlaviyoArgs) -> u8 {
    if !args.time_scale.is_finite() || args.time_scale <= 0.0 {
        eprintln!("error: --time-scale must be positive");
        return EXIT_USAGE;
    }
    let config = Config {
        time_scale: args.time_scale,
        faults: Faults {
            error_5xx_rate: args.errors,
            throttle_rate: args.throttle,
            drop_rate: args.drop,
            slow_rate: 0.0,
            slow: Duration::ZERO,
            seed: 1,
            error_5xx_marker: None,
        },
        ..Config::default()
    };
    eprintln!(
        "Klaviyo stand-in on http://127.0.0.1:{} (API key {DEFAULT_API_KEY})",
        args.port
    );
    match serve_forever(config, args.port) {
        Ok(()) => EXIT_OK,
        Err(err) => {
            eprintln!("error: {err}");
            EXIT_IO
        }
    }
}

fn marketplacer(args: MarketplacerArgs) -> u8 {
    if !args.time_scale.is_finite() || args.time_scale <= 0.0 {
        eprintln!("error: --time-scale must be positive");
        return EXIT_USAGE;
    }
    for (flag, rate) in [
        ("--throttle", args.throttle),
        ("--unavailable", args.unavailable),
    ] {
        if !(0.0..=1.0).contains(&rate) {
            eprintln!("error: {flag} is a share of requests, from 0 to 1");
            return EXIT_USAGE;
        }
    }
    let mut data = marketplacer::Data::new();
    for path in &args.data {
        match data.load_file(path) {
            Ok(summary) => {
                eprintln!(
                    "{}: {} deliveries loaded{}",
                    path.display(),
                    summary.loaded,
                    match summary.problems.len() {
                        0 => String::new(),
                        n => format!(", {n} left out:"),
                    }
                );
                for problem in &summary.problems {
                    eprintln!("  {problem}");
                }
            }
            Err(err) => {
                eprintln!("error: {}: {err}", path.display());
                return EXIT_IO;
            }
        }
    }
    let counts: Vec<String> = [
        "Order",
        "Invoice",
        "Shipment",
        "RefundRequest",
        "WebhookEvent",
    ]
    .iter()
    .map(|t| format!("{} {t}", data.count(t)))
    .collect();
    let key_note = match &args.api_key {
        Some(_) => "the key given with --api-key".to_owned(),
        None => format!("API key {}", marketplacer::DEFAULT_API_KEY),
    };
    let failing: BTreeMap<String, String> = args
        .fail_field
        .iter()
        .map(|field| {
            (
                field.clone(),
                format!("Internal error resolving {field} (injected by the stand-in)"),
            )
        })
        .collect();
    let mut site = marketplacer::Site {
        vertical: args.vertical.clone(),
        currency_code: args.currency.clone(),
        ..marketplacer::Site::default()
    };
    if site.vertical.is_none() && data.vertical().is_none() {
        site.vertical = Some("standin".into());
    }
    let config = marketplacer::Config {
        data,
        api_keys: vec![
            args.api_key
                .unwrap_or_else(|| marketplacer::DEFAULT_API_KEY.to_owned()),
        ],
        key_limit: args.rate_limit,
        ip_limit: args.ip_rate_limit,
        time_scale: args.time_scale,
        faults: marketplacer::Faults {
            throttle_rate: args.throttle,
            unavailable_rate: args.unavailable,
            seed: args.seed,
            retry_after: !args.no_retry_after,
            failing_fields: failing,
            ..marketplacer::Faults::none()
        },
        site,
        klaviyo: marketplacer::KlaviyoSettings {
            ecommerce_tracking_enabled: args.native_klaviyo_tracking,
            ..marketplacer::KlaviyoSettings::default()
        },
        disabled_webhooks: args.disable_webhook.clone(),
        ..marketplacer::Config::default()
    };
    eprintln!(
        "Serving {} ({key_note}){}",
        counts.join(", "),
        if args.disable_webhook.is_empty() {
            String::new()
        } else {
            format!("; disabled webhooks: {}", args.disable_webhook.join(", "))
        }
    );
    match marketplacer::serve_forever(config, args.port) {
        Ok(()) => EXIT_OK,
        Err(err @ marketplacer::StartError::UnknownWebhook { .. }) => {
            eprintln!("error: --disable-webhook: {err}");
            EXIT_USAGE
        }
        Err(err) => {
            eprintln!("error: {err}");
            EXIT_IO
        }
    }
}
