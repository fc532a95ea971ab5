//! Marketplacer deliveries in, records out.
//!
//! Four shapes arrive, and this module is the only place that knows them: a webhook envelope
//! `{"id", "event_name", "payload": {"data": {"node"}}}`, a capture of one as a receiver stores it
//! (`{"headers", "body"}`, where `Marketplacer-Vertical` names the marketplace), a GraphQL
//! backfill page (`{"data": {"siteConfig", "updatedOrders"}}`) and a bare GraphQL result
//! (`{"data": {"node"}}`). Each becomes one or more
//! [`Record`]s. Backfill orders are reshaped into the records their webhooks would have carried
//! (see [`backfill`]) so that one set of mappings serves both and the same fact gets the same
//! key. [`webhook`] is the same deliveries on the wire: the request Marketplacer sends for one,
//! and its HMAC signature. Nothing here knows Klaviyo.

pub mod backfill;
mod reader;
pub mod reconcile;
pub mod schema;
pub mod webhook;

pub use reader::{Input, Line, Lines, deliveries_in, read_lines, text_of};

use serde_json::Value as Json;

/// One Marketplacer object to map, with where it came from. Stored as JSON in the inbox, so a
/// dead letter can be mapped again, after a fix, from exactly what was read.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// The delivery's identity: the envelope id, else the capture's `Idempotency-Key`. What
    /// brings no delivery id of its own (a bare GraphQL result, a backfill record) gets one
    /// from its content: see [`content_id`].
    pub delivery_id: String,
    /// The webhook event name (`create`, `update`), or `backfill`.
    pub event: String,
    /// The node's `__typename`.
    pub typename: String,
    /// The marketplace named by the delivery itself (vertical header, backfill `siteConfig`).
    pub marketplace: Option<String>,
    /// The currency named by the delivery itself (backfill `siteConfig`).
    pub currency: Option<String>,
    /// Shared, and never changed once parsed: templates read it through views (see
    /// `engine::view`), not copies.
    pub node: std::sync::Arc<Json>,
}

/// Why a line of input could not become records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("not valid UTF-8 at byte {0}")]
    NotUtf8(usize),
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("Marketplacer reported errors instead of data: {0}")]
    GraphqlErrors(String),
    #[error("not a Marketplacer delivery: {0}")]
    Unrecognised(String),
}

impl RecordError {
    /// A short, stable name for summaries ("rejected by reason").
    pub fn reason(&self) -> &'static str {
        match self {
            RecordError::NotUtf8(_) => "not-utf8",
            RecordError::NotJson(_) => "not-json",
            RecordError::GraphqlErrors(_) => "graphql-errors",
            RecordError::Unrecognised(_) => "unrecognised",
        }
    }
}

/// Parses one delivery as read from an input: bytes that are not UTF-8 reject it.
pub fn parse_line(line: &Line) -> Result<Vec<Record>, RecordError> {
    match line.not_utf8_at {
        Some(at) => Err(RecordError::NotUtf8(at)),
        None => parse_delivery(&line.text),
    }
}

/// Parses one delivery (one line of NDJSON, or one `.json` file).
pub fn parse_delivery(text: &str) -> Result<Vec<Record>, RecordError> {
    let value: Json = serde_json::from_str(text.trim_end()).map_err(|e| {
        // serde_json counts lines within this one delivery; the caller already names the
        // input line, so keep the column only.
        let message = e.to_string();
        let message = message.split(" at line ").next().unwrap_or_default();
        RecordError::NotJson(format!("{message} (column {})", e.column()))
    })?;
    records_of(value)
}

/// Detects the shape of a parsed delivery and turns it into records.
pub fn records_of(value: Json) -> Result<Vec<Record>, RecordError> {
    let Json::Object(mut object) = value else {
        return Err(RecordError::Unrecognised(
            "expected a JSON object (envelope, capture or backfill page)".into(),
        ));
    };
    if object.contains_key("headers") && object.contains_key("body") {
        // Taken, not cloned: the body is nearly all of a capture.
        let body = match object.remove("body").expect("checked above") {
            // Some receivers store the raw body as a string.
            Json::String(raw) => parse_capture_body(&raw)?,
            other => other,
        };
        let headers = object.get("headers").expect("checked above");
        return captured_records(headers, body);
    }
    if object.contains_key("payload") || object.contains_key("event_name") {
        return Ok(vec![envelope(Json::Object(object), None)?]);
    }
    if let Some(errors) = object.get("errors") {
        return Err(RecordError::GraphqlErrors(error_messages(errors)));
    }
    if let Some(Json::Object(data)) = object.get_mut("data") {
        if data.contains_key("updatedOrders") {
            return backfill::records(std::mem::take(data));
        }
        if let Some(node) = data.remove("node") {
            let mut record = node_record(node, "query", "query".into())?;
            record.delivery_id = content_id("query", &record.typename, &record.node);
            return Ok(vec![record]);
        }
    }
    Err(RecordError::Unrecognised(
        "expected a webhook envelope (`payload`), a capture (`headers` and `body`) or a backfill page (`data.updatedOrders`)".into(),
    ))
}

