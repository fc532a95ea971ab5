//! The run loop: read deliveries, map them, keep "once per key", write requests, count.
//!
//! Every delivery ends in exactly one of the summary's buckets (requests written, skipped
//! because no mapping reads its type, no request because its conditions did not hold, or
//! rejected with a reason), so nothing read can vanish unaccounted. A bad line (bytes that are
//! not UTF-8 included) is reported with its file and line number and the run goes on with the
//! next one; an input that cannot be opened or read is reported and the run goes on with the
//! next input.
//!
//! "Once per key" holds in memory for one run here; the durable store makes it hold across runs.

use crate::engine::{Engine, Mapped};
use crate::klaviyo::Request;
use crate::pipeline::{self, Item};
use crate::source::{self, Input, Line, Record};
use std::collections::{BTreeMap, HashSet};
use std::io::{self, Write};
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};

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
    /// Inputs that could not be opened, or read to their end.
    pub input_errors: usize,
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
        // Only when there are any: like the `error:` lines, it says the output is incomplete.
        if self.input_errors > 0 {
            line("input errors", self.input_errors.to_string());
        }
        format!("summary:\n{out}")
    }
}

/// Maps deliveries to requests, remembering what it has seen during one run.
///
/// Work is split in two so it can be spread over threads: [`prepare`] parses and maps one
/// delivery (any thread, any order; it reads only the keys already sent, [`SentKeys`]), and
/// [`Runner::accept`] decides in input order what that delivery contributes (a repeat gives
/// nothing, a once-per key seen before drops its request) and counts it. One thread or many,
/// the output is the same.
pub struct Runner<'a> {
    engine: &'a Engine,
    /// Fingerprints rather than the keys themselves: memory stays small however long the run.
    seen_deliveries: Seen,
    seen_keys: SentKeys,
    pub summary: Summary,
}

/// One delivery, parsed and mapped, with where it was read.
pub struct Prepared {
    at: String,
    outcome: Result<Vec<PreparedRecord>, source::RecordError>,
}

/// One record of a prepared delivery.
struct PreparedRecord {
    /// Marketplace and delivery id: the same twice means the same delivery.
    identity: u128,
    delivery_id: String,
    typename: String,
    mapped: Mapped,
    /// Each request's output line, when prepared for a dry run; made here so that the
    /// serialising happens on the worker threads too.
    lines: Vec<String>,
}

/// The once-per keys a run has sent, shared with the threads that prepare deliveries so that
/// they build no request the run would drop ([`Engine::map_unsent`]). It holds only the keys
/// of deliveries already accepted, which all come before any delivery still being prepared:
/// a key it holds was sent before that delivery whatever the threads' timing, so the output is
/// the same with one job or eight.
#[derive(Clone, Default)]
pub struct SentKeys(Arc<Mutex<Seen>>);

impl SentKeys {
    /// Adds a key's fingerprint; false if it was already there.
    fn insert(&self, fingerprint: u128) -> bool {
        self.0.lock().expect("sent keys lock").insert(fingerprint)
    }

    /// Whether `mapping` has sent a request with once-per key `key`.
    pub fn contains(&self, mapping: &str, key: &str) -> bool {
        let fingerprint = fingerprint(&[mapping, key]);
        self.0.lock().expect("sent keys lock").contains(fingerprint)
    }
}

