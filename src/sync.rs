//! A real run: deliveries into the durable store, and the store's outbox out to Klaviyo.
//!
//! Intake and delivery run at the same time: a blocking thread reads and maps deliveries and
//! writes each one (its inbox row, its requests and its failures) to the store in one
//! transaction, while one task per lane sends what is due. Nothing is sent that the store has
//! not kept first, and nothing leaves the outbox before Klaviyo accepted it, so the process can
//! be killed at any instant and run again.

use crate::engine::{Engine, Mapped};
use crate::klaviyo::Request;
use crate::pipeline::{self, Item};
use crate::run::report_mapped;
use crate::sink::{DeliveryReport, Sink, SinkConfig, SinkError, now_ms};
use crate::source::{self, Input, Line};
use crate::spec::Lane;
use crate::store::{DeliveryRecord, NewDeadLetter, NewRequest, Store, StoreError, ledger_key};
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What intake did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IntakeReport {
    pub deliveries: usize,
    pub records: usize,
    /// Records read, by `__typename` (repeats included).
    pub types: BTreeMap<String, usize>,
    /// Records already in the inbox from this run or an earlier one.
    pub repeated: usize,
    pub queued: usize,
    pub once_per_key_dropped: usize,
    pub stale_dropped: usize,
    pub coalesced: usize,
    pub skipped: BTreeMap<String, usize>,
    /// Dead letters written at intake (unreadable deliveries, failed mappings), by category.
    pub rejected: BTreeMap<String, usize>,
    /// The same, by (mapping, category); an unreadable delivery has no mapping (`""`).
    pub rejected_by_mapping: BTreeMap<(String, String), usize>,
    pub warnings: usize,
    /// Inputs that could not be opened, or read to their end.
    pub input_errors: usize,
}

/// Why a run stopped early.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// Klaviyo was unavailable ([`SinkError::KlaviyoUnavailable`]): everything else was done,
    /// and what was for the unavailable endpoints is still queued. With what the run did, for
    /// its summary.
    #[error("{cause}")]
    Unavailable {
        cause: SinkError,
        intake: Box<IntakeReport>,
        delivery: Box<DeliveryReport>,
    },
    #[error("state store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The requests of one record as the store keeps them.
pub fn queued(request: &Request) -> NewRequest {
    NewRequest {
        mapping: request.mapping.to_string(),
        endpoint: request.endpoint.path().to_owned(),
        lane: request.lane.as_str().to_owned(),
        body: request.body.to_string(),
        once_key: request.once_key.clone(),
        unique_id: request.unique_id().map(str::to_owned),
        waits_for: request
            .waits_for
            .as_ref()
            .map(|w| ledger_key(&w.mapping, &w.key)),
        coalesce_key: request.coalesce.as_ref().map(|c| c.key.clone()),
        version: request.coalesce.as_ref().map(|c| c.version.clone()),
    }
}

/// Every person the requests name, once each, in request order.
fn people_of(requests: &[Request]) -> Vec<String> {
    let mut people: Vec<String> = Vec::new();
    for person in requests
        .iter()
        .flat_map(|r| crate::klaviyo::people_in(&r.body))
    {
        if !people.contains(&person) {
            people.push(person);
        }
    }
    people
}

/// One delivery made ready for the store, on any thread: everything but the store's verdict.
pub struct Prepared {
    origin: String,
    /// The records, or why the delivery cannot be read (with its text, for the dead letter).
    outcome: Result<Vec<PreparedRecord>, (source::RecordError, String)>,
}

struct PreparedRecord {
    marketplace: String,
    delivery_id: String,
    typename: String,
    /// The record as the inbox keeps it.
    text: String,
    mapped: Mapped,
    requests: Vec<NewRequest>,
    failures: Vec<NewDeadLetter>,
    /// The people its requests name (see [`crate::klaviyo::people_in`]), for the store's
    /// person index: `marketsync customer` finds the delivery by them.
    people: Vec<String>,
}

/// Parses and maps one delivery and serialises what the store will keep. Pure.
fn prepare(engine: &Engine, line: &Line) -> Prepared {
    let origin = format!("{}:{}", line.origin, line.number);
    prepare_parsed(engine, origin, source::parse_line(line), &line.text)
}

