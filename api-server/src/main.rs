//! coffer-server binary: parse the configuration, start, serve.

use std::process::ExitCode;

use clap::Parser;
use coffer_server::config::{Cli, Command};

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
