//! `marketsync standin`: the local Klaviyo stand-in, for demos and manual testing.

use super::{EXIT_IO, EXIT_OK, EXIT_USAGE};
use marketsync::standin::{Config, DEFAULT_API_KEY, Faults, serve_forever};
use std::time::Duration;

/// Run a local HTTP server that behaves as Klaviyo documents (schemas, rate limits, 429 with
/// Retry-After, event dedupe, 409 duplicate profiles), for trying marketsync without Klaviyo.
#[derive(clap::Args)]
#[command(after_help = "Example:
  marketsync standin --port 8765 &
  KLAVIYO_API_KEY=pk_standin KLAVIYO_BASE_URL=http://127.0.0.1:8765 \\
    marketsync run --state demo.db examples/*.json examples/*.ndjson

It accepts the key `pk_standin` and stops on Ctrl-C. GET /standin/submissions lists every event
it accepted, duplicates included, one JSON line each: metric, unique_id, kept, request and
accepted_at_ms (Unix milliseconds), to see when each arrived.")]
pub struct Args {
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

pub fn execute(args: Args) -> u8 {
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
