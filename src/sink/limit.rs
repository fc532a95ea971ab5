//! Klaviyo's rate limits, kept on our side so that a 429 is the exception, not the feedback loop.
//!
//! Klaviyo limits each endpoint per account with two windows at once: a burst window (one
//! second) and a steady window (one minute). The limiter keeps the send times of the last
//! `steady` requests and lets a request go only when neither window is full, so no window,
//! however it is aligned on Klaviyo's side, ever holds more than its limit; and it never waits
//! longer than the windows require, so sustained delivery runs at the steady limit.
//!
//! Klaviyo's answers adjust it: `Retry-After` on a 429 blocks the endpoint until then. The
//! `RateLimit-*` headers tell what the account has left, which is less than our own count when
//! something else (Marketplacer's own Klaviyo integration, say) uses the same account: when
//! Klaviyo says nothing remains while we believe a good share does, the endpoint waits for the
//! reset. When the two agree, our own log already paces us; waiting for a whole-second reset on
//! every answer would throw away most of the limit.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// One endpoint's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub burst: u32,
    pub burst_window: Duration,
    pub steady: u32,
    pub steady_window: Duration,
}

impl Limit {
    /// `burst` a second and `steady` a minute, Klaviyo's way of stating them.
    pub fn per_second_and_minute(burst: u32, steady: u32) -> Limit {
        Limit {
            burst,
            burst_window: Duration::from_secs(1),
            steady,
            steady_window: Duration::from_secs(60),
        }
    }

    /// The same limits on a clock running `scale` times faster (tests, demos).
    pub fn scaled(self, scale: f64) -> Limit {
        Limit {
            burst_window: self.burst_window.div_f64(scale),
            steady_window: self.steady_window.div_f64(scale),
            ..self
        }
    }
}

/// A send-time log for one endpoint.
#[derive(Debug)]
pub struct Limiter {
    limit: Limit,
    /// Extra time added to each window, for the gap between our clock and Klaviyo's (and
    /// between when we send and when a request arrives).
    margin: Duration,
    sent: VecDeque<Instant>,
    blocked_until: Option<Instant>,
    /// How late after sending a request may be counted at Klaviyo's end: the slowest answer
    /// of the last steady window, kept as a queue of (when, how long) with falling durations
    /// so its front is the maximum. Under a burst the far end works through a queue, so a
    /// request sent at t may be admitted well after t; leaving this much more room keeps the
    /// next window's first requests from landing inside the last one's.
    latencies: VecDeque<(Instant, Duration)>,
    /// Requests started that have not taken their slot yet (see [`Limiter::book`]).
    booked: usize,
    /// When the last booking was made.
    last_booked: Option<Instant>,
}

impl Limiter {
    pub fn new(limit: Limit) -> Limiter {
        Limiter {
            margin: limit.burst_window / 50 + Duration::from_millis(5),
            limit,
            sent: VecDeque::with_capacity(limit.steady as usize),
            blocked_until: None,
            latencies: VecDeque::new(),
            booked: 0,
            last_booked: None,
        }
    }

    pub fn limit(&self) -> Limit {
        self.limit
    }

