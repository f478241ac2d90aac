//! The CPU profiler end to end: a profiler Tracepoint selecting a fake pod (a real CPU-bound process
//! in a kubelet-style cgroup) through the real operator and agent; then the same Tracepoint kind in
//! standalone mode with `spec.process`.
//!
//! Needs what `scenarios` needs (root, etcd, kube-apiserver, helm from `scripts/setup e2e`) plus cc.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, ensure};
use sonde_api::Tracepoint;
use sonde_e2e::cluster::TEST_NAMESPACE;
use sonde_e2e::expect;
use sonde_e2e::observe;
use sonde_e2e::peers;
use sonde_e2e::single_node::SingleNode;
use sonde_e2e::sonde::Agent;
use sonde_e2e::suite::{self, Environment, Scenario};
use sonde_e2e::wait::{self, CONVERGE};

const NODE: &str = "node-p";
const PROBE_ID: &str = "Tracepoint/sonde-e2e/cpu";

struct Env {
    node: SingleNode,
    /// The CPU-bound fixture program.
    hot: PathBuf,
}

impl Environment for Env {
    fn diagnostics(&self) -> String {
        self.node.diagnostics()
    }
}

fn setup() -> Result<Env> {
    // The agent reads its drain period from the environment; 1 s keeps the scenarios short.
    // SAFETY: set before any thread of this test process is started.
    unsafe { std::env::set_var("SONDE_PROFILER_PERIOD", "1s") };
    let node = SingleNode::start("sonde-e2e-profiler-", NODE)?;
    let hot = peers::compile_hot(node.dir.path())?;
    node.start_pod(
        "busy-1",
        "busy",
        "app",
        vec![hot.to_string_lossy().into_owned()],
    )?;
    node.start_sonde()?;
    Ok(Env { node, hot })
}

const TRACEPOINT: &str = expect::BUSY_PROFILER;

fn a_profiler_tracepoint_on_a_fake_pod_fills_stack_traces_pprof_and_pod_metrics(
    env: &Env,
) -> Result<()> {
    let node = &env.node;
    node.cluster.kubectl.apply(TRACEPOINT)?;
    node.wait_ready_and_attached(
        &kube::Api::<Tracepoint>::namespaced(node.cluster.client.clone(), TEST_NAMESPACE),
        "cpu",
        PROBE_ID,
    )?;
    let url = node.agent_url()?;
    let token = node.reader_token()?;
    let metrics_token = node.metrics_token()?;
    node.rt.block_on(async {
        wait::until_ok(
            "hot_three samples of the pod in stack_traces",
            CONVERGE,
            || async {
                let rows = expect::table_rows(&url, &token, "stack_traces").await?;
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
                let (_, metrics) =
                    observe::agent_get(&url, "/metrics", Some(&metrics_token)).await?;
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
    let node = &env.node;
    let manifests = node.dir.path().join("standalone");
    std::fs::create_dir_all(&manifests)?;
    std::fs::write(
        manifests.join("cpu.yaml"),
        format!(
            "apiVersion: sonde.dev/v1alpha1\nkind: Tracepoint\nmetadata:\n  name: cpu\nspec:\n  process:\n    exe: '{}'\n  probe:\n    profiler: {{}}\n",
            env.hot.display()
        ),
    )?;
    let mut agent = Agent::start_standalone(&node.bins, &manifests, &node.logs)?;
    node.rt.block_on(agent.wait_healthy())?;
    let url = agent.url.clone();
    node.rt.block_on(wait::until_ok(
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
