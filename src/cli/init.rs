//! `marketsync init CLIENT`: a client folder that validates and passes its tests from the start.
//!
//! A new consultant learns the layout from a working example rather than from docs alone, and
//! CI is green on the first commit; every file says in comments what to change.

use super::{EXIT_IO, EXIT_OK, EXIT_USAGE, MappingArgs};
use marketsync::engine::Engine;
use marketsync::spec::MappingSet;
use marketsync::testing::{cases, fixtures};
use std::path::{Path, PathBuf};

/// Create a client folder: settings, an overlay example, a query example, a fixture, a test,
/// and its snapshot.
#[derive(clap::Args)]
#[command(after_help = "Example:
  marketsync init acme --marketplace acme-pets --currency NZD
  marketsync validate --client acme && marketsync test --client acme

Creates clients/NAME/client.yaml, clients/NAME/mappings/placed-order.yaml (an overlay with a
test), clients/NAME/queries/invoice.graphql (a commented example of adding fields to the
Invoice webhook's query), clients/NAME/fixtures/sample-order.json and its snapshot under
snapshots/NAME/. Refuses to overwrite an existing client folder.")]
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
    // Every argument is checked before anything is written.
    let marketplace = args
        .marketplace
        .clone()
        .unwrap_or_else(|| args.name.clone());
    if let Err(why) = check_arguments(&args.name, &marketplace, &args.currency) {
        eprintln!("error: {why}; nothing was written");
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
    let snapshots = args.snapshots.join(&args.name);
    let snapshots_existed = snapshots.exists();
    // The base is chosen as every later command will choose it, so `test` agrees with init.
    let mappings = MappingArgs {
        mappings: None,
        client: Some(dir.display().to_string()),
        clients: args.clients.clone(),
    };
    eprintln!("mappings: {}", mappings.chosen().describe());
    match scaffold(&args, &mappings, &dir, &marketplace, &snapshots) {
        Ok(created) => {
            for path in created {
                println!("created {}", path.display());
            }
        }
        Err((code, why)) => {
            // Nothing half-made is left behind: the client folder did not exist before.
            let _ = std::fs::remove_dir_all(&dir);
            let _ = if snapshots_existed {
                std::fs::remove_file(snapshots.join("sample-order.snap"))
            } else {
                std::fs::remove_dir_all(&snapshots)
            };
            eprintln!("error: {why}; nothing was written");
            return code;
        }
    }
    println!(
        "\nNext: edit {}, then run\n  marketsync validate --client {name}\n  marketsync test --client {name}\n  marketsync queries --client {name}   # paste into the client's Marketplacer webhooks\n  marketsync run --dry-run --client {name} {}",
        dir.join("client.yaml").display(),
        dir.join("fixtures/sample-order.json").display(),
        name = args.name
    );
    EXIT_OK
}

/// The name becomes a folder, the marketplace begins every unique_id, and the currency is
/// sent to Klaviyo: each is checked as `validate` would check the file.
fn check_arguments(name: &str, marketplace: &str, currency: &str) -> Result<(), String> {
    let folder_name = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if !folder_name(name) {
        return Err(
            "a client name is letters, digits, `-` and `_` (it becomes a folder name)".into(),
        );
    }
    if marketplace.trim().is_empty() || marketplace.contains(char::is_whitespace) {
        return Err(format!(
            "--marketplace `{marketplace}`: a Marketplacer vertical name, without spaces"
        ));
    }
    if iso_currency::Currency::from_code(currency).is_none() {
        let upper = currency.trim().to_ascii_uppercase();
        return Err(if iso_currency::Currency::from_code(&upper).is_some() {
            format!("--currency {currency}: write currency codes in capitals, `{upper}`")
        } else {
            format!(
                "--currency {currency}: not an ISO 4217 currency code (three capitals, such as AUD or NZD)"
            )
        });
    }
    Ok(())
}

/// Writes the client folder and its snapshot, and checks that its tests pass; the files
/// created, or the exit code and why not.
fn scaffold(
    args: &Args,
    mappings: &MappingArgs,
    dir: &Path,
    marketplace: &str,
    snapshots: &Path,
) -> Result<Vec<PathBuf>, (u8, String)> {
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
        *vertical = serde_json::Value::String(marketplace.to_owned());
    }
    let mut files = vec![
        (
            dir.join("client.yaml"),
            client_yaml(&args.name, marketplace, &args.currency, &key_env),
        ),
        (dir.join("mappings/placed-order.yaml"), overlay(None)),
        (
            dir.join("queries/invoice.graphql"),
            QUERY_EXAMPLE.to_owned(),
        ),
        (
            dir.join("fixtures/sample-order.json"),
            serde_json::to_string_pretty(&sample).expect("JSON serialises") + "\n",
        ),
    ];
    let write_all = |files: &[(PathBuf, String)]| {
        for (path, text) in files {
            write(path, text)
                .map_err(|e| (EXIT_IO, format!("cannot write {}: {e}", path.display())))?;
        }
        Ok::<(), (u8, String)>(())
    };
    write_all(&files)?;
    let mut failing = failing_base_tests(mappings, dir)?;
    if !failing.is_empty() {
        // The base tests value the sample orders the base's way; a currency with other minor
        // units (JPY has none) values them differently. Those tests are left out for this
        // client, saying so, and its own test and snapshot stand in for them.
        let note = base_tests_note(&args.currency);
        for mapping in &failing {
            let path = dir.join("mappings").join(format!("{mapping}.yaml"));
            let text = if mapping == "placed-order" {
                overlay(Some(&note))
            } else {
                format!(
                    "# yaml-language-server: $schema=../../../schemas/overlay.schema.json\n{note}overlay: {mapping}\nbase_tests: false\n# tests:\n#   - name: ...\n"
                )
            };
            files.push((path, text));
        }
        write_all(&files)?;
        failing = failing_base_tests(mappings, dir)?;
        if !failing.is_empty() {
            return Err((
                super::EXIT_BAD_MAPPINGS,
                format!(
                    "the scaffold's tests of {} fail (a bug in marketsync init)",
                    failing.join(", ")
                ),
            ));
        }
    }
    let mut created: Vec<PathBuf> = Vec::new();
    for (path, _) in &files {
        if !created.contains(path) {
            created.push(path.clone());
        }
    }
    // The snapshot is what the new client's mappings make of the fixture, so `test` passes.
    let engine = compile_scaffold(mappings.read_set())?;
    let checked = fixtures::check(&engine, &dir.join("fixtures"), snapshots)
        .map_err(|e| (EXIT_IO, format!("cannot read the fixtures: {e}")))?;
    for item in checked {
        let written = match item.outcome {
            fixtures::Outcome::New(snapshot) => snapshot.write(&item.snapshot),
            fixtures::Outcome::Changed { new, .. } => new.write(&item.snapshot),
            _ => Ok(()),
        };
        written.map_err(|e| (EXIT_IO, e.to_string()))?;
        created.push(item.snapshot);
    }
    Ok(created)
}

