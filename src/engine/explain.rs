//! How one mapping treated one record, step by step: `marketsync explain`.
//!
//! Nothing here maps on its own. [`Engine::explain`] runs the same match checks and the same
//! [`Mapping::apply`](super::Mapping) code as [`Engine::map`], with a [`Watch`] that writes
//! down what each step gave: the value and the "how" of each selection, each computed value,
//! `when` and `require`, and, for every request, each field of the body with the template it
//! came from and the chain of names (down to JSONPath) that template reads. So an explanation
//! cannot disagree with a run.

use super::body::{Node, RenderError};
use super::select::{Found, Picked, SelectError};
use super::watch::{Segment, Watch};
use super::{Engine, Globals, Mapping, filters};
use crate::klaviyo::Request;
use crate::source::Record;
use minijinja::Environment;
use minijinja::value::Value;
use serde::Serialize;
use serde_json::Value as Json;
use std::collections::HashSet;
use std::sync::Arc;

/// How one mapping treated one record.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub mapping: String,
    /// `POST /api/events`.
    pub endpoint: String,
    pub record: RecordSummary,
    /// Whether the type, the event and every `where` condition let the record in.
    pub matched: bool,
    /// Type, event and each `where` condition, in order.
    pub checks: Vec<Check>,
    pub selections: Vec<SelectionStep>,
    pub compute: Vec<ComputeStep>,
    pub when: Option<WhenStep>,
    pub require: Vec<RequireStep>,
    #[serde(rename = "for")]
    pub for_each: Option<ForStep>,
    pub requests: Vec<RequestStep>,
    /// Problems that did not stop the mapping (a phone left out, say).
    pub warnings: Vec<String>,
    pub outcome: Outcome,
}

/// Which record was explained.
#[derive(Debug, Clone, Serialize)]
pub struct RecordSummary {
    pub delivery: String,
    #[serde(rename = "type")]
    pub typename: String,
    pub event: String,
    /// The marketplace the record maps under (its own, else the default).
    pub marketplace: String,
    pub currency: String,
}

/// One match check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// `type`, `event` or `where`.
    pub check: &'static str,
    /// What the mapping asks for: `Invoice`, `any`, `$.status equals "REFUNDED"`.
    pub wanted: String,
    /// What the record has (type and event only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found: Option<String>,
    pub passed: bool,
    /// For `any:`, each alternative.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alternatives: Vec<Check>,
}

/// How a selection's value was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum How {
    /// The path matched (one value, or `count` for `many`).
    Matched,
    /// The path matched nothing, so the `default` was used.
    Default,
    /// `optional`: the path matched nothing, so the value is `none`.
    OptionalNone,
    /// Required, and the path matched nothing: the mapping stops.
    Missing,
    /// Required to be one value, and the path matched `count`: the mapping stops.
    Ambiguous,
    /// The mapping stopped before this selection.
    NotReached,
}

#[derive(Debug, Clone, Serialize)]
pub struct SelectionStep {
    pub name: String,
    /// The JSONPath as run (settings already filled in).
    pub path: String,
    /// The earlier selection the path reads, instead of the record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub how: How,
    /// Values matched (`many`), or matches found (ambiguous).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    /// `None` when missing, ambiguous or not reached.
    pub value: Option<Json>,
}

