//! The coordinator's HTTP endpoint (axum, on a listener of its own beside gRPC):
//! `/metrics` in the Prometheus text format ([`crate::metrics`]) and the web dashboard
//! ([`crate::dashboard`]).

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use feral_proto::limits::Limited;
use feral_proto::https::ServerConfig;

use crate::auth::{self, Tokens};
use crate::dashboard::{self, Dashboard};
use crate::leader::Role;
use crate::metrics::Metrics;

#[derive(Clone)]
struct Http {
    role: Role,
    /// A scrape needs one of these tokens (any role); none: `/metrics` is public.
    tokens: Option<Arc<Tokens>>,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
}

/// Serves HTTP on `listener` (HTTPS with `tls`) until `shutdown` resolves.
pub async fn serve(
    listener: Limited,
    tls: Option<Arc<ServerConfig>>,
    role: Role,
    dashboard: Dashboard,
    tokens: Option<Arc<Tokens>>,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(Http { role, tokens, metrics, registry })
        .merge(dashboard::routes(dashboard));
    feral_proto::https::serve(listener, tls, app, shutdown).await
}

async fn scrape(State(http): State<Http>, headers: HeaderMap) -> Response {
    let header = headers.get(AUTHORIZATION).map(|value| value.to_str().unwrap_or(""));
    if let Err(status) = auth::identify(http.tokens.as_deref(), header) {
        return (StatusCode::UNAUTHORIZED, status.message().to_owned()).into_response();
    }
    // A standby has no jobs or workers to count; its RPC metrics still show.
    if let Ok(control) = http.role.control() {
        http.metrics.show(&control.census().await);
    }
    feral_proto::https::metrics_response(&http.registry)
}
