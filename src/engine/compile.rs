//! From specs as written to compiled mappings, reporting every problem on the way.
//!
//! Two passes, because minijinja templates must be added to the environment (a mutable
//! borrow) before any expression can borrow it: the first pass checks everything that needs no
//! environment and registers templates; the second compiles expressions and checks that every
//! name a template reads is defined. Nothing stops at the first problem: each one becomes a
//! diagnostic with the file, line and column of the value at fault.

use super::body::{Direct, Node, Text};
use super::callables::{Callable, callables};
use super::select::{Cardinality, Condition, Path, Selection};
use super::{CONTEXT_NAMES, Compiled, Engine, Expr, Mapping, filters};
use crate::diagnostic::{Diagnostics, Files, Position, SourceFile};
use crate::klaviyo::{Endpoint, Schemas};
use crate::queries::Coverage;
use crate::queries::coverage::Cursor as QueryCursor;
use crate::source;
use crate::source::schema::{MarketplacerSchema, PathMismatch, Shape};
use crate::spec::{
    BodyNode, ConditionSpec, Lane, MappingSet, MappingSpec, Removed, RemovedKind, Spanned,
    SpecFile, did_you_mean,
};
use minijinja::value::Value;
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior, context};
use serde_json::Value as Json;
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

/// Source text of an expression or template, with where it was written.
struct Src {
    text: String,
    /// Where the value holding `text` was written.
    position: Position,
    /// How many non-blank characters of that value come before `text`: the expression of
    /// `"{{ x }}"` has two, the braces.
    before: usize,
    /// The value's first character: a quote written before it is the YAML's, not the value's.
    first: Option<char>,
}

impl Src {
    fn of(spanned: &Spanned<String>) -> Src {
        Src::whole(spanned.value.clone(), spanned.at)
    }

    /// The whole value written at `position`.
    fn whole(text: String, position: Position) -> Src {
        Src {
            first: text.chars().next(),
            text,
            position,
            before: 0,
        }
    }

    /// `text`, a slice of the value `written` at `position`.
    fn part(text: &str, written: &str, position: Position) -> Src {
        let offset = (text.as_ptr() as usize)
            .checked_sub(written.as_ptr() as usize)
            .filter(|o| *o <= written.len())
            .unwrap_or(0);
        Src {
            text: text.to_owned(),
            position,
            before: non_blank(&written[..offset]),
            first: written.chars().next(),
        }
    }

    /// Where the byte `at` of `text` was written.
    fn locate(&self, files: &Files, at: usize) -> Position {
        let prefix = self.text.get(..at).unwrap_or(&self.text);
        locate(
            files,
            self.position,
            self.first,
            self.before + non_blank(prefix),
        )
    }

    /// Where line `line` (1-based) of `text` was written, at its first character.
    fn locate_line(&self, files: &Files, line: usize) -> Position {
        self.locate(files, line_offset(&self.text, line))
    }

    /// Where the first use of `word` (a name, filter or test) in `text` was written.
    fn locate_word(&self, files: &Files, word: &str) -> Position {
        match find_word(&self.text, word) {
            Some(at) => self.locate(files, at),
            None => self.position,
        }
    }
}

fn non_blank(text: &str) -> usize {
    text.chars().filter(|c| !c.is_whitespace()).count()
}

/// The byte offset of the first non-blank character of line `line` (1-based) of `text`.
fn line_offset(text: &str, line: usize) -> usize {
    let mut start = 0;
    for _ in 1..line {
        match text[start..].find('\n') {
            Some(end) => start += end + 1,
            None => break,
        }
    }
    let line_text = text[start..].split('\n').next().unwrap_or_default();
    start + (line_text.len() - line_text.trim_start().len())
}

/// The byte offset of the first use of `word` in `source` as a whole name (not part of a
/// longer one, nor an attribute `.word`).
fn find_word(source: &str, word: &str) -> Option<usize> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    source
        .match_indices(word)
        .find(|(at, _)| {
            let before = source[..*at].chars().next_back();
            let after = source[at + word.len()..].chars().next();
            !before.is_some_and(|c| is_ident(c) || c == '.') && !after.is_some_and(is_ident)
        })
        .map(|(at, _)| at)
}

/// Where the non-blank character after the first `skip` of the scalar written at `at`, whose
/// value starts with `first`, is in its file.
///
/// A scalar's value is its source text with only blanks changed: indentation is stripped, a
/// `|` block keeps its lines, a `>` block folds them into spaces, quotes go. So the n-th
/// non-blank character of the value is the n-th non-blank character written from `at` (past
/// an opening quote), whichever style the value was written in. An escape in double quotes
/// (`\"`) puts the column off by its backslash; the line stays right.
fn locate(files: &Files, at: Position, first: Option<char>, skip: usize) -> Position {
    if at.line == 0 || skip == 0 {
        return at;
    }
    let text = &files.get(at.file).text;
    let mut seen = 0;
    for (index, line) in text.lines().enumerate().skip(at.line - 1) {
        let opening = index + 1 == at.line;
        let from = if opening {
            at.column.saturating_sub(1)
        } else {
            0
        };
        for (column, c) in line.chars().enumerate().skip(from) {
            let quote = opening && column == from && matches!(c, '"' | '\'') && first != Some(c);
            if c.is_whitespace() || quote {
                continue;
            }
            if seen == skip {
                return Position {
                    line: index + 1,
                    column: column + 1,
                    file: at.file,
                };
            }
            seen += 1;
        }
    }
    at
}

/// A body node after the first pass: templates registered by name, expressions still text.
enum PlanNode {
    Literal(Json),
    /// The expression inside, and the leaf as written (`{{ ... }}` included).
    Expression(Src, String),
    Template(String, Position),
    List(Vec<PlanNode>),
    Map(Vec<(String, PlanNode)>),
    For {
        var: String,
        items: Src,
        element: Box<PlanNode>,
    },
}

/// A mapping after the first pass.
struct Plan {
    name: Arc<str>,
    lane: Lane,
    /// Whether the first pass found problems: the plan is still checked, never built.
    failed: bool,
    /// Names whose definition failed: known to the name check so that one mistake is not
    /// reported again at every use.
    broken_names: Vec<String>,
    /// What a client's overlays removed from this mapping, and where.
    removed: Vec<Removed>,
    endpoint: Option<Endpoint>,
    types: Vec<String>,
    events: Vec<String>,
    conditions: Vec<Condition>,
    selections: Vec<Selection>,
    compute: Vec<(String, Src)>,
    when: Option<Src>,
    require: Vec<Src>,
    for_each: Option<(String, Src)>,
    once_per: Option<(String, Position)>,
    /// The mapping waited for, where it is named, and the key template.
    waits_for: Option<(String, Position, (String, Position))>,
    /// Key and version templates.
    coalesce: Option<((String, Position), (String, Position))>,
    body: PlanNode,
}

/// Collects diagnostics, each in the file its position names.
struct Reporter<'a> {
    files: &'a Files,
    diagnostics: &'a mut Diagnostics,
}

impl Reporter<'_> {
    fn error(&mut self, position: Position, message: impl Into<String>) {
        self.diagnostics.push(self.files.error(position, message));
    }

    fn warning(&mut self, position: Position, message: impl Into<String>) {
        self.diagnostics.push(self.files.warning(position, message));
    }
}

