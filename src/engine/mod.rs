//! The mapping engine: compiled mappings applied to records.
//!
//! A mapping set is compiled once (paths parsed, templates and expressions compiled, names
//! checked, validators built) before the first record is touched. [`Engine::map`] is then pure:
//! the same record gives the same requests, with no I/O and no clock, which is what makes dry
//! runs, snapshots, backfills and retries agree with each other.
//!
//! Per mapping, a record goes through: match (type, event, conditions) → select (JSONPath) →
//! compute (expressions) → when/require → fan-out → render (body, once-per key) → validate
//! (Klaviyo's schema). A failure stops that mapping for that record only, with an error that
//! names the mapping and the field; the record's other mappings still run.

mod body;
mod callables;
mod compile;
pub mod explain;
pub mod filters;
mod scope;
pub mod select;
mod view;
mod watch;

use crate::diagnostic::Diagnostics;
use crate::klaviyo::{Coalesce, Endpoint, Request, Schemas, WaitsFor};
use crate::source::Record;
use crate::spec::{Lane, MappingSet, Settings};
use body::{Node, Text};
use minijinja::value::Value;
use minijinja::{Environment, Expression};
use select::{Condition, Found, SelectError, Selection};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use watch::Watch;

pub use explain::Explanation;

/// Names every template can read, besides selections and computed values.
pub const CONTEXT_NAMES: &[&str] = &[
    "settings",
    "marketplace",
    "currency",
    "event",
    "delivery",
    "type",
];

self_cell::self_cell!(
    /// The template environment and the mappings whose expressions borrow it.
    struct Compiled {
        owner: Environment<'static>,
        #[covariant]
        dependent: Mappings,
    }
);

type Mappings<'env> = Vec<Mapping<'env>>;

/// One mapping, compiled.
pub(crate) struct Mapping<'env> {
    name: Arc<str>,
    lane: Lane,
    endpoint: Endpoint,
    types: Vec<String>,
    events: Vec<String>,
    conditions: Vec<Condition>,
    selections: Vec<Selection>,
    compute: Vec<(String, Expr<'env>)>,
    when: Option<Expr<'env>>,
    require: Vec<String>,
    for_each: Option<(String, Expr<'env>)>,
    once_per: Option<Text<'env>>,
    waits_for: Option<(Arc<str>, Text<'env>)>,
    coalesce: Option<(Text<'env>, Text<'env>)>,
    body: Node<'env>,
}

/// A compiled expression, with its text and the top-level names it reads (for `explain`).
pub(crate) struct Expr<'env> {
    expr: Expression<'env, 'static>,
    /// Set when it can be read without the VM (`email | email`).
    direct: Option<body::Direct>,
    source: String,
    reads: Vec<String>,
}

/// A compiled mapping set, ready to map records.
pub struct Engine {
    compiled: Compiled,
    settings: Arc<Settings>,
    settings_value: Value,
    default_marketplace: String,
    schemas: &'static Schemas,
    /// What the webhook queries select that no mapping reads (`validate --verbose`).
    unread_query_fields: Vec<crate::queries::Unread>,
    /// The webhook queries the mappings were checked against: what a record of each type
    /// holds, and so what a reconciliation must read to build the same records.
    queries: Arc<crate::queries::QuerySet>,
}

/// What one record gave.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Mapped {
    pub requests: Vec<Request>,
    /// Problems that did not stop the mapping (a phone left out, say).
    pub warnings: Vec<String>,
    /// Mappings that failed for this record, each with its reason.
    pub errors: Vec<MappingError>,
    /// Whether any mapping reads this record's type and event; if none does, it was skipped.
    pub matched: bool,
    /// Requests not built because their once-per key was already sent (see
    /// [`Engine::map_unsent`]): the run would have dropped them.
    pub already_sent: usize,
}

/// Whether a mapping's request with this once-per key was already sent: `(mapping, key)`.
pub type Sent<'a> = &'a (dyn Fn(&str, &str) -> bool + 'a);

/// A mapping that could not produce its requests for a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mapping `{mapping}`: {message}")]
pub struct MappingError {
    pub mapping: Arc<str>,
    pub kind: MappingErrorKind,
    pub message: String,
}

/// Why a mapping failed, for summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MappingErrorKind {
    /// A required selection or value was missing.
    Missing,
    /// An expression or template failed (bad data for a filter, out of fuel).
    Render,
    /// The body does not pass Klaviyo's schema.
    Schema,
}