/// The records of a webhook as received: what [`parse_delivery`] reads from its
/// [`webhook::capture`], without writing the body into the capture and parsing it back out
/// (that round trip was a sixth of `serve`'s mapping time, perf, 4 December).
pub fn received_records(headers: &Json, body: &str) -> Result<Vec<Record>, RecordError> {
    captured_records(headers, parse_capture_body(body)?)
}

fn parse_capture_body(raw: &str) -> Result<Json, RecordError> {
    serde_json::from_str(raw).map_err(|e| RecordError::NotJson(format!("capture body: {e}")))
}

/// A capture's one record: the vertical header names the marketplace, and `Idempotency-Key`
/// is the delivery id when the envelope has none.
fn captured_records(headers: &Json, body: Json) -> Result<Vec<Record>, RecordError> {
    let header = |name: &str| header_value(headers, name);
    let mut record = envelope(body, header("Idempotency-Key"))?;
    record.marketplace = header("Marketplacer-Vertical");
    Ok(vec![record])
}

/// The delivery id of a node that arrives without one of its own (a bare GraphQL result, a
/// backfill record): `KIND:TYPE:ID:DIGEST`, ID empty when the node has none.
///
/// The id alone would not do: a result fetched again after the object changed is a new fact
/// and must be mapped again, and nodes without an id would all share one. So the digest is of
/// the node's content as parsed and written back compactly: the same content, however spaced
/// over lines, gives the same id; a changed value (or a reordered key, as keys keep their
/// order) gives another.
pub(crate) fn content_id(kind: &str, typename: &str, node: &Json) -> String {
    use sha2::{Digest, Sha256};
    let text = serde_json::to_string(node).expect("a JSON value serialises");
    let digest = Sha256::digest(text.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    let id = match node.get("id") {
        Some(Json::String(id)) => id.clone(),
        Some(Json::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    format!("{kind}:{typename}:{id}:{hex}")
}

fn header_value(headers: &Json, name: &str) -> Option<String> {
    let headers = headers.as_object()?;
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| match v {
            Json::String(s) => Some(s.clone()),
            Json::Array(values) => values.first().and_then(Json::as_str).map(str::to_owned),
            _ => None,
        })
        .filter(|s| !s.trim().is_empty())
}

fn error_messages(errors: &Json) -> String {
    let messages: Vec<&str> = errors
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|e| e.get("message").and_then(Json::as_str))
                .collect()
        })
        .unwrap_or_default();
    if messages.is_empty() {
        errors.to_string()
    } else {
        messages.join("; ")
    }
}

