//! Request bodies, compiled: a tree whose leaves are literals, expressions or templates.
//!
//! The rule that matters: a string leaf that is exactly one `{{ expression }}` keeps the native
//! type of its value (number, list, object, bool), so no payload is ever built by pasting JSON
//! text into a string. A leaf that renders to nothing (`none`, undefined or an empty string) is
//! left out of its object, and an object left empty by that goes too: Klaviyo clears a profile
//! field that is sent as null, so "unknown" must mean "not sent".

use super::filters;
use super::watch::{Segment, Watch};
use minijinja::value::Value;
use minijinja::{Expression, Template};
use serde_json::Value as Json;

/// One node of a compiled body. Expressions and templates keep the text they were written as
/// and the top-level names they read, for `explain`.
pub enum Node<'env> {
    Literal(Json),
    Expression {
        expr: Expression<'env, 'static>,
        /// Set when the expression can be read without the VM.
        direct: Option<Direct>,
        /// The leaf as written, `{{ ... }}` included.
        source: String,
        reads: Vec<String>,
    },
    Template {
        template: Text<'env>,
        reads: Vec<String>,
    },
    List(Vec<Node<'env>>),
    Map(Vec<(String, Node<'env>)>),
    /// `$for: NAME in EXPRESSION` with `$yield: NODE`: one element per item, in order.
    For {
        var: String,
        items: Expression<'env, 'static>,
        items_direct: Option<Direct>,
        /// The items expression as written.
        source: String,
        reads: Vec<String>,
        element: Box<Node<'env>>,
    },
}

/// An expression that only names a value and its attributes, `line.image.url`, read without
/// minijinja's VM, with the VM's result. Most body leaves are like this (15 of the 27 kinds in
/// placed-order and ordered-product). Evaluating an expression creates a VM state, and every
/// state takes a number from one process-wide atomic counter (minijinja's `STATE_ID`), which
/// the `--jobs` threads then fight over. Reading these leaves directly took a one-job dry run
/// from 1.65 to 1.54 CPU s per 100 MB, and a two-job one from 1.71 to 1.63 (docs/performance.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    root: String,
    attributes: Vec<String>,
}

impl Lookup {
    /// The lookup that `expression` (the text between the braces) is, if it is one.
    pub fn parse(expression: &str) -> Option<Lookup> {
        let mut names = expression.trim().split('.');
        let root = names.next()?;
        // Constants, not lookups.
        if matches!(root, "true" | "false" | "none" | "True" | "False" | "None") {
            return None;
        }
        let identifier = |name: &str| {
            name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        let attributes: Vec<String> = names.map(str::to_owned).collect();
        (identifier(root) && attributes.iter().all(|a| identifier(a))).then(|| Lookup {
            root: root.to_owned(),
            attributes,
        })
    }

    /// The value, as the VM gives it under chainable undefined: an attribute of something
    /// that lacks it is undefined, not an error. `None` when `ctx` does not hold the root
    /// name, which leaves globals and functions to the VM.
    fn read(&self, ctx: &Value) -> Option<Value> {
        let mut value = ctx
            .get_attr(&self.root)
            .ok()
            .filter(|v| !v.is_undefined())?;
        for attribute in &self.attributes {
            value = value.get_attr(attribute).unwrap_or(Value::UNDEFINED);
        }
        Some(value)
    }
}

/// A template that is only text and lookups, `{{ marketplace }}:placed-order:{{ order_id }}`,
/// written without minijinja's VM, with the VM's text. Keys and ids are like this (the
/// once-per key, `unique_id` and `MarketsyncKey` of every event): each render through the VM
/// creates a state, as expressions do (see [`Lookup`]); the gain is counted with [`Direct`]'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpolation {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Value(Lookup),
}

impl Interpolation {
    /// The interpolation `source` (a template's text) is, if it is one. Anything else (blocks,
    /// comments, whitespace control, filters, a trailing newline the VM would drop) is not.
    pub fn parse(source: &str) -> Option<Interpolation> {
        if source.contains("{%") || source.contains("{#") || source.ends_with('\n') {
            return None;
        }
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(start) = rest.find("{{") {
            let (text, tail) = rest.split_at(start);
            let end = tail.find("}}")?;
            let inner = &tail[2..end];
            if inner.starts_with('-') || inner.ends_with('-') {
                return None;
            }
            push_text(&mut parts, text)?;
            parts.push(Part::Value(Lookup::parse(inner)?));
            rest = &tail[end + 2..];
        }
        push_text(&mut parts, rest)?;
        Some(Interpolation { parts })
    }

    /// The text, as the VM writes it (`none` and undefined as nothing, see the environment's
    /// formatter). `None` when `ctx` lacks a name, which leaves it to the VM.
    fn render(&self, ctx: &Value) -> Option<String> {
        use std::fmt::Write;
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Value(lookup) => {
                    let value = lookup.read(ctx)?;
                    if !value.is_none() {
                        write!(out, "{value}").ok()?;
                    }
                }
            }
        }
        Some(out)
    }
}

