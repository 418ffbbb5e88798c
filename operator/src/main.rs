use std::io::Write as _;

use clap::{Parser, Subcommand};

/// The Coffer Kubernetes operator.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML (`coffer-operator crd | kubectl apply -f -`).
    Crd,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => std::io::stdout().write_all(coffer_operator::crds_yaml().as_bytes())?,
    }
    Ok(())
}
