//! Every node's tables in one query: `/v1/tables` and `/v1/tables/{name}` on the operator ask the
//! agent of every node (or of `?node=a,b`) and merge the answers — rows from all nodes, the newest
//! `limit` of them oldest first, in the format asked; the table list with counts summed and the
//! nodes that have each table. `/v1/profiles/pprof` and `/v1/profiles/flamegraph.svg` make one CPU
//! profile of every node's `stack_traces` rows ([`profiles`]). Each agent answers only what it answers its callers: the caller's
//! `Authorization` header goes with every request, so the agents' checks (a token allowed to get
//! `tables.sonde.dev`, cluster-wide or in `?namespace=`) decide here too, and this listener holds
//! no rights to data of its own.
//!
//! Nodes whose agent could not answer are named in the `Sonde-Failed-Nodes` header (with why);
//! `Sonde-Nodes` names those that did. With no answer at all, the first agent's refusal is
//! passed on (a 401 or 403 says what to bind), else a 502 names every node's failure.
mod agents;
mod merge;
mod profiles;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query as Params, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;

pub use agents::{AgentTls, AgentsConfig};
use merge::{Rows, Tables};

use crate::metrics::Metrics;

/// As many rows as one agent returns at most.
const MAX_LIMIT: usize = 100_000;
const DEFAULT_LIMIT: usize = 1000;
/// Agents asked at once.
const CONCURRENCY: usize = 16;
/// The agents' answers to one query held at once, at most: the operator's memory is bounded
/// whatever `limit` and however many nodes (its controllers live in the same process, under the
/// chart's 256 MiB limit). A query peaks at about twice this: the answers and the rows taken from
/// them, then the rows and the merged answer.
const MAX_ANSWER_BYTES: usize = 32 << 20;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(
        "cannot listen on {addr} for table queries: {source}; pick another --query-listen address"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the table-query server on {addr} stopped: {source}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot list the agent pods (selector {selector}) in namespace {namespace}: {source}; the operator needs `list pods` there (the chart's Role grants it)"
    )]
    ListAgents {
        namespace: String,
        selector: String,
        #[source]
        source: kube::Error,
    },
}

struct Shared {
    kube: kube::Client,
    agents: AgentsConfig,
    metrics: Arc<Metrics>,
}

pub fn router(kube: kube::Client, agents: AgentsConfig, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/v1/tables", get(tables))
        .route("/v1/tables/{name}", get(table))
        .route("/v1/profiles/pprof", get(profiles::pprof))
        .route("/v1/profiles/flamegraph.svg", get(profiles::flamegraph_svg))
        .with_state(Arc::new(Shared {
            kube,
            agents,
            metrics,
        }))
}

pub async fn serve(
    addr: SocketAddr,
    kube: kube::Client,
    agents: AgentsConfig,
    metrics: Arc<Metrics>,
) -> Result<(), QueryError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| QueryError::Bind { addr, source })?;
    tracing::info!(%addr, selector = %agents.selector, namespace = %agents.namespace, "serving every node's tables and profiles at /v1/tables and /v1/profiles");
    axum::serve(listener, router(kube, agents, metrics))
        .await
        .map_err(|source| QueryError::Serve { addr, source })
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (
        code,
        axum::Json(serde_json::json!({ "error": message.into() })),
    )
        .into_response()
}

/// What one agent answered, or why it did not.
type Answer = Result<(StatusCode, Bytes), String>;

/// Asks every agent of `nodes` (all when empty) for the path of `segments` with `query`, passing
/// `authorization`.
async fn ask(
    shared: &Shared,
    nodes: &[String],
    segments: &[&str],
    query: &[(&str, String)],
    authorization: Option<&HeaderValue>,
) -> Result<(Vec<(String, Answer)>, Vec<(String, String)>), QueryError> {
    let (agents, failed) = agents::find(&shared.kube, &shared.agents, nodes).await?;
    let held = AtomicUsize::new(0);
    let held = &held;
    let answers = futures::stream::iter(agents)
        .map(|agent| async move {
            let mut url = agent.base.clone();
            // Only URLs that cannot be a base refuse segments; http(s) ones always take them.
            if let Ok(mut path) = url.path_segments_mut() {
                path.pop_if_empty().extend(segments);
            }
            let mut request = agent.client.get(url).query(query);
            if let Some(value) = authorization {
                request = request.header(header::AUTHORIZATION, value.clone());
            }
            let answer = match request.send().await {
                Ok(response) => read(response, held).await,
                Err(e) => Err(format!("cannot reach it at {}: {}", agent.base, chain(&e))),
            };
            (agent.node, answer)
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    // By node, not by who answered first: which refusal is passed on, whose columns a table
    // list shows and the order of rows of the same time stay the same from query to query.
    let mut answers = answers;
    answers.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((answers, failed))
}

/// What an agent's 404 means: for a table's rows, that the node has none (a table is made where
/// its probe runs); for the table list, a refusal like any other.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NotFound {
    NoRows,
    Refusal,
}

/// Asks the agents of `?node=` (all by default) for the path of `segments` with `query`, with the
/// caller's `Authorization`, and sorts their answers into an [`Outcome`]: each 200 body goes to
/// `add` (its error fails that node). Also returns whether `add` took any body.
async fn gather(
    shared: &Shared,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    segments: &[&str],
    query: &[(&str, String)],
    not_found: NotFound,
    mut add: impl FnMut(&str, &[u8]) -> Result<(), String>,
) -> Result<(Outcome, bool), Box<Response>> {
    let (answers, failed) = ask(
        shared,
        &nodes_param(params),
        segments,
        query,
        headers.get(header::AUTHORIZATION),
    )
    .await
    .map_err(|e| Box::new(error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())))?;
    let mut outcome = Outcome::new(failed);
    let mut found = false;
    for (node, answer) in answers {
        match answer {
            Ok((StatusCode::OK, body)) => match add(&node, &body) {
                Ok(()) => {
                    found = true;
                    outcome.answered.push(node);
                }
                Err(why) => outcome.failed.push((node, why)),
            },
            Ok((StatusCode::NOT_FOUND, _)) if not_found == NotFound::NoRows => {
                outcome.answered.push(node);
            }
            Ok((status, body)) => outcome.refused(node, status, body),
            Err(why) => outcome.failed.push((node, why)),
        }
    }
    Ok((outcome, found))
}

