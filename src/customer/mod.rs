//! One person's history, for customer service: `marketsync customer` and the status page's
//! search box.
//!
//! When a shopper writes in ("I never got my shipping email", "why am I getting marketing?"),
//! the agent needs, in one place and in plain words, what Marketplacer told us about that
//! person, what we sent Klaviyo and when, what Klaviyo answered, and what consent evidence we
//! hold. This module turns the store's [`PersonHistory`] (opaque rows) into that view: it knows
//! what a delivery is (its type, marketplace and order), what a request means (a metric, a
//! profile update, an opt-in), and asks the mappings themselves why an order gave no opt-in.
//!
//! Privacy: it shows only what the store already holds, and logs nothing; the person is found
//! by the same normalisation the mappings apply, never by a looser match.

pub mod klaviyo;

use crate::engine::Engine;
use crate::engine::explain::{Explanation, Outcome};
use crate::engine::filters::{normalise_email, normalise_phone};
use crate::klaviyo::{Endpoint, email_key, phone_key};
use crate::source::Record;
use crate::store::{
    CONSENT_ENDPOINT, PersonDelivery, PersonHistory, PersonRequest, Store, StoreError,
};
use serde::Serialize;
use serde_json::Value as Json;

/// At most this many deliveries are shown, newest first; the view says when older ones were
/// left out.
pub const DELIVERY_LIMIT: usize = 200;

/// What a lookup could not do.
#[derive(Debug, thiserror::Error)]
pub enum CustomerError {
    #[error(
        "`{given}` is neither an email address nor a phone number that can be read (region \
         {region}); give the address as the shopper wrote it, or the number with its country \
         code"
    )]
    NotAnIdentifier { given: String, region: String },
    #[error("state store: {0}")]
    Store(#[from] StoreError),
}

/// Who was looked up, as the mappings normalise it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "lowercase")]
pub enum Lookup {
    Email(String),
    Phone(String),
}

impl Lookup {
    /// An email address (anything with an `@`), normalised as the `email` filter does, or a
    /// phone number, read as the `e164` filter does with `region` when it has no country code.
    pub fn parse(given: &str, region: &str) -> Result<Lookup, CustomerError> {
        let not_one = || CustomerError::NotAnIdentifier {
            given: given.trim().to_owned(),
            region: region.to_owned(),
        };
        if given.contains('@') {
            return normalise_email(given)
                .map(Lookup::Email)
                .ok_or_else(not_one);
        }
        normalise_phone(given, region)
            .map(Lookup::Phone)
            .ok_or_else(not_one)
    }

    pub fn key(&self) -> String {
        match self {
            Lookup::Email(email) => email_key(email),
            Lookup::Phone(phone) => phone_key(phone),
        }
    }

    pub fn value(&self) -> &str {
        match self {
            Lookup::Email(value) | Lookup::Phone(value) => value,
        }
    }
}

/// Everything the store holds about one person, ready to show.
#[derive(Debug, Clone, Serialize)]
pub struct CustomerView {
    pub lookup: Lookup,
    /// Whether any delivery concerned them.
    pub found: bool,
    pub identity: Identity,
    /// Deliveries that concerned them, newest first.
    pub timeline: Vec<Entry>,
    /// Older deliveries were left out (more than [`DELIVERY_LIMIT`]).
    pub older_left_out: bool,
    /// The initial opt-in: per order, what it carried and what became of it.
    pub consent: Vec<ConsentEvidence>,
    /// Requests flagged for review and not yet resolved.
    pub open_exceptions: Vec<String>,
    /// Dead letters not yet requeued or discarded.
    pub open_dead_letters: Vec<String>,
    pub warnings: Vec<String>,
    /// Requests written before the person index existed are still being indexed: older
    /// history may be missing.
    pub index_incomplete: bool,
}

/// The person as we normalise them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub emails: Vec<String>,
    /// E.164.
    pub phones: Vec<String>,
    pub marketplaces: Vec<String>,
}

/// One delivery and what came of it.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// RFC 3339, UTC.
    pub received_at: String,
    pub received_at_ms: i64,
    /// The record's `__typename` (`Invoice`, `Shipment`, `RefundRequest`, ...).
    #[serde(rename = "type")]
    pub typename: String,
    /// `create`, `update`, `backfill`.
    pub event: String,
    pub marketplace: String,
    pub order: Option<String>,
    pub delivery_id: String,
    /// Where it was read (`file:line`, or the webhook receiver).
    pub origin: String,
    pub requests: Vec<RequestView>,
    /// Mappings that failed for this delivery (dead letters written at intake).
    pub failures: Vec<String>,
    pub warnings: Vec<String>,
}

