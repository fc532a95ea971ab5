//! Per-endpoint health: telling a Klaviyo outage from a request that fails.
//!
//! A retryable failure (timeout, dropped connection, 5xx, 429) is evidence against a request
//! only when other requests to the same endpoint are getting through. So a failure counts
//! toward `max_attempts` only when the endpoint has answered this run and is not in a run of
//! `outage_failures` failures in a row; otherwise it is retried without being counted. When an
//! endpoint has failed `outage_failures` times in a row and nothing sent to it has been
//! answered for `outage_window`, it is *unavailable*: the sink stops sending to it but for one
//! probe now and then, leaves its requests queued as they are, and a batch run ends with
//! [`super::SinkError::KlaviyoUnavailable`].
//!
//! What it must never do: turn an outage into dead letters, or keep a request from the dead
//! letters when the endpoint works for everyone else. Any answer that is not a retryable
//! failure (accepted, or refused for the request's own fault) shows the endpoint is up.

use crate::klaviyo::Endpoint;
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

/// One endpoint's recent answers.
#[derive(Debug, Default)]
struct Health {
    /// When it last answered (this run).
    answered_at: Option<Instant>,
    /// Retryable failures since it last answered.
    streak: u32,
    /// When that streak began, on both clocks (the wall clock is for the message).
    failing_since: Option<(Instant, SystemTime)>,
    last_error: String,
    /// When a probe was last let through while it was unavailable.
    probed_at: Option<Instant>,
}

/// What the sink knows of every endpoint's health.
#[derive(Debug)]
pub(crate) struct Tracker {
    endpoints: HashMap<Endpoint, Health>,
    /// Failures in a row before an endpoint can be unavailable.
    failures: u32,
    /// How long (real time, already scaled) an endpoint must go unanswered to be unavailable.
    window: Duration,
}

/// An endpoint that is unavailable, for the error that ends a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outage {
    pub since: SystemTime,
    pub last_error: String,
}

impl Tracker {
    pub(crate) fn new(failures: u32, window: Duration) -> Tracker {
        Tracker {
            endpoints: HashMap::new(),
            failures: failures.max(1),
            window,
        }
    }

    /// The endpoint answered: it is up.
    pub(crate) fn answered(&mut self, endpoint: Endpoint, now: Instant) {
        let health = self.endpoints.entry(endpoint).or_default();
        health.answered_at = Some(now);
        health.streak = 0;
        health.failing_since = None;
        health.probed_at = None;
    }

    /// A retryable failure. Returns `None` when it counts against the request, or how long the
    /// endpoint has been failing when it does not (the sink backs off by that).
    pub(crate) fn failed(
        &mut self,
        endpoint: Endpoint,
        reason: &str,
        now: Instant,
    ) -> Option<Duration> {
        let health = self.endpoints.entry(endpoint).or_default();
        health.streak = health.streak.saturating_add(1);
        let (since, _) = *health
            .failing_since
            .get_or_insert_with(|| (now, SystemTime::now()));
        reason.clone_into(&mut health.last_error);
        let counts = health.answered_at.is_some() && health.streak < self.failures;
        (!counts).then(|| now.saturating_duration_since(since))
    }

    /// Whether the endpoint is unavailable: failing in a row long enough, and unanswered for
    /// the whole window.
    pub(crate) fn outage(&self, endpoint: Endpoint, now: Instant) -> Option<Outage> {
        let health = self.endpoints.get(&endpoint)?;
        let (since, wall) = health.failing_since?;
        (health.streak >= self.failures && now.saturating_duration_since(since) >= self.window)
            .then(|| Outage {
                since: wall,
                last_error: health.last_error.clone(),
            })
    }

    /// The unavailable endpoints.
    pub(crate) fn unavailable(&self, now: Instant) -> Vec<Endpoint> {
        Endpoint::ALL
            .into_iter()
            .filter(|e| self.outage(*e, now).is_some())
            .collect()
    }

