//! Cluster-wide auto-telemetry end to end: the operator runs with the `--auto-*` arguments the chart
//! renders from `autoTelemetry` values, and with no Tracepoint at all every fake pod on the node is
//! traced (a real nginx → `http_events` and the histogram) and profiled (a busy C program →
//! `stack_traces`), except pods of an excluded namespace; every targeted pod gets resource metrics,
//! which go when the pod goes.
//!
//! Needs what `scenarios` needs (root, etcd, kube-apiserver, helm from `scripts/setup e2e`) plus
//! nginx, curl (`scripts/setup peers`) and cc.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, ensure};
use sonde_api::{ProbeState, Tracepoint};
use sonde_e2e::cluster::TEST_NAMESPACE;
use sonde_e2e::expect::{self, HttpServerRows};
use sonde_e2e::fake_pod::{FakePod, PodSpec};
use sonde_e2e::helm;
use sonde_e2e::observe;
use sonde_e2e::peers;
use sonde_e2e::single_node::{SingleNode, lock};
use sonde_e2e::suite::{self, Environment, Scenario};
use sonde_e2e::wait::{self, CONVERGE};

const NODE: &str = "node-auto";
const QUIET_NAMESPACE: &str = "sonde-e2e-quiet";
const PROTOCOLS_ID: &str = "AutoTelemetry/protocols";
const PROFILER_ID: &str = "AutoTelemetry/profiler";

/// The chart values this suite installs with.
const VALUES: &[&str] = &[
    "--set",
    "autoTelemetry.protocols={http}",
    "--set",
    "autoTelemetry.profiler.enabled=true",
    "--set",
    "autoTelemetry.profiler.frequencyHz=99",
    "--set",
    "autoTelemetry.excludeNamespaces={kube-system,sonde-e2e-quiet}",
];

struct Env {
    node: SingleNode,
    /// The `--auto-*` arguments of the chart's operator Deployment, as rendered with [`VALUES`].
    operator_args: Vec<String>,
    pod_port: u16,
    quiet_port: u16,
}

impl Environment for Env {
    fn diagnostics(&self) -> String {
        self.node.diagnostics()
    }
}

/// The `--auto-*` arguments of the operator container in `helm template` output.
fn auto_args(values: &[&str]) -> Result<Vec<String>> {
    let docs = helm::documents(&helm::template(values)?)?;
    let deployment = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .context("no Deployment in the chart")?;
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .context("the operator container has no args")?;
    Ok(args
        .iter()
        .filter_map(|a| a.as_str())
        .filter(|a| a.starts_with("--auto-"))
        .map(str::to_owned)
        .collect())
}

fn pod_spec(namespace: &str, name: &str, container: &str, command: Vec<String>) -> PodSpec {
    PodSpec {
        namespace: namespace.into(),
        name: name.into(),
        node: NODE.into(),
        labels: BTreeMap::from([("app".to_string(), name.to_string())]),
        container: container.into(),
        command,
    }
}

fn setup() -> Result<Env> {
    // The agent reads its drain period from the environment; 1 s keeps the scenarios short.
    // SAFETY: set before any thread of this test process is started.
    unsafe { std::env::set_var("SONDE_PROFILER_PERIOD", "1s") };
    let nginx = peers::nginx()?;
    let operator_args = auto_args(VALUES)?;
    let node = SingleNode::start("sonde-e2e-auto-", NODE)?;
    node.cluster.ensure_namespace(QUIET_NAMESPACE)?;
    let hot = peers::compile_hot(node.dir.path())?;
    let pod_port = sonde_e2e::ports::free_port()?;
    let quiet_port = sonde_e2e::ports::free_port()?;
    let nginx_cmd = |conf: PathBuf| peers::nginx_command(&nginx, &conf);
    let specs = [
        pod_spec(
            TEST_NAMESPACE,
            "web-1",
            "nginx",
            nginx_cmd(peers::nginx_conf(
                &node.dir.path().join("nginx-pod"),
                pod_port,
            )?),
        ),
        pod_spec(
            QUIET_NAMESPACE,
            "quiet-web",
            "nginx",
            nginx_cmd(peers::nginx_conf(
                &node.dir.path().join("nginx-quiet"),
                quiet_port,
            )?),
        ),
        pod_spec(
            TEST_NAMESPACE,
            "busy-1",
            "app",
            vec![hot.to_string_lossy().into_owned()],
        ),
    ];
    for spec in &specs {
        let pod = node
            .rt
            .block_on(FakePod::start(&node.cluster.client, spec, &node.logs))?;
        lock(&node.pods).push(pod);
    }
    for port in [pod_port, quiet_port] {
        node.rt.block_on(peers::wait_listening(port))?;
    }
    node.start_sonde_with(&operator_args)?;
    Ok(Env {
        node,
        operator_args,
        pod_port,
        quiet_port,
    })
}

