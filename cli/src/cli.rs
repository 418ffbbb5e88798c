//! The command line: every command, flag and environment variable, with its help.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use coffer_client::FileFormat;

use crate::error::EXIT_CODES_HELP;

/// coffer: the Coffer secrets manager from the command line.
#[derive(Debug, Parser)]
#[command(
    name = "coffer",
    version,
    about = "The Coffer secrets manager: log in, read and write secrets, run programs with them",
    after_help = EXIT_CODES_HELP,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes; each overrides its environment variable, which overrides
/// `.coffer.toml`.
#[derive(Debug, Args)]
pub struct Global {
    /// The server's URL [default: from .coffer.toml, else the server of the last login]
    #[arg(long, global = true, env = "COFFER_SERVER_URL", value_name = "URL")]
    pub server: Option<String>,
    /// The organization (slug)
    #[arg(long, global = true, env = "COFFER_ORG", value_name = "ORG")]
    pub org: Option<String>,
    /// The project (slug)
    #[arg(long, global = true, env = "COFFER_PROJECT", value_name = "PROJECT")]
    pub project: Option<String>,
    /// The environment (slug)
    #[arg(
        short = 'e',
        long = "env",
        global = true,
        env = "COFFER_ENVIRONMENT",
        value_name = "ENV"
    )]
    pub env: Option<String>,
    /// Write JSON (one document) instead of text; errors too, on stderr
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Log in with your email and password, or store a token (API key or service token)
    #[command(after_help = "\
Examples:
  coffer login --server https://coffer.example.com --email ann@example.com
  echo \"$PASSWORD\" | coffer login --email ann@example.com --password-stdin
  coffer login --token                 # prompts for it (or reads COFFER_TOKEN, or stdin)")]
    Login(LoginArgs),
    /// Log out: end the login session and forget the stored credentials of the server
    Logout,
    /// Show who you are logged in as, and where
    Whoami,
    /// Write .coffer.toml in this directory: the server, organization, project and default
    /// environment that commands run here (and below) use
    #[command(after_help = "\
Example:
  coffer init --server https://coffer.example.com --org acme --project web --env development")]
    Init(InitArgs),
    /// Read and write the secrets of an environment
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Write the environment's secrets as a dotenv, JSON or YAML file
    #[command(after_help = "\
Examples:
  coffer export > .env
  coffer export --env production --format json --output prod.json")]
    Export(ExportArgs),
    /// Import a dotenv, JSON or YAML file into the environment (one transaction)
    #[command(after_help = "\
Examples:
  coffer import .env
  coffer import --env staging --format yaml secrets.txt
  cat .env | coffer import --format dotenv -")]
    Import(ImportArgs),
    /// Compare two environments of the project key by key
    #[command(after_help = "\
Examples:
  coffer compare staging production
  coffer compare staging production --reveal --json")]
    Compare(CompareArgs),
    /// Copy secrets from one environment of the project to another
    #[command(after_help = "\
Examples:
  coffer copy --from staging --to production
  coffer copy --from staging --to production DATABASE_URL REDIS_URL --overwrite
  coffer copy --from shared --to production --as-reference")]
    Copy(CopyArgs),
    /// Run a command with the environment's secrets in its environment
    #[command(after_help = "\
Signals (SIGINT, SIGTERM, SIGHUP) are passed on to the command, and coffer exits with its
exit code (128+N when signal N killed it); 126/127 when it cannot be started.

Examples:
  coffer run -- npm start
  coffer run --env production --watch -- ./server
  coffer run --fallback-file .coffer-cache -- ./worker")]
    Run(RunArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    #[command(after_help = "\
Examples:
  coffer completions bash > ~/.local/share/bash-completion/completions/coffer
  coffer completions zsh > \"${fpath[1]}/_coffer\"")]
    Completions(CompletionsArgs),
}

#[derive(Args)]
pub struct LoginArgs {
    /// Your email (prompted for on a terminal when absent)
    #[arg(long, value_name = "EMAIL")]
    pub email: Option<String>,
    /// Read the password from the first line of stdin instead of prompting (stdin that is
    /// not a terminal is read this way anyway)
    #[arg(long, conflicts_with = "token")]
    pub password_stdin: bool,
    /// Store a token (API key or service token) instead of logging in. Without a value it
    /// comes from COFFER_TOKEN, else a prompt, else stdin: a value on the command line is
    /// visible to other users of the machine
    #[arg(long, value_name = "TOKEN", num_args = 0..=1, default_missing_value = "")]
    pub token: Option<String>,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Replace an existing .coffer.toml
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// List the environment's secrets (keys, versions, last change; values with --reveal)
    #[command(
        after_help = "Examples:\n  coffer secrets list\n  coffer secrets list --env production --reveal"
    )]
    List(ListArgs),
    /// Print a secret's value (references resolved unless --raw)
    #[command(
        after_help = "Examples:\n  coffer secrets get DATABASE_URL\n  coffer secrets get API_KEY --version 3"
    )]
    Get(GetArgs),
    /// Set secrets: KEY=VALUE..., or KEY with --from-file, or KEY alone to read the value from
    /// stdin (a prompt on a terminal) so that it never appears on the command line
    #[command(after_help = "\
Examples:
  coffer secrets set LOG_LEVEL=debug PORT=8080
  coffer secrets set TLS_KEY --from-file server.key
  pbpaste | coffer secrets set API_KEY
  coffer secrets set API_KEY          # prompts, without echo

