//! Email-marketing consent as a timeline: every subscribe, unsubscribe and suppression in the
//! order Klaviyo processed it, folded into what `additional-fields[profile]=subscriptions`
//! shows now.
//!
//! Why a timeline rather than the latest value: Klaviyo's consent has rules that depend on
//! order. Bulk Subscribe "will remove any `UNSUBSCRIBE`, `SPAM_REPORT` or `USER_SUPPRESSED`
//! suppressions" (spec), so a resubscribe after an unsubscribe wins, while a hard bounce
//! survives it. Reconciliation must tell "unsubscribed after our opt-in" (never an exception)
//! from "subscribed without our evidence" (a compliance exception), and only the order of
//! what happened tells them apart.
//!
//! Simplifications, each also in docs/standins.md: only `email.marketing` is shown (SMS,
//! push and WhatsApp consent are accepted but not read back); an API subscription's `method`
//! reads `API` (the spec gives only an example, `PREFERENCE_PAGE`) and its `custom_source`
//! reads as `custom_method_detail` (unverified); an unsubscribe has no `method`; a profile that
//! never consented reads `NEVER_SUBSCRIBED` (the wire spelling is unverified).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use super::store::timestamp;

/// Why an address is suppressed: the spec's `EmailMarketingSuppression.reason` enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SuppressionReason {
    HardBounce,
    InvalidEmail,
    SpamComplaint,
    Unsubscribe,
    UserSuppressed,
}

impl SuppressionReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SuppressionReason::HardBounce => "HARD_BOUNCE",
            SuppressionReason::InvalidEmail => "INVALID_EMAIL",
            SuppressionReason::SpamComplaint => "SPAM_COMPLAINT",
            SuppressionReason::Unsubscribe => "UNSUBSCRIBE",
            SuppressionReason::UserSuppressed => "USER_SUPPRESSED",
        }
    }

    pub fn parse(text: &str) -> Option<SuppressionReason> {
        [
            SuppressionReason::HardBounce,
            SuppressionReason::InvalidEmail,
            SuppressionReason::SpamComplaint,
            SuppressionReason::Unsubscribe,
            SuppressionReason::UserSuppressed,
        ]
        .into_iter()
        .find(|r| r.as_str() == text)
    }

    /// Whether a subscription lifts it (the spec's `SPAM_REPORT` is read as `SPAM_COMPLAINT`).
    fn lifted_by_subscribing(self) -> bool {
        matches!(
            self,
            SuppressionReason::Unsubscribe
                | SuppressionReason::SpamComplaint
                | SuppressionReason::UserSuppressed
        )
    }
}

/// Whom a change is about: an address (the profile it identifies) or a profile by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Subject {
    /// Lower-cased.
    Email(String),
    Profile(String),
}

/// One change of consent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Change {
    Subscribed {
        method: String,
        method_detail: Option<String>,
        custom_method_detail: Option<String>,
        /// `consent_timestamp`: the `consented_at` sent, else when it was processed.
        consented_at: String,
    },
    Unsubscribed,
    Suppressed(SuppressionReason),
}

/// A change, whom it is about, and when it happened.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ConsentEvent {
    pub(crate) subject: Subject,
    pub(crate) at: DateTime<Utc>,
    pub(crate) change: Change,
}

/// What the timeline comes to for one profile.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct EmailMarketing {
    consent: Option<&'static str>,
    consent_timestamp: Option<String>,
    last_updated: Option<String>,
    method: Option<String>,
    method_detail: Option<String>,
    custom_method_detail: Option<String>,
    suppressions: Vec<(SuppressionReason, String)>,
}

