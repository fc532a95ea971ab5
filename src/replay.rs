//! Marketplacer's side of a webhook: sends deliveries to a receiver as Marketplacer does.
//!
//! Why it exists: a receiver (`marketsync serve`, or a client's new instance) must be tried
//! against what Marketplacer actually does to it, not against a friendlier client. This module
//! is that sender, behind `marketsync replay` and usable in process by tests:
//!
//! - each delivery is a POST of its body, byte for byte, with Marketplacer's headers and, given a
//!   secret, `Marketplacer-Hmac-256` (see [`crate::source::webhook`]);
//! - success is a 2xx within the timeout (Marketplacer: 30 s);
//! - timeouts, connection errors, 5xx and 429 are retried with exponential backoff (Marketplacer:
//!   at least 1 minute, at most 4 days, 25 retries by default), waiting at least `Retry-After`;
//!   a 429 also lowers the concurrency by one for the rest of the replay, as it lowers a
//!   webhook's `concurrentSendLimit`;
//! - a redirect or any other 4xx fails the delivery and disables the webhook: nothing more is
//!   sent, and the [`Summary`] says at which delivery and with which status.
//!
//! Deliberate differences from Marketplacer, for a tool: retries are bounded by
//! [`Options::max_attempts`] rather than by 30 days, and the backoff can be scaled down
//! ([`Options::backoff_base`]) so that tests take milliseconds. Redirects are never followed
//! (Marketplacer fails on "too many"; a receiver should answer none).
//!
//! What it must never do: change a body (the signature covers its exact bytes), send the
//! secret itself, or follow a redirect.

use crate::source::webhook::{self, Outgoing};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Instant;

/// Marketplacer's default `concurrentSendLimit` (its schema: 1 to 200, default 100).
pub const DEFAULT_CONCURRENCY: usize = 100;
/// Marketplacer's default: the first attempt and 25 retries.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 26;

/// How deliveries are sent.
#[derive(Debug, Clone)]
pub struct Options {
    /// Requests in flight at once, at most (lowered by one for each 429).
    pub concurrency: usize,
    /// Requests started per second (retries included), on a schedule that makes up to a
    /// second of missed starts when slots free (see `Pacer`); `None` for no limit.
    pub rate: Option<f64>,
    /// Attempts per delivery, the first included, before it is reported failed.
    pub max_attempts: u32,
    /// The wait before the first retry; each next one waits twice as long.
    pub backoff_base: Duration,
    /// The longest wait before a retry (also caps `Retry-After`).
    pub backoff_max: Duration,
    /// A request not answered (status and body) within this is a timeout, retried.
    pub timeout: Duration,
    /// The HMAC key; `None` sends no `Marketplacer-Hmac-256` (HMAC is optional at Marketplacer).
    pub secret: Option<Vec<u8>>,
    /// Static headers added to every request (a webhook's `headers` setting at Marketplacer).
    pub headers: Vec<(String, String)>,
}

impl Default for Options {
    /// Marketplacer's own settings.
    fn default() -> Options {
        Options {
            concurrency: DEFAULT_CONCURRENCY,
            rate: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff_base: Duration::from_secs(60),
            backoff_max: Duration::from_secs(4 * 24 * 3600),
            timeout: Duration::from_secs(30),
            secret: None,
            headers: Vec::new(),
        }
    }
}

/// One delivery to send, and where it was read (for reports).
#[derive(Debug, Clone)]
pub struct Delivery {
    /// `file:line`, or any label.
    pub origin: String,
    pub outgoing: Outgoing,
}