pub(super) fn compile(set: MappingSet) -> Result<(Engine, Diagnostics), Diagnostics> {
    let MappingSet {
        settings,
        mappings,
        files,
        client,
        mut diagnostics,
        disabled,
        queries,
    } = set;
    let records = queries.records();
    let coverage = Coverage::new(&records, MarketplacerSchema::builtin());
    let Some(settings) = settings else {
        return Err(diagnostics);
    };
    let settings_value = Value::from(minijinja::value::Serde(&settings.spec));
    let mut env = environment(&settings.spec);

    // A broken setting is reported in the settings or client file that holds it; the
    // selections it is put into are not reported again in the base mapping.
    let settings_broken = diagnostics.iter().any(|d| {
        d.is_error()
            && (Arc::ptr_eq(&d.file, &settings.source)
                || client
                    .as_ref()
                    .is_some_and(|c| Arc::ptr_eq(&d.file, &c.source)))
    });
    let mut plans = Vec::new();
    let mut names: Vec<(Arc<str>, Arc<SourceFile>, Position)> = Vec::new();
    for file in &mappings {
        let mut reporter = Reporter {
            files: &files,
            diagnostics: &mut diagnostics,
        };
        let plan = plan(
            file,
            &mut env,
            &settings_value,
            settings_broken,
            &coverage,
            &mut reporter,
        );
        {
            let position = file.spec.name.at;
            if let Some((_, first_file, first)) = names.iter().find(|(n, ..)| *n == plan.name) {
                reporter.error(
                    position,
                    format!(
                        "mapping name `{}` is already used by {}:{}",
                        plan.name, first_file.name, first.line
                    ),
                );
            }
            names.push((Arc::clone(&plan.name), Arc::clone(&file.source), position));
            plans.push(plan);
        }
    }

    if let Some(on) = &settings.spec.marketplacer_klaviyo_integration
        && on.value
    {
        native_metric_collisions(
            &mappings,
            on.at,
            &env,
            &settings_value,
            &files,
            &mut diagnostics,
        );
    }
    // A mapping others wait for, turned off by a client: one error at the `disable: true`
    // that caused it, naming every mapping left waiting.
    let mut left_waiting: Vec<(&str, Position, Vec<&str>)> = Vec::new();
    for plan in &plans {
        let Some((waited, position, _)) = &plan.waits_for else {
            continue;
        };
        if let Some((name, at)) = disabled.iter().find(|(name, _)| name == waited)
            && !plans.iter().any(|p| &*p.name == waited.as_str())
        {
            match left_waiting.iter_mut().find(|(n, ..)| n == name) {
                Some((_, _, waiting)) => waiting.push(&plan.name),
                None => left_waiting.push((name, *at, vec![&plan.name])),
            }
            continue;
        }
        match plans.iter().find(|p| &*p.name == waited.as_str()) {
            Some(other) if other.once_per.is_some() => {}
            found => {
                let why = if found.is_some() {
                    "has no `once_per`, so it has no key to wait for".to_owned()
                } else {
                    let names = plans.iter().map(|p| &*p.name);
                    format!(
                        "is not a mapping in this set{}",
                        did_you_mean(waited, names)
                    )
                };
                diagnostics
                    .push(files.error(*position, format!("`waits_for.mapping: {waited}` {why}")));
            }
        }
    }
    for (name, at, mut waiting) in left_waiting {
        waiting.sort();
        diagnostics.push(files.error(
            at,
            format!(
                "`disable: true` turns off `{name}`, which {} wait for (`waits_for.mapping: {name}`), so they could never send: disable them too, or give each an overlay with `waits_for: null`",
                waiting.iter().map(|w| format!("`{w}`")).collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    // Transaction-lane mappings first: within a record, order events are rendered (and later
    // queued) before profile work. The sort is stable, so file order holds within a lane.
    plans.sort_by_key(|plan| plan.lane != Lane::Transaction);
    let compiled = Compiled::new(env, |env| {
        plans
            .into_iter()
            .filter_map(|plan| build(plan, env, &files, &mut diagnostics))
            .collect()
    });
    // The mappings that built are checked against their examples even when others failed,
    // so one run of `validate` shows every problem.
    let engine = Engine {
        compiled,
        default_marketplace: settings.spec.marketplace.clone(),
        settings: Arc::new(settings.spec),
        settings_value,
        schemas: Schemas::builtin(),
        unread_query_fields: coverage.unread(),
        queries: Arc::new(queries),
    };
    check_examples(&engine, &mappings, &files, &mut diagnostics);
    diagnostics.sort();
    if diagnostics.has_errors() {
        return Err(diagnostics);
    }
    Ok((engine, diagnostics))
}

/// The sandbox every template runs in: no HTML escaping (payloads are JSON, not HTML), a fuel
/// limit so a runaway loop cannot stall a sync, no loader (templates cannot read files), and
/// the domain filters.
fn environment(settings: &crate::spec::Settings) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| AutoEscape::None);
    // Chainable: `line.image.url` on a line without an image is undefined, so the field is
    // left out rather than failing the record. Top-level names are checked at compile time.
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    env.set_fuel(Some(settings.fuel));
    env.set_recursion_limit(64);
    // `none` inside text renders as nothing, not as the word "none": "{{ first }} {{ last }}"
    // with no last name must not send "Zoë none".
    env.set_formatter(|out, state, value| {
        if value.is_none() {
            return Ok(());
        }
        minijinja::escape_formatter(out, state, value)
    });
    filters::register(&mut env, &settings.phone_region);
    env
}

/// Whether `text` is exactly one `{{ expression }}` (which keeps its native type).
fn single_expression(text: &str) -> Option<&str> {
    let inner = text.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    let inner = inner.trim_start_matches('-').trim_end_matches('-');
    (!inner.contains("{{") && !inner.contains("}}") && !inner.contains("{%"))
        .then_some(inner.trim())
}

fn is_template(text: &str) -> bool {
    text.contains("{{") || text.contains("{%") || text.contains("{#")
}

/// The first pass over one mapping.
fn plan(
    file: &SpecFile<MappingSpec>,
    env: &mut Environment<'static>,
    settings: &Value,
    settings_broken: bool,
    coverage: &Coverage<'_>,
    reporter: &mut Reporter<'_>,
) -> Plan {
    let spec = &file.spec;
    let mut broken_names = Vec::new();
    let errors_before = reporter.diagnostics.error_count();
    let name: Arc<str> = spec.name.value.as_str().into();
    if name.trim().is_empty() {
        reporter.error(spec.name.at, "a mapping needs a name");
    }
    let endpoint = Endpoint::parse(&spec.emit.endpoint.value);
    if endpoint.is_none() {
        let known: Vec<String> = Endpoint::ALL
            .iter()
            .map(|e| format!("{} {}", e.method(), e.path()))
            .collect();
        reporter.error(
            spec.emit.endpoint.at,
            format!(
                "unknown endpoint `{}`; known: {}",
                spec.emit.endpoint.value,
                known.join(", ")
            ),
        );
    }
    let types = spec.matcher.types.value.0.clone();
    if types.is_empty() || types.iter().any(|t| t.trim().is_empty()) {
        reporter.error(
            spec.matcher.types.at,
            "`match.type` needs at least one object type (`__typename`), such as Invoice",
        );
    }
    let conditions = spec
        .matcher
        .conditions
        .iter()
        .filter_map(|c| condition(c, reporter))
        .collect();

    let mut selections: Vec<Selection> = Vec::new();
    let mut broken_by_settings = false;
    for (field, spanned) in &spec.select {
        let position = spanned.at;
        let select = &spanned.value;
        if CONTEXT_NAMES.contains(&field.as_str()) {
            reporter.error(
                position,
                format!("`{field}` is a built-in name; choose another name for this selection"),
            );
            broken_names.push(field.clone());
            continue;
        }
        let text = if is_template(&select.path) {
            match env.render_str(&select.path, context! { settings => settings.clone() }) {
                Ok(text) => text,
                Err(e) => {
                    reporter.error(
                        position,
                        format!("path of `{field}`: {}", super::body::describe(&e)),
                    );
                    broken_names.push(field.clone());
                    continue;
                }
            }
        } else {
            select.path.clone()
        };
        let path = match Path::parse(&text) {
            Ok(path) => path,
            Err(message) => {
                if settings_broken && select.path.contains("settings.") {
                    broken_by_settings = true;
                } else {
                    reporter.error(position, format!("{}: {message}", select.describe(field)));
                }
                broken_names.push(field.clone());
                continue;
            }
        };
        let cardinality = match (select.many, select.optional, &select.default) {
            (true, _, Some(_)) | (true, true, _) => {
                reporter.error(position, format!("selection `{field}`: `many` already allows no match; drop `optional`/`default`"));
                broken_names.push(field.clone());
                continue;
            }
            (true, false, None) => Cardinality::Many,
            (false, _, Some(Json::Null)) => {
                reporter.error(position, format!("selection `{field}`: `default: null` would make a missing value none; write `optional: true`"));
                broken_names.push(field.clone());
                continue;
            }
            (false, _, Some(default)) => Cardinality::Default(default.clone()),
            (false, true, None) => Cardinality::Optional,
            (false, false, None) => Cardinality::Required,
        };
        let from = match &select.from {
            None => None,
            Some(from) => match selections.iter().position(|s| s.name == *from) {
                Some(index) => Some(index),
                None => {
                    reporter.error(position, format!("selection `{field}` reads `from: {from}`, which is not a selection defined above it"));
                    broken_names.push(field.clone());
                    continue;
                }
            },
        };
        selections.push(Selection {
            name: field.clone(),
            path,
            cardinality,
            from,
        });
    }

    schema_check(spec, &selections, reporter);
    query_check(spec, &selections, coverage, reporter);

    let compute = spec
        .compute
        .iter()
        .map(|(name, src)| {
            if CONTEXT_NAMES.contains(&name.as_str()) || spec.select.contains_key(name) {
                reporter.error(
                    src.at,
                    format!("`{name}` is already defined; a computed value needs its own name"),
                );
            }
            (name.clone(), Src::of(src))
        })
        .collect();
    let for_each = spec
        .for_each
        .as_ref()
        .and_then(|spanned| match parse_binding(&spanned.value) {
            Some((var, items)) => Some((var, binding_items(&items, &spanned.value, spanned.at))),
            None => {
                reporter.error(
                    spanned.at,
                    format!(
                        "`for: {}` should read `NAME in EXPRESSION`, such as `line in lines`",
                        spanned.value
                    ),
                );
                broken_names.extend(spanned.value.split_whitespace().next().map(str::to_owned));
                None
            }
        });
    let mut key_template = |suffix: &str, spanned: &Spanned<String>| {
        let template_name = format!("{}#{suffix}", file.source.name);
        register_template(env, template_name, &Src::of(spanned), reporter)
    };
    let once_per = spec
        .once_per
        .as_ref()
        .and_then(|s| key_template("once_per", s));
    let waits_for = spec.waits_for.as_ref().and_then(|w| {
        let key = key_template("waits_for", &w.key)?;
        Some((w.mapping.value.clone(), w.mapping.at, key))
    });
    let coalesce = spec.coalesce.as_ref().and_then(|c| {
        let key = key_template("coalesce.key", &c.key);
        let version = key_template("coalesce.version", &c.version);
        Some((key?, version?))
    });
    let body = plan_body(&spec.emit.body, &file.source.name, "", env, reporter);
    if let Some(endpoint) = endpoint {
        lint(
            spec,
            &file.removed,
            endpoint,
            &body,
            for_each.as_ref().map(|(var, _)| var.as_str()),
            reporter,
        );
    }

    Plan {
        name,
        lane: spec.lane.value,
        failed: broken_by_settings || reporter.diagnostics.error_count() > errors_before,
        broken_names,
        removed: file.removed.clone(),
        endpoint,
        types,
        events: spec
            .matcher
            .events
            .as_ref()
            .map(|e| e.value.0.clone())
            .unwrap_or_default(),
        conditions,
        selections,
        compute,
        when: spec.when.as_ref().map(Src::of),
        require: spec
            .require
            .iter()
            .flat_map(|r| {
                let position = r.at;
                r.value
                    .0
                    .iter()
                    .map(move |name| Src::whole(name.clone(), position))
            })
            .collect(),
        for_each,
        once_per,
        waits_for,
        coalesce,
        body,
    }
}

/// Where the body leaf at `path` (keys) was written, if there is a value there.
fn leaf_position(node: &PlanNode, path: &[&str]) -> Option<Position> {
    match (node, path) {
        (PlanNode::Expression(src, _), []) => Some(src.position),
        (PlanNode::Template(_, position), []) => Some(*position),
        (PlanNode::Literal(json), []) if !json.is_null() => Some(Position::default()),
        (PlanNode::Map(entries), [key, rest @ ..]) => entries
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, node)| leaf_position(node, rest)),
        _ => None,
    }
}

