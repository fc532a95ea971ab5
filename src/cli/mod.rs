//! Command-line parsing, exit codes, and the wiring of each command.
//!
//! Exit codes are part of the interface (CI scripts branch on them), so each outcome has one
//! constant here and the README lists them.

mod config;
mod customer;
mod dead;
mod exceptions;
mod explain;
mod init;
mod queries;
mod reconcile;
mod replay;
mod report;
mod retry;
mod review;
mod run;
mod schemas;
mod serve;
mod standin;
mod status;
mod test;
mod validate;
mod warnings;

use clap::{Parser, Subcommand};
use marketsync::diagnostic::Diagnostics;
use marketsync::engine::Engine;
use std::path::PathBuf;
use std::process::ExitCode;

/// Everything worked.
pub const EXIT_OK: u8 = 0;
/// `run`: at least one delivery or mapping was rejected. `validate`: problems were found.
/// `reconcile`: something was missing (repairs queued) or wrong (a webhook disabled).
/// `explain`: the mapping did not match, was rejected or produced no request. `dead`,
/// `exceptions`: an id does not exist or is closed already (and nothing was changed).
/// `customer`: no delivery concerned the person.
pub const EXIT_REJECTED: u8 = 1;
/// The command line was wrong (clap's own code).
pub const EXIT_USAGE: u8 = 2;
/// The mappings did not load or compile, so nothing was mapped.
pub const EXIT_BAD_MAPPINGS: u8 = 3;
/// An input could not be opened or read (the others were still read), the output could not
/// be written, or the state store failed.
pub const EXIT_IO: u8 = 4;
/// Klaviyo (or, for `reconcile`, Marketplacer) refused the API key (401/403): the run stopped
/// at once, the queue (and a reconciliation's checkpoint) is intact.
pub const EXIT_KEY_REFUSED: u8 = 5;
/// `run`: Klaviyo was unavailable (an endpoint answered nothing but timeouts, 5xx or 429 for
/// the outage window); everything else was done, and the queue is kept for the next run.
/// `reconcile`: Marketplacer could not be reached or kept refusing; the checkpoint is kept.
pub const EXIT_UNAVAILABLE: u8 = 6;
/// `replay`: the receiver answered a redirect or a 4xx other than 429, for which Marketplacer
/// fails the delivery and disables the webhook; sending stopped there.
pub const EXIT_DISABLED: u8 = 7;
/// `reconcile`, `exceptions report`: an exception read back from Klaviyo of the compliance or
/// systemic tier is open (someone may be emailed without consent, or one cause is hurting many
/// orders): a person must act today. Distinct from 1, which repairs queued every run also give.
pub const EXIT_OPEN_EXCEPTIONS: u8 = 8;

#[derive(Parser)]
#[command(
    name = "marketsync",
    version,
    about = "Keeps Klaviyo in step with Marketplacer through YAML mapping specs",
    after_help = "Exit codes: 0 ok, 1 records rejected (run), problems found (validate), no \
                  request (explain), an unknown or closed id (dead, exceptions), an unknown person \
                  (customer) or something missing or wrong (reconcile), \
                  2 usage error, 3 mappings do not load, 4 input, output or state error, \
                  5 Klaviyo (or Marketplacer) refused the API key, 6 Klaviyo unavailable (run; the \
                  queue is kept) or Marketplacer unreachable (reconcile; the checkpoint is kept), \
                  7 the receiver's answer would disable Marketplacer's webhook (replay), \
                  8 a compliance or systemic exception read back from Klaviyo is open \
                  (reconcile, exceptions report)."
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
    Serve(serve::Args),
    Explain(explain::Args),
    Queries(queries::Args),
    Reconcile(reconcile::Args),
    Status(status::Args),
    Retry(retry::Args),
    Dead(dead::Args),
    Exceptions(exceptions::Args),
    Warnings(warnings::Args),
    Schemas(schemas::Args),
    Standin(standin::Args),
    Replay(replay::Args),
    Customer(customer::Args),
}

