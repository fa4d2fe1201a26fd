//! Feral's coordinator: it owns the job queue, the worker registry with its leases, the
//! job state machine and the store, and serves the `feral.v1` gRPC API to users and
//! workers. It never links libtorch and never sees an image: workers read the data.
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod control;
pub mod dashboard;
pub mod error;
pub mod grpc;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod model;
pub mod store;
pub mod tls;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use feral_common::time::now_ms;
use feral_proto::limits::{self, Limited};
use feral_proto::v1::job_service_server::JobServiceServer;
use feral_proto::v1::worker_service_server::WorkerServiceServer;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::auth::{Api, Gate, Tokens};
use crate::config::StoreConfig;
use crate::control::{ControlPlane, Settings};
use crate::error::CoordinatorError;
use crate::leader::{Election, Role};
use crate::metrics::{MeteredStore, Metrics, RpcTimerLayer};
use crate::store::{EmbeddedStore, EtcdStore, MemoryStore, Store};
use crate::tls::TlsMaterial;

/// Opens the configured store.
pub async fn open_store(config: &StoreConfig) -> Result<Arc<dyn Store>, CoordinatorError> {
    Ok(match config {
        StoreConfig::Memory => Arc::new(MemoryStore::default()),
        StoreConfig::Embedded(path) => Arc::new(EmbeddedStore::open(path)?),
        StoreConfig::Etcd { endpoints, prefix } => Arc::new(EtcdStore::connect(endpoints, prefix).await?),
    })
}

/// Who may call the coordinator ([`auth`]): with no tokens, anyone may call anything.
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub tokens: Option<Arc<Tokens>>,
    /// TLS (and mutual TLS when it names a client CA) on both APIs and on HTTP.
    pub tls: Option<TlsMaterial>,
    /// `/metrics` answers without a token even when the coordinator has tokens.
    pub metrics_public: bool,
    /// The host names the HTTP listener answers to (the `Host` header); empty: loopback
    /// names on a loopback listener, any beyond it.
    pub http_hosts: Vec<String>,
}

impl Access {
    /// TLS settings from PEM files: this coordinator's certificate and key, and the CA whose
    /// client certificates it then requires.
    pub fn tls_from_files(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<TlsMaterial, ServeError> {
        TlsMaterial::from_files(cert, key, client_ca)
    }
}

/// Where the coordinator listens: gRPC, and optionally HTTP (`/metrics`).
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(grpc: TcpListener) -> Self {
        Self { grpc, http: None }
    }
}

/// Serves the coordinator on `listeners` until `shutdown` resolves, then drains. The store
/// is released when this returns, so a new coordinator can open it.
pub async fn serve(
    settings: Settings,
    access: Access,
    listeners: impl Into<Listeners>,
    store: Arc<dyn Store>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let metrics = Arc::new(Metrics::default());
    let store = Arc::new(MeteredStore::new(store, metrics.clone()));
    let control = Arc::new(ControlPlane::load(settings.clone(), store, now_ms()).await?.observed_by(metrics.clone()));
    serve_as(&settings, &access, listeners.into(), Role::leader(control), metrics, shutdown).await
}

/// Serves as one of several coordinators on one etcd: stands by (every call answered with
/// the leader's address) until `election` elects this one, then loads the whole state from
/// `store` and leads, every write fenced by its leadership. Returns when `shutdown`
/// resolves (handing leadership over at once), or with [`ServeError::Deposed`] when the
/// leadership is lost: the process should exit and be started again as a standby.
pub async fn serve_elected(
    settings: Settings,
    access: Access,
    listeners: impl Into<Listeners>,
    store: EtcdStore,
    election: Election,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let role = Role::standby();
    let metrics = Arc::new(Metrics::default());
    let lead = async {
        let leadership = election.campaign(&role).await;
        let fenced = Arc::new(MeteredStore::new(Arc::new(store.fenced(leadership.fence.clone())), metrics.clone()));
        let control = Arc::new(ControlPlane::load(settings.clone(), fenced, now_ms()).await?.observed_by(metrics.clone()));
        leadership.lead(&role, control).await;
        Err::<(), _>(ServeError::Deposed)
    };
    tokio::select! {
        served = serve_as(&settings, &access, listeners.into(), role.clone(), metrics.clone(), shutdown) => {
            election.resign().await;
            served
        }
        failed = lead => failed,
        never = keep_a_view(&role, &settings, Arc::new(store.clone())) => match never {},
    }
}

/// While standing by, reads the store every [`VIEW_EVERY`] into the role's last view, which
/// answers reads while no leader is elected; a read that fails (etcd paused or out of
/// reach) keeps the view it had, which ages. Never returns.
async fn keep_a_view(role: &Role, settings: &Settings, store: Arc<dyn Store>) -> std::convert::Infallible {
    loop {
        if !role.is_leader() {
            let read = tokio::time::timeout(VIEW_EVERY, ControlPlane::view(settings.clone(), store.clone(), now_ms())).await;
            if let Ok(Ok(view)) = read {
                role.set_view(Arc::new(view));
            }
        }
        tokio::time::sleep(VIEW_EVERY).await;
    }
}