/// Rules every mapping of a kind must follow, whatever a client changes:
/// - an event carries a `unique_id`, and a fan-out event's includes its item, so the same fact
///   always gets the same key and two items never share one;
/// - a subscription only on an explicit opt-in read through `opt_in`, and never an
///   unsubscribe: consent is compliance.
fn lint(
    spec: &MappingSpec,
    removed: &[Removed],
    endpoint: Endpoint,
    body: &PlanNode,
    fan_out: Option<&str>,
    reporter: &mut Reporter<'_>,
) {
    let at = spec.emit.endpoint.at;
    let mapping = &spec.name.value;
    // Where an overlay removed `key` (a body path or a top-level key) or a part above it.
    let removal = |kind: RemovedKind, key: &str| {
        removed
            .iter()
            .find(|r| r.kind == kind && (r.name == key || key.starts_with(&format!("{}.", r.name))))
            .map(|r| {
                (
                    r.at,
                    r.name.rsplit('.').next().unwrap_or(&r.name).to_owned(),
                )
            })
    };
    match endpoint {
        Endpoint::CreateEvent => {
            let path = ["data", "attributes", "unique_id"];
            match leaf_position(body, &path) {
                None => match removal(RemovedKind::BodyField, "data.attributes.unique_id") {
                    Some((removed_at, key)) => reporter.error(
                        removed_at,
                        format!("`{key}: null` removes data.attributes.unique_id from the base mapping `{mapping}`: an event mapping must set it, built from the marketplace and Marketplacer's ids, so Klaviyo can deduplicate it"),
                    ),
                    None => reporter.error(
                        at,
                        "an event mapping must set data.attributes.unique_id, built from the marketplace and Marketplacer's ids, so Klaviyo can deduplicate it",
                    ),
                },
                Some(position) => {
                    let written = spec_text_at(spec, &path).unwrap_or_default();
                    if let Some(var) = fan_out.filter(|var| !written.contains(var)) {
                        reporter.error(
                            position,
                            format!("this mapping fans out with `{var}`, so its unique_id must include the item (such as `{{{{ {var}.legacyId }}}}`), or its events would share one key"),
                        );
                    }
                }
            }
        }
        Endpoint::BulkSubscribeProfiles => {
            let opt_in_names: Vec<&str> = spec
                .compute
                .iter()
                .filter(|(_, src)| src.value.contains("opt_in"))
                .map(|(name, _)| name.as_str())
                .collect();
            let conditioned = spec.when.as_ref().is_some_and(|when| {
                when.value.contains("opt_in") || opt_in_names.iter().any(|n| when.value.contains(n))
            });
            if !conditioned {
                // At the `when:` that lost the opt-in (an overlay's, often), else where an
                // overlay removed it, else at the endpoint.
                let (position, cause) = match (&spec.when, removal(RemovedKind::Key, "when")) {
                    (Some(when), _) => (
                        when.at,
                        format!(
                            "`when: {}` in mapping `{mapping}` does not read the opt-in",
                            when.value
                        ),
                    ),
                    (None, Some((removed_at, _))) => (
                        removed_at,
                        format!(
                            "`when: null` removes the opt-in condition of the base mapping `{mapping}`"
                        ),
                    ),
                    (None, None) => (at, format!("mapping `{mapping}` has no `when:`")),
                };
                reporter.error(
                    position,
                    format!("{cause}: a subscription mapping must subscribe only on an explicit opt-in: read the consent field and add `when:` with it passed through `opt_in` (see consent.yaml)"),
                );
            }
            if spec_contains(&spec.emit.body.value, "UNSUBSCRIBED") {
                reporter.error(
                    at,
                    "mappings never unsubscribe: later consent changes belong to Klaviyo",
                );
            }
        }
        _ => {}
    }
}

