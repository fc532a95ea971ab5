//! `marketsync customer`: one shopper's history for customer service, from the state file
//! (and, with `--klaviyo`, what Klaviyo holds now).
//!
//! Nothing about the person is logged: the view goes to stdout only, and stderr carries
//! notes about the tool (an older state file being indexed, a missing key), never the person.

use super::{
    EXIT_IO, EXIT_KEY_REFUSED, EXIT_OK, EXIT_REJECTED, EXIT_USAGE, MappingArgs, StateArgs,
};
use marketsync::customer::klaviyo::{self as klaviyo_read, KlaviyoView, ReadError};
use marketsync::customer::{self, CustomerView, Lookup, RequestStatus};
use marketsync::klaviyo::read::{ReadOptions, Reader};
use marketsync::sink::http::{self, ApiKey};
use serde_json::json;
use std::time::Duration;

/// Requests indexed per transaction when an older state file is indexed for lookups.
const BACKFILL_BATCH: usize = 5_000;

/// Show one shopper's history: who they are as we normalise them, every delivery that
/// concerned them (newest first) with what became of each request, their opt-in evidence,
/// open dead letters, exceptions and warnings.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  marketsync customer zoe.kowalski@example.com --state /var/lib/marketsync/state.db
  marketsync customer '0412 345 678' --client acme
  marketsync customer ' Zoe.Kowalski@Example.COM ' --format json | jq .timeline
  KLAVIYO_API_KEY=pk_... marketsync customer zoe.kowalski@example.com --klaviyo

The person is found as the mappings normalise them: an email is trimmed and lowercased, a phone
number is read into E.164 (with the client's phone_region when it has no country code). A phone
number also brings the email addresses it was seen with.

Statuses: queued (waiting, with the last answer), sent (Klaviyo's answer and when), dead letter
(why), superseded (a newer profile update replaced it), dropped: once per key (the mapping fires
once, and it had fired), dropped: stale (a newer profile update was already applied).

--klaviyo adds what Klaviyo holds now (profiles, consent and suppressions, the properties we set,
our events) and lists where it disagrees with the history; it needs the key in KLAVIYO_API_KEY
(or the variable the client names) with profiles:read and events:read. Without a key the local
history is shown with a note.

Exit 0 when the person was found, 1 when no delivery concerned them, 2 when the argument is
neither an email nor a phone number, 3 when the mappings do not load, 4 when the state file
cannot be read or Klaviyo cannot be read (the local history is still shown), 5 when Klaviyo
refused the key.")]
pub struct Args {
    #[command(flatten)]
    mappings: MappingArgs,
    #[command(flatten)]
    state: StateArgs,
    /// `human` or `json`.
    #[arg(long, value_name = "FORMAT", default_value = "human", value_parser = ["human", "json"])]
    format: String,
    /// Also read what Klaviyo holds now, and show where it disagrees.
    #[arg(long)]
    klaviyo: bool,
    /// Klaviyo's API base URL, as for `run`.
    #[arg(
        long,
        value_name = "URL",
        env = "KLAVIYO_BASE_URL",
        default_value = "https://a.klaviyo.com"
    )]
    klaviyo_url: String,
    /// The shopper's email address or phone number, as they wrote it.
    #[arg(value_name = "EMAIL|PHONE")]
    who: String,
}