/// Where mappings come from: a folder, or the default set built into the binary, with a
/// client's settings and overlays on top.
///
/// The base set is chosen in one place for every command, so what `validate` and `test` check
/// in CI is what `run` maps: `--mappings DIR`, else `MARKETSYNC_MAPPINGS`, else a `mappings/`
/// folder in the current directory when it holds specs, else the built-in defaults.
#[derive(clap::Args, Clone)]
struct MappingArgs {
    /// Mapping folder (YAML specs plus settings.yaml). Left out: $MARKETSYNC_MAPPINGS, else
    /// ./mappings when it holds specs, else the built-in defaults.
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

/// The variable naming the base mapping folder when `--mappings` is left out.
const MAPPINGS_ENV: &str = "MARKETSYNC_MAPPINGS";

/// The folder used as the base set when it holds specs and nothing else is named.
const MAPPINGS_HERE: &str = "mappings";

/// Which base set a command uses, and what chose it.
enum Base {
    Folder {
        dir: PathBuf,
        chosen_by: &'static str,
    },
    Builtin,
}

impl Base {
    fn dir(&self) -> Option<&std::path::Path> {
        match self {
            Base::Folder { dir, .. } => Some(dir),
            Base::Builtin => None,
        }
    }
}

/// The mapping set a command used, said once on stderr and carried in JSON output.
struct Chosen {
    base: Base,
    specs: usize,
    client: Option<PathBuf>,
}

impl Chosen {
    /// `mappings/ (7 specs)` or `built-in defaults (marketsync 0.1.0)`, then the client.
    fn describe(&self) -> String {
        let mut text = match &self.base {
            Base::Folder { dir, chosen_by } => {
                let mut name = dir.display().to_string();
                if !name.ends_with('/') {
                    name.push('/');
                }
                match *chosen_by {
                    "env" => format!("{name} ({} specs, from {MAPPINGS_ENV})", self.specs),
                    _ => format!("{name} ({} specs)", self.specs),
                }
            }
            Base::Builtin => format!(
                "built-in defaults (marketsync {})",
                env!("CARGO_PKG_VERSION")
            ),
        };
        if let Some(client) = &self.client {
            text.push_str(&format!(" + client {}", client.display()));
        }
        text
    }

    fn json(&self) -> serde_json::Value {
        let (base, chosen_by) = match &self.base {
            Base::Folder { dir, chosen_by } => (dir.display().to_string(), *chosen_by),
            Base::Builtin => ("built-in".to_owned(), "default"),
        };
        serde_json::json!({
            "base": base,
            "chosen_by": chosen_by,
            "specs": self.specs,
            "version": env!("CARGO_PKG_VERSION"),
            "client": self.client.as_ref().map(|c| c.display().to_string()),
        })
    }
}

/// Where the durable state lives.
#[derive(clap::Args, Clone)]
struct StateArgs {
    /// The state database (SQLite): inbox, outbox, ledger, dead letters.
    #[arg(long = "state", value_name = "PATH", default_value = "marketsync.db")]
    path: PathBuf,
}

/// A store open for writing: its writer lock, its checkpointer (none for a store in memory) and
/// the store, to be kept together for as long as the command writes.
type Checkpointed = (
    marketsync::store::lock::WriterLock,
    Option<marketsync::store::Checkpointer>,
    marketsync::store::Store,
);

impl StateArgs {
    /// Opens a store that must already exist (`status`, `retry`, `dead`, `exceptions`,
    /// `warnings`): a mistyped `--state` is reported, not answered with a new empty store that
    /// says all is well.
    fn open_existing(&self) -> Result<marketsync::store::Store, u8> {
        self.exists()?;
        self.open()
    }

    /// That the state file exists, or says so.
    fn exists(&self) -> Result<(), u8> {
        if !self.path.try_exists().unwrap_or(true) {
            eprintln!(
                "error: state database {}: no such file (a real `run` creates it; check --state)",
                self.path.display()
            );
            return Err(EXIT_IO);
        }
        Ok(())
    }

    /// Takes the state file's writer lock, for a command that writes to it (`run`, `retry`),
    /// before it opens the store; or says which process holds it. Never waits. Read-only
    /// commands do not take it.
    fn lock(&self) -> Result<marketsync::store::lock::WriterLock, u8> {
        self.try_lock().map_err(|message| {
            eprintln!("error: {message}");
            EXIT_IO
        })
    }

    /// [`StateArgs::lock`], with the message for the caller to say (`serve` logs it).
    fn try_lock(&self) -> Result<marketsync::store::lock::WriterLock, String> {
        marketsync::store::lock::WriterLock::acquire(&self.path).map_err(|err| {
            let hint = match err {
                marketsync::store::lock::LockError::Held { .. } => {
                    "; wait for it to finish, or stop it"
                }
                marketsync::store::lock::LockError::Io { .. } => "",
            };
            format!("state database {}: {err}{hint}", self.path.display())
        })
    }

    /// [`StateArgs::lock`], then [`StateArgs::open`]: a command that writes holds the lock from
    /// before the store is opened (which may migrate it) until the lock is dropped.
    fn lock_and_open(
        &self,
    ) -> Result<
        (
            marketsync::store::lock::WriterLock,
            marketsync::store::Store,
        ),
        u8,
    > {
        let lock = self.lock()?;
        Ok((lock, self.open()?))
    }