    /// Unavailable endpoints not due a probe: their requests are not even read from the queue.
    pub(crate) fn resting(&self, now: Instant) -> Vec<Endpoint> {
        self.unavailable(now)
            .into_iter()
            .filter(|e| !self.probe_due(*e, now))
            .collect()
    }

    fn probe_due(&self, endpoint: Endpoint, now: Instant) -> bool {
        self.endpoints
            .get(&endpoint)
            .and_then(|h| h.probed_at)
            .is_none_or(|at| now.saturating_duration_since(at) >= self.probe_every())
    }

    /// Whether one request may go to an unavailable endpoint now, as a probe; taking it makes
    /// the next one wait. An endpoint that is not unavailable needs no probe.
    pub(crate) fn take_probe(&mut self, endpoint: Endpoint, now: Instant) -> bool {
        if self.outage(endpoint, now).is_none() {
            return true;
        }
        if !self.probe_due(endpoint, now) {
            return false;
        }
        if let Some(health) = self.endpoints.get_mut(&endpoint) {
            health.probed_at = Some(now);
        }
        true
    }

    /// An unavailable endpoint is probed every quarter of the window, and never more often
    /// than every [`MIN_PROBE_GAP`].
    fn probe_every(&self) -> Duration {
        (self.window / 4).max(MIN_PROBE_GAP)
    }
}

/// The shortest time between two probes of an unavailable endpoint, in real time. A window of
/// 0, or one `--time-scale` shrinks to a millisecond, would otherwise make every request a
/// probe: the outage is hammered, and a batch run, which ends once only resting requests are
/// left, never ends (300 deliveries against a closed port ran until killed instead of exiting 6).
const MIN_PROBE_GAP: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;

    const E: Endpoint = Endpoint::CreateEvent;

    #[test]
    fn failures_before_any_answer_do_not_count() {
        let mut t = Tracker::new(3, Duration::from_secs(10));
        let now = Instant::now();
        assert!(t.failed(E, "503", now).is_some());
        t.answered(E, now);
        assert_eq!(
            t.failed(E, "503", now),
            None,
            "the endpoint works for others"
        );
        assert_eq!(t.failed(E, "503", now), None);
        assert!(
            t.failed(E, "503", now).is_some(),
            "three in a row: an outage"
        );
    }

    #[test]
    fn an_endpoint_is_unavailable_only_after_the_window() {
        let mut t = Tracker::new(2, Duration::from_secs(10));
        let start = Instant::now();
        for _ in 0..5 {
            t.failed(E, "Klaviyo answered 503", start);
        }
        assert!(t.outage(E, start + Duration::from_secs(9)).is_none());
        let later = start + Duration::from_secs(10);
        let outage = t.outage(E, later).unwrap();
        assert_eq!(outage.last_error, "Klaviyo answered 503");
        assert_eq!(t.unavailable(later), vec![E]);
        // One probe, then rest for a quarter of the window.
        assert!(t.resting(later).is_empty());
        assert!(t.take_probe(E, later));
        assert!(!t.take_probe(E, later));
        assert_eq!(t.resting(later), vec![E]);
        assert!(t.take_probe(E, later + Duration::from_millis(2500)));
        t.answered(E, later);
        assert!(t.unavailable(later).is_empty());
    }

    #[test]
    fn a_window_of_zero_still_rests_between_probes() {
        let mut t = Tracker::new(1, Duration::ZERO);
        let now = Instant::now();
        t.failed(E, "connection refused", now);
        assert_eq!(t.unavailable(now), vec![E], "unavailable at once");
        assert!(t.take_probe(E, now));
        assert!(!t.take_probe(E, now + Duration::from_millis(10)));
        assert_eq!(t.resting(now + Duration::from_millis(10)), vec![E]);
        assert!(t.take_probe(E, now + MIN_PROBE_GAP));
    }
}
