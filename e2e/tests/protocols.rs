//! Protocol tracing end to end: an HTTP Tracepoint selecting a fake pod that runs a real nginx (in a
//! kubelet-style cgroup) through the real operator and agent; curl requests to it become
//! `http_events` rows and histogram samples in `/metrics`, while an identical nginx outside the
//! selected pods yields nothing.
//!
//! Needs what `scenarios` needs (root, etcd, kube-apiserver, helm from `scripts/setup e2e`) plus
//! nginx and curl (`scripts/setup peers`).
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use sonde_api::Tracepoint;
use sonde_e2e::cluster::TEST_NAMESPACE;
use sonde_e2e::observe;
use sonde_e2e::process::Proc;
use sonde_e2e::single_node::SingleNode;
use sonde_e2e::suite::{self, Environment, Scenario};
use sonde_e2e::wait::{self, CONVERGE};

const NODE: &str = "node-h";
const PROBE_ID: &str = "Tracepoint/sonde-e2e/web-http";

struct Env {
    // Stopped before the node's processes and work directory (field order = drop order).
    _outside: Proc,
    node: SingleNode,
    pod_port: u16,
    outside_port: u16,
}

impl Environment for Env {
    fn diagnostics(&self) -> String {
        self.node.diagnostics()
    }
}

fn nginx() -> Result<PathBuf> {
    let path = PathBuf::from("/usr/sbin/nginx");
    ensure!(
        path.exists(),
        "nginx is not installed: run `scripts/setup peers`"
    );
    Ok(path)
}

/// An nginx config with one worker answering `return 200` on `port`, everything under `dir`.
fn nginx_conf(dir: &Path, port: u16) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process on; worker_processes 1; pid {d}/nginx.pid; error_log stderr;\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
               server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"hello\\n\"; }} }} }}\n",
            d = dir.display()
        ),
    )?;
    Ok(conf)
}

fn setup() -> Result<Env> {
    let nginx = nginx()?;
    let node = SingleNode::start("sonde-e2e-protocols-", NODE)?;
    let pod_port = sonde_e2e::ports::free_port()?;
    let outside_port = sonde_e2e::ports::free_port()?;
    let pod_conf = nginx_conf(&node.dir.path().join("nginx-pod"), pod_port)?;
    let outside_conf = nginx_conf(&node.dir.path().join("nginx-outside"), outside_port)?;
    node.start_pod(
        "web-1",
        "web",
        "nginx",
        vec![
            nginx.to_string_lossy().into_owned(),
            "-c".into(),
            pod_conf.to_string_lossy().into_owned(),
        ],
    )?;
    let mut outside = Command::new(&nginx);
    outside.arg("-c").arg(&outside_conf);
    let outside = Proc::spawn("nginx-outside", outside, &node.logs)?;
    for port in [pod_port, outside_port] {
        node.rt.block_on(wait::until_ok(
            &format!("nginx listening on {port}"),
            Duration::from_secs(10),
            || async move {
                std::net::TcpStream::connect(("127.0.0.1", port))?;
                Ok(())
            },
        ))?;
    }
    node.start_sonde()?;
    Ok(Env {
        _outside: outside,
        node,
        pod_port,
        outside_port,
    })
}

const TRACEPOINT: &str = "apiVersion: sonde.dev/v1alpha1
kind: Tracepoint
metadata:
  name: web-http
  namespace: sonde-e2e
spec:
  selector:
    matchLabels: {app: web}
  probe:
    protocols: [http]
";

fn curl(port: u16, path: &str) -> Result<()> {
    let out = Command::new("curl")
        .args([
            "-sf",
            "--http1.1",
            &format!("http://127.0.0.1:{port}{path}"),
        ])
        .output()
        .context("running curl: run `scripts/setup peers`")?;
    ensure!(
        out.status.success() && out.stdout == b"hello\n",
        "curl to port {port}: {out:?}"
    );
    Ok(())
}

fn an_http_tracepoint_on_a_fake_pod_fills_http_events_and_the_histogram_but_not_for_other_processes(
    env: &Env,
) -> Result<()> {
    let node = &env.node;
    node.cluster.kubectl.apply(TRACEPOINT)?;
    node.wait_ready_and_attached(
        &kube::Api::<Tracepoint>::namespaced(node.cluster.client.clone(), TEST_NAMESPACE),
        "web-http",
        PROBE_ID,
    )?;
    for i in 0..3 {
        curl(env.pod_port, &format!("/inside/{i}"))?;
        curl(env.outside_port, &format!("/outside/{i}"))?;
    }
    let url = node.agent_url()?;
    let token = node.reader_token()?;
    let (pod_port, outside_port) = (env.pod_port, env.outside_port);
    node.rt.block_on(async {
        wait::until_ok(
            "three rows of pod web-1 in http_events",
            CONVERGE,
            || async {
                let (code, body) =
                    observe::agent_get(&url, "/v1/tables/http_events?format=json", Some(&token))
                        .await?;
                ensure!(code == 200, "GET /v1/tables/http_events: {code} {body}");
                let rows: Vec<serde_json::Value> = serde_json::from_str(&body)?;
                let outside: Vec<&serde_json::Value> = rows
                    .iter()
                    .filter(|r| r["local_port"] == outside_port)
                    .collect();
                ensure!(
                    outside.is_empty(),
                    "rows of the nginx outside the pod: {outside:?}"
                );
                let mut paths: Vec<&str> = rows
                    .iter()
                    .filter(|r| {
                        r["pod"] == "web-1"
                            && r["namespace"] == TEST_NAMESPACE
                            && r["container"] == "nginx"
                            && r["local_port"] == pod_port
                            && r["req_method"] == "GET"
                            && r["resp_status"] == 200
                            && r["trace_role"] == "server"
                    })
                    .filter_map(|r| r["req_path"].as_str())
                    .collect();
                paths.sort();
                ensure!(
                    paths == ["/inside/0", "/inside/1", "/inside/2"],
                    "http_events paths of web-1: {paths:?} (all rows: {rows:?})"
                );
                Ok(())
            },
        )
        .await?;
        wait::until_ok(
            "http_server_request_duration_seconds of web-1 in /metrics",
            CONVERGE,
            || async {
                let (_, metrics) = observe::agent_get(&url, "/metrics", None).await?;
                let line = metrics
                    .lines()
                    .find(|l| {
                        l.starts_with("http_server_request_duration_seconds_count{")
                            && l.contains("pod=\"web-1\"")
                            && l.contains("http_request_method=\"GET\"")
                            && l.contains("http_response_status_code=\"200\"")
                    })
                    .context("no http_server_request_duration_seconds series for web-1")?;
                ensure!(line.ends_with(" 3"), "{line}");
                ensure!(
                    metrics.contains("sonde_events_dropped_total{reason=\"ring_full\"}"),
                    "no drop counters in /metrics"
                );
                Ok(())
            },
        )
        .await
    })
}

fn main() -> ExitCode {
    suite::main(
        setup,
        vec![Scenario::new(
            "an_http_tracepoint_on_a_fake_pod_fills_http_events_and_the_histogram_but_not_for_other_processes",
            an_http_tracepoint_on_a_fake_pod_fills_http_events_and_the_histogram_but_not_for_other_processes,
        )],
    )
}