/// The scaffold's mappings compiled; a scaffold that does not load is a bug of `init`'s own.
fn compile_scaffold(set: MappingSet) -> Result<Engine, (u8, String)> {
    Engine::compile(set)
        .map(|(engine, _)| engine)
        .map_err(|problems| {
            eprintln!("{problems:#}");
            (
                super::EXIT_BAD_MAPPINGS,
                "the scaffold does not load (a bug in marketsync init)".into(),
            )
        })
}

/// The base mappings whose own tests fail for the client in `dir`.
fn failing_base_tests(mappings: &MappingArgs, dir: &Path) -> Result<Vec<String>, (u8, String)> {
    let set = mappings.read_set();
    let (cases, files) = cases::collect(&set);
    let engine = compile_scaffold(set)?;
    let own = dir.display().to_string();
    let mut failing: Vec<String> = cases
        .iter()
        .filter(|case| !files.get(case.at.file).name.starts_with(&own))
        .filter(|case| !cases::run(case, &engine, &files).is_empty())
        .map(|case| case.mapping.clone())
        .collect();
    failing.dedup();
    Ok(failing)
}

fn base_tests_note(currency: &str) -> String {
    let decimals = iso_currency::Currency::from_code(currency)
        .and_then(|c| c.exponent())
        .unwrap_or(0);
    format!(
        "# The base mapping's own tests expect the sample orders valued in the base currency;\n\
         # {currency} amounts have {decimals} decimal place(s), so those tests are left out for this\n\
         # client (`base_tests: false`). Its own tests and fixture snapshot check it instead.\n"
    )
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
# true/yes/1 subscribes anyone. If the base examples have no such field, add
# mappings/consent.yaml with `overlay: consent` and `base_examples: false`, so that
# `validate --strict` does not fail on examples that produce no request.
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

/// The scaffold's overlay of placed-order; with a note, the base tests are left out.
fn overlay(base_tests_note: Option<&str>) -> String {
    let base_tests = match base_tests_note {
        Some(note) => format!("{note}base_tests: false\n"),
        None => String::new(),
    };
    OVERLAY.replacen(
        "overlay: placed-order\n",
        &format!("overlay: placed-order\n{base_tests}"),
        1,
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

/// The scaffold's query overlay: all comments, so the client starts with the base queries.
const QUERY_EXAMPLE: &str = r#"# Fields this client's mappings read beyond the base webhook queries (queries/ beside the
# base mappings, or the built-in ones). A query here is merged into the base query of the same
# webhook type field by field, so fixes to the base still reach this client; write only what
# you add. `marketsync validate --client NAME` checks the client's mappings against the merged
# query, and `marketsync queries --client NAME` prints it, ready to paste into the client's
# Invoice webhook in Marketplacer. See docs/clients.md, "Adding an attribute".
#
# For example, for a profile attribute `Company: $.order.companyName` in client.yaml:
#
# query InvoiceWebhook($id: ID!) {
#   node(id: $id) {
#     ... on Invoice {
#       order { companyName }
#     }
#   }
# }
"#;
