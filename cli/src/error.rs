//! What can go wrong, the exit code of each kind, and a message that says what to do next.
//! No variant carries a token, a password or a secret value.

use std::path::PathBuf;

/// The exit codes of `coffer`, as documented in `coffer --help` (and `coffer run`, which exits
/// with its command's code, uses them only for its own failures).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Ok = 0,
    /// Anything not listed below.
    General = 1,
    /// Bad arguments (clap's own), or missing configuration (no `.coffer.toml`, no project…).
    Usage = 2,
    /// Not logged in, wrong email or password, a refused token, an ended session.
    NotAuthenticated = 3,
    /// The organization, project, environment or secret does not exist (or is not yours to see).
    NotFound = 4,
    /// Your role does not allow this.
    Forbidden = 5,
    /// The server could not be reached.
    Unreachable = 6,
    /// The server refused the request as it stands: a conflict or invalid input.
    Invalid = 7,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// The table in `coffer --help` and the README.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  general error
  2  usage: bad arguments or missing configuration (no .coffer.toml, no project...)
  3  not authenticated: not logged in, wrong email or password, token refused, session ended
  4  not found: no such organization, project, environment or secret
  5  forbidden: your role does not allow this
  6  server unreachable
  7  conflict or invalid input refused by the server
`coffer run` exits with its command's code (128+N when a signal N killed it).

Environment: COFFER_SERVER_URL, COFFER_TOKEN (an API key or service token, cfr_...),
COFFER_ORG, COFFER_PROJECT, COFFER_ENVIRONMENT, COFFER_CONFIG_DIR, NO_COLOR.
Precedence: flag > environment variable > .coffer.toml (found in the working directory or above).";

/// A failure of a command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Something the user must supply or set up first.
    #[error("{0}")]
    Usage(String),
    #[error("not logged in to {server}: run `coffer login`")]
    NotLoggedIn { server: String },
    #[error("wrong email or password")]
    WrongCredentials,
    #[error("your session on {server} has ended: run `coffer login`")]
    SessionEnded { server: String },
    #[error(
        "{server} refused the token (revoked, expired or mistyped?): run `coffer login` or check COFFER_TOKEN"
    )]
    TokenRefused { server: String },
    #[error("cannot reach {server}: is the server running? ({detail})")]
    Unreachable { server: String, detail: String },
    /// An error answer of the server not covered above.
    #[error("{}", describe_api(*.status, .code, .message, .request_id.as_deref()))]
    Api {
        status: u16,
        code: String,
        message: String,
        request_id: Option<String>,
    },
    #[error("{what} {}: {source}", .path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing to stdout failed.
    #[error("cannot write the output: {0}")]
    Stdout(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}

fn describe_api(status: u16, code: &str, message: &str, request_id: Option<&str>) -> String {
    let hint = match status {
        404 => ": check the organization, project, environment and key (--org, --project, --env)",
        403 => ": your role does not allow this; ask an admin of the project",
        429 => ": too many requests, try again later",
        _ => "",
    };
    match request_id {
        Some(id) => format!("{message} ({code}){hint} [request {id}]"),
        None => format!("{message} ({code}){hint}"),
    }
}

impl CliError {
    /// The exit code this failure ends `coffer` with.
    pub fn exit(&self) -> Exit {
        match self {
            Self::Usage(_) => Exit::Usage,
            Self::NotLoggedIn { .. }
            | Self::WrongCredentials
            | Self::SessionEnded { .. }
            | Self::TokenRefused { .. } => Exit::NotAuthenticated,
            Self::Unreachable { .. } => Exit::Unreachable,
            Self::Api { status, .. } => match status {
                401 => Exit::NotAuthenticated,
                403 => Exit::Forbidden,
                404 => Exit::NotFound,
                400 | 409 | 413 | 422 => Exit::Invalid,
                _ => Exit::General,
            },
            Self::File { .. } | Self::Stdout(_) | Self::Other(_) => Exit::General,
        }
    }

    /// A stable, machine-readable name of the failure (for `--json`).
    pub fn code(&self) -> &str {
        match self {
            Self::Usage(_) => "usage",
            Self::NotLoggedIn { .. } => "not_logged_in",
            Self::WrongCredentials => "wrong_credentials",
            Self::SessionEnded { .. } => "session_ended",
            Self::TokenRefused { .. } => "token_refused",
            Self::Unreachable { .. } => "unreachable",
            Self::Api { code, .. } => code,
            Self::File { .. } => "file",
            Self::Stdout(_) => "output",
            Self::Other(_) => "error",
        }
    }

    /// A usage error.
    pub fn usage(message: impl Into<String>) -> Self {
        Self::Usage(message.into())
    }

    /// A failure to read or write `path`.
    pub fn file(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::File {
            what,
            path: path.into(),
            source,
        }
    }

    /// An error of the client talking to `server`, in the user's terms. 401s are mapped by the
    /// caller, who knows which credential was refused.
    pub fn from_client(server: &str, e: coffer_client::Error) -> Self {
        match e {
            coffer_client::Error::Api {
                status,
                code,
                message,
                request_id,
                ..
            } => Self::Api {
                status,
                code,
                message,
                request_id,
            },
            coffer_client::Error::Transport(ref t) if t.is_connect() || t.is_timeout() => {
                Self::Unreachable {
                    server: server.to_owned(),
                    detail: if t.is_timeout() {
                        "timed out".to_owned()
                    } else {
                        "cannot connect".to_owned()
                    },
                }
            }
            coffer_client::Error::Transport(_) => Self::Unreachable {
                server: server.to_owned(),
                detail: e.to_string(),
            },
            other => Self::Other(other.to_string()),
        }
    }

    /// True when the server could not be reached at all.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16) -> CliError {
        CliError::Api {
            status,
            code: "x".into(),
            message: "m".into(),
            request_id: None,
        }
    }

    #[test]
    fn each_kind_of_failure_has_its_documented_exit_code() {
        assert_eq!(CliError::usage("no project").exit(), Exit::Usage);
        let server = "http://127.0.0.1:1/".to_owned();
        assert_eq!(
            CliError::NotLoggedIn {
                server: server.clone()
            }
            .exit(),
            Exit::NotAuthenticated
        );
        assert_eq!(CliError::WrongCredentials.exit(), Exit::NotAuthenticated);
        assert_eq!(
            CliError::Unreachable {
                server,
                detail: String::new()
            }
            .exit(),
            Exit::Unreachable
        );
        assert_eq!(api(401).exit(), Exit::NotAuthenticated);
        assert_eq!(api(403).exit(), Exit::Forbidden);
        assert_eq!(api(404).exit(), Exit::NotFound);
        assert_eq!(api(409).exit(), Exit::Invalid);
        assert_eq!(api(422).exit(), Exit::Invalid);
        assert_eq!(api(500).exit(), Exit::General);
        // every documented code is in the help table
        for exit in [
            Exit::Ok,
            Exit::General,
            Exit::Usage,
            Exit::NotAuthenticated,
            Exit::NotFound,
            Exit::Forbidden,
            Exit::Unreachable,
            Exit::Invalid,
        ] {
            assert!(
                EXIT_CODES_HELP.contains(&format!("\n  {}  ", exit.code())),
                "{exit:?}"
            );
        }
    }

    #[test]
    fn a_not_found_says_what_to_check() {
        let text = api(404).to_string();
        assert!(text.contains("--project"), "{text}");
    }
}
