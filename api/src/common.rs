//! Fields and status shared by the three user-facing kinds.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Selects processes by executable and/or command line. In a cluster it narrows the processes of the
/// selected pods; in standalone mode (`sonde-agent --manifests`) it is the only selector.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.exe) || has(self.cmdline)").message("process needs exe (a path or glob such as */nginx) or cmdline (a regular expression)"))]
pub struct ProcessSelector {
    /// Executable path or glob, as seen inside the process's root (e.g. `/usr/sbin/nginx` or `*/nginx`).
    /// A program started through a symlink matches by the symlink's path too: its first argument
    /// when absolute, else where that name is found in the process's PATH (Debian's `redis-server`
    /// started by name runs `/usr/bin/redis-check-rdb` and matches `*/redis-server`). Standalone, a
    /// path without glob characters, or `*/` and a file name of up to 14 bytes or its start
    /// (`*/curl`, `*/python3*`, also `*/{curl,wget}`), without `cmdline`, is matched by the kernel
    /// as a process starts the program: such a process is traced from its first syscall, however
    /// briefly it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub exe: Option<String>,
    /// Regular expression matched against the command line (arguments joined by spaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub cmdline: Option<String>,
}

/// Which pods and processes a namespaced probe applies to. Implemented by the spec of every kind
/// so the operator and the agent resolve targets in one way.
pub trait Targeting {
    /// Label selector over pods in the resource's own namespace (None: no pod selection).
    fn selector(&self) -> Option<&LabelSelector>;
    /// Only this container of the selected pods (None: every container).
    fn container(&self) -> Option<&str>;
    /// Narrows (cluster) or selects (standalone) processes.
    fn process(&self) -> Option<&ProcessSelector>;
    /// Time to live, as written by the user (validated at apply time, parsed with [`crate::duration::parse`]).
    fn ttl(&self) -> Option<&str>;
}

/// Condition types set on every Sonde resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionType {
    /// Every selected node runs the probe.
    Ready,
    /// At least one selected node failed to run the probe; see `status.failures`.
    Degraded,
    /// `spec.ttl` has passed; the probe was removed everywhere.
    Expired,
}

impl ConditionType {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::Ready => "Ready",
            ConditionType::Degraded => "Degraded",
            ConditionType::Expired => "Expired",
        }
    }
}

/// How many nodes run a resource's probe, and how it goes there.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeCounts {
    /// Nodes that were assigned the probe.
    pub selected: u32,
    /// Nodes whose agent reports the probe Attached.
    pub ready: u32,
    /// Nodes whose agent reports the probe Failed.
    pub failed: u32,
}

/// One node's failure message, as reported by its agent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeFailure {
    pub node: String,
    pub message: String,
}

/// Status of a Tracepoint, DynamicLog or BpftraceScript, written by the operator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Degraded and Expired.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub nodes: NodeCounts,
    /// The first few per-node failure messages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<NodeFailure>,
    /// When `spec.ttl` runs out (RFC 3339), if a ttl is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// Rule text shared by every `ttl` field: a Go-style duration above zero (a ttl of 0s expired
/// the probe at once).
pub(crate) const TTL_RULE: &str = "self.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$') && !self.matches('^(0+([.]0+)?(ns|us|ms|s|m|h))+$')";
pub(crate) const TTL_MESSAGE: &str =
    "ttl must be a duration above zero such as 90s, 30m or 1h30m (units: ns, us, ms, s, m, h)";
/// Rule text shared by every label selector: an operator the API server's selectors know (it does
/// not check a custom resource's selector itself).
pub(crate) const SELECTOR_RULE: &str = "!has(self.matchExpressions) || self.matchExpressions.all(e, e.operator in ['In', 'NotIn', 'Exists', 'DoesNotExist'])";
pub(crate) const SELECTOR_MESSAGE: &str =
    "matchExpressions[].operator must be In, NotIn, Exists or DoesNotExist";
pub(crate) const NAME_RULE: &str = "self.matches('^[a-z_][a-z0-9_]*$')";
pub(crate) const NAME_MESSAGE: &str =
    "must be a lower-case identifier: letters, digits and _, not starting with a digit";
