//! `POST /api/metric-aggregates` (`query_metric_aggregates`): counts, sums and unique profiles
//! of one metric's events per hour, day, week or month of an IANA timezone, optionally per
//! `$value_currency`: the cheap daily total a reconciliation checks its event scan against.
//!
//! The body is checked against the spec's `MetricAggregateQuery` (made strict like the write
//! schemas: unknown keys are refused; `schemas/klaviyo-reads/`), then against what the schema
//! cannot say: the `filter` list "must include time range … a `greater-or-equal` and a
//! `less-than` filter on the `datetime` field", the timezone must be one Klaviyo knows
//! (case-sensitive; not `Factory`, `Europe/Kyiv` or `Pacific/Kanton`, as the spec says).
//!
//! Buckets use the *event* time (Klaviyo's guide: "using-the-query-metric-aggregates-endpoint"),
//! not when it was sent. Inferred, and unverified (notes/reconciliation.md §3):
//! - `dates[]` lists every bucket from the one holding the start to the one before the end,
//!   each the bucket's start in the timezone with its offset (`2025-03-04T00:00:00+11:00`);
//!   `measurements` hold one number per date, zero where nothing happened, as floats.
//! - A datetime without an offset in `filter` (the spec's own example) is a wall time in the
//!   query's timezone; one with an offset is that instant.
//! - Weeks start on Monday.
//! - Without `by` there is always one row (zeros when nothing matched); with
//!   `by: ["$value_currency"]` one row per currency sent, events without one under `""`.
//! - `sum_value` sums the events' `value` (none counts 0), rounded to 6 decimals.
//!
//! Refused because the stand-in does not model them (400 saying so, never ignored): `by`
//! other than `$value_currency`, filters other than on `datetime`, `return_fields`, a
//! `page_cursor` (it never has a second page to give).

use super::super::errors::{ApiError, JSON_API, Reply};
use super::super::filter::{self, Literal, Op};
use super::super::store::{AcceptedEvent, Store};
use super::events::instant;
use super::{Query, known_parameters, list};
use axum::http::StatusCode;
use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;
use serde_json::{Map, Value as Json, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

/// The spec's request body schema, strict (generated: see schemas/klaviyo-reads/README.md).
const SCHEMA: &str =
    include_str!("../../../schemas/klaviyo-reads/query_metric_aggregates.request.json");

/// Named in the spec as not supported.
const UNSUPPORTED_ZONES: [&str; 3] = ["Factory", "Europe/Kyiv", "Pacific/Kanton"];

/// At most this many buckets in one answer (a year of hours is 8,784).
const MAX_BUCKETS: usize = 10_000;

fn validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let schema: Json = serde_json::from_str(SCHEMA).expect("the built-in schema is JSON");
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&schema)
            .expect("the built-in schema compiles")
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interval {
    Hour,
    Day,
    Week,
    Month,
}

/// What was asked, once read and checked.
struct Question {
    metric_id: String,
    measurements: Vec<String>,
    conditions: Vec<filter::Condition>,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    interval: Interval,
    zone: Tz,
    by_currency: bool,
    sort: Option<(String, bool)>,
}

/// `POST /api/metric-aggregates`.
pub(crate) fn post(
    query: &Query,
    content_type: Option<&str>,
    body: &[u8],
    store: &Store,
    base_url: &str,
) -> Reply {
    match answer(query, content_type, body, store, base_url) {
        Ok(document) => Reply::json(StatusCode::OK, document),
        Err(errors) => Reply::errors(errors),
    }
}