/// [`prepare`] for a delivery already parsed (or refused), with its text for a dead letter.
fn prepare_parsed(
    engine: &Engine,
    origin: String,
    parsed: Result<Vec<source::Record>, source::RecordError>,
    text: &str,
) -> Prepared {
    let outcome = match parsed {
        Ok(records) => Ok(records
            .into_iter()
            .map(|record| {
                let mut mapped = engine.map(&record);
                // The store takes the queued form; the request trees are freed here, on the
                // thread that built them (as in `run::prepare`).
                let requests = std::mem::take(&mut mapped.requests);
                PreparedRecord {
                    marketplace: engine.marketplace_of(&record).to_owned(),
                    text: serde_json::to_string(&record).expect("a record serialises"),
                    people: people_of(&requests),
                    requests: requests.iter().map(queued).collect(),
                    failures: mapped
                        .errors
                        .iter()
                        .map(|e| NewDeadLetter {
                            mapping: Some(e.mapping.to_string()),
                            category: format!("mapping:{}", e.kind.as_str()),
                            reason: e.message.clone(),
                            details: serde_json::json!({}),
                        })
                        .collect(),
                    delivery_id: record.delivery_id,
                    typename: record.typename,
                    mapped,
                }
            })
            .collect()),
        Err(err) => Err((err, text.to_owned())),
    };
    Prepared { origin, outcome }
}

/// Takes one webhook in, as a receiver does, first half: parsed and mapped, off the store (any
/// thread). The store keeps its capture (`{"headers", "body"}`, which
/// [`source::parse_delivery`] reads back for retries); the records are read from the body
/// directly. `not_utf8_at` says where the body's bytes stopped being UTF-8, if they did.
/// [`keep_delivery`] writes it.
pub fn prepare_webhook(
    engine: &Engine,
    origin: &str,
    headers: serde_json::Map<String, serde_json::Value>,
    body: &str,
    not_utf8_at: Option<usize>,
) -> Prepared {
    let text = source::webhook::capture(&headers, body);
    let parsed = read_received(not_utf8_at, || {
        source::received_records(&serde_json::Value::Object(headers), body)
    });
    prepare_parsed(engine, origin.to_owned(), parsed, &text)
}

/// Second half: writes a [`prepare_webhook`] to the store exactly as [`intake`] writes a
/// line (a delivery that cannot be read, or that a mapping refuses, is kept as a dead letter;
/// one already stored writes nothing). Inside [`Store::in_one_commit`] all of it is one
/// savepoint: an error means nothing of this delivery may be taken as kept.
pub fn keep_delivery(
    store: &mut Store,
    delivery: Prepared,
    report: &mut dyn Write,
) -> Result<IntakeReport, SyncError> {
    let mut summary = IntakeReport::default();
    keep(store, delivery, &mut summary, report)?;
    Ok(summary)
}

/// What [`keep_delivery`] would keep of one delivery, without a store: per record, the
/// mapping failures it would keep as dead letters (`mapping `NAME`: REASON`), or why the
/// delivery is unreadable. The way in for the fuzz targets (`fuzz/`), which must reach every
/// step a received body goes through but cannot afford a store per input: `webhook` is the
/// body as `serve` receives it (with these headers), else it is read as a line of `run`'s input.
#[doc(hidden)]
pub fn dead_letters_of(
    engine: &Engine,
    text: &str,
    not_utf8_at: Option<usize>,
    webhook: Option<serde_json::Map<String, serde_json::Value>>,
) -> Result<Vec<Vec<String>>, source::RecordError> {
    let prepared = match webhook {
        Some(headers) => prepare_webhook(engine, "", headers, text, not_utf8_at),
        None => {
            let parsed = read_received(not_utf8_at, || source::parse_delivery(text));
            prepare_parsed(engine, String::new(), parsed, text)
        }
    };
    match prepared.outcome {
        Ok(records) => Ok(records
            .into_iter()
            .map(|record| {
                record
                    .failures
                    .into_iter()
                    .map(|f| format!("mapping `{}`: {}", f.mapping.unwrap_or_default(), f.reason))
                    .collect()
            })
            .collect()),
        Err((err, _)) => Err(err),
    }
}

/// A received delivery's records, as `read` gives them; bytes that were not UTF-8 reject it
/// before it is read.
fn read_received(
    not_utf8_at: Option<usize>,
    read: impl FnOnce() -> Result<Vec<source::Record>, source::RecordError>,
) -> Result<Vec<source::Record>, source::RecordError> {
    match not_utf8_at {
        Some(at) => Err(source::RecordError::NotUtf8(at)),
        None => read(),
    }
}

/// The most deliveries one commit of a batch run's intake takes.
///
/// With `synchronous = FULL` every commit waits for the disk: one per delivery capped `run`'s
/// intake at the disk's flush rate (issue 18). A batch run answers nobody, so nothing is lost
/// by committing several deliveries at once: what a killed run had not committed is read
/// again from its input, and the sender only ever sees what is committed. The batch also
/// ends whenever the input has nothing ready (a quiet pipe), so a delivery never waits for
/// others to arrive.
pub const INTAKE_BATCH: usize = 256;

