//! What the stand-in serves: one object graph, merged from webhook captures.
//!
//! The point of the stand-in is that the file `serve` is fed as webhooks is the file the API
//! answers from, so a reconciliation test compares two views of the same facts. A capture holds
//! one node and, nested in it, partial views of other objects (an invoice's `order`, a
//! shipment's `invoice`). Every nested object with an `id` is the same object wherever it
//! appears, so each is merged into the graph by its global id, field by field:
//!
//! - **The latest view wins a field.** A view is as old as its capture: the captured node's
//!   `updatedAt` (the webhook's query ran when the event fired, so everything nested was read
//!   then), else the capture's `received_at`; between views of the same time, or without one,
//!   the later line wins. An invoice's `statusFlags` read inside a later shipment beat those of
//!   its own earlier `create`, and a redelivery of an old event changes nothing.
//! - **A partial view adds, it does not erase.** Fields a view leaves out keep their values; a
//!   nested object without an `id` (a shipment's `invoice { seller { businessName } }`) updates
//!   the object the field already points at rather than replacing it.
//! - **Keys are read through the query that wrote them.** A capture's keys are response keys:
//!   our own webhook queries alias fields (`taxon: taxonNullable`), so a capture of a type that
//!   `queries/` has a query for is read back through that query's selection. Other keys are
//!   taken as field names.
//! - **Connections are lists.** A captured `invoices { nodes { … } }` (or `edges { node }`) is
//!   stored as the list of its nodes; the executor pages it again for whatever `first`/`after`
//!   the query asks.
//! - **Reverse relations are derived**, since no capture carries them whole: an invoice's
//!   `shipments`, `refundRequests` and `amendments`, an order's `invoices`, `shipments` and
//!   `lineItems` are what the data says plus every object pointing back at it; an amendment's
//!   `order` is its invoice's. So is one value: an invoice's `totalIncludingAdjustmentsCents`
//!   is its `totalCents` when the data shows no adjustments.
//!
//! Every capture is also a `WebhookEvent` (its envelope id, event name, payload and the object
//! it is about), and its `Marketplacer-Vertical` header is the instance's vertical: one
//! instance is one vertical, so a capture from another is refused.
//!
//! A line that cannot be read is reported with its file and line and left out; the rest load.

use super::schema::schema;
use crate::queries::{QuerySet, SelectionSet};
use crate::source::{self, Input, RecordError};
use apollo_compiler::ast::Type;
use apollo_compiler::response::JsonValue;
use apollo_compiler::schema::ExtendedType;
use serde_json::Value as Json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

/// A field's value in the graph.
#[derive(Debug, Clone)]
pub(crate) enum Value {
    /// A scalar, an enum, a `JSON` value, or null.
    Leaf(JsonValue),
    /// Another object of the graph, by index.
    Ref(usize),
    /// An object without an id of its own (an address, an `ExternalID`), held in place.
    Object(Box<Embedded>),
    List(Vec<Value>),
    /// A webhook event's payload: the captured node as compact JSON text, put in
    /// `{"data": {"node": …}}` when asked for. Text, because a parsed node takes ten times its
    /// size, and a day of captures would hold every one twice.
    Payload(Arc<str>),
}

/// An object held in place. Its type is the field's when that is an object type, else the
/// `__typename` it was captured with (None when neither tells).
#[derive(Debug, Clone, Default)]
pub(crate) struct Embedded {
    pub(crate) type_name: Option<String>,
    pub(crate) fields: HashMap<String, Value>,
}

/// When a view of an object was taken: the instant (Unix microseconds) if known, and the
/// order it was read in, which settles ties and views without a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    at: Option<i64>,
    order: u64,
}

impl Seen {
    /// Whether a view taken `self` is newer than one taken `other`.
    fn newer_than(self, other: Seen) -> bool {
        match (self.at, other.at) {
            (Some(a), Some(b)) if a != b => a > b,
            _ => self.order > other.order,
        }
    }

    fn latest(self, other: Seen) -> Seen {
        if other.newer_than(self) { other } else { self }
    }
}

#[derive(Debug, Clone)]
struct Slot {
    value: Value,
    seen: Seen,
}

/// One object of the graph (anything captured with an `id`).
#[derive(Debug, Clone)]
pub(crate) struct Object {
    pub(crate) type_name: String,
    pub(crate) id: String,
    fields: HashMap<String, Slot>,
    /// The object's timestamps, parsed once (Unix microseconds), for filters and sorting.
    times: HashMap<&'static str, i64>,
}

