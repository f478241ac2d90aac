//! The agent's one HTTP listener: `/healthz`, `/readyz` (open), `/metrics` (in a cluster a bearer
//! token allowed to get the non-resource URL `/metrics`, unless `--metrics-auth=false`: its series
//! name pods, routes and error types of captured traffic) and `/v1/status`, `/v1/tables`,
//! `/v1/tables/{name}`, `/v1/profiles/{pprof,flamegraph.svg}` (in a cluster a bearer token allowed
//! to get `tables.sonde.dev`, cluster-wide or in the namespace asked for, see `auth`: tables hold
//! request bodies). With `--tls-cert-file` it serves HTTPS only, see `tls`.
mod auth;
mod handlers;
mod profiles;
#[cfg(test)]
mod tests;
pub mod tls;

use std::sync::Arc;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use prometheus_client::registry::Registry;
use sonde_api::{NodeCapabilities, ProbeStatus};
use tokio::sync::watch;

pub use auth::Authorizer;

use crate::source::manifests::ManifestErrorReport;
use crate::tables::Store;
use crate::telemetry::{HttpLabels, Telemetry};

/// How the agent gets its desired probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Standalone,
    Cluster,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Standalone => "standalone",
            Mode::Cluster => "cluster",
        }
    }
}

/// Everything the handlers read. Built once at startup.
pub struct AppState {
    pub node: String,
    pub mode: Mode,
    pub store: Store,
    pub registry: Registry,
    pub telemetry: Telemetry,
    /// None until detection finished.
    pub capabilities: watch::Receiver<Option<NodeCapabilities>>,
    pub probes: watch::Receiver<Vec<ProbeStatus>>,
    pub manifest_errors: watch::Receiver<Vec<ManifestErrorReport>>,
    /// True once the first desired state was applied.
    pub applied: watch::Receiver<bool>,
    /// Checks bearer tokens on `/v1/*` (and `/metrics`, see `metrics_auth`); None in standalone
    /// mode (listening on loopback).
    pub auth: Option<Authorizer>,
    /// Whether `/metrics` needs a token too when `auth` is set (`--metrics-auth`).
    pub metrics_auth: bool,
}

type Shared = Arc<AppState>;

/// The agent's routes.
pub fn router(state: AppState) -> Router {
    let state = Arc::new(state);
    let v1 = Router::new()
        .route("/v1/status", get(handlers::status))
        .route("/v1/tables", get(handlers::tables))
        .route("/v1/tables/{name}", get(handlers::table))
        .route("/v1/profiles/pprof", get(profiles::pprof))
        .route("/v1/profiles/flamegraph.svg", get(profiles::flamegraph_svg))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    let metrics = Router::new()
        .route("/metrics", get(handlers::metrics))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_metrics_token,
        ));
    Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .merge(metrics)
        .merge(v1)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

/// Bounded route label: the route template, or `other`.
fn route_label(path: Option<&str>) -> &'static str {
    match path {
        Some("/metrics") => "/metrics",
        Some("/healthz") => "/healthz",
        Some("/readyz") => "/readyz",
        Some("/v1/status") => "/v1/status",
        Some("/v1/tables") => "/v1/tables",
        Some("/v1/tables/{name}") => "/v1/tables/{name}",
        Some("/v1/profiles/pprof") => "/v1/profiles/pprof",
        Some("/v1/profiles/flamegraph.svg") => "/v1/profiles/flamegraph.svg",
        _ => "other",
    }
}

async fn count_requests(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let route = route_label(
        req.extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    );
    let response = next.run(req).await;
    state
        .telemetry
        .http_requests
        .get_or_create(&HttpLabels {
            route,
            code: response.status().as_u16(),
        })
        .inc();
    response
}

/// Serves `router` on `listener` until `shutdown` completes: over TLS with `tls` (failed
/// handshakes counted in `handshake_failures`), else plain HTTP.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    handshake_failures: prometheus_client::metrics::counter::Counter,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match tls {
        Some(config) => {
            axum::serve(
                tls::TlsListener::new(listener, config, handshake_failures),
                router,
            )
            .with_graceful_shutdown(shutdown)
            .await
        }
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}
