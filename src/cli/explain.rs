//! `marketsync explain`: how one mapping treats one delivery, field by field.

use super::{EXIT_IO, EXIT_OK, EXIT_REJECTED, EXIT_USAGE, MappingArgs};
use marketsync::engine::explain::{Check, Explanation, Field, How, Link, LinkKind, Outcome};
use marketsync::source::{self, Input, Line, read_lines};
use serde_json::{Value as Json, json};
use std::fmt::Write as _;
use std::io::{self, Write as _};

/// Show how one mapping treats one delivery: whether it matched (and which check failed), each
/// selection with its JSONPath, value and how it was found, each computed value, `when` and
/// `require`, and every field of every request with the template it came from and the names
/// (down to JSONPath) that template reads.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  marketsync explain --mapping placed-order examples/orders.ndjson
  marketsync explain --mapping ordered-product --delivery 4 examples/orders.ndjson
  marketsync explain --mapping profile --client acme capture.json
  marketsync explain --mapping refunded-order --format json examples/refund.json | jq .

INPUT holds one delivery (a `.json` file), or one per line (`.ndjson`, standard input with `-`):
then --delivery N explains the delivery on line N, and the first is explained when it is left
out. A backfill page holds many records; each is explained.

Each field reads `PATH  VALUE  ← TEMPLATE  ← NAME = SOURCE ...`: the template the value was
rendered from, then each selection or computed value it reads, down to the JSONPath. `omitted:
empty` marks a field left out because it rendered to nothing; `(default fired)` marks a
selection whose path matched nothing, so its `default:` was used.

Exit 0 when the mapping produced requests, 1 when it did not match, was rejected or produced
nothing, 2 on a usage error (an unknown mapping name lists the names), 3 when the mappings do
not load, 4 when the input cannot be read.")]
pub struct Args {
    #[command(flatten)]
    mappings: MappingArgs,
    /// The mapping to explain, by its `name:`.
    #[arg(long, value_name = "NAME")]
    mapping: String,
    /// For an input with one delivery per line: the line of the delivery to explain (1-based).
    #[arg(long, value_name = "N")]
    delivery: Option<usize>,
    /// Marketplace for deliveries that do not name one (no Marketplacer-Vertical header).
    #[arg(long, value_name = "NAME")]
    marketplace: Option<String>,
    /// `human` or `json`.
    #[arg(long, value_name = "FORMAT", default_value = "human", value_parser = ["human", "json"])]
    format: String,
    /// The file holding the delivery; `-` for standard input.
    #[arg(value_name = "INPUT")]
    input: String,
}

/// The delivery picked from the input, and how many the input holds.
struct Picked {
    line: Line,
    deliveries: usize,
    chosen: bool,
}