/// Paths that cannot match anything Marketplacer sends (a misspelt field, a field below a
/// scalar) are warned about at their selection or condition: a typo in an optional field would
/// otherwise just be empty forever. Warnings rather than errors because the schema shipped is a
/// dated copy, and a client's instance may have more; `validate --strict` fails on them.
fn schema_check(spec: &MappingSpec, selections: &[Selection], reporter: &mut Reporter<'_>) {
    let schema = MarketplacerSchema::builtin();
    let roots: Vec<Shape> = spec
        .matcher
        .types
        .value
        .0
        .iter()
        .filter(|t| schema.has_type(t))
        .map(|t| Shape::named(t.as_str()))
        .collect();
    if roots.is_empty() {
        return;
    }
    // The first shape a path fits, or the mismatch against the first root.
    let fit = |bases: &[Shape], path: &Path| -> Result<Shape, PathMismatch> {
        let mut first = None;
        for base in bases {
            match schema.check(base, path.query(), &path.text) {
                Ok(shape) => return Ok(shape),
                Err(mismatch) => {
                    first.get_or_insert(mismatch);
                }
            }
        }
        Err(first.expect("at least one root"))
    };
    let mut shapes: Vec<Shape> = Vec::new();
    for selection in selections {
        let bases = match selection.from {
            Some(index) => vec![shapes[index].clone()],
            None => roots.clone(),
        };
        let shape = match fit(&bases, &selection.path) {
            Ok(shape) => shape,
            Err(mismatch) => {
                let written = spec.select.get(&selection.name);
                let at = written.map_or(spec.name.at, |s| s.at);
                let what = written.map_or_else(
                    || format!("selection `{}`", selection.name),
                    |s| s.value.describe(&selection.name),
                );
                reporter.warning(at, format!("{what}: {mismatch}"));
                Shape::Unknown
            }
        };
        shapes.push(match selection.cardinality {
            Cardinality::Many => shape.into_list(),
            _ => shape,
        });
    }
    let mut paths = Vec::new();
    condition_paths(&spec.matcher.conditions, &mut paths);
    for text in paths {
        if let Ok(path) = Path::parse(&text.value)
            && let Err(mismatch) = fit(&roots, &path)
        {
            reporter.warning(text.at, format!("condition: {mismatch}"));
        }
    }
}

/// Every path a mapping's conditions test, `any` alternatives included.
fn condition_paths<'c>(list: &'c [Spanned<ConditionSpec>], out: &mut Vec<&'c Spanned<String>>) {
    for condition in list {
        out.extend(condition.value.path.as_ref());
        if let Some(any) = &condition.value.any {
            condition_paths(any, out);
        }
    }
}

/// Paths the webhook query of the mapping's type does not select are errors at their selection
/// or condition, naming the field to add and where: the record never carries them, so the value
/// is missing on every delivery. A path the schema already rules out is left to
/// [`schema_check`], and a type without a query (one no webhook of this set delivers) is not
/// checked. A mapping of several types is checked against each of their queries.
fn query_check(
    spec: &MappingSpec,
    selections: &[Selection],
    coverage: &Coverage<'_>,
    reporter: &mut Reporter<'_>,
) {
    let schema = MarketplacerSchema::builtin();
    let types: Vec<&str> = spec
        .matcher
        .types
        .value
        .0
        .iter()
        .map(String::as_str)
        .filter(|t| coverage.root(t).is_some())
        .collect();
    for type_name in types {
        let root = coverage
            .root(type_name)
            .expect("filtered on having a query");
        let schema_root = Shape::named(type_name);
        let mut reached: Vec<(QueryCursor<'_>, Shape)> = Vec::new();
        for selection in selections {
            let (base, schema_base) = match selection.from {
                Some(index) => reached[index].clone(),
                None => (root.clone(), schema_root.clone()),
            };
            // A path the schema rules out is reported once, by the schema check.
            let Ok(shape) =
                schema.check(&schema_base, selection.path.query(), &selection.path.text)
            else {
                reached.push((QueryCursor::Anything, Shape::Unknown));
                continue;
            };
            let cursor = match coverage.check(
                type_name,
                &base,
                selection.path.query(),
                &selection.path.text,
            ) {
                Ok(cursor) => cursor,
                Err(missing) => {
                    let written = spec.select.get(&selection.name);
                    let at = written.map_or(spec.name.at, |s| s.at);
                    reporter.error(at, missing.to_string());
                    QueryCursor::Anything
                }
            };
            reached.push(match selection.cardinality {
                Cardinality::Many => (cursor.into_list(), shape.into_list()),
                _ => (cursor, shape),
            });
        }
        let mut paths = Vec::new();
        condition_paths(&spec.matcher.conditions, &mut paths);
        for text in paths {
            let Ok(path) = Path::parse(&text.value) else {
                continue;
            };
            if schema
                .check(&schema_root, path.query(), &path.text)
                .is_err()
            {
                continue;
            }
            if let Err(missing) = coverage.check(type_name, &root, path.query(), &path.text) {
                reporter.error(text.at, missing.to_string());
            }
        }
    }
}

/// Metrics Marketplacer's own Klaviyo integration sends (its "Klaviyo eCommerce tracking").
const NATIVE_METRICS: &[&str] = &[
    "Placed Order",
    "Ordered Product",
    "Invoice Created",
    "Invoice Fulfilled",
    "Invoice Refunded",
];

/// With Marketplacer's own integration on, an event of ours under one of its metric names
/// would be counted twice in Klaviyo's revenue and fire flows twice. A warning, not an error:
/// a client may switch the integration off on a date and want the names ready.
fn native_metric_collisions(
    mappings: &[SpecFile<MappingSpec>],
    switched_on: Position,
    env: &Environment<'static>,
    settings: &Value,
    files: &Files,
    diagnostics: &mut Diagnostics,
) {
    let path = ["data", "attributes", "metric", "data", "attributes", "name"];
    for file in mappings {
        let Some(node) = spec_node_at(&file.spec, &path) else {
            continue;
        };
        let BodyNode::String(text) = &node.value else {
            continue;
        };
        // Metric names come from settings, so rendering with settings alone gives the name;
        // anything read from the record renders empty and cannot collide.
        let Ok(name) = env.render_str(text, context! { settings => settings.clone() }) else {
            continue;
        };
        if let Some(native) = NATIVE_METRICS
            .iter()
            .find(|n| n.eq_ignore_ascii_case(name.trim()))
        {
            // Reported where the integration is switched on: that is the client's file, where
            // the metric is renamed, while the mapping may well be a built-in one.
            let mapping = files.get(node.at.file);
            diagnostics.push(files.warning(
                switched_on,
                format!(
                    "mapping `{}` sends metric `{native}` ({}:{}), which Marketplacer's own Klaviyo integration also sends: give ours another name under `metrics:`, or flows fire and revenue counts twice",
                    file.spec.name.value, mapping.name, node.at.line
                ),
            ));
        }
    }
}

/// The body node at `path`, as written.
fn spec_node_at<'s>(spec: &'s MappingSpec, path: &[&str]) -> Option<&'s Spanned<BodyNode>> {
    let mut node = &spec.emit.body;
    for key in path {
        match &node.value {
            BodyNode::Map(entries) => node = entries.get(*key)?,
            _ => return None,
        }
    }
    Some(node)
}