/// Parses and maps one delivery. Pure but for reading `sent`: it may run on any thread, in any
/// order.
pub fn prepare(engine: &Engine, line: &Line, with_lines: bool, sent: &SentKeys) -> Prepared {
    let at = format!("{}:{}", line.origin, line.number);
    let outcome = source::parse_line(line).map(|records| {
        records
            .into_iter()
            .map(|record| {
                let mut mapped =
                    engine.map_unsent(&record, &|mapping, key| sent.contains(mapping, key));
                let mut lines = Vec::new();
                if with_lines {
                    lines = mapped.requests.iter().map(Request::to_line).collect();
                    // The line holds the body now. Dropping the body tree here, on the thread
                    // that built it, rather than on the writing thread after a trip between
                    // cores, cut a two-job dry run from 1.82 to 1.69 CPU s per 100 MB (wall
                    // 1.03 → 0.92 s; docs/performance.md).
                    for request in &mut mapped.requests {
                        drop(std::mem::take(&mut request.body));
                    }
                }
                PreparedRecord {
                    identity: identity(engine, &record),
                    delivery_id: record.delivery_id,
                    typename: record.typename,
                    mapped,
                    lines,
                }
            })
            .collect()
    });
    Prepared { at, outcome }
}

fn identity(engine: &Engine, record: &Record) -> u128 {
    fingerprint(&[engine.marketplace_of(record), &record.delivery_id])
}

/// A 128-bit digest of some strings: collisions are out of reach for any real run (2^-64 at
/// four billion keys), at a sixteenth of the memory of long keys.
fn fingerprint(parts: &[&str]) -> u128 {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    u128::from_le_bytes(
        digest[..16]
            .try_into()
            .expect("a SHA-256 digest has 32 bytes"),
    )
}

