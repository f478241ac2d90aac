//! Reads of the agent's tables, and waits for what protocol tracing must produce for a pod: its
//! exact `http_events` rows and its request-duration histogram count in the agent's `/metrics`.
use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::observe;
use crate::wait::{self, CONVERGE};

/// Every row of the agent's table `table`, read as the table reader `token`.
pub async fn table_rows(url: &str, token: &str, table: &str) -> Result<Vec<Value>> {
    let path = format!("/v1/tables/{table}?format=json");
    let (code, body) = observe::agent_get(url, &path, Some(token)).await?;
    ensure!(code == 200, "GET /v1/tables/{table}: {code} {body}");
    Ok(serde_json::from_str(&body)?)
}

/// The profiler Tracepoint `cpu` in the test namespace over the pods labelled `app: busy`, which
/// run the CPU-bound `hot` fixture (`peers::compile_hot`).
pub const BUSY_PROFILER: &str = "apiVersion: sonde.dev/v1alpha1
kind: Tracepoint
metadata:
  name: cpu
  namespace: sonde-e2e
spec:
  selector:
    matchLabels: {app: busy}
  probe:
    profiler:
      frequencyHz: 99
";

/// How many `stack_traces` rows of `pod` (in `namespace`) hold the `hot` fixture's `hot_three`
/// frame.
pub fn hot_three_rows(rows: &[Value], namespace: &str, pod: &str) -> usize {
    rows.iter()
        .filter(|r| r["pod"] == pod && r["namespace"] == namespace)
        .filter(|r| {
            r["stack_trace"]
                .as_str()
                .unwrap_or("")
                .contains(";hot_three (hot.c:")
        })
        .count()
}

/// The server-side `http_events` rows of one pod that answered 200.
pub struct HttpServerRows<'a> {
    pub pod: &'a str,
    pub namespace: &'a str,
    pub local_port: u16,
    /// Further columns each row must equal (container, method, …).
    pub also: &'a [(&'a str, &'a str)],
}

impl HttpServerRows<'_> {
    fn matches(&self, row: &Value) -> bool {
        row["pod"] == self.pod
            && row["namespace"] == self.namespace
            && row["local_port"] == self.local_port
            && row["resp_status"] == 200
            && row["trace_role"] == "server"
            && self.also.iter().all(|(column, want)| row[*column] == *want)
    }
}

/// Waits until the request paths of `rows`, sorted, are exactly `paths`, while no row is
/// `unwanted` (`unwanted_what` names those rows in the error).
pub async fn http_paths(
    url: &str,
    token: &str,
    rows: &HttpServerRows<'_>,
    paths: &[&str],
    unwanted_what: &str,
    unwanted: impl Fn(&Value) -> bool,
) -> Result<()> {
    let pod = rows.pod;
    wait::until_ok(
        &format!("{} rows of pod {pod} in http_events", paths.len()),
        CONVERGE,
        || async {
            let all = table_rows(url, token, "http_events").await?;
            let bad: Vec<&Value> = all.iter().filter(|r| unwanted(r)).collect();
            ensure!(bad.is_empty(), "rows of {unwanted_what}: {bad:?}");
            let mut seen: Vec<&str> = all
                .iter()
                .filter(|r| rows.matches(r))
                .filter_map(|r| r["req_path"].as_str())
                .collect();
            seen.sort();
            ensure!(
                seen == paths,
                "http_events paths of {pod}: {seen:?} (all rows: {all:?})"
            );
            Ok(())
        },
    )
    .await
}

/// Waits until `/metrics` (read with `metrics_token`) has an
/// `http_server_request_duration_seconds_count` series of `pod` that also carries every one of
/// `labels` (`name="value"`) and counts exactly `count`, and `also` accepts the whole `/metrics` text.
pub async fn http_request_count(
    url: &str,
    metrics_token: &str,
    pod: &str,
    labels: &[&str],
    count: u64,
    also: impl Fn(&str) -> Result<()>,
) -> Result<()> {
    let pod_label = format!("pod=\"{pod}\"");
    let ending = format!(" {count}");
    wait::until_ok(
        &format!("http_server_request_duration_seconds of {pod} in /metrics"),
        CONVERGE,
        || async {
            let (_, metrics) = observe::agent_get(url, "/metrics", Some(metrics_token)).await?;
            let line = metrics
                .lines()
                .find(|l| {
                    l.starts_with("http_server_request_duration_seconds_count{")
                        && l.contains(&pod_label)
                        && labels.iter().all(|label| l.contains(label))
                })
                .with_context(|| {
                    format!("no http_server_request_duration_seconds series for {pod}")
                })?;
            ensure!(line.ends_with(&ending), "{line}");
            also(&metrics)
        },
    )
    .await
}
