//! Apply-time validation and the Helm chart, against a real kube-apiserver with Sonde's CRDs and the
//! chart's RBAC and admission policies (no operator or agent needed): every bad manifest is rejected
//! with a message naming the field, every example is accepted, the chart lints and renders objects
//! the API server accepts, and an agent's identity writes only its own node's NodeAssignment.
//!
//! Needs: etcd, kube-apiserver and helm from `scripts/setup e2e`, kubectl, openssl.
use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Context, Result, bail, ensure};
use kube::Api;
use kube::api::{Patch, PatchParams};
use sonde_api::NodeAssignment;
use sonde_e2e::cluster::{Cluster, Install, TEST_NAMESPACE};
use sonde_e2e::suite::{self, Environment, Scenario};
use sonde_e2e::{fake_pod, helm, kubeconfig, tools};

struct Env {
    cluster: Cluster,
    _dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
}

impl Environment for Env {
    fn diagnostics(&self) -> String {
        suite::log_section(
            "kube-apiserver log",
            self.cluster.control_plane.apiserver.log_path(),
            20,
        )
    }
}

fn setup() -> Result<Env> {
    let rt = tokio::runtime::Runtime::new()?;
    let dir = suite::work_dir("sonde-e2e-validation-")?;
    let cluster = rt.block_on(Cluster::start(dir.path(), Install { rbac: true }))?;
    for ns in ["shop", "demo"] {
        cluster.ensure_namespace(ns)?;
    }
    for node in ["node-a", "node-b"] {
        rt.block_on(fake_pod::create_node(
            &cluster.client,
            node,
            &BTreeMap::new(),
        ))?;
    }
    Ok(Env {
        cluster,
        _dir: dir,
        rt,
    })
}

/// A manifest the API server must reject, and words its message must contain.
struct BadManifest {
    case: &'static str,
    yaml: String,
    message_contains: &'static [&'static str],
}

fn tracepoint(spec: &str) -> String {
    format!(
        "apiVersion: sonde.dev/v1alpha1\nkind: Tracepoint\nmetadata: {{name: bad, namespace: {TEST_NAMESPACE}}}\nspec:\n{spec}"
    )
}

fn dynamic_log(spec: &str) -> String {
    format!(
        "apiVersion: sonde.dev/v1alpha1\nkind: DynamicLog\nmetadata: {{name: bad, namespace: {TEST_NAMESPACE}}}\nspec:\n{spec}"
    )
}

fn bpftrace_script(spec: &str) -> String {
    format!(
        "apiVersion: sonde.dev/v1alpha1\nkind: BpftraceScript\nmetadata: {{name: bad}}\nspec:\n{spec}"
    )
}

