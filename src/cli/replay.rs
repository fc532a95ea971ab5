//! `marketsync replay`: captured deliveries sent to a receiver as Marketplacer sends them.

use super::{EXIT_DISABLED, EXIT_IO, EXIT_OK, EXIT_REJECTED, EXIT_USAGE};
use marketsync::replay::{
    self, DEFAULT_CONCURRENCY, DEFAULT_MAX_ATTEMPTS, Delivery, Finished, Options,
};
use marketsync::source::webhook::{Defaults, outgoing};
use marketsync::source::{Input, read_lines};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Send captured deliveries to a webhook receiver as Marketplacer does: its headers, an HMAC
/// over the exact bytes, retries with backoff; and say what Marketplacer would have failed.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  WEBHOOK_SECRET=... marketsync replay --to http://127.0.0.1:8080/webhooks \\
    --secret-env WEBHOOK_SECRET captures.ndjson
  marketsync replay --to https://new-instance.example.com/hook --rate 20/s --concurrency 4 day.ndjson

Inputs: `.json` files hold one delivery; `.ndjson`/`.jsonl` files and standard input (`-`, or no
INPUT) hold one per line. A capture ({\"headers\", \"body\"}) is sent with its body exactly as
captured and its Idempotency-Key, Marketplacer-Sequence and Marketplacer-Vertical headers; a bare
envelope ({\"id\", \"event_name\", \"payload\"}) is sent as read, with Idempotency-Key = its id,
Marketplacer-Sequence = its place in the replay and Marketplacer-Vertical = --vertical. Both
get User-Agent: Marketplacer Client/1.0.0 and Content-Type: application/json, and, with
--secret-env, Marketplacer-Hmac-256 = base64(HMAC-SHA256(secret, body)). A line that is not a
webhook delivery (not JSON, a backfill page) is reported and skipped.

As Marketplacer: a 2xx within --timeout is accepted; timeouts, connection errors, 5xx and 429
are retried after --backoff-base, doubling each time up to --backoff-max, and at least the
answer's Retry-After; each 429 lowers the concurrency by one. A redirect or any other 4xx fails
the delivery and disables the webhook: sending stops at once. The defaults are Marketplacer's
(100 at once, 26 attempts, 1 minute doubling to 4 days); lower them to replay quickly.

The secret is read from the variable --secret-env names, only, and never printed.

The summary also gives the receiver's answer times (p50, p95, p99, max over every answer).
--report FILE writes one JSON line per delivery as it ends, accepted or failed: its id,
idempotency_key, origin, status (the last answer's), attempts, accepted_at_ms (Unix ms when the
2xx was read; null if it failed), answer_ms (the last attempt's answer time) and
started_late_ms (under --rate, how long after its planned start the first attempt started,
waiting for a free slot included).

Ctrl-C stops at once: requests in flight are abandoned, and the summary counts them as not
delivered.

Exit 0 when every delivery was accepted, 1 when a delivery failed after --max-attempts, a line
was skipped or sending was interrupted, 2 on a usage error (a --secret-env variable that is not set, too), 4 when an input
could not be opened or read or the --report file could not be written, 7 when the webhook would have been disabled (a redirect or a 4xx
other than 429).")]
pub struct Args {
    /// The receiver's URL (http:// or https://).
    #[arg(long, value_name = "URL")]
    to: String,
    /// The environment variable holding the HMAC secret; left out, no Marketplacer-Hmac-256.
    #[arg(long, value_name = "VAR")]
    secret_env: Option<String>,
    /// Requests started per second, retries included: `N`, `N/s` or `N/m`. Starts missed while
    /// every slot waited (up to a second's worth) are made when slots free, as Marketplacer
    /// sends what it kept.
    #[arg(long, value_name = "N/s", value_parser = parse_rate)]
    rate: Option<f64>,
    /// Requests in flight at once (Marketplacer's concurrentSendLimit: 1 to 200).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CONCURRENCY as u16,
          value_parser = clap::value_parser!(u16).range(1..=200))]
    concurrency: u16,
    /// Attempts per delivery, the first included, before it is reported failed.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_ATTEMPTS,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_attempts: u32,
    /// Seconds before the first retry; each next retry waits twice as long.
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0, value_parser = parse_seconds)]
    backoff_base: f64,
    /// The longest wait before a retry, in seconds (also caps Retry-After).
    #[arg(long, value_name = "SECONDS", default_value_t = 345_600.0, value_parser = parse_seconds)]
    backoff_max: f64,
    /// Seconds a receiver has to answer before the attempt counts as a timeout.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0, value_parser = parse_timeout)]
    timeout: f64,
    /// Marketplacer-Vertical for deliveries that do not carry one (bare envelopes).
    #[arg(long, value_name = "NAME")]
    vertical: Option<String>,
    /// A header added to every request (a webhook's static `headers` at Marketplacer),
    /// `NAME: VALUE`; may be repeated.
    #[arg(long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Write one JSON line per delivery that ended (accepted or failed) to FILE.
    #[arg(long, value_name = "FILE")]
    report: Option<std::path::PathBuf>,
    /// Files to read; `-` or nothing for standard input.
    #[arg(value_name = "INPUT")]
    inputs: Vec<String>,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let (number, per) = match text.split_once('/') {
        Some((number, unit)) => match unit.trim() {
            "s" => (number, 1.0),
            "m" => (number, 60.0),
            other => return Err(format!("unknown unit `{other}` (use N/s or N/m)")),
        },
        None => (text, 1.0),
    };
    match number.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 => Ok(n / per),
        _ => Err("expected a positive number, as N/s or N/m".into()),
    }
}

