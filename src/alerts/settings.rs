//! `alerts:` in client.yaml. Every threshold has a default equal to the matching rule in
//! `deploy/prometheus/marketsync.rules.yml`, so a team that moves from Slack to Prometheus (or
//! runs both) is told about the same things; change both together.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::Duration;

/// Where built-in alerts go, and when they fire.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSettings {
    /// The environment variable holding a Slack-compatible incoming-webhook URL. The URL is a
    /// secret (anyone holding it can post to the channel), so it never goes in a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack_webhook_env: Option<String>,
    /// A program and its arguments, run with the message on stdin and `ALERT_*` variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// How often an alert still firing is sent again.
    #[serde(default = "defaults::repeat")]
    pub repeat: Span,
    /// How often the conditions are checked.
    #[serde(default = "defaults::check_every")]
    pub check_every: Span,
    /// Longest a notifier (the Slack post, or the command) may take; then it is given up on.
    #[serde(default = "defaults::notify_timeout")]
    pub notify_timeout: Span,
    /// Placed Orders sent slowly: the p99 of their lag over a window.
    #[serde(default)]
    pub placed_order_lag: LagThreshold,
    /// Order events not sent at all: the age of the oldest still queued.
    #[serde(default = "defaults::order_queue_age")]
    pub order_queue_age: Span,
    /// The mappings whose open dead letters page someone.
    #[serde(default = "defaults::dead_letter_mappings")]
    pub dead_letter_mappings: Vec<String>,
    /// How long without a delivery stored before silence is suspicious.
    #[serde(default = "defaults::no_delivery")]
    pub no_delivery: Span,
    /// The window in which one webhook answered 503 for a store failure fires the alert.
    #[serde(default = "defaults::intake_failures")]
    pub intake_failures: Span,
    /// How long the scheduled reconciliation may go without finishing (only where
    /// `reconcile: schedule:` is set). An hourly schedule may want a few hours.
    #[serde(default = "defaults::reconciliation_stale")]
    pub reconciliation_stale: Span,
}

impl Default for AlertSettings {
    fn default() -> AlertSettings {
        AlertSettings {
            slack_webhook_env: None,
            command: Vec::new(),
            repeat: defaults::repeat(),
            check_every: defaults::check_every(),
            notify_timeout: defaults::notify_timeout(),
            placed_order_lag: LagThreshold::default(),
            order_queue_age: defaults::order_queue_age(),
            dead_letter_mappings: defaults::dead_letter_mappings(),
            no_delivery: defaults::no_delivery(),
            intake_failures: defaults::intake_failures(),
            reconciliation_stale: defaults::reconciliation_stale(),
        }
    }
}

/// A lag percentile over a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LagThreshold {
    #[serde(default = "defaults::lag_p99")]
    pub p99: Span,
    #[serde(default = "defaults::lag_window")]
    pub window: Span,
}

impl Default for LagThreshold {
    fn default() -> LagThreshold {
        LagThreshold {
            p99: defaults::lag_p99(),
            window: defaults::lag_window(),
        }
    }
}

mod defaults {
    use super::Span;

    pub fn repeat() -> Span {
        Span::minutes(60)
    }
    pub fn check_every() -> Span {
        Span::seconds(30)
    }
    pub fn notify_timeout() -> Span {
        Span::seconds(10)
    }
    pub fn lag_p99() -> Span {
        Span::seconds(60)
    }
    pub fn lag_window() -> Span {
        Span::minutes(10)
    }
    pub fn order_queue_age() -> Span {
        Span::minutes(5)
    }
    pub fn dead_letter_mappings() -> Vec<String> {
        vec!["placed-order".into(), "consent".into()]
    }
    pub fn no_delivery() -> Span {
        Span::minutes(4 * 60)
    }
    pub fn intake_failures() -> Span {
        Span::minutes(10)
    }
    /// A daily schedule's day and two hours of slack, as the Prometheus rule.
    pub fn reconciliation_stale() -> Span {
        Span::minutes(26 * 60)
    }
}

/// A length of time written `90s`, `10m`, `4h` or `1d`: a bare number would leave the reader
/// guessing the unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(Duration);

impl Span {
    pub const fn seconds(seconds: u64) -> Span {
        Span(Duration::from_secs(seconds))
    }

    pub const fn minutes(minutes: u64) -> Span {
        Span(Duration::from_secs(minutes * 60))
    }

    pub fn duration(self) -> Duration {
        self.0
    }

    pub fn millis(self) -> i64 {
        i64::try_from(self.0.as_millis()).unwrap_or(i64::MAX)
    }

    pub fn parse(text: &str) -> Result<Span, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let unit_seconds = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => 0,
        };
        match number.parse::<u64>() {
            Ok(n) if n > 0 && unit_seconds > 0 => Ok(Span::seconds(n.saturating_mul(unit_seconds))),
            _ => Err(format!(
                "`{text}` is not a length of time: write a whole number above 0 and a unit, such as 90s, 10m, 4h or 1d"
            )),
        }
    }
}

/// Written back in the largest unit that keeps it whole, as a person would write it.
impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let seconds = self.0.as_secs();
        let (n, unit) = [(86_400, "d"), (3600, "h"), (60, "m")]
            .into_iter()
            .find(|(size, _)| seconds.is_multiple_of(*size) && seconds >= *size)
            .map_or((seconds, "s"), |(size, unit)| (seconds / size, unit));
        write!(f, "{n}{unit}")
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Span, D::Error> {
        struct SpanVisitor;
        impl serde::de::Visitor<'_> for SpanVisitor {
            type Value = Span;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a length of time such as 90s, 10m, 4h or 1d")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Span, E> {
                Span::parse(text).map_err(E::custom)
            }
            // A bare number is the usual slip: say what is missing, not that it is a number.
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Span, E> {
                Span::parse(&n.to_string()).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Span, E> {
                Span::parse(&n.to_string()).map_err(E::custom)
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Span, E> {
                Span::parse(&n.to_string()).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SpanVisitor)
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_need_a_unit_and_are_written_back_in_the_largest_whole_one() {
        assert_eq!(
            Span::parse("90s").unwrap().duration(),
            Duration::from_secs(90)
        );
        assert_eq!(Span::parse("4h").unwrap(), Span::minutes(240));
        assert_eq!(Span::parse("1d").unwrap().to_string(), "1d");
        assert_eq!(Span::parse("90s").unwrap().to_string(), "90s");
        assert_eq!(Span::parse("120s").unwrap().to_string(), "2m");
        for wrong in ["10", "0m", "5 minutes", "m", "-1h", "1.5h"] {
            assert!(Span::parse(wrong).is_err(), "{wrong}");
        }
    }
}
