//! The desired NodeAssignment spec of every node, from all resources, pods and nodes: a pure function.
//!
//! Cost is one pass over the pods to index them by namespace, then per resource one pass over the
//! pods of the namespace it may select from, so one event never costs resources × all pods.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};
use sonde_api::{
    AssignedProbe, BpftraceScript, DynamicLog, NodeAssignmentSpec, PodTarget, Targeting, Tracepoint,
};

use super::pods::{LivePod, live_pod};
use crate::auto_telemetry::AutoTelemetry;
use crate::resources::SondeResource;
use crate::ttl;
use crate::validate;

/// Everything the assignment depends on, as read from the caches.
#[derive(Default)]
pub struct Snapshot {
    pub nodes: Vec<Arc<Node>>,
    pub pods: Vec<Arc<Pod>>,
    pub tracepoints: Vec<Arc<Tracepoint>>,
    pub dynamic_logs: Vec<Arc<DynamicLog>>,
    pub bpftrace_scripts: Vec<Arc<BpftraceScript>>,
    /// Cluster-wide probes switched on by the operator's flags (off by default).
    pub auto_telemetry: AutoTelemetry,
}

/// What every node should run.
#[derive(Debug, Default)]
pub struct Desired {
    /// One entry per existing node (even without probes), keyed by node name.
    pub specs: BTreeMap<String, NodeAssignmentSpec>,
    /// The earliest future ttl expiry: the assignment must be recomputed then.
    pub next_expiry: Option<Timestamp>,
    /// Resources left out because their spec cannot be used (message names resource and field).
    pub skipped: Vec<String>,
    /// Targets (containers) of each auto-telemetry feature on all nodes, by feature name.
    pub auto_targets: BTreeMap<&'static str, usize>,
}

pub fn desired_assignments(snapshot: &Snapshot, now: Timestamp) -> Desired {
    let mut pods_by_namespace: HashMap<&str, Vec<LivePod<'_>>> = HashMap::new();
    for pod in &snapshot.pods {
        if let (Some(ns), Some(live)) = (pod.metadata.namespace.as_deref(), live_pod(pod)) {
            pods_by_namespace.entry(ns).or_default().push(live);
        }
    }
    let mut probes: BTreeMap<&str, Vec<AssignedProbe>> = snapshot
        .nodes
        .iter()
        .filter_map(|n| n.metadata.name.as_deref())
        .map(|n| (n, Vec::new()))
        .collect();
    let mut desired = Desired::default();

    add_namespaced(
        &snapshot.tracepoints,
        &pods_by_namespace,
        now,
        &mut probes,
        &mut desired,
    );
    add_namespaced(
        &snapshot.dynamic_logs,
        &pods_by_namespace,
        now,
        &mut probes,
        &mut desired,
    );
    for script in &snapshot.bpftrace_scripts {
        if !is_active(&**script, now, &mut desired) {
            continue;
        }
        let Some(selector) = checked_selector(&**script, &mut desired) else {
            continue;
        };
        let pods_per_node = script_pods_per_node(script, &selector, &pods_by_namespace);
        let config = script.probe_config();
        for node in &snapshot.nodes {
            let (Some(name), labels) = (node.metadata.name.as_deref(), node.labels()) else {
                continue;
            };
            if !script
                .spec
                .node_selector
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
            {
                continue;
            }
            let targets = pods_per_node.get(name).cloned().unwrap_or_default();
            if let Some(list) = probes.get_mut(name) {
                list.push(probe(&**script, config.clone(), targets));
            }
        }
    }

    add_auto_telemetry(
        &snapshot.auto_telemetry,
        &pods_by_namespace,
        &mut probes,
        &mut desired,
    );

    desired.specs = probes
        .into_iter()
        .map(|(node, mut list)| {
            list.sort_by(|a, b| a.id.cmp(&b.id));
            let spec = NodeAssignmentSpec {
                probe_count: list.len() as u32,
                probes: list,
            };
            (node.to_owned(), spec)
        })
        .collect();
    desired
}