/// The text of a body string at `path`, as written.
fn spec_text_at(spec: &MappingSpec, path: &[&str]) -> Option<String> {
    match &spec_node_at(spec, path)?.value {
        BodyNode::String(text) => Some(text.clone()),
        _ => None,
    }
}

fn spec_contains(node: &BodyNode, needle: &str) -> bool {
    match node {
        BodyNode::String(text) => text.contains(needle),
        BodyNode::List(items) => items.iter().any(|i| spec_contains(&i.value, needle)),
        BodyNode::Map(entries) => entries.values().any(|v| spec_contains(&v.value, needle)),
        _ => false,
    }
}

/// The expression of a `NAME in EXPRESSION` binding written at `at`, as part of it.
fn binding_items(items: &str, written: &str, at: Position) -> Src {
    let trimmed = written.trim_end();
    match trimmed.len().checked_sub(items.len()) {
        Some(start) if trimmed.ends_with(items) => Src::part(&trimmed[start..], written, at),
        _ => Src::whole(items.to_owned(), at),
    }
}

/// Splits `line in order.lines` into the variable and the expression.
fn parse_binding(text: &str) -> Option<(String, String)> {
    let (var, items) = text.trim().split_once(" in ")?;
    let var = var.trim();
    let is_identifier = !var.is_empty()
        && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !var.starts_with(|c: char| c.is_ascii_digit());
    (is_identifier && !items.trim().is_empty()).then(|| (var.to_owned(), items.trim().to_owned()))
}

fn condition(spanned: &Spanned<ConditionSpec>, reporter: &mut Reporter<'_>) -> Option<Condition> {
    let position = spanned.at;
    let spec = &spanned.value;
    if let Some(any) = &spec.any {
        if spec.path.is_some()
            || spec.equals.is_some()
            || spec.one_of.is_some()
            || spec.contains.is_some()
            || spec.exists.is_some()
        {
            reporter.error(
                position,
                "`any` groups other conditions; it cannot have its own `path` or test",
            );
            return None;
        }
        let alternatives: Vec<Condition> =
            any.iter().filter_map(|c| condition(c, reporter)).collect();
        return (alternatives.len() == any.len()).then_some(Condition::Any(alternatives));
    }
    let Some(path_text) = &spec.path else {
        reporter.error(
            position,
            "a condition needs a `path` (or `any:` with a list of conditions)",
        );
        return None;
    };
    let path = match Path::parse(&path_text.value) {
        Ok(path) => path,
        Err(message) => {
            reporter.error(path_text.at, message);
            return None;
        }
    };
    let tests = [
        spec.equals.is_some(),
        spec.one_of.is_some(),
        spec.contains.is_some(),
        spec.exists.is_some(),
    ];
    if tests.iter().filter(|t| **t).count() != 1 {
        reporter.error(
            position,
            "a condition needs exactly one test: `equals`, `one_of`, `contains` or `exists`",
        );
        return None;
    }
    Some(if let Some(v) = &spec.equals {
        Condition::Equals(path, v.clone())
    } else if let Some(v) = &spec.one_of {
        Condition::OneOf(path, v.clone())
    } else if let Some(v) = &spec.contains {
        Condition::Contains(path, v.clone())
    } else {
        Condition::Exists(path, spec.exists.unwrap_or(true))
    })
}

/// Adds a template to the environment under a unique name, reporting syntax errors at the
/// line of the template inside the spec.
fn register_template(
    env: &mut Environment<'static>,
    name: String,
    src: &Src,
    reporter: &mut Reporter<'_>,
) -> Option<(String, Position)> {
    match env.add_template_owned(name.clone(), src.text.clone()) {
        Ok(()) => Some((name, src.position)),
        Err(e) => {
            reporter.error(
                error_position(src, &e, reporter.files),
                format!("template: {}", super::body::describe(&e)),
            );
            None
        }
    }
}

/// Where inside the spec a template or expression error is: at the line of `src` it names,
/// which in a `|` or `>` block is a line below the first, and its first character there
/// (minijinja gives the line but no column).
fn error_position(src: &Src, err: &minijinja::Error, files: &Files) -> Position {
    // Input that ends too soon is missing something at its end: in a folded block, all of
    // it is one line to minijinja, so the line alone would point at the block's first.
    if err
        .detail()
        .is_some_and(|d| d.contains("unexpected end of input"))
    {
        let end = src.text.trim_end();
        let last = end.chars().next_back().map_or(0, char::len_utf8);
        return src.locate(files, end.len() - last);
    }
    src.locate_line(files, err.line().unwrap_or(1))
}