/// An agent's answer, read while all answers together stay within [`MAX_ANSWER_BYTES`].
async fn read(mut response: reqwest::Response, held: &AtomicUsize) -> Answer {
    let status = response.status();
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let before = held.fetch_add(chunk.len(), Ordering::Relaxed);
                if before + chunk.len() > MAX_ANSWER_BYTES {
                    // Dropped whole: what it held is free for the other nodes' answers.
                    held.fetch_sub(body.len() + chunk.len(), Ordering::Relaxed);
                    return Err(format!(
                        "the nodes' answers exceed the {} MiB one query may hold; ask for fewer rows (limit, since) or fewer nodes (node=)",
                        MAX_ANSWER_BYTES >> 20
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok((status, Bytes::from(body))),
            Err(e) => return Err(format!("its answer broke off: {}", chain(&e))),
        }
    }
}

/// An error with its causes (reqwest's own message omits them).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// An agent's error answer in a few words: its `error` field, else its text.
fn refusal(status: StatusCode, body: &[u8]) -> String {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
    format!("{status}: {message}")
}

/// Merged answers, or what to say when none could be merged.
struct Outcome {
    answered: Vec<String>,
    failed: Vec<(String, String)>,
    /// The first agent's error answer, passed on when no agent answered.
    first_refusal: Option<(StatusCode, Bytes)>,
}

impl Outcome {
    fn new(failed: Vec<(String, String)>) -> Outcome {
        Outcome {
            answered: Vec::new(),
            failed,
            first_refusal: None,
        }
    }

    fn refused(&mut self, node: String, status: StatusCode, body: Bytes) {
        self.failed.push((node, refusal(status, &body)));
        self.first_refusal.get_or_insert((status, body));
    }

    /// The answer when nothing was merged: the first refusal, or every node's failure.
    fn nothing(self, metrics: &Metrics, what: &str) -> Response {
        metrics.queried("failed", self.failed.len());
        if let Some((status, body)) = self.first_refusal {
            return (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        }
        if self.failed.is_empty() {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "no agent to ask for {what}: no agent pod is running; is the agent DaemonSet scheduled?"
                ),
            );
        }
        error(
            StatusCode::BAD_GATEWAY,
            format!("no agent answered for {what}: {}", failures(&self.failed)),
        )
    }

    /// `complete` when every node answered, else `partial`.
    fn label(&self) -> &'static str {
        if self.failed.is_empty() {
            "complete"
        } else {
            "partial"
        }
    }

    fn respond(mut self, metrics: &Metrics, content_type: &str, body: Vec<u8>) -> Response {
        metrics.queried(self.label(), self.failed.len());
        self.answered.sort();
        self.failed.sort();
        let mut response =
            ([(header::CONTENT_TYPE, content_type.to_owned())], body).into_response();
        let headers = response.headers_mut();
        put(headers, "sonde-nodes", &self.answered.join(","));
        if !self.failed.is_empty() {
            put(headers, "sonde-failed-nodes", &failures(&self.failed));
        }
        response
    }
}

