//! `marketsync queries`: the webhook queries to paste into Marketplacer, and whether a
//! webhook registered there still selects everything the mappings read.

use super::{EXIT_BAD_MAPPINGS, EXIT_IO, EXIT_OK, EXIT_REJECTED, MappingArgs};
use marketsync::diagnostic::Diagnostic;
use marketsync::queries::backfill::backfill_query;
use marketsync::queries::reconcile::reconcile_queries;
use marketsync::queries::{QuerySet, live};
use std::path::PathBuf;
use std::sync::Arc;

/// Print the effective webhook query of each record type, ready to paste into Marketplacer.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  marketsync queries                       # the queries of ./queries, else the built-in ones
  marketsync queries --client acme         # with clients/acme/queries/ merged in
  marketsync queries --type Invoice        # one webhook's query
  marketsync queries --check-live live.graphql   # what a registered query lacks
  marketsync queries --backfill            # the backfill query, from the same selections
  marketsync queries --reconcile           # the queries `reconcile` pages through

The queries are queries/ beside the mapping folder (chosen as for validate: --mappings,
$MARKETSYNC_MAPPINGS, ./mappings, else the built-in set), else the built-in queries; a client's
clients/NAME/queries/ are merged into them field by field.

--check-live FILE compares with a query copied back from a Marketplacer instance (GraphQL), or
with the `query` field of each webhook in a JSON export of its webhooks, and exits 1 if a field
of the effective query is missing there.")]
pub struct Args {
    #[command(flatten)]
    mappings: MappingArgs,
    /// Only the query of this record type (`Invoice`, `Shipment`, `RefundRequest`).
    #[arg(long = "type", value_name = "TYPE")]
    record_type: Option<String>,
    /// A live query (GraphQL, or a JSON export of webhooks with `query` fields) to compare with.
    #[arg(long, value_name = "FILE", conflicts_with = "backfill")]
    check_live: Option<PathBuf>,
    /// Print the backfill query instead: `updatedOrders` selecting, on each order, invoice,
    /// shipment and refund request, what the webhook queries select there.
    #[arg(long, conflicts_with = "record_type")]
    backfill: bool,
    /// Print the reconciliation queries instead: the operator's webhooks, invoices updated or
    /// paid in a window (with their shipments and refund requests), refund requests refunded
    /// and invoice amendments created in it, each selecting what the webhook queries select.
    #[arg(long, conflicts_with_all = ["record_type", "backfill", "check_live"])]
    reconcile: bool,
}

pub fn execute(args: Args) -> u8 {
    let set = args.mappings.load_set();
    let queries = &set.queries;
    // Only problems in the query files stop this command: the mappings are validate's job.
    let in_queries = |d: &&Diagnostic| queries.files.iter().any(|f| Arc::ptr_eq(f, &d.file));
    let problems: Vec<&Diagnostic> = set.diagnostics.iter().filter(in_queries).collect();
    for d in &problems {
        eprintln!("{d:#}\n");
    }
    if problems.iter().any(|d| d.is_error()) {
        eprintln!("failed: the queries have errors (see above); nothing printed");
        return EXIT_BAD_MAPPINGS;
    }
    if let Some(name) = &args.record_type
        && queries.query(name).is_none()
    {
        let known: Vec<&str> = queries.queries.keys().map(String::as_str).collect();
        eprintln!(
            "error: no query reads `{name}`; the queries read {}",
            known.join(", ")
        );
        return EXIT_REJECTED;
    }
    if args.backfill {
        let (query, conflicts) = backfill_query(queries);
        for conflict in &conflicts {
            eprintln!("{:#}\n", queries.diagnostic(conflict));
        }
        if !conflicts.is_empty() {
            eprintln!("failed: the webhook queries select one key as different fields");
            return EXIT_BAD_MAPPINGS;
        }
        println!("# The backfill: POST it to Marketplacer's GraphQL API, page by page.");
        print!("{}", query.render());
        return EXIT_OK;
    }
    if args.reconcile {
        let page_size = set
            .settings
            .as_ref()
            .and_then(|s| s.spec.marketplacer.as_ref())
            .map_or(marketsync::marketplacer::MAX_PAGE_SIZE, |m| m.page_size);
        let (queries, conflicts) = reconcile_queries(queries, page_size);
        for conflict in &conflicts {
            eprintln!("{:#}\n", set.queries.diagnostic(conflict));
        }
        if !conflicts.is_empty() {
            eprintln!("failed: the webhook queries select one key as different fields");
            return EXIT_BAD_MAPPINGS;
        }
        for (index, (step, query)) in queries.iter().enumerate() {
            if index > 0 {
                println!();
            }
            let window = if step.windowed() {
                " ($since, $until: the window)"
            } else {
                ""
            };
            println!(
                "# {}: `marketsync reconcile` pages through it{window}.",
                step.name()
            );
            print!("{}", query.render());
        }
        return EXIT_OK;
    }
    match &args.check_live {
        Some(file) => check_live(queries, file, args.record_type.as_deref()),
        None => {
            print_queries(queries, args.record_type.as_deref());
            EXIT_OK
        }
    }
}

fn print_queries(queries: &QuerySet, only: Option<&str>) {
    let mut first = true;
    for (type_name, query) in &queries.queries {
        if only.is_some_and(|o| o != type_name) {
            continue;
        }
        if !first {
            println!();
        }
        first = false;
        println!(
            "# The {type_name} webhook ({}); paste into its query.",
            queries.file_of(query).name
        );
        print!("{}", query.render());
    }
}

fn check_live(queries: &QuerySet, file: &PathBuf, only: Option<&str>) -> u8 {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", file.display());
            return EXIT_IO;
        }
    };
    let found = match live::parse(&file.display().to_string(), &text) {
        Ok(found) => found,
        Err(why) => {
            eprintln!("error: {}: {why}", file.display());
            return EXIT_REJECTED;
        }
    };
    let mut missing_any = false;
    for (type_name, query) in &queries.queries {
        if only.is_some_and(|o| o != type_name) {
            continue;
        }
        let Some(registered) = found.queries.query(type_name) else {
            if only.is_some() || found.export {
                println!("{type_name}: {} has no {type_name} query", file.display());
                missing_any = true;
            }
            continue;
        };
        let missing = live::missing(&query.record(), &registered.record());
        if missing.is_empty() {
            println!("{type_name}: the live query selects every field of the effective one");
            continue;
        }
        missing_any = true;
        println!(
            "{type_name}: the live query lacks {} field(s) the effective one selects:",
            missing.len()
        );
        for field in missing {
            println!("  {}", field.join(" > "));
        }
    }
    for type_name in found.queries.queries.keys() {
        if queries.query(type_name).is_none() {
            println!("{type_name}: no query here reads it (nothing compared)");
        }
    }
    if missing_any {
        eprintln!(
            "failed: paste the output of `marketsync queries` into the webhook's query in Marketplacer"
        );
        EXIT_REJECTED
    } else {
        EXIT_OK
    }
}
