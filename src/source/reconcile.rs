//! Objects read back from Marketplacer's API, turned into the records their webhooks carried.
//!
//! A reconciliation must map each object exactly as its webhook was mapped (same requests, same
//! `unique_id`s), so each record is cut from what the API returned by the webhook query's own
//! selection set ([`project`]): the fields the webhook selects, under the keys (aliases) it
//! gives them, in its order, nothing more. The reconciliation queries
//! ([`crate::queries::reconcile`]) select a superset (an invoice with its shipments, what the
//! sweep needs to page and to tell the window); whatever the webhook would not have carried is
//! left out here. A Shipment or RefundRequest read under its invoice gets that invoice (and its
//! order) as its `invoice`, as its own webhook carries it.
//!
//! The event name is the one the latest webhook of that state would have said: `create` for an
//! object never changed since it was created, `update` otherwise. No default mapping reads it;
//! a client mapping that does sees what its webhook would have sent.

use super::{Record, RecordError};
use crate::queries::{QuerySet, SelectionSet};
use indexmap::IndexMap;
use serde_json::{Map, Value as Json};
use std::sync::Arc;

/// One object read, as the record its webhook would have carried.
#[derive(Debug, Clone, PartialEq)]
pub struct Fact {
    pub record: Record,
    /// The object's global id: a fact is counted once per run however often it is read.
    pub id: String,
    /// When it was created, changed and (for a refund) refunded, as written.
    pub times: Vec<String>,
}

/// What a record of each webhook type holds (each query's [`crate::queries::Query::record`]),
/// worked out once for a run rather than for every object read.
#[derive(Debug, Clone, Default)]
pub struct Shapes(IndexMap<String, SelectionSet>);

impl Shapes {
    pub fn of(queries: &QuerySet) -> Shapes {
        Shapes(
            queries
                .queries
                .iter()
                .map(|(type_name, query)| (type_name.clone(), query.record()))
                .collect(),
        )
    }

    fn get(&self, type_name: &str) -> Option<&SelectionSet> {
        self.0.get(type_name)
    }
}

/// An invoice node of the reconciliation's invoice queries: the invoice's record, then one for
/// each of its shipments and refund requests (in that order), for the webhook types the
/// queries hold.
pub fn invoice_facts(
    node: &Json,
    shapes: &Shapes,
    marketplace: Option<&str>,
) -> Result<Vec<Fact>, RecordError> {
    let mut facts = Vec::new();
    if let Some(query) = shapes.get("Invoice") {
        facts.push(fact("Invoice", node, &[], query, marketplace)?);
    }
    for (type_name, list) in [
        ("Shipment", "shipments"),
        ("RefundRequest", "refundRequests"),
    ] {
        let Some(query) = shapes.get(type_name) else {
            continue;
        };
        let children = match node.get(list) {
            Some(Json::Array(children)) => children.as_slice(),
            _ => &[],
        };
        for child in children {
            facts.push(fact(
                type_name,
                child,
                &[("invoice", node)],
                query,
                marketplace,
            )?);
        }
    }
    Ok(facts)
}

/// A refund request node of the refunded-requests query, as its webhook's record.
pub fn refund_fact(
    node: &Json,
    shapes: &Shapes,
    marketplace: Option<&str>,
) -> Result<Option<Fact>, RecordError> {
    match shapes.get("RefundRequest") {
        Some(query) => fact("RefundRequest", node, &[], query, marketplace).map(Some),
        None => Ok(None),
    }
}

fn fact(
    type_name: &str,
    node: &Json,
    parents: &[(&str, &Json)],
    record: &SelectionSet,
    marketplace: Option<&str>,
) -> Result<Fact, RecordError> {
    let Json::Object(object) = node else {
        return Err(RecordError::Unrecognised(format!(
            "a {type_name} read from Marketplacer is not an object"
        )));
    };
    let id = match object.get("id") {
        Some(Json::String(id)) if !id.is_empty() => id.clone(),
        _ => {
            return Err(RecordError::Unrecognised(format!(
                "a {type_name} read from Marketplacer has no `id`"
            )));
        }
    };
    let text = |key: &str| object.get(key).and_then(Json::as_str).map(str::to_owned);
    let times: Vec<String> = ["createdAt", "updatedAt", "refundedAt"]
        .into_iter()
        .filter_map(text)
        .collect();
    let event = match (text("createdAt"), text("updatedAt")) {
        (Some(created), Some(updated)) if same_instant(&created, &updated) => "create",
        _ => "update",
    };
    let mut projected = project_object(object, record, parents);
    // Every webhook record names its type, whether or not the query selects `__typename`.
    if let Json::Object(fields) = &mut projected
        && !fields.contains_key("__typename")
    {
        fields.insert("__typename".into(), Json::String(type_name.into()));
    }
    let delivery_id = super::content_id("reconcile", type_name, &projected);
    Ok(Fact {
        record: Record {
            delivery_id,
            event: event.into(),
            typename: type_name.into(),
            marketplace: marketplace.map(str::to_owned),
            currency: None,
            node: Arc::new(projected),
        },
        id,
        times,
    })
}

