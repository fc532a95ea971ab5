//! One reconciliation run: the sweep, page by page, each page's findings and repairs written
//! with the checkpoint in one transaction.

use super::expect::{Expectation, ExpectedPerson, expectation};
use super::readback::{self, ReadBackConfig};
use super::window::{self, Ask, Window};
use super::{DeadLettersMet, Findings, ReconcileError, ReconcileSettings, Report, WebhookFinding};
use crate::engine::{Engine, Mapped};
use crate::marketplacer::Client;
use crate::queries::reconcile::{Step, reconcile_queries};
use crate::source::Record;
use crate::source::reconcile::{Fact, Shapes, invoice_facts, refund_fact};
use crate::store::{
    DeliveryRecord, Filter, Found, NewDeadLetter, NewRequest, ReconcileRun, Store, ledger_key,
};
use crate::sync::queued;
use chrono::{DateTime, Utc};
use serde_json::{Value as Json, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What a run is asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub ask: Ask,
    /// Queue what is missing (and close the dead letters it settles); `false` only reports.
    pub repair: bool,
}

/// Where a run is, after each page.
#[derive(Debug, Clone)]
pub struct Progress {
    pub step: Step,
    /// Pages of this step so far (in this process).
    pub pages: u64,
    pub findings: Findings,
}

/// Reconciles one Marketplacer instance against one store, with one set of mappings, and
/// (given Klaviyo's client) reads Klaviyo back.
pub struct Reconciler {
    engine: Arc<Engine>,
    store: Arc<Mutex<Store>>,
    client: Arc<Client>,
    queries: Vec<(Step, String)>,
    shapes: Arc<Shapes>,
    read_back: Option<ReadBackConfig>,
}

/// The step a run is at once its sweep is done and Klaviyo is being read back: kept in the
/// checkpoint like a query's name, so a run killed while reading resumes there.
pub const READ_BACK_STEP: &str = "klaviyo";

/// Dead letters refused for good: the same body would be refused again.
const PERMANENT: &[&str] = &["invalid", "duplicate-profile"];

/// An open dead letter, by what it concerns.
#[derive(Debug, Clone)]
struct Letter {
    id: i64,
    mapping: String,
    category: String,
    /// The refused request's body, when Klaviyo refused one.
    body: Option<Json>,
}

/// Open dead letters by (marketplace, type, object id) of the record they came from.
type Letters = HashMap<(String, String, String), Vec<Letter>>;

impl Reconciler {
    /// Builds the queries (pages of `page_size`) from the engine's webhook queries.
    pub fn new(
        engine: Arc<Engine>,
        store: Arc<Mutex<Store>>,
        client: Arc<Client>,
        page_size: u32,
    ) -> Result<Reconciler, ReconcileError> {
        let (queries, problems) = reconcile_queries(engine.queries(), page_size);
        if let Some(problem) = problems.first() {
            let at = engine.queries().diagnostic(problem);
            return Err(ReconcileError::Queries(at.to_string()));
        }
        let queries = queries
            .into_iter()
            .map(|(step, query)| (step, query.render()))
            .collect();
        let shapes = Arc::new(Shapes::of(engine.queries()));
        Ok(Reconciler {
            engine,
            store,
            client,
            queries,
            shapes,
            read_back: None,
        })
    }

    /// Reads Klaviyo back after each sweep, through `config` (the sender's client and key).
    pub fn reading_klaviyo(mut self, config: ReadBackConfig) -> Reconciler {
        self.read_back = Some(config);
        self
    }

    /// The client's `reconcile:` settings, or the defaults.
    fn settings(&self) -> ReconcileSettings {
        self.engine.settings().reconcile.clone().unwrap_or_default()
    }

    /// The scope of this reconciler's runs in the store: the instance, and whether it repairs
    /// (a report-only run is never taken up by a repairing one, nor the other way round).
    fn scope(&self, repair: bool) -> String {
        let mode = if repair { "repair" } else { "report-only" };
        format!("{} {mode}", self.client.endpoint())
    }