    /// When the next request may go, as of `now` (`now` itself if it may go at once).
    pub fn next_slot(&mut self, now: Instant) -> Instant {
        let lag = self.latencies.front().map_or(Duration::ZERO, |(_, d)| *d);
        let margin = self.margin + lag;
        let steady_window = self.limit.steady_window + margin;
        while self
            .sent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= steady_window)
        {
            self.sent.pop_front();
        }
        let mut slot = now;
        if let Some(until) = self.blocked_until {
            slot = slot.max(until);
        }
        // The steady window is full: wait until its oldest send leaves it.
        if self.sent.len() >= self.limit.steady as usize {
            let oldest = self.sent[self.sent.len() - self.limit.steady as usize];
            slot = slot.max(oldest + steady_window);
        }
        // The burst window is full: wait until the burst-th newest send leaves it.
        let burst = self.limit.burst as usize;
        if burst > 0 && self.sent.len() >= burst {
            let oldest_in_burst = self.sent[self.sent.len() - burst];
            slot = slot.max(oldest_in_burst + self.limit.burst_window + margin);
        }
        slot
    }

    /// Takes a slot: call when a request is sent at `at` (which must be at or after
    /// [`Limiter::next_slot`]).
    pub fn record(&mut self, at: Instant) {
        self.sent.push_back(at);
    }

    /// Books a slot for a request about to start, if it would get one within `within` of
    /// `now` behind the requests booked before it: a sender that starts only what it could
    /// book never has requests sitting for the rest of a minute, holding their place in its
    /// concurrency and their bodies in memory, once the steady window is spent. The booking
    /// ends when the request takes its slot ([`Limiter::record_booked`]) or is given up
    /// ([`Limiter::unbook`]).
    pub fn book(&mut self, now: Instant, within: Duration) -> bool {
        let free = self.can_book(now, within);
        if free {
            self.booked += 1;
            self.last_booked = Some(now);
        }
        free
    }

    /// [`Limiter::book`] for a bulk request: it also goes no sooner than the steady rate (the
    /// steady window's allowance spread over the window) after the last request sent or
    /// booked. Sent as fast as the burst allows, bulk requests would spend a window's allowance
    /// in its first seconds and leave the rest of it with nothing: 150 event bulk jobs a
    /// minute, 10 a second, are gone in 15 s, and whatever is queued then waits 45 s, to be met
    /// all at once when the window frees (in `serve`'s benchmark, intake halved then).
    pub fn book_steady(&mut self, now: Instant, within: Duration) -> bool {
        self.can_book_steady(now, within) && self.book(now, within)
    }

    /// Whether [`Limiter::book_steady`] would book a slot now.
    pub fn can_book_steady(&mut self, now: Instant, within: Duration) -> bool {
        let interval = self.limit.steady_window / self.limit.steady.max(1);
        let last = self.sent.back().copied().max(self.last_booked);
        last.is_none_or(|last| now >= last + interval) && self.can_book(now, within)
    }

    /// Whether [`Limiter::book`] would book a slot now.
    pub fn can_book(&mut self, now: Instant, within: Duration) -> bool {
        self.nth_slot(now, self.booked + 1) <= now + within
    }

    /// A booked request was sent at `at`: it takes its slot and its booking ends.
    pub fn record_booked(&mut self, at: Instant) {
        self.record(at);
        self.unbook();
    }

    /// A booked request ends without being sent.
    pub fn unbook(&mut self) {
        self.booked = self.booked.saturating_sub(1);
    }

    /// When the `n`th request from `now` could go (1: the next), were the ones before it
    /// sent as soon as they may.
    fn nth_slot(&mut self, now: Instant, n: usize) -> Instant {
        // Drops what has left the windows as of `now`, so only the requests below are added.
        let mut slot = self.next_slot(now);
        let kept = self.sent.len();
        for _ in 1..n {
            self.sent.push_back(slot);
            slot = self.next_slot(now);
        }
        self.sent.truncate(kept);
        slot
    }

    /// How long a request answered at `now` took from sending to its answer.
    pub fn observe_latency(&mut self, latency: Duration, now: Instant) {
        while self.latencies.back().is_some_and(|(_, d)| *d <= latency) {
            self.latencies.pop_back();
        }
        self.latencies.push_back((now, latency));
        let keep = self.limit.steady_window + self.margin;
        while self
            .latencies
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > keep)
        {
            self.latencies.pop_front();
        }
    }

    /// What Klaviyo's `RateLimit-Remaining` and `RateLimit-Reset` said at `now`.
    pub fn observe(&mut self, remaining: u64, reset: Duration, now: Instant) {
        let window = self.limit.steady_window + self.margin;
        let ours = self
            .sent
            .iter()
            .filter(|t| now.duration_since(**t) < window)
            .count() as u64;
        let we_believe_left = u64::from(self.limit.steady).saturating_sub(ours);
        let slack = u64::from(self.limit.steady / 20).max(1);
        if remaining == 0 && we_believe_left > slack {
            self.block_until(now + reset);
        }
    }

    /// Klaviyo said to wait (a 429's `Retry-After`).
    pub fn block_until(&mut self, until: Instant) {
        self.blocked_until = Some(self.blocked_until.map_or(until, |b| b.max(until)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends as fast as the limiter allows from `start` for `span`, returning the send times.
    fn drive(limiter: &mut Limiter, start: Instant, span: Duration) -> Vec<Instant> {
        let mut now = start;
        let mut sent = Vec::new();
        loop {
            let slot = limiter.next_slot(now);
            if slot >= start + span {
                return sent;
            }
            limiter.record(slot);
            sent.push(slot);
            now = slot;
        }
    }

    fn max_in_window(sent: &[Instant], window: Duration) -> usize {
        sent.iter()
            .map(|t| {
                sent.iter()
                    .filter(|s| **s >= *t && s.duration_since(*t) < window)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn never_exceeds_either_window_and_uses_the_steady_rate() {
        let limit = Limit::per_second_and_minute(10, 150);
        let mut limiter = Limiter::new(limit);
        let start = Instant::now();
        let sent = drive(&mut limiter, start, Duration::from_secs(180));
        assert!(max_in_window(&sent, limit.burst_window) <= 10);
        assert!(max_in_window(&sent, limit.steady_window) <= 150);
        // Three minutes at 150 a minute: close to 450, never more.
        assert!(sent.len() <= 450 && sent.len() >= 440, "{}", sent.len());
        // The first burst goes at once.
        assert!(sent[9].duration_since(start) < Duration::from_millis(1));
    }

    #[test]
    fn a_booking_is_only_had_for_a_slot_within_reach() {
        let mut limiter = Limiter::new(Limit::per_second_and_minute(3, 5));
        let start = Instant::now();
        let soon = Duration::from_millis(100);
        // A burst of three goes at once; the fourth would wait a second.
        assert!((0..3).all(|_| limiter.book(start, soon)));
        assert!(!limiter.book(start, soon));
        assert!(limiter.can_book(start, Duration::from_secs(2)));
        // Given up, a booking leaves its slot to the next request.
        limiter.unbook();
        assert!(limiter.book(start, soon));
        for _ in 0..3 {
            limiter.record_booked(start);
        }
        assert!(!limiter.can_book(start, soon));
        // Two more fit in the minute, a second later; then none until the minute is over.
        let later = start + Duration::from_secs(2);
        assert!(limiter.book(later, soon) && limiter.book(later, soon));
        assert!(!limiter.book(later, Duration::from_secs(30)));
        limiter.record_booked(later);
        limiter.record_booked(later);
        assert!(!limiter.can_book(later, Duration::from_secs(30)));
        assert!(limiter.can_book(later, Duration::from_secs(61)));
        // Asking never changes what was recorded.
        assert_eq!(limiter.sent.len(), 5);
    }

    #[test]
    fn a_steady_booking_waits_for_the_steady_rate() {
        // 150 a minute: one every 400 ms.
        let mut limiter = Limiter::new(Limit::per_second_and_minute(10, 150));
        let start = Instant::now();
        let soon = Duration::from_millis(100);
        assert!(limiter.book_steady(start, soon));
        assert!(!limiter.book_steady(start + Duration::from_millis(399), soon));
        // A request that cannot wait still has the burst.
        assert!(limiter.book(start + Duration::from_millis(10), soon));
        limiter.record_booked(start + Duration::from_millis(20));
        limiter.record_booked(start + Duration::from_millis(30));
        assert!(!limiter.can_book_steady(start + Duration::from_millis(420), soon));
        assert!(limiter.book_steady(start + Duration::from_millis(430), soon));
    }

    #[test]
    fn burst_limits_the_first_second() {
        let mut limiter = Limiter::new(Limit::per_second_and_minute(3, 1000));
        let start = Instant::now();
        let sent = drive(&mut limiter, start, Duration::from_millis(2500));
        // 3 at once, 3 a second later, 3 a second after that.
        assert_eq!(sent.len(), 9);
        assert!(sent[3].duration_since(start) >= Duration::from_secs(1));
    }

    #[test]
    fn retry_after_blocks_the_endpoint() {
        let mut limiter = Limiter::new(Limit::per_second_and_minute(100, 1000));
        let now = Instant::now();
        limiter.block_until(now + Duration::from_secs(2));
        assert_eq!(limiter.next_slot(now), now + Duration::from_secs(2));
        // A shorter block does not shorten a longer one.
        limiter.block_until(now + Duration::from_secs(1));
        assert_eq!(limiter.next_slot(now), now + Duration::from_secs(2));
    }

    #[test]
    fn an_exhausted_account_blocks_only_when_we_did_not_exhaust_it() {
        let limit = Limit::per_second_and_minute(100, 100);
        let now = Instant::now();
        // We sent nothing, yet Klaviyo says nothing remains: another client uses the account.
        let mut limiter = Limiter::new(limit);
        limiter.observe(0, Duration::from_secs(30), now);
        assert_eq!(limiter.next_slot(now), now + Duration::from_secs(30));
        // We used the window ourselves: our own log already paces us.
        let mut limiter = Limiter::new(limit);
        for _ in 0..100 {
            limiter.record(now);
        }
        let own = limiter.next_slot(now);
        limiter.observe(0, Duration::from_secs(30), now);
        assert_eq!(limiter.next_slot(now), own);
    }

    #[test]
    fn slow_answers_widen_the_windows_for_a_steady_window() {
        let limit = Limit::per_second_and_minute(1, 1000);
        let mut limiter = Limiter::new(limit);
        let start = Instant::now();
        limiter.record(start);
        let plain = limiter.next_slot(start);
        limiter.observe_latency(Duration::from_millis(300), start);
        assert_eq!(limiter.next_slot(start), plain + Duration::from_millis(300));
        // A faster answer later does not hide the slow one while it is within the window...
        limiter.observe_latency(Duration::from_millis(10), start + Duration::from_secs(30));
        assert_eq!(limiter.next_slot(start), plain + Duration::from_millis(300));
        // ...but once the slow one is older than the steady window, it no longer counts.
        limiter.observe_latency(Duration::from_millis(10), start + Duration::from_secs(61));
        assert_eq!(limiter.next_slot(start), plain + Duration::from_millis(10));
    }

    #[test]
    fn scaled_limits_shrink_the_windows() {
        let limit = Limit::per_second_and_minute(10, 150).scaled(60.0);
        assert_eq!(limit.steady_window, Duration::from_secs(1));
        assert_eq!(limit.burst, 10);
    }
}
