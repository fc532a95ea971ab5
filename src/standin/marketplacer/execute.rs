//! Answers a validated query from the data: one general executor over the object graph.
//!
//! apollo-compiler's executor walks the query (aliases, fragments, inline fragments on
//! interfaces and unions, `__typename`, null propagation, error paths); this module only says
//! what each field of each object is. A stored field is what the data holds; a connection field
//! pages its list; the root fields filter, sort and page the objects of their type as
//! Marketplacer documents (`InvoiceFilters`, `RefundRequestFilters`, …). Nothing here knows a
//! particular query, so any selection a client makes is answered the same way.
//!
//! Paging follows graphql-ruby, which Marketplacer's error shapes show it runs (the
//! `undefinedField` extensions of S5 in `notes/marketplacer.md`): a cursor is the item's
//! 1-based position in the result, base64url without padding (`MQ` for the first, as in the
//! notes' §6.4 sample); `first` over the maximum is cut to the maximum without an error
//! (graphql-ruby's `max_page_size`), and a negative one to 0. The default page is 50 and the
//! maximum 500 (api.marketplacer.com/docs/operator-api/overview). `before` and `last` are
//! refused: Marketplacer documents them as "Not in use - backwards pagination not supported".

use super::data::{Data, Embedded, Object, Value, instant, is_connection};
use super::{KlaviyoSettings, Site, WebhookState};
use apollo_compiler::ast::Type;
use apollo_compiler::resolvers::{FieldError, ObjectValue, ResolveInfo, ResolvedValue};
use apollo_compiler::response::{JsonMap, JsonValue};
use base64::Engine as _;
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// Marketplacer's page sizes.
pub(crate) const DEFAULT_PAGE_SIZE: usize = 50;
pub(crate) const MAX_PAGE_SIZE: usize = 500;

/// What a request is answered from.
pub(crate) struct Ctx<'a> {
    pub(crate) data: &'a Data,
    pub(crate) site: &'a Site,
    pub(crate) klaviyo: &'a KlaviyoSettings,
    pub(crate) webhooks: &'a [WebhookState],
    /// Root fields made to fail, with the message their error carries.
    pub(crate) failing: &'a BTreeMap<String, String>,
}

/// One item of a page.
#[derive(Clone, Copy)]
enum Item<'a> {
    Stored(usize),
    Value(&'a Value),
    Webhook(&'a WebhookState),
}

/// One page of a connection, cut from the whole result.
struct Page<'a> {
    items: Vec<Item<'a>>,
    /// Position of the first item in the whole result (0-based).
    offset: usize,
    total: usize,
    has_next: bool,
    has_previous: bool,
}

