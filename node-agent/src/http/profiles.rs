//! `GET /v1/profiles/pprof` and `GET /v1/profiles/flamegraph.svg`: the `stack_traces` rows of the
//! last `seconds` (default 60), optionally narrowed by `namespace`, `pod`, `container` and `pid`,
//! as a gzip'd pprof profile or a flame graph.
use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Query as RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::Shared;
use super::handlers::error;
use crate::probes::profiler::pprof::{self, StackRow};
use crate::probes::profiler::{DEFAULT_FREQUENCY_HZ, TABLE, flamegraph};
use crate::tables::{MAX_LIMIT, Query, TablesError, Value};

/// Largest accepted `seconds`.
pub const MAX_SECONDS: u64 = 24 * 3600;
const DEFAULT_SECONDS: u64 = 60;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProfileQueryError {
    #[error(
        "seconds={value} is not accepted: give a whole number from 1 to {MAX_SECONDS} (default {DEFAULT_SECONDS})"
    )]
    Seconds { value: String },
    #[error("pid={value} is not accepted: give a process id (a whole number)")]
    Pid { value: String },
    #[error(
        "hz={value} is not accepted: give the sampling frequency of the profiler, 1 to 1000 (default {DEFAULT_FREQUENCY_HZ})"
    )]
    Hz { value: String },
}

/// Parsed query parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileQuery {
    pub seconds: u64,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container: Option<String>,
    pub pid: Option<i64>,
    /// Sampling frequency the CPU time of a sample is computed with.
    pub hz: u64,
}

impl ProfileQuery {
    pub fn parse(params: &HashMap<String, String>) -> Result<ProfileQuery, ProfileQueryError> {
        let seconds = match params.get("seconds") {
            None => DEFAULT_SECONDS,
            Some(v) => match v.trim().parse::<u64>() {
                Ok(n) if (1..=MAX_SECONDS).contains(&n) => n,
                _ => return Err(ProfileQueryError::Seconds { value: v.clone() }),
            },
        };
        let pid = params
            .get("pid")
            .map(|v| {
                v.trim()
                    .parse::<i64>()
                    .map_err(|_| ProfileQueryError::Pid { value: v.clone() })
            })
            .transpose()?;
        let hz = match params.get("hz") {
            None => u64::from(DEFAULT_FREQUENCY_HZ),
            Some(v) => match v.trim().parse::<u64>() {
                Ok(n) if (1..=1000).contains(&n) => n,
                _ => return Err(ProfileQueryError::Hz { value: v.clone() }),
            },
        };
        let text = |k: &str| params.get(k).filter(|v| !v.is_empty()).cloned();
        Ok(ProfileQuery {
            seconds,
            namespace: text("namespace"),
            pod: text("pod"),
            container: text("container"),
            pid,
            hz,
        })
    }

    fn matches(&self, row: &StackRow) -> bool {
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        eq(&self.namespace, &row.namespace)
            && eq(&self.pod, &row.pod)
            && eq(&self.container, &row.container)
            && self.pid.is_none_or(|p| p == row.pid)
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// The selected rows, or an error response.
fn rows(
    state: &Shared,
    params: &HashMap<String, String>,
) -> Result<(ProfileQuery, Vec<StackRow>), (StatusCode, String)> {
    let query =
        ProfileQuery::parse(params).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    let since = now_ns() - (query.seconds as i64) * 1_000_000_000;
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
    let duration = (query.seconds as i64) * 1_000_000_000;
    let profile = pprof::build(&rows, query.hz, now_ns() - duration, duration);
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
    let mut scope: Vec<String> = [
        ("namespace", &query.namespace),
        ("pod", &query.pod),
        ("container", &query.container),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
    .collect();
    if let Some(pid) = query.pid {
        scope.push(format!("pid={pid}"));
    }
    let title = format!(
        "CPU on {} — last {}s{}",
        state.node,
        query.seconds,
        if scope.is_empty() {
            String::new()
        } else {
            format!(" ({})", scope.join(", "))
        }
    );
    match flamegraph::svg(&rows, &title) {
        Ok(body) => ([(header::CONTENT_TYPE, "image/svg+xml")], body).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot draw the flame graph: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn bad_parameters_are_named_with_their_value() {
        let e = ProfileQuery::parse(&params(&[("seconds", "0")])).unwrap_err();
        assert!(e.to_string().starts_with("seconds=0 is not accepted"));
        let e = ProfileQuery::parse(&params(&[("pid", "x")])).unwrap_err();
        assert!(e.to_string().starts_with("pid=x"));
        let q = ProfileQuery::parse(&params(&[("pod", "a"), ("namespace", "")])).unwrap();
        assert_eq!(q.seconds, 60);
        assert_eq!(q.pod.as_deref(), Some("a"));
        assert_eq!(q.namespace, None);
    }
}