pub fn execute(args: Args) -> u8 {
    let engine = match args
        .mappings
        .load_for_marketplace(args.marketplace.as_ref())
    {
        Ok(engine) => engine,
        Err(code) => return code,
    };
    let names = engine.mapping_names();
    if !names.iter().any(|n| **n == *args.mapping) {
        let names: Vec<&str> = names.iter().map(|n| &**n).collect();
        eprintln!(
            "error: no mapping is named `{}`; the mappings are: {}",
            args.mapping,
            names.join(", ")
        );
        return EXIT_USAGE;
    }
    let input = Input::from_arg(&args.input);
    let picked = match pick(&input, args.delivery) {
        Ok(picked) => picked,
        Err((code, message)) => {
            eprintln!("error: {message}");
            if args.format == "json" {
                // A script reading stdout gets a document even when there was nothing to read.
                let document = json!({
                    "mapping": args.mapping,
                    "input": {"name": input.name()},
                    "produced": false,
                    "error": message,
                    "records": [],
                    "mapping_set": args.mappings.chosen().json(),
                });
                return write_out(
                    serde_json::to_string_pretty(&document).expect("JSON serialises") + "\n",
                    code,
                );
            }
            return code;
        }
    };
    if args.format == "json" && !picked.chosen && picked.deliveries > 1 {
        eprintln!(
            "note: {} holds {} deliveries; explaining the first (line {}); choose another with --delivery N",
            picked.line.origin, picked.deliveries, picked.line.number
        );
    }
    let records = match source::parse_line(&picked.line) {
        Ok(records) => records,
        Err(err) => {
            eprintln!(
                "{}:{}: rejected: {err}",
                picked.line.origin, picked.line.number
            );
            if args.format == "json" {
                // A script reading stdout gets a document whatever became of the delivery.
                let document = json!({
                    "mapping": args.mapping,
                    "input": input_json(&picked),
                    "produced": false,
                    "rejected": err.to_string(),
                    "records": [],
                    "mapping_set": args.mappings.chosen().json(),
                });
                return write_out(
                    serde_json::to_string_pretty(&document).expect("JSON serialises") + "\n",
                    EXIT_REJECTED,
                );
            }
            return EXIT_REJECTED;
        }
    };
    let explanations: Vec<Explanation> = records
        .iter()
        .map(|record| {
            engine
                .explain(&args.mapping, record)
                .expect("the mapping name was checked")
        })
        .collect();
    let produced = explanations.iter().any(Explanation::produced);
    let code = if produced { EXIT_OK } else { EXIT_REJECTED };
    let text = if args.format == "json" {
        let document = json!({
            "mapping": args.mapping,
            "input": input_json(&picked),
            "produced": produced,
            "records": explanations,
            "mapping_set": args.mappings.chosen().json(),
        });
        let mut text = serde_json::to_string_pretty(&document).expect("an explanation serialises");
        text.push('\n');
        text
    } else {
        render(&picked, &explanations)
    };
    write_out(text, code)
}

fn input_json(picked: &Picked) -> Json {
    json!({
        "name": &*picked.line.origin,
        "line": picked.line.number,
        "deliveries": picked.deliveries,
    })
}

/// Writes the explanation, and gives `code` unless stdout failed.
fn write_out(text: String, code: u8) -> u8 {
    match io::stdout().lock().write_all(text.as_bytes()) {
        Ok(()) => code,
        // The reader stopped early (`| head`, a pager closed): nothing is wrong.
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => code,
        Err(err) => {
            eprintln!("error: cannot write the explanation: {err}");
            EXIT_IO
        }
    }
}

/// Reads the input up to the delivery wanted, counting them all. An input that gives no
/// delivery to explain is the exit code and what to tell the user.
fn pick(input: &Input, wanted: Option<usize>) -> Result<Picked, (u8, String)> {
    let lines = read_lines(input).map_err(|err| (EXIT_IO, err.to_string()))?;
    let mut found = None;
    let mut deliveries = 0;
    let mut numbers = Vec::new();
    for line in lines {
        let line = line.map_err(|err| (EXIT_IO, err.to_string()))?;
        deliveries += 1;
        if numbers.len() < 10 {
            numbers.push(line.number.to_string());
        }
        let take = match wanted {
            Some(n) => line.number == n,
            None => found.is_none(),
        };
        if take {
            found = Some(line);
        }
    }
    match (found, wanted) {
        (Some(line), _) => Ok(Picked {
            line,
            deliveries,
            chosen: wanted.is_some(),
        }),
        (None, None) => Err((EXIT_IO, format!("{} holds no delivery", input.name()))),
        (None, Some(n)) => {
            let more = if deliveries > numbers.len() {
                ", ..."
            } else {
                ""
            };
            Err((
                EXIT_USAGE,
                format!(
                    "{} has no delivery on line {n}; its deliveries are on lines {}{more}",
                    input.name(),
                    numbers.join(", ")
                ),
            ))
        }
    }
}

/// Values longer than this (as JSON) are cut, in the human output.
const VALUE_WIDTH: usize = 80;
/// Expressions in a chain longer than this are cut.
const SOURCE_WIDTH: usize = 60;

fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(width).collect();
    cut.push('…');
    cut
}

fn brief(value: &Json) -> String {
    cut(&value.to_string(), VALUE_WIDTH)
}