/// A delivery Marketplacer would have marked failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub origin: String,
    /// The delivery's id (envelope `id`, else Idempotency-Key).
    pub id: String,
    pub attempts: u32,
    /// The last answer's status, if there was one.
    pub status: Option<u16>,
    /// What happened, in words (the last status and the start of its body, or the error).
    pub reason: String,
    /// A redirect or a 4xx other than 429: Marketplacer disables the webhook for it.
    pub disabling: bool,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Deliveries sent at least once.
    pub sent: u64,
    /// Requests made, retries included.
    pub attempts: u64,
    /// Deliveries answered 2xx.
    pub accepted: u64,
    /// Deliveries that needed more than one attempt.
    pub retried: u64,
    /// Deliveries Marketplacer would have marked failed, in the order they failed.
    pub failed: Vec<Failed>,
    /// The delivery at which Marketplacer would have disabled the webhook (also in `failed`).
    pub disabled_at: Option<Failed>,
    /// Deliveries not finished because sending stopped: never sent, waiting for a retry, or
    /// (interrupted) in flight.
    pub unsent: u64,
    /// The concurrency at the end, when 429s lowered it.
    pub lowered_concurrency: Option<usize>,
    /// Sending was interrupted (Ctrl-C): requests in flight were abandoned.
    pub interrupted: bool,
    /// How long the receiver took to answer, over every request it answered (any status);
    /// `None` when it answered none.
    pub answer_times: Option<AnswerTimes>,
}

/// How long a receiver took to answer: from the request's start to its answer read in full.
/// Percentiles are nearest-rank: p99 is the answer time 99% of answers took at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerTimes {
    pub answers: u64,
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl AnswerTimes {
    /// The figures of these answer times; `None` for none.
    pub fn of(mut times: Vec<Duration>) -> Option<AnswerTimes> {
        if times.is_empty() {
            return None;
        }
        times.sort_unstable();
        let rank = |p: f64| {
            let at = ((p * times.len() as f64).ceil() as usize).clamp(1, times.len());
            times[at - 1]
        };
        Some(AnswerTimes {
            answers: times.len() as u64,
            p50: rank(0.50),
            p95: rank(0.95),
            p99: rank(0.99),
            max: times[times.len() - 1],
        })
    }

    /// `1000 answers: p50 0.8 ms, p95 1.9 ms, p99 4.2 ms, max 12.0 ms`.
    pub fn describe(&self) -> String {
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
        format!(
            "{} answers: p50 {}, p95 {}, p99 {}, max {}",
            self.answers,
            ms(self.p50),
            ms(self.p95),
            ms(self.p99),
            ms(self.max)
        )
    }
}

/// How one delivery ended, accepted or failed: what a per-delivery report records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub origin: String,
    /// The delivery's id (envelope `id`, else Idempotency-Key).
    pub id: String,
    /// The Idempotency-Key it was sent with.
    pub idempotency_key: Option<String>,
    pub attempts: u32,
    /// The last answer's status, if there was one.
    pub status: Option<u16>,
    /// When the 2xx that accepted it was read in full; `None` when it failed.
    pub accepted_at: Option<SystemTime>,
    /// How long the last attempt took to be answered; `None` when it got no answer.
    pub answer_time: Option<Duration>,
    /// Under `--rate`, how long after its planned start the first attempt started (waiting
    /// for a slot included): what a stalled receiver cost this delivery before it was sent.
    pub started_late: Duration,
}

impl Summary {
    /// `12 deliveries sent (15 requests), 11 accepted, 2 retried, 1 failed`, then what stopped.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "{} deliveries sent ({} requests), {} accepted, {} retried, {} failed",
            self.sent,
            self.attempts,
            self.accepted,
            self.retried,
            self.failed.len()
        );
        if self.unsent > 0 {
            let why = if self.interrupted {
                "interrupted"
            } else {
                "sending stopped"
            };
            text.push_str(&format!(", {} not delivered ({why})", self.unsent));
        } else if self.interrupted {
            text.push_str(" (interrupted)");
        }
        if let Some(n) = self.lowered_concurrency {
            text.push_str(&format!("; 429 answers lowered the concurrency to {n}"));
        }
        text
    }
}

