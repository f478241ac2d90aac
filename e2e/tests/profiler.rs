//! The CPU profiler end to end: a profiler Tracepoint selecting a fake pod (a real CPU-bound process
//! in a kubelet-style cgroup) through the real operator and agent; then the same Tracepoint kind in
//! standalone mode with `spec.process`.
//!
//! Needs what `scenarios` needs (root, etcd, kube-apiserver, helm from `scripts/setup e2e`) plus cc.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Mutex;

use anyhow::{Context, Result, ensure};
use sonde_api::{ProbeState, Tracepoint};
use sonde_e2e::cluster::{Cluster, Install, TEST_NAMESPACE};
use sonde_e2e::fake_pod::{self, FakePod, PodSpec};
use sonde_e2e::observe;
use sonde_e2e::sonde::{Agent, Operator};
use sonde_e2e::suite::{self, Environment, Scenario};
use sonde_e2e::tools::{self, SondeBinaries};
use sonde_e2e::wait::{self, CONVERGE};

const NODE: &str = "node-p";
const PROBE_ID: &str = "Tracepoint/sonde-e2e/cpu";

struct Env {
    operator: Mutex<Option<Operator>>,
    agent: Mutex<Option<Agent>>,
    pods: Mutex<Vec<FakePod>>,
    cluster: Cluster,
    bins: SondeBinaries,
    hot: PathBuf,
    logs: PathBuf,
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
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

/// Compiles the profiler's C fixture (two hot functions, 3:1) with frame pointers.
fn compile_hot(dir: &Path) -> Result<PathBuf> {
    let src =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../node-agent/tests/fixtures/profiler/hot.c");
    let bin = dir.join("hot");
    let out = Command::new("cc")
        .args(["-O0", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .context("running cc: install a C compiler (apt-get install gcc)")?;
    ensure!(
        out.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(bin)
}

fn setup() -> Result<Env> {
    // The agent reads its drain period from the environment; 1 s keeps the scenarios short.
    // SAFETY: set before any thread of this test process is started.
    unsafe { std::env::set_var("SONDE_PROFILER_PERIOD", "1s") };
    let bins = tools::build_sonde()?;
    let rt = tokio::runtime::Runtime::new()?;
    let dir = suite::work_dir("sonde-e2e-profiler-")?;
    let logs = dir.path().join("logs");
    let cluster = rt.block_on(Cluster::start(dir.path(), Install { rbac: true }))?;
    let hot = compile_hot(dir.path())?;
    rt.block_on(fake_pod::create_node(
        &cluster.client,
        NODE,
        &BTreeMap::new(),
    ))?;
    let env = Env {
        operator: Mutex::new(None),
        agent: Mutex::new(None),
        pods: Mutex::new(vec![]),
        cluster,
        bins,
        hot,
        logs,
        rt,
        dir,
    };
    let spec = PodSpec {
        namespace: TEST_NAMESPACE.into(),
        name: "busy-1".into(),
        node: NODE.into(),
        labels: BTreeMap::from([("app".to_string(), "busy".to_string())]),
        container: "app".into(),
        command: vec![env.hot.to_string_lossy().into_owned()],
    };
    let pod = env
        .rt
        .block_on(FakePod::start(&env.cluster.client, &spec, &env.logs))?;
    lock(&env.pods).push(pod);
    let ids = env.cluster.identities()?;
    *lock(&env.operator) = Some(Operator::start(
        &env.bins,
        &ids.operator_kubeconfig,
        "sonde-operator-0",
        &env.logs,
    )?);
    let mut agent = Agent::start_cluster(&env.bins, &ids.agent_kubeconfig, NODE, &env.logs)?;
    env.rt.block_on(agent.wait_healthy())?;
    *lock(&env.agent) = Some(agent);
    Ok(env)
}

const TRACEPOINT: &str = "apiVersion: sonde.dev/v1alpha1
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

fn a_profiler_tracepoint_on_a_fake_pod_fills_stack_traces_pprof_and_pod_metrics(
    env: &Env,
) -> Result<()> {
    env.cluster.kubectl.apply(TRACEPOINT)?;
    env.rt.block_on(observe::wait_condition(
        &kube::Api::<Tracepoint>::namespaced(env.cluster.client.clone(), TEST_NAMESPACE),
        "cpu",
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
    let url = lock(&env.agent)
        .as_ref()
        .map(|a| a.url.clone())
        .context("no agent")?;
    let token = env.cluster.identities()?.reader_token.clone();
    env.rt.block_on(async {
        wait::until_ok(
            "hot_three samples of the pod in stack_traces",
            CONVERGE,
            || async {
                let (code, body) =
                    observe::agent_get(&url, "/v1/tables/stack_traces?format=json", Some(&token))
                        .await?;
                ensure!(code == 200, "GET /v1/tables/stack_traces: {code} {body}");
                let rows: Vec<serde_json::Value> = serde_json::from_str(&body)?;
                let pod_rows = rows
                    .iter()
                    .filter(|r| {
                        r["pod"] == "busy-1"
                            && r["namespace"] == TEST_NAMESPACE
                            && r["container"] == "app"
                    })
                    .filter(|r| {
                        r["stack_trace"]
                            .as_str()
                            .unwrap_or("")
                            .contains(";hot_three (hot.c:")
                    })
                    .count();
                ensure!(
                    pod_rows > 0,
                    "no hot_three rows for pod busy-1 yet ({} rows)",
                    rows.len()
                );
                Ok(())
            },
        )
        .await?;
        let (code, body) = observe::agent_get(
            &url,
            &format!(
                "/v1/profiles/flamegraph.svg?seconds=300&namespace={TEST_NAMESPACE}&pod=busy-1"
            ),
            Some(&token),
        )
        .await?;
        ensure!(
            code == 200 && body.contains("hot_three"),
            "flame graph: {code} {}",
            &body[..body.len().min(300)]
        );
        let (code, _) = observe::agent_get(&url, "/v1/profiles/pprof?seconds=60", None).await?;
        ensure!(
            code == 401,
            "pprof without a token must be refused, got {code}"
        );
        wait::until_ok(
            "sonde_pod_cpu_seconds of busy-1 in /metrics",
            CONVERGE,
            || async {
                let (_, metrics) = observe::agent_get(&url, "/metrics", None).await?;
                let line = metrics
                    .lines()
                    .find(|l| {
                        l.starts_with("sonde_pod_cpu_seconds_total{")
                            && l.contains("pod=\"busy-1\"")
                    })
                    .context("no sonde_pod_cpu_seconds_total series for busy-1")?;
                let value: f64 = line.rsplit(' ').next().unwrap_or("0").parse()?;
                ensure!(value > 0.0, "{line}");
                ensure!(
                    metrics.contains("sonde_pod_memory_rss_bytes{")
                        && metrics.contains("sonde_profiler_samples_total"),
                    "memory or profiler series missing"
                );
                Ok(())
            },
        )
        .await
    })
}

fn the_standalone_agent_profiles_a_process_selected_by_spec_process(env: &Env) -> Result<()> {
    let manifests = env.dir.path().join("standalone");
    std::fs::create_dir_all(&manifests)?;
    std::fs::write(
        manifests.join("cpu.yaml"),
        format!(
            "apiVersion: sonde.dev/v1alpha1\nkind: Tracepoint\nmetadata:\n  name: cpu\nspec:\n  process:\n    exe: '{}'\n  probe:\n    profiler: {{}}\n",
            env.hot.display()
        ),
    )?;
    let mut agent = Agent::start_standalone(&env.bins, &manifests, &env.logs)?;
    env.rt.block_on(agent.wait_healthy())?;
    let url = agent.url.clone();
    env.rt.block_on(wait::until_ok(
        "hot_three rows in standalone mode",
        CONVERGE,
        || async {
            let (code, body) =
                observe::agent_get(&url, "/v1/tables/stack_traces?format=json", None).await?;
            ensure!(code == 200, "GET /v1/tables/stack_traces: {code} {body}");
            ensure!(
                body.contains(";hot_three (hot.c:"),
                "no hot_three stacks yet"
            );
            Ok(())
        },
    ))
}

fn main() -> ExitCode {
    suite::main(
        setup,
        vec![
            Scenario::new(
                "a_profiler_tracepoint_on_a_fake_pod_fills_stack_traces_pprof_and_pod_metrics",
                a_profiler_tracepoint_on_a_fake_pod_fills_stack_traces_pprof_and_pod_metrics,
            ),
            Scenario::new(
                "the_standalone_agent_profiles_a_process_selected_by_spec_process",
                the_standalone_agent_profiles_a_process_selected_by_spec_process,
            ),
        ],
    )
}