fn width<'a>(items: impl Iterator<Item = &'a str>, cap: usize) -> usize {
    items.map(|s| s.chars().count()).max().unwrap_or(0).min(cap)
}

/// The human report: one section per record of the delivery.
fn render(picked: &Picked, explanations: &[Explanation]) -> String {
    let mut out = String::new();
    let Some(first) = explanations.first() else {
        return out;
    };
    let _ = writeln!(out, "mapping  {}  {}", first.mapping, first.endpoint);
    let mut input = format!("{} line {}", picked.line.origin, picked.line.number);
    if picked.deliveries > 1 {
        let _ = write!(input, " ({} deliveries in the input", picked.deliveries);
        if !picked.chosen {
            input.push_str("; the first is explained, --delivery N picks another");
        }
        input.push(')');
    }
    let _ = writeln!(out, "input    {input}");
    for (i, explanation) in explanations.iter().enumerate() {
        if explanations.len() > 1 {
            let _ = writeln!(out, "\n=== record {} of {}", i + 1, explanations.len());
        } else {
            out.push('\n');
        }
        render_one(&mut out, explanation);
    }
    out
}

fn render_one(out: &mut String, e: &Explanation) {
    let r = &e.record;
    let _ = writeln!(
        out,
        "record   {} {}, delivery {}, marketplace {}, currency {}",
        r.typename, r.event, r.delivery, r.marketplace, r.currency
    );
    let _ = writeln!(out, "match    {}", if e.matched { "yes" } else { "no" });
    // Conditions are about the object type the mapping reads: with another type or event,
    // show only what failed.
    let kind_failed = e.checks.iter().any(|c| c.check != "where" && !c.passed);
    for check in &e.checks {
        if kind_failed && check.passed {
            continue;
        }
        if !kind_failed || check.check != "where" {
            render_check(out, check, 1);
        }
    }
    if !e.matched {
        let _ = writeln!(out, "result   {}", outcome(&e.outcome));
        return;
    }

    out.push_str("\nselect\n");
    let name_w = width(e.selections.iter().map(|s| s.name.as_str()), 24);
    let paths: Vec<String> = e
        .selections
        .iter()
        .map(|s| match &s.from {
            Some(from) => format!("{} from {from}", s.path),
            None => s.path.clone(),
        })
        .collect();
    let path_w = width(paths.iter().map(String::as_str), 48);
    let labels: Vec<String> = e.selections.iter().map(|s| s.how_label()).collect();
    let how_w = width(labels.iter().map(String::as_str), 24);
    for ((s, path), how) in e.selections.iter().zip(&paths).zip(&labels) {
        let value = match (&s.value, s.how) {
            (Some(value), How::Matched | How::Default) => brief(value),
            _ => String::new(),
        };
        let line = format!(
            "  {:<name_w$}  {path:<path_w$}  {how:<how_w$}  {value}",
            s.name
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }

    if !e.compute.is_empty() {
        out.push_str("\ncompute\n");
        let name_w = width(e.compute.iter().map(|c| c.name.as_str()), 24);
        let values: Vec<String> = e
            .compute
            .iter()
            .map(|c| match (&c.value, c.evaluated) {
                (Some(value), true) => brief(value),
                _ => "(not reached)".into(),
            })
            .collect();
        let value_w = width(values.iter().map(String::as_str), 40);
        for (c, value) in e.compute.iter().zip(&values) {
            let mut line = format!(
                "  {:<name_w$}  {value:<value_w$}  ← {}",
                c.name, c.expression
            );
            if let Some(fallback) = &c.fallback {
                let _ = write!(line, "  ({fallback})");
            }
            let _ = writeln!(out, "{line}");
        }
    }

    out.push('\n');
    match &e.when {
        None => out.push_str("when     (not set)\n"),
        Some(when) => {
            let holds = match when.holds {
                Some(true) => "true",
                Some(false) => "false: nothing to send",
                None => "(not reached)",
            };
            let _ = writeln!(out, "when     {} → {holds}", when.expression);
        }
    }
    if e.require.is_empty() {
        out.push_str("require  (not set)\n");
    } else {
        let each: Vec<String> = e
            .require
            .iter()
            .map(|r| {
                let state = match r.empty {
                    Some(false) => "ok",
                    Some(true) => "EMPTY",
                    None => "(not reached)",
                };
                format!("{}: {state}", r.name)
            })
            .collect();
        let _ = writeln!(out, "require  {}", each.join(", "));
    }
    if let Some(for_each) = &e.for_each {
        let items = match for_each.items {
            Some(1) => "1 item".to_owned(),
            Some(n) => format!("{n} items"),
            None => "(not reached)".into(),
        };
        let _ = writeln!(
            out,
            "for      {} in {} → {items}",
            for_each.var, for_each.expression
        );
    }
    for warning in &e.warnings {
        let _ = writeln!(out, "warning  {warning}");
    }
    let _ = writeln!(out, "result   {}", outcome(&e.outcome));

    let total = e.requests.len();
    for (i, request) in e.requests.iter().enumerate() {
        let _ = write!(out, "\nrequest {} of {total}  {}", i + 1, e.endpoint);
        if let Some(item) = &request.item {
            let _ = write!(out, "  item {}", cut(&item.to_string(), 60));
        }
        out.push('\n');
        for (label, value) in [
            ("once_per", &request.once_per),
            ("waits_for", &request.waits_for),
            ("coalesce", &request.coalesce),
        ] {
            if let Some(value) = value {
                let _ = writeln!(out, "  {label:<10} {value}");
            }
        }
        if request.body.is_some() && !request.produced {
            out.push_str("  schema     refused (see result)\n");
        }
        render_fields(out, &request.fields);
    }
}

fn render_check(out: &mut String, check: &Check, depth: usize) {
    let indent = "  ".repeat(depth);
    let mark = if check.passed { "ok" } else { "no" };
    let text = match &check.found {
        Some(found) => format!("{}: {found} (wants {})", check.check, check.wanted),
        None if depth > 1 => check.wanted.clone(),
        None => format!("{}: {}", check.check, check.wanted),
    };
    let _ = writeln!(out, "{indent}{mark}  {text}");
    for alternative in &check.alternatives {
        render_check(out, alternative, depth + 2);
    }
}

fn outcome(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Requests { count: 1 } => "1 request".into(),
        Outcome::Requests { count } => format!("{count} requests"),
        Outcome::NotMatched { reason } => format!("not matched: {reason}"),
        Outcome::WhenFalse => "no request: `when` is false".into(),
        Outcome::NoItems => "no request: `for` gave no items".into(),
        Outcome::Rejected { kind, message } => format!("rejected ({kind}): {message}"),
    }
}