fn answer(
    query: &Query,
    content_type: Option<&str>,
    body: &[u8],
    store: &Store,
    base_url: &str,
) -> Result<Json, Vec<ApiError>> {
    let one = |error: Box<ApiError>| vec![*error];
    known_parameters(query, &["fields[metric-aggregate]"]).map_err(one)?;
    let fields = list(query, "fields[metric-aggregate]", &["data", "dates", "id"]).map_err(one)?;
    let media_type = content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media_type != JSON_API && media_type != "application/json" {
        return Err(vec![ApiError::unsupported_media_type(&media_type)]);
    }
    let body: Json = serde_json::from_slice(body).map_err(|e| vec![ApiError::parse_error(e)])?;
    let problems: Vec<ApiError> = validator()
        .iter_errors(&body)
        .map(|e| {
            let pointer = e.instance_path().to_string();
            let pointer = if pointer.is_empty() {
                "/".into()
            } else {
                pointer
            };
            ApiError::invalid(pointer, e.masked().to_string())
        })
        .collect();
    if !problems.is_empty() {
        return Err(problems);
    }
    let question = read(&body["data"]["attributes"], store)?;
    let dates = buckets(&question).map_err(|e| vec![*e])?;
    let starts: Vec<DateTime<Utc>> = dates.iter().map(|d| d.with_timezone(&Utc)).collect();
    let events: Vec<&AcceptedEvent> = store
        .recorded_events()
        .iter()
        .filter(|e| {
            store
                .metric_of(e)
                .is_some_and(|m| m.id == question.metric_id)
        })
        .filter(|e| {
            instant(e).is_some_and(|at| {
                question
                    .conditions
                    .iter()
                    .all(|c| holds(c, at, question.zone))
            })
        })
        .collect();
    let rows = rows(&question, &starts, &events);
    let mut attributes = Map::new();
    attributes.insert(
        "dates".into(),
        dates
            .iter()
            .map(|d| json!(d.format("%Y-%m-%dT%H:%M:%S%:z").to_string()))
            .collect(),
    );
    attributes.insert("data".into(), Json::Array(rows));
    if let Some(fields) = &fields {
        attributes.retain(|name, _| fields.iter().any(|f| f == name));
    }
    let link = format!("{base_url}/api/metric-aggregates/");
    Ok(json!({
        "data": {
            "type": "metric-aggregate",
            "id": super::super::errors::new_uuid(),
            "attributes": attributes,
            "links": {"self": link},
        },
        "links": {"self": link},
    }))
}

fn at(pointer: &str, detail: impl Into<String>) -> Vec<ApiError> {
    vec![ApiError::invalid(
        format!("/data/attributes/{pointer}"),
        detail,
    )]
}