pub fn execute(args: Args) -> u8 {
    let engine = match args.mappings.load_or_report() {
        Ok(engine) => engine,
        Err(code) => return code,
    };
    let lookup = match Lookup::parse(&args.who, &engine.settings().phone_region) {
        Ok(lookup) => lookup,
        Err(err) => {
            eprintln!("error: {err}");
            return EXIT_USAGE;
        }
    };
    let mut store = match args.state.open_existing() {
        Ok(store) => store,
        Err(code) => return code,
    };
    let read = (|| {
        if store.people_backfill_pending()? {
            eprintln!("note: indexing the requests of an older state file (once)");
            while !customer::backfill(&mut store, BACKFILL_BATCH)? {}
        }
        customer::read(&store, &engine, &lookup)
    })();
    let view = match read {
        Ok(view) => view,
        Err(err) => {
            eprintln!("error: state database {}: {err}", args.state.path.display());
            return EXIT_IO;
        }
    };
    drop(store);
    let mut code = if view.found { EXIT_OK } else { EXIT_REJECTED };
    let klaviyo = if args.klaviyo {
        match read_klaviyo(&args, &engine, &view) {
            Ok(found) => Some(Ok(found)),
            Err((status, message)) => {
                if status != EXIT_OK {
                    code = status;
                }
                eprintln!(
                    "{}: {message}",
                    if status == EXIT_OK { "note" } else { "error" }
                );
                Some(Err(message))
            }
        }
    } else {
        None
    };
    if args.format == "json" {
        let mut document = serde_json::to_value(&view).expect("the view serialises");
        match &klaviyo {
            Some(Ok(found)) => document["klaviyo"] = json!(found),
            Some(Err(message)) => {
                document["klaviyo"] = serde_json::Value::Null;
                document["klaviyo_error"] = json!(message);
            }
            None => {}
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&document).expect("JSON serialises")
        );
    } else {
        print!("{}", human(&view, klaviyo.as_ref()));
    }
    code
}

/// What Klaviyo holds, or the exit code and why not (0 for a missing key: the local history
/// is still the answer).
fn read_klaviyo(
    args: &Args,
    engine: &marketsync::engine::Engine,
    view: &CustomerView,
) -> Result<KlaviyoView, (u8, String)> {
    let variable = engine
        .settings()
        .klaviyo_api_key_env
        .as_deref()
        .unwrap_or("KLAVIYO_API_KEY");
    let Some(key) = std::env::var(variable)
        .ok()
        .filter(|k| !k.trim().is_empty())
    else {
        return Err((
            EXIT_OK,
            format!(
                "no Klaviyo key is configured (set {variable}): showing the local history only"
            ),
        ));
    };
    let key = ApiKey::checked(key.trim()).map_err(|problem| {
        (
            EXIT_USAGE,
            format!("{variable} {problem} (the key is not printed)"),
        )
    })?;
    http::check_base_url(&args.klaviyo_url).map_err(|problem| {
        (
            EXIT_USAGE,
            format!("--klaviyo-url (or KLAVIYO_BASE_URL) {problem}"),
        )
    })?;
    let client = http::Client::new(
        &args.klaviyo_url,
        key,
        marketsync::sink::REVISION,
        Duration::from_secs(30),
    );
    let reader = Reader::new(client, ReadOptions::default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| (EXIT_IO, err.to_string()))?;
    runtime
        .block_on(klaviyo_read::read(&reader, view))
        .map_err(|err| match err {
            ReadError::KeyRefused { .. } => (EXIT_KEY_REFUSED, err.to_string()),
            _ => (EXIT_IO, err.to_string()),
        })
}