/// Plans a body node. A node with a problem is reported and planned as `null`, so the rest
/// of the body is still checked.
fn plan_body(
    spanned: &Spanned<BodyNode>,
    file_name: &str,
    pointer: &str,
    env: &mut Environment<'static>,
    reporter: &mut Reporter<'_>,
) -> PlanNode {
    let position = spanned.at;
    match &spanned.value {
        BodyNode::Null => PlanNode::Literal(Json::Null),
        BodyNode::Bool(b) => {
            yaml11_boolean(position, &b.to_string(), reporter);
            PlanNode::Literal(Json::Bool(*b))
        }
        BodyNode::Number(n) => match plain_scalar(reporter.files, position) {
            Some(written) if !is_plain_number(written) && looks_numeric(written) => {
                PlanNode::Literal(Json::String(written.to_owned()))
            }
            _ => PlanNode::Literal(Json::Number(n.clone())),
        },
        BodyNode::String(text) => {
            if is_yaml11_boolean(text) {
                yaml11_boolean(position, &format!("the text `{text}`"), reporter);
            }
            if let Some(expr) = single_expression(text) {
                return PlanNode::Expression(Src::part(expr, text, position), text.clone());
            }
            if !is_template(text) {
                return PlanNode::Literal(Json::String(text.clone()));
            }
            let src = Src::whole(text.clone(), position);
            match register_template(env, format!("{file_name}#{pointer}"), &src, reporter) {
                Some((name, position)) => PlanNode::Template(name, position),
                None => PlanNode::Literal(Json::Null),
            }
        }
        BodyNode::List(items) => PlanNode::List(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    plan_body(item, file_name, &format!("{pointer}/{i}"), env, reporter)
                })
                .collect(),
        ),
        BodyNode::Map(entries) if entries.contains_key("$for") => {
            let keys: BTreeSet<&str> = entries.keys().map(String::as_str).collect();
            if keys != BTreeSet::from(["$for", "$yield"]) {
                reporter.error(
                    position,
                    "a `$for` list needs exactly two keys: `$for: NAME in EXPRESSION` and `$yield: ELEMENT`",
                );
            }
            let binding = &entries["$for"];
            let text = match &binding.value {
                BodyNode::String(text) => text.as_str(),
                _ => "",
            };
            let element = match entries.get("$yield") {
                Some(element) => plan_body(
                    element,
                    file_name,
                    &format!("{pointer}/$yield"),
                    env,
                    reporter,
                ),
                None => PlanNode::Literal(Json::Null),
            };
            match parse_binding(text) {
                Some((var, items)) => PlanNode::For {
                    var,
                    items: binding_items(&items, text, binding.at),
                    element: Box::new(element),
                },
                None => {
                    reporter.error(
                        binding.at,
                        format!("`$for: {text}` should read `NAME in EXPRESSION`, such as `line in lines`"),
                    );
                    PlanNode::Literal(Json::Null)
                }
            }
        }
        BodyNode::Map(entries) => PlanNode::Map(
            entries
                .iter()
                .map(|(key, value)| {
                    let escaped = key.replace('~', "~0").replace('/', "~1");
                    let node = plan_body(
                        value,
                        file_name,
                        &format!("{pointer}/{escaped}"),
                        env,
                        reporter,
                    );
                    (key.clone(), node)
                })
                .collect(),
        ),
    }
}

/// An unquoted scalar of a body as written at `at`, if it is one word: a number or a
/// boolean is, and either is all a plain scalar holds up to a blank, a flow `,]}` or a comment.
fn plain_scalar(files: &Files, at: Position) -> Option<&str> {
    if at.line == 0 {
        return None;
    }
    let line = files.get(at.file).text.lines().nth(at.line - 1)?;
    let start = line
        .char_indices()
        .nth(at.column.checked_sub(1)?)
        .map(|(i, _)| i)?;
    let rest = &line[start..];
    if rest.starts_with(['"', '\'', '*', '&', '!']) {
        return None; // quoted, an alias, an anchor or a tag: not what a consultant typed
    }
    let end = rest
        .find(|c: char| c.is_whitespace() || matches!(c, ',' | ']' | '}' | '#'))
        .unwrap_or(rest.len());
    Some(&rest[..end]).filter(|word| !word.is_empty())
}

/// Plainly a number: an optional minus, digits with no leading zero, an optional fraction.
/// YAML also reads `0800`, `+61412345678`, `1e5` and `0x1F` as numbers, but a body literal
/// written like that is a phone number or a code more often than a quantity, and sending
/// `800.0` for `0800` loses what was written; those stay text.
fn is_plain_number(written: &str) -> bool {
    let digits = written.strip_prefix('-').unwrap_or(written);
    let (whole, fraction) = match digits.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (digits, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    all_digits(whole)
        && (whole == "0" || !whole.starts_with('0'))
        && fraction.is_none_or(all_digits)
}

/// Whether a word YAML read as a number is written like one (and not, say, an alias).
fn looks_numeric(written: &str) -> bool {
    written.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '+' | '-' | '.'))
}

/// Warns about an unquoted `yes`, `no`, `on`, `off`, `y` or `n` (any case) at `at`, which
/// marketsync's YAML reader sends as `sent` but other YAML 1.1 readers take as a boolean.
fn yaml11_boolean(at: Position, sent: &str, reporter: &mut Reporter<'_>) {
    let Some(written) = plain_scalar(reporter.files, at) else {
        return;
    };
    if is_yaml11_boolean(written) {
        reporter.warning(
            at,
            format!(
                "`{written}` is a boolean to YAML 1.1 readers and is sent as {sent}: quote it (\"{written}\") if text is meant, or write true or false"
            ),
        );
    }
}

fn is_yaml11_boolean(word: &str) -> bool {
    ["yes", "no", "on", "off", "y", "n"]
        .iter()
        .any(|b| word.eq_ignore_ascii_case(b))
}

/// Names that are defined at some point of a mapping.
struct Scope<'a> {
    names: HashSet<String>,
    globals: &'a HashSet<String>,
    /// The mapping's name and what overlays removed from it: a name removed by an overlay
    /// and still read by the base is the overlay's mistake, reported at its `null`.
    mapping: &'a str,
    removed: &'a [Removed],
}

impl Scope<'_> {
    fn with(&self, name: &str) -> Scope<'_> {
        let mut names = self.names.clone();
        names.insert(name.to_owned());
        Scope {
            names,
            globals: self.globals,
            mapping: self.mapping,
            removed: self.removed,
        }
    }

    fn check(&self, used: HashSet<String>, src: &Src, reporter: &mut Reporter<'_>) {
        let mut unknown: Vec<String> = used
            .into_iter()
            .filter(|n| !self.names.contains(n) && !self.globals.contains(n))
            .collect();
        unknown.sort();
        for name in unknown {
            let position = src.locate_word(reporter.files, &name);
            if let Some(removed) = self.removed.iter().find(|r| {
                r.name == name && matches!(r.kind, RemovedKind::Selection | RemovedKind::Computed)
            }) {
                let what = match removed.kind {
                    RemovedKind::Selection => "selection",
                    _ => "computed value",
                };
                let prefix = format!(
                    "`{name}: null` removes the {what} `{name}` of the base mapping `{}`",
                    self.mapping
                );
                let reported = reporter
                    .diagnostics
                    .iter()
                    .any(|d| d.position == removed.at && d.message.starts_with(&prefix));
                if !reported {
                    let used = reporter.files.get(position.file);
                    reporter.error(
                        removed.at,
                        format!(
                            "{prefix}, which still reads it ({}:{}): remove that use in the overlay too, or keep `{name}`",
                            used.name, position.line
                        ),
                    );
                }
                continue;
            }
            let mut known: Vec<&str> = self.names.iter().map(String::as_str).collect();
            known.sort();
            let hint = match did_you_mean(&name, known.iter().copied()) {
                close if !close.is_empty() => close,
                _ => format!("; defined names are: {}", known.join(", ")),
            };
            reporter.error(position, format!("`{name}` is not defined here{hint}"));
        }
    }
}

