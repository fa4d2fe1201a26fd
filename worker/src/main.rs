//! `feral-worker`: one per node; trains what the coordinator assigns.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use feral_proto::credentials::{self, BearerToken};
use feral_worker::agent::{self, AgentConfig};
use feral_worker::config::WorkerFile;
use feral_worker::confine::Roots;
use feral_worker::metrics::WorkerMetrics;
use feral_worker::runner::TchRunner;

/// Feral worker: registers this node's devices with a coordinator and runs its tasks.
/// Each value comes from its flag, else its environment variable, else the config file,
/// else the default.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML: version = 1 and any of the keys below).
    #[arg(long, env = "FERAL_WORKER_CONFIG")]
    config: Option<PathBuf>,
    /// The coordinator's gRPC address, or several separated by commas (coordinators on one
    /// etcd; the worker follows the leader) [default: http://127.0.0.1:7070].
    #[arg(long, env = "FERAL_COORDINATOR")]
    coordinator: Option<String>,
    /// This worker's id, stable across restarts; by default the host name and a random suffix.
    #[arg(long, env = "FERAL_WORKER_ID")]
    id: Option<String>,
    /// `auto` (all CUDA devices, else the CPU), or a list such as `cpu` or `cuda:0,cuda:1` [default: auto].
    #[arg(long, env = "FERAL_DEVICES")]
    devices: Option<String>,
    /// The host name or address other workers reach this one at, for data-parallel gangs;
    /// by default this machine's host name.
    #[arg(long, env = "FERAL_ADVERTISE_HOST")]
    advertise_host: Option<String>,
    /// A file whose first line is this worker's bearer token, for a coordinator with tokens
    /// (a worker token named after this worker's id). The token may also come in `FERAL_TOKEN`.
    #[arg(long, env = "FERAL_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Address to serve this worker's Prometheus metrics on (`/metrics`); without it, none.
    #[arg(long, env = "FERAL_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Certificate (PEM) to serve the metrics over HTTPS with (with --metrics-tls-key).
    #[arg(long, env = "FERAL_METRICS_TLS_CERT")]
    metrics_tls_cert: Option<PathBuf>,
    /// The key (PEM) of --metrics-tls-cert.
    #[arg(long, env = "FERAL_METRICS_TLS_KEY")]
    metrics_tls_key: Option<PathBuf>,
    /// The directories tasks may read datasets and models from and write artifacts under,
    /// separated by commas: a job whose dataset, `[model] init` or artifact directory
    /// resolves elsewhere is refused [default: the working directory].
    #[arg(long, env = "FERAL_ALLOWED_ROOTS", value_delimiter = ',')]
    allowed_roots: Option<Vec<PathBuf>>,
    #[command(flatten)]
    tls: TlsArgs,
}

/// TLS towards the coordinator (`https://` addresses).
#[derive(Debug, clap::Args)]
struct TlsArgs {
    /// The CA certificate (PEM) that signed the coordinator's certificate.
    #[arg(long, env = "FERAL_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// This worker's certificate (PEM), for a coordinator that requires client certificates.
    #[arg(long, env = "FERAL_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The key (PEM) of --tls-cert.
    #[arg(long, env = "FERAL_TLS_KEY")]
    tls_key: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    feral_common::errors::exit_code(run().map_err(Into::into))
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into())).init();
    // Fail points (checkpoint writes) from FAILPOINTS, for fault-injection runs
    // (scripts/chaos.sh); none without it.
    let _fail_points = fail::FailScenario::setup();
    if let Err(error) = feral_proto::limits::raise_fd_limit() {
        tracing::warn!(%error, "cannot raise the limit on open files");
    }
    let args = Args::parse();
    let file = match &args.config {
        Some(path) => WorkerFile::load(path)?,
        None => WorkerFile::default(),
    };
    let devices = args.devices.or(file.devices).unwrap_or_else(|| "auto".into());
    let slots = feral_worker::slots(&devices).map_err(|e| anyhow::anyhow!("devices: {e}"))?;
    let hostname = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "worker".into());
    let worker_id = args.id.or(file.id).unwrap_or_else(|| feral_common::ids::WorkerId::generate(&hostname).to_string());
    let advertise_host = args.advertise_host.or(file.advertise_host).unwrap_or_else(|| hostname.clone());
    let coordinator = args.coordinator.or(file.coordinator).unwrap_or_else(|| "http://127.0.0.1:7070".into());
    let token_file = args.token_file.or(file.token_file);
    let token = BearerToken::from_sources(token_file.as_deref()).map_err(|e| anyhow::anyhow!(e))?;
    let tls = credentials::client_tls(args.tls.tls_ca.as_deref(), args.tls.tls_cert.as_deref(), args.tls.tls_key.as_deref()).map_err(|e| anyhow::anyhow!(e))?;
    let roots = match args.allowed_roots.or(file.allowed_roots) {
        Some(paths) => Roots::new(paths),
        None => Roots::working_directory(),
    };
    let roots = roots.map_err(|e| anyhow::anyhow!("allowed_roots: {e}"))?;
    let config = AgentConfig { coordinator, worker_id, hostname, advertise_host, slots, token, tls, roots };
    let metrics = Arc::new(WorkerMetrics::default());
    if let Some(address) = args.metrics_listen.or(file.metrics_listen) {
        let address: std::net::SocketAddr = address.parse().map_err(|e| anyhow::anyhow!("metrics_listen: is not an address ({e}): {address:?}"))?;
        let tls = match (args.metrics_tls_cert.or(file.metrics_tls_cert), args.metrics_tls_key.or(file.metrics_tls_key)) {
            (Some(cert), Some(key)) => {
                let read = |path: &std::path::Path, what: &str| credentials::read_pem(path, what);
                let config = feral_proto::https::server_config(&read(&cert, "the metrics TLS certificate")?, &read(&key, "the metrics TLS key")?, None);
                Some(config.map_err(|e| anyhow::anyhow!("metrics TLS: {e}"))?)
            }
            (None, None) => {
                if !address.ip().is_loopback() {
                    tracing::warn!(%address, "NO TLS on the metrics endpoint: served beyond loopback in plain text; give --metrics-tls-cert and --metrics-tls-key");
                }
                None
            }
            _ => anyhow::bail!("--metrics-tls-cert and --metrics-tls-key go together: give both or neither"),
        };
        let listener = tokio::net::TcpListener::bind(address).await.map_err(|e| anyhow::anyhow!("cannot listen for metrics on {address}: {e}"))?;
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        tracing::info!(%address, "serving metrics (/metrics)");
        let refused = metrics.connections_refused.clone();
        tokio::spawn(async move {
            if let Err(error) = feral_worker::metrics::serve(listener, refused, tls, Arc::new(registry), std::future::pending()).await {
                tracing::warn!(%address, %error, "the metrics endpoint stopped");
            }
        });
    }
    agent::run(config, Arc::new(TchRunner::observed(metrics)), feral_common::signals::shutdown_signal()).await?;
    Ok(())
}
