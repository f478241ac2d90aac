//! The cluster lifecycle as a platform engineer lives it: a real `helm install` of `charts/sonde`,
//! `helm upgrade` with changed values and `helm rollback` (the operator run with the Deployment's
//! arguments of each revision), an operator restart in the middle of a deletion, a node deleted while
//! a resource runs on it, a namespace deleted with Sonde resources in it, and `helm uninstall` with
//! Sonde resources still in the cluster.
//!
//! No kubelet runs here: the chart's Deployment, DaemonSet and hook Job never get pods. The operator
//! and the agents run as host processes under the identities of the chart's ServiceAccounts, and the
//! pre-delete hook Job's command runs the same way, under its ServiceAccount, read from the Job that
//! `helm uninstall` created; the test then marks that Job Complete, as the kubelet and the Job
//! controller would. The namespace deletion runs a real kube-controller-manager with its namespace
//! controller only, which empties the namespace and removes it; the test confirms its Pod's deletion
//! as a kubelet would.
//!
//! Needs what `scenarios` needs (root, etcd, kube-apiserver, kube-controller-manager and helm from
//! `scripts/setup e2e`, bpftrace, a C compiler).
use std::collections::BTreeMap;
use std::process::{Command, ExitCode};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use sonde_api::{BpftraceScript, FINALIZER, NodeAssignment, ProbeState};
use sonde_e2e::cluster::{Cluster, Install};
use sonde_e2e::controller_manager::ControllerManager;
use sonde_e2e::observe;
use sonde_e2e::process::Proc;
use sonde_e2e::single_node::lock;
use sonde_e2e::sonde::{Agent, Operator};
use sonde_e2e::suite::{self, Environment, Scenario};
use sonde_e2e::tools::{self, SondeBinaries};
use sonde_e2e::wait::{self, CONVERGE};
use sonde_e2e::{fake_pod, helm};

const NODES: [&str; 2] = ["node-a", "node-b"];
/// The namespace of the users' namespaced resources.
const TEAM: &str = "team";

struct Env {
    // Drop order = field order: Sonde's processes before the control plane.
    operator: Mutex<Option<Operator>>,
    agents: Mutex<BTreeMap<String, Agent>>,
    cluster: Cluster,
    bins: SondeBinaries,
    logs: std::path::PathBuf,
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
}

impl Environment for Env {
    fn diagnostics(&self) -> String {
        let mut out = String::new();
        if let Some(op) = lock(&self.operator).as_ref() {
            out += &suite::log_section("operator", op.proc.log_path(), 40);
        }
        for (node, agent) in lock(&self.agents).iter() {
            out += &suite::log_section(&format!("agent {node}"), agent.proc.log_path(), 20);
        }
        out
    }
}

impl Env {
    fn helm(&self, args: &[&str]) -> Result<String> {
        helm::run_against(&self.cluster.control_plane.admin_kubeconfig, args)
    }

    /// The operator Deployment's arguments in the cluster now, minus the two that
    /// [`Operator::start_with_args`] sets for a host process (listen address, Lease namespace) and
    /// the table-query listener (a fixed loopback port, a pod's own in a cluster).
    fn deployment_args(&self) -> Result<Vec<String>> {
        let api: Api<Deployment> = Api::namespaced(self.cluster.client.clone(), helm::NAMESPACE);
        let name = format!("{}-operator", helm::RELEASE);
        let dep = self.rt.block_on(api.get(&name))?;
        let container = dep
            .spec
            .and_then(|s| s.template.spec)
            .and_then(|s| s.containers.into_iter().next())
            .with_context(|| format!("Deployment {name} has no container"))?;
        Ok(container
            .args
            .unwrap_or_default()
            .into_iter()
            .filter(|a| {
                !a.starts_with("--metrics-listen=")
                    && !a.starts_with("--lease-namespace=")
                    && !a.starts_with("--query-listen=")
            })
            .collect())
    }

    /// (Re)starts the operator with the Deployment's arguments, as a rollout does.
    fn roll_operator(&self) -> Result<()> {
        self.stop_operator();
        let args = self.deployment_args()?;
        let ids = self.cluster.identities()?;
        *lock(&self.operator) = Some(Operator::start_with_args(
            &self.bins,
            &ids.operator_kubeconfig,
            "sonde-operator-0",
            &self.logs,
            &args,
        )?);
        Ok(())
    }