/// How often a standby reads its view of the store.
const VIEW_EVERY: Duration = Duration::from_secs(2);

async fn serve_as(
    settings: &Settings,
    access: &Access,
    listeners: Listeners,
    role: Role,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let address = listeners.grpc.local_addr().map_err(|e| ServeError::Transport(e.to_string()))?;
    info!(%address, "coordinator serving");
    let grpc = Limited::new(listeners.grpc, "grpc", limits::GRPC_CONNECTIONS, metrics.connections_refused("grpc"));
    let incoming = futures::stream::unfold(grpc, |grpc| async move {
        let (connection, _) = grpc.accept().await;
        Some((Ok::<_, std::io::Error>(connection), grpc))
    });
    let (stop_watches, stopping) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stop_watches.send(true);
    };
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let http_tls = access.tls.as_ref().map(TlsMaterial::http).transpose()?;
    let web = serve_http(listeners.http, http_tls, role.clone(), access, metrics.clone(), registry, stopping.clone());
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &access.tls {
        builder = builder.tls_config(tls.grpc()).map_err(|e| ServeError::Tls(e.to_string()))?;
    }
    let server = builder
        // Every call's logs name its method (the handlers add the job or task they act on).
        .trace_fn(|request| tracing::info_span!("rpc", method = request.uri().path()))
        .layer(RpcTimerLayer(metrics))
        .add_service(JobServiceServer::with_interceptor(grpc::JobApi::new(role.clone(), stopping), Gate::new(access.tokens.clone(), Api::Jobs)))
        .add_service(WorkerServiceServer::with_interceptor(grpc::WorkerApi::new(role.clone()), Gate::new(access.tokens.clone(), Api::Workers)))
        .serve_with_incoming_shutdown(incoming, shutdown);
    // Lease expiry lives and ends with the server (a dropped server leaves nothing behind).
    let served = tokio::select! {
        served = server => served,
        never = expire_leases(role, settings.heartbeat_interval_ms) => match never {},
        never = web => match never {},
    };
    info!(%address, "coordinator stopped");
    served.map_err(|e| ServeError::Transport(e.to_string()))
}

/// Serves `/metrics` and the dashboard on `listener` (if any) until `stopping` turns true;
/// never returns.
async fn serve_http(
    listener: Option<TcpListener>,
    tls: Option<Arc<feral_proto::https::ServerConfig>>,
    role: Role,
    access: &Access,
    metrics: Arc<Metrics>,
    registry: prometheus_client::registry::Registry,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> std::convert::Infallible {
    if let Some(listener) = listener {
        let address = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        info!(%address, "HTTP serving (/metrics, the dashboard at /)");
        let dashboard = dashboard::Dashboard { role: role.clone(), tokens: access.tokens.clone(), stopping: stopping.clone() };
        // `/metrics` asks for a token as the APIs do, unless told it is public.
        let metrics_tokens = if access.metrics_public { None } else { access.tokens.clone() };
        let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
        let hosts = http::Hosts::new(&access.http_hosts, loopback);
        if hosts.is_open() {
            warn!(%address, "the HTTP listener is beyond loopback and no http_hosts are set: the Host header is not checked (set http_hosts to the names users reach the dashboard by)");
        }
        let listener = Limited::new(listener, "http", limits::HTTP_CONNECTIONS, metrics.connections_refused("http"));
        let stopped = async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        };
        if let Err(error) =
            http::serve(listener, tls, http::Scrape { role, metrics, registry: Arc::new(registry) }, dashboard, http::Guards { metrics_tokens, hosts }, stopped)
                .await
        {
            warn!(%address, %error, "the HTTP endpoint stopped");
        }
    }
    std::future::pending().await
}

async fn expire_leases(role: Role, heartbeat_interval_ms: u64) -> std::convert::Infallible {
    let mut ticks = tokio::time::interval(Duration::from_millis((heartbeat_interval_ms / 2).max(20)));
    loop {
        ticks.tick().await;
        let Ok(control) = role.control() else { continue };
        if let Err(error) = control.expire_leases(now_ms()).await {
            warn!(%error, "checking worker leases failed; will retry");
        }
        if let Err(error) = control.expire_stuck_tasks(now_ms()).await {
            warn!(%error, "checking task deadlines failed; will retry");
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Coordinator(#[from] CoordinatorError),
    #[error("this coordinator lost its leadership (its etcd lease ran out or another was elected); start it again to stand by")]
    Deposed,
    #[error("gRPC server failed: {0}")]
    Transport(String),
    #[error("TLS: {0}")]
    Tls(String),
    /// The TLS files: unreadable, or refused by rustls.
    #[error("TLS: {0}")]
    TlsFiles(#[from] feral_proto::credentials::TlsError),
}
