//! Protocol tracing end to end: an HTTP Tracepoint selecting a fake pod that runs a real nginx (in a
//! kubelet-style cgroup) through the real operator and agent; curl requests to it become
//! `http_events` rows and histogram samples in `/metrics`, while an identical nginx outside the
//! selected pods yields nothing.
//!
//! Needs what `scenarios` needs (root, etcd, kube-apiserver, helm from `scripts/setup e2e`) plus
//! nginx and curl (`scripts/setup peers`).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use sonde_api::{ProbeState, Tracepoint};
use sonde_e2e::cluster::{Cluster, Install, TEST_NAMESPACE};
use sonde_e2e::fake_pod::{self, FakePod, PodSpec};
use sonde_e2e::observe;
use sonde_e2e::process::Proc;
use sonde_e2e::sonde::{Agent, Operator};
use sonde_e2e::suite::{self, Environment, Scenario};
use sonde_e2e::tools::{self, SondeBinaries};
use sonde_e2e::wait::{self, CONVERGE};

const NODE: &str = "node-h";
const PROBE_ID: &str = "Tracepoint/sonde-e2e/web-http";

struct Env {
    operator: Mutex<Option<Operator>>,
    agent: Mutex<Option<Agent>>,
    outside: Mutex<Option<Proc>>,
    pods: Mutex<Vec<FakePod>>,
    cluster: Cluster,
    pod_port: u16,
    outside_port: u16,
    rt: tokio::runtime::Runtime,
    _bins: SondeBinaries,
    _dir: tempfile::TempDir,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Environment for Env {
    fn diagnostics(&self) -> String {
        let mut out = String::new();
        if let Some(op) = lock(&self.operator).as_ref() {
            out += &suite::log_section("operator", op.proc.log_path(), 30);
        }
        if let Some(agent) = lock(&self.agent).as_ref() {
            out += &suite::log_section("agent", agent.proc.log_path(), 60);
        }
        out
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
    let bins = tools::build_sonde()?;
    let rt = tokio::runtime::Runtime::new()?;
    let dir = suite::work_dir("sonde-e2e-protocols-")?;
    let logs = dir.path().join("logs");
    let cluster = rt.block_on(Cluster::start(dir.path(), Install { rbac: true }))?;
    rt.block_on(fake_pod::create_node(
        &cluster.client,
        NODE,
        &BTreeMap::new(),
    ))?;
    let pod_port = sonde_e2e::ports::free_port()?;
    let outside_port = sonde_e2e::ports::free_port()?;
    let pod_conf = nginx_conf(&dir.path().join("nginx-pod"), pod_port)?;
    let outside_conf = nginx_conf(&dir.path().join("nginx-outside"), outside_port)?;
    let env = Env {
        operator: Mutex::new(None),
        agent: Mutex::new(None),
        outside: Mutex::new(None),
        pods: Mutex::new(vec![]),
        cluster,
        pod_port,
        outside_port,
        rt,
        _bins: bins,
        _dir: dir,
    };
    let spec = PodSpec {
        namespace: TEST_NAMESPACE.into(),
        name: "web-1".into(),
        node: NODE.into(),
        labels: BTreeMap::from([("app".to_string(), "web".to_string())]),
        container: "nginx".into(),
        command: vec![
            nginx.to_string_lossy().into_owned(),
            "-c".into(),
            pod_conf.to_string_lossy().into_owned(),
        ],
    };
    let pod = env
        .rt
        .block_on(FakePod::start(&env.cluster.client, &spec, &logs))?;
    lock(&env.pods).push(pod);
    let mut outside = Command::new(&nginx);
    outside.arg("-c").arg(&outside_conf);
    *lock(&env.outside) = Some(Proc::spawn("nginx-outside", outside, &logs)?);
    for port in [pod_port, outside_port] {
        env.rt.block_on(wait::until_ok(
            &format!("nginx listening on {port}"),
            Duration::from_secs(10),
            || async move {
                std::net::TcpStream::connect(("127.0.0.1", port))?;
                Ok(())
            },
        ))?;
    }
    let ids = env.cluster.identities()?;
    *lock(&env.operator) = Some(Operator::start(
        &env._bins,
        &ids.operator_kubeconfig,
        "sonde-operator-0",
        &logs,
    )?);
    let mut agent = Agent::start_cluster(&env._bins, &ids.agent_kubeconfig, NODE, &logs)?;
    env.rt.block_on(agent.wait_healthy())?;
    *lock(&env.agent) = Some(agent);
    Ok(env)
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
    env.cluster.kubectl.apply(TRACEPOINT)?;
    env.rt.block_on(observe::wait_condition(
        &kube::Api::<Tracepoint>::namespaced(env.cluster.client.clone(), TEST_NAMESPACE),
        "web-http",
        "Ready",
        "True",
        CONVERGE,
    ))?;
    env.rt.block_on(observe::wait_probe_state(
        &env.cluster.client,
        NODE,
        PROBE_ID,
        ProbeState::Attached,
        CONVERGE,
    ))?;
    for i in 0..3 {
        curl(env.pod_port, &format!("/inside/{i}"))?;
        curl(env.outside_port, &format!("/outside/{i}"))?;
    }
    let url = lock(&env.agent)
        .as_ref()
        .map(|a| a.url.clone())
        .context("no agent")?;
    let token = env.cluster.identities()?.reader_token.clone();
    let (pod_port, outside_port) = (env.pod_port, env.outside_port);
    env.rt.block_on(async {
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
