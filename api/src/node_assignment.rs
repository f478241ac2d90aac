//! `NodeAssignment`: one per node, named after the node. The operator writes the spec (every probe the
//! node must run, with resolved targets); the node's agent writes the status.
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::bpftrace::BpftraceScriptSpec;
use crate::common::ProcessSelector;
use crate::dynamic_log::DynamicLogSpec;
use crate::tracepoint::TracepointSpec;

/// The probes one node must run.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "sonde.dev",
    version = "v1alpha1",
    kind = "NodeAssignment",
    status = "NodeAssignmentStatus",
    shortname = "sna",
    category = "sonde",
    printcolumn = r#"{"name":"Probes","type":"integer","jsonPath":".spec.probeCount"}"#,
    printcolumn = r#"{"name":"Agent","type":"string","jsonPath":".status.agentVersion"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NodeAssignmentSpec {
    /// Number of probes, for `kubectl get`.
    #[serde(default)]
    pub probe_count: u32,
    /// Every probe the node must run, sorted by id.
    #[serde(default)]
    pub probes: Vec<AssignedProbe>,
}

/// One probe on one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AssignedProbe {
    /// Stable id: `<kind>/<namespace>/<name>`, or `<kind>/<name>` for cluster-scoped kinds.
    pub id: String,
    /// The resource this probe comes from.
    pub owner: ProbeOwner,
    /// The owner's spec at `owner.generation` (validated when it was applied).
    #[schemars(schema_with = "preserved_object")]
    pub config: ProbeConfig,
    /// Pods (containers) on this node the probe applies to. Empty with a `process` selector or
    /// for node-wide bpftrace scripts.
    #[serde(default)]
    pub targets: Vec<PodTarget>,
    /// Process selector that narrows the targets' processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSelector>,
}

/// The resource a probe comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeOwner {
    /// `Tracepoint`, `DynamicLog` or `BpftraceScript`; `AutoTelemetry` (no namespace, name `protocols` or
    /// `profiler`) for the cluster-wide probes the operator's `--auto-*` flags switch on, which have no
    /// resource behind them.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
    pub generation: i64,
}

/// The owner's spec; exactly one field is set. Kept schemaless in the NodeAssignment CRD (the owner
/// was validated at apply time, and re-running its CEL rules per node would only cost).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProbeConfig {
    Tracepoint(TracepointSpec),
    DynamicLog(DynamicLogSpec),
    BpftraceScript(BpftraceScriptSpec),
}

fn preserved_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true })
}

/// A container of a pod on this node, resolved by the operator.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, KubeSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct PodTarget {
    pub pod_uid: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// Runtime container id without the `containerd://` prefix; empty while the container is not running.
    #[serde(default)]
    pub container_id: String,
}

/// What the node's agent reports.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeAssignmentStatus {
    /// `metadata.generation` of the spec the agent has applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// When the agent last wrote this status (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<NodeCapabilities>,
    #[serde(default)]
    pub probes: Vec<ProbeStatus>,
}

/// What the node's kernel and tools can do, found out by trying at agent start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeCapabilities {
    pub kernel_release: String,
    /// `/sys/kernel/btf/vmlinux` is present.
    pub btf: bool,
    pub tracepoints: bool,
    pub uprobes: bool,
    pub perf_events: bool,
    pub kprobes: bool,
    pub fentry: bool,
    /// `bpftrace --version`, if bpftrace is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpftrace_version: Option<String>,
    /// Why each unusable facility is unusable (facility → error).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub errors: std::collections::BTreeMap<String, String>,
}

/// One probe's state on this node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeStatus {
    pub id: String,
    pub owner_uid: String,
    /// `owner.generation` this state refers to.
    pub generation: i64,
    pub state: ProbeState,
    #[serde(default)]
    pub message: String,
    /// Targets (containers or processes) the probe is attached to.
    #[serde(default)]
    pub targets_attached: u32,
    /// Restarts of the probe's runtime (e.g. a crashing bpftrace).
    #[serde(default)]
    pub restarts: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum ProbeState {
    Pending,
    Attached,
    Failed,
}

impl AssignedProbe {
    /// Id of the probe of a namespaced (`Some(ns)`) or cluster-scoped resource.
    pub fn id_for(kind: &str, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) => format!("{kind}/{ns}/{name}"),
            None => format!("{kind}/{name}"),
        }
    }
}
