//! `marketsync dead`: the dead letters an operator works through — list them, look at one,
//! discard what will never go.

use super::review::{Since, age, concerns, iso, json_or_text, one_line, parse_since};
use super::{EXIT_IO, EXIT_OK, EXIT_REJECTED, StateArgs};
use marketsync::sink::now_ms;
use marketsync::store::{DeadLetter, Filter, Store, StoreError};
use serde_json::{Value as Json, json};

/// Work through dead letters: list, show, discard. `retry` requeues them.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: DeadCommand,
}

#[derive(clap::Subcommand)]
enum DeadCommand {
    /// One line per open letter: id, age, category, mapping, what it concerns, Klaviyo's reason.
    #[command(after_help = "Examples:
  marketsync dead list
  marketsync dead list --category invalid --since 24h
  marketsync dead list --mapping placed-order --since 2026-03-13T00:00:00Z --format json")]
    List {
        #[command(flatten)]
        state: StateArgs,
        #[command(flatten)]
        filter: FilterArgs,
        /// `human` or `json`.
        #[arg(long, value_name = "FORMAT", default_value = "human", value_parser = ["human", "json"])]
        format: String,
    },
    /// A letter in full: the delivery as stored, the request body, every attempt.
    #[command(after_help = "Examples:
  marketsync dead show 42
  marketsync dead show 42 --format json")]
    Show {
        #[command(flatten)]
        state: StateArgs,
        /// The letter's id (the first column of `dead list`).
        id: i64,
        /// `human` or `json`.
        #[arg(long, value_name = "FORMAT", default_value = "human", value_parser = ["human", "json"])]
        format: String,
    },
    /// Give up on letters: each is kept with the reason and the time, and leaves the open count
    /// (`status`) and what `retry` takes.
    #[command(after_help = "Examples:
  marketsync dead discard 42 43 --reason \"test orders from the staging store\"
  marketsync dead discard --category duplicate-profile --mapping customer-profile \\
      --reason \"merged by hand in Klaviyo\"

All or nothing: if one id does not exist or is not open, none is discarded (exit 1).")]
    Discard {
        #[command(flatten)]
        state: StateArgs,
        /// Letter ids; or choose them with --category (and --mapping).
        #[arg(required_unless_present = "category", conflicts_with = "category")]
        ids: Vec<i64>,
        /// Every open letter of this category.
        #[arg(long, value_name = "C")]
        category: Option<String>,
        /// With --category: only letters of this mapping.
        #[arg(long, value_name = "M", requires = "category")]
        mapping: Option<String>,
        /// Why they are given up on: kept with each letter.
        #[arg(long, value_name = "TEXT", required = true)]
        reason: String,
    },
}

/// `--category`, `--mapping`, `--since`.
#[derive(clap::Args)]
pub struct FilterArgs {
    /// Only this category (`invalid`, `retries-exhausted`, `mapping:missing-field`, ...).
    #[arg(long, value_name = "C")]
    category: Option<String>,
    /// Only this mapping.
    #[arg(long, value_name = "M")]
    mapping: Option<String>,
    /// Only those written since: an RFC 3339 time or a duration back from now (24h, 7d).
    #[arg(long, value_name = "T", value_parser = parse_since)]
    since: Option<Since>,
}

impl FilterArgs {
    pub fn filter(&self, now: i64) -> Filter<'_> {
        Filter {
            category: self.category.as_deref(),
            mapping: self.mapping.as_deref(),
            since: self.since.map(|s| s.start(now)),
        }
    }
}

pub fn execute(args: Args) -> u8 {
    match args.command {
        DeadCommand::List {
            state,
            filter,
            format,
        } => list(&state, &filter, &format),
        DeadCommand::Show { state, id, format } => show(&state, id, &format),
        DeadCommand::Discard {
            state,
            ids,
            category,
            mapping,
            reason,
        } => discard(
            &state,
            ids,
            category.as_deref(),
            mapping.as_deref(),
            &reason,
        ),
    }
}