A value read from stdin loses one trailing newline; a file is taken as it is.")]
    Set(SetArgs),
    /// Delete secrets (their history is kept)
    #[command(after_help = "Example:\n  coffer secrets delete OLD_TOKEN --yes")]
    Delete(DeleteArgs),
    /// List a secret's versions
    #[command(after_help = "Example:\n  coffer secrets history DATABASE_URL")]
    History(HistoryArgs),
    /// Make an earlier version's value current again (as a new version)
    #[command(after_help = "Example:\n  coffer secrets rollback DATABASE_URL 3")]
    Rollback(RollbackArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Show the values too
    #[arg(long)]
    pub reveal: bool,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    pub key: String,
    /// That version's value, as it was stored
    #[arg(long, value_name = "N")]
    pub version: Option<i64>,
    /// The value as stored, without resolving ${...} references
    #[arg(long)]
    pub raw: bool,
}

#[derive(Args)]
pub struct SetArgs {
    /// KEY=VALUE pairs, or one KEY whose value comes from --from-file or stdin
    #[arg(required = true, value_name = "KEY[=VALUE]")]
    pub entries: Vec<String>,
    /// Read the value of the one KEY from this file, byte for byte
    #[arg(long, value_name = "PATH")]
    pub from_file: Option<PathBuf>,
    /// A comment for the new version(s)
    #[arg(long, value_name = "TEXT")]
    pub comment: Option<String>,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[arg(required = true, value_name = "KEY")]
    pub keys: Vec<String>,
    /// Do not ask for confirmation (only asked on a terminal)
    #[arg(short, long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    pub key: String,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    pub key: String,
    /// The version whose value becomes current
    pub version: i64,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// dotenv, json or yaml
    #[arg(long, default_value = "dotenv", value_parser = parse_format)]
    pub format: FileFormat,
    /// Write to this file (created 0600) instead of stdout
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Resolve ${...} references (the file then no longer follows them when imported)
    #[arg(long)]
    pub resolve: bool,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The file (`-` for stdin)
    pub file: PathBuf,
    /// dotenv, json or yaml [default: from the file's name: .env, *.json, *.yaml, *.yml]
    #[arg(long, value_parser = parse_format)]
    pub format: Option<FileFormat>,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The environment to compare from
    pub base: String,
    /// The environment to compare with
    pub head: String,
    /// Show the values (as stored, references unresolved)
    #[arg(long)]
    pub reveal: bool,
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The environment to copy from
    #[arg(long, value_name = "ENV")]
    pub from: String,
    /// The environment to copy to [default: the current environment, see --env]
    #[arg(long, value_name = "ENV")]
    pub to: Option<String>,
    /// Only these keys [default: every secret of --from]
    #[arg(value_name = "KEY")]
    pub keys: Vec<String>,
    /// Replace the values of keys the target already has (otherwise they are skipped)
    #[arg(long)]
    pub overwrite: bool,
    /// Write references (${from.KEY}) instead of values, so the target follows the source
    #[arg(long)]
    pub as_reference: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Restart the command when the environment's secrets change
    #[arg(long)]
    pub watch: bool,
    /// With --watch: check for changes by polling instead of following the event stream
    /// (for networks that cut long-lived connections; used anyway while the stream cannot be
    /// opened)
    #[arg(long, requires = "watch")]
    pub poll: bool,
    /// With --watch: how often to poll (e.g. 10s, 500ms, 1m)
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Keep an encrypted copy of the last values in this file, used (with a warning) only
    /// when the server cannot be reached
    #[arg(long, value_name = "PATH")]
    pub fallback_file: Option<PathBuf>,
    /// The command and its arguments (after `--`)
    #[arg(required = true, last = true, value_name = "COMMAND")]
    pub command: Vec<std::ffi::OsString>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    pub shell: clap_complete::Shell,
}

/// Without the token, which may have been given on the command line.
impl std::fmt::Debug for LoginArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginArgs")
            .field("email", &self.email)
            .field("password_stdin", &self.password_stdin)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// With the keys only: `KEY=VALUE` entries hold values.
impl std::fmt::Debug for SetArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&str> = self
            .entries
            .iter()
            .map(|e| e.split_once('=').map_or(e.as_str(), |(key, _)| key))
            .collect();
        f.debug_struct("SetArgs")
            .field("keys", &keys)
            .field("from_file", &self.from_file)
            .field("comment", &self.comment.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

fn parse_format(text: &str) -> Result<FileFormat, String> {
    text.parse()
        .map_err(|()| "expected dotenv, json or yaml".to_owned())
}

/// `500ms`, `10s`, `2m`, or a number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 10s, 500ms, 1m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("unknown unit {unit:?}: use ms, s or m")),
    };
    let duration = Duration::try_from_secs_f64(seconds).map_err(|e| e.to_string())?;
    if duration < Duration::from_millis(100) {
        return Err("at least 100ms".to_owned());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("10h").is_err());
        assert!(parse_duration("10ms").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn debug_output_shows_no_token_and_no_value() {
        let cli = Cli::try_parse_from([
            "coffer",
            "secrets",
            "set",
            "A=hunter2",
            "B=hunter3",
            "--comment",
            "hunter4",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let debug = format!("{cli:?}");
        assert!(
            debug.contains("\"A\"") && !debug.contains("hunter"),
            "{debug}"
        );
        let cli = Cli::try_parse_from(["coffer", "login", "--token", "cfr_hunter2"])
            .unwrap_or_else(|e| panic!("{e}"));
        let debug = format!("{cli:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn the_help_lists_the_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Exit codes:"), "{help}");
        assert!(help.contains("6  server unreachable"), "{help}");
    }
}