/// The objects the executor sees.
enum Obj<'a> {
    Query(&'a Ctx<'a>),
    Stored(&'a Ctx<'a>, usize),
    Embedded(&'a Ctx<'a>, String, &'a Embedded),
    /// Made for this request (the site's settings).
    Made(&'a Ctx<'a>, &'static str, Embedded),
    /// A connection page, with the connection's type name.
    Page(&'a Ctx<'a>, &'a str, Page<'a>),
    /// An edge, with the edge's type name.
    Edge(&'a Ctx<'a>, &'a str, Item<'a>, String),
    PageInfo {
        has_next: bool,
        has_previous: bool,
        start: Option<String>,
        end: Option<String>,
    },
    Webhook(&'a Ctx<'a>, &'a WebhookState),
}

/// The root object of a query.
pub(crate) fn root<'a>(ctx: &'a Ctx<'a>) -> impl ObjectValue + 'a {
    Obj::Query(ctx)
}

fn error(message: impl Into<String>) -> FieldError {
    FieldError {
        message: message.into(),
    }
}

impl<'a> ObjectValue for Obj<'a> {
    fn type_name(&self) -> &str {
        match self {
            Obj::Query(_) => "Query",
            Obj::Stored(ctx, index) => &ctx.data.objects[*index].type_name,
            Obj::Embedded(_, type_name, _) => type_name,
            Obj::Made(_, type_name, _) => type_name,
            Obj::Page(_, type_name, _) | Obj::Edge(_, type_name, ..) => type_name,
            Obj::PageInfo { .. } => "PageInfo",
            Obj::Webhook(..) => "Webhook",
        }
    }

    fn resolve_field<'b>(
        &'b self,
        info: &'b ResolveInfo<'b>,
    ) -> Result<ResolvedValue<'b>, FieldError> {
        match self {
            Obj::Query(ctx) => query_field(ctx, info),
            Obj::Stored(ctx, index) => {
                let object = &ctx.data.objects[*index];
                data_field(
                    ctx,
                    &object.type_name,
                    Some(&object.id),
                    &|name| object.field(name),
                    info,
                )
            }
            Obj::Embedded(ctx, type_name, embedded) => data_field(
                ctx,
                type_name,
                None,
                &|name| embedded.fields.get(name),
                info,
            ),
            Obj::Made(ctx, type_name, embedded) => data_field(
                ctx,
                type_name,
                None,
                &|name| embedded.fields.get(name),
                info,
            ),
            Obj::Page(ctx, _, page) => page_field(ctx, page, info),
            Obj::Edge(ctx, _, item, cursor) => match info.field_name() {
                "cursor" => Ok(ResolvedValue::leaf(cursor.as_str())),
                "node" => item_value(ctx, *item, info.field_definition().ty.item_type()),
                _ => Err(self.unknown_field_error(info)),
            },
            Obj::PageInfo {
                has_next,
                has_previous,
                start,
                end,
            } => Ok(match info.field_name() {
                "hasNextPage" => ResolvedValue::leaf(*has_next),
                "hasPreviousPage" => ResolvedValue::leaf(*has_previous),
                "startCursor" => {
                    ResolvedValue::leaf(start.clone().map_or(JsonValue::Null, Into::into))
                }
                "endCursor" => ResolvedValue::leaf(end.clone().map_or(JsonValue::Null, Into::into)),
                _ => return Err(self.unknown_field_error(info)),
            }),
            Obj::Webhook(ctx, webhook) => webhook_field(ctx, webhook, info),
        }
    }
}

/// A field of an object the data holds (stored or embedded).
fn data_field<'b>(
    ctx: &'b Ctx<'b>,
    type_name: &str,
    id: Option<&'b str>,
    get: &dyn Fn(&str) -> Option<&'b Value>,
    info: &'b ResolveInfo<'b>,
) -> Result<ResolvedValue<'b>, FieldError> {
    let name = info.field_name();
    let ty = &info.field_definition().ty;
    if name == "id" {
        return match id {
            Some(id) => Ok(ResolvedValue::leaf(id)),
            None => missing(ty, type_name, id, name),
        };
    }
    if !ty.is_list() && is_connection(ty.inner_named_type()) {
        let items: Vec<Item<'b>> = match get(name) {
            Some(Value::List(items)) => items.iter().map(Item::Value).collect(),
            _ => Vec::new(),
        };
        let page = Page::cut(items, info.arguments())?;
        return Ok(ResolvedValue::object(Obj::Page(
            ctx,
            ty.inner_named_type().as_str(),
            page,
        )));
    }
    match get(name) {
        None => missing(ty, type_name, id, name),
        Some(Value::Leaf(value)) if value.is_null() => missing(ty, type_name, id, name),
        Some(value) => resolve_value(ctx, ty, value),
    }
}

/// What a field the data lacks answers: an empty list, null, or (for a non-null field) an
/// error saying so, rather than a value the stand-in would have to invent.
fn missing<'b>(
    ty: &Type,
    type_name: &str,
    id: Option<&str>,
    name: &str,
) -> Result<ResolvedValue<'b>, FieldError> {
    if ty.is_list() {
        return Ok(ResolvedValue::list(std::iter::empty()));
    }
    if !ty.is_non_null() {
        return Ok(ResolvedValue::null());
    }
    let of = id.map(|id| format!(" of {id}")).unwrap_or_default();
    Err(error(format!(
        "The Marketplacer stand-in's data has no {type_name}.{name}{of} (non-null): no capture it was loaded from selected it"
    )))
}

