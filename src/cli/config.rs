//! `marketsync config` and `marketsync diff`: the mappings a client really runs, after overlays.
//!
//! Overlays keep a client's files short, at the price of the full picture living nowhere on
//! disk. These commands print it, and compare two clients, so a reviewer never has to merge
//! YAML in their head.

use super::{EXIT_OK, EXIT_REJECTED, MappingArgs};
use marketsync::spec::MappingSet;
use marketsync::testing::snapshot::diff;
use std::io::IsTerminal;
use std::path::PathBuf;

/// Print the effective settings and mappings, after a client's settings and overlays.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  marketsync config                 # the base set (./mappings, or the built-in defaults)
  marketsync config --client acme   # clients/acme on top of them

Prints YAML documents: the settings, then each mapping, each headed by the files it was
built from. Exit 3 when the mappings do not load.")]
pub struct ConfigArgs {
    #[command(flatten)]
    mappings: MappingArgs,
}

/// Show how two clients' effective mappings differ.
#[derive(clap::Args)]
#[command(after_help = "Example:
  marketsync diff --client acme --client beta

Prints a line diff of the two clients' effective configuration (as `marketsync config` shows
it). Exit 0 when they are the same, 1 when they differ, 3 when either does not load.")]
pub struct DiffArgs {
    /// The two clients to compare (give `--client` twice).
    #[arg(long = "client", value_name = "NAME", num_args = 1, required = true)]
    clients: Vec<String>,
    /// The folder holding client folders.
    #[arg(long = "clients", value_name = "DIR", default_value = "clients")]
    clients_dir: PathBuf,
    /// Base mapping folder. Left out: $MARKETSYNC_MAPPINGS, else ./mappings when it holds
    /// specs, else the built-in defaults.
    #[arg(long, value_name = "DIR")]
    mappings: Option<PathBuf>,
}

pub fn config(args: ConfigArgs) -> u8 {
    match effective(&args.mappings) {
        Ok(text) => {
            print!("{text}");
            EXIT_OK
        }
        Err(code) => code,
    }
}

pub fn diff_clients(args: DiffArgs) -> u8 {
    let [a, b] = args.clients.as_slice() else {
        eprintln!("error: give exactly two clients: --client A --client B");
        return super::EXIT_USAGE;
    };
    // Each client's own folder is written `<client>` so the file headers do not all differ.
    let load = |client: &String| {
        let mappings = MappingArgs {
            mappings: args.mappings.clone(),
            client: Some(client.clone()),
            clients: args.clients_dir.clone(),
        };
        let folder = mappings.client_dir(client).display().to_string();
        effective(&mappings).map(|text| text.replace(&folder, "<client>"))
    };
    let (left, right) = match (load(a), load(b)) {
        (Ok(left), Ok(right)) => (left, right),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    if left == right {
        eprintln!("{a} and {b} run the same mappings and settings");
        return EXIT_OK;
    }
    println!("--- {a}\n+++ {b}");
    print!("{}", diff(&left, &right, std::io::stdout().is_terminal()));
    EXIT_REJECTED
}

/// The effective configuration as YAML, or the problems printed and the exit code.
fn effective(args: &MappingArgs) -> Result<String, u8> {
    let set = args.load_set();
    if set.diagnostics.has_errors() {
        return Err(super::report_unloadable(&set.diagnostics));
    }
    Ok(render(&set))
}

fn render(set: &MappingSet) -> String {
    let mut out = String::new();
    if let Some(settings) = &set.settings {
        let mut from = vec![settings.source.name.clone()];
        if let Some(client) = &set.client {
            from.push(client.source.name.clone());
        }
        out.push_str(&format!("# settings, from {}\n", from.join(" + ")));
        out.push_str(&yaml(&settings.spec));
    }
    for mapping in &set.mappings {
        let from: Vec<&str> = std::iter::once(&mapping.source)
            .chain(&mapping.layers)
            .map(|f| f.name.as_str())
            .collect();
        out.push_str(&format!(
            "---\n# mapping {}, from {}\n",
            mapping.spec.name.value,
            from.join(" + ")
        ));
        out.push_str(&yaml(&mapping.spec));
    }
    out
}

fn yaml<T: serde::Serialize>(value: &T) -> String {
    serde_saphyr::to_string(value).expect("specs serialise to YAML")
}
