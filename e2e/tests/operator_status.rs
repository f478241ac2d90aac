//! What a resource's status says when Sonde cannot do what it asks: a pod selector or process
//! pattern the API server accepts but nothing can use (InvalidSelector, logged once), and an agent
//! that died without a word (AgentNotReporting once its reports are older than the freshness window).
//!
//! Needs what `scenarios` needs (root, etcd, kube-apiserver, helm from `scripts/setup e2e`, bpftrace).
//! The silent-agent scenario waits for the operator's 120 s freshness window: about 2.5 minutes.
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use kube::api::Api;
use sonde_api::{BpftraceScript, DynamicLog, ResourceStatus, Tracepoint};
use sonde_e2e::cluster::TEST_NAMESPACE;
use sonde_e2e::observe::{self, HasStatus};
use sonde_e2e::single_node::{SingleNode, lock};
use sonde_e2e::suite::{self, Environment, Scenario};
use sonde_e2e::wait::{self, CONVERGE};

const NODE: &str = "node-s";

struct Env {
    node: SingleNode,
}

impl Environment for Env {
    fn diagnostics(&self) -> String {
        self.node.diagnostics()
    }
}

fn setup() -> Result<Env> {
    let node = SingleNode::start("sonde-e2e-operator-status-", NODE)?;
    node.start_pod(
        "web-1",
        "web",
        "app",
        vec!["/bin/sleep".into(), "3600".into()],
    )?;
    node.start_sonde()?;
    Ok(Env { node })
}

/// Waits until `name`'s Ready condition is False with `reason`, and returns the status.
fn wait_not_ready<K>(
    env: &Env,
    api: &Api<K>,
    name: &str,
    reason: &str,
    timeout: Duration,
) -> Result<ResourceStatus>
where
    K: HasStatus + kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    env.node.rt.block_on(wait::until(
        &format!("{name}: Ready=False with reason {reason}"),
        timeout,
        || async {
            let obj = api.get(name).await?;
            let st = obj.resource_status().context("no status yet")?;
            let ready = st.conditions.iter().find(|c| c.type_ == "Ready");
            match ready {
                Some(c) if c.status == "False" && c.reason == reason => Ok(Some(st.clone())),
                _ => anyhow::bail!("status is {}", serde_json::to_string(st)?),
            }
        },
    ))
}

fn ready_message(st: &ResourceStatus) -> &str {
    st.conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map_or("", |c| c.message.as_str())
}

fn operator_log(env: &Env) -> Result<String> {
    let guard = lock(&env.node.operator);
    let op = guard.as_ref().context("no operator")?;
    Ok(std::fs::read_to_string(op.proc.log_path())?)
}

