//! The assignment pass: compute every node's desired spec, server-side apply the ones that differ
//! from the cache, delete the NodeAssignments of nodes that are gone. Triggers are coalesced: one
//! pass runs at most every `DEBOUNCE`, however many pods, nodes or resources changed meanwhile.
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt, stream};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use sonde_api::{NodeAssignment, NodeAssignmentSpec, OPERATOR_MANAGER};
use tracing::{info, warn};

use super::compute::{Snapshot, desired_assignments};
use crate::context::Context;
use crate::metrics::ASSIGNMENT_KIND;

/// Triggers closer together than this share one pass.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// A pass runs at least this often, to repair anything a missed event left behind.
const RESYNC: Duration = Duration::from_secs(300);
/// After a failed write, the next pass comes this soon.
const RETRY: Duration = Duration::from_secs(5);
/// NodeAssignment writes in flight at once.
const CONCURRENT_WRITES: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(
        "cannot apply NodeAssignment {node}: {source}; check the operator's RBAC (patch nodeassignments)"
    )]
    Apply {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot delete NodeAssignment {node} of a node that is gone: {source}")]
    Delete {
        node: String,
        #[source]
        source: kube::Error,
    },
}

impl SyncError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            SyncError::Apply { .. } => "apply",
            SyncError::Delete { .. } => "delete",
        }
    }
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct PassReport {
    pub nodes: usize,
    pub probes: usize,
    pub applied: usize,
    pub deleted: usize,
    pub errors: usize,
    pub next_expiry: Option<Timestamp>,
    pub took: Duration,
    /// Resources left out of every assignment, with why (see [`SkippedLog`]).
    pub skipped: Vec<String>,
}

/// The problems of resources left out, logged when they appear or go away: every pass finds them
/// again, and a warning per pass would bury everything else.
#[derive(Debug, Default)]
pub struct SkippedLog(BTreeSet<String>);

impl SkippedLog {
    /// Logs what changed since the previous pass; returns the problems that are new.
    pub fn update(&mut self, skipped: &[String]) -> Vec<String> {
        let now: BTreeSet<String> = skipped.iter().cloned().collect();
        let new: Vec<String> = now.difference(&self.0).cloned().collect();
        for problem in &new {
            warn!(
                problem,
                "resource left out of assignments; its status says why"
            );
        }
        for problem in self.0.difference(&now) {
            info!(problem, "resource no longer left out of assignments");
        }
        self.0 = now;
        new
    }
}

/// Runs passes forever, when woken by `ctx.assignments_changed`, at the next ttl expiry, or to retry.
pub async fn run(ctx: Arc<Context>) {
    let mut wake_at = Instant::now();
    let mut skipped = SkippedLog::default();
    loop {
        tokio::select! {
            _ = ctx.assignments_changed.notified() => {}
            _ = tokio::time::sleep_until(wake_at.into()) => {}
        }
        tokio::time::sleep(DEBOUNCE).await;
        // A trigger that arrived during the debounce window is served by this pass.
        let _ = ctx.assignments_changed.notified().now_or_never();
        let report = pass(&ctx).await;
        skipped.update(&report.skipped);
        let mut next = RESYNC;
        if report.errors > 0 {
            next = next.min(RETRY);
        }
        if let Some(at) = report.next_expiry
            && let Ok(d) = Duration::try_from(at.duration_since(Timestamp::now()))
        {
            next = next.min(d + Duration::from_millis(50));
        }
        wake_at = Instant::now() + next;
    }
}

