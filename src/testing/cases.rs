//! The `tests:` a consultant writes beside a mapping: one delivery, and what must come of it.
//!
//! A test names only what matters to it ("value is 129.95", "no subscription"), so a change
//! elsewhere in the body does not break it; fixture snapshots (see [`super::fixtures`]) catch
//! everything else. Every failure is reported at the line of the expectation that failed, so CI
//! can annotate it on the pull request.

use crate::diagnostic::{Diagnostic, Files, Position};
use crate::engine::Engine;
use crate::klaviyo::Request;
use crate::run::Runner;
use crate::source;
use crate::spec::{Example, ExpectedRequest, MappingSet, Spanned};
use serde_json::Value as Json;

/// One test, taken out of its spec so it outlives the compile that consumes the set.
#[derive(Debug)]
pub struct Case {
    pub mapping: String,
    pub name: String,
    pub at: Position,
    delivery: Example,
    expect: Option<Spanned<Vec<ExpectedRequest>>>,
    error: Option<Spanned<String>>,
}

/// Every test of every mapping in the set, with the files their positions point into.
pub fn collect(set: &MappingSet) -> (Vec<Case>, Files) {
    let mut cases = Vec::new();
    for file in &set.mappings {
        for (test, delivery) in file.spec.tests.iter().zip(&file.test_deliveries) {
            cases.push(Case {
                mapping: file.spec.name.value.clone(),
                name: test.name.value.clone(),
                at: test.name.at,
                delivery: Example {
                    name: delivery.name.clone(),
                    position: delivery.position,
                    text: delivery.text.clone(),
                },
                expect: test.expect.clone(),
                error: test.error.clone(),
            });
        }
    }
    (cases, set.files.clone())
}

/// Runs one test; each failed expectation is a diagnostic at its line.
pub fn run(case: &Case, engine: &Engine, files: &Files) -> Vec<Diagnostic> {
    let fail = |at: Position, message: String| {
        files.error(
            at,
            format!("test `{}` of `{}`: {message}", case.name, case.mapping),
        )
    };
    let text = match &case.delivery.text {
        Ok(text) => text,
        Err(why) => return vec![fail(case.delivery.position, format!("cannot read {why}"))],
    };
    let records = match parse(&case.delivery.name, text) {
        Ok(records) => records,
        Err(why) => {
            return vec![fail(
                case.delivery.position,
                format!("the delivery cannot be read: {why}"),
            )];
        }
    };
    let mut requests: Vec<Request> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut runner = Runner::new(engine);
    for record in &records {
        let Some(mapped) = runner.record(record) else {
            continue;
        };
        requests.extend(
            mapped
                .requests
                .into_iter()
                .filter(|r| *r.mapping == *case.mapping),
        );
        errors.extend(
            mapped
                .errors
                .into_iter()
                .filter(|e| *e.mapping == *case.mapping)
                .map(|e| e.message),
        );
    }
    let mut failures = Vec::new();
    match &case.error {
        Some(expected) => {
            if !errors.iter().any(|e| e.contains(&expected.value)) {
                let got = match errors.as_slice() {
                    [] => format!("{} request(s) and no rejection", requests.len()),
                    errors => format!("rejected with: {}", errors.join("; ")),
                };
                failures.push(fail(
                    expected.at,
                    format!(
                        "expected a rejection containing `{}`, got {got}",
                        expected.value
                    ),
                ));
            }
        }
        None => {
            for error in &errors {
                failures.push(fail(
                    case.at,
                    format!("the mapping rejected the delivery: {error}"),
                ));
            }
        }
    }
    if let Some(expect) = &case.expect {
        if expect.value.len() != requests.len() {
            failures.push(fail(
                expect.at,
                format!(
                    "expected {} request(s), got {}{}",
                    expect.value.len(),
                    requests.len(),
                    listing(&requests)
                ),
            ));
        }
        for (index, (entry, request)) in expect.value.iter().zip(&requests).enumerate() {
            for (field, wanted) in entry {
                let actual = field_of(request, field);
                if actual.as_ref() != Some(&wanted.value) {
                    let actual = actual.map_or("missing".to_owned(), |v| format!("`{v}`"));
                    failures.push(fail(
                        wanted.at,
                        format!(
                            "request {}: `{field}` is {actual}, expected `{}`",
                            index + 1,
                            wanted.value
                        ),
                    ));
                }
            }
        }
    }
    failures
}

/// An inline delivery is one delivery; a file follows [`source::deliveries_in`].
fn parse(name: &str, text: &str) -> Result<Vec<source::Record>, String> {
    let deliveries = match name {
        "(inline)" => vec![text],
        file => source::deliveries_in(file, text),
    };
    let mut records = Vec::new();
    for (index, delivery) in deliveries.iter().enumerate() {
        let parsed = source::parse_delivery(delivery).map_err(|e| match deliveries.len() {
            1 => e.to_string(),
            _ => format!("line {}: {e}", index + 1),
        })?;
        records.extend(parsed);
    }
    Ok(records)
}

/// `body` (the whole body), `endpoint` (`POST /api/events`), or a dotted path into the body
/// where a number indexes a list: `data.attributes.properties.Items.0.SKU`.
fn field_of(request: &Request, field: &str) -> Option<Json> {
    match field {
        "body" => Some(request.body.clone()),
        "endpoint" => Some(Json::String(format!(
            "{} {}",
            request.endpoint.method(),
            request.endpoint.path()
        ))),
        path => {
            let mut node = &request.body;
            for key in path.split('.') {
                node = match node {
                    Json::Array(items) => items.get(key.parse::<usize>().ok()?)?,
                    other => other.get(key)?,
                };
            }
            Some(node.clone())
        }
    }
}

/// What the mapping did make, so a count mismatch shows it.
fn listing(requests: &[Request]) -> String {
    requests
        .iter()
        .map(|r| {
            let id = r.unique_id().map(|id| format!(" {id}")).unwrap_or_default();
            format!("\n  - {} {}{id}", r.endpoint.method(), r.endpoint.path())
        })
        .collect()
}
