//! Request bodies, compiled: a tree whose leaves are literals, expressions or templates.
//!
//! The rule that matters: a string leaf that is exactly one `{{ expression }}` keeps the native
//! type of its value (number, list, object, bool), so no payload is ever built by pasting JSON
//! text into a string. A leaf that renders to nothing (`none`, undefined or an empty string) is
//! left out of its object, and an object left empty by that goes too: Klaviyo clears a profile
//! field that is sent as null, so "unknown" must mean "not sent".

use minijinja::value::Value;
use minijinja::{Expression, Template};
use serde_json::Value as Json;

/// One node of a compiled body.
pub enum Node<'env> {
    Literal(Json),
    Expression(Expression<'env, 'static>),
    Template(Template<'env, 'env>),
    List(Vec<Node<'env>>),
    Map(Vec<(String, Node<'env>)>),
    /// `$for: NAME in EXPRESSION` with `$yield: NODE`: one element per item, in order.
    For {
        var: String,
        items: Expression<'env, 'static>,
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
    /// Renders the node in `ctx`; `None` means "leave this out".
    pub fn render(&self, ctx: &Value) -> Result<Option<Json>, RenderError> {
        match self {
            Node::Literal(json) => Ok(Some(json.clone())),
            Node::Expression(expr) => {
                let value = expr.eval(ctx.clone()).map_err(failed)?;
                if is_empty(&value) {
                    return Ok(None);
                }
                to_json(&value).map(Some)
            }
            Node::Template(template) => {
                let text = template.render(ctx).map_err(failed)?;
                Ok((!text.is_empty()).then_some(Json::String(text)))
            }
            Node::List(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    if let Some(json) = item.render(ctx).map_err(|e| e.at(&i.to_string()))? {
                        out.push(json);
                    }
                }
                Ok(Some(Json::Array(out)))
            }
            Node::Map(entries) => {
                let mut out = serde_json::Map::with_capacity(entries.len());
                for (key, node) in entries {
                    if let Some(json) = node.render(ctx).map_err(|e| e.at(key))? {
                        out.insert(key.clone(), json);
                    }
                }
                if out.is_empty() && !entries.is_empty() {
                    return Ok(None);
                }
                Ok(Some(Json::Object(out)))
            }
            Node::For {
                var,
                items,
                element,
            } => {
                let list = items.eval(ctx.clone()).map_err(failed)?;
                if is_empty(&list) {
                    return Ok(Some(Json::Array(Vec::new())));
                }
                let iter = list.try_iter().map_err(failed)?;
                let mut out = Vec::new();
                for (i, item) in iter.enumerate() {
                    let scope = super::scope::bind(ctx, var, item);
                    if let Some(json) = element.render(&scope).map_err(|e| e.at(&i.to_string()))? {
                        out.push(json);
                    }
                }
                Ok(Some(Json::Array(out)))
            }
        }
    }
}