fn the_chart_renders_auto_telemetry_values_into_the_operators_arguments(env: &Env) -> Result<()> {
    ensure!(
        env.operator_args
            == [
                "--auto-protocols=http",
                "--auto-profiler-hz=99",
                "--auto-exclude-namespaces=kube-system,sonde-e2e-quiet",
            ],
        "operator args rendered from {VALUES:?}: {:?}",
        env.operator_args
    );
    let defaults = auto_args(&[])?;
    ensure!(
        defaults == ["--auto-exclude-namespaces=kube-system"],
        "by default auto-telemetry must be off: {defaults:?}"
    );
    Ok(())
}

fn without_any_tracepoint_every_pods_http_is_traced_except_in_excluded_namespaces(
    env: &Env,
) -> Result<()> {
    let node = &env.node;
    let client = node.cluster.client.clone();
    node.rt.block_on(async {
        let tracepoints = kube::Api::<Tracepoint>::all(client.clone())
            .list(&Default::default())
            .await?;
        ensure!(
            tracepoints.items.is_empty(),
            "this suite must run without Tracepoints"
        );
        observe::wait_probe_state(&client, NODE, PROTOCOLS_ID, ProbeState::Attached, CONVERGE)
            .await?;
        let na = observe::node_assignment(&client, NODE)
            .await?
            .context("no NodeAssignment")?;
        let probe = na
            .spec
            .probes
            .iter()
            .find(|p| p.id == PROTOCOLS_ID)
            .context("no auto-telemetry protocols probe in the NodeAssignment")?;
        let mut pods: Vec<&str> = probe.targets.iter().map(|t| t.pod.as_str()).collect();
        pods.sort();
        ensure!(
            pods == ["busy-1", "web-1"] && probe.owner.kind == "AutoTelemetry",
            "targets {pods:?}, owner {:?}",
            probe.owner
        );
        anyhow::Ok(())
    })?;
    for i in 0..3 {
        peers::curl_hello(env.pod_port, &format!("/inside/{i}"))?;
        peers::curl_hello(env.quiet_port, &format!("/quiet/{i}"))?;
    }
    let url = node.agent_url()?;
    let token = node.reader_token()?;
    let metrics_token = node.metrics_token()?;
    let operator_metrics = lock(&node.operator)
        .as_ref()
        .map(|o| format!("http://{}", o.metrics_addr))
        .context("no operator")?;
    let rows = HttpServerRows {
        pod: "web-1",
        namespace: TEST_NAMESPACE,
        local_port: env.pod_port,
        also: &[],
    };
    let quiet_port = env.quiet_port;
    node.rt.block_on(async {
        expect::http_paths(
            &url,
            &token,
            &rows,
            &["/inside/0", "/inside/1", "/inside/2"],
            "the excluded namespace",
            |r| r["local_port"] == quiet_port || r["namespace"] == QUIET_NAMESPACE,
        )
        .await?;
        expect::http_request_count(&url, &metrics_token, "web-1", &[], 3, |metrics| {
            ensure!(
                !metrics.contains(&format!("namespace=\"{QUIET_NAMESPACE}\"")),
                "series of the excluded namespace in /metrics"
            );
            Ok(())
        })
        .await?;
        let (_, metrics) = observe::agent_get(&operator_metrics, "/metrics", None).await?;
        for feature in ["protocols", "profiler"] {
            let want = format!("sonde_operator_auto_telemetry_targets{{feature=\"{feature}\"}} 2");
            ensure!(
                metrics.lines().any(|l| l == want),
                "no `{want}` in the operator's /metrics"
            );
        }
        Ok(())
    })
}