fn bad_manifests() -> Vec<BadManifest> {
    vec![
        BadManifest {
            case: "a_tracepoint_without_any_selector",
            yaml: tracepoint("  probe: {protocols: [http]}\n"),
            message_contains: &["spec.selector", "spec.process", "is required"],
        },
        BadManifest {
            case: "a_dynamic_log_without_any_selector",
            yaml: dynamic_log("  function: main.handle\n"),
            message_contains: &["spec.selector", "spec.process", "is required"],
        },
        BadManifest {
            case: "an_unknown_protocol",
            yaml: tracepoint(
                "  selector: {matchLabels: {app: web}}\n  probe: {protocols: [http, gopher]}\n",
            ),
            message_contains: &["spec.probe.protocols[1]", "gopher", "Unsupported value"],
        },
        BadManifest {
            case: "both_protocols_and_profiler",
            yaml: tracepoint(
                "  selector: {matchLabels: {app: web}}\n  probe: {protocols: [http], profiler: {frequencyHz: 99}}\n",
            ),
            message_contains: &["spec.probe", "exactly one of protocols or profiler"],
        },
        BadManifest {
            case: "neither_protocols_nor_profiler",
            yaml: tracepoint("  selector: {matchLabels: {app: web}}\n  probe: {}\n"),
            message_contains: &["spec.probe", "exactly one of protocols or profiler"],
        },
        BadManifest {
            case: "a_profiler_frequency_of_zero",
            yaml: tracepoint(
                "  selector: {matchLabels: {app: web}}\n  probe: {profiler: {frequencyHz: 0}}\n",
            ),
            message_contains: &[
                "spec.probe.profiler.frequencyHz",
                "greater than or equal to 1",
            ],
        },
        BadManifest {
            case: "a_profiler_frequency_of_5000",
            yaml: tracepoint(
                "  selector: {matchLabels: {app: web}}\n  probe: {profiler: {frequencyHz: 5000}}\n",
            ),
            message_contains: &[
                "spec.probe.profiler.frequencyHz",
                "less than or equal to 1000",
            ],
        },
        BadManifest {
            case: "a_ttl_written_in_words",
            yaml: tracepoint(
                "  selector: {matchLabels: {app: web}}\n  ttl: 30 minutes\n  probe: {protocols: [http]}\n",
            ),
            message_contains: &["spec.ttl", "ttl must be a duration"],
        },
        BadManifest {
            case: "a_ttl_of_zero",
            yaml: tracepoint(
                "  selector: {matchLabels: {app: web}}\n  ttl: 0s\n  probe: {protocols: [http]}\n",
            ),
            message_contains: &["spec.ttl", "above zero"],
        },
        BadManifest {
            case: "a_selector_operator_that_does_not_exist",
            yaml: tracepoint(
                "  selector: {matchExpressions: [{key: app, operator: Equals, values: [web]}]}\n  probe: {protocols: [http]}\n",
            ),
            message_contains: &["spec.selector", "In, NotIn, Exists or DoesNotExist"],
        },
        BadManifest {
            case: "a_protocol_listed_twice",
            yaml: tracepoint(
                "  selector: {matchLabels: {app: web}}\n  probe: {protocols: [http, http]}\n",
            ),
            message_contains: &["spec.probe.protocols", "Duplicate value", "http"],
        },
        BadManifest {
            case: "a_bpftrace_script_with_a_ttl_in_words",
            yaml: bpftrace_script("  program: 'BEGIN { exit(); }'\n  ttl: 30 minutes\n"),
            message_contains: &["spec.ttl", "ttl must be a duration"],
        },
        BadManifest {
            case: "an_empty_bpftrace_program",
            yaml: bpftrace_script("  program: '   '\n"),
            message_contains: &["spec.program", "must contain a bpftrace program"],
        },
        BadManifest {
            case: "an_empty_function_name",
            yaml: dynamic_log("  selector: {matchLabels: {app: web}}\n  function: ''\n"),
            message_contains: &["spec.function", "must name a function"],
        },
        BadManifest {
            case: "a_table_name_with_dashes_and_capitals",
            yaml: bpftrace_script("  program: 'BEGIN { exit(); }'\n  tableName: Bad-Table\n"),
            message_contains: &["spec.tableName", "lower-case identifier"],
        },
        BadManifest {
            case: "a_dynamic_log_table_name_starting_with_a_digit",
            yaml: dynamic_log(
                "  selector: {matchLabels: {app: web}}\n  function: main.handle\n  tableName: 1rows\n",
            ),
            message_contains: &["spec.tableName", "lower-case identifier"],
        },
        BadManifest {
            case: "a_process_selector_without_exe_or_cmdline",
            yaml: tracepoint("  process: {}\n  probe: {protocols: [http]}\n"),
            message_contains: &["spec.process", "exe", "cmdline"],
        },
        BadManifest {
            case: "an_unknown_spec_field",
            yaml: bpftrace_script("  program: 'BEGIN { exit(); }'\n  nodeSelectr: {a: b}\n"),
            message_contains: &["nodeSelectr"],
        },
    ]
}

/// `kubectl apply` must fail and its message must name the field.
fn rejects(env: &Env, bad: &BadManifest) -> Result<()> {
    let out = env
        .cluster
        .kubectl
        .output(&["apply", "-f", "-"], Some(&bad.yaml))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        // Leave nothing behind for the next case.
        let _ = env
            .cluster
            .kubectl
            .output(&["delete", "-f", "-"], Some(&bad.yaml));
        bail!("the API server accepted {}:\n{}", bad.case, bad.yaml);
    }
    for needle in bad.message_contains {
        ensure!(
            stderr.contains(needle),
            "the rejection of {} does not mention {needle:?}; kubectl said:\n{stderr}",
            bad.case
        );
    }
    Ok(())
}

