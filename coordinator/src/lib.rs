//! Feral's coordinator: it owns the job queue, the worker registry with its leases, the
//! job state machine and the store, and serves the `feral.v1` gRPC API to users and
//! workers. It never links libtorch and never sees an image: workers read the data.
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod control;
pub mod error;
pub mod grpc;
pub mod leader;
pub mod model;
pub mod store;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use feral_common::time::now_ms;
use feral_proto::v1::job_service_server::JobServiceServer;
use feral_proto::v1::worker_service_server::WorkerServiceServer;
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tracing::{info, warn};

use crate::auth::{Api, Gate, Tokens};
use crate::config::StoreConfig;
use crate::control::{ControlPlane, Settings};
use crate::error::CoordinatorError;
use crate::leader::{Election, Role};
use crate::store::{EmbeddedStore, EtcdStore, MemoryStore, Store};

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
    /// TLS (and mutual TLS when it names a client CA) on both APIs.
    pub tls: Option<ServerTlsConfig>,
}

impl Access {
    /// TLS settings from PEM files: this coordinator's certificate and key, and the CA whose
    /// client certificates it then requires.
    pub fn tls_from_files(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<ServerTlsConfig, ServeError> {
        let read = |path: &Path, what: &str| feral_proto::credentials::read_pem(path, what).map_err(ServeError::Tls);
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(cert, "the TLS certificate")?, read(key, "the TLS key")?));
        if let Some(ca) = client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(read(ca, "the client CA")?));
        }
        Ok(tls)
    }
}

/// Serves the coordinator on `listener` until `shutdown` resolves, then drains. The store
/// is released when this returns, so a new coordinator can open it.
pub async fn serve(
    settings: Settings,
    access: Access,
    listener: TcpListener,
    store: Arc<dyn Store>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let control = Arc::new(ControlPlane::load(settings.clone(), store, now_ms()).await?);
    serve_as(&settings, &access, listener, Role::leader(control), shutdown).await
}

/// Serves as one of several coordinators on one etcd: stands by (every call answered with
/// the leader's address) until `election` elects this one, then loads the whole state from
/// `store` and leads, every write fenced by its leadership. Returns when `shutdown`
/// resolves (handing leadership over at once), or with [`ServeError::Deposed`] when the
/// leadership is lost: the process should exit and be started again as a standby.
pub async fn serve_elected(
    settings: Settings,
    access: Access,
    listener: TcpListener,
    store: EtcdStore,
    election: Election,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let role = Role::standby();
    let lead = async {
        let leadership = election.campaign(&role).await;
        let fenced = Arc::new(store.fenced(leadership.fence.clone()));
        let control = Arc::new(ControlPlane::load(settings.clone(), fenced, now_ms()).await?);
        leadership.lead(&role, control).await;
        Err::<(), _>(ServeError::Deposed)
    };
    tokio::select! {
        served = serve_as(&settings, &access, listener, role.clone(), shutdown) => {
            election.resign().await;
            served
        }
        failed = lead => failed,
    }
}

async fn serve_as(settings: &Settings, access: &Access, listener: TcpListener, role: Role, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServeError> {
    let address = listener.local_addr().map_err(|e| ServeError::Transport(e.to_string()))?;
    info!(%address, "coordinator serving");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let (stop_watches, stopping) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stop_watches.send(true);
    };
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &access.tls {
        builder = builder.tls_config(tls.clone()).map_err(|e| ServeError::Tls(e.to_string()))?;
    }
    let server = builder
        .add_service(JobServiceServer::with_interceptor(grpc::JobApi::new(role.clone(), stopping), Gate::new(access.tokens.clone(), Api::Jobs)))
        .add_service(WorkerServiceServer::with_interceptor(grpc::WorkerApi::new(role.clone()), Gate::new(access.tokens.clone(), Api::Workers)))
        .serve_with_incoming_shutdown(incoming, shutdown);
    // Lease expiry lives and ends with the server (a dropped server leaves nothing behind).
    let served = tokio::select! {
        served = server => served,
        never = expire_leases(role, settings.heartbeat_interval_ms) => match never {},
    };
    info!(%address, "coordinator stopped");
    served.map_err(|e| ServeError::Transport(e.to_string()))
}

async fn expire_leases(role: Role, heartbeat_interval_ms: u64) -> std::convert::Infallible {
    let mut ticks = tokio::time::interval(Duration::from_millis((heartbeat_interval_ms / 2).max(20)));
    loop {
        ticks.tick().await;
        let Ok(control) = role.control() else { continue };
        if let Err(error) = control.expire_leases(now_ms()).await {
            warn!(%error, "checking worker leases failed; will retry");
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
}