impl Object {
    pub(crate) fn field(&self, name: &str) -> Option<&Value> {
        if name == "id" {
            return None;
        }
        self.fields.get(name).map(|slot| &slot.value)
    }

    /// A timestamp field as an instant (Unix microseconds), if the data has a valid one.
    pub(crate) fn time(&self, name: &str) -> Option<i64> {
        self.times.get(name).copied()
    }

    /// A leaf field as JSON, if the data has one.
    pub(crate) fn leaf(&self, name: &str) -> Option<&JsonValue> {
        match self.field(name)? {
            Value::Leaf(value) if !value.is_null() => Some(value),
            _ => None,
        }
    }

    pub(crate) fn legacy_id(&self) -> Option<i64> {
        self.leaf("legacyId").and_then(JsonValue::as_i64)
    }

    /// The object another field points at.
    pub(crate) fn reference(&self, name: &str) -> Option<usize> {
        match self.field(name)? {
            Value::Ref(index) => Some(*index),
            _ => None,
        }
    }

    /// The objects a list field points at.
    pub(crate) fn references(&self, name: &str) -> Vec<usize> {
        match self.field(name) {
            Some(Value::List(items)) => items
                .iter()
                .filter_map(|item| match item {
                    Value::Ref(index) => Some(*index),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// The timestamp fields kept parsed: the ones root-field filters and sorts compare.
const TIME_FIELDS: [&str; 6] = [
    "createdAt",
    "updatedAt",
    "paidAt",
    "refundedAt",
    "remittedAt",
    "dispatchedAt",
];

/// Reverse relations: `(type, list field)` holds every `(other type, field)` pointing at it.
const DERIVED: [(&str, &str, &str, &str); 4] = [
    ("Invoice", "shipments", "Shipment", "invoice"),
    ("Invoice", "refundRequests", "RefundRequest", "invoice"),
    ("Invoice", "amendments", "InvoiceAmendment", "invoice"),
    ("Order", "invoices", "Invoice", "order"),
];

/// A line that could not be loaded, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}:{line}: {problem}")]
pub struct LoadProblem {
    pub origin: String,
    pub line: usize,
    pub problem: LineProblem,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineProblem {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(
        "this capture is from vertical `{found}`, but the data is from `{expected}`: one stand-in is one Marketplacer instance (left out)"
    )]
    OtherVertical { expected: String, found: String },
    #[error("{type_name} {id}: {message}")]
    Node {
        type_name: String,
        id: String,
        message: String,
    },
}

/// A file that could not be read at all.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OpenError(pub std::io::Error);

/// What one load read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadSummary {
    /// Deliveries merged.
    pub loaded: usize,
    /// Lines left out, each with its file, line and reason.
    pub problems: Vec<LoadProblem>,
}

/// The data a stand-in serves: build it with [`Data::load_file`] / [`Data::load_text`], then
/// hand it to the stand-in's config.
#[derive(Debug, Clone, Default)]
pub struct Data {
    pub(crate) objects: Vec<Object>,
    by_id: HashMap<String, usize>,
    /// The vertical the captures came from (`Marketplacer-Vertical`, or a backfill page's
    /// `siteConfig.verticalCode`).
    pub(crate) vertical: Option<String>,
    /// Webhook events by the record type they are about, in load order.
    pub(crate) events_by_type: BTreeMap<String, Vec<usize>>,
    next_order: u64,
    /// Each webhook query's record selection, to read captured keys back to field names.
    selections: Option<Arc<HashMap<String, SelectionSet>>>,
    /// Objects by type, sorted by legacy id: filled by [`Data::finish`].
    by_type: HashMap<String, Vec<usize>>,
    finished: bool,
}

impl Data {
    /// Empty data.
    pub fn new() -> Data {
        Data::default()
    }

    /// How many objects of a type the data holds.
    pub fn count(&self, type_name: &str) -> usize {
        self.objects
            .iter()
            .filter(|o| o.type_name == type_name)
            .count()
    }

    /// The vertical the data is from, if any capture said.
    pub fn vertical(&self) -> Option<&str> {
        self.vertical.as_deref()
    }

    /// Loads every delivery of a file (NDJSON, or one `.json` document) as `marketsync run`
    /// reads it. Fails only if the file cannot be opened; a line that cannot be read is a
    /// problem in the summary, and the rest are loaded.
    pub fn load_file(&mut self, path: &Path) -> Result<LoadSummary, OpenError> {
        let input = Input::File(path.to_owned());
        let lines = source::read_lines(&input).map_err(OpenError)?;
        let mut summary = LoadSummary::default();
        for line in lines {
            match line {
                Ok(line) => {
                    let result = match line.not_utf8_at {
                        Some(at) => Err(LineProblem::Record(RecordError::NotUtf8(at))),
                        None => self.load_delivery(&line.text),
                    };
                    self.tally(&mut summary, &line.origin, line.number, result);
                }
                Err(e) => summary.problems.push(LoadProblem {
                    origin: input.name(),
                    line: 0,
                    problem: LineProblem::Record(RecordError::Unrecognised(e.to_string())),
                }),
            }
        }
        Ok(summary)
    }

    /// Loads deliveries from text already read, named `name` in problems, by the rule
    /// `marketsync run` reads files with: a `.json` name is one document, anything else one
    /// delivery a line.
    pub fn load_text(&mut self, name: &str, text: &str) -> LoadSummary {
        let mut summary = LoadSummary::default();
        let single = Path::new(name)
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        if single {
            let first = text.lines().position(|l| !l.trim().is_empty()).unwrap_or(0);
            let result = self.load_delivery(text);
            self.tally(&mut summary, name, first + 1, result);
            return summary;
        }
        for (index, line) in text.lines().enumerate() {
            if !line.trim().is_empty() {
                let result = self.load_delivery(line);
                self.tally(&mut summary, name, index + 1, result);
            }
        }
        summary
    }

    fn tally(
        &mut self,
        summary: &mut LoadSummary,
        origin: &str,
        line: usize,
        result: Result<(), LineProblem>,
    ) {
        match result {
            Ok(()) => summary.loaded += 1,
            Err(problem) => summary.problems.push(LoadProblem {
                origin: origin.to_owned(),
                line,
                problem,
            }),
        }
    }

    /// One delivery: a capture, an envelope, a backfill page or a bare result.
    fn load_delivery(&mut self, text: &str) -> Result<(), LineProblem> {
        self.finished = false;
        let value: Json = serde_json::from_str(text.trim_end()).map_err(|e| {
            let message = e.to_string();
            let message = message.split(" at line ").next().unwrap_or_default();
            RecordError::NotJson(format!("{message} (column {})", e.column()))
        })?;
        let received_at = value
            .get("received_at")
            .and_then(Json::as_str)
            .and_then(instant);
        let envelope = webhook_envelope(&value);
        let records = source::records_of(value)?;
        // Everything checked before anything is merged: a line loads whole or not at all.
        let selections = self.selections();
        let mut ids = HashMap::new();
        for record in &records {
            if let (Some(expected), Some(found)) = (&self.vertical, &record.marketplace)
                && expected != found
            {
                return Err(LineProblem::OtherVertical {
                    expected: expected.clone(),
                    found: found.clone(),
                });
            }
            let selection = selections.get(&record.typename);
            self.collect_ids(&record.node, Some(&record.typename), selection, &mut ids)?;
        }
        for record in records {
            if let Some(found) = record.marketplace.clone() {
                self.vertical.get_or_insert(found);
            }
            let order = self.next_order;
            self.next_order += 1;
            let at = record
                .node
                .get("updatedAt")
                .and_then(Json::as_str)
                .and_then(instant)
                .or(received_at);
            let seen = Seen { at, order };
            let selection = selections.get(&record.typename);
            let node = self.merge_object(&record.node, Some(&record.typename), selection, seen)?;
            if let (Some(envelope), Value::Ref(index)) = (&envelope, &node) {
                self.add_event(envelope, &record, *index, seen);
            }
        }
        Ok(())
    }

    /// Each webhook query's record selection, by record type (`queries/`).
    fn selections(&mut self) -> Arc<HashMap<String, SelectionSet>> {
        let selections = self.selections.get_or_insert_with(|| {
            let (queries, _) = QuerySet::builtin();
            Arc::new(
                queries
                    .queries
                    .iter()
                    .map(|(name, query)| (name.clone(), query.record()))
                    .collect(),
            )
        });
        Arc::clone(selections)
    }

    /// Refuses a node holding an id that the graph (or the line itself) already has as
    /// another type, collecting the line's ids in `ids`.
    fn collect_ids<'j>(
        &self,
        json: &'j Json,
        expected: Option<&str>,
        selection: Option<&SelectionSet>,
        ids: &mut HashMap<&'j str, String>,
    ) -> Result<(), LineProblem> {
        match json {
            Json::Array(items) => {
                for item in items {
                    self.collect_ids(item, expected, selection, ids)?;
                }
                Ok(())
            }
            Json::Object(map) => {
                let type_name = concrete_type(map, expected, selection);
                if let (Some(id), Some(type_name)) =
                    (map.get("id").and_then(Json::as_str), &type_name)
                {
                    let known = self
                        .by_id
                        .get(id)
                        .map(|&i| self.objects[i].type_name.clone())
                        .or_else(|| ids.get(id).cloned());
                    if let Some(known) = known.filter(|k| k != type_name) {
                        return Err(LineProblem::Node {
                            type_name: type_name.clone(),
                            id: id.to_owned(),
                            message: format!(
                                "this id already names an object of type {known}: a global id names one object"
                            ),
                        });
                    }
                    ids.insert(id, type_name.clone());
                }
                for (key, value) in map {
                    let (name, child) = match selection.and_then(|s| s.find(key)) {
                        Some(field) => (field.name.as_str(), Some(&field.selection)),
                        None => (key.as_str(), None),
                    };
                    let Some(definition) = type_name
                        .as_deref()
                        .and_then(|t| schema().type_field(t, name).ok())
                    else {
                        continue;
                    };
                    let named = definition.ty.inner_named_type().as_str();
                    if is_connection(named) {
                        let item_type = connection_item_type(named);
                        for part in ["nodes", "edges"] {
                            if let Some(items) = value.get(part) {
                                let child = child.and_then(|c| c.find(part)).map(|f| &f.selection);
                                let items: Vec<&Json> = match (part, items) {
                                    ("edges", Json::Array(edges)) => {
                                        edges.iter().filter_map(|e| e.get("node")).collect()
                                    }
                                    (_, Json::Array(nodes)) => nodes.iter().collect(),
                                    _ => Vec::new(),
                                };
                                let child = if part == "edges" {
                                    child.and_then(|c| c.find("node")).map(|f| &f.selection)
                                } else {
                                    child
                                };
                                for item in items {
                                    self.collect_ids(item, item_type.as_deref(), child, ids)?;
                                }
                            }
                        }
                    } else if value.is_object() || value.is_array() {
                        self.collect_ids(value, Some(named), child, ids)?;
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Merges a captured object into the graph: by id when it has one (returning a reference),
    /// else as an embedded value.
    fn merge_object(
        &mut self,
        json: &Json,
        expected: Option<&str>,
        selection: Option<&SelectionSet>,
        seen: Seen,
    ) -> Result<Value, LineProblem> {
        let Json::Object(map) = json else {
            return Ok(Value::Leaf(JsonValue::from(json.clone())));
        };
        let type_name = concrete_type(map, expected, selection);
        let id = map.get("id").and_then(Json::as_str);
        let mut fields = Vec::new();
        for (key, value) in map {
            if key == "__typename" || key == "id" {
                continue;
            }
            let (name, child) = match selection.and_then(|s| s.find(key)) {
                Some(field) => (field.name.clone(), Some(&field.selection)),
                None => (key.clone(), None),
            };
            let converted = match type_name
                .as_deref()
                .and_then(|t| schema().type_field(t, &name).ok())
            {
                Some(definition) => self.convert(&definition.ty, value, child, seen)?,
                // A key the type has no field for (another query's alias, a field the dated SDL
                // lacks): kept, never served.
                None => Value::Leaf(JsonValue::from(value.clone())),
            };
            fields.push((name, converted));
        }
        match (id, type_name) {
            (Some(id), Some(type_name)) => {
                let index = self.upsert(id, &type_name)?;
                for (name, value) in fields {
                    self.set_field(index, name, value, seen);
                }
                Ok(Value::Ref(index))
            }
            (_, type_name) => Ok(Value::Object(Box::new(Embedded {
                type_name,
                fields: fields.into_iter().collect(),
            }))),
        }
    }

    /// A captured value for a field of type `ty`.
    fn convert(
        &mut self,
        ty: &Type,
        json: &Json,
        selection: Option<&SelectionSet>,
        seen: Seen,
    ) -> Result<Value, LineProblem> {
        if json.is_null() {
            return Ok(Value::Leaf(JsonValue::Null));
        }
        if ty.is_list() {
            return match json {
                Json::Array(items) => Ok(Value::List(
                    items
                        .iter()
                        .map(|item| self.convert(ty.item_type(), item, selection, seen))
                        .collect::<Result<_, _>>()?,
                )),
                // A single value where a list is declared, as GraphQL input coercion allows.
                other => Ok(Value::List(vec![self.convert(
                    ty.item_type(),
                    other,
                    selection,
                    seen,
                )?])),
            };
        }
        let named = ty.inner_named_type();
        match schema().types.get(named.as_str()) {
            Some(ExtendedType::Object(_)) if is_connection(named.as_str()) => {
                let item_type = connection_item_type(named.as_str());
                let nodes_selection = selection.and_then(|s| s.find("nodes"));
                let edges_selection = selection
                    .and_then(|s| s.find("edges"))
                    .and_then(|edges| edges.selection.find("node"));
                let mut items = Vec::new();
                if let Some(Json::Array(nodes)) = json.get("nodes") {
                    for node in nodes {
                        items.push(self.merge_object(
                            node,
                            item_type.as_deref(),
                            nodes_selection.map(|f| &f.selection),
                            seen,
                        )?);
                    }
                }
                if let Some(Json::Array(edges)) = json.get("edges") {
                    for edge in edges {
                        if let Some(node) = edge.get("node").filter(|n| !n.is_null()) {
                            items.push(self.merge_object(
                                node,
                                item_type.as_deref(),
                                edges_selection.map(|f| &f.selection),
                                seen,
                            )?);
                        }
                    }
                }
                Ok(Value::List(dedupe(items)))
            }
            Some(ExtendedType::Object(_) | ExtendedType::Interface(_) | ExtendedType::Union(_)) => {
                self.merge_object(json, Some(named.as_str()), selection, seen)
            }
            _ => Ok(Value::Leaf(JsonValue::from(json.clone()))),
        }
    }

    fn upsert(&mut self, id: &str, type_name: &str) -> Result<usize, LineProblem> {
        if let Some(&index) = self.by_id.get(id) {
            let existing = &self.objects[index].type_name;
            if existing != type_name {
                return Err(LineProblem::Node {
                    type_name: type_name.to_owned(),
                    id: id.to_owned(),
                    message: format!(
                        "this id already names an object of type {existing}: a global id names one object"
                    ),
                });
            }
            return Ok(index);
        }
        let index = self.objects.len();
        self.objects.push(Object {
            type_name: type_name.to_owned(),
            id: id.to_owned(),
            fields: HashMap::new(),
            times: HashMap::new(),
        });
        self.by_id.insert(id.to_owned(), index);
        Ok(index)
    }

    /// Sets a field from a view taken `seen`, by the rules in the module doc.
    fn set_field(&mut self, index: usize, name: String, value: Value, seen: Seen) {
        let Some(current) = self.objects[index].fields.get_mut(&name) else {
            self.objects[index]
                .fields
                .insert(name, Slot { value, seen });
            return;
        };
        match (&current.value, value) {
            // A partial view of the object the field already points at: merge into it.
            (Value::Ref(target), Value::Object(embedded)) => {
                let target = *target;
                current.seen = current.seen.latest(seen);
                for (field, value) in embedded.fields {
                    self.set_field(target, field, value, seen);
                }
            }
            // The field points at an object now; what was held in place is a view of it.
            (Value::Object(_), Value::Ref(target)) => {
                let held_seen = current.seen;
                current.seen = held_seen.latest(seen);
                let Value::Object(embedded) =
                    std::mem::replace(&mut current.value, Value::Ref(target))
                else {
                    unreachable!("matched above");
                };
                for (field, value) in embedded.fields {
                    self.set_field(target, field, value, held_seen);
                }
            }
            (_, value) => {
                if seen.newer_than(current.seen) {
                    *current = Slot { value, seen };
                }
            }
        }
    }

    /// Records the webhook event a capture (or envelope) was.
    fn add_event(&mut self, envelope: &Envelope, record: &source::Record, node: usize, seen: Seen) {
        let Ok(index) = self.upsert(&envelope.id, "WebhookEvent") else {
            return;
        };
        let link = match record.typename.as_str() {
            "Invoice" => Some("invoice"),
            "Shipment" => Some("shipment"),
            "RefundRequest" => Some("refundRequest"),
            _ => None,
        };
        let created = record
            .node
            .get("updatedAt")
            .and_then(Json::as_str)
            .map(str::to_owned)
            .or_else(|| envelope.received_at.clone());
        let mut fields: Vec<(&str, Value)> = vec![
            ("eventName", leaf(Json::from(envelope.event_name.clone()))),
            (
                "payload",
                Value::Payload(record.node.to_string().into_boxed_str().into()),
            ),
            ("status", leaf(Json::from("sent"))),
            ("skipped", leaf(Json::from(false))),
            ("retryAfter", leaf(Json::Null)),
            ("responses", Value::List(Vec::new())),
        ];
        if let Some(created) = created {
            fields.push(("createdAt", leaf(Json::from(created))));
        }
        if let Some(received) = &envelope.received_at {
            fields.push(("processedAt", leaf(Json::from(received.clone()))));
        }
        if let Some(link) = link {
            fields.push((link, Value::Ref(node)));
        }
        for (name, value) in fields {
            self.set_field(index, name.to_owned(), value, seen);
        }
        let events = self
            .events_by_type
            .entry(record.typename.clone())
            .or_default();
        if !events.contains(&index) {
            events.push(index);
        }
    }

    /// Builds what requests read: parsed timestamps, reverse relations, objects by type.
    /// Idempotent; the stand-in calls it before serving.
    pub(crate) fn finish(&mut self) {
        if self.finished {
            return;
        }
        for object in &mut self.objects {
            object.times.clear();
            for name in TIME_FIELDS {
                if let Some(Value::Leaf(value)) = object.fields.get(name).map(|s| &s.value)
                    && let Some(at) = value.as_str().and_then(instant)
                {
                    object.times.insert(name, at);
                }
            }
        }
        for (target_type, list, source_type, field) in DERIVED {
            let mut pointing: HashMap<usize, Vec<usize>> = HashMap::new();
            for (index, object) in self.objects.iter().enumerate() {
                if object.type_name == source_type
                    && let Some(target) = object.reference(field)
                    && self.objects[target].type_name == target_type
                {
                    pointing.entry(target).or_default().push(index);
                }
            }
            for (target, sources) in pointing {
                self.extend_list(target, list, sources);
            }
        }
        // Two steps away: an order's shipments and line items are its invoices'.
        for index in 0..self.objects.len() {
            if self.objects[index].type_name != "Order" {
                continue;
            }
            let invoices = self.objects[index].references("invoices");
            let mut shipments = Vec::new();
            let mut line_items = Vec::new();
            for invoice in invoices {
                shipments.extend(self.objects[invoice].references("shipments"));
                line_items.extend(self.objects[invoice].references("lineItems"));
            }
            self.extend_list(index, "shipments", shipments);
            self.extend_list(index, "lineItems", line_items);
        }
        for index in 0..self.objects.len() {
            let object = &self.objects[index];
            if object.type_name == "InvoiceAmendment" && object.reference("order").is_none() {
                let order = object
                    .reference("invoice")
                    .and_then(|invoice| self.objects[invoice].reference("order"));
                if let Some(order) = order {
                    let seen = Seen { at: None, order: 0 };
                    self.objects[index].fields.insert(
                        "order".into(),
                        Slot {
                            value: Value::Ref(order),
                            seen,
                        },
                    );
                }
            }
        }
        // An invoice's total including adjustments is its total when it has none (no capture
        // carries adjustments), so the non-null field answers what the data implies.
        for object in &mut self.objects {
            let adjusted = object.fields.contains_key("totalIncludingAdjustmentsCents");
            let adjustments = matches!(
                object.fields.get("adjustments").map(|s| &s.value),
                Some(Value::List(items)) if !items.is_empty()
            );
            if object.type_name == "Invoice"
                && !adjusted
                && !adjustments
                && let Some(total) = object.fields.get("totalCents").cloned()
            {
                object
                    .fields
                    .insert("totalIncludingAdjustmentsCents".into(), total);
            }
        }
        self.by_type.clear();
        for (index, object) in self.objects.iter().enumerate() {
            self.by_type
                .entry(object.type_name.clone())
                .or_default()
                .push(index);
        }
        let objects = &self.objects;
        for indexes in self.by_type.values_mut() {
            indexes.sort_by_key(|&i| (objects[i].legacy_id(), objects[i].id.clone()));
        }
        self.finished = true;
    }

    /// Sets a list field to what it holds plus the objects `more`, each object once, objects
    /// by legacy id (items held in place, without an id, keep their place after them).
    fn extend_list(&mut self, index: usize, field: &str, more: Vec<usize>) {
        let (held, slot_seen) = match self.objects[index].fields.get(field) {
            Some(Slot {
                value: Value::List(items),
                seen,
            }) => (items.clone(), *seen),
            Some(slot) => (Vec::new(), slot.seen),
            None => (Vec::new(), Seen { at: None, order: 0 }),
        };
        let mut objects: Vec<usize> = held
            .iter()
            .filter_map(|item| match item {
                Value::Ref(i) => Some(*i),
                _ => None,
            })
            .chain(more)
            .collect();
        let mut unique = HashSet::new();
        objects.retain(|i| unique.insert(*i));
        objects.sort_by_key(|&i| (self.objects[i].legacy_id(), self.objects[i].id.clone()));
        let in_place = held
            .into_iter()
            .filter(|item| !matches!(item, Value::Ref(_)));
        let value = Value::List(
            objects
                .into_iter()
                .map(Value::Ref)
                .chain(in_place)
                .collect(),
        );
        self.objects[index].fields.insert(
            field.to_owned(),
            Slot {
                value,
                seen: slot_seen,
            },
        );
    }

    /// Every object of a type, by legacy id. Needs [`Data::finish`].
    pub(crate) fn of_type(&self, type_name: &str) -> &[usize] {
        debug_assert!(self.finished, "Data::finish before serving");
        self.by_type.get(type_name).map_or(&[], Vec::as_slice)
    }

    pub(crate) fn by_id(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }
}

fn leaf(json: Json) -> Value {
    Value::Leaf(JsonValue::from(json))
}

/// Keeps the first of each object a list names twice.
fn dedupe(items: Vec<Value>) -> Vec<Value> {
    let mut seen = HashSet::new();
    items
        .into_iter()
        .filter(|item| match item {
            Value::Ref(index) => seen.insert(*index),
            _ => true,
        })
        .collect()
}

/// An object's concrete type: the expected one when it is an object type, else its
/// `__typename` when that is one of the expected type's possible types, else the one type
/// condition of the query that captured it (`advert { ... on Advert { … } }` without
/// `__typename` can only have been an Advert, or it would be empty).
fn concrete_type(
    map: &serde_json::Map<String, Json>,
    expected: Option<&str>,
    selection: Option<&SelectionSet>,
) -> Option<String> {
    let schema = schema();
    let typename = map.get("__typename").and_then(Json::as_str);
    let possible = |t: &str| {
        schema.get_object(t).is_some() && expected.is_none_or(|e| e == t || schema.is_subtype(e, t))
    };
    if let Some(expected) = expected
        && schema.get_object(expected).is_some()
    {
        return Some(expected.to_owned());
    }
    if let Some(typename) = typename {
        return possible(typename).then(|| typename.to_owned());
    }
    let conditions = selection.map(|s| &s.conditions)?;
    match conditions.keys().collect::<Vec<_>>().as_slice() {
        [only] if possible(only) && !map.is_empty() => Some((*only).clone()),
        _ => None,
    }
}

/// Whether a type is a Relay connection (`pageInfo` and `nodes` or `edges`).
pub(crate) fn is_connection(type_name: &str) -> bool {
    schema().get_object(type_name).is_some_and(|object| {
        object.fields.contains_key("pageInfo")
            && (object.fields.contains_key("nodes") || object.fields.contains_key("edges"))
    })
}

/// The type of a connection's nodes.
fn connection_item_type(type_name: &str) -> Option<String> {
    let object = schema().get_object(type_name)?;
    let nodes = object.fields.get("nodes")?;
    Some(nodes.ty.inner_named_type().to_string())
}

/// An RFC 3339 instant (with its offset) as Unix microseconds.
pub(crate) fn instant(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_micros())
}

/// A delivery's envelope, when it is a webhook's (a capture or a bare envelope).
struct Envelope {
    id: String,
    event_name: String,
    received_at: Option<String>,
}

fn webhook_envelope(value: &Json) -> Option<Envelope> {
    let received_at = value
        .get("received_at")
        .and_then(Json::as_str)
        .map(str::to_owned);
    let read = |body: &Json| {
        let id = body.get("id").and_then(Json::as_str)?.to_owned();
        let event_name = body
            .get("event_name")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_owned();
        Some((id, event_name))
    };
    let (id, event_name) = match value.get("body") {
        Some(Json::String(raw)) => read(&serde_json::from_str(raw).ok()?)?,
        Some(body) => read(body)?,
        None if value.get("payload").is_some() => read(value)?,
        None => return None,
    };
    Some(Envelope {
        id,
        event_name,
        received_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope(id: &str, node: Json) -> String {
        json!({"id": id, "event_name": "update", "payload": {"data": {"node": node}}}).to_string()
    }

    fn leaf_of<'d>(data: &'d Data, id: &str, field: &str) -> Option<&'d JsonValue> {
        data.objects[data.by_id(id).unwrap()].leaf(field)
    }

    #[test]
    fn an_older_view_read_later_changes_nothing() {
        let mut data = Data::new();
        let newer = json!({"__typename": "RefundRequest", "id": "R1", "status": "REFUNDED", "updatedAt": "2026-03-20T11:30:02+11:00"});
        let older = json!({"__typename": "RefundRequest", "id": "R1", "status": "AWAITING", "updatedAt": "2026-03-19T09:12:45+11:00", "reason": "x"});
        let summary = data.load_text(
            "a.ndjson",
            &format!("{}\n{}\n", envelope("E1", newer), envelope("E2", older)),
        );
        assert_eq!(summary.loaded, 2);
        assert_eq!(
            leaf_of(&data, "R1", "status").unwrap().as_str(),
            Some("REFUNDED")
        );
        // What only the older view had is still added: a partial view adds, it does not erase.
        assert_eq!(
            leaf_of(&data, "R1", "updatedAt").unwrap().as_str(),
            Some("2026-03-20T11:30:02+11:00")
        );
    }

    #[test]
    fn a_nested_view_without_id_updates_the_object_the_field_points_at() {
        let mut data = Data::new();
        let invoice = json!({"__typename": "Invoice", "id": "I1", "updatedAt": "2026-03-14T10:00:00+11:00",
            "seller": {"id": "S1", "legacyId": 11, "businessName": "Old name"}});
        let shipment = json!({"__typename": "Shipment", "id": "H1", "updatedAt": "2026-03-15T10:00:00+11:00",
            "invoice": {"id": "I1", "seller": {"businessName": "New name"}}});
        data.load_text(
            "a.ndjson",
            &format!(
                "{}\n{}\n",
                envelope("E1", invoice),
                envelope("E2", shipment)
            ),
        );
        let invoice = &data.objects[data.by_id("I1").unwrap()];
        assert_eq!(
            invoice.reference("seller"),
            data.by_id("S1"),
            "still the seller object"
        );
        assert_eq!(
            leaf_of(&data, "S1", "businessName").unwrap().as_str(),
            Some("New name")
        );
        assert_eq!(leaf_of(&data, "S1", "legacyId").unwrap().as_i64(), Some(11));
    }

    #[test]
    fn a_line_naming_an_id_as_two_types_is_left_out_whole() {
        let mut data = Data::new();
        let first = json!({"__typename": "Invoice", "id": "X1", "legacyId": 1});
        let clash = json!({"__typename": "Shipment", "id": "H9", "legacyId": 9, "invoice": {"id": "I9"},
            "shippedItems": [{"id": "X1", "quantity": 1}]});
        let summary = data.load_text(
            "a.ndjson",
            &format!("{}\n{}\n", envelope("E1", first), envelope("E2", clash)),
        );
        assert_eq!(summary.loaded, 1);
        assert_eq!(summary.problems[0].line, 2);
        assert!(
            summary.problems[0]
                .to_string()
                .contains("already names an object of type Invoice"),
            "{}",
            summary.problems[0]
        );
        assert!(
            data.by_id("H9").is_none() && data.by_id("I9").is_none(),
            "nothing of the line merged"
        );
    }

    #[test]
    fn connections_are_stored_as_lists_of_their_nodes() {
        let mut data = Data::new();
        let invoice = json!({"__typename": "Invoice", "id": "I1", "order": {"id": "O1",
            "invoices": {"edges": [{"node": {"id": "I1"}}, {"node": {"id": "I2", "legacyId": 2}}]},
            "lineItems": {"nodes": [{"id": "L1", "legacyId": 10}]}}});
        data.load_text("a.ndjson", &envelope("E1", invoice));
        data.finish();
        let order = &data.objects[data.by_id("O1").unwrap()];
        assert_eq!(order.references("invoices").len(), 2);
        assert_eq!(order.references("lineItems"), [data.by_id("L1").unwrap()]);
        assert_eq!(data.objects[data.by_id("I2").unwrap()].type_name, "Invoice");
    }
}