fn every_example_manifest_is_accepted_by_the_api_server(env: &Env) -> Result<()> {
    let root = tools::workspace_root().join("examples");
    let mut files = vec![];
    for dir in [root.clone(), root.join("cluster")] {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    ensure!(
        !files.is_empty(),
        "no example manifests under {}",
        root.display()
    );
    for file in files {
        env.cluster
            .kubectl
            .run(
                &["apply", "--dry-run=server", "-f", &file.to_string_lossy()],
                None,
            )
            .with_context(|| format!("example {} was rejected", file.display()))?;
    }
    Ok(())
}

fn helm_lint_passes(_: &Env) -> Result<()> {
    let out = helm::lint()?;
    ensure!(out.contains("0 chart(s) failed"), "helm lint: {out}");
    Ok(())
}

fn the_rendered_chart_is_accepted_by_a_server_side_dry_run(env: &Env) -> Result<()> {
    let rendered = helm::template(&["--include-crds"])?;
    let out = env
        .cluster
        .kubectl
        .run(&["apply", "--dry-run=server", "-f", "-"], Some(&rendered))?;
    for object in [
        "deployment.apps/sonde-operator",
        "daemonset.apps/sonde-agent",
        "clusterrole.rbac.authorization.k8s.io/sonde-data-reader",
        "clusterrole.rbac.authorization.k8s.io/sonde-metrics-reader",
    ] {
        ensure!(
            out.contains(object),
            "{object} missing from the dry run:\n{out}"
        );
    }
    Ok(())
}

fn monitors_are_rendered_only_when_enabled(_: &Env) -> Result<()> {
    let kinds = |args: &[&str]| -> Result<Vec<String>> {
        Ok(helm::documents(&helm::template(args)?)?
            .iter()
            .filter_map(|d| d["kind"].as_str().map(str::to_owned))
            .collect())
    };
    let default = kinds(&[])?;
    ensure!(
        !default
            .iter()
            .any(|k| k == "ServiceMonitor" || k == "PodMonitor"),
        "monitors rendered by default: {default:?}"
    );
    let enabled = kinds(&[
        "--set",
        "monitoring.serviceMonitor.enabled=true",
        "--set",
        "monitoring.podMonitor.enabled=true",
    ])?;
    for kind in ["ServiceMonitor", "PodMonitor"] {
        ensure!(
            enabled.iter().any(|k| k == kind),
            "{kind} not rendered: {enabled:?}"
        );
    }
    Ok(())
}

/// The rendered object of `kind` named `name`.
fn object<'a>(
    docs: &'a [serde_json::Value],
    kind: &str,
    name: &str,
) -> Option<&'a serde_json::Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

/// `agent.shedWhenSaturated` reaches the agent's flags: by default it sheds over 1% of the node's
/// CPUs; the values given are passed as they are.
fn the_agent_sheds_on_saturated_nodes_as_the_chart_values_say(_: &Env) -> Result<()> {
    let cases: [(&[&str], [&str; 2]); 2] = [
        (
            &[],
            [
                "--shed-when-saturated=true",
                "--saturated-capture-percent=1",
            ],
        ),
        (
            &[
                "--set",
                "agent.shedWhenSaturated.enabled=false",
                "--set",
                "agent.shedWhenSaturated.budgetPercent=2.5",
            ],
            [
                "--shed-when-saturated=false",
                "--saturated-capture-percent=2.5",
            ],
        ),
    ];
    for (settings, flags) in cases {
        let docs = helm::documents(&helm::template(settings)?)?;
        let args = object(&docs, "DaemonSet", "sonde-agent")
            .context("DaemonSet sonde-agent not rendered")?["spec"]["template"]["spec"]
            ["containers"][0]["args"]
            .clone();
        for flag in flags {
            ensure!(
                args.as_array()
                    .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(flag))),
                "{settings:?}: the agent's args {args} lack {flag}"
            );
        }
    }
    Ok(())
}

