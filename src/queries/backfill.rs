//! The backfill query, built from the webhook queries' selection sets.
//!
//! A backfill (and a later reconciliation) pulls orders from Marketplacer's GraphQL API, and
//! [`crate::source::backfill`] reshapes each order into the records its webhooks would have
//! delivered. If the backfill query were written by hand, a field added to a webhook query (by
//! the base or by a client) would reach mappings from webhooks and silently not from a
//! backfill. So it is derived: every field each webhook record selects is put where the
//! reshaping takes it from (the order, each invoice, its shipments and refund requests).

use super::{Field, Query, QueryProblem, QuerySet, SelectionSet, Span};

/// Orders per page, and invoices per order, asked for.
const ORDERS_PER_PAGE: &str = "100";
const INVOICES_PER_ORDER: &str = "50";

/// `updatedOrders` with, on each order, invoice, shipment and refund request, what the
/// Invoice, Shipment and RefundRequest webhook queries select there; and where two of them
/// select one key as different fields (aliases), which cannot be put in one query.
pub fn backfill_query(set: &QuerySet) -> (Query, Vec<QueryProblem>) {
    let record = |type_name: &str| set.query(type_name).map(Query::record).unwrap_or_default();
    let mut order = SelectionSet::default();
    let mut invoice = SelectionSet::default();
    let mut problems = Vec::new();

    // An Invoice record is the invoice with its whole order; the order's line items are every
    // invoice's, and its invoice summaries are the invoices themselves.
    let (own, invoice_order) = split(record("Invoice"), "order");
    problems.extend(invoice.merge(own));
    if let Some(mut whole) = invoice_order {
        if let Some(lines) = whole.fields.shift_remove("lineItems") {
            let nodes = nodes_of(lines.selection);
            problems.extend(invoice.merge(field_set(field("lineItems", &[], nodes))));
        }
        if let Some(summaries) = whole.fields.shift_remove("invoices") {
            problems.extend(invoice.merge(nodes_of(summaries.selection)));
        }
        problems.extend(order.merge(whole));
    }
    // Shipments and refund requests carry their invoice and its order; a refunded line's
    // `lineItem` is completed from the invoice's line with the same `legacyId`.
    let mut children = SelectionSet::default();
    for (type_name, list) in [
        ("Shipment", "shipments"),
        ("RefundRequest", "refundRequests"),
    ] {
        let (mut own, their_invoice) = split(record(type_name), "invoice");
        if let Some(their_invoice) = their_invoice {
            let (rest, their_order) = split(their_invoice, "order");
            problems.extend(invoice.merge(rest));
            problems.extend(order.merge(their_order.unwrap_or_default()));
        }
        if type_name == "RefundRequest" {
            let line_items = own
                .fields
                .get_mut("lineItems")
                .and_then(|lines| lines.selection.fields.get_mut("lineItem"));
            if let Some(line_item) = line_items {
                let full = std::mem::take(&mut line_item.selection);
                let legacy_id = field("legacyId", &[], SelectionSet::default());
                line_item.selection = field_set(legacy_id);
                let lines = field("lineItems", &[], full);
                problems.extend(invoice.merge(field_set(lines)));
            }
        }
        problems.extend(children.merge(field_set(field(list, &[], own))));
    }
    problems.extend(invoice.merge(children));
    let invoices = field(
        "invoices",
        &[("first", INVOICES_PER_ORDER)],
        field_set(field("nodes", &[], invoice)),
    );
    problems.extend(order.merge(field_set(invoices)));
    let page_info = ["hasNextPage", "endCursor"]
        .into_iter()
        .map(|name| field(name, &[], SelectionSet::default()));
    let page = sets([
        field("totalCount", &[], SelectionSet::default()),
        field("pageInfo", &[], sets(page_info)),
        field("nodes", &[], order),
    ]);
    let site = sets([
        field("verticalCode", &[], SelectionSet::default()),
        field(
            "country",
            &[],
            field_set(field("currencyCode", &[], SelectionSet::default())),
        ),
    ]);
    let updated = field(
        "updatedOrders",
        &[
            ("first", ORDERS_PER_PAGE),
            ("after", "$after"),
            ("updatedSince", "$updatedSince"),
        ],
        page,
    );
    let selection = sets([field("siteConfig", &[], site), updated]);
    let query = Query {
        type_name: "Order".into(),
        header: "query OrdersBackfill($updatedSince: ISO8601DateTime!, $after: String)".into(),
        selection,
        file: 0,
        at: SYNTHETIC,
    };
    (query, problems)
}

/// Fields made here, not read from a file; their problems are the webhook queries'.
pub(super) const SYNTHETIC: Span = Span { file: 0, offset: 0 };