/// Sends every delivery received on `deliveries` to `url`, as Marketplacer would, and says what
/// happened. Failures are also passed to `on_failed` as they happen (to report them at once),
/// and every delivery that ends, accepted or failed, to `on_finished`.
///
/// It returns when `deliveries` is closed and everything is finished, soon after a delivery
/// disables the webhook (requests in flight are answered first), or at once when `interrupt`
/// completes (requests in flight are abandoned). When it stops early it closes `deliveries` (the
/// sender's next `send` fails, which tells it to stop reading), and counts what it still holds
/// as not delivered.
pub async fn replay(
    url: reqwest::Url,
    options: Options,
    mut deliveries: mpsc::Receiver<Delivery>,
    on_failed: impl Fn(&Failed) + Send + Sync + 'static,
    on_finished: impl Fn(&Finished) + Send + Sync + 'static,
    interrupt: impl Future<Output = ()> + Send + 'static,
) -> Summary {
    let client = reqwest::Client::builder()
        .timeout(options.timeout)
        .connect_timeout(options.timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(options.concurrency.max(1))
        .build()
        .expect("an HTTP client with these settings builds");
    let concurrency = options.concurrency.max(1);
    let (stop, stopped) = watch::channel(false);
    let shared = Arc::new(Shared {
        client,
        url,
        slots: Slots::new(concurrency),
        pacer: Mutex::new(Pacer::default()),
        summary: Mutex::new(Summary::default()),
        stop,
        on_failed: Box::new(on_failed),
        on_finished: Box::new(on_finished),
        answer_times: Mutex::new(Vec::new()),
        options,
    });
    // Deliveries waiting for a retry hold no request slot, so this bounds how many are read
    // ahead while a receiver is down.
    let outstanding = Arc::new(Semaphore::new((concurrency * 4).max(256)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut stopped_rx = stopped.clone();
    let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let shared = Arc::clone(&shared);
        let interrupted = Arc::clone(&interrupted);
        tokio::spawn(async move {
            interrupt.await;
            interrupted.store(true, Ordering::SeqCst);
            shared.stop.send_replace(true);
        })
    };
    // Every delivery received ends accepted, failed, or not delivered.
    let mut received = 0u64;
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&outstanding).acquire_owned() => permit.expect("never closed"),
            _ = stopped_rx.wait_for(|s| *s) => break,
        };
        let delivery = tokio::select! {
            delivery = deliveries.recv() => delivery,
            _ = stopped_rx.wait_for(|s| *s) => break,
        };
        let Some(delivery) = delivery else { break };
        received += 1;
        // First attempts take their slot and their turn here, in the order read, so that
        // deliveries start in input order (one at a time with a concurrency of 1).
        let slot = tokio::select! {
            slot = shared.turn() => slot,
            _ = stopped_rx.wait_for(|s| *s) => break,
        };
        let shared = Arc::clone(&shared);
        let stopped = stopped.clone();
        tasks.spawn(async move {
            deliver(&shared, delivery, slot, stopped).await;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    if *stopped.borrow() {
        deliveries.close();
        while deliveries.recv().await.is_some() {
            received += 1;
        }
    }
    // Deliveries waiting for a retry go on until they end, unless sending stops: they then end
    // at once, and an interrupt also abandons the requests in flight.
    let mut stop_seen = false;
    loop {
        tokio::select! {
            joined = tasks.join_next() => if joined.is_none() { break },
            _ = stopped_rx.wait_for(|s| *s), if !stop_seen => {
                stop_seen = true;
                if interrupted.load(Ordering::SeqCst) {
                    tasks.abort_all();
                }
            }
        }
    }
    watcher.abort();
    let interrupted = interrupted.load(Ordering::SeqCst);
    let mut summary = shared.summary.lock().expect("not poisoned").clone();
    summary.interrupted = interrupted;
    summary.answer_times = AnswerTimes::of(std::mem::take(
        &mut *shared.answer_times.lock().expect("not poisoned"),
    ));
    summary.unsent = received - summary.accepted - summary.failed.len() as u64;
    let limit = shared.slots.limit.load(Ordering::Relaxed);
    if limit < concurrency {
        summary.lowered_concurrency = Some(limit);
    }
    summary
}

/// [`replay`] of a list of deliveries, for tests and small replays.
pub async fn replay_all(url: reqwest::Url, options: Options, deliveries: Vec<Delivery>) -> Summary {
    let (tx, rx) = mpsc::channel(deliveries.len().max(1));
    for delivery in deliveries {
        tx.send(delivery).await.expect("the channel has room");
    }
    drop(tx);
    replay(url, options, rx, |_| {}, |_| {}, std::future::pending()).await
}

struct Shared {
    client: reqwest::Client,
    url: reqwest::Url,
    options: Options,
    slots: Slots,
    /// When the next request may start, under `--rate`.
    pacer: Mutex<Pacer>,
    summary: Mutex<Summary>,
    stop: watch::Sender<bool>,
    on_failed: Box<dyn Fn(&Failed) + Send + Sync>,
    on_finished: Box<dyn Fn(&Finished) + Send + Sync>,
    /// Every answer's time, for [`AnswerTimes`]: 16 bytes a request.
    answer_times: Mutex<Vec<Duration>>,
}

/// The schedule of first attempts under `--rate`: one interval apart, each start planned from
/// the one before, not from when the sender woke.
///
/// tokio's timer wakes on whole milliseconds, so a sender that slept for every sub-millisecond
/// interval and planned the next start from its waking sent about 850 a second whatever rate
/// was asked (3,000/s in the serve benchmark). So a start whose time has passed is made at once.
///
/// When sending was held up (every slot waiting on a slow receiver), the starts it missed, up
/// to [`Pacer::CATCH_UP`] of them, are made as soon as slots free: Marketplacer keeps the events
/// it could not send and sends them when it can, and a sender that dropped them from its
/// schedule would offer a stalled receiver less load than the marketplace does (the load
/// tester's "coordinated omission"). Further behind (a receiver down for minutes), the schedule
/// starts again from now, so that `--rate` still bounds the starts in any second to one
/// second's worth more than the rate.
#[derive(Debug, Default)]
struct Pacer {
    next: Option<Instant>,
}

impl Pacer {
    const CATCH_UP: Duration = Duration::from_secs(1);

    /// When the request asking at `now` was planned to start: it starts then, or at once if
    /// that has passed.
    fn turn(&mut self, now: Instant, interval: Duration) -> Instant {
        let earliest = now.checked_sub(Self::CATCH_UP).unwrap_or(now);
        let planned = self.next.map_or(now, |next| next.max(earliest));
        self.next = Some(planned + interval);
        planned
    }
}

/// How one attempt went.
enum Answer {
    Accepted {
        status: u16,
    },
    Retry {
        status: Option<u16>,
        reason: String,
        after: Option<Duration>,
    },
    Disabling {
        status: u16,
        reason: String,
    },
}

/// Sends one delivery until it is accepted, fails, or sending stops; `first` is the slot for
/// its first attempt, taken in turn.
async fn deliver(
    shared: &Shared,
    delivery: Delivery,
    first: Slot,
    mut stopped: watch::Receiver<bool>,
) {
    let options = &shared.options;
    let mut attempts = 0u32;
    let started_late = first.late;
    let mut first = Some(first);
    loop {
        let slot = match first.take() {
            Some(slot) => slot,
            None => {
                if *stopped.borrow() {
                    return;
                }
                shared.turn().await
            }
        };
        if *stopped.borrow() {
            return;
        }
        attempts += 1;
        {
            let mut summary = shared.summary.lock().expect("not poisoned");
            summary.attempts += 1;
            match attempts {
                1 => summary.sent += 1,
                2 => summary.retried += 1,
                _ => {}
            }
        }
        let (answer, answer_time) = shared.attempt(&delivery.outgoing).await;
        // The slot is kept until a disabling answer has stopped sending, so that no request
        // waiting for it starts meanwhile.
        let failed = |status, reason, disabling| Failed {
            origin: delivery.origin.clone(),
            id: delivery.outgoing.id.clone(),
            attempts,
            status,
            reason,
            disabling,
        };
        let finished = |status, accepted_at| Finished {
            origin: delivery.origin.clone(),
            id: delivery.outgoing.id.clone(),
            idempotency_key: delivery
                .outgoing
                .headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case("Idempotency-Key"))
                .map(|(_, value)| value.clone()),
            attempts,
            status,
            accepted_at,
            answer_time,
            started_late,
        };
        let (status, reason, after) = match answer {
            Answer::Accepted { status } => {
                let accepted_at = SystemTime::now();
                drop(slot);
                shared.summary.lock().expect("not poisoned").accepted += 1;
                (shared.on_finished)(&finished(Some(status), Some(accepted_at)));
                return;
            }
            Answer::Disabling { status, reason } => {
                let failed = failed(Some(status), reason, true);
                (shared.on_failed)(&failed);
                (shared.on_finished)(&finished(Some(status), None));
                let mut summary = shared.summary.lock().expect("not poisoned");
                if summary.disabled_at.is_none() {
                    summary.disabled_at = Some(failed.clone());
                }
                summary.failed.push(failed);
                shared.stop.send_replace(true);
                drop(slot);
                return;
            }
            Answer::Retry {
                status,
                reason,
                after,
            } => {
                drop(slot);
                (status, reason, after)
            }
        };
        if status == Some(429) {
            shared.slots.lower();
        }
        if attempts >= options.max_attempts {
            let failed = failed(
                status,
                format!("{reason}, after {attempts} attempts"),
                false,
            );
            (shared.on_failed)(&failed);
            (shared.on_finished)(&finished(status, None));
            shared
                .summary
                .lock()
                .expect("not poisoned")
                .failed
                .push(failed);
            return;
        }
        let wait = backoff(options, attempts).max(after.unwrap_or_default());
        tokio::select! {
            _ = tokio::time::sleep(wait.min(options.backoff_max)) => {}
            _ = stopped.wait_for(|s| *s) => {}
        }
    }
}

/// The wait after attempt `attempts` failed: base × 2^(attempts − 1), at most the maximum.
fn backoff(options: &Options, attempts: u32) -> Duration {
    let factor = 2f64.powi(attempts.saturating_sub(1).min(60) as i32);
    Duration::from_secs_f64(
        (options.backoff_base.as_secs_f64() * factor).min(options.backoff_max.as_secs_f64()),
    )
}

impl Shared {
    /// A request slot, then its turn under the rate limit.
    async fn turn(&self) -> Slot {
        let mut slot = self.slots.acquire().await;
        slot.late = self.pace().await;
        slot
    }

    /// Waits for this request's turn under the rate limit; how late the turn came.
    async fn pace(&self) -> Duration {
        let Some(rate) = self.options.rate.filter(|r| *r > 0.0) else {
            return Duration::ZERO;
        };
        let now = Instant::now();
        let planned = self
            .pacer
            .lock()
            .expect("not poisoned")
            .turn(now, Duration::from_secs_f64(1.0 / rate));
        if planned > now {
            tokio::time::sleep_until(planned).await;
        }
        now.saturating_duration_since(planned)
    }

    /// One request, and how long it took to be answered (`None` without an answer).
    async fn attempt(&self, outgoing: &Outgoing) -> (Answer, Option<Duration>) {
        let started = Instant::now();
        let answer = self.request(outgoing).await;
        if matches!(answer, Answer::Retry { status: None, .. }) {
            return (answer, None);
        }
        let answer_time = started.elapsed();
        self.answer_times
            .lock()
            .expect("not poisoned")
            .push(answer_time);
        (answer, Some(answer_time))
    }

    async fn request(&self, outgoing: &Outgoing) -> Answer {
        let mut request = self.client.post(self.url.clone());
        for (name, value) in outgoing.headers.iter().chain(&self.options.headers) {
            request = request.header(name, value);
        }
        if let Some(secret) = &self.options.secret {
            request = request.header(
                webhook::SIGNATURE_HEADER,
                webhook::sign(secret, &outgoing.body),
            );
        }
        let response = match request.body(outgoing.body.clone()).send().await {
            Ok(response) => response,
            Err(err) => return failure(&err),
        };
        let status = response.status().as_u16();
        let after = retry_after(response.headers());
        // The answer counts once it has been read in full, within the timeout.
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(err) => return failure(&err),
        };
        let said = excerpt(&body);
        let reason = if said.is_empty() {
            format!("status {status}")
        } else {
            format!("status {status}: {said}")
        };
        match status {
            200..=299 => Answer::Accepted { status },
            300..=399 => Answer::Disabling {
                status,
                reason: format!("{reason} (a redirect)"),
            },
            429 => Answer::Retry {
                status: Some(status),
                reason,
                after,
            },
            400..=499 => Answer::Disabling { status, reason },
            _ => Answer::Retry {
                status: Some(status),
                reason,
                after,
            },
        }
    }
}

