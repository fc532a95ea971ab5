//! Command-line parsing, exit codes, and the wiring of each command.
//!
//! Exit codes are part of the interface (CI scripts branch on them), so each outcome has one
//! constant here and the README lists them.

mod config;
mod explain;
mod init;
mod report;
mod retry;
mod run;
mod schemas;
mod standin;
mod status;
mod test;
mod validate;

use clap::{Parser, Subcommand};
use marketsync::diagnostic::Diagnostics;
use marketsync::engine::Engine;
use std::path::PathBuf;
use std::process::ExitCode;

/// Everything worked.
pub const EXIT_OK: u8 = 0;
/// `run`: at least one delivery or mapping was rejected. `validate`: problems were found.
/// `explain`: the mapping did not match, was rejected or produced no request.
pub const EXIT_REJECTED: u8 = 1;
/// The command line was wrong (clap's own code).
pub const EXIT_USAGE: u8 = 2;
/// The mappings did not load or compile, so nothing was mapped.
pub const EXIT_BAD_MAPPINGS: u8 = 3;
/// An input could not be opened or read (the others were still read), the output could not
/// be written, or the state store failed.
pub const EXIT_IO: u8 = 4;
/// Klaviyo refused the API key (401/403): the run stopped at once, the queue is intact.
pub const EXIT_KEY_REFUSED: u8 = 5;

#[derive(Parser)]
#[command(
    name = "marketsync",
    version,
    about = "Keeps Klaviyo in step with Marketplacer through YAML mapping specs",
    after_help = "Exit codes: 0 ok, 1 records rejected (run), problems found (validate) or no \
                  request (explain), \
                  2 usage error, 3 mappings do not load, 4 input, output or state error, \
                  5 Klaviyo refused the API key."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Validate(validate::Args),
    Test(test::Args),
    Config(config::ConfigArgs),
    Diff(config::DiffArgs),
    Init(init::Args),
    Run(run::Args),
    Explain(explain::Args),
    Status(status::Args),
    Retry(retry::Args),
    Schemas(schemas::Args),
    Standin(standin::Args),
}

/// Where mappings come from: a folder, or the default set built into the binary, with a
/// client's settings and overlays on top.
#[derive(clap::Args, Clone)]
struct MappingArgs {
    /// Mapping folder (YAML specs plus settings.yaml); the built-in defaults when left out.
    #[arg(long, value_name = "DIR")]
    mappings: Option<PathBuf>,
    /// A client: `clients/NAME/client.yaml` and overlays in `clients/NAME/mappings/`, applied
    /// on top of the base mappings. A path to a client folder works too.
    #[arg(long, value_name = "NAME")]
    client: Option<String>,
    /// The folder holding client folders.
    #[arg(long, value_name = "DIR", default_value = "clients")]
    clients: PathBuf,
}

/// Where the durable state lives.
#[derive(clap::Args, Clone)]
struct StateArgs {
    /// The state database (SQLite): inbox, outbox, ledger, dead letters.
    #[arg(long = "state", value_name = "PATH", default_value = "marketsync.db")]
    path: PathBuf,
}

impl StateArgs {
    /// Opens (creating or migrating) the store, or reports why not.
    fn open(&self) -> Result<marketsync::store::Store, u8> {
        marketsync::store::Store::open(&self.path).map_err(|err| {
            eprintln!("error: state database {}: {err}", self.path.display());
            EXIT_IO
        })
    }
}

impl MappingArgs {
    /// The compiled mappings, or every problem printed and the exit code to return.
    fn load_or_report(&self) -> Result<Engine, u8> {
        self.load()
            .map(|(engine, _warnings)| engine)
            .map_err(|problems| report_unloadable(&problems))
    }

    /// [`MappingArgs::load_or_report`], with `--marketplace` (when given) as the marketplace of
    /// deliveries that name none.
    fn load_for_marketplace(&self, marketplace: Option<&String>) -> Result<Engine, u8> {
        let engine = self.load_or_report()?;
        Ok(match marketplace {
            Some(name) => engine.with_default_marketplace(name.clone()),
            None => engine,
        })
    }

    fn load(&self) -> Result<(Engine, Diagnostics), Diagnostics> {
        Engine::compile(self.load_set())
    }

    /// The mapping set as read, before it is compiled.
    fn load_set(&self) -> marketsync::spec::MappingSet {
        match (&self.client, &self.mappings) {
            (Some(client), base) => {
                marketsync::spec::load_client(base.as_deref(), &self.client_dir(client))
            }
            (None, Some(dir)) => marketsync::spec::load_dir(dir),
            (None, None) => marketsync::spec::load_embedded(),
        }
    }

    /// The client's folder: `NAME` inside `--clients`, or a path given as is.
    fn client_dir(&self, client: &str) -> PathBuf {
        let path = PathBuf::from(client);
        if path.components().count() > 1 {
            path
        } else {
            self.clients.join(client)
        }
    }
}

/// Prints why the mappings do not load, and gives the exit code for it.
fn report_unloadable(problems: &Diagnostics) -> u8 {
    for d in problems.iter() {
        eprintln!("{d:#}\n");
    }
    eprintln!("error: the mappings do not load; run `marketsync validate` for details");
    EXIT_BAD_MAPPINGS
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() {
                EXIT_USAGE
            } else {
                EXIT_OK
            });
        }
    };
    let code = match cli.command {
        Command::Validate(args) => validate::execute(args),
        Command::Test(args) => test::execute(args),
        Command::Config(args) => config::config(args),
        Command::Diff(args) => config::diff_clients(args),
        Command::Init(args) => init::execute(args),
        Command::Run(args) => run::execute(args),
        Command::Explain(args) => explain::execute(args),
        Command::Status(args) => status::execute(args),
        Command::Retry(args) => retry::execute(args),
        Command::Schemas(args) => schemas::execute(args),
        Command::Standin(args) => standin::execute(args),
    };
    ExitCode::from(code)
}
