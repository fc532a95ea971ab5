//! The run loop: read deliveries, map them, keep "once per key", write requests, count.
//!
//! Every delivery ends in exactly one of the summary's buckets (requests written, skipped
//! because no mapping reads its type, no request because its conditions did not hold, or
//! rejected with a reason), so nothing read can vanish unaccounted. A bad line is reported with
//! its file and line number and the run goes on with the next one.
//!
//! "Once per key" holds in memory for one run here; the durable store makes it hold across runs.

use crate::engine::{Engine, Mapped};
use crate::klaviyo::Request;
use crate::source::{self, Input, Line, Record};
use std::collections::{BTreeMap, HashSet};
use std::io::{self, Write};

/// What a run did, for the closing summary and the exit code.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Deliveries read (lines of NDJSON, `.json` files).
    pub deliveries: usize,
    /// Records mapped (a backfill page holds many).
    pub records: usize,
    /// Requests written, by mapping.
    pub requests: BTreeMap<String, usize>,
    /// Records no mapping reads, by object type.
    pub skipped: BTreeMap<String, usize>,
    /// Records a mapping reads but whose conditions held for none (an unpaid invoice).
    pub without_request: usize,
    /// Deliveries seen before in this run (same marketplace and delivery id), not mapped again.
    pub repeated_deliveries: usize,
    /// Requests dropped because their mapping fires once per key and the key was seen.
    pub once_per_key_dropped: usize,
    /// Rejected deliveries or mapping failures, by reason.
    pub rejected: BTreeMap<String, usize>,
    pub warnings: usize,
}

impl Summary {
    pub fn request_count(&self) -> usize {
        self.requests.values().sum()
    }

    pub fn rejected_count(&self) -> usize {
        self.rejected.values().sum()
    }

    /// The human summary printed on stderr after a run.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line =
            |label: &str, value: String| out.push_str(&format!("  {label:<28} {value}\n"));
        line("deliveries read", self.deliveries.to_string());
        line("records", self.records.to_string());
        line("requests", self.request_count().to_string());
        for (mapping, count) in &self.requests {
            line(&format!("  {mapping}"), count.to_string());
        }
        line("repeated deliveries", self.repeated_deliveries.to_string());
        line(
            "dropped as once-per-key",
            self.once_per_key_dropped.to_string(),
        );
        line("no request (conditions)", self.without_request.to_string());
        line(
            "skipped (type not mapped)",
            self.skipped.values().sum::<usize>().to_string(),
        );
        for (typename, count) in &self.skipped {
            line(&format!("  {typename}"), count.to_string());
        }
        line("rejected", self.rejected_count().to_string());
        for (reason, count) in &self.rejected {
            line(&format!("  {reason}"), count.to_string());
        }
        line("warnings", self.warnings.to_string());
        format!("summary:\n{out}")
    }
}

/// Maps deliveries to requests, remembering what it has seen during one run.
pub struct Runner<'a> {
    engine: &'a Engine,
    seen_deliveries: HashSet<String>,
    seen_keys: HashSet<String>,
    pub summary: Summary,
}

impl<'a> Runner<'a> {
    pub fn new(engine: &'a Engine) -> Runner<'a> {
        Runner {
            engine,
            seen_deliveries: HashSet::new(),
            seen_keys: HashSet::new(),
            summary: Summary::default(),
        }
    }

    /// Maps one delivery. Requests go to `emit`; problems are reported to `report` as lines
    /// naming the input, line and delivery.
    pub fn delivery(
        &mut self,
        line: &Line,
        mut emit: impl FnMut(&Request) -> io::Result<()>,
        report: &mut dyn Write,
    ) -> io::Result<()> {
        self.summary.deliveries += 1;
        let at = format!("{}:{}", line.origin, line.number);
        let records = match source::parse_delivery(&line.text) {
            Ok(records) => records,
            Err(err) => {
                *self
                    .summary
                    .rejected
                    .entry(err.reason().to_owned())
                    .or_default() += 1;
                writeln!(report, "{at}: rejected: {err}")?;
                return Ok(());
            }
        };
        for record in records {
            let Some(mapped) = self.record(&record) else {
                continue;
            };
            report_mapped(report, &at, &record.delivery_id, &mapped)?;
            for request in &mapped.requests {
                emit(request)?;
            }
        }
        Ok(())
    }

    /// Maps one record as a run does, counting it: a delivery seen before gives `None`, and a
    /// request whose mapping fires once per key is dropped when its key was seen. Tests and
    /// snapshots go through here too, so they show exactly what a run would send.
    pub fn record(&mut self, record: &Record) -> Option<Mapped> {
        let marketplace = self.engine.marketplace_of(record);
        let identity = format!("{marketplace}\u{1f}{}", record.delivery_id);
        if !self.seen_deliveries.insert(identity) {
            self.summary.repeated_deliveries += 1;
            return None;
        }
        self.summary.records += 1;
        let mut mapped = self.engine.map(record);
        self.summary.warnings += mapped.warnings.len();
        for error in &mapped.errors {
            *self
                .summary
                .rejected
                .entry(error.kind.as_str().to_owned())
                .or_default() += 1;
        }
        if !mapped.matched {
            *self
                .summary
                .skipped
                .entry(record.typename.clone())
                .or_default() += 1;
            return Some(mapped);
        }
        if mapped.requests.is_empty() && mapped.errors.is_empty() {
            self.summary.without_request += 1;
        }
        mapped.requests.retain(|request| {
            if let Some(key) = &request.once_key {
                let scoped = format!("{}\u{1f}{key}", request.mapping);
                if !self.seen_keys.insert(scoped) {
                    self.summary.once_per_key_dropped += 1;
                    return false;
                }
            }
            *self
                .summary
                .requests
                .entry(request.mapping.to_string())
                .or_default() += 1;
            true
        });
        Some(mapped)
    }
}

/// Writes a record's warnings and mapping failures as report lines naming where it was read.
pub(crate) fn report_mapped(
    report: &mut dyn Write,
    at: &str,
    delivery_id: &str,
    mapped: &Mapped,
) -> io::Result<()> {
    for warning in &mapped.warnings {
        writeln!(report, "{at}: warning: delivery {delivery_id}: {warning}")?;
    }
    for error in &mapped.errors {
        writeln!(report, "{at}: rejected: delivery {delivery_id}: {error}")?;
    }
    Ok(())
}

/// A dry run: every input in order, one request per line on `out` as NDJSON.
pub fn dry_run(
    engine: &Engine,
    inputs: &[Input],
    out: &mut dyn Write,
    report: &mut dyn Write,
) -> io::Result<Summary> {
    let mut runner = Runner::new(engine);
    for input in inputs {
        for line in source::read_lines(input)? {
            let line = line?;
            runner.delivery(
                &line,
                |request| {
                    out.write_all(request.to_line().as_bytes())?;
                    out.write_all(b"\n")
                },
                report,
            )?;
        }
    }
    out.flush()?;
    Ok(runner.summary)
}