fn without_any_tracepoint_a_busy_pod_appears_in_stack_traces(env: &Env) -> Result<()> {
    let node = &env.node;
    let url = node.agent_url()?;
    let token = node.reader_token()?;
    node.rt.block_on(async {
        observe::wait_probe_state(
            &node.cluster.client,
            NODE,
            PROFILER_ID,
            ProbeState::Attached,
            CONVERGE,
        )
        .await?;
        wait::until_ok(
            "hot_three samples of busy-1 in stack_traces",
            CONVERGE,
            || async {
                let rows = expect::table_rows(&url, &token, "stack_traces").await?;
                ensure!(
                    !rows.iter().any(|r| r["namespace"] == QUIET_NAMESPACE),
                    "stacks of the excluded namespace"
                );
                let hot = expect::hot_three_rows(&rows, TEST_NAMESPACE, "busy-1");
                ensure!(
                    hot > 0,
                    "no hot_three rows for busy-1 yet ({} rows)",
                    rows.len()
                );
                Ok(())
            },
        )
        .await
    })
}

/// Lines of `/metrics` for `sonde_pod_*` series of `pod`.
fn pod_series<'a>(metrics: &'a str, pod: &str) -> Vec<&'a str> {
    let label = format!("pod=\"{pod}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("sonde_pod_") && l.contains(&label))
        .collect()
}

fn every_targeted_pod_has_resource_metrics_which_go_with_the_pod(env: &Env) -> Result<()> {
    let node = &env.node;
    let url = node.agent_url()?;
    let metrics_token = node.metrics_token()?;
    let client = node.cluster.client.clone();
    let spec = pod_spec(
        TEST_NAMESPACE,
        "short-1",
        "app",
        vec!["sleep".into(), "600".into()],
    );
    let short = node
        .rt
        .block_on(FakePod::start(&client, &spec, &node.logs))?;
    node.rt.block_on(async {
        wait::until_ok("resource series of web-1 and short-1", CONVERGE, || async {
            let (_, metrics) = observe::agent_get(&url, "/metrics", Some(&metrics_token)).await?;
            for pod in ["web-1", "short-1"] {
                let series = pod_series(&metrics, pod);
                ensure!(
                    series
                        .iter()
                        .any(|l| l.starts_with("sonde_pod_cpu_seconds_total{"))
                        && series
                            .iter()
                            .any(|l| l.starts_with("sonde_pod_memory_rss_bytes{")),
                    "no cpu and memory series for {pod}: {series:?}"
                );
                // Fake pods share the node's network namespace: no network series of their own.
                ensure!(
                    !series
                        .iter()
                        .any(|l| l.starts_with("sonde_pod_network_bytes")),
                    "host-network pod {pod} reports network bytes: {series:?}"
                );
            }
            ensure!(
                pod_series(&metrics, "quiet-web").is_empty(),
                "the pod of the excluded namespace has resource series"
            );
            Ok(())
        })
        .await?;
        short.delete(&client).await?;
        wait::until_ok("resource series of short-1 removed", CONVERGE, || async {
            let (_, metrics) = observe::agent_get(&url, "/metrics", Some(&metrics_token)).await?;
            let series = pod_series(&metrics, "short-1");
            ensure!(series.is_empty(), "series left: {series:?}");
            ensure!(
                !pod_series(&metrics, "web-1").is_empty(),
                "the series of web-1 went too"
            );
            Ok(())
        })
        .await
    })
}

fn main() -> ExitCode {
    suite::main(
        setup,
        vec![
            Scenario::new(
                "the_chart_renders_auto_telemetry_values_into_the_operators_arguments",
                the_chart_renders_auto_telemetry_values_into_the_operators_arguments,
            ),
            Scenario::new(
                "without_any_tracepoint_every_pods_http_is_traced_except_in_excluded_namespaces",
                without_any_tracepoint_every_pods_http_is_traced_except_in_excluded_namespaces,
            ),
            Scenario::new(
                "without_any_tracepoint_a_busy_pod_appears_in_stack_traces",
                without_any_tracepoint_a_busy_pod_appears_in_stack_traces,
            ),
            Scenario::new(
                "every_targeted_pod_has_resource_metrics_which_go_with_the_pod",
                every_targeted_pod_has_resource_metrics_which_go_with_the_pod,
            ),
        ],
    )
}