    /// Runs (or resumes) a reconciliation at `now`, calling `on_page` after each page.
    pub async fn run(
        &self,
        options: &RunOptions,
        now: DateTime<Utc>,
        on_page: &mut (dyn FnMut(&Progress) + Send),
    ) -> Result<Report, ReconcileError> {
        let scope = self.scope(options.repair);
        let (run, window, resumed, notes) = self.start(&scope, options, now).await?;
        let mut findings: Findings = serde_json::from_str(&run.counts).unwrap_or_default();
        let letters = Arc::new(self.letters().await?);
        let started = std::time::Instant::now();
        let (requests_before, waited_before, answering_before) = (
            self.client.requests(),
            self.client.waited(),
            self.client.answering(),
        );
        let (base_requests, base_waited, base_answering) = (
            findings.marketplacer_requests,
            findings.waited_ms,
            findings.answering_ms,
        );
        let mut step = Step::from_name(&run.step).unwrap_or(Step::Webhooks);
        let mut cursor = run.cursor.clone();
        let mut pages = 0u64;
        let timings = Arc::new(Timings::default());
        // The next page is asked for while this one is mapped and kept: Marketplacer's time
        // and ours overlap. Only a kept page moves the checkpoint.
        let mut prefetched: Option<Result<Json, ReconcileError>> = None;
        let swept = run.step == READ_BACK_STEP;
        loop {
            if swept {
                break;
            }
            let data = match prefetched.take() {
                Some(fetched) => fetched?,
                None => self.fetch(step, cursor.as_deref(), &window).await?,
            };
            let page = Page::read(step, data)?;
            let next = match (&page.has_next, &page.end_cursor) {
                (true, Some(end)) => Some((step, Some(end.clone()))),
                _ => Step::ALL
                    .into_iter()
                    .skip_while(|s| *s != step)
                    .nth(1)
                    .map(|s| (s, None)),
            };
            findings.marketplacer_requests =
                base_requests + (self.client.requests() - requests_before);
            findings.waited_ms = base_waited
                + (self.client.waited().saturating_sub(waited_before)).as_millis() as u64;
            findings.answering_ms = base_answering
                + (self.client.answering().saturating_sub(answering_before)).as_millis() as u64;
            let keep = Keep {
                engine: Arc::clone(&self.engine),
                letters: Arc::clone(&letters),
                run_id: run.id,
                window,
                repair: options.repair,
                origin: format!("reconcile {}..{}", window.since_text(), window.until_text()),
                timings: Arc::clone(&timings),
                shapes: Arc::clone(&self.shapes),
                read_back: self.read_back.is_some(),
            };
            let store = Arc::clone(&self.store);
            let next_checkpoint = next.clone();
            let kept = tokio::task::spawn_blocking(move || {
                // Mapping is the slow part, and needs no store: done before the store is
                // taken, so that webhooks `serve` receives meanwhile are not held up.
                let mapping = std::time::Instant::now();
                let objects = keep.prepare(&page, findings.marketplace.as_deref())?;
                keep.timings.add(&keep.timings.mapping_ms, mapping);
                let storing = std::time::Instant::now();
                let mut store = store.lock().expect("store lock");
                let kept = keep.page(
                    &mut store,
                    page,
                    objects,
                    findings,
                    next_checkpoint.as_ref(),
                );
                keep.timings.add(&keep.timings.storing_ms, storing);
                kept
            });
            let fetch_next = async {
                match &next {
                    Some((step, cursor)) => {
                        Some(self.fetch(*step, cursor.as_deref(), &window).await)
                    }
                    None => None,
                }
            };
            let (kept, fetched) = tokio::join!(kept, fetch_next);
            findings = kept.expect("a page is kept without panicking")?;
            prefetched = fetched;
            pages += 1;
            on_page(&Progress {
                step,
                pages,
                findings: findings.clone(),
            });
            match next {
                Some((next_step, next_cursor)) => {
                    if next_step != step {
                        pages = 0;
                    }
                    (step, cursor) = (next_step, next_cursor);
                }
                None => break,
            }
        }
        let read_back = match &self.read_back {
            Some(config) => {
                let settings = self.settings();
                let read = readback::read_back(
                    config,
                    readback::Run {
                        store: &self.store,
                        run_id: run.id,
                        window,
                        findings: &findings,
                        settings: self.engine.settings(),
                        reconcile: &settings,
                        settle: options.ask.settle,
                        repair: options.repair,
                        now,
                    },
                )
                .await?;
                (findings.requeued_from_klaviyo, findings.read_back_notes) = (read.1, read.2);
                self.finish(run.id, &findings).await?;
                Some(read.0)
            }
            // A run killed while reading Klaviyo, resumed without reading it.
            None if swept => {
                self.finish(run.id, &findings).await?;
                None
            }
            None => None,
        };
        Ok(Report {
            run_id: run.id,
            window,
            settle: options.ask.settle,
            resumed,
            report_only: !options.repair,
            findings,
            notes,
            elapsed: started.elapsed(),
            mapping: timings.get(&timings.mapping_ms),
            storing: timings.get(&timings.storing_ms),
            read_back,
        })
    }

