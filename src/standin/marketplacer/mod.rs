//! A local stand-in for Marketplacer's GraphQL Operator API, answering from replayed webhook
//! captures.
//!
//! Why it exists: reconciliation re-reads from Marketplacer what its webhooks should have
//! delivered, and tests must never call a real instance. A test loads the same NDJSON it
//! replays into `serve` (generated, or captured by `serve` itself), starts a [`StandIn`],
//! points the client at [`StandIn::url`], and asserts on the answers and on
//! [`StandIn::stats`] (how many requests, how many throttled, what each query asked for).
//!
//! What it does, as Marketplacer documents it (sources as tagged in
//! `notes/marketplacer.md` §0 and `notes/reconciliation.md` §4):
//! - `POST /graphql` with `{"query", "variables", "operationName"}`; the key in
//!   `MARKETPLACER-API-KEY`, or `Authorization: Bearer` (S11, S10).
//! - Every query is validated against Marketplacer's SDL (S17) and rejected as Marketplacer's
//!   graphql-ruby server rejects it (`validate.rs`); deprecated fields work.
//! - The root fields a sync reads (`invoices`, `refundRequests`, `updatedRefundRequests`,
//!   `updatedOrders`, `invoiceAmendments`, `webhooks`, `webhookEvents`, `node`, `nodes`,
//!   `order`, `siteConfig`, `klaviyoSettings`) with their documented filters and sorts (S3,
//!   S16, S14), as Relay connections: default page 50, maximum 500 (S12), forward only.
//!   Any selection is answered from the data by one general executor (`execute.rs`).
//! - Rate limits (S13): 600 requests per 10 s per source IP and 750 per 10 s per key (a test's
//!   client is one IP, so the first binds); windows slide, so a client that passes here passes
//!   Marketplacer's windows wherever they start. Over a limit: 429, with `Retry-After` unless
//!   [`Faults::retry_after`] is off (S13: "may include"; without it a client must wait ≥ 60 s).
//! - The operator's webhooks: one per type `queries/` has a query for, enabled, with that query;
//!   [`Config::disabled_webhooks`] / [`StandIn::set_webhook_enabled`] disable one, as
//!   Marketplacer does after a non-429 4xx (S4). `klaviyoSettings` is off unless
//!   [`Config::klaviyo`] / [`StandIn::set_klaviyo_settings`] switch it on.
//!
//! What it must never do:
//! - **Be lenient where Marketplacer is strict.** Unknown fields, arguments, types and
//!   variables are errors; so is a timestamp without an offset, and so are `before`/`last`,
//!   which Marketplacer does not support. Where the docs leave room the stricter reading is
//!   taken: sliding windows, the per-IP limit as well as the per-key one, a filter the data
//!   cannot answer refused rather than ignored.
//! - **Invent data.** Every value served is in the data; a field the data lacks is null, an
//!   empty list, or (non-null) an error naming the object and field. Derived relations are
//!   only the reverse of captured ones.
//! - **Talk to anything but loopback**, or show an API key anywhere.
//!
//! Choices where Marketplacer documents nothing (each also in `docs/standins.md`): a missing or
//! unknown key is answered HTTP 401 with a GraphQL `errors` body (a 4xx says "do not retry
//! as is", and no body shape is published); a throttled request's body is plain text, as a
//! rate limiter in front of the application answers; time windows include both ends ("since
//! this time", "until this time").
//!
//! Time can run faster than real time ([`Config::time_scale`]): the 10-second window and every
//! `Retry-After` are in scaled seconds.

mod data;
mod execute;
mod request;
mod schema;
mod server;
mod validate;

pub use data::{Data, LineProblem, LoadProblem, LoadSummary, OpenError};
pub use request::Asked;

use crate::queries::QuerySet;
use apollo_compiler::response::JsonValue;
use data::{Embedded, Value};
use server::App;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The key [`Config::default`] accepts.
pub const DEFAULT_API_KEY: &str = "mp_standin";

/// Marketplacer's published limits (S13), per 10 seconds.
pub const KEY_LIMIT: u32 = 750;
pub const IP_LIMIT: u32 = 600;
/// The limits' window.
pub const LIMIT_WINDOW: Duration = Duration::from_secs(10);