impl EmailMarketing {
    /// Folds `events` (oldest first) that concern the profile.
    pub(crate) fn fold<'a>(events: impl Iterator<Item = &'a ConsentEvent>) -> EmailMarketing {
        let mut state = EmailMarketing::default();
        for event in events {
            let at = timestamp(event.at);
            state.last_updated = Some(at.clone());
            match &event.change {
                Change::Subscribed {
                    method,
                    method_detail,
                    custom_method_detail,
                    consented_at,
                } => {
                    state.consent = Some("SUBSCRIBED");
                    state.consent_timestamp = Some(consented_at.clone());
                    state.method = Some(method.clone());
                    state.method_detail = method_detail.clone();
                    state.custom_method_detail = custom_method_detail.clone();
                    state
                        .suppressions
                        .retain(|(reason, _)| !reason.lifted_by_subscribing());
                }
                Change::Unsubscribed | Change::Suppressed(SuppressionReason::Unsubscribe) => {
                    state.consent = Some("UNSUBSCRIBED");
                    state.consent_timestamp = Some(at.clone());
                    state.method = None;
                    state.method_detail = None;
                    state.custom_method_detail = None;
                    state.suppress(SuppressionReason::Unsubscribe, at);
                }
                Change::Suppressed(reason) => state.suppress(*reason, at),
            }
        }
        state
    }

    fn suppress(&mut self, reason: SuppressionReason, at: String) {
        self.suppressions.retain(|(r, _)| *r != reason);
        self.suppressions.push((reason, at));
    }

    /// `subscriptions.email.marketing`, the spec's `EmailMarketing` schema.
    pub(crate) fn to_json(&self) -> Json {
        let text = |value: &Option<String>| value.clone().map_or(Json::Null, Json::String);
        json!({
            // "True if the profile does not have any global suppressions" (spec).
            "can_receive_email_marketing": self.suppressions.is_empty(),
            "consent": self.consent.unwrap_or("NEVER_SUBSCRIBED"),
            "consent_timestamp": text(&self.consent_timestamp),
            "last_updated": text(&self.last_updated),
            "method": text(&self.method),
            "method_detail": self.method_detail.clone().unwrap_or_default(),
            "custom_method_detail": text(&self.custom_method_detail),
            "double_optin": Json::Null,
            "suppression": self
                .suppressions
                .iter()
                .map(|(reason, at)| json!({"reason": reason.as_str(), "timestamp": at}))
                .collect::<Vec<_>>(),
            "list_suppressions": [],
        })
    }

    /// The newest global suppression's timestamp, for `sort=…suppression.timestamp`.
    pub(crate) fn suppressed_at(&self) -> Option<&str> {
        self.suppressions.iter().map(|(_, at)| at.as_str()).max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 14, hour, 0, 0).unwrap()
    }

    fn event(hour: u32, change: Change) -> ConsentEvent {
        ConsentEvent {
            subject: Subject::Email("a@b.co".into()),
            at: at(hour),
            change,
        }
    }

    fn subscribed() -> Change {
        Change::Subscribed {
            method: "API".into(),
            method_detail: None,
            custom_method_detail: Some("Marketplacer checkout".into()),
            consented_at: "2026-03-13T23:15:30+00:00".into(),
        }
    }

    #[test]
    fn a_resubscribe_lifts_an_unsubscribe_but_not_a_bounce() {
        let events = [
            event(1, subscribed()),
            event(2, Change::Suppressed(SuppressionReason::HardBounce)),
            event(3, Change::Unsubscribed),
        ];
        let state = EmailMarketing::fold(events.iter()).to_json();
        assert_eq!(state["consent"], "UNSUBSCRIBED");
        assert_eq!(state["consent_timestamp"], "2026-03-14T03:00:00+00:00");
        assert_eq!(state["can_receive_email_marketing"], false);
        assert_eq!(state["suppression"].as_array().unwrap().len(), 2);

        let again = [events.to_vec(), vec![event(4, subscribed())]].concat();
        let state = EmailMarketing::fold(again.iter()).to_json();
        assert_eq!(state["consent"], "SUBSCRIBED");
        assert_eq!(state["custom_method_detail"], "Marketplacer checkout");
        assert_eq!(
            state["suppression"],
            json!([{"reason": "HARD_BOUNCE", "timestamp": "2026-03-14T02:00:00+00:00"}])
        );
        assert_eq!(state["can_receive_email_marketing"], false);
    }

    #[test]
    fn nothing_is_never_subscribed() {
        let state = EmailMarketing::fold([].iter()).to_json();
        assert_eq!(state["consent"], "NEVER_SUBSCRIBED");
        assert_eq!(state["can_receive_email_marketing"], true);
        assert_eq!(state["method"], Json::Null);
    }
}