/// One full pass.
pub async fn pass(ctx: &Context) -> PassReport {
    let started = Instant::now();
    let stores = &ctx.stores;
    let snapshot = Snapshot {
        nodes: stores.nodes.state(),
        pods: stores.pods.state(),
        tracepoints: stores.tracepoints.state(),
        dynamic_logs: stores.dynamic_logs.state(),
        bpftrace_scripts: stores.bpftrace_scripts.state(),
        auto_telemetry: ctx.auto_telemetry.clone(),
    };
    let desired = desired_assignments(&snapshot, Timestamp::now());
    for (feature, targets) in &desired.auto_targets {
        let before = ctx.metrics.set_auto_telemetry_targets(feature, *targets);
        if before != Some(*targets) {
            info!(feature, targets, ?before, "auto-telemetry targets changed");
        }
    }
    let node_uids: HashMap<&str, &str> = snapshot
        .nodes
        .iter()
        .filter_map(|n| Some((n.metadata.name.as_deref()?, n.metadata.uid.as_deref()?)))
        .collect();
    let current: HashMap<String, Arc<NodeAssignment>> = stores
        .node_assignments
        .state()
        .into_iter()
        .map(|na| (na.name_any(), na))
        .collect();

    let api: Api<NodeAssignment> = Api::all(ctx.client.clone());
    let mut writes = Vec::new();
    for (node, spec) in &desired.specs {
        let uid = node_uids.get(node.as_str()).copied().unwrap_or_default();
        if needs_apply(spec, uid, current.get(node).map(|na| &**na)) {
            writes.push(Write::Apply {
                node: node.clone(),
                body: manifest(node, uid, spec),
            });
        }
    }
    for node in current.keys().filter(|n| !desired.specs.contains_key(*n)) {
        writes.push(Write::Delete { node: node.clone() });
    }

    let mut report = PassReport {
        nodes: desired.specs.len(),
        probes: desired.specs.values().map(|s| s.probes.len()).sum(),
        next_expiry: desired.next_expiry,
        skipped: desired.skipped,
        ..Default::default()
    };
    let mut results = stream::iter(writes)
        .map(|w| w.run(&api))
        .buffer_unordered(CONCURRENT_WRITES);
    while let Some(result) = results.next().await {
        match result {
            Ok(Written::Applied) => {
                report.applied += 1;
                ctx.metrics.applied();
            }
            Ok(Written::Deleted) => report.deleted += 1,
            Err(e) => {
                report.errors += 1;
                warn!(error = %e, "assignment write failed; retrying soon");
                ctx.metrics.failed(ASSIGNMENT_KIND, e.metric_label());
            }
        }
    }
    report.took = started.elapsed();
    ctx.metrics.reconciled(ASSIGNMENT_KIND, report.took);
    if report.applied + report.deleted + report.errors > 0 {
        info!(
            nodes = report.nodes,
            probes = report.probes,
            applied = report.applied,
            deleted = report.deleted,
            errors = report.errors,
            took_ms = report.took.as_millis() as u64,
            "assignment pass"
        );
    }
    report
}

/// The no-churn rule: write only when the object is missing, its spec differs, or it does not
/// (yet) belong to the current Node object.
pub fn needs_apply(
    desired: &NodeAssignmentSpec,
    node_uid: &str,
    current: Option<&NodeAssignment>,
) -> bool {
    let Some(current) = current else { return true };
    let owned = current
        .owner_references()
        .iter()
        .any(|o| o.kind == "Node" && o.uid == node_uid);
    current.spec != *desired || !owned
}

/// The object the operator owns: name, owner (the Node, for garbage collection) and spec.
pub fn manifest(node: &str, node_uid: &str, spec: &NodeAssignmentSpec) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "sonde.dev/v1alpha1",
        "kind": "NodeAssignment",
        "metadata": {
            "name": node,
            "ownerReferences": [{ "apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid }],
        },
        "spec": spec,
    })
}

enum Write {
    Apply {
        node: String,
        body: serde_json::Value,
    },
    Delete {
        node: String,
    },
}

enum Written {
    Applied,
    Deleted,
}