fn render_fields(out: &mut String, fields: &[Field]) {
    let path_w = width(fields.iter().map(|f| f.path.as_str()), 60);
    let values: Vec<String> = fields
        .iter()
        .map(|f| match (&f.value, &f.error) {
            (Some(value), _) => brief(value),
            (None, Some(_)) => "FAILED (see result)".into(),
            (None, None) => "omitted: empty".into(),
        })
        .collect();
    let value_w = width(values.iter().map(String::as_str), 32);
    for (field, value) in fields.iter().zip(&values) {
        let mut line = format!("  {:<path_w$}  {value:<value_w$}", field.path);
        match &field.template {
            None => line.push_str("  (literal)"),
            Some(template) => {
                let _ = write!(line, "  ← {}", one_line(template));
            }
        }
        for link in &field.chain {
            let _ = write!(line, "  ← {}", link_text(link));
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

/// A template written over several lines, on one.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn link_text(link: &Link) -> String {
    let source = cut(&one_line(&link.source), SOURCE_WIDTH);
    let mut text = match link.kind {
        LinkKind::Selection | LinkKind::Computed => format!("{} = {source}", link.name),
        LinkKind::FanOut | LinkKind::Loop => source,
        LinkKind::BuiltIn if link.name == "settings" => format!("settings ({source})"),
        LinkKind::BuiltIn => format!("{} = {source}", link.name),
    };
    if let Some(note) = &link.note {
        let _ = write!(text, " ({note})");
    }
    text
}
