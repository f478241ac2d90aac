//! Request handlers. Errors are JSON objects `{"error": "..."}` whose message says what to do.
use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query as RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use sonde_api::{NodeCapabilities, ProbeState};

use super::{Mode, Shared};
use crate::source::manifests::ManifestErrorReport;
use crate::tables::{Query, TableInfo, TablesError, encode};

pub(super) fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

pub(super) async fn readyz(State(state): State<Shared>) -> Response {
    let mut missing = Vec::new();
    if state.capabilities.borrow().is_none() {
        missing.push("node capabilities are still being detected");
    }
    if !*state.applied.borrow() {
        missing.push(match state.mode {
            Mode::Cluster => "the NodeAssignment has not been applied yet",
            Mode::Standalone => "the manifests have not been applied yet",
        });
    }
    if missing.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", missing.join("; ")),
        )
            .into_response()
    }
}

pub(super) async fn metrics(State(state): State<Shared>) -> Response {
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}"),
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ProbeView {
    id: String,
    kind: String,
    state: ProbeState,
    message: String,
    targets_attached: u32,
    restarts: u32,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusView {
    node: String,
    mode: Mode,
    agent_version: &'static str,
    capabilities: Option<NodeCapabilities>,
    probes: Vec<ProbeView>,
    manifest_errors: Vec<ManifestErrorReport>,
}

pub(super) async fn status(State(state): State<Shared>) -> Json<serde_json::Value> {
    let probes = state
        .probes
        .borrow()
        .iter()
        .map(|p| ProbeView {
            id: p.id.clone(),
            // Ids are `<kind>/...`.
            kind: p.id.split('/').next().unwrap_or_default().to_owned(),
            state: p.state,
            message: p.message.clone(),
            targets_attached: p.targets_attached,
            restarts: p.restarts,
        })
        .collect();
    let view = StatusView {
        node: state.node.clone(),
        mode: state.mode,
        agent_version: env!("CARGO_PKG_VERSION"),
        capabilities: state.capabilities.borrow().clone(),
        probes,
        manifest_errors: state.manifest_errors.borrow().clone(),
    };
    Json(serde_json::to_value(view).unwrap_or_default())
}

pub(super) async fn tables(State(state): State<Shared>) -> Json<Vec<TableInfo>> {
    Json(state.store.list())
}

pub(super) async fn table(
    State(state): State<Shared>,
    Path(name): Path<String>,
    RawQuery(params): RawQuery<HashMap<String, String>>,
) -> Response {
    let parsed = Query::parse(
        params.get("limit").map(String::as_str),
        params.get("since").map(String::as_str),
        params.get("format").map(String::as_str),
    );
    let (query, format) = match parsed {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    // Only the rows of `namespace` when it is given: a reader granted that namespace alone
    // is authorized for exactly these (see `auth`).
    let namespace = params
        .get("namespace")
        .map(String::as_str)
        .filter(|ns| !ns.is_empty());
    match state.store.query_in(&name, &query, namespace) {
        Ok(result) => (
            [(header::CONTENT_TYPE, format.content_type())],
            encode(&result, format),
        )
            .into_response(),
        Err(e @ TablesError::NotFound { .. }) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