fn resolve_value<'b>(
    ctx: &'b Ctx<'b>,
    ty: &'b Type,
    value: &'b Value,
) -> Result<ResolvedValue<'b>, FieldError> {
    match value {
        Value::Leaf(JsonValue::Array(items)) if ty.is_list() => Ok(ResolvedValue::list(
            items.iter().map(|item| ResolvedValue::leaf(item.clone())),
        )),
        Value::Leaf(value) => Ok(ResolvedValue::leaf(value.clone())),
        Value::Ref(index) => Ok(ResolvedValue::object(Obj::Stored(ctx, *index))),
        Value::Object(embedded) => {
            let named = ty.inner_named_type().as_str();
            let type_name = match &embedded.type_name {
                Some(type_name) => type_name.clone(),
                None if super::schema::schema().get_object(named).is_some() => named.to_owned(),
                None => {
                    return Err(error(format!(
                        "The Marketplacer stand-in cannot tell which {named} this is: its capture has no __typename"
                    )));
                }
            };
            Ok(ResolvedValue::object(Obj::Embedded(
                ctx, type_name, embedded,
            )))
        }
        Value::List(items) if ty.is_list() => {
            let item_type = ty.item_type();
            Ok(fallible_list(
                items
                    .iter()
                    .map(move |item| resolve_value(ctx, item_type, item)),
            ))
        }
        Value::List(_) => Err(error(
            "The Marketplacer stand-in holds a list where the schema has one value",
        )),
        Value::Payload(node) => {
            let node: serde_json::Value = serde_json::from_str(node).map_err(|e| {
                error(format!(
                    "The stand-in's copy of this payload is not JSON: {e}"
                ))
            })?;
            let payload = serde_json::json!({"data": {"node": node}});
            Ok(ResolvedValue::leaf(JsonValue::from(payload)))
        }
    }
}

/// A list whose items may each fail (the error then nulls that item, or the list).
fn fallible_list<'b>(
    items: impl Iterator<Item = Result<ResolvedValue<'b>, FieldError>> + 'b,
) -> ResolvedValue<'b> {
    ResolvedValue::List(Box::new(items))
}

fn item_value<'b>(
    ctx: &'b Ctx<'b>,
    item: Item<'b>,
    ty: &'b Type,
) -> Result<ResolvedValue<'b>, FieldError> {
    match item {
        Item::Stored(index) => Ok(ResolvedValue::object(Obj::Stored(ctx, index))),
        Item::Value(value) => resolve_value(ctx, ty, value),
        Item::Webhook(webhook) => Ok(ResolvedValue::object(Obj::Webhook(ctx, webhook))),
    }
}

impl<'a> Page<'a> {
    /// The page `first`/`after` ask for.
    fn cut(mut items: Vec<Item<'a>>, arguments: &JsonMap) -> Result<Page<'a>, FieldError> {
        for backwards in ["last", "before"] {
            if arguments.get(backwards).is_some_and(|v| !v.is_null()) {
                return Err(error(format!(
                    "`{backwards}` is not supported: Marketplacer pages forward only (`before` and `last` are not in use)"
                )));
            }
        }
        let first = match arguments.get("first").and_then(JsonValue::as_i64) {
            None => DEFAULT_PAGE_SIZE,
            Some(n) if n < 0 => 0,
            Some(n) => (n as usize).min(MAX_PAGE_SIZE),
        };
        let after = match arguments.get("after").and_then(JsonValue::as_str) {
            None => 0,
            Some(cursor) => position(cursor)?,
        };
        let total = items.len();
        let start = after.min(total);
        let rest = items.split_off(start);
        let has_next = rest.len() > first;
        let items = rest.into_iter().take(first).collect();
        Ok(Page {
            items,
            offset: start,
            total,
            has_next,
            has_previous: after > 0,
        })
    }

    fn cursor(&self, index: usize) -> String {
        cursor(self.offset + index + 1)
    }
}

/// The cursor of the item at 1-based `position`.
pub(crate) fn cursor(position: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(position.to_string())
}

/// How many items a cursor says to skip, as graphql-ruby reads it: base64url (padding or not),
/// then the leading integer of the text (Ruby's `to_i`: 0 if there is none).
fn position(cursor: &str) -> Result<usize, FieldError> {
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let invalid = || error(format!("Invalid input: {cursor:?}"));
    let bytes = engine.decode(cursor).map_err(|_| invalid())?;
    let text = String::from_utf8_lossy(&bytes);
    let digits: String = text
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Ok(digits.parse::<usize>().unwrap_or(0))
}

fn page_field<'b>(
    ctx: &'b Ctx<'b>,
    page: &'b Page<'b>,
    info: &'b ResolveInfo<'b>,
) -> Result<ResolvedValue<'b>, FieldError> {
    let ty = &info.field_definition().ty;
    match info.field_name() {
        "nodes" => {
            let item_type = ty.item_type();
            Ok(fallible_list(
                page.items
                    .iter()
                    .map(move |item| item_value(ctx, *item, item_type)),
            ))
        }
        "edges" => {
            let edge_type = ty.inner_named_type().as_str();
            Ok(ResolvedValue::list(page.items.iter().enumerate().map(
                move |(index, item)| {
                    ResolvedValue::object(Obj::Edge(ctx, edge_type, *item, page.cursor(index)))
                },
            )))
        }
        "pageInfo" => Ok(ResolvedValue::object(Obj::PageInfo {
            has_next: page.has_next,
            has_previous: page.has_previous,
            start: (!page.items.is_empty()).then(|| page.cursor(0)),
            end: page
                .items
                .len()
                .checked_sub(1)
                .map(|last| page.cursor(last)),
        })),
        "totalCount" => Ok(ResolvedValue::leaf(page.total as i64)),
        other => Err(error(format!(
            "The Marketplacer stand-in does not model the connection field `{other}`"
        ))),
    }
}