    /// Stops the operator the way Kubernetes stops a pod (SIGTERM: it releases its Lease).
    fn stop_operator(&self) {
        if let Some(mut op) = lock(&self.operator).take() {
            op.proc.stop(Duration::from_secs(10));
        }
    }

    fn start_agent(&self, node: &str) -> Result<()> {
        let mut agent = Agent::start_cluster(
            &self.bins,
            &self.cluster.agent_kubeconfig(node)?,
            node,
            &self.logs,
        )?;
        self.rt.block_on(agent.wait_healthy())?;
        lock(&self.agents).insert(node.to_owned(), agent);
        Ok(())
    }

    fn stop_agent(&self, node: &str) {
        if let Some(mut agent) = lock(&self.agents).remove(node) {
            agent.proc.stop(Duration::from_secs(10));
        }
    }

    fn bpftrace_script(&self, name: &str) -> Result<()> {
        self.cluster.kubectl.apply(&format!(
            "apiVersion: sonde.dev/v1alpha1\nkind: BpftraceScript\nmetadata: {{name: {name}}}\n\
             spec:\n  program: \"interval:s:1 {{ @n = count(); }}\"\n"
        ))?;
        Ok(())
    }

    fn wait_finalizer(&self, api: &Api<BpftraceScript>, name: &str) -> Result<()> {
        self.rt.block_on(wait::until(
            &format!("finalizer {FINALIZER} on BpftraceScript {name}"),
            CONVERGE,
            || async {
                let o = api.get(name).await?;
                Ok(o.finalizers().iter().any(|f| f == FINALIZER).then_some(()))
            },
        ))
    }
}

fn setup() -> Result<Env> {
    let bins = tools::build_sonde()?;
    let rt = tokio::runtime::Runtime::new()?;
    let dir = suite::work_dir("sonde-e2e-lifecycle-")?;
    let logs = dir.path().join("logs");
    // The chart's RBAC comes from the real `helm install` below, not from `helm template`.
    let mut cluster = rt.block_on(Cluster::start(dir.path(), Install { rbac: false }))?;
    for node in NODES {
        rt.block_on(fake_pod::create_node(
            &cluster.client,
            node,
            &BTreeMap::new(),
        ))?;
    }
    let chart = helm::chart_dir();
    helm::run_against(
        &cluster.control_plane.admin_kubeconfig,
        &[
            "install",
            helm::RELEASE,
            &chart.to_string_lossy(),
            "--namespace",
            helm::NAMESPACE,
        ],
    )
    .context("helm install")?;
    cluster.identities = Some(cluster.make_identities()?);
    cluster.ensure_namespace(TEAM)?;
    let env = Env {
        operator: Mutex::new(None),
        agents: Mutex::new(BTreeMap::new()),
        cluster,
        bins,
        logs,
        rt,
        dir,
    };
    env.roll_operator()?;
    for node in NODES {
        env.start_agent(node)?;
    }
    Ok(env)
}

fn helm_upgrade_and_rollback_switch_auto_telemetry_through_the_operators_arguments(
    env: &Env,
) -> Result<()> {
    let client = &env.cluster.client;
    let id = "AutoTelemetry/protocols";
    env.rt
        .block_on(observe::wait_unassigned(client, NODES[0], id, CONVERGE))?;
    let chart = helm::chart_dir();
    env.helm(&[
        "upgrade",
        helm::RELEASE,
        &chart.to_string_lossy(),
        "--namespace",
        helm::NAMESPACE,
        "--reuse-values",
        "--set",
        "autoTelemetry.protocols={http,dns}",
    ])?;
    let args = env.deployment_args()?;
    ensure!(
        args.iter().any(|a| a == "--auto-protocols=http,dns"),
        "after the upgrade the Deployment's args are {args:?}"
    );
    env.roll_operator()?;
    for node in NODES {
        env.rt
            .block_on(observe::wait_assigned(client, node, id, CONVERGE, |_| true))?;
    }
    env.helm(&[
        "rollback",
        helm::RELEASE,
        "1",
        "--namespace",
        helm::NAMESPACE,
    ])?;
    let args = env.deployment_args()?;
    ensure!(
        !args.iter().any(|a| a.starts_with("--auto-protocols")),
        "after the rollback the Deployment's args are {args:?}"
    );
    env.roll_operator()?;
    for node in NODES {
        env.rt
            .block_on(observe::wait_unassigned(client, node, id, CONVERGE))?;
    }
    let history = env.helm(&["history", helm::RELEASE, "--namespace", helm::NAMESPACE])?;
    ensure!(
        history.contains("Rollback to 1"),
        "helm history:\n{history}"
    );
    Ok(())
}