/// Reads every input into the store, parsing and mapping on `jobs` threads while this one
/// writes to the store in input order, [`INTAKE_BATCH`] deliveries a commit. Problems go to
/// `report` as lines naming the input and line; warnings are also kept with their delivery,
/// and failures are dead letters (a line that is not JSON, or not UTF-8, is `unreadable`), so
/// nothing read is lost. An input that cannot be opened or read is reported and counted, and
/// the others are still read. Stops early when `stop` is set.
pub fn intake(
    engine: &Engine,
    store: &Mutex<Store>,
    inputs: &[Input],
    jobs: usize,
    report: &mut dyn Write,
    stop: &AtomicBool,
    read: &AtomicUsize,
) -> Result<IntakeReport, SyncError> {
    let mut summary = IntakeReport::default();
    let mut batch: Vec<Prepared> = Vec::with_capacity(INTAKE_BATCH);
    pipeline::map_in_order(
        inputs,
        jobs,
        |line| prepare(engine, line),
        |item| {
            if stop.load(Ordering::SeqCst) {
                keep_batch(store, &mut batch, &mut summary, report)?;
                return Ok(ControlFlow::Break(()));
            }
            match item {
                Item::Delivery(delivery) => {
                    read.fetch_add(1, Ordering::Relaxed);
                    batch.push(delivery);
                    if batch.len() >= INTAKE_BATCH {
                        keep_batch(store, &mut batch, &mut summary, report)?;
                    }
                }
                // Nothing of it to keep: reported, and the other inputs are still read.
                Item::Unread(err) => {
                    keep_batch(store, &mut batch, &mut summary, report)?;
                    summary.input_errors += 1;
                    writeln!(report, "error: {err}")?;
                }
                // Nothing more is ready: what was read is kept now, not held for more.
                Item::Idle => keep_batch(store, &mut batch, &mut summary, report)?,
            }
            Ok::<_, SyncError>(ControlFlow::Continue(()))
        },
    )?;
    keep_batch(store, &mut batch, &mut summary, report)?;
    Ok(summary)
}

/// Keeps the deliveries read so far in one commit, each in a savepoint of its own. A delivery
/// whose writes fail is undone alone; the others are kept, and then the first failure ends
/// the run as it did when each delivery was a commit of its own.
fn keep_batch(
    store: &Mutex<Store>,
    batch: &mut Vec<Prepared>,
    summary: &mut IntakeReport,
    report: &mut dyn Write,
) -> Result<(), SyncError> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut store = store.lock().expect("store lock");
    let outcomes = store.in_one_commit(batch.drain(..), |store, delivery| {
        keep(store, delivery, summary, report)
    })?;
    outcomes.into_iter().collect::<Result<(), _>>()
}

/// Writes one prepared delivery to the store (a savepoint per record when part of a commit,
/// else a transaction per record), and counts it.
fn keep(
    store: &mut Store,
    delivery: Prepared,
    summary: &mut IntakeReport,
    report: &mut dyn Write,
) -> Result<(), SyncError> {
    summary.deliveries += 1;
    let origin = delivery.origin;
    let records = match delivery.outcome {
        Ok(records) => records,
        Err((err, text)) => {
            writeln!(report, "{origin}: rejected: {err}")?;
            store.record_unreadable(&origin, &text, &err.to_string(), now_ms())?;
            *summary.rejected.entry("unreadable".into()).or_default() += 1;
            *summary
                .rejected_by_mapping
                .entry((String::new(), "unreadable".into()))
                .or_default() += 1;
            return Ok(());
        }
    };
    for record in records {
        summary.records += 1;
        *summary.types.entry(record.typename.clone()).or_default() += 1;
        let delivery = DeliveryRecord {
            marketplace: &record.marketplace,
            delivery_id: &record.delivery_id,
            origin: &origin,
            text: &record.text,
        };
        // Warnings are kept with the delivery (`marketsync warnings list`), not only reported.
        let warnings = &record.mapped.warnings;
        let outcome = match store.intake_concerning(
            &delivery,
            &record.requests,
            &record.failures,
            warnings,
            &record.people,
            now_ms(),
        ) {
            // A request the store cannot keep (a coalescing version that is not a
            // timestamp) must not stop the run: the delivery is kept as a dead letter.
            Err(StoreError::InvalidRequest { mapping, problem }) => {
                writeln!(
                    report,
                    "{origin}: rejected: delivery {}: mapping `{mapping}`: {problem}",
                    record.delivery_id
                )?;
                *summary
                    .rejected
                    .entry("mapping:invalid-request".into())
                    .or_default() += 1;
                *summary
                    .rejected_by_mapping
                    .entry((mapping.clone(), "mapping:invalid-request".into()))
                    .or_default() += 1;
                let letter = NewDeadLetter {
                    mapping: Some(mapping.clone()),
                    category: "mapping:invalid-request".into(),
                    reason: problem.clone(),
                    details: serde_json::json!({}),
                };
                store.intake_concerning(
                    &delivery,
                    &[],
                    &[letter],
                    warnings,
                    &record.people,
                    now_ms(),
                )?
            }
            other => other?,
        };
        if outcome.duplicate_delivery {
            summary.repeated += 1;
            continue;
        }
        // Reported only now: a delivery already in the store says nothing new.
        let mapped = &record.mapped;
        report_mapped(report, &origin, &record.delivery_id, mapped)?;
        summary.warnings += mapped.warnings.len();
        for error in &mapped.errors {
            let category = format!("mapping:{}", error.kind.as_str());
            *summary
                .rejected_by_mapping
                .entry((error.mapping.to_string(), category.clone()))
                .or_default() += 1;
            *summary.rejected.entry(category).or_default() += 1;
        }
        if !mapped.matched {
            *summary.skipped.entry(record.typename).or_default() += 1;
        }
        summary.queued += outcome.queued;
        summary.once_per_key_dropped += outcome.dropped_once;
        summary.stale_dropped += outcome.dropped_stale;
        summary.coalesced += outcome.coalesced;
    }
    Ok(())
}