fn webhook_field<'b>(
    ctx: &'b Ctx<'b>,
    webhook: &'b WebhookState,
    info: &'b ResolveInfo<'b>,
) -> Result<ResolvedValue<'b>, FieldError> {
    Ok(match info.field_name() {
        "id" => ResolvedValue::leaf(webhook.id.as_str()),
        "type" => ResolvedValue::leaf(webhook.klass.as_str()),
        "url" => ResolvedValue::leaf(webhook.url.as_str()),
        "enabled" => ResolvedValue::leaf(webhook.enabled),
        "eventName" | "seller" | "headers" => ResolvedValue::null(),
        "queryString" => ResolvedValue::leaf(webhook.query.as_str()),
        "maxRetries" => ResolvedValue::leaf(25),
        "concurrentSendLimit" => ResolvedValue::leaf(100),
        "allowSkip" | "legacyFormat" => ResolvedValue::leaf(false),
        "events" => {
            let events = ctx
                .data
                .events_by_type
                .get(&webhook.record_type)
                .map_or(&[][..], Vec::as_slice);
            ResolvedValue::list(
                events
                    .iter()
                    .map(move |&index| ResolvedValue::object(Obj::Stored(ctx, index))),
            )
        }
        other => {
            return Err(error(format!(
                "The Marketplacer stand-in does not model Webhook.{other}"
            )));
        }
    })
}