/// The view as a CX agent reads it.
fn human(view: &CustomerView, klaviyo: Option<&Result<KlaviyoView, String>>) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let lookup = view.lookup.value();
    if !view.found {
        let _ = writeln!(
            out,
            "no delivery concerned {lookup}: Marketplacer has told us nothing about this person \
             (check the spelling, or try their phone number)"
        );
    } else {
        let _ = writeln!(out, "person: {lookup}");
        let list = |items: &[String]| {
            if items.is_empty() {
                "none".to_owned()
            } else {
                items.join(", ")
            }
        };
        let _ = writeln!(out, "  emails:       {}", list(&view.identity.emails));
        let _ = writeln!(out, "  phones:       {}", list(&view.identity.phones));
        let _ = writeln!(out, "  marketplaces: {}", list(&view.identity.marketplaces));
        let _ = writeln!(out, "\ntimeline (newest first):");
        for entry in &view.timeline {
            let _ = writeln!(
                out,
                "{}  {}  {} ({})  order {}",
                entry.received_at,
                entry.marketplace,
                entry.typename,
                entry.event,
                entry.order.as_deref().unwrap_or("?")
            );
            for request in &entry.requests {
                let key = request
                    .key
                    .as_deref()
                    .map(|k| format!(" [{k}]"))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "    {:<18} {:<28} {}{key}",
                    request.what,
                    request.status.label(),
                    request.detail
                );
                for exception in &request.exceptions {
                    let _ = writeln!(out, "      exception: {exception}");
                }
            }
            if entry.requests.is_empty() && entry.failures.is_empty() {
                let _ = writeln!(out, "    nothing to send for this delivery");
            }
            for failure in &entry.failures {
                let _ = writeln!(out, "    mapping failed: {failure}");
            }
            for warning in &entry.warnings {
                let _ = writeln!(out, "    warning: {warning}");
            }
        }
        if view.older_left_out {
            let _ = writeln!(
                out,
                "  (older deliveries left out: only the newest {} are shown)",
                customer::DELIVERY_LIMIT
            );
        }
        let _ = writeln!(out, "\nconsent (initial email opt-in):");
        if view.consent.is_empty() {
            let _ = writeln!(out, "  no order of theirs was read by a consent mapping");
        }
        for evidence in &view.consent {
            let sent = match (&evidence.consent, &evidence.consented_at) {
                (Some(consent), Some(at)) => format!(" {consent}, consented_at {at};"),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "  {} order {}: {}{sent} {}; the order carried: {}",
                evidence.marketplace,
                evidence.order.as_deref().unwrap_or("?"),
                evidence.outcome.replace('-', " "),
                evidence.why,
                evidence.evidence
            );
        }
        for (title, items) in [
            ("open dead letters", &view.open_dead_letters),
            ("open exceptions", &view.open_exceptions),
            ("warnings", &view.warnings),
        ] {
            if items.is_empty() {
                let _ = writeln!(out, "{title}: none");
            } else {
                let _ = writeln!(out, "{title}:");
                for item in items {
                    let _ = writeln!(out, "  {item}");
                }
            }
        }
    }
    if view.index_incomplete {
        let _ = writeln!(
            out,
            "note: the state file is still being indexed; older history may be missing"
        );
    }
    match klaviyo {
        None => {}
        Some(Err(message)) => {
            let _ = writeln!(out, "\nklaviyo: not read ({message})");
        }
        Some(Ok(klaviyo)) => {
            let _ = writeln!(out, "\nklaviyo now:");
            if klaviyo.profiles.is_empty() {
                let _ = writeln!(out, "  no profile");
            }
            for profile in &klaviyo.profiles {
                let _ = writeln!(
                    out,
                    "  profile {} ({}{})",
                    profile.id,
                    profile.email.as_deref().unwrap_or("no email"),
                    profile
                        .phone_number
                        .as_deref()
                        .map(|p| format!(", {p}"))
                        .unwrap_or_default()
                );
                let _ = writeln!(
                    out,
                    "    email marketing: {}{}{}",
                    profile.email_consent.as_deref().unwrap_or("unknown"),
                    profile
                        .consent_timestamp
                        .as_deref()
                        .map(|t| format!(" since {t}"))
                        .unwrap_or_default(),
                    match profile.can_receive_email_marketing {
                        Some(false) => ", cannot receive email marketing",
                        _ => "",
                    }
                );
                for suppression in &profile.suppressions {
                    let _ = writeln!(out, "    suppressed: {suppression}");
                }
                for (name, value) in &profile.properties_we_own {
                    let _ = writeln!(out, "    {name}: {value}");
                }
            }
            for event in &klaviyo.events {
                let _ = writeln!(
                    out,
                    "  event {}  {}  order {}",
                    event.datetime.as_deref().unwrap_or("?"),
                    event.metric.as_deref().unwrap_or("?"),
                    event.order.as_deref().unwrap_or("?")
                );
            }
            if klaviyo.disagreements.is_empty() {
                let _ = writeln!(out, "  agrees with the history above");
            } else {
                let _ = writeln!(out, "  disagrees:");
                for disagreement in &klaviyo.disagreements {
                    let _ = writeln!(out, "  ! {disagreement}");
                }
            }
        }
    }
    // A queued request is the answer to "why didn't I get it yet?": say so once at the end.
    let waiting = view
        .timeline
        .iter()
        .flat_map(|e| &e.requests)
        .filter(|r| r.status == RequestStatus::Queued)
        .count();
    if waiting > 0 {
        let _ = writeln!(out, "{waiting} request(s) still waiting to be sent");
    }
    out
}
