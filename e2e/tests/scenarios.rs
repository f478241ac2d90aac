//! Sonde end to end: a real control plane, the real `sonde-operator` and `sonde-agent` processes with
//! the chart's RBAC, a fake pod backed by a real process in a kubelet-style cgroup, and a real
//! Prometheus. Scenarios run in order and share one environment.
//!
//! Needs root (cgroups, bpftrace), etcd, kube-apiserver and helm from `scripts/setup e2e`, kubectl,
//! bpftrace, prometheus, cc and openssl. `cargo build -p sonde-operator -p sonde-agent` runs first.
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use kube::api::{Api, DeleteParams};
use sonde_api::{BpftraceScript, DynamicLog, NodeAssignment, ProbeConfig, ProbeState, Tracepoint};
use sonde_e2e::cluster::{Cluster, Install, TEST_NAMESPACE};
use sonde_e2e::fake_pod::{self, FakePod, PodSpec};
use sonde_e2e::observe::{self, HasStatus};
use sonde_e2e::prometheus::Prometheus;
use sonde_e2e::sonde::{Agent, Operator};
use sonde_e2e::suite::{self, Environment, Scenario};
use sonde_e2e::tools::{self, SondeBinaries};
use sonde_e2e::wait::{self, CONVERGE};
use sonde_e2e::{helm, process};

const NODE: &str = "node-a";
const SCRIPT: &str = "ticks";
const SCRIPT_ID: &str = "BpftraceScript/ticks";

struct Env {
    // Drop order = field order: Sonde's processes first (the agent stops its bpftrace), then the
    // fake pods and Prometheus, then the control plane, then the runtime and the directory.
    operators: Mutex<Vec<Operator>>,
    agent: Mutex<Option<Agent>>,
    prometheus: Mutex<Option<Prometheus>>,
    pods: Mutex<Vec<FakePod>>,
    cluster: Cluster,
    bins: SondeBinaries,
    ticker: PathBuf,
    logs: PathBuf,
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
}

impl Environment for Env {
    fn diagnostics(&self) -> String {
        let mut out = String::new();
        for op in lock(&self.operators).iter() {
            out += &suite::log_section(&op.pod_name, op.proc.log_path(), 40);
        }
        if let Some(agent) = lock(&self.agent).as_ref() {
            out += &suite::log_section("agent", agent.proc.log_path(), 60);
        }
        out += &suite::log_section(
            "kube-apiserver",
            self.cluster.control_plane.apiserver.log_path(),
            10,
        );
        if let Ok(Ok(Some(na))) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.rt
                .block_on(observe::node_assignment(&self.cluster.client, NODE))
        })) {
            let mut na = na;
            na.metadata.managed_fields = None;
            out += &format!(
                "\n----- NodeAssignment {NODE} -----\n{}\n",
                serde_yaml_ng::to_string(&na).unwrap_or_default()
            );
        }
        out
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Env {
    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::ClusterResourceScope>,
        K::DynamicType: Default,
    {
        Api::all(self.cluster.client.clone())
    }

    fn namespaced<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.cluster.client.clone(), TEST_NAMESPACE)
    }

    fn agent_url(&self) -> Result<String> {
        lock(&self.agent)
            .as_ref()
            .map(|a| a.url.clone())
            .context("the agent is not running")
    }

    fn agent_pid(&self) -> Result<u32> {
        lock(&self.agent)
            .as_ref()
            .map(|a| a.proc.pid())
            .context("the agent is not running")
    }

    fn start_agent(&self) -> Result<()> {
        let kubeconfig = self.cluster.agent_kubeconfig(NODE)?;
        let mut agent = Agent::start_cluster(&self.bins, &kubeconfig, NODE, &self.logs)?;
        if let Err(e) = self.rt.block_on(agent.wait_healthy()) {
            bail!("{e:#}; agent log:\n{}", agent.proc.log_tail(40));
        }
        *lock(&self.agent) = Some(agent);
        Ok(())
    }

    fn start_operator(&self, pod_name: &str) -> Result<()> {
        let ids = self.cluster.identities()?;
        let op = Operator::start(&self.bins, &ids.operator_kubeconfig, pod_name, &self.logs)?;
        lock(&self.operators).push(op);
        Ok(())
    }

    fn start_pod(&self, name: &str, app: &str) -> Result<(String, String)> {
        let spec = PodSpec {
            namespace: TEST_NAMESPACE.into(),
            name: name.into(),
            node: NODE.into(),
            labels: BTreeMap::from([("app".to_string(), app.to_string())]),
            container: "app".into(),
            command: vec![self.ticker.to_string_lossy().into_owned()],
        };
        let pod = self
            .rt
            .block_on(FakePod::start(&self.cluster.client, &spec, &self.logs))?;
        let ids = (pod.uid.clone(), pod.container_id.clone());
        lock(&self.pods).push(pod);
        Ok(ids)
    }

    /// bpftrace processes run by the current agent.
    fn bpftraces(&self) -> Result<Vec<u32>> {
        Ok(observe::bpftrace_descendants(self.agent_pid()?))
    }

    /// The agent runs exactly one bpftrace per BpftraceScript probe it reports Attached.
    fn one_bpftrace_per_attached_script(&self) -> Result<()> {
        self.rt.block_on(wait::until_ok(
            "one bpftrace per attached script",
            CONVERGE,
            || async {
                let na = observe::node_assignment(&self.cluster.client, NODE)
                    .await?
                    .context("no NodeAssignment")?;
                let attached = na
                    .status
                    .as_ref()
                    .map(|s| {
                        s.probes
                            .iter()
                            .filter(|p| {
                                p.id.starts_with("BpftraceScript/")
                                    && p.state == ProbeState::Attached
                            })
                            .count()
                    })
                    .unwrap_or(0);
                let running = self.bpftraces()?;
                ensure!(
                    running.len() == attached,
                    "{attached} attached scripts but bpftrace pids {running:?}"
                );
                Ok(())
            },
        ))
    }
}

