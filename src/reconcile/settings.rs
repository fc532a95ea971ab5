//! `reconcile:` in client.yaml: when `serve` reconciles, over which window, how long it leaves
//! the newest changes alone, and how it reads Klaviyo back (the timezone a day's revenue is
//! counted in, how much revenue may differ, how long a missed flow message still matters, and
//! how many reads a run may make).

use crate::alerts::Span;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::str::FromStr;

/// The scheduled reconciliation of one client.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileSettings {
    /// When `serve` runs it, as a cron expression in UTC (`15 * * * *`: a quarter past every
    /// hour). Left out, reconciliation runs only as `marketsync reconcile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// How far back each run reads: longer than the time between runs, so that consecutive
    /// windows overlap and a change that was still settling in one is read by the next.
    #[serde(default = "defaults::window")]
    pub window: Span,
    /// Changes younger than this are left out: their webhooks may still be in flight (or in
    /// Marketplacer's retries), and must not be called missing.
    #[serde(default = "defaults::settle")]
    pub settle: Span,
    /// The IANA timezone a day's revenue is counted in (`Australia/Melbourne`), on both sides:
    /// Klaviyo's reports and Marketplacer's both count days in the account's own zone.
    #[serde(default)]
    pub timezone: Timezone,
    /// How far a day's revenue for a marketplace may differ between Klaviyo and Marketplacer,
    /// as a percentage of Marketplacer's, beyond a cent per order (rounding). 0 leaves only the
    /// cent per order.
    #[serde(default)]
    pub revenue_tolerance_percent: f64,
    /// How long after an order a missing event still costs a flow message: a post-purchase
    /// flow only sends so long after the order (a repair after that is recorded, not messaged).
    #[serde(default = "defaults::flow_window")]
    pub flow_window: Span,
    /// The most requests one run reads Klaviyo with, over every read endpoint; a run that would
    /// read more stops and says so.
    #[serde(default = "defaults::read_budget")]
    pub read_budget: u64,
    /// Whether a run reads Klaviyo back after its sweep (`false`: a key without the read
    /// scopes; the sweep alone checks the ledger).
    #[serde(default = "defaults::read_klaviyo")]
    pub read_klaviyo: bool,
}

impl Default for ReconcileSettings {
    fn default() -> ReconcileSettings {
        ReconcileSettings {
            schedule: None,
            window: defaults::window(),
            settle: defaults::settle(),
            timezone: Timezone::default(),
            revenue_tolerance_percent: 0.0,
            flow_window: defaults::flow_window(),
            read_budget: defaults::read_budget(),
            read_klaviyo: true,
        }
    }
}

mod defaults {
    use super::Span;

    pub fn window() -> Span {
        Span::minutes(24 * 60)
    }
    pub fn settle() -> Span {
        Span::minutes(15)
    }
    pub fn flow_window() -> Span {
        Span::minutes(48 * 60)
    }
    pub fn read_klaviyo() -> bool {
        true
    }
    pub fn read_budget() -> u64 {
        crate::klaviyo::read::DEFAULT_READ_BUDGET
    }
}

/// An IANA timezone (`Australia/Melbourne`, `UTC`), as Klaviyo's metric aggregates take it:
/// case-sensitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timezone(pub chrono_tz::Tz);

impl Default for Timezone {
    fn default() -> Timezone {
        Timezone(chrono_tz::UTC)
    }
}

impl Timezone {
    pub fn parse(text: &str) -> Result<Timezone, String> {
        text.trim()
            .parse::<chrono_tz::Tz>()
            .map(Timezone)
            .map_err(|_| {
                format!(
                    "`{text}` is not an IANA timezone: write it as the tz database does, such as \
                 `Australia/Melbourne` or `UTC` (case matters)"
                )
            })
    }

    pub fn name(self) -> &'static str {
        self.0.name()
    }
}

