//! `BpftraceScript`: a bpftrace program that runs on every selected node. Cluster-scoped, because
//! bpftrace runs as root on the node and can see every process there.
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::{ProcessSelector, ResourceStatus, Targeting};

/// A bpftrace program applied once and run on every selected node. `printf` lines with `name:%fmt`
/// tokens become rows of `spec.tableName`; printed maps become Prometheus series.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "sonde.dev",
    version = "v1alpha1",
    kind = "BpftraceScript",
    status = "ResourceStatus",
    shortname = "sbt",
    category = "sonde",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Nodes","type":"integer","jsonPath":".status.nodes.ready"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BpftraceScriptSpec {
    /// The bpftrace program text.
    #[schemars(length(max = 65536))]
    #[x_kube(validation = Rule::new("self.trim().size() > 0").message("spec.program must contain a bpftrace program, e.g. tracepoint:syscalls:sys_enter_openat { @opens[comm] = count(); }"))]
    pub program: String,
    /// Labels a node must have to run the script (empty or absent: every node).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Pods the script is limited to. On each node it runs only while one of them runs there
    /// (Pending otherwise); every probe that fires in a process fires only in their containers'
    /// processes (a `cgroup == <id>` predicate ANDed with the probe's own; BEGIN, END and interval
    /// probes are not limited); absolute `uprobe:` paths are resolved inside them.
    /// Absent: the whole node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<PodTargets>,
    /// Narrows (cluster) or selects (standalone) the processes whose binaries uprobes resolve in.
    /// With `pods`, only the containers running a matching process are traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSelector>,
    /// Table the printf rows go to (default: the resource's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new(crate::common::NAME_RULE).message(crate::common::NAME_MESSAGE))]
    pub table_name: Option<String>,
    /// Stop the script this long after creation (e.g. `10m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new(crate::common::TTL_RULE).message(crate::common::TTL_MESSAGE))]
    pub ttl: Option<String>,
}

/// Pods (in one namespace) a script is limited to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodTargets {
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// Pods of that namespace (absent: every pod of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(crate::common::SELECTOR_RULE).message(crate::common::SELECTOR_MESSAGE))]
    pub selector: Option<LabelSelector>,
    /// Only this container of the selected pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub container: Option<String>,
}

impl Targeting for BpftraceScriptSpec {
    fn selector(&self) -> Option<&LabelSelector> {
        self.pods.as_ref().and_then(|p| p.selector.as_ref())
    }
    fn container(&self) -> Option<&str> {
        self.pods.as_ref().and_then(|p| p.container.as_deref())
    }
    fn process(&self) -> Option<&ProcessSelector> {
        self.process.as_ref()
    }
    fn ttl(&self) -> Option<&str> {
        self.ttl.as_deref()
    }
}