fn setup() -> Result<Env> {
    let bins = tools::build_sonde()?;
    tools::bpftrace()?;
    let rt = tokio::runtime::Runtime::new()?;
    let dir = suite::work_dir("sonde-e2e-")?;
    let logs = dir.path().join("logs");
    let cluster = rt.block_on(Cluster::start(dir.path(), Install { rbac: true }))?;
    let ticker = fake_pod::compile_ticker(dir.path())?;
    rt.block_on(fake_pod::create_node(
        &cluster.client,
        NODE,
        &BTreeMap::from([("sonde.dev/e2e".to_string(), "true".to_string())]),
    ))?;
    let env = Env {
        operators: Mutex::new(vec![]),
        agent: Mutex::new(None),
        prometheus: Mutex::new(None),
        pods: Mutex::new(vec![]),
        cluster,
        bins,
        ticker,
        logs,
        rt,
        dir,
    };
    env.start_pod("ticker-1", "ticker")?;
    env.start_operator("sonde-operator-0")?;
    env.start_agent()?;
    Ok(env)
}

fn ticks_script(ticker: &std::path::Path) -> String {
    format!(
        r#"apiVersion: sonde.dev/v1alpha1
kind: BpftraceScript
metadata:
  name: {SCRIPT}
spec:
  tableName: ticks
  pods:
    namespace: {TEST_NAMESPACE}
    selector:
      matchLabels: {{app: ticker}}
  program: |
    uprobe:{bin}:sonde_e2e_tick {{
      printf("time_:%llu pid:%d tick:%d\n", nsecs, pid, arg0);
      @ticks[comm] = count();
    }}
    interval:s:1 {{ print(@ticks); }}
"#,
        bin = ticker.display()
    )
}

fn node_wide_script(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: sonde.dev/v1alpha1\nkind: BpftraceScript\nmetadata:\n  name: {name}\nspec:\n{extra}  \
         program: |\n    tracepoint:syscalls:sys_enter_getppid {{ @calls = count(); }}\n"
    )
}

/// Applies the `ticks` script (idempotent) and waits until it is Ready, so that scenarios which read
/// its output also work when run alone with a filter.
fn ensure_ticks_script(env: &Env) -> Result<()> {
    env.cluster.kubectl.apply(&ticks_script(&env.ticker))?;
    env.rt
        .block_on(observe::wait_condition(
            &env.api::<BpftraceScript>(),
            SCRIPT,
            "Ready",
            "True",
            CONVERGE,
        ))
        .map(drop)
}

// ---- scenarios ----

