//! coffer-cli: the `coffer` command-line tool of the Coffer secrets manager, on top of
//! coffer-client.
//!
//! [`main`] parses the command line ([`cli`]), finds where the command works ([`config`]: flags
//! over environment variables over `.coffer.toml`), authenticates ([`session`], with the
//! [`credentials`] `coffer login` stores) and runs one of the [`commands`], which write through
//! [`output`] only. `coffer run` lives in [`run`].

pub mod cli;
pub mod commands;
pub mod config;
pub mod credentials;
pub mod error;
pub mod files;
pub mod output;
pub mod progress;
pub mod run;
pub mod session;

use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::Cli;
use crate::error::Exit;

/// Runs `coffer` with the process's arguments and returns its exit code (see
/// [`error::EXIT_CODES_HELP`]).
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version are "errors" that print to stdout and exit 0; usage errors 2.
        Err(e) => e.exit(),
    };
    let json = cli.global.json;
    // One thread is plenty for one request at a time, and starts fastest (`coffer run`).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            output::error(
                &format!("cannot start: {e}"),
                "error",
                Exit::General.code(),
                json,
            );
            return ExitCode::from(Exit::General.code());
        }
    };
    match runtime.block_on(commands::dispatch(cli)) {
        Ok(code) => ExitCode::from(code),
        // The reader of stdout went away (`coffer secrets list | head -1`): nothing to report.
        Err(error::CliError::Stdout(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::from(Exit::Ok.code())
        }
        Err(e) => {
            let exit = e.exit().code();
            output::error(&e.to_string(), e.code(), exit, json);
            ExitCode::from(exit)
        }
    }
}