    /// Marks the run finished, with its findings.
    async fn finish(&self, run_id: i64, findings: &Findings) -> Result<(), ReconcileError> {
        let store = Arc::clone(&self.store);
        let counts = serde_json::to_string(findings).expect("findings serialise");
        tokio::task::spawn_blocking(move || {
            store.lock().expect("store lock").finish_reconcile_run(
                run_id,
                &counts,
                crate::sink::now_ms(),
            )
        })
        .await
        .expect("a run is finished without panicking")?;
        Ok(())
    }

    /// One page of `step`'s query, from `cursor` on.
    async fn fetch(
        &self,
        step: Step,
        cursor: Option<&str>,
        window: &Window,
    ) -> Result<Json, ReconcileError> {
        let query = &self
            .queries
            .iter()
            .find(|(s, _)| *s == step)
            .expect("a query per step")
            .1;
        let mut variables = json!({ "after": cursor });
        if step.windowed() {
            variables["since"] = json!(window.since_text());
            variables["until"] = json!(window.until_text());
        }
        Ok(self
            .client
            .query(step.operation(), query, variables)
            .await?)
    }

    /// The run to go on with: the unfinished one of this scope when it is the one asked for,
    /// else a new one (abandoning it).
    async fn start(
        &self,
        scope: &str,
        options: &RunOptions,
        now: DateTime<Utc>,
    ) -> Result<(ReconcileRun, Window, bool, Vec<String>), ReconcileError> {
        let store = Arc::clone(&self.store);
        let scope = scope.to_owned();
        let ask = options.ask;
        tokio::task::spawn_blocking(move || {
            let mut store = store.lock().expect("store lock");
            let mut notes = Vec::new();
            if let Some(open) = store.open_reconcile_run(&scope)? {
                match Window::parse(&open.since, &open.until) {
                    Some(window) if window::resumes(&ask, &window, now) => {
                        return Ok((open, window, true, notes));
                    }
                    Some(window) => notes.push(format!(
                        "an unfinished run over {}..{} was left for the window asked for",
                        window.since_text(),
                        window.until_text()
                    )),
                    None => {}
                }
            }
            let (window, note) = window::window(&ask, now).map_err(ReconcileError::Window)?;
            notes.extend(note);
            let counts = serde_json::to_string(&Findings::default()).expect("findings serialise");
            let run = store.start_reconcile_run(
                &scope,
                (&window.since_text(), &window.until_text()),
                Step::ALL[0].name(),
                &counts,
                crate::sink::now_ms(),
            )?;
            Ok((run, window, false, notes))
        })
        .await
        .expect("a run starts without panicking")
    }

