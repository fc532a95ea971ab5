//! `marketsync validate`: every problem in a mapping set, in one pass.

use super::{EXIT_OK, EXIT_REJECTED, MappingArgs};
use marketsync::diagnostic::Diagnostics;

/// Check mapping specs: YAML and unknown keys, JSONPath and template syntax, undefined names,
/// endpoints, and a render of every example delivery against Klaviyo's schemas.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  marketsync validate                      # the built-in default mappings
  marketsync validate --mappings mappings  # a mapping folder

Prints each problem as `file:line:col: message` with the offending line, and exits 1 if any
error was found (warnings alone exit 0).")]
pub struct Args {
    #[command(flatten)]
    mappings: MappingArgs,
}

pub fn execute(args: Args) -> u8 {
    match args.mappings.load() {
        Ok((engine, warnings)) => {
            print_all(&warnings);
            eprintln!(
                "ok: {} mappings valid{}",
                engine.mapping_names().len(),
                match warnings.0.len() {
                    0 => String::new(),
                    n => format!(", {n} warning(s)"),
                }
            );
            EXIT_OK
        }
        Err(problems) => {
            print_all(&problems);
            let errors = problems.error_count();
            eprintln!(
                "failed: {errors} error(s), {} warning(s)",
                problems.0.len() - errors
            );
            EXIT_REJECTED
        }
    }
}

fn print_all(diagnostics: &Diagnostics) {
    for d in diagnostics.iter() {
        eprintln!("{d:#}\n");
    }
}