fn parse_seconds(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 => Ok(n),
        _ => Err("expected a number of seconds, 0 or more".into()),
    }
}

fn parse_timeout(text: &str) -> Result<f64, String> {
    let seconds = parse_seconds(text)?;
    if seconds <= 0.0 {
        return Err("a timeout of 0 would fail every request".into());
    }
    Ok(seconds)
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or("expected `NAME: VALUE`".to_owned())?;
    let name = name.trim();
    reqwest::header::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("`{name}` is not a header name"))?;
    reqwest::header::HeaderValue::from_str(value.trim())
        .map_err(|_| "the value is not a header value".to_owned())?;
    Ok((name.to_owned(), value.trim().to_owned()))
}

/// What reading the inputs found besides deliveries.
#[derive(Default, Clone, Copy)]
struct Read {
    skipped: u64,
    unreadable_inputs: u64,
}

pub fn execute(args: Args) -> u8 {
    let url = match reqwest::Url::parse(&args.to) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => url,
        Ok(_) => {
            eprintln!(
                "error: --to {}: expected an http:// or https:// URL",
                args.to
            );
            return EXIT_USAGE;
        }
        Err(err) => {
            eprintln!("error: --to {}: {err}", args.to);
            return EXIT_USAGE;
        }
    };
    let secret = match &args.secret_env {
        None => None,
        Some(name) => match std::env::var_os(name) {
            Some(value) if !value.is_empty() => Some(value.into_encoded_bytes()),
            _ => {
                eprintln!(
                    "error: --secret-env {name}: the variable is not set or empty; export the \
                     webhook's HMAC secret in it, or leave --secret-env out to send unsigned"
                );
                return EXIT_USAGE;
            }
        },
    };
    let options = Options {
        concurrency: usize::from(args.concurrency),
        rate: args.rate,
        max_attempts: args.max_attempts,
        backoff_base: Duration::from_secs_f64(args.backoff_base),
        backoff_max: Duration::from_secs_f64(args.backoff_max),
        timeout: Duration::from_secs_f64(args.timeout),
        secret,
        headers: args.headers,
    };
    let report_file = match &args.report {
        None => None,
        Some(path) => match std::fs::File::create(path) {
            Ok(file) => Some(Report {
                path: path.clone(),
                out: Mutex::new((std::io::BufWriter::new(file), None)),
            }),
            Err(err) => {
                eprintln!("error: --report {}: {err}", path.display());
                return EXIT_IO;
            }
        },
    };
    let report_file = Arc::new(report_file);
    let inputs: Vec<Input> = if args.inputs.is_empty() {
        vec![Input::Stdin]
    } else {
        args.inputs.iter().map(|a| Input::from_arg(a)).collect()
    };
    let (tx, rx) = mpsc::channel(256);
    let vertical = args.vertical;
    let read = Arc::new(Mutex::new(Read::default()));
    let reader = {
        let read = Arc::clone(&read);
        std::thread::spawn(move || read_inputs(&inputs, vertical, &tx, &read))
    };
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    let report = |failed: &replay::Failed| {
        eprintln!(
            "failed: {} delivery {}: {}",
            failed.origin, failed.id, failed.reason
        );
    };
    let interrupt = async {
        // Without a handler (it could not be installed) Ctrl-C ends the process as usual.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let on_finished = {
        let report_file = Arc::clone(&report_file);
        move |finished: &Finished| {
            if let Some(report_file) = report_file.as_ref() {
                report_file.write(finished);
            }
        }
    };
    let summary = runtime.block_on(replay::replay(
        url,
        options,
        rx,
        report,
        on_finished,
        interrupt,
    ));
    // A replay that stopped early leaves the reader where it is: it may be waiting on a quiet
    // standard input, and ends with the process. Otherwise it has finished.
    if !summary.interrupted && summary.disabled_at.is_none() {
        reader.join().expect("the reader does not panic");
    }
    let read = *read.lock().expect("not poisoned");
    let mut text = summary.describe();
    if read.skipped > 0 {
        text.push_str(&format!(", {} lines skipped", read.skipped));
    }
    eprintln!("summary: {text}");
    if let Some(times) = &summary.answer_times {
        eprintln!("answer times: {}", times.describe());
    }
    let report_failed = report_file.as_ref().as_ref().and_then(Report::finish);
    if let Some(err) = &report_failed {
        eprintln!("error: {err}");
    }
    if let Some(at) = &summary.disabled_at {
        eprintln!(
            "webhook would be disabled at delivery {} ({}, status {}); Marketplacer sends nothing \
             more until it is enabled again",
            at.id,
            at.origin,
            at.status.map_or("none".into(), |s| s.to_string())
        );
        return EXIT_DISABLED;
    }
    if read.unreadable_inputs > 0 || report_failed.is_some() {
        EXIT_IO
    } else if !summary.failed.is_empty() || summary.unsent > 0 || read.skipped > 0 {
        EXIT_REJECTED
    } else {
        EXIT_OK
    }
}