fn a_bpftrace_script_is_assigned_attached_and_ready(env: &Env) -> Result<()> {
    env.cluster.kubectl.apply(&ticks_script(&env.ticker))?;
    let pod = lock(&env.pods)
        .iter()
        .find(|p| p.name == "ticker-1")
        .map(|p| (p.uid.clone(), p.container_id.clone()))
        .context("ticker-1 is not running")?;
    let client = &env.cluster.client;
    env.rt.block_on(async {
        let probe = observe::wait_assigned(client, NODE, SCRIPT_ID, CONVERGE, |p| {
            p.targets
                .iter()
                .any(|t| t.pod_uid == pod.0 && t.container_id == pod.1)
        })
        .await?;
        ensure!(
            matches!(probe.config, ProbeConfig::BpftraceScript(_)),
            "wrong config kind: {:?}",
            probe.config
        );
        ensure!(probe.owner.kind == "BpftraceScript" && probe.owner.name == SCRIPT);
        let st = observe::wait_probe_state(client, NODE, SCRIPT_ID, ProbeState::Attached, CONVERGE)
            .await?;
        ensure!(st.targets_attached >= 1, "no targets attached: {st:?}");
        let status = observe::wait_condition(
            &env.api::<BpftraceScript>(),
            SCRIPT,
            "Ready",
            "True",
            CONVERGE,
        )
        .await?;
        ensure!(
            status.nodes.selected == 1 && status.nodes.ready == 1 && status.nodes.failed == 0,
            "node counts {:?}",
            status.nodes
        );
        // `kubectl get` says why it is (not) ready, not only whether.
        let listed = env
            .cluster
            .kubectl
            .run(&["get", "bpftracescripts", SCRIPT], None)?;
        ensure!(
            listed.contains("REASON") && listed.contains("AllNodesReady"),
            "kubectl get bpftracescripts shows no reason:\n{listed}"
        );
        Ok(())
    })
}

fn the_scripts_rows_are_read_over_http_with_an_authorized_token(env: &Env) -> Result<()> {
    ensure_ticks_script(env)?;
    let url = env.agent_url()?;
    let token = env.cluster.identities()?.reader_token.clone();
    env.rt.block_on(async {
        let (code, body) = observe::agent_get(&url, "/v1/tables", Some(&token)).await?;
        ensure!(code == 200, "GET /v1/tables: {code} {body}");
        ensure!(body.contains("ticks"), "table ticks not listed: {body}");
        wait::until_ok("rows in table ticks", CONVERGE, || async {
            let (code, body) =
                observe::agent_get(&url, "/v1/tables/ticks?format=json", Some(&token)).await?;
            ensure!(code == 200, "GET /v1/tables/ticks: {code} {body}");
            let rows: Vec<serde_json::Value> = serde_json::from_str(&body)
                .with_context(|| format!("not a JSON array of rows: {body}"))?;
            ensure!(!rows.is_empty(), "no rows yet");
            ensure!(
                rows.iter()
                    .all(|r| r.get("tick").is_some() && r.get("time_").is_some()),
                "rows lack the tick/time_ columns: {}",
                rows[0]
            );
            Ok(())
        })
        .await
    })
}

fn table_reads_without_a_token_get_401_and_with_an_unauthorized_token_get_403(
    env: &Env,
) -> Result<()> {
    let url = env.agent_url()?;
    let outsider = env.cluster.identities()?.outsider_token.clone();
    env.rt.block_on(async {
        let (code, body) = observe::agent_get(&url, "/v1/tables/ticks", None).await?;
        ensure!(code == 401, "without a token: {code} {body}");
        let (code, body) =
            observe::agent_get(&url, "/v1/tables/ticks", Some("not-a-real-token")).await?;
        ensure!(code == 401, "with a forged token: {code} {body}");
        let (code, body) = observe::agent_get(&url, "/v1/tables/ticks", Some(&outsider)).await?;
        ensure!(code == 403, "with a token granted nothing: {code} {body}");
        Ok(())
    })
}

/// `/metrics` carries series derived from captured traffic: in a cluster it needs a token allowed to
/// get the non-resource URL /metrics (the chart's `sonde-metrics-reader`, as Prometheus's RBAC
/// grants it); reading tables does not grant it. The health checks stay open.
fn metrics_need_a_token_bound_to_the_charts_metrics_reader_role(env: &Env) -> Result<()> {
    let url = env.agent_url()?;
    let ids = env.cluster.identities()?.clone();
    env.rt.block_on(async {
        let (code, body) = observe::agent_get(&url, "/metrics", None).await?;
        ensure!(code == 401, "without a token: {code} {body}");
        ensure!(
            body.contains("metrics-reader"),
            "the 401 does not say which role to bind: {body}"
        );
        for (who, token) in [
            ("a user granted nothing", &ids.outsider_token),
            ("a table reader", &ids.reader_token),
        ] {
            let (code, body) = observe::agent_get(&url, "/metrics", Some(token)).await?;
            ensure!(code == 403, "as {who}: {code} {body}");
            ensure!(
                body.contains("<release>-metrics-reader") && body.contains("--metrics-auth=false"),
                "the 403 does not say what to do: {body}"
            );
        }
        let (code, body) = observe::agent_get(&url, "/metrics", Some(&ids.metrics_token)).await?;
        ensure!(code == 200, "as the metrics reader: {code} {body}");
        ensure!(
            body.lines().any(|l| l.starts_with("sonde_")),
            "no sonde_ series in /metrics: {body}"
        );
        for path in ["/healthz", "/readyz"] {
            let (code, body) = observe::agent_get(&url, path, None).await?;
            ensure!(code == 200, "{path} without a token: {code} {body}");
        }
        Ok(())
    })
}