/// With `agent.metricsAuthorization` (the default) the agent runs with `--metrics-auth=true` and
/// the monitors send a token to the agents' `/metrics`: the ServiceMonitor Prometheus's own
/// (bearerTokenFile), the PodMonitor, which cannot, the chart's scraper identity's; with it off,
/// the agent leaves `/metrics` open and the monitors send none.
fn the_monitors_send_a_token_to_the_agents_only_with_metrics_authorization(_: &Env) -> Result<()> {
    const SA_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
    for on in [true, false] {
        let setting = format!("agent.metricsAuthorization={on}");
        let docs = helm::documents(&helm::template(&[
            "--set",
            "monitoring.serviceMonitor.enabled=true",
            "--set",
            "monitoring.podMonitor.enabled=true",
            "--set",
            &setting,
        ])?)?;
        let args = object(&docs, "DaemonSet", "sonde-agent")
            .context("DaemonSet sonde-agent not rendered")?["spec"]["template"]["spec"]
            ["containers"][0]["args"]
            .clone();
        let flag = format!("--metrics-auth={on}");
        ensure!(
            args.as_array()
                .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(flag.as_str()))),
            "{setting}: the agent's args {args} lack {flag}"
        );
        let endpoints = &object(&docs, "ServiceMonitor", "sonde")
            .context("ServiceMonitor sonde not rendered")?["spec"]["endpoints"];
        let agent = endpoints
            .as_array()
            .and_then(|e| e.iter().find(|e| e["port"] == "http"))
            .context("no ServiceMonitor endpoint for the agents' port http")?;
        let pod = &object(&docs, "PodMonitor", "sonde-agent")
            .context("PodMonitor sonde-agent not rendered")?["spec"]["podMetricsEndpoints"][0];
        let secret = object(&docs, "Secret", "sonde-metrics-scraper-token");
        if on {
            ensure!(
                agent["bearerTokenFile"] == SA_TOKEN,
                "the ServiceMonitor sends no token to the agents: {agent}"
            );
            ensure!(
                pod["authorization"]["credentials"]
                    == serde_json::json!({"name": "sonde-metrics-scraper-token", "key": "token"}),
                "the PodMonitor sends no token to the agents: {pod}"
            );
            let secret = secret.context("the PodMonitor's token Secret is not rendered")?;
            ensure!(
                secret["type"] == "kubernetes.io/service-account-token"
                    && secret["metadata"]["annotations"]["kubernetes.io/service-account.name"]
                        == "sonde-metrics-scraper",
                "{secret}"
            );
            ensure!(
                object(&docs, "ServiceAccount", "sonde-metrics-scraper").is_some(),
                "no ServiceAccount sonde-metrics-scraper"
            );
            let binding = object(&docs, "ClusterRoleBinding", "sonde-metrics-scraper")
                .context("the scraper identity is not bound")?;
            ensure!(
                binding["roleRef"]["name"] == "sonde-metrics-reader"
                    && binding["subjects"][0]["name"] == "sonde-metrics-scraper",
                "{binding}"
            );
        } else {
            ensure!(
                agent.get("bearerTokenFile").is_none() && pod.get("authorization").is_none(),
                "tokens sent with metrics authorization off: {agent} {pod}"
            );
            ensure!(
                secret.is_none(),
                "a scraper token rendered with metrics authorization off"
            );
        }
        // The operator's own endpoint is no business of the agent's authorization.
        let operator = endpoints
            .as_array()
            .and_then(|e| e.iter().find(|e| e["port"] == "metrics"))
            .context("no ServiceMonitor endpoint for the operator")?;
        ensure!(
            operator.get("bearerTokenFile").is_none(),
            "{setting}: {operator}"
        );
    }
    Ok(())
}