    /// The open dead letters, by the object their delivery was.
    async fn letters(&self) -> Result<Letters, ReconcileError> {
        let store = Arc::clone(&self.store);
        let open = tokio::task::spawn_blocking(move || {
            store
                .lock()
                .expect("store lock")
                .open_dead_letters(&Filter::default())
        })
        .await
        .expect("letters are read without panicking")?;
        let mut letters = Letters::new();
        for letter in open {
            let (Some((marketplace, _)), Some(mapping)) = (&letter.delivery, &letter.mapping)
            else {
                continue;
            };
            let Ok(record) = serde_json::from_str::<Record>(&letter.text) else {
                continue;
            };
            let Some(id) = record.node.get("id").and_then(Json::as_str) else {
                continue;
            };
            let body = letter
                .request
                .as_ref()
                .and_then(|(_, body)| serde_json::from_str(body).ok());
            letters
                .entry((marketplace.clone(), record.typename.clone(), id.to_owned()))
                .or_default()
                .push(Letter {
                    id: letter.id,
                    mapping: mapping.clone(),
                    category: letter.category.clone(),
                    body,
                });
        }
        Ok(letters)
    }
}

/// One page of a query's connection.
struct Page {
    step: Step,
    nodes: Vec<Json>,
    has_next: bool,
    end_cursor: Option<String>,
    vertical: Option<String>,
    /// `klaviyoSettings.ecommerceTrackingEnabled`, on the webhooks' pages (`None`: null, no
    /// integration set up).
    native_tracking: Option<bool>,
}

impl Page {
    fn read(step: Step, mut data: Json) -> Result<Page, ReconcileError> {
        let unreadable = |problem: &str| ReconcileError::Unreadable {
            operation: step.operation().to_owned(),
            problem: problem.to_owned(),
        };
        let vertical = data
            .pointer("/siteConfig/verticalCode")
            .and_then(Json::as_str)
            .filter(|v| !v.trim().is_empty())
            .map(str::to_owned);
        let native_tracking = data
            .pointer("/klaviyoSettings/ecommerceTrackingEnabled")
            .and_then(Json::as_bool);
        let Some(Json::Object(mut connection)) = data.get_mut(step.root()).map(Json::take) else {
            return Err(unreadable(&format!(
                "the answer has no `{}` connection",
                step.root()
            )));
        };
        let nodes = match connection.remove("nodes") {
            Some(Json::Array(nodes)) => nodes,
            _ => {
                return Err(unreadable(&format!(
                    "`{}` has no `nodes` list",
                    step.root()
                )));
            }
        };
        let info = connection.remove("pageInfo").unwrap_or(Json::Null);
        let has_next = info
            .get("hasNextPage")
            .and_then(Json::as_bool)
            .unwrap_or(false);
        let end_cursor = info
            .get("endCursor")
            .and_then(Json::as_str)
            .map(str::to_owned);
        if has_next && end_cursor.is_none() {
            return Err(unreadable(
                "a next page is announced without an `endCursor` to ask for it",
            ));
        }
        Ok(Page {
            step,
            nodes,
            has_next,
            end_cursor,
            vertical,
            native_tracking,
        })
    }
}

/// One object read, mapped.
struct Object {
    fact: Fact,
    /// A child of an invoice that did not change inside the window: not checked.
    outside: bool,
    mapped: Mapped,
    /// `mapped`'s requests as the store keeps them.
    requests: Vec<NewRequest>,
}

/// Where this process's time went, besides Marketplacer's answers.
#[derive(Debug, Default)]
struct Timings {
    mapping_ms: std::sync::atomic::AtomicU64,
    storing_ms: std::sync::atomic::AtomicU64,
}