/// A reader granted `get tables.sonde.dev` in one namespace (a Role) reads that namespace's rows
/// by naming it, and nothing else: not the whole table, not another namespace, not the list.
fn a_reader_granted_one_namespace_reads_its_rows_only(env: &Env) -> Result<()> {
    ensure_ticks_script(env)?;
    let url = env.agent_url()?;
    let token = env.cluster.identities()?.team_reader_token.clone();
    env.rt.block_on(async {
        wait::until_ok("the team's rows in table ticks", CONVERGE, || async {
            let path = format!("/v1/tables/ticks?format=json&namespace={TEST_NAMESPACE}");
            let (code, body) = observe::agent_get(&url, &path, Some(&token)).await?;
            ensure!(code == 200, "GET {path}: {code} {body}");
            let rows: Vec<serde_json::Value> = serde_json::from_str(&body)
                .with_context(|| format!("not a JSON array of rows: {body}"))?;
            ensure!(!rows.is_empty(), "no rows yet");
            ensure!(
                rows.iter().all(|r| r["namespace"] == TEST_NAMESPACE),
                "a row of another namespace: {body}"
            );
            Ok(())
        })
        .await?;
        for path in [
            "/v1/tables/ticks".to_owned(),
            "/v1/tables/ticks?namespace=sonde-system".to_owned(),
            "/v1/tables".to_owned(),
            format!("/v1/status?namespace={TEST_NAMESPACE}"),
        ] {
            let (code, body) = observe::agent_get(&url, &path, Some(&token)).await?;
            ensure!(
                code == 403,
                "GET {path} as the team's reader: {code} {body}"
            );
        }
        Ok(())
    })
}

fn the_scripts_map_appears_in_the_agents_metrics(env: &Env) -> Result<()> {
    ensure_ticks_script(env)?;
    let url = env.agent_url()?;
    let token = env.cluster.identities()?.metrics_token.clone();
    env.rt.block_on(wait::until_ok(
        "sonde_bpftrace_ticks in /metrics",
        CONVERGE,
        || async {
            let (code, body) = observe::agent_get(&url, "/metrics", Some(&token)).await?;
            ensure!(code == 200, "GET /metrics: {code}");
            let line = body
                .lines()
                .find(|l| l.starts_with("sonde_bpftrace_ticks"))
                .context("no sonde_bpftrace_ticks series yet")?;
            ensure!(
                line.contains("script="),
                "series without a script label: {line}"
            );
            Ok(())
        },
    ))
}

