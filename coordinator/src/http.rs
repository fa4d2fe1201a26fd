//! The coordinator's HTTP endpoint (axum, on a listener of its own beside gRPC):
//! `/metrics` in the Prometheus text format ([`crate::metrics`]) and the web dashboard
//! ([`crate::dashboard`]).

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use feral_proto::https::ServerConfig;

use crate::dashboard::{self, Dashboard};
use crate::leader::Role;
use crate::metrics::Metrics;

#[derive(Clone)]
struct Http {
    role: Role,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
}

/// Serves HTTP on `listener` (HTTPS with `tls`) until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    role: Role,
    dashboard: Dashboard,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(Http { role, metrics, registry })
        .merge(dashboard::routes(dashboard));
    feral_proto::https::serve(listener, tls, app, shutdown).await
}

async fn scrape(State(http): State<Http>) -> Response {
    // A standby has no jobs or workers to count; its RPC metrics still show.
    if let Ok(control) = http.role.control() {
        http.metrics.show(&control.census().await);
    }
    feral_proto::https::metrics_response(&http.registry)
}