/// The instance's `siteConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    /// `verticalCode`; None takes the data's `Marketplacer-Vertical`.
    pub vertical: Option<String>,
    pub site_name: String,
    pub country_code: String,
    pub country_name: String,
    pub currency_code: String,
    pub tax_inclusive: bool,
}

impl Default for Site {
    /// An Australian, tax-inclusive AUD marketplace, as the examples are.
    fn default() -> Site {
        Site {
            vertical: None,
            site_name: "Marketplacer stand-in".into(),
            country_code: "AU".into(),
            country_name: "Australia".into(),
            currency_code: "AUD".into(),
            tax_inclusive: true,
        }
    }
}

fn leaf(value: impl Into<serde_json::Value>) -> Value {
    Value::Leaf(JsonValue::from(value.into()))
}

impl Site {
    pub(crate) fn config(&self) -> Embedded {
        let country = Embedded {
            type_name: Some("SiteCountry".into()),
            fields: HashMap::from([
                ("code".into(), leaf(self.country_code.clone())),
                ("name".into(), leaf(self.country_name.clone())),
                ("currencyCode".into(), leaf(self.currency_code.clone())),
                ("taxInclusive".into(), leaf(self.tax_inclusive)),
            ]),
        };
        let mut fields = HashMap::from([
            ("siteName".into(), leaf(self.site_name.clone())),
            ("country".into(), Value::Object(Box::new(country))),
        ]);
        // Without a vertical from the data or the config, `verticalCode` is an error rather
        // than an invented name a client would key its records with.
        if let Some(vertical) = &self.vertical {
            fields.insert("verticalCode".into(), leaf(vertical.clone()));
        }
        Embedded {
            type_name: Some("SiteConfig".into()),
            fields,
        }
    }
}

/// Marketplacer's own Klaviyo integration, as `klaviyoSettings` shows it (off by default; on,
/// it sends its own Placed Order events, MP §3.10). Its API keys are never served.
#[derive(Debug, Clone, PartialEq)]
pub struct KlaviyoSettings {
    /// `StatusTypeEnum`: AVAILABLE, UNAVAILABLE, CONNECTED or ERROR.
    pub status: String,
    pub ecommerce_tracking_enabled: bool,
    pub edm_enabled: bool,
}

impl Default for KlaviyoSettings {
    fn default() -> KlaviyoSettings {
        KlaviyoSettings {
            status: "AVAILABLE".into(),
            ecommerce_tracking_enabled: false,
            edm_enabled: false,
        }
    }
}

impl KlaviyoSettings {
    pub(crate) fn settings(&self) -> Embedded {
        Embedded {
            type_name: Some("KlaviyoSettings".into()),
            fields: HashMap::from([
                ("status".into(), leaf(self.status.clone())),
                (
                    "ecommerceTrackingEnabled".into(),
                    leaf(self.ecommerce_tracking_enabled),
                ),
                ("edmEnabled".into(), leaf(self.edm_enabled)),
                ("providerName".into(), leaf("Klaviyo")),
                ("providerHandle".into(), leaf("klaviyo")),
                ("category".into(), leaf("EMAIL_MARKETING")),
                ("privateApiKey".into(), leaf(serde_json::Value::Null)),
                ("publicApiKey".into(), leaf(serde_json::Value::Null)),
            ]),
        }
    }
}

/// One of the operator's webhooks.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WebhookState {
    pub(crate) id: String,
    /// `WebhookKlassEnum` (`INVOICE`).
    pub(crate) klass: String,
    /// The record type (`Invoice`).
    pub(crate) record_type: String,
    pub(crate) url: String,
    pub(crate) query: String,
    pub(crate) enabled: bool,
}

/// A request answered with a fault instead of its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    /// 429, as over a limit.
    Throttle,
    /// 503, which Marketplacer also answers when limiting (S13).
    Unavailable,
}

/// Faults to inject: what a client must survive from the real API, on demand.
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    /// Answered to the next requests, one each, in order, before any limit or draw.
    pub next: Vec<Injected>,
    /// Share of requests answered 429 although no limit is reached (0 to 1).
    pub throttle_rate: f64,
    /// Share of requests answered 503 (0 to 1).
    pub unavailable_rate: f64,
    /// Seed of the draws: the same seed and order of requests give the same faults.
    pub seed: u64,
    /// Whether 429s (limited or injected) and 503s carry `Retry-After`. Off, a client has to
    /// fall back on Marketplacer's advice: wait at least 60 seconds.
    pub retry_after: bool,
    /// `Retry-After` of an injected fault, in (scaled) seconds.
    pub injected_retry_after: u64,
    /// Root fields that answer a field error (with its `path`) carrying this message.
    pub failing_fields: BTreeMap<String, String>,
}