/// The agent writes its NodeAssignment's status when something changes, and on a heartbeat every
/// 30 s: with nothing changing it writes nothing in between. (Its own writes came back as watch
/// events of the same generation, were applied again and caused the next write, once a second.)
fn an_agent_with_nothing_changing_writes_its_status_only_on_the_heartbeat(env: &Env) -> Result<()> {
    ensure_ticks_script(env)?;
    let url = env.agent_url()?;
    let token = env.cluster.identities()?.metrics_token.clone();
    let writes = || async {
        let (code, body) = observe::agent_get(&url, "/metrics", Some(&token)).await?;
        ensure!(code == 200, "GET /metrics: {code}");
        body.lines()
            .find_map(|l| l.strip_prefix("sonde_status_writes_total{result=\"ok\"} "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .context("no sonde_status_writes_total{result=\"ok\"} in the agent's metrics")
    };
    env.rt.block_on(async {
        // Past the writes of the script becoming ready.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let before = writes().await?;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let after = writes().await?;
        ensure!(
            after - before <= 1.0,
            "{} status writes in 10 s with nothing changing (a heartbeat is every 30 s)",
            after - before
        );
        Ok(())
    })
}

/// A real Prometheus sends the token of a ServiceAccount bound to the chart's
/// `sonde-metrics-reader` (`authorization: {credentials_file}`), as one in a cluster sends its own.
fn a_real_prometheus_scrapes_a_sonde_series_from_the_agent(env: &Env) -> Result<()> {
    let port = lock(&env.agent)
        .as_ref()
        .map(|a| a.port)
        .context("no agent")?;
    let token = env.cluster.identities()?.metrics_token.clone();
    let prom = env.rt.block_on(Prometheus::start(
        env.dir.path(),
        &[format!("127.0.0.1:{port}")],
        Some(&token),
    ))?;
    let result = env
        .rt
        .block_on(prom.sonde_series("a sonde_ series in Prometheus", Duration::from_secs(60)));
    *lock(&env.prometheus) = Some(prom);
    result?;
    Ok(())
}

fn exactly_one_bpftrace_runs_per_script(env: &Env) -> Result<()> {
    ensure_ticks_script(env)?;
    env.one_bpftrace_per_attached_script()
}

/// Tracepoint and DynamicLog have no runtime yet: the agent reports "runtime not available", and the
/// operator turns that into Degraded, while the spec round-trips into the NodeAssignment unchanged.
fn round_trip_until_ready<K>(env: &Env, kind: &str, name: &str, yaml: &str) -> Result<()>
where
    K: HasStatus
        + kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    env.cluster.kubectl.apply(yaml)?;
    let id = format!("{kind}/{TEST_NAMESPACE}/{name}");
    let client = &env.cluster.client;
    let api = env.namespaced::<K>();
    env.rt.block_on(async {
        let probe =
            observe::wait_assigned(client, NODE, &id, CONVERGE, |p| !p.targets.is_empty()).await?;
        // Both sides go through the same Rust types, so defaults are filled in alike.
        let cr_spec = serde_json::to_value(api.get(name).await?)?["spec"].clone();
        let config = serde_json::to_value(&probe.config)?;
        let assigned_spec = config.get(kind_key(kind)).cloned().unwrap_or_default();
        ensure!(
            cr_spec == assigned_spec,
            "the spec did not round-trip: CR has {cr_spec}, NodeAssignment has {assigned_spec}"
        );
        let st =
            observe::wait_probe_state(client, NODE, &id, ProbeState::Attached, CONVERGE).await?;
        ensure!(st.targets_attached >= 1, "agent status: {st:?}");
        let status = observe::wait_condition(&api, name, "Ready", "True", CONVERGE).await?;
        ensure!(
            status.nodes.ready == 1 && status.nodes.failed == 0 && status.failures.is_empty(),
            "status: {status:?}"
        );
        Ok(())
    })
}

fn kind_key(kind: &str) -> &'static str {
    match kind {
        "Tracepoint" => "tracepoint",
        "DynamicLog" => "dynamicLog",
        _ => "bpftraceScript",
    }
}

fn a_tracepoint_round_trips_and_becomes_ready(env: &Env) -> Result<()> {
    let yaml = format!(
        "apiVersion: sonde.dev/v1alpha1\nkind: Tracepoint\nmetadata: {{name: http, namespace: {TEST_NAMESPACE}}}\n\
         spec:\n  selector: {{matchLabels: {{app: ticker}}}}\n  probe: {{protocols: [http, dns], maxBodyBytes: 256}}\n"
    );
    round_trip_until_ready::<Tracepoint>(env, "Tracepoint", "http", &yaml)
}

fn a_dynamic_log_round_trips_and_becomes_ready(env: &Env) -> Result<()> {
    let yaml = format!(
        "apiVersion: sonde.dev/v1alpha1\nkind: DynamicLog\nmetadata: {{name: tick, namespace: {TEST_NAMESPACE}}}\n\
         spec:\n  selector: {{matchLabels: {{app: ticker}}}}\n  function: sonde_e2e_tick\n  \
         capture: {{args: [{{name: \"value\", expr: \"n\"}}], latency: true}}\n  maxStringBytes: 32\n"
    );
    round_trip_until_ready::<DynamicLog>(env, "DynamicLog", "tick", &yaml)
}

fn a_pod_added_later_is_picked_up_without_touching_the_resource(env: &Env) -> Result<()> {
    let yaml = format!(
        "apiVersion: sonde.dev/v1alpha1\nkind: Tracepoint\nmetadata: {{name: late, namespace: {TEST_NAMESPACE}}}\n\
         spec:\n  selector: {{matchLabels: {{app: late}}}}\n  probe: {{profiler: {{frequencyHz: 49}}}}\n"
    );
    env.cluster.kubectl.apply(&yaml)?;
    let api = env.namespaced::<Tracepoint>();
    let generation = env.rt.block_on(async {
        // The operator has seen the resource once it wrote a status for its generation.
        wait::until(
            "the operator to process Tracepoint late",
            CONVERGE,
            || async {
                let tp = api.get("late").await?;
                let seen = tp.status.as_ref().and_then(|s| s.observed_generation);
                Ok((seen.is_some() && seen == tp.metadata.generation).then_some(seen))
            },
        )
        .await
    })?;
    let (uid, container_id) = env.start_pod("late-1", "late")?;
    let id = format!("Tracepoint/{TEST_NAMESPACE}/late");
    env.rt.block_on(async {
        observe::wait_assigned(&env.cluster.client, NODE, &id, CONVERGE, |p| {
            p.targets
                .iter()
                .any(|t| t.pod_uid == uid && t.container_id == container_id && t.pod == "late-1")
        })
        .await?;
        observe::wait_probe_state(
            &env.cluster.client,
            NODE,
            &id,
            ProbeState::Attached,
            CONVERGE,
        )
        .await?;
        let tp = api.get("late").await?;
        ensure!(
            tp.status.as_ref().and_then(|s| s.observed_generation) == generation,
            "the resource itself changed generation"
        );
        Ok(())
    })
}