/// A store error as the exit code: a wrong id is the operator's (1), anything else the
/// store's (4).
pub fn report(err: &StoreError) -> u8 {
    eprintln!("error: {err}");
    match err {
        StoreError::NotFound { .. }
        | StoreError::AlreadyResolved { .. }
        | StoreError::AlreadyDiscarded { .. }
        | StoreError::ExceptionResolved { .. }
        | StoreError::ReadBackNotFound { .. }
        | StoreError::ReadBackResolved { .. } => EXIT_REJECTED,
        _ => EXIT_IO,
    }
}

fn list(state: &StateArgs, filter: &FilterArgs, format: &str) -> u8 {
    let store = match state.open_existing() {
        Ok(store) => store,
        Err(code) => return code,
    };
    let now = now_ms();
    let letters = match store.open_dead_letters(&filter.filter(now)) {
        Ok(letters) => letters,
        Err(err) => return report(&err),
    };
    if format == "json" {
        let rows: Vec<Json> = letters.iter().map(|l| summary_json(l, now)).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).expect("serialises")
        );
        return EXIT_OK;
    }
    if !letters.is_empty() {
        println!(
            "{:>6}  {:>4}  {:<24} {:<20} {:<36} REASON",
            "ID", "AGE", "CATEGORY", "MAPPING", "CONCERNS"
        );
    }
    for letter in &letters {
        println!(
            "{:>6}  {:>4}  {:<24} {:<20} {:<36} {}",
            letter.id,
            age(now - letter.created_at),
            letter.category,
            letter.mapping.as_deref().unwrap_or("-"),
            one_line(&letter_concerns(letter), 36),
            one_line(&letter.reason, 200)
        );
    }
    eprintln!("{} open dead letter(s)", letters.len());
    EXIT_OK
}

fn letter_concerns(letter: &DeadLetter) -> String {
    let body = letter.request.as_ref().map(|(_, body)| body.as_str());
    concerns(body, &letter.text)
        .or_else(|| {
            letter
                .delivery
                .as_ref()
                .map(|(_, id)| format!("delivery {id}"))
        })
        .unwrap_or_else(|| letter.origin.clone())
}

fn summary_json(letter: &DeadLetter, now: i64) -> Json {
    json!({
        "id": letter.id,
        "category": letter.category,
        "mapping": letter.mapping,
        "concerns": letter_concerns(letter),
        "reason": letter.reason,
        "created_at": iso(letter.created_at),
        "age_seconds": (now - letter.created_at) / 1000,
        "marketplace": letter.delivery.as_ref().map(|d| &d.0),
        "delivery_id": letter.delivery.as_ref().map(|d| &d.1),
        "origin": letter.origin,
    })
}

