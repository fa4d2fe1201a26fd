//! `feral-coordinator`: parse the configuration, open the store, serve until Ctrl-C or
//! SIGTERM, then drain.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use feral_coordinator::config::{CoordinatorConfig, Overrides};

/// Feral's coordinator: schedules training jobs across registered workers.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML); flags and environment variables override its values.
    #[arg(long, env = "FERAL_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

fn main() -> std::process::ExitCode {
    feral_common::errors::exit_code(run().map_err(Into::into))
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    let config = CoordinatorConfig::load(args.config.as_deref(), &args.overrides)?;
    let store = feral_coordinator::open_store(&config.store).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    feral_coordinator::serve(config.settings, listener, store, feral_common::signals::shutdown_signal()).await?;
    Ok(())
}