fn a_resource_deleted_while_the_operator_is_down_is_finalized_once_it_is_back(
    env: &Env,
) -> Result<()> {
    let name = "deleted-while-down";
    let id = format!("BpftraceScript/{name}");
    env.bpftrace_script(name)?;
    let api: Api<BpftraceScript> = Api::all(env.cluster.client.clone());
    env.rt.block_on(observe::wait_condition(
        &api, name, "Ready", "True", CONVERGE,
    ))?;
    env.stop_operator();
    env.cluster
        .kubectl
        .run(&["delete", "bpftracescript", name, "--wait=false"], None)?;
    std::thread::sleep(Duration::from_secs(3));
    let o = env.rt.block_on(api.get(name))?;
    ensure!(
        o.metadata.deletion_timestamp.is_some() && o.finalizers().iter().any(|f| f == FINALIZER),
        "without an operator the deletion should wait on the finalizer: {:?}",
        o.metadata
    );
    env.roll_operator()?;
    env.rt.block_on(wait::until(
        &format!("BpftraceScript {name} gone"),
        CONVERGE,
        || async { Ok(api.get_opt(name).await?.is_none().then_some(())) },
    ))?;
    // …and only after its agents had removed the probe.
    for node in NODES {
        let na = env
            .rt
            .block_on(observe::node_assignment(&env.cluster.client, node))?
            .with_context(|| format!("no NodeAssignment {node}"))?;
        let reported = na
            .status
            .iter()
            .flat_map(|s| s.probes.iter())
            .any(|p| p.id == id);
        ensure!(
            !reported && !na.spec.probes.iter().any(|p| p.id == id),
            "{id} is still on {node}: {:?}",
            na.status
        );
    }
    let events = env.cluster.kubectl.run(
        &[
            "get",
            "events",
            "-A",
            "--field-selector",
            &format!("involvedObject.name={name}"),
            "-o",
            "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
        ],
        None,
    )?;
    ensure!(
        events.contains(&format!("Deleted: probe {id} removed from every node")),
        "events of {name}:\n{events}"
    );
    Ok(())
}

fn a_deleted_node_takes_its_node_assignment_and_its_share_of_the_status_along(
    env: &Env,
) -> Result<()> {
    let name = "on-every-node";
    env.bpftrace_script(name)?;
    let api: Api<BpftraceScript> = Api::all(env.cluster.client.clone());
    let st = env.rt.block_on(observe::wait_condition(
        &api, name, "Ready", "True", CONVERGE,
    ))?;
    ensure!(st.nodes.selected == 2 && st.nodes.ready == 2, "{st:?}");
    let gone = NODES[1];
    // The node goes away (scaled down, replaced): its agent pod with it.
    env.cluster.kubectl.run(&["delete", "node", gone], None)?;
    env.stop_agent(gone);
    let nas: Api<NodeAssignment> = Api::all(env.cluster.client.clone());
    env.rt.block_on(wait::until(
        &format!("NodeAssignment {gone} deleted"),
        CONVERGE,
        || async { Ok(nas.get_opt(gone).await?.is_none().then_some(())) },
    ))?;
    let st = env.rt.block_on(wait::until(
        &format!("{name} counting only {}", NODES[0]),
        Duration::from_secs(30),
        || async {
            let o = api.get(name).await?;
            let st = o.status.context("no status")?;
            let ready = observe::condition(&st, "Ready").is_some_and(|c| c.status == "True");
            if st.nodes.selected == 1 && st.nodes.ready == 1 && ready {
                Ok(Some(st))
            } else {
                bail!("status is {}", serde_json::to_string(&st)?)
            }
        },
    ))?;
    ensure!(st.nodes.failed == 0, "{st:?}");
    // The node comes back (same name, new object): it gets an assignment again.
    env.rt.block_on(fake_pod::create_node(
        &env.cluster.client,
        gone,
        &BTreeMap::new(),
    ))?;
    env.start_agent(gone)?;
    env.rt.block_on(observe::wait_probe_state(
        &env.cluster.client,
        gone,
        &format!("BpftraceScript/{name}"),
        ProbeState::Attached,
        CONVERGE,
    ))?;
    env.cluster
        .kubectl
        .run(&["delete", "bpftracescript", name, "--timeout=60s"], None)?;
    Ok(())
}

