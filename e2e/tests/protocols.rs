//! Protocol tracing end to end: an HTTP Tracepoint selecting a fake pod that runs a real nginx (in a
//! kubelet-style cgroup) through the real operator and agent; curl requests to it become
//! `http_events` rows and histogram samples in `/metrics`, while an identical nginx outside the
//! selected pods yields nothing.
//!
//! Needs what `scenarios` needs (root, etcd, kube-apiserver, helm from `scripts/setup e2e`) plus
//! nginx and curl (`scripts/setup peers`).
use std::process::{Command, ExitCode};

use anyhow::{Result, ensure};
use sonde_api::Tracepoint;
use sonde_e2e::cluster::TEST_NAMESPACE;
use sonde_e2e::expect::{self, HttpServerRows};
use sonde_e2e::peers;
use sonde_e2e::process::Proc;
use sonde_e2e::single_node::SingleNode;
use sonde_e2e::suite::{self, Environment, Scenario};

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

fn setup() -> Result<Env> {
    let nginx = peers::nginx()?;
    let node = SingleNode::start("sonde-e2e-protocols-", NODE)?;
    let pod_port = sonde_e2e::ports::free_port()?;
    let outside_port = sonde_e2e::ports::free_port()?;
    let pod_conf = peers::nginx_conf(&node.dir.path().join("nginx-pod"), pod_port)?;
    let outside_conf = peers::nginx_conf(&node.dir.path().join("nginx-outside"), outside_port)?;
    node.start_pod(
        "web-1",
        "web",
        "nginx",
        peers::nginx_command(&nginx, &pod_conf),
    )?;
    let mut outside = Command::new(&nginx);
    outside.arg("-c").arg(&outside_conf);
    let outside = Proc::spawn("nginx-outside", outside, &node.logs)?;
    for port in [pod_port, outside_port] {
        node.rt.block_on(peers::wait_listening(port))?;
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
        peers::curl_hello(env.pod_port, &format!("/inside/{i}"))?;
        peers::curl_hello(env.outside_port, &format!("/outside/{i}"))?;
    }
    let url = node.agent_url()?;
    let token = node.reader_token()?;
    let rows = HttpServerRows {
        pod: "web-1",
        namespace: TEST_NAMESPACE,
        local_port: env.pod_port,
        also: &[("container", "nginx"), ("req_method", "GET")],
    };
    let outside_port = env.outside_port;
    node.rt.block_on(async {
        expect::http_paths(
            &url,
            &token,
            &rows,
            &["/inside/0", "/inside/1", "/inside/2"],
            "the nginx outside the pod",
            |r| r["local_port"] == outside_port,
        )
        .await?;
        expect::http_request_count(
            &url,
            "web-1",
            &[
                "http_request_method=\"GET\"",
                "http_response_status_code=\"200\"",
            ],
            3,
            |metrics| {
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