impl Default for Faults {
    fn default() -> Faults {
        Faults {
            next: Vec::new(),
            throttle_rate: 0.0,
            unavailable_rate: 0.0,
            seed: 1,
            retry_after: true,
            injected_retry_after: 1,
            failing_fields: BTreeMap::new(),
        }
    }
}

impl Faults {
    /// No faults.
    pub fn none() -> Faults {
        Faults::default()
    }
}

/// How a stand-in behaves.
#[derive(Debug, Clone)]
pub struct Config {
    /// What it serves.
    pub data: Data,
    /// The keys it accepts.
    pub api_keys: Vec<String>,
    /// Requests per key per [`LIMIT_WINDOW`].
    pub key_limit: u32,
    /// Requests per source IP per [`LIMIT_WINDOW`] (every test client is 127.0.0.1).
    pub ip_limit: u32,
    /// How much faster than real time its clock runs (above 0).
    pub time_scale: f64,
    pub faults: Faults,
    pub site: Site,
    pub klaviyo: KlaviyoSettings,
    /// Webhooks to start disabled, by type (`INVOICE`, `Invoice`, `refund_request`).
    pub disabled_webhooks: Vec<String>,
    /// Where the webhooks say they deliver (`serve`'s path by default).
    pub webhook_url: String,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            data: Data::new(),
            api_keys: vec![DEFAULT_API_KEY.to_string()],
            key_limit: KEY_LIMIT,
            ip_limit: IP_LIMIT,
            time_scale: 1.0,
            faults: Faults::none(),
            site: Site::default(),
            klaviyo: KlaviyoSettings::default(),
            disabled_webhooks: Vec::new(),
            webhook_url: format!("http://127.0.0.1:8080{}", crate::serve::WEBHOOK_PATH),
        }
    }
}

/// Why a stand-in did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("time_scale must be above 0, not {0}")]
    TimeScale(f64),
    #[error("no webhook of type {name:?}: the stand-in holds {known}")]
    UnknownWebhook { name: String, known: String },
    #[error("cannot listen: {0}")]
    Io(#[from] io::Error),
}

/// What the stand-in saw. Every request is counted once in `requests` and once in exactly one
/// of the outcomes.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Stats {
    pub requests: u64,
    /// Answered 200 (with data, GraphQL errors, or both).
    pub answered: u64,
    /// 429: over a limit, or injected.
    pub throttled: u64,
    /// 503, injected.
    pub unavailable: u64,
    /// 401: no key or an unknown one.
    pub unauthenticated: u64,
    /// 400: a body that is not a GraphQL request.
    pub bad_requests: u64,
    /// 404 and 405: another path or method.
    pub other: u64,
    /// Of `answered`, those carrying `errors`.
    pub with_errors: u64,
    /// The most requests that arrived in any one window (sliding, scaled), whatever their
    /// answer: a client pacing itself to the limit keeps this at or under it.
    pub max_per_window: u32,
    /// How many answered requests selected each root field.
    pub root_fields: BTreeMap<String, u64>,
    /// Every answered request, in arrival order.
    pub queries: Vec<Asked>,
}

/// A running stand-in. Dropping it stops the server too; [`StandIn::shutdown`] also waits.
pub struct StandIn {
    app: Arc<App>,
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<()>>,
}

/// The webhooks of `queries/`, with their rendered query.
fn webhooks(url: &str) -> Vec<WebhookState> {
    let (queries, _) = QuerySet::builtin();
    queries
        .queries
        .values()
        .enumerate()
        .map(|(index, query)| WebhookState {
            id: global_id("Webhook", index as u64 + 1),
            klass: klass(&query.type_name),
            record_type: query.type_name.clone(),
            url: url.to_owned(),
            query: query.render(),
            enabled: true,
        })
        .collect()
}

/// `RefundRequest` → `REFUND_REQUEST`.
fn klass(type_name: &str) -> String {
    let mut out = String::new();
    for (i, c) in type_name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Base64 of `Type-N`, as Marketplacer's ids look (MP §3.2).
fn global_id(type_name: &str, n: u64) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{type_name}-{n}"))
}

