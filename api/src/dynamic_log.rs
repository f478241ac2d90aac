//! `DynamicLog`: capture a function's arguments, return values and latency from DWARF, without redeploying.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::{ProcessSelector, ResourceStatus, Targeting};

/// Logs added to a running program: a function of the selected processes plus what to capture.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "sonde.dev",
    version = "v1alpha1",
    kind = "DynamicLog",
    namespaced,
    status = "ResourceStatus",
    shortname = "sdl",
    category = "sonde",
    printcolumn = r#"{"name":"Function","type":"string","jsonPath":".spec.function"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Nodes","type":"integer","jsonPath":".status.nodes.ready"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.selector) || has(self.process)").message("spec.selector (pod labels in this namespace) or spec.process (executable or command line) is required"))]
pub struct DynamicLogSpec {
    /// Pods of this namespace to trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(crate::common::SELECTOR_RULE).message(crate::common::SELECTOR_MESSAGE))]
    pub selector: Option<LabelSelector>,
    /// Only this container of the selected pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub container: Option<String>,
    /// Narrows the traced processes; the only selector in standalone mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSelector>,
    /// Remove the probe this long after creation (e.g. `30m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new(crate::common::TTL_RULE).message(crate::common::TTL_MESSAGE))]
    pub ttl: Option<String>,
    /// Function to trace: exact (`main.(*Server).PlaceOrder`) or a unique whole-word suffix.
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("self.trim().size() > 0").message("spec.function must name a function, e.g. main.(*Server).PlaceOrder"))]
    pub function: String,
    /// What to capture; omitted: every argument, every return value and the latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<Capture>,
    /// Bytes kept of each string or byte slice (default 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4096))]
    pub max_string_bytes: Option<u32>,
    /// Table the rows go to, in the resource's namespace: `<namespace>.<tableName>` (default:
    /// the resource's name with `-` and `.` as `_`), never shared with another namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new(crate::common::NAME_RULE).message(crate::common::NAME_MESSAGE))]
    pub table_name: Option<String>,
    /// Prometheus metrics derived from captured columns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub metrics: Vec<MetricSpec>,
}

/// What to capture at a call.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Capture {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub args: Vec<CaptureExpr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub returns: Vec<CaptureExpr>,
    #[serde(default)]
    pub latency: bool,
    #[serde(default)]
    pub goroutine: bool,
}

/// A named column and the expression that fills it (`req.User.Name`, `len(items)`, `$1`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaptureExpr {
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new(crate::common::NAME_RULE).message(crate::common::NAME_MESSAGE))]
    pub name: String,
    #[schemars(length(max = 256))]
    #[x_kube(validation = Rule::new("self.trim().size() > 0").message("expr must not be empty: write an argument (req.ID), a result ($1) or len(x)"))]
    pub expr: String,
}

/// A Prometheus metric computed from captured columns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricSpec {
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new(crate::common::NAME_RULE).message(crate::common::NAME_MESSAGE))]
    pub name: String,
    #[serde(rename = "type")]
    pub type_: MetricType,
    /// Column observed by a histogram (e.g. `latency`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub value: Option<String>,
    /// Columns used as labels; keep them low-cardinality.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub labels: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MetricType {
    Counter,
    Histogram,
}

impl Targeting for DynamicLogSpec {
    fn selector(&self) -> Option<&LabelSelector> {
        self.selector.as_ref()
    }
    fn container(&self) -> Option<&str> {
        self.container.as_deref()
    }
    fn process(&self) -> Option<&ProcessSelector> {
        self.process.as_ref()
    }
    fn ttl(&self) -> Option<&str> {
        self.ttl.as_deref()
    }
}
