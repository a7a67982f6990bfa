//! The `miniku` binary: one subcommand per component.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "miniku", version, about = "Miniku: a small Kubernetes over a Raft-replicated store")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one member of the replicated key-value store.
    Store(store_cmd::StoreArgs),
}

mod store_cmd;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Store(args) => store_cmd::run(args).await,
    }
}
