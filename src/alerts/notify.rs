//! Sending an alert's message: to a Slack-compatible incoming webhook and/or a command.
//!
//! Both are bounded by one timeout and run side by side, so a command that hangs neither
//! delays the Slack post nor the next check, and its failure is logged, never fatal. The
//! webhook URL is a secret: it is never printed, and reqwest's errors are stripped of it.

use super::{AlertSettings, Notice};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Where notices go.
pub struct Notifier {
    slack: Option<Slack>,
    command: Vec<String>,
    timeout: Duration,
}

struct Slack {
    client: reqwest::Client,
    url: reqwest::Url,
}

/// Why the notifiers could not be set up: named without the URL's value.
#[derive(Debug, thiserror::Error)]
pub enum NotifierError {
    #[error(
        "alerts.slack_webhook_env: the variable {0} is not set; set it to the Slack incoming-webhook URL (never written in a file)"
    )]
    Unset(String),
    #[error(
        "alerts.slack_webhook_env: the variable {0} does not hold an https:// URL (http:// only to this machine); its value is not printed"
    )]
    NotAUrl(String),
    #[error(
        "alerts: no notifier: give `slack_webhook_env`, `command`, or both, or leave `alerts:` out"
    )]
    Nowhere,
}

impl Notifier {
    /// The notifiers `settings` name, the Slack URL read from its variable through `env`.
    pub fn new(
        settings: &AlertSettings,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Notifier, NotifierError> {
        let slack = match &settings.slack_webhook_env {
            Some(variable) => {
                let value = env(variable)
                    .filter(|v| !v.trim().is_empty())
                    .ok_or_else(|| NotifierError::Unset(variable.clone()))?;
                let url = reqwest::Url::parse(value.trim())
                    .ok()
                    .filter(|url| match url.scheme() {
                        "https" => true,
                        "http" => {
                            matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"))
                        }
                        _ => false,
                    })
                    .ok_or_else(|| NotifierError::NotAUrl(variable.clone()))?;
                let client = reqwest::Client::builder()
                    .timeout(settings.notify_timeout.duration())
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent(concat!("marketsync/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .expect("an HTTP client with these settings builds");
                Some(Slack { client, url })
            }
            None => None,
        };
        if slack.is_none() && settings.command.is_empty() {
            return Err(NotifierError::Nowhere);
        }
        Ok(Notifier {
            slack,
            command: settings.command.clone(),
            timeout: settings.notify_timeout.duration(),
        })
    }

    /// Sends `notice` everywhere, each within the timeout; failures are logged.
    pub async fn send(&self, notice: &Notice) {
        let slack = async {
            if let Some(slack) = &self.slack
                && let Err(problem) = self.post(slack, notice).await
            {
                tracing::error!(
                    "alerts: the Slack webhook did not take {} {}: {problem}",
                    notice.alert.name(),
                    notice.state.as_str()
                );
            }
        };
        let command = async {
            if !self.command.is_empty()
                && let Err(problem) = self.run(notice).await
            {
                tracing::error!(
                    "alerts: the alert command `{}` failed for {} {}: {problem}",
                    self.command[0],
                    notice.alert.name(),
                    notice.state.as_str()
                );
            }
        };
        tokio::join!(slack, command);
    }

    async fn post(&self, slack: &Slack, notice: &Notice) -> Result<(), String> {
        let response = slack
            .client
            .post(slack.url.clone())
            .json(&serde_json::json!({ "text": notice.text }))
            .send()
            .await
            .map_err(|err| err.without_url().to_string())?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    }

    async fn run(&self, notice: &Notice) -> Result<(), String> {
        let since = chrono::DateTime::from_timestamp_millis(notice.since)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        let mut child = tokio::process::Command::new(&self.command[0])
            .args(&self.command[1..])
            .env("ALERT_NAME", notice.alert.name())
            .env("ALERT_STATE", notice.state.as_str())
            .env("ALERT_SINCE", since)
            .env("ALERT_OWNER", notice.alert.owner())
            .env("ALERT_RUNBOOK", notice.alert.runbook())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|err| format!("cannot start it: {err}"))?;
        let mut stdin = child.stdin.take().expect("stdin piped");
        let text = notice.text.clone();
        let finished = async move {
            // A command that does not read its stdin is not an error.
            let _ = stdin.write_all(text.as_bytes()).await;
            drop(stdin);
            child.wait().await
        };
        match tokio::time::timeout(self.timeout, finished).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(format!("it exited with {status}")),
            Ok(Err(err)) => Err(err.to_string()),
            // Dropping the future drops the child, which kills it.
            Err(_) => Err(format!(
                "it did not finish within {}s and was killed",
                self.timeout.as_secs()
            )),
        }
    }
}