/// Where a run is, for a progress display.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tick {
    pub read: usize,
    pub sent: usize,
    pub dead: usize,
    pub retried: usize,
}

/// Called a few times a second while a run goes on.
pub type OnTick = Box<dyn FnMut(Tick) + Send>;

/// Intake and delivery together; returns when every input is read and both lanes are empty
/// (held requests included), or at the first refused key, or with [`SyncError::Unavailable`]
/// when all that is left is queued for endpoints where Klaviyo is unavailable. Needs a multi-threaded tokio
/// runtime: intake runs as blocking work on the calling thread (mapping on `jobs` threads of
/// its own) while the lanes send.
pub async fn run(
    engine: Arc<Engine>,
    store: Arc<Mutex<Store>>,
    inputs: Vec<Input>,
    jobs: usize,
    config: SinkConfig,
    mut report: Box<dyn Write + Send>,
) -> Result<(IntakeReport, DeliveryReport), SyncError> {
    run_with_progress(engine, store, inputs, jobs, config, report.as_mut(), None).await
}

/// [`run`], calling `on_tick` as it goes.
pub async fn run_with_progress(
    engine: Arc<Engine>,
    store: Arc<Mutex<Store>>,
    inputs: Vec<Input>,
    jobs: usize,
    config: SinkConfig,
    report: &mut (dyn Write + Send),
    on_tick: Option<OnTick>,
) -> Result<(IntakeReport, DeliveryReport), SyncError> {
    let sink = Sink::new(config, Arc::clone(&store));
    let intake_done = Arc::new(AtomicBool::new(false));
    let stop = sink.stop_flag();
    let read = Arc::new(AtomicUsize::new(0));
    let ticker = on_tick.map(|mut on_tick| {
        let (sink, read) = (Arc::clone(&sink), Arc::clone(&read));
        tokio::spawn(async move {
            loop {
                let delivered = sink.report();
                on_tick(Tick {
                    read: read.load(Ordering::Relaxed),
                    sent: delivered.sent.values().sum(),
                    dead: delivered.dead_letters.values().sum(),
                    retried: delivered.retried,
                });
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        })
    });
    let lanes: Vec<_> = [Lane::Transaction, Lane::Profile]
        .into_iter()
        .map(|lane| tokio::spawn(Arc::clone(&sink).drain_lane(lane, Arc::clone(&intake_done))))
        .collect();
    // Intake is blocking work (file reads, SQLite); it runs on this thread while the lanes
    // send on the runtime's workers.
    let intake_report = tokio::task::block_in_place(|| {
        let result = intake(&engine, &store, &inputs, jobs, report, &stop, &read);
        intake_done.store(true, Ordering::SeqCst);
        result
    });
    let mut first_error = None;
    for lane in lanes {
        if let Err(err) = lane.await.expect("a lane does not panic") {
            // Any other error says more than an outage, which leaves the queue as it was.
            match (&first_error, &err) {
                (None, _) | (Some(SinkError::KlaviyoUnavailable { .. }), _) => {
                    first_error = Some(err);
                }
                _ => {}
            }
        }
    }
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    // A refused key ends the run with that error whatever the lanes returned: a lane can stop
    // on the flag without having joined the request that was refused.
    if let Some(refused) = sink.refused() {
        return Err(refused.into());
    }
    if let Some(err) = first_error {
        if let SinkError::KlaviyoUnavailable { .. } = err {
            // Both lanes may have met an outage: the error names every unavailable endpoint.
            let cause = sink.unavailable().unwrap_or(err);
            return Err(SyncError::Unavailable {
                cause,
                intake: Box::new(intake_report?),
                delivery: Box::new(sink.report()),
            });
        }
        return Err(err.into());
    }
    Ok((intake_report?, sink.report()))
}