impl<'de> Deserialize<'de> for Timezone {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Timezone, D::Error> {
        let text = String::deserialize(deserializer)?;
        Timezone::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Timezone {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// A cron expression (five fields, minute first; `@hourly` and the like), read in UTC.
#[derive(Debug, Clone)]
pub struct Schedule {
    text: String,
    cron: croner::Cron,
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Schedule) -> bool {
        self.text == other.text
    }
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let cron = croner::Cron::from_str(text.trim()).map_err(|e| {
            format!(
                "`{text}` is not a cron expression ({e}): write five fields, minute hour \
                 day-of-month month day-of-week, such as `15 * * * *` (a quarter past every \
                 hour) or `0 3 * * *` (03:00 UTC daily)"
            )
        })?;
        Ok(Schedule {
            text: text.trim().to_owned(),
            cron,
        })
    }

    /// The next time it fires strictly after `after`, if it ever does.
    pub fn next_after(
        &self,
        after: chrono::DateTime<chrono::Utc>,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        self.cron.find_next_occurrence(&after, false).ok()
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Schedule, D::Error> {
        let text = String::deserialize(deserializer)?;
        Schedule::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Schedule {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_schedule_fires_at_its_next_minute_in_utc() {
        let hourly = Schedule::parse("15 * * * *").unwrap();
        let at = chrono::Utc
            .with_ymd_and_hms(2026, 11, 30, 10, 15, 0)
            .unwrap();
        let next = hourly.next_after(at).unwrap();
        assert_eq!(next.to_rfc3339(), "2026-11-30T11:15:00+00:00");
        let daily = Schedule::parse("@daily").unwrap();
        assert_eq!(
            daily.next_after(at).unwrap().to_rfc3339(),
            "2026-12-01T00:00:00+00:00"
        );
    }

    #[test]
    fn a_bad_expression_says_how_to_write_one() {
        for wrong in ["every hour", "61 * * * *", "* * *", ""] {
            let problem = Schedule::parse(wrong).unwrap_err();
            assert!(problem.contains("is not a cron expression"), "{problem}");
            assert!(problem.contains("15 * * * *"), "{problem}");
        }
    }

    #[test]
    fn misspelt_keys_and_bare_numbers_are_refused() {
        let err = serde_saphyr::from_str::<ReconcileSettings>("windw: 24h\n").unwrap_err();
        assert!(err.to_string().contains("windw"), "{err}");
        let err = serde_saphyr::from_str::<ReconcileSettings>("window: 24\n").unwrap_err();
        assert!(err.to_string().contains("not a length of time"), "{err}");
        let settings: ReconcileSettings =
            serde_saphyr::from_str("schedule: '0 * * * *'\nsettle: 5m\n").unwrap();
        assert_eq!(settings.window, Span::minutes(1440));
        assert_eq!(settings.settle, Span::minutes(5));
        assert_eq!(settings.schedule.unwrap().as_str(), "0 * * * *");
    }

    #[test]
    fn the_read_back_settings_have_defaults_and_refuse_a_made_up_zone() {
        let settings: ReconcileSettings = serde_saphyr::from_str("window: 24h\n").unwrap();
        assert_eq!(settings.timezone.name(), "UTC");
        assert_eq!(settings.flow_window, Span::minutes(2880));
        assert_eq!(settings.read_budget, 10_000);
        let settings: ReconcileSettings = serde_saphyr::from_str(
            "timezone: Australia/Melbourne\nrevenue_tolerance_percent: 0.5\nread_budget: 500\n",
        )
        .unwrap();
        assert_eq!(settings.timezone.name(), "Australia/Melbourne");
        assert_eq!(settings.revenue_tolerance_percent, 0.5);
        assert_eq!(settings.read_budget, 500);
        for wrong in ["australia/melbourne", "Melbourne", "AEST+11"] {
            let err = serde_saphyr::from_str::<ReconcileSettings>(&format!("timezone: {wrong}\n"))
                .unwrap_err();
            assert!(err.to_string().contains("not an IANA timezone"), "{err}");
        }
    }
}