/// The root fields.
fn query_field<'b>(
    ctx: &'b Ctx<'b>,
    info: &'b ResolveInfo<'b>,
) -> Result<ResolvedValue<'b>, FieldError> {
    let name = info.field_name();
    if let Some(message) = ctx.failing.get(name) {
        return Err(error(message.clone()));
    }
    let arguments = info.arguments();
    let data = ctx.data;
    let connection = info.field_definition().ty.inner_named_type().as_str();
    let page = |items: Vec<Item<'b>>| -> Result<ResolvedValue<'b>, FieldError> {
        Ok(ResolvedValue::object(Obj::Page(
            ctx,
            connection,
            Page::cut(items, arguments)?,
        )))
    };
    let stored = |indexes: Vec<usize>| indexes.into_iter().map(Item::Stored).collect();
    match name {
        "invoices" => {
            let filters = object_argument(arguments, "filters");
            let windows = parse_windows(filters, &INVOICE_WINDOWS)?;
            if let Some(filters) = filters {
                unmodelled(
                    filters,
                    &["awaitingReturn", "withUnresolvedAnnotationsOfType"],
                    "InvoiceFilters",
                )?;
            }
            let mut found = Vec::new();
            for &index in data.of_type("Invoice") {
                let invoice = &data.objects[index];
                if in_windows(invoice, &windows) && invoice_matches(data, invoice, filters) {
                    found.push(index);
                }
            }
            sort(
                data,
                &mut found,
                object_argument(arguments, "sort"),
                invoice_sort_key,
            )?;
            page(stored(found))
        }
        "refundRequests" => {
            let filters = object_argument(arguments, "filters");
            let windows = parse_windows(filters, &REFUND_WINDOWS)?;
            let seller = arguments.get("sellerId").and_then(JsonValue::as_str);
            let mut found = Vec::new();
            for &index in data.of_type("RefundRequest") {
                let object = &data.objects[index];
                if in_windows(object, &windows)
                    && refund_matches(data, object, filters)
                    && seller.is_none_or(|seller| seller_id(data, object) == Some(seller))
                {
                    found.push(index);
                }
            }
            page(stored(found))
        }
        "updatedOrders" | "updatedRefundRequests" => {
            let type_name = if name == "updatedOrders" {
                "Order"
            } else {
                "RefundRequest"
            };
            let since = time_argument(arguments, "updatedSince")?;
            let mut found: Vec<usize> = data
                .of_type(type_name)
                .iter()
                .copied()
                .filter(|&i| {
                    since.is_none_or(|since| {
                        data.objects[i]
                            .time("updatedAt")
                            .is_some_and(|t| t >= since)
                    })
                })
                .collect();
            found.sort_by_key(|&i| {
                (
                    data.objects[i].time("updatedAt"),
                    data.objects[i].legacy_id(),
                )
            });
            page(stored(found))
        }
        "invoiceAmendments" => {
            let windows = parse_windows(object_argument(arguments, "filters"), &AMENDMENT_WINDOWS)?;
            let mut found: Vec<usize> = data
                .of_type("InvoiceAmendment")
                .iter()
                .copied()
                .filter(|&i| in_windows(&data.objects[i], &windows))
                .collect();
            sort(
                data,
                &mut found,
                object_argument(arguments, "sort"),
                amendment_sort_key,
            )?;
            page(stored(found))
        }
        "webhooks" => page(ctx.webhooks.iter().map(Item::Webhook).collect()),
        // Sign-ups reach Marketplacer from its storefront, never through a webhook, so
        // captures hold none: an empty list, as an instance without sign-ups answers.
        "emailMarketingSubscriptions" => page(Vec::new()),
        "webhookEvents" => {
            let events: Vec<usize> = match arguments.get("webhookId").and_then(JsonValue::as_str) {
                Some(id) => {
                    let webhook =
                        ctx.webhooks.iter().find(|w| w.id == id).ok_or_else(|| {
                            error(format!("Couldn't find Webhook with id {id:?}"))
                        })?;
                    data.events_by_type
                        .get(&webhook.record_type)
                        .cloned()
                        .unwrap_or_default()
                }
                None => {
                    let mut all: Vec<usize> =
                        data.events_by_type.values().flatten().copied().collect();
                    all.sort_by_key(|&i| (data.objects[i].time("createdAt"), i));
                    all
                }
            };
            page(stored(events))
        }
        "node" => {
            let id = arguments
                .get("id")
                .and_then(JsonValue::as_str)
                .unwrap_or_default();
            Ok(node(ctx, id).unwrap_or_else(ResolvedValue::null))
        }
        "nodes" => {
            let ids: Vec<String> = arguments
                .get("ids")
                .and_then(JsonValue::as_array)
                .map(|ids| {
                    ids.iter()
                        .filter_map(|i| i.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            Ok(ResolvedValue::list(ids.into_iter().map(move |id| {
                node(ctx, &id).unwrap_or_else(ResolvedValue::null)
            })))
        }
        "order" => {
            let id = arguments
                .get("orderId")
                .and_then(JsonValue::as_str)
                .unwrap_or_default();
            match data
                .by_id(id)
                .filter(|&i| data.objects[i].type_name == "Order")
            {
                Some(index) => Ok(ResolvedValue::object(Obj::Stored(ctx, index))),
                None => Err(error(format!("Couldn't find Order with id {id:?}"))),
            }
        }
        "siteConfig" => Ok(ResolvedValue::object(Obj::Made(
            ctx,
            "SiteConfig",
            ctx.site.config(),
        ))),
        "klaviyoSettings" => Ok(ResolvedValue::object(Obj::Made(
            ctx,
            "KlaviyoSettings",
            ctx.klaviyo.settings(),
        ))),
        other => Err(error(format!(
            "The Marketplacer stand-in does not model Query.{other}: it serves orders, invoices, shipments, refunds, webhooks and the site's settings"
        ))),
    }
}

fn node<'b>(ctx: &'b Ctx<'b>, id: &str) -> Option<ResolvedValue<'b>> {
    if let Some(webhook) = ctx.webhooks.iter().find(|w| w.id == id) {
        return Some(ResolvedValue::object(Obj::Webhook(ctx, webhook)));
    }
    let index = ctx.data.by_id(id)?;
    Some(ResolvedValue::object(Obj::Stored(ctx, index)))
}

fn object_argument<'m>(arguments: &'m JsonMap, name: &str) -> Option<&'m JsonMap> {
    arguments.get(name).and_then(JsonValue::as_object)
}