/// Text between expressions; `}}` outside an expression is left to the VM.
fn push_text(parts: &mut Vec<Part>, text: &str) -> Option<()> {
    if text.contains("}}") {
        return None;
    }
    if !text.is_empty() {
        parts.push(Part::Text(text.to_owned()));
    }
    Some(())
}

/// A compiled template and, when it is only text and lookups, its VM-free reading.
pub struct Text<'env> {
    template: Template<'env, 'env>,
    interpolation: Option<Interpolation>,
}

impl<'env> Text<'env> {
    pub fn new(template: Template<'env, 'env>) -> Text<'env> {
        let interpolation = Interpolation::parse(template.source());
        Text {
            template,
            interpolation,
        }
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        self.template.source()
    }

    pub fn render(&self, ctx: &Value) -> Result<String, minijinja::Error> {
        match self.interpolation.as_ref().and_then(|i| i.render(ctx)) {
            Some(text) => Ok(text),
            None => self.template.render(ctx),
        }
    }
}

/// An expression read without minijinja's VM: a lookup, or a lookup through one of our own
/// filters with lookups for arguments (`line.totalCents | money(currency)`,
/// `order_id | string`). Of the 27 leaves of placed-order and ordered-product, 8 are like
/// this, 3 of them inside Placed Order's Items (once per line of the order). With
/// [`Interpolation`], reading them without the VM took a one-job dry run's instructions (past
/// start-up, callgrind) down 7% on the default order shape and 8% on the rich one
/// (docs/performance.md, issue 18).
#[derive(Debug, Clone)]
pub struct Direct {
    value: Lookup,
    filter: Option<(filters::Direct, Vec<Lookup>)>,
}

impl Direct {
    /// The direct reading of `expression` (the text between the braces), if it has one.
    pub fn parse(expression: &str) -> Option<Direct> {
        let (value, filter) = match expression.split_once('|') {
            None => (expression, None),
            Some((value, call)) => (value, Some(call.trim())),
        };
        let value = Lookup::parse(value)?;
        let Some(call) = filter else {
            return Some(Direct {
                value,
                filter: None,
            });
        };
        let (name, args) = match call.split_once('(') {
            None => (call, Vec::new()),
            Some((name, args)) => {
                let args = args.strip_suffix(')')?;
                let args = if args.trim().is_empty() {
                    Vec::new()
                } else {
                    args.split(',').map(Lookup::parse).collect::<Option<_>>()?
                };
                (name.trim(), args)
            }
        };
        let filter = filters::direct(name, args.len())?;
        Some(Direct {
            value,
            filter: Some((filter, args)),
        })
    }

