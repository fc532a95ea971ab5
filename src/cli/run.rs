//! `marketsync run`: deliveries in, Klaviyo requests out.

use super::{EXIT_BAD_MAPPINGS, EXIT_IO, EXIT_OK, EXIT_REJECTED, EXIT_USAGE, MappingArgs};
use marketsync::run::dry_run;
use marketsync::source::Input;
use std::io::{self, BufWriter};

/// Map Marketplacer deliveries to Klaviyo requests.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  marketsync run --dry-run examples/*.json examples/*.ndjson
  cat captures.ndjson | marketsync run --dry-run --marketplace petmarket -
  marketsync run --dry-run --mappings clients/acme/mappings backfill.json

Inputs: `.json` files hold one delivery; `.ndjson`/`.jsonl` files and standard input (`-`, or
no INPUT) hold one per line. Each delivery may be a webhook envelope, a capture with headers,
or a GraphQL backfill page; the shape is detected.

Output: one request per line on stdout, {\"method\", \"path\", \"body\", \"mapping\", \"lane\",
\"source\"}; problems and a summary on stderr. Exit 0 when nothing was rejected, 1 when any
delivery or mapping was rejected, 3 when the mappings do not load, 4 on an I/O error.")]
pub struct Args {
    /// Print the requests instead of sending them.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    mappings: MappingArgs,
    /// Marketplace for deliveries that do not name one (no Marketplacer-Vertical header).
    #[arg(long, value_name = "NAME")]
    marketplace: Option<String>,
    /// Files to read; `-` or nothing for standard input.
    #[arg(value_name = "INPUT")]
    inputs: Vec<String>,
}

pub fn execute(args: Args) -> u8 {
    if !args.dry_run {
        eprintln!(
            "error: sending to Klaviyo is not part of this build yet; use `marketsync run --dry-run` to see the requests"
        );
        return EXIT_USAGE;
    }
    let engine = match args.mappings.load() {
        Ok((engine, _warnings)) => engine,
        Err(problems) => {
            for d in problems.iter() {
                eprintln!("{d:#}\n");
            }
            eprintln!("error: the mappings do not load; run `marketsync validate` for details");
            return EXIT_BAD_MAPPINGS;
        }
    };
    let engine = match args.marketplace {
        Some(name) => engine.with_default_marketplace(name),
        None => engine,
    };
    let inputs: Vec<Input> = if args.inputs.is_empty() {
        vec![Input::Stdin]
    } else {
        args.inputs.iter().map(|a| Input::from_arg(a)).collect()
    };
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(256 * 1024, stdout.lock());
    let stderr = io::stderr();
    let mut report = stderr.lock();
    match dry_run(&engine, &inputs, &mut out, &mut report) {
        Ok(summary) => {
            eprint!("{}", summary.render());
            if summary.rejected_count() > 0 {
                EXIT_REJECTED
            } else {
                EXIT_OK
            }
        }
        Err(err) => {
            eprintln!("error: {err}");
            EXIT_IO
        }
    }
}