/// A timestamp argument as an instant; validation has already refused one that does not parse.
fn time_argument(arguments: &JsonMap, name: &str) -> Result<Option<i64>, FieldError> {
    match arguments.get(name) {
        None | Some(JsonValue::Null) => Ok(None),
        Some(value) => value
            .as_str()
            .and_then(instant)
            .map(Some)
            .ok_or_else(|| error(format!("`{name}` is not an ISO 8601 time with an offset"))),
    }
}

/// `(filter since, filter until, field compared)`: the time windows of a filter type.
type Windows = [(&'static str, &'static str, &'static str)];

const INVOICE_WINDOWS: [(&str, &str, &str); 4] = [
    ("createdSince", "createdUntil", "createdAt"),
    ("updatedSince", "updatedUntil", "updatedAt"),
    ("paidSince", "paidUntil", "paidAt"),
    ("remittedSince", "remittedUntil", "remittedAt"),
];

const REFUND_WINDOWS: [(&str, &str, &str); 2] = [
    ("createdSince", "createdUntil", "createdAt"),
    ("refundedSince", "refundedUntil", "refundedAt"),
];

const AMENDMENT_WINDOWS: [(&str, &str, &str); 3] = [
    ("createdSince", "createdUntil", "createdAt"),
    ("updatedSince", "updatedUntil", "updatedAt"),
    ("remittedSince", "remittedUntil", "remittedAt"),
];

/// The windows a filter gives: `(field compared, since, until)`, each end an instant or open.
type Parsed = Vec<(&'static str, Option<i64>, Option<i64>)>;

/// Reads a filter's time windows once per request, not once per object.
fn parse_windows(filters: Option<&JsonMap>, windows: &Windows) -> Result<Parsed, FieldError> {
    let mut parsed = Vec::new();
    if let Some(filters) = filters {
        for (since, until, field) in windows {
            let since = time_argument(filters, since)?;
            let until = time_argument(filters, until)?;
            if since.is_some() || until.is_some() {
                parsed.push((*field, since, until));
            }
        }
    }
    Ok(parsed)
}

/// Whether an object's times fall in every window. Both ends are inclusive ("since this
/// time", "until this time"); an object without the time is outside any window on it.
fn in_windows(object: &Object, windows: &Parsed) -> bool {
    windows.iter().all(|(field, since, until)| {
        object
            .time(field)
            .is_some_and(|at| since.is_none_or(|s| at >= s) && until.is_none_or(|u| at <= u))
    })
}

fn string_filter<'m>(filters: &'m JsonMap, name: &str) -> Option<&'m str> {
    filters.get(name).and_then(JsonValue::as_str)
}

fn int_filter(filters: &JsonMap, name: &str) -> Option<i64> {
    filters.get(name).and_then(JsonValue::as_i64)
}

fn bool_filter(filters: &JsonMap, name: &str) -> Option<bool> {
    filters.get(name).and_then(JsonValue::as_bool)
}

fn list_filter(filters: &JsonMap, name: &str) -> Option<Vec<String>> {
    filters
        .get(name)
        .and_then(JsonValue::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect()
        })
}

fn text(object: &Object, field: &str) -> Option<String> {
    object
        .leaf(field)
        .and_then(JsonValue::as_str)
        .map(str::to_owned)
}

fn strings(object: &Object, field: &str) -> Vec<String> {
    match object.field(field) {
        Some(Value::Leaf(JsonValue::Array(items))) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_owned))
            .collect(),
        Some(Value::List(items)) => items
            .iter()
            .filter_map(|i| match i {
                Value::Leaf(value) => value.as_str().map(str::to_owned),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn contains_folded(haystack: Option<String>, needle: &str) -> bool {
    haystack.is_some_and(|h| h.to_lowercase().contains(&needle.to_lowercase()))
}

/// Filters the stand-in cannot answer from captured webhooks: refused by name rather than
/// ignored, so a client never takes an unfiltered answer for a filtered one.
fn unmodelled(filters: &JsonMap, names: &[&str], input: &str) -> Result<(), FieldError> {
    for name in names {
        if filters.get(*name).is_some_and(|v| !v.is_null()) {
            return Err(error(format!(
                "The Marketplacer stand-in does not model {input}.{name}"
            )));
        }
    }
    Ok(())
}

fn order_of<'d>(data: &'d Data, object: &Object) -> Option<&'d Object> {
    object.reference("order").map(|i| &data.objects[i])
}

