//! `marketsync test`: the `tests:` in every mapping, then fixture deliveries against snapshots.

use super::report::{annotation, diagnostic_json, escape_data, escape_property};
use super::{EXIT_BAD_MAPPINGS, EXIT_IO, EXIT_OK, EXIT_REJECTED, MappingArgs};
use marketsync::diagnostic::Diagnostic;
use marketsync::engine::Engine;
use marketsync::testing::snapshot::diff;
use marketsync::testing::{cases, fixtures};
use serde_json::json;
use std::io::IsTerminal;
use std::path::PathBuf;

/// Run the tests written in the mappings, and compare fixture deliveries with snapshots.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  marketsync test --client acme                  # clients/acme: tests, fixtures, snapshots
  marketsync test --client acme --update         # accept the new output as the snapshots
  marketsync test --client acme --format github  # annotations on a pull request

Two kinds of test run, and every failure is reported, not only the first:
- `tests:` in a mapping (or an overlay): a delivery and the requests it must give, in part
  (`data.attributes.value: 129.95`) or whole (`body:`), `expect: []` for none, or `error:`;
- fixtures: each delivery file in the fixtures folder (default `clients/NAME/fixtures`) is
  rendered through every mapping and compared with `snapshots/NAME/<file>.snap`. A difference
  is shown as a diff and written beside the snapshot as `.snap.new`, so `cargo insta review`
  works on it too; `--update` accepts the new output instead.

Exit 0 when all pass, 1 when any test fails or a snapshot differs or is new, 3 when the
mappings do not load, 4 when a fixture or snapshot cannot be read or written.")]
pub struct Args {
    #[command(flatten)]
    mappings: MappingArgs,
    /// Fixture deliveries to snapshot (`.json` one delivery, `.ndjson` one a line); default
    /// `clients/NAME/fixtures` with --client, none without.
    #[arg(long, value_name = "DIR")]
    fixtures: Option<PathBuf>,
    /// Where the snapshots live; default `snapshots/NAME` (the client, else the fixtures
    /// folder's name).
    #[arg(long, value_name = "DIR")]
    snapshots: Option<PathBuf>,
    /// Accept the current output: write the snapshots instead of failing on differences.
    #[arg(long)]
    update: bool,
    /// `human`, `json` or `github`.
    #[arg(long, value_name = "FORMAT", default_value = "human", value_parser = ["human", "json", "github"])]
    format: String,
}

/// One test's result, for every format.
struct Result {
    /// `mapping › test` or the fixture file.
    name: String,
    failures: Vec<Diagnostic>,
    /// A snapshot difference: where, and the diff.
    snapshot: Option<(PathBuf, String)>,
}

pub fn execute(args: Args) -> u8 {
    let set = args.mappings.load_set();
    let (cases, files) = cases::collect(&set);
    let engine = match Engine::compile(set) {
        Ok((engine, _warnings)) => engine,
        Err(problems) => {
            match args.format.as_str() {
                "github" => problems.iter().for_each(|d| println!("{}", annotation(d))),
                "json" => println!(
                    "{}",
                    json!({"ok": false, "loaded": false, "mapping_set": args.mappings.chosen().json(),
                        "diagnostics": problems.iter().map(diagnostic_json).collect::<Vec<_>>()})
                ),
                _ => return super::report_unloadable(&problems),
            }
            eprintln!("error: the mappings do not load; run `marketsync validate` for details");
            return EXIT_BAD_MAPPINGS;
        }
    };
    let mut results: Vec<Result> = cases
        .iter()
        .map(|case| Result {
            name: format!("{} › {}", case.mapping, case.name),
            failures: cases::run(case, &engine, &files),
            snapshot: None,
        })
        .collect();
    match fixture_results(&args, &engine) {
        Ok(more) => results.extend(more),
        Err(message) => {
            eprintln!("error: {message}");
            return EXIT_IO;
        }
    }
    let failed = results
        .iter()
        .filter(|r| !r.failures.is_empty() || r.snapshot.is_some())
        .count();
    print(
        &args.format,
        &results,
        failed,
        &args.mappings.chosen().json(),
    );
    if failed == 0 { EXIT_OK } else { EXIT_REJECTED }
}

/// The fixture folder and snapshot folder this run uses, if any.
fn folders(args: &Args) -> Option<(PathBuf, PathBuf)> {
    let client = args.mappings.client.as_deref();
    let fixtures = match (&args.fixtures, client) {
        (Some(dir), _) => dir.clone(),
        (None, Some(client)) => args.mappings.client_dir(client).join("fixtures"),
        (None, None) => return None,
    };
    let snapshots = args.snapshots.clone().unwrap_or_else(|| {
        let name = match client {
            Some(client) => client_name(client),
            None => fixtures
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "fixtures".into()),
        };
        PathBuf::from("snapshots").join(name)
    });
    Some((fixtures, snapshots))
}

