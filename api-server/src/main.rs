//! coffer-server binary: parse the configuration, start, serve.

use std::process::ExitCode;

use clap::Parser;
use coffer_server::config::{AdminCommand, Cli, Command};

/// Requests allocate and free many small buffers; mimalloc does that in a fraction of the time
/// glibc's allocator takes under concurrency.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    coffer_server::telemetry::init(&cli.config);
    let state = match coffer_server::start(cli.config).await {
        Ok(state) => state,
        Err(e) => {
            eprintln!("coffer-server: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Migrate => {
            tracing::info!("database migrations are applied");
            Ok(())
        }
        Command::RotateMasterKey => match coffer_server::service::keys::rewrap_all(&state).await {
            Ok(n) => {
                tracing::info!(
                    data_keys = n,
                    active = state.keyring.active_id(),
                    "every data key is wrapped by the active master key; COFFER_PREVIOUS_MASTER_KEYS can be removed"
                );
                Ok(())
            }
            Err(e) => {
                let cause = match &e {
                    coffer_server::error::ApiError::Internal(cause) => format!("{cause:#}"),
                    other => other.to_string(),
                };
                eprintln!("coffer-server: rotation failed, nothing was changed: {cause}");
                return ExitCode::FAILURE;
            }
        },
        Command::Admin {
            command: AdminCommand::ResetPassword { email },
        } => return reset_password(&state, &email).await,
        Command::Serve => coffer_server::serve(state).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coffer-server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a password-reset link for the account with `email` on stdout (alone, for scripts);
/// what it is and until when on stderr.
async fn reset_password(state: &coffer_server::AppState, email: &str) -> ExitCode {
    use coffer_server::error::ApiError;
    use coffer_server::service::password_reset;
    use secrecy::ExposeSecret as _;

    match password_reset::issue_for_email_as_system(state, email).await {
        Ok(issued) => {
            use std::io::Write as _;
            let link = issued.link(state);
            if let Err(e) = writeln!(std::io::stdout().lock(), "{}", link.expose_secret()) {
                eprintln!("coffer-server: cannot write the link: {e}");
                return ExitCode::FAILURE;
            }
            let until = issued
                .expires_at
                .to_datetime()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            eprintln!(
                "coffer-server: a one-time password-reset link for {}, valid until {}; an earlier link for this account no longer works",
                email.trim(),
                until
            );
            ExitCode::SUCCESS
        }
        Err(ApiError::NotFound { .. }) => {
            eprintln!("coffer-server: no account has the email {}", email.trim());
            ExitCode::FAILURE
        }
        Err(ApiError::Internal(cause)) => {
            eprintln!("coffer-server: cannot issue a password-reset link: {cause:#}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("coffer-server: {e}");
            ExitCode::FAILURE
        }
    }
}
