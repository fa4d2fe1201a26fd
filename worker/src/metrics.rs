//! A worker's Prometheus metrics (crate `prometheus-client`), served at `/metrics` on
//! `--metrics-listen` (HTTPS with `--metrics-tls-cert` and `--metrics-tls-key`): what its training steps do. Nothing is global: [`WorkerMetrics::register`]
//! puts them in the registry its caller passes in, and training records into the
//! [`WorkerMetrics`] its [`crate::runner::TchRunner`] holds.

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use feral_proto::https::ServerConfig;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;

/// What a worker's training steps do, all ranks of every task on this worker together.
#[derive(Debug)]
pub struct WorkerMetrics {
    images: Counter,
    images_per_second: Gauge<f64, AtomicU64>,
    step_seconds: Histogram,
    all_reduce_seconds: Histogram,
    all_reduce_bytes: Counter,
    loader_ready: Gauge,
    /// Connections the metrics listener closed at once, holding its limit.
    pub connections_refused: Counter,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self {
            images: Counter::default(),
            images_per_second: Gauge::default(),
            // 100 µs to about 26 s.
            step_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 19)),
            all_reduce_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 19)),
            all_reduce_bytes: Counter::default(),
            loader_ready: Gauge::default(),
            connections_refused: Counter::default(),
        }
    }
}

impl WorkerMetrics {
    /// Adds every metric to `registry` (under the names in the README).
    pub fn register(&self, registry: &mut Registry) {
        let worker = registry.sub_registry_with_prefix("feral_worker");
        worker.register("images", "Images this worker's ranks trained on (labelled, unlabelled and pseudo-labelled)", self.images.clone());
        worker.register(
            "images_per_second",
            "Training images per second of one rank's last epoch (the rank that reported last, when this worker runs several)",
            self.images_per_second.clone(),
        );
        worker.register_with_unit("step_duration", "Training steps, from taking the batch to the optimiser step", Unit::Seconds, self.step_seconds.clone());
        worker.register_with_unit("all_reduce_duration", "Gradient all-reduce of one step (gangs only)", Unit::Seconds, self.all_reduce_seconds.clone());
        worker.register_with_unit("all_reduce", "Gradient bytes this worker's ranks all-reduced", Unit::Bytes, self.all_reduce_bytes.clone());
        worker.register(
            "loader_ready_batches",
            "Batches the loader threads have ready ahead of the step (of the rank that stepped last)",
            self.loader_ready.clone(),
        );
        worker.register(
            "connections_refused",
            "Connections the metrics listener closed at once because it held its limit of open connections",
            self.connections_refused.clone(),
        );
    }

    /// One training step: its time, its images, and the batches left ready behind it.
    pub fn step(&self, seconds: f64, images: u64, loader_ready: usize) {
        self.step_seconds.observe(seconds);
        self.images.inc_by(images);
        self.loader_ready.set(loader_ready as i64);
    }

    /// Images trained since the worker started.
    pub fn images_trained(&self) -> u64 {
        self.images.get()
    }

    pub fn all_reduce(&self, seconds: f64, bytes: u64) {
        self.all_reduce_seconds.observe(seconds);
        self.all_reduce_bytes.inc_by(bytes);
    }

    pub fn epoch(&self, images_per_second: f64) {
        self.images_per_second.set(images_per_second);
    }
}

/// Serves `registry` at `/metrics` on `listener` (HTTPS with `tls`) until `shutdown`
/// resolves, counting in `refused` the connections beyond the listener's limit.
pub async fn serve(
    listener: TcpListener,
    refused: Counter,
    tls: Option<Arc<ServerConfig>>,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new().route("/metrics", get(scrape)).with_state(registry);
    let listener = feral_proto::limits::Limited::new(listener, "metrics", feral_proto::limits::HTTP_CONNECTIONS, refused);
    feral_proto::https::serve(listener, tls, app, shutdown).await
}

async fn scrape(State(registry): State<Arc<Registry>>) -> Response {
    feral_proto::https::metrics_response(&registry)
}