/// The per-delivery report (`--report`): JSON lines, and the first error writing them.
struct Report {
    path: std::path::PathBuf,
    out: Mutex<(std::io::BufWriter<std::fs::File>, Option<std::io::Error>)>,
}

impl Report {
    fn write(&self, finished: &Finished) {
        let unix_ms = |t: std::time::SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        };
        let line = serde_json::json!({
            "id": finished.id,
            "idempotency_key": finished.idempotency_key,
            "origin": finished.origin,
            "status": finished.status,
            "attempts": finished.attempts,
            "accepted_at_ms": finished.accepted_at.map(unix_ms),
            "answer_ms": finished.answer_time.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3),
            "started_late_ms": (finished.started_late.as_secs_f64() * 1e6).round() / 1e3,
        });
        let mut out = self.out.lock().expect("not poisoned");
        let (file, failed) = &mut *out;
        if failed.is_none()
            && let Err(err) = writeln!(file, "{line}")
        {
            *failed = Some(err);
        }
    }

    /// Flushes; says what went wrong writing, if anything did.
    fn finish(&self) -> Option<String> {
        let mut out = self.out.lock().expect("not poisoned");
        let (file, failed) = &mut *out;
        let failed = failed.take().or_else(|| file.flush().err())?;
        Some(format!(
            "--report {}: not written in full: {failed}",
            self.path.display()
        ))
    }
}

/// Reads every input into `tx`, reporting what cannot be sent; stops when `tx` is closed
/// (sending stopped).
fn read_inputs(
    inputs: &[Input],
    vertical: Option<String>,
    tx: &mpsc::Sender<Delivery>,
    read: &Mutex<Read>,
) {
    let count = |f: fn(&mut Read)| f(&mut read.lock().expect("not poisoned"));
    let mut sequence = 0u64;
    for input in inputs {
        let lines = match read_lines(input) {
            Ok(lines) => lines,
            Err(err) => {
                eprintln!("error: {err}");
                count(|r| r.unreadable_inputs += 1);
                continue;
            }
        };
        for line in lines {
            let line = match line {
                Ok(line) => line,
                Err(err) => {
                    eprintln!("error: {err}");
                    count(|r| r.unreadable_inputs += 1);
                    break;
                }
            };
            let origin = format!("{}:{}", line.origin, line.number);
            if let Some(at) = line.not_utf8_at {
                eprintln!("skipped: {origin}: not valid UTF-8 at byte {at}");
                count(|r| r.skipped += 1);
                continue;
            }
            let defaults = Defaults {
                sequence: sequence + 1,
                vertical: vertical.clone(),
            };
            match outgoing(&line.text, &defaults) {
                Ok(outgoing) => {
                    sequence += 1;
                    if tx.blocking_send(Delivery { origin, outgoing }).is_err() {
                        return;
                    }
                }
                Err(err) => {
                    eprintln!("skipped: {origin}: {err}");
                    count(|r| r.skipped += 1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_per_second_or_minute() {
        assert_eq!(parse_rate("20/s"), Ok(20.0));
        assert_eq!(parse_rate("5"), Ok(5.0));
        assert_eq!(parse_rate("120/m"), Ok(2.0));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("3/h").is_err());
        assert!(parse_timeout("0").is_err());
        assert_eq!(parse_timeout("0.5"), Ok(0.5));
    }

    #[test]
    fn headers_read_name_and_value() {
        assert_eq!(
            parse_header("auth-key: x123"),
            Ok(("auth-key".into(), "x123".into()))
        );
        assert!(parse_header("no colon").is_err());
        assert!(parse_header("bad name: x").is_err());
    }
}
