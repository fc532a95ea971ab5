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
        /// The items expression as written.
        source: String,
        reads: Vec<String>,
        element: Box<Node<'env>>,
    },
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
            Node::Expression { expr, .. } => {
                let value = expr
                    .eval(ctx.clone())
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
                element,
                ..
            } => {
                let list = items
                    .eval(ctx.clone())
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
