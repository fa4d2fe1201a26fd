//! Feral's coordinator: it owns the job queue, the worker registry with its leases, the
//! job state machine and the store, and serves the `feral.v1` gRPC API to users and
//! workers. It never links libtorch and never sees an image: workers read the data.
#![forbid(unsafe_code)]

pub mod config;
pub mod control;
pub mod error;
pub mod grpc;
pub mod model;
pub mod store;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use feral_common::time::now_ms;
use feral_proto::v1::job_service_server::JobServiceServer;
use feral_proto::v1::worker_service_server::WorkerServiceServer;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::config::StoreConfig;
use crate::control::{ControlPlane, Settings};
use crate::error::CoordinatorError;
use crate::store::{EmbeddedStore, EtcdStore, MemoryStore, Store};

/// Opens the configured store.
pub async fn open_store(config: &StoreConfig) -> Result<Arc<dyn Store>, CoordinatorError> {
    Ok(match config {
        StoreConfig::Memory => Arc::new(MemoryStore::default()),
        StoreConfig::Embedded(path) => Arc::new(EmbeddedStore::open(path)?),
        StoreConfig::Etcd { endpoints, prefix } => Arc::new(EtcdStore::connect(endpoints, prefix).await?),
    })
}

/// Serves the coordinator on `listener` until `shutdown` resolves, then drains. The store
/// is released when this returns, so a new coordinator can open it.
pub async fn serve(
    settings: Settings,
    listener: TcpListener,
    store: Arc<dyn Store>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let control = Arc::new(ControlPlane::load(settings.clone(), store, now_ms()).await?);
    let address = listener.local_addr().map_err(|e| ServeError::Transport(e.to_string()))?;
    info!(%address, "coordinator serving");

    let expiry = tokio::spawn(expire_leases(Arc::clone(&control), settings.heartbeat_interval_ms));
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let (stop_watches, stopping) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stop_watches.send(true);
    };
    let served = tonic::transport::Server::builder()
        .add_service(JobServiceServer::new(grpc::JobApi::new(Arc::clone(&control), stopping)))
        .add_service(WorkerServiceServer::new(grpc::WorkerApi::new(Arc::clone(&control))))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    expiry.abort();
    let _ = expiry.await;
    info!(%address, "coordinator stopped");
    served.map_err(|e| ServeError::Transport(e.to_string()))
}

async fn expire_leases(control: Arc<ControlPlane>, heartbeat_interval_ms: u64) {
    let mut ticks = tokio::time::interval(Duration::from_millis((heartbeat_interval_ms / 2).max(20)));
    loop {
        ticks.tick().await;
        if let Err(error) = control.expire_leases(now_ms()).await {
            warn!(%error, "checking worker leases failed; will retry");
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Coordinator(#[from] CoordinatorError),
    #[error("gRPC server failed: {0}")]
    Transport(String),
}
