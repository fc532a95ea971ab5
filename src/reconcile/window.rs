//! The window a reconciliation reads, from what was asked and the clock.

use chrono::{DateTime, Duration, SecondsFormat, Utc};

/// `since` to `until`, `until` excluded, both UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
}

impl Window {
    /// How an instant is written in queries and the checkpoint: RFC 3339, UTC, to the second
    /// or finer as it is.
    pub fn format(at: DateTime<Utc>) -> String {
        at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }

    pub fn since_text(&self) -> String {
        Window::format(self.since)
    }

    pub fn until_text(&self) -> String {
        Window::format(self.until)
    }

    /// Whether an instant written by Marketplacer (any offset) falls inside.
    pub fn holds(&self, at: &str) -> bool {
        DateTime::parse_from_rfc3339(at.trim())
            .map(|at| {
                let at = at.with_timezone(&Utc);
                at >= self.since && at < self.until
            })
            .unwrap_or(false)
    }

    pub fn length(&self) -> Duration {
        self.until - self.since
    }

    pub fn parse(since: &str, until: &str) -> Option<Window> {
        let read = |text: &str| {
            DateTime::parse_from_rfc3339(text)
                .ok()
                .map(|t| t.with_timezone(&Utc))
        };
        Some(Window {
            since: read(since)?,
            until: read(until)?,
        })
    }
}

/// What was asked for: `--since`, `--until`, `--window` (or the configured length), and the
/// settle delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// The length when `since` is not given.
    pub length: Duration,
    /// Whether the length was asked for (`--window`) rather than configured.
    pub length_asked: bool,
    pub settle: Duration,
}

/// The window of a new run at `now`, and a note when `until` was moved back to leave the
/// settle delay out. Changes younger than the delay are never read: their webhooks may still be
/// on their way.
pub fn window(ask: &Ask, now: DateTime<Utc>) -> Result<(Window, Option<String>), String> {
    let latest = now - ask.settle;
    let mut note = None;
    let until = match ask.until {
        Some(until) if until > latest => {
            note = Some(format!(
                "--until {} is within the settle delay ({}) of now: the window ends at {} \
                 instead, so that webhooks still on their way are not called missing",
                Window::format(until),
                describe(ask.settle),
                Window::format(latest)
            ));
            latest
        }
        Some(until) => until,
        None => latest,
    };
    let since = ask.since.unwrap_or(until - ask.length);
    if since >= until {
        return Err(match (ask.since, ask.until) {
            (Some(since), Some(asked)) if since >= asked => format!(
                "--since {} is not before --until {}: the window would be empty",
                Window::format(since),
                Window::format(asked)
            ),
            _ => format!(
                "the window would be empty: --since {} is not before {} (now less the settle \
                 delay of {})",
                Window::format(since),
                Window::format(until),
                describe(ask.settle)
            ),
        });
    }
    Ok((Window { since, until }, note))
}

/// Whether an unfinished run over `open` is the one asked for again: every bound that was
/// asked is the run's, and a length asked for is its length. Asking for nothing resumes it.
pub fn resumes(ask: &Ask, open: &Window, now: DateTime<Utc>) -> bool {
    let latest = now - ask.settle;
    if ask.since.is_some_and(|since| since != open.since) {
        return false;
    }
    // An `until` within the settle delay was moved back, and is no fixed bound to compare.
    if ask
        .until
        .is_some_and(|until| until <= latest && until != open.until)
    {
        return false;
    }
    if ask.since.is_none() && ask.length_asked && open.length() != ask.length {
        return false;
    }
    true
}

/// `15m`, `24h`, `90s`: a length as a person writes it.
pub fn describe(length: Duration) -> String {
    let seconds = length.num_seconds();
    for (size, unit) in [(86_400, "d"), (3600, "h"), (60, "m")] {
        if seconds >= size && seconds % size == 0 {
            return format!("{}{unit}", seconds / size);
        }
    }
    format!("{seconds}s")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 30, h, m, 0).unwrap()
    }

    fn ask() -> Ask {
        Ask {
            since: None,
            until: None,
            length: Duration::hours(24),
            length_asked: false,
            settle: Duration::minutes(15),
        }
    }

    #[test]
    fn the_default_window_ends_a_settle_delay_before_now() {
        let (window, note) = window(&ask(), at(12, 0)).unwrap();
        assert_eq!(window.since_text(), "2026-11-29T11:45:00Z");
        assert_eq!(window.until_text(), "2026-11-30T11:45:00Z");
        assert_eq!(note, None);
        assert!(window.holds("2026-11-30T22:44:59+11:00"));
        assert!(
            !window.holds("2026-11-30T22:45:00+11:00"),
            "until is excluded"
        );
        assert!(window.holds("2026-11-29T11:45:00Z"), "since is included");
        assert!(!window.holds("yesterday"));
    }

    #[test]
    fn an_until_inside_the_settle_delay_is_moved_back_and_said() {
        let asked = Ask {
            until: Some(at(11, 55)),
            length: Duration::hours(1),
            ..ask()
        };
        let (window, note) = window(&asked, at(12, 0)).unwrap();
        assert_eq!(window.until, at(11, 45));
        assert_eq!(window.since, at(10, 45));
        assert!(note.unwrap().contains("settle delay (15m)"));
    }

    #[test]
    fn since_after_until_is_refused_with_both_named() {
        let asked = Ask {
            since: Some(at(10, 0)),
            until: Some(at(9, 0)),
            ..ask()
        };
        let problem = window(&asked, at(12, 0)).unwrap_err();
        assert_eq!(
            problem,
            "--since 2026-11-30T10:00:00Z is not before --until 2026-11-30T09:00:00Z: the window would be empty"
        );
        let asked = Ask {
            since: Some(at(11, 50)),
            ..ask()
        };
        let problem = window(&asked, at(12, 0)).unwrap_err();
        assert!(problem.contains("settle delay of 15m"), "{problem}");
    }

    #[test]
    fn a_run_is_resumed_when_nothing_else_was_asked() {
        let open = Window {
            since: at(0, 0),
            until: at(6, 0),
        };
        let now = at(12, 0);
        assert!(resumes(&ask(), &open, now));
        let same = Ask {
            since: Some(at(0, 0)),
            until: Some(at(6, 0)),
            ..ask()
        };
        assert!(resumes(&same, &open, now));
        let other = Ask {
            since: Some(at(1, 0)),
            ..ask()
        };
        assert!(!resumes(&other, &open, now));
        let six_hours = Ask {
            length: Duration::hours(6),
            length_asked: true,
            ..ask()
        };
        assert!(resumes(&six_hours, &open, now));
        let a_day = Ask {
            length_asked: true,
            ..ask()
        };
        assert!(!resumes(&a_day, &open, now));
    }

    #[test]
    fn lengths_are_written_as_people_write_them() {
        assert_eq!(describe(Duration::minutes(15)), "15m");
        assert_eq!(describe(Duration::hours(48)), "2d");
        assert_eq!(describe(Duration::seconds(90)), "90s");
    }
}
