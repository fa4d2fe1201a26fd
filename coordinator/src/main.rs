//! `feral-coordinator`: parse the configuration, open the store, serve until Ctrl-C or
//! SIGTERM, then drain.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use feral_coordinator::auth::Tokens;
use feral_coordinator::config::{CoordinatorConfig, Overrides, StoreConfig};
use feral_coordinator::leader::Election;
use feral_coordinator::store::EtcdStore;
use feral_coordinator::Access;

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
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into())).init();
    let args = Args::parse();
    let config = CoordinatorConfig::load(args.config.as_deref(), &args.overrides)?;
    // Each listener has its own limit of open connections; the process's own limit on
    // descriptors must not be what runs out first (docs/design.md §2, Connections).
    match feral_proto::limits::raise_fd_limit() {
        Ok(limit) => tracing::info!(limit, "open files allowed"),
        Err(error) => tracing::warn!(%error, "cannot raise the limit on open files"),
    }
    let tokens = config.tokens.as_deref().map(Tokens::load).transpose()?.map(Arc::new);
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(Access::tls_from_files(cert, key, config.tls_client_ca.as_deref())?),
        _ => None,
    };
    if tls.is_none() && !config.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %config.listen,
            "NO TLS: this coordinator listens beyond loopback in plain text, so tokens, specs and results cross the network readable by anyone on it; give it --tls-cert and --tls-key"
        );
    }
    if tokens.is_none() && !config.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %config.listen,
            "NO AUTHENTICATION: this coordinator listens beyond loopback without a tokens file, so anyone who reaches {} can submit and cancel jobs and register as a worker; give it --tokens (FERAL_TOKENS)",
            config.listen
        );
    }
    if let Some(http) = config.http_listen.filter(|a| !a.ip().is_loopback()) {
        if tls.is_none() {
            tracing::warn!(%http, "NO TLS on HTTP: /metrics and the dashboard are served beyond loopback in plain text; give the coordinator --tls-cert and --tls-key");
        }
        tracing::warn!(%http, "/metrics needs no token: anyone who reaches it can read job ids and the cluster's counts (the dashboard's API does check tokens)");
    }
    let access = Access { tokens, tls, metrics_public: config.metrics_public, http_hosts: config.http_hosts.clone() };
    let listener = tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
    let http = match config.http_listen {
        Some(address) => Some(tokio::net::TcpListener::bind(address).await.with_context(|| format!("cannot listen for HTTP on {address}"))?),
        None => None,
    };
    let listeners = feral_coordinator::Listeners { grpc: listener, http };
    let shutdown = feral_common::signals::shutdown_signal();
    match &config.store {
        // On etcd, coordinators elect a leader; the others stand by.
        StoreConfig::Etcd { endpoints, prefix } => {
            let store = EtcdStore::connect(endpoints, prefix).await?;
            let lease = Duration::from_secs(config.leader_lease_s);
            let election = Election::connect(endpoints, prefix, &config.advertise, lease).await?;
            feral_coordinator::serve_elected(config.settings, access, listeners, store, election, shutdown).await?;
        }
        other => {
            let store = feral_coordinator::open_store(other).await?;
            feral_coordinator::serve(config.settings, access, listeners, store, shutdown).await?;
        }
    }
    Ok(())
}