fn envelope(body: Json, idempotency_key: Option<String>) -> Result<Record, RecordError> {
    let Json::Object(mut body) = body else {
        return Err(RecordError::Unrecognised(
            "the envelope is not a JSON object".into(),
        ));
    };
    let id = body
        .get("id")
        .and_then(Json::as_str)
        .map(str::to_owned)
        .or(idempotency_key)
        .ok_or_else(|| {
            RecordError::Unrecognised("the envelope has no `id` and no Idempotency-Key".into())
        })?;
    let event = body
        .get("event_name")
        .and_then(Json::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut payload = body
        .remove("payload")
        .ok_or_else(|| RecordError::Unrecognised(format!("delivery {id} has no `payload`")))?;
    if let Some(errors) = payload.get("errors").filter(|e| !e.is_null()) {
        return Err(RecordError::GraphqlErrors(format!(
            "delivery {id}: {}",
            error_messages(errors)
        )));
    }
    let node = payload
        .get_mut("data")
        .and_then(|d| d.get_mut("node"))
        .map(Json::take)
        .filter(|n| !n.is_null())
        .ok_or_else(|| {
            RecordError::Unrecognised(format!("delivery {id} has no `payload.data.node`"))
        })?;
    node_record(node, &event, id)
}

fn node_record(node: Json, event: &str, delivery_id: String) -> Result<Record, RecordError> {
    let typename = node
        .get("__typename")
        .and_then(Json::as_str)
        .ok_or_else(|| {
            RecordError::Unrecognised(format!(
                "delivery {delivery_id}: the node has no `__typename` (add it to the webhook query)"
            ))
        })?
        .to_owned();
    Ok(Record {
        delivery_id,
        event: event.to_owned(),
        typename,
        marketplace: None,
        currency: None,
        node: std::sync::Arc::new(node),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node() -> Json {
        json!({"__typename": "Invoice", "id": "SW52b2ljZS0x", "legacyId": 1})
    }

    #[test]
    fn detects_an_envelope() {
        let text =
            json!({"id": "E1", "event_name": "create", "payload": {"data": {"node": node()}}})
                .to_string();
        let records = parse_delivery(&text).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].delivery_id, "E1");
        assert_eq!(records[0].event, "create");
        assert_eq!(records[0].typename, "Invoice");
        assert_eq!(records[0].marketplace, None);
    }

    #[test]
    fn detects_a_capture_and_reads_the_vertical_header_in_any_case() {
        let envelope =
            json!({"id": "E2", "event_name": "update", "payload": {"data": {"node": node()}}});
        let text = json!({"headers": {"marketplacer-vertical": "petmarket", "Idempotency-Key": "k"}, "body": envelope}).to_string();
        let records = parse_delivery(&text).unwrap();
        assert_eq!(records[0].marketplace.as_deref(), Some("petmarket"));
        assert_eq!(records[0].delivery_id, "E2");
        // A capture that stored the raw body as text.
        let text =
            json!({"headers": {"Marketplacer-Vertical": "pm"}, "body": envelope.to_string()})
                .to_string();
        assert_eq!(
            parse_delivery(&text).unwrap()[0].marketplace.as_deref(),
            Some("pm")
        );
    }

    #[test]
    fn an_envelope_without_id_uses_the_idempotency_key() {
        let text = json!({"headers": {"Idempotency-Key": "key-1"}, "body": {"event_name": "create", "payload": {"data": {"node": node()}}}}).to_string();
        assert_eq!(parse_delivery(&text).unwrap()[0].delivery_id, "key-1");
    }

    #[test]
    fn a_bare_result_gets_an_id_from_its_content() {
        let id_of = |text: &str| parse_delivery(text).unwrap()[0].delivery_id.clone();
        let bare = |node: Json| json!({"data": {"node": node}}).to_string();
        let first = id_of(&bare(node()));
        assert!(first.starts_with("query:Invoice:SW52b2ljZS0x:"), "{first}");
        // The same content, however it is laid out, is the same delivery.
        let spread = serde_json::to_string_pretty(&json!({"data": {"node": node()}})).unwrap();
        assert_eq!(id_of(&spread), first);
        // Other content is another delivery, even for the same node.
        let mut paid = node();
        paid["statusFlags"] = json!(["PAID"]);
        assert_ne!(id_of(&bare(paid)), first);
        let no_id = json!({"__typename": "Invoice", "legacyId": 2});
        let other = json!({"__typename": "Invoice", "legacyId": 3});
        assert_ne!(id_of(&bare(no_id)), id_of(&bare(other)));
    }

    #[test]
    fn graphql_errors_are_reported_with_their_messages() {
        let text = json!({"id": "E3", "event_name": "create", "payload": {"errors": [{"message": "Field 'x' doesn't exist on type 'Invoice'"}]}}).to_string();
        let err = parse_delivery(&text).unwrap_err();
        assert_eq!(err.reason(), "graphql-errors");
        assert!(err.to_string().contains("Field 'x' doesn't exist"), "{err}");
        let err =
            parse_delivery(&json!({"errors": [{"message": "throttled"}]}).to_string()).unwrap_err();
        assert_eq!(err, RecordError::GraphqlErrors("throttled".into()));
    }

    #[test]
    fn rejects_what_is_not_a_delivery() {
        assert_eq!(
            parse_delivery("{not json").unwrap_err().reason(),
            "not-json"
        );
        assert_eq!(
            parse_delivery("[1,2]").unwrap_err().reason(),
            "unrecognised"
        );
        assert_eq!(
            parse_delivery("{\"a\": 1}").unwrap_err().reason(),
            "unrecognised"
        );
        let no_node =
            json!({"id": "E4", "event_name": "create", "payload": {"data": {}}}).to_string();
        assert!(
            parse_delivery(&no_node)
                .unwrap_err()
                .to_string()
                .contains("payload.data.node")
        );
        let no_type =
            json!({"id": "E5", "event_name": "create", "payload": {"data": {"node": {"id": "x"}}}})
                .to_string();
        assert!(
            parse_delivery(&no_type)
                .unwrap_err()
                .to_string()
                .contains("__typename")
        );
    }
}
