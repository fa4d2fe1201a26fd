//! The coordinator's HTTP endpoint (axum, on a listener of its own beside gRPC):
//! `/metrics` in the Prometheus text format ([`crate::metrics`]) and the web dashboard
//! ([`crate::dashboard`]).

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header::{AUTHORIZATION, HOST};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use feral_proto::https::ServerConfig;
use feral_proto::limits::Limited;
use prometheus_client::registry::Registry;

use crate::auth::{self, Tokens};
use crate::dashboard::{self, Dashboard};
use crate::leader::Role;
use crate::metrics::Metrics;

/// The host names the listener answers to, as the `Host` header gives them (port aside).
/// A page on a loopback listener answers only to loopback names, so that a web page the
/// user visits cannot reach it under a name of its own (DNS rebinding).
#[derive(Clone, Debug)]
pub struct Hosts(Option<Vec<String>>);

impl Hosts {
    /// `configured` (if any); else loopback names on a loopback listener; else any host.
    pub fn new(configured: &[String], loopback: bool) -> Self {
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        match (configured.is_empty(), loopback) {
            (false, true) => Self(Some(configured.iter().map(|h| h.to_ascii_lowercase()).chain(names(&["localhost", "127.0.0.1", "[::1]"])).collect())),
            (false, false) => Self(Some(configured.iter().map(|h| h.to_ascii_lowercase()).collect())),
            (true, true) => Self(Some(names(&["localhost", "127.0.0.1", "[::1]"]))),
            (true, false) => Self(None),
        }
    }

    /// Whether any host is answered.
    pub fn is_open(&self) -> bool {
        self.0.is_none()
    }

    fn allows(&self, host: &str) -> bool {
        let Some(names) = &self.0 else { return true };
        // `name:port`, or `[v6]:port`: the name is what precedes the last colon after any `]`.
        let name = match host.rfind(':') {
            Some(colon) if !host[colon..].contains(']') => &host[..colon],
            _ => host,
        };
        names.iter().any(|allowed| allowed.eq_ignore_ascii_case(name))
    }
}

/// What the HTTP listener checks before it answers.
pub struct Guards {
    /// A scrape of `/metrics` needs one of these tokens; none: it is public.
    pub metrics_tokens: Option<Arc<Tokens>>,
    pub hosts: Hosts,
}

/// What `/metrics` reports: the coordinator's role, its counters and the registry they
/// are encoded from.
#[derive(Clone)]
pub struct Scrape {
    pub role: Role,
    pub metrics: Arc<Metrics>,
    pub registry: Arc<Registry>,
}

#[derive(Clone)]
struct Http {
    scrape: Scrape,
    /// A scrape needs one of these tokens (any role); none: `/metrics` is public.
    tokens: Option<Arc<Tokens>>,
}

/// Serves HTTP on `listener` (HTTPS with `tls`) until `shutdown` resolves.
pub async fn serve(
    listener: Limited,
    tls: Option<Arc<ServerConfig>>,
    metrics: Scrape,
    dashboard: Dashboard,
    guards: Guards,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(Http { scrape: metrics, tokens: guards.metrics_tokens })
        .merge(dashboard::routes(dashboard))
        .layer(axum::middleware::from_fn_with_state(Arc::new(guards.hosts), host_checked));
    feral_proto::https::serve(listener, tls, app, shutdown).await
}

/// Answers only requests whose `Host` the listener answers to (421 otherwise).
async fn host_checked(State(hosts): State<Arc<Hosts>>, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let host = request.headers().get(HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if !hosts.allows(host) {
        let shown: String = host.chars().take(64).flat_map(char::escape_debug).collect();
        return (StatusCode::MISDIRECTED_REQUEST, format!("this listener does not answer to host \"{shown}\" (http_hosts)")).into_response();
    }
    next.run(request).await
}

async fn scrape(State(http): State<Http>, headers: HeaderMap) -> Response {
    let header = headers.get(AUTHORIZATION).map(|value| value.to_str().unwrap_or(""));
    if let Err(status) = auth::identify(http.tokens.as_deref(), header) {
        return (StatusCode::UNAUTHORIZED, status.message().to_owned()).into_response();
    }
    // A standby has no jobs or workers to count; its RPC metrics still show.
    if let Ok(control) = http.scrape.role.control() {
        http.scrape.metrics.show(&control.census().await);
    }
    feral_proto::https::metrics_response(&http.scrape.registry)
}

#[cfg(test)]
mod tests {
    use super::Hosts;

    #[test]
    fn a_loopback_listener_answers_to_loopback_names_and_configured_hosts_only() {
        let loopback = Hosts::new(&[], true);
        for host in ["localhost:7071", "127.0.0.1:7071", "[::1]:7071", "LOCALHOST"] {
            assert!(loopback.allows(host), "{host}");
        }
        for host in ["evil.example:7071", "", "127.0.0.1.evil.example"] {
            assert!(!loopback.allows(host), "{host}");
        }
        let configured = Hosts::new(&["feral.example.org".into()], false);
        assert!(configured.allows("feral.example.org:443") && !configured.allows("localhost:7071") && !configured.allows("other.example"));
        assert!(Hosts::new(&[], false).is_open() && Hosts::new(&[], false).allows("anything"));
    }
}