fn a_bad_selector_or_cmdline_is_reported_in_the_status_and_logged_once(env: &Env) -> Result<()> {
    env.node.cluster.kubectl.apply(&format!(
        "apiVersion: sonde.dev/v1alpha1\nkind: Tracepoint\nmetadata: {{name: t15, namespace: {TEST_NAMESPACE}}}\n\
         spec:\n  selector: {{matchExpressions: [{{key: app, operator: In, values: []}}]}}\n  \
         probe: {{protocols: [http]}}\n"
    ))?;
    env.node.cluster.kubectl.apply(&format!(
        "apiVersion: sonde.dev/v1alpha1\nkind: DynamicLog\nmetadata: {{name: by-cmdline, namespace: {TEST_NAMESPACE}}}\n\
         spec:\n  process: {{cmdline: \"foo((\"}}\n  function: main.main\n"
    ))?;
    let tp = Api::<Tracepoint>::namespaced(env.node.cluster.client.clone(), TEST_NAMESPACE);
    let st = wait_not_ready(env, &tp, "t15", "InvalidSelector", CONVERGE)?;
    let msg = ready_message(&st);
    // (An unknown operator is refused at apply time by the CRD's rule; an empty In reaches the
    // operator.)
    for part in [
        "spec.selector.matchExpressions[0] (app In)",
        "values is empty",
        "use Exists or DoesNotExist",
    ] {
        ensure!(msg.contains(part), "Ready message {msg:?} lacks {part:?}");
    }
    let dl = Api::<DynamicLog>::namespaced(env.node.cluster.client.clone(), TEST_NAMESPACE);
    let st = wait_not_ready(env, &dl, "by-cmdline", "InvalidSelector", CONVERGE)?;
    let msg = ready_message(&st);
    for part in ["spec.process.cmdline", "\"foo((\"", "unclosed group"] {
        ensure!(msg.contains(part), "Ready message {msg:?} lacks {part:?}");
    }
    // More assignment passes (a new resource each) must not log the same problem again.
    for i in 0..3 {
        env.node.cluster.kubectl.apply(&format!(
            "apiVersion: sonde.dev/v1alpha1\nkind: BpftraceScript\nmetadata: {{name: pass-{i}}}\n\
             spec:\n  program: \"interval:s:1 {{ @n = count(); }}\"\n"
        ))?;
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = operator_log(env)?;
    let t15 = log
        .lines()
        .filter(|l| l.contains("Tracepoint/sonde-e2e/t15") && l.contains("left out"))
        .count();
    ensure!(
        t15 == 1,
        "the t15 problem was logged {t15} times (want once):\n{log}"
    );
    ensure!(
        !log.contains("Tracepoint Tracepoint/"),
        "the kind is still doubled in the log:\n{log}"
    );
    Ok(())
}

fn a_killed_agent_makes_its_resources_not_ready_after_the_freshness_window(
    env: &Env,
) -> Result<()> {
    env.node.cluster.kubectl.apply(
        "apiVersion: sonde.dev/v1alpha1\nkind: BpftraceScript\nmetadata: {name: alive}\n\
         spec:\n  program: \"interval:s:1 { @alive = count(); }\"\n",
    )?;
    let api = Api::<BpftraceScript>::all(env.node.cluster.client.clone());
    env.node
        .wait_ready_and_attached(&api, "alive", "BpftraceScript/alive")?;
    lock(&env.node.agent)
        .take()
        .context("no agent")?
        .proc
        .crash();
    // No event arrives from a dead agent: the operator must look again by itself, 120 s after the
    // last heartbeat (written at most 30 s before the kill).
    let st = wait_not_ready(
        env,
        &api,
        "alive",
        "AgentNotReporting",
        Duration::from_secs(200),
    )?;
    let msg = ready_message(&st);
    for part in [
        "attached on 0 of 1 nodes",
        &format!("node {NODE} has not reported since"),
        "kubectl get pods",
    ] {
        ensure!(msg.contains(part), "Ready message {msg:?} lacks {part:?}");
    }
    ensure!(st.nodes.ready == 0, "status: {st:?}");
    let degraded = st.conditions.iter().find(|c| c.type_ == "Degraded");
    ensure!(
        degraded.is_some_and(|c| c.status == "True" && c.reason == "AgentNotReporting"),
        "Degraded: {degraded:?}"
    );
    // A new agent reports again, and the resource is Ready again.
    let mut agent = sonde_e2e::sonde::Agent::start_cluster(
        &env.node.bins,
        &env.node.cluster.agent_kubeconfig(NODE)?,
        NODE,
        &env.node.logs,
    )?;
    env.node.rt.block_on(agent.wait_healthy())?;
    *lock(&env.node.agent) = Some(agent);
    env.node.rt.block_on(observe::wait_condition(
        &api, "alive", "Ready", "True", CONVERGE,
    ))?;
    Ok(())
}

fn main() -> ExitCode {
    suite::main(
        setup,
        vec![
            Scenario::new(
                "a_bad_selector_or_cmdline_is_reported_in_the_status_and_logged_once",
                a_bad_selector_or_cmdline_is_reported_in_the_status_and_logged_once,
            ),
            Scenario::new(
                "a_killed_agent_makes_its_resources_not_ready_after_the_freshness_window",
                a_killed_agent_makes_its_resources_not_ready_after_the_freshness_window,
            ),
        ],
    )
}
