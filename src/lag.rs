//! How late requests reach Klaviyo: the figure marketing cares about ("did the Placed Order
//! reach Klaviyo in time for the flow?"), read from the store so that `status`, the status
//! page and the built-in alerts agree, whichever process asks.
//!
//! Lag is from a delivery stored (the webhook answered 200) to Klaviyo accepting its request.
//! Percentiles are exact over the samples given (nearest rank), not estimated from buckets.

use crate::store::SentRequest;
use std::collections::BTreeMap;

/// A lane's (or a mapping's) lag over a window.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LagFigures {
    pub count: usize,
    pub p50_ms: i64,
    pub p99_ms: i64,
    pub max_ms: i64,
}

impl LagFigures {
    /// `None` when there are no samples.
    pub fn of(lags: impl IntoIterator<Item = i64>) -> Option<LagFigures> {
        let mut lags: Vec<i64> = lags.into_iter().collect();
        if lags.is_empty() {
            return None;
        }
        lags.sort_unstable();
        let rank =
            |q: f64| lags[((q * lags.len() as f64).ceil() as usize).clamp(1, lags.len()) - 1];
        Some(LagFigures {
            count: lags.len(),
            p50_ms: rank(0.50),
            p99_ms: rank(0.99),
            max_ms: *lags.last().expect("not empty"),
        })
    }
}

/// One minute of a lane's lag, for a chart.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LagPoint {
    /// The minute's start (unix ms).
    pub minute: i64,
    #[serde(flatten)]
    pub figures: LagFigures,
}

/// Lag per lane over a window, overall and minute by minute (minutes with no send left out).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LaneLag {
    pub overall: Option<LagFigures>,
    pub minutes: Vec<LagPoint>,
}

/// Lag by lane of `sent`; only requests sent at or after `since` count.
pub fn by_lane(sent: &[SentRequest], since: i64) -> BTreeMap<String, LaneLag> {
    let mut lanes: BTreeMap<String, BTreeMap<i64, Vec<i64>>> = BTreeMap::new();
    for request in sent.iter().filter(|r| r.sent_at >= since) {
        let minute = request.sent_at - request.sent_at.rem_euclid(60_000);
        lanes
            .entry(request.lane.clone())
            .or_default()
            .entry(minute)
            .or_default()
            .push(request.lag_ms);
    }
    lanes
        .into_iter()
        .map(|(lane, minutes)| {
            let overall = LagFigures::of(minutes.values().flatten().copied());
            let minutes = minutes
                .into_iter()
                .filter_map(|(minute, lags)| {
                    Some(LagPoint {
                        minute,
                        figures: LagFigures::of(lags)?,
                    })
                })
                .collect();
            (lane, LaneLag { overall, minutes })
        })
        .collect()
}

/// Lag of one mapping's requests sent at or after `since`.
pub fn of_mapping(sent: &[SentRequest], mapping: &str, since: i64) -> Option<LagFigures> {
    LagFigures::of(
        sent.iter()
            .filter(|r| r.mapping == mapping && r.sent_at >= since)
            .map(|r| r.lag_ms),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(lane: &str, mapping: &str, sent_at: i64, lag_ms: i64) -> SentRequest {
        SentRequest {
            lane: lane.into(),
            mapping: mapping.into(),
            endpoint: "/api/events".into(),
            sent_at,
            lag_ms,
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let figures = LagFigures::of(1..=100).unwrap();
        assert_eq!(
            (figures.p50_ms, figures.p99_ms, figures.max_ms),
            (50, 99, 100)
        );
        let one = LagFigures::of([7]).unwrap();
        assert_eq!(
            (one.p50_ms, one.p99_ms, one.max_ms, one.count),
            (7, 7, 7, 1)
        );
        assert_eq!(LagFigures::of([]), None);
        // One slow request in fifty shows at p99, not at p50.
        let mut lags = vec![100; 49];
        lags.push(30_000);
        let figures = LagFigures::of(lags).unwrap();
        assert_eq!((figures.p50_ms, figures.p99_ms), (100, 30_000));
    }

    #[test]
    fn lanes_are_split_by_minute_and_old_sends_left_out() {
        let minute = 60_000;
        let sent = [
            sent("transaction", "placed-order", 10 * minute + 5, 800),
            sent("transaction", "placed-order", 10 * minute + 59_999, 1_200),
            sent("transaction", "ordered-product", 11 * minute, 400),
            sent("profile", "profile", 11 * minute + 1, 90_000),
            sent("transaction", "placed-order", 9 * minute, 99_999),
        ];
        let lanes = by_lane(&sent, 10 * minute);
        let transaction = &lanes["transaction"];
        assert_eq!(transaction.overall.as_ref().unwrap().count, 3);
        assert_eq!(transaction.overall.as_ref().unwrap().max_ms, 1_200);
        let minutes: Vec<(i64, usize)> = transaction
            .minutes
            .iter()
            .map(|p| (p.minute, p.figures.count))
            .collect();
        assert_eq!(minutes, [(10 * minute, 2), (11 * minute, 1)]);
        assert_eq!(lanes["profile"].overall.as_ref().unwrap().p99_ms, 90_000);
        let placed = of_mapping(&sent, "placed-order", 10 * minute).unwrap();
        assert_eq!((placed.count, placed.max_ms), (2, 1_200));
        assert_eq!(of_mapping(&sent, "consent", 0), None);
    }
}