fn show(state: &StateArgs, id: i64, format: &str) -> u8 {
    let store = match state.open_existing() {
        Ok(store) => store,
        Err(code) => return code,
    };
    let shown = store.find_dead_letter(id).and_then(|letter| {
        let attempts = match letter.outbox_id {
            Some(outbox_id) => store.attempts(outbox_id)?,
            None => Vec::new(),
        };
        Ok((letter, attempts))
    });
    let (letter, attempts) = match shown {
        Ok(shown) => shown,
        Err(err) => return report(&err),
    };
    let now = now_ms();
    if format == "json" {
        let mut out = summary_json(&letter, now);
        out["state"] = json!(state_word(&letter));
        out["closed_at"] = json!(letter.closed.as_ref().map(|c| iso(c.at)));
        out["discard_reason"] = json!(letter.closed.as_ref().and_then(|c| c.reason.clone()));
        out["details"] = letter.details.clone();
        out["request"] = match &letter.request {
            Some((endpoint, body)) => json!({"endpoint": endpoint, "body": json_or_text(body)}),
            None => Json::Null,
        };
        out["attempts"] = attempts
            .iter()
            .map(|a| json!({"at": iso(a.at), "status": a.status, "answer": a.answer}))
            .collect();
        out["delivery"] = json_or_text(&letter.text);
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("serialises")
        );
        return EXIT_OK;
    }
    println!("dead letter {} ({})", letter.id, state_word(&letter));
    if let Some(closed) = &letter.closed {
        match &closed.reason {
            Some(reason) => println!("discarded: {} — {reason}", iso(closed.at)),
            None => println!("requeued:  {}", iso(closed.at)),
        }
    }
    println!("category:  {}", letter.category);
    println!("mapping:   {}", letter.mapping.as_deref().unwrap_or("-"));
    println!("concerns:  {}", letter_concerns(&letter));
    println!("reason:    {}", letter.reason);
    println!(
        "written:   {} ({} ago)",
        iso(letter.created_at),
        age(now - letter.created_at)
    );
    match &letter.delivery {
        Some((marketplace, id)) => {
            println!("delivery:  {marketplace} {id}, read from {}", letter.origin)
        }
        None => println!(
            "delivery:  none (an unreadable line from {})",
            letter.origin
        ),
    }
    if letter.details.as_object().is_some_and(|d| !d.is_empty()) {
        println!("details:   {}", letter.details);
    }
    match &letter.request {
        Some((endpoint, body)) => {
            println!("\nrequest: POST {endpoint}");
            print_indented(&pretty(body));
        }
        None => println!("\nrequest: none (the mapping failed before a request was made)"),
    }
    println!(
        "\nattempts:{}",
        if attempts.is_empty() {
            " none recorded"
        } else {
            ""
        }
    );
    for attempt in &attempts {
        let status = attempt.status.map_or("-".to_owned(), |s| s.to_string());
        println!("  {}  {status:>3}  {}", iso(attempt.at), attempt.answer);
    }
    println!("\ndelivery as stored:");
    print_indented(&pretty(&letter.text));
    EXIT_OK
}

fn state_word(letter: &DeadLetter) -> &'static str {
    match &letter.closed {
        None => "open",
        Some(closed) if closed.reason.is_some() => "discarded",
        Some(_) => "requeued",
    }
}

/// Stored JSON text pretty-printed, or as it is.
pub fn pretty(text: &str) -> String {
    serde_json::from_str::<Json>(text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| text.to_owned())
}

pub fn print_indented(text: &str) {
    for line in text.lines() {
        println!("  {line}");
    }
}

fn discard(
    state: &StateArgs,
    ids: Vec<i64>,
    category: Option<&str>,
    mapping: Option<&str>,
    reason: &str,
) -> u8 {
    if reason.trim().is_empty() {
        eprintln!("error: --reason must say why the letters are discarded");
        return super::EXIT_USAGE;
    }
    let mut store = match state.open_existing() {
        Ok(store) => store,
        Err(code) => return code,
    };
    let ids = match category {
        Some(category) => match chosen(&store, category, mapping) {
            Ok(ids) => ids,
            Err(err) => return report(&err),
        },
        None => ids,
    };
    if ids.is_empty() {
        eprintln!("no open dead letters match; nothing discarded");
        return EXIT_OK;
    }
    match store.discard(&ids, reason, now_ms()) {
        Ok(()) => {
            let shown: Vec<String> = ids.iter().map(i64::to_string).collect();
            eprintln!(
                "{} dead letter(s) discarded: {}",
                ids.len(),
                shown.join(", ")
            );
            EXIT_OK
        }
        Err(err) => {
            let code = report(&err);
            eprintln!("nothing was discarded");
            code
        }
    }
}

fn chosen(store: &Store, category: &str, mapping: Option<&str>) -> Result<Vec<i64>, StoreError> {
    let filter = Filter {
        category: Some(category),
        mapping,
        since: None,
    };
    Ok(store
        .open_dead_letters(&filter)?
        .iter()
        .map(|l| l.id)
        .collect())
}
