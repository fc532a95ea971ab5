//! `marketsync retry`: dead letters back into the outbox, mapped again with today's mappings.

use super::{EXIT_IO, EXIT_OK, EXIT_REJECTED, MappingArgs, StateArgs};
use marketsync::sink::now_ms;
use marketsync::source::Record;
use marketsync::sync::queued;

/// Re-render dead letters from their stored deliveries with the current mappings and queue
/// the result; the next `run` sends it.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  marketsync retry                                   # every dead letter
  marketsync retry --category duplicate-profile
  marketsync retry --mapping profile --client acme

A letter whose delivery still fails to map stays a dead letter, with the new reason printed.
Like `run`, it holds the state file's lock (STATE.lock) and exits 4 if another process does.")]
pub struct Args {
    #[command(flatten)]
    state: StateArgs,
    #[command(flatten)]
    mappings: MappingArgs,
    /// Only letters of this category (`invalid`, `mapping:missing-field`, ...).
    #[arg(long, value_name = "C")]
    category: Option<String>,
    /// Only letters of this mapping.
    #[arg(long, value_name = "M")]
    mapping: Option<String>,
}

pub fn execute(args: Args) -> u8 {
    let engine = match args.mappings.load_or_report() {
        Ok(engine) => engine,
        Err(code) => return code,
    };
    // A writer: not while a run (or another retry) writes the same file.
    let _lock = match args.state.exists().and_then(|()| args.state.lock()) {
        Ok(lock) => lock,
        Err(code) => return code,
    };
    let mut store = match args.state.open() {
        Ok(store) => store,
        Err(code) => return code,
    };
    let letters = match store.dead_letters(args.category.as_deref(), args.mapping.as_deref()) {
        Ok(letters) => letters,
        Err(err) => {
            eprintln!("error: {err}");
            return EXIT_IO;
        }
    };
    let (mut requeued, mut still_failing) = (0, 0);
    for letter in &letters {
        let Ok(record) = serde_json::from_str::<Record>(&letter.text) else {
            eprintln!(
                "letter {} ({}): {} is not a stored record; left as it is",
                letter.id, letter.category, letter.origin
            );
            still_failing += 1;
            continue;
        };
        let mapped = engine.map(&record);
        // Only the letter's own mapping is re-rendered: the delivery's other requests went.
        let mine = |name: &str| letter.mapping.as_deref().is_none_or(|m| m == name);
        if let Some(error) = mapped.errors.iter().find(|e| mine(&e.mapping)) {
            eprintln!(
                "letter {} ({}): still fails: {error}",
                letter.id, letter.category
            );
            still_failing += 1;
            continue;
        }
        let requests: Vec<_> = mapped
            .requests
            .iter()
            .filter(|r| mine(&r.mapping))
            .map(queued)
            .collect();
        let mut people: Vec<String> = Vec::new();
        for person in requests
            .iter()
            .flat_map(|r| marketsync::klaviyo::people_in_text(&r.body))
        {
            if !people.contains(&person) {
                people.push(person);
            }
        }
        match store.requeue_concerning(letter.id, &requests, &people, now_ms()) {
            Ok(outcome) => {
                requeued += 1;
                eprintln!(
                    "letter {} ({}): {} request(s) queued",
                    letter.id, letter.category, outcome.queued
                );
            }
            Err(err) => {
                eprintln!("error: letter {}: {err}", letter.id);
                return EXIT_IO;
            }
        }
    }
    eprintln!(
        "{requeued} dead letter(s) requeued, {still_failing} still failing; run `marketsync run` to send"
    );
    if still_failing > 0 {
        EXIT_REJECTED
    } else {
        EXIT_OK
    }
}