/// `InvoiceFilters` other than the time windows, as its field descriptions say.
fn invoice_matches(data: &Data, invoice: &Object, filters: Option<&JsonMap>) -> bool {
    let Some(filters) = filters else {
        return true;
    };
    let order = order_of(data, invoice);
    if let Some(legacy_id) = int_filter(filters, "legacyId")
        && invoice.legacy_id() != Some(legacy_id)
    {
        return false;
    }
    if let Some(order_id) = int_filter(filters, "orderId")
        && order.and_then(Object::legacy_id) != Some(order_id)
    {
        return false;
    }
    if let Some(email) = string_filter(filters, "buyerEmailAddress")
        && !text(invoice, "buyerEmailAddress")
            .is_some_and(|e| e.trim().eq_ignore_ascii_case(email.trim()))
    {
        return false;
    }
    if let Some(name) = string_filter(filters, "buyerName") {
        let full = [
            text(invoice, "buyerFirstName"),
            text(invoice, "buyerSurname"),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
        if !contains_folded(Some(full), name) {
            return false;
        }
    }
    let flags = || strings(invoice, "statusFlags");
    if let Some(statuses) = list_filter(filters, "statuses") {
        let flags = flags();
        let status = text(invoice, "status");
        let hit = statuses
            .iter()
            .any(|s| flags.contains(s) || status.as_deref() == Some(s));
        if !hit {
            return false;
        }
    }
    if let Some(not_dispatched) = bool_filter(filters, "notDispatched")
        && not_dispatched == flags().iter().any(|f| f == "SENT")
    {
        return false;
    }
    if let Some(awaiting) = bool_filter(filters, "awaitingCollection")
        && awaiting != flags().iter().any(|f| f == "READY")
    {
        return false;
    }
    let external = |matches: &dyn Fn(&str) -> bool| {
        order.is_some_and(|order| match order.field("externalIds") {
            Some(Value::List(ids)) => ids.iter().any(|id| match id {
                Value::Object(id) => id
                    .fields
                    .get("value")
                    .and_then(|v| match v {
                        Value::Leaf(v) => v.as_str(),
                        _ => None,
                    })
                    .is_some_and(matches),
                Value::Ref(i) => data.objects[*i]
                    .leaf("value")
                    .and_then(JsonValue::as_str)
                    .is_some_and(matches),
                _ => false,
            }),
            _ => false,
        })
    };
    if let Some(value) = string_filter(filters, "externalId")
        && !external(&|v| v == value)
    {
        return false;
    }
    if let Some(prefix) = string_filter(filters, "partialExternalId")
        && !external(&|v| v.starts_with(prefix))
    {
        return false;
    }
    true
}

fn invoice_of<'d>(data: &'d Data, object: &Object) -> Option<&'d Object> {
    object.reference("invoice").map(|i| &data.objects[i])
}

fn seller_id<'d>(data: &'d Data, refund: &Object) -> Option<&'d str> {
    let invoice = invoice_of(data, refund)?;
    let seller = invoice.reference("seller")?;
    Some(data.objects[seller].id.as_str())
}

