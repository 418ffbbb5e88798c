//! One module per group of commands; [`dispatch`] runs the one asked for.

mod auth;
mod init;
mod secrets;
mod sharing;
mod transfer;

use std::io::{self, BufRead as _, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};

use clap::CommandFactory as _;
use secrecy::SecretString;

use crate::cli::{Cli, Command, Global};
use crate::config::{Overrides, Settings, Target};
use crate::credentials::{Credentials, normalize_server};
use crate::error::{CliError, Exit};
use crate::output::Output;
use crate::session::{Session, env_token};
use crate::{files, run};

/// What every command works with: the settings, the output, the configuration directory.
#[derive(Debug)]
pub struct Context {
    pub settings: Settings,
    pub out: Output,
    /// `None` when it cannot be told (no home directory): only commands that need it fail.
    config_dir: Option<PathBuf>,
    pub cwd: PathBuf,
}

impl Context {
    fn new(global: &Global) -> Result<Self, CliError> {
        let cwd = std::env::current_dir()
            .map_err(|e| CliError::Other(format!("cannot tell the working directory: {e}")))?;
        let overrides = Overrides {
            server: global.server.clone(),
            org: global.org.clone(),
            project: global.project.clone(),
            env: global.env.clone(),
        };
        Ok(Self {
            settings: Settings::resolve(overrides, &cwd)?,
            out: Output::new(global.json),
            config_dir: files::config_dir().ok(),
            cwd,
        })
    }

    /// Where credentials and keys are kept.
    pub fn config_dir(&self) -> Result<&Path, CliError> {
        self.config_dir.as_deref().ok_or_else(files::no_config_dir)
    }

    /// The server (normalised): the settings', else the last one logged in to.
    pub fn server(&self) -> Result<String, CliError> {
        if let Some(server) = &self.settings.server {
            return normalize_server(server);
        }
        Credentials::in_dir(self.config_dir()?)
            .load()?
            .default_server
            .ok_or_else(|| {
                CliError::usage(
                    "no server: pass --server URL, set COFFER_SERVER_URL, or run `coffer init --server URL`",
                )
            })
    }

    /// An authenticated session with the server.
    pub fn session(&self) -> Result<Session, CliError> {
        let server = self.server()?;
        // COFFER_TOKEN needs no configuration directory.
        let dir = match env_token() {
            Some(_) => self.config_dir.as_deref().unwrap_or(Path::new("")),
            None => self.config_dir()?,
        };
        Session::open(&server, dir)
    }

    /// The organization, project and environment.
    pub fn target(&self) -> Result<Target, CliError> {
        self.settings.target()
    }
}

/// Runs the command; its exit code, or the error it ended with.
pub async fn dispatch(cli: Cli) -> Result<u8, CliError> {
    if let Command::Completions(args) = &cli.command {
        let mut command = Cli::command();
        clap_complete::generate(args.shell, &mut command, "coffer", &mut io::stdout().lock());
        return Ok(Exit::Ok.code());
    }
    let ctx = Context::new(&cli.global)?;
    match cli.command {
        Command::Login(args) => auth::login(&ctx, args).await?,
        Command::Logout => auth::logout(&ctx).await?,
        Command::Whoami => auth::whoami(&ctx).await?,
        Command::Init(args) => init::init(&ctx, &args)?,
        Command::Secrets(command) => secrets::run(&ctx, command).await?,
        Command::Export(args) => transfer::export(&ctx, args).await?,
        Command::Import(args) => transfer::import(&ctx, args).await?,
        Command::Compare(args) => sharing::compare(&ctx, args).await?,
        Command::Copy(args) => sharing::copy(&ctx, args).await?,
        Command::Run(args) => return run::run(&ctx, args).await,
        Command::Completions(_) => {}
    }
    Ok(Exit::Ok.code())
}

/// stdin is a terminal: prompts are possible.
pub fn interactive() -> bool {
    io::stdin().is_terminal()
}

/// A line typed at a prompt (on stderr), without its newline.
pub fn prompt(question: &str) -> Result<String, CliError> {
    let mut err = io::stderr().lock();
    let _ = write!(err, "{question}");
    let _ = err.flush();
    drop(err);
    let mut line = String::new();
    io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::Other(format!("cannot read stdin: {e}")))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// A secret typed at a prompt without echo, or the first line of stdin when it is not a
/// terminal.
pub fn read_secret_line(question: &str) -> Result<SecretString, CliError> {
    let line = if interactive() {
        rpassword::prompt_password(question)
            .map_err(|e| CliError::Other(format!("cannot read from the terminal: {e}")))?
    } else {
        let mut line = String::new();
        io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| CliError::Other(format!("cannot read stdin: {e}")))?;
        line
    };
    let line = zeroize::Zeroizing::new(line);
    Ok(SecretString::from(
        line.trim_end_matches(['\r', '\n']).to_owned(),
    ))
}

/// A yes/no question on a terminal (default no).
pub fn confirm(question: &str) -> Result<bool, CliError> {
    let answer = prompt(&format!("{question} [y/N] "))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}
