//! The `marketsync` command: a thin shell that wires the library's parts together, renders
//! errors for people and maps every outcome to a documented exit code.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
