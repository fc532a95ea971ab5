//! The fuzzers' findings, kept: every input of the committed corpus (`fuzz/corpus/TARGET/`) and
//! every crash found (`fuzz/regressions/TARGET/`) goes through the very code its fuzz target
//! runs (`fuzz/harness.rs`, included below), so a fixed crash cannot come back unnoticed and the
//! corpus keeps exercising what the fuzzers reached, in every `cargo test`, without cargo-fuzz.
//! No crash has been found yet: `fuzz/regressions/` is made with the first (fuzz/README.md).

#[allow(dead_code)]
#[path = "../fuzz/harness.rs"]
mod harness;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

type Target = fn(&[u8]);

/// Each target's directory name and what it does with an input.
const TARGETS: &[(&str, Target)] = &[
    ("delivery", |input| {
        harness::delivery(input);
    }),
    ("spec", |input| {
        harness::spec(input);
    }),
    ("settings", |input| {
        harness::settings(input);
    }),
    ("signature", |input| {
        harness::signature(input);
    }),
];

fn fuzz_dir(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(path)
}

/// The files of `fuzz/<kind>/<target>/`, sorted; none when the folder does not exist.
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(fuzz_dir(kind).join(target)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a readable fuzz folder").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every input of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` (the crashes
/// found, each also checked for its outcome by a test of its own) through the target, and
/// names those that panicked, with how many ran.
fn panicking_inputs(target: &str) -> (usize, Vec<String>) {
    let (_, run) = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a fuzz target");
    let mut ran = 0;
    let mut panicked = Vec::new();
    for path in inputs("corpus", target)
        .into_iter()
        .chain(inputs("regressions", target))
    {
        let input = std::fs::read(&path).expect("a readable fuzz input");
        ran += 1;
        if catch_unwind(AssertUnwindSafe(|| run(&input))).is_err() {
            panicked.push(path.display().to_string());
        }
    }
    (ran, panicked)
}

/// The inputs of one target, each target a test of its own so that they run side by side.
fn corpus_is_taken_without_a_panic(target: &str) {
    let (ran, panicked) = panicking_inputs(target);
    assert!(ran > 0, "no corpus in fuzz/corpus/{target}");
    assert!(
        panicked.is_empty(),
        "these fuzz inputs panic:\n{}",
        panicked.join("\n")
    );
}

#[test]
fn the_delivery_corpus_is_taken_without_a_panic() {
    corpus_is_taken_without_a_panic("delivery");
}

#[test]
fn the_spec_corpus_is_taken_without_a_panic() {
    corpus_is_taken_without_a_panic("spec");
}

#[test]
fn the_settings_corpus_is_taken_without_a_panic() {
    corpus_is_taken_without_a_panic("settings");
}

#[test]
fn the_signature_corpus_is_taken_without_a_panic() {
    corpus_is_taken_without_a_panic("signature");
}

#[test]
fn every_fuzz_folder_names_a_target() {
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir(kind)) else {
            continue;
        };
        for entry in entries {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                TARGETS.iter().any(|(target, _)| *target == name),
                "fuzz/{kind}/{name} is no fuzz target's folder: its inputs would never run"
            );
        }
    }
}