fn failure(err: &reqwest::Error) -> Answer {
    let reason = if err.is_timeout() {
        "timed out".to_owned()
    } else {
        // The error's source chain says why (refused, reset); reqwest's own text does not.
        let mut text = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            text = format!("{text}: {cause}");
            source = cause.source();
        }
        format!("connection failed: {text}")
    };
    Answer::Retry {
        status: None,
        reason,
        after: None,
    }
}

/// `Retry-After` in seconds or as an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get("Retry-After")?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    httpdate::parse_http_date(value)
        .ok()?
        .duration_since(std::time::SystemTime::now())
        .ok()
}

/// The start of an answer's body on one line, for reports.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(120) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line,
    }
}

/// Request slots: a semaphore whose size can be lowered while permits are out.
struct Slots {
    semaphore: Arc<Semaphore>,
    limit: AtomicUsize,
    /// Permits to forget as they come back, because the limit was lowered while they were out.
    debt: Arc<Mutex<usize>>,
}

struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    debt: Arc<Mutex<usize>>,
    /// How long after its planned start under `--rate` the request may start.
    late: Duration,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut debt = self.debt.lock().expect("not poisoned");
        if let Some(permit) = self.permit.take()
            && *debt > 0
        {
            *debt -= 1;
            permit.forget();
        }
    }
}