fn deleting_a_script_removes_its_probe_and_stops_its_bpftrace(env: &Env) -> Result<()> {
    let before: BTreeSet<u32> = env.bpftraces()?.into_iter().collect();
    env.cluster.kubectl.apply(&node_wide_script("doomed", ""))?;
    let api = env.api::<BpftraceScript>();
    let id = "BpftraceScript/doomed";
    let ours = env.rt.block_on(async {
        observe::wait_condition(&api, "doomed", "Ready", "True", CONVERGE).await?;
        wait::until("the new bpftrace", CONVERGE, || async {
            let now: BTreeSet<u32> = env.bpftraces()?.into_iter().collect();
            let new: Vec<u32> = now.difference(&before).copied().collect();
            Ok((new.len() == 1).then_some(new))
        })
        .await
    })?;
    env.cluster.kubectl.run(
        &["delete", "bpftracescript", "doomed", "--wait=false"],
        None,
    )?;
    env.rt.block_on(async {
        observe::wait_unassigned(&env.cluster.client, NODE, id, CONVERGE).await?;
        wait::until("BpftraceScript doomed to be deleted", CONVERGE, || async {
            Ok(api.get_opt("doomed").await?.is_none().then_some(()))
        })
        .await?;
        wait::until_ok("its bpftrace to exit", CONVERGE, || async {
            let alive: Vec<u32> = ours
                .iter()
                .copied()
                .filter(|p| process::alive(*p))
                .collect();
            ensure!(alive.is_empty(), "still running: {alive:?}");
            Ok(())
        })
        .await
    })
}

fn a_script_past_its_ttl_is_marked_expired_and_stopped(env: &Env) -> Result<()> {
    let before: BTreeSet<u32> = env.bpftraces()?.into_iter().collect();
    env.cluster
        .kubectl
        .apply(&node_wide_script("brief", "  ttl: 8s\n"))?;
    let api = env.api::<BpftraceScript>();
    env.rt.block_on(async {
        let status =
            observe::wait_condition(&api, "brief", "Expired", "True", Duration::from_secs(60))
                .await?;
        ensure!(status.expires_at.is_some(), "no expiresAt in {status:?}");
        observe::wait_unassigned(&env.cluster.client, NODE, "BpftraceScript/brief", CONVERGE)
            .await?;
        wait::until_ok(
            "no bpftrace left for the expired script",
            CONVERGE,
            || async {
                let extra: Vec<u32> = env
                    .bpftraces()?
                    .into_iter()
                    .filter(|p| !before.contains(p))
                    .collect();
                ensure!(extra.is_empty(), "bpftrace still running: {extra:?}");
                Ok(())
            },
        )
        .await
    })?;
    env.cluster
        .kubectl
        .run(&["delete", "bpftracescript", "brief"], None)?;
    Ok(())
}

/// Probe ids of the NodeAssignment, failing on duplicates.
fn assigned_ids(env: &Env) -> Result<Vec<String>> {
    let na: NodeAssignment = env
        .rt
        .block_on(observe::node_assignment(&env.cluster.client, NODE))?
        .context("no NodeAssignment")?;
    let ids: Vec<String> = na.spec.probes.iter().map(|p| p.id.clone()).collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    ensure!(unique.len() == ids.len(), "duplicate probes: {ids:?}");
    ensure!(
        na.spec.probe_count as usize == ids.len(),
        "probeCount {} for {} probes",
        na.spec.probe_count,
        ids.len()
    );
    Ok(ids)
}

