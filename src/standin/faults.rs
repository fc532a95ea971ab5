//! Injected faults: what a client must survive from the real Klaviyo (and the network to it),
//! on demand and reproducibly.
//!
//! Every request draws its fate from one RNG seeded with [`Faults::seed`], always the same
//! number of draws, so a given seed and order of requests give the same faults every run. Tests
//! that want reproducible faults send one request at a time.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::time::Duration;

/// Which faults to inject, and how often (each rate from 0 to 1, per request).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Faults {
    /// Answer 503 with a Klaviyo-style error body; the request has no effect.
    pub error_5xx_rate: f64,
    /// Answer 429 with `Retry-After: 1` although no limit was reached; no effect, and no slot
    /// of the rate limit is taken.
    pub throttle_rate: f64,
    /// Handle the request normally, then hold the response back for [`Faults::slow`] (real time,
    /// not scaled). The effect happens before the delay, so a client that times out and retries
    /// sends something Klaviyo already has: the dedupe and upsert rules then matter.
    pub slow_rate: f64,
    pub slow: Duration,
    /// Close the connection without answering; the request has no effect.
    pub drop_rate: f64,
    pub seed: u64,
    /// Answer 503 to every request whose body contains this text, whatever the draw (a drop
    /// still wins): one request that keeps failing while the others to its endpoint succeed.
    /// It takes no draw of its own, so the other faults stay reproducible.
    pub error_5xx_marker: Option<String>,
}

impl Faults {
    /// No faults.
    pub fn none() -> Faults {
        Faults::default()
    }
}

/// A fault that replaces the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    Drop,
    Unavailable,
    Throttle,
}

/// The faults in force and the RNG they are drawn from.
#[derive(Debug)]
pub(crate) struct FaultPlan {
    faults: Faults,
    rng: StdRng,
}

impl FaultPlan {
    pub(crate) fn new(faults: Faults) -> FaultPlan {
        let rng = StdRng::seed_from_u64(faults.seed);
        FaultPlan { faults, rng }
    }

    /// One request's fate: the fault that replaces its answer, if any, and the delay before the
    /// answer, if it is slow. At most one fault; drop wins over 503 (drawn or
    /// marked), 503 over 429.
    pub(crate) fn draw(&mut self, body: &[u8]) -> (Option<Fault>, Option<Duration>) {
        let [drop, unavailable, throttle, slow]: [f64; 4] =
            std::array::from_fn(|_| self.rng.random());
        let f = &self.faults;
        let fault = if drop < f.drop_rate {
            Some(Fault::Drop)
        } else if unavailable < f.error_5xx_rate || self.marked(body) {
            Some(Fault::Unavailable)
        } else if throttle < f.throttle_rate {
            Some(Fault::Throttle)
        } else {
            None
        };
        let delay = (slow < f.slow_rate).then_some(f.slow);
        (fault, delay)
    }

    /// Whether `body` holds [`Faults::error_5xx_marker`].
    fn marked(&self, body: &[u8]) -> bool {
        self.faults
            .error_5xx_marker
            .as_deref()
            .is_some_and(|marker| {
                !marker.is_empty() && body.windows(marker.len()).any(|w| w == marker.as_bytes())
            })
    }
}