/// Events the operator could not publish, as its /metrics counts them (reconcile errors
/// `publish_event` of every kind).
fn unpublished_events(env: &Env) -> Result<u64> {
    let url = lock(&env.operator)
        .as_ref()
        .map(|o| format!("http://{}", o.metrics_addr))
        .context("no operator")?;
    let (_, metrics) = env
        .rt
        .block_on(observe::agent_get(&url, "/metrics", None))?;
    Ok(metrics
        .lines()
        .filter(|l| {
            l.starts_with("sonde_operator_reconcile_errors_total{")
                && l.contains("error=\"publish_event\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum())
}

/// Probe ids nobody should list once `namespace` is gone.
fn probes_of_namespace(namespace: &str) -> [String; 2] {
    [
        format!("Tracepoint/{namespace}/web"),
        format!("DynamicLog/{namespace}/tick"),
    ]
}

fn deleting_a_namespace_removes_its_probes_from_every_node_and_the_namespace_goes(
    env: &Env,
) -> Result<()> {
    let ns = "shop";
    let node = NODES[0];
    let client = &env.cluster.client;
    // The namespace controller is what deletes a namespace's contents and then the namespace.
    let _kcm = env.rt.block_on(ControllerManager::start(
        &env.cluster.control_plane,
        &["namespace"],
        &env.logs,
    ))?;
    env.cluster.ensure_namespace(ns)?;
    let ticker = fake_pod::compile_ticker(env.dir.path())?;
    let pod = env.rt.block_on(fake_pod::FakePod::start(
        client,
        &fake_pod::PodSpec {
            namespace: ns.into(),
            name: "web-0".into(),
            node: node.into(),
            labels: BTreeMap::from([("app".into(), "web".into())]),
            container: "web".into(),
            command: vec![ticker.to_string_lossy().into_owned()],
        },
        &env.logs,
    ))?;
    env.cluster.kubectl.apply(&format!(
        "apiVersion: sonde.dev/v1alpha1\nkind: Tracepoint\nmetadata: {{name: web, namespace: {ns}}}\n\
         spec:\n  selector: {{matchLabels: {{app: web}}}}\n  probe: {{protocols: [http]}}\n\
         ---\napiVersion: sonde.dev/v1alpha1\nkind: DynamicLog\nmetadata: {{name: tick, namespace: {ns}}}\n\
         spec:\n  selector: {{matchLabels: {{app: web}}}}\n  function: sonde_e2e_tick\n  \
         capture: {{args: [{{name: value, expr: \"n\"}}]}}\n"
    ))?;
    let ids = probes_of_namespace(ns);
    for id in &ids {
        env.rt.block_on(observe::wait_probe_state(
            client,
            node,
            id,
            ProbeState::Attached,
            CONVERGE,
        ))?;
    }
    let url = lock(&env.agents)
        .get(node)
        .map(|a| a.url.clone())
        .with_context(|| format!("no agent on {node}"))?;
    let token = env.cluster.identities()?.reader_token.clone();
    let (_, status) = env
        .rt
        .block_on(observe::agent_get(&url, "/v1/status", Some(&token)))?;
    ensure!(
        ids.iter().all(|id| status.contains(id.as_str())),
        "the agent should run {ids:?}: {status}"
    );

    let unpublished_before = unpublished_events(env)?;
    env.cluster
        .kubectl
        .run(&["delete", "namespace", ns, "--wait=false"], None)?;
    // The namespace controller deletes the Pod gracefully; no kubelet runs here to confirm it, so
    // the test does what the kubelet would once the container stopped.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    env.rt.block_on(wait::until(
        "the namespace controller to delete Pod web-0",
        CONVERGE,
        || async {
            let p = pods.get_opt("web-0").await?;
            Ok(p.is_none_or(|p| p.metadata.deletion_timestamp.is_some())
                .then_some(()))
        },
    ))?;
    env.rt.block_on(pod.delete(client))?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    env.rt.block_on(wait::until(
        &format!("namespace {ns} gone"),
        Duration::from_secs(120),
        || async {
            match namespaces.get_opt(ns).await? {
                None => Ok(Some(())),
                Some(n) => bail!(
                    "still there: {}",
                    serde_json::to_string(&n.status.map(|s| s.conditions))?
                ),
            }
        },
    ))?;
    for node in NODES {
        let na = env
            .rt
            .block_on(observe::node_assignment(client, node))?
            .with_context(|| format!("no NodeAssignment {node}"))?;
        for id in &ids {
            let reported = na
                .status
                .iter()
                .flat_map(|s| s.probes.iter())
                .any(|p| &p.id == id);
            ensure!(
                !reported && !na.spec.probes.iter().any(|p| &p.id == id),
                "{id} is still on {node}: {:?}",
                na.status
            );
        }
    }
    let (_, status) = env
        .rt
        .block_on(observe::agent_get(&url, "/v1/status", Some(&token)))?;
    ensure!(
        ids.iter().all(|id| !status.contains(id.as_str())),
        "the agent still runs a probe of {ns}: {status}"
    );
    // A namespace being deleted takes no Events: the operator's "Deleted" Events are refused, as
    // expected, and are no reconcile errors.
    let unpublished = unpublished_events(env)?.saturating_sub(unpublished_before);
    ensure!(
        unpublished == 0,
        "{unpublished} Events counted as failed while {ns} was deleted"
    );
    Ok(())
}

/// Resources a team leaves behind: one of each kind.
fn leave_resources(env: &Env) -> Result<()> {
    env.cluster.kubectl.apply(&format!(
        "apiVersion: sonde.dev/v1alpha1\nkind: Tracepoint\nmetadata: {{name: http, namespace: {TEAM}}}\n\
         spec:\n  selector: {{matchLabels: {{app: web}}}}\n  probe: {{protocols: [http]}}\n\
         ---\napiVersion: sonde.dev/v1alpha1\nkind: DynamicLog\nmetadata: {{name: main, namespace: {TEAM}}}\n\
         spec:\n  process: {{cmdline: myapp}}\n  function: main.main\n"
    ))?;
    env.bpftrace_script("left-behind")?;
    let api: Api<BpftraceScript> = Api::all(env.cluster.client.clone());
    env.wait_finalizer(&api, "left-behind")
}

/// Every Tracepoint, DynamicLog and BpftraceScript still in the cluster, with its finalizers.
fn sonde_objects(env: &Env) -> Result<Vec<String>> {
    let out = env.cluster.kubectl.run(
        &[
            "get",
            "tracepoints,dynamiclogs,bpftracescripts",
            "-A",
            "-o",
            "jsonpath={range .items[*]}{.kind}/{.metadata.namespace}/{.metadata.name} finalizers={.metadata.finalizers}{\"\\n\"}{end}",
        ],
        None,
    )?;
    Ok(out.lines().map(str::to_owned).collect())
}

/// A kubeconfig with a token of the uninstall hook's ServiceAccount, its RBAC objects applied from
/// `helm template` as `helm uninstall` would create them.
fn hook_identity(env: &Env) -> Result<std::path::PathBuf> {
    let sa = format!("{}-uninstall", helm::RELEASE);
    let docs = helm::documents(&helm::template(&[])?)?;
    let mut yaml = String::new();
    for doc in docs.iter().filter(|d| {
        d["metadata"]["name"] == sa.as_str()
            && d["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
            && d["kind"] != "Job"
    }) {
        yaml.push_str("---\n");
        yaml.push_str(&serde_yaml_ng::to_string(doc)?);
    }
    ensure!(
        !yaml.is_empty(),
        "the chart renders no pre-delete hook identity {sa}"
    );
    env.cluster.kubectl.apply(&yaml)?;
    let token = env.cluster.token(helm::NAMESPACE, &sa)?;
    env.cluster.control_plane.token_kubeconfig(
        &env.dir.path().join("uninstall.kubeconfig"),
        &sa,
        &token,
    )
}

/// Runs `sonde-operator <args>` (the hook Job's command) to completion as `kubeconfig`.
fn run_hook_command(env: &Env, kubeconfig: &std::path::Path, args: &[String]) -> Result<String> {
    let out = Command::new(&env.bins.operator)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info")
        .output()
        .context("running sonde-operator uninstall")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    std::fs::write(env.logs.join("uninstall.log"), &*stderr)?;
    ensure!(
        out.status.success(),
        "sonde-operator {} failed ({}):\n{stderr}",
        args.join(" "),
        out.status
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn uninstall_with_no_operator_left_removes_the_finalizers_at_once(env: &Env) -> Result<()> {
    leave_resources(env)?;
    // The operator is gone (scaled to zero, or uninstalled with --no-hooks).
    env.stop_operator();
    let kubeconfig = hook_identity(env)?;
    let started = Instant::now();
    let summary = run_hook_command(
        env,
        &kubeconfig,
        &[
            "uninstall".into(),
            format!("--lease-namespace={}", helm::NAMESPACE),
            "--timeout-seconds=90".into(),
        ],
    )?;
    let took = started.elapsed();
    let left = sonde_objects(env)?;
    ensure!(left.is_empty(), "left behind: {left:?}");
    // No operator leads: nothing to wait 90 s for (the Lease is released on SIGTERM, or runs out
    // within its 15 s).
    ensure!(
        took < Duration::from_secs(30),
        "took {took:?}; summary: {summary}"
    );
    ensure!(
        summary.contains("removed Sonde's finalizer from 3"),
        "summary: {summary}"
    );
    let nas = env
        .cluster
        .kubectl
        .run(&["get", "nodeassignments", "-o", "name"], None)?;
    ensure!(
        nas.trim().is_empty(),
        "NodeAssignments left with no operator: {nas}"
    );
    // Back to normal for the next scenario: the operator writes the assignments again.
    env.roll_operator()?;
    env.rt.block_on(wait::until(
        "NodeAssignments written again",
        CONVERGE,
        || async {
            let nas: Api<NodeAssignment> = Api::all(env.cluster.client.clone());
            Ok(nas.get_opt(NODES[0]).await?.map(drop))
        },
    ))?;
    for node in NODES {
        if !lock(&env.agents).contains_key(node) {
            env.start_agent(node)?;
        }
    }
    Ok(())
}

fn helm_uninstall_leaves_nothing_terminating(env: &Env) -> Result<()> {
    leave_resources(env)?;
    let mut cmd = Command::new(tools::helm()?);
    cmd.arg("--kubeconfig")
        .arg(&env.cluster.control_plane.admin_kubeconfig)
        .args([
            "uninstall",
            helm::RELEASE,
            "--namespace",
            helm::NAMESPACE,
            "--timeout=4m",
        ]);
    let mut helm = Proc::spawn("helm-uninstall", cmd, &env.logs)?;
    let jobs: Api<Job> = Api::namespaced(env.cluster.client.clone(), helm::NAMESPACE);
    let job_name = format!("{}-uninstall", helm::RELEASE);
    // Either helm creates the hook Job and waits for it, or it is done without one.
    let job = env.rt.block_on(wait::until(
        "the pre-delete hook Job, or helm uninstall's exit",
        Duration::from_secs(120),
        || {
            let running = helm.is_running();
            let jobs = jobs.clone();
            let job_name = job_name.clone();
            async move {
                if let Some(job) = jobs.get_opt(&job_name).await? {
                    return Ok(Some(Some(job)));
                }
                Ok((!running).then_some(None))
            }
        },
    ))?;
    if let Some(job) = job {
        let pod = job
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.clone())
            .context("hook Job without a pod template")?;
        let sa = pod
            .service_account_name
            .clone()
            .context("hook Job without a ServiceAccount")?;
        let container = pod
            .containers
            .first()
            .context("hook Job without a container")?;
        ensure!(
            container.command.as_deref() == Some(&["sonde-operator".to_string()][..]),
            "hook command: {:?}",
            container.command
        );
        let token = env.cluster.token(helm::NAMESPACE, &sa)?;
        let kubeconfig = env.cluster.control_plane.token_kubeconfig(
            &env.dir.path().join("hook.kubeconfig"),
            &sa,
            &token,
        )?;
        // The operator and the agents still run while the hook does: they finalize the resources.
        let summary = run_hook_command(
            env,
            &kubeconfig,
            container.args.as_deref().unwrap_or_default(),
        )?;
        ensure!(
            summary.contains("removed Sonde's finalizer from 0"),
            "the running operator should have finalized everything: {summary}"
        );
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        env.rt.block_on(jobs.patch_status(
            &job_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "startTime": now, "completionTime": now, "succeeded": 1,
                "conditions": [
                    {"type": "SuccessCriteriaMet", "status": "True", "lastProbeTime": now, "lastTransitionTime": now},
                    {"type": "Complete", "status": "True", "lastProbeTime": now, "lastTransitionTime": now},
                ],
            }})),
        ))?;
    }
    env.rt
        .block_on(wait::until(
            "helm uninstall to finish",
            Duration::from_secs(120),
            || {
                let exit = helm.exit_status();
                async move { Ok(exit) }
            },
        ))
        .and_then(|status| {
            ensure!(
                status.success(),
                "helm uninstall failed:\n{}",
                helm.log_tail(20)
            );
            Ok(())
        })?;
    // Helm deleted the Deployment and the DaemonSet: their pods go.
    env.stop_operator();
    for node in NODES {
        env.stop_agent(node);
    }
    // What a user does next must not hang: delete what is left, then the CRDs Helm kept.
    for obj in sonde_objects(env)? {
        let what = obj.split_whitespace().next().unwrap_or_default();
        let mut parts = what.split('/');
        let (kind, ns, name) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        let mut args = vec!["delete", kind, name, "--timeout=15s"];
        if !ns.is_empty() {
            args.extend(["-n", ns]);
        }
        env.cluster.kubectl.run(&args, None).with_context(|| {
            format!("after helm uninstall, {obj} cannot be deleted: no operator is left to remove the finalizer")
        })?;
    }
    let hook_left = env.cluster.kubectl.run(
        &[
            "get",
            "jobs,serviceaccounts",
            "-n",
            helm::NAMESPACE,
            "-o",
            "name",
        ],
        None,
    )?;
    ensure!(
        !hook_left.contains(&job_name),
        "the succeeded hook's objects should be gone: {hook_left}"
    );
    env.cluster.kubectl.run(
        &[
            "delete",
            "crd",
            "tracepoints.sonde.dev",
            "dynamiclogs.sonde.dev",
            "bpftracescripts.sonde.dev",
            "nodeassignments.sonde.dev",
            "--timeout=60s",
        ],
        None,
    )?;
    Ok(())
}

