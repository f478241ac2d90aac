//! DynamicLog end to end: a DynamicLog selecting fake pods (a real Go program in kubelet-style
//! cgroups) through the real operator and agent; rows carry the pods' identities and a pod started
//! after the probe is traced too; deleting the resource detaches the probe from the node.
//!
//! Needs what `scenarios` needs (root, etcd, kube-apiserver, helm from `scripts/setup e2e`) plus Go
//! at /usr/local/go/bin/go.
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, ensure};
use kube::api::{Api, DeleteParams};
use sonde_api::DynamicLog;
use sonde_e2e::cluster::TEST_NAMESPACE;
use sonde_e2e::observe;
use sonde_e2e::single_node::{SingleNode, lock};
use sonde_e2e::suite::{self, Environment, Scenario};
use sonde_e2e::wait::{self, CONVERGE};

const NODE: &str = "node-d";
const PROBE_ID: &str = "DynamicLog/sonde-e2e/checkout-orders";
/// `spec.tableName` qualified by the DynamicLog's namespace.
const TABLE: &str = "sonde-e2e.checkout_orders";

struct Env {
    node: SingleNode,
    /// The Go program the pods run.
    program: PathBuf,
}

impl Environment for Env {
    fn diagnostics(&self) -> String {
        self.node.diagnostics()
    }
}

/// Builds the Go test program of node-agent's DynamicLog tests.
fn compile_program(dir: &Path) -> Result<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../node-agent/tests/fixtures/dynamic_log/goprog");
    let bin = dir.join("checkout");
    let out = Command::new("/usr/local/go/bin/go")
        .args(["build", "-buildvcs=false", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(&src)
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .output()
        .context("running /usr/local/go/bin/go: install Go (scripts/setup)")?;
    ensure!(
        out.status.success(),
        "go build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(bin)
}

fn start_pod(env: &Env, name: &str) -> Result<()> {
    env.node.start_pod(
        name,
        "checkout",
        "server",
        vec![
            env.program.to_string_lossy().into_owned(),
            "loop".into(),
            "order".into(),
        ],
    )
}

fn setup() -> Result<Env> {
    let node = SingleNode::start("sonde-e2e-dynamic-log-", NODE)?;
    let program = compile_program(node.dir.path())?;
    let env = Env { node, program };
    start_pod(&env, "checkout-1")?;
    env.node.start_sonde()?;
    Ok(env)
}

const DYNAMIC_LOG: &str = "apiVersion: sonde.dev/v1alpha1
kind: DynamicLog
metadata:
  name: checkout-orders
  namespace: sonde-e2e
spec:
  selector:
    matchLabels: {app: checkout}
  container: server
  function: main.(*Server).PlaceOrder
  tableName: checkout_orders
  capture:
    args:
      - {name: order_id, expr: req.ID}
      - {name: user, expr: req.User.Name}
    returns:
      - {name: err, expr: $1}
    latency: true
  metrics:
    - {name: place_order, type: counter, labels: [user]}
";

/// Rows of [`TABLE`] for `pod`.
async fn pod_rows(url: &str, token: &str, pod: &str) -> Result<Vec<serde_json::Value>> {
    let path = format!("/v1/tables/{TABLE}?format=json");
    let (code, body) = observe::agent_get(url, &path, Some(token)).await?;
    ensure!(code == 200, "GET {path}: {code} {body}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&body)?;
    Ok(rows.into_iter().filter(|r| r["pod"] == pod).collect())
}

/// Waits until `pod`'s successful and failed orders are in the table with exact values.
async fn wait_orders(url: &str, token: &str, pod: &str) -> Result<()> {
    wait::until_ok(&format!("PlaceOrder rows of {pod}"), CONVERGE, || async {
        let rows = pod_rows(url, token, pod).await?;
        let ok = rows
            .iter()
            .find(|r| r["order_id"] == 42)
            .context("no order 42 yet")?;
        ensure!(
            ok["user"] == "alice"
                && ok["err"].is_null()
                && ok["namespace"] == TEST_NAMESPACE
                && ok["container"] == "server"
                && ok["latency"].as_i64().unwrap_or(0) > 0
                && ok["goid"].as_i64().unwrap_or(0) > 0,
            "unexpected row {ok}"
        );
        let failed = rows
            .iter()
            .find(|r| r["order_id"] == 7)
            .context("no order 7 yet")?;
        ensure!(
            failed["user"] == "carol"
                && failed["err"] == r#"{"type":"*errors.errorString","value":"bad quantity"}"#,
            "unexpected row {failed}"
        );
        Ok(())
    })
    .await
}

fn a_dynamic_log_on_fake_pods_fills_its_table_follows_new_pods_and_detaches_on_delete(
    env: &Env,
) -> Result<()> {
    let node = &env.node;
    node.cluster.kubectl.apply(DYNAMIC_LOG)?;
    let api: Api<DynamicLog> = Api::namespaced(node.cluster.client.clone(), TEST_NAMESPACE);
    node.wait_ready_and_attached(&api, "checkout-orders", PROBE_ID)?;
    let url = node.agent_url()?;
    let token = node.reader_token()?;
    let metrics_token = node.metrics_token()?;
    node.rt.block_on(wait_orders(&url, &token, "checkout-1"))?;
    // A pod started after the probe (scale-up) is traced as well.
    start_pod(env, "checkout-2")?;
    node.rt.block_on(wait_orders(&url, &token, "checkout-2"))?;
    node.rt.block_on(wait::until_ok(
        "the place_order counter in /metrics",
        CONVERGE,
        || async {
            let (_, metrics) = observe::agent_get(&url, "/metrics", Some(&metrics_token)).await?;
            ensure!(
                metrics.lines().any(|l| l.starts_with(
                    "sonde_dynamic_log_place_order_total{probe=\"DynamicLog/sonde-e2e/checkout-orders\",user=\"alice\"}"
                )),
                "no place_order series yet"
            );
            Ok(())
        },
    ))?;

    node.rt
        .block_on(api.delete("checkout-orders", &DeleteParams::default()))?;
    node.rt.block_on(observe::wait_unassigned(
        &node.cluster.client,
        NODE,
        PROBE_ID,
        CONVERGE,
    ))?;
    // The agent stopped the probe: its uprobes are gone from the programs.
    node.rt.block_on(wait::until_ok(
        "the probe gone from the agent's status",
        CONVERGE,
        || async {
            let (_, status) = observe::agent_get(&url, "/v1/status", Some(&token)).await?;
            ensure!(!status.contains(PROBE_ID), "still running: {status}");
            Ok(())
        },
    ))?;
    for pod in lock(&node.pods).iter() {
        let pid = pod.pid().context("pod without a process")?;
        ensure!(
            sonde_e2e::process::alive(pid),
            "pod {} died while traced",
            pod.name
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    suite::main(
        setup,
        vec![Scenario::new(
            "a_dynamic_log_on_fake_pods_fills_its_table_follows_new_pods_and_detaches_on_delete",
            a_dynamic_log_on_fake_pods_fills_its_table_follows_new_pods_and_detaches_on_delete,
        )],
    )
}
