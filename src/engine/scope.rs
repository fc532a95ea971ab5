//! Template contexts that grow by one name without copying the names already bound.
//!
//! Fan-out and `$for` bind one variable per element; cloning the whole context (every
//! selection of an order) for each of them would make rendering cost grow with order size.

use minijinja::value::{Object, Value};
use std::sync::Arc;

#[derive(Debug)]
struct Scope {
    name: String,
    value: Value,
    parent: Value,
}

impl Object for Scope {
    // A context is looked up by name only (its root map holds text keys).
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.get_value_by_str(key.as_str()?)
    }

    // Names come by text (the VM's loads, direct lookups): each scope passes the text on,
    // where the default would make a template value of it at every one.
    fn get_value_by_str(self: &Arc<Self>, key: &str) -> Option<Value> {
        if key == self.name {
            return Some(self.value.clone());
        }
        self.parent.get_attr(key).ok().filter(|v| !v.is_undefined())
    }
}

/// `parent` with `name` bound to `value`.
pub fn bind(parent: &Value, name: &str, value: Value) -> Value {
    Value::from_object(Scope {
        name: name.to_owned(),
        value,
        parent: parent.clone(),
    })
}