/// The webhook a name means: its `WebhookKlassEnum` value or record type, in any case.
fn find_webhook<'w>(
    webhooks: &'w mut [WebhookState],
    name: &str,
) -> Result<&'w mut WebhookState, StartError> {
    let wanted = name
        .trim()
        .replace(['_', '-', ' '], "")
        .to_ascii_lowercase();
    let known = webhooks
        .iter()
        .map(|w| w.klass.clone())
        .collect::<Vec<_>>()
        .join(", ");
    webhooks
        .iter_mut()
        .find(|w| w.record_type.to_ascii_lowercase() == wanted)
        .ok_or(StartError::UnknownWebhook {
            name: name.to_owned(),
            known,
        })
}

impl StandIn {
    /// Starts a stand-in on a free port of 127.0.0.1.
    pub async fn start(config: Config) -> Result<StandIn, StartError> {
        StandIn::start_on(config, 0).await
    }

    /// Starts a stand-in on 127.0.0.1:`port` (0 for a free one).
    pub async fn start_on(mut config: Config, port: u16) -> Result<StandIn, StartError> {
        if !(config.time_scale.is_finite() && config.time_scale > 0.0) {
            return Err(StartError::TimeScale(config.time_scale));
        }
        let mut hooks = webhooks(&config.webhook_url);
        for name in &config.disabled_webhooks {
            find_webhook(&mut hooks, name)?.enabled = false;
        }
        config.data.finish();
        if config.site.vertical.is_none() {
            config.site.vertical = config.data.vertical.clone();
        }
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let app = Arc::new(App::new(config, hooks));
        let router = server::router(app.clone());
        let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, service)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(StandIn {
            app,
            url,
            stop: Some(stop),
            task,
        })
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The GraphQL endpoint, `…/graphql`.
    pub fn graphql_url(&self) -> String {
        format!("{}/graphql", self.url)
    }

    /// What it saw so far.
    pub fn stats(&self) -> Stats {
        self.app.stats()
    }

    /// Replaces the faults (and restarts their draws from the new seed).
    pub fn set_faults(&self, faults: Faults) {
        self.app.set_faults(faults);
    }

    /// Enables or disables a webhook by type (`INVOICE`, `Shipment`, `refund_request`).
    pub fn set_webhook_enabled(&self, name: &str, enabled: bool) -> Result<(), StartError> {
        self.app.set_webhook_enabled(name, enabled)
    }

    /// Replaces what `klaviyoSettings` shows, as an operator setting up Marketplacer's own
    /// Klaviyo integration in the admin portal changes it.
    pub fn set_klaviyo_settings(&self, settings: KlaviyoSettings) {
        self.app.set_klaviyo_settings(settings);
    }

    /// Stops accepting, lets answers under way finish (5 seconds at most), and stops.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

/// Runs a stand-in on 127.0.0.1:`port` until Ctrl-C (`marketsync standin marketplacer`).
/// Blocks; builds its own Tokio runtime, so call it from outside one.
pub fn serve_forever(config: Config, port: u16) -> Result<(), StartError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let standin = StandIn::start_on(config, port).await?;
        eprintln!(
            "Marketplacer stand-in listening on {}; Ctrl-C stops it",
            standin.graphql_url()
        );
        tokio::signal::ctrl_c().await?;
        standin.shutdown().await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_types_are_marketplacers_enum_values() {
        assert_eq!(klass("RefundRequest"), "REFUND_REQUEST");
        assert_eq!(klass("Invoice"), "INVOICE");
        let mut hooks = webhooks("http://x");
        let names: Vec<&str> = hooks.iter().map(|w| w.klass.as_str()).collect();
        assert_eq!(names, ["INVOICE", "REFUND_REQUEST", "SHIPMENT"]);
        for name in [
            "INVOICE",
            "invoice",
            "Invoice",
            "refund_request",
            "RefundRequest",
        ] {
            assert!(find_webhook(&mut hooks, name).is_ok(), "{name}");
        }
        let err = find_webhook(&mut hooks, "ORDER").unwrap_err().to_string();
        assert!(err.contains("INVOICE, REFUND_REQUEST, SHIPMENT"), "{err}");
    }
}
