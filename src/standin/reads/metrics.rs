//! `GET /api/metrics` (`get_metrics`): one metric per name of the events accepted (all of
//! them the API integration's, since every event reaches the stand-in through the API), and
//! the metrics and flows a test planted; filtered by `integration.name` / `integration.category`
//! (`equals` only, as the spec lists), 200 a page, flows in `included[]` with
//! `include=flow-triggers`.
//!
//! Why it matters to reconciliation: Klaviyo keeps one metric per name *and sending
//! mechanism*, so a second "Placed Order" from another integration is a second source of the
//! same revenue, and a live flow on a metric raises the cost of its missing events. Both are
//! read here, and both can only be planted (`Drift::ForeignMetric`, `Drift::Flow`).
//!
//! Unverified: the `integration` object's shape. The spec leaves it an untyped object; the
//! stand-in answers `{"object": "integration", "id", "name", "category"}` (as third-party
//! captures of Klaviyo's answers show), with `name` and `category` `API` for the API's own.
//! `created` and `updated` are when the stand-in first saw the metric.

use super::super::errors::{ApiError, Reply};
use super::super::filter::{Field, Kind, Literal, Op};
use super::super::store::{Flow, Metric, Store, metric_id};
use super::{Query, filter, known_parameters, links, list, relationship, sparse};
use axum::http::StatusCode;
use serde_json::{Map, Value as Json, json};

const PARAMETERS: &[&str] = &[
    "fields[flow]",
    "fields[metric]",
    "filter",
    "include",
    "page[cursor]",
];

const FILTER: &[Field] = &[
    Field {
        name: "integration.name",
        ops: &[Op::Equals],
        kind: Kind::Text,
    },
    Field {
        name: "integration.category",
        ops: &[Op::Equals],
        kind: Kind::Text,
    },
];

/// "Returns a maximum of 200 results per page"; the operation takes no `page[size]`.
const PAGE: usize = 200;

/// `GET /api/metrics`.
pub(crate) fn get(query: &Query, store: &Store, base_url: &str) -> Reply {
    match answer(query, store, base_url) {
        Ok(document) => Reply::json(StatusCode::OK, document),
        Err(error) => Reply::error(*error),
    }
}

fn answer(query: &Query, store: &Store, base_url: &str) -> Result<Json, Box<ApiError>> {
    known_parameters(query, PARAMETERS)?;
    let terms = filter(query, FILTER)?;
    let offset = super::cursor(query)?;
    let metric_fields = list(
        query,
        "fields[metric]",
        &["created", "id", "integration", "name", "updated"],
    )?;
    let flow_fields = list(
        query,
        "fields[flow]",
        &[
            "archived",
            "created",
            "id",
            "name",
            "status",
            "trigger_type",
            "updated",
        ],
    )?;
    let include = list(query, "include", &["flow-triggers"])?.is_some();
    let matching: Vec<&Metric> = store
        .metrics()
        .iter()
        .filter(|m| {
            terms.iter().all(|t| {
                let wanted = match &t.value {
                    Literal::Str(s) => s.as_str(),
                    _ => return false,
                };
                match t.field.as_str() {
                    "integration.name" => m.integration.name == wanted,
                    _ => m.integration.category == wanted,
                }
            })
        })
        .collect();
    let page: Vec<&Metric> = matching.iter().skip(offset).take(PAGE).copied().collect();
    let data: Vec<Json> = page
        .iter()
        .map(|m| {
            let flows: Option<Vec<&Flow>> = include.then(|| triggered(store, m));
            resource(m, base_url, metric_fields.as_deref(), flows.as_deref())
        })
        .collect();
    let mut document = json!({
        "data": data,
        "links": links(base_url, "/api/metrics/", query, offset, PAGE, matching.len()),
    });
    if include {
        let flows: Vec<Json> = page
            .iter()
            .flat_map(|m| triggered(store, m))
            .map(|f| flow_resource(f, base_url, flow_fields.as_deref()))
            .collect();
        document["included"] = Json::Array(flows);
    }
    Ok(document)
}

/// The flows a metric triggers, in the order they were planted.
fn triggered<'a>(store: &'a Store, metric: &Metric) -> Vec<&'a Flow> {
    store
        .flows()
        .iter()
        .filter(|f| f.trigger_metric_id == metric.id)
        .collect()
}

/// A metric as Klaviyo lists it (`MetricResponseObjectResource`); with `flows`, its
/// `flow-triggers` relationship carries their identifiers.
pub(crate) fn resource(
    metric: &Metric,
    base_url: &str,
    fields: Option<&[String]>,
    flows: Option<&[&Flow]>,
) -> Json {
    let mut attributes = Map::new();
    attributes.insert("name".into(), json!(metric.name));
    attributes.insert("created".into(), json!(metric.created));
    attributes.insert("updated".into(), json!(metric.created));
    attributes.insert(
        "integration".into(),
        json!({
            "object": "integration",
            "id": metric_id(&format!("integration\u{0}{}", metric.integration.name)),
            "name": metric.integration.name,
            "category": metric.integration.category,
        }),
    );
    let path = format!("/api/metrics/{}/", metric.id);
    let data = flows.map(|flows| {
        flows
            .iter()
            .map(|f| json!({"type": "flow", "id": f.id}))
            .collect::<Vec<_>>()
            .into()
    });
    json!({
        "type": "metric",
        "id": metric.id,
        "attributes": sparse(attributes, fields),
        "relationships": {
            "flow-triggers": relationship(base_url, &path, "flow-triggers", data),
        },
        "links": {"self": format!("{base_url}{path}")},
    })
}

/// A flow as Klaviyo includes it (`FlowResponseObjectResource`).
fn flow_resource(flow: &Flow, base_url: &str, fields: Option<&[String]>) -> Json {
    let mut attributes = Map::new();
    attributes.insert("name".into(), json!(flow.name));
    attributes.insert("status".into(), json!(flow.status.as_str()));
    attributes.insert("archived".into(), json!(false));
    attributes.insert("created".into(), json!(flow.created));
    attributes.insert("updated".into(), json!(flow.created));
    attributes.insert("trigger_type".into(), json!("Metric"));
    json!({
        "type": "flow",
        "id": flow.id,
        "attributes": sparse(attributes, fields),
        "links": {"self": format!("{base_url}/api/flows/{}/", flow.id)},
    })
}