/// With `agent.tls.secretName` the agents serve HTTPS only: the Secret is mounted read-only (no
/// subPath, so renewals reach the agent), the flags point at it, kubelet probes and every scraper
/// use https, and the monitors trust the Secret's `ca.crt` unless `monitoring.tlsConfig` says
/// otherwise; the API server accepts the rendered DaemonSet. Without it nothing of this is rendered.
fn with_a_tls_secret_the_agents_are_probed_and_scraped_over_https(env: &Env) -> Result<()> {
    let monitors = [
        "--set",
        "monitoring.serviceMonitor.enabled=true",
        "--set",
        "monitoring.podMonitor.enabled=true",
    ];
    let mut args = monitors.to_vec();
    args.extend(["--set", "agent.tls.secretName=sonde-agent-tls"]);
    let docs = helm::documents(&helm::template(&args)?)?;
    let pod = &object(&docs, "DaemonSet", "sonde-agent")
        .context("DaemonSet sonde-agent not rendered")?["spec"]["template"];
    let agent = &pod["spec"]["containers"][0];
    for flag in [
        "--tls-cert-file=/etc/sonde/tls/tls.crt",
        "--tls-key-file=/etc/sonde/tls/tls.key",
    ] {
        ensure!(
            agent["args"]
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(flag))),
            "the agent's args lack {flag}: {}",
            agent["args"]
        );
    }
    ensure!(
        agent["volumeMounts"].as_array().is_some_and(|m| m.iter().any(|m| {
            m == &serde_json::json!({"name": "tls", "mountPath": "/etc/sonde/tls", "readOnly": true})
        })),
        "the Secret is not mounted read-only at /etc/sonde/tls: {}",
        agent["volumeMounts"]
    );
    ensure!(
        pod["spec"]["volumes"].as_array().is_some_and(|v| {
            v.iter().any(|v| {
            v == &serde_json::json!({"name": "tls", "secret": {"secretName": "sonde-agent-tls"}})
        })
        }),
        "no volume of Secret sonde-agent-tls: {}",
        pod["spec"]["volumes"]
    );
    for probe in ["livenessProbe", "readinessProbe"] {
        let get = &agent[probe]["httpGet"];
        ensure!(
            get["scheme"] == "HTTPS" && get["port"] == "https",
            "{probe}: {get}"
        );
    }
    ensure!(
        agent["ports"][0]["name"] == "https",
        "container port: {}",
        agent["ports"]
    );
    ensure!(
        pod["metadata"]["annotations"]["prometheus.io/scheme"] == "https",
        "pod annotations: {}",
        pod["metadata"]["annotations"]
    );
    let service = object(&docs, "Service", "sonde-agent").context("Service sonde-agent")?;
    ensure!(
        service["spec"]["ports"][0]["name"] == "https"
            && service["spec"]["ports"][0]["appProtocol"] == "https"
            && service["metadata"]["annotations"]["prometheus.io/scheme"] == "https",
        "Service sonde-agent: {service}"
    );
    let default_tls = serde_json::json!({
        "ca": {"secret": {"name": "sonde-agent-tls", "key": "ca.crt"}},
        "serverName": "sonde-agent.sonde-system.svc",
    });
    let endpoints = |docs: &[serde_json::Value]| -> Result<Vec<serde_json::Value>> {
        let service_monitor = object(docs, "ServiceMonitor", "sonde")
            .context("ServiceMonitor sonde not rendered")?["spec"]["endpoints"]
            .as_array()
            .and_then(|e| e.iter().find(|e| e["port"] != "metrics"))
            .cloned()
            .context("no ServiceMonitor endpoint for the agents")?;
        let pod_monitor = object(docs, "PodMonitor", "sonde-agent")
            .context("PodMonitor sonde-agent not rendered")?["spec"]["podMetricsEndpoints"][0]
            .clone();
        Ok(vec![service_monitor, pod_monitor])
    };
    for endpoint in endpoints(&docs)? {
        ensure!(
            endpoint["port"] == "https"
                && endpoint["scheme"] == "https"
                && endpoint["tlsConfig"] == default_tls,
            "a monitor's agent endpoint: {endpoint}"
        );
    }
    args.extend(["--set", "monitoring.tlsConfig.insecureSkipVerify=true"]);
    for endpoint in endpoints(&helm::documents(&helm::template(&args)?)?)? {
        ensure!(
            endpoint["tlsConfig"] == serde_json::json!({"insecureSkipVerify": true}),
            "monitoring.tlsConfig is not passed through: {endpoint}"
        );
    }
    // Without the monitors: this API server has no Prometheus Operator CRDs.
    let rendered = helm::template(&["--set", "agent.tls.secretName=sonde-agent-tls"])?;
    let out = env
        .cluster
        .kubectl
        .run(&["apply", "--dry-run=server", "-f", "-"], Some(&rendered))?;
    ensure!(
        out.contains("daemonset.apps/sonde-agent"),
        "the DaemonSet with TLS missing from the dry run:\n{out}"
    );

    let plain = helm::template(&monitors)?;
    for https in ["https", "HTTPS", "tls-cert-file", "sonde-agent-tls"] {
        ensure!(
            !plain.contains(https),
            "{https:?} rendered without agent.tls.secretName"
        );
    }
    Ok(())
}

