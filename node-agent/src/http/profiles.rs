//! `GET /v1/profiles/pprof` and `GET /v1/profiles/flamegraph.svg`: the `stack_traces` rows of the
//! last `seconds` (default 60), optionally narrowed by `namespace`, `pod`, `container` and `pid`,
//! as a gzip'd pprof profile or a flame graph.
use std::collections::HashMap;

use axum::extract::{Query as RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::Shared;
use super::handlers::error;
use crate::probes::profiler::pprof::{self, StackRow};
use crate::probes::profiler::{TABLE, flamegraph};
use crate::tables::{MAX_LIMIT, Query, TablesError, Value};
use sonde_profile::query::ProfileQuery;

/// The selected rows, or an error response.
fn rows(
    state: &Shared,
    params: &HashMap<String, String>,
) -> Result<(ProfileQuery, Vec<StackRow>), (StatusCode, String)> {
    let query =
        ProfileQuery::parse(params).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    let (since, _) = query.window();
    let result = match state.store.query(
        TABLE,
        &Query {
            limit: MAX_LIMIT,
            since_ns: Some(since),
        },
    ) {
        Ok(r) => r,
        // No profiler ran yet: an empty profile, not an error.
        Err(TablesError::NotFound { .. }) => return Ok((query, Vec::new())),
        Err(e) => return Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    };
    let rows = result
        .rows
        .into_iter()
        .filter_map(|r| {
            let (stack, count) = match r.values.as_slice() {
                [_, Value::String(stack), Value::Int64(count)] => (stack.clone(), *count),
                _ => return None,
            };
            Some(StackRow {
                namespace: r.namespace,
                pod: r.pod,
                container: r.container,
                pid: r.pid,
                stack,
                count,
            })
        })
        .filter(|r| query.matches(r))
        .collect();
    Ok((query, rows))
}

pub(super) async fn pprof(
    State(state): State<Shared>,
    RawQuery(params): RawQuery<HashMap<String, String>>,
) -> Response {
    let (query, rows) = match rows(&state, &params) {
        Ok(r) => r,
        Err((code, message)) => return error(code, message),
    };
    let (start, duration) = query.window();
    let profile = pprof::build(&rows, query.hz, start, duration);
    match pprof::encode_gzip(&profile) {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"profile.pb.gz\"",
                ),
            ],
            body,
        )
            .into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot compress the profile: {e}"),
        ),
    }
}

pub(super) async fn flamegraph_svg(
    State(state): State<Shared>,
    RawQuery(params): RawQuery<HashMap<String, String>>,
) -> Response {
    let (query, rows) = match rows(&state, &params) {
        Ok(r) => r,
        Err((code, message)) => return error(code, message),
    };
    let title = query.title(&state.node);
    match flamegraph::svg(&rows, &title) {
        Ok(body) => ([(header::CONTENT_TYPE, "image/svg+xml")], body).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot draw the flame graph: {e}"),
        ),
    }
}