impl Timings {
    fn add(&self, counter: &std::sync::atomic::AtomicU64, since: std::time::Instant) {
        counter.fetch_add(
            since.elapsed().as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn get(&self, counter: &std::sync::atomic::AtomicU64) -> std::time::Duration {
        std::time::Duration::from_millis(counter.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// What keeping a page needs, owned (it runs on a blocking thread).
struct Keep {
    engine: Arc<Engine>,
    letters: Arc<Letters>,
    run_id: i64,
    window: Window,
    repair: bool,
    origin: String,
    timings: Arc<Timings>,
    shapes: Arc<Shapes>,
    /// Klaviyo is read back after the sweep: the expected side is kept, and the last page
    /// moves the checkpoint to [`READ_BACK_STEP`] rather than finishing the run.
    read_back: bool,
}

impl Keep {
    /// The page's objects as records, each mapped: what needs no store. Shipments and refund
    /// requests read with their invoice that did not change inside the window are marked so.
    fn prepare(
        &self,
        page: &Page,
        marketplace: Option<&str>,
    ) -> Result<Vec<Object>, ReconcileError> {
        let operation = page.step.operation();
        let shapes = &*self.shapes;
        let mut facts = Vec::new();
        match page.step {
            Step::UpdatedInvoices | Step::PaidInvoices => {
                for node in &page.nodes {
                    let read = invoice_facts(node, shapes, marketplace)
                        .map_err(|e| ReconcileError::from((operation, e)))?;
                    for (index, fact) in read.into_iter().enumerate() {
                        // The invoice is in the window by the query's filter; its children
                        // only if they changed inside it.
                        let child = index > 0 || fact.record.typename != "Invoice";
                        let outside = child && !fact.times.iter().any(|t| self.window.holds(t));
                        facts.push((fact, outside));
                    }
                }
            }
            Step::RefundedRequests => {
                for node in &page.nodes {
                    if let Some(fact) = refund_fact(node, shapes, marketplace)
                        .map_err(|e| ReconcileError::from((operation, e)))?
                    {
                        facts.push((fact, false));
                    }
                }
            }
            Step::Webhooks | Step::Amendments => {}
        }
        Ok(facts
            .into_iter()
            .map(|(fact, outside)| {
                if outside {
                    return Object {
                        fact,
                        outside,
                        mapped: Mapped::default(),
                        requests: Vec::new(),
                    };
                }
                let mapped = self.engine.map(&fact.record);
                let requests = mapped.requests.iter().map(queued).collect();
                Object {
                    fact,
                    outside,
                    mapped,
                    requests,
                }
            })
            .collect())
    }

    /// The page's objects and requests, classified (and repairs queued), and the checkpoint
    /// moved to `next` (`None`: the last page), in one transaction. Returns the findings so
    /// far; on an error nothing of the page is kept.
    fn page(
        &self,
        store: &mut Store,
        page: Page,
        objects: Vec<Object>,
        findings: Findings,
        next: Option<&(Step, Option<String>)>,
    ) -> Result<Findings, ReconcileError> {
        store.in_transaction(|store| {
            let mut findings = findings;
            match page.step {
                Step::Webhooks => {
                    if findings.marketplace.is_none() {
                        findings.marketplace = page.vertical.clone();
                    }
                    findings.native_klaviyo_tracking |= page.native_tracking == Some(true);
                    self.webhooks(
                        &page,
                        next.is_none_or(|(s, _)| *s != page.step),
                        &mut findings,
                    );
                }
                Step::UpdatedInvoices | Step::PaidInvoices | Step::RefundedRequests => {
                    for object in objects {
                        if object.outside {
                            findings.outside_window += 1;
                            continue;
                        }
                        self.fact(store, object, &mut findings)?;
                    }
                }
                Step::Amendments => {
                    for node in &page.nodes {
                        let id = node.get("id").and_then(Json::as_str).unwrap_or_default();
                        if !store.reconcile_seen(self.run_id, &format!("object:{id}"))? {
                            continue;
                        }
                        findings.amendments += 1;
                        let refunded = node
                            .pointer("/invoice/refundRequests")
                            .and_then(Json::as_array)
                            .is_some_and(|requests| {
                                requests.iter().any(|r| r["status"] == "REFUNDED")
                            });
                        if !refunded {
                            findings.amendments_without_refund_request += 1;
                        }
                    }
                }
            }
            let counts = serde_json::to_string(&findings).expect("findings serialise");
            let now = crate::sink::now_ms();
            match next {
                Some((step, cursor)) => store.reconcile_progress(
                    self.run_id,
                    (step.name(), cursor.as_deref()),
                    &counts,
                    now,
                )?,
                None if self.read_back => {
                    store.reconcile_progress(self.run_id, (READ_BACK_STEP, None), &counts, now)?
                }
                None => store.finish_reconcile_run(self.run_id, &counts, now)?,
            }
            Ok(findings)
        })
    }

    /// Disabled webhooks of the types the mappings read; at the last page, the types with no
    /// webhook at all.
    fn webhooks(&self, page: &Page, last: bool, findings: &mut Findings) {
        let wanted: Vec<String> = self
            .engine
            .queries()
            .queries
            .keys()
            .map(|t| webhook_type(t))
            .collect();
        for node in &page.nodes {
            let kind = node["type"].as_str().unwrap_or_default().to_owned();
            if !findings.webhook_types.contains(&kind) {
                findings.webhook_types.push(kind.clone());
            }
            if wanted.contains(&kind) && node["enabled"] == json!(false) {
                findings.webhooks.push(WebhookFinding {
                    kind,
                    id: node["id"].as_str().map(str::to_owned),
                    problem: "disabled".into(),
                });
            }
        }
        if last {
            for kind in wanted {
                if !findings.webhook_types.contains(&kind) {
                    findings.webhooks.push(WebhookFinding {
                        kind,
                        id: None,
                        problem: "missing".into(),
                    });
                }
            }
        }
    }

    /// One object of the window: mapped, each request classified once, the missing queued.
    fn fact(
        &self,
        store: &mut Store,
        object: Object,
        findings: &mut Findings,
    ) -> Result<(), ReconcileError> {
        let Object {
            fact,
            mapped,
            requests: mapped_requests,
            ..
        } = object;
        if !store.reconcile_seen(self.run_id, &format!("object:{}", fact.id))? {
            return Ok(());
        }
        let record = fact.record;
        *findings.read.entry(record.typename.clone()).or_default() += 1;
        let marketplace = self.engine.marketplace_of(&record).to_owned();
        let letters: &[Letter] = self
            .letters
            .get(&(
                marketplace.clone(),
                record.typename.clone(),
                fact.id.clone(),
            ))
            .map_or(&[], Vec::as_slice);

        // Each request once per run: two invoices of one order imply one Placed Order.
        let mut requests: Vec<(NewRequest, Found)> = Vec::new();
        for request in mapped_requests {
            if let Some(key) = request_key(&request)
                && !store.reconcile_seen(self.run_id, &key)?
            {
                continue;
            }
            findings.expected += 1;
            let found = store.request_found(&request)?;
            if self.read_back {
                self.expect(store, &request, found, &marketplace)?;
            }
            requests.push((request, found));
        }
        let failing: Vec<&str> = mapped.errors.iter().map(|e| &*e.mapping).collect();
        let mut failures = Vec::new();
        for error in &mapped.errors {
            *findings
                .mapping_errors
                .entry(error.mapping.to_string())
                .or_default() += 1;
            // A failure already kept as a dead letter is not kept twice.
            if !letters.iter().any(|l| *l.mapping == *error.mapping) {
                failures.push(NewDeadLetter {
                    mapping: Some(error.mapping.to_string()),
                    category: format!("mapping:{}", error.kind.as_str()),
                    reason: error.message.clone(),
                    details: json!({}),
                });
            }
        }

        // The letters this object has: left open, closed, or requeued with the repairs.
        let mut held = vec![false; requests.len()];
        let mut to_close = Vec::new();
        for letter in letters {
            findings.dead_letters.met += 1;
            let of_mapping: Vec<usize> = (0..requests.len())
                .filter(|&i| requests[i].0.mapping == letter.mapping)
                .collect();
            if failing.contains(&letter.mapping.as_str()) || of_mapping.is_empty() {
                findings.dead_letters.left_open += 1;
                continue;
            }
            let refused_again = PERMANENT.contains(&letter.category.as_str())
                && of_mapping.iter().any(|&i| {
                    requests[i].1 == Found::Missing
                        && letter.body.as_ref().is_some_and(|body| {
                            serde_json::from_str::<Json>(&requests[i].0.body)
                                .ok()
                                .as_ref()
                                == Some(body)
                        })
                });
            if refused_again {
                for &i in &of_mapping {
                    if requests[i].1 == Found::Missing
                        && letter.body.as_ref().is_some_and(|body| {
                            serde_json::from_str::<Json>(&requests[i].0.body)
                                .ok()
                                .as_ref()
                                == Some(body)
                        })
                    {
                        held[i] = true;
                    }
                }
                findings.dead_letters.left_open += 1;
            } else if of_mapping.iter().any(|&i| requests[i].1 == Found::Missing) {
                findings.dead_letters.requeued += 1;
                to_close.push(letter.id);
            } else {
                findings.dead_letters.closed += 1;
                to_close.push(letter.id);
            }
        }

        let mut repairs = Vec::new();
        for ((request, found), held) in requests.into_iter().zip(held) {
            match found {
                Found::Accepted => findings.accepted += 1,
                Found::Queued => findings.queued += 1,
                Found::Unknown => findings.unchecked += 1,
                Found::Missing if held => findings.left_with_dead_letters += 1,
                Found::Missing => {
                    *findings.missing.entry(request.mapping.clone()).or_default() += 1;
                    repairs.push(request);
                }
            }
        }
        if !self.repair {
            return Ok(());
        }
        let now = crate::sink::now_ms();
        if !repairs.is_empty() || !failures.is_empty() {
            let text = serde_json::to_string(&record).expect("a record serialises");
            let delivery = DeliveryRecord {
                marketplace: &marketplace,
                delivery_id: &record.delivery_id,
                origin: &self.origin,
                text: &text,
            };
            store.queue_repairs(&delivery, &repairs, &failures, now)?;
        }
        for id in to_close {
            store.resolve(id, now)?;
        }
        Ok(())
    }
}

impl Keep {
    /// Keeps what `request` says Klaviyo should hold, with the run: an event as it is, a
    /// person merged with what earlier requests said of them.
    fn expect(
        &self,
        store: &mut Store,
        request: &NewRequest,
        found: Found,
        marketplace: &str,
    ) -> Result<(), ReconcileError> {
        let Some(expectation) = expectation(request, found, marketplace, self.engine.settings())
        else {
            return Ok(());
        };
        let key = expectation.key();
        let body = match expectation {
            Expectation::Event(event) => serde_json::to_string(&event),
            Expectation::Person(person) => {
                let kept: Option<ExpectedPerson> = store
                    .expected_one(self.run_id, &key)?
                    .and_then(|body| serde_json::from_str(&body).ok());
                let person = match kept {
                    Some(kept) => kept.merge(person),
                    None => person,
                };
                serde_json::to_string(&person)
            }
        }
        .expect("an expectation serialises");
        store.keep_expected(self.run_id, &key, &body)?;
        Ok(())
    }
}

/// What makes a request the same request wherever it comes from: its once key (scoped by its
/// mapping), else its `unique_id` at its endpoint.
fn request_key(request: &NewRequest) -> Option<String> {
    match (&request.once_key, &request.unique_id) {
        (Some(once), _) => Some(format!("request:{}", ledger_key(&request.mapping, once))),
        (None, Some(unique)) => Some(format!("request:{}\u{1f}{unique}", request.endpoint)),
        (None, None) => None,
    }
}

/// Marketplacer's webhook type (`REFUND_REQUEST`) of a record type (`RefundRequest`).
fn webhook_type(type_name: &str) -> String {
    let mut out = String::new();
    for (index, c) in type_name.chars().enumerate() {
        if c.is_uppercase() && index > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

impl DeadLettersMet {
    pub fn closed_total(&self) -> u64 {
        self.requeued + self.closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_types_are_marketplacers_spelling() {
        assert_eq!(webhook_type("RefundRequest"), "REFUND_REQUEST");
        assert_eq!(webhook_type("Invoice"), "INVOICE");
    }

    #[test]
    fn a_request_is_itself_by_its_once_key_else_its_unique_id() {
        let mut request = NewRequest {
            mapping: "placed-order".into(),
            endpoint: "/api/events".into(),
            unique_id: Some("pm:placed-order:1".into()),
            once_key: Some("pm:1".into()),
            ..NewRequest::default()
        };
        assert_eq!(
            request_key(&request).unwrap(),
            "request:placed-order\u{1f}pm:1"
        );
        request.once_key = None;
        assert_eq!(
            request_key(&request).unwrap(),
            "request:/api/events\u{1f}pm:placed-order:1"
        );
        request.unique_id = None;
        assert_eq!(request_key(&request), None);
    }
}