/// The chart's `sonde-metrics-reader` grants exactly what the agent asks of a `/metrics` caller (a
/// SubjectAccessReview of `get` on the non-resource URL /metrics), to the Prometheus ServiceAccount
/// named in `monitoring.prometheusServiceAccount` (none by default); the agent may ask it.
fn the_metrics_reader_role_is_bound_to_the_prometheus_service_account_given(
    env: &Env,
) -> Result<()> {
    let default = helm::documents(&helm::template(&[])?)?;
    let role = object(&default, "ClusterRole", "sonde-metrics-reader")
        .context("ClusterRole sonde-metrics-reader not rendered")?;
    ensure!(
        role["rules"] == serde_json::json!([{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]),
        "{role}"
    );
    ensure!(
        object(&default, "ClusterRoleBinding", "sonde-metrics-reader").is_none(),
        "a Prometheus bound by default"
    );
    let missing = helm::template(&[
        "--set",
        "monitoring.prometheusServiceAccount.name=prometheus",
    ]);
    ensure!(
        missing.as_ref().is_err_and(
            |e| format!("{e:#}").contains("monitoring.prometheusServiceAccount.namespace")
        ),
        "a ServiceAccount name without a namespace: {missing:?}"
    );
    let bound = helm::template(&[
        "--set",
        "monitoring.prometheusServiceAccount.name=prometheus",
        "--set",
        "monitoring.prometheusServiceAccount.namespace=monitoring",
    ])?;
    let binding = helm::documents(&bound)?
        .into_iter()
        .find(|d| {
            d["kind"] == "ClusterRoleBinding" && d["metadata"]["name"] == "sonde-metrics-reader"
        })
        .context("no ClusterRoleBinding sonde-metrics-reader")?;
    env.cluster
        .kubectl
        .apply(&serde_yaml_ng::to_string(&binding)?)?;
    let can = |user: &str, attributes: serde_json::Value| -> Result<bool> {
        let mut spec = serde_json::json!({"user": user});
        spec.as_object_mut()
            .context("a JSON object")?
            .extend(attributes.as_object().cloned().unwrap_or_default());
        let review = serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec,
        });
        let out = env.cluster.kubectl.run(
            &["create", "-f", "-", "-o", "jsonpath={.status.allowed}"],
            Some(&review.to_string()),
        )?;
        Ok(out.trim() == "true")
    };
    let metrics = serde_json::json!({"nonResourceAttributes": {"path": "/metrics", "verb": "get"}});
    let prometheus = "system:serviceaccount:monitoring:prometheus";
    let agent = format!(
        "system:serviceaccount:{}:{}-agent",
        helm::NAMESPACE,
        helm::RELEASE
    );
    let tables = serde_json::json!({"resourceAttributes": {"group": "sonde.dev", "resource": "tables", "verb": "get"}});
    let review = |group: &str, resource: &str| serde_json::json!({"resourceAttributes": {"group": group, "resource": resource, "verb": "create"}});
    for (user, attributes, want) in [
        (prometheus, metrics.clone(), true),
        (prometheus, tables, false),
        ("system:serviceaccount:monitoring:other", metrics, false),
        (
            agent.as_str(),
            review("authentication.k8s.io", "tokenreviews"),
            true,
        ),
        (
            agent.as_str(),
            review("authorization.k8s.io", "subjectaccessreviews"),
            true,
        ),
    ] {
        let got = can(user, attributes.clone())?;
        ensure!(
            got == want,
            "{user} {attributes}: allowed={got}, want {want}"
        );
    }
    Ok(())
}

fn the_chart_gives_the_agent_only_status_patch_on_node_assignments(_: &Env) -> Result<()> {
    let docs = helm::documents(&helm::template(&[])?)?;
    let agent_role = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "sonde-agent")
        .context("ClusterRole sonde-agent not rendered")?;
    let rules = agent_role["rules"].as_array().context("no rules")?;
    for rule in rules {
        let resources: Vec<&str> = rule["resources"]
            .as_array()
            .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        let verbs: Vec<&str> = rule["verbs"]
            .as_array()
            .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        if resources.contains(&"nodeassignments") {
            ensure!(
                verbs.iter().all(|v| ["get", "list", "watch"].contains(v)),
                "agent may {verbs:?} nodeassignments"
            );
        }
        ensure!(!verbs.contains(&"*"), "agent has a wildcard verb: {rule}");
    }
    Ok(())
}