impl<'a> Runner<'a> {
    pub fn new(engine: &'a Engine) -> Runner<'a> {
        Runner {
            engine,
            seen_deliveries: Seen::default(),
            seen_keys: SentKeys::default(),
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
        let prepared = prepare(self.engine, line, false, &self.seen_keys.clone());
        self.accept(prepared, |request, _| emit(request), report)
    }

    /// Takes a prepared delivery, in input order: counts it, reports its problems, and hands
    /// each request that survives the run's memory to `emit` (with its output line, if made).
    pub fn accept(
        &mut self,
        prepared: Prepared,
        mut emit: impl FnMut(&Request, Option<&str>) -> io::Result<()>,
        report: &mut dyn Write,
    ) -> io::Result<()> {
        self.summary.deliveries += 1;
        let records = match prepared.outcome {
            Ok(records) => records,
            Err(err) => {
                *self
                    .summary
                    .rejected
                    .entry(err.reason().to_owned())
                    .or_default() += 1;
                writeln!(report, "{}: rejected: {err}", prepared.at)?;
                return Ok(());
            }
        };
        for record in records {
            if !self.first_time(record.identity) {
                continue;
            }
            self.tally(&record.typename, &record.mapped);
            self.summary.once_per_key_dropped += record.mapped.already_sent;
            report_mapped(report, &prepared.at, &record.delivery_id, &record.mapped)?;
            for (index, request) in record.mapped.requests.iter().enumerate() {
                if self.keep(request) {
                    emit(request, record.lines.get(index).map(String::as_str))?;
                }
            }
        }
        Ok(())
    }

    /// An input that could not be opened or read to its end: reported and counted, and the
    /// run goes on with the next input.
    pub fn unread(&mut self, err: &io::Error, report: &mut dyn Write) -> io::Result<()> {
        self.summary.input_errors += 1;
        writeln!(report, "error: {err}")
    }

    /// Maps one record as a run does, counting it: a delivery seen before gives `None`, and a
    /// request whose mapping fires once per key is dropped when its key was seen. Tests and
    /// snapshots go through here too, so they show exactly what a run would send.
    pub fn record(&mut self, record: &Record) -> Option<Mapped> {
        if !self.first_time(identity(self.engine, record)) {
            return None;
        }
        let mut mapped = self.engine.map(record);
        self.tally(&record.typename, &mapped);
        mapped.requests.retain(|request| self.keep(request));
        Some(mapped)
    }

    /// Whether this delivery is new to the run; a repeat is counted.
    fn first_time(&mut self, identity: u128) -> bool {
        let new = self.seen_deliveries.insert(identity);
        if !new {
            self.summary.repeated_deliveries += 1;
        }
        new
    }

    /// Counts a mapped record into the summary.
    fn tally(&mut self, typename: &str, mapped: &Mapped) {
        self.summary.records += 1;
        self.summary.warnings += mapped.warnings.len();
        for error in &mapped.errors {
            *self
                .summary
                .rejected
                .entry(error.kind.as_str().to_owned())
                .or_default() += 1;
        }
        if !mapped.matched {
            *self.summary.skipped.entry(typename.to_owned()).or_default() += 1;
        } else if mapped.requests.is_empty() && mapped.errors.is_empty() && mapped.already_sent == 0
        {
            self.summary.without_request += 1;
        }
    }

    /// Whether a request goes out: not when its mapping fires once per key and the key was
    /// seen. A request that goes is counted.
    fn keep(&mut self, request: &Request) -> bool {
        if let Some(key) = &request.once_key
            && !self.seen_keys.insert(fingerprint(&[&request.mapping, key]))
        {
            self.summary.once_per_key_dropped += 1;
            return false;
        }
        *self
            .summary
            .requests
            .entry(request.mapping.to_string())
            .or_default() += 1;
        true
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

/// A set of fingerprints at 16 bytes each, for runs of any length.
///
/// A hash set costs about twice that (its spare capacity), and three times while it doubles: at
/// 1 GB of deliveries (600,000 keys) that alone pushed a two-thread dry run past 64 MB. New
/// fingerprints go to a small hash set; every `FLUSH` of them are merged into 256 sorted
/// vectors (by first byte), each merge touching only its own vector, so nothing large is ever
/// copied at once. Lookups are a hash probe and a binary search.
#[derive(Default)]
struct Seen {
    recent: HashSet<u128>,
    shards: Vec<Vec<u128>>,
}

impl Seen {
    const FLUSH: usize = 1 << 15;

    fn contains(&self, fingerprint: u128) -> bool {
        self.recent.contains(&fingerprint)
            || self
                .shards
                .get((fingerprint >> 120) as usize)
                .is_some_and(|s| s.binary_search(&fingerprint).is_ok())
    }

    /// Adds `fingerprint`; false if it was already there.
    fn insert(&mut self, fingerprint: u128) -> bool {
        let shard = (fingerprint >> 120) as usize;
        if self
            .shards
            .get(shard)
            .is_some_and(|s| s.binary_search(&fingerprint).is_ok())
        {
            return false;
        }
        if !self.recent.insert(fingerprint) {
            return false;
        }
        if self.recent.len() >= Self::FLUSH {
            self.flush();
        }
        true
    }

    fn flush(&mut self) {
        if self.shards.is_empty() {
            self.shards = vec![Vec::new(); 256];
        }
        let mut incoming: Vec<u128> = self.recent.drain().collect();
        incoming.sort_unstable();
        for run in incoming.chunk_by(|a, b| a >> 120 == b >> 120) {
            let shard = &mut self.shards[(run[0] >> 120) as usize];
            shard.reserve_exact(run.len());
            // Merge from the back, in place: both parts are sorted and disjoint.
            let old = shard.len();
            shard.resize(old + run.len(), 0);
            let (mut i, mut j, mut at) = (old, run.len(), shard.len());
            while j > 0 {
                at -= 1;
                if i > 0 && shard[i - 1] > run[j - 1] {
                    shard[at] = shard[i - 1];
                    i -= 1;
                } else {
                    shard[at] = run[j - 1];
                    j -= 1;
                }
            }
        }
    }
}

/// A dry run: every input in order, one request per line on `out` as NDJSON. With `jobs`
/// above 1, deliveries are parsed and mapped on that many threads while one reader feeds them
/// and this thread writes the results, in input order.
pub fn dry_run(
    engine: &Engine,
    inputs: &[Input],
    jobs: usize,
    out: &mut dyn Write,
    report: &mut dyn Write,
) -> io::Result<Summary> {
    let mut runner = Runner::new(engine);
    let sent = runner.seen_keys.clone();
    let write = |out: &mut dyn Write, request: &Request, line: Option<&str>| {
        match line {
            Some(line) => out.write_all(line.as_bytes())?,
            None => out.write_all(request.to_line().as_bytes())?,
        }
        out.write_all(b"\n")
    };
    pipeline::map_in_order(
        inputs,
        jobs,
        |line| prepare(engine, line, true, &sent),
        |item| {
            match item {
                Item::Delivery(prepared) => runner.accept(
                    prepared,
                    |request, line| write(&mut *out, request, line),
                    report,
                )?,
                Item::Unread(err) => runner.unread(&err, report)?,
                // The requests of a delivery from a quiet pipe are printed now, not when the
                // buffer fills.
                Item::Idle => out.flush()?,
            }
            Ok::<_, io::Error>(ControlFlow::Continue(()))
        },
    )?;
    out.flush()?;
    Ok(runner.summary)
}

#[cfg(test)]
mod tests {
    use super::{Runner, Seen, prepare};
    use crate::engine::Engine;
    use crate::source::{Line, parse_line};

    /// A request whose once-per key was sent is not built on the way in, yet the run writes
    /// and counts exactly what it did when every request was built and then dropped.
    #[test]
    fn requests_already_sent_are_not_built_and_the_run_is_the_same() {
        let (engine, _) = Engine::builtin().expect("the default mappings compile");
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/orders.ndjson");
        let text = std::fs::read_to_string(path).unwrap();
        // The sample orders (one of them from two invoices), then every delivery again under a
        // new envelope id: a new delivery, all of whose once-per keys were sent.
        let again = text.replace("\"body\":{\"id\":\"", "\"body\":{\"id\":\"again-");
        let lines: Vec<Line> = text
            .lines()
            .chain(again.lines())
            .enumerate()
            .map(|(i, line)| Line {
                origin: "orders".into(),
                number: i + 1,
                text: line.to_owned(),
                not_utf8_at: None,
            })
            .collect();

        // Every request built, then kept or dropped.
        let mut full = Runner::new(&engine);
        let mut full_out = Vec::new();
        for line in &lines {
            full.summary.deliveries += 1;
            for record in parse_line(line).unwrap() {
                if let Some(mapped) = full.record(&record) {
                    full_out.extend(mapped.requests.iter().map(|r| r.to_line()));
                }
            }
        }

        let mut skipping = Runner::new(&engine);
        let mut out = Vec::new();
        let mut not_built = 0;
        // The samples hold a redelivery, which counts for nothing.
        let mut deliveries = std::collections::HashSet::new();
        for line in &lines {
            let prepared = prepare(&engine, line, true, &skipping.seen_keys.clone());
            for record in prepared.outcome.as_ref().unwrap() {
                if deliveries.insert(record.identity) {
                    not_built += record.mapped.already_sent;
                }
            }
            let mut write = |_: &_, line: Option<&str>| {
                out.push(line.unwrap().to_owned());
                Ok(())
            };
            skipping
                .accept(prepared, &mut write, &mut Vec::new())
                .unwrap();
        }
        assert_eq!(out, full_out);
        assert_eq!(skipping.summary, full.summary);
        assert!(full.summary.once_per_key_dropped > 0);
        assert_eq!(
            not_built, full.summary.once_per_key_dropped,
            "one job: every request the run drops is one it did not build"
        );
    }

    #[test]
    fn seen_keeps_every_fingerprint_across_merges() {
        let mut seen = Seen::default();
        // A spread of fingerprints (multiplied so they fill every shard), three merges' worth.
        let value = |n: u128| n.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
        let count = 3 * Seen::FLUSH as u128 + 123;
        for n in 0..count {
            assert!(seen.insert(value(n)), "{n} is new");
        }
        for n in 0..count {
            assert!(!seen.insert(value(n)), "{n} was seen");
        }
        for shard in &seen.shards {
            assert!(shard.windows(2).all(|w| w[0] < w[1]), "shards stay sorted");
        }
        assert!(seen.insert(value(count)));
    }
}
