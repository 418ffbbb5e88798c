use std::io::Write as _;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::sync::Arc;

use coffer_operator::metrics::Metrics;
use coffer_operator::{Config, Operator};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// The Coffer Kubernetes operator: syncs environments of coffer-server into Secrets.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once at start-up; boxing would gain nothing"
)]
enum Command {
    /// Run the operator against the cluster of the current kubeconfig (or the in-cluster
    /// service account).
    Run(Config),
    /// Print the CustomResourceDefinitions as YAML (`coffer-operator crd | kubectl apply -f -`).
    Crd,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => std::io::stdout().write_all(coffer_operator::crds_yaml().as_bytes())?,
        Command::Run(config) => {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(run(config))?;
        }
    }
    Ok(())
}

async fn run(config: Config) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let metrics = Arc::new(Metrics::new());
    let kube = kube::Config::infer()
        .await
        .map_err(anyhow::Error::from)
        .and_then(|c| Ok(coffer_operator::kube_client::client(c, metrics.clone())?))
        .context("connecting to Kubernetes (kubeconfig or in-cluster service account)")?;
    let listener = tokio::net::TcpListener::bind(config.metrics_addr)
        .await
        .with_context(|| format!("listening on {}", config.metrics_addr))?;
    tracing::info!(addr = %config.metrics_addr, "serving /healthz, /readyz and /metrics");
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            stop.cancel();
        }
    });
    Operator::with_metrics(config, kube, metrics)
        .run(Some(listener), stop)
        .await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