fn failures(failed: &[(String, String)]) -> String {
    failed
        .iter()
        .map(|(node, why)| format!("{node} ({why})"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A header of printable ASCII (what a header may hold; anything else becomes `?`).
fn put(headers: &mut HeaderMap, name: &'static str, value: &str) {
    let printable: String = value
        .chars()
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect();
    if let Ok(value) = HeaderValue::from_str(&printable) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

fn nodes_param(params: &HashMap<String, String>) -> Vec<String> {
    params
        .get("node")
        .map(|n| {
            n.split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

async fn tables(
    State(shared): State<Arc<Shared>>,
    Params(params): Params<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut merged = Tables::default();
    let gathered = gather(
        &shared,
        &params,
        &headers,
        &["v1", "tables"],
        &[],
        NotFound::Refusal,
        |node, body| merged.add(node, body).map_err(|e| e.to_string()),
    )
    .await;
    let outcome = match gathered {
        Ok((outcome, true)) => outcome,
        Ok((outcome, false)) => return outcome.nothing(&shared.metrics, "the table list"),
        Err(response) => return *response,
    };
    let body = serde_json::to_vec(&merged.into_json()).unwrap_or_default();
    outcome.respond(&shared.metrics, "application/json", body)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Ndjson,
    Csv,
}

async fn table(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Params(params): Params<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let limit = match params.get("limit").map(|l| l.parse::<usize>()) {
        None => DEFAULT_LIMIT,
        Some(Ok(l)) if (1..=MAX_LIMIT).contains(&l) => l,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "limit={:?}: give a number of rows from 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT})",
                    params.get("limit").map(String::as_str).unwrap_or_default()
                ),
            );
        }
    };
    let format = match params.get("format").map(String::as_str) {
        None | Some("json") => Format::Json,
        Some("ndjson") => Format::Ndjson,
        Some("csv") => Format::Csv,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("format={other:?}: give json, ndjson or csv"),
            );
        }
    };
    // Each agent's newest `limit` rows hold the newest `limit` of all.
    let mut query = vec![
        ("limit", limit.to_string()),
        (
            "format",
            if format == Format::Csv {
                "csv"
            } else {
                "ndjson"
            }
            .to_owned(),
        ),
    ];
    for key in ["since", "namespace"] {
        if let Some(value) = params.get(key) {
            query.push((key, value.clone()));
        }
    }
    let mut rows = Rows::default();
    let gathered = gather(
        &shared,
        &params,
        &headers,
        &["v1", "tables", &name],
        &query,
        NotFound::NoRows,
        |_, body| {
            let added = if format == Format::Csv {
                rows.add_csv(body)
            } else {
                rows.add_ndjson(body)
            };
            added.map_err(|e| e.to_string())
        },
    )
    .await;
    let outcome = match gathered {
        Ok((outcome, true)) => outcome,
        Ok((outcome, false)) if outcome.first_refusal.is_none() && !outcome.answered.is_empty() => {
            shared
                .metrics
                .queried(outcome.label(), outcome.failed.len());
            let unasked = if outcome.failed.is_empty() {
                String::new()
            } else {
                format!("; not answered: {}", failures(&outcome.failed))
            };
            return error(
                StatusCode::NOT_FOUND,
                format!(
                    "no node has a table named {name} (asked: {}{unasked}); GET /v1/tables lists every node's tables",
                    outcome.answered.join(", ")
                ),
            );
        }
        Ok((outcome, false)) => return outcome.nothing(&shared.metrics, &format!("table {name}")),
        Err(response) => return *response,
    };
    match format {
        Format::Json => outcome.respond(&shared.metrics, "application/json", rows.json(limit)),
        Format::Ndjson => {
            outcome.respond(&shared.metrics, "application/x-ndjson", rows.ndjson(limit))
        }
        Format::Csv => match rows.csv(limit) {
            Ok(body) => outcome.respond(&shared.metrics, "text/csv; charset=utf-8", body),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, body: &'static str) -> reqwest::Response {
        let response = axum::http::Response::builder()
            .status(status)
            .body(body)
            .expect("a response");
        reqwest::Response::from(response)
    }

    #[tokio::test]
    async fn answers_beyond_what_one_query_may_hold_are_refused_with_what_to_ask() {
        let held = AtomicUsize::new(0);
        let (status, body) = read(response(200, "{\"time_\":1}\n"), &held)
            .await
            .expect("within the bound");
        assert_eq!(
            (status, &body[..]),
            (StatusCode::OK, &b"{\"time_\":1}\n"[..])
        );
        assert_eq!(held.load(Ordering::Relaxed), body.len());
        let held = AtomicUsize::new(MAX_ANSWER_BYTES - 4);
        let refused = read(response(200, "{\"time_\":1}\n"), &held)
            .await
            .expect_err("beyond the bound");
        assert!(refused.contains("fewer rows"), "{refused}");
        // What the refused answer had taken is given back.
        assert_eq!(held.load(Ordering::Relaxed), MAX_ANSWER_BYTES - 4);
    }

    #[test]
    fn an_agents_refusal_is_told_by_its_error_field() {
        assert_eq!(
            refusal(
                StatusCode::FORBIDDEN,
                b"{\"error\":\"user x may not read tables\"}"
            ),
            "403 Forbidden: user x may not read tables"
        );
        assert_eq!(
            refusal(StatusCode::BAD_GATEWAY, b" upstream gone\n"),
            "502 Bad Gateway: upstream gone"
        );
        let mut headers = HeaderMap::new();
        put(&mut headers, "sonde-failed-nodes", "nöde-b (refused\n)");
        assert_eq!(headers["sonde-failed-nodes"], "n?de-b (refused?)");
    }
}
