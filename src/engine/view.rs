//! A record's JSON shown to templates as it is, without copying it into template values.
//!
//! Converting a selection to a minijinja value copies the whole subtree: an order's line items
//! were copied once per mapping that read them, and then again for the template. A view is a
//! pointer into the record's (shared, immutable) JSON that answers attribute and index lookups
//! as a template makes them, so only what a template actually reads is ever converted. On the
//! benchmark's deliveries this took a one-thread dry run from 2.10 to 1.84 s of CPU per 100 MB
//! (docs/performance.md), which is why the unsafe pointer below is worth its comment.

use minijinja::value::{Enumerator, Object, ObjectRepr, Value};
use serde_json::Value as Json;
use std::ptr::NonNull;
use std::sync::Arc;

/// A node inside a record's JSON.
#[derive(Debug)]
struct JsonView {
    /// Keeps the node alive.
    root: Arc<Json>,
    node: NonNull<Json>,
}

// SAFETY: `node` points into `root`, which the view owns a share of, and a record's JSON is
// never mutated once parsed (it is only ever reachable through `Arc<Json>`, which hands out
// shared references only). So the pointer is valid as long as the view lives, and sharing it
// across threads is sharing a `&Json`, which is `Send + Sync`.
unsafe impl Send for JsonView {}
unsafe impl Sync for JsonView {}

impl JsonView {
    fn node(&self) -> &Json {
        // SAFETY: see the `Send`/`Sync` note: the node lives inside `self.root`.
        unsafe { self.node.as_ref() }
    }
}

/// The template value of `node`, which must lie inside `root`: scalars are converted (they are
/// small), lists and maps become views.
///
/// # Panics
/// In debug builds, if `node` is not inside `root` (a caller's mistake).
pub(crate) fn value_in(root: &Arc<Json>, node: &Json) -> Value {
    match node {
        Json::Null => Value::from(()),
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => number(n),
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(_) | Json::Object(_) => Value::from_object(JsonView {
            root: Arc::clone(root),
            node: NonNull::from(node),
        }),
    }
}

/// A JSON number as minijinja's `Serde` conversion would give it.
fn number(n: &serde_json::Number) -> Value {
    if let Some(i) = n.as_i64() {
        Value::from(i)
    } else if let Some(u) = n.as_u64() {
        Value::from(u)
    } else {
        Value::from(n.as_f64().unwrap_or(f64::NAN))
    }
}

impl Object for JsonView {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        match self.node() {
            Json::Array(_) => ObjectRepr::Seq,
            _ => ObjectRepr::Map,
        }
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let child = match self.node() {
            Json::Object(map) => map.get(key.as_str()?)?,
            Json::Array(items) => items.get(key.as_usize()?)?,
            _ => return None,
        };
        Some(value_in(&self.root, child))
    }

    // Attribute reads (`line.image.url`, and every name the VM loads) come by text; the
    // default would make a template value of the key only to read it back as text.
    fn get_value_by_str(self: &Arc<Self>, key: &str) -> Option<Value> {
        match self.node() {
            Json::Object(map) => Some(value_in(&self.root, map.get(key)?)),
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        match self.node() {
            Json::Array(items) => Enumerator::Seq(items.len()),
            Json::Object(map) => {
                Enumerator::Values(map.keys().map(|k| Value::from(k.as_str())).collect())
            }
            _ => Enumerator::Empty,
        }
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        match self.node() {
            Json::Array(items) => Some(items.len()),
            Json::Object(map) => Some(map.len()),
            _ => Some(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::{Environment, context};

    fn render(template: &str, json: Json) -> String {
        let root = Arc::new(json);
        let value = value_in(&root, &root);
        let env = Environment::new();
        env.render_str(template, context! { x => value }).unwrap()
    }

    #[test]
    fn a_view_reads_like_the_converted_value() {
        let json = serde_json::json!({
            "lines": [{"q": 2, "name": "Zoë", "tags": ["a", "b"]}, {"q": 3, "name": null}],
            "total": 12.5, "big": 18446744073709551615u64, "ok": true
        });
        let template = "{{ x.lines | map(attribute='q') | sum }} {{ x.lines[0].name }} \
            {{ x.lines[1].name is none }} {{ x.lines | length }} {{ x.total }} {{ x.big }} \
            {{ x.ok }} {{ x.lines[0].tags | join(',') }} {{ x.lines[0] | tojson }} \
            {{ x | list | sort | join(',') }} {{ x.missing is undefined }}";
        let converted = {
            let env = Environment::new();
            env.render_str(
                template,
                context! { x => Value::from(minijinja::value::Serde(&json)) },
            )
            .unwrap()
        };
        assert_eq!(render(template, json), converted);
    }
}
