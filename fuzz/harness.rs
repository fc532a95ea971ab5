//! What each fuzz target does with one input, in one place, so that the targets
//! (`fuzz_targets/`) and the main suite's replay of the corpus and of every crash found
//! (`tests/fuzz_regressions.rs`, which includes this file) run exactly the same code: a crash
//! kept as a regression test is then the crash itself, not a likeness of it.
//!
//! Each function takes the input as a sender or a consultant could write it and goes as far
//! into the program as that input would go, stopping short only of the store and the network.
//! None may panic, whatever the bytes.

use marketsync::engine::Engine;
use marketsync::source::RecordError;
use marketsync::source::webhook;
use std::sync::OnceLock;

/// The settings the default mappings are written against; a fuzzed mapping is loaded beside
/// them, as a new mapping in the default folder would be.
const DEFAULT_SETTINGS: &str = include_str!("../mappings/settings.yaml");

/// The example deliveries shipped with the binary: what a fuzzed mapping that compiles is run
/// on, so that its templates and paths are evaluated, not only parsed.
const EXAMPLE_DELIVERIES: &[&str] = &[
    include_str!("../examples/cancellation.json"),
    include_str!("../examples/invoice-unpaid.json"),
    include_str!("../examples/refund.json"),
    include_str!("../examples/shipment.json"),
];

/// The default mappings, compiled once per process: the engine `marketsync serve` runs with
/// no `--mappings`.
fn default_engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| Engine::builtin().expect("the default mappings compile").0)
}

/// What became of one delivery body, on each way in.
#[derive(Debug)]
pub struct DeliveryOutcome {
    /// As `marketsync serve` takes a webhook body: made a capture, parsed and mapped.
    pub received: Result<Vec<Vec<String>>, RecordError>,
    /// As `marketsync run` reads a `.json` file or an NDJSON line.
    pub read: Result<Vec<Vec<String>>, RecordError>,
    /// As `marketsync replay` reads a capture to send it again.
    pub replayed: Result<webhook::Outgoing, RecordError>,
}

/// A webhook body, bytes as received, through the default mappings: per record, the mapping
/// failures that would be kept as dead letters, or why the delivery is unreadable.
pub fn delivery(body: &[u8]) -> DeliveryOutcome {
    let engine = default_engine();
    // As serve reads a body (src/serve.rs): bad UTF-8 is replaced and remembered, so the
    // delivery is kept, readable, as a dead letter.
    let (text, not_utf8_at) = match std::str::from_utf8(body) {
        Ok(text) => (text.to_owned(), None),
        Err(err) => (
            String::from_utf8_lossy(body).into_owned(),
            Some(err.valid_up_to() + 1),
        ),
    };
    let headers = webhook::kept_headers(|name| match name {
        "Marketplacer-Vertical" => Some("fuzz"),
        "Idempotency-Key" => Some("fuzz-delivery"),
        _ => None,
    });
    let received = marketsync::sync::dead_letters_of(engine, &text, not_utf8_at, Some(headers));
    let read = marketsync::sync::dead_letters_of(engine, &text, not_utf8_at, None);
    let replayed = webhook::outgoing(&text, &webhook::Defaults::default());
    DeliveryOutcome {
        received,
        read,
        replayed,
    }
}

/// A mapping file as a consultant writes it, loaded beside the default settings and compiled
/// as `marketsync validate` does; when it compiles, it is run on the example deliveries.
/// Returns every diagnostic as `validate` prints it.
pub fn spec(text: &[u8]) -> Vec<String> {
    // A file that is not UTF-8 is refused before it is parsed (src/spec/load.rs).
    let Ok(text) = std::str::from_utf8(text) else {
        return Vec::new();
    };
    compile(&[("settings.yaml", DEFAULT_SETTINGS), ("fuzzed.yaml", text)])
}

/// The settings file of a mapping folder, with one mapping that reads from them.
pub fn settings(text: &[u8]) -> Vec<String> {
    let Ok(text) = std::str::from_utf8(text) else {
        return Vec::new();
    };
    compile(&[
        ("settings.yaml", text),
        (
            "placed-order.yaml",
            include_str!("../mappings/placed-order.yaml"),
        ),
    ])
}

fn compile(files: &[(&str, &str)]) -> Vec<String> {
    let set = marketsync::spec::load_texts(files);
    let diagnostics = match Engine::compile(set) {
        Ok((engine, warnings)) => {
            for example in EXAMPLE_DELIVERIES {
                for record in marketsync::source::parse_delivery(example).unwrap_or_default() {
                    let mapped = engine.map(&record);
                    for request in &mapped.requests {
                        marketsync::sync::queued(request);
                    }
                }
            }
            warnings
        }
        Err(problems) => problems,
    };
    diagnostics.iter().map(|d| format!("{d:#}")).collect()
}

/// A `Marketplacer-Hmac-256` header value (the first line) and the body it signs (the rest),
/// checked as serve checks them.
pub fn signature(input: &[u8]) -> bool {
    let (header, body) = match input.iter().position(|&b| b == b'\n') {
        Some(at) => (&input[..at], &input[at + 1..]),
        None => (input, &[][..]),
    };
    let secrets =
        webhook::Secrets::new(Some("fuzz-secret"), Some("older-secret")).expect("two secrets");
    secrets.verify(body, Some(header)).is_ok()
}
