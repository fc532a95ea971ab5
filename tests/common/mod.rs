//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod orders;
pub mod read_back;

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

/// `marketsync serve` as a child process logging JSON, its stderr lines collected as they come.
pub struct ServeProcess {
    pub child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// `host:port` of its webhooks.
    pub address: String,
}

impl ServeProcess {
    /// Starts `command` (a `serve` with `--log-format json`) and waits for its `listening`
    /// event, whose `webhooks` field gives the address.
    pub fn start(mut command: std::process::Command) -> ServeProcess {
        use std::io::BufRead;
        let mut child = command
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("serve starts");
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        std::thread::spawn({
            let lines = std::sync::Arc::clone(&lines);
            move || {
                for line in stderr.lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap().push(line);
                }
            }
        });
        let mut serve = ServeProcess {
            child,
            lines,
            address: String::new(),
        };
        let listening = serve.wait_for("the listening event", |e| e["message"] == "listening");
        let webhooks = listening["webhooks"].as_str().unwrap();
        serve.address = webhooks
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        serve
    }

    /// Every stderr line so far, each parsed as JSON: a line that is not JSON fails the test.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.lines()
            .iter()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|err| panic!("stderr line is not JSON ({err}): {line}"))
            })
            .collect()
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The first event `matches` takes, waiting up to 20 s for it.
    pub fn wait_for(
        &mut self,
        what: &str,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Some(event) = self.events().into_iter().find(&matches) {
                return event;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "serve exited ({status}) before {what}:\n{}",
                    self.lines().join("\n")
                );
            }
            assert!(
                std::time::Instant::now() < until,
                "no {what} within 20 s:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Sends `signal` (SIGTERM, SIGKILL) to the process.
    pub fn signal(&self, signal: i32) {
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }
}

impl Drop for ServeProcess {
    /// A test that fails leaves no server behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs headless Chromium, as the status page and the read-back report are checked in a real
/// browser; `None` when it is not installed.
pub fn chromium(args: &[&str]) -> Option<std::process::Output> {
    let profile = tempfile::tempdir().unwrap();
    let output = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .output()
        .ok()?;
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(output)
}