impl Write {
    async fn run(self, api: &Api<NodeAssignment>) -> Result<Written, SyncError> {
        match self {
            Write::Apply { node, body } => {
                let params = PatchParams::apply(OPERATOR_MANAGER).force();
                match api.patch(&node, &params, &Patch::Apply(body)).await {
                    Ok(_) => Ok(Written::Applied),
                    Err(source) => Err(SyncError::Apply { node, source }),
                }
            }
            Write::Delete { node } => match api.delete(&node, &DeleteParams::default()).await {
                Ok(_) => Ok(Written::Deleted),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(Written::Deleted),
                Err(source) => Err(SyncError::Delete { node, source }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
    use sonde_api::NodeAssignmentStatus;

    fn stored(node: &str, uid: &str, spec: NodeAssignmentSpec) -> NodeAssignment {
        // What the cache holds after a write: the manifest, as read back from the API server.
        let mut na: NodeAssignment = serde_json::from_value(manifest(node, uid, &spec)).unwrap();
        na.metadata.resource_version = Some("42".into());
        na
    }

    fn desired_for_n1() -> NodeAssignmentSpec {
        let snap = Snapshot {
            nodes: vec![node("n1", &[])],
            pods: vec![pod(
                "shop",
                "web",
                "n1",
                &[("app", "web")],
                &[("nginx", "containerd://abc")],
            )],
            tracepoints: vec![tracepoint(
                "shop",
                "http",
                Some(match_labels(&[("app", "web")])),
            )],
            bpftrace_scripts: vec![bpftrace("opens")],
            ..Default::default()
        };
        desired_assignments(&snap, now())
            .specs
            .remove("n1")
            .unwrap()
    }

    #[test]
    fn an_unchanged_assignment_is_not_written_again() {
        let desired = desired_for_n1();
        let current = stored("n1", "uid-n1", desired.clone());
        assert!(!needs_apply(&desired, "uid-n1", Some(&current)));
    }

    #[test]
    fn the_agents_status_does_not_cause_a_write() {
        let desired = desired_for_n1();
        let mut current = stored("n1", "uid-n1", desired.clone());
        current.status = Some(NodeAssignmentStatus {
            agent_version: Some("0.1.0".into()),
            ..Default::default()
        });
        assert!(!needs_apply(&desired, "uid-n1", Some(&current)));
    }

    #[test]
    fn a_missing_changed_or_foreign_assignment_is_written() {
        let desired = desired_for_n1();
        assert!(needs_apply(&desired, "uid-n1", None));
        let mut changed = desired.clone();
        let tp = changed
            .probes
            .iter_mut()
            .find(|p| p.id.starts_with("Tracepoint/"))
            .unwrap();
        assert!(!tp.targets.is_empty());
        tp.targets.clear();
        assert!(needs_apply(
            &desired,
            "uid-n1",
            Some(&stored("n1", "uid-n1", changed))
        ));
        // Same name, but the Node was recreated (new uid): the owner reference must follow.
        assert!(needs_apply(
            &desired,
            "uid-new",
            Some(&stored("n1", "uid-n1", desired.clone()))
        ));
        let unowned = NodeAssignment {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                owner_references: Some(Vec::<OwnerReference>::new()),
                ..Default::default()
            },
            spec: desired.clone(),
            status: None,
        };
        assert!(needs_apply(&desired, "uid-n1", Some(&unowned)));
    }

    #[test]
    fn a_resource_left_out_is_reported_once_per_change_not_every_pass() {
        let mut log = SkippedLog::default();
        let mut new = |problems: &[&str]| -> Vec<String> {
            log.update(&problems.iter().map(|p| p.to_string()).collect::<Vec<_>>())
        };
        let a = "Tracepoint/team-a/t15: spec.selector: bad";
        let b = "Tracepoint/team-a/t16: spec.process.cmdline: bad";
        assert_eq!(new(&[a]), [a]);
        assert!(new(&[a]).is_empty());
        assert_eq!(new(&[a, b]), [b]);
        // Fixed, then broken again: a new change, logged again.
        assert!(new(&[b]).is_empty());
        assert_eq!(new(&[a, b]), [a]);
    }
}
