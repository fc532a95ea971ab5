//! `marketsync schemas`: regenerate the schema data shipped in `schemas/` from its sources,
//! Klaviyo's OpenAPI spec (`extract`) and Marketplacer's GraphQL SDL (`marketplacer`).

use super::{EXIT_IO, EXIT_OK, EXIT_REJECTED};
use marketsync::klaviyo::extract;
use marketsync::source::schema::extract as marketplacer;
use std::path::PathBuf;

/// Schema data shipped in `schemas/`: Klaviyo request bodies, Marketplacer record types.
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
    /// Write the Marketplacer types mappings can read (for JSONPath checks) into a file.
    #[command(after_help = "Example:
  marketsync schemas marketplacer --sdl ../shared/reference/marketplacer/marketplacer.graphqls

With --check, writes nothing and exits 1 if the file differs from what the SDL gives.")]
    Marketplacer {
        /// The Marketplacer GraphQL SDL (the copy recorded in src/source/schema/extract.rs).
        #[arg(long, value_name = "FILE")]
        sdl: PathBuf,
        /// File to write.
        #[arg(
            long,
            value_name = "FILE",
            default_value = "schemas/marketplacer/types.json"
        )]
        out: PathBuf,
        /// Compare instead of writing.
        #[arg(long)]
        check: bool,
    },
}

pub fn execute(args: Args) -> u8 {
    match args.command {
        SchemasCommand::Extract {
            openapi,
            out,
            label,
            check,
        } => klaviyo(openapi, out, label, check),
        SchemasCommand::Marketplacer { sdl, out, check } => marketplacer_types(sdl, out, check),
    }
}

fn klaviyo(openapi: PathBuf, out: PathBuf, label: Option<String>, check: bool) -> u8 {
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

fn marketplacer_types(sdl: PathBuf, out: PathBuf, check: bool) -> u8 {
    let bytes = match std::fs::read(&sdl) {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", sdl.display());
            return EXIT_IO;
        }
    };
    let text = match marketplacer::extract(&bytes) {
        Ok(file) => file.render(),
        Err(e) => {
            eprintln!("error: {}: {e}", sdl.display());
            return EXIT_REJECTED;
        }
    };
    if check {
        if std::fs::read_to_string(&out).ok().as_deref() != Some(text.as_str()) {
            eprintln!("stale: {} differs from {}", out.display(), sdl.display());
            return EXIT_REJECTED;
        }
        return EXIT_OK;
    }
    let written = match out.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        Some(dir) => std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&out, text)),
        None => std::fs::write(&out, text),
    };
    if let Err(e) = written {
        eprintln!("error: cannot write {}: {e}", out.display());
        return EXIT_IO;
    }
    eprintln!("wrote {}", out.display());
    EXIT_OK
}
