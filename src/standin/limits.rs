//! The scaled clock, Klaviyo's two rate-limit windows, and the meter behind [`Stats`].
//!
//! Klaviyo documents fixed windows (a 1-second burst window and a 1-minute steady window) but
//! not where they start, so a client cannot line itself up with them. The stand-in uses
//! *sliding* windows instead: a request is admitted only if fewer than the limit were admitted in
//! the last second (and the last minute). Whatever the alignment of Klaviyo's fixed windows, a
//! sequence of requests that passes a sliding window also passes the fixed one, so the stand-in
//! is never more lenient than Klaviyo. It can be stricter (Klaviyo would let a full window
//! through just before and again just after a boundary), and a client that paces itself to
//! pass here is safe there.
//!
//! [`Stats`]: super::Stats

use super::Limit;
use std::collections::VecDeque;
use std::time::Instant;

/// The burst window, in (scaled) seconds.
pub(crate) const BURST_WINDOW: f64 = 1.0;
/// The steady window, in (scaled) seconds.
pub(crate) const STEADY_WINDOW: f64 = 60.0;

/// Seconds since the stand-in started, multiplied by the time scale: with a scale of 60 a
/// minute passes in a real second, and every window, `Retry-After` and job delay with it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    start: Instant,
    scale: f64,
}

impl Clock {
    pub(crate) fn new(scale: f64) -> Clock {
        Clock {
            start: Instant::now(),
            scale,
        }
    }

    /// Scaled seconds since the start.
    pub(crate) fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * self.scale
    }
}

/// The times (scaled seconds) of what happened in the last `span` seconds, oldest first. The
/// window is half-open: something at `t` has left it at `t + span`.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    span: f64,
    times: VecDeque<f64>,
}

impl Window {
    pub(crate) fn new(span: f64) -> Window {
        Window {
            span,
            times: VecDeque::new(),
        }
    }

    /// How many are in the window at `now`.
    pub(crate) fn count(&mut self, now: f64) -> usize {
        while self.times.front().is_some_and(|&t| t + self.span <= now) {
            self.times.pop_front();
        }
        self.times.len()
    }

    /// Seconds until the oldest leaves the window (0 when it is empty).
    pub(crate) fn frees_in(&self, now: f64) -> f64 {
        self.times
            .front()
            .map_or(0.0, |&t| (t + self.span - now).max(0.0))
    }

    pub(crate) fn push(&mut self, now: f64) {
        self.times.push_back(now);
    }
}

/// What the `RateLimit-*` headers say: the state of the steady window, as Klaviyo documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateHeaders {
    pub(crate) limit: u32,
    pub(crate) remaining: u32,
    /// Whole seconds until a slot of the steady window frees (0 when none is taken).
    pub(crate) reset: u64,
}

/// One endpoint's limiter: both windows.
#[derive(Debug, Clone)]
pub(crate) struct Limiter {
    limit: Limit,
    burst: Window,
    steady: Window,
}

impl Limiter {
    pub(crate) fn new(limit: Limit) -> Limiter {
        Limiter {
            limit,
            burst: Window::new(BURST_WINDOW),
            steady: Window::new(STEADY_WINDOW),
        }
    }

    /// Admits a request at `now`, or says in how many whole seconds to retry (at least 1): the
    /// time until every full window has a free slot, rounded up.
    pub(crate) fn admit(&mut self, now: f64) -> Result<RateHeaders, u64> {
        let burst_full = self.burst.count(now) >= self.limit.burst_per_second as usize;
        let steady_full = self.steady.count(now) >= self.limit.steady_per_minute as usize;
        if burst_full || steady_full {
            let mut wait: f64 = 0.0;
            if burst_full {
                wait = wait.max(self.burst.frees_in(now));
            }
            if steady_full {
                wait = wait.max(self.steady.frees_in(now));
            }
            return Err((wait.ceil() as u64).max(1));
        }
        self.burst.push(now);
        self.steady.push(now);
        Ok(self.headers(now))
    }

    /// The headers at `now`, taking no slot.
    pub(crate) fn headers(&mut self, now: f64) -> RateHeaders {
        let taken = self.steady.count(now) as u32;
        RateHeaders {
            limit: self.limit.steady_per_minute,
            remaining: self.limit.steady_per_minute.saturating_sub(taken),
            reset: self.steady.frees_in(now).ceil() as u64,
        }
    }
}

/// Counts every request as it arrives and keeps the most seen in any second and any minute.
/// The busiest window always ends at an arrival, so measuring at arrivals is exact.
#[derive(Debug, Clone)]
pub(crate) struct Meter {
    second: Window,
    minute: Window,
    pub(crate) max_per_second: u32,
    pub(crate) max_per_minute: u32,
}

impl Default for Meter {
    fn default() -> Meter {
        Meter {
            second: Window::new(BURST_WINDOW),
            minute: Window::new(STEADY_WINDOW),
            max_per_second: 0,
            max_per_minute: 0,
        }
    }
}

impl Meter {
    pub(crate) fn arrive(&mut self, now: f64) {
        self.second.push(now);
        self.minute.push(now);
        self.max_per_second = self.max_per_second.max(self.second.count(now) as u32);
        self.max_per_minute = self.max_per_minute.max(self.minute.count(now) as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(burst: u32, steady: u32) -> Limit {
        Limit {
            burst_per_second: burst,
            steady_per_minute: steady,
        }
    }

    #[test]
    fn the_burst_window_slides() {
        let mut limiter = Limiter::new(limit(2, 100));
        assert!(limiter.admit(0.0).is_ok());
        assert!(limiter.admit(0.5).is_ok());
        // 0.0 and 0.5 fill (-0.1, 0.9]; the one at 0.0 leaves at 1.0.
        assert_eq!(limiter.admit(0.9), Err(1));
        assert!(limiter.admit(1.0).is_ok());
        // 0.5 and 1.0 are in the window until 1.5.
        assert_eq!(limiter.admit(1.2), Err(1));
    }

    #[test]
    fn the_steady_window_says_when_a_slot_frees() {
        let mut limiter = Limiter::new(limit(10, 3));
        for t in [0.0, 10.0, 20.0] {
            assert!(limiter.admit(t).is_ok());
        }
        assert_eq!(limiter.admit(30.5), Err(30));
        let headers = limiter.admit(60.0).unwrap();
        assert_eq!(
            (headers.limit, headers.remaining, headers.reset),
            (3, 0, 10)
        );
    }

    #[test]
    fn the_meter_finds_the_busiest_second_across_boundaries() {
        let mut meter = Meter::default();
        for t in [0.1, 0.9, 0.95, 1.05, 1.5, 2.2] {
            meter.arrive(t);
        }
        assert_eq!(meter.max_per_second, 4); // 0.9, 0.95, 1.05, 1.5
        assert_eq!(meter.max_per_minute, 6);
    }
}