pub(super) fn field(name: &str, arguments: &[(&str, &str)], selection: SelectionSet) -> Field {
    Field {
        name: name.to_owned(),
        alias: None,
        arguments: arguments
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect(),
        at: SYNTHETIC,
        has_selection: !selection.is_empty(),
        selection,
        deprecation_noted: false,
    }
}

pub(super) fn field_set(field: Field) -> SelectionSet {
    sets([field])
}

pub(super) fn sets(fields: impl IntoIterator<Item = Field>) -> SelectionSet {
    let mut set = SelectionSet::default();
    for field in fields {
        set.fields.insert(field.key().to_owned(), field);
    }
    set
}

/// The selection without `key`, and what `key` selected.
pub(super) fn split(mut set: SelectionSet, key: &str) -> (SelectionSet, Option<SelectionSet>) {
    let taken = set.fields.shift_remove(key).map(|f| f.selection);
    (set, taken)
}

/// What a connection's `nodes` (or `edges { node }`) select.
fn nodes_of(mut connection: SelectionSet) -> SelectionSet {
    let mut nodes = connection
        .fields
        .shift_remove("nodes")
        .map(|f| f.selection)
        .unwrap_or_default();
    if let Some(mut edges) = connection.fields.shift_remove("edges")
        && let Some(node) = edges.selection.fields.shift_remove("node")
    {
        let _ = nodes.merge(node.selection);
    }
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queries::check;
    use crate::source::schema::{MarketplacerSchema, Shape};
    use serde_json::{Map, Value as Json};

    /// A value for every field `set` selects on `type_name`: one element for each list, the
    /// field's own name for each scalar, so a value can be traced back.
    fn fill(set: &SelectionSet, type_name: &str, schema: &MarketplacerSchema) -> Json {
        let mut object = Map::new();
        let mut parts = vec![set];
        parts.extend(set.conditions.values());
        for part in parts {
            for (key, field) in &part.fields {
                let shape = schema.field_shape(type_name, &field.name);
                let value = match &shape {
                    Shape::Typed { name, .. } if !field.selection.is_empty() => {
                        fill(&field.selection, name, schema)
                    }
                    _ if key == "__typename" => Json::String(type_name.to_owned()),
                    _ => Json::String(key.clone()),
                };
                let value = match shape {
                    Shape::Typed { list: true, .. } => Json::Array(vec![value]),
                    _ => value,
                };
                object.insert(key.clone(), value);
            }
        }
        Json::Object(object)
    }

    /// Every leaf key path of a selection.
    fn leaves(set: &SelectionSet, keys: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        let mut parts = vec![set];
        parts.extend(set.conditions.values());
        for part in parts {
            for (key, field) in &part.fields {
                keys.push(key.clone());
                if field.selection.is_empty() {
                    out.push(keys.clone());
                } else {
                    leaves(&field.selection, keys, out);
                }
                keys.pop();
            }
        }
    }

    /// Whether the value has the path, through the first element of each list.
    fn has(value: &Json, keys: &[String]) -> bool {
        let Some((first, rest)) = keys.split_first() else {
            return true;
        };
        let value = match value {
            Json::Array(items) => match items.first() {
                Some(item) => item,
                None => return false,
            },
            other => other,
        };
        value.get(first).is_some_and(|v| has(v, rest))
    }

    #[test]
    fn a_backfilled_record_carries_every_field_its_webhook_query_selects() {
        let (mut set, problems) = QuerySet::builtin();
        assert!(problems.is_empty(), "{problems:?}");
        let schema = MarketplacerSchema::builtin();
        set.simplify(schema);
        let (backfill, problems) = backfill_query(&set);
        assert!(problems.is_empty(), "{problems:?}");
        // The query Marketplacer is asked is one its schema accepts.
        let problems = check::check(&backfill, schema);
        assert!(
            problems
                .iter()
                .all(|p| matches!(p.kind, super::super::ProblemKind::Deprecated { .. })),
            "{problems:?}"
        );
        let Json::Object(data) = fill(&backfill.selection, "Query", schema) else {
            unreachable!("an object is filled")
        };
        let records = crate::source::backfill::records(data).unwrap();
        let mut checked = 0;
        for (type_name, query) in &set.queries {
            let record = records
                .iter()
                .find(|r| &r.typename == type_name)
                .unwrap_or_else(|| panic!("the backfill gives no {type_name}"));
            let mut paths = Vec::new();
            leaves(&query.record(), &mut Vec::new(), &mut paths);
            for path in paths {
                assert!(
                    has(&record.node, &path),
                    "a backfilled {type_name} lacks `{}`, which its webhook query selects",
                    path.join(".")
                );
                checked += 1;
            }
        }
        assert!(checked > 100, "only {checked} fields checked");
    }
}
