//! Request bodies, compiled: a tree whose leaves are literals, expressions or templates.
//!
//! The rule that matters: a string leaf that is exactly one `{{ expression }}` keeps the native
//! type of its value (number, list, object, bool), so no payload is ever built by pasting JSON
//! text into a string. A leaf that renders to nothing (`none`, undefined or an empty string) is
//! left out of its object, and an object left empty by that goes too: Klaviyo clears a profile
//! field that is sent as null, so "unknown" must mean "not sent".

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
        /// Set when the expression is only a name and attributes: then it is read directly.
        lookup: Option<Lookup>,
        /// The leaf as written, `{{ ... }}` included.
        source: String,
        reads: Vec<String>,
    },
    Template {
        template: Template<'env, 'env>,
        reads: Vec<String>,
    },
    List(Vec<Node<'env>>),
    Map(Vec<(String, Node<'env>)>),
    /// `$for: NAME in EXPRESSION` with `$yield: NODE`: one element per item, in order.
    For {
        var: String,
        items: Expression<'env, 'static>,
        items_lookup: Option<Lookup>,
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

/// Evaluates an expression, directly when it is a lookup.
fn eval(
    expr: &Expression<'_, '_>,
    lookup: Option<&Lookup>,
    ctx: &Value,
) -> Result<Value, minijinja::Error> {
    match lookup.and_then(|lookup| lookup.read(ctx)) {
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
            Node::Expression { expr, lookup, .. } => {
                let value = eval(expr, lookup.as_ref(), ctx)
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
                items_lookup,
                element,
                ..
            } => {
                let list = eval(items, items_lookup.as_ref(), ctx)
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
    use super::{Lookup, eval};
    use minijinja::{Environment, UndefinedBehavior};

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
            let lookup = Lookup::parse(text).unwrap_or_else(|| panic!("{text} is a lookup"));
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