impl Slots {
    fn new(limit: usize) -> Slots {
        Slots {
            semaphore: Arc::new(Semaphore::new(limit)),
            limit: AtomicUsize::new(limit),
            debt: Arc::new(Mutex::new(0)),
        }
    }

    async fn acquire(&self) -> Slot {
        let permit = Arc::clone(&self.semaphore)
            .acquire_owned()
            .await
            .expect("never closed");
        Slot {
            permit: Some(permit),
            debt: Arc::clone(&self.debt),
            late: Duration::ZERO,
        }
    }

    /// One slot fewer, never fewer than one.
    fn lower(&self) {
        let lowered = self
            .limit
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| {
                (l > 1).then(|| l - 1)
            })
            .is_ok();
        if lowered && self.semaphore.forget_permits(1) == 0 {
            *self.debt.lock().expect("not poisoned") += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where a sleep until `at` wakes: on the first whole millisecond after `start` at or
    /// after `at`, as tokio's timer does.
    fn woken(start: Instant, at: Instant) -> Instant {
        let ticks = (at - start).as_nanos().div_ceil(1_000_000);
        start + Duration::from_millis(u64::try_from(ticks).unwrap())
    }

    #[test]
    fn the_rate_is_kept_though_the_timer_wakes_on_whole_milliseconds() {
        let interval = Duration::from_secs_f64(1.0 / 3000.0);
        let start = Instant::now();
        let (mut pacer, mut now) = (Pacer::default(), start);
        for _ in 0..3000 {
            let at = pacer.turn(now, interval);
            now = if at > now { woken(start, at) } else { now };
        }
        // 2,999 intervals after the first start: one second, not three.
        let span = now - start;
        assert!(span >= interval * 2999, "{span:?}");
        assert!(
            span <= interval * 2999 + Duration::from_millis(1),
            "{span:?}"
        );
    }

    #[test]
    fn a_sender_held_up_makes_up_a_second_of_missed_starts_and_no_more() {
        let interval = Duration::from_secs_f64(1.0 / 3000.0);
        let at_once_after = |held: Duration| {
            let mut pacer = Pacer::default();
            let mut now = Instant::now();
            for _ in 0..10 {
                now = now.max(pacer.turn(now, interval));
            }
            now += held;
            std::iter::repeat_with(|| pacer.turn(now, interval))
                .take(20_000)
                .take_while(|planned| *planned <= now)
                .count()
        };
        // Held up 150 ms (a receiver's stall): the ~450 starts it missed, as Marketplacer
        // sends what it kept, not a schedule that forgot them.
        let stalled = at_once_after(Duration::from_millis(150));
        assert!((449..=452).contains(&stalled), "{stalled}");
        // Held up 5 s: one second's worth (3,000), not the 15,000 it missed.
        let down = at_once_after(Duration::from_secs(5));
        assert_eq!(down, 3001);
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let options = Options {
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            ..Options::default()
        };
        let waits: Vec<u128> = (1..=5).map(|n| backoff(&options, n).as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 50, 50]);
        let marketplacer = Options::default();
        assert_eq!(backoff(&marketplacer, 1), Duration::from_secs(60));
        assert_eq!(
            backoff(&marketplacer, 40),
            Duration::from_secs(4 * 24 * 3600)
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("Retry-After", "2".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        headers.insert(
            "Retry-After",
            httpdate::fmt_http_date(later).parse().unwrap(),
        );
        let wait = retry_after(&headers).unwrap();
        assert!(wait > Duration::from_secs(100), "{wait:?}");
        headers.insert("Retry-After", "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

    #[tokio::test]
    async fn lowering_the_slots_takes_effect_as_permits_come_back() {
        let slots = Slots::new(2);
        let a = slots.acquire().await;
        let b = slots.acquire().await;
        slots.lower();
        slots.lower(); // never below one
        assert_eq!(slots.limit.load(Ordering::Relaxed), 1);
        drop(a);
        assert_eq!(slots.semaphore.available_permits(), 0);
        drop(b);
        assert_eq!(slots.semaphore.available_permits(), 1);
    }

    #[test]
    fn answer_times_are_nearest_rank_percentiles() {
        let times: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let figures = AnswerTimes::of(times).unwrap();
        assert_eq!(
            [figures.p50, figures.p95, figures.p99, figures.max],
            [50, 95, 99, 100].map(Duration::from_millis)
        );
        assert_eq!(figures.answers, 100);
        let one = AnswerTimes::of(vec![Duration::from_micros(1500)]).unwrap();
        assert_eq!(one.p50, Duration::from_micros(1500));
        assert_eq!(
            one.describe(),
            "1 answers: p50 1.5 ms, p95 1.5 ms, p99 1.5 ms, max 1.5 ms"
        );
        assert_eq!(AnswerTimes::of(Vec::new()), None);
    }

    #[test]
    fn excerpts_are_one_short_line() {
        assert_eq!(excerpt(b"bad\n  signature"), "bad signature");
        assert_eq!(excerpt(&[b'x'; 300]).chars().count(), 121);
    }
}