/// The attributes, past the schema: what it cannot say.
fn read(attributes: &Json, store: &Store) -> Result<Question, Vec<ApiError>> {
    let metric_id = attributes["metric_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if !store.metrics().iter().any(|m| m.id == metric_id) {
        return Err(at(
            "metric_id",
            format!("Metric with id {metric_id:?} does not exist."),
        ));
    }
    let measurements: Vec<String> = attributes["measurements"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m.as_str().map(str::to_owned))
        .collect();
    if measurements.is_empty() {
        return Err(at("measurements", "At least one measurement is required."));
    }
    let zone_name = attributes["timezone"].as_str().unwrap_or("UTC");
    let zone = zone_name
        .parse::<Tz>()
        .ok()
        .filter(|_| !UNSUPPORTED_ZONES.contains(&zone_name))
        .ok_or_else(|| {
            at(
                "timezone",
                format!(
                    "{zone_name:?} is not a supported timezone: use an IANA name such as \
                     \"America/New_York\" (case-sensitive)."
                ),
            )
        })?;
    let interval = match attributes["interval"].as_str().unwrap_or("day") {
        "hour" => Interval::Hour,
        "week" => Interval::Week,
        "month" => Interval::Month,
        _ => Interval::Day,
    };
    let mut conditions = Vec::new();
    for (i, text) in attributes["filter"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let text = text.as_str().unwrap_or_default();
        let parsed = filter::parse(text).map_err(|e| at(&format!("filter/{i}"), e))?;
        for condition in parsed {
            let comparison = matches!(
                condition.op,
                Op::GreaterOrEqual | Op::GreaterThan | Op::LessOrEqual | Op::LessThan
            );
            let dated = matches!(condition.value, Literal::DateTime(_) | Literal::Naive(_));
            if condition.field != "datetime" {
                return Err(at(
                    &format!("filter/{i}"),
                    format!(
                        "The stand-in filters metric aggregates on datetime only, not on {:?}.",
                        condition.field
                    ),
                ));
            }
            if !comparison || !dated {
                return Err(at(
                    &format!("filter/{i}"),
                    format!(
                        "{text:?}: datetime takes greater-or-equal, greater-than, \
                         less-or-equal or less-than with an unquoted ISO 8601 datetime."
                    ),
                ));
            }
            conditions.push(condition);
        }
    }
    let bound = |op: Op| {
        conditions
            .iter()
            .find(|c| c.field == "datetime" && c.op == op)
            .map(|c| instant_of(&c.value, zone))
    };
    let (Some(start), Some(end)) = (bound(Op::GreaterOrEqual), bound(Op::LessThan)) else {
        return Err(at(
            "filter",
            "The filter must include a time range: a greater-or-equal and a less-than filter \
             on the datetime field.",
        ));
    };
    if start >= end {
        return Err(at(
            "filter",
            "The time range is empty: its start is not before its end.",
        ));
    }
    let by: Vec<&str> = attributes["by"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Json::as_str)
        .collect();
    if let Some(other) = by.iter().find(|b| **b != "$value_currency") {
        return Err(at(
            "by",
            format!(
                "The stand-in groups metric aggregates by $value_currency only, not {other:?}."
            ),
        ));
    }
    if attributes["return_fields"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
    {
        return Err(at(
            "return_fields",
            "The stand-in does not model return_fields.",
        ));
    }
    if attributes["page_cursor"].is_string() {
        return Err(at(
            "page_cursor",
            "Invalid page cursor: the stand-in never gives out a second page.",
        ));
    }
    let sort = match attributes["sort"].as_str() {
        None => None,
        Some(text) => {
            let (key, descending) = match text.strip_prefix('-') {
                Some(key) => (key, true),
                None => (text, false),
            };
            let usable = measurements.iter().any(|m| m == key)
                || (key == "$value_currency" && !by.is_empty());
            if !usable {
                return Err(at(
                    "sort",
                    format!("{text:?} sorts by neither a measurement asked for nor a `by` value."),
                ));
            }
            Some((key.to_owned(), descending))
        }
    };
    Ok(Question {
        metric_id,
        measurements,
        conditions,
        start,
        end,
        interval,
        zone,
        by_currency: !by.is_empty(),
        sort,
    })
}

/// A datetime of the filter as an instant: with its offset, or as a wall time in `zone`.
fn instant_of(value: &Literal, zone: Tz) -> DateTime<Utc> {
    match value {
        Literal::DateTime(t) => t.with_timezone(&Utc),
        Literal::Naive(t) => local(zone, *t).with_timezone(&Utc),
        _ => unreachable!("checked: datetimes only"),
    }
}

/// A wall time in `zone`: the earlier of two in a repeated hour, the first after a skipped one.
fn local(zone: Tz, wall: NaiveDateTime) -> DateTime<Tz> {
    let mut wall = wall;
    loop {
        match zone.from_local_datetime(&wall) {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => return t,
            LocalResult::None => wall += Duration::minutes(15),
        }
    }
}

fn holds(condition: &filter::Condition, at: DateTime<Utc>, zone: Tz) -> bool {
    condition
        .op
        .compares(&at, &instant_of(&condition.value, zone))
}

/// The start of the bucket that holds `wall` (a wall time in the zone).
fn floor(interval: Interval, wall: NaiveDateTime) -> NaiveDateTime {
    let date = wall.date();
    let midnight = |d: NaiveDate| d.and_hms_opt(0, 0, 0).expect("midnight exists");
    match interval {
        Interval::Hour => midnight(date) + Duration::hours(i64::from(wall.hour())),
        Interval::Day => midnight(date),
        Interval::Week => {
            midnight(date - Duration::days(i64::from(date.weekday().num_days_from_monday())))
        }
        Interval::Month => midnight(date.with_day(1).expect("the first exists")),
    }
}

fn next(interval: Interval, start: NaiveDateTime) -> NaiveDateTime {
    match interval {
        Interval::Hour => start + Duration::hours(1),
        Interval::Day => start + Duration::days(1),
        Interval::Week => start + Duration::days(7),
        Interval::Month => {
            let date = start.date();
            let (year, month) = if date.month() == 12 {
                (date.year() + 1, 1)
            } else {
                (date.year(), date.month() + 1)
            };
            NaiveDate::from_ymd_opt(year, month, 1)
                .expect("a first of the month")
                .and_hms_opt(0, 0, 0)
                .expect("midnight exists")
        }
    }
}

/// The buckets' starts, in the zone.
fn buckets(question: &Question) -> Result<Vec<DateTime<Tz>>, Box<ApiError>> {
    let zone = question.zone;
    let mut wall = floor(
        question.interval,
        question.start.with_timezone(&zone).naive_local(),
    );
    let mut dates = Vec::new();
    loop {
        let start = local(zone, wall);
        if start.with_timezone(&Utc) >= question.end {
            break;
        }
        if dates.len() == MAX_BUCKETS {
            return Err(Box::new(ApiError::invalid(
                "/data/attributes/filter",
                format!("The time range holds more than {MAX_BUCKETS} intervals; narrow it."),
            )));
        }
        dates.push(start);
        wall = next(question.interval, wall);
    }
    Ok(dates)
}

/// One row per group: `dimensions` and, per measurement, one number per bucket.
fn rows(question: &Question, buckets: &[DateTime<Utc>], events: &[&AcceptedEvent]) -> Vec<Json> {
    struct Tally {
        count: Vec<f64>,
        sum: Vec<f64>,
        profiles: Vec<BTreeSet<String>>,
    }
    let empty = || Tally {
        count: vec![0.0; buckets.len()],
        sum: vec![0.0; buckets.len()],
        profiles: vec![BTreeSet::new(); buckets.len()],
    };
    let mut groups: BTreeMap<Vec<String>, Tally> = BTreeMap::new();
    if !question.by_currency {
        groups.insert(Vec::new(), empty());
    }
    for event in events {
        let Some(at) = instant(event) else { continue };
        let Some(bucket) = buckets.iter().rposition(|start| *start <= at) else {
            continue;
        };
        let attributes = event.attributes();
        let dimensions = if question.by_currency {
            vec![
                attributes["value_currency"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ]
        } else {
            Vec::new()
        };
        let tally = groups.entry(dimensions).or_insert_with(empty);
        tally.count[bucket] += 1.0;
        tally.sum[bucket] += value(&attributes["value"]);
        tally.profiles[bucket].insert(event.profile_key.clone());
    }
    let mut rows: Vec<(Vec<String>, Map<String, Json>)> = groups
        .into_iter()
        .map(|(dimensions, tally)| {
            let mut measurements = Map::new();
            for name in &question.measurements {
                let values: Vec<f64> = match name.as_str() {
                    "count" => tally.count.clone(),
                    "sum_value" => tally.sum.iter().map(|s| (s * 1e6).round() / 1e6).collect(),
                    _ => tally.profiles.iter().map(|p| p.len() as f64).collect(),
                };
                measurements.insert(name.clone(), json!(values));
            }
            (dimensions, measurements)
        })
        .collect();
    if let Some((key, descending)) = &question.sort {
        let total = |m: &Map<String, Json>| -> f64 {
            m[key.as_str()]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Json::as_f64)
                .sum()
        };
        if key == "$value_currency" {
            rows.sort_by(|a, b| a.0.cmp(&b.0));
        } else {
            rows.sort_by(|a, b| total(&a.1).total_cmp(&total(&b.1)));
        }
        if *descending {
            rows.reverse();
        }
    }
    rows.into_iter()
        .map(|(dimensions, measurements)| {
            json!({"dimensions": dimensions, "measurements": measurements})
        })
        .collect()
}

/// An event's `value` as a number (a numeric string counts; anything else is 0).
fn value(value: &Json) -> f64 {
    match value {
        Json::Number(n) => n.as_f64().unwrap_or(0.0),
        Json::String(s) => s.trim().parse().unwrap_or(0.0),
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wall(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S").unwrap()
    }

    #[test]
    fn buckets_start_where_the_interval_does() {
        let t = wall("2026-03-18T15:42:10"); // a Wednesday
        assert_eq!(floor(Interval::Hour, t), wall("2026-03-18T15:00:00"));
        assert_eq!(floor(Interval::Day, t), wall("2026-03-18T00:00:00"));
        assert_eq!(floor(Interval::Week, t), wall("2026-03-16T00:00:00"));
        assert_eq!(floor(Interval::Month, t), wall("2026-03-01T00:00:00"));
        assert_eq!(
            next(Interval::Month, wall("2026-12-01T00:00:00")),
            wall("2027-01-01T00:00:00")
        );
    }

    #[test]
    fn a_day_across_daylight_saving_is_23_or_25_hours() {
        let zone: Tz = "Australia/Melbourne".parse().unwrap();
        // Daylight saving ends on 2026-04-05 at 03:00 (clocks back to 02:00).
        let day = local(zone, wall("2026-04-05T00:00:00"));
        let after = local(zone, wall("2026-04-06T00:00:00"));
        assert_eq!((after - day).num_hours(), 25);
        assert_eq!(day.format("%:z").to_string(), "+11:00");
        assert_eq!(after.format("%:z").to_string(), "+10:00");
    }
}
