//! `marketsync init CLIENT`: a client folder that validates and passes its tests from the start.
//!
//! A new consultant learns the layout from a working example rather than from docs alone, and
//! CI is green on the first commit; every file says in comments what to change.

use super::{EXIT_IO, EXIT_OK, EXIT_USAGE, MappingArgs};
use marketsync::engine::Engine;
use marketsync::testing::fixtures;
use std::path::{Path, PathBuf};

/// Create a client folder: settings, an overlay example, a fixture, a test, and its snapshot.
#[derive(clap::Args)]
#[command(after_help = "Example:
  marketsync init acme --marketplace acme-pets --currency NZD
  marketsync validate --client acme && marketsync test --client acme

Creates clients/NAME/client.yaml, clients/NAME/mappings/placed-order.yaml (an overlay with a
test), clients/NAME/fixtures/sample-order.json and its snapshot under snapshots/NAME/. Refuses
to overwrite an existing client folder.")]
pub struct Args {
    /// The client's name: its folder under --clients.
    name: String,
    /// The client's Marketplacer vertical (marketplace) name; the client's name when left out.
    #[arg(long, value_name = "NAME")]
    marketplace: Option<String>,
    /// ISO 4217 currency of the marketplace.
    #[arg(long, value_name = "CODE", default_value = "AUD")]
    currency: String,
    /// The folder holding client folders.
    #[arg(long, value_name = "DIR", default_value = "clients")]
    clients: PathBuf,
    /// Where snapshots live (the client's go in a folder named after it).
    #[arg(long, value_name = "DIR", default_value = "snapshots")]
    snapshots: PathBuf,
}

pub fn execute(args: Args) -> u8 {
    let valid = !args.name.is_empty()
        && args
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        eprintln!(
            "error: a client name is letters, digits, `-` and `_` (it becomes a folder name)"
        );
        return EXIT_USAGE;
    }
    let dir = args.clients.join(&args.name);
    if dir.exists() {
        eprintln!(
            "error: {} already exists; nothing was changed",
            dir.display()
        );
        return EXIT_USAGE;
    }
    let marketplace = args
        .marketplace
        .clone()
        .unwrap_or_else(|| args.name.clone());
    let key_env = format!(
        "{}_KLAVIYO_API_KEY",
        args.name.to_ascii_uppercase().replace('-', "_")
    );
    let sample = marketsync::spec::builtin_example("orders.ndjson")
        .and_then(|text| text.lines().next())
        .expect("the built-in examples hold orders.ndjson");
    let mut sample: serde_json::Value = serde_json::from_str(sample).expect("the sample is JSON");
    // The sample arrives as if from the client's own vertical, so its keys read like theirs.
    if let Some(vertical) = sample.pointer_mut("/headers/Marketplacer-Vertical") {
        *vertical = serde_json::Value::String(marketplace.clone());
    }
    let files = [
        (
            dir.join("client.yaml"),
            client_yaml(&args.name, &marketplace, &args.currency, &key_env),
        ),
        (dir.join("mappings/placed-order.yaml"), OVERLAY.to_owned()),
        (
            dir.join("fixtures/sample-order.json"),
            serde_json::to_string_pretty(&sample).expect("JSON serialises") + "\n",
        ),
    ];
    for (path, text) in &files {
        if let Err(e) = write(path, text) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return EXIT_IO;
        }
        println!("created {}", path.display());
    }
    // The snapshot is what the new client's mappings make of the fixture, so `test` passes.
    let mappings = MappingArgs {
        mappings: None,
        client: Some(args.name.clone()),
        clients: args.clients.clone(),
    };
    let engine = match Engine::compile(mappings.load_set()) {
        Ok((engine, _)) => engine,
        Err(problems) => {
            eprintln!("{problems:#}");
            eprintln!("error: the scaffold does not load (a bug in marketsync init)");
            return super::EXIT_BAD_MAPPINGS;
        }
    };
    let snapshots = args.snapshots.join(&args.name);
    match fixtures::check(&engine, &dir.join("fixtures"), &snapshots) {
        Ok(checked) => {
            for item in checked {
                let written = match item.outcome {
                    fixtures::Outcome::New(snapshot) => snapshot.write(&item.snapshot),
                    fixtures::Outcome::Changed { new, .. } => new.write(&item.snapshot),
                    _ => Ok(()),
                };
                if let Err(e) = written {
                    eprintln!("error: {e}");
                    return EXIT_IO;
                }
                println!("created {}", item.snapshot.display());
            }
        }
        Err(e) => {
            eprintln!("error: cannot read the fixtures: {e}");
            return EXIT_IO;
        }
    }
    println!(
        "\nNext: edit {}, then run\n  marketsync validate --client {name}\n  marketsync test --client {name}\n  marketsync run --dry-run --client {name} {}",
        dir.join("client.yaml").display(),
        dir.join("fixtures/sample-order.json").display(),
        name = args.name
    );
    EXIT_OK
}

fn write(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text)
}

fn client_yaml(name: &str, marketplace: &str, currency: &str, key_env: &str) -> String {
    format!(
        r#"# yaml-language-server: $schema=../../schemas/client.schema.json
# Settings for client `{name}`, applied on top of the base settings.yaml. See docs/clients.md.
description: {name}

# The client's Marketplacer verticals (the Marketplacer-Vertical header of its webhooks), each
# with its currency. The first is used for deliveries that name none.
marketplaces:
  {marketplace}: {{ currency: {currency} }}

# The environment variable holding this client's Klaviyo private key.
klaviyo_api_key_env: {key_env}

# Is Marketplacer's own Klaviyo integration switched on for this client? It already sends
# "Placed Order" and "Ordered Product"; with it on, rename ours below (validate warns).
marketplacer_klaviyo_integration: false
# metrics:
#   placed_order: Placed Order (Marketplace)
#   ordered_product: Ordered Product (Marketplace)

# Where the storefront's marketing opt-in is, relative to the order. Only an explicit
# true/yes/1 subscribes anyone.
# consent:
#   path: "$.metadata[?@.key == 'accepts_marketing'].value"

# Extra profile properties: property name: JSONPath into the record (left out when empty).
# profile_attributes:
#   Preferred Store: "$.order.metadata[?@.key == 'preferred_store'].value"

# Per-endpoint rate limits, if the client's Klaviyo account has other limits than the
# published ones.
# rate_limits:
#   /api/events: {{ burst: 100, steady: 1000 }}
"#
    )
}

const OVERLAY: &str = r#"# yaml-language-server: $schema=../../../schemas/overlay.schema.json
# An overlay changes a base mapping by name without copying it. Keys given here replace the
# base's; `select` and `compute` change entry by entry; `emit.body` merges key by key, and
# `null` removes a key. `disable: true` turns the mapping off for this client.
overlay: placed-order

emit:
  body:
    data:
      attributes:
        properties:
          SalesChannel: Marketplace

# `marketsync test --client NAME` runs these: a delivery and the requests it must give.
tests:
  - name: the sample order gives one Placed Order with its sales channel
    delivery: ../fixtures/sample-order.json
    expect:
      - data.attributes.properties.OrderId: "5001"
        data.attributes.properties.SalesChannel: Marketplace
"#;