fn same_instant(a: &str, b: &str) -> bool {
    match (
        chrono::DateTime::parse_from_rfc3339(a),
        chrono::DateTime::parse_from_rfc3339(b),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// `value` cut to what `selection` selects: each field under its key in the selection's order,
/// lists element by element, type conditions where the object is of that type (or does not say
/// its type). A field the value lacks is left out, as it was absent from the webhook too.
pub fn project(value: &Json, selection: &SelectionSet) -> Json {
    match value {
        Json::Object(object) => project_object(object, selection, &[]),
        Json::Array(items) => Json::Array(items.iter().map(|v| project(v, selection)).collect()),
        other => other.clone(),
    }
}

/// [`project`] of an object, with `parents` standing in for keys the object lacks (a child's
/// `invoice`, read as its parent).
fn project_object(
    object: &Map<String, Json>,
    selection: &SelectionSet,
    parents: &[(&str, &Json)],
) -> Json {
    let mut out = Map::new();
    let typename = object.get("__typename").and_then(Json::as_str);
    let mut parts = vec![selection];
    parts.extend(
        selection
            .conditions
            .iter()
            .filter(|(on, _)| typename.is_none_or(|t| t == on.as_str()))
            .map(|(_, part)| part),
    );
    for part in parts {
        for (key, field) in &part.fields {
            if out.contains_key(key) {
                continue;
            }
            let found = object
                .get(key)
                .or_else(|| parents.iter().find(|(k, _)| k == key).map(|(_, v)| *v));
            let Some(value) = found else {
                continue;
            };
            let value = if field.selection.is_empty() {
                value.clone()
            } else {
                project(value, &field.selection)
            };
            out.insert(key.clone(), value);
        }
    }
    Json::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::schema::MarketplacerSchema;
    use serde_json::json;

    fn queries() -> Shapes {
        let (mut set, _) = QuerySet::builtin();
        set.simplify(MarketplacerSchema::builtin());
        Shapes::of(&set)
    }

    /// The webhook's node of an example delivery.
    fn example(name: &str) -> Json {
        let text = crate::spec::builtin_example(name).unwrap();
        let value: Json = serde_json::from_str(text).unwrap();
        let body = value.get("body").cloned().unwrap_or(value);
        body["payload"]["data"]["node"].clone()
    }

    #[test]
    fn a_record_is_what_the_webhook_carried_and_nothing_more() {
        let set = queries();
        let webhook = example("shipment.json");
        // The API gives the shipment under its invoice, with fields the webhook never selects.
        let mut invoice = webhook["invoice"].clone();
        invoice["updatedAt"] = json!("2026-03-05T14:02:10+11:00");
        invoice["paidAt"] = json!("2026-03-04T10:00:00+11:00");
        let mut shipment = webhook.clone();
        shipment.as_object_mut().unwrap().remove("invoice");
        invoice["shipments"] = json!([shipment]);
        invoice["refundRequests"] = json!([]);
        let facts = invoice_facts(&invoice, &set, Some("petmarket")).unwrap();
        let read = facts
            .iter()
            .find(|f| f.record.typename == "Shipment")
            .unwrap();
        assert_eq!(
            *read.record.node, webhook,
            "field for field, in the webhook's order"
        );
        assert_eq!(read.record.marketplace.as_deref(), Some("petmarket"));
        assert_eq!(
            read.record.currency, None,
            "as a webhook: the settings' currency"
        );
        assert!(read.record.delivery_id.starts_with("reconcile:Shipment:"));
    }

    #[test]
    fn the_event_is_create_until_the_object_changes() {
        let set = queries();
        let mut node = example("refund.json");
        node["createdAt"] = json!("2026-03-09T09:30:00+11:00");
        node["updatedAt"] = json!("2026-03-08T22:30:00Z");
        assert_eq!(
            refund_fact(&node, &set, None)
                .unwrap()
                .unwrap()
                .record
                .event,
            "create"
        );
        node["updatedAt"] = json!("2026-03-11T16:45:12+11:00");
        let fact = refund_fact(&node, &set, None).unwrap().unwrap();
        assert_eq!(fact.record.event, "update");
        assert_eq!(fact.times.len(), 3);
    }

    #[test]
    fn type_conditions_apply_to_their_type_and_aliases_are_kept() {
        let text = "query($id: ID!) { node(id: $id) { __typename ... on Invoice { id total: totalCents lineItems { variant { advert { ... on Advert { taxon: taxonNullable { id } } } } } } } }";
        let (set, problems) = {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("i.graphql"), text).unwrap();
            QuerySet::load_dir(dir.path()).unwrap()
        };
        assert!(problems.is_empty(), "{problems:?}");
        let node = json!({"__typename": "Invoice", "id": "I1", "total": 5, "totalCents": 5, "extra": 1,
            "lineItems": [{"variant": {"advert": {"__typename": "Advert", "taxon": {"id": "T", "x": 1}}}},
                          {"variant": {"advert": {"__typename": "Other", "taxon": {"id": "U"}}}}]});
        let facts = invoice_facts(&node, &Shapes::of(&set), None).unwrap();
        assert_eq!(
            *facts[0].record.node,
            json!({"__typename": "Invoice", "id": "I1", "total": 5,
                   "lineItems": [{"variant": {"advert": {"taxon": {"id": "T"}}}},
                                 {"variant": {"advert": {}}}]})
        );
    }

    #[test]
    fn a_node_without_an_id_is_refused() {
        let err = invoice_facts(&json!({"legacyId": 1}), &queries(), None).unwrap_err();
        assert!(err.to_string().contains("no `id`"), "{err}");
    }
}