fn add_namespaced<K: SondeResource>(
    resources: &[Arc<K>],
    pods_by_namespace: &HashMap<&str, Vec<LivePod<'_>>>,
    now: Timestamp,
    probes: &mut BTreeMap<&str, Vec<AssignedProbe>>,
    desired: &mut Desired,
) {
    for res in resources {
        if !is_active(&**res, now, desired) {
            continue;
        }
        // A namespaced resource only ever sees the pods of its own namespace.
        let Some(namespace) = res.meta().namespace.as_deref() else {
            continue;
        };
        let spec = res.spec();
        let Some(selector) = checked_selector(&**res, desired) else {
            continue;
        };
        let pods = pods_by_namespace
            .get(namespace)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let per_node = targets_per_node(pods, &selector, spec.container());
        if per_node.is_empty() {
            continue;
        }
        let config = res.probe_config();
        for (node, targets) in per_node {
            if let Some(list) = probes.get_mut(node) {
                list.push(probe(&**res, config.clone(), targets));
            }
        }
    }
}

/// One probe per switched-on feature on every node, even one without pods yet: the feature is
/// on cluster-wide, and a probe that comes and goes with the node's first pod would only churn.
fn add_auto_telemetry(
    auto: &AutoTelemetry,
    pods_by_namespace: &HashMap<&str, Vec<LivePod<'_>>>,
    probes: &mut BTreeMap<&str, Vec<AssignedProbe>>,
    desired: &mut Desired,
) {
    let features = auto.features();
    if features.is_empty() {
        return;
    }
    let per_node = auto.targets_per_node(pods_by_namespace);
    for feature in &features {
        let mut total = 0;
        for (node, list) in probes.iter_mut() {
            let targets = per_node.get(node).cloned().unwrap_or_default();
            total += targets.len();
            list.push(feature.probe(targets));
        }
        desired.auto_targets.insert(feature.name, total);
    }
}

fn script_pods_per_node<'a>(
    script: &BpftraceScript,
    selector: &Selector,
    pods_by_namespace: &'a HashMap<&str, Vec<LivePod<'_>>>,
) -> BTreeMap<&'a str, Vec<PodTarget>> {
    let Some(pods_spec) = &script.spec.pods else {
        return BTreeMap::new();
    };
    let pods = pods_by_namespace
        .get(pods_spec.namespace.as_str())
        .map(Vec::as_slice)
        .unwrap_or_default();
    targets_per_node(pods, selector, script.spec.container())
}

/// Targets of the pods matching `selector`, grouped by node, sorted.
fn targets_per_node<'a>(
    pods: &'a [LivePod<'_>],
    selector: &Selector,
    container: Option<&str>,
) -> BTreeMap<&'a str, Vec<PodTarget>> {
    let mut per_node: BTreeMap<&str, Vec<PodTarget>> = BTreeMap::new();
    for pod in pods.iter().filter(|p| selector.matches(p.labels)) {
        let targets = pod
            .targets
            .iter()
            .filter(|t| container.is_none_or(|c| t.container == c));
        for t in targets {
            per_node.entry(pod.node).or_default().push(t.clone());
        }
    }
    for targets in per_node.values_mut() {
        targets.sort();
    }
    per_node
}

/// The resource's pod selector (absent selects every pod of the namespace), or `None` if its spec
/// cannot be used: then it goes to no node, and the problem to `skipped`.
fn checked_selector<K: SondeResource>(res: &K, desired: &mut Desired) -> Option<Selector> {
    match validate::check(res) {
        Ok(s) => Some(s),
        Err(e) => {
            // The id already starts with the kind.
            desired.skipped.push(format!("{}: {e}", res.probe_id()));
            None
        }
    }
}

/// Neither being deleted nor past its ttl; records the next expiry.
fn is_active<K: SondeResource>(res: &K, now: Timestamp, desired: &mut Desired) -> bool {
    let meta = res.meta();
    if meta.deletion_timestamp.is_some() {
        return false;
    }
    match ttl::expires_at(meta.creation_timestamp.as_ref(), res.spec().ttl()) {
        Ok(Some(at)) if at <= now => false,
        Ok(Some(at)) => {
            desired.next_expiry = Some(desired.next_expiry.map_or(at, |n| n.min(at)));
            true
        }
        Ok(None) => true,
        // Validated at apply time; if it still does not parse, run without expiry rather than not at all.
        Err(e) => {
            desired
                .skipped
                .push(format!("{}: {e} (ttl ignored)", res.probe_id()));
            true
        }
    }
}