/// The chart's admission policy: an agent's token (bound to its pod, which names the node) writes
/// its own node's NodeAssignment status and no other's; a token of the agent's ServiceAccount not
/// bound to a pod writes none. RBAC alone grants the agent every NodeAssignment's status.
fn an_agent_writes_only_its_own_nodes_assignment_status(env: &Env) -> Result<()> {
    let cluster = &env.cluster;
    for node in ["node-a", "node-b"] {
        cluster.kubectl.apply(&format!(
            "apiVersion: sonde.dev/v1alpha1\nkind: NodeAssignment\nmetadata: {{name: {node}}}\n\
             spec: {{probeCount: 0, probes: []}}\n"
        ))?;
    }
    // What the agent does: a merge patch of the status subresource (no read of it first).
    let patch = |kubeconfig: std::path::PathBuf, node: &'static str| async move {
        let client = kubeconfig::client(&kubeconfig).await?;
        let api: Api<NodeAssignment> = Api::all(client);
        let status = serde_json::json!({"status": {"agentVersion": "e2e"}});
        api.patch_status(node, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .map(drop)
            .map_err(anyhow::Error::from)
    };
    let agent_b = cluster.agent_kubeconfig("node-b")?;
    env.rt
        .block_on(patch(agent_b.clone(), "node-b"))
        .context("node-b's agent writing node-b's NodeAssignment status")?;
    let err = match env.rt.block_on(patch(agent_b, "node-a")) {
        Ok(()) => bail!("node-b's agent wrote node-a's NodeAssignment status"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        err.contains("the Sonde agent of node node-b may write only NodeAssignment node-b")
            && err.contains("NodeAssignment node-a/status"),
        "refusal does not say why: {err}"
    );
    let unbound = cluster.token(helm::NAMESPACE, &format!("{}-agent", helm::RELEASE))?;
    let unbound = cluster.control_plane.token_kubeconfig(
        &cluster.dir.join("unbound-agent.kubeconfig"),
        "sonde-agent",
        &unbound,
    )?;
    let err = match env.rt.block_on(patch(unbound, "node-a")) {
        Ok(()) => bail!("an agent token bound to no pod wrote a NodeAssignment status"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        err.contains("needs a token bound to its pod"),
        "refusal does not say why: {err}"
    );
    Ok(())
}

/// A namespace's editor (a RoleBinding to the chart's `sonde-edit`, which kube-controller-manager
/// also folds into the default `edit` and `admin` roles) creates Tracepoints and DynamicLogs and
/// reads rows in that namespace only, and never BpftraceScripts (root on the node); `sonde-view`
/// reads the resources and creates nothing. Checked by the API server's RBAC authorizer.
fn namespace_editors_use_tracepoints_and_dynamic_logs_but_not_bpftrace(env: &Env) -> Result<()> {
    let kubectl = &env.cluster.kubectl;
    kubectl.apply(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\n\
         metadata: {name: shop-editors, namespace: shop}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: sonde-edit}\n\
         subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: ann}]\n\
         ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\n\
         metadata: {name: shop-viewers, namespace: shop}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: sonde-view}\n\
         subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: vic}]\n",
    )?;
    let tracepoint = |ns: &str| {
        format!(
            "apiVersion: sonde.dev/v1alpha1\nkind: Tracepoint\nmetadata: {{name: web, namespace: {ns}}}\n\
             spec:\n  selector: {{matchLabels: {{app: web}}}}\n  probe: {{protocols: [http]}}\n"
        )
    };
    kubectl
        .run(
            &["--as", "ann", "apply", "-f", "-"],
            Some(&tracepoint("shop")),
        )
        .context("an editor of shop creating a Tracepoint in shop")?;
    let refused = kubectl.run(
        &["--as", "ann", "apply", "-f", "-"],
        Some(&tracepoint("demo")),
    );
    ensure!(
        refused.is_err(),
        "an editor of shop created a Tracepoint in demo"
    );
    // A SubjectAccessReview, as the agent asks it (`kubectl auth can-i` drops the group of
    // `tables`, which is no API object).
    let can = |user: &str, verb: &str, resource: &str, ns: Option<&str>| -> Result<bool> {
        let review = serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": user, "resourceAttributes": {
                "group": "sonde.dev", "resource": resource, "verb": verb,
                "namespace": ns.unwrap_or_default(),
            }},
        });
        let out = kubectl.run(
            &["create", "-f", "-", "-o", "jsonpath={.status.allowed}"],
            Some(&review.to_string()),
        )?;
        Ok(out.trim() == "true")
    };
    let expected = [
        ("ann", "create", "dynamiclogs", Some("shop"), true),
        ("ann", "get", "tables", Some("shop"), true),
        ("ann", "get", "tables", Some("demo"), false),
        ("ann", "get", "tables", None, false),
        ("ann", "create", "bpftracescripts", None, false),
        ("ann", "patch", "nodeassignments", None, false),
        ("vic", "list", "tracepoints", Some("shop"), true),
        ("vic", "create", "tracepoints", Some("shop"), false),
        ("vic", "get", "tables", Some("shop"), false),
    ];
    for (user, verb, resource, ns, want) in expected {
        let got = can(user, verb, resource, ns)?;
        ensure!(
            got == want,
            "{user} {verb} {resource} in {ns:?}: allowed={got}, want {want}"
        );
    }
    // What makes kube-controller-manager fold them into the default roles.
    let docs = helm::documents(&helm::template(&[])?)?;
    for (role, labels) in [
        (
            "sonde-edit",
            &["aggregate-to-edit", "aggregate-to-admin"][..],
        ),
        ("sonde-view", &["aggregate-to-view"][..]),
    ] {
        let doc = docs
            .iter()
            .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == role)
            .with_context(|| format!("ClusterRole {role} not rendered"))?;
        for label in labels {
            let key = format!("rbac.authorization.k8s.io/{label}");
            ensure!(
                doc["metadata"]["labels"][&key] == "true",
                "{role} lacks the label {key}"
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut scenarios: Vec<Scenario<Env>> = bad_manifests()
        .into_iter()
        .map(|bad| {
            Scenario::new(
                format!("api_server_rejects_{}", bad.case),
                move |env: &Env| rejects(env, &bad),
            )
        })
        .collect();
    scenarios.push(Scenario::new(
        "every_example_manifest_is_accepted_by_the_api_server",
        every_example_manifest_is_accepted_by_the_api_server,
    ));
    scenarios.push(Scenario::new("helm_lint_passes", helm_lint_passes));
    scenarios.push(Scenario::new(
        "the_rendered_chart_is_accepted_by_a_server_side_dry_run",
        the_rendered_chart_is_accepted_by_a_server_side_dry_run,
    ));
    scenarios.push(Scenario::new(
        "monitors_are_rendered_only_when_enabled",
        monitors_are_rendered_only_when_enabled,
    ));
    scenarios.push(Scenario::new(
        "the_agent_sheds_on_saturated_nodes_as_the_chart_values_say",
        the_agent_sheds_on_saturated_nodes_as_the_chart_values_say,
    ));
    scenarios.push(Scenario::new(
        "the_monitors_send_a_token_to_the_agents_only_with_metrics_authorization",
        the_monitors_send_a_token_to_the_agents_only_with_metrics_authorization,
    ));
    scenarios.push(Scenario::new(
        "with_a_tls_secret_the_agents_are_probed_and_scraped_over_https",
        with_a_tls_secret_the_agents_are_probed_and_scraped_over_https,
    ));
    scenarios.push(Scenario::new(
        "the_metrics_reader_role_is_bound_to_the_prometheus_service_account_given",
        the_metrics_reader_role_is_bound_to_the_prometheus_service_account_given,
    ));
    scenarios.push(Scenario::new(
        "the_chart_gives_the_agent_only_status_patch_on_node_assignments",
        the_chart_gives_the_agent_only_status_patch_on_node_assignments,
    ));
    scenarios.push(Scenario::new(
        "namespace_editors_use_tracepoints_and_dynamic_logs_but_not_bpftrace",
        namespace_editors_use_tracepoints_and_dynamic_logs_but_not_bpftrace,
    ));
    scenarios.push(Scenario::new(
        "an_agent_writes_only_its_own_nodes_assignment_status",
        an_agent_writes_only_its_own_nodes_assignment_status,
    ));
    suite::main(setup, scenarios)
}
