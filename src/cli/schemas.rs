//! `marketsync schemas extract`: regenerate `schemas/klaviyo/` from Klaviyo's OpenAPI spec.

use super::{EXIT_IO, EXIT_OK, EXIT_REJECTED};
use marketsync::klaviyo::extract;
use std::path::PathBuf;

/// Klaviyo request-body schemas, extracted from Klaviyo's OpenAPI spec.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: SchemasCommand,
}

#[derive(clap::Subcommand)]
enum SchemasCommand {
    /// Write the request-body schemas of the endpoints marketsync uses into a folder.
    #[command(after_help = "Example:
  marketsync schemas extract --openapi ../shared/reference/klaviyo/openapi-stable.json --out schemas/klaviyo

With --check, writes nothing and exits 1 if the folder differs from what the spec gives.")]
    Extract {
        /// Klaviyo's OpenAPI spec (openapi/stable.json of the klaviyo/openapi repository).
        #[arg(long, value_name = "FILE")]
        openapi: PathBuf,
        /// Folder to write into.
        #[arg(long, value_name = "DIR", default_value = "schemas/klaviyo")]
        out: PathBuf,
        /// How the spec file is named in the provenance; its file path when left out.
        #[arg(long, value_name = "LABEL")]
        label: Option<String>,
        /// Compare instead of writing.
        #[arg(long)]
        check: bool,
    },
}

pub fn execute(args: Args) -> u8 {
    let SchemasCommand::Extract {
        openapi,
        out,
        label,
        check,
    } = args.command;
    let bytes = match std::fs::read(&openapi) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", openapi.display());
            return EXIT_IO;
        }
    };
    let label = label.unwrap_or_else(|| openapi.display().to_string());
    let files = match extract::extract(&bytes, &label) {
        Ok(files) => files,
        Err(e) => {
            eprintln!("error: {}: {e}", openapi.display());
            return EXIT_REJECTED;
        }
    };
    let mut stale = 0;
    for (name, document) in &files {
        let path = out.join(name);
        let text = extract::render(document);
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                eprintln!("stale: {}", path.display());
                stale += 1;
            }
            continue;
        }
        if let Err(e) = std::fs::create_dir_all(&out).and_then(|()| std::fs::write(&path, text)) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return EXIT_IO;
        }
        eprintln!("wrote {}", path.display());
    }
    if stale > 0 {
        eprintln!("{stale} schema file(s) differ from {}", openapi.display());
        return EXIT_REJECTED;
    }
    EXIT_OK
}
