//! `marketsync validate`: every problem in a mapping set, in one pass.

use super::report::{annotation, diagnostic_json};
use super::{EXIT_OK, EXIT_REJECTED, MappingArgs};
use marketsync::diagnostic::Diagnostics;
use serde_json::json;

/// Check mapping specs: YAML and unknown keys, JSONPath and template syntax, undefined names,
/// unknown filters, endpoints, the webhook queries, and a render of every example delivery
/// against Klaviyo's schemas.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  marketsync validate                      # ./mappings if it holds specs, else the built-in set
  marketsync validate --mappings mappings  # a mapping folder
  marketsync validate --client acme        # clients/acme on top of the base set
  marketsync validate --format github      # annotations on a pull request
  marketsync validate --verbose            # and what the queries select for nothing

The base set is --mappings DIR, else $MARKETSYNC_MAPPINGS, else ./mappings when it holds specs,
else the built-in defaults; the one used is named on stderr (`mappings: ...`).

Prints each problem as `file:line:col: message` with the offending line, and exits 1 if any
error was found (warnings alone exit 0). `--format json` prints one JSON document on stdout;
`--format github` prints GitHub Actions workflow commands (`::error file=...,line=...::...`).

Every path of a mapping that reads a webhook type is checked against that type's query in
queries/ beside the mapping folder (else the built-in queries), with a client's
clients/NAME/queries/ merged in; the queries are checked against Marketplacer's schema.")]
pub struct Args {
    #[command(flatten)]
    mappings: MappingArgs,
    /// `human`, `json` or `github`.
    #[arg(long, value_name = "FORMAT", default_value = "human", value_parser = ["human", "json", "github"])]
    format: String,
    /// Fail (exit 1) on warnings too: paths the Marketplacer schema does not know, metric
    /// names Marketplacer's own integration also sends, deprecated fields in the queries.
    #[arg(long)]
    strict: bool,
    /// Also list the fields the webhook queries select that no mapping reads (each costs
    /// Marketplacer work on every event).
    #[arg(long, short)]
    verbose: bool,
}

pub fn execute(args: Args) -> u8 {
    let (ok, diagnostics, mappings, unread) = match args.mappings.load() {
        Ok((engine, warnings)) => (
            true,
            warnings,
            engine.mapping_names().len(),
            engine.unread_query_fields().to_vec(),
        ),
        Err(problems) => (false, problems, 0, Vec::new()),
    };
    let errors = diagnostics.error_count();
    let warnings = diagnostics.0.len() - errors;
    // What the exit code says, the JSON says: --strict fails on warnings in both.
    let passed = ok && !(args.strict && warnings > 0);
    match args.format.as_str() {
        "json" => {
            let items: Vec<serde_json::Value> = diagnostics.iter().map(diagnostic_json).collect();
            let mut out = json!({"ok": passed, "loaded": ok, "strict": args.strict, "mappings": mappings, "errors": errors, "warnings": warnings, "diagnostics": items, "mapping_set": args.mappings.chosen().json()});
            if args.verbose {
                out["unread_query_fields"] = unread
                    .iter()
                    .map(|u| json!({"type": u.type_name, "file": u.file, "line": u.line, "column": u.column, "field": u.keys.join(".")}))
                    .collect();
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&out).expect("diagnostics serialise")
            );
        }
        "github" => {
            for d in diagnostics.iter() {
                println!("{}", annotation(d));
            }
        }
        _ => print_all(&diagnostics),
    }
    if args.verbose && args.format != "json" {
        for field in &unread {
            eprintln!("{field}");
        }
    }
    if ok && args.strict && warnings > 0 {
        eprintln!("failed: {warnings} warning(s), and --strict fails on warnings");
        return EXIT_REJECTED;
    }
    if ok {
        eprintln!(
            "ok: {mappings} mappings valid{}",
            match warnings {
                0 => String::new(),
                n => format!(", {n} warning(s)"),
            }
        );
        EXIT_OK
    } else {
        eprintln!("failed: {errors} error(s), {warnings} warning(s)");
        EXIT_REJECTED
    }
}

fn print_all(diagnostics: &Diagnostics) {
    for d in diagnostics.iter() {
        eprintln!("{d:#}\n");
    }
}