/// `RefundRequestFilters` other than the time windows, as its field descriptions say.
fn refund_matches(data: &Data, refund: &Object, filters: Option<&JsonMap>) -> bool {
    let Some(filters) = filters else {
        return true;
    };
    let invoice = invoice_of(data, refund);
    if let Some(statuses) = list_filter(filters, "statuses")
        && !text(refund, "status").is_some_and(|s| statuses.contains(&s))
    {
        return false;
    }
    if let Some(statuses) = list_filter(filters, "lineItemStatuses") {
        let any = match refund.field("lineItems") {
            Some(Value::List(lines)) => lines.iter().any(|line| {
                let status = match line {
                    Value::Ref(i) => text(&data.objects[*i], "status"),
                    Value::Object(line) => match line.fields.get("status") {
                        Some(Value::Leaf(v)) => v.as_str().map(str::to_owned),
                        _ => None,
                    },
                    _ => None,
                };
                status.is_some_and(|s| statuses.contains(&s))
            }),
            _ => false,
        };
        if !any {
            return false;
        }
    }
    if let Some(legacy_id) = int_filter(filters, "legacyId")
        && refund.legacy_id() != Some(legacy_id)
    {
        return false;
    }
    if let Some(legacy_id) = int_filter(filters, "invoiceLegacyId")
        && invoice.and_then(Object::legacy_id) != Some(legacy_id)
    {
        return false;
    }
    let order = invoice.and_then(|i| order_of(data, i));
    if let Some(email) = string_filter(filters, "buyerEmailAddress") {
        let address = order
            .and_then(|o| text(o, "emailAddress"))
            .or_else(|| invoice.and_then(|i| text(i, "buyerEmailAddress")));
        if !contains_folded(address, email) {
            return false;
        }
    }
    if let Some(name) = string_filter(filters, "buyerName") {
        let full = order.map(|o| {
            [text(o, "firstName"), text(o, "surname")]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" ")
        });
        if !contains_folded(full, name) {
            return false;
        }
    }
    if let Some(business) = string_filter(filters, "businessName") {
        let name = invoice.and_then(|i| match i.field("seller") {
            Some(Value::Ref(s)) => text(&data.objects[*s], "businessName"),
            Some(Value::Object(s)) => match s.fields.get("businessName") {
                Some(Value::Leaf(v)) => v.as_str().map(str::to_owned),
                _ => None,
            },
            _ => None,
        });
        if name.as_deref() != Some(business) {
            return false;
        }
    }
    if let Some(date) = string_filter(filters, "invoicePaidAt") {
        let paid = invoice
            .and_then(|i| text(i, "paidAt"))
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.date_naive().to_string());
        if paid.as_deref() != Some(date) {
            return false;
        }
    }
    if let Some(remitted) = bool_filter(filters, "remitted")
        && remitted != invoice.is_some_and(|i| i.time("remittedAt").is_some())
    {
        return false;
    }
    true
}

/// A sort key part: a time, or text (the invoice's status).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Time(i64),
    Text(String),
}

fn invoice_sort_key(object: &Object, field: &str) -> Option<Key> {
    match field {
        "CREATED_AT" => object.time("createdAt").map(Key::Time),
        "UPDATED_AT" => object.time("updatedAt").map(Key::Time),
        "PAID_AT" => object.time("paidAt").map(Key::Time),
        "REMITTED_AT" => object.time("remittedAt").map(Key::Time),
        "STATUS" => text(object, "status")
            .or_else(|| strings(object, "statusFlags").last().cloned())
            .map(Key::Text),
        _ => None,
    }
}

fn amendment_sort_key(object: &Object, field: &str) -> Option<Key> {
    match field {
        "CREATED_AT" => object.time("createdAt").map(Key::Time),
        "UPDATED_AT" => object.time("updatedAt").map(Key::Time),
        "REMITTED_AT" => object.time("remittedAt").map(Key::Time),
        _ => None,
    }
}

/// Sorts by the `sort` argument's fields in turn (`ordering` applies to all): a missing time
/// sorts last ascending and first descending, as PostgreSQL orders NULLs; ties keep legacy id
/// order. Without `sort`, legacy id order.
fn sort(
    data: &Data,
    found: &mut [usize],
    sort: Option<&JsonMap>,
    key: fn(&Object, &str) -> Option<Key>,
) -> Result<(), FieldError> {
    let Some(sort) = sort else {
        return Ok(());
    };
    let fields: Vec<String> = sort
        .get("fields")
        .and_then(JsonValue::as_array)
        .map(|f| {
            f.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_else(|| vec!["CREATED_AT".into()]);
    let descending = sort.get("ordering").and_then(JsonValue::as_str) == Some("DESCENDING");
    // Keys read once per object, not once per comparison.
    let mut keyed: Vec<(Vec<Option<Key>>, usize)> = found
        .iter()
        .map(|&i| {
            let object = &data.objects[i];
            (fields.iter().map(|f| key(object, f)).collect(), i)
        })
        .collect();
    keyed.sort_by(|(a_keys, _), (b_keys, _)| {
        for (x, y) in a_keys.iter().zip(b_keys) {
            let order = match (x, y) {
                (Some(x), Some(y)) => x.cmp(y),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            };
            let order = if descending { order.reverse() } else { order };
            if order != Ordering::Equal {
                return order;
            }
        }
        // `found` is in legacy id order already, and the sort is stable.
        Ordering::Equal
    });
    for (slot, (_, index)) in found.iter_mut().zip(keyed) {
        *slot = index;
    }
    Ok(())
}