impl MappingErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MappingErrorKind::Missing => "missing-field",
            MappingErrorKind::Render => "render-error",
            MappingErrorKind::Schema => "schema-violation",
        }
    }
}

impl Engine {
    /// Compiles a loaded mapping set. Errors are every problem found; on success the
    /// diagnostics hold the warnings.
    pub fn compile(set: MappingSet) -> Result<(Engine, Diagnostics), Diagnostics> {
        compile::compile(set)
    }

    /// Loads and compiles the mapping set in `dir`.
    pub fn load_dir(dir: &Path) -> Result<(Engine, Diagnostics), Diagnostics> {
        Engine::compile(crate::spec::load_dir(dir))
    }

    /// Loads and compiles a client's mappings: the base set (`base`, or the built-in defaults)
    /// with the client folder's settings and overlays applied.
    pub fn load_client(
        base: Option<&Path>,
        client: &Path,
    ) -> Result<(Engine, Diagnostics), Diagnostics> {
        Engine::compile(crate::spec::load_client(base, client))
    }

    /// Loads and compiles the default mapping set built into the binary.
    pub fn builtin() -> Result<(Engine, Diagnostics), Diagnostics> {
        Engine::compile(crate::spec::load_embedded())
    }

    /// The marketplace used for records whose delivery names none (`--marketplace`).
    pub fn with_default_marketplace(mut self, marketplace: impl Into<String>) -> Engine {
        self.default_marketplace = marketplace.into();
        self
    }

    /// The marketplace a record belongs to: the one its delivery names, else the default.
    pub fn marketplace_of<'r>(&'r self, record: &'r Record) -> &'r str {
        record
            .marketplace
            .as_deref()
            .unwrap_or(&self.default_marketplace)
    }

    /// The currency of a record's amounts: the one its delivery names, else its marketplace's.
    pub fn currency_of<'r>(&'r self, record: &'r Record) -> &'r str {
        record
            .currency
            .as_deref()
            .unwrap_or_else(|| self.settings.currency_of(self.marketplace_of(record)))
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Fields the webhook queries select that no mapping's path reads: each costs
    /// Marketplacer work on every event.
    pub fn unread_query_fields(&self) -> &[crate::queries::Unread] {
        &self.unread_query_fields
    }

    /// The webhook queries (a client's merged in) the mappings were checked against.
    pub fn queries(&self) -> &crate::queries::QuerySet {
        &self.queries
    }

    /// Mapping names in load order.
    pub fn mapping_names(&self) -> Vec<Arc<str>> {
        self.compiled
            .borrow_dependent()
            .iter()
            .map(|m| Arc::clone(&m.name))
            .collect()
    }

    /// Each mapping with the lane and the Klaviyo endpoint its requests go to, in load order.
    pub fn mapping_targets(&self) -> Vec<(Arc<str>, Lane, Endpoint)> {
        self.compiled
            .borrow_dependent()
            .iter()
            .map(|m| (Arc::clone(&m.name), m.lane, m.endpoint))
            .collect()
    }

    /// What every mapping of `record` may read besides its own selections.
    fn globals<'a>(
        &'a self,
        record: &'a Record,
        source: &'a Arc<str>,
        sent: Sent<'a>,
    ) -> Globals<'a> {
        Globals {
            settings: &self.settings_value,
            marketplace: self.marketplace_of(record),
            currency: self.currency_of(record),
            record,
            source,
            sent,
        }
    }

    /// Applies every mapping to `record`.
    pub fn map(&self, record: &Record) -> Mapped {
        self.map_unsent(record, &|_, _| false)
    }

    /// Applies every mapping to `record`, but builds no request whose once-per key `sent`
    /// says was already sent: those are only counted (`Mapped::already_sent`), and so are not
    /// checked either. A Placed Order is built from whichever of its order's invoices comes
    /// first, yet every invoice carries the whole order: with 2 to 3 sellers an order, most
    /// Placed Orders built (with all the order's lines) were thrown away. Not building them
    /// took a one-job dry run's instructions (past start-up, callgrind) down 15% on the
    /// default order shape and 18% on the rich one (docs/performance.md, issue 18).
    pub fn map_unsent(&self, record: &Record, sent: Sent<'_>) -> Mapped {
        let mut mapped = Mapped::default();
        let source: Arc<str> = record.delivery_id.as_str().into();
        let globals = self.globals(record, &source, sent);
        for mapping in self.compiled.borrow_dependent() {
            if !mapping.reads(record) {
                continue;
            }
            mapped.matched = true;
            if !mapping.conditions.iter().all(|c| c.holds(&record.node)) {
                continue;
            }
            let (result, warnings) =
                filters::collect_warnings(|| mapping.apply(&globals, self.schemas));
            mapped.warnings.extend(
                warnings
                    .into_iter()
                    .map(|w| format!("mapping `{}`: {w}", mapping.name)),
            );
            match result {
                Ok((requests, already_sent)) => {
                    mapped.requests.extend(requests);
                    mapped.already_sent += already_sent;
                }
                Err(error) => mapped.errors.push(error),
            }
        }
        mapped
    }
}

