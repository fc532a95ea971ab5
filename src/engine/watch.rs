//! Hooks the engine calls while it applies a mapping, so that `explain` can follow the very
//! code that `map` runs.
//!
//! Every method does nothing by default, and `map` watches with `()`: the calls compile away,
//! so mapping stays as fast as it was. [`super::explain`] records them instead.

use super::body::{Node, RenderError};
use super::select::{Found, Picked, SelectError};
use crate::klaviyo::Request;
use minijinja::value::Value;
use serde_json::Value as Json;

/// One step down a body: an object key, or a position in the list as sent.
#[derive(Debug, Clone, Copy)]
pub enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

pub trait Watch {
    /// Selection `index` picked `value`, and how.
    fn selected(&mut self, _index: usize, _found: &Found<'_>, _how: Picked) {}
    /// Selection `index` failed (the mapping stops here).
    fn select_failed(&mut self, _index: usize, _error: &SelectError) {}
    /// Computed value `index` is `value`; `before` is the context it was evaluated in.
    fn computed(&mut self, _index: usize, _value: &Value, _before: &Value) {}
    /// `when` gave `holds`.
    fn when(&mut self, _holds: bool) {}
    /// A `require`d name was checked.
    fn required(&mut self, _name: &str, _empty: bool) {}
    /// `for` gave this many items.
    fn fanned_out(&mut self, _items: usize) {}
    /// A request starts rendering in `ctx` (the fan-out item bound, if any).
    fn request_started(&mut self, _ctx: &Value) {}
    /// The body rendered (before the schema check).
    fn body_rendered(&mut self, _body: &Json) {}
    /// The request passed the schema check and was produced.
    fn request_done(&mut self, _request: &Request) {}

    /// Rendering goes into a child of the current body node.
    fn enter(&mut self, _segment: Segment<'_>) {}
    /// Rendering comes back from the child entered last.
    fn leave(&mut self) {}
    /// A `$for` node binds its variable for the nodes below it.
    fn enter_for(&mut self, _node: &Node<'_>) {}
    fn leave_for(&mut self) {}
    /// A leaf (literal, expression or template; or a list or object that is empty as written,
    /// or a `$for` over no items) gave `value`; `None` means left out as empty.
    fn leaf(&mut self, _node: &Node<'_>, _value: Option<&Json>) {}
    /// A leaf (or a `$for`'s items) failed to render: the mapping stops with `error`.
    fn leaf_failed(&mut self, _node: &Node<'_>, error: RenderError) -> RenderError {
        error
    }
}

/// What `map` watches with: nothing.
impl Watch for () {}