fn client_name(client: &str) -> String {
    PathBuf::from(client)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| client.to_owned())
}

fn fixture_results(args: &Args, engine: &Engine) -> std::result::Result<Vec<Result>, String> {
    let Some((fixtures, snapshots)) = folders(args) else {
        return Ok(Vec::new());
    };
    if !fixtures.is_dir() {
        if args.fixtures.is_some() {
            return Err(format!("no fixture folder {}", fixtures.display()));
        }
        return Ok(Vec::new());
    }
    let checked = fixtures::check(engine, &fixtures, &snapshots)
        .map_err(|e| format!("cannot read fixtures in {}: {e}", fixtures.display()))?;
    let colored = args.format == "human" && std::io::stdout().is_terminal();
    let mut results = Vec::new();
    for item in checked {
        let name = item.fixture.display().to_string();
        let snapshot = match item.outcome {
            fixtures::Outcome::Same => {
                // Matching again: a pending snapshot left by an earlier run is stale, and
                // `cargo insta review` would offer it (insta removes it the same way).
                marketsync::testing::snapshot::Snapshot::remove_pending(&item.snapshot)
                    .map_err(|e| e.to_string())?;
                None
            }
            fixtures::Outcome::Unreadable(why) => return Err(why),
            fixtures::Outcome::New(new) => {
                let text = format!("new snapshot:\n{}", diff("", &new.contents, colored));
                accept_or_hold(args.update, &new, &item.snapshot)?.then_some(text)
            }
            fixtures::Outcome::Changed { old, new } => {
                let text = diff(&old, &new.contents, colored);
                accept_or_hold(args.update, &new, &item.snapshot)?.then_some(text)
            }
        };
        results.push(Result {
            name,
            failures: Vec::new(),
            snapshot: snapshot.map(|text| (item.snapshot, text)),
        });
    }
    Ok(results)
}

/// With `--update`, writes the snapshot (and clears a pending one): the change is accepted.
/// Otherwise leaves the new output pending beside it for review. True when it is a failure.
fn accept_or_hold(
    update: bool,
    new: &marketsync::testing::snapshot::Snapshot,
    path: &std::path::Path,
) -> std::result::Result<bool, String> {
    let failed = |e: marketsync::testing::snapshot::SnapshotError| e.to_string();
    if update {
        new.write(path).map_err(failed)?;
        marketsync::testing::snapshot::Snapshot::remove_pending(path).map_err(failed)?;
        Ok(false)
    } else {
        new.write_pending(path).map_err(failed)?;
        Ok(true)
    }
}

fn print(format: &str, results: &[Result], failed: usize, mapping_set: &serde_json::Value) {
    let passed = results.len() - failed;
    match format {
        "json" => {
            let items: Vec<serde_json::Value> = results
                .iter()
                .map(|r| {
                    json!({
                        "name": r.name,
                        "ok": r.failures.is_empty() && r.snapshot.is_none(),
                        "failures": r.failures.iter().map(diagnostic_json).collect::<Vec<_>>(),
                        "snapshot": r.snapshot.as_ref().map(|(path, diff)| json!({"file": path.display().to_string(), "diff": diff})),
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &json!({"ok": failed == 0, "passed": passed, "failed": failed, "tests": items, "mapping_set": mapping_set})
                )
                .expect("results serialise")
            );
        }
        "github" => {
            for r in results {
                for d in &r.failures {
                    println!("{}", annotation(d));
                }
                if let Some((path, diff)) = &r.snapshot {
                    let path = path.display().to_string();
                    println!(
                        "::error file={}::{}",
                        escape_property(&path),
                        escape_data(&format!(
                            "{} no longer matches its snapshot (accept with `marketsync test --update` or `cargo insta review`)",
                            r.name
                        ))
                    );
                    // The diff in a folded group of the job log: too long for an annotation.
                    println!("::group::{path}\n{diff}\n::endgroup::");
                }
            }
        }
        _ => {
            for r in results {
                if r.failures.is_empty() && r.snapshot.is_none() {
                    println!("ok    {}", r.name);
                    continue;
                }
                println!("FAIL  {}", r.name);
                for d in &r.failures {
                    println!("{d:#}\n");
                }
                if let Some((path, diff)) = &r.snapshot {
                    println!(
                        "  snapshot {} differs (pending as .snap.new; accept with --update or `cargo insta review`):\n{diff}",
                        path.display()
                    );
                }
            }
        }
    }
    eprintln!("{passed} passed, {failed} failed");
}