/// Reports filters and tests the environment does not have.
fn check_callables(
    env: &Environment<'static>,
    src: &Src,
    is_expression: bool,
    reporter: &mut Reporter<'_>,
) {
    let mut reported = HashSet::new();
    for (kind, name) in callables(&src.text, is_expression) {
        let message = match kind {
            Callable::Filter => match did_you_mean(&name, known_callables(env, kind)) {
                close if !close.is_empty() => format!("unknown filter `{name}`{close}"),
                _ => format!(
                    "unknown filter `{name}`; marketsync's filters are money, email, e164, iso8601, opt_in, compact and string, beside minijinja's built-ins"
                ),
            },
            Callable::Test => match did_you_mean(&name, known_callables(env, kind)) {
                close if !close.is_empty() => format!("unknown test `{name}`{close}"),
                _ => format!(
                    "unknown test `{name}`; tests are minijinja's built-ins, such as defined, none, true, false, in, even, odd"
                ),
            },
        };
        if !has_callable(env, kind, &name) && reported.insert(name.clone()) {
            let position = src.locate_word(reporter.files, &name);
            reporter.error(position, message);
        }
    }
}

/// Whether the environment has the filter or test `name`. minijinja lists neither, so each
/// is probed.
fn has_callable(env: &Environment<'static>, kind: Callable, name: &str) -> bool {
    let (probe, unknown) = match kind {
        Callable::Filter => (format!("none | {name}"), ErrorKind::UnknownFilter),
        Callable::Test => (format!("none is {name}"), ErrorKind::UnknownTest),
    };
    !env.compile_expression_owned(probe)
        .and_then(|e| e.eval(()))
        .is_err_and(|e| e.kind() == unknown)
}

/// The filters or tests a misspelt one may have meant: marketsync's and minijinja's built-ins
/// (those this build of minijinja has).
fn known_callables(
    env: &Environment<'static>,
    kind: Callable,
) -> impl Iterator<Item = &'static str> {
    const FILTERS: &[&str] = &[
        "money",
        "email",
        "e164",
        "iso8601",
        "opt_in",
        "compact",
        "string",
        "abs",
        "attr",
        "batch",
        "bool",
        "capitalize",
        "count",
        "default",
        "dictsort",
        "escape",
        "first",
        "float",
        "groupby",
        "indent",
        "int",
        "items",
        "join",
        "last",
        "length",
        "lines",
        "list",
        "lower",
        "map",
        "max",
        "min",
        "reject",
        "rejectattr",
        "replace",
        "reverse",
        "round",
        "select",
        "selectattr",
        "slice",
        "sort",
        "split",
        "sum",
        "title",
        "tojson",
        "trim",
        "unique",
        "upper",
        "urlencode",
        "chain",
        "zip",
    ];
    const TESTS: &[&str] = &[
        "defined",
        "undefined",
        "none",
        "true",
        "false",
        "boolean",
        "number",
        "integer",
        "float",
        "string",
        "sequence",
        "iterable",
        "mapping",
        "safe",
        "even",
        "odd",
        "divisibleby",
        "in",
        "eq",
        "ne",
        "lt",
        "le",
        "gt",
        "ge",
        "startingwith",
        "endingwith",
        "containing",
        "lower",
        "upper",
        "filter",
        "test",
    ];
    let names = match kind {
        Callable::Filter => FILTERS,
        Callable::Test => TESTS,
    };
    names
        .iter()
        .copied()
        .filter(move |name| has_callable(env, kind, name))
}

/// The second pass: expressions compiled against the environment, names checked.
fn build<'env>(
    plan: Plan,
    env: &'env Environment<'static>,
    files: &Files,
    diagnostics: &mut Diagnostics,
) -> Option<Mapping<'env>> {
    let mut reporter = Reporter { files, diagnostics };
    let errors_before = reporter.diagnostics.error_count();
    let globals: HashSet<String> = env.globals().map(|(name, _)| name.to_owned()).collect();
    let mut scope = Scope {
        names: CONTEXT_NAMES.iter().map(|n| (*n).to_owned()).collect(),
        globals: &globals,
        mapping: &plan.name,
        removed: &plan.removed,
    };
    scope
        .names
        .extend(plan.selections.iter().map(|s| s.name.clone()));
    scope.names.extend(plan.broken_names.iter().cloned());

    let mut expression = |src: &Src, scope: &Scope<'_>, reporter: &mut Reporter<'_>| match env
        .compile_expression_owned(src.text.clone())
    {
        Ok(expr) => {
            let used = expr.undeclared_variables(false);
            let reads = in_order(&used, &src.text);
            scope.check(used, src, reporter);
            check_callables(env, src, true, reporter);
            Some(Expr {
                expr,
                direct: Direct::parse(&src.text),
                source: src.text.clone(),
                reads,
            })
        }
        Err(e) => {
            reporter.error(
                error_position(src, &e, reporter.files),
                format!(
                    "expression `{}`: {}",
                    src.text.split_whitespace().collect::<Vec<_>>().join(" "),
                    super::body::describe(&e)
                ),
            );
            None
        }
    };

    let mut compute = Vec::new();
    for (name, src) in &plan.compute {
        if let Some(expr) = expression(src, &scope, &mut reporter) {
            compute.push((name.clone(), expr));
        }
        scope.names.insert(name.clone());
    }
    let when = plan
        .when
        .as_ref()
        .and_then(|src| expression(src, &scope, &mut reporter));
    for name in &plan.require {
        if !scope.names.contains(&name.text) {
            reporter.error(
                name.position,
                format!(
                    "`require` names `{}`, which is not a selection or computed value",
                    name.text
                ),
            );
        }
    }
    let for_each = plan.for_each.as_ref().and_then(|(var, src)| {
        expression(src, &scope, &mut reporter).map(|expr| (var.clone(), expr))
    });
    let scope = match &plan.for_each {
        Some((var, _)) => scope.with(var),
        None => scope,
    };
    let mut key_template = |(name, position): &(String, Position)| {
        let template = env.get_template(name).ok()?;
        let src = Src::whole(template.source().to_owned(), *position);
        scope.check(template.undeclared_variables(false), &src, &mut reporter);
        check_callables(env, &src, false, &mut reporter);
        Some(Text::new(template))
    };
    let once_per = plan.once_per.as_ref().and_then(&mut key_template);
    let waits_for = plan
        .waits_for
        .as_ref()
        .and_then(|(mapping, _, key)| Some((Arc::from(mapping.as_str()), key_template(key)?)));
    let coalesce = plan
        .coalesce
        .as_ref()
        .and_then(|(key, version)| Some((key_template(key)?, key_template(version)?)));
    let body = build_body(&plan.body, env, &scope, &mut expression, &mut reporter);
    if plan.failed || reporter.diagnostics.error_count() > errors_before {
        return None;
    }
    Some(Mapping {
        name: plan.name,
        lane: plan.lane,
        endpoint: plan.endpoint?,
        types: plan.types,
        events: plan.events,
        conditions: plan.conditions,
        selections: plan.selections,
        compute,
        when,
        require: plan.require.into_iter().map(|r| r.text).collect(),
        for_each,
        once_per,
        waits_for,
        coalesce,
        body: body?,
    })
}

/// Names a template or expression reads, in the order they first appear in its source (so
/// `a or b` lists `a` first).
fn in_order(names: &HashSet<String>, source: &str) -> Vec<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let first = |name: &str| {
        source
            .match_indices(name)
            .find(|(at, _)| {
                let before = source[..*at].chars().next_back();
                let after = source[at + name.len()..].chars().next();
                !before.is_some_and(|c| is_ident(c) || c == '.') && !after.is_some_and(is_ident)
            })
            .map_or(usize::MAX, |(at, _)| at)
    };
    let mut names: Vec<(usize, String)> = names.iter().map(|n| (first(n), n.clone())).collect();
    names.sort();
    names.into_iter().map(|(_, name)| name).collect()
}

