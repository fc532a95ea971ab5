//! Helpers shared by the integration tests.
#![allow(dead_code)]

use marketsync::engine::Engine;
use marketsync::klaviyo::Request;
use marketsync::run::{Runner, Summary};
use marketsync::source::{Input, read_lines};
use std::path::{Path, PathBuf};

/// The marketsync binary with none of the caller's Klaviyo, Marketplacer or marketsync
/// variables: a developer with `KLAVIYO_API_KEY` exported must not send test data to the real
/// Klaviyo. A test that needs a variable sets it on the command it gets. Every test that runs
/// the binary starts here (or from [`marketsync`]).
pub fn marketsync_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_marketsync"));
    // Named ones always (so a test can check they are cleared), then whatever else the caller
    // has: client keys (`ACME_KLAVIYO_API_KEY`), `MARKETPLACER_*`, `MARKETSYNC_*`.
    for name in OUTSIDE_VARIABLES {
        cmd.env_remove(name);
    }
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy().to_ascii_uppercase();
        if text.contains("KLAVIYO")
            || text.starts_with("MARKETPLACER")
            || text.starts_with("MARKETSYNC")
        {
            cmd.env_remove(&name);
        }
    }
    cmd
}

/// [`marketsync_command`] as an `assert_cmd` command.
pub fn marketsync() -> assert_cmd::Command {
    assert_cmd::Command::from_std(marketsync_command())
}

/// Variables cleared from every run of the binary, set or not in the caller's environment.
pub const OUTSIDE_VARIABLES: &[&str] = &[
    "KLAVIYO_API_KEY",
    "KLAVIYO_BASE_URL",
    "MARKETSYNC_MAPPINGS",
    "ACME_KLAVIYO_API_KEY",
    "PETMARKET_KLAVIYO_API_KEY",
];

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A mapping folder with the default settings and the given (file name, text) specs.
pub fn mapping_folder(specs: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo("mappings/settings.yaml"),
        dir.path().join("settings.yaml"),
    )
    .unwrap();
    for (name, text) in specs {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

/// The text of a broken spec fixture, as a (file name, text) pair for [`mapping_folder`].
pub fn broken_spec(name: &str) -> (&str, String) {
    let text = std::fs::read_to_string(repo("tests/fixtures/broken-specs").join(name)).unwrap();
    (name, text)
}

pub fn engine() -> Engine {
    let (engine, warnings) = Engine::builtin().unwrap_or_else(|d| panic!("{d:#}"));
    assert!(warnings.0.is_empty(), "{warnings:#}");
    engine
}

/// A dry run over files, in order: the requests, the report lines and the summary.
pub struct Run {
    pub requests: Vec<Request>,
    pub report: String,
    pub summary: Summary,
}

pub fn run(engine: &Engine, files: &[&str]) -> Run {
    let mut runner = Runner::new(engine);
    let mut requests = Vec::new();
    let mut report = Vec::new();
    for file in files {
        for line in read_lines(&Input::File(PathBuf::from(file))).unwrap() {
            runner
                .delivery(
                    &line.unwrap(),
                    |r| {
                        requests.push(r.clone());
                        Ok(())
                    },
                    &mut report,
                )
                .unwrap();
        }
    }
    Run {
        requests,
        report: String::from_utf8(report).unwrap(),
        summary: runner.summary,
    }
}

impl Run {
    pub fn of_mapping(&self, mapping: &str) -> Vec<&Request> {
        self.requests
            .iter()
            .filter(|r| &*r.mapping == mapping)
            .collect()
    }

    pub fn unique_ids(&self, mapping: &str) -> Vec<String> {
        self.of_mapping(mapping)
            .iter()
            .map(|r| {
                r.body["data"]["attributes"]["unique_id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }
}

/// `count` paid invoice captures of distinct single-seller orders (each with its own order,
/// line item ids and customer), as NDJSON, built from the first sample capture.
pub fn synthetic_orders(count: usize) -> String {
    let text = std::fs::read_to_string(repo("examples/orders.ndjson")).unwrap();
    let template: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let mut out = String::new();
    for n in 0..count {
        let mut capture = template.clone();
        capture["headers"]["Idempotency-Key"] = format!("synthetic-{n}").into();
        capture["body"]["id"] = format!("synthetic-delivery-{n}").into();
        let node = &mut capture["body"]["payload"]["data"]["node"];
        let order_id = 900_000 + n as u64;
        node["order"]["legacyId"] = order_id.into();
        node["order"]["emailAddress"] = format!("buyer{n}@example.com").into();
        node["order"]["phone"] = format!("04{:08}", 12_000_000 + n).into();
        let lines = node["lineItems"].as_array_mut().unwrap();
        for (i, line) in lines.iter_mut().enumerate() {
            line["legacyId"] = (order_id * 10 + i as u64).into();
        }
        let lines = node["lineItems"].clone();
        node["order"]["lineItems"]["nodes"] = lines;
        out.push_str(&capture.to_string());
        out.push('\n');
    }
    out
}

/// [`synthetic_orders`] as bare GraphQL results (`{"data": {"node": ...}}`, no envelope and so
/// no delivery id), as NDJSON.
pub fn bare_results(count: usize) -> String {
    synthetic_orders(count)
        .lines()
        .map(|line| {
            let capture: serde_json::Value = serde_json::from_str(line).unwrap();
            let node = &capture["body"]["payload"]["data"]["node"];
            format!("{}\n", serde_json::json!({"data": {"node": node}}))
        })
        .collect()
}
