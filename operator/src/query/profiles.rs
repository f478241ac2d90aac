//! `/v1/profiles/pprof` and `/v1/profiles/flamegraph.svg` of every node (or of `?node=`): the
//! `stack_traces` rows of the last `seconds` from each node's agent, narrowed as an agent narrows
//! them (`namespace`, `pod`, `container`, `pid`), made into one profile — a service's pods on
//! several nodes in one flame graph.
use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query as Params, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use sonde_profile::flamegraph;
use sonde_profile::pprof::{self, StackRow};
use sonde_profile::query::ProfileQuery;

use super::{MAX_LIMIT, NotFound, Outcome, Shared, error, gather};

/// The profiler's table.
const TABLE: &str = "stack_traces";

/// A `stack_traces` row as an agent encodes it (the other columns are not needed).
#[derive(serde::Deserialize)]
struct StackLine {
    namespace: String,
    pod: String,
    container: String,
    pid: i64,
    stack_trace: String,
    count: i64,
}

/// The rows every node's agent has for `params`, and what the nodes answered; or the answer when
/// none could be read.
async fn rows(
    shared: &Shared,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<(ProfileQuery, Vec<StackRow>, Outcome), Box<Response>> {
    let query = ProfileQuery::parse(params)
        .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, e.to_string())))?;
    let (since, _) = query.window();
    let mut upstream = vec![
        ("limit", MAX_LIMIT.to_string()),
        ("format", "ndjson".to_owned()),
        ("since", since.to_string()),
    ];
    if let Some(namespace) = &query.namespace {
        upstream.push(("namespace", namespace.clone()));
    }
    let mut rows = Vec::new();
    let (outcome, _) = gather(
        shared,
        params,
        headers,
        &["v1", "tables", TABLE],
        &upstream,
        // No profiler ran on that node: no samples there.
        NotFound::NoRows,
        |_, body| {
            rows.append(&mut stack_rows(body, &query)?);
            Ok(())
        },
    )
    .await?;
    if outcome.answered.is_empty() {
        return Err(Box::new(outcome.nothing(&shared.metrics, "the profile")));
    }
    Ok((query, rows, outcome))
}

/// The rows of one agent's NDJSON answer that `query` selects.
fn stack_rows(body: &[u8], query: &ProfileQuery) -> Result<Vec<StackRow>, String> {
    let mut rows = Vec::new();
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let row: StackLine = serde_json::from_slice(line)
            .map_err(|e| format!("line {} of its {TABLE} rows is no stack row: {e}", i + 1))?;
        let row = StackRow {
            namespace: row.namespace,
            pod: row.pod,
            container: row.container,
            pid: row.pid,
            stack: row.stack_trace,
            count: row.count,
        };
        if query.matches(&row) {
            rows.push(row);
        }
    }
    Ok(rows)
}

pub(super) async fn pprof(
    State(shared): State<Arc<Shared>>,
    Params(params): Params<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let (query, rows, outcome) = match rows(&shared, &params, &headers).await {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let (start, duration) = query.window();
    let profile = pprof::build(&rows, query.hz, start, duration);
    match pprof::encode_gzip(&profile) {
        Ok(body) => {
            let mut response = outcome.respond(&shared.metrics, "application/octet-stream", body);
            response.headers_mut().insert(
                header::CONTENT_DISPOSITION,
                header::HeaderValue::from_static("attachment; filename=\"profile.pb.gz\""),
            );
            response
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot compress the profile: {e}"),
        ),
    }
}

pub(super) async fn flamegraph_svg(
    State(shared): State<Arc<Shared>>,
    Params(params): Params<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let (query, rows, outcome) = match rows(&shared, &params, &headers).await {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let place = if params.contains_key("node") {
        outcome.answered.join(", ")
    } else {
        "every node".to_owned()
    };
    match flamegraph::svg(&rows, &query.title(&place)) {
        Ok(body) => outcome.respond(&shared.metrics, "image/svg+xml", body),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot draw the flame graph: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_rows_are_read_from_an_agents_answer_and_narrowed() {
        let body = br#"{"time_":1,"node":"a","namespace":"shop","pod":"web-1","container":"app","pid":7,"stack_trace_id":3,"stack_trace":"main;work","count":5}
{"time_":2,"node":"a","namespace":"shop","pod":"web-2","container":"app","pid":8,"stack_trace_id":4,"stack_trace":"main;idle","count":1}
"#;
        let params: HashMap<String, String> = [("pod".to_owned(), "web-1".to_owned())]
            .into_iter()
            .collect();
        let query = ProfileQuery::parse(&params).expect("query");
        let rows = stack_rows(body, &query).expect("rows");
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].stack.as_str(), rows[0].count), ("main;work", 5));
        let err = stack_rows(b"{\"time_\":1}\n", &query).expect_err("no stack");
        assert!(err.contains("line 1"), "{err}");
    }
}