fn build_body<'env, F>(
    node: &PlanNode,
    env: &'env Environment<'static>,
    scope: &Scope<'_>,
    expression: &mut F,
    reporter: &mut Reporter<'_>,
) -> Option<Node<'env>>
where
    F: FnMut(&Src, &Scope<'_>, &mut Reporter<'_>) -> Option<Expr<'env>>,
{
    Some(match node {
        PlanNode::Literal(json) => Node::Literal(json.clone()),
        PlanNode::Expression(src, leaf) => {
            let Expr { expr, reads, .. } = expression(src, scope, reporter)?;
            Node::Expression {
                expr,
                direct: Direct::parse(&src.text),
                source: leaf.clone(),
                reads,
            }
        }
        PlanNode::Template(name, position) => {
            let template = env.get_template(name).ok()?;
            let used = template.undeclared_variables(false);
            let reads = in_order(&used, template.source());
            let src = Src::whole(template.source().to_owned(), *position);
            scope.check(used, &src, reporter);
            check_callables(env, &src, false, reporter);
            Node::Template {
                template: Text::new(template),
                reads,
            }
        }
        PlanNode::List(items) => {
            let built: Vec<Option<Node<'env>>> = items
                .iter()
                .map(|i| build_body(i, env, scope, expression, reporter))
                .collect();
            Node::List(built.into_iter().collect::<Option<Vec<_>>>()?)
        }
        PlanNode::Map(entries) => {
            let built: Vec<Option<(String, Node<'env>)>> = entries
                .iter()
                .map(|(k, v)| {
                    build_body(v, env, scope, expression, reporter).map(|n| (k.clone(), n))
                })
                .collect();
            Node::Map(built.into_iter().collect::<Option<Vec<_>>>()?)
        }
        PlanNode::For {
            var,
            items,
            element,
        } => {
            let items = expression(items, scope, reporter);
            let element = build_body(element, env, &scope.with(var), expression, reporter);
            let Expr {
                expr,
                source,
                reads,
                ..
            } = items?;
            Node::For {
                var: var.clone(),
                items: expr,
                items_direct: Direct::parse(&source),
                source,
                reads,
                element: Box::new(element?),
            }
        }
    })
}

/// Renders each mapping's example deliveries and reports what fails, at the example's line.
/// The same failure in many deliveries of one example is reported once, with a count.
fn check_examples(
    engine: &Engine,
    mappings: &[SpecFile<MappingSpec>],
    files: &Files,
    diagnostics: &mut Diagnostics,
) {
    let built = engine.mapping_names();
    for file in mappings {
        let name = file.spec.name.value.as_str();
        if !built.iter().any(|b| &**b == name) {
            continue;
        }
        for example in &file.examples {
            let report = |message: String| files.error(example.position, message);
            let text = match &example.text {
                Ok(text) => text,
                Err(message) => {
                    diagnostics.push(report(format!("example: cannot read {message}")));
                    continue;
                }
            };
            let mut produced = 0;
            // failure message -> (first delivery, count), in first-seen order
            let mut failures: Vec<(String, String, usize)> = Vec::new();
            let mut fail = |message: String, delivery: &str| match failures
                .iter_mut()
                .find(|(m, ..)| *m == message)
            {
                Some((_, _, count)) => *count += 1,
                None => failures.push((message, delivery.to_owned(), 1)),
            };
            for (index, line) in source::deliveries_in(&example.name, text)
                .into_iter()
                .enumerate()
            {
                match source::parse_delivery(line) {
                    Err(e) => fail(e.to_string(), &format!("#{}", index + 1)),
                    Ok(records) => {
                        for record in records {
                            let mapped = engine.map(&record);
                            produced += mapped
                                .requests
                                .iter()
                                .filter(|r| &*r.mapping == name)
                                .count();
                            for error in mapped.errors.iter().filter(|e| &*e.mapping == name) {
                                fail(error.message.clone(), &record.delivery_id);
                            }
                        }
                    }
                }
            }
            for (message, first, count) in &failures {
                // Fields Klaviyo does not accept are reported at their key; the rest of the
                // schema's complaints stay with the example.
                let (located, message) = unexpected_fields(&file.spec, message, files);
                for unexpected in located {
                    if !diagnostics.iter().any(|d| {
                        d.position == unexpected.position && d.message == unexpected.message
                    }) {
                        diagnostics.push(unexpected);
                    }
                }
                let Some(message) = message else {
                    continue;
                };
                let times = match count {
                    1 => format!("delivery {first}"),
                    n => format!("{n} deliveries, first {first}"),
                };
                diagnostics.push(report(format!(
                    "example `{}` ({times}): {message}",
                    example.name
                )));
            }
            if produced == 0 && failures.is_empty() {
                diagnostics.push(files.warning(
                    example.position,
                    format!(
                        "example `{}` produces no request from this mapping",
                        example.name
                    ),
                ));
            }
        }
    }
}

/// Body fields Klaviyo's schema does not allow (`uniqueId` for `unique_id`), found by an
/// example: each reported at the field's key, in whichever file wrote it (often a client's
/// overlay over a base mapping), rather than at the example's line. Returns those and the
/// example's message with the other complaints, if any are left.
fn unexpected_fields(
    spec: &MappingSpec,
    message: &str,
    files: &Files,
) -> (Vec<crate::diagnostic::Diagnostic>, Option<String>) {
    const MARK: &str = "the body breaks Klaviyo's schema for ";
    let Some((head, rest)) = message.split_once(MARK) else {
        return (Vec::new(), Some(message.to_owned()));
    };
    let Some((endpoint, problems)) = rest.split_once(": ") else {
        return (Vec::new(), Some(message.to_owned()));
    };
    let mut located = Vec::new();
    let mut left = Vec::new();
    for problem in problems.split("; ") {
        match unexpected_field(spec, problem, files) {
            Some(d) => located.push(d),
            None => left.push(problem),
        }
    }
    let message =
        (!left.is_empty()).then(|| format!("{head}{MARK}{endpoint}: {}", left.join("; ")));
    (located, message)
}

/// One `pointer: Additional properties are not allowed ('key' was unexpected)` at its key.
fn unexpected_field(
    spec: &MappingSpec,
    problem: &str,
    files: &Files,
) -> Option<crate::diagnostic::Diagnostic> {
    let (pointer, after) = problem.split_once(": Additional properties are not allowed (")?;
    let pointer = pointer.trim_start_matches('/');
    let mut quoted = after.split('\'');
    let key = quoted.nth(1)?;
    if quoted.nth(1).is_some_and(|k| !k.contains("unexpected")) {
        return None; // several keys in one complaint: left to the example's message
    }
    let parents: Vec<&str> = pointer.split('/').filter(|p| !p.is_empty()).collect();
    let parent = spec_node_at(spec, &parents)?;
    let BodyNode::Map(siblings) = &parent.value else {
        return None;
    };
    let node = siblings.get(key)?;
    let file = files.get(node.at.file);
    let at = crate::spec::key_position(&file.text, key, node.at);
    let known = siblings.keys().map(String::as_str).filter(|k| *k != key);
    let place = if parents.is_empty() {
        "the body".to_owned()
    } else {
        parents.join(".")
    };
    Some(files.error(
        at,
        format!(
            "`{key}` is not a field Klaviyo accepts in {place} of a `{}` request (mapping `{}`){}",
            spec.emit.endpoint.value,
            spec.name.value,
            crate::spec::did_you_mean(key, known)
        ),
    ))
}