fn main() -> ExitCode {
    suite::main(
        setup,
        vec![
            Scenario::new(
                "helm_upgrade_and_rollback_switch_auto_telemetry_through_the_operators_arguments",
                helm_upgrade_and_rollback_switch_auto_telemetry_through_the_operators_arguments,
            ),
            Scenario::new(
                "a_resource_deleted_while_the_operator_is_down_is_finalized_once_it_is_back",
                a_resource_deleted_while_the_operator_is_down_is_finalized_once_it_is_back,
            ),
            Scenario::new(
                "a_deleted_node_takes_its_node_assignment_and_its_share_of_the_status_along",
                a_deleted_node_takes_its_node_assignment_and_its_share_of_the_status_along,
            ),
            Scenario::new(
                "deleting_a_namespace_removes_its_probes_from_every_node_and_the_namespace_goes",
                deleting_a_namespace_removes_its_probes_from_every_node_and_the_namespace_goes,
            ),
            Scenario::new(
                "uninstall_with_no_operator_left_removes_the_finalizers_at_once",
                uninstall_with_no_operator_left_removes_the_finalizers_at_once,
            ),
            // Last: it uninstalls the release.
            Scenario::new(
                "helm_uninstall_leaves_nothing_terminating",
                helm_uninstall_leaves_nothing_terminating,
            ),
        ],
    )
}