    /// [`StateArgs::lock_and_open`], with the store's checkpoints on a thread of their own
    /// (src/store/checkpoint.rs): for the commands that write many deliveries, where a
    /// checkpoint inside a commit holds up the one writer every other thread waits for.
    fn lock_and_open_checkpointed(&self) -> Result<Checkpointed, u8> {
        self.try_lock_and_open_checkpointed().map_err(|message| {
            eprintln!("error: {message}");
            EXIT_IO
        })
    }

    /// [`StateArgs::lock_and_open_checkpointed`], with the message for the caller to say
    /// (`serve` logs it).
    fn try_lock_and_open_checkpointed(&self) -> Result<Checkpointed, String> {
        let lock = self.try_lock()?;
        let mut store = self.try_open()?;
        let checkpointer = store
            .checkpoint_beside(marketsync::store::CheckpointLimits::default())
            .map_err(|err| format!("state database {}: {err}", self.path.display()))?;
        Ok((lock, checkpointer, store))
    }

    /// Opens (creating or migrating) the store, or reports why not.
    fn open(&self) -> Result<marketsync::store::Store, u8> {
        self.try_open().map_err(|message| {
            eprintln!("error: {message}");
            EXIT_IO
        })
    }

    /// [`StateArgs::open`], with the message for the caller to say.
    fn try_open(&self) -> Result<marketsync::store::Store, String> {
        marketsync::store::Store::open(&self.path)
            .map_err(|err| format!("state database {}: {err}", self.path.display()))
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
        Ok(with_marketplace(engine, marketplace))
    }

    /// The compiled mappings without a word on stderr, and which set they are: for `serve`,
    /// which logs both (or the problems) as events.
    fn load_quietly(&self, marketplace: Option<&String>) -> Result<(Engine, String), Diagnostics> {
        let (engine, _warnings) = Engine::compile(self.read_set())?;
        Ok((
            with_marketplace(engine, marketplace),
            self.chosen().describe(),
        ))
    }

    fn load(&self) -> Result<(Engine, Diagnostics), Diagnostics> {
        Engine::compile(self.load_set())
    }

    /// The mapping set as read, before it is compiled; says on stderr which set it is.
    fn load_set(&self) -> marketsync::spec::MappingSet {
        eprintln!("mappings: {}", self.chosen().describe());
        self.read_set()
    }

    /// [`MappingArgs::load_set`] without saying so, for a command that loads more than once.
    fn read_set(&self) -> marketsync::spec::MappingSet {
        let chosen = self.chosen();
        let base = chosen.base.dir();
        match &chosen.client {
            Some(client) => marketsync::spec::load_client(base, client),
            None => match base {
                Some(dir) => marketsync::spec::load_dir(dir),
                None => marketsync::spec::load_embedded(),
            },
        }
    }

    /// The base set (see [`MappingArgs`] for the order of choice) and the client.
    fn chosen(&self) -> Chosen {
        let from_env = || {
            std::env::var_os(MAPPINGS_ENV)
                .filter(|dir| !dir.is_empty())
                .map(PathBuf::from)
        };
        let here = PathBuf::from(MAPPINGS_HERE);
        let base = if let Some(dir) = &self.mappings {
            Base::Folder {
                dir: dir.clone(),
                chosen_by: "flag",
            }
        } else if let Some(dir) = from_env() {
            Base::Folder {
                dir,
                chosen_by: "env",
            }
        } else if here.is_dir() && marketsync::spec::count_specs(Some(&here)) > 0 {
            Base::Folder {
                dir: here,
                chosen_by: "current folder",
            }
        } else {
            Base::Builtin
        };
        Chosen {
            specs: marketsync::spec::count_specs(base.dir()),
            base,
            client: self.client.as_deref().map(|c| self.client_dir(c)),
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

fn with_marketplace(engine: Engine, marketplace: Option<&String>) -> Engine {
    match marketplace {
        Some(name) => engine.with_default_marketplace(name.clone()),
        None => engine,
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
        Command::Serve(args) => serve::execute(args),
        Command::Explain(args) => explain::execute(args),
        Command::Queries(args) => queries::execute(args),
        Command::Reconcile(args) => reconcile::execute(args),
        Command::Status(args) => status::execute(args),
        Command::Retry(args) => retry::execute(args),
        Command::Dead(args) => dead::execute(args),
        Command::Exceptions(args) => exceptions::execute(args),
        Command::Warnings(args) => warnings::execute(args),
        Command::Schemas(args) => schemas::execute(args),
        Command::Standin(args) => standin::execute(args),
        Command::Replay(args) => replay::execute(args),
        Command::Customer(args) => customer::execute(args),
    };
    ExitCode::from(code)
}