    /// The value, as the VM gives it; `None` leaves the expression to the VM: when `ctx`
    /// lacks a name, an argument is not text, or the filter fails (so that the VM reports
    /// the failure in its own words).
    fn read(&self, ctx: &Value) -> Option<Value> {
        let value = self.value.read(ctx)?;
        let Some((filter, args)) = &self.filter else {
            return Some(value);
        };
        let args: Vec<Value> = args
            .iter()
            .map(|arg| arg.read(ctx))
            .collect::<Option<_>>()?;
        let args: Vec<&str> = args.iter().map(Value::as_str).collect::<Option<_>>()?;
        filter(value, &args).ok()
    }
}

/// Evaluates an expression, directly when it can be.
pub(super) fn eval(
    expr: &Expression<'_, '_>,
    direct: Option<&Direct>,
    ctx: &Value,
) -> Result<Value, minijinja::Error> {
    match direct.and_then(|direct| direct.read(ctx)) {
        Some(value) => Ok(value),
        None => expr.eval(ctx.clone()),
    }
}

/// A failure while rendering, with the JSON pointer of the leaf that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderError {
    pub pointer: String,
    pub message: String,
}

impl RenderError {
    fn at(mut self, segment: &str) -> Self {
        let escaped = segment.replace('~', "~0").replace('/', "~1");
        self.pointer = format!("/{escaped}{}", self.pointer);
        self
    }
}