/// What a record's mappings share.
struct Globals<'a> {
    settings: &'a Value,
    marketplace: &'a str,
    currency: &'a str,
    record: &'a Record,
    source: &'a Arc<str>,
    sent: Sent<'a>,
}

impl Mapping<'_> {
    fn reads(&self, record: &Record) -> bool {
        self.types.contains(&record.typename)
            && (self.events.is_empty() || self.events.contains(&record.event))
    }

    fn error(&self, kind: MappingErrorKind, message: String) -> MappingError {
        MappingError {
            mapping: Arc::clone(&self.name),
            kind,
            message,
        }
    }

    fn render_error(&self, what: &str, err: &minijinja::Error) -> MappingError {
        self.error(
            MappingErrorKind::Render,
            format!("{what}: {}", body::describe(err)),
        )
    }

    /// Everything after the match: select, compute, conditions, fan-out, render, validate.
    fn apply(
        &self,
        globals: &Globals<'_>,
        schemas: &Schemas,
    ) -> Result<(Vec<Request>, usize), MappingError> {
        self.apply_watched(globals, schemas, &mut ())
    }

    /// [`Mapping::apply`], telling `watch` what each step gave: the requests, and how many
    /// were not built because `globals.sent` says their key was already sent.
    fn apply_watched<W: Watch>(
        &self,
        globals: &Globals<'_>,
        schemas: &Schemas,
        watch: &mut W,
    ) -> Result<(Vec<Request>, usize), MappingError> {
        let record = globals.record;
        let mut context: BTreeMap<String, Value> = BTreeMap::new();
        context.insert("settings".into(), globals.settings.clone());
        context.insert("marketplace".into(), Value::from(globals.marketplace));
        context.insert("currency".into(), Value::from(globals.currency));
        context.insert("event".into(), Value::from(record.event.as_str()));
        context.insert("delivery".into(), Value::from(record.delivery_id.as_str()));
        context.insert("type".into(), Value::from(record.typename.as_str()));

        // Selections borrow from the record, and templates see views into it (see `view`):
        // nothing is copied that a template does not read.
        let mut picked: Vec<Found<'_>> = Vec::with_capacity(self.selections.len());
        for (index, selection) in self.selections.iter().enumerate() {
            let fail = |e: SelectError, watch: &mut W| {
                watch.select_failed(index, &e);
                self.error(MappingErrorKind::Missing, e.to_string())
            };
            let (found, how) = match selection.from.map(|i| &picked[i]) {
                None => selection.find(&record.node).map_err(|e| fail(e, watch))?,
                Some(Found::One(node)) => selection.find(node).map_err(|e| fail(e, watch))?,
                // Read from a value of our own (a default, a list): found values are copied.
                Some(other) => {
                    let source = other.to_json();
                    let (found, how) = selection.find(&source).map_err(|e| fail(e, watch))?;
                    (found.into_owned(), how)
                }
            };
            watch.selected(index, &found, how);
            let value = match &found {
                Found::One(node) => view::value_in(&record.node, node),
                Found::Many(nodes) => Value::from(
                    nodes
                        .iter()
                        .map(|node| view::value_in(&record.node, node))
                        .collect::<Vec<_>>(),
                ),
                Found::Owned(json) => Value::from(minijinja::value::Serde(json)),
            };
            context.insert(selection.name.clone(), value);
            picked.push(found);
        }
        let mut ctx = Value::from(context);
        for (index, (name, expr)) in self.compute.iter().enumerate() {
            let value = body::eval(&expr.expr, expr.direct.as_ref(), &ctx)
                .map_err(|e| self.render_error(&format!("compute `{name}`"), &e))?;
            watch.computed(index, &value, &ctx);
            ctx = scope::bind(&ctx, name, value);
        }
        if let Some(when) = &self.when {
            let holds = when
                .expr
                .eval(ctx.clone())
                .map_err(|e| self.render_error("when", &e))?;
            watch.when(holds.is_true());
            if !holds.is_true() {
                return Ok((Vec::new(), 0));
            }
        }
        for name in &self.require {
            let value = ctx.get_attr(name).unwrap_or_default();
            let empty = body::is_empty(&value);
            watch.required(name, empty);
            if empty {
                return Err(self.error(
                    MappingErrorKind::Missing,
                    format!("required value `{name}` is empty"),
                ));
            }
        }
        let contexts = match &self.for_each {
            None => vec![ctx],
            Some((var, items)) => {
                let list = items
                    .expr
                    .eval(ctx.clone())
                    .map_err(|e| self.render_error("for", &e))?;
                let contexts: Vec<Value> = if body::is_empty(&list) {
                    Vec::new()
                } else {
                    list.try_iter()
                        .map_err(|e| self.render_error("for", &e))?
                        .map(|item| scope::bind(&ctx, var, item))
                        .collect()
                };
                watch.fanned_out(contexts.len());
                contexts
            }
        };
        let mut requests = Vec::with_capacity(contexts.len());
        let mut already_sent = 0;
        for ctx in contexts {
            watch.request_started(&ctx);
            let key = |template: &Text<'_>, what: &str| {
                template
                    .render(&ctx)
                    .map_err(|e| self.render_error(what, &e))
            };
            let once_key = self
                .once_per
                .as_ref()
                .map(|t| key(t, "once_per"))
                .transpose()?;
            if once_key
                .as_deref()
                .is_some_and(|key| (globals.sent)(&self.name, key))
            {
                already_sent += 1;
                continue;
            }
            let waits_for = match &self.waits_for {
                None => None,
                Some((mapping, template)) => Some(WaitsFor {
                    mapping: Arc::clone(mapping),
                    key: key(template, "waits_for.key")?,
                }),
            };
            let coalesce = match &self.coalesce {
                None => None,
                Some((key_template, version)) => Some(Coalesce {
                    key: key(key_template, "coalesce.key")?,
                    version: key(version, "coalesce.version")?,
                }),
            };
            let body = self
                .body
                .render_watched(&ctx, watch)
                .map_err(|e| {
                    self.error(
                        MappingErrorKind::Render,
                        format!("body{}: {}", e.pointer, e.message),
                    )
                })?
                .unwrap_or(Json::Null);
            watch.body_rendered(&body);
            schemas.check(self.endpoint, &body).map_err(|problems| {
                self.error(
                    MappingErrorKind::Schema,
                    format!(
                        "the body breaks Klaviyo's schema for {} {}: {}",
                        self.endpoint.method(),
                        self.endpoint.path(),
                        problems.join("; ")
                    ),
                )
            })?;
            let request = Request {
                endpoint: self.endpoint,
                body,
                mapping: Arc::clone(&self.name),
                lane: self.lane,
                source: Arc::clone(globals.source),
                once_key,
                waits_for,
                coalesce,
            };
            watch.request_done(&request);
            requests.push(request);
        }
        Ok((requests, already_sent))
    }
}