fn the_operator_restart_converges_without_duplicate_probes(env: &Env) -> Result<()> {
    let ids_before = assigned_ids(env)?;
    let pids_before: BTreeSet<u32> = env.bpftraces()?.into_iter().collect();
    {
        let mut ops = lock(&env.operators);
        for op in ops.iter_mut() {
            op.proc.crash();
        }
        ops.clear();
    }
    env.start_operator("sonde-operator-restarted")?;
    // Prove the new operator works, then check nothing was duplicated or restarted on the way.
    env.cluster
        .kubectl
        .apply(&node_wide_script("after-restart", ""))?;
    let api = env.api::<BpftraceScript>();
    env.rt.block_on(observe::wait_condition(
        &api,
        "after-restart",
        "Ready",
        "True",
        Duration::from_secs(90),
    ))?;
    env.rt.block_on(observe::wait_condition(
        &api, SCRIPT, "Ready", "True", CONVERGE,
    ))?;
    let ids_after = assigned_ids(env)?;
    let expected: BTreeSet<String> = ids_before
        .iter()
        .cloned()
        .chain([String::from("BpftraceScript/after-restart")])
        .collect();
    ensure!(
        ids_after.iter().cloned().collect::<BTreeSet<_>>() == expected,
        "probes before {ids_before:?}, after {ids_after:?}"
    );
    let still: Vec<u32> = pids_before
        .iter()
        .copied()
        .filter(|p| !process::alive(*p))
        .collect();
    ensure!(
        still.is_empty(),
        "bpftrace restarted by an operator restart: {still:?} exited"
    );
    env.one_bpftrace_per_attached_script()?;
    env.cluster
        .kubectl
        .run(&["delete", "bpftracescript", "after-restart"], None)?;
    env.rt.block_on(observe::wait_unassigned(
        &env.cluster.client,
        NODE,
        "BpftraceScript/after-restart",
        CONVERGE,
    ))
}

fn an_agent_stopped_with_sigterm_leaves_no_bpftrace_behind_and_a_new_one_converges(
    env: &Env,
) -> Result<()> {
    agent_restart(env, false)
}

fn a_killed_agent_leaves_no_bpftrace_behind_and_a_new_one_converges(env: &Env) -> Result<()> {
    agent_restart(env, true)
}

fn agent_restart(env: &Env, crash: bool) -> Result<()> {
    ensure_ticks_script(env)?;
    let ids_before = assigned_ids(env)?;
    // A script may be between a stop and a start of its bpftrace (e.g. the previous scenario's
    // scripts going away); wait for a running one rather than sampling once.
    let old: Vec<u32> = env.rt.block_on(wait::until(
        "a bpftrace running before the restart",
        CONVERGE,
        || async {
            let running = env.bpftraces()?;
            Ok((!running.is_empty()).then_some(running))
        },
    ))?;
    {
        let mut agent = lock(&env.agent).take().context("no agent")?;
        if crash {
            agent.proc.crash();
        } else {
            let status = agent.proc.stop(Duration::from_secs(20));
            ensure!(
                status.is_some_and(|s| s.code().is_some()),
                "the agent did not exit by itself on SIGTERM within 20s: {status:?}"
            );
        }
    }
    env.rt.block_on(wait::until_ok(
        "the old agent's bpftrace processes to exit",
        Duration::from_secs(60),
        || async {
            let alive: Vec<u32> = old.iter().copied().filter(|p| process::alive(*p)).collect();
            ensure!(alive.is_empty(), "orphaned bpftrace: {alive:?}");
            Ok(())
        },
    ))?;
    env.start_agent()?;
    let client = &env.cluster.client;
    env.rt.block_on(observe::wait_probe_state(
        client,
        NODE,
        SCRIPT_ID,
        ProbeState::Attached,
        CONVERGE,
    ))?;
    ensure!(
        assigned_ids(env)? == ids_before,
        "probes changed across the agent restart"
    );
    env.one_bpftrace_per_attached_script()?;
    env.rt.block_on(observe::wait_condition(
        &env.api::<BpftraceScript>(),
        SCRIPT,
        "Ready",
        "True",
        CONVERGE,
    ))?;
    Ok(())
}