fn probe<K: SondeResource>(
    res: &K,
    config: sonde_api::ProbeConfig,
    targets: Vec<PodTarget>,
) -> AssignedProbe {
    AssignedProbe {
        id: res.probe_id(),
        owner: res.probe_owner(),
        config,
        targets,
        process: res.spec().process().cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn ids(d: &Desired, node: &str) -> Vec<String> {
        d.specs[node].probes.iter().map(|p| p.id.clone()).collect()
    }

    #[test]
    fn every_node_gets_a_spec_even_without_probes() {
        let snap = Snapshot {
            nodes: vec![node("n1", &[]), node("n2", &[])],
            ..Default::default()
        };
        let d = desired_assignments(&snap, now());
        assert_eq!(d.specs.len(), 2);
        assert_eq!(d.specs["n1"], NodeAssignmentSpec::default());
    }

    #[test]
    fn a_tracepoint_never_selects_pods_of_another_namespace() {
        let snap = Snapshot {
            nodes: vec![node("n1", &[]), node("n2", &[])],
            pods: vec![
                pod(
                    "shop",
                    "web-1",
                    "n1",
                    &[("app", "web")],
                    &[("nginx", "containerd://aaa")],
                ),
                pod(
                    "other",
                    "web-2",
                    "n2",
                    &[("app", "web")],
                    &[("nginx", "containerd://bbb")],
                ),
            ],
            tracepoints: vec![tracepoint(
                "shop",
                "http",
                Some(match_labels(&[("app", "web")])),
            )],
            ..Default::default()
        };
        let d = desired_assignments(&snap, now());
        assert_eq!(ids(&d, "n1"), ["Tracepoint/shop/http"]);
        assert!(d.specs["n2"].probes.is_empty());
        let p = &d.specs["n1"].probes[0];
        assert_eq!(p.targets.len(), 1);
        assert_eq!(p.targets[0].container_id, "aaa");
        assert_eq!(p.targets[0].namespace, "shop");
        assert_eq!(p.owner.kind, "Tracepoint");
        assert_eq!(d.specs["n1"].probe_count, 1);
    }

    #[test]
    fn match_expressions_select_pods() {
        let selector = LabelSelector {
            match_expressions: Some(vec![
                expr("tier", "In", &["api", "web"]),
                expr("canary", "DoesNotExist", &[]),
            ]),
            ..Default::default()
        };
        let snap = Snapshot {
            nodes: vec![node("n1", &[])],
            pods: vec![
                pod(
                    "shop",
                    "api",
                    "n1",
                    &[("tier", "api")],
                    &[("c", "containerd://1")],
                ),
                pod(
                    "shop",
                    "db",
                    "n1",
                    &[("tier", "db")],
                    &[("c", "containerd://2")],
                ),
                pod(
                    "shop",
                    "web-canary",
                    "n1",
                    &[("tier", "web"), ("canary", "y")],
                    &[("c", "containerd://3")],
                ),
            ],
            dynamic_logs: vec![dynamic_log("shop", "orders", Some(selector))],
            ..Default::default()
        };
        let d = desired_assignments(&snap, now());
        let pods: Vec<_> = d.specs["n1"].probes[0]
            .targets
            .iter()
            .map(|t| t.pod.as_str())
            .collect();
        assert_eq!(pods, ["api"]);
    }

    #[test]
    fn the_container_filter_keeps_only_that_container_and_skips_containers_without_id() {
        let mut tp = tracepoint("shop", "http", Some(match_labels(&[("app", "web")])));
        Arc::make_mut(&mut tp).spec.container = Some("nginx".into());
        let snap = Snapshot {
            nodes: vec![node("n1", &[])],
            pods: vec![
                pod(
                    "shop",
                    "web-1",
                    "n1",
                    &[("app", "web")],
                    &[("nginx", "containerd://a"), ("sidecar", "containerd://b")],
                ),
                pod("shop", "web-2", "n1", &[("app", "web")], &[("nginx", "")]),
            ],
            tracepoints: vec![tp],
            ..Default::default()
        };
        let d = desired_assignments(&snap, now());
        let targets = &d.specs["n1"].probes[0].targets;
        assert_eq!(targets.len(), 1);
        assert_eq!(
            (targets[0].pod.as_str(), targets[0].container.as_str()),
            ("web-1", "nginx")
        );
    }

    #[test]
    fn terminated_and_unscheduled_pods_are_not_targets() {
        let mut done = pod(
            "shop",
            "done",
            "n1",
            &[("app", "web")],
            &[("c", "containerd://1")],
        );
        Arc::make_mut(&mut done).status.as_mut().unwrap().phase = Some("Succeeded".into());
        let mut unbound = pod(
            "shop",
            "unbound",
            "n1",
            &[("app", "web")],
            &[("c", "containerd://2")],
        );
        Arc::make_mut(&mut unbound).spec.as_mut().unwrap().node_name = None;
        let snap = Snapshot {
            nodes: vec![node("n1", &[])],
            pods: vec![done, unbound],
            tracepoints: vec![tracepoint(
                "shop",
                "http",
                Some(match_labels(&[("app", "web")])),
            )],
            ..Default::default()
        };
        assert!(
            desired_assignments(&snap, now()).specs["n1"]
                .probes
                .is_empty()
        );
    }

    #[test]
    fn a_bpftrace_script_goes_to_the_nodes_its_node_selector_matches() {
        let mut script = bpftrace("opens");
        Arc::make_mut(&mut script).spec.node_selector =
            [("role".to_owned(), "db".to_owned())].into();
        let snap = Snapshot {
            nodes: vec![
                node("n1", &[("role", "db")]),
                node("n2", &[("role", "web")]),
            ],
            bpftrace_scripts: vec![script, bpftrace("everywhere")],
            ..Default::default()
        };
        let d = desired_assignments(&snap, now());
        assert_eq!(
            ids(&d, "n1"),
            ["BpftraceScript/everywhere", "BpftraceScript/opens"]
        );
        assert_eq!(ids(&d, "n2"), ["BpftraceScript/everywhere"]);
        assert!(d.specs["n1"].probes[0].targets.is_empty());
    }

    #[test]
    fn a_bpftrace_script_with_pods_targets_the_matching_pods_of_that_node() {
        let mut script = bpftrace("uprobes");
        Arc::make_mut(&mut script).spec.pods = Some(sonde_api::PodTargets {
            namespace: "shop".into(),
            selector: Some(match_labels(&[("app", "web")])),
            container: None,
        });
        let snap = Snapshot {
            nodes: vec![node("n1", &[]), node("n2", &[])],
            pods: vec![pod(
                "shop",
                "web-1",
                "n2",
                &[("app", "web")],
                &[("c", "containerd://x")],
            )],
            bpftrace_scripts: vec![script],
            ..Default::default()
        };
        let d = desired_assignments(&snap, now());
        assert!(d.specs["n1"].probes[0].targets.is_empty());
        assert_eq!(d.specs["n2"].probes[0].targets[0].pod, "web-1");
    }

    #[test]
    fn deleted_and_expired_resources_are_left_out_and_the_next_expiry_is_reported() {
        let mut deleting = bpftrace("deleting");
        Arc::make_mut(&mut deleting).metadata.deletion_timestamp =
            Some(time("2025-01-01T00:00:00Z"));
        let mut expired = bpftrace("expired");
        Arc::make_mut(&mut expired).spec.ttl = Some("30m".into());
        let mut later = bpftrace("later");
        Arc::make_mut(&mut later).spec.ttl = Some("2h".into());
        let snap = Snapshot {
            nodes: vec![node("n1", &[])],
            bpftrace_scripts: vec![deleting, expired, later],
            ..Default::default()
        };
        // fixtures are created at 2025-01-01T00:00:00Z; now() is one hour later.
        let d = desired_assignments(&snap, now());
        assert_eq!(ids(&d, "n1"), ["BpftraceScript/later"]);
        assert_eq!(d.next_expiry, Some("2025-01-01T02:00:00Z".parse().unwrap()));
    }

    #[test]
    fn ordering_is_stable_whatever_the_input_order() {
        let pods = vec![
            pod(
                "shop",
                "b",
                "n1",
                &[("app", "web")],
                &[("c", "containerd://2")],
            ),
            pod(
                "shop",
                "a",
                "n1",
                &[("app", "web")],
                &[("c", "containerd://1")],
            ),
        ];
        let crs = vec![
            tracepoint("shop", "zeta", Some(match_labels(&[("app", "web")]))),
            tracepoint("shop", "alpha", Some(match_labels(&[("app", "web")]))),
        ];
        let mut snap = Snapshot {
            nodes: vec![node("n1", &[])],
            pods,
            tracepoints: crs,
            ..Default::default()
        };
        let first = desired_assignments(&snap, now()).specs;
        snap.pods.reverse();
        snap.tracepoints.reverse();
        let second = desired_assignments(&snap, now()).specs;
        assert_eq!(first, second);
        assert_eq!(first["n1"].probes[0].id, "Tracepoint/shop/alpha");
        let pods: Vec<_> = first["n1"].probes[0]
            .targets
            .iter()
            .map(|t| t.pod.as_str())
            .collect();
        assert_eq!(pods, ["a", "b"]);
    }

    #[test]
    fn a_process_only_resource_targets_every_pod_of_its_namespace() {
        let mut tp = tracepoint("shop", "by-exe", None);
        Arc::make_mut(&mut tp).spec.process = Some(sonde_api::ProcessSelector {
            exe: Some("*/nginx".into()),
            cmdline: None,
        });
        let snap = Snapshot {
            nodes: vec![node("n1", &[])],
            pods: vec![pod("shop", "any", "n1", &[], &[("c", "containerd://1")])],
            tracepoints: vec![tp],
            ..Default::default()
        };
        let d = desired_assignments(&snap, now());
        let p = &d.specs["n1"].probes[0];
        assert_eq!(p.targets.len(), 1);
        assert_eq!(
            p.process.as_ref().and_then(|s| s.exe.as_deref()),
            Some("*/nginx")
        );
    }

    fn auto_snapshot() -> Snapshot {
        Snapshot {
            nodes: vec![node("n1", &[]), node("n2", &[]), node("empty", &[])],
            pods: vec![
                pod("shop", "web", "n1", &[], &[("nginx", "containerd://a")]),
                pod("other", "db", "n2", &[], &[("pg", "containerd://b")]),
                pod("kube-system", "dns", "n1", &[], &[("c", "containerd://c")]),
                pod(
                    "sonde-system",
                    "agent",
                    "n1",
                    &[],
                    &[("c", "containerd://d")],
                ),
            ],
            tracepoints: vec![tracepoint(
                "shop",
                "http",
                Some(match_labels(&[("app", "none")])),
            )],
            auto_telemetry: AutoTelemetry::new(
                &[sonde_api::Protocol::Http],
                99,
                None,
                "sonde-system",
            ),
            ..Default::default()
        }
    }

    fn pods_of(d: &Desired, node: &str, id: &str) -> Vec<String> {
        let probe = d.specs[node].probes.iter().find(|p| p.id == id).unwrap();
        probe.targets.iter().map(|t| t.pod.clone()).collect()
    }

    #[test]
    fn auto_telemetry_targets_every_pod_of_each_node_outside_the_excluded_namespaces() {
        let d = desired_assignments(&auto_snapshot(), now());
        for node in ["n1", "n2", "empty"] {
            assert_eq!(
                ids(&d, node),
                ["AutoTelemetry/profiler", "AutoTelemetry/protocols"]
            );
        }
        assert_eq!(pods_of(&d, "n1", "AutoTelemetry/protocols"), ["web"]);
        assert_eq!(pods_of(&d, "n2", "AutoTelemetry/profiler"), ["db"]);
        assert!(pods_of(&d, "empty", "AutoTelemetry/protocols").is_empty());
        assert_eq!(
            d.auto_targets,
            BTreeMap::from([("profiler", 2), ("protocols", 2)])
        );
        let owner = &d.specs["n1"].probes[1].owner;
        assert_eq!(
            (
                owner.kind.as_str(),
                owner.namespace.as_deref(),
                owner.name.as_str()
            ),
            ("AutoTelemetry", None, "protocols")
        );
        let sonde_api::ProbeConfig::Tracepoint(spec) = &d.specs["n1"].probes[1].config else {
            panic!("not a Tracepoint config");
        };
        assert_eq!(spec.probe.protocols, Some(vec![sonde_api::Protocol::Http]));
    }

    #[test]
    fn pod_churn_changes_only_the_auto_telemetry_targets_of_that_node() {
        let mut snap = auto_snapshot();
        let before = desired_assignments(&snap, now());
        snap.pods.push(pod(
            "shop",
            "web-2",
            "n1",
            &[],
            &[("nginx", "containerd://e")],
        ));
        let after = desired_assignments(&snap, now());
        assert_eq!(
            pods_of(&after, "n1", "AutoTelemetry/protocols"),
            ["web", "web-2"]
        );
        assert_eq!(before.specs["n2"], after.specs["n2"]);
        snap.pods
            .retain(|p| p.metadata.name.as_deref() == Some("db"));
        let gone = desired_assignments(&snap, now());
        assert!(pods_of(&gone, "n1", "AutoTelemetry/protocols").is_empty());
        assert_eq!(gone.auto_targets["protocols"], 1);
    }

    #[test]
    fn auto_telemetry_is_off_by_default_and_leaves_namespaced_resources_in_their_namespace() {
        let mut snap = auto_snapshot();
        snap.auto_telemetry = AutoTelemetry::default();
        let d = desired_assignments(&snap, now());
        assert!(d.specs.values().all(|s| s.probes.is_empty()));
        assert!(d.auto_targets.is_empty());
        // With it on, the Tracepoint selecting nothing still selects nothing.
        let d = desired_assignments(&auto_snapshot(), now());
        assert!(
            d.specs
                .values()
                .flat_map(|s| &s.probes)
                .all(|p| p.owner.kind == "AutoTelemetry")
        );
    }

    #[test]
    fn a_resource_whose_selector_or_cmdline_cannot_be_used_goes_nowhere_and_says_why() {
        let bad_operator = LabelSelector {
            match_expressions: Some(vec![expr("app", "Equals", &["web"])]),
            ..Default::default()
        };
        let mut bad_regex = tracepoint("team-a", "t16", Some(match_labels(&[("app", "web")])));
        Arc::make_mut(&mut bad_regex).spec.process = Some(sonde_api::ProcessSelector {
            exe: None,
            cmdline: Some("foo((".into()),
        });
        let mut script = bpftrace("uprobes");
        Arc::make_mut(&mut script).spec.pods = Some(sonde_api::PodTargets {
            namespace: "team-a".into(),
            selector: Some(bad_operator.clone()),
            container: None,
        });
        let snap = Snapshot {
            nodes: vec![node("n1", &[])],
            pods: vec![pod(
                "team-a",
                "web",
                "n1",
                &[("app", "web")],
                &[("c", "containerd://1")],
            )],
            tracepoints: vec![
                tracepoint("team-a", "t15", Some(bad_operator)),
                bad_regex,
                tracepoint("team-a", "good", Some(match_labels(&[("app", "web")]))),
            ],
            bpftrace_scripts: vec![script],
            ..Default::default()
        };
        let d = desired_assignments(&snap, now());
        assert_eq!(ids(&d, "n1"), ["Tracepoint/team-a/good"]);
        assert_eq!(d.skipped.len(), 3, "{:?}", d.skipped);
        assert!(
            d.skipped[0].starts_with(
                "Tracepoint/team-a/t15: spec.selector.matchExpressions[0].operator: \"Equals\""
            ),
            "{:?}",
            d.skipped
        );
        assert!(
            d.skipped[1].starts_with("Tracepoint/team-a/t16: spec.process.cmdline: \"foo((\""),
            "{:?}",
            d.skipped
        );
        assert!(
            d.skipped[2].starts_with("BpftraceScript/uprobes: spec.pods.selector"),
            "{:?}",
            d.skipped
        );
    }
}