impl SelectionStep {
    /// `matched`, `matched 3`, `default fired`, `optional: none`, `missing`, ...
    pub fn how_label(&self) -> String {
        match (self.how, self.count) {
            (How::Matched, Some(n)) => format!("matched {n}"),
            (How::Matched, None) => "matched".into(),
            (How::Default, _) => "default fired".into(),
            (How::OptionalNone, _) => "optional: none".into(),
            (How::Missing, _) => "missing".into(),
            (How::Ambiguous, n) => format!("ambiguous: {} matches", n.unwrap_or_default()),
            (How::NotReached, _) => "not reached".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ComputeStep {
    pub name: String,
    pub expression: String,
    /// Top-level names the expression reads.
    pub reads: Vec<String>,
    /// Whether it was evaluated (the mapping can stop before, or on, it).
    pub evaluated: bool,
    pub value: Option<Json>,
    /// Set when an `a or b` expression fell back because `a` was empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WhenStep {
    pub expression: String,
    pub reads: Vec<String>,
    /// `None` when the mapping stopped before `when`.
    pub holds: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RequireStep {
    pub name: String,
    /// Whether the value was empty (which rejects the record); `None` when the mapping
    /// stopped before this check.
    pub empty: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ForStep {
    pub var: String,
    pub expression: String,
    /// `None` when the mapping stopped before `for`.
    pub items: Option<usize>,
}

/// One request: per fan-out item, or the only one.
#[derive(Debug, Clone, Serialize)]
pub struct RequestStep {
    /// The fan-out item this request is for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<Json>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub once_per: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waits_for: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coalesce: Option<String>,
    /// Every field of the body, in body order.
    pub fields: Vec<Field>,
    /// The body as rendered (also when the schema check refused it).
    pub body: Option<Json>,
    /// Whether the request passed the schema check and was produced.
    pub produced: bool,
}

/// Where a field's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FieldKind {
    /// Written in the YAML as it is sent.
    Literal,
    /// One `{{ expression }}`: keeps the value's type.
    Expression,
    /// Text with `{{ }}` or `{% %}` in it: always text.
    Template,
    /// A `$for` over no items: `[]`.
    For,
}

/// One field of a request body.
#[derive(Debug, Clone, Serialize)]
pub struct Field {
    /// `data.attributes.properties.Items[0].SKU`.
    pub path: String,
    /// The JSON pointer of the field in the body sent (`/data/attributes/...`).
    pub pointer: String,
    pub kind: FieldKind,
    /// The value sent; `None` when the field was left out as empty, or failed.
    pub value: Option<Json>,
    pub omitted: bool,
    /// Why the field could not be rendered (which rejects the record).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The template or expression as written (none for literals).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Top-level names the template reads.
    pub reads: Vec<String>,
    /// Those names and what they read in turn, down to JSONPath.
    pub chain: Vec<Link>,
    /// Names in the chain where a fallback fired (a selection's default, an `or`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<String>,
}

/// What kind of name a template reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkKind {
    Selection,
    Computed,
    /// The `for:` fan-out variable.
    FanOut,
    /// A `$for` variable of the body.
    Loop,
    /// `marketplace`, `currency`, `settings`, ...
    BuiltIn,
}

/// One name in a field's chain.
#[derive(Debug, Clone, Serialize)]
pub struct Link {
    pub name: String,
    pub kind: LinkKind,
    /// A JSONPath, an expression, `line in lines`, or a built-in's value.
    pub source: String,
    /// `default fired`, `optional: none`, `or fell back`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub fallback: bool,
}

/// What the mapping made of the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Outcome {
    /// The mapping produced requests.
    Requests { count: usize },
    /// The record is not one this mapping reads.
    NotMatched { reason: String },
    /// `when` was false: nothing to send, not an error.
    WhenFalse,
    /// `for` gave no items: nothing to send.
    NoItems,
    /// The mapping failed for this record, as `run` would report it.
    Rejected { kind: String, message: String },
}

impl Explanation {
    /// Whether the mapping produced at least one request.
    pub fn produced(&self) -> bool {
        matches!(self.outcome, Outcome::Requests { .. })
    }
}

impl Engine {
    /// Explains how the mapping named `mapping` treats `record`, running the code that
    /// [`Engine::map`] runs. `None` when no mapping has that name.
    pub fn explain(&self, name: &str, record: &Record) -> Option<Explanation> {
        let env = self.compiled.borrow_owner();
        let mapping = self
            .compiled
            .borrow_dependent()
            .iter()
            .find(|m| &*m.name == name)?;
        // The globals `map` gives every mapping of this record.
        let source: Arc<str> = record.delivery_id.as_str().into();
        let globals = self.globals(record, &source, &|_, _| false);
        let checks = checks(mapping, record);
        let matched =
            mapping.reads(record) && mapping.conditions.iter().all(|c| c.holds(&record.node));
        debug_assert_eq!(matched, checks.iter().all(|c| c.passed));
        let mut explanation = Explanation {
            mapping: mapping.name.to_string(),
            endpoint: format!("{} {}", mapping.endpoint.method(), mapping.endpoint.path()),
            record: RecordSummary {
                delivery: record.delivery_id.clone(),
                typename: record.typename.clone(),
                event: record.event.clone(),
                marketplace: globals.marketplace.to_owned(),
                currency: globals.currency.to_owned(),
            },
            matched,
            checks,
            selections: Vec::new(),
            compute: Vec::new(),
            when: None,
            require: Vec::new(),
            for_each: None,
            requests: Vec::new(),
            warnings: Vec::new(),
            outcome: Outcome::Requests { count: 0 },
        };
        let mut recorder = Recorder::new(mapping, env, &globals);
        if !matched {
            let failed = explanation
                .checks
                .iter()
                .find(|c| !c.passed)
                .expect("a record that does not match fails a check");
            explanation.outcome = Outcome::NotMatched {
                reason: match failed.check {
                    "where" => format!("`where` condition does not hold: {}", failed.wanted),
                    check => format!(
                        "{check} is `{}`; the mapping reads {}",
                        failed.found.as_deref().unwrap_or_default(),
                        failed.wanted
                    ),
                },
            };
            recorder.into_steps(&mut explanation);
            return Some(explanation);
        }
        let (result, warnings) = filters::collect_warnings(|| {
            mapping.apply_watched(&globals, self.schemas, &mut recorder)
        });
        explanation.warnings = warnings;
        let when_false = recorder.when == Some(false);
        let fanned_out = recorder.fanned_out;
        recorder.into_steps(&mut explanation);
        explanation.outcome = match result {
            Err(error) => Outcome::Rejected {
                kind: error.kind.as_str().to_owned(),
                message: error.message,
            },
            Ok((requests, _)) if !requests.is_empty() => Outcome::Requests {
                count: requests.len(),
            },
            Ok(_) if when_false => Outcome::WhenFalse,
            Ok(_) if fanned_out == Some(0) => Outcome::NoItems,
            Ok(_) => Outcome::Requests { count: 0 },
        };
        Some(explanation)
    }
}

/// The match checks, each evaluated (they are pure), in the order `map` makes them.
fn checks(mapping: &Mapping<'_>, record: &Record) -> Vec<Check> {
    let mut checks = vec![
        Check {
            check: "type",
            wanted: mapping.types.join(" or "),
            found: Some(record.typename.clone()),
            passed: mapping.types.contains(&record.typename),
            alternatives: Vec::new(),
        },
        Check {
            check: "event",
            wanted: if mapping.events.is_empty() {
                "any".into()
            } else {
                mapping.events.join(" or ")
            },
            found: Some(record.event.clone()),
            passed: mapping.events.is_empty() || mapping.events.contains(&record.event),
            alternatives: Vec::new(),
        },
    ];
    checks.extend(
        mapping
            .conditions
            .iter()
            .map(|c| condition_check(c, &record.node)),
    );
    checks
}

fn condition_check(condition: &super::select::Condition, root: &Json) -> Check {
    let alternatives = match condition {
        super::select::Condition::Any(alternatives) => alternatives
            .iter()
            .map(|c| condition_check(c, root))
            .collect(),
        _ => Vec::new(),
    };
    Check {
        check: "where",
        wanted: condition.describe(),
        found: None,
        passed: condition.holds(root),
        alternatives,
    }
}

/// The recorder `explain` watches a mapping with.
struct Recorder<'a, 'env> {
    mapping: &'a Mapping<'env>,
    env: &'a Environment<'static>,
    /// Built-in names and how to show them.
    builtins: Vec<(&'static str, String)>,
    selections: Vec<SelectionStep>,
    compute: Vec<ComputeStep>,
    when: Option<bool>,
    require: Vec<RequireStep>,
    fanned_out: Option<usize>,
    requests: Vec<RequestStep>,
    /// Where in the body rendering is.
    path: Vec<Step>,
    /// `$for` variables bound at this point of the body: (var, items, names it reads).
    loops: Vec<(String, String, Vec<String>)>,
}

/// An owned [`Segment`].
enum Step {
    Key(String),
    Index(usize),
}

impl<'a, 'env> Recorder<'a, 'env> {
    fn new(
        mapping: &'a Mapping<'env>,
        env: &'a Environment<'static>,
        globals: &Globals<'_>,
    ) -> Self {
        let record = globals.record;
        let quoted = |s: &str| Json::from(s).to_string();
        Recorder {
            mapping,
            env,
            builtins: vec![
                ("settings", "settings.yaml".into()),
                ("marketplace", quoted(globals.marketplace)),
                ("currency", quoted(globals.currency)),
                ("event", quoted(&record.event)),
                ("delivery", quoted(&record.delivery_id)),
                ("type", quoted(&record.typename)),
            ],
            selections: mapping
                .selections
                .iter()
                .map(|s| SelectionStep {
                    name: s.name.clone(),
                    path: s.path.text.clone(),
                    from: s.from.map(|i| mapping.selections[i].name.clone()),
                    how: How::NotReached,
                    count: None,
                    value: None,
                })
                .collect(),
            compute: mapping
                .compute
                .iter()
                .map(|(name, expr)| ComputeStep {
                    name: name.clone(),
                    expression: expr.source.clone(),
                    reads: expr.reads.clone(),
                    evaluated: false,
                    value: None,
                    fallback: None,
                })
                .collect(),
            when: None,
            require: mapping
                .require
                .iter()
                .map(|name| RequireStep {
                    name: name.clone(),
                    empty: None,
                })
                .collect(),
            fanned_out: None,
            requests: Vec::new(),
            path: Vec::new(),
            loops: Vec::new(),
        }
    }

    fn into_steps(self, explanation: &mut Explanation) {
        let mapping = self.mapping;
        explanation.selections = self.selections;
        explanation.compute = self.compute;
        explanation.when = mapping.when.as_ref().map(|w| WhenStep {
            expression: w.source.clone(),
            reads: w.reads.clone(),
            holds: self.when,
        });
        explanation.require = self.require;
        explanation.for_each = mapping.for_each.as_ref().map(|(var, items)| ForStep {
            var: var.clone(),
            expression: items.source.clone(),
            items: self.fanned_out,
        });
        explanation.requests = self.requests;
    }

    fn path_text(&self) -> (String, String) {
        let mut dotted = String::new();
        let mut pointer = String::new();
        for step in &self.path {
            match step {
                Step::Key(key) => {
                    if !dotted.is_empty() {
                        dotted.push('.');
                    }
                    dotted.push_str(key);
                    pointer.push('/');
                    pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
                }
                Step::Index(i) => {
                    dotted.push_str(&format!("[{i}]"));
                    pointer.push_str(&format!("/{i}"));
                }
            }
        }
        (dotted, pointer)
    }

    /// The names `reads` stand for, each followed by what it reads in turn (depth first),
    /// built-in names last. `loops` is how many `$for` variables the template sees.
    fn chain(&self, reads: &[String], loops: usize) -> Vec<Link> {
        let mut links = Vec::new();
        let mut seen = HashSet::new();
        for name in reads {
            self.follow(name, loops, &mut seen, &mut links);
        }
        let (mut named, builtins): (Vec<Link>, Vec<Link>) =
            links.into_iter().partition(|l| l.kind != LinkKind::BuiltIn);
        named.extend(builtins);
        named
    }

    fn follow(
        &self,
        name: &str,
        visible: usize,
        seen: &mut HashSet<(String, usize)>,
        links: &mut Vec<Link>,
    ) {
        if !seen.insert((name.to_owned(), visible)) {
            return;
        }
        let link = |kind, source: String, note: Option<String>, fallback| Link {
            name: name.to_owned(),
            kind,
            source,
            note,
            fallback,
        };
        if let Some(k) = self.loops[..visible].iter().rposition(|(v, ..)| v == name) {
            let (var, items, reads) = &self.loops[k];
            links.push(link(
                LinkKind::Loop,
                format!("$for: {var} in {items}"),
                None,
                false,
            ));
            for read in reads {
                self.follow(read, k, seen, links);
            }
        } else if let Some((var, items)) = self.mapping.for_each.as_ref().filter(|(v, _)| v == name)
        {
            links.push(link(
                LinkKind::FanOut,
                format!("for: {var} in {}", items.source),
                None,
                false,
            ));
            for read in &items.reads {
                self.follow(read, 0, seen, links);
            }
        } else if let Some(step) = self.compute.iter().find(|c| c.name == name) {
            links.push(link(
                LinkKind::Computed,
                step.expression.clone(),
                step.fallback.clone(),
                step.fallback.is_some(),
            ));
            for read in &step.reads {
                self.follow(read, 0, seen, links);
            }
        } else if let Some(step) = self.selections.iter().find(|s| s.name == name) {
            let note = match step.how {
                How::Default | How::OptionalNone => Some(step.how_label()),
                _ => None,
            };
            let source = match &step.from {
                Some(from) => format!("{} from {from}", step.path),
                None => step.path.clone(),
            };
            links.push(link(
                LinkKind::Selection,
                source,
                note,
                step.how == How::Default,
            ));
            if let Some(from) = &step.from {
                self.follow(from, 0, seen, links);
            }
        } else if let Some((_, shown)) = self.builtins.iter().find(|(b, _)| *b == name) {
            links.push(link(LinkKind::BuiltIn, shown.clone(), None, false));
        }
        // Anything else is one of the environment's global functions.
    }

    fn field(&self, kind: FieldKind, template: Option<String>, reads: &[String]) -> Field {
        let (path, pointer) = self.path_text();
        let chain = self.chain(reads, self.loops.len());
        let fallbacks = chain
            .iter()
            .filter(|l| l.fallback)
            .map(|l| l.name.clone())
            .collect();
        Field {
            path,
            pointer,
            kind,
            value: None,
            omitted: true,
            error: None,
            template,
            reads: reads.to_vec(),
            chain,
            fallbacks,
        }
    }
}

/// The left side of `a or b` when it is a plain name (or attribute path) at the top level of
/// the expression, such as `refunded_at` in `refunded_at or updated_at`.
fn or_left(expression: &str) -> Option<&str> {
    if expression.contains(" if ") {
        return None;
    }
    let mut depth = 0i32;
    let mut quote = None;
    let bytes = expression.as_bytes();
    for (i, c) in expression.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(' | '[' | '{') => depth += 1,
            (None, ')' | ']' | '}') => depth -= 1,
            (None, ' ') if depth == 0 && bytes[i..].starts_with(b" or ") => {
                let left = expression[..i].trim();
                let plain = !left.is_empty()
                    && left
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
                    && !left.starts_with(|c: char| c.is_ascii_digit() || c == '.');
                return plain.then_some(left);
            }
            _ => {}
        }
    }
    None
}

fn to_json(value: &Value) -> Json {
    serde_json::to_value(value).unwrap_or_else(|_| Json::String(value.to_string()))
}

impl Watch for Recorder<'_, '_> {
    fn selected(&mut self, index: usize, found: &Found<'_>, how: Picked) {
        let value = &found.to_json();
        let step = &mut self.selections[index];
        (step.how, step.count) = match how {
            Picked::Matched => (How::Matched, None),
            Picked::MatchedMany(n) => (How::Matched, Some(n)),
            Picked::Default => (How::Default, None),
            Picked::OptionalNone => (How::OptionalNone, None),
        };
        step.value = Some(value.clone());
    }

    fn select_failed(&mut self, index: usize, error: &SelectError) {
        let step = &mut self.selections[index];
        (step.how, step.count) = match error {
            SelectError::Missing { .. } => (How::Missing, None),
            SelectError::Ambiguous { count, .. } => (How::Ambiguous, Some(*count)),
        };
    }

    fn computed(&mut self, index: usize, value: &Value, before: &Value) {
        let env = self.env;
        let step = &mut self.compute[index];
        step.evaluated = true;
        step.value = Some(to_json(value));
        if let Some(left) = or_left(&step.expression) {
            let empty = env
                .compile_expression(left)
                .and_then(|e| e.eval(before.clone()))
                .is_ok_and(|v| super::body::is_empty(&v));
            if empty {
                step.fallback = Some(format!("or fell back: `{left}` was empty"));
            }
        }
    }

    fn when(&mut self, holds: bool) {
        self.when = Some(holds);
    }

    fn required(&mut self, name: &str, empty: bool) {
        if let Some(step) = self
            .require
            .iter_mut()
            .find(|r| r.name == name && r.empty.is_none())
        {
            step.empty = Some(empty);
        }
    }

    fn fanned_out(&mut self, items: usize) {
        self.fanned_out = Some(items);
    }

    fn request_started(&mut self, ctx: &Value) {
        let item = self
            .mapping
            .for_each
            .as_ref()
            .and_then(|(var, _)| ctx.get_attr(var).ok())
            .map(|v| to_json(&v));
        self.requests.push(RequestStep {
            item,
            once_per: None,
            waits_for: None,
            coalesce: None,
            fields: Vec::new(),
            body: None,
            produced: false,
        });
        self.path.clear();
        self.loops.clear();
    }

    fn body_rendered(&mut self, body: &Json) {
        if let Some(request) = self.requests.last_mut() {
            request.body = Some(body.clone());
        }
    }

    fn request_done(&mut self, done: &Request) {
        if let Some(request) = self.requests.last_mut() {
            request.produced = true;
            request.once_per = done.once_key.clone();
            request.waits_for = done
                .waits_for
                .as_ref()
                .map(|w| format!("{} {}", w.mapping, w.key));
            request.coalesce = done
                .coalesce
                .as_ref()
                .map(|c| format!("{} (version {})", c.key, c.version));
        }
    }

    fn enter(&mut self, segment: Segment<'_>) {
        self.path.push(match segment {
            Segment::Key(key) => Step::Key(key.to_owned()),
            Segment::Index(i) => Step::Index(i),
        });
    }

    fn leave(&mut self) {
        self.path.pop();
    }

    fn enter_for(&mut self, node: &Node<'_>) {
        if let Node::For {
            var, source, reads, ..
        } = node
        {
            self.loops
                .push((var.clone(), source.clone(), reads.clone()));
        }
    }

    fn leave_for(&mut self) {
        self.loops.pop();
    }

    fn leaf(&mut self, node: &Node<'_>, value: Option<&Json>) {
        let mut field = self.leaf_field(node);
        field.value = value.cloned();
        field.omitted = value.is_none();
        if let Some(request) = self.requests.last_mut() {
            request.fields.push(field);
        }
    }

    fn leaf_failed(&mut self, node: &Node<'_>, error: RenderError) -> RenderError {
        let mut field = self.leaf_field(node);
        field.omitted = false;
        field.error = Some(error.message.clone());
        if let Some(request) = self.requests.last_mut() {
            request.fields.push(field);
        }
        error
    }
}

impl Recorder<'_, '_> {
    /// A field for the leaf rendering is at, without its value yet.
    fn leaf_field(&self, node: &Node<'_>) -> Field {
        match node {
            Node::Expression { source, reads, .. } => {
                self.field(FieldKind::Expression, Some(source.clone()), reads)
            }
            Node::Template { template, reads } => self.field(
                FieldKind::Template,
                Some(template.source().to_owned()),
                reads,
            ),
            Node::For {
                var, source, reads, ..
            } => self.field(
                FieldKind::For,
                Some(format!("$for: {var} in {source}")),
                reads,
            ),
            Node::Literal(_) | Node::List(_) | Node::Map(_) => {
                self.field(FieldKind::Literal, None, &[])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{FieldKind, Outcome, or_left};
    use crate::engine::Engine;
    use crate::source::{self, Input, read_lines};
    use std::path::Path;

    /// Every default mapping over every record of every example: what `explain` reports is what
    /// `map` produces, field by field.
    #[test]
    fn explain_agrees_with_map() {
        let (engine, _) = Engine::builtin().expect("the default mappings compile");
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let mut files: Vec<_> = std::fs::read_dir(&examples)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json" || e == "ndjson"))
            .collect();
        files.sort();
        let (mut fields, mut omitted, mut requests) = (0, 0, 0);
        for file in files {
            for line in read_lines(&Input::File(file.clone())).unwrap() {
                let line = line.unwrap();
                for record in source::parse_delivery(&line.text).unwrap() {
                    let mapped = engine.map(&record);
                    for name in engine.mapping_names() {
                        let where_ = format!("{} line {}: {name}", file.display(), line.number);
                        let explained = engine.explain(&name, &record).unwrap();
                        let bodies: Vec<_> = mapped
                            .requests
                            .iter()
                            .filter(|r| r.mapping == name)
                            .map(|r| &r.body)
                            .collect();
                        let error = mapped.errors.iter().find(|e| e.mapping == name);
                        match &explained.outcome {
                            Outcome::Requests { count } => {
                                assert_eq!(*count, bodies.len(), "{where_}");
                                assert!(error.is_none(), "{where_}");
                            }
                            Outcome::Rejected { message, .. } => {
                                assert_eq!(Some(message), error.map(|e| &e.message), "{where_}");
                                assert!(bodies.is_empty(), "{where_}");
                            }
                            _ => assert!(bodies.is_empty() && error.is_none(), "{where_}"),
                        }
                        let produced: Vec<_> =
                            explained.requests.iter().filter(|r| r.produced).collect();
                        assert_eq!(produced.len(), bodies.len(), "{where_}");
                        for (request, body) in produced.iter().zip(&bodies) {
                            requests += 1;
                            assert_eq!(request.body.as_ref(), Some(*body), "{where_}");
                            assert!(!request.fields.is_empty(), "{where_}");
                            for field in &request.fields {
                                let sent = body.pointer(&field.pointer);
                                if field.omitted {
                                    omitted += 1;
                                    assert_eq!(sent, None, "{where_}: {}", field.path);
                                    assert_eq!(field.value, None);
                                } else {
                                    fields += 1;
                                    assert_eq!(
                                        sent,
                                        field.value.as_ref(),
                                        "{where_}: {}",
                                        field.path
                                    );
                                }
                                if field.kind != FieldKind::Literal {
                                    assert!(field.template.is_some(), "{where_}: {}", field.path);
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(
            requests > 20 && fields > 300 && omitted > 0,
            "{requests} {fields} {omitted}"
        );
    }

    #[test]
    fn a_field_names_its_template_and_the_jsonpath_behind_it() {
        let (engine, _) = Engine::builtin().unwrap();
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/refund.json"),
        )
        .unwrap();
        let record = source::parse_delivery(&text).unwrap().remove(0);
        assert!(engine.explain("no-such-mapping", &record).is_none());
        let explained = engine.explain("refunded-order", &record).unwrap();
        let request = &explained.requests[0];
        let field = |path: &str| {
            request
                .fields
                .iter()
                .find(|f| f.path == path)
                .unwrap_or_else(|| panic!("no field {path}"))
        };
        let order_id = field("data.attributes.properties.OrderId");
        assert_eq!(
            order_id.template.as_deref(),
            Some("{{ order_id | string }}")
        );
        assert_eq!(order_id.reads, ["order_id"]);
        assert_eq!(order_id.chain[0].source, "$.invoice.order.legacyId");
        let sku = field("data.attributes.properties.Items[0].SKU");
        let names: Vec<&str> = sku.chain.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["line", "refunded_lines", "lines"]);
        assert_eq!(sku.chain[0].source, "$for: line in refunded_lines");
        assert_eq!(sku.chain[2].source, "$.lineItems[*]");
    }

    #[test]
    fn finds_the_left_side_of_a_top_level_or() {
        assert_eq!(or_left("refunded_at or updated_at"), Some("refunded_at"));
        assert_eq!(
            or_left("shipping_address or order_address"),
            Some("shipping_address")
        );
        assert_eq!(or_left("a.b or c or d"), Some("a.b"));
        assert_eq!(or_left("x | f or y"), None);
        assert_eq!(or_left("not a or b"), None);
        assert_eq!(or_left("'x or y'"), None);
        assert_eq!(or_left("f(a or b)"), None);
        assert_eq!(or_left("a if b else c or d"), None);
        assert_eq!(or_left("organisation"), None);
    }
}
