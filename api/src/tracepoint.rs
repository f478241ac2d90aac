//! `Tracepoint`: turns on a built-in probe (protocol tracing or CPU profiling) for selected pods.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::{ProcessSelector, ResourceStatus, Targeting};

/// A built-in probe for the selected pods of this namespace.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "sonde.dev",
    version = "v1alpha1",
    kind = "Tracepoint",
    namespaced,
    status = "ResourceStatus",
    shortname = "stp",
    category = "sonde",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Nodes","type":"integer","jsonPath":".status.nodes.ready"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.selector) || has(self.process)").message("spec.selector (pod labels in this namespace) or spec.process (executable or command line) is required"))]
pub struct TracepointSpec {
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
    /// Remove the probe this long after creation (e.g. `30m`); the resource is then marked Expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new(crate::common::TTL_RULE).message(crate::common::TTL_MESSAGE))]
    pub ttl: Option<String>,
    /// Which built-in probe: exactly one of `protocols` or `profiler`.
    pub probe: TracepointProbe,
}

/// Exactly one built-in probe kind.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.protocols) != has(self.profiler)").message("spec.probe must set exactly one of protocols or profiler"))]
pub struct TracepointProbe {
    /// Protocols to trace on every connection of the selected pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16), extend("x-kubernetes-list-type" = "set"))]
    pub protocols: Option<Vec<Protocol>>,
    /// Continuous CPU profiling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profiler: Option<ProfilerSpec>,
    /// Bytes of each request/response body kept in tables (protocol tracing; default 512, 0
    /// keeps none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 65536))]
    pub max_body_bytes: Option<u32>,
    /// Redact secrets in captured traffic (protocol tracing; default true): the values of the
    /// Authorization, Proxy-Authorization, Cookie and Set-Cookie headers and of credential headers
    /// such as `X-Api-Key`, `X-Auth-Token` or `Private-Token`, database password
    /// messages, passwords written into SQL text (`PASSWORD '…'`, `IDENTIFIED BY '…'`, connection
    /// strings and URLs), Redis passwords (AUTH, HELLO AUTH; the username stays), the signatures
    /// of pre-signed URLs (query parameters whose name contains `signature`, such as
    /// `X-Amz-Signature` or `X-Goog-Signature`, and Azure SAS's `sig`), and secret query
    /// parameters, form or JSON fields and SQL columns (names containing password, secret, token,
    /// api key, credential or session) — a column's value whether written into the statement or
    /// bound to its placeholder (`UPDATE users SET password = $1`, `INSERT INTO users (email,
    /// password) VALUES (?, ?)`). Compressed bodies (gzip, deflate) are decoded first.
    /// `false` keeps them as captured; a process that another Tracepoint also traces keeps
    /// redaction if either asks for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redact: Option<bool>,
}

/// Application protocols Sonde can parse.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Dns,
    Pgsql,
    Mysql,
    Redis,
}

/// Sampling CPU profiler settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProfilerSpec {
    /// Samples per second per CPU, 1..1000 (default 99).
    #[serde(default = "default_frequency_hz")]
    #[schemars(range(min = 1, max = 1000))]
    pub frequency_hz: u32,
}

fn default_frequency_hz() -> u32 {
    99
}

impl Targeting for TracepointSpec {
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