pub(crate) fn describe(err: &minijinja::Error) -> String {
    let mut message = match err.detail() {
        Some(detail) => format!("{}: {detail}", err.kind()),
        None => err.kind().to_string(),
    };
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

fn failed(err: minijinja::Error) -> RenderError {
    RenderError {
        pointer: String::new(),
        message: describe(&err),
    }
}

/// Whether a value counts as "nothing" and is left out of the payload.
pub fn is_empty(value: &Value) -> bool {
    value.is_undefined() || value.is_none() || value.as_str() == Some("")
}

/// Converts a template value to JSON. Undefined values inside lists and objects become null.
pub fn to_json(value: &Value) -> Result<Json, RenderError> {
    serde_json::to_value(value).map_err(|e| RenderError {
        pointer: String::new(),
        message: format!("value cannot be written as JSON: {e}"),
    })
}

impl Node<'_> {
    /// Renders the node in `ctx`; `None` means "leave this out". `watch` hears what each leaf
    /// gave (`()` for a plain render).
    pub fn render_watched<W: Watch>(
        &self,
        ctx: &Value,
        watch: &mut W,
    ) -> Result<Option<Json>, RenderError> {
        match self {
            Node::Literal(json) => {
                watch.leaf(self, Some(json));
                Ok(Some(json.clone()))
            }
            Node::Expression { expr, direct, .. } => {
                let value = eval(expr, direct.as_ref(), ctx)
                    .map_err(|e| watch.leaf_failed(self, failed(e)))?;
                if is_empty(&value) {
                    watch.leaf(self, None);
                    return Ok(None);
                }
                let json = to_json(&value).map_err(|e| watch.leaf_failed(self, e))?;
                watch.leaf(self, Some(&json));
                Ok(Some(json))
            }
            Node::Template { template, .. } => {
                let text = template
                    .render(ctx)
                    .map_err(|e| watch.leaf_failed(self, failed(e)))?;
                let json = (!text.is_empty()).then_some(Json::String(text));
                watch.leaf(self, json.as_ref());
                Ok(json)
            }
            Node::List(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    watch.enter(Segment::Index(out.len()));
                    let rendered = item
                        .render_watched(ctx, watch)
                        .map_err(|e| e.at(&i.to_string()))?;
                    watch.leave();
                    if let Some(json) = rendered {
                        out.push(json);
                    }
                }
                let out = Json::Array(out);
                if items.is_empty() {
                    watch.leaf(self, Some(&out));
                }
                Ok(Some(out))
            }
            Node::Map(entries) => {
                let mut out = serde_json::Map::with_capacity(entries.len());
                for (key, node) in entries {
                    watch.enter(Segment::Key(key));
                    let rendered = node.render_watched(ctx, watch).map_err(|e| e.at(key))?;
                    watch.leave();
                    if let Some(json) = rendered {
                        out.insert(key.clone(), json);
                    }
                }
                if out.is_empty() && !entries.is_empty() {
                    return Ok(None);
                }
                let out = Json::Object(out);
                if entries.is_empty() {
                    watch.leaf(self, Some(&out));
                }
                Ok(Some(out))
            }
            Node::For {
                var,
                items,
                items_direct,
                element,
                ..
            } => {
                let list = eval(items, items_direct.as_ref(), ctx)
                    .map_err(|e| watch.leaf_failed(self, failed(e)))?;
                if is_empty(&list) {
                    let out = Json::Array(Vec::new());
                    watch.leaf(self, Some(&out));
                    return Ok(Some(out));
                }
                let iter = list
                    .try_iter()
                    .map_err(|e| watch.leaf_failed(self, failed(e)))?;
                let mut out = Vec::new();
                watch.enter_for(self);
                for (i, item) in iter.enumerate() {
                    let scope = super::scope::bind(ctx, var, item);
                    watch.enter(Segment::Index(out.len()));
                    let rendered = element
                        .render_watched(&scope, watch)
                        .map_err(|e| e.at(&i.to_string()))?;
                    watch.leave();
                    if let Some(json) = rendered {
                        out.push(json);
                    }
                }
                watch.leave_for();
                let out = Json::Array(out);
                if out.as_array().is_some_and(Vec::is_empty) {
                    watch.leaf(self, Some(&out));
                }
                Ok(Some(out))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Direct, Interpolation, Lookup, Text, describe, eval};
    use minijinja::{Environment, UndefinedBehavior};

    /// An environment set up as `compile::environment` sets one up, where it matters here:
    /// chainable undefined, `none` written as nothing, and our filters.
    fn environment() -> Environment<'static> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.set_formatter(|out, state, value| {
            if value.is_none() {
                return Ok(());
            }
            minijinja::escape_formatter(out, state, value)
        });
        crate::engine::filters::register(&mut env, "AU");
        env
    }

    /// A record as templates see it: through views (src/engine/view.rs).
    fn context() -> minijinja::value::Value {
        let record = std::sync::Arc::new(serde_json::json!({
            "line": {"totalCents": 3990, "legacyId": 9001, "name": null, "n": 3, "price": 39.9,
                     "tags": ["a", "b"], "title": "Tee — \"XL\" 🐶", "bad": "12x"},
            "currency": "AUD", "yen": "JPY", "nonsense": "XYZ", "number": 7,
            "created": "2026-03-14T10:15:30+11:00", "email": " Zoe@Example.COM ",
            "marketplace": "petmarket", "order_id": 5001,
        }));
        crate::engine::view::value_in(&record, &record)
    }

    #[test]
    fn a_direct_filter_gives_what_the_vm_gives() {
        let env = environment();
        let ctx = context();
        for text in [
            "line.totalCents | money(currency)",
            "line.totalCents | money",
            "line.totalCents | money(yen)",
            "line.totalCents|money( currency )",
            "line.legacyId | string",
            "line.title | string",
            "line.name | string",
            "line.missing | string",
            "created | iso8601",
            "email | email",
            "line.name | email",
            // Left to the VM: an argument that is not text, or missing; a failing filter.
            "line.totalCents | money(number)",
            "line.totalCents | money(missing)",
            "line.totalCents | money(nonsense)",
            "line.bad | money(currency)",
            "line.title | iso8601",
            "missing | string",
        ] {
            let expr = env.compile_expression(text).unwrap();
            let direct = Direct::parse(text).unwrap_or_else(|| panic!("{text} is direct"));
            match (eval(&expr, Some(&direct), &ctx), expr.eval(ctx.clone())) {
                (Ok(direct), Ok(by_vm)) => {
                    assert_eq!(format!("{direct:?}"), format!("{by_vm:?}"), "{text}");
                }
                (Err(direct), Err(by_vm)) => assert_eq!(describe(&direct), describe(&by_vm)),
                (direct, by_vm) => panic!("{text}: {direct:?} but the VM gives {by_vm:?}"),
            }
        }
    }

    #[test]
    fn only_our_filters_on_lookups_are_direct() {
        for text in [
            "a | upper",
            "a | money(currency, 2)",
            "a | string(x)",
            "a | money('AUD')",
            "a | unique | list",
            "a | e164",
            "a.b | money(c.d",
            "f(a) | string",
        ] {
            assert!(Direct::parse(text).is_none(), "{text}");
        }
    }

    #[test]
    fn an_interpolation_writes_what_the_vm_writes() {
        let env = environment();
        let ctx = context();
        for source in [
            "{{ marketplace }}:placed-order:{{ order_id }}",
            "{{marketplace}}{{ order_id }}",
            "{{ marketplace }}:{{ order_id }}:{{ line.legacyId }}",
            "x {{ line.name }} y",
            "{{ line.missing }}-{{ line.missing.deeper }}",
            "{{ line.price }} {{ line.n }} {{ line.tags }} {{ line.title }}",
            "{{ line }}",
            "no names at all",
            "",
            "{{ missing }}",
        ] {
            let text = Text::new(env.template_from_str(source).unwrap());
            assert!(Interpolation::parse(source).is_some(), "{source:?}");
            let by_vm = env.template_from_str(source).unwrap().render(&ctx).unwrap();
            assert_eq!(text.render(&ctx).unwrap(), by_vm, "{source:?}");
        }
        for source in [
            "{{ a | upper }}",
            "{% if a %}x{% endif %}",
            "{{- a }}",
            "{{ a -}}",
            "{{ a }}\n",
            "{# note #}{{ a }}",
            "a }} b",
            "{{ a }",
            "{{ 'x' }}",
        ] {
            assert!(Interpolation::parse(source).is_none(), "{source:?}");
        }
    }

    #[test]
    fn a_lookup_reads_what_the_vm_reads() {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.add_global("shop", "a global");
        // The record as templates see it: through views (src/engine/view.rs).
        let record = std::sync::Arc::new(serde_json::json!({
            "line": {"image": {"url": "https://x/1.jpg"}, "name": null, "title": "Tee", "n": 3,
                     "tags": ["a", "b"]},
            "empty": "",
        }));
        let ctx = crate::engine::view::value_in(&record, &record);
        for text in [
            "line",
            "line.title",
            "line.image.url",
            "line.n",
            "line.tags",
            "line.name",
            "line.name.first",
            "line.title.length",
            "line.tags.first",
            "line.missing.deeper",
            "empty",
            "missing",
            "missing.deeper",
            "shop",
        ] {
            let expr = env.compile_expression(text).unwrap();
            let lookup = Direct::parse(text).unwrap_or_else(|| panic!("{text} is a lookup"));
            let by_vm = expr.eval(ctx.clone()).unwrap();
            let direct = eval(&expr, Some(&lookup), &ctx).unwrap();
            assert_eq!(format!("{direct:?}"), format!("{by_vm:?}"), "{text}");
            assert_eq!(direct.is_undefined(), by_vm.is_undefined(), "{text}");
        }
    }

    #[test]
    fn only_names_and_attributes_are_lookups() {
        for text in ["a", "line.image.url", " _x.b2 "] {
            assert!(Lookup::parse(text).is_some(), "{text}");
        }
        for text in [
            "",
            "none",
            "true",
            "False",
            "a | upper",
            "a[0]",
            "a.0",
            "a()",
            "'x'",
            "a ~ b",
            "1",
            "a..b",
            "a.",
            "a.b c",
            "é",
        ] {
            assert_eq!(Lookup::parse(text), None, "{text}");
        }
    }
}