fn two_operator_replicas_elect_one_leader_and_work_continues_after_the_leader_dies(
    env: &Env,
) -> Result<()> {
    if lock(&env.operators).is_empty() {
        env.start_operator("sonde-operator-restarted")?;
    }
    env.start_operator("sonde-operator-b")?;
    let names: BTreeSet<String> = lock(&env.operators)
        .iter()
        .map(|o| o.pod_name.clone())
        .collect();
    let client = &env.cluster.client;
    let leader = env.rt.block_on(wait::until(
        "one Lease held by one of the replicas",
        Duration::from_secs(60),
        || async {
            let holders = observe::lease_holders(client, helm::NAMESPACE).await?;
            let ours: BTreeSet<&String> = holders.values().filter(|h| names.contains(*h)).collect();
            match ours.len() {
                0 => bail!("no Lease held by {names:?}: {holders:?}"),
                1 => Ok(ours.into_iter().next().cloned()),
                _ => bail!("several replicas hold Leases: {holders:?}"),
            }
        },
    ))?;
    {
        let mut ops = lock(&env.operators);
        let pos = ops
            .iter()
            .position(|o| o.pod_name == leader)
            .context("leader not among our replicas")?;
        let mut dead = ops.remove(pos);
        dead.proc.crash();
    }
    let new_leader = env.rt.block_on(wait::until(
        "the other replica to take the Lease",
        Duration::from_secs(90),
        || async {
            let holders = observe::lease_holders(client, helm::NAMESPACE).await?;
            let h = holders
                .values()
                .find(|h| names.contains(*h) && **h != leader)
                .cloned();
            Ok(h)
        },
    ))?;
    ensure!(new_leader != leader);
    env.cluster
        .kubectl
        .apply(&node_wide_script("after-failover", ""))?;
    env.rt.block_on(observe::wait_condition(
        &env.api::<BpftraceScript>(),
        "after-failover",
        "Ready",
        "True",
        Duration::from_secs(60),
    ))?;
    let api = env.api::<BpftraceScript>();
    env.rt
        .block_on(api.delete("after-failover", &DeleteParams::default()))?;
    Ok(())
}

fn main() -> ExitCode {
    let scenarios: Vec<Scenario<Env>> = vec![
        Scenario::new(
            "a_bpftrace_script_is_assigned_attached_and_ready",
            a_bpftrace_script_is_assigned_attached_and_ready,
        ),
        Scenario::new(
            "the_scripts_rows_are_read_over_http_with_an_authorized_token",
            the_scripts_rows_are_read_over_http_with_an_authorized_token,
        ),
        Scenario::new(
            "table_reads_without_a_token_get_401_and_with_an_unauthorized_token_get_403",
            table_reads_without_a_token_get_401_and_with_an_unauthorized_token_get_403,
        ),
        Scenario::new(
            "metrics_need_a_token_bound_to_the_charts_metrics_reader_role",
            metrics_need_a_token_bound_to_the_charts_metrics_reader_role,
        ),
        Scenario::new(
            "a_reader_granted_one_namespace_reads_its_rows_only",
            a_reader_granted_one_namespace_reads_its_rows_only,
        ),
        Scenario::new(
            "the_scripts_map_appears_in_the_agents_metrics",
            the_scripts_map_appears_in_the_agents_metrics,
        ),
        Scenario::new(
            "an_agent_with_nothing_changing_writes_its_status_only_on_the_heartbeat",
            an_agent_with_nothing_changing_writes_its_status_only_on_the_heartbeat,
        ),
        Scenario::new(
            "a_real_prometheus_scrapes_a_sonde_series_from_the_agent",
            a_real_prometheus_scrapes_a_sonde_series_from_the_agent,
        ),
        Scenario::new(
            "exactly_one_bpftrace_runs_per_script",
            exactly_one_bpftrace_runs_per_script,
        ),
        Scenario::new(
            "a_tracepoint_round_trips_and_becomes_ready",
            a_tracepoint_round_trips_and_becomes_ready,
        ),
        Scenario::new(
            "a_dynamic_log_round_trips_and_becomes_ready",
            a_dynamic_log_round_trips_and_becomes_ready,
        ),
        Scenario::new(
            "a_pod_added_later_is_picked_up_without_touching_the_resource",
            a_pod_added_later_is_picked_up_without_touching_the_resource,
        ),
        Scenario::new(
            "deleting_a_script_removes_its_probe_and_stops_its_bpftrace",
            deleting_a_script_removes_its_probe_and_stops_its_bpftrace,
        ),
        Scenario::new(
            "a_script_past_its_ttl_is_marked_expired_and_stopped",
            a_script_past_its_ttl_is_marked_expired_and_stopped,
        ),
        Scenario::new(
            "the_operator_restart_converges_without_duplicate_probes",
            the_operator_restart_converges_without_duplicate_probes,
        ),
        Scenario::new(
            "an_agent_stopped_with_sigterm_leaves_no_bpftrace_behind_and_a_new_one_converges",
            an_agent_stopped_with_sigterm_leaves_no_bpftrace_behind_and_a_new_one_converges,
        ),
        Scenario::new(
            "a_killed_agent_leaves_no_bpftrace_behind_and_a_new_one_converges",
            a_killed_agent_leaves_no_bpftrace_behind_and_a_new_one_converges,
        ),
        Scenario::new(
            "two_operator_replicas_elect_one_leader_and_work_continues_after_the_leader_dies",
            two_operator_replicas_elect_one_leader_and_work_continues_after_the_leader_dies,
        ),
    ];
    suite::main(setup, scenarios)
}