/// What became of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RequestStatus {
    Queued,
    Sent,
    DeadLetter,
    /// Replaced by a newer update of the same profile before it was sent.
    Superseded,
    DroppedOnce,
    DroppedStale,
    /// An update as new for the same profile was already queued.
    DroppedCoalesced,
}

impl RequestStatus {
    pub fn label(self) -> &'static str {
        match self {
            RequestStatus::Queued => "queued",
            RequestStatus::Sent => "sent",
            RequestStatus::DeadLetter => "dead letter",
            RequestStatus::Superseded => "superseded",
            RequestStatus::DroppedOnce => "dropped: once per key",
            RequestStatus::DroppedStale => "dropped: stale",
            RequestStatus::DroppedCoalesced => "dropped: newer update queued",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RequestView {
    pub mapping: String,
    pub endpoint: String,
    /// The metric (`Fulfilled Order`), `profile update` or `email opt-in`.
    pub what: String,
    /// The event's `unique_id`, else the once key.
    pub key: Option<String>,
    pub status: RequestStatus,
    /// In plain words: when it was accepted and Klaviyo's answer, why it is a dead letter,
    /// what it waits for, why it was dropped.
    pub detail: String,
    /// When it was accepted (sent), or when it was queued or dropped. RFC 3339.
    pub at: String,
    pub attempts: u32,
    /// Klaviyo's HTTP status, when it answered.
    pub klaviyo_status: Option<u16>,
    pub exceptions: Vec<String>,
    /// The body as queued (absent for a dropped request, which the store does not keep).
    #[serde(skip)]
    pub body: Option<Json>,
}

/// The initial opt-in of one order.
#[derive(Debug, Clone, Serialize)]
pub struct ConsentEvidence {
    pub marketplace: String,
    pub order: Option<String>,
    pub delivery_id: String,
    pub mapping: String,
    /// `sent`, `queued`, `dead-letter`, `dropped-once`, ... or `none` when the order gave no
    /// opt-in request.
    pub outcome: String,
    /// What the order carried, as the mapping read it (`accepts_marketing = "yes"`).
    pub evidence: String,
    /// The consent sent (`SUBSCRIBED`) and its `consented_at`, when a request was made.
    pub consent: Option<String>,
    pub consented_at: Option<String>,
    /// When Klaviyo accepted it (RFC 3339).
    pub accepted_at: Option<String>,
    pub why: String,
}

/// Reads a person's history: every delivery noted under their key (a phone also brings the
/// email addresses it was seen with), newest first, in plain words.
pub fn read(store: &Store, engine: &Engine, lookup: &Lookup) -> Result<CustomerView, StoreError> {
    let mut keys = vec![lookup.key()];
    if let Lookup::Phone(_) = lookup {
        for key in store.keys_seen_with(&lookup.key())? {
            if key.starts_with("email:") && !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    let history = store.person_history(&keys, DELIVERY_LIMIT)?;
    let index_incomplete = store.people_backfill_pending()?;
    Ok(view(lookup, &history, engine, index_incomplete))
}

/// Indexes the people of requests written before the person index, one batch at a time,
/// until done: `marketsync customer` and `serve` call it, so an upgraded file answers fully.
pub fn backfill(store: &mut Store, batch: usize) -> Result<bool, StoreError> {
    store.backfill_people(batch, crate::klaviyo::people_in_text)
}

fn view(
    lookup: &Lookup,
    history: &PersonHistory,
    engine: &Engine,
    index_incomplete: bool,
) -> CustomerView {
    let mut identity = Identity::default();
    let mut timeline = Vec::new();
    let mut consent = Vec::new();
    let (mut open_exceptions, mut open_dead_letters, mut warnings) = (vec![], vec![], vec![]);
    let consent_mappings: Vec<String> = engine
        .mapping_targets()
        .into_iter()
        .filter(|(_, _, endpoint)| *endpoint == Endpoint::BulkSubscribeProfiles)
        .map(|(name, _, _)| name.to_string())
        .collect();
    for delivery in &history.deliveries {
        for key in &delivery.people {
            let (list, value) = match key.split_once(':') {
                Some(("email", v)) => (&mut identity.emails, v),
                Some(("phone", v)) => (&mut identity.phones, v),
                _ => continue,
            };
            if !list.iter().any(|known| known == value) {
                list.push(value.to_owned());
            }
        }
        if !identity.marketplaces.contains(&delivery.marketplace) {
            identity.marketplaces.push(delivery.marketplace.clone());
        }
        let record: Option<Record> = serde_json::from_str(&delivery.text).ok();
        let entry = entry(delivery, record.as_ref());
        for request in &entry.requests {
            for exception in &request.exceptions {
                open_exceptions.push(format!(
                    "{} (order {}): {exception}",
                    request.what,
                    entry.order.as_deref().unwrap_or("?")
                ));
            }
        }
        for request in &delivery.requests {
            if let Some(letter) = request.letter.as_ref().filter(|l| l.closed.is_none()) {
                open_dead_letters.push(format!(
                    "dead letter {}: {} ({}, order {}): {}",
                    letter.id,
                    letter.category,
                    request.mapping,
                    entry.order.as_deref().unwrap_or("?"),
                    letter.reason
                ));
            }
        }
        for letter in delivery.letters.iter().filter(|l| l.closed.is_none()) {
            open_dead_letters.push(format!(
                "dead letter {}: {} ({}, order {}): {}",
                letter.id,
                letter.category,
                letter.mapping.as_deref().unwrap_or("no mapping"),
                entry.order.as_deref().unwrap_or("?"),
                letter.reason
            ));
        }
        for warning in &entry.warnings {
            warnings.push(format!(
                "{} {} (order {}): {warning}",
                entry.marketplace,
                entry.typename,
                entry.order.as_deref().unwrap_or("?")
            ));
        }
        for mapping in &consent_mappings {
            if let Some(evidence) =
                consent_evidence(mapping, delivery, &entry, record.as_ref(), engine)
            {
                consent.push(evidence);
            }
        }
        timeline.push(entry);
    }
    identity.emails.sort();
    identity.phones.sort();
    identity.marketplaces.sort();
    CustomerView {
        lookup: lookup.clone(),
        found: !history.deliveries.is_empty(),
        identity,
        timeline,
        older_left_out: history.more,
        consent,
        open_exceptions,
        open_dead_letters,
        warnings,
        index_incomplete,
    }
}

fn entry(delivery: &PersonDelivery, record: Option<&Record>) -> Entry {
    let mut requests: Vec<RequestView> = delivery.requests.iter().map(request_view).collect();
    requests.extend(delivery.dropped.iter().map(|dropped| {
        let status = match dropped.reason.as_str() {
            "once" => RequestStatus::DroppedOnce,
            "stale" => RequestStatus::DroppedStale,
            _ => RequestStatus::DroppedCoalesced,
        };
        let detail = match status {
            RequestStatus::DroppedOnce => format!(
                "not sent: `{}` fires once per key, and {} was sent or queued before",
                dropped.mapping,
                dropped.once_key.as_deref().unwrap_or("its key")
            ),
            RequestStatus::DroppedStale => {
                "not sent: a newer update of this profile was already applied".to_owned()
            }
            _ => "not sent: an update as new for this profile was already queued".to_owned(),
        };
        RequestView {
            what: what_without_body(&dropped.endpoint, &dropped.mapping),
            mapping: dropped.mapping.clone(),
            endpoint: dropped.endpoint.clone(),
            key: dropped.once_key.clone(),
            status,
            detail,
            at: iso(dropped.at),
            attempts: 0,
            klaviyo_status: None,
            exceptions: Vec::new(),
            body: None,
        }
    }));
    Entry {
        received_at: iso(delivery.received_at),
        received_at_ms: delivery.received_at,
        typename: record.map_or_else(|| "?".to_owned(), |r| r.typename.clone()),
        event: record.map_or_else(String::new, |r| r.event.clone()),
        marketplace: delivery.marketplace.clone(),
        order: record.and_then(order_of),
        delivery_id: delivery.delivery_id.clone(),
        origin: delivery.origin.clone(),
        requests,
        failures: delivery
            .letters
            .iter()
            .map(|l| {
                format!(
                    "{}: {} ({})",
                    l.mapping.as_deref().unwrap_or("no mapping"),
                    l.reason,
                    l.category
                )
            })
            .collect(),
        warnings: delivery.warnings.iter().map(|(m, _)| m.clone()).collect(),
    }
}

fn request_view(request: &PersonRequest) -> RequestView {
    let body: Option<Json> = serde_json::from_str(&request.body).ok();
    let answer = request.last_attempt.as_ref();
    let (status, at, detail) = match request.state.as_str() {
        "sent" => {
            let (at, code) = request.sent.unwrap_or((request.created_at, 0));
            (
                RequestStatus::Sent,
                at,
                format!("Klaviyo accepted it ({code}) at {}", iso(at)),
            )
        }
        "dead" => {
            let reason = request.letter.as_ref().map_or_else(
                || request.last_error.clone().unwrap_or_default(),
                |l| {
                    let state = match &l.closed {
                        None => "open".to_owned(),
                        Some(closed) => match &closed.reason {
                            Some(reason) => format!("discarded: {reason}"),
                            None => "requeued".to_owned(),
                        },
                    };
                    format!("{} ({}, letter {} {state})", l.reason, l.category, l.id)
                },
            );
            (
                RequestStatus::DeadLetter,
                request
                    .letter
                    .as_ref()
                    .map_or(request.created_at, |l| l.created_at),
                format!("not sent: {reason}"),
            )
        }
        "superseded" => (
            RequestStatus::Superseded,
            request.created_at,
            "replaced by a newer update of this profile before it was sent".to_owned(),
        ),
        _ => {
            let detail = match (&request.last_error, answer) {
                (Some(error), _) => format!(
                    "waiting; tried {} time(s), last answer: {error}; next try at {}",
                    request.attempts.max(1),
                    iso(request.next_attempt_at)
                ),
                (None, _) => "waiting to be sent".to_owned(),
            };
            (RequestStatus::Queued, request.created_at, detail)
        }
    };
    RequestView {
        what: body.as_ref().map_or_else(
            || what_without_body(&request.endpoint, &request.mapping),
            |b| what(&request.endpoint, &request.mapping, b),
        ),
        mapping: request.mapping.clone(),
        endpoint: request.endpoint.clone(),
        key: request
            .unique_id
            .clone()
            .or_else(|| request.once_key.clone()),
        status,
        detail,
        at: iso(at),
        attempts: request.attempts,
        klaviyo_status: request
            .sent
            .map(|(_, code)| code)
            .or_else(|| answer.and_then(|a| a.status)),
        exceptions: request
            .exceptions
            .iter()
            .filter(|e| e.closed.is_none())
            .map(|e| format!("{} (flagged {})", e.kind, iso(e.flagged_at)))
            .collect(),
        body,
    }
}

/// What a request is, in a CX agent's words.
fn what(endpoint: &str, mapping: &str, body: &Json) -> String {
    body.pointer("/data/attributes/metric/data/attributes/name")
        .and_then(Json::as_str)
        .map_or_else(|| what_without_body(endpoint, mapping), str::to_owned)
}

fn what_without_body(endpoint: &str, mapping: &str) -> String {
    match Endpoint::parse(endpoint) {
        Some(Endpoint::CreateOrUpdateProfile | Endpoint::BulkImportProfiles) => {
            "profile update".to_owned()
        }
        Some(Endpoint::BulkSubscribeProfiles) => "email opt-in".to_owned(),
        _ => format!("{mapping} event"),
    }
}

/// The order a Marketplacer record belongs to: an invoice's order, a shipment's or refund's
/// invoice's order, or the order itself.
fn order_of(record: &Record) -> Option<String> {
    let node = &record.node;
    let pointers: &[&str] = if record.typename == "Order" {
        &["/legacyId"]
    } else {
        &["/order/legacyId", "/invoice/order/legacyId"]
    };
    pointers
        .iter()
        .find_map(|p| node.pointer(p))
        .map(|v| match v {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        })
}

/// The opt-in evidence of one consent mapping for one delivery: what it sent (or why it did
/// not), with what the order carried. `None` when the mapping does not read this delivery
/// (a shipment, say).
fn consent_evidence(
    mapping: &str,
    delivery: &PersonDelivery,
    entry: &Entry,
    record: Option<&Record>,
    engine: &Engine,
) -> Option<ConsentEvidence> {
    let explanation = record.and_then(|r| engine.explain(mapping, r));
    let request = entry
        .requests
        .iter()
        .find(|r| r.mapping == mapping && r.endpoint == CONSENT_ENDPOINT);
    if request.is_none() && !explanation.as_ref().is_some_and(|e| e.matched) {
        return None;
    }
    let evidence = explanation.as_ref().map_or_else(
        || "the delivery could not be read again".to_owned(),
        read_by_when,
    );
    let stored = delivery
        .requests
        .iter()
        .find(|r| r.mapping == mapping && r.endpoint == CONSENT_ENDPOINT);
    let mut found = ConsentEvidence {
        marketplace: entry.marketplace.clone(),
        order: entry.order.clone(),
        delivery_id: entry.delivery_id.clone(),
        mapping: mapping.to_owned(),
        outcome: "none".to_owned(),
        evidence,
        consent: None,
        consented_at: None,
        accepted_at: stored.and_then(|r| r.consent_accepted_at).map(iso),
        why: String::new(),
    };
    match request {
        Some(request) => {
            found.outcome = serde_json::to_value(request.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            if let Some(marketing) = request.body.as_ref().and_then(|b| {
                b.pointer(
                    "/data/attributes/profiles/data/0/attributes/subscriptions/email/marketing",
                )
            }) {
                found.consent = marketing["consent"].as_str().map(str::to_owned);
                found.consented_at = marketing["consented_at"].as_str().map(str::to_owned);
            }
            found.why = match request.status {
                RequestStatus::Sent => format!(
                    "the order carried an explicit opt-in; Klaviyo accepted the subscription at {}",
                    request.at
                ),
                RequestStatus::DroppedOnce => format!(
                    "the order carried an opt-in, but one was already sent for this person on \
                     {} (once per key: {})",
                    entry.marketplace,
                    request.key.as_deref().unwrap_or("?")
                ),
                _ => format!("the order carried an explicit opt-in; {}", request.detail),
            };
        }
        None => {
            found.why = match explanation.as_ref().map(|e| &e.outcome) {
                Some(Outcome::WhenFalse) => {
                    "no opt-in sent: the order carried no explicit opt-in (only an explicit \
                     yes subscribes anyone)"
                        .to_owned()
                }
                Some(Outcome::Rejected { message, .. }) => {
                    format!("no opt-in sent: the mapping failed for this order: {message}")
                }
                Some(Outcome::Requests { .. }) => "no opt-in sent when it arrived, though \
                     today's mappings would send one (they changed since)"
                    .to_owned(),
                Some(Outcome::NoItems) | Some(Outcome::NotMatched { .. }) | None => {
                    "no opt-in sent".to_owned()
                }
            };
        }
    }
    Some(found)
}

/// The values `when` read, and what they were computed from: `opted_in = false
/// (accepts_marketing = "no")`.
fn read_by_when(explanation: &Explanation) -> String {
    let value_of = |name: &str| -> Option<(Option<Json>, Vec<String>)> {
        if let Some(step) = explanation.compute.iter().find(|c| c.name == name) {
            return Some((step.value.clone(), step.reads.clone()));
        }
        explanation
            .selections
            .iter()
            .find(|s| s.name == name)
            .map(|s| (s.value.clone(), Vec::new()))
    };
    let show = |value: &Option<Json>| value.as_ref().map_or("none".to_owned(), Json::to_string);
    let Some(when) = &explanation.when else {
        return "the mapping has no `when`".to_owned();
    };
    let parts: Vec<String> = when
        .reads
        .iter()
        .filter_map(|name| {
            let (value, reads) = value_of(name)?;
            let inner: Vec<String> = reads
                .iter()
                .filter_map(|r| value_of(r).map(|(v, _)| format!("{r} = {}", show(&v))))
                .collect();
            Some(if inner.is_empty() {
                format!("{name} = {}", show(&value))
            } else {
                format!("{name} = {} ({})", show(&value), inner.join(", "))
            })
        })
        .collect();
    if parts.is_empty() {
        format!("when: {}", when.expression)
    } else {
        parts.join(", ")
    }
}

/// Unix ms as RFC 3339 UTC, seconds.
pub fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_and_phones_are_read_as_the_mappings_read_them() {
        assert_eq!(
            Lookup::parse(" Zoe.Kowalski@Example.COM ", "AU").unwrap(),
            Lookup::Email("zoe.kowalski@example.com".into())
        );
        for phone in [
            "0412 345 678",
            "+61 412 345 678",
            "(04) 1234 5678",
            "+61412345678",
        ] {
            assert_eq!(
                Lookup::parse(phone, "AU").unwrap(),
                Lookup::Phone("+61412345678".into()),
                "{phone}"
            );
        }
        assert_eq!(
            Lookup::parse("0412 345 678", "AU").unwrap().key(),
            "phone:+61412345678"
        );
        let err = Lookup::parse("zoe at example", "AU")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("neither an email address nor a phone number"),
            "{err}"
        );
        assert!(Lookup::parse("zoe@", "AU").is_err());
    }
}
