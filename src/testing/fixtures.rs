//! Fixture deliveries rendered through a whole mapping set and compared with reviewed snapshots.
//!
//! A consultant's `tests:` check what they thought of; a snapshot of everything the mappings
//! make of real deliveries catches what they did not (a base mapping fix that changes a
//! client's payload, say). The files use insta's format, so `cargo insta review` works on the
//! pending ones as well as `marketsync test --update`.

use super::snapshot::{Snapshot, SnapshotError, contents_match};
use crate::engine::Engine;
use crate::run::Runner;
use crate::source;
use serde_json::{Value as Json, json};
use std::path::{Path, PathBuf};

/// What became of one fixture.
#[derive(Debug)]
pub enum Outcome {
    /// Same as the snapshot.
    Same,
    /// No snapshot yet.
    New(Snapshot),
    /// Differs from the snapshot: the old contents and the new snapshot.
    Changed { old: String, new: Snapshot },
    /// The fixture or its snapshot could not be read.
    Unreadable(String),
}

/// One fixture file and its snapshot.
#[derive(Debug)]
pub struct Checked {
    pub fixture: PathBuf,
    pub snapshot: PathBuf,
    pub outcome: Outcome,
}

/// The fixture files of a folder: `.json` (one delivery) and `.ndjson`/`.jsonl` (one a line),
/// sorted so runs are repeatable.
pub fn fixture_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("json" | "ndjson" | "jsonl")
            )
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Renders every fixture in `fixtures` and compares it with `snapshots/<stem>.snap`.
pub fn check(engine: &Engine, fixtures: &Path, snapshots: &Path) -> std::io::Result<Vec<Checked>> {
    let mut checked = Vec::new();
    let files = fixture_files(fixtures)?;
    let stem_of = |path: &Path| path.file_stem().unwrap_or_default().to_owned();
    for fixture in &files {
        let stem = stem_of(fixture);
        let snapshot = snapshots.join(format!("{}.snap", stem.to_string_lossy()));
        // `x.json` and `x.ndjson` would overwrite each other's snapshot in turn.
        let sharing: Vec<String> = files
            .iter()
            .filter(|other| *other != fixture && stem_of(other) == stem)
            .map(|other| other.display().to_string())
            .collect();
        let outcome = if !sharing.is_empty() {
            Outcome::Unreadable(format!(
                "{} and {} would share the snapshot {}: give one fixture another name",
                fixture.display(),
                sharing.join(", "),
                snapshot.display()
            ))
        } else {
            match std::fs::read_to_string(fixture) {
                Err(e) => Outcome::Unreadable(format!("{}: {e}", fixture.display())),
                Ok(text) => compare(engine, fixture, &text, &snapshot),
            }
        };
        let fixture = fixture.clone();
        checked.push(Checked {
            fixture,
            snapshot,
            outcome,
        });
    }
    Ok(checked)
}

fn compare(engine: &Engine, fixture: &Path, text: &str, snapshot: &Path) -> Outcome {
    let mut new = Snapshot::new(fixture.display().to_string(), render(engine, fixture, text));
    new.description = Some(format!(
        "what the mappings make of {} (marketsync test)",
        fixture.display()
    ));
    match Snapshot::read(snapshot) {
        Err(e) => Outcome::Unreadable(error_text(e)),
        Ok(None) => Outcome::New(new),
        Ok(Some(old)) if contents_match(&old.contents, &new.contents) => Outcome::Same,
        Ok(Some(old)) => Outcome::Changed {
            old: old.contents,
            new,
        },
    }
}

fn error_text(e: SnapshotError) -> String {
    e.to_string()
}

/// Everything the set makes of a fixture, as pretty JSON: each request with its mapping, each
/// rejection and warning, and each delivery that could not be read.
pub fn render(engine: &Engine, fixture: &Path, text: &str) -> String {
    let deliveries = source::deliveries_in(&fixture.to_string_lossy(), text);
    let mut entries = Vec::new();
    let mut runner = Runner::new(engine);
    for (index, delivery) in deliveries.iter().enumerate() {
        let records = match source::parse_delivery(delivery) {
            Ok(records) => records,
            Err(e) => {
                entries.push(json!({"delivery": index + 1, "unreadable": e.to_string()}));
                continue;
            }
        };
        for record in records {
            let Some(mapped) = runner.record(&record) else {
                entries.push(json!({"delivery": record.delivery_id, "repeated": "seen before in this file; a run ignores it"}));
                continue;
            };
            let id = Json::String(record.delivery_id.clone());
            for request in &mapped.requests {
                entries.push(json!({
                    "delivery": id,
                    "mapping": &*request.mapping,
                    "request": format!("{} {}", request.endpoint.method(), request.endpoint.path()),
                    "body": request.body,
                }));
            }
            for error in &mapped.errors {
                entries.push(
                    json!({"delivery": id, "mapping": &*error.mapping, "rejected": error.message}),
                );
            }
            for warning in &mapped.warnings {
                entries.push(json!({"delivery": id, "warning": warning}));
            }
            if !mapped.matched {
                entries.push(json!({"delivery": id, "skipped": format!("no mapping reads {} {}", record.typename, record.event)}));
            }
        }
    }
    serde_json::to_string_pretty(&entries).expect("JSON values serialise")
}
